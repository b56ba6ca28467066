//! AVX2 + FMA kernels for the formats that dominate decode time: 4-bit affine rows (MLX's
//! packing: byte b of a row holds codes 2b in its low nibble and 2b + 1 in its high one) and
//! half / f32 float rows. Chosen at run time by `kernels` when the CPU has the features; the
//! portable kernels compute the same sums in another order.

use std::arch::x86_64::*;

/// Whether this CPU runs these kernels (std caches the answer).
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// `x` reordered for [`q4_row_dot`]: per 16 values, the 8 even-indexed ones then the 8 odd.
pub fn permute_for_q4(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.reserve(x.len());
    for c in x.chunks_exact(16) {
        out.extend((0..8).map(|j| c[2 * j]));
        out.extend((0..8).map(|j| c[2 * j + 1]));
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// One output of a 4-bit row: `Σ_g scale_g · Σ q·x + bias_g · Σ x`.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q4_row_dot(
    bytes: &[u8],
    scales: &[f32],
    biases: &[f32],
    xperm: &[f32],
    xsum: &[f32],
    group: usize,
) -> f32 {
    let groups = scales.len();
    // Checked once per row: every pointer below stays inside these slices.
    assert!(
        group % 16 == 0
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

/// `Σ w·x` over a bf16 row.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn bf16_row_dot(bytes: &[u8], x: &[f32]) -> f32 {
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
        let w =
            f32::from_bits(u32::from(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])) << 16);
        s += w * x[i];
        i += 1;
    }
    s
}

/// `Σ w·x` over an f16 row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_row_dot(bytes: &[u8], x: &[f32]) -> f32 {
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
        let w = half::f16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32();
        s += w * x[i];
        i += 1;
    }
    s
}

/// `Σ w·x` over an f32 row.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_row_dot(bytes: &[u8], x: &[f32]) -> f32 {
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
        let w = f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]);
        s += w * x[i];
        i += 1;
    }
    s
}
