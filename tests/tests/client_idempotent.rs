//! An idempotent `Producer` streaming while keeld is killed (`SIGKILL`) and restarted, three
//! times: it connects again, resends what was in flight, and every message ends up in the log
//! exactly once, in order. And one whose server never comes back gives up after its delivery
//! timeout, saying what is unknown.

use std::time::{Duration, Instant};

use keel_client::{ClientError, ClientOptions, Idempotence, Producer, Target};
use keel_tests::data_dir;
use keel_tests::keeld::{values, Keeld};

const MESSAGES: usize = 3000;

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

#[test]
fn an_idempotent_producer_across_kills_stores_each_message_once_in_order() {
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let addr = keeld.addr.to_string();
    keeld.client().create_topic("exact", 2).unwrap();
    let idempotence = Idempotence {
        delivery_timeout: Duration::from_secs(60),
    };
    let mut producer = Producer::connect_idempotent(&addr, options(), idempotence).unwrap();
    let mut keeld = Some(keeld);
    let mut restarting = None;
    let mut acked = 0;
    let mut take = |answer: (u32, keel_client::Result<keel_client::Ack>)| {
        let (id, ack) = answer;
        if let Err(e) = ack {
            panic!("request {id}: {e}");
        }
        acked += 1;
    };
    for i in 0..MESSAGES {
        if i % 700 == 350 {
            // Killed with produces in flight; back on the same address a moment later, while
            // the producer keeps trying.
            let mut k = keeld.take().expect("keeld runs");
            k.kill();
            let (dir, addr) = (dir.path().to_path_buf(), addr.clone());
            restarting = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                Keeld::start(&dir, &["--listen", &addr])
            }));
        }
        let partition = (i % 2) as u32;
        producer
            .queue_values("exact", Target::Partition(partition), [format!("m{i}")])
            .unwrap();
        if i % 8 == 7 {
            producer.flush().ok();
        }
        while let Ok(Some(answer)) = producer.ready_ack() {
            take(answer);
        }
        if let Some(handle) = restarting.take_if(|h| h.is_finished()) {
            keeld = Some(handle.join().unwrap());
        }
    }
    while producer.in_flight() > 0 {
        take(producer.next_ack().unwrap());
    }
    assert_eq!(acked, MESSAGES, "every request answered once");
    let keeld = match keeld {
        Some(k) => k,
        None => restarting.expect("a restart").join().unwrap(),
    };
    let client = keeld.client();
    for partition in 0..2u32 {
        let stored: Vec<String> = values(&client, "exact", partition)
            .into_iter()
            .map(|(_, v)| String::from_utf8(v).unwrap())
            .collect();
        let sent: Vec<String> = (0..MESSAGES)
            .filter(|i| i % 2 == partition as usize)
            .map(|i| format!("m{i}"))
            .collect();
        assert_eq!(
            stored.len(),
            sent.len(),
            "partition {partition}: none twice, none lost"
        );
        assert_eq!(stored, sent, "partition {partition}: in order");
    }
}

#[test]
fn an_idempotent_producer_gives_up_after_its_delivery_timeout() {
    let dir = data_dir();
    let mut keeld = Keeld::start(dir.path(), &[]);
    keeld.client().create_topic("gone", 1).unwrap();
    let idempotence = Idempotence {
        delivery_timeout: Duration::from_secs(1),
    };
    let mut producer =
        Producer::connect_idempotent(keeld.addr.to_string(), options(), idempotence).unwrap();
    keeld.kill();
    let id = producer
        .queue_values("gone", Target::Partition(0), ["lost?"])
        .unwrap();
    let started = Instant::now();
    match producer.next_ack() {
        Err(ClientError::ConnectionLost(why)) => {
            assert!(why.contains("unknown"), "{why}");
            assert!(why.contains(&id.to_string()), "names the request: {why}");
        }
        other => panic!("expected to give up, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "tried for its timeout: {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "then gave up: {waited:?}");
}
