//! Scheduling of a thread, by its id: policy and parameters (sched_getattr/sched_setattr, by
//! hand: rustix has neither), nice value and CPU affinity (rustix).

use crate::Pid;
use std::io;

/// `struct sched_attr` as the kernel first defined it (SCHED_ATTR_SIZE_VER0, 48 bytes: no
/// utilization clamps).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedAttr {
    pub size: u32,
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
}

const _: () = assert!(std::mem::size_of::<SchedAttr>() == 48);

/// `SCHED_FLAG_RESET_ON_FORK`.
pub const SCHED_FLAG_RESET_ON_FORK: u64 = 1;

fn pid(tid: Pid) -> io::Result<rustix::process::Pid> {
    rustix::process::Pid::from_raw(tid).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

/// sched_getattr(tid): the thread's policy and its parameters.
pub fn get_attr(tid: Pid) -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as libc::c_uint;
    // SAFETY: `attr` is a writable `struct sched_attr` of `size` bytes, which the kernel fills
    // (it writes at most `size` bytes).
    crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut SchedAttr,
            size,
            0 as libc::c_uint,
        )
    })?;
    Ok(attr)
}

/// sched_setattr(tid, attr): `attr.size` is set here.
pub fn set_attr(tid: Pid, attr: &SchedAttr) -> io::Result<()> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        ..*attr
    };
    // SAFETY: `attr` is a readable `struct sched_attr` whose `size` field says how long it is;
    // the kernel only reads it.
    crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid,
            &attr as *const SchedAttr,
            0 as libc::c_uint,
        )
    })?;
    Ok(())
}

/// getpriority(PRIO_PROCESS, tid): the thread's nice value (-20..=19).
pub fn get_nice(tid: Pid) -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(pid(tid)?))?)
}

/// setpriority(PRIO_PROCESS, tid, nice).
pub fn set_nice(tid: Pid, nice: i32) -> io::Result<()> {
    Ok(rustix::process::setpriority_process(Some(pid(tid)?), nice)?)
}

/// sched_getaffinity(tid): the CPUs the thread may run on, bit n of word n / 64 for CPU n.
pub fn get_affinity(tid: Pid) -> io::Result<Vec<u64>> {
    let set = rustix::thread::sched_getaffinity(Some(pid(tid)?))?;
    let mut words = vec![0u64; rustix::thread::CpuSet::MAX_CPU.div_ceil(64)];
    for cpu in 0..rustix::thread::CpuSet::MAX_CPU {
        if set.is_set(cpu) {
            words[cpu / 64] |= 1 << (cpu % 64);
        }
    }
    while words.len() > 1 && words.last() == Some(&0) {
        words.pop();
    }
    Ok(words)
}

/// sched_setaffinity(tid, cpus) (bit n of word n / 64 for CPU n). CPUs beyond what a cpu set
/// holds are an error (EINVAL).
pub fn set_affinity(tid: Pid, cpus: &[u64]) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for (w, word) in cpus.iter().enumerate() {
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                let cpu = w * 64 + bit;
                if cpu >= rustix::thread::CpuSet::MAX_CPU {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                set.set(cpu);
            }
        }
    }
    Ok(rustix::thread::sched_setaffinity(Some(pid(tid)?), &set)?)
}

/// Whether the calling thread runs under a real-time policy (SCHED_FIFO, SCHED_RR or
/// SCHED_DEADLINE), ahead of every ordinary thread, the kernel's workers included. False when
/// the policy cannot be read.
pub fn realtime() -> bool {
    get_attr(crate::process::gettid()).is_ok_and(|a| {
        [libc::SCHED_FIFO, libc::SCHED_RR, SCHED_DEADLINE].contains(&(a.policy as i32))
    })
}

/// `SCHED_DEADLINE` (the libc crate lacks it).
const SCHED_DEADLINE: i32 = 6;

/// The CPU the calling thread runs on (sched_getcpu: where it ran a moment ago).
pub fn current_cpu() -> usize {
    rustix::thread::sched_getcpu()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_thread() {
        let me = crate::process::getpid();
        let a = get_attr(me).unwrap();
        assert_eq!(a.size, 48);
        assert!([0, 3, 5].contains(&a.policy), "{a:?}");
        assert!(!realtime());
        let nice = get_nice(me).unwrap();
        assert!((-20..=19).contains(&nice));
        assert_eq!(a.nice, nice);
        let cpus = get_affinity(me).unwrap();
        assert!(cpus.iter().any(|w| *w != 0));
        // Setting what is there changes nothing.
        set_affinity(me, &cpus).unwrap();
        set_nice(me, nice).unwrap();
        assert_eq!(get_affinity(me).unwrap(), cpus);
    }

    /// A thread at SCHED_FIFO (root may set it) and at SCHED_RR is real-time, at SCHED_BATCH
    /// not.
    #[test]
    fn real_time_policies_are_told_apart() {
        if crate::process::geteuid() != 0 {
            eprintln!("skipped: setting a real-time policy needs root");
            return;
        }
        for (policy, priority, rt) in [
            (libc::SCHED_FIFO, 1, true),
            (libc::SCHED_RR, 1, true),
            (libc::SCHED_BATCH, 0, false),
        ] {
            let seen = std::thread::spawn(move || {
                let me = crate::process::gettid();
                let attr = SchedAttr {
                    policy: policy as u32,
                    priority,
                    ..SchedAttr::default()
                };
                set_attr(me, &attr).unwrap();
                realtime()
            })
            .join()
            .unwrap();
            assert_eq!(seen, rt, "policy {policy}");
        }
    }
}
