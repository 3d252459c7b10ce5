//! Negative end-to-end tests of the `stasis` binary: what it must refuse, and
//! how (non-zero exit, one clear line on stderr, no panic, nothing left
//! behind).
//!
//! The tests need root: without it each test fails under CI (`CI=true`) and
//! elsewhere prints a notice and returns (`stasis_test_infra::require_root`).
//! They run one at a time (a lock), because some of them check that no stray
//! child process of ours is left.
//!
//! Work directories of failed tests are kept in
//! `target/tmp/negative/<test name>/` for inspection.

use stasis_test_infra::process::{
    append_log, become_subreaper, describe_exit_status, describe_wait_status, isolate, kill,
    live_children, spawn_isolated, try_wait_pid, wait_pid, wait_sleeping, WaitStatus, Waited,
};
use stasis_test_infra::procfs::{self, describe_proc, proc_state, ProcState};
use stasis_test_infra::wait::{wait_for, POLL};
use stasis_test_infra::{require_root, WorkDir};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Deadline for one stasis command.
const STASIS_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Process helpers.

/// Takes the lock that serializes these tests, makes this process a child
/// subreaper (so that whatever stasis leaves behind ends up as our child,
/// where the tests look for it) and makes the test's work directory,
/// `target/tmp/negative/<test>` (kept when the test fails). `None` when the
/// test cannot run (see `require_root`).
fn start(test: &str) -> Option<(MutexGuard<'static, ()>, WorkDir)> {
    if !require_root() {
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    // A test that failed before may have left processes behind (they are
    // our children, thanks to the subreaper): don't let them confuse the
    // next test.
    for (pid, comm) in live_children() {
        eprintln!("{test}: killing pid {pid} ({comm}) left over by an earlier test");
        kill(pid, libc::SIGKILL);
        let _ = wait_pid(pid, Duration::from_secs(5));
    }
    let dir = WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("negative")
            .join(test),
    );
    Some((guard, dir))
}

/// Err unless `pid` exists, is neither stopped nor traced, nor a zombie.
fn check_running(pid: i32) -> Result<(), String> {
    match proc_state(pid) {
        ProcState::Running => Ok(()),
        ProcState::Absent => Err(format!("pid {pid} does not exist")),
        ProcState::Zombie | ProcState::Busy => {
            Err(format!("pid {pid} is not running: {}", describe_proc(pid)))
        }
    }
}

/// A process of ours, killed and reaped on drop unless already gone.
struct Proc {
    pid: i32,
    alive: bool,
}

impl Proc {
    fn kill_and_reap(&mut self) {
        if self.alive {
            kill(self.pid, libc::SIGKILL);
            let _ = wait_pid(self.pid, Duration::from_secs(5));
            self.alive = false;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

// ---------------------------------------------------------------------------
// Work directories, programs, stasis.

/// Starts `prog args` the way the zdtm harness starts its programs: new
/// session, cwd = the work dir, stdin /dev/null, output appended to
/// `name.log`. The process is reaped by pid (`wait_pid`), not through `Child`.
#[allow(clippy::zombie_processes)]
fn spawn_program(w: &WorkDir, name: &str, prog: &str, args: &[&str]) -> Proc {
    let log = append_log(&w.join(format!("{name}.log"))).expect("open program log");
    let child = spawn_isolated(Command::new(prog).args(args).current_dir(w), log)
        .unwrap_or_else(|e| panic!("cannot start {prog}: {e}"));
    Proc {
        pid: child.id() as i32,
        alive: true,
    }
}

/// Waits until `pid` sleeps (with `comm` when given): it is in its wait.
/// Panics after 10 s.
fn wait_asleep(pid: i32, comm: Option<&str>) {
    if let Err(e) = wait_sleeping(pid, comm, Duration::from_secs(10)) {
        panic!("{e}");
    }
}

fn spawn_sleep(w: &WorkDir) -> Proc {
    let p = spawn_program(w, "sleep", "sleep", &["100"]);
    wait_asleep(p.pid, Some("sleep"));
    p
}

/// Runs python3 `script`, which sets up its files and the list `fds` of the
/// descriptors the error should name; then it writes its pid and `fds` into
/// the file `fds` (through a rename, so that it appears complete) and
/// sleeps. Returns the process, once it sleeps, and the fds.
fn spawn_python(w: &WorkDir, script: &str) -> (Proc, Vec<i32>) {
    let script = format!(
        "import os, time\n\
         {script}\n\
         with open('fds.tmp', 'w') as f:\n    \
             f.write(' '.join(str(n) for n in [os.getpid()] + fds) + '\\n')\n\
         os.rename('fds.tmp', 'fds')\n\
         time.sleep(100)\n"
    );
    let p = spawn_program(w, "python", "python3", &["-c", &script]);
    let pid = p.pid;
    let fds_path = w.join("fds");
    wait_for(
        "python3 to set up its files",
        Duration::from_secs(10),
        || {
            if fds_path.exists() {
                return true;
            }
            assert_eq!(
                try_wait_pid(pid),
                Ok(Waited::Alive),
                "python3 ended before setting up its files; log:\n{}",
                fs::read_to_string(w.join("python.log")).unwrap_or_default()
            );
            false
        },
    );
    let nums: Vec<i32> = fs::read_to_string(&fds_path)
        .expect("read fds")
        .split_whitespace()
        .map(|s| s.parse().expect("a number"))
        .collect();
    assert_eq!(
        nums.first(),
        Some(&pid),
        "python3 runs with another pid than the one spawned (a wrapper that does not exec?)"
    );
    wait_asleep(pid, None);
    (p, nums[1..].to_vec())
}

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// Killed after STASIS_TIMEOUT.
    timed_out: bool,
    /// The watched pid came to life (see `stasis_watch`).
    restored: bool,
}

impl Out {
    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            describe_exit_status(self.status),
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }
}

/// `s`, shortened to its first 40 lines for error messages.
fn clip(s: &str) -> String {
    const MAX_LINES: usize = 40;
    let n = s.lines().count();
    if n <= MAX_LINES {
        return s.to_string();
    }
    let head: Vec<&str> = s.lines().take(MAX_LINES).collect();
    format!("{}\n[... {} more lines]", head.join("\n"), n - MAX_LINES)
}

/// Runs `stasis ARGS` (cwd = the work dir) with a deadline; panics when it
/// does not finish in time.
fn stasis<S: AsRef<OsStr>>(w: &WorkDir, args: &[S]) -> Out {
    let out = stasis_watch(w, args, None);
    if out.timed_out {
        panic!(
            "stasis {:?} did not finish within {STASIS_TIMEOUT:?}: {}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            out.describe()
        );
    }
    out
}

/// `stasis dump -t PID -D IMG --no-auth [--leave-running]`: the images these tests corrupt
/// are not authenticated, so that a restore meets the format's own checks (authenticated
/// images are refused at the first changed byte: `crates/daemon/tests/authenticated_images.rs`
/// and the image crate's tests).
fn dump(w: &WorkDir, pid: i32, img: &Path, leave_running: bool) -> Out {
    let pid = pid.to_string();
    let mut args = vec![
        OsStr::new("dump"),
        "-t".as_ref(),
        pid.as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
        "--no-auth".as_ref(),
    ];
    if leave_running {
        args.push("--leave-running".as_ref());
    }
    stasis(w, &args)
}

/// Runs `stasis ARGS` (cwd = the work dir) with a deadline (after which it
/// is killed and `timed_out` set). With `watch`, a pid that should NOT come
/// to life: if a process with it shows up running (a restore that should
/// have been refused went through), it is killed, so that an attached
/// restore returns, and `restored` is set.
fn stasis_watch<S: AsRef<OsStr>>(w: &WorkDir, args: &[S], watch: Option<i32>) -> Out {
    let out_path = w.join(".stasis.out");
    let err_path = w.join(".stasis.err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(args)
        .current_dir(w)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("start stasis");
    let start = Instant::now();
    let mut timed_out = false;
    let mut restored = false;
    let mut seen_running = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for stasis") {
            break status;
        }
        if start.elapsed() > STASIS_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed stasis");
        }
        if let Some(pid) = watch {
            if check_running(pid).is_ok() {
                seen_running += 1;
                if seen_running >= 3 {
                    restored = true;
                    kill(pid, libc::SIGKILL);
                }
            } else {
                seen_running = 0;
            }
        }
        sleep(POLL);
    };
    let read = |p: &Path| {
        let s = String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        let _ = fs::remove_file(p);
        s
    };
    Out {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
        timed_out,
        restored,
    }
}

/// The contract for every refusal: non-zero exit, exactly one non-empty
/// line on stderr, no panic.
fn check_clean_failure(what: &str, out: &Out) -> Result<(), String> {
    if out.timed_out {
        return Err(format!(
            "{what}: did not finish within {STASIS_TIMEOUT:?}: {}",
            out.describe()
        ));
    }
    if out.restored {
        return Err(format!(
            "{what}: the process was restored and ran (killed by the test): {}",
            out.describe()
        ));
    }
    if out.status.success() {
        return Err(format!(
            "{what}: succeeded but should have failed: {}",
            out.describe()
        ));
    }
    if out.stderr.contains("panicked") || out.status.code() == Some(101) {
        return Err(format!("{what}: panicked: {}", out.describe()));
    }
    if out.status.signal().is_some() {
        return Err(format!("{what}: died of a signal: {}", out.describe()));
    }
    let err = out.stderr.trim_end();
    if err.trim().is_empty() {
        return Err(format!(
            "{what}: failed without an error message: {}",
            out.describe()
        ));
    }
    if err.lines().count() != 1 {
        return Err(format!(
            "{what}: the error should be one line on stderr: {}",
            out.describe()
        ));
    }
    Ok(())
}

fn assert_ok(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Dumps a fresh `sleep 100` (killed by the dump) into `w/img`.
fn dumped_sleep(w: &WorkDir) -> (i32, PathBuf) {
    let img = w.mkdir("img");
    let mut p = spawn_sleep(w);
    let pid = p.pid;
    let out = dump(w, pid, &img, false);
    assert!(
        out.status.success(),
        "stasis dump of sleep (pid {pid}) failed: {}",
        out.describe()
    );
    match wait_pid(pid, Duration::from_secs(5)) {
        Ok(Waited::Status(st)) => assert!(
            st == WaitStatus::Signaled(libc::SIGKILL),
            "after the dump, sleep should have died of SIGKILL but it {}",
            describe_wait_status(st)
        ),
        other => panic!("after the dump, sleep (pid {pid}) was not reaped: {other:?}"),
    }
    p.alive = false;
    assert!(
        img.join("inventory.img").exists(),
        "the dump wrote no inventory.img"
    );
    (pid, img)
}

/// Err (after killing it) if a process with `pid` exists after a refused
/// restore; zombies of ours are reaped.
fn check_no_process(what: &str, pid: i32) -> Result<(), String> {
    match try_wait_pid(pid)? {
        Waited::Gone | Waited::Status(_) => Ok(()),
        Waited::Alive => {
            let state = describe_proc(pid);
            kill(pid, libc::SIGKILL);
            let _ = wait_pid(pid, Duration::from_secs(5));
            Err(format!(
                "{what}: a process with pid {pid} was left behind ({state})"
            ))
        }
    }
}

/// A pid that no process has right now.
fn unused_pid() -> i32 {
    let mut child = Command::new("true").spawn().expect("start true");
    let pid = child.id() as i32;
    child.wait().expect("wait for true");
    assert!(!procfs::exists(pid));
    pid
}

// ---------------------------------------------------------------------------
// (a) dump of a pid that does not exist.

#[test]
fn dump_missing_pid_fails() {
    let Some((_lock, w)) = start("dump_missing_pid_fails") else {
        return;
    };
    let img = w.mkdir("img");
    let pid = unused_pid();
    let out = dump(&w, pid, &img, false);
    assert_ok(check_clean_failure(
        &format!("dump of missing pid {pid}"),
        &out,
    ));
    assert!(
        out.stderr.contains(&pid.to_string()),
        "the error should name pid {pid}: {}",
        out.describe()
    );
    assert!(
        !img.join("inventory.img").exists(),
        "a failed dump wrote {}",
        img.join("inventory.img").display()
    );
}

// ---------------------------------------------------------------------------
// (b) restore while the pid is in use.

#[test]
fn restore_pid_in_use_fails() {
    let Some((_lock, w)) = start("restore_pid_in_use_fails") else {
        return;
    };
    let img = w.mkdir("img");
    let mut p = spawn_sleep(&w);
    let pid = p.pid;
    let out = dump(&w, pid, &img, true);
    assert!(
        out.status.success(),
        "stasis dump --leave-running of sleep (pid {pid}) failed: {}",
        out.describe()
    );
    assert_ok(check_running(pid).map_err(|e| format!("after dump --leave-running: {e}")));

    let out = stasis(&w, &[OsStr::new("restore"), "-D".as_ref(), img.as_os_str()]);
    assert_ok(check_clean_failure(
        &format!("restore while pid {pid} is in use"),
        &out,
    ));
    assert!(
        out.stderr.contains("in use") && out.stderr.contains(&pid.to_string()),
        "the error should say that pid {pid} is in use: {}",
        out.describe()
    );

    // The original still runs, undisturbed, as our child.
    assert_eq!(
        try_wait_pid(pid),
        Ok(Waited::Alive),
        "the original sleep (pid {pid}) is gone after the refused restore"
    );
    assert_ok(check_running(pid).map_err(|e| format!("after the refused restore: {e}")));
    // Nothing else of ours is left: stasis exited, and anything it started
    // would have been reparented to us (subreaper).
    let strays: Vec<_> = live_children()
        .into_iter()
        .filter(|(c, _)| *c != pid)
        .collect();
    for (c, _) in &strays {
        kill(*c, libc::SIGKILL);
        let _ = wait_pid(*c, Duration::from_secs(5));
    }
    assert!(
        strays.is_empty(),
        "the refused restore left processes behind: {strays:?}"
    );
    p.kill_and_reap();
}

// ---------------------------------------------------------------------------
// (c) corrupted images.

#[derive(Clone, Copy, Debug)]
enum Corruption {
    /// One byte in the middle of the file inverted.
    FlipMiddle,
    /// The file cut to half its size.
    TruncateHalf,
    /// The format version field changed (header checksum fixed up, so that
    /// it is the version check that must catch it).
    Version,
}

const MAGIC: &[u8; 8] = b"STASISIM";
const HEADER_LEN: usize = 32;

/// Applies `c` to `path`; false when it does not apply to this file.
fn corrupt(path: &Path, c: Corruption) -> bool {
    let mut b = fs::read(path).expect("read image file");
    match c {
        Corruption::FlipMiddle => {
            if b.is_empty() {
                return false;
            }
            let mid = b.len() / 2;
            b[mid] ^= 0xff;
        }
        Corruption::TruncateHalf => {
            if b.is_empty() {
                return false;
            }
            b.truncate(b.len() / 2);
        }
        Corruption::Version => {
            // The common header (crates/image/src/frame.rs): magic[8] version:u32 kind:u32
            // payload_len:u64 payload_crc:u32 header_crc:u32 (crc32c of the
            // first 28 bytes), little-endian.
            if b.len() < 12 {
                return false;
            }
            let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
            b[8..12].copy_from_slice(&v.wrapping_add(1).to_le_bytes());
            if b.len() >= HEADER_LEN && &b[0..8] == MAGIC {
                let crc = crc32c::crc32c(&b[0..28]);
                b[28..32].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    fs::write(path, b).expect("write corrupted image file");
    true
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir copy");
    for e in fs::read_dir(from).expect("read images dir").flatten() {
        if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            fs::copy(e.path(), to.join(e.file_name())).expect("copy image file");
        }
    }
}

#[test]
fn corrupted_images_are_refused() {
    let Some((_lock, w)) = start("corrupted_images_are_refused") else {
        return;
    };
    let (pid, img) = dumped_sleep(&w);

    // Control: the unmodified images restore (else the refusals below would
    // prove nothing).
    let out = stasis(
        &w,
        &[
            OsStr::new("restore"),
            "-D".as_ref(),
            img.as_os_str(),
            "--detach".as_ref(),
        ],
    );
    let control = check_running(pid);
    let mut restored = Proc { pid, alive: true };
    assert!(
        out.status.success() && control.is_ok(),
        "control: restore --detach of the unmodified images failed ({control:?}): {}",
        out.describe()
    );
    restored.kill_and_reap();

    let mut files: Vec<String> = fs::read_dir(&img)
        .expect("read images dir")
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the dump wrote no files");

    let mut failures = Vec::new();
    for file in &files {
        for c in [
            Corruption::FlipMiddle,
            Corruption::TruncateHalf,
            Corruption::Version,
        ] {
            let what = format!("{file} {c:?}");
            let dir = w.join(format!("bad-{file}-{c:?}"));
            copy_dir(&img, &dir);
            if !corrupt(&dir.join(file), c) {
                continue;
            }
            let out = stasis_watch(
                &w,
                &[OsStr::new("restore"), "-D".as_ref(), dir.as_os_str()],
                Some(pid),
            );
            let mut r = check_clean_failure(&format!("restore with {what}"), &out);
            if r.is_ok() && !out.stderr.contains(file.as_str()) {
                r = Err(format!(
                    "restore with {what}: the error should name {file}: {}",
                    out.describe()
                ));
            }
            if r.is_ok()
                && matches!(c, Corruption::Version)
                && !out.stderr.to_lowercase().contains("version")
            {
                r = Err(format!(
                    "restore with {what}: the error should say it is about the version: {}",
                    out.describe()
                ));
            }
            if let Err(e) = r {
                failures.push(e);
            }
            if let Err(e) = check_no_process(&format!("restore with {what}"), pid) {
                failures.push(e);
            }
            let strays = live_children();
            if !strays.is_empty() {
                for (c, _) in &strays {
                    kill(*c, libc::SIGKILL);
                    let _ = wait_pid(*c, Duration::from_secs(5));
                }
                failures.push(format!(
                    "restore with {what} left processes behind: {strays:?}"
                ));
            }

            let out = stasis_watch(&w, &[OsStr::new("show"), dir.as_os_str()], None);
            if let Err(e) = check_clean_failure(&format!("show with {what}"), &out) {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) with corrupted images:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// (d) a resource stasis does not support: a unix socket.

/// Whether `text` names one of `fds` as "fd N" (also "fd=N", "fd: N",
/// "fd #N", ".../fd/N").
fn names_fd(text: &str, fds: &[i32]) -> bool {
    let lower = text.to_lowercase();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("fd") {
        rest = &rest[i + 2..];
        let digits: String = rest
            .trim_start_matches([' ', ':', '=', '#', '/'])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if digits.parse::<i32>().is_ok_and(|n| fds.contains(&n)) {
            return true;
        }
    }
    false
}

/// A python3 that connected to the unix listener at `outside.sock` (held by this test process,
/// outside the dumped tree), whose peer (accepted here) queued `hello` for it. On SIGUSR1 it
/// reads its socket to the end and writes what it got, then `EOF`, into `result`, and exits.
fn spawn_outside_client(w: &WorkDir) -> (Proc, Vec<i32>, std::os::unix::net::UnixStream) {
    let path = w.join("outside.sock");
    let _ = fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind outside.sock");
    let script = "import socket, signal\n\
                  s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
                  s.connect('outside.sock')\n\
                  def done(*_):\n    \
                      got = b''\n    \
                      while True:\n        \
                          b = s.recv(100)\n        \
                          if not b: break\n        \
                          got += b\n    \
                      open('result', 'wb').write(got + b'EOF')\n    \
                      os._exit(0)\n\
                  signal.signal(signal.SIGUSR1, done)\n\
                  fds = [s.fileno()]\n";
    let (p, fds) = spawn_python(w, script);
    let (mut peer, _) = listener.accept().expect("accept python's connection");
    std::io::Write::write_all(&mut peer, b"hello").expect("queue hello");
    (p, fds, peer)
}

#[test]
fn dump_unix_socket_is_refused() {
    // A unix socket connected to a socket held outside the dumped tree (by this test process)
    // is refused, naming the fd, the peer and the process holding it.
    let Some((_lock, w)) = start("dump_unix_socket_is_refused") else {
        return;
    };
    let img = w.mkdir("img");
    let (mut p, fds, _peer) = spawn_outside_client(&w);
    let pid = p.pid;
    let fds = &fds[..];

    let out = dump(&w, pid, &img, false);
    assert_ok(check_clean_failure(
        &format!("dump of pid {pid} holding a unix socket"),
        &out,
    ));
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("socket") && err.contains("outside") && err.contains("--unix-peers-closed"),
        "the error should say that the socket's peer is outside, and what to do: {}",
        out.describe()
    );
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "the error should name the holder of the peer, pid {}: {}",
        std::process::id(),
        out.describe()
    );
    assert!(
        names_fd(&out.stderr, fds),
        "the error should name the socket's fd (one of {fds:?}): {}",
        out.describe()
    );
    assert!(
        !img.join("inventory.img").exists(),
        "a failed dump wrote {}",
        img.join("inventory.img").display()
    );
    // The process goes on as if nothing happened.
    assert_eq!(
        try_wait_pid(pid),
        Ok(Waited::Alive),
        "the process (pid {pid}) is gone after the refused dump"
    );
    assert_ok(check_running(pid).map_err(|e| format!("after the refused dump: {e}")));
    sleep(Duration::from_millis(300));
    assert_ok(check_running(pid).map_err(|e| format!("300 ms after the refused dump: {e}")));
    p.kill_and_reap();
}

#[test]
fn dump_unix_peers_closed_restores_a_closed_peer() {
    // With --unix-peers-closed, the same socket is dumped; restored, it reads what its peer
    // had queued, then end-of-file.
    let Some((_lock, w)) = start("dump_unix_peers_closed_restores_a_closed_peer") else {
        return;
    };
    let img = w.mkdir("img");
    let (mut p, _fds, peer) = spawn_outside_client(&w);
    let pid = p.pid;
    let pid_s = pid.to_string();
    let out = stasis(
        &w,
        &[
            OsStr::new("dump"),
            "-t".as_ref(),
            pid_s.as_ref(),
            "-D".as_ref(),
            img.as_os_str(),
            "--no-auth".as_ref(),
            "--unix-peers-closed".as_ref(),
        ],
    );
    assert!(out.status.success(), "dump failed: {}", out.describe());
    p.alive = false;
    let _ = wait_pid(pid, Duration::from_secs(5));
    drop(peer);
    let out = stasis(
        &w,
        &[
            OsStr::new("restore"),
            "-D".as_ref(),
            img.as_os_str(),
            "--detach".as_ref(),
        ],
    );
    let mut restored = Proc { pid, alive: true };
    assert!(
        out.status.success() && check_running(pid).is_ok(),
        "restore failed: {}",
        out.describe()
    );
    let result = w.join("result");
    let mut tries = 0u32;
    let done = stasis_test_infra::wait::wait_until(Duration::from_secs(10), || {
        // Sent again now and then: this test is about the socket, not about when python3
        // notices a signal.
        if tries.is_multiple_of(100) {
            kill(pid, libc::SIGUSR1);
        }
        tries += 1;
        fs::read(&result).is_ok_and(|r| r.ends_with(b"EOF"))
    });
    assert!(
        done,
        "the restored python3 did not read its socket within 10 s (signals sent: {}); wchan {:?}, status:\n{}",
        tries.div_ceil(100),
        fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default(),
        fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
    );
    assert_eq!(fs::read(&result).unwrap_or_default(), b"helloEOF");
    let _ = wait_pid(pid, Duration::from_secs(5));
    restored.alive = false;
    restored.kill_and_reap();
}

// ---------------------------------------------------------------------------
// (e) show on a good dump.

/// Whether `v` holds the number `n` anywhere.
fn json_has_number(v: &serde_json::Value, n: i64) -> bool {
    match v {
        serde_json::Value::Number(x) => x.as_i64() == Some(n),
        serde_json::Value::Array(a) => a.iter().any(|x| json_has_number(x, n)),
        serde_json::Value::Object(o) => o.values().any(|x| json_has_number(x, n)),
        _ => false,
    }
}

#[test]
fn show_prints_json_with_the_pid() {
    let Some((_lock, w)) = start("show_prints_json_with_the_pid") else {
        return;
    };
    let (pid, img) = dumped_sleep(&w);
    let out = stasis(&w, &[OsStr::new("show"), img.as_os_str()]);
    assert!(
        out.status.success(),
        "stasis show failed: {}",
        out.describe()
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    let v: serde_json::Value = match serde_json::from_str(&out.stdout) {
        Ok(v) => v,
        Err(e) => panic!(
            "stasis show did not print valid JSON ({e}): {}",
            out.describe()
        ),
    };
    assert!(
        json_has_number(&v, i64::from(pid)),
        "the JSON does not contain pid {pid}: {}",
        out.stdout
    );
}

#[test]
fn names_fd_recognizes_the_usual_forms() {
    for text in [
        "dump: pid 7: fd 3 is a unix socket",
        "fd=4: socket",
        "unsupported socket on FD #3",
        "/proc/7/fd/4 -> socket:[123]",
        "fd: 3 (socket)",
    ] {
        assert!(names_fd(text, &[3, 4]), "{text}");
    }
    for text in ["fd 33 socket", "/proc/7/fdinfo/3", "fd 5", "no fds here"] {
        assert!(!names_fd(text, &[3, 4]), "{text}");
    }
}

// ---------------------------------------------------------------------------
// (f) anonymous-inode files stasis refuses: an epoll watch whose fd was closed
// (the file stays registered through a dup), and an inotify watch on a deleted
// directory (kept alive by an open fd).

/// Runs python3 `script` (see `spawn_python`), dumps it, and checks a clean refusal whose message
/// contains every one of `words` and names one of the fds; the process must
/// run on untouched.
fn check_refused_python(test: &str, script: &str, words: &[&str]) {
    let Some((_lock, w)) = start(test) else {
        return;
    };
    let img = w.mkdir("img");
    let (mut p, fds) = spawn_python(&w, script);
    let pid = p.pid;
    let fds = &fds[..];
    let out = dump(&w, pid, &img, false);
    assert_ok(check_clean_failure(
        &format!("{test}: dump of pid {pid}"),
        &out,
    ));
    for word in words {
        assert!(
            out.stderr.to_lowercase().contains(word),
            "the error should say {word:?}: {}",
            out.describe()
        );
    }
    assert!(
        fds.is_empty() || names_fd(&out.stderr, fds),
        "the error should name one of the fds {fds:?}: {}",
        out.describe()
    );
    assert!(
        !img.join("inventory.img").exists(),
        "a failed dump wrote an inventory"
    );
    assert_ok(check_running(pid).map_err(|e| format!("after the refused dump: {e}")));
    p.kill_and_reap();
}

#[test]
fn dump_epoll_watch_of_a_closed_fd_is_refused() {
    // The watched file is held only by a child now: no fd of the process can add it again.
    // (A file the process still holds at another fd is restored through that fd.)
    let script = "import os, select, time\n\
                  r, w = os.pipe()\n\
                  ep = select.epoll()\n\
                  ep.register(r, select.EPOLLIN)\n\
                  parent = os.getpid()\n\
                  if os.fork() == 0:\n    \
                      while os.getppid() == parent:\n        time.sleep(0.05)\n    \
                      os._exit(0)\n\
                  os.close(r)\n\
                  fds = [ep.fileno()]\n";
    check_refused_python(
        "dump_epoll_watch_of_a_closed_fd_is_refused",
        script,
        &["epoll", "no fd of the process holds"],
    );
}

#[test]
fn dump_inotify_watch_of_a_deleted_directory_is_refused() {
    // The watch lives on while the directory is held open; it has no path to be added again.
    let script = "import ctypes, os, time\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  fd = libc.inotify_init1(0)\n\
                  os.mkdir('gone')\n\
                  keep = os.open('gone', os.O_RDONLY)\n\
                  assert fd >= 0 and libc.inotify_add_watch(fd, b'gone', 0x100) == 1\n\
                  os.rmdir('gone')\n\
                  fds = [fd]\n";
    check_refused_python(
        "dump_inotify_watch_of_a_deleted_directory_is_refused",
        script,
        &["inotify", "watch 1", "deleted"],
    );
}

#[test]
fn dump_of_fd_table_sharing_between_siblings_is_refused() {
    // A child forks, then makes a sibling of its own (CLONE_PARENT) sharing its fd table
    // (CLONE_FILES): the two share a table their parent does not have. Tables shared with the
    // parent are restored (also by sharers with children); this one would come back as two
    // copies, so it is refused by name.
    let script = "import ctypes, os, time\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  parent = os.getpid()\n\
                  if os.fork() == 0:\n    \
                      b = libc.syscall(56, 0x400 | 0x8000 | 17, 0, 0, 0, 0)\n    \
                      while os.getppid() == parent:\n        time.sleep(0.05)\n    \
                      os._exit(0)\n\
                  time.sleep(0.3)\n\
                  fds = []\n";
    check_refused_python(
        "dump_of_fd_table_sharing_between_siblings_is_refused",
        script,
        &["fd table", "clone_files", "not with their parent"],
    );
}

#[test]
fn dump_unix_socket_with_an_epoll_in_flight_is_refused() {
    // Files in flight (SCM_RIGHTS) are dumped with their socket, but an epoll instance names
    // fds of its holder: refused by name, never dropped.
    let script = "import socket, select\n\
                  a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                  ep = select.epoll()\n\
                  socket.send_fds(a, [b'with epoll'], [ep.fileno()])\n\
                  ep.close()\n\
                  fds = [b.fileno()]\n";
    check_refused_python(
        "dump_unix_socket_with_an_epoll_in_flight_is_refused",
        script,
        &["in flight", "unix socket", "epoll", "eventpoll"],
    );
}

#[test]
fn dump_posix_message_queue_is_refused() {
    let script = "import ctypes, os, time\n\
                  rt = ctypes.CDLL('librt.so.1', use_errno=True)\n\
                  name = b'/stasis-neg-%d' % os.getpid()\n\
                  fd = rt.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None)\n\
                  assert fd >= 0\n\
                  rt.mq_unlink(name)\n\
                  fds = [fd]\n";
    check_refused_python(
        "dump_posix_message_queue_is_refused",
        script,
        &["posix message queue"],
    );
}

#[test]
fn dump_pipe_end_held_outside_is_refused() {
    // `sleep` gets the read end of a pipe as its stdin; this test process, outside the dumped
    // tree, keeps the write end. (A pipe end closed everywhere is restored; one held outside
    // is not, and the error says who holds it.)
    let test = "dump_pipe_end_held_outside_is_refused";
    let Some((_lock, w)) = start(test) else {
        return;
    };
    let img = w.mkdir("img");
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .current_dir(&w)
        .stdin(Stdio::from(reader))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    isolate(&mut cmd);
    let child = cmd.spawn().expect("start sleep");
    let mut p = Proc {
        pid: child.id() as i32,
        alive: true,
    };
    drop(child); // reaped by pid (Proc)
    let pid = p.pid;
    wait_asleep(pid, Some("sleep"));
    let out = stasis(
        &w,
        &[
            OsStr::new("dump"),
            "-t".as_ref(),
            pid.to_string().as_ref(),
            "-D".as_ref(),
            img.as_os_str(),
        ],
    );
    assert_ok(check_clean_failure(
        &format!(
            "dump of pid {pid} reading a pipe written by pid {}",
            std::process::id()
        ),
        &out,
    ));
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("pipe") && err.contains("outside"),
        "the error should say that the pipe's other end is outside: {}",
        out.describe()
    );
    assert!(
        names_fd(&out.stderr, &[0]),
        "the error should name the pipe's fd 0: {}",
        out.describe()
    );
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "the error should name the holder of the write end, pid {}: {}",
        std::process::id(),
        out.describe()
    );
    assert!(
        !img.join("inventory.img").exists(),
        "a failed dump wrote an inventory"
    );
    assert_ok(check_running(pid).map_err(|e| format!("after the refused dump: {e}")));
    drop(writer);
    p.kill_and_reap();
}

/// A process traced by another one (here its parent, outside the dumped tree, which seized it
/// as a debugger would) cannot be seized: the dump is refused, naming the process and its
/// tracer, and both run on.
#[test]
fn dump_pidfd_of_a_reaped_process_is_refused() {
    let script = "import os\n\
                  child = os.fork()\n\
                  if child == 0:\n    os._exit(0)\n\
                  pfd = os.pidfd_open(child)\n\
                  os.waitpid(child, 0)\n\
                  fds = [pfd]\n";
    check_refused_python(
        "dump_pidfd_of_a_reaped_process_is_refused",
        script,
        &["pidfd", "reaped"],
    );
}

#[test]
fn dump_pidfd_of_a_process_outside_is_refused() {
    let script = "import os\n\
                  pfd = os.pidfd_open(1)\n\
                  fds = [pfd]\n";
    check_refused_python(
        "dump_pidfd_of_a_process_outside_is_refused",
        script,
        &["pidfd", "pid 1 is outside the dumped tree"],
    );
}

#[test]
fn dump_of_a_process_without_vdso_but_with_vvar_is_refused() {
    let Some((_lock, w)) = start("dump_of_a_process_without_vdso_but_with_vvar_is_refused") else {
        return;
    };
    let img = w.mkdir("img");
    // A child unmaps its vdso (not its vvar) and blocks in read() (no clock call, no buffered
    // file: glibc would jump into the unmapped vdso); the "fds" of spawn_python carry its pid.
    let script = "import ctypes, os, time\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]\n\
                  r, wr = os.pipe()\n\
                  child = os.fork()\n\
                  if child == 0:\n    \
                      v = [l.split()[0] for l in open('/proc/self/maps') if l.strip().endswith('[vdso]')][0]\n    \
                      a, b = (int(x, 16) for x in v.split('-'))\n    \
                      assert libc.munmap(a, b - a) == 0\n    \
                      os.close(os.open('unmapped', os.O_CREAT | os.O_WRONLY))\n    \
                      os.read(r, 1)\n    \
                      os._exit(0)\n\
                  while not os.path.exists('unmapped'):\n    time.sleep(0.01)\n\
                  fds = [child]\n";
    let (mut parent, child) = spawn_python(&w, script);
    let pid = child[0];
    wait_asleep(pid, None);
    let out = dump(&w, pid, &img, false);
    assert_ok(check_clean_failure(&format!("dump of pid {pid}"), &out));
    assert!(
        out.stderr.contains(&format!(
            "pid {pid} has unmapped its [vdso] but kept [vvar]"
        )),
        "the error should say the vdso is gone and the vvar kept: {}",
        out.describe()
    );
    assert!(
        !img.join("inventory.img").exists(),
        "a failed dump wrote an inventory"
    );
    assert_ok(check_running(pid).map_err(|e| format!("after the refused dump: {e}")));
    parent.kill_and_reap();
}

#[test]
fn dump_traced_process_is_refused() {
    let Some((_lock, w)) = start("dump_traced_process_is_refused") else {
        return;
    };
    let img = w.mkdir("img");
    // The "fds" of spawn_python carry the traced child's pid.
    let script = "import ctypes, os, time\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  child = os.fork()\n\
                  if child == 0:\n    time.sleep(100)\n    os._exit(0)\n\
                  PTRACE_SEIZE = 0x4206\n\
                  if libc.ptrace(PTRACE_SEIZE, child, 0, 0) != 0:\n    \
                      raise OSError(ctypes.get_errno(), 'PTRACE_SEIZE')\n\
                  fds = [child]\n";
    let (mut tracer, child) = spawn_python(&w, script);
    let (tracer_pid, traced) = (tracer.pid, child[0]);
    let out = dump(&w, traced, &img, false);
    assert_ok(check_clean_failure(
        &format!("dump of pid {traced}, traced by {tracer_pid}"),
        &out,
    ));
    assert!(
        out.stderr.contains(&format!("pid {traced}"))
            && out.stderr.contains(&format!("traced by pid {tracer_pid}")),
        "the error should name the process and its tracer: {}",
        out.describe()
    );
    assert!(
        !img.join("inventory.img").exists(),
        "a failed dump wrote an inventory"
    );
    assert_eq!(
        procfs::state(traced),
        Some('S'),
        "the traced process should sleep on: {}",
        describe_proc(traced)
    );
    assert_ok(check_running(tracer_pid).map_err(|e| format!("the tracer: {e}")));
    tracer.kill_and_reap();
    // The traced child is ours now (the subreaper).
    kill(traced, libc::SIGKILL);
    let _ = wait_pid(traced, Duration::from_secs(5));
}
