//! Processes, pidfds, file descriptors and per-process attributes.

use crate::{cvt, cvt_int, Pid};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Opens a pidfd for `pid`: a handle that can never refer to a recycled pid.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes no pointers; on success it returns a new fd that we own.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Duplicates file descriptor `target_fd` of the process behind `pidfd` into this process. The
/// copy shares the file description (offset, flags) with the original.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target_fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: no pointers; on success a new fd that we own is returned.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) })?;
    // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` to the process behind `pidfd`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: a null siginfo pointer means "as if by kill()".
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<u8>(),
            0,
        )
    })
    .map(drop)
}

/// Sends a signal with kill(2).
pub fn kill(pid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    cvt_int(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Result of [`fork_with_pid`].
pub enum Forked {
    Child,
    Parent(Pid),
}

/// Forks this process so that the child gets exactly `pid` (clone3 with `set_tid`). Fails with
/// `EEXIST` when the pid is in use.
///
/// The caller must be single-threaded, as with fork(2): the child only has the calling thread.
pub fn fork_with_pid(pid: Pid) -> io::Result<Forked> {
    clone_like_fork(0, Some(pid))
}

/// Like [`fork_with_pid`], the child sharing the caller's fd table (CLONE_FILES) and/or its
/// cwd, root and umask (CLONE_FS).
pub fn fork_with_pid_sharing(pid: Pid, files: bool, fs: bool) -> io::Result<Forked> {
    let mut flags = 0;
    if files {
        flags |= libc::CLONE_FILES as u64;
    }
    if fs {
        flags |= libc::CLONE_FS as u64;
    }
    clone_like_fork(flags, Some(pid))
}

/// clone3 without CLONE_VM (so: a fork), with extra `flags` and, optionally, the pid the child
/// gets in the innermost pid namespace. The caller must be single-threaded.
fn clone_like_fork(flags: u64, pid: Option<Pid>) -> io::Result<Forked> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tids: [Pid; 1] = [pid.unwrap_or(0)];
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid.is_some() {
            tids.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork(): the child gets a copy of our memory
    // and continues from here with a return value of 0. `args` and `tids` outlive the call.
    let r = cvt(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    })?;
    Ok(if r == 0 {
        Forked::Child
    } else {
        Forked::Parent(r as Pid)
    })
}

/// Terminates the calling process immediately, without running destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// Creates an anonymous memory file.
pub fn memfd_create(name: &str) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let fd = cvt_int(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates a pipe; returns (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    cvt_int(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Duplicates up to `len` bytes from pipe `from` into pipe `to` without consuming them.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: tee takes no pointers.
    let n = cvt(unsafe {
        libc::tee(
            from.as_raw_fd(),
            to.as_raw_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    } as libc::c_long)?;
    Ok(n as usize)
}

/// Bytes waiting to be read in a pipe (FIONREAD).
pub fn pipe_bytes_queued(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) })?;
    Ok(n as usize)
}

/// Capacity of a pipe in bytes.
pub fn pipe_capacity(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: F_GETPIPE_SZ takes no pointer.
    Ok(cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) })? as usize)
}

/// Sets the capacity of a pipe.
pub fn set_pipe_capacity(fd: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    // SAFETY: F_SETPIPE_SZ takes an int argument.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) })
        .map(drop)
}

/// File status flags (F_GETFL).
pub fn get_status_flags(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: F_GETFL takes no argument.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// Sets file status flags (F_SETFL; only O_APPEND, O_NONBLOCK, O_ASYNC, O_DIRECT, O_NOATIME
/// can change).
pub fn set_status_flags(fd: BorrowedFd<'_>, flags: i32) -> io::Result<()> {
    // SAFETY: F_SETFL takes an int argument.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// Sets or clears FD_CLOEXEC on a raw descriptor number of this process.
pub fn set_cloexec_raw(fd: RawFd, cloexec: bool) -> io::Result<()> {
    let flag = if cloexec { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD takes an int argument; an invalid fd gives EBADF.
    cvt_int(unsafe { libc::fcntl(fd, libc::F_SETFD, flag) }).map(drop)
}

/// dup3(2) on raw descriptor numbers: used in a freshly forked restore child to lay out its fd
/// table, where descriptors are numbers in a table being rebuilt, not owned objects.
pub fn dup3_raw(old: RawFd, new: RawFd) -> io::Result<()> {
    // SAFETY: no pointers; the kernel validates both numbers.
    cvt_int(unsafe { libc::dup3(old, new, 0) }).map(drop)
}

/// fcntl(F_DUPFD_CLOEXEC): duplicates `old` to the lowest free number >= `min`.
pub fn dup_at_least_raw(old: RawFd, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: no pointers.
    cvt_int(unsafe { libc::fcntl(old, libc::F_DUPFD_CLOEXEC, min) })
}

/// Closes every descriptor in `first..=last`.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}

/// Closes one raw descriptor number.
pub fn close_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: closing a number we do not hold elsewhere as an OwnedFd (restore child only).
    cvt_int(unsafe { libc::close(fd) }).map(drop)
}

/// setsid(2).
pub fn setsid() -> io::Result<Pid> {
    // SAFETY: no arguments.
    cvt_int(unsafe { libc::setsid() })
}

/// setpgid(2).
pub fn setpgid(pid: Pid, pgid: Pid) -> io::Result<()> {
    // SAFETY: no pointers.
    cvt_int(unsafe { libc::setpgid(pid, pgid) }).map(drop)
}

/// getsid(2) of this process (0) or another.
pub fn getsid(pid: Pid) -> io::Result<Pid> {
    // SAFETY: no pointers.
    cvt_int(unsafe { libc::getsid(pid) })
}

/// getpgid(2).
pub fn getpgid(pid: Pid) -> io::Result<Pid> {
    // SAFETY: no pointers.
    cvt_int(unsafe { libc::getpgid(pid) })
}

/// Sets the umask, returning the old one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// chroot(2).
pub fn chroot(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    cvt_int(unsafe { libc::chroot(c.as_ptr()) }).map(drop)
}

/// Sets a resource limit of this process (prlimit64 on ourselves).
pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: the kernel reads one rlimit64 from `lim`.
    cvt_int(unsafe { libc::prlimit64(0, resource as _, &lim, std::ptr::null_mut()) }).map(drop)
}

/// Reads a resource limit of this process.
pub fn getrlimit(resource: u32) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the kernel writes one rlimit64 into `lim`.
    cvt_int(unsafe { libc::prlimit64(0, resource as _, std::ptr::null(), &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// prctl(2) with integer arguments only (never pointers).
pub fn prctl_int(option: i32, arg2: u64, arg3: u64) -> io::Result<i32> {
    // SAFETY: the options we pass through here take integers, not pointers.
    cvt_int(unsafe { libc::prctl(option, arg2, arg3, 0u64, 0u64) })
}

/// Sets the calling thread's name (comm), at most 15 bytes.
pub fn set_thread_name(name: &[u8]) -> io::Result<()> {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads up to 16 bytes from a NUL-terminated buffer we own.
    cvt_int(unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as u64, 0u64, 0u64, 0u64) })
        .map(drop)
}

/// personality(2): sets the execution domain, returning the previous one.
pub fn set_personality(persona: u32) -> io::Result<u32> {
    // SAFETY: no pointers.
    Ok(cvt_int(unsafe { libc::personality(persona as libc::c_ulong) })? as u32)
}

/// Stops the calling process with SIGSTOP (so that its tracer can take over).
pub fn stop_self() -> io::Result<()> {
    // SAFETY: raise has no memory effects.
    cvt_int(unsafe { libc::raise(libc::SIGSTOP) }).map(drop)
}

/// Effective uid of the caller.
pub fn geteuid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::geteuid() }
}

/// Process id of the caller.
pub fn getpid() -> Pid {
    // SAFETY: cannot fail.
    unsafe { libc::getpid() }
}

/// Blocks or unblocks all signals in the calling thread; returns the previous mask.
pub fn block_all_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigfillset initializes it; sigprocmask reads/writes only
    // the two sets we own.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        match libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) {
            0 => Ok(old),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Restores a signal mask saved by [`block_all_signals`].
pub fn set_signal_mask(mask: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: reads one sigset_t we own.
    match unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// lseek(SEEK_DATA): the first offset >= `from` holding data, or `None` past the last data.
pub fn seek_data(fd: BorrowedFd<'_>, from: u64) -> io::Result<Option<u64>> {
    // SAFETY: lseek takes no pointers.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(r as u64))
}

/// lseek(SEEK_HOLE): the first offset >= `from` in a hole (the file size at most).
pub fn seek_hole(fd: BorrowedFd<'_>, from: u64) -> io::Result<u64> {
    // SAFETY: lseek takes no pointers.
    let r = cvt(
        unsafe { libc::lseek(fd.as_raw_fd(), from as libc::off_t, libc::SEEK_HOLE) }
            as libc::c_long,
    )?;
    Ok(r as u64)
}

/// kcmp(KCMP_FILE): whether fd `a` of `pid_a` and fd `b` of `pid_b` are the same open file
/// description.
pub fn same_file_description(pid_a: Pid, a: RawFd, pid_b: Pid, b: RawFd) -> io::Result<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp with KCMP_FILE takes no pointers.
    let r = cvt(unsafe { libc::syscall(libc::SYS_kcmp, pid_a, pid_b, KCMP_FILE, a, b) })?;
    Ok(r == 0)
}

/// write(2) on a raw descriptor number (used by a restore child whose fd table was rebuilt).
pub fn write_raw(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most data.len() bytes from the slice.
    let n = cvt(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) } as libc::c_long)?;
    Ok(n as usize)
}

/// Sets every catchable signal of the calling process back to its default action and clears
/// the alternate signal stack: a freshly forked restore child must not keep handlers or stacks
/// that point into the restorer's memory.
pub fn reset_signal_dispositions() -> io::Result<()> {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || (32..34).contains(&sig) {
            continue;
        }
        // SAFETY: SIG_DFL is a valid disposition; the previous handler is not needed.
        if unsafe { libc::signal(sig, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    let ss = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: disabling the alternate stack reads one stack_t we own.
    cvt_int(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }).map(drop)
}

/// A connected pair of SOCK_SEQPACKET unix sockets, close-on-exec.
pub fn socketpair_seqpacket() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into the array we own.
    cvt_int(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes every later file access of the calling process be checked as `uid`/`gid` with
/// supplementary `groups` (setgroups, setfsgid, setfsuid), while it keeps its other
/// privileges: the file-related capabilities stop applying once the fsuid is not 0.
pub fn set_fs_identity(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: setgroups reads groups.len() gid_t values from the slice.
    cvt_int(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    // SAFETY: setfsgid/setfsuid take no pointers. They return the previous id and cannot
    // report failure directly, so the new value is checked by calling them again.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        if libc::setfsgid(u32::MAX) as u32 != gid || libc::setfsuid(u32::MAX) as u32 != uid {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
    }
    Ok(())
}

/// fork(2). The caller must be single-threaded.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the callers (stasisd) are single-threaded, so the child has a consistent copy
    // of the whole process.
    let r = cvt_int(unsafe { libc::fork() })?;
    Ok(if r == 0 {
        Forked::Child
    } else {
        Forked::Parent(r)
    })
}

/// Blocks `signals` in the calling thread and returns a signalfd that reports them.
pub fn signalfd_for(signals: &[i32]) -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data initialized by sigemptyset/sigaddset; the calls only read
    // the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => {}
            e => return Err(io::Error::from_raw_os_error(e)),
        }
        let fd = cvt_int(libc::signalfd(
            -1,
            &set,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Unblocks every signal in the calling thread (a forked worker undoing [`signalfd_for`]).
pub fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: an empty set initialized by sigemptyset; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        match libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Reads one signal number from a signalfd, or `None` when none is pending.
pub fn read_signalfd(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let mut info = [0u8; 128];
    // SAFETY: the kernel writes at most 128 bytes (one signalfd_siginfo) into `info`.
    let n = unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(
        u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32,
    ))
}

/// poll(2) for readability on `fds`; returns which are readable (or hung up). EINTR counts as
/// "nothing ready".
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: the kernel reads and writes exactly p.len() pollfd entries we own.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(vec![false; fds.len()])
        } else {
            Err(e)
        };
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// Sets SO_RCVTIMEO and SO_SNDTIMEO on a socket.
pub fn set_socket_timeouts(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: the kernel reads one timeval from `tv`.
        cvt_int(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

/// Whether `fd` is a listening SOCK_SEQPACKET socket (for socket activation).
pub fn is_listening_seqpacket(fd: BorrowedFd<'_>) -> bool {
    let get = |opt: i32| -> Option<i32> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `v`.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    get(libc::SO_TYPE) == Some(libc::SOCK_SEQPACKET) && get(libc::SO_ACCEPTCONN) == Some(1)
}

/// Takes ownership of an inherited descriptor number (socket activation's fd 3), after
/// checking that it is open.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD takes no argument; it only checks that the number is open.
    cvt_int(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the number is open and, by the socket-activation protocol, handed to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until child `pid` has exited, without reaping it (waitid WEXITED | WNOWAIT).
pub fn wait_exited_nowait(pid: Pid) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain data; waitid writes one into `info`.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        match cvt_int(r) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Discards a pending SIGCHLD (setting a pending signal to SIG_IGN discards it), leaving the
/// disposition at its default.
pub fn discard_pending_sigchld() -> io::Result<()> {
    // SAFETY: SIG_IGN and SIG_DFL are valid dispositions; no handler is installed.
    unsafe {
        if libc::signal(libc::SIGCHLD, libc::SIG_IGN) == libc::SIG_ERR
            || libc::signal(libc::SIGCHLD, libc::SIG_DFL) == libc::SIG_ERR
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Asks the kernel whether user `uid`:`gid` could ptrace-attach to process `pid` (same ids,
/// dumpable, ...): with CAP_SYS_PTRACE dropped from the effective set and the fs identity set
/// to that user, opening /proc/PID/mem goes through exactly that check. Everything is put
/// back before returning.
pub fn user_may_ptrace(pid: Pid, uid: u32, gid: u32) -> io::Result<bool> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut saved = [Data::default(); 2];
    // SAFETY: capget writes two Data records for a version 3 header we own.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut Header,
            saved.as_mut_ptr(),
        )
    })?;
    let mut reduced = saved;
    // CAP_SYS_PTRACE is capability 19.
    reduced[0].effective &= !(1 << 19);
    // SAFETY: capset reads two Data records; lowering the effective set is always allowed.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, reduced.as_ptr()) })?;
    // SAFETY: setfsuid/setfsgid take no pointers; they return the previous ids.
    let (old_fsgid, old_fsuid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
    let path = format!("/proc/{pid}/mem");
    let allowed = match std::fs::File::open(&path) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    };
    // SAFETY: as above; restoring the previous fs ids, then the saved capability sets.
    unsafe {
        libc::setfsuid(old_fsuid as u32);
        libc::setfsgid(old_fsgid as u32);
    }
    // SAFETY: capset reads the two Data records saved above; raising back to the permitted
    // set we had is allowed.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, saved.as_ptr()) })?;
    allowed
}

/// Forks into a new pid namespace and a new mount namespace: the child is pid 1 (the init) of
/// the new pid namespace. The caller must be single-threaded, as with fork(2).
pub fn fork_into_new_pid_ns() -> io::Result<Forked> {
    clone_like_fork((libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64, None)
}

/// In a new mount namespace: makes every mount private (nothing propagates back out) and
/// mounts a fresh /proc that shows the caller's pid namespace.
pub fn mount_private_proc() -> io::Result<()> {
    let root = std::ffi::CString::new("/").map_err(|_| io::ErrorKind::InvalidInput)?;
    let proc_ = std::ffi::CString::new("/proc").map_err(|_| io::ErrorKind::InvalidInput)?;
    let fstype = std::ffi::CString::new("proc").map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: all strings are valid NUL-terminated strings that outlive the calls; a null
    // source/type/data is allowed for a propagation change.
    unsafe {
        cvt_int(libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        cvt_int(libc::mount(
            fstype.as_ptr(),
            proc_.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ))?;
    }
    Ok(())
}

/// A per-process resource two processes may share (clone flags without CLONE_THREAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// Address space (CLONE_VM, e.g. a vfork child that has not exec'd yet).
    Memory = 1,
    /// fd table (CLONE_FILES).
    Files = 2,
    /// cwd/root/umask (CLONE_FS).
    Fs = 3,
    /// Signal handlers (CLONE_SIGHAND).
    SignalHandlers = 4,
}

/// kcmp: whether processes `a` and `b` share `what`.
pub fn shares(a: Pid, b: Pid, what: Shared) -> io::Result<bool> {
    // SAFETY: kcmp with these types takes no pointers.
    let r = cvt(unsafe { libc::syscall(libc::SYS_kcmp, a, b, what as libc::c_long, 0, 0) })?;
    Ok(r == 0)
}

/// Waits for child `pid` to exit and reaps it.
pub fn wait_exited(pid: Pid) -> io::Result<()> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int into `status`.
        match cvt_int(unsafe { libc::waitpid(pid, &mut status, 0) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Runs `f` with the file identity of root (fsuid/fsgid 0, which also brings back the
/// file-related capabilities such as CAP_DAC_READ_SEARCH), then puts the previous file identity
/// back. For the few operations a dumper needs root's file identity for while it otherwise
/// acts as the user it works for (opening an inotify watch's object by the file handle the
/// kernel reported).
pub fn with_root_fs_identity<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: setfsuid/setfsgid take no pointers; each returns the previous id, which is put
    // back below.
    let (old_uid, old_gid) = unsafe { (libc::setfsuid(0), libc::setfsgid(0)) };
    let r = f();
    // SAFETY: as above.
    unsafe {
        libc::setfsgid(old_gid as u32);
        libc::setfsuid(old_uid as u32);
    }
    r
}

/// The filesystem type (statfs f_type) of an open file.
pub fn fs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: statfs is plain data; fstatfs writes one into `st`.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one statfs into the struct we own.
    cvt_int(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st.f_type as i64)
}
