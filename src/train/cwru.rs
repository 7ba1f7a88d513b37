//! Bearing-fault recordings (the CWRU 12 kHz drive-end task) and the training of the vibration
//! CNN on fixed-size windows, split by recording so no held-out window shares a recording with a
//! training window.
//!
//! Data: `--data DIR` reads real CWRU recordings prepared by `data/cwru.py` from the `.mat`
//! files (`recordings.csv` + one raw `f32` file per recording). Without it, the recordings are
//! **simulated** (see [`simulate`]): no package registry reachable from Ember's build machines
//! ships the CWRU files, so the built-in data set is a physical model of the same test rig,
//! good for exercising the pipeline and not a measurement of accuracy on real bearings.

use super::{Epoch, Example, Hyper, Rng, Trained};
use crate::models::Architecture;
use crate::models::vibration::{VibrationCnn, VibrationCnnConfig};
use crate::protocol::{DataType, Tensor as WireTensor, TensorData as WireData};
use crate::store::TrainingRecord;
use anyhow::Context;
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::f64::consts::TAU;
use std::path::Path;

/// Fault classes, in output order.
pub const CLASSES: [&str; 4] = ["normal", "inner_race", "ball", "outer_race"];

/// Sampling rate of the drive-end accelerometer.
pub const SAMPLE_RATE_HZ: u32 = 12_000;

/// Samples per window (171 ms: 18 or more fault strikes at every speed of the rig).
pub const WINDOW: usize = 2048;

/// Samples per simulated recording (1 s).
const SIMULATED_SAMPLES: usize = SAMPLE_RATE_HZ as usize;

/// Provenance of the simulated data set, recorded in manifests.
pub const SIMULATED: &str = "simulated CWRU-rig bearing vibration (src/train/cwru.rs, seed 2026; \
                             not real recordings)";

/// Hyper-parameters unless the command line says otherwise.
pub const DEFAULTS: Hyper = Hyper {
    epochs: 40,
    batch_size: 32,
    learning_rate: 1e-3,
    seed: 7,
    test_fraction: 0.25,
};

/// Fault frequencies of the rig's 6205-2RS JEM SKF drive-end bearing, in multiples of the
/// shaft speed (CWRU Bearing Data Center): inner race, rolling element, outer race; and the cage.
const INNER_RACE: f64 = 5.4152;
const ROLLING_ELEMENT: f64 = 4.7135;
const OUTER_RACE: f64 = 3.5848;
const CAGE: f64 = 0.39828;

/// One recording: drive-end acceleration (g) at [`SAMPLE_RATE_HZ`], and its class.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Name (the CWRU file number, or the simulation's).
    pub name: String,
    /// Index into [`CLASSES`].
    pub class: usize,
    /// Samples.
    pub signal: Vec<f32>,
}

impl Recording {
    /// Start offsets of its windows of `width` samples (overlapping by half).
    fn windows(&self, width: usize) -> impl Iterator<Item = usize> {
        (0..=self.signal.len().saturating_sub(width)).step_by((width / 2).max(1))
    }
}

/// Windows cut from recordings, with their classes.
#[derive(Debug, Clone, Default)]
struct Windows {
    width: usize,
    samples: Vec<f32>,
    classes: Vec<usize>,
}

impl Windows {
    fn of(recordings: &[&Recording], width: usize) -> Self {
        let mut out = Self {
            width,
            ..Self::default()
        };
        for r in recordings {
            for start in r.windows(width) {
                out.samples
                    .extend_from_slice(&r.signal[start..start + width]);
                out.classes.push(r.class);
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.classes.len()
    }

    fn window(&self, i: usize) -> &[f32] {
        &self.samples[i * self.width..(i + 1) * self.width]
    }
}

/// The recordings in `dir` (prepared by `data/cwru.py`), else the simulated ones; and their
/// provenance.
pub fn load(dir: Option<&Path>) -> anyhow::Result<(Vec<Recording>, String)> {
    let Some(dir) = dir else {
        return Ok((simulate(2026), SIMULATED.to_owned()));
    };
    let index = std::fs::read_to_string(dir.join("recordings.csv"))
        .with_context(|| format!("reading {}/recordings.csv", dir.display()))?;
    let mut hash = Sha256::new();
    hash.update(index.as_bytes());
    let mut recordings = Vec::new();
    for (n, line) in index.lines().enumerate().skip(1) {
        let Some((file, class)) = line.trim().split_once(',') else {
            continue;
        };
        let class = CLASSES
            .iter()
            .position(|c| *c == class.trim())
            .with_context(|| {
                format!(
                    "recordings.csv line {}: class {class:?} is not one of {CLASSES:?}",
                    n + 1
                )
            })?;
        anyhow::ensure!(
            !file.contains(['/', '\\']) && !file.starts_with('.'),
            "recordings.csv line {}: {file:?} must be a file name in the same folder",
            n + 1
        );
        let bytes = std::fs::read(dir.join(file)).with_context(|| format!("reading {file}"))?;
        hash.update(&bytes);
        anyhow::ensure!(
            bytes.len() % 4 == 0,
            "{file}: not a whole number of f32 samples"
        );
        let signal: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        anyhow::ensure!(
            signal.len() >= WINDOW,
            "{file}: shorter than one window of {WINDOW}"
        );
        anyhow::ensure!(
            signal.iter().all(|v| v.is_finite()),
            "{file}: a sample is not finite"
        );
        recordings.push(Recording {
            name: file.to_owned(),
            class,
            signal,
        });
    }
    anyhow::ensure!(!recordings.is_empty(), "recordings.csv lists no recordings");
    let provenance = format!(
        "{} CWRU recordings prepared by data/cwru.py, sha256 {} of recordings.csv and samples",
        recordings.len(),
        hex::encode(hash.finalize())
    );
    Ok((recordings, provenance))
}

/// The float32 samples of a recording packed by `data/cwru_pack.py` (bit for bit): gzip of the
/// sorted table of its distinct values (`u32` count, then `f32`s, little-endian) and each
/// sample's 16-bit index into it (all low bytes, then all high bytes).
pub fn unpack(packed: &[u8]) -> anyhow::Result<Vec<f32>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(packed)
        .read_to_end(&mut bytes)
        .context("not a gzip stream")?;
    let (count, rest) = bytes.split_first_chunk::<4>().context("no value table")?;
    let count = u32::from_le_bytes(*count) as usize;
    let (table, indices) = rest
        .split_at_checked(count * 4)
        .context("the value table is cut short")?;
    let table: Vec<f32> = table
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes")))
        .collect();
    anyhow::ensure!(indices.len() % 2 == 0, "an index is cut short");
    let (low, high) = indices.split_at(indices.len() / 2);
    low.iter()
        .zip(high)
        .map(|(&low, &high)| {
            let index = usize::from(u16::from_le_bytes([low, high]));
            table
                .get(index)
                .copied()
                .with_context(|| format!("index {index} is past the {count}-value table"))
        })
        .collect()
}

/// Splits recordings into (train, held-out): `test_fraction` of each class's recordings (at
/// least one where the class has two), chosen by a seeded shuffle.
pub fn split(
    recordings: &[Recording],
    seed: u64,
    test_fraction: f64,
) -> (Vec<&Recording>, Vec<&Recording>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in 0..CLASSES.len() {
        let of_class: Vec<&Recording> = recordings.iter().filter(|r| r.class == class).collect();
        let held = ((of_class.len() as f64 * test_fraction).round() as usize)
            .max(usize::from(of_class.len() >= 2));
        for (rank, i) in super::shuffled(of_class.len(), seed.wrapping_add(class as u64))
            .into_iter()
            .enumerate()
        {
            if rank < held {
                test.push(of_class[i]);
            } else {
                train.push(of_class[i]);
            }
        }
    }
    (train, test)
}

/// Simulated recordings of the CWRU rig: for each motor load (shaft speed 1797 / 1772 / 1750 /
/// 1730 rpm), each class (healthy, and each fault location at fault sizes 7, 14 and 21 mils),
/// three takes of 1 s. A fault strikes at its characteristic frequency (with 1 % slip jitter),
/// each strike ringing a structural resonance of 2.5–4 kHz that decays within about a
/// millisecond; inner-race strikes are modulated by the shaft's rotation through the load zone,
/// rolling-element strikes by the cage's. Every recording adds shaft harmonics and broadband
/// noise of its own level.
pub fn simulate(seed: u64) -> Vec<Recording> {
    let mut rng = Rng::new(seed);
    let mut recordings = Vec::new();
    for rpm in [1797.0, 1772.0, 1750.0, 1730.0] {
        for (class, _) in CLASSES.iter().enumerate() {
            for size in [7.0, 14.0, 21.0] {
                for take in 1..=TAKES {
                    let signal = simulate_one(&mut rng, rpm, class, size);
                    recordings.push(Recording {
                        name: format!("{}-{rpm}rpm-{size}mil-{take}", CLASSES[class]),
                        class,
                        signal,
                    });
                }
            }
        }
    }
    recordings
}

/// Simulated recordings of each load, class and fault size.
const TAKES: usize = 3;

fn simulate_one(rng: &mut Rng, rpm: f64, class: usize, size_mils: f64) -> Vec<f32> {
    let fs = f64::from(SAMPLE_RATE_HZ);
    let n = SIMULATED_SAMPLES;
    let shaft = rpm / 60.0;
    let noise = rng.uniform(0.04, 0.10);
    let harmonics: Vec<(f64, f64)> = (1..=3)
        .map(|_| (rng.uniform(0.01, 0.05), rng.uniform(0.0, TAU)))
        .collect();
    let mut signal: Vec<f64> = (0..n)
        .map(|i| {
            let t = i as f64 / fs;
            let hum: f64 = harmonics
                .iter()
                .enumerate()
                .map(|(h, (a, phase))| a * (TAU * shaft * (h + 1) as f64 * t + phase).sin())
                .sum();
            hum + noise * rng.gaussian()
        })
        .collect();
    let (rate, modulation) = match CLASSES[class] {
        "inner_race" => (INNER_RACE, Some(shaft)),
        "ball" => (ROLLING_ELEMENT, Some(CAGE * shaft)),
        "outer_race" => (OUTER_RACE, None),
        _ => return signal.into_iter().map(|v| v as f32).collect(),
    };
    let resonance = rng.uniform(2_500.0, 4_000.0);
    let decay = rng.uniform(0.03, 0.08) * TAU * resonance;
    let strength = rng.uniform(0.2, 0.5) * (size_mils / 7.0).sqrt();
    let (period, phase) = (1.0 / (rate * shaft), rng.uniform(0.0, TAU));
    let ring = (7.0 / decay * fs) as usize;
    let mut t = rng.uniform(0.0, period);
    while t < n as f64 / fs {
        let load_zone = modulation.map_or(1.0, |f| 0.6 + 0.4 * (TAU * f * t + phase).cos());
        let amplitude = strength * load_zone * (1.0 + 0.1 * rng.gaussian());
        let start = (t * fs) as usize;
        for (k, sample) in signal.iter_mut().skip(start).take(ring).enumerate() {
            let dt = k as f64 / fs;
            *sample += amplitude * (-decay * dt).exp() * (TAU * resonance * dt).sin();
        }
        t += period * (1.0 + 0.01 * rng.gaussian());
    }
    signal.into_iter().map(|v| v as f32).collect()
}

/// The held-out windows of the built-in (simulated) recordings, split as `training` says and
/// `window` samples wide, as requests.
pub fn examples(training: &TrainingRecord, window: usize) -> Vec<Example> {
    let recordings = simulate(2026);
    let (_, held_out) = split(&recordings, training.seed, training.test_fraction);
    let windows = Windows::of(&held_out, window);
    (0..windows.len())
        .map(|i| Example {
            inputs: vec![WireTensor {
                name: "vibration".into(),
                shape: vec![1, window],
                datatype: DataType::Fp32,
                data: WireData::F32(windows.window(i).to_vec()),
            }],
            output: "label",
            expected: WireData::I64(vec![windows.classes[i] as i64]),
        })
        .collect()
}

/// Trains the CNN on the training recordings' windows; reports each epoch with the held-out
/// recordings' window accuracy.
pub fn train<B: AutodiffBackend>(
    hyper: Hyper,
    dir: Option<&Path>,
    device: &B::Device,
    progress: &mut dyn FnMut(Epoch),
) -> anyhow::Result<Trained> {
    let (recordings, dataset) = load(dir)?;
    let (train_recordings, test_recordings) = split(&recordings, hyper.seed, hyper.test_fraction);
    anyhow::ensure!(
        !test_recordings.is_empty(),
        "too few recordings to hold any out"
    );
    let (train, test) = (
        Windows::of(&train_recordings, WINDOW),
        Windows::of(&test_recordings, WINDOW),
    );
    let config = VibrationCnnConfig {
        window: WINDOW,
        sample_rate_hz: SAMPLE_RATE_HZ,
        first_kernel: 64,
        first_stride: 8,
        channels: [16, 32, 64],
        classes: CLASSES.len(),
    };
    let mut model: VibrationCnn<B> = config.init(device);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    for epoch in 1..=hyper.epochs {
        let order = super::shuffled(train.len(), hyper.seed.wrapping_add(epoch as u64));
        let (mut loss_sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(hyper.batch_size) {
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| train.window(i).iter().copied())
                .collect();
            let y: Vec<i64> = chunk.iter().map(|&i| train.classes[i] as i64).collect();
            let x = Tensor::<B, 2>::from_data(TensorData::new(x, [chunk.len(), WINDOW]), device);
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [chunk.len()]), device);
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
        architecture: Architecture::VibrationCnn(config),
        labels: CLASSES.map(str::to_owned).to_vec(),
        weights: super::record(model)?,
        metrics: BTreeMap::from([
            ("test_accuracy".to_owned(), held_out),
            ("test_recordings".to_owned(), test_recordings.len() as f64),
        ]),
        dataset,
        train_samples: train.len(),
        test_samples: test.len(),
    })
}

/// Share of `data`'s windows the model classifies correctly (in chunks, to bound memory).
fn accuracy<B: Backend>(model: &VibrationCnn<B>, data: &Windows) -> f64 {
    let device = model.devices().into_iter().next().unwrap_or_default();
    let (mut correct, width) = (0, data.width);
    for start in (0..data.len()).step_by(256) {
        let rows = 256.min(data.len() - start);
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(
                data.samples[start * width..(start + rows) * width].to_vec(),
                [rows, width],
            ),
            &device,
        );
        let predicted = model
            .logits(x)
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .unwrap_or_default();
        correct += predicted
            .iter()
            .zip(&data.classes[start..start + rows])
            .filter(|&(&p, &c)| p == c as i64)
            .count();
    }
    correct as f64 / data.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_recordings_unpack_to_the_original_samples() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/cwru"));
        let index = std::fs::read_to_string(dir.join("recordings.csv")).unwrap();
        let mut unpacked = 0;
        for line in index.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let (number, samples, sha256) = (fields[0], fields[4], fields[5]);
            let packed = std::fs::read(dir.join(format!("{number}.gz"))).unwrap();
            let signal = unpack(&packed).unwrap();
            assert_eq!(signal.len().to_string(), samples, "{number}");
            let bytes: Vec<u8> = signal.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(hex::encode(Sha256::digest(&bytes)), sha256, "{number}");
            unpacked += 1;
        }
        assert_eq!(unpacked, 13);
        assert!(unpack(b"not gzip").is_err());
        // One value in the table, a sample pointing past it.
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gzip, &[1, 0, 0, 0, 0, 0, 128, 63, 5, 0]).unwrap();
        let error = unpack(&gzip.finish().unwrap()).unwrap_err().to_string();
        assert!(
            error.contains("index 5 is past the 1-value table"),
            "{error}"
        );
    }

    #[test]
    fn the_split_holds_out_whole_recordings_of_every_class() {
        let recordings = simulate(2026);
        assert_eq!(recordings.len(), 4 * 4 * 3 * TAKES);
        let (train, test) = split(&recordings, 7, 0.25);
        assert_eq!(train.len() + test.len(), recordings.len());
        for class in 0..CLASSES.len() {
            assert_eq!(test.iter().filter(|r| r.class == class).count(), 9);
        }
        for r in &test {
            assert!(
                !train.iter().any(|t| t.name == r.name),
                "{} in both",
                r.name
            );
        }
        // 1 s = 12 000 samples: windows start every 1 024 samples up to 9 216.
        assert_eq!(Windows::of(&test, WINDOW).len(), 36 * 10);
    }

    #[test]
    fn simulation_is_deterministic_and_faults_are_impulsive() {
        let a = simulate(1);
        assert_eq!(a[5].signal, simulate(1)[5].signal);
        // Kurtosis: about 3 for the healthy (Gaussian-like) signal, higher with fault strikes.
        let kurtosis = |s: &[f32]| {
            let n = s.len() as f64;
            let mean = s.iter().map(|&v| v as f64).sum::<f64>() / n;
            let m2 = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let m4 = s.iter().map(|&v| (v as f64 - mean).powi(4)).sum::<f64>() / n;
            m4 / (m2 * m2)
        };
        let of = |class: usize| {
            a.iter()
                .filter(move |r| r.class == class)
                .map(|r| kurtosis(&r.signal))
        };
        let healthy = of(0).fold(0.0, f64::max);
        let faulty = of(3).fold(f64::MAX, f64::min);
        assert!(
            healthy < 3.5 && faulty > healthy,
            "healthy {healthy}, outer race {faulty}"
        );
    }

    #[test]
    fn prepared_recordings_are_read_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let samples: Vec<u8> = (0..WINDOW * 2)
            .flat_map(|i| (i as f32 * 0.01).sin().to_le_bytes())
            .collect();
        std::fs::write(dir.path().join("105.f32"), &samples).unwrap();
        std::fs::write(
            dir.path().join("recordings.csv"),
            "file,class\n105.f32,inner_race\n",
        )
        .unwrap();
        let (recordings, provenance) = load(Some(dir.path())).unwrap();
        assert_eq!((recordings.len(), recordings[0].class), (1, 1));
        assert_eq!(recordings[0].windows(WINDOW).count(), 3);
        assert!(provenance.starts_with("1 CWRU recordings"), "{provenance}");
        std::fs::write(
            dir.path().join("recordings.csv"),
            "file,class\n../x.f32,ball\n",
        )
        .unwrap();
        assert!(
            load(Some(dir.path()))
                .unwrap_err()
                .to_string()
                .contains("file name")
        );
        std::fs::write(
            dir.path().join("recordings.csv"),
            "file,class\n105.f32,cracked\n",
        )
        .unwrap();
        assert!(
            load(Some(dir.path()))
                .unwrap_err()
                .to_string()
                .contains("cracked")
        );
    }
}
