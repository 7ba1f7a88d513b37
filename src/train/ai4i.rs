//! The AI4I 2020 predictive-maintenance data set and the training of the failure MLP, with a
//! logistic regression on the same features as the baseline it must beat.
//!
//! Data: the UCI file's 10 000 milling processes, shipped as `data/ai4i2020.csv.gz` and compiled
//! in; `--data DIR` reads another copy in the same columns (`ai4i2020.csv`, or gzip-compressed).

use super::metrics::{Confusion, best_f1_threshold, roc_auc};
use super::{Epoch, Example, Hyper, Trained};
use crate::models::failure::{Combine, Derived, FailureMlp, FailureMlpConfig};
use crate::models::{Architecture, failure_outputs};
use crate::protocol::{DataType, Tensor as WireTensor, TensorData as WireData};
use crate::store::TrainingRecord;
use anyhow::Context;
use burn::module::AutodiffModule;
use burn::nn::loss::BinaryCrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use std::collections::BTreeMap;
use std::path::Path;

const DATA_GZ: &[u8] = include_bytes!("../../data/ai4i2020.csv.gz");

/// Provenance of the shipped data, recorded in every manifest (with its sha256).
pub const DATASET: &str = "UCI AI4I 2020 Predictive Maintenance Dataset (S. Matzka, AI4I 2020; CC BY 4.0), \
     data/ai4i2020.csv.gz";

/// Files `--data DIR` may hold, in order of preference (the UCI download is `ai4i2020.csv`).
pub const FILES: &[&str] = &["ai4i2020.csv", "ai4i2020.csv.gz"];

/// Hyper-parameters unless the command line says otherwise.
pub const DEFAULTS: Hyper = Hyper {
    epochs: 60,
    batch_size: 64,
    learning_rate: 3e-3,
    seed: 7,
    test_fraction: 0.2,
};

/// Sensor columns, in the order of the `sensors` input.
pub const SENSORS: [&str; 5] = [
    "Air temperature [K]",
    "Process temperature [K]",
    "Rotational speed [rpm]",
    "Torque [Nm]",
    "Tool wear [min]",
];

/// Targets, in output order: machine failure, then the five failure modes.
pub const TARGETS: [&str; 6] = ["Machine failure", "TWF", "HDF", "PWF", "OSF", "RNF"];

/// Product quality variants (column `Type`).
pub const VARIANTS: [&str; 3] = ["L", "M", "H"];

/// Hidden layers of the MLP.
const HIDDEN: [usize; 2] = [64, 64];

/// Processes: raw sensor values, product variant and failure labels, row by row.
#[derive(Debug, Clone, Default)]
pub struct Processes {
    /// `len() × SENSORS.len()` values.
    pub sensors: Vec<f32>,
    /// Product quality variant of each process.
    pub variants: Vec<String>,
    /// Each target of each process.
    pub targets: Vec<[bool; TARGETS.len()]>,
}

impl Processes {
    /// Number of processes.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn subset(&self, indices: &[usize]) -> Self {
        let width = SENSORS.len();
        let mut out = Self::default();
        for &i in indices {
            out.sensors
                .extend_from_slice(&self.sensors[i * width..(i + 1) * width]);
            out.variants.push(self.variants[i].clone());
            out.targets.push(self.targets[i]);
        }
        out
    }

    fn column(&self, target: usize) -> Vec<bool> {
        self.targets.iter().map(|t| t[target]).collect()
    }
}

/// The data set in `dir` (default: the shipped one) and its provenance.
pub fn load(dir: Option<&Path>) -> anyhow::Result<(Processes, String)> {
    let (csv, provenance) = super::read_data(dir, FILES, DATA_GZ, DATASET)?;
    let mut lines = csv.lines().enumerate();
    let (_, header) = lines.next().context("the data set is empty")?;
    let header: Vec<&str> = header.split(',').map(str::trim).collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("the header has no column {name:?}"))
    };
    let sensors = SENSORS.map(column);
    let targets = TARGETS.map(column);
    let (sensors, targets, variant) = (
        sensors.into_iter().collect::<anyhow::Result<Vec<_>>>()?,
        targets.into_iter().collect::<anyhow::Result<Vec<_>>>()?,
        column("Type")?,
    );
    let mut data = Processes::default();
    for (n, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let row = || format!("line {}", n + 1);
        anyhow::ensure!(
            fields.len() == header.len(),
            "{}: wrong column count",
            row()
        );
        for &c in &sensors {
            let value: f32 = fields[c]
                .parse()
                .with_context(|| format!("{}: {:?} is not a number", row(), fields[c]))?;
            anyhow::ensure!(value.is_finite(), "{}: {value} is not finite", row());
            data.sensors.push(value);
        }
        anyhow::ensure!(
            VARIANTS.contains(&fields[variant]),
            "{}: Type {:?} is not one of {VARIANTS:?}",
            row(),
            fields[variant]
        );
        data.variants.push(fields[variant].to_owned());
        let mut flags = [false; TARGETS.len()];
        for (flag, &c) in flags.iter_mut().zip(&targets) {
            *flag = match fields[c] {
                "0" => false,
                "1" => true,
                other => anyhow::bail!("{}: label {other:?} is not 0 or 1", row()),
            };
        }
        data.targets.push(flags);
    }
    anyhow::ensure!(!data.is_empty(), "the data set has no rows");
    Ok((data, provenance))
}

/// Splits `data` into (train, held-out) by a seeded shuffle.
pub fn split(data: &Processes, seed: u64, test_fraction: f64) -> (Processes, Processes) {
    let (train, test) = super::split_indices(data.len(), seed, test_fraction);
    (data.subset(&train), data.subset(&test))
}

/// The held-out processes of the shipped data set, split as `training` says, as requests.
pub fn examples(training: &TrainingRecord) -> anyhow::Result<Vec<Example>> {
    let (data, _) = load(None)?;
    let (_, held_out) = split(&data, training.seed, training.test_fraction);
    let width = SENSORS.len();
    Ok((0..held_out.len())
        .map(|i| Example {
            inputs: vec![
                WireTensor {
                    name: "sensors".into(),
                    shape: vec![1, width],
                    datatype: DataType::Fp32,
                    data: WireData::F32(held_out.sensors[i * width..(i + 1) * width].to_vec()),
                },
                WireTensor {
                    name: "product_type".into(),
                    shape: vec![1],
                    datatype: DataType::Bytes,
                    data: WireData::Bytes(vec![held_out.variants[i].clone()]),
                },
            ],
            output: "failure",
            expected: WireData::Bool(vec![held_out.targets[i][0]]),
        })
        .collect())
}

/// Trains the MLP and the logistic-regression baseline on the training split; reports each
/// epoch of the MLP with its held-out ROC-AUC. The held-out figures (`test_*`) sit beside the
/// logistic regression's (`logistic_*`) and those of always answering the majority class, "no
/// failure" (`majority_*`), all from this run's split.
pub fn train<B: AutodiffBackend>(
    hyper: Hyper,
    dir: Option<&Path>,
    device: &B::Device,
    progress: &mut dyn FnMut(Epoch),
) -> anyhow::Result<Trained> {
    let (data, dataset) = load(dir)?;
    let (train, test) = split(&data, hyper.seed, hyper.test_fraction);
    let mut logistic_config = FailureMlpConfig {
        sensors: SENSORS.map(str::to_owned).to_vec(),
        derived: derived(),
        means: Vec::new(),
        stds: Vec::new(),
        variants: VARIANTS.map(str::to_owned).to_vec(),
        hidden: Vec::new(),
        targets: TARGETS.map(str::to_owned).to_vec(),
        threshold: 0.5,
    };
    (logistic_config.means, logistic_config.stds) = scaling(
        &logistic_config.raw_features(&train.sensors),
        logistic_config.scaled(),
    );
    let config = FailureMlpConfig {
        hidden: HIDDEN.to_vec(),
        ..logistic_config.clone()
    };
    let (logistic, logistic_config) =
        fit::<B>(&logistic_config, &train, &test, hyper, device, &mut |_| {})?;
    let (model, config) = fit::<B>(&config, &train, &test, hyper, device, progress)?;
    let mut metrics = BTreeMap::new();
    for (prefix, model, config) in [
        ("test", &model, &config),
        ("logistic", &logistic, &logistic_config),
    ] {
        let model = model.valid();
        let thresholds = thresholds(&probabilities(&model, config, &train)?, &train);
        let held_out = probabilities(&model, config, &test)?;
        metrics.extend(evaluate(prefix, &held_out, &thresholds, &test));
    }
    let majority = vec![0.0; test.len() * TARGETS.len()];
    metrics.extend(evaluate(
        "majority",
        &majority,
        &[1.0; TARGETS.len()],
        &test,
    ));
    Ok(Trained {
        architecture: Architecture::FailureMlp(config),
        labels: TARGETS.map(str::to_owned).to_vec(),
        weights: super::record(model)?,
        metrics,
        dataset,
        train_samples: train.len(),
        test_samples: test.len(),
    })
}

/// The features the failure mechanisms depend on, derived from the sensors: mechanical power
/// (torque × angular speed), the process's heat rise over the air, and tool strain (wear ×
/// torque).
fn derived() -> Vec<Derived> {
    let [air, process, speed, torque, wear] = [0, 1, 2, 3, 4];
    vec![
        Derived {
            name: "Power [W]".into(),
            op: Combine::Product,
            of: [torque, speed],
            scale: std::f32::consts::TAU / 60.0,
        },
        Derived {
            name: "Heat rise [K]".into(),
            op: Combine::Difference,
            of: [process, air],
            scale: 1.0,
        },
        Derived {
            name: "Strain [min Nm]".into(),
            op: Combine::Product,
            of: [wear, torque],
            scale: 1.0,
        },
    ]
}

/// Mean and standard deviation of each of `width` columns of row-major `values`.
fn scaling(values: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (values.len() / width.max(1)).max(1) as f64;
    (0..width)
        .map(|c| {
            let values = values.iter().skip(c).step_by(width).map(|&v| v as f64);
            let mean = values.clone().sum::<f64>() / n;
            let var = values.map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            (mean as f32, (var.sqrt() as f32).max(f32::EPSILON))
        })
        .unzip()
}

/// Trains a network of `config`'s shape; returns it and the config with the machine-failure
/// threshold that maximises F1 on the training split.
fn fit<B: AutodiffBackend>(
    config: &FailureMlpConfig,
    train: &Processes,
    test: &Processes,
    hyper: Hyper,
    device: &B::Device,
    progress: &mut dyn FnMut(Epoch),
) -> anyhow::Result<(FailureMlp<B>, FailureMlpConfig)> {
    let width = config.width();
    let features = config
        .features(&train.sensors, &train.variants)
        .map_err(anyhow::Error::msg)?;
    let mut model: FailureMlp<B> = config.init(device);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = BinaryCrossEntropyLossConfig::new()
        .with_logits(true)
        .init(device);
    for epoch in 1..=hyper.epochs {
        let order = super::shuffled(train.len(), hyper.seed.wrapping_add(epoch as u64));
        let (mut loss_sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(hyper.batch_size) {
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| features[i * width..(i + 1) * width].iter().copied())
                .collect();
            let y: Vec<i64> = chunk
                .iter()
                .flat_map(|&i| train.targets[i].map(i64::from))
                .collect();
            let x = Tensor::<B, 2>::from_data(TensorData::new(x, [chunk.len(), width]), device);
            let y = Tensor::<B, 2, Int>::from_data(
                TensorData::new(y, [chunk.len(), TARGETS.len()]),
                device,
            );
            let loss = loss_fn.forward(model.logits(x), y);
            loss_sum += loss.clone().into_scalar().elem::<f32>();
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(hyper.learning_rate, model, grads);
        }
        let held_out = probabilities(&model.valid(), config, test)?;
        let auc = roc_auc(&column(&held_out, 0), &test.column(0));
        progress(Epoch {
            epoch,
            loss: loss_sum / batches.max(1) as f32,
            metrics: vec![("test_roc_auc", auc.unwrap_or(f64::NAN))],
        });
    }
    let on_train = probabilities(&model.valid(), config, train)?;
    let tuned = FailureMlpConfig {
        threshold: thresholds(&on_train, train)[0],
        ..config.clone()
    };
    Ok((model, tuned))
}

/// Probabilities `[rows × targets]` the network gives `data`.
fn probabilities<B: Backend>(
    model: &FailureMlp<B>,
    config: &FailureMlpConfig,
    data: &Processes,
) -> anyhow::Result<Vec<f32>> {
    let device = model.devices().into_iter().next().unwrap_or_default();
    let features = config
        .features(&data.sensors, &data.variants)
        .map_err(anyhow::Error::msg)?;
    let x = Tensor::<B, 2>::from_data(
        TensorData::new(features, [data.len(), config.width()]),
        &device,
    );
    let (probabilities, _) =
        failure_outputs(model.logits(x), config.threshold).map_err(anyhow::Error::msg)?;
    Ok(probabilities)
}

/// Target `t`'s column of `[rows × targets]` probabilities.
fn column(probabilities: &[f32], t: usize) -> Vec<f32> {
    probabilities
        .iter()
        .skip(t)
        .step_by(TARGETS.len())
        .copied()
        .collect()
}

/// Each target's decision threshold with the highest F1 on (training) `data`.
fn thresholds(probabilities: &[f32], data: &Processes) -> [f32; TARGETS.len()] {
    std::array::from_fn(|t| best_f1_threshold(&column(probabilities, t), &data.column(t)))
}

/// Held-out figures, named `<prefix>_<figure>[_<mode>]`: ROC-AUC (where the split holds both
/// classes) and F1 at `thresholds` of every target; accuracy, precision and recall of machine
/// failure.
fn evaluate(
    prefix: &str,
    probabilities: &[f32],
    thresholds: &[f32; TARGETS.len()],
    test: &Processes,
) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::new();
    for (t, name) in TARGETS.iter().enumerate() {
        let suffix = match t {
            0 => String::new(),
            _ => format!("_{}", name.to_lowercase()),
        };
        let (scores, labels) = (column(probabilities, t), test.column(t));
        let confusion = Confusion::at(&scores, &labels, thresholds[t]);
        metrics.insert(format!("{prefix}_f1{suffix}"), confusion.f1());
        if let Some(auc) = roc_auc(&scores, &labels) {
            metrics.insert(format!("{prefix}_roc_auc{suffix}"), auc);
        }
        if t == 0 {
            metrics.insert(format!("{prefix}_precision"), confusion.precision());
            metrics.insert(format!("{prefix}_recall"), confusion.recall());
            let wrong = confusion.false_positives + confusion.false_negatives;
            metrics.insert(
                format!("{prefix}_accuracy"),
                1.0 - wrong as f64 / test.len().max(1) as f64,
            );
        }
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_uci_file_with_its_published_label_counts_and_quirks() {
        let (data, provenance) = load(None).unwrap();
        assert_eq!(data.len(), 10_000);
        assert!(provenance.contains(&crate::store::sha256_hex(DATA_GZ)));
        let counts: Vec<usize> = (0..TARGETS.len())
            .map(|t| data.targets.iter().filter(|r| r[t]).count())
            .collect();
        assert_eq!(counts, [339, 46, 115, 95, 98, 19]);
        // The original's quirks: failures with no mode flagged, random failures not counted as
        // machine failures.
        let unexplained = data
            .targets
            .iter()
            .filter(|t| t[0] && !t[1..].contains(&true));
        assert_eq!(unexplained.count(), 9);
        assert!(data.targets.iter().any(|t| t[5] && !t[0]));
    }

    #[test]
    fn evaluation_names_each_figure_and_the_majority_scores_nothing() {
        let test = Processes {
            sensors: vec![0.0; 4 * SENSORS.len()],
            variants: vec!["L".into(); 4],
            targets: vec![
                [true, true, false, false, false, false],
                [false, false, false, false, false, true],
                [true, false, true, false, false, false],
                [false; 6],
            ],
        };
        let majority = evaluate("majority", &[0.0; 24], &[1.0; 6], &test);
        assert_eq!(majority["majority_accuracy"], 0.5);
        assert_eq!(majority["majority_f1"], 0.0);
        assert_eq!(majority["majority_roc_auc"], 0.5);
        assert_eq!(majority["majority_f1_twf"], 0.0);
        assert!(!majority.contains_key("majority_roc_auc_pwf"), "no PWF row");
        // Right on machine failure and TWF, one false alarm on RNF.
        let mut scores = [0.0; 24];
        for (row, t) in [(0, 0), (0, 1), (2, 0), (3, 5), (1, 5)] {
            scores[row * 6 + t] = 0.9;
        }
        let figures = evaluate("test", &scores, &[0.5; 6], &test);
        assert_eq!(figures["test_f1"], 1.0);
        assert_eq!(figures["test_accuracy"], 1.0);
        assert_eq!(figures["test_roc_auc_twf"], 1.0);
        assert_eq!(figures["test_f1_rnf"], 2.0 / 3.0);
    }

    #[test]
    fn reads_the_uci_columns_in_any_order_and_names_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let header = "UDI,Product ID,Type,Air temperature [K],Process temperature [K],\
                      Rotational speed [rpm],Torque [Nm],Tool wear [min],Machine failure,TWF,HDF,PWF,OSF,RNF";
        let good = format!("{header}\n1,M14860,M,298.1,308.6,1551,42.8,0,0,0,0,0,0,0\n");
        std::fs::write(dir.path().join("ai4i2020.csv"), &good).unwrap();
        let (data, _) = load(Some(dir.path())).unwrap();
        assert_eq!(data.sensors, [298.1, 308.6, 1551.0, 42.8, 0.0]);
        assert_eq!(data.variants, ["M"]);
        let bad = format!("{header}\n1,X1,X,298.1,308.6,1551,42.8,0,0,0,0,0,0,0\n");
        std::fs::write(dir.path().join("ai4i2020.csv"), bad).unwrap();
        let error = load(Some(dir.path())).unwrap_err().to_string();
        assert!(
            error.contains("line 2") && error.contains("\"X\""),
            "{error}"
        );
    }

    #[test]
    fn scaling_is_per_column_and_never_zero() {
        let (means, stds) = scaling(&[1.0, 2.0, 3.0, 3.0, 2.0, 5.0], 3);
        assert_eq!(means, [2.0, 2.0, 4.0]);
        assert_eq!(stds[0], 1.0);
        assert!(stds[1] > 0.0, "a constant column still divides safely");
    }

    #[test]
    fn derived_features_are_the_failure_physics() {
        let config = FailureMlpConfig {
            sensors: SENSORS.map(str::to_owned).to_vec(),
            derived: derived(),
            means: vec![0.0; 8],
            stds: vec![1.0; 8],
            variants: VARIANTS.map(str::to_owned).to_vec(),
            hidden: Vec::new(),
            targets: TARGETS.map(str::to_owned).to_vec(),
            threshold: 0.5,
        };
        let raw = config.raw_features(&[298.1, 308.6, 1551.0, 42.8, 100.0]);
        // 42.8 Nm at 1551 rpm: 6 952 W; 10.5 K of heat rise; 4 280 min Nm of strain.
        assert!((raw[5] - 6951.6).abs() < 1.0, "{}", raw[5]);
        assert!((raw[6] - 10.5).abs() < 1e-3, "{}", raw[6]);
        assert!((raw[7] - 4280.0).abs() < 1e-2, "{}", raw[7]);
    }
}
