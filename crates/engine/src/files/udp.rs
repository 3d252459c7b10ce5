//! UDP and UDP-Lite sockets (AF_INET and AF_INET6, SOCK_DGRAM): unbound, bound, connected,
//! with the datagrams queued on them.
//!
//! Dump: the local and peer addresses (getsockname, getpeername), the options
//! ([`super::inet`]), and every datagram in the receive queue, read without consuming it (with
//! SO_PEEK_OFF each MSG_PEEK returns the next datagram), and whether it was shut down (for
//! reading or writing: sock_diag's INET_DIAG_SHUTDOWN). The sender of each is kept too. The
//! kernel hides from such peeks a zero-length datagram that was peeked at before (by the
//! program itself, or by an earlier dump of a process left running): it is then not kept. A
//! socket with datagrams it was still sending (corked with UDP_CORK) is refused.
//!
//! Restore: the socket is created with its protocol, gets its options and is bound; the queued
//! datagrams are sent to it, in order, from a temporary socket of the same kind bound to the
//! loopback address, before it connects (a connected socket takes datagrams from its peer
//! only); then it connects to its peer. Each datagram is sent from its sender's address
//! (recorded at dump with MSG_PEEK) when a socket can be bound there at that moment (the
//! address is free, or its holder shares it with SO_REUSEADDR; IP_FREEBIND for addresses not
//! on this machine); otherwise it comes from the loopback address. A socket that was shut down (sock_diag
//! reports it) is shut down again, last.

use super::inet;
use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, InetSocket, ProcessImage};
use stasis_sys::inet as sys;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// "State" of a connected datagram socket (TCP_ESTABLISHED) and of one that is not (TCP_CLOSE).
const CONNECTED: u32 = 1;
const UNCONNECTED: u32 = 7;

/// The UDP kind.
#[derive(Default)]
pub struct UdpSockets;

fn is_udp(k: Option<stasis_sys::socket::SocketKind>) -> bool {
    k.is_some_and(|k| {
        (k.domain == libc::AF_INET || k.domain == libc::AF_INET6)
            && k.ty == libc::SOCK_DGRAM
            && (k.protocol == libc::IPPROTO_UDP || k.protocol == libc::IPPROTO_UDPLITE)
    })
}

fn sock(kind: &FileKind) -> Option<&InetSocket> {
    match kind {
        FileKind::Inet(s) if s.ty as i32 == libc::SOCK_DGRAM => Some(s),
        _ => None,
    }
}

/// A socket bound at `addr` (SO_REUSEADDR, IP_FREEBIND), or `None` when that fails.
fn sender_socket(family: i32, protocol: i32, addr: &SocketAddr) -> Option<OwnedFd> {
    let fd = sys::socket(family, libc::SOCK_DGRAM, protocol).ok()?;
    let b = fd.as_fd();
    let _ = sys::set_int_option(b, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    let _ = if family == libc::AF_INET6 {
        sys::set_int_option(b, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1)
    } else {
        sys::set_int_option(b, libc::IPPROTO_IP, libc::IP_FREEBIND, 1)
    };
    match sys::bind(b, addr) {
        Ok(()) => Some(fd),
        Err(e) => {
            tracing::debug!(%addr, error = %e, "requeued datagrams come from the loopback address instead");
            None
        }
    }
}

/// Sends the record's datagrams to `fd` (bound at `to`) from a temporary socket. The receive
/// buffer is forced as large as they need. Loopback delivers them in order, as they are sent;
/// the first one is waited for. They are not peeked at to check them: the kernel hides a
/// zero-length datagram that was peeked at from later peeks with SO_PEEK_OFF (a later dump).
fn requeue(fd: BorrowedFd<'_>, s: &InetSocket, to: SocketAddr, what: &str) -> Result<(), Error> {
    let family = s.family as i32;
    let need: usize = s.datagrams.iter().map(|d| d.len() + 2048).sum();
    let have = sys::int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)
        .map_err(|e| Error::io(format!("SO_RCVBUF of {what}"), e))?;
    if (have as usize) < need {
        inet::force_buffer(fd, libc::SO_RCVBUF, need as u32, what)?;
    }
    let loopback = sys::socket(family, libc::SOCK_DGRAM, s.protocol as i32)
        .map_err(|e| Error::io(format!("a socket to requeue the datagrams of {what}"), e))?;
    let lo: IpAddr = if family == libc::AF_INET6 {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    };
    let dest = if to.ip().is_unspecified() {
        SocketAddr::new(lo, to.port())
    } else {
        to
    };
    // Each datagram from its sender's address when a socket can be bound there now (free, or
    // shared with SO_REUSEADDR), else from the loopback address.
    let mut from: Option<(SocketAddr, Option<OwnedFd>)> = None;
    for (i, d) in s.datagrams.iter().enumerate() {
        let sender = match s.senders.get(i) {
            Some(Some(a)) => Some(inet::image_to_addr(a)?),
            _ => None,
        };
        if let Some(addr) = sender {
            if from.as_ref().map(|(a, _)| *a) != Some(addr) {
                from = Some((addr, sender_socket(family, s.protocol as i32, &addr)));
            }
        }
        let tmp = match (&from, sender) {
            (Some((_, Some(fd))), Some(_)) => fd.as_fd(),
            _ => loopback.as_fd(),
        };
        sys::send_to(tmp, d, &dest)
            .map_err(|e| Error::io(format!("requeueing a datagram on {what} ({dest})"), e))?;
    }
    for _ in 0..200 {
        if sys::readable(fd).map_err(|e| Error::io(format!("poll {what}"), e))? {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(Error::Invalid(format!(
        "{what}: the requeued datagrams did not arrive"
    )))
}

impl FileOps for UdpSockets {
    fn name(&self) -> &'static str {
        "UDP socket"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        sock(kind).is_some()
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::Socket && is_udp(fd.socket)
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let k = fd
            .socket
            .ok_or_else(|| fd.unsupported("a socket of unknown kind"))?;
        let b = fd.file()?.as_fd();
        let what0 = format!("fd {} of pid {}", fd.fd, fd.pid);
        let (local, peer) = super::inet::addresses(b, &what0)?;
        let proto = match (k.protocol, k.domain) {
            (libc::IPPROTO_UDPLITE, libc::AF_INET6) => "udplite6",
            (libc::IPPROTO_UDPLITE, _) => "udplite",
            (_, libc::AF_INET6) => "udp6",
            _ => "udp",
        };
        let what = format!(
            "{what0} ({})",
            inet::describe_live(proto, &local, peer.as_ref())
        );
        let options = inet::dump_options(b, k, &what)?;
        let pending = sys::unsent(b).map_err(|e| Error::io(format!("SIOCOUTQ of {what}"), e))?;
        let corked = sys::int_option(b, libc::IPPROTO_UDP, libc::UDP_CORK)
            .map_err(|e| Error::io(format!("UDP_CORK of {what}"), e))?;
        if corked != 0 && pending > 0 {
            return Err(Error::Unsupported {
                what: format!(
                    "{what} is corked (UDP_CORK) with {pending} bytes not sent, which stasis cannot dump"
                ),
            });
        }
        let ino = std::os::unix::fs::MetadataExt::ino(fd.metadata()?);
        let shutdown = sys::diag_shutdown(k.domain, k.protocol, ino)
            .map_err(|e| Error::io(format!("sock_diag of {what}"), e))?
            .unwrap_or(0) as u32
            & 3;
        let (datagrams, senders): (Vec<_>, Vec<_>) = sys::peek_datagrams_from(b, inet::MAX_QUEUE)
            .map_err(|e| Error::io(format!("reading the datagrams queued on {what}"), e))?
            .into_iter()
            .map(|(d, from)| (d, from.as_ref().map(inet::addr_to_image)))
            .unzip();
        Ok(FileKind::Inet(Box::new(InetSocket {
            family: k.domain as u32,
            ty: k.ty as u32,
            protocol: k.protocol as u32,
            state: if peer.is_some() {
                CONNECTED
            } else {
                UNCONNECTED
            },
            local: (!inet::is_unbound(&local)).then(|| inet::addr_to_image(&local)),
            peer: peer.as_ref().map(inet::addr_to_image),
            options,
            datagrams,
            senders,
            shutdown,
            ..Default::default()
        })))
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let s = sock(&desc.kind).ok_or("not a UDP socket")?;
        inet::validate(s)?;
        let p = s.protocol as i32;
        if p != libc::IPPROTO_UDP && p != libc::IPPROTO_UDPLITE {
            return Err(format!("protocol {p} on a datagram socket"));
        }
        if s.tcp.is_some() || s.backlog != 0 {
            return Err("TCP state on a datagram socket".into());
        }
        match (s.state, &s.peer) {
            (CONNECTED, Some(_)) | (UNCONNECTED, None) => {}
            (st, _) => return Err(format!("state {st} does not match the peer address")),
        }
        if !s.senders.is_empty() && s.senders.len() != s.datagrams.len() {
            return Err(format!(
                "{} senders for {} datagrams",
                s.senders.len(),
                s.datagrams.len()
            ));
        }
        for a in s.senders.iter().flatten() {
            inet::image_to_addr(a).map_err(|e| format!("sender: {e}"))?;
            if a.ip.len()
                != if s.family as i32 == libc::AF_INET6 {
                    16
                } else {
                    4
                }
            {
                return Err("a sender of another family".into());
            }
        }
        if !s.datagrams.is_empty() && s.local.is_none() {
            return Err("datagrams queued on an unbound socket".into());
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let s = sock(&desc.kind)
            .ok_or_else(|| Error::Invalid(format!("description {} is not UDP", desc.id)))?;
        let what = format!("description {} ({})", desc.id, inet::describe(s));
        let fd = sys::socket(s.family as i32, libc::SOCK_DGRAM, s.protocol as i32)
            .map_err(|e| Error::io(format!("socket for {what}"), e))?;
        let b = fd.as_fd();
        inet::restore_options_before_bind(b, s.family as i32, &s.options, &what)?;
        if let Some(local) = &s.local {
            let a = inet::image_to_addr(local)?;
            sys::bind(b, &a).map_err(|e| Error::io(format!("bind {a} for {what}"), e))?;
            if !s.datagrams.is_empty() {
                let bound = sys::local_addr(b)
                    .map_err(|e| Error::io(format!("getsockname of {what}"), e))?;
                requeue(b, s, bound, &what)?;
            }
        }
        if let Some(peer) = &s.peer {
            let a = inet::image_to_addr(peer)?;
            sys::connect(b, &a).map_err(|e| Error::io(format!("connect {a} for {what}"), e))?;
        }
        inet::restore_options(b, s.family as i32, libc::SOCK_DGRAM, &s.options, &what)?;
        if s.shutdown != 0 {
            let how = match s.shutdown {
                1 => libc::SHUT_RD,
                2 => libc::SHUT_WR,
                _ => libc::SHUT_RDWR,
            };
            // An unconnected socket is shut down all the same, with ENOTCONN.
            match sys::shutdown(b, how) {
                Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => {
                    return Err(Error::io(format!("shutdown of {what}"), e))
                }
                _ => {}
            }
        }
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    /// A change to a record that makes it invalid.
    type Edit = fn(&mut InetSocket);

    #[test]
    fn validate_refuses_bad_records() {
        let p = sample_process();
        let ok = FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::Inet(Box::new(InetSocket {
                family: libc::AF_INET as u32,
                ty: libc::SOCK_DGRAM as u32,
                protocol: libc::IPPROTO_UDP as u32,
                state: UNCONNECTED,
                local: Some(inet::addr_to_image(&"127.0.0.1:53".parse().unwrap())),
                datagrams: vec![b"x".to_vec()],
                ..Default::default()
            })),
            owner: Default::default(),
            locks: Vec::new(),
        };
        UdpSockets.validate(&ok, &p).unwrap();
        let edits: Vec<(&str, Edit)> = vec![
            ("protocol", |s| s.protocol = 6),
            ("state", |s| s.state = CONNECTED),
            ("unbound with data", |s| s.local = None),
            ("too much data", |s| {
                s.datagrams = vec![vec![0; 65536]; inet::MAX_QUEUE / 65536 + 1]
            }),
            ("tcp", |s| s.tcp = Some(Default::default())),
        ];
        for (what, edit) in edits {
            let mut d = ok.clone();
            if let FileKind::Inet(s) = &mut d.kind {
                edit(s);
            }
            assert!(UdpSockets.validate(&d, &p).is_err(), "{what} accepted");
        }
    }

    /// A bound socket with datagrams, restored from its record: the datagrams come out in
    /// order.
    #[test]
    fn datagrams_are_requeued_in_order() {
        let desc = FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::Inet(Box::new(InetSocket {
                family: libc::AF_INET as u32,
                ty: libc::SOCK_DGRAM as u32,
                protocol: libc::IPPROTO_UDP as u32,
                state: UNCONNECTED,
                local: Some(inet::addr_to_image(&"127.0.0.1:0".parse().unwrap())),
                datagrams: vec![b"one".to_vec(), Vec::new(), b"three".to_vec()],
                ..Default::default()
            })),
            owner: Default::default(),
            locks: Vec::new(),
        };
        // Port 0 in the record: bound to an ephemeral port, which requeue then uses.
        let images = stasis_image::ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = OpenContext::new(&images, super::super::ReplacedFiles::Refuse);
        let fd = match UdpSockets.open(&desc, &mut ctx) {
            Ok(fd) => fd,
            Err(e) => panic!("{e}"),
        };
        let sock = std::net::UdpSocket::from(fd);
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"", b"three"] {
            let n = sock.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }
}
