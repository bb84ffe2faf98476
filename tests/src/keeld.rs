//! Real `keeld` processes for end-to-end tests: started on a free loopback port over a data
//! directory, stopped with real signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use keel_client::{Client, ClientOptions, FetchOptions, Message, Producer, ProducerOptions};

/// How long a server may take to become ready or to stop.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A binary of this package (`test-keeld`, `test-keel`: the real server and CLI, see
/// `src/bin/`), which cargo builds next to the test executables before running them.
pub fn package_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable directory");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with cargo test, which builds it",
        bin.display()
    );
    bin
}

/// A `keeld` started but perhaps not ready yet; killed when dropped.
pub struct Starting {
    child: Option<Child>,
    data_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
    ready: crossbeam_channel::Receiver<String>,
}

impl Starting {
    /// Waits (up to [`PATIENCE`]) for its ready line.
    pub fn ready(mut self) -> Keeld {
        let Ok(line) = self.ready.recv_timeout(PATIENCE) else {
            // Dropping self kills it.
            panic!(
                "keeld did not become ready within {PATIENCE:?}; its stderr:\n{}",
                self.stderr.lock().unwrap()
            );
        };
        let addr = line.split_whitespace().next().unwrap_or("");
        let kafka_addr = line
            .split_once("Kafka protocol on ")
            .map(|(_, rest)| rest.trim_end_matches(')'))
            .map(|a| a.parse().expect("Kafka address in the ready line"));
        Keeld {
            child: self.child.take(),
            addr: addr.parse().expect("listen address in the ready line"),
            kafka_addr,
            data_dir: self.data_dir.clone(),
            stderr: Arc::clone(&self.stderr),
        }
    }

    /// Whether it printed its ready line yet.
    pub fn is_ready(&self) -> bool {
        !self.ready.is_empty()
    }
}

/// A running `keeld`; killed when dropped.
pub struct Keeld {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of its Kafka listener, when it is on.
    pub kafka_addr: Option<SocketAddr>,
    /// Its data directory.
    pub data_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Keeld {
    /// Starts `keeld` on a free loopback port, with 2 shards, small segments and `extra`
    /// arguments; its data directory and config file go in `dir` (a restart over the same
    /// `dir` finds the same data). Returns once it printed its ready line.
    pub fn start(dir: &Path, extra: &[&str]) -> Keeld {
        Self::start_with_config(dir, "", extra)
    }

    /// [`Keeld::start`] with more lines for its config file.
    pub fn start_with_config(dir: &Path, more_config: &str, extra: &[&str]) -> Keeld {
        Self::launch(dir, more_config, extra).ready()
    }

    /// Starts `keeld` as [`Keeld::start_with_config`] does, without waiting for its ready line:
    /// [`Starting::ready`] waits.
    pub fn launch(dir: &Path, more_config: &str, extra: &[&str]) -> Starting {
        let data_dir = dir.join("data");
        let config = dir.join("keeld.toml");
        // The tests' defaults, each unless `more_config` sets the key itself.
        let defaults = [
            "segment_bytes = 1048576",
            "max_batch_bytes = 262144",
            "zero_segments = false",
            // Tests run side by side: each keeld's Kafka listener on a port of its own.
            "kafka_listen = \"127.0.0.1:0\"",
        ];
        let given = |line: &str| {
            let key = line.split('=').next().unwrap_or("").trim();
            more_config
                .lines()
                .any(|l| l.split('=').next().unwrap_or("").trim() == key)
        };
        let mut text: String = defaults
            .iter()
            .filter(|l| !given(l))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(more_config);
        std::fs::write(&config, text).expect("write the test config");
        let listen_given = extra.contains(&"--listen");
        let mut command = Command::new(package_bin("test-keeld"));
        command.arg("--data-dir").arg(&data_dir);
        if !listen_given {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(["--shards", "2", "--no-pin"])
            .arg("--config")
            .arg(&config)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keeld");
        let stdout = child.stdout.take().expect("keeld stdout");
        let mut stderr_pipe = child.stderr.take().expect("keeld stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, ready) = bounded(1);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("keeld listening on ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        Starting {
            child: Some(child),
            data_dir,
            stderr,
            ready,
        }
    }

    /// A client connected to it.
    pub fn client(&self) -> Client {
        let options = ClientOptions {
            request_timeout: PATIENCE,
            ..ClientOptions::default()
        };
        Client::connect_with(self.addr, options).expect("connect to keeld")
    }

    /// A producer connected to it (default settings but for a request timeout of
    /// `timeout`).
    pub fn producer(&self, timeout: Duration) -> Producer {
        let options = ProducerOptions {
            connection: ClientOptions {
                request_timeout: timeout,
                ..ClientOptions::default()
            },
            ..ProducerOptions::default()
        };
        Producer::connect_with(self.addr, options).expect("connect a producer to keeld")
    }

    /// The `keel` CLI, pointed at it.
    pub fn keel(&self) -> Command {
        let mut cmd = Command::new(package_bin("test-keel"));
        cmd.arg("--server").arg(self.addr.to_string());
        cmd
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (up to [`PATIENCE`]) until its log contains `needle`; its log was read from a
    /// pipe by another thread, so a line written a moment ago may not be there yet. Returns
    /// whether it came.
    pub fn log_shows(&self, needle: &str) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("keeld is running").id()
    }

    /// Sends `signal` (a name `kill` understands, like "STOP") without waiting for anything.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Sends `signal` (a name `kill` understands, like "TERM") and waits for it to exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        let mut child = self.child.take().expect("keeld is running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for keeld") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "keeld did not exit within {PATIENCE:?} of SIG{signal}; its stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `SIGKILL`: the process dies at once, with whatever it had in flight.
    pub fn kill(&mut self) {
        let status = self.signal_and_wait("KILL");
        assert!(
            !status.success(),
            "a SIGKILLed process cannot exit successfully"
        );
    }

    /// `SIGTERM`: a graceful stop; returns its exit status. Fails the test if any thread of
    /// keeld panicked (a panic off the main thread leaves the exit status alone).
    pub fn terminate(&mut self) -> ExitStatus {
        let status = self.signal_and_wait("TERM");
        let log = self.stderr();
        assert!(!log.contains("panicked at"), "keeld panicked:\n{log}");
        status
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Keeld {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every message of a partition from `from` to the end of its log, fetched `max_bytes` at a time.
pub fn fetch_all(
    client: &Client,
    topic: &str,
    partition: u32,
    from: u64,
    max_bytes: u32,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let options = FetchOptions {
            max_bytes,
            ..FetchOptions::default()
        };
        let fetched = client.fetch(topic, partition, offset, options).unwrap();
        out.extend(fetched.messages(offset).unwrap());
        offset = fetched.next_offset;
        if fetched.at_end() {
            return out;
        }
    }
}

/// [`fetch_all`] from offset 0, as (offset, value) pairs.
pub fn values(client: &Client, topic: &str, partition: u32) -> Vec<(u64, Vec<u8>)> {
    fetch_all(client, topic, partition, 0, 1 << 20)
        .into_iter()
        .map(|m| (m.offset, m.value.unwrap_or_default()))
        .collect()
}

/// The metrics address `keeld` logged (started with `--metrics-listen`).
pub fn metrics_addr(keeld: &Keeld) -> SocketAddr {
    // The whole line: the log may be read while keeld is still writing it.
    assert!(keeld.log_shows("/metrics\n"), "{}", keeld.stderr());
    let log = keeld.stderr();
    let rest = log.split("metrics on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// The raw answer to `request`.
pub fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// The value of the sample `name{labels}` in a scrape.
pub fn sample(addr: SocketAddr, series: &str) -> f64 {
    let answer = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let line = answer
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{answer}"));
    line[series.len() + 1..].parse().unwrap()
}
