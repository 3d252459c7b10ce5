//! Restores through stasisd under faults (`STASIS_TEST_FAULT`, test builds of stasisd: see
//! crates/engine/src/fault.rs and DEVELOPERS.md, "Fault injection"): a user's restore through
//! the daemon fails, or the process that runs it (the restorer the worker forks to become the
//! user) is killed, at the first and last point of each restore phase (`STASIS_FAULTS_FULL=1`:
//! at every point). Each time the client gets a clear error, no process of the images is left
//! and its pid is free, the worker ends and the daemon serves the next connection; the images
//! restore afterwards.
//!
//! A test binary of its own: it makes itself a child subreaper (restored processes and what a
//! killed restorer leaves are reparented to it, to be reaped), which the other tests of the
//! daemon must not be.
#![allow(clippy::unwrap_used)] // a test that cannot set up fails

mod common;

use common::{c_program_in_run, send_hello, stasis_cli, user_log, user_work_dir, Stasisd};
use stasis_client::protocol::Message;
use stasis_test_infra::process::{
    become_subreaper, describe_exit_status, kill, spawn_isolated, try_wait_pid, wait_child_for,
    Waited,
};
use stasis_test_infra::require_root;
use stasis_test_infra::user::test_user;
use stasis_test_infra::wait::wait_until;
use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const RUN: &str = "restore_faults";
const SOCKETS: &str = "restore_faults";

fn full_sweep() -> bool {
    std::env::var("STASIS_FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// How a run of the user's `stasis` ended.
struct Out {
    ok: bool,
    stderr: String,
}

/// Runs the `stasis` CLI as the test user against the daemon at `socket` (bounded: 60 s).
fn user_cli(dir: &Path, socket: &Path, args: &[&str]) -> Out {
    let err_path = dir.join("cli.err");
    let err = fs::File::create(&err_path).unwrap();
    let mut cmd = test_user().command(stasis_cli());
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("STASIS_SOCKET", socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let mut child = stasis_test_infra::process::isolate(&mut cmd)
        .spawn()
        .expect("run stasis");
    let st = match wait_child_for(&mut child, Duration::from_secs(60)) {
        Ok(Some(st)) => st,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stasis {args:?} hung");
        }
    };
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&err_path);
    Out {
        ok: st.success(),
        stderr,
    }
}

/// Waits until `pid` is gone (reaping it when it comes back to us), killing it first when
/// `kill_it`; else says what is left.
fn gone(pid: i32, kill_it: bool) -> Result<(), String> {
    if kill_it {
        kill(pid, libc::SIGKILL);
    }
    let ok = wait_until(Duration::from_secs(10), || {
        matches!(try_wait_pid(pid), Ok(Waited::Gone | Waited::Status(_)))
    });
    if ok {
        return Ok(());
    }
    Err(format!(
        "pid {pid} left: {}",
        stasis_test_infra::procfs::describe_proc(pid)
    ))
}

/// The daemon answers a new connection (a worker says Welcome to a Hello).
fn serves(d: &Stasisd) -> Result<(), String> {
    let conn =
        stasis_sys::socket::seqpacket_connect(&d.socket).map_err(|e| format!("connect: {e}"))?;
    send_hello(&conn);
    match stasis_client::protocol::recv(conn.as_fd()) {
        Ok((Message::Welcome { .. }, _)) => Ok(()),
        other => Err(format!("expected Welcome, got {other:?}")),
    }
}

#[test]
fn a_restore_through_stasisd_failing_or_killed_at_any_point_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let dir = user_work_dir(RUN, "sweep");
    let u = test_user();
    // The ticker alone (no need of libstasis here).
    let ticker_exe = c_program_in_run(RUN, "tests/selfdump/ticker.c", "ticker", false)
        .expect("build the ticker");

    // The user's ticker, dumped (and killed) by the user through a clean daemon.
    let d = Stasisd::start(SOCKETS, &dir.join("stasisd-dump.log"), &[]);
    let counter = dir.join("counter");
    let log = dir.join("ticker.log");
    let mut cmd = u.command(&ticker_exe);
    cmd.arg(&counter);
    let mut ticker = spawn_isolated(&mut cmd, user_log(&log, u.uid, u.gid)).expect("ticker");
    let pid = ticker.id() as i32;
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("READY ")),
        "the ticker did not start"
    );
    let mut dir = dir;
    let images = dir.join("img");
    fs::create_dir(&images).unwrap();
    std::os::unix::fs::chown(&images, Some(u.uid), Some(u.gid)).unwrap();
    let img = images.to_str().unwrap().to_string();
    let out = user_cli(
        &dir,
        &d.socket,
        &["dump", "-t", &pid.to_string(), "-D", &img],
    );
    assert!(out.ok, "the user's dump: {}", out.stderr);
    let st = ticker.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "{}",
        describe_exit_status(st)
    );
    d.stop();
    let restore = ["restore", "-D", img.as_str(), "--detach"];

    // The points of a clean restore, counted by the restorer (running as the user, it
    // writes the count into the user's directory).
    let count = dir.join("points");
    let d = Stasisd::start_with_env(
        SOCKETS,
        &dir.join("stasisd-count.log"),
        &[],
        &[("STASIS_TEST_FAULT", &format!("count:{}", count.display()))],
    );
    let out = user_cli(&dir, &d.socket, &restore);
    assert!(
        out.ok,
        "the counted restore: {}\n{}",
        out.stderr,
        d.log_text()
    );
    gone(pid, true).expect("the restored ticker ends");
    d.stop();
    let mut points: BTreeMap<String, u64> = BTreeMap::new();
    for line in fs::read_to_string(&count).expect("the count").lines() {
        let (phase, n) = line.split_once(' ').expect("PHASE N");
        *points.entry(phase.into()).or_default() += n.parse::<u64>().expect("N");
    }
    assert!(
        points.contains_key("rebuild"),
        "no count of the restore's phases: {points:?}"
    );

    let started = Instant::now();
    let mut tried = 0;
    let mut not_reached = 0;
    let mut failures = Vec::new();
    for (phase, &c) in &points {
        let ns: Vec<u64> = if full_sweep() {
            (1..=c).collect()
        } else {
            let mut v = vec![1, c];
            v.dedup();
            v
        };
        for n in ns.into_iter().filter(|&n| n > 0) {
            for action in ["fail", "kill"] {
                let fault = format!("{phase}:{n}:{action}");
                tried += 1;
                let dlog = dir.join("stasisd-fault.log");
                let d =
                    Stasisd::start_with_env(SOCKETS, &dlog, &[], &[("STASIS_TEST_FAULT", &fault)]);
                let out = user_cli(&dir, &d.socket, &restore);
                let mut problems = Vec::new();
                if out.ok {
                    // Past the end of this run's phase: a complete restore.
                    not_reached += 1;
                    if let Err(e) = gone(pid, true) {
                        problems.push(e);
                    }
                } else {
                    let clear = match action {
                        "fail" => out.stderr.contains("fault injected"),
                        _ => out.stderr.contains("restorer") || out.stderr.contains("worker"),
                    };
                    if !clear {
                        problems.push(format!("unclear error: {:?}", out.stderr));
                    }
                    if let Err(e) = gone(pid, false) {
                        problems.push(e);
                        let _ = gone(pid, true);
                    }
                }
                if !wait_until(Duration::from_secs(10), || d.workers().is_empty()) {
                    problems.push(format!("workers left: {:?}", d.workers()));
                }
                if let Err(e) = serves(&d) {
                    problems.push(format!("the daemon: {e}"));
                }
                if !matches!(stasis_test_infra::procfs::state(d.pid), Some(s) if s != 'Z') {
                    problems.push("the daemon is gone".into());
                }
                if problems.is_empty() {
                    d.stop();
                } else {
                    failures.push(format!(
                        "{fault}: {}\n{}",
                        problems.join("; "),
                        d.log_text()
                    ));
                }
            }
        }
    }
    eprintln!(
        "restore points through stasisd: {points:?}, {} in all; tried {tried} ({not_reached} \
         not reached) in {:.1} s",
        points.values().sum::<u64>(),
        started.elapsed().as_secs_f64()
    );
    // The images are intact and the pid free: a clean daemon restores them.
    let d = Stasisd::start(SOCKETS, &dir.join("stasisd-after.log"), &[]);
    let out = user_cli(&dir, &d.socket, &restore);
    if !out.ok {
        failures.push(format!("the restore after the faults: {}", out.stderr));
    } else if let Err(e) = gone(pid, true) {
        failures.push(e);
    }
    d.stop();
    if !failures.is_empty() {
        dir.keep();
        panic!(
            "{} faults went wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
