//! rename: overlay entries move; what lives in the cache moves as a redirect record, never a
//! copy (so never EXDEV); whiteouts hide what the cache shows at the old name.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;

use super::inodes::upper_ident;
use super::resolve::Found;
use super::*;

impl Namespace {
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> NsResult<()> {
        if flags & (libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT) != 0 {
            return Err(NsError::Invalid);
        }
        let src_generated = {
            let _g = self.read_tree();
            let (_, ro) = self.dir_node(parent)?;
            let dir = self.path_of(parent)?;
            match self.find(&dir, ro, name)? {
                Found::Generated(b) => {
                    Some(self.node_for(parent, name, Found::Generated(b), false))
                }
                _ => None,
            }
        };
        if let Some(node) = src_generated {
            // Its content depends on where it is: it moves as an ordinary file.
            self.copy_up(&node)?;
        }
        let _g = self.write_tree();
        let (_, ro1) = self.dir_node(parent)?;
        let (_, ro2) = self.dir_node(new_parent)?;
        let dir1 = self.path_of(parent)?;
        let dir2 = self.path_of(new_parent)?;
        let src = self.find(&dir1, ro1, name)?;
        if matches!(src, Found::Status) || ro1 || ro2 {
            return Err(NsError::ReadOnly);
        }
        check_name(new_name)?;
        let dst = match self.find(&dir2, ro2, new_name) {
            Ok(f) => Some(f),
            Err(NsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let src_child = dir1.join(name);
        let dst_child = dir2.join(new_name);
        if src_child == dst_child {
            return Ok(());
        }
        let src_is_dir = matches!(src, Found::Dir { .. });
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(NsError::Exists);
            }
            let dst_is_dir = matches!(d, Found::Dir { .. });
            match (src_is_dir, dst_is_dir) {
                (true, false) => return Err(NsError::NotADirectory),
                (false, true) => return Err(NsError::IsADirectory),
                (true, true) if !self.list_names(&dst_child)?.is_empty() => {
                    return Err(NsError::NotEmpty)
                }
                _ => {}
            }
            if matches!(d, Found::Status) {
                return Err(NsError::ReadOnly);
            }
            if let (Found::Upper(a), Found::Upper(b)) = (&src, d) {
                if a.dev() == b.dev() && a.ino() == b.ino() {
                    return Ok(()); // two links of one file: POSIX says do nothing
                }
            }
        }
        // Into itself (`Path::starts_with` compares whole components).
        if src_is_dir && dst_child.starts_with(&src_child) {
            return Err(NsError::Invalid);
        }
        // What the source shows from the cache (moved as a redirect, never copied).
        let src_lower = match &src {
            Found::Dir { .. } => self.lower_dir(&src_child).map(|(l, _)| l),
            Found::Lower { .. } => self.lower_path(&dir1, name).map(|(l, _)| l),
            _ => None,
        };
        let src_upper = self.overlay.path(&src_child);
        let dst_upper = self.overlay.path(&dst_child);
        let src_has_upper = fs::symlink_metadata(&src_upper).is_ok();
        self.ensure_upper_dir(&dir2)?;
        if let Some(Found::Dir { .. }) = &dst {
            if fs::symlink_metadata(&dst_upper).is_ok_and(|m| m.is_dir()) {
                fs::remove_dir_all(&dst_upper)?;
            }
        }
        if let Some(d) = &dst {
            self.keep_victim(d, &dst_upper);
        }
        if src_has_upper {
            fs::rename(&src_upper, &dst_upper)?;
        } else if let Some(Found::Upper(_)) = &dst {
            fs::remove_file(&dst_upper)?;
        }
        let dst_default = self.lower_default(&dir2, new_name);
        self.overlay.remove_ref(&dir2, new_name)?;
        if let Some(l) = &src_lower {
            if dst_default.as_ref() != Some(l) {
                self.overlay.set_ref(&dir2, new_name, l)?;
            }
        } else if src_is_dir && dst_default.is_some() {
            self.overlay.set_opaque(&dst_child)?;
        }
        self.overlay.remove_whiteout(&dir2, new_name)?;
        self.overlay.remove_ref(&dir1, name)?;
        if self.lower_default(&dir1, name).is_some() {
            self.ensure_upper_dir(&dir1)?;
            self.overlay.add_whiteout(&dir1, name)?;
        }
        // The tables follow the move.
        if let Some(d) = &dst {
            self.retire(new_parent, new_name, d);
        }
        let from = (parent, name.to_os_string());
        let to = (new_parent, new_name.to_os_string());
        let moved_ident = match &src {
            Found::Dir { .. } => Some((
                Ident::Dir(parent, name.to_os_string()),
                Ident::Dir(new_parent, new_name.to_os_string()),
            )),
            Found::Lower { node, .. } => Some((
                Ident::Lower(parent, name.to_os_string(), node.clone()),
                Ident::Lower(new_parent, new_name.to_os_string(), node.clone()),
            )),
            Found::Upper(m) => {
                if let Some(ino) = self.ids.get(&upper_ident(m)).map(|i| *i) {
                    if let Ok(node) = self.node(ino) {
                        let mut places = lock(&node.places);
                        places.retain(|p| *p != from);
                        places.insert(0, to.clone());
                    }
                }
                None
            }
            _ => None,
        };
        self.shard_changed(parent, name);
        self.shard_changed(new_parent, new_name);
        if let Some((old, new)) = moved_ident {
            if let Some((_, ino)) = self.ids.remove(&old) {
                if let Ok(node) = self.node(ino) {
                    *lock(&node.ident) = new.clone();
                    *lock(&node.places) = vec![to];
                }
                self.ids.insert(new, ino);
            }
        }
        Ok(())
    }
}
