//! Bearing-fault recordings (the CWRU 12 kHz drive-end task) and the training of the vibration
//! CNN on fixed-size windows, split by time within each recording.
//!
//! Data: the thirteen real recordings shipped in `data/cwru` (compiled in: normal at 0 hp, and
//! 0.007" inner-race, ball and outer-race faults at 0–3 hp), or `--data DIR` in the same layout
//! (`recordings.csv` + `<number>.gz` packed by `data/cwru_pack.py`, or raw `<number>.f32`).
//! The healthy baseline was recorded at 48 kHz: it is low-passed and decimated to 12 kHz first.
//! The first `1 - test_fraction` of every recording trains, the rest is held out, so no window
//! straddles the split; training draws the same number of windows of each class every epoch,
//! though "normal" has one recording (an eighth of each fault class's samples).

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
use std::path::Path;

/// Fault classes, in output order.
pub const CLASSES: [&str; 4] = ["normal", "inner_race", "ball", "outer_race"];

/// Sampling rate of the drive-end accelerometer (and of the model's input).
pub const SAMPLE_RATE_HZ: u32 = 12_000;

/// Samples per window (171 ms: 18 or more fault strikes at every speed of the rig).
pub const WINDOW: usize = 2048;

/// Recordings the Data Center made at 48 kHz (the healthy baselines), decimated by 4 on loading.
const RECORDED_AT_48_KHZ: [&str; 4] = ["97", "98", "99", "100"];

/// Training windows drawn per class and epoch.
const WINDOWS_PER_CLASS: usize = 256;

/// Hyper-parameters unless the command line says otherwise.
pub const DEFAULTS: Hyper = Hyper {
    epochs: 40,
    batch_size: 32,
    learning_rate: 1e-3,
    seed: 7,
    test_fraction: 0.25,
};

/// The shipped recordings' index and packed samples.
const SHIPPED_INDEX: &str = include_str!("../../data/cwru/recordings.csv");
macro_rules! shipped {
    ($($number:literal),*) => {
        &[$(($number, include_bytes!(concat!("../../data/cwru/", $number, ".gz")))),*]
    };
}
const SHIPPED: &[(&str, &[u8])] = shipped!(
    "97", "105", "106", "107", "108", "118", "119", "120", "121", "130", "131", "132", "133"
);

/// One recording: drive-end acceleration (g) at [`SAMPLE_RATE_HZ`], its class and motor load.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The CWRU file number.
    pub name: String,
    /// Index into [`CLASSES`].
    pub class: usize,
    /// Motor load in horsepower (0–3).
    pub load_hp: u8,
    /// Samples at [`SAMPLE_RATE_HZ`].
    pub signal: Vec<f32>,
}

impl Recording {
    /// Where the held-out part begins: the last `test_fraction` of the samples.
    fn held_out_from(&self, test_fraction: f64) -> usize {
        ((self.signal.len() as f64) * (1.0 - test_fraction)).round() as usize
    }
}

/// Windows cut from recordings, with their classes and loads.
#[derive(Debug, Clone, Default)]
struct Windows {
    samples: Vec<f32>,
    classes: Vec<usize>,
    loads: Vec<u8>,
}

impl Windows {
    /// The held-out windows: from the held-out part of each recording, overlapping by half.
    fn held_out(recordings: &[Recording], test_fraction: f64) -> Self {
        let mut out = Self::default();
        for r in recordings {
            let part = &r.signal[r.held_out_from(test_fraction)..];
            if part.len() < WINDOW {
                continue;
            }
            for start in (0..=part.len() - WINDOW).step_by(WINDOW / 2) {
                out.push(&part[start..start + WINDOW], r);
            }
        }
        out
    }

    /// `WINDOWS_PER_CLASS` windows of each class at random offsets in the training part of
    /// its recordings (a recording drawn with weight by its length).
    fn draw(recordings: &[Recording], test_fraction: f64, rng: &mut Rng) -> Self {
        let mut out = Self::default();
        for class in 0..CLASSES.len() {
            let parts: Vec<(&Recording, usize)> = recordings
                .iter()
                .filter(|r| r.class == class)
                .map(|r| (r, r.held_out_from(test_fraction).saturating_sub(WINDOW - 1)))
                .filter(|&(_, starts)| starts > 0)
                .collect();
            let total: usize = parts.iter().map(|(_, starts)| starts).sum();
            if total == 0 {
                continue;
            }
            for _ in 0..WINDOWS_PER_CLASS {
                let mut pick = (rng.next_u64() % total as u64) as usize;
                for &(r, starts) in &parts {
                    if pick < starts {
                        out.push(&r.signal[pick..pick + WINDOW], r);
                        break;
                    }
                    pick -= starts;
                }
            }
        }
        out
    }

    fn push(&mut self, window: &[f32], recording: &Recording) {
        self.samples.extend_from_slice(window);
        self.classes.push(recording.class);
        self.loads.push(recording.load_hp);
    }

    fn len(&self) -> usize {
        self.classes.len()
    }

    fn window(&self, i: usize) -> &[f32] {
        &self.samples[i * WINDOW..(i + 1) * WINDOW]
    }
}

/// The recordings in `dir` (default: the shipped ones) at 12 kHz, and their provenance.
pub fn load(dir: Option<&Path>) -> anyhow::Result<(Vec<Recording>, String)> {
    let read = |number: &str| -> anyhow::Result<Vec<u8>> {
        match dir {
            None => SHIPPED
                .iter()
                .find(|(n, _)| *n == number)
                .map(|(_, bytes)| bytes.to_vec())
                .with_context(|| format!("recording {number} is not shipped")),
            Some(dir) => {
                let packed = dir.join(format!("{number}.gz"));
                let path = if packed.is_file() {
                    packed
                } else {
                    dir.join(format!("{number}.f32"))
                };
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
            }
        }
    };
    let index = match dir {
        None => SHIPPED_INDEX.to_owned(),
        Some(dir) => std::fs::read_to_string(dir.join("recordings.csv"))
            .with_context(|| format!("reading {}/recordings.csv", dir.display()))?,
    };
    let mut hash = Sha256::new();
    hash.update(index.as_bytes());
    let mut lines = index.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| format!("recordings.csv has no column {name:?}"))
    };
    let (number_at, label_at, load_at) = (column("number")?, column("label")?, column("load_hp")?);
    let mut recordings = Vec::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row = n + 2;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        anyhow::ensure!(
            fields.len() == header.len(),
            "recordings.csv line {row}: wrong column count"
        );
        let number = fields[number_at];
        anyhow::ensure!(
            !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()),
            "recordings.csv line {row}: number {number:?} is not a CWRU file number"
        );
        let class = CLASSES
            .iter()
            .position(|c| *c == fields[label_at])
            .with_context(|| {
                format!(
                    "recordings.csv line {row}: label {:?} is not one of {CLASSES:?}",
                    fields[label_at]
                )
            })?;
        let load_hp: u8 = fields[load_at]
            .parse()
            .ok()
            .filter(|hp| *hp <= 3)
            .with_context(|| {
                format!(
                    "recordings.csv line {row}: load_hp {:?} is not 0–3",
                    fields[load_at]
                )
            })?;
        let bytes = read(number)?;
        hash.update(&bytes);
        let mut signal = if bytes.starts_with(&[0x1f, 0x8b]) {
            unpack(&bytes).with_context(|| format!("unpacking recording {number}"))?
        } else {
            anyhow::ensure!(
                bytes.len() % 4 == 0,
                "{number}.f32: not a whole number of f32 samples"
            );
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        anyhow::ensure!(
            signal.iter().all(|v| v.is_finite()),
            "recording {number}: a sample is not finite"
        );
        if RECORDED_AT_48_KHZ.contains(&number) {
            signal = decimate(&signal, 4);
        }
        anyhow::ensure!(
            signal.len() >= 4 * WINDOW,
            "recording {number}: {} samples at 12 kHz, fewer than four windows of {WINDOW}",
            signal.len()
        );
        recordings.push(Recording {
            name: number.to_owned(),
            class,
            load_hp,
            signal,
        });
    }
    anyhow::ensure!(!recordings.is_empty(), "recordings.csv lists no recordings");
    let source = match dir {
        None => "shipped in data/cwru".to_owned(),
        Some(dir) => format!("from {}", dir.display()),
    };
    let provenance = format!(
        "{} real CWRU Bearing Data Center drive-end recordings {source}, sha256 {} of \
         recordings.csv and the recordings",
        recordings.len(),
        hex::encode(hash.finalize())
    );
    Ok((recordings, provenance))
}

/// `signal` low-passed below 0.9 × the new Nyquist frequency (windowed-sinc FIR, 255 taps,
/// Blackman: stop band from the new Nyquist frequency on is more than 70 dB down) and every
/// `factor`-th sample kept; only outputs whose filter window lies inside the signal.
pub fn decimate(signal: &[f32], factor: usize) -> Vec<f32> {
    const TAPS: usize = 255;
    let half = TAPS / 2;
    let cutoff = 0.9 / (2.0 * factor as f64); // in cycles per input sample
    let mut taps: Vec<f64> = (0..TAPS)
        .map(|k| {
            let t = k as f64 - half as f64;
            let sinc = if t == 0.0 {
                2.0 * cutoff
            } else {
                (std::f64::consts::TAU * cutoff * t).sin() / (std::f64::consts::PI * t)
            };
            let phase = std::f64::consts::TAU * k as f64 / (TAPS - 1) as f64;
            sinc * (0.42 - 0.5 * phase.cos() + 0.08 * (2.0 * phase).cos())
        })
        .collect();
    let gain: f64 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= gain);
    (half..signal.len().saturating_sub(half))
        .step_by(factor)
        .map(|centre| {
            taps.iter()
                .zip(&signal[centre - half..=centre + half])
                .map(|(t, &x)| t * f64::from(x))
                .sum::<f64>() as f32
        })
        .collect()
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

/// The held-out windows of the shipped recordings, split as `training` says and `window`
/// samples wide, as requests.
pub fn examples(training: &TrainingRecord, window: usize) -> anyhow::Result<Vec<Example>> {
    anyhow::ensure!(
        window == WINDOW,
        "the shipped split cuts windows of {WINDOW} samples, not {window}"
    );
    let (recordings, _) = load(None)?;
    let windows = Windows::held_out(&recordings, training.test_fraction);
    Ok((0..windows.len())
        .map(|i| Example {
            inputs: vec![WireTensor {
                name: "vibration".into(),
                shape: vec![1, WINDOW],
                datatype: DataType::Fp32,
                data: WireData::F32(windows.window(i).to_vec()),
            }],
            output: "label",
            expected: WireData::I64(vec![windows.classes[i] as i64]),
        })
        .collect())
}

/// Trains the CNN on class-balanced draws from the recordings' training parts; reports each
/// epoch with the held-out window accuracy.
pub fn train<B: AutodiffBackend>(
    hyper: Hyper,
    dir: Option<&Path>,
    device: &B::Device,
    progress: &mut dyn FnMut(Epoch),
) -> anyhow::Result<Trained> {
    let (recordings, dataset) = load(dir)?;
    let test = Windows::held_out(&recordings, hyper.test_fraction);
    anyhow::ensure!(test.len() > 0, "the held-out parts hold no whole window");
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
    let mut trained_on = 0;
    for epoch in 1..=hyper.epochs {
        let mut rng = Rng::new(hyper.seed.wrapping_add(epoch as u64));
        let train = Windows::draw(&recordings, hyper.test_fraction, &mut rng);
        trained_on += train.len();
        let order = super::shuffled(train.len(), rng.next_u64());
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
        let predicted = predict(&model.valid(), &test);
        progress(Epoch {
            epoch,
            loss: loss_sum / batches.max(1) as f32,
            metrics: vec![(
                "test_accuracy",
                evaluate(&predicted, &test)["test_accuracy"],
            )],
        });
    }
    let metrics = evaluate(&predict(&model.valid(), &test), &test);
    Ok(Trained {
        architecture: Architecture::VibrationCnn(config),
        labels: CLASSES.map(str::to_owned).to_vec(),
        weights: super::record(model)?,
        metrics,
        dataset,
        train_samples: trained_on / hyper.epochs,
        test_samples: test.len(),
    })
}

/// The class the model gives each of `data`'s windows (in chunks, to bound memory).
fn predict<B: Backend>(model: &VibrationCnn<B>, data: &Windows) -> Vec<usize> {
    let device = model.devices().into_iter().next().unwrap_or_default();
    let mut predicted = Vec::with_capacity(data.len());
    for start in (0..data.len()).step_by(256) {
        let rows = 256.min(data.len() - start);
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(
                data.samples[start * WINDOW..(start + rows) * WINDOW].to_vec(),
                [rows, WINDOW],
            ),
            &device,
        );
        let classes = model.logits(x).argmax(1).into_data().convert::<i64>();
        predicted.extend(
            classes
                .into_vec::<i64>()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c as usize),
        );
    }
    predicted
}

/// Held-out figures: accuracy, balanced accuracy (the mean of the classes' recalls), accuracy
/// per class and per motor load, and the confusion matrix (`test_confusion_<true>_as_<predicted>`,
/// window counts).
fn evaluate(predicted: &[usize], data: &Windows) -> BTreeMap<String, f64> {
    let share = |keep: &dyn Fn(usize) -> bool| {
        let rows: Vec<usize> = (0..data.len()).filter(|&i| keep(i)).collect();
        let right = rows
            .iter()
            .filter(|&&i| predicted[i] == data.classes[i])
            .count();
        (!rows.is_empty()).then(|| right as f64 / rows.len() as f64)
    };
    let mut metrics = BTreeMap::new();
    metrics.insert("test_accuracy".to_owned(), share(&|_| true).unwrap_or(0.0));
    let mut recalls = Vec::new();
    for (class, name) in CLASSES.iter().enumerate() {
        if let Some(recall) = share(&|i| data.classes[i] == class) {
            metrics.insert(format!("test_accuracy_{name}"), recall);
            recalls.push(recall);
        }
        for (other, as_name) in CLASSES.iter().enumerate() {
            let count = (0..data.len())
                .filter(|&i| data.classes[i] == class && predicted[i] == other)
                .count();
            metrics.insert(format!("test_confusion_{name}_as_{as_name}"), count as f64);
        }
    }
    metrics.insert(
        "test_balanced_accuracy".to_owned(),
        recalls.iter().sum::<f64>() / recalls.len().max(1) as f64,
    );
    for load in 0..=3 {
        if let Some(accuracy) = share(&|i| data.loads[i] == load) {
            metrics.insert(format!("test_accuracy_{load}hp"), accuracy);
        }
    }
    metrics
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
    fn decimation_keeps_the_band_and_rejects_what_would_alias() {
        let tone = |hz: f64| -> Vec<f32> {
            (0..48_000)
                .map(|i| (std::f64::consts::TAU * hz * i as f64 / 48_000.0).sin() as f32)
                .collect()
        };
        let peak = |s: &[f32]| s.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let kept = decimate(&tone(1_000.0), 4);
        assert_eq!(kept.len(), (48_000 - 254_usize).div_ceil(4));
        assert!((peak(&kept) - 1.0).abs() < 0.01, "1 kHz: {}", peak(&kept));
        // Sample j of the output is input sample 127 + 4j: the same sine, delayed by nothing.
        let expected = (std::f64::consts::TAU * 1_000.0 * (127.0 + 4.0 * 10.0) / 48_000.0).sin();
        assert!((f64::from(kept[10]) - expected).abs() < 0.01);
        // 10 kHz would fold onto 2 kHz at 12 kHz; 7 kHz onto 5 kHz.
        for hz in [7_000.0, 10_000.0, 20_000.0] {
            let folded = peak(&decimate(&tone(hz), 4));
            assert!(folded < 3e-4, "{hz} Hz leaks {folded}");
        }
    }

    #[test]
    fn the_split_is_by_time_within_each_recording_and_training_draws_are_balanced() {
        let (recordings, provenance) = load(None).unwrap();
        assert_eq!(recordings.len(), 13);
        assert!(provenance.starts_with("13 real CWRU"), "{provenance}");
        let normal = &recordings[0];
        assert_eq!((normal.name.as_str(), normal.class), ("97", 0));
        // 243 938 samples at 48 kHz, filter edges dropped, every 4th kept.
        assert_eq!(normal.signal.len(), (243_938 - 254_usize).div_ceil(4));
        let loads: Vec<u8> = recordings.iter().map(|r| r.load_hp).collect();
        assert_eq!(loads, [0, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]);

        let test = Windows::held_out(&recordings, 0.25);
        let mut rng = Rng::new(1);
        let train = Windows::draw(&recordings, 0.25, &mut rng);
        for (class, name) in CLASSES.iter().enumerate() {
            let drawn = train.classes.iter().filter(|&&c| c == class).count();
            assert_eq!(drawn, WINDOWS_PER_CLASS, "{name}");
        }
        // Every held-out window lies in a recording's last quarter, every drawn one before it.
        let position = |window: &[f32]| {
            recordings.iter().find_map(|r| {
                r.signal
                    .windows(WINDOW)
                    .position(|w| w == window)
                    .map(|at| (at, r.held_out_from(0.25)))
            })
        };
        for i in (0..test.len()).step_by(37) {
            let (at, boundary) = position(test.window(i)).unwrap();
            assert!(at >= boundary, "held-out window at {at} before {boundary}");
        }
        for i in (0..train.len()).step_by(101) {
            let (at, boundary) = position(train.window(i)).unwrap();
            assert!(
                at + WINDOW <= boundary,
                "training window at {at} reaches {boundary}"
            );
        }
        // 12 fault recordings of 30 300–30 700 held-out samples: 28 or 29 windows each (one
        // has 29); 97's 15 230 samples: 13.
        assert_eq!(test.len(), 11 * 28 + 29 + 13);
    }

    #[test]
    fn evaluation_reports_classes_loads_and_confusions() {
        let data = Windows {
            samples: Vec::new(),
            classes: vec![0, 1, 1, 2, 3, 3],
            loads: vec![0, 0, 1, 1, 2, 3],
        };
        let metrics = evaluate(&[0, 1, 2, 2, 3, 1], &data);
        assert_eq!(metrics["test_accuracy"], 4.0 / 6.0);
        assert_eq!(metrics["test_accuracy_inner_race"], 0.5);
        assert_eq!(
            metrics["test_balanced_accuracy"],
            (1.0 + 0.5 + 1.0 + 0.5) / 4.0
        );
        assert_eq!(metrics["test_accuracy_1hp"], 0.5);
        assert_eq!(metrics["test_accuracy_3hp"], 0.0);
        assert_eq!(metrics["test_confusion_inner_race_as_ball"], 1.0);
        assert_eq!(metrics["test_confusion_outer_race_as_inner_race"], 1.0);
        assert_eq!(metrics["test_confusion_normal_as_normal"], 1.0);
    }

    #[test]
    fn recordings_from_a_folder_are_read_and_bad_rows_named() {
        let dir = tempfile::tempdir().unwrap();
        let samples: Vec<u8> = (0..WINDOW * 4)
            .flat_map(|i| (i as f32 * 0.01).sin().to_le_bytes())
            .collect();
        std::fs::write(dir.path().join("105.f32"), &samples).unwrap();
        let write = |row: &str| {
            std::fs::write(
                dir.path().join("recordings.csv"),
                format!("number,label,load_hp,rpm\n{row}\n"),
            )
            .unwrap()
        };
        write("105,inner_race,2,1748");
        let (recordings, provenance) = load(Some(dir.path())).unwrap();
        assert_eq!(
            (recordings.len(), recordings[0].class, recordings[0].load_hp),
            (1, 1, 2)
        );
        assert_eq!(recordings[0].signal.len(), WINDOW * 4);
        assert!(
            provenance.contains(&dir.path().display().to_string()),
            "{provenance}"
        );
        for (row, error) in [
            ("../105,ball,0,1797", "not a CWRU file number"),
            ("105,cracked,0,1797", "cracked"),
            ("105,ball,5,1797", "load_hp \"5\""),
            ("106,ball,0,1797", "106.f32"),
        ] {
            write(row);
            let message = format!("{:#}", load(Some(dir.path())).unwrap_err());
            assert!(message.contains(error), "{row}: {message}");
        }
    }
}
