//! Durable produce over loopback, measured three ways in one run: against the null server (the
//! network path's ceiling), against `keeld` (the real thing, in its own process), and against
//! the engine in-process (storage alone).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Args;
use keel_client::{Client, ErrorCode};

use crate::child::ChildServer;
use crate::engine_load::{self, Load};
use crate::figures::Figures;
use crate::keeld_metrics::KeeldMetrics;
use crate::net_load::{self, NetLoad};
use crate::probe::RingCeiling;
use crate::rounds::{median, Rounds};

/// How the null server's rows are named.
pub(crate) const NULL_SERVER: &str = "null server (no storage)";

/// The shape of the produce load.
#[derive(Args, Debug, Clone)]
pub struct Shape {
    /// Producers, each with its own connection.
    #[arg(long, default_value_t = 16)]
    pub producers: usize,
    /// Messages each producer keeps in flight.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Messages per batch: appended by the in-process engine load as one batch; over the
    /// network, each producer's `batch_bytes` holds this many (0: the producer's default).
    /// Over the network every message is its own call; the producer batches.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Bytes of each message value.
    #[arg(long, default_value_t = 1024)]
    pub message_bytes: usize,
    /// Total messages per second, open loop: latency is measured from each batch's intended
    /// send time [default: closed loop, as fast as the window allows].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Producers without idempotence (the client's default is idempotent: a producer id,
    /// numbered batches, at most five requests in flight per partition).
    #[arg(long)]
    pub no_idempotence: bool,
}

impl Shape {
    pub(crate) fn net_load(
        &self,
        server: &str,
        topic: &str,
        partitions: u32,
        seconds: f64,
    ) -> NetLoad {
        NetLoad {
            server: server.to_string(),
            topic: topic.to_string(),
            producers: self.producers,
            window: self.window,
            batch: self.batch,
            message_bytes: self.message_bytes,
            partitions,
            seconds,
            rate: self.rate,
            messages: None,
            consumers: 0,
            idempotent: !self.no_idempotence,
        }
    }
}

pub(crate) fn create_topic(server: &str, topic: &str, partitions: u32) -> Result<(), String> {
    let client = Client::connect(server).map_err(|e| e.to_string())?;
    match client.create_topic(topic, partitions) {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::TopicExists) => Ok(()),
        Err(e) => Err(format!("create topic {topic}: {e}")),
    }
}

/// `keel-bench produce` and `keel-bench e2e`: one workload against a running server (with
/// consumers reading along, end to end, when `consumers` > 0).
pub fn produce_once(
    server: &str,
    topic: &str,
    seconds: f64,
    shape: &Shape,
    partitions: u32,
    messages: Option<u64>,
    consumers: usize,
) -> Result<Figures, String> {
    create_topic(server, topic, partitions)?;
    let load = NetLoad {
        consumers,
        messages,
        ..shape.net_load(server, topic, partitions, seconds)
    };
    let out = net_load::run(&load)?;
    println!(
        "{} producers x {} messages of {} B in flight, {} per request, {partitions} partitions{}{}\n",
        shape.producers,
        shape.window,
        shape.message_bytes,
        shape.batch,
        shape
            .rate
            .map_or(String::new(), |r| format!(", open loop at {r} msg/s")),
        if consumers > 0 {
            format!(", {consumers} group consumers")
        } else {
            String::new()
        }
    );
    print!("{}", out.table());
    Ok(out)
}

/// Segment size keeld and the engine use in `keel-bench server` (keeld's default), written
/// into keeld's config so that the fill target is computed from the size actually used.
const SEGMENT_BYTES: u64 = 256 << 20;

/// How keeld and the engine store what `keel-bench server` produces.
#[derive(Debug, Clone, Default)]
pub struct Storage {
    /// MiB each partition keeps; both are filled past it, untimed, before each timed run, so
    /// the figures are those of a log at its retention size (`None`: a first fill).
    pub retention_mib: Option<u64>,
    /// Commit linger in µs (`None`: their default).
    pub linger_us: Option<u64>,
}

/// The null server, keeld and the disk, measured in alternating rounds.
struct Paired {
    null: Vec<Figures>,
    keeld: Vec<Figures>,
    /// The flush path's ceiling in each round, MB/s: durable 1 MiB writes, one at a time.
    disk_mb_s: Vec<f64>,
    reused: u64,
}

impl Paired {
    fn ratios(&self) -> Rounds {
        Rounds::new(
            self.null
                .iter()
                .zip(&self.keeld)
                .map(|(n, k)| k.msgs_per_s / n.msgs_per_s)
                .collect(),
        )
    }

    /// Each round's keeld MB/s (message values) over the disk's.
    fn keeld_to_disk(&self) -> Rounds {
        Rounds::new(
            self.keeld
                .iter()
                .zip(&self.disk_mb_s)
                .map(|(k, d)| k.mb_per_s / d)
                .collect(),
        )
    }

    /// Each round's disk MB/s over the null server's: the highest keeld / null server a
    /// server bound by this disk could reach.
    fn disk_to_null(&self) -> Rounds {
        Rounds::new(
            self.null
                .iter()
                .zip(&self.disk_mb_s)
                .map(|(n, d)| d / n.mb_per_s)
                .collect(),
        )
    }
}

/// How long each round measures the disk: enough for a steady figure, short beside a round.
const DISK_SECONDS_MAX: f64 = 2.0;

/// Runs `rounds` rounds of the null server then keeld, each `seconds` long,
/// against one null server and one keeld (filled once) that stay up between rounds, so each
/// round's ratio compares two runs seconds apart; then, in each round, the disk's durable
/// write rate on the same filesystem, as the ceiling keeld works under at that moment.
fn alternate_null_and_keeld(
    keeld: &Path,
    dir: &Path,
    shape: &Shape,
    partitions: u32,
    seconds: f64,
    storage: &Storage,
    rounds: usize,
) -> Result<Paired, String> {
    eprintln!(
        "preparing the disk's ceiling: a 1 GiB file in {}",
        dir.display()
    );
    let mut disk = RingCeiling::prepare(dir, 1 << 20)
        .map_err(|e| format!("prepare the disk's ceiling in {}: {e}", dir.display()))?;
    let null = start_null_server()?;
    let under_test = create_topic(&null.addr, "produce", partitions)
        .and_then(|()| KeeldUnderTest::start(keeld, dir, &[], shape, partitions, storage));
    let under_test = match under_test {
        Ok(k) => k,
        Err(e) => {
            let _ = null.stop();
            return Err(e);
        }
    };
    let mut paired = Paired {
        null: Vec::new(),
        keeld: Vec::new(),
        disk_mb_s: Vec::new(),
        reused: 0,
    };
    let disk_seconds = seconds.min(DISK_SECONDS_MAX);
    let mut measured = Ok(());
    for round in 1..=rounds {
        eprintln!(
            "round {round} of {rounds}: null server, then keeld, {seconds} s each; \
             then the disk, {disk_seconds} s"
        );
        let null_out =
            match net_load::run(&shape.net_load(&null.addr, "produce", partitions, seconds)) {
                Ok(o) => o,
                Err(e) => {
                    measured = Err(format!("null server: {e}"));
                    break;
                }
            };
        let (keeld_out, reused) = match under_test.measure(shape, partitions, seconds) {
            Ok(o) => o,
            Err(e) => {
                measured = Err(format!("keeld: {e}"));
                break;
            }
        };
        let disk_mb_s = match disk.measure(disk_seconds) {
            Ok(mb_s) => mb_s,
            Err(e) => {
                measured = Err(format!("the disk's ceiling: {e}"));
                break;
            }
        };
        eprintln!(
            "round {round}: null server {:.0} msg/s, keeld {:.0} msg/s: {:.3}; \
             disk {disk_mb_s:.0} MB/s",
            null_out.msgs_per_s,
            keeld_out.msgs_per_s,
            keeld_out.msgs_per_s / null_out.msgs_per_s
        );
        paired.disk_mb_s.push(disk_mb_s);
        paired.null.push(null_out);
        paired.keeld.push(keeld_out);
        paired.reused += reused;
    }
    let stopped = under_test.stop().and(null.stop());
    measured?;
    stopped?;
    Ok(paired)
}

/// `keel-bench server`: the measurements and a markdown report.
pub fn run(
    dir: &Path,
    seconds: f64,
    shape: &Shape,
    keeld: Option<PathBuf>,
    storage: &Storage,
    rounds: usize,
) -> Result<(), String> {
    let keeld = keeld_binary(keeld)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let retention_mib = storage.retention_mib;
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    let partitions = shards as u32;
    let rounds = rounds.max(1);

    let paired =
        alternate_null_and_keeld(&keeld, dir, shape, partitions, seconds, storage, rounds)?;
    let ratios = paired.ratios();
    let middle = ratios.median_round().unwrap_or(0);
    let (Some(null_out), Some(uring_out)) = (paired.null.get(middle), paired.keeld.get(middle))
    else {
        return Err("no round was measured".into());
    };
    let null_rate = median(&paired.null.iter().map(|o| o.msgs_per_s).collect::<Vec<_>>())
        .unwrap_or(null_out.msgs_per_s);

    // The portable fallback (no io_uring anywhere), once, for what it costs.
    let name = "--portable-io";
    eprintln!("keeld {name}: {seconds} s");
    let (out, reused) = run_keeld(&keeld, dir, &[name], shape, partitions, seconds, storage)?;
    eprintln!("keeld {name}: {}", out.line());
    let others = [(name, out, reused)];

    eprintln!("engine in-process: {seconds} s");
    let engine_out = engine_produce(dir, shape, partitions, seconds, storage)?;

    let verdict = |x: f64| if x >= 0.5 { "met" } else { "**missed**" };
    let mb = shape.message_bytes;
    println!(
        "{} producers x {} messages of {mb} B in flight, {} per request, {partitions} partitions, {seconds} s each\n",
        shape.producers, shape.window, shape.batch
    );
    println!(
        "The null server and keeld ran {rounds} alternating round(s), both staying up \
         between rounds; their rows below are the round with the median ratio. The other rows \
         ran once, and their ratios are to the null server's median.\n"
    );
    match retention_mib {
        Some(mib) => println!(
            "Retention {mib} MiB per partition, {} MiB segments: keeld and the engine were each \
             filled past it, untimed, so every durable row writes over a log at its retention \
             size (segment files reused during keeld's timed runs: io_uring {}, {}).\n",
            SEGMENT_BYTES >> 20,
            paired.reused,
            others
                .iter()
                .map(|(net, _, reused)| format!("{net} {reused}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => {
            println!("No retention: every durable row writes into fresh, never-written space.\n")
        }
    }
    match storage.linger_us {
        Some(us) => println!("Commit linger: {us} µs.\n"),
        None => println!("Commit linger: keeld's and the engine's default.\n"),
    }
    println!(
        "| system | msg/s | MB/s | produce→ack p50 / p90 / p99 / p99.9 / max |\n|---|---|---|---|"
    );
    let mut rows = vec![
        (NULL_SERVER.to_string(), null_out),
        ("keeld (durable)".to_string(), uring_out),
    ];
    for (net, out, _) in &others {
        rows.push((format!("keeld {net} (durable)"), out));
    }
    rows.push(("engine in-process (durable)".to_string(), &engine_out));
    for (name, o) in rows {
        println!(
            "| {name} | {:.0} | {:.1} | {} |",
            o.msgs_per_s,
            o.mb_per_s,
            o.latency_us.cells()
        );
    }
    let disk_mb_s = median(&paired.disk_mb_s).unwrap_or(0.0);
    println!(
        "| disk: durable 1 MiB writes (RWF_DSYNC) one at a time, through Keel's io_uring, median of {rounds} | | {disk_mb_s:.1} | |"
    );
    println!(
        "\nkeeld's MB/s counts message values only; what it writes also holds each record's \
         framing and each flush's trailer.\n"
    );
    if rounds > 1 {
        println!(
            "| round | null server msg/s | keeld msg/s | ratio | disk MB/s | keeld / disk | disk / null server |\n|---|---|---|---|---|---|---|"
        );
        let rows = paired.null.iter().zip(&paired.keeld).zip(ratios.each());
        let disk = paired.disk_mb_s.iter();
        for (i, (((n, k), ratio), d)) in rows.zip(disk).enumerate() {
            println!(
                "| {} | {:.0} | {:.0} | {ratio:.3} | {d:.0} | {:.3} | {:.3} |",
                i + 1,
                n.msgs_per_s,
                k.msgs_per_s,
                k.mb_per_s / d,
                d / n.mb_per_s
            );
        }
    }
    println!("\n| ratio | measured | target | |\n|---|---|---|---|");
    let vs_null = ratios.median().unwrap_or(0.0);
    let (lo, hi) = ratios.range().unwrap_or((vs_null, vs_null));
    println!(
        "| keeld / null server, median of {rounds} | {vs_null:.3} (rounds {lo:.3}-{hi:.3}, {} of {rounds} at or above) | >= 0.500 | {} |",
        ratios.reaching(0.5),
        verdict(vs_null)
    );
    let to_disk = paired.keeld_to_disk().median().unwrap_or(0.0);
    println!(
        "| keeld MB/s / disk MB/s, median of {rounds} | {to_disk:.3} | | the share of the disk keeld used |"
    );
    let bound = paired.disk_to_null().median().unwrap_or(0.0);
    println!(
        "| disk MB/s / null server MB/s, median of {rounds} | {bound:.3} | | {} |",
        if bound >= 0.5 {
            "a server bound by this disk could reach the null-server target"
        } else {
            "**below 0.5: a durable server writing at this disk's one-at-a-time rate would miss the null-server target**"
        }
    );
    let vs_engine = uring_out.msgs_per_s / engine_out.msgs_per_s;
    println!(
        "| keeld / engine in-process | {vs_engine:.3} | >= 0.500 | {} |",
        verdict(vs_engine)
    );
    for (net, out, _) in &others {
        let vs_null = out.msgs_per_s / null_rate;
        let vs_engine = out.msgs_per_s / engine_out.msgs_per_s;
        println!(
            "| keeld {net} / null server | {vs_null:.3} | >= 0.500 | {} |",
            verdict(vs_null)
        );
        println!(
            "| keeld {net} / engine in-process | {vs_engine:.3} | >= 0.500 | {} |",
            verdict(vs_engine)
        );
    }
    Ok(())
}

/// Starts keeld with `args` on a fresh data directory, fills it to its retention size
/// (if any), loads it, stops it. Returns the figures and the segment files retention reused
/// during the timed load.
fn run_keeld(
    keeld: &Path,
    dir: &Path,
    args: &[&str],
    shape: &Shape,
    partitions: u32,
    seconds: f64,
    storage: &Storage,
) -> Result<(Figures, u64), String> {
    let under_test = KeeldUnderTest::start(keeld, dir, args, shape, partitions, storage)?;
    let out = under_test.measure(shape, partitions, seconds);
    let stopped = under_test.stop();
    let out = out?;
    stopped?;
    Ok(out)
}

/// A keeld being measured: started on a fresh data directory with the run's storage settings
/// and filled to its retention size, so that it can be loaded again and again.
struct KeeldUnderTest {
    server: ChildServer,
    data: PathBuf,
    metrics: KeeldMetrics,
}

impl KeeldUnderTest {
    fn start(
        keeld: &Path,
        dir: &Path,
        args: &[&str],
        shape: &Shape,
        partitions: u32,
        storage: &Storage,
    ) -> Result<Self, String> {
        let metrics = KeeldMetrics::on_free_port()?;
        let config = dir.join(format!("keel-bench-keeld-{}.toml", std::process::id()));
        let mut text = format!("segment_bytes = {SEGMENT_BYTES}\n");
        if let Some(mib) = storage.retention_mib {
            text += &format!("retention_bytes = {}\n", mib << 20);
        }
        if let Some(us) = storage.linger_us {
            text += &format!("commit_linger_us = {us}\n");
        }
        std::fs::write(&config, text).map_err(|e| format!("write {}: {e}", config.display()))?;
        let config_arg = config.display().to_string();
        let listen_metrics = metrics.listen_arg();
        let mut keeld_args = args.to_vec();
        keeld_args.extend(["--config", &config_arg, "--metrics-listen", &listen_metrics]);
        let started = start_keeld(keeld, dir, &keeld_args);
        let _ = std::fs::remove_file(&config);
        let (server, data) = started?;
        let under_test = Self {
            server,
            data,
            metrics,
        };
        let ready =
            create_topic(&under_test.server.addr, "produce", partitions).and_then(
                |()| match storage.retention_mib {
                    Some(mib) => fill_keeld(
                        &under_test.server.addr,
                        &under_test.metrics,
                        shape,
                        partitions,
                        mib,
                    ),
                    None => Ok(()),
                },
            );
        match ready {
            Ok(()) => Ok(under_test),
            Err(e) => {
                let _ = under_test.stop();
                Err(e)
            }
        }
    }

    /// One timed load: its figures, and the segment files retention reused meanwhile.
    fn measure(
        &self,
        shape: &Shape,
        partitions: u32,
        seconds: f64,
    ) -> Result<(Figures, u64), String> {
        let before = self.metrics.sample("keel_segments_recycled_total")?;
        let out =
            net_load::run(&shape.net_load(&self.server.addr, "produce", partitions, seconds))?;
        let after = self.metrics.sample("keel_segments_recycled_total")?;
        Ok((out, (after - before) as u64))
    }

    /// Stops keeld and removes its data directory.
    fn stop(self) -> Result<(), String> {
        let stopped = self.server.stop();
        let _ = std::fs::remove_dir_all(&self.data);
        stopped
    }
}

/// Produces, untimed, until keeld has written each partition's retention size and two
/// segments more, so that its oldest segment files are being reused.
fn fill_keeld(
    addr: &str,
    metrics: &KeeldMetrics,
    shape: &Shape,
    partitions: u32,
    retention_mib: u64,
) -> Result<(), String> {
    let target = u64::from(partitions) * ((retention_mib << 20) + 2 * SEGMENT_BYTES);
    let written = engine_load::fill_until(
        "keeld",
        target,
        Duration::from_secs(180),
        || Ok(metrics.sample("keel_written_bytes_total")? as u64),
        || net_load::run(&shape.net_load(addr, "produce", partitions, 2.0)).map(|_| ()),
    )?;
    eprintln!(
        "keeld filled: {} MiB written, {} segment files reused so far",
        written >> 20,
        metrics.sample("keel_segments_recycled_total")?
    );
    Ok(())
}

/// The keeld to measure: `--keeld`, or the one built next to this program.
pub(crate) fn keeld_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let keeld = given.unwrap_or_else(|| exe.with_file_name("keeld"));
    if keeld.exists() {
        Ok(keeld)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p keel-server` (the same profile as keel-bench), or pass --keeld",
            keeld.display()
        ))
    }
}

/// Starts keeld on a free loopback port with a fresh data directory under `dir` (returned, for
/// the caller to remove once keeld has stopped).
pub(crate) fn start_keeld(
    keeld: &Path,
    dir: &Path,
    extra: &[&str],
) -> Result<(ChildServer, PathBuf), String> {
    let data = dir.join(format!("keel-bench-keeld-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut cmd = Command::new(keeld);
    cmd.arg("--data-dir")
        .arg(&data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-kafka",
            "--log-level",
            "warn",
        ])
        .args(extra);
    let server = ChildServer::start(cmd, "keeld", "keeld listening on ")?;
    Ok((server, data))
}

/// Starts this program's null server as a child process.
pub(crate) fn start_null_server() -> Result<ChildServer, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut null = Command::new(exe);
    null.args(["null-server", "--listen", "127.0.0.1:0"]);
    ChildServer::start(null, "the null server", "null server listening on ")
}

/// The same produce shape against the engine in-process (storage alone, no network), on a
/// fresh data directory under `dir` (filled to `retention_mib` per partition first, untimed,
/// when given), removed after.
pub(crate) fn engine_produce(
    dir: &Path,
    shape: &Shape,
    partitions: u32,
    seconds: f64,
    storage: &Storage,
) -> Result<Figures, String> {
    let setup = crate::EngineSetup {
        retention_mib: storage.retention_mib,
        linger_us: storage.linger_us,
        segment_mib: SEGMENT_BYTES >> 20,
        ..crate::EngineSetup::default()
    };
    let (engine, data) = crate::open_engine(dir, &setup)?;
    let load = Load {
        appenders: shape.producers,
        window: (shape.window / shape.batch.max(1)).max(1),
        rate: None,
        message_bytes: shape.message_bytes,
        messages_per_batch: shape.batch.max(1),
        seconds,
        partitions,
        drivers: 2,
    };
    let out = engine
        .create_topic("produce", partitions)
        .map_err(|e| e.to_string())
        .and_then(|()| engine_load::fill_to_retention(&engine, "produce", &load))
        .and_then(|()| engine_load::run(&engine, "produce", &load));
    drop(engine);
    let _ = std::fs::remove_dir_all(&data);
    Ok(out?.figures(shape.message_bytes))
}
