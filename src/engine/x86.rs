//! Explicit x86 kernels for decoding (one token, or several sequences' tokens at once) and for
//! 4-bit prompts on CPUs without AVX-512: AVX2 float rows and 4-bit rows (MLX's packing: byte b
//! of a row holds codes 2b in its low nibble and 2b + 1 in its high one; one row against one
//! vector, or a task's rows against up to 8 vectors, each row's codes widened once), the
//! activations split into two signed bytes that the AVX-512 VNNI kernels read
//! ([`SplitActivations`]: the 4-bit tiled kernel of `tiles`, mxfp4 rows, and 2/3/5/6/8-bit rows
//! with VBMI). Each matrix is given one of them when the model loads
//! (`kernels::Kernels`, from `crate::simd::cpu()` and its shape); the portable kernels compute
//! the same sums in another order.

use std::arch::x86_64::*;

use super::weights::{FpRows, QuantizedRows};
use crate::mlx::fp::FpMode;
use crate::mlx::FloatDtype;

/// Distance in floats between consecutive vectors of [`permute_many_for_q4`]: a cache line
/// more than a vector. Vectors of 1024 columns packed back to back sit 4 KiB apart, in the same
/// L1 set: eight of them, the widened weights and the weight stream wanted more lines of that
/// set than L1 has ways, and [`q4_rows_many`] missed L1 at every load.
pub fn q4_vector_stride(cols: usize) -> usize {
    cols + 16
}

/// `n` vectors of `xs` (`n × cols`) reordered for [`q4_row_dot`] and [`q4_rows_many`] (per 16
/// values, the 8 even-indexed ones then the 8 odd: the order MLX packs a byte's two codes in),
/// vector `k` at `k * q4_vector_stride(cols)` (the gap zeroed).
pub fn permute_many_for_q4(xs: &[f32], n: usize, cols: usize, out: &mut Vec<f32>) {
    let stride = q4_vector_stride(cols);
    out.clear();
    out.reserve(n * stride);
    for x in xs.chunks_exact(cols).take(n) {
        for c in x.chunks_exact(16) {
            out.extend((0..8).map(|j| c[2 * j]));
            out.extend((0..8).map(|j| c[2 * j + 1]));
        }
        out.resize(out.len() + stride - cols, 0.0);
    }
}

/// Sum of the 8 lanes.
///
/// # Safety
/// The CPU must support AVX (every caller runs with AVX2 enabled).
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// One output of a 4-bit row: `Σ_g scale_g · Σ q·x + bias_g · Σ x`.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`crate::simd::cpu().avx2`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q4_row_dot(
    bytes: &[u8],
    scales: &[f32],
    biases: &[f32],
    xperm: &[f32],
    xsum: &[f32],
    group: usize,
) -> f32 {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let groups = scales.len();
        // Checked once per row: every pointer below stays inside these slices.
        assert!(
            group.is_multiple_of(16)
                && biases.len() == groups
                && xsum.len() >= groups
                && bytes.len() >= groups * group / 2
                && xperm.len() >= groups * group
        );
        let mask = _mm256_set1_epi32(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut bias_sum = 0f32;
        let (bp, xp) = (bytes.as_ptr(), xperm.as_ptr());
        for g in 0..groups {
            let mut even = _mm256_setzero_ps();
            let mut odd = _mm256_setzero_ps();
            for c in 0..group / 16 {
                let b = g * group / 2 + c * 8;
                let x = g * group + c * 16;
                let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(bp.add(b) as *const __m128i));
                let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
                let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
                even = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xp.add(x)), even);
                odd = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xp.add(x + 8)), odd);
            }
            acc = _mm256_fmadd_ps(_mm256_add_ps(even, odd), _mm256_set1_ps(scales[g]), acc);
            bias_sum += biases[g] * xsum[g];
        }
        hsum(acc) + bias_sum
    }
}

/// Most vectors [`q4_rows_many`] takes in one call.
pub const MAX_Q4_AVX2_VECTORS: usize = 8;

/// Floats of activations (all vectors together) one column block of [`q4_rows_many`] spans:
/// 16 KiB, half of L1, so a block's activations stay there while every row of the task passes
/// over them (the whole of 8 vectors of 4096 columns is 128 KiB: streamed from L2 once per row,
/// it made the batched step slower than the FMAs it feeds).
const Q4_BLOCK_FLOATS: usize = 4096;

/// How many rows ahead [`q4_rows_many`] prefetches a row's block of codes.
const Q4_PREFETCH_ROWS: usize = 2;

/// What [`q4_rows_many`] keeps between calls: each (row, vector)'s running accumulator, and
/// one row's codes of one column block widened to floats.
#[derive(Default)]
pub struct Q4ManyScratch {
    acc: Vec<f32>,
    unpacked: Vec<f32>,
    /// The vectors' group sums by group: 8 lanes per group, lane k vector k's.
    xsums_t: Vec<f32>,
}

/// [`q4_row_dot`] of several rows against several vectors (`n` of them, 1 to
/// [`MAX_Q4_AVX2_VECTORS`]): `words` holds the rows (`row_bytes` each), `scales` / `biases`
/// their groups' values as f32 (`rows × groups`), `xperms` the vectors as
/// [`permute_many_for_q4`] lays them out, with group sums `xsums[k * groups..]`;
/// `out[r * n + k]` is row `r` against vector `k`. Every output gets exactly the operations of `q4_row_dot`, in its order
/// (per group an even and an odd accumulator, then `acc += (even + odd) · scale`, the bias
/// terms summed group by group, `hsum(acc) + bias_sum`): bit-identical to that vector's own
/// decode. What differs is the loop order: columns in blocks whose activations stay in L1
/// while each row's codes in the block are widened once and dotted with every vector, in
/// passes of at most four (a pass's 3 × 4 accumulators and two weight registers fit in
/// AVX2's sixteen); the accumulators wait in `scratch` between blocks.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`crate::simd::cpu().avx2`).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn q4_rows_many(
    words: &[u8],
    row_bytes: usize,
    scales: &[f32],
    biases: &[f32],
    group: usize,
    xperms: &[f32],
    xsums: &[f32],
    n: usize,
    scratch: &mut Q4ManyScratch,
    out: &mut [f32],
) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices the assertion covers.
    unsafe {
        let cols = 2 * row_bytes;
        let groups = cols / group.max(1);
        let rows = out.len() / n.max(1);
        // Checked once per call: every pointer below stays inside these slices.
        assert!(
            group.is_multiple_of(16)
                && groups * group == cols
                && (1..=MAX_Q4_AVX2_VECTORS).contains(&n)
                && out.len() == rows * n
                && scales.len() == rows * groups
                && biases.len() == rows * groups
                && words.len() >= rows * row_bytes
                && xsums.len() >= n * groups
                && xperms.len() >= (n - 1) * q4_vector_stride(cols) + cols
        );
        let block_groups = (Q4_BLOCK_FLOATS / (n * group)).clamp(1, groups);
        scratch.acc.clear();
        scratch.acc.resize(rows * n * 8, 0.0);
        scratch.unpacked.resize(block_groups * group, 0.0);
        let (acc, w) = (scratch.acc.as_mut_ptr(), scratch.unpacked.as_mut_ptr());
        let mask = _mm256_set1_epi32(0x0F);
        // Even passes: 8 → 4 + 4, 7 → 4 + 3, 5 → 3 + 2.
        let passes = n.div_ceil(4);
        let mut g0 = 0;
        while g0 < groups {
            let bg = block_groups.min(groups - g0);
            let (c0, bc) = (g0 * group, bg * group);
            for r in 0..rows {
                // The block of the row `Q4_PREFETCH_ROWS` ahead (past the last row: the next
                // block's first rows): rows are visited a block at a time, a stride the
                // hardware prefetchers do not follow, and each block's bytes waited on DRAM.
                let ahead = r + Q4_PREFETCH_ROWS;
                let next = if ahead < rows {
                    Some((ahead, c0 / 2, bc / 2))
                } else if g0 + bg < groups {
                    let nbg = block_groups.min(groups - g0 - bg);
                    Some((ahead - rows, (c0 + bc) / 2, nbg * group / 2))
                } else {
                    None
                };
                if let Some((pr, at, len)) = next.filter(|&(pr, _, _)| pr < rows) {
                    let p = words.as_ptr().add(pr * row_bytes + at);
                    for line in (0..len).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(p.add(line) as *const i8);
                    }
                }
                let bp = words.as_ptr().add(r * row_bytes + c0 / 2);
                for i in 0..bc / 16 {
                    let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(bp.add(8 * i) as *const __m128i));
                    _mm256_storeu_ps(w.add(16 * i), _mm256_cvtepi32_ps(_mm256_and_si256(v, mask)));
                    _mm256_storeu_ps(
                        w.add(16 * i + 8),
                        _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)),
                    );
                }
                let sc = &scales[r * groups + g0..r * groups + g0 + bg];
                let x = |k: usize| xperms.as_ptr().add(k * q4_vector_stride(cols) + c0);
                let a = |k: usize| acc.add((r * n + k) * 8);
                let mut k = 0;
                for p in 0..passes {
                    let size = (n - k) / (passes - p);
                    match size {
                        1 => q4_pass::<1>(w, sc, [x(k)], group, [a(k)]),
                        2 => q4_pass::<2>(w, sc, [x(k), x(k + 1)], group, [a(k), a(k + 1)]),
                        3 => q4_pass::<3>(
                            w,
                            sc,
                            [x(k), x(k + 1), x(k + 2)],
                            group,
                            [a(k), a(k + 1), a(k + 2)],
                        ),
                        _ => q4_pass::<4>(
                            w,
                            sc,
                            [x(k), x(k + 1), x(k + 2), x(k + 3)],
                            group,
                            [a(k), a(k + 1), a(k + 2), a(k + 3)],
                        ),
                    }
                    k += size;
                }
            }
            g0 += bg;
        }
        // The bias terms of all the vectors at once, one lane per vector: lane k does
        // `bias_sum += bias · xsum_k` group by group, `q4_row_dot`'s scalar operations.
        let sums_t = &mut scratch.xsums_t;
        sums_t.clear();
        sums_t.resize(groups * 8, 0.0);
        for k in 0..n {
            for g in 0..groups {
                sums_t[g * 8 + k] = xsums[k * groups + g];
            }
        }
        let mut lanes = [0f32; 8];
        for r in 0..rows {
            let mut bias_sum = _mm256_setzero_ps();
            for (g, &b) in biases[r * groups..(r + 1) * groups].iter().enumerate() {
                let s = _mm256_loadu_ps(sums_t.as_ptr().add(g * 8));
                bias_sum = _mm256_add_ps(bias_sum, _mm256_mul_ps(_mm256_set1_ps(b), s));
            }
            _mm256_storeu_ps(lanes.as_mut_ptr(), bias_sum);
            for k in 0..n {
                out[r * n + k] = hsum(_mm256_loadu_ps(acc.add((r * n + k) * 8))) + lanes[k];
            }
        }
    }
}

/// One pass of [`q4_rows_many`]: `P` vectors over one row's block (`w`, widened, in the
/// permuted order the vectors are in; one scale per group), each vector's `q4_row_dot`
/// accumulator carried in and out through `acc[k]`.
///
/// # Safety
/// AVX2 and FMA; `w` and each `x[k]` hold `scales.len() * group` floats, each `acc[k]` 8.
#[inline(always)]
unsafe fn q4_pass<const P: usize>(
    w: *const f32,
    scales: &[f32],
    x: [*const f32; P],
    group: usize,
    acc: [*mut f32; P],
) {
    // SAFETY: this function's `# Safety` contract.
    unsafe {
        let mut sum = [_mm256_setzero_ps(); P];
        for k in 0..P {
            sum[k] = _mm256_loadu_ps(acc[k]);
        }
        for (g, &scale) in scales.iter().enumerate() {
            let mut even = [_mm256_setzero_ps(); P];
            let mut odd = [_mm256_setzero_ps(); P];
            for c in 0..group / 16 {
                let i = g * group + c * 16;
                let lo = _mm256_loadu_ps(w.add(i));
                let hi = _mm256_loadu_ps(w.add(i + 8));
                for k in 0..P {
                    even[k] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x[k].add(i)), even[k]);
                    odd[k] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x[k].add(i + 8)), odd[k]);
                }
            }
            let s = _mm256_set1_ps(scale);
            for k in 0..P {
                sum[k] = _mm256_fmadd_ps(_mm256_add_ps(even[k], odd[k]), s, sum[k]);
            }
        }
        for k in 0..P {
            _mm256_storeu_ps(acc[k], sum[k]);
        }
    }
}

/// `Σ w·x` over a bf16 row.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`crate::simd::cpu().avx2`).
#[target_feature(enable = "avx2,fma")]
unsafe fn bf16_row_dot(bytes: &[u8], x: &[f32]) -> f32 {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let n = x.len();
        assert!(bytes.len() >= 2 * n);
        let (bp, xp) = (bytes.as_ptr(), x.as_ptr());
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm256_loadu_si256(bp.add(2 * i) as *const __m256i);
            let lo = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), 16);
            let hi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)), 16);
            a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(lo), _mm256_loadu_ps(xp.add(i)), a0);
            a1 = _mm256_fmadd_ps(_mm256_castsi256_ps(hi), _mm256_loadu_ps(xp.add(i + 8)), a1);
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            s += FloatDtype::BF16.value_at(bytes, i) * x[i];
            i += 1;
        }
        s
    }
}

/// `Σ w·x` over an f16 row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`crate::simd::cpu().avx2`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_row_dot(bytes: &[u8], x: &[f32]) -> f32 {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let n = x.len();
        assert!(bytes.len() >= 2 * n);
        let (bp, xp) = (bytes.as_ptr(), x.as_ptr());
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(bp.add(2 * i) as *const __m128i));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(bp.add(2 * i + 16) as *const __m128i));
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(i)), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(i + 8)), a1);
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            s += FloatDtype::F16.value_at(bytes, i) * x[i];
            i += 1;
        }
        s
    }
}

/// `Σ w·x` over an f32 row.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`crate::simd::cpu().avx2`).
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_row_dot(bytes: &[u8], x: &[f32]) -> f32 {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let n = x.len();
        assert!(bytes.len() >= 4 * n);
        let (bp, xp) = (bytes.as_ptr() as *const f32, x.as_ptr());
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(bp.add(i)), _mm256_loadu_ps(xp.add(i)), a0);
            a1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(bp.add(i + 8)),
                _mm256_loadu_ps(xp.add(i + 8)),
                a1,
            );
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            s += FloatDtype::F32.value_at(bytes, i) * x[i];
            i += 1;
        }
        s
    }
}

/// `Σ w·x` over a float row of `dtype`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`crate::simd::cpu().avx2`).
pub unsafe fn float_row_dot(bytes: &[u8], dtype: FloatDtype, x: &[f32]) -> f32 {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        match dtype {
            FloatDtype::BF16 => bf16_row_dot(bytes, x),
            FloatDtype::F16 => f16_row_dot(bytes, x),
            FloatDtype::F32 => f32_row_dot(bytes, x),
        }
    }
}

/// `Σ w·x` over one microscaling-float row: `packed` holds its `cols · bits / 8` bytes of
/// MLX's LSB-first codes, `scales` one u8 per group. Each element is widened to f32 exactly —
/// FP4 E2M1 through an 8-entry table plus the sign bit, FP8 E4M3 as the f16 with the same bits
/// shifted into place (its value times 2^-8, undone in the scale) — multiplied by its group's
/// scale (exact: a power of two, or nvfp4's 4-bit-mantissa FP8) and multiply-added to `x`, as
/// mlx's quantized matmul does. 32 elements per step into four accumulators (one would make
/// the FMA latency the bound).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`crate::simd::cpu().avx2`).
pub unsafe fn fp_row_dot(packed: &[u8], scales: &[u8], mode: FpMode, x: &[f32]) -> f32 {
    let n = x.len();
    assert!(
        n.is_multiple_of(32)
            && packed.len() >= n * mode.bits() as usize / 8
            && scales.len() >= n / mode.group_size()
    );
    // SAFETY: the caller's contract gives the CPU features; the assertion covers the reads.
    unsafe {
        match mode {
            FpMode::Mxfp4 => {
                fp_blocks::<false>(packed, |b| e8m0(scales[b]), |b| e8m0(scales[b]), x)
            }
            FpMode::Nvfp4 => {
                let table = nvfp4_scales();
                fp_blocks::<false>(
                    packed,
                    |b| table[usize::from(scales[2 * b])],
                    |b| table[usize::from(scales[2 * b + 1])],
                    x,
                )
            }
            // The f16 holding an E4M3 value is that value times 2^-8.
            FpMode::Mxfp8 => fp_blocks::<true>(
                packed,
                |b| e8m0(scales[b]) * 256.0,
                |b| e8m0(scales[b]) * 256.0,
                x,
            ),
        }
    }
}

/// Prefetches one row of a microscaling-float matrix (its codes and scales) into L1: the
/// decode loop asks for a row a few ahead of the one it multiplies, as the hardware
/// prefetchers do not start on their own early enough (without it, ~60% of the kernel's time
/// was the first load of each row).
///
/// # Safety
/// The CPU must support SSE (every x86-64 does).
pub unsafe fn prefetch_fp_row(codes: &[u8], scales: &[u8]) {
    // SAFETY: every address is inside the slices (a prefetch does not fault anyway).
    unsafe {
        for line in (0..codes.len()).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(codes.as_ptr().add(line) as *const i8);
        }
        _mm_prefetch::<_MM_HINT_T0>(scales.as_ptr() as *const i8);
    }
}

/// `x` in the element order [`fp_row_dot_512`] reads FP4 codes in: per 16 elements,
/// `0, 8, 1, 9, …, 7, 15` (lane `2k` holds element `k`, lane `2k + 1` element `k + 8`).
pub fn interleave_for_fp4(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    for block in x.chunks_exact(16) {
        for k in 0..8 {
            out.push(block[k]);
            out.push(block[k + 8]);
        }
    }
}

/// [`fp_row_dot`] on AVX-512 for `R` rows at once (each `x` load serves all of them), 32
/// elements per step into 16-lane registers. FP4 codes are widened with no shuffle but the
/// table lookup: a 16-element run's 8 bytes are broadcast as a pair of dwords, each lane
/// shifts its own nibble down and `vpermps` (which reads an index's low four bits) looks its
/// value up, sign included — so the lanes hold the elements in the order
/// [`interleave_for_fp4`] gives `x` (`xi`). FP8 codes go through F16C in order (`xi` is then
/// `x` itself). The AVX2 kernel was compute-bound; this one has a third of its instructions
/// per element and one on the shuffle port per 16.
///
/// # Safety
/// The CPU must support AVX-512 F, FMA and F16C (`crate::simd::cpu().avx512`).
pub unsafe fn fp_rows_512<const R: usize>(
    packed: [&[u8]; R],
    scales: [&[u8]; R],
    mode: FpMode,
    xi: &[f32],
) -> [f32; R] {
    let n = xi.len();
    for r in 0..R {
        assert!(
            n.is_multiple_of(32)
                && packed[r].len() >= n * mode.bits() as usize / 8
                && scales[r].len() >= n / mode.group_size()
        );
    }
    let pp = packed.map(|p| p.as_ptr());
    // SAFETY: the caller's contract gives the CPU features; the assertion covers the reads.
    unsafe {
        match mode {
            FpMode::Mxfp4 => fp_blocks_512::<false, R>(
                pp,
                |r, b| e8m0(scales[r][b]),
                |r, b| e8m0(scales[r][b]),
                xi,
            ),
            FpMode::Nvfp4 => {
                let table = nvfp4_scales();
                fp_blocks_512::<false, R>(
                    pp,
                    |r, b| table[usize::from(scales[r][2 * b])],
                    |r, b| table[usize::from(scales[r][2 * b + 1])],
                    xi,
                )
            }
            // The f16 holding an E4M3 value is that value times 2^-8.
            FpMode::Mxfp8 => fp_blocks_512::<true, R>(
                pp,
                |r, b| e8m0(scales[r][b]) * 256.0,
                |r, b| e8m0(scales[r][b]) * 256.0,
                xi,
            ),
        }
    }
}

/// [`fp_blocks`] on AVX-512 for `R` rows (see [`fp_rows_512`] for the FP4 lane order).
///
/// # Safety
/// As [`fp_rows_512`], whose assertion covers the reads.
#[inline]
#[target_feature(enable = "avx512f,fma,f16c")]
unsafe fn fp_blocks_512<const FP8: bool, const R: usize>(
    pp: [*const u8; R],
    first: impl Fn(usize, usize) -> f32,
    second: impl Fn(usize, usize) -> f32,
    xi: &[f32],
) -> [f32; R] {
    // SAFETY: this function's `# Safety` contract gives the CPU features and the bounds.
    unsafe {
        let xp = xi.as_ptr();
        let e2m1 = _mm512_setr_ps(
            0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
        );
        // Lanes 2k and 2k + 1 shift their dword by 4k: nibble k of the low dword (element
        // k) and of the high one (element k + 8).
        let shifts = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
        let fp4 = |p: *const u8, i: usize| -> __m512 {
            let pair = (p.add(i / 2) as *const i64).read_unaligned();
            _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64(pair), shifts), e2m1)
        };
        let (magnitude_bits, sign_bit8) = (_mm256_set1_epi16(0x7F), _mm256_set1_epi16(0x80));
        let fp8 = |p: *const u8, i: usize| -> __m512 {
            let codes = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(i) as *const __m128i));
            _mm512_cvtph_ps(_mm256_or_si256(
                _mm256_slli_epi16(_mm256_and_si256(codes, magnitude_bits), 7),
                _mm256_slli_epi16(_mm256_and_si256(codes, sign_bit8), 8),
            ))
        };
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for b in 0..xi.len() / 32 {
            let i = 32 * b;
            let (x0, x1) = (_mm512_loadu_ps(xp.add(i)), _mm512_loadu_ps(xp.add(i + 16)));
            for r in 0..R {
                let (s0, s1) = (_mm512_set1_ps(first(r, b)), _mm512_set1_ps(second(r, b)));
                let (w0, w1) = if FP8 {
                    (fp8(pp[r], i), fp8(pp[r], i + 16))
                } else {
                    (fp4(pp[r], i), fp4(pp[r], i + 16))
                };
                acc[r][0] = _mm512_fmadd_ps(_mm512_mul_ps(w0, s0), x0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(_mm512_mul_ps(w1, s1), x1, acc[r][1]);
            }
        }
        acc.map(|[a0, a1]| _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)))
    }
}

/// An E8M0 scale's value, `2^(s-127)`.
#[inline(always)]
fn e8m0(s: u8) -> f32 {
    FpMode::Mxfp4.scale(s)
}

/// The 256 nvfp4 scale values (FP8 E4M3), computed once.
fn nvfp4_scales() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|c| FpMode::Nvfp4.scale(c as u8)))
}

/// [`fp_row_dot`] over blocks of 32 elements: `first(b)` scales block `b`'s first 16,
/// `second(b)` its last 16 (the same group unless the groups are nvfp4's 16).
///
/// # Safety
/// As [`fp_row_dot`], whose assertion covers the reads.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fp_blocks<const FP8: bool>(
    packed: &[u8],
    first: impl Fn(usize) -> f32,
    second: impl Fn(usize) -> f32,
    x: &[f32],
) -> f32 {
    // SAFETY: this function's `# Safety` contract gives the CPU features and the bounds.
    unsafe {
        let (pp, xp) = (packed.as_ptr(), x.as_ptr());
        let magnitudes = _mm256_setr_ps(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0);
        let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        let (nibble, sign_bit) = (_mm256_set1_epi32(15), _mm256_set1_epi32(8));
        let (magnitude_bits, sign_bit8) = (_mm_set1_epi16(0x7F), _mm_set1_epi16(0x80));
        // Eight elements from element `i`.
        let widen = |i: usize| -> __m256 {
            if FP8 {
                let codes = _mm_cvtepu8_epi16(_mm_loadl_epi64(pp.add(i) as *const __m128i));
                _mm256_cvtph_ps(_mm_or_si128(
                    _mm_slli_epi16(_mm_and_si128(codes, magnitude_bits), 7),
                    _mm_slli_epi16(_mm_and_si128(codes, sign_bit8), 8),
                ))
            } else {
                // Four bytes, low nibble first; the table lookup reads a code's low three bits.
                let word = (pp.add(i / 2) as *const i32).read_unaligned();
                let codes =
                    _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word), shifts), nibble);
                let magnitude = _mm256_permutevar8x32_ps(magnitudes, codes);
                let sign = _mm256_slli_epi32(_mm256_and_si256(codes, sign_bit), 28);
                _mm256_xor_ps(magnitude, _mm256_castsi256_ps(sign))
            }
        };
        let (mut a0, mut a1, mut a2, mut a3) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        for b in 0..x.len() / 32 {
            let i = 32 * b;
            let (s0, s1) = (_mm256_set1_ps(first(b)), _mm256_set1_ps(second(b)));
            a0 = _mm256_fmadd_ps(_mm256_mul_ps(widen(i), s0), _mm256_loadu_ps(xp.add(i)), a0);
            a1 = _mm256_fmadd_ps(
                _mm256_mul_ps(widen(i + 8), s0),
                _mm256_loadu_ps(xp.add(i + 8)),
                a1,
            );
            a2 = _mm256_fmadd_ps(
                _mm256_mul_ps(widen(i + 16), s1),
                _mm256_loadu_ps(xp.add(i + 16)),
                a2,
            );
            a3 = _mm256_fmadd_ps(
                _mm256_mul_ps(widen(i + 24), s1),
                _mm256_loadu_ps(xp.add(i + 24)),
                a3,
            );
        }
        hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))
    }
}

/// `Σ w·x` of one float row against four tokens: each weight is widened once.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`crate::simd::cpu().avx2`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn float_row_dot4(bytes: &[u8], dtype: FloatDtype, x: [&[f32]; 4]) -> [f32; 4] {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let n = x[0].len();
        assert!(bytes.len() >= n * dtype.size() && x.iter().all(|v| v.len() == n));
        let bp = bytes.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 8 <= n {
            let w = match dtype {
                FloatDtype::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128(bp.add(2 * i) as *const __m128i)),
                    16,
                )),
                FloatDtype::F16 => {
                    _mm256_cvtph_ps(_mm_loadu_si128(bp.add(2 * i) as *const __m128i))
                }
                FloatDtype::F32 => _mm256_loadu_ps(bp.add(4 * i) as *const f32),
            };
            for k in 0..4 {
                acc[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x[k].as_ptr().add(i)), acc[k]);
            }
            i += 8;
        }
        let mut out = [0f32; 4];
        for k in 0..4 {
            out[k] = hsum(acc[k]);
        }
        while i < n {
            let w = dtype.value_at(bytes, i);
            for k in 0..4 {
                out[k] += w * x[k][i];
            }
            i += 1;
        }
        out
    }
}

/// Largest |value| of a 16-bit activation code that splits into two signed bytes
/// (`v = 256·hi + lo`, both in -128..=127).
const SPLIT_MAX: f32 = 32639.0;

/// One token's activations for the VNNI decode kernels: quantized per group to 16 bits (scale
/// `amax / 32639`, round half away from zero), each code split into a low and a high signed
/// byte so that VNNI's byte dot product (`vpdpbusd`: unsigned codes × signed bytes, 64
/// products per instruction) computes 16-bit-exact sums: `Σ q·v = Σ q·lo + 256 · Σ q·hi`.
/// Two layouts, built when asked for:
/// - `nibble_order` (`tiles::TiledRows::decode`, [`mxfp4_rows_split`]): per 128 values (64 packed bytes of a 4-bit row), four
///   64-byte vectors in the order the packed bytes are read: low bytes of the even-indexed
///   values (the low nibbles' partners), their high bytes, then the same for the odd ones;
/// - `natural` ([`qn_rows_split`]): per 64 values, their 64 low bytes, then their 64 high ones.
#[derive(Default)]
pub struct SplitActivations {
    pub nibble_order: Vec<i8>,
    pub natural: Vec<i8>,
    pub scales: Vec<f32>,
}

/// The low and high signed bytes of a 16-bit code (`v = 256·hi + lo`, |v| <= 32639).
#[cfg(test)]
fn split(v: i16) -> (i8, i8) {
    let lo = v as i8;
    (lo, ((v - i16::from(lo)) >> 8) as i8)
}

impl SplitActivations {
    /// Prepares `x` (length a multiple of 128 and of `group`, group a multiple of 32) in the
    /// layouts asked for, and the per-group sums of `x` into `sums`: one AVX-512 pass (this
    /// runs on one thread between parallel regions, ~100 times per token).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW (`crate::simd::cpu().vnni` implies it).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn set_fast(
        &mut self,
        x: &[f32],
        group: usize,
        nibble_order: bool,
        natural: bool,
        sums: &mut Vec<f32>,
    ) {
        // SAFETY: this method's `# Safety` contract gives the CPU features; every pointer
        // below stays inside the slices its length checks cover.
        unsafe {
            let n = x.len();
            assert!(n.is_multiple_of(128) && group.is_multiple_of(32) && n.is_multiple_of(group));
            self.scales.clear();
            sums.clear();
            self.nibble_order.clear();
            self.nibble_order
                .resize(if nibble_order { 2 * n } else { 0 }, 0);
            self.natural.clear();
            self.natural.resize(if natural { 2 * n } else { 0 }, 0);
            let (xp, np, tp) = (
                x.as_ptr(),
                self.nibble_order.as_mut_ptr(),
                self.natural.as_mut_ptr(),
            );
            // Within 32 values: the 16 even-indexed ones, then the 16 odd ones.
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
            let half = _mm512_set1_ps(0.5);
            for g in 0..n / group {
                let base = g * group;
                let mut amax = _mm512_setzero_ps();
                let mut sum = _mm512_setzero_ps();
                for c in (0..group).step_by(16) {
                    let v = _mm512_loadu_ps(xp.add(base + c));
                    amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
                    sum = _mm512_add_ps(sum, v);
                }
                let amax = _mm512_reduce_max_ps(amax);
                sums.push(_mm512_reduce_add_ps(sum));
                let d = amax / SPLIT_MAX;
                self.scales.push(d);
                let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
                // Round half away from zero by truncation, as the scalar form; |v · inv| <= 32639.
                let quantize = |v: __m512| {
                    let y = _mm512_mul_ps(v, inv);
                    let signed_half = _mm512_or_ps(
                        half,
                        _mm512_and_ps(y, _mm512_castsi512_ps(_mm512_set1_epi32(i32::MIN))),
                    );
                    _mm512_cvttps_epi32(_mm512_add_ps(y, signed_half))
                };
                // 16 codes → their low and high signed bytes (`v = 256·hi + lo`).
                let split16 = |q: __m512i| {
                    let lo = _mm512_srai_epi32(_mm512_slli_epi32(q, 24), 24);
                    let hi = _mm512_srai_epi32(_mm512_sub_epi32(q, lo), 8);
                    (_mm512_cvtepi32_epi8(lo), _mm512_cvtepi32_epi8(hi))
                };
                for c in (0..group).step_by(32) {
                    let v = base + c;
                    let (a, b) = (_mm512_loadu_ps(xp.add(v)), _mm512_loadu_ps(xp.add(v + 16)));
                    if natural {
                        let at = (v / 64) * 128 + v % 64;
                        for (k, q) in [quantize(a), quantize(b)].into_iter().enumerate() {
                            let (lo, hi) = split16(q);
                            _mm_storeu_si128(tp.add(at + 16 * k) as *mut __m128i, lo);
                            _mm_storeu_si128(tp.add(at + 16 * k + 64) as *mut __m128i, hi);
                        }
                    }
                    if nibble_order {
                        let (block, w) = (v / 128, v % 128);
                        for (parity, idx) in [(0, even), (1, odd)] {
                            let q = quantize(_mm512_permutex2var_ps(a, idx, b));
                            let (lo, hi) = split16(q);
                            let at = block * 256 + parity * 128 + w / 2;
                            _mm_storeu_si128(np.add(at) as *mut __m128i, lo);
                            _mm_storeu_si128(np.add(at + 64) as *mut __m128i, hi);
                        }
                    }
                }
            }
        }
    }

    /// The scalar form of [`SplitActivations::set_fast`] (without the sums): the reference its
    /// test compares against.
    #[cfg(test)]
    fn set(&mut self, x: &[f32], group: usize, nibble_order: bool, natural: bool) {
        let mut codes: Vec<i16> = Vec::new();
        self.scales.clear();
        for g in x.chunks_exact(group) {
            let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / SPLIT_MAX;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            self.scales.push(d);
            // Round half away from zero by truncation (no libm call); |v * inv| <= 32639.
            codes.extend(g.iter().map(|&v| {
                let y = v * inv;
                (y + 0.5f32.copysign(y)) as i16
            }));
        }
        self.nibble_order.clear();
        if nibble_order {
            self.nibble_order.resize(2 * x.len(), 0);
            for (block, out) in codes
                .chunks_exact(128)
                .zip(self.nibble_order.chunks_exact_mut(256))
            {
                let (even, odd) = out.split_at_mut(128);
                for (half, parity) in [(even, 0), (odd, 1)] {
                    let (lo, hi) = half.split_at_mut(64);
                    for b in 0..64 {
                        (lo[b], hi[b]) = split(block[2 * b + parity]);
                    }
                }
            }
        }
        self.natural.clear();
        if natural {
            self.natural.resize(2 * x.len(), 0);
            for (block, out) in codes
                .chunks_exact(64)
                .zip(self.natural.chunks_exact_mut(128))
            {
                let (lo, hi) = out.split_at_mut(64);
                for b in 0..64 {
                    (lo[b], hi[b]) = split(block[b]);
                }
            }
        }
    }
}

/// Up to 16 stored values (scales or biases) of `dtype` at `p`, widened; lanes outside `m` are
/// zero and their memory is not read.
/// # Safety
/// The CPU must support AVX-512 F, BW and F16C; the 16 values of `dtype` at `p` selected by
/// `m` must be readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn widen16_masked(p: *const u8, dtype: FloatDtype, m: __mmask16) -> __m512 {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        match dtype {
            FloatDtype::BF16 => _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p as *const i16)),
                16,
            )),
            FloatDtype::F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p as *const i16)),
            FloatDtype::F32 => _mm512_maskz_loadu_ps(m, p as *const f32),
        }
    }
}

/// Asks for the cache lines of row `row`'s codes, scales and biases (a hint: no fault).
/// # Safety
/// Row `row` must lie inside `words`, `scales` and `biases` (a prefetch does not fault, but the
/// pointer arithmetic must stay in bounds).
#[inline(always)]
unsafe fn prefetch_row(
    words: &[u8],
    scales: &[u8],
    biases: &[u8],
    row: usize,
    row_bytes: usize,
    row_scales: usize,
) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let p = words.as_ptr().add(row * row_bytes);
        for line in (0..row_bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.add(line) as *const i8);
        }
        for line in (0..row_scales).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(scales.as_ptr().add(row * row_scales + line) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(biases.as_ptr().add(row * row_scales + line) as *const i8);
        }
    }
}

/// For the (up to 16) groups `base..` of a row (lanes in `m`): the row's scales times the
/// activation scales, and `acc` plus the bias terms `bias_g · Σ x_g`.
/// # Safety
/// The CPU must support AVX-512 F, BW, VL, FMA and F16C; the groups `base..` selected by `m`
/// must be readable at `scales`, `biases` (of `dtype`), `xd` and `xsum`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn window(
    scales: *const u8,
    biases: *const u8,
    dtype: FloatDtype,
    xd: *const f32,
    xsum: *const f32,
    base: usize,
    m: __mmask16,
    acc: __m512,
) -> (__m512, __m512) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let size = dtype.size();
        let sc = _mm512_mul_ps(
            widen16_masked(scales.add(base * size), dtype, m),
            _mm512_maskz_loadu_ps(m, xd.add(base)),
        );
        let acc = _mm512_fmadd_ps(
            widen16_masked(biases.add(base * size), dtype, m),
            _mm512_maskz_loadu_ps(m, xsum.add(base)),
            acc,
        );
        (sc, acc)
    }
}

/// Whether the split activations take rows of `cols` columns at this group size (what the
/// 4-bit tiled kernel needs).
pub fn split_kernel_fits(cols: usize, group: usize) -> bool {
    matches!(group, 32 | 64 | 128) && cols.is_multiple_of(128)
}

/// Lane l of a 128-weight block holds codes 8l..8l + 8: the group of each lane within a
/// block (`8l / group`), and the groups a block spans.
/// # Safety
/// The CPU must support AVX-512 F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q4_lane_groups(group: usize) -> (__m512i, __m512i) {
    (
        _mm512_srl_epi32(
            _mm512_setr_epi32(
                0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120,
            ),
            _mm_cvtsi32_si128(group.trailing_zeros() as i32),
        ),
        _mm512_set1_epi32((128 / group) as i32),
    )
}

/// The low and high nibbles of the 64 packed bytes (128 4-bit codes) at `p`.
/// # Safety
/// The CPU must support AVX-512 F and BW; 64 bytes must be readable at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q4_nibbles(p: *const u8, low: __m512i) -> (__m512i, __m512i) {
    // SAFETY: this function's `# Safety` contract gives the CPU features and the bytes.
    unsafe {
        let w = _mm512_loadu_si512(p as *const _);
        (
            _mm512_and_si512(w, low),
            _mm512_and_si512(_mm512_srli_epi16(w, 4), low),
        )
    }
}

/// The four 64-byte vectors of one block's split activations at `a`
/// ([`SplitActivations::nibble_order`]).
/// # Safety
/// The CPU must support AVX-512 F; 256 bytes must be readable at `a`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q4_block_acts(a: *const i8) -> [__m512i; 4] {
    // SAFETY: this function's `# Safety` contract gives the CPU features and the bytes.
    unsafe { std::array::from_fn(|k| _mm512_loadu_si512(a.add(64 * k) as *const _)) }
}

/// `Σ q·v` per lane of one 128-code block against its split activations `v`
/// ([`q4_block_acts`]): `Σ q·lo + 256 · Σ q·hi`.
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q4_isum(lo: __m512i, hi: __m512i, v: &[__m512i; 4]) -> __m512i {
    let zero = _mm512_setzero_si512();
    let sum_lo = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, v[0]), hi, v[2]);
    let sum_hi = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, v[1]), hi, v[3]);
    _mm512_add_epi32(sum_lo, _mm512_slli_epi32(sum_hi, 8))
}

/// `Σ q·v` per lane of one 128-code block against its split activations at `a` (the four
/// 64-byte vectors of [`SplitActivations::nibble_order`]): `Σ q·lo + 256 · Σ q·hi`.
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; 256 bytes must be readable at `a`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q4_block_isum(lo: __m512i, hi: __m512i, a: *const i8) -> __m512i {
    // SAFETY: this function's `# Safety` contract gives the CPU features and the bytes.
    unsafe { q4_isum(lo, hi, &q4_block_acts(a)) }
}

/// Whether [`mxfp4_rows_split`] runs mxfp4 rows of `cols` columns.
pub fn mxfp4_split_kernel_fits(cols: usize) -> bool {
    cols.is_multiple_of(128)
}

/// Outputs of mxfp4 rows `first..first + out.len()` against [`SplitActivations`] prepared in
/// groups of 32 (mxfp4's) in nibble order: the integer path of the 4-bit tiled kernel (`tiles`) for
/// microscaling floats. An E2M1 code doubled is an integer (0, ±1, ±2, ±3, ±4, ±6, ±8, ±12);
/// plus 12 it is an unsigned byte (0..=24) that `vpdpbusd` multiplies by the signed activation
/// bytes, and the 12 comes back out through the group's Σx:
/// `Σ e·x = ½ · (Σ (2e + 12)·x − 12 · Σx)`, each group times its E8M0 scale. Per 128 weights:
/// one load, three instructions to separate the nibbles, two table lookups (`vpshufb`), four
/// byte dot products and the scale per lane — against ~40 float instructions in
/// [`fp_rows_512`]. The activations are rounded to 16 bits per group, as for the affine rows.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI (`crate::simd::cpu().vnni`);
/// [`mxfp4_split_kernel_fits`] must hold for the columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
pub unsafe fn mxfp4_rows_split(
    f: &FpRows,
    act: &SplitActivations,
    xsum: &[f32],
    first: usize,
    out: &mut [f32],
) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        const PREFETCH_ROWS: usize = 4;
        let groups = act.scales.len();
        let cols = groups * 32;
        let rows = f.words.len() / f.row_bytes.max(1);
        // Checked once: every pointer below stays inside these slices.
        assert!(
            f.mode == FpMode::Mxfp4
                && mxfp4_split_kernel_fits(cols)
                && f.groups == groups
                && f.row_bytes == cols / 2
                && first + out.len() <= rows
                && xsum.len() >= groups
                && f.scales.len() >= rows * groups
                && act.nibble_order.len() >= 2 * cols
        );
        let low = _mm512_set1_epi8(0x0F);
        // Code → 2·E2M1 + 12 (codes 8..15 are the negative values).
        let table = _mm512_broadcast_i32x4(_mm_setr_epi8(
            12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
        ));
        let (half, minus_six) = (_mm512_set1_ps(0.5), _mm512_set1_ps(-6.0));
        let (subnormal, zero) = (_mm512_set1_epi32(1 << 22), _mm512_setzero_si512());
        let (lane_group, groups_per_block) = q4_lane_groups(32);
        let (ap, xd, xs) = (
            act.nibble_order.as_ptr(),
            act.scales.as_ptr(),
            xsum.as_ptr(),
        );
        for (r, y) in out.iter_mut().enumerate() {
            let row = first + r;
            if row + PREFETCH_ROWS < rows {
                let (codes, scales) = f.row(row + PREFETCH_ROWS);
                prefetch_fp_row(codes, scales);
            }
            let bp = f.words.as_ptr().add(row * f.row_bytes);
            let sp = f.scales.as_ptr().add(row * groups);
            let mut acc = _mm512_setzero_ps();
            let mut base = 0;
            while base < groups {
                let n = (groups - base).min(16);
                let m: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
                // The E8M0 scales 2^(s - 127) from their bits (0 is 2^-127, subnormal), as
                // `FpMode::scale`.
                let e = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, sp.add(base) as *const i8));
                let bits = _mm512_mask_or_epi32(
                    _mm512_slli_epi32(e, 23),
                    _mm512_cmpeq_epi32_mask(e, zero),
                    _mm512_slli_epi32(e, 23),
                    subnormal,
                );
                let scale = _mm512_maskz_mov_ps(m, _mm512_castsi512_ps(bits));
                let sc = _mm512_mul_ps(
                    _mm512_mul_ps(scale, _mm512_maskz_loadu_ps(m, xd.add(base))),
                    half,
                );
                acc = _mm512_fmadd_ps(
                    _mm512_mul_ps(scale, minus_six),
                    _mm512_maskz_loadu_ps(m, xs.add(base)),
                    acc,
                );
                let first_block = base / 4;
                let mut idx = lane_group;
                for blk in first_block..first_block + n / 4 {
                    let (lo, hi) = q4_nibbles(bp.add(blk * 64), low);
                    let (lo, hi) = (
                        _mm512_shuffle_epi8(table, lo),
                        _mm512_shuffle_epi8(table, hi),
                    );
                    let isum = q4_block_isum(lo, hi, ap.add(blk * 256));
                    acc = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(isum),
                        _mm512_permutexvar_ps(idx, sc),
                        acc,
                    );
                    idx = _mm512_add_epi32(idx, groups_per_block);
                }
                base += n;
            }
            *y = _mm512_reduce_add_ps(acc);
        }
    }
}

/// Whether [`qn_rows_split`] runs rows of `cols` columns of `bits`-bit codes at this group.
pub fn any_width_kernel_fits(cols: usize, bits: u32, group: usize) -> bool {
    matches!(bits, 2 | 3 | 5 | 6 | 8) && matches!(group, 32 | 64 | 128) && cols.is_multiple_of(128)
}

/// Rows of 2, 3, 5, 6 or 8 bits against the `natural` layout of [`SplitActivations`] (4-bit
/// rows have their own kernel, `tiles`). MLX packs codes as one LSB-first bit stream, so 8 consecutive codes
/// fill exactly `bits` bytes: per 64 codes, one masked load of `8·bits` bytes, a byte permute
/// (VBMI) giving each 64-bit lane its `bits` bytes, a multishift pulling the 8 codes out at
/// offsets 0, bits, 2·bits, … and a mask — 4 instructions to unpack any width — then two byte
/// dot products. 8-bit codes are loaded as they are.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL, VNNI and VBMI (`crate::simd::cpu().vbmi`), and
/// [`any_width_kernel_fits`] must hold for the matrix's columns, `BITS` and group.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,fma,f16c")]
pub unsafe fn qn_rows_split<const BITS: usize>(
    m: &QuantizedRows,
    act: &SplitActivations,
    xsum: &[f32],
    first: usize,
    out: &mut [f32],
) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        const PREFETCH_ROWS: usize = 4;
        let (words, scales, biases, dtype, group) = (m.words, m.scales, m.biases, m.dtype, m.group);
        let groups = act.scales.len();
        let cols = groups * group;
        let size = dtype.size();
        let (row_bytes, row_scales) = (cols * BITS / 8, groups * size);
        let rows = words.len() / row_bytes.max(1);
        // Checked once: every pointer below stays inside these slices.
        assert!(
            any_width_kernel_fits(cols, BITS as u32, group)
                && first + out.len() <= rows
                && xsum.len() >= groups
                && scales.len() >= rows * row_scales
                && biases.len() >= rows * row_scales
                && act.natural.len() >= 2 * cols
        );
        let unpack = CodeUnpacker::new(BITS.min(7));
        // Lane l of a 64-code vector holds codes 4l..4l + 4: group (v·64 + 4l) / group.
        let lane_codes =
            _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60);
        let shift = _mm_cvtsi32_si128(group.trailing_zeros() as i32);
        let (ap, xd, xs) = (act.natural.as_ptr(), act.scales.as_ptr(), xsum.as_ptr());
        for (r, y) in out.iter_mut().enumerate() {
            let row = first + r;
            if row + PREFETCH_ROWS < rows {
                prefetch_row(
                    words,
                    scales,
                    biases,
                    row + PREFETCH_ROWS,
                    row_bytes,
                    row_scales,
                );
            }
            let bp = words.as_ptr().add(row * row_bytes);
            let (sp, bip) = (
                scales.as_ptr().add(row * row_scales),
                biases.as_ptr().add(row * row_scales),
            );
            let mut acc = _mm512_setzero_ps();
            let mut base = 0;
            while base < groups {
                let n = (groups - base).min(16);
                let m: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
                let sc;
                (sc, acc) = window(sp, bip, dtype, xd, xs, base, m, acc);
                let first_vec = base * group / 64;
                for (k, vec) in (first_vec..first_vec + n * group / 64).enumerate() {
                    let src = bp.add(vec * 8 * BITS);
                    let codes = if BITS == 8 {
                        _mm512_loadu_si512(src as *const _)
                    } else {
                        unpack.codes(src)
                    };
                    let a = ap.add(vec * 128);
                    let zero = _mm512_setzero_si512();
                    let lo = _mm512_dpbusd_epi32(zero, codes, _mm512_loadu_si512(a as *const _));
                    let hi =
                        _mm512_dpbusd_epi32(zero, codes, _mm512_loadu_si512(a.add(64) as *const _));
                    let isum = _mm512_add_epi32(lo, _mm512_slli_epi32(hi, 8));
                    let idx = _mm512_srl_epi32(
                        _mm512_add_epi32(lane_codes, _mm512_set1_epi32((k * 64) as i32)),
                        shift,
                    );
                    acc = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(isum),
                        _mm512_permutexvar_ps(idx, sc),
                        acc,
                    );
                }
                base += n;
            }
            *y = _mm512_reduce_add_ps(acc);
        }
    }
}

/// Unpacks 64 consecutive `bits`-bit codes (2..=7) of MLX's LSB-first stream into 64 bytes:
/// 8 codes fill exactly `bits` bytes, so a byte permute gives each 64-bit lane its `bits`
/// bytes, a multishift pulls the 8 codes out at offsets 0, bits, 2·bits, … and a mask clears
/// their neighbours' bits (AVX-512 VBMI).
pub struct CodeUnpacker {
    perm: __m512i,
    shifts: __m512i,
    mask: __m512i,
    load: __mmask64,
}

impl CodeUnpacker {
    /// # Safety
    /// The CPU must support AVX-512 F and BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn new(bits: usize) -> CodeUnpacker {
        // SAFETY: this method's `# Safety` contract gives the CPU features; every pointer
        // below stays inside the slices its length checks cover.
        unsafe {
            debug_assert!((2..=7).contains(&bits));
            let (mut perm, mut shifts) = ([0u8; 64], [0u8; 64]);
            for q in 0..8 {
                for j in 0..8 {
                    perm[q * 8 + j] = (q * bits + j.min(bits - 1)) as u8;
                    shifts[q * 8 + j] = (j * bits) as u8;
                }
            }
            CodeUnpacker {
                perm: _mm512_loadu_si512(perm.as_ptr() as *const _),
                shifts: _mm512_loadu_si512(shifts.as_ptr() as *const _),
                mask: _mm512_set1_epi8(((1u32 << bits) - 1) as u8 as i8),
                load: (1u64 << (8 * bits)) - 1,
            }
        }
    }

    /// The 64 codes whose `8·bits` bytes start at `src` (only those bytes are read).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VBMI; `src` must point at `8·bits` readable bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub unsafe fn codes(&self, src: *const u8) -> __m512i {
        // SAFETY: this method's `# Safety` contract gives the CPU features; every pointer
        // below stays inside the slices its length checks cover.
        unsafe {
            let raw = _mm512_maskz_loadu_epi8(self.load, src as *const i8);
            _mm512_and_si512(
                _mm512_multishift_epi64_epi8(self.shifts, _mm512_permutexvar_epi8(self.perm, raw)),
                self.mask,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 activation rounding equals the scalar form byte for byte, in both layouts,
    /// for every group size the kernels take.
    #[test]
    fn fast_activation_split_equals_the_scalar_form() {
        if !crate::simd::cpu().vnni {
            eprintln!("SKIP fast_activation_split_equals_the_scalar_form: no AVX-512 VNNI");
            return;
        }
        let mut rng = crate::testkit::Rng::new(21);
        for group in [32, 64, 128] {
            // Large and small magnitudes, exact halves after scaling, zeros, one all-zero group.
            let mut x: Vec<f32> = (0..1024).map(|_| 3.0 * rng.next_f32()).collect();
            x[5] = 0.0;
            x[..group].iter_mut().for_each(|v| *v = 0.0);
            let (mut fast, mut slow) = (SplitActivations::default(), SplitActivations::default());
            let mut sums = Vec::new();
            // SAFETY: VNNI (hence AVX-512 F and BW) checked above.
            unsafe { fast.set_fast(&x, group, true, true, &mut sums) };
            slow.set(&x, group, true, true);
            assert_eq!(fast.scales, slow.scales, "group {group}");
            assert_eq!(fast.nibble_order, slow.nibble_order, "group {group}");
            assert_eq!(fast.natural, slow.natural, "group {group}");
            for (g, s) in x.chunks_exact(group).zip(&sums) {
                let want: f32 = g.iter().sum();
                assert!(
                    (s - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{s} vs {want}"
                );
            }
        }
    }

    /// The many-vector 4-bit kernel gives every (row, vector) exactly `q4_row_dot`'s output,
    /// for 1 to 8 vectors, every group size, and column blocks that do not divide the row.
    #[test]
    fn q4_rows_many_equals_q4_row_dot_bit_for_bit() {
        if !crate::simd::cpu().avx2 {
            return;
        }
        let mut rng = crate::testkit::Rng::new(11);
        for (cols, group) in [(1024usize, 64usize), (4096, 32), (512, 128), (96, 16)] {
            let (rows, groups) = (5, cols / group);
            let words: Vec<u8> = (0..rows * cols / 2)
                .map(|_| (rng.next_f32().to_bits() >> 7) as u8)
                .collect();
            let scales: Vec<f32> = (0..rows * groups).map(|_| rng.next_f32()).collect();
            let biases: Vec<f32> = (0..rows * groups).map(|_| rng.next_f32()).collect();
            for n in 1..=MAX_Q4_AVX2_VECTORS {
                let xs: Vec<f32> = (0..n * cols).map(|_| rng.next_f32()).collect();
                let xsums: Vec<f32> = (0..n * groups).map(|_| rng.next_f32()).collect();
                let mut xperms = Vec::new();
                permute_many_for_q4(&xs, n, cols, &mut xperms);
                let mut got = vec![0f32; rows * n];
                let mut scratch = Q4ManyScratch::default();
                // SAFETY: the CPU has AVX2 (checked above); the shapes are what it needs.
                unsafe {
                    q4_rows_many(
                        &words,
                        cols / 2,
                        &scales,
                        &biases,
                        group,
                        &xperms,
                        &xsums,
                        n,
                        &mut scratch,
                        &mut got,
                    )
                };
                for r in 0..rows {
                    let g = r * groups..(r + 1) * groups;
                    for k in 0..n {
                        let at = k * q4_vector_stride(cols);
                        // SAFETY: as above.
                        let want = unsafe {
                            q4_row_dot(
                                &words[r * cols / 2..(r + 1) * cols / 2],
                                &scales[g.clone()],
                                &biases[g.clone()],
                                &xperms[at..at + cols],
                                &xsums[k * groups..(k + 1) * groups],
                                group,
                            )
                        };
                        assert_eq!(
                            got[r * n + k].to_bits(),
                            want.to_bits(),
                            "{cols}/{group}, {n} vectors, row {r}, vector {k}"
                        );
                    }
                }
            }
        }
    }
}
