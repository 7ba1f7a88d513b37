//! `ember queues declare`: the queue topology, without serving.

use super::args::BrokerArgs;
use crate::store::ModelName;
use crate::transport::queues;
use clap::Subcommand;

/// `ember queues ...`.
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Declare models' queues (requests, results, dead letters) without serving; idempotent.
    Declare {
        /// Models whose queues to declare.
        #[arg(long = "model", required = true, value_delimiter = ',')]
        models: Vec<ModelName>,
        /// The broker.
        #[command(flatten)]
        broker: BrokerArgs,
    },
}

/// Runs `command`.
pub async fn run(command: QueuesCommand) -> anyhow::Result<i32> {
    match command {
        QueuesCommand::Declare { models, broker } => {
            let transport = broker.connect().await?;
            for model in &models {
                transport.declare(model.as_str()).await?;
                println!("{}", queues::all(model.as_str()).join(" "));
            }
            Ok(0)
        }
    }
}
