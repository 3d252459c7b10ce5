//! Credentials, capabilities and namespaces of the calling process: what a process forked to
//! act for another user calls to become that user (`stasis_engine::restore::as_user`).
//!
//! Every call acts on the calling *thread* (the raw system calls, not glibc's process-wide
//! emulation); the callers are single-threaded processes, where that is the whole process.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::thread::{CapabilitySet, CapabilitySets, ThreadNameSpaceType};

/// The namespaces a process can join through another one's pidfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    pub mount: bool,
    pub network: bool,
    pub ipc: bool,
    pub uts: bool,
    pub cgroup: bool,
}

/// setns(2) on a pidfd: moves the calling thread, in one call (all or nothing), into the
/// chosen namespaces of the process behind `pidfd`. Needs CAP_SYS_ADMIN (and CAP_SYS_CHROOT
/// for the mount namespace, which also resets root and cwd to that namespace's root); the
/// caller must be single-threaded and not share its fs state (CLONE_FS).
pub fn setns_pidfd(pidfd: BorrowedFd<'_>, which: Namespaces) -> io::Result<()> {
    let mut t = ThreadNameSpaceType::empty();
    for (on, flag) in [
        (which.mount, ThreadNameSpaceType::MOUNT),
        (which.network, ThreadNameSpaceType::NETWORK),
        (which.ipc, ThreadNameSpaceType::INTER_PROCESS_COMMUNICATION),
        (
            which.uts,
            ThreadNameSpaceType::HOST_NAME_AND_NIS_DOMAIN_NAME,
        ),
        (which.cgroup, ThreadNameSpaceType::CONTROL_GROUP),
    ] {
        if on {
            t |= flag;
        }
    }
    Ok(rustix::thread::move_into_thread_name_spaces(pidfd, t)?)
}

/// fchdir(2) to `dir`, then chroot(".") and chdir("/"): `dir` becomes the root of the calling
/// process (CAP_SYS_CHROOT).
pub fn chroot_to(dir: BorrowedFd<'_>) -> io::Result<()> {
    rustix::process::fchdir(dir)?;
    rustix::process::chroot(".")?;
    rustix::process::chdir("/")?;
    Ok(())
}

/// setgroups(2) for the calling thread (CAP_SETGID).
pub fn set_groups(groups: &[u32]) -> io::Result<()> {
    let g: Vec<rustix::process::Gid> = groups
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect();
    Ok(rustix::thread::set_thread_groups(&g)?)
}

/// setresgid(2) to `gid` for real, effective and saved gid (CAP_SETGID, unless `gid` is
/// already one of them).
pub fn set_all_gids(gid: u32) -> io::Result<()> {
    let g = rustix::process::Gid::from_raw(gid);
    Ok(rustix::thread::set_thread_res_gid(g, g, g)?)
}

/// setresuid(2) to `uid` for real, effective and saved uid (CAP_SETUID, unless `uid` is
/// already one of them). Leaving uid 0 clears the effective capabilities, and the permitted
/// ones too unless keep-caps is set ([`set_keep_caps`]).
pub fn set_all_uids(uid: u32) -> io::Result<()> {
    let u = rustix::process::Uid::from_raw(uid);
    Ok(rustix::thread::set_thread_res_uid(u, u, u)?)
}

/// The real, effective and saved uids and gids of the calling thread.
pub fn res_ids() -> ([u32; 3], [u32; 3]) {
    let mut u = [0 as libc::uid_t; 3];
    let mut g = [0 as libc::gid_t; 3];
    // SAFETY: getresuid/getresgid write three ids each into the arrays we own; they cannot
    // fail with valid pointers.
    unsafe {
        libc::getresuid(&mut u[0], &mut u[1], &mut u[2]);
        libc::getresgid(&mut g[0], &mut g[1], &mut g[2]);
    }
    (u, g)
}

/// prctl(PR_SET_KEEPCAPS): whether the permitted capabilities survive leaving uid 0.
pub fn set_keep_caps(on: bool) -> io::Result<()> {
    Ok(rustix::thread::set_keep_capabilities(on)?)
}

/// The capability sets of a thread, one bit per capability number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

/// capget(2) of the calling thread.
pub fn capabilities() -> io::Result<Caps> {
    let c = rustix::thread::capabilities(None)?;
    Ok(Caps {
        effective: c.effective.bits(),
        permitted: c.permitted.bits(),
        inheritable: c.inheritable.bits(),
    })
}

/// capset(2) of the calling thread. Without CAP_SETPCAP the kernel allows only lowering the
/// permitted set, an effective set inside it, and an inheritable set inside the old
/// inheritable and permitted ones.
pub fn set_capabilities(c: Caps) -> io::Result<()> {
    Ok(rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::from_bits_retain(c.effective),
            permitted: CapabilitySet::from_bits_retain(c.permitted),
            inheritable: CapabilitySet::from_bits_retain(c.inheritable),
        },
    )?)
}

/// prctl(PR_CAPBSET_READ): whether capability `cap` is in the calling thread's bounding set.
pub fn in_bounding_set(cap: u32) -> io::Result<bool> {
    let set = CapabilitySet::from_bits_retain(1u64.checked_shl(cap).unwrap_or(0));
    Ok(rustix::thread::capability_is_in_bounding_set(set)?)
}

/// prctl(PR_CAPBSET_DROP): removes capability `cap` from the bounding set (CAP_SETPCAP).
pub fn drop_from_bounding_set(cap: u32) -> io::Result<()> {
    let set = CapabilitySet::from_bits_retain(1u64.checked_shl(cap).unwrap_or(0));
    Ok(rustix::thread::remove_capability_from_bounding_set(set)?)
}

/// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL).
pub fn clear_ambient_caps() -> io::Result<()> {
    Ok(rustix::thread::clear_ambient_capability_set()?)
}

/// prctl(PR_SET_NO_NEW_PRIVS, 1): irreversible, inherited by every child.
pub fn set_no_new_privs() -> io::Result<()> {
    Ok(rustix::thread::set_no_new_privs(true)?)
}

/// prctl(PR_SET_DUMPABLE): a process that changed its ids is not dumpable (and so cannot be
/// ptraced, even by a process of its own uid) until it says so.
pub fn set_dumpable(on: bool) -> io::Result<()> {
    use rustix::process::DumpableBehavior;
    Ok(rustix::process::set_dumpable_behavior(if on {
        DumpableBehavior::Dumpable
    } else {
        DumpableBehavior::NotDumpable
    })?)
}

/// prctl(PR_SET_PDEATHSIG, SIGKILL): the calling thread is killed when the thread that
/// forked it ends. Changing credentials clears it, so it is set after them.
pub fn die_with_parent() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(
        rustix::process::Signal::KILL,
    ))?)
}

/// setpriority(PRIO_PROCESS, 0, nice): the calling process's nice value (lowering it needs
/// CAP_SYS_NICE, or RLIMIT_NICE).
pub fn set_nice(nice: i32) -> io::Result<()> {
    Ok(rustix::process::setpriority_process(None, nice)?)
}

/// getppid(2).
pub fn parent_pid() -> crate::Pid {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_do_not_fail() {
        let c = capabilities().unwrap();
        assert_eq!(c.effective & !c.permitted, 0);
        let (u, g) = res_ids();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((u[0], g[0]), (uid, gid));
        assert!(in_bounding_set(0).is_ok());
        assert!(in_bounding_set(200).is_err());
    }
}
