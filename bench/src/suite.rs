//! `keel-bench suite`: the disk's ceiling, Keel (engine alone, then keeld over loopback) and
//! the peers under the standard workloads, in one run on one machine, written as a
//! `docs/BENCHMARKS.md`-ready section: every figure beside its ceiling and the peers, as ratios,
//! with each target's verdict stated plainly.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::consume_suite::{self, Backlog};
use crate::figures::{write_json, Figures};
use crate::machine::Machine;
use crate::net_load::{self, NetLoad};
use crate::peers::{self, Peer, PeerAddrs, PeerBacklog, PeerLoad};
use crate::plot;
use crate::probe::{self, Probe};
use crate::server_suite::{
    create_topic, engine_produce, keeld_binary, start_keeld, start_null_server, Shape, Storage,
    NULL_SERVER,
};

#[derive(Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Directory on the filesystem to measure (fresh subdirectories, removed after).
    #[arg(long, default_value = "./keel-data")]
    pub dir: PathBuf,
    /// A short run: 1 s per workload and 10,000-message backlogs (under 2 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Seconds per workload [default: 5, or 1 with --quick].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Messages in each drained backlog [default: 100000, or 10000 with --quick].
    #[arg(long)]
    pub messages: Option<u64>,
    /// The keeld binary [default: keeld next to this program].
    #[arg(long)]
    pub keeld: Option<PathBuf>,
    #[command(flatten)]
    pub peers: PeerAddrs,
    /// Leave the peers out.
    #[arg(long)]
    pub no_peers: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw throughput against p99 latency per system as an SVG to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One workload on one system: its figures, or why there are none.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub section: &'static str,
    pub system: String,
    pub workload: String,
    pub figures: Option<Figures>,
    pub error: Option<String>,
}

/// A target from the benchmark issue, checked against this run.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub ratio: String,
    /// `None` when a side of the ratio was not measured.
    pub measured: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
struct SuiteReport {
    command: String,
    machine: Machine,
    seconds_per_workload: f64,
    backlog_messages: u64,
    probe: Probe,
    runs: Vec<Measured>,
    verdicts: Vec<Verdict>,
}

const PRODUCE: &str = "durable produce";
const GROUP_COMMIT: &str = "group commit";
const PEERS: &str = "the peers' workload";
const PEERS_16X1: &str = "the peers' workload, 16 x 1";
const PEERS_1X1: &str = "the peers' workload, 1 x 1";
const DRAIN: &str = "consume with per-message acks";
const E2E: &str = "end to end";
const KEEL: &str = "Keel (keeld)";
const MESSAGE_BYTES: usize = 1024;

/// The runs made so far, with progress on stderr.
struct Runs {
    list: Vec<Measured>,
    step: usize,
    steps: usize,
}

impl Runs {
    fn measure(
        &mut self,
        section: &'static str,
        system: &str,
        workload: &str,
        run: impl FnOnce() -> Result<Figures, String>,
    ) {
        self.step += 1;
        eprintln!(
            "[{}/{}] {system}: {section}, {workload}",
            self.step, self.steps
        );
        let outcome = run();
        match &outcome {
            Ok(f) => eprintln!("        {}", f.line()),
            Err(e) => eprintln!("        not measured: {e}"),
        }
        self.list.push(Measured {
            section,
            system: system.to_string(),
            workload: workload.to_string(),
            error: outcome.as_ref().err().cloned(),
            figures: outcome.ok(),
        });
    }

    fn find(&self, section: &str, system: &str, workload: &str) -> Option<&Figures> {
        self.list
            .iter()
            .find(|m| {
                m.section == section && m.system == system && m.workload.starts_with(workload)
            })
            .and_then(|m| m.figures.as_ref())
    }
}

/// A produce load over the network: every producer is `keel_client::Producer` with its
/// defaults, sent one message per call (it batches them itself).
fn produce_workload(producers: usize, window: usize, partitions: u32) -> String {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    format!(
        "{producers} producer{} x {window} x {MESSAGE_BYTES} B in flight, one message per call, {partitions} partition{}",
        plural(producers as u64),
        plural(u64::from(partitions)),
    )
}

#[allow(clippy::too_many_arguments)]
fn keel_net(
    addr: &str,
    topic: &str,
    producers: usize,
    window: usize,
    partitions: u32,
    seconds: f64,
    rate: Option<f64>,
    consumers: usize,
) -> Result<Figures, String> {
    create_topic(addr, topic, partitions)?;
    net_load::run(&NetLoad {
        server: addr.to_string(),
        topic: topic.to_string(),
        producers,
        window,
        // The producer's own batch size.
        batch: 0,
        message_bytes: MESSAGE_BYTES,
        partitions,
        seconds,
        rate,
        messages: None,
        consumers,
        idempotent: true,
    })
}

/// `keel-bench suite`.
pub fn run(args: &SuiteArgs) -> Result<(), String> {
    let seconds = args.seconds.unwrap_or(if args.quick { 1.0 } else { 5.0 });
    let messages = args
        .messages
        .unwrap_or(if args.quick { 10_000 } else { 100_000 });
    let keeld = keeld_binary(args.keeld.clone())?;
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_shard = shards as u32;
    let mut partition_counts = vec![1, per_shard, 8];
    partition_counts.dedup();
    let peer_list: Vec<Peer> = if args.no_peers {
        Vec::new()
    } else {
        Peer::ALL.to_vec()
    };
    let mut runs = Runs {
        list: Vec::new(),
        step: 0,
        steps: 2 + 3 * partition_counts.len() + 7 + 4 * peer_list.len(),
    };
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;

    eprintln!("disk probe in {}", args.dir.display());
    let probe = probe::run(&args.dir, if args.quick { 0.5 } else { 2.0 })
        .map_err(|e| format!("probe failed in {}: {e}", args.dir.display()))?;

    let target_shape = produce_workload(16, 256, per_shard);
    runs.measure(PRODUCE, NULL_SERVER, &target_shape, || {
        let null = start_null_server()?;
        let out = keel_net(&null.addr, "produce", 16, 256, per_shard, seconds, None, 0);
        null.stop()?;
        out
    });
    let engine_shape = format!("{target_shape}; in-process: 16 per appended batch");
    runs.measure(PRODUCE, "Keel engine in-process", &engine_shape, || {
        let shape = Shape {
            producers: 16,
            window: 256,
            batch: 16,
            message_bytes: MESSAGE_BYTES,
            rate: None,
            no_idempotence: false,
        };
        engine_produce(&args.dir, &shape, per_shard, seconds, &Storage::default())
    });

    let (server, data) = start_keeld(&keeld, &args.dir, &[])?;
    let addr = server.addr.clone();
    for producers in [1, 4, 16] {
        for &partitions in &partition_counts {
            let topic = format!("produce-{producers}-{partitions}");
            runs.measure(
                PRODUCE,
                KEEL,
                &produce_workload(producers, 256, partitions),
                || keel_net(&addr, &topic, producers, 256, partitions, seconds, None, 0),
            );
        }
    }
    runs.measure(
        GROUP_COMMIT,
        KEEL,
        &produce_workload(16, 1, per_shard),
        || keel_net(&addr, "group-commit", 16, 1, per_shard, seconds, None, 0),
    );
    // The peers' shapes: N publishers on their own connections, W single-message publishes
    // unconfirmed each, one queue (one partition).
    let peers_shape = produce_workload(4, 256, 1);
    runs.measure(PEERS, KEEL, &peers_shape, || {
        keel_net(&addr, "peers-workload", 4, 256, 1, seconds, None, 0)
    });
    let few_shape = produce_workload(16, 1, 1);
    runs.measure(PEERS_16X1, KEEL, &few_shape, || {
        keel_net(&addr, "peers-16x1", 16, 1, 1, seconds, None, 0)
    });
    // The same producers against a server that answers at once: with the disk's sync, the
    // bound on what any server that syncs before it answers can do at this shape.
    runs.measure(PEERS_16X1, NULL_SERVER, &few_shape, || {
        let null = start_null_server()?;
        let out = keel_net(&null.addr, "peers-16x1", 16, 1, 1, seconds, None, 0);
        null.stop()?;
        out
    });
    let one_shape = produce_workload(1, 1, 1);
    runs.measure(PEERS_1X1, KEEL, &one_shape, || {
        keel_net(&addr, "peers-1x1", 1, 1, 1, seconds, None, 0)
    });
    let e2e_rate = runs
        .find(PEERS, KEEL, &peers_shape)
        .map_or(20_000.0, |f| (f.msgs_per_s / 4.0).max(1000.0).round());
    let e2e_shape = format!(
        "4 producers at {e2e_rate:.0} msg/s in all (open loop), one message per call, {per_shard} partitions, 2 group consumers acking"
    );
    runs.measure(E2E, KEEL, &e2e_shape, || {
        keel_net(&addr, "e2e", 4, 256, per_shard, seconds, Some(e2e_rate), 2)
    });
    let backlog = Backlog {
        messages,
        message_bytes: MESSAGE_BYTES,
        consumers: 4,
        per_request: 256,
    };
    let drain_shape =
        format!("a backlog of {messages} drained by 4 consumers, every message acked on its own");
    // Keel's backlog sits in one partition per shard, as a topic is meant to be laid out; a
    // peer's queue or stream is one unit of its own.
    let keel_drain = format!("{drain_shape}, {per_shard} partitions");
    runs.measure(DRAIN, KEEL, &keel_drain, || {
        create_topic(&addr, "drain", per_shard)?;
        consume_suite::fill(&addr, "drain", per_shard, &backlog)?;
        let (s, hist) = consume_suite::group_drain(&addr, "drain", &backlog)?;
        Ok(Figures::new(
            messages,
            s,
            MESSAGE_BYTES,
            crate::figures::Percentiles::of(&hist),
        ))
    });
    let stopped = server.stop();
    let _ = std::fs::remove_dir_all(&data);
    stopped?;

    let peer_load = PeerLoad {
        publishers: 4,
        window: 256,
        message_bytes: MESSAGE_BYTES,
        seconds,
    };
    let peer_backlog = PeerBacklog {
        messages,
        message_bytes: MESSAGE_BYTES,
        consumers: 4,
    };
    for peer in &peer_list {
        runs.measure(
            PEERS,
            peer.name(),
            "4 publishers x 256 unconfirmed x 1024 B",
            || peers::produce(*peer, &args.peers, &peer_load),
        );
        for (section, publishers) in [(PEERS_16X1, 16), (PEERS_1X1, 1)] {
            let load = PeerLoad {
                publishers,
                window: 1,
                ..peer_load.clone()
            };
            runs.measure(
                section,
                peer.name(),
                &format!(
                    "{publishers} publisher{} x 1 unconfirmed x 1024 B",
                    if publishers == 1 { "" } else { "s" }
                ),
                || peers::produce(*peer, &args.peers, &load),
            );
        }
        runs.measure(DRAIN, peer.name(), &drain_shape, || {
            peers::drain(*peer, &args.peers, &peer_backlog)
        });
    }

    let verdicts = verdicts(
        &runs,
        &probe,
        &Shapes {
            target: target_shape,
            peers: peers_shape,
            drain: drain_shape,
            drain_produce: produce_workload(4, 256, per_shard),
            e2e: e2e_shape,
        },
        per_shard,
    );
    let report = SuiteReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::describe(&args.dir),
        seconds_per_workload: seconds,
        backlog_messages: messages,
        probe,
        runs: runs.list,
        verdicts,
    };
    let markdown = markdown(&report, &peer_list);
    print!("{markdown}");
    if let Some(path) = &args.out {
        std::fs::write(path, &markdown)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        let points: Vec<plot::Point> = report
            .runs
            .iter()
            .filter(|m| [PRODUCE, GROUP_COMMIT, PEERS].contains(&m.section))
            .filter_map(|m| {
                let f = m.figures.as_ref()?;
                Some(plot::Point {
                    system: m.system.clone(),
                    label: format!("{}: {}", m.section, m.workload),
                    msgs_per_s: f.msgs_per_s,
                    p99_us: f.latency_us.p99 as f64,
                })
            })
            .collect();
        let title = "Produce throughput and p99 produce→ack latency, 1 KiB messages";
        let subtitle = format!("{} · {}", report.machine.line(), report.command);
        std::fs::write(path, plot::svg(title, &subtitle, &points))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let keel_failed: Vec<&Measured> = report
        .runs
        .iter()
        .filter(|m| m.error.is_some() && !peer_list.iter().any(|p| p.name() == m.system))
        .collect();
    match keel_failed.first() {
        Some(m) => Err(format!(
            "{} of Keel's workloads failed; the first: {} ({}): {}",
            keel_failed.len(),
            m.system,
            m.workload,
            m.error.as_deref().unwrap_or("")
        )),
        None => Ok(()),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The workloads the targets compare.
struct Shapes {
    /// Durable produce against the null server and the engine.
    target: String,
    /// The peers' produce workload.
    peers: String,
    /// The backlog drained with per-message acks.
    drain: String,
    /// Durable produce with as many clients on as many partitions as the drain.
    drain_produce: String,
    /// Producers and acking consumers at once.
    e2e: String,
}

fn verdicts(runs: &Runs, probe: &Probe, shapes: &Shapes, per_shard: u32) -> Vec<Verdict> {
    let (target_shape, peers_shape, drain_shape) = (&shapes.target, &shapes.peers, &shapes.drain);
    let rate = |section: &str, system: &str, workload: &str| {
        runs.find(section, system, workload).map(|f| f.msgs_per_s)
    };
    let at_least = |ratio: String, measured: Option<f64>, target: f64| Verdict {
        ratio,
        measured,
        target: format!(">= {target}"),
        met: measured.map(|m| m >= target),
    };
    let keel_target = rate(PRODUCE, KEEL, target_shape);
    let mut v = vec![
        at_least(
            format!("keeld / null server, 16 producers x 256 in flight, {per_shard} partitions (one per shard)"),
            ratio(keel_target, rate(PRODUCE, NULL_SERVER, target_shape)),
            0.6,
        ),
        at_least(
            "engine alone MB/s / disk's 1 MiB write+fdatasync MB/s".into(),
            ratio(
                runs.find(PRODUCE, "Keel engine in-process", target_shape)
                    .map(|f| f.mb_per_s),
                Some(probe.big_mb_s),
            ),
            0.7,
        ),
        at_least(
            "group commit: keeld msg/s with 16 x 1 in flight / disk's 4 KiB fdatasync rate".into(),
            ratio(rate(GROUP_COMMIT, KEEL, ""), Some(probe.small_syncs_s)),
            10.0,
        ),
    ];
    let keel_peers = runs.find(PEERS, KEEL, peers_shape);
    for (peer, target) in [(Peer::RabbitQuorum, 15.0), (Peer::NatsJetStream, 4.0)] {
        let theirs = runs.find(PEERS, peer.name(), "");
        v.push(at_least(
            format!("keeld / {} msg/s, the peers' workload", peer.name()),
            ratio(
                keel_peers.map(|f| f.msgs_per_s),
                theirs.map(|f| f.msgs_per_s),
            ),
            target,
        ));
        let p99 = ratio(
            keel_peers.map(|f| f.latency_us.p99 as f64),
            theirs.map(|f| f.latency_us.p99 as f64),
        );
        v.push(Verdict {
            ratio: format!("keeld p99 / {} p99 publish→confirm", peer.name()),
            measured: p99,
            target: "< 1".into(),
            met: p99.map(|x| x < 1.0),
        });
    }
    // A producer with one message in flight waits at least a round trip (the null server's
    // p50) and one whole sync that began after its message arrived (the disk's p50): no server
    // that syncs before it answers does better than this at 16 x 1.
    let bound_16x1 = runs.find(PEERS_16X1, NULL_SERVER, "").and_then(|f| {
        let us = f.latency_us.p50 as f64 + probe.small_us[0] as f64;
        (us > 0.0).then(|| 16.0 * 1e6 / us)
    });
    for (peer, target) in [(Peer::RabbitQuorum, 10.0), (Peer::NatsJetStream, 1.5)] {
        let theirs = rate(PEERS_16X1, peer.name(), "");
        v.push(at_least(
            format!(
                "keeld / {} msg/s, 16 publishers x 1 unconfirmed",
                peer.name()
            ),
            ratio(rate(PEERS_16X1, KEEL, ""), theirs),
            target,
        ));
        v.push(at_least(
            format!(
                "16 x 1's bound (16 / (null-server p50 + disk 4 KiB sync p50)) / {} msg/s: \
                 missed means the target above is out of this machine's reach",
                peer.name()
            ),
            ratio(bound_16x1, theirs),
            target,
        ));
    }
    let single = runs.find(PEERS_1X1, KEEL, "");
    for (name, at, probe_us, target) in [
        ("p50", 0, probe.small_us[0], 2.0),
        ("p99", 1, probe.small_us[1], 3.0),
    ] {
        let keel_us = single.map(|f| [f.latency_us.p50, f.latency_us.p99][at] as f64);
        let measured = ratio(keel_us, Some(probe_us as f64));
        v.push(Verdict {
            ratio: format!(
                "keeld 1 x 1 produce→ack {name} / the disk's 4 KiB write+fdatasync {name}"
            ),
            measured,
            target: format!("<= {target}"),
            met: measured.map(|m| m <= target),
        });
    }
    // Against the faster of RabbitMQ's two queues, so the claim holds for both.
    let rabbit_drain = [Peer::RabbitQuorum, Peer::RabbitClassic]
        .iter()
        .filter_map(|p| rate(DRAIN, p.name(), drain_shape))
        .reduce(f64::max);
    v.push(at_least(
        "keeld / RabbitMQ (faster queue) consume with per-message acks".into(),
        ratio(rate(DRAIN, KEEL, drain_shape), rabbit_drain),
        10.0,
    ));
    v.push(at_least(
        format!("keeld consume with per-message durable acks / durable produce, 4 clients, {per_shard} partitions"),
        ratio(
            rate(DRAIN, KEEL, drain_shape),
            rate(PRODUCE, KEEL, &shapes.drain_produce),
        ),
        0.5,
    ));
    let e2e_p99_ms = runs
        .find(E2E, KEEL, &shapes.e2e)
        .and_then(|f| f.end_to_end_us.as_ref())
        .map(|p| p.p99 as f64 / 1000.0);
    v.push(Verdict {
        ratio: "end to end at a quarter of the peers' workload rate: produce→consume p99 (ms)"
            .into(),
        measured: e2e_p99_ms,
        target: "<= 50".into(),
        met: e2e_p99_ms.map(|ms| ms <= 50.0),
    });
    v
}

fn markdown(r: &SuiteReport, peer_list: &[Peer]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Suite: Keel beside the disk and its peers\n");
    let _ = writeln!(s, "Machine: {}. Command: `{}` ({} s per workload, backlogs of {} messages). Every row below was measured in this one run; compare ratios, not absolute figures across runs.\n", r.machine.line(), r.command, r.seconds_per_workload, r.backlog_messages);
    s += &r.probe.table();
    let _ = writeln!(s);
    let sections = [
        (PRODUCE, "Durable produce (acknowledged only once durable)"),
        (
            GROUP_COMMIT,
            "Group commit: one message in flight per producer",
        ),
        (
            PEERS,
            "The peers' workload: 4 publishers, 256 unconfirmed 1 KiB messages each",
        ),
        (
            PEERS_16X1,
            "The peers' workload: 16 publishers, 1 unconfirmed message each",
        ),
        (
            PEERS_1X1,
            "The peers' workload: 1 publisher, 1 unconfirmed message",
        ),
        (E2E, "End to end: produce→consume while producing"),
        (DRAIN, "Consume with per-message acks: a backlog drained"),
    ];
    for (section, title) in sections {
        let rows: Vec<&Measured> = r.runs.iter().filter(|m| m.section == section).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "### {title}\n");
        let latency_head = match section {
            DRAIN => "ack→answer p50 / p90 / p99 / p99.9 / max (Keel's durable acks only)",
            E2E => "produce→ack; produce→consume p50 / p90 / p99 / p99.9 / max",
            _ => "produce→ack p50 / p90 / p99 / p99.9 / max",
        };
        let _ = writeln!(
            s,
            "| system | workload | msg/s | MB/s | {latency_head} |\n|---|---|---|---|---|"
        );
        for m in rows {
            match (&m.figures, &m.error) {
                (Some(f), _) => {
                    let mut latency = if section == DRAIN && f.latency_us.max == 0 {
                        "—".to_string()
                    } else {
                        f.latency_us.cells()
                    };
                    if let Some(e) = &f.end_to_end_us {
                        latency += &format!("; {}", e.cells());
                    }
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.0} | {:.1} | {latency} |",
                        m.system, m.workload, f.msgs_per_s, f.mb_per_s
                    );
                }
                (None, e) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | not measured: {} | | |",
                        m.system,
                        m.workload,
                        e.as_deref().unwrap_or("unknown")
                    );
                }
            }
        }
        let _ = writeln!(s);
    }
    if !peer_list.is_empty() {
        let _ = writeln!(s, "What each peer promises when it confirms a publish:\n");
        for p in peer_list {
            let _ = writeln!(s, "- {}: {}.", p.name(), p.promise());
        }
        let _ = writeln!(
            s,
            "- Keel: an ack after the batch's write and `fdatasync` completed.\n"
        );
    } else {
        let _ = writeln!(s, "The peers were left out of this run (`--no-peers`).\n");
    }
    let _ = writeln!(
        s,
        "### Targets\n\n| ratio | measured | target | |\n|---|---|---|---|"
    );
    for v in &r.verdicts {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            v.ratio,
            v.measured.map_or("—".into(), |m| format!("{m:.2}")),
            v.target,
            match v.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::Percentiles;

    fn figures(msgs_per_s: f64, p99: u64) -> Option<Figures> {
        let mut f = Figures::new(
            (msgs_per_s * 2.0) as u64,
            2.0,
            MESSAGE_BYTES,
            Percentiles::default(),
        );
        f.latency_us.p99 = p99;
        Some(f)
    }

    fn measured(
        section: &'static str,
        system: &str,
        workload: &str,
        f: Option<Figures>,
    ) -> Measured {
        Measured {
            section,
            system: system.into(),
            workload: workload.into(),
            error: f.is_none().then(|| "refused".to_string()),
            figures: f,
        }
    }

    fn probe() -> Probe {
        Probe {
            big_mb_s: 1000.0,
            big_syncs_s: 1000.0,
            small_syncs_s: 10_000.0,
            small_us: [80, 120, 160],
            small_unwritten_us: [180, 230, 400],
            ring_big_mb_s: 1000.0,
            big_unwritten_mb_s: 600.0,
        }
    }

    #[test]
    fn verdicts_compare_the_right_rows_and_say_what_was_not_measured() {
        // 16 x 1 against the null server: a 120 µs round trip; with the probe's 80 µs sync, at
        // most 16 / 200 µs = 80,000 msg/s.
        let null_16x1 = figures(100_000.0, 1).map(|mut f| {
            f.latency_us.p50 = 120;
            f
        });
        let runs = Runs {
            list: vec![
                measured(PRODUCE, NULL_SERVER, "T", figures(1_000_000.0, 1)),
                measured(PRODUCE, KEEL, "T", figures(700_000.0, 1)),
                measured(PRODUCE, KEEL, "other", figures(1.0, 1)),
                measured(PRODUCE, KEEL, "4P", figures(500_000.0, 1)),
                measured(GROUP_COMMIT, KEEL, "G", figures(90_000.0, 1)),
                measured(PEERS, KEEL, "P", figures(400_000.0, 2_000)),
                measured(
                    PEERS,
                    Peer::RabbitQuorum.name(),
                    "x",
                    figures(20_000.0, 40_000),
                ),
                measured(PEERS, Peer::NatsJetStream.name(), "x", None),
                measured(DRAIN, KEEL, "D", figures(300_000.0, 1)),
                measured(DRAIN, Peer::RabbitQuorum.name(), "D", figures(40_000.0, 0)),
                measured(DRAIN, Peer::RabbitClassic.name(), "D", figures(50_000.0, 0)),
                measured(PEERS_16X1, KEEL, "F", figures(30_000.0, 1)),
                measured(PEERS_16X1, NULL_SERVER, "F", null_16x1),
                measured(
                    PEERS_16X1,
                    Peer::NatsJetStream.name(),
                    "F",
                    figures(50_000.0, 1),
                ),
            ],
            step: 0,
            steps: 0,
        };
        let shapes = Shapes {
            target: "T".into(),
            peers: "P".into(),
            drain: "D".into(),
            drain_produce: "4P".into(),
            e2e: "E".into(),
        };
        let v = verdicts(&runs, &probe(), &shapes, 2);
        let get = |prefix: &str| {
            v.iter()
                .find(|v| v.ratio.starts_with(prefix))
                .map(|v| (v.measured.map(|m| (m * 100.0).round() / 100.0), v.met))
        };
        assert_eq!(get("keeld / null server"), Some((Some(0.7), Some(true))));
        // No engine row: not measured, neither met nor missed.
        assert_eq!(get("engine alone"), Some((None, None)));
        assert_eq!(get("group commit"), Some((Some(9.0), Some(false))));
        assert_eq!(
            get("keeld / RabbitMQ quorum"),
            Some((Some(20.0), Some(true)))
        );
        assert_eq!(
            get("keeld p99 / RabbitMQ quorum"),
            Some((Some(0.05), Some(true)))
        );
        assert_eq!(get("keeld / NATS"), Some((None, None)));
        // The faster RabbitMQ queue is the one compared with.
        assert_eq!(
            get("keeld / RabbitMQ (faster"),
            Some((Some(6.0), Some(false)))
        );
        assert_eq!(
            get("keeld consume with per-message durable acks / durable produce"),
            Some((Some(0.6), Some(true)))
        );
        // No end-to-end row: not measured.
        assert_eq!(get("end to end"), Some((None, None)));
        assert_eq!(
            get("keeld / NATS JetStream msg/s, 16 publishers"),
            Some((Some(0.6), Some(false)))
        );
        // 80,000 / 50,000: 1.5x NATS is within this machine's reach.
        assert_eq!(
            get("16 x 1's bound (16 / (null-server p50 + disk 4 KiB sync p50)) / NATS"),
            Some((Some(1.6), Some(true)))
        );
        // No RabbitMQ 16 x 1 row: neither ratio can be told.
        assert_eq!(
            get("16 x 1's bound (16 / (null-server p50 + disk 4 KiB sync p50)) / RabbitMQ quorum"),
            Some((None, None))
        );
    }

    #[test]
    fn the_report_lists_failures_and_verdicts_plainly() {
        let report = SuiteReport {
            command: "keel-bench suite --quick".into(),
            machine: Machine::describe(std::path::Path::new("/")),
            seconds_per_workload: 1.0,
            backlog_messages: 10,
            probe: probe(),
            runs: vec![
                measured(PEERS, KEEL, "P", figures(400_000.0, 2_000)),
                measured(PEERS, Peer::NatsJetStream.name(), "x", None),
            ],
            verdicts: vec![Verdict {
                ratio: "keeld / NATS JetStream msg/s".into(),
                measured: None,
                target: ">= 2".into(),
                met: None,
            }],
        };
        let md = markdown(&report, &[Peer::NatsJetStream]);
        assert!(md.contains("`keel-bench suite --quick`"), "{md}");
        assert!(
            md.contains("| NATS JetStream | x | not measured: refused |"),
            "{md}"
        );
        assert!(
            md.contains("| keeld / NATS JetStream msg/s | — | >= 2 | not measured |"),
            "{md}"
        );
        assert!(
            md.contains("before fsync"),
            "NATS's weaker promise is stated: {md}"
        );
    }
}
