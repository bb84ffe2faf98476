//! Real Kafka clients against keeld's Kafka listener: kafka-python and confluent-kafka
//! (librdkafka) from PyPI, kcat from Debian (`.ci/run` installs them; where one is missing its
//! tests print SKIPPED and pass). Records are checked byte for byte — keys, values, headers,
//! timestamps — across both protocols: produced with Kafka and read with Keel's client, and
//! back. Bad input on the Kafka port needs no client and always runs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_client::{BatchBuilder, JoinSettings, Message, StartAt, Target};
use keel_format::batch::{compress_batch, BatchView};
use keel_format::compression::Codec;
use keel_tests::keeld::{fetch_all, Keeld};
use serde_json::Value;

/// Longest a client script may run.
const SCRIPT_PATIENCE: Duration = Duration::from_secs(120);

/// A record's key, value, headers and timestamp.
type Record = (Vec<u8>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, i64);

/// Record `i` as `tests/kafka/clients.py` makes it.
fn record(i: usize) -> Record {
    let mut key = format!("key-{i}-").into_bytes();
    key.extend([0xff, 0x00, (i % 256) as u8]);
    let value = (0..1 + (i * 37) % 3000)
        .map(|j| ((i * 7 + j) % 256) as u8)
        .collect();
    let headers = vec![
        (b"n".to_vec(), i.to_string().into_bytes()),
        (b"bin".to_vec(), vec![0, 1, 0xfe]),
    ];
    (key, value, headers, 1_700_000_000_000 + i as i64)
}

fn python_clients() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import kafka, confluent_kafka"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!(
            "SKIPPED: kafka-python and confluent-kafka are not installed \
             (pip install kafka-python confluent-kafka; .ci/run does)"
        );
    }
    ok
}

fn kcat() -> bool {
    let ok = Command::new("kcat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED: kcat is not installed (apt-get install kcat; .ci/run does)");
    }
    ok
}

/// Runs `command` with a deadline; its stdout.
fn run(command: &mut Command) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    // Read as it comes: a child whose pipe is full would wait for ever.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + SCRIPT_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the client") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} ran for more than {SCRIPT_PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&stderr.join().expect("stderr reader")).into_owned();
    assert!(status.success(), "{command:?} failed:\n{stderr}");
    String::from_utf8(stdout).expect("utf-8 output")
}

/// Runs one command of `tests/kafka/clients.py` against `keeld`; its JSON answer. A failure
/// shows keeld's log too.
fn script(keeld: &Keeld, args: &[&str]) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kafka/clients.py");
    let ran = std::panic::catch_unwind(|| run(Command::new("python3").arg(&path).args(args)));
    let out = ran.unwrap_or_else(|_| panic!("{args:?} failed; keeld's log:\n{}", keeld.stderr()));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn num(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Checks an `acked` list of (i, partition, offset): every record acknowledged, each
/// partition's offsets dense from 0 in the order sent; returns (partition, offset) -> i.
fn check_acked(answer: &Value, n: usize) -> HashMap<(i64, i64), usize> {
    let acked = answer["acked"].as_array().expect("acked");
    assert_eq!(acked.len(), n, "every record acknowledged");
    let mut by_i: Vec<(i64, i64, i64)> = acked
        .iter()
        .map(|a| (num(&a[0]), num(&a[1]), num(&a[2])))
        .collect();
    by_i.sort();
    let mut next = HashMap::new();
    let mut at = HashMap::new();
    for (i, p, off) in by_i {
        let expected = next.entry(p).or_insert(0);
        assert_eq!(
            off, *expected,
            "record {i}: partition {p} offsets dense and in order"
        );
        *expected += 1;
        at.insert((p, off), i as usize);
    }
    at
}

/// Checks records a Kafka client consumed against `record(i)`, `at` saying which i each is.
fn check_consumed(records: &Value, at: &HashMap<(i64, i64), usize>) {
    let records = records.as_array().expect("records");
    assert_eq!(records.len(), at.len(), "every record consumed");
    for r in records {
        let (p, off) = (num(&r[0]), num(&r[1]));
        let i = at[&(p, off)];
        let (key, value, headers, ts) = record(i);
        assert_eq!(r[2].as_str(), Some(hex(&key).as_str()), "key of {i}");
        assert_eq!(r[3].as_str(), Some(hex(&value).as_str()), "value of {i}");
        let got: Vec<(String, String)> = r[4]
            .as_array()
            .expect("headers")
            .iter()
            .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
            .collect();
        let want: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (String::from_utf8(k.clone()).unwrap(), hex(v)))
            .collect();
        assert_eq!(got, want, "headers of {i}");
        assert_eq!(num(&r[5]), ts, "timestamp of {i}");
    }
}

/// Reads every partition with Keel's own client and checks each record against `record(i)`.
fn check_with_keel(keeld: &Keeld, topic: &str, at: &HashMap<(i64, i64), usize>) {
    let client = keeld.client();
    let mut seen = 0;
    for p in 0..2 {
        let messages: Vec<Message> = fetch_all(&client, topic, p, 0, 1 << 20);
        for m in messages {
            let i = at[&(i64::from(p), m.offset as i64)];
            let (key, value, headers, ts) = record(i);
            assert_eq!(m.key.as_deref(), Some(&key[..]), "key of {i} read by keel");
            assert_eq!(
                m.value.as_deref(),
                Some(&value[..]),
                "value of {i} read by keel"
            );
            let want: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                headers.into_iter().map(|(k, v)| (k, Some(v))).collect();
            assert_eq!(m.headers, want, "headers of {i} read by keel");
            assert_eq!(m.timestamp_ms, ts, "timestamp of {i} read by keel");
            seen += 1;
        }
    }
    assert_eq!(seen, at.len(), "keel reads every record");
}

fn kafka_addr(keeld: &Keeld) -> String {
    keeld
        .kafka_addr
        .expect("the Kafka listener is on")
        .to_string()
}

#[test]
fn kafka_python_round_trips_byte_for_byte_through_both_protocols() {
    if !python_clients() {
        return;
    }
    let dir = keel_tests::data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let kafka = kafka_addr(&keeld);
    let n = 300;
    let produced = script(
        &keeld,
        &["produce-kafka-python", &kafka, "kp", &n.to_string()],
    );
    let at = check_acked(&produced, n);
    let consumed = script(
        &keeld,
        &["consume-kafka-python", &kafka, "kp", "2", &n.to_string()],
    );
    check_consumed(&consumed["records"], &at);
    check_with_keel(&keeld, "kp", &at);

    // ListOffsets: earliest, latest, and by time (record i has timestamp BASE + i; odd i go to
    // partition 1). Past every record there is none.
    let base = record(0).3;
    let ts = (base + 101).to_string();
    let offsets = script(&keeld, &["offsets", &kafka, "kp", "2", &ts]);
    assert_eq!(offsets["earliest"], serde_json::json!([0, 0]));
    assert_eq!(offsets["latest"], serde_json::json!([150, 150]));
    assert_eq!(
        offsets["at"],
        serde_json::json!([[51, base + 102], [50, base + 101]]),
        "the first record at or after the time"
    );
    let late = (base + 10_000).to_string();
    let offsets = script(&keeld, &["offsets", &kafka, "kp", "2", &late]);
    assert_eq!(offsets["at"], serde_json::json!([null, null]));
}

#[test]
fn an_idempotent_librdkafka_producer_is_acknowledged_durably_and_keel_records_reach_kafka_clients()
{
    if !python_clients() {
        return;
    }
    let dir = keel_tests::data_dir();
    let mut keeld = Keeld::start(dir.path(), &[]);
    keeld.client().create_topic("kc", 2).unwrap();
    let n = 500;
    let produced = script(
        &keeld,
        &[
            "produce-confluent",
            &kafka_addr(&keeld),
            "kc",
            &n.to_string(),
        ],
    );
    let failed = produced["failed"].as_array().expect("failed");
    assert!(
        failed.is_empty(),
        "{} deliveries failed: {:?}",
        failed.len(),
        failed.first()
    );
    let at = check_acked(&produced, n);
    // Acknowledged means stored: it survives kill -9.
    keeld.kill();
    let keeld = Keeld::start(dir.path(), &[]);
    let kafka = kafka_addr(&keeld);
    check_with_keel(&keeld, "kc", &at);
    let consumed = script(
        &keeld,
        &["consume-confluent", &kafka, "kc", "2", &n.to_string()],
    );
    let errors = consumed["errors"].as_array().expect("errors");
    assert!(errors.is_empty(), "consume errors: {:?}", errors.first());
    check_consumed(&consumed["records"], &at);

    // Back: records produced with Keel's client, consumed by kafka-python.
    let client = keeld.client();
    client.create_topic("nk", 2).unwrap();
    let mut at = HashMap::new();
    for i in 0..40 {
        let (key, value, headers, ts) = record(i);
        let headers: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let mut batch = BatchBuilder::new(ts);
        batch.push(Some(&key), &value, &headers);
        let p = (i % 2) as u32;
        let ack = client
            .send_batch("nk", Target::Partition(p), &batch.build())
            .unwrap()
            .wait()
            .unwrap();
        at.insert((i64::from(p), ack.first_offset as i64), i);
    }
    let consumed = script(&keeld, &["consume-kafka-python", &kafka, "nk", "2", "40"]);
    check_consumed(&consumed["records"], &at);
}

#[test]
fn kcat_lists_produces_and_consumes() {
    if !kcat() {
        return;
    }
    let dir = keel_tests::data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let kafka = kafka_addr(&keeld);
    keeld.client().create_topic("kcat", 1).unwrap();
    let listed = run(Command::new("kcat").args(["-b", &kafka, "-L", "-m", "10"]));
    assert!(listed.contains(&format!("broker 0 at {kafka}")), "{listed}");
    assert!(
        listed.contains("topic \"kcat\" with 1 partitions"),
        "{listed}"
    );
    let mut produce = Command::new("kcat")
        .args(["-b", &kafka, "-P", "-t", "kcat", "-p", "0", "-K", ":"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = (0..20).map(|i| format!("k{i}:value {i}")).collect();
    produce
        .stdin
        .take()
        .unwrap()
        .write_all(lines.join("\n").as_bytes())
        .unwrap();
    assert!(produce.wait().unwrap().success(), "kcat produced");
    let stored = fetch_all(&keeld.client(), "kcat", 0, 0, 1 << 20);
    let got: Vec<String> = stored
        .iter()
        .map(|m| {
            let key = String::from_utf8(m.key.clone().unwrap()).unwrap();
            let value = String::from_utf8(m.value.clone().unwrap()).unwrap();
            format!("{key}:{value}")
        })
        .collect();
    assert_eq!(got, lines, "keel reads what kcat produced, in order");
    let consumed = run(Command::new("kcat").args([
        "-b",
        &kafka,
        "-C",
        "-t",
        "kcat",
        "-p",
        "0",
        "-o",
        "beginning",
        "-e",
        "-f",
        "%o %k:%s\n",
    ]));
    let want: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{i} {l}"))
        .collect();
    assert_eq!(
        consumed.lines().collect::<Vec<_>>(),
        want,
        "kcat consumes it back"
    );
}

/// A connection to the Kafka port.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A request frame with header v1 (api key, version, correlation id, null client id).
fn request(api: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend(api.to_be_bytes());
    frame.extend(version.to_be_bytes());
    frame.extend(correlation.to_be_bytes());
    frame.extend((-1i16).to_be_bytes());
    frame.extend(body);
    let mut out = (frame.len() as i32).to_be_bytes().to_vec();
    out.extend(frame);
    out
}

/// The next response frame's body (after its size), or `None` once the server closed.
fn response(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// ApiVersions v0's answer: (correlation id, error code, api keys listed).
fn api_versions(body: &[u8]) -> (i32, i16, Vec<i16>) {
    let correlation = i32::from_be_bytes(body[0..4].try_into().unwrap());
    let error = i16::from_be_bytes(body[4..6].try_into().unwrap());
    let n = i32::from_be_bytes(body[6..10].try_into().unwrap()) as usize;
    let keys = (0..n)
        .map(|k| i16::from_be_bytes(body[10 + 6 * k..12 + 6 * k].try_into().unwrap()))
        .collect();
    (correlation, error, keys)
}

#[test]
fn bad_kafka_input_closes_only_that_connection() {
    let dir = keel_tests::data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let kafka = keeld.kafka_addr.expect("the Kafka listener is on");

    // What a Kafka client sends keeld's native port, seen from the other side: a frame
    // size far past the limit closes the connection.
    let mut s = connect(kafka);
    s.write_all(&922_746_880i32.to_be_bytes()).unwrap();
    assert!(
        response(&mut s).is_none(),
        "an oversized frame closes the connection"
    );

    // An ApiVersions too new is answered at v0 with UNSUPPORTED_VERSION and the versions.
    let mut s = connect(kafka);
    s.write_all(&request(18, 99, 7, &[])).unwrap();
    let (correlation, error, keys) = api_versions(&response(&mut s).expect("an answer"));
    assert_eq!(correlation, 7);
    assert_eq!(error, 35, "UNSUPPORTED_VERSION");
    assert!(
        keys.contains(&0) && keys.contains(&1) && keys.contains(&3),
        "{keys:?}"
    );

    // Then a good one on the same connection.
    s.write_all(&request(18, 0, 8, &[])).unwrap();
    let (correlation, error, _) = api_versions(&response(&mut s).expect("an answer"));
    assert_eq!((correlation, error), (8, 0));

    // An API that does not exist, and a Metadata whose body is garbage, close theirs.
    let mut s = connect(kafka);
    s.write_all(&request(999, 0, 9, &[])).unwrap();
    assert!(
        response(&mut s).is_none(),
        "an unknown API closes the connection"
    );
    let mut s = connect(kafka);
    s.write_all(&request(3, 9, 10, &[0xff; 3])).unwrap();
    assert!(
        response(&mut s).is_none(),
        "a garbled request closes the connection"
    );

    // The server goes on, on both ports.
    let mut s = connect(kafka);
    s.write_all(&request(18, 0, 11, &[])).unwrap();
    assert_eq!(api_versions(&response(&mut s).expect("an answer")).1, 0);
    keeld.client().create_topic("still", 1).unwrap();
    assert!(
        keeld.log_shows("Kafka connection closed"),
        "{}",
        keeld.stderr()
    );
}

fn pairs(v: &Value) -> Vec<(i64, i64)> {
    v.as_array()
        .expect("pairs")
        .iter()
        .map(|p| (num(&p[0]), num(&p[1])))
        .collect()
}

#[test]
fn a_consumer_group_rebalances_and_its_commits_survive_kill_9() {
    if !python_clients() {
        return;
    }
    let dir = keel_tests::data_dir();
    let mut keeld = Keeld::start(dir.path(), &[]);
    keeld.client().create_topic("cg", 4).unwrap();
    let kafka = kafka_addr(&keeld);
    let produced = script(&keeld, &["produce-spread", &kafka, "cg", "400", "4", "0"]);
    assert_eq!(num(&produced["acked"]), 400);

    // librdkafka consumer "a" alone, then "b" joins: a rebalance splits the partitions.
    let run = script(&keeld, &["group-rebalance", &kafka, "cg", "400"]);
    let errors = run["errors"].as_array().expect("errors");
    assert!(errors.is_empty(), "consume errors: {:?}", errors.first());
    let seen = run["seen"].as_array().expect("seen");
    assert_eq!(seen.len(), 400, "every record consumed at least once");
    let a: Vec<Vec<i64>> = serde_json::from_value(run["a_assigned"].clone()).unwrap();
    let b: Vec<Vec<i64>> = serde_json::from_value(run["b_assigned"].clone()).unwrap();
    assert_eq!(
        a.first(),
        Some(&vec![0, 1, 2, 3]),
        "alone, a has every partition"
    );
    let (a_last, b_last) = (a.last().unwrap(), b.last().expect("b was assigned"));
    assert!(!b_last.is_empty(), "the rebalance gave b partitions");
    let mut both: Vec<i64> = a_last.iter().chain(b_last).copied().collect();
    both.sort();
    assert_eq!(
        both,
        vec![0, 1, 2, 3],
        "after the rebalance each partition has one owner"
    );

    // The commits are durable: after kill -9 a new member starts where the group left off.
    keeld.kill();
    let keeld = Keeld::start(dir.path(), &[]);
    let kafka = kafka_addr(&keeld);
    let resumed = script(&keeld, &["group-resume", &kafka, "cg", "4", "1"]);
    assert_eq!(
        pairs(&resumed["committed"]),
        vec![(0, 100), (1, 100), (2, 100), (3, 100)],
        "every partition committed to its end"
    );
    assert!(
        pairs(&resumed["consumed"]).is_empty(),
        "nothing consumed twice"
    );
    script(&keeld, &["produce-spread", &kafka, "cg", "8", "4", "400"]);
    let resumed = script(&keeld, &["group-resume", &kafka, "cg", "4", "8"]);
    let mut consumed = pairs(&resumed["consumed"]);
    consumed.sort();
    let want: Vec<(i64, i64)> = (0..4).flat_map(|p| [(p, 100), (p, 101)]).collect();
    assert_eq!(consumed, want, "only the new records");
}

#[test]
fn compressed_batches_of_every_codec_are_stored_as_sent_and_read_decoded() {
    let dir = keel_tests::data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let client = keeld.client();

    // Keel's own client: a batch of each codec, read back decoded, stored as sent.
    client.create_topic("z", 1).unwrap();
    let codecs = [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];
    let mut at = HashMap::new();
    for (c, codec) in codecs.iter().enumerate() {
        let mut batch = BatchBuilder::new(record(c * 10).3);
        let mut firsts = Vec::new();
        for i in c * 10..c * 10 + 10 {
            let (key, value, headers, _) = record(i);
            let headers: Vec<(&[u8], &[u8])> =
                headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            batch.push(Some(&key), &value, &headers);
            firsts.push(i);
        }
        let sent = compress_batch(&batch.build(), *codec);
        let ack = client
            .send_batch("z", Target::Partition(0), &sent)
            .unwrap()
            .wait()
            .unwrap();
        for (k, i) in firsts.into_iter().enumerate() {
            at.insert(ack.first_offset + k as u64, i);
        }
        let stored = client
            .fetch("z", 0, ack.first_offset, Default::default())
            .unwrap();
        let view = BatchView::verify(&stored.batches[..sent.len()]).unwrap();
        assert_eq!(view.codec(), Ok(*codec), "stored as sent");
    }
    for m in fetch_all(&client, "z", 0, 0, 1 << 20) {
        let i = at[&m.offset];
        let (key, value, _, _) = record(i);
        assert_eq!(m.key.as_deref(), Some(&key[..]), "key of {i}");
        assert_eq!(m.value.as_deref(), Some(&value[..]), "value of {i}");
        // Timestamps inside a batch are its base plus each record's delta: 0 here.
        assert_eq!(m.timestamp_ms, record((i / 10) * 10).3);
    }
    // A Keel consumer group is handed the records of compressed batches one by one.
    let member = client
        .join_group("zg", "z", StartAt::Earliest, JoinSettings::default())
        .unwrap();
    let mut delivered = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while delivered.len() < at.len() && Instant::now() < until {
        delivered.extend(
            client
                .consume(&member, 100, Duration::from_millis(200))
                .unwrap(),
        );
    }
    assert_eq!(delivered.len(), at.len(), "every record delivered");
    for d in delivered {
        let (_, value, _, _) = record(at[&d.message.offset]);
        assert_eq!(d.message.value.as_deref(), Some(&value[..]));
    }

    if !python_clients() {
        return;
    }
    // librdkafka with each codec, and kafka-python with gzip (its others need extra modules).
    let kafka = kafka_addr(&keeld);
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("zc-{codec}");
        client.create_topic(&topic, 2).unwrap();
        let produced = script(&keeld, &["produce-confluent", &kafka, &topic, "200", codec]);
        let at = check_acked(&produced, 200);
        let stored = client.fetch(&topic, 0, 0, Default::default()).unwrap();
        let first = keel_format::batch::batches(&stored.batches)
            .next()
            .expect("a batch")
            .expect("a valid batch");
        assert_eq!(
            first.codec().unwrap().name(),
            codec,
            "stored as librdkafka sent it"
        );
        check_with_keel(&keeld, &topic, &at);
        let consumed = script(&keeld, &["consume-confluent", &kafka, &topic, "2", "200"]);
        check_consumed(&consumed["records"], &at);
    }
    let produced = script(
        &keeld,
        &["produce-kafka-python", &kafka, "zp", "100", "gzip"],
    );
    let at = check_acked(&produced, 100);
    check_with_keel(&keeld, "zp", &at);
}

#[test]
fn an_idempotent_producer_stores_every_record_exactly_once_across_kill_9_restarts() {
    if !python_clients() {
        return;
    }
    let dir = keel_tests::data_dir();
    // A fixed Kafka port, so that the producer finds keeld again after each restart.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kafka = format!("127.0.0.1:{port}");
    let flags = ["--kafka-listen", kafka.as_str()];
    let mut keeld = Keeld::start(dir.path(), &flags);
    keeld.client().create_topic("x", 2).unwrap();
    let n = 20_000;
    let script_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kafka/clients.py");
    let args = ["produce-through-restarts", kafka.as_str(), "x", "20000"];
    let producing = std::thread::spawn({
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        move || run(Command::new("python3").arg(script_path).args(args))
    });
    let mut restarts = 0;
    while !producing.is_finished() && restarts < 4 {
        std::thread::sleep(Duration::from_millis(700));
        keeld.kill();
        keeld = Keeld::start(dir.path(), &flags);
        restarts += 1;
    }
    let out = producing.join().expect("the producer's script");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(num(&answer["failed_count"]), 0, "{}", answer["failed"]);
    assert_eq!(num(&answer["unflushed"]), 0);
    let acked = answer["acked"].as_array().unwrap().len();
    assert_eq!(acked, n, "every record acknowledged");
    assert!(
        restarts >= 2,
        "keeld was killed under the producer ({restarts} times)"
    );

    let client = keeld.client();
    let mut seen = vec![0u32; n];
    for p in 0..2 {
        let mut last = None;
        for m in fetch_all(&client, "x", p, 0, 1 << 20) {
            let v: usize = std::str::from_utf8(m.value.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(v % 2, p as usize, "record {v} in its partition");
            assert!(
                last < Some(v),
                "partition {p}: {v} after {last:?}: out of order"
            );
            last = Some(v);
            seen[v] += 1;
        }
    }
    let missing: Vec<usize> = (0..n).filter(|&i| seen[i] == 0).take(5).collect();
    let doubled: Vec<usize> = (0..n).filter(|&i| seen[i] > 1).take(5).collect();
    assert!(missing.is_empty(), "records lost: {missing:?}");
    assert!(doubled.is_empty(), "records stored twice: {doubled:?}");
    println!("{n} records, {restarts} kill -9 restarts: each stored exactly once, in order");
}

#[test]
fn topic_settings_are_described_and_refused_changes_name_keelds_configuration() {
    if !python_clients() {
        return;
    }
    let dir = keel_tests::data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    keeld.client().create_topic("cfg", 1).unwrap();
    let kafka = kafka_addr(&keeld);
    let got = script(&keeld, &["configs", &kafka, "cfg"]);
    // The tests' keeld: 1 MiB segments, 256 KiB batches (tests/src/keeld.rs).
    assert_eq!(got["topic"]["segment.bytes"], "1048576", "{got}");
    assert_eq!(got["topic"]["max.message.bytes"], "262144", "{got}");
    assert_eq!(got["topic"]["cleanup.policy"], "delete");
    assert_eq!(got["broker"]["message.max.bytes"], "262144");
    assert_eq!(got["broker"]["auto.create.topics.enable"], "false");
    assert_eq!(got["unknown"], "UNKNOWN_TOPIC_OR_PART");
    assert_eq!(got["alter"], "INVALID_CONFIG");
    assert_eq!(got["incremental"], "INVALID_CONFIG");
}
