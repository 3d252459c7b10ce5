//! Restore into a new pid namespace (`--pid-ns`): the restorer forks into a new pid and mount
//! namespace, mounts its own /proc, restores the tree there and stays as a minimal init.

use super::{restore, RestoreOptions};
use crate::Error;
use stasis_sys::process::{self, Forked};
use stasis_sys::{ptrace, Pid};
use std::fs::File;
use std::io::Read;
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
                    let _ = std::io::Write::write_all(&mut w, format!("ok {}", rs.pid).as_bytes());
                    drop(w);
                    process::exit_now(minimal_init(rs.pid));
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
            let _ = File::from(r).read_to_string(&mut answer);
            if let Some(pid) = answer.strip_prefix("ok ").and_then(|p| p.parse().ok()) {
                return Ok(RestoredInNamespace { init, root: pid });
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
/// ends (the kernel then ends whatever else runs in the namespace).
fn minimal_init(root: Pid) -> i32 {
    loop {
        match ptrace::waitpid(-1, 0) {
            Ok(ptrace::WaitStatus::Exited(c)) if is_root_gone(root) => return c,
            Ok(ptrace::WaitStatus::Signaled(s)) if is_root_gone(root) => return 128 + s,
            Ok(_) => continue,
            Err(_) => return 0,
        }
    }
}

fn is_root_gone(root: Pid) -> bool {
    !Path::new(&format!("/proc/{root}")).exists()
}
