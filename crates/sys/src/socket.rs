//! Unix-domain `SOCK_SEQPACKET` sockets and descriptor passing (`SCM_RIGHTS`), as used by the
//! self-dump service: the client library and the daemon exchange one message per packet and pass
//! directories as open descriptors, never as paths.
//!
//! Every socket created here is close-on-exec, and every descriptor received is installed
//! close-on-exec (`MSG_CMSG_CLOEXEC`).

use crate::{cvt_int, Pid};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected. Not exported by the libc
/// crate for every target, so spelled out here (the value is the same on x86-64 and arm64).
const SO_PEERPIDFD: libc::c_int = 77;

/// Most descriptors accepted in one received packet. More than this are discarded by the kernel
/// (and reported as [`Received::fds_truncated`]).
pub const MAX_RECV_FDS: usize = 8;

/// Creates an unbound `AF_UNIX` `SOCK_SEQPACKET` socket, close-on-exec.
pub fn seqpacket_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The address of a filesystem path; fails with `InvalidInput` when the path is empty,
/// contains a NUL byte or does not fit `sun_path` (107 bytes plus the terminating NUL).
fn unix_addr(path: &Path) -> io::Result<SocketAddrUnix> {
    const SUN_PATH: usize = 108;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= SUN_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unix socket path must be 1 to {} bytes without NUL",
                SUN_PATH - 1
            ),
        ));
    }
    Ok(SocketAddrUnix::new(path)?)
}

/// Connects `fd` to the unix socket bound at `path`, retrying on `EINTR`.
pub fn connect_unix(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let addr = unix_addr(path)?;
    loop {
        match rustix::net::connect(fd, &addr) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// Creates a `SOCK_SEQPACKET` socket connected to the listener at `path`.
pub fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    connect_unix(fd.as_fd(), path)?;
    Ok(fd)
}

/// Creates a `SOCK_SEQPACKET` socket bound at `path` and listening with `backlog`. The path must
/// not exist yet (`EADDRINUSE` otherwise).
pub fn seqpacket_listen(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    let addr = unix_addr(path)?;
    let fd = seqpacket_socket()?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// Accepts one connection on a listening socket (close-on-exec), retrying on `EINTR`.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// Sends one packet holding `data`, with `fds` attached as `SCM_RIGHTS` when not empty.
/// `MSG_NOSIGNAL`: a closed peer gives `EPIPE`, never `SIGPIPE`. Returns the bytes sent (all
/// of `data` on a `SOCK_SEQPACKET` socket). Does not retry on `EINTR`.
pub fn send_with_fds(fd: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if fds.len() > MAX_RECV_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_RECV_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no room for the descriptors of a message",
        ));
    }
    Ok(rustix::net::sendmsg(
        fd,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// One received packet: see [`recv_with_fds`].
#[derive(Debug)]
pub struct Received {
    /// Bytes stored in the buffer. 0 on a `SOCK_SEQPACKET` socket means the peer closed it (or
    /// sent an empty packet).
    pub len: usize,
    /// The packet was longer than the buffer (`MSG_TRUNC`); the rest is lost.
    pub truncated: bool,
    /// Every descriptor that arrived, close-on-exec, owned by the caller.
    pub fds: Vec<OwnedFd>,
    /// More descriptors were sent than fit (`MSG_CTRUNC`); the kernel discarded the rest.
    pub fds_truncated: bool,
}

/// Receives one packet into `buf`, collecting up to [`MAX_RECV_FDS`] `SCM_RIGHTS` descriptors
/// (installed close-on-exec). Does not retry on `EINTR`: the caller decides.
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_RECV_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let len = buf.len();
    let msg = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    Ok(Received {
        len: msg.bytes.min(len),
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds,
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// Credentials of the peer as the kernel recorded them at `connect` time (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: Pid,
    pub uid: u32,
    pub gid: u32,
}

/// `SO_PEERCRED`: who connected (or created the socketpair), as the kernel recorded it.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    // Not rustix's socket_peercred: its `UCred` holds a non-zero `Pid`, but the kernel reports
    // pid 0 for a peer outside our pid namespace.
    // SAFETY: ucred is plain old data for which all-zero bytes are a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    cvt_int(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// `SO_PEERPIDFD` (Linux 6.5+): a pidfd of the process that connected, which, unlike the pid
/// of [`peer_cred`], can never refer to a recycled pid.
pub fn peer_pidfd(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // rustix has no SO_PEERPIDFD.
    let mut pidfd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (one int) into `pidfd`, which we own.
    cvt_int(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            &mut pidfd as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    })?;
    // SAFETY: on success the kernel installed a new pidfd in our table that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// `SIOCGSKNS`: a descriptor of the network namespace socket `fd` belongs to. The server end of
/// a unix connection belongs to the namespace of the process that connected, not to the
/// listener's. Needs CAP_NET_ADMIN over that namespace.
pub fn network_namespace_of(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor (or -1).
    let ns = cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGSKNS as _) })?;
    // SAFETY: on success the kernel installed a new descriptor in our table that nobody else
    // owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ns) })
}

/// getsockopt of an option whose value is a `T` (an int, a struct of `kabi`).
pub fn get_option<T: crate::kabi::Pod>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<T> {
    let bytes = get_option_bytes(fd, level, name, size_of::<T>())?;
    if bytes.len() == size_of::<T>() {
        return Ok(T::from_bytes(&bytes).expect("length checked"));
    }
    // Shorter values (an int option read as a u64, a char option) are zero-extended.
    let mut full = vec![0u8; size_of::<T>()];
    full[..bytes.len()].copy_from_slice(&bytes);
    Ok(T::from_bytes(&full).expect("length checked"))
}

/// getsockopt of an option of at most `max` bytes; the bytes the kernel returned.
pub fn get_option_bytes(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`, which has that many.
    cvt_int(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    })?;
    buf.truncate((len as usize).min(max));
    Ok(buf)
}

/// setsockopt of an option whose value is a `T`.
pub fn set_option<T: crate::kabi::Pod>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    set_option_bytes(fd, level, name, value.as_bytes())
}

/// setsockopt of an option given as bytes.
pub fn set_option_bytes(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: setsockopt reads `value.len()` bytes from `value`.
    cvt_int(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast::<libc::c_void>(),
            value.len() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A socket's domain, type and protocol (SO_DOMAIN, SO_TYPE, SO_PROTOCOL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketKind {
    /// `AF_UNIX`, `AF_INET`, ...
    pub domain: i32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ...
    pub ty: i32,
    pub protocol: i32,
}

/// The domain, type and protocol of socket `fd`.
pub fn socket_kind(fd: BorrowedFd<'_>) -> io::Result<SocketKind> {
    Ok(SocketKind {
        domain: get_option::<i32>(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        ty: get_option::<i32>(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
        protocol: get_option::<i32>(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_sock(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stasis-sys-sock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s.sock")
    }

    #[test]
    fn options_round_trip() {
        let (a, _b) = crate::process::socketpair_seqpacket().unwrap();
        let kind = socket_kind(a.as_fd()).unwrap();
        assert_eq!(kind.domain, libc::AF_UNIX);
        assert_eq!(kind.ty, libc::SOCK_SEQPACKET);
        set_option(a.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, &1i32).unwrap();
        let v: i32 = get_option(a.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED).unwrap();
        assert_eq!(v, 1);
        let e = set_option(a.as_fd(), libc::SOL_SOCKET, 9999, &1i32).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT));
    }

    #[test]
    fn packets_and_descriptors_cross() {
        let path = temp_sock("cross");
        let listener = seqpacket_listen(&path, 4).unwrap();
        let client = seqpacket_connect(&path).unwrap();
        let server = accept(listener.as_fd()).unwrap();

        let cred = peer_cred(server.as_fd()).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);

        let file = std::fs::File::open("/").unwrap();
        let n = send_with_fds(client.as_fd(), b"hello", &[file.as_fd()]).unwrap();
        assert_eq!(n, 5);
        let mut buf = [0u8; 16];
        let r = recv_with_fds(server.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..r.len], b"hello");
        assert!(!r.truncated && !r.fds_truncated);
        assert_eq!(r.fds.len(), 1);
        use std::os::unix::fs::MetadataExt;
        let got = std::fs::File::from(r.fds.into_iter().next().unwrap())
            .metadata()
            .unwrap();
        let want = file.metadata().unwrap();
        assert_eq!((got.dev(), got.ino()), (want.dev(), want.ino()));

        // A packet longer than the buffer is reported as truncated.
        send_with_fds(client.as_fd(), &[7u8; 40], &[]).unwrap();
        let r = recv_with_fds(server.as_fd(), &mut buf).unwrap();
        assert!(r.truncated);
        assert_eq!(r.len, 16);

        // Several descriptors in one packet all arrive (and are owned by the receiver).
        let f2 = std::fs::File::open("/").unwrap();
        send_with_fds(client.as_fd(), b"x", &[file.as_fd(), f2.as_fd()]).unwrap();
        let r = recv_with_fds(server.as_fd(), &mut buf).unwrap();
        assert_eq!(r.fds.len(), 2);

        // Closing the peer gives a zero-length read.
        drop(client);
        let r = recv_with_fds(server.as_fd(), &mut buf).unwrap();
        assert_eq!(r.len, 0);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn bad_paths_are_rejected() {
        assert!(seqpacket_connect(Path::new("")).is_err());
        let long = "x".repeat(200);
        let e = seqpacket_connect(Path::new(&long)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = seqpacket_connect(Path::new("/nonexistent/stasis.sock")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn network_namespace_of_a_socket() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        match network_namespace_of(a.as_fd()) {
            Ok(ns) => {
                use std::os::unix::fs::MetadataExt;
                let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
                let md = std::fs::File::from(ns).metadata().unwrap();
                assert_eq!((md.dev(), md.ino()), (ours.dev(), ours.ino()));
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("notice: SIOCGSKNS needs CAP_NET_ADMIN; skipped");
            }
            Err(e) => panic!("SIOCGSKNS: {e}"),
        }
    }

    #[test]
    fn peer_pidfd_names_this_process() {
        let path = temp_sock("pidfd");
        let listener = seqpacket_listen(&path, 1).unwrap();
        let _client = seqpacket_connect(&path).unwrap();
        let server = accept(listener.as_fd()).unwrap();
        match peer_pidfd(server.as_fd()) {
            Ok(pidfd) => {
                let fdinfo =
                    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
                        .unwrap();
                let me = format!("Pid:\t{}", std::process::id());
                assert!(fdinfo.lines().any(|l| l == me), "{fdinfo}");
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                eprintln!("notice: SO_PEERPIDFD not supported by this kernel; skipped");
            }
            Err(e) => panic!("SO_PEERPIDFD: {e}"),
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
