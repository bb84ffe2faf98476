//! The server: opens the engine, accepts connections, and shuts down gracefully.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use keel_engine::{Engine, IoMode, OpenError};
use keel_protocol::{encode_error, ErrorCode};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};

use crate::config::ServerConfig;
use crate::conn_limits::ConnLimits;
use crate::connection;
use crate::handler::Handler;
use crate::kafka::KafkaContext;
use crate::log_limit::RateLimitedWarn;
use crate::metrics::{MetricsEndpoint, Sources};
use crate::pending::{Answerer, SharedPending};
use crate::ring_conns::NewConn;
use crate::uring_net::NetLoops;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The storage engine could not open the data directory.
    #[error(transparent)]
    Engine(#[from] OpenError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A thread could not be started, or the listener failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Connections being served, so that shutdown can stop reading them and wait for their
/// answers to be written.
#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<RegistryState>,
    /// The last connection id given (both protocols).
    last_id: AtomicU64,
    changed: Condvar,
    /// Told when a connection closes (its group members leave).
    engine: Mutex<Option<Weak<Engine>>>,
}

#[derive(Default)]
struct RegistryState {
    streams: HashMap<u64, TcpStream>,
    readers: usize,
    writers: usize,
}

impl Registry {
    /// Connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.state().streams.len()
    }

    /// Counts `stream` in, under a new id: shutdown stops reading it and waits for its
    /// reader and writer, whose guards count it out.
    pub(crate) fn register(
        self: &Arc<Self>,
        stream: &TcpStream,
    ) -> std::io::Result<(u64, ReaderDone, WriterDone)> {
        let registered = stream.try_clone()?;
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.update(|s| {
            s.streams.insert(id, registered);
            s.readers += 1;
            s.writers += 1;
        });
        Ok((
            id,
            ReaderDone(Arc::clone(self), id),
            WriterDone(Arc::clone(self)),
        ))
    }

    fn state(&self) -> MutexGuard<'_, RegistryState> {
        // Counters and a map updated in single steps: still consistent after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut RegistryState)) {
        f(&mut self.state());
        self.changed.notify_all();
    }

    /// Waits until `done` holds or `timeout` passes; returns whether it holds.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&RegistryState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        while !done(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

/// Failed accepts (out of descriptors, say), logged at most once a second.
static ACCEPT_FAILED: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));
/// Connections refused for `max_connections`, logged at most once a second.
static REFUSED: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));
/// How long a refused connection's one answer may take to write.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Answers a connection beyond `max_connections` with one `Busy` error frame (correlation id
/// 0, before it asked anything) and closes it.
fn refuse(stream: TcpStream, max_connections: usize) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "a client".to_string(), |a| a.to_string());
    let message = format!(
        "keeld serves at most max_connections = {max_connections} connections; try again later"
    );
    let mut frame = Vec::new();
    encode_error(0, ErrorCode::Busy, &message, &mut frame);
    // Best effort, never blocking the accept loop for long: the close says the rest.
    let _ = stream
        .set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT))
        .and_then(|()| (&stream).write_all(&frame));
    let _ = stream.shutdown(Shutdown::Both);
    REFUSED.warn(|| {
        format!("refused a connection from {peer}: {max_connections} connections open (max_connections)")
    });
}

/// The native protocol's listener, among the sockets the main thread watches.
const NATIVE: Token = Token(0);
/// The Kafka protocol's listener.
const KAFKA: Token = Token(1);

/// A listener as the main thread watches it: non-blocking, sharing the socket.
fn watched(listener: &TcpListener) -> std::io::Result<mio::net::TcpListener> {
    let shared = listener.try_clone()?;
    shared.set_nonblocking(true)?;
    Ok(mio::net::TcpListener::from_std(shared))
}

/// Connections the kernel queues for `accept` once keeld listens.
const LISTEN_BACKLOG: i32 = 1024;

/// A TCP socket bound to `addr`, not yet listening: a taken port fails the start before
/// recovery, yet nobody can connect until [`listen`].
fn bind(addr: SocketAddr) -> Result<Socket, ServerError> {
    let fail = |source| ServerError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    // As std's listeners do: a restart may bind while the last run's connections linger.
    socket.set_reuse_address(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    Ok(socket)
}

/// Starts accepting connections on a socket from [`bind`].
fn listen(socket: Socket, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok(socket.into())
}

/// Stops a running server from another thread (a signal handler's, say).
#[derive(Clone)]
pub struct Stopper {
    stopping: Arc<AtomicBool>,
    wake_addr: SocketAddr,
}

impl Stopper {
    /// Asks the server to stop: no new connections, no new requests, in-flight work finishes
    /// and is answered, then [`Server::run`] returns.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.wake_addr, Duration::from_secs(1));
    }
}

/// A started server: engine open, socket bound, not yet accepting.
pub struct Server {
    cfg: ServerConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    engine: Arc<Engine>,
    handler: Arc<Handler>,
    stopping: Arc<AtomicBool>,
    registry: Arc<Registry>,
    /// The io_uring network loops; `None` with the portable I/O backend, where each
    /// connection has a reader and a writer thread instead (see [`Server::start`]).
    net: Option<NetLoops>,
    /// With the portable I/O backend: what connections' reader threads share, and the thread
    /// answering their requests as the engine finishes them.
    portable: Option<(Arc<connection::Shared>, Answerer)>,
    metrics: Option<MetricsEndpoint>,
    /// The Kafka-protocol listener and what its connections share, when it is on.
    kafka: Option<(TcpListener, Arc<KafkaContext>)>,
}

impl Server {
    /// Binds the listen address, opens the engine (recovering every partition), and only then
    /// listens: until recovery is over, a connection attempt is refused at once rather than
    /// left waiting in a queue nobody serves.
    pub fn start(cfg: ServerConfig) -> Result<Self, ServerError> {
        let socket = bind(cfg.listen)?;
        let kafka_socket = cfg.kafka_listen.map(bind).transpose()?;
        let local_addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| ServerError::Io {
                what: "read the listen address",
                source: std::io::Error::other("the bound socket has no IP address"),
            })?;
        let engine = Arc::new(Engine::open(cfg.engine.clone())?);
        let handler = Arc::new(Handler::new(
            Arc::clone(&engine),
            cfg.groups,
            cfg.shard_inflight_bytes,
            cfg.max_frame_bytes,
        ));
        let registry = Arc::new(Registry::default());
        let limits = ConnLimits::from_config(&cfg);
        *lock_engine(&registry) = Some(Arc::downgrade(&engine));
        // One way to serve connections, the io_uring loops: they measured faster than a thread
        // pair per connection and than connections on the shards' own rings. The threads remain
        // for the portable I/O backend alone, whose reason to exist is a host that allows no
        // io_uring at all (Docker's default seccomp profile, `kernel.io_uring_disabled`).
        let (net, portable) = match cfg.engine.io {
            IoMode::Portable => (None, Some(start_portable(&handler, limits)?)),
            _ => (Some(start_net_loops(&cfg, &handler, &limits)?), None),
        };
        let metrics = match cfg.metrics_listen {
            None => None,
            Some(addr) => {
                let m = MetricsEndpoint::start(
                    addr,
                    Sources {
                        engine: Arc::downgrade(&engine),
                        registry: Arc::clone(&registry),
                    },
                )?;
                log::info!("metrics on http://{}/metrics", m.local_addr());
                Some(m)
            }
        };
        // Everything is ready: connections may come.
        let kafka = match (kafka_socket, cfg.kafka_listen) {
            (Some(socket), Some(addr)) => {
                let ctx = KafkaContext {
                    engine: Arc::clone(&engine),
                    coordinator: Arc::default(),
                    registry: Arc::clone(&registry),
                    max_frame_bytes: cfg.max_frame_bytes,
                    connection_inflight_bytes: cfg.connection_inflight_bytes,
                    max_connections: cfg.max_connections,
                    idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
                    frame_read_timeout: Duration::from_millis(cfg.frame_read_timeout_ms),
                    write_timeout: Duration::from_millis(cfg.write_timeout_ms),
                };
                Some((listen(socket, addr)?, Arc::new(ctx)))
            }
            _ => None,
        };
        let listener = listen(socket, local_addr)?;
        Ok(Self {
            net,
            portable,
            metrics,
            kafka,
            cfg,
            listener,
            local_addr,
            engine,
            handler,
            stopping: Arc::new(AtomicBool::new(false)),
            registry,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Kafka listener's address, when it is on.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The metrics endpoint's address, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::local_addr)
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// A handle that stops the server.
    pub fn stopper(&self) -> Stopper {
        let ip = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Stopper {
            stopping: Arc::clone(&self.stopping),
            wake_addr: SocketAddr::new(ip, self.local_addr.port()),
        }
    }

    /// Accepts and serves connections until stopped, then shuts down gracefully: stops
    /// reading requests, lets the engine finish and answer every flush in flight, waits for
    /// the answers to be written, and closes the engine.
    pub fn run(self) -> Result<(), ServerError> {
        let fail = |source| ServerError::Io {
            what: "watch the listen sockets",
            source,
        };
        let mut poll = Poll::new().map_err(fail)?;
        let mut native = watched(&self.listener).map_err(fail)?;
        poll.registry()
            .register(&mut native, NATIVE, Interest::READABLE)
            .map_err(fail)?;
        let mut kafka = match &self.kafka {
            Some((listener, _)) => Some(watched(listener).map_err(fail)?),
            None => None,
        };
        if let Some(kafka) = &mut kafka {
            poll.registry()
                .register(kafka, KAFKA, Interest::READABLE)
                .map_err(fail)?;
        }
        let mut events = Events::with_capacity(4);
        while !self.stopping.load(Ordering::Acquire) {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    ACCEPT_FAILED.warn(|| format!("waiting for connections failed: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in &events {
                let listener = match (event.token(), &kafka) {
                    (KAFKA, Some(kafka)) => kafka,
                    _ => &native,
                };
                // Edge-triggered: take every connection waiting.
                while !self.stopping.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => self.serve(event.token(), stream.into()),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // Out of file descriptors and the like: the listener itself is fine,
                        // and the connections already open keep being served.
                        Err(e) => {
                            ACCEPT_FAILED.warn(|| format!("accept failed: {e}"));
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            }
        }
        // The watched copies close with the listeners: no connection queues meanwhile.
        drop(native);
        drop(kafka);
        self.shut_down();
        Ok(())
    }

    /// Serves a connection accepted on the listener `token` names.
    fn serve(&self, token: Token, stream: TcpStream) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        // Accepted from a non-blocking listener; served with blocking calls and timeouts.
        if let Err(e) = stream.set_nonblocking(false) {
            log::error!("cannot serve a new connection: {e}");
            return;
        }
        if let (KAFKA, Some((_, ctx))) = (token, &self.kafka) {
            return crate::kafka::serve(stream, ctx);
        }
        if self.registry.open_connections() >= self.cfg.max_connections {
            return refuse(stream, self.cfg.max_connections);
        }
        if let Err(e) = self.spawn_connection(stream) {
            log::error!("cannot serve a new connection: {e}");
        }
    }

    fn spawn_connection(&self, stream: TcpStream) -> std::io::Result<()> {
        let peer = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_millis(self.cfg.write_timeout_ms)))?;
        // From here on the guards count the connection out, whatever happens to it.
        let (id, reader_done, writer_done) = self.registry.register(&stream)?;
        if let Some(net) = &self.net {
            net.adopt(NewConn {
                id,
                stream,
                peer,
                reader_done,
                writer_done,
            });
            return Ok(());
        }
        let Some((shared, _)) = &self.portable else {
            return Err(std::io::Error::other(
                "no way to serve connections was started",
            ));
        };
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name(format!("keel-read-{peer}"))
            .spawn(move || {
                log::debug!("{peer}: connected");
                if let Err(e) = connection::serve(stream, id, peer, &shared, writer_done) {
                    log::warn!("{peer}: {e}");
                }
                drop(reader_done);
                log::debug!("{peer}: stopped reading");
            })?;
        Ok(())
    }

    fn shut_down(self) {
        let Self {
            cfg,
            listener,
            engine,
            handler,
            registry,
            net,
            portable,
            metrics,
            kafka,
            ..
        } = self;
        drop(listener);
        drop(kafka);
        drop(metrics);
        let open = registry.state().streams.len();
        log::info!("stopping: no new connections or requests; finishing what {open} connections have in flight");
        for stream in registry.state().streams.values() {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        let patience = Duration::from_millis(cfg.write_timeout_ms) + Duration::from_secs(5);
        if !registry.wait_until(patience, |s| s.readers == 0) {
            log::warn!("some connections did not stop reading in time");
        }
        lock_engine(&registry).take();
        drop(handler);
        let answerer = portable.map(|(_, answerer)| answerer);
        if let Some(net) = &net {
            net.release_handler();
        }
        // Every flush in flight completes and is answered, waiting consumes are answered and
        // the groups' last checkpoints recorded before this returns.
        match sole_owner(engine, patience) {
            Some(engine) => engine.shutdown(),
            None => log::warn!("the engine is still in use; it stops when the last user lets go"),
        }
        if !registry.wait_until(patience, |s| s.writers == 0) {
            log::warn!("some answers could not be written in time");
        }
        if let Some(net) = net {
            net.stop();
        }
        if let Some(answerer) = answerer {
            answerer.stop();
        }
        log::info!("stopped");
    }
}

/// The io_uring network loops, one per shard.
fn start_net_loops(
    cfg: &ServerConfig,
    handler: &Arc<Handler>,
    limits: &Arc<ConnLimits>,
) -> Result<NetLoops, ServerError> {
    NetLoops::start(cfg.engine.shards, handler, limits).map_err(|source| ServerError::Io {
        what: "start the io_uring network loops (where io_uring is not allowed, run with \
               --portable-io)",
        source,
    })
}

/// What the portable backend's connection threads share, and the thread answering them.
fn start_portable(
    handler: &Arc<Handler>,
    limits: Arc<ConnLimits>,
) -> Result<(Arc<connection::Shared>, Answerer), ServerError> {
    let (pending, answerer) =
        SharedPending::start(limits.waiting_requests).map_err(|source| ServerError::Io {
            what: "start the thread answering requests",
            source,
        })?;
    let shared = connection::Shared {
        handler: Arc::clone(handler),
        limits,
        pending,
    };
    Ok((Arc::new(shared), answerer))
}

/// The engine, once this is its last owner. A connection that was handling a request when the
/// handler was released holds a clone for a moment; the engine must not be dropped there,
/// on a network thread, which would stop answering its connections while the engine stops.
fn sole_owner(mut engine: Arc<Engine>, patience: Duration) -> Option<Engine> {
    let until = Instant::now() + patience;
    loop {
        match Arc::try_unwrap(engine) {
            Ok(engine) => return Some(engine),
            Err(shared) if Instant::now() < until => {
                engine = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(shared) => {
                // Leaked rather than dropped wherever its last clone happens to go.
                std::mem::forget(shared);
                return None;
            }
        }
    }
}

/// Held while a connection is read; counts it out of the readers when dropped.
pub struct ReaderDone(Arc<Registry>, u64);

fn lock_engine(registry: &Registry) -> MutexGuard<'_, Option<Weak<Engine>>> {
    registry.engine.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for ReaderDone {
    fn drop(&mut self) {
        let id = self.1;
        let engine = lock_engine(&self.0).as_ref().and_then(Weak::upgrade);
        if let Some(engine) = engine {
            engine.connection_closed(id);
        }
        self.0.update(|s| {
            s.streams.remove(&id);
            s.readers -= 1;
        });
    }
}

/// Held by a connection's writer; counts it out when its last answer is written.
pub struct WriterDone(Arc<Registry>);

impl Drop for WriterDone {
    fn drop(&mut self) {
        self.0.update(|s| s.writers -= 1);
    }
}
