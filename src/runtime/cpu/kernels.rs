//! The CPU kernels: activations kept channels-last (`NHWC`) from the first layer to the last,
//! convolutions as one im2col + gemm over the whole batch with bias, folded BatchNorm, the
//! residual sum and ReLU done on each tile while it is still in cache.
//!
//! Parallelism: a layer's output rows (batch × positions) are cut into as many tiles as keep
//! every thread busy, each tile one single-threaded gemm; a layer too small to cut (a batch of
//! one at a ResNet's last stage) hands its one gemm all the threads instead.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;
use std::cell::RefCell;

/// A batch of feature maps, `[rows, height, width, channels]`, channels last.
#[derive(Debug, Clone, PartialEq)]
pub struct Activations {
    /// The values, channel fastest.
    pub data: Vec<f32>,
    /// Images (or windows, or feature rows) in the batch.
    pub rows: usize,
    /// Height, width and channels of each.
    pub shape: [usize; 3],
}

impl Activations {
    /// Values per row.
    pub fn width(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A 2-D convolution (a 1-D one has height 1) with its bias and any BatchNorm folded into
/// `weights`/`bias`, optionally followed by ReLU.
#[derive(Debug, Clone)]
pub struct Conv {
    /// `[kernel_h × kernel_w × channels_in, channels_out]`, row-major.
    pub weights: Vec<f32>,
    /// One per output channel.
    pub bias: Vec<f32>,
    /// `[height, width]` of the kernel.
    pub kernel: [usize; 2],
    /// `[height, width]` steps.
    pub stride: [usize; 2],
    /// `[height, width]` spacing of the kernel's taps.
    pub dilation: [usize; 2],
    /// Zeros added `[top, left, bottom, right]`.
    pub padding: [usize; 4],
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Whether ReLU follows (after the residual sum, when there is one).
    pub relu: bool,
}

impl Conv {
    /// Output `[height, width]` for an input of `[height, width]` (None when it does not fit).
    pub fn output_size(&self, [h, w]: [usize; 2]) -> Option<[usize; 2]> {
        let out = |size: usize, pad: usize, kernel: usize, dilation: usize, stride: usize| {
            let span = dilation * (kernel - 1) + 1;
            (size + pad).checked_sub(span).map(|room| room / stride + 1)
        };
        let [top, left, bottom, right] = self.padding;
        let [kh, kw] = self.kernel;
        Some([
            out(h, top + bottom, kh, self.dilation[0], self.stride[0])?,
            out(w, left + right, kw, self.dilation[1], self.stride[1])?,
        ])
    }

    /// Whether the input already is the im2col matrix (1×1, stride 1, no padding).
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0; 4]
    }

    /// The convolution of `x` written into `out`, or added to it if `accumulate` (the
    /// residual: `out` then holds the output's shape).
    pub fn forward(&self, x: &Activations, mut out: Vec<f32>, accumulate: bool) -> Activations {
        let [h, w, _] = x.shape;
        let [oh, ow] = self
            .output_size([h, w])
            .expect("the network was compiled for this input size");
        let (m, k, n) = (
            x.rows * oh * ow,
            self.kernel[0] * self.kernel[1] * self.channels_in,
            self.channels_out,
        );
        if accumulate {
            assert_eq!(out.len(), m * n, "residual shape");
        } else {
            out.resize(m * n, 0.0);
        }
        let tile = |first_row: usize, dst: &mut [f32], parallelism: Parallelism| {
            let rows = dst.len() / n;
            for row in dst.chunks_exact_mut(n) {
                if accumulate {
                    add_assign(row, &self.bias);
                } else {
                    row.copy_from_slice(&self.bias);
                }
            }
            if self.is_pointwise() {
                let lhs = &x.data[first_row * k..(first_row + rows) * k];
                matmul_acc(dst, lhs, &self.weights, rows, k, n, parallelism);
            } else {
                SCRATCH.with_borrow_mut(|scratch| {
                    scratch.clear();
                    scratch.resize(rows * k, 0.0);
                    self.im2col(x, [oh, ow], first_row, scratch);
                    matmul_acc(dst, scratch, &self.weights, rows, k, n, parallelism);
                });
            }
            if self.relu {
                relu(dst);
            }
        };
        for_tiles(&mut out, m, n, k, tile);
        Activations {
            data: out,
            rows: x.rows,
            shape: [oh, ow, n],
        }
    }

    /// Rows `first..first + rows` of the im2col matrix of `x` (`(ky, kx, channel)` per row)
    /// into `cols` (zeroed: padding stays zero).
    fn im2col(&self, x: &Activations, [oh, ow]: [usize; 2], first: usize, cols: &mut [f32]) {
        let [h, w, c] = x.shape;
        let [kh, kw] = self.kernel;
        let k = kh * kw * c;
        for (i, col) in cols.chunks_exact_mut(k).enumerate() {
            let at = first + i;
            let (image, oy, ox) = (at / (oh * ow), at / ow % oh, at % ow);
            let base = image * h * w * c;
            for ky in 0..kh {
                let Some(iy) = (oy * self.stride[0] + ky * self.dilation[0])
                    .checked_sub(self.padding[0])
                    .filter(|&iy| iy < h)
                else {
                    continue;
                };
                for kx in 0..kw {
                    let Some(ix) = (ox * self.stride[1] + kx * self.dilation[1])
                        .checked_sub(self.padding[1])
                        .filter(|&ix| ix < w)
                    else {
                        continue;
                    };
                    let from = base + (iy * w + ix) * c;
                    let to = (ky * kw + kx) * c;
                    col[to..to + c].copy_from_slice(&x.data[from..from + c]);
                }
            }
        }
    }
}

/// A fully connected layer on each row's flattened values, then its activation.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `[inputs, outputs]`, row-major, rows in the channels-last order of the activations.
    pub weights: Vec<f32>,
    /// One per output.
    pub bias: Vec<f32>,
    /// What follows the product.
    pub activation: Activation,
}

/// A function applied to each value after a layer's product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None: the values as they are.
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// The exact (erf) GELU, as BERT, PyTorch and Burn compute it.
    Gelu,
}

impl Activation {
    fn apply(self, values: &mut [f32]) {
        match self {
            Self::Linear => {}
            Self::Relu => relu(values),
            Self::Gelu => values.iter_mut().for_each(|v| {
                *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2))
            }),
        }
    }
}

impl Dense {
    /// `x` flattened per row, times the weights, plus the bias, written into `out`.
    pub fn forward(&self, x: &Activations, mut out: Vec<f32>) -> Activations {
        let (k, n) = (x.width(), self.bias.len());
        out.resize(x.rows * n, 0.0);
        for_tiles(&mut out, x.rows, n, k, |first, dst, parallelism| {
            let rows = dst.len() / n;
            for row in dst.chunks_exact_mut(n) {
                row.copy_from_slice(&self.bias);
            }
            let lhs = &x.data[first * k..(first + rows) * k];
            matmul_acc(dst, lhs, &self.weights, rows, k, n, parallelism);
            self.activation.apply(dst);
        });
        Activations {
            data: out,
            rows: x.rows,
            shape: [1, 1, n],
        }
    }
}

/// Max over `kernel` windows stepped by `stride`, without padding, written into `out`.
pub fn max_pool(
    x: &Activations,
    kernel: [usize; 2],
    stride: [usize; 2],
    mut out: Vec<f32>,
) -> Activations {
    let [h, w, c] = x.shape;
    let (oh, ow) = (
        (h - kernel[0]) / stride[0] + 1,
        (w - kernel[1]) / stride[1] + 1,
    );
    out.clear();
    out.resize(x.rows * oh * ow * c, f32::NEG_INFINITY);
    let per_row = oh * ow * c;
    let pool = |(image, dst): (usize, &mut [f32])| {
        let src = &x.data[image * h * w * c..(image + 1) * h * w * c];
        for (o, cell) in dst.chunks_exact_mut(c).enumerate() {
            let (oy, ox) = (o / ow, o % ow);
            for ky in 0..kernel[0] {
                for kx in 0..kernel[1] {
                    let at = ((oy * stride[0] + ky) * w + ox * stride[1] + kx) * c;
                    for (d, &s) in cell.iter_mut().zip(&src[at..at + c]) {
                        *d = d.max(s);
                    }
                }
            }
        }
    };
    if x.rows * per_row >= PARALLEL_VALUES {
        out.par_chunks_mut(per_row).enumerate().for_each(pool);
    } else {
        out.chunks_mut(per_row).enumerate().for_each(pool);
    }
    Activations {
        data: out,
        rows: x.rows,
        shape: [oh, ow, c],
    }
}

/// The mean over all positions of each channel, `[rows, 1, 1, channels]`, written into `out`.
pub fn global_avg_pool(x: &Activations, mut out: Vec<f32>) -> Activations {
    let [h, w, c] = x.shape;
    let positions = h * w;
    out.clear();
    out.resize(x.rows * c, 0.0);
    for (dst, src) in out
        .chunks_exact_mut(c)
        .zip(x.data.chunks_exact(positions * c))
    {
        for cell in src.chunks_exact(c) {
            add_assign(dst, cell);
        }
        for d in dst.iter_mut() {
            *d /= positions as f32;
        }
    }
    Activations {
        data: out,
        rows: x.rows,
        shape: [1, 1, c],
    }
}

/// Each row scaled to zero mean and unit standard deviation (`+ 1e-6`), as the vibration
/// network's first step. Sums in FP64: a row is thousands of samples.
pub fn standardize(x: &mut Activations) {
    let width = x.width();
    for row in x.data.chunks_exact_mut(width) {
        let mean = (row.iter().map(|&v| f64::from(v)).sum::<f64>() / width as f64) as f32;
        row.iter_mut().for_each(|v| *v -= mean);
        let square = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>();
        let std = (square / width as f64).sqrt() as f32 + 1e-6;
        row.iter_mut().for_each(|v| *v /= std);
    }
}

/// Softmax of each row of `logits` (`classes` wide), in place.
pub fn softmax_rows(logits: &mut [f32], classes: usize) {
    for row in logits.chunks_exact_mut(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

/// The index of each row's largest value (the first on ties).
pub fn argmax_rows(values: &[f32], classes: usize) -> Vec<i64> {
    values
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}

thread_local! {
    /// Each thread's im2col tile, reused from batch to batch.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Below this many values a pooling layer runs on one thread.
const PARALLEL_VALUES: usize = 1 << 16;

/// im2col tiles are sized to about this many values (1 MiB): they stay in L2 while gemm reads them.
const TILE_VALUES: usize = 1 << 18;

/// Calls `tile(first_row, rows_of_out, parallelism)` over `out` (`m` rows of `n`), cut into
/// tiles for the threads; `k` is the inner dimension (the im2col row width).
fn for_tiles<F>(out: &mut [f32], m: usize, n: usize, k: usize, tile: F)
where
    F: Fn(usize, &mut [f32], Parallelism) + Sync,
{
    let threads = rayon::current_num_threads();
    let target = (TILE_VALUES / k.max(1)).clamp(16, 2048);
    if threads == 1 || m < 16 * threads {
        // Too few rows to share out: one gemm at a time, each on all threads.
        let parallelism = if threads == 1 || m * n * k < 1 << 16 {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        };
        for (i, dst) in out.chunks_mut(target * n).enumerate() {
            tile(i * target, dst, parallelism);
        }
        return;
    }
    // A multiple of the thread count, so that no thread waits on a last odd tile.
    let tiles = m.div_ceil(target).div_ceil(threads) * threads;
    let rows = m.div_ceil(tiles);
    out.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(i, dst)| tile(i * rows, dst, Parallelism::None));
}

/// `dst[m, n] += lhs[m, k] × rhs[k, n]`, all row-major.
pub(super) fn matmul_acc(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    parallelism: Parallelism,
) {
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n);
    // SAFETY: the three slices hold exactly the m×n, m×k and k×n row-major matrices described
    // by the strides (checked above), and dst does not alias lhs or rhs (a &mut slice).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

pub(super) fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

fn relu(values: &mut [f32]) {
    for v in values {
        *v = v.max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook convolution, one output value at a time.
    fn naive_conv(conv: &Conv, x: &Activations) -> Vec<f32> {
        let [h, w, c] = x.shape;
        let [oh, ow] = conv.output_size([h, w]).unwrap();
        let [kh, kw] = conv.kernel;
        let mut out = Vec::new();
        for image in 0..x.rows {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..conv.channels_out {
                        let mut sum = conv.bias[co];
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize
                                    - conv.padding[0] as isize;
                                let ix = (ox * conv.stride[1] + kx * conv.dilation[1]) as isize
                                    - conv.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                for ci in 0..c {
                                    let v = x.data
                                        [((image * h + iy as usize) * w + ix as usize) * c + ci];
                                    sum += v * conv.weights
                                        [((ky * kw + kx) * c + ci) * conv.channels_out + co];
                                }
                            }
                        }
                        out.push(if conv.relu { sum.max(0.0) } else { sum });
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 16) as f32)
            .map(|v| v / 65_536.0 - 0.5)
            .collect()
    }

    fn conv(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 4], cin: usize) -> Conv {
        let cout = 5;
        Conv {
            weights: values(kernel[0] * kernel[1] * cin * cout, 1),
            bias: values(cout, 2),
            kernel,
            stride,
            dilation: [1, 1],
            padding,
            channels_in: cin,
            channels_out: cout,
            relu: true,
        }
    }

    #[test]
    fn tiled_convolutions_equal_the_textbook_one() {
        let cases = [
            conv([3, 3], [1, 1], [1, 1, 1, 1], 3),
            conv([3, 3], [2, 2], [1, 1, 1, 1], 4),
            conv([1, 1], [1, 1], [0; 4], 6),
            conv([1, 1], [2, 2], [0; 4], 2),
            conv([1, 7], [1, 3], [0, 3, 0, 3], 1),
            conv([2, 3], [1, 1], [0, 1, 1, 0], 2),
        ];
        for (case, conv) in cases.iter().enumerate() {
            // A batch big enough to be cut into tiles, and a single image.
            for rows in [1, 9] {
                let shape = [9, 11, conv.channels_in];
                let x = Activations {
                    data: values(rows * shape.iter().product::<usize>(), 3),
                    rows,
                    shape,
                };
                let got = conv.forward(&x, Vec::new(), false);
                let want = naive_conv(conv, &x);
                assert_eq!(got.data.len(), want.len(), "case {case}");
                for (g, w) in got.data.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "case {case}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_residual_is_added_before_the_relu() {
        let mut conv = conv([1, 1], [1, 1], [0; 4], 1);
        conv.weights = vec![1.0; 5];
        conv.bias = vec![0.0; 5];
        let x = Activations {
            data: vec![2.0],
            rows: 1,
            shape: [1, 1, 1],
        };
        let out = conv.forward(&x, vec![-3.0, -1.0, 0.0, 1.0, 3.0], true);
        assert_eq!(out.data, [0.0, 1.0, 2.0, 3.0, 5.0]);
    }

    #[test]
    fn pools_take_the_max_and_the_mean_per_channel() {
        // 2×2 image, 2 channels: channel 0 is 1..4, channel 1 is -1..-4.
        let x = Activations {
            data: vec![1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0, -4.0],
            rows: 1,
            shape: [2, 2, 2],
        };
        assert_eq!(max_pool(&x, [2, 2], [2, 2], vec![]).data, [4.0, -1.0]);
        let reused = vec![9.0; 7];
        assert_eq!(
            max_pool(&x, [1, 2], [1, 2], reused).data,
            [2.0, -1.0, 4.0, -3.0]
        );
        assert_eq!(global_avg_pool(&x, vec![1.0]).data, [2.5, -2.5]);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_argmax_takes_the_first_best() {
        let mut logits = vec![1.0, 3.0, 3.0, 0.0, 0.0, 0.0];
        softmax_rows(&mut logits, 3);
        assert!((logits[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(argmax_rows(&logits, 3), [1, 0]);
        assert!((logits[3] - 1.0 / 3.0).abs() < 1e-6);
    }
}
