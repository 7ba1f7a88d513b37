//! The digits data set and the training loop of the digits CNN.
//!
//! Data: the UCI ML hand-written digits (8×8, 1 797 images, pixel values 0–16), shipped as
//! `data/digits.csv.gz`, byte for byte the file scikit-learn 1.9.1 ships (sha256 below).

use super::TrainOptions;
use crate::models::digits::{DigitsCnn, DigitsCnnConfig};
use crate::runtime::{ServeBackend, TrainBackend};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use std::io::Read;

const DATA_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Provenance of the data, recorded in every manifest.
pub const DATASET: &str = "UCI ML hand-written digits 8x8 (scikit-learn 1.9.1 digits.csv.gz, \
                           sha256 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22)";

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

/// All 1 797 images.
pub fn load() -> Digits {
    let mut csv = String::new();
    flate2::read::GzDecoder::new(DATA_GZ)
        .read_to_string(&mut csv)
        .expect("the shipped data set decompresses");
    let mut data = Digits::default();
    for line in csv.lines().filter(|l| !l.trim().is_empty()) {
        let values: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse().expect("numeric CSV"))
            .collect();
        assert_eq!(
            values.len(),
            PIXELS + 1,
            "each row is 64 pixels and a label"
        );
        data.pixels.extend_from_slice(&values[..PIXELS]);
        data.labels.push(values[PIXELS] as u8);
    }
    data
}

/// Splits `data` into (train, held-out) by a seeded shuffle; the same seed gives the same split
/// on every platform.
pub fn split(data: &Digits, seed: u64, test_fraction: f64) -> (Digits, Digits) {
    let order = shuffled(data.len(), seed);
    let test = ((data.len() as f64) * test_fraction).round() as usize;
    (data.subset(&order[test..]), data.subset(&order[..test]))
}

/// `0..n` in a seeded pseudo-random order (Fisher–Yates over SplitMix64).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    order
}

/// Trains the CNN on the training split, reporting each epoch; returns it with its accuracy
/// on the held-out split.
pub fn train(
    config: &DigitsCnnConfig,
    options: &TrainOptions,
    mut progress: impl FnMut(usize, f32, f64),
) -> (DigitsCnn<ServeBackend>, f64, usize, usize) {
    let (train, test) = split(&load(), options.seed, options.test_fraction);
    let device = Default::default();
    TrainBackend::seed(&device, options.seed);
    let mut model: DigitsCnn<TrainBackend> = config.init(&device);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    for epoch in 1..=options.epochs {
        let order = shuffled(train.len(), options.seed.wrapping_add(epoch as u64));
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for chunk in order.chunks(options.batch_size) {
            let batch = train.subset(chunk);
            let x = Tensor::<TrainBackend, 2>::from_data(
                TensorData::new(batch.pixels, [chunk.len(), PIXELS]),
                &device,
            );
            let labels: Vec<i64> = batch.labels.iter().map(|&l| l.into()).collect();
            let y = Tensor::<TrainBackend, 1, Int>::from_data(
                TensorData::new(labels, [chunk.len()]),
                &device,
            );
            let loss = loss_fn.forward(model.logits(x), y);
            loss_sum += loss.clone().into_scalar().elem::<f32>();
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(options.learning_rate, model, grads);
        }
        let accuracy = accuracy(&model.valid(), &test);
        progress(epoch, loss_sum / batches.max(1) as f32, accuracy);
    }
    let model = model.valid();
    let held_out = accuracy(&model, &test);
    (model, held_out, train.len(), test.len())
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
        let data = load();
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
        let hash = crate::store::sha256_hex(DATA_GZ);
        assert!(DATASET.contains(&hash), "{DATASET} does not name {hash}");
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let data = load();
        let (train_a, test_a) = split(&data, 7, 0.2);
        let (_, test_b) = split(&data, 7, 0.2);
        let (_, test_c) = split(&data, 8, 0.2);
        assert_eq!(test_a.pixels, test_b.pixels);
        assert_ne!(test_a.pixels, test_c.pixels);
        assert_eq!(train_a.len() + test_a.len(), data.len());
        assert_eq!(test_a.len(), 359);
    }
}
