//! A multilayer perceptron predicting machine failure, and its five failure modes, from one
//! process's raw sensor readings and product quality variant (the AI4I 2020 features).
//!
//! Producers send raw values: the network's config holds the training split's mean and standard
//! deviation of each sensor and the variant names, and [`FailureMlpConfig::features`] turns a
//! request into the network's inputs the same way for training and serving.

use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Shape and feature scaling of the failure MLP; recorded in each version's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureMlpConfig {
    /// Sensor columns of the `sensors` input, in order (with units).
    pub sensors: Vec<String>,
    /// Mean of each sensor over the training split.
    pub means: Vec<f32>,
    /// Standard deviation of each sensor over the training split (never 0).
    pub stds: Vec<f32>,
    /// Product quality variants a `product_type` may name, in one-hot order.
    pub variants: Vec<String>,
    /// Widths of the hidden layers; none makes it a logistic regression.
    pub hidden: Vec<usize>,
    /// Targets, in output order: machine failure first, then the failure modes.
    pub targets: Vec<String>,
    /// Machine-failure probability from which `failure` is true (chosen on the training split).
    pub threshold: f32,
}

impl FailureMlpConfig {
    /// Inputs per row after scaling and one-hot encoding.
    pub fn width(&self) -> usize {
        self.sensors.len() + self.variants.len()
    }

    /// Checks that every sensor has a mean and a positive standard deviation.
    pub fn check(&self) -> Result<(), String> {
        let columns = self.sensors.len();
        if self.means.len() != columns
            || self.stds.len() != columns
            || !self.stds.iter().all(|s| s.is_normal() && *s > 0.0)
        {
            return Err(format!(
                "failure-mlp config needs a mean and a positive std per sensor: {self:?}"
            ));
        }
        Ok(())
    }

    /// The network's input rows for raw `sensors` (row-major) and one variant name per row.
    pub fn features(&self, sensors: &[f32], variants: &[String]) -> Result<Vec<f32>, String> {
        let columns = self.sensors.len();
        let mut out = Vec::with_capacity(variants.len() * self.width());
        for (row, variant) in sensors.chunks_exact(columns).zip(variants) {
            let (means, stds) = (&self.means, &self.stds);
            out.extend((0..columns).map(|c| (row[c] - means[c]) / stds[c]));
            let hot = self.variant(variant)?;
            out.extend((0..self.variants.len()).map(|v| if v == hot { 1.0 } else { 0.0 }));
        }
        Ok(out)
    }

    /// Index of a product quality variant, or why it is not one.
    pub fn variant(&self, name: &str) -> Result<usize, String> {
        self.variants.iter().position(|v| v == name).ok_or_else(|| {
            format!(
                "{name:?} is not a product quality variant (one of {:?})",
                self.variants
            )
        })
    }

    /// A freshly initialised network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FailureMlp<B> {
        let widths: Vec<usize> = std::iter::once(self.width())
            .chain(self.hidden.iter().copied())
            .chain(std::iter::once(self.targets.len()))
            .collect();
        FailureMlp {
            layers: widths
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
            activation: Relu::new(),
        }
    }
}

/// The network: dense layers with ReLU between them, one logit per target.
#[derive(Module, Debug)]
pub struct FailureMlp<B: Backend> {
    pub(crate) layers: Vec<Linear<B>>,
    pub(crate) activation: Relu,
}

impl<B: Backend> FailureMlp<B> {
    /// Target logits `[N, targets]` for features `[N, width]` from [`FailureMlpConfig::features`].
    pub fn logits(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        self.layers
            .iter()
            .enumerate()
            .fold(features, |x, (i, layer)| {
                let x = layer.forward(x);
                if i < last {
                    self.activation.forward(x)
                } else {
                    x
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_scaled_sensors_then_a_one_hot_variant() {
        let config = FailureMlpConfig {
            sensors: vec!["a".into(), "b".into()],
            means: vec![10.0, 0.0],
            stds: vec![2.0, 4.0],
            variants: vec!["L".into(), "M".into(), "H".into()],
            hidden: vec![],
            targets: vec!["failure".into()],
            threshold: 0.5,
        };
        let rows = config
            .features(&[12.0, -4.0, 10.0, 8.0], &["H".into(), "L".into()])
            .unwrap();
        assert_eq!(rows, [1.0, -1.0, 0.0, 0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 0.0]);
        let error = config.features(&[0.0, 0.0], &["X".into()]).unwrap_err();
        assert!(error.contains("\"X\""), "{error}");
    }
}
