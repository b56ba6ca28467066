//! Overlay directories known not to exist. A fresh mount's overlay holds none of the cache's
//! directories, yet every lookup probed it at every level of its path — the entry itself, its
//! redirect and whiteout records, the opaque marker — about 9 failing system calls per name
//! (docs/benchmarks.md, "Many models"). One remembered "no such overlay directory" answers all
//! of them for every name below it.
//!
//! Consistency: the daemon is the overlay's only writer while mounted, and every change it makes
//! holds the tree's write lock, whose guard ([`WriteTree`]) forgets everything known here when
//! taken and again when dropped (so a probe that raced a change is never kept); while it is
//! held every question goes to the overlay. A change made to the overlay behind the mount's
//! back is seen within [`ABSENT_TTL`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long an absence is trusted without a change by the daemon (the kernel's entry time).
pub(super) const ABSENT_TTL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct AbsentDirs {
    /// Union directory path → (generation, when it was seen absent).
    known: DashMap<PathBuf, (u64, Instant)>,
    generation: AtomicU64,
    /// Held write locks (0 or 1): while the tree is written, nothing is known or learned — the
    /// writer's own lookups before and after its change must see the overlay as it is.
    writing: AtomicU64,
}

impl AbsentDirs {
    /// Drops every absence known (lazily: entries of older generations are ignored).
    pub(super) fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Keep the map from growing with dead entries across many changes.
        if self.known.len() > 100_000 {
            self.known.clear();
        }
    }

    /// Whether the overlay directory of union directory `dir` is known absent: `dir` itself or
    /// one of its ancestors seen absent in this generation, within the TTL. `stat` probes the
    /// overlay path (`true`: absent) when nothing is known.
    pub(super) fn is_absent(&self, dir: &Path, stat: impl FnOnce() -> bool) -> bool {
        if self.writing.load(Ordering::Acquire) > 0 {
            return !dir.as_os_str().is_empty() && stat();
        }
        let generation = self.generation.load(Ordering::Acquire);
        let now = Instant::now();
        let valid = |p: &Path| {
            self.known
                .get(p)
                .is_some_and(|e| e.0 == generation && now.duration_since(e.1) < ABSENT_TTL)
        };
        // The root (empty path) always exists; its children and theirs may not.
        if dir
            .ancestors()
            .filter(|p| !p.as_os_str().is_empty())
            .any(valid)
        {
            return true;
        }
        if dir.as_os_str().is_empty() || !stat() {
            return false;
        }
        // Recorded with the generation read before the probe: a change since makes it stale.
        self.known.insert(dir.to_path_buf(), (generation, now));
        true
    }
}

/// The tree's write lock; taking it and dropping it forget every known absence.
pub(super) struct WriteTree<'a> {
    _guard: RwLockWriteGuard<'a, ()>,
    absent: &'a AbsentDirs,
}

impl<'a> WriteTree<'a> {
    pub(super) fn new(lock: &'a RwLock<()>, absent: &'a AbsentDirs) -> WriteTree<'a> {
        let guard = lock.write().unwrap_or_else(|p| p.into_inner());
        absent.writing.fetch_add(1, Ordering::AcqRel);
        absent.forget_all();
        WriteTree {
            _guard: guard,
            absent,
        }
    }
}

impl Drop for WriteTree<'_> {
    fn drop(&mut self) {
        self.absent.forget_all();
        self.absent.writing.fetch_sub(1, Ordering::AcqRel);
    }
}
