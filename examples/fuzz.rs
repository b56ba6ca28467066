//! An in-tree mutation fuzzer for the parsers that read what users and downloads put on disk:
//! the safetensors header reader, the index, the workspace sentinel and config.json.
//!
//! Seeds are valid inputs (a tiny model's shard, its index, a sentinel, configs of every kind);
//! each execution mutates one (bit flips, byte edits, truncation, duplication, splices of JSON
//! tokens and numbers at the edges) and feeds it to its parser under `catch_unwind`. A panic is a
//! crash: the input is saved under `<out>/crashes/` and the run fails. An input that gives a
//! result not seen before (its target, and the first words of its error or success) is kept in
//! `<out>/corpus/<target>/` and mutated further; `tests/fuzz_corpus.rs` replays the checked-in
//! corpus (tests/fuzz-corpus) as regression tests.
//!
//!   cargo run --release --example fuzz -- EXECUTIONS SEED OUT_DIR

use std::collections::HashSet;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use mlxk_fs::testkit::fuzz::{hash, mutate, run, seeds, TARGETS};
use mlxk_fs::testkit::Rng;

/// Inputs kept per target in the corpus (the checked-in regression set stays small).
const PER_TARGET: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let executions: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let out = PathBuf::from(args.get(3).cloned().unwrap_or_else(|| "target/fuzz".into()));
    let scratch = tempfile_dir();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::new(seed);
    let mut pool = seeds();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let (mut crashes, mut kept, mut behaviours) = (0u64, 0u64, 0u64);
    for target in TARGETS {
        for s in &pool[target] {
            let r = run(target, s, &scratch);
            seen.insert((target.to_string(), r));
        }
    }
    for n in 0..executions {
        let target = TARGETS[(n % TARGETS.len() as u64) as usize];
        let inputs = &pool[target];
        let base = &inputs[(rng.next_u64() % inputs.len() as u64) as usize];
        let input = mutate(&mut rng, base);
        match catch_unwind(AssertUnwindSafe(|| run(target, &input, &scratch))) {
            Ok(r) => {
                if seen.insert((target.to_string(), r)) && input.len() < 1 << 16 {
                    let dir = out.join("corpus").join(target);
                    fs::create_dir_all(&dir).expect("corpus dir");
                    // Every new behaviour is mutated further; at most PER_TARGET are kept.
                    if fs::read_dir(&dir).map_or(0, |d| d.count()) < PER_TARGET {
                        fs::write(dir.join(hash(&input)), &input).expect("corpus file");
                        kept += 1;
                    }
                    behaviours += 1;
                    if let Some(p) = pool.get_mut(target) {
                        p.push(input);
                    }
                }
            }
            Err(_) => {
                let dir = out.join("crashes").join(target);
                fs::create_dir_all(&dir).expect("crash dir");
                let file = dir.join(hash(&input));
                fs::write(&file, &input).expect("crash file");
                eprintln!("CRASH in {target}: {}", file.display());
                crashes += 1;
            }
        }
    }
    let _ = fs::remove_dir_all(&scratch);
    println!(
        "fuzz: {executions} executions (seed {seed}) over {TARGETS:?}: {crashes} crashes, {behaviours} new behaviours, {kept} inputs kept in {}",
        out.join("corpus").display()
    );
    if crashes > 0 {
        std::process::exit(1);
    }
}

fn tempfile_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("mlxk-fuzz-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
