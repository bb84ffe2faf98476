//! Servers under test run as child processes, so that the load generator does not share
//! their address space or allocator.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

/// A started child server.
pub struct ChildServer {
    child: Child,
    /// Where it listens.
    pub addr: String,
    name: String,
}

impl ChildServer {
    /// Starts `cmd` and waits (up to a minute) for a stdout line starting with `ready_prefix`
    /// followed by the listen address.
    pub fn start(mut cmd: Command, name: &str, ready_prefix: &'static str) -> Result<Self, String> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = bounded(1);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix(ready_prefix) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let failed = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                return Ok(Self {
                    child,
                    addr,
                    name: name.to_string(),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                break format!("{name} exited ({status}) before it was ready");
            }
            if Instant::now() > deadline {
                break format!("{name} did not print its ready line within a minute");
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        Err(failed)
    }

    /// SIGTERM, then waits up to a minute (SIGKILL after that).
    pub fn stop(mut self) -> Result<(), String> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "{} did not stop within a minute of SIGTERM",
            self.name
        ))
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
