//! The metrics endpoint: `GET /metrics` over plain HTTP on an address of its own, in
//! Prometheus' text format (version 0.0.4). Off unless `--metrics-listen` (or the config key
//! `metrics_listen`) is given. One thread answers one scrape at a time: scrapes are rare and
//! small, and a slow scraper is cut off by the socket timeouts.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_engine::Engine;

use crate::server::{Registry, ServerError};
use keel_engine::{GroupMetrics, GroupPartitionMetrics};

/// Longest request head read before the request is refused.
const MAX_REQUEST_BYTES: usize = 8 << 10;
/// How long a scraper may take to send its request or read the answer.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the figures come from.
pub struct Sources {
    /// The engine (gone once the server stops).
    pub engine: Weak<Engine>,
    /// Open connections.
    pub registry: Arc<Registry>,
}

/// The running endpoint.
pub struct MetricsEndpoint {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `addr` and starts answering scrapes.
    pub fn start(addr: SocketAddr, sources: Sources) -> Result<Self, ServerError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Io {
            what: "read the metrics address",
            source,
        })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("keel-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(stream) => {
                            if let Err(e) = answer(stream, &sources) {
                                log::debug!("metrics scrape: {e}");
                            }
                        }
                        Err(e) => {
                            log::warn!("metrics: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
            .map_err(|source| ServerError::Io {
                what: "start the metrics thread",
                source,
            })?;
        Ok(Self {
            addr,
            stopping,
            thread: Some(thread),
        })
    }

    /// The address bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wakes the accept loop, which then sees the flag.
        let wake = match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the metrics thread panicked");
            }
        }
    }
}

/// Reads one request and answers it; the connection is closed after.
fn answer(mut stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_BYTES {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "too long\n",
            )?;
            // Closing with unread bytes would reset the connection before the answer is read:
            // read (a bounded amount of) what the client still sends.
            stream.shutdown(std::net::Shutdown::Write)?;
            let mut left = 1 << 20;
            while left > 0 {
                match stream.read(&mut buf)? {
                    0 => break,
                    n => left -= n.min(left),
                }
            }
            return Ok(());
        }
        match stream.read(&mut buf)? {
            0 => return Ok(()),
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next());
    match (method, path) {
        (b"GET", Some(b"/metrics")) => respond(&mut stream, "200 OK", &render(sources)),
        (b"GET", _) => respond(&mut stream, "404 Not Found", "try /metrics\n"),
        _ => respond(&mut stream, "405 Method Not Allowed", "only GET\n"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Text in Prometheus' exposition format.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// One family with one sample per group partition.
    fn per_partition<T: std::fmt::Display>(
        &mut self,
        groups: &[GroupMetrics],
        (name, kind, help): (&str, &str, &str),
        value: impl Fn(&GroupPartitionMetrics) -> T,
    ) {
        self.family(name, kind, help);
        for g in groups {
            for m in &g.partitions {
                let p = m.partition.to_string();
                let labels = [
                    ("group", &g.group[..]),
                    ("topic", &g.topic),
                    ("partition", &p),
                ];
                self.sample(name, &labels, value(m));
            }
        }
    }
}

/// Label values escaped as the format wants: backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every figure, as text.
pub fn render(sources: &Sources) -> String {
    let mut out = Exposition(String::new());
    out.family("keel_connections", "gauge", "Client connections open.");
    out.sample("keel_connections", &[], sources.registry.open_connections());
    if let Some(engine) = sources.engine.upgrade() {
        let s = engine.stats();
        for (name, help, value) in [
            (
                "keel_appends_total",
                "Appends acknowledged (durable).",
                s.appends,
            ),
            ("keel_flushes_total", "Group commits completed.", s.flushes),
            (
                "keel_fdatasyncs_total",
                "fdatasync calls issued by group commits.",
                s.syncs,
            ),
            (
                "keel_written_bytes_total",
                "Bytes written by group commits.",
                s.bytes_written,
            ),
            (
                "keel_failed_flushes_total",
                "Group commits that failed (the partition is poisoned for writes).",
                s.failed_flushes,
            ),
            (
                "keel_disk_reads_total",
                "O_DIRECT reads of segment files (not counting reads served from memory).",
                s.disk_reads,
            ),
            (
                "keel_segments_recycled_total",
                "Segment files retention reused as a partition's next segment.",
                s.segments_recycled,
            ),
            (
                "keel_segments_deleted_total",
                "Segment files retention deleted.",
                s.segments_deleted,
            ),
            (
                "keel_flushes_held_total",
                "Group commits that waited for the producers the last one answered (commit_linger_us).",
                s.flushes_held,
            ),
            (
                "keel_flush_holds_expired_total",
                "Of those, the ones that went when the wait ran out, not all of them back.",
                s.holds_expired,
            ),
            (
                "keel_flushes_overlapped_total",
                "Group commits written while an earlier one of their partition was still in flight (flushes_in_flight).",
                s.flushes_overlapped,
            ),
        ] {
            out.family(name, "counter", help);
            out.sample(name, &[], value);
        }
        out.family(
            "keel_partitions_offline",
            "gauge",
            "Partitions held offline because they could not be recovered at start (the log names the file and byte).",
        );
        out.sample("keel_partitions_offline", &[], s.partitions_offline);
        out.family(
            "keel_topics_offline",
            "gauge",
            "Topics held offline because their metadata is damaged.",
        );
        out.sample("keel_topics_offline", &[], s.topics_offline);
    }
    let engine = sources.engine.upgrade();
    out.family(
        "keel_groups_offline",
        "gauge",
        "Consumer groups held offline because their metadata is damaged.",
    );
    out.sample(
        "keel_groups_offline",
        &[],
        engine.as_ref().map_or(0, |e| e.groups_offline()),
    );
    let groups = engine.map(|e| e.group_metrics()).unwrap_or_default();
    out.family(
        "keel_group_members",
        "gauge",
        "Members of a consumer group (groups loaded since keeld started).",
    );
    for g in &groups {
        out.sample(
            "keel_group_members",
            &[("group", &g.group), ("topic", &g.topic)],
            g.members,
        );
    }
    out.per_partition(
        &groups,
        (
            "keel_group_committed_offset",
            "gauge",
            "Every offset below it is acknowledged.",
        ),
        |m| m.committed,
    );
    out.per_partition(
        &groups,
        (
            "keel_group_in_flight",
            "gauge",
            "Messages delivered and not yet acknowledged.",
        ),
        |m| m.in_flight,
    );
    out.per_partition(
        &groups,
        (
            "keel_group_window_full",
            "gauge",
            "1 while the ack window is full: new messages wait until the lowest unacknowledged one is acknowledged.",
        ),
        |m| u8::from(m.window_full),
    );
    out.per_partition(
        &groups,
        (
            "keel_group_window_full_pauses_total",
            "counter",
            "Consumes that found new messages held back by a full ack window.",
        ),
        |m| m.counts.window_full_pauses,
    );
    out.per_partition(
        &groups,
        (
            "keel_group_deliveries_total",
            "counter",
            "Messages handed to members, redeliveries included.",
        ),
        |m| m.counts.deliveries,
    );
    out.per_partition(
        &groups,
        (
            "keel_group_redeliveries_total",
            "counter",
            "Messages handed out again (ack timeout, nack, member gone).",
        ),
        |m| m.counts.redeliveries,
    );
    out.per_partition(
        &groups,
        (
            "keel_group_dead_letters_total",
            "counter",
            "Messages copied to the dead-letter topic after max_deliveries.",
        ),
        |m| m.counts.dead_letters,
    );
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_written_with_escaped_labels() {
        let mut out = Exposition(String::new());
        out.family("x_total", "counter", "Things.");
        out.sample("x_total", &[("group", "a\"b\\c\nd"), ("p", "0")], 7);
        out.sample("y", &[], 1.5);
        assert_eq!(
            out.0,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{group=\"a\\\"b\\\\c\\nd\",p=\"0\"} 7\ny 1.5\n"
        );
    }
}
