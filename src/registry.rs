//! The model versions this worker serves: loaded on start (every alias's target) or on first
//! request (an explicit version), each with its executor and batcher.
//!
//! Lookups read an immutable snapshot (lock-free); only a miss takes the loading lock, so one
//! slow load never stalls requests for models already served.

use crate::batcher::{BatchConfig, Batcher};
use crate::protocol::{ErrorCode, InferError};
use crate::runtime::Executor;
use crate::store::{DEFAULT_ALIAS, Manifest, ModelName, Repository, StoreError, Version};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// A model version being served.
#[derive(Debug)]
pub struct Served {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its batcher.
    pub batcher: Batcher,
}

#[derive(Clone)]
enum Slot {
    Ready(Arc<Served>),
    /// Loading failed for good (e.g. sha256 mismatch): answered without re-reading the store.
    Failed(InferError),
}

/// Per model: selector (version or alias) → version, and version → slot.
#[derive(Clone, Default)]
struct ModelSlots {
    selectors: HashMap<String, String>,
    versions: HashMap<String, Slot>,
}

/// The served versions of every model.
pub struct Registry {
    repo: Repository,
    batch: BatchConfig,
    snapshot: ArcSwap<HashMap<String, ModelSlots>>,
    loading: tokio::sync::Mutex<()>,
}

impl Registry {
    /// An empty registry reading from `repo`, batching with `batch`.
    pub fn new(repo: Repository, batch: BatchConfig) -> Self {
        Self {
            repo,
            batch,
            snapshot: ArcSwap::default(),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// The repository it reads.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Loads every aliased version of `model` (at least `production`). Versions that fail are
    /// logged and answered with their error; the others are served.
    pub async fn preload(&self, model: &ModelName) -> Result<Vec<Version>, StoreError> {
        let aliases = self.repo.aliases(model).await?;
        let mut selectors: Vec<String> = aliases.keys().cloned().collect();
        if !aliases.contains_key(DEFAULT_ALIAS) {
            selectors.push(DEFAULT_ALIAS.into());
        }
        let mut loaded = Vec::new();
        for selector in selectors {
            match self.get(model.as_str(), Some(&selector)).await {
                Ok(served) => loaded.push(served.manifest.version.clone()),
                Err(e) => {
                    tracing::error!(%model, %selector, error = %e, "model version not served")
                }
            }
        }
        Ok(loaded)
    }

    /// The served version `selector` (a version or alias; default `production`) of `model`,
    /// loading it on first use.
    pub async fn get(
        &self,
        model: &str,
        selector: Option<&str>,
    ) -> Result<Arc<Served>, InferError> {
        let selector = selector.unwrap_or(DEFAULT_ALIAS);
        if let Some(found) = self.lookup(model, selector) {
            return found;
        }
        let _loading = self.loading.lock().await;
        if let Some(found) = self.lookup(model, selector) {
            return found;
        }
        let name = ModelName::parse(model).map_err(|e| InferError::invalid(e.to_string()))?;
        let wanted = Version::parse(selector).map_err(|e| InferError::invalid(e.to_string()))?;
        let version = self
            .repo
            .resolve(&name, &wanted)
            .await
            .map_err(store_error)?;
        let slot = match self.lookup_version(model, version.as_str()) {
            Some(slot) => slot,
            None => self.load(&name, &version).await?,
        };
        let mut all = HashMap::clone(&self.snapshot.load());
        let slots = all.entry(model.to_owned()).or_default();
        slots
            .selectors
            .insert(selector.to_owned(), version.to_string());
        slots.versions.insert(version.to_string(), slot.clone());
        self.snapshot.store(Arc::new(all));
        match slot {
            Slot::Ready(served) => Ok(served),
            Slot::Failed(e) => Err(e),
        }
    }

    /// (model, version) of every version being served.
    pub fn served(&self) -> Vec<(String, String)> {
        let snapshot = self.snapshot.load();
        let mut served: Vec<_> = snapshot
            .iter()
            .flat_map(|(model, slots)| {
                slots
                    .versions
                    .iter()
                    .filter(|(_, slot)| matches!(slot, Slot::Ready(_)))
                    .map(move |(version, _)| (model.clone(), version.clone()))
            })
            .collect();
        served.sort();
        served
    }

    fn lookup(&self, model: &str, selector: &str) -> Option<Result<Arc<Served>, InferError>> {
        let snapshot = self.snapshot.load();
        let slots = snapshot.get(model)?;
        let version = slots.selectors.get(selector)?;
        match slots.versions.get(version)? {
            Slot::Ready(served) => Some(Ok(served.clone())),
            Slot::Failed(e) => Some(Err(e.clone())),
        }
    }

    fn lookup_version(&self, model: &str, version: &str) -> Option<Slot> {
        self.snapshot
            .load()
            .get(model)?
            .versions
            .get(version)
            .cloned()
    }

    async fn load(&self, model: &ModelName, version: &Version) -> Result<Slot, InferError> {
        let failed = |e: String| {
            tracing::error!(%model, %version, error = %e, "cannot load model version");
            Ok(Slot::Failed(InferError::not_found(format!(
                "model {model} version {version} is not available: {e}"
            ))))
        };
        let artifact = match self.repo.load(model, version).await {
            Ok(artifact) => artifact,
            Err(e @ (StoreError::Integrity { .. } | StoreError::Invalid(_))) => {
                return failed(e.to_string());
            }
            Err(e) => return Err(store_error(e)),
        };
        match Executor::start(&artifact, self.batch.max_batch_size).await {
            Ok((executor, done)) => {
                tracing::info!(%model, %version, "model version loaded");
                let batcher = Batcher::spawn(executor, done, self.batch);
                let manifest = artifact.manifest;
                Ok(Slot::Ready(Arc::new(Served { manifest, batcher })))
            }
            Err(e) => failed(e.to_string()),
        }
    }
}

fn store_error(e: StoreError) -> InferError {
    match e {
        StoreError::NotFound(what) => InferError::not_found(format!("{what} not found")),
        e => InferError::new(ErrorCode::Internal, e.to_string()),
    }
}
