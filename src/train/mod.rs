//! `ember train`: trains a model and publishes it as a new version of the repository.
//!
//! One module per model kind reads its data set and trains on any autodiff backend; this module
//! picks the backend for the device, shows progress, and publishes weights and manifest.

pub mod ai4i;
pub mod cwru;
pub mod digits;
pub mod metrics;

use crate::models::Architecture;
use crate::protocol::Tensor;
use crate::runtime::Device;
use crate::store::{
    DEFAULT_ALIAS, Manifest, ModelName, Repository, TrainingRecord, Version, sha256_hex,
};
use anyhow::Context;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Model kinds `ember train` knows.
pub const KINDS: &[&str] = &["digits", "ai4i", "cwru"];

/// Training hyper-parameters; `None` takes the kind's default.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Passes over the training split.
    pub epochs: Option<usize>,
    /// Seed of the split, the shuffles and initialisation.
    pub seed: Option<u64>,
    /// Folder holding the data set's file (default: the copy compiled into the binary).
    pub data: Option<PathBuf>,
    /// Where to compute.
    pub device: Device,
    /// Point `production` at the new version (it always is for a model's first version).
    pub promote: bool,
}

/// The hyper-parameters a run used: the options with the kind's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
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
}

/// What a kind's training produced, ready to publish.
pub struct Trained {
    /// Network and config.
    pub architecture: Architecture,
    /// Names of the classes or targets, index = output column.
    pub labels: Vec<String>,
    /// The weights, recorded with [`WeightsRecorder`](crate::models::WeightsRecorder).
    pub weights: Vec<u8>,
    /// Held-out figures.
    pub metrics: BTreeMap<String, f64>,
    /// Data set and provenance.
    pub dataset: String,
    /// Samples trained on.
    pub train_samples: usize,
    /// Samples held out.
    pub test_samples: usize,
}

/// One finished epoch, for progress reports.
#[derive(Debug, Clone)]
pub struct Epoch {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub loss: f32,
    /// Held-out figures after the epoch.
    pub metrics: Vec<(&'static str, f64)>,
}

/// A held-out example as a request: one row of each input, and the answer it should get.
#[derive(Debug, Clone)]
pub struct Example {
    /// The request's inputs, in manifest order.
    pub inputs: Vec<Tensor>,
    /// The output to compare.
    pub output: &'static str,
    /// Its expected (one-row) value.
    pub expected: crate::protocol::TensorData,
}

/// Trains model `kind` and publishes it as the next version of `name` in `repo`.
pub async fn train(
    repo: &Repository,
    kind: &str,
    name: &ModelName,
    options: &TrainOptions,
) -> anyhow::Result<Manifest> {
    anyhow::ensure!(
        KINDS.contains(&kind),
        "unknown model kind {kind:?}; known: {KINDS:?}"
    );
    let hyper = hyper(kind, options);
    anyhow::ensure!(hyper.epochs >= 1, "--epochs must be at least 1");
    let (kind_owned, opts) = (kind.to_owned(), options.clone());
    let progress = Progress::new(hyper.epochs);
    let trained = tokio::task::spawn_blocking(move || {
        on_device(&kind_owned, hyper, &opts, &mut |epoch| {
            progress.epoch(epoch)
        })
    })
    .await??;
    let (inputs, outputs) = trained.architecture.signature();
    let version = repo.next_version(name).await?;
    let manifest = Manifest {
        name: name.clone(),
        version: version.clone(),
        architecture: trained.architecture,
        precision: Default::default(),
        inputs,
        outputs,
        labels: trained.labels,
        sha256: sha256_hex(&trained.weights),
        assets: Default::default(),
        source: None,
        metrics: trained.metrics,
        training: Some(TrainingRecord {
            dataset: trained.dataset,
            seed: hyper.seed,
            test_fraction: hyper.test_fraction,
            epochs: hyper.epochs,
            batch_size: hyper.batch_size,
            learning_rate: hyper.learning_rate,
            train_samples: trained.train_samples,
            test_samples: trained.test_samples,
            git_commit: option_env!("EMBER_GIT_COMMIT").map(str::to_owned),
        }),
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    repo.publish(&manifest, trained.weights.into(), &Default::default())
        .await?;
    let production = Version::parse(DEFAULT_ALIAS).expect("valid alias");
    if options.promote || !repo.aliases(name).await?.contains_key(DEFAULT_ALIAS) {
        repo.set_alias(name, &production, &version).await?;
    }
    Ok(manifest)
}

/// The held-out examples of the data `manifest` was trained on (rebuilt from its training
/// record and the shipped data set), for `ember demo` and tests.
pub fn held_out_examples(manifest: &Manifest) -> anyhow::Result<Vec<Example>> {
    let training = manifest
        .training
        .as_ref()
        .context("the manifest has no training record")?;
    match &manifest.architecture {
        Architecture::DigitsCnn(_) => Ok(digits::examples(training)),
        Architecture::FailureMlp(_) => ai4i::examples(training),
        Architecture::VibrationCnn(config) => cwru::examples(training, config.window),
        Architecture::SentenceBert(_) | Architecture::ResNet(_) | Architecture::Identity { .. } => {
            anyhow::bail!(
                "{} was not trained by Ember: it has no data set",
                manifest.name
            )
        }
    }
}

fn hyper(kind: &str, options: &TrainOptions) -> Hyper {
    let defaults = match kind {
        "ai4i" => ai4i::DEFAULTS,
        "cwru" => cwru::DEFAULTS,
        _ => digits::DEFAULTS,
    };
    Hyper {
        epochs: options.epochs.unwrap_or(defaults.epochs),
        seed: options.seed.unwrap_or(defaults.seed),
        ..defaults
    }
}

/// Runs the kind's training on the backend of `options.device`.
fn on_device(
    kind: &str,
    hyper: Hyper,
    options: &TrainOptions,
    progress: &mut dyn FnMut(Epoch),
) -> anyhow::Result<Trained> {
    type Cpu = burn::backend::Autodiff<burn::backend::Flex>;
    match options.device {
        Device::Cpu => run::<Cpu>(kind, hyper, options, Default::default(), progress),
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => run::<burn::backend::Autodiff<burn::backend::Cuda>>(
            kind,
            hyper,
            options,
            burn::backend::cuda::CudaDevice::new(index),
            progress,
        ),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => anyhow::bail!(
            "this ember was built without CUDA: use --device cpu, or build with --features cuda"
        ),
    }
}

fn run<B: AutodiffBackend>(
    kind: &str,
    hyper: Hyper,
    options: &TrainOptions,
    device: B::Device,
    progress: &mut dyn FnMut(Epoch),
) -> anyhow::Result<Trained> {
    B::seed(&device, hyper.seed);
    let data = options.data.as_deref();
    match kind {
        "ai4i" => ai4i::train::<B>(hyper, data, &device, progress),
        "cwru" => cwru::train::<B>(hyper, data, &device, progress),
        _ => digits::train::<B>(hyper, data, &device, progress),
    }
}

/// Records a trained module's weights as `model.bin` bytes: the same weights give the same bytes
/// (so the same seed and data give the same sha256).
pub fn record<B: AutodiffBackend, M: AutodiffModule<B>>(model: M) -> anyhow::Result<Vec<u8>> {
    crate::models::record_weights(model.valid()).map_err(anyhow::Error::msg)
}

/// A data set's bytes (decompressed) and provenance: the first of `files` found in `dir`, else
/// the copy shipped in the binary.
pub fn read_data(
    dir: Option<&Path>,
    files: &[&str],
    shipped: &'static [u8],
    shipped_provenance: &str,
) -> anyhow::Result<(String, String)> {
    let (bytes, provenance) = match dir {
        None => (
            shipped.to_vec(),
            format!("{shipped_provenance}, sha256 {}", sha256_hex(shipped)),
        ),
        Some(dir) => {
            let path = files
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.is_file())
                .with_context(|| format!("{} holds none of {files:?}", dir.display()))?;
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let provenance = format!("{name}, sha256 {}", sha256_hex(&bytes));
            (bytes, provenance)
        }
    };
    let mut text = String::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .context("decompressing the data set")?;
    } else {
        text = String::from_utf8(bytes).context("the data set is not UTF-8 text")?;
    }
    Ok((text, provenance))
}

/// A seeded pseudo-random generator (SplitMix64): the same numbers on every platform, so a
/// seed names a split, a shuffle or a simulated data set.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u = self.uniform(f64::MIN_POSITIVE, 1.0);
        let v = self.uniform(0.0, 1.0);
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `0..n` in a seeded pseudo-random order (Fisher–Yates over [`Rng`]).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    order
}

/// Indices of (train, held-out) rows of an `n`-row data set.
pub fn split_indices(n: usize, seed: u64, test_fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let mut order = shuffled(n, seed);
    let test = ((n as f64) * test_fraction).round() as usize;
    let train = order.split_off(test);
    (train, order)
}

/// Epoch progress: a bar on a terminal, a log line per epoch otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(epochs: usize) -> Self {
        let bar = indicatif::ProgressBar::new(epochs as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("epoch {pos}/{len} {wide_bar} {eta} {msg}")
                .expect("valid template"),
        );
        Self { bar }
    }

    fn epoch(&self, epoch: Epoch) {
        let figures: Vec<String> = epoch
            .metrics
            .iter()
            .map(|(name, value)| format!("{name} {value:.4}"))
            .collect();
        if self.bar.is_hidden() {
            tracing::info!(
                epoch = epoch.epoch,
                epochs = self.bar.length(),
                loss = epoch.loss,
                "epoch done: {}",
                figures.join(", ")
            );
        } else {
            self.bar.set_position(epoch.epoch as u64);
            self.bar
                .set_message(format!("loss {:.4} {}", epoch.loss, figures.join(" ")));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish();
    }
}
