//! The threads of consumer groups: workers that run joins and consumes (they wait for reads
//! and file syncs, which the network loops must not), and a ticker that parks consumes that
//! found nothing, wakes them when their group changes, answers them when their wait ends,
//! and expires sessions and ack deadlines.
//!
//! Why no wake-up is missed: a worker reads the group's generation before it looks for
//! messages; whatever could make messages deliverable bumps the generation first and then,
//! if consumes are parked, sends a wake. The ticker counts a consume as parked before it
//! compares generations, so either it sees the bump and sends the consume back at once, or
//! the bump comes later and sees it parked.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use keel_protocol::ErrorCode;

use super::consume::answer_empty;
use super::{ConsumeJob, Groups, JoinJob, LiveGroup, CHECKPOINT_EVERY, TICK};

/// Worker threads: joins and consumes wait on reads, so a few run side by side.
const WORKERS: usize = 4;

enum Job {
    Join(JoinJob),
    Consume(ConsumeJob),
    Stop,
}

enum Event {
    Park(ConsumeJob),
    Wake(Arc<LiveGroup>),
    Stop,
}

/// The senders; the receivers go to the threads.
pub struct Waiting {
    work: Sender<Job>,
    events: Sender<Event>,
}

/// The receivers, handed to [`start_threads`].
pub struct Receivers {
    work: Receiver<Job>,
    events: Receiver<Event>,
    work_tx: Sender<Job>,
}

impl Waiting {
    pub fn new() -> (Self, Receivers) {
        let (work, work_rx) = unbounded();
        let (events, events_rx) = unbounded();
        let rx = Receivers {
            work: work_rx,
            events: events_rx,
            work_tx: work.clone(),
        };
        (Self { work, events }, rx)
    }

    pub fn join(&self, job: JoinJob) {
        if let Err(e) = self.work.send(Job::Join(job)) {
            if let Job::Join(job) = e.0 {
                job.reply
                    .error(ErrorCode::ShuttingDown, "keeld is stopping");
            }
        }
    }

    pub fn consume(&self, job: ConsumeJob) {
        if let Err(e) = self.work.send(Job::Consume(job)) {
            if let Job::Consume(job) = e.0 {
                answer_empty(job);
            }
        }
    }

    pub fn park(&self, job: ConsumeJob) {
        if let Err(e) = self.events.send(Event::Park(job)) {
            if let Event::Park(job) = e.0 {
                answer_empty(job);
            }
        }
    }

    /// Something may have become deliverable in `g`.
    pub fn wake(&self, g: &Arc<LiveGroup>) {
        g.changed();
        if g.parked.load(Ordering::SeqCst) > 0 {
            let _ = self.events.send(Event::Wake(Arc::clone(g)));
        }
    }

    pub fn stop(&self) {
        let _ = self.events.send(Event::Stop);
        for _ in 0..WORKERS {
            let _ = self.work.send(Job::Stop);
        }
    }
}

/// Starts the workers and the ticker. They hold the groups weakly, so dropping the server's
/// handle ends them too.
pub fn start_threads(groups: &Arc<Groups>, rx: Receivers) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    for i in 0..WORKERS {
        let work = rx.work.clone();
        let groups = Arc::downgrade(groups);
        threads.push(
            std::thread::Builder::new()
                .name(format!("keel-groups-{i}"))
                .spawn(move || work_loop(&groups, &work))?,
        );
    }
    let groups = Arc::downgrade(groups);
    let Receivers {
        events, work_tx, ..
    } = rx;
    threads.push(
        std::thread::Builder::new()
            .name("keel-groups-tick".into())
            .spawn(move || tick_loop(&groups, &events, &work_tx))?,
    );
    Ok(threads)
}

fn work_loop(groups: &Weak<Groups>, work: &Receiver<Job>) {
    while let Ok(job) = work.recv() {
        let Some(groups) = groups.upgrade() else {
            break;
        };
        match job {
            Job::Join(job) => groups.do_join(job),
            Job::Consume(job) => groups.run_consume(job),
            Job::Stop => break,
        }
    }
}

fn tick_loop(groups: &Weak<Groups>, events: &Receiver<Event>, work: &Sender<Job>) {
    let mut parked: Vec<ConsumeJob> = Vec::new();
    let mut next_tick = Instant::now() + TICK;
    let mut next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
    let unpark = |job: ConsumeJob| {
        job.group.parked.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = work.send(Job::Consume(job)) {
            if let Job::Consume(job) = e.0 {
                answer_empty(job);
            }
        }
    };
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match events.recv_timeout(wait) {
            Ok(Event::Park(job)) => {
                job.group.parked.fetch_add(1, Ordering::SeqCst);
                if job.group.generation() != job.seen {
                    unpark(job);
                } else {
                    parked.push(job);
                }
            }
            Ok(Event::Wake(g)) => {
                let (woken, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut parked)
                    .into_iter()
                    .partition(|j| Arc::ptr_eq(&j.group, &g));
                parked = keep;
                woken.into_iter().for_each(unpark);
            }
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if now < next_tick {
            continue;
        }
        next_tick = now + TICK;
        let Some(groups) = groups.upgrade() else {
            break;
        };
        let checkpoint = now >= next_checkpoint;
        if checkpoint {
            next_checkpoint = now + CHECKPOINT_EVERY;
        }
        groups.tick(now, checkpoint);
        // Groups whose generation moved are looked at again (the tick's own expiries, and
        // wakes sent before a consume was counted as parked).
        let (again, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut parked)
            .into_iter()
            .partition(|j| j.group.generation() != j.seen || j.deadline.is_none_or(|d| d <= now));
        parked = keep;
        for job in again {
            if job.deadline.is_none_or(|d| d <= now) {
                job.group.parked.fetch_sub(1, Ordering::SeqCst);
                answer_empty(job);
            } else {
                unpark(job);
            }
        }
    }
    for job in parked {
        job.group.parked.fetch_sub(1, Ordering::SeqCst);
        answer_empty(job);
    }
}
