//! A BERT encoder with mean pooling and L2 normalisation on the CPU kernels: the same network
//! as [`BertEncoder`](crate::models::bert::BertEncoder), with the query, key and value
//! projections fused into one product and attention read straight out of it (strided gemms,
//! no head transposes).

use super::kernels::{Activation, Activations, Dense, add_assign, exp, vectorized};
use super::network::floats;
use crate::models::bert::Tokens;
use crate::models::text::Encoder;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::prelude::*;
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// The compiled encoder.
#[derive(Debug)]
pub struct Bert {
    /// `[vocabulary, hidden]`.
    words: Vec<f32>,
    /// `[positions, hidden]`.
    positions: Vec<f32>,
    /// Token type 0's row (every token is type 0 in a single-text input).
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
}

#[derive(Debug)]
struct Layer {
    /// Query, key and value side by side: `[hidden, 3 × hidden]`.
    qkv: Dense,
    attention_output: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

/// LayerNorm over each row.
#[derive(Debug)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    epsilon: f32,
}

impl Norm {
    fn new<B: Backend>(norm: &LayerNorm<B>, epsilon: f64) -> Result<Self, String> {
        let gamma = floats(norm.gamma.val())?;
        let beta = match &norm.beta {
            Some(beta) => floats(beta.val())?,
            None => vec![0.0; gamma.len()],
        };
        Ok(Self {
            gamma,
            beta,
            epsilon: epsilon as f32,
        })
    }

    fn apply(&self, values: &mut [f32]) {
        let width = self.gamma.len();
        for row in values.chunks_exact_mut(width) {
            let mean = row.iter().sum::<f32>() / width as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
            let std = (var + self.epsilon).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = (*v - mean) / std * g + b;
            }
        }
    }
}

/// A layer's dense layers (query, key, value, attention output, intermediate, output) and
/// LayerNorms (after attention, after the output).
pub type LayerParts<'a, B> = ([&'a Linear<B>; 6], [&'a LayerNorm<B>; 2]);

/// The encoder's parts, as Burn holds them, for [`Bert::new`].
pub struct BertParts<'a, B: Backend> {
    /// Word, position and token type embeddings.
    pub embeddings: [&'a Embedding<B>; 3],
    /// LayerNorm after the embeddings.
    pub embedding_norm: &'a LayerNorm<B>,
    /// Each layer's parts.
    pub layers: Vec<LayerParts<'a, B>>,
    /// Attention heads.
    pub heads: usize,
    /// The LayerNorms' epsilon.
    pub epsilon: f64,
}

impl Bert {
    /// Compiles the encoder made of `parts`.
    pub fn new<B: Backend>(parts: BertParts<'_, B>) -> Result<Self, String> {
        let [words, positions, types] = parts.embeddings;
        let [_, hidden] = words.weight.dims();
        if parts.heads == 0 || hidden % parts.heads != 0 {
            return Err(format!("{hidden} hidden values in {} heads", parts.heads));
        }
        let dense = |linear: &Linear<B>, activation| -> Result<Dense, String> {
            let [_, outputs] = linear.weight.dims();
            Ok(Dense {
                weights: floats(linear.weight.val())?,
                bias: match &linear.bias {
                    Some(bias) => floats(bias.val())?,
                    None => vec![0.0; outputs],
                },
                activation,
            })
        };
        let layers = parts
            .layers
            .iter()
            .map(
                |([q, k, v, attention, intermediate, output], [norm1, norm2])| {
                    let [q, k, v] = [q, k, v].map(|l| dense(l, Activation::Linear));
                    let (q, k, v) = (q?, k?, v?);
                    let mut weights = Vec::with_capacity(3 * hidden * hidden);
                    for row in 0..hidden {
                        for part in [&q, &k, &v] {
                            weights
                                .extend_from_slice(&part.weights[row * hidden..(row + 1) * hidden]);
                        }
                    }
                    Ok(Layer {
                        qkv: Dense {
                            weights,
                            bias: [q.bias, k.bias, v.bias].concat(),
                            activation: Activation::Linear,
                        },
                        attention_output: dense(attention, Activation::Linear)?,
                        attention_norm: Norm::new(norm1, parts.epsilon)?,
                        intermediate: dense(intermediate, Activation::Gelu)?,
                        output: dense(output, Activation::Linear)?,
                        output_norm: Norm::new(norm2, parts.epsilon)?,
                    })
                },
            )
            .collect::<Result<_, String>>()?;
        Ok(Self {
            words: floats(words.weight.val())?,
            positions: floats(positions.weight.val())?,
            token_type: floats(types.weight.val())?[..hidden].to_vec(),
            embedding_norm: Norm::new(parts.embedding_norm, parts.epsilon)?,
            layers,
            hidden,
            heads: parts.heads,
        })
    }

    /// Values per embedding.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Unit-length embeddings of the texts of `tokens`, `[rows, hidden]` row-major.
    pub fn embed(&self, tokens: &Tokens) -> Result<Vec<f32>, String> {
        let (rows, length, hidden) = (tokens.rows, tokens.tokens, self.hidden);
        if length * hidden > self.positions.len() {
            return Err(format!("{length} tokens exceed the encoder's positions"));
        }
        let mut x = vec![0.0; rows * length * hidden];
        for (at, (&id, out)) in tokens
            .ids
            .iter()
            .zip(x.chunks_exact_mut(hidden))
            .enumerate()
        {
            let word = usize::try_from(id)
                .ok()
                .and_then(|id| self.words.get(id * hidden..(id + 1) * hidden))
                .ok_or_else(|| format!("token id {id} is not in the vocabulary"))?;
            let position = &self.positions[at % length * hidden..][..hidden];
            for (i, v) in out.iter_mut().enumerate() {
                *v = word[i] + position[i] + self.token_type[i];
            }
        }
        self.embedding_norm.apply(&mut x);
        let mut x = Activations {
            data: x,
            rows: rows * length,
            shape: [1, 1, hidden],
        };
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, Vec::new());
            let context = Activations {
                data: self.attention(&qkv.data, &tokens.mask, rows, length),
                ..x
            };
            let mut attended = layer.attention_output.forward(&context, qkv.data);
            add_assign(&mut attended.data, &x.data);
            layer.attention_norm.apply(&mut attended.data);
            let inner = layer.intermediate.forward(&attended, context.data);
            let mut out = layer.output.forward(&inner, x.data);
            add_assign(&mut out.data, &attended.data);
            layer.output_norm.apply(&mut out.data);
            x = out;
        }
        Ok(pool(&x.data, &tokens.mask, [rows, length, hidden]))
    }

    /// Multi-head attention of `qkv` (`[rows × length, 3 × hidden]`), keys masked by `mask`:
    /// the context, `[rows × length, hidden]`.
    fn attention(&self, qkv: &[f32], mask: &[f32], rows: usize, length: usize) -> Vec<f32> {
        let (hidden, heads) = (self.hidden, self.heads);
        let width = hidden / heads;
        let scale = 1.0 / (width as f32).sqrt();
        let mut context = vec![0.0; rows * length * hidden];
        let stride = 3 * hidden as isize;
        context
            .par_chunks_mut(length * hidden)
            .enumerate()
            .for_each(|(row, out)| {
                let qkv = &qkv[row * length * 3 * hidden..(row + 1) * length * 3 * hidden];
                let mask = &mask[row * length..(row + 1) * length];
                let mut scores = vec![0.0; length * length];
                for head in 0..heads {
                    let q = qkv[head * width..].as_ptr();
                    let k = qkv[hidden + head * width..].as_ptr();
                    let v = qkv[2 * hidden + head * width..].as_ptr();
                    // SAFETY: q, k and v are `length` rows `stride` apart of `width` values each,
                    // inside `qkv`; scores is length × length; out's head columns are `length`
                    // rows of `width` values `hidden` apart. No output aliases an input.
                    unsafe {
                        gemm(
                            length,
                            length,
                            width,
                            scores.as_mut_ptr(),
                            1,
                            length as isize,
                            false,
                            q,
                            1,
                            stride,
                            k,
                            stride,
                            1,
                            0.0,
                            scale,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                    vectorized(|| {
                        for row in scores.chunks_exact_mut(length) {
                            masked_softmax(row, mask);
                        }
                    });
                    // SAFETY: as above.
                    unsafe {
                        gemm(
                            length,
                            width,
                            length,
                            out[head * width..].as_mut_ptr(),
                            1,
                            hidden as isize,
                            false,
                            scores.as_ptr(),
                            1,
                            length as isize,
                            v,
                            1,
                            stride,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
            });
        context
    }
}

/// Softmax of `scores` over the keys whose `mask` is 1 (the others get 0).
#[inline(always)]
fn masked_softmax(scores: &mut [f32], mask: &[f32]) {
    let max = scores
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m != 0.0)
        .map(|(s, _)| *s)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (s, m) in scores.iter_mut().zip(mask) {
        *s = if *m != 0.0 { exp(*s - max) } else { 0.0 };
        sum += *s;
    }
    scores.iter_mut().for_each(|s| *s /= sum);
}

/// The mean of each text's token vectors (padding left out), scaled to unit length.
fn pool(x: &[f32], mask: &[f32], [rows, length, hidden]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0.0; rows * hidden];
    for (row, sum) in out.chunks_exact_mut(hidden).enumerate() {
        let mut count = 0.0;
        for token in row * length..(row + 1) * length {
            let weight = mask[token];
            if weight != 0.0 {
                count += weight;
                for (s, v) in sum.iter_mut().zip(&x[token * hidden..(token + 1) * hidden]) {
                    *s += v * weight;
                }
            }
        }
        let count = f32::max(count, 1.0);
        sum.iter_mut().for_each(|s| *s /= count);
        let norm = sum.iter().map(|s| s * s).sum::<f32>().sqrt().max(1e-12);
        sum.iter_mut().for_each(|s| *s /= norm);
    }
    out
}

impl Encoder for Bert {
    fn embed(&self, tokens: Tokens) -> Result<Vec<f32>, String> {
        Bert::embed(self, &tokens)
    }

    fn hidden(&self) -> usize {
        Bert::hidden(self)
    }
}
