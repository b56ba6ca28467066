//! Writable workspaces on a real FUSE mount: every write lands in the overlay directory (in the
//! documented on-disk format), the cache's full-tree fingerprint never changes — also for write
//! paths aimed at cache files held open read-only with passthrough — pinned revisions stay
//! read-only, the union index follows the overlay's shards, everything survives a remount, and
//! a daemon killed with -9 mid copy-up or mid write leaves no partial copy visible.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::mount::{fuse_available, MountGuard};
use common::{tree_state, Fixture};
use mlxk_fs::store::{WeightIndex, INDEX_FILE, SENTINEL_FILE};

fn mount(fx: &Fixture, extra: &[&str]) -> MountGuard {
    MountGuard::new(&fx.cache, &fx.path("mnt"), &fx.path("state"), extra)
}

fn overlay(fx: &Fixture, rel: &str) -> std::path::PathBuf {
    fx.path("state/overlay-mnt").join(rel)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn xattr_errno(r: isize) -> Result<usize, i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r as usize)
    }
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(xattr_errno(r)?);
    Ok(buf)
}

fn listxattr(p: &Path) -> Result<usize, i32> {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let mut buf = vec![0u8; 256];
    xattr_errno(unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// Without `--xattrs` the mount has no extended attributes (the kernel stops asking after the
/// first ENOSYS, which is the point): every call says EOPNOTSUPP, a cache file is not copied up
/// for one, and the status file's invalidation request (a setxattr) still goes through. With
/// `--xattrs` the same overlay file takes and keeps one.
#[test]
fn extended_attributes_are_off_unless_asked_for_and_the_invalidation_request_still_works() {
    if !fuse_available("extended_attributes_are_off_unless_asked_for") {
        return;
    }
    let fx = Fixture::new();
    let before = tree_state(&fx.cache);
    let m = mount(&fx, &["--no-passthrough"]);
    fs::create_dir_all(m.path("myorg/ws")).unwrap();
    let file = m.path("myorg/ws/notes.txt");
    fs::write(&file, b"n").unwrap();
    let cached = m.path("mlx-community/Llama-tiny-f16/config.json");
    for p in [&file, &cached] {
        let set = setxattr(p, "user.k", b"v").map_err(|e| e.raw_os_error());
        assert_eq!(set, Err(Some(libc::EOPNOTSUPP)), "{}", p.display());
        assert_eq!(getxattr(p, "user.k"), Err(libc::EOPNOTSUPP));
        assert_eq!(getxattr(p, "security.selinux"), Err(libc::EOPNOTSUPP));
        assert_eq!(listxattr(p), Err(libc::EOPNOTSUPP));
    }
    let overlay = fx.path("state").join("overlay-mnt");
    assert!(
        !overlay
            .join("mlx-community/Llama-tiny-f16/config.json")
            .exists(),
        "a refused setxattr copied the file up"
    );
    mlxk_fs::store::mounts::ask_to_invalidate(&m.mountpoint, "myorg/ws").unwrap();
    assert_eq!(m.record["xattrs"], false, "{}", m.record);
    drop(m);

    let m = mount(&fx, &["--no-passthrough", "--xattrs"]);
    assert_eq!(m.record["xattrs"], true, "{}", m.record);
    let file = m.path("myorg/ws/notes.txt");
    setxattr(&file, "user.k", b"v").unwrap();
    assert_eq!(getxattr(&file, "user.k"), Ok(b"v".to_vec()));
    assert!(listxattr(&file).unwrap() >= "user.k\0".len());
    mlxk_fs::store::mounts::ask_to_invalidate(&m.mountpoint, "myorg/ws").unwrap();
    drop(m);
    assert_eq!(before, tree_state(&fx.cache), "the cache changed");
}

#[test]
fn edits_deletes_renames_and_new_workspaces_land_in_the_overlay_and_survive_a_remount() {
    if !fuse_available("edits_deletes_renames_and_new_workspaces_land_in_the_overlay") {
        return;
    }
    let fx = Fixture::new();
    let before = tree_state(&fx.cache);
    let mut m = mount(&fx, &[]);
    let model = m.path("mlx-community/Llama-tiny-f16");
    let original_config = fs::read(model.join("config.json")).unwrap();

    // vi-style edit: write a new file, rename it over the original.
    fs::write(model.join(".config.json.swp"), b"{\"edited\": true}\n").unwrap();
    fs::rename(model.join(".config.json.swp"), model.join("config.json")).unwrap();
    // In-place edit of another cache file.
    let mut f = OpenOptions::new()
        .append(true)
        .open(model.join("generation_config.json"))
        .unwrap();
    f.write_all(b"\n").unwrap();
    drop(f);
    fs::remove_file(model.join("README.md")).unwrap();
    fs::rename(model.join("tokenizer.json"), model.join("tokenizer.bak")).unwrap();
    // A workspace only the overlay holds, in a new org.
    fs::create_dir_all(m.path("myorg/new-model/sub")).unwrap();
    for name in ["config.json", "model-00001-of-00002.safetensors"] {
        fs::copy(
            m.path(&format!(
                "mlx-community/Llama-tiny-bf16/{}",
                name.replace("-00001-of-00002", "")
            )),
            m.path(&format!("myorg/new-model/{name}")),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("config.json", m.path("myorg/new-model/link")).unwrap();
    // A cached model renamed as a whole: a redirect, nothing copied.
    fs::rename(
        m.path("mlx-community/Llama-tiny-f32"),
        m.path("mlx-community/Llama-tiny-f32-old"),
    )
    .unwrap();

    let check = |m: &MountGuard| {
        let model = m.path("mlx-community/Llama-tiny-f16");
        assert_eq!(
            fs::read(model.join("config.json")).unwrap(),
            b"{\"edited\": true}\n"
        );
        assert!(!model.join("README.md").exists());
        assert!(!model.join("tokenizer.json").exists());
        assert!(model.join("tokenizer.bak").is_file());
        assert!(names(&model).contains(&"tokenizer.bak".to_string()));
        assert!(!names(&model).iter().any(|n| n.starts_with(".wh.")));
        assert!(names(&m.path("")).contains(&"myorg".to_string()));
        assert_eq!(
            names(&m.path("myorg/new-model")),
            vec![
                "config.json",
                "link",
                "model-00001-of-00002.safetensors",
                "sub"
            ]
        );
        assert_eq!(
            fs::read_link(m.path("myorg/new-model/link")).unwrap(),
            Path::new("config.json")
        );
        let moved = names(&m.path("mlx-community/Llama-tiny-f32-old"));
        assert!(moved.contains(&"config.json".to_string()), "{moved:?}");
        assert!(moved.contains(&SENTINEL_FILE.to_string()), "{moved:?}");
        assert!(!m.path("mlx-community/Llama-tiny-f32").exists());
    };
    check(&m);
    // Where it all lives: the overlay, in its documented format.
    let ov = overlay(&fx, "mlx-community/Llama-tiny-f16");
    assert_eq!(
        fs::read(ov.join("config.json")).unwrap(),
        b"{\"edited\": true}\n"
    );
    assert!(ov.join(".wh.README.md").is_file());
    assert!(ov.join(".wh.tokenizer.json").is_file());
    assert_eq!(
        fs::read_to_string(ov.join(".wh..wh..ref.tokenizer.bak")).unwrap(),
        "mlx-community/Llama-tiny-f16/tokenizer.json\n"
    );
    assert_eq!(
        fs::read_to_string(overlay(
            &fx,
            "mlx-community/.wh..wh..ref.Llama-tiny-f32-old"
        ))
        .unwrap(),
        "mlx-community/Llama-tiny-f32\n"
    );
    assert!(overlay(&fx, "myorg/new-model/config.json").is_file());
    // The cache still has the original.
    let snap = common::snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-f16");
    assert_eq!(fs::read(snap.join("config.json")).unwrap(), original_config);

    m.stop(nix::sys::signal::Signal::SIGTERM);
    drop(m);
    let m = mount(&fx, &[]);
    check(&m);
    drop(m);
    assert_eq!(before, tree_state(&fx.cache), "the cache changed");
}

/// Names are bytes at the FUSE boundary, as on any Linux filesystem: a name that is not UTF-8
/// is created, listed, read, renamed (a cache file too: a redirect record), deleted and kept
/// across a remount, stored under the same bytes in the overlay; names the overlay format
/// reserves stay refused and hidden whatever follows the prefix.
#[test]
fn names_that_are_not_utf8_work_as_on_any_linux_filesystem() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    if !fuse_available("names_that_are_not_utf8_work_as_on_any_linux_filesystem") {
        return;
    }
    let fx = Fixture::new();
    let before = tree_state(&fx.cache);
    let mut m = mount(&fx, &[]);
    let model = m.path("mlx-community/Llama-tiny-f16");
    let latin1 = OsStr::from_bytes(b"caf\xe9.txt");
    let moved = OsStr::from_bytes(b"\xff\xfe-config.json");
    let dir = OsStr::from_bytes(b"d\x80ir");
    fs::write(model.join(latin1), b"latin-1 name").unwrap();
    fs::rename(model.join("config.json"), model.join(moved)).unwrap();
    fs::create_dir(model.join(dir)).unwrap();
    fs::write(model.join(dir).join(latin1), b"nested").unwrap();
    fs::write(model.join("gone"), b"x").unwrap();
    fs::rename(model.join("gone"), model.join(dir).join("gone\u{fffd}")).unwrap();
    let reserved = OsStr::from_bytes(b".wh.\xe9");
    assert_eq!(
        fs::write(model.join(reserved), b"no")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    let config = fs::read(
        common::snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-f16").join("config.json"),
    )
    .unwrap();
    let check = |m: &MountGuard| {
        let model = m.path("mlx-community/Llama-tiny-f16");
        let listed: Vec<std::ffi::OsString> = fs::read_dir(&model)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        for name in [latin1, moved, dir] {
            assert!(
                listed.iter().any(|n| n == name),
                "{name:?} not in {listed:?}"
            );
        }
        assert!(!listed.iter().any(|n| n == "config.json"));
        assert!(!listed.iter().any(|n| n.as_bytes().starts_with(b".wh.")));
        assert_eq!(fs::read(model.join(latin1)).unwrap(), b"latin-1 name");
        assert_eq!(fs::read(model.join(moved)).unwrap(), config);
        assert_eq!(fs::read(model.join(dir).join(latin1)).unwrap(), b"nested");
        assert!(model.join(dir).join("gone\u{fffd}").is_file());
        assert!(fs::symlink_metadata(model.join(reserved)).is_err());
    };
    check(&m);
    // The overlay holds the same bytes, in its documented format.
    let ov = overlay(&fx, "mlx-community/Llama-tiny-f16");
    assert_eq!(fs::read(ov.join(latin1)).unwrap(), b"latin-1 name");
    let mut record = b".wh..wh..ref.".to_vec();
    record.extend_from_slice(moved.as_bytes());
    assert_eq!(
        fs::read_to_string(ov.join(OsStr::from_bytes(&record))).unwrap(),
        "mlx-community/Llama-tiny-f16/config.json\n"
    );
    m.stop(nix::sys::signal::Signal::SIGTERM);
    drop(m);
    let m = mount(&fx, &[]);
    check(&m);
    // And they go away like any name.
    let model = m.path("mlx-community/Llama-tiny-f16");
    fs::remove_file(model.join(latin1)).unwrap();
    fs::remove_dir_all(model.join(dir)).unwrap();
    fs::rename(model.join(moved), model.join("config.json")).unwrap();
    assert_eq!(fs::read(model.join("config.json")).unwrap(), config);
    assert!(!model.join(latin1).exists() && !model.join(dir).exists());
    drop(m);
    assert_eq!(before, tree_state(&fx.cache), "the cache changed");
}

/// Every write path aimed at cache files that are open read-only (with passthrough where the
/// kernel has it) succeeds by copying up; the open readers keep the cache's bytes; nothing
/// reaches the cache.
fn write_paths_copy_up(extra: &[&str]) {
    let fx = Fixture::new();
    let before = tree_state(&fx.cache);
    // With extended attributes served: setting one on a cache file is a write path too.
    let m = mount(&fx, &[extra, &["--xattrs"]].concat());
    let models = [
        "mlx-community/Llama-tiny-f16",
        "mlx-community/Llama-tiny-bf16",
        "mlx-community/Llama-tiny-f32",
        "mlx-community/Llama-tiny-4bit",
        "meta-test/Llama-tiny",
        "test-org/Multi-snap",
    ];
    // Readers held open on every shard during the whole battery.
    let mut held = Vec::new();
    for model in &models {
        for name in names(&m.path(model)) {
            if name.ends_with(".safetensors") {
                let p = m.path(&format!("{model}/{name}"));
                let bytes = fs::read(&p).unwrap();
                held.push((p.clone(), File::open(&p).unwrap(), bytes));
            }
        }
    }
    let combos: [(&str, OpenOptions); 6] = [
        ("O_WRONLY", OpenOptions::new().write(true).clone()),
        ("O_RDWR", OpenOptions::new().read(true).write(true).clone()),
        ("O_APPEND", OpenOptions::new().append(true).clone()),
        (
            "O_TRUNC",
            OpenOptions::new().write(true).truncate(true).clone(),
        ),
        (
            "O_RDONLY|O_TRUNC",
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_TRUNC)
                .clone(),
        ),
        (
            "O_CREAT",
            OpenOptions::new().write(true).create(true).clone(),
        ),
    ];
    // One copy-up per cache or virtual file written below, no more.
    let mut expected_copy_ups = 8;
    for ((what, opts), model) in combos.iter().zip(models) {
        // The index first: once the shards are scribbled on, no index can be computed.
        let mut targets: Vec<String> = vec![];
        if m.path(&format!("{model}/{INDEX_FILE}")).exists() {
            targets.push(INDEX_FILE.into());
        }
        targets.extend(["config.json".into(), SENTINEL_FILE.into()]);
        targets.extend(
            names(&m.path(model))
                .into_iter()
                .filter(|n| n.ends_with(".safetensors")),
        );
        expected_copy_ups += targets.len();
        for name in targets {
            let p = m.path(&format!("{model}/{name}"));
            let old = fs::read(&p).unwrap_or_else(|e| panic!("{what} {}: {e}", p.display()));
            let mut f = opts
                .open(&p)
                .unwrap_or_else(|e| panic!("{what} {}: {e}", p.display()));
            let writable = *what != "O_RDONLY|O_TRUNC";
            if writable {
                f.write_all(b"W").unwrap();
            }
            drop(f);
            let now = fs::read(&p).unwrap();
            let expected: Vec<u8> = match *what {
                "O_APPEND" => [old.as_slice(), b"W"].concat(),
                "O_TRUNC" => b"W".to_vec(),
                "O_RDONLY|O_TRUNC" => vec![],
                _ => [b"W".as_slice(), &old[1.min(old.len())..]].concat(),
            };
            assert!(
                now == expected,
                "{what} {}: unexpected content",
                p.display()
            );
            assert!(
                overlay(&fx, &format!("{model}/{name}")).is_file(),
                "{what} {name}: not in the overlay"
            );
        }
    }
    // Path-based changes of cache files: each copies up.
    let dir = m.path("mlx-community/Qwen2.5-VL-tiny-4bit");
    let files: Vec<String> = names(&dir)
        .into_iter()
        .filter(|n| !n.starts_with('.') && n != INDEX_FILE && n != "config.json")
        .collect();
    assert!(files.len() >= 6, "{files:?}");
    let f = |i: usize| dir.join(&files[i]);
    nix::unistd::truncate(&f(0), 3).unwrap();
    assert_eq!(fs::metadata(f(0)).unwrap().len(), 3);
    fs::set_permissions(f(1), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(f(1)).unwrap().mode() & 0o777, 0o600);
    std::os::unix::fs::chown(f(2), Some(1), Some(1)).unwrap();
    assert_eq!(fs::metadata(f(2)).unwrap().uid(), 1);
    File::open(f(3))
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    assert_eq!(fs::metadata(f(3)).unwrap().mtime(), 0);
    setxattr(&f(4), "user.test", b"v").unwrap();
    // mmap MAP_SHARED + PROT_WRITE (the open copies up; the map writes the copy).
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(f(5))
        .unwrap();
    let mut map = unsafe { memmap2::MmapMut::map_mut(&rw) }.unwrap();
    map[0] ^= 0xff;
    map.flush().unwrap();
    drop(map);
    nix::fcntl::fallocate(&rw, nix::fcntl::FallocateFlags::empty(), 0, 1 << 20).unwrap();
    drop(rw);
    assert_eq!(fs::metadata(f(5)).unwrap().len(), 1 << 20);
    // copy_file_range into a cache file.
    let outside = fx.path("out.bin");
    fs::write(&outside, b"data").unwrap();
    fs::copy(&outside, dir.join("config.json")).unwrap();
    assert_eq!(fs::read(dir.join("config.json")).unwrap(), b"data");
    // Hard link of a cache file, then unlink and rename of others.
    let gguf = m.path("TheBloke/tiny-GGUF");
    let g = names(&gguf);
    let first = gguf.join(g.iter().find(|n| !n.starts_with('.')).unwrap());
    fs::hard_link(&first, gguf.join("hard")).unwrap();
    assert_eq!(fs::metadata(gguf.join("hard")).unwrap().nlink(), 2);
    assert_eq!(
        fs::read(gguf.join("hard")).unwrap(),
        fs::read(&first).unwrap()
    );

    for (p, reader, bytes) in &held {
        let mut again = vec![0u8; bytes.len()];
        reader
            .read_exact_at(&mut again, 0)
            .unwrap_or_else(|e| panic!("{}: the held reader fails: {e}", p.display()));
        assert!(
            again == *bytes,
            "{}: the held reader's bytes changed",
            p.display()
        );
    }
    let c = m.counters();
    assert_eq!(
        c["copy_ups"].as_u64().unwrap(),
        expected_copy_ups as u64,
        "{c}"
    );
    // Defence in depth (root): the daemon sees the cache read-only, in its own namespace.
    if nix::unistd::geteuid().is_root() {
        assert_eq!(m.record["cache_read_only"], true);
        let info = fs::read_to_string(format!("/proc/{}/mountinfo", m.pid())).unwrap();
        let cache = fs::canonicalize(&fx.cache).unwrap();
        let line = info
            .lines()
            .rev()
            .find(|l| l.split(' ').nth(4) == cache.to_str())
            .unwrap_or_else(|| panic!("no bind mount of the cache in the daemon's namespace"));
        assert!(
            line.split(' ')
                .nth(5)
                .unwrap()
                .split(',')
                .any(|o| o == "ro"),
            "{line}"
        );
        assert!(
            !info.contains(m.mountpoint.to_str().unwrap()),
            "the daemon keeps no copy of the FUSE mount"
        );
    }
    drop(held);
    drop(m);
    assert_eq!(before, tree_state(&fx.cache), "the cache changed");
}

#[test]
fn write_paths_on_open_cache_files_copy_up_with_passthrough() {
    if fuse_available("write_paths_on_open_cache_files_copy_up_with_passthrough") {
        write_paths_copy_up(&[]);
    }
}

#[test]
fn write_paths_on_open_cache_files_copy_up_without_passthrough() {
    if fuse_available("write_paths_on_open_cache_files_copy_up_without_passthrough") {
        write_paths_copy_up(&["--no-passthrough"]);
    }
}

#[test]
fn pinned_revisions_and_the_status_file_stay_read_only() {
    if !fuse_available("pinned_revisions_and_the_status_file_stay_read_only") {
        return;
    }
    let fx = Fixture::new();
    let m = mount(&fx, &[]);
    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.err().unwrap_or_else(|| panic!("{what} succeeded"));
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    let pinned = m.path("test-org/Multi-snap@dev");
    assert!(pinned.join("config.json").is_file());
    erofs(
        "write a pinned file",
        OpenOptions::new()
            .write(true)
            .open(pinned.join("config.json"))
            .map(drop),
    );
    erofs(
        "create in a pinned dir",
        File::create(pinned.join("x")).map(drop),
    );
    erofs("mkdir in a pinned dir", fs::create_dir(pinned.join("d")));
    erofs(
        "unlink a pinned file",
        fs::remove_file(pinned.join("config.json")),
    );
    erofs(
        "write the status file",
        OpenOptions::new()
            .write(true)
            .open(m.path(".mlxk-fs-status"))
            .map(drop),
    );
    let reserved = File::create(m.path("test-org/Multi-snap/.wh.x")).unwrap_err();
    assert_eq!(reserved.raw_os_error(), Some(libc::EINVAL), "{reserved}");
    // Special files live in the overlay like any other (the mount is nodev).
    nix::unistd::mkfifo(
        &m.path("test-org/Multi-snap/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(m.path("test-org/Multi-snap/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(
        fs::symlink_metadata(overlay(&fx, "test-org/Multi-snap/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(m.counters()["write_attempts_refused"].as_u64().unwrap() >= 5);
}

#[test]
fn the_index_follows_shards_changed_in_the_overlay() {
    if !fuse_available("the_index_follows_shards_changed_in_the_overlay") {
        return;
    }
    let fx = Fixture::new();
    let m = mount(&fx, &[]);
    let model = m.path("mlx-community/Llama-tiny-f16");
    let index = |m: &MountGuard| -> WeightIndex {
        let p = m.path("mlx-community/Llama-tiny-f16").join(INDEX_FILE);
        WeightIndex::parse(&fs::read(p).unwrap()).unwrap()
    };
    let before = index(&m);
    assert_eq!(before.shard_names().len(), 2);
    // Merge: the second shard's tensors move into a new single file written in the overlay.
    let single = fs::read(m.path("mlx-community/Llama-tiny-bf16/model.safetensors")).unwrap();
    fs::remove_file(model.join("model-00001-of-00002.safetensors")).unwrap();
    fs::remove_file(model.join("model-00002-of-00002.safetensors")).unwrap();
    fs::write(model.join("model.safetensors"), &single).unwrap();
    let after = index(&m);
    assert_eq!(after.shard_names(), vec!["model.safetensors"]);
    assert_ne!(before.total_size, after.total_size);
    // A user-written index wins over the computed one.
    fs::write(model.join(INDEX_FILE), b"{\"mine\": true}\n").unwrap();
    assert_eq!(
        fs::read(model.join(INDEX_FILE)).unwrap(),
        b"{\"mine\": true}\n"
    );
    // Deleting a virtual file hides it.
    fs::remove_file(model.join(SENTINEL_FILE)).unwrap();
    assert!(!model.join(SENTINEL_FILE).exists());
    assert!(overlay(&fx, "mlx-community/Llama-tiny-f16/.wh..mlxk_workspace.json").exists());
}

/// A daemon killed in the middle of a large copy-up and of a large write: after a fresh mount no
/// partial copy is visible, completed writes are intact, no temp file shows, the cache is
/// unchanged.
#[test]
fn kill_9_mid_copy_up_and_mid_write_leaves_no_partial_file() {
    if !fuse_available("kill_9_mid_copy_up_and_mid_write_leaves_no_partial_file") {
        return;
    }
    let fx = Fixture::new();
    let hub = mlxk_fs::testkit::FixtureCache::create(&fx.cache).unwrap();
    hub.add_sparse_model("big/model", 1, 2 << 30).unwrap();
    hub.set_ref(
        "big/model",
        "main",
        &mlxk_fs::testkit::fake_sha("big/model@sparse"),
    )
    .unwrap();
    let before = tree_state(&fx.cache);
    let shard = "big/model/model.safetensors";

    let mut m = mount(&fx, &[]);
    // A completed write, then a large one cut off.
    let done: Vec<u8> = (0..(8 << 20)).map(|i| (i % 251) as u8).collect();
    let mut f = File::create(m.path("big/model/done.bin")).unwrap();
    f.write_all(&done).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let writer_path = m.path("big/model/partial.bin");
    // Bounded: with passthrough a write goes to the overlay file itself and can outlive the
    // daemon.
    let writer = std::thread::spawn(move || {
        let Ok(mut f) = File::create(writer_path) else {
            return;
        };
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..512 {
            if f.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    // The copy-up of a 2 GiB shard, cut off.
    let opener_path = m.path(shard);
    let opener = std::thread::spawn(move || {
        let _ = OpenOptions::new().read(true).write(true).open(opener_path);
    });
    let tmp = overlay(&fx, ".wh..wh..tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copying = fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > (64 << 20)))
            })
            .unwrap_or(false);
        let written = fs::metadata(overlay(&fx, "big/model/partial.bin")).map_or(0, |m| m.len());
        if copying && written > (16 << 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copy-up and the write never got going"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = nix::unistd::Pid::from_raw(m.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = m.child.take().unwrap().wait();
    let _ = opener.join();
    let _ = writer.join();
    let _ = nix::mount::umount2(&m.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    drop(m);

    let m = mount(&fx, &[]);
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "temp files survived"
    );
    assert!(
        !overlay(&fx, shard).exists(),
        "a partial copy-up is in place"
    );
    let blob = common::snapshot_dir(&fx.cache, "big/model").join("model.safetensors");
    assert_eq!(
        fs::metadata(m.path(shard)).unwrap().len(),
        fs::metadata(&blob).unwrap().len()
    );
    let mut head = vec![0u8; 4096];
    File::open(m.path(shard))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    let mut want = vec![0u8; 4096];
    File::open(&blob).unwrap().read_exact(&mut want).unwrap();
    assert!(head == want, "the shard no longer reads as the cache's");
    assert_eq!(fs::read(m.path("big/model/done.bin")).unwrap(), done);
    assert!(!names(&m.path("big/model"))
        .iter()
        .any(|n| n.starts_with(".wh.")));
    drop(m);
    assert_eq!(before, tree_state(&fx.cache), "the cache changed");
}

#[test]
fn overlay_ls_diff_and_reset_show_and_drop_what_the_overlay_holds() {
    if !fuse_available("overlay_ls_diff_and_reset_show_and_drop_what_the_overlay_holds") {
        return;
    }
    let fx = Fixture::new();
    let m = mount(&fx, &[]);
    let state = fx.path("state");
    let cli = |args: &[&str]| {
        let out = common::mount::mlxk_fs(&state, &[&["--json"], args].concat());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", common::stderr(&out)));
        (out.status.code(), v)
    };
    let model = m.path("mlx-community/Llama-tiny-f16");
    let original = fs::read(model.join("config.json")).unwrap();
    fs::write(model.join("config.json"), b"{}").unwrap();
    fs::remove_file(model.join("README.md")).unwrap();
    fs::rename(model.join("tokenizer.json"), model.join("tok.bak")).unwrap();
    fs::rename(
        m.path("mlx-community/Llama-tiny-f32"),
        m.path("mlx-community/f32-old"),
    )
    .unwrap();

    let (code, ls) = cli(&["overlay", "ls", m.path("mlx-community").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{ls}");
    let models: Vec<&str> = ls["data"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        models,
        vec![
            "mlx-community/Llama-tiny-f16",
            "mlx-community/Llama-tiny-f32",
            "mlx-community/f32-old"
        ]
    );
    assert_eq!(ls["data"]["models"][0]["written"], 1);
    assert_eq!(ls["data"]["models"][1]["state"], "deleted");

    let (code, diff) = cli(&["overlay", "diff", model.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{diff}");
    let changes: Vec<(String, String)> = diff["data"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("README.md", "deleted"),
        ("config.json", "written"),
        ("tok.bak", "moved"),
        ("tokenizer.json", "deleted"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(changes, want);

    let (code, reset) = cli(&["overlay", "reset", model.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{reset}");
    assert_eq!(reset["data"]["changes_dropped"], 4);
    // The mount shows the cache's model again, at once.
    assert_eq!(fs::read(model.join("config.json")).unwrap(), original);
    assert!(model.join("README.md").exists());
    assert!(model.join("tokenizer.json").exists());
    assert!(!model.join("tok.bak").exists());
    let (_, diff) = cli(&["overlay", "diff", model.to_str().unwrap()]);
    assert_eq!(diff["data"]["changes"].as_array().unwrap().len(), 0);
    // A path outside any mount is refused with the way to name a model.
    let (code, err) = cli(&["overlay", "diff", "/nonexistent/x"]);
    assert_eq!(code, Some(1));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("org/name"),
        "{err}"
    );
}

/// Several writers and readers at once: threads racing to copy up the same cache files (one
/// copy-up each, every open succeeds), writers in their own workspaces, readers of cache
/// shards; then every file holds what its writer wrote and the cache is unchanged.
#[test]
fn concurrent_writers_readers_and_racing_copy_ups() {
    if !fuse_available("concurrent_writers_readers_and_racing_copy_ups") {
        return;
    }
    let fx = Fixture::new();
    let before = tree_state(&fx.cache);
    let m = mount(&fx, &[]);
    let model = m.path("mlx-community/Llama-tiny-bf16");
    let shard = model.join("model.safetensors");
    let shard_bytes = fs::read(&shard).unwrap();
    let targets: Vec<std::path::PathBuf> =
        ["config.json", "tokenizer.json", "tokenizer_config.json"]
            .iter()
            .map(|n| model.join(n))
            .collect();
    let originals: Vec<Vec<u8>> = targets.iter().map(|p| fs::read(p).unwrap()).collect();
    std::thread::scope(|s| {
        // Eight threads race to open each cache file for writing (each appends its own byte).
        for t in 0..8u8 {
            let targets = &targets;
            s.spawn(move || {
                for p in targets {
                    let mut f = OpenOptions::new()
                        .append(true)
                        .open(p)
                        .unwrap_or_else(|e| panic!("thread {t}: {}: {e}", p.display()));
                    f.write_all(&[b'a' + t]).unwrap();
                }
            });
        }
        // Writers, each in its own new workspace.
        for t in 0..3 {
            let root = m.path(&format!("myorg/ws{t}"));
            s.spawn(move || {
                fs::create_dir_all(&root).unwrap();
                for i in 0..100 {
                    let p = root.join(format!("f{i}"));
                    fs::write(&p, format!("{t}:{i}").repeat(100)).unwrap();
                    if i % 3 == 0 {
                        fs::rename(&p, root.join(format!("r{i}"))).unwrap();
                    }
                }
            });
        }
        // Readers of a cache shard, through fresh opens.
        for _ in 0..2 {
            let (shard, want) = (&shard, &shard_bytes);
            s.spawn(move || {
                for _ in 0..50 {
                    assert!(fs::read(shard).unwrap() == *want, "a shard read changed");
                }
            });
        }
    });
    for (p, original) in targets.iter().zip(&originals) {
        let now = fs::read(p).unwrap();
        assert_eq!(now.len(), original.len() + 8, "{}", p.display());
        assert_eq!(&now[..original.len()], &original[..]);
        let mut tail: Vec<u8> = now[original.len()..].to_vec();
        tail.sort();
        assert_eq!(tail, b"abcdefgh");
    }
    assert_eq!(m.counters()["copy_ups"], 3, "one copy-up per file");
    for t in 0..3 {
        let names = names(&m.path(&format!("myorg/ws{t}")));
        assert_eq!(names.len(), 100);
        for i in 0..100 {
            let name = if i % 3 == 0 {
                format!("r{i}")
            } else {
                format!("f{i}")
            };
            let p = m.path(&format!("myorg/ws{t}/{name}"));
            assert_eq!(
                fs::read(&p).unwrap(),
                format!("{t}:{i}").repeat(100).into_bytes()
            );
        }
    }
    drop(m);
    assert_eq!(before, tree_state(&fx.cache), "the cache changed");
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory stream of libc's (`opendir`), closed when dropped: a failed assertion must
/// not leave a directory of the mount open, or the mount cannot go away.
struct DirStream(*mut libc::DIR);

impl DirStream {
    fn open(dir: &Path) -> DirStream {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        let stream = unsafe { libc::opendir(c.as_ptr()) };
        assert!(
            !stream.is_null(),
            "opendir: {}",
            std::io::Error::last_os_error()
        );
        DirStream(stream)
    }

    /// The names the stream returns until its end, sorted (`.`/`..` left out).
    fn read_to_end(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        loop {
            // SAFETY: the stream is open; the entry is read before the next call.
            let name = unsafe {
                let entry = libc::readdir(self.0);
                if entry.is_null() {
                    break;
                }
                std::ffi::CStr::from_ptr((*entry).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned()
            };
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        names
    }

    fn rewind(&mut self) {
        // SAFETY: the stream is open.
        unsafe { libc::rewinddir(self.0) }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the stream is open, and closed once.
        unsafe { libc::closedir(self.0) };
    }
}

/// A directory stream lists the directory as it is at its first read — not as it was at
/// opendir: the daemon takes the listing at the first read — and again as it is then after
/// rewinddir.
#[test]
fn a_directory_stream_lists_the_directory_at_its_first_read_and_again_after_rewinddir() {
    if !fuse_available("a_directory_stream_lists_the_directory_at_its_first_read") {
        return;
    }
    let fx = Fixture::new();
    let before_cache = tree_state(&fx.cache);
    let m = mount(&fx, &["--no-passthrough"]);
    let model = m.path("mlx-community/Llama-tiny-f16");
    let before = names(&model);
    assert!(before.contains(&"README.md".to_string()), "{before:?}");
    let shown = |add: &str, gone: &[&str]| {
        let mut v: Vec<String> = before
            .iter()
            .filter(|n| !gone.contains(&n.as_str()))
            .cloned()
            .collect();
        v.push(add.to_string());
        v.sort();
        v
    };
    let (first, again) = {
        let mut stream = DirStream::open(&model);
        fs::write(model.join("added.txt"), b"x").unwrap();
        fs::remove_file(model.join("README.md")).unwrap();
        let first = stream.read_to_end();
        fs::write(model.join("later.txt"), b"y").unwrap();
        fs::remove_file(model.join("added.txt")).unwrap();
        stream.rewind();
        (first, stream.read_to_end())
    };
    assert_eq!(first, shown("added.txt", &["README.md"]), "the first read");
    assert_eq!(again, shown("later.txt", &["README.md"]), "after rewinddir");
    assert_eq!(names(&model), again);
    drop(m);
    assert_eq!(before_cache, tree_state(&fx.cache), "the cache changed");
}

/// git, rsync, cp and tar in workspaces of the mount, as users run them.
#[test]
fn ordinary_tools_just_work() {
    if !fuse_available("ordinary_tools_just_work") {
        return;
    }
    use std::process::Command;
    let fx = Fixture::new();
    let before = tree_state(&fx.cache);
    let m = mount(&fx, &[]);
    // cp -r --reflink=auto of a cached model into a new workspace, then tar of it into another.
    let src = m.path("mlx-community/Llama-tiny-f16");
    let copy = m.path("myorg/copy");
    fs::create_dir_all(m.path("myorg")).unwrap();
    run(Command::new("cp")
        .arg("-r")
        .arg("--reflink=auto")
        .arg(&src)
        .arg(&copy));
    run(Command::new("diff").arg("-r").arg(&src).arg(&copy));
    let tarball = fx.path("model.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    let untarred = m.path("myorg/untarred");
    fs::create_dir_all(&untarred).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&untarred)
        .arg("-xf")
        .arg(&tarball));
    run(Command::new("diff").arg("-r").arg(&src).arg(&untarred));
    // git init / add / commit / status in a workspace, and in a cached model's directory.
    for ws in [m.path("myorg/new-model"), src.clone()] {
        fs::create_dir_all(&ws).unwrap();
        fs::write(ws.join("notes.txt"), b"hello\n").unwrap();
        let git = |args: &[&str]| {
            run(Command::new("git")
                .arg("-C")
                .arg(&ws)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args))
        };
        git(&["init", "-q"]);
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "first"]);
        assert_eq!(git(&["status", "--porcelain"]), "", "{}", ws.display());
        fs::write(ws.join("notes.txt"), b"changed\n").unwrap();
        assert_eq!(git(&["status", "--porcelain"]).trim(), "M notes.txt");
        git(&["commit", "-q", "-am", "second"]);
        assert_eq!(git(&["log", "--oneline"]).lines().count(), 2);
        git(&["gc", "-q"]);
        git(&["fsck", "--no-progress"]);
    }
    // rsync -a of a tree with modes, a symlink and nested directories.
    let tree = fx.path("tree");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::write(tree.join("a/b/f.txt"), b"data").unwrap();
    fs::set_permissions(tree.join("a/b/f.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("b/f.txt", tree.join("a/link")).unwrap();
    if Command::new("rsync").arg("--version").output().is_ok() {
        let dst = m.path("myorg/synced");
        run(Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", tree.display()))
            .arg(&dst));
        run(Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&tree)
            .arg(&dst));
        assert_eq!(
            fs::metadata(dst.join("a/b/f.txt")).unwrap().mode() & 0o777,
            0o640
        );
        // A second run finds nothing to do.
        let again = run(Command::new("rsync")
            .arg("-ai")
            .arg(format!("{}/", tree.display()))
            .arg(&dst));
        assert_eq!(again.trim(), "", "rsync found changes the second time");
    } else {
        eprintln!("\n========== SKIP the rsync part of ordinary_tools_just_work: rsync is not installed (scripts/test.sh installs it) ==========\n");
    }
    // SEEK_DATA / SEEK_HOLE (cp and tar use them for sparse files) on a sparse overlay file.
    let sparse = m.path("myorg/new-model/sparse.bin");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&sparse)
        .unwrap();
    f.write_all_at(b"data", 1 << 20).unwrap();
    use std::os::fd::AsRawFd;
    let data = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(data, 1 << 20, "SEEK_DATA");
    assert_eq!(hole, 0, "SEEK_HOLE");
    drop(f);
    drop(m);
    assert_eq!(before, tree_state(&fx.cache), "the cache changed");
}

/// A full overlay filesystem surfaces as ENOSPC (writes and copy-ups), statfs describes it, and
/// a failed copy-up leaves neither a partial file nor a temp file.
#[test]
fn a_full_overlay_says_enospc_and_statfs_is_the_overlays() {
    if !fuse_available("a_full_overlay_says_enospc_and_statfs_is_the_overlays") {
        return;
    }
    let fx = Fixture::new();
    let small = fx.path("small");
    let Some(_tmpfs) = common::SmallTmpfs::mount(
        "a_full_overlay_says_enospc_and_statfs_is_the_overlays",
        &small,
        "1m",
    ) else {
        return;
    };
    let overlay_dir = small.join("ov");
    let m = MountGuard::new(
        &fx.cache,
        &fx.path("mnt"),
        &fx.path("state"),
        &["--overlay", overlay_dir.to_str().unwrap()],
    );
    let st = nix::sys::statvfs::statvfs(&m.mountpoint).unwrap();
    let bytes = st.blocks() * st.fragment_size();
    assert!(
        bytes <= 1 << 20,
        "statfs says {bytes} bytes, not the 1 MiB overlay"
    );
    fs::create_dir_all(m.path("myorg/big")).unwrap();
    let e = fs::write(m.path("myorg/big/file"), vec![1u8; 2 << 20]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    fs::remove_file(m.path("myorg/big/file")).unwrap();
    // The partial file's blocks come back once the kernel forgets its inode: until then the
    // daemon holds it (an O_PATH kept for opens racing the unlink, docs/overlay.md); the
    // FORGET arrives asynchronously, right after the unlink.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = nix::sys::statvfs::statvfs(&m.mountpoint).unwrap();
        if st.blocks_available() * st.fragment_size() >= 950 << 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the removed file's space never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // A cache file larger than the space left cannot be copied up: ENOSPC, nothing left behind.
    fs::write(m.path("myorg/big/filler"), vec![1u8; 900 << 10]).unwrap();
    let shard = m.path("mlx-community/Llama-tiny-f32/model.safetensors");
    let original = fs::read(&shard).unwrap();
    assert!(original.len() > 200 << 10);
    let e = OpenOptions::new().write(true).open(&shard).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_eq!(fs::read(&shard).unwrap(), original);
    assert_eq!(
        fs::read_dir(overlay_dir.join(".wh..wh..tmp"))
            .unwrap()
            .count(),
        0
    );
    assert!(!overlay_dir
        .join("mlx-community/Llama-tiny-f32/model.safetensors")
        .exists());
}
