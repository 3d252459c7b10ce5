//! Signals: dispositions (handler, flags, restorer, mask) of every signal, and pending
//! signals, process-wide and per thread.
//!
//! Dump: rt_sigaction(sig, NULL, &old) runs inside the target for each signal; pending
//! signals are read with PTRACE_PEEKSIGINFO without being dequeued. Restore: rt_sigaction
//! inside the new process; pending signals are queued again by the process itself
//! (rt_sigqueueinfo / rt_tgsigqueueinfo to itself accepts the original siginfo as is).
//! All signals stay blocked while the restore runs, and the dumped mask is set last.

use crate::inject::kabi::{KernelSigaction, Pod, Siginfo};
use crate::inject::Injector;
use crate::Error;
use stasis_image::{ProcessSignals, SigAction};
use stasis_sys::{ptrace, Pid};

const SIG_DFL: u64 = 0;

/// Reads the pending queue of a thread (or the shared one) as image entries.
pub fn raw_pending(tid: Pid, shared: bool) -> Result<Vec<stasis_image::Siginfo>, Error> {
    let infos =
        ptrace::peek_siginfo(tid, shared).map_err(|e| Error::sys("PTRACE_PEEKSIGINFO", tid, e))?;
    Ok(infos
        .iter()
        .map(|raw| stasis_image::Siginfo {
            signo: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
            raw: raw.to_vec(),
        })
        .collect())
}

/// Collects every non-default disposition and the process-wide pending signals.
#[tracing::instrument(name = "signals", level = "debug", skip_all, fields(pid = pid))]
pub fn dump(pid: Pid, inj: &mut Injector) -> Result<ProcessSignals, Error> {
    let mut actions = Vec::new();
    for (sig, k) in query_actions(inj)? {
        let a = SigAction {
            sig,
            handler: k.handler,
            flags: k.flags,
            restorer: k.restorer,
            mask: k.mask,
        };
        if a.handler != SIG_DFL || a.flags != 0 || a.mask != 0 {
            actions.push(a);
        }
    }
    let shared_pending = raw_pending(pid, true)?;
    tracing::debug!(
        "{} signal actions set, {} process-wide signals pending",
        actions.len(),
        shared_pending.len()
    );
    Ok(ProcessSignals {
        actions,
        shared_pending,
    })
}

/// The disposition of every signal but SIGKILL and SIGSTOP: 62 rt_sigaction queries, answered
/// by the dump's prefetch when it ran, else in one
/// batch when the process takes batches ([`Injector::batch`]), else one by one.
fn query_actions(inj: &mut Injector) -> Result<Vec<(u32, KernelSigaction)>, Error> {
    let sigs: Vec<u32> = (1..=64u32)
        .filter(|&s| s != libc::SIGKILL as u32 && s != libc::SIGSTOP as u32)
        .collect();
    // Prefetched with the dump's other questions (`inject::prefetch`): answered from there.
    if inj.has_answer(crate::inject::prefetch::Query::Sigaction(sigs[0])) {
        return sigs
            .iter()
            .map(|&sig| Ok((sig, inj.rt_sigaction_get(sig)?)))
            .collect();
    }
    let size = std::mem::size_of::<KernelSigaction>() as u64;
    let mut f = inj.frame();
    let out = f.alloc_bytes(size * sigs.len() as u64)?;
    let calls: Vec<(i64, [u64; 6])> = sigs
        .iter()
        .enumerate()
        .map(|(i, &sig)| {
            let at = out + i as u64 * size;
            (libc::SYS_rt_sigaction, [sig.into(), 0, at, 8, 0, 0])
        })
        .collect();
    let Some(results) = f.batch("rt_sigaction(query)", &calls)? else {
        drop(f);
        return sigs
            .iter()
            .map(|&sig| Ok((sig, inj.rt_sigaction_get(sig)?)))
            .collect();
    };
    let mut actions = Vec::with_capacity(sigs.len());
    for (i, (&sig, &r)) in sigs.iter().zip(&results).enumerate() {
        if r != 0 {
            let errno = crate::inject::Errno(if (-4095..0).contains(&r) {
                -r as i32
            } else {
                0
            });
            return Err(f.remote_error("rt_sigaction(query)", errno));
        }
        let at = crate::inject::RemotePtr::<KernelSigaction>::at(out + i as u64 * size);
        actions.push((sig, f.read(at)?));
    }
    Ok(actions)
}

/// The kernel's siginfo_t of a pending signal of the image (validated to be 128 bytes).
fn siginfo(info: &stasis_image::Siginfo) -> Result<Siginfo, Error> {
    Siginfo::from_bytes(&info.raw).ok_or_else(|| {
        Error::Invalid(format!(
            "pending signal {} has a siginfo of {} bytes, not 128",
            info.signo,
            info.raw.len()
        ))
    })
}

/// Installs the dumped dispositions (the new process starts with all of them at default) and
/// queues the process-wide pending signals.
#[tracing::instrument(name = "signals", level = "debug", skip_all, fields(pid = pid))]
pub fn restore(inj: &mut Injector, pid: Pid, s: &ProcessSignals) -> Result<(), Error> {
    // The C library's internal signals could not be reset by the restorer itself.
    for sig in [32u32, 33] {
        if !s.actions.iter().any(|a| a.sig == sig) {
            inj.rt_sigaction_reset(sig)?;
        }
    }
    for a in &s.actions {
        let k = KernelSigaction {
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        };
        inj.rt_sigaction_set(a.sig, &k)?;
    }
    for info in &s.shared_pending {
        inj.rt_sigqueueinfo(pid, info.signo, &siginfo(info)?)?;
    }
    Ok(())
}

/// Queues one thread-private pending signal in thread `tid` of `pid`.
pub fn queue_thread_signal(
    inj: &mut Injector,
    pid: Pid,
    tid: Pid,
    info: &stasis_image::Siginfo,
) -> Result<(), Error> {
    inj.rt_tgsigqueueinfo(pid, tid, info.signo, &siginfo(info)?)
}
