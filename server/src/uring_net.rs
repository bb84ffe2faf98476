//! Serving connections from io_uring event loops: one thread per core owns a ring and the
//! connections given to it, receives and sends through the ring, and hands requests to the
//! engine's shards like the threaded connections do. Compared with a reader and a writer
//! thread per connection, this trades two context switches per request for one ring
//! submission (`docs/BENCHMARKS.md` measures both).
//!
//! Buffer ownership: a connection lives in a `Box` that is freed only when neither its receive
//! nor its send is in flight, and neither buffer is resized or dropped while the ring may
//! write into it or read from it.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use keel_engine::io::Waker;

use crate::answers::{notifying_answer_queue, AnswerRx, AnswerTx};
use crate::budget::ByteBudget;
use crate::frames::{handle_frames, new_input, Stop};
use crate::handler::Handler;
use crate::reply::Outgoing;
use crate::server::{ReaderDone, WriterDone};
use keel_protocol::FrameBuffer;

const RING_ENTRIES: u32 = 1024;
const WAKE_TOKEN: u64 = u64::MAX;
/// The periodic check for sends that make no progress.
const TICK_TOKEN: u64 = u64::MAX - 1;
const RECV: u64 = 1;
const SEND: u64 = 2;

/// A connection handed to a loop.
pub struct NewConn {
    /// Server-wide connection id.
    pub id: u64,
    /// The socket.
    pub stream: TcpStream,
    /// The client's address, for logs.
    pub peer: SocketAddr,
    /// Counts the connection's reading out when it stops reading.
    pub reader_done: ReaderDone,
    /// Counts the connection out when its last answer is written.
    pub writer_done: WriterDone,
}

/// What other threads hand a loop.
struct Inbox {
    new_conns: Mutex<Vec<NewConn>>,
    /// Connections with answers ready (or whose last answer sender went).
    ready: Mutex<Vec<u64>>,
    /// Used to handle requests; taken away when the server stops reading.
    handler: Mutex<Option<Arc<Handler>>>,
    stop: AtomicBool,
    waker: Waker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Lists and an option changed in single steps: consistent after a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inbox {
    fn has_work(&self) -> bool {
        // `stop` is not work: NetLoops::stop signals the wake read after setting it.
        !lock(&self.new_conns).is_empty() || !lock(&self.ready).is_empty()
    }
}

/// The running loops.
pub struct NetLoops {
    loops: Vec<(Arc<Inbox>, Option<JoinHandle<()>>)>,
}

impl NetLoops {
    /// Starts `n` loops (at least one). A connection whose answers make no progress for
    /// `write_timeout` (its client stopped reading) is closed.
    pub fn start(
        n: usize,
        handler: &Arc<Handler>,
        inflight_bytes: usize,
        write_timeout: Duration,
    ) -> io::Result<Self> {
        let mut loops = Vec::new();
        for i in 0..n.max(1) {
            // Fails early, with the ring error, if io_uring is not allowed here.
            let ring = IoUring::new(RING_ENTRIES)?;
            let inbox = Arc::new(Inbox {
                new_conns: Mutex::new(Vec::new()),
                ready: Mutex::new(Vec::new()),
                handler: Mutex::new(Some(Arc::clone(handler))),
                stop: AtomicBool::new(false),
                waker: Waker::new()?,
            });
            let mine = Arc::clone(&inbox);
            let thread = std::thread::Builder::new()
                .name(format!("keel-net-{i}"))
                .spawn(move || {
                    let mut net = Loop {
                        ring,
                        conns: HashMap::new(),
                        inbox: mine,
                        inflight_bytes,
                        write_timeout,
                        tick: Box::new(types::Timespec::new()),
                        tick_posted: false,
                    };
                    net.run();
                })?;
            loops.push((inbox, Some(thread)));
        }
        Ok(Self { loops })
    }

    /// Gives a new connection to a loop.
    pub fn adopt(&self, conn: NewConn) {
        let (inbox, _) = &self.loops[conn.id as usize % self.loops.len()];
        lock(&inbox.new_conns).push(conn);
        inbox.waker.wake(usize::MAX);
    }

    /// Stops handling requests: the loops let go of the handler (and through it the engine).
    pub fn release_handler(&self) {
        for (inbox, _) in &self.loops {
            lock(&inbox.handler).take();
        }
    }

    /// Ends the loops: connections still open are closed, then the threads are joined.
    pub fn stop(mut self) {
        for (inbox, _) in &self.loops {
            inbox.stop.store(true, Ordering::SeqCst);
            inbox.waker.signal();
        }
        for (_, thread) in &mut self.loops {
            if let Some(t) = thread.take() {
                if t.join().is_err() {
                    log::error!("a network loop panicked");
                }
            }
        }
    }
}

struct Conn {
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    input: FrameBuffer,
    budget: Arc<ByteBudget>,
    /// This connection's own sender, dropped when it stops reading.
    tx: Option<AnswerTx>,
    rx: AnswerRx,
    recv_posted: bool,
    /// Waiting for its budget: reads nothing until answers go out.
    parked: bool,
    /// Answers being sent, holding their budget until the send completes; `out` is their
    /// frames, of which `out_sent` bytes have gone.
    sending: Vec<Outgoing>,
    out: Vec<u8>,
    out_sent: usize,
    send_posted: bool,
    /// When the send in flight was posted (a send that makes progress is posted again).
    send_since: Instant,
    /// A send failed: answers are dropped from now on.
    broken: bool,
    reader_done: Option<ReaderDone>,
    _writer_done: WriterDone,
}

struct Loop {
    ring: IoUring,
    conns: HashMap<u64, Box<Conn>>,
    inbox: Arc<Inbox>,
    inflight_bytes: usize,
    write_timeout: Duration,
    tick: Box<types::Timespec>,
    tick_posted: bool,
}

impl Loop {
    fn run(&mut self) {
        let mut wake_buf = Box::new([0u8; 8]);
        let mut wake_posted = false;
        let mut closing = false;
        loop {
            if self.inbox.stop.load(Ordering::SeqCst) && !closing {
                // The server waited for every connection to finish; whatever is left is
                // cut off now.
                closing = true;
                for c in self.conns.values_mut() {
                    let _ = c.stream.shutdown(Shutdown::Both);
                    c.broken = true;
                    c.stop_reading();
                }
                let ids: Vec<u64> = self.conns.keys().copied().collect();
                for id in ids {
                    self.with_conn(id, |_, _| {});
                }
            }
            if closing && self.conns.is_empty() && !self.tick_posted {
                if !wake_posted {
                    return;
                }
                // Only the wake read is left: make it complete before the buffer goes.
                self.inbox.waker.signal();
            } else if !wake_posted {
                let read =
                    opcode::Read::new(types::Fd(self.inbox.waker.fd()), wake_buf.as_mut_ptr(), 8)
                        .build()
                        .user_data(WAKE_TOKEN);
                // SAFETY (of the pushed entry): wake_buf is boxed and lives until this
                // function returns, which it does only once the read has completed (above) or
                // after abandon() has waited for it or leaked the buffer.
                self.push(&read);
                wake_posted = true;
            }
            if !self.tick_posted && self.conns.values().any(|c| c.send_posted) {
                self.post_tick();
            }
            let adopted = std::mem::take(&mut *lock(&self.inbox.new_conns));
            for nc in adopted {
                self.adopt(nc);
            }
            let ready = std::mem::take(&mut *lock(&self.inbox.ready));
            for id in ready {
                self.with_conn(id, |net, c| net.flush_answers(c));
            }
            self.inbox.waker.park(false);
            let want = usize::from(!self.inbox.has_work());
            if let Err(e) = self.submit_and_wait(want) {
                log::error!("network loop: io_uring failed: {e}; closing its connections");
                self.abandon(&mut wake_buf);
                return;
            }
            self.inbox.waker.unpark();
            let completions: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (token, res) in completions {
                if token == WAKE_TOKEN {
                    wake_posted = false;
                    continue;
                }
                if token == TICK_TOKEN {
                    self.tick_posted = false;
                    self.close_stuck_senders();
                    continue;
                }
                let (id, kind) = (token >> 2, token & 3);
                self.with_conn(id, |net, c| match kind {
                    RECV => net.on_recv(c, res),
                    _ => net.on_send(c, res),
                });
            }
        }
    }

    fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// After a ring failure: closes every socket and waits (a bounded while) for the kernel
    /// to finish with every buffer; what cannot be waited for is leaked, never freed early.
    fn abandon(&mut self, wake_buf: &mut Box<[u8; 8]>) {
        for c in self.conns.values() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        self.inbox.waker.signal();
        for _ in 0..1000 {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            let _ = self.ring.completion().count();
        }
        for (_, c) in self.conns.drain() {
            std::mem::forget(c);
        }
        std::mem::forget(std::mem::replace(wake_buf, Box::new([0; 8])));
    }

    fn post_tick(&mut self) {
        let every =
            (self.write_timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        *self.tick = types::Timespec::from(every);
        let timeout = opcode::Timeout::new(&*self.tick)
            .build()
            .user_data(TICK_TOKEN);
        // SAFETY (of the pushed entry): the timespec is boxed in the loop, which outlives every
        // operation it posts.
        self.push(&timeout);
        self.tick_posted = true;
    }

    /// Closes connections whose client has not taken any answer bytes for the write timeout:
    /// the send in flight then fails, and the connection ends.
    fn close_stuck_senders(&mut self) {
        for c in self.conns.values_mut() {
            if c.send_posted && !c.broken && c.send_since.elapsed() > self.write_timeout {
                log::warn!(
                    "{}: the client has read no answer for {:?}; closing the connection",
                    c.peer,
                    self.write_timeout
                );
                c.broken = true;
                let _ = c.stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Queues a submission, submitting what is queued first when the ring is full.
    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry pushed here points into a buffer that outlives its
            // operation (see the module comment and each caller).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                log::error!("network loop: cannot submit: {e}");
                return;
            }
        }
    }

    /// Runs `f` on connection `id` (if it still exists), then frees it if it is done.
    fn with_conn(&mut self, id: u64, f: impl FnOnce(&mut Self, &mut Conn)) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        f(self, &mut c);
        if c.done() {
            log::debug!("{}: closed", c.peer);
        } else {
            self.conns.insert(id, c);
        }
    }

    fn adopt(&mut self, nc: NewConn) {
        let inbox = Arc::clone(&self.inbox);
        let id = nc.id;
        let (tx, rx) = notifying_answer_queue(Arc::new(move || {
            lock(&inbox.ready).push(id);
            inbox.waker.wake(usize::MAX);
        }));
        let mut c = Box::new(Conn {
            id,
            stream: nc.stream,
            peer: nc.peer,
            input: new_input(),
            budget: ByteBudget::new(self.inflight_bytes),
            tx: Some(tx),
            rx,
            recv_posted: false,
            parked: false,
            sending: Vec::new(),
            out: Vec::new(),
            out_sent: 0,
            send_posted: false,
            send_since: Instant::now(),
            broken: false,
            reader_done: Some(nc.reader_done),
            _writer_done: nc.writer_done,
        });
        log::debug!("{}: connected", c.peer);
        self.post_recv(&mut c);
        self.conns.insert(id, c);
    }

    fn post_recv(&mut self, c: &mut Conn) {
        if c.recv_posted || c.parked || c.tx.is_none() || c.broken {
            return;
        }
        let room = c.input.make_room();
        let recv = opcode::Recv::new(
            types::Fd(c.stream.as_raw_fd()),
            room.as_mut_ptr(),
            room.len() as u32,
        )
        .build()
        .user_data(c.id << 2 | RECV);
        // SAFETY (of the pushed entry): `room` is inside c.input's storage, which is neither resized
        // nor dropped while recv_posted is set (make_room runs only before posting, and the
        // connection is freed only once no operation is posted).
        self.push(&recv);
        c.recv_posted = true;
    }

    fn on_recv(&mut self, c: &mut Conn, res: i32) {
        c.recv_posted = false;
        if res <= 0 {
            if res < 0 {
                log::debug!(
                    "{}: read failed: {}",
                    c.peer,
                    io::Error::from_raw_os_error(-res)
                );
            }
            c.stop_reading();
            return;
        }
        c.input.filled(res as usize);
        self.handle_input(c);
    }

    fn handle_input(&mut self, c: &mut Conn) {
        let Some(handler) = lock(&self.inbox.handler).clone() else {
            c.stop_reading();
            return;
        };
        let Some(tx) = c.tx.clone() else { return };
        let budget = Arc::clone(&c.budget);
        let mut acquire = |n| budget.try_acquire(n);
        match handle_frames(&mut c.input, c.id, c.peer, &handler, &tx, &mut acquire) {
            Stop::NeedMore => self.post_recv(c),
            Stop::Parked => c.parked = true,
            Stop::Close => c.stop_reading(),
        }
    }

    /// Sends what is queued, unless a send is in flight.
    fn flush_answers(&mut self, c: &mut Conn) {
        if c.send_posted {
            return;
        }
        c.rx.try_take_all(&mut c.sending);
        if c.broken {
            c.sending.clear();
            return;
        }
        if c.sending.is_empty() {
            return;
        }
        c.out.clear();
        for a in &c.sending {
            c.out.extend_from_slice(&a.frame);
        }
        c.out_sent = 0;
        self.post_send(c);
    }

    fn post_send(&mut self, c: &mut Conn) {
        let rest = &c.out[c.out_sent..];
        let send = opcode::Send::new(
            types::Fd(c.stream.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(c.id << 2 | SEND);
        // SAFETY (of the pushed entry): `rest` is inside c.out, which is not touched while
        // send_posted is set, and the connection is freed only once no operation is posted.
        self.push(&send);
        c.send_posted = true;
        c.send_since = Instant::now();
    }

    fn on_send(&mut self, c: &mut Conn, res: i32) {
        c.send_posted = false;
        if res < 0 {
            log::debug!(
                "{}: write failed: {}; closing the connection",
                c.peer,
                io::Error::from_raw_os_error(-res)
            );
            c.broken = true;
            c.sending.clear();
            let _ = c.stream.shutdown(Shutdown::Both);
            c.stop_reading();
            return;
        }
        c.out_sent += res as usize;
        if c.out_sent < c.out.len() {
            self.post_send(c);
            return;
        }
        // Written: the answers give their bytes back to the budget, which may let a parked
        // connection read again.
        c.sending.clear();
        if c.parked {
            c.parked = false;
            self.handle_input(c);
        }
        self.flush_answers(c);
    }
}

impl Conn {
    fn stop_reading(&mut self) {
        self.tx = None;
        self.parked = false;
        self.reader_done.take();
    }

    /// Whether nothing is or can be in flight any more: safe and right to free.
    fn done(&self) -> bool {
        self.tx.is_none()
            && !self.recv_posted
            && !self.send_posted
            && self.sending.is_empty()
            && (self.broken || self.rx.finished())
    }
}
