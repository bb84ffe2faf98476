//! Figures read from a keeld child's metrics endpoint (Prometheus text format): how far a fill
//! has got, and what retention did during a run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A keeld metrics endpoint on loopback.
pub struct KeeldMetrics {
    addr: SocketAddr,
}

impl KeeldMetrics {
    /// Picks a free loopback port for keeld's `--metrics-listen`. The port is free when this
    /// returns; keeld binds it moments later, and fails to start if something took it between.
    pub fn on_free_port() -> Result<Self, String> {
        let probe = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("no free loopback port for keeld's metrics: {e}"))?;
        let addr = probe.local_addr().map_err(|e| e.to_string())?;
        Ok(Self { addr })
    }

    /// The value for `--metrics-listen`.
    pub fn listen_arg(&self) -> String {
        self.addr.to_string()
    }

    /// The value of the unlabelled sample `name` in one scrape.
    pub fn sample(&self, name: &str) -> Result<f64, String> {
        let failed = |e: std::io::Error| format!("scraping keeld's metrics at {}: {e}", self.addr);
        let mut s =
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(10)).map_err(failed)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(failed)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: keel-bench\r\n\r\n")
            .map_err(failed)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(failed)?;
        answer
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("keeld's metrics have no {name}"))
    }
}
