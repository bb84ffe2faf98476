//! `keel topic ...`

use std::process::ExitCode;

use crate::{Client, ClientError};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: letters, digits, '.', '_' and '-'.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
    /// List topics with their partition counts.
    List,
    /// Delete a topic and every message in it.
    Delete {
        /// Topic name.
        name: String,
    },
}

pub fn run(client: &Client, cmd: TopicCommand) -> Result<ExitCode, ClientError> {
    match cmd {
        TopicCommand::Create { name, partitions } => {
            client.create_topic(&name, partitions)?;
            println!("created topic {name} with {partitions} partitions");
        }
        TopicCommand::List => {
            for t in client.list_topics()? {
                println!("{}\t{}", t.name, t.partitions);
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name)?;
            println!("deleted topic {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
