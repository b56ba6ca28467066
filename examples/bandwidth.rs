//! Memory read bandwidth of this machine, the bound `mlxk run`'s decode is measured against:
//! every thread sums its share of a buffer far larger than the caches, best of several passes.
//!
//!   bandwidth [MiB] [passes]      (default 2048 MiB, 5 passes; threads = rayon's default)

use rayon::prelude::*;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let mib = args.first().copied().unwrap_or(2048);
    let passes = args.get(1).copied().unwrap_or(5);
    let n = mib * (1 << 20) / 8;
    // Written once so every page is really backed.
    let buf: Vec<u64> = (0..n as u64).collect();
    let threads = rayon::current_num_threads();
    let chunk = n.div_ceil(threads * 16);
    let mut best = f64::MAX;
    let mut check = 0u64;
    for _ in 0..passes {
        let t = Instant::now();
        let s: u64 = buf
            .par_chunks(chunk)
            .map(|c| {
                // 8 independent lanes: the loads, not the adds, bound the loop.
                let mut acc = [0u64; 8];
                for w in c.chunks_exact(8) {
                    for j in 0..8 {
                        acc[j] = acc[j].wrapping_add(w[j]);
                    }
                }
                acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            })
            .reduce(|| 0, u64::wrapping_add);
        best = best.min(t.elapsed().as_secs_f64());
        check = check.wrapping_add(s);
    }
    let gbs = (n * 8) as f64 / best / 1e9;
    println!("read bandwidth: {gbs:.1} GB/s ({threads} threads, {mib} MiB, best of {passes}; checksum {check:x})");
}
