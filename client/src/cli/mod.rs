//! `keel`, the command-line tool: topic administration, produce from stdin, fetch and consume
//! to stdout.

mod consume;
mod fetch;
mod produce;
mod topic;

use std::process::ExitCode;
use std::time::Duration;

use crate::{Client, ClientError, ClientOptions};
use clap::{Parser, Subcommand};

/// Command-line client for keeld: manage topics, produce messages from stdin, fetch them, or
/// consume them as a member of a consumer group.
#[derive(Parser, Debug)]
#[command(name = "keel", version)]
struct Cli {
    /// Server address.
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        env = "KEEL_SERVER",
        default_value = "127.0.0.1:7070"
    )]
    server: String,
    /// Seconds to wait for an answer before giving up.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Produce one message per line of stdin (the newline is not part of the message).
    Produce(produce::ProduceArgs),
    /// Print messages of a partition, one value per line.
    Fetch(fetch::FetchArgs),
    /// Consume a topic in a consumer group: print each value on its own line, then
    /// acknowledge it (durably, unless --fast-ack).
    Consume(consume::ConsumeArgs),
}

/// Runs `keel` with the process's arguments; what the binary's `main` calls.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(cli.timeout),
        ..ClientOptions::default()
    };
    let client = || Client::connect_with(cli.server.as_str(), options.clone());
    match cli.command {
        Command::Topic(cmd) => topic::run(&client()?, cmd),
        // The producer has a connection of its own.
        Command::Produce(ref args) => Ok(produce::run(&cli.server, options.clone(), args)),
        Command::Fetch(ref args) => fetch::run(&client()?, args),
        Command::Consume(ref args) => consume::run(&client()?, args),
    }
}
