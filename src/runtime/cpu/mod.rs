//! Ember's own CPU path for the convolutional and dense networks: each Burn module is compiled
//! once, at load, into a [`Network`] of fused kernels over channels-last activations and one
//! AVX-512 (or AVX2) gemm per tile. Burn's CPU backend runs each operator on its own, per
//! image, converting layouts in and out of every convolution; this path is what makes the
//! CPU as fast as PyTorch (`docs/performance.md`).
//!
//! Training, MiniLM, reduced precisions and the GPU keep running on Burn.

mod bert;
pub mod compile;
mod kernels;
mod network;

pub use bert::{Bert, BertParts, LayerParts};
pub use compile::compile;
pub use network::{Builder, Network};

use crate::models::failure::FailureMlpConfig;
use crate::models::{Model, ModelError};
use crate::protocol::TensorData;

/// The widest vector instructions the kernels' gemm uses on this CPU.
pub fn simd() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return "AVX2";
        }
    }
    "portable SIMD"
}

/// A compiled network and what turns its outputs into the manifest's.
pub struct CpuModel {
    network: Network,
    head: Head,
}

enum Head {
    /// Softmax probabilities and the most likely class.
    Classify,
    /// The failure MLP: features from sensors and variant in, sigmoid and threshold out.
    Failure(Box<FailureMlpConfig>),
}

impl CpuModel {
    /// A classifier: one FP32 input, outputs `probabilities` and `label`.
    pub fn classifier(network: Network) -> Self {
        Self {
            network,
            head: Head::Classify,
        }
    }

    /// The failure MLP of `config`.
    pub fn failure(network: Network, config: FailureMlpConfig) -> Self {
        Self {
            network,
            head: Head::Failure(Box::new(config)),
        }
    }

    /// Whether `values` hold `rows` rows of the network's input.
    fn check(&self, rows: usize, values: &[f32]) -> Result<(), ModelError> {
        if values.len() != rows * self.network.inputs() {
            return Err(ModelError::Input(format!(
                "{} input values for {rows} rows of {}",
                values.len(),
                self.network.inputs()
            )));
        }
        Ok(())
    }
}

impl Model for CpuModel {
    fn infer(&self, rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, ModelError> {
        let classes = self.network.outputs();
        match &self.head {
            Head::Classify => {
                let Some(TensorData::F32(values)) = inputs.into_iter().next() else {
                    return Err(ModelError::Input("the network takes one FP32 input".into()));
                };
                self.check(rows, &values)?;
                let mut probabilities = self.network.forward(rows, values);
                kernels::softmax_rows(&mut probabilities, classes);
                let labels = kernels::argmax_rows(&probabilities, classes);
                Ok(vec![
                    TensorData::F32(probabilities),
                    TensorData::I64(labels),
                ])
            }
            Head::Failure(config) => {
                let [TensorData::F32(sensors), TensorData::Bytes(variants)] = &inputs[..] else {
                    return Err(ModelError::Input(
                        "failure-mlp takes FP32 sensors and BYTES product_type".into(),
                    ));
                };
                let features = config
                    .features(sensors, variants)
                    .map_err(ModelError::Input)?;
                self.check(rows, &features)?;
                let mut probabilities = self.network.forward(rows, features);
                probabilities
                    .iter_mut()
                    .for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
                let failure = probabilities
                    .chunks_exact(classes)
                    .map(|row| row[0] >= config.threshold)
                    .collect();
                Ok(vec![
                    TensorData::F32(probabilities),
                    TensorData::Bool(failure),
                ])
            }
        }
    }
}
