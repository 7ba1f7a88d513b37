//! A Burn network turned into a list of CPU [kernels](super::kernels): weights transposed once
//! to the layouts the kernels read, BatchNorm and input scaling folded into the convolution
//! before them, and the first dense layer's rows reordered for channels-last activations.

use super::kernels::{self, Activation, Activations, Conv, Dense};
use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::pool::{MaxPool1d, MaxPool2d};
use burn::nn::{BatchNorm, Linear, PaddingConfig1d, PaddingConfig2d};
use burn::prelude::*;
use rayon::prelude::*;
use std::sync::{Mutex, PoisonError};

/// One step of a [`Network`].
#[derive(Debug, Clone)]
enum Layer {
    /// Each row to zero mean, unit deviation.
    Standardize,
    Conv(Conv),
    /// `relu(second(first(x)) + shortcut(x))`: a ResNet basic block (identity shortcut if none).
    Residual {
        first: Box<Conv>,
        second: Box<Conv>,
        shortcut: Option<Box<Conv>>,
    },
    MaxPool {
        kernel: [usize; 2],
        stride: [usize; 2],
    },
    GlobalAvgPool,
    Dense(Dense),
}

/// A compiled network: rows of a fixed `[height, width, channels]` in, a row of outputs out.
#[derive(Debug)]
pub struct Network {
    input: [usize; 3],
    layers: Vec<Layer>,
    outputs: usize,
    /// Rows run through all layers at a time (see [`Network::forward`]).
    rows_per_pass: usize,
    /// Activation buffers kept from batch to batch, a set per pass running: freeing the large
    /// ones would hand them back to the kernel, and the page faults and TLB shootdowns of
    /// mapping them again cost more than a ResNet's whole batch-256 compute.
    spares: Mutex<Vec<Buffers>>,
}

impl Network {
    /// Values per output row (e.g. logits per class).
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Values per input row.
    pub fn inputs(&self) -> usize {
        self.input.iter().product()
    }

    /// The outputs of `rows` rows of `values`, each row channel-major (`[channels, height,
    /// width]`, PyTorch's and Burn's order), `rows × outputs` values.
    ///
    /// A network with small weights runs a large batch as passes of a few rows each, side by
    /// side on the threads, every pass through all layers on one thread: its activations stay
    /// in that core's cache, and no layer waits for the others. (The vibration CNN: 26k rows/s
    /// on one thread at batch 64 batch-wide, 35k at batch 1.) Networks with large weights
    /// (ResNet) run the batch whole, so that each weight is read once per layer.
    pub fn forward(&self, rows: usize, values: Vec<f32>) -> Vec<f32> {
        let width = self.inputs();
        assert_eq!(values.len(), rows * width, "input size");
        if rows <= self.rows_per_pass {
            return self.pass(rows, values);
        }
        let threads = rayon::current_num_threads();
        let passes = rows.div_ceil(self.rows_per_pass).div_ceil(threads) * threads;
        let per_pass = rows.div_ceil(passes);
        let outputs: Vec<Vec<f32>> = values
            .par_chunks(per_pass * width)
            .map(|chunk| self.pass(chunk.len() / width, chunk.to_vec()))
            .collect();
        outputs.concat()
    }

    /// `rows` rows through every layer.
    fn pass(&self, rows: usize, values: Vec<f32>) -> Vec<f32> {
        let spares = || self.spares.lock().unwrap_or_else(PoisonError::into_inner);
        let mut buffers = spares().pop().unwrap_or_default();
        let mut x = Activations {
            data: channels_last(values, rows, self.input),
            rows,
            shape: self.input,
        };
        for layer in &self.layers {
            let next = match layer {
                Layer::Standardize => {
                    kernels::standardize(&mut x);
                    continue;
                }
                Layer::Conv(conv) => conv.forward(&x, buffers.take(), false),
                Layer::Residual {
                    first,
                    second,
                    shortcut,
                } => {
                    let y = first.forward(&x, buffers.take(), false);
                    let skip = match shortcut {
                        Some(shortcut) => shortcut.forward(&x, buffers.take(), false).data,
                        None => std::mem::take(&mut x.data),
                    };
                    let out = second.forward(&y, skip, true);
                    buffers.give(y.data);
                    out
                }
                Layer::MaxPool { kernel, stride } => {
                    kernels::max_pool(&x, *kernel, *stride, buffers.take())
                }
                Layer::GlobalAvgPool => kernels::global_avg_pool(&x, buffers.take()),
                Layer::Dense(dense) => dense.forward(&x, buffers.take()),
            };
            buffers.give(std::mem::replace(&mut x, next).data);
        }
        // The outputs leave with the caller: a copy, so the pool keeps its buffer.
        let outputs = x.data.to_vec();
        buffers.give(x.data);
        spares().push(buffers);
        outputs
    }
}

/// Spare activation buffers of one network.
#[derive(Debug, Default)]
struct Buffers(Vec<Vec<f32>>);

impl Buffers {
    /// The spare buffer with the most room (emptied), or a new one.
    fn take(&mut self) -> Vec<f32> {
        let mut buffer = self.0.pop().unwrap_or_default();
        buffer.clear();
        buffer
    }

    /// Keeps `buffer` for a later layer or batch; the pool stays sorted by capacity and keeps
    /// the largest few (the most a residual block holds at once).
    fn give(&mut self, buffer: Vec<f32>) {
        if buffer.capacity() == 0 {
            return;
        }
        let at = self.0.partition_point(|b| b.capacity() < buffer.capacity());
        self.0.insert(at, buffer);
        if self.0.len() > MAX_SPARES {
            self.0.remove(0);
        }
    }
}

/// `[rows, channels, height, width]` values reordered to `[rows, height, width, channels]`.
fn channels_last(values: Vec<f32>, rows: usize, [h, w, c]: [usize; 3]) -> Vec<f32> {
    if c == 1 || h * w == 1 {
        return values;
    }
    let mut out = vec![0.0; values.len()];
    for (dst, src) in out
        .chunks_exact_mut(h * w * c)
        .zip(values.chunks_exact(h * w * c))
    {
        for (channel, plane) in src.chunks_exact(h * w).enumerate() {
            for (position, &v) in plane.iter().enumerate() {
                dst[position * c + channel] = v;
            }
        }
    }
    debug_assert_eq!(out.len(), rows * h * w * c);
    out
}

/// Builds a [`Network`] layer by layer from Burn modules, following the activations' shape.
pub struct Builder {
    input: [usize; 3],
    shape: [usize; 3],
    layers: Vec<Layer>,
    /// Multiplies the next convolution's input (folded into its weights).
    scale: f32,
    /// Weights of all layers so far.
    weights: usize,
    /// The most values one row needs at once in a layer (its output, or its im2col matrix).
    widest: usize,
}

/// Buffers a pass keeps: a residual block holds its input, two outputs and the shortcut's.
const MAX_SPARES: usize = 4;

/// Networks with at most this many weights (1 MiB) run large batches as passes of a few rows.
const SMALL_WEIGHTS: usize = 1 << 18;

/// A pass holds about this many values per layer (1 MiB): it stays in a core's L2 cache.
const PASS_VALUES: usize = 1 << 18;

impl Builder {
    /// A network taking rows of `[channels, height, width]`.
    pub fn new([channels, height, width]: [usize; 3]) -> Self {
        let shape = [height, width, channels];
        Self {
            input: shape,
            shape,
            layers: Vec::new(),
            scale: 1.0,
            weights: 0,
            widest: shape.iter().product(),
        }
    }

    /// Multiplies the input by `factor` (folded into the first convolution or dense layer).
    pub fn scale(mut self, factor: f32) -> Self {
        self.scale *= factor;
        self
    }

    /// Standardises each input row.
    pub fn standardize(mut self) -> Self {
        self.layers.push(Layer::Standardize);
        self
    }

    /// A 2-D convolution, then `norm`, then ReLU if `relu`.
    pub fn conv2d<B: Backend>(
        mut self,
        conv: &Conv2d<B>,
        norm: Option<&BatchNorm<B>>,
        relu: bool,
    ) -> Result<Self, String> {
        let conv = self.conv2d_kernel(conv, norm, relu)?;
        self.layers.push(Layer::Conv(conv));
        Ok(self)
    }

    /// A 1-D convolution over the width, then ReLU if `relu`.
    pub fn conv1d<B: Backend>(mut self, conv: &Conv1d<B>, relu: bool) -> Result<Self, String> {
        let [cout, cin, k] = conv.weight.dims();
        if conv.groups != 1 || self.shape[0] != 1 || cin != self.shape[2] {
            return Err(format!("conv1d {cin}→{cout} does not fit {:?}", self.shape));
        }
        let (left, right) = match &conv.padding {
            PaddingConfig1d::Valid => (0, 0),
            PaddingConfig1d::Explicit(left, right) => (*left, *right),
            PaddingConfig1d::Same => same_padding(self.shape[1], k, conv.stride),
        };
        let weights = floats(conv.weight.val().reshape([cout, cin, 1, k]))?;
        let kernel = self.kernel(
            weights,
            conv.bias.as_ref().map(|b| b.val()),
            None,
            [cout, cin, 1, k],
            [1, conv.stride],
            [1, conv.dilation],
            [0, left, 0, right],
            relu,
        )?;
        self.layers.push(Layer::Conv(kernel));
        Ok(self)
    }

    /// A ResNet basic block: `relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))`.
    pub fn residual<B: Backend>(
        mut self,
        [conv1, conv2]: [&Conv2d<B>; 2],
        [norm1, norm2]: [&BatchNorm<B>; 2],
        shortcut: Option<(&Conv2d<B>, &BatchNorm<B>)>,
    ) -> Result<Self, String> {
        let input = self.shape;
        let shortcut = shortcut
            .map(|(conv, norm)| self.conv2d_kernel(conv, Some(norm), false))
            .transpose()?;
        self.shape = input;
        let first = self.conv2d_kernel(conv1, Some(norm1), true)?;
        let second = self.conv2d_kernel(conv2, Some(norm2), true)?;
        let skip_shape = match &shortcut {
            Some(s) => {
                let [h, w] = s.output_size([input[0], input[1]]).unwrap_or_default();
                [h, w, s.channels_out]
            }
            None => input,
        };
        if skip_shape != self.shape {
            return Err(format!(
                "residual block: shortcut gives {skip_shape:?}, body {:?}",
                self.shape
            ));
        }
        self.layers.push(Layer::Residual {
            first: Box::new(first),
            second: Box::new(second),
            shortcut: shortcut.map(Box::new),
        });
        Ok(self)
    }

    /// Max pooling over a 2-D window, without padding.
    pub fn max_pool2d(self, pool: &MaxPool2d) -> Result<Self, String> {
        let unpadded = matches!(pool.padding, PaddingConfig2d::Valid)
            || pool.padding == PaddingConfig2d::Explicit(0, 0, 0, 0);
        if !unpadded || pool.dilation != [1, 1] || pool.ceil_mode {
            return Err(format!("max pool {pool:?}: only unpadded, undilated pools"));
        }
        self.max_pool(pool.kernel_size, pool.stride)
    }

    /// Max pooling over the width, without padding.
    pub fn max_pool1d(self, pool: &MaxPool1d) -> Result<Self, String> {
        let unpadded = matches!(pool.padding, PaddingConfig1d::Valid)
            || pool.padding == PaddingConfig1d::Explicit(0, 0);
        if !unpadded || pool.dilation != 1 || pool.ceil_mode {
            return Err(format!("max pool {pool:?}: only unpadded, undilated pools"));
        }
        self.max_pool([1, pool.kernel_size], [1, pool.stride])
    }

    fn max_pool(mut self, kernel: [usize; 2], stride: [usize; 2]) -> Result<Self, String> {
        let [h, w, c] = self.shape;
        if kernel[0] > h || kernel[1] > w || stride.contains(&0) {
            return Err(format!("max pool {kernel:?} does not fit {:?}", self.shape));
        }
        self.shape = [
            (h - kernel[0]) / stride[0] + 1,
            (w - kernel[1]) / stride[1] + 1,
            c,
        ];
        self.layers.push(Layer::MaxPool { kernel, stride });
        Ok(self)
    }

    /// The mean of each channel over all positions.
    pub fn global_avg_pool(mut self) -> Self {
        self.shape = [1, 1, self.shape[2]];
        self.layers.push(Layer::GlobalAvgPool);
        self
    }

    /// A dense layer on the flattened activations (flattened channel-major, as Burn's
    /// `flatten` of `[N, C, H, W]`), then ReLU if `relu`.
    pub fn dense<B: Backend>(mut self, linear: &Linear<B>, relu: bool) -> Result<Self, String> {
        let [inputs, outputs] = linear.weight.dims();
        let [h, w, c] = self.shape;
        if inputs != h * w * c {
            return Err(format!(
                "dense {inputs}→{outputs} does not fit {:?}",
                self.shape
            ));
        }
        let burn = floats(linear.weight.val())?;
        // Our row (y, x, channel) is Burn's row (channel, y, x).
        let mut weights = vec![0.0; inputs * outputs];
        for position in 0..h * w {
            for channel in 0..c {
                let ours = (position * c + channel) * outputs;
                let theirs = (channel * h * w + position) * outputs;
                weights[ours..ours + outputs].copy_from_slice(&burn[theirs..theirs + outputs]);
            }
        }
        if self.layers.is_empty() {
            weights.iter_mut().for_each(|v| *v *= self.scale);
            self.scale = 1.0;
        }
        let bias = match &linear.bias {
            Some(bias) => floats(bias.val())?,
            None => vec![0.0; outputs],
        };
        self.shape = [1, 1, outputs];
        self.weights += weights.len();
        self.widest = self.widest.max(outputs);
        self.layers.push(Layer::Dense(Dense {
            weights,
            bias,
            activation: if relu {
                Activation::Relu
            } else {
                Activation::Linear
            },
        }));
        Ok(self)
    }

    /// The network; its output is the last layer's, flattened.
    pub fn build(self) -> Network {
        let rows_per_pass = if self.weights <= SMALL_WEIGHTS {
            (PASS_VALUES / self.widest.max(1)).max(1)
        } else {
            usize::MAX
        };
        Network {
            input: self.input,
            layers: self.layers,
            outputs: self.shape.iter().product(),
            rows_per_pass,
            spares: Mutex::default(),
        }
    }

    fn conv2d_kernel<B: Backend>(
        &mut self,
        conv: &Conv2d<B>,
        norm: Option<&BatchNorm<B>>,
        relu: bool,
    ) -> Result<Conv, String> {
        let dims = conv.weight.dims();
        let [h, w, _] = self.shape;
        let padding = match &conv.padding {
            PaddingConfig2d::Valid => [0; 4],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [*top, *left, *bottom, *right],
            PaddingConfig2d::Same => {
                let (top, bottom) = same_padding(h, dims[2], conv.stride[0]);
                let (left, right) = same_padding(w, dims[3], conv.stride[1]);
                [top, left, bottom, right]
            }
        };
        if conv.groups != 1 {
            return Err("grouped convolutions are not compiled for the CPU".into());
        }
        self.kernel(
            floats(conv.weight.val())?,
            conv.bias.as_ref().map(|b| b.val()),
            norm,
            dims,
            conv.stride,
            conv.dilation,
            padding,
            relu,
        )
    }

    /// A [`Conv`] from Burn's `[out, in, kh, kw]` weights, with the pending input scale, the
    /// bias and `norm` folded in; advances the shape.
    #[allow(clippy::too_many_arguments)]
    fn kernel<B: Backend>(
        &mut self,
        burn: Vec<f32>,
        bias: Option<Tensor<B, 1>>,
        norm: Option<&BatchNorm<B>>,
        [cout, cin, kh, kw]: [usize; 4],
        stride: [usize; 2],
        dilation: [usize; 2],
        padding: [usize; 4],
        relu: bool,
    ) -> Result<Conv, String> {
        if cin != self.shape[2] {
            return Err(format!(
                "conv {cin}→{cout} does not fit {:?} (channels last)",
                self.shape
            ));
        }
        let mut bias = match bias {
            Some(bias) => floats(bias)?,
            None => vec![0.0; cout],
        };
        // BatchNorm in inference: (y - mean) / sqrt(var + eps) * gamma + beta, per channel.
        let mut scale = vec![self.scale; cout];
        if let Some(norm) = norm {
            let gamma = floats(norm.gamma.val())?;
            let beta = floats(norm.beta.val())?;
            let mean = floats(norm.running_mean.value())?;
            let var = floats(norm.running_var.value())?;
            for c in 0..cout {
                let factor = gamma[c] / (var[c] + norm.epsilon as f32).sqrt();
                scale[c] *= factor;
                bias[c] = (bias[c] - mean[c]) * factor + beta[c];
            }
        }
        self.scale = 1.0;
        let mut weights = vec![0.0; kh * kw * cin * cout];
        for co in 0..cout {
            for ci in 0..cin {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let theirs = ((co * cin + ci) * kh + ky) * kw + kx;
                        weights[((ky * kw + kx) * cin + ci) * cout + co] = burn[theirs] * scale[co];
                    }
                }
            }
        }
        let conv = Conv {
            weights,
            bias,
            kernel: [kh, kw],
            stride,
            dilation,
            padding,
            channels_in: cin,
            channels_out: cout,
            relu,
            winograd: None,
        }
        .with_winograd();
        let [h, w, _] = self.shape;
        let [oh, ow] = conv
            .output_size([h, w])
            .ok_or_else(|| format!("conv {kh}×{kw} does not fit {:?}", self.shape))?;
        self.shape = [oh, ow, cout];
        self.weights += conv.weights.len();
        self.widest = self.widest.max(oh * ow * (kh * kw * cin).max(cout));
        Ok(conv)
    }
}

/// Burn's `Same` padding: (before, after).
fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// A tensor's values as FP32.
pub(super) fn floats<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>, String> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))
}
