//! A real keeld: what is produced comes back byte for byte, through the client and the CLI.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use keel_client::{BatchBuilder, ErrorCode, FetchOptions, Target};
use keel_tests::keeld::{fetch_all, Keeld};
use keel_tests::raw_produce::produce;
use keel_tests::{data_dir, Rng};

#[test]
fn produced_messages_come_back_byte_identical_with_keys_and_headers() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("events", 3).unwrap();
    let mut rng = Rng(0x5eed);
    // (partition, offset) -> (key, value, header value) as sent.
    let mut sent = Vec::new();
    for round in 0..60u32 {
        let partition = round % 3;
        let count = 1 + rng.below(20) as usize;
        let mut batch = BatchBuilder::new(1_700_000_000_000 + i64::from(round));
        let mut values = Vec::new();
        for i in 0..count {
            // Empty values, binary values, values with newlines, and a few large ones.
            let len = match rng.below(10) {
                0 => 0,
                1 => 30_000 + rng.below(20_000) as usize,
                _ => rng.below(300) as usize,
            };
            let value = rng.bytes(len);
            let key = format!("k{round}-{i}").into_bytes();
            let header = rng.bytes(5);
            batch.push(Some(&key), &value, &[(b"h", &header)]);
            values.push((key, value, header));
        }
        let ack = client
            .send_batch("events", Target::Partition(partition), &batch.build())
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(ack.partition, partition);
        assert_eq!(ack.last_offset - ack.first_offset + 1, count as u64);
        for (i, v) in values.into_iter().enumerate() {
            sent.push((partition, ack.first_offset + i as u64, v));
        }
    }
    for partition in 0..3 {
        let got = fetch_all(&client, "events", partition, 0, 64 * 1024);
        let want: Vec<_> = sent.iter().filter(|s| s.0 == partition).collect();
        assert_eq!(got.len(), want.len(), "partition {partition}");
        for (m, (_, offset, (key, value, header))) in got.iter().zip(want) {
            assert_eq!(m.offset, *offset);
            assert_eq!(m.key.as_deref(), Some(&key[..]));
            assert_eq!(m.value.as_deref(), Some(&value[..]), "offset {offset}");
            assert_eq!(m.headers, vec![(b"h".to_vec(), Some(header.clone()))]);
        }
    }
    // A fetch from the middle starts exactly there.
    let middle = sent.iter().find(|s| s.0 == 1 && s.1 > 3).unwrap();
    let got = fetch_all(&client, "events", 1, middle.1, 64 * 1024);
    assert_eq!(got[0].offset, middle.1);
    assert_eq!(got[0].value.as_deref(), Some(&middle.2 .1[..]));
}

#[test]
fn keyed_produces_land_on_one_partition_and_errors_are_named() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("keyed", 4).unwrap();
    let first = produce(&client, "keyed", Target::Key(b"customer-7"), ["a"]).unwrap();
    for v in ["b", "c", "d"] {
        let ack = produce(&client, "keyed", Target::Key(b"customer-7"), [v]).unwrap();
        assert_eq!(ack.partition, first.partition, "one key, one partition");
    }
    // The server routes keys with Kafka's partitioner (its murmur2 is checked against Kafka's
    // own test vectors in keel-server's unit tests).
    assert_eq!(
        keel_protocol::partition_for_key(b"customer-7", 4),
        first.partition
    );
    let err = |e: keel_client::ClientError| e.code();
    assert_eq!(
        err(produce(&client, "nope", Target::Partition(0), ["x"]).unwrap_err()),
        Some(ErrorCode::UnknownTopic)
    );
    assert_eq!(
        err(produce(&client, "keyed", Target::Partition(4), ["x"]).unwrap_err()),
        Some(ErrorCode::UnknownPartition)
    );
    assert_eq!(
        err(client
            .fetch("keyed", 9, 0, FetchOptions::default())
            .unwrap_err()),
        Some(ErrorCode::UnknownPartition)
    );
    assert_eq!(
        err(client.create_topic("keyed", 1).unwrap_err()),
        Some(ErrorCode::TopicExists)
    );
    assert_eq!(
        err(client.create_topic("bad/name", 1).unwrap_err()),
        Some(ErrorCode::InvalidTopicName)
    );
    assert_eq!(
        err(client.create_topic("zero", 0).unwrap_err()),
        Some(ErrorCode::InvalidArgument)
    );
    // A batch over the server's limit (256 KiB in the tests' config) is refused by name.
    let big = vec![7u8; 300 * 1024];
    assert_eq!(
        err(produce(&client, "keyed", Target::Partition(0), [big]).unwrap_err()),
        Some(ErrorCode::BatchTooLarge)
    );
    // A corrupted batch (CRC) is refused, and the connection keeps working.
    let mut batch = BatchBuilder::new(0);
    batch.push(None, b"payload", &[]);
    let mut bytes = batch.build();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let refused = client
        .send_batch("keyed", Target::Partition(0), &bytes)
        .unwrap()
        .wait();
    assert_eq!(err(refused.unwrap_err()), Some(ErrorCode::InvalidBatch));
    assert_eq!(client.partitions("keyed").unwrap(), 4);
    assert_eq!(client.list_topics().unwrap().len(), 1);
    client.delete_topic("keyed").unwrap();
    assert!(client.list_topics().unwrap().is_empty());
}

#[test]
fn a_waiting_fetch_is_answered_when_a_message_arrives() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("waits", 1).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let consumer = server.client();
            let options = FetchOptions {
                max_wait: Duration::from_secs(50),
                ..FetchOptions::default()
            };
            consumer.fetch("waits", 0, 0, options).unwrap()
        });
        // Whether the produce lands before or after the fetch parks, the fetch must come back
        // with it (a fetch that is not woken would come back empty after 50 s).
        std::thread::sleep(Duration::from_millis(200));
        produce(&client, "waits", Target::Partition(0), ["wake up"]).unwrap();
        let fetched = waiter.join().unwrap();
        let messages = fetched.messages(0).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].value.as_deref(), Some(&b"wake up"[..]));
    });
    // With nothing to wait for, a short wait comes back empty at the end of the log.
    let options = FetchOptions {
        max_wait: Duration::from_millis(50),
        ..FetchOptions::default()
    };
    let fetched = client.fetch("waits", 0, 1, options).unwrap();
    assert!(fetched.batches.is_empty());
    assert_eq!(fetched.high_watermark, 1);
}

#[test]
fn the_cli_creates_produces_and_fetches() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let run = |args: &[&str]| {
        let out = server.keel().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "keel {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["topic", "create", "lines", "--partitions", "2"]);
    assert_eq!(run(&["topic", "list"]), "lines\t2\n");

    let input: String = (0..500)
        .map(|i| format!("line {i} {}\n", "x".repeat(i % 40)))
        .collect();
    let mut produce = server
        .keel()
        .args(["produce", "lines", "--partition", "1", "--print-acks"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    produce
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = produce.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acks: String = (0..500).map(|i| format!("1 {i}\n")).collect();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        acks,
        "one ack per line, in input order"
    );

    assert_eq!(
        run(&["fetch", "lines", "--partition", "1", "--offset", "0"]),
        input
    );
    let tail: String = input.lines().skip(498).map(|l| format!("{l}\n")).collect();
    assert_eq!(
        run(&["fetch", "lines", "--partition", "1", "--offset", "498"]),
        tail
    );
    let head: String = input.lines().take(3).map(|l| format!("{l}\n")).collect();
    assert_eq!(
        run(&["fetch", "lines", "--partition", "1", "--max", "3"]),
        head
    );

    // Keyed: every line to the key's partition.
    let mut keyed = server
        .keel()
        .args(["produce", "lines", "--key", "user-1", "--print-acks"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    keyed.stdin.take().unwrap().write_all(b"a\nb\n").unwrap();
    let out = keyed.wait_with_output().unwrap();
    assert!(out.status.success());
    let p = keel_protocol::partition_for_key(b"user-1", 2);
    let first = if p == 1 { 500 } else { 0 };
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{p} {first}\n{p} {}\n", first + 1)
    );

    // Failures exit non-zero with a message naming the problem.
    let out = server
        .keel()
        .args(["produce", "missing"])
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "no input, nothing to fail");
    let mut bad = server
        .keel()
        .args(["produce", "missing", "--print-acks"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    bad.stdin.take().unwrap().write_all(b"lost\n").unwrap();
    let out = bad.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown topic") && stderr.contains("0 of 1"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    run(&["topic", "delete", "lines"]);
    assert_eq!(run(&["topic", "list"]), "");
    let out = server.keel().args(["fetch", "lines"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UnknownTopic"));
}
