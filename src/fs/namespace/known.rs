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
//! holds the tree's write lock, whose guard ([`WriteTree`]) forgets what the change touched:
//! the directories it names before changing anything ([`WriteTree::changing`]), or everything
//! when it names none. While a change is under way every question goes to the overlay, and
//! whatever a question learned while a change began or ended is not kept (see `learn`). A
//! change made to the overlay behind the mount's back is seen within [`KNOWN_TTL`].
//!
//! Why not forget everything at every change: an untar into a workspace is a change per file,
//! and each one made the next lookup list every directory above it again (~100 system calls per
//! file created; docs/benchmarks.md, "The daemon's own writes").

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::fs::FastHash;

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
    Names(Arc<HashSet<OsString, FastHash>>),
}

#[derive(Default)]
pub(super) struct KnownDirs {
    /// Union directory path → (epoch, when it was seen, what was seen).
    /// Keyed by the path's bytes: `Path`'s own hash parses it into components first.
    known: DashMap<OsString, (u64, Instant, Known), FastHash>,
    /// Bumped by [`KnownDirs::forget_all`]: entries of older epochs are ignored.
    epoch: AtomicU64,
    /// Bumped when a change starts and when it ends: a question that spanned either drops what
    /// it learned.
    changes: AtomicU64,
    /// Changes under way (0 or 1): while the tree is written, nothing is known or learned — the
    /// writer's own lookups during its change must see the overlay as it is.
    writing: AtomicU64,
}

impl KnownDirs {
    /// Forgets everything known (lazily: entries of older epochs are ignored).
    pub(super) fn forget_all(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // Keep the map from growing with dead entries across many changes.
        if self.known.len() > 100_000 {
            self.known.clear();
        }
    }

    /// Forgets what is known of the union directories `dirs` (each one's own entry: a known
    /// absence of an ancestor of a directory answers for it, so a change that creates an
    /// overlay directory names every level it may have created).
    fn forget(&self, dirs: &[PathBuf]) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        for d in dirs {
            self.known.remove(d.as_os_str());
        }
    }

    fn valid(&self, p: &Path, epoch: u64, now: Instant) -> Option<Known> {
        self.known
            .get(p.as_os_str())
            .filter(|e| e.0 == epoch && now.duration_since(e.1) < KNOWN_TTL)
            .map(|e| e.2.clone())
    }

    /// Keeps what a question learned of `dir`, unless a change began or ended since the
    /// question started (`changes` read then): what it saw may be half of that change. The
    /// entry goes in first and is taken back after the check, so that a change starting
    /// between the two is caught by one side or the other (its own forgetting runs after it).
    fn learn(&self, dir: &Path, epoch: u64, changes: u64, now: Instant, what: Known) {
        self.known
            .insert(dir.as_os_str().to_os_string(), (epoch, now, what));
        if self.changes.load(Ordering::SeqCst) != changes || self.writing.load(Ordering::SeqCst) > 0
        {
            self.known.remove(dir.as_os_str());
        }
    }

    /// Whether the overlay directory of union directory `dir` is known absent: `dir` itself or
    /// one of its ancestors seen absent in this epoch, within the TTL. `stat` probes the
    /// overlay path (`true`: absent) when nothing is known.
    pub(super) fn is_absent(&self, dir: &Path, stat: impl FnOnce() -> bool) -> bool {
        let changes = self.changes.load(Ordering::SeqCst);
        if self.writing.load(Ordering::SeqCst) > 0 {
            return !dir.as_os_str().is_empty() && stat();
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let now = Instant::now();
        // The root (empty path) always exists; its children and theirs may not.
        let mut seen_present = false;
        for (i, p) in dir.ancestors().enumerate() {
            match self.valid(p, epoch, now) {
                Some(Known::Absent) => return true,
                Some(Known::Names(_)) if i == 0 => seen_present = true,
                _ => {}
            }
        }
        if seen_present || dir.as_os_str().is_empty() || !stat() {
            return false;
        }
        self.learn(dir, epoch, changes, now, Known::Absent);
        true
    }

    /// The raw names in the overlay directory of union directory `dir`, which exists (`None`:
    /// not known — being written, too large, unreadable). `list` reads them when nothing is
    /// known (`None` from it: not kept).
    pub(super) fn names(
        &self,
        dir: &Path,
        list: impl FnOnce() -> Option<Vec<OsString>>,
    ) -> Option<Arc<HashSet<OsString, FastHash>>> {
        let changes = self.changes.load(Ordering::SeqCst);
        if self.writing.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let now = Instant::now();
        if let Some(Known::Names(names)) = self.valid(dir, epoch, now) {
            return Some(names);
        }
        let names = list().filter(|n| n.len() <= MAX_NAMES)?;
        let names = Arc::new(names.into_iter().collect::<HashSet<_, FastHash>>());
        self.learn(dir, epoch, changes, now, Known::Names(names.clone()));
        Some(names)
    }
}

/// The tree's write lock. A writer says what it is about to change with
/// [`WriteTree::changing`] (what is known of those directories is forgotten at once and again
/// when the guard drops); a writer that names nothing has everything forgotten, from the start.
pub(super) struct WriteTree<'a> {
    _guard: RwLockWriteGuard<'a, ()>,
    known: &'a KnownDirs,
    /// `None`: not changing yet; `Some(None)`: changing, scope unknown; `Some(Some(dirs))`:
    /// changing the listings of exactly these union directories.
    scope: Option<Option<Vec<PathBuf>>>,
}

impl<'a> WriteTree<'a> {
    /// A writer whose change is not described: everything is forgotten, now and at the end.
    pub(super) fn new(lock: &'a RwLock<()>, known: &'a KnownDirs) -> WriteTree<'a> {
        let mut g = Self::scoped(lock, known);
        g.begin(None);
        g
    }

    /// A writer that will call [`WriteTree::changing`] before it changes anything; until then
    /// its questions are answered from what is known, as a reader's are (no one else writes).
    pub(super) fn scoped(lock: &'a RwLock<()>, known: &'a KnownDirs) -> WriteTree<'a> {
        let guard = lock.write().unwrap_or_else(|p| p.into_inner());
        WriteTree {
            _guard: guard,
            known,
            scope: None,
        }
    }

    /// The change about to be made adds or removes entries (records and markers included) of
    /// the union directories `dirs` only, or creates or removes these directories themselves.
    pub(super) fn changing(&mut self, dirs: Vec<PathBuf>) {
        match &mut self.scope {
            None => self.begin(Some(dirs)),
            Some(Some(known)) => {
                self.known.forget(&dirs);
                known.extend(dirs);
            }
            Some(None) => {}
        }
    }

    fn begin(&mut self, dirs: Option<Vec<PathBuf>>) {
        self.known.writing.fetch_add(1, Ordering::SeqCst);
        match &dirs {
            Some(d) => self.known.forget(d),
            None => self.known.forget_all(),
        }
        self.scope = Some(dirs);
    }
}

impl Drop for WriteTree<'_> {
    fn drop(&mut self) {
        match self.scope.take() {
            None => {}
            Some(Some(dirs)) => {
                self.known.forget(&dirs);
                self.known.writing.fetch_sub(1, Ordering::SeqCst);
            }
            Some(None) => {
                self.known.forget_all();
                self.known.writing.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}
