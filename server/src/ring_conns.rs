//! Connections served through an io_uring network loop ([`crate::uring_net`]): receives and
//! sends are ring operations, requests go to the handler, answers come back through each
//! connection's answer queue. Nothing here waits: a connection whose request does not fit its
//! shard's budget stops reading until that budget gives bytes back, while the loop goes on
//! serving every other connection.
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
use std::time::Instant;

use io_uring::{opcode, squeue, types};
use keel_engine::Waker;

use crate::answers::{notifying_answer_queue, AnswerRx, AnswerTx};
use crate::budget::{BudgetHold, ByteBudget};
use crate::conn_limits::{ConnLimits, ConnState};
use crate::frames::{handle_frames, new_recv_buf, Admission, Stop};
use crate::handler::Handler;
use crate::pending::LoopPending;
use crate::recv_buf::RecvBuf;
use crate::reply::Outgoing;
use crate::server::{ReaderDone, WriterDone};

/// The periodic check of the connections' limits: sends that make no progress, frames that
/// take too long, idle connections (connection 0 does not exist).
const TICK_TOKEN: u64 = 3;
const RECV: u64 = 1;
const SEND: u64 = 2;

/// Where a connection's operations are submitted.
pub trait Submit {
    /// Queues `entry` with `token` as its user data.
    ///
    /// # Safety
    /// Everything `entry` points to must stay valid until its completion is handed to
    /// [`Conns::complete`].
    unsafe fn submit(&mut self, entry: squeue::Entry, token: u64);
    /// Asks for the operation with `token` to be cancelled (it then completes with an error).
    fn cancel(&mut self, token: u64);
}

/// A connection handed to a ring.
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

/// What other threads hand a ring's connections.
pub struct Inbox {
    new_conns: Mutex<Vec<NewConn>>,
    /// Connections with answers ready (or whose last answer sender went), or whose shard
    /// budget gave bytes back.
    ready: Mutex<Vec<u64>>,
    /// Used to handle requests; taken away when the server stops reading.
    handler: Mutex<Option<Arc<Handler>>>,
    stop: AtomicBool,
    waker: Arc<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Lists and an option changed in single steps: consistent after a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inbox {
    /// An inbox whose ring sleeps until `waker` fires.
    pub fn new(handler: &Arc<Handler>, waker: Arc<Waker>) -> Arc<Self> {
        Arc::new(Self {
            new_conns: Mutex::new(Vec::new()),
            ready: Mutex::new(Vec::new()),
            handler: Mutex::new(Some(Arc::clone(handler))),
            stop: AtomicBool::new(false),
            waker,
        })
    }

    /// Whether other threads handed over anything since the last turn. (`stop` is not work:
    /// [`Inbox::stop`] wakes the ring itself.)
    pub fn has_work(&self) -> bool {
        !lock(&self.new_conns).is_empty() || !lock(&self.ready).is_empty()
    }

    /// The waker of the ring's thread.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Gives the ring a new connection.
    pub fn adopt(&self, conn: NewConn) {
        lock(&self.new_conns).push(conn);
        self.waker.wake(usize::MAX);
    }

    /// Stops handling requests: the ring lets go of the handler (and through it the engine).
    pub fn release_handler(&self) {
        lock(&self.handler).take();
    }

    /// Cuts off every connection still open and lets the ring's user wind down.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.signal();
    }

    /// Whether [`Inbox::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn mark_ready(&self, id: u64) {
        lock(&self.ready).push(id);
        self.waker.wake(usize::MAX);
    }
}

struct Conn {
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    input: RecvBuf,
    budget: Arc<ByteBudget>,
    /// This connection's own sender, dropped when it stops reading.
    tx: Option<AnswerTx>,
    rx: AnswerRx,
    recv_posted: bool,
    /// Waiting for a budget: reads nothing until bytes are given back.
    parked: bool,
    /// Its frame needs more room than the partial-frame pool has now: tried again each tick.
    starved: bool,
    /// Its share of the partial-frame pool, and its clocks.
    limits: ConnState,
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

/// The connections of one ring.
pub struct Conns {
    conns: HashMap<u64, Box<Conn>>,
    inbox: Arc<Inbox>,
    /// Requests the engine is working on, answered as its completion records come back.
    pending: LoopPending,
    /// Connections that found no place for a request among those waiting on the engine:
    /// they read again once answers come back.
    waiting_for_room: Vec<u64>,
    limits: Arc<ConnLimits>,
    /// The tick's timeout; boxed so its address is stable while the timeout runs.
    tick: Box<types::Timespec>,
    tick_posted: bool,
    tick_cancelled: bool,
    closing: bool,
}

impl Conns {
    /// No connections yet; each will be served within `limits`.
    pub fn new(inbox: Arc<Inbox>, limits: Arc<ConnLimits>) -> Self {
        Self {
            conns: HashMap::new(),
            pending: LoopPending::new(limits.waiting_requests, Arc::clone(&inbox.waker)),
            waiting_for_room: Vec::new(),
            inbox,
            limits,
            tick: Box::new(types::Timespec::new()),
            tick_posted: false,
            tick_cancelled: false,
            closing: false,
        }
    }

    /// Whether nothing is in flight (no connection, no tick): safe to drop.
    pub fn idle(&self) -> bool {
        self.conns.is_empty() && !self.tick_posted
    }

    /// Where other threads hand these connections work.
    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    /// Whether other threads handed over work, or the engine answered.
    pub fn has_work(&self) -> bool {
        self.inbox.has_work() || self.pending.has_ready()
    }

    /// Whether the inbox was stopped and every connection is cut off.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Takes what other threads handed over: a stop, new connections, the engine's answers,
    /// answers ready to send.
    pub fn turn(&mut self, ring: &mut dyn Submit) {
        if self.pending.answer_ready() > 0 && !self.waiting_for_room.is_empty() {
            // Places came free: connections that waited for one read on (below).
            lock(&self.inbox.ready).append(&mut self.waiting_for_room);
        }
        if self.inbox.stopped() && !self.closing {
            // The server waited for every connection to finish; whatever is left is cut off.
            self.closing = true;
            for c in self.conns.values_mut() {
                let _ = c.stream.shutdown(Shutdown::Both);
                c.broken = true;
                c.stop_reading();
            }
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                self.with_conn(id, |_, _, _| {}, ring);
            }
        }
        let adopted = std::mem::take(&mut *lock(&self.inbox.new_conns));
        for nc in adopted {
            self.adopt(nc, ring);
        }
        let ready = std::mem::take(&mut *lock(&self.inbox.ready));
        for id in ready {
            self.with_conn(id, Self::on_ready, ring);
        }
        if !self.tick_posted && !self.conns.is_empty() {
            self.post_tick(ring);
        } else if self.tick_posted && self.conns.is_empty() && !self.tick_cancelled {
            // Nothing left to watch: do not keep a stopping ring waiting for the tick.
            ring.cancel(TICK_TOKEN);
            self.tick_cancelled = true;
        }
    }

    /// An operation completed with `res` (bytes, or a negative errno).
    pub fn complete(&mut self, token: u64, res: i32, ring: &mut dyn Submit) {
        if token == TICK_TOKEN {
            self.tick_posted = false;
            self.tick_cancelled = false;
            self.close_stuck_senders();
            self.close_expired();
            let starved: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.starved)
                .map(|(&id, _)| id)
                .collect();
            for id in starved {
                self.with_conn(id, Self::post_recv, ring);
            }
            return;
        }
        let (id, kind) = (token >> 2, token & 3);
        self.with_conn(
            id,
            |net, c, ring| match kind {
                RECV => net.on_recv(c, res, ring),
                _ => net.on_send(c, res, ring),
            },
            ring,
        );
    }

    /// After a ring failure: closes every socket; the caller makes sure the kernel is done
    /// with the buffers (or leaks them) before they are freed.
    pub fn shut_all(&self) {
        for c in self.conns.values() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }

    /// Leaks every connection (their buffers may still be in the kernel's hands).
    pub fn leak(&mut self) {
        for (_, c) in self.conns.drain() {
            std::mem::forget(c);
        }
    }

    fn post_tick(&mut self, ring: &mut dyn Submit) {
        let every = self.limits.check_every();
        *self.tick = types::Timespec::from(every);
        let timeout = opcode::Timeout::new(&*self.tick).build();
        // SAFETY: the timespec is boxed in self, which the ring's owner keeps until no
        // operation is in flight (idle()) or leaks.
        unsafe { ring.submit(timeout, TICK_TOKEN) };
        self.tick_posted = true;
    }

    /// Closes connections whose client has not taken any answer bytes for the write timeout:
    /// the send in flight then fails, and the connection ends.
    fn close_stuck_senders(&mut self) {
        let write_timeout = self.limits.write_timeout;
        for c in self.conns.values_mut() {
            if c.send_posted && !c.broken && c.send_since.elapsed() > write_timeout {
                log::warn!(
                    "{}: the client has read no answer for {write_timeout:?}; closing the \
                     connection",
                    c.peer
                );
                c.broken = true;
                let _ = c.stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Closes connections whose frame is taking too long to arrive, or that have been idle
    /// too long: their receive then completes, and the connection ends.
    fn close_expired(&mut self) {
        let now = Instant::now();
        for c in self.conns.values_mut() {
            if c.tx.is_none() || c.broken {
                continue;
            }
            let busy = c.budget.in_use() > 0 || c.send_posted;
            if let Some(why) = c.limits.expired(now, c.parked, busy) {
                why.log(c.peer);
                c.broken = true;
                let _ = c.stream.shutdown(Shutdown::Both);
                if !c.recv_posted {
                    // Nothing will complete to end it: it ends now.
                    c.stop_reading();
                }
            }
        }
    }

    /// Runs `f` on connection `id` (if it still exists), then frees it if it is done.
    fn with_conn(
        &mut self,
        id: u64,
        f: impl FnOnce(&mut Self, &mut Conn, &mut dyn Submit),
        ring: &mut dyn Submit,
    ) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        f(self, &mut c, ring);
        if c.done() {
            log::debug!("{}: closed", c.peer);
        } else {
            self.conns.insert(id, c);
        }
    }

    fn adopt(&mut self, nc: NewConn, ring: &mut dyn Submit) {
        let inbox = Arc::clone(&self.inbox);
        let id = nc.id;
        let (tx, rx) = notifying_answer_queue(Arc::new(move || inbox.mark_ready(id)));
        let mut c = Box::new(Conn {
            id,
            stream: nc.stream,
            peer: nc.peer,
            input: new_recv_buf(),
            budget: ByteBudget::new(self.limits.inflight_bytes),
            tx: Some(tx),
            rx,
            recv_posted: false,
            parked: false,
            starved: false,
            limits: ConnState::new(&self.limits),
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
        if self.closing {
            let _ = c.stream.shutdown(Shutdown::Both);
            c.broken = true;
            c.stop_reading();
            return;
        }
        self.post_recv(&mut c, ring);
        self.conns.insert(id, c);
    }

    fn on_ready(&mut self, c: &mut Conn, ring: &mut dyn Submit) {
        self.flush_answers(c, ring);
        if c.parked {
            // Perhaps the shard budget it waits for gave bytes back: try again (it parks
            // again if they still do not fit).
            c.parked = false;
            self.handle_input(c, ring);
        }
    }

    fn post_recv(&mut self, c: &mut Conn, ring: &mut dyn Submit) {
        if c.recv_posted || c.parked || c.tx.is_none() || c.broken {
            return;
        }
        let limit = c.limits.buffer_limit(c.input.pending(), c.input.chunk());
        let Some((room, room_len)) = c.input.prepare_receive(limit) else {
            c.starved = true;
            return;
        };
        c.starved = false;
        let recv = opcode::Recv::new(
            types::Fd(c.stream.as_raw_fd()),
            room,
            u32::try_from(room_len).unwrap_or(u32::MAX),
        )
        .build();
        // prepare_receive runs only before posting, and a connection is freed only once nothing
        // is posted (or leaked after a ring failure).
        // SAFETY: `room` stays allocated, unmoved and unread until the receive completes.
        unsafe { ring.submit(recv, c.id << 2 | RECV) };
        c.recv_posted = true;
    }

    fn on_recv(&mut self, c: &mut Conn, res: i32, ring: &mut dyn Submit) {
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
        // SAFETY: the kernel wrote `res` bytes (positive, at most the length asked for) into the
        // space the posted receive was given.
        unsafe { c.input.received(res as usize) };
        c.limits.received(Instant::now());
        self.handle_input(c, ring);
    }

    fn handle_input(&mut self, c: &mut Conn, ring: &mut dyn Submit) {
        let Some(handler) = lock(&self.inbox.handler).clone() else {
            c.stop_reading();
            return;
        };
        let Some(tx) = c.tx.clone() else { return };
        let budget = Arc::clone(&c.budget);
        let mut acquire = |n| budget.try_acquire(n);
        let (inbox, id) = (Arc::clone(&self.inbox), c.id);
        let mut acquire_shard = |shard: &Arc<ByteBudget>, n| -> Option<BudgetHold> {
            shard.try_acquire_or_notify(n, || {
                let inbox = Arc::clone(&inbox);
                Box::new(move || inbox.mark_ready(id))
            })
        };
        let before = c.input.pending().len();
        let stop = handle_frames(
            &mut c.input,
            c.id,
            c.peer,
            &handler,
            &tx,
            Admission {
                acquire: &mut acquire,
                acquire_shard: &mut acquire_shard,
                tickets: &mut self.pending,
            },
        );
        let left = c.input.pending().len();
        c.limits.handled(left > 0, left < before, Instant::now());
        match stop {
            Stop::NeedMore => self.post_recv(c, ring),
            Stop::Parked => c.parked = true,
            Stop::NoRoom => {
                c.parked = true;
                self.waiting_for_room.push(c.id);
            }
            Stop::Close => c.stop_reading(),
        }
    }

    /// Sends what is queued, unless a send is in flight.
    fn flush_answers(&mut self, c: &mut Conn, ring: &mut dyn Submit) {
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
            a.write_to(&mut c.out);
        }
        c.out_sent = 0;
        self.post_send(c, ring);
    }

    fn post_send(&mut self, c: &mut Conn, ring: &mut dyn Submit) {
        let rest = &c.out[c.out_sent..];
        let send = opcode::Send::new(
            types::Fd(c.stream.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build();
        // SAFETY: `rest` is inside c.out, which is not touched while send_posted is set, and
        // the connection is freed only once no operation is posted.
        unsafe { ring.submit(send, c.id << 2 | SEND) };
        c.send_posted = true;
        c.send_since = Instant::now();
    }

    fn on_send(&mut self, c: &mut Conn, res: i32, ring: &mut dyn Submit) {
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
            self.post_send(c, ring);
            return;
        }
        // Written: the answers give their bytes back to the budget, which may let a parked
        // connection read again.
        c.sending.clear();
        if c.parked {
            c.parked = false;
            self.handle_input(c, ring);
        }
        self.flush_answers(c, ring);
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
