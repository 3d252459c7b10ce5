//! Starting, killing and waiting for processes.
//!
//! The processes a test deals with are often not its children: a restored process is a child
//! of `stasis restore` (or, once that exits, of whatever reaper it is orphaned to). So the
//! waits here go by pid: they reap the process when it is (or becomes) a child of the test
//! process, and otherwise watch /proc. A test process that calls [`become_subreaper`] gets the
//! orphans of everything it started as children.

use crate::procfs;
use crate::wait::POLL;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::thread::sleep;
use std::time::{Duration, Instant};

pub use stasis_sys::ptrace::WaitStatus;

/// Makes `cmd` start its program in a new session (so that it is the leader of its own session
/// and process group), with every inherited descriptor above stderr marked close-on-exec.
///
/// The test process inherits descriptors without close-on-exec (cargo's jobserver pipe, say),
/// and other threads of the harness may hold some: they would leak into the program, and stasis
/// rightly refuses pipes that lead outside the dumped processes.
#[allow(unsafe_code)]
pub fn isolate(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (setsid, close_range), which are async-signal-safe; it allocates nothing and takes no
    // lock. (`CommandExt::pre_exec` has no safe form.)
    unsafe {
        cmd.pre_exec(|| {
            stasis_sys::process::setsid()?;
            cloexec_above_stderr()
        })
    }
}

/// Like [`isolate`], but the program stays in the caller's session, as the leader of a
/// process group of its own (as a shell with job control starts a job).
#[allow(unsafe_code)]
pub fn isolate_in_group(cmd: &mut Command) -> &mut Command {
    // SAFETY: as in `isolate` (setpgid is a system call as well).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            cloexec_above_stderr()
        })
    }
}

/// Marks every descriptor above stderr close-on-exec (CLOSE_RANGE_CLOEXEC rather than closing:
/// the standard library's own close-on-exec pipe, which reports a failed exec, must stay open
/// until the exec). Async-signal-safe: for `pre_exec` closures.
#[allow(unsafe_code)]
fn cloexec_above_stderr() -> io::Result<()> {
    let first: libc::c_uint = 3;
    // SAFETY: close_range reads no memory; it only changes flags of our descriptors.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Like [`isolate`], and the program's stdin (a terminal) becomes the controlling terminal of
/// its new session, with its group in the foreground: the program runs as a shell would run
/// it in that terminal. The signals a terminal sends are at their defaults, as in a login
/// on it, whatever the test runner ignores: a runner started in the background by a shell
/// without job control ignores SIGINT and SIGQUIT, and a shell passes signals it found
/// ignored on to its jobs (Ctrl-C would then not interrupt them).
#[allow(unsafe_code)]
pub fn isolate_on_terminal(cmd: &mut Command) -> &mut Command {
    // SAFETY: as in `isolate`; ioctl(TIOCSCTTY) and sigaction are system calls as well (the
    // sigaction struct is a local of the child's stack).
    unsafe {
        cmd.pre_exec(|| {
            stasis_sys::process::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let default: libc::sigaction = std::mem::zeroed(); // SIG_DFL, no flags, empty mask
            for sig in TERMINAL_SIGNALS {
                if libc::sigaction(sig, &default, std::ptr::null_mut()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            cloexec_above_stderr()
        })
    }
}

/// The signals a terminal sends to its foreground job, or that job control uses.
const TERMINAL_SIGNALS: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGHUP,
];

/// Opens (creating it, mode 0644) a log file for appending.
pub fn append_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
}

/// Starts `cmd` [isolated](isolate), with stdin `/dev/null` and stdout and stderr both going
/// to `log` (one open file description, as with a shell's `>>log 2>&1`).
pub fn spawn_isolated(cmd: &mut Command, log: File) -> io::Result<Child> {
    let log2 = log.try_clone()?;
    isolate(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2)),
    )
    .spawn()
}

/// Makes this (multi-threaded) test process a child subreaper, once: the orphans of the
/// processes it started become its children, to be waited for.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = stasis_sys::process::prctl_int(libc::PR_SET_CHILD_SUBREAPER, 1, 0) {
            panic!("prctl(PR_SET_CHILD_SUBREAPER): {e}");
        }
    });
}

/// Sends `sig` to process `pid`; true when it was delivered. Never signals a process group
/// (`pid` <= 0 is refused).
pub fn kill(pid: i32, sig: i32) -> bool {
    pid > 0 && stasis_sys::process::kill(pid, sig).is_ok()
}

/// What a look at a pid found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// It exited and we reaped it: how it ended.
    Status(WaitStatus),
    /// It is gone but was not our child, so how it ended is unknown.
    Gone,
    /// It is still there (running, or a zombie that is not ours to reap).
    Alive,
}

/// Looks at `pid` without blocking: reaps it if it is a child of ours that has ended.
pub fn try_wait_pid(pid: i32) -> Result<Waited, String> {
    loop {
        match stasis_sys::ptrace::waitpid_nohang(pid) {
            Ok(Some(status)) => return Ok(Waited::Status(status)),
            Ok(None) => return Ok(Waited::Alive),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not our child (yet?): it is done once /proc forgets it.
                Some(libc::ECHILD) => {
                    return Ok(if procfs::exists(pid) {
                        Waited::Alive
                    } else {
                        Waited::Gone
                    })
                }
                _ => return Err(format!("waitpid({pid}): {e}")),
            },
        }
    }
}

/// Waits up to `timeout` until `pid` has exited (reaping it if it is, or becomes, our child):
/// [`Waited::Status`] or [`Waited::Gone`]. Err says what /proc shows when the time is up.
pub fn wait_pid(pid: i32, timeout: Duration) -> Result<Waited, String> {
    let start = Instant::now();
    loop {
        match try_wait_pid(pid)? {
            Waited::Alive if start.elapsed() < timeout => sleep(POLL),
            Waited::Alive => {
                return Err(format!(
                    "pid {pid} did not exit within {timeout:?} (state: {})",
                    procfs::describe_proc(pid)
                ))
            }
            done => return Ok(done),
        }
    }
}

/// Waits up to `timeout` until the process (`pid`, `start_time`) is gone, reaping it if it is
/// (or becomes) our child; a pid now used by another process counts as gone. Err describes the
/// process (command line, state) if it is still there.
pub fn wait_gone(pid: i32, start_time: u64, timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        if matches!(
            stasis_sys::ptrace::waitpid_nohang(pid),
            Ok(Some(WaitStatus::Exited(_) | WaitStatus::Signaled(_)))
        ) || procfs::start_time(pid) != Some(start_time)
        {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            return Err(format!(
                "pid {pid} `{}` ({})",
                cmd.trim(),
                procfs::describe_proc(pid)
            ));
        }
        sleep(POLL);
    }
}

/// Waits up to `timeout` for `child` to exit: `Ok(None)` when it still runs then.
pub fn wait_child_for(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() > timeout {
            return Ok(None);
        }
        sleep(POLL);
    }
}

/// After a process is seen asleep, how long [`wait_sleeping`] gives it to settle in its wait.
const SETTLE: Duration = Duration::from_millis(200);

/// Waits up to `timeout` until `pid` sleeps (State S), with the command name `comm` when
/// given: it got past exec and its startup and is in its wait. Then lets it settle there a
/// little. Err says what /proc shows when the time is up.
pub fn wait_sleeping(pid: i32, comm: Option<&str>, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let asleep = procfs::stat(pid).is_some_and(|s| {
            s.state == 'S'
                && match comm {
                    Some(comm) => s.comm == comm,
                    None => true,
                }
        });
        if asleep {
            sleep(SETTLE);
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "pid {pid} ({comm:?}) never went to sleep: {}",
                procfs::describe_proc(pid)
            ));
        }
        sleep(POLL);
    }
}

/// Starts `sleep 100` [isolated](isolate), with stdin, stdout and stderr `/dev/null`, and
/// waits until it sleeps ([`wait_sleeping`]): the simplest process to dump. The caller reaps
/// it. Panics (after killing it) when it cannot be started or does not go to sleep in 10 s.
pub fn spawn_sleep() -> Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = isolate(&mut cmd)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start sleep: {e}"));
    if let Err(e) = wait_sleeping(child.id() as i32, Some("sleep"), Duration::from_secs(10)) {
        kill_child(&mut child);
        panic!("{e}");
    }
    child
}

/// The live (not zombie) processes whose parent is this process, with their command names;
/// zombies found on the way are reaped. With [`become_subreaper`], what the processes a test
/// started left behind.
pub fn live_children() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for pid in procfs::pids() {
        let Some(stat) = procfs::stat(pid) else {
            continue;
        };
        if stat.ppid != me {
            continue;
        }
        if matches!(stat.state, 'Z' | 'X') {
            let _ = try_wait_pid(pid);
            continue;
        }
        out.push((pid, stat.comm));
    }
    out
}

/// SIGKILLs `child` and reaps it (nothing happens if it is already reaped).
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The name of a signal (`SIGKILL`), or `signal N`.
pub fn signal_name(sig: i32) -> String {
    const NAMES: [(i32, &str); 15] = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGSYS, "SIGSYS"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == sig)
        .map_or_else(|| format!("signal {sig}"), |(_, name)| name.to_string())
}

/// How a process ended, from a [`WaitStatus`]: `exited with status 1`, `killed by signal 9
/// (SIGKILL)`.
pub fn describe_wait_status(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(code) => format!("exited with status {code}"),
        WaitStatus::Signaled(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
        other => format!("{other:?}"),
    }
}

/// How a child ended, from an [`ExitStatus`], like [`describe_wait_status`] (and `core
/// dumped` when it did).
pub fn describe_exit_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!(
            "killed by signal {sig} ({}){}",
            signal_name(sig),
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        ),
        _ => format!("{status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_wait_and_describe() {
        let dir = crate::WorkDir::unique(&std::env::temp_dir(), "stasis-test-infra-proc");
        let log = dir.join("log");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut child = spawn_isolated(&mut cmd, append_log(&log).unwrap()).unwrap();
        let status = wait_child_for(&mut child, Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(describe_exit_status(status), "exited with status 3");
        assert_eq!(crate::log::read_log(&log), "out\nerr\n");

        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        assert_eq!(try_wait_pid(pid), Ok(Waited::Alive));
        assert!(kill(pid, libc::SIGKILL));
        assert_eq!(
            wait_pid(pid, Duration::from_secs(10)),
            Ok(Waited::Status(WaitStatus::Signaled(libc::SIGKILL)))
        );
        assert_eq!(
            describe_wait_status(WaitStatus::Signaled(libc::SIGKILL)),
            "killed by signal 9 (SIGKILL)"
        );
        // Reaped by pid: the Child has nothing left to wait for.
        assert!(child.try_wait().is_err());
        assert!(!kill(0, 0) && !kill(-1, 0));
    }

    // (Not live_children: it reaps the zombies of the tests running beside it.)
    #[test]
    fn sleep_is_seen_asleep() {
        let mut child = spawn_sleep();
        let pid = child.id() as i32;
        let stat = procfs::stat(pid).unwrap();
        assert_eq!((stat.comm.as_str(), stat.state), ("sleep", 'S'));
        assert_eq!(stat.session, pid, "not in a session of its own");
        assert!(wait_sleeping(pid, Some("true"), Duration::from_millis(50))
            .unwrap_err()
            .contains("never went to sleep"));
        kill_child(&mut child);
    }
}
