//! `stasis bench --quick` runs and prints tables that parse (this catches a broken benchmark,
//! not a slow one: no figure is judged). `$CRIU_BIN` names a fake CRIU too old to compare
//! with, which the benchmark must skip with a line saying why.
//!
//! Needs root (dumps and restores real processes): without it the test fails under CI
//! (`CI=true`) and elsewhere prints a notice and returns.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The tables of the output: workload header → (figure name → first field of its value).
fn parse(out: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut tables: Vec<(String, HashMap<String, String>)> = Vec::new();
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("== ") {
            tables.push((h.to_string(), HashMap::new()));
        } else if let (Some(row), Some((_, t))) = (line.strip_prefix("  "), tables.last_mut()) {
            if row.starts_with('(') || row.len() < 37 {
                continue;
            }
            let (name, rest) = row.split_at(36);
            let value = rest.split_whitespace().next().unwrap_or("").to_string();
            t.insert(name.trim().to_string(), value);
        }
    }
    tables
}

#[test]
fn bench_quick_runs_and_parses() {
    if !stasis_test_infra::require_root() {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fake_criu = dir.join("criu");
    std::fs::write(&fake_criu, "#!/bin/sh\necho 'Version: 3.19'\n").unwrap();
    std::fs::set_permissions(&fake_criu, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["bench", "--quick"])
        .env("TMPDIR", &dir)
        .env("CRIU_BIN", &fake_criu)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stasis bench --quick failed: {stderr}\n{stdout}"
    );
    assert!(
        stdout.lines().next().unwrap_or("").contains("CRIU skipped")
            && stdout.contains("is CRIU 3.19"),
        "the too old CRIU is not skipped with a reason:\n{stdout}"
    );
    let tables = parse(&stdout);
    assert_eq!(tables.len(), 4, "expected 4 workloads:\n{stdout}");
    let number = |t: &HashMap<String, String>, name: &str| -> f64 {
        let v = t
            .get(name)
            .unwrap_or_else(|| panic!("no row {name:?} in:\n{stdout}"));
        v.parse::<f64>()
            .unwrap_or_else(|_| panic!("row {name:?}: {v:?} is not a number:\n{stdout}"))
    };
    // Every row named is a positive number.
    let all_positive = |header: &str, t: &HashMap<String, String>, names: &[&str]| {
        for name in names {
            assert!(number(t, name) > 0.0, "{header}: {name} is not positive");
        }
    };
    // The fixed cost first (measured while the benchmark's process is small).
    let (header, fixed) = &tables[0];
    assert!(header.starts_with("fixed cost"), "{header}");
    all_positive(
        header,
        fixed,
        &[
            "dump by `stasis dump`",
            "restore by `stasis restore -d`",
            "dump by the engine",
            "restore by the engine",
        ],
    );
    for (header, t) in &tables[1..3] {
        assert!(header.contains("MiB"), "{header}");
        all_positive(
            header,
            t,
            &[
                "baseline memcpy",
                "baseline process_vm_readv",
                "baseline write (no fsync)",
                "baseline write + fsync",
                "dump, left running",
                "frozen (engine's figure)",
                "image size",
                "restore, until it runs",
            ],
        );
        // The application was frozen during the dump: its watcher saw it.
        assert!(number(t, "stall seen by the application") > 0.0);
        let lazy = t.get("lazy restore, to first instruction").unwrap();
        assert!(lazy == "n/a" || lazy.parse::<f64>().is_ok(), "{lazy}");
    }
    let (header, tree) = &tables[3];
    assert!(header.starts_with("tree: 5 processes"), "{header}");
    all_positive(
        header,
        tree,
        &["dump, left running", "restore, until it runs"],
    );
    // Nothing left behind in the images' directory.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("stasis-bench"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
