//! The microscaling float modes of MLX (`mxfp4`, `mxfp8`, `nvfp4`), bit-exact with the CPU
//! kernel of mlx 0.32.4: per group a shared scale (E8M0 power of two, or an FP8 E4M3 value for
//! nvfp4) and FP4 E2M1 / FP8 E4M3FN elements; no biases. Every operation is rounded to the input
//! dtype, as MLX computes in it.

use super::pack::pack_row;
use super::FloatDtype;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpMode {
    Mxfp4,
    Mxfp8,
    Nvfp4,
}

/// The 16 FP4 E2M1 values, by code.
const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

impl FpMode {
    pub fn parse(name: &str) -> Option<FpMode> {
        match name {
            "mxfp4" => Some(FpMode::Mxfp4),
            "mxfp8" => Some(FpMode::Mxfp8),
            "nvfp4" => Some(FpMode::Nvfp4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FpMode::Mxfp4 => "mxfp4",
            FpMode::Mxfp8 => "mxfp8",
            FpMode::Nvfp4 => "nvfp4",
        }
    }

    /// The only group size MLX accepts for the mode.
    pub fn group_size(self) -> usize {
        match self {
            FpMode::Mxfp4 | FpMode::Mxfp8 => 32,
            FpMode::Nvfp4 => 16,
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            FpMode::Mxfp8 => 8,
            FpMode::Mxfp4 | FpMode::Nvfp4 => 4,
        }
    }

    /// The largest element magnitude.
    fn element_max(self) -> f32 {
        match self {
            FpMode::Mxfp8 => 448.0,
            FpMode::Mxfp4 | FpMode::Nvfp4 => 6.0,
        }
    }

    /// Quantizes one row: `words` gets `cols * bits / 32` u32 words, `scales` one u8 per group.
    pub fn quantize_row(
        self,
        row: &[f32],
        dtype: FloatDtype,
        words: &mut [u32],
        scales: &mut [u8],
        codes: &mut Vec<u8>,
    ) {
        let t = |v: f32| dtype.round(v);
        let group = self.group_size();
        codes.clear();
        codes.resize(row.len(), 0);
        for (g, xs) in row.chunks_exact(group).enumerate() {
            // MLX's max reduction propagates NaN: a group holding one has a NaN scale.
            let amax = xs.iter().fold(0.0f32, |m, &x| {
                if x.is_nan() || m.is_nan() {
                    f32::NAN
                } else {
                    m.max(x.abs())
                }
            });
            let s = t(amax / self.element_max());
            let (divisor, stored) = match self {
                FpMode::Mxfp4 | FpMode::Mxfp8 => {
                    let mut e = if s == 0.0 {
                        0.0
                    } else {
                        t(s.log2()).round_ties_even()
                    };
                    if s != 0.0 && e.exp2() < s {
                        e += 1.0;
                    }
                    // E8M0 holds 2^-127 ..= 2^127. A NaN exponent (a group holding NaN) becomes
                    // whatever MLX's float -> uint8 conversion makes of NaN on x86, which differs
                    // by path: 0 for f16/bf16 inputs (scalar truncation), 128 for f32 (vector
                    // conversion with signed saturation). Checked against MLX in the peer tests.
                    let stored = if e.is_nan() {
                        if dtype == FloatDtype::F32 {
                            128
                        } else {
                            0
                        }
                    } else {
                        (e.clamp(-127.0, 127.0) as i32 + 127) as u8
                    };
                    // The divisor comes from the STORED exponent, as in MLX: for a NaN group
                    // it is 2^-127, which saturates the elements.
                    (t((f32::from(stored) - 127.0).exp2()), stored)
                }
                FpMode::Nvfp4 => {
                    let s8 = fp8_e4m3(s);
                    (t(fp8_e4m3_value(s8)), s8)
                }
            };
            scales[g] = stored;
            let out = &mut codes[g * group..(g + 1) * group];
            for (c, &x) in out.iter_mut().zip(xs) {
                let scaled = t(x / divisor);
                *c = match self {
                    FpMode::Mxfp8 => fp8_e4m3(scaled),
                    FpMode::Mxfp4 | FpMode::Nvfp4 => nearest_e2m1(scaled, t),
                };
            }
        }
        pack_row(codes, self.bits(), words);
    }
}

impl FpMode {
    /// Dequantizes one packed row: element value times the group's scale (an exact product),
    /// rounded to bf16 as `mx.dequantize` returns for these modes.
    pub fn dequantize_row(self, words: &[u32], scales: &[u8], out: &mut [f32]) {
        let group = self.group_size();
        for (i, o) in out.iter_mut().enumerate() {
            let code = super::pack::unpack_at(words, self.bits(), i) as u8;
            *o = FloatDtype::BF16.round(self.element(code) * self.scale(scales[i / group]));
        }
    }
}

impl FpMode {
    /// The value of element code `code` (the group scale not applied).
    #[inline]
    pub fn element(self, code: u8) -> f32 {
        match self {
            FpMode::Mxfp8 => fp8_e4m3_value(code),
            FpMode::Mxfp4 | FpMode::Nvfp4 => E2M1[usize::from(code & 0x0F)],
        }
    }

    /// The value of stored scale `s`: `2^(s-127)` (E8M0, as the bits `s << 23`: 255 is
    /// infinity, never written by quantization), or nvfp4's FP8 E4M3 value.
    #[inline]
    pub fn scale(self, s: u8) -> f32 {
        match self {
            // 0 is 2^-127, the subnormal with only bit 22 set (branch-free: kernels call this
            // once per group).
            FpMode::Mxfp4 | FpMode::Mxfp8 => {
                f32::from_bits((u32::from(s) << 23) | (u32::from(s == 0) << 22))
            }
            FpMode::Nvfp4 => fp8_e4m3_value(s),
        }
    }

    /// One packed row (`cols · bits / 8` bytes of MLX's LSB-first words) as f32: each
    /// element times its group's scale — exact, as mlx's quantized matmul multiplies them.
    pub fn decode_row(self, packed: &[u8], scales: &[u8], out: &mut [f32]) {
        let group = self.group_size();
        for (g, (out, &s)) in out.chunks_exact_mut(group).zip(scales).enumerate() {
            let scale = self.scale(s);
            match self {
                FpMode::Mxfp8 => {
                    let bytes = &packed[g * group..(g + 1) * group];
                    for (o, &b) in out.iter_mut().zip(bytes) {
                        *o = fp8_e4m3_value(b) * scale;
                    }
                }
                FpMode::Mxfp4 | FpMode::Nvfp4 => {
                    let bytes = &packed[g * group / 2..(g + 1) * group / 2];
                    for (o, &b) in out.chunks_exact_mut(2).zip(bytes) {
                        o[0] = E2M1[usize::from(b & 0x0F)] * scale;
                        o[1] = E2M1[usize::from(b >> 4)] * scale;
                    }
                }
            }
        }
    }
}

/// argmin over the E2M1 values of |T(x - value)|, the first index on ties.
fn nearest_e2m1(x: f32, t: impl Fn(f32) -> f32) -> u8 {
    let mut best = 0u8;
    let mut best_d = f32::INFINITY;
    for (i, &v) in E2M1.iter().enumerate() {
        let d = t(x - v).abs();
        if d < best_d {
            best_d = d;
            best = i as u8;
        }
    }
    best
}

/// f32 -> FP8 E4M3FN as MLX converts: round to nearest even, saturating at ±448 (NaN and
/// infinities included; the NaN code 0x7F is never produced).
pub fn fp8_e4m3(v: f32) -> u8 {
    let sign = if v.is_sign_negative() { 0x80u8 } else { 0 };
    let a = v.abs();
    // MLX's conversion saturates: infinities and NaN become ±448, never the NaN code 0x7F.
    if a.is_nan() || a.is_infinite() {
        return 0x7E | sign;
    }
    let min_normal = 2f32.powi(-6);
    let code = if a < min_normal {
        // Subnormals: multiples of 2^-9; 8 of them is the smallest normal, 0x08.
        (a / 2f32.powi(-9)).round_ties_even() as u32
    } else {
        let mut e = a.log2().floor() as i32;
        // log2 of a value just below a power of two can round up: fix the exponent exactly.
        if 2f32.powi(e) > a {
            e -= 1;
        }
        let m = a / 2f32.powi(e) - 1.0;
        let mut q = (m * 8.0).round_ties_even() as u32;
        if q == 8 {
            q = 0;
            e += 1;
        }
        let biased = e + 7;
        if biased > 15 || (biased == 15 && q == 7) {
            0x7E
        } else {
            ((biased as u32) << 3) | q
        }
    };
    (code.min(0x7E) as u8) | sign
}

/// The value of an FP8 E4M3FN code.
pub fn fp8_e4m3_value(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = i32::from((code >> 3) & 0x0F);
    let m = f32::from(code & 0x07);
    if e == 15 && m == 7.0 {
        return f32::NAN;
    }
    if e == 0 {
        sign * m * 2f32.powi(-9)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_round_trips_every_code() {
        for code in 0u8..=255 {
            if code & 0x7F == 0x7F {
                assert!(fp8_e4m3_value(code).is_nan());
                assert_eq!(fp8_e4m3(fp8_e4m3_value(code)) & 0x7F, 0x7E, "NaN saturates");
                continue;
            }
            let v = fp8_e4m3_value(code);
            let back = fp8_e4m3(v);
            // -0 and +0 keep their sign.
            assert_eq!(back, code, "code {code:#x} value {v}");
        }
        assert_eq!(fp8_e4m3(1000.0), 0x7E, "saturates");
        assert_eq!(fp8_e4m3(-1000.0), 0xFE);
    }

    #[test]
    fn e2m1_ties_take_the_first_code() {
        // 0.25 is as far from 0 (code 0) as from 0.5 (code 1): the first wins.
        assert_eq!(nearest_e2m1(0.25, |v| v), 0);
        assert_eq!(nearest_e2m1(5.0, |v| v), 6);
        assert_eq!(nearest_e2m1(-6.0, |v| v), 15);
    }

    /// The engine's exact decoding (element × scale in f32) is what `dequantize_row` rounds
    /// to bf16, for every mode, on values across the scales' range.
    #[test]
    fn decode_row_is_the_unrounded_dequantization() {
        let mut rng = crate::testkit::Rng::new(4);
        let cols = 64;
        let row: Vec<f32> = (0..cols)
            .map(|i| rng.next_f32() * 2f32.powi(i as i32 % 20 - 10))
            .collect();
        for mode in [FpMode::Mxfp4, FpMode::Mxfp8, FpMode::Nvfp4] {
            let mut words = vec![0u32; cols * mode.bits() as usize / 32];
            let mut scales = vec![0u8; cols / mode.group_size()];
            mode.quantize_row(
                &row,
                FloatDtype::F32,
                &mut words,
                &mut scales,
                &mut Vec::new(),
            );
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let (mut exact, mut rounded) = (vec![0f32; cols], vec![0f32; cols]);
            mode.decode_row(&bytes, &scales, &mut exact);
            mode.dequantize_row(&words, &scales, &mut rounded);
            for (i, (e, r)) in exact.iter().zip(&rounded).enumerate() {
                assert_eq!(
                    FloatDtype::BF16.round(*e),
                    *r,
                    "{} element {i}",
                    mode.name()
                );
            }
            assert!(exact.iter().any(|&v| v != 0.0));
        }
        assert_eq!(FpMode::Mxfp4.scale(127), 1.0);
        assert_eq!(FpMode::Mxfp4.scale(0), 2f32.powi(-127));
        assert_eq!(FpMode::Mxfp8.scale(130), 8.0);
    }
}
