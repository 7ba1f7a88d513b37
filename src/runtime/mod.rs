//! Running models: the device and its backend, and one executor thread per loaded model
//! version so that compute never blocks the async runtime.

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use crate::models::Assets;
use crate::models::{Architecture, Model, ModelError, Precision};
use crate::protocol::{InferError, TensorData, ValidatedInputs};
use crate::store::Artifact;
use crate::telemetry::metrics::VersionMetrics;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

pub use crate::models::CpuBackend;

/// What a build without the `cuda` feature says when asked for a GPU.
pub const NO_CUDA: &str =
    "this ember was built without CUDA: use --device cpu, or the CUDA image (--features cuda)";

/// Where models run and train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend ([`CpuBackend`]).
    Cpu,
    /// NVIDIA GPU number `n` (builds with the `cuda` feature only).
    Cuda(usize),
}

impl Default for Device {
    /// The first GPU in a `cuda` build, else the CPU.
    fn default() -> Self {
        if cfg!(feature = "cuda") {
            Self::Cuda(0)
        } else {
            Self::Cpu
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => value
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("{value:?} is not a device (cpu, cuda, cuda:N)")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Device {
    /// Checks that the device can run models (for a GPU: the driver and NVRTC load, the GPU
    /// exists) and describes it, e.g. `cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)`. The error
    /// says what is missing, so a GPU pod on a node without one fails at start, not per request.
    pub fn probe(self) -> Result<String, String> {
        match self {
            Self::Cpu => Ok(format!(
                "cpu (Ember's kernels, {}, {} threads)",
                cpu::simd(),
                rayon::current_num_threads()
            )),
            #[cfg(feature = "cuda")]
            Self::Cuda(index) => cuda::probe(index).map(|gpu| format!("{self} ({gpu})")),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => Err(NO_CUDA.into()),
        }
    }

    /// Batch sizes a model is run on before it serves. A GPU compiles and autotunes kernels per
    /// shape class (powers of two), so it warms up on each up to `max_batch_size`, not during
    /// requests; the CPU needs only the smallest and largest.
    pub fn warmup_rows(self, max_batch_size: usize) -> Vec<usize> {
        let max = max_batch_size.max(1);
        let mut rows: Vec<usize> = match self {
            Self::Cpu => vec![1],
            Self::Cuda(_) => std::iter::successors(Some(1), |n| Some(n * 2))
                .take_while(|&n| n < max)
                .collect(),
        };
        rows.push(max);
        rows.dedup();
        rows
    }

    /// Builds `architecture` on this device (see [`Architecture::load`]).
    pub fn load(
        self,
        architecture: &Architecture,
        weights: &[u8],
        assets: &Assets,
        max_batch_tokens: usize,
        precision: Precision,
    ) -> Result<Box<dyn Model>, ModelError> {
        match self {
            Self::Cpu => {
                match cpu::compile(architecture, weights, assets, max_batch_tokens, precision)? {
                    Some(compiled) => Ok(compiled),
                    None => architecture.load::<CpuBackend>(
                        weights,
                        assets,
                        max_batch_tokens,
                        precision,
                        &Default::default(),
                    ),
                }
            }
            #[cfg(feature = "cuda")]
            Self::Cuda(index) => architecture.load::<burn::backend::Cuda>(
                weights,
                assets,
                max_batch_tokens,
                precision,
                &burn::backend::cuda::CudaDevice::new(index),
            ),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => Err(ModelError::Load(NO_CUDA.into())),
        }
    }
}

/// Keeps compiled GPU kernels and autotune results under `dir`, so that a restarted worker
/// neither recompiles nor re-benchmarks them (cold start). Call once, before any GPU work;
/// a `cubecl.toml` in the working directory wins. Does nothing in a build without CUDA.
pub fn cache_kernels_in(dir: &std::path::Path) {
    #[cfg(feature = "cuda")]
    cuda::cache_kernels_in(dir);
    #[cfg(not(feature = "cuda"))]
    let _ = dir;
}

/// Where a request's outputs (one tensor per manifest output) or its error go.
pub type Responder = oneshot::Sender<Result<Vec<TensorData>, InferError>>;

/// One request's share of a batch.
#[derive(Debug)]
pub struct Work {
    /// Its validated inputs.
    pub inputs: ValidatedInputs,
    /// Where its answer goes.
    pub respond: Responder,
}

/// Why a model could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The model could not be built or warmed up.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Its executor thread could not be started, or died loading.
    #[error("executor: {0}")]
    Executor(String),
}

/// A model version running on its own thread; batches go in, each request's outputs come out
/// on its [`Responder`], and a unit on `done` after each batch so the batcher can send the next.
pub struct Executor {
    batches: std_mpsc::Sender<Vec<Work>>,
}

impl Executor {
    /// Loads `artifact` on `device` in a new thread for batches of up to `max_rows` rows (and,
    /// for a text model, passes of up to `max_batch_tokens` tokens), warms it up on
    /// [`Device::warmup_rows`] (on a GPU this compiles and autotunes the kernels), and returns
    /// once it is ready, with the receiver of its batch-done signals.
    pub async fn start(
        artifact: &Artifact,
        max_rows: usize,
        max_batch_tokens: usize,
        device: Device,
    ) -> Result<(Self, mpsc::UnboundedReceiver<()>), LoadError> {
        let manifest = &artifact.manifest;
        let (batches, batch_rx) = std_mpsc::channel::<Vec<Work>>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (architecture, weights) = (manifest.architecture.clone(), artifact.weights.clone());
        let assets = artifact.assets.clone();
        let (inputs, precision) = (manifest.inputs.clone(), manifest.precision);
        let thread_name = format!("exec-{}-{}", manifest.name, manifest.version);
        let metrics = VersionMetrics::new(manifest.name.as_str(), manifest.version.as_str());
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let loaded = catch_unwind(AssertUnwindSafe(|| {
                    let model = device.load(
                        &architecture,
                        &weights,
                        &assets,
                        max_batch_tokens,
                        precision,
                    )?;
                    for rows in device.warmup_rows(max_rows) {
                        model.infer(rows, architecture.warmup_inputs(&inputs, rows))?;
                    }
                    Ok::<_, ModelError>(model)
                }))
                .unwrap_or_else(|panic| Err(ModelError::Load(panic_message(&panic))));
                let model = match loaded {
                    Ok(model) => {
                        let _ = ready_tx.send(Ok(()));
                        model
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(LoadError::Model(e)));
                        return;
                    }
                };
                drop((weights, assets));
                while let Ok(batch) = batch_rx.recv() {
                    run_batch(model.as_ref(), batch, &metrics);
                    if done_tx.send(()).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| LoadError::Executor(format!("cannot start its thread: {e}")))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok((Self { batches }, done_rx)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LoadError::Executor(
                "its thread exited while loading".into(),
            )),
        }
    }

    /// Hands a batch to the executor thread; false if the thread is gone (the batch's
    /// responders are then dropped, which their receivers see as an internal error).
    pub fn run(&self, batch: Vec<Work>) -> bool {
        self.batches.send(batch).is_ok()
    }
}

/// Concatenates the batch's inputs, runs the model once, and splits the outputs back.
fn run_batch(model: &dyn Model, batch: Vec<Work>, metrics: &VersionMetrics) {
    let started = Instant::now();
    let rows: usize = batch.iter().map(|w| w.inputs.rows).sum();
    let (inputs, parts): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|w| {
            let part = (w.inputs.rows, w.respond);
            (w.inputs, part)
        })
        .unzip();
    let result = catch_unwind(AssertUnwindSafe(|| {
        model.infer(rows, concat_inputs(inputs, rows))
    }))
    .unwrap_or_else(|panic| Err(ModelError::Compute(panic_message(&panic))));
    metrics.batch_size.record(rows as f64);
    metrics.compute.record(started.elapsed().as_secs_f64());
    let outputs = match result {
        Ok(outputs) if outputs.iter().all(|o| o.len() % rows == 0) => outputs,
        Ok(_) => return fail_all(parts, "model returned outputs that do not split into rows"),
        Err(e) => return fail_all(parts, &format!("model failed: {e}")),
    };
    let mut offset = 0;
    for (n, respond) in parts {
        let mine = outputs
            .iter()
            .map(|output| {
                let width = output.len() / rows;
                let mut part = TensorData::with_capacity_like(output, n * width);
                part.extend_from(output, offset * width..(offset + n) * width);
                part
            })
            .collect();
        offset += n;
        let _ = respond.send(Ok(mine));
    }
}

/// Joins the requests' inputs row-wise (moves, without copying, when there is one request).
fn concat_inputs(mut requests: Vec<ValidatedInputs>, rows: usize) -> Vec<TensorData> {
    if requests.len() == 1 {
        return requests.pop().map(|r| r.tensors).unwrap_or_default();
    }
    let inputs = requests[0].tensors.len();
    (0..inputs)
        .map(|i| {
            let first = &requests[0];
            let width = first.tensors[i].len() / first.rows;
            let mut all = TensorData::with_capacity_like(&first.tensors[i], rows * width);
            for request in &requests {
                let t = &request.tensors[i];
                all.extend_from(t, 0..t.len());
            }
            all
        })
        .collect()
}

fn fail_all(parts: Vec<(usize, Responder)>, message: &str) {
    tracing::error!(requests = parts.len(), "{message}");
    for (_, respond) in parts {
        let _ = respond.send(Err(InferError::internal(message)));
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_warms_up_on_every_power_of_two_the_cpu_on_the_ends() {
        assert_eq!(Device::Cpu.warmup_rows(64), [1, 64]);
        assert_eq!(Device::Cpu.warmup_rows(1), [1]);
        assert_eq!(Device::Cuda(0).warmup_rows(64), [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(
            Device::Cuda(0).warmup_rows(100),
            [1, 2, 4, 8, 16, 32, 64, 100]
        );
        assert_eq!(Device::Cuda(1).warmup_rows(0), [1]);
    }
}
