//! `keeld`'s command line: flags, config file, signals, the ready line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{logger, FileConfig, Server};
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Keel server: durable topics over a binary protocol. A produce is answered only once its
/// messages are on stable storage (O_DIRECT writes covered by fdatasync).
///
/// Prints one line, "keeld listening on ADDR ...", once it accepts connections. SIGTERM or
/// SIGINT stop it gracefully: no new requests, in-flight writes finish and are answered, exit 0.
#[derive(Parser, Debug)]
#[command(name = "keeld", version)]
struct Args {
    /// Data directory (created if missing). Must be on a disk filesystem such as ext4 or xfs;
    /// tmpfs is refused. [default: ./keel-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (the ready line says which).
    /// [default: 127.0.0.1:7070]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Serve metrics (Prometheus text format) at http://ADDR/metrics; port 0 picks a free
    /// port (logged at start). [default: off]
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve Kafka clients (librdkafka, kafka-python, kcat) on ADDR; port 0 picks a free port
    /// (the ready line says which). [default: 127.0.0.1:9092]
    #[arg(long, value_name = "ADDR", conflicts_with = "no_kafka")]
    kafka_listen: Option<SocketAddr>,
    /// Serve no Kafka clients.
    #[arg(long)]
    no_kafka: bool,
    /// Shard threads, each pinned to a core with its own io_uring. [default: one per core]
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// TOML config file; flags override its values. See deploy/keeld.toml for every key.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use no io_uring: pwrite + fdatasync on a thread per shard, and a reader and a writer
    /// thread per connection (slower; for hosts that block io_uring, such as containers with
    /// the default seccomp profile).
    #[arg(long)]
    portable_io: bool,
    /// What to do with damaged files found at start: "strict" (hold the damaged partition,
    /// topic or group offline, naming the file and byte; serve the rest) or "repair" (cut a
    /// damaged segment at the damage, losing what follows; rebuild a damaged topic metadata
    /// file from its partition directories; remove a damaged group metadata file, so the group
    /// starts anew). [default: strict]
    #[arg(long, value_name = "MODE")]
    recovery: Option<String>,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = parse_level)]
    log_level: log::LevelFilter,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a log level (error, warn, info, debug, trace)"))
}

/// Runs `keeld` with the process's arguments; what the binary's `main` calls.
pub fn main() -> ExitCode {
    let args = Args::parse();
    logger::init(args.log_level);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    file.data_dir = args.data_dir.or(file.data_dir);
    file.listen = args.listen.or(file.listen);
    file.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    if let Some(addr) = args.kafka_listen {
        file.kafka_listen = Some(addr.to_string());
    }
    if args.no_kafka {
        file.kafka_listen = Some(crate::config::KAFKA_OFF.into());
    }
    file.shards = args.shards.or(file.shards);
    file.recovery = args.recovery.or(file.recovery);
    if args.portable_io {
        file.io = Some("portable".into());
    }
    if args.no_pin {
        file.pin_shards = Some(false);
    }
    let cfg = file.into_config()?;
    // Signals are handled by a thread of their own, set up before any other thread starts.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let server = Server::start(cfg)?;
    let stopper = server.stopper();
    std::thread::Builder::new()
        .name("keel-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                log::info!("{name} received");
                stopper.stop();
            }
        })?;
    let cfg = server.config();
    let kafka = match server.kafka_addr() {
        Some(addr) => format!("Kafka protocol on {addr}"),
        None => "no Kafka protocol".into(),
    };
    println!(
        "keeld listening on {} (data dir {}, {} shards, {}; {kafka})",
        server.local_addr(),
        cfg.engine.data_dir.display(),
        cfg.engine.shards,
        match cfg.engine.io {
            keel_engine::IoMode::Portable => {
                "portable io: pwrite + fdatasync, threads per connection"
            }
            _ => "io_uring for the disk and the connections",
        }
    );
    std::io::stdout().flush()?;
    server.run()?;
    Ok(())
}
