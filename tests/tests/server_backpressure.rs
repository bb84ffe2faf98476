//! A client that sends and never reads cannot make the server buffer without limit: once the
//! connection's in-flight budget is spent the server stops reading that socket, and everyone
//! else is served as before.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keel_client::{FetchOptions, Target};
use keel_protocol::{decode_response, encode_request, ApiKey, Request};
use keel_tests::keeld::Keeld;
use keel_tests::raw_produce::produce;
use keel_tests::{data_dir, read_frame};

/// `n` fetches of partition 0 of "big" from offset 0, 256 KiB each, as one buffer of frames.
fn fetch_requests(n: u32) -> Vec<u8> {
    let mut requests = Vec::new();
    for id in 0..n {
        let fetch = Request::Fetch {
            topic: "big".into(),
            partition: 0,
            offset: 0,
            max_bytes: 256 * 1024,
            max_wait_ms: 0,
        };
        encode_request(id, &fetch, &mut requests);
    }
    requests
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

fn never_reading_client(io: &[&str]) {
    let dir = data_dir();
    let config = "max_frame_bytes = 524288\nconnection_inflight_bytes = 1048576\nshard_inflight_bytes = 8388608\n";
    let server = Keeld::start_with_config(dir.path(), config, io);
    let client = server.client();
    client.create_topic("big", 1).unwrap();
    for _ in 0..4 {
        produce(
            &client,
            "big",
            Target::Partition(0),
            [vec![1u8; 250 * 1024]],
        )
        .unwrap();
    }
    let baseline = rss(server.pid());

    // 2,000 fetches of ~250 KiB each: half a gigabyte of answers if the server took them all.
    let mut greedy = TcpStream::connect(server.addr).unwrap();
    greedy
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let requests = fetch_requests(2000);
    // Small enough for the socket buffers to take it all even when the server stops reading.
    greedy.write_all(&requests).unwrap();

    // Watch the server's memory while it has every reason to grow.
    let mut peak = baseline;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        peak = peak.max(rss(server.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 64 << 20,
        "server grew by {} MiB for one client that does not read",
        growth >> 20
    );

    // Another client is served meanwhile.
    let ack = produce(&client, "big", Target::Partition(0), ["small"]).unwrap();
    assert_eq!(ack.first_offset, 4);
    let fetched = client.fetch("big", 0, 4, FetchOptions::default()).unwrap();
    assert_eq!(
        fetched.messages(4).unwrap()[0].value.as_deref(),
        Some(&b"small"[..])
    );

    // Once the greedy client reads, its parked connection resumes: all 2,000 are answered.
    greedy
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = std::io::BufReader::new(&greedy);
    let mut answered = std::collections::HashSet::new();
    for _ in 0..2000 {
        let frame = read_frame(&mut reader);
        let (id, answer) = decode_response(&frame, ApiKey::Fetch).unwrap();
        assert!(answer.is_ok());
        answered.insert(id);
    }
    assert_eq!(answered.len(), 2000);
}

#[test]
fn a_client_that_never_reads_is_not_buffered_without_limit() {
    never_reading_client(&[]);
}

#[test]
fn a_client_that_never_reads_is_not_buffered_without_limit_with_portable_io() {
    never_reading_client(&["--portable-io"]);
}

/// A client that stops reading its answers is disconnected after the write timeout, instead of
/// holding its connection (and the server's stop) forever.
fn stalled_reader_is_disconnected(io: &[&str]) {
    let dir = data_dir();
    let config =
        "max_frame_bytes = 524288\nconnection_inflight_bytes = 1048576\nwrite_timeout_ms = 300\n";
    let server = Keeld::start_with_config(dir.path(), config, io);
    let client = server.client();
    client.create_topic("big", 1).unwrap();
    produce(
        &client,
        "big",
        Target::Partition(0),
        [vec![1u8; 250 * 1024]],
    )
    .unwrap();
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    let requests = fetch_requests(2000);
    stalled.write_all(&requests).unwrap();
    // Well past the 300 ms timeout, without reading.
    std::thread::sleep(Duration::from_secs(3));
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut received = Vec::new();
    let ended = match stalled.read_to_end(&mut received) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(ended, "the stalled connection was not closed");
    assert!(
        received.len() < 2000 * 250 * 1024,
        "every answer arrived: nothing was cut off"
    );
    // Everyone else is served.
    assert_eq!(
        produce(&client, "big", Target::Partition(0), ["x"])
            .unwrap()
            .first_offset,
        1
    );
}

#[test]
fn a_client_that_stops_reading_is_disconnected() {
    stalled_reader_is_disconnected(&[]);
}

#[test]
fn a_client_that_stops_reading_is_disconnected_with_portable_io() {
    stalled_reader_is_disconnected(&["--portable-io"]);
}
