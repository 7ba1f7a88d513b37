//! The model repository: where versions, their manifests and weights live, and the rules for
//! reading them (aliases, sha256 verification) that every store shares.
//!
//! Layout (`docs/protocol.md`): `<model>/<version>/model.bin`, `<model>/<version>/manifest.json`,
//! `<model>/aliases.json`, and any assets the manifest names (`<model>/<version>/<asset>`, e.g. a
//! tokenizer), verified and cached like the weights. A store only moves bytes by key
//! ([`ModelStore`]); [`Repository`] builds keys from validated names only, so no request can reach
//! outside the repository.

mod blob;
mod cache;
mod fs;
mod names;

pub use blob::{BLOCK_SIZE, BlobAuth, BlobStore};
pub use cache::{DEFAULT_CACHE_MAX_BYTES, WeightCache};
pub use fs::FsStore;
pub use names::{ModelName, NameError, Version};

use crate::client::chain::{Cause, Chain};
pub use crate::models::Assets;
use crate::models::{Architecture, Precision};
use crate::protocol::TensorSpec;
pub use crate::protocol::sha256_hex;
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The alias every request without a version gets.
pub const DEFAULT_ALIAS: &str = "production";

/// The tag of a model without `aliases.json`.
const NO_ALIASES: &str = "none";

/// Why the repository could not give what was asked; the file system's error, where there is
/// one, is the `source` of [`StoreError::Io`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such model, version, alias or file; the text says which.
    #[error("{0}")]
    NotFound(String),
    /// The weights or an asset do not match the manifest's sha256: refused.
    #[error(
        "model {model} version {version}: {file} sha256 {actual} does not match the manifest's {expected}"
    )]
    Integrity {
        /// Model name.
        model: String,
        /// Version.
        version: String,
        /// `model.bin` or the asset's name.
        file: String,
        /// sha256 in the manifest.
        expected: String,
        /// sha256 of the bytes read.
        actual: String,
    },
    /// A name, key or file that breaks the rules.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The store could not be read or written.
    #[error("store I/O: {context}")]
    Io {
        /// What failed.
        context: String,
        /// Why, as the layer below said. Azure Blob's errors are written into `context`
        /// instead, their SAS signatures redacted: the HTTP client's errors quote the URL.
        #[source]
        cause: Option<Cause>,
    },
}

impl StoreError {
    /// [`StoreError::Io`] without a lower-layer cause.
    pub fn io(context: impl Into<String>) -> Self {
        Self::Io {
            context: context.into(),
            cause: None,
        }
    }

    /// [`StoreError::Io`] because of `cause`.
    pub fn io_by(
        context: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Io {
            context: context.into(),
            cause: Some(Box::new(cause)),
        }
    }
}

/// Moves bytes by key; one implementation per place models live (local dir, Azure Blob).
#[async_trait]
pub trait ModelStore: Send + Sync + 'static {
    /// The object at `key` (`/`-separated, relative); [`StoreError::NotFound`] if absent.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Names of the folders directly under `prefix` (`""` is the root), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Writes `bytes` at `key`; readers see the old object or the whole new one, never a part.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError>;
    /// The object at `key` and its tag, or `None` if its tag is still `known` (a cheap poll).
    async fn get_if_changed(
        &self,
        key: &str,
        known: Option<&str>,
    ) -> Result<Option<Tagged>, StoreError> {
        let bytes = self.get(key).await?;
        let tag = sha256_hex(&bytes);
        Ok((known != Some(tag.as_str())).then_some(Tagged { bytes, tag }))
    }
    /// Creates the place objects go (a blob container) unless it exists or the credentials may
    /// not: a first write then says what is wrong. Writes call it; it is cheap after the first.
    async fn create_if_missing(&self) {}
    /// Where the store is, for logs (never with credentials).
    fn describe(&self) -> String;
}

/// An object and the tag that changes whenever it does (an ETag, or a hash).
#[derive(Debug, Clone)]
pub struct Tagged {
    /// The object.
    pub bytes: Bytes,
    /// Its tag.
    pub tag: String,
}

/// What a model version is: written by `ember train`, read by every worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name.
    pub name: ModelName,
    /// This version.
    pub version: Version,
    /// Network and its config; also any input scaling, so clients send raw values.
    pub architecture: Architecture,
    /// Float precision it computes in; FP32 when unsaid (outputs are FP32 either way).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    /// Inputs clients send.
    pub inputs: Vec<TensorSpec>,
    /// Outputs the model returns, in this order.
    pub outputs: Vec<TensorSpec>,
    /// Class labels, index = class id.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Hex sha256 of `model.bin`.
    pub sha256: String,
    /// Files besides the weights that loading needs (e.g. `tokenizer.json`): name → hex sha256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assets: BTreeMap<String, String>,
    /// Evaluation figures (e.g. `test_accuracy` on the held-out split).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// How it was trained, enough to rebuild its held-out split.
    #[serde(default)]
    pub training: Option<TrainingRecord>,
    /// Where a version not trained by Ember came from (`ember models import`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// RFC 3339 time of creation.
    pub created_at: String,
}

/// How a version was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// Data set and its provenance.
    pub dataset: String,
    /// Seed of the shuffle that splits train from held-out data, and of initialisation.
    pub seed: u64,
    /// Share of the data held out for testing.
    pub test_fraction: f64,
    /// Passes over the training split.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Learning rate.
    pub learning_rate: f64,
    /// Samples trained on.
    pub train_samples: usize,
    /// Samples held out.
    pub test_samples: usize,
    /// Commit of the Ember source that trained it, when the build knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
}

/// A verified version: its manifest, and the weights and assets whose sha256 matched it.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The manifest.
    pub manifest: Manifest,
    /// The weights (`model.bin`).
    pub weights: Bytes,
    /// The manifest's assets by name.
    pub assets: Assets,
    /// How the files were fetched.
    pub fetch: FetchReport,
}

/// How a version's files were fetched and checked.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FetchReport {
    /// Size of the weights and assets.
    pub bytes: usize,
    /// All found in the local cache (nothing downloaded).
    pub cache_hit: bool,
    /// Time reading them from the store (or the cache).
    #[serde(rename = "download_s", serialize_with = "seconds")]
    pub download: Duration,
    /// Time checking their sha256.
    #[serde(rename = "verify_s", serialize_with = "seconds")]
    pub verify: Duration,
}

impl FetchReport {
    fn add(&mut self, other: Self) {
        self.bytes += other.bytes;
        self.cache_hit &= other.cache_hit;
        self.download += other.download;
        self.verify += other.verify;
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// How to open a repository: credentials for remote stores and where to cache their weights.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Credentials for `az://` repositories.
    pub blob: BlobAuth,
    /// Cache for weights from remote stores (none: fetch every time).
    pub cache: Option<WeightCache>,
}

/// `aliases.json`: alias → version.
pub type Aliases = BTreeMap<String, Version>;

/// The metric a gated promotion compares, and which way is better.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricGate {
    /// Name in the manifests' `metrics`.
    pub metric: String,
    /// Whether a smaller value is better (losses, errors).
    pub lower_is_better: bool,
}

impl MetricGate {
    /// Parses `name`, `name:max` or `name:min`; without a suffix, names that hold `loss` or
    /// `error` are better lower, every other (accuracy, F1, ROC-AUC) higher.
    pub fn parse(value: &str) -> Result<Self, String> {
        let (metric, lower_is_better) = match value.rsplit_once(':') {
            Some((metric, "min")) => (metric, true),
            Some((metric, "max")) => (metric, false),
            Some((_, other)) => {
                return Err(format!(
                    "{other:?} is not a direction: use NAME, NAME:max or NAME:min"
                ));
            }
            None => (value, value.contains("loss") || value.contains("error")),
        };
        if metric.is_empty() {
            return Err("empty metric name".into());
        }
        Ok(Self {
            metric: metric.to_owned(),
            lower_is_better,
        })
    }

    /// Whether `candidate` strictly beats `current`.
    pub fn better(&self, candidate: f64, current: f64) -> bool {
        if self.lower_is_better {
            candidate < current
        } else {
            candidate > current
        }
    }
}

/// What a gated promotion did.
#[derive(Debug, Clone, PartialEq)]
pub enum Promotion {
    /// The alias now points at the candidate.
    Promoted {
        /// The version it pointed at before, if any.
        replaced: Option<Version>,
        /// The candidate's score.
        new: f64,
        /// The replaced version's score.
        old: Option<f64>,
    },
    /// The alias already pointed at the candidate.
    AlreadyThere,
    /// The candidate did not beat the current version; nothing changed.
    NotBetter {
        /// The version the alias still points at.
        current: Version,
        /// The candidate's score.
        new: f64,
        /// The current version's score.
        old: f64,
    },
}

/// Opens the store at `address`: `az://<container>[/<prefix>]` (Azure Blob, with `auth`) or a
/// local directory. Makes no request.
pub fn open_store(address: &str, auth: &BlobAuth) -> Result<Arc<dyn ModelStore>, StoreError> {
    if address.starts_with("az://") {
        return Ok(Arc::new(BlobStore::open(address, auth)?));
    }
    if address.contains("://") {
        return Err(StoreError::Invalid(format!(
            "unsupported store {address:?}; give az://<container>[/<prefix>] or a local directory"
        )));
    }
    Ok(Arc::new(FsStore::new(address)))
}

/// Claim-checked answers are read with the repository's credentials: `az://…` from Azure Blob,
/// anything else from a local directory.
#[async_trait]
impl crate::client::ClaimStore for BlobAuth {
    async fn fetch(&self, url: &str) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
        let (folder, name) = url.rsplit_once('/').ok_or("not a URL of a file")?;
        Ok(open_store(folder, self)?.get(name).await?)
    }
}

/// The model repository over any [`ModelStore`].
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn ModelStore>,
    cache: Option<WeightCache>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.store.describe())
    }
}

impl Repository {
    /// A repository over `store`.
    pub fn new(store: Arc<dyn ModelStore>) -> Self {
        Self { store, cache: None }
    }

    /// Opens `address` with default options: no credentials and no cache (local directories).
    pub fn open(address: &str) -> Result<Self, StoreError> {
        Self::open_with(address, &StoreOptions::default())
    }

    /// Opens the repository at `address`: `az://<container>[/<prefix>]` (Azure Blob, with the
    /// weights cached locally) or a local directory. Makes no request.
    pub fn open_with(address: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let store = open_store(address, &options.blob)?;
        let cache = address
            .starts_with("az://")
            .then(|| options.cache.clone())
            .flatten();
        Ok(Self { store, cache })
    }

    /// Where the repository is.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// The models in the repository (folders that are not valid names are skipped).
    pub async fn models(&self) -> Result<Vec<ModelName>, StoreError> {
        let names = self.store.list("").await?;
        Ok(names
            .iter()
            .filter_map(|n| ModelName::parse(n).ok())
            .collect())
    }

    /// The versions of `model`, numbers first in numeric order, then the rest by name.
    pub async fn versions(&self, model: &ModelName) -> Result<Vec<Version>, StoreError> {
        let mut versions: Vec<Version> = (self.store.list(model.as_str()).await?)
            .iter()
            .filter_map(|n| Version::parse(n).ok())
            .collect();
        versions.sort_by(|a, b| {
            (a.number().is_none(), a.number(), a.as_str()).cmp(&(
                b.number().is_none(),
                b.number(),
                b.as_str(),
            ))
        });
        Ok(versions)
    }

    /// The aliases of `model`; none when it has no `aliases.json`.
    pub async fn aliases(&self, model: &ModelName) -> Result<Aliases, StoreError> {
        Ok(self
            .aliases_if_changed(model, None)
            .await?
            .unwrap_or_default()
            .0)
    }

    /// The aliases of `model` and their tag, or `None` if the tag is still `known`: what a
    /// worker polls for promotions.
    pub async fn aliases_if_changed(
        &self,
        model: &ModelName,
        known: Option<&str>,
    ) -> Result<Option<(Aliases, String)>, StoreError> {
        let key = format!("{model}/aliases.json");
        match self.store.get_if_changed(&key, known).await {
            Ok(Some(Tagged { bytes, tag })) => serde_json::from_slice(&bytes)
                .map(|aliases| Some((aliases, tag)))
                .map_err(|e| StoreError::Invalid(format!("{key}: {e}"))),
            Ok(None) => Ok(None),
            Err(StoreError::NotFound(_)) if known == Some(NO_ALIASES) => Ok(None),
            Err(StoreError::NotFound(_)) => Ok(Some((Aliases::new(), NO_ALIASES.into()))),
            Err(e) => Err(e),
        }
    }

    /// The manifest of `model` `version`, checked to name them.
    pub async fn manifest(
        &self,
        model: &ModelName,
        version: &Version,
    ) -> Result<Manifest, StoreError> {
        let key = format!("{model}/{version}/manifest.json");
        let bytes = self.store.get(&key).await.map_err(|e| match e {
            StoreError::NotFound(_) => {
                StoreError::NotFound(format!("model {model} has no version {version}"))
            }
            e => e,
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Invalid(format!("{key}: {e}")))?;
        if manifest.name != *model || manifest.version != *version {
            return Err(StoreError::Invalid(format!(
                "{key} describes {} version {}",
                manifest.name, manifest.version
            )));
        }
        Ok(manifest)
    }

    /// Resolves `selector` (a version, else an alias) of `model` to a version that exists.
    pub async fn resolve(
        &self,
        model: &ModelName,
        selector: &Version,
    ) -> Result<Version, StoreError> {
        let versions = self.versions(model).await?;
        if versions.contains(selector) {
            return Ok(selector.clone());
        }
        let aliases = self.aliases(model).await?;
        match aliases.get(selector.as_str()) {
            Some(version) if versions.contains(version) => Ok(version.clone()),
            Some(version) => Err(StoreError::NotFound(format!(
                "model {model}: alias {selector} points to version {version}, which does not exist"
            ))),
            None if versions.is_empty() => {
                Err(StoreError::NotFound(format!("model {model} not found")))
            }
            None => Err(StoreError::NotFound(format!(
                "model {model} has no version or alias {selector}"
            ))),
        }
    }

    /// Reads `model` `version` and verifies its weights and assets against the manifest's
    /// sha256, from the local cache when they are there (a remote store's files are cached once
    /// verified).
    pub async fn load(&self, model: &ModelName, version: &Version) -> Result<Artifact, StoreError> {
        let manifest = self.manifest(model, version).await?;
        let (weights, mut fetch) = self
            .fetch_verified(&manifest, "model.bin", &manifest.sha256)
            .await?;
        let mut assets = Assets::new();
        for (name, sha256) in &manifest.assets {
            let (bytes, report) = self.fetch_verified(&manifest, name, sha256).await?;
            fetch.add(report);
            assets.insert(name.clone(), bytes);
        }
        Ok(Artifact {
            manifest,
            weights,
            assets,
            fetch,
        })
    }

    /// The file `name` of `manifest`'s version, whose sha256 must be `expected`: from the cache
    /// when there, else from the store (then cached).
    async fn fetch_verified(
        &self,
        manifest: &Manifest,
        name: &str,
        expected: &str,
    ) -> Result<(Bytes, FetchReport), StoreError> {
        let (model, version) = (&manifest.name, &manifest.version);
        let key = file_key(model, version, name)?;
        let verified = |bytes: &Bytes| {
            let started = Instant::now();
            let actual = sha256_hex(bytes);
            (
                actual.eq_ignore_ascii_case(expected),
                actual,
                started.elapsed(),
            )
        };
        let report = |bytes: &Bytes, cache_hit, download, verify| FetchReport {
            bytes: bytes.len(),
            cache_hit,
            download,
            verify,
        };
        let started = Instant::now();
        if let Some(cache) = &self.cache
            && let Some(bytes) = cache.get(expected).await?
        {
            let download = started.elapsed();
            match verified(&bytes) {
                (true, _, verify) => {
                    metrics::counter!(crate::telemetry::metrics::CACHE_HITS).increment(1);
                    let fetch = report(&bytes, true, download, verify);
                    return Ok((bytes, fetch));
                }
                (false, ..) => cache.remove(expected).await?,
            }
        }
        let started = Instant::now();
        let bytes = self.store.get(&key).await.map_err(|e| match e {
            StoreError::NotFound(_) => {
                let what = match name {
                    "model.bin" => "weights".to_owned(),
                    asset => format!("asset {asset}"),
                };
                StoreError::Invalid(format!(
                    "model {model} version {version} has a manifest but no {what} ({key})"
                ))
            }
            e => e,
        })?;
        let download = started.elapsed();
        let (matches, actual, verify) = verified(&bytes);
        if !matches {
            return Err(StoreError::Integrity {
                model: model.to_string(),
                version: version.to_string(),
                file: name.to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
        if let Some(cache) = &self.cache {
            metrics::counter!(crate::telemetry::metrics::CACHE_MISSES).increment(1);
            // A cache that cannot be written (disk full, read-only) costs the next start a
            // download; it must not stop verified files from being served now.
            if let Err(e) = cache.put(&actual, bytes.clone()).await {
                tracing::warn!(%model, %version, file = name, error = %Chain(&e), "cannot cache");
            }
        }
        let fetch = report(&bytes, false, download, verify);
        Ok((bytes, fetch))
    }

    /// The next free numeric version of `model` (1 for a new model).
    pub async fn next_version(&self, model: &ModelName) -> Result<Version, StoreError> {
        let last = self
            .versions(model)
            .await?
            .iter()
            .filter_map(Version::number)
            .max();
        Ok(Version::parse(&(last.unwrap_or(0) + 1).to_string())
            .expect("numbers are valid versions"))
    }

    /// Writes a new version: weights and assets first, manifest last, so a reader that sees the
    /// manifest finds the files it names. `assets` must be the manifest's, with its sha256s.
    pub async fn publish(
        &self,
        manifest: &Manifest,
        weights: Bytes,
        assets: &Assets,
    ) -> Result<(), StoreError> {
        let (model, version) = (&manifest.name, &manifest.version);
        let names: Vec<_> = assets.keys().collect();
        if !names.iter().copied().eq(manifest.assets.keys()) {
            return Err(StoreError::Invalid(format!(
                "the manifest names assets {:?}, given {names:?}",
                manifest.assets.keys().collect::<Vec<_>>()
            )));
        }
        for (name, bytes) in assets {
            self.store
                .put(&file_key(model, version, name)?, bytes.clone())
                .await?;
        }
        self.store
            .put(&format!("{model}/{version}/model.bin"), weights)
            .await?;
        let json =
            serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.store
            .put(&format!("{model}/{version}/manifest.json"), json.into())
            .await
    }

    /// Uploads the version in local directory `dir` (its `model.bin`, assets and
    /// `manifest.json`), checked first: the files must match the manifest, and an existing
    /// version of that name must be the same one (versions are immutable; pushing one twice is
    /// a no-op).
    pub async fn push(&self, dir: &std::path::Path) -> Result<Manifest, StoreError> {
        let local = Repository::new(Arc::new(FsStore::new(dir)));
        let manifest: Manifest = serde_json::from_slice(&local.store.get("manifest.json").await?)
            .map_err(|e| {
            StoreError::Invalid(format!("{}/manifest.json: {e}", dir.display()))
        })?;
        let read = |name: String, expected: String| {
            let local = &local;
            let manifest = &manifest;
            async move {
                let bytes = local.store.get(&name).await?;
                let actual = sha256_hex(&bytes);
                if !actual.eq_ignore_ascii_case(&expected) {
                    return Err(StoreError::Integrity {
                        model: manifest.name.to_string(),
                        version: manifest.version.to_string(),
                        file: name,
                        expected,
                        actual,
                    });
                }
                Ok(bytes)
            }
        };
        let weights = read("model.bin".into(), manifest.sha256.clone()).await?;
        let mut assets = Assets::new();
        for (name, sha256) in &manifest.assets {
            file_key(&manifest.name, &manifest.version, name)?;
            assets.insert(name.clone(), read(name.clone(), sha256.clone()).await?);
        }
        self.add(manifest, weights, &assets).await
    }

    /// Publishes a version unless one of that name exists: the same one (same weights and
    /// assets) is returned as it is; another is refused, since versions are immutable.
    pub async fn add(
        &self,
        manifest: Manifest,
        weights: Bytes,
        assets: &Assets,
    ) -> Result<Manifest, StoreError> {
        self.store.create_if_missing().await;
        match self.manifest(&manifest.name, &manifest.version).await {
            Ok(existing)
                if existing.sha256.eq_ignore_ascii_case(&manifest.sha256)
                    && existing.assets == manifest.assets =>
            {
                return Ok(existing);
            }
            Ok(_) => {
                return Err(StoreError::Invalid(format!(
                    "model {} version {} already exists in {} with other files; versions are \
                     immutable, publish it under a new version",
                    manifest.name,
                    manifest.version,
                    self.describe()
                )));
            }
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.publish(&manifest, weights, assets).await?;
        Ok(manifest)
    }

    /// Points `alias` of `model` at `version`, which must exist.
    pub async fn promote(
        &self,
        model: &ModelName,
        version: &Version,
        alias: &Version,
    ) -> Result<(), StoreError> {
        self.manifest(model, version).await?;
        self.set_alias(model, alias, version).await
    }

    /// Points `alias` of `model` at `version` only if `version` beats the version the alias points
    /// at now on `gate`'s metric (or the alias is new). The comparison is read before the alias is
    /// written: two gated promotions of one model at once must be serialised by their caller.
    pub async fn promote_if_better(
        &self,
        model: &ModelName,
        version: &Version,
        alias: &Version,
        gate: &MetricGate,
    ) -> Result<Promotion, StoreError> {
        let candidate = self.manifest(model, version).await?;
        let score = |manifest: &Manifest| {
            manifest.metrics.get(&gate.metric).copied().ok_or_else(|| {
                let known: Vec<&str> = manifest.metrics.keys().map(String::as_str).collect();
                StoreError::Invalid(format!(
                    "{model} version {} has no metric {:?} (it has: {})",
                    manifest.version,
                    gate.metric,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ))
            })
        };
        let new = score(&candidate)?;
        let Some(current) = self.aliases(model).await?.get(alias.as_str()).cloned() else {
            self.set_alias(model, alias, version).await?;
            return Ok(Promotion::Promoted {
                replaced: None,
                new,
                old: None,
            });
        };
        if current == *version {
            return Ok(Promotion::AlreadyThere);
        }
        let old = score(&self.manifest(model, &current).await?)?;
        if !gate.better(new, old) {
            return Ok(Promotion::NotBetter { current, new, old });
        }
        self.set_alias(model, alias, version).await?;
        Ok(Promotion::Promoted {
            replaced: Some(current),
            new,
            old: Some(old),
        })
    }

    /// Points `alias` of `model` at `version`.
    pub async fn set_alias(
        &self,
        model: &ModelName,
        alias: &Version,
        version: &Version,
    ) -> Result<(), StoreError> {
        let mut aliases = self.aliases(model).await?;
        aliases.insert(alias.to_string(), version.clone());
        let json =
            serde_json::to_vec_pretty(&aliases).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.store
            .put(&format!("{model}/aliases.json"), json.into())
            .await
    }
}

/// The key of file `name` of a version: `model.bin` or an asset named like a version (the same
/// characters, so never a path), but not `manifest.json`.
fn file_key(model: &ModelName, version: &Version, name: &str) -> Result<String, StoreError> {
    match Version::parse(name) {
        Ok(_) if name != "manifest.json" => Ok(format!("{model}/{version}/{name}")),
        _ => Err(StoreError::Invalid(format!(
            "model {model} version {version}: asset name {name:?} must be 1-64 of A-Z, a-z, \
             0-9, '.', '_' and '-', and not manifest.json"
        ))),
    }
}
