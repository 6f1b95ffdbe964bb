//! Replays every seed and every saved input of `corpus/<target>/` through its target, so that
//! `cargo test` runs each target briefly (no afl needed). A panic here is a bug in meetd
//! (or a target that stopped matching the code); the file name says which input.

use std::fs;
use std::path::Path;

#[test]
fn every_corpus_file_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (name, target) in meetd_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for target {name}");
        for f in &files {
            let data = fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            eprintln!("{name}: {}", f.display());
            target(&data);
        }
        total += files.len();
    }
    eprintln!("{total} corpus files replayed");
}

#[test]
fn every_target_has_a_harness_and_a_corpus_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in meetd_fuzz::TARGETS {
        assert!(
            root.join("src/bin").join(format!("{name}.rs")).is_file(),
            "{name}: no harness"
        );
        assert!(root.join("corpus").join(name).is_dir(), "{name}: no corpus");
    }
}

/// Inputs that are empty, oversized or plain garbage must be harmless everywhere.
#[test]
fn degenerate_inputs() {
    let big = vec![b'<'; meetd_fuzz::MAX_INPUT + 1];
    for (_, target) in meetd_fuzz::TARGETS {
        for data in [&b""[..], b"\0", b"\xff\xff", b"<", &big] {
            target(data);
        }
    }
}
