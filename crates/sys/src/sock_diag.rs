//! sock_diag(7) queries for unix sockets over NETLINK_SOCK_DIAG (the socket calls are
//! rustix's; rustix has nothing for the sock_diag messages, which are built and parsed here):
//! a socket's peer ([`unix_peer_inode`]), and everything the unix dump needs ([`unix_diag`]).

use rustix::net::{netlink, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_ICONS: u32 = 0x8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// The inode of the socket connected to the unix socket with inode `ino`, or `None` when it
/// has no peer. The socket must belong to the caller's network namespace (see
/// [`unix_peer_inode_in`]).
pub fn unix_peer_inode(ino: u64) -> io::Result<Option<u64>> {
    query_peer(diag_socket()?, ino)
}

/// [`unix_peer_inode`] for a socket of network namespace `netns` (a descriptor of it, such as
/// [`crate::socket::network_namespace_of`] gives): sock_diag only sees the sockets of the
/// namespace its netlink socket was made in. The calling thread enters `netns` just long enough
/// to make that netlink socket, then goes back to its own namespace (CAP_SYS_ADMIN needed).
pub fn unix_peer_inode_in(netns: BorrowedFd<'_>, ino: u64) -> io::Result<Option<u64>> {
    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
    let ours = std::fs::File::open("/proc/thread-self/ns/net")?;
    move_into_link_name_space(netns, Some(LinkNameSpaceType::Network))?;
    let sock = diag_socket();
    move_into_link_name_space(ours.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| io::Error::other(format!("returning to the own network namespace: {e}")))?;
    query_peer(sock?, ino)
}

/// A NETLINK_SOCK_DIAG socket, in the calling thread's network namespace.
fn diag_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?)
}

fn query_peer(sock: OwnedFd, ino: u64) -> io::Result<Option<u64>> {
    Ok(query(sock, ino, UDIAG_SHOW_PEER)?.peer)
}

/// What sock_diag tells about one unix socket (the attributes asked for; see [`unix_diag`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    /// The socket's inode.
    pub ino: u64,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub ty: u8,
    /// The kernel's state: [`UNIX_ESTABLISHED`] (connected, whether or not the peer is still
    /// alive), [`UNIX_CLOSE`] (unconnected) or [`UNIX_LISTEN`].
    pub state: u8,
    /// UNIX_DIAG_NAME: the bound address's `sun_path` bytes as the kernel keeps them (an
    /// abstract name starts with a NUL byte; a path may end with one); `None` when unbound. A
    /// socket accepted from a listener shows the listener's name.
    pub name: Option<Vec<u8>>,
    /// UNIX_DIAG_VFS: the inode of the socket file a path-bound socket made, and the device of
    /// its filesystem in the kernel's encoding (major << 20 | minor).
    pub vfs: Option<(u32, u64)>,
    /// UNIX_DIAG_PEER: `None` when the socket has no peer; `Some(0)` when it has one without an
    /// inode (a peer that was closed, or a connection not yet accepted).
    pub peer: Option<u64>,
    /// UNIX_DIAG_ICONS, for a listener: the inodes of the client ends of the connections
    /// waiting to be accepted, oldest first (0: a client that was closed).
    pub icons: Vec<u64>,
    /// UNIX_DIAG_RQLEN: for a listener, (connections waiting, backlog); else (bytes queued
    /// to be read (stream) or the length of the first datagram, bytes sent and not yet read by
    /// the peer).
    pub rqlen: Option<(u32, u32)>,
    /// UNIX_DIAG_SHUTDOWN: `RCV_SHUTDOWN` (1) and `SEND_SHUTDOWN` (2) bits.
    pub shutdown: u8,
}

/// The kernel's state of a connected unix socket (TCP_ESTABLISHED).
pub const UNIX_ESTABLISHED: u8 = 1;
/// The kernel's state of an unconnected unix socket (TCP_CLOSE).
pub const UNIX_CLOSE: u8 = 7;
/// The kernel's state of a listening unix socket (TCP_LISTEN).
pub const UNIX_LISTEN: u8 = 10;

/// Everything sock_diag tells about the unix socket with inode `ino` (of the caller's network
/// namespace): name, file, peer, pending connections, queue lengths and shutdown state.
pub fn unix_diag(ino: u64) -> io::Result<UnixDiag> {
    query(
        diag_socket()?,
        ino,
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN,
    )
}

fn query(sock: OwnedFd, ino: u64, show: u32) -> io::Result<UnixDiag> {
    let ino32 = u32::try_from(ino).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // nlmsghdr (16 bytes) + unix_diag_req (24 bytes).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&ino32.to_ne_bytes());
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    rustix::net::send(&sock, &req, SendFlags::empty())?;
    // A listener with a long backlog has a long ICONS attribute.
    let mut buf = vec![0u8; 1 << 16];
    let (n, _) = rustix::net::recv(&sock, &mut buf, RecvFlags::empty())?;
    parse(&buf[..n.min(buf.len())])
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

#[cfg(test)]
fn parse_peer(b: &[u8]) -> io::Result<Option<u64>> {
    Ok(parse(b)?.peer)
}

/// Parses one sock_diag answer: an error, or a unix_diag_msg with attributes.
fn parse(b: &[u8]) -> io::Result<UnixDiag> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag answer");
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    if len > b.len() || len < 16 {
        return Err(bad());
    }
    if kind == NLMSG_ERROR {
        let errno = u32_at(b, 16).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    // unix_diag_msg: family, type, state, pad (u8 each), inode (u32), cookie (2 x u32).
    let mut d = UnixDiag {
        ty: *b.get(17).ok_or_else(bad)?,
        state: *b.get(18).ok_or_else(bad)?,
        ino: u32_at(b, 20).ok_or_else(bad)? as u64,
        ..UnixDiag::default()
    };
    // Attributes follow the 16-byte message, 4-byte aligned.
    let mut off = 32;
    while off + 4 <= len {
        let alen = u16_at(b, off).ok_or_else(bad)? as usize;
        let atype = u16_at(b, off + 2).ok_or_else(bad)?;
        if alen < 4 || off + alen > len {
            return Err(bad());
        }
        let payload = &b[off + 4..off + alen];
        match atype {
            UNIX_DIAG_NAME => d.name = Some(payload.to_vec()),
            UNIX_DIAG_VFS => {
                let ino = u32_at(payload, 0).ok_or_else(bad)?;
                let dev = u32_at(payload, 4).ok_or_else(bad)?;
                d.vfs = Some((dev, ino as u64));
            }
            UNIX_DIAG_PEER => d.peer = Some(u32_at(payload, 0).ok_or_else(bad)? as u64),
            UNIX_DIAG_ICONS => {
                d.icons = payload
                    .chunks_exact(4)
                    .map(|c| u32_at(c, 0).unwrap_or(0) as u64)
                    .collect();
            }
            UNIX_DIAG_RQLEN => {
                d.rqlen = Some((
                    u32_at(payload, 0).ok_or_else(bad)?,
                    u32_at(payload, 4).ok_or_else(bad)?,
                ));
            }
            UNIX_DIAG_SHUTDOWN => d.shutdown = *payload.first().ok_or_else(bad)?,
            _ => {}
        }
        off += (alen + 3) & !3;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn finds_the_peer_of_a_socketpair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ino = |s: &std::os::unix::net::UnixStream| {
            let f = std::fs::File::from(OwnedFd::from(s.try_clone().unwrap()));
            f.metadata().unwrap().ino()
        };
        assert_eq!(unix_peer_inode(ino(&a)).unwrap(), Some(ino(&b)));
        // Through the namespace of the socket itself (the same one here); needs root.
        if let Ok(ns) = crate::socket::network_namespace_of(a.as_fd()) {
            assert_eq!(
                unix_peer_inode_in(ns.as_fd(), ino(&a)).unwrap(),
                Some(ino(&b))
            );
        }
        assert!(parse_peer(&[1, 2, 3]).is_err());
    }
}
