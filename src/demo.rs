//! `ember demo`: the embedded pipeline end to end. Starts a worker on the in-memory transport,
//! sends the model's held-out examples (digits images, AI4I processes, vibration windows) as a
//! realtime + batch mix and checks every answer against its label — or, for a text embedder,
//! sends paraphrase pairs and checks that each sentence's nearest neighbour is its partner —
//! and measures the pipeline against the same model run directly on batches (its ceiling).

use crate::batcher::BatchConfig;
use crate::models::Architecture;
use crate::protocol::{DataType, Lane, Reply, Tensor, TensorData, decode_reply, encode_request};
use crate::registry::Registry;
use crate::runtime::Device;
use crate::store::{Manifest, ModelName, Repository};
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
    /// Where the model runs.
    pub device: Device,
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
    /// Correct labels ÷ requests (text: sentences whose nearest neighbour is their paraphrase).
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
    /// Where the model ran (`cpu`, `cuda:0`).
    pub device: String,
    /// The held-out examples' data set (from the version's training record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Text embedders: each demo sentence's nearest other sentence.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub neighbours: Vec<Neighbour>,
}

/// A sentence and the most similar other one.
#[derive(Debug, Clone, Serialize)]
pub struct Neighbour {
    /// The sentence.
    pub text: String,
    /// The most similar other sentence.
    pub nearest: String,
    /// Their cosine similarity.
    pub cosine: f64,
}

/// Paraphrase pairs (sentences 2k and 2k+1) of about 20 tokens, across Ember's use cases.
const PARAPHRASES: [&str; 16] = [
    "The pump on line three is vibrating more than usual and may need maintenance soon.",
    "Line three's pump shakes abnormally, so it will probably have to be serviced before long.",
    "Our quarterly revenue grew by twelve percent thanks to strong sales in Europe.",
    "Strong European sales lifted the company's income by twelve percent this quarter.",
    "A cat is sleeping on the warm windowsill in the afternoon sun.",
    "In the afternoon sunshine, a kitten naps on the heated window ledge.",
    "How do I reset my password if I no longer have access to my email?",
    "I lost access to my email account; how can I change my login password?",
    "The train to Amsterdam was cancelled because of a signal failure near the station.",
    "A signalling fault close to the station led to the cancellation of the Amsterdam train.",
    "Regular exercise and a balanced diet lower the risk of heart disease.",
    "Eating well and working out often reduce your chances of cardiovascular illness.",
    "The spindle motor overheated and the machine shut down during the night shift.",
    "During the night shift the machine stopped after its spindle motor got too hot.",
    "Heavy rain is expected across the region tomorrow, with possible flooding near rivers.",
    "Forecasters predict strong rainfall in the area tomorrow and rivers may flood.",
];

/// The demo's requests for `manifest`'s model: held-out examples with their answers, or for a
/// text embedder the paraphrases (whose answers are checked together, in [`score`]).
fn examples(manifest: &Manifest) -> anyhow::Result<Vec<Example>> {
    if !matches!(manifest.architecture, Architecture::SentenceBert(_)) {
        return train::held_out_examples(manifest);
    }
    let input = manifest
        .inputs
        .first()
        .context("the manifest has no inputs")?;
    Ok(PARAPHRASES
        .iter()
        .map(|text| Example {
            inputs: vec![Tensor {
                name: input.name.clone(),
                shape: vec![1],
                datatype: DataType::Bytes,
                data: TensorData::Bytes(vec![(*text).to_owned()]),
            }],
            output: "embedding",
            // Not compared one by one: `score` compares the sentences with each other.
            expected: TensorData::F32(Vec::new()),
        })
        .collect())
}

/// Accuracy of the `answers` (the compared output of each request, `None` if it failed), and
/// for text each sentence's nearest neighbour.
fn score(
    manifest: &Manifest,
    examples: &[Example],
    answers: &[Option<TensorData>],
) -> (f64, Vec<Neighbour>) {
    if !matches!(manifest.architecture, Architecture::SentenceBert(_)) {
        let correct = answers
            .iter()
            .enumerate()
            .filter(|(i, a)| a.as_ref() == Some(&examples[i % examples.len()].expected))
            .count();
        return (correct as f64 / answers.len() as f64, Vec::new());
    }
    let vectors: Vec<Option<&[f32]>> = (0..PARAPHRASES.len())
        .map(|i| answers.get(i)?.as_ref()?.as_f32())
        .collect();
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum::<f64>();
    let neighbours: Vec<(usize, Neighbour)> = vectors
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let (j, similarity) = vectors
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .filter_map(|(j, w)| Some((j, cosine((*v)?, (*w)?))))
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            let neighbour = Neighbour {
                text: PARAPHRASES[i].into(),
                nearest: PARAPHRASES[j].into(),
                cosine: similarity,
            };
            Some((usize::from(j == i ^ 1), neighbour))
        })
        .collect();
    let paired: usize = neighbours.iter().map(|(hit, _)| hit).sum();
    let accuracy = paired as f64 / PARAPHRASES.len().min(answers.len()) as f64;
    (accuracy, neighbours.into_iter().map(|(_, n)| n).collect())
}

/// Runs the demo.
pub async fn run(options: &DemoOptions) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(options.requests > 0, "--requests must be at least 1");
    let repo = options.repo.clone();
    let registry = Arc::new(Registry::new(repo.clone(), options.batch).on_device(options.device));
    let served = registry
        .get(options.model.as_str(), None)
        .await
        .with_context(|| format!("model {} in {}", options.model, repo.describe()))?;
    let manifest = served.manifest.clone();
    let examples = examples(&manifest)?;
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
    let (mut ok, mut errors) = (0, 0);
    let mut answers: Vec<Option<TensorData>> = vec![None; options.requests];
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
                let output = example(index).output;
                answers[index] = response
                    .outputs
                    .into_iter()
                    .find(|o| o.name == output)
                    .map(|o| o.data);
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
    let (accuracy, neighbours) = score(&manifest, &examples, &answers);
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
        accuracy,
        pipeline_rps,
        model_only_rps,
        pipeline_efficiency: pipeline_rps / model_only_rps,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_batch_size: options.batch.max_batch_size,
        model: manifest.name.to_string(),
        version: manifest.version.to_string(),
        device: options.device.to_string(),
        data: manifest.training.as_ref().map(|t| {
            let held_out = examples.len();
            format!("{held_out} held-out examples of {}", t.dataset)
        }),
        neighbours,
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
    let (batch, device) = (options.batch, options.device);
    tokio::task::spawn_blocking(move || {
        let manifest = &artifact.manifest;
        let net = device.load(
            &manifest.architecture,
            &artifact.weights,
            &artifact.assets,
            batch.max_batch_tokens,
            manifest.precision,
        )?;
        if let Some((rows, inputs)) = batches.first() {
            net.infer(*rows, inputs.clone())?;
        }
        let started = Instant::now();
        for (rows, inputs) in batches {
            net.infer(rows, inputs)?;
        }
        Ok(requests as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}
