//! Signals: dispositions (handler, flags, restorer, mask) of every signal, and pending
//! signals, process-wide and per thread.
//!
//! Dump: rt_sigaction(sig, NULL, &old) runs inside the target for each signal; pending
//! signals are read with PTRACE_PEEKSIGINFO without being dequeued. Restore: rt_sigaction
//! inside the new process; pending signals are queued again by the process itself
//! (rt_sigqueueinfo / rt_tgsigqueueinfo to itself accepts the original siginfo as is).
//! All signals stay blocked while the restore runs, and the dumped mask is set last.

use crate::inject::Injector;
use crate::Error;
use stasis_image::{ProcessSignals, SigAction, Siginfo};
use stasis_sys::{ptrace, Pid};

const SIG_DFL: u64 = 0;
/// Size of struct kernel_sigaction on x86-64: handler, flags, restorer, mask.
const KSIGACTION_LEN: usize = 32;

/// Reads the pending queue of a thread (or the shared one) as image entries.
pub fn raw_pending(tid: Pid, shared: bool) -> Result<Vec<Siginfo>, Error> {
    let infos =
        ptrace::peek_siginfo(tid, shared).map_err(|e| Error::sys("PTRACE_PEEKSIGINFO", tid, e))?;
    Ok(infos
        .iter()
        .map(|raw| Siginfo {
            signo: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
            raw: raw.to_vec(),
        })
        .collect())
}

/// Collects every non-default disposition and the process-wide pending signals.
pub fn dump(pid: Pid, inj: &mut Injector) -> Result<ProcessSignals, Error> {
    let mut actions = Vec::new();
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        let old = inj.scratch()?;
        inj.call(
            "rt_sigaction(query)",
            libc::SYS_rt_sigaction,
            [sig as u64, 0, old, 8, 0, 0],
        )?;
        let b = inj.get(0, KSIGACTION_LEN)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let a = SigAction {
            sig,
            handler: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
        };
        if a.handler != SIG_DFL || a.flags != 0 || a.mask != 0 {
            actions.push(a);
        }
    }
    Ok(ProcessSignals {
        actions,
        shared_pending: raw_pending(pid, true)?,
    })
}

/// Installs the dumped dispositions (the new process starts with all of them at default) and
/// queues the process-wide pending signals.
pub fn restore(inj: &mut Injector, pid: Pid, s: &ProcessSignals) -> Result<(), Error> {
    // The C library's internal signals could not be reset by the restorer itself.
    for sig in [32u32, 33] {
        if !s.actions.iter().any(|a| a.sig == sig) {
            let at = inj.put(0, &[0u8; KSIGACTION_LEN])?;
            inj.call(
                "rt_sigaction(default)",
                libc::SYS_rt_sigaction,
                [sig as u64, at, 0, 8, 0, 0],
            )?;
        }
    }
    for a in &s.actions {
        let mut b = Vec::with_capacity(KSIGACTION_LEN);
        for w in [a.handler, a.flags, a.restorer, a.mask] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let at = inj.put(0, &b)?;
        inj.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [a.sig as u64, at, 0, 8, 0, 0],
        )?;
    }
    for info in &s.shared_pending {
        let at = inj.put(0, &info.raw)?;
        inj.call(
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            [pid as u64, info.signo as u64, at, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Queues one thread-private pending signal in thread `tid` of `pid`.
pub fn queue_thread_signal(
    inj: &mut Injector,
    pid: Pid,
    tid: Pid,
    info: &Siginfo,
) -> Result<(), Error> {
    let at = inj.put(0, &info.raw)?;
    inj.call(
        "rt_tgsigqueueinfo",
        libc::SYS_rt_tgsigqueueinfo,
        [pid as u64, tid as u64, info.signo as u64, at, 0, 0],
    )?;
    Ok(())
}
