//! Restore on behalf of a user other than root (through stasisd): who asks, and the checks
//! that refuse images describing a process with more privilege than the requester.
//!
//! These checks are defence in depth: the restore for a requester runs in a process that
//! has become the requester (`restore::as_user`), so the kernel itself refuses ids, groups,
//! capabilities and limits beyond the requester's; the checks give a clear message first.

use crate::Error;
use stasis_image::{ProcessImage, Rlimit};

/// The user a restore runs for, as the kernel reported it.
#[derive(Debug, Clone)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The requester's permitted capabilities: the restored process gets none beyond them
    /// (the credentials step intersects the image's sets with it).
    pub cap_permitted: u64,
    /// The requester's resource limits: no hard limit of the images may exceed them, and a
    /// resource the images do not list gets the requester's limits.
    pub rlimits: Vec<Rlimit>,
    /// The requester's audit login uid (u32::MAX: unset, which it may set to anything itself).
    pub loginuid: u32,
}

/// Refuses images whose process would have more privilege than the requester.
pub(crate) fn check_requester(image: &ProcessImage, r: &Requester) -> Result<(), Error> {
    let refuse = |why: String| Err(Error::Refused(format!("the images describe {why}")));
    let c = &image.creds;
    if c.uids.iter().any(|&u| u != r.uid) || c.gids.iter().any(|&g| g != r.gid) {
        return refuse(format!(
            "a process with uids {:?} and gids {:?}, not those of uid {} gid {}",
            c.uids, c.gids, r.uid, r.gid
        ));
    }
    if let Some(g) = c.groups.iter().find(|g| !r.groups.contains(g)) {
        return refuse(format!(
            "a process in group {g}, which uid {} is not in",
            r.uid
        ));
    }
    let caps = c.cap_permitted | c.cap_effective | c.cap_inheritable | c.cap_ambient;
    if caps & !r.cap_permitted != 0 {
        return refuse(format!(
            "a process with capabilities {caps:#x} beyond the requester's {:#x}",
            r.cap_permitted
        ));
    }
    if image.task.root != "/" {
        return refuse(format!("a process with root directory {}", image.task.root));
    }
    for l in &image.task.rlimits {
        if let Some(mine) = r.rlimits.iter().find(|m| m.resource == l.resource) {
            if l.hard > mine.hard {
                return refuse(format!(
                    "resource limit {} of {}, above the requester's {}",
                    l.resource, l.hard, mine.hard
                ));
            }
        }
    }
    check_process_parts(image, r).or_else(refuse)
}

const CAP_IPC_LOCK: u64 = 1 << 14;
const CAP_SYS_NICE: u64 = 1 << 23;
const CAP_SYS_RESOURCE: u64 = 1 << 24;
const RLIMIT_MEMLOCK: u32 = 8;
const RLIMIT_NICE: u32 = 13;
const RLIMIT_RTPRIO: u32 = 14;

/// What the restorer sets with its own privilege (scheduling from outside; locks, IO flusher,
/// KSM merging, oom_score_adj and the audit login uid before the credentials) stays within
/// what the requester could set itself.
fn check_process_parts(image: &ProcessImage, r: &Requester) -> Result<(), String> {
    let has = |cap: u64| r.cap_permitted & cap != 0;
    let hard = |res: u32| {
        r.rlimits
            .iter()
            .find(|l| l.resource == res)
            .map_or(0, |l| l.hard)
    };
    let soft = |res: u32| {
        image
            .task
            .rlimits
            .iter()
            .find(|l| l.resource == res)
            .map_or(0, |l| l.soft)
    };
    if !has(CAP_SYS_NICE) {
        // Without CAP_SYS_NICE: real-time priorities up to RLIMIT_RTPRIO, no SCHED_DEADLINE,
        // nice values down to 20 - RLIMIT_NICE, or to the default 0 the restorer starts from.
        let lowest_nice = (20 - hard(RLIMIT_NICE).min(40) as i64).min(0);
        for t in &image.threads {
            let s = &t.sched;
            if s.policy == 6
                || u64::from(s.priority) > hard(RLIMIT_RTPRIO)
                || i64::from(s.nice) < lowest_nice
            {
                return Err(format!(
                    "thread {} with scheduling policy {} priority {} nice {}, beyond what the requester may set",
                    t.tid, s.policy, s.priority, s.nice
                ));
            }
        }
    }
    if !has(CAP_IPC_LOCK) {
        let locked: u64 = image
            .vmas
            .iter()
            .filter(|v| v.advice.locked)
            .map(|v| v.end - v.start)
            .sum();
        let any = locked > 0 || image.mlock_future != 0;
        if any && locked > soft(RLIMIT_MEMLOCK) {
            return Err(format!(
                "{locked} bytes of locked memory, above its RLIMIT_MEMLOCK"
            ));
        }
    }
    if !has(CAP_SYS_RESOURCE) {
        if image.task.oom_score_adj < 0 {
            return Err(format!(
                "a process with oom_score_adj {}",
                image.task.oom_score_adj
            ));
        }
        if image.prctl.memory_merge || image.threads.iter().any(|t| t.prctl.io_flusher) {
            return Err("a process with PR_SET_MEMORY_MERGE or PR_SET_IO_FLUSHER".into());
        }
    }
    if r.loginuid != u32::MAX {
        let own =
            std::iter::once(image.task.loginuid).chain(image.threads.iter().map(|t| t.loginuid));
        if let Some(other) = own.into_iter().find(|l| *l != r.loginuid) {
            return Err(format!(
                "a process with audit login uid {other}, not the requester's {}",
                r.loginuid
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    /// A requester with the sample's ids, no capabilities, and the usual limits (no real-time
    /// priority, no nice below 0, 8 MiB locked).
    fn requester() -> Requester {
        Requester {
            uid: 0,
            gid: 0,
            groups: vec![0],
            cap_permitted: u64::MAX >> 23,
            rlimits: [(8, 8 << 20), (13, 0), (14, 0)]
                .into_iter()
                .map(|(resource, hard)| Rlimit {
                    resource,
                    soft: hard,
                    hard,
                })
                .collect(),
            loginuid: 1000,
        }
    }

    /// The sample as an unprivileged process could have it.
    fn plain() -> ProcessImage {
        let mut p = sample_process();
        p.task.loginuid = 1000;
        p.vmas[1].advice.locked = false;
        for t in &mut p.threads {
            t.sched.policy = 0;
            t.sched.priority = 0;
            t.sched.nice = 0;
        }
        p
    }

    #[test]
    fn what_the_requester_may_set_passes() {
        let r = Requester {
            cap_permitted: 0,
            ..requester()
        };
        check_process_parts(&plain(), &r).unwrap();
    }

    #[test]
    fn more_than_the_requester_may_set_is_refused() {
        let r = Requester {
            cap_permitted: 0,
            ..requester()
        };
        let refused = |p: ProcessImage, what: &str| {
            let e = check_process_parts(&p, &r).expect_err(what);
            assert!(!e.is_empty());
        };
        let mut p = plain();
        p.threads[0].sched.policy = 1;
        p.threads[0].sched.priority = 10;
        refused(p, "SCHED_FIFO without RLIMIT_RTPRIO");
        let mut p = plain();
        p.threads[0].sched.nice = -5;
        refused(p, "nice -5 without RLIMIT_NICE");
        let mut p = plain();
        p.task.oom_score_adj = -500;
        refused(p, "negative oom_score_adj");
        let mut p = plain();
        p.task.loginuid = 0;
        refused(p, "another loginuid");
        let mut p = plain();
        p.threads[0].loginuid = 0;
        refused(p, "a thread with another loginuid");
        let mut p = plain();
        p.prctl.memory_merge = true;
        refused(p, "PR_SET_MEMORY_MERGE");
        let mut p = plain();
        p.task.rlimits.push(stasis_image::Rlimit {
            resource: 8,
            soft: 4096,
            hard: 4096,
        });
        p.vmas[1].advice.locked = true;
        refused(p, "more locked than RLIMIT_MEMLOCK");
        // With the capabilities, all of it is the requester's to set.
        let mut p = plain();
        p.threads[0].sched.nice = -5;
        p.task.oom_score_adj = -500;
        check_process_parts(&p, &requester()).unwrap();
    }
}
