//! Scheduling of each thread: policy (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE, SCHED_FIFO,
//! SCHED_RR, SCHED_DEADLINE) and its parameters (real-time priority, a time slice the thread
//! asked for, deadline parameters), SCHED_RESET_ON_FORK, the nice value and the CPU affinity.
//!
//! Both sides work from outside, by thread id: sched_getattr, getpriority and
//! sched_getaffinity at dump; sched_setaffinity, sched_setattr and setpriority at restore (the
//! restorer is root, with CAP_SYS_NICE). The nice value is set after the policy: a real-time
//! thread keeps a nice value of its own, which sched_setattr does not set and which applies
//! again when it returns to a fair policy.
//!
//! The restore sets this last, just before the final registers ([`restore`] in the rebuild
//! step `Scheduling`): until then the threads run at the restorer's priority, so that a
//! SCHED_IDLE thread does not make every injected call wait for an idle CPU.

use crate::Error;
use stasis_image::ThreadSched;
use stasis_sys::sched::{self, SchedAttr, SCHED_FLAG_RESET_ON_FORK};
use stasis_sys::Pid;

const SCHED_FIFO: u32 = 1;
const SCHED_RR: u32 = 2;
const SCHED_DEADLINE: u32 = 6;

fn is_fair(policy: u32) -> bool {
    !matches!(policy, SCHED_FIFO | SCHED_RR | SCHED_DEADLINE)
}

/// The time slice a fair thread gets when it asked for none (what sched_getattr reports then),
/// taken from the calling thread, which never asks for one.
fn default_slice() -> Result<u64, Error> {
    let me = stasis_sys::process::gettid();
    let own = sched::get_attr(me).map_err(|e| Error::sys("sched_getattr", me, e))?;
    Ok(if is_fair(own.policy) { own.runtime } else { 0 })
}

/// The record of `attr`, a thread's sched_getattr, with its nice value and affinity.
/// `default_slice` is the slice of a fair thread that asked for none: such a thread records 0.
pub fn record(attr: &SchedAttr, nice: i32, affinity: Vec<u64>, default_slice: u64) -> ThreadSched {
    let fair = is_fair(attr.policy);
    ThreadSched {
        policy: attr.policy,
        reset_on_fork: attr.flags & SCHED_FLAG_RESET_ON_FORK != 0,
        nice,
        priority: if fair { 0 } else { attr.priority },
        runtime_ns: if fair && attr.runtime == default_slice {
            0
        } else {
            attr.runtime
        },
        deadline_ns: if attr.policy == SCHED_DEADLINE {
            attr.deadline
        } else {
            0
        },
        period_ns: if attr.policy == SCHED_DEADLINE {
            attr.period
        } else {
            0
        },
        affinity,
    }
}

/// What sched_setattr takes to give a thread `s` (its nice value is set apart).
pub fn attr(s: &ThreadSched) -> SchedAttr {
    SchedAttr {
        size: 0,
        policy: s.policy,
        flags: if s.reset_on_fork {
            SCHED_FLAG_RESET_ON_FORK
        } else {
            0
        },
        nice: s.nice,
        priority: s.priority,
        runtime: s.runtime_ns,
        deadline: s.deadline_ns,
        period: s.period_ns,
    }
}

/// Reads the scheduling of thread `tid`.
#[tracing::instrument(name = "sched", level = "debug", skip_all, fields(tid = tid))]
pub fn dump(tid: Pid) -> Result<ThreadSched, Error> {
    let a = sched::get_attr(tid).map_err(|e| Error::sys("sched_getattr", tid, e))?;
    let nice = sched::get_nice(tid).map_err(|e| Error::sys("getpriority", tid, e))?;
    let cpus = sched::get_affinity(tid).map_err(|e| Error::sys("sched_getaffinity", tid, e))?;
    Ok(record(&a, nice, cpus, default_slice()?))
}

/// Gives thread `tid` its dumped scheduling: affinity first (SCHED_DEADLINE takes only a
/// thread allowed on every CPU of its root domain), then the policy, then the nice value.
#[tracing::instrument(name = "sched", level = "debug", skip_all, fields(tid = tid))]
///
/// With `confined` (a restore for a requester, whose nice value the restorer took), the
/// thread's current nice value is a floor: the dumped one is kept only when it is higher
/// (lowering it needs a privilege the requester may not have).
pub fn restore(tid: Pid, s: &ThreadSched, confined: bool) -> Result<(), Error> {
    let floored;
    let s = if confined {
        let now = sched::get_nice(tid).map_err(|e| Error::sys("getpriority", tid, e))?;
        floored = ThreadSched {
            nice: s.nice.max(now),
            ..s.clone()
        };
        &floored
    } else {
        s
    };
    sched::set_affinity(tid, &s.affinity).map_err(|e| Error::sys("sched_setaffinity", tid, e))?;
    sched::set_attr(tid, &attr(s)).map_err(|e| Error::Io {
        what: format!(
            "sched_setattr of thread {tid} (policy {}, priority {}, nice {})",
            s.policy, s.priority, s.nice
        ),
        source: e,
    })?;
    sched::set_nice(tid, s.nice).map_err(|e| Error::sys("setpriority", tid, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(policy: u32, priority: u32, runtime: u64) -> SchedAttr {
        SchedAttr {
            size: 48,
            policy,
            flags: 0,
            nice: 0,
            priority,
            runtime,
            deadline: 0,
            period: 0,
        }
    }

    #[test]
    fn a_default_slice_is_not_recorded() {
        let s = record(&raw(0, 0, 2_800_000), 3, vec![3], 2_800_000);
        assert_eq!((s.policy, s.priority, s.nice, s.runtime_ns), (0, 0, 3, 0));
        let custom = record(&raw(3, 0, 1_000_000), 0, vec![3], 2_800_000);
        assert_eq!(custom.runtime_ns, 1_000_000);
        // Back to a sched_setattr that gives the same.
        assert_eq!(attr(&custom).runtime, 1_000_000);
        assert_eq!(attr(&s).runtime, 0);
    }

    #[test]
    fn real_time_keeps_priority_and_flags() {
        let mut a = raw(SCHED_FIFO, 10, 0);
        a.flags = SCHED_FLAG_RESET_ON_FORK;
        let s = record(&a, 4, vec![1], 2_800_000);
        assert!(s.reset_on_fork);
        assert_eq!((s.policy, s.priority, s.nice), (SCHED_FIFO, 10, 4));
        let back = attr(&s);
        assert_eq!(
            (back.policy, back.priority, back.flags),
            (SCHED_FIFO, 10, SCHED_FLAG_RESET_ON_FORK)
        );
    }

    /// The calling thread, read and set again: nothing changes.
    #[test]
    fn own_thread_round_trip() {
        let me = stasis_sys::process::gettid();
        let s = dump(me).unwrap();
        restore(me, &s, false).unwrap();
        assert_eq!(dump(me).unwrap(), s);
    }

    /// In a restore for a requester, the thread's current nice value is a floor: a lower
    /// dumped one is not asked for, a higher one is set. (Run in a thread of its own, whose
    /// nice value this test may raise.)
    #[test]
    fn confined_restore_keeps_the_higher_nice() {
        std::thread::spawn(|| {
            let me = stasis_sys::process::gettid();
            let mut s = dump(me).unwrap();
            sched::set_nice(me, 5).unwrap();
            s.nice = 2;
            restore(me, &s, true).unwrap();
            assert_eq!(sched::get_nice(me).unwrap(), 5, "went below the floor");
            s.nice = 9;
            restore(me, &s, true).unwrap();
            assert_eq!(sched::get_nice(me).unwrap(), 9);
        })
        .join()
        .unwrap();
    }
}
