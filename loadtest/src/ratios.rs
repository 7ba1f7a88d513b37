//! `ember-loadtest ratios`: Ember's efficiency as ratios measured side by side in one run, so
//! they hold on a noisy machine:
//!
//! - `broker_efficiency`: a no-op (identity) model through Ember ÷ the raw lapin request → reply
//!   loop (an answered request is two messages through the broker; the one-way publish → ack
//!   loop is reported beside it, and is about twice as fast);
//! - `e2e_efficiency`: digits through Ember ÷ the same model in-process on batches of the size;
//! - `batching_gain`: digits through Ember with max batch 64 ÷ with max batch 1;
//! - `tail_ratio`: realtime p99 at half the max throughput ÷ unloaded realtime p50;
//! - `e2e_vs_ceiling` (no target): digits through Ember ÷ the lower of the two ceilings, raw
//!   request → reply loop and in-process: how close Ember comes to what binds on this machine.

use crate::baseline;
use crate::load::{self, Arrival, LoadReport, LoadSpec, Target};
use crate::payloads;
use crate::worker::Worker;
use bytes::Bytes;
use ember::batcher::BatchConfig;
use ember::demo::{DemoOptions, model_only_rps};
use ember::models::Architecture;
use ember::store::{Manifest, ModelName, Repository, Version, sha256_hex};
use ember::train::{digits, held_out_examples};
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The targets the issue sets.
pub const TARGETS: [(&str, f64, bool); 4] = [
    ("broker_efficiency", 0.80, true),
    ("e2e_efficiency", 0.90, true),
    ("batching_gain", 8.0, true),
    ("tail_ratio", 3.0, false),
];

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct RatiosOptions {
    /// The broker.
    pub url: String,
    /// The `ember` binary to serve with.
    pub ember: PathBuf,
    /// Repository holding the digits model.
    pub model_repo: PathBuf,
    /// Requests per throughput measurement.
    pub requests: usize,
    /// Requests in flight in the closed-loop (max throughput) runs.
    pub in_flight: usize,
    /// Largest batch of the batched runs.
    pub max_batch: usize,
    /// Binary tensor data both ways instead of JSON.
    pub binary: bool,
}

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RatiosReport {
    /// The four ratios.
    pub ratios: BTreeMap<String, f64>,
    /// Whether each ratio meets its target.
    pub meets_target: BTreeMap<String, bool>,
    /// Requests sent and never answered, over every run (must be 0).
    pub lost: u64,
    /// The raw one-way loop's messages per second.
    pub raw_broker_rps: f64,
    /// The raw request → reply loop's requests per second (median of its turns).
    pub raw_rpc_rps: f64,
    /// Each turn of the raw request → reply loop.
    pub raw_rpc_turns_rps: Vec<f64>,
    /// The model alone, images per second.
    pub in_process_rps: f64,
    /// Request body size.
    pub body_bytes: usize,
    /// Each Ember run.
    pub runs: BTreeMap<String, LoadReport>,
}

/// A repository in `dir` with `name` a copy of the digits model and `echo` an identity model of
/// the same input width; names unique to this run, so no earlier run's queues interfere.
pub async fn scratch_repo(dir: &Path, source: &Path, name: &str, echo: &str) -> anyhow::Result<()> {
    let production = Version::parse("production")?;
    let source = Repository::open(source.to_str().unwrap_or("models"))?;
    let digits_model = ModelName::parse("digits")?;
    let version = source.resolve(&digits_model, &production).await?;
    let artifact = source.load(&digits_model, &version).await?;
    let repo = Repository::open(dir.to_str().unwrap_or_default())?;
    let mut manifest = artifact.manifest;
    manifest.name = ModelName::parse(name)?;
    repo.publish(&manifest, artifact.weights, &artifact.assets)
        .await?;
    repo.set_alias(&manifest.name, &production, &manifest.version)
        .await?;
    let architecture = Architecture::Identity {
        width: digits::PIXELS,
    };
    let (inputs, outputs) = architecture.signature();
    let echo = Manifest {
        name: ModelName::parse(echo)?,
        version: Version::parse("1")?,
        architecture,
        precision: Default::default(),
        inputs,
        outputs,
        labels: Vec::new(),
        sha256: sha256_hex(&[]),
        assets: Default::default(),
        source: None,
        metrics: BTreeMap::new(),
        training: None,
        created_at: manifest.created_at,
    };
    repo.publish(&echo, Bytes::new(), &Default::default())
        .await?;
    repo.set_alias(&echo.name, &production, &echo.version)
        .await?;
    Ok(())
}

/// Turns of the raw loop and of Ember for `broker_efficiency` (odd: one is the median).
const ROUNDS: usize = 3;

/// The middle value of `values` (odd length).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the scenario (each worker configuration freshly started).
pub async fn run(options: &RatiosOptions) -> anyhow::Result<RatiosReport> {
    let scratch = tempfile::tempdir()?;
    let run = std::process::id();
    let (model, echo) = (format!("lt-digits-{run}"), format!("lt-echo-{run}"));
    scratch_repo(scratch.path(), &options.model_repo, &model, &echo).await?;
    let repo_arg = scratch.path().to_str().unwrap_or_default().to_owned();
    let payloads = payloads::digits(options.requests, options.binary);
    let body_bytes = payloads[0].body.len();
    let n = options.requests;
    let batch = options.max_batch.to_string();
    let prefetch = 2 * options.max_batch as u16;

    let spec = |model: &str, arrival: Arrival, requests: usize, realtime_share: f64| LoadSpec {
        label: model.to_owned(),
        worker_pid: None,
        targets: vec![Target {
            model: model.to_owned(),
            payloads: payloads.clone(),
        }],
        arrival,
        requests,
        realtime_share,
        deadline: None,
        seed: 7,
        drain: Duration::from_secs(30),
    };
    let closed = Arrival::Closed {
        in_flight: options.in_flight,
    };
    let mut runs = BTreeMap::new();
    let serve = |model: &str, batch: &str| {
        let args = [
            "--model",
            model,
            "--model-repo",
            &repo_arg,
            "--max-batch-size",
            batch,
        ]
        .map(str::to_owned);
        let (ember, url) = (options.ember.clone(), options.url.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Worker::start(&ember, &url, &args).await
        }
    };
    // Load on `worker`, its memory and CPU sampled.
    let load_on = async |worker: &Worker, mut spec: LoadSpec| {
        spec.worker_pid = worker.pid();
        load::run(&options.url, &spec).await
    };
    let measure = async |worker: Worker, spec: LoadSpec| -> anyhow::Result<LoadReport> {
        let report = load_on(&worker, spec).await;
        worker.stop().await?;
        report
    };

    eprintln!("raw broker loop ({n} requests of {body_bytes} B, prefetch {prefetch})");
    let raw = baseline::raw_broker(&options.url, payloads::bodies(&payloads), prefetch).await?;

    // The broker's throughput swings by half from one short run to the next on a shared
    // machine: the raw loop and Ember take turns, and each ratio side is the median of its turns.
    eprintln!(
        "raw request → reply loop and no-op model through Ember (closed loop, {} in flight), \
         {ROUNDS} turns each",
        options.in_flight
    );
    let worker = serve(&echo, &batch).await?;
    let (mut raw_rpcs, mut echo_runs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raw_rpcs
            .push(baseline::raw_rpc(&options.url, payloads::bodies(&payloads), prefetch).await?);
        echo_runs.push(load_on(&worker, spec(&echo, closed.clone(), n, 0.0)).await?);
    }
    worker.stop().await?;
    let raw_rpc = median(raw_rpcs.clone());
    let echo_rps = median(echo_runs.iter().map(|r| r.throughput_rps).collect());
    eprintln!("raw {raw_rpcs:.0?} req/s, Ember no-op model {echo_rps:.0} req/s (median)");
    for (turn, run) in echo_runs.into_iter().enumerate() {
        runs.insert(format!("echo_max_turn_{}", turn + 1), run);
    }

    eprintln!("digits through Ember, max batch {batch}");
    let worker = serve(&model, &batch).await?;
    let max = load_on(&worker, spec(&model, closed.clone(), n, 0.0)).await?;
    let unloaded = load_on(
        &worker,
        spec(
            &model,
            Arrival::Fixed { rate: 50.0 },
            (n / 100).clamp(50, 500),
            1.0,
        ),
    )
    .await?;
    let half_rate = max.throughput_rps / 2.0;
    let half = measure(
        worker,
        spec(&model, Arrival::Poisson { rate: half_rate }, n / 2, 1.0),
    )
    .await?;

    eprintln!("digits through Ember, max batch 1");
    let single = measure(serve(&model, "1").await?, spec(&model, closed, n / 4, 0.0)).await?;

    eprintln!("digits in-process on batches of {batch}");
    let digits_model = ModelName::parse("digits")?;
    let source = Repository::open(options.model_repo.to_str().unwrap_or("models"))?;
    let version = source
        .resolve(&digits_model, &Version::parse("production")?)
        .await?;
    let demo = DemoOptions {
        requests: n,
        realtime_every: 1,
        batch: BatchConfig {
            max_batch_size: options.max_batch,
            ..BatchConfig::default()
        },
        repo: source.clone(),
        model: digits_model.clone(),
        device: ember::runtime::Device::Cpu,
    };
    let examples = held_out_examples(&source.load(&digits_model, &version).await?.manifest)?;
    let in_process = model_only_rps(&source, &digits_model, &version, &demo, &examples).await?;

    let ratios = BTreeMap::from([
        ("broker_efficiency".to_owned(), echo_rps / raw_rpc),
        ("e2e_efficiency".to_owned(), max.throughput_rps / in_process),
        (
            "e2e_vs_ceiling".to_owned(),
            max.throughput_rps / raw_rpc.min(in_process),
        ),
        (
            "batching_gain".to_owned(),
            max.throughput_rps / single.throughput_rps,
        ),
        (
            "tail_ratio".to_owned(),
            half.overall.p99_ms / unloaded.overall.p50_ms,
        ),
    ]);
    for (name, report) in [
        ("digits_max", max),
        ("digits_unloaded", unloaded),
        ("digits_half_load", half),
        ("digits_max_batch_1", single),
    ] {
        runs.insert(name.to_owned(), report);
    }
    let meets_target = TARGETS
        .iter()
        .map(|(name, target, at_least)| {
            let value = ratios[*name];
            let met = if *at_least {
                value >= *target
            } else {
                value <= *target
            };
            ((*name).to_owned(), met)
        })
        .collect();
    let lost = runs.values().map(|r| r.lost).sum();
    let cleanup = AmqpTransport::connect(AmqpConfig::new(options.url.clone())).await?;
    for model in [&model, &echo] {
        cleanup.delete(model).await?;
    }
    Ok(RatiosReport {
        ratios,
        meets_target,
        lost,
        raw_broker_rps: raw,
        raw_rpc_rps: raw_rpc,
        raw_rpc_turns_rps: raw_rpcs,
        in_process_rps: in_process,
        body_bytes,
        runs,
    })
}

/// A Markdown summary of `report`.
pub fn markdown(report: &RatiosReport) -> String {
    let mut out = String::from("| ratio | value | target | met |\n|---|---|---|---|\n");
    for (name, target, at_least) in TARGETS {
        out += &format!(
            "| {name} | {:.2} | {} {target} | {} |\n",
            report.ratios[name],
            if at_least { "≥" } else { "≤" },
            if report.meets_target[name] {
                "yes"
            } else {
                "no"
            }
        );
    }
    out += &format!(
        "\nraw request → reply loop {:.0} req/s (one-way loop {:.0} msg/s), model in-process {:.0} req/s: \
         digits through Ember reaches {:.2} of the lower ceiling (e2e_vs_ceiling); body {} B, lost {}\n\n",
        report.raw_rpc_rps,
        report.raw_broker_rps,
        report.in_process_rps,
        report.ratios["e2e_vs_ceiling"],
        report.body_bytes,
        report.lost
    );
    out += "| run | sent | answered | lost | errors | req/s | p50 ms | p99 ms | p99.9 ms | max ms | worker cores |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (name, run) in &report.runs {
        let o = &run.overall;
        out += &format!(
            "| {name} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            run.sent,
            run.answered,
            run.lost,
            o.errors,
            run.throughput_rps,
            o.p50_ms,
            o.p99_ms,
            o.p999_ms,
            o.max_ms,
            run.worker_cpu_cores()
                .map_or("-".to_owned(), |c| format!("{c:.2}"))
        );
    }
    out
}
