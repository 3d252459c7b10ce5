//! What netlink ([`super::netlink_socket`]) and packet ([`super::packet_socket`]) sockets share:
//! the SOL_SOCKET options they keep ([`SocketCommon`]: buffer sizes, SO_PASSCRED, SO_PRIORITY,
//! SO_MARK, SO_TIMESTAMP(NS)), the classic BPF filter attached with SO_ATTACH_FILTER and its
//! SO_LOCK_FILTER, and the check that a socket lives in the dumper's network namespace (the
//! only one sock_diag answers for).
//!
//! Dump: getsockopt on the dumper's duplicate (the same description); the filter is read
//! back with SO_GET_FILTER. An eBPF filter (SO_ATTACH_BPF) cannot be read back in a form that
//! could be attached again and is refused by name.
//!
//! Restore: on the new socket before it is bound (so that nothing arrives unfiltered):
//! the buffer sizes with SO_RCVBUFFORCE/SO_SNDBUFFORCE (half the dumped value: the kernel
//! doubles it; SO_RCVBUF/SO_SNDBUF when not permitted) when they differ from the new socket's,
//! the flags, then the filter, then SO_LOCK_FILTER.

use super::Probe;
use crate::Error;
use stasis_image::{SockFilterInsn, SocketCommon};
use stasis_sys::packet::{self, BpfInsn, BPF_MAXINSNS};
use stasis_sys::socket::{get_option, set_option};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

const SO_PRIORITY: i32 = 12;
const SO_PASSCRED: i32 = 16;
const SO_TIMESTAMP: i32 = 29;
const SO_SNDBUFFORCE: i32 = 32;
const SO_RCVBUFFORCE: i32 = 33;
const SO_TIMESTAMPNS: i32 = 35;
const SO_MARK: i32 = 36;
const SO_LOCK_FILTER: i32 = 44;

/// Refuses a socket of another network namespace than the dumper's: sock_diag, which the
/// dump reads it through, sees only the sockets of its own namespace, and the restore makes
/// sockets in the restorer's.
pub(crate) fn check_namespace(fd: &Probe<'_>, what: &str) -> Result<(), Error> {
    let file = fd.file()?;
    let ns = match stasis_sys::socket::network_namespace_of(file.as_fd()) {
        Ok(ns) => std::fs::File::from(ns),
        // Without CAP_NET_ADMIN the namespace cannot be asked for; sock_diag then fails to
        // find the socket if it is elsewhere.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => return Ok(()),
        Err(e) => {
            return Err(Error::io(
                format!("SIOCGSKNS on fd {} of pid {}", fd.fd, fd.pid),
                e,
            ))
        }
    };
    let theirs = ns
        .metadata()
        .map_err(|e| Error::io("fstat a network namespace", e))?;
    let ours = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| Error::io("stat /proc/self/ns/net", e))?;
    if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
        return Err(fd.unsupported(&format!(
            "{what} of another network namespace than stasis's, which stasis cannot dump yet"
        )));
    }
    Ok(())
}

/// Reads the SOL_SOCKET options and filter of socket `fd` (`what` names it in errors:
/// "fd 4 of pid 12").
pub(crate) fn dump(fd: BorrowedFd<'_>, what: &str) -> Result<SocketCommon, Error> {
    // An option the socket's family does not have (SO_PASSCRED on a packet socket) is off.
    let int = |name: i32, label: &str| -> Result<i32, Error> {
        match get_option::<i32>(fd, libc::SOL_SOCKET, name) {
            Ok(v) => Ok(v),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOPROTOOPT)) => {
                Ok(0)
            }
            Err(e) => Err(Error::io(format!("getsockopt {label} on {what}"), e)),
        }
    };
    let filter = match packet::socket_filter(fd) {
        Ok(f) => f.unwrap_or_default(),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            return Err(Error::Unsupported {
                what: format!(
                    "{what} has an eBPF socket filter (SO_ATTACH_BPF), which cannot be read back to be attached again"
                ),
            })
        }
        Err(e) => return Err(Error::io(format!("SO_GET_FILTER on {what}"), e)),
    };
    Ok(SocketCommon {
        rcvbuf: int(libc::SO_RCVBUF, "SO_RCVBUF")? as u32,
        sndbuf: int(libc::SO_SNDBUF, "SO_SNDBUF")? as u32,
        passcred: int(SO_PASSCRED, "SO_PASSCRED")? != 0,
        priority: int(SO_PRIORITY, "SO_PRIORITY")? as u32,
        mark: int(SO_MARK, "SO_MARK")? as u32,
        timestamp: int(SO_TIMESTAMP, "SO_TIMESTAMP")? != 0,
        timestamp_ns: int(SO_TIMESTAMPNS, "SO_TIMESTAMPNS")? != 0,
        filter: filter
            .into_iter()
            .map(|i| SockFilterInsn {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect(),
        filter_locked: int(SO_LOCK_FILTER, "SO_LOCK_FILTER")? != 0,
    })
}

/// Checks the shared part of a socket record.
pub(crate) fn validate(c: &SocketCommon) -> Result<(), String> {
    if c.filter.len() > BPF_MAXINSNS {
        return Err(format!(
            "socket filter of {} instructions (at most {BPF_MAXINSNS})",
            c.filter.len()
        ));
    }
    for (v, name) in [(c.rcvbuf, "SO_RCVBUF"), (c.sndbuf, "SO_SNDBUF")] {
        if v > i32::MAX as u32 {
            return Err(format!("{name} {v} above {}", i32::MAX));
        }
    }
    Ok(())
}

/// Gives a new socket the options and filter of `c` (before it is bound).
pub(crate) fn apply(fd: BorrowedFd<'_>, c: &SocketCommon, what: &str) -> Result<(), Error> {
    let set = |name: i32, label: &str, v: i32| -> Result<(), Error> {
        set_option(fd, libc::SOL_SOCKET, name, &v)
            .map_err(|e| Error::io(format!("setsockopt {label} {v} on {what}"), e))
    };
    for (want, get, force, plain, label) in [
        (
            c.rcvbuf,
            libc::SO_RCVBUF,
            SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            "SO_RCVBUF",
        ),
        (
            c.sndbuf,
            libc::SO_SNDBUF,
            SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            "SO_SNDBUF",
        ),
    ] {
        let now = get_option::<i32>(fd, libc::SOL_SOCKET, get)
            .map_err(|e| Error::io(format!("getsockopt {label} on {what}"), e))?;
        if now as u32 == want || want == 0 {
            continue;
        }
        let half = (want / 2) as i32;
        match set_option(fd, libc::SOL_SOCKET, force, &half) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => set(plain, label, half)?,
            Err(e) => return Err(Error::io(format!("setsockopt {label}FORCE on {what}"), e)),
        }
    }
    if c.passcred {
        set(SO_PASSCRED, "SO_PASSCRED", 1)?;
    }
    if c.priority != 0 {
        set(SO_PRIORITY, "SO_PRIORITY", c.priority as i32)?;
    }
    if c.mark != 0 {
        set(SO_MARK, "SO_MARK", c.mark as i32)?;
    }
    // SO_TIMESTAMPNS sets both flags; SO_TIMESTAMP alone the microsecond one.
    if c.timestamp_ns {
        set(SO_TIMESTAMPNS, "SO_TIMESTAMPNS", 1)?;
    } else if c.timestamp {
        set(SO_TIMESTAMP, "SO_TIMESTAMP", 1)?;
    }
    if !c.filter.is_empty() {
        let insns: Vec<BpfInsn> = c
            .filter
            .iter()
            .map(|i| BpfInsn {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        packet::attach_filter(fd, &insns)
            .map_err(|e| Error::io(format!("SO_ATTACH_FILTER on {what}"), e))?;
    }
    if c.filter_locked {
        set(SO_LOCK_FILTER, "SO_LOCK_FILTER", 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn options_and_filter_round_trip() {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let c = SocketCommon {
            rcvbuf: 100_000,
            sndbuf: 0,
            passcred: true,
            priority: 3,
            mark: 0,
            timestamp: true,
            timestamp_ns: false,
            filter: vec![SockFilterInsn {
                code: 6,
                jt: 0,
                jf: 0,
                k: 0xffff,
            }],
            filter_locked: true,
        };
        apply(a.as_fd(), &c, "test").unwrap();
        let got = dump(a.as_fd(), "test").unwrap();
        assert_eq!(got.rcvbuf, 100_000);
        assert_eq!(
            (got.passcred, got.priority, got.timestamp, got.timestamp_ns),
            (true, 3, true, false)
        );
        assert_eq!((got.filter, got.filter_locked), (c.filter.clone(), true));
        validate(&c).unwrap();
        let mut bad = c.clone();
        bad.filter = vec![c.filter[0]; BPF_MAXINSNS + 1];
        assert!(validate(&bad).is_err());
        bad = c;
        bad.rcvbuf = u32::MAX;
        assert!(validate(&bad).is_err());
    }
}
