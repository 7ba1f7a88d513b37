//! `ember train`: trains a model and publishes it as a new version of the repository.

pub mod digits;

use crate::models::{Architecture, WeightsRecorder};
use crate::store::{
    DEFAULT_ALIAS, Manifest, ModelName, Repository, TrainingRecord, Version, sha256_hex,
};
use burn::module::Module;
use burn::record::Recorder;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Training hyper-parameters.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Passes over the training split.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Seed of the split, the shuffles and initialisation.
    pub seed: u64,
    /// Share of the data held out for testing.
    pub test_fraction: f64,
    /// Point `production` at the new version (it always is for a model's first version).
    pub promote: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 32,
            learning_rate: 2e-3,
            seed: 7,
            test_fraction: 0.2,
            promote: false,
        }
    }
}

/// Model kinds `ember train` knows.
pub const KINDS: &[&str] = &["digits"];

/// Trains model `kind` and publishes it as the next version of `name` in `repo`.
pub async fn train(
    repo: &Repository,
    kind: &str,
    name: &ModelName,
    options: &TrainOptions,
) -> anyhow::Result<Manifest> {
    anyhow::ensure!(
        kind == "digits",
        "unknown model kind {kind:?}; known: {KINDS:?}"
    );
    let config = crate::models::digits::DigitsCnnConfig::default();
    let (opts, cfg) = (options.clone(), config.clone());
    let (model, accuracy, train_samples, test_samples) = tokio::task::spawn_blocking(move || {
        digits::train(&cfg, &opts, |epoch, loss, accuracy| {
            tracing::info!(
                epoch,
                epochs = opts.epochs,
                loss,
                held_out_accuracy = accuracy,
                "epoch done"
            );
        })
    })
    .await?;
    let weights = WeightsRecorder::default().record(model.into_record(), ())?;
    let architecture = Architecture::DigitsCnn(config);
    let (inputs, outputs) = architecture.signature();
    let version = repo.next_version(name).await?;
    let manifest = Manifest {
        name: name.clone(),
        version: version.clone(),
        architecture,
        inputs,
        outputs,
        labels: (0..10).map(|d| d.to_string()).collect(),
        sha256: sha256_hex(&weights),
        metrics: BTreeMap::from([("test_accuracy".to_owned(), accuracy)]),
        training: Some(TrainingRecord {
            dataset: digits::DATASET.into(),
            seed: options.seed,
            test_fraction: options.test_fraction,
            epochs: options.epochs,
            batch_size: options.batch_size,
            learning_rate: options.learning_rate,
            train_samples,
            test_samples,
            git_commit: option_env!("EMBER_GIT_COMMIT").map(str::to_owned),
        }),
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    repo.publish(&manifest, weights.into()).await?;
    let production = Version::parse(DEFAULT_ALIAS).expect("valid alias");
    if options.promote || !repo.aliases(name).await?.contains_key(DEFAULT_ALIAS) {
        repo.set_alias(name, &production, &version).await?;
    }
    Ok(manifest)
}
