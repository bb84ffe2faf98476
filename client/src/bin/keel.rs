//! `keel`: the Keel command-line tool. See `keel --help`.

fn main() -> std::process::ExitCode {
    keel_client::cli::main()
}
