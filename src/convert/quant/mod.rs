//! MLX quantization kernels, bit-exact with `mx.quantize` / `mx.dequantize` on the CPU
//! (../shared/reference/mlx-quantization.md). Pure functions over rows of widened f32 values;
//! the streaming convert that uses them is built on top.

pub mod affine;
pub mod fp;
pub mod pack;

use half::{bf16, f16};

/// The floating dtypes models are stored in; scales and biases take the input's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    F16,
    BF16,
    F32,
}

impl FloatDtype {
    pub fn size(self) -> usize {
        match self {
            FloatDtype::F16 | FloatDtype::BF16 => 2,
            FloatDtype::F32 => 4,
        }
    }

    /// Widens little-endian values of this dtype to f32 (exact).
    pub fn widen(self, bytes: &[u8], out: &mut Vec<f32>) {
        out.clear();
        match self {
            FloatDtype::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            FloatDtype::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            FloatDtype::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }

    /// Rounds f32 values to this dtype (round to nearest even), little-endian bytes.
    pub fn narrow(self, values: &[f32], out: &mut Vec<u8>) {
        out.clear();
        for &v in values {
            match self {
                FloatDtype::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                FloatDtype::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
                FloatDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
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
