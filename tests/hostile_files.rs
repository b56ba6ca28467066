//! Odd files where the store expects small regular ones (issue 15, B2/B3): a FIFO or a link to
//! `/dev/zero` as a ref, a config or a tokenizer; a config larger than its limit. Every command
//! must finish promptly with a message naming the file — never wait on a FIFO, never read a
//! device whole, never parse a truncated read as if it were the file — and the mount must stay
//! responsive and unmount cleanly.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::mount::{fuse_available, MountGuard};
use common::Fixture;
use serde_json::Value;

/// How long any of these commands may take: they read headers and small files only.
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `cmd` to completion, or kills it and fails the test at the deadline.
fn finish(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
            child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
            return Output {
                status,
                stdout: out,
                stderr: err,
            };
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` hung: still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mlxk(fx: &Fixture, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlxk"));
    cmd.arg("--cache").arg(&fx.cache).args(args);
    cmd.env("NO_COLOR", "1");
    let out = finish(cmd, &format!("mlxk {}", args.join(" ")));
    common::record_json_reply(args, &out);
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
}

fn repo_dir(fx: &Fixture, repo: &str) -> std::path::PathBuf {
    fx.cache
        .join(format!("models--{}", repo.replace('/', "--")))
}

/// A FIFO and a link to /dev/zero as refs: list, health and show finish, and the models
/// still resolve (their newest snapshot stands in for the unreadable ref).
#[test]
fn fifo_and_device_refs_do_not_hang_or_flood_the_commands() {
    let fx = Fixture::new();
    let fifo_repo = "mlx-community/Llama-tiny-f16";
    let zero_repo = "mlx-community/Llama-tiny-bf16";
    let fifo = repo_dir(&fx, fifo_repo).join("refs/main");
    std::fs::remove_file(&fifo).unwrap();
    mkfifo(&fifo);
    let zero = repo_dir(&fx, zero_repo).join("refs/main");
    std::fs::remove_file(&zero).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    std::fs::create_dir_all(repo_dir(&fx, zero_repo).join("refs/pr")).unwrap();
    mkfifo(&repo_dir(&fx, zero_repo).join("refs/pr/1"));

    let out = mlxk(&fx, &["list", "--all", "--json"]);
    let v = json(&out);
    let names: Vec<&str> = v["data"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(
        names.contains(&fifo_repo) && names.contains(&zero_repo),
        "{names:?}"
    );
    let out = mlxk(&fx, &["list", "--health"]);
    assert_eq!(out.status.code(), Some(0));
    let out = mlxk(&fx, &["health", "--json"]);
    assert!(json(&out)["data"]["summary"]["total"].as_u64().unwrap() > 10);
    for repo in [fifo_repo, zero_repo] {
        let out = mlxk(&fx, &["show", repo, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
        assert_eq!(json(&out)["data"]["model"]["name"], repo);
        let out = mlxk(&fx, &["health", repo, "--json"]);
        assert_eq!(json(&out)["data"]["summary"]["total"], 1);
    }
}

/// Small files of a workspace that are FIFOs, devices or too large: health names them, run
/// refuses them, both promptly.
#[test]
fn fifo_device_and_oversized_model_files_are_named_not_waited_on() {
    let fx = Fixture::new();
    let fifo_ws = fx.copy_of("mlx-community/Llama-tiny-f16", "fifo-config");
    std::fs::remove_file(fifo_ws.join("config.json")).unwrap();
    mkfifo(&fifo_ws.join("config.json"));
    let out = mlxk(
        &fx,
        &["health", fifo_ws.to_str().unwrap(), "--json", "--details"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FIFO"), "{text}");
    let out = mlxk(&fx, &["run", fifo_ws.to_str().unwrap(), "Hi", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let msg = json(&out)["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("config.json") && msg.contains("FIFO"), "{msg}");

    let zero_ws = fx.copy_of("mlx-community/Llama-tiny-f16", "zero-tokenizer");
    std::fs::remove_file(zero_ws.join("tokenizer.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero_ws.join("tokenizer.json")).unwrap();
    let out = mlxk(&fx, &["run", zero_ws.to_str().unwrap(), "Hi", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let msg = json(&out)["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("device"),
        "{msg}"
    );
    let out = mlxk(
        &fx,
        &[
            "health",
            zero_ws.to_str().unwrap(),
            "--json",
            "--fail-on-unhealthy",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));

    // A valid config.json past the 16 MiB limit: said so, not "invalid JSON at column ...".
    let big_ws = fx.copy_of("mlx-community/Llama-tiny-f16", "big-config");
    let config = std::fs::read_to_string(big_ws.join("config.json")).unwrap();
    let padded = format!("{}{}", " ".repeat(17 << 20), config);
    std::fs::write(big_ws.join("config.json"), padded).unwrap();
    let out = mlxk(
        &fx,
        &["health", big_ws.to_str().unwrap(), "--json", "--details"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("larger than the 16 MiB limit"), "{text}");
    assert!(!text.contains("column"), "{text}");
    let out = mlxk(&fx, &["run", big_ws.to_str().unwrap(), "Hi", "--json"]);
    let msg = json(&out)["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("larger than the 16 MiB limit"), "{msg}");
}

/// The mount over a cache whose refs are a FIFO and a device link: listings finish, the
/// models show, and it unmounts cleanly.
#[test]
fn the_mount_stays_responsive_over_fifo_and_device_refs() {
    if !fuse_available("the_mount_stays_responsive_over_fifo_and_device_refs") {
        return;
    }
    let fx = Fixture::new();
    let fifo = repo_dir(&fx, "mlx-community/Llama-tiny-f16").join("refs/main");
    std::fs::remove_file(&fifo).unwrap();
    mkfifo(&fifo);
    let zero = repo_dir(&fx, "mlx-community/Llama-tiny-bf16").join("refs/main");
    std::fs::remove_file(&zero).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let m = MountGuard::new(&fx.cache, &fx.path("mnt"), &fx.path("state"), &[]);
    for _ in 0..3 {
        let mut ls = Command::new("ls");
        ls.arg("-lR").arg(m.path(""));
        let out = finish(ls, "ls -lR of the mount");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Llama-tiny-f16") && text.contains("Llama-tiny-bf16"));
    }
    let mut cat = Command::new("cat");
    cat.arg(m.path("mlx-community/Llama-tiny-f16/config.json"));
    assert!(finish(cat, "cat through the mount").status.success());
    let state = fx.path("state");
    let mut umount = Command::new(env!("CARGO_BIN_EXE_mlxk-fs"));
    umount
        .arg("umount")
        .arg(m.path(""))
        .env("MLXK_FS_STATE_DIR", &state);
    assert!(finish(umount, "mlxk-fs umount").status.success());
}

/// `mlxk run` follows the store's containment: a cache model's file that links out of the
/// cache is refused, not read (it read `/etc/passwd` as a config before).
#[test]
fn run_refuses_links_that_leave_the_cache() {
    let fx = Fixture::new();
    let out = mlxk(&fx, &["run", "broken/escaping-link", "Hi", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let msg = json(&out)["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("leaves the cache"),
        "{msg}"
    );
    let snapshot = common::snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-f32");
    std::fs::remove_file(snapshot.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", snapshot.join("config.json")).unwrap();
    let out = mlxk(
        &fx,
        &["run", "mlx-community/Llama-tiny-f32", "Hi", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let msg = json(&out)["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("config.json") && msg.contains("leaves the cache"),
        "{msg}"
    );
}

/// A bind mount of the cache (or of one of its repos) is the cache under another path: a convert
/// into it is refused by identity, and nothing is written (as root; elsewhere mounts need it).
#[test]
fn convert_refuses_a_bind_mount_alias_of_the_cache() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP convert_refuses_a_bind_mount_alias_of_the_cache: bind mounts need root");
        return;
    }
    let fx = Fixture::new();
    let before = common::tree_state(&fx.cache);
    let repo = repo_dir(&fx, "mlx-community/Llama-tiny-f16");
    for (source, alias) in [
        (fx.cache.clone(), fx.path("alias")),
        (repo, fx.path("repo-alias")),
    ] {
        std::fs::create_dir_all(&alias).unwrap();
        nix::mount::mount(
            Some(&source),
            &alias,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind mount");
        let target = alias.join("new-ws");
        let out = mlxk(
            &fx,
            &[
                "convert",
                "mlx-community/Llama-tiny-bf16",
                target.to_str().unwrap(),
                "--repair-index",
                "--json",
            ],
        );
        let v = json(&out);
        let exists = target.exists();
        nix::mount::umount2(&alias, nix::mount::MntFlags::MNT_DETACH).expect("umount");
        assert_eq!(out.status.code(), Some(1), "{v:#}");
        assert_eq!(v["error"]["type"], "target_in_cache", "{v:#}");
        assert!(!exists, "{} was created", target.display());
    }
    assert_eq!(before, common::tree_state(&fx.cache), "the cache changed");
}

/// A mountpoint inside (or equal to) the cache is refused before anything is mounted: the
/// daemon would read the cache through its own mount and wait on itself.
#[test]
fn a_mountpoint_inside_the_cache_is_refused() {
    if !fuse_available("a_mountpoint_inside_the_cache_is_refused") {
        return;
    }
    let fx = Fixture::new();
    let state = fx.path("state");
    let snapshots = repo_dir(&fx, "mlx-community/Llama-tiny-f16").join("snapshots");
    for mountpoint in [fx.cache.clone(), snapshots] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlxk-fs"));
        cmd.arg("mount")
            .arg(&mountpoint)
            .arg("--cache")
            .arg(&fx.cache)
            .arg("--overlay")
            .arg(fx.path("overlay"))
            .env("MLXK_FS_STATE_DIR", &state);
        let out = finish(cmd, "mlxk-fs mount inside the cache");
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("inside the cache"), "{err}");
        let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounted.contains(mountpoint.to_str().unwrap()),
            "{} was mounted",
            mountpoint.display()
        );
    }
}

/// As root the daemon sees the cache read-only in its own namespace — submounts under the
/// cache included (the bind is recursive, and so is the read-only flag now) — and says so.
#[test]
fn the_daemons_view_of_the_cache_is_read_only_submounts_included() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP the_daemons_view_of_the_cache_is_read_only_submounts_included: needs root");
        return;
    }
    if !fuse_available("the_daemons_view_of_the_cache_is_read_only_submounts_included") {
        return;
    }
    let fx = Fixture::new();
    let sub = repo_dir(&fx, "mlx-community/Llama-tiny-f16").join("extra-disk");
    std::fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID,
        Some("size=1m"),
    )
    .expect("tmpfs under the cache");
    let m = MountGuard::new(&fx.cache, &fx.path("mnt"), &fx.path("state"), &[]);
    let record = m.record.clone();
    let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", m.pid())).unwrap();
    drop(m);
    nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH).expect("umount tmpfs");
    assert_eq!(record["cache_read_only"], true, "{record:#}");
    let sub = std::fs::canonicalize(&sub).unwrap_or(sub);
    let line = info
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == sub.to_str())
        .unwrap_or_else(|| panic!("no submount in the daemon's namespace:\n{info}"));
    let options: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    assert!(options.contains(&"ro"), "{line}");
    assert!(options.contains(&"nosuid"), "kept its other flags: {line}");
}

/// The registry is the user's alone (0700 directory, 0600 records, whatever the daemon's
/// umask), and `mlxk-fs umount` trusts a record only when it is: a record someone else owns or
/// can write is refused with the reason, and a pid that is not an mlxk-fs daemon is never
/// signalled (a tampered record once sent SIGTERM to an unrelated process).
#[test]
fn the_registry_is_private_and_tampered_records_are_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !fuse_available("the_registry_is_private_and_tampered_records_are_refused") {
        return;
    }
    let fx = Fixture::new();
    let state = fx.path("state");
    let m = MountGuard::new(&fx.cache, &fx.path("mnt"), &state, &[]);
    let records: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = records[0].clone();
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&record).unwrap().mode() & 0o777, 0o600);
    let original = std::fs::read(&record).unwrap();
    let umount = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlxk-fs"));
        cmd.arg("umount")
            .arg(m.path(""))
            .env("MLXK_FS_STATE_DIR", &state);
        finish(cmd, "mlxk-fs umount")
    };
    let refused = |needle: &str| {
        let out = umount();
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "`{err}` lacks `{needle}`");
        let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounted.contains(m.path("").to_str().unwrap().trim_end_matches('/')));
    };

    // Writable by others.
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused("writable by others");
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Owned by another user (root can make one for the test).
    if nix::unistd::geteuid().is_root() {
        let other = other_user();
        std::os::unix::fs::lchown(&record, Some(other.uid.as_raw()), None).unwrap();
        refused("owned by uid");
        std::os::unix::fs::lchown(&record, Some(0), None).unwrap();
    }

    // A pid that is not an mlxk-fs daemon: refused, and the process is left alone.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let mut v: Value = serde_json::from_slice(&original).unwrap();
    v["pid"] = bystander.id().into();
    std::fs::write(&record, serde_json::to_vec(&v).unwrap()).unwrap();
    refused("not an mlxk-fs daemon");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();

    // The real record: unmounts.
    std::fs::write(&record, &original).unwrap();
    let out = umount();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    drop(m);
}

/// Sizes no model has (0 heads, 10⁹ layers, negative or fractional sizes, kv heads that do
/// not divide the heads): health says so, as run refuses them.
#[test]
fn absurd_architecture_sizes_are_health_problems() {
    let fx = Fixture::new();
    let cases: [(&str, Value, &str); 5] = [
        ("heads", 0.into(), "`num_attention_heads` is 0"),
        (
            "layers",
            1_000_000_000u64.into(),
            "`num_hidden_layers` is 1000000000, beyond 4096",
        ),
        (
            "negative",
            (-64).into(),
            "`hidden_size` is -64, not a positive integer",
        ),
        (
            "fraction",
            1.5.into(),
            "`intermediate_size` is 1.5, not a positive integer",
        ),
        ("kv", 3.into(), "`num_key_value_heads` (3) does not divide"),
    ];
    for (name, value, needle) in cases {
        let ws = fx.copy_of("mlx-community/Llama-tiny-f16", name);
        let p = ws.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let key = match name {
            "heads" => "num_attention_heads",
            "layers" => "num_hidden_layers",
            "negative" => "hidden_size",
            "fraction" => "intermediate_size",
            _ => "num_key_value_heads",
        };
        c[key] = value;
        std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
        let out = mlxk(
            &fx,
            &["health", ws.to_str().unwrap(), "--json", "--details"],
        );
        let v = json(&out);
        let text = v.to_string();
        assert!(text.contains(needle), "{name}: {text}");
        assert_eq!(v["data"]["summary"]["unhealthy_count"], 1, "{name}");
    }
    // The fixture's own configs stay healthy.
    let out = mlxk(&fx, &["health", "mlx-community/Llama-tiny-f16", "--json"]);
    assert_eq!(json(&out)["data"]["summary"]["healthy_count"], 1);
}

/// B7: an editor saving (write a temp file, rename it over the name) while loaders open the
/// name. On a local filesystem no such open fails; through the mount an open whose lookup came
/// before the rename used to fail with ESTALE (the kernel retries once, and in a storm the retry
/// races the next save). Cache files (the first save detaches the cached file's node) and
/// overlay files, with and without passthrough: zero failed opens, and every open reads one
/// whole version, never a mix.
#[test]
fn opens_racing_atomic_replaces_never_fail() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    if !fuse_available("opens_racing_atomic_replaces_never_fail") {
        return;
    }
    const SAVES: usize = 4000;
    for (label, extra) in [
        ("passthrough", &[][..]),
        ("daemon", &["--no-passthrough"][..]),
    ] {
        let fx = Fixture::new();
        let m = MountGuard::new(&fx.cache, &fx.path("mnt"), &fx.path("state"), extra);
        let ws = m.path("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(ws.join("notes.json"), version_text(0)).unwrap();
        let targets = [
            m.path("mlx-community/Llama-tiny-f16/config.json"),
            m.path("mlx-community/Llama-tiny-bf16/tokenizer_config.json"),
            ws.join("notes.json"),
        ];
        let done = Arc::new(AtomicBool::new(false));
        let opens = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let (done, opens, targets) = (done.clone(), opens.clone(), targets.clone());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut i = r;
                    while !done.load(Ordering::Relaxed) {
                        let path = &targets[i % targets.len()];
                        i += 1;
                        match std::fs::read(path) {
                            Ok(bytes) => {
                                let text = String::from_utf8_lossy(&bytes);
                                // The cached originals, or one whole saved version.
                                let whole = text.starts_with('{') && text.trim_end().ends_with('}');
                                if !whole {
                                    let head: String = text.chars().take(40).collect();
                                    failures.push(format!(
                                        "{}: torn read of {} bytes: {head:?}…",
                                        path.display(),
                                        bytes.len()
                                    ));
                                }
                            }
                            Err(e) => failures.push(format!("{}: {e}", path.display())),
                        }
                        opens.fetch_add(1, Ordering::Relaxed);
                    }
                    failures
                })
            })
            .collect();
        for n in 1..=SAVES {
            let target = &targets[n % targets.len()];
            let tmp = target.with_extension(format!("tmp{n}"));
            std::fs::write(&tmp, version_text(n)).unwrap();
            std::fs::rename(&tmp, target).unwrap();
        }
        done.store(true, Ordering::Relaxed);
        let failures: Vec<String> = readers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let opens = opens.load(Ordering::Relaxed);
        assert!(opens > 1000, "{label}: only {opens} opens ran");
        assert!(
            failures.is_empty(),
            "{label}: {} of {opens} opens failed, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        // The last save is what every name shows now.
        for (i, t) in targets.iter().enumerate() {
            let last = (1..=SAVES).rev().find(|n| n % targets.len() == i).unwrap();
            assert_eq!(
                std::fs::read_to_string(t).unwrap(),
                version_text(last),
                "{label}"
            );
        }
        drop(m);
    }
}

fn version_text(n: usize) -> String {
    format!(
        "{{\"version\": {n}, \"pad\": \"{}\"}}\n",
        "x".repeat(n % 4096)
    )
}

/// A second local user for the tests that need one (root creates it once).
fn other_user() -> nix::unistd::User {
    let _ = Command::new("useradd")
        .args(["--system", "--no-create-home", "mlxk-test-other"])
        .output();
    nix::unistd::User::from_name("mlxk-test-other")
        .unwrap()
        .expect("useradd mlxk-test-other")
}

/// Puts /dev/fuse's mode back when dropped.
struct DeviceMode(u32);

impl Drop for DeviceMode {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.0));
    }
}

/// B8. A user who may open /dev/fuse (mode 0666, fuse3's default) but may not mount(2) mounts
/// through fusermount3 (fuser's fallback) — in the background, as the README says to — reads
/// and writes through the mount, and unmounts with `mlxk-fs umount`. Where /dev/fuse is 0600
/// (as on this machine) no user but root can mount FUSE at all — fusermount3 opens the device
/// with the user's rights and is refused too — and the refusal says so and what helps, instead
/// of telling the user to install the fuse3 that is installed.
#[test]
fn an_unprivileged_user_mounts_through_fusermount3_or_is_told_why_not() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    const TEST: &str = "an_unprivileged_user_mounts_through_fusermount3_or_is_told_why_not";
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {TEST}: needs root to act as another user and to set /dev/fuse's mode");
        return;
    }
    if !fuse_available(TEST) {
        return;
    }
    let original = std::fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
    let _restore = DeviceMode(original);
    let user = other_user();
    let fx = Fixture::new();
    std::fs::set_permissions(fx.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mnt, home) = (fx.path("mnt"), fx.path("home"));
    for dir in [&mnt, &home] {
        std::fs::create_dir(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    }
    let as_user = |program: &str, args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .env("HOME", &home)
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_DATA_HOME")
            .env("NO_COLOR", "1")
            .current_dir(&home);
        finish(cmd, &format!("{program} {args:?} as mlxk-test-other"))
    };
    let mounted = |mnt: &Path| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == mnt.to_str() && l.contains("fuse.mlxk-fs"))
    };
    let fs_bin = env!("CARGO_BIN_EXE_mlxk-fs");
    let mount_args = [
        "mount".as_ref(),
        mnt.as_os_str(),
        "--cache".as_ref(),
        fx.cache.as_os_str(),
    ];

    // The device closed to users: refused with the reason, nothing mounted.
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = as_user(fs_bin, &mount_args);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/dev/fuse (mode 600") && err.contains("chmod 0666 /dev/fuse"),
        "{err}"
    );
    assert!(!err.contains("install"), "fuse3 is installed: {err}");
    assert!(!mounted(&mnt));

    // The device open to users: mount(2) refuses them, fusermount3 mounts.
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_user(fs_bin, &mount_args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "mount: {}",
        common::stderr(&out)
    );
    assert!(mounted(&mnt), "not in mountinfo");
    // B9: passthrough needs CAP_SYS_ADMIN; a user's mount says it is off, and why.
    let said = common::stdout(&out);
    assert!(said.contains("passthrough off: it needs root"), "{said}");
    let out = as_user(fs_bin, &["--json".as_ref(), "status".as_ref()]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mine = status["data"]["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountpoint"] == mnt.to_str().unwrap())
        .unwrap_or_else(|| panic!("{status:#}"))
        .clone();
    assert_eq!(mine["passthrough"], false, "{mine:#}");
    assert_eq!(mine["counters"]["passthrough_opens"], 0, "{mine:#}");
    let config = mnt.join("mlx-community/Llama-tiny-f16/config.json");
    let out = as_user("cat", &[config.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let cached = std::fs::read(
        common::snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-f16").join("config.json"),
    )
    .unwrap();
    assert_eq!(out.stdout, cached, "the mount serves the cached file");
    let note = mnt.join("mlx-community/Llama-tiny-f16/notes.txt");
    let out = as_user("touch", &[note.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    // The write is in the user's own overlay (the default, under their home), owned by them.
    let overlay = home.join(".local/share/mlxk-fs/overlay");
    let written = walk_files(&overlay)
        .into_iter()
        .find(|p| p.ends_with("notes.txt"))
        .unwrap_or_else(|| panic!("the write is not in {}", overlay.display()));
    assert_eq!(
        std::fs::metadata(&written).unwrap().uid(),
        user.uid.as_raw()
    );
    let out = as_user(fs_bin, &["umount".as_ref(), mnt.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "umount: {}",
        common::stderr(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while mounted(&mnt) {
        assert!(Instant::now() < deadline, "still mounted after umount");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(_restore);
    assert_eq!(
        std::fs::metadata("/dev/fuse").unwrap().mode() & 0o7777,
        original
    );
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
