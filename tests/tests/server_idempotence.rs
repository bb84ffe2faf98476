//! Idempotent producers over the wire: keeld answers a batch sent again with its first offsets
//! (stored once), names a gap `OutOfOrderSequence` and an old epoch `ProducerFenced`, and still
//! knows the producer after a `SIGKILL` and a restart; producer ids come from keeld, once each.

use keel_client::{BatchBuilder, ErrorCode, Target};
use keel_tests::data_dir;
use keel_tests::keeld::{values, Keeld};

fn batch(epoch: i16, seq: i32, values: &[&str]) -> Vec<u8> {
    let mut b = BatchBuilder::new(1_700_000_000_000).producer(5, epoch, seq);
    for v in values {
        b.push(None, v.as_bytes(), &[]);
    }
    b.build()
}

#[test]
fn keeld_deduplicates_refuses_gaps_and_old_epochs_and_remembers_across_a_kill() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("idem", 1).unwrap();
    let send = |bytes: &[u8]| {
        client
            .send_batch("idem", Target::Partition(0), bytes)
            .unwrap()
            .wait()
    };
    let first = send(&batch(0, 0, &["a", "b"])).unwrap();
    assert_eq!((first.first_offset, first.last_offset), (0, 1));
    let again = send(&batch(0, 0, &["a", "b"])).unwrap();
    assert_eq!(
        (again.first_offset, again.last_offset),
        (0, 1),
        "its first offsets"
    );
    let code = |r: Result<keel_client::Ack, keel_client::ClientError>| r.unwrap_err().code();
    assert_eq!(
        code(send(&batch(0, 5, &["gap"]))),
        Some(ErrorCode::OutOfOrderSequence)
    );
    send(&batch(1, 0, &["c"])).unwrap();
    assert_eq!(
        code(send(&batch(0, 2, &["old"]))),
        Some(ErrorCode::ProducerFenced)
    );
    drop(client);

    let mut keeld = keeld;
    keeld.kill();
    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    let send = |bytes: &[u8]| {
        client
            .send_batch("idem", Target::Partition(0), bytes)
            .unwrap()
            .wait()
    };
    let after = send(&batch(1, 0, &["c"])).unwrap();
    assert_eq!(
        (after.first_offset, after.last_offset),
        (2, 2),
        "remembered from the log"
    );
    assert_eq!(
        send(&batch(0, 2, &["old"])).unwrap_err().code(),
        Some(ErrorCode::ProducerFenced)
    );
    let values: Vec<Vec<u8>> = values(&client, "idem", 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

/// Producer ids come from keeld, are never handed out twice (not even across a `SIGKILL`),
/// and a bump of the epoch fences the producer's older batches.
#[test]
fn keeld_hands_out_producer_ids_once_and_bumps_epochs() {
    let dir = data_dir();
    let mut keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    client.create_topic("ids", 1).unwrap();
    let (a, a_epoch) = client.init_producer(None).unwrap();
    let (b, _) = client.init_producer(None).unwrap();
    assert_ne!(a, b, "two producers, two ids");
    assert_eq!(a_epoch, 0);
    let with = |id: i64, epoch: i16, seq: i32, v: &str| {
        let mut batch = BatchBuilder::new(0).producer(id, epoch, seq);
        batch.push(None, v.as_bytes(), &[]);
        client
            .send_batch("ids", Target::Partition(0), &batch.build())
            .unwrap()
            .wait()
    };
    with(a, 0, 0, "a0").unwrap();
    with(b, 0, 0, "b0").unwrap();
    let (same, bumped) = client.init_producer(Some((a, 0))).unwrap();
    assert_eq!((same, bumped), (a, 1), "the same id, the next epoch");
    with(a, 1, 0, "a1").unwrap();
    assert_eq!(
        with(a, 0, 1, "a0 late").unwrap_err().code(),
        Some(ErrorCode::ProducerFenced)
    );
    drop(client);
    keeld.kill();

    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();
    let (c, epoch) = client.init_producer(None).unwrap();
    assert!(
        c > a && c > b,
        "{c} after a restart, {a} and {b} before: never again"
    );
    assert_eq!(epoch, 0);
    drop(client);

    // A damaged file: new producers are refused, named, until `--recovery repair` rewrites
    // it past every id handed out.
    let mut keeld = keeld;
    keeld.terminate();
    let ids = keeld.data_dir.join("producer-ids");
    std::fs::write(&ids, "next 3\ncrc 00000000\n").unwrap();
    let keeld = Keeld::start(dir.path(), &[]);
    let refused = keeld.client().init_producer(None).unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Corruption), "{refused}");
    assert!(refused.to_string().contains("producer-ids"), "{refused}");
    let mut keeld = keeld;
    keeld.terminate();
    let keeld = Keeld::start(dir.path(), &["--recovery", "repair"]);
    assert!(
        keeld.log_shows("producer-ids was damaged"),
        "{}",
        keeld.stderr()
    );
    let (d, _) = keeld.client().init_producer(None).unwrap();
    assert!(d > c, "{d} after the repair, {c} before: never again");
}

/// `producer_expiry_ms`: a producer not heard from for that long is forgotten, so its repeat
/// is stored again; one heard from within it is still recognised.
#[test]
fn keeld_forgets_a_producer_quiet_for_longer_than_its_expiry() {
    let dir = data_dir();
    let keeld = Keeld::start_with_config(dir.path(), "producer_expiry_ms = 1000\n", &[]);
    let client = keeld.client();
    client.create_topic("expiry", 1).unwrap();
    let send = |producer: i64, values: &[&str]| {
        let mut b = BatchBuilder::new(1_700_000_000_000).producer(producer, 0, 0);
        for v in values {
            b.push(None, v.as_bytes(), &[]);
        }
        client
            .send_batch("expiry", Target::Partition(0), &b.build())
            .unwrap()
            .wait()
            .unwrap()
            .first_offset
    };
    assert_eq!(send(1, &["quiet"]), 0);
    assert_eq!(send(1, &["quiet"]), 0, "a repeat within the expiry");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // Another producer's batch makes the partition look for expired producers.
    assert_eq!(send(2, &["busy"]), 1);
    assert_eq!(send(1, &["quiet"]), 2, "forgotten: stored again");
    assert_eq!(
        send(2, &["busy"]),
        1,
        "the one just heard from is remembered"
    );
}
