//! `stasis restore --lazy` end to end, on tests/lazy/lazy_memory.c: a process with 64 MiB of
//! known memory (holes included), a read-only mapping, a thread that keeps reading it, and a
//! child.
//!
//! - after a lazy restore every byte of both processes is exact, `stasis restore -d` returned
//!   without waiting for the pages (its stdout and stderr closed: `output()` returns), and the
//!   page server exits (status 0) once every page has arrived;
//! - memory dropped with MADV_DONTNEED right after the restore reads as zeros, not as the
//!   dumped data the server would have pushed;
//! - a child forked right after the restore (pages still missing) has its parent's memory;
//! - a pages file corrupted after the dump: the restored processes are killed (never run on
//!   with wrong data), the server logs why and exits with status 1 (or, when the process
//!   touched the bad run before the server took over, the restore fails saying why);
//! - a page server killed before every page arrived: its watchdog kills the restored
//!   processes (which would otherwise get zero pages) and logs why.
//!
//! The tests need root (`stasis_test_infra::require_root`). Work directories of failed tests
//! are kept in `target/tmp/lazy/<test name>/`.

mod common;

use common::stasis;
use stasis_sys::ptrace::WaitStatus;
use stasis_test_infra::build::c_program;
use stasis_test_infra::process::{become_subreaper, isolate, kill, wait_pid, Waited};
use stasis_test_infra::repo_root;
use stasis_test_infra::wait::wait_for;
use stasis_test_infra::{require_root, WorkDir};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Deadline for a process or the page server to get where a test wants it.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The memory of the test program, MiB.
const MIB: &str = "64";

fn work_dir(test: &str) -> WorkDir {
    common::work_dir("lazy", test)
}

fn program(w: &WorkDir) -> PathBuf {
    c_program(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &repo_root().join("tests/lazy/lazy_memory.c"),
        &w.join("lazy_memory"),
        false,
    )
    .expect("build tests/lazy/lazy_memory.c")
}

/// The test program, dumped: its pid and its child's (both gone; the images in `img`).
fn start_and_dump(w: &WorkDir, mode: &str, dump_args: &[&str]) -> (i32, i32, PathBuf) {
    let exe = program(w);
    let dir = w.path().to_path_buf();
    let mut cmd = Command::new(exe);
    cmd.arg(&dir)
        .arg(MIB)
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = isolate(&mut cmd).spawn().expect("start lazy_memory");
    let pid = child.id() as i32;
    drop(child); // reaped by pid
    let ready = dir.join("ready");
    wait_for("the program to fill its memory", TIMEOUT, || {
        std::fs::read_to_string(&ready).is_ok_and(|s| s.ends_with('\n'))
    });
    let kid: i32 = std::fs::read_to_string(&ready)
        .expect("read ready")
        .trim()
        .parse()
        .expect("the child's pid");
    let img = w.mkdir("img");
    let pid_s = pid.to_string();
    let mut args = vec![
        "dump",
        "-t",
        &pid_s,
        "-D",
        img.to_str().expect("utf-8 path"),
    ];
    args.extend(dump_args);
    let (ok, err) = stasis(&args);
    assert!(ok, "dump failed: {err}");
    assert!(matches!(wait_pid(pid, TIMEOUT), Ok(Waited::Status(_))));
    let _ = wait_pid(kid, TIMEOUT);
    (pid, kid, img)
}

/// `stasis restore --lazy -d` of `img`, logging into `log`.
fn restore_lazy(img: &Path, log: &Path) {
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "--lazy".as_ref(),
        "-d".as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
        "--log-file".as_ref(),
        log.as_os_str(),
    ]);
    assert!(ok, "restore --lazy failed: {err}");
}

/// The page server's pid, from its first log line.
fn server_pid(log: &Path) -> i32 {
    let mut pid = None;
    wait_for("the page server's first log line", TIMEOUT, || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        pid = text
            .lines()
            .find(|l| l.contains("page server serving"))
            .and_then(|l| l.split("pid=").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok());
        pid.is_some()
    });
    pid.unwrap_or(0)
}

/// How the page server ended (it is our child: we are a subreaper, it was orphaned).
fn server_status(pid: i32) -> WaitStatus {
    match wait_pid(pid, TIMEOUT) {
        Ok(Waited::Status(s)) => s,
        other => panic!("page server {pid}: {other:?}"),
    }
}

/// Sends SIGUSR1 to the restored processes and reads what each found in its memory.
fn check_memory(w: &WorkDir, pids: &[i32]) {
    for &p in pids {
        assert!(kill(p, libc::SIGUSR1), "pid {p} is not there");
    }
    for &p in pids {
        let path = w.join(format!("result.{p}"));
        wait_for(&format!("pid {p} to check its memory"), TIMEOUT, || {
            std::fs::read_to_string(&path).is_ok_and(|s| s.ends_with('\n'))
        });
        let result = std::fs::read_to_string(&path).expect("read the result");
        assert_eq!(
            result.trim(),
            "ok",
            "pid {p}'s memory after the lazy restore"
        );
    }
}

fn kill_and_reap(pids: &[i32]) {
    for &p in pids {
        kill(p, libc::SIGKILL);
    }
    for &p in pids {
        let _ = wait_pid(p, TIMEOUT);
    }
}

#[test]
fn every_page_arrives_and_the_server_exits() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("every_page");
    let (pid, kid, img) = start_and_dump(&w, "", &[]);
    let log = w.join("restore.log");
    restore_lazy(&img, &log);
    let server = server_pid(&log);
    check_memory(&w, &[pid, kid]);
    assert_eq!(server_status(server), WaitStatus::Exited(0));
    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(text.contains("every page arrived"), "{text}");
    // After the server is gone (the ranges unregistered), the memory is still right.
    std::fs::remove_file(w.join(format!("result.{pid}"))).expect("rm result");
    std::fs::remove_file(w.join(format!("result.{kid}"))).expect("rm result");
    check_memory(&w, &[pid, kid]);
    kill_and_reap(&[pid, kid]);
}

#[test]
fn memory_dropped_after_the_restore_reads_zero() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("dontneed");
    let (pid, kid, img) = start_and_dump(&w, "dontneed", &[]);
    let log = w.join("restore.log");
    restore_lazy(&img, &log);
    // Right away: the server has most pages still to push.
    check_memory(&w, &[pid, kid]);
    assert_eq!(server_status(server_pid(&log)), WaitStatus::Exited(0));
    kill_and_reap(&[pid, kid]);
}

#[test]
fn corrupted_pages_kill_the_restored_processes() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("corrupted");
    // Not authenticated: the run's CRC is what finds the change.
    let (pid, kid, img) = start_and_dump(&w, "", &["--no-auth"]);
    let pages = std::fs::read_dir(&img)
        .expect("read the images")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("pages-{pid}")))
        })
        .expect("the root's pages file");
    let mut bytes = std::fs::read(&pages).expect("read the pages");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&pages, &bytes).expect("write the pages");
    let log = w.join("restore.log");
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "--lazy".as_ref(),
        "-d".as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
        "--log-file".as_ref(),
        log.as_os_str(),
    ]);
    if ok {
        let server = server_pid(&log);
        // The program touches its memory (its reader thread does already): killed, not run
        // on.
        for p in [pid, kid] {
            kill(p, libc::SIGUSR1);
        }
        assert_eq!(server_status(server), WaitStatus::Exited(1));
    } else {
        // The reader thread touched the corrupted run before the page server took over: the
        // restorer's own serving found it, and the restore failed.
        assert!(err.contains("checksum mismatch"), "{err}");
    }
    for p in [pid, kid] {
        match wait_pid(p, TIMEOUT) {
            Ok(Waited::Status(WaitStatus::Signaled(libc::SIGKILL))) => {}
            // Reaped by the failed restore.
            Ok(Waited::Gone) if !ok => {}
            other => panic!("pid {p}: {other:?}"),
        }
        let result = std::fs::read_to_string(w.join(format!("result.{p}")));
        assert!(
            result.as_deref().map_or(true, |r| r.trim() == "ok"),
            "pid {p} ran on with wrong memory: {result:?}"
        );
    }
    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(
        text.contains("killed the restored process") && text.contains("pages-"),
        "{text}"
    );
}

#[test]
fn a_dead_server_kills_the_restored_processes() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("server_killed");
    let (pid, kid, img) = start_and_dump(&w, "", &[]);
    let log = w.join("restore.log");
    restore_lazy(&img, &log);
    let server = server_pid(&log);
    kill(server, libc::SIGKILL);
    assert_eq!(server_status(server), WaitStatus::Signaled(libc::SIGKILL));
    // Its watchdog kills them rather than let them run on with zero pages.
    for p in [pid, kid] {
        kill(p, libc::SIGUSR1);
    }
    for p in [pid, kid] {
        match wait_pid(p, TIMEOUT) {
            Ok(Waited::Status(WaitStatus::Signaled(libc::SIGKILL))) => {}
            other => panic!("pid {p}: {other:?}"),
        }
        let result = std::fs::read_to_string(w.join(format!("result.{p}")));
        assert!(
            result.as_deref().map_or(true, |r| r.trim() == "ok"),
            "pid {p} ran on with wrong memory: {result:?}"
        );
    }
    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(text.contains("page server died"), "{text}");
}

#[test]
fn a_child_forked_after_the_restore_gets_its_parents_pages() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("fork");
    let (pid, kid, img) = start_and_dump(&w, "fork", &[]);
    let log = w.join("restore.log");
    restore_lazy(&img, &log);
    // The root forks a child at once (pages still missing), which checks its copy.
    check_memory(&w, &[pid, kid]);
    let results = || {
        std::fs::read_dir(w.path())
            .expect("read the work dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("result."))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<Vec<String>>()
    };
    wait_for("the new child's result", TIMEOUT, || {
        let r = results();
        r.len() == 3 && r.iter().all(|s| s.ends_with('\n'))
    });
    for r in results() {
        assert_eq!(r.trim(), "ok", "memory after the lazy restore");
    }
    assert_eq!(server_status(server_pid(&log)), WaitStatus::Exited(0));
    kill_and_reap(&[pid, kid]);
}
