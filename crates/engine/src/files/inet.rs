//! What TCP ([`super::tcp`]) and UDP ([`super::udp`]) sockets share: addresses, the common
//! socket options, the checks of a record, and the nftables hold that keeps a peer's packets
//! away from connections being checkpointed.
//!
//! # Options
//!
//! Dump reads with getsockopt: SO_REUSEADDR, SO_REUSEPORT, IPV6_V6ONLY, SO_KEEPALIVE (and
//! TCP_KEEPIDLE/KEEPINTVL/KEEPCNT), TCP_NODELAY, TCP_CORK, SO_LINGER, SO_SNDBUF/SO_RCVBUF,
//! SO_RCVLOWAT, SO_PRIORITY, SO_MARK, SO_BROADCAST, SO_BINDTODEVICE, IP_FREEBIND, IP_TOS (or
//! IPV6_TCLASS), IP_TTL (or IPV6_UNICAST_HOPS), the classic BPF socket filter (SO_GET_FILTER,
//! restored with SO_ATTACH_FILTER) and SO_LOCK_FILTER; and from a list of further options
//! (`EXTRA`: SO_RCVTIMEO/SO_SNDTIMEO, IP_RECVERR, IP_PKTINFO, TCP_USER_TIMEOUT,
//! TCP_CONGESTION, TCP_DEFER_ACCEPT, TCP_FASTOPEN, ...), those whose value differs from a fresh
//! socket's, set again as they were read. Buffer sizes are restored only when
//! they differ from what a fresh socket of the same kind has (set by the program, so locked by
//! the kernel against autotuning); a connected TCP socket's buffers grow by themselves, so
//! their sizes say nothing about the program having set them: they are not restored (only
//! forced as large as the queues need, which also stops their autotuning). Multicast
//! memberships of datagram and raw sockets have no option that lists them: the groups joined
//! on this host (/proc/net/igmp, /proc/net/igmp6) are each asked for the socket's source
//! filter (getsockopt MCAST_MSFILTER answers only for a member), and joined again at restore
//! with the same filter. A socket with an eBPF filter (SO_ATTACH_BPF,
//! which cannot be read back) is refused by name.
//!
//! # The hold ([`ConnectionHold`])
//!
//! A TCP connection being dumped must not be answered by the kernel while its socket does not
//! exist (between the kill and the restore, the peer's packets would get a reset). Before a
//! connection is put in repair mode, an nftables table of family inet, named
//! `stasis_hold_<dumper pid>_<nonce>` (one per dump, so concurrent dumps do not clash), gets a
//! rule in its input chain that drops the packets of that connection from its peer, and one in
//! its output chain that drops those to its peer (see [`ConnectionHold::hold`]). The dump
//! records the table's name with each connection; the restore deletes the table once every
//! description is open. A dump that fails, or that lets the processes run on, deletes the table
//! and takes the sockets out of repair mode before the processes are thawed. The `nft` binary
//! (Debian package nftables) must be installed; a dump of an established connection without it
//! is refused.

use crate::Error;
use stasis_image::{BpfInsn, InetAddr, InetOptions, InetSocket, McMembership, RawSockOpt};
use stasis_sys::inet as sys;
use stasis_sys::socket::{get_option_bytes, SocketKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};

/// Largest queue of data a record may hold for one socket (send or receive queue, or all the
/// datagrams of a socket): 64 MiB, more than any buffer the kernel allows by default.
pub const MAX_QUEUE: usize = 64 << 20;
/// Longest classic BPF program the kernel takes (BPF_MAXINSNS).
const MAX_BPF_INSNS: usize = 4096;
/// Longest interface name (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// Longest name of a hold table.
const MAX_TABLE_NAME: usize = 64;

/// The record's form of an address.
pub fn addr_to_image(a: &SocketAddr) -> InetAddr {
    match a {
        SocketAddr::V4(v) => InetAddr {
            ip: v.ip().octets().to_vec(),
            port: v.port(),
            flowinfo: 0,
            scope_id: 0,
        },
        SocketAddr::V6(v) => InetAddr {
            ip: v.ip().octets().to_vec(),
            port: v.port(),
            flowinfo: v.flowinfo(),
            scope_id: v.scope_id(),
        },
    }
}

/// The address a record holds (checked by [`validate`]).
pub fn image_to_addr(a: &InetAddr) -> Result<SocketAddr, Error> {
    match a.ip.len() {
        4 => {
            let o: [u8; 4] = a.ip[..].try_into().map_err(|_| bad_ip(a))?;
            Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(o), a.port)))
        }
        16 => {
            let o: [u8; 16] = a.ip[..].try_into().map_err(|_| bad_ip(a))?;
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(o),
                a.port,
                a.flowinfo,
                a.scope_id,
            )))
        }
        _ => Err(bad_ip(a)),
    }
}

fn bad_ip(a: &InetAddr) -> Error {
    Error::Invalid(format!("an inet address of {} bytes", a.ip.len()))
}

/// The local address and the peer (getsockname, getpeername) of socket `fd`, `what` in
/// messages.
pub fn addresses(
    fd: BorrowedFd<'_>,
    what: &str,
) -> Result<(SocketAddr, Option<SocketAddr>), Error> {
    let local = sys::local_addr(fd).map_err(|e| Error::io(format!("getsockname of {what}"), e))?;
    let peer = sys::peer_addr(fd).map_err(|e| Error::io(format!("getpeername of {what}"), e))?;
    Ok((local, peer))
}

/// Whether an address is "nothing" (`0.0.0.0:0` or `[::]:0`): the socket is not bound.
pub fn is_unbound(a: &SocketAddr) -> bool {
    a.port() == 0 && a.ip().is_unspecified()
}

/// `tcp 127.0.0.1:80 <-> 10.0.0.2:4711`, `udp [::]:53`, for messages.
pub fn describe(s: &InetSocket) -> String {
    let proto = match s.protocol as i32 {
        libc::IPPROTO_TCP => "tcp",
        libc::IPPROTO_UDP => "udp",
        libc::IPPROTO_UDPLITE => "udplite",
        _ => "inet",
    };
    let six = if s.family as i32 == libc::AF_INET6 {
        "6"
    } else {
        ""
    };
    let a = |x: &Option<InetAddr>| match x.as_ref().map(image_to_addr) {
        Some(Ok(a)) => a.to_string(),
        _ => "*".to_string(),
    };
    match &s.peer {
        Some(_) => format!("{proto}{six} {} <-> {}", a(&s.local), a(&s.peer)),
        None => format!("{proto}{six} {}", a(&s.local)),
    }
}

/// The same, from live addresses.
pub fn describe_live(proto: &str, local: &SocketAddr, peer: Option<&SocketAddr>) -> String {
    match peer {
        Some(p) => format!("{proto} {local} <-> {p}"),
        None => format!("{proto} {local}"),
    }
}

fn opt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> std::io::Result<i32> {
    sys::int_option(fd, level, name)
}

/// Reads the options of an inet socket of kind `k`; `what` names the fd in errors.
pub fn dump_options(fd: BorrowedFd<'_>, k: SocketKind, what: &str) -> Result<InetOptions, Error> {
    let err = |o: &str, e| Error::io(format!("getsockopt {o} of {what}"), e);
    let get = |level, name, o: &str| opt_int(fd, level, name).map_err(|e| err(o, e));
    let sol = libc::SOL_SOCKET;
    let tcp = k.ty == libc::SOCK_STREAM;
    let v6 = k.domain == libc::AF_INET6;
    let mut o = InetOptions {
        reuseaddr: get(sol, libc::SO_REUSEADDR, "SO_REUSEADDR")? != 0,
        reuseport: get(sol, libc::SO_REUSEPORT, "SO_REUSEPORT")? != 0,
        keepalive: get(sol, libc::SO_KEEPALIVE, "SO_KEEPALIVE")? != 0,
        rcvlowat: get(sol, libc::SO_RCVLOWAT, "SO_RCVLOWAT")? as u32,
        priority: get(sol, libc::SO_PRIORITY, "SO_PRIORITY")? as u32,
        mark: get(sol, libc::SO_MARK, "SO_MARK")? as u32,
        broadcast: get(sol, libc::SO_BROADCAST, "SO_BROADCAST")? != 0,
        sndbuf: get(sol, libc::SO_SNDBUF, "SO_SNDBUF")? as u32,
        rcvbuf: get(sol, libc::SO_RCVBUF, "SO_RCVBUF")? as u32,
        ..Default::default()
    };
    let linger = get_option_bytes(fd, sol, libc::SO_LINGER, 8).map_err(|e| err("SO_LINGER", e))?;
    if linger.len() == 8 && linger[..4] != [0; 4] {
        o.linger = Some(u32::from_ne_bytes([
            linger[4], linger[5], linger[6], linger[7],
        ]));
    }
    let dev = get_option_bytes(fd, sol, libc::SO_BINDTODEVICE, 16)
        .map_err(|e| err("SO_BINDTODEVICE", e))?;
    let end = dev.iter().position(|&b| b == 0).unwrap_or(dev.len());
    o.bindtodevice = String::from_utf8_lossy(&dev[..end]).into_owned();
    if tcp {
        let t = libc::IPPROTO_TCP;
        o.nodelay = get(t, libc::TCP_NODELAY, "TCP_NODELAY")? != 0;
        o.cork = get(t, libc::TCP_CORK, "TCP_CORK")? != 0;
        o.keepidle = get(t, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")? as u32;
        o.keepintvl = get(t, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")? as u32;
        o.keepcnt = get(t, libc::TCP_KEEPCNT, "TCP_KEEPCNT")? as u32;
    }
    if v6 {
        let l = libc::IPPROTO_IPV6;
        o.v6only = get(l, libc::IPV6_V6ONLY, "IPV6_V6ONLY")? != 0;
        o.freebind = get(l, libc::IPV6_FREEBIND, "IPV6_FREEBIND")? != 0;
        o.tos = get(l, libc::IPV6_TCLASS, "IPV6_TCLASS")? as u32;
        o.ttl = get(l, libc::IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS")? as u32;
    } else {
        let l = libc::IPPROTO_IP;
        o.freebind = get(l, libc::IP_FREEBIND, "IP_FREEBIND")? != 0;
        o.tos = get(l, libc::IP_TOS, "IP_TOS")? as u32;
        o.ttl = get(l, libc::IP_TTL, "IP_TTL")? as u32;
    }
    // Buffer sizes a fresh socket would not have were set by the program.
    let fresh = sys::socket(k.domain, k.ty, k.protocol)
        .map_err(|e| Error::io(format!("a socket like {what}, for its defaults"), e))?;
    let f = fresh.as_fd();
    let d = |name, o: &str| opt_int(f, sol, name).map_err(|e| err(o, e));
    if d(libc::SO_SNDBUF, "SO_SNDBUF")? as u32 != o.sndbuf {
        o.buf_locks |= 1;
    }
    if d(libc::SO_RCVBUF, "SO_RCVBUF")? as u32 != o.rcvbuf {
        o.buf_locks |= 2;
    }
    for &(level, name, len, label) in EXTRA {
        if !extra_applies(level, name, k) {
            continue;
        }
        let Ok(ours) = get_option_bytes(fd, level, name, len) else {
            continue; // not an option of this kind of socket
        };
        let theirs = get_option_bytes(f, level, name, len).map_err(|e| err(label, e))?;
        if ours != theirs {
            o.extra.push(RawSockOpt {
                level,
                name,
                value: ours,
            });
        }
    }
    match sys::socket_filter(fd) {
        Ok(f) => {
            o.filter = f
                .unwrap_or_default()
                .into_iter()
                .map(|(code, jt, jf, k)| BpfInsn { code, jt, jf, k })
                .collect()
        }
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            return Err(Error::Unsupported {
                what: format!(
                    "{what} has an eBPF socket filter (SO_ATTACH_BPF), which stasis cannot dump"
                ),
            })
        }
        Err(e) => return Err(Error::io(format!("SO_GET_FILTER of {what}"), e)),
    }
    o.filter_locked = get(sol, libc::SO_LOCK_FILTER, "SO_LOCK_FILTER")? != 0;
    o.memberships = dump_memberships(fd, k, what)?;
    Ok(o)
}

/// Further options kept when they differ from a fresh socket's: (level, name, largest value,
/// name in messages). Their values are set again as getsockopt gave them.
const EXTRA: &[(i32, i32, usize, &str)] = &[
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16, "SO_RCVTIMEO"),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, 16, "SO_SNDTIMEO"),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, 4, "SO_OOBINLINE"),
    (libc::SOL_SOCKET, libc::SO_DONTROUTE, 4, "SO_DONTROUTE"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, 4, "SO_TIMESTAMP"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 4, "SO_TIMESTAMPNS"),
    (libc::SOL_SOCKET, libc::SO_PEEK_OFF, 4, "SO_PEEK_OFF"),
    (libc::SOL_SOCKET, libc::SO_ZEROCOPY, 4, "SO_ZEROCOPY"),
    (libc::IPPROTO_IP, libc::IP_RECVERR, 4, "IP_RECVERR"),
    (libc::IPPROTO_IP, libc::IP_PKTINFO, 4, "IP_PKTINFO"),
    (libc::IPPROTO_IP, libc::IP_RECVTOS, 4, "IP_RECVTOS"),
    (libc::IPPROTO_IP, libc::IP_RECVTTL, 4, "IP_RECVTTL"),
    (
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        4,
        "IP_MTU_DISCOVER",
    ),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT, 4, "IP_TRANSPARENT"),
    (
        libc::IPPROTO_IP,
        libc::IP_MULTICAST_TTL,
        4,
        "IP_MULTICAST_TTL",
    ),
    (
        libc::IPPROTO_IP,
        libc::IP_MULTICAST_LOOP,
        4,
        "IP_MULTICAST_LOOP",
    ),
    (
        libc::IPPROTO_IP,
        libc::IP_MULTICAST_ALL,
        4,
        "IP_MULTICAST_ALL",
    ),
    (
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        4,
        "IP_BIND_ADDRESS_NO_PORT",
    ),
    (
        libc::IPPROTO_IP,
        libc::IP_RECVORIGDSTADDR,
        4,
        "IP_RECVORIGDSTADDR",
    ),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVPKTINFO,
        4,
        "IPV6_RECVPKTINFO",
    ),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 4, "IPV6_RECVERR"),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_MTU_DISCOVER,
        4,
        "IPV6_MTU_DISCOVER",
    ),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_HOPS,
        4,
        "IPV6_MULTICAST_HOPS",
    ),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_LOOP,
        4,
        "IPV6_MULTICAST_LOOP",
    ),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVTCLASS,
        4,
        "IPV6_RECVTCLASS",
    ),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVHOPLIMIT,
        4,
        "IPV6_RECVHOPLIMIT",
    ),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_TRANSPARENT,
        4,
        "IPV6_TRANSPARENT",
    ),
    (
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        4,
        "TCP_USER_TIMEOUT",
    ),
    (
        libc::IPPROTO_TCP,
        libc::TCP_CONGESTION,
        16,
        "TCP_CONGESTION",
    ),
    (
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        4,
        "TCP_NOTSENT_LOWAT",
    ),
    (
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        4,
        "TCP_DEFER_ACCEPT",
    ),
    (libc::IPPROTO_TCP, libc::TCP_FASTOPEN, 4, "TCP_FASTOPEN"),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT, 4, "TCP_SYNCNT"),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2, 4, "TCP_LINGER2"),
    (
        libc::IPPROTO_TCP,
        libc::TCP_THIN_LINEAR_TIMEOUTS,
        4,
        "TCP_THIN_LINEAR_TIMEOUTS",
    ),
    (libc::IPPROTO_UDP, libc::UDP_SEGMENT, 2, "UDP_SEGMENT"),
    (libc::IPPROTO_UDP, libc::UDP_GRO, 4, "UDP_GRO"),
];

/// Whether option `name` of `level` belongs to sockets of kind `k` (multicast options not to
/// stream sockets, which refuse them: an accepted socket reads its SYN's TTL there).
fn extra_applies(level: i32, name: i32, k: SocketKind) -> bool {
    let multicast = matches!(
        (level, name),
        (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL)
            | (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP)
            | (libc::IPPROTO_IP, libc::IP_MULTICAST_ALL)
            | (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS)
            | (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP)
    );
    if multicast && k.ty == libc::SOCK_STREAM {
        return false;
    }
    match level {
        libc::IPPROTO_IP => k.domain == libc::AF_INET,
        libc::IPPROTO_IPV6 => k.domain == libc::AF_INET6,
        libc::IPPROTO_TCP => k.ty == libc::SOCK_STREAM,
        libc::IPPROTO_UDP => k.ty == libc::SOCK_DGRAM && k.protocol != libc::IPPROTO_ICMP,
        _ => true,
    }
}

/// Options set before bind (they decide whether and how the bind succeeds).
pub fn restore_options_before_bind(
    fd: BorrowedFd<'_>,
    family: i32,
    o: &InetOptions,
    what: &str,
) -> Result<(), Error> {
    let set = |level, name, v: i32, n: &str| {
        sys::set_int_option(fd, level, name, v)
            .map_err(|e| Error::io(format!("setsockopt {n} {v} on {what}"), e))
    };
    let sol = libc::SOL_SOCKET;
    set(sol, libc::SO_REUSEADDR, o.reuseaddr as i32, "SO_REUSEADDR")?;
    set(sol, libc::SO_REUSEPORT, o.reuseport as i32, "SO_REUSEPORT")?;
    // Only when it differs: a raw socket refuses the option (it has a "port", its protocol).
    let v6only = || opt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map(|v| v != 0);
    if family == libc::AF_INET6 && v6only().ok() != Some(o.v6only) {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            o.v6only as i32,
            "IPV6_V6ONLY",
        )?;
    }
    if family == libc::AF_INET6 {
        if o.freebind {
            set(libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1, "IPV6_FREEBIND")?;
        }
    } else if o.freebind {
        set(libc::IPPROTO_IP, libc::IP_FREEBIND, 1, "IP_FREEBIND")?;
    }
    if !o.bindtodevice.is_empty() {
        stasis_sys::socket::set_option_bytes(
            fd,
            sol,
            libc::SO_BINDTODEVICE,
            o.bindtodevice.as_bytes(),
        )
        .map_err(|e| Error::io(format!("SO_BINDTODEVICE {} on {what}", o.bindtodevice), e))?;
    }
    Ok(())
}

/// The other options (after bind and connect). Buffer sizes only when the program set them
/// ([`InetOptions::buf_locks`]).
/// Most multicast memberships one socket may have in an image.
pub const MAX_MEMBERSHIPS: usize = 1024;

/// The (interface, group) pairs joined on this host, from /proc/net/igmp (IPv4: the group in
/// host byte order, hex) or /proc/net/igmp6 (the group in network order, hex).
pub fn host_groups(v6: bool) -> Vec<(u32, Vec<u8>)> {
    let path = if v6 {
        "/proc/net/igmp6"
    } else {
        "/proc/net/igmp"
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse_host_groups(&text, v6)
}

/// See [`host_groups`].
pub fn parse_host_groups(text: &str, v6: bool) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut ifindex = 0u32;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if v6 {
            // "1 lo ff020000000000000000000000000001 1 0000000C 0"
            let (Some(idx), Some(g)) = (words.first(), words.get(2)) else {
                continue;
            };
            let (Ok(idx), true) = (idx.parse::<u32>(), g.len() == 32) else {
                continue;
            };
            let bytes: Option<Vec<u8>> = (0..16)
                .map(|i| u8::from_str_radix(&g[2 * i..2 * i + 2], 16).ok())
                .collect();
            if let Some(b) = bytes {
                out.push((idx, b));
            }
        } else if line.starts_with(|c: char| c.is_ascii_digit()) {
            // "1	lo        :     2      V3": an interface.
            ifindex = words.first().and_then(|w| w.parse().ok()).unwrap_or(0);
        } else if let Some(g) = words.first().filter(|w| w.len() == 8) {
            // "				030201EF     1 0:00000000		0": a group of it.
            if let Ok(v) = u32::from_str_radix(g, 16) {
                out.push((ifindex, v.to_le_bytes().to_vec()));
            }
        }
    }
    out
}

/// The multicast memberships of datagram or raw socket `fd` (see the module documentation).
pub fn dump_memberships(
    fd: BorrowedFd<'_>,
    k: SocketKind,
    what: &str,
) -> Result<Vec<McMembership>, Error> {
    if k.ty == libc::SOCK_STREAM {
        return Ok(Vec::new());
    }
    let v6 = k.domain == libc::AF_INET6;
    let level = if v6 {
        libc::IPPROTO_IPV6
    } else {
        libc::IPPROTO_IP
    };
    let mut out = Vec::new();
    for (ifindex, group) in host_groups(v6) {
        let Some((include, sources, total)) = sys::mcast_filter(fd, level, ifindex, &group)
            .map_err(|e| Error::io(format!("getsockopt MCAST_MSFILTER of {what}"), e))?
        else {
            continue;
        };
        if total as usize > sources.len() {
            return Err(Error::Unsupported {
                what: format!(
                    "{what}: a multicast membership with {total} sources, more than the {}                      stasis keeps",
                    sys::MAX_MCAST_SOURCES
                ),
            });
        }
        out.push(McMembership {
            ifindex,
            group,
            include,
            sources,
        });
    }
    Ok(out)
}

/// Joins the multicast groups of `o` again (before anything is queued to the socket).
fn restore_memberships(
    fd: BorrowedFd<'_>,
    family: i32,
    o: &InetOptions,
    what: &str,
) -> Result<(), Error> {
    let level = if family == libc::AF_INET6 {
        libc::IPPROTO_IPV6
    } else {
        libc::IPPROTO_IP
    };
    for m in &o.memberships {
        sys::mcast_join(fd, level, m.ifindex, &m.group, m.include, &m.sources).map_err(|e| {
            Error::io(
                format!(
                    "joining multicast group {:?} on interface {} for {what}",
                    m.group, m.ifindex
                ),
                e,
            )
        })?;
    }
    Ok(())
}

pub fn restore_options(
    fd: BorrowedFd<'_>,
    family: i32,
    ty: i32,
    o: &InetOptions,
    what: &str,
) -> Result<(), Error> {
    restore_memberships(fd, family, o, what)?;
    let set = |level, name, v: i32, n: &str| {
        sys::set_int_option(fd, level, name, v)
            .map_err(|e| Error::io(format!("setsockopt {n} {v} on {what}"), e))
    };
    let sol = libc::SOL_SOCKET;
    set(sol, libc::SO_KEEPALIVE, o.keepalive as i32, "SO_KEEPALIVE")?;
    set(sol, libc::SO_RCVLOWAT, o.rcvlowat as i32, "SO_RCVLOWAT")?;
    set(sol, libc::SO_PRIORITY, o.priority as i32, "SO_PRIORITY")?;
    if o.mark != 0 {
        set(sol, libc::SO_MARK, o.mark as i32, "SO_MARK")?;
    }
    set(sol, libc::SO_BROADCAST, o.broadcast as i32, "SO_BROADCAST")?;
    if let Some(l) = o.linger {
        let mut b = 1i32.to_ne_bytes().to_vec();
        b.extend_from_slice(&(l as i32).to_ne_bytes());
        stasis_sys::socket::set_option_bytes(fd, sol, libc::SO_LINGER, &b)
            .map_err(|e| Error::io(format!("SO_LINGER on {what}"), e))?;
    }
    // The kernel doubles what it is given.
    if o.buf_locks & 1 != 0 {
        force_buffer(fd, libc::SO_SNDBUF, o.sndbuf / 2, what)?;
    }
    if o.buf_locks & 2 != 0 {
        force_buffer(fd, libc::SO_RCVBUF, o.rcvbuf / 2, what)?;
    }
    if ty == libc::SOCK_STREAM {
        let t = libc::IPPROTO_TCP;
        set(t, libc::TCP_NODELAY, o.nodelay as i32, "TCP_NODELAY")?;
        set(t, libc::TCP_CORK, o.cork as i32, "TCP_CORK")?;
        set(t, libc::TCP_KEEPIDLE, o.keepidle as i32, "TCP_KEEPIDLE")?;
        set(t, libc::TCP_KEEPINTVL, o.keepintvl as i32, "TCP_KEEPINTVL")?;
        set(t, libc::TCP_KEEPCNT, o.keepcnt as i32, "TCP_KEEPCNT")?;
    }
    for x in &o.extra {
        let label = EXTRA
            .iter()
            .find(|e| (e.0, e.1) == (x.level, x.name))
            .map_or("an option", |e| e.3);
        stasis_sys::socket::set_option_bytes(fd, x.level, x.name, &x.value)
            .map_err(|e| Error::io(format!("setsockopt {label} on {what}"), e))?;
    }
    if !o.filter.is_empty() {
        let insns: Vec<(u16, u8, u8, u32)> =
            o.filter.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
        sys::attach_filter(fd, &insns)
            .map_err(|e| Error::io(format!("SO_ATTACH_FILTER on {what}"), e))?;
    }
    if o.filter_locked {
        set(sol, libc::SO_LOCK_FILTER, 1, "SO_LOCK_FILTER")?;
    }
    // getsockopt reports the TTL in effect (the system's default unless set): 0 is none.
    if family == libc::AF_INET6 {
        let l = libc::IPPROTO_IPV6;
        set(l, libc::IPV6_TCLASS, o.tos as i32, "IPV6_TCLASS")?;
        if o.ttl != 0 {
            set(
                l,
                libc::IPV6_UNICAST_HOPS,
                o.ttl as i32,
                "IPV6_UNICAST_HOPS",
            )?;
        }
    } else {
        let l = libc::IPPROTO_IP;
        set(l, libc::IP_TOS, o.tos as i32, "IP_TOS")?;
        if o.ttl != 0 {
            set(l, libc::IP_TTL, o.ttl as i32, "IP_TTL")?;
        }
    }
    Ok(())
}

/// Sets buffer `which` (SO_SNDBUF or SO_RCVBUF) to `size` (the kernel doubles it): with
/// SO_SNDBUFFORCE/SO_RCVBUFFORCE, which go beyond the system's maximum, or, without
/// CAP_NET_ADMIN (a restore as a user), as far as the plain option goes.
pub fn force_buffer(fd: BorrowedFd<'_>, which: i32, size: u32, what: &str) -> Result<(), Error> {
    let (force, name) = if which == libc::SO_SNDBUF {
        (libc::SO_SNDBUFFORCE, "SO_SNDBUF")
    } else {
        (libc::SO_RCVBUFFORCE, "SO_RCVBUF")
    };
    let v = size.min(i32::MAX as u32) as i32;
    match sys::set_int_option(fd, libc::SOL_SOCKET, force, v) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            sys::set_int_option(fd, libc::SOL_SOCKET, which, v)
        }
        other => other,
    }
    .map_err(|e| Error::io(format!("setsockopt {name} {v} on {what}"), e))
}

/// The checks every inet record passes: family, addresses of the family's size, bounded
/// options and queues.
pub fn validate(s: &InetSocket) -> Result<(), String> {
    let iplen = match s.family as i32 {
        libc::AF_INET => 4,
        libc::AF_INET6 => 16,
        f => return Err(format!("family {f}, not AF_INET or AF_INET6")),
    };
    for (name, a) in [("local", &s.local), ("peer", &s.peer)] {
        if let Some(a) = a {
            if a.ip.len() != iplen {
                return Err(format!(
                    "{name} address of {} bytes for family {}",
                    a.ip.len(),
                    s.family
                ));
            }
        }
    }
    let o = &s.options;
    if o.memberships.len() > MAX_MEMBERSHIPS {
        return Err(format!(
            "{} multicast memberships (at most {MAX_MEMBERSHIPS})",
            o.memberships.len()
        ));
    }
    for m in &o.memberships {
        if m.group.len() != iplen
            || m.sources.len() > sys::MAX_MCAST_SOURCES
            || m.sources.iter().any(|a| a.len() != iplen)
        {
            return Err(format!(
                "a multicast membership of {} bytes with {} sources for family {}",
                m.group.len(),
                m.sources.len(),
                s.family
            ));
        }
    }
    if o.bindtodevice.len() > MAX_IFNAME || o.bindtodevice.contains('\0') {
        return Err(format!("bad device name {:?}", o.bindtodevice));
    }
    if o.buf_locks > 3 {
        return Err(format!("buffer locks {:#x}", o.buf_locks));
    }
    if o.sndbuf > i32::MAX as u32 || o.rcvbuf > i32::MAX as u32 {
        return Err("buffer size out of range".into());
    }
    if o.filter.len() > MAX_BPF_INSNS {
        return Err(format!(
            "a socket filter of {} instructions (at most {MAX_BPF_INSNS})",
            o.filter.len()
        ));
    }
    for x in &o.extra {
        match EXTRA.iter().find(|e| (e.0, e.1) == (x.level, x.name)) {
            Some(e) if x.value.len() <= e.2 => {}
            _ => {
                return Err(format!(
                    "option {}/{} ({} bytes) is not one stasis sets",
                    x.level,
                    x.name,
                    x.value.len()
                ))
            }
        }
    }
    if o.icmp_filter.len() > 32 {
        return Err(format!("an ICMP filter of {} bytes", o.icmp_filter.len()));
    }
    if o.tos > 255 || o.ttl > 255 {
        return Err(format!("TOS {} or TTL {} out of range", o.tos, o.ttl));
    }
    if s.shutdown > 3 {
        return Err(format!("shutdown bits {:#x}", s.shutdown));
    }
    let total: usize = s.datagrams.iter().map(|d| d.len()).sum();
    if total > MAX_QUEUE || s.datagrams.len() > 65536 {
        return Err(format!(
            "{} datagrams of {total} bytes queued (at most {MAX_QUEUE} bytes)",
            s.datagrams.len()
        ));
    }
    if let Some(t) = &s.tcp {
        if t.send_queue.len() > MAX_QUEUE || t.recv_queue.len() > MAX_QUEUE {
            return Err(format!("a TCP queue larger than {MAX_QUEUE} bytes"));
        }
        if t.unsent as usize > t.send_queue.len() {
            return Err(format!(
                "{} bytes not sent of a send queue of {}",
                t.unsent,
                t.send_queue.len()
            ));
        }
        check_table_name(&t.hold_table)?;
    }
    Ok(())
}

/// A hold table's name from a record: empty, or `stasis_hold_` and letters, digits and `_`.
fn check_table_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || (name.len() <= MAX_TABLE_NAME
            && name.starts_with("stasis_hold_")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        Ok(())
    } else {
        Err(format!("bad nftables table name {name:?}"))
    }
}

/// The `nft` binary, if installed.
fn nft_binary<I: IntoIterator<Item = std::path::PathBuf>>(dirs: I) -> Option<std::path::PathBuf> {
    dirs.into_iter()
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

/// Where the `nft` binary is looked for: $PATH, then root's sbin directories (not in every
/// PATH).
fn nft_dirs() -> Vec<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .collect()
}

/// Why a dump cannot hold connections without nft.
const NO_NFT: &str = "the nft binary (Debian package nftables) is not installed";

/// Runs `nft -f -` with `script`.
fn nft(script: &str) -> Result<(), String> {
    let bin = nft_binary(nft_dirs()).ok_or_else(|| NO_NFT.to_string())?;
    let mut child = Command::new(&bin)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, script.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes hold table `name` (nothing when it does not exist).
pub fn delete_hold_table(name: &str) -> Result<(), String> {
    check_table_name(name)?;
    if name.is_empty() {
        return Ok(());
    }
    match nft(&format!("delete table inet {name}\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.contains("No such file or directory") => Ok(()),
        Err(e) => Err(e),
    }
}

/// The match of packets from `peer` to `local` (IPv4 for v4-mapped addresses).
fn packet_match(local: &SocketAddr, peer: &SocketAddr) -> String {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    match (v4(local.ip()), v4(peer.ip())) {
        (Some(l), Some(p)) => format!(
            "ip saddr {p} ip daddr {l} tcp sport {} tcp dport {}",
            peer.port(),
            local.port()
        ),
        _ => format!(
            "ip6 saddr {} ip6 daddr {} tcp sport {} tcp dport {}",
            peer.ip(),
            local.ip(),
            peer.port(),
            local.port()
        ),
    }
}

/// The connections of one dump held in repair mode behind an nftables rule. Dropping it (the
/// dump failed, or the processes run on) takes the sockets out of repair mode and deletes the
/// table; [`ConnectionHold::keep`] (the processes were killed) closes our duplicates while
/// still in repair mode, so the connections vanish without a packet to the peer, and leaves the
/// table for the restore to delete.
#[derive(Default)]
pub struct ConnectionHold {
    table: String,
    repaired: Vec<(OwnedFd, bool)>,
    /// Connections dumped as closed (`--tcp-closed`): reset when the processes are killed.
    closing: Vec<OwnedFd>,
}

impl ConnectionHold {
    /// The table's name, created with its chain on the first call.
    pub fn table(&mut self) -> Result<&str, String> {
        if self.table.is_empty() {
            use std::time::{SystemTime, UNIX_EPOCH};
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
                .unwrap_or(0);
            let name = format!("stasis_hold_{}_{nanos:x}", std::process::id());
            nft(&format!(
                "add table inet {name}\nadd chain inet {name} hold {{ type filter hook input priority -300 ; policy accept ; }}\nadd chain inet {name} hold_out {{ type filter hook output priority -300 ; policy accept ; }}\n"
            ))?;
            self.table = name;
        }
        Ok(&self.table)
    }

    /// Drops every packet from `peer` to `local` (input) and from `local` to `peer` (output)
    /// until the table is deleted. The output side matters as much: a segment of new data the
    /// kernel sends after the dump read the connection (a zero-window probe, which repair mode
    /// does not stop) would reach the peer, which would then acknowledge bytes the restored
    /// socket counts as not sent, and the restored socket would drop every segment of the peer's
    /// as acknowledging unsent data. Dropped on output, the segment fails to go and the kernel
    /// counts it as not sent.
    pub fn hold(&mut self, local: &SocketAddr, peer: &SocketAddr) -> Result<(), String> {
        let table = self.table()?.to_string();
        nft(&format!(
            "add rule inet {table} hold {} drop\nadd rule inet {table} hold_out {} drop\n",
            packet_match(local, peer),
            packet_match(peer, local)
        ))
    }

    /// Remembers a socket put in repair mode (our duplicate of it), and its SO_REUSEADDR from
    /// before (leaving repair mode resets it).
    pub fn repaired(&mut self, fd: OwnedFd, reuseaddr: bool) {
        self.repaired.push((fd, reuseaddr));
    }

    /// Remembers a connection dumped as closed (our duplicate of it).
    pub fn closing(&mut self, fd: OwnedFd) {
        self.closing.push(fd);
    }

    /// The dumped processes are gone: the sockets close in repair mode (silently), the table
    /// stays until the restore. Connections dumped as closed are reset (SO_LINGER 0), so that
    /// neither they nor a TIME_WAIT keep their addresses from the restored listeners.
    pub fn keep(mut self) {
        self.repaired.clear();
        self.table.clear();
        let mut linger0 = 1i32.to_ne_bytes().to_vec();
        linger0.extend_from_slice(&0i32.to_ne_bytes());
        for fd in self.closing.drain(..) {
            if let Err(e) = stasis_sys::socket::set_option_bytes(
                fd.as_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger0,
            ) {
                tracing::warn!(error = %e, "SO_LINGER 0 on a connection dumped as closed");
            }
        }
    }
}

impl Drop for ConnectionHold {
    fn drop(&mut self) {
        for (fd, reuseaddr) in self.repaired.drain(..) {
            if let Err(e) = sys::set_int_option(
                fd.as_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_REPAIR,
                sys::TCP_REPAIR_OFF_NO_WP,
            ) {
                tracing::warn!(error = %e, "taking a socket out of TCP repair mode");
            }
            if reuseaddr {
                if let Err(e) =
                    sys::set_int_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
                {
                    tracing::warn!(error = %e, "setting SO_REUSEADDR again after repair mode");
                }
            }
        }
        if !self.table.is_empty() {
            if let Err(e) = delete_hold_table(&self.table) {
                tracing::warn!(table = %self.table, error = %e, "deleting the nftables hold table (delete it with: nft delete table inet {})", self.table);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_groups() {
        let v4 = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
            1\tlo        :     2      V3\n\
            \t\t\t\t030201EF     1 0:00000000\t\t0\n\
            \t\t\t\t010000E0     1 0:00000000\t\t0\n\
            4\teth0      :     1      V3\n\
            \t\t\t\t010000E0     1 0:00000000\t\t0\n";
        assert_eq!(
            parse_host_groups(v4, false),
            vec![
                (1, vec![239, 1, 2, 3]),
                (1, vec![224, 0, 0, 1]),
                (4, vec![224, 0, 0, 1])
            ]
        );
        let v6 = "1    lo              ff020000000000000000000000000001     1 0000000C 0\n";
        let mut ff02_1 = vec![0u8; 16];
        ff02_1[0] = 0xff;
        ff02_1[1] = 0x02;
        ff02_1[15] = 1;
        assert_eq!(parse_host_groups(v6, true), vec![(1, ff02_1)]);
        assert_eq!(parse_host_groups("garbage\n1 lo zz\n", true), vec![]);
    }

    #[test]
    fn addresses_round_trip() {
        for a in [
            "127.0.0.1:80",
            "[::1]:443",
            "[::ffff:10.0.0.1]:9",
            "0.0.0.0:0",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(image_to_addr(&addr_to_image(&a)).unwrap(), a);
        }
        assert!(image_to_addr(&InetAddr {
            ip: vec![1, 2, 3],
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn packet_matches() {
        let l: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        let p: SocketAddr = "[::ffff:127.0.0.2]:5000".parse().unwrap();
        assert_eq!(
            packet_match(&l, &p),
            "ip saddr 127.0.0.2 ip daddr 127.0.0.1 tcp sport 5000 tcp dport 80"
        );
        let l: SocketAddr = "[::1]:80".parse().unwrap();
        let p: SocketAddr = "[::1]:5000".parse().unwrap();
        assert_eq!(
            packet_match(&l, &p),
            "ip6 saddr ::1 ip6 daddr ::1 tcp sport 5000 tcp dport 80"
        );
    }

    #[test]
    fn nft_is_found_or_missing_by_name() {
        let empty = std::env::temp_dir().join(format!("stasis-no-nft-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert_eq!(nft_binary([empty.clone()]), None);
        assert!(NO_NFT.contains("nftables"));
        std::fs::write(empty.join("nft"), b"").unwrap();
        assert_eq!(nft_binary([empty.clone()]), Some(empty.join("nft")));
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn table_names() {
        assert!(check_table_name("").is_ok());
        assert!(check_table_name("stasis_hold_12_ab").is_ok());
        assert!(check_table_name("stasis_hold_1; flush ruleset").is_err());
        assert!(check_table_name("filter").is_err());
    }
}
