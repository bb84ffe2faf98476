//! Malformed, oversized and unknown requests get named errors or a closed connection, are
//! logged with the peer's address, and never disturb other connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keel_client::{
    BatchBuilder, ClientError, ErrorCode, FetchOptions, JoinSettings, OffsetSpan, StartAt, Target,
};
use keel_protocol::{decode_response, encode_request, ApiKey, Request, Response};
use keel_tests::keeld::Keeld;
use keel_tests::raw_produce::produce;
use keel_tests::{data_dir, read_frame};

fn connect(server: &Keeld) -> TcpStream {
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Whether the server closes the connection (EOF, or reset) after whatever it still sends.
fn closed(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn error_of(frame: &[u8], api: ApiKey) -> (u32, ErrorCode, String) {
    let (id, answer) = decode_response(frame, api).unwrap();
    let e = answer.unwrap_err();
    (id, e.code, e.message)
}

/// A request frame with a raw header: size, api key, version, correlation id, body.
fn raw_frame(api: u16, version: u16, id: u32, body: &[u8]) -> Vec<u8> {
    let mut f = ((8 + body.len()) as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&api.to_le_bytes());
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn answerable_bad_requests_get_error_codes_and_the_connection_goes_on() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("t", 1).unwrap();
    let mut s = connect(&server);

    // Unknown api key, a consumer-group request without its body, unknown version, truncated
    // body.
    s.write_all(&raw_frame(99, 0, 11, b"")).unwrap();
    s.write_all(&raw_frame(8, 0, 12, b"")).unwrap();
    s.write_all(&raw_frame(ApiKey::Metadata as u16, 7, 13, b""))
        .unwrap();
    s.write_all(&raw_frame(ApiKey::Metadata as u16, 0, 14, &[200, 0]))
        .unwrap();
    let mut answers: Vec<_> = (0..4)
        .map(|_| error_of(&read_frame(&mut s), ApiKey::Metadata))
        .collect();
    answers.sort_by_key(|a| a.0);
    let codes: Vec<_> = answers.iter().map(|a| (a.0, a.1)).collect();
    assert_eq!(
        codes,
        [
            (11, ErrorCode::UnsupportedApi),
            (12, ErrorCode::MalformedRequest),
            (13, ErrorCode::UnsupportedVersion),
            (14, ErrorCode::MalformedRequest)
        ]
    );
    assert!(answers[0].2.contains("99"), "{}", answers[0].2);

    // The same connection still works.
    let mut ok = Vec::new();
    encode_request(15, &Request::Metadata { topic: "t".into() }, &mut ok);
    s.write_all(&ok).unwrap();
    let frame = read_frame(&mut s);
    let (id, answer) = decode_response(&frame, ApiKey::Metadata).unwrap();
    assert_eq!(
        (id, answer.unwrap()),
        (15, Response::Metadata { partitions: 1 })
    );

    // Unknown topic: a named code.
    let mut unknown = Vec::new();
    encode_request(
        16,
        &Request::Metadata {
            topic: "nope".into(),
        },
        &mut unknown,
    );
    s.write_all(&unknown).unwrap();
    assert_eq!(
        error_of(&read_frame(&mut s), ApiKey::Metadata).1,
        ErrorCode::UnknownTopic
    );

    let peer = s.local_addr().unwrap().to_string();
    assert!(
        server.log_shows(&peer),
        "bad requests are logged with the peer: {}",
        server.stderr()
    );
}

fn unreadable_frames(io: &[&str]) {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), io);
    let client = server.client();
    client.create_topic("t", 1).unwrap();
    let before = produce(&client, "t", Target::Partition(0), ["before"]).unwrap();

    // A size beyond the 16 MiB limit: answered (the header is there) and closed.
    let mut big = connect(&server);
    let mut frame = (64u32 << 20).to_le_bytes().to_vec();
    frame.extend_from_slice(&(ApiKey::Produce as u16).to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(&21u32.to_le_bytes());
    big.write_all(&frame).unwrap();
    let (id, code, message) = error_of(&read_frame(&mut big), ApiKey::Produce);
    assert_eq!((id, code), (21, ErrorCode::MalformedRequest));
    assert!(message.contains("outside the allowed"), "{message}");
    assert!(closed(&mut big));

    // A size smaller than a header: nothing to answer, closed.
    let mut tiny = connect(&server);
    tiny.write_all(&3u32.to_le_bytes()).unwrap();
    tiny.write_all(&[1, 2, 3]).unwrap();
    assert!(closed(&mut tiny));

    // Random garbage: closed or answered, never a crash.
    let mut garbage = connect(&server);
    let _ = garbage.write_all(&[0xff; 1000]);
    assert!(closed(&mut garbage));

    // A client that vanishes mid-frame.
    let mut half = connect(&server);
    let mut ok = Vec::new();
    encode_request(1, &Request::Metadata { topic: "t".into() }, &mut ok);
    half.write_all(&ok[..ok.len() - 2]).unwrap();
    drop(half);

    // Everyone else carries on, and nothing acknowledged was lost.
    let after = produce(&client, "t", Target::Partition(0), ["after"]).unwrap();
    assert_eq!(after.first_offset, before.first_offset + 1);
    let fetched = client.fetch("t", 0, 0, FetchOptions::default()).unwrap();
    let values: Vec<_> = fetched
        .messages(0)
        .unwrap()
        .into_iter()
        .map(|m| m.value.unwrap())
        .collect();
    assert_eq!(values, [b"before".to_vec(), b"after".to_vec()]);
    assert!(
        server.log_shows("closing the connection"),
        "{}",
        server.stderr()
    );
}

#[test]
fn an_oversized_or_unreadable_frame_closes_only_its_connection() {
    unreadable_frames(&[]);
}

#[test]
fn an_oversized_or_unreadable_frame_closes_only_its_connection_with_portable_io() {
    unreadable_frames(&["--portable-io"]);
}

/// `batch` with its attributes set to `attributes` and its CRC made to match: a valid batch a
/// Kafka producer could send.
fn with_attributes(batch: &[u8], attributes: i16) -> Vec<u8> {
    let mut b = batch.to_vec();
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = keel_format::crc::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The server error a call ended with.
fn server_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Server { code, message }) => (code, message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Values the protocol forbids get a named error, nothing of them is stored, and the
/// connection goes on: a string over 32 KiB, batches that do not decompress or name no codec,
/// transactional batches, group
/// settings and nack delays outside their documented ranges.
#[test]
fn inputs_outside_their_documented_ranges_get_named_errors() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("t", 1).unwrap();

    let mut s = connect(&server);
    let mut body = 40_000u16.to_le_bytes().to_vec();
    body.extend(std::iter::repeat_n(b'a', 40_000));
    s.write_all(&raw_frame(ApiKey::Handshake as u16, 0, 21, &body))
        .unwrap();
    let (id, code, message) = error_of(&read_frame(&mut s), ApiKey::Handshake);
    assert_eq!((id, code), (21, ErrorCode::MalformedRequest));
    assert!(
        message.contains("40000") && message.contains("32768"),
        "{message}"
    );

    let mut plain = BatchBuilder::new(0);
    plain.push(None, b"plain text", &[]);
    let plain = plain.build();
    // Records that say zstd but are not: they do not decompress.
    let sent = client.send_batch("t", Target::Partition(0), &with_attributes(&plain, 4));
    let (code, message) = server_error(sent.unwrap().wait());
    assert_eq!(code, ErrorCode::InvalidBatch, "{message}");
    assert!(
        message.contains("zstd data does not decompress"),
        "{message}"
    );
    // A codec that does not exist.
    let sent = client.send_batch("t", Target::Partition(0), &with_attributes(&plain, 7));
    let (code, message) = server_error(sent.unwrap().wait());
    assert_eq!(code, ErrorCode::CompressionUnsupported, "{message}");
    assert!(message.contains("not defined"), "{message}");
    let sent = client.send_batch("t", Target::Partition(0), &with_attributes(&plain, 0x10));
    let (code, message) = server_error(sent.unwrap().wait());
    assert_eq!(code, ErrorCode::InvalidBatch, "{message}");
    let fetched = client.fetch("t", 0, 0, FetchOptions::default()).unwrap();
    assert_eq!(fetched.high_watermark, 0, "nothing refused was stored");

    for (settings, field) in [
        (
            JoinSettings {
                session_timeout_ms: u32::MAX,
                ..JoinSettings::default()
            },
            "session_timeout_ms",
        ),
        (
            JoinSettings {
                ack_timeout_ms: u32::MAX,
                ..JoinSettings::default()
            },
            "ack_timeout_ms",
        ),
        (
            JoinSettings {
                max_deliveries: u32::MAX,
                ..JoinSettings::default()
            },
            "max_deliveries",
        ),
        (
            JoinSettings {
                max_unacked: u32::MAX,
                ..JoinSettings::default()
            },
            "max_unacked",
        ),
    ] {
        let (code, message) =
            server_error(client.join_group("g", "t", StartAt::Earliest, settings));
        assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
        assert!(message.contains(field), "{message}");
    }
    let m = client
        .join_group("g", "t", StartAt::Earliest, JoinSettings::default())
        .unwrap();
    let span = OffsetSpan {
        partition: 0,
        first: 0,
        last: 0,
    };
    let (code, message) = server_error(client.nack(&m, &[span], Duration::from_secs(100_000)));
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    assert!(message.contains("delay_ms"), "{message}");
    client.nack(&m, &[span], Duration::from_secs(1)).unwrap();
}
