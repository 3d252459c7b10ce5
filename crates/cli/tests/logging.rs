//! End-to-end tests of the `stasis` log: `-v`/`-vv` and `--log-file`.
//!
//! A restore is made to fail in the middle of rebuilding a process: its image is re-encoded
//! (with a correct checksum) with a parent-death signal of 200, which passes validation but
//! which `prctl(PR_SET_PDEATHSIG)`, run inside the new process, refuses with EINVAL. The log
//! must show in which part of the restore, for which process, and the failing call with its
//! errno; without -v, stderr must hold nothing but the one error line.
//!
//! The tests need root: without it each test fails under CI (`CI=true`) and elsewhere prints a
//! notice and returns (`stasis_test_infra::require_root`). They run one at a time (a lock),
//! because they look for stray children. Work directories of failed tests are kept in
//! `target/tmp/logging/<test name>/`.

use stasis_image::{names, read_record, write_record_atomic, ImageDir, ProcessImage, RecordKind};
use stasis_test_infra::process::{become_subreaper, kill, spawn_sleep, wait_pid};
use stasis_test_infra::{procfs, require_root, WorkDir};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Takes the lock that serializes these tests and makes this process a child subreaper, so
/// that a process a failed restore left behind ends up as our child; makes the test's work
/// directory. `None` when the test cannot run (see `require_root`).
fn start(test: &str) -> Option<(MutexGuard<'static, ()>, WorkDir)> {
    if !require_root() {
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("logging")
        .join(test);
    Some((guard, WorkDir::new(dir)))
}

/// Runs `stasis ARGS` in `dir` and returns its output.
fn stasis(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run stasis")
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Dumps a fresh `sleep` into `dir/img` and gives its image a parent-death signal of 200.
/// Returns the dumped pid and the images directory.
fn dumped_sleep_with_bad_pdeathsig(dir: &Path) -> (i32, PathBuf) {
    let img = dir.join("img");
    let mut child = spawn_sleep();
    let pid = child.id() as i32;
    // Not authenticated: the record is edited below (an authenticated one would be refused
    // before the restore gets to the failing call).
    let out = stasis(
        dir,
        &["dump", "-t", &pid.to_string(), "-D", "img", "--no-auth"],
    );
    assert!(out.status.success(), "dump failed: {}", describe(&out));
    let _ = child.wait();

    let images = ImageDir::open(&img).expect("open images");
    let name = names::process(pid);
    let mut p: ProcessImage =
        read_record(&images, &name, RecordKind::Process).expect("read the process image");
    p.task.pdeathsig = 200;
    write_record_atomic(&images, &name, RecordKind::Process, &p).expect("rewrite it");
    (pid, img)
}

/// Fails when a process with `pid` exists (killing and reaping it first).
fn assert_no_process(pid: i32) {
    let alive = procfs::exists(pid);
    if alive {
        kill(pid, libc::SIGKILL);
        let _ = wait_pid(pid, Duration::from_secs(5));
    }
    assert!(!alive, "the failed restore left pid {pid} behind");
}

fn assert_one_line_naming_the_call(out: &Output, pid: i32) -> String {
    assert!(
        !out.status.success(),
        "the restore should fail: {}",
        describe(out)
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "one error line: {}",
        describe(out)
    );
    assert!(
        stderr.starts_with("restore: ")
            && stderr.contains("prctl(PR_SET_PDEATHSIG)")
            && stderr.contains(&pid.to_string()),
        "the error names the call and the process: {}",
        describe(out)
    );
    stderr
}

#[test]
fn log_file_shows_the_phase_process_and_failing_call() {
    let Some((_lock, dir)) = start("log_file_shows_the_phase_process_and_failing_call") else {
        return;
    };
    let (pid, _img) = dumped_sleep_with_bad_pdeathsig(&dir);

    let out = stasis(
        &dir,
        &["-v", "restore", "-D", "img", "--log-file", "restore.log"],
    );
    let err_line = assert_one_line_naming_the_call(&out, pid);
    assert_no_process(pid);
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let log = fs::read_to_string(dir.join("restore.log")).expect("read the log file");
    let failing = log
        .lines()
        .find(|l| l.contains("injected call failed"))
        .unwrap_or_else(|| panic!("no failing injected call in the log:\n{log}"));
    // The part of the restore and the process, then the call with its arguments and errno.
    assert!(
        failing.contains(&format!(
            "restore{{images=img}}:rebuild:process{{pid={pid}}}:step{{name=\"prctl\"}}:attrs{{pid={pid}}}"
        ))
            && failing.contains(&format!(
                "tid {pid}: injected call failed: prctl(PR_SET_PDEATHSIG) [157] (1, 200, 0, 0, 0, \
                 0) = -1 EINVAL (Invalid argument)"
            ))
            && failing.contains("DEBUG"),
        "{failing}\n--- log ---\n{log}"
    );
    // The error itself ends the log, as on stderr.
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("ERROR") && last.ends_with(err_line.trim_end()),
        "last line {last:?} should be the error {err_line:?}\n--- log ---\n{log}"
    );
    // At -v, successful calls are not logged one by one.
    assert!(!log.contains("TRACE"), "{log}");

    // -vv: every injected call.
    let out = stasis(
        &dir,
        &["-vv", "restore", "-D", "img", "--log-file", "trace.log"],
    );
    assert_one_line_naming_the_call(&out, pid);
    assert_no_process(pid);
    let log = fs::read_to_string(dir.join("trace.log")).expect("read the trace log");
    for call in [
        "mmap(scratch) [9]",
        "rt_sigaction",
        "prctl(PR_SET_MM_MAP) [157]",
        "setresuid",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("TRACE") && l.contains(&format!("tid {pid}: {call}"))),
            "no trace of {call} in\n{log}"
        );
    }
}

#[test]
fn quiet_by_default() {
    let Some((_lock, dir)) = start("quiet_by_default") else {
        return;
    };
    let (pid, _img) = dumped_sleep_with_bad_pdeathsig(&dir);
    let out = stasis(&dir, &["restore", "-D", "img"]);
    assert_one_line_naming_the_call(&out, pid);
    assert_no_process(pid);
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    // No log file either: the work dir holds the images and nothing else.
    let entries: Vec<_> = fs::read_dir(&dir)
        .expect("list the work dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, ["img"], "files left in the work dir");
}
