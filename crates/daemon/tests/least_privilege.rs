//! The restore through stasisd runs with the requester's privileges, never the daemon's: one
//! attack per class of the issue (see docs/security.md, "Restore runs as the requester"), and
//! the legitimate restore that must keep working. Terminals (docs/security.md, "A shell job is
//! attached only to the terminal its requester passes"): a self-dump of a program on a
//! terminal restored onto the terminal its requester passes, another user's terminal never
//! attached, and a user's `stasis dump`/`stasis restore` of a shell job, the restore in a
//! shell relaying a terminal of the job's own; the test holds the terminals' masters.
//!
//! Every test starts its own `stasisd` on a socket of its own (mode 0666). The unprivileged
//! side runs as a user created for this run of the test binary (`stasis-lp-<pid>`, removed at
//! exit) through `setpriv`. The client is `tests/least_privilege/lpclient.c`, linked against
//! a release build of libstasis (made once per run in its own target directory under
//! `CARGO_TARGET_TMPDIR`); its `restore` mode always goes through the daemon, whatever its
//! ids (inside `unshare -U -r` it is "root").
//!
//! The tests need root (ptrace, users, namespaces, cgroups). Without it each one prints a
//! notice and passes, except under `CI=true`, where it fails: CI runs as root and must run
//! them. Work directories of failed tests are kept in
//! `target/tmp/least-privilege-<pid>/<test>/` with the daemon log and the programs' logs.

// The harness talks to processes directly (setsid, close_range, kill, ptys).
#![allow(unsafe_code)]
// Helpers panic on setup failures on purpose: a test that cannot set up fails.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    built, c_program_in_run, chmod, path_str, socket_dir, stasisd_exe, user_log, user_work_dir,
};
use stasis_image::{FdEntry, FileDesc, FileKind, ProcessImage, RecordKind};
use stasis_test_infra::log::tail;
use stasis_test_infra::process::{
    describe_exit_status, isolate, isolate_on_terminal, kill, wait_child_for,
};
use stasis_test_infra::procfs::status_field;
use stasis_test_infra::terminal::Terminal;
use stasis_test_infra::user::test_user;
use stasis_test_infra::wait::wait_until;
use stasis_test_infra::{in_ci, require_root, WorkDir};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// This run's work directories: `target/tmp/least-privilege-<pid>`.
const RUN: &str = "least-privilege";
/// The daemons' sockets: `/tmp/stasis-lp.<pid>`.
const SOCKETS: &str = "stasis-lp";
const LINE_TIMEOUT: Duration = Duration::from_secs(30);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Environment.

/// Returns from the test (after a notice) unless running as root; under CI=true, fails.
macro_rules! require_root {
    ($name:expr) => {
        let _ = $name;
        if !require_root() {
            return;
        }
    };
}

/// Fails under CI=true, else prints a notice; for tests whose setup the machine lacks.
fn cannot_run(name: &str, why: &str) {
    if in_ci() {
        panic!("{name} cannot run here ({why}), and CI=true");
    }
    eprintln!("notice: {name} skipped: {why}");
}

/// `lpclient`, built once per run.
fn lpclient() -> &'static Path {
    static P: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&P, || {
        c_program_in_run(RUN, "tests/least_privilege/lpclient.c", "lpclient", true)
    })
    .as_path()
}

// ---------------------------------------------------------------------------------------
// Processes.

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Whether pid `pid` is free (no process, not even a zombie, holds it).
fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills a restored copy and waits until its pid is free (its parent, or init, reaped it).
fn end(pid: i32) {
    kill(pid, libc::SIGKILL);
    assert!(
        wait_until(EXIT_TIMEOUT, || gone(pid)),
        "pid {pid} is still taken after SIGKILL"
    );
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> i64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = s.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(n - 3).unwrap().parse().unwrap()
}

/// The soft and hard limit of a /proc/PID/limits row.
fn limit(pid: i32, row: &str) -> (String, String) {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with(row)).unwrap();
    let cols: Vec<&str> = line[25..].split_whitespace().collect();
    (cols[0].to_string(), cols[1].to_string())
}

fn ns_inode(pid: i32, ns: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|l| l.display().to_string())
        .unwrap_or_default()
}

/// `setpriv` arguments that make the rest of the command line run as the test user.
fn as_user(extra: &[&str]) -> Vec<String> {
    let u = test_user();
    let mut v = vec![
        "setpriv".to_string(),
        format!("--reuid={}", u.uid),
        format!("--regid={}", u.gid),
        "--clear-groups".to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push("--".into());
    v
}

/// A command from its words, with a clean environment and the daemon's socket.
fn command(words: &[String], socket: &Path) -> Command {
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .env("STASIS_SOCKET", socket);
    cmd
}

struct Prog {
    pid: i32,
    log: PathBuf,
}

struct CmdOut {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for CmdOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; stdout: {}; stderr: {}",
            describe_exit_status(self.status),
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// One test's directory, processes and diagnostics; dropping it kills what it started.
struct Ctx {
    name: String,
    dir: WorkDir,
    children: Mutex<HashMap<i32, Child>>,
    /// Restored copies (not our children), killed at the end.
    foreign: Mutex<Vec<i32>>,
    diag: Mutex<Vec<PathBuf>>,
    seq: AtomicUsize,
}

impl Ctx {
    fn new(name: &str) -> Ctx {
        let dir = user_work_dir(RUN, name);
        Ctx {
            name: name.to_string(),
            dir,
            children: Mutex::new(HashMap::new()),
            foreign: Mutex::new(Vec::new()),
            diag: Mutex::new(Vec::new()),
            seq: AtomicUsize::new(0),
        }
    }

    /// A directory owned by the test user.
    fn user_dir(&self, name: &str, mode: u32) -> PathBuf {
        let d = self.dir.join(name);
        fs::create_dir(&d).unwrap();
        let u = test_user();
        std::os::unix::fs::chown(&d, Some(u.uid), Some(u.gid)).unwrap();
        chmod(&d, mode);
        d
    }

    /// A log file owned by the test user (restored copies reopen it as the user).
    fn log_file(&self, name: &str) -> (PathBuf, File) {
        let path = self.dir.join(name);
        let u = test_user();
        let f = user_log(&path, u.uid, u.gid);
        self.diag.lock().unwrap().push(path.clone());
        (path, f)
    }

    /// Starts `cmd` in a new session, stdin /dev/null, stdout+stderr appended to `log_name`.
    fn spawn(&self, mut cmd: Command, log_name: &str) -> Prog {
        let (log, f) = self.log_file(log_name);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f));
        isolate(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let pid = child.id() as i32;
        self.children.lock().unwrap().insert(pid, child);
        Prog { pid, log }
    }

    /// Runs `cmd` to completion (bounded), capturing its output.
    fn run(&self, mut cmd: Command) -> CmdOut {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let (out_path, err_path) = (
            self.dir.join(format!("cmd-{n}.out")),
            self.dir.join(format!("cmd-{n}.err")),
        );
        self.diag.lock().unwrap().push(out_path.clone());
        self.diag.lock().unwrap().push(err_path.clone());
        cmd.stdin(Stdio::null())
            .stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap());
        isolate(&mut cmd);
        let what = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let Some(status) = wait_child_for(&mut child, CMD_TIMEOUT).unwrap() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish\n{}", self.diagnostics());
        };
        CmdOut {
            status,
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    fn wait_child(&self, pid: i32) -> ExitStatus {
        let mut child = self.children.lock().unwrap().remove(&pid).unwrap();
        match wait_child_for(&mut child, EXIT_TIMEOUT).unwrap() {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pid {pid} did not exit\n{}", self.diagnostics());
            }
        }
    }

    fn expect_foreign(&self, pid: i32) {
        self.foreign.lock().unwrap().push(pid);
    }

    /// Waits for a line starting with `prefix` at or after byte `from` of `log`.
    fn wait_line(&self, log: &Path, from: usize, prefix: &str) -> String {
        let find = || -> Option<String> {
            let text = fs::read_to_string(log).unwrap_or_default();
            text.get(from..)?
                .lines()
                .find(|l| l.starts_with(prefix))
                .map(str::to_string)
        };
        let mut found = None;
        wait_until(LINE_TIMEOUT, || {
            found = find();
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "[{}] no line {prefix:?} in {}\n{}",
                self.name,
                log.display(),
                self.diagnostics()
            )
        })
    }

    fn diagnostics(&self) -> String {
        let mut s = String::new();
        for p in self.diag.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let text = fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"));
            s += &format!("--- {}:\n{}\n", p.display(), tail(&text, 40));
        }
        s
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        for pid in self
            .foreign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            if status_field(pid, "Name").is_some_and(|n| n.starts_with("lpclient")) {
                kill(pid, libc::SIGKILL);
            }
        }
        for (_, mut c) in self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        // (The directory goes with `self.dir`, or is kept when the test failed.)
    }
}

// ---------------------------------------------------------------------------------------
// The daemon.

struct Daemon {
    child: Option<Child>,
    pid: i32,
    socket: PathBuf,
    log: PathBuf,
    /// The master of the daemon's controlling terminal, when it has one.
    _pty: Option<OwnedFd>,
}

/// Opens a new pseudo-terminal: (master, slave).
fn open_pty() -> (OwnedFd, OwnedFd) {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r/open take a descriptor or a buffer we
    // own; every returned descriptor is checked and owned once.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", io::Error::last_os_error());
        let master = OwnedFd::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(s >= 0, "open pty slave: {}", io::Error::last_os_error());
        (master, OwnedFd::from_raw_fd(s))
    }
}

impl Daemon {
    /// Starts `stasisd --socket <new path> --mode 0666`; with `tty`, as the leader of a
    /// session whose controlling terminal is a new pty (as a daemon started from root's
    /// shell would be).
    fn start(ctx: &Ctx, tty: bool) -> Daemon {
        static N: AtomicUsize = AtomicUsize::new(0);
        let socket =
            socket_dir(SOCKETS).join(format!("{}.sock", N.fetch_add(1, Ordering::Relaxed)));
        let log = ctx.dir.join("stasisd.log");
        let f = File::create(&log).unwrap();
        ctx.diag.lock().unwrap().push(log.clone());
        let mut cmd = Command::new(stasisd_exe());
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--mode")
            .arg("0666")
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f));
        isolate(&mut cmd);
        let pty = tty.then(open_pty);
        if let Some((_, slave)) = &pty {
            let s = slave.as_raw_fd();
            // SAFETY: runs after `isolate`'s setsid, between fork and exec: one ioctl that
            // makes the pty the controlling terminal of the new session.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::ioctl(s, libc::TIOCSCTTY, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let mut d = Daemon {
            pid: child.id() as i32,
            child: Some(child),
            socket,
            log,
            _pty: pty.map(|(m, _)| m),
        };
        let ok = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(&d.log)
                .unwrap_or_default()
                .contains(": listening (")
                || !matches!(d.child.as_mut().unwrap().try_wait(), Ok(None))
        });
        assert!(ok, "stasisd did not start:\n{}", d.log_text());
        d
    }

    fn workers(&self) -> Vec<i32> {
        stasis_test_infra::procfs::children(self.pid)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM once its workers are done; it must exit with status 0.
    fn stop(mut self) {
        wait_until(EXIT_TIMEOUT, || self.workers().is_empty());
        let mut child = self.child.take().unwrap();
        assert!(kill(self.pid, libc::SIGTERM));
        let status = wait_child_for(&mut child, EXIT_TIMEOUT).unwrap();
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stasisd did not stop on SIGTERM\n{}", self.log_text());
        };
        assert_eq!(status.code(), Some(0), "stasisd: {}", self.log_text());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let workers = self.workers();
            let _ = c.kill();
            let _ = c.wait();
            for w in workers {
                kill(w, libc::SIGKILL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// The user's lpclient dumps itself with `args` (killed by the dump): returns its pid, the
/// images and its log.
fn dumped(ctx: &Ctx, d: &Daemon, args: &[&str]) -> (i32, PathBuf, PathBuf) {
    let images = ctx.user_dir("images", 0o700);
    let mut words = as_user(&[]);
    words.extend(
        [path_str(lpclient()), "dump", path_str(&images), "--kill"]
            .iter()
            .map(|s| s.to_string()),
    );
    words.extend(args.iter().map(|s| s.to_string()));
    let p = ctx.spawn(command(&words, &d.socket), "prog.log");
    let st = ctx.wait_child(p.pid);
    let log = fs::read_to_string(&p.log).unwrap_or_default();
    assert!(
        st.signal() == Some(libc::SIGKILL) && log.contains(&format!("READY {}", p.pid)),
        "the self-dump: {}\n{}",
        describe_exit_status(st),
        ctx.diagnostics()
    );
    (p.pid, images, p.log)
}

/// `lpclient restore IMAGES --detach` as the user, inside `outer` (run as root before the
/// switch to the user) and `inner` (run as the user), with `setpriv` options `opts`.
fn user_restore(
    ctx: &Ctx,
    d: &Daemon,
    images: &Path,
    outer: &[&str],
    opts: &[&str],
    inner: &[&str],
) -> CmdOut {
    user_restore_with(ctx, d, images, outer, opts, inner, &[])
}

/// [`user_restore`] with more arguments for `lpclient restore`.
fn user_restore_with(
    ctx: &Ctx,
    d: &Daemon,
    images: &Path,
    outer: &[&str],
    opts: &[&str],
    inner: &[&str],
    client: &[&str],
) -> CmdOut {
    let mut words: Vec<String> = outer.iter().map(|s| s.to_string()).collect();
    words.extend(as_user(opts));
    words.extend(inner.iter().map(|s| s.to_string()));
    words.extend(
        [
            path_str(lpclient()),
            "restore",
            path_str(images),
            "--detach",
        ]
        .iter()
        .chain(client)
        .map(|s| s.to_string()),
    );
    ctx.run(command(&words, &d.socket))
}

/// The restore succeeded and the copy (pid `pid`) runs: waits for its lines after `from`.
fn restored(ctx: &Ctx, out: &CmdOut, pid: i32, log: &Path, from: usize) {
    assert!(
        out.status.success() && out.stdout.contains(&format!("STARTED {pid}")),
        "the restore failed: {out:?}\n{}",
        ctx.diagnostics()
    );
    ctx.expect_foreign(pid);
    ctx.wait_line(log, from, &format!("RESTORED {pid}"));
    ctx.wait_line(log, from, "PASS");
}

/// The restore failed with every one of `needles` in its message, and nothing runs as `pid`.
fn refused(ctx: &Ctx, out: &CmdOut, pid: i32, needles: &[&str], attack: &str) {
    if out.status.success() {
        ctx.expect_foreign(pid);
        panic!(
            "ATTACK WORKED ({attack}): the restore was allowed: {out:?}\n{}",
            ctx.diagnostics()
        );
    }
    eprintln!("[{attack}] refused: {}", out.stdout.trim());
    for n in needles {
        assert!(
            out.stdout.contains(n),
            "expected {n:?} in the refusal: {out:?}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(2), || !alive(pid)),
        "pid {pid} runs after a failed restore"
    );
    assert!(
        wait_until(EXIT_TIMEOUT, || gone(pid)),
        "pid {pid} is still taken after a failed restore"
    );
}

fn log_len(log: &Path) -> usize {
    fs::metadata(log).map_or(0, |m| m.len() as usize)
}

fn edit_process_image(images: &Path, pid: i32, edit: impl FnOnce(&mut ProcessImage)) {
    let path = images.join(stasis_image::names::process(pid));
    let bytes = fs::read(&path).unwrap();
    let mut image: ProcessImage =
        stasis_image::decode_record(RecordKind::Process, &bytes, &path).unwrap();
    edit(&mut image);
    let out = stasis_image::encode_record(RecordKind::Process, &image, &path).unwrap();
    fs::write(&path, &out).unwrap();
    reseal(images);
}

/// Authenticates the (edited) images in `dir` again with the key of the daemons of these
/// tests, as only root can: the attacks here test what stands behind authentication, for
/// images the daemon itself would have written.
fn reseal(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let key =
        stasis_engine::auth::load_key(Path::new(stasis_engine::auth::DEFAULT_KEY_FILE)).unwrap();
    let md = fs::metadata(dir).unwrap();
    let images = stasis_image::ImageDir::open(dir)
        .unwrap()
        .with_owner(md.uid(), md.gid());
    stasis_image::auth::reseal(&images, &key).unwrap();
}

// ---------------------------------------------------------------------------------------
// The attacks.

/// Every capability root holds here (the test runs as root).
fn root_caps() -> u64 {
    u64::from_str_radix(
        &status_field(std::process::id() as i32, "CapPrm").unwrap(),
        16,
    )
    .unwrap()
}

#[test]
fn requester_in_its_own_user_or_pid_namespace_is_refused() {
    require_root!("requester_in_its_own_user_or_pid_namespace_is_refused");
    let ctx = Ctx::new("requester_in_its_own_user_or_pid_namespace_is_refused");
    let d = Daemon::start(&ctx, false);
    let (pid, images, _) = dumped(&ctx, &d, &[]);
    // The images claim every capability: inside its own user namespace the requester holds
    // them all (/proc/PID/status shows them), which means nothing outside.
    let all = root_caps();
    edit_process_image(&images, pid, |img| {
        img.creds.cap_permitted = all;
        img.creds.cap_effective = all;
        img.creds.cap_bounding = all;
    });
    let out = user_restore(&ctx, &d, &images, &[], &[], &["unshare", "-U", "-r", "--"]);
    if out.status.success() {
        let eff = status_field(pid, "CapEff").unwrap_or_default();
        ctx.expect_foreign(pid);
        panic!("ATTACK WORKED: restored for a requester in its own user namespace, CapEff {eff}: {out:?}");
    }
    refused(&ctx, &out, pid, &["user namespace"], "user namespace");

    // A requester in a pid namespace of its own (made by root, then the user).
    let out = user_restore(
        &ctx,
        &d,
        &images,
        &["unshare", "--pid", "--fork", "--mount-proc", "--"],
        &[],
        &[],
    );
    refused(&ctx, &out, pid, &["pid namespace"], "pid namespace");
    d.stop();
}

#[test]
fn restored_process_never_gets_the_daemons_terminal() {
    require_root!("restored_process_never_gets_the_daemons_terminal");
    let ctx = Ctx::new("restored_process_never_gets_the_daemons_terminal");
    let d = Daemon::start(&ctx, true);
    let daemon_tty = stat_field(d.pid, 7);
    assert_ne!(daemon_tty, 0, "the daemon has no controlling terminal");
    let daemon_sid = stat_field(d.pid, 6);
    let (pid, images, log) = dumped(&ctx, &d, &[]);
    let original = fs::read(images.join(stasis_image::names::process(pid))).unwrap();

    // 1. The image names the daemon's session.
    edit_process_image(&images, pid, |img| img.sid = daemon_sid as i32);
    let from = log_len(&log);
    let out = user_restore(&ctx, &d, &images, &[], &[], &[]);
    restored(&ctx, &out, pid, &log, from);
    let (tty, sid) = (stat_field(pid, 7), stat_field(pid, 6));
    assert!(
        tty == 0 && sid != daemon_sid,
        "ATTACK WORKED: the restored process is in session {sid} with controlling terminal {tty:#x} (the daemon's: session {daemon_sid}, terminal {daemon_tty:#x})"
    );
    assert_eq!(sid, i64::from(pid), "it leads a session of its own");
    end(pid);

    // 2. Its stdin is /dev/tty (the opener's controlling terminal).
    fs::write(images.join(stasis_image::names::process(pid)), &original).unwrap();
    let tty_dev = fs::metadata("/dev/tty").unwrap().rdev();
    edit_process_image(&images, pid, |img| {
        let id = img.fds.iter().find(|f| f.fd == 0).unwrap().file_id;
        let desc = img.files.iter_mut().find(|f| f.id == id).unwrap();
        desc.kind = FileKind::CharDevice {
            path: "/dev/tty".into(),
            rdev: tty_dev,
        };
        desc.flags = libc::O_RDWR as u32;
    });
    let out = user_restore(&ctx, &d, &images, &[], &[], &[]);
    if out.status.success() {
        ctx.expect_foreign(pid);
        let fd0 = fs::read_link(format!("/proc/{pid}/fd/0")).unwrap_or_default();
        panic!(
            "ATTACK WORKED: the restored process got {} as fd 0 (the daemon's terminal)",
            fd0.display()
        );
    }
    refused(&ctx, &out, pid, &["/dev/tty", "No such device"], "/dev/tty");

    // 3. Its stdin is a terminal outside the tree (a job started from a shell): without a
    // terminal passed by the requester the daemon has none to attach it to, and opens none;
    // the refusal says how to pass one.
    fs::write(images.join(stasis_image::names::process(pid)), &original).unwrap();
    edit_process_image(&images, pid, |img| {
        let id = img.fds.iter().find(|f| f.fd == 0).unwrap().file_id;
        let desc = img.files.iter_mut().find(|f| f.id == id).unwrap();
        desc.kind = FileKind::ExternalTerminal {
            path: "/dev/pts/0".into(),
            rdev: 0x8800,
            termios: Default::default(),
            winsize: Default::default(),
            foreground: true,
        };
        desc.flags = libc::O_RDWR as u32;
    });
    let out = user_restore(&ctx, &d, &images, &[], &[], &[]);
    refused(
        &ctx,
        &out,
        pid,
        &[
            "/dev/pts/0, a terminal outside the dumped tree",
            "attaches the job only to a terminal the requester passes",
            "--tty PATH",
            "stasis_restore_tty()",
        ],
        "a terminal outside the tree",
    );
    d.stop();
}

#[test]
fn proc_links_of_root_processes_are_not_followed() {
    require_root!("proc_links_of_root_processes_are_not_followed");
    let ctx = Ctx::new("proc_links_of_root_processes_are_not_followed");
    let d = Daemon::start(&ctx, false);
    // A root process whose cwd is a directory the user cannot reach (inside a 0700 one).
    let secret = ctx.dir.join("secret");
    fs::create_dir(&secret).unwrap();
    chmod(&secret, 0o700);
    let inner = secret.join("inner");
    fs::create_dir(&inner).unwrap();
    chmod(&inner, 0o755);
    fs::write(inner.join("token"), "root's secret\n").unwrap();
    let mut sleeper = Command::new("sleep");
    sleeper.arg("1000").current_dir(&inner);
    let root_proc = ctx.spawn(sleeper, "sleeper.log");
    let (pid, images, _) = dumped(&ctx, &d, &[]);
    let original = fs::read(images.join(stasis_image::names::process(pid))).unwrap();
    let link = format!("/proc/{}/cwd", root_proc.pid);

    // 1. The cwd.
    edit_process_image(&images, pid, |img| img.task.cwd = link.clone());
    let out = user_restore(&ctx, &d, &images, &[], &[], &[]);
    if out.status.success() {
        ctx.expect_foreign(pid);
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        panic!("ATTACK WORKED: restored with cwd {}", cwd.display());
    }
    refused(&ctx, &out, pid, &["Permission denied"], "cwd");

    // 2. A directory descriptor.
    fs::write(images.join(stasis_image::names::process(pid)), &original).unwrap();
    // The directory's identity as root sees it, so that only the requester's permissions
    // can stop it.
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        let md = fs::metadata(&link).unwrap();
        (md.dev(), md.ino())
    };
    edit_process_image(&images, pid, |img| {
        let id = img.files.iter().map(|f| f.id).max().unwrap_or(0) + 1;
        img.files.push(FileDesc {
            id,
            flags: (libc::O_RDONLY | libc::O_DIRECTORY) as u32,
            pos: 0,
            kind: FileKind::Directory {
                path: link.clone(),
                dev,
                ino,
                deleted: None,
            },
            owner: Default::default(),
            locks: Vec::new(),
        });
        img.fds.push(FdEntry {
            fd: 9,
            file_id: id,
            cloexec: false,
        });
    });
    let out = user_restore(&ctx, &d, &images, &[], &[], &[]);
    if out.status.success() {
        ctx.expect_foreign(pid);
        let fd = fs::read_link(format!("/proc/{pid}/fd/9")).unwrap_or_default();
        panic!("ATTACK WORKED: restored with fd 9 on {}", fd.display());
    }
    refused(
        &ctx,
        &out,
        pid,
        &[&link, "Permission denied"],
        "directory fd",
    );
    d.stop();
}

/// Where the pids controller is: (the hierarchy's mount point, the controller line prefix in
/// /proc/PID/cgroup), creating nothing; None when there is none.
fn pids_hierarchy() -> Option<(PathBuf, &'static str)> {
    let v2 = Path::new("/sys/fs/cgroup");
    if fs::read_to_string(v2.join("cgroup.controllers")).is_ok_and(|c| c.contains("pids")) {
        return Some((v2.to_path_buf(), "0::"));
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split_whitespace();
        let (fstype, _, opts) = (post.next()?, post.next()?, post.next()?);
        (fstype == "cgroup" && opts.split(',').any(|o| o == "pids")).then(|| {
            (
                PathBuf::from(pre.split_whitespace().nth(4).unwrap()),
                "pids:",
            )
        })
    })
}

/// A cgroup made for one test, removed at the end (its processes are killed first).
struct TestCgroup {
    path: PathBuf,
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for p in fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
        {
            kill(p.parse().unwrap_or(0), libc::SIGKILL);
        }
        wait_until(EXIT_TIMEOUT, || fs::remove_dir(&self.path).is_ok());
    }
}

#[test]
fn restored_process_lands_in_the_requesters_cgroup() {
    let name = "restored_process_lands_in_the_requesters_cgroup";
    require_root!(name);
    let Some((hierarchy, prefix)) = pids_hierarchy() else {
        return cannot_run(name, "no cgroup hierarchy with the pids controller");
    };
    if prefix == "0::" {
        // cgroup v2: the controller must be enabled for the children of the root.
        let _ = fs::write(hierarchy.join("cgroup.subtree_control"), "+pids");
    }
    let ctx = Ctx::new(name);
    let cg = TestCgroup {
        path: hierarchy.join(format!("stasis-lp-{}", std::process::id())),
    };
    let _ = fs::create_dir(&cg.path);
    fs::write(cg.path.join("pids.max"), "16").unwrap();
    let d = Daemon::start(&ctx, false);
    let (pid, images, log) = dumped(&ctx, &d, &["--fork-bomb", "64"]);
    let from = log_len(&log);
    let procs = cg.path.join("cgroup.procs");
    let join = format!("echo $$ > {} && exec \"$@\"", procs.display());
    let out = user_restore(&ctx, &d, &images, &["sh", "-c", &join, "sh"], &[], &[]);
    restored(&ctx, &out, pid, &log, from);
    let line = ctx.wait_line(&log, from, "FORKED ");
    let forked: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let want = format!("stasis-lp-{}", std::process::id());
    let inside = cgroups
        .lines()
        .any(|l| l.contains(prefix) && l.ends_with(&format!("/{want}")));
    assert!(
        inside && forked < 16,
        "ATTACK WORKED: the restored process forked {forked} children (pids.max 16) and is in\n{cgroups}"
    );
    end(pid);
    d.stop();
}

#[test]
fn restored_process_sees_the_requesters_mounts() {
    require_root!("restored_process_sees_the_requesters_mounts");
    let ctx = Ctx::new("restored_process_sees_the_requesters_mounts");
    let d = Daemon::start(&ctx, false);
    let ro = ctx.user_dir("ro", 0o755);
    // The requester's mount namespace, where `ro` is a read-only bind of itself.
    let script = format!(
        "mount --bind {0} {0} && mount -o remount,bind,ro {0} && exec sleep 1000",
        ro.display()
    );
    let holder = ctx.spawn(
        {
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c", &script]);
            c
        },
        "holder.log",
    );
    let ro_str = ro.display().to_string();
    assert!(
        wait_until(EXIT_TIMEOUT, || {
            fs::read_to_string(format!("/proc/{}/mountinfo", holder.pid))
                .is_ok_and(|m| m.lines().any(|l| l.contains(&ro_str) && l.contains(" ro,")))
        }),
        "the read-only bind was not made\n{}",
        ctx.diagnostics()
    );
    let (pid, images, log) = dumped(&ctx, &d, &["--write-probe", &ro_str]);
    let from = log_len(&log);
    let target = holder.pid.to_string();
    let out = user_restore(
        &ctx,
        &d,
        &images,
        &["nsenter", "-t", &target, "-m", "--"],
        &[],
        &[],
    );
    restored(&ctx, &out, pid, &log, from);
    let write = ctx.wait_line(&log, from, "WRITE ");
    assert!(
        write == "WRITE EROFS" && ns_inode(pid, "mnt") == ns_inode(holder.pid, "mnt"),
        "ATTACK WORKED: the restored process is in mount namespace {} (the requester's: {}) and wrote where the requester cannot: {write}",
        ns_inode(pid, "mnt"),
        ns_inode(holder.pid, "mnt")
    );
    end(pid);
    d.stop();
}

#[test]
fn no_new_privs_nice_and_oom_score_of_the_requester_are_kept() {
    require_root!("no_new_privs_nice_and_oom_score_of_the_requester_are_kept");
    let ctx = Ctx::new("no_new_privs_nice_and_oom_score_of_the_requester_are_kept");
    let d = Daemon::start(&ctx, false);
    let (pid, images, log) = dumped(&ctx, &d, &[]);
    let from = log_len(&log);
    let out = user_restore(
        &ctx,
        &d,
        &images,
        &[],
        &["--no-new-privs"],
        &["nice", "-n", "7", "choom", "-n", "345", "--"],
    );
    restored(&ctx, &out, pid, &log, from);
    assert_eq!(
        status_field(pid, "NoNewPrivs").as_deref(),
        Some("1"),
        "ATTACK WORKED: a requester with no_new_privs got a restored process without it"
    );
    let oom = fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap_or_default();
    assert!(
        stat_field(pid, 19) == 7 && oom.trim() == "345",
        "ATTACK WORKED: the requester's nice 7 and oom_score_adj 345 became {} and {} (the daemon's)",
        stat_field(pid, 19),
        oom.trim()
    );
    end(pid);
    d.stop();
}

#[test]
fn queued_signals_are_charged_to_the_requester() {
    require_root!("queued_signals_are_charged_to_the_requester");
    let ctx = Ctx::new("queued_signals_are_charged_to_the_requester");
    let d = Daemon::start(&ctx, false);
    let (pid, images, log) = dumped(&ctx, &d, &["--queued-signals", "6"]);
    let from = log_len(&log);
    let out = user_restore(&ctx, &d, &images, &[], &[], &[]);
    restored(&ctx, &out, pid, &log, from);
    // SigQ: the signals queued to processes of the process's real user, and its limit. The
    // restore queues the six pending signals from inside the process, which runs as the
    // requester from its fork on: charged to root, they would not count here.
    let sigq = status_field(pid, "SigQ").unwrap_or_default();
    let queued: u64 = sigq
        .split('/')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let pending = status_field(pid, "ShdPnd").unwrap_or_default();
    assert!(
        queued >= 6,
        "ATTACK WORKED: the restored process's six queued signals are not charged to the requester (SigQ {sigq}, ShdPnd {pending})\n{}",
        ctx.diagnostics()
    );
    end(pid);
    d.stop();
}

#[test]
fn images_without_rlimits_get_the_requesters() {
    require_root!("images_without_rlimits_get_the_requesters");
    let ctx = Ctx::new("images_without_rlimits_get_the_requesters");
    let d = Daemon::start(&ctx, false);
    let (pid, images, log) = dumped(&ctx, &d, &[]);
    edit_process_image(&images, pid, |img| img.task.rlimits.clear());
    let from = log_len(&log);
    let out = user_restore(
        &ctx,
        &d,
        &images,
        &[],
        &[],
        &["prlimit", "--nofile=123:456", "--core=4096:8192", "--"],
    );
    restored(&ctx, &out, pid, &log, from);
    let (nofile, core) = (
        limit(pid, "Max open files"),
        limit(pid, "Max core file size"),
    );
    assert!(
        nofile == ("123".into(), "456".into()) && core == ("4096".into(), "8192".into()),
        "ATTACK WORKED: restored with open files {nofile:?} and core size {core:?}, not the requester's (123, 456) and (4096, 8192) (the daemon's: {:?}, {:?})",
        limit(d.pid, "Max open files"),
        limit(d.pid, "Max core file size")
    );
    end(pid);
    d.stop();
}

#[test]
fn detached_restore_keeps_a_process_with_pdeathsig_running() {
    require_root!("detached_restore_keeps_a_process_with_pdeathsig_running");
    let ctx = Ctx::new("detached_restore_keeps_a_process_with_pdeathsig_running");
    let d = Daemon::start(&ctx, false);
    let (pid, images, log) = dumped(&ctx, &d, &["--pdeathsig", &libc::SIGKILL.to_string()]);
    let from = log_len(&log);
    let out = user_restore(&ctx, &d, &images, &[], &[], &[]);
    restored(&ctx, &out, pid, &log, from);
    // The worker that restored it exits once the client has its answer.
    assert!(
        wait_until(EXIT_TIMEOUT, || d.workers().is_empty()),
        "the worker does not exit"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(pid),
        "ATTACK WORKED: the detached restored process died with the worker (its pdeathsig)\n{}",
        ctx.diagnostics()
    );
    assert_eq!(stat_field(pid, 4), 1, "reparented to init");
    end(pid);
    d.stop();
}

#[test]
fn requester_under_seccomp_is_refused() {
    require_root!("requester_under_seccomp_is_refused");
    let ctx = Ctx::new("requester_under_seccomp_is_refused");
    let d = Daemon::start(&ctx, false);
    let (pid, images, _) = dumped(&ctx, &d, &[]);
    let out = user_restore_with(&ctx, &d, &images, &[], &[], &[], &["--seccomp"]);
    if out.status.success() {
        ctx.expect_foreign(pid);
        let mode = status_field(pid, "Seccomp").unwrap_or_default();
        panic!(
            "ATTACK WORKED: a requester under seccomp got a restored process with Seccomp: {mode}"
        );
    }
    refused(&ctx, &out, pid, &["seccomp"], "seccomp");
    d.stop();
}

// ---------------------------------------------------------------------------------------
// What must keep working.

#[test]
fn legitimate_restore_with_threads_gets_no_privilege() {
    require_root!("legitimate_restore_with_threads_gets_no_privilege");
    let ctx = Ctx::new("legitimate_restore_with_threads_gets_no_privilege");
    let d = Daemon::start(&ctx, false);
    let (pid, images, log) = dumped(&ctx, &d, &["--threads", "3"]);
    let from = log_len(&log);
    let out = user_restore(&ctx, &d, &images, &[], &[], &[]);
    restored(&ctx, &out, pid, &log, from);
    let u = test_user();
    let ids = format!("{0}\t{0}\t{0}\t{0}", u.uid);
    assert_eq!(status_field(pid, "Uid"), Some(ids));
    assert_eq!(status_field(pid, "Threads").as_deref(), Some("4"));
    for tid in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = fs::read_to_string(tid.unwrap().path().join("status")).unwrap_or_default();
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            let line = status.lines().find(|l| l.starts_with(set)).unwrap();
            assert!(
                line.ends_with("0000000000000000"),
                "a restored thread holds capabilities: {line}"
            );
        }
    }
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("0"));
    end(pid);
    d.stop();
}

// ---------------------------------------------------------------------------------------
// Terminals: a self-dump of a program on a terminal, restored onto the terminal its
// requester passes (and only that one).

/// The user's lpclient runs on terminal `a` as a shell would run it (the controlling terminal
/// of its session, its group in the foreground), turns echo off and dumps itself through
/// stasisd (killed by the dump). Returns its pid and the images, once it is gone.
fn dumped_on_terminal(ctx: &Ctx, d: &Daemon, a: &Terminal) -> (i32, PathBuf) {
    let images = ctx.user_dir("images", 0o700);
    let mut words = as_user(&[]);
    words.extend(
        [
            path_str(lpclient()),
            "dump",
            path_str(&images),
            "--kill",
            "--terminal",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut cmd = command(&words, &d.socket);
    cmd.stdin(a.stdio()).stdout(a.stdio()).stderr(a.stdio());
    let child = isolate_on_terminal(&mut cmd).spawn().unwrap();
    let pid = child.id() as i32;
    ctx.children.lock().unwrap().insert(pid, child);
    let st = ctx.wait_child(pid);
    assert!(
        st.signal() == Some(libc::SIGKILL) && a.text().contains(&format!("READY {pid}")),
        "the self-dump on a terminal: {}; the terminal shows {:?}\n{}",
        describe_exit_status(st),
        a.text(),
        ctx.diagnostics()
    );
    (pid, images)
}

/// The dumped description of fd `fd` of `pid`.
fn dumped_fd(images: &Path, pid: i32, fd: i32) -> FileDesc {
    let path = images.join(stasis_image::names::process(pid));
    let image: ProcessImage =
        stasis_image::decode_record(RecordKind::Process, &fs::read(&path).unwrap(), &path).unwrap();
    let id = image.fds.iter().find(|f| f.fd == fd).unwrap().file_id;
    image.files.into_iter().find(|f| f.id == id).unwrap()
}

/// `lpclient restore IMAGES --tty 0` as the user, not detached, with `stdin` as its stdin
/// (and so the terminal it passes), in a session of its own without a controlling terminal;
/// its lines go to `log_name`.
fn restore_passing(ctx: &Ctx, d: &Daemon, images: &Path, stdin: Stdio, log_name: &str) -> Prog {
    let mut words = as_user(&[]);
    words.extend(
        [
            path_str(lpclient()),
            "restore",
            path_str(images),
            "--tty",
            "0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let (log, f) = ctx.log_file(log_name);
    let mut cmd = command(&words, &d.socket);
    cmd.stdin(stdin)
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f));
    let child = isolate(&mut cmd).spawn().unwrap();
    let pid = child.id() as i32;
    ctx.children.lock().unwrap().insert(pid, child);
    Prog { pid, log }
}

/// A terminal of the test user's (its slave the user's, as login and sshd make it).
fn user_terminal() -> Terminal {
    let t = Terminal::open(24, 80);
    let u = test_user();
    std::os::unix::fs::fchown(&t.slave, Some(u.uid), Some(u.gid)).unwrap();
    t
}

/// The rdev of a terminal's slave.
fn rdev_of(t: &Terminal) -> i64 {
    File::from(t.slave.try_clone().unwrap())
        .metadata()
        .unwrap()
        .rdev() as i64
}

/// Sessions, controlling terminal and foreground group of `pid` (stat fields 6, 7, 8, 5).
fn terminal_of(pid: i32) -> (i64, i64, i64, i64) {
    (
        stat_field(pid, 6),
        stat_field(pid, 7),
        stat_field(pid, 8),
        stat_field(pid, 5),
    )
}

#[test]
fn self_dump_on_a_terminal_restores_onto_the_terminal_passed() {
    require_root!("self_dump_on_a_terminal_restores_onto_the_terminal_passed");
    let ctx = Ctx::new("self_dump_on_a_terminal_restores_onto_the_terminal_passed");
    let d = Daemon::start(&ctx, false);
    let a = user_terminal();
    let (pid, images) = dumped_on_terminal(&ctx, &d, &a);
    // The dump recorded the terminal as one outside the tree, with its settings.
    for fd in 0..3 {
        match dumped_fd(&images, pid, fd).kind {
            FileKind::ExternalTerminal {
                path,
                rdev,
                termios,
                foreground,
                ..
            } => {
                assert_eq!(path, a.path(), "fd {fd}");
                assert_eq!(rdev as i64, rdev_of(&a), "fd {fd}");
                assert!(foreground, "fd {fd}: the job was in the foreground");
                assert_eq!(termios.lflag & libc::ECHO, 0, "fd {fd}: echo was off");
            }
            other => panic!("fd {fd} of the self-dump on a terminal is dumped as {other:?}"),
        }
    }

    // Restored by the user, who passes another terminal of its own as a descriptor.
    let b = user_terminal();
    let client = restore_passing(&ctx, &d, &images, b.stdio(), "restore.log");
    ctx.expect_foreign(pid);
    b.wait_output("the restored copy on the terminal passed", |t| {
        t.contains(&format!("RESTORED {pid}")) && t.contains("TTY ")
    });
    assert!(
        b.text().contains("TTY fg=1 echo=0"),
        "the job must be in the foreground of the terminal passed, with its echo off: {:?}",
        b.text()
    );
    let (sid, tty, tpgid, pgid) = terminal_of(pid);
    assert_eq!(sid, i64::from(pid), "a session of its own");
    assert_eq!(
        tty,
        rdev_of(&b),
        "the terminal passed is its controlling terminal"
    );
    assert_eq!(tpgid, pgid, "its group is the foreground group");
    assert!(
        a.text().matches("RESTORED").count() == 0,
        "nothing on the old terminal"
    );
    // Typed at: the input reaches it (no echo), its output appears.
    b.clear();
    b.type_in(b"hello there\n");
    b.wait_output("its answer", |t| t.contains("GOT hello there"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        b.text().matches("hello there").count(),
        1,
        "echo: {:?}",
        b.text()
    );
    // Ctrl-C interrupts it; the requester learns its status.
    b.type_in(b"\x03");
    ctx.wait_line(&client.log, 0, "EXITED 130");
    assert!(ctx.wait_child(client.pid).success());
    assert!(
        wait_until(EXIT_TIMEOUT, || gone(pid)),
        "pid {pid} after Ctrl-C"
    );
    d.stop();
}

#[test]
fn a_terminal_of_another_user_is_never_attached() {
    require_root!("a_terminal_of_another_user_is_never_attached");
    let ctx = Ctx::new("a_terminal_of_another_user_is_never_attached");
    let d = Daemon::start(&ctx, false);
    let a = user_terminal();
    let (pid, images) = dumped_on_terminal(&ctx, &d, &a);
    // Root's terminal, the controlling terminal of root's session (a `sleep` in the
    // foreground there, as a shell's job would be).
    let r = Terminal::open(24, 80);
    let mut cmd = Command::new("sleep");
    cmd.arg("1000")
        .stdin(r.stdio())
        .stdout(r.stdio())
        .stderr(r.stdio());
    let sleeper = isolate_on_terminal(&mut cmd).spawn().unwrap();
    let root_job = sleeper.id() as i32;
    ctx.children.lock().unwrap().insert(root_job, sleeper);
    let root_view = (
        i64::from(root_job),
        rdev_of(&r),
        i64::from(root_job),
        i64::from(root_job),
    );
    assert!(wait_until(EXIT_TIMEOUT, || terminal_of(root_job) == root_view));

    // 1. Named: `stasis restore --tty` opens the path as the user; the kernel refuses.
    let mut words = as_user(&[]);
    words.extend(
        [
            path_str(&common::stasis_cli()),
            "restore",
            "-D",
            path_str(&images),
            "--tty",
            &r.path(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let out = ctx.run(command(&words, &d.socket));
    assert!(
        !out.status.success() && out.stderr.contains("Permission denied"),
        "ATTACK WORKED? `stasis restore --tty {}` as the user: {out:?}",
        r.path()
    );
    assert!(gone(pid), "pid {pid} runs after a refused restore");

    // 2. Passed (as if the user held a descriptor of it): the restorer, which is the user,
    // opens only what the user may open (a new description through /proc/self/fd: the
    // terminal's permissions apply) and never steals a terminal from root's session.
    let client = restore_passing(&ctx, &d, &images, r.stdio(), "passed.log");
    assert!(!ctx.wait_child(client.pid).success());
    let line = ctx.wait_line(&client.log, 0, "ERROR");
    eprintln!("[root's terminal passed] refused: {line}");
    assert!(line.contains("Permission denied"), "{line}");
    assert!(
        wait_until(EXIT_TIMEOUT, || gone(pid)),
        "ATTACK WORKED: pid {pid} runs on root's terminal"
    );
    assert_eq!(
        terminal_of(root_job),
        root_view,
        "ATTACK WORKED: root's session lost its terminal or its foreground"
    );
    // ... and a terminal the user may open but that another session (the user's own shell,
    // here a `sleep`) has as its controlling terminal is not taken from that session either.
    let s = user_terminal();
    let mut words = as_user(&[]);
    words.extend(["sleep", "1000"].iter().map(|s| s.to_string()));
    let mut cmd = command(&words, &d.socket);
    cmd.stdin(s.stdio()).stdout(s.stdio()).stderr(s.stdio());
    let shell = isolate_on_terminal(&mut cmd).spawn().unwrap();
    let shell_pid = shell.id() as i32;
    ctx.children.lock().unwrap().insert(shell_pid, shell);
    let shell_view = (
        i64::from(shell_pid),
        rdev_of(&s),
        i64::from(shell_pid),
        i64::from(shell_pid),
    );
    assert!(wait_until(EXIT_TIMEOUT, || terminal_of(shell_pid) == shell_view));
    let client = restore_passing(&ctx, &d, &images, s.stdio(), "busy.log");
    assert!(!ctx.wait_child(client.pid).success());
    let line = ctx.wait_line(&client.log, 0, "ERROR");
    assert!(
        line.contains("the controlling terminal of another session"),
        "{line}"
    );
    assert!(wait_until(EXIT_TIMEOUT, || gone(pid)), "pid {pid} runs");
    assert_eq!(
        terminal_of(shell_pid),
        shell_view,
        "the shell keeps its terminal"
    );

    // 3. An image that names root's terminal: only the terminal passed is attached.
    let root_rdev = rdev_of(&r) as u64;
    let root_path = r.path();
    edit_process_image(&images, pid, |img| {
        for f in &mut img.files {
            if let FileKind::ExternalTerminal { path, rdev, .. } = &mut f.kind {
                *path = root_path.clone();
                *rdev = root_rdev;
            }
        }
    });
    let b = user_terminal();
    let client = restore_passing(&ctx, &d, &images, b.stdio(), "own.log");
    ctx.expect_foreign(pid);
    b.wait_output("the restored copy on its own terminal", |t| {
        t.contains("TTY fg=1")
    });
    assert_eq!(terminal_of(pid).1, rdev_of(&b));
    for fd in 0..3 {
        let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(link, Path::new(&b.path()), "fd {fd}");
    }
    assert_eq!(
        terminal_of(root_job),
        root_view,
        "root's terminal untouched"
    );
    assert_eq!(r.text(), "", "nothing written on root's terminal");
    b.type_in(b"\x04");
    ctx.wait_line(&client.log, 0, "EXITED 0");
    d.stop();
}

#[test]
fn user_restore_in_a_shell_relays_the_terminal() {
    require_root!("user_restore_in_a_shell_relays_the_terminal");
    if !stasis_test_infra::require_tool("bash") {
        return;
    }
    let ctx = Ctx::new("user_restore_in_a_shell_relays_the_terminal");
    let d = Daemon::start(&ctx, false);
    let a = user_terminal();
    let (pid, images) = dumped_on_terminal(&ctx, &d, &a);
    // The user's shell, with job control, on its terminal runs `stasis restore`: stasisd
    // cannot give the job that terminal (the shell's session has it), so the CLI gives the job
    // one of its own and relays it.
    let b = user_terminal();
    user_bash(
        &ctx,
        &d,
        &b,
        &format!(
            "set -m; {} restore -D {}; echo \"stopped:$?\"; fg; echo \"ended:$?\"",
            path_str(&common::stasis_cli()),
            path_str(&images)
        ),
    );
    ctx.expect_foreign(pid);
    b.wait_output("the restored copy", |t| {
        t.contains(&format!("RESTORED {pid}")) && t.contains("TTY ")
    });
    assert!(b.text().contains("TTY fg=1 echo=0"), "{:?}", b.text());
    b.type_in(b"one\n");
    b.wait_output("its answer", |t| t.contains("GOT one"));
    assert_eq!(b.text().matches("one").count(), 1, "echo: {:?}", b.text());
    // Ctrl-Z stops it, and `stasis restore` with it: the shell sees a stopped job.
    b.type_in(b"\x1a");
    b.wait_output("the shell's report of a stopped job", |t| {
        t.contains("stopped:147")
    });
    // `fg` continues both.
    b.type_in(b"two\n");
    b.wait_output("its answer after fg", |t| t.contains("GOT two"));
    // Ctrl-C ends it; the shell gets its status.
    b.type_in(b"\x03");
    b.wait_output("the job's end", |t| t.contains("ended:130"));
    assert!(
        wait_until(EXIT_TIMEOUT, || gone(pid)),
        "pid {pid} after Ctrl-C"
    );
    d.stop();
}

/// bash, as the user and with job control, on `term` (its session's controlling terminal)
/// running `script`.
fn user_bash(ctx: &Ctx, d: &Daemon, term: &Terminal, script: &str) -> i32 {
    let mut words = as_user(&[]);
    words.extend(
        ["bash", "--norc", "--noprofile", "-c", script]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut cmd = command(&words, &d.socket);
    cmd.stdin(term.stdio())
        .stdout(term.stdio())
        .stderr(term.stdio());
    let shell = isolate_on_terminal(&mut cmd).spawn().unwrap();
    let pid = shell.id() as i32;
    ctx.children.lock().unwrap().insert(pid, shell);
    pid
}

#[test]
fn users_shell_job_in_three_commands() {
    require_root!("users_shell_job_in_three_commands");
    if !stasis_test_infra::require_tool("bash") {
        return;
    }
    let ctx = Ctx::new("users_shell_job_in_three_commands");
    let d = Daemon::start(&ctx, false);
    let cli = path_str(&common::stasis_cli()).to_string();
    // The README's workflow, as a user: a job started from a shell in one terminal...
    let a = user_terminal();
    let shell_a = user_bash(&ctx, &d, &a, "set -m; cat; exit $?");
    let mut cat = 0;
    assert!(wait_until(LINE_TIMEOUT, || {
        cat = stasis_test_infra::procfs::children(shell_a)
            .into_iter()
            .find(|&c| status_field(c, "Name").as_deref() == Some("cat"))
            .unwrap_or(0);
        cat != 0 && stat_field(cat, 8) == i64::from(cat)
    }));
    // ... `stasis dump -t PID -D DIR` from anywhere (through stasisd) ...
    let images = ctx.user_dir("images", 0o700);
    let mut words = as_user(&[]);
    words.extend(
        [
            cli.as_str(),
            "dump",
            "-t",
            &cat.to_string(),
            "-D",
            path_str(&images),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let out = ctx.run(command(&words, &d.socket));
    assert!(out.status.success(), "stasis dump as the user: {out:?}");
    assert!(
        wait_until(EXIT_TIMEOUT, || gone(cat)),
        "the dump killed cat"
    );
    assert!(matches!(
        dumped_fd(&images, cat, 0).kind,
        FileKind::ExternalTerminal { .. }
    ));
    // ... and `stasis restore -D DIR` in another terminal's shell: the job is back there.
    let b = user_terminal();
    user_bash(
        &ctx,
        &d,
        &b,
        &format!(
            "set -m; {cli} restore -D {}; echo \"ended:$?\"",
            path_str(&images)
        ),
    );
    ctx.expect_foreign(cat);
    b.type_in(b"hello\n");
    // Its echo and cat's answer.
    b.wait_output("cat's answer", |t| t.matches("hello").count() >= 2);
    b.type_in(b"\x03");
    b.wait_output("the job's end", |t| t.contains("ended:130"));
    assert!(wait_until(EXIT_TIMEOUT, || gone(cat)), "cat after Ctrl-C");
    d.stop();
}
