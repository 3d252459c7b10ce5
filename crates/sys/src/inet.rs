//! AF_INET and AF_INET6 sockets: addresses, queue lengths, peeking at queued data without
//! consuming it, and TCP_REPAIR (taking a live TCP connection apart and putting it together
//! again on a new socket, without a packet exchanged with the peer).
//!
//! Plain integer options (TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_TIMESTAMP, ...) go
//! through [`crate::socket::get_option`] and [`crate::socket::set_option`]; what needs more
//! (ioctls, structured options, flags on recv) is here.

use crate::cvt_int;
use crate::socket::{get_option, get_option_bytes, set_option, set_option_bytes};
use rustix::net::{AddressFamily, Protocol, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `SIOCINQ`: bytes in the receive queue (unread).
const SIOCINQ: libc::c_ulong = 0x541B;
/// `SIOCOUTQ`: bytes in the send queue (not acknowledged by the peer, sent or not).
const SIOCOUTQ: libc::c_ulong = 0x5411;
/// `SIOCOUTQNSD`: bytes in the send queue not sent yet.
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
/// `TCP_REPAIR_WINDOW` (Linux 4.8).
pub const TCP_REPAIR_WINDOW: libc::c_int = 29;
/// `TCP_REPAIR_QUEUE` values: which queue reads, writes and TCP_QUEUE_SEQ act on.
pub const TCP_RECV_QUEUE: i32 = 1;
pub const TCP_SEND_QUEUE: i32 = 2;
/// `TCP_REPAIR` values.
pub const TCP_REPAIR_ON: i32 = 1;
pub const TCP_REPAIR_OFF: i32 = 0;
/// Leaving repair mode without the window probe (Linux 4.18): what a dump that lets the
/// connection run on uses, as nothing changed.
pub const TCP_REPAIR_OFF_NO_WP: i32 = -1;
/// TCP option codes for TCP_REPAIR_OPTIONS.
pub const TCPOPT_MSS: u32 = 2;
pub const TCPOPT_WINDOW: u32 = 3;
pub const TCPOPT_SACK_PERM: u32 = 4;
pub const TCPOPT_TIMESTAMP: u32 = 8;
/// `tcpi_options` bits of TCP_INFO.
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;

/// A new socket of `domain`, `ty` (SOCK_STREAM, SOCK_DGRAM, ...) and `protocol`, close-on-exec.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::from_raw(domain as u16),
        SocketType::from_raw(ty as u32),
        SocketFlags::CLOEXEC,
        Protocol::from_raw(
            std::num::NonZeroU32::new(protocol as u32)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EPROTONOSUPPORT))?,
        )
        .into(),
    )?)
}

/// getsockname of an inet socket.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let a = rustix::net::getsockname(fd)?;
    SocketAddr::try_from(a).map_err(|_| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

/// getpeername of an inet socket; `None` when it is not connected.
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    match rustix::net::getpeername(fd) {
        Ok(Some(a)) => SocketAddr::try_from(a)
            .map(Some)
            .map_err(|_| io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
        Ok(None) => Ok(None),
        Err(rustix::io::Errno::NOTCONN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    Ok(rustix::net::bind(fd, addr)?)
}

/// connect, retrying on EINTR.
pub fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    loop {
        match rustix::net::connect(fd, addr) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// connect(AF_UNSPEC): dissolves a datagram socket's association.
pub fn disconnect(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::net::connect_unspec(fd)?)
}

pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    Ok(rustix::net::listen(fd, backlog)?)
}

pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> io::Result<()> {
    let how = match how {
        libc::SHUT_RD => rustix::net::Shutdown::Read,
        libc::SHUT_WR => rustix::net::Shutdown::Write,
        _ => rustix::net::Shutdown::Both,
    };
    Ok(rustix::net::shutdown(fd, how)?)
}

fn ioctl_int(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int through the pointer, which points at `v`.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut v as *mut libc::c_int) })?;
    Ok(v as u32)
}

/// The queue lengths of a socket: (unread bytes, bytes not acknowledged, bytes not sent).
/// For a TCP listener the kernel refuses them (EINVAL).
pub fn queue_lengths(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, u32)> {
    Ok((
        ioctl_int(fd, SIOCINQ)?,
        ioctl_int(fd, SIOCOUTQ)?,
        ioctl_int(fd, SIOCOUTQNSD)?,
    ))
}

/// Bytes not acknowledged (SIOCOUTQ) of a datagram socket: for UDP, what is still queued to
/// be sent.
pub fn unsent(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQ)
}

/// Reads `len` bytes of the selected queue without consuming them (MSG_PEEK, never blocking).
/// On a TCP socket in repair mode, the queue is the one TCP_REPAIR_QUEUE selected. Fails
/// with `UnexpectedEof` when fewer bytes are there.
pub fn peek_exact(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let n = loop {
        match rustix::net::recv(fd, &mut buf[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?.0,
        }
    };
    if n != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{n} bytes queued, {len} expected"),
        ));
    }
    Ok(buf)
}

/// The datagrams queued on a datagram socket, oldest first, without consuming them: with
/// SO_PEEK_OFF, each MSG_PEEK returns the next datagram; the offset is switched off again
/// afterwards (to what the program had). At most `max_total` bytes in all (more is an error: `FileTooLarge`).
/// `MSG_TRUNC` gives each datagram's real length.
pub fn peek_datagrams(fd: BorrowedFd<'_>, max_total: usize) -> io::Result<Vec<Vec<u8>>> {
    Ok(peek_datagrams_from(fd, max_total)?
        .into_iter()
        .map(|(d, _)| d)
        .collect())
}

/// [`peek_datagrams`] with the address each datagram came from (`None` when the kernel gives
/// none, or not an inet one).
pub fn peek_datagrams_from(
    fd: BorrowedFd<'_>,
    max_total: usize,
) -> io::Result<Vec<(Vec<u8>, Option<SocketAddr>)>> {
    // The program's own peek offset, put back afterwards.
    let before: i32 = get_option(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    set_option(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &0i32)?;
    let result = (|| {
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            let mut control = rustix::net::RecvAncillaryBuffer::default();
            let r = rustix::net::recvmsg(
                fd,
                &mut [std::io::IoSliceMut::new(&mut buf[..])],
                &mut control,
                RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::TRUNC,
            );
            let (n, from) = match r {
                Ok(m) => (
                    m.bytes,
                    m.address.and_then(|a| SocketAddr::try_from(a).ok()),
                ),
                Err(rustix::io::Errno::AGAIN) => return Ok(out),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io::Error::from(e)),
            };
            total += n;
            if n > buf.len() || total > max_total {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("more than {max_total} bytes of datagrams queued"),
                ));
            }
            out.push((buf[..n].to_vec(), from));
            if out.len() > 65536 {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    "more than 65536 datagrams queued",
                ));
            }
        }
    })();
    let off = set_option(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &before);
    let out = result?;
    off?;
    Ok(out)
}

/// Sends all of `data` (MSG_NOSIGNAL), retrying on EINTR and short writes; never blocks (a
/// full buffer is `WouldBlock`).
pub fn send_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::net::send(fd, data, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => data = &data[n..],
        }
    }
    Ok(())
}

/// Reads and drops everything queued on `fd` (never blocking).
pub fn drain(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    for _ in 0..100_000 {
        match rustix::net::recv(fd, &mut buf[..], RecvFlags::DONTWAIT) {
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether the peer of `fd` shut down (poll reports POLLRDHUP: RCV_SHUTDOWN, which every
/// TCP connection that ended has), without waiting.
pub fn read_hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut pfd = [PollFd::new(&fd, PollFlags::RDHUP)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut pfd, Some(&zero))?;
    Ok(pfd[0].revents().contains(PollFlags::RDHUP))
}

/// Whether `fd` has something to read now (poll, no wait).
pub fn readable(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    Ok(poll(&mut pfd, Some(&zero))? > 0)
}

/// Sends one datagram to `to` (MSG_NOSIGNAL).
pub fn send_to(fd: BorrowedFd<'_>, data: &[u8], to: &SocketAddr) -> io::Result<()> {
    let n = rustix::net::sendto(fd, data, SendFlags::NOSIGNAL, to)?;
    if n != data.len() {
        return Err(io::Error::from(io::ErrorKind::WriteZero));
    }
    Ok(())
}

/// What TCP_INFO says that a restore needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// TCP_ESTABLISHED, TCP_LISTEN, ...
    pub state: u8,
    /// TCPI_OPT_* bits.
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// For a listener: connections waiting to be accepted.
    pub unacked: u32,
    /// For a listener: its backlog.
    pub sacked: u32,
}

/// TCP_INFO of a TCP socket (the fields of [`TcpInfo`]).
pub fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    let b = get_option_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 32)?;
    if b.len() < 32 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Ok(TcpInfo {
        state: b[0],
        options: b[5],
        snd_wscale: b[6] & 0xf,
        rcv_wscale: b[6] >> 4,
        unacked: u32_at(24),
        sacked: u32_at(28),
    })
}

/// The window of a TCP connection (TCP_REPAIR_WINDOW, in repair mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

pub fn repair_window(fd: BorrowedFd<'_>) -> io::Result<RepairWindow> {
    let b = get_option_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20)?;
    if b.len() != 20 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let u = |i: usize| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    Ok(RepairWindow {
        snd_wl1: u(0),
        snd_wnd: u(1),
        max_window: u(2),
        rcv_wnd: u(3),
        rcv_wup: u(4),
    })
}

pub fn set_repair_window(fd: BorrowedFd<'_>, w: &RepairWindow) -> io::Result<()> {
    let mut b = Vec::with_capacity(20);
    for v in [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    set_option_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &b)
}

/// TCP_REPAIR_OPTIONS: the options the connection negotiated, as (TCPOPT_* code, value).
pub fn set_repair_options(fd: BorrowedFd<'_>, opts: &[(u32, u32)]) -> io::Result<()> {
    let mut b = Vec::with_capacity(8 * opts.len());
    for (code, val) in opts {
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&val.to_ne_bytes());
    }
    set_option_bytes(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_OPTIONS, &b)
}

/// One classic BPF instruction: `code`, `jt`, `jf`, `k` (`struct sock_filter`).
pub type BpfInstruction = (u16, u8, u8, u32);

/// The classic BPF filter attached to socket `fd` (SO_GET_FILTER), one instruction per entry
/// (`code`, `jt`, `jf`, `k`); `None` without a filter. A filter attached as eBPF
/// (SO_ATTACH_BPF) cannot be read: EACCES.
pub fn socket_filter(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<BpfInstruction>>> {
    let mut len: libc::socklen_t = 0;
    // SAFETY: with an optlen of 0, getsockopt writes nothing through the value pointer; it
    // sets optlen to the number of instructions.
    cvt_int(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::null_mut(),
            &mut len,
        )
    })?;
    let n = len;
    if n == 0 {
        return Ok(None);
    }
    let mut insns = vec![
        libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0
        };
        n as usize
    ];
    // The kernel takes the length in instructions here, not bytes.
    let mut len = n as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` instructions into `insns`, which holds that
    // many.
    cvt_int(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            insns.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    })?;
    insns.truncate(len as usize);
    Ok(Some(
        insns.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect(),
    ))
}

/// Attaches classic BPF filter `insns` to socket `fd` (SO_ATTACH_FILTER).
pub fn attach_filter(fd: BorrowedFd<'_>, insns: &[BpfInstruction]) -> io::Result<()> {
    let mut filter: Vec<libc::sock_filter> = insns
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: the kernel copies `prog` and the `len` instructions it points to, which live in
    // `filter` until the call returns.
    cvt_int(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast::<libc::c_void>(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// An int option at `level`.
pub fn int_option(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    get_option::<i32>(fd, level, name)
}

pub fn set_int_option(fd: BorrowedFd<'_>, level: i32, name: i32, v: i32) -> io::Result<()> {
    set_option(fd, level, name, &v)
}

/// `sk_shutdown` of the inet socket with inode `ino` (SHUT_RD: bit 0, SHUT_WR: bit 1), from
/// sock_diag (NETLINK_SOCK_DIAG, every socket of `family` and `protocol` listed, this one
/// found by its inode); `None` when sock_diag does not list it.
pub fn diag_shutdown(family: i32, protocol: i32, ino: u64) -> io::Result<Option<u8>> {
    use rustix::net::netlink;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const INET_DIAG_SHUTDOWN: u16 = 8;
    let sock = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    // nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes).
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.push(family as u8);
    req.push(protocol as u8);
    req.push(0); // no extensions: INET_DIAG_SHUTDOWN always comes
    req.push(0);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&[0u8; 40]); // ports, addresses, interface
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    rustix::net::send(&sock, &req, SendFlags::empty())?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag answer");
    let u16_at = |b: &[u8], o: usize| -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
    };
    let u32_at = |b: &[u8], o: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
    };
    let mut buf = vec![0u8; 65536];
    let mut found = None;
    loop {
        let (n, _) = rustix::net::recv(&sock, &mut buf[..], RecvFlags::empty())?;
        let mut off = 0;
        while off + 16 <= n {
            let b = &buf[off..n];
            let len = u32_at(b, 0).ok_or_else(bad)? as usize;
            let kind = u16_at(b, 4).ok_or_else(bad)?;
            if len < 16 || len > b.len() {
                return Err(bad());
            }
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => {
                    let errno = u32_at(b, 16).ok_or_else(bad)? as i32;
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => {}
            }
            // inet_diag_msg: 72 bytes after the header, the inode at its offset 68.
            if found.is_none() && u32_at(b, 16 + 68).ok_or_else(bad)? as u64 == ino {
                let mut a = 16 + 72;
                while a + 4 <= len {
                    let alen = u16_at(b, a).ok_or_else(bad)? as usize;
                    let atype = u16_at(b, a + 2).ok_or_else(bad)?;
                    if alen < 4 || a + alen > len {
                        return Err(bad());
                    }
                    if atype == INET_DIAG_SHUTDOWN && alen >= 5 {
                        found = Some(b[a + 4]);
                    }
                    a += (alen + 3) & !3;
                }
            }
            off += (len + 3) & !3;
        }
        if n == 0 {
            return Ok(found);
        }
    }
}

/// `MCAST_JOIN_GROUP` and `MCAST_MSFILTER` (linux/in.h; the same for IPv6 at IPPROTO_IPV6).
const MCAST_JOIN_GROUP: i32 = 42;
const MCAST_MSFILTER: i32 = 48;
/// `struct group_req` and the fixed part of `struct group_filter` (x86-64: an u32 interface,
/// padding, a sockaddr_storage group; then fmode and numsrc), and one source.
const GROUP_REQ_LEN: usize = 136;
const GROUP_FILTER_LEN: usize = 144;
const SOCKADDR_STORAGE_LEN: usize = 128;
/// Most sources of one multicast membership's filter stasis reads.
pub const MAX_MCAST_SOURCES: usize = 64;

/// A sockaddr_storage holding `addr` (4 bytes: IPv4, 16: IPv6), port 0.
fn storage_of(addr: &[u8]) -> io::Result<[u8; SOCKADDR_STORAGE_LEN]> {
    let mut ss = [0u8; SOCKADDR_STORAGE_LEN];
    match addr.len() {
        4 => {
            ss[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            ss[4..8].copy_from_slice(addr);
        }
        16 => {
            ss[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            ss[8..24].copy_from_slice(addr);
        }
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
    Ok(ss)
}

/// The address of a sockaddr_storage written by the kernel (family `v6` or IPv4).
fn addr_of_storage(ss: &[u8], v6: bool) -> Vec<u8> {
    if v6 {
        ss[8..24].to_vec()
    } else {
        ss[4..8].to_vec()
    }
}

/// The source filter of the socket's membership of `group` (4 or 16 bytes) on interface
/// `ifindex` (MCAST_MSFILTER at `level`, IPPROTO_IP or IPPROTO_IPV6): `None` when the socket
/// is not a member; else whether the filter includes (else excludes) the sources, the sources
/// (at most [`MAX_MCAST_SOURCES`]) and how many there are in all.
#[allow(clippy::type_complexity)]
pub fn mcast_filter(
    fd: BorrowedFd<'_>,
    level: i32,
    ifindex: u32,
    group: &[u8],
) -> io::Result<Option<(bool, Vec<Vec<u8>>, u32)>> {
    let mut buf = vec![0u8; GROUP_FILTER_LEN + MAX_MCAST_SOURCES * SOCKADDR_STORAGE_LEN];
    buf[..4].copy_from_slice(&ifindex.to_ne_bytes());
    buf[8..8 + SOCKADDR_STORAGE_LEN].copy_from_slice(&storage_of(group)?);
    buf[140..144].copy_from_slice(&(MAX_MCAST_SOURCES as u32).to_ne_bytes());
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt reads and writes at most `len` bytes of `buf`, which has that many.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            MCAST_MSFILTER,
            buf.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EADDRNOTAVAIL) | Some(libc::EINVAL) | Some(libc::ENODEV) => Ok(None),
            _ => Err(e),
        };
    }
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let (fmode, numsrc) = (word(136), word(140));
    let v6 = group.len() == 16;
    let sources = (0..(numsrc as usize).min(MAX_MCAST_SOURCES))
        .map(|i| {
            let at = GROUP_FILTER_LEN + i * SOCKADDR_STORAGE_LEN;
            addr_of_storage(&buf[at..at + SOCKADDR_STORAGE_LEN], v6)
        })
        .collect();
    // MCAST_INCLUDE is 1, MCAST_EXCLUDE 0.
    Ok(Some((fmode == 1, sources, numsrc)))
}

/// Joins `group` on interface `ifindex` (MCAST_JOIN_GROUP), then sets its source filter when
/// it is not "exclude nothing" (MCAST_MSFILTER).
pub fn mcast_join(
    fd: BorrowedFd<'_>,
    level: i32,
    ifindex: u32,
    group: &[u8],
    include: bool,
    sources: &[Vec<u8>],
) -> io::Result<()> {
    let mut req = vec![0u8; GROUP_REQ_LEN];
    req[..4].copy_from_slice(&ifindex.to_ne_bytes());
    req[8..8 + SOCKADDR_STORAGE_LEN].copy_from_slice(&storage_of(group)?);
    set_option_bytes(fd, level, MCAST_JOIN_GROUP, &req)?;
    if !include && sources.is_empty() {
        return Ok(());
    }
    let mut f = vec![0u8; GROUP_FILTER_LEN + sources.len() * SOCKADDR_STORAGE_LEN];
    f[..4].copy_from_slice(&ifindex.to_ne_bytes());
    f[8..8 + SOCKADDR_STORAGE_LEN].copy_from_slice(&storage_of(group)?);
    f[136..140].copy_from_slice(&u32::from(include).to_ne_bytes());
    f[140..144].copy_from_slice(&(sources.len() as u32).to_ne_bytes());
    for (i, src) in sources.iter().enumerate() {
        let at = GROUP_FILTER_LEN + i * SOCKADDR_STORAGE_LEN;
        f[at..at + SOCKADDR_STORAGE_LEN].copy_from_slice(&storage_of(src)?);
    }
    set_option_bytes(fd, level, MCAST_MSFILTER, &f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn queues_and_repair_window_of_a_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"hello").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        // Wait for the 4 remaining bytes.
        for _ in 0..100 {
            if queue_lengths(s.as_fd()).unwrap().0 == 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(queue_lengths(s.as_fd()).unwrap().0, 4);
        assert_eq!(peek_exact(s.as_fd(), 4).unwrap(), b"ello");
        assert_eq!(local_addr(s.as_fd()).unwrap(), l.local_addr().unwrap());
        assert_eq!(peer_addr(s.as_fd()).unwrap(), Some(c.local_addr().unwrap()));
        let info = tcp_info(s.as_fd()).unwrap();
        assert_eq!(info.state, 1);
        let li = tcp_info(l.as_fd()).unwrap();
        assert_eq!(li.state, 10);
        assert_eq!(li.sacked, 128, "the backlog std listens with");
        match set_int_option(
            s.as_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR,
            TCP_REPAIR_ON,
        ) {
            Ok(()) => {
                let w = repair_window(s.as_fd()).unwrap();
                assert!(w.rcv_wnd > 0);
                set_int_option(
                    s.as_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_REPAIR,
                    TCP_REPAIR_OFF_NO_WP,
                )
                .unwrap();
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        }
    }

    #[test]
    fn datagrams_are_peeked_in_order_and_left_queued() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for m in [&b"one"[..], b"", b"three"] {
            b.send_to(m, a.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let got = peek_datagrams(a.as_fd(), 1 << 20).unwrap();
        assert_eq!(got, vec![b"one".to_vec(), b"".to_vec(), b"three".to_vec()]);
        let mut buf = [0u8; 16];
        assert_eq!(a.recv(&mut buf).unwrap(), 3, "still queued, from the first");
        assert!(peek_datagrams(a.as_fd(), 2).is_err(), "over the limit");
    }

    #[test]
    fn socket_filters_round_trip() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_filter(a.as_fd()).unwrap(), None);
        // ld len; ret a / ret #0xffff
        let prog = vec![(0x80, 0, 0, 0), (0x16, 0, 0, 0), (0x06, 0, 0, 0xffff)];
        attach_filter(a.as_fd(), &prog).unwrap();
        assert_eq!(socket_filter(a.as_fd()).unwrap(), Some(prog));
    }

    #[test]
    fn shutdown_of_a_udp_socket() {
        use std::os::unix::fs::MetadataExt;
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect("127.0.0.1:9").unwrap();
        let ino = std::fs::File::from(OwnedFd::from(a.try_clone().unwrap()))
            .metadata()
            .unwrap()
            .ino();
        assert_eq!(
            diag_shutdown(libc::AF_INET, libc::IPPROTO_UDP, ino).unwrap(),
            Some(0)
        );
        shutdown(a.as_fd(), libc::SHUT_WR).unwrap();
        assert_eq!(
            diag_shutdown(libc::AF_INET, libc::IPPROTO_UDP, ino).unwrap(),
            Some(2)
        );
    }
}
