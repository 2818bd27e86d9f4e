//! What the fuzz targets (`fuzz/`, `scripts/fuzz`) found stays fixed: every input under
//! `fuzz/regressions/<target>/` (and every seed under `fuzz/seeds/<target>/`) goes through the
//! very function the target fuzzes, on stable, in the ordinary `cargo test`.

use std::path::{Path, PathBuf};

use clusterd_parsers::fuzzing::TARGETS;

fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind);
    let mut found = Vec::new();
    let Ok(dirs) = std::fs::read_dir(&root) else { return found };
    for dir in dirs.map(|d| d.expect("a directory entry").path()).filter(|p| p.is_dir()) {
        let target = dir.file_name().expect("a name").to_string_lossy().into_owned();
        for file in std::fs::read_dir(&dir).expect("read a target's directory") {
            let path = file.expect("a file entry").path();
            if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
                found.push((target.clone(), path));
            }
        }
    }
    found
}

fn replay(kind: &str) -> usize {
    let found = inputs(kind);
    for (target, path) in &found {
        let run = TARGETS
            .iter()
            .find(|(name, _)| name == target)
            .unwrap_or_else(|| panic!("fuzz/{kind}/{target} names no fuzz target"))
            .1;
        let bytes = std::fs::read(path).expect("read an input");
        // A panic here names the input through the test's output.
        eprintln!("replaying {}", path.display());
        run(&bytes);
    }
    found.len()
}

#[test]
fn every_fuzz_finding_is_replayed_without_a_fault() {
    replay("regressions");
}

#[test]
fn every_seed_of_every_target_is_replayed_without_a_fault() {
    let seeds = replay("seeds");
    let seeded: std::collections::BTreeSet<String> = inputs("seeds").into_iter().map(|(t, _)| t).collect();
    for (name, _) in TARGETS {
        assert!(seeded.contains(*name), "fuzz target {name} has no seed under fuzz/seeds/{name}/");
    }
    assert!(seeds >= TARGETS.len());
}
