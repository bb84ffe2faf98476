//! `keeld`: the Keel server. See `keeld --help`.

fn main() -> std::process::ExitCode {
    keel_server::cli::main()
}
