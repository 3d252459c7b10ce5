//! Packet sockets (`AF_PACKET`) as stasis dumps and restores them: their address
//! (`sockaddr_ll`: interface index and protocol), sock_diag's view of them (`packet_diag`:
//! options, multicast memberships, rings, fanout), memberships, interface names and indexes,
//! and classic BPF socket filters (`SO_GET_FILTER`, `SO_ATTACH_FILTER`), which netlink
//! sockets have too.

use crate::cvt_int;
use crate::netlink::{diag_dump, u16_at, u32_at};
use std::ffi::{CStr, CString};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SOL_PACKET`.
pub const SOL_PACKET: i32 = 263;

/// A new packet socket of `ty` (`SOCK_RAW`, `SOCK_DGRAM`) with protocol 0 (receiving nothing
/// until bound), close-on-exec.
pub fn socket(ty: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor.
    let fd = cvt_int(unsafe { libc::socket(libc::AF_PACKET, ty | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the descriptor was just created and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The address of a packet socket: the interface it is bound to (0: every interface) and the
/// protocol it receives (an ethertype, host byte order; 0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketAddr {
    pub ifindex: i32,
    pub protocol: u16,
}

/// getsockname(2) of a packet socket.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<PacketAddr> {
    // SAFETY: sockaddr_ll is plain old data for which all-zero bytes are a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `sa`, which we own.
    cvt_int(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_ll).cast::<libc::sockaddr>(),
            &mut len,
        )
    })?;
    if sa.sll_family != libc::AF_PACKET as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a packet socket",
        ));
    }
    Ok(PacketAddr {
        ifindex: sa.sll_ifindex,
        protocol: u16::from_be(sa.sll_protocol),
    })
}

/// bind(2) of a packet socket to an interface and protocol.
pub fn bind(fd: BorrowedFd<'_>, addr: PacketAddr) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data for which all-zero bytes are a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = addr.protocol.to_be();
    sa.sll_ifindex = addr.ifindex;
    // SAFETY: bind reads `size_of::<sockaddr_ll>()` bytes from `sa`, which we own.
    cvt_int(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The name of network interface `index` (in the caller's network namespace).
pub fn interface_name(index: i32) -> io::Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes (NUL included) into `buf`.
    let p = unsafe { libc::if_indextoname(index as libc::c_uint, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// The index of network interface `name`, `None` when there is none of that name.
pub fn interface_index(name: &str) -> io::Result<Option<i32>> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(i as i32))
}

/// One membership of a packet socket (`packet_mreq`, as `PACKET_DIAG_MCLIST` lists it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub ifindex: i32,
    /// `PACKET_MR_MULTICAST`, `PACKET_MR_PROMISC`, `PACKET_MR_ALLMULTI`, `PACKET_MR_UNICAST`.
    pub ty: u16,
    /// How many times it was added.
    pub count: u32,
    /// The address (at most 32 bytes).
    pub addr: Vec<u8>,
}

/// `PACKET_ADD_MEMBERSHIP` (`packet_mreq_max`: an address of up to 32 bytes).
pub fn add_membership(fd: BorrowedFd<'_>, m: &Membership) -> io::Result<()> {
    if m.addr.len() > 32 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&m.ifindex.to_ne_bytes());
    v.extend_from_slice(&m.ty.to_ne_bytes());
    v.extend_from_slice(&(m.addr.len() as u16).to_ne_bytes());
    let mut addr = [0u8; 32];
    addr[..m.addr.len()].copy_from_slice(&m.addr);
    v.extend_from_slice(&addr);
    crate::socket::set_option_bytes(fd, SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &v)
}

/// One ring of a packet socket (`packet_diag_ring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    pub block_size: u32,
    pub block_nr: u32,
    pub frame_size: u32,
    pub frame_nr: u32,
}

/// What sock_diag tells of one packet socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketDiag {
    /// The protocol it receives (host byte order).
    pub protocol: u16,
    pub ifindex: i32,
    pub version: u32,
    pub reserve: u32,
    pub copy_thresh: u32,
    pub tstamp: u32,
    /// `PDI_*`.
    pub flags: u32,
    pub memberships: Vec<Membership>,
    pub rx_ring: Option<Ring>,
    pub tx_ring: Option<Ring>,
    /// `PACKET_DIAG_FANOUT`: id | type << 16 | flags << 16.
    pub fanout: Option<u32>,
}

const PACKET_SHOW_INFO: u32 = 0x1;
const PACKET_SHOW_MCLIST: u32 = 0x2;
const PACKET_SHOW_RING_CFG: u32 = 0x4;
const PACKET_SHOW_FANOUT: u32 = 0x8;
const PACKET_DIAG_INFO: u16 = 0;
const PACKET_DIAG_MCLIST: u16 = 1;
const PACKET_DIAG_RX_RING: u16 = 2;
const PACKET_DIAG_TX_RING: u16 = 3;
const PACKET_DIAG_FANOUT: u16 = 4;
/// `packet_diag_mclist`: index, count (u32), type, alen (u16), addr[32].
const MCLIST_LEN: usize = 44;

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed packet_diag answer")
}

/// sock_diag's view of the packet socket with inode `ino`, in the caller's network namespace
/// (`None`: not listed).
pub fn packet_diag(ino: u64) -> io::Result<Option<PacketDiag>> {
    let mut req = Vec::with_capacity(20);
    req.push(libc::AF_PACKET as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes()); // inode: not a filter here
    let show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    // packet_diag_msg: family, type (u8), num (u16, host order), ino, cookie[2] (u32).
    for m in diag_dump(&req, 16)? {
        if u32_at(&m.msg, 4).map(u64::from) != Some(ino) {
            continue;
        }
        let info = m.attr(PACKET_DIAG_INFO).ok_or_else(bad)?;
        let f = |i: usize| u32_at(info, i * 4).ok_or_else(bad);
        let ring = |t: u16| -> io::Result<Option<Ring>> {
            let Some(r) = m.attr(t) else {
                return Ok(None);
            };
            let g = |i: usize| u32_at(r, i * 4).ok_or_else(bad);
            Ok(Some(Ring {
                block_size: g(0)?,
                block_nr: g(1)?,
                frame_size: g(2)?,
                frame_nr: g(3)?,
            }))
        };
        let mut memberships = Vec::new();
        if let Some(list) = m.attr(PACKET_DIAG_MCLIST) {
            for e in list.chunks(MCLIST_LEN) {
                if e.len() != MCLIST_LEN {
                    return Err(bad());
                }
                let alen = (u16_at(e, 10).ok_or_else(bad)? as usize).min(32);
                memberships.push(Membership {
                    ifindex: u32_at(e, 0).ok_or_else(bad)? as i32,
                    count: u32_at(e, 4).ok_or_else(bad)?,
                    ty: u16_at(e, 8).ok_or_else(bad)?,
                    addr: e[12..12 + alen].to_vec(),
                });
            }
        }
        return Ok(Some(PacketDiag {
            protocol: u16_at(&m.msg, 2).ok_or_else(bad)?,
            ifindex: f(0)? as i32,
            version: f(1)?,
            reserve: f(2)?,
            copy_thresh: f(3)?,
            tstamp: f(4)?,
            flags: f(5)?,
            memberships,
            rx_ring: ring(PACKET_DIAG_RX_RING)?,
            tx_ring: ring(PACKET_DIAG_TX_RING)?,
            fanout: m.attr(PACKET_DIAG_FANOUT).and_then(|a| u32_at(a, 0)),
        }));
    }
    Ok(None)
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Most instructions of a classic BPF program (`BPF_MAXINSNS`).
pub const BPF_MAXINSNS: usize = 4096;

/// The socket filter attached to `fd` (`SO_GET_FILTER`): `Ok(None)` without one; `EACCES`
/// for an eBPF program (`SO_ATTACH_BPF`), which has no classic form to read back.
pub fn socket_filter(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<BpfInsn>>> {
    // The length is counted in instructions: 0 asks for their number.
    let mut len: libc::socklen_t = 0;
    // SAFETY: with a length of 0 the kernel writes nothing to the buffer, only the count.
    cvt_int(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::null_mut(),
            &mut len,
        )
    })?;
    let n = len as usize;
    if n == 0 {
        return Ok(None);
    }
    if n > BPF_MAXINSNS {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    let mut raw = vec![0u8; n * 8];
    let mut len = n as libc::socklen_t;
    // SAFETY: the kernel writes `len` instructions of 8 bytes into `raw`, which has room for
    // `n` of them (it fails with EINVAL when the filter grew meanwhile).
    cvt_int(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            raw.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    })?;
    let n = (len as usize).min(n);
    Ok(Some(
        raw.chunks(8)
            .take(n)
            .map(|c| BpfInsn {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    ))
}

/// `SO_ATTACH_FILTER` of a classic BPF program.
pub fn attach_filter(fd: BorrowedFd<'_>, insns: &[BpfInsn]) -> io::Result<()> {
    let filter: Vec<libc::sock_filter> = insns
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt reads the sock_fprog and the `len` instructions it points to, which
    // `filter` holds for the duration of the call.
    cvt_int(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast::<libc::c_void>(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn bound_to_lo_with_a_filter_and_a_membership() {
        let s = match socket(libc::SOCK_DGRAM) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("notice: packet sockets need CAP_NET_RAW; skipped");
                return;
            }
            Err(e) => panic!("socket: {e}"),
        };
        let lo = interface_index("lo").unwrap().expect("lo");
        assert_eq!(interface_name(lo).unwrap(), "lo");
        assert_eq!(interface_index("no-such-if0").unwrap(), None);
        let accept_all = [BpfInsn {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0xffff,
        }];
        assert_eq!(socket_filter(s.as_fd()).unwrap(), None);
        attach_filter(s.as_fd(), &accept_all).unwrap();
        assert_eq!(socket_filter(s.as_fd()).unwrap().unwrap(), accept_all);
        bind(
            s.as_fd(),
            PacketAddr {
                ifindex: lo,
                protocol: 0x88b5,
            },
        )
        .unwrap();
        assert_eq!(
            local_addr(s.as_fd()).unwrap(),
            PacketAddr {
                ifindex: lo,
                protocol: 0x88b5
            }
        );
        let m = Membership {
            ifindex: lo,
            ty: libc::PACKET_MR_MULTICAST as u16,
            count: 1,
            addr: vec![0x33, 0x33, 0, 0, 0, 0x99],
        };
        add_membership(s.as_fd(), &m).unwrap();
        let ino = std::fs::File::from(s.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino();
        let d = packet_diag(ino).unwrap().expect("listed");
        assert_eq!((d.ifindex, d.protocol), (lo, 0x88b5));
        assert_eq!(d.memberships, vec![m]);
        assert_eq!(d.rx_ring, None);
    }
}
