//! A TCP relay on a free loopback port in front of keeld whose connections a test can cut at
//! any moment, both ways at once, as a failing network would: what a client sent may or may
//! not have reached keeld, and keeld's answers after the cut never arrive.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

use crate::relay::Acceptor;

/// The relay; it stops (and cuts what is left) when dropped.
pub struct Cutter {
    /// Where clients connect.
    pub addr: SocketAddr,
    live: Arc<Mutex<Vec<TcpStream>>>,
    /// Accepts until the relay is dropped.
    _acceptor: Acceptor,
}

impl Cutter {
    /// Relays every connection made to [`Cutter::addr`] to `upstream`.
    pub fn start(upstream: SocketAddr) -> Cutter {
        let live = Arc::new(Mutex::new(Vec::new()));
        let streams = Arc::clone(&live);
        let acceptor = Acceptor::start(upstream, move |client, server| {
            let pairs = [
                (client.try_clone(), server.try_clone()),
                (server.try_clone(), client.try_clone()),
            ];
            {
                let mut live = streams.lock().unwrap();
                live.extend(client.try_clone());
                live.extend(server.try_clone());
            }
            for pair in pairs {
                if let (Ok(from), Ok(to)) = pair {
                    std::thread::spawn(move || copy(from, to));
                }
            }
        });
        Cutter {
            addr: acceptor.addr,
            live,
            _acceptor: acceptor,
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
        self.cut();
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
