//! The CPU kernels: activations kept channels-last (`NHWC`) from the first layer to the last,
//! convolutions as one im2col + gemm over the whole batch with bias, folded BatchNorm, the
//! residual sum and ReLU done on each tile while it is still in cache.
//!
//! Parallelism: a layer's output rows (batch × positions) are cut into as many tiles as keep
//! every thread busy, each tile one single-threaded gemm; a layer too small to cut (a batch of
//! one at a ResNet's last stage) hands its one gemm all the threads instead.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;
use std::cell::Cell;

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
    /// The weights in the Winograd domain, for 3×3 stride-1 kernels ([`Conv::with_winograd`]).
    pub winograd: Option<Vec<f32>>,
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

    /// Adds the Winograd F(2×2, 3×3) form of the weights when the kernel is 3×3 with stride
    /// and dilation 1 and wide enough to gain: 16 products per 2×2 outputs instead of 36, so
    /// such a layer's gemm work falls to 4/9 (the transforms cost a little of that back).
    /// The transforms' factors are 0, ±1 and ±½, so the results differ from the direct
    /// convolution's only by rounding (~1e-6 relative, tested).
    pub fn with_winograd(mut self) -> Self {
        if self.kernel != [3, 3]
            || self.stride != [1, 1]
            || self.dilation != [1, 1]
            || self.channels_in < WINOGRAD_MIN_CHANNELS
        {
            return self;
        }
        let (cin, cout) = (self.channels_in, self.channels_out);
        // U = G g Gᵀ per (input, output) channel pair, computed in FP64.
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![0.0; 16 * cin * cout];
        for ci in 0..cin {
            for co in 0..cout {
                let g = |ky: usize, kx: usize| {
                    f64::from(self.weights[((ky * 3 + kx) * cin + ci) * cout + co])
                };
                for i in 0..4 {
                    for j in 0..4 {
                        let mut sum = 0.0;
                        for (ky, gi) in G[i].iter().enumerate() {
                            for (kx, gj) in G[j].iter().enumerate() {
                                sum += gi * g(ky, kx) * gj;
                            }
                        }
                        u[((i * 4 + j) * cin + ci) * cout + co] = sum as f32;
                    }
                }
            }
        }
        self.winograd = Some(u);
        self
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
            vectorized(|| {
                for row in dst.chunks_exact_mut(n) {
                    if accumulate {
                        add_assign(row, &self.bias);
                    } else {
                        row.copy_from_slice(&self.bias);
                    }
                }
            });
            if self.is_pointwise() {
                let lhs = &x.data[first_row * k..(first_row + rows) * k];
                matmul(dst, lhs, &self.weights, [rows, k, n], true, parallelism);
            } else {
                with_scratch(rows * k, |scratch| {
                    vectorized(|| self.im2col(x, [oh, ow], first_row, scratch));
                    matmul(dst, scratch, &self.weights, [rows, k, n], true, parallelism);
                });
            }
            if self.relu {
                vectorized(|| relu(dst));
            }
        };
        match &self.winograd {
            // Too few tiles to share out (a batch of one at a late stage): im2col does better.
            Some(u) if x.rows * oh.div_ceil(2) * ow.div_ceil(2) >= WINOGRAD_MIN_TILES => {
                self.winograd(u, x, [oh, ow], &mut out, accumulate);
            }
            _ => for_tiles(&mut out, m, n, k, tile),
        }
        Activations {
            data: out,
            rows: x.rows,
            shape: [oh, ow, n],
        }
    }

    /// The convolution of `x` by Winograd F(2×2, 3×3) with the transformed weights `u`
    /// (`[16, channels_in, channels_out]`), into `out` (`[rows, oh, ow, channels_out]`).
    /// Work is cut into chunks of whole tile rows (2 output rows each), so each chunk writes
    /// one contiguous run of `out`.
    fn winograd(
        &self,
        u: &[f32],
        x: &Activations,
        [oh, ow]: [usize; 2],
        out: &mut [f32],
        accumulate: bool,
    ) {
        let (cin, n) = (self.channels_in, self.channels_out);
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        let tile_rows = x.rows * th;
        let threads = rayon::current_num_threads();
        let target = (WINOGRAD_CHUNK_VALUES / (16 * (cin + n))).clamp(16, 1024);
        let per_chunk = (target / tw).max(1).min(tile_rows.div_ceil(threads).max(1));
        // The first output row of tile row r (image r / th, tile row r % th).
        let first_row = |r: usize| (r / th) * oh + 2 * (r % th);
        let mut chunks = Vec::new();
        let mut rest = out;
        for r0 in (0..tile_rows).step_by(per_chunk) {
            let r1 = (r0 + per_chunk).min(tile_rows);
            let (chunk, tail) = rest.split_at_mut((first_row(r1) - first_row(r0)) * ow * n);
            chunks.push((r0, r1, chunk));
            rest = tail;
        }
        let run = |(r0, r1, dst): (usize, usize, &mut [f32]), parallelism| {
            let tiles = (r1 - r0) * tw;
            with_scratch(16 * tiles * (cin + n), |scratch| {
                let (v, m) = scratch.split_at_mut(16 * tiles * cin);
                vectorized(|| self.winograd_inputs(x, [th, tw], r0, tiles, v));
                for xi in 0..16 {
                    let v = &v[xi * tiles * cin..(xi + 1) * tiles * cin];
                    let u = &u[xi * cin * n..(xi + 1) * cin * n];
                    let m = &mut m[xi * tiles * n..(xi + 1) * tiles * n];
                    matmul(m, v, u, [tiles, cin, n], false, parallelism);
                }
                vectorized(|| {
                    self.winograd_outputs(m, [oh, ow], [th, tw], r0, tiles, dst, accumulate)
                });
            });
        };
        if chunks.len() >= threads && threads > 1 {
            chunks
                .into_par_iter()
                .for_each(|chunk| run(chunk, Parallelism::None));
        } else {
            let parallelism = if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            };
            chunks.into_iter().for_each(|chunk| run(chunk, parallelism));
        }
    }

    /// `Bᵀ d B` of the 4×4 input patch of each tile of tile rows from `r0`, into `v`
    /// (`[16, tiles, channels_in]`).
    #[inline(always)]
    fn winograd_inputs(
        &self,
        x: &Activations,
        [th, tw]: [usize; 2],
        r0: usize,
        tiles: usize,
        v: &mut [f32],
    ) {
        let [h, w, c] = x.shape;
        let mut d = vec![0.0f32; 16 * c];
        let mut t = vec![0.0f32; 16 * c];
        for tile in 0..tiles {
            let r = r0 + tile / tw;
            let (image, ty, tx) = (r / th, r % th, tile % tw);
            d.iter_mut().for_each(|v| *v = 0.0);
            for i in 0..4 {
                let Some(iy) = (2 * ty + i).checked_sub(self.padding[0]).filter(|&y| y < h) else {
                    continue;
                };
                for j in 0..4 {
                    let Some(ix) = (2 * tx + j).checked_sub(self.padding[1]).filter(|&x| x < w)
                    else {
                        continue;
                    };
                    let from = ((image * h + iy) * w + ix) * c;
                    d[(i * 4 + j) * c..(i * 4 + j + 1) * c]
                        .copy_from_slice(&x.data[from..from + c]);
                }
            }
            // Down each column: t = Bᵀ d; then along each row: v = (Bᵀ d) B.
            for j in 0..4 {
                let at = |i: usize| (i * 4 + j) * c;
                for ch in 0..c {
                    let column = input_transform([0, 1, 2, 3].map(|i| d[at(i) + ch]));
                    for (i, value) in column.into_iter().enumerate() {
                        t[at(i) + ch] = value;
                    }
                }
            }
            for i in 0..4 {
                let at = |j: usize| (i * 4 + j) * c;
                let dst = |j: usize| ((i * 4 + j) * tiles + tile) * c;
                for ch in 0..c {
                    let row = input_transform([0, 1, 2, 3].map(|j| t[at(j) + ch]));
                    for (j, value) in row.into_iter().enumerate() {
                        v[dst(j) + ch] = value;
                    }
                }
            }
        }
    }

    /// `Aᵀ m A` of each tile's 16 products (`m`: `[16, tiles, channels_out]`), plus the bias,
    /// added to or written into `dst` (the output rows of tile rows from `r0`), then ReLU.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn winograd_outputs(
        &self,
        m: &[f32],
        [oh, ow]: [usize; 2],
        [th, tw]: [usize; 2],
        r0: usize,
        tiles: usize,
        dst: &mut [f32],
        accumulate: bool,
    ) {
        let n = self.channels_out;
        let first_row = (r0 / th) * oh + 2 * (r0 % th);
        let mut s = vec![0.0f32; 8 * n];
        for tile in 0..tiles {
            let r = r0 + tile / tw;
            let (image, ty, tx) = (r / th, r % th, tile % tw);
            let at = |xi: usize| (xi * tiles + tile) * n;
            // Rows: s = Aᵀ m (2×4), then columns: (Aᵀ m) A (2×2).
            for j in 0..4 {
                for ch in 0..n {
                    let (m0, m1, m2, m3) = (
                        m[at(j) + ch],
                        m[at(4 + j) + ch],
                        m[at(8 + j) + ch],
                        m[at(12 + j) + ch],
                    );
                    s[j * n + ch] = m0 + m1 + m2;
                    s[(4 + j) * n + ch] = m1 - m2 - m3;
                }
            }
            for a in 0..2 {
                let oy = 2 * ty + a;
                if oy >= oh {
                    continue;
                }
                for b in 0..2 {
                    let ox = 2 * tx + b;
                    if ox >= ow {
                        continue;
                    }
                    let row = &s[a * 4 * n..(a + 1) * 4 * n];
                    let at = ((image * oh + oy - first_row) * ow + ox) * n;
                    let out = &mut dst[at..at + n];
                    for ch in 0..n {
                        let (s0, s1, s2, s3) =
                            (row[ch], row[n + ch], row[2 * n + ch], row[3 * n + ch]);
                        let y = if b == 0 { s0 + s1 + s2 } else { s1 - s2 - s3 } + self.bias[ch];
                        let y = if accumulate { out[ch] + y } else { y };
                        out[ch] = if self.relu { y.max(0.0) } else { y };
                    }
                }
            }
        }
    }

    /// Rows `first..first + rows` of the im2col matrix of `x` (`(ky, kx, channel)` per row)
    /// into `cols`, every value written (padding as zeros).
    #[inline(always)]
    fn im2col(&self, x: &Activations, [oh, ow]: [usize; 2], first: usize, cols: &mut [f32]) {
        let [h, w, c] = x.shape;
        let [kh, kw] = self.kernel;
        let k = kh * kw * c;
        for (i, col) in cols.chunks_exact_mut(k).enumerate() {
            let at = first + i;
            let (image, oy, ox) = (at / (oh * ow), at / ow % oh, at % ow);
            let base = image * h * w * c;
            for (ky, taps) in col.chunks_exact_mut(kw * c).enumerate() {
                let Some(iy) = (oy * self.stride[0] + ky * self.dilation[0])
                    .checked_sub(self.padding[0])
                    .filter(|&iy| iy < h)
                else {
                    taps.fill(0.0);
                    continue;
                };
                let row = &x.data[base + iy * w * c..base + (iy + 1) * w * c];
                if self.dilation[1] == 1 {
                    // The row's taps are one contiguous run of the input row, clipped at its ends.
                    let start = (ox * self.stride[1]) as isize - self.padding[1] as isize;
                    let from = start.clamp(0, w as isize);
                    let to = (start + kw as isize).clamp(from, w as isize);
                    let skipped = (from - start) as usize * c;
                    let (from, to) = (from as usize * c, to as usize * c);
                    taps[..skipped].fill(0.0);
                    taps[skipped..skipped + to - from].copy_from_slice(&row[from..to]);
                    taps[skipped + to - from..].fill(0.0);
                    continue;
                }
                for (kx, tap) in taps.chunks_exact_mut(c).enumerate() {
                    match (ox * self.stride[1] + kx * self.dilation[1])
                        .checked_sub(self.padding[1])
                        .filter(|&ix| ix < w)
                    {
                        Some(ix) => tap.copy_from_slice(&row[ix * c..(ix + 1) * c]),
                        None => tap.fill(0.0),
                    }
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
    #[inline(always)]
    fn apply(self, values: &mut [f32]) {
        match self {
            Self::Linear => {}
            Self::Relu => relu(values),
            Self::Gelu => values
                .iter_mut()
                .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
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
            matmul(dst, lhs, &self.weights, [rows, k, n], true, parallelism);
            vectorized(|| self.activation.apply(dst));
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
        vectorized(|| {
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
        })
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
/// network's first step. Sums in FP64 over eight lanes: a row is thousands of samples.
pub fn standardize(x: &mut Activations) {
    vectorized(|| standardize_rows(x));
}

#[inline(always)]
fn standardize_rows(x: &mut Activations) {
    let width = x.width();
    for row in x.data.chunks_exact_mut(width) {
        let mean = (sum_f64(row, |v| v) / width as f64) as f32;
        row.iter_mut().for_each(|v| *v -= mean);
        let std = (sum_f64(row, |v| v * v) / width as f64).sqrt() as f32 + 1e-6;
        row.iter_mut().for_each(|v| *v /= std);
    }
}

#[inline(always)]
/// The FP64 sum of `f` over `values`, in eight independent lanes (which vectorise).
fn sum_f64(values: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(f64::from(v))).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(f64::from(v));
        }
    }
    lanes.iter().sum::<f64>() + tail
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
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `work` on `len` values of this thread's scratch buffer, which hold whatever the last
/// use left: `work` must write before it reads. The buffer is taken out while `work` runs, so
/// a nested call (a thread that runs another tile while gemm waits) gets its own instead of a
/// borrow conflict.
fn with_scratch(len: usize, work: impl FnOnce(&mut [f32])) {
    let mut scratch = SCRATCH.take();
    if scratch.len() < len {
        scratch.resize(len, 0.0);
    }
    work(&mut scratch[..len]);
    SCRATCH.set(scratch);
}

/// Input channels below which a 3×3 convolution stays on im2col (its gemm is too thin for the
/// Winograd transforms to pay).
const WINOGRAD_MIN_CHANNELS: usize = 32;

/// Tiles (2×2 outputs) below which a Winograd convolution runs as im2col instead.
const WINOGRAD_MIN_TILES: usize = 64;

/// Winograd chunks are sized to about this many transformed values (4 MiB) per thread.
const WINOGRAD_CHUNK_VALUES: usize = 1 << 20;

/// Winograd F(2×2, 3×3)'s `Bᵀ x` for one column (or row) of four values.
#[inline(always)]
fn input_transform([x0, x1, x2, x3]: [f32; 4]) -> [f32; 4] {
    [x0 - x2, x1 + x2, x2 - x1, x1 - x3]
}

/// Below this many multiply-adds (~100 µs on one core) a layer runs on one thread: waking the
/// others costs more than they save (the failure MLP at batch 256: 2.0M rows/s threaded at
/// 1M products, 6M+ on one thread).
const PARALLEL_PRODUCTS: usize = 1 << 23;

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
    if threads == 1 || m < 16 * threads || m * n * k < PARALLEL_PRODUCTS {
        // Too few rows to share out, or too little work to wake other threads for: one gemm at
        // a time, each on all threads if it is big enough.
        let parallelism = if threads == 1 || m * n * k < PARALLEL_PRODUCTS {
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

/// `dst[m, n] = lhs[m, k] × rhs[k, n]`, or `+=` if `accumulate`, all row-major.
fn matmul(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    [m, k, n]: [usize; 3],
    accumulate: bool,
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
            accumulate,
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

/// `eˣ` to ~2e-7 relative, in arithmetic only (so loops of it vectorise, unlike libm's):
/// `x = n ln 2 + r`, a degree-6 polynomial for `eʳ` on `|r| ≤ ln 2 / 2`, and `2ⁿ` from bits.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `erf(x)` to ~6e-7 absolute (Abramowitz & Stegun 7.1.26, with [`exp`]): vectorises.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_7 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// Runs `f` compiled with AVX2 and FMA where the CPU has them, so the loops inlined into it
/// vectorise 8 wide instead of the x86-64 baseline's 4 (SSE2). The gemm kernels choose their
/// instructions at run time themselves; this is for Ember's own loops.
#[inline(always)]
pub(super) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { avx2(f) };
    }
    f()
}

#[inline(always)]
pub(super) fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

#[inline(always)]
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
            winograd: None,
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
            // Winograd: same padding, none, and odd output sizes (a half-empty last tile).
            conv([3, 3], [1, 1], [1, 1, 1, 1], 32).with_winograd(),
            conv([3, 3], [1, 1], [0; 4], 33).with_winograd(),
            conv([3, 3], [1, 1], [2, 1, 0, 1], 40).with_winograd(),
        ];
        assert!(cases[6..].iter().all(|c| c.winograd.is_some()));
        for (case, conv) in cases.iter().enumerate() {
            // A single image, and batches big enough to be cut into tiles (and Winograd chunks).
            for rows in [1, 9, 40] {
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
    fn the_vectorisable_exp_and_erf_match_libm() {
        for i in -2000..=2000 {
            let x = i as f32 / 40.0;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "exp({x}): {got} vs {want}"
            );
            let (got, want) = (erf(x / 10.0), libm::erff(x / 10.0));
            assert!(
                (got - want).abs() <= 1e-6,
                "erf({}): {got} vs {want}",
                x / 10.0
            );
        }
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
