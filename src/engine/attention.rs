//! Causal attention over a KV cache, shaped for the vector units: keys are cached transposed in
//! blocks of 16 positions (per kv head: block, dimension, position), so a query's scores for 16
//! positions are 16-lane multiply-adds over the head dimension with no horizontal sums, reading
//! one contiguous 4 KiB block; the query heads that share a kv head (GQA) are scored together,
//! each key read once for all of them. Values are cached per kv head, position-major, and each
//! is read once for all the query heads. Plain loops the compiler vectorizes (compiled for
//! AVX-512 or AVX2 + FMA at run time when the CPU has them), with fused multiply-adds
//! (`mul_add`: the same rounding in every build, one instruction where the CPU has FMA).

use std::ops::Range;

use crate::simd::simd_dispatch_avx512;

/// Positions scored per block (the cache's capacity is a multiple of it).
const BLOCK: usize = 16;
/// Query heads handled in registers at once (of one row, or of a prompt's consecutive rows).
const MAX_GROUP: usize = 8;

/// The most rows [`rows_per_call`] gives.
pub(crate) const MAX_ROWS_PER_CALL: usize = MAX_GROUP;

/// How many consecutive rows of a prompt to give [`attend`] at once for kv groups of `group`
/// query heads: as many as fill the heads scored together.
pub(crate) fn rows_per_call(group: usize) -> usize {
    (MAX_GROUP / group.max(1)).max(1)
}

/// One layer's cached keys and values. A global layer keeps every position (slot =
/// position); a sliding-window layer keeps a ring of slots (slot = position mod capacity)
/// just large enough for its window plus the chunk being written, so its memory does not grow
/// with the context (gemma3: 5 of every 6 layers).
pub struct KvCache {
    /// Per kv head: `[block][dim][16 slots]`.
    keys: Vec<Vec<f32>>,
    /// Per kv head: `[slot][dim]`.
    values: Vec<Vec<f32>>,
    /// Slots (a multiple of the block).
    cap: usize,
    dim: usize,
    /// A sliding-window layer's window: the ring mode.
    window: Option<usize>,
    /// The positions the slots hold: `oldest..end`.
    oldest: usize,
    end: usize,
}

impl KvCache {
    /// The cache of a global layer.
    pub fn new(kv_heads: usize, dim: usize) -> KvCache {
        KvCache {
            keys: vec![Vec::new(); kv_heads],
            values: vec![Vec::new(); kv_heads],
            cap: 0,
            dim,
            window: None,
            oldest: 0,
            end: 0,
        }
    }

    /// The cache of a sliding-window layer whose queries see the last `window` positions.
    pub fn sliding(kv_heads: usize, dim: usize, window: usize) -> KvCache {
        KvCache {
            window: Some(window.max(1)),
            ..KvCache::new(kv_heads, dim)
        }
    }

    /// Room for `positions` positions; existing entries are kept. A ring needs no more room
    /// for a longer context.
    pub fn reserve(&mut self, positions: usize) {
        if self.window.is_some() || positions <= self.cap {
            return;
        }
        // Doubling: a long chat grows the cache a few times, not once per token.
        self.relayout(positions.max(2 * self.cap).next_multiple_of(BLOCK));
    }

    /// Room to write `count` positions from `start` and attend over them: a ring grows to
    /// hold the window before the first of them plus all of them.
    pub fn prepare(&mut self, start: usize, count: usize) {
        match self.window {
            None => self.reserve(start + count),
            Some(w) => {
                let need = (w + count + BLOCK).next_multiple_of(BLOCK);
                if need > self.cap {
                    self.relayout(need);
                }
            }
        }
    }

    /// `cap` slots, the positions held moved to their new slots (zero-filled elsewhere: a
    /// block's slots outside what a query sees are scored and ignored).
    fn relayout(&mut self, cap: usize) {
        let d = self.dim;
        let old_cap = self.cap;
        for (k, v) in self.keys.iter_mut().zip(&mut self.values) {
            let (mut nk, mut nv) = (vec![0f32; cap * d], vec![0f32; cap * d]);
            for pos in self.oldest..self.end {
                let (from, to) = (pos % old_cap, pos % cap);
                let (fb, fl, tb, tl) = (from / BLOCK, from % BLOCK, to / BLOCK, to % BLOCK);
                for i in 0..d {
                    nk[(tb * d + i) * BLOCK + tl] = k[(fb * d + i) * BLOCK + fl];
                }
                nv[to * d..(to + 1) * d].copy_from_slice(&v[from * d..(from + 1) * d]);
            }
            *k = nk;
            *v = nv;
        }
        self.cap = cap;
    }

    /// Stores the key and value vectors (`kv_heads × dim` each) of position `pos`.
    pub fn write(&mut self, pos: usize, k: &[f32], v: &[f32]) {
        self.prepare(pos, 1);
        let d = self.dim;
        let slot = pos % self.cap;
        let (block, lane) = (slot / BLOCK, slot % BLOCK);
        for (h, (keys, values)) in self.keys.iter_mut().zip(&mut self.values).enumerate() {
            let kb = &mut keys[block * d * BLOCK..(block + 1) * d * BLOCK];
            for (i, &x) in k[h * d..(h + 1) * d].iter().enumerate() {
                kb[i * BLOCK + lane] = x;
            }
            values[slot * d..(slot + 1) * d].copy_from_slice(&v[h * d..(h + 1) * d]);
        }
        // The slot held `pos - cap` before.
        self.oldest = self.oldest.max((pos + 1).saturating_sub(self.cap));
        self.end = self.end.max(pos + 1);
    }

    /// Forgets the positions from `position` on. `false` when a query at `position` could not
    /// be answered any more (a ring that has overwritten part of the window before it): the
    /// cache is then emptied and the sequence must run again from the start.
    pub fn truncate(&mut self, position: usize) -> bool {
        self.end = self.end.min(position);
        let needed = match self.window {
            Some(w) => (position + 1).saturating_sub(w),
            None => 0,
        };
        if self.oldest > needed {
            self.oldest = 0;
            self.end = 0;
            return false;
        }
        true
    }
}

/// How a query's scores are formed: `q·k · scale`, then (gemma2) `cap · tanh(score / cap)`;
/// with `sinks` (gpt-oss: one logit per query head of the call) the softmax also counts
/// `e^sink`, a position that is attended to and contributes nothing.
#[derive(Debug, Clone, Copy)]
pub struct Scoring<'a> {
    pub scale: f32,
    pub softcap: Option<f32>,
    pub sinks: Option<&'a [f32]>,
}

/// Attention of consecutive query rows of one sequence for kv head `kvh`: `q` holds each
/// row's query heads that share the kv head (`rows × group × dim`, already rotated), `seen[r]`
/// the cached positions row `r` attends to (all of them up to its own, or a sliding window's
/// last ones): `out` (the same shape) = softmax(scores) · V. Up to [`MAX_GROUP`] heads — of one
/// row or of several — are scored together, each key read once for all of them; a head's
/// numbers do not depend on which heads it is scored with, so a row gets the same bits alone,
/// in a prompt chunk of any length or in a batch. `scores` is scratch space reused between
/// calls.
pub fn attend(
    cache: &KvCache,
    kvh: usize,
    seen: &[Range<usize>],
    q: &[f32],
    scoring: Scoring<'_>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let d = cache.dim;
    let heads = q.len() / d;
    let group = heads / seen.len().max(1);
    debug_assert!(!seen.is_empty() && group * seen.len() == heads);
    debug_assert!(scoring.sinks.is_none_or(|s| s.len() == group));
    debug_assert!(out.len() == q.len() && kvh < cache.keys.len());
    debug_assert!(seen
        .iter()
        .all(|r| r.start < r.end && cache.oldest <= r.start && r.end <= cache.end));
    for first in (0..heads).step_by(MAX_GROUP) {
        let n = MAX_GROUP.min(heads - first);
        let heads = HeadRanges { seen, group, first };
        attend_heads(
            cache,
            kvh,
            heads,
            &q[first * d..(first + n) * d],
            scoring,
            &mut out[first * d..(first + n) * d],
            scores,
        );
    }
}

/// Which positions each head of one [`attend_heads`] call sees: head `h` of the call is head
/// `first + h` of the rows' `rows × group` heads.
#[derive(Clone, Copy)]
struct HeadRanges<'a> {
    seen: &'a [Range<usize>],
    group: usize,
    first: usize,
}

impl HeadRanges<'_> {
    fn of(&self, h: usize) -> Range<usize> {
        self.seen[(self.first + h) / self.group].clone()
    }

    /// The head's index in its kv group (its sink).
    fn in_group(&self, h: usize) -> usize {
        (self.first + h) % self.group
    }
}

simd_dispatch_avx512! {
    fn attend_heads(cache: &KvCache, kvh: usize, heads: HeadRanges<'_>, q: &[f32], scoring: Scoring<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
        let d = cache.dim;
        let g = q.len() / d;
        // Every head's positions: from the first any head sees to the last.
        let start = (0..g).map(|h| heads.of(h).start).min().unwrap_or(0);
        let end = (0..g).map(|h| heads.of(h).end).max().unwrap_or(0);
        // Whole blocks from the one holding the first position seen; scores are indexed
        // from that block's first position.
        let (first_block, last_block) = (start / BLOCK, end.div_ceil(BLOCK));
        let base = first_block * BLOCK;
        let width = (last_block - first_block) * BLOCK;
        scores.clear();
        scores.resize(g * width, 0.0);
        let keys = &cache.keys[kvh];
        // Absolute block b lives in block b mod (cap / BLOCK) (a ring's slots wrap; a global
        // cache's never do).
        let blocks = cache.cap / BLOCK;
        for b in first_block..last_block {
            let mut acc = [[0f32; BLOCK]; MAX_GROUP];
            let pb = b % blocks;
            let kb = &keys[pb * d * BLOCK..(pb + 1) * d * BLOCK];
            for i in 0..d {
                let k = &kb[i * BLOCK..][..BLOCK];
                for (h, acc) in acc.iter_mut().enumerate().take(g) {
                    let qi = q[h * d + i];
                    for l in 0..BLOCK {
                        acc[l] = qi.mul_add(k[l], acc[l]);
                    }
                }
            }
            let at = b * BLOCK - base;
            for (h, acc) in acc.iter().enumerate().take(g) {
                scores[h * width + at..h * width + at + BLOCK].copy_from_slice(acc);
            }
        }
        // Softmax weights over the positions each head sees, normalized in place.
        for h in 0..g {
            let seen = heads.of(h);
            let s = &mut scores[h * width + seen.start - base..h * width + seen.end - base];
            match scoring.softcap {
                None => s.iter_mut().for_each(|v| *v *= scoring.scale),
                Some(cap) => s
                    .iter_mut()
                    .for_each(|v| *v = (*v * scoring.scale / cap).tanh() * cap),
            }
            let sink = scoring.sinks.map(|sinks| sinks[heads.in_group(h)]);
            let max = s.iter().fold(sink.unwrap_or(f32::NEG_INFINITY), |m, &v| m.max(v));
            // The exponentials in a loop of their own, summed in 16 lanes: a float sum in
            // one chain is kept in order, which kept the exponentials from being vectorized
            // and then bound the loop by the add's latency.
            s.iter_mut().for_each(|v| *v = super::kernels::exp(*v - max));
            let mut lanes = [0f32; BLOCK];
            let mut chunks = s.chunks_exact(BLOCK);
            for c in &mut chunks {
                lanes.iter_mut().zip(c).for_each(|(l, v)| *l += v);
            }
            let mut sum = chunks.remainder().iter().sum::<f32>();
            for l in lanes {
                sum += l;
            }
            if let Some(sink) = sink {
                sum += super::kernels::exp(sink - max);
            }
            let inv = 1.0 / sum;
            s.iter_mut().for_each(|v| *v *= inv);
        }
        out.iter_mut().for_each(|o| *o = 0.0);
        let values = &cache.values[kvh];
        let ranges: [Range<usize>; MAX_GROUP] = std::array::from_fn(|h| {
            if h < g { heads.of(h) } else { 0..0 }
        });
        for p in start..end {
            let slot = p % cache.cap;
            let v = &values[slot * d..(slot + 1) * d];
            for (h, o) in out.chunks_exact_mut(d).enumerate() {
                // Each head adds its own positions, in order: the same sums as alone.
                if ranges[h].contains(&p) {
                    let w = scores[h * width + p - base];
                    o.iter_mut().zip(v).for_each(|(o, v)| *o = w.mul_add(*v, *o));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the textbook form (position-major keys, one head at a time), for GQA groups of
    /// 1, 4 and 12 (more than one register group), contexts inside one block and across many,
    /// a cache that grew while filling, sliding windows that start inside a block and on a
    /// block's first position, soft-capped scores, and per-head sinks.
    #[test]
    fn attention_equals_the_textbook_form() {
        let mut rng = crate::testkit::Rng::new(9);
        let cases = [
            (2, 1, 64, 5, 0, None),
            (4, 4, 64, 37, 0, None),
            (1, 12, 32, 100, 0, None),
            (2, 4, 32, 37, 30, None),
            (2, 2, 32, 70, 32, Some(3.0)),
            (1, 1, 16, 9, 0, Some(0.5)),
        ];
        for (case, (kv_heads, group, d, len, first, softcap)) in cases.into_iter().enumerate() {
            // Every other case with per-head sinks (gpt-oss).
            let sinks: Option<Vec<f32>> =
                (case % 2 == 1).then(|| (0..group).map(|h| h as f32 - 1.5).collect());
            let kvd = kv_heads * d;
            let keys: Vec<f32> = (0..len * kvd).map(|_| rng.next_f32()).collect();
            let values: Vec<f32> = (0..len * kvd).map(|_| rng.next_f32()).collect();
            let mut cache = KvCache::new(kv_heads, d);
            cache.reserve(3);
            for p in 0..len {
                cache.write(
                    p,
                    &keys[p * kvd..(p + 1) * kvd],
                    &values[p * kvd..(p + 1) * kvd],
                );
            }
            let scale = 1.0 / (d as f32).sqrt();
            for kvh in 0..kv_heads {
                let q: Vec<f32> = (0..group * d).map(|_| 4.0 * rng.next_f32()).collect();
                let mut out = vec![0f32; group * d];
                attend(
                    &cache,
                    kvh,
                    std::slice::from_ref(&(first..len)),
                    &q,
                    Scoring {
                        scale,
                        softcap,
                        sinks: sinks.as_deref(),
                    },
                    &mut out,
                    &mut Vec::new(),
                );
                for h in 0..group {
                    let qh = &q[h * d..(h + 1) * d];
                    let s: Vec<f32> = (first..len)
                        .map(|p| {
                            let k = &keys[p * kvd + kvh * d..p * kvd + (kvh + 1) * d];
                            let s = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                            softcap.map_or(s, |c: f32| (s / c).tanh() * c)
                        })
                        .collect();
                    let sink = sinks.as_ref().map(|s| s[h]);
                    let max = s
                        .iter()
                        .copied()
                        .fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
                    let e: Vec<f32> = s.iter().map(|v| (v - max).exp()).collect();
                    let sum: f32 = e.iter().sum::<f32>() + sink.map_or(0.0, |k| (k - max).exp());
                    for i in 0..d {
                        let want: f32 = (first..len)
                            .map(|p| e[p - first] / sum * values[p * kvd + kvh * d + i])
                            .sum();
                        let got = out[h * d + i];
                        assert!(
                            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "kv head {kvh} head {h} dim {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Rows attended together (a prompt chunk's, scored several at a time so that each key
    /// is read once for all of them) get exactly what each gets alone: GQA groups of 1, 3, 4
    /// and 12 (rows packed into one call, and one row split over calls), global and sliding
    /// ranges, soft caps and sinks.
    #[test]
    fn rows_attended_together_equal_each_row_alone() {
        let mut rng = crate::testkit::Rng::new(13);
        for (case, (group, d, window)) in [
            (1, 32, None),
            (3, 16, Some(5)),
            (4, 64, None),
            (12, 16, Some(40)),
        ]
        .into_iter()
        .enumerate()
        {
            let kv_heads = 2;
            let kvd = kv_heads * d;
            let len = 70;
            let mut cache = KvCache::new(kv_heads, d);
            cache.reserve(len);
            for p in 0..len {
                let k: Vec<f32> = (0..kvd).map(|_| rng.next_f32()).collect();
                let v: Vec<f32> = (0..kvd).map(|_| rng.next_f32()).collect();
                cache.write(p, &k, &v);
            }
            let sinks: Option<Vec<f32>> =
                (case % 2 == 1).then(|| (0..group).map(|h| 0.5 * h as f32 - 1.0).collect());
            let scoring = Scoring {
                scale: 0.3,
                softcap: (case == 2).then_some(2.0),
                sinks: sinks.as_deref(),
            };
            let seen = |p: usize| window.map_or(0, |w: usize| (p + 1).saturating_sub(w))..p + 1;
            // Rows 20..37 (positions), in one call.
            let rows: Vec<Range<usize>> = (20..37).map(seen).collect();
            let q: Vec<f32> = (0..rows.len() * group * d)
                .map(|_| 3.0 * rng.next_f32())
                .collect();
            for kvh in 0..kv_heads {
                let mut together = vec![0f32; q.len()];
                attend(
                    &cache,
                    kvh,
                    &rows,
                    &q,
                    scoring,
                    &mut together,
                    &mut Vec::new(),
                );
                for (r, range) in rows.iter().enumerate() {
                    let w = group * d;
                    let mut alone = vec![0f32; w];
                    attend(
                        &cache,
                        kvh,
                        std::slice::from_ref(range),
                        &q[r * w..(r + 1) * w],
                        scoring,
                        &mut alone,
                        &mut Vec::new(),
                    );
                    assert_eq!(
                        &together[r * w..(r + 1) * w],
                        &alone[..],
                        "group {group}, row {r}, kv head {kvh}"
                    );
                }
            }
        }
    }

    /// A sliding-window layer's ring gives what a cache of every position gives, for chunks
    /// of every size (the ring growing to hold the window plus the chunk, then wrapping many
    /// times), and a rewind it can no longer serve empties it.
    #[test]
    fn a_ring_of_slots_attends_as_the_whole_cache() {
        let mut rng = crate::testkit::Rng::new(5);
        let (kv_heads, group, d, window) = (2, 3, 32, 21);
        let kvd = kv_heads * d;
        let len = 300;
        let keys: Vec<f32> = (0..len * kvd).map(|_| rng.next_f32()).collect();
        let values: Vec<f32> = (0..len * kvd).map(|_| rng.next_f32()).collect();
        let (mut ring, mut whole) = (
            KvCache::sliding(kv_heads, d, window),
            KvCache::new(kv_heads, d),
        );
        let scoring = Scoring {
            scale: 0.2,
            softcap: None,
            sinks: None,
        };
        let mut pos = 0;
        let chunks = [
            1, 5, 1, 1, 40, 3, 1, 17, 1, 1, 64, 2, 1, 1, 1, 90, 1, 1, 2, 1, 1,
        ];
        // Then decoding: one position at a time, round the ring again.
        for chunk in chunks.into_iter().chain(std::iter::repeat_n(1, 60)) {
            ring.prepare(pos, chunk);
            whole.prepare(pos, chunk);
            for p in pos..pos + chunk {
                let (k, v) = (
                    &keys[p * kvd..(p + 1) * kvd],
                    &values[p * kvd..(p + 1) * kvd],
                );
                ring.write(p, k, v);
                whole.write(p, k, v);
            }
            for p in pos..pos + chunk {
                let seen = (p + 1).saturating_sub(window)..p + 1;
                for kvh in 0..kv_heads {
                    let q: Vec<f32> = (0..group * d).map(|_| rng.next_f32()).collect();
                    let (mut a, mut b) = (vec![0f32; group * d], vec![0f32; group * d]);
                    attend(
                        &ring,
                        kvh,
                        std::slice::from_ref(&seen),
                        &q,
                        scoring,
                        &mut a,
                        &mut Vec::new(),
                    );
                    attend(
                        &whole,
                        kvh,
                        std::slice::from_ref(&seen),
                        &q,
                        scoring,
                        &mut b,
                        &mut Vec::new(),
                    );
                    assert_eq!(a, b, "position {p} kv head {kvh}");
                }
            }
            pos += chunk;
        }
        assert_eq!(ring.cap, (window + 90 + BLOCK).next_multiple_of(BLOCK));
        assert!(
            pos > 2 * ring.cap,
            "{pos} positions through {} slots",
            ring.cap
        );
        // Back a few positions: the window before them is still there.
        assert!(ring.truncate(pos - 3));
        // Far back: overwritten long ago; the ring empties itself.
        assert!(!ring.truncate(pos / 2));
        assert_eq!((ring.oldest, ring.end), (0, 0));
        assert!(whole.truncate(pos / 2), "a whole cache keeps everything");
    }
}
