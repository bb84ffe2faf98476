//! A TCP relay on a free loopback port in front of keeld whose connections a test can cut at
//! any moment, both ways at once, as a failing network would: what a client sent may or may
//! not have reached keeld, and keeld's answers after the cut never arrive.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The relay; it stops (and cuts what is left) when dropped.
pub struct Cutter {
    /// Where clients connect.
    pub addr: SocketAddr,
    live: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Cutter {
    /// Relays every connection made to [`Cutter::addr`] to `upstream`.
    pub fn start(upstream: SocketAddr) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("make the relay's listener non-blocking");
        let addr = listener.local_addr().expect("the relay's address");
        let live = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (live, stop) = (Arc::clone(&live), Arc::clone(&stop));
            std::thread::spawn(move || accept(&listener, upstream, &live, &stop))
        };
        Cutter {
            addr,
            live,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Cuts every connection relayed now; returns how many there were.
    pub fn cut(&self) -> usize {
        let streams: Vec<TcpStream> = std::mem::take(&mut *self.live.lock().unwrap());
        for s in &streams {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Each connection is two streams: the client's and keeld's.
        streams.len() / 2
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn accept(
    listener: &TcpListener,
    upstream: SocketAddr,
    live: &Mutex<Vec<TcpStream>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            // keeld is down: the client sees its connection closed, as it would.
            continue;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let pairs = [
            (client.try_clone(), server.try_clone()),
            (server.try_clone(), client.try_clone()),
        ];
        {
            let mut live = live.lock().unwrap();
            live.extend(client.try_clone());
            live.extend(server.try_clone());
        }
        for pair in pairs {
            if let (Ok(from), Ok(to)) = pair {
                std::thread::spawn(move || copy(from, to));
            }
        }
    }
}

/// Copies one direction until either side closes or is cut; then closes both.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
