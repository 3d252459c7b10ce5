//! Runs every seed input (`fuzz/corpus/<target>/`) and every kept regression input
//! (`fuzz/regressions/<target>/`, the inputs that once crashed a target) through the body of
//! its fuzz target, on the ordinary toolchain: what the fuzzers found stays fixed.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs every file of `dir/<target>/` through its target; returns how many ran.
fn run_all(dir: &Path) -> usize {
    let mut ran = 0;
    for (name, body) in stasis_fuzz_harness::TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(name)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.expect("reading a corpus directory").path())
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).expect("reading an input");
            eprintln!("{name}: {}", f.display());
            body(&data);
            ran += 1;
        }
    }
    ran
}

#[test]
fn every_kept_regression_input_passes() {
    let dir = fuzz_dir().join("regressions");
    // Every directory is named after a target.
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if e.path().is_dir() {
            assert!(
                stasis_fuzz_harness::TARGETS.iter().any(|(n, _)| *n == name),
                "fuzz/regressions/{name} is not a target"
            );
        }
    }
    run_all(&dir);
}

#[test]
fn every_seed_input_passes() {
    let ran = run_all(&fuzz_dir().join("corpus"));
    assert!(ran > 0, "no seed corpus under fuzz/corpus");
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (name, _) in stasis_fuzz_harness::TARGETS {
        let f = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(f.is_file(), "{} is missing", f.display());
    }
}
