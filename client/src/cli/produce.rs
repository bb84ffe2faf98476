//! `keel produce`: one message per stdin line, through the [`Producer`] (batched, idempotent,
//! retried); acknowledgements are printed in input order, and a summary at the end.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::{ClientOptions, Delivery, Producer, ProducerOptions, Record, Stored};
use clap::Args;

/// Deliveries held at most before the oldest is waited for: bounds what acks to print take.
const DELIVERIES_HELD_MAX: usize = 1 << 16;
/// How often a terminal is told how far a long produce is.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Topic to produce to.
    topic: String,
    /// Partition of every message [default: keyless messages spread over the partitions, a
    /// batch at a time].
    #[arg(long, conflicts_with = "key")]
    partition: Option<u32>,
    /// Key of every message; its partition follows from it (as in Kafka).
    #[arg(long)]
    key: Option<String>,
    /// Print "PARTITION OFFSET" for each message once it is durable, in input order.
    #[arg(long)]
    print_acks: bool,
}

/// How far the produce got.
#[derive(Default)]
struct Progress {
    read: u64,
    stored: u64,
}

pub fn run(server: &str, options: ClientOptions, args: &ProduceArgs) -> ExitCode {
    let started = Instant::now();
    let options = ProducerOptions {
        connection: options,
        ..ProducerOptions::default()
    };
    let producer = match Producer::connect_with(server, options) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("keel: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut progress = Progress::default();
    let produced = produce(&producer, args, &mut progress, started);
    let stats = producer.stats();
    let closed = producer.close();
    let seconds = started.elapsed().as_secs_f64();
    match produced.and_then(|()| closed.map_err(Into::into)) {
        Ok(()) => {
            let plural = |n: u64| if n == 1 { "" } else { "s" };
            eprintln!(
                "keel: stored {} message{} in {} request{} ({} resent, {} reconnection{}) in {seconds:.2} s",
                progress.stored,
                plural(progress.stored),
                stats.requests,
                plural(stats.requests),
                stats.resends,
                stats.reconnections,
                plural(stats.reconnections),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "keel: produce failed: {e}\nkeel: {} of {} messages read were stored; the rest \
                 were not, or (if the error says so) may have been, each at most once",
                progress.stored, progress.read
            );
            ExitCode::FAILURE
        }
    }
}

fn produce(
    producer: &Producer,
    args: &ProduceArgs,
    progress: &mut Progress,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::stdout().lock();
    let tty = std::io::stderr().is_terminal();
    let mut told = started;
    let mut held: VecDeque<Delivery> = VecDeque::new();
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        progress.read += 1;
        let mut record = Record::new(&args.topic, &line);
        if let Some(key) = &args.key {
            record = record.key(key.as_bytes());
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        held.push_back(producer.send(record)?);
        // Print what is stored already; wait for the oldest only when too much is held.
        while let Some(front) = held.front() {
            if !front.is_finished() && held.len() < DELIVERIES_HELD_MAX {
                break;
            }
            if let Some(d) = held.pop_front() {
                take(d.wait()?, args, &mut out, progress)?;
            }
        }
        if tty && told.elapsed() >= PROGRESS_EVERY {
            told = Instant::now();
            eprint!(
                "\rkeel: {} read, {} stored, {:.0} s   ",
                progress.read,
                progress.stored,
                started.elapsed().as_secs_f64()
            );
        }
    }
    producer.flush()?;
    for d in held {
        take(d.wait()?, args, &mut out, progress)?;
    }
    if tty && told > started {
        eprint!("\r{:60}\r", "");
    }
    out.flush()?;
    Ok(())
}

fn take(
    stored: Stored,
    args: &ProduceArgs,
    out: &mut impl Write,
    progress: &mut Progress,
) -> std::io::Result<()> {
    progress.stored += 1;
    if args.print_acks {
        writeln!(out, "{} {}", stored.partition, stored.offset)?;
    }
    Ok(())
}
