//! 4-bit weights repacked at load for decoding on AVX-512 VNNI: rows as lanes.
//!
//! MLX stores a 4-bit matrix row by row. A kernel that walks rows puts 128 codes of one row in
//! a register and must reduce across lanes and apply each group's scale per lane — about nine
//! instructions per 128 weights per sequence, which made a batched decode step compute-bound
//! (8 sequences ran 2.1x one). Here 16 rows are interleaved instead, 4 bytes (8 codes) at a
//! time, so that one 64-byte load holds the same 8 columns of 16 rows and each lane is a row:
//! a sequence's 8 activations are one broadcast, four `vpdpbusd` accumulate exact integer
//! sums for 16 rows at once, and a group's scale and bias are applied once per group as 16
//! rows' values, with no reduction at the end. The weights are read once per step for every
//! sequence, and one sequence alone runs the very same operations: a sequence's outputs are
//! bit-identical whether it is decoded alone or in a batch (llama.cpp repacks Q4_0 at load for
//! the same reason).
//!
//! Layout ([`Q4Tiles`]): tile `t` holds rows `16t..16t + 16` (rows past the matrix are zero);
//! its 64-byte line `d` holds packed bytes `4d..4d + 4` of each of the 16 rows, row by row;
//! its scales and biases are stored per group, 16 rows together, in the model's dtype.

use std::arch::x86_64::*;
use std::mem::size_of;
use std::sync::Arc;

use memmap2::MmapMut;

use super::pool::pool;
use super::weights::QuantizedRows;
use super::x86::{split_kernel_fits, SplitActivations};
use crate::mlx::FloatDtype;

mod amx;
pub(crate) use amx::{available as amx_available, AmxActivations};

/// Rows per tile: one 32-bit lane each.
pub(crate) const TILE_ROWS: usize = 16;

/// Packed bytes of one row in a line.
const ROW_BYTES_PER_LINE: usize = 4;

/// The most vectors the kernel takes at once (each keeps three of the 32 registers).
pub(crate) const MAX_TILE_VECTORS: usize = 8;

/// How far ahead of its loads the kernel prefetches (2 KiB).
const PREFETCH_LINES: usize = 32;

/// One load's worth of a tile: 4 packed bytes of each of its 16 rows.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A whole 4-bit matrix in tiles (see the module's documentation).
pub(crate) struct Q4Tiles {
    /// The lines, in an anonymous mapping: zero pages until written (the copy faults them in
    /// on the pool's threads, not one thread zeroing them first).
    lines: MmapMut,
    scales: Vec<u8>,
    biases: Vec<u8>,
    dtype: FloatDtype,
    group: usize,
    cols: usize,
}

/// Rows of a [`Q4Tiles`] starting at a tile boundary: a matrix, or the q / k / v (gate / up,
/// one expert) of a fused one, sharing the repacked bytes.
#[derive(Clone)]
pub(crate) struct TiledRows {
    store: Arc<Q4Tiles>,
    first_tile: usize,
    rows: usize,
}

impl Q4Tiles {
    /// Whether [`Q4Tiles::repack`] takes a matrix of `cols` columns at this width and group
    /// (the kernel's activations need what the split kernels need).
    pub(crate) fn fits(bits: u32, cols: usize, group: usize) -> bool {
        bits == 4 && split_kernel_fits(cols, group)
    }

    /// `q` (4-bit, [`Q4Tiles::fits`]) in tiles; the copy runs on the engine's pool. Fails
    /// only when the memory for them cannot be mapped.
    pub(crate) fn repack(q: &QuantizedRows) -> std::io::Result<TiledRows> {
        assert!(
            Q4Tiles::fits(q.bits, q.cols, q.group),
            "a matrix the tiles do not take"
        );
        let (rows, cols, group, size) = (q.rows, q.cols, q.group, q.dtype.size());
        let row_bytes = cols / 2;
        let (lines_per_tile, groups) = (row_bytes / ROW_BYTES_PER_LINE, cols / group);
        let tiles = rows.div_ceil(TILE_ROWS);
        let mut map = MmapMut::map_anon(tiles * lines_per_tile * size_of::<Line>())?;
        // SAFETY: the mapping is page-aligned (Line needs 64) and holds exactly this many
        // lines; any bytes are a valid Line.
        let lines = unsafe {
            std::slice::from_raw_parts_mut(map.as_mut_ptr() as *mut Line, tiles * lines_per_tile)
        };
        pool().for_each_chunk(lines, lines_per_tile, |first, tile_lines| {
            let t = first / lines_per_tile;
            for r in 0..TILE_ROWS.min(rows - t * TILE_ROWS) {
                let row = &q.words[(t * TILE_ROWS + r) * row_bytes..][..row_bytes];
                for (line, bytes) in tile_lines.iter_mut().zip(row.chunks_exact(4)) {
                    line.0[r * 4..r * 4 + 4].copy_from_slice(bytes);
                }
            }
        });
        // Scales and biases: [tile][group][row].
        let tile_scales = groups * TILE_ROWS * size;
        let mut scales = vec![0u8; tiles * tile_scales];
        let mut biases = vec![0u8; tiles * tile_scales];
        for (src, dst) in [(q.scales, &mut scales), (q.biases, &mut biases)] {
            pool().for_each_chunk(dst, tile_scales, |first, tile| {
                let t = first / tile_scales;
                for r in 0..TILE_ROWS.min(rows - t * TILE_ROWS) {
                    let row = &src[(t * TILE_ROWS + r) * groups * size..][..groups * size];
                    for (g, value) in row.chunks_exact(size).enumerate() {
                        tile[(g * TILE_ROWS + r) * size..][..size].copy_from_slice(value);
                    }
                }
            });
        }
        Ok(TiledRows {
            store: Arc::new(Q4Tiles {
                lines: map,
                scales,
                biases,
                dtype: q.dtype,
                group,
                cols,
            }),
            first_tile: 0,
            rows,
        })
    }

    fn lines(&self) -> &[Line] {
        // SAFETY: as in `repack`: the mapping holds whole, aligned lines.
        unsafe {
            std::slice::from_raw_parts(
                self.lines.as_ptr() as *const Line,
                self.lines.len() / size_of::<Line>(),
            )
        }
    }
}

impl TiledRows {
    /// The repacked matrix these rows are part of.
    #[cfg(test)]
    pub(crate) fn store(&self) -> &Arc<Q4Tiles> {
        &self.store
    }

    /// The columns and the group size of the matrix.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.store.cols, self.store.group)
    }

    /// Rows `first..first + count`, when `first` starts a tile and the rows are inside these.
    pub(crate) fn row_range(&self, first: usize, count: usize) -> Option<TiledRows> {
        (first.is_multiple_of(TILE_ROWS) && first + count <= self.rows).then(|| TiledRows {
            store: Arc::clone(&self.store),
            first_tile: self.first_tile + first / TILE_ROWS,
            rows: count,
        })
    }

    /// Rows `first..first + nrows` against every vector of `vectors` (split activations in
    /// [`SplitActivations::nibble_order`] and group sums; 1 to [`MAX_TILE_VECTORS`]) into
    /// `out` (vector `k`'s row `first + r` at `out`'s `(k, r)`). `first` starts a tile. Each
    /// vector's outputs are the same bits whatever the other vectors are.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VNNI, FMA and F16C
    /// (`crate::simd::cpu().vnni`); no other thread writes these rows of `out` meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    pub(crate) unsafe fn decode(
        &self,
        vectors: &[(&SplitActivations, &[f32])],
        first: usize,
        nrows: usize,
        out: RowsOut,
    ) {
        let n = vectors.len();
        let s = &*self.store;
        let groups = s.cols / s.group;
        // Checked once: every pointer the kernel follows stays inside these.
        assert!(
            (1..=MAX_TILE_VECTORS).contains(&n)
                && first.is_multiple_of(TILE_ROWS)
                && first + nrows <= self.rows
                && (n - 1) * out.stride + nrows <= out.len
                && vectors.iter().all(|(a, sums)| a.scales.len() == groups
                    && a.nibble_order.len() >= 2 * s.cols
                    && sums.len() >= groups),
            "tiled decode: shapes that do not match"
        );
        // SAFETY (every arm): this function's contract gives the CPU features and the
        // exclusive rows; the assertion above covers the tiles and every vector's extents.
        unsafe {
            match n {
                1 => self.tiles::<1>(&Vectors::new(vectors), first, nrows, out),
                2 => self.tiles::<2>(&Vectors::new(vectors), first, nrows, out),
                3 => self.tiles::<3>(&Vectors::new(vectors), first, nrows, out),
                4 => self.tiles::<4>(&Vectors::new(vectors), first, nrows, out),
                5 => self.tiles::<5>(&Vectors::new(vectors), first, nrows, out),
                6 => self.tiles::<6>(&Vectors::new(vectors), first, nrows, out),
                7 => self.tiles::<7>(&Vectors::new(vectors), first, nrows, out),
                _ => self.tiles::<8>(&Vectors::new(vectors), first, nrows, out),
            }
        }
    }

    /// [`TiledRows::decode`] for `V` vectors, tile after tile.
    ///
    /// # Safety
    /// As [`TiledRows::decode`], whose assertion must hold, with `V` vectors.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
    unsafe fn tiles<const V: usize>(
        &self,
        vectors: &Vectors<V>,
        first: usize,
        nrows: usize,
        out: RowsOut,
    ) {
        for r in (0..nrows).step_by(TILE_ROWS) {
            let live = (nrows - r).min(TILE_ROWS);
            let mask: __mmask16 = if live == TILE_ROWS {
                !0
            } else {
                (1 << live) - 1
            };
            let t = self.first_tile + (first + r) / TILE_ROWS;
            // SAFETY: this function's contract; row `r` and the `live` rows after it are
            // inside `out` for every vector.
            unsafe { tile_pass::<V>(&self.store, t, vectors, out.ptr.add(r), out.stride, mask) };
        }
    }
}

/// Where [`TiledRows::decode`] writes: vector `k`'s output for row `first + r` at
/// `ptr + k * stride + r` (the outputs of several vectors one after another, `stride` apart).
#[derive(Clone, Copy)]
pub(crate) struct RowsOut {
    ptr: *mut f32,
    /// Floats from `ptr` to the end of the slice it was made from.
    len: usize,
    stride: usize,
}

// SAFETY: handed to the pool's threads only for writes to disjoint rows (each task its own),
// while the `&mut [f32]` it was made from stays borrowed.
unsafe impl Send for RowsOut {}
unsafe impl Sync for RowsOut {}

impl RowsOut {
    /// The outputs in `ys` from vector `vector`'s row `first` on, vectors `stride` apart.
    pub(crate) fn new(ys: &mut [f32], stride: usize, vector: usize, first: usize) -> RowsOut {
        let at = (vector * stride + first).min(ys.len());
        RowsOut {
            // SAFETY: `at <= ys.len()`: inside the slice or one past it.
            ptr: unsafe { ys.as_mut_ptr().add(at) },
            len: ys.len() - at,
            stride,
        }
    }
}

impl RowsOut {
    /// The same outputs from vector `vector`'s row `first` on (relative to this view).
    pub(crate) fn offset(self, vector: usize, first: usize) -> RowsOut {
        let at = vector * self.stride + first;
        assert!(at <= self.len, "tiled outputs: past the slice");
        RowsOut {
            // SAFETY: `at <= len`: inside the slice or one past it.
            ptr: unsafe { self.ptr.add(at) },
            len: self.len - at,
            stride: self.stride,
        }
    }
}

/// One vector's split activations and group sums, as the tiled kernel reads them.
#[derive(Default)]
pub(crate) struct TileVector {
    split: SplitActivations,
    sums: Vec<f32>,
}

impl TileVector {
    /// Prepares `x` (columns a multiple of 128 and of `group`, group 32 / 64 / 128).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW.
    pub(crate) unsafe fn set(&mut self, x: &[f32], group: usize) {
        // SAFETY: this function's contract.
        unsafe { self.split.set_fast(x, group, true, false, &mut self.sums) }
    }

    pub(crate) fn pair(&self) -> (&SplitActivations, &[f32]) {
        (&self.split, &self.sums)
    }
}

/// `V` vectors' pointers: split activations, activation scales, group sums.
struct Vectors<const V: usize> {
    act: [*const i8; V],
    scales: [*const f32; V],
    sums: [*const f32; V],
}

impl<const V: usize> Vectors<V> {
    /// The pointers of `vectors` (`V` of them).
    fn new(vectors: &[(&SplitActivations, &[f32])]) -> Vectors<V> {
        assert_eq!(vectors.len(), V);
        Vectors {
            act: std::array::from_fn(|k| vectors[k].0.nibble_order.as_ptr()),
            scales: std::array::from_fn(|k| vectors[k].0.scales.as_ptr()),
            sums: std::array::from_fn(|k| vectors[k].1.as_ptr()),
        }
    }
}

/// 16 values of `dtype` at `p`, widened.
/// # Safety
/// The CPU must support AVX-512 F and F16C; 16 values must be readable at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn widen16(p: *const u8, dtype: FloatDtype) -> __m512 {
    // SAFETY: this function's contract.
    unsafe {
        match dtype {
            FloatDtype::BF16 => _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)),
                16,
            )),
            FloatDtype::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
            FloatDtype::F32 => _mm512_loadu_ps(p as *const f32),
        }
    }
}

/// The 16 rows of tile `t` against `V` vectors, the rows in `mask` stored at `out + k *
/// stride` for vector `k`. Per group: for each of its lines, the low and high nibbles of 16
/// rows' 4 bytes, and per vector four byte dot products against the broadcast split
/// activations of those 8 columns into the group's exact integer sums (low bytes' and high
/// bytes' apart); then per vector `acc += float(Σ) · (scale · d) + bias · Σx` for the 16 rows.
/// (Two chains per sum for one or two vectors, against `vpdpbusd`'s latency, measured no
/// faster: the groups' chains are independent and overlap.)
///
/// # Safety
/// As [`TiledRows::decode`]: tile `t` exists, every vector holds the matrix's columns, and
/// the rows in `mask` are this thread's to write at `out + k * stride`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn tile_pass<const V: usize>(
    s: &Q4Tiles,
    t: usize,
    vectors: &Vectors<V>,
    out: *mut f32,
    stride: usize,
    mask: __mmask16,
) {
    // SAFETY: this function's contract gives the CPU features and the extents.
    unsafe {
        let size = s.dtype.size();
        let groups = s.cols / s.group;
        let lines_per_group = s.group / 8;
        let lines_per_tile = s.cols / 8;
        let lines = s.lines().as_ptr().add(t * lines_per_tile) as *const __m512i;
        let tile_scales = groups * TILE_ROWS * size;
        let (scales, biases) = (
            s.scales.as_ptr().add(t * tile_scales),
            s.biases.as_ptr().add(t * tile_scales),
        );
        let low = _mm512_set1_epi8(0x0F);
        let broadcast = |p: *const i8| _mm512_set1_epi32((p as *const i32).read_unaligned());
        let mut acc = [_mm512_setzero_ps(); V];
        for g in 0..groups {
            let mut lo = [_mm512_setzero_si512(); V];
            let mut hi = [_mm512_setzero_si512(); V];
            for j in 0..lines_per_group {
                let d = g * lines_per_group + j;
                // The lines ahead (past this tile: the next one, which the same task reads
                // next); the hardware prefetcher alone left each task's first lines stalled.
                _mm_prefetch::<_MM_HINT_T0>(lines.wrapping_add(d + PREFETCH_LINES) as *const i8);
                let w = _mm512_load_si512(lines.add(d));
                let (wl, wh) = (
                    _mm512_and_si512(w, low),
                    _mm512_and_si512(_mm512_srli_epi16(w, 4), low),
                );
                // Line d is packed bytes 4d..4d + 4: block d / 16, dword d % 16 of its
                // activations (even codes' low bytes, their high bytes, odd codes' low bytes,
                // their high bytes).
                let a_at = (d / 16) * 256 + (d % 16) * 4;
                for k in 0..V {
                    let a = vectors.act[k].add(a_at);
                    lo[k] = _mm512_dpbusd_epi32(lo[k], wl, broadcast(a));
                    lo[k] = _mm512_dpbusd_epi32(lo[k], wh, broadcast(a.add(128)));
                    hi[k] = _mm512_dpbusd_epi32(hi[k], wl, broadcast(a.add(64)));
                    hi[k] = _mm512_dpbusd_epi32(hi[k], wh, broadcast(a.add(192)));
                }
            }
            _mm_prefetch::<_MM_HINT_T0>(
                scales.wrapping_add(tile_scales + g * TILE_ROWS * size) as *const i8
            );
            _mm_prefetch::<_MM_HINT_T0>(
                biases.wrapping_add(tile_scales + g * TILE_ROWS * size) as *const i8
            );
            let at = g * TILE_ROWS * size;
            let (scale, bias) = (
                widen16(scales.add(at), s.dtype),
                widen16(biases.add(at), s.dtype),
            );
            for k in 0..V {
                let isum = _mm512_add_epi32(lo[k], _mm512_slli_epi32(hi[k], 8));
                let d = _mm512_set1_ps(*vectors.scales[k].add(g));
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(scale, d), acc[k]);
                acc[k] = _mm512_fmadd_ps(bias, _mm512_set1_ps(*vectors.sums[k].add(g)), acc[k]);
            }
        }
        for (k, acc) in acc.into_iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(k * stride), mask, acc);
        }
    }
}
