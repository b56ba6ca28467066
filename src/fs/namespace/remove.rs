//! unlink and rmdir: the overlay's entry removed, and a whiteout written first wherever the
//! cache below would show the name again.

use std::ffi::OsStr;
use std::fs;

use super::resolve::Found;
use super::*;

impl Namespace {
    pub fn unlink(&self, parent: u64, name: &OsStr) -> NsResult<()> {
        let mut g = self.write_tree_scoped();
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        let found = self.find(&dir, ro, name)?;
        match found {
            Found::Dir { .. } => return Err(NsError::IsADirectory),
            Found::Status => return Err(NsError::ReadOnly),
            _ if ro => return Err(NsError::ReadOnly),
            _ => {}
        }
        g.changing(self.entry_scope(&dir, name));
        // The whiteout first: a crash in between leaves the file, never the older cache copy.
        if self.lower_default(&dir, name).is_some() {
            self.ensure_upper_dir(&dir)?;
            self.overlay.add_whiteout(&dir, name)?;
        }
        if let Found::Upper(_) = found {
            let path = self.overlay.path(dir.join(name));
            self.keep_victim(&found, &path);
            fs::remove_file(path)?;
        }
        self.overlay.remove_ref(&dir, name)?;
        self.retire(parent, name, &found);
        self.shard_changed(parent, name);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> NsResult<()> {
        let _g = self.write_tree();
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        let found = self.find(&dir, ro, name)?;
        if !matches!(found, Found::Dir { .. }) {
            return Err(NsError::NotADirectory);
        }
        if ro {
            return Err(NsError::ReadOnly);
        }
        let child = dir.join(name);
        if !self.list_names(&child)?.is_empty() {
            return Err(NsError::NotEmpty);
        }
        if self.lower_default(&dir, name).is_some() {
            self.ensure_upper_dir(&dir)?;
            self.overlay.add_whiteout(&dir, name)?;
        }
        let upper = self.overlay.path(&child);
        if fs::symlink_metadata(&upper).is_ok_and(|m| m.is_dir()) {
            // Empty as shown: only format records remain in it.
            fs::remove_dir_all(&upper)?;
        }
        self.overlay.remove_ref(&dir, name)?;
        self.retire(parent, name, &found);
        Ok(())
    }
}
