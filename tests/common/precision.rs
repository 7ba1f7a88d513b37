//! Comparing a model's outputs across devices and precisions on its held-out split.

use ember::batcher::BatchConfig;
use ember::models::Precision;
use ember::protocol::TensorData;
use ember::runtime::Device;
use ember::store::{Artifact, ModelName, Repository, Version};

/// The shipped models with a held-out split.
pub const SHIPPED: [&str; 3] = ["digits", "cwru", "ai4i"];

/// The repository of shipped models (`models/` of the working directory where the tests were
/// built elsewhere: the GPU machine runs them from a copy of the repository).
pub fn shipped_repository() -> Repository {
    let built = concat!(env!("CARGO_MANIFEST_DIR"), "/models");
    let dir = if std::path::Path::new(built).is_dir() {
        built
    } else {
        "models"
    };
    Repository::open(dir).unwrap()
}

/// The production version of shipped `model`.
pub async fn shipped(model: &str) -> Artifact {
    let name = ModelName::parse(model).unwrap();
    let repo = shipped_repository();
    let production = Version::parse("production").unwrap();
    let version = repo.resolve(&name, &production).await.unwrap();
    repo.load(&name, &version).await.unwrap()
}

/// The held-out split of `artifact` as one batch: rows and inputs.
pub fn held_out(artifact: &Artifact) -> (usize, Vec<TensorData>) {
    let examples = ember::train::held_out_examples(&artifact.manifest).unwrap();
    let mut inputs: Vec<TensorData> = examples[0]
        .inputs
        .iter()
        .map(|t| TensorData::with_capacity_like(&t.data, examples.len() * t.data.len()))
        .collect();
    for example in &examples {
        for (all, tensor) in inputs.iter_mut().zip(&example.inputs) {
            all.extend_from(&tensor.data, 0..tensor.data.len());
        }
    }
    (examples.len(), inputs)
}

/// `artifact`'s outputs for `batch` on `device` in `precision`.
pub fn outputs(
    artifact: &Artifact,
    device: Device,
    precision: Precision,
    (rows, inputs): &(usize, Vec<TensorData>),
) -> Vec<TensorData> {
    device
        .load(
            &artifact.manifest.architecture,
            &artifact.weights,
            &artifact.assets,
            BatchConfig::default().max_batch_tokens,
            precision,
        )
        .unwrap()
        .infer(*rows, inputs.clone())
        .unwrap()
}

/// Largest and mean |Δp| allowed against FP32, and the least share of equal decisions:
/// FP32 on another device differs by summation order only; FP16 keeps 11 bits of mantissa,
/// BF16 8.
pub fn tolerance(precision: Precision) -> (f32, f32, f64) {
    match precision {
        Precision::Fp32 => (1e-4, 1e-5, 1.0),
        Precision::Fp16 => (0.02, 0.001, 0.99),
        Precision::Bf16 => (0.1, 0.005, 0.99),
    }
}

/// Checks `got` against `fp32` (probabilities, then decisions) within `precision`'s
/// [`tolerance`], printing the figures; returns the largest |Δp|.
pub fn assert_close(
    what: &str,
    precision: Precision,
    fp32: &[TensorData],
    got: &[TensorData],
) -> f32 {
    let (TensorData::F32(want), TensorData::F32(have)) = (&fp32[0], &got[0]) else {
        panic!("{what}: the first output is not FP32");
    };
    assert_eq!(want.len(), have.len());
    let each = want.iter().zip(have).map(|(x, y)| (x - y).abs());
    let largest = each.clone().fold(0.0, f32::max);
    let mean = each.sum::<f32>() / want.len() as f32;
    let (same, rows) = match (&fp32[1], &got[1]) {
        (TensorData::I64(a), TensorData::I64(b)) => {
            (a.iter().zip(b).filter(|(x, y)| x == y).count(), a.len())
        }
        (TensorData::Bool(a), TensorData::Bool(b)) => {
            (a.iter().zip(b).filter(|(x, y)| x == y).count(), a.len())
        }
        _ => panic!("{what}: the second output is not a label or flag"),
    };
    let agree = same as f64 / rows as f64;
    eprintln!(
        "{what} {precision}: |Δp| max {largest:.6} mean {mean:.7}, decisions agree {agree:.4}"
    );
    let (max_allowed, mean_allowed, agree_allowed) = tolerance(precision);
    assert!(
        largest <= max_allowed && mean <= mean_allowed && agree >= agree_allowed,
        "{what} {precision}: |Δp| max {largest} mean {mean}, decisions agree {agree}"
    );
    largest
}
