//! sock_diag(7) queries for unix sockets over NETLINK_SOCK_DIAG.

use crate::cvt_int;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;

/// The inode of the socket connected to the unix socket with inode `ino`, or `None` when it
/// has no peer.
pub fn unix_peer_inode(ino: u64) -> io::Result<Option<u64>> {
    let ino32 = u32::try_from(ino).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: socket takes no pointers; on success the new fd is ours.
    let sock = unsafe {
        OwnedFd::from_raw_fd(cvt_int(libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        ))?)
    };
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
    // SAFETY: the kernel reads req.len() bytes from the buffer we own.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 8192];
    // SAFETY: the kernel writes at most buf.len() bytes into the buffer we own.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_peer(&buf[..n as usize])
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
        assert!(parse_peer(&[1, 2, 3]).is_err());
    }
}
