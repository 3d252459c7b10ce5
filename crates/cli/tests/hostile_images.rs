//! End-to-end tests of image files planted to stall or exhaust a reader: a restore (which
//! stasisd runs as root on a user's images) must refuse them at once, naming the file, and
//! leave nothing running.
//!
//! The tests need root: without it each test fails under CI (`CI=true`) and elsewhere prints a
//! notice and returns (`stasis_test_infra::require_root`). Work directories of failed tests are
//! kept in `target/tmp/hostile_images/<test>/`.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use stasis_test_infra::process::{
    become_subreaper, kill, kill_child, live_children, spawn_sleep, wait_child_for,
};
use stasis_test_infra::wait::wait_until;
use stasis_test_infra::{procfs, require_root, WorkDir};
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// After this, a stasis command is killed and the test fails.
const KILL_AFTER: Duration = Duration::from_secs(20);
/// A refusal of a planted file must come within this (it takes milliseconds).
const FAIL_FAST: Duration = Duration::from_secs(5);

/// The lock that serializes these tests (they look for stray children), after making this
/// process a child subreaper so that anything a restore leaves behind becomes our child, and
/// the test's work directory. `None` when the test cannot run (see `require_root`).
fn start(test: &str) -> Option<(MutexGuard<'static, ()>, WorkDir)> {
    if !require_root() {
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("hostile_images")
        .join(test);
    Some((guard, WorkDir::new(dir)))
}

/// Runs `stasis ARGS`, killing it after KILL_AFTER; returns its output and how long it took.
fn stasis(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if wait_child_for(&mut child, KILL_AFTER).unwrap().is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "stasis {args:?} still running after {KILL_AFTER:?} (killed); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (child.wait_with_output().unwrap(), t.elapsed())
}

fn copy_images(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn fifo_in_place_of_an_image_fails_the_restore_at_once() {
    let Some((_lock, w)) = start("fifo_in_place_of_an_image_fails_the_restore_at_once") else {
        return;
    };
    let img = w.join("img");
    let mut sleeper = spawn_sleep();
    let pid = sleeper.id() as i32;
    let (out, _) = stasis(&["dump", "-t", &pid.to_string(), "-D", img.to_str().unwrap()]);
    if !out.status.success() {
        kill_child(&mut sleeper);
        panic!(
            "dump of sleep (pid {pid}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    sleeper.wait().unwrap();

    for (i, name) in [
        format!("pages-{pid}.img"),
        format!("process-{pid}.img"),
        "inventory.img".to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let case = w.join(format!("case-{i}"));
        copy_images(&img, &case);
        fs::remove_file(case.join(&name)).unwrap();
        let fifo = case.join(&name);
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        for cmd in [&["restore", "-D"][..], &["show"][..]] {
            let mut args = cmd.to_vec();
            args.push(case.to_str().unwrap());
            let (out, took) = stasis(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            let what = format!("stasis {args:?} with {name} a FIFO");
            eprintln!("{what}: {took:?}: {}", err.trim_end());
            assert!(!out.status.success(), "{what}: succeeded");
            assert!(took < FAIL_FAST, "{what}: took {took:?}");
            assert!(
                out.status.code().is_some() && !err.contains("panicked"),
                "{what}: {:?}: {err}",
                out.status
            );
            let named = format!("{}: is a FIFO", fifo.display());
            assert!(
                err.contains(&named) && err.trim_end().lines().count() == 1,
                "{what}: the error should be one line naming the file and what it is: {err}"
            );
            assert!(
                !procfs::exists(pid),
                "{what}: a process with pid {pid} exists"
            );
            assert_eq!(
                live_children(),
                Vec::<(i32, String)>::new(),
                "{what}: left behind"
            );
        }
    }

    // Control: the same images without a FIFO restore (so the refusals above were the FIFO's).
    let (out, _) = stasis(&["restore", "-D", img.to_str().unwrap(), "--detach"]);
    let running = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // The restored sleep is our child.
    kill(pid, libc::SIGKILL);
    wait_until(Duration::from_secs(5), || live_children().is_empty());
    assert!(
        out.status.success() && running.trim_end() == "sleep",
        "control: restore of the unmodified images failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
