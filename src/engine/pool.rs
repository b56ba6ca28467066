//! The engine's thread pool: one thread per core (the caller is one of them), kept alive and
//! spinning between the ~100 parallel regions of a decoded token so that starting a region
//! costs a store and a cache-line transfer, not a futex wake-up (rayon's sleeping workers cost
//! ~15% of a 4-bit decode step here). Idle workers park after a short spin, so a chat waiting
//! for its user burns no CPU.
//!
//! A region is `n` chunk indices claimed from a shared counter by the caller and the workers
//! until none is left. The protocol that lets a region's closure live on the caller's stack:
//! - `epoch` is odd while the caller rewrites the job, even once it is published;
//! - a worker announces itself in `active`, then re-reads `epoch`: if it changed, it leaves
//!   without touching the job; the caller waits for `active == 0` after making `epoch` odd and
//!   before rewriting, so nobody reads a job while it is written;
//! - the job pointer is only followed after claiming an index below `chunks`, and the caller
//!   returns only when every index is claimed and `active == 0`, so nobody follows it after
//!   the closure is gone.
//!
//! All of it is `SeqCst`: the announce-then-check / publish-then-check pairs are Dekker-style
//! and need the single total order.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::{self, Thread};

/// Spin iterations before an idle worker parks (~0.2–1 ms: longer than a decode step's gaps
/// between regions, including sampling and printing a token).
const SPINS_BEFORE_PARK: u32 = 1 << 16;

/// Slices one region splits at most (more make several regions).
const MAX_PARTS: usize = 8;

type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// One cache line (two on CPUs that prefetch pairs) per hot atomic: the workers spin on
/// `epoch` while the caller claims chunks; sharing a line makes every claim a cache-line
/// round trip.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    epoch: Line<AtomicUsize>,
    active: Line<AtomicUsize>,
    /// The next unclaimed chunk of each thread's share: thread `p` starts on share `p` (one
    /// contiguous run of rows, which the hardware prefetcher streams; interleaved chunks
    /// measured 35% slower), then helps finish the others.
    next: Vec<Line<AtomicUsize>>,
    chunks: AtomicUsize,
    /// Points at a `Job` on the caller's stack while a region runs.
    job: AtomicPtr<()>,
    sleeping: Vec<Line<AtomicBool>>,
    /// A chunk panicked on a worker; the caller panics in its place once the region is over.
    panicked: AtomicBool,
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    /// One region at a time; a caller that finds it taken (another thread, or a region's own
    /// closure) runs its region alone.
    caller: Mutex<()>,
}

/// The process-wide pool, sized like rayon's (`RAYON_NUM_THREADS`, else one per core).
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads().max(1)))
}

impl Pool {
    /// A pool running regions on `threads` threads: the caller and `threads - 1` workers.
    pub fn new(threads: usize) -> Pool {
        let workers = threads.saturating_sub(1);
        let shared = Arc::new(Shared {
            epoch: Line(AtomicUsize::new(0)),
            active: Line(AtomicUsize::new(0)),
            next: (0..threads.max(1))
                .map(|_| Line(AtomicUsize::new(0)))
                .collect(),
            chunks: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleeping: (0..workers).map(|_| Line(AtomicBool::new(false))).collect(),
            panicked: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let shared = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("mlxk-engine-{w}"))
                .spawn(move || worker(&shared, w));
            match spawned {
                Ok(h) => handles.push(h.thread().clone()),
                // Fewer threads is slower, not wrong: the caller claims every chunk it finds.
                Err(e) => tracing::warn!("engine thread {w} not started: {e}"),
            }
        }
        Pool {
            shared,
            threads: handles,
            caller: Mutex::new(()),
        }
    }

    /// Calls `job(i)` for every `i` in `0..n`, spread over the pool; returns when all are done.
    pub fn run(&self, n: usize, job: &(dyn Fn(usize) + Sync)) {
        // A chunk that panicked poisons the lock; the pool itself is consistent again by then.
        let _region = match self.caller.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                (0..n).for_each(job);
                return;
            }
        };
        if n <= 1 || self.threads.is_empty() {
            (0..n).for_each(job);
            return;
        }
        let s = &*self.shared;
        let e = s.epoch.load(SeqCst);
        s.epoch.store(e + 1, SeqCst);
        while s.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        let job_ref: Job = job;
        s.job.store(&job_ref as *const Job as *mut (), SeqCst);
        s.chunks.store(n, SeqCst);
        for (p, next) in s.next.iter().enumerate() {
            next.store(share_start(n, s.next.len(), p), SeqCst);
        }
        s.epoch.store(e + 2, SeqCst);
        for (w, t) in self.threads.iter().enumerate() {
            if s.sleeping[w].load(SeqCst) {
                t.unpark();
            }
        }
        // The workers may be inside `job` until `active == 0`: the closure must outlive that
        // even when a chunk of the caller's panics.
        let mine = panic::catch_unwind(AssertUnwindSafe(|| {
            while let Some(i) = claim(s, n, 0) {
                job(i);
            }
        }));
        while s.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        if let Err(p) = mine {
            panic::resume_unwind(p);
        }
        if s.panicked.swap(false, SeqCst) {
            panic!("an engine thread panicked (its message is above)");
        }
    }

    /// Splits `out` into `chunk`-sized pieces and calls `f(first_index, piece)` on each.
    pub fn for_each_chunk<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        self.for_each_chunk_of(&mut [((), out)], chunk, |_, first, piece| f(first, piece));
    }

    /// [`Pool::for_each_chunk`] over several keyed slices as one region (the products of one
    /// input): `f(key, first_index, piece)`. Allocates nothing.
    pub fn for_each_chunk_of<K: Sync, T: Send>(
        &self,
        parts: &mut [(K, &mut [T])],
        chunk: usize,
        f: impl Fn(&K, usize, &mut [T]) + Sync,
    ) {
        for group in parts.chunks_mut(MAX_PARTS) {
            self.region_of(group, chunk, &f);
        }
    }

    fn region_of<K: Sync, T: Send>(
        &self,
        parts: &mut [(K, &mut [T])],
        chunk: usize,
        f: &(dyn Fn(&K, usize, &mut [T]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let count = parts.len();
        // (pointer, length, first chunk index) of every slice.
        let mut spans = [(SendPtr(std::ptr::null_mut::<T>()), 0, 0); MAX_PARTS];
        let mut keys: [Option<&K>; MAX_PARTS] = [None; MAX_PARTS];
        let mut total = 0;
        for ((span, key), (k, o)) in spans.iter_mut().zip(&mut keys).zip(parts.iter_mut()) {
            *span = (SendPtr(o.as_mut_ptr()), o.len(), total);
            *key = Some(&*k);
            total += o.len().div_ceil(chunk);
        }
        let spans = &spans[..count];
        self.run(total, &|i| {
            let p = spans.partition_point(|&(_, _, start)| start <= i) - 1;
            let (SendPtr(ptr), len, start) = spans[p];
            let first = (i - start) * chunk;
            let n = chunk.min(len - first);
            // SAFETY: chunk `i` is claimed exactly once per region and the pieces of a slice
            // are disjoint; the slices stay mutably borrowed until `run` returns.
            let piece = unsafe { std::slice::from_raw_parts_mut(ptr.add(first), n) };
            if let Some(key) = keys[p] {
                f(key, first, piece)
            }
        });
    }
}

struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: only used to hand disjoint pieces of a `&mut [T]` (T: Send) to the pool's threads.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// First chunk of share `p` of `n` chunks split `parts` ways.
fn share_start(n: usize, parts: usize, p: usize) -> usize {
    p * n / parts
}

/// A chunk for thread `p`: from its own share first, then from the others'.
fn claim(s: &Shared, n: usize, p: usize) -> Option<usize> {
    let parts = s.next.len();
    (0..parts).map(|k| (p + k) % parts).find_map(|q| {
        let end = share_start(n, parts, q + 1);
        // Past the end already: skip without another increment.
        if s.next[q].load(SeqCst) >= end {
            return None;
        }
        let i = s.next[q].fetch_add(1, SeqCst);
        (i < end).then_some(i)
    })
}

fn worker(s: &Shared, w: usize) {
    let mut seen = 0;
    loop {
        let e = wait_for_region(s, w, seen);
        s.active.fetch_add(1, SeqCst);
        if s.epoch.load(SeqCst) != e {
            // The caller is already rewriting the job for the next region.
            s.active.fetch_sub(1, SeqCst);
            continue;
        }
        seen = e;
        let n = s.chunks.load(SeqCst);
        while let Some(i) = claim(s, n, w + 1) {
            // SAFETY: index `i` of this region was claimed while announced in `active`: the
            // caller is still inside `run`, waiting, and the job it points at is alive.
            let job = unsafe { *(s.job.load(SeqCst) as *const Job) };
            if panic::catch_unwind(AssertUnwindSafe(|| job(i))).is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

/// Waits for a published region newer than `seen`: spinning first, then parked.
fn wait_for_region(s: &Shared, w: usize, seen: usize) -> usize {
    let fresh = |e: usize| e != seen && e.is_multiple_of(2);
    let mut spins = 0u32;
    loop {
        let e = s.epoch.load(SeqCst);
        if fresh(e) {
            return e;
        }
        if spins < SPINS_BEFORE_PARK {
            spins += 1;
            std::hint::spin_loop();
            continue;
        }
        s.sleeping[w].store(true, SeqCst);
        if !fresh(s.epoch.load(SeqCst)) {
            thread::park();
        }
        s.sleeping[w].store(false, SeqCst);
        spins = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    #[test]
    fn every_chunk_runs_exactly_once_across_regions() {
        let pool = Pool::new(3);
        for round in 0..2000usize {
            let n = round % 37;
            let mut out = vec![0u32; n * 5 + round % 3];
            pool.for_each_chunk(&mut out, 5, |first, piece| {
                for (j, v) in piece.iter_mut().enumerate() {
                    *v += (first + j) as u32 + 1;
                }
            });
            for (i, v) in out.iter().enumerate() {
                assert_eq!(*v, i as u32 + 1, "round {round} index {i}");
            }
        }
    }

    #[test]
    fn several_slices_share_a_region_and_nested_regions_run_inline() {
        let pool = Pool::new(2);
        let (mut a, mut b) = (vec![0usize; 100], vec![0usize; 7]);
        pool.for_each_chunk_of(
            &mut [(0, &mut a[..]), (1, &mut b[..])],
            16,
            |s, first, piece| {
                let mut inner = vec![0usize; piece.len()];
                pool.for_each_chunk(&mut inner, 1, |i, p| p[0] = i);
                for (j, v) in piece.iter_mut().enumerate() {
                    *v = 1000 * s + first + inner[j];
                }
            },
        );
        assert!(a.iter().enumerate().all(|(i, &v)| v == i));
        assert!(b.iter().enumerate().all(|(i, &v)| v == 1000 + i));
    }

    #[test]
    fn parked_workers_wake_for_the_next_region() {
        let pool = Pool::new(2);
        let mut out = vec![0u8; 64];
        pool.for_each_chunk(&mut out, 1, |_, p| p[0] = 1);
        // Long enough for the worker to give up spinning and park.
        thread::sleep(Duration::from_millis(200));
        // Two chunks that each wait for the other's thread: done at once only when the parked
        // worker took one of them.
        let seen = Mutex::new(HashSet::new());
        pool.run(2, &|_| {
            let deadline = Instant::now() + Duration::from_secs(2);
            if let Ok(mut s) = seen.lock() {
                s.insert(thread::current().id());
            }
            while seen.lock().map(|s| s.len()).unwrap_or(0) < 2 && Instant::now() < deadline {
                thread::yield_now();
            }
        });
        assert_eq!(seen.lock().map(|s| s.len()).unwrap_or(0), 2);
    }

    #[test]
    fn a_panicking_chunk_panics_the_caller_after_the_region() {
        let pool = Pool::new(2);
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(64, &|i| assert!(i != 40, "chunk {i}"));
        }));
        assert!(caught.is_err());
        // The pool still works.
        let mut out = vec![0u8; 64];
        pool.for_each_chunk(&mut out, 1, |_, p| p[0] = 3);
        assert!(out.iter().all(|&v| v == 3));
    }
}
