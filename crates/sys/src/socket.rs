//! Unix-domain `SOCK_SEQPACKET` sockets and descriptor passing (`SCM_RIGHTS`), as used by the
//! self-dump service: the client library and the daemon exchange one message per packet and pass
//! directories as open descriptors, never as paths.
//!
//! Every socket created here is close-on-exec, and every descriptor received is installed
//! close-on-exec (`MSG_CMSG_CLOEXEC`).

use crate::{cvt_int, Pid};
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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
    // SAFETY: socket takes no pointers; on success it returns a new fd that we own.
    let fd = cvt_int(unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Builds a `sockaddr_un` for a filesystem path; fails with `InvalidInput` when the path is empty,
/// contains a NUL byte or does not fit `sun_path` (107 bytes plus the terminating NUL).
fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unix socket path must be 1 to {} bytes without NUL",
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Connects `fd` to the unix socket bound at `path`, retrying on `EINTR`.
pub fn connect_unix(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let (addr, len) = unix_addr(path)?;
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                len,
            )
        };
        match cvt_int(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
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
    let (addr, len) = unix_addr(path)?;
    let fd = seqpacket_socket()?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
    cvt_int(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    })?;
    // SAFETY: listen takes no pointers.
    cvt_int(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// Accepts one connection on a listening socket (close-on-exec), retrying on `EINTR`.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: null address pointers mean "do not report the peer address".
        let r = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        match cvt_int(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // SAFETY: `fd` is a freshly accepted descriptor owned by nobody else.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) => return Err(e),
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
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; cmsg_words(MAX_RECV_FDS)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data for which all-zero bytes are a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        let fd_bytes = raw.len() * size_of::<RawFd>();
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
        debug_assert!(space <= size_of::<[u64; cmsg_words(MAX_RECV_FDS)]>());
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: msg_control points to `space` writable, aligned bytes, so the first header
        // fits; CMSG_DATA then has room for `fd_bytes` bytes (CMSG_SPACE accounted for them).
        // `copy_nonoverlapping` copies between distinct buffers.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    // SAFETY: `msg` points to `iov` (describing `data`, only read) and to `control`, all of
    // which outlive the call; the descriptors in the control message are borrowed and valid.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Number of u64 words a control buffer for `n` descriptors needs (CMSG_SPACE rounded up).
const fn cmsg_words(n: usize) -> usize {
    let hdr = size_of::<libc::cmsghdr>();
    let data = n * size_of::<RawFd>();
    let align = size_of::<usize>();
    let space = hdr.div_ceil(align) * align + data.div_ceil(align) * align;
    space.div_ceil(8)
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
    let mut control = [0u64; cmsg_words(MAX_RECV_FDS)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data for which all-zero bytes are a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = size_of::<[u64; cmsg_words(MAX_RECV_FDS)]>();
    // SAFETY: `msg` points to `iov` (describing `buf`, writable) and `control`, both of which
    // outlive the call and are only written within their lengths.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: after a successful recvmsg, msg_control/msg_controllen describe the control
    // messages the kernel wrote into `control`; the CMSG_* macros only walk within them. Each
    // SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors that the kernel just
    // installed in our table and that nobody else owns, so wrapping each in OwnedFd is sound.
    // Payloads may be unaligned for i32, hence read_unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..payload / size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len: (n as usize).min(buf.len()),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
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
    // SAFETY: ucred is plain old data for which all-zero bytes are a valid value.
    let mut cred: libc::ucred = unsafe { zeroed() };
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
