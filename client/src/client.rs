//! The blocking, pipelined client: one connection, many requests in flight, answers matched
//! by correlation id on a reader thread.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use keel_protocol::{
    decode_response, encode_request, response_correlation_id, ApiKey, FrameBuffer, PartitionTarget,
    Request, Response, TopicInfo, DEFAULT_MAX_FRAME_BYTES, RESPONSE_HEADER_BYTES,
    SIZE_PREFIX_BYTES,
};

use crate::error::{ClientError, Result};
use crate::message::Fetched;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long to wait for the TCP connection.
    pub connect_timeout: Duration,
    /// How long to wait for an answer (a fetch's own wait comes on top).
    pub request_timeout: Duration,
    /// Name sent in the handshake, for the server's logs.
    pub client_name: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            client_name: format!("keel-client {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Where a produced batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// This partition.
    Partition(u32),
    /// The partition the server derives from this key (Kafka's default partitioner).
    Key(&'a [u8]),
}

/// A produce the server has made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Partition the batch went to.
    pub partition: u32,
    /// Offset of its first message.
    pub first_offset: u64,
    /// Offset of its last message.
    pub last_offset: u64,
}

/// What a fetch asks for.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// Byte budget of the answer; at least one batch is returned when there is one.
    pub max_bytes: u32,
    /// How long the server may wait for new data when there is none (long polling).
    pub max_wait: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 20,
            max_wait: Duration::ZERO,
        }
    }
}

/// What the server said in the handshake.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Server name and version.
    pub server: String,
    /// Largest request frame it accepts.
    pub max_frame_bytes: u32,
    /// Largest record batch a produce may carry.
    pub max_batch_bytes: u32,
}

type Answer = Result<Vec<u8>>;

/// Where a request's answer goes, and the task to wake when it is awaited.
struct Waiter {
    tx: Sender<Answer>,
    task: Option<Waker>,
}

impl Waiter {
    /// Hands over the answer (under the lock that took the waiter out, so a poll that finds
    /// it gone finds the answer there); returns the task to wake once that lock is let go.
    fn answer(self, answer: Answer) -> Option<Waker> {
        // Bounded(1) and sent once: never blocks.
        let _ = self.tx.send(answer);
        self.task
    }
}

struct Pending {
    waiting: HashMap<u32, Waiter>,
    /// Set once the connection is gone: why.
    closed: Option<String>,
}

struct Shared {
    writer: Mutex<TcpStream>,
    pending: Mutex<Pending>,
    next_id: AtomicU32,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // A map updated in single steps: still consistent after a panic elsewhere.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail_all(&self, why: String) {
        let mut p = self.pending();
        let tasks: Vec<Waker> = p
            .waiting
            .drain()
            .filter_map(|(_, w)| w.answer(Err(ClientError::ConnectionLost(why.clone()))))
            .collect();
        p.closed.get_or_insert(why);
        drop(p);
        tasks.into_iter().for_each(Waker::wake);
    }
}

/// A connection to `keeld`. Cheap to share between threads (`&Client` is enough to send);
/// requests from all of them are pipelined on the one connection. It administers topics,
/// fetches, and serves consumer groups; to produce, use [`crate::Producer`].
///
/// ```no_run
/// use keel_client::{Client, FetchOptions, Producer, Record};
/// # fn main() -> Result<(), keel_client::ClientError> {
/// let client = Client::connect("127.0.0.1:7070")?;
/// client.create_topic("orders", 4)?;
/// let producer = Producer::connect("127.0.0.1:7070")?;
/// // Answered once the message is on stable storage.
/// let stored = producer.send(Record::new("orders", b"order #1").key(b"customer-7"))?.wait()?;
/// let fetched = client.fetch("orders", stored.partition, stored.offset, FetchOptions::default())?;
/// for m in fetched.messages(stored.offset)? {
///     println!("{} {:?}", m.offset, m.value);
/// }
/// # Ok(()) }
/// ```
pub struct Client {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    options: ClientOptions,
    info: ServerInfo,
}

/// A request sent and not yet answered.
#[must_use = "a request's outcome is only known once waited for"]
pub struct PendingReply {
    rx: Receiver<Answer>,
    id: u32,
    api: ApiKey,
    timeout: Duration,
    shared: Arc<Shared>,
}

/// A produce sent and not yet acknowledged; [`PendingProduce::wait`] returns once the batch is
/// durable.
#[must_use = "a produce is only known to be durable once its ack is waited for"]
pub struct PendingProduce(PendingReply);

impl PendingProduce {
    /// Waits for the acknowledgement (at most the client's request timeout).
    pub fn wait(self) -> Result<Ack> {
        ack_of(self.0.wait()?)
    }
}

/// The produce answer as an [`Ack`].
pub(crate) fn ack_of(response: Response<'_>) -> Result<Ack> {
    match response {
        Response::Produce {
            partition,
            first_offset,
            last_offset,
        } => Ok(Ack {
            partition,
            first_offset,
            last_offset,
        }),
        other => Err(unexpected(&other)),
    }
}

fn reader_stopped() -> ClientError {
    ClientError::ConnectionLost("the client's reader stopped".into())
}

pub(crate) fn unexpected(r: &Response<'_>) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {r:?}"))
}

impl PendingReply {
    pub(crate) fn wait_frame(&self) -> Result<Vec<u8>> {
        match self.rx.recv_timeout(self.timeout) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Timeout) => {
                self.shared.pending().waiting.remove(&self.id);
                Err(ClientError::Timeout(self.timeout))
            }
            Err(RecvTimeoutError::Disconnected) => Err(reader_stopped()),
        }
    }

    /// The answer if it is there, else registers the task to wake when it comes. An awaited
    /// request has no timeout of its own (the caller's runtime has timers); a lost connection
    /// ends it with [`ClientError::ConnectionLost`].
    pub(crate) fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Result<Vec<u8>>> {
        if let Some(answer) = self.try_frame() {
            return Poll::Ready(answer);
        }
        let mut p = self.shared.pending();
        if let Some(w) = p.waiting.get_mut(&self.id) {
            // Still waiting, under the lock the reader answers under: it will wake this task.
            if !w.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                w.task = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        drop(p);
        // The entry is gone: its answer (or the connection's failure) was sent when it was
        // taken out, under the lock.
        Poll::Ready(self.try_frame().unwrap_or_else(|| Err(reader_stopped())))
    }

    fn try_frame(&self) -> Option<Result<Vec<u8>>> {
        match self.rx.try_recv() {
            Ok(answer) => Some(answer),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(reader_stopped())),
        }
    }

    /// Waits for the answer and decodes it; an error answer becomes [`ClientError::Server`].
    pub(crate) fn wait(self) -> Result<Response<'static>> {
        let frame = self.wait_frame()?;
        self.decode(&frame)
    }

    /// Decodes an answer to this request; an error answer becomes [`ClientError::Server`].
    pub(crate) fn decode(&self, frame: &[u8]) -> Result<Response<'static>> {
        let (_, answer) = decode_response(frame, self.api)
            .map_err(|e| ClientError::Protocol(format!("{:?} answer: {e}", self.api)))?;
        let response = answer.map_err(|e| ClientError::Server {
            code: e.code,
            message: e.message,
        })?;
        Ok(into_owned(response))
    }
}

/// Responses borrow from their frame only for fetched and consumed batches, which
/// [`Client::fetch`] and [`Client::consume`] decode themselves; the rest are owned already.
fn into_owned(r: Response<'_>) -> Response<'static> {
    match r {
        Response::Handshake {
            server,
            max_frame_bytes,
            max_batch_bytes,
            apis,
        } => Response::Handshake {
            server,
            max_frame_bytes,
            max_batch_bytes,
            apis,
        },
        Response::CreateTopic => Response::CreateTopic,
        Response::DeleteTopic => Response::DeleteTopic,
        Response::ListTopics(t) => Response::ListTopics(t),
        Response::Metadata { partitions } => Response::Metadata { partitions },
        Response::Produce {
            partition,
            first_offset,
            last_offset,
        } => Response::Produce {
            partition,
            first_offset,
            last_offset,
        },
        Response::Fetch {
            high_watermark,
            next_offset,
            ..
        } => Response::Fetch {
            high_watermark,
            next_offset,
            batches: &[],
        },
        Response::JoinGroup {
            member,
            partitions,
            session_timeout_ms,
        } => Response::JoinGroup {
            member,
            partitions,
            session_timeout_ms,
        },
        Response::LeaveGroup => Response::LeaveGroup,
        Response::Heartbeat => Response::Heartbeat,
        Response::Consume { .. } => Response::Consume {
            partitions: Vec::new(),
        },
        Response::Ack => Response::Ack,
        Response::Nack => Response::Nack,
        Response::InitProducer { producer_id, epoch } => {
            Response::InitProducer { producer_id, epoch }
        }
    }
}

impl Client {
    /// Connects with default options and shakes hands.
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Display) -> Result<Self> {
        Self::connect_with(addr, ClientOptions::default())
    }

    /// Connects and shakes hands: fails if the server does not speak the versions this
    /// client needs.
    pub fn connect_with(
        addr: impl ToSocketAddrs + std::fmt::Display,
        options: ClientOptions,
    ) -> Result<Self> {
        let fail = connect_failure(&addr);
        let stream = open_stream(&addr, &options)?;
        let read_half = stream
            .try_clone()
            .map_err(|e| fail(format!("clone the socket: {e}")))?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream),
            pending: Mutex::new(Pending {
                waiting: HashMap::new(),
                closed: None,
            }),
            next_id: AtomicU32::new(1),
        });
        let reader_shared = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("keel-client-reader".into())
            .spawn(move || read_answers(read_half, &reader_shared))
            .map_err(|e| fail(format!("start the reader thread: {e}")))?;
        let mut client = Self {
            shared,
            reader: Some(reader),
            options,
            info: ServerInfo {
                server: String::new(),
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
                max_batch_bytes: DEFAULT_MAX_FRAME_BYTES,
            },
        };
        let hello = Request::Handshake {
            client: client.options.client_name.clone(),
        };
        let answer = client.send(&hello, Duration::ZERO)?.wait()?;
        client.info = server_info(answer).map_err(fail)?;
        Ok(client)
    }

    /// What the server said about itself.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    pub(crate) fn send(&self, request: &Request<'_>, extra_wait: Duration) -> Result<PendingReply> {
        let id = self.next_id();
        let mut frame = Vec::new();
        encode_request(id, request, &mut frame);
        self.send_frame(id, request.api(), &frame, extra_wait)
    }

    fn next_id(&self) -> u32 {
        // Id 0 is the server's own (an unasked refusal): never a request's, even after the
        // counter wraps.
        loop {
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Sends an encoded request frame whose correlation id is `id`.
    fn send_frame(
        &self,
        id: u32,
        api: ApiKey,
        frame: &[u8],
        extra_wait: Duration,
    ) -> Result<PendingReply> {
        let mut sent = self.send_frames(&[(id, frame.len())], api, frame, extra_wait)?;
        sent.pop()
            .ok_or_else(|| ClientError::Protocol("no request was sent".into()))
    }

    /// Sends request frames laid end to end in `frames` with one write: `spans` gives each
    /// one's correlation id and length, in order.
    fn send_frames(
        &self,
        spans: &[(u32, usize)],
        api: ApiKey,
        frames: &[u8],
        extra_wait: Duration,
    ) -> Result<Vec<PendingReply>> {
        fits_frames(spans, self.info.max_frame_bytes)?;
        let mut replies = Vec::with_capacity(spans.len());
        {
            let mut p = self.shared.pending();
            if let Some(why) = &p.closed {
                return Err(ClientError::ConnectionLost(why.clone()));
            }
            for &(id, _) in spans {
                let (tx, rx) = bounded(1);
                p.waiting.insert(id, Waiter { tx, task: None });
                replies.push(PendingReply {
                    rx,
                    id,
                    api,
                    timeout: self.options.request_timeout + extra_wait,
                    shared: Arc::clone(&self.shared),
                });
            }
        }
        let written = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(frames);
        if let Err(e) = written {
            let mut p = self.shared.pending();
            for &(id, _) in spans {
                p.waiting.remove(&id);
            }
            return Err(ClientError::ConnectionLost(format!("send failed: {e}")));
        }
        Ok(replies)
    }

    pub(crate) fn call(&self, request: &Request<'_>) -> Result<Response<'static>> {
        self.send(request, Duration::ZERO)?.wait()
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        self.call(&Request::CreateTopic {
            topic: topic.into(),
            partitions,
        })
        .map(drop)
    }

    /// Deletes a topic and all its messages.
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        self.call(&Request::DeleteTopic {
            topic: topic.into(),
        })
        .map(drop)
    }

    /// Every topic with its partition count, by name.
    pub fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        match self.call(&Request::ListTopics)? {
            Response::ListTopics(topics) => Ok(topics),
            other => Err(unexpected(&other)),
        }
    }

    /// An identity for an idempotent producer, from the server: a new producer id (epoch 0),
    /// or, given `current`, the same id with the next epoch. Batches carrying it (producer id,
    /// epoch and each batch's first sequence, in its header) are written once however often
    /// they are sent (`docs/PROTOCOL.md`).
    pub fn init_producer(&self, current: Option<(i64, i16)>) -> Result<(i64, i16)> {
        let (producer_id, epoch) = current.unwrap_or((-1, 0));
        match self.call(&Request::InitProducer { producer_id, epoch })? {
            Response::InitProducer { producer_id, epoch } => Ok((producer_id, epoch)),
            other => Err(unexpected(&other)),
        }
    }

    /// The partition count of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<u32> {
        match self.call(&Request::Metadata {
            topic: topic.into(),
        })? {
            Response::Metadata { partitions } => Ok(partitions),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends one batch built with [`crate::BatchBuilder`], exactly as built, without waiting;
    /// many may be in flight. The raw path, for tools and tests that need a request's exact
    /// layout: it neither batches, numbers nor retries. Applications use [`crate::Producer`].
    pub fn send_batch(
        &self,
        topic: &str,
        target: Target<'_>,
        batch: &[u8],
    ) -> Result<PendingProduce> {
        let target = match target {
            Target::Partition(p) => PartitionTarget::Partition(p),
            Target::Key(k) => PartitionTarget::Key(k),
        };
        let request = Request::Produce {
            topic: topic.into(),
            target,
            producer_id: -1,
            base_sequence: -1,
            batch,
        };
        self.send(&request, Duration::ZERO).map(PendingProduce)
    }

    /// Reads batches of `partition` from `offset` on. With a `max_wait`, an empty answer
    /// comes only after waiting that long for new messages.
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: FetchOptions,
    ) -> Result<Fetched> {
        let request = Request::Fetch {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: options.max_bytes,
            max_wait_ms: u32::try_from(options.max_wait.as_millis()).unwrap_or(u32::MAX),
        };
        let pending = self.send(&request, options.max_wait)?;
        let frame = pending.wait_frame()?;
        let (_, answer) = decode_response(&frame, ApiKey::Fetch)
            .map_err(|e| ClientError::Protocol(format!("fetch answer: {e}")))?;
        match answer {
            Ok(Response::Fetch {
                high_watermark,
                next_offset,
                batches,
            }) => Ok(Fetched {
                high_watermark,
                next_offset,
                batches: batches.to_vec(),
            }),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(ClientError::Server {
                code: e.code,
                message: e.message,
            }),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Fails with [`ClientError::TooLarge`] if any of the frames `spans` describes is over the
/// server's largest frame, `max`.
pub(crate) fn fits_frames(spans: &[(u32, usize)], max: u32) -> Result<()> {
    match spans
        .iter()
        .find(|(_, len)| len - SIZE_PREFIX_BYTES > max as usize)
    {
        Some(&(_, len)) => Err(ClientError::TooLarge {
            size: len - SIZE_PREFIX_BYTES,
            max,
        }),
        None => Ok(()),
    }
}

/// Makes [`ClientError::Connect`] errors about `addr`.
pub(crate) fn connect_failure(
    addr: &impl std::fmt::Display,
) -> impl Fn(String) -> ClientError + '_ {
    move |reason| ClientError::Connect {
        addr: addr.to_string(),
        reason,
    }
}

/// Opens the TCP connection to the first of `addr`'s addresses that answers, with Nagle's
/// delay off (requests are written whole, and a produce's latency is the point).
pub(crate) fn open_stream(
    addr: &(impl ToSocketAddrs + std::fmt::Display),
    options: &ClientOptions,
) -> Result<TcpStream> {
    let fail = connect_failure(addr);
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve: {e}")))?;
    let mut last = "no address to try".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, options.connect_timeout) {
            Ok(stream) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| fail(format!("set TCP_NODELAY: {e}")))?;
                return Ok(stream);
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(fail(last))
}

/// What the handshake's answer says about the server; why not, if the server does not speak
/// every version this client needs.
pub(crate) fn server_info(answer: Response<'_>) -> std::result::Result<ServerInfo, String> {
    match answer {
        Response::Handshake {
            server,
            max_frame_bytes,
            max_batch_bytes,
            apis,
        } => {
            for api in ApiKey::ALL {
                let ok = apis
                    .iter()
                    .any(|v| v.api == api as u16 && v.min == 0 && v.max >= api.versions().1);
                if !ok {
                    return Err(format!("server {server} does not speak {api:?} version 0"));
                }
            }
            Ok(ServerInfo {
                server,
                max_frame_bytes,
                max_batch_bytes,
            })
        }
        other => Err(format!("unexpected answer to the handshake: {other:?}")),
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Why the server refused the connection, if `frame` says so: an error frame with correlation
/// id 0, which no request uses (ids start at 1), sent before closing (`max_connections`).
pub(crate) fn refusal(frame: &[u8]) -> Option<String> {
    if response_correlation_id(frame).ok()? != 0 {
        return None;
    }
    let (_, answer) = decode_response(frame, ApiKey::Handshake).ok()?;
    let e = answer.err()?;
    Some(format!(
        "the server refused the connection ({:?}): {}",
        e.code, e.message
    ))
}

fn read_answers(mut stream: TcpStream, shared: &Shared) {
    // The server's answers fit its own frame limit, which the handshake has not told yet;
    // this bound only keeps a broken peer from making the client allocate without limit.
    let max = 1 << 30;
    let mut input = FrameBuffer::new(64 * 1024);
    let why = loop {
        match input.next_frame_len(RESPONSE_HEADER_BYTES, max) {
            Ok(Some(len)) => {
                let frame = input.pending()[..len].to_vec();
                input.consume(len);
                if let Some(why) = refusal(&frame) {
                    break why;
                }
                let id = match response_correlation_id(&frame) {
                    Ok(id) => id,
                    Err(e) => break format!("bad answer: {e}"),
                };
                // A request that timed out is no longer waited for; its late answer is dropped.
                let mut p = shared.pending();
                let task = p.waiting.remove(&id).and_then(|w| w.answer(Ok(frame)));
                drop(p);
                if let Some(task) = task {
                    task.wake();
                }
            }
            Ok(None) => match stream.read(input.make_room()) {
                Ok(0) => break "the server closed the connection".to_string(),
                Ok(n) => input.filled(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break format!("read failed: {e}"),
            },
            Err(e) => break format!("bad answer: {e}"),
        }
    };
    shared.fail_all(why);
}
