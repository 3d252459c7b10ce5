//! timerfd: clock, settime flags, time to the next expiry, interval, and the expirations not
//! read yet.
//!
//! Dump: /proc/PID/fdinfo/N of an `anon_inode:[timerfd]` shows `clockid`, `ticks` (expirations
//! not read yet), `settime flags` (octal: TFD_TIMER_ABSTIME 1, TFD_TIMER_CANCEL_ON_SET 2),
//! `it_value` (the time left to the next expiry, relative even for absolute timers) and
//! `it_interval`, as `(seconds, nanoseconds)`.
//!
//! Restore: timerfd_create(clockid) and timerfd_settime in the restorer, then the ticks with
//! the TFD_IOC_SET_TICKS ioctl (CONFIG_CHECKPOINT_RESTORE); the status flags are set by
//! [`super::open_all`].
//!
//! Time handling, decided here:
//! * A relative timer keeps the time it had left when the process was frozen: the time between
//!   dump and restore does not count (as for interval timers, see [`crate::task::itimers`]).
//! * An absolute timer (TFD_TIMER_ABSTIME) on a wall clock (CLOCK_REALTIME,
//!   CLOCK_REALTIME_ALARM) keeps its deadline: the dump records it as that clock's time and
//!   the restore arms the timer for that time, with the same flags (so
//!   TFD_TIMER_CANCEL_ON_SET keeps working). A deadline that passed meanwhile expires at once.
//! * An absolute timer on CLOCK_MONOTONIC or CLOCK_BOOTTIME keeps the time it had left, since
//!   those clocks restart with every boot; it is armed absolutely at "now + time left".
//! * A timer that expired and was not read yet shows no time left (the kernel re-arms a
//!   periodic timerfd only when it is read): it comes back with its ticks, and a periodic one
//!   is re-armed one interval from the restore. Periods that passed between that expiry and
//!   the dump without being counted by the kernel are not counted either.

use super::{FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use stasis_sys::{anon_files, Pid};
use std::os::fd::{AsFd, OwnedFd, RawFd};

const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;
const NS: u64 = 1_000_000_000;
/// The clocks timerfd_create takes: REALTIME, MONOTONIC, BOOTTIME, REALTIME_ALARM,
/// BOOTTIME_ALARM.
const CLOCKS: [i32; 5] = [
    libc::CLOCK_REALTIME,
    libc::CLOCK_MONOTONIC,
    libc::CLOCK_BOOTTIME,
    libc::CLOCK_REALTIME_ALARM,
    libc::CLOCK_BOOTTIME_ALARM,
];

/// The timerfd kind.
#[derive(Default)]
pub struct TimerFds;

impl FileOps for TimerFds {
    fn name(&self) -> &'static str {
        "timerfd"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::TimerFd { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.anon_name() == Some("[timerfd]")
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        dump(fd.pid, fd.fd, &fd.fdinfo()?)
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::TimerFd {
            clockid,
            settime_flags,
            ..
        } = &desc.kind
        else {
            return Err("not a timerfd".into());
        };
        if !CLOCKS.contains(clockid) {
            return Err(format!(
                "clock {clockid}, which timerfd_create does not take"
            ));
        }
        if settime_flags & !(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) != 0 {
            return Err(format!("unknown settime flags {settime_flags:#o}"));
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        open(desc)
    }
}

/// The timerfd fields of one fdinfo text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerFdInfo {
    pub clockid: i32,
    pub ticks: u64,
    pub settime_flags: u32,
    pub value_ns: u64,
    pub interval_ns: u64,
}

/// Parses `(seconds, nanoseconds)`.
fn parse_time(v: &str) -> Option<u64> {
    let (s, n) = v.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    let s: u64 = s.trim().parse().ok()?;
    let n: u64 = n.trim().parse().ok()?;
    if n >= NS {
        return None;
    }
    s.checked_mul(NS)?.checked_add(n)
}

/// Parses the timerfd lines of /proc/PID/fdinfo/N.
pub fn parse_fdinfo(text: &str) -> Result<TimerFdInfo, String> {
    let (mut clockid, mut ticks, mut flags, mut value, mut interval) =
        (None, None, None, None, None);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let bad = || format!("bad {k} {v:?}");
        match k {
            "clockid" => clockid = Some(v.parse::<i32>().map_err(|_| bad())?),
            "ticks" => ticks = Some(v.parse::<u64>().map_err(|_| bad())?),
            "settime flags" => flags = Some(u32::from_str_radix(v, 8).map_err(|_| bad())?),
            "it_value" => value = Some(parse_time(v).ok_or_else(bad)?),
            "it_interval" => interval = Some(parse_time(v).ok_or_else(bad)?),
            _ => {}
        }
    }
    let missing = |what: &str| format!("no {what} line");
    Ok(TimerFdInfo {
        clockid: clockid.ok_or_else(|| missing("clockid"))?,
        ticks: ticks.ok_or_else(|| missing("ticks"))?,
        settime_flags: flags.ok_or_else(|| missing("settime flags"))?,
        value_ns: value.ok_or_else(|| missing("it_value"))?,
        interval_ns: interval.ok_or_else(|| missing("it_interval"))?,
    })
}

fn is_wall_clock(clockid: i32) -> bool {
    clockid == libc::CLOCK_REALTIME || clockid == libc::CLOCK_REALTIME_ALARM
}

/// Describes timerfd `fd` of `pid` from its fdinfo text.
pub fn dump(pid: Pid, fd: RawFd, fdinfo: &str) -> Result<FileKind, Error> {
    let info = parse_fdinfo(fdinfo)
        .map_err(|e| Error::Invalid(format!("fdinfo of timerfd {fd} of pid {pid}: {e}")))?;
    if info.settime_flags & !(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) != 0 {
        return Err(Error::Unsupported {
            what: format!(
                "timerfd {fd} of pid {pid} has unknown settime flags {:#o}",
                info.settime_flags
            ),
        });
    }
    let mut deadline_ns = 0;
    if info.settime_flags & TFD_TIMER_ABSTIME != 0
        && is_wall_clock(info.clockid)
        && info.value_ns != 0
    {
        let now = anon_files::clock_ns(info.clockid)
            .map_err(|e| Error::io(format!("clock_gettime({})", info.clockid), e))?;
        deadline_ns = now.saturating_add(info.value_ns);
    }
    Ok(FileKind::TimerFd {
        clockid: info.clockid,
        settime_flags: info.settime_flags,
        ticks: info.ticks,
        interval_ns: info.interval_ns,
        remaining_ns: info.value_ns,
        deadline_ns,
    })
}

/// The `(flags, value)` to give timerfd_settime for a dumped timer; `now` reads the timer's
/// clock. A value of 0 leaves the timer disarmed.
fn arm_value(
    clockid: i32,
    settime_flags: u32,
    interval_ns: u64,
    remaining_ns: u64,
    deadline_ns: u64,
    now: impl FnOnce() -> Result<u64, Error>,
) -> Result<u64, Error> {
    // Expired and waiting to be read: a periodic timer goes on one interval from now.
    let left = if remaining_ns == 0 {
        interval_ns
    } else {
        remaining_ns
    };
    if left == 0 {
        return Ok(0);
    }
    if settime_flags & TFD_TIMER_ABSTIME == 0 {
        return Ok(left);
    }
    if is_wall_clock(clockid) && deadline_ns != 0 && remaining_ns != 0 {
        return Ok(deadline_ns);
    }
    Ok(now()?.saturating_add(left).max(1))
}

/// Creates the timerfd of description `f` in the restorer.
fn open(f: &FileDesc) -> Result<OwnedFd, Error> {
    let FileKind::TimerFd {
        clockid,
        settime_flags,
        ticks,
        interval_ns,
        remaining_ns,
        deadline_ns,
    } = &f.kind
    else {
        return Err(Error::Invalid(format!(
            "description {} is not a timerfd",
            f.id
        )));
    };
    let fd = anon_files::timerfd_create(*clockid, libc::TFD_CLOEXEC)
        .map_err(|e| Error::io(format!("timerfd_create({clockid})"), e))?;
    let value = arm_value(
        *clockid,
        *settime_flags,
        *interval_ns,
        *remaining_ns,
        *deadline_ns,
        || {
            anon_files::clock_ns(*clockid)
                .map_err(|e| Error::io(format!("clock_gettime({clockid})"), e))
        },
    )?;
    // Also when disarmed (value 0), so that the settime flags are the dumped ones.
    anon_files::timerfd_settime(fd.as_fd(), *settime_flags as i32, *interval_ns, value)
        .map_err(|e| Error::io(format!("timerfd_settime of description {}", f.id), e))?;
    if *ticks != 0 {
        anon_files::timerfd_set_ticks(fd.as_fd(), *ticks).map_err(|e| {
            Error::io(
                format!(
                    "TFD_IOC_SET_TICKS (needs CONFIG_CHECKPOINT_RESTORE) on description {}",
                    f.id
                ),
                e,
            )
        })?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    #[test]
    fn validate() {
        let p = sample_process();
        let desc = |clockid, settime_flags| FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::TimerFd {
                clockid,
                settime_flags,
                ticks: 0,
                interval_ns: 0,
                remaining_ns: 0,
                deadline_ns: 0,
            },
            owner: Default::default(),
            locks: Vec::new(),
        };
        for clock in CLOCKS {
            TimerFds.validate(&desc(clock, 3), &p).unwrap();
        }
        for clock in [-1, 2, 3, 4, 5, 6, 10, 11] {
            assert!(
                TimerFds.validate(&desc(clock, 0), &p).is_err(),
                "clock {clock}"
            );
        }
        assert!(TimerFds.validate(&desc(1, 4), &p).is_err(), "flags");
    }

    #[test]
    fn fdinfo() {
        let text = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\nclockid: 1\nticks: 3\n\
                    settime flags: 03\nit_value: (2, 979818651)\nit_interval: (1, 500)\n";
        assert_eq!(
            parse_fdinfo(text).unwrap(),
            TimerFdInfo {
                clockid: 1,
                ticks: 3,
                settime_flags: 3,
                value_ns: 2_979_818_651,
                interval_ns: 1_000_000_500,
            }
        );
        assert!(
            parse_fdinfo("clockid: 1\nticks: 0\n").is_err(),
            "missing lines"
        );
        let bad_time = text.replace("(1, 500)", "(1, 1000000000)");
        assert!(parse_fdinfo(&bad_time).is_err());
        let bad_flags = text.replace("settime flags: 03", "settime flags: 9");
        assert!(parse_fdinfo(&bad_flags).is_err());
    }

    #[test]
    fn arming() {
        let now = || Ok(1_000);
        // Relative: the time left, whatever the clock says.
        assert_eq!(arm_value(1, 0, 0, 500, 0, now).unwrap(), 500);
        // Disarmed.
        assert_eq!(arm_value(1, 0, 0, 0, 0, now).unwrap(), 0);
        // Expired periodic: one interval.
        assert_eq!(arm_value(1, 0, 70, 0, 0, now).unwrap(), 70);
        // Absolute wall clock: the recorded deadline.
        assert_eq!(arm_value(0, 3, 0, 500, 9_999, now).unwrap(), 9_999);
        // Absolute monotonic: now + time left.
        assert_eq!(arm_value(1, 1, 0, 500, 0, now).unwrap(), 1_500);
        // Absolute wall clock that expired unread, periodic: now + interval.
        assert_eq!(arm_value(0, 1, 70, 0, 0, now).unwrap(), 1_070);
    }
}
