//! One Kafka connection, on two threads: the reader reads size-prefixed request frames,
//! decodes them and hands their work to the engine at once (a producer's pipelined requests
//! then share group commits); the writer answers them strictly in request order (Kafka's
//! clients match answers to requests by order as well as by correlation id). At most
//! [`PIPELINE_DEPTH`] requests, and `connection_inflight_bytes` of them, wait between the two;
//! past either the reader stops reading.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::apis::{self, Answer, Pending};
use super::session::{Session, Waiter};
use super::KafkaContext;
use crate::budget::{BudgetHold, ByteBudget};

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("a request frame of {0} bytes is outside the allowed 8 to {1} bytes")]
    FrameSize(i64, u32),
    #[error("request header: {0}")]
    Header(String),
    #[error("{api:?} v{version}: {why}")]
    Request {
        api: ApiKey,
        version: i16,
        why: String,
    },
    #[error("api key {0} is not a Kafka API")]
    UnknownApi(i16),
    #[error("{0:?} v{1} is not served (ApiVersions lists what is)")]
    Unsupported(ApiKey, i16),
}

/// Requests read and not yet answered, at most, per connection.
const PIPELINE_DEPTH: usize = 16;
/// Bytes of a request body allocated before any of it has come.
const FIRST_READ_BYTES: usize = 64 << 10;

/// Registers `stream` and serves it on two threads of its own.
pub(super) fn spawn(stream: TcpStream, ctx: &Arc<KafkaContext>) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(ctx.write_timeout))?;
    let session = Arc::new(Session::new(
        Arc::clone(&ctx.engine),
        Arc::clone(&ctx.coordinator),
        local,
        peer,
    )?);
    let writer_stream = stream.try_clone()?;
    let (_, reader_done, writer_done) = ctx.registry.register(&stream)?;
    let (tx, rx) = bounded::<(Pending, BudgetHold)>(PIPELINE_DEPTH);
    let budget = ByteBudget::new(ctx.connection_inflight_bytes);
    let writer_session = Arc::clone(&session);
    std::thread::Builder::new()
        .name(format!("keel-kafka-w-{peer}"))
        .spawn(move || {
            if let Err(e) = write_answers(writer_stream, &writer_session, &rx) {
                log::debug!("{peer}: Kafka answers not written: {e}");
            }
            drop(writer_done);
        })?;
    let ctx = Arc::clone(ctx);
    std::thread::Builder::new()
        .name(format!("keel-kafka-{peer}"))
        .spawn(move || {
            log::debug!("{peer}: Kafka client connected");
            match read_requests(stream, &ctx, &session, &budget, &tx) {
                Ok(()) => log::debug!("{peer}: Kafka client disconnected"),
                // Clients close with a reset often enough: not worth a warning.
                Err(ConnError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    log::debug!("{peer}: Kafka client disconnected: {e}");
                }
                Err(e) => log::warn!("{peer}: Kafka connection closed: {e}"),
            }
            // The writer answers what was read, then closes the connection.
            drop(tx);
            drop(reader_done);
        })?;
    Ok(())
}

/// The reader: requests handled and handed to the writer, until the client closes or sends
/// something that cannot be served.
fn read_requests(
    mut stream: TcpStream,
    ctx: &KafkaContext,
    session: &Session,
    budget: &Arc<ByteBudget>,
    tx: &Sender<(Pending, BudgetHold)>,
) -> Result<(), ConnError> {
    loop {
        let Some((frame, hold)) = read_frame(&mut stream, ctx, budget)? else {
            return Ok(());
        };
        let pending = match decode(frame)? {
            Decoded::ApiVersionsTooNew(correlation_id) => {
                Pending::Ready(Box::new(apis::api_versions_unsupported(correlation_id)))
            }
            Decoded::Request(request) => {
                let (header, request) = *request;
                match apis::handle(session, &header, request) {
                    Some(p) => p,
                    None => continue,
                }
            }
        };
        if tx.send((pending, hold)).is_err() {
            // The writer stopped (the client stopped reading): nothing more is answered.
            return Ok(());
        }
    }
}

/// The writer: each request's answer in turn, once it is there, until the reader is done and
/// everything it read is answered; then the connection is closed.
fn write_answers(
    mut stream: TcpStream,
    session: &Session,
    rx: &Receiver<(Pending, BudgetHold)>,
) -> Result<(), ConnError> {
    let mut waiter = Waiter::new(session);
    let mut out = BytesMut::new();
    let written = (|| {
        // The request's bytes go back to the budget once it is answered.
        for (pending, _hold) in rx {
            let Some(answer) = apis::finish(session, &mut waiter, pending) else {
                continue; // acks=0: no answer at all.
            };
            out.clear();
            encode(&answer, &mut out)?;
            stream.write_all(&out)?;
        }
        Ok(())
    })();
    let _ = stream.shutdown(Shutdown::Both);
    written
}

/// The next request frame and the budget it holds; `None` when the client closed the
/// connection between requests. The frame's bytes are taken from `budget` before its body is
/// read, so a connection past its budget is not read further until answers go out.
fn read_frame(
    stream: &mut TcpStream,
    ctx: &KafkaContext,
    budget: &Arc<ByteBudget>,
) -> Result<Option<(Bytes, BudgetHold)>, ConnError> {
    stream.set_read_timeout(Some(ctx.idle_timeout))?;
    let mut size = [0u8; 4];
    match stream.read(&mut size[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(e.into()),
    }
    stream.set_read_timeout(Some(ctx.frame_read_timeout))?;
    stream.read_exact(&mut size[1..])?;
    let len = i32::from_be_bytes(size);
    // Header: api key, version and correlation id at least.
    if len < 8 || len as u32 > ctx.max_frame_bytes {
        return Err(ConnError::FrameSize(i64::from(len), ctx.max_frame_bytes));
    }
    let len = len as usize;
    let hold = budget.acquire(len);
    // Grown as the bytes come: a client that announces a large frame and sends little holds
    // little.
    let mut body = Vec::with_capacity(len.min(FIRST_READ_BYTES));
    (&mut *stream).take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(ConnError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the connection closed {} bytes into a {len}-byte request",
                body.len()
            ),
        )));
    }
    Ok(Some((Bytes::from(body), hold)))
}

/// A request frame, decoded.
pub(super) enum Decoded {
    /// A request of a version served.
    Request(Box<(RequestHeader, RequestKind)>),
    /// An ApiVersions at a version too new to decode: answered at v0 (its correlation id).
    ApiVersionsTooNew(i32),
}

/// Decodes a request frame (without its size prefix): header and body, for an API and
/// version this listener serves.
pub(super) fn decode(mut frame: Bytes) -> Result<Decoded, ConnError> {
    let Some(head) = frame.first_chunk::<8>() else {
        return Err(ConnError::FrameSize(frame.len() as i64, 8));
    };
    let key = i16::from_be_bytes([head[0], head[1]]);
    let version = i16::from_be_bytes([head[2], head[3]]);
    let correlation_id = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let api = ApiKey::try_from(key).map_err(|()| ConnError::UnknownApi(key))?;
    let Some(served) = apis::served(api) else {
        return Err(ConnError::Unsupported(api, version));
    };
    if !served.contains(version) {
        // Kafka's rule: an ApiVersions too new is answered at v0 with the versions served, so
        // that the client can pick one; any other request at a version not served is a
        // client's bug, and the connection is closed.
        if api == ApiKey::ApiVersions {
            return Ok(Decoded::ApiVersionsTooNew(correlation_id));
        }
        return Err(ConnError::Unsupported(api, version));
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| ConnError::Header(e.to_string()))?;
    let request =
        RequestKind::decode(api, &mut frame, version).map_err(|e| ConnError::Request {
            api,
            version,
            why: e.to_string(),
        })?;
    Ok(Decoded::Request(Box::new((header, request))))
}

/// Writes `answer` as a size-prefixed response frame.
fn encode(answer: &Answer, out: &mut BytesMut) -> Result<(), ConnError> {
    let fail = |e: String| {
        ConnError::Io(io::Error::other(format!(
            "cannot encode the answer to {:?} v{}: {e}",
            answer.api, answer.version
        )))
    };
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(answer.correlation_id)
        .encode(out, answer.api.response_header_version(answer.version))
        .map_err(|e| fail(e.to_string()))?;
    answer
        .body
        .encode(out, answer.version)
        .map_err(|e| fail(e.to_string()))?;
    let len = i32::try_from(out.len() - 4)
        .map_err(|_| ConnError::Io(io::Error::other("an answer over 2 GiB")))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}
