//! Unix sockets of every type for the unix socket file kind: made, named, connected, shut down,
//! and their receive queues read without being consumed (all through rustix).

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, Shutdown, SocketAddrUnix, SocketFlags,
    SocketType, UCred,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The name a unix socket is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixName<'a> {
    /// A filesystem path.
    Path(&'a Path),
    /// An abstract name (without the leading NUL byte).
    Abstract(&'a [u8]),
}

fn addr(name: &UnixName<'_>) -> io::Result<SocketAddrUnix> {
    const SUN_PATH: usize = 108;
    match name {
        UnixName::Path(p) => {
            let b = p.as_os_str().as_bytes();
            if b.is_empty() || b.contains(&0) || b.len() >= SUN_PATH {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unix socket path {p:?} must be 1 to 107 bytes without NUL"),
                ));
            }
            Ok(SocketAddrUnix::new(*p)?)
        }
        UnixName::Abstract(n) => {
            if n.len() >= SUN_PATH {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "abstract unix socket name longer than 107 bytes",
                ));
            }
            Ok(SocketAddrUnix::new_abstract_name(n)?)
        }
    }
}

fn socket_type(ty: i32) -> io::Result<SocketType> {
    match ty {
        libc::SOCK_STREAM => Ok(SocketType::STREAM),
        libc::SOCK_DGRAM => Ok(SocketType::DGRAM),
        libc::SOCK_SEQPACKET => Ok(SocketType::SEQPACKET),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unix socket type {ty}"),
        )),
    }
}

/// A new unbound unix socket of type `ty` (`SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`),
/// close-on-exec.
pub fn socket(ty: i32) -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        socket_type(ty)?,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Two connected unix sockets of type `ty`, close-on-exec.
pub fn pair(ty: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        socket_type(ty)?,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Binds `fd` to `name`.
pub fn bind(fd: BorrowedFd<'_>, name: &UnixName<'_>) -> io::Result<()> {
    Ok(rustix::net::bind(fd, &addr(name)?)?)
}

/// Binds `fd` to `name`, a path relative to directory `dir`, as a process whose cwd is `dir`
/// would (getsockname then shows the relative name): from a thread of its own that leaves the
/// process's shared cwd (unshare CLONE_FS) for `dir`; the process's cwd is untouched.
pub fn bind_relative(fd: BorrowedFd<'_>, dir: &Path, name: &Path) -> io::Result<()> {
    let a = addr(&UnixName::Path(name))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<()> {
                // SAFETY: only CLONE_FS (this thread's cwd, root and umask) is unshared, never
                // the fd table, so every thread keeps seeing the same descriptors.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS)? };
                rustix::process::chdir(dir)?;
                Ok(rustix::net::bind(fd, &a)?)
            })
            .join()
            .map_err(|_| io::Error::other("the thread binding a relative name panicked"))?
    })
}

/// listen(2) with `backlog`.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    Ok(rustix::net::listen(fd, backlog)?)
}

/// Connects `fd` to the socket bound to `name`, retrying on EINTR.
pub fn connect(fd: BorrowedFd<'_>, name: &UnixName<'_>) -> io::Result<()> {
    let a = addr(name)?;
    loop {
        match rustix::net::connect(fd, &a) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// shutdown(2) of the directions in `bits`, the kernel's `RCV_SHUTDOWN` (1) and
/// `SEND_SHUTDOWN` (2); nothing when 0.
pub fn shutdown(fd: BorrowedFd<'_>, bits: u8) -> io::Result<()> {
    let how = match bits & 3 {
        0 => return Ok(()),
        1 => Shutdown::Read,
        2 => Shutdown::Write,
        _ => Shutdown::Both,
    };
    Ok(rustix::net::shutdown(fd, how)?)
}

/// The credentials a message carries (SCM_CREDENTIALS): the sender's pid, uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Sends one message (all of `data` for a datagram or seqpacket socket; as much as fits for a
/// stream) without blocking or raising SIGPIPE; to `to` when given, else to the peer; with
/// `cred` as its SCM_CREDENTIALS when given (another pid than the caller's, or another uid or
/// gid, needs privilege; the pid must exist: ESRCH otherwise) and `fds` as its SCM_RIGHTS.
pub fn send(
    fd: BorrowedFd<'_>,
    data: &[u8],
    to: Option<&UnixName<'_>>,
    cred: Option<Cred>,
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("no room for the descriptors of a message"));
    }
    if let Some(c) = cred {
        let pid = rustix::process::Pid::from_raw(c.pid)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        let ucred = UCred {
            pid,
            uid: rustix::process::Uid::from_raw(c.uid),
            gid: rustix::process::Gid::from_raw(c.gid),
        };
        if !control.push(SendAncillaryMessage::ScmCredentials(ucred)) {
            return Err(io::Error::other("no room for the credentials of a message"));
        }
    }
    let iov = [IoSlice::new(data)];
    Ok(match to {
        Some(name) => rustix::net::sendmsg_addr(fd, &addr(name)?, &iov, &mut control, flags)?,
        None => rustix::net::sendmsg(fd, &iov, &mut control, flags)?,
    })
}

/// Sends all of `data` on a stream socket without blocking (`WouldBlock` when it does not
/// fit), every part with `cred`, the first with `fds` (see [`send`]).
pub fn send_all(
    fd: BorrowedFd<'_>,
    mut data: &[u8],
    cred: Option<Cred>,
    mut fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    while !data.is_empty() {
        match send(fd, data, None, cred, fds) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                data = &data[n..];
                fds = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Most descriptors one message may carry (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// One message of a queue: its bytes, the credentials it carries when the receiving socket
/// has SO_PASSCRED, and duplicates of the descriptors in flight with it (SCM_RIGHTS), now the
/// caller's.
#[derive(Debug)]
pub struct Message {
    pub data: Vec<u8>,
    pub cred: Option<Cred>,
    pub fds: Vec<OwnedFd>,
    /// A datagram's sender, when it is named: `sun_path` bytes as sock_diag shows names (an
    /// abstract name starts with a NUL byte; a path ends with one).
    pub from: Option<Vec<u8>>,
}

/// What [`peek_queue`] found.
#[derive(Debug, Default)]
pub struct Queue {
    /// The messages (datagrams, seqpacket records) or, for a stream, the bytes in chunks (a
    /// chunk ends where the credentials change), in order.
    pub messages: Vec<Message>,
    /// A message carries more file descriptors than arrived (MSG_CTRUNC); the messages stop
    /// before it.
    pub fds_truncated: bool,
    /// A datagram or seqpacket socket's last peek read 0 bytes: end-of-file (its receive
    /// direction is shut down) or a zero-length message, which peeking cannot step over (the
    /// messages stop there).
    pub zero_read: bool,
}

/// Reads the receive queue of unix socket `fd` of type `ty` without consuming it: MSG_PEEK
/// from successive SO_PEEK_OFF offsets (each datagram whole, with MSG_TRUNC telling its
/// length); the socket's own SO_PEEK_OFF is put back. At most `max_bytes` (`InvalidData`
/// beyond). The socket's owner must not be receiving meanwhile (it is frozen).
pub fn peek_queue(fd: BorrowedFd<'_>, ty: i32, max_bytes: usize) -> io::Result<Queue> {
    let saved: i32 = crate::socket::get_option(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    let result = peek_from_offsets(fd, ty, max_bytes);
    crate::socket::set_option(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &saved)?;
    result
}

fn peek_from_offsets(fd: BorrowedFd<'_>, ty: i32, max_bytes: usize) -> io::Result<Queue> {
    let stream = ty == libc::SOCK_STREAM;
    let mut q = Queue::default();
    let mut consumed: usize = 0;
    let mut buf = vec![0u8; 64 << 10];
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(253), ScmCredentials(1))];
    loop {
        let off = i32::try_from(consumed)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "queue too long"))?;
        crate::socket::set_option(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &off)?;
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut flags = RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC;
        if !stream {
            flags |= RecvFlags::TRUNC;
        }
        let msg =
            match rustix::net::recvmsg(fd, &mut [IoSliceMut::new(&mut buf)], &mut control, flags) {
                Ok(m) => m,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
        let mut fds = Vec::new();
        let mut cred = None;
        for m in control.drain() {
            match m {
                RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
                RecvAncillaryMessage::ScmCredentials(c) => {
                    cred = Some(Cred {
                        pid: c.pid.as_raw_nonzero().get(),
                        uid: c.uid.as_raw(),
                        gid: c.gid.as_raw(),
                    });
                }
                _ => {}
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            q.fds_truncated = true;
            break;
        }
        if !stream && msg.bytes > buf.len() {
            // A longer datagram than the buffer: again, with room for it.
            if msg.bytes > max_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a queued message of {} bytes", msg.bytes),
                ));
            }
            buf.resize(msg.bytes, 0);
            continue;
        }
        if msg.bytes == 0 {
            // End of a stream (its peer shut down), end-of-file or an empty datagram: peeking
            // again at this offset would find it again.
            if !stream {
                q.zero_read = true;
            }
            break;
        }
        consumed += msg.bytes;
        if consumed > max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {max_bytes} bytes queued"),
            ));
        }
        let from = msg
            .address
            .and_then(|a| SocketAddrUnix::try_from(a).ok())
            .and_then(|a| {
                if let Some(n) = a.abstract_name() {
                    Some([&[0u8][..], n].concat())
                } else {
                    a.path_bytes().map(|p| [p, &[0u8][..]].concat())
                }
            });
        q.messages.push(Message {
            data: buf[..msg.bytes].to_vec(),
            cred,
            fds,
            from,
        });
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn send_ok(fd: &OwnedFd, data: &[u8]) {
        assert_eq!(send(fd.as_fd(), data, None, None, &[]).unwrap(), data.len());
    }

    #[test]
    fn peek_keeps_the_queue_and_the_boundaries() {
        for ty in [libc::SOCK_DGRAM, libc::SOCK_SEQPACKET, libc::SOCK_STREAM] {
            let (a, b) = pair(ty).unwrap();
            send_ok(&a, b"one");
            send_ok(
                &a,
                &[7u8; 100_000][..if ty == libc::SOCK_STREAM {
                    100_000
                } else {
                    70_000
                }],
            );
            send_ok(&a, b"three");
            crate::socket::set_option(b.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, &2i32)
                .unwrap();
            let q = peek_queue(b.as_fd(), ty, 1 << 20).unwrap();
            let data: Vec<Vec<u8>> = q.messages.iter().map(|m| m.data.clone()).collect();
            let total: usize = data.iter().map(Vec::len).sum();
            if ty == libc::SOCK_STREAM {
                assert_eq!(total, 100_008);
                assert_eq!(&data.concat()[..3], b"one");
            } else {
                assert_eq!(data.len(), 3, "{ty}");
                assert_eq!(data[2], b"three");
                assert_eq!(data[1].len(), 70_000);
            }
            let off: i32 =
                crate::socket::get_option(b.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap();
            assert_eq!(off, 2, "SO_PEEK_OFF put back");
            // Nothing was consumed.
            crate::socket::set_option(b.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, &-1i32)
                .unwrap();
            let mut buf = [0u8; 3];
            assert_eq!(
                rustix::net::recv(&b, &mut buf, RecvFlags::empty())
                    .unwrap()
                    .0,
                3
            );
            assert_eq!(&buf, b"one");
        }
    }

    #[test]
    fn in_flight_descriptors_are_reported() {
        let (a, b) = pair(libc::SOCK_DGRAM).unwrap();
        send_ok(&a, b"x");
        let f = std::fs::File::open("/").unwrap();
        crate::socket::send_with_fds(a.as_fd(), b"y", &[f.as_fd()]).unwrap();
        let q = peek_queue(b.as_fd(), libc::SOCK_DGRAM, 1 << 20).unwrap();
        assert_eq!(q.messages.len(), 2);
        assert_eq!(q.messages[0].data, b"x");
        assert!(q.messages[0].fds.is_empty());
        assert_eq!(q.messages[1].fds.len(), 1);
        // Sent again from the duplicate: it arrives.
        let (c, d) = pair(libc::SOCK_STREAM).unwrap();
        let dup = q.messages[1].fds[0].as_fd();
        send_all(c.as_fd(), b"again", None, &[dup]).unwrap();
        let q = peek_queue(d.as_fd(), libc::SOCK_STREAM, 1 << 20).unwrap();
        assert_eq!(q.messages[0].data, b"again");
        assert_eq!(q.messages[0].fds.len(), 1);
    }

    #[test]
    fn credentials_are_peeked_and_sent() {
        let (a, b) = pair(libc::SOCK_DGRAM).unwrap();
        crate::socket::set_option(b.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, &1i32).unwrap();
        send_ok(&a, b"auto");
        let me = Cred {
            pid: std::process::id() as i32,
            uid: crate::process::geteuid(),
            gid: rustix::process::getegid().as_raw(),
        };
        send(a.as_fd(), b"explicit", None, Some(me), &[]).unwrap();
        let q = peek_queue(b.as_fd(), libc::SOCK_DGRAM, 1 << 20).unwrap();
        assert_eq!(q.messages.len(), 2);
        assert!(q
            .messages
            .iter()
            .all(|m| m.cred.map(|c| c.pid) == Some(me.pid)));
        // A pid that does not exist cannot be claimed.
        let e = send(
            a.as_fd(),
            b"x",
            None,
            Some(Cred {
                pid: i32::MAX,
                ..me
            }),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::EPERM)),
            "{e}"
        );
    }

    #[test]
    fn a_relative_name_is_bound_in_its_directory() {
        let dir = std::env::temp_dir().join(format!("stasis-rel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let s = socket(libc::SOCK_DGRAM).unwrap();
        bind_relative(s.as_fd(), &dir, Path::new("r.sock")).unwrap();
        assert!(dir.join("r.sock").exists());
        assert_eq!(
            std::env::current_dir().unwrap(),
            cwd,
            "our cwd is untouched"
        );
        let name = rustix::net::getsockname(&s).unwrap();
        let name = SocketAddrUnix::try_from(name).unwrap();
        assert_eq!(name.path_bytes(), Some(&b"r.sock"[..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_bind_and_connect() {
        let name = format!("stasis-test-{}", std::process::id());
        let l = socket(libc::SOCK_STREAM).unwrap();
        bind(l.as_fd(), &UnixName::Abstract(name.as_bytes())).unwrap();
        listen(l.as_fd(), 4).unwrap();
        let c = socket(libc::SOCK_STREAM).unwrap();
        connect(c.as_fd(), &UnixName::Abstract(name.as_bytes())).unwrap();
        let d = crate::sock_diag::unix_diag(ino(&l)).unwrap();
        assert_eq!(d.state, crate::sock_diag::UNIX_LISTEN);
        assert_eq!(d.icons, vec![ino(&c)]);
        let mut want = vec![0u8];
        want.extend_from_slice(name.as_bytes());
        assert_eq!(d.name, Some(want));
        let dc = crate::sock_diag::unix_diag(ino(&c)).unwrap();
        assert_eq!(dc.peer, Some(0), "not accepted yet");
        shutdown(c.as_fd(), 2).unwrap();
        assert_eq!(crate::sock_diag::unix_diag(ino(&c)).unwrap().shutdown, 2);
    }

    fn ino(fd: &OwnedFd) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::File::from(fd.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }
}
