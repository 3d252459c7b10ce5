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

use crate::inject::Injector;
use crate::{procfs, Error};
use stasis_image::PosixTimer;
use stasis_sys::Pid;
use std::path::PathBuf;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_OFF: u64 = 0;
const PR_TIMER_CREATE_RESTORE_IDS_ON: u64 = 1;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;
const NS: u64 = 1_000_000_000;
/// Bit of a CPU-time clock id that makes it a thread's clock rather than a process's.
const CPUCLOCK_PERTHREAD: i32 = 4;
/// Size of struct sigevent on x86-64.
const SIGEVENT_LEN: usize = 64;
/// Scratch offsets: the sigevent or itimerspec argument, and the timer id.
const ARG_AT: u64 = 0;
const ID_AT: u64 = 128;

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

fn words(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect()
}

/// Lists the timers of `pid` and asks the process for their times.
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
        let at = inj.scratch()? + ARG_AT;
        inj.call(
            "timer_gettime",
            libc::SYS_timer_gettime,
            [t.id as u64, at, 0, 0, 0, 0],
        )?;
        let w = words(&inj.get(ARG_AT, 32)?);
        let overrun = inj.call(
            "timer_getoverrun",
            libc::SYS_timer_getoverrun,
            [t.id as u64, 0, 0, 0, 0, 0],
        )?;
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
            interval_ns: w[0].saturating_mul(NS).saturating_add(w[1]),
            value_ns: w[2].saturating_mul(NS).saturating_add(w[3]),
            overrun: overrun as i32,
        });
    }
    Ok(out)
}

/// The struct sigevent timer_create gets for `t`.
fn sigevent(t: &PosixTimer) -> [u8; SIGEVENT_LEN] {
    let mut b = [0u8; SIGEVENT_LEN];
    b[0..8].copy_from_slice(&t.sival.to_le_bytes());
    b[8..12].copy_from_slice(&(t.signo as i32).to_le_bytes());
    b[12..16].copy_from_slice(&t.notify.to_le_bytes());
    if t.notify & SIGEV_THREAD_ID != 0 {
        b[16..20].copy_from_slice(&t.tid.to_le_bytes());
    }
    b
}

/// Recreates the timers inside the new process, with their ids, then arms them.
pub fn restore(inj: &mut Injector, timers: &[PosixTimer]) -> Result<(), Error> {
    if timers.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&PosixTimer> = timers.iter().collect();
    sorted.sort_by_key(|t| t.id);
    let with_ids = inj.raw(
        libc::SYS_prctl,
        [
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_ON,
            0,
            0,
            0,
            0,
        ],
    )? == 0;
    let created = (|| {
        for t in &sorted {
            let sev = inj.put(ARG_AT, &sigevent(t))?;
            let id_at = inj.put(ID_AT, &t.id.to_le_bytes())?;
            let r = inj.raw(
                libc::SYS_timer_create,
                [t.clock as i64 as u64, sev, id_at, 0, 0, 0],
            )?;
            if r == -(libc::EBUSY as i64) {
                return Err(Error::Invalid(format!(
                    "POSIX timer id {} is already taken in the restored process",
                    t.id
                )));
            }
            if r < 0 {
                return Err(Error::Remote {
                    call: "timer_create",
                    tid: inj.tid(),
                    errno: std::io::Error::from_raw_os_error(-r as i32),
                });
            }
            let b = inj.get(ID_AT, 4)?;
            let got = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if got != t.id {
                return Err(Error::Unsupported {
                    what: format!(
                        "POSIX timer {} came back with id {got}: this kernel lacks \
                         PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15+) and hands out ids itself",
                        t.id
                    ),
                });
            }
        }
        Ok(())
    })();
    if with_ids {
        let off = inj.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)",
            libc::SYS_prctl,
            [
                PR_TIMER_CREATE_RESTORE_IDS,
                PR_TIMER_CREATE_RESTORE_IDS_OFF,
                0,
                0,
                0,
                0,
            ],
        );
        created?;
        off?;
    } else {
        created?;
    }
    for t in sorted.iter().filter(|t| t.value_ns != 0) {
        let mut its = Vec::with_capacity(32);
        for ns in [t.interval_ns, t.value_ns] {
            its.extend_from_slice(&(ns / NS).to_le_bytes());
            its.extend_from_slice(&(ns % NS).to_le_bytes());
        }
        let at = inj.put(ARG_AT, &its)?;
        inj.call(
            "timer_settime",
            libc::SYS_timer_settime,
            [t.id as u64, 0, at, 0, 0, 0],
        )?;
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
        let b = sigevent(&t);
        assert_eq!(&b[0..8], &0x1122u64.to_le_bytes());
        assert_eq!(&b[8..12], &34i32.to_le_bytes());
        assert_eq!(&b[12..16], &4i32.to_le_bytes());
        assert_eq!(&b[16..20], &77i32.to_le_bytes());
    }
}
