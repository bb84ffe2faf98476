//! Damaged files do not take keeld down: a partition with a corrupt segment, a topic with a
//! damaged metadata file and a group with a damaged metadata file are each held offline with a
//! named error to their clients, a metric and a log line naming the file, while everything else
//! is served; `--recovery repair` brings them back.

use std::path::Path;

use keel_client::{Client, ClientError, ErrorCode, JoinSettings, Membership, StartAt, Target};
use keel_tests::data_dir;
use keel_tests::keeld::{fetch_all, metrics_addr, sample, values, Keeld};
use keel_tests::raw_produce::produce;

/// Flips a byte inside the first occurrence of `needle` in `file`.
fn flip_inside(file: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {}", file.display()));
    bytes[at + needle.len() / 2] ^= 0x40;
    std::fs::write(file, bytes).unwrap();
}

/// The only segment file of a partition.
fn segment_of(data: &Path, topic: &str, partition: u32) -> std::path::PathBuf {
    let dir = data.join("topics").join(topic).join(partition.to_string());
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.remove(0)
}

/// Joins `group` on topic "good".
fn join(client: &Client, group: &str) -> Result<Membership, ClientError> {
    client.join_group(group, "good", StartAt::Earliest, JoinSettings::default())
}

fn offline_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Server {
            code: ErrorCode::Offline,
            message,
        }) => message,
        other => panic!("expected Offline, got {other:?}"),
    }
}

#[test]
fn damaged_files_are_held_offline_and_everything_else_is_served_until_repair() {
    let dir = data_dir();
    let mut keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    for topic in ["good", "bad", "broken"] {
        client.create_topic(topic, 2).unwrap();
        // One produce per message: each its own flush, so damage to the first is followed by
        // data that was durable later (corruption, not a torn tail).
        for i in 0..5 {
            let value = format!("{topic}-value-{i:04}");
            produce(&client, topic, Target::Partition(0), [value.as_bytes()]).unwrap();
            produce(&client, topic, Target::Partition(1), [value.as_bytes()]).unwrap();
        }
    }
    join(&client, "healthy").unwrap();
    join(&client, "damaged").unwrap();
    drop(client);
    assert!(keeld.terminate().success());

    let data = keeld.data_dir.clone();
    flip_inside(&segment_of(&data, "bad", 0), b"bad-value-0000");
    let topic_meta = data.join("topics/broken/meta");
    let text = std::fs::read_to_string(&topic_meta).unwrap();
    std::fs::write(&topic_meta, text.replace("partitions 2", "partitions 3")).unwrap();
    let group_meta = data.join("groups/good/damaged.meta");
    let mut bytes = std::fs::read(&group_meta).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&group_meta, bytes).unwrap();

    // keeld starts, says what is offline and why, and serves the rest.
    let mut keeld = Keeld::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    for line in [
        "bad/0 is offline: corrupt segment",
        "topic \"broken\" is offline: damaged metadata file",
        "group \"damaged\" on good is offline: damaged metadata file",
        "--recovery repair",
    ] {
        assert!(keeld.log_shows(line), "no {line:?} in\n{}", keeld.stderr());
    }
    assert!(keeld
        .stderr()
        .contains(&segment_of(&data, "bad", 0).display().to_string()));
    let client = keeld.client();
    assert_eq!(values(&client, "good", 0).len(), 5);
    assert_eq!(values(&client, "bad", 1).len(), 5);
    produce(&client, "good", Target::Partition(1), [b"still served"]).unwrap();
    let message = offline_code(produce(&client, "bad", Target::Partition(0), [b"x"]));
    assert!(
        message.contains("bad/0") && message.contains("at byte"),
        "{message}"
    );
    let message = offline_code(produce(&client, "broken", Target::Partition(1), [b"x"]));
    assert!(message.contains("broken/meta"), "{message}");
    offline_code(client.partitions("broken"));
    let message = offline_code(join(&client, "damaged"));
    assert!(message.contains("damaged.meta"), "{message}");
    join(&client, "healthy").unwrap();
    let metrics = metrics_addr(&keeld);
    assert_eq!(sample(metrics, "keel_partitions_offline"), 1.0);
    assert_eq!(sample(metrics, "keel_topics_offline"), 1.0);
    assert_eq!(sample(metrics, "keel_groups_offline"), 1.0);
    drop(client);
    assert!(keeld.terminate().success());

    // Repair: the segment is cut at the damage and the offsets cut away (all five) filled with
    // records marked lost, the topic's metadata rebuilt from its partition directories, the
    // group's metadata removed (it starts anew).
    let mut keeld = Keeld::start(dir.path(), &["--recovery", "repair"]);
    let client = keeld.client();
    let lost = fetch_all(&client, "bad", 0, 0, 1 << 20);
    assert_eq!(lost.len(), 5, "cut at the first batch, its offsets filled");
    for m in &lost {
        assert_eq!(m.value, None);
        assert_eq!(
            m.headers,
            vec![(b"keel.lost".to_vec(), Some(b"repair".to_vec()))]
        );
    }
    assert_eq!(values(&client, "bad", 1).len(), 5);
    assert_eq!(client.partitions("broken").unwrap(), 2);
    assert_eq!(values(&client, "broken", 1).len(), 5);
    join(&client, "damaged").unwrap();
    let ack = produce(&client, "bad", Target::Partition(0), [b"after repair"]).unwrap();
    assert_eq!(ack.first_offset, 5, "no offset is handed out twice");
    drop(client);
    assert!(keeld.terminate().success());
    // And a plain restart finds everything whole.
    let keeld = Keeld::start(dir.path(), &[]);
    assert!(keeld.log_shows("bad/0: recovered offsets 0..6"));
    assert!(!keeld.stderr().contains("offline"), "{}", keeld.stderr());
}
