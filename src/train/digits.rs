//! The digits data set and the training loop of the digits CNN.
//!
//! Data: the UCI ML hand-written digits (8×8, 1 797 images, pixel values 0–16), shipped as
//! `data/digits.csv.gz`, byte for byte the file scikit-learn 1.9.1 ships (see `data/README.md`).

use super::{Epoch, Example, Hyper, Trained};
use crate::models::Architecture;
use crate::models::digits::{DigitsCnn, DigitsCnnConfig};
use crate::protocol::{DataType, Tensor as WireTensor, TensorData as WireData};
use crate::store::TrainingRecord;
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use std::collections::BTreeMap;
use std::path::Path;

const DATA_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Provenance of the shipped data, recorded in every manifest (with its sha256).
pub const DATASET: &str = "UCI ML hand-written digits 8x8 (scikit-learn 1.9.1 digits.csv.gz)";

/// Files `--data DIR` may hold, in order of preference.
pub const FILES: &[&str] = &["digits.csv.gz", "digits.csv"];

/// Hyper-parameters unless the command line says otherwise.
pub const DEFAULTS: Hyper = Hyper {
    epochs: 30,
    batch_size: 32,
    learning_rate: 2e-3,
    seed: 7,
    test_fraction: 0.2,
};

/// Pixels per image.
pub const PIXELS: usize = 64;

/// Images (row-major, `PIXELS` values 0–16 each) and their labels.
#[derive(Debug, Clone, Default)]
pub struct Digits {
    /// `len() × PIXELS` pixel values.
    pub pixels: Vec<f32>,
    /// Class of each image.
    pub labels: Vec<u8>,
}

impl Digits {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.pixels[i * PIXELS..(i + 1) * PIXELS]
    }

    fn subset(&self, indices: &[usize]) -> Self {
        let mut out = Self::default();
        for &i in indices {
            out.pixels.extend_from_slice(self.image(i));
            out.labels.push(self.labels[i]);
        }
        out
    }
}

/// All images of the data set in `dir` (default: the shipped 1 797), and its provenance.
pub fn load(dir: Option<&Path>) -> anyhow::Result<(Digits, String)> {
    let (csv, provenance) = super::read_data(dir, FILES, DATA_GZ, DATASET)?;
    let mut data = Digits::default();
    for (n, line) in csv
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let values: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
        anyhow::ensure!(
            values.len() == PIXELS + 1 && (0.0..10.0).contains(&values[PIXELS]),
            "line {}: expected 64 pixels and a label 0-9",
            n + 1
        );
        data.pixels.extend_from_slice(&values[..PIXELS]);
        data.labels.push(values[PIXELS] as u8);
    }
    anyhow::ensure!(!data.is_empty(), "the data set has no rows");
    Ok((data, provenance))
}

/// The shipped 1 797 images.
pub fn shipped() -> Digits {
    load(None).expect("the shipped data set parses").0
}

/// Splits `data` into (train, held-out) by a seeded shuffle; the same seed gives the same split
/// on every platform.
pub fn split(data: &Digits, seed: u64, test_fraction: f64) -> (Digits, Digits) {
    let (train, test) = super::split_indices(data.len(), seed, test_fraction);
    (data.subset(&train), data.subset(&test))
}

/// The held-out images of the shipped data set, split as `training` says, as requests.
pub fn examples(training: &TrainingRecord) -> Vec<Example> {
    let (_, held_out) = split(&shipped(), training.seed, training.test_fraction);
    (0..held_out.len())
        .map(|i| Example {
            inputs: vec![WireTensor {
                name: "input".into(),
                shape: vec![1, PIXELS],
                datatype: DataType::Fp32,
                data: WireData::F32(held_out.image(i).to_vec()),
            }],
            output: "label",
            expected: WireData::I64(vec![held_out.labels[i].into()]),
        })
        .collect()
}

/// Trains the CNN on the training split, reporting each epoch with its held-out accuracy.
pub fn train<B: AutodiffBackend>(
    hyper: Hyper,
    dir: Option<&Path>,
    device: &B::Device,
    progress: &mut dyn FnMut(Epoch),
) -> anyhow::Result<Trained> {
    let (data, dataset) = load(dir)?;
    let (train, test) = split(&data, hyper.seed, hyper.test_fraction);
    let config = DigitsCnnConfig::default();
    let mut model: DigitsCnn<B> = config.init(device);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    for epoch in 1..=hyper.epochs {
        let order = super::shuffled(train.len(), hyper.seed.wrapping_add(epoch as u64));
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for chunk in order.chunks(hyper.batch_size) {
            let batch = train.subset(chunk);
            let x = Tensor::<B, 2>::from_data(
                TensorData::new(batch.pixels, [chunk.len(), PIXELS]),
                device,
            );
            let labels: Vec<i64> = batch.labels.iter().map(|&l| l.into()).collect();
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [chunk.len()]), device);
            let loss = loss_fn.forward(model.logits(x), y);
            loss_sum += loss.clone().into_scalar().elem::<f32>();
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(hyper.learning_rate, model, grads);
        }
        progress(Epoch {
            epoch,
            loss: loss_sum / batches.max(1) as f32,
            metrics: vec![("test_accuracy", accuracy(&model.valid(), &test))],
        });
    }
    let held_out = accuracy(&model.valid(), &test);
    Ok(Trained {
        architecture: Architecture::DigitsCnn(config),
        labels: (0..10).map(|d| d.to_string()).collect(),
        weights: super::record(model)?,
        metrics: BTreeMap::from([("test_accuracy".to_owned(), held_out)]),
        dataset,
        train_samples: train.len(),
        test_samples: test.len(),
    })
}

/// Share of `data` the model classifies correctly.
pub fn accuracy<B: Backend>(model: &DigitsCnn<B>, data: &Digits) -> f64 {
    let device = model.devices().into_iter().next().unwrap_or_default();
    let x = Tensor::<B, 2>::from_data(
        TensorData::new(data.pixels.clone(), [data.len(), PIXELS]),
        &device,
    );
    let predicted = model
        .logits(x)
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default();
    let correct = predicted
        .iter()
        .zip(&data.labels)
        .filter(|&(&p, &l)| p == i64::from(l))
        .count();
    correct as f64 / data.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_all_1797_images_with_ten_classes() {
        let data = shipped();
        assert_eq!(data.len(), 1797);
        assert_eq!(data.pixels.len(), 1797 * PIXELS);
        assert!(data.pixels.iter().all(|&p| (0.0..=16.0).contains(&p)));
        let mut classes = data.labels.clone();
        classes.sort();
        classes.dedup();
        assert_eq!(classes, (0..10).collect::<Vec<u8>>());
    }

    #[test]
    fn the_recorded_provenance_names_the_shipped_bytes() {
        let (_, provenance) = load(None).unwrap();
        assert!(provenance.starts_with(DATASET));
        assert!(
            provenance.ends_with(
                "sha256 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
            )
        );
    }

    #[test]
    fn data_from_a_folder_is_read_and_named_by_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let rows = "0,".repeat(64) + "3\n" + &"16,".repeat(64) + "9\n";
        std::fs::write(dir.path().join("digits.csv"), &rows).unwrap();
        let (data, provenance) = load(Some(dir.path())).unwrap();
        assert_eq!(data.labels, [3, 9]);
        assert!(provenance.contains(&crate::store::sha256_hex(rows.as_bytes())));
        std::fs::write(dir.path().join("digits.csv"), "1,2,3\n").unwrap();
        let error = load(Some(dir.path())).unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
        let empty = tempfile::tempdir().unwrap();
        assert!(load(Some(empty.path())).is_err());
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let data = shipped();
        let (train_a, test_a) = split(&data, 7, 0.2);
        let (_, test_b) = split(&data, 7, 0.2);
        let (_, test_c) = split(&data, 8, 0.2);
        assert_eq!(test_a.pixels, test_b.pixels);
        assert_ne!(test_a.pixels, test_c.pixels);
        assert_eq!(train_a.len() + test_a.len(), data.len());
        assert_eq!(test_a.len(), 359);
    }
}
