//! POSIX timers (timer_create): id, clock, how they notify (signal number and value, or a
//! thread, or nothing), the time to the next expiry and the interval.
//!
//! Dump: /proc/PID/timers lists every timer (`ID:`, `signal: SIGNO/SIVAL`,
//! `notify: signal|none|thread/pid|tid.N`, `ClockID:`). The times are asked from the process
//! itself: timer_gettime and timer_getoverrun run inside it (see [`crate::inject`]). Timers on
//! the CPU clock of another process are refused, and so are timers on the CPU clock of "the
//! calling thread" in a process with several threads (/proc does not say which thread).
//!
//! Restore: inside the new process, with PR_TIMER_CREATE_RESTORE_IDS (prctl 77, Linux 6.15+)
//! switched on, timer_create takes the wanted id from its `timer_id` argument (EBUSY if taken),
//! so every timer gets its dumped id; the prctl is switched off again afterwards. On a kernel
//! without it, timers are created in id order and the restore fails, naming the timer, as
//! soon as the kernel hands out another id than the dumped one. Armed timers are then set with
//! timer_settime to the time they had left (relative: the time between dump and restore does
//! not count, as for interval timers) and their interval. All signals are blocked while the
//! restore runs, so an expiry meanwhile stays pending. The overrun count cannot be set: after
//! restore it starts again from 0 (a pending timer signal is restored by [`crate::task::signals`]
//! with the siginfo it had, overrun included).

use crate::inject::kabi::{Itimerspec, Sigevent, Timespec};
use crate::inject::{Errno, Injector};
use crate::{procfs, Error};
use stasis_image::PosixTimer;
use stasis_sys::Pid;
use std::path::PathBuf;

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;
const NS: u64 = 1_000_000_000;
/// Bit of a CPU-time clock id that makes it a thread's clock rather than a process's.
const CPUCLOCK_PERTHREAD: i32 = 4;

/// One entry of /proc/PID/timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedTimer {
    pub id: i32,
    pub signo: u32,
    pub sival: u64,
    pub notify: i32,
    /// The pid or tid after `pid.`/`tid.`.
    pub target: i32,
    pub clock: i32,
}

/// Parses /proc/PID/timers.
pub fn parse_timers(text: &str) -> Result<Vec<ListedTimer>, String> {
    let mut out: Vec<ListedTimer> = Vec::new();
    let mut cur: Option<ListedTimer> = None;
    let mut fields = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad line {line:?}"))?;
        let v = v.trim();
        let bad = || format!("bad {k} {v:?}");
        if k == "ID" {
            if let Some(t) = cur.take() {
                if fields != 3 {
                    return Err(format!("timer {} is incomplete", t.id));
                }
                out.push(t);
            }
            cur = Some(ListedTimer {
                id: v.parse().map_err(|_| bad())?,
                signo: 0,
                sival: 0,
                notify: 0,
                target: 0,
                clock: 0,
            });
            fields = 0;
            continue;
        }
        let t = cur
            .as_mut()
            .ok_or_else(|| format!("{k} before the first ID"))?;
        match k {
            "signal" => {
                let (s, val) = v.split_once('/').ok_or_else(bad)?;
                t.signo = s.parse().map_err(|_| bad())?;
                t.sival = u64::from_str_radix(val, 16).map_err(|_| bad())?;
            }
            "notify" => {
                let (how, who) = v.split_once('/').ok_or_else(bad)?;
                let (kind, n) = who.split_once('.').ok_or_else(bad)?;
                let base = match how {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad()),
                };
                t.notify = match kind {
                    "pid" => base,
                    "tid" => base | SIGEV_THREAD_ID,
                    _ => return Err(bad()),
                };
                t.target = n.parse().map_err(|_| bad())?;
            }
            "ClockID" => t.clock = v.parse().map_err(|_| bad())?,
            _ => continue,
        }
        fields += 1;
    }
    if let Some(t) = cur {
        if fields != 3 {
            return Err(format!("timer {} is incomplete", t.id));
        }
        out.push(t);
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// For a CPU-time clock (negative id), the pid it measures (0: the caller's own).
fn cpu_clock_pid(clock: i32) -> Option<i32> {
    (clock < 0).then_some(!(clock >> 3))
}

/// Nanoseconds of a struct timespec.
fn ns(t: Timespec) -> u64 {
    (t.sec as u64)
        .saturating_mul(NS)
        .saturating_add(t.nsec as u64)
}

/// A time in nanoseconds as a struct timespec.
fn timespec(ns: u64) -> Timespec {
    Timespec {
        sec: (ns / NS) as i64,
        nsec: (ns % NS) as i64,
    }
}

/// Lists the timers of `pid` and asks the process for their times.
#[tracing::instrument(name = "posix_timers", level = "debug", skip_all, fields(pid = pid))]
pub fn dump(pid: Pid, inj: &mut Injector) -> Result<Vec<PosixTimer>, Error> {
    let path = PathBuf::from(format!("/proc/{pid}/timers"));
    let text = procfs::read_string(&path)?;
    let listed = parse_timers(&text).map_err(|reason| procfs::ProcError::Parse {
        path: path.clone(),
        reason,
    })?;
    let mut out = Vec::with_capacity(listed.len());
    let threads = procfs::list_threads(pid)?.len();
    for t in listed {
        // A thread CPU clock "of the caller" names the thread that created the timer, which
        // /proc does not tell; the restore creates every timer in the leader.
        let own_thread_clock = t.clock == libc::CLOCK_THREAD_CPUTIME_ID
            || (cpu_clock_pid(t.clock) == Some(0) && t.clock & CPUCLOCK_PERTHREAD != 0);
        if own_thread_clock && threads > 1 {
            return Err(Error::Unsupported {
                what: format!(
                    "POSIX timer {} of pid {pid} runs on the CPU clock of the thread that \
                     created it, which stasis cannot tell in a process with {threads} threads",
                    t.id
                ),
            });
        }
        if let Some(p) = cpu_clock_pid(t.clock).filter(|&p| p != 0 && p != pid) {
            return Err(Error::Unsupported {
                what: format!(
                    "POSIX timer {} of pid {pid} runs on the CPU clock of pid {p}",
                    t.id
                ),
            });
        }
        let times = inj.timer_gettime(t.id)?;
        let overrun = inj.timer_getoverrun(t.id)?;
        out.push(PosixTimer {
            id: t.id,
            clock: t.clock,
            notify: t.notify,
            signo: t.signo,
            sival: t.sival,
            tid: if t.notify & SIGEV_THREAD_ID != 0 {
                t.target
            } else {
                pid
            },
            interval_ns: ns(times.interval),
            value_ns: ns(times.value),
            overrun,
        });
    }
    Ok(out)
}

/// The struct sigevent timer_create gets for `t`.
fn sigevent(t: &PosixTimer) -> Sigevent {
    Sigevent {
        value: t.sival,
        signo: t.signo as i32,
        notify: t.notify,
        tid: if t.notify & SIGEV_THREAD_ID != 0 {
            t.tid
        } else {
            0
        },
        pad: [0; 11],
    }
}

/// Recreates the timers inside the new process, with their ids, then arms them.
#[tracing::instrument(name = "posix_timers", level = "debug", skip_all, fields(pid = inj.tid()))]
pub fn restore(inj: &mut Injector, timers: &[PosixTimer]) -> Result<(), Error> {
    if timers.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&PosixTimer> = timers.iter().collect();
    sorted.sort_by_key(|t| t.id);
    let with_ids = inj.timer_create_restore_ids(true)?.is_ok();
    let created = (|| {
        for t in &sorted {
            match inj.timer_create(t.clock, &sigevent(t), t.id)? {
                Err(Errno(libc::EBUSY)) => {
                    return Err(Error::Invalid(format!(
                        "POSIX timer id {} is already taken in the restored process",
                        t.id
                    )))
                }
                Err(e) => return Err(inj.remote_error("timer_create", e)),
                Ok(got) if got != t.id => {
                    return Err(Error::Unsupported {
                        what: format!(
                            "POSIX timer {} came back with id {got}: this kernel lacks \
                             PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15+) and hands out ids itself",
                            t.id
                        ),
                    })
                }
                Ok(_) => {}
            }
        }
        Ok(())
    })();
    if with_ids {
        let off = inj.timer_create_restore_ids(false).and_then(|r| {
            r.map_err(|e| inj.remote_error("prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)", e))
        });
        created?;
        off?;
    } else {
        created?;
    }
    for t in sorted.iter().filter(|t| t.value_ns != 0) {
        let its = Itimerspec {
            interval: timespec(t.interval_ns),
            value: timespec(t.value_ns),
        };
        inj.timer_settime(t.id, 0, &its)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers() {
        let text = "ID: 3\nsignal: 34/0000000000000000\nnotify: signal/tid.27319\nClockID: -6\n\
                    ID: 1\nsignal: 0/0000000000000000\nnotify: none/pid.27319\nClockID: 0\n\
                    ID: 0\nsignal: 12/0000000000000abc\nnotify: signal/pid.27319\nClockID: 1\n";
        let t = parse_timers(text).unwrap();
        assert_eq!(
            t,
            vec![
                ListedTimer {
                    id: 0,
                    signo: 12,
                    sival: 0xabc,
                    notify: SIGEV_SIGNAL,
                    target: 27319,
                    clock: 1
                },
                ListedTimer {
                    id: 1,
                    signo: 0,
                    sival: 0,
                    notify: SIGEV_NONE,
                    target: 27319,
                    clock: 0
                },
                ListedTimer {
                    id: 3,
                    signo: 34,
                    sival: 0,
                    notify: SIGEV_THREAD_ID,
                    target: 27319,
                    clock: -6
                },
            ]
        );
        assert_eq!(parse_timers("").unwrap(), vec![]);
        assert!(parse_timers("ID: 1\nsignal: 14/0\n").is_err(), "incomplete");
        assert!(parse_timers("signal: 14/0\n").is_err(), "no ID");
        assert!(parse_timers("ID: 1\nsignal: 14/0\nnotify: carrier/pid.1\nClockID: 0\n").is_err());
        assert!(parse_timers("ID: x\n").is_err());
    }

    #[test]
    fn cpu_clocks() {
        // MAKE_PROCESS_CPUCLOCK(0, CPUCLOCK_SCHED) and MAKE_THREAD_CPUCLOCK(0, ...).
        assert_eq!(cpu_clock_pid(-6), Some(0));
        assert_eq!(cpu_clock_pid(-2), Some(0));
        // MAKE_PROCESS_CPUCLOCK(1234, CPUCLOCK_PROF) = (~1234 << 3) | 0.
        assert_eq!(cpu_clock_pid(!1234 << 3), Some(1234));
        assert_eq!(cpu_clock_pid(1), None);
    }

    use crate::inject::kabi::Pod;

    #[test]
    fn sigevent_layout() {
        let t = PosixTimer {
            id: 2,
            clock: 1,
            notify: SIGEV_THREAD_ID,
            signo: 34,
            sival: 0x1122,
            tid: 77,
            value_ns: 0,
            interval_ns: 0,
            overrun: 0,
        };
        let e = sigevent(&t);
        let b = e.as_bytes();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[0..8], &0x1122u64.to_le_bytes());
        assert_eq!(&b[8..12], &34i32.to_le_bytes());
        assert_eq!(&b[12..16], &4i32.to_le_bytes());
        assert_eq!(&b[16..20], &77i32.to_le_bytes());
    }
}
