//! Netlink sockets (`AF_NETLINK`) as stasis dumps and restores them: their addresses
//! (`sockaddr_nl`: port id and the first 32 multicast groups), the full list of multicast
//! groups (`NETLINK_LIST_MEMBERSHIPS`), a peek at the first queued message, and sock_diag
//! dumps (`SOCK_DIAG_BY_FAMILY` with `NLM_F_DUMP`) of the netlink and packet families, which
//! answer only with every socket of the family (the inode in the request is not a filter for
//! them), so the caller picks its socket by inode.

use crate::cvt_int;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SOL_NETLINK`.
pub const SOL_NETLINK: i32 = 270;
/// `NETLINK_ADD_MEMBERSHIP`.
pub const NETLINK_ADD_MEMBERSHIP: i32 = 1;
/// `NETLINK_LIST_MEMBERSHIPS`.
pub const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

/// A netlink address: a port id and a bitmap of the first 32 multicast groups (bit n-1 for
/// group n).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetlinkAddr {
    pub port_id: u32,
    pub groups: u32,
}

/// A new netlink socket of `ty` (`SOCK_RAW`, `SOCK_DGRAM`) and `protocol`, close-on-exec.
pub fn socket(ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor.
    let fd = cvt_int(unsafe { libc::socket(libc::AF_NETLINK, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: the descriptor was just created and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(addr: NetlinkAddr) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data for which all-zero bytes are a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_pid = addr.port_id;
    sa.nl_groups = addr.groups;
    sa
}

/// bind(2) of a netlink socket to `addr`.
pub fn bind(fd: BorrowedFd<'_>, addr: NetlinkAddr) -> io::Result<()> {
    let sa = sockaddr(addr);
    // SAFETY: bind reads `size_of::<sockaddr_nl>()` bytes from `sa`, which we own.
    cvt_int(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// connect(2) of a netlink socket to `addr` (its default destination).
pub fn connect(fd: BorrowedFd<'_>, addr: NetlinkAddr) -> io::Result<()> {
    let sa = sockaddr(addr);
    // SAFETY: connect reads `size_of::<sockaddr_nl>()` bytes from `sa`, which we own.
    cvt_int(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn name(fd: BorrowedFd<'_>, peer: bool) -> io::Result<NetlinkAddr> {
    // SAFETY: sockaddr_nl is plain old data for which all-zero bytes are a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = (&mut sa as *mut libc::sockaddr_nl).cast::<libc::sockaddr>();
    // SAFETY: the call writes at most `len` bytes into `sa`, which we own.
    cvt_int(unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    })?;
    if sa.nl_family != libc::AF_NETLINK as libc::sa_family_t {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a netlink socket",
        ));
    }
    Ok(NetlinkAddr {
        port_id: sa.nl_pid,
        groups: sa.nl_groups,
    })
}

/// getsockname(2): the socket's port id (0 when it is not bound) and first 32 groups.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<NetlinkAddr> {
    name(fd, false)
}

/// getpeername(2): the default destination set by connect(2) (all 0 when none).
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<NetlinkAddr> {
    name(fd, true)
}

/// `NETLINK_LIST_MEMBERSHIPS`: every multicast group the socket is in, as a bitmap of 32-bit
/// words (bit n-1 of the whole for group n), without trailing zero words.
pub fn memberships(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut words = vec![0u32; 4];
    loop {
        let mut len = (words.len() * 4) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `words`, which has that many; it
        // reports the length it needs in `len`.
        cvt_int(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_LIST_MEMBERSHIPS,
                words.as_mut_ptr().cast::<libc::c_void>(),
                &mut len,
            )
        })?;
        let need = (len as usize).div_ceil(4);
        if need <= words.len() {
            words.truncate(need);
            while words.last() == Some(&0) {
                words.pop();
            }
            return Ok(words);
        }
        if need > 1 << 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "implausibly many netlink groups",
            ));
        }
        words = vec![0u32; need];
    }
}

/// `NETLINK_ADD_MEMBERSHIP` of multicast group `group` (1-based).
pub fn add_membership(fd: BorrowedFd<'_>, group: u32) -> io::Result<()> {
    crate::socket::set_option(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group)
}

/// The sender of the first message queued on the socket, if one is queued, without taking
/// it (`MSG_PEEK | MSG_DONTWAIT`): its port id (0: the kernel) and the group bitmap it was
/// sent to (0: a unicast message).
pub fn peek_sender(fd: BorrowedFd<'_>) -> io::Result<Option<NetlinkAddr>> {
    // SAFETY: sockaddr_nl is plain old data for which all-zero bytes are a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let mut byte = 0u8;
    // SAFETY: recvfrom writes at most 1 byte into `byte` and at most `len` bytes into `sa`,
    // both ours.
    let r = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast::<libc::c_void>(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            (&mut sa as *mut libc::sockaddr_nl).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(NetlinkAddr {
        port_id: sa.nl_pid,
        groups: sa.nl_groups,
    }))
}

// ---- sock_diag dumps ------------------------------------------------------------------------

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Most answers one dump may hold (a bound on what a hostile or broken kernel answer costs).
const MAX_DIAG_MESSAGES: usize = 1 << 20;

/// One answer of a sock_diag dump: the family's fixed message (`*_diag_msg`) and its
/// attributes (type, payload), nested attributes left as their payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagMessage {
    pub msg: Vec<u8>,
    pub attrs: Vec<(u16, Vec<u8>)>,
}

impl DiagMessage {
    /// The payload of the first attribute of type `t`.
    pub fn attr(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(a, _)| *a == t)
            .map(|(_, v)| v.as_slice())
    }
}

pub(crate) fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

pub(crate) fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag answer")
}

/// Dumps every socket of `family` (`AF_NETLINK`, `AF_PACKET`) in the caller's network
/// namespace through sock_diag: `req` is the family's request after the netlink header
/// (`netlink_diag_req`, `packet_diag_req`), `msg_len` the length of the family's fixed answer
/// message (the attributes follow it).
pub fn diag_dump(req: &[u8], msg_len: usize) -> io::Result<Vec<DiagMessage>> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor.
    let raw = cvt_int(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    })?;
    // SAFETY: the descriptor was just created and nobody else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut m = Vec::with_capacity(16 + req.len());
    m.extend_from_slice(&((16 + req.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.extend_from_slice(req);
    // SAFETY: send reads `m.len()` bytes from `m`.
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            m.as_ptr().cast::<libc::c_void>(),
            m.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32768];
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which we own.
        let n = unsafe {
            libc::recv(
                sock.as_fd().as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(bad());
        }
        if parse_answers(&buf[..n as usize], msg_len, &mut out)? {
            return Ok(out);
        }
        if out.len() > MAX_DIAG_MESSAGES {
            return Err(bad());
        }
    }
}

/// Parses the netlink messages of one datagram into `out`; true at the end of the dump.
fn parse_answers(b: &[u8], msg_len: usize, out: &mut Vec<DiagMessage>) -> io::Result<bool> {
    let mut off = 0;
    while off + 16 <= b.len() {
        let len = u32_at(b, off).ok_or_else(bad)? as usize;
        let kind = u16_at(b, off + 4).ok_or_else(bad)?;
        if len < 16 || off + len > b.len() {
            return Err(bad());
        }
        let body = &b[off + 16..off + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).ok_or_else(bad)? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ => out.push(parse_message(body, msg_len)?),
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

/// One `*_diag_msg` and its attributes.
fn parse_message(body: &[u8], msg_len: usize) -> io::Result<DiagMessage> {
    let msg = body.get(..msg_len).ok_or_else(bad)?.to_vec();
    let mut attrs = Vec::new();
    let mut off = msg_len.next_multiple_of(4);
    while off + 4 <= body.len() {
        let alen = u16_at(body, off).ok_or_else(bad)? as usize;
        let atype = u16_at(body, off + 2).ok_or_else(bad)? & 0x3fff;
        if alen < 4 || off + alen > body.len() {
            return Err(bad());
        }
        attrs.push((atype, body[off + 4..off + alen].to_vec()));
        off += (alen + 3) & !3;
    }
    Ok(DiagMessage { msg, attrs })
}

// ---- netlink_diag -------------------------------------------------------------------------

const NDIAG_SHOW_MEMINFO: u32 = 0x1;
const NDIAG_SHOW_FLAGS: u32 = 0x8;
const NETLINK_DIAG_MEMINFO: u16 = 0;
const NETLINK_DIAG_FLAGS: u16 = 4;
/// `NDIAG_FLAG_CB_RUNNING`: a dump (NLM_F_DUMP) is in progress on the socket.
pub const NDIAG_FLAG_CB_RUNNING: u32 = 0x1;
/// `NDIAG_FLAG_LISTEN_ALL_NSID`.
pub const NDIAG_FLAG_LISTEN_ALL_NSID: u32 = 0x10;

/// What sock_diag tells of one netlink socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetlinkDiag {
    pub port_id: u32,
    pub dst_port_id: u32,
    pub dst_group: u32,
    /// `NDIAG_FLAG_*`.
    pub flags: u32,
    /// Bytes queued for reading (`SK_MEMINFO_RMEM_ALLOC`).
    pub rmem: u32,
}

/// sock_diag's view of the netlink socket of `protocol` with inode `ino`, in the caller's
/// network namespace; `None` when it does not list it (the kernel lists only sockets that are
/// bound or in multicast groups).
pub fn netlink_diag(protocol: u8, ino: u64) -> io::Result<Option<NetlinkDiag>> {
    let mut req = Vec::with_capacity(20);
    req.push(libc::AF_NETLINK as u8);
    req.push(protocol);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes()); // inode: not a filter here
    req.extend_from_slice(&(NDIAG_SHOW_MEMINFO | NDIAG_SHOW_FLAGS).to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    // netlink_diag_msg: family, type, protocol, state (u8 each), portid, dst_portid,
    // dst_group, ino, cookie[2] (u32 each).
    for m in diag_dump(&req, 28)? {
        if u32_at(&m.msg, 16).map(u64::from) != Some(ino) {
            continue;
        }
        let flags = m
            .attr(NETLINK_DIAG_FLAGS)
            .and_then(|a| u32_at(a, 0))
            .unwrap_or(0);
        let rmem = m
            .attr(NETLINK_DIAG_MEMINFO)
            .and_then(|a| u32_at(a, 0))
            .unwrap_or(0);
        return Ok(Some(NetlinkDiag {
            port_id: u32_at(&m.msg, 4).ok_or_else(bad)?,
            dst_port_id: u32_at(&m.msg, 8).ok_or_else(bad)?,
            dst_group: u32_at(&m.msg, 12).ok_or_else(bad)?,
            flags,
            rmem,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn addresses_groups_and_diag() {
        let s = socket(libc::SOCK_RAW, libc::NETLINK_USERSOCK).unwrap();
        assert_eq!(local_addr(s.as_fd()).unwrap().port_id, 0, "unbound");
        let port = 0x5a00_0000 | std::process::id();
        bind(
            s.as_fd(),
            NetlinkAddr {
                port_id: port,
                groups: 0b101,
            },
        )
        .unwrap();
        add_membership(s.as_fd(), 30).unwrap();
        let a = local_addr(s.as_fd()).unwrap();
        assert_eq!((a.port_id, a.groups), (port, 0b101 | 1 << 29));
        assert_eq!(memberships(s.as_fd()).unwrap(), vec![0b101 | 1 << 29]);
        // Route groups go past 32 (RTNLGRP_BRVLAN is 33).
        let r = socket(libc::SOCK_RAW, libc::NETLINK_ROUTE).unwrap();
        add_membership(r.as_fd(), 33).unwrap();
        assert_eq!(memberships(r.as_fd()).unwrap(), vec![0, 1]);
        connect(
            s.as_fd(),
            NetlinkAddr {
                port_id: 77,
                groups: 0,
            },
        )
        .unwrap();
        assert_eq!(peer_addr(s.as_fd()).unwrap().port_id, 77);
        assert_eq!(peek_sender(s.as_fd()).unwrap(), None);
        let ino = std::fs::File::from(s.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino();
        match netlink_diag(libc::NETLINK_USERSOCK as u8, ino) {
            Ok(d) => {
                let d = d.expect("listed");
                assert_eq!((d.port_id, d.dst_port_id), (port, 77));
                assert_eq!(d.flags & NDIAG_FLAG_CB_RUNNING, 0);
            }
            Err(e) => eprintln!("notice: netlink_diag unavailable: {e}"),
        }
    }

    #[test]
    fn malformed_answers_are_refused() {
        let mut out = Vec::new();
        assert!(parse_answers(&[40, 0, 0, 0, 20, 0], 28, &mut out).is_ok());
        let mut m = vec![0u8; 20];
        m[0] = 200; // longer than the datagram
        assert!(parse_answers(&m, 4, &mut out).is_err());
        assert!(parse_message(&[1, 2], 28).is_err());
        // An attribute running past the message.
        let mut body = vec![0u8; 28];
        body.extend_from_slice(&[50, 0, 1, 0]);
        assert!(parse_message(&body, 28).is_err());
    }
}
