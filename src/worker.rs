//! The worker: consumes each model's request queues, decodes and validates each request against
//! the served version's manifest, batches and computes it, and publishes the result before the
//! delivery is acknowledged.

use crate::batcher::Job;
use crate::protocol::{
    ErrorCode, ErrorResponse, InferError, Lane, SelectedOutput, ValidatedInputs,
    decode_framed_request, request_id, select_outputs, validate,
};
use crate::registry::Registry;
use crate::results::{self, Publisher};
use crate::store::Manifest;
use crate::store::ModelName;
use crate::telemetry::Health;
use crate::telemetry::metrics::ModelMetrics;
use crate::transport::{Delivery, Subscription, Transport, TransportError, queues};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default for `--max-request-rows`.
pub const DEFAULT_MAX_REQUEST_ROWS: usize = 4096;

/// Deliveries a queue's prefetch holds beyond two batches: those whose answers are published
/// and wait for the broker's confirm before their ack. Without them a worker at
/// `--max-batch-size 1` (prefetch 2) waited a broker round trip per request and idled its
/// model (~920 req/s on 0.38 cores); a confirm takes ~1–2 ms, so 64 covers ~30k answers/s.
pub const CONFIRM_WINDOW: usize = 64;

/// What one request may be: every entry point ([`Worker`], the gateway, `ember infer`) admits
/// requests through [`admit`] with these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Requests with larger bodies are answered RESOURCE_EXHAUSTED unparsed.
    pub max_request_bytes: usize,
    /// Requests with more rows are answered RESOURCE_EXHAUSTED uncomputed (a request larger
    /// than a batch runs alone, so this bounds what one request can make a worker allocate).
    pub max_request_rows: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: crate::protocol::DEFAULT_MAX_REQUEST_BYTES,
            max_request_rows: DEFAULT_MAX_REQUEST_ROWS,
        }
    }
}

/// A request that passed every check: its id (if the body had one), its validated inputs and
/// the outputs it asks for.
#[derive(Debug)]
pub struct Admitted {
    /// The body's `id`.
    pub id: Option<String>,
    /// The inputs, validated against the manifest.
    pub inputs: ValidatedInputs,
    /// The outputs asked for, each JSON or binary.
    pub selected: Vec<SelectedOutput>,
}

/// The one validation pipeline: decodes `body` (JSON, or with `header_length` binary-framed)
/// within `limits`, checks it against `manifest` (declared inputs, the outputs asked for, the
/// architecture's own value checks) and its rows against `limits`. A refusal carries the body's
/// id when it could be read.
pub fn admit(
    body: &[u8],
    header_length: Option<usize>,
    manifest: &Manifest,
    limits: &RequestLimits,
) -> Result<Admitted, (InferError, Option<String>)> {
    let mut request = decode_framed_request(body, header_length, limits.max_request_bytes)
        .map_err(|e| (e.error, e.id))?;
    let id = request.id.take();
    let refuse = |error| (error, id.clone());
    let selected = select_outputs(&request, &manifest.outputs).map_err(refuse)?;
    let inputs = validate(request, &manifest.inputs).map_err(refuse)?;
    manifest.architecture.check(&inputs).map_err(refuse)?;
    let limit = limits.max_request_rows;
    if inputs.rows > limit {
        let message = format!(
            "the request has {} rows; a worker takes at most {limit} per request: split it",
            inputs.rows
        );
        return Err(refuse(InferError::new(
            ErrorCode::ResourceExhausted,
            message,
        )));
    }
    Ok(Admitted {
        id,
        inputs,
        selected,
    })
}

/// Why a worker could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A model named to serve has no servable `production` version.
    #[error("cannot serve model {model} from {repository}: {}", error.message)]
    Model {
        /// The model.
        model: ModelName,
        /// Where it was looked for.
        repository: String,
        /// Why (`NOT_FOUND`: no such model or version; `INTERNAL`: it failed to load).
        error: InferError,
    },
    /// The broker failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Worker settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// What one request may be.
    pub limits: RequestLimits,
    /// Unsettled deliveries per request queue (each model has two).
    pub prefetch: usize,
    /// Internal failures are retried this often before dead-lettering.
    pub max_redeliveries: u32,
    /// How often to poll the models' aliases for promotions (hot reload).
    pub reload_interval: Duration,
}

impl WorkerConfig {
    /// Defaults for a batcher of `max_batch_size`: prefetch `2 × max_batch_size +`
    /// [`CONFIRM_WINDOW`] per queue, so one full batch can form while the previous one
    /// computes and the answers before it wait for their publisher confirms.
    pub fn for_batch_size(max_batch_size: usize) -> Self {
        Self {
            limits: RequestLimits::default(),
            prefetch: 2 * max_batch_size.max(1) + CONFIRM_WINDOW,
            max_redeliveries: results::DEFAULT_MAX_REDELIVERIES,
            reload_interval: crate::registry::DEFAULT_RELOAD_INTERVAL,
        }
    }
}

/// Serves models from a transport.
#[derive(Clone)]
pub struct Worker {
    transport: Arc<dyn Transport>,
    publisher: Publisher,
    registry: Arc<Registry>,
    config: WorkerConfig,
    in_flight: TaskTracker,
    health: Arc<Health>,
    /// When the last delivery was taken, in ms after `started` (for `--exit-when-idle`);
    /// [`NOT_SERVING`] until the models are subscribed.
    last_taken_ms: Arc<AtomicU64>,
    started: Instant,
}

impl Worker {
    /// A worker answering from `registry`'s models over `transport`.
    pub fn new(
        transport: Arc<dyn Transport>,
        registry: Arc<Registry>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            publisher: Publisher::new(transport.clone(), config.max_redeliveries),
            transport,
            registry,
            config,
            in_flight: TaskTracker::new(),
            health: Health::new(),
            last_taken_ms: Arc::new(AtomicU64::new(NOT_SERVING)),
            started: Instant::now(),
        }
    }

    /// Reports readiness to `health`: ready once every model is subscribed, not ready from
    /// the moment `run`'s shutdown begins.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = health;
        self
    }

    /// Cancels `shutdown` (a graceful drain) once no request has been taken for `idle` and
    /// none is in flight: a ScaledJob's worker exits when its queue is empty.
    pub async fn stop_when_idle(&self, idle: Duration, shutdown: CancellationToken) {
        let check_every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(check_every) => {}
            }
            let last_taken = self.last_taken_ms.load(Ordering::Relaxed);
            if last_taken == NOT_SERVING {
                continue; // still loading models: idle time starts once they are served
            }
            let last_taken = Duration::from_millis(last_taken);
            if self.in_flight.is_empty()
                && self.started.elapsed().saturating_sub(last_taken) >= idle
            {
                tracing::info!(?idle, "no request for the idle time; stopping");
                shutdown.cancel();
                return;
            }
        }
    }

    /// Stores answers over their request's `ember-blob-threshold` in `claim_checks`.
    pub fn with_claim_checks(mut self, claim_checks: results::ClaimChecks) -> Self {
        self.publisher = self.publisher.with_claim_checks(claim_checks);
        self
    }

    /// [`run`](Self::run), then, once `shutdown` is cancelled, at most `drain_timeout` to
    /// answer and settle what was taken and close the transport: `Ok(true)` if that finished,
    /// `Ok(false)` if time ran out (whatever is unsettled goes back to the broker).
    pub async fn serve(
        &self,
        models: &[ModelName],
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<bool, ServeError> {
        let drain_expired = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        };
        tokio::select! {
            served = self.run(models, shutdown.clone()) => {
                served?;
                self.transport.close().await;
                Ok(true)
            }
            () = drain_expired => {
                tracing::error!(?drain_timeout, "drain timed out; unanswered requests go back to the broker");
                Ok(false)
            }
        }
    }

    /// Loads `models` (failing, before declaring any queue, if one's `production` cannot be
    /// served), declares their queues and serves them (switching promoted versions in as
    /// [`Registry::watch`] finds them) until `shutdown`; then stops taking
    /// requests, answers those already taken (graceful drain) and returns once each is settled.
    pub async fn run(
        &self,
        models: &[ModelName],
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        for model in models {
            let versions =
                self.registry
                    .preload(model)
                    .await
                    .map_err(|error| ServeError::Model {
                        model: model.clone(),
                        repository: self.registry.repository().describe(),
                        error,
                    })?;
            tracing::info!(%model, ?versions, "model loaded");
        }
        let mut consumers = tokio::task::JoinSet::new();
        for model in models {
            self.transport.declare(model.as_str()).await?;
            let queues =
                [Lane::Realtime, Lane::Batch].map(|lane| queues::requests(model.as_str(), lane));
            let subscription = self
                .transport
                .subscribe(&queues, self.config.prefetch)
                .await?;
            let (worker, model, shutdown) = (self.clone(), model.to_string(), shutdown.clone());
            consumers.spawn(async move { worker.consume(model, subscription, shutdown).await });
        }
        tracing::info!(served = ?self.registry.served(), "worker ready");
        self.health.set_serving();
        // Idle time counts from now, not from the start of the models' loading.
        let since_start = self.started.elapsed().as_millis() as u64;
        self.last_taken_ms.store(since_start, Ordering::Relaxed);
        let health = self.health.clone();
        let draining = shutdown.clone();
        tokio::spawn(async move {
            draining.cancelled().await;
            health.set_draining();
        });
        let watcher = tokio::spawn({
            let (registry, interval) = (self.registry.clone(), self.config.reload_interval);
            let stop = shutdown.clone();
            async move { registry.watch(interval, stop).await }
        });
        // Subscriptions live until every delivery they handed out is settled.
        let subscriptions = consumers.join_all().await;
        watcher.abort();
        self.in_flight.close();
        self.in_flight.wait().await;
        for subscription in subscriptions {
            subscription.close().await;
        }
        tracing::info!("worker stopped: every request taken was answered and settled");
        Ok(())
    }

    async fn consume(
        &self,
        model: String,
        mut subscription: Box<dyn Subscription>,
        shutdown: CancellationToken,
    ) -> Box<dyn Subscription> {
        let realtime = queues::requests(&model, Lane::Realtime);
        let metrics = Arc::new(ModelMetrics::new(&model));
        let mut stopping = false;
        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled(), if !stopping => {
                    // Stop taking new requests, then answer the ones already taken.
                    subscription.stop().await;
                    stopping = true;
                    continue;
                }
                delivery = subscription.next() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            let lane = if delivery.queue == realtime {
                Lane::Realtime
            } else {
                Lane::Batch
            };
            self.accept(&metrics, lane, delivery).await;
        }
        subscription
    }

    /// Takes one delivery into the pipeline; its answer is published by a tracked task.
    async fn accept(&self, metrics: &Arc<ModelMetrics>, lane: Lane, delivery: Delivery) {
        let taken = Instant::now();
        let since_start = taken.duration_since(self.started).as_millis() as u64;
        // Only once serving: until then the idle clock has not started.
        let _ = self
            .last_taken_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                (last != NOT_SERVING).then_some(since_start)
            });
        let properties = &delivery.message.properties;
        metrics.received(lane, delivery.redeliveries > 0, properties.queued_for());
        let (publisher, metrics) = (self.publisher.clone(), metrics.clone());
        if let Some(answer) = publisher.answered(&delivery) {
            self.in_flight.spawn(async move {
                publisher.replay(&metrics, delivery, answer).await;
                metrics.settled(lane, taken.elapsed());
            });
            return;
        }
        let model = metrics.name();
        // Errors and id-less requests are answered with the message id; copied only then.
        let fallback_id = || properties.message_id.clone().unwrap_or_default();
        let deadline = properties.deadline();
        let header_length = properties
            .header_length
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let prepared = async {
            let unread = |e| (e, fallback_id());
            if delivery.redeliveries > publisher.max_redeliveries() {
                // Taken this often without being settled: it crashes or stalls workers.
                return Err(unread(InferError::internal(format!(
                    "delivered {} times without an answer (the worker failed each time)",
                    delivery.redeliveries + 1
                ))));
            }
            let served = self
                .registry
                .get(model, properties.version.as_deref())
                .await
                .map_err(|e| {
                    let body = &delivery.message.body;
                    let readable = body.len() <= self.config.limits.max_request_bytes;
                    let header = body.get(..header_length.unwrap_or(body.len()));
                    let id = header.filter(|_| readable).and_then(request_id);
                    (e, id.unwrap_or_else(fallback_id))
                })?;
            let admitted = admit(
                &delivery.message.body,
                header_length,
                &served.manifest,
                &self.config.limits,
            )
            .map_err(|(e, id)| (e, id.unwrap_or_else(fallback_id)))?;
            let id = admitted.id.unwrap_or_else(fallback_id);
            Ok::<_, (InferError, String)>((served, id, admitted.inputs, admitted.selected))
        };
        let (served, id, inputs, selected) = match prepared.await {
            Ok(ok) => ok,
            Err((error, id)) => {
                let reply = Err(ErrorResponse::new(id, &error));
                self.in_flight.spawn(async move {
                    publisher.finish(&metrics, lane, delivery, reply).await;
                    metrics.settled(lane, taken.elapsed());
                });
                return;
            }
        };
        let rows = inputs.rows;
        let (job, answer) = Job::new(inputs, lane, deadline);
        served.batcher.submit(job);
        self.in_flight.spawn(async move {
            let outcome = answer.await.unwrap_or_else(|_| {
                Err(InferError::internal(
                    "request was dropped before it was computed",
                ))
            });
            let reply = match outcome {
                Ok(outputs) => Ok(results::response(
                    &served.manifest,
                    id,
                    outputs,
                    rows,
                    &selected,
                )),
                Err(error) => Err(ErrorResponse::new(id, &error)),
            };
            publisher.finish(&metrics, lane, delivery, reply).await;
            metrics.settled(lane, taken.elapsed());
        });
    }
}

/// `last_taken_ms` before the worker serves.
const NOT_SERVING: u64 = u64::MAX;
