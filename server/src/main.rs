//! `keeld`: the Keel server. See `keeld --help`.

// Buffers and tickets are made on one thread (a connection's) and freed on another (a
// shard's) for every request; glibc's per-arena locking made that a fifth of the shards' time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keel_server::cli::main()
}
