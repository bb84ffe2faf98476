//! The metrics endpoint of a real keeld: engine and group figures, the ack window filling up
//! and draining, and answers to requests that are not a scrape.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use keel_client::{spans_of, BatchBuilder, JoinSettings, StartAt, Target};
use keel_engine::offsets::WINDOW;
use keel_tests::data_dir;
use keel_tests::keeld::{http, metrics_addr, sample, Keeld, PATIENCE};

#[test]
fn metrics_show_the_ack_window_filling_and_draining() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&keeld);
    let client = keeld.client();
    client.create_topic("t", 1).unwrap();
    let total = WINDOW as u64 + 100;
    let mut batch = BatchBuilder::new(0);
    for i in 0..total {
        batch.push(None, i.to_string().as_bytes(), &[]);
    }
    client
        .send_batch("t", Target::Partition(0), &batch.build())
        .unwrap()
        .wait()
        .unwrap();
    assert!(sample(addr, "keel_appends_total") >= 1.0);
    assert_eq!(sample(addr, "keel_connections"), 1.0);

    // A prefetch larger than the window: the window is what stops delivery.
    let m = client
        .join_group(
            "g",
            "t",
            StartAt::Earliest,
            JoinSettings {
                max_unacked: 2 * WINDOW as u32,
                ..JoinSettings::default()
            },
        )
        .unwrap();
    let series = |name: &str| format!("{name}{{group=\"g\",topic=\"t\",partition=\"0\"}}");
    let mut held = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while held.len() < WINDOW {
        assert!(Instant::now() < deadline, "only {} delivered", held.len());
        held.extend(
            client
                .consume(&m, 1000, Duration::from_millis(200))
                .unwrap(),
        );
    }
    assert!(client.consume(&m, 1000, Duration::ZERO).unwrap().is_empty());
    assert_eq!(sample(addr, &series("keel_group_window_full")), 1.0);
    assert!(sample(addr, &series("keel_group_window_full_pauses_total")) >= 1.0);
    assert_eq!(sample(addr, &series("keel_group_in_flight")), WINDOW as f64);
    assert_eq!(
        sample(addr, &series("keel_group_deliveries_total")),
        WINDOW as f64
    );
    assert_eq!(sample(addr, &series("keel_group_committed_offset")), 0.0);
    assert_eq!(
        sample(addr, "keel_group_members{group=\"g\",topic=\"t\"}"),
        1.0
    );

    // Acknowledging the low end opens the window again.
    client.ack(&m, &spans_of(&held[..100]), true).unwrap();
    assert_eq!(sample(addr, &series("keel_group_window_full")), 0.0);
    assert_eq!(sample(addr, &series("keel_group_committed_offset")), 100.0);
    let more = client.consume(&m, 1000, Duration::from_secs(5)).unwrap();
    assert_eq!(more.len(), 100);
    assert_eq!(
        sample(addr, &series("keel_group_deliveries_total")),
        total as f64
    );
    assert_eq!(sample(addr, &series("keel_group_redeliveries_total")), 0.0);
}

#[test]
fn metrics_count_the_segment_files_retention_reuses_and_deletes() {
    let dir = data_dir();
    // 1 MiB segments (the harness's), 2 MiB kept per partition.
    let keeld = Keeld::start_with_config(
        dir.path(),
        "retention_bytes = 2097152\n",
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let addr = metrics_addr(&keeld);
    assert_eq!(sample(addr, "keel_segments_recycled_total"), 0.0);
    assert_eq!(sample(addr, "keel_segments_deleted_total"), 0.0);
    let client = keeld.client();
    client.create_topic("t", 1).unwrap();
    // About 8.6 MiB: at least 8 segments used, at most 4 of them kept.
    let value = vec![7u8; 16 << 10];
    for _ in 0..36 {
        let mut batch = BatchBuilder::new(0);
        for _ in 0..15 {
            batch.push(None, &value, &[]);
        }
        client
            .send_batch("t", Target::Partition(0), &batch.build())
            .unwrap()
            .wait()
            .unwrap();
    }
    let recycled = sample(addr, "keel_segments_recycled_total");
    let deleted = sample(addr, "keel_segments_deleted_total");
    assert!(
        recycled >= 1.0,
        "no segment file reused ({deleted} deleted)"
    );
    assert!(
        recycled + deleted >= 4.0,
        "{recycled} reused + {deleted} deleted segment files: retention dropped too few"
    );
    // The commit linger's counters are there too (a run out wait is one that began).
    assert!(
        sample(addr, "keel_flushes_held_total") >= sample(addr, "keel_flush_holds_expired_total")
    );
    // A flush written beside an earlier one is one of the flushes.
    assert!(sample(addr, "keel_flushes_overlapped_total") <= sample(addr, "keel_flushes_total"));
}

#[test]
fn the_metrics_endpoint_answers_other_requests_with_errors_and_keeps_serving() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&keeld);
    assert!(http(addr, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    assert!(http(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(http(addr, &huge).starts_with("HTTP/1.1 431 "));
    // A scraper that connects and says nothing is cut off; the next scrape is answered.
    let silent = TcpStream::connect(addr).unwrap();
    assert!(sample(addr, "keel_connections") >= 0.0);
    drop(silent);
    // Without the flag there is no endpoint.
    let plain = Keeld::start(data_dir().path(), &[]);
    assert!(!plain.stderr().contains("metrics on"));
}
