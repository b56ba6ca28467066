//! The CPU kernels: matrix × vector (decode) and matrix × several vectors (prompt), over float
//! or MLX-packed weights that stay packed — a quantized row is consumed group by group inside
//! the dot product (`Σ w·x = scale · Σ q·x + bias · Σ x`), never expanded in memory. Rows are
//! split across the rayon pool; inner loops are written for the compiler to vectorize and are
//! compiled twice (portable, and AVX2 + FMA chosen at run time). Accumulation is in f32.

use super::pool::pool;
use super::weights::Matrix;
use crate::convert::quant::FloatDtype;

/// Rows per parallel task: enough work per task to amortize scheduling.
const ROWS_PER_TASK: usize = 16;

/// Rows per task when decoding: ~32 KiB of weights each. Decoding a task of 16 short rows took
/// about as long as claiming and dispatching it; much larger tasks leave one thread waiting
/// for the other's last task at the end of each of the ~100 regions per token.
#[cfg(target_arch = "x86_64")]
fn decode_rows_per_task(row_bytes: usize) -> usize {
    (32 << 10) / row_bytes.max(1)
}

/// Rows per parallel task of a prompt's GEMM (each task unpacks its rows once).
#[cfg(target_arch = "x86_64")]
const GEMM_ROWS_PER_TASK: usize = 32;

/// Sum of `a[i] * b[i]` with 16 independent accumulators (vectorizes; no FMA contraction).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for v in acc {
        s += v;
    }
    s
}

#[inline(always)]
fn word_at(bytes: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([
        bytes[4 * i],
        bytes[4 * i + 1],
        bytes[4 * i + 2],
        bytes[4 * i + 3],
    ])
}

/// Stored value `i` of a little-endian `dtype` array (a scale, a bias, a weight).
#[inline(always)]
pub(crate) fn stored_value(bytes: &[u8], dtype: FloatDtype, i: usize) -> f32 {
    match dtype {
        FloatDtype::BF16 => {
            f32::from_bits(u32::from(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])) << 16)
        }
        FloatDtype::F16 => {
            half::f16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32()
        }
        FloatDtype::F32 => f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]),
    }
}

/// `Σ q·x` over one group whose codes fill whole words (`N` codes of `BITS` bits per word).
#[inline(always)]
fn group_dot_whole<const BITS: u32, const N: usize>(
    words: &[u8],
    first_word: usize,
    x: &[f32],
) -> f32 {
    let mask = (1u32 << BITS) - 1;
    let mut acc = [0f32; N];
    for (w, xs) in x.chunks_exact(N).enumerate() {
        let word = word_at(words, first_word + w);
        for j in 0..N {
            acc[j] += ((word >> (j as u32 * BITS)) & mask) as f32 * xs[j];
        }
    }
    acc.iter().sum()
}

/// `Σ q·x` for widths that straddle words (3, 5, 6 bits).
#[inline(always)]
fn group_dot_stream(words: &[u8], first_word: usize, bits: u32, x: &[f32]) -> f32 {
    let mask = (1u64 << bits) - 1;
    let mut s = 0f32;
    for (i, &xi) in x.iter().enumerate() {
        let bit = i * bits as usize;
        let w = first_word + bit / 32;
        let shift = bit % 32;
        let mut v = u64::from(word_at(words, w)) >> shift;
        if shift + bits as usize > 32 {
            v |= u64::from(word_at(words, w + 1)) << (32 - shift);
        }
        s += (v & mask) as f32 * xi;
    }
    s
}

/// One output of a quantized row: `Σ_g scale_g · Σ q·x + bias_g · Σ x` (`xsum` = per-group x sums).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn affine_row_dot(
    words: &[u8],
    scales: &[u8],
    biases: &[u8],
    dtype: FloatDtype,
    bits: u32,
    group: usize,
    row: usize,
    cols: usize,
    x: &[f32],
    xsum: &[f32],
) -> f32 {
    let groups = cols / group;
    let words_per_group = group * bits as usize / 32;
    let mut total = 0f32;
    for g in 0..groups {
        let xg = &x[g * group..(g + 1) * group];
        let first = (row * groups + g) * words_per_group;
        let qx = match bits {
            2 => group_dot_whole::<2, 16>(words, first, xg),
            4 => group_dot_whole::<4, 8>(words, first, xg),
            8 => group_dot_whole::<8, 4>(words, first, xg),
            b => group_dot_stream(words, first, b, xg),
        };
        let s = stored_value(scales, dtype, row * groups + g);
        let b = stored_value(biases, dtype, row * groups + g);
        total += s * qx + b * xsum[g];
    }
    total
}

/// Row `row` of the matrix as f32 values (an embedding lookup; a dequantized row).
pub fn matrix_row(m: &Matrix, row: usize, out: &mut [f32]) {
    match m {
        Matrix::Float {
            data, dtype, cols, ..
        } => {
            let size = dtype.size();
            dtype.widen_into(
                &data.bytes()[row * cols * size..(row + 1) * cols * size],
                out,
            );
        }
        Matrix::Affine {
            words,
            scales,
            biases,
            dtype,
            bits,
            group,
            cols,
            ..
        } => {
            let groups = cols / group;
            let words = words.bytes();
            let wpr = cols * *bits as usize / 32;
            for (i, o) in out.iter_mut().enumerate() {
                let bit = i * *bits as usize;
                let w = row * wpr + bit / 32;
                let shift = bit % 32;
                let mut v = u64::from(word_at(words, w)) >> shift;
                if shift + *bits as usize > 32 {
                    v |= u64::from(word_at(words, w + 1)) << (32 - shift);
                }
                let q = (v & ((1u64 << *bits) - 1)) as f32;
                let g = row * groups + i / group;
                *o = q * stored_value(scales.bytes(), *dtype, g)
                    + stored_value(biases.bytes(), *dtype, g);
            }
        }
    }
}

simd_dispatch! {
    fn rows_times_vectors(m: &Matrix, xs: &[f32], t: usize, xsums: &[f32], first_row: usize, out: &mut [f32]) {
        // `out` holds rows first_row.. for every token: out[r * t + k].
        let rows = out.len() / t;
        match m {
            Matrix::Float { data, dtype, cols, .. } => {
                let (mut w, size) = (vec![0f32; *cols], dtype.size());
                for r in 0..rows {
                    let row = first_row + r;
                    dtype.widen_into(&data.bytes()[row * cols * size..(row + 1) * cols * size], &mut w);
                    for k in 0..t {
                        out[r * t + k] = dot(&w, &xs[k * cols..(k + 1) * cols]);
                    }
                }
            }
            Matrix::Affine { words, scales, biases, dtype, bits, group, cols, .. } => {
                let groups = cols / group;
                for r in 0..rows {
                    for k in 0..t {
                        out[r * t + k] = affine_row_dot(
                            words.bytes(),
                            scales.bytes(),
                            biases.bytes(),
                            *dtype,
                            *bits,
                            *group,
                            first_row + r,
                            *cols,
                            &xs[k * cols..(k + 1) * cols],
                            &xsums[k * groups..(k + 1) * groups],
                        );
                    }
                }
            }
        }
    }
}

/// `ys[k] = M · xs[k]` for `t` input vectors (`xs`: t × cols, `ys`: t × rows), the weights read
/// once for all of them. `scratch` holds the row-major intermediate (rows × t) and group sums.
pub fn matmul(m: &Matrix, xs: &[f32], t: usize, ys: &mut [f32], scratch: &mut MatmulScratch) {
    let (rows, cols) = (m.rows(), m.cols());
    debug_assert_eq!(xs.len(), t * cols);
    debug_assert_eq!(ys.len(), t * rows);
    #[cfg(target_arch = "x86_64")]
    if t == 1 && super::x86::available() && x86_decode(&mut [(m, ys)], xs, scratch) {
        return;
    }
    scratch.xsums.clear();
    if let Matrix::Affine { group, .. } = m {
        for k in 0..t {
            for g in xs[k * cols..(k + 1) * cols].chunks_exact(*group) {
                scratch.xsums.push(g.iter().sum());
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if super::x86::available() && x86_matmul(m, xs, t, ys, scratch) {
        return;
    }
    let xsums = &scratch.xsums;
    drive(rows, t, ys, &mut scratch.by_row, |first, out| {
        rows_times_vectors(m, xs, t, xsums, first, out)
    });
}

/// Several products of the same input (q/k/v, gate/up). Decoding one token, they run as one
/// parallel region: waking the pool's threads once instead of once per matrix.
pub fn matmul_many(
    products: &mut [(&Matrix, &mut [f32])],
    xs: &[f32],
    t: usize,
    scratch: &mut MatmulScratch,
) {
    #[cfg(target_arch = "x86_64")]
    if t == 1 && super::x86::available() && x86_decode(products, xs, scratch) {
        return;
    }
    for (m, ys) in products.iter_mut() {
        matmul(m, xs, t, ys, scratch);
    }
}

/// One token through one or several products of the same input as one parallel region, when
/// every matrix is float, or every one is quantized with the same group size and has a VNNI
/// kernel (4-bit; 2/3/5/6/8-bit with VBMI); `false` otherwise (the caller then runs the other
/// kernels).
#[cfg(target_arch = "x86_64")]
fn x86_decode(
    products: &mut [(&Matrix, &mut [f32])],
    x: &[f32],
    scratch: &mut MatmulScratch,
) -> bool {
    use super::x86;
    let Some(first) = products.first().map(|p| p.0) else {
        return true;
    };
    let cols = first.cols();
    // (group, nibble-order activations needed) of a quantized matrix with a VNNI kernel.
    let vnni_group = |m: &Matrix| match m {
        Matrix::Affine { bits: 4, group, .. }
            if x86::vnni_available() && x86::split_kernel_fits(cols, *group) =>
        {
            Some((*group, true))
        }
        Matrix::Affine { bits, group, .. }
            if x86::vbmi_available() && x86::any_width_kernel_fits(cols, *bits, *group) =>
        {
            Some((*group, false))
        }
        _ => None,
    };
    let same_cols = products
        .iter()
        .all(|(m, ys)| m.cols() == cols && ys.len() == m.rows());
    let all_float = products
        .iter()
        .all(|(m, _)| matches!(m, Matrix::Float { .. }));
    let group = vnni_group(first).map(|(g, _)| g);
    let all_vnni = group.is_some()
        && products
            .iter()
            .all(|(m, _)| vnni_group(m).map(|(g, _)| g) == group);
    if !same_cols || !(all_float || all_vnni) {
        return false;
    }
    if let Some(group) = group {
        let nibbles = products
            .iter()
            .any(|(m, _)| vnni_group(m) == Some((group, true)));
        let natural = products
            .iter()
            .any(|(m, _)| vnni_group(m) == Some((group, false)));
        // SAFETY: `vnni_group` found a VNNI kernel, so the CPU has AVX-512 F and BW; the
        // kernels' shapes (columns a multiple of 128, groups of 32 / 64 / 128) are what
        // `set_fast` needs.
        unsafe {
            scratch
                .split
                .set_fast(x, group, nibbles, natural, &mut scratch.xsums)
        };
    }
    let (sa, xsums) = (&scratch.split, &scratch.xsums);
    // One region: the matrices' row chunks are stolen as one pool of work.
    let run = |m: &Matrix, first: usize, out: &mut [f32]| match m {
        Matrix::Float { data, dtype, .. } => {
            let size = dtype.size();
            for (r, y) in out.iter_mut().enumerate() {
                let row = &data.bytes()[(first + r) * cols * size..(first + r + 1) * cols * size];
                // SAFETY: `x86::available()` was checked by the caller.
                *y = unsafe { x86::float_row_dot(row, *dtype, x) };
            }
        }
        Matrix::Affine {
            words,
            scales,
            biases,
            dtype,
            bits,
            group,
            ..
        } => {
            let (w, s, b, d, g) = (
                words.bytes(),
                scales.bytes(),
                biases.bytes(),
                *dtype,
                *group,
            );
            // SAFETY: every matrix here passed `vnni_group`: 4-bit ones `split_kernel_fits`
            // with `x86::vnni_available()`, the others `any_width_kernel_fits` with
            // `x86::vbmi_available()`; the activations were set in the layout each needs.
            unsafe {
                match bits {
                    4 => x86::q4_rows_split(w, s, b, d, sa, xsums, g, first, out),
                    2 => x86::qn_rows_split::<2>(w, s, b, d, sa, xsums, g, first, out),
                    3 => x86::qn_rows_split::<3>(w, s, b, d, sa, xsums, g, first, out),
                    5 => x86::qn_rows_split::<5>(w, s, b, d, sa, xsums, g, first, out),
                    6 => x86::qn_rows_split::<6>(w, s, b, d, sa, xsums, g, first, out),
                    _ => x86::qn_rows_split::<8>(w, s, b, d, sa, xsums, g, first, out),
                }
            }
        }
    };
    let chunk = decode_rows_per_task(first.nbytes() / first.rows().max(1));
    pool().for_each_chunk_of(products, chunk, |m, first, out| run(m, first, out));
    true
}

/// Splits the rows of a product across the pool. `kernel(first_row, out)` fills `out` with
/// the outputs of rows `first_row..` for every token, row-major (`out[r * t + k]`).
fn drive(
    rows: usize,
    t: usize,
    ys: &mut [f32],
    by_row: &mut Vec<f32>,
    kernel: impl Fn(usize, &mut [f32]) + Sync,
) {
    if t == 1 {
        pool().for_each_chunk(ys, ROWS_PER_TASK, kernel);
        return;
    }
    by_row.clear();
    by_row.resize(rows * t, 0.0);
    pool().for_each_chunk(by_row, ROWS_PER_TASK * t, |first, out| {
        kernel(first / t, out)
    });
    for k in 0..t {
        for r in 0..rows {
            ys[k * rows + r] = by_row[r * t + k];
        }
    }
}

/// The AVX2 kernels for float rows and 4-bit rows; `false` when the format has none.
#[cfg(target_arch = "x86_64")]
fn x86_matmul(
    m: &Matrix,
    xs: &[f32],
    t: usize,
    ys: &mut [f32],
    scratch: &mut MatmulScratch,
) -> bool {
    use super::{gemm, x86};
    let (rows, cols) = (m.rows(), m.cols());
    match m {
        Matrix::Affine {
            words,
            scales,
            biases,
            dtype,
            bits,
            group,
            ..
        } if t > 1 && x86::vnni_available() && gemm::fits(cols, *bits, *group) => {
            scratch.panels.set(xs, t, cols, *group);
            let packed = gemm::PackedRows {
                words: words.bytes(),
                scales: scales.bytes(),
                biases: biases.bytes(),
                dtype: *dtype,
                bits: *bits,
                group: *group,
                rows,
                cols,
            };
            let (panels, out) = (&scratch.panels, gemm::TokenMajorOut::new(ys));
            pool().run(rows.div_ceil(GEMM_ROWS_PER_TASK), &|c| {
                let first = c * GEMM_ROWS_PER_TASK;
                let n = GEMM_ROWS_PER_TASK.min(rows - first);
                // SAFETY: VNNI and `fits` checked in the match guard, the panels set for this
                // matrix above, `ys` borrowed until `run` returns, and task `c` alone writes
                // rows `first..first + n`.
                unsafe { gemm::affine_gemm_rows(&packed, panels, first, n, out) }
            });
            true
        }
        Matrix::Float { data, dtype, .. } if t > 1 && x86::avx512_available() => {
            scratch.float_panels.set(xs, t, cols);
            let (panels, out) = (&scratch.float_panels, gemm::TokenMajorOut::new(ys));
            let (bytes, dtype) = (data.bytes(), *dtype);
            pool().run(rows.div_ceil(GEMM_ROWS_PER_TASK), &|c| {
                let first = c * GEMM_ROWS_PER_TASK;
                let n = GEMM_ROWS_PER_TASK.min(rows - first);
                // SAFETY: AVX-512 checked in the match guard, the panels set for this matrix
                // above, `ys` borrowed until `run` returns, and task `c` alone writes rows
                // `first..first + n`.
                unsafe { gemm::float_gemm_rows(bytes, dtype, rows, cols, panels, first, n, out) }
            });
            true
        }
        Matrix::Float { data, dtype, .. } => {
            let bytes = data.bytes();
            let size = dtype.size();
            drive(rows, t, ys, &mut scratch.by_row, |first, out| {
                for (r, o) in out.chunks_exact_mut(t).enumerate() {
                    let row = &bytes[(first + r) * cols * size..(first + r + 1) * cols * size];
                    // Prompt: four tokens per pass over the row.
                    let blocks = t / 4;
                    for q in 0..blocks {
                        let x = |i: usize| &xs[(4 * q + i) * cols..(4 * q + i + 1) * cols];
                        // SAFETY: `x86::available()` was checked by the caller.
                        let y =
                            unsafe { x86::float_row_dot4(row, *dtype, [x(0), x(1), x(2), x(3)]) };
                        o[4 * q..4 * q + 4].copy_from_slice(&y);
                    }
                    for (k, y) in o.iter_mut().enumerate().skip(4 * blocks) {
                        let x = &xs[k * cols..(k + 1) * cols];
                        // SAFETY: `x86::available()` was checked by the caller.
                        *y = unsafe { x86::float_row_dot(row, *dtype, x) };
                    }
                }
            });
            true
        }
        Matrix::Affine {
            words,
            scales,
            biases,
            dtype,
            bits: 4,
            group,
            ..
        } if group % 16 == 0 => {
            let groups = cols / group;
            scratch.xperm.clear();
            let mut one = Vec::new();
            for k in 0..t {
                x86::permute_for_q4(&xs[k * cols..(k + 1) * cols], &mut one);
                scratch.xperm.extend_from_slice(&one);
            }
            let (xperm, xsums) = (&scratch.xperm, &scratch.xsums);
            let (bytes, sb, bb) = (words.bytes(), scales.bytes(), biases.bytes());
            let row_bytes = cols / 2;
            drive(rows, t, ys, &mut scratch.by_row, |first, out| {
                let mut s = Vec::with_capacity(groups);
                let mut b = Vec::with_capacity(groups);
                for (r, o) in out.chunks_exact_mut(t).enumerate() {
                    let row = first + r;
                    let sz = dtype.size();
                    dtype.widen(&sb[row * groups * sz..(row + 1) * groups * sz], &mut s);
                    dtype.widen(&bb[row * groups * sz..(row + 1) * groups * sz], &mut b);
                    let w = &bytes[row * row_bytes..(row + 1) * row_bytes];
                    for (k, y) in o.iter_mut().enumerate() {
                        // SAFETY: `x86::available()` was checked by the caller.
                        *y = unsafe {
                            x86::q4_row_dot(
                                w,
                                &s,
                                &b,
                                &xperm[k * cols..(k + 1) * cols],
                                &xsums[k * groups..(k + 1) * groups],
                                *group,
                            )
                        };
                    }
                }
            });
            true
        }
        _ => false,
    }
}

/// Buffers `matmul` reuses across calls (no allocation per token once warm).
#[derive(Default)]
pub struct MatmulScratch {
    xsums: Vec<f32>,
    xperm: Vec<f32>,
    by_row: Vec<f32>,
    #[cfg(target_arch = "x86_64")]
    split: super::x86::SplitActivations,
    #[cfg(target_arch = "x86_64")]
    panels: super::gemm::TokenPanels,
    #[cfg(target_arch = "x86_64")]
    float_panels: super::gemm::FloatPanels,
}

/// `x * rsqrt(mean(x²) + eps) * weight`, in place.
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let ms = dot(x, x) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v = *v * inv * w;
    }
}

/// `out = x` normalized (out-of-place form of [`rms_norm`]).
pub fn rms_norm_into(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm(out, weight, eps);
}

/// Rotary embedding of one head at `pos`, mlx's non-traditional layout (pairs i, i + d/2).
/// `table` holds the position's (cos, sin) pairs ([`rope_table`]).
pub fn rope(head: &mut [f32], table: &[(f32, f32)]) {
    let half = head.len() / 2;
    let (first, second) = head.split_at_mut(half);
    for ((a, b), &(cos, sin)) in first.iter_mut().zip(second).zip(table) {
        let (x, y) = (*a, *b);
        *a = x * cos - y * sin;
        *b = x * sin + y * cos;
    }
}

/// Appends the (cos, sin) pairs of position `pos`: computed once per token for every head and
/// layer (the angles are the same; sin/cos per head and layer cost ~4% of a decode step).
pub fn rope_table(pos: usize, inv_freq: &[f32], out: &mut Vec<(f32, f32)>) {
    out.extend(inv_freq.iter().map(|&f| {
        let (sin, cos) = (pos as f32 * f).sin_cos();
        (cos, sin)
    }));
}

/// SiLU(gate) * up, into `gate`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    silu_mul_simd(gate, up)
}

simd_dispatch! {
    fn silu_mul_simd(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + exp(-*g)) * u;
        }
    }
}

/// `e^x` in plain arithmetic the compiler vectorizes (libm's `expf` is a call per element):
/// Cephes' range reduction (`x = n·ln 2 + r`, ln 2 in two parts) and degree-6 polynomial,
/// within 2 ulp of `expf` on -87.3..88.4; 0 below, ~2.4e38 up to 88.72 and inf above (as
/// `expf`, so SiLU gives -0 for very negative inputs).
#[inline(always)]
pub fn exp(x_in: f32) -> f32 {
    let x = x_in.clamp(-87.336_54, 88.376_26);
    // n = round(x / ln 2) by the 1.5·2^23 trick (no libm call, vectorizes).
    let magic = 12_582_912.0f32;
    let n = (x * std::f32::consts::LOG2_E + magic) - magic;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    let e = e * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x_in < -87.336_54 {
        0.0
    } else if x_in > 88.722_83 {
        f32::INFINITY
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::weights::Blob;

    /// The dispatched `matmul` (AVX2 kernels on this machine) against the portable kernels, for
    /// every format, one token and several.
    #[test]
    fn dispatched_kernels_equal_the_portable_ones() {
        // 1024 columns: 16 groups of 64 (a full window of the decode kernel); 43 rows: partial
        // tasks and a partial block of the prompt GEMM's 8 rows.
        let (rows, cols) = (43, 1024);
        let mut rng = crate::testkit::Rng::new(3);
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32()).collect();
        let mut mats = Vec::new();
        for dtype in [FloatDtype::F32, FloatDtype::F16, FloatDtype::BF16] {
            let mut bytes = Vec::new();
            dtype.narrow(&values, &mut bytes);
            mats.push(Matrix::Float {
                data: Blob::from_bytes(&bytes),
                dtype,
                rows,
                cols,
            });
        }
        // (4, 128): 8 groups per row, a partial window of the 16-group decode kernel. 2, 3, 5
        // and 6 bits: codes straddling bytes (VBMI unpacking where the CPU has it).
        let widths = [
            (4, 64),
            (4, 32),
            (4, 128),
            (8, 64),
            (3, 32),
            (2, 64),
            (5, 32),
            (6, 128),
        ];
        for (bits, group) in widths {
            let a = Affine::new(bits, group).unwrap();
            let (mut w, mut s, mut b) = (Vec::new(), Vec::new(), Vec::new());
            for row in values.chunks_exact(cols) {
                let mut words = vec![0u32; a.words_per_row(cols)];
                let (mut sc, mut bi) = (vec![0f32; cols / group], vec![0f32; cols / group]);
                a.quantize_row(row, FloatDtype::BF16, &mut words, &mut sc, &mut bi);
                w.extend(words.iter().flat_map(|x| x.to_le_bytes()));
                s.extend(sc);
                b.extend(bi);
            }
            let (mut sb, mut bb) = (Vec::new(), Vec::new());
            FloatDtype::BF16.narrow(&s, &mut sb);
            FloatDtype::BF16.narrow(&b, &mut bb);
            mats.push(Matrix::Affine {
                words: Blob::from_bytes(&w),
                scales: Blob::from_bytes(&sb),
                biases: Blob::from_bytes(&bb),
                dtype: FloatDtype::BF16,
                bits,
                group,
                rows,
                cols,
            });
        }
        // 1: decode kernels; 3 and 6: one partial tile of 16 tokens (and, without VNNI, the
        // four-token blocks plus a remainder); 21: a full tile and a partial one.
        for t in [1usize, 3, 6, 21] {
            let xs: Vec<f32> = (0..t * cols).map(|_| rng.next_f32()).collect();
            for m in &mats {
                let mut fast = vec![0f32; t * rows];
                matmul(m, &xs, t, &mut fast, &mut MatmulScratch::default());
                let mut xsums = Vec::new();
                if let Matrix::Affine { group, .. } = m {
                    for k in 0..t {
                        for g in xs[k * cols..(k + 1) * cols].chunks_exact(*group) {
                            xsums.push(g.iter().sum());
                        }
                    }
                }
                let mut by_row = vec![0f32; rows * t];
                rows_times_vectors(m, &xs, t, &xsums, 0, &mut by_row);
                if t == 1 {
                    // The fused decode region gives the same outputs as separate products.
                    let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
                    let mut scratch = MatmulScratch::default();
                    matmul_many(&mut [(m, &mut a), (m, &mut b)], &xs, 1, &mut scratch);
                    assert_eq!(a, fast);
                    assert_eq!(b, fast);
                }
                // The AVX-512 VNNI kernels round activations to 16 bits per group (every width,
                // decode and prompt); float rows stay f32.
                let tolerance = match m {
                    Matrix::Affine { .. } => 2e-3,
                    Matrix::Float { .. } => 1e-4,
                };
                for k in 0..t {
                    for r in 0..rows {
                        let (a, b) = (fast[k * rows + r], by_row[r * t + k]);
                        assert!(
                            (a - b).abs() <= tolerance * b.abs().max(1.0),
                            "t {t} row {r}: {a} vs {b}"
                        );
                    }
                }
            }
        }
        // A mixed-width region (as mixed recipes make: 4-bit beside 8- and 2-bit, group 64):
        // both activation layouts prepared, each matrix equal to its own product.
        let xs: Vec<f32> = (0..cols).map(|_| rng.next_f32()).collect();
        let group64: Vec<&Matrix> = mats
            .iter()
            .filter(|m| matches!(m, Matrix::Affine { group: 64, .. }))
            .collect();
        assert_eq!(group64.len(), 3);
        let alone: Vec<Vec<f32>> = group64
            .iter()
            .map(|m| {
                let mut y = vec![0f32; rows];
                matmul(m, &xs, 1, &mut y, &mut MatmulScratch::default());
                y
            })
            .collect();
        let mut outs = vec![vec![0f32; rows]; 3];
        let mut products: Vec<(&Matrix, &mut [f32])> = group64
            .iter()
            .zip(outs.iter_mut())
            .map(|(m, y)| (*m, &mut y[..]))
            .collect();
        matmul_many(&mut products, &xs, 1, &mut MatmulScratch::default());
        assert_eq!(outs, alone);
    }
    use crate::convert::quant::affine::Affine;
    use crate::convert::quant::pack::unpack_at;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm_and_silu_saturates() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.013;
        }
        assert!(
            worst <= 3.0 * f32::EPSILON,
            "worst relative error {worst:e}"
        );
        assert_eq!(exp(0.0), 1.0);
        let (mut gate, up) = (vec![-1000.0, -90.0, 0.0, 1.0, 90.0, 1000.0], vec![1.0; 6]);
        silu_mul(&mut gate, &up);
        assert_eq!(&gate[..3], &[-0.0, -0.0, 0.0]);
        assert!((gate[3] - 1.0 / (1.0 + (-1f32).exp())).abs() <= 1e-6);
        assert_eq!(&gate[4..], &[90.0, 1000.0]);
    }

    #[test]
    fn packed_dot_equals_the_dequantized_dot() {
        // Build one quantized row with the convert kernel, then compare the packed dot with a
        // dot over the explicitly dequantized values, for every width the engine runs.
        for bits in [2u32, 3, 4, 5, 6, 8] {
            let cols = 128;
            let a = Affine::new(bits, 64).unwrap();
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
                .collect();
            let w: Vec<f32> = (0..cols)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0)
                .collect();
            let mut words = vec![0u32; a.words_per_row(cols)];
            let (mut s, mut b) = (vec![0f32; 2], vec![0f32; 2]);
            a.quantize_row(&w, FloatDtype::F32, &mut words, &mut s, &mut b);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let sb: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
            let bb: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
            let xsum: Vec<f32> = x.chunks(64).map(|g| g.iter().sum()).collect();
            let got = affine_row_dot(
                &bytes,
                &sb,
                &bb,
                FloatDtype::F32,
                bits,
                64,
                0,
                cols,
                &x,
                &xsum,
            );
            let want: f32 = (0..cols)
                .map(|i| (unpack_at(&words, bits, i) as f32 * s[i / 64] + b[i / 64]) * x[i])
                .sum();
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "bits {bits}: {got} vs {want}"
            );
        }
    }
}
