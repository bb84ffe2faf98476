#![allow(clippy::unwrap_used)] // a failing unwrap is a failing test
//! Round trips of every request and response, and decoding of hostile input: random bytes,
//! truncated frames, lying lengths and counts. Nothing may panic or over-allocate.

use keel_format::batch;
use keel_protocol::*;
use proptest::prelude::*;

fn topic() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{0,40}"
}

fn request_strategy() -> impl Strategy<Value = (String, u32, u64, i64, i32, Vec<u8>, Vec<u8>, u8)> {
    (
        topic(),
        any::<u32>(),
        any::<u64>(),
        any::<i64>(),
        any::<i32>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..20),
        0u8..14,
    )
}

fn build_request<'a>(t: &'a (String, u32, u64, i64, i32, Vec<u8>, Vec<u8>, u8)) -> Request<'a> {
    let (topic, n, offset, pid, seq, batch, key, which) = t;
    match which {
        0 => Request::Handshake {
            client: topic.clone(),
        },
        1 => Request::CreateTopic {
            topic: topic.clone(),
            partitions: *n,
        },
        2 => Request::DeleteTopic {
            topic: topic.clone(),
        },
        3 => Request::ListTopics,
        4 => Request::Metadata {
            topic: topic.clone(),
        },
        5 => Request::Produce {
            topic: topic.clone(),
            target: if n % 2 == 0 {
                PartitionTarget::Partition(*n)
            } else {
                PartitionTarget::Key(key)
            },
            producer_id: *pid,
            base_sequence: *seq,
            batch,
        },
        6 => Request::Fetch {
            topic: topic.clone(),
            partition: *n,
            offset: *offset,
            max_bytes: n.rotate_left(7),
            max_wait_ms: n.rotate_left(13),
        },
        7 => Request::JoinGroup {
            group: format!("g-{topic}"),
            topic: topic.clone(),
            start: match n % 4 {
                0 => StartAt::Earliest,
                1 => StartAt::Latest,
                2 => StartAt::Offset(*offset),
                _ => StartAt::Timestamp(*pid),
            },
            settings: JoinSettings {
                max_unacked: *n,
                session_timeout_ms: n.rotate_left(3),
                ack_timeout_ms: n.rotate_left(9),
                max_deliveries: *seq as u32,
            },
        },
        8 => Request::LeaveGroup {
            group: topic.repeat(2),
            topic: topic.clone(),
            member: *offset,
        },
        9 => Request::Heartbeat {
            group: String::new(),
            topic: topic.clone(),
            member: *offset,
        },
        10 => Request::Consume {
            group: topic.clone(),
            topic: topic.clone(),
            member: *offset,
            max_messages: *n,
            max_wait_ms: n.rotate_left(5),
        },
        11 => Request::Ack {
            group: topic.clone(),
            topic: topic.clone(),
            member: *offset,
            durable: n % 2 == 0,
            spans: spans(batch),
        },
        12 => Request::Nack {
            group: topic.clone(),
            topic: topic.clone(),
            member: *offset,
            delay_ms: *n,
            spans: spans(batch),
        },
        _ => Request::InitProducer {
            producer_id: *pid,
            epoch: *seq as i16,
        },
    }
}

/// Spans built from arbitrary bytes, each well formed (last >= first).
fn spans(bytes: &[u8]) -> Vec<OffsetSpan> {
    bytes
        .chunks(3)
        .map(|c| {
            let first = u64::from(c[0]) << 20;
            OffsetSpan {
                partition: u32::from(c.len() as u8),
                first,
                last: first + u64::from(*c.last().unwrap_or(&0)),
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn every_request_round_trips(t in request_strategy(), correlation_id in any::<u32>()) {
        let request = build_request(&t);
        let mut wire = Vec::new();
        encode_request(correlation_id, &request, &mut wire);
        let len = frame_len(&wire, REQUEST_HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES).unwrap();
        prop_assert_eq!(len, Some(wire.len()));
        let (header, decoded) = decode_request(&wire).unwrap();
        prop_assert_eq!(header.correlation_id, correlation_id);
        prop_assert_eq!(header.api, request.api());
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn every_response_round_trips(t in request_strategy(), correlation_id in any::<u32>(), names in proptest::collection::vec(topic(), 0..5)) {
        let (_, n, offset, _, _, batch, _, which) = &t;
        let topics: Vec<TopicInfo> = names.iter().map(|name| TopicInfo { name: name.clone(), partitions: *n }).collect();
        let (api, response) = match which {
            0 => (ApiKey::Handshake, Response::Handshake {
                server: names.concat(),
                max_frame_bytes: *n,
                max_batch_bytes: n / 2,
                apis: ApiKey::ALL.iter().map(|a| ApiVersions { api: *a as u16, min: 0, max: 0 }).collect(),
            }),
            1 => (ApiKey::CreateTopic, Response::CreateTopic),
            2 => (ApiKey::DeleteTopic, Response::DeleteTopic),
            3 => (ApiKey::ListTopics, Response::ListTopics(topics)),
            4 => (ApiKey::Metadata, Response::Metadata { partitions: *n }),
            5 => (ApiKey::Produce, Response::Produce { partition: *n, first_offset: *offset, last_offset: offset.wrapping_add(9) }),
            6 => (ApiKey::Fetch, Response::Fetch { high_watermark: *offset, next_offset: offset / 2, batches: batch }),
            7 => (ApiKey::JoinGroup, Response::JoinGroup { member: *offset, partitions: *n, session_timeout_ms: n / 3 }),
            8 => (ApiKey::LeaveGroup, Response::LeaveGroup),
            9 => (ApiKey::Heartbeat, Response::Heartbeat),
            10 => (ApiKey::Consume, Response::Consume {
                partitions: (0..names.len() as u32).map(|p| ConsumedPartition {
                    partition: p.wrapping_mul(*n),
                    deliveries: (0..p).map(|i| DeliveryInfo { offset: offset.wrapping_add(u64::from(i)), delivery_count: i + 1 }).collect(),
                    batches: &batch[..batch.len() / (p as usize + 1)],
                }).collect(),
            }),
            11 => (ApiKey::Ack, Response::Ack),
            12 => (ApiKey::Nack, Response::Nack),
            _ => (ApiKey::InitProducer, Response::InitProducer { producer_id: *offset as i64, epoch: *n as i16 }),
        };
        let mut wire = Vec::new();
        encode_response(correlation_id, &response, &mut wire);
        prop_assert_eq!(response_correlation_id(&wire).unwrap(), correlation_id);
        let (id, decoded) = decode_response(&wire, api).unwrap();
        prop_assert_eq!(id, correlation_id);
        prop_assert_eq!(decoded, Ok(response));
    }

    #[test]
    fn error_responses_round_trip(code in 1u16..19, message in ".{0,100}", correlation_id in any::<u32>()) {
        let code = ErrorCode::from_u16(code);
        let mut wire = Vec::new();
        encode_error(correlation_id, code, &message, &mut wire);
        for api in ApiKey::ALL {
            let (id, decoded) = decode_response(&wire, api).unwrap();
            prop_assert_eq!(id, correlation_id);
            prop_assert_eq!(decoded, Err(ErrorReply { code, message: message.clone() }));
        }
    }

    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..512), fix_size in any::<bool>()) {
        if fix_size && bytes.len() >= 4 {
            // A consistent size prefix gets the decoder past the first check.
            let size = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&size.to_le_bytes());
        }
        let _ = frame_len(&bytes, REQUEST_HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES);
        let _ = decode_request(&bytes);
        for api in ApiKey::ALL {
            let _ = decode_response(&bytes, api);
        }
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_an_error(t in request_strategy()) {
        let request = build_request(&t);
        let mut wire = Vec::new();
        encode_request(1, &request, &mut wire);
        for cut in 0..wire.len() {
            // A prefix of a frame is "need more bytes", never a frame and never an error.
            prop_assert_eq!(frame_len(&wire[..cut], REQUEST_HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES), Ok(None));
            prop_assert!(decode_request(&wire[..cut]).is_err());
        }
    }
}

#[test]
fn oversized_and_undersized_frames_are_refused_before_buffering() {
    let mut huge = (DEFAULT_MAX_FRAME_BYTES + 1).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 8]);
    assert!(matches!(
        frame_len(&huge, REQUEST_HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES),
        Err(DecodeError::FrameSize { .. })
    ));
    assert!(matches!(
        frame_len(&3u32.to_le_bytes(), REQUEST_HEADER_BYTES, 1 << 20),
        Err(DecodeError::FrameSize { .. })
    ));
    let mut small_limit = Vec::new();
    encode_request(
        1,
        &Request::Handshake {
            client: "x".repeat(100),
        },
        &mut small_limit,
    );
    assert!(
        frame_len(&small_limit, REQUEST_HEADER_BYTES, 64).is_err(),
        "the limit is configurable"
    );
}

#[test]
fn a_readable_header_lets_the_server_answer_bad_requests() {
    // Unknown api key: the correlation id survives for the error response.
    let mut frame = 8u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&40u16.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(&77u32.to_le_bytes());
    let bad = decode_request(&frame).unwrap_err();
    assert_eq!(bad.correlation_id, Some(77));
    assert_eq!(bad.error, DecodeError::UnknownApi(40));
    assert_eq!(
        ErrorCode::for_decode_error(&bad.error),
        ErrorCode::UnsupportedApi
    );

    // Unsupported version of a known api.
    frame[6..8].copy_from_slice(&9u16.to_le_bytes());
    frame[4..6].copy_from_slice(&(ApiKey::Fetch as u16).to_le_bytes());
    let bad = decode_request(&frame).unwrap_err();
    assert_eq!(
        bad.error,
        DecodeError::UnsupportedVersion { api: 6, version: 9 }
    );
    assert_eq!(
        ErrorCode::for_decode_error(&bad.error),
        ErrorCode::UnsupportedVersion
    );

    // A malformed body: the header is fine, the topic is cut short.
    let mut wire = Vec::new();
    encode_request(
        5,
        &Request::Metadata {
            topic: "orders".into(),
        },
        &mut wire,
    );
    wire.truncate(wire.len() - 2);
    let size = (wire.len() - 4) as u32;
    wire[..4].copy_from_slice(&size.to_le_bytes());
    let bad = decode_request(&wire).unwrap_err();
    assert_eq!(
        (bad.correlation_id, ErrorCode::for_decode_error(&bad.error)),
        (Some(5), ErrorCode::MalformedRequest)
    );

    // Trailing garbage after a valid body is refused too.
    let mut wire = Vec::new();
    encode_request(6, &Request::ListTopics, &mut wire);
    wire.push(0);
    let size = (wire.len() - 4) as u32;
    wire[..4].copy_from_slice(&size.to_le_bytes());
    assert_eq!(
        decode_request(&wire).unwrap_err().error,
        DecodeError::TrailingBytes(1)
    );
}

#[test]
fn a_lying_element_count_is_refused_without_allocating_for_it() {
    // A ListTopics response claiming 4 billion topics in a few bytes.
    let mut frame = Vec::new();
    frame.extend_from_slice(&10u32.to_le_bytes());
    frame.extend_from_slice(&1u32.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        decode_response(&frame, ApiKey::ListTopics),
        Err(DecodeError::Malformed("topic count"))
    );
    // A produce batch length past the end of the frame.
    let mut wire = Vec::new();
    encode_request(
        1,
        &Request::Produce {
            topic: "t".into(),
            target: PartitionTarget::Partition(0),
            producer_id: -1,
            base_sequence: 0,
            batch: &[1, 2, 3],
        },
        &mut wire,
    );
    let len_at = wire.len() - 3 - 4;
    wire[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_request(&wire).unwrap_err().error,
        DecodeError::Truncated("batch")
    ));
}

#[test]
fn a_span_that_ends_before_it_starts_is_malformed() {
    let mut wire = Vec::new();
    let span = OffsetSpan {
        partition: 0,
        first: 10,
        last: 9,
    };
    encode_request(
        3,
        &Request::Ack {
            group: "g".into(),
            topic: "t".into(),
            member: 1,
            durable: true,
            spans: vec![span],
        },
        &mut wire,
    );
    let bad = decode_request(&wire).unwrap_err();
    assert_eq!(bad.correlation_id, Some(3));
    assert_eq!(
        bad.error,
        DecodeError::Malformed("span ends before it starts")
    );
}

#[test]
fn error_codes_are_stable_numbers() {
    for (i, code) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(*code as u16, i as u16);
        assert_eq!(ErrorCode::from_u16(i as u16), *code);
    }
    assert_eq!(
        ErrorCode::from_u16(999),
        ErrorCode::Internal,
        "codes from a newer peer are not lost"
    );
    for (i, api) in ApiKey::ALL.iter().enumerate() {
        assert_eq!(*api as u16, i as u16);
    }
}

/// A record as a producer gives it: key, value (`None`: a tombstone) and headers.
type RecordParts = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(Vec<u8>, Option<Vec<u8>>)>,
);

fn record_parts() -> impl Strategy<Value = RecordParts> {
    let bytes = |max| proptest::collection::vec(any::<u8>(), 0..max);
    (
        proptest::option::of(bytes(40)),
        // Up to 300 bytes: record lengths of one and of two varint bytes.
        proptest::option::of(bytes(300)),
        proptest::collection::vec((bytes(10), proptest::option::of(bytes(10))), 0..3),
    )
}

proptest! {
    /// Records are written straight into the batch, their length counted first: what comes
    /// back out is what went in, and the produce frame built around the batch in place is the
    /// very frame of the batch built on its own.
    #[test]
    fn built_batches_decode_to_their_records_and_frame_alike(
        records in proptest::collection::vec(record_parts(), 1..40),
        key_target in any::<bool>(),
        correlation_id in any::<u32>(),
    ) {
        let mut builder = batch::BatchBuilder::new(1_700_000_000_000);
        for (key, value, headers) in &records {
            let headers: Vec<(&[u8], Option<&[u8]>)> =
                headers.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
            builder.push_record(key.as_deref(), value.as_deref(), &headers);
        }
        let built = builder.build();
        prop_assert_eq!(built.len(), builder.encoded_len());
        let view = batch::BatchView::verify(&built).unwrap();
        let decoded: Vec<RecordParts> = view
            .records()
            .map(|r| {
                let r = r.unwrap();
                let headers = r.headers.iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
                (r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec), headers)
            })
            .collect();
        prop_assert_eq!(&decoded, &records);

        let target = if key_target { PartitionTarget::Key(b"k") } else { PartitionTarget::Partition(3) };
        let mut whole = Vec::new();
        encode_request(correlation_id, &Request::Produce {
            topic: "t".into(),
            target: target.clone(),
            producer_id: 7,
            base_sequence: 9,
            batch: &built,
        }, &mut whole);
        let mut in_place = vec![0xee; 5]; // appended after what the buffer holds
        encode_produce_request(correlation_id, "t", &target, 7, 9, &builder, &mut in_place);
        prop_assert_eq!(&in_place[5..], &whole[..]);
    }
}
