//! `keel consume`: read a topic as a member of a consumer group, print each value, then
//! acknowledge it.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::{spans_of, Client, ClientError, JoinSettings, StartAt};
use clap::Args;

/// Messages asked for per request.
const CHUNK: u32 = 256;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Consumer group to read as (created on first use).
    #[arg(long, value_name = "GROUP")]
    group: String,
    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// Exit after this many milliseconds without a message (default: run until stopped).
    #[arg(long, value_name = "MS")]
    idle_exit_ms: Option<u64>,
    /// Do not acknowledge: the messages are delivered again later (after the ack timeout, or
    /// at once to another member when this one exits).
    #[arg(long)]
    no_ack: bool,
    /// Where a new group starts: earliest, latest, offset:N or time:MS (ms since the epoch).
    #[arg(long, value_name = "WHERE", default_value = "earliest", value_parser = parse_start)]
    start: StartAt,
    /// Print "PARTITION<TAB>OFFSET<TAB>DELIVERY_COUNT<TAB>VALUE" instead of the value alone.
    #[arg(long)]
    with_offsets: bool,
    /// Messages this member may hold unacknowledged (0: the server's default).
    #[arg(long, value_name = "N", default_value_t = 0)]
    prefetch: u32,
    /// For a new group: redeliver a message not acknowledged within this (0: default).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    ack_timeout_ms: u32,
    /// For a new group: deliveries before a message goes to TOPIC.dlq (0: default).
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_deliveries: u32,
    /// Acknowledge without waiting for the acks to be durable (a crash of the server may then
    /// deliver some messages again).
    #[arg(long)]
    fast_ack: bool,
}

fn parse_start(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        _ => {
            if let Some(n) = s.strip_prefix("offset:") {
                n.parse()
                    .map(StartAt::Offset)
                    .map_err(|e| format!("{s}: {e}"))
            } else if let Some(t) = s.strip_prefix("time:") {
                t.parse()
                    .map(StartAt::Timestamp)
                    .map_err(|e| format!("{s}: {e}"))
            } else {
                Err(format!(
                    "{s:?}: expected earliest, latest, offset:N or time:MS"
                ))
            }
        }
    }
}

pub fn run(client: &Client, args: &ConsumeArgs) -> Result<ExitCode, ClientError> {
    let settings = JoinSettings {
        max_unacked: args.prefetch,
        session_timeout_ms: 0,
        ack_timeout_ms: args.ack_timeout_ms,
        max_deliveries: args.max_deliveries,
    };
    let m = client.join_group(&args.group, &args.topic, args.start, settings)?;
    let outcome = consume(client, args, &m);
    // Leaving hands what this member still holds to the others at once.
    let left = client.leave_group(&m);
    match outcome {
        Ok(()) => {}
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(Failure::Output(e)) => {
            eprintln!("keel: cannot write to stdout: {e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(Failure::Client(e)) => return Err(e),
    }
    left?;
    Ok(ExitCode::SUCCESS)
}

enum Failure {
    Client(ClientError),
    Output(std::io::Error),
}

fn consume(client: &Client, args: &ConsumeArgs, m: &crate::Membership) -> Result<(), Failure> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    let mut last_message = Instant::now();
    // Short enough to renew the session while idle.
    let poll = (m.session_timeout / 3).max(Duration::from_millis(10));
    loop {
        let left = args.max.map_or(u64::from(CHUNK), |max| max - printed);
        if left == 0 {
            return Ok(());
        }
        let wait = match args.idle_exit_ms {
            Some(ms) => {
                let deadline = last_message + Duration::from_millis(ms);
                let now = Instant::now();
                if now >= deadline {
                    return Ok(());
                }
                (deadline - now).min(poll)
            }
            None => poll,
        };
        let delivered = client
            .consume(m, left.min(u64::from(CHUNK)) as u32, wait)
            .map_err(Failure::Client)?;
        if delivered.is_empty() {
            continue;
        }
        last_message = Instant::now();
        for d in &delivered {
            if args.with_offsets {
                write!(
                    out,
                    "{}\t{}\t{}\t",
                    d.partition, d.message.offset, d.delivery_count
                )
                .map_err(Failure::Output)?;
            }
            out.write_all(d.message.value.as_deref().unwrap_or_default())
                .and_then(|()| out.write_all(b"\n"))
                .map_err(Failure::Output)?;
        }
        // Acknowledged only once printed and flushed: a message is never acknowledged before
        // its consumer is done with it.
        out.flush().map_err(Failure::Output)?;
        printed += delivered.len() as u64;
        if !args.no_ack {
            client
                .ack(m, &spans_of(&delivered), !args.fast_ack)
                .map_err(Failure::Client)?;
        }
    }
}
