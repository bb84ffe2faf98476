//! `keel fetch`: print the values of a partition's messages, one per line.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crate::{Client, ClientError, FetchOptions};
use clap::Args;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Topic to read.
    topic: String,
    /// Partition to read.
    #[arg(long, default_value_t = 0)]
    partition: u32,
    /// First offset to print.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// Keep waiting for new messages at the end of the log instead of stopping.
    #[arg(long)]
    follow: bool,
    /// Print "OFFSET<TAB>VALUE" instead of the value alone.
    #[arg(long)]
    with_offsets: bool,
}

pub fn run(client: &Client, args: &FetchArgs) -> Result<ExitCode, ClientError> {
    match print_messages(client, args) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The reader went away (`keel fetch ... | head`): nothing is wrong.
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        Err(Failure::Output(e)) => {
            eprintln!("keel: cannot write to stdout: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(Failure::Client(e)) => Err(e),
    }
}

enum Failure {
    Client(ClientError),
    Output(std::io::Error),
}

fn print_messages(client: &Client, args: &FetchArgs) -> Result<(), Failure> {
    let options = FetchOptions {
        max_wait: if args.follow {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        },
        ..FetchOptions::default()
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut offset = args.offset;
    let mut printed = 0u64;
    loop {
        let fetched = client
            .fetch(&args.topic, args.partition, offset, options)
            .map_err(Failure::Client)?;
        for m in fetched.messages(offset).map_err(Failure::Client)? {
            if args.max.is_some_and(|max| printed >= max) {
                break;
            }
            if args.with_offsets {
                write!(out, "{}\t", m.offset).map_err(Failure::Output)?;
            }
            out.write_all(m.value.as_deref().unwrap_or_default())
                .and_then(|()| out.write_all(b"\n"))
                .map_err(Failure::Output)?;
            printed += 1;
        }
        out.flush().map_err(Failure::Output)?;
        if args.max.is_some_and(|max| printed >= max) {
            return Ok(());
        }
        offset = fetched.next_offset.max(offset);
        if !args.follow && fetched.at_end() {
            return Ok(());
        }
    }
}
