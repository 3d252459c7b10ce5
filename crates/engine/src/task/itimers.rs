//! Interval timers (ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF): read with getitimer and set
//! again with setitimer, both inside the process. The remaining time is kept as it was when
//! the process was frozen; the time spent between dump and restore does not count.
//!
//! The kernel adds a tick to the value given to a CPU-time timer (ITIMER_VIRTUAL, ITIMER_PROF);
//! the restore takes it off again (read back, set once more), so that the timer does not move
//! a tick later with every dump and restore.
//!
//! An ITIMER_REAL that expired while the process was frozen reads as a zero value with its
//! interval still set: the kernel re-arms it only when the process takes the pending SIGALRM.
//! Such a timer is armed: it is kept, and restored to expire at once and then at its interval.

use crate::inject::kabi::{Itimerval, Timeval};
use crate::inject::Injector;
use crate::Error;
use stasis_image::ITimer;

fn to_us(sec: u64, usec: u64) -> u64 {
    sec.saturating_mul(1_000_000).saturating_add(usec)
}

#[tracing::instrument(name = "itimers", level = "debug", skip_all, fields(pid = inj.tid()))]
pub fn dump(inj: &mut Injector) -> Result<Vec<ITimer>, Error> {
    let mut out = Vec::new();
    for which in 0..3u32 {
        let v = inj.getitimer(which)?;
        let t = ITimer {
            which,
            interval_us: to_us(v.interval.sec as u64, v.interval.usec as u64),
            value_us: to_us(v.value.sec as u64, v.value.usec as u64),
        };
        // A zero value with a non-zero interval is an expired timer waiting to be re-armed.
        if t.value_us != 0 || t.interval_us != 0 {
            out.push(t);
        }
    }
    Ok(out)
}

/// A time in µs as a struct timeval.
fn timeval(us: u64) -> Timeval {
    Timeval {
        sec: (us / 1_000_000) as i64,
        usec: (us % 1_000_000) as i64,
    }
}

#[tracing::instrument(name = "itimers", level = "debug", skip_all, fields(pid = inj.tid()))]
pub fn restore(inj: &mut Injector, timers: &[ITimer]) -> Result<(), Error> {
    for t in timers {
        let mut v = Itimerval {
            interval: timeval(t.interval_us),
            value: timeval(t.value_us),
        };
        // A zero value would disarm the timer: an expiry that was due keeps 1 µs.
        if t.value_us == 0 {
            v.value.usec = 1;
        }
        inj.setitimer(t.which, &v)?;
        // The kernel adds a tick to the value of a CPU-time timer it is given (ITIMER_VIRTUAL,
        // ITIMER_PROF: set_cpu_itimer): set as dumped, the timer would expire a tick later
        // after every restore, and drift by one tick per cycle. What it added is read back and
        // taken off the value, once (the second set adds the tick again).
        if t.which != 0 && t.value_us != 0 {
            let got = inj.getitimer(t.which)?;
            let got_us = to_us(got.value.sec as u64, got.value.usec as u64);
            let excess = got_us.saturating_sub(t.value_us);
            if excess > 0 {
                v.value = timeval(t.value_us.saturating_sub(excess).max(1));
                inj.setitimer(t.which, &v)?;
            }
        }
    }
    Ok(())
}
