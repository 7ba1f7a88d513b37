//! A BERT encoder with mean pooling and L2 normalisation: sentence embeddings as
//! sentence-transformers computes them (all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads).
//!
//! Input: token ids `[batch, tokens]` padded per batch, and the attention mask (1 for a token,
//! 0 for padding). Padding is masked out of attention and of the mean, so a sentence's embedding
//! does not depend on what it is batched with.

use anyhow::Context;
use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use serde::{Deserialize, Serialize};

/// Shape of the encoder (Hugging Face `config.json` names); recorded in each version's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of every hidden state (and of the embedding).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest sequence the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Token types (segments).
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// A freshly initialised encoder (weights come from a record or [`BertEncoder::from_safetensors`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> BertEncoder<B> {
        let h = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let dense = |from, to| LinearConfig::new(from, to).init(device);
        BertEncoder {
            words: EmbeddingConfig::new(self.vocab_size, h).init(device),
            positions: EmbeddingConfig::new(self.max_position_embeddings, h).init(device),
            token_types: EmbeddingConfig::new(self.type_vocab_size, h).init(device),
            embedding_norm: norm(),
            layers: (0..self.num_hidden_layers)
                .map(|_| BertLayer {
                    query: dense(h, h),
                    key: dense(h, h),
                    value: dense(h, h),
                    attention_output: dense(h, h),
                    attention_norm: norm(),
                    intermediate: dense(h, self.intermediate_size),
                    output: dense(self.intermediate_size, h),
                    output_norm: norm(),
                })
                .collect(),
            heads: self.num_attention_heads,
        }
    }
}

/// Token ids of texts padded to the longest, as the encoder takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// Texts.
    pub rows: usize,
    /// Length of the longest text, which every row is padded to.
    pub tokens: usize,
    /// Token ids, row-major; padding is id 0.
    pub ids: Vec<i64>,
    /// 1.0 for a token, 0.0 for padding.
    pub mask: Vec<f32>,
}

impl Tokens {
    /// `rows` padded to the longest.
    pub fn padded<'a>(rows: impl Iterator<Item = &'a [i64]> + Clone) -> Self {
        let tokens = rows.clone().map(<[i64]>::len).max().unwrap_or(0);
        let mut out = Self {
            rows: 0,
            tokens,
            ids: Vec::new(),
            mask: Vec::new(),
        };
        for row in rows {
            out.rows += 1;
            let padding = tokens - row.len();
            out.ids.extend_from_slice(row);
            out.ids.extend(std::iter::repeat_n(0, padding));
            out.mask.extend(std::iter::repeat_n(1.0, row.len()));
            out.mask.extend(std::iter::repeat_n(0.0, padding));
        }
        out
    }
}

/// The encoder.
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    pub(crate) words: Embedding<B>,
    pub(crate) positions: Embedding<B>,
    pub(crate) token_types: Embedding<B>,
    pub(crate) embedding_norm: LayerNorm<B>,
    pub(crate) layers: Vec<BertLayer<B>>,
    #[module(skip)]
    pub(crate) heads: usize,
}

/// One encoder layer: self-attention and a GELU feed-forward, each with a residual and a norm.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    pub(crate) query: Linear<B>,
    pub(crate) key: Linear<B>,
    pub(crate) value: Linear<B>,
    pub(crate) attention_output: Linear<B>,
    pub(crate) attention_norm: LayerNorm<B>,
    pub(crate) intermediate: Linear<B>,
    pub(crate) output: Linear<B>,
    pub(crate) output_norm: LayerNorm<B>,
}

impl<B: Backend> BertEncoder<B> {
    /// Unit-length sentence embeddings `[batch, hidden]` for token ids `[batch, tokens]` and
    /// their mask (1.0 token, 0.0 padding).
    pub fn embed(&self, ids: Tensor<B, 2, Int>, mask: Tensor<B, 2>) -> Tensor<B, 2> {
        let [batch, tokens] = ids.dims();
        let device = ids.device();
        let hidden = self.hidden();
        let positions = Tensor::<B, 1, Int>::arange(0..tokens as i64, &device)
            .reshape([1, tokens])
            .expand([batch, tokens]);
        let types = Tensor::<B, 2, Int>::zeros([batch, tokens], &device);
        let x = self.words.forward(ids)
            + self.positions.forward(positions)
            + self.token_types.forward(types);
        let mut x = self
            .embedding_norm
            .forward(x)
            .reshape([batch * tokens, hidden]);
        // No attention flows to padding (masked out before the softmax).
        let padding = mask
            .clone()
            .equal_elem(0.0)
            .reshape([batch, 1, 1, tokens])
            .expand([batch, self.heads, tokens, tokens]);
        for layer in &self.layers {
            x = layer.forward(x, padding.clone(), [batch, tokens, hidden], self.heads);
        }
        // Pooled and normalised in FP32 whatever the encoder's precision.
        let x = x.reshape([batch, tokens, hidden]).cast(FloatDType::F32);
        let mask = mask.reshape([batch, tokens, 1]);
        let summed = (x * mask.clone()).sum_dim(1).reshape([batch, hidden]);
        let counts = mask.sum_dim(1).reshape([batch, 1]).clamp_min(1.0);
        let mean = summed / counts;
        let norm = mean
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        mean / norm
    }

    /// Unit-length embeddings `[rows, hidden]` of a tokenised batch.
    pub fn embed_tokens(&self, tokens: Tokens) -> Tensor<B, 2> {
        let device = self.embedding_norm.gamma.device();
        let shape = [tokens.rows, tokens.tokens];
        let ids = Tensor::from_data(TensorData::new(tokens.ids, shape), &device);
        let mask = Tensor::from_data(TensorData::new(tokens.mask, shape), &device);
        self.embed(ids, mask)
    }

    /// Width of the embeddings.
    pub fn hidden(&self) -> usize {
        self.embedding_norm.gamma.dims()[0]
    }

    /// An encoder of `config`'s shape with the weights of a Hugging Face BERT `model.safetensors`.
    pub fn from_safetensors(
        config: &BertConfig,
        bytes: &[u8],
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        let file =
            safetensors::SafeTensors::deserialize(bytes).context("not a safetensors file")?;
        let mut weights = Weights {
            file,
            device: device.clone(),
        };
        let mut encoder = config.init::<B>(device);
        let e = "embeddings.";
        weights.embedding(&mut encoder.words, &format!("{e}word_embeddings"))?;
        weights.embedding(&mut encoder.positions, &format!("{e}position_embeddings"))?;
        weights.embedding(
            &mut encoder.token_types,
            &format!("{e}token_type_embeddings"),
        )?;
        weights.norm(&mut encoder.embedding_norm, &format!("{e}LayerNorm"))?;
        for (i, layer) in encoder.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}.");
            weights.linear(&mut layer.query, &format!("{p}attention.self.query"))?;
            weights.linear(&mut layer.key, &format!("{p}attention.self.key"))?;
            weights.linear(&mut layer.value, &format!("{p}attention.self.value"))?;
            weights.linear(
                &mut layer.attention_output,
                &format!("{p}attention.output.dense"),
            )?;
            weights.norm(
                &mut layer.attention_norm,
                &format!("{p}attention.output.LayerNorm"),
            )?;
            weights.linear(&mut layer.intermediate, &format!("{p}intermediate.dense"))?;
            weights.linear(&mut layer.output, &format!("{p}output.dense"))?;
            weights.norm(&mut layer.output_norm, &format!("{p}output.LayerNorm"))?;
        }
        Ok(encoder)
    }
}

impl<B: Backend> BertLayer<B> {
    /// `x` is `[batch × tokens, hidden]`: every dense layer is one matrix product over all the
    /// batch's tokens (not one small product per text).
    fn forward(
        &self,
        x: Tensor<B, 2>,
        padding: Tensor<B, 4, Bool>,
        shape: [usize; 3],
        heads: usize,
    ) -> Tensor<B, 2> {
        let [batch, tokens, hidden] = shape;
        let width = hidden / heads;
        let split = |t: Tensor<B, 2>| t.reshape([batch, tokens, heads, width]).swap_dims(1, 2);
        let (q, k, v) = (
            split(self.query.forward(x.clone())),
            split(self.key.forward(x.clone())),
            split(self.value.forward(x.clone())),
        );
        let options = AttentionModuleOptions::default();
        let context = attention(q, k, v, Some(padding), None, options)
            .swap_dims(1, 2)
            .reshape([batch * tokens, hidden]);
        let x = self
            .attention_norm
            .forward(x + self.attention_output.forward(context));
        let h = gelu(self.intermediate.forward(x.clone()));
        self.output_norm.forward(x + self.output.forward(h))
    }
}

/// Reads tensors by name out of a safetensors file onto a device.
struct Weights<'a, B: Backend> {
    file: safetensors::SafeTensors<'a>,
    device: B::Device,
}

impl<B: Backend> Weights<'_, B> {
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> anyhow::Result<Tensor<B, D>> {
        let view = self
            .file
            .tensor(name)
            .with_context(|| format!("the weights have no tensor {name}"))?;
        anyhow::ensure!(
            view.dtype() == safetensors::Dtype::F32 && view.shape() == shape,
            "{name} is {:?} {:?}, expected F32 {shape:?}",
            view.dtype(),
            view.shape()
        );
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    /// A PyTorch `Linear` (`weight` is `[out, in]`; Burn's is `[in, out]`).
    fn linear(&mut self, linear: &mut Linear<B>, name: &str) -> anyhow::Result<()> {
        let [input, output] = linear.weight.dims();
        let weight = self.tensor(&format!("{name}.weight"), [output, input])?;
        linear.weight = Param::from_tensor(weight.transpose());
        linear.bias = Some(Param::from_tensor(
            self.tensor(&format!("{name}.bias"), [output])?,
        ));
        Ok(())
    }

    fn norm(&mut self, norm: &mut LayerNorm<B>, name: &str) -> anyhow::Result<()> {
        let [width] = norm.gamma.dims();
        norm.gamma = Param::from_tensor(self.tensor(&format!("{name}.weight"), [width])?);
        norm.beta = Some(Param::from_tensor(
            self.tensor(&format!("{name}.bias"), [width])?,
        ));
        Ok(())
    }

    fn embedding(&mut self, embedding: &mut Embedding<B>, name: &str) -> anyhow::Result<()> {
        let shape = embedding.weight.dims();
        embedding.weight = Param::from_tensor(self.tensor(&format!("{name}.weight"), shape)?);
        Ok(())
    }
}
