//! `keel-bench`: measures the disk's ceiling and the storage engine against it.
//!
//! ```text
//! keel-bench probe  --dir DIR              the disk's ceiling (O_DIRECT write + fdatasync)
//! keel-bench engine --dir DIR [--seconds]  probe, then the engine's bandwidth, group commit,
//!                                          latency at half load and memory, as ratios
//! keel-bench server --dir DIR [--seconds]  durable produce over loopback: keeld against the
//!                                          null server and the engine alone, as ratios
//! keel-bench produce --server ADDR ...     one produce workload against a running server
//! keel-bench e2e --server ADDR ...         producers and a consumer group at once: end to end
//! keel-bench consume --dir DIR             a backlog drained by fetches and by a group
//! keel-bench peers                         RabbitMQ and NATS JetStream under the same workloads
//! keel-bench suite --dir DIR [--quick]     all of it in one run, as a BENCHMARKS.md section
//! keel-bench null-server                   the null server (a sink that answers produces)
//! ```

// Allocations cross threads on every append (made by a producer, freed by a shard); glibc's
// per-arena locking made that a fifth of the engine benchmark's time. keeld uses the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod child;
mod consume_suite;
mod engine_load;
mod figures;
#[cfg(feature = "kafka")]
mod kafka_load;
mod keeld_metrics;
mod machine;
mod net_load;
mod null_server;
mod peers;
mod plot;
mod probe;
mod rounds;
mod server_suite;
mod suite;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use engine_load::{Load, Outcome};
use keel_engine::{Engine, EngineConfig};

#[derive(Parser)]
#[command(
    name = "keel-bench",
    version,
    about = "Keel benchmarks: the disk's ceiling and Keel measured against it, in one run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the disk: O_DIRECT 1 MiB and 4 KiB writes, each followed by fdatasync.
    Probe {
        /// Directory on the filesystem to measure (a temporary file is created and removed).
        #[arg(long, default_value = "./keel-data")]
        dir: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Probe the disk, then load the storage engine in-process with 1 KiB messages and report
    /// each figure beside its target as a ratio to the probe.
    Engine {
        /// Directory for the engine's data (a fresh subdirectory is used and removed).
        #[arg(long, default_value = "./keel-data")]
        dir: PathBuf,
        /// Seconds per workload.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Shard threads (default: one per core).
        #[arg(long)]
        shards: Option<usize>,
        /// Message value size in bytes.
        #[arg(long, default_value_t = 1024)]
        message_bytes: usize,
        /// Log each partition keeps, in MiB; 0 keeps everything. The topics are first filled
        /// past it, untimed, so the figures are those of a log at its retention size, whose
        /// new segments reuse dropped files (with 0: of a first fill, into fresh space).
        #[arg(long, default_value_t = 1024)]
        retention_mib: u64,
    },
    /// One engine workload with every knob exposed, for tuning.
    Load {
        /// Directory for the engine's data (a fresh subdirectory is used and removed).
        #[arg(long, default_value = "./keel-data")]
        dir: PathBuf,
        /// Seconds to send.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Shard threads (default: one per core).
        #[arg(long)]
        shards: Option<usize>,
        /// Logical appenders.
        #[arg(long, default_value_t = 64)]
        appenders: usize,
        /// Appends each appender keeps in flight (closed loop).
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Total appends per second, open loop (instead of the window).
        #[arg(long)]
        rate: Option<f64>,
        /// Message value size in bytes.
        #[arg(long, default_value_t = 1024)]
        message_bytes: usize,
        /// Messages per appended batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Partitions (default: one per shard).
        #[arg(long)]
        partitions: Option<u32>,
        /// Threads driving the appenders.
        #[arg(long, default_value_t = 2)]
        drivers: usize,
        /// Use prepared segments as fallocated, without zeroing them first.
        #[arg(long)]
        no_zero: bool,
        /// Let the scheduler place shard threads instead of pinning each to a core.
        #[arg(long)]
        no_pin: bool,
        /// Use the portable backend (pwrite + fdatasync on a thread) instead of io_uring.
        #[arg(long)]
        portable: bool,
        /// Segment size in MiB.
        #[arg(long, default_value_t = 256)]
        segment_mib: u64,
        /// Log each partition keeps, in MiB (default: everything). The log is first filled
        /// past it, untimed, so the run measures a log at its retention size, whose new
        /// segments reuse dropped files.
        #[arg(long)]
        retention_mib: Option<u64>,
        /// Longest a flush waits for the appenders the last one answered, in µs (the
        /// engine's `commit_linger`; 0 turns it off) [default: the engine's, 200].
        #[arg(long)]
        linger_us: Option<u64>,
    },
    /// Durable produce over loopback: the null server, keeld (a child process) and the engine
    /// in-process under the same workload, reported as ratios.
    Server {
        /// Directory for keeld's and the engine's data (fresh subdirectories, removed after).
        #[arg(long, default_value = "./keel-data")]
        dir: PathBuf,
        /// Seconds per system.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rounds of the null server and keeld, alternating; the verdict is on
        /// their median ratio (one pass through a shared machine swings by a tenth or more).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        rounds: u64,
        #[command(flatten)]
        shape: server_suite::Shape,
        /// The keeld binary [default: keeld next to this program].
        #[arg(long)]
        keeld: Option<PathBuf>,
        /// MiB each partition keeps (keeld's `retention_bytes`, and the engine's); keeld and
        /// the engine are filled past it, untimed, so the runs measure a log at its retention
        /// size, whose new segments reuse already-written files. 0: no retention, every run
        /// writes into fresh space (a first fill).
        #[arg(long, default_value_t = 1024)]
        retention_mib: u64,
        /// Longest a flush waits for the producers the last one answered, in µs (keeld's
        /// `commit_linger_us` and the engine's `commit_linger`; 0 turns it off) [default:
        /// theirs, 200].
        #[arg(long)]
        linger_us: Option<u64>,
    },
    /// One produce workload against a running server (keeld or the null server).
    Produce {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:7070")]
        server: String,
        /// Topic to produce to; created with --partitions partitions if missing.
        #[arg(long, default_value = "bench")]
        topic: String,
        /// Seconds to send.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[command(flatten)]
        shape: server_suite::Shape,
        /// Partitions (producer i writes partition i % partitions).
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Send this many messages in all instead of sending for --seconds.
        #[arg(long)]
        messages: Option<u64>,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// End to end: producers and a consumer group on one topic at once; reports produce→ack
    /// and produce→consume latency (each message carries its intended send time).
    E2e {
        /// Server address (keeld).
        #[arg(long, default_value = "127.0.0.1:7070")]
        server: String,
        /// Topic; created with --partitions partitions if missing.
        #[arg(long, default_value = "bench-e2e")]
        topic: String,
        /// Seconds to send.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[command(flatten)]
        shape: server_suite::Shape,
        /// Partitions (producer i writes partition i % partitions).
        #[arg(long, default_value_t = 2)]
        partitions: u32,
        /// Consumers in the group, each with its own connection; each acknowledges what it
        /// reads.
        #[arg(long, default_value_t = 2)]
        consumers: usize,
        /// Send this many messages in all instead of sending for --seconds.
        #[arg(long)]
        messages: Option<u64>,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A backlog drained by fetches and by a consumer group acking every message durably, from
    /// one keeld (a child process), reported as a ratio.
    Consume {
        /// Directory for keeld's data (a fresh subdirectory, removed after).
        #[arg(long, default_value = "./keel-data")]
        dir: PathBuf,
        #[command(flatten)]
        backlog: consume_suite::Backlog,
        /// The keeld binary [default: keeld next to this program].
        #[arg(long)]
        keeld: Option<PathBuf>,
        /// Also write both drains' figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// keeld's Kafka listener driven by librdkafka beside Keel's own protocol and producer,
    /// one workload, one run: producers sending one message per call, acks after durability,
    /// then a drain of what they wrote. Needs the `kafka` feature (builds librdkafka).
    Kafka {
        /// keeld's address (its own protocol).
        #[arg(long, default_value = "127.0.0.1:7070")]
        server: String,
        /// keeld's Kafka listener.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// Seconds of producing on each path.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[command(flatten)]
        shape: server_suite::Shape,
        /// Partitions (producer i writes partition i % partitions).
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// librdkafka's `batch.size` (its default is 1000000; Keel's producer batches 64 KiB).
        #[arg(long, default_value_t = 1_000_000)]
        kafka_batch_bytes: usize,
    },
    /// The peers (RabbitMQ quorum and classic queues, NATS JetStream) under Keel's produce
    /// workload and backlog drain; start them first with `bench/peers/setup.sh start DIR`.
    /// Needs the `peers` feature.
    Peers {
        #[command(flatten)]
        addrs: peers::PeerAddrs,
        /// Publishers, each with its own connection.
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// Unconfirmed messages each publisher keeps in flight.
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Bytes of each message.
        #[arg(long, default_value_t = 1024)]
        message_bytes: usize,
        /// Seconds of publishing per peer.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Messages in the backlog each peer drains.
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        /// Consumers draining the backlog, each acknowledging every message.
        #[arg(long, default_value_t = 4)]
        consumers: usize,
    },
    /// Everything in one run: the disk probe, the engine alone, keeld under the standard
    /// workloads, the null server and the peers, written as a BENCHMARKS.md-ready markdown
    /// section with every figure as a ratio to its ceiling and to the peers. Takes under 10
    /// minutes (under 2 with --quick). Peers need the `peers` feature and
    /// `bench/peers/setup.sh start DIR` first; without them the report says "not measured".
    Suite(suite::SuiteArgs),
    /// Run the null server: answers produces at once and stores nothing.
    NullServer {
        /// Address to listen on; port 0 picks a free one (printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Server {
            dir,
            seconds,
            rounds,
            shape,
            keeld,
            retention_mib,
            linger_us,
        } => server_suite::run(
            &dir,
            seconds,
            &shape,
            keeld,
            &server_suite::Storage {
                retention_mib: (retention_mib > 0).then_some(retention_mib),
                linger_us,
            },
            usize::try_from(rounds).unwrap_or(usize::MAX),
        ),
        Command::Produce {
            server,
            topic,
            seconds,
            shape,
            partitions,
            messages,
            json,
        } => server_suite::produce_once(&server, &topic, seconds, &shape, partitions, messages, 0)
            .and_then(|f| json.map_or(Ok(()), |path| figures::write_json(&path, &f))),
        Command::E2e {
            server,
            topic,
            seconds,
            shape,
            partitions,
            consumers,
            messages,
            json,
        } => {
            if consumers == 0 {
                Err("e2e needs at least one consumer (--consumers)".to_string())
            } else {
                server_suite::produce_once(
                    &server, &topic, seconds, &shape, partitions, messages, consumers,
                )
                    .and_then(|f| json.map_or(Ok(()), |path| figures::write_json(&path, &f)))
            }
        }
        #[cfg(feature = "kafka")]
        Command::Kafka {
            server,
            kafka,
            seconds,
            shape,
            partitions,
            kafka_batch_bytes,
        } => kafka_load::run(&server, &kafka, seconds, &shape, partitions, kafka_batch_bytes)
            .map(|_| ()),
        #[cfg(not(feature = "kafka"))]
        Command::Kafka { .. } => Err(
            "keel-bench was built without librdkafka: cargo build --release -p keel-bench \
             --features kafka"
                .into(),
        ),
        Command::Peers {
            addrs,
            publishers,
            window,
            message_bytes,
            seconds,
            messages,
            consumers,
        } => peers::run(
            &addrs,
            &peers::PeerLoad {
                publishers,
                window,
                message_bytes,
                seconds,
            },
            &peers::PeerBacklog {
                messages,
                message_bytes,
                consumers,
            },
        ),
        Command::Suite(args) => suite::run(&args),
        Command::NullServer { listen } => null_server::run(&listen),
        Command::Consume {
            dir,
            backlog,
            keeld,
            json,
        } => consume_suite::run(&dir, &backlog, keeld, json.as_deref()),
        Command::Probe { dir, seconds } => probe::run(&dir, seconds)
            .map(|p| print!("{}", p.table()))
            .map_err(|e| format!("probe failed in {}: {e}", dir.display())),
        Command::Engine {
            dir,
            seconds,
            shards,
            message_bytes,
            retention_mib,
        } => engine_suite(
            &dir,
            seconds,
            shards,
            message_bytes,
            (retention_mib > 0).then_some(retention_mib),
        ),
        Command::Load {
            dir,
            seconds,
            shards,
            appenders,
            window,
            rate,
            message_bytes,
            batch,
            partitions,
            drivers,
            no_zero,
            no_pin,
            portable,
            segment_mib,
            retention_mib,
            linger_us,
        } => open_engine(
            &dir,
            &EngineSetup {
                shards,
                zero_segments: !no_zero,
                pin: !no_pin,
                portable,
                segment_mib,
                retention_mib,
                linger_us,
            },
        )
        .and_then(|(engine, data)| {
            let partitions = partitions.unwrap_or(engine.config().shards as u32);
            let load = Load {
                appenders,
                window,
                rate,
                message_bytes,
                messages_per_batch: batch,
                seconds,
                partitions,
                drivers,
            };
            let result = engine
                .create_topic("load", partitions)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    if retention_mib.is_some() {
                        engine_load::fill_to_retention(&engine, "load", &load)?;
                    }
                    engine_load::run(&engine, "load", &load)
                });
            drop(engine);
            let _ = std::fs::remove_dir_all(&data);
            let out = result?;
            println!(
                "{:.0} msg/s, {:.1} MB/s, {:.1} msg/sync, latency p50 {} µs p99 {} µs p99.9 {} µs max {} µs, errors {}",
                out.messages_per_s(),
                out.mb_per_s(message_bytes),
                out.messages_per_sync(),
                out.latency_us.p50,
                out.latency_us.p99,
                out.latency_us.p999,
                out.latency_us.max,
                out.errors
            );
            let [f50, f99, fmax] = out.flush_io_us;
            println!("flush write+sync below p50 {f50} µs, p99 {f99} µs, max {fmax} µs");
            let [held, expired] = out.held;
            println!(
                "{held} flushes waited for the appenders the last one answered; {expired} of those waits ran out"
            );
            if let Some([p50, p99, max]) = out.send_late_us {
                println!("generator sent late by p50 {p50} µs, p99 {p99} µs, max {max} µs");
            }
            println!(
                "CPU per message: {:.3} µs (this process: engine and generator, {:.1} s in all)",
                out.cpu_s * 1e6 / out.messages.max(1) as f64,
                out.cpu_s
            );
            Ok(())
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How `keel-bench` sets up an in-process engine.
#[derive(Debug, Clone)]
pub(crate) struct EngineSetup {
    pub shards: Option<usize>,
    pub zero_segments: bool,
    pub pin: bool,
    pub portable: bool,
    pub segment_mib: u64,
    /// Bytes each partition keeps, in MiB (`None`: everything).
    pub retention_mib: Option<u64>,
    /// The engine's `commit_linger` in µs (`None`: its default).
    pub linger_us: Option<u64>,
}

impl Default for EngineSetup {
    fn default() -> Self {
        Self {
            shards: None,
            zero_segments: true,
            pin: true,
            portable: false,
            segment_mib: 256,
            retention_mib: None,
            linger_us: None,
        }
    }
}

pub(crate) fn open_engine(
    dir: &Path,
    setup: &EngineSetup,
) -> Result<(Arc<Engine>, PathBuf), String> {
    let data = dir.join(format!("keel-bench-{}", std::process::id()));
    let mut cfg = EngineConfig::new(&data);
    cfg.zero_segments = setup.zero_segments;
    cfg.pin_shards = setup.pin;
    cfg.segment_bytes = setup.segment_mib << 20;
    cfg.retention_bytes = setup.retention_mib.map(|m| m << 20);
    if let Some(us) = setup.linger_us {
        cfg.commit_linger = std::time::Duration::from_micros(us);
    }
    if setup.portable {
        cfg.io = keel_engine::IoMode::Portable;
    }
    if let Some(n) = setup.shards {
        cfg.shards = n;
    }
    let engine = Engine::open(cfg)
        .map_err(|e| format!("cannot open the engine in {}: {e}", data.display()))?;
    Ok((Arc::new(engine), data))
}

fn engine_suite(
    dir: &Path,
    seconds: f64,
    shards: Option<usize>,
    message_bytes: usize,
    retention_mib: Option<u64>,
) -> Result<(), String> {
    let probe = probe::run(dir, seconds.min(3.0))
        .map_err(|e| format!("probe failed in {}: {e}", dir.display()))?;
    let (engine, data) = open_engine(
        dir,
        &EngineSetup {
            shards,
            retention_mib,
            ..EngineSetup::default()
        },
    )?;
    let result = run_workloads(&engine, seconds, message_bytes, &probe);
    drop(engine);
    let _ = std::fs::remove_dir_all(&data);
    let report = result?;
    println!("{}", probe.table());
    println!("{report}");
    Ok(())
}

/// One engine figure and its place in the report.
struct Row {
    name: String,
    out: Outcome,
    rss_kib: u64,
}

fn run_workloads(
    engine: &Arc<Engine>,
    seconds: f64,
    message_bytes: usize,
    probe: &probe::Probe,
) -> Result<String, String> {
    let shards = engine.config().shards as u32;
    let rss_start = engine_load::rss_kib();
    engine
        .create_topic("bandwidth", shards)
        .map_err(|e| e.to_string())?;
    engine
        .create_topic("group-commit", 1)
        .map_err(|e| e.to_string())?;
    let single = Load {
        appenders: 64,
        window: 32,
        rate: None,
        message_bytes,
        messages_per_batch: 1,
        seconds,
        partitions: shards,
        drivers: 2,
    };
    engine_load::fill_to_retention(engine, "bandwidth", &single)?;
    engine_load::fill_to_retention(
        engine,
        "group-commit",
        &Load {
            partitions: 1,
            ..single.clone()
        },
    )?;
    let mut rows = Vec::new();
    let mut step = |name: &str, topic: &str, load: &Load| -> Result<Outcome, String> {
        eprintln!("engine: {name} for {seconds} s");
        let out = engine_load::run(engine, topic, load)?;
        if out.errors > 0 {
            return Err(format!("{name}: {} appends failed", out.errors));
        }
        eprintln!(
            "engine: {:.0} msg/s, {:.1} MB/s, {:.1} msg/sync, p50 {} µs, p99 {} µs",
            out.messages_per_s(),
            out.mb_per_s(message_bytes),
            out.messages_per_sync(),
            out.latency_us.p50,
            out.latency_us.p99
        );
        rows.push(Row {
            name: name.to_string(),
            out: out.clone(),
            rss_kib: engine_load::rss_kib(),
        });
        Ok(out)
    };
    let bandwidth = step(
        "bandwidth: 64 appenders x 32 single-message appends in flight (2 MiB)",
        "bandwidth",
        &single,
    )?;
    step(
        "bandwidth: 64 appenders x 8 appends of 8 messages in flight (4 MiB)",
        "bandwidth",
        &Load {
            window: 8,
            messages_per_batch: 8,
            ..single.clone()
        },
    )?;
    step(
        "group commit: 64 appenders x 1 message in flight, one partition",
        "group-commit",
        &Load {
            window: 1,
            partitions: 1,
            ..single.clone()
        },
    )?;
    let half = bandwidth.messages_per_s() / 2.0;
    step(
        &format!("latency at half the single-message bandwidth ({half:.0} msg/s, open loop)"),
        "bandwidth",
        &Load {
            rate: Some(half),
            drivers: 1,
            ..single.clone()
        },
    )?;
    let stats = engine.stats();
    let mut text = report(
        probe,
        &rows,
        message_bytes,
        rss_start,
        stats.bytes_written >> 20,
    );
    text += &match engine.config().retention_bytes {
        Some(keep) => format!(
            "Retention {} MiB per partition; each topic was filled past it (untimed) before its \
             first workload, so every row measures a log at its retention size: {} segment files \
             reused, {} deleted in all.\n",
            keep >> 20,
            stats.segments_recycled,
            stats.segments_deleted
        ),
        None => "No retention: every row writes into fresh, never-written space.\n".to_string(),
    };
    Ok(text)
}

fn report(
    p: &probe::Probe,
    rows: &[Row],
    message_bytes: usize,
    rss_start_kib: u64,
    written_mib: u64,
) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut s = format!(
        "| engine, {message_bytes} B messages | msg/s | MB/s | msg per fdatasync | append→durable p50 / p99 / p99.9 | flush write+sync below p50 / p99 / max | vs the probe | target | |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for (i, r) in rows.iter().enumerate() {
        let o = &r.out;
        let (ratio, target, ok) = match i {
            0 | 1 => {
                let x = o.mb_per_s(message_bytes) / p.big_mb_s;
                let fresh = o.mb_per_s(message_bytes) / p.big_unwritten_mb_s;
                let shown =
                    format!("{x:.2} x 1 MiB write+sync MB/s ({fresh:.2} x into fresh space)");
                (shown, ">= 0.70", x >= 0.7)
            }
            2 => {
                let x = o.messages_per_s() / p.small_syncs_s;
                (
                    format!("{x:.1} x 4 KiB sync rate"),
                    ">= 15 x, >= 32 msg/sync",
                    x >= 15.0 && o.messages_per_sync() >= 32.0,
                )
            }
            _ => {
                let x = o.latency_us.p99 as f64 / p.small_us[1].max(1) as f64;
                (format!("p99 {x:.1} x probe p99"), "<= 3 x", x <= 3.0)
            }
        };
        s += &format!(
            "| {}{} | {:.0} | {:.0} | {:.1} | {} / {} / {} µs | {} / {} / {} µs | {ratio} | {target} | {} |\n",
            r.name,
            o.send_late_us
                .map_or(String::new(), |[_, p99, max]| format!(
                    " (the generator sent late by p99 {p99} µs, max {max} µs)"
                )),
            o.messages_per_s(),
            o.mb_per_s(message_bytes),
            o.messages_per_sync(),
            o.latency_us.p50,
            o.latency_us.p99,
            o.latency_us.p999,
            o.flush_io_us[0],
            o.flush_io_us[1],
            o.flush_io_us[2],
            verdict(ok)
        );
    }
    let rss: Vec<String> = rows
        .iter()
        .map(|r| format!("{} MiB", r.rss_kib >> 10))
        .collect();
    s += &format!(
        "\nResident memory: {} MiB at start, then after each workload {} ({written_mib} MiB written in all).\n",
        rss_start_kib >> 10,
        rss.join(", ")
    );
    s
}
