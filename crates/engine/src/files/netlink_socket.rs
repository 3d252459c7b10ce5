//! Netlink sockets (`AF_NETLINK`: NETLINK_ROUTE, NETLINK_GENERIC, NETLINK_AUDIT,
//! NETLINK_KOBJECT_UEVENT, NETLINK_SOCK_DIAG, ...): type, protocol, port id, multicast groups,
//! default destination, options and socket filter.
//!
//! Dump, on the dumper's duplicate of the fd (the same description, which goes on working
//! for the process): getsockname gives the port id (0: never bound; a port the kernel chose
//! when the socket was auto-bound is kept like one the program chose: programs such as libnl
//! remember theirs), NETLINK_LIST_MEMBERSHIPS every multicast group (also those above 32),
//! getpeername the destination set by connect, getsockopt the SOL_NETLINK flags
//! (NETLINK_PKTINFO, BROADCAST_ERROR, NO_ENOBUFS, LISTEN_ALL_NSID, CAP_ACK, EXT_ACK,
//! GET_STRICT_CHK) and the SOL_SOCKET part ([`super::sol_socket`]). sock_diag
//! (`netlink_diag`) tells whether a multi-part answer (NLM_F_DUMP) is being produced.
//!
//! Messages queued unread at dump time are not kept: they cannot be read without taking them
//! from the running process (netlink has no peek offset), and a message from the kernel
//! cannot be queued again with the kernel as its sender. So:
//! * a socket in the middle of a dump (NLM_F_DUMP) is refused by name: the rest of the answer
//!   would never come, and the program would wait for NLMSG_DONE forever;
//! * a socket whose first queued message is a unicast one (the answer to a request, or a
//!   message of another port) is refused by name, for the same reason;
//! * multicast notifications queued at dump time (the first queued message was sent to a
//!   group) are dropped, as when the receive buffer overflows. The restored socket does not
//!   report ENOBUFS for them (userspace cannot raise it), so a program that keeps a cache
//!   from notifications misses those that were queued: dump such a program when it is idle,
//!   or have it resynchronise after a restore. Only the first queued message can be looked
//!   at: an answer queued behind a notification on a socket used for both (sd-netlink does
//!   that) is dropped with it, and the program sees its request time out.
//!
//! Restore, in the restorer: socket(AF_NETLINK, type, protocol), the SOL_SOCKET options and
//! filter, the SOL_NETLINK flags, bind to the same port id (a port taken by another socket by
//! then fails the restore naming it), NETLINK_ADD_MEMBERSHIP for each group, connect to the
//! destination. The socket is created in the restorer's network namespace.

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, NetlinkOptions, ProcessImage};
use stasis_sys::netlink::{self, NetlinkAddr, SOL_NETLINK};
use stasis_sys::socket::{get_option, set_option};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

const NETLINK_PKTINFO: i32 = 3;
const NETLINK_BROADCAST_ERROR: i32 = 4;
const NETLINK_NO_ENOBUFS: i32 = 5;
const NETLINK_LISTEN_ALL_NSID: i32 = 8;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const NETLINK_GET_STRICT_CHK: i32 = 12;
/// Netlink protocols are below `MAX_LINKS`.
const MAX_LINKS: i32 = 32;
/// Most 32-bit words of a group bitmap a record may hold (4096 groups).
const MAX_GROUP_WORDS: usize = 128;

/// The netlink socket kind.
#[derive(Default)]
pub struct NetlinkSockets;

impl FileOps for NetlinkSockets {
    fn name(&self) -> &'static str {
        "netlink socket"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::NetlinkSocket { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::Socket && fd.socket.is_some_and(|k| k.domain == libc::AF_NETLINK)
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        dump(fd)
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::NetlinkSocket {
            ty,
            protocol,
            groups,
            common,
            ..
        } = &desc.kind
        else {
            return Err("not a netlink socket".into());
        };
        if *ty != libc::SOCK_RAW && *ty != libc::SOCK_DGRAM {
            return Err(format!("socket type {ty} (SOCK_RAW or SOCK_DGRAM)"));
        }
        if !(0..MAX_LINKS).contains(protocol) {
            return Err(format!("protocol {protocol} (0 to {})", MAX_LINKS - 1));
        }
        if groups.len() > MAX_GROUP_WORDS {
            return Err(format!(
                "{} words of groups (at most {MAX_GROUP_WORDS})",
                groups.len()
            ));
        }
        super::sol_socket::validate(common)
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        open(desc)
    }
}

/// The SOL_NETLINK flags, getsockopt name by name.
const FLAGS: [i32; 7] = [
    NETLINK_PKTINFO,
    NETLINK_BROADCAST_ERROR,
    NETLINK_NO_ENOBUFS,
    NETLINK_LISTEN_ALL_NSID,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
];

fn options_from(v: [bool; 7]) -> NetlinkOptions {
    NetlinkOptions {
        pktinfo: v[0],
        broadcast_error: v[1],
        no_enobufs: v[2],
        listen_all_nsid: v[3],
        cap_ack: v[4],
        ext_ack: v[5],
        get_strict_chk: v[6],
    }
}

fn options_to(o: &NetlinkOptions) -> [bool; 7] {
    [
        o.pktinfo,
        o.broadcast_error,
        o.no_enobufs,
        o.listen_all_nsid,
        o.cap_ack,
        o.ext_ack,
        o.get_strict_chk,
    ]
}

fn protocol_name(p: i32) -> String {
    let name = match p {
        0 => "NETLINK_ROUTE",
        2 => "NETLINK_USERSOCK",
        4 => "NETLINK_SOCK_DIAG",
        6 => "NETLINK_XFRM",
        7 => "NETLINK_SELINUX",
        9 => "NETLINK_AUDIT",
        12 => "NETLINK_NETFILTER",
        15 => "NETLINK_KOBJECT_UEVENT",
        16 => "NETLINK_GENERIC",
        _ => return format!("protocol {p}"),
    };
    name.to_string()
}

/// Describes netlink socket `fd`; refuses one whose queued messages cannot be dropped.
fn dump(fd: &Probe<'_>) -> Result<FileKind, Error> {
    let Some(kind) = fd.socket else {
        return Err(fd.unsupported("a socket of unknown domain"));
    };
    let what = format!("fd {} of pid {}", fd.fd, fd.pid);
    let sock = fd.file()?.as_fd();
    let io = |op: &str| {
        let w = format!("{op} on {what}");
        move |e| Error::io(w, e)
    };
    let name = format!("a netlink socket ({})", protocol_name(kind.protocol));
    super::sol_socket::check_namespace(fd, &name)?;
    let local = netlink::local_addr(sock).map_err(io("getsockname"))?;
    let peer = netlink::peer_addr(sock).map_err(io("getpeername"))?;
    let groups = netlink::memberships(sock).map_err(io("NETLINK_LIST_MEMBERSHIPS"))?;
    if groups.len() > MAX_GROUP_WORDS {
        return Err(fd.unsupported(&format!(
            "{name} in more than {MAX_GROUP_WORDS} x 32 groups"
        )));
    }
    let ino = fd.metadata()?.ino();
    let diag = if local.port_id != 0 || !groups.is_empty() {
        netlink::netlink_diag(kind.protocol as u8, ino).map_err(io("sock_diag (netlink)"))?
    } else {
        None
    };
    let mut flags = [false; 7];
    for (i, name) in FLAGS.iter().enumerate() {
        flags[i] = match get_option::<i32>(sock, SOL_NETLINK, *name) {
            Ok(v) => v != 0,
            // Kernels that cannot report LISTEN_ALL_NSID through getsockopt tell sock_diag.
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                *name == NETLINK_LISTEN_ALL_NSID
                    && diag.is_some_and(|d| d.flags & netlink::NDIAG_FLAG_LISTEN_ALL_NSID != 0)
            }
            Err(e) => return Err(io(&format!("getsockopt SOL_NETLINK {name}"))(e)),
        };
    }
    if diag.is_some_and(|d| d.flags & netlink::NDIAG_FLAG_CB_RUNNING != 0) {
        return Err(fd.unsupported(&format!(
            "{name} in the middle of a multi-part answer (NLM_F_DUMP), whose rest could not be made again; dump again once the program has read it"
        )));
    }
    if let Some(sender) = netlink::peek_sender(sock).map_err(io("recv MSG_PEEK"))? {
        if sender.groups == 0 {
            return Err(fd.unsupported(&format!(
                "{name} with an unread message from port {} queued (the answer to a request, which could not be queued again); dump again once the program has read it",
                sender.port_id
            )));
        }
        tracing::info!(
            "{what}: multicast notifications queued on {name} are dropped (as on a receive buffer overflow)"
        );
    }
    Ok(FileKind::NetlinkSocket {
        ty: kind.ty,
        protocol: kind.protocol,
        port_id: local.port_id,
        groups,
        dst_port_id: peer.port_id,
        dst_group: peer.groups,
        options: options_from(flags),
        common: super::sol_socket::dump(sock, &what)?,
    })
}

/// Creates the netlink socket of description `f` in the restorer.
fn open(f: &FileDesc) -> Result<OwnedFd, Error> {
    let FileKind::NetlinkSocket {
        ty,
        protocol,
        port_id,
        groups,
        dst_port_id,
        dst_group,
        options,
        common,
    } = &f.kind
    else {
        return Err(Error::Invalid(format!(
            "description {} is not a netlink socket",
            f.id
        )));
    };
    let what = format!(
        "the netlink socket ({}) of description {}",
        protocol_name(*protocol),
        f.id
    );
    let s = netlink::socket(*ty, *protocol).map_err(|e| Error::io(format!("create {what}"), e))?;
    super::sol_socket::apply(s.as_fd(), common, &what)?;
    set_flags(s.as_fd(), options, &what)?;
    if *port_id != 0 {
        let addr = NetlinkAddr {
            port_id: *port_id,
            groups: 0,
        };
        netlink::bind(s.as_fd(), addr).map_err(|e| match e.raw_os_error() {
            Some(libc::EADDRINUSE) => Error::Changed {
                what: format!(
                    "{what}: its port id {port_id} is taken by another {} socket",
                    protocol_name(*protocol)
                ),
            },
            _ => Error::io(format!("bind {what} to port id {port_id}"), e),
        })?;
    }
    for (w, word) in groups.iter().enumerate() {
        for bit in 0..32 {
            if word & (1 << bit) != 0 {
                let group = (w * 32 + bit + 1) as u32;
                netlink::add_membership(s.as_fd(), group).map_err(|e| {
                    Error::io(format!("NETLINK_ADD_MEMBERSHIP {group} on {what}"), e)
                })?;
            }
        }
    }
    if *dst_port_id != 0 || *dst_group != 0 {
        let addr = NetlinkAddr {
            port_id: *dst_port_id,
            groups: *dst_group,
        };
        netlink::connect(s.as_fd(), addr).map_err(|e| {
            Error::io(
                format!("connect {what} to port {dst_port_id} group mask {dst_group:#x}"),
                e,
            )
        })?;
    }
    Ok(s)
}

fn set_flags(s: BorrowedFd<'_>, o: &NetlinkOptions, what: &str) -> Result<(), Error> {
    for (name, on) in FLAGS.iter().zip(options_to(o)) {
        if on {
            set_option(s, SOL_NETLINK, *name, &1i32)
                .map_err(|e| Error::io(format!("setsockopt SOL_NETLINK {name} on {what}"), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_image::SocketCommon;

    fn desc(port_id: u32, groups: Vec<u32>) -> FileDesc {
        FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::NetlinkSocket {
                ty: libc::SOCK_RAW,
                protocol: libc::NETLINK_USERSOCK,
                port_id,
                groups,
                dst_port_id: 99,
                dst_group: 0,
                options: NetlinkOptions {
                    ext_ack: true,
                    no_enobufs: true,
                    ..Default::default()
                },
                common: SocketCommon::default(),
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate() {
        let p = sample_process();
        NetlinkSockets.validate(&desc(5, vec![1]), &p).unwrap();
        assert!(NetlinkSockets
            .validate(&desc(5, vec![0; MAX_GROUP_WORDS + 1]), &p)
            .is_err());
        let mut d = desc(5, vec![]);
        if let FileKind::NetlinkSocket { protocol, .. } = &mut d.kind {
            *protocol = 32;
        }
        assert!(NetlinkSockets.validate(&d, &p).is_err());
        let mut d = desc(5, vec![]);
        if let FileKind::NetlinkSocket { ty, .. } = &mut d.kind {
            *ty = libc::SOCK_STREAM;
        }
        assert!(NetlinkSockets.validate(&d, &p).is_err());
    }

    /// A probe of `s`, one of our own sockets.
    fn probe_of(s: &OwnedFd) -> Probe<'static> {
        let file = std::fs::File::from(s.try_clone().unwrap());
        let md = file.metadata().unwrap();
        Probe {
            pid: 1,
            fd: 9,
            link: format!("socket:[{}]", md.ino()),
            flags: 2,
            pos: 0,
            class: Class::Socket,
            all_fds: &[],
            service: None,
            socket: Some(stasis_sys::socket::socket_kind(s.as_fd()).unwrap()),
            cloexec: false,
            dup: Some((file, md)),
            fdinfo: None,
        }
    }

    fn bound(protocol: i32, port_id: u32, groups: u32) -> OwnedFd {
        let s = netlink::socket(libc::SOCK_RAW, protocol).unwrap();
        netlink::bind(s.as_fd(), NetlinkAddr { port_id, groups }).unwrap();
        s
    }

    /// An unread answer and a dump in progress are refused by name; queued notifications
    /// are dropped (the socket is dumped, its queue left as it is).
    #[test]
    fn queued_messages() {
        let base = 0x5c00_0000 | (std::process::id() << 4);
        let rx = bound(libc::NETLINK_USERSOCK, base, 1 << 6);
        let tx = bound(libc::NETLINK_USERSOCK, base + 1, 0);
        let send_to = |port_id, groups, what: &[u8]| {
            let to = NetlinkAddr { port_id, groups };
            netlink::connect(tx.as_fd(), to).unwrap();
            let _ = std::io::Write::write(&mut std::fs::File::from(tx.try_clone().unwrap()), what);
        };
        let kind = dump(&probe_of(&rx)).unwrap();
        assert!(matches!(kind, FileKind::NetlinkSocket { port_id, .. } if port_id == base));
        // A multicast notification first: dumped, and left queued for the process.
        send_to(0, 1 << 6, b"notification");
        dump(&probe_of(&rx)).unwrap();
        assert!(netlink::peek_sender(rx.as_fd()).unwrap().is_some());
        // A unicast message first: refused.
        let rx2 = bound(libc::NETLINK_USERSOCK, base + 2, 0);
        send_to(base + 2, 0, b"answer");
        let err = dump(&probe_of(&rx2)).unwrap_err().to_string();
        assert!(
            err.contains("fd 9 of pid 1") && err.contains("unread message from port"),
            "{err}"
        );
        // A dump (NLM_F_DUMP) whose answer was not read: refused.
        let route = bound(libc::NETLINK_ROUTE, base + 3, 0);
        let mut req = Vec::new();
        req.extend_from_slice(&32u32.to_ne_bytes());
        req.extend_from_slice(&18u16.to_ne_bytes()); // RTM_GETLINK
        req.extend_from_slice(&0x301u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_DUMP
        req.extend_from_slice(&[0; 8]);
        req.extend_from_slice(&[0; 16]); // ifinfomsg
        netlink::connect(route.as_fd(), NetlinkAddr::default()).unwrap();
        std::io::Write::write_all(&mut std::fs::File::from(route.try_clone().unwrap()), &req)
            .unwrap();
        let err = dump(&probe_of(&route)).unwrap_err().to_string();
        assert!(err.contains("multi-part answer (NLM_F_DUMP)"), "{err}");
    }

    #[test]
    fn restored_with_port_groups_destination_and_flags() {
        let port = 0x5b00_0000 | std::process::id();
        let d = desc(port, vec![0b1001]);
        let s = open(&d).unwrap();
        let local = netlink::local_addr(s.as_fd()).unwrap();
        assert_eq!((local.port_id, local.groups), (port, 0b1001));
        assert_eq!(netlink::peer_addr(s.as_fd()).unwrap().port_id, 99);
        let v: i32 = get_option(s.as_fd(), SOL_NETLINK, NETLINK_EXT_ACK).unwrap();
        assert_eq!(v, 1);
        // The same port cannot be taken twice: the error names it.
        let err = open(&d).unwrap_err().to_string();
        assert!(err.contains(&format!("port id {port} is taken")), "{err}");
    }
}
