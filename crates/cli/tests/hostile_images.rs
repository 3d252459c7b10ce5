//! End-to-end tests of image files planted to stall or exhaust a reader: a restore (which
//! stasisd runs as root on a user's images) must refuse them at once, naming the file, and
//! leave nothing running.
//!
//! The tests need root: when not run as root each prints a notice and passes without doing
//! anything. Work directories of failed tests are kept in `target/tmp/hostile_images/<test>/`.

// The tests talk to processes directly (setsid, close_range, prctl, geteuid).
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// After this, a stasis command is killed and the test fails.
const KILL_AFTER: Duration = Duration::from_secs(20);
/// A refusal of a planted file must come within this (it takes milliseconds).
const FAIL_FAST: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The lock that serializes these tests (they look for stray children), after making this
/// process a child subreaper so that anything a restore leaves behind becomes our child.
/// `None`, after a notice, when not root.
fn start(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !is_root() {
        eprintln!("skipping {test}: needs root");
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain integer and only sets a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl: {}", io::Error::last_os_error());
    Some(guard)
}

fn work_dir(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("hostile_images")
        .join(test);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// `sleep 100` in its own session, with no descriptor but 0, 1 and 2 (the test harness may
/// have inherited pipes without close-on-exec, which a dump would rightly refuse).
fn spawn_sleep() -> Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe system
    // calls.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0
                || libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let t = Instant::now();
    while !fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .contains("(sleep) S")
    {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sleep never slept");
        }
        sleep(POLL);
    }
    // Let it settle in its wait.
    sleep(Duration::from_millis(100));
    child
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
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > KILL_AFTER {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "stasis {args:?} still running after {KILL_AFTER:?} (killed); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        sleep(POLL);
    }
    (child.wait_with_output().unwrap(), t.elapsed())
}

/// Live processes whose parent is this test process (zombies are reaped on the way).
fn live_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let (state, ppid) = (rest.next(), rest.next());
        if ppid != Some(me.as_str()) {
            continue;
        }
        if matches!(state, Some("Z" | "X")) {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                let mut st = 0;
                // SAFETY: a non-blocking wait for one pid with a valid pointer.
                unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
            }
            continue;
        }
        out.push(stat);
    }
    out
}

fn copy_images(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn fifo_in_place_of_an_image_fails_the_restore_at_once() {
    let test = "fifo_in_place_of_an_image_fails_the_restore_at_once";
    let Some(_lock) = start(test) else {
        return;
    };
    let w = work_dir(test);
    let img = w.join("img");
    let mut sleeper = spawn_sleep();
    let pid = sleeper.id();
    let (out, _) = stasis(&["dump", "-t", &pid.to_string(), "-D", img.to_str().unwrap()]);
    if !out.status.success() {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
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
                !Path::new(&format!("/proc/{pid}")).exists(),
                "{what}: a process with pid {pid} exists"
            );
            assert_eq!(live_children(), Vec::<String>::new(), "{what}: left behind");
        }
    }

    // Control: the same images without a FIFO restore (so the refusals above were the FIFO's).
    let (out, _) = stasis(&["restore", "-D", img.to_str().unwrap(), "--detach"]);
    let running = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // SAFETY: kill only sends a signal to one positive pid; the restored sleep is our child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let t = Instant::now();
    while !live_children().is_empty() && t.elapsed() < Duration::from_secs(5) {
        sleep(POLL);
    }
    assert!(
        out.status.success() && running.trim_end() == "sleep",
        "control: restore of the unmodified images failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_dir_all(&w).unwrap();
}
