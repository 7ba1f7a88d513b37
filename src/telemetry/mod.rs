//! Telemetry: Prometheus metrics, the health endpoints Kubernetes probes, and log setup.
//!
//! `ember serve --metrics-addr 0.0.0.0:9464` serves, on one small HTTP listener:
//! - `GET /metrics`: the Prometheus text format of [`metrics`]' series;
//! - `GET /healthz`: 200 while the process runs (liveness);
//! - `GET /readyz`: 200 once every model is subscribed and while the transport is connected;
//!   503 with the reason before that, when the broker is lost, and from the moment a drain
//!   starts (SIGTERM or `--exit-when-idle`), so Kubernetes stops routing to a pod on its way out.

pub mod metrics;

use crate::transport::Transport;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default of `--metrics-addr`: the port Ember's ServiceMonitor and probes use.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9464";
/// The Prometheus scrape path.
pub const METRICS_PATH: &str = "/metrics";
/// The liveness probe's path.
pub const LIVENESS_PATH: &str = "/healthz";
/// The readiness probe's path.
pub const READINESS_PATH: &str = "/readyz";

/// How often histograms are compacted (the exporter leaves it to its caller).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The Prometheus recorder could not be built or installed.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
/// Until it is installed, metrics cost a no-op call.
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(metrics::LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(metrics::BATCH_SIZE.into()),
                metrics::BATCH_SIZE_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(metrics::MODEL_LOAD.into()),
                metrics::LOAD_BUCKETS,
            )
        })
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = HANDLE.get_or_init(|| recorder.handle()).clone();
    ::metrics::set_global_recorder(recorder)
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    metrics::describe();
    Ok(handle)
}

/// What `/readyz` answers: set by the worker as it starts and stops.
#[derive(Default)]
pub struct Health {
    serving: AtomicBool,
    draining: AtomicBool,
    transport: OnceLock<Arc<dyn Transport>>,
}

impl Health {
    /// A process not yet serving.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Readiness also requires `transport` to be connected.
    pub fn watch_transport(&self, transport: Arc<dyn Transport>) {
        let _ = self.transport.set(transport);
    }

    /// Every model is subscribed: requests are being taken.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// A drain started: no longer ready, for good.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready, or why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining")
        } else if !self.serving.load(Ordering::Acquire) {
            Err("starting")
        } else if self.transport.get().is_some_and(|t| !t.connected()) {
            Err("transport disconnected")
        } else {
            Ok(())
        }
    }
}

/// The bound telemetry listener.
pub struct Endpoint {
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    health: Arc<Health>,
}

impl Endpoint {
    /// Installs the recorder and binds `addr` (port 0: any free port, see [`local_addr`]).
    ///
    /// [`local_addr`]: Self::local_addr
    pub async fn bind(addr: SocketAddr, health: Arc<Health>) -> Result<Self, TelemetryError> {
        let handle = install_recorder()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Listen { addr, source })?;
        Ok(Self {
            listener,
            handle,
            health,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` until `stop`.
    pub async fn serve(self, stop: CancellationToken) -> std::io::Result<()> {
        let upkeep = self.handle.clone();
        let upkeep = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                ticks.tick().await;
                upkeep.run_upkeep();
            }
        });
        let router = Router::new()
            .route(METRICS_PATH, get(scrape))
            .route(LIVENESS_PATH, get(|| async { "ok\n" }))
            .route(READINESS_PATH, get(ready))
            .with_state((self.handle, self.health));
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        upkeep.abort();
        served
    }
}

type EndpointState = (PrometheusHandle, Arc<Health>);

async fn scrape(State((handle, _)): State<EndpointState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

async fn ready(State((_, health)): State<EndpointState>) -> impl IntoResponse {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (production).
    Json,
}

/// Logs of crates whose debug output carries secrets (Azure SDK requests log their URL, SAS
/// token included): capped at `info` whatever `EMBER_LOG` asks.
const SECRET_BEARING_LOGS: [&str; 1] = ["azure_core=info"];

/// Crates whose own logs repeat, less clearly, what Ember reports (lapin logs a returned
/// message's whole body, and a refused login three times): off unless `EMBER_LOG` names them.
const REPORTED_BY_EMBER: [&str; 1] = ["lapin"];

/// Logs to stderr in `format`, filtered by `EMBER_LOG` (default `info`).
pub fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let asked = std::env::var("EMBER_LOG").unwrap_or_default();
    let mut filter =
        EnvFilter::try_from_env("EMBER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in SECRET_BEARING_LOGS {
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    for target in REPORTED_BY_EMBER.into_iter().filter(|t| !asked.contains(t)) {
        let directive = format!("{target}=off");
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    // A log line that cannot be written (stderr closed) is dropped: reporting that failure on
    // stderr would panic the task that logged, e.g. the one that starts the graceful drain.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
