//! End-to-end tests of the `stasis` log: `-v`/`-vv` and `--log-file`.
//!
//! A restore is made to fail in the middle of rebuilding a process: its image is re-encoded
//! (with a correct checksum) with a parent-death signal of 200, which passes validation but
//! which `prctl(PR_SET_PDEATHSIG)`, run inside the new process, refuses with EINVAL. The log
//! must show in which part of the restore, for which process, and the failing call with its
//! errno; without -v, stderr must hold nothing but the one error line.
//!
//! The tests need root: when not run as root each test prints a notice and passes without
//! doing anything. They run one at a time (a lock), because they look for stray children.
//! Work directories of failed tests are kept in `target/tmp/logging/<test name>/`.

// The tests talk to processes directly (geteuid, prctl, kill).
#![allow(unsafe_code)]

use stasis_image::{names, read_record, write_record_atomic, ImageDir, ProcessImage, RecordKind};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Takes the lock that serializes these tests and makes this process a child subreaper, so
/// that a process a failed restore left behind ends up as our child. `None` when not root.
fn start(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !is_root() {
        eprintln!("skipping {test}: the logging tests need root");
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    static ONCE: Once = Once::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain integer and only sets a flag of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    });
    Some(guard)
}

fn work_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("logging")
        .join(test);
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("remove old work dir");
    }
    fs::create_dir_all(&dir).expect("create work dir");
    dir
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

/// Starts `sleep 100` in a new session with nothing but /dev/null open, and waits until it
/// sleeps. The caller reaps it (the dump kills it).
#[allow(clippy::zombie_processes)]
fn spawn_sleep() -> Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec and only makes the async-signal-safe
    // system calls setsid and close_range.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Descriptors this test inherited (cargo's jobserver pipe) must not reach sleep:
            // stasis refuses pipes that lead outside the dumped process.
            if libc::syscall(
                libc::SYS_close_range,
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start sleep");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if comm.trim_end() == "sleep" && state == Some('S') {
            std::thread::sleep(Duration::from_millis(100));
            return child;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sleep {pid} never went to sleep");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Dumps a fresh `sleep` into `dir/img` and gives its image a parent-death signal of 200.
/// Returns the dumped pid and the images directory.
fn dumped_sleep_with_bad_pdeathsig(dir: &Path) -> (i32, PathBuf) {
    let img = dir.join("img");
    let mut child = spawn_sleep();
    let pid = child.id() as i32;
    let out = stasis(dir, &["dump", "-t", &pid.to_string(), "-D", "img"]);
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
    let alive = Path::new(&format!("/proc/{pid}")).exists();
    if alive {
        // SAFETY: kill and waitpid on one positive pid; the status pointer may be null.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
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
    let Some(_lock) = start("log_file_shows_the_phase_process_and_failing_call") else {
        return;
    };
    let dir = work_dir("log_file_shows_the_phase_process_and_failing_call");
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
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn quiet_by_default() {
    let Some(_lock) = start("quiet_by_default") else {
        return;
    };
    let dir = work_dir("quiet_by_default");
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
    let _ = fs::remove_dir_all(&dir);
}
