//! Interval timers (ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF): read with getitimer and set
//! again with setitimer, both inside the process. The remaining time is kept as it was when
//! the process was frozen; the time spent between dump and restore does not count.
//!
//! An ITIMER_REAL that expired while the process was frozen reads as a zero value with its
//! interval still set: the kernel re-arms it only when the process takes the pending SIGALRM.
//! Such a timer is armed: it is kept, and restored to expire at once and then at its interval.

use crate::inject::Injector;
use crate::Error;
use stasis_image::ITimer;

fn to_us(sec: u64, usec: u64) -> u64 {
    sec.saturating_mul(1_000_000).saturating_add(usec)
}

pub fn dump(inj: &mut Injector) -> Result<Vec<ITimer>, Error> {
    let mut out = Vec::new();
    for which in 0..3u32 {
        let at = inj.scratch()?;
        inj.call(
            "getitimer",
            libc::SYS_getitimer,
            [which as u64, at, 0, 0, 0, 0],
        )?;
        let b = inj.get(0, 32)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let t = ITimer {
            which,
            interval_us: to_us(w(0), w(1)),
            value_us: to_us(w(2), w(3)),
        };
        // A zero value with a non-zero interval is an expired timer waiting to be re-armed.
        if t.value_us != 0 || t.interval_us != 0 {
            out.push(t);
        }
    }
    Ok(out)
}

pub fn restore(inj: &mut Injector, timers: &[ITimer]) -> Result<(), Error> {
    for t in timers {
        let mut b = Vec::with_capacity(32);
        for us in [t.interval_us, t.value_us] {
            b.extend_from_slice(&(us / 1_000_000).to_le_bytes());
            b.extend_from_slice(&(us % 1_000_000).to_le_bytes());
        }
        // A zero value would disarm the timer: an expiry that was due keeps 1 µs.
        if t.value_us == 0 {
            b[24..32].copy_from_slice(&1u64.to_le_bytes());
        }
        let at = inj.put(0, &b)?;
        inj.call(
            "setitimer",
            libc::SYS_setitimer,
            [t.which as u64, at, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}
