//! Command line: subcommands and their flags (with `EMBER_*` environment fallbacks), one file
//! per command group (`serve.rs` for `ember serve`, `models.rs` for `ember models ...`) and the
//! flag groups they share in `args.rs`. Each subcommand calls into the library; no logic lives
//! here.

// Doc comments here are clap's help texts: `<NAME>` is a placeholder, not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

mod args;
mod batch;
mod demo;
mod gateway;
mod infer;
mod models;
mod queues;
mod send;
mod serve;
mod train;

pub use args::{
    AmqpArgs, Broker, BrokerArgs, Brokers, DeviceArgs, LimitsArgs, PipelineArgs, RepoArgs,
    SERVICEBUS_CONNECTION_STRING_ENV, SERVICEBUS_KEY_ENV, SERVICEBUS_KEY_NAME_ENV, ServiceBusArgs,
    StoreArgs, TransportArgs, TransportKind,
};
pub use batch::{BatchCommand, BatchSubmitArgs};
pub use demo::DemoArgs;
pub use gateway::GatewayArgs;
pub use infer::InferArgs;
pub use models::ModelsCommand;
pub use queues::QueuesCommand;
pub use send::SendArgs;
pub use serve::ServeArgs;
pub use train::TrainArgs;

use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};

/// Ember: event-driven ML inference from queues.
#[derive(Debug, Parser)]
#[command(name = "ember", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "EMBER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded pipeline on a model's held-out examples (the shipped digits, ai4i and
    /// cwru, or any trained model) and report accuracy and throughput.
    Demo(DemoArgs),
    /// Answer one request (OIP V2 JSON) and print the response.
    Infer(InferArgs),
    /// Publish requests to a model's queue without waiting for answers.
    Send(SendArgs),
    /// Serve the Open Inference Protocol V2 REST API, bridged onto the queues.
    Gateway(GatewayArgs),
    /// Batch jobs: a file of requests through a model's batch lane, answers to a file.
    Batch {
        /// What to do.
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Train a model and publish it as a new version.
    Train(TrainArgs),
    /// Serve models from a transport until SIGTERM / Ctrl-C.
    Serve(ServeArgs),
    /// The model repository: list, push, promote, pull and import versions.
    Models {
        /// What to do with models.
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// The broker's queues of a model (RabbitMQ or Service Bus): declare, delete.
    Queues {
        /// What to do with queues.
        #[command(subcommand)]
        command: QueuesCommand,
    },
}

/// Runs a parsed command; returns the process exit status.
/// Runs `command`; returns the process's exit status.
pub async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Demo(args) => demo::run(args).await,
        Command::Infer(args) => infer::run(args).await,
        Command::Send(args) => send::run(args).await,
        Command::Batch {
            command: BatchCommand::Submit(args),
        } => batch::submit(args).await,
        Command::Gateway(args) => gateway::run(args).await,
        Command::Queues { command } => queues::run(command).await,
        Command::Train(args) => train::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Models { command } => models::run(command).await,
    }
}

/// Exit status of a batch job interrupted by a signal (as a shell reports SIGINT).
pub const INTERRUPTED: i32 = 130;

/// Exit status of `models promote --if-better` when the candidate is not better.
pub const NOT_PROMOTED: i32 = 3;

pub(super) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
