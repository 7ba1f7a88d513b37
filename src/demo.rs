//! `ember demo`: the embedded pipeline end to end. Starts a worker on the in-memory transport,
//! sends the model's held-out examples (digits images, AI4I processes) as a realtime + batch mix,
//! checks every answer against its label, and measures the pipeline against the same model run
//! directly on batches (its ceiling).

use crate::batcher::BatchConfig;
use crate::protocol::{Lane, Reply, TensorData, decode_reply, encode_request};
use crate::registry::Registry;
use crate::runtime::{BACKEND_NAME, ServeBackend};
use crate::store::{ModelName, Repository};
use crate::train::{self, Example};
use crate::transport::memory::MemoryTransport;
use crate::transport::{Message, Properties, Transport, queues};
use crate::worker::{Worker, WorkerConfig};
use anyhow::Context;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Queue the demo's realtime replies go to.
const REPLY_QUEUE: &str = "ember.demo.replies";

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Requests to send.
    pub requests: usize,
    /// Every `realtime_every`-th request is realtime RPC; the rest go to the batch lane.
    pub realtime_every: usize,
    /// Batching limits (also the batch size of the model-only baseline).
    pub batch: BatchConfig,
    /// Model repository.
    pub repo: Repository,
    /// Model to ask (one trained by `ember train`).
    pub model: ModelName,
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Requests sent.
    pub requests: usize,
    /// Answered with outputs.
    pub ok: usize,
    /// Answered with an error.
    pub errors: usize,
    /// Correct labels ÷ requests.
    pub accuracy: f64,
    /// Requests per second through the pipeline, first publish to last reply.
    pub pipeline_rps: f64,
    /// Examples per second of the model alone on batches of `max_batch_size`.
    pub model_only_rps: f64,
    /// `pipeline_rps ÷ model_only_rps`.
    pub pipeline_efficiency: f64,
    /// Median latency, publish to reply.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Batch size limit used.
    pub max_batch_size: usize,
    /// Model and version that answered.
    pub model: String,
    /// Version that answered.
    pub version: String,
    /// Compute backend.
    pub backend: &'static str,
}

/// Runs the demo.
pub async fn run(options: &DemoOptions) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(options.requests > 0, "--requests must be at least 1");
    let repo = options.repo.clone();
    let registry = Arc::new(Registry::new(repo.clone(), options.batch));
    let served = registry
        .get(options.model.as_str(), None)
        .await
        .with_context(|| format!("model {} in {}", options.model, repo.describe()))?;
    let manifest = served.manifest.clone();
    let examples = train::held_out_examples(&manifest)?;
    anyhow::ensure!(!examples.is_empty(), "the held-out split is empty");
    let example = |i: usize| &examples[i % examples.len()];

    let transport = MemoryTransport::new();
    let worker = Worker::new(
        Arc::new(transport.clone()),
        registry,
        WorkerConfig::for_batch_size(options.batch.max_batch_size),
    );
    let shutdown = CancellationToken::new();
    let models = [options.model.clone()];
    let serving = {
        let (worker, shutdown) = (worker.clone(), shutdown.clone());
        tokio::spawn(async move { worker.run(&models, shutdown).await })
    };
    let model = options.model.as_str();
    let mut replies = transport
        .subscribe(
            &[REPLY_QUEUE.to_owned(), queues::results(model)],
            options.requests,
        )
        .await?;

    let messages: Vec<(String, Message)> = (0..options.requests)
        .map(|i| {
            let lane = if i % options.realtime_every.max(1) == 0 {
                Lane::Realtime
            } else {
                Lane::Batch
            };
            let properties = Properties {
                message_id: Some(i.to_string()),
                reply_to: (lane == Lane::Realtime).then(|| REPLY_QUEUE.to_owned()),
                lane: Some(lane),
                ..Properties::default()
            };
            let body = encode_request(&i.to_string(), &example(i).inputs).into();
            (queues::requests(model, lane), Message { body, properties })
        })
        .collect();

    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(options.requests);
    for (queue, message) in messages {
        sent_at.push(Instant::now());
        transport.publish(&queue, message).await?;
    }
    let mut latencies = Vec::with_capacity(options.requests);
    let (mut ok, mut errors, mut correct) = (0, 0, 0);
    let mut answered = vec![false; options.requests];
    while latencies.len() < options.requests {
        let delivery = tokio::time::timeout(Duration::from_secs(60), replies.next())
            .await
            .ok()
            .flatten()
            .with_context(|| {
                format!(
                    "{} requests were never answered",
                    options.requests - latencies.len()
                )
            })?;
        let received = Instant::now();
        let index: usize = delivery
            .message
            .properties
            .correlation_id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .filter(|&i: &usize| i < options.requests && !answered[i])
            .context("a reply with an unknown or repeated correlation id")?;
        answered[index] = true;
        latencies.push(received - sent_at[index]);
        match decode_reply(&delivery.message.body).map_err(anyhow::Error::msg)? {
            Reply::Ok(response) => {
                ok += 1;
                let expected = example(index);
                let predicted = response.outputs.iter().find(|o| o.name == expected.output);
                correct += usize::from(predicted.is_some_and(|o| o.data == expected.expected));
            }
            Reply::Err(error) => {
                errors += 1;
                tracing::warn!(id = error.id, code = %error.code, "{}", error.error);
            }
        }
        delivery.settle.ack().await?;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    serving.await??;

    let model_only_rps =
        model_only_rps(&repo, &options.model, &manifest.version, options, &examples).await?;
    latencies.sort();
    let percentile = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    let pipeline_rps = options.requests as f64 / elapsed.as_secs_f64();
    Ok(DemoReport {
        requests: options.requests,
        ok,
        errors,
        accuracy: correct as f64 / options.requests as f64,
        pipeline_rps,
        model_only_rps,
        pipeline_efficiency: pipeline_rps / model_only_rps,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_batch_size: options.batch.max_batch_size,
        model: manifest.name.to_string(),
        version: manifest.version.to_string(),
        backend: BACKEND_NAME,
    })
}

/// The ceiling: `options.requests` held-out examples through the model, on batches of
/// `max_batch_size`, with no transport, decoding or batching in between (examples per second).
pub async fn model_only_rps(
    repo: &Repository,
    model: &ModelName,
    version: &crate::store::Version,
    options: &DemoOptions,
    examples: &[Example],
) -> anyhow::Result<f64> {
    let artifact = repo.load(model, version).await?;
    let (requests, batch_size) = (options.requests, options.batch.max_batch_size.max(1));
    let batches: Vec<(usize, Vec<TensorData>)> = (0..requests)
        .step_by(batch_size)
        .map(|start| {
            let rows = batch_size.min(requests - start);
            let first = &examples[start % examples.len()].inputs;
            let mut inputs: Vec<TensorData> = first
                .iter()
                .map(|t| TensorData::with_capacity_like(&t.data, rows * t.data.len()))
                .collect();
            for i in start..start + rows {
                let example = &examples[i % examples.len()].inputs;
                for (all, tensor) in inputs.iter_mut().zip(example) {
                    all.extend_from(&tensor.data, 0..tensor.data.len());
                }
            }
            (rows, inputs)
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        let net = artifact
            .manifest
            .architecture
            .load::<ServeBackend>(&artifact.weights, &Default::default())
            .map_err(anyhow::Error::msg)?;
        if let Some((rows, inputs)) = batches.first() {
            net.infer(*rows, inputs.clone())
                .map_err(anyhow::Error::msg)?;
        }
        let started = Instant::now();
        for (rows, inputs) in batches {
            net.infer(rows, inputs).map_err(anyhow::Error::msg)?;
        }
        Ok(requests as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}
