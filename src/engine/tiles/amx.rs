//! The tiled 4-bit matrices against many vectors at once on AMX (Intel's tile matrix unit):
//! the same exact integer sums as the `vpdpbusd` kernel, 16 vectors × 16 rows × 64 columns
//! per instruction, and the very same float epilogue — so every output is bit-identical to
//! the one [`TiledRows::decode`] gives, whichever path a prompt or a batched step takes.
//!
//! Why the tiles need no other layout: `tdpbsud` multiplies a 16 × K matrix of signed bytes
//! (A: the vectors' split activations, one vector per row) by a K/4 × 64 matrix of unsigned
//! bytes (B: in row `k`, bytes `4n..4n + 4` are output row `n`'s 4 weights for columns
//! `4k..4k + 4` of A's order). A tile's line holds 4 packed bytes of each of its 16 rows, as
//! 4-byte lanes: its low nibbles are one B row (the even columns `8d + 2i`), its high
//! nibbles the next (the odd ones). So a group's lines, unpacked to bytes, are B as they are,
//! and A's columns are the activations in that order: per line, the 4 even columns, then the
//! 4 odd ones ([`AmxActivations::set`] permutes them from the split activations the other
//! kernel reads).

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{widen16, Q4Tiles, RowsOut, TileVector, TiledRows, TILE_ROWS};

/// Vectors (A's rows) per AMX tile.
const BLOCK: usize = 16;

/// Row tiles one block of vectors runs over before the next block: the block's activations
/// are read from L1 for each of them, the tiles' lines from L2 for each block.
const MAX_TILES: usize = 4;

/// Columns of a block's activations walked over every tile before the next ones: 16 vectors ×
/// low and high bytes × 1024 columns = 32 KiB, which stays in L1 (`tileloadd` of A from L2
/// for every 16 rows was what bounded the first version of this kernel).
const RANGE_COLS: usize = 1024;

/// Columns per `tdpbsud` (A's 64-byte rows).
const CHUNK: usize = 64;

/// Whether the CPU has AMX-TILE and AMX-INT8 and the kernel lets this process use the tile
/// registers (Linux grants them on request: `arch_prctl(ARCH_REQ_XCOMP_PERM)`). Asked once.
/// `MLXK_NO_AMX=1` turns the path off (to compare the two paths on one machine).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("MLXK_NO_AMX").is_some_and(|v| v != "0") {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let (tile, int8) = ((leaf7.edx >> 24) & 1 == 1, (leaf7.edx >> 25) & 1 == 1);
        if !(tile && int8 && crate::simd::cpu().vnni) {
            return false;
        }
        #[cfg(target_os = "linux")]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with these arguments only changes which state components
            // the process may use; it reads and writes no memory of ours.
            let granted = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            } == 0;
            if !granted {
                tracing::debug!("AMX present but not granted by the kernel; using AVX-512");
            }
            granted
        }
        #[cfg(not(target_os = "linux"))]
        false
    })
}

/// Vectors prepared as AMX's A matrices: per block of 16 vectors, the low bytes' rows then
/// the high bytes' rows, each row a vector's columns in the tiles' order; the vectors' scales
/// and group sums beside them. Rows past the last vector are zero.
#[derive(Default)]
pub(crate) struct AmxActivations {
    /// `[block][low, high][16 vectors][cols]`.
    bytes: Vec<i8>,
    /// `[vector][group]`.
    scales: Vec<f32>,
    sums: Vec<f32>,
    vectors: usize,
    cols: usize,
    groups: usize,
}

impl AmxActivations {
    /// Lays out `vectors` (set for `cols` columns in groups of `group`).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F (the tiles' kernels need it anyway).
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn set(&mut self, vectors: &[TileVector], cols: usize, group: usize) {
        let (n, groups) = (vectors.len(), cols / group);
        let blocks = n.div_ceil(BLOCK);
        let block_bytes = 2 * BLOCK * cols;
        self.bytes.clear();
        self.bytes.resize(blocks * block_bytes, 0);
        self.scales.clear();
        self.sums.clear();
        for v in vectors {
            let (split, sums) = v.pair();
            assert!(
                split.nibble_order.len() >= 2 * cols
                    && split.scales.len() >= groups
                    && sums.len() >= groups,
                "AMX activations: a vector of other columns"
            );
            self.scales.extend_from_slice(&split.scales[..groups]);
            self.sums.extend_from_slice(&sums[..groups]);
        }
        // Per 128 columns the split activations are four 64-byte vectors: even columns' low
        // bytes, their high bytes, odd columns' low bytes, their high bytes, one dword per
        // line. A's row interleaves the even and odd dwords line by line.
        // SAFETY: the assertion above: every vector holds `2 * cols` bytes, `cols` a
        // multiple of 128; the destination rows are inside `bytes` (sized above).
        unsafe {
            let first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
            let second =
                _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
            for (k, v) in vectors.iter().enumerate() {
                let src = v.pair().0.nibble_order.as_ptr();
                let (b, m) = (k / BLOCK, k % BLOCK);
                let lo_row = self.bytes.as_mut_ptr().add(b * block_bytes + m * cols);
                let hi_row = lo_row.add(BLOCK * cols);
                for block in 0..cols / 128 {
                    let at = src.add(block * 256);
                    let load = |o: usize| _mm512_loadu_si512(at.add(o) as *const __m512i);
                    let (even_lo, even_hi, odd_lo, odd_hi) =
                        (load(0), load(64), load(128), load(192));
                    for (row, even, odd) in [(lo_row, even_lo, odd_lo), (hi_row, even_hi, odd_hi)] {
                        let dst = row.add(block * 128) as *mut __m512i;
                        _mm512_storeu_si512(dst, _mm512_permutex2var_epi32(even, first, odd));
                        _mm512_storeu_si512(
                            dst.add(1),
                            _mm512_permutex2var_epi32(even, second, odd),
                        );
                    }
                }
            }
        }
        self.vectors = n;
        self.cols = cols;
        self.groups = groups;
    }
}

/// The tile configuration (`ldtilecfg`'s 64 bytes, palette 1).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    /// tmm0, tmm1 and tmm6, tmm7: two pairs of the low and high bytes' sums (16 vectors × 16
    /// rows of i32); tmm2, tmm3: their A (16 vectors × `k` bytes); tmm4, tmm5: two chunks of B
    /// (`k / 4` rows of 64).
    fn new(k: usize) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut set = |tmm: usize, rows: usize, bytes: usize| {
            c[16 + 2 * tmm..18 + 2 * tmm].copy_from_slice(&(bytes as u16).to_le_bytes());
            c[48 + tmm] = rows as u8;
        };
        set(0, BLOCK, 64);
        set(1, BLOCK, 64);
        set(2, BLOCK, k);
        set(3, BLOCK, k);
        set(4, k / 4, 64);
        set(5, k / 4, 64);
        set(6, BLOCK, 64);
        set(7, BLOCK, 64);
        TileConfig(c)
    }
}

#[repr(C, align(64))]
struct Aligned<T>(T);

impl TiledRows {
    /// Rows `first..first + nrows` against every vector of `acts` into `out` (vector `k`'s
    /// row `first + r` at `out`'s `(k, r)`), on AMX. Bit-identical to [`TiledRows::decode`]
    /// for each vector.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL, FMA and F16C, and [`available`] must have
    /// returned true; no other thread writes these rows of `out` meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub(crate) unsafe fn amx_decode(
        &self,
        acts: &AmxActivations,
        first: usize,
        nrows: usize,
        out: RowsOut,
    ) {
        let s = &*self.store;
        let n = acts.vectors;
        let groups = s.cols / s.group;
        // Checked once: every pointer below stays inside these.
        assert!(
            n > 0
                && acts.cols == s.cols
                && acts.groups == groups
                && first.is_multiple_of(TILE_ROWS)
                && first + nrows <= self.rows
                && (n - 1) * out.stride + nrows <= out.len
                && matches!(s.group, 32 | 64 | 128),
            "AMX tiles: shapes that do not match"
        );
        let k = s.group.min(CHUNK);
        let chunks = s.group / k;
        let config = TileConfig::new(k);
        let mut b = Aligned([[0u8; BLOCK * 64]; 2]);
        let mut c = Aligned([[0i32; BLOCK * 16]; 4]);
        let low = _mm512_set1_epi8(0x0F);
        let lines_per_group = s.group / 8;
        let lines_per_tile = s.cols / 8;
        let blocks = n.div_ceil(BLOCK);
        let groups_per_range = (RANGE_COLS / s.group).max(1);
        let tiles = nrows.div_ceil(TILE_ROWS);
        // SAFETY: this function's contract gives the CPU features and the tile registers;
        // the assertion covers the tiles, the activations and the outputs.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, preserves_flags));
            for first_tile in (0..tiles).step_by(MAX_TILES) {
                let count = (tiles - first_tile).min(MAX_TILES);
                for block in 0..blocks {
                    let live_vectors = BLOCK.min(n - block * BLOCK);
                    let a_block = acts.bytes.as_ptr().add(block * 2 * BLOCK * s.cols);
                    let mut acc = [[_mm512_setzero_ps(); BLOCK]; MAX_TILES];
                    // The sums of one (tile, group) are taken while the float epilogue of the
                    // one before runs: two pairs of sum registers, two buffers.
                    let mut pending: Option<Pending> = None;
                    let mut step = 0;
                    for g0 in (0..groups).step_by(groups_per_range) {
                        for i in 0..count {
                            let t = self.first_tile + first / TILE_ROWS + first_tile + i;
                            let lines =
                                s.lines().as_ptr().add(t * lines_per_tile) as *const __m512i;
                            for g in g0..(g0 + groups_per_range).min(groups) {
                                // B: the group's lines as bytes, low nibbles then high.
                                for chunk in 0..chunks {
                                    for j in 0..k / 8 {
                                        let w = _mm512_load_si512(
                                            lines.add(g * lines_per_group + chunk * (k / 8) + j),
                                        );
                                        let dst =
                                            b.0[chunk].as_mut_ptr().add(2 * j * 64) as *mut __m512i;
                                        _mm512_store_si512(dst, _mm512_and_si512(w, low));
                                        _mm512_store_si512(
                                            dst.add(1),
                                            _mm512_and_si512(_mm512_srli_epi16(w, 4), low),
                                        );
                                    }
                                }
                                load_b(b.0[0].as_ptr(), b.0[1].as_ptr(), chunks);
                                let pair = step % 2;
                                step += 1;
                                let sums_at = c.0.as_mut_ptr().add(2 * pair) as *mut i32;
                                sums(
                                    a_block.add(g * s.group),
                                    s.cols,
                                    k,
                                    chunks,
                                    pair,
                                    sums_at,
                                    sums_at.add(BLOCK * 16),
                                );
                                if let Some(p) = pending.take() {
                                    epilogue(
                                        s,
                                        acts,
                                        &c.0,
                                        p,
                                        block,
                                        live_vectors,
                                        &mut acc[p.tile],
                                    );
                                }
                                pending = Some(Pending {
                                    tile: i,
                                    t,
                                    group: g,
                                    pair,
                                });
                            }
                        }
                    }
                    if let Some(p) = pending {
                        epilogue(s, acts, &c.0, p, block, live_vectors, &mut acc[p.tile]);
                    }
                    for (i, acc) in acc.iter().enumerate().take(count) {
                        let r = (first_tile + i) * TILE_ROWS;
                        let live = (nrows - r).min(TILE_ROWS);
                        let mask: __mmask16 = if live == TILE_ROWS {
                            !0
                        } else {
                            (1 << live) - 1
                        };
                        for (m, acc) in acc.iter().enumerate().take(live_vectors) {
                            let v = block * BLOCK + m;
                            _mm512_mask_storeu_ps(out.ptr.add(v * out.stride + r), mask, *acc);
                        }
                    }
                }
            }
            asm!("tilerelease", options(nostack, preserves_flags));
        }
    }
}

/// A (tile, group) whose sums are in buffer pair `pair` and wait for their float epilogue.
#[derive(Clone, Copy)]
struct Pending {
    /// Index among the task's tiles (its accumulators), and the tile itself.
    tile: usize,
    t: usize,
    group: usize,
    pair: usize,
}

/// The float epilogue of one (tile, group) for the live vectors of block `block`, exactly as
/// the `vpdpbusd` kernel's: `acc += float(lo + (hi << 8)) · (scale · d) + bias · Σx`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and F16C; tile `p.t` and group `p.group` exist; the
/// vectors of the block are in `acts`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn epilogue(
    s: &Q4Tiles,
    acts: &AmxActivations,
    c: &[[i32; BLOCK * 16]; 4],
    p: Pending,
    block: usize,
    live_vectors: usize,
    acc: &mut [__m512; BLOCK],
) {
    // SAFETY: this function's contract.
    unsafe {
        let groups = s.cols / s.group;
        let at = (p.t * groups + p.group) * TILE_ROWS * s.dtype.size();
        let (scale, bias) = (
            widen16(s.scales.as_ptr().add(at), s.dtype),
            widen16(s.biases.as_ptr().add(at), s.dtype),
        );
        let (lo, hi) = (c[2 * p.pair].as_ptr(), c[2 * p.pair + 1].as_ptr());
        for (m, acc) in acc.iter_mut().enumerate().take(live_vectors) {
            let v = block * BLOCK + m;
            let lo = _mm512_load_si512(lo.add(m * 16) as *const __m512i);
            let hi = _mm512_load_si512(hi.add(m * 16) as *const __m512i);
            let isum = _mm512_add_epi32(lo, _mm512_slli_epi32(hi, 8));
            let d = _mm512_set1_ps(*acts.scales.get_unchecked(v * groups + p.group));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(scale, d), *acc);
            *acc = _mm512_fmadd_ps(
                bias,
                _mm512_set1_ps(*acts.sums.get_unchecked(v * groups + p.group)),
                *acc,
            );
        }
    }
}

/// Loads B's chunks into tmm4 (and tmm5 for a second chunk).
///
/// # Safety
/// The tile configuration of [`TileConfig::new`] is loaded; `b0` (and `b1` with two chunks)
/// hold `k / 4` rows of 64 bytes.
#[inline]
unsafe fn load_b(b0: *const u8, b1: *const u8, chunks: usize) {
    // SAFETY: this function's contract.
    unsafe {
        asm!("tileloadd tmm4, [{p} + {s} * 1]", p = in(reg) b0, s = in(reg) 64usize,
            options(nostack, preserves_flags));
        if chunks == 2 {
            asm!("tileloadd tmm5, [{p} + {s} * 1]", p = in(reg) b1, s = in(reg) 64usize,
                options(nostack, preserves_flags));
        }
    }
}

/// One block's exact sums for one group into register pair `pair` (tmm0/tmm1 or tmm6/tmm7),
/// stored: the low bytes' into `lo`, the high bytes' into `hi` (16 vectors × 16 rows of i32
/// each). `a` is the block's low rows at the group's first column (the high rows `16 * cols`
/// bytes on), `cols` apart.
///
/// # Safety
/// As [`load_b`], with B loaded; `a` and the rows after it hold the group's `k * chunks`
/// bytes; `lo` and `hi` hold 256 values each.
#[inline]
unsafe fn sums(
    a: *const i8,
    cols: usize,
    k: usize,
    chunks: usize,
    pair: usize,
    lo: *mut i32,
    hi: *mut i32,
) {
    // The same instructions on two register pairs (asm names registers literally).
    macro_rules! block_sums {
        ($lo:literal, $hi:literal) => {
            // SAFETY: this function's contract.
            unsafe {
                let a_hi = a.add(BLOCK * cols);
                asm!(
                    concat!("tilezero ", $lo),
                    concat!("tilezero ", $hi),
                    "tileloadd tmm2, [{a} + {s} * 1]",
                    "tileloadd tmm3, [{b} + {s} * 1]",
                    concat!("tdpbsud ", $lo, ", tmm2, tmm4"),
                    concat!("tdpbsud ", $hi, ", tmm3, tmm4"),
                    a = in(reg) a, b = in(reg) a_hi, s = in(reg) cols,
                    options(nostack, preserves_flags)
                );
                if chunks == 2 {
                    asm!(
                        "tileloadd tmm2, [{a} + {s} * 1]",
                        "tileloadd tmm3, [{b} + {s} * 1]",
                        concat!("tdpbsud ", $lo, ", tmm2, tmm5"),
                        concat!("tdpbsud ", $hi, ", tmm3, tmm5"),
                        a = in(reg) a.add(k), b = in(reg) a_hi.add(k), s = in(reg) cols,
                        options(nostack, preserves_flags)
                    );
                }
                asm!(
                    concat!("tilestored [{l} + {s} * 1], ", $lo),
                    concat!("tilestored [{h} + {s} * 1], ", $hi),
                    l = in(reg) lo, h = in(reg) hi, s = in(reg) 64usize,
                    options(nostack, preserves_flags)
                );
            }
        };
    }
    if pair == 0 {
        block_sums!("tmm0", "tmm1");
    } else {
        block_sums!("tmm6", "tmm7");
    }
}
