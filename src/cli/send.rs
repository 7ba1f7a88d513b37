//! `ember send`: requests published without waiting for answers.

use super::args::{BrokerArgs, parse_lane};
use crate::client::chain::Chain;
use crate::client::send::{SendOptions, split_requests};
use crate::protocol::Lane;
use crate::store::ModelName;
use anyhow::Context;
use clap::Args;
use std::io::Read;
use std::time::Duration;

/// `ember send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Model to ask.
    #[arg(long)]
    pub model: ModelName,
    /// Version or alias (default: production).
    #[arg(long)]
    pub version: Option<String>,
    /// Queue lane: realtime or batch.
    #[arg(long, default_value = "batch", value_parser = parse_lane)]
    pub lane: Lane,
    /// Requests: one OIP V2 JSON document, or JSON Lines (one request per line); - for stdin.
    #[arg(long)]
    pub input: String,
    /// Answer to this queue instead of the model's result queue.
    #[arg(long)]
    pub reply_to: Option<String>,
    /// Requests not computed within this long (from now) are answered DEADLINE_EXCEEDED.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// Send the inputs as binary tensor data (the Open Inference Protocol's binary extension:
    /// smaller and faster to read than JSON numbers); a request that does not decode goes as it
    /// is, for the worker to answer why.
    #[arg(long)]
    pub binary: bool,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

pub async fn run(args: SendArgs) -> anyhow::Result<i32> {
    let mut input = Vec::new();
    match args.input.as_str() {
        "-" => std::io::stdin().read_to_end(&mut input)?,
        path => std::fs::File::open(path)
            .with_context(|| format!("cannot open {path}"))?
            .read_to_end(&mut input)?,
    };
    let bodies = split_requests(&input.into());
    let options = SendOptions {
        model: args.model.to_string(),
        version: args.version,
        lane: args.lane,
        reply_to: args.reply_to,
        deadline: args.deadline,
        binary: args.binary,
    };
    let transport = args.broker.connect_sending(args.binary).await?;
    let report = crate::client::send::send(transport, bodies, &options).await;
    for (position, error) in &report.failed {
        eprintln!("request {position}: {}", Chain(error));
    }
    eprintln!(
        "sent {} request(s) to {} (confirmed by the broker), {} failed",
        report.sent,
        report.queue,
        report.failed.len()
    );
    Ok(if report.failed.is_empty() { 0 } else { 1 })
}
