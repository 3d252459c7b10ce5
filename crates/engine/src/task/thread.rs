//! Per-thread state: general registers, the XSAVE area (x87/SSE/AVX), fs/gs base, the signal
//! mask and thread-private pending signals, the alternate signal stack, the rseq registration,
//! the robust futex list and the clear-child-tid address.
//!
//! A thread stopped inside a system call is recorded as the kernel left it (`orig_rax` = the
//! call, `rax` = -ERESTART*). At restore the call is set up to run again from its start, since
//! the kernel-side restart state (the restart block) does not survive; see [`restart_regs`].

use crate::inject::kabi::StackT;
use crate::inject::{Injector, RemotePtr};
use crate::task::signals::{queue_thread_signal, raw_pending};
use crate::{procfs, Error};
use stasis_image::{AltStack, Regs, Rseq, ThreadImage};
use stasis_sys::{ptrace, Pid, UserRegs};

/// SS_AUTODISARM from <signal.h> (not in the libc crate).
const SS_AUTODISARM: i32 = 1 << 31;

pub fn regs_from_user(r: &UserRegs) -> Regs {
    Regs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

pub fn user_from_regs(r: &Regs) -> UserRegs {
    UserRegs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// The registers to resume a restored thread with. A thread that was interrupted inside a
/// system call (the kernel would have restarted it) is set to execute that call again: the
/// arguments are still in their registers and the `syscall` instruction is 2 bytes long.
/// `orig_rax` = -1 keeps the kernel from applying its own restart logic on top.
pub fn restart_regs(r: &Regs) -> UserRegs {
    let mut u = user_from_regs(r);
    if (r.orig_rax as i64) >= 0 {
        let ret = -(r.rax as i64);
        if matches!(
            ret,
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK
        ) {
            u.rax = r.orig_rax;
            u.rip = r.rip.wrapping_sub(2);
        }
    }
    u.orig_rax = u64::MAX;
    u
}

/// Collects the state of one stopped thread; `inj` runs in that thread and has a scratch area.
#[tracing::instrument(name = "thread", level = "debug", skip_all, fields(tid = tid))]
pub fn dump(pid: Pid, tid: Pid, inj: &mut Injector) -> Result<ThreadImage, Error> {
    let regs = regs_from_user(inj.saved_regs());
    let xstate = ptrace::get_xstate(tid)
        .map_err(|e| Error::sys("PTRACE_GETREGSET(NT_X86_XSTATE)", tid, e))?;
    let sigmask = ptrace::get_sigmask(tid).map_err(|e| Error::sys("PTRACE_GETSIGMASK", tid, e))?;
    let pending = raw_pending(tid, false)?;
    let ss = inj.sigaltstack_get()?;
    let altstack = AltStack {
        sp: ss.sp,
        flags: ss.flags,
        size: ss.size,
    };
    let clear_child_tid = inj.get_tid_address()?;
    let rseq_cfg = ptrace::get_rseq_config(tid)
        .map_err(|e| Error::sys("PTRACE_GET_RSEQ_CONFIGURATION", tid, e))?;
    let rseq = (rseq_cfg.rseq_abi_pointer != 0).then_some(Rseq {
        addr: rseq_cfg.rseq_abi_pointer,
        len: rseq_cfg.rseq_abi_size,
        signature: rseq_cfg.signature,
    });
    let (robust_list, robust_list_len) =
        ptrace::get_robust_list(tid).map_err(|e| Error::sys("get_robust_list", tid, e))?;
    Ok(ThreadImage {
        tid,
        comm: procfs::comm(pid, tid)?,
        regs,
        xstate,
        sigmask,
        pending,
        altstack,
        rseq,
        robust_list,
        robust_list_len,
        clear_child_tid,
        loginuid: super::loginuid::dump_thread(pid, tid)?,
        sched: super::sched::dump(tid)?,
        prctl: super::prctl::dump_thread(pid, tid, inj)?,
    })
}

/// Drops the rseq registration the new process inherited from the restorer (its area is
/// about to be unmapped, and the kernel would write into it).
pub fn unregister_inherited_rseq(inj: &mut Injector) -> Result<(), Error> {
    let tid = inj.tid();
    let cfg = ptrace::get_rseq_config(tid)
        .map_err(|e| Error::sys("PTRACE_GET_RSEQ_CONFIGURATION", tid, e))?;
    if cfg.rseq_abi_pointer != 0 {
        inj.rseq_unregister(
            RemotePtr::at(cfg.rseq_abi_pointer),
            cfg.rseq_abi_size,
            cfg.signature,
        )?;
    }
    Ok(())
}

/// Restores the thread state that needs system calls inside the thread (altstack, rseq,
/// robust list, clear-child-tid, pending signals). Registers, xstate and the signal mask are
/// set by [`restore_final`] once nothing else runs in the thread.
#[tracing::instrument(name = "thread", level = "debug", skip_all, fields(tid = t.tid))]
pub fn restore_in_thread(inj: &mut Injector, pid: Pid, t: &ThreadImage) -> Result<(), Error> {
    // Always set: the new process must not keep the restorer's alternate stack. Only the
    // settable flags are passed (SS_ONSTACK is a state, not a flag).
    let flags = t.altstack.flags & (libc::SS_DISABLE | SS_AUTODISARM);
    let (sp, size) = if flags & libc::SS_DISABLE != 0 {
        (0, 0)
    } else {
        (t.altstack.sp, t.altstack.size)
    };
    inj.sigaltstack_set(&StackT {
        sp,
        flags,
        pad: 0,
        size,
    })?;
    if let Some(r) = t.rseq {
        inj.rseq_register(RemotePtr::at(r.addr), r.len, r.signature)?;
    }
    inj.set_robust_list(t.robust_list, t.robust_list_len)?;
    inj.set_tid_address(t.clear_child_tid)?;
    for info in &t.pending {
        queue_thread_signal(inj, pid, t.tid, info)?;
    }
    Ok(())
}

/// Sets the XSAVE area and the signal mask, and arranges for the registers (with syscall
/// restart applied) to be the ones the thread resumes with.
pub fn restore_final(inj: &mut Injector, t: &ThreadImage) -> Result<(), Error> {
    let tid = inj.tid();
    ptrace::set_xstate(tid, &t.xstate)
        .map_err(|e| Error::sys("PTRACE_SETREGSET(NT_X86_XSTATE)", tid, e))?;
    ptrace::set_sigmask(tid, t.sigmask).map_err(|e| Error::sys("PTRACE_SETSIGMASK", tid, e))?;
    inj.set_saved_regs(restart_regs(&t.regs));
    Ok(())
}

/// Flags of a thread created by pthread_create, less the ones that only concern the C library
/// (settls, tid pointers): the TLS base and tid addresses are restored separately.
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Creates a thread with id `tid` in the process `leader` runs in (clone3 with `set_tid`,
/// run by the leader itself) and waits until it stands stopped, traced by us. Its registers
/// are the leader's until [`restore_final`] sets its own.
pub fn create_thread(leader: &mut Injector, tid: Pid) -> Result<(), Error> {
    let leader_tid = leader.tid();
    ptrace::set_options(leader_tid, ptrace::OPT_TRACECLONE)
        .map_err(|e| Error::sys("PTRACE_SETOPTIONS", leader_tid, e))?;
    // A thread id of a process killed just before may not be free yet (see
    // `process::retry_released_id`).
    let is_eexist = |e: &Error| matches!(e, Error::Remote { errno, .. } if errno.raw_os_error() == Some(libc::EEXIST));
    let got = match stasis_sys::process::retry_released_id_with(Some(tid), is_eexist, || {
        leader.clone3_thread(THREAD_CLONE_FLAGS, tid)
    }) {
        Err(e) if is_eexist(&e) => {
            return Err(Error::PidInUse {
                pid: tid,
                holder: crate::restore::load::pid_holder(tid, None),
            })
        }
        other => other?,
    };
    if got != tid {
        return Err(Error::Invalid(format!("thread {tid} was created as {got}")));
    }
    match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
        ptrace::WaitStatus::Stopped { .. } => Ok(()),
        other => Err(Error::TargetDied {
            pid: tid,
            how: format!("{other:?}"),
        }),
    }
}

/// Sets the thread's name inside it (PR_SET_NAME).
pub fn restore_name(inj: &mut Injector, comm: &str) -> Result<(), Error> {
    let mut name = [0u8; 16];
    let n = comm.len().min(15);
    name[..n].copy_from_slice(&comm.as_bytes()[..n]);
    inj.set_name(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_syscalls_are_rewound() {
        let r = Regs {
            orig_rax: 230,
            rax: (-516i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        let u = restart_regs(&r);
        assert_eq!((u.rax, u.rip, u.orig_rax), (230, 0x1000, u64::MAX));
        // A completed syscall (a real error code) is left alone.
        let r = Regs {
            orig_rax: 0,
            rax: (-4i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        let u = restart_regs(&r);
        assert_eq!((u.rax as i64, u.rip), (-4, 0x1002));
        // Not in a syscall at all.
        let r = Regs {
            orig_rax: u64::MAX,
            rax: (-516i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        assert_eq!(restart_regs(&r).rip, 0x1002);
    }

    #[test]
    fn regs_round_trip() {
        let r = Regs {
            r15: 1,
            rip: 2,
            fs_base: 3,
            gs: 4,
            ..Default::default()
        };
        assert_eq!(regs_from_user(&user_from_regs(&r)), r);
    }
}
