//! `ember batch submit`: a file of requests as one batch job.

use super::args::{BrokerArgs, StoreArgs, parse_bytes};
use super::{INTERRUPTED, shutdown_signal};
use crate::client::file::{self, FileJob};
use crate::client::{Client, DEFAULT_WINDOW};
use crate::store::ModelName;
use clap::builder::TypedValueParser;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `ember batch ...`.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Send a JSON Lines file of OIP requests as one job and write the answers, in input order,
    /// to a JSON Lines file. Interrupted (Ctrl-C, a kill), the same command continues where it
    /// stopped, without sending answered requests again.
    Submit(BatchSubmitArgs),
}

/// `ember batch submit`.
#[derive(Debug, Args)]
pub struct BatchSubmitArgs {
    /// Model to ask.
    #[arg(long)]
    pub model: ModelName,
    /// Version or alias (default: production).
    #[arg(long)]
    pub version: Option<String>,
    /// Requests: JSON Lines, one OIP V2 request per line (blank lines are skipped).
    #[arg(long)]
    pub input: PathBuf,
    /// Answers: JSON Lines, line N answering request N; its progress is kept in
    /// <OUTPUT>.ember-batch until the job is done.
    #[arg(long)]
    pub output: PathBuf,
    /// Requests sent and not yet answered at most.
    #[arg(long, default_value_t = DEFAULT_WINDOW,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub window: usize,
    /// Requests not computed within this long of being sent are answered DEADLINE_EXCEEDED.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// Answers larger than this (e.g. 1MiB) come back as blob claim checks (from workers with
    /// a --result-store) and are fetched into the output.
    #[arg(long, value_parser = parse_bytes)]
    pub blob_threshold: Option<u64>,
    /// Credentials to fetch claim-checked answers.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Send the inputs as binary tensor data (the Open Inference Protocol's binary extension);
    /// the output stays JSON Lines.
    #[arg(long)]
    pub binary: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as JSON on the last line.
    #[arg(long)]
    pub json: bool,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

pub async fn submit(args: BatchSubmitArgs) -> anyhow::Result<i32> {
    let transport = args.broker.connect_sending(args.binary).await?;
    let client = Client::from_arc(transport);
    let job = FileJob {
        model: args.model.to_string(),
        version: args.version,
        input: args.input,
        output: args.output,
        window: args.window,
        deadline: args.deadline,
        progress: !args.quiet,
        blob_threshold: args.blob_threshold,
        storage: std::sync::Arc::new(args.store.auth()),
        binary: args.binary,
    };
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    });
    let summary = file::submit(&client, &job, stop).await;
    client.transport().close().await;
    let summary = summary?;
    let resumed = summary
        .resumed_at
        .map_or_else(String::new, |n| format!(" (continued after {n})"));
    eprintln!(
        "{}: {} of {} requests answered{resumed}, {} errors, in {:.1} s; answers in {}",
        summary.job,
        summary.written,
        summary.requests,
        summary.errors,
        summary.seconds,
        job.output.display()
    );
    for error in &summary.first_errors {
        eprintln!("  {error}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(if summary.interrupted {
        eprintln!("interrupted: run the same command to continue");
        INTERRUPTED
    } else if summary.errors > 0 {
        1
    } else {
        0
    })
}
