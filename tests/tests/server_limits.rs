//! Bounded memory and time for every connection: frames announced but never sent hold no
//! memory, a frame trickling in or a silent connection is cut off after its timeout, and
//! connections beyond `max_connections` are refused with a named error; a well-behaved client
//! is served throughout. Each in the three ways keeld serves connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keel_client::{ErrorCode, Target};
use keel_protocol::{decode_response, ApiKey};
use keel_tests::data_dir;
use keel_tests::keeld::{Keeld, PATIENCE};
use keel_tests::raw_produce::produce;

/// Connections announcing a frame they never finish.
const HALF_SENT: usize = 300;
/// Bytes each of them sends of its frame in the second step.
const SENT_OF_FRAME: usize = 1 << 20;
/// The partial-frame pool the test runs with.
const POOL_BYTES: u64 = 16 << 20;
/// What keeld may grow by while they hold their frames (OPERATIONS.md, "Limits"): what each
/// connection's buffer holds of its own (at most 256 KiB), the pool, and room for the rest.
const RSS_BOUND_BYTES: u64 = HALF_SENT as u64 * (256 << 10) + POOL_BYTES + (48 << 20);
/// With `--portable-io` each connection also has a reader and a writer thread: what their
/// stacks touch (a few pages each) comes on top.
const THREAD_PAIR_BYTES: u64 = 2 * (64 << 10);

/// keeld's resident memory.
fn rss_bytes(keeld: &Keeld) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", keeld.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

/// A produce frame header announcing `size` bytes after its size prefix.
fn announced_frame(size: u32) -> Vec<u8> {
    let mut f = size.to_le_bytes().to_vec();
    f.extend_from_slice(&(ApiKey::Produce as u16).to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&7u32.to_le_bytes());
    f
}

/// A well-behaved client still gets its produce acknowledged and read back.
fn served(keeld: &Keeld, value: &[u8]) {
    let client = keeld.client();
    let ack = produce(&client, "t", Target::Partition(0), [value]).unwrap();
    let fetched = client
        .fetch("t", 0, ack.first_offset, Default::default())
        .unwrap();
    let got = fetched.messages(ack.first_offset).unwrap();
    assert_eq!(got[0].value.as_deref(), Some(value));
}

fn half_sent_frames_hold_no_memory(io: &[&str], per_conn_extra_bytes: u64) {
    let bound = RSS_BOUND_BYTES + HALF_SENT as u64 * per_conn_extra_bytes;
    let dir = data_dir();
    let config = format!("partial_frame_bytes = {POOL_BYTES}\n");
    let keeld = Keeld::start_with_config(dir.path(), &config, io);
    keeld.client().create_topic("t", 1).unwrap();
    served(&keeld, b"before");
    let before = rss_bytes(&keeld);
    let header = announced_frame(16 * 1024 * 1024 - 4);
    let mut conns = Vec::new();
    for _ in 0..HALF_SENT {
        let mut s = TcpStream::connect(keeld.addr).unwrap();
        s.write_all(&header).unwrap();
        s.write_all(&[0u8; 1000]).unwrap();
        conns.push(s);
    }
    served(&keeld, b"while they wait");
    std::thread::sleep(Duration::from_millis(300));
    let grown = rss_bytes(&keeld).saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "{HALF_SENT} announced frames of 16 MiB grew keeld by {} MiB",
        grown >> 20
    );
    // Now each sends a MiB of its frame: what keeld takes in is bounded by the pool; the rest
    // waits in the clients' sockets.
    let chunk = vec![0u8; SENT_OF_FRAME];
    for s in &mut conns {
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = s.write_all(&chunk);
    }
    served(&keeld, b"while they send");
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_bytes(&keeld).saturating_sub(before);
    assert!(
        grown < bound,
        "{HALF_SENT} frames a MiB in grew keeld by {} MiB (bound {} MiB)",
        grown >> 20,
        bound >> 20
    );
    drop(conns);
    served(&keeld, b"after");
}

#[test]
fn half_sent_frames_hold_no_memory_with_io_uring() {
    half_sent_frames_hold_no_memory(&[], 0);
}

#[test]
fn half_sent_frames_hold_no_memory_with_portable_io() {
    half_sent_frames_hold_no_memory(&["--portable-io"], THREAD_PAIR_BYTES);
}

/// Reads until the server closes the connection; fails after `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut sink = [0u8; 256];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("still open after {within:?}")
            }
            Err(_) => return started.elapsed(),
        }
    }
}

fn slow_and_silent_connections_are_cut_off(io: &[&str]) {
    let dir = data_dir();
    let keeld = Keeld::start_with_config(
        dir.path(),
        "frame_read_timeout_ms = 1000\nidle_timeout_ms = 1500\n",
        io,
    );
    keeld.client().create_topic("t", 1).unwrap();

    // One byte of a frame every 100 ms: the frame is not done within its second.
    let mut slow = TcpStream::connect(keeld.addr).unwrap();
    let trickle = std::thread::spawn({
        let mut s = slow.try_clone().unwrap();
        move || {
            for b in announced_frame(1000) {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let mut silent = TcpStream::connect(keeld.addr).unwrap();
    let silent_since = Instant::now();
    let took = closed_within(&mut slow, Duration::from_secs(10));
    assert!(
        took < Duration::from_millis(3000),
        "slow frame cut after {took:?}"
    );
    closed_within(&mut silent, Duration::from_secs(10));
    let took = silent_since.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(4000),
        "the silent connection went after {took:?} (idle_timeout_ms 1500)"
    );
    // A client that sends a request now and then, more often than the idle timeout, stays.
    let client = keeld.client();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        client.list_topics().unwrap();
    }
    trickle.join().unwrap();
    assert!(
        keeld.log_shows("frame_read_timeout_ms"),
        "{}",
        keeld.stderr()
    );
    assert!(keeld.log_shows("idle_timeout_ms"), "{}", keeld.stderr());
}

#[test]
fn slow_and_silent_connections_are_cut_off_with_io_uring() {
    slow_and_silent_connections_are_cut_off(&[]);
}

#[test]
fn slow_and_silent_connections_are_cut_off_with_portable_io() {
    slow_and_silent_connections_are_cut_off(&["--portable-io"]);
}

fn connections_beyond_the_limit_are_refused(io: &[&str]) {
    let dir = data_dir();
    let keeld = Keeld::start_with_config(dir.path(), "max_connections = 4\n", io);
    let client = keeld.client();
    client.create_topic("t", 1).unwrap();
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(keeld.addr).unwrap())
        .collect();
    // Wait until keeld has taken all four in.
    let deadline = Instant::now() + PATIENCE;
    let mut refused = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(keeld.addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut frame = Vec::new();
        s.read_to_end(&mut frame).unwrap();
        assert!(Instant::now() < deadline);
        refused.push(frame);
    }
    for frame in &refused {
        let (id, answer) = decode_response(frame, ApiKey::Handshake).unwrap();
        let e = answer.unwrap_err();
        assert_eq!((id, e.code), (0, ErrorCode::Busy), "{}", e.message);
        assert!(e.message.contains("max_connections"), "{}", e.message);
    }
    // A client is told why.
    match keel_client::Client::connect(keeld.addr.to_string()) {
        Err(e) => {
            let said = e.to_string();
            assert!(
                said.contains("refused") && said.contains("max_connections"),
                "{said}"
            );
        }
        Ok(_) => panic!("a client beyond max_connections was served"),
    }
    // The connections within the limit are served; the refusals were logged once, counted.
    client.list_topics().unwrap();
    assert!(keeld.log_shows("refused"), "{}", keeld.stderr());
    let lines = keeld
        .stderr()
        .lines()
        .filter(|l| l.contains("refused a connection"))
        .count();
    assert!(
        lines < 5,
        "each refusal logged on its own:\n{}",
        keeld.stderr()
    );
    drop(held);
    // Room again: a new connection is served.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let fresh = keel_client::Client::connect(keeld.addr.to_string());
        if let Ok(c) = fresh {
            if c.list_topics().is_ok() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no room after connections closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_beyond_the_limit_are_refused_with_io_uring() {
    connections_beyond_the_limit_are_refused(&[]);
}

#[test]
fn connections_beyond_the_limit_are_refused_with_portable_io() {
    connections_beyond_the_limit_are_refused(&["--portable-io"]);
}
