//! A TCP relay on a free loopback port in front of keeld that answers some produce requests
//! itself with `Busy` instead of passing them on, as a keeld short of room for them would: the
//! request never reaches keeld, and its answer comes back among keeld's own answers.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::relay::Acceptor;

use keel_protocol::{
    encode_error, frame_len, ApiKey, ErrorCode, REQUEST_HEADER_BYTES, RESPONSE_HEADER_BYTES,
};

/// Largest frame the relay passes on.
const MAX_FRAME: u32 = 64 << 20;

/// The relay; it stops accepting when dropped.
pub struct Refuser {
    /// Where clients connect.
    pub addr: SocketAddr,
    refused: Arc<AtomicU64>,
    /// Accepts until the relay is dropped.
    _acceptor: Acceptor,
}

impl Refuser {
    /// Relays every connection made to [`Refuser::addr`] to `upstream`, answering every
    /// `one_in`-th produce request (counted over all connections) with `Busy` itself.
    pub fn start(upstream: SocketAddr, one_in: u64) -> Refuser {
        assert!(one_in > 0);
        let refused = Arc::new(AtomicU64::new(0));
        let produces = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&refused);
        let acceptor = Acceptor::start(upstream, move |client, server| {
            let (Ok(from_client), Ok(from_server), Ok(to_client)) =
                (client.try_clone(), server.try_clone(), client.try_clone())
            else {
                return;
            };
            let to_client = Arc::new(Mutex::new(to_client));
            let turn = Turn {
                one_in,
                produces: Arc::clone(&produces),
                refused: Arc::clone(&counted),
            };
            let answers = Arc::clone(&to_client);
            std::thread::spawn(move || requests(from_client, server, &to_client, &turn));
            std::thread::spawn(move || answers_back(from_server, &answers));
        });
        Refuser {
            addr: acceptor.addr,
            refused,
            _acceptor: acceptor,
        }
    }

    /// Produce requests answered `Busy` so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

/// Which produce requests are refused.
struct Turn {
    one_in: u64,
    produces: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

/// Whole frames from `from`, one at a time, until it closes.
fn frames(mut from: TcpStream, header: usize, mut each: impl FnMut(&[u8]) -> bool) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Ok(Some(n)) = frame_len(&buf, header, MAX_FRAME) {
            if !each(&buf[..n]) {
                return;
            }
            buf.drain(..n);
        }
        match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The client's requests: passed on to keeld, or answered `Busy` here.
fn requests(from: TcpStream, mut server: TcpStream, client: &Mutex<TcpStream>, turn: &Turn) {
    frames(from, REQUEST_HEADER_BYTES, |frame| {
        let api = u16::from_le_bytes([frame[4], frame[5]]);
        let correlation_id = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]);
        let refuse = api == ApiKey::Produce as u16
            && turn.produces.fetch_add(1, Ordering::SeqCst) % turn.one_in == turn.one_in - 1;
        if !refuse {
            return server.write_all(frame).is_ok();
        }
        turn.refused.fetch_add(1, Ordering::SeqCst);
        let mut answer = Vec::new();
        encode_error(
            correlation_id,
            ErrorCode::Busy,
            "refused by the test relay",
            &mut answer,
        );
        client.lock().unwrap().write_all(&answer).is_ok()
    });
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.lock().unwrap().shutdown(Shutdown::Both);
}

/// keeld's answers, passed back whole, so that the relay's own answers fall between them.
fn answers_back(from: TcpStream, client: &Mutex<TcpStream>) {
    let closing = from.try_clone();
    frames(from, RESPONSE_HEADER_BYTES, |frame| {
        client.lock().unwrap().write_all(frame).is_ok()
    });
    if let Ok(s) = closing {
        let _ = s.shutdown(Shutdown::Both);
    }
    let _ = client.lock().unwrap().shutdown(Shutdown::Both);
}
