//! The deterministic simulator (issue 30 §1): the real engine, partitions and consumer
//! groups, driven from one seed on the simulated disk (`keel_engine::simulation`) with
//! simulated time. Each seed runs several lives of one data directory: a random mix of topic
//! creates and deletes, appends of random sizes, reads, joins, consumes, acks, nacks,
//! heartbeats, time jumps past ack deadlines and sessions, under retention; some lives with
//! an injected EIO or ENOSPC on a write or a sync; each life ends in a power cut at a random
//! turn (every write no sync covered kept, lost or torn at a 512-byte boundary, directory
//! changes not synced undone) or a clean stop. After every restart the engine is checked
//! against the model (`model.rs`). The same seed makes the same history: the driver is the
//! only thread that runs, a shard at a turn.

mod model;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::time::Duration;

use keel_engine::clock::simulated;
use keel_engine::delivery::MemberId;
use keel_engine::simulation::{Completing, Simulation};
use keel_engine::testing::{self, TestDisk};
use keel_engine::{
    Answer, BatchBuilder, CompletionQueue, ConsumeLimits, DataError, Engine, EngineConfig,
    GroupSettings, GroupStart, JoinRequest, Waker,
};

use model::{Model, PartitionModel, TopicModel};

/// Simulated time is process-wide: one simulation at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Requests in flight at most (the answers' queue capacity).
const IN_FLIGHT_MAX: usize = 48;
const SHARDS: usize = 2;
const GROUP: &str = "g";
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const SESSION: Duration = Duration::from_secs(20);
/// The errors injected on a write or a sync.
const EIO: i32 = 5;
const ENOSPC: i32 = 28;
/// Turns a life may spend waiting for its last answers before it calls the engine stuck.
const SETTLE_TURNS_MAX: usize = 10_000;

/// What one seed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// A digest of every answer the engine gave, in order: equal for equal histories.
    pub trace: u64,
    /// Lives of the data directory (opens of the engine).
    pub lives: u32,
    /// Of those, ended by a power cut.
    pub power_cuts: u32,
    /// Lives with an injected write or sync failure.
    pub faults: u32,
    /// Appends acknowledged.
    pub acked_appends: usize,
    /// Messages groups acknowledged durably.
    pub durable_acks: usize,
}

/// A request in flight.
enum Pending {
    Append {
        topic: String,
        incarnation: u32,
        partition: u32,
        values: Vec<Vec<u8>>,
    },
    Read {
        topic: String,
        partition: u32,
    },
    Consume {
        topic: String,
        incarnation: u32,
        member: MemberId,
        /// Answers taken when it was asked for.
        asked_at: u64,
    },
    Settle {
        topic: String,
        incarnation: u32,
        spans: Vec<(u32, u64)>,
        /// `Some(durable)` for an ack; `None` for a nack.
        ack: Option<bool>,
    },
}

/// The engine's configuration for the simulation: small segments, so lives roll and
/// retention drops files; retention in some seeds.
fn config(dir: &std::path::Path, rng: &mut crate::Rng) -> EngineConfig {
    let mut cfg = EngineConfig::new(dir);
    cfg.shards = SHARDS;
    cfg.pin_shards = false;
    cfg.segment_bytes = 128 * 1024;
    cfg.max_batch_bytes = 16 * 1024;
    cfg.max_flush_bytes = 64 * 1024;
    cfg.group_slots = 64;
    if rng.below(2) == 0 {
        cfg.retention_bytes = Some(384 * 1024);
    }
    cfg
}

/// One seed's run.
struct Run {
    rng: crate::Rng,
    model: Model,
    answers: Arc<CompletionQueue>,
    pending: std::collections::BTreeMap<u64, Pending>,
    next_tag: u64,
    trace: u64,
    ack_before_sync: bool,
    /// Answers taken so far.
    answers_taken: u64,
    /// `KEEL_SIM_EVENTS` set: every event printed, to follow a replayed seed.
    print_events: bool,
}

/// Runs `seed`; `Err` names the first promise broken. `ack_before_sync` runs a deliberately
/// broken engine, which acknowledges appends before syncing them.
pub fn run(seed: u64, ack_before_sync: bool) -> Result<Report, String> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    simulated::start();
    let unpinned = pin_to_this_cpu();
    let result = run_seed(seed, ack_before_sync);
    if let Some(cpus) = unpinned {
        // Best effort: a test thread left on one CPU is only slower.
        let _ = sched_setaffinity(Pid::from_raw(0), &cpus);
    }
    simulated::stop();
    result
}

/// Pins the current thread to the CPU it runs on, so the shards the simulation spawns from it
/// run there too; returns the CPUs it was allowed before. Only one thread of a simulation runs
/// at a time, and a hand-off between threads on one CPU is a plain context switch: spread
/// over several, each turn waits for an idle CPU to wake, which made up most of a run.
fn pin_to_this_cpu() -> Option<CpuSet> {
    let before = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let mut here = CpuSet::new();
    here.set(sched_getcpu().ok()?).ok()?;
    sched_setaffinity(Pid::from_raw(0), &here).ok()?;
    Some(before)
}

fn run_seed(seed: u64, ack_before_sync: bool) -> Result<Report, String> {
    let dir = crate::data_dir();
    let mut rng = crate::Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let cfg = config(dir.path(), &mut rng);
    let waker = Arc::new(Waker::new().map_err(|e| format!("eventfd: {e}"))?);
    let mut run = Run {
        rng,
        model: Model::default(),
        answers: CompletionQueue::new(IN_FLIGHT_MAX, waker),
        pending: Default::default(),
        next_tag: 0,
        trace: 0xcbf2_9ce4_8422_2325,
        ack_before_sync,
        answers_taken: 0,
        print_events: std::env::var_os("KEEL_SIM_EVENTS").is_some(),
    };
    let lives = 3 + run.rng.below(3) as u32;
    let (mut power_cuts, mut faults) = (0, 0);
    for life in 0..lives {
        let (cut, fault) = run
            .life(&cfg, life)
            .map_err(|e| format!("life {life}: {e}"))?;
        power_cuts += u32::from(cut);
        faults += u32::from(fault);
    }
    // A last open, to check what the last life left.
    run.last_check(&cfg)
        .map_err(|e| format!("after life {}: {e}", lives - 1))?;
    Ok(Report {
        trace: run.trace,
        lives,
        power_cuts,
        faults,
        acked_appends: run.model.acked_appends,
        durable_acks: run.model.durable_acks,
    })
}

impl Run {
    /// Mixes an event into the trace (FNV-1a).
    fn note(&mut self, event: impl std::fmt::Debug) {
        let event = format!("{event:?}");
        if self.print_events {
            eprintln!("{event}");
        }
        for b in event.bytes() {
            self.trace ^= u64::from(b);
            self.trace = self.trace.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn open(&mut self, cfg: &EngineConfig, sim: &Arc<Simulation>) -> Result<Engine, String> {
        testing::open(cfg.clone(), TestDisk::Simulated(Arc::clone(sim)))
            .map_err(|e| format!("open: {e}"))
    }

    /// One life: open (checking what the last one left), run a random number of steps,
    /// end in a power cut or a clean stop. Returns (power cut, fault injected).
    fn life(&mut self, cfg: &EngineConfig, life: u32) -> Result<(bool, bool), String> {
        let sim = Simulation::new(self.rng.next_u64(), self.ack_before_sync);
        let driving = sim.drive();
        self.note(("life", life));
        let engine = self.open(cfg, &sim)?;
        self.check_all(&engine, &sim)?;
        if life == 0 || self.model.topics.is_empty() {
            self.create_topic(&engine, &sim)?;
        }
        let fault = self.rng.below(4) == 0;
        if fault {
            let faults = sim.faults();
            faults.set_errno(if self.rng.below(2) == 0 { EIO } else { ENOSPC });
            let after = 1 + self.rng.below(120) as i64;
            if self.rng.below(2) == 0 {
                faults.fail_write_in(after);
            } else {
                faults.fail_sync_in(after);
            }
        }
        let steps = 40 + self.rng.below(260);
        for _ in 0..steps {
            self.step(&engine, &sim)?;
            if sim.is_stuck() {
                return Err("the simulation is stuck (a shard stopped taking turns)".into());
            }
        }
        let cut = self.rng.below(5) != 0;
        if cut {
            // The interesting moment: with operations in flight.
            for _ in 0..100 {
                if (0..SHARDS).any(|s| sim.queued(s) > 0) {
                    break;
                }
                self.step(&engine, &sim)?;
            }
            self.note("power cut");
            sim.cut_power();
        } else {
            // A clean stop: what is in flight is answered first.
            self.settle(&sim)?;
        }
        sim.run_free();
        drop(driving);
        drop(engine);
        self.take_answers()?;
        if cut {
            sim.crashes()
                .lose_unsynced_writes(self.rng.next_u64())
                .map_err(|e| format!("power cut: {e}"))?;
        }
        // Acks still in flight at the end may have been taken, or not.
        for p in std::mem::take(&mut self.pending).into_values() {
            if let Pending::Settle {
                topic,
                incarnation,
                spans,
                ack: Some(_),
            } = p
            {
                let t = self.model.topics.get_mut(&topic);
                let g = t
                    .filter(|t| t.incarnation == incarnation)
                    .and_then(|t| t.group.as_mut());
                if let Some(g) = g {
                    g.maybe.extend(spans);
                }
            }
        }
        for t in self.model.topics.values_mut() {
            if let Some(g) = &mut t.group {
                g.members.clear();
                g.held.clear();
            }
        }
        Ok((cut, fault))
    }

    /// Opens the data directory once more and checks it.
    fn last_check(&mut self, cfg: &EngineConfig) -> Result<(), String> {
        let sim = Simulation::new(self.rng.next_u64(), false);
        let driving = sim.drive();
        let engine = self.open(cfg, &sim)?;
        let checked = self.check_all(&engine, &sim);
        sim.run_free();
        drop(driving);
        drop(engine);
        checked
    }

    /// Gives turns with random completions until nothing is in flight.
    fn settle(&mut self, sim: &Simulation) -> Result<(), String> {
        for _ in 0..SETTLE_TURNS_MAX {
            self.take_answers()?;
            if self.pending.is_empty() {
                return Ok(());
            }
            sim.turn_all(Completing::Random);
            simulated::advance(Duration::from_millis(1));
            if sim.is_stuck() {
                return Err("the simulation is stuck".into());
            }
        }
        Err(format!("{} requests never answered", self.pending.len()))
    }

    /// Waits (giving turns) for the answer to the request tagged `tag`.
    fn wait_for(&mut self, sim: &Simulation, tag: u64) -> Result<Answer, String> {
        for _ in 0..SETTLE_TURNS_MAX {
            let mut got = Vec::new();
            self.answers.drain(&mut got);
            let mut wanted = None;
            for c in got {
                if c.tag == tag {
                    self.pending.remove(&tag);
                    self.answers_taken += 1;
                    wanted = Some(c.answer);
                } else {
                    self.answer(c.tag, c.answer)?;
                }
            }
            if let Some(a) = wanted {
                return Ok(a);
            }
            sim.turn_all(Completing::Random);
            simulated::advance(Duration::from_millis(1));
        }
        Err("a request was never answered".into())
    }

    /// A ticket for `p`, or `None` when too many requests are in flight.
    fn ticket(&mut self, p: Pending) -> Option<(u64, keel_engine::Ticket)> {
        let place = self.answers.reserve()?;
        self.next_tag += 1;
        let tag = self.next_tag;
        self.pending.insert(tag, p);
        Some((tag, place.ticket(tag)))
    }

    /// One random step, then a few turns and a little time.
    fn step(&mut self, engine: &Engine, sim: &Simulation) -> Result<(), String> {
        match self.rng.below(100) {
            0..=39 => self.append(engine),
            40..=47 => self.read(engine),
            48..=57 => self.consume(engine),
            58..=67 => {
                let durable = self.rng.below(3) != 0;
                self.settle_some(engine, Some(durable));
            }
            68..=70 => self.settle_some(engine, None),
            71..=73 => self.heartbeat(engine),
            74..=76 => {
                let by = Duration::from_millis(500 + self.rng.below(12_000));
                self.note(("time", by));
                simulated::advance(by);
            }
            77..=79 => self.join(engine, sim)?,
            80 => self.leave(engine),
            81 if self.model.topics.len() < 4 => self.create_topic(engine, sim)?,
            82 if self.rng.below(3) == 0 && self.model.topics.len() > 1 => {
                self.delete_topic(engine, sim)?;
            }
            _ => {}
        }
        for _ in 0..1 + self.rng.below(3) {
            let shard = self.rng.below(SHARDS as u64) as usize;
            sim.turn(shard, Completing::Random);
        }
        simulated::advance(Duration::from_micros(self.rng.below(3_000)));
        self.take_answers()
    }

    /// A random topic of the model: (name, incarnation, partitions).
    fn some_topic(&mut self) -> Option<(String, u32, u32)> {
        let n = self.model.topics.len() as u64;
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n) as usize;
        let (name, t) = self.model.topics.iter().nth(i)?;
        Some((name.clone(), t.incarnation, t.partitions.len() as u32))
    }

    fn append(&mut self, engine: &Engine) {
        let Some((topic, incarnation, partitions)) = self.some_topic() else {
            return;
        };
        let partition = self.rng.below(u64::from(partitions)) as u32;
        let records = 1 + self.rng.below(4) as usize;
        let mut b = BatchBuilder::new(0);
        let mut values = Vec::new();
        for _ in 0..records {
            let len = match self.rng.below(10) {
                0 => 20,
                1..=7 => 20 + self.rng.below(600) as usize,
                _ => 600 + self.rng.below(3_500) as usize,
            };
            let v = self.model.new_value(incarnation, partition, len);
            b.push(None, &v, &[]);
            values.push(v);
        }
        let batch = b.build();
        let pending = Pending::Append {
            topic: topic.clone(),
            incarnation,
            partition,
            values,
        };
        if let Some((_, ticket)) = self.ticket(pending) {
            engine.append(&topic, partition, batch, ticket);
        }
    }

    fn read(&mut self, engine: &Engine) {
        let Some((topic, _, partitions)) = self.some_topic() else {
            return;
        };
        let partition = self.rng.below(u64::from(partitions)) as u32;
        let from = self.rng.below(200);
        let pending = Pending::Read {
            topic: topic.clone(),
            partition,
        };
        if let Some((_, ticket)) = self.ticket(pending) {
            engine.read(
                &topic,
                partition,
                from,
                1 + self.rng.below(64 * 1024) as usize,
                ticket,
            );
        }
    }

    /// A random member of a random topic's group: (topic, incarnation, member).
    fn some_member(&mut self) -> Option<(String, u32, MemberId)> {
        let (topic, incarnation, _) = self.some_topic()?;
        let members = &self.model.topics.get(&topic)?.group.as_ref()?.members;
        if members.is_empty() {
            return None;
        }
        let m = members[self.rng.below(members.len() as u64) as usize];
        Some((topic, incarnation, m))
    }

    fn consume(&mut self, engine: &Engine) {
        let Some((topic, incarnation, member)) = self.some_member() else {
            return;
        };
        let until = (self.rng.below(3) == 0)
            .then(|| keel_engine::clock::now() + Duration::from_millis(self.rng.below(200)));
        let limits = ConsumeLimits {
            max_messages: 1 + self.rng.below(40) as usize,
            max_bytes: 256 * 1024,
            until,
        };
        let pending = Pending::Consume {
            topic: topic.clone(),
            incarnation,
            member,
            asked_at: self.answers_taken,
        };
        if let Some((_, ticket)) = self.ticket(pending) {
            engine.consume(GROUP, &topic, member, limits, ticket);
        }
    }

    /// Acks (`Some(durable)`) or nacks (`None`) some of what a member holds.
    fn settle_some(&mut self, engine: &Engine, ack: Option<bool>) {
        let Some((topic, incarnation, member)) = self.some_member() else {
            return;
        };
        let Some(g) = self.model.topics.get(&topic).and_then(|t| t.group.as_ref()) else {
            return;
        };
        let held: Vec<(u32, u64)> = g
            .held
            .iter()
            .filter(|(_, m)| **m == member)
            .map(|(k, _)| *k)
            .collect();
        if held.is_empty() {
            return;
        }
        let take = 1 + self.rng.below(held.len() as u64) as usize;
        let spans: Vec<(u32, u64)> = held.into_iter().take(take).collect();
        let engine_spans: Vec<(u32, u64, u64)> = spans.iter().map(|&(p, o)| (p, o, o)).collect();
        let delay = Duration::from_millis(self.rng.below(2_000));
        let pending = Pending::Settle {
            topic: topic.clone(),
            incarnation,
            spans,
            ack,
        };
        if let Some((_, ticket)) = self.ticket(pending) {
            match ack {
                Some(durable) => {
                    engine.ack(GROUP, &topic, member, &engine_spans, durable, ticket);
                }
                None => engine.nack(GROUP, &topic, member, &engine_spans, delay, ticket),
            }
        }
    }

    fn heartbeat(&mut self, engine: &Engine) {
        let members: Vec<(String, MemberId)> = self
            .model
            .topics
            .iter()
            .flat_map(|(name, t)| {
                t.group
                    .iter()
                    .flat_map(move |g| g.members.iter().map(move |m| (name.clone(), *m)))
            })
            .collect();
        for (topic, m) in members {
            let ok = engine.heartbeat(GROUP, &topic, m).is_ok();
            self.note(("heartbeat", ok));
        }
    }

    fn join(&mut self, engine: &Engine, sim: &Simulation) -> Result<(), String> {
        let Some((topic, _, _)) = self.some_topic() else {
            return Ok(());
        };
        let joined = join(engine, &topic);
        if sim.is_stuck() {
            return Err("stuck in a join".into());
        }
        self.note(("join", joined.is_ok()));
        if let (Ok(m), Some(t)) = (joined, self.model.topics.get_mut(&topic)) {
            t.group.get_or_insert_with(Default::default).members.push(m);
        }
        Ok(())
    }

    fn leave(&mut self, engine: &Engine) {
        let Some((topic, _, member)) = self.some_member() else {
            return;
        };
        let left = engine.leave_group(GROUP, &topic, member).is_ok();
        self.note(("leave", left));
        if let Some(g) = self
            .model
            .topics
            .get_mut(&topic)
            .and_then(|t| t.group.as_mut())
        {
            g.members.retain(|m| *m != member);
            g.held.retain(|_, m| *m != member);
        }
    }

    fn create_topic(&mut self, engine: &Engine, sim: &Simulation) -> Result<(), String> {
        let name = format!("t{}", self.rng.below(6));
        if self.model.topics.contains_key(&name) {
            return Ok(());
        }
        let partitions = 1 + self.rng.below(3) as u32;
        let created = engine.create_topic(&name, partitions);
        if sim.is_stuck() {
            return Err(format!("stuck creating {name}"));
        }
        self.note(("create", &name, created.is_ok()));
        if created.is_ok() {
            self.model.next_incarnation += 1;
            self.model.topics.insert(
                name,
                TopicModel {
                    incarnation: self.model.next_incarnation,
                    partitions: (0..partitions).map(|_| PartitionModel::default()).collect(),
                    group: None,
                },
            );
        }
        Ok(())
    }

    fn delete_topic(&mut self, engine: &Engine, sim: &Simulation) -> Result<(), String> {
        let Some((name, _, _)) = self.some_topic() else {
            return Ok(());
        };
        let deleted = engine.delete_topic(&name);
        if sim.is_stuck() {
            return Err(format!("stuck deleting {name}"));
        }
        self.note(("delete", &name, deleted.is_ok()));
        if deleted.is_ok() {
            self.model.topics.remove(&name);
        }
        Ok(())
    }

    /// Takes every answer that arrived.
    fn take_answers(&mut self) -> Result<(), String> {
        let mut got = Vec::new();
        self.answers.drain(&mut got);
        for c in got {
            self.answer(c.tag, c.answer)?;
        }
        Ok(())
    }

    /// Checks one answer against the model and notes what it makes durable.
    fn answer(&mut self, tag: u64, answer: Answer) -> Result<(), String> {
        let Some(pending) = self.pending.remove(&tag) else {
            return Err(format!("an answer to no request (tag {tag})"));
        };
        self.answers_taken += 1;
        match (pending, answer) {
            (
                Pending::Append {
                    topic,
                    incarnation,
                    partition,
                    values,
                },
                Answer::Appended(r),
            ) => {
                self.note(("append", r.as_ref().ok()));
                let Ok(range) = r else { return Ok(()) };
                if range.last + 1 - range.first != values.len() as u64 {
                    return Err(format!(
                        "{topic}/{partition}: {} records acknowledged as {range:?}",
                        values.len()
                    ));
                }
                if self.model.topics.get(&topic).map(|t| t.incarnation) != Some(incarnation) {
                    return Ok(());
                }
                self.model.acked_appends += 1;
                for (i, v) in values.iter().enumerate() {
                    self.model
                        .saw(&topic, partition, range.first + i as u64, v, true)
                        .map_err(|e| format!("acknowledged append: {e}"))?;
                }
                Ok(())
            }
            (Pending::Read { topic, partition }, Answer::Read(r)) => {
                self.note((
                    "read",
                    r.as_ref().map(|r| (r.next_offset, r.data.len())).ok(),
                ));
                let Ok(r) = r else { return Ok(()) };
                for (offset, v) in records(&r.data)? {
                    self.model
                        .saw(&topic, partition, offset, &v, true)
                        .map_err(|e| format!("read: {e}"))?;
                }
                Ok(())
            }
            (
                Pending::Consume {
                    topic,
                    incarnation,
                    member,
                    asked_at,
                },
                Answer::Consumed(r),
            ) => {
                let Ok(parts) = r else {
                    self.note(("consume", "err"));
                    return Ok(());
                };
                self.consumed(&topic, incarnation, parts, member, asked_at)
            }
            (
                Pending::Settle {
                    topic,
                    incarnation,
                    spans,
                    ack,
                },
                Answer::Settled(r),
            ) => {
                self.note(("settle", &topic, ack, &spans, r.is_ok()));
                let Some(t) = self.model.topics.get_mut(&topic) else {
                    return Ok(());
                };
                let Some(g) = t.group.as_mut().filter(|_| t.incarnation == incarnation) else {
                    return Ok(());
                };
                for s in &spans {
                    g.held.remove(s);
                }
                match (ack, r.is_ok()) {
                    (Some(true), true) => {
                        self.model.durable_acks += spans.len();
                        let at = self.answers_taken;
                        g.durable.extend(spans.into_iter().map(|s| (s, at)));
                    }
                    // Taken, but not yet durable; or failed, which may still have been
                    // taken: either may be undone by a power cut, or not.
                    (Some(_), _) => g.maybe.extend(spans),
                    (None, _) => {}
                }
                Ok(())
            }
            (_, a) => Err(format!("an answer of the wrong kind: {a:?}")),
        }
    }

    /// Checks a consume's messages: none acknowledged durably before, each a durable record
    /// of its partition. Notes them held by `member`.
    fn consumed(
        &mut self,
        topic: &str,
        incarnation: u32,
        parts: Vec<keel_engine::ConsumedPartition>,
        member: MemberId,
        asked_at: u64,
    ) -> Result<(), String> {
        let offsets: Vec<(u32, u64)> = parts
            .iter()
            .flat_map(|p| p.deliveries.iter().map(move |d| (p.partition, d.offset)))
            .collect();
        self.note(("consume", topic, &offsets));
        if self.model.topics.get(topic).map(|t| t.incarnation) != Some(incarnation) {
            return Ok(());
        }
        for p in &parts {
            for (offset, v) in records(&p.batches)? {
                if p.deliveries.iter().any(|d| d.offset == offset) {
                    self.model
                        .saw(topic, p.partition, offset, &v, true)
                        .map_err(|e| format!("consume: {e}"))?;
                }
            }
        }
        let Some(g) = self
            .model
            .topics
            .get_mut(topic)
            .and_then(|t| t.group.as_mut())
        else {
            return Ok(());
        };
        for &(partition, offset) in &offsets {
            if g.durable
                .get(&(partition, offset))
                .is_some_and(|&at| at <= asked_at)
            {
                return Err(format!(
                    "{topic}/{partition}@{offset}: delivered again after a durable ack"
                ));
            }
            g.held.insert((partition, offset), member);
        }
        Ok(())
    }

    /// After an open: the topics are the model's; every partition's log is dense from its
    /// start, holds only values sent to it, each once, and every durable record at its offset;
    /// every group delivers again every message of its partitions not acknowledged, and none
    /// acknowledged durably.
    fn check_all(&mut self, engine: &Engine, sim: &Simulation) -> Result<(), String> {
        let mut listed = engine.list_topics();
        listed.sort();
        let expected: Vec<(String, u32)> = self
            .model
            .topics
            .iter()
            .map(|(n, t)| (n.clone(), t.partitions.len() as u32))
            .collect();
        if listed != expected {
            return Err(format!(
                "topics after the restart: {listed:?}, expected {expected:?}"
            ));
        }
        let names: Vec<String> = self.model.topics.keys().cloned().collect();
        for topic in names {
            let partitions = self.model.topics[&topic].partitions.len() as u32;
            let mut bounds = Vec::new();
            for partition in 0..partitions {
                bounds.push(self.check_partition(engine, &topic, partition)?);
            }
            if self.model.topics[&topic].group.is_some() {
                self.check_group(engine, sim, &topic, &bounds)?;
            }
        }
        Ok(())
    }

    /// Checks one partition's whole log; returns its (start, end).
    fn check_partition(
        &mut self,
        engine: &Engine,
        topic: &str,
        partition: u32,
    ) -> Result<(u64, u64), String> {
        let at = format!("{topic}/{partition}");
        let start = match engine.read_wait(topic, partition, 0, 1) {
            Err(DataError::OffsetOutOfRange { start, .. }) => start,
            Ok(_) => 0,
            Err(e) => return Err(format!("{at}: read at 0: {e}")),
        };
        let mut next = start;
        let mut serials = BTreeSet::new();
        loop {
            let r = engine
                .read_wait(topic, partition, next, 256 * 1024)
                .map_err(|e| format!("{at}: read at {next}: {e}"))?;
            if r.data.is_empty() {
                break;
            }
            for (offset, v) in records(&r.data)? {
                if offset != next {
                    return Err(format!(
                        "{at}: offsets not dense: {offset} after {}",
                        next - 1
                    ));
                }
                let serial = model::origin(&v).map(|o| o.2);
                if !serials.insert(serial) {
                    return Err(format!(
                        "{at}@{offset}: serial {serial:?} is in the log twice"
                    ));
                }
                self.model.saw(topic, partition, offset, &v, true)?;
                next += 1;
            }
        }
        let end = next;
        let part = &self.model.topics[topic].partitions[partition as usize];
        if let Some((&offset, _)) = part.durable.range(start..).find(|(o, _)| **o >= end) {
            return Err(format!(
                "{at}: acknowledged (or shown) record at {offset} lost: the log ends at {end}"
            ));
        }
        self.note(("log", &at, start, end));
        Ok((start, end))
    }

    /// A new member drains the group, acknowledging durably; every message of
    /// [start, end) of each partition comes but those acknowledged before.
    fn check_group(
        &mut self,
        engine: &Engine,
        sim: &Simulation,
        topic: &str,
        bounds: &[(u64, u64)],
    ) -> Result<(), String> {
        let member = join(engine, topic).map_err(|e| format!("{topic}: join to check: {e}"))?;
        let incarnation = self.model.topics[topic].incarnation;
        let mut delivered = BTreeSet::new();
        loop {
            let limits = ConsumeLimits {
                max_messages: 500,
                max_bytes: 4 << 20,
                until: None,
            };
            let pending = Pending::Consume {
                topic: topic.to_string(),
                incarnation,
                member,
                asked_at: self.answers_taken,
            };
            let Some((tag, ticket)) = self.ticket(pending) else {
                return Err("no room for the check's consume".into());
            };
            engine.consume(GROUP, topic, member, limits, ticket);
            let Answer::Consumed(r) = self.wait_for(sim, tag)? else {
                return Err("a consume answered as something else".into());
            };
            let parts = r.map_err(|e| format!("{topic}: consume to check: {e}"))?;
            let spans: Vec<(u32, u64)> = parts
                .iter()
                .flat_map(|p| p.deliveries.iter().map(move |d| (p.partition, d.offset)))
                .collect();
            if spans.is_empty() {
                break;
            }
            self.consumed(topic, incarnation, parts, member, self.answers_taken)?;
            delivered.extend(spans.iter().copied());
            let engine_spans: Vec<(u32, u64, u64)> =
                spans.iter().map(|&(p, o)| (p, o, o)).collect();
            let pending = Pending::Settle {
                topic: topic.to_string(),
                incarnation,
                spans,
                ack: Some(true),
            };
            let Some((tag, ticket)) = self.ticket(pending) else {
                return Err("no room for the check's ack".into());
            };
            engine.ack(GROUP, topic, member, &engine_spans, true, ticket);
            let Answer::Settled(r) = self.wait_for(sim, tag)? else {
                return Err("an ack answered as something else".into());
            };
            r.map_err(|e| format!("{topic}: durable ack to check: {e}"))?;
            // The model learns the ack through `answer`: do it here, as wait_for took it.
            if let Some(g) = self
                .model
                .topics
                .get_mut(topic)
                .and_then(|t| t.group.as_mut())
            {
                for s in &engine_spans {
                    g.held.remove(&(s.0, s.1));
                    g.durable.insert((s.0, s.1), self.answers_taken);
                }
            }
        }
        let g = self.model.topics[topic].group.as_ref();
        for (partition, &(start, end)) in bounds.iter().enumerate() {
            let partition = partition as u32;
            for offset in start..end {
                let key = (partition, offset);
                let acked =
                    g.is_some_and(|g| g.maybe.contains(&key) || g.durable.contains_key(&key));
                if !acked && !delivered.contains(&key) {
                    return Err(format!(
                        "{topic}/{partition}@{offset}: never acknowledged, not delivered again"
                    ));
                }
            }
        }
        let left = engine.leave_group(GROUP, topic, member).is_ok();
        self.note(("checked group", topic, delivered.len(), left));
        Ok(())
    }
}

fn join(engine: &Engine, topic: &str) -> Result<MemberId, String> {
    engine
        .join_group(JoinRequest {
            group: GROUP,
            topic,
            start: GroupStart::Earliest,
            settings: GroupSettings {
                ack_timeout: ACK_TIMEOUT,
                max_deliveries: u32::MAX,
            },
            session_timeout: SESSION,
            max_unacked: 10_000,
            conn: 0,
        })
        .map(|j| j.member)
        .map_err(|e| e.to_string())
}

/// The (offset, value) of every record in `data` (whole batches).
fn records(data: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for view in keel_format::batch::batches(data) {
        let view = view.map_err(|e| format!("a batch that does not verify: {e}"))?;
        let base = view.base_offset() as u64;
        for r in view.records() {
            let r = r.map_err(|e| format!("a record that does not decode: {e}"))?;
            let v = r.value.ok_or("a record without a value")?.to_vec();
            out.push((base + r.offset_delta as u64, v));
        }
    }
    Ok(out)
}
