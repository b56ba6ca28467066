//! Causal attention over a KV cache, shaped for the vector units: keys are cached transposed in
//! blocks of 16 positions (per kv head: block, dimension, position), so a query's scores for 16
//! positions are 16-lane multiply-adds over the head dimension with no horizontal sums, reading
//! one contiguous 4 KiB block; the query heads that share a kv head (GQA) are scored together,
//! each key read once for all of them. Values are cached per kv head, position-major, and each
//! is read once for all the query heads. Plain loops the compiler vectorizes (compiled for
//! AVX2 + FMA at run time when the CPU has them).

use crate::simd::simd_dispatch;

/// Positions scored per block (the cache's capacity is a multiple of it).
const BLOCK: usize = 16;
/// Query heads per kv head handled in registers at once.
const MAX_GROUP: usize = 8;

/// One layer's cached keys and values.
pub struct KvCache {
    /// Per kv head: `[block][dim][16 positions]`.
    keys: Vec<Vec<f32>>,
    /// Per kv head: `[position][dim]`.
    values: Vec<Vec<f32>>,
    /// Positions there is room for (a multiple of the block).
    cap: usize,
    dim: usize,
}

impl KvCache {
    pub fn new(kv_heads: usize, dim: usize) -> KvCache {
        KvCache {
            keys: vec![Vec::new(); kv_heads],
            values: vec![Vec::new(); kv_heads],
            cap: 0,
            dim,
        }
    }

    /// Room for `positions` positions; existing entries are kept.
    pub fn reserve(&mut self, positions: usize) {
        if positions <= self.cap {
            return;
        }
        // Doubling: a long chat grows the cache a few times, not once per token.
        let cap = positions.max(2 * self.cap).next_multiple_of(BLOCK);
        // Zero-filled: a block's positions past the context are scored (and ignored).
        for (k, v) in self.keys.iter_mut().zip(&mut self.values) {
            k.resize(cap * self.dim, 0.0);
            v.resize(cap * self.dim, 0.0);
        }
        self.cap = cap;
    }

    /// Stores the key and value vectors (`kv_heads × dim` each) of position `pos`.
    pub fn write(&mut self, pos: usize, k: &[f32], v: &[f32]) {
        self.reserve(pos + 1);
        let d = self.dim;
        let (block, lane) = (pos / BLOCK, pos % BLOCK);
        for (h, (keys, values)) in self.keys.iter_mut().zip(&mut self.values).enumerate() {
            let kb = &mut keys[block * d * BLOCK..(block + 1) * d * BLOCK];
            for (i, &x) in k[h * d..(h + 1) * d].iter().enumerate() {
                kb[i * BLOCK + lane] = x;
            }
            values[pos * d..(pos + 1) * d].copy_from_slice(&v[h * d..(h + 1) * d]);
        }
    }
}

/// Attention of the query heads of kv head `kvh` (`q`: `group × dim`, already rotated) over
/// positions `0..len` of `cache`: `out` (`group × dim`) = softmax(q·K / √dim) · V. `scores` is
/// scratch space reused between calls.
pub fn attend(
    cache: &KvCache,
    kvh: usize,
    len: usize,
    q: &[f32],
    scale: f32,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let d = cache.dim;
    let group = q.len() / d;
    debug_assert!(len <= cache.cap && out.len() == q.len() && kvh < cache.keys.len());
    for first in (0..group).step_by(MAX_GROUP) {
        let g = MAX_GROUP.min(group - first);
        attend_heads(
            cache,
            kvh,
            len,
            &q[first * d..(first + g) * d],
            scale,
            &mut out[first * d..(first + g) * d],
            scores,
        );
    }
}

simd_dispatch! {
    fn attend_heads(cache: &KvCache, kvh: usize, len: usize, q: &[f32], scale: f32, out: &mut [f32], scores: &mut Vec<f32>) {
        let d = cache.dim;
        let g = q.len() / d;
        let blocks = len.div_ceil(BLOCK);
        let width = blocks * BLOCK;
        scores.clear();
        scores.resize(g * width, 0.0);
        let keys = &cache.keys[kvh];
        for b in 0..blocks {
            let mut acc = [[0f32; BLOCK]; MAX_GROUP];
            let kb = &keys[b * d * BLOCK..(b + 1) * d * BLOCK];
            for i in 0..d {
                let k = &kb[i * BLOCK..][..BLOCK];
                for (h, acc) in acc.iter_mut().enumerate().take(g) {
                    let qi = q[h * d + i];
                    for l in 0..BLOCK {
                        acc[l] += qi * k[l];
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate().take(g) {
                scores[h * width + b * BLOCK..h * width + (b + 1) * BLOCK].copy_from_slice(acc);
            }
        }
        // Softmax weights, normalized in place.
        for h in 0..g {
            let s = &mut scores[h * width..h * width + len];
            let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
            let mut sum = 0f32;
            for v in s.iter_mut() {
                *v = super::kernels::exp(*v * scale - max);
                sum += *v;
            }
            let inv = 1.0 / sum;
            s.iter_mut().for_each(|v| *v *= inv);
        }
        out.iter_mut().for_each(|o| *o = 0.0);
        let values = &cache.values[kvh];
        for (p, v) in values.chunks_exact(d).take(len).enumerate() {
            for (h, o) in out.chunks_exact_mut(d).enumerate() {
                let w = scores[h * width + p];
                o.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the textbook form (position-major keys, one head at a time), for GQA groups of
    /// 1, 4 and 12 (more than one register group), contexts inside one block and across many,
    /// and a cache that grew while filling.
    #[test]
    fn attention_equals_the_textbook_form() {
        let mut rng = crate::testkit::Rng::new(9);
        for (kv_heads, group, d, len) in [(2, 1, 64, 5), (4, 4, 64, 37), (1, 12, 32, 100)] {
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
                let q: Vec<f32> = (0..group * d).map(|_| rng.next_f32()).collect();
                let mut out = vec![0f32; group * d];
                attend(&cache, kvh, len, &q, scale, &mut out, &mut Vec::new());
                for h in 0..group {
                    let qh = &q[h * d..(h + 1) * d];
                    let s: Vec<f32> = (0..len)
                        .map(|p| {
                            let k = &keys[p * kvd + kvh * d..p * kvd + (kvh + 1) * d];
                            qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
                        })
                        .collect();
                    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = s.iter().map(|v| (v - max).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    for i in 0..d {
                        let want: f32 = (0..len)
                            .map(|p| e[p] / sum * values[p * kvd + kvh * d + i])
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
}
