//! `stasis dump --stats FILE` and `stasis restore --stats FILE`: the JSON holds the timings of
//! each phase and the sizes of the images, and a run off a terminal prints no progress bar.
//!
//! Needs root: without it the test fails under CI (`CI=true`) and elsewhere prints a notice
//! and returns.

use serde_json::Value;
use stasis_test_infra::process::{become_subreaper, kill, kill_child, spawn_sleep, wait_pid};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn stasis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run stasis")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// The number at `key` of `v`, which must be there.
fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v:#}"))
}

#[test]
fn dump_and_restore_write_their_stats() {
    if !stasis_test_infra::require_root() {
        return;
    }
    become_subreaper();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stats");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let images = dir.join("images");
    let (dump_stats, restore_stats) = (dir.join("dump.json"), dir.join("restore.json"));

    let mut sleep = spawn_sleep();
    let pid = sleep.id().to_string();
    let out = stasis(&[
        "dump",
        "-t",
        &pid,
        "-D",
        images.to_str().unwrap(),
        "--no-auth",
        "--stats",
        dump_stats.to_str().unwrap(),
    ]);
    if !out.status.success() {
        kill_child(&mut sleep);
        panic!("dump: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = sleep.wait();
    // Off a terminal: the one line, no progress bar.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "{stderr:?}"
    );

    let d = read_json(&dump_stats);
    assert_eq!(d["command"], "dump");
    assert_eq!(d["processes"], 1);
    assert_eq!(d["pid"].as_i64(), Some(sleep.id() as i64));
    assert!(num(&d, "page_bytes") > 0.0 && num(&d, "image_bytes") > num(&d, "page_bytes"));
    let phases = &d["phases_ms"];
    for p in [
        "freeze",
        "collect",
        "pages",
        "write",
        "write.wait",
        "sync",
        "sync.fsync",
        "release",
    ] {
        assert!(num(phases, p) >= 0.0, "{p}");
    }
    // The process was killed after the images were durable: frozen for the whole dump.
    assert!(num(&d, "frozen_ms") >= num(phases, "sync") && num(&d, "total_ms") > 0.0);

    let out = stasis(&[
        "restore",
        "-D",
        images.to_str().unwrap(),
        "-d",
        "--no-auth",
        "--stats",
        restore_stats.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    kill(restored, libc::SIGKILL);
    let _ = wait_pid(restored, Duration::from_secs(5));
    let r = read_json(&restore_stats);
    assert_eq!(r["command"], "restore");
    assert_eq!(r["pid"].as_i64(), Some(restored as i64));
    assert_eq!(r["page_bytes"], d["page_bytes"]);
    for p in ["load", "plan", "fork", "rebuild", "finish"] {
        assert!(num(&r["phases_ms"], p) >= 0.0, "{p}");
    }
    assert!(num(&r["rebuild_ms"], "fill") > 0.0, "{r:#}");
    assert!(num(&r["rebuild_steps_ms"], "fill pages") > 0.0, "{r:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
