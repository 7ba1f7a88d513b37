//! `ember demo`: the embedded pipeline on a model's held-out examples.

use super::args::PipelineArgs;
use crate::demo::{self, DemoOptions};
use crate::store::ModelName;
use clap::Args;

/// `ember demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Requests to send.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Every N-th request is realtime RPC, the others batch.
    #[arg(long, default_value_t = 4)]
    pub realtime_every: usize,
    /// Model to run: one in --model-repo with held-out examples (digits, ai4i, cwru shipped).
    #[arg(long, default_value = "digits")]
    pub model: ModelName,
    /// Print the report as JSON on the last line.
    #[arg(long)]
    pub json: bool,
    /// Pipeline limits.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let options = DemoOptions {
        requests: args.requests,
        realtime_every: args.realtime_every,
        batch: args.pipeline.batch(),
        repo: args.pipeline.repo.open()?,
        model: args.model,
        device: args.pipeline.device.open(&args.pipeline.repo.store)?,
    };
    let report = demo::run(&options).await?;
    println!(
        "{} requests to {} v{} (on {}, max batch {}): {} ok, {} errors, accuracy {:.4}",
        report.requests,
        report.model,
        report.version,
        report.device,
        report.max_batch_size,
        report.ok,
        report.errors,
        report.accuracy
    );
    println!(
        "pipeline {:.0} req/s vs model alone {:.0} req/s ({:.2}); latency p50 {:.2} ms, p99 {:.2} ms",
        report.pipeline_rps,
        report.model_only_rps,
        report.pipeline_efficiency,
        report.p50_ms,
        report.p99_ms
    );
    for n in &report.neighbours {
        println!("{:.3}  {:?} ~ {:?}", n.cosine, n.text, n.nearest);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(if report.errors == 0 { 0 } else { 1 })
}
