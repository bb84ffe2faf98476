//! Consumer groups against real keeld processes: redelivery when a consumer is killed, when
//! its session or ack deadline runs out, and on nack; dead-lettering; keeld killed mid-stream;
//! torn slots in the offset table file; and `keel consume`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use keel_client::{spans_of, BatchBuilder, Delivered, JoinSettings, OffsetSpan, StartAt, Target};
use keel_tests::data_dir;
use keel_tests::keeld::{fetch_all, Keeld, PATIENCE};
use keel_tests::member::{drain, join, keys, produce, Key};
use keel_tests::raw_produce;

/// A `keel consume --no-ack` process holding what it printed.
fn start_cli_consumer(keeld: &Keeld, topic: &str, prefetch: u32) -> Child {
    keeld
        .keel()
        .args([
            "consume",
            topic,
            "--group",
            "g",
            "--no-ack",
            "--with-offsets",
        ])
        .args(["--prefetch", &prefetch.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_consumer_s_messages_go_to_the_other_member_marked_redelivered() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("jobs", 3).unwrap();
    let sent = produce(&client, "jobs", 3, 200);

    // Member A (another process) takes 40 messages and never acknowledges them.
    let mut a = start_cli_consumer(&keeld, "jobs", 40);
    let mut lines = BufReader::new(a.stdout.take().unwrap()).lines();
    let mut held = BTreeSet::new();
    while held.len() < 40 {
        let line = lines
            .next()
            .expect("consumer A printed 40 messages")
            .unwrap();
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        let key = (f[0].parse().unwrap(), f[1].parse().unwrap());
        assert_eq!(f[2], "1", "a first delivery");
        assert_eq!(f[3].as_bytes(), &sent[&key][..], "A got the right bytes");
        held.insert(key);
    }

    // Member B drains everything else, acknowledging; A's messages are not among them.
    let b = join(&client, "jobs", JoinSettings::default());
    let first = drain(&client, &b, 160, Duration::from_millis(500), true);
    assert!(keys(&first).is_disjoint(&held), "one member at a time");
    assert!(client.consume(&b, 100, Duration::ZERO).unwrap().is_empty());

    a.kill().unwrap();
    a.wait().unwrap();
    let again = drain(&client, &b, 40, Duration::from_millis(500), true);
    assert_eq!(keys(&again), held, "exactly what A held");
    assert!(again
        .iter()
        .all(|d| d.redelivered() && d.delivery_count == 2));
    for d in &again {
        let key = (d.partition, d.message.offset);
        assert_eq!(d.message.value.as_deref(), Some(&sent[&key][..]));
    }
    let all: BTreeSet<Key> = keys(&first).union(&keys(&again)).copied().collect();
    assert_eq!(
        all,
        sent.keys().copied().collect(),
        "every message acknowledged"
    );
    assert!(drain(&client, &b, 0, Duration::from_millis(300), true).is_empty());
}

#[test]
fn a_silent_member_s_session_ends_and_its_messages_move_on() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("s", 1).unwrap();
    produce(&client, "s", 1, 10);
    let quiet = JoinSettings {
        session_timeout_ms: 300,
        ..JoinSettings::default()
    };
    // The silent member's connection stays open: only its session can end it.
    let silent_client = keeld.client();
    let silent = join(&silent_client, "s", quiet);
    let taken = silent_client.consume(&silent, 4, Duration::ZERO).unwrap();
    assert_eq!(taken.len(), 4);

    let other = join(&client, "s", JoinSettings::default());
    let rest = drain(&client, &other, 10, Duration::from_millis(500), true);
    assert_eq!(
        rest.iter()
            .filter(|d| d.redelivered())
            .map(|d| d.message.offset)
            .collect::<BTreeSet<_>>(),
        keys(&taken).into_iter().map(|(_, o)| o).collect(),
        "the silent member's four come back, marked"
    );
    assert!(matches!(
        silent_client.heartbeat(&silent),
        Err(keel_client::ClientError::Server {
            code: keel_client::ErrorCode::UnknownMember,
            ..
        })
    ));
    assert!(keeld.log_shows("session timed out"));
}

#[test]
fn ack_timeouts_and_nacks_redeliver_then_the_message_is_dead_lettered_intact() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("pay", 1).unwrap();
    let mut batch = BatchBuilder::new(1_700_000_000_000);
    batch.push(
        Some(b"k-poison"),
        b"poison \x00\xff bytes",
        &[(b"trace", b"t-1")],
    );
    batch.push(None, b"fine", &[]);
    client
        .send_batch("pay", Target::Partition(0), &batch.build())
        .unwrap()
        .wait()
        .unwrap();
    let m = join(
        &client,
        "pay",
        JoinSettings {
            ack_timeout_ms: 300,
            max_deliveries: 3,
            ..JoinSettings::default()
        },
    );

    let first = client.consume(&m, 10, Duration::from_secs(5)).unwrap();
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|d| d.delivery_count == 1));
    client.ack(&m, &[first[1].span()], true).unwrap();

    // Not acknowledged within 300 ms: delivered again, and only the poison.
    let second = drain(&client, &m, 1, Duration::from_secs(2), false);
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].message.offset, second[0].delivery_count), (0, 2));

    // A nack with a delay holds it back for that long.
    client
        .nack(&m, &[second[0].span()], Duration::from_secs(30))
        .unwrap();
    assert!(client.consume(&m, 10, Duration::ZERO).unwrap().is_empty());

    // Another group on the same topic: nacks without delay bring the poison back at once,
    // until its fourth delivery would exceed max_deliveries and it goes to pay.dlq instead.
    let keeld_client = keeld.client();
    let g2 = keeld_client
        .join_group(
            "dlq-check",
            "pay",
            StartAt::Earliest,
            JoinSettings {
                ack_timeout_ms: 200,
                max_deliveries: 3,
                ..JoinSettings::default()
            },
        )
        .unwrap();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let got = drain(&keeld_client, &g2, 1, Duration::from_secs(1), false);
        let poison = got
            .iter()
            .find(|d| d.message.offset == 0)
            .expect("the poison");
        counts.push(poison.delivery_count);
        for d in &got {
            if d.message.offset == 0 {
                keeld_client.nack(&g2, &[d.span()], Duration::ZERO).unwrap();
            } else {
                keeld_client.ack(&g2, &[d.span()], true).unwrap();
            }
        }
    }
    assert_eq!(counts, [1, 2, 3]);
    assert!(drain(&keeld_client, &g2, 0, Duration::from_millis(500), false).is_empty());
    let deadline = Instant::now() + PATIENCE;
    let dead = loop {
        if let Ok(dead) = keeld_client
            .partitions("pay.dlq")
            .map(|_| fetch_all(&keeld_client, "pay.dlq", 0, 0, 1 << 20))
        {
            if !dead.is_empty() {
                break dead;
            }
        }
        assert!(Instant::now() < deadline, "nothing in pay.dlq");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.key.as_deref(), Some(&b"k-poison"[..]));
    assert_eq!(d.value.as_deref(), Some(&b"poison \x00\xff bytes"[..]));
    assert_eq!(d.timestamp_ms, 1_700_000_000_000);
    let header = |name: &str| {
        d.headers
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .and_then(|(_, v)| v.clone())
    };
    assert_eq!(header("trace").as_deref(), Some(&b"t-1"[..]));
    assert_eq!(header("keel.dlq.topic").as_deref(), Some(&b"pay"[..]));
    assert_eq!(header("keel.dlq.offset").as_deref(), Some(&b"0"[..]));
    assert_eq!(header("keel.dlq.group").as_deref(), Some(&b"dlq-check"[..]));
    // Dead-lettered counts as acknowledged: nothing is left for the group.
    assert!(drain(&keeld_client, &g2, 0, Duration::from_millis(500), false).is_empty());
}

#[test]
fn after_keeld_is_killed_only_what_was_not_durably_acknowledged_comes_back() {
    let dir = data_dir();
    let mut keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("log", 2).unwrap();
    let sent = produce(&client, "log", 2, 300);
    let m = join(&client, "log", JoinSettings::default());
    let got = drain(&client, &m, 100, Duration::from_millis(500), false);
    // Acknowledge every other one of them durably, the rest not at all.
    let acked: Vec<Delivered> = got.iter().step_by(2).cloned().collect();
    let spans: Vec<OffsetSpan> = acked.iter().map(Delivered::span).collect();
    client.ack(&m, &spans, true).unwrap();
    drop(client);
    keeld.kill();

    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    let m = join(&client, "log", JoinSettings::default());
    let after = drain(&client, &m, 0, Duration::from_millis(700), true);
    let expected: BTreeSet<Key> = sent
        .keys()
        .copied()
        .filter(|k| !keys(&acked).contains(k))
        .collect();
    assert_eq!(
        keys(&after),
        expected,
        "all but the durably acknowledged, each once"
    );
    assert_eq!(after.len(), expected.len());
    for d in &after {
        assert_eq!(
            d.message.value.as_deref(),
            Some(&sent[&(d.partition, d.message.offset)][..])
        );
    }
}

/// (table file, slot) of partition 0 of group "g" on `topic`, from the group's meta file.
fn slot_of(data: &std::path::Path, topic: &str) -> (std::path::PathBuf, usize) {
    let meta = std::fs::read_to_string(data.join("groups").join(topic).join("g.meta")).unwrap();
    let line = meta
        .lines()
        .find(|l| l.starts_with("partition 0 "))
        .unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    (
        data.join("groups").join(format!("offsets-{}.tbl", f[2])),
        f[3].parse().unwrap(),
    )
}

fn copy_seq(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap())
}

/// The case: the newer copy of a slot damaged while the group's checkpoint is newer
/// than the older copy. Taking the older copy would deliver durably acknowledged messages again.
#[test]
fn a_torn_slot_copy_never_takes_the_group_behind_its_checkpoint_and_both_torn_use_it() {
    let dir = data_dir();
    let mut keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("t", 1).unwrap();
    produce(&client, "t", 1, 100);
    let m = join(&client, "t", JoinSettings::default());
    let got = drain(&client, &m, 50, Duration::from_millis(500), false);
    client.ack(&m, &spans_of(&got[..30]), true).unwrap();
    client.ack(&m, &spans_of(&got[30..50]), true).unwrap();
    drop(client);
    assert!(keeld.terminate().success());

    // Tear the newest copy (committed 50): the other holds 30, but the checkpoint recorded
    // at the graceful stop says 50, and the newer of the two is taken, with a warning.
    let (table, slot) = slot_of(&keeld.data_dir, "t");
    let mut bytes = std::fs::read(&table).unwrap();
    let (a, b) = (slot * 2048, slot * 2048 + 1024);
    let newest = if copy_seq(&bytes, a) > copy_seq(&bytes, b) {
        a
    } else {
        b
    };
    bytes[newest + 100] ^= 0x5a;
    std::fs::write(&table, &bytes).unwrap();
    let mut keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    let m = join(&client, "t", JoinSettings::default());
    let after = drain(&client, &m, 0, Duration::from_millis(500), false);
    assert_eq!(
        after.iter().map(|d| d.message.offset).collect::<Vec<_>>(),
        (50..100).collect::<Vec<_>>()
    );
    assert!(
        keeld.log_shows("one copy of its slot is damaged"),
        "{}",
        keeld.stderr()
    );
    drop(client);
    assert!(keeld.terminate().success());

    // Tear both: the group falls back, with a warning, to its checkpoint (50).
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[a + 200] ^= 0x5a;
    bytes[b + 200] ^= 0x5a;
    std::fs::write(&table, &bytes).unwrap();
    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    let m = join(&client, "t", JoinSettings::default());
    let after = drain(&client, &m, 0, Duration::from_millis(500), true);
    assert_eq!(
        after.iter().map(|d| d.message.offset).collect::<Vec<_>>(),
        (50..100).collect::<Vec<_>>(),
        "{}",
        keeld.stderr()
    );
    assert!(
        keeld
            .stderr()
            .contains("both copies of its slot are damaged"),
        "{}",
        keeld.stderr()
    );
}

#[test]
fn keel_consume_prints_then_acknowledges_and_no_ack_leaves_messages_for_the_next() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("lines", 1).unwrap();
    let input: Vec<String> = (1..=12).map(|i| format!("line {i}")).collect();
    raw_produce::produce(&client, "lines", Target::Partition(0), &input).unwrap();
    let run = |args: &[&str]| {
        let out = keeld
            .keel()
            .args(["consume", "lines", "--group", "g"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let expect = |range: std::ops::Range<usize>| {
        input[range]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    assert_eq!(run(&["--max", "3", "--no-ack"]), expect(0..3));
    assert_eq!(
        run(&["--max", "5"]),
        expect(0..5),
        "unacknowledged ones come again"
    );
    assert_eq!(run(&["--idle-exit-ms", "500"]), expect(5..12));
    assert_eq!(
        run(&["--idle-exit-ms", "300"]),
        "",
        "everything was acknowledged"
    );
}

#[test]
fn large_messages_and_scattered_redeliveries_arrive_intact() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("big", 1).unwrap();
    // 200 KiB each, one batch per message: one read of the log holds about one of them, so
    // an answer is gathered from several reads.
    let values: Vec<Vec<u8>> = (0..6u8)
        .map(|i| {
            (0..200 << 10)
                .map(|j: u32| (j as u8) ^ i.wrapping_mul(37))
                .collect()
        })
        .collect();
    for v in &values {
        raw_produce::produce(&client, "big", Target::Partition(0), [v]).unwrap();
    }
    let m = join(&client, "big", JoinSettings::default());
    let check = |got: &[Delivered]| {
        for d in got {
            assert_eq!(
                d.message.value.as_deref(),
                Some(&values[d.message.offset as usize][..]),
                "offset {}",
                d.message.offset
            );
        }
    };
    let first = drain(&client, &m, 6, Duration::from_secs(1), false);
    assert_eq!(keys(&first), (0..6).map(|o| (0, o)).collect());
    check(&first);
    // Offsets 0, 2 and 4 come back together: batches that do not touch.
    let scattered: Vec<OffsetSpan> = [0u64, 2, 4]
        .iter()
        .map(|&o| OffsetSpan {
            partition: 0,
            first: o,
            last: o,
        })
        .collect();
    client.nack(&m, &scattered, Duration::ZERO).unwrap();
    let again = drain(&client, &m, 3, Duration::from_secs(1), false);
    assert_eq!(
        again.iter().map(|d| d.message.offset).collect::<Vec<_>>(),
        [0, 2, 4]
    );
    assert!(again.iter().all(|d| d.delivery_count == 2));
    check(&again);
}

#[test]
fn a_nacked_message_goes_to_the_other_member() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let (a, b) = (keeld.client(), keeld.client());
    a.create_topic("n", 1).unwrap();
    produce(&a, "n", 1, 1);
    let ma = join(&a, "n", JoinSettings::default());
    let mb = join(&b, "n", JoinSettings::default());
    let got = drain(&a, &ma, 1, Duration::from_secs(1), false);
    a.nack(&ma, &spans_of(&got), Duration::ZERO).unwrap();
    assert!(
        a.consume(&ma, 10, Duration::ZERO).unwrap().is_empty(),
        "not straight back to the member that gave it back"
    );
    let other = drain(&b, &mb, 1, Duration::from_secs(1), false);
    assert_eq!(keys(&other), keys(&got));
    assert_eq!(other[0].delivery_count, 2);
}

/// A group that was behind when retention dropped the oldest segments goes on from the log's
/// new start: every message still kept is delivered once, none from below the start, and
/// what it held from the dropped part does not block it.
#[test]
fn a_group_behind_the_log_start_goes_on_from_it_after_retention() {
    let dir = data_dir();
    // Segments of 1 MiB (the harness's); keep at least 2 MiB.
    let keeld = Keeld::start_with_config(dir.path(), "retention_bytes = 2097152\n", &[]);
    let client = keeld.client();
    client.create_topic("ret", 1).unwrap();
    let m = join(&client, "ret", JoinSettings::default());
    let early = produce(&client, "ret", 1, 5);
    let held = client.consume(&m, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(keys(&held), early.keys().copied().collect());

    // About 6 MiB more, so the first segments go while the group holds offsets 0..5.
    let value = vec![0x5a; 8000];
    let mut end = 0;
    for _ in 0..26 {
        let ack =
            raw_produce::produce(&client, "ret", Target::Partition(0), vec![&value; 30]).unwrap();
        end = ack.first_offset + 30;
    }
    let below = |offset| {
        client
            .fetch("ret", 0, offset, keel_client::FetchOptions::default())
            .err()
            .and_then(|e| e.code())
            == Some(keel_client::ErrorCode::OffsetOutOfRange)
    };
    assert!(below(0), "retention dropped the oldest segment");

    let got = drain(&client, &m, 0, Duration::from_millis(500), true);
    let first = got.iter().map(|d| d.message.offset).min().unwrap();
    assert!(first > 5, "the group went past the dropped part");
    assert!(
        below(first - 1) && !below(first),
        "{first} is the log's start"
    );
    let offsets: Vec<u64> = got.iter().map(|d| d.message.offset).collect();
    assert_eq!(
        offsets,
        (first..end).collect::<Vec<_>>(),
        "each kept message once, in order"
    );
    assert!(got
        .iter()
        .all(|d| d.message.value.as_deref() == Some(&value[..])));
}

/// The log lost messages a group had acknowledged (here: its segments are gone; in the field, a
/// filesystem that dropped acknowledged writes). keeld says so at start, per partition, and the
/// group goes on from the log's end, so messages appended afterwards at the same offsets are
/// delivered instead of being taken for acknowledged.
#[test]
fn a_committed_offset_beyond_the_log_s_end_is_reported_and_new_messages_are_delivered() {
    let dir = data_dir();
    let mut keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("lost", 1).unwrap();
    produce(&client, "lost", 1, 40);
    let m = join(&client, "lost", JoinSettings::default());
    assert_eq!(
        drain(&client, &m, 40, Duration::from_millis(200), true).len(),
        40
    );
    drop(client);
    assert!(keeld.terminate().success());

    let partition = keeld.data_dir.join("topics/lost/0");
    for entry in std::fs::read_dir(&partition).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let keeld = Keeld::start(dir.path(), &[]);
    assert!(
        keeld.log_shows("its committed offset 40 lies beyond the partition's end 0"),
        "{}",
        keeld.stderr()
    );
    let client = keeld.client();
    let sent = produce(&client, "lost", 1, 3);
    let m = join(&client, "lost", JoinSettings::default());
    let got = drain(&client, &m, 3, Duration::from_millis(200), true);
    assert_eq!(keys(&got), sent.keys().copied().collect());
}
