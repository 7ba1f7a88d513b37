//! The Rust tokenizer and the Burn BERT encoder with the real all-MiniLM-L6-v2 weights match an
//! independent reference (`data/minilm_reference.py`: Python `tokenizers` + numpy, one sentence at a
//! time, no padding) on 52 varied sentences: padded in batches, and bucketed by length as
//! serving runs them after the round trip through Ember's weights record.

mod common;

use burn::backend::Flex;
use common::minilm::{cosine, model_dir, reference};
use ember::models::bert::{BertConfig, BertEncoder};
use ember::models::record_weights;
use ember::models::text::{SentenceBertConfig, TextTokenizer, Tokens};

fn tokenizer_json() -> Vec<u8> {
    std::fs::read(model_dir().join("tokenizer.json")).unwrap()
}

/// The lowest cosine similarity of `got` (row-major) to the reference embeddings, and where.
fn worst_similarity(got: &[f32], reference: &[Vec<f32>]) -> (f64, usize) {
    let width = got.len() / reference.len();
    let mut worst = (1.0, 0);
    for (i, (got, want)) in got.chunks(width).zip(reference).enumerate() {
        let length = got
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (length - 1.0).abs() < 1e-4,
            "sentence {i}: not unit length ({length})"
        );
        let similarity = cosine(got, want);
        if similarity < worst.0 {
            worst = (similarity, i);
        }
    }
    worst
}

#[test]
fn the_tokenizer_gives_the_reference_ids_cut_to_256() {
    let reference = reference();
    let tokenizer = TextTokenizer::from_json(&tokenizer_json(), 256).unwrap();
    let ids = tokenizer.ids(&reference.texts).unwrap();
    for ((text, got), want) in reference.texts.iter().zip(&ids).zip(&reference.ids) {
        assert_eq!(got, want, "{text:?}");
    }
    let longest = ids.iter().map(Vec::len).max().unwrap();
    assert_eq!(longest, 256, "the fixture holds texts past the limit");
    assert_eq!(ids[0], [101, 102], "empty text: [CLS] [SEP]");
}

#[test]
fn embeddings_match_the_reference_padded_in_batches_and_bucketed_after_the_record() {
    let dir = model_dir();
    let config: BertConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let device = Default::default();
    let encoder = BertEncoder::<Flex>::from_safetensors(&config, &weights, &device).unwrap();
    let reference = reference();
    assert!(reference.texts.len() >= 50);

    // Batches of 8 in fixture order mix lengths 2..256: each sentence shares a batch with padding.
    let mut padded = Vec::new();
    for batch in reference.ids.chunks(8) {
        let tokens = Tokens::padded(batch.iter().map(Vec::as_slice));
        let out = encoder.embed_tokens(tokens).into_data();
        padded.extend(out.into_vec::<f32>().unwrap());
    }
    let (similarity, i) = worst_similarity(&padded, &reference.embeddings);
    eprintln!("padded batches: lowest cosine to the reference {similarity} (sentence {i})");
    assert!(similarity >= 0.999, "sentence {i}: cosine {similarity}");

    // Recorded as Ember records weights and served as Ember serves text: all 52 in one call,
    // cut into length-sorted passes of at most 1024 tokens, answered in request order.
    let record = record_weights(encoder).unwrap();
    let embedder = SentenceBertConfig {
        encoder: config,
        max_tokens: 256,
        tokenizer: "tokenizer.json".into(),
    }
    .load::<Flex>(
        &record,
        &tokenizer_json(),
        1024,
        Default::default(),
        &device,
    )
    .unwrap();
    let bucketed = embedder.embed(&reference.texts).unwrap();
    let (similarity, i) = worst_similarity(&bucketed, &reference.embeddings);
    eprintln!("bucketed passes: lowest cosine to the reference {similarity} (sentence {i})");
    assert!(similarity >= 0.999, "sentence {i}: cosine {similarity}");
}
