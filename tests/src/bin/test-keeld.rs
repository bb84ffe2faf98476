//! `keeld`, built as part of this package so that `cargo test -p keel-tests` always runs the
//! current server (binaries of other packages are not rebuilt for this package's tests).

fn main() -> std::process::ExitCode {
    keel_server::cli::main()
}
