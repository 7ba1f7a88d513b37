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
        repo: args.pipeline.repo.open_cached(&args.pipeline.cache)?,
        model: args.model,
        device: args.pipeline.device.open(&args.pipeline.cache)?,
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
    if let Some(data) = &report.data {
        println!("{data}");
    }
    // The ceiling is the model on full batches with nothing around it: a small model computes
    // far faster than any per-request path (decode, queue, batch, reply) can feed it.
    let bound = if report.pipeline_efficiency < 0.5 {
        "; the per-request path, not the model, sets the pace"
    } else {
        ""
    };
    println!(
        "throughput {:.0} req/s through the pipeline; the model alone on full batches: {:.0} req/s \
         ({:.0} % of that ceiling{bound})",
        report.pipeline_rps,
        report.model_only_rps,
        100.0 * report.pipeline_efficiency,
    );
    println!(
        "latency p50 {:.2} ms, p99 {:.2} ms, all {} requests sent at once (time queued behind \
         the burst included; `ember-loadtest run` measures latency at a steady rate)",
        report.p50_ms, report.p99_ms, report.requests
    );
    for n in &report.neighbours {
        println!("{:.3}  {:?} ~ {:?}", n.cosine, n.text, n.nearest);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(if report.errors == 0 { 0 } else { 1 })
}
