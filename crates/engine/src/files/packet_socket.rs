//! Packet sockets (`AF_PACKET`, SOCK_RAW and SOCK_DGRAM): the protocol they receive, the
//! interface they are bound to, their packet options, memberships, fanout group and socket
//! filter.
//!
//! Dump, on the dumper's duplicate of the fd (the same description, which goes on working
//! for the process): getsockname gives the interface index and protocol (the interface's name
//! is recorded too), getsockopt the SOL_PACKET options (PACKET_VERSION, RESERVE, AUXDATA,
//! ORIGDEV, VNET_HDR_SZ, TIMESTAMP, LOSS, QDISC_BYPASS, IGNORE_OUTGOING, TX_HAS_OFF, FANOUT)
//! and the SOL_SOCKET part ([`super::sol_socket`]: buffer sizes, the classic BPF filter and
//! SO_LOCK_FILTER); sock_diag (`packet_diag`) the PACKET_ADD_MEMBERSHIP memberships (with
//! their counts), PACKET_COPY_THRESH and whether rings are set up.
//!
//! Refused by name: PACKET_MMAP rings (PACKET_RX_RING, PACKET_TX_RING; their mappings are
//! refused by the mappings' classification too, which comes first). A ring could be set up
//! again with the parameters sock_diag gives and mapped at the same address, but the kernel's
//! position in it (the frame it fills or sends next) starts again at 0 and cannot be set from
//! userspace, while the program's own index into the ring, in its memory, is wherever it
//! was: a receiver would wait on a frame the kernel fills last, a sender would queue frames
//! the kernel does not look at. Other refusals: fanout groups steered by a BPF program
//! (PACKET_FANOUT_CBPF, PACKET_FANOUT_EBPF), an eBPF socket filter, the obsolete SOCK_PACKET
//! type, and sockets of another network namespace.
//!
//! Packets queued unread at dump time are not kept (reading them would take them from the
//! running process): they are dropped, as a busy interface drops packets when the receive
//! buffer is full, and so are the packets that arrive between the dump and the restore. The
//! PACKET_STATISTICS counters start again from zero.
//!
//! Restore, in the restorer: socket(AF_PACKET, type, 0) (receiving nothing yet), the packet
//! options, the SOL_SOCKET options and filter, then bind to the interface (found again by its
//! name; an interface of that name must exist, or the restore fails naming it) and protocol,
//! which starts the reception; then the memberships (as many times as they were added) and
//! the fanout group (joined by its id, without PACKET_FANOUT_FLAG_UNIQUEID, which would
//! choose a new one; the group's largest number of members, set with `struct fanout_args`,
//! cannot be read back and is the default, 256, when the restore makes the group anew).

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, PacketMembership, PacketOptions, ProcessImage};
use stasis_sys::packet::{self, Membership, PacketAddr, SOL_PACKET};
use stasis_sys::socket::{get_option, set_option};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

const PACKET_COPY_THRESH: i32 = 7;
const PACKET_AUXDATA: i32 = 8;
const PACKET_ORIGDEV: i32 = 9;
const PACKET_VERSION: i32 = 10;
const PACKET_RESERVE: i32 = 12;
const PACKET_LOSS: i32 = 14;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_TIMESTAMP: i32 = 17;
const PACKET_FANOUT: i32 = 18;
const PACKET_TX_HAS_OFF: i32 = 19;
const PACKET_QDISC_BYPASS: i32 = 20;
const PACKET_IGNORE_OUTGOING: i32 = 23;
const PACKET_VNET_HDR_SZ: i32 = 24;
/// The virtio-net header PACKET_VNET_HDR gives (struct virtio_net_hdr).
const VNET_HDR_LEN: u32 = 10;
/// Fanout modes that need no program: HASH, LB, CPU, ROLLOVER, RND, QM.
const FANOUT_PLAIN_MAX: u32 = 5;
const FANOUT_CBPF: u32 = 6;
const FANOUT_EBPF: u32 = 7;
const FANOUT_FLAG_UNIQUEID: u32 = 0x2000;
/// The fanout flags the kernel knows (ROLLOVER, UNIQUEID, IGNORE_OUTGOING, DEFRAG).
const FANOUT_FLAGS: u32 = 0x1000 | 0x2000 | 0x4000 | 0x8000;
/// Most memberships a record may hold, and most times one may have been added.
const MAX_MEMBERSHIPS: usize = 64;
const MAX_MEMBERSHIP_COUNT: u32 = 1024;
/// Longest virtio-net header (the kernel accepts a few sizes up to this).
const MAX_VNET_HDR: u32 = 64;

/// The packet socket kind.
#[derive(Default)]
pub struct PacketSockets;

impl FileOps for PacketSockets {
    fn name(&self) -> &'static str {
        "packet socket"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::PacketSocket { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::Socket && fd.socket.is_some_and(|k| k.domain == libc::AF_PACKET)
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
        let FileKind::PacketSocket {
            ty,
            ifindex,
            ifname,
            options,
            memberships,
            fanout,
            common,
            ..
        } = &desc.kind
        else {
            return Err("not a packet socket".into());
        };
        if *ty != libc::SOCK_RAW && *ty != libc::SOCK_DGRAM {
            return Err(format!("socket type {ty} (SOCK_RAW or SOCK_DGRAM)"));
        }
        check_interface(*ifindex, ifname)?;
        if options.version > 2 {
            return Err(format!("PACKET_VERSION {}", options.version));
        }
        if options.reserve > i32::MAX as u32 || options.copy_thresh > i32::MAX as u32 {
            return Err("PACKET_RESERVE or PACKET_COPY_THRESH above INT_MAX".into());
        }
        if options.vnet_hdr_sz > MAX_VNET_HDR {
            return Err(format!(
                "virtio-net header of {} bytes",
                options.vnet_hdr_sz
            ));
        }
        if memberships.len() > MAX_MEMBERSHIPS {
            return Err(format!(
                "{} memberships (at most {MAX_MEMBERSHIPS})",
                memberships.len()
            ));
        }
        for m in memberships {
            if m.ifindex == 0 {
                return Err("a membership without an interface".into());
            }
            check_interface(m.ifindex, &m.ifname)?;
            if m.addr.len() > 32 || m.ty > 3 || !(1..=MAX_MEMBERSHIP_COUNT).contains(&m.count) {
                return Err(format!(
                    "membership of type {} with a {}-byte address added {} times",
                    m.ty,
                    m.addr.len(),
                    m.count
                ));
            }
        }
        if let Some(f) = fanout {
            check_fanout(*f)?;
        }
        super::sol_socket::validate(common)
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        open(desc)
    }
}

/// An interface of a record: index 0 and no name (every interface), or a positive index and
/// a name as the kernel allows it.
fn check_interface(ifindex: i32, name: &str) -> Result<(), String> {
    let ok = match ifindex {
        0 => name.is_empty(),
        i if i > 0 => {
            !name.is_empty()
                && name.len() < libc::IF_NAMESIZE
                && name != "."
                && name != ".."
                && !name
                    .bytes()
                    .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("bad interface {ifindex} {name:?}"))
    }
}

/// A PACKET_FANOUT value (id | (type | flags) << 16) that can be joined again.
fn check_fanout(v: u32) -> Result<(), String> {
    let mode = (v >> 16) & 0xff;
    let flags = (v >> 16) & 0xff00;
    if mode > FANOUT_PLAIN_MAX || flags & !FANOUT_FLAGS != 0 {
        return Err(format!("fanout {v:#x} of mode {mode} and flags {flags:#x}"));
    }
    Ok(())
}

/// Describes packet socket `fd`.
fn dump(fd: &Probe<'_>) -> Result<FileKind, Error> {
    let Some(kind) = fd.socket else {
        return Err(fd.unsupported("a socket of unknown domain"));
    };
    let what = format!("fd {} of pid {}", fd.fd, fd.pid);
    if kind.ty != libc::SOCK_RAW && kind.ty != libc::SOCK_DGRAM {
        return Err(fd.unsupported(&format!(
            "a packet socket of type {} (only SOCK_RAW and SOCK_DGRAM are dumped)",
            kind.ty
        )));
    }
    let sock = fd.file()?.as_fd();
    let io = |op: &str| {
        let w = format!("{op} on {what}");
        move |e| Error::io(w, e)
    };
    super::sol_socket::check_namespace(fd, "a packet socket")?;
    let ino = fd.metadata()?.ino();
    let diag = packet::packet_diag(ino)
        .map_err(io("sock_diag (packet)"))?
        .ok_or_else(|| {
            fd.unsupported(
                "a packet socket that sock_diag does not list (in another network namespace?)",
            )
        })?;
    for (ring, name) in [
        (diag.rx_ring, "PACKET_RX_RING"),
        (diag.tx_ring, "PACKET_TX_RING"),
    ] {
        if let Some(r) = ring {
            return Err(fd.unsupported(&format!(
                "a packet socket with a PACKET_MMAP ring ({name}: {} frames of {} bytes), which stasis cannot restore: a new ring starts at frame 0 and the kernel's position in the old one cannot be set, so the program would wait on the wrong frame",
                r.frame_nr, r.frame_size
            )));
        }
    }
    // An option this kernel does not know is off.
    let int = |name: i32, label: &str| -> Result<i32, Error> {
        match get_option::<i32>(sock, SOL_PACKET, name) {
            Ok(v) => Ok(v),
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(0),
            Err(e) => Err(Error::io(format!("getsockopt {label} on {what}"), e)),
        }
    };
    let fanout = match get_option::<u32>(sock, SOL_PACKET, PACKET_FANOUT) {
        Ok(0) => None,
        Ok(v) => Some(v),
        Err(e) => return Err(io("getsockopt PACKET_FANOUT")(e)),
    };
    if let Some(v) = fanout {
        let mode = (v >> 16) & 0xff;
        if mode == FANOUT_CBPF || mode == FANOUT_EBPF {
            return Err(fd.unsupported(
                "a packet socket in a fanout group steered by a BPF program (PACKET_FANOUT_CBPF/EBPF), which stasis cannot dump yet",
            ));
        }
        check_fanout(v).map_err(|e| fd.unsupported(&format!("a packet socket with {e}")))?;
    }
    let vnet_hdr_sz = match get_option::<i32>(sock, SOL_PACKET, PACKET_VNET_HDR_SZ) {
        Ok(v) => v as u32,
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
            if int(PACKET_VNET_HDR, "PACKET_VNET_HDR")? != 0 {
                VNET_HDR_LEN
            } else {
                0
            }
        }
        Err(e) => return Err(io("getsockopt PACKET_VNET_HDR_SZ")(e)),
    };
    let options = PacketOptions {
        version: int(PACKET_VERSION, "PACKET_VERSION")? as u32,
        reserve: int(PACKET_RESERVE, "PACKET_RESERVE")? as u32,
        auxdata: int(PACKET_AUXDATA, "PACKET_AUXDATA")? != 0,
        origdev: int(PACKET_ORIGDEV, "PACKET_ORIGDEV")? != 0,
        vnet_hdr_sz,
        timestamp: int(PACKET_TIMESTAMP, "PACKET_TIMESTAMP")? as u32,
        loss: int(PACKET_LOSS, "PACKET_LOSS")? != 0,
        qdisc_bypass: int(PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS")? != 0,
        ignore_outgoing: int(PACKET_IGNORE_OUTGOING, "PACKET_IGNORE_OUTGOING")? != 0,
        tx_has_off: int(PACKET_TX_HAS_OFF, "PACKET_TX_HAS_OFF")? != 0,
        copy_thresh: diag.copy_thresh,
    };
    let addr = packet::local_addr(sock).map_err(io("getsockname"))?;
    let name_of = |index: i32| -> Result<String, Error> {
        packet::interface_name(index).map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) | Some(libc::ENODEV) => fd.unsupported(&format!(
                "a packet socket bound to interface index {index}, which no longer exists"
            )),
            _ => Error::io(format!("the name of interface {index}"), e),
        })
    };
    let ifname = match addr.ifindex {
        0 => String::new(),
        i => name_of(i)?,
    };
    let mut memberships = Vec::new();
    for m in &diag.memberships {
        memberships.push(PacketMembership {
            ifindex: m.ifindex,
            ifname: name_of(m.ifindex)?,
            ty: m.ty,
            count: m.count,
            addr: m.addr.clone(),
        });
    }
    if memberships.len() > MAX_MEMBERSHIPS
        || memberships.iter().any(|m| m.count > MAX_MEMBERSHIP_COUNT)
    {
        return Err(fd.unsupported(&format!(
            "a packet socket with more than {MAX_MEMBERSHIPS} memberships, or one added more than {MAX_MEMBERSHIP_COUNT} times"
        )));
    }
    Ok(FileKind::PacketSocket {
        ty: kind.ty,
        protocol: addr.protocol,
        ifindex: addr.ifindex,
        ifname,
        options,
        memberships,
        fanout,
        common: super::sol_socket::dump(sock, &what)?,
    })
}

/// The index interface `name` (index `index` at dump time) has here; an interface of that
/// name must exist.
fn interface_here(index: i32, name: &str, what: &str) -> Result<i32, Error> {
    match packet::interface_index(name) {
        Ok(Some(i)) => {
            if i != index {
                tracing::info!("{what}: interface {name} has index {i} now ({index} at dump time)");
            }
            Ok(i)
        }
        Ok(None) => Err(Error::Changed {
            what: format!(
                "{what}: there is no network interface {name} (index {index} at dump time)"
            ),
        }),
        Err(e) => Err(Error::io(format!("the index of interface {name:?}"), e)),
    }
}

/// Creates the packet socket of description `f` in the restorer.
fn open(f: &FileDesc) -> Result<OwnedFd, Error> {
    let FileKind::PacketSocket {
        ty,
        protocol,
        ifindex,
        ifname,
        options,
        memberships,
        fanout,
        common,
    } = &f.kind
    else {
        return Err(Error::Invalid(format!(
            "description {} is not a packet socket",
            f.id
        )));
    };
    let what = format!("the packet socket of description {}", f.id);
    let s = packet::socket(*ty).map_err(|e| Error::io(format!("create {what}"), e))?;
    set_options(s.as_fd(), options, &what)?;
    super::sol_socket::apply(s.as_fd(), common, &what)?;
    if *protocol != 0 || *ifindex != 0 {
        let index = match ifindex {
            0 => 0,
            i => interface_here(*i, ifname, &what)?,
        };
        let addr = PacketAddr {
            ifindex: index,
            protocol: *protocol,
        };
        packet::bind(s.as_fd(), addr).map_err(|e| {
            Error::io(
                format!("bind {what} to {ifname:?} protocol {protocol:#x}"),
                e,
            )
        })?;
    }
    for m in memberships {
        let index = interface_here(m.ifindex, &m.ifname, &what)?;
        let mreq = Membership {
            ifindex: index,
            ty: m.ty,
            count: 1,
            addr: m.addr.clone(),
        };
        for _ in 0..m.count.min(MAX_MEMBERSHIP_COUNT) {
            packet::add_membership(s.as_fd(), &mreq).map_err(|e| {
                Error::io(
                    format!(
                        "PACKET_ADD_MEMBERSHIP type {} on {} for {what}",
                        m.ty, m.ifname
                    ),
                    e,
                )
            })?;
        }
    }
    if let Some(v) = fanout {
        let v = v & !(FANOUT_FLAG_UNIQUEID << 16);
        set_option(s.as_fd(), SOL_PACKET, PACKET_FANOUT, &v).map_err(|e| {
            Error::io(
                format!("join fanout group {:#x} with {what}", v & 0xffff),
                e,
            )
        })?;
    }
    Ok(s)
}

fn set_options(s: BorrowedFd<'_>, o: &PacketOptions, what: &str) -> Result<(), Error> {
    let set = |name: i32, label: &str, v: i32| -> Result<(), Error> {
        set_option(s, SOL_PACKET, name, &v)
            .map_err(|e| Error::io(format!("setsockopt {label} {v} on {what}"), e))
    };
    if o.version != 0 {
        set(PACKET_VERSION, "PACKET_VERSION", o.version as i32)?;
    }
    if o.reserve != 0 {
        set(PACKET_RESERVE, "PACKET_RESERVE", o.reserve as i32)?;
    }
    if o.vnet_hdr_sz != 0 {
        match set_option(s, SOL_PACKET, PACKET_VNET_HDR_SZ, &(o.vnet_hdr_sz as i32)) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ENOPROTOOPT) && o.vnet_hdr_sz == VNET_HDR_LEN =>
            {
                set(PACKET_VNET_HDR, "PACKET_VNET_HDR", 1)?
            }
            Err(e) => {
                return Err(Error::io(
                    format!("setsockopt PACKET_VNET_HDR_SZ {} on {what}", o.vnet_hdr_sz),
                    e,
                ))
            }
        }
    }
    for (on, name, label) in [
        (o.auxdata, PACKET_AUXDATA, "PACKET_AUXDATA"),
        (o.origdev, PACKET_ORIGDEV, "PACKET_ORIGDEV"),
        (o.loss, PACKET_LOSS, "PACKET_LOSS"),
        (o.qdisc_bypass, PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS"),
        (
            o.ignore_outgoing,
            PACKET_IGNORE_OUTGOING,
            "PACKET_IGNORE_OUTGOING",
        ),
        (o.tx_has_off, PACKET_TX_HAS_OFF, "PACKET_TX_HAS_OFF"),
    ] {
        if on {
            set(name, label, 1)?;
        }
    }
    if o.timestamp != 0 {
        set(PACKET_TIMESTAMP, "PACKET_TIMESTAMP", o.timestamp as i32)?;
    }
    if o.copy_thresh != 0 {
        set(
            PACKET_COPY_THRESH,
            "PACKET_COPY_THRESH",
            o.copy_thresh as i32,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_image::SocketCommon;

    fn desc() -> FileDesc {
        FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::PacketSocket {
                ty: libc::SOCK_DGRAM,
                protocol: 0x88b5,
                ifindex: 1,
                ifname: "lo".into(),
                options: PacketOptions {
                    version: 1,
                    auxdata: true,
                    origdev: true,
                    timestamp: 1,
                    ..Default::default()
                },
                memberships: vec![PacketMembership {
                    ifindex: 1,
                    ifname: "lo".into(),
                    ty: libc::PACKET_MR_MULTICAST as u16,
                    count: 2,
                    addr: vec![0x33, 0x33, 0, 0, 0, 0x98],
                }],
                fanout: None,
                common: SocketCommon::default(),
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    fn edit(f: impl FnOnce(&mut FileKind)) -> FileDesc {
        let mut d = desc();
        f(&mut d.kind);
        d
    }

    #[test]
    fn validate() {
        let p = sample_process();
        PacketSockets.validate(&desc(), &p).unwrap();
        let bad = [
            edit(|k| {
                if let FileKind::PacketSocket { ty, .. } = k {
                    *ty = 10
                }
            }),
            edit(|k| {
                if let FileKind::PacketSocket { ifname, .. } = k {
                    *ifname = "../etc".into()
                }
            }),
            edit(|k| {
                if let FileKind::PacketSocket { ifname, .. } = k {
                    *ifname = "x".repeat(16)
                }
            }),
            edit(|k| {
                if let FileKind::PacketSocket { memberships, .. } = k {
                    memberships[0].count = MAX_MEMBERSHIP_COUNT + 1
                }
            }),
            edit(|k| {
                if let FileKind::PacketSocket { memberships, .. } = k {
                    memberships[0].addr = vec![0; 33]
                }
            }),
            edit(|k| {
                if let FileKind::PacketSocket { fanout, .. } = k {
                    *fanout = Some(FANOUT_EBPF << 16 | 5)
                }
            }),
            edit(|k| {
                if let FileKind::PacketSocket { options, .. } = k {
                    options.version = 3
                }
            }),
        ];
        for d in bad {
            assert!(PacketSockets.validate(&d, &p).is_err(), "{:?}", d.kind);
        }
    }

    #[test]
    fn restored_bound_with_options_and_memberships() {
        let s = match open(&desc()) {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("create"), "{msg}");
                eprintln!("notice: {msg}; skipped (needs CAP_NET_RAW)");
                return;
            }
        };
        let lo = packet::interface_index("lo").unwrap().unwrap();
        assert_eq!(
            packet::local_addr(s.as_fd()).unwrap(),
            PacketAddr {
                ifindex: lo,
                protocol: 0x88b5
            }
        );
        let v: i32 = get_option(s.as_fd(), SOL_PACKET, PACKET_AUXDATA).unwrap();
        assert_eq!(v, 1);
        let ino = std::fs::File::from(s.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino();
        let d = packet::packet_diag(ino).unwrap().unwrap();
        assert_eq!(d.memberships.len(), 1);
        assert_eq!(d.memberships[0].count, 2);
        assert_eq!(d.version, 1);
        // An interface that does not exist here fails the restore, naming it.
        let gone = edit(|k| {
            if let FileKind::PacketSocket { ifname, .. } = k {
                *ifname = "nosuchif9".into()
            }
        });
        let err = open(&gone).unwrap_err().to_string();
        assert!(err.contains("no network interface nosuchif9"), "{err}");
    }
}
