//! A 1-D CNN classifying the bearing fault behind a window of drive-end vibration (the CWRU
//! bearing data's task): a wide first kernel over the raw signal, then small kernels, then global
//! average pooling.
//!
//! Input: raw acceleration samples, shape `[N, window]`. The network standardises each window
//! itself (zero mean, unit variance), so producers send sensor values as they come.

use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::pool::{AdaptiveAvgPool1d, AdaptiveAvgPool1dConfig, MaxPool1d, MaxPool1dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig1d, Relu};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Shape of the vibration CNN; recorded in each version's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VibrationCnnConfig {
    /// Samples per window (the width of the input tensor).
    pub window: usize,
    /// Sampling rate the network was trained at, in Hz (producers must send the same).
    pub sample_rate_hz: u32,
    /// Kernel of the first, wide convolution.
    pub first_kernel: usize,
    /// Stride of the first convolution.
    pub first_stride: usize,
    /// Output channels of the three convolutions.
    pub channels: [usize; 3],
    /// Number of classes.
    pub classes: usize,
}

impl VibrationCnnConfig {
    /// A freshly initialised network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VibrationCnn<B> {
        let [c1, c2, c3] = self.channels;
        let same = |from, to| {
            Conv1dConfig::new(from, to, 3)
                .with_padding(PaddingConfig1d::Same)
                .init(device)
        };
        VibrationCnn {
            conv1: Conv1dConfig::new(1, c1, self.first_kernel)
                .with_stride(self.first_stride)
                .with_padding(PaddingConfig1d::Explicit(
                    self.first_kernel / 2,
                    self.first_kernel / 2,
                ))
                .init(device),
            conv2: same(c1, c2),
            conv3: same(c2, c3),
            pool: MaxPool1dConfig::new(2).init(),
            global: AdaptiveAvgPool1dConfig::new(1).init(),
            head: LinearConfig::new(c3, self.classes).init(device),
            activation: Relu::new(),
        }
    }
}

/// The network: standardise → conv(wide) → pool → conv3 → pool → conv3 → global mean → dense.
#[derive(Module, Debug)]
pub struct VibrationCnn<B: Backend> {
    pub(crate) conv1: Conv1d<B>,
    pub(crate) conv2: Conv1d<B>,
    pub(crate) conv3: Conv1d<B>,
    pub(crate) pool: MaxPool1d,
    pub(crate) global: AdaptiveAvgPool1d,
    pub(crate) head: Linear<B>,
    pub(crate) activation: Relu,
}

impl<B: Backend> VibrationCnn<B> {
    /// Class logits `[N, classes]` for raw windows `[N, window]`.
    pub fn logits(&self, windows: Tensor<B, 2>) -> Tensor<B, 2> {
        let [rows, width] = windows.dims();
        let centred = windows.clone() - windows.mean_dim(1);
        let std = centred.clone().powi_scalar(2).mean_dim(1).sqrt() + 1e-6;
        let x = (centred / std).reshape([rows, 1, width]);
        let x = self
            .pool
            .forward(self.activation.forward(self.conv1.forward(x)));
        let x = self
            .pool
            .forward(self.activation.forward(self.conv2.forward(x)));
        let x = self.activation.forward(self.conv3.forward(x));
        let x = self.global.forward(x).flatten(1, 2);
        self.head.forward(x)
    }
}
