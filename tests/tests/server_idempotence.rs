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
}
