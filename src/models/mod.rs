//! The architectures Ember serves and trains, each built from its manifest config and weights.

pub mod digits;

use crate::protocol::{DataType, TensorData, TensorSpec};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use digits::{DigitsCnn, DigitsCnnConfig};
use serde::{Deserialize, Serialize};

/// How weights are serialised in `model.bin` (named MessagePack, f32).
pub type WeightsRecorder = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// A network and its config, as named in a manifest's `architecture`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Architecture {
    /// [`digits::DigitsCnn`].
    DigitsCnn(DigitsCnnConfig),
    /// Answers each FP32 row of `width` values with itself, without weights: measures the
    /// serving path alone (`benches/amqp.rs`) and smoke-tests deployments.
    Identity {
        /// Values per row.
        width: usize,
    },
}

impl Architecture {
    /// The inputs and outputs the network takes and gives, for its manifest.
    pub fn signature(&self) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let spec = |name: &str, datatype, shape: &[i64]| TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        };
        match self {
            Self::DigitsCnn(c) => (
                vec![spec("input", DataType::Fp32, &[-1, c.pixels() as i64])],
                vec![
                    spec("probabilities", DataType::Fp32, &[-1, c.classes as i64]),
                    spec("label", DataType::Int64, &[-1]),
                ],
            ),
            Self::Identity { width } => (
                vec![spec("input", DataType::Fp32, &[-1, *width as i64])],
                vec![spec("output", DataType::Fp32, &[-1, *width as i64])],
            ),
        }
    }

    /// Builds the network on `device` from `weights` (a [`WeightsRecorder`] record).
    pub fn load<B: Backend>(
        &self,
        weights: &[u8],
        device: &B::Device,
    ) -> Result<Box<dyn Model>, String> {
        match self {
            Self::DigitsCnn(config) => {
                let record = WeightsRecorder::default()
                    .load(weights.to_vec(), device)
                    .map_err(|e| format!("weights do not fit {self:?}: {e}"))?;
                let module = config.init::<B>(device).load_record(record);
                Ok(Box::new(OnDevice {
                    module,
                    device: device.clone(),
                }))
            }
            Self::Identity { .. } => Ok(Box::new(Identity)),
        }
    }
}

/// A loaded network, run on whole batches by one executor thread.
pub trait Model {
    /// Runs `rows` rows; `inputs` are the manifest's inputs in order, concatenated across the
    /// batch. Returns the manifest's outputs in order, each with `rows` rows.
    fn infer(&self, rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, String>;
}

/// [`Architecture::Identity`].
struct Identity;

impl Model for Identity {
    fn infer(&self, _rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, String> {
        Ok(inputs)
    }
}

/// A module with the device its inputs go to.
struct OnDevice<M, B: Backend> {
    module: M,
    device: B::Device,
}

impl<B: Backend> Model for OnDevice<DigitsCnn<B>, B> {
    fn infer(&self, rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, String> {
        let Some(TensorData::F32(pixels)) = inputs.into_iter().next() else {
            return Err("digits-cnn takes one FP32 input".into());
        };
        let width = pixels.len() / rows.max(1);
        let x = Tensor::<B, 2>::from_data(
            burn::tensor::TensorData::new(pixels, [rows, width]),
            &self.device,
        );
        let probabilities = burn::tensor::activation::softmax(self.module.logits(x), 1);
        let labels = probabilities.clone().argmax(1).reshape([rows]);
        let probabilities = probabilities.into_data().convert::<f32>().into_vec::<f32>();
        let labels = labels.into_data().convert::<i64>().into_vec::<i64>();
        Ok(vec![
            TensorData::F32(probabilities.map_err(|e| format!("{e:?}"))?),
            TensorData::I64(labels.map_err(|e| format!("{e:?}"))?),
        ])
    }
}
