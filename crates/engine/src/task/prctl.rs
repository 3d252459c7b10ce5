//! prctl state a fork or clone inherits, other than what [`super::attrs`] and
//! [`super::creds`] handle.
//!
//! Process-wide (of the address space): PR_SET_THP_DISABLE (with
//! PR_THP_DISABLE_EXCEPT_ADVISED), PR_SET_MDWE, the membarrier registrations
//! (MEMBARRIER_CMD_GET_REGISTRATIONS, Linux 6.3+) and PR_SET_MEMORY_MERGE. Per thread: the
//! timer slack, PR_SET_TSC, the PR_MCE_KILL policy, PR_SET_SPECULATION_CTRL (store bypass,
//! indirect branch, L1D flush; only where the mitigation is under prctl control) and
//! PR_SET_IO_FLUSHER (seen in the task flags: PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE).
//!
//! Dump: asked inside the process (the PR_GET_* calls), except the IO flusher (/proc). Two of
//! them only a holder of CAP_SYS_RESOURCE can set: PR_SET_IO_FLUSHER and PR_SET_MEMORY_MERGE.
//! A dumper without it (this machine has none) would make images no restorer like it can
//! restore, so it refuses such a process by name.
//!
//! Restore ([`restore_process`] and [`restore_thread`], rebuild step `InheritedPrctl`): inside
//! the process, once the threads exist and before the credentials (the two above need
//! CAP_SYS_RESOURCE while the process still has the restorer's capabilities), after the
//! memory layout is final (MDWE refuses to make memory executable from then on). A real-time
//! thread's timer slack is the kernel's (0); the one set here applies while it is not
//! real-time. Not kept: the default a thread's timer slack returns to with
//! PR_SET_TIMERSLACK(0) (its parent's slack when it was created), and what
//! MEMBARRIER_CMD_GET_REGISTRATIONS cannot report on kernels before 6.3.

use crate::inject::Injector;
use crate::{procfs, Error};
use stasis_image::{ProcessPrctl, ThreadPrctl};
use stasis_sys::Pid;

/// PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE: what PR_SET_IO_FLUSHER sets in the task flags.
const PF_IO_FLUSHER: u64 = 0x0008_0000 | 0x0010_0000;
/// CAP_SYS_RESOURCE.
const CAP_SYS_RESOURCE: u64 = 1 << 24;
/// PR_SPEC_* of PR_GET_SPECULATION_CTRL.
const PR_SPEC_PRCTL: u32 = 1;
const PR_SPEC_ENABLE: u32 = 2;
const PR_SPEC_DISABLE: u32 = 4;
const PR_SPEC_FORCE_DISABLE: u32 = 8;
const PR_SPEC_DISABLE_NOEXEC: u32 = 16;
/// PR_SPEC_STORE_BYPASS, PR_SPEC_INDIRECT_BRANCH, PR_SPEC_L1D_FLUSH.
pub(crate) const SPEC_WHICH: [u32; 3] = [0, 1, 2];

/// Whether the dumper itself holds CAP_SYS_RESOURCE (a restorer like it can set what needs it).
fn own_cap_sys_resource() -> Result<bool, Error> {
    let me = stasis_sys::process::getpid();
    Ok(procfs::read_status(me)?.cap_eff & CAP_SYS_RESOURCE != 0)
}

/// Refuses state only CAP_SYS_RESOURCE can set again, when the dumper lacks it.
fn refuse_without_cap_sys_resource(what: String) -> Result<(), Error> {
    if own_cap_sys_resource()? {
        return Ok(());
    }
    Err(Error::Unsupported {
        what: format!(
            "{what}, which only a restorer with CAP_SYS_RESOURCE can set again (this one lacks it)"
        ),
    })
}

/// The process-wide part, asked inside the process (`inj` runs in its leader).
#[tracing::instrument(name = "prctl", level = "debug", skip_all, fields(pid = pid))]
pub fn dump_process(pid: Pid, inj: &mut Injector) -> Result<ProcessPrctl, Error> {
    let p = ProcessPrctl {
        thp_disable: inj.get_thp_disable()?,
        mdwe: inj.get_mdwe()?,
        membarrier: inj.membarrier_registrations()?,
        memory_merge: inj.get_memory_merge()?,
    };
    if p.memory_merge {
        refuse_without_cap_sys_resource(format!(
            "pid {pid} has KSM merging for all its memory (PR_SET_MEMORY_MERGE)"
        ))?;
    }
    Ok(p)
}

/// One thread's part, asked inside it (`inj` runs in thread `tid` and has a scratch area).
pub fn dump_thread(pid: Pid, tid: Pid, inj: &mut Injector) -> Result<ThreadPrctl, Error> {
    let io_flusher = procfs::read_thread_stat(pid, tid)?.flags & PF_IO_FLUSHER == PF_IO_FLUSHER;
    if io_flusher {
        refuse_without_cap_sys_resource(format!(
            "thread {tid} of pid {pid} is an IO flusher (PR_SET_IO_FLUSHER)"
        ))?;
    }
    let [spec_store_bypass, spec_indirect_branch, spec_l1d_flush] = [
        inj.get_speculation_ctrl(SPEC_WHICH[0])?,
        inj.get_speculation_ctrl(SPEC_WHICH[1])?,
        inj.get_speculation_ctrl(SPEC_WHICH[2])?,
    ];
    Ok(ThreadPrctl {
        timerslack_ns: inj.get_timerslack()?,
        tsc: inj.get_tsc()?,
        mce_kill: inj.get_mce_kill()?,
        io_flusher,
        spec_store_bypass,
        spec_indirect_branch,
        spec_l1d_flush,
    })
}

/// The PR_SET_SPECULATION_CTRL value that gives a thread the dumped state `v`, or None when
/// there is nothing to set (not under prctl control).
pub fn speculation_ctrl(v: u32) -> Option<u32> {
    if v & PR_SPEC_PRCTL == 0 {
        return None;
    }
    Some(if v & PR_SPEC_FORCE_DISABLE != 0 {
        PR_SPEC_FORCE_DISABLE
    } else if v & PR_SPEC_DISABLE_NOEXEC != 0 {
        PR_SPEC_DISABLE_NOEXEC
    } else if v & PR_SPEC_DISABLE != 0 {
        PR_SPEC_DISABLE
    } else {
        PR_SPEC_ENABLE
    })
}

/// Sets the process-wide part inside the process (`inj` runs in its leader).
#[tracing::instrument(name = "prctl", level = "debug", skip_all, fields(pid = inj.tid()))]
pub fn restore_process(inj: &mut Injector, p: &ProcessPrctl) -> Result<(), Error> {
    if p.thp_disable != 0 {
        // Bit 1 of what PR_GET_THP_DISABLE reports is PR_THP_DISABLE_EXCEPT_ADVISED.
        inj.set_thp_disable(p.thp_disable & 2)?;
    }
    for bit in 0..32 {
        if p.membarrier & (1 << bit) != 0 {
            inj.membarrier_register(1 << bit)?;
        }
    }
    if p.memory_merge {
        inj.set_memory_merge()?;
    }
    if p.mdwe != 0 {
        inj.set_mdwe(p.mdwe)?;
    }
    Ok(())
}

/// What a thread's prctl state is before [`restore_thread`] sets it (the values it compares
/// with the dumped ones): the threads of a process being rebuilt all have the leader's (they
/// were cloned from it), so it is asked once, in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadNow {
    tsc: u32,
    mce_kill: u32,
    /// The speculation controls of [`SPEC_WHICH`], as [`speculation_ctrl`] reads them.
    spec: [Option<u32>; 3],
}

impl ThreadNow {
    /// What the thread `inj` runs in has.
    pub fn of(inj: &mut Injector) -> Result<ThreadNow, Error> {
        inj.prefetch(&crate::inject::calls::thread_prctl_queries(&SPEC_WHICH))?;
        let (tsc, mce_kill) = (inj.get_tsc()?, inj.get_mce_kill()?);
        let mut spec = [None; 3];
        for (s, which) in spec.iter_mut().zip(SPEC_WHICH) {
            *s = speculation_ctrl(inj.get_speculation_ctrl(which)?);
        }
        Ok(ThreadNow {
            tsc,
            mce_kill,
            spec,
        })
    }
}

/// Sets one thread's part inside it; `now` is what it has ([`ThreadNow::of`]).
#[tracing::instrument(name = "prctl", level = "debug", skip_all, fields(tid = inj.tid()))]
pub fn restore_thread(inj: &mut Injector, t: &ThreadPrctl, now: &ThreadNow) -> Result<(), Error> {
    inj.set_timerslack(t.timerslack_ns)?;
    if now.tsc != t.tsc {
        inj.set_tsc(t.tsc)?;
    }
    if now.mce_kill != t.mce_kill {
        inj.set_mce_kill(t.mce_kill)?;
    }
    let dumped = [
        t.spec_store_bypass,
        t.spec_indirect_branch,
        t.spec_l1d_flush,
    ];
    for ((which, v), had) in SPEC_WHICH.into_iter().zip(dumped).zip(now.spec) {
        let Some(ctrl) = speculation_ctrl(v) else {
            continue;
        };
        if had != Some(ctrl) {
            inj.set_speculation_ctrl(which, ctrl)?;
        }
    }
    if t.io_flusher {
        inj.set_io_flusher()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speculation_states() {
        // Not affected, or the mitigation is always on or off: nothing to set.
        assert_eq!(speculation_ctrl(0), None);
        assert_eq!(speculation_ctrl(PR_SPEC_ENABLE), None);
        assert_eq!(speculation_ctrl(PR_SPEC_FORCE_DISABLE), None);
        assert_eq!(
            speculation_ctrl(PR_SPEC_PRCTL | PR_SPEC_ENABLE),
            Some(PR_SPEC_ENABLE)
        );
        assert_eq!(
            speculation_ctrl(PR_SPEC_PRCTL | PR_SPEC_DISABLE),
            Some(PR_SPEC_DISABLE)
        );
        assert_eq!(
            speculation_ctrl(PR_SPEC_PRCTL | PR_SPEC_FORCE_DISABLE | PR_SPEC_DISABLE),
            Some(PR_SPEC_FORCE_DISABLE)
        );
        assert_eq!(
            speculation_ctrl(PR_SPEC_PRCTL | PR_SPEC_DISABLE_NOEXEC | PR_SPEC_DISABLE),
            Some(PR_SPEC_DISABLE_NOEXEC)
        );
    }
}
