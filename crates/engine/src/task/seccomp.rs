//! Seccomp: strict mode and filters, per thread.
//!
//! **Dump.** Each thread's mode comes from the `Seccomp` line of its
//! `/proc/PID/task/TID/status`. A thread under seccomp is given `PTRACE_O_SUSPEND_SECCOMP`
//! before anything is injected into it: the dump's own calls (rt_sigaction, getitimer, prctl,
//! wait4 when the tree is killed, ...) must not meet the filters (nor strict mode, which would
//! kill the thread at the first of them). That needs CAP_SYS_ADMIN; without it the dump is
//! refused. Detaching clears the option, so a `--leave-running` process is filtered again.
//! The filters are read with `PTRACE_SECCOMP_GET_FILTER` (the program) and
//! `PTRACE_SECCOMP_GET_METADATA` (the flags the kernel keeps: `SECCOMP_FILTER_FLAG_LOG`),
//! oldest first (index 0 is the first filter installed), until `ENOENT`.
//!
//! Filters are shared: threads synchronized with `SECCOMP_FILTER_FLAG_TSYNC`, and children,
//! point at the same filter objects. The kernel has no way to compare them (kcmp has no
//! seccomp type), so a filter is identified by its content and its place in the chain: two
//! threads share a filter when its program, its flags and every filter before it are the
//! same. Each distinct filter is stored once per process (`ProcessSeccomp.filters`), each
//! thread's chain as indices into it. Across processes nothing is shared in the image: no
//! call can tell whether two processes share a filter object, and the kernel compares chains
//! only between threads of one process (TSYNC).
//!
//! **Restore** (rebuild step `seccomp`, the last step that injects calls, just before the
//! final registers): the filters may forbid any call, so they go in after everything else
//! the restore runs inside the process. The restorer first gives every thread
//! `PTRACE_O_SUSPEND_SECCOMP` when it may (CAP_SYS_ADMIN); then the calls that still follow
//! (munmap of the scratch area; the final registers are set with ptrace only, and the process
//! resumes only when it is detached, which ends the suspension) cannot be refused by the
//! restored filters. Without the option (a restore as a user) the filters are installed all
//! the same; a filter that forbids `munmap` then fails the restore at its last call
//! (strict mode is refused: it would kill the thread at that call). The chain prefix common
//! to every thread is installed by the leader with `SECCOMP_FILTER_FLAG_TSYNC`, so those
//! filters are shared by all threads as TSYNC had made them; the rest of each thread's chain
//! is installed by the thread itself. Threads that shared filters beyond that common prefix
//! (a subset of the threads, possible only by cloning a thread after it installed a filter)
//! get equal copies: same behaviour, but a later TSYNC from one of them fails.
//!
//! Installing a filter needs no_new_privs or CAP_SYS_ADMIN in the thread, after its
//! credentials are restored: the process had one of them when it installed its filters, but
//! may have dropped the capability since. The kernel then answers EACCES, which the restore
//! reports as such (it cannot install the filters before the credentials, whose calls they
//! may forbid). A filter that sends system calls to a user-space listener
//! (`SECCOMP_RET_USER_NOTIF`) is restored without its listener (a listener fd is refused at
//! dump by the files): such calls fail with ENOSYS as when the listener is closed.

use crate::inject::{Errno, Injector};
use crate::Error;
use stasis_image::{ProcessSeccomp, SeccompFilter, ThreadImage, ThreadSeccomp};
use stasis_sys::{ptrace, Pid};
use std::collections::HashMap;

/// `SECCOMP_FILTER_FLAG_TSYNC`.
const FLAG_TSYNC: u32 = 1;
/// `SECCOMP_FILTER_FLAG_LOG`.
const FLAG_LOG: u32 = 2;
/// SECCOMP_MODE_STRICT and SECCOMP_MODE_FILTER as /proc/PID/status shows them.
const MODE_STRICT: u32 = 1;
const MODE_FILTER: u32 = 2;

/// A thread's seccomp mode, from the `Seccomp:` line of its status file.
fn thread_mode(pid: Pid, tid: Pid) -> Result<u32, Error> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let text = crate::procfs::slurp_string(std::path::Path::new(&path)).map_err(|e| Error::Io {
        what: format!("reading {path}"),
        source: e,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::Unsupported {
            what: format!("{path} has no Seccomp line"),
        })
}

/// Reads the seccomp state of every thread of a frozen process (leader first), and suspends
/// the filters of those under seccomp for the rest of the dump. Must run before anything is
/// injected into the process.
pub fn dump(pid: Pid, tids: &[Pid]) -> Result<ProcessSeccomp, Error> {
    let mut modes = Vec::with_capacity(tids.len());
    for &tid in tids {
        modes.push(thread_mode(pid, tid)?);
    }
    if modes.iter().all(|&m| m == 0) {
        return Ok(ProcessSeccomp::default());
    }
    let mut out = ProcessSeccomp::default();
    // (previous filter, program, log) -> index in out.filters
    let mut known: HashMap<(Option<u32>, Vec<u64>, bool), u32> = HashMap::new();
    for (&tid, &mode) in tids.iter().zip(&modes) {
        if mode == 0 {
            out.threads.push(ThreadSeccomp::default());
            continue;
        }
        ptrace::set_options(tid, ptrace::OPT_SUSPEND_SECCOMP).map_err(|e| Error::Unsupported {
            what: format!(
                "pid {pid} (thread {tid}) is under seccomp: suspending its filters for the \
                     dump (PTRACE_O_SUSPEND_SECCOMP) failed: {e} (it needs CAP_SYS_ADMIN and a \
                     dumper not under seccomp itself)"
            ),
        })?;
        if mode == MODE_STRICT {
            out.threads.push(ThreadSeccomp {
                mode,
                chain: Vec::new(),
            });
            continue;
        }
        if mode != MODE_FILTER {
            return Err(Error::Unsupported {
                what: format!("thread {tid} of pid {pid} has unknown seccomp mode {mode}"),
            });
        }
        let mut oldest_first = Vec::new();
        for index in 0u64.. {
            let insns = match ptrace::seccomp_get_filter(tid, index) {
                Ok(i) => i,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(Error::sys("PTRACE_SECCOMP_GET_FILTER", tid, e)),
            };
            let flags = ptrace::seccomp_get_metadata(tid, index)
                .map_err(|e| Error::sys("PTRACE_SECCOMP_GET_METADATA", tid, e))?;
            oldest_first.push((insns, flags & u64::from(FLAG_LOG) != 0));
            if oldest_first.len() > stasis_image::MAX_SECCOMP_FILTERS {
                return Err(Error::Unsupported {
                    what: format!("thread {tid} of pid {pid} has more than 4096 seccomp filters"),
                });
            }
        }
        let mut chain = Vec::with_capacity(oldest_first.len());
        let mut prev = None;
        for (insns, log) in oldest_first {
            let next = out.filters.len() as u32;
            let key = (prev, insns, log);
            let idx = match known.get(&key) {
                Some(&i) => i,
                None => {
                    out.filters.push(SeccompFilter {
                        insns: key.1.clone(),
                        log,
                    });
                    known.insert(key, next);
                    next
                }
            };
            chain.push(idx);
            prev = Some(idx);
        }
        if chain.is_empty() {
            return Err(Error::Unsupported {
                what: format!(
                    "thread {tid} of pid {pid} is in seccomp filter mode without filters"
                ),
            });
        }
        out.threads.push(ThreadSeccomp { mode, chain });
    }
    Ok(out)
}

/// Installs one filter, turning the kernel's refusal into an error that says why.
fn install(inj: &mut Injector, filter: &SeccompFilter, tsync: bool) -> Result<(), Error> {
    let mut flags = if filter.log { FLAG_LOG } else { 0 };
    if tsync {
        flags |= FLAG_TSYNC;
    }
    let tid = inj.tid();
    match inj.seccomp_set_filter(flags, &filter.insns)? {
        Ok(0) => Ok(()),
        Ok(other) => Err(Error::Internal {
            what: format!(
                "installing a shared seccomp filter from thread {tid}: thread {other} could not \
                 be synchronized (TSYNC)"
            ),
        }),
        Err(Errno(libc::EACCES)) => Err(Error::Unsupported {
            what: format!(
                "thread {tid} cannot get its seccomp filters back: with its restored \
                 credentials it has neither no_new_privs nor CAP_SYS_ADMIN (EACCES)"
            ),
        }),
        Err(errno) => Err(inj.remote_error("seccomp(SECCOMP_SET_MODE_FILTER)", errno)),
    }
}

/// Gives every thread its seccomp mode and filters back (see the module documentation).
/// `others` are the threads but the leader, in the order of the image.
pub fn restore(
    state: &ProcessSeccomp,
    leader: &mut Injector,
    others: &mut [(Injector, &ThreadImage)],
) -> Result<(), Error> {
    if state.threads.iter().all(|t| t.mode == 0) {
        return Ok(());
    }
    // Exempt the calls still to come from the filters, when the restorer may.
    let opts = ptrace::OPT_EXITKILL | ptrace::OPT_TRACECLONE | ptrace::OPT_SUSPEND_SECCOMP;
    let mut suspended = true;
    for tid in std::iter::once(leader.tid()).chain(others.iter().map(|(i, _)| i.tid())) {
        match ptrace::set_options(tid, opts) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && suspended => {
                suspended = false;
                break;
            }
            Err(e) => return Err(Error::sys("PTRACE_SETOPTIONS", tid, e)),
        }
    }
    if !suspended {
        if let Some(i) = state.threads.iter().position(|t| t.mode == MODE_STRICT) {
            let tid = if i == 0 {
                leader.tid()
            } else {
                others[i - 1].0.tid()
            };
            return Err(Error::Unsupported {
                what: format!(
                    "thread {tid} was in seccomp strict mode: once set, the restore's last \
                     call (munmap of its scratch area) would kill it, and exempting that call \
                     (PTRACE_O_SUSPEND_SECCOMP) needs CAP_SYS_ADMIN"
                ),
            });
        }
    }
    // The chain prefix every thread shares, installed once for all with TSYNC.
    let mut common: &[u32] = &state.threads[0].chain;
    for t in &state.threads[1..] {
        let n = common
            .iter()
            .zip(&t.chain)
            .take_while(|(a, b)| a == b)
            .count();
        common = &common[..n];
    }
    let filter = |i: u32| {
        state
            .filters
            .get(i as usize)
            .ok_or_else(|| Error::Internal {
                what: format!("seccomp filter {i} is not in the image"),
            })
    };
    for &i in common {
        install(leader, filter(i)?, true)?;
    }
    let n = common.len();
    for &i in &state.threads[0].chain[n..] {
        install(leader, filter(i)?, false)?;
    }
    for ((inj, _), t) in others.iter_mut().zip(&state.threads[1..]) {
        for &i in &t.chain[n..] {
            install(inj, filter(i)?, false)?;
        }
    }
    for ((inj, _), t) in others.iter_mut().zip(&state.threads[1..]) {
        if t.mode == MODE_STRICT {
            inj.seccomp_set_strict()?;
        }
    }
    if state.threads[0].mode == MODE_STRICT {
        leader.seccomp_set_strict()?;
    }
    Ok(())
}
