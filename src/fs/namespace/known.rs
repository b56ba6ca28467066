//! What the daemon knows of the overlay's directories: those that do not exist, and the names
//! in those that do. A fresh mount's overlay holds none of the cache's directories, yet every
//! lookup probed it at every level of its path — the entry itself, its redirect and whiteout
//! records, the opaque marker — about 9 failing system calls per name; and where the overlay
//! directory does exist (the overlay root, under every org of the cache) the same probes ran
//! for every name in it: 27 failing probes of `.wh.<org>` and `.wh..wh..ref.<org>` per listed
//! model (docs/benchmarks.md, "Many models"). One remembered "no such overlay directory"
//! answers all of them for every name below it, and one listing of an existing directory
//! answers them for every name in it.
//!
//! Consistency: the daemon is the overlay's only writer while mounted, and every change it makes
//! holds the tree's write lock, whose guard ([`WriteTree`]) forgets everything known here when
//! taken and again when dropped (so a probe or a listing that raced a change is never kept);
//! while it is held every question goes to the overlay. A change made to the overlay behind
//! the mount's back is seen within [`KNOWN_TTL`].

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long what is known is trusted without a change by the daemon (the kernel's entry time).
pub(super) const KNOWN_TTL: Duration = Duration::from_secs(1);

/// Overlay directories with more entries than this are not kept (asked name by name instead):
/// a workspace's large directory would cost a listing per second and its memory.
const MAX_NAMES: usize = 4096;

/// An overlay directory's state.
#[derive(Clone)]
enum Known {
    Absent,
    /// Every entry's raw name (records and markers included).
    Names(Arc<HashSet<OsString>>),
}

#[derive(Default)]
pub(super) struct KnownDirs {
    /// Union directory path → (generation, when it was seen, what was seen).
    known: DashMap<PathBuf, (u64, Instant, Known)>,
    generation: AtomicU64,
    /// Held write locks (0 or 1): while the tree is written, nothing is known or learned — the
    /// writer's own lookups before and after its change must see the overlay as it is.
    writing: AtomicU64,
}

impl KnownDirs {
    /// Forgets everything known (lazily: entries of older generations are ignored).
    pub(super) fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Keep the map from growing with dead entries across many changes.
        if self.known.len() > 100_000 {
            self.known.clear();
        }
    }

    fn valid(&self, p: &Path, generation: u64, now: Instant) -> Option<Known> {
        self.known
            .get(p)
            .filter(|e| e.0 == generation && now.duration_since(e.1) < KNOWN_TTL)
            .map(|e| e.2.clone())
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
        // The root (empty path) always exists; its children and theirs may not.
        let mut seen_present = false;
        for (i, p) in dir.ancestors().enumerate() {
            match self.valid(p, generation, now) {
                Some(Known::Absent) => return true,
                Some(Known::Names(_)) if i == 0 => seen_present = true,
                _ => {}
            }
        }
        if seen_present || dir.as_os_str().is_empty() || !stat() {
            return false;
        }
        // Recorded with the generation read before the probe: a change since makes it stale.
        self.known
            .insert(dir.to_path_buf(), (generation, now, Known::Absent));
        true
    }

    /// The raw names in the overlay directory of union directory `dir`, which exists (`None`:
    /// not known — being written, too large, unreadable). `list` reads them when nothing is
    /// known (`None` from it: not kept).
    pub(super) fn names(
        &self,
        dir: &Path,
        list: impl FnOnce() -> Option<Vec<OsString>>,
    ) -> Option<Arc<HashSet<OsString>>> {
        if self.writing.load(Ordering::Acquire) > 0 {
            return None;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let now = Instant::now();
        if let Some(Known::Names(names)) = self.valid(dir, generation, now) {
            return Some(names);
        }
        let names = list().filter(|n| n.len() <= MAX_NAMES)?;
        let names = Arc::new(names.into_iter().collect::<HashSet<_>>());
        // As for absences: stale at once if the tree changed while it was read.
        self.known.insert(
            dir.to_path_buf(),
            (generation, now, Known::Names(names.clone())),
        );
        Some(names)
    }
}

/// The tree's write lock; taking it and dropping it forget everything known.
pub(super) struct WriteTree<'a> {
    _guard: RwLockWriteGuard<'a, ()>,
    known: &'a KnownDirs,
}

impl<'a> WriteTree<'a> {
    pub(super) fn new(lock: &'a RwLock<()>, known: &'a KnownDirs) -> WriteTree<'a> {
        let guard = lock.write().unwrap_or_else(|p| p.into_inner());
        known.writing.fetch_add(1, Ordering::AcqRel);
        known.forget_all();
        WriteTree {
            _guard: guard,
            known,
        }
    }
}

impl Drop for WriteTree<'_> {
    fn drop(&mut self) {
        self.known.forget_all();
        self.known.writing.fetch_sub(1, Ordering::AcqRel);
    }
}
