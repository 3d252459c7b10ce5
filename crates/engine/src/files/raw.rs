//! Raw inet sockets (SOCK_RAW, any protocol) and ICMP "ping" sockets (SOCK_DGRAM with
//! IPPROTO_ICMP or IPPROTO_ICMPV6), AF_INET and AF_INET6.
//!
//! Dump: the creation triple, the local address (a ping socket's "port" is its ICMP echo
//! identifier), the peer of a connected socket, the options of [`super::inet`], and for raw
//! sockets IP_HDRINCL (IPV6_HDRINCL) and the ICMP filter (ICMP_FILTER of a raw ICMP socket,
//! ICMP6_FILTER of a raw ICMPv6 socket). A socket with packets queued to be read is refused
//! (they are not kept). A raw socket's connect(2) does not show (getpeername reports no peer):
//! it is not kept.
//!
//! Restore: the socket is created again with its protocol (a raw socket needs CAP_NET_RAW, a
//! ping socket a group in net.ipv4.ping_group_range), gets its options, is bound and connected
//! as it was, and gets its raw options.

use super::inet;
use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, InetSocket, ProcessImage};
use stasis_sys::inet as sys;
use stasis_sys::socket::{get_option_bytes, set_option_bytes, SocketKind};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// `SOL_RAW` and its `ICMP_FILTER` option; `ICMP6_FILTER` (level IPPROTO_ICMPV6).
const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const ICMP6_FILTER: i32 = 1;
/// `IPV6_HDRINCL` (Linux 4.5).
const IPV6_HDRINCL: i32 = 36;

/// The raw and ping socket kind.
#[derive(Default)]
pub struct RawSockets;

fn is_ping(domain: i32, ty: i32, protocol: i32) -> bool {
    ty == libc::SOCK_DGRAM
        && ((domain == libc::AF_INET && protocol == libc::IPPROTO_ICMP)
            || (domain == libc::AF_INET6 && protocol == libc::IPPROTO_ICMPV6))
}

fn claimed(k: Option<SocketKind>) -> bool {
    k.is_some_and(|k| {
        (k.domain == libc::AF_INET || k.domain == libc::AF_INET6)
            && (k.ty == libc::SOCK_RAW || is_ping(k.domain, k.ty, k.protocol))
    })
}

fn sock(kind: &FileKind) -> Option<&InetSocket> {
    match kind {
        FileKind::Inet(s)
            if s.ty as i32 == libc::SOCK_RAW
                || is_ping(s.family as i32, s.ty as i32, s.protocol as i32) =>
        {
            Some(s)
        }
        _ => None,
    }
}

/// The level and name of the ICMP filter option of a raw socket of `k`, if it has one.
fn filter_option(domain: i32, ty: i32, protocol: i32) -> Option<(i32, i32, usize)> {
    match (domain, ty, protocol) {
        (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) => Some((SOL_RAW, ICMP_FILTER, 4)),
        (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) => {
            Some((libc::IPPROTO_ICMPV6, ICMP6_FILTER, 32))
        }
        _ => None,
    }
}

fn hdrincl_option(domain: i32) -> (i32, i32) {
    if domain == libc::AF_INET6 {
        (libc::IPPROTO_IPV6, IPV6_HDRINCL)
    } else {
        (libc::IPPROTO_IP, libc::IP_HDRINCL)
    }
}

fn proto_name(k: SocketKind) -> String {
    let six = if k.domain == libc::AF_INET6 { "6" } else { "" };
    if k.ty == libc::SOCK_RAW {
        format!("raw{six} (protocol {})", k.protocol)
    } else {
        format!("ping{six}")
    }
}

fn restore_raw_options(fd: BorrowedFd<'_>, s: &InetSocket, what: &str) -> Result<(), Error> {
    let (family, ty, protocol) = (s.family as i32, s.ty as i32, s.protocol as i32);
    if ty != libc::SOCK_RAW {
        return Ok(());
    }
    if s.options.hdrincl {
        let (level, name) = hdrincl_option(family);
        sys::set_int_option(fd, level, name, 1)
            .map_err(|e| Error::io(format!("IP_HDRINCL on {what}"), e))?;
    }
    if let (Some((level, name, len)), false) = (
        filter_option(family, ty, protocol),
        s.options.icmp_filter.is_empty(),
    ) {
        if s.options.icmp_filter.len() != len {
            return Err(Error::Invalid(format!(
                "{what}: an ICMP filter of {} bytes",
                s.options.icmp_filter.len()
            )));
        }
        set_option_bytes(fd, level, name, &s.options.icmp_filter)
            .map_err(|e| Error::io(format!("the ICMP filter of {what}"), e))?;
    }
    Ok(())
}

impl FileOps for RawSockets {
    fn name(&self) -> &'static str {
        "raw or ping socket"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        sock(kind).is_some()
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::Socket && claimed(fd.socket)
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
        let what = format!(
            "{what0} ({})",
            inet::describe_live(&proto_name(k), &local, peer.as_ref())
        );
        if sys::readable(b).map_err(|e| Error::io(format!("poll {what}"), e))? {
            return Err(Error::Unsupported {
                what: format!(
                    "{what} has packets queued to be read, which stasis cannot keep for raw and ping sockets"
                ),
            });
        }
        let mut options = inet::dump_options(b, k, &what)?;
        if k.ty == libc::SOCK_RAW {
            let (level, name) = hdrincl_option(k.domain);
            options.hdrincl = sys::int_option(b, level, name)
                .map_err(|e| Error::io(format!("IP_HDRINCL of {what}"), e))?
                != 0;
        }
        if let Some((level, name, len)) = filter_option(k.domain, k.ty, k.protocol) {
            options.icmp_filter = get_option_bytes(b, level, name, len)
                .map_err(|e| Error::io(format!("the ICMP filter of {what}"), e))?;
        }
        // A raw socket's "port" is its protocol; a ping socket's is its echo identifier.
        let bound = !local.ip().is_unspecified() || (k.ty != libc::SOCK_RAW && local.port() != 0);
        Ok(FileKind::Inet(Box::new(InetSocket {
            family: k.domain as u32,
            ty: k.ty as u32,
            protocol: k.protocol as u32,
            state: if peer.is_some() { 1 } else { 7 },
            local: bound.then(|| inet::addr_to_image(&local)),
            peer: peer.as_ref().map(inet::addr_to_image),
            options,
            ..Default::default()
        })))
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let s = sock(&desc.kind).ok_or("not a raw or ping socket")?;
        inet::validate(s)?;
        if s.protocol > 255 {
            return Err(format!("protocol {}", s.protocol));
        }
        if s.tcp.is_some() || s.backlog != 0 || !s.datagrams.is_empty() {
            return Err("TCP state or queued data on a raw or ping socket".into());
        }
        match (s.state, &s.peer) {
            (1, Some(_)) | (7, None) => {}
            (st, _) => return Err(format!("state {st} does not match the peer address")),
        }
        let filter = &s.options.icmp_filter;
        match filter_option(s.family as i32, s.ty as i32, s.protocol as i32) {
            Some((_, _, len)) if filter.is_empty() || filter.len() == len => Ok(()),
            None if filter.is_empty() => Ok(()),
            _ => Err(format!("an ICMP filter of {} bytes", filter.len())),
        }
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let s = sock(&desc.kind).ok_or_else(|| {
            Error::Invalid(format!(
                "description {} is not a raw or ping socket",
                desc.id
            ))
        })?;
        let k = SocketKind {
            domain: s.family as i32,
            ty: s.ty as i32,
            protocol: s.protocol as i32,
        };
        let what = format!("description {} ({})", desc.id, proto_name(k));
        let fd = sys::socket(k.domain, k.ty, k.protocol).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::EPERM) if k.ty == libc::SOCK_RAW => " (needs CAP_NET_RAW)",
                Some(libc::EACCES) => " (the group is not in net.ipv4.ping_group_range)",
                _ => "",
            };
            Error::io(format!("socket for {what}{why}"), e)
        })?;
        let b = fd.as_fd();
        // The filter first: until it is bound, the socket gets every packet of its protocol.
        restore_raw_options(b, s, &what)?;
        inet::restore_options_before_bind(b, k.domain, &s.options, &what)?;
        if let Some(local) = &s.local {
            let a = inet::image_to_addr(local)?;
            sys::bind(b, &a).map_err(|e| Error::io(format!("bind {a} for {what}"), e))?;
        }
        if let Some(peer) = &s.peer {
            let a = inet::image_to_addr(peer)?;
            sys::connect(b, &a).map_err(|e| Error::io(format!("connect {a} for {what}"), e))?;
        }
        inet::restore_options(b, k.domain, k.ty, &s.options, &what)?;
        // What arrived before the socket was bound was not for it.
        sys::drain(b).map_err(|e| Error::io(format!("draining {what}"), e))?;
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    fn desc(s: InetSocket) -> FileDesc {
        FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::Inet(Box::new(s)),
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate_refuses_bad_records() {
        let p = sample_process();
        let ok = InetSocket {
            family: libc::AF_INET as u32,
            ty: libc::SOCK_RAW as u32,
            protocol: libc::IPPROTO_ICMP as u32,
            state: 7,
            options: stasis_image::InetOptions {
                icmp_filter: vec![0; 4],
                ..Default::default()
            },
            ..Default::default()
        };
        RawSockets.validate(&desc(ok.clone()), &p).unwrap();
        let mut bad = ok.clone();
        bad.options.icmp_filter = vec![0; 5];
        assert!(RawSockets.validate(&desc(bad), &p).is_err());
        let mut bad = ok.clone();
        bad.datagrams = vec![vec![1]];
        assert!(RawSockets.validate(&desc(bad), &p).is_err());
        let mut bad = ok;
        bad.state = 1;
        assert!(RawSockets.validate(&desc(bad), &p).is_err());
    }
}
