//! `ember serve`: a worker serving models from a transport until SIGTERM / Ctrl-C.

use super::args::{PipelineArgs, TransportArgs};
use super::shutdown_signal;
use crate::results::{ClaimChecks, DEFAULT_MAX_REDELIVERIES};
use crate::store::{ModelName, open_store};
use crate::telemetry::{DEFAULT_METRICS_ADDR, Endpoint, Health};
use crate::transport::Transport;
use crate::transport::memory::MemoryTransport;
use crate::worker::{Worker, WorkerConfig};
use clap::Args;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `ember serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Models to serve (default: every model in the repository).
    #[arg(long = "model", env = "EMBER_MODELS", value_delimiter = ',')]
    pub models: Vec<ModelName>,
    /// Where requests come from.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Failed or crashing requests are retried this often, then dead-lettered.
    #[arg(long, env = "EMBER_MAX_REDELIVERIES", default_value_t = DEFAULT_MAX_REDELIVERIES)]
    pub max_redeliveries: u32,
    /// Where answers larger than their request's ember-blob-threshold go (claim checks):
    /// `az://<container>[/<prefix>]` (same credentials as the repository) or a directory.
    #[arg(long, env = "EMBER_RESULT_STORE")]
    pub result_store: Option<String>,
    /// After SIGTERM, longest to spend answering requests already taken; what is left is
    /// redelivered by the broker.
    #[arg(long, env = "EMBER_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// How often to check the models' aliases for promotions (hot reload).
    #[arg(long, env = "EMBER_RELOAD_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
    /// Where to serve /metrics (Prometheus), /healthz (liveness) and /readyz (readiness);
    /// port 0 picks a free port (logged).
    #[arg(long, env = "EMBER_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: std::net::SocketAddr,
    /// Drain and exit 0 once no request has arrived for this long (e.g. 30s): for a KEDA
    /// ScaledJob whose pod should end when its queue is empty.
    #[arg(long, env = "EMBER_EXIT_WHEN_IDLE", value_parser = humantime::parse_duration)]
    pub exit_when_idle: Option<Duration>,
    /// Pipeline limits.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// Serves until SIGTERM / Ctrl-C, then drains.
pub async fn run(args: ServeArgs) -> anyhow::Result<i32> {
    // Every setting, flags and environment alike; secrets show redacted (`Secret`).
    tracing::info!(configuration = ?args, "effective configuration");
    // Listening first: /healthz answers (and /readyz says "starting") while models load.
    let health = Health::new();
    let endpoint = Endpoint::bind(args.metrics_addr, health.clone()).await?;
    let url = format!("http://{}", endpoint.local_addr()?);
    tracing::info!(%url, "telemetry listening: /metrics /healthz /readyz");
    let telemetry = CancellationToken::new();
    tokio::spawn(endpoint.serve(telemetry.clone()));
    let _stop_telemetry = telemetry.drop_guard();
    let registry = args.pipeline.registry()?;
    let models = if args.models.is_empty() {
        registry.repository().models().await?
    } else {
        args.models
    };
    anyhow::ensure!(
        !models.is_empty(),
        "no models in {} (--model-repo): `ember train` or `ember models push` adds one",
        registry.repository().describe()
    );
    let transport: Arc<dyn Transport> = match args.transport.transport.broker() {
        Some(broker) => {
            let receivers = args.pipeline.max_batch_size;
            args.transport.brokers.connect(broker, receivers).await?
        }
        None => {
            tracing::warn!("memory transport: only in-process producers can reach this worker");
            Arc::new(MemoryTransport::new())
        }
    };
    let config = WorkerConfig {
        reload_interval: args.reload_interval,
        ..args.pipeline.worker(args.max_redeliveries)
    };
    health.watch_transport(transport.clone());
    let mut worker = Worker::new(transport.clone(), registry, config).with_health(health);
    if let Some(address) = &args.result_store {
        let store = open_store(address, &args.pipeline.repo.store.auth())?;
        worker = worker.with_claim_checks(ClaimChecks::new(store, address.as_str()));
    }
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing requests in flight");
            shutdown.cancel();
        }
    });
    if let Some(idle) = args.exit_when_idle {
        let (worker, shutdown) = (worker.clone(), shutdown.clone());
        tokio::spawn(async move { worker.stop_when_idle(idle, shutdown).await });
    }
    let drained = worker.serve(&models, shutdown, args.drain_timeout).await?;
    Ok(if drained { 0 } else { 1 })
}
