//! A multilayer perceptron predicting machine failure, and its five failure modes, from one
//! process's raw sensor readings and product quality variant (the AI4I 2020 features).
//!
//! Producers send raw values: the network's config holds the derived features it computes from
//! them (e.g. mechanical power = torque × speed), the training split's mean and standard
//! deviation of each feature and the variant names, and [`FailureMlpConfig::features`] turns a
//! request into the network's inputs the same way for training and serving.

use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Shape and feature scaling of the failure MLP; recorded in each version's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureMlpConfig {
    /// Sensor columns of the `sensors` input, in order (with units).
    pub sensors: Vec<String>,
    /// Features computed from two sensors each, after the sensors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub derived: Vec<Derived>,
    /// Mean of each sensor, then of each derived feature, over the training split.
    pub means: Vec<f32>,
    /// Standard deviation of each sensor, then of each derived feature, over the training
    /// split (never 0).
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

/// A feature computed from two sensor columns (indices into `sensors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    /// What it is, with its unit (e.g. `Power [W]`).
    pub name: String,
    /// How the two columns combine.
    pub op: Combine,
    /// The two sensor columns, in order.
    pub of: [usize; 2],
    /// Factor applied to the result (e.g. 2π/60 to turn rpm × Nm into W).
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

/// How a [`Derived`] feature combines its two sensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// `a × b`.
    Product,
    /// `a − b`.
    Difference,
}

impl Derived {
    /// Its value for one row of raw sensors.
    pub fn of_row(&self, row: &[f32]) -> f32 {
        let [a, b] = self.of.map(|c| row[c]);
        self.scale
            * match self.op {
                Combine::Product => a * b,
                Combine::Difference => a - b,
            }
    }
}

impl FailureMlpConfig {
    /// Scaled features (sensors, then derived) per row.
    pub fn scaled(&self) -> usize {
        self.sensors.len() + self.derived.len()
    }

    /// Inputs per row after scaling and one-hot encoding.
    pub fn width(&self) -> usize {
        self.scaled() + self.variants.len()
    }

    /// Checks that every feature has a mean and a positive standard deviation, and that derived
    /// features name sensor columns.
    pub fn check(&self) -> Result<(), String> {
        let columns = self.scaled();
        if self.means.len() != columns
            || self.stds.len() != columns
            || !self.stds.iter().all(|s| s.is_normal() && *s > 0.0)
            || self
                .derived
                .iter()
                .any(|d| d.of.iter().any(|&c| c >= self.sensors.len()))
        {
            return Err(format!(
                "failure-mlp config needs a mean and a positive std per sensor and derived \
                 feature, and derived features of sensor columns: {self:?}"
            ));
        }
        Ok(())
    }

    /// Unscaled sensors and derived features, `[rows × scaled()]`, for raw `sensors`
    /// (row-major).
    pub fn raw_features(&self, sensors: &[f32]) -> Vec<f32> {
        let columns = self.sensors.len();
        let mut out = Vec::with_capacity(sensors.len() / columns.max(1) * self.scaled());
        for row in sensors.chunks_exact(columns) {
            out.extend_from_slice(row);
            out.extend(self.derived.iter().map(|d| d.of_row(row)));
        }
        out
    }

    /// The network's input rows for raw `sensors` (row-major) and one variant name per row.
    pub fn features(&self, sensors: &[f32], variants: &[String]) -> Result<Vec<f32>, String> {
        let columns = self.scaled();
        let raw = self.raw_features(sensors);
        let mut out = Vec::with_capacity(variants.len() * self.width());
        for (row, variant) in raw.chunks_exact(columns).zip(variants) {
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
            derived: vec![],
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

    #[test]
    fn derived_features_follow_the_sensors_and_are_scaled_too() {
        let config = FailureMlpConfig {
            sensors: vec![
                "speed".into(),
                "torque".into(),
                "air".into(),
                "process".into(),
            ],
            derived: vec![
                Derived {
                    name: "power".into(),
                    op: Combine::Product,
                    of: [0, 1],
                    scale: 0.5,
                },
                Derived {
                    name: "heat".into(),
                    op: Combine::Difference,
                    of: [3, 2],
                    scale: 1.0,
                },
            ],
            means: vec![0.0, 0.0, 0.0, 0.0, 10.0, 0.0],
            stds: vec![1.0, 1.0, 1.0, 1.0, 5.0, 2.0],
            variants: vec!["L".into()],
            hidden: vec![],
            targets: vec!["failure".into()],
            threshold: 0.5,
        };
        config.check().unwrap();
        assert_eq!(config.width(), 7);
        let rows = config
            .features(&[4.0, 10.0, 300.0, 310.0], &["L".into()])
            .unwrap();
        assert_eq!(rows, [4.0, 10.0, 300.0, 310.0, 2.0, 5.0, 1.0]);
        // A derived feature naming a column that is not there is refused.
        let mut bad = config.clone();
        bad.derived[1].of = [3, 4];
        assert!(bad.check().unwrap_err().contains("derived"));
        // Versions written before derived features existed read as having none.
        let mut json = serde_json::to_value(&config).unwrap();
        json.as_object_mut().unwrap().remove("derived");
        let old: FailureMlpConfig = serde_json::from_value(json).unwrap();
        assert!(old.derived.is_empty());
    }
}
