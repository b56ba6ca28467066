//! The CPU kernels: matrix × vector (decode) and matrix × several vectors (prompt), over float
//! or MLX-packed weights that stay packed — a quantized row is consumed group by group inside
//! the dot product (`Σ w·x = scale · Σ q·x + bias · Σ x`), never expanded in memory. Rows are
//! split across the engine's pool. Each matrix carries the kernels chosen for it at load
//! ([`Kernels`]: the explicit AVX2 / AVX-512 kernels of `x86` and `gemm`, or the portable
//! loops here, which are written to vectorize and compiled for AVX2 too). Accumulation is in
//! f32.

use super::args::Rope;
use super::pool::pool;
use super::weights::{Matrix, QuantizedRows, Weights};
use crate::mlx::fp::FpMode;
use crate::mlx::pack::{unpack_at, PackedWords};
use crate::simd::{simd_dispatch, Cpu};

/// Rows per parallel task: enough work per task to amortize scheduling.
const ROWS_PER_TASK: usize = 16;

/// Rows per task when decoding: ~32 KiB of weights each. Decoding a task of 16 short rows took
/// about as long as claiming and dispatching it; much larger tasks leave one thread waiting
/// for the other's last task at the end of each of the ~100 regions per token.
#[cfg(target_arch = "x86_64")]
fn decode_rows_per_task(row_bytes: usize) -> usize {
    // Whole tiles of the tiled kernel.
    ((32 << 10) / row_bytes.max(1)).next_multiple_of(TILE_ROWS)
}

/// How many rows ahead the microscaling-float decode prefetches.
#[cfg(target_arch = "x86_64")]
const FP_PREFETCH_AHEAD: usize = 4;

/// Rows per parallel task of a prompt's GEMM (each task unpacks its rows once).
#[cfg(target_arch = "x86_64")]
const GEMM_ROWS_PER_TASK: usize = 32;

/// How a matrix is multiplied by one token (decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decode {
    /// The loops below, compiled for AVX2 where the CPU has it.
    Portable,
    /// `x86::float_row_dot` (AVX2 + FMA + F16C).
    FloatAvx2,
    /// `x86::q4_row_dot` (AVX2): 4-bit rows, groups a multiple of 16.
    Q4Avx2,
    /// `tiles::TiledRows::decode` (AVX-512 VNNI): 4-bit rows repacked at load, 16 rows per
    /// tile, over 16-bit split activations; one or several vectors alike.
    Q4Tiled,
    /// `x86::qn_rows_split` (AVX-512 VNNI + VBMI): 2/3/5/6/8-bit rows.
    AnyWidthVbmi,
    /// `x86::fp_row_dot` (AVX2 + FMA + F16C): mxfp4 / nvfp4 / mxfp8 rows.
    FpAvx2,
    /// `x86::fp_row_dot_512` (AVX-512 F): the same, 16 lanes.
    FpAvx512,
    /// `x86::mxfp4_rows_split` (AVX-512 VNNI): mxfp4 rows as integers over 16-bit split
    /// activations.
    Mxfp4Vnni,
}

/// How a matrix is multiplied by several tokens (a prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prompt {
    Portable,
    /// `x86::float_row_dot4`: four tokens per pass over a row (AVX2).
    FloatAvx2,
    /// `x86::q4_row_dot` per token (AVX2).
    Q4Avx2,
    /// `gemm::float_gemm_rows` (AVX-512).
    FloatGemm,
    /// `tiles::TiledRows::decode` over the tokens, eight at a time (the decode kernel's
    /// arithmetic: a prompt token's outputs are the bits its decode would give).
    Q4Tiled,
    /// `gemm::affine_gemm_rows` (AVX-512 VNNI): any width 2-8.
    AffineGemm,
    /// `gemm::fp_gemm_rows` (AVX-512): microscaling-float rows decoded to f32, then the float
    /// tiles.
    FpGemm,
}

/// The kernels of one matrix, chosen once when the model loads (by format, bits, group,
/// shape and CPU features) instead of on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kernels {
    pub(crate) decode: Decode,
    pub(crate) prompt: Prompt,
}

impl Kernels {
    /// The fastest kernels `cpu` has for `weights` of `cols` columns.
    pub(crate) fn best(weights: &Weights, cols: usize, cpu: Cpu) -> Kernels {
        Kernels {
            decode: Kernels::decode_choices(weights, cols, cpu)[0],
            prompt: Kernels::prompt_choices(weights, cols, cpu)[0],
        }
    }

    /// [`Kernels::best`] but the tiled 4-bit ones (when the memory for the tiles could not be
    /// mapped).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn without_tiles(weights: &Weights, cols: usize, cpu: Cpu) -> Kernels {
        let first = |choices: Vec<Decode>| choices.into_iter().find(|&k| k != Decode::Q4Tiled);
        let prompts = Kernels::prompt_choices(weights, cols, cpu);
        Kernels {
            decode: first(Kernels::decode_choices(weights, cols, cpu)).unwrap_or(Decode::Portable),
            prompt: prompts
                .into_iter()
                .find(|&k| k != Prompt::Q4Tiled)
                .unwrap_or(Prompt::Portable),
        }
    }

    /// Every decode kernel `cpu` can run for `weights`, fastest first, `Portable` last.
    pub(crate) fn decode_choices(weights: &Weights, cols: usize, cpu: Cpu) -> Vec<Decode> {
        let mut out = Vec::new();
        if cfg!(target_arch = "x86_64") {
            match *weights {
                Weights::Float { .. } if cpu.avx2 => out.push(Decode::FloatAvx2),
                Weights::Float { .. } => {}
                Weights::Affine { bits, group, .. } => {
                    if cpu.vnni && tiles_fit(bits, cols, group) {
                        out.push(Decode::Q4Tiled);
                    }
                    if bits != 4 && cpu.vbmi && any_width_kernel_fits(cols, bits, group) {
                        out.push(Decode::AnyWidthVbmi);
                    }
                    if bits == 4 && cpu.avx2 && group.is_multiple_of(16) {
                        out.push(Decode::Q4Avx2);
                    }
                }
                Weights::Fp { mode, .. } if cols.is_multiple_of(32) => {
                    if mode == FpMode::Mxfp4 && cpu.vnni && mxfp4_split_kernel_fits(cols) {
                        out.push(Decode::Mxfp4Vnni);
                    }
                    if cpu.avx512 {
                        out.push(Decode::FpAvx512);
                    }
                    if cpu.avx2 {
                        out.push(Decode::FpAvx2);
                    }
                }
                Weights::Fp { .. } => {}
            }
        }
        out.push(Decode::Portable);
        out
    }

    /// Every prompt kernel `cpu` can run for `weights`, fastest first, `Portable` last.
    pub(crate) fn prompt_choices(weights: &Weights, cols: usize, cpu: Cpu) -> Vec<Prompt> {
        let mut out = Vec::new();
        if cfg!(target_arch = "x86_64") {
            match *weights {
                Weights::Float { .. } => {
                    if cpu.avx512 {
                        out.push(Prompt::FloatGemm);
                    }
                    if cpu.avx2 {
                        out.push(Prompt::FloatAvx2);
                    }
                }
                Weights::Affine { bits, group, .. } => {
                    if cpu.vnni && tiles_fit(bits, cols, group) {
                        out.push(Prompt::Q4Tiled);
                    }
                    if cpu.vnni && gemm_fits(cols, bits, group) {
                        out.push(Prompt::AffineGemm);
                    }
                    if bits == 4 && cpu.avx2 && group.is_multiple_of(16) {
                        out.push(Prompt::Q4Avx2);
                    }
                }
                // Each row decoded to floats once per prompt chunk, then the float GEMM tiles
                // (portable: then dotted with every token).
                Weights::Fp { .. } => {
                    if cpu.avx512 {
                        out.push(Prompt::FpGemm);
                    }
                }
            }
        }
        out.push(Prompt::Portable);
        out
    }
}

#[cfg(target_arch = "x86_64")]
use super::gemm::fits as gemm_fits;
#[cfg(target_arch = "x86_64")]
use super::tiles::{
    amx_available, AmxActivations, Q4Tiles, RowsOut, TileVector, TiledRows, MAX_TILE_VECTORS,
    TILE_ROWS,
};
#[cfg(target_arch = "x86_64")]
use super::x86::SplitActivations;
#[cfg(target_arch = "x86_64")]
use super::x86::{any_width_kernel_fits, mxfp4_split_kernel_fits};
#[cfg(target_arch = "x86_64")]
fn tiles_fit(bits: u32, cols: usize, group: usize) -> bool {
    Q4Tiles::fits(bits, cols, group)
}

// Other architectures have only the portable kernels.
#[cfg(not(target_arch = "x86_64"))]
fn mxfp4_split_kernel_fits(_: usize) -> bool {
    false
}
#[cfg(not(target_arch = "x86_64"))]
fn any_width_kernel_fits(_: usize, _: u32, _: usize) -> bool {
    false
}
#[cfg(not(target_arch = "x86_64"))]
fn tiles_fit(_: u32, _: usize, _: usize) -> bool {
    false
}
#[cfg(not(target_arch = "x86_64"))]
fn gemm_fits(_: usize, _: u32, _: usize) -> bool {
    false
}

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
        let word = words.word(first_word + w);
        for j in 0..N {
            acc[j] += ((word >> (j as u32 * BITS)) & mask) as f32 * xs[j];
        }
    }
    acc.iter().sum()
}

/// One output of a quantized row: `Σ_g scale_g · Σ q·x + bias_g · Σ x` (`xsum` = per-group x sums).
#[inline(always)]
fn affine_row_dot(m: &QuantizedRows, row: usize, x: &[f32], xsum: &[f32]) -> f32 {
    let (group, bits, groups) = (m.group, m.bits, m.groups());
    let words_per_group = group * bits as usize / 32;
    let mut total = 0f32;
    for g in 0..groups {
        let xg = &x[g * group..(g + 1) * group];
        let first = (row * groups + g) * words_per_group;
        let qx = match bits {
            2 => group_dot_whole::<2, 16>(m.words, first, xg),
            4 => group_dot_whole::<4, 8>(m.words, first, xg),
            8 => group_dot_whole::<8, 4>(m.words, first, xg),
            // Codes straddle words (3, 5, 6 bits): one at a time.
            _ => {
                let base = (row * groups + g) * group;
                xg.iter()
                    .enumerate()
                    .map(|(i, &xi)| unpack_at(m.words, bits, base + i) as f32 * xi)
                    .sum()
            }
        };
        let s = m.dtype.value_at(m.scales, row * groups + g);
        let b = m.dtype.value_at(m.biases, row * groups + g);
        total += s * qx + b * xsum[g];
    }
    total
}

/// Row `row` of the matrix as f32 values (an embedding lookup; a dequantized row).
pub fn matrix_row(m: &Matrix, row: usize, out: &mut [f32]) {
    let cols = m.cols;
    match (&m.weights, m.quantized()) {
        (_, Some(q)) => {
            let groups = q.groups();
            for (i, o) in out.iter_mut().enumerate() {
                let code = unpack_at(q.words, q.bits, row * cols + i) as f32;
                let g = row * groups + i / q.group;
                *o = code * q.dtype.value_at(q.scales, g) + q.dtype.value_at(q.biases, g);
            }
        }
        (Weights::Float { data, dtype }, None) => {
            let size = dtype.size();
            dtype.widen_into(
                &data.bytes()[row * cols * size..(row + 1) * cols * size],
                out,
            );
        }
        (Weights::Fp { .. }, None) => {
            if let Some(f) = m.fp() {
                let (w, s) = f.row(row);
                f.mode.decode_row(w, s, out);
            }
        }
        (Weights::Affine { .. }, None) => unreachable!("an affine matrix is quantized"),
    }
}

simd_dispatch! {
    fn rows_times_vectors(m: &Matrix, xs: &[f32], t: usize, xsums: &[f32], first_row: usize, out: &mut [f32]) {
        // `out` holds rows first_row.. for every token: out[r * t + k].
        let rows = out.len() / t;
        let cols = m.cols;
        match (&m.weights, m.quantized()) {
            (_, Some(q)) => {
                let groups = q.groups();
                for r in 0..rows {
                    for k in 0..t {
                        out[r * t + k] = affine_row_dot(
                            &q,
                            first_row + r,
                            &xs[k * cols..(k + 1) * cols],
                            &xsums[k * groups..(k + 1) * groups],
                        );
                    }
                }
            }
            (Weights::Float { data, dtype }, None) => {
                let (mut w, size) = (vec![0f32; cols], dtype.size());
                for r in 0..rows {
                    let row = first_row + r;
                    dtype.widen_into(&data.bytes()[row * cols * size..(row + 1) * cols * size], &mut w);
                    for k in 0..t {
                        out[r * t + k] = dot(&w, &xs[k * cols..(k + 1) * cols]);
                    }
                }
            }
            (Weights::Fp { .. }, None) => {
                let Some(f) = m.fp() else { return };
                let mut w = vec![0f32; cols];
                for r in 0..rows {
                    let (codes, scales) = f.row(first_row + r);
                    f.mode.decode_row(codes, scales, &mut w);
                    for k in 0..t {
                        out[r * t + k] = dot(&w, &xs[k * cols..(k + 1) * cols]);
                    }
                }
            }
            (Weights::Affine { .. }, None) => {}
        }
    }
}

/// Per-group sums of each of the `t` vectors of `xs` (what the bias terms multiply).
fn group_sums(m: &Matrix, xs: &[f32], t: usize, out: &mut Vec<f32>) {
    out.clear();
    if let Weights::Affine { group, .. } = m.weights {
        for k in 0..t {
            for g in xs[k * m.cols..(k + 1) * m.cols].chunks_exact(group) {
                out.push(g.iter().sum());
            }
        }
    }
}

/// The portable kernels over the pool.
fn portable_matmul(m: &Matrix, xs: &[f32], t: usize, ys: &mut [f32], scratch: &mut MatmulScratch) {
    group_sums(m, xs, t, &mut scratch.xsums);
    let xsums = &scratch.xsums;
    drive(m.rows, t, ys, &mut scratch.by_row, |first, out| {
        rows_times_vectors(m, xs, t, xsums, first, out)
    });
}

/// `ys[k] = M · xs[k]` for `t` input vectors (`xs`: t × cols, `ys`: t × rows), the weights read
/// once for all of them, by the kernels chosen for `m` at load. `scratch` holds the
/// intermediates (no allocation per token once warm).
pub fn matmul(m: &Matrix, xs: &[f32], t: usize, ys: &mut [f32], scratch: &mut MatmulScratch) {
    debug_assert_eq!(xs.len(), t * m.cols);
    debug_assert_eq!(ys.len(), t * m.rows);
    #[cfg(target_arch = "x86_64")]
    if x86_matmul(m, xs, t, ys, scratch) {
        return;
    }
    portable_matmul(m, xs, t, ys, scratch);
}

/// Several products of the same input (q/k/v, gate/up). Decoding one token, they run as one
/// parallel region when their kernels allow it: waking the pool's threads once instead of
/// once per matrix.
pub fn matmul_many(
    products: &mut [(&Matrix, &mut [f32])],
    xs: &[f32],
    t: usize,
    scratch: &mut MatmulScratch,
) {
    #[cfg(target_arch = "x86_64")]
    if t == 1 && x86_decode(products, xs, scratch) {
        return;
    }
    for (m, ys) in products.iter_mut() {
        matmul(m, xs, t, ys, scratch);
    }
}

/// `products` of `n` separate decode vectors (`xs` row-major, `n × cols`; each output
/// `n × rows`): every vector gets exactly what its own decode gives (`matmul_many(.., 1)`),
/// bit for bit. With 4-bit weights each weight row is read once for all the vectors (the
/// tiled kernel's [`super::tiles::TiledRows::decode`], the AVX2 one's
/// [`super::x86::q4_rows_many`]); other formats run each vector by itself.
pub fn matmul_many_rows(
    products: &mut [(&Matrix, &mut [f32])],
    xs: &[f32],
    n: usize,
    scratch: &mut MatmulScratch,
) {
    let cols = xs.len() / n.max(1);
    #[cfg(target_arch = "x86_64")]
    {
        if x86_decode_rows(products, xs, n, scratch) {
            return;
        }
        // More vectors than the AVX2 kernel takes: even groups of at most its maximum, each
        // group reading the weights once.
        let max = super::x86::MAX_Q4_AVX2_VECTORS;
        if n > max {
            let groups = n.div_ceil(max);
            let mut k = 0;
            for g in 0..groups {
                let m = (n - k) / (groups - g);
                let mut part: Vec<(&Matrix, &mut [f32])> = products
                    .iter_mut()
                    .map(|(mat, ys)| {
                        let r = mat.rows;
                        (*mat, &mut ys[k * r..(k + m) * r])
                    })
                    .collect();
                matmul_many_rows(&mut part, &xs[k * cols..(k + m) * cols], m, scratch);
                k += m;
            }
            return;
        }
        if x86_q4_avx2_rows(products, xs, n, scratch) {
            return;
        }
    }
    for i in 0..n {
        let mut row: Vec<(&Matrix, &mut [f32])> = products
            .iter_mut()
            .map(|(m, ys)| {
                let w = ys.len() / n;
                (*m, &mut ys[i * w..(i + 1) * w])
            })
            .collect();
        matmul_many(&mut row, &xs[i * cols..(i + 1) * cols], 1, scratch);
    }
}

/// [`matmul_many_rows`] on the tiled kernel, when every product decodes with `Q4Tiled` at one
/// group size and there are 2 vectors or more; `false` otherwise.
#[cfg(target_arch = "x86_64")]
fn x86_decode_rows(
    products: &mut [(&Matrix, &mut [f32])],
    xs: &[f32],
    n: usize,
    scratch: &mut MatmulScratch,
) -> bool {
    if products.is_empty() {
        return true;
    }
    let Some((cols, group)) = batch_shape(products, xs, n, Decode::Q4Tiled, usize::MAX) else {
        return false;
    };
    // SAFETY: `Q4Tiled` was chosen at load for these matrices, which needs AVX-512 F and BW
    // (VNNI implies them) and the shapes `set_fast` needs.
    unsafe { prepare_tile_vectors(&mut scratch.vectors, xs, n, cols, group) };
    let first = products[0].0;
    let rows_per_task = decode_rows_per_task(first.nbytes() / first.rows.max(1));
    tiled_products(
        products,
        &scratch.vectors[..n],
        rows_per_task,
        &mut scratch.amx,
    );
    true
}

/// The first `n` of `vectors` set to the `n` rows of `xs` (`cols` each, groups of `group`), on
/// the pool (one thread preparing a batch's 8 kept the other waiting for ~2% of a step).
///
/// # Safety
/// The CPU must support AVX-512 F and BW, and `cols` and `group` be shapes `TileVector::set`
/// takes.
#[cfg(target_arch = "x86_64")]
unsafe fn prepare_tile_vectors(
    vectors: &mut Vec<TileVector>,
    xs: &[f32],
    n: usize,
    cols: usize,
    group: usize,
) {
    vectors.resize_with(n.max(vectors.len()), Default::default);
    pool().for_each_chunk(&mut vectors[..n], 1, |k, v| {
        if let Some(v) = v.first_mut() {
            // SAFETY: this function's contract.
            unsafe { v.set(&xs[k * cols..(k + 1) * cols], group) }
        }
    });
}

/// From how many vectors the tiled products run on AMX (where the CPU has it) rather than
/// `vpdpbusd`: the outputs are the same bits either way (`src/engine/tiles/amx.rs`). Measured
/// (docs/benchmarks.md): prompts of 71 and 520 tokens 5-20% faster on AMX, batched decode
/// steps of 8 and 16 sequences 7% and 4% slower — so prompts only.
#[cfg(target_arch = "x86_64")]
const AMX_MIN_VECTORS: usize = 32;

/// Rows per task on AMX, at least: four tiles.
#[cfg(target_arch = "x86_64")]
const AMX_ROWS_PER_TASK: usize = 4 * TILE_ROWS;

/// Every product's rows against every one of `vectors` (prepared for their columns and group;
/// any number: on AMX from [`AMX_MIN_VECTORS`] on, else in groups of [`MAX_TILE_VECTORS`]) by
/// the tiled kernel, as one parallel region of `rows_per_task` rows per task (whole tiles);
/// the outputs vector-major, as [`matmul_many_rows`]'s. A task runs all the vectors over its
/// rows, so its tiles stay in cache from one group of vectors to the next.
#[cfg(target_arch = "x86_64")]
fn tiled_products(
    products: &mut [(&Matrix, &mut [f32])],
    vectors: &[TileVector],
    rows_per_task: usize,
    amx: &mut AmxActivations,
) {
    const PARTS: usize = 8;
    let t = vectors.len();
    debug_assert!(rows_per_task.is_multiple_of(TILE_ROWS) && t > 0);
    let shape = products
        .first()
        .and_then(|(m, _)| m.tiles.as_ref())
        .map(TiledRows::shape);
    let amx: Option<&AmxActivations> = match shape {
        Some((cols, group)) if t >= AMX_MIN_VECTORS && amx_available() => {
            // SAFETY: tiles exist only on a CPU with AVX-512 VNNI (F with it).
            unsafe { amx.set(vectors, cols, group) };
            Some(amx)
        }
        _ => None,
    };
    // AMX reuses a block of vectors over several tiles of a task (`tiles/amx.rs`).
    let rows_per_task = if amx.is_some() {
        rows_per_task.max(AMX_ROWS_PER_TASK)
    } else {
        rows_per_task
    };
    for part in products.chunks_mut(PARTS) {
        // Per product: its tiles, its outputs, its rows, and its first task.
        let mut spans: [Option<(&TiledRows, RowsOut, usize)>; PARTS] = [None; PARTS];
        let mut starts = [0usize; PARTS + 1];
        for (i, (m, ys)) in part.iter_mut().enumerate() {
            assert!(
                ys.len() == t * m.rows,
                "tiled products: outputs of another shape"
            );
            spans[i] = m
                .tiles
                .as_ref()
                .map(|tiles| (tiles, RowsOut::new(ys, m.rows, 0, 0), m.rows));
            starts[i + 1] = starts[i] + m.rows.div_ceil(rows_per_task);
        }
        let count = part.len();
        pool().run(starts[count], &|task| {
            let p = starts[..count].partition_point(|&s| s <= task) - 1;
            let Some((tiles, out, rows)) = spans[p] else {
                return;
            };
            let first = (task - starts[p]) * rows_per_task;
            let nrows = rows_per_task.min(rows - first);
            if let Some(amx) = amx {
                // SAFETY: as below, and `amx_available` said the tile registers are ours.
                unsafe { tiles.amx_decode(amx, first, nrows, out.offset(0, first)) };
                return;
            }
            for k0 in (0..t).step_by(MAX_TILE_VECTORS) {
                let m = (t - k0).min(MAX_TILE_VECTORS);
                let group: [(&SplitActivations, &[f32]); MAX_TILE_VECTORS] =
                    std::array::from_fn(|k| vectors[(k0 + k).min(t - 1)].pair());
                // SAFETY: `Q4Tiled` (these tiles) is chosen at load only on a CPU with AVX-512
                // VNNI; task `task` alone writes rows `first..first + nrows`, and the outputs
                // stay borrowed until `run` returns.
                unsafe { tiles.decode(&group[..m], first, nrows, out.offset(k0, first)) }
            }
        });
    }
}

/// `(cols, group)` of `products` when every one decodes with `kernel` at one group size, has
/// the columns of the `n` vectors of `xs` and room for their outputs, and `n` is 1 (2 for the
/// VNNI kernel, whose single vector has its own path) to `max`; `None` otherwise.
#[cfg(target_arch = "x86_64")]
fn batch_shape(
    products: &[(&Matrix, &mut [f32])],
    xs: &[f32],
    n: usize,
    kernel: Decode,
    max: usize,
) -> Option<(usize, usize)> {
    let first = products.first()?.0;
    let (cols, group) = match (&first.weights, first.kernels.decode) {
        (Weights::Affine { group, .. }, k) if k == kernel => (first.cols, *group),
        _ => return None,
    };
    let min = if kernel == Decode::Q4Tiled { 2 } else { 1 };
    let fits = (min..=max).contains(&n)
        && xs.len() == n * cols
        && products.iter().all(|(m, ys)| {
            m.kernels.decode == kernel
                && m.cols == cols
                && ys.len() == n * m.rows
                && matches!(m.weights, Weights::Affine { group: g, .. } if g == group)
        });
    fits.then_some((cols, group))
}

/// Runs `kernel(matrix, first, out)` over the rows of every product as one parallel region,
/// its outputs row-major by (row, vector) in `temps` (a task's rows are contiguous there), then
/// scatters them into the products' vector-major outputs.
#[cfg(target_arch = "x86_64")]
fn by_row_then_vector(
    products: &mut [(&Matrix, &mut [f32])],
    n: usize,
    temps: &mut Vec<Vec<f32>>,
    kernel: impl Fn(&&Matrix, usize, &mut [f32]) + Sync,
) {
    let Some(first) = products.first().map(|p| p.0) else {
        return;
    };
    temps.resize_with(products.len(), Vec::new);
    for (t, (m, _)) in temps.iter_mut().zip(products.iter()) {
        t.clear();
        t.resize(m.rows * n, 0.0);
    }
    let mut parts: Vec<(&Matrix, &mut [f32])> = products
        .iter()
        .zip(temps.iter_mut())
        .map(|((m, _), t)| (*m, &mut t[..]))
        .collect();
    let chunk = decode_rows_per_task(first.nbytes() / first.rows.max(1)) * n;
    pool().for_each_chunk_of(&mut parts, chunk, kernel);
    for ((m, ys), t) in products.iter_mut().zip(temps.iter()) {
        let rows = m.rows;
        for r in 0..rows {
            for k in 0..n {
                ys[k * rows + r] = t[r * n + k];
            }
        }
    }
}

/// What the AVX2 4-bit kernel needs per pool thread, reused task after task: a task's rows'
/// scales and biases widened to f32, the kernel's own buffers, and one block of outputs.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct Q4TaskScratch {
    scales: Vec<f32>,
    biases: Vec<f32>,
    many: super::x86::Q4ManyScratch,
    block: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
impl Q4TaskScratch {
    /// Rows `first..first + rows` of `q` against `n` permuted vectors (`xperms`, group sums
    /// `xsums`) into `out` (`rows × n`, row-major).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, `q` 4-bit codes in groups a multiple of 16, and the
    /// vectors `q.cols` columns each.
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows(
        &mut self,
        q: &QuantizedRows,
        first: usize,
        rows: usize,
        xperms: &[f32],
        xsums: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        let (groups, size, row_bytes) = (q.groups(), q.dtype.size(), q.row_bytes());
        let at = first * groups * size..(first + rows) * groups * size;
        q.dtype.widen(&q.scales[at.clone()], &mut self.scales);
        q.dtype.widen(&q.biases[at], &mut self.biases);
        let words = &q.words[first * row_bytes..(first + rows) * row_bytes];
        if n == 1 {
            // One vector: straight from the codes, without widening them into a buffer first.
            for (r, y) in out.iter_mut().enumerate() {
                let g = r * groups..(r + 1) * groups;
                // SAFETY: this function's contract.
                *y = unsafe {
                    super::x86::q4_row_dot(
                        &words[r * row_bytes..(r + 1) * row_bytes],
                        &self.scales[g.clone()],
                        &self.biases[g],
                        xperms,
                        xsums,
                        q.group,
                    )
                };
            }
            return;
        }
        // SAFETY: this function's contract.
        unsafe {
            super::x86::q4_rows_many(
                words,
                row_bytes,
                &self.scales,
                &self.biases,
                q.group,
                xperms,
                xsums,
                n,
                &mut self.many,
                out,
            )
        }
    }
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static Q4_TASK: std::cell::RefCell<Q4TaskScratch> = std::cell::RefCell::default();
}

/// `products` of `n` decode vectors (1 to `x86::MAX_Q4_AVX2_VECTORS`; `xs` and each output
/// vector-major, as [`matmul_many_rows`]) as one parallel region, when every matrix decodes
/// with `Q4Avx2` at one group size; `false` otherwise. Each row's codes are read and widened
/// once for all the vectors (`x86::q4_rows_many`), and every vector's outputs are
/// bit-identical to its own `x86::q4_row_dot` — what one token's decode runs.
#[cfg(target_arch = "x86_64")]
fn x86_q4_avx2_rows(
    products: &mut [(&Matrix, &mut [f32])],
    xs: &[f32],
    n: usize,
    scratch: &mut MatmulScratch,
) -> bool {
    use super::x86;
    let Some(first) = products.first().map(|p| p.0) else {
        return true;
    };
    let Some((cols, _)) = batch_shape(products, xs, n, Decode::Q4Avx2, x86::MAX_Q4_AVX2_VECTORS)
    else {
        return false;
    };
    group_sums(first, xs, n, &mut scratch.xsums);
    x86::permute_many_for_q4(xs, n, cols, &mut scratch.xperm);
    let (xperm, xsums) = (&scratch.xperm, &scratch.xsums);
    let kernel = |m: &&Matrix, at: usize, out: &mut [f32]| {
        let Some(q) = m.quantized() else { return };
        Q4_TASK.with_borrow_mut(|task| {
            // SAFETY: `Q4Avx2` was chosen at load for these matrices, only on a CPU with AVX2
            // and FMA and for groups a multiple of 16; the activations and sums were prepared
            // above for `n` vectors of `cols` columns; `at` and `out.len()` are multiples of
            // `n` (chunks of whole rows).
            unsafe { task.rows(&q, at / n, out.len() / n, xperm, xsums, n, out) }
        })
    };
    if n == 1 {
        // One vector: the outputs are already row-major.
        let chunk = decode_rows_per_task(first.nbytes() / first.rows.max(1));
        pool().for_each_chunk_of(products, chunk, kernel);
    } else {
        by_row_then_vector(products, n, &mut scratch.rows_out, kernel);
    }
    true
}

/// One token through one or several products of the same input as one parallel region, when
/// every matrix decodes with `FloatAvx2`, or every one with a split-activation kernel
/// (`Q4Tiled`, `AnyWidthVbmi`) at one group size; `false` otherwise (the caller then runs each
/// product by itself).
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
    if x86_q4_avx2_rows(products, x, 1, scratch) {
        return true;
    }
    let cols = first.cols;
    let split_group = |m: &Matrix| match (m.kernels.decode, &m.weights) {
        (Decode::Q4Tiled | Decode::AnyWidthVbmi, Weights::Affine { group, .. }) => Some(*group),
        (Decode::Mxfp4Vnni, _) => Some(FpMode::Mxfp4.group_size()),
        _ => None,
    };
    let same_cols = products
        .iter()
        .all(|(m, ys)| m.cols == cols && ys.len() == m.rows);
    // Float and microscaling-float rows need no prepared activations: any mix of them runs
    // as one region.
    let all_float = products.iter().all(|(m, _)| {
        matches!(
            m.kernels.decode,
            Decode::FloatAvx2 | Decode::FpAvx2 | Decode::FpAvx512
        )
    });
    let group = split_group(first);
    let all_split = group.is_some() && products.iter().all(|(m, _)| split_group(m) == group);
    if !same_cols || !(all_float || all_split) {
        return false;
    }
    if let Some(group) = group {
        let nibbles = products
            .iter()
            .any(|(m, _)| matches!(m.kernels.decode, Decode::Q4Tiled | Decode::Mxfp4Vnni));
        let natural = products
            .iter()
            .any(|(m, _)| m.kernels.decode == Decode::AnyWidthVbmi);
        // SAFETY: a split kernel was chosen for these matrices at load, which needs AVX-512 F
        // and BW (VNNI implies them); their shapes are what `set_fast` needs (columns a
        // multiple of 128, groups of 32 / 64 / 128).
        unsafe {
            scratch
                .split
                .set_fast(x, group, nibbles, natural, &mut scratch.xsums)
        };
    }
    // The AVX-512 FP4 kernel reads x in its lane order.
    let fp4_512 = |m: &Matrix| {
        m.kernels.decode == Decode::FpAvx512
            && matches!(m.weights, Weights::Fp { mode, .. } if mode.bits() == 4)
    };
    if products.iter().any(|(m, _)| fp4_512(m)) {
        x86::interleave_for_fp4(x, &mut scratch.xperm);
    }
    let (sa, xsums, xi) = (&scratch.split, &scratch.xsums, &scratch.xperm);
    // One region: the matrices' row chunks are stolen as one pool of work.
    let run = |m: &Matrix, first: usize, out: &mut [f32]| match (m.kernels.decode, m.quantized()) {
        // SAFETY (all three arms): the kernel was chosen at load for this matrix only when the
        // CPU has its features and the matrix's shape fits it (`Kernels::decode_choices`); the
        // activations were prepared above in the layout each kernel reads.
        (Decode::Q4Tiled, Some(_)) => {
            if let Some(tiles) = &m.tiles {
                let rows = out.len();
                // SAFETY: as the arms around it; `first` starts a tile (chunks of whole tiles)
                // and this task alone writes `out`.
                unsafe {
                    tiles.decode(
                        &[(sa, &xsums[..])],
                        first,
                        rows,
                        RowsOut::new(out, rows, 0, 0),
                    )
                }
            }
        }
        (Decode::Mxfp4Vnni, None) => {
            if let Some(f) = m.fp() {
                // SAFETY: as the arms around it; the activations are in groups of 32.
                unsafe { x86::mxfp4_rows_split(&f, sa, xsums, first, out) }
            }
        }
        (Decode::AnyWidthVbmi, Some(q)) => unsafe {
            match q.bits {
                2 => x86::qn_rows_split::<2>(&q, sa, xsums, first, out),
                3 => x86::qn_rows_split::<3>(&q, sa, xsums, first, out),
                5 => x86::qn_rows_split::<5>(&q, sa, xsums, first, out),
                6 => x86::qn_rows_split::<6>(&q, sa, xsums, first, out),
                _ => x86::qn_rows_split::<8>(&q, sa, xsums, first, out),
            }
        },
        (Decode::FloatAvx2, None) => {
            if let Weights::Float { data, dtype } = &m.weights {
                let size = dtype.size();
                for (r, y) in out.iter_mut().enumerate() {
                    let at = (first + r) * cols * size;
                    // SAFETY: `FloatAvx2` is chosen at load only for a CPU with AVX2, FMA, F16C.
                    *y = unsafe {
                        x86::float_row_dot(&data.bytes()[at..at + cols * size], *dtype, x)
                    };
                }
            }
        }
        (kernel @ (Decode::FpAvx2 | Decode::FpAvx512), None) => {
            if let Some(f) = m.fp() {
                let (mode, row) = (&f.mode, |r: usize| f.row(r));
                let prefetch = |r: usize| {
                    if r + FP_PREFETCH_AHEAD < m.rows {
                        let (codes, scales) = f.row(r + FP_PREFETCH_AHEAD);
                        // SAFETY: SSE is part of x86-64; the row's slices are in the matrix.
                        unsafe { x86::prefetch_fp_row(codes, scales) };
                    }
                };
                if kernel == Decode::FpAvx512 {
                    let xv = if mode.bits() == 4 { &xi[..] } else { x };
                    // Two rows at a time: each activation load serves both.
                    let mut pairs = out.chunks_exact_mut(2);
                    let mut r = first;
                    for y in &mut pairs {
                        prefetch(r);
                        prefetch(r + 1);
                        let ((w0, s0), (w1, s1)) = (row(r), row(r + 1));
                        // SAFETY: `FpAvx512` is chosen at load only for a CPU with AVX-512 F
                        // (and the AVX2 features, FMA and F16C with it).
                        let v = unsafe { x86::fp_rows_512([w0, w1], [s0, s1], *mode, xv) };
                        y.copy_from_slice(&v);
                        r += 2;
                    }
                    if let [y] = pairs.into_remainder() {
                        prefetch(r);
                        let (w, s) = row(r);
                        // SAFETY: as above.
                        *y = unsafe { x86::fp_rows_512([w], [s], *mode, xv) }[0];
                    }
                } else {
                    for (i, y) in out.iter_mut().enumerate() {
                        prefetch(first + i);
                        let (w, s) = row(first + i);
                        // SAFETY: `FpAvx2` is chosen at load only for a CPU with AVX2, FMA,
                        // F16C.
                        *y = unsafe { x86::fp_row_dot(w, s, *mode, x) };
                    }
                }
            }
        }
        _ => rows_times_vectors(m, x, 1, xsums, first, out),
    };
    let chunk = decode_rows_per_task(first.nbytes() / first.rows.max(1));
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

/// `m` times the `t` tokens by its x86 kernel; `false` when that is the portable one.
#[cfg(target_arch = "x86_64")]
fn x86_matmul(
    m: &Matrix,
    xs: &[f32],
    t: usize,
    ys: &mut [f32],
    scratch: &mut MatmulScratch,
) -> bool {
    use super::{gemm, x86};
    let (rows, cols) = (m.rows, m.cols);
    let kernel = if t == 1 {
        match m.kernels.decode {
            Decode::FloatAvx2
            | Decode::Q4Tiled
            | Decode::AnyWidthVbmi
            | Decode::Q4Avx2
            | Decode::FpAvx2
            | Decode::FpAvx512
            | Decode::Mxfp4Vnni => {
                return x86_decode(&mut [(m, ys)], xs, scratch);
            }
            Decode::Portable => return false,
        }
    } else {
        m.kernels.prompt
    };
    match (kernel, &m.weights, m.quantized()) {
        (Prompt::Q4Tiled, _, Some(q)) if m.tiles.is_some() => {
            // SAFETY: `Q4Tiled` is chosen at load only on a CPU with AVX-512 VNNI (F and BW
            // with it) and for shapes `set_fast` takes.
            unsafe { prepare_tile_vectors(&mut scratch.vectors, xs, t, cols, q.group) };
            tiled_products(
                &mut [(m, ys)],
                &scratch.vectors[..t],
                TILE_ROWS,
                &mut scratch.amx,
            );
        }
        (Prompt::AffineGemm, _, Some(q)) => {
            scratch.panels.set(xs, t, cols, q.group);
            let (panels, out) = (&scratch.panels, gemm::TokenMajorOut::new(ys));
            pool().run(rows.div_ceil(GEMM_ROWS_PER_TASK), &|c| {
                let first = c * GEMM_ROWS_PER_TASK;
                let n = GEMM_ROWS_PER_TASK.min(rows - first);
                // SAFETY: the kernel was chosen at load for a CPU with VNNI and a matrix that
                // `gemm::fits`; the panels were set for this matrix above, `ys` is borrowed
                // until `run` returns, and task `c` alone writes rows `first..first + n`.
                unsafe { gemm::affine_gemm_rows(&q, panels, first, n, out) }
            });
        }
        (Prompt::FloatGemm, Weights::Float { data, dtype }, _) => {
            scratch.float_panels.set(xs, t, cols);
            let (panels, out) = (&scratch.float_panels, gemm::TokenMajorOut::new(ys));
            let (bytes, dtype) = (data.bytes(), *dtype);
            pool().run(rows.div_ceil(GEMM_ROWS_PER_TASK), &|c| {
                let first = c * GEMM_ROWS_PER_TASK;
                let n = GEMM_ROWS_PER_TASK.min(rows - first);
                // SAFETY: chosen at load for a CPU with AVX-512; the panels were set for this
                // matrix above, `ys` is borrowed until `run` returns, and task `c` alone
                // writes rows `first..first + n`.
                unsafe { gemm::float_gemm_rows(bytes, dtype, rows, cols, panels, first, n, out) }
            });
        }
        (Prompt::FpGemm, Weights::Fp { .. }, _) => {
            let Some(f) = m.fp() else { return false };
            scratch.float_panels.set(xs, t, cols);
            let (panels, out) = (&scratch.float_panels, gemm::TokenMajorOut::new(ys));
            pool().run(rows.div_ceil(GEMM_ROWS_PER_TASK), &|c| {
                let first = c * GEMM_ROWS_PER_TASK;
                let n = GEMM_ROWS_PER_TASK.min(rows - first);
                // SAFETY: as `FloatGemm` above (chosen at load for a CPU with AVX-512).
                unsafe { gemm::fp_gemm_rows(&f, rows, cols, panels, first, n, out) }
            });
        }
        (Prompt::FloatAvx2, Weights::Float { data, dtype }, _) => {
            let (bytes, size) = (data.bytes(), dtype.size());
            drive(rows, t, ys, &mut scratch.by_row, |first, out| {
                for (r, o) in out.chunks_exact_mut(t).enumerate() {
                    let row = &bytes[(first + r) * cols * size..(first + r + 1) * cols * size];
                    // Four tokens per pass over the row.
                    let blocks = t / 4;
                    for b in 0..blocks {
                        let x = |i: usize| &xs[(4 * b + i) * cols..(4 * b + i + 1) * cols];
                        // SAFETY: chosen at load for a CPU with AVX2, FMA and F16C.
                        let y =
                            unsafe { x86::float_row_dot4(row, *dtype, [x(0), x(1), x(2), x(3)]) };
                        o[4 * b..4 * b + 4].copy_from_slice(&y);
                    }
                    for (k, y) in o.iter_mut().enumerate().skip(4 * blocks) {
                        // SAFETY: as above.
                        *y = unsafe {
                            x86::float_row_dot(row, *dtype, &xs[k * cols..(k + 1) * cols])
                        };
                    }
                }
            });
        }
        (Prompt::Q4Avx2, _, Some(q)) => {
            group_sums(m, xs, t, &mut scratch.xsums);
            let groups = q.groups();
            x86::permute_many_for_q4(xs, t, cols, &mut scratch.xperm);
            let (xperm, xsums) = (&scratch.xperm, &scratch.xsums);
            drive(rows, t, ys, &mut scratch.by_row, |first, out| {
                Q4_TASK.with_borrow_mut(|task| {
                    // Blocks of tokens: each reads the task's rows once for all its tokens.
                    let n_rows = out.len() / t;
                    let mut block = std::mem::take(&mut task.block);
                    for k0 in (0..t).step_by(x86::MAX_Q4_AVX2_VECTORS) {
                        let n = x86::MAX_Q4_AVX2_VECTORS.min(t - k0);
                        block.clear();
                        block.resize(n_rows * n, 0.0);
                        // SAFETY: chosen at load for a CPU with AVX2 and FMA and groups a
                        // multiple of 16; the tokens were permuted and summed above.
                        unsafe {
                            task.rows(
                                &q,
                                first,
                                n_rows,
                                &xperm[k0 * x86::q4_vector_stride(cols)..],
                                &xsums[k0 * groups..],
                                n,
                                &mut block,
                            )
                        };
                        for (r, o) in out.chunks_exact_mut(t).enumerate() {
                            o[k0..k0 + n].copy_from_slice(&block[r * n..(r + 1) * n]);
                        }
                    }
                    task.block = block;
                })
            });
        }
        _ => return false,
    }
    true
}

/// Buffers `matmul` reuses across calls (no allocation per token once warm).
#[derive(Default)]
pub struct MatmulScratch {
    xsums: Vec<f32>,
    xperm: Vec<f32>,
    by_row: Vec<f32>,
    /// Several vectors for the tiled kernel (a batched decode, a prompt): each one's split
    /// activations and group sums.
    #[cfg(target_arch = "x86_64")]
    vectors: Vec<TileVector>,
    /// The same vectors as AMX's A matrices (when that path runs).
    #[cfg(target_arch = "x86_64")]
    amx: AmxActivations,
    /// The AVX2 kernel's batched outputs by (row, vector).
    #[cfg(target_arch = "x86_64")]
    rows_out: Vec<Vec<f32>>,
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

/// Rotary embedding of one head at `pos`, mlx's non-traditional layout: the pairs (i, i + n)
/// of the first `2n` dimensions turn (n = `table.len()`, all of the head or phi3's partial
/// rotary part), the rest stay. `table` holds the position's (cos, sin) pairs ([`rope_table`]).
pub fn rope(head: &mut [f32], table: &[(f32, f32)]) {
    let half = table.len();
    let (first, second) = head[..2 * half].split_at_mut(half);
    for ((a, b), &(cos, sin)) in first.iter_mut().zip(second).zip(table) {
        let (x, y) = (*a, *b);
        *a = x * cos - y * sin;
        *b = x * sin + y * cos;
    }
}

/// Appends the (cos, sin) pairs of position `pos`, both multiplied by the RoPE's mscale:
/// computed once per token for every head and layer (the angles are the same; sin/cos per
/// head and layer cost ~4% of a decode step).
pub fn rope_table(pos: usize, r: &Rope, out: &mut Vec<(f32, f32)>) {
    out.extend(r.inv_freq.iter().map(|&f| {
        let (sin, cos) = (pos as f32 * f).sin_cos();
        if r.mscale == 1.0 {
            (cos, sin)
        } else {
            (cos * r.mscale, sin * r.mscale)
        }
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

/// gpt-oss's clamped SwiGLU, into `gate`: `(clip(up, ±7) + 1) · g · σ(1.702 g)` with
/// `g = min(gate, 7)` (mlx-lm's `swiglu_oai`).
pub fn swiglu_oai_mul(gate: &mut [f32], up: &[f32]) {
    swiglu_oai_mul_simd(gate, up)
}

simd_dispatch! {
    fn swiglu_oai_mul_simd(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            let x = g.min(7.0);
            let linear = u.clamp(-7.0, 7.0) + 1.0;
            *g = linear * (x / (1.0 + exp(-1.702 * x)));
        }
    }
}

/// gelu_approx(gate) * up, into `gate`: mlx's `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`,
/// with tanh(y) = 1 - 2 / (e^{2y} + 1) on the vectorized [`exp`] (within 1e-7 of libm's).
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    gelu_tanh_mul_simd(gate, up)
}

simd_dispatch! {
    fn gelu_tanh_mul_simd(gate: &mut [f32], up: &[f32]) {
        let c = (2.0 / std::f64::consts::PI).sqrt() as f32;
        for (g, u) in gate.iter_mut().zip(up) {
            let x = *g;
            let y = c * (x + 0.044715 * (x * x * x));
            let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
            *g = 0.5 * x * (1.0 + tanh) * u;
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
    // n = round(x / ln 2) by the 1.5·2^23 trick (no libm call, vectorizes): `t` is the
    // magic number plus n, so n is also its bit pattern minus the magic one's — the integer
    // for 2^n below without a float-to-int cast (`as i32` saturates NaN to 0, which the
    // compiler can only do one lane at a time).
    let magic = 12_582_912.0f32;
    let t = x * std::f32::consts::LOG2_E + magic;
    let n = t - magic;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    let n_int = (t.to_bits() as i32).wrapping_sub(magic.to_bits() as i32);
    let e = e * f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
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
    use crate::mlx::fp::FpMode;
    use crate::mlx::FloatDtype;
    use std::sync::Arc;

    /// Decode rows of several vectors: bit for bit what each vector's own decode gives, for
    /// every decode kernel this CPU has, the batched 4-bit VNNI and AVX2 ones included (one
    /// and several products at once, 2 to 8 vectors, and one more than the batched kernel
    /// takes).
    #[test]
    fn decode_rows_equal_each_vectors_own_decode() {
        let (rows, cols) = (43, 1024);
        let mut rng = crate::testkit::Rng::new(9);
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32()).collect();
        let cpu = crate::simd::cpu();
        let mut batched_runs = 0;
        for (bits, group) in [(4, 64), (4, 32), (4, 128), (8, 64), (3, 32)] {
            let base = quantized_matrix(&values, rows, cols, bits, group);
            for decode in Kernels::decode_choices(&base.weights, cols, cpu) {
                let m = base.with_kernels(Kernels {
                    decode,
                    ..base.kernels
                });
                let m2 = m.clone();
                for n in [2usize, 3, 8, 9, 17] {
                    let xs: Vec<f32> = (0..n * cols).map(|_| rng.next_f32()).collect();
                    let mut want = vec![0f32; n * rows];
                    let mut want2 = vec![0f32; n * rows];
                    for k in 0..n {
                        let (a, b) = (
                            &mut want[k * rows..(k + 1) * rows],
                            &mut want2[k * rows..(k + 1) * rows],
                        );
                        matmul_many(
                            &mut [(&m, a), (&m2, b)],
                            &xs[k * cols..(k + 1) * cols],
                            1,
                            &mut MatmulScratch::default(),
                        );
                    }
                    let mut got = vec![0f32; n * rows];
                    let mut got2 = vec![0f32; n * rows];
                    let mut scratch = MatmulScratch::default();
                    matmul_many_rows(&mut [(&m, &mut got[..])], &xs, n, &mut scratch);
                    assert_eq!(got, want, "{bits}-bit/{group} {decode:?}, {n} vectors");
                    matmul_many_rows(
                        &mut [(&m, &mut got[..]), (&m2, &mut got2[..])],
                        &xs,
                        n,
                        &mut scratch,
                    );
                    assert_eq!((&got, &got2), (&want, &want2), "two products, {n} vectors");
                    #[cfg(target_arch = "x86_64")]
                    {
                        // The batched kernel itself took these (not the per-vector fallback).
                        type Batched = fn(
                            &mut [(&Matrix, &mut [f32])],
                            &[f32],
                            usize,
                            &mut MatmulScratch,
                        ) -> bool;
                        let batched: Option<Batched> = match decode {
                            Decode::Q4Tiled => Some(x86_decode_rows),
                            Decode::Q4Avx2 => Some(x86_q4_avx2_rows),
                            _ => None,
                        };
                        if let Some(batched) = batched.filter(|_| n <= 8) {
                            let mut direct = vec![0f32; n * rows];
                            assert!(batched(&mut [(&m, &mut direct[..])], &xs, n, &mut scratch));
                            assert_eq!(direct, want, "batched {decode:?} kernel, {n} vectors");
                            batched_runs += 1;
                        }
                    }
                }
            }
        }
        if cpu.avx2 {
            assert!(batched_runs > 0, "no batched kernel was exercised");
        }
    }

    /// The tiled 4-bit kernel: a prompt token's outputs are the bits its own decode gives (one
    /// arithmetic for both); the row ranges of a fused matrix (q / k / v, gate / up, experts)
    /// give what a matrix of those rows alone gives — sharing the tiles when a range starts on
    /// a tile, repacked on their own otherwise — decoding one vector or several.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tiled_prompts_equal_decodes_and_row_ranges_their_own_matrices() {
        if !crate::simd::cpu().vnni {
            return;
        }
        // 70 rows: four whole tiles and a partial one.
        let (rows, cols, t) = (70, 512, 11);
        let mut rng = crate::testkit::Rng::new(21);
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32()).collect();
        let xs: Vec<f32> = (0..t * cols).map(|_| rng.next_f32()).collect();
        let m = quantized_matrix(&values, rows, cols, 4, 64);
        assert_eq!(m.kernels.decode, Decode::Q4Tiled);
        assert_eq!(m.kernels.prompt, Prompt::Q4Tiled);
        let decode = |m: &Matrix, x: &[f32]| {
            let mut y = vec![0f32; m.rows];
            matmul(m, x, 1, &mut y, &mut MatmulScratch::default());
            y
        };
        let mut prompt = vec![0f32; t * rows];
        matmul(&m, &xs, t, &mut prompt, &mut MatmulScratch::default());
        for (k, x) in xs.chunks_exact(cols).enumerate() {
            assert_eq!(decode(&m, x), prompt[k * rows..(k + 1) * rows], "token {k}");
        }
        for (first, count) in [(0, 32), (32, 38), (16, 20), (5, 30), (64, 6)] {
            let part = m.row_range(first, count);
            let own = quantized_matrix(&values[first * cols..][..count * cols], count, cols, 4, 64);
            let shares = Arc::ptr_eq(
                part.tiles.as_ref().expect("tiles").store(),
                m.tiles.as_ref().expect("tiles").store(),
            );
            assert_eq!(shares, first % 16 == 0, "rows {first}+{count}");
            assert_eq!(decode(&part, &xs[..cols]), decode(&own, &xs[..cols]));
            let (mut a, mut b) = (vec![0f32; t * count], vec![0f32; t * count]);
            let mut scratch = MatmulScratch::default();
            matmul_many_rows(&mut [(&part, &mut a[..])], &xs, t, &mut scratch);
            matmul_many_rows(&mut [(&own, &mut b[..])], &xs, t, &mut scratch);
            assert_eq!(a, b, "rows {first}+{count}, {t} vectors");
        }
    }

    /// From [`AMX_MIN_VECTORS`] vectors on the tiled products run on AMX where the CPU has it:
    /// each vector still gets the bits of its own decode, at every group size, with a partial
    /// block of 16 vectors, a partial tile of rows and more than one pass of 64 vectors.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_products_equal_each_vectors_own_decode() {
        if !crate::simd::cpu().vnni {
            return;
        }
        if !amx_available() {
            eprintln!("no AMX here: the products below ran on vpdpbusd");
        }
        let (rows, cols) = (70, 512);
        let mut rng = crate::testkit::Rng::new(5);
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32()).collect();
        let xs: Vec<f32> = (0..80 * cols).map(|_| 4.0 * rng.next_f32()).collect();
        for group in [32, 64, 128] {
            let m = quantized_matrix(&values, rows, cols, 4, group);
            assert_eq!(m.kernels.prompt, Prompt::Q4Tiled);
            let mut scratch = MatmulScratch::default();
            let alone: Vec<Vec<f32>> = xs
                .chunks_exact(cols)
                .map(|x| {
                    let mut y = vec![0f32; rows];
                    matmul(&m, x, 1, &mut y, &mut scratch);
                    y
                })
                .collect();
            for t in [AMX_MIN_VECTORS, AMX_MIN_VECTORS + 1, 70] {
                let mut ys = vec![0f32; t * rows];
                matmul(&m, &xs[..t * cols], t, &mut ys, &mut scratch);
                for (k, y) in ys.chunks_exact(rows).enumerate() {
                    assert_eq!(y, alone[k], "group {group}, {t} vectors: vector {k}");
                }
                matmul_many_rows(&mut [(&m, &mut ys[..])], &xs[..t * cols], t, &mut scratch);
                for (k, y) in ys.chunks_exact(rows).enumerate() {
                    assert_eq!(y, alone[k], "group {group}, a step of {t}: vector {k}");
                }
            }
        }
    }

    /// Every kernel this CPU has for a matrix (decode kernels with one token, prompt kernels with
    /// several) against the portable one, for every format; and the kernels chosen by default.
    #[test]
    fn every_kernel_equals_the_portable_one() {
        // 1024 columns: 16 groups of 64 (a full window of the decode kernel); 43 rows: partial
        // tasks and a partial block of the prompt GEMM's 8 rows.
        let (rows, cols) = (43, 1024);
        let mut rng = crate::testkit::Rng::new(3);
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32()).collect();
        let mut mats = Vec::new();
        for dtype in [FloatDtype::F32, FloatDtype::F16, FloatDtype::BF16] {
            let mut bytes = Vec::new();
            dtype.narrow(&values, &mut bytes);
            let data = Blob::from_bytes(&bytes);
            mats.push(Matrix::new(Weights::Float { data, dtype }, rows, cols));
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
            mats.push(quantized_matrix(&values, rows, cols, bits, group));
        }
        for mode in [FpMode::Mxfp4, FpMode::Nvfp4, FpMode::Mxfp8] {
            mats.push(fp_matrix(&values, rows, cols, mode));
        }
        let cpu = crate::simd::cpu();
        let mut kernels_run = 0;
        // 1: decode kernels; 3 and 6: one partial tile of 16 tokens (and the four-token blocks
        // plus a remainder); 21: a full tile and a partial one.
        for t in [1usize, 3, 6, 21] {
            let xs: Vec<f32> = (0..t * cols).map(|_| rng.next_f32()).collect();
            for m in &mats {
                let portable = m.with_kernels(Kernels {
                    decode: Decode::Portable,
                    prompt: Prompt::Portable,
                });
                let mut want = vec![0f32; t * rows];
                matmul(&portable, &xs, t, &mut want, &mut MatmulScratch::default());
                let choices: Vec<Kernels> = if t == 1 {
                    Kernels::decode_choices(&m.weights, cols, cpu)
                        .into_iter()
                        .map(|decode| Kernels {
                            decode,
                            ..m.kernels
                        })
                        .collect()
                } else {
                    Kernels::prompt_choices(&m.weights, cols, cpu)
                        .into_iter()
                        .map(|prompt| Kernels {
                            prompt,
                            ..m.kernels
                        })
                        .collect()
                };
                assert!(choices.contains(&m.kernels), "the default is a choice");
                for k in choices {
                    // The AVX-512 VNNI kernels round activations to 16 bits per group (every
                    // affine width, decode and prompt, and mxfp4's decode); the others stay
                    // f32.
                    let rounds_activations = matches!(m.weights, Weights::Affine { .. })
                        || (t == 1 && k.decode == Decode::Mxfp4Vnni);
                    let tolerance = if rounds_activations { 2e-3 } else { 1e-4 };
                    let m = m.with_kernels(k);
                    let mut got = vec![0f32; t * rows];
                    matmul(&m, &xs, t, &mut got, &mut MatmulScratch::default());
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= tolerance * b.abs().max(1.0),
                            "{k:?} t {t} output {i}: {a} vs {b}"
                        );
                    }
                    if t == 1 {
                        // The fused decode region gives the same outputs as separate products.
                        let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
                        let mut scratch = MatmulScratch::default();
                        matmul_many(&mut [(&m, &mut a), (&m, &mut b)], &xs, 1, &mut scratch);
                        assert_eq!(a, got, "{k:?}");
                        assert_eq!(b, got, "{k:?}");
                    }
                    kernels_run += 1;
                }
            }
        }
        // At least the portable kernels ran for every matrix and token count.
        assert!(kernels_run >= 4 * mats.len());
        // A mixed-width region (as mixed recipes make: 4-bit beside 8- and 2-bit, group 64):
        // both activation layouts prepared, each matrix equal to its own product.
        let xs: Vec<f32> = (0..cols).map(|_| rng.next_f32()).collect();
        let group64: Vec<&Matrix> = mats
            .iter()
            .filter(|m| matches!(m.weights, Weights::Affine { group: 64, .. }))
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

    /// `values` (rows × cols) quantized in microscaling-float `mode` as `mx.quantize` does.
    fn fp_matrix(values: &[f32], rows: usize, cols: usize, mode: FpMode) -> Matrix {
        let (mut w, mut s, mut codes) = (Vec::new(), Vec::new(), Vec::new());
        for row in values.chunks_exact(cols) {
            let mut words = vec![0u32; cols * mode.bits() as usize / 32];
            let mut scales = vec![0u8; cols / mode.group_size()];
            mode.quantize_row(row, FloatDtype::F32, &mut words, &mut scales, &mut codes);
            w.extend(words.iter().flat_map(|x| x.to_le_bytes()));
            s.extend(scales);
        }
        let weights = Weights::Fp {
            words: Blob::from_bytes(&w),
            scales: Blob::from_bytes(&s),
            mode,
        };
        Matrix::new(weights, rows, cols)
    }

    /// `values` (rows × cols) quantized as `mx.quantize` does (scales and biases in bf16).
    fn quantized_matrix(
        values: &[f32],
        rows: usize,
        cols: usize,
        bits: u32,
        group: usize,
    ) -> Matrix {
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
        let weights = Weights::Affine {
            words: Blob::from_bytes(&w),
            scales: Blob::from_bytes(&sb),
            biases: Blob::from_bytes(&bb),
            dtype: FloatDtype::BF16,
            bits,
            group,
        };
        Matrix::new(weights, rows, cols)
    }

    use crate::mlx::affine::Affine;

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
            let q = QuantizedRows {
                words: &bytes,
                scales: &sb,
                biases: &bb,
                dtype: FloatDtype::F32,
                bits,
                group: 64,
                rows: 1,
                cols,
            };
            let got = affine_row_dot(&q, 0, &x, &xsum);
            let want: f32 = (0..cols)
                .map(|i| (unpack_at(&words[..], bits, i) as f32 * s[i / 64] + b[i / 64]) * x[i])
                .sum();
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "bits {bits}: {got} vs {want}"
            );
        }
    }
}
