//! Text in, sentence embeddings out: a Hugging Face tokenizer, length-bucketed batches, and the
//! [`BertEncoder`] (mean pooling + L2, as sentence-transformers).
//!
//! Texts longer than `max_tokens` tokens (special tokens included) are cut to that length, as
//! sentence-transformers does with its `max_seq_length`. A batch is not padded to its longest
//! text as a whole: its texts are sorted by length and cut into passes ([`plan_passes`]) so that
//! one long text costs its own pass, not padding for every short one.

pub use super::bert::Tokens;
use super::{Assets, Model, ModelError};

use super::bert::{BertConfig, BertEncoder};
use crate::protocol::TensorData;
use burn::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Tokens a pass may hold (rows × longest row) when serving does not say (`--max-batch-tokens`).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 8192;

/// What starting another pass costs, in padded tokens: fixed per-pass work (launching kernels,
/// pooling) that merging two lengths into one pass saves. From `benches/text.rs` on 2 CPU
/// threads: 64 beat 256 by 15% and 1024 by 45% on the mixed workload; 16 was no better.
const PASS_COST_TOKENS: usize = 64;

/// A BERT sentence embedder's config, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentenceBertConfig {
    /// Shape of the encoder.
    pub encoder: BertConfig,
    /// Longest text in tokens, special tokens included; longer texts are cut.
    pub max_tokens: usize,
    /// The version's asset holding the Hugging Face `tokenizer.json`.
    pub tokenizer: String,
}

impl SentenceBertConfig {
    /// The embedder from `weights` (a record of the encoder) and the tokenizer's bytes; passes
    /// hold at most `max_batch_tokens` tokens.
    pub fn load<B: Backend>(
        &self,
        weights: &[u8],
        tokenizer: &[u8],
        max_batch_tokens: usize,
        precision: super::Precision,
        device: &B::Device,
    ) -> Result<SentenceBert<BertEncoder<B>>, String> {
        let encoder =
            super::with_weights(self.encoder.init::<B>(device), weights, precision, device)?;
        self.embedder(encoder, tokenizer, max_batch_tokens)
    }

    /// The embedder over `encoder` (Burn's [`BertEncoder`] with its weights, or a compiled form
    /// of it) and the tokenizer's bytes; passes hold at most `max_batch_tokens` tokens.
    pub fn embedder<E: Encoder>(
        &self,
        encoder: E,
        tokenizer: &[u8],
        max_batch_tokens: usize,
    ) -> Result<SentenceBert<E>, String> {
        Ok(SentenceBert {
            encoder,
            tokenizer: self.tokenizer(tokenizer)?,
            max_batch_tokens,
        })
    }

    /// The version's tokenizer asset (`tokenizer.json`).
    pub fn tokenizer_json<'a>(&self, assets: &'a Assets) -> Result<&'a [u8], String> {
        assets
            .get(&self.tokenizer)
            .map(|bytes| &bytes[..])
            .ok_or_else(|| format!("the version has no tokenizer asset {:?}", self.tokenizer))
    }

    fn tokenizer(&self, json: &[u8]) -> Result<TextTokenizer, String> {
        if self.max_tokens < 2 || self.max_tokens > self.encoder.max_position_embeddings {
            return Err(format!(
                "max_tokens {} must be 2..={} (the encoder's positions)",
                self.max_tokens, self.encoder.max_position_embeddings
            ));
        }
        TextTokenizer::from_json(json, self.max_tokens)
    }
}

/// What embeds a pass of padded texts: Burn's [`BertEncoder`], or the CPU kernels' compiled
/// form of it.
pub trait Encoder: Sync {
    /// Unit-length embeddings of `tokens`' texts, `[rows, hidden]` row-major.
    fn embed(&self, tokens: Tokens) -> Result<Vec<f32>, String>;
    /// Values per embedding.
    fn hidden(&self) -> usize;
}

impl<B: Backend> Encoder for BertEncoder<B> {
    fn embed(&self, tokens: Tokens) -> Result<Vec<f32>, String> {
        let out = self.embed_tokens(tokens).into_data();
        out.into_vec::<f32>().map_err(|e| format!("{e:?}"))
    }

    fn hidden(&self) -> usize {
        BertEncoder::hidden(self)
    }
}

/// A loaded sentence embedder.
pub struct SentenceBert<E> {
    encoder: E,
    tokenizer: TextTokenizer,
    max_batch_tokens: usize,
}

impl<E: Encoder> SentenceBert<E> {
    /// Unit-length embeddings of `texts`, row-major `[texts, hidden]`. Passes run side by side
    /// on the CPU threads: much of a pass (norms, GELU, softmax, copies) is single-threaded, and
    /// the matrix products share the same pool.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<f32>, String> {
        let ids = self.tokenizer.ids(texts)?;
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let passes = spread(
            plan_passes(&lengths, self.max_batch_tokens),
            rayon::current_num_threads(),
        );
        let embeddings: Vec<Vec<f32>> = passes
            .par_iter()
            .map(|pass| {
                let tokens = Tokens::padded(pass.iter().map(|&i| ids[i].as_slice()));
                self.encoder.embed(tokens)
            })
            .collect::<Result<_, _>>()?;
        let hidden = self.encoder.hidden();
        let mut out = vec![0.0; texts.len() * hidden];
        for (pass, embeddings) in passes.iter().zip(embeddings) {
            for (row, &i) in pass.iter().enumerate() {
                out[i * hidden..(i + 1) * hidden]
                    .copy_from_slice(&embeddings[row * hidden..(row + 1) * hidden]);
            }
        }
        Ok(out)
    }
}

impl<E: Encoder> Model for SentenceBert<E> {
    fn infer(&self, _rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, ModelError> {
        let [TensorData::Bytes(texts)] = &inputs[..] else {
            return Err(ModelError::Input(
                "sentence-bert takes one BYTES input".into(),
            ));
        };
        let embeddings = self.embed(texts).map_err(ModelError::Compute)?;
        Ok(vec![TensorData::F32(embeddings)])
    }
}

/// Text to token ids with a Hugging Face `tokenizer.json`, cut to `max_tokens`.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    /// Reads `tokenizer.json`; longer texts are cut to `max_tokens` tokens (special tokens
    /// included). Its own padding settings are dropped: batches are padded per pass.
    pub fn from_json(json: &[u8], max_tokens: usize) -> Result<Self, String> {
        let mut inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| format!("not a tokenizer.json: {e}"))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| format!("cannot cut texts to {max_tokens} tokens: {e}"))?;
        Ok(Self { inner })
    }

    /// Token ids of each text, special tokens included.
    pub fn ids(&self, texts: &[String]) -> Result<Vec<Vec<i64>>, String> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self
            .inner
            .encode_batch_fast(inputs, true)
            .map_err(|e| format!("cannot tokenise: {e}"))?;
        Ok(encodings
            .iter()
            .map(|e| e.get_ids().iter().map(|&id| i64::from(id)).collect())
            .collect())
    }
}

/// `passes` split in halves, largest first, until there are at least `threads` (or every pass
/// is one text), so that every thread has one.
fn spread(mut passes: Vec<Vec<usize>>, threads: usize) -> Vec<Vec<usize>> {
    while passes.len() < threads {
        let (largest, rows) = passes
            .iter()
            .map(Vec::len)
            .enumerate()
            .max_by_key(|&(_, rows)| rows)
            .unwrap_or_default();
        if rows < 2 {
            break;
        }
        let half = passes[largest].split_off(rows / 2);
        passes.push(half);
    }
    passes
}

/// Cuts texts of token `lengths` into passes (lists of indices) of at most `max_batch_tokens`
/// padded tokens each (a longer text runs alone), minimising padded tokens plus
/// `PASS_COST_TOKENS` per pass: sorted by length, the passes are runs of neighbours, chosen by
/// dynamic programming over the distinct lengths (at most `max_tokens` of them, so the plan costs
/// microseconds however many texts a batch holds).
pub fn plan_passes(lengths: &[usize], max_batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    // Distinct lengths and how many texts reach up to each: `ends[k]` texts have length ≤ `distinct[k]`.
    let mut distinct: Vec<usize> = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
    for (n, &i) in order.iter().enumerate() {
        if distinct.last() != Some(&lengths[i]) {
            distinct.push(lengths[i]);
            ends.push(0);
        }
        *ends.last_mut().expect("pushed above") = n + 1;
    }
    let rows_per_pass = |length: usize| (max_batch_tokens / length.max(1)).max(1);
    // best[j]: cheapest cover of the texts of the first j distinct lengths, and where its last run starts.
    let mut best = vec![(0usize, 0usize); distinct.len() + 1];
    for j in 1..=distinct.len() {
        let longest = distinct[j - 1];
        best[j] = (0..j)
            .map(|i| {
                let texts = ends[j - 1] - if i == 0 { 0 } else { ends[i - 1] };
                let passes = texts.div_ceil(rows_per_pass(longest));
                (best[i].0 + texts * longest + passes * PASS_COST_TOKENS, i)
            })
            .min()
            .expect("j ≥ 1");
    }
    let mut runs = Vec::new();
    let mut j = distinct.len();
    while j > 0 {
        let i = best[j].1;
        let start = if i == 0 { 0 } else { ends[i - 1] };
        runs.push((start, ends[j - 1], rows_per_pass(distinct[j - 1])));
        j = i;
    }
    runs.iter()
        .rev()
        .flat_map(|&(start, end, rows)| order[start..end].chunks(rows).map(<[usize]>::to_vec))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded_tokens(lengths: &[usize], passes: &[Vec<usize>]) -> usize {
        passes
            .iter()
            .map(|p| p.len() * p.iter().map(|&i| lengths[i]).max().unwrap())
            .sum()
    }

    #[test]
    fn every_text_runs_exactly_once() {
        let lengths: Vec<usize> = (0..500).map(|i| 2 + (i * 37) % 255).collect();
        let passes = plan_passes(&lengths, 4096);
        let mut seen: Vec<usize> = passes.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        for pass in &passes {
            let longest = pass.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(pass.len() * longest <= 4096, "{pass:?}");
        }
        assert!(plan_passes(&[], 4096).is_empty());
    }

    #[test]
    fn one_long_text_gets_its_own_pass() {
        let mut lengths = vec![20; 31];
        lengths.push(256);
        let passes = plan_passes(&lengths, DEFAULT_MAX_BATCH_TOKENS);
        assert_eq!(passes.len(), 2, "{passes:?}");
        assert_eq!(passes[1], vec![31]);
        assert_eq!(padded_tokens(&lengths, &passes), 31 * 20 + 256);
        // Naive padding would cost 32 × 256.
    }

    #[test]
    fn similar_lengths_share_a_pass_and_the_token_cap_splits_big_batches() {
        let lengths = [12, 14, 13, 15, 12, 16];
        assert_eq!(plan_passes(&lengths, 8192).len(), 1);
        let long = vec![256; 100];
        let passes = plan_passes(&long, 8192);
        assert_eq!(
            passes.iter().map(Vec::len).collect::<Vec<_>>(),
            [32, 32, 32, 4]
        );
        // A text longer than the cap still runs, alone.
        assert_eq!(plan_passes(&[300, 300], 256), vec![vec![0], vec![1]]);
    }

    #[test]
    fn passes_are_halved_until_every_thread_has_one() {
        let passes = spread(vec![(0..10).collect(), vec![10]], 4);
        let mut rows: Vec<usize> = passes.iter().map(Vec::len).collect();
        rows.sort_unstable();
        assert_eq!(rows, [1, 2, 3, 5]);
        assert_eq!(passes.concat().len(), 11);
        assert_eq!(
            spread(vec![vec![0]], 8),
            vec![vec![0]],
            "one text stays whole"
        );
    }

    #[test]
    fn tokens_are_padded_with_a_mask() {
        let rows: [&[i64]; 2] = [&[101, 7, 102], &[101, 102]];
        let tokens = Tokens::padded(rows.into_iter());
        assert_eq!((tokens.rows, tokens.tokens), (2, 3));
        assert_eq!(tokens.ids, [101, 7, 102, 101, 102, 0]);
        assert_eq!(tokens.mask, [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
    }
}
