//! Affine quantization (`mode="affine"`), bit-exact with MLX's CPU kernel: per group of
//! `group_size` consecutive values, a scale and a bias such that `x ≈ q * scale + bias` with
//! `q` in `0..2^bits`. All arithmetic in f32 with MLX's exact operation order (no FMA, no
//! reciprocal); scale and bias are stored rounded to the input dtype, the codes use them unrounded.

use super::pack::{pack_group, unpack_at};
use super::FloatDtype;
use crate::simd::simd_dispatch;

/// Bit widths MLX supports in affine mode.
pub const AFFINE_BITS: &[u32] = &[1, 2, 3, 4, 5, 6, 8];
/// Group sizes MLX supports in affine mode.
pub const AFFINE_GROUPS: &[usize] = &[32, 64, 128];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affine {
    pub bits: u32,
    pub group_size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AffineError {
    #[error("affine quantization supports bits {AFFINE_BITS:?}, not {0}")]
    Bits(u32),
    #[error("affine quantization supports group sizes {AFFINE_GROUPS:?}, not {0}")]
    GroupSize(usize),
}

/// 1.5 * 2^23: `(v + M) - M` is `v` rounded half to even for |v| <= 2^22.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `clamp(round_half_even(v), 0, n_bins)` with NaN giving 0, in a form the compiler vectorizes.
/// Clamping before rounding equals MLX's round-then-clamp (the bounds are integers and rounding
/// is monotonic); NaN fails both comparisons and becomes 0, as with the C++ clamp. On [0, 255]
/// adding 1.5 * 2^23 rounds half to even exactly and leaves the integer in the low mantissa
/// bits, so no float-to-int conversion is needed (`round_ties_even` is a libm call on baseline
/// x86-64).
#[inline(always)]
fn code(v: f32, n_bins: f32) -> u32 {
    let v = if v > 0.0 { v } else { 0.0 };
    let v = if v < n_bins { v } else { n_bins };
    (v + ROUND_MAGIC).to_bits() - ROUND_MAGIC.to_bits()
}

/// The group's max and min as MLX's sequential loop computes them: NaN skipped, and between
/// +0 and -0 the first one seen stays.
fn ordered_max_min(group: &[f32]) -> (f32, f32) {
    let mut w_max = f32::NEG_INFINITY;
    let mut w_min = f32::INFINITY;
    for &x in group {
        w_max = cpp_max(w_max, x);
        w_min = cpp_min(w_min, x);
    }
    (w_max, w_min)
}

/// [`ordered_max_min`] over 8 interleaved lanes, which vectorizes (`x > m ? x : m` is MAXPS).
/// It may differ from the ordered loop only in the sign of a zero result, which for bits >= 2
/// never reaches the output: a zero max or min is used only in `w_max - w_min` (both zero:
/// the scale becomes eps either way), in `|.|`, or as an edge whose code rounds to zero (the
/// bias is then the literal 0). At 1 bit the min IS the stored bias, so that path stays ordered.
fn lane_max_min(group: &[f32]) -> (f32, f32) {
    let mut hi = [f32::NEG_INFINITY; 8];
    let mut lo = [f32::INFINITY; 8];
    let mut chunks = group.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            hi[j] = if c[j] > hi[j] { c[j] } else { hi[j] };
            lo[j] = if c[j] < lo[j] { c[j] } else { lo[j] };
        }
    }
    let (mut w_max, mut w_min) = ordered_max_min(chunks.remainder());
    for j in 0..8 {
        w_max = cpp_max(w_max, hi[j]);
        w_min = cpp_min(w_min, lo[j]);
    }
    (w_max, w_min)
}

/// `std::max` of C++: `(a < b) ? b : a` (a NaN `b` is skipped; of +0/-0 the first stays).
#[inline]
fn cpp_max(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// `std::min` of C++: `(b < a) ? b : a`.
#[inline]
fn cpp_min(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

impl Affine {
    pub fn new(bits: u32, group_size: usize) -> Result<Affine, AffineError> {
        if !AFFINE_BITS.contains(&bits) {
            return Err(AffineError::Bits(bits));
        }
        if !AFFINE_GROUPS.contains(&group_size) {
            return Err(AffineError::GroupSize(group_size));
        }
        Ok(Affine { bits, group_size })
    }

    /// u32 words per row of `cols` values.
    pub fn words_per_row(&self, cols: usize) -> usize {
        cols * self.bits as usize / 32
    }

    /// Quantizes one row. `words` receives `cols * bits / 32` packed words; `scales` and
    /// `biases` (one per group) receive the stored values, already rounded to `dtype`.
    pub fn quantize_row(
        &self,
        row: &[f32],
        dtype: FloatDtype,
        words: &mut [u32],
        scales: &mut [f32],
        biases: &mut [f32],
    ) {
        quantize_row_dispatched(self, row, dtype, words, scales, biases);
    }

    /// Written to vectorize: 8-wide divides, min/max and integer ops in the AVX2 build.
    #[inline(always)]
    fn quantize_row_portable(
        &self,
        row: &[f32],
        dtype: FloatDtype,
        words: &mut [u32],
        scales: &mut [f32],
        biases: &mut [f32],
    ) {
        let n_bins = ((1u32 << self.bits) - 1) as f32;
        let eps = 1e-7f32;
        let group_words = self.group_size * self.bits as usize / 32;
        let mut codes = [0u32; 128];
        for (g, group) in row.chunks_exact(self.group_size).enumerate() {
            let (w_max, w_min) = if self.bits == 1 {
                ordered_max_min(group)
            } else {
                lane_max_min(group)
            };
            let (scale, bias) = if self.bits == 1 {
                (cpp_max(w_max - w_min, eps), w_min)
            } else {
                let mask = w_min.abs() > w_max.abs();
                let mut scale = cpp_max((w_max - w_min) / n_bins, eps);
                if !mask {
                    scale = -scale;
                }
                let edge = if mask { w_min } else { w_max };
                let q0 = (edge / scale).round_ties_even();
                if q0 != 0.0 {
                    (edge / q0, edge)
                } else {
                    (scale, 0.0)
                }
            };
            let codes = &mut codes[..self.group_size];
            for (c, &x) in codes.iter_mut().zip(group) {
                *c = code((x - bias) / scale, n_bins);
            }
            pack_group(
                codes,
                self.bits,
                &mut words[g * group_words..(g + 1) * group_words],
            );
            scales[g] = dtype.round(scale);
            biases[g] = dtype.round(bias);
        }
    }

    /// Dequantizes one row: `T(T(q * scale) + bias)`, two roundings to the scales' dtype.
    pub fn dequantize_row(
        &self,
        words: &[u32],
        scales: &[f32],
        biases: &[f32],
        dtype: FloatDtype,
        out: &mut [f32],
    ) {
        for (i, o) in out.iter_mut().enumerate() {
            let g = i / self.group_size;
            let q = unpack_at(words, self.bits, i) as f32;
            *o = dtype.round(dtype.round(q * scales[g]) + biases[g]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantize(x: &[f32], a: Affine, dtype: FloatDtype) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
        let mut words = vec![0; a.words_per_row(x.len())];
        let groups = x.len() / a.group_size;
        let (mut s, mut b) = (vec![0.0; groups], vec![0.0; groups]);
        a.quantize_row(x, dtype, &mut words, &mut s, &mut b);
        (words, s, b)
    }

    #[test]
    fn all_zero_and_constant_groups() {
        let a = Affine::new(4, 32).unwrap();
        let (w, s, b) = quantize(&[0.0; 32], a, FloatDtype::F16);
        assert!(w.iter().all(|&x| x == 0));
        assert_eq!(half::f16::from_f32(s[0]).to_bits(), 0x8002, "dtype(-1e-7)");
        assert_eq!(b[0], 0.0);
        let (w, _, b) = quantize(&[0.75; 32], a, FloatDtype::F32);
        assert!(w.iter().all(|&x| x == 0));
        assert_eq!(b[0], 0.75);
    }

    #[test]
    fn round_trip_is_close_and_nan_gives_code_zero() {
        let a = Affine::new(8, 64).unwrap();
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) / 10.0).collect();
        let (w, s, b) = quantize(&x, a, FloatDtype::F32);
        assert!(s[0] != 0.0);
        let mut y = vec![0.0; 64];
        a.dequantize_row(&w, &s, &b, FloatDtype::F32, &mut y);
        for (u, v) in x.iter().zip(&y) {
            assert!((u - v).abs() <= s[0].abs() / 2.0 + 1e-6, "{u} vs {v}");
        }
        x[5] = f32::NAN;
        let (w, _, _) = quantize(&x, a, FloatDtype::F32);
        assert_eq!(unpack_at(&w[..], 8, 5), 0);
    }

    #[test]
    fn codes_round_half_to_even_and_clamp_like_mlx() {
        let reference = |v: f32, n: f32| {
            let q = v.round_ties_even();
            if q > 0.0 {
                q.min(n) as u32
            } else {
                0
            }
        };
        for bits in AFFINE_BITS {
            let n = ((1u32 << bits) - 1) as f32;
            let mut values: Vec<f32> = (-40..600).map(|i| i as f32 * 0.5).collect();
            values.extend((0..2000).map(|i| i as f32 * 0.1234 - 3.0));
            values.extend([
                f32::NAN,
                -f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                1e30,
                -1e30,
                -0.0,
                0.49999997,
                0.50000006,
                n - 0.5,
                n + 0.5,
            ]);
            for v in values {
                assert_eq!(code(v, n), reference(v, n), "bits {bits}, v = {v}");
            }
        }
        assert_eq!(code(2.5, 15.0), 2, "ties go to even");
        assert_eq!(code(3.5, 15.0), 4);
    }

    #[test]
    fn negative_scales_are_normal() {
        // |w_max| >= |w_min|: the scale is negated and the bias is w_max.
        let a = Affine::new(4, 32).unwrap();
        let x: Vec<f32> = (0..32).map(|i| i as f32 / 31.0 - 0.25).collect();
        let (_, s, b) = quantize(&x, a, FloatDtype::F32);
        assert!(s[0] < 0.0, "scale {}", s[0]);
        assert_eq!(b[0], 0.75);
    }

    #[test]
    fn parameters_are_validated() {
        assert_eq!(Affine::new(7, 64), Err(AffineError::Bits(7)));
        assert_eq!(Affine::new(4, 48), Err(AffineError::GroupSize(48)));
    }
}

simd_dispatch! {
    fn quantize_row_dispatched(
        a: &Affine,
        row: &[f32],
        dtype: FloatDtype,
        words: &mut [u32],
        scales: &mut [f32],
        biases: &mut [f32],
    ) {
        a.quantize_row_portable(row, dtype, words, scales, biases)
    }
}
