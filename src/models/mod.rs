//! The architectures Ember serves and trains, each built from its manifest config and weights.

pub mod bert;
pub mod digits;
pub mod failure;
pub mod resnet;
pub mod text;
pub mod vibration;

use crate::protocol::{DataType, InferError, TensorData, TensorSpec, ValidatedInputs};
use burn::module::{ModuleMapper, Param, ParamId};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::FloatDType;
use digits::{DigitsCnn, DigitsCnnConfig};
use failure::{FailureMlp, FailureMlpConfig};
use resnet::{ResNet, ResNetConfig};
use serde::{Deserialize, Serialize};
use text::SentenceBertConfig;
use vibration::{VibrationCnn, VibrationCnnConfig};

/// How weights are serialised in `model.bin` (named MessagePack, f32).
pub type WeightsRecorder = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// The float precision a version computes in (`precision` in its manifest). Weights are
/// stored in FP32 and converted when loaded; outputs are FP32 whatever the precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    Fp32,
    /// IEEE half precision: weights and compute in 16 bits.
    Fp16,
    /// bfloat16: FP32's range with 8 bits of mantissa.
    Bf16,
}

impl Precision {
    /// Burn's float type for it.
    pub fn dtype(self) -> FloatDType {
        match self {
            Self::Fp32 => FloatDType::F32,
            Self::Fp16 => FloatDType::F16,
            Self::Bf16 => FloatDType::BF16,
        }
    }

    /// Whether it is the default, FP32 (which manifests leave unsaid).
    pub fn is_fp32(&self) -> bool {
        *self == Self::Fp32
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
        })
    }
}

/// A version's assets by name: files a network loads besides its weights (e.g. a tokenizer).
pub type Assets = std::collections::BTreeMap<String, bytes::Bytes>;

/// Burn's CPU backend: training, and reading a version's weights before the runtime compiles
/// them into the kernels that serve on the CPU.
pub type CpuBackend = burn::backend::Flex;

/// A network and its config, as named in a manifest's `architecture`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Architecture {
    /// [`digits::DigitsCnn`].
    DigitsCnn(DigitsCnnConfig),
    /// [`failure::FailureMlp`].
    FailureMlp(FailureMlpConfig),
    /// [`vibration::VibrationCnn`].
    VibrationCnn(VibrationCnnConfig),
    /// [`resnet::ResNet`]: colour images (e.g. 32×32 RGB) to classes.
    #[serde(rename = "resnet")]
    ResNet(ResNetConfig),
    /// [`text::SentenceBert`]: texts to unit-length embeddings.
    SentenceBert(SentenceBertConfig),
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
            Self::FailureMlp(c) => (
                vec![
                    spec("sensors", DataType::Fp32, &[-1, c.sensors.len() as i64]),
                    spec("product_type", DataType::Bytes, &[-1]),
                ],
                vec![
                    spec(
                        "probabilities",
                        DataType::Fp32,
                        &[-1, c.targets.len() as i64],
                    ),
                    spec("failure", DataType::Bool, &[-1]),
                ],
            ),
            Self::VibrationCnn(c) => (
                vec![spec("vibration", DataType::Fp32, &[-1, c.window as i64])],
                vec![
                    spec("probabilities", DataType::Fp32, &[-1, c.classes as i64]),
                    spec("label", DataType::Int64, &[-1]),
                ],
            ),
            Self::ResNet(c) => (
                vec![spec("input", DataType::Fp32, &[-1, c.pixels() as i64])],
                vec![
                    spec("probabilities", DataType::Fp32, &[-1, c.classes as i64]),
                    spec("label", DataType::Int64, &[-1]),
                ],
            ),
            Self::SentenceBert(c) => (
                vec![spec("text", DataType::Bytes, &[-1])],
                vec![spec(
                    "embedding",
                    DataType::Fp32,
                    &[-1, c.encoder.hidden_size as i64],
                )],
            ),
            Self::Identity { width } => (
                vec![spec("input", DataType::Fp32, &[-1, *width as i64])],
                vec![spec("output", DataType::Fp32, &[-1, *width as i64])],
            ),
        }
    }

    /// Valid inputs of `rows` rows for warming the network up: zeros, or for the failure MLP
    /// the training means and the first product variant.
    pub fn warmup_inputs(&self, inputs: &[TensorSpec], rows: usize) -> Vec<TensorData> {
        if let Self::FailureMlp(c) = self {
            return vec![
                TensorData::F32(c.means.repeat(rows)),
                TensorData::Bytes(vec![c.variants.first().cloned().unwrap_or_default(); rows]),
            ];
        }
        inputs
            .iter()
            .map(|spec| {
                let width: i64 = spec.shape.iter().skip(1).product();
                TensorData::zeros(spec.datatype, rows * width.max(1) as usize)
            })
            .collect()
    }

    /// Checks what the datatypes and shapes of [`signature`](Self::signature) cannot say about
    /// a request's values (e.g. a category name), so a bad row fails alone, not its batch.
    pub fn check(&self, inputs: &ValidatedInputs) -> Result<(), InferError> {
        match self {
            Self::FailureMlp(config) => {
                if let Some(TensorData::Bytes(variants)) = inputs.tensors.get(1) {
                    for (row, variant) in variants.iter().enumerate() {
                        config.variant(variant).map_err(|e| {
                            InferError::invalid(format!("input 'product_type' row {row}: {e}"))
                        })?;
                    }
                }
                if let Some(TensorData::F32(sensors)) = inputs.tensors.first()
                    && let Some(at) = sensors.iter().position(|v| !v.is_finite())
                {
                    return Err(InferError::invalid(format!(
                        "input 'sensors' row {}: {} is not a finite number",
                        at / config.sensors.len().max(1),
                        sensors[at]
                    )));
                }
                Ok(())
            }
            Self::DigitsCnn(_)
            | Self::VibrationCnn(_)
            | Self::ResNet(_)
            | Self::SentenceBert(_)
            | Self::Identity { .. } => Ok(()),
        }
    }

    /// Builds the network on `device` from `weights` (a [`WeightsRecorder`] record) and the
    /// version's `assets`, to compute in `precision`; a text model's passes hold at most
    /// `max_batch_tokens` tokens.
    pub fn load<B: Backend>(
        &self,
        weights: &[u8],
        assets: &Assets,
        max_batch_tokens: usize,
        precision: Precision,
        device: &B::Device,
    ) -> Result<Box<dyn Model>, ModelError> {
        self.build::<B>(weights, assets, max_batch_tokens, precision, device)
            .map_err(ModelError::Load)
    }

    fn build<B: Backend>(
        &self,
        weights: &[u8],
        assets: &Assets,
        max_batch_tokens: usize,
        precision: Precision,
        device: &B::Device,
    ) -> Result<Box<dyn Model>, String> {
        let device = device.clone();
        let dtype = precision.dtype();
        match self {
            Self::SentenceBert(config) => {
                let tokenizer = config.tokenizer_json(assets)?;
                let model =
                    config.load::<B>(weights, tokenizer, max_batch_tokens, precision, &device)?;
                Ok(Box::new(model))
            }
            Self::DigitsCnn(config) => {
                let module = with_weights(config.init::<B>(&device), weights, precision, &device)?;
                Ok(Box::new(OnDevice {
                    module,
                    device,
                    dtype,
                }))
            }
            Self::FailureMlp(config) => {
                config.check()?;
                let module = with_weights(config.init::<B>(&device), weights, precision, &device)?;
                Ok(Box::new(OnDevice {
                    module: (module, config.clone()),
                    device,
                    dtype,
                }))
            }
            Self::VibrationCnn(config) => {
                let module = with_weights(config.init::<B>(&device), weights, precision, &device)?;
                Ok(Box::new(OnDevice {
                    module,
                    device,
                    dtype,
                }))
            }
            Self::ResNet(config) => {
                config.validate()?;
                let module = with_weights(config.init::<B>(&device), weights, precision, &device)?;
                Ok(Box::new(OnDevice {
                    module,
                    device,
                    dtype,
                }))
            }
            Self::Identity { .. } => Ok(Box::new(Identity)),
        }
    }
}

/// A backend's failure to hand back a result, as a [`ModelError`].
fn compute_failed(error: impl std::fmt::Debug) -> ModelError {
    ModelError::Compute(format!("{error:?}"))
}

/// `module` with `weights` (a [`WeightsRecorder`] record), in `precision`.
pub fn with_weights<B: Backend, M: Module<B>>(
    module: M,
    weights: &[u8],
    precision: Precision,
    device: &B::Device,
) -> Result<M, String> {
    Ok(in_precision(
        module.load_record(record(weights, device)?),
        precision,
    ))
}

/// Reads a [`WeightsRecorder`] record of a module.
fn record<B: Backend, R: burn::record::Record<B>>(
    weights: &[u8],
    device: &B::Device,
) -> Result<R, String> {
    WeightsRecorder::default()
        .load(weights.to_vec(), device)
        .map_err(|e| format!("weights do not fit the architecture: {e}"))
}

/// `module`'s weights as a [`WeightsRecorder`] record, the same bytes for the same weights:
/// parameters are numbered 1, 2, ... in visiting order first (Burn gives each new parameter a
/// random id, which the record would otherwise carry).
pub fn record_weights<B: Backend, M: Module<B>>(module: M) -> Result<Vec<u8>, String> {
    let module = module.map(&mut SequentialIds(0));
    WeightsRecorder::default()
        .record(module.into_record(), ())
        .map_err(|e| format!("cannot record the weights: {e}"))
}

struct SequentialIds(u64);

/// `module` with its float parameters converted to `precision` (unchanged for FP32).
pub fn in_precision<B: Backend, M: Module<B>>(module: M, precision: Precision) -> M {
    if precision.is_fp32() {
        return module;
    }
    module.map(&mut CastFloats(precision.dtype()))
}

struct CastFloats(FloatDType);

impl<B: Backend> ModuleMapper<B> for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

impl<B: Backend> ModuleMapper<B> for SequentialIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        self.0 += 1;
        Param::from_mapped_value(ParamId::from(self.0), tensor, mapper)
    }
}

/// A loaded network, run on whole batches by one executor thread.
pub trait Model {
    /// Runs `rows` rows; `inputs` are the manifest's inputs in order, concatenated across the
    /// batch. Returns the manifest's outputs in order, each with `rows` rows.
    fn infer(&self, rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, ModelError>;
}

/// Why a model could not be built, or could not compute a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The version's config, weights or assets do not make the network.
    #[error("cannot load the model: {0}")]
    Load(String),
    /// Inputs the network cannot take.
    #[error("inputs the network cannot take: {0}")]
    Input(String),
    /// The backend failed on a batch.
    #[error("compute failed: {0}")]
    Compute(String),
}

/// [`Architecture::Identity`].
struct Identity;

impl Model for Identity {
    fn infer(&self, _rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, ModelError> {
        Ok(inputs)
    }
}

/// Sigmoid of `logits` `[rows, targets]`, and whether column 0 reaches `threshold`.
pub fn failure_outputs<B: Backend>(
    logits: Tensor<B, 2>,
    threshold: f32,
) -> Result<(Vec<f32>, Vec<bool>), ModelError> {
    let [rows, targets] = logits.dims();
    let probabilities = burn::tensor::activation::sigmoid(logits.cast(FloatDType::F32))
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(compute_failed)?;
    let failure = (0..rows)
        .map(|r| probabilities[r * targets] >= threshold)
        .collect();
    Ok((probabilities, failure))
}

/// A module with the device its inputs go to and the float type it computes in.
struct OnDevice<M, B: Backend> {
    module: M,
    device: B::Device,
    dtype: FloatDType,
}

impl<B: Backend> Model for OnDevice<DigitsCnn<B>, B> {
    fn infer(&self, rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, ModelError> {
        let x = self.single_input(rows, inputs)?;
        classify(self.module.logits(x))
    }
}

impl<B: Backend> Model for OnDevice<VibrationCnn<B>, B> {
    fn infer(&self, rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, ModelError> {
        let x = self.single_input(rows, inputs)?;
        classify(self.module.logits(x))
    }
}

impl<B: Backend> Model for OnDevice<ResNet<B>, B> {
    fn infer(&self, rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, ModelError> {
        let x = self.single_input(rows, inputs)?;
        classify(self.module.logits(x))
    }
}

impl<M, B: Backend> OnDevice<M, B> {
    /// The one FP32 input of a single-input network, as a `[rows, width]` tensor in the
    /// network's precision.
    fn single_input(
        &self,
        rows: usize,
        inputs: Vec<TensorData>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let Some(TensorData::F32(values)) = inputs.into_iter().next() else {
            return Err(ModelError::Input("the network takes one FP32 input".into()));
        };
        let width = values.len() / rows.max(1);
        Ok(self.tensor(values, [rows, width]))
    }

    /// FP32 `values` as a tensor of `shape` in the network's precision.
    fn tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::<B, D>::from_data(burn::tensor::TensorData::new(values, shape), &self.device)
            .cast(self.dtype)
    }
}

/// Class probabilities (softmax, in FP32) and the most likely class of each row of `logits`.
fn classify<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<TensorData>, ModelError> {
    let [rows, _] = logits.dims();
    let probabilities = burn::tensor::activation::softmax(logits.cast(FloatDType::F32), 1);
    let labels = probabilities.clone().argmax(1).reshape([rows]);
    let probabilities = probabilities.into_data().convert::<f32>().into_vec::<f32>();
    let labels = labels.into_data().convert::<i64>().into_vec::<i64>();
    Ok(vec![
        TensorData::F32(probabilities.map_err(compute_failed)?),
        TensorData::I64(labels.map_err(compute_failed)?),
    ])
}

impl<B: Backend> Model for OnDevice<(FailureMlp<B>, FailureMlpConfig), B> {
    fn infer(&self, rows: usize, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, ModelError> {
        let [TensorData::F32(sensors), TensorData::Bytes(variants)] = &inputs[..] else {
            return Err(ModelError::Input(
                "failure-mlp takes FP32 sensors and BYTES product_type".into(),
            ));
        };
        let (module, config) = &self.module;
        let features = config
            .features(sensors, variants)
            .map_err(ModelError::Input)?;
        let x = self.tensor(features, [rows, config.width()]);
        let (probabilities, failure) = failure_outputs(module.logits(x), config.threshold)?;
        Ok(vec![
            TensorData::F32(probabilities),
            TensorData::Bool(failure),
        ])
    }
}
