//! File locks held by the dumped processes, for every kind of file: POSIX record locks
//! (fcntl F_SETLK), open file description locks (F_OFD_SETLK), flock(2) locks and leases
//! (F_SETLEASE).
//!
//! Dump: the `lock:` lines of /proc/PID/fdinfo/FD list the locks of that fd's description.
//! OFD locks, flock locks and leases belong to the description and go into its
//! `FileDesc.locks`. A POSIX lock belongs to the process (its fd table, in the kernel) and
//! shows on the fds of the description it was taken through; it goes into the process's
//! `ProcessImage.posix_locks` with one of those fds. A process blocked in F_SETLKW holds
//! nothing yet (/proc/locks shows it as a waiter, `->`, and fdinfo does not): its system
//! call restarts after the restore like any other.
//!
//! Restore: OFD locks are taken by the restorer on the description it opened
//! ([`take_on_description`]); the restore children inherit the description, and with it the
//! locks. POSIX locks, flock locks and leases are taken by the restored process itself with
//! injected calls (rebuild step `locks`, [`take_in_process`]): a POSIX lock belongs to the
//! process that takes it, F_SETLEASE makes the caller the description's I/O owner (the lease
//! break signal goes to it), and a flock lock shows the pid of the process that took it. A lock that someone else holds by then fails the restore and
//! names the holder (from /proc/locks).

use crate::inject::Injector;
use crate::Error;
use stasis_image::{DescLock, DescLockKind, FileDesc, LockRange, PosixLock};
use stasis_sys::fs::{get_range_lock, set_range_lock, RangeLockOwner};
use stasis_sys::kabi::{Flock, Pod};
use stasis_sys::Pid;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The class of a lock, as /proc/locks names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockClass {
    /// `POSIX`: fcntl F_SETLK, owned by a process.
    Posix,
    /// `OFDLCK`: fcntl F_OFD_SETLK, owned by a description.
    Ofd,
    /// `FLOCK`: flock(2), owned by a description.
    Flock,
    /// `LEASE`: fcntl F_SETLEASE.
    Lease,
}

/// One line of /proc/locks or one `lock:` line of fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    pub class: LockClass,
    /// A process waiting for the lock (`->` in /proc/locks), not holding it.
    pub waiter: bool,
    /// `ADVISORY`, or for leases `ACTIVE`, `BREAKING`, `BREAKER`.
    pub mode: String,
    pub range: LockRange,
    /// The pid that took it; -1 for OFD locks.
    pub pid: i32,
    /// Device (major, minor) and inode of the locked file.
    pub dev: (u32, u32),
    pub ino: u64,
}

/// Parses one lock line without its `lock:` prefix:
/// `1: POSIX  ADVISORY  WRITE 11345 fe:00:10010783 0 99` (or with `->` after the number).
pub fn parse_line(line: &str) -> Result<LockLine, String> {
    let bad = |why: &str| format!("lock line {line:?}: {why}");
    let mut it = line.split_whitespace();
    let num = it.next().ok_or_else(|| bad("empty"))?;
    if !num.ends_with(':') {
        return Err(bad("no number"));
    }
    let mut class = it.next().ok_or_else(|| bad("no class"))?;
    let waiter = class == "->";
    if waiter {
        class = it.next().ok_or_else(|| bad("no class"))?;
    }
    let class = match class {
        "POSIX" => LockClass::Posix,
        "OFDLCK" => LockClass::Ofd,
        "FLOCK" => LockClass::Flock,
        "LEASE" => LockClass::Lease,
        other => return Err(bad(&format!("lock class {other} is not supported"))),
    };
    let mode = it.next().ok_or_else(|| bad("no mode"))?.to_string();
    let write = match it.next().ok_or_else(|| bad("no type"))? {
        "WRITE" => true,
        "READ" => false,
        // A lease being broken to nothing shows the type it is broken to; [`classify`]
        // refuses it by its mode.
        "UNLCK" if class == LockClass::Lease => false,
        other => return Err(bad(&format!("lock type {other} is not supported"))),
    };
    let pid: i32 = it
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad pid"))?;
    let file = it.next().ok_or_else(|| bad("no file"))?;
    let mut parts = file.split(':');
    let (Some(maj), Some(min), Some(ino), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad device:inode"));
    };
    let dev = (
        u32::from_str_radix(maj, 16).map_err(|_| bad("bad major"))?,
        u32::from_str_radix(min, 16).map_err(|_| bad("bad minor"))?,
    );
    let ino: u64 = ino.parse().map_err(|_| bad("bad inode"))?;
    let start: u64 = it
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad start"))?;
    let end = match it.next().ok_or_else(|| bad("no end"))? {
        "EOF" => None,
        s => Some(s.parse::<u64>().map_err(|_| bad("bad end"))?),
    };
    if it.next().is_some() {
        return Err(bad("trailing fields"));
    }
    if end.is_some_and(|e| e < start) {
        return Err(bad("end before start"));
    }
    Ok(LockLine {
        class,
        waiter,
        mode,
        range: LockRange { write, start, end },
        pid,
        dev,
        ino,
    })
}

/// The `lock:` lines of an fdinfo text.
pub fn parse_fdinfo(fdinfo: &str) -> Result<Vec<LockLine>, String> {
    fdinfo
        .lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .map(parse_line)
        .collect()
}

/// Every line of /proc/locks that parses (lines of classes stasis does not handle, such as
/// NFS delegations, are skipped: they only serve to name a holder).
pub fn parse_proc_locks(text: &str) -> Vec<LockLine> {
    text.lines().filter_map(|l| parse_line(l).ok()).collect()
}

/// What the dump keeps of one fd's locks.
#[derive(Debug, Default)]
pub struct FdLocks {
    /// POSIX locks taken through the fd's description (the process's own).
    pub posix: Vec<LockRange>,
    /// Locks of the description.
    pub desc: Vec<DescLock>,
}

/// Sorts the `lock:` lines of one fd. `what` names the fd in errors.
pub fn classify(lines: &[LockLine], what: &str) -> Result<FdLocks, Error> {
    let mut out = FdLocks::default();
    for l in lines {
        let kind = match l.class {
            LockClass::Posix => {
                out.posix.push(l.range);
                continue;
            }
            LockClass::Ofd => DescLockKind::Ofd,
            LockClass::Flock => DescLockKind::Flock,
            LockClass::Lease => {
                if l.mode != "ACTIVE" {
                    return Err(Error::Refused(format!(
                        "{what}: its lease is being broken ({}); dump again once the lease \
                         break is over",
                        l.mode
                    )));
                }
                DescLockKind::Lease
            }
        };
        out.desc.push(DescLock {
            kind,
            range: l.range,
            pid: l.pid,
        });
    }
    Ok(out)
}

/// `bytes 0-99` or `bytes 10 to the end of the file`.
fn bytes(r: &LockRange) -> String {
    match r.end {
        Some(e) => format!("bytes {}-{e}", r.start),
        None => format!("bytes {} to the end of the file", r.start),
    }
}

fn type_name(r: &LockRange) -> &'static str {
    if r.write {
        "write"
    } else {
        "read"
    }
}

fn overlaps(a: &LockRange, b: &LockRange) -> bool {
    let a_end = a.end.unwrap_or(u64::MAX);
    let b_end = b.end.unwrap_or(u64::MAX);
    a.start <= b_end && b.start <= a_end
}

/// Who holds a lock on `fd`'s file that conflicts with `want` (from /proc/locks), skipping
/// the locks `ours` says are the restore's own.
fn holder(fd: &OwnedFd, want: &LockRange, ours: impl Fn(&LockLine) -> bool) -> String {
    let Ok(meta) = std::fs::File::from(match fd.try_clone() {
        Ok(fd) => fd,
        Err(_) => return "someone else".into(),
    })
    .metadata() else {
        return "someone else".into();
    };
    let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    parse_proc_locks(&text)
        .into_iter()
        .filter(|l| !l.waiter && l.dev == dev && l.ino == meta.ino())
        .filter(|l| (l.range.write || want.write) && overlaps(&l.range, want))
        .find(|l| !ours(l))
        .map(|l| match l.pid {
            -1 => "an open file description (an OFD lock)".to_string(),
            pid => format!("pid {pid}"),
        })
        .unwrap_or_else(|| "someone else".into())
}

/// The error for a lock that another owner holds now.
fn held_now(name: &str, range: &LockRange, by: String) -> Error {
    Error::Changed {
        what: format!(
            "file {name}: the {} lock on {} is held by {by} now",
            type_name(range),
            bytes(range)
        ),
    }
}

/// The error for a flock lock that another description holds now.
fn flock_held_now(name: &str, range: &LockRange, by: String) -> Error {
    let kind = if range.write { "exclusive" } else { "shared" };
    Error::Changed {
        what: format!("file {name}: the {kind} flock lock is held by {by} now"),
    }
}

/// The `struct flock` for `range`.
fn flock_of(range: &LockRange) -> Flock {
    let mut l = Flock::zeroed();
    l.l_type = if range.write {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as i16;
    l.whence = libc::SEEK_SET as i16;
    l.start = range.start as i64;
    l.len = match range.end {
        Some(e) => (e - range.start + 1) as i64,
        None => 0,
    };
    l
}

/// A name for a description in errors: its path when it has one.
pub(crate) fn desc_name(desc: &FileDesc, fd: &OwnedFd) -> String {
    let link = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(fd)
    ));
    match link {
        Ok(p) => p.display().to_string(),
        Err(_) => format!("description {}", desc.id),
    }
}

/// Takes the OFD locks of `desc` on `fd`, the restorer's copy of the description. flock locks
/// and leases are left for the restored processes ([`take_in_process`]).
pub fn take_on_description(fd: &OwnedFd, desc: &FileDesc) -> Result<(), Error> {
    for lock in &desc.locks {
        let r = match lock.kind {
            DescLockKind::Ofd => set_range_lock(
                fd.as_fd(),
                RangeLockOwner::Description,
                &flock_of(&lock.range),
            ),
            DescLockKind::Flock | DescLockKind::Lease => continue,
        };
        match r {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                let by = match get_range_lock(
                    fd.as_fd(),
                    RangeLockOwner::Description,
                    &flock_of(&lock.range),
                ) {
                    Ok(Some(l)) if l.pid > 0 => format!("pid {}", l.pid),
                    _ => holder(fd, &lock.range, |_| false),
                };
                return Err(held_now(&desc_name(desc, fd), &lock.range, by));
            }
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "fcntl(F_OFD_SETLK) of the {} lock on {} of {}",
                        type_name(&lock.range),
                        bytes(&lock.range),
                        desc_name(desc, fd)
                    ),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// The name of fd `fd` of restored process `pid`, for errors.
fn remote_name(pid: Pid, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("fd {fd}"))
}

/// Takes the POSIX locks of a restored process, and the flock locks and leases `desc_locks`
/// (through fd, the lock) that are its to take, with injected calls, once its fds are in
/// place.
pub fn take_in_process(
    inj: &mut Injector,
    pid: Pid,
    posix: &[PosixLock],
    desc_locks: &[(i32, DescLock)],
) -> Result<(), Error> {
    for l in posix {
        if let Err(errno) = inj.fcntl_setlk(l.fd, &flock_of(&l.range))? {
            let name = remote_name(pid, l.fd);
            if matches!(errno.0, libc::EAGAIN | libc::EACCES) {
                let by = match std::fs::File::open(format!("/proc/{pid}/fd/{}", l.fd)) {
                    Ok(f) => holder(&OwnedFd::from(f), &l.range, |h| h.pid == pid),
                    Err(_) => "someone else".into(),
                };
                return Err(held_now(&name, &l.range, by));
            }
            return Err(Error::Remote {
                call: "fcntl(F_SETLK)",
                tid: pid,
                errno: errno.io_error(),
            });
        }
    }
    for (fd, lock) in desc_locks
        .iter()
        .filter(|(_, l)| l.kind == DescLockKind::Flock)
    {
        if let Err(errno) = inj.flock_nonblocking(*fd, lock.range.write)? {
            let name = remote_name(pid, *fd);
            if errno.0 == libc::EWOULDBLOCK {
                let by = match std::fs::File::open(format!("/proc/{pid}/fd/{fd}")) {
                    Ok(f) => holder(&OwnedFd::from(f), &lock.range, |h| {
                        h.class != LockClass::Flock
                    }),
                    Err(_) => "someone else".into(),
                };
                return Err(flock_held_now(&name, &lock.range, by));
            }
            return Err(Error::Remote {
                call: "flock",
                tid: pid,
                errno: errno.io_error(),
            });
        }
    }
    for (fd, lock) in desc_locks
        .iter()
        .filter(|(_, l)| l.kind == DescLockKind::Lease)
    {
        let (fd, write) = (*fd, lock.range.write);
        if let Err(errno) = inj.fcntl_setlease(fd, write)? {
            let name = remote_name(pid, fd);
            let kind = if write { "write" } else { "read" };
            if errno.0 == libc::EAGAIN {
                // The kernel refuses a lease while the file is open in a way that conflicts:
                // for writing (a read lease), or at all by anyone else (a write lease).
                return Err(Error::Changed {
                    what: format!(
                        "file {name}: the {kind} lease cannot be taken again: the file is open \
                         {} elsewhere now",
                        if write {
                            "by someone else"
                        } else {
                            "for writing"
                        }
                    ),
                });
            }
            return Err(Error::Io {
                what: format!("fcntl(F_SETLEASE) of the {kind} lease on {name} in pid {pid}"),
                source: errno.io_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_lines() {
        let text = "pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t10010783\n\
                    lock:\t1: POSIX  ADVISORY  WRITE 11345 fe:00:10010783 0 99\n\
                    lock:\t2: POSIX  ADVISORY  READ 11345 fe:00:10010783 150 199\n";
        let l = parse_fdinfo(text).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].class, LockClass::Posix);
        assert_eq!(
            l[0].range,
            LockRange {
                write: true,
                start: 0,
                end: Some(99)
            }
        );
        assert_eq!(l[0].pid, 11345);
        assert_eq!(l[0].dev, (0xfe, 0));
        assert_eq!(l[0].ino, 10010783);
        assert!(!l[1].range.write);
        assert_eq!(l[1].range.end, Some(199));
    }

    #[test]
    fn parses_every_class() {
        let ofd = parse_line("1: OFDLCK ADVISORY  WRITE -1 fe:00:10010783 120 129").unwrap();
        assert_eq!((ofd.class, ofd.pid), (LockClass::Ofd, -1));
        let fl = parse_line("1: FLOCK  ADVISORY  READ 11345 fe:00:10010783 0 EOF").unwrap();
        assert_eq!(fl.class, LockClass::Flock);
        assert_eq!(fl.range.end, None);
        let le = parse_line("1: LEASE  ACTIVE    READ 11345 fe:00:10010784 0 EOF").unwrap();
        assert_eq!((le.class, le.mode.as_str()), (LockClass::Lease, "ACTIVE"));
        let w = parse_line("2: -> POSIX  ADVISORY  WRITE 77 08:02:131 0 EOF").unwrap();
        assert!(w.waiter);
        assert_eq!(w.dev, (8, 2));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for bad in [
            "",
            "1: DELEG  ACTIVE    READ 1 fe:00:1 0 EOF",
            "1: POSIX  ADVISORY  UNLCK 1 fe:00:1 0 EOF",
            "1: POSIX  ADVISORY  WRITE x fe:00:1 0 EOF",
            "1: POSIX  ADVISORY  WRITE 1 fe:00 0 EOF",
            "1: POSIX  ADVISORY  WRITE 1 zz:00:1 0 EOF",
            "1: POSIX  ADVISORY  WRITE 1 fe:00:1 9 5",
            "1: POSIX  ADVISORY  WRITE 1 fe:00:1 0",
            "1: POSIX  ADVISORY  WRITE 1 fe:00:1 0 EOF extra",
            "POSIX  ADVISORY  WRITE 1 fe:00:1 0 EOF",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} parsed");
        }
        let text =
            "1: POSIX  ADVISORY  WRITE 1 fe:00:1 0 EOF\n1: DELEG  ACTIVE  READ 1 fe:00:1 0 EOF\n";
        assert_eq!(parse_proc_locks(text).len(), 1);
    }

    #[test]
    fn classifies_and_refuses_breaking_leases() {
        let lines = parse_fdinfo(
            "lock:\t1: POSIX  ADVISORY  WRITE 5 fe:00:1 0 99\n\
             lock:\t2: FLOCK  ADVISORY  WRITE 5 fe:00:1 0 EOF\n",
        )
        .unwrap();
        let c = classify(&lines, "fd 3").unwrap();
        assert_eq!(c.posix.len(), 1);
        assert_eq!(c.desc.len(), 1);
        assert_eq!(c.desc[0].kind, DescLockKind::Flock);
        for line in [
            "lock:\t1: LEASE  BREAKING  READ 5 fe:00:1 0 EOF\n",
            "lock:\t1: LEASE  BREAKING  UNLCK 5 fe:00:1 0 EOF\n",
        ] {
            let breaking = parse_fdinfo(line).unwrap();
            let e = classify(&breaking, "fd 3").unwrap_err().to_string();
            assert!(e.contains("fd 3") && e.contains("BREAKING"), "{e}");
        }
    }

    #[test]
    fn flock_struct_and_ranges() {
        let r = LockRange {
            write: true,
            start: 10,
            end: Some(19),
        };
        let l = flock_of(&r);
        assert_eq!((l.start, l.len), (10, 10));
        assert_eq!(l.l_type, libc::F_WRLCK as i16);
        let eof = LockRange { end: None, ..r };
        assert_eq!(flock_of(&eof).len, 0);
        assert_eq!(bytes(&r), "bytes 10-19");
        assert!(overlaps(&r, &eof));
        assert!(!overlaps(
            &r,
            &LockRange {
                write: false,
                start: 20,
                end: Some(30)
            }
        ));
    }
}
