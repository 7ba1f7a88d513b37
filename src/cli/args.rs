//! Flag groups several commands share: brokers, the model repository and its credentials,
//! the compute device, the serving pipeline.

use crate::batcher::{BatchConfig, DEFAULT_MAX_BATCH_SIZE};
use crate::models::text::DEFAULT_MAX_BATCH_TOKENS;
use crate::protocol::{DEFAULT_MAX_REQUEST_BYTES, Lane};
use crate::registry::Registry;
use crate::runtime::{self, Device};
use crate::secret::Secret;
use crate::store::{BlobAuth, Repository, StoreOptions, WeightCache};
use crate::transport::ClientTransport;
use crate::transport::amqp::{AmqpConfig, AmqpTransport, QueueType};
use crate::transport::servicebus::{ServiceBusConfig, ServiceBusTransport};
use crate::worker::{DEFAULT_MAX_REQUEST_ROWS, RequestLimits, WorkerConfig};
use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to reach RabbitMQ.
#[derive(Debug, Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL, amqp:// or amqps:// (a secret: prefer the environment or a file).
    #[arg(
        long,
        env = "EMBER_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: Secret,
    /// File holding the RabbitMQ URL (e.g. a mounted secret); wins over --amqp-url.
    #[arg(long, env = "EMBER_AMQP_URL_FILE")]
    pub amqp_url_file: Option<PathBuf>,
    /// CA certificate (PEM) of the broker, for amqps:// (beside the system's roots).
    #[arg(long, env = "EMBER_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// Kind of the queues Ember declares.
    #[arg(long, env = "EMBER_QUEUE_TYPE", value_enum, default_value_t = QueueType::Quorum)]
    pub queue_type: QueueType,
}

impl AmqpArgs {
    /// Connects to the broker.
    pub async fn connect(&self) -> anyhow::Result<AmqpTransport> {
        let url = match &self.amqp_url_file {
            Some(path) => Secret::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .trim(),
            ),
            None => self.amqp_url.clone(),
        };
        let config = AmqpConfig {
            ca_file: self.amqp_ca_file.clone(),
            queue_type: self.queue_type,
            ..AmqpConfig::new(url)
        };
        Ok(AmqpTransport::connect(config).await?)
    }
}

/// How to reach Azure Service Bus (with --transport servicebus). Credentials come from the
/// environment or a file only: EMBER_SERVICEBUS_CONNECTION_STRING, or
/// EMBER_SERVICEBUS_SAS_KEY_NAME and EMBER_SERVICEBUS_SAS_KEY with --servicebus-namespace.
#[derive(Debug, Args)]
pub struct ServiceBusArgs {
    /// Service Bus namespace (<NAMESPACE>.servicebus.windows.net), with
    /// EMBER_SERVICEBUS_SAS_KEY_NAME and EMBER_SERVICEBUS_SAS_KEY in the environment.
    #[arg(long, env = "EMBER_SERVICEBUS_NAMESPACE")]
    pub servicebus_namespace: Option<String>,
    /// File holding a connection string (e.g. a mounted secret); wins over
    /// EMBER_SERVICEBUS_CONNECTION_STRING, which wins over the namespace and SAS variables.
    #[arg(long, env = "EMBER_SERVICEBUS_CONNECTION_STRING_FILE")]
    pub servicebus_connection_string_file: Option<PathBuf>,
    /// Send Service Bus requests to this URL instead of https://<namespace>.servicebus.windows.net
    /// (a private endpoint, a local test double).
    #[arg(long, env = "EMBER_SERVICEBUS_ENDPOINT")]
    pub servicebus_endpoint: Option<url::Url>,
    /// Lock duration of the queues Ember creates (locks are renewed while a request is in work).
    #[arg(long, env = "EMBER_SERVICEBUS_LOCK_DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub servicebus_lock_duration: Duration,
    /// Concurrent receive calls per queue, where the command receives (the REST API returns
    /// one message per call; default: the maximum batch size for `serve`, 8 otherwise).
    #[arg(long, env = "EMBER_RECEIVE_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub receive_concurrency: Option<usize>,
}

/// Environment variables holding Service Bus credentials.
pub const SERVICEBUS_CONNECTION_STRING_ENV: &str = "EMBER_SERVICEBUS_CONNECTION_STRING";

/// The SAS policy's name (with --servicebus-namespace).
pub const SERVICEBUS_KEY_NAME_ENV: &str = "EMBER_SERVICEBUS_SAS_KEY_NAME";

/// The SAS policy's key (with --servicebus-namespace).
pub const SERVICEBUS_KEY_ENV: &str = "EMBER_SERVICEBUS_SAS_KEY";

impl ServiceBusArgs {
    /// The namespace, credentials and receive settings; `receivers` unless
    /// --receive-concurrency says otherwise.
    pub fn config(&self, receivers: usize) -> anyhow::Result<ServiceBusConfig> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let connection = match &self.servicebus_connection_string_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => env(SERVICEBUS_CONNECTION_STRING_ENV),
        };
        let mut config = match connection {
            Some(connection) => ServiceBusConfig::from_connection_string(&connection)?,
            None => {
                let missing = || {
                    format!(
                        "--transport servicebus needs {SERVICEBUS_CONNECTION_STRING_ENV}, or \
                         --servicebus-namespace with {SERVICEBUS_KEY_NAME_ENV} and {SERVICEBUS_KEY_ENV}"
                    )
                };
                ServiceBusConfig::new(
                    self.servicebus_namespace.clone().with_context(missing)?,
                    env(SERVICEBUS_KEY_NAME_ENV).with_context(missing)?,
                    env(SERVICEBUS_KEY_ENV).with_context(missing)?,
                )
            }
        };
        if let Some(endpoint) = &self.servicebus_endpoint {
            config.endpoint = Some(endpoint.clone());
        }
        config.lock_duration = self.servicebus_lock_duration;
        config.receivers = self.receive_concurrency.unwrap_or(receivers);
        Ok(config)
    }
}

/// Brokers, and how to reach each.
#[derive(Debug, Args)]
pub struct Brokers {
    /// RabbitMQ (with --transport amqp).
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Azure Service Bus (with --transport servicebus).
    #[command(flatten)]
    pub servicebus: ServiceBusArgs,
}

impl Brokers {
    /// Connects to `broker`; Service Bus subscriptions run `receivers` receive calls per queue
    /// unless --receive-concurrency says otherwise.
    pub async fn connect(
        &self,
        broker: Broker,
        receivers: usize,
    ) -> anyhow::Result<Arc<dyn ClientTransport>> {
        Ok(match broker {
            Broker::Amqp => Arc::new(self.amqp.connect().await?),
            Broker::ServiceBus => {
                Arc::new(ServiceBusTransport::new(self.servicebus.config(receivers)?))
            }
        })
    }
}

/// What one request may be, wherever it is admitted (a worker, the gateway).
#[derive(Debug, Clone, Copy, Args)]
pub struct LimitsArgs {
    /// Larger request bodies are answered RESOURCE_EXHAUSTED (the gateway: 413) unparsed.
    #[arg(long, env = "EMBER_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Requests with more rows (batch dimension) are answered RESOURCE_EXHAUSTED uncomputed.
    #[arg(long, env = "EMBER_MAX_REQUEST_ROWS", default_value_t = DEFAULT_MAX_REQUEST_ROWS,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_request_rows: usize,
}

impl From<LimitsArgs> for RequestLimits {
    fn from(args: LimitsArgs) -> Self {
        Self {
            max_request_bytes: args.max_request_bytes,
            max_request_rows: args.max_request_rows,
        }
    }
}

/// Which transport, and how to reach it.
#[derive(Debug, Args)]
pub struct TransportArgs {
    /// The transport that carries the requests.
    #[arg(long, env = "EMBER_TRANSPORT", value_enum, default_value_t = TransportKind::Amqp)]
    pub transport: TransportKind,
    /// The brokers.
    #[command(flatten)]
    pub brokers: Brokers,
}

/// Which broker, and how to reach it (commands that talk to workers through one).
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Broker to use: amqp or servicebus.
    #[arg(long = "transport", env = "EMBER_TRANSPORT", default_value = "amqp", value_parser = parse_broker)]
    pub broker: Broker,
    /// The brokers.
    #[command(flatten)]
    pub brokers: Brokers,
}

impl BrokerArgs {
    /// Connects to the broker (as a client: default receive concurrency).
    pub async fn connect(&self) -> anyhow::Result<Arc<dyn ClientTransport>> {
        self.brokers
            .connect(self.broker, CLIENT_RECEIVE_CONCURRENCY)
            .await
    }

    /// [`connect`](Self::connect) for a producer that sends binary tensor data when `binary`:
    /// refused where the broker carries text bodies only (Service Bus).
    pub async fn connect_sending(&self, binary: bool) -> anyhow::Result<Arc<dyn ClientTransport>> {
        let transport = self.connect().await?;
        anyhow::ensure!(
            !binary || transport.carries_binary(),
            "--binary: this broker (Service Bus) carries text bodies only; send JSON"
        );
        Ok(transport)
    }
}

/// Service Bus receive calls per queue of a client (replies), unless configured.
pub(super) const CLIENT_RECEIVE_CONCURRENCY: usize = 8;

/// Brokers: where requests wait for workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Broker {
    /// RabbitMQ.
    Amqp,
    /// Azure Service Bus.
    #[value(name = "servicebus")]
    ServiceBus,
}

/// Where models live, and how to reach and cache them.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// Model repository: `az://<container>[/<prefix>]` (Azure Blob) or a local directory.
    #[arg(long, env = "EMBER_MODEL_REPO", default_value = "models")]
    pub model_repo: String,
    /// Credentials and cache of remote repositories.
    #[command(flatten)]
    pub store: StoreArgs,
}

impl RepoArgs {
    /// The repository, which must exist: a local directory that does not is named, not read
    /// as an empty repository.
    pub(super) fn open(&self) -> anyhow::Result<Repository> {
        self.existing(None)
    }

    /// [`open`](Self::open), keeping the weights it downloads in `cache`.
    pub(super) fn open_cached(&self, cache: &CacheArgs) -> anyhow::Result<Repository> {
        self.existing(Some(cache.weights()))
    }

    fn existing(&self, cache: Option<WeightCache>) -> anyhow::Result<Repository> {
        let local = !self.model_repo.starts_with("az://");
        if local && !std::path::Path::new(&self.model_repo).is_dir() {
            anyhow::bail!(
                "model repository {} is not a directory (--model-repo or EMBER_MODEL_REPO: a \
                 directory, or az://<container>[/<prefix>]; `ember train` and `ember models push` \
                 write one)",
                self.model_repo
            );
        }
        self.store.open(&self.model_repo, cache)
    }

    /// The repository, created on the first write where it is a local directory.
    pub(super) fn open_to_write(&self) -> anyhow::Result<Repository> {
        self.store.open(&self.model_repo, None)
    }
}

/// Credentials for `az://` repositories. Secrets come from the environment (or a Kubernetes
/// secret mapped into it); they are never printed.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Storage connection string (`UseDevelopmentStorage=true` for Azurite); tried first.
    #[arg(long, env = "AZURE_STORAGE_CONNECTION_STRING", hide_env_values = true)]
    pub storage_connection_string: Option<Secret>,
    /// Storage account (with a key, a SAS token, or else an Azure workload/managed identity).
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT")]
    pub storage_account: Option<String>,
    /// Storage account key.
    #[arg(long, env = "AZURE_STORAGE_KEY", hide_env_values = true)]
    pub storage_key: Option<Secret>,
    /// Storage SAS token.
    #[arg(long, env = "AZURE_STORAGE_SAS_TOKEN", hide_env_values = true)]
    pub storage_sas_token: Option<Secret>,
    /// Blob endpoint, when not `https://<account>.blob.core.windows.net`.
    #[arg(long, env = "AZURE_STORAGE_BLOB_ENDPOINT")]
    pub storage_endpoint: Option<String>,
    /// CA certificate (PEM) of the blob endpoint, when a private CA signed it (beside the
    /// public roots).
    #[arg(long, env = "EMBER_STORAGE_CA_FILE")]
    pub storage_ca_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The repository at `address`, keeping downloaded weights in `cache` (if any).
    pub(super) fn open(
        &self,
        address: &str,
        cache: Option<WeightCache>,
    ) -> anyhow::Result<Repository> {
        let options = StoreOptions {
            blob: self.auth(),
            cache,
        };
        Ok(Repository::open_with(address, &options)?)
    }

    /// The Azure Blob credentials.
    pub(super) fn auth(&self) -> BlobAuth {
        BlobAuth {
            connection_string: self.storage_connection_string.clone(),
            account: self.storage_account.clone(),
            key: self.storage_key.clone(),
            sas_token: self.storage_sas_token.clone(),
            endpoint: self.storage_endpoint.clone(),
            ca_file: self.storage_ca_file.clone(),
        }
    }
}

/// The local cache of commands that load models: downloaded weights, compiled GPU kernels.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Local cache of downloaded weights [default: $XDG_CACHE_HOME/ember or ~/.cache/ember].
    #[arg(long, env = "EMBER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Size limit of the cache (least recently used weights are evicted), e.g. 20GiB.
    #[arg(long, env = "EMBER_CACHE_MAX_BYTES", default_value = "20GiB", value_parser = parse_bytes)]
    pub cache_max_bytes: u64,
}

impl CacheArgs {
    fn dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }

    fn weights(&self) -> WeightCache {
        WeightCache::new(self.dir(), self.cache_max_bytes)
    }
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ember")
}

/// `20GiB`, `500MB`, `1048576`: a size in bytes.
pub(super) fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 20GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Where models run.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// `cpu`, `cuda` (GPU 0) or `cuda:N` [default: cuda:0 in a CUDA build, else cpu].
    #[arg(long, env = "EMBER_DEVICE", default_value_t = Device::default())]
    pub device: Device,
}

impl DeviceArgs {
    /// The device, checked: a missing GPU fails here, before any model loads. GPU kernels are
    /// compiled and tuned once per cache (`kernels/` under the weights cache).
    pub(super) fn open(&self, cache: &CacheArgs) -> anyhow::Result<Device> {
        let described = self.device.probe().map_err(anyhow::Error::msg)?;
        runtime::cache_kernels_in(&cache.dir().join("kernels"));
        tracing::info!(device = %described, "compute device");
        Ok(self.device)
    }
}

/// Pipeline limits shared by the serving subcommands.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Model repository.
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Where models run.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Where downloaded weights are kept.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Most rows in one batch.
    #[arg(long, env = "EMBER_MAX_BATCH_SIZE", default_value_t = DEFAULT_MAX_BATCH_SIZE,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_batch_size: usize,
    /// Longest a request waits for a fuller batch (e.g. 2ms, 500us).
    #[arg(long, env = "EMBER_MAX_BATCH_DELAY", default_value = "2ms", value_parser = humantime::parse_duration)]
    pub max_batch_delay: Duration,
    /// Most tokens (texts × longest text) a text model runs in one pass; a batch with more is
    /// cut into passes of texts of similar length.
    #[arg(long, env = "EMBER_MAX_BATCH_TOKENS", default_value_t = DEFAULT_MAX_BATCH_TOKENS,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_batch_tokens: usize,
    /// What one request may be.
    #[command(flatten)]
    pub limits: LimitsArgs,
    /// Unsettled deliveries per request queue [default: 2 × max batch size + 64: a batch
    /// forming, one computing, and answers waiting for their publisher confirms].
    #[arg(long, env = "EMBER_PREFETCH",
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub prefetch: Option<usize>,
}

impl PipelineArgs {
    pub(super) fn batch(&self) -> BatchConfig {
        BatchConfig {
            max_batch_size: self.max_batch_size,
            max_batch_delay: self.max_batch_delay,
            max_batch_tokens: self.max_batch_tokens,
        }
    }

    pub(super) fn worker(&self, max_redeliveries: u32) -> WorkerConfig {
        let defaults = WorkerConfig::for_batch_size(self.max_batch_size);
        WorkerConfig {
            limits: self.limits.into(),
            max_redeliveries,
            prefetch: self.prefetch.unwrap_or(defaults.prefetch),
            ..defaults
        }
    }

    pub(super) fn registry(&self) -> anyhow::Result<Arc<Registry>> {
        let device = self.device.open(&self.cache)?;
        Ok(Arc::new(
            Registry::new(self.repo.open_cached(&self.cache)?, self.batch()).on_device(device),
        ))
    }
}

/// A broker; `memory` (right for `serve` and `infer`, so often in `EMBER_TRANSPORT`) is refused
/// saying why.
fn parse_broker(value: &str) -> Result<Broker, String> {
    match value {
        "memory" => Err(
            "the memory transport lives inside one process, so no worker is reachable \
                         through it: use amqp or servicebus (check EMBER_TRANSPORT)"
                .into(),
        ),
        _ => Broker::from_str(value, false)
            .map_err(|_| format!("{value:?} is not amqp or servicebus")),
    }
}

pub(super) fn parse_lane(value: &str) -> Result<Lane, String> {
    Lane::parse(value).ok_or_else(|| format!("{value:?} is not a lane (realtime, batch)"))
}

/// Transports `ember serve` can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// In-process queues (only in-process producers can reach them).
    Memory,
    /// RabbitMQ.
    Amqp,
    /// Azure Service Bus.
    #[value(name = "servicebus")]
    ServiceBus,
}

impl TransportKind {
    /// The broker it is, if any.
    pub fn broker(self) -> Option<Broker> {
        match self {
            Self::Memory => None,
            Self::Amqp => Some(Broker::Amqp),
            Self::ServiceBus => Some(Broker::ServiceBus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_units() {
        assert_eq!(parse_bytes("20GiB"), Ok(20 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }
}
