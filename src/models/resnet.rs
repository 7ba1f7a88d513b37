//! A ResNet for small colour images (CIFAR-style 32×32), in the layout of He et al.'s CIFAR
//! networks: a 3×3 stem, stages of basic residual blocks (each stage after the first halves
//! the side and widens), global average pooling, one dense layer.
//!
//! Input: pixels `[N, channels × side × side]` (channel-major, as PyTorch's `NCHW`), scaled by
//! `input_scale`. Parameter names follow torchvision's (`conv1`, `bn1`, `shortcut`), so weights
//! convert to and from PyTorch by name (`loadtest gpu` checks against a PyTorch twin).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Shape of the network; recorded in each version's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Side of the square input image.
    pub image_size: usize,
    /// Colour channels of the input.
    pub input_channels: usize,
    /// Multiplies raw pixels before the first layer (1/255 maps bytes to 0–1).
    pub input_scale: f32,
    /// Width of each stage; every stage after the first starts with a stride-2 block.
    pub widths: Vec<usize>,
    /// Residual blocks per stage.
    pub blocks: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
}

impl ResNetConfig {
    /// ResNet-18 for 32×32 RGB images (11.2 M parameters, 0.56 GFLOP per image).
    pub fn resnet18_cifar(classes: usize) -> Self {
        Self {
            image_size: 32,
            input_channels: 3,
            input_scale: 1.0 / 255.0,
            widths: vec![64, 128, 256, 512],
            blocks: vec![2, 2, 2, 2],
            classes,
        }
    }

    /// Values per input row.
    pub fn pixels(&self) -> usize {
        self.input_channels * self.image_size * self.image_size
    }

    /// Checks the shape can be built.
    pub fn validate(&self) -> Result<(), String> {
        if self.widths.is_empty()
            || self.widths.len() != self.blocks.len()
            || self.widths.contains(&0)
            || self.blocks.contains(&0)
            || self.image_size == 0
            || self.input_channels == 0
            || self.classes == 0
        {
            return Err(format!(
                "resnet needs as many non-zero widths as block counts, a non-zero image size, \
                 channels and classes: {self:?}"
            ));
        }
        Ok(())
    }

    /// A freshly initialised network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let stem = self.widths[0];
        let mut layers = Vec::new();
        let mut channels = stem;
        for (stage, (&width, &blocks)) in self.widths.iter().zip(&self.blocks).enumerate() {
            for block in 0..blocks {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                layers.push(BasicBlock::new(channels, width, stride, device));
                channels = width;
            }
        }
        ResNet {
            conv1: conv3x3(self.input_channels, stem, 1, device),
            bn1: BatchNormConfig::new(stem).init(device),
            layers,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(channels, self.classes).init(device),
            relu: Relu::new(),
            shape: [self.input_channels, self.image_size],
            input_scale: self.input_scale,
        }
    }
}

fn conv3x3<B: Backend>(from: usize, to: usize, stride: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([from, to], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// The network.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    pub(crate) conv1: Conv2d<B>,
    pub(crate) bn1: BatchNorm<B>,
    pub(crate) layers: Vec<BasicBlock<B>>,
    pub(crate) pool: AdaptiveAvgPool2d,
    pub(crate) fc: Linear<B>,
    pub(crate) relu: Relu,
    #[module(skip)]
    pub(crate) shape: [usize; 2],
    #[module(skip)]
    pub(crate) input_scale: f32,
}

/// conv3×3 → BN → ReLU → conv3×3 → BN, plus the input (through a strided 1×1 conv + BN when
/// the shape changes), then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    pub(crate) conv1: Conv2d<B>,
    pub(crate) bn1: BatchNorm<B>,
    pub(crate) conv2: Conv2d<B>,
    pub(crate) bn2: BatchNorm<B>,
    pub(crate) shortcut: Option<Shortcut<B>>,
    pub(crate) relu: Relu,
}

/// The projection of a block's input when its shape changes.
#[derive(Module, Debug)]
pub struct Shortcut<B: Backend> {
    pub(crate) conv: Conv2d<B>,
    pub(crate) bn: BatchNorm<B>,
}

impl<B: Backend> BasicBlock<B> {
    fn new(from: usize, to: usize, stride: usize, device: &B::Device) -> Self {
        let shortcut = (stride != 1 || from != to).then(|| Shortcut {
            conv: Conv2dConfig::new([from, to], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(to).init(device),
        });
        Self {
            conv1: conv3x3(from, to, stride, device),
            bn1: BatchNormConfig::new(to).init(device),
            conv2: conv3x3(to, to, 1, device),
            bn2: BatchNormConfig::new(to).init(device),
            shortcut,
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self
            .relu
            .forward(self.bn1.forward(self.conv1.forward(x.clone())));
        let y = self.bn2.forward(self.conv2.forward(y));
        let skip = match &self.shortcut {
            Some(s) => s.bn.forward(s.conv.forward(x)),
            None => x,
        };
        self.relu.forward(y + skip)
    }
}

impl<B: Backend> ResNet<B> {
    /// Class logits `[N, classes]` for raw pixels `[N, channels × side × side]`.
    pub fn logits(&self, pixels: Tensor<B, 2>) -> Tensor<B, 2> {
        let [rows, _] = pixels.dims();
        let [channels, side] = self.shape;
        let x = (pixels * self.input_scale).reshape([rows, channels, side, side]);
        let mut x = self.relu.forward(self.bn1.forward(self.conv1.forward(x)));
        for layer in &self.layers {
            x = layer.forward(x);
        }
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::CpuBackend;

    #[test]
    fn a_resnet_halves_the_side_per_stage_and_answers_one_logit_per_class() {
        let config = ResNetConfig {
            image_size: 8,
            widths: vec![4, 8],
            blocks: vec![1, 2],
            ..ResNetConfig::resnet18_cifar(5)
        };
        config.validate().unwrap();
        let net = config.init::<CpuBackend>(&Default::default());
        // The second stage's first block projects its input; the others add it unchanged.
        let projected: Vec<bool> = net.layers.iter().map(|b| b.shortcut.is_some()).collect();
        assert_eq!(projected, [false, true, false]);
        let pixels = Tensor::<CpuBackend, 2>::ones([2, config.pixels()], &Default::default());
        assert_eq!(net.logits(pixels).dims(), [2, 5]);
    }

    #[test]
    fn mismatched_stages_are_refused() {
        let config = ResNetConfig {
            blocks: vec![2, 2],
            ..ResNetConfig::resnet18_cifar(10)
        };
        assert!(config.validate().unwrap_err().contains("widths"));
    }
}
