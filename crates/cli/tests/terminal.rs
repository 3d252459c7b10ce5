//! End-to-end tests of jobs on a terminal (issue 11): the test holds pseudo-terminal masters,
//! acting as the user's terminals. A job started by a shell (bash with job control) on one of
//! them is dumped, and restored by `stasis restore` running in ANOTHER terminal (its stdin,
//! and its controlling terminal); then the test types at it:
//!
//! - `shell_job_comes_back_on_another_terminal`: `cat` reads what is typed and writes it back,
//!   with the dumped termios (echo off) on the new terminal; Ctrl-C interrupts it, and
//!   `stasis restore` exits with 130 as a shell would report it. A restore without a terminal
//!   fails, saying what to do.
//! - `ctrl_z_stops_the_job_and_fg_continues_it`: Ctrl-Z stops the restored job and
//!   `stasis restore` with it (SIGSTOP: its shell sees a stopped job, status 147); the shell's
//!   `fg` gives the job the terminal again, and it answers; Ctrl-D ends it.
//! - `restore_onto_a_terminal_given_by_path`: `stasis restore --tty PATH`, run without a
//!   terminal, gives the job a session of its own with that terminal; it answers and Ctrl-C
//!   interrupts it.
//! - `shell_job_in_a_new_pid_namespace`: `stasis restore --pid-ns` of a job dumped with
//!   `--leave-running` (its pid still taken here): it is typed at and answers, Ctrl-Z stops
//!   it and `stasis restore` with it, `fg` continues it, Ctrl-C ends it.
//! - `less_redraws_and_answers_keys`: `less`, restored under another terminal, redraws its
//!   screen there and quits on `q`.
//!
//! The tests need root (`stasis_test_infra::require_root`) and bash; the last one `less`.
//! Work directories of failed tests are kept in `target/tmp/terminal/<test name>/`.

use stasis_test_infra::process::{become_subreaper, isolate, isolate_on_terminal, wait_child_for};
use stasis_test_infra::procfs::exists;
use stasis_test_infra::terminal::Terminal;
use stasis_test_infra::wait::wait_for;
use stasis_test_infra::{require_root, require_tool, WorkDir};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Deadline for a process to get where a test wants it.
const TIMEOUT: Duration = Duration::from_secs(20);

fn work_dir(test: &str) -> WorkDir {
    WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("terminal")
            .join(test),
    )
}

/// Runs `stasis ARGS` without a terminal: whether it succeeded, and its stderr.
fn stasis(args: &[&str]) -> (bool, String) {
    let out = isolate(Command::new(env!("CARGO_BIN_EXE_stasis")).args(args))
        .stdin(Stdio::null())
        .output()
        .expect("run stasis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The children of `pid` (its main thread's).
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Fields 5 (pgid) and 8 (tpgid) of /proc/PID/stat.
fn pgid_tpgid(pid: i32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let f = |n: usize| rest.get(n - 3).and_then(|s| s.parse().ok()).unwrap_or(0);
    (f(5), f(8))
}

/// Starts `job` from bash with job control on `term` (bash leads the session, the job is
/// its foreground group); returns bash and the job's pid once the job has the terminal.
fn start_job(term: &Terminal, job: &str, comm_name: &str) -> (Child, i32) {
    let mut cmd = Command::new("bash");
    cmd.args([
        "--norc",
        "--noprofile",
        "-c",
        &format!("set -m; {job}; exit $?"),
    ])
    .env("TERM", "vt100")
    .stdin(term.stdio())
    .stdout(term.stdio())
    .stderr(term.stdio());
    let bash = isolate_on_terminal(&mut cmd).spawn().expect("start bash");
    let bash_pid = bash.id() as i32;
    let mut job_pid = 0;
    wait_for(&format!("{comm_name} in the foreground"), TIMEOUT, || {
        job_pid = children(bash_pid)
            .into_iter()
            .find(|&c| comm(c) == comm_name)
            .unwrap_or(0);
        job_pid != 0 && pgid_tpgid(job_pid) == (job_pid, job_pid)
    });
    (bash, job_pid)
}

/// Runs `stasis restore -D IMAGES` in `term`, as a shell would: its stdin, stdout and stderr,
/// and its controlling terminal.
fn restore_in(term: &Terminal, images: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stasis"));
    cmd.args(["restore", "-D"])
        .arg(images)
        .stdin(term.stdio())
        .stdout(term.stdio())
        .stderr(term.stdio());
    isolate_on_terminal(&mut cmd)
        .spawn()
        .expect("start stasis restore")
}

/// Runs `stasis restore OPTIONS -D IMAGES` in `term` under a job-control shell (bash `set
/// -m`), which prints `stopped:STATUS` when the job stops (147: Ctrl-Z), continues it with
/// `fg`, and prints `ended:STATUS` when it ends.
fn restore_under_job_shell(term: &Terminal, options: &str, images: &Path) -> Child {
    let mut cmd = Command::new("bash");
    cmd.args([
        "--norc",
        "--noprofile",
        "-c",
        &format!(
            "set -m; {} restore {options} -D {}; echo \"stopped:$?\"; fg; echo \"ended:$?\"",
            env!("CARGO_BIN_EXE_stasis"),
            images.display()
        ),
    ])
    .stdin(term.stdio())
    .stdout(term.stdio())
    .stderr(term.stdio());
    isolate_on_terminal(&mut cmd).spawn().expect("start bash")
}

/// Types "one" and waits for the restored `cat`'s echo and answer, stops it with Ctrl-Z (the
/// job shell reports it), continues it with the shell's `fg` and has it answer "two". `cat`:
/// its pid when it is in our pid namespace (then it must have the terminal again after fg).
fn answer_stop_and_continue(term: &Terminal, cat: Option<i32>) {
    term.type_in(b"one\n");
    term.wait_output("cat's answer", |t| t.matches("one").count() >= 2);
    term.type_in(b"\x1a");
    term.wait_output("the shell's report of a stopped job", |t| {
        t.contains("stopped:147")
    });
    if let Some(cat) = cat {
        wait_for("cat in the foreground again", TIMEOUT, || {
            pgid_tpgid(cat) == (cat, cat)
        });
    }
    term.type_in(b"two\n");
    term.wait_output("cat's answer after fg", |t| t.matches("two").count() >= 2);
}

fn dump(pid: i32, images: &Path) {
    let (ok, err) = stasis(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        images.to_str().expect("a UTF-8 path"),
    ]);
    assert!(ok, "dump failed: {err}");
}

#[test]
fn shell_job_comes_back_on_another_terminal() {
    if !require_root() || !require_tool("bash") {
        return;
    }
    become_subreaper();
    let w = work_dir("shell_job");
    let images = w.join("images");
    let a = Terminal::open(24, 80);
    let (mut bash, cat) = start_job(&a, "cat", "cat");
    a.type_in(b"hello\n");
    a.wait_output("cat's answer", |t| t.matches("hello").count() >= 2);
    // Echo off: the job's termios must come back on the new terminal.
    let mut t = stasis_sys::tty::tcgetattr(a.slave.as_fd()).expect("terminal call");
    t.lflag &= !libc::ECHO;
    stasis_sys::tty::tcsetattr(a.slave.as_fd(), &t).expect("terminal call");
    dump(cat, &images);
    // bash reaps it and exits.
    let _ = wait_child_for(&mut bash, TIMEOUT);
    assert!(!exists(cat), "the dump did not kill cat");

    // No terminal: refused, saying what to do.
    let (ok, err) = stasis(&["restore", "-D", images.to_str().expect("a UTF-8 path")]);
    assert!(!ok, "a restore without a terminal succeeded");
    assert!(
        err.contains("a terminal outside the dumped tree") && err.contains("--tty PATH"),
        "{err}"
    );

    let b = Terminal::open(30, 100);
    let mut restore = restore_in(&b, &images);
    wait_for("cat restored", TIMEOUT, || {
        exists(cat) && comm(cat) == "cat" && pgid_tpgid(cat) == (cat, cat)
    });
    let t = stasis_sys::tty::tcgetattr(b.slave.as_fd()).expect("terminal call");
    assert_eq!(t.lflag & libc::ECHO, 0, "the job's termios (echo off)");
    b.clear();
    b.type_in(b"world\n");
    b.wait_output("cat's answer on the new terminal", |t| t.contains("world"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.text().matches("world").count(), 1, "{:?}", b.text());
    // Ctrl-C interrupts it; stasis restore reports it as a shell would.
    b.type_in(b"\x03");
    let status = wait_child_for(&mut restore, TIMEOUT)
        .expect("wait for stasis restore")
        .expect("stasis restore did not exit after Ctrl-C");
    assert_eq!(
        status.code(),
        Some(130),
        "{status:?}; terminal: {:?}",
        b.text()
    );
    assert!(!exists(cat) || comm(cat) != "cat");
}

#[test]
fn ctrl_z_stops_the_job_and_fg_continues_it() {
    if !require_root() || !require_tool("bash") {
        return;
    }
    become_subreaper();
    let w = work_dir("ctrl_z");
    let images = w.join("images");
    let a = Terminal::open(24, 80);
    let (mut bash, cat) = start_job(&a, "cat", "cat");
    dump(cat, &images);
    let _ = wait_child_for(&mut bash, TIMEOUT);

    // stasis restore runs under a shell-like parent in the terminal's session: bash, which
    // reports the job's stop and continues it with fg.
    let b = Terminal::open(24, 80);
    let mut shell = restore_under_job_shell(&b, "", &images);
    wait_for("cat restored in the foreground", TIMEOUT, || {
        exists(cat) && comm(cat) == "cat" && pgid_tpgid(cat) == (cat, cat)
    });
    answer_stop_and_continue(&b, Some(cat));
    b.type_in(b"\x04");
    b.wait_output("the job's end", |t| t.contains("ended:0"));
    let status = wait_child_for(&mut shell, TIMEOUT).expect("wait for bash");
    assert!(status.is_some(), "bash did not exit");
}

#[test]
fn shell_job_in_a_new_pid_namespace() {
    if !require_root() || !require_tool("bash") {
        return;
    }
    become_subreaper();
    let w = work_dir("pid_ns");
    let images = w.join("images");
    let a = Terminal::open(24, 80);
    let (mut bash, cat) = start_job(&a, "cat", "cat");
    // Left running: its pid stays taken here, so only a new pid namespace can restore it.
    let (ok, err) = stasis(&[
        "dump",
        "--leave-running",
        "-t",
        &cat.to_string(),
        "-D",
        images.to_str().expect("a UTF-8 path"),
    ]);
    assert!(ok, "dump failed: {err}");

    let b = Terminal::open(24, 80);
    let mut shell = restore_under_job_shell(&b, "--pid-ns", &images);
    // Typed at: the echo, and the answer of the restored cat; Ctrl-Z stops the job, and
    // stasis restore with it; fg continues both.
    answer_stop_and_continue(&b, None);
    // Ctrl-C interrupts it.
    b.type_in(b"\x03");
    b.wait_output("the job's end", |t| t.contains("ended:130"));
    let status = wait_child_for(&mut shell, TIMEOUT).expect("wait for bash");
    assert!(status.is_some(), "bash did not exit");
    // The original ran on, undisturbed, on its own terminal.
    assert!(exists(cat) && comm(cat) == "cat");
    a.type_in(b"\x04");
    let _ = wait_child_for(&mut bash, TIMEOUT);
}

#[test]
fn less_redraws_and_answers_keys() {
    if !require_root() || !require_tool("bash") || !require_tool("less") {
        return;
    }
    become_subreaper();
    let w = work_dir("less");
    let images = w.join("images");
    let text: String = (1..=200).map(|i| format!("line number {i}\n")).collect();
    std::fs::write(w.join("text"), text).expect("terminal call");
    let a = Terminal::open(24, 80);
    let (mut bash, less) = start_job(&a, &format!("less {}", w.join("text").display()), "less");
    a.wait_output("less's first screen", |t| t.contains("line number 20"));
    dump(less, &images);
    let _ = wait_child_for(&mut bash, TIMEOUT);

    let b = Terminal::open(40, 100);
    let mut restore = restore_in(&b, &images);
    // A taller terminal: less redraws with more lines.
    b.wait_output("less's screen redrawn", |t| t.contains("line number 30"));
    b.clear();
    b.type_in(b" ");
    b.wait_output("the next page", |t| t.contains("line number 60"));
    b.type_in(b"q");
    let status = wait_child_for(&mut restore, TIMEOUT)
        .expect("wait for stasis restore")
        .expect("stasis restore did not exit after q");
    assert!(
        status.success(),
        "{status:?} (signal {:?}); terminal: {:?}",
        status.signal(),
        b.text()
    );
}

#[test]
fn restore_onto_a_terminal_given_by_path() {
    if !require_root() || !require_tool("bash") {
        return;
    }
    become_subreaper();
    let w = work_dir("tty_path");
    let images = w.join("images");
    let a = Terminal::open(24, 80);
    let (mut bash, cat) = start_job(&a, "cat", "cat");
    dump(cat, &images);
    let _ = wait_child_for(&mut bash, TIMEOUT);
    assert!(!exists(cat), "the dump did not kill cat");

    let b = Terminal::open(24, 80);
    let path = format!("/dev/pts/{}", b.index);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stasis"));
    cmd.args(["restore", "--tty", &path, "-D"])
        .arg(&images)
        .stdin(Stdio::null());
    let mut restore = isolate(&mut cmd).spawn().expect("start stasis restore");
    wait_for("cat restored in its own session", TIMEOUT, || {
        exists(cat) && comm(cat) == "cat" && pgid_tpgid(cat) == (cat, cat)
    });
    b.type_in(b"abc\n");
    // The echo, and cat's answer.
    b.wait_output("cat's answer", |t| t.matches("abc").count() >= 2);
    b.type_in(b"\x03");
    let status = wait_child_for(&mut restore, TIMEOUT)
        .expect("wait for stasis restore")
        .expect("stasis restore did not exit after Ctrl-C");
    assert_eq!(
        status.code(),
        Some(130),
        "{status:?}; terminal: {:?}",
        b.text()
    );
}

/// A pty pair whose slave (canonical mode) has typed lines its program has not read.
const UNREAD_LINES: &str = "import os, sys, time\n\
    m, s = os.openpty()\n\
    os.write(m, b'typed ahead\\n')\n\
    time.sleep(0.2)\n\
    open('ready', 'w').close()\n\
    time.sleep(1000)\n\
    \n";

#[test]
fn unread_lines_of_a_pty_in_canonical_mode_are_refused_by_name() {
    if !require_root() || !require_tool("python3") {
        return;
    }
    become_subreaper();
    let w = work_dir("unread_lines");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-I", "-c", UNREAD_LINES])
        .current_dir(&*w)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = isolate(&mut cmd).spawn().expect("start python3");
    let pid = child.id() as i32;
    wait_for("the program's pty", TIMEOUT, || w.join("ready").exists());
    let images = w.join("images");
    let (ok, err) = stasis(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        images.to_str().expect("a UTF-8 path"),
    ]);
    assert!(!ok, "the dump succeeded");
    assert!(
        err.contains("in canonical mode") && err.contains("12 bytes of input"),
        "{err}"
    );
    assert!(exists(pid), "the refused dump killed the program");
    let _ = child.kill();
    let _ = child.wait();
}
