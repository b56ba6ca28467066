//! The fuzzer's corpus (tests/fuzz-corpus, from `scripts/fuzz.sh --update-corpus`): every kept
//! input — each showed a behaviour of its parser no other input did — replayed through the same
//! parsers. None may panic, and each must give the same answer twice.

use std::path::Path;

use mlxk_fs::testkit::fuzz::{run, TARGETS};

#[test]
fn every_corpus_input_is_parsed_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let scratch = tempfile::tempdir().unwrap();
    let mut replayed = 0;
    for target in TARGETS {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/fuzz.sh --update-corpus)", dir.display()));
        for e in entries {
            let path = e.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            let first = std::panic::catch_unwind(|| run(target, &input, scratch.path()))
                .unwrap_or_else(|_| panic!("{} panics its parser", path.display()));
            assert_eq!(
                first,
                run(target, &input, scratch.path()),
                "{}",
                path.display()
            );
            replayed += 1;
        }
    }
    // The corpus covers every target.
    assert!(replayed >= 4 * 20, "only {replayed} inputs in the corpus");
}
