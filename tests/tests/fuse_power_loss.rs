//! Power cuts of a FUSE filesystem (`keel_tests::powerfs`) under a real `keeld`: every write no
//! sync covered is dropped at once. FUSE completes an io_uring `RWF_DSYNC` write without making
//! it durable, so keeld must make its flushes durable there with a linked `fdatasync`; these
//! tests lose acknowledged messages if it does not.
//!
//! Mounting needs root and `/dev/fuse`; without them each test prints "SKIPPED" with the reason
//! and passes without running (CI runs as root).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use keel_client::{spans_of, Delivered, JoinSettings};

use keel_engine::{Engine, FlushSync, OpenError};
use keel_tests::crash_load::{missing_after_restart, produce_then_kill, Acked};
use keel_tests::keeld::Keeld;
use keel_tests::member::{drain, join, keys, produce, Key};
use keel_tests::powerfs::PowerFs;
use keel_tests::{data_dir, small_config};

const PARTITIONS: u32 = 2;

/// Mounts a fresh powerfs under `dir`, or says why it cannot and returns `None`.
fn mount(dir: &Path, test: &str) -> Option<PowerFs> {
    if let Some(why) = PowerFs::unavailable() {
        // Straight to the process's stderr: the test harness captures eprintln! of a passing
        // test, and a skip must be seen.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
        return None;
    }
    let mountpoint = dir.join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    Some(PowerFs::mount(&mountpoint).unwrap())
}

#[test]
fn powerfs_keeps_synced_data_and_drops_the_rest() {
    let dir = data_dir();
    let Some(mut fs) = mount(dir.path(), "powerfs_keeps_synced_data_and_drops_the_rest") else {
        return;
    };
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(mnt.join("d")).unwrap();
    let synced = std::fs::File::create(mnt.join("d/synced")).unwrap();
    std::io::Write::write_all(&mut &synced, b"kept").unwrap();
    synced.sync_data().unwrap();
    std::fs::File::open(mnt.join("d"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();
    drop(synced);
    // Written but never synced, in a file whose entry is durable: the bytes go.
    std::fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("d/synced"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b" and lost"))
        .unwrap();
    // Synced data under an entry that never was: the file goes.
    let orphan = std::fs::File::create(mnt.join("d/orphan")).unwrap();
    std::io::Write::write_all(&mut &orphan, b"lost").unwrap();
    orphan.sync_all().unwrap();
    drop(orphan);

    let report = fs.power_cut().unwrap();
    assert_eq!(std::fs::read(mnt.join("d/synced")).unwrap(), b"kept");
    assert!(!mnt.join("d/orphan").exists());
    assert_eq!((report.files, report.dirs), (1, 1), "{report:?}");
}

/// kill -9 in the middle of a pipelined produce, then a power cut that drops every unsynced
/// write, three times over: every acknowledged message survives.
#[test]
fn keeld_on_fuse_loses_no_acknowledged_message_across_power_cuts() {
    let dir = data_dir();
    let test = "keeld_on_fuse_loses_no_acknowledged_message_across_power_cuts";
    let Some(mut fs) = mount(dir.path(), test) else {
        return;
    };
    let root = dir.path().join("mnt");
    let mut all_acked = Acked::new();
    for round in 0..3u32 {
        let mut server = Keeld::start(&root, &[]);
        assert!(
            server.log_shows("followed by a linked fdatasync"),
            "keeld did not say it syncs with fdatasync on FUSE:\n{}",
            server.stderr()
        );
        if round == 0 {
            server.client().create_topic("cut", PARTITIONS).unwrap();
        }
        let kill_after = 100 + 100 * round as usize;
        all_acked.extend(produce_then_kill(
            &mut server,
            "cut",
            PARTITIONS,
            round,
            kill_after,
        ));
        drop(server);
        let report = fs.power_cut().unwrap();
        eprintln!("round {round}: the power cut dropped {report:?}");

        let server = Keeld::start(&root, &[]);
        let missing = missing_after_restart(&server, "cut", PARTITIONS, &all_acked);
        assert_eq!(
            missing,
            0,
            "acknowledged messages lost in round {round}'s power cut (of {})",
            all_acked.len()
        );
    }
    let (file_syncs, dir_syncs) = fs.syncs();
    assert!(file_syncs > 0 && dir_syncs > 0);
}

/// A group consuming while keeld is killed and the power cut, five times over: after each
/// restart the group is given exactly what it had not durably acknowledged (every message
/// produced, the acknowledged ones excepted, each once), and every acknowledged produce is
/// there. A durable ack answered before the offset table's sync would be undone by the cut.
#[test]
fn durable_acks_and_produces_survive_power_cuts_under_a_consuming_group() {
    let dir = data_dir();
    let test = "durable_acks_and_produces_survive_power_cuts_under_a_consuming_group";
    let Some(mut fs) = mount(dir.path(), test) else {
        return;
    };
    let root = dir.path().join("mnt");
    let mut sent: HashMap<Key, Vec<u8>> = HashMap::new();
    let mut acked: BTreeSet<Key> = BTreeSet::new();
    for round in 0..5u64 {
        let mut server = Keeld::start(&root, &[]);
        let client = server.client();
        if round == 0 {
            client.create_topic("acks", PARTITIONS).unwrap();
        }
        sent.extend(produce(&client, "acks", PARTITIONS, 120));
        let m = join(&client, "acks", JoinSettings::default());
        let got = drain(&client, &m, 0, Duration::from_millis(400), false);
        assert_unacknowledged_came(&got, &sent, &acked, &format!("round {round}"));
        for d in &got {
            let key = (d.partition, d.message.offset);
            assert_eq!(d.message.value.as_deref(), Some(&sent[&key][..]), "{key:?}");
        }
        // Acknowledge about half of them durably; the rest stay delivered, unacknowledged.
        let chosen: Vec<_> = got
            .iter()
            .filter(|d| (d.message.offset + round) % 2 == 0)
            .cloned()
            .collect();
        client.ack(&m, &spans_of(&chosen), true).unwrap();
        acked.extend(keys(&chosen));
        // With the filesystem frozen, a durable ack of some others cannot be answered: its
        // table's sync waits. Were it answered, it would count as acknowledged, and the
        // power cut would undo it (as it does in a build that answers before the sync).
        let probe: Vec<_> = got
            .iter()
            .filter(|d| (d.message.offset + round) % 4 == 1)
            .cloned()
            .collect();
        fs.freeze();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let answered = client.ack(&m, &spans_of(&probe), true).is_ok();
            let _ = tx.send(answered.then(|| keys(&probe)));
        });
        if let Ok(Some(answered)) = rx.recv_timeout(Duration::from_millis(300)) {
            acked.extend(answered);
        }
        server.signal("KILL");
        fs.thaw();
        server.kill();
        let report = fs.power_cut().unwrap();
        eprintln!("round {round}: the power cut dropped {report:?}");
    }
    let server = Keeld::start(&root, &[]);
    let client = server.client();
    let m = join(&client, "acks", JoinSettings::default());
    let got = drain(&client, &m, 0, Duration::from_millis(400), false);
    assert_unacknowledged_came(&got, &sent, &acked, "after the last cut");
    assert!(acked.len() > 250, "{} acknowledged", acked.len());
}

/// `got` holds every message `sent` but the `acked` ones, once each.
fn assert_unacknowledged_came(
    got: &[Delivered],
    sent: &HashMap<Key, Vec<u8>>,
    acked: &BTreeSet<Key>,
    when: &str,
) {
    let came = keys(got);
    let again: Vec<&Key> = came.intersection(acked).collect();
    assert!(
        again.is_empty(),
        "{when}: durably acknowledged, yet delivered again: {again:?}"
    );
    let missing: Vec<&Key> = sent
        .keys()
        .filter(|k| !acked.contains(k) && !came.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "{when}: never acknowledged, yet not delivered: {missing:?}"
    );
    assert_eq!(came.len(), got.len(), "{when}: each once");
}

/// On FUSE `auto` takes write + fdatasync, and asking for `RWF_DSYNC` writes is refused by name.
#[test]
fn on_fuse_auto_takes_fdatasync_and_dsync_writes_are_refused() {
    let dir = data_dir();
    let test = "on_fuse_auto_takes_fdatasync_and_dsync_writes_are_refused";
    let Some(_fs) = mount(dir.path(), test) else {
        return;
    };
    let data = dir.path().join("mnt/data");
    let mut cfg = small_config(&data, 1);
    cfg.flush_sync = FlushSync::DsyncWrite;
    match Engine::open(cfg.clone()) {
        Err(OpenError::InvalidConfig(msg)) => {
            assert!(msg.contains("dsync-write") && msg.contains("fuse"), "{msg}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("RWF_DSYNC writes were accepted on FUSE"),
    }
    cfg.flush_sync = FlushSync::Auto;
    let engine = Engine::open(cfg).unwrap();
    assert_eq!(engine.config().flush_sync, FlushSync::Fdatasync);
}

/// keeld listens only once recovery is over: while its data directory hangs (the filesystem
/// frozen), a connection attempt is refused at once instead of waiting in a queue nobody serves.
#[test]
fn keeld_refuses_connections_until_its_recovery_is_over() {
    let dir = data_dir();
    let test = "keeld_refuses_connections_until_its_recovery_is_over";
    if let Some(why) = PowerFs::unavailable() {
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
        return;
    }
    // The data directory is the mount itself; keeld's config file stays outside it.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let fs = PowerFs::mount(&data).unwrap();
    let server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("t", 2).unwrap();
    drop(server);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    fs.freeze();
    let starting = Keeld::launch(dir.path(), "", &["--listen", &listen]);
    std::thread::sleep(Duration::from_millis(500));
    let ready_early = starting.is_ready();
    let addr = listen.parse().unwrap();
    let attempt = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    // Thawed before any assertion: a keeld killed while its filesystem hangs would hang too.
    fs.thaw();
    assert!(!ready_early, "keeld was ready on a frozen filesystem");
    match attempt {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("expected the connection refused, got {e}"),
        Ok(_) => panic!("keeld accepted a connection before its recovery was over"),
    }
    let server = starting.ready();
    assert_eq!(server.client().list_topics().unwrap().len(), 1);
}

/// An idempotent producer's state and the producer-id allocator survive a power cut: after
/// `kill -9` and a cut that drops every unsynced write, a batch sent again is answered with the
/// offsets it was first given (not stored twice), the next one follows, a gap is refused, and
/// a new producer id is one never handed out before.
#[test]
fn idempotent_producer_state_survives_a_power_cut() {
    use keel_client::{BatchBuilder, ErrorCode, Target};
    let dir = data_dir();
    let test = "idempotent_producer_state_survives_a_power_cut";
    let Some(mut fs) = mount(dir.path(), test) else {
        return;
    };
    let root = dir.path().join("mnt");
    let batch = |id: i64, seq: i32, v: &str| {
        let mut b = BatchBuilder::new(1_700_000_000_000).producer(id, 0, seq);
        b.push(None, v.as_bytes(), &[]);
        b.build()
    };
    let mut server = Keeld::start(&root, &[]);
    let client = server.client();
    client.create_topic("idem", 1).unwrap();
    let (id, _) = client.init_producer(None).unwrap();
    let send = |client: &keel_client::Client, seq: i32| {
        client
            .send_batch(
                "idem",
                Target::Partition(0),
                &batch(id, seq, &format!("m{seq}")),
            )
            .unwrap()
            .wait()
    };
    let mut acked = Vec::new();
    for seq in 0..20 {
        acked.push(send(&client, seq).unwrap().first_offset);
    }
    drop(client);
    server.kill();
    drop(server);
    let report = fs.power_cut().unwrap();
    eprintln!("the power cut dropped {report:?}");

    let server = Keeld::start(&root, &[]);
    let client = server.client();
    for seq in [17, 18, 19] {
        let again = send(&client, seq).unwrap();
        assert_eq!(
            again.first_offset, acked[seq as usize],
            "batch {seq} sent again after the power cut: its first offset, not a new one"
        );
    }
    assert_eq!(
        send(&client, 20).unwrap().first_offset,
        20,
        "the next one follows"
    );
    assert_eq!(
        send(&client, 30).unwrap_err().code(),
        Some(ErrorCode::OutOfOrderSequence)
    );
    let (next_id, _) = client.init_producer(None).unwrap();
    assert!(
        next_id > id,
        "{next_id} after the cut, {id} before: never again"
    );
    assert_eq!(
        keel_tests::keeld::values(&client, "idem", 0).len(),
        21,
        "nothing stored twice"
    );
}
