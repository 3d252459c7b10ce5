//! End-to-end test of copy-on-write sharing in a dumped tree (`pages::cow`): the zdtm program
//! `mem_cow_tree` (a root with 64 MiB, three children and a grandchild that share it) is
//! dumped, and its images hold the 64 MiB once (not once per process); the children's records
//! list the shared pages as inherited; the restored tree passes the program's own checks,
//! which include that the pages are shared again (the `zdtm_mem_cow_tree_*` tests run it in
//! every variant).
//!
//! The test needs root: without it it fails under CI (`CI=true`) and elsewhere prints a notice
//! and returns (`stasis_test_infra::require_root`). Its work directory is kept in
//! `target/tmp/cow_sharing/<test>/` when it fails.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use stasis_image::{names, ImageDir, Inventory, ProcessImage, RecordKind, RunCodec};
use stasis_test_infra::build::zdtm_program;
use stasis_test_infra::process::{
    append_log, become_subreaper, kill, spawn_isolated, wait_child_for, wait_pid, WaitStatus,
    Waited,
};
use stasis_test_infra::wait::wait_until;
use stasis_test_infra::{require_root, WorkDir};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Runs `stasis ARGS` and fails the test unless it succeeds.
fn stasis(dir: &Path, args: &[&str]) {
    let log = dir.join("stasis.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(append_log(&log).unwrap())
        .stderr(append_log(&log).unwrap())
        .spawn()
        .unwrap();
    let status = wait_child_for(&mut child, Duration::from_secs(120)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "stasis {args:?}: {status:?}: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn a_forked_tree_is_stored_once_and_shares_its_memory_again() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("cow_sharing")
            .join("a_forked_tree_is_stored_once_and_shares_its_memory_again"),
    );
    let bin = zdtm_program("mem_cow_tree", &w).unwrap();
    let log = w.join("test.log");
    let mut cmd = Command::new(&bin);
    cmd.current_dir(&*w);
    let root = spawn_isolated(&mut cmd, append_log(&log).unwrap())
        .unwrap()
        .id() as i32;
    let ready = wait_until(Duration::from_secs(30), || {
        fs::read_to_string(&log).is_ok_and(|s| s.contains("READY"))
    });
    if !ready {
        kill(root, libc::SIGKILL);
        panic!(
            "not ready: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    let img = w.join("img");
    fs::create_dir_all(&img).unwrap();
    stasis(
        &w,
        &["dump", "-t", &root.to_string(), "-D", img.to_str().unwrap()],
    );
    let dir = ImageDir::open(&img).unwrap();
    let inventory: Inventory =
        stasis_image::read_record(&dir, names::INVENTORY, RecordKind::Inventory).unwrap();
    // The dump killed the tree: every process is ours to reap (we are a subreaper), and the
    // restore needs their pids.
    for &pid in &inventory.processes {
        assert!(matches!(
            wait_pid(pid, Duration::from_secs(10)),
            Ok(Waited::Status(_) | Waited::Gone)
        ));
    }
    assert_eq!(inventory.processes.len(), 5);
    let mut stored = 0;
    for &pid in &inventory.processes {
        stored += fs::metadata(img.join(names::pages(pid))).unwrap().len();
        let image: ProcessImage =
            stasis_image::read_record(&dir, &names::process(pid), RecordKind::Process).unwrap();
        let inherited: u64 = image
            .page_runs
            .iter()
            .filter(|r| r.codec == RunCodec::Inherited)
            .map(|r| r.npages)
            .sum();
        if pid == root {
            assert_eq!(inherited, 0, "the root has no parent in the tree");
        } else {
            // All but the handful of pages each rewrote (and the root's, after the fork).
            assert!(
                inherited * 4096 > 63 * MIB,
                "pid {pid}: {inherited} pages inherited"
            );
        }
    }
    // Once the 64 MiB (and the rest of five small processes), not five times.
    assert!(
        stored > 64 * MIB && stored < 80 * MIB,
        "{} MiB of pages files",
        stored / MIB
    );
    stasis(&w, &["show", img.to_str().unwrap()]);

    stasis(&w, &["restore", "-D", img.to_str().unwrap(), "-d"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(kill(root, libc::SIGTERM));
    let end = wait_pid(root, Duration::from_secs(60));
    let out = fs::read_to_string(&log).unwrap();
    assert!(
        matches!(
            end,
            Ok(Waited::Status(WaitStatus::Exited(0)) | Waited::Gone)
        ) && out.ends_with("PASS\n"),
        "{end:?}: {out}"
    );
}
