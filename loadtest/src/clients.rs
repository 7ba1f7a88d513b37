//! The hybrid clients' overheads, measured side by side in one run against one `ember serve`
//! of a no-op (identity) model, so the figures are of the clients and the broker, not a model:
//! - `gateway_efficiency`: requests/s through `ember gateway` (HTTP, Open Inference Protocol
//!   V2) ÷ requests/s through `ember::client` RPC (what `ember infer` does), closed loop, the
//!   same requests in flight;
//! - `batch_submit_efficiency`: requests/s a batch job sends (`ember::client`'s batch sender,
//!   as `ember batch submit`: persistent, confirmed, 256 awaiting their confirm) ÷ raw lapin
//!   publishing of the same bodies with the same window to a quorum queue. Nobody consumes
//!   either queue: this is the submission rate alone.

use crate::baseline;
use crate::payloads::{self, Payload, Payloads};
use crate::ratios::{median, scratch_repo};
use crate::worker::Worker;
use anyhow::Context;
use ember::client::{BatchOptions, Client, InferOptions};
use ember::transport::Transport;
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use futures::StreamExt;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Turns of each side (odd: one is the median); the broker's throughput swings from one short
/// run to the next on a shared machine.
const ROUNDS: usize = 5;
/// Goal of both ratios.
pub const TARGET: f64 = 0.8;
/// Requests awaiting their confirm at once, on both sides of the submission ratio.
const SEND_AHEAD: usize = 256;

/// What `clients` measures with.
pub struct ClientsOptions {
    /// Broker URL.
    pub url: String,
    /// The `ember` binary.
    pub ember: PathBuf,
    /// Repository with the shipped digits model.
    pub model_repo: PathBuf,
    /// Requests per measurement.
    pub requests: usize,
    /// Requests in flight in the RPC and gateway runs.
    pub in_flight: usize,
    /// Binary tensor data both ways instead of JSON.
    pub binary: bool,
}

/// The figures.
#[derive(Debug, Serialize)]
pub struct ClientsReport {
    /// Request body size.
    pub body_bytes: usize,
    /// Requests in flight in the RPC and gateway runs.
    pub in_flight: usize,
    /// Each turn of RPC through `ember::client`.
    pub rpc_rps: Vec<f64>,
    /// Each turn through the gateway.
    pub gateway_rps: Vec<f64>,
    /// Median gateway ÷ median RPC.
    pub gateway_efficiency: f64,
    /// Each turn of raw confirmed publishing.
    pub raw_publish_rps: Vec<f64>,
    /// Each turn of batch-job submission.
    pub batch_submit_rps: Vec<f64>,
    /// Median batch submission ÷ median raw publishing.
    pub batch_submit_efficiency: f64,
}

impl ClientsReport {
    /// Whether both ratios reach [`TARGET`].
    pub fn meets_target(&self) -> bool {
        self.gateway_efficiency >= TARGET && self.batch_submit_efficiency >= TARGET
    }
}

/// Runs the scenario.
pub async fn run(options: &ClientsOptions) -> anyhow::Result<ClientsReport> {
    let scratch = tempfile::tempdir()?;
    let run = std::process::id();
    let (model, echo) = (format!("lt-cd-{run}"), format!("lt-ce-{run}"));
    scratch_repo(scratch.path(), &options.model_repo, &model, &echo).await?;
    let repo = scratch.path().to_str().unwrap_or_default().to_owned();
    let payloads = payloads::digits(options.requests, options.binary);
    let body_bytes = payloads[0].body.len();

    let worker = Worker::start(
        &options.ember,
        &options.url,
        &["--model", &echo, "--model-repo", &repo],
    )
    .await?;
    let (mut gateway, base) = start_gateway(&options.ember, &options.url, &repo).await?;
    let transport = AmqpTransport::connect(AmqpConfig::new(options.url.clone())).await?;
    let client = Arc::new(Client::new(transport.clone()));
    let http = reqwest::Client::new();
    let infer = format!("{base}/v2/models/{echo}/infer");
    eprintln!(
        "RPC and gateway to a no-op model ({} requests of {body_bytes} B, {} in flight), {ROUNDS} turns each",
        options.requests, options.in_flight
    );
    let (mut rpc_rps, mut gateway_rps) = (Vec::new(), Vec::new());
    // A first turn of each, not counted: connections, the gateway's manifest cache.
    for turn in 0..=ROUNDS {
        let rpc = closed_loop(&payloads, options.in_flight, |payload| {
            let (client, echo) = (client.clone(), echo.clone());
            async move {
                let options = InferOptions {
                    header_length: payload.header_length,
                    ..InferOptions::default()
                };
                let reply = client.call(&echo, payload.body, &options).await?;
                anyhow::ensure!(reply.properties.error_code.is_none(), "an error reply");
                Ok(())
            }
        })
        .await?;
        let through_gateway = closed_loop(&payloads, options.in_flight, |payload| {
            let (http, infer) = (http.clone(), infer.clone());
            async move {
                let request = match payload.header_length {
                    Some(length) => http
                        .post(infer)
                        .header("content-type", "application/octet-stream")
                        .header(ember::transport::headers::HEADER_LENGTH, length),
                    None => http.post(infer).header("content-type", "application/json"),
                };
                let response = request.body(payload.body).send().await?;
                anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
                response.bytes().await?;
                Ok(())
            }
        })
        .await?;
        if turn > 0 {
            rpc_rps.push(rpc);
            gateway_rps.push(through_gateway);
        }
    }
    gateway.kill().await?;
    worker.stop().await?;

    eprintln!("raw confirmed publishing and batch-job submission, {ROUNDS} turns each");
    let quiet = format!("lt-cq-{run}");
    transport.declare(&quiet).await?;
    let (mut raw_publish_rps, mut batch_submit_rps) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raw_publish_rps
            .push(baseline::raw_publish(&options.url, payloads::bodies(&payloads)).await?);
        batch_submit_rps.push(batch_submit(&client, &quiet, &payloads).await?);
        transport.delete(&quiet).await?;
        transport.declare(&quiet).await?;
    }
    for name in [&quiet, &echo, &model] {
        transport.delete(name).await?;
    }
    Ok(ClientsReport {
        body_bytes,
        in_flight: options.in_flight,
        gateway_efficiency: median(gateway_rps.clone()) / median(rpc_rps.clone()),
        batch_submit_efficiency: median(batch_submit_rps.clone()) / median(raw_publish_rps.clone()),
        rpc_rps,
        gateway_rps,
        raw_publish_rps,
        batch_submit_rps,
    })
}

/// Requests per second of sending every payload through `call`, `in_flight` at a time.
async fn closed_loop<F, Fut>(payloads: &Payloads, in_flight: usize, call: F) -> anyhow::Result<f64>
where
    F: Fn(Payload) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let lanes = (0..in_flight).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(body) = payloads.get(i) else {
                return Ok::<_, anyhow::Error>(());
            };
            call(body.clone()).await?;
        }
    });
    for lane in futures::future::join_all(lanes).await {
        lane?;
    }
    Ok(payloads.len() as f64 / started.elapsed().as_secs_f64())
}

/// Requests per second a batch job sends `payloads` to `model`'s batch queue.
async fn batch_submit(client: &Client, model: &str, payloads: &Payloads) -> anyhow::Result<f64> {
    let options = BatchOptions {
        window: payloads.len(),
        ..BatchOptions::default()
    };
    let job = client.batch(model, options).await?;
    let sender = job.sender().clone();
    let started = Instant::now();
    let mut sends = futures::stream::iter(payloads.iter().cloned().enumerate())
        .map(|(i, body)| {
            let sender = sender.clone();
            async move {
                sender
                    .send_framed(i as u64, body.body, body.header_length)
                    .await
            }
        })
        .buffered(SEND_AHEAD);
    while let Some(sent) = sends.next().await {
        sent?;
    }
    let rate = payloads.len() as f64 / started.elapsed().as_secs_f64();
    job.finish().await?;
    Ok(rate)
}

/// Starts `ember gateway` on a free port over `repo`; returns it and its base URL.
async fn start_gateway(ember: &Path, url: &str, repo: &str) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(ember)
        .args(["gateway", "--listen", "127.0.0.1:0", "--model-repo", repo])
        .env("EMBER_AMQP_URL", url)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} gateway", ember.display()))?;
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(base) = line.strip_prefix("ember gateway listening on ") {
                return Ok(base.to_owned());
            }
        }
        anyhow::bail!("ember gateway exited before listening")
    })
    .await
    .context("ember gateway did not listen within 30 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, base))
}

/// The report as Markdown.
pub fn markdown(report: &ClientsReport) -> String {
    let list = |values: &[f64]| {
        values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "| ratio | value | target | turns (req/s) |\n|---|---|---|---|\n\
         | gateway ÷ RPC (no-op model, {} in flight, {} B bodies) | {:.2} | ≥ {TARGET} | gateway {}; RPC {} |\n\
         | batch submission ÷ raw confirmed publish | {:.2} | ≥ {TARGET} | batch {}; raw {} |",
        report.in_flight,
        report.body_bytes,
        report.gateway_efficiency,
        list(&report.gateway_rps),
        list(&report.rpc_rps),
        report.batch_submit_efficiency,
        list(&report.batch_submit_rps),
        list(&report.raw_publish_rps),
    )
}
