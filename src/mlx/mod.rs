//! MLX quantization kernels, bit-exact with `mx.quantize` / `mx.dequantize` on the CPU
//! (../shared/reference/mlx-quantization.md). Pure functions over rows of widened f32 values;
//! the streaming convert that uses them is built on top.

pub mod affine;
pub mod fp;
pub mod pack;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// The floating dtypes models are stored in; scales and biases take the input's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    F16,
    BF16,
    F32,
}

impl FloatDtype {
    pub const ALL: [FloatDtype; 3] = [FloatDtype::F16, FloatDtype::BF16, FloatDtype::F32];

    /// mlx-lm's names (`--dtype`, config `torch_dtype`).
    pub fn parse(name: &str) -> Option<FloatDtype> {
        match name {
            "float16" => Some(FloatDtype::F16),
            "bfloat16" => Some(FloatDtype::BF16),
            "float32" => Some(FloatDtype::F32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FloatDtype::F16 => "float16",
            FloatDtype::BF16 => "bfloat16",
            FloatDtype::F32 => "float32",
        }
    }

    /// Stored value `i` of a little-endian array of this dtype (a weight, a scale, a bias).
    #[inline(always)]
    pub fn value_at(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            FloatDtype::BF16 => f32::from_bits(
                u32::from(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])) << 16,
            ),
            FloatDtype::F16 => {
                f16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32()
            }
            FloatDtype::F32 => f32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]),
        }
    }

    /// The safetensors dtype.
    pub fn dtype(self) -> safetensors::Dtype {
        match self {
            FloatDtype::F16 => safetensors::Dtype::F16,
            FloatDtype::BF16 => safetensors::Dtype::BF16,
            FloatDtype::F32 => safetensors::Dtype::F32,
        }
    }

    pub fn size(self) -> usize {
        match self {
            FloatDtype::F16 | FloatDtype::BF16 => 2,
            FloatDtype::F32 => 4,
        }
    }

    /// Widens little-endian values of this dtype to f32 (exact). Written as plain indexed
    /// loops (bf16 is a shift, f16 goes through `half`'s F16C slice conversion when the CPU has
    /// it): this runs over every source byte.
    pub fn widen(self, bytes: &[u8], out: &mut Vec<f32>) {
        let n = bytes.len() / self.size();
        out.clear();
        out.resize(n, 0.0);
        self.widen_into(bytes, out);
    }

    /// [`FloatDtype::widen`] into a slice: its first `out.len()` values (the engine widens
    /// rows, scales and biases into buffers it reuses).
    #[inline]
    pub fn widen_into(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            FloatDtype::F16 => {
                let mut halves = [f16::ZERO; 256];
                for (dst, src) in out.chunks_mut(256).zip(bytes.chunks(512)) {
                    let k = dst.len();
                    for (h, c) in halves[..k].iter_mut().zip(src.chunks_exact(2)) {
                        *h = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                    }
                    halves[..k].convert_to_f32_slice(dst);
                }
            }
            FloatDtype::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
                }
            }
            FloatDtype::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// The float dtype of a safetensors tensor, if it has one.
    pub fn of(d: safetensors::Dtype) -> Option<FloatDtype> {
        match d {
            safetensors::Dtype::F16 => Some(FloatDtype::F16),
            safetensors::Dtype::BF16 => Some(FloatDtype::BF16),
            safetensors::Dtype::F32 => Some(FloatDtype::F32),
            _ => None,
        }
    }

    /// Rounds f32 values to this dtype (round to nearest even), little-endian bytes.
    pub fn narrow(self, values: &[f32], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(values.len() * self.size());
        match self {
            FloatDtype::F16 => {
                let mut halves = [f16::ZERO; 256];
                for chunk in values.chunks(256) {
                    let h = &mut halves[..chunk.len()];
                    h.convert_from_f32_slice(chunk);
                    for v in h.iter() {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
            FloatDtype::BF16 => {
                for &v in values {
                    out.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
                }
            }
            FloatDtype::F32 => {
                for &v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }

    /// `v` rounded to this dtype and widened back.
    pub fn round(self, v: f32) -> f32 {
        match self {
            FloatDtype::F16 => f16::from_f32(v).to_f32(),
            FloatDtype::BF16 => bf16::from_f32(v).to_f32(),
            FloatDtype::F32 => v,
        }
    }
}

/// One packed row as stored: little-endian u32 words, scales and (affine) biases.
#[derive(Debug, Clone, Copy)]
pub struct PackedRow<'a> {
    pub words: &'a [u8],
    pub scales: &'a [u8],
    /// Empty for the float modes.
    pub biases: &'a [u8],
}

/// The buffers a quantized row is written into.
#[derive(Debug)]
pub struct PackedRowMut<'a> {
    pub words: &'a mut [u8],
    pub scales: &'a mut [u8],
    /// Empty for the float modes.
    pub biases: &'a mut [u8],
}

/// One way to quantize a matrix: MLX's affine mode or one of its microscaling float modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Affine(affine::Affine),
    Fp(fp::FpMode),
}

/// Reusable per-thread buffers of the row kernels.
#[derive(Debug, Default)]
pub struct Scratch {
    values: Vec<f32>,
    codes: Vec<u8>,
    words: Vec<u32>,
    scales: Vec<f32>,
    biases: Vec<f32>,
    scale_codes: Vec<u8>,
    bytes: Vec<u8>,
}

impl Scheme {
    pub fn bits(self) -> u32 {
        match self {
            Scheme::Affine(a) => a.bits,
            Scheme::Fp(m) => m.bits(),
        }
    }

    pub fn group_size(self) -> usize {
        match self {
            Scheme::Affine(a) => a.group_size,
            Scheme::Fp(m) => m.group_size(),
        }
    }

    pub fn mode(self) -> &'static str {
        match self {
            Scheme::Affine(_) => "affine",
            Scheme::Fp(m) => m.name(),
        }
    }

    /// Affine mode stores a bias per group; the float modes do not.
    pub fn has_biases(self) -> bool {
        matches!(self, Scheme::Affine(_))
    }

    /// u32 words of a packed row of `cols` values.
    pub fn words_per_row(self, cols: usize) -> usize {
        cols * self.bits() as usize / 32
    }

    /// Quantizes one row of `source`-dtype bytes, cast to `dtype` first when they differ (as
    /// mlx-lm's `--dtype` does before quantizing). Writes little-endian packed words,
    /// scales and (affine) biases.
    pub fn quantize_row(
        self,
        row: &[u8],
        source: FloatDtype,
        dtype: FloatDtype,
        out: PackedRowMut<'_>,
        s: &mut Scratch,
    ) {
        let PackedRowMut {
            words,
            scales,
            biases,
        } = out;
        source.widen(row, &mut s.values);
        if source != dtype {
            s.values.iter_mut().for_each(|v| *v = dtype.round(*v));
        }
        let cols = s.values.len();
        let groups = cols / self.group_size();
        s.words.clear();
        s.words.resize(self.words_per_row(cols), 0);
        match self {
            Scheme::Affine(a) => {
                s.scales.clear();
                s.scales.resize(groups, 0.0);
                s.biases.clear();
                s.biases.resize(groups, 0.0);
                a.quantize_row(&s.values, dtype, &mut s.words, &mut s.scales, &mut s.biases);
                dtype.narrow(&s.scales, &mut s.bytes);
                scales.copy_from_slice(&s.bytes);
                dtype.narrow(&s.biases, &mut s.bytes);
                biases.copy_from_slice(&s.bytes);
            }
            Scheme::Fp(m) => {
                s.scale_codes.clear();
                s.scale_codes.resize(groups, 0);
                m.quantize_row(
                    &s.values,
                    dtype,
                    &mut s.words,
                    &mut s.scale_codes,
                    &mut s.codes,
                );
                scales.copy_from_slice(&s.scale_codes);
            }
        }
        for (out, w) in words.chunks_exact_mut(4).zip(&s.words) {
            out.copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Dequantizes one packed row into `out` (bytes of `out_dtype`). Affine: the scales and
    /// biases (of `scale_dtype`) are first cast to `out_dtype`, then `T(T(q * s) + b)`, as
    /// mlx-lm's `--dtype` cast followed by `mx.dequantize` computes. Float modes: the exact
    /// product of element and scale, rounded to `out_dtype`.
    pub fn dequantize_row(
        self,
        packed: PackedRow<'_>,
        scale_dtype: FloatDtype,
        out_dtype: FloatDtype,
        out: &mut [u8],
        s: &mut Scratch,
    ) {
        let PackedRow {
            words,
            scales,
            biases,
        } = packed;
        s.words.clear();
        s.words.extend(
            words
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        let cols = s.words.len() * 32 / self.bits() as usize;
        s.values.clear();
        s.values.resize(cols, 0.0);
        match self {
            Scheme::Affine(a) => {
                scale_dtype.widen(scales, &mut s.scales);
                scale_dtype.widen(biases, &mut s.biases);
                if scale_dtype != out_dtype {
                    s.scales.iter_mut().for_each(|v| *v = out_dtype.round(*v));
                    s.biases.iter_mut().for_each(|v| *v = out_dtype.round(*v));
                }
                a.dequantize_row(&s.words, &s.scales, &s.biases, out_dtype, &mut s.values);
            }
            Scheme::Fp(m) => m.dequantize_row(&s.words, scales, &mut s.values),
        }
        out_dtype.narrow(&s.values, &mut s.bytes);
        out.copy_from_slice(&s.bytes);
    }
}

/// Casts a row of `from` bytes to `to` bytes (round to nearest even).
pub fn cast_row(row: &[u8], from: FloatDtype, to: FloatDtype, out: &mut [u8], s: &mut Scratch) {
    from.widen(row, &mut s.values);
    to.narrow(&s.values, &mut s.bytes);
    out.copy_from_slice(&s.bytes);
}
