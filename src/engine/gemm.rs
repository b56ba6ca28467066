//! Prompt processing on AVX-512 VNNI: quantized matrix × many tokens as a blocked GEMM.
//!
//! Decoding reads every weight once per token and is bound by memory; a prompt reads them once
//! for all its tokens and is bound by arithmetic, so here the shape of the inner loop is what
//! matters. The 16 lanes of a vector are 16 TOKENS: a row's codes are unpacked once into
//! 16-bit pairs (a small per-thread panel), and each `vpdpwssd` multiplies one broadcast pair
//! of a row's codes with the same pair of 16 tokens' int16 activations — 32 multiply-adds per
//! instruction, no horizontal sums, and one epilogue per group (`scale · d · Σ q·v` plus
//! `bias · Σ x`, vectors over tokens) for every 32 products at group 64.
//!
//! Activations are rounded to 16 bits per (token, group) like the decode kernels (scale
//! `amax / 32767`); codes of any width (2–8 bits) are exact in 16 bits.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::weights::{FpRows, QuantizedRows};
use super::x86::CodeUnpacker;
use crate::mlx::FloatDtype;

/// Tokens per vector.
const LANES: usize = 16;
/// Rows per micro-kernel call: 8 accumulators of int32 and 8 of f32 in registers.
const ROWS: usize = 8;

/// Whether [`affine_gemm`] runs a matrix of `cols` columns, `bits`-bit codes and `group`.
pub fn fits(cols: usize, bits: u32, group: usize) -> bool {
    (2..=8).contains(&bits) && group.is_multiple_of(2) && group > 0 && cols.is_multiple_of(group)
}

/// A prompt's activations in tiles of 16 tokens (a short last tile is padded with zeros).
/// Per tile: for every pair of columns `j`, 16 int32 holding the tokens' int16 codes of
/// columns `2j` (low half) and `2j + 1` (high half); per group, the 16 tokens' scales and
/// sums of x.
#[derive(Default)]
pub struct TokenPanels {
    pairs: Vec<i32>,
    scales: Vec<f32>,
    sums: Vec<f32>,
    tiles: usize,
    tokens: usize,
    cols: usize,
    group: usize,
    /// One group's int16 codes while it is laid out.
    codes: Vec<i16>,
}

impl TokenPanels {
    /// Prepares `xs` (`t` tokens of `cols` values).
    pub fn set(&mut self, xs: &[f32], t: usize, cols: usize, group: usize) {
        let (groups, half) = (cols / group, cols / 2);
        self.tiles = t.div_ceil(LANES);
        (self.tokens, self.cols, self.group) = (t, cols, group);
        self.pairs.clear();
        self.pairs.resize(self.tiles * half * LANES, 0);
        self.scales.clear();
        self.scales.resize(self.tiles * groups * LANES, 0.0);
        self.sums.clear();
        self.sums.resize(self.tiles * groups * LANES, 0.0);
        self.codes.clear();
        self.codes.resize(group, 0);
        for (k, x) in xs.chunks_exact(cols).take(t).enumerate() {
            let (tile, lane) = (k / LANES, k % LANES);
            let pairs = &mut self.pairs[tile * half * LANES..(tile + 1) * half * LANES];
            for (g, xg) in x.chunks_exact(group).enumerate() {
                let amax = xg.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 32767.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let at = (tile * groups + g) * LANES + lane;
                self.scales[at] = d;
                self.sums[at] = xg.iter().sum();
                // Round half away from zero by truncation (no libm call); |v * inv| <= 32767.
                for (c, &v) in self.codes.iter_mut().zip(xg) {
                    let y = v * inv;
                    *c = (y + 0.5f32.copysign(y)) as i16;
                }
                for (j, pair) in self.codes.chunks_exact(2).enumerate() {
                    let lo = u32::from(pair[0] as u16);
                    let hi = u32::from(pair[1] as u16);
                    pairs[(g * group / 2 + j) * LANES + lane] = (lo | hi << 16) as i32;
                }
            }
        }
    }
}

thread_local! {
    /// Per thread: `ROWS` rows of codes as int16 pairs, and their scales and biases widened.
    static PANEL: RefCell<(Vec<i32>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Where rows `first..first + n` write their outputs: `ys[token * rows + row]`. Each call of
/// [`affine_gemm_rows`] owns a distinct row range, so writes from different threads never
/// overlap.
#[derive(Clone, Copy)]
pub struct TokenMajorOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: shared between the pool's threads only for writes to disjoint row ranges (see
// `affine_gemm_rows`), and only while the `&mut [f32]` it was made from is borrowed.
unsafe impl Send for TokenMajorOut {}
unsafe impl Sync for TokenMajorOut {}

impl TokenMajorOut {
    pub fn new(ys: &mut [f32]) -> TokenMajorOut {
        TokenMajorOut {
            ptr: ys.as_mut_ptr(),
            len: ys.len(),
        }
    }

    /// Rows `first..first + acc.len()` of token tile `tile` (`acc[row][lane]`), the padding
    /// lanes past `tokens` left out.
    ///
    /// # Safety
    /// `tokens × rows <= self.len`, and no other thread writes these rows meanwhile.
    unsafe fn write(
        &self,
        acc: &[[f32; LANES]],
        tile: usize,
        tokens: usize,
        rows: usize,
        first: usize,
    ) {
        // SAFETY: this method's `# Safety` contract gives the CPU features; every pointer
        // below stays inside the slices its length checks cover.
        unsafe {
            let live = LANES.min(tokens - tile * LANES);
            for (i, lanes) in acc.iter().enumerate() {
                for (lane, &v) in lanes.iter().enumerate().take(live) {
                    let at = (tile * LANES + lane) * rows + first + i;
                    debug_assert!(at < self.len);
                    *self.ptr.add(at) = v;
                }
            }
        }
    }
}

/// Rows `first..first + n` of `m` times every token of `panels`, into `out`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; [`fits`] must hold for `m`; `panels` must
/// have been set for `m.cols` and `m.group`; `out` must come from a `ys` of `tokens × rows`
/// values that is still borrowed, and no other call may write the same rows concurrently.
pub unsafe fn affine_gemm_rows(
    m: &QuantizedRows,
    panels: &TokenPanels,
    first: usize,
    n: usize,
    out: TokenMajorOut,
) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let (cols, group) = (m.cols, m.group);
        let (groups, half) = (cols / group, cols / 2);
        let size = m.dtype.size();
        let row_bytes = cols * m.bits as usize / 8;
        assert!(
            panels.cols == cols
                && panels.group == group
                && first + n <= m.rows
                && m.words.len() >= m.rows * row_bytes
                && m.scales.len() >= m.rows * groups * size
                && m.biases.len() >= m.rows * groups * size
                && out.len >= panels.tokens * m.rows
        );
        PANEL.with_borrow_mut(|(codes, ws, wb)| {
            codes.resize(ROWS * half, 0);
            ws.resize(ROWS * groups, 0.0);
            wb.resize(ROWS * groups, 0.0);
            let mut row = first;
            while row < first + n {
                let r = ROWS.min(first + n - row);
                for i in 0..r {
                    let at = row + i;
                    unpack_pairs(
                        &m.words[at * row_bytes..(at + 1) * row_bytes],
                        m.bits,
                        &mut codes[i * half..(i + 1) * half],
                    );
                    m.dtype.widen_into(
                        &m.scales[at * groups * size..(at + 1) * groups * size],
                        &mut ws[i * groups..(i + 1) * groups],
                    );
                    m.dtype.widen_into(
                        &m.biases[at * groups * size..(at + 1) * groups * size],
                        &mut wb[i * groups..(i + 1) * groups],
                    );
                }
                for tile in 0..panels.tiles {
                    let mut acc = [[0f32; LANES]; ROWS];
                    if r == ROWS {
                        tile_kernel::<ROWS>(codes, ws, wb, panels, tile, &mut acc);
                    } else {
                        for i in 0..r {
                            let mut one = [[0f32; LANES]; 1];
                            tile_kernel::<1>(
                                &codes[i * half..],
                                &ws[i * groups..],
                                &wb[i * groups..],
                                panels,
                                tile,
                                &mut one,
                            );
                            acc[i] = one[0];
                        }
                    }
                    out.write(&acc[..r], tile, panels.tokens, m.rows, row);
                }
                row += r;
            }
        });
    }
}

/// `R` rows (codes as pairs at stride `cols / 2`, scales and biases at stride `groups`) times
/// the 16 tokens of `tile`: `acc[r][lane]`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; `codes`, `ws` and `wb` must hold `R` rows at
/// their strides for the panels' columns and groups, and `tile < panels.tiles`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn tile_kernel<const R: usize>(
    codes: &[i32],
    ws: &[f32],
    wb: &[f32],
    panels: &TokenPanels,
    tile: usize,
    acc: &mut [[f32; LANES]; R],
) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let (cols, group) = (panels.cols, panels.group);
        let (groups, half) = (cols / group, cols / 2);
        assert!(
            codes.len() >= (R - 1) * half + half
                && ws.len() >= (R - 1) * groups + groups
                && wb.len() >= (R - 1) * groups + groups
        );
        let a = panels.pairs.as_ptr().add(tile * half * LANES);
        let sc = panels.scales.as_ptr().add(tile * groups * LANES);
        let sm = panels.sums.as_ptr().add(tile * groups * LANES);
        let (cp, wsp, wbp) = (codes.as_ptr(), ws.as_ptr(), wb.as_ptr());
        let mut f = [_mm512_setzero_ps(); R];
        for g in 0..groups {
            let mut i = [_mm512_setzero_si512(); R];
            for j in g * group / 2..(g + 1) * group / 2 {
                let x = _mm512_loadu_si512(a.add(j * LANES) as *const _);
                for (r, i) in i.iter_mut().enumerate() {
                    *i = _mm512_dpwssd_epi32(*i, x, _mm512_set1_epi32(*cp.add(r * half + j)));
                }
            }
            let d = _mm512_loadu_ps(sc.add(g * LANES));
            let s = _mm512_loadu_ps(sm.add(g * LANES));
            for (r, (f, i)) in f.iter_mut().zip(&i).enumerate() {
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(*wsp.add(r * groups + g)));
                *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*i), scale, *f);
                *f = _mm512_fmadd_ps(s, _mm512_set1_ps(*wbp.add(r * groups + g)), *f);
            }
        }
        for (out, f) in acc.iter_mut().zip(&f) {
            _mm512_storeu_ps(out.as_mut_ptr(), *f);
        }
    }
}

/// A row's `bits`-bit codes as int16 pairs: `out[j] = code(2j) | code(2j + 1) << 16`.
fn unpack_pairs(row: &[u8], bits: u32, out: &mut [i32]) {
    match bits {
        // SAFETY: the caller runs only on CPUs with AVX-512 (see `affine_gemm_rows`).
        4 => unsafe { unpack_q4_pairs(row, out) },
        // SAFETY: VBMI checked here, AVX-512 F/BW by the caller.
        2 | 3 | 5 | 6 if (2 * out.len()).is_multiple_of(64) && crate::simd::cpu().vbmi => unsafe {
            unpack_pairs_vbmi(row, bits as usize, out)
        },
        8 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = (u32::from(b[0]) | u32::from(b[1]) << 16) as i32;
            }
        }
        _ => {
            // Codes straddle bytes (a row is whole little-endian words).
            let code = |i: usize| crate::mlx::pack::unpack_at(row, bits, i);
            for (j, o) in out.iter_mut().enumerate() {
                *o = (code(2 * j) | code(2 * j + 1) << 16) as i32;
            }
        }
    }
}

/// [`unpack_pairs`] for 4-bit codes: a byte holds codes 2j (low nibble) and 2j + 1 (high),
/// exactly one pair: zero-extended to 32 bits, the high nibble moved to bit 16.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
unsafe fn unpack_q4_pairs(row: &[u8], out: &mut [i32]) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let n = out.len().min(row.len());
        // Bits 0-3 from the byte, bits 16-19 from the byte shifted left by 12, all else zero.
        let select = _mm512_set1_epi32(0x0000_F00F);
        let mut j = 0;
        while j + 16 <= n {
            let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(row.as_ptr().add(j) as *const __m128i));
            let v = _mm512_ternarylogic_epi32::<0xE4>(b, _mm512_slli_epi32(b, 12), select);
            _mm512_storeu_si512(out.as_mut_ptr().add(j) as *mut _, v);
            j += 16;
        }
        while j < n {
            let b = u32::from(row[j]);
            out[j] = ((b & 0x0F) | (b >> 4) << 16) as i32;
            j += 1;
        }
    }
}

/// A prompt's activations for [`float_gemm_rows`]: tiles of 16 tokens, per column the 16
/// tokens' values (a short last tile padded with zeros).
#[derive(Default)]
pub struct FloatPanels {
    values: Vec<f32>,
    tiles: usize,
    tokens: usize,
    cols: usize,
}

impl FloatPanels {
    /// Prepares `xs` (`t` tokens of `cols` values).
    pub fn set(&mut self, xs: &[f32], t: usize, cols: usize) {
        self.tiles = t.div_ceil(LANES);
        (self.tokens, self.cols) = (t, cols);
        self.values.clear();
        self.values.resize(self.tiles * cols * LANES, 0.0);
        for (k, x) in xs.chunks_exact(cols).take(t).enumerate() {
            let (tile, lane) = (k / LANES, k % LANES);
            let panel = &mut self.values[tile * cols * LANES..(tile + 1) * cols * LANES];
            for (c, &v) in x.iter().enumerate() {
                panel[c * LANES + lane] = v;
            }
        }
    }
}

thread_local! {
    /// Per thread: `ROWS` float rows widened to f32.
    static FLOAT_PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rows `first..first + n` of a float matrix (`data`: rows × cols values of `dtype`) times
/// every token of `panels`, into `out`. f32 products and sums: only the order of the additions
/// differs from the row-at-a-time kernels.
///
/// # Safety
/// The CPU must support AVX-512 F; `panels` must have been set for `cols`; `out` must come
/// from a `ys` of `tokens × rows` values that is still borrowed, and no other call may write
/// the same rows concurrently.
#[allow(clippy::too_many_arguments)]
pub unsafe fn float_gemm_rows(
    data: &[u8],
    dtype: FloatDtype,
    rows: usize,
    cols: usize,
    panels: &FloatPanels,
    first: usize,
    n: usize,
    out: TokenMajorOut,
) {
    let row_bytes = cols * dtype.size();
    assert!(data.len() >= rows * row_bytes);
    // SAFETY: this function's `# Safety` contract is the one below's; the assertion covers
    // the rows widened.
    unsafe {
        widened_gemm_rows(rows, cols, panels, first, n, out, |at, w| {
            dtype.widen_into(&data[at * row_bytes..(at + 1) * row_bytes], w)
        })
    }
}

/// [`float_gemm_rows`] for a microscaling-float matrix (mxfp4 / mxfp8 / nvfp4): each row
/// decoded to its exact f32 values (element × scale, as mlx multiplies them) once per prompt
/// chunk, then the float tiles.
///
/// # Safety
/// As [`float_gemm_rows`]; `f` must hold `rows` rows of `cols` columns.
#[allow(clippy::too_many_arguments)]
pub unsafe fn fp_gemm_rows(
    f: &FpRows,
    rows: usize,
    cols: usize,
    panels: &FloatPanels,
    first: usize,
    n: usize,
    out: TokenMajorOut,
) {
    assert!(
        f.row_bytes * 8 == cols * f.mode.bits() as usize
            && f.words.len() >= rows * f.row_bytes
            && f.scales.len() >= rows * f.groups
    );
    // SAFETY: as `float_gemm_rows`; the assertion covers the rows decoded.
    unsafe {
        widened_gemm_rows(rows, cols, panels, first, n, out, |at, w| {
            let (codes, scales) = f.row(at);
            f.mode.decode_row(codes, scales, w)
        })
    }
}

/// The float GEMM over rows that `widen(row, out)` writes as f32.
///
/// # Safety
/// As [`float_gemm_rows`].
#[allow(clippy::too_many_arguments)]
unsafe fn widened_gemm_rows(
    rows: usize,
    cols: usize,
    panels: &FloatPanels,
    first: usize,
    n: usize,
    out: TokenMajorOut,
    widen: impl Fn(usize, &mut [f32]),
) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        assert!(panels.cols == cols && first + n <= rows && out.len >= panels.tokens * rows);
        FLOAT_PANEL.with_borrow_mut(|w| {
            w.resize(ROWS * cols, 0.0);
            let mut row = first;
            while row < first + n {
                let r = ROWS.min(first + n - row);
                for i in 0..r {
                    widen(row + i, &mut w[i * cols..(i + 1) * cols]);
                }
                let mut tile = 0;
                while tile < panels.tiles {
                    if r == ROWS && tile + 1 < panels.tiles {
                        // Two tiles per pass: each broadcast weight feeds two FMAs.
                        let mut acc = [[[0f32; LANES]; ROWS]; 2];
                        float_tile_kernel::<ROWS, 2>(w, panels, tile, &mut acc);
                        out.write(&acc[0], tile, panels.tokens, rows, row);
                        out.write(&acc[1], tile + 1, panels.tokens, rows, row);
                        tile += 2;
                        continue;
                    }
                    let mut acc = [[0f32; LANES]; ROWS];
                    if r == ROWS {
                        let mut one = [[[0f32; LANES]; ROWS]; 1];
                        float_tile_kernel::<ROWS, 1>(w, panels, tile, &mut one);
                        acc = one[0];
                    } else {
                        for i in 0..r {
                            let mut one = [[[0f32; LANES]; 1]; 1];
                            float_tile_kernel::<1, 1>(&w[i * cols..], panels, tile, &mut one);
                            acc[i] = one[0][0];
                        }
                    }
                    out.write(&acc[..r], tile, panels.tokens, rows, row);
                    tile += 1;
                }
                row += r;
            }
        });
    }
}

/// `R` widened rows (stride `cols`) times the 16 tokens of each of the `T` tiles from `tile`:
/// `acc[t][r][lane]`.
///
/// # Safety
/// The CPU must support AVX-512 F and FMA; `w` must hold `R` rows of the panels' columns and
/// `tile + T <= panels.tiles`.
#[target_feature(enable = "avx512f,fma")]
unsafe fn float_tile_kernel<const R: usize, const T: usize>(
    w: &[f32],
    panels: &FloatPanels,
    tile: usize,
    acc: &mut [[[f32; LANES]; R]; T],
) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let cols = panels.cols;
        assert!(w.len() >= (R - 1) * cols + cols && tile + T <= panels.tiles);
        let a = panels.values.as_ptr().add(tile * cols * LANES);
        let wp = w.as_ptr();
        let mut f = [[_mm512_setzero_ps(); R]; T];
        for c in 0..cols {
            let mut x = [_mm512_setzero_ps(); T];
            for (t, x) in x.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(a.add((t * cols + c) * LANES));
            }
            for r in 0..R {
                let wv = _mm512_set1_ps(*wp.add(r * cols + c));
                for (f, x) in f.iter_mut().zip(&x) {
                    f[r] = _mm512_fmadd_ps(*x, wv, f[r]);
                }
            }
        }
        for (out, f) in acc.iter_mut().zip(&f) {
            for (o, f) in out.iter_mut().zip(f) {
                _mm512_storeu_ps(o.as_mut_ptr(), *f);
            }
        }
    }
}

/// [`unpack_pairs`] for 2, 3, 5 and 6 bits with VBMI ([`CodeUnpacker`]), then two
/// zero-extensions to 16 bits write the pairs (codes 2j, 2j + 1 are adjacent words).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VBMI; `2 * out.len()` must be a multiple of 64 and
/// `row` must hold `2 * out.len()` codes of `bits` bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn unpack_pairs_vbmi(row: &[u8], bits: usize, out: &mut [i32]) {
    // SAFETY: this function's `# Safety` contract gives the CPU features; every pointer
    // below stays inside the slices its length checks cover.
    unsafe {
        let codes = 2 * out.len();
        assert!(codes.is_multiple_of(64) && row.len() * 8 >= codes * bits);
        let unpack = CodeUnpacker::new(bits);
        for v in 0..codes / 64 {
            let c = unpack.codes(row.as_ptr().add(v * 8 * bits));
            let dst = out.as_mut_ptr().add(v * 32) as *mut __m512i;
            _mm512_storeu_si512(dst, _mm512_cvtepu8_epi16(_mm512_castsi512_si256(c)));
            _mm512_storeu_si512(
                dst.add(1),
                _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(c)),
            );
        }
    }
}
