//! `keel produce`: one message per stdin line, batched and pipelined; acknowledgements are
//! printed in input order.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::process::ExitCode;

use crate::{Client, ClientError, PendingProduce, Target};
use clap::Args;
use crossbeam_channel::{bounded, Receiver, TryRecvError};

/// Bytes of message values gathered into one batch at most (the server's default batch limit
/// is 1 MiB).
const MAX_BATCH_VALUE_BYTES: usize = 512 * 1024;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Topic to produce to.
    topic: String,
    /// Partition to produce to [default: 0].
    #[arg(long, conflicts_with = "key")]
    partition: Option<u32>,
    /// Key of every message; the server picks the partition from it (as Kafka does).
    #[arg(long)]
    key: Option<String>,
    /// Print "PARTITION OFFSET" for each message once it is durable, in input order.
    #[arg(long)]
    print_acks: bool,
    /// Most messages per batch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    batch_max: u32,
    /// Most batches in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
}

type Line = std::io::Result<Vec<u8>>;

fn read_stdin_lines() -> Receiver<Line> {
    let (tx, rx) = bounded(4096);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if tx.send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

struct Progress {
    read: u64,
    acked: u64,
}

pub fn run(client: &Client, args: &ProduceArgs) -> Result<ExitCode, ClientError> {
    let lines = read_stdin_lines();
    let mut progress = Progress { read: 0, acked: 0 };
    match produce(client, args, &lines, &mut progress) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!(
                "keel: produce failed: {e}\nkeel: {} of {} messages read were acknowledged; any others may or may not be stored",
                progress.acked, progress.read
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn produce(
    client: &Client,
    args: &ProduceArgs,
    lines: &Receiver<Line>,
    progress: &mut Progress,
) -> Result<(), Box<dyn std::error::Error>> {
    let target = match (&args.key, args.partition) {
        (Some(key), _) => Target::Key(key.as_bytes()),
        (None, p) => Target::Partition(p.unwrap_or(0)),
    };
    let mut out = std::io::stdout().lock();
    let mut in_flight: VecDeque<(PendingProduce, u64)> = VecDeque::new();
    loop {
        let first = match lines.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                // Nothing more typed yet: report what is in flight before waiting for input.
                while let Some(front) = in_flight.pop_front() {
                    complete(front, args, &mut out, progress)?;
                }
                match lines.recv() {
                    Ok(line) => line,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let mut batch = vec![first?];
        let mut bytes = batch[0].len();
        while batch.len() < args.batch_max as usize && bytes < MAX_BATCH_VALUE_BYTES {
            match lines.try_recv() {
                Ok(line) => {
                    let line = line?;
                    bytes += line.len();
                    batch.push(line);
                }
                Err(_) => break,
            }
        }
        progress.read += batch.len() as u64;
        let pending = client.send_values(&args.topic, target, &batch)?;
        in_flight.push_back((pending, batch.len() as u64));
        while in_flight.len() >= args.window as usize {
            if let Some(front) = in_flight.pop_front() {
                complete(front, args, &mut out, progress)?;
            }
        }
    }
    while let Some(front) = in_flight.pop_front() {
        complete(front, args, &mut out, progress)?;
    }
    out.flush()?;
    Ok(())
}

fn complete(
    (pending, count): (PendingProduce, u64),
    args: &ProduceArgs,
    out: &mut impl Write,
    progress: &mut Progress,
) -> Result<(), Box<dyn std::error::Error>> {
    let ack = pending.wait()?;
    if ack.last_offset.checked_sub(ack.first_offset) != Some(count - 1) {
        return Err(format!(
            "the server acknowledged offsets {}..={} for a batch of {count} messages",
            ack.first_offset, ack.last_offset
        )
        .into());
    }
    progress.acked += count;
    if args.print_acks {
        for i in 0..count {
            writeln!(out, "{} {}", ack.partition, ack.first_offset + i)?;
        }
        out.flush()?;
    }
    Ok(())
}
