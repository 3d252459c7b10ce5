//! Per-process attributes that are neither memory, files nor credentials: comm, exe path,
//! cwd, root, umask, personality, resource limits, and the prctl bits pdeathsig, dumpable and
//! child-subreaper; and, through their own modules, oom_score_adj ([`super::oom`]) and the
//! audit login uid ([`super::loginuid`]), which the restore child sets first.
//!
//! Restore happens in two places: [`apply_in_child`] runs as ordinary code in the freshly
//! forked process before it hands itself over (chdir, chroot, umask, rlimits, personality,
//! comm); [`restore_prctl`] runs inside it through the injector at the end, after the
//! credentials, because a uid change resets `dumpable`.

use crate::inject::Injector;
use crate::procfs;
use crate::Error;
use stasis_image::{Rlimit, TaskState};
use stasis_sys::{process, Pid};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// RLIMIT_NLIMITS on Linux.
const NLIMITS: u32 = 16;

#[tracing::instrument(name = "attrs", level = "debug", skip_all, fields(pid = pid))]
pub fn dump(pid: Pid, status: &procfs::Status, inj: &mut Injector) -> Result<TaskState, Error> {
    // Read from /proc (prlimit64 on another uid needs CAP_SYS_RESOURCE), not by 16 calls
    // inside the process.
    let rlimits = procfs::read_limits(pid, NLIMITS as usize)?
        .into_iter()
        .zip(0..NLIMITS)
        .map(|((soft, hard), resource)| Rlimit {
            resource,
            soft,
            hard,
        })
        .collect();
    let pdeathsig = inj.get_pdeathsig()?;
    let dumpable = inj.get_dumpable()?;
    let child_subreaper = inj.get_child_subreaper()?;
    // A cwd that was removed: its path without " (deleted)" and what its stand-in gets.
    let mut cwd = procfs::link(pid, "cwd")?;
    let mut cwd_deleted = None;
    if let Some(path) = cwd.strip_suffix(" (deleted)") {
        let at = format!("/proc/{pid}/cwd");
        let md = std::fs::metadata(&at).map_err(|e| Error::io(format!("stat {at}"), e))?;
        if md.nlink() == 0 {
            cwd_deleted = Some(crate::files::directory::deleted_dir(&md));
            cwd = path.to_string();
        }
    }
    let exe_path = procfs::link(pid, "exe")?;
    Ok(TaskState {
        comm: procfs::comm(pid, pid)?,
        exe_memfd: exe_memfd(pid, &exe_path)?,
        exe_path,
        cwd,
        cwd_deleted,
        root: procfs::link(pid, "root")?,
        umask: status.umask,
        personality: procfs::read_personality(pid)?,
        rlimits,
        pdeathsig,
        dumpable,
        child_subreaper,
        oom_score_adj: super::oom::dump(pid)?,
        loginuid: super::loginuid::dump(pid)?,
    })
}

/// The memfd id (inode number) of the executable when it is a memfd (execveat or fexecve
/// of one), else 0. Its contents are stored with the memfd's mappings (`files::memfd`), and
/// the restore makes the recreated memfd the exe link.
fn exe_memfd(pid: Pid, exe_path: &str) -> Result<u64, Error> {
    if !crate::files::memfd::is_memfd_name(exe_path) {
        return Ok(0);
    }
    let path = format!("/proc/{pid}/exe");
    let meta = std::fs::metadata(&path).map_err(|e| Error::io(format!("stat {path}"), e))?;
    Ok(meta.ino())
}

/// For a cwd `/proc/N (deleted)`, the /proc directory of a process that died since: N.
pub fn dead_proc_dir(path: &str) -> Option<Pid> {
    let n = path.strip_suffix(" (deleted)")?.strip_prefix("/proc/")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|&n: &Pid| n > 0)
}

/// Makes the cwd the /proc directory of a dead process, as it was: a throwaway child (with
/// pid `n` when that is free, so the cwd link reads the same) is entered through /proc, then
/// killed and reaped; its SIGCHLD is dropped.
fn enter_dead_proc_dir(n: Pid) -> Result<(), String> {
    use stasis_sys::process::Forked;
    let forked = match process::fork_with_pid(n) {
        Ok(f) => f,
        Err(_) => process::fork().map_err(|e| format!("fork (cwd in a dead /proc dir): {e}"))?,
    };
    match forked {
        Forked::Child(_) => loop {
            // Killed by the parent once it entered our /proc directory.
            std::thread::sleep(std::time::Duration::from_secs(60));
        },
        Forked::Parent(pid) => {
            let dir = format!("/proc/{pid}");
            let entered = std::env::set_current_dir(&dir).map_err(|e| format!("chdir {dir}: {e}"));
            let _ = process::kill(pid, libc::SIGKILL);
            process::wait_exited(pid).map_err(|e| format!("reaping {pid}: {e}"))?;
            process::discard_pending_sigchld().map_err(|e| format!("dropping SIGCHLD: {e}"))?;
            entered
        }
    }
}

/// Runs in the new process before it stops for the restorer. Returns a message on failure
/// (the caller reports it to the restorer).
/// With `fs_shared`, the process shares its parent's cwd, root and umask (CLONE_FS), which the
/// parent sets for both. `defaults` are the limits of a resource the image does not list
/// (the requester's, in a restore through stasisd; none for root's own restore, which keeps
/// its own).
pub fn apply_in_child(
    t: &TaskState,
    fs_shared: bool,
    defaults: &[Rlimit],
    confined: bool,
) -> Result<(), String> {
    // Through /proc/self, so before a chroot.
    super::loginuid::apply_in_child(t.loginuid)?;
    super::oom::apply_in_child(t.oom_score_adj, confined)?;
    if !fs_shared {
        match (&t.cwd_deleted, dead_proc_dir(&t.cwd)) {
            (None, Some(n)) => enter_dead_proc_dir(n)?,
            (None, None) => {
                std::env::set_current_dir(&t.cwd).map_err(|e| format!("chdir {}: {e}", t.cwd))?
            }
            (Some(d), _) => {
                // An empty stand-in next to the old path, entered and removed again.
                let fallback = format!("{}.stasis-{}-cwd", t.cwd, std::process::id());
                let tmp = crate::files::directory::recreate_deleted(&t.cwd, &fallback, d)
                    .map_err(|e| e.to_string())?;
                let entered =
                    std::env::set_current_dir(&tmp).map_err(|e| format!("chdir {tmp}: {e}"));
                let removed = std::fs::remove_dir(&tmp).map_err(|e| format!("rmdir {tmp}: {e}"));
                entered?;
                removed?;
            }
        }
        if t.root != "/" {
            process::chroot(Path::new(&t.root)).map_err(|e| format!("chroot {}: {e}", t.root))?;
        }
        process::umask(t.umask);
    }
    let missing = defaults
        .iter()
        .filter(|d| !t.rlimits.iter().any(|l| l.resource == d.resource));
    for l in t.rlimits.iter().chain(missing) {
        let (_, cur_hard) =
            process::getrlimit(l.resource).map_err(|e| format!("getrlimit {}: {e}", l.resource))?;
        if l.hard > cur_hard {
            return Err(format!(
                "resource limit {} has hard limit {} in the image, above this restorer's {} (raising it needs CAP_SYS_RESOURCE)",
                l.resource, l.hard, cur_hard
            ));
        }
        process::setrlimit(l.resource, l.soft, l.hard)
            .map_err(|e| format!("setrlimit {}: {e}", l.resource))?;
    }
    process::set_personality(t.personality)
        .map_err(|e| format!("personality {:#x}: {e}", t.personality))?;
    process::set_thread_name(t.comm.as_bytes()).map_err(|e| format!("PR_SET_NAME: {e}"))?;
    Ok(())
}

/// Sets pdeathsig, dumpable and child-subreaper inside the new process. Without
/// `with_pdeathsig` the parent-death signal is cleared instead of restored: for the root of a
/// tree whose parent is not the one it had (a worker of stasisd, which exits), the dumped
/// signal would be relative to that parent.
#[tracing::instrument(name = "attrs", level = "debug", skip_all, fields(pid = inj.tid()))]
pub fn restore_prctl(inj: &mut Injector, t: &TaskState, with_pdeathsig: bool) -> Result<(), Error> {
    inj.set_pdeathsig(if with_pdeathsig { t.pdeathsig } else { 0 })?;
    inj.set_dumpable(t.dumpable)?;
    if t.child_subreaper {
        inj.set_child_subreaper(true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_proc_dirs() {
        assert_eq!(dead_proc_dir("/proc/42 (deleted)"), Some(42));
        assert_eq!(dead_proc_dir("/proc/42"), None);
        assert_eq!(dead_proc_dir("/proc/self (deleted)"), None);
        assert_eq!(dead_proc_dir("/proc/4/task (deleted)"), None);
        assert_eq!(dead_proc_dir("/tmp/proc/42 (deleted)"), None);
        assert_eq!(dead_proc_dir("/proc/ (deleted)"), None);
    }
}
