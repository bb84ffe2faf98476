//! Serving connections from io_uring event loops: one thread per shard owns a ring and the
//! connections given to it, receives and sends through the ring, and hands requests to the
//! engine's shards. Compared with a reader and a writer thread per connection, this trades two
//! context switches per request for one ring submission.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types, IoUring};
use keel_engine::Waker;

use crate::conn_limits::ConnLimits;
use crate::handler::Handler;
use crate::ring_conns::{Conns, Inbox, NewConn, Submit};

const RING_ENTRIES: u32 = 1024;
/// The eventfd read that wakes the loop (connection tokens are far below it).
const WAKE_TOKEN: u64 = u64::MAX;
/// Cancellations' own completions, which carry nothing to act on.
const CANCEL_TOKEN: u64 = u64::MAX - 1;

/// The running loops.
pub struct NetLoops {
    loops: Vec<(Arc<Inbox>, Option<JoinHandle<()>>)>,
}

impl NetLoops {
    /// Starts `n` loops (at least one), serving connections within `limits`.
    pub fn start(n: usize, handler: &Arc<Handler>, limits: &Arc<ConnLimits>) -> io::Result<Self> {
        let mut loops = Vec::new();
        for i in 0..n.max(1) {
            // Fails early, with the ring error, if io_uring is not allowed here.
            let ring = IoUring::new(RING_ENTRIES)?;
            let inbox = Inbox::new(handler, Arc::new(Waker::new()?));
            let conns = Conns::new(Arc::clone(&inbox), Arc::clone(limits));
            let thread = std::thread::Builder::new()
                .name(format!("keel-net-{i}"))
                .spawn(move || {
                    Loop {
                        ring,
                        conns,
                        wake_buf: Box::new([0; 8]),
                        wake_posted: false,
                    }
                    .run();
                })?;
            loops.push((inbox, Some(thread)));
        }
        Ok(Self { loops })
    }

    /// Hands a new connection to a loop (connection ids take turns).
    pub fn adopt(&self, conn: NewConn) {
        let n = self.loops.len() as u64;
        // `start` made at least one loop.
        self.loops[(conn.id % n) as usize].0.adopt(conn);
    }

    /// Stops handling requests: the loops let go of the handler (and through it the engine).
    pub fn release_handler(&self) {
        for (inbox, _) in &self.loops {
            inbox.release_handler();
        }
    }

    /// Ends the loops: connections still open are closed, then the threads are joined.
    pub fn stop(mut self) {
        for (inbox, _) in &self.loops {
            inbox.stop();
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

/// A loop's own ring, as the connections see it.
struct OwnRing<'a>(&'a mut IoUring);

impl OwnRing<'_> {
    /// Queues a submission, submitting what is queued first when the ring is full.
    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry pushed here points into memory that outlives its operation
            // (the callers' contracts: Submit::submit's, and the loop's boxed wake buffer).
            if unsafe { self.0.submission().push(entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.0.submit() {
                log::error!("network loop: cannot submit: {e}");
                return;
            }
        }
    }
}

impl Submit for OwnRing<'_> {
    unsafe fn submit(&mut self, entry: squeue::Entry, token: u64) {
        self.push(&entry.user_data(token));
    }

    fn cancel(&mut self, token: u64) {
        self.push(
            &opcode::AsyncCancel::new(token)
                .build()
                .user_data(CANCEL_TOKEN),
        );
    }
}

struct Loop {
    ring: IoUring,
    conns: Conns,
    /// Target of the posted eventfd read; boxed so its address is stable while it runs.
    wake_buf: Box<[u8; 8]>,
    wake_posted: bool,
}

impl Loop {
    fn run(&mut self) {
        loop {
            self.conns.turn(&mut OwnRing(&mut self.ring));
            if self.conns.closing() && self.conns.idle() {
                if !self.wake_posted {
                    return;
                }
                // Only the wake read is left: make it complete before the buffer goes.
                self.waker().signal();
            } else if !self.wake_posted {
                let read =
                    opcode::Read::new(types::Fd(self.waker().fd()), self.wake_buf.as_mut_ptr(), 8)
                        .build()
                        .user_data(WAKE_TOKEN);
                // The read's buffer is boxed in the loop, which returns only once the read has
                // completed (above) or after abandon() has waited for it or leaked the buffer.
                OwnRing(&mut self.ring).push(&read);
                self.wake_posted = true;
            }
            self.waker().park(1);
            let want = usize::from(!self.conns.has_work());
            if let Err(e) = self.submit_and_wait(want) {
                log::error!("network loop: io_uring failed: {e}; closing its connections");
                self.abandon();
                return;
            }
            self.waker().unpark();
            let completions: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (token, res) in completions {
                match token {
                    WAKE_TOKEN => self.wake_posted = false,
                    CANCEL_TOKEN => {}
                    _ => self
                        .conns
                        .complete(token, res, &mut OwnRing(&mut self.ring)),
                }
            }
        }
    }

    fn waker(&self) -> &Waker {
        self.conns.inbox().waker()
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
    fn abandon(&mut self) {
        self.conns.shut_all();
        self.waker().signal();
        for _ in 0..1000 {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            let _ = self.ring.completion().count();
        }
        self.conns.leak();
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
    }
}
