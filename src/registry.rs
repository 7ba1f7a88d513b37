//! The model versions this worker serves: loaded on start (every alias's target) or on first
//! request (an explicit version), each with its executor and batcher.
//!
//! Lookups read an immutable snapshot (lock-free); only a miss takes the loading lock, so one
//! slow load never stalls requests for models already served.
//!
//! Hot reload ([`Registry::watch`]): each served model's `aliases.json` is polled (a conditional
//! read, so an unchanged file costs one small request); a promoted version is loaded and warmed
//! up beside the serving one, then the alias is switched in one snapshot swap. Requests already
//! queued finish on the old version; the next ones go to the new. If the new version cannot be
//! fetched, verified or loaded, the alias keeps its last good version and the poll tries again.

use crate::batcher::{BatchConfig, Batcher};
use crate::client::chain::Chain;
use crate::protocol::{ErrorCode, InferError};
use crate::runtime::{Device, Executor};
use crate::store::{DEFAULT_ALIAS, Manifest, ModelName, Repository, StoreError, Version};
use crate::telemetry::metrics::{self as names, VersionMetrics};
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default for `--reload-interval`.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// An alias of a model that now points at another version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// Model name.
    pub model: String,
    /// The alias.
    pub alias: String,
    /// Version it served before.
    pub from: String,
    /// Version it serves now.
    pub to: String,
}

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
    device: Device,
    snapshot: ArcSwap<HashMap<String, ModelSlots>>,
    /// Held while loading on a miss, and while swapping the snapshot.
    loading: tokio::sync::Mutex<()>,
    /// Per model, the tag of the `aliases.json` last applied in full.
    alias_tags: Mutex<HashMap<String, String>>,
}

impl Registry {
    /// An empty registry reading from `repo`, batching with `batch`, running models on the
    /// default device (see [`on_device`](Self::on_device)).
    pub fn new(repo: Repository, batch: BatchConfig) -> Self {
        Self {
            repo,
            batch,
            device: Device::default(),
            snapshot: ArcSwap::default(),
            loading: tokio::sync::Mutex::new(()),
            alias_tags: Mutex::default(),
        }
    }

    /// The registry, loading models onto `device` instead.
    pub fn on_device(self, device: Device) -> Self {
        Self { device, ..self }
    }

    /// The repository it reads.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Loads every aliased version of `model` (at least `production`), returning those
    /// served. Fails if `production`, what a request without a version gets, cannot be served;
    /// other versions that fail are logged and answered with their error.
    pub async fn preload(&self, model: &ModelName) -> Result<Vec<Version>, InferError> {
        let aliases = self.repo.aliases(model).await.map_err(store_error)?;
        let mut loaded = vec![
            self.get(model.as_str(), None)
                .await?
                .manifest
                .version
                .clone(),
        ];
        for selector in aliases.keys().filter(|alias| *alias != DEFAULT_ALIAS) {
            match self.get(model.as_str(), Some(selector)).await {
                Ok(served) => loaded.push(served.manifest.version.clone()),
                Err(e) => {
                    tracing::error!(%model, %selector, error = %Chain(&e), "model version not served")
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
        if matches!(slot, Slot::Ready(_)) {
            model_info(model, selector, version.as_str(), true);
        }
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

    /// Polls the aliases of every served model every `interval` until `stop`, switching
    /// promoted aliases (see the module docs).
    pub async fn watch(&self, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => { self.refresh().await; }
            }
        }
    }

    /// One poll of every served model's aliases; returns the aliases switched.
    pub async fn refresh(&self) -> Vec<Switch> {
        let models: Vec<String> = self.snapshot.load().keys().cloned().collect();
        let mut switched = Vec::new();
        for model in models {
            switched.extend(self.refresh_model(&model).await);
        }
        switched
    }

    async fn refresh_model(&self, model: &str) -> Vec<Switch> {
        let Ok(name) = ModelName::parse(model) else {
            return Vec::new();
        };
        let known = self
            .alias_tags
            .lock()
            .expect("not poisoned")
            .get(model)
            .cloned();
        let (aliases, tag) = match self.repo.aliases_if_changed(&name, known.as_deref()).await {
            Ok(Some(changed)) => changed,
            Ok(None) => return Vec::new(),
            Err(e) => {
                reload_failed(model, "aliases", &Chain(&e).to_string());
                return Vec::new();
            }
        };
        let current = self.snapshot.load().get(model).cloned().unwrap_or_default();
        let mut applied_in_full = true;
        let mut ready: Vec<(Switch, Slot)> = Vec::new();
        for (selector, serving) in &current.selectors {
            let Some(target) = aliases.get(selector) else {
                continue; // an explicit version, or an alias since removed: keep serving it
            };
            if target.as_str() == serving || current.versions.contains_key(selector) {
                continue;
            }
            let loaded = ready.iter().find(|(s, _)| s.to == target.as_str());
            let slot = match (loaded, current.versions.get(target.as_str())) {
                (Some((_, slot)), _) | (None, Some(slot)) => slot.clone(),
                (None, None) => match self.load(&name, target).await {
                    Ok(slot) => slot,
                    Err(e) => {
                        // Unreachable store or the like: keep the old version, retry next poll.
                        applied_in_full = false;
                        reload_failed(model, target.as_str(), &e.message);
                        continue;
                    }
                },
            };
            if let Slot::Failed(e) = &slot {
                // Broken for good (bad sha256, unloadable): retried only if the aliases change.
                reload_failed(model, target.as_str(), &e.message);
                continue;
            }
            let switch = Switch {
                model: model.to_owned(),
                alias: selector.clone(),
                from: serving.clone(),
                to: target.to_string(),
            };
            ready.push((switch, slot));
        }
        {
            let _swap = self.loading.lock().await;
            let mut all = HashMap::clone(&self.snapshot.load());
            let slots = all.entry(model.to_owned()).or_default();
            for (switch, slot) in &ready {
                slots
                    .selectors
                    .insert(switch.alias.clone(), switch.to.clone());
                slots.versions.insert(switch.to.clone(), slot.clone());
            }
            // Versions nothing points at any more stop once their queued requests are done.
            let used: HashSet<String> = slots.selectors.values().cloned().collect();
            slots.versions.retain(|version, _| used.contains(version));
            self.snapshot.store(Arc::new(all));
        }
        if applied_in_full {
            self.alias_tags
                .lock()
                .expect("not poisoned")
                .insert(model.to_owned(), tag);
        }
        ready
            .into_iter()
            .map(|(switch, _)| {
                tracing::info!(model, alias = %switch.alias, from = %switch.from, to = %switch.to, "switched to the promoted version");
                metrics::counter!(names::MODEL_RELOADS, "model" => model.to_owned(), "outcome" => "switched").increment(1);
                model_info(model, &switch.alias, &switch.from, false);
                model_info(model, &switch.alias, &switch.to, true);
                switch
            })
            .collect()
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
        let started = std::time::Instant::now();
        let artifact = match self.repo.load(model, version).await {
            Ok(artifact) => artifact,
            Err(e @ (StoreError::Integrity { .. } | StoreError::Invalid(_))) => {
                return failed(Chain(&e).to_string());
            }
            Err(e) => return Err(store_error(e)),
        };
        match Executor::start(
            &artifact,
            self.batch.max_batch_size,
            self.batch.max_batch_tokens,
            self.device,
        )
        .await
        {
            Ok((executor, done)) => {
                let seconds = started.elapsed().as_secs_f64();
                tracing::info!(%model, %version, seconds, "model version loaded");
                metrics::histogram!(names::MODEL_LOAD, "model" => model.to_string())
                    .record(seconds);
                let version_metrics = VersionMetrics::new(model.as_str(), version.as_str());
                let batcher = Batcher::spawn(executor, done, self.batch, version_metrics);
                let manifest = artifact.manifest;
                Ok(Slot::Ready(Arc::new(Served { manifest, batcher })))
            }
            Err(e) => failed(Chain(&e).to_string()),
        }
    }
}

fn reload_failed(model: &str, target: &str, error: &str) {
    tracing::error!(
        model,
        target,
        error,
        "reload failed; still serving the last good version"
    );
    metrics::counter!(names::MODEL_RELOADS, "model" => model.to_owned(), "outcome" => "failed")
        .increment(1);
}

/// Sets `ember_model_info{model, alias, version}`: 1 while `alias` serves `version`.
fn model_info(model: &str, alias: &str, version: &str, serving: bool) {
    let labels = [("model", model), ("alias", alias), ("version", version)];
    let labels = labels.map(|(key, value)| (key, value.to_owned()));
    metrics::gauge!(names::MODEL_INFO, &labels).set(if serving { 1.0 } else { 0.0 });
}

fn store_error(e: StoreError) -> InferError {
    match e {
        StoreError::NotFound(message) => InferError::not_found(message),
        e => InferError::new(ErrorCode::Internal, Chain(&e).to_string()),
    }
}
