//! Restore into a new pid namespace (`--pid-ns`): the restorer forks into a new pid and mount
//! namespace, mounts its own /proc, restores the tree there and stays as a minimal init.
//!
//! A shell job (see "Terminals" in [`crate::restore`](mod@crate::restore)) works there too:
//! the init stays in the caller's session and process group, so the root joins that session
//! in a group of its own and gets the caller's terminal as at any restore. Job control needs
//! the caller's help, as the init can neither stop itself (the kernel ignores the signals a
//! namespace's init sends itself) nor name the caller's group (it is outside the namespace):
//! [`restore_job_in_new_pid_namespace`] keeps a pipe from the init, which writes a byte
//! whenever the root stops, and [`wait_job_in_namespace`] waits for the init as a shell
//! would for the job (the terminal back to the caller's group and the caller stopped when
//! the job stops; the job's group, seen from outside, given the terminal and continued when
//! the caller is).

use super::{restore, RestoreOptions};
use crate::Error;
use stasis_sys::process::{self, Forked};
use stasis_sys::{ptrace, tty, Pid};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// A tree restored in a pid namespace of its own (`--pid-ns`).
#[derive(Debug, Clone, Copy)]
pub struct RestoredInNamespace {
    /// The namespace's init, a child of the caller (its pid in the caller's namespace). It
    /// exits with the root's exit status once the root has exited.
    pub init: Pid,
    /// The root's pid (the dumped one), as seen inside the namespace.
    pub root: Pid,
}

/// Restores the tree in a new pid namespace (and a new mount namespace with its own /proc),
/// under a minimal init: the processes keep their dumped pids inside, whatever runs outside, so
/// the same images can be restored many times side by side.
pub fn restore_in_new_pid_namespace(opts: &RestoreOptions) -> Result<RestoredInNamespace, Error> {
    restore_in_namespace(opts, false).map(|(r, _)| r)
}

/// [`restore_in_new_pid_namespace`] for a shell job: also returns the read end of a pipe on
/// which the init writes a byte whenever the root stops, for [`wait_job_in_namespace`].
pub fn restore_job_in_new_pid_namespace(
    opts: &RestoreOptions,
) -> Result<(RestoredInNamespace, OwnedFd), Error> {
    let (r, events) = restore_in_namespace(opts, true)?;
    Ok((
        r,
        events.ok_or_else(|| Error::Internal {
            what: "the namespace's init kept no pipe".into(),
        })?,
    ))
}

fn restore_in_namespace(
    opts: &RestoreOptions,
    job: bool,
) -> Result<(RestoredInNamespace, Option<OwnedFd>), Error> {
    let (r, w) = process::pipe().map_err(|e| Error::io("pipe", e))?;
    match process::fork_into_new_pid_ns()
        .map_err(|e| Error::sys("clone3(CLONE_NEWPID)", process::getpid(), e))?
    {
        Forked::Child(_) => {
            drop(r);
            let mut w = File::from(w);
            let restored = process::mount_private_proc()
                .map_err(|e| {
                    Error::sys("mounting /proc in the new namespace", process::getpid(), e)
                })
                .and_then(|()| restore(opts));
            match restored {
                Ok(rs) => {
                    let _ =
                        std::io::Write::write_all(&mut w, format!("ok {}\n", rs.pid).as_bytes());
                    let events = job.then_some(w);
                    process::exit_now(minimal_init(rs.pid, events));
                }
                Err(e) => {
                    let _ = std::io::Write::write_all(&mut w, format!("error {e}").as_bytes());
                    process::exit_now(1);
                }
            }
        }
        Forked::Parent(init) => {
            drop(w);
            let mut answer = String::new();
            let mut r = File::from(r);
            // One line ("ok PID"), or an error up to the end (the init exits after it); byte
            // by byte, so that nothing the init writes later is read here.
            let mut b = [0u8; 1];
            while let Ok(1) = r.read(&mut b) {
                if b[0] == b'\n' && answer.starts_with("ok ") {
                    break;
                }
                answer.push(char::from(b[0]));
            }
            if let Some(pid) = answer
                .strip_prefix("ok ")
                .and_then(|p| p.trim().parse().ok())
            {
                return Ok((
                    RestoredInNamespace { init, root: pid },
                    job.then(|| OwnedFd::from(r)),
                ));
            }
            let _ = ptrace::waitpid(init, 0);
            Err(Error::Invalid(
                answer
                    .strip_prefix("error ")
                    .unwrap_or("the namespace init ended without restoring")
                    .to_string(),
            ))
        }
    }
}

/// The namespace's init: reaps every orphan, and exits with the root's status when the root
/// ends (the kernel then ends whatever else runs in the namespace). With `events` (a shell
/// job), writes a byte there whenever the root stops.
fn minimal_init(root: Pid, mut events: Option<File>) -> i32 {
    let flags = if events.is_some() { libc::WUNTRACED } else { 0 };
    loop {
        match ptrace::waitpid(-1, flags) {
            Ok(ptrace::WaitStatus::Exited(c)) if is_root_gone(root) => return c,
            Ok(ptrace::WaitStatus::Signaled(s)) if is_root_gone(root) => return 128 + s,
            Ok(ptrace::WaitStatus::Stopped { .. }) => {
                // Which child stopped: the root, or an orphan of the tree.
                let root_stopped = crate::procfs::read_stat(root).is_ok_and(|s| s.state == 'T');
                if let (true, Some(w)) = (root_stopped, events.as_mut()) {
                    if std::io::Write::write_all(w, b"S").is_err() {
                        events = None;
                    }
                }
            }
            Ok(_) => continue,
            Err(_) => return 0,
        }
    }
}

/// Waits for a shell job restored in a pid namespace ([`restore_job_in_new_pid_namespace`])
/// on `terminal`, the caller's controlling terminal, as [`super::wait_job`] waits for one
/// restored here: when the root stops (a byte on `events`), the terminal goes back to the
/// caller's group and the caller stops itself; once continued, the job's group (the root's,
/// as seen from here) gets the terminal and SIGCONT. Returns the init's exit status (the
/// root's), with the terminal back in the caller's group.
pub fn wait_job_in_namespace(
    ns: &RestoredInNamespace,
    events: OwnedFd,
    terminal: BorrowedFd<'_>,
) -> Result<i32, Error> {
    let mine = process::getpgid(0).map_err(|e| Error::sys("getpgid", 0, e))?;
    // The root as seen from here: the init's child.
    let root = std::fs::read_to_string(format!("/proc/{}/task/{}/children", ns.init, ns.init))
        .ok()
        .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()));
    let group = root.and_then(|r| process::getpgid(r).ok());
    let give_back = || {
        let _ = tty::tcsetpgrp(terminal, mine);
    };
    let pidfd = process::pidfd_open(ns.init).map_err(|e| Error::sys("pidfd_open", ns.init, e))?;
    let mut events = File::from(events);
    loop {
        let ready = process::poll_readable(&[events.as_fd(), pidfd.as_fd()], -1)
            .map_err(|e| Error::io("poll of the namespace's init", e))?;
        if ready[1] {
            let code = super::wait_exit_code(ns.init);
            give_back();
            return code;
        }
        if ready[0] {
            let mut b = [0u8; 64];
            if !matches!(events.read(&mut b), Ok(n) if n > 0) {
                // The init is gone: its exit comes next.
                let code = super::wait_exit_code(ns.init);
                give_back();
                return code;
            }
            give_back();
            let _ = process::kill(process::getpid(), libc::SIGSTOP);
            if let Some(g) = group {
                let _ = tty::tcsetpgrp(terminal, g);
                let _ = process::kill(-g, libc::SIGCONT);
            }
        }
    }
}

fn is_root_gone(root: Pid) -> bool {
    !Path::new(&format!("/proc/{root}")).exists()
}
