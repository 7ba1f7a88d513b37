//! Helpers shared by the integration tests: model repositories, requests, the broker.
#![allow(dead_code)] // each test file uses a part

use ember::protocol::{DataType, Tensor, TensorData, encode_request};
use ember::train::digits;
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use std::path::Path;

pub mod load;
pub mod minilm;
pub mod precision;
pub mod proxy;
pub mod rabbit_node;
pub mod servicebus;
pub mod tls;

/// A temporary repository holding the shipped digits model under each of `names`.
pub fn repo_with(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits");
    for name in names {
        let version_dir = dir.path().join(name).join("1");
        std::fs::create_dir_all(&version_dir).unwrap();
        std::fs::copy(shipped.join("1/model.bin"), version_dir.join("model.bin")).unwrap();
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(shipped.join("1/manifest.json")).unwrap())
                .unwrap();
        manifest["name"] = (*name).into();
        std::fs::write(version_dir.join("manifest.json"), manifest.to_string()).unwrap();
        std::fs::write(
            dir.path().join(name).join("aliases.json"),
            r#"{"production":"1"}"#,
        )
        .unwrap();
    }
    dir
}

/// The digits held out from training.
pub fn held_out() -> digits::Digits {
    digits::split(&digits::shipped(), 7, 0.2).1
}

/// An OIP request for `rows` digit images.
pub fn image_request(id: &str, pixels: &[f32], rows: usize) -> Vec<u8> {
    let input = Tensor {
        name: "input".into(),
        shape: vec![rows, digits::PIXELS],
        datatype: DataType::Fp32,
        data: TensorData::F32(pixels.to_vec()),
    };
    encode_request(id, &[input])
}

/// The broker's URL: `EMBER_AMQP_URL`, else the local RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("EMBER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A client of the test broker.
pub async fn broker(config: impl FnOnce(AmqpConfig) -> AmqpConfig) -> AmqpTransport {
    AmqpTransport::connect(config(AmqpConfig::new(amqp_url())))
        .await
        .expect("RabbitMQ at EMBER_AMQP_URL (bash .ci/run starts one)")
}

/// A port free now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A model name no other test (or earlier run) uses.
pub fn unique_model(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The connection string of the test Azurite: `EMBER_TEST_STORAGE`, else Azurite's defaults.
pub fn azurite_connection_string() -> String {
    std::env::var("EMBER_TEST_STORAGE").unwrap_or_else(|_| "UseDevelopmentStorage=true".into())
}

/// Azurite's well-known account key, to build connection strings with other endpoints.
pub const AZURITE_KEY: &str = azure_storage::clients::EMULATOR_ACCOUNT_KEY;

/// A connection string for Azurite's account at `endpoint` (e.g. through a proxy), with `key`.
pub fn azurite_via(endpoint: &str, key: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint={endpoint}/devstoreaccount1;"
    )
}

/// Options to open `az://` repositories on the test Azurite, caching weights in `cache`.
pub fn azurite_options(connection_string: &str, cache: &Path) -> ember::store::StoreOptions {
    ember::store::StoreOptions {
        blob: ember::store::BlobAuth {
            connection_string: Some(connection_string.into()),
            ..Default::default()
        },
        cache: Some(ember::store::WeightCache::new(cache, 1 << 30)),
    }
}

/// Creates a new, empty container on the test Azurite and returns its name.
pub async fn azurite_container(prefix: &str) -> String {
    use azure_storage::{CloudLocation, StorageCredentials};
    use azure_storage_blobs::prelude::ClientBuilder;
    let name = unique_model(prefix).replace('_', "-");
    let location = CloudLocation::Emulator {
        address: "127.0.0.1".into(),
        port: 10000,
    };
    ClientBuilder::with_location(location, StorageCredentials::emulator())
        .container_client(&name)
        .create()
        .await
        .expect("Azurite on 127.0.0.1:10000 (bash .ci/run starts one)");
    name
}

/// Pushes every version directory of the local repository `local` for `model` to `repo`.
pub async fn push_all(repo: &ember::store::Repository, local: &Path, model: &str) {
    for entry in std::fs::read_dir(local.join(model)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            repo.push(&path).await.unwrap();
        }
    }
}

/// The shipped digits model's weights.
pub fn digits_weights() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/1/model.bin")).unwrap()
}

/// Writes `<root>/<model>/<version>/` with `weights` and the shipped digits manifest renamed
/// to match (its sha256 that of `weights`); returns the version directory.
pub fn local_version(
    root: &Path,
    model: &str,
    version: &str,
    weights: &[u8],
) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/1/manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped).unwrap()).unwrap();
    manifest["name"] = model.into();
    manifest["version"] = version.into();
    manifest["sha256"] = ember::store::sha256_hex(weights).into();
    let dir = root.join(model).join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.bin"), weights).unwrap();
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    dir
}

/// Sends SIGTERM to `child` (a graceful drain, as Kubernetes does on scale-in).
pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -TERM: {status}");
}

/// Reads `child`'s stderr (piped) until `ember serve` logs its telemetry address, and keeps
/// collecting every log line in the background; returns the address (`http://127.0.0.1:<port>`)
/// and the lines so far.
pub fn follow_logs(
    child: &mut std::process::Child,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let telemetry = loop {
        let line = lines.next().expect("ember serve logs its address").unwrap();
        logs.lock().unwrap().push(line.clone());
        if let Some(at) = line.find("url=http://") {
            let url = &line[at + "url=".len()..];
            break url.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep reading, so the process never blocks on a full pipe.
    std::thread::spawn({
        let logs = logs.clone();
        move || {
            lines
                .map_while(Result::ok)
                .for_each(|line| logs.lock().unwrap().push(line))
        }
    });
    (telemetry, logs)
}

/// A child process (e.g. `ember serve`) killed when the test ends, even by a failed assertion.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A repository at `az://<new container>/models` on the test Azurite, and what the `ember`
/// binary needs to reach it: credentials, a cache of its own, the test broker.
pub struct BlobRepo {
    /// `az://<container>/models`.
    pub url: String,
    /// Connection string with Azurite's key.
    pub storage: String,
    /// The weight cache.
    pub cache: tempfile::TempDir,
}

impl BlobRepo {
    /// A repository in a new container named after `prefix`.
    pub async fn new(prefix: &str) -> Self {
        let container = azurite_container(prefix).await;
        Self {
            url: format!("az://{container}/models"),
            storage: azurite_via("http://127.0.0.1:10000", AZURITE_KEY),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    /// The `ember` binary with `args`, set up to reach the repository and the broker.
    pub fn ember(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ember"));
        command
            .args(args)
            .env("AZURE_STORAGE_CONNECTION_STRING", &self.storage)
            .env("EMBER_CACHE_DIR", self.cache.path())
            .env("EMBER_AMQP_URL", amqp_url())
            .env("EMBER_METRICS_ADDR", "127.0.0.1:0")
            .env("EMBER_LOG", "warn");
        command
    }

    /// An `ember serve` process answering `model` over the test broker from this repository,
    /// with `flags` added; killed when dropped.
    pub fn serve(&self, model: &str, flags: &[&str]) -> KillOnDrop {
        let args = [
            "serve",
            "--transport",
            "amqp",
            "--model",
            model,
            "--model-repo",
        ];
        let child = self
            .ember(&args)
            .arg(&self.url)
            .args(flags)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    }

    /// The repository, opened in this process with the same credentials and cache.
    pub fn open(&self) -> ember::store::Repository {
        let options = azurite_options(&self.storage, self.cache.path());
        ember::store::Repository::open_with(&self.url, &options).unwrap()
    }
}

/// A finished command's stdout and stderr, for assertion messages.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A worker in this process serving the shipped digits model under a new name over a
/// transport; stopped (drained) with [`LocalWorker::stop`].
pub struct LocalWorker {
    /// The model it serves.
    pub model: String,
    /// Its repository (a local directory).
    pub repo: tempfile::TempDir,
    shutdown: tokio_util::sync::CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl LocalWorker {
    /// Serves a fresh model named after `prefix` over `transport` (queues declared on return).
    pub async fn start(
        transport: std::sync::Arc<dyn ember::transport::Transport>,
        prefix: &str,
    ) -> Self {
        Self::start_with(transport, prefix, None).await
    }

    /// [`start`](Self::start), storing answers over their request's blob threshold in
    /// `claim_checks`.
    pub async fn start_with(
        transport: std::sync::Arc<dyn ember::transport::Transport>,
        prefix: &str,
        claim_checks: Option<ember::results::ClaimChecks>,
    ) -> Self {
        use ember::registry::Registry;
        use ember::worker::{Worker, WorkerConfig};
        let model = unique_model(prefix);
        let repo = repo_with(&[&model]);
        transport.declare(&model).await.unwrap();
        let registry = std::sync::Arc::new(Registry::new(
            ember::store::Repository::open(repo.path().to_str().unwrap()).unwrap(),
            ember::batcher::BatchConfig::default(),
        ));
        let mut worker = Worker::new(transport, registry, WorkerConfig::for_batch_size(32));
        if let Some(claim_checks) = claim_checks {
            worker = worker.with_claim_checks(claim_checks);
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        let serving = tokio::spawn({
            let (shutdown, models) = (shutdown.clone(), vec![model.parse().unwrap()]);
            async move { worker.run(&models, shutdown).await.unwrap() }
        });
        Self {
            model,
            repo,
            shutdown,
            serving,
        }
    }

    /// Stops taking requests, answers those taken, and returns once done, with the model's name.
    pub async fn stop(self) -> String {
        self.shutdown.cancel();
        self.serving.await.unwrap();
        self.model
    }
}

/// The state file `ember batch submit` keeps beside `output`.
pub fn state_file(output: &Path) -> std::path::PathBuf {
    ember::client::file::state_path(output)
}
