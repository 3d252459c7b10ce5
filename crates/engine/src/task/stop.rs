//! Job-control stops: a process stopped by SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU (state T) comes
//! back stopped, continues on SIGCONT, and its parent sees the stop reports it would have seen.
//!
//! Dump ([`dump`]). The freezer seizes with ptrace, and a thread of a stopped process reports
//! its group-stop, with the stop signal, where a running one reports the interrupt's SIGTRAP:
//! the freezer keeps that signal ([`is_stop_signal`]). A process that was sent SIGCONT while
//! frozen has it pending: the SIGCONT ended the stop (it would run on once let go), so it is
//! dumped as running, with SIGCONT pending. When the parent is in the dump, it is asked (a
//! waitid with WNOWAIT injected into it, which reads without taking) whether it still has the
//! stop to collect with waitpid(WUNTRACED). A process traced by someone else (a debugger,
//! strace: a tracer outside the tree, or inside it) cannot be seized: the dump is refused,
//! naming the process and its tracer ([`traced_by_another`]).
//!
//! Restore ([`restore`], the rebuild step `JobStop`, after everything that runs inside the
//! process but the final registers). The process enters the stop while still traced: SIGSTOP
//! is queued (every other signal is blocked) and, at its signal-delivery-stop, the thread is
//! resumed with the dumped stop signal, which stops the group; every other thread then takes
//! its part of the group-stop. Detaching at the end of the restore puts each thread back into
//! the stop, silently: the kernel notifies a parent only when a group-stop starts. While the
//! stop starts, the parent (already rebuilt, still traced) has SA_NOCLDSTOP set on SIGCHLD,
//! so it gets no SIGCHLD it did not have; and when it had collected the stop before the dump,
//! the new report is taken by a wait4 injected into it. So the parent sees exactly what it
//! saw before: a stop report still to collect (with the dumped signal) or none, and the
//! SIGCHLDs of its image.
//!
//! A stop signal other than SIGSTOP does not stop a process in an orphaned process group, nor
//! one that handles or ignores it: then SIGSTOP stops it instead (a report still to collect
//! says SIGSTOP). The root's parent is not in the dump: its new parent (`stasis restore`, or
//! whoever adopts it after `--detach`) can collect the stop with waitpid(WUNTRACED). A
//! "continued" report (WCONTINUED) not collected by the parent at dump time is not kept.

use crate::inject::kabi::KernelSigaction;
use crate::inject::Injector;
use crate::{procfs, Error};
use stasis_image::{JobStop, SigAction, Siginfo};
use stasis_sys::{process, ptrace, Pid};

/// PTRACE_EVENT_STOP: a group-stop or an interrupt, as a tracer sees it.
const PTRACE_EVENT_STOP: i32 = 128;
const SIGCONT: u32 = libc::SIGCONT as u32;
const SIGCHLD: u32 = libc::SIGCHLD as u32;
const SIG_DFL: u64 = 0;
/// `si_code` of a stop report (CLD_STOPPED).
const CLD_STOPPED: i32 = 5;

/// Whether `sig` is a signal that stops a process (the signal of a group-stop).
pub fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// When seizing thread `tid` of `pid` was refused: the refusal naming its tracer, when another
/// process traces it.
pub fn traced_by_another(pid: Pid, tid: Pid) -> Option<Error> {
    let text = procfs::slurp_string(std::path::Path::new(&format!(
        "/proc/{pid}/task/{tid}/status"
    )))
    .ok()?;
    let status = procfs::parse_status(&text, std::path::Path::new("status")).ok()?;
    if status.tracer_pid == 0 {
        return None;
    }
    let tracer = status.tracer_pid;
    let name = procfs::comm(tracer, tracer).unwrap_or_else(|_| "?".into());
    let thread = if tid == pid {
        String::new()
    } else {
        format!(" (thread {tid})")
    };
    Some(Error::Unsupported {
        what: format!(
            "pid {pid}{thread} is traced by pid {tracer} ({name}): a process under another \
             tracer (a debugger, strace) cannot be dumped"
        ),
    })
}

/// Whether the stop survives the signals pending when the process was frozen: a SIGCONT among
/// them ended it.
pub fn still_stopped<'a>(pending: impl IntoIterator<Item = &'a Siginfo>) -> bool {
    !pending.into_iter().any(|i| i.signo == SIGCONT)
}

/// The job-control stop of the frozen process `pid`: `stop_signal` is what the freezer saw,
/// `pending` every signal pending in it (process-wide and per thread); `parent` is its parent's
/// leader and the address of a `syscall` instruction in it, when the parent is in the dump.
#[tracing::instrument(name = "stop", level = "debug", skip_all, fields(pid = pid))]
pub fn dump<'a>(
    pid: Pid,
    stop_signal: Option<i32>,
    pending: impl IntoIterator<Item = &'a Siginfo>,
    parent: Option<(Pid, u64)>,
) -> Result<Option<JobStop>, Error> {
    let Some(signal) = stop_signal else {
        return Ok(None);
    };
    if !still_stopped(pending) {
        tracing::debug!("stopped by signal {signal}, but a SIGCONT is pending: it runs on");
        return Ok(None);
    }
    let report_pending = match parent {
        Some((ppid, syscall_ip)) => stop_report_pending(ppid, syscall_ip, pid)?,
        None => false,
    };
    tracing::debug!("stopped by signal {signal} (report pending in the parent: {report_pending})");
    Ok(Some(JobStop {
        signal: signal as u32,
        report_pending,
    }))
}

/// Runs `f` with an injector in the leader of the frozen (or restored, still traced) process
/// `pid`, every signal blocked meanwhile; puts its registers and signal mask back.
fn in_process<T>(
    pid: Pid,
    syscall_ip: u64,
    parked: bool,
    f: impl FnOnce(&mut Injector) -> Result<T, Error>,
) -> Result<T, Error> {
    let mask = ptrace::get_sigmask(pid).map_err(|e| Error::sys("PTRACE_GETSIGMASK", pid, e))?;
    if !parked {
        // (Parking blocks them itself, once the frame holds the mask.)
        ptrace::set_sigmask(pid, u64::MAX).map_err(|e| Error::sys("PTRACE_SETSIGMASK", pid, e))?;
    }
    let result = (|| {
        let mut inj = Injector::new(pid, syscall_ip)?;
        let r = (|| {
            if parked {
                inj.park(mask)?;
                inj.guard()?;
            }
            inj.map_scratch(None)?;
            f(&mut inj)
        })();
        let done = if parked {
            inj.finish_parked()
        } else {
            inj.finish()
        };
        let r = r?;
        done?;
        Ok::<T, Error>(r)
    })();
    let restored =
        ptrace::set_sigmask(pid, mask).map_err(|e| Error::sys("PTRACE_SETSIGMASK", pid, e));
    let r = result?;
    restored?;
    Ok(r)
}

/// Whether the frozen `parent` still has the stop of its child `pid` to collect.
fn stop_report_pending(parent: Pid, syscall_ip: u64, pid: Pid) -> Result<bool, Error> {
    let state = in_process(parent, syscall_ip, true, |inj| {
        inj.waitid(pid, libc::WSTOPPED | libc::WNOHANG | libc::WNOWAIT)
    })?;
    Ok(state.is_some_and(|s| s.pid == pid && s.code == CLD_STOPPED))
}

/// The signal to stop the restored process with: the dumped one when it stops a process with
/// its dispositions (`actions`: the default action), else SIGSTOP.
pub fn entering_signal(stop: &JobStop, actions: &[SigAction]) -> i32 {
    let sig = stop.signal;
    let handled = actions.iter().any(|a| a.sig == sig && a.handler != SIG_DFL);
    if sig == libc::SIGSTOP as u32 || handled {
        libc::SIGSTOP
    } else {
        sig as i32
    }
}

/// Waits for the next stop of the traced thread `tid`.
fn next_stop(tid: Pid) -> Result<(i32, i32), Error> {
    match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
        ptrace::WaitStatus::Stopped { sig, event } => Ok((sig, event)),
        other => Err(Error::TargetDied {
            pid: tid,
            how: format!("{other:?} while entering its job-control stop"),
        }),
    }
}

/// Resumes `tid` with `sig` and waits for the stop that follows.
fn cont_until_stop(tid: Pid, sig: i32) -> Result<(i32, i32), Error> {
    ptrace::cont(tid, sig).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?;
    next_stop(tid)
}

/// Makes the leader `pid` start a group-stop with `sig`; false when the kernel dropped `sig`
/// (a stop signal other than SIGSTOP in an orphaned process group). Every blockable signal
/// is blocked in it. No user code runs: the thread only ever goes as far as the signal checks
/// on its way back to user mode, where it stops (the pending interrupt catches it there when
/// the signal is dropped).
fn start_group_stop(pid: Pid, sig: i32) -> Result<bool, Error> {
    process::kill(pid, libc::SIGSTOP).map_err(|e| Error::sys("kill(SIGSTOP)", pid, e))?;
    // Up to the signal-delivery-stop of the SIGSTOP queued just now.
    loop {
        match cont_until_stop(pid, 0)? {
            (libc::SIGSTOP, 0) => break,
            // A trap left over (an interrupt, the end of a single step): go on.
            (_, PTRACE_EVENT_STOP) | (libc::SIGTRAP, 0) => continue,
            (other, event) => {
                return Err(Error::Internal {
                    what: format!(
                        "pid {pid} stopped with signal {other} (event {event}) instead of the queued SIGSTOP"
                    ),
                })
            }
        }
    }
    let mask = ptrace::get_sigmask(pid).map_err(|e| Error::sys("PTRACE_GETSIGMASK", pid, e))?;
    // The signal the thread is resumed with must not be blocked, or the kernel queues it.
    ptrace::set_sigmask(pid, mask & !(1u64 << (sig - 1)))
        .map_err(|e| Error::sys("PTRACE_SETSIGMASK", pid, e))?;
    ptrace::interrupt(pid).map_err(|e| Error::sys("PTRACE_INTERRUPT", pid, e))?;
    let stopped = cont_until_stop(pid, sig);
    ptrace::set_sigmask(pid, mask).map_err(|e| Error::sys("PTRACE_SETSIGMASK", pid, e))?;
    match stopped? {
        (s, PTRACE_EVENT_STOP) if s == sig => Ok(true),
        (libc::SIGTRAP, PTRACE_EVENT_STOP) => Ok(false),
        (other, event) => Err(Error::Internal {
            what: format!(
                "pid {pid} stopped with signal {other} (event {event}) instead of a group-stop by {sig}"
            ),
        }),
    }
}

/// Puts the restored process `pid` (threads `threads`, the leader first, every one in a
/// ptrace-stop with every blockable signal blocked) into its job-control stop. `actions` are
/// its signal dispositions; `parent` is its parent's leader and the address of a `syscall`
/// instruction in it when the parent is in the dump (rebuilt and still traced).
#[tracing::instrument(name = "stop", level = "debug", skip_all, fields(pid = pid))]
pub fn restore(
    pid: Pid,
    threads: &[Pid],
    stop: &JobStop,
    actions: &[SigAction],
    parent: Option<(Pid, u64)>,
) -> Result<(), Error> {
    let enter = || -> Result<(), Error> {
        let sig = entering_signal(stop, actions);
        if !start_group_stop(pid, sig)? {
            tracing::debug!("signal {sig} did not stop it (orphaned process group): SIGSTOP");
            if !start_group_stop(pid, libc::SIGSTOP)? {
                return Err(Error::Internal {
                    what: format!("pid {pid} did not stop on SIGSTOP"),
                });
            }
        }
        // Every other thread takes its part of the group-stop.
        for &tid in threads.iter().filter(|&&t| t != pid) {
            ptrace::interrupt(tid).map_err(|e| Error::sys("PTRACE_INTERRUPT", tid, e))?;
            match cont_until_stop(tid, 0)? {
                (s, PTRACE_EVENT_STOP) if is_stop_signal(s) => {}
                (s, event) => {
                    return Err(Error::Internal {
                        what: format!(
                            "thread {tid} of pid {pid} stopped with signal {s} (event {event}) instead of its group-stop"
                        ),
                    })
                }
            }
        }
        Ok(())
    };
    let Some((ppid, syscall_ip)) = parent else {
        return enter();
    };
    in_process(ppid, syscall_ip, false, |pinj| {
        // No SIGCHLD for the parent while the stop starts.
        let old = pinj.rt_sigaction_get(SIGCHLD)?;
        pinj.rt_sigaction_set(
            SIGCHLD,
            &KernelSigaction {
                flags: old.flags | libc::SA_NOCLDSTOP as u64,
                ..old
            },
        )?;
        let entered = enter();
        if entered.is_ok() && !stop.report_pending {
            // The parent had collected the stop: take the new report.
            pinj.wait4(pid, libc::WUNTRACED | libc::WNOHANG)?;
        }
        pinj.rt_sigaction_set(SIGCHLD, &old)?;
        entered
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(signo: u32) -> Siginfo {
        Siginfo {
            signo,
            raw: vec![0; 128],
        }
    }

    #[test]
    fn stop_signals() {
        for s in [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
            assert!(is_stop_signal(s));
        }
        // The interrupt's stop of a running thread.
        assert!(!is_stop_signal(libc::SIGTRAP));
        assert!(!is_stop_signal(libc::SIGCONT));
    }

    #[test]
    fn a_pending_sigcont_ends_the_stop() {
        assert!(still_stopped(&[pending(10), pending(34)]));
        assert!(still_stopped(&[]));
        assert!(!still_stopped(&[pending(10), pending(SIGCONT)]));
        // Without a stop signal from the freezer there is no stop, whatever is pending.
        assert_eq!(dump(1, None, &[pending(10)], None).unwrap(), None);
        assert_eq!(
            dump(1, Some(libc::SIGTSTP), &[pending(SIGCONT)], None).unwrap(),
            None
        );
        assert_eq!(
            dump(1, Some(libc::SIGTSTP), &[pending(10)], None).unwrap(),
            Some(JobStop {
                signal: libc::SIGTSTP as u32,
                report_pending: false
            })
        );
    }

    #[test]
    fn the_signal_that_stops_it_again() {
        let stop = |signal| JobStop {
            signal,
            report_pending: true,
        };
        let handler = |sig, handler| SigAction {
            sig,
            handler,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        assert_eq!(entering_signal(&stop(20), &[]), libc::SIGTSTP);
        assert_eq!(entering_signal(&stop(19), &[]), libc::SIGSTOP);
        // A SIGTSTP handled or ignored would not stop it.
        assert_eq!(
            entering_signal(&stop(20), &[handler(20, 0x401000)]),
            libc::SIGSTOP
        );
        assert_eq!(entering_signal(&stop(20), &[handler(20, 1)]), libc::SIGSTOP);
        assert_eq!(
            entering_signal(&stop(22), &[handler(20, 0x401000)]),
            libc::SIGTTOU
        );
    }
}
