//! sock_diag(7) queries for unix sockets over NETLINK_SOCK_DIAG (the socket calls are
//! rustix's; rustix has nothing for the sock_diag messages, which are built and parsed here).

use rustix::net::{netlink, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;

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
    req.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    rustix::net::send(&sock, &req, SendFlags::empty())?;
    let mut buf = [0u8; 8192];
    let (n, _) = rustix::net::recv(&sock, &mut buf, RecvFlags::empty())?;
    parse_peer(&buf[..n])
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Parses one sock_diag answer: an error, or a unix_diag_msg with attributes.
fn parse_peer(b: &[u8]) -> io::Result<Option<u64>> {
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
    // unix_diag_msg is 16 bytes after the 16-byte header; attributes follow, 4-byte aligned.
    let mut off = 32;
    while off + 4 <= len {
        let alen = u16_at(b, off).ok_or_else(bad)? as usize;
        let atype = u16_at(b, off + 2).ok_or_else(bad)?;
        if alen < 4 || off + alen > len {
            return Err(bad());
        }
        if atype == UNIX_DIAG_PEER {
            return Ok(Some(u32_at(b, off + 4).ok_or_else(bad)? as u64));
        }
        off += (alen + 3) & !3;
    }
    Ok(None)
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
