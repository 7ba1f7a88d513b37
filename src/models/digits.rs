//! A small CNN for the 8×8 handwritten digits of UCI / scikit-learn (10 classes).
//!
//! Input: raw pixel intensities 0–16, shape `[N, 64]`. The network scales them by
//! `input_scale` itself, so producers never pre-process.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Shape of the digits CNN; recorded in each version's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigitsCnnConfig {
    /// Side of the square input image.
    pub image_size: usize,
    /// Multiplies raw pixels before the first layer (1/16 maps 0–16 to 0–1).
    pub input_scale: f32,
    /// Output channels of the two 3×3 convolutions.
    pub channels: [usize; 2],
    /// Width of the hidden dense layer.
    pub hidden: usize,
    /// Number of classes.
    pub classes: usize,
}

impl Default for DigitsCnnConfig {
    fn default() -> Self {
        Self {
            image_size: 8,
            input_scale: 1.0 / 16.0,
            channels: [16, 32],
            hidden: 64,
            classes: 10,
        }
    }
}

impl DigitsCnnConfig {
    /// Pixels per image (the width of the input tensor).
    pub fn pixels(&self) -> usize {
        self.image_size * self.image_size
    }

    /// A freshly initialised network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DigitsCnn<B> {
        let [c1, c2] = self.channels;
        let pooled = self.image_size / 2;
        DigitsCnn {
            conv1: Conv2dConfig::new([1, c1], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device),
            conv2: Conv2dConfig::new([c1, c2], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(c2 * pooled * pooled, self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, self.classes).init(device),
            activation: Relu::new(),
            image_size: self.image_size,
            input_scale: self.input_scale,
        }
    }
}

/// The network: conv3×3 → ReLU → conv3×3 → ReLU → maxpool 2 → dense → ReLU → dense.
#[derive(Module, Debug)]
pub struct DigitsCnn<B: Backend> {
    pub(crate) conv1: Conv2d<B>,
    pub(crate) conv2: Conv2d<B>,
    pub(crate) pool: MaxPool2d,
    pub(crate) fc1: Linear<B>,
    pub(crate) fc2: Linear<B>,
    pub(crate) activation: Relu,
    #[module(skip)]
    pub(crate) image_size: usize,
    #[module(skip)]
    pub(crate) input_scale: f32,
}

impl<B: Backend> DigitsCnn<B> {
    /// Class logits `[N, classes]` for raw pixels `[N, image_size²]`.
    pub fn logits(&self, pixels: Tensor<B, 2>) -> Tensor<B, 2> {
        let [rows, _] = pixels.dims();
        let side = self.image_size;
        let x = (pixels * self.input_scale).reshape([rows, 1, side, side]);
        let x = self.activation.forward(self.conv1.forward(x));
        let x = self.activation.forward(self.conv2.forward(x));
        let x = self.pool.forward(x).flatten(1, 3);
        let x = self.activation.forward(self.fc1.forward(x));
        self.fc2.forward(x)
    }
}
