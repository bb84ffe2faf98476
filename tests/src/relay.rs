//! What the tests' relays share: a listener on a free loopback port whose every connection is
//! paired with a new one to the upstream keeld and handed, as (client, keeld), to the relay's
//! own handler, until the relay stops.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The accepting half of a relay; it stops when dropped.
pub struct Acceptor {
    /// Where clients connect.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Accepts connections, each paired with one to `upstream` and handed to `on_pair`. A
    /// client whose upstream cannot be reached (keeld is down) sees its connection closed, as
    /// it would.
    pub fn start(
        upstream: SocketAddr,
        mut on_pair: impl FnMut(TcpStream, TcpStream) + Send + 'static,
    ) -> Acceptor {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("make the relay's listener non-blocking");
        let addr = listener.local_addr().expect("the relay's address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                on_pair(client, server);
            }
        });
        Acceptor {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
