//! Each served network, as Burn builds it in [`crate::models`], compiled for the CPU kernels.

use super::{Bert, BertParts, Builder, CpuModel, Network};
use crate::models::bert::BertEncoder;
use crate::models::digits::DigitsCnn;
use crate::models::failure::FailureMlp;
use crate::models::resnet::ResNet;
use crate::models::vibration::VibrationCnn;
use crate::models::{Architecture, Assets, CpuBackend, Model, ModelError, Precision, with_weights};
use burn::prelude::Backend;

/// `architecture` with `weights` compiled for the CPU kernels, or None for the identity. The
/// kernels compute in FP32: a reduced `precision` rounds the weights to it (as a GPU would hold
/// them), activations stay FP32 (CPUs gain nothing from narrower arithmetic without it, and
/// Burn's CPU FP16 ran ResNet-18 ~13× slower). A text model's passes hold at most
/// `max_batch_tokens` tokens.
pub fn compile(
    architecture: &Architecture,
    weights: &[u8],
    assets: &Assets,
    max_batch_tokens: usize,
    precision: Precision,
) -> Result<Option<Box<dyn Model>>, ModelError> {
    build(architecture, weights, assets, max_batch_tokens, precision).map_err(ModelError::Load)
}

fn build(
    architecture: &Architecture,
    weights: &[u8],
    assets: &Assets,
    max_batch_tokens: usize,
    precision: Precision,
) -> Result<Option<Box<dyn Model>>, String> {
    let device = Default::default();
    let model = match architecture {
        Architecture::DigitsCnn(c) => {
            let module = with_weights(c.init::<CpuBackend>(&device), weights, precision, &device)?;
            CpuModel::classifier(digits(&module)?)
        }
        Architecture::ResNet(c) => {
            c.validate()?;
            let module = with_weights(c.init::<CpuBackend>(&device), weights, precision, &device)?;
            CpuModel::classifier(resnet(&module)?)
        }
        Architecture::VibrationCnn(c) => {
            let module = with_weights(c.init::<CpuBackend>(&device), weights, precision, &device)?;
            CpuModel::classifier(vibration(&module, c.window)?)
        }
        Architecture::FailureMlp(c) => {
            c.check()?;
            let module = with_weights(c.init::<CpuBackend>(&device), weights, precision, &device)?;
            CpuModel::failure(failure(&module, c.width())?, c.clone())
        }
        Architecture::SentenceBert(c) => {
            let encoder = with_weights(
                c.encoder.init::<CpuBackend>(&device),
                weights,
                precision,
                &device,
            )?;
            let encoder = bert(&encoder, c.encoder.layer_norm_eps)?;
            let tokenizer = c.tokenizer_json(assets)?;
            return Ok(Some(Box::new(c.embedder(
                encoder,
                tokenizer,
                max_batch_tokens,
            )?)));
        }
        Architecture::Identity { .. } => return Ok(None),
    };
    Ok(Some(Box::new(model)))
}

/// The digits CNN.
pub fn digits<B: Backend>(net: &DigitsCnn<B>) -> Result<Network, String> {
    let side = net.image_size;
    Ok(Builder::new([1, side, side])
        .scale(net.input_scale)
        .conv2d(&net.conv1, None, true)?
        .conv2d(&net.conv2, None, true)?
        .max_pool2d(&net.pool)?
        .dense(&net.fc1, true)?
        .dense(&net.fc2, false)?
        .build())
}

/// A ResNet, its BatchNorms folded into the convolutions.
pub fn resnet<B: Backend>(net: &ResNet<B>) -> Result<Network, String> {
    let [channels, side] = net.shape;
    let mut compiled = Builder::new([channels, side, side])
        .scale(net.input_scale)
        .conv2d(&net.conv1, Some(&net.bn1), true)?;
    for block in &net.layers {
        compiled = compiled.residual(
            [&block.conv1, &block.conv2],
            [&block.bn1, &block.bn2],
            block.shortcut.as_ref().map(|s| (&s.conv, &s.bn)),
        )?;
    }
    Ok(compiled.global_avg_pool().dense(&net.fc, false)?.build())
}

/// The vibration CNN, for windows of `window` samples.
pub fn vibration<B: Backend>(net: &VibrationCnn<B>, window: usize) -> Result<Network, String> {
    Ok(Builder::new([1, 1, window])
        .standardize()
        .conv1d(&net.conv1, true)?
        .max_pool1d(&net.pool)?
        .conv1d(&net.conv2, true)?
        .max_pool1d(&net.pool)?
        .conv1d(&net.conv3, true)?
        .global_avg_pool()
        .dense(&net.head, false)?
        .build())
}

/// The failure MLP, on rows of `width` features.
pub fn failure<B: Backend>(net: &FailureMlp<B>, width: usize) -> Result<Network, String> {
    let last = net.layers.len().saturating_sub(1);
    let mut compiled = Builder::new([width, 1, 1]);
    for (i, layer) in net.layers.iter().enumerate() {
        compiled = compiled.dense(layer, i < last)?;
    }
    Ok(compiled.build())
}

/// A BERT encoder; `epsilon` is its LayerNorms'.
pub fn bert<B: Backend>(net: &BertEncoder<B>, epsilon: f64) -> Result<Bert, String> {
    Bert::new(BertParts {
        embeddings: [&net.words, &net.positions, &net.token_types],
        embedding_norm: &net.embedding_norm,
        layers: net
            .layers
            .iter()
            .map(|l| {
                (
                    [
                        &l.query,
                        &l.key,
                        &l.value,
                        &l.attention_output,
                        &l.intermediate,
                        &l.output,
                    ],
                    [&l.attention_norm, &l.output_norm],
                )
            })
            .collect(),
        heads: net.heads,
        epsilon,
    })
}
