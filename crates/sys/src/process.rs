//! Processes, pidfds, file descriptors and per-process attributes.

use crate::{cvt, cvt_int, Pid};
use rustix::process::Pid as RPid;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A positive pid as rustix wants it; anything else is the kernel's answer to it (`err`).
pub(crate) fn rpid(pid: Pid, err: i32) -> io::Result<RPid> {
    if pid > 0 {
        RPid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(err))
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// `pid` for the calls where 0 means the caller (`None`); negative pids get `err`.
fn rpid_or_self(pid: Pid, err: i32) -> io::Result<Option<RPid>> {
    if pid == 0 {
        Ok(None)
    } else {
        rpid(pid, err).map(Some)
    }
}

/// Opens a pidfd for `pid`: a handle that can never refer to a recycled pid.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    let pid = rpid(pid, libc::EINVAL)?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Duplicates file descriptor `target_fd` of the process behind `pidfd` into this process. The
/// copy shares the file description (offset, flags) with the original.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target_fd: RawFd) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_getfd(
        pidfd,
        target_fd,
        rustix::process::PidfdGetfdFlags::empty(),
    )?)
}

/// Sends `sig` to the process behind `pidfd`; 0 only checks that the process still exists.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    if let Some(sig) = rustix::process::Signal::from_named_raw(sig) {
        return Ok(rustix::process::pidfd_send_signal(pidfd, sig)?);
    }
    // rustix has no `Signal` for 0 (the existence check) nor for real-time signals.
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

/// Sends a signal to the one thread `tid` with tkill(2) (no thread group to name: for a thread
/// the caller holds stopped, whose id cannot be reused meanwhile).
pub fn tkill(tid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    crate::cvt(unsafe { libc::syscall(libc::SYS_tkill, tid, sig) }).map(drop)
}

/// What a fork wrapper ([`fork`], [`fork_with_pid`], [`fork_with_pid_sharing`],
/// [`fork_into_new_pid_ns`]) returns in each of the two processes.
#[derive(Debug)]
pub enum Forked {
    /// In the new process.
    Child(ForkedChild),
    /// In the caller, with the pid of the new process.
    Parent(Pid),
}

/// Held by the child of a fork wrapper: the proof that this process is a fresh copy of a
/// process that had a single thread, and that it runs the code of a child, which ends with
/// [`exit_now`] or by being taken over (a restore child stops itself and the restorer
/// replaces its whole memory), never by going back into the code of the parent it was copied
/// from.
///
/// That is what makes the operations on descriptor *numbers* below safe here and nowhere else:
/// the `OwnedFd`s and `File`s in the copied memory belong to the parent's code, which never
/// runs again in this process, so the child may renumber its fd table under them (move
/// inherited descriptions to the numbers a restored process had, close the rest). Code given
/// the token must keep to that: it stops using the parent's descriptor objects once it has
/// changed the table, and it never returns.
///
/// Only the fork wrappers create one; it cannot be cloned or sent to another thread.
#[derive(Debug)]
pub struct ForkedChild {
    _single_threaded: PhantomData<*const ()>,
}

impl ForkedChild {
    /// dup3(2) of `old` onto `new` (closing what `new` was), without close-on-exec.
    pub fn dup3_raw(&self, old: RawFd, new: RawFd) -> io::Result<()> {
        // SAFETY: in a forked child the numbers belong to the child's code (see the type).
        unsafe { dup3_raw(old, new) }
    }

    /// fcntl(F_DUPFD_CLOEXEC): duplicates `old` to the lowest free number >= `min`.
    pub fn dup_at_least_raw(&self, old: RawFd, min: RawFd) -> io::Result<RawFd> {
        // SAFETY: as in `dup3_raw`.
        unsafe { dup_at_least_raw(old, min) }
    }

    /// Sets or clears FD_CLOEXEC on `fd`.
    pub fn set_cloexec_raw(&self, fd: RawFd, cloexec: bool) -> io::Result<()> {
        // SAFETY: as in `dup3_raw`.
        unsafe { set_cloexec_raw(fd, cloexec) }
    }

    /// Maps `len` bytes of new private anonymous memory (readable, writable, all zero) at
    /// `addr` in this process, only where nothing is mapped (`MAP_FIXED_NOREPLACE`: EEXIST
    /// when any of the range is taken). For the staging area of a restore child's
    /// copy-on-write memory (`stasis_engine::pages::cow`).
    pub fn map_zero_pages(&self, addr: u64, len: u64) -> io::Result<()> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping, so no memory anything of this
        // process refers to changes; the new mapping is owned by nobody (the restorer
        // replaces the child's whole memory, see the type).
        let got = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if got as u64 != addr {
            return Err(io::Error::other(format!(
                "mmap(MAP_FIXED_NOREPLACE) at {addr:#x} landed at {:#x}",
                got as u64
            )));
        }
        Ok(())
    }

    /// madvise(MADV_DONTNEED) on `len` bytes at `addr`: private anonymous pages there read as
    /// zero again (a copy-on-write page inherited from the parent is let go). Only for memory
    /// of a restore child's copy-on-write staging area, which nothing of this process's code
    /// refers to (the engine checks that every mapping there is anonymous, and placed the area
    /// clear of every mapping the restorer had).
    pub fn discard_pages(&self, addr: u64, len: u64) -> io::Result<()> {
        // SAFETY: no pointer is handed to the kernel for it to write through; the pages
        // discarded are restore staging that no Rust value of the child lives in (see above
        // and the type: the child's memory belongs to the restore, which replaces it).
        let r =
            unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
        crate::cvt_int(r).map(drop)
    }

    /// Whether `fd` has FD_CLOEXEC (F_GETFD; EBADF when nothing is open at `fd`).
    pub fn cloexec_raw(&self, fd: RawFd) -> io::Result<bool> {
        // SAFETY: no pointers; `fd` is a number of the child's (see the type).
        let flags = crate::cvt_int(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
        Ok(flags & libc::FD_CLOEXEC != 0)
    }

    /// The status flags of `fd` (F_GETFL).
    pub fn status_flags_raw(&self, fd: RawFd) -> io::Result<i32> {
        // SAFETY: as in `dup3_raw`; the borrow ends with the call.
        get_status_flags(unsafe { crate::borrow_number(fd)? })
    }

    /// Sets the status flags of `fd` (F_SETFL): see [`set_status_flags`]. Setting O_ASYNC
    /// here is what makes `fd` the number the kernel reports in the siginfo of its I/O
    /// signals.
    pub fn set_status_flags_raw(&self, fd: RawFd, flags: i32) -> io::Result<()> {
        // SAFETY: as in `dup3_raw`; the borrow ends with the call.
        set_status_flags(unsafe { crate::borrow_number(fd)? }, flags)
    }

    /// pidfd_open(pid, PIDFD_NONBLOCK if `nonblock`): a new pidfd, close-on-exec, as a number
    /// of the child's.
    pub fn pidfd_open_raw(&self, pid: Pid, nonblock: bool) -> io::Result<RawFd> {
        let flags = if nonblock { libc::O_NONBLOCK } else { 0 };
        // SAFETY: no pointers; the new descriptor is a number the child's code owns (see the
        // type).
        let fd = crate::cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })?;
        Ok(fd as RawFd)
    }

    /// open(2) of `path` with `flags` (O_CLOEXEC added): a new descriptor, as a number of the
    /// child's.
    pub fn open_raw(&self, path: &std::path::Path, flags: i32) -> io::Result<RawFd> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call; the new descriptor is
        // a number the child's code owns (see the type).
        let fd = crate::cvt_int(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0) })?;
        Ok(fd)
    }

    /// lseek(fd, offset, SEEK_SET).
    pub fn seek_raw(&self, fd: RawFd, offset: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: no pointers; `fd` is a number of the child's (see the type).
        crate::cvt(unsafe { libc::lseek(fd, off, libc::SEEK_SET) } as i64)?;
        Ok(())
    }

    /// Closes `fd`.
    pub fn close_raw(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: as in `dup3_raw`.
        unsafe { close_raw(fd) }
    }

    /// Closes every descriptor in `first..=last`.
    pub fn close_range(&self, first: u32, last: u32) -> io::Result<()> {
        // SAFETY: as in `dup3_raw`.
        unsafe { close_range(first, last) }
    }

    /// write(2) to `fd`.
    pub fn write_raw(&self, fd: RawFd, data: &[u8]) -> io::Result<usize> {
        // SAFETY: as in `dup3_raw`.
        unsafe { write_raw(fd, data) }
    }

    /// Detaches a forked server from what the parent shares with others: stdin, stdout and
    /// stderr go to /dev/null, and every other descriptor of a terminal or other character
    /// device, a pipe or FIFO, or a socket is closed (regular files, directories, and anonymous
    /// descriptors such as userfaultfds and pidfds stay).
    pub fn detach_stdio_and_pipes(&self) {
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for n in 0..3 {
                let _ = self.dup3_raw(null.as_raw_fd(), n);
            }
        }
        let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
            Ok(d) => d
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&n: &RawFd| n > 2)
                .collect(),
            Err(_) => return,
        };
        for fd in fds {
            // SAFETY: `fd` is only looked at for this call; a number closed meanwhile gives
            // EBADF.
            let Ok(b) = (unsafe { crate::borrow_number(fd) }) else {
                continue;
            };
            let Ok(st) = rustix::fs::fstat(b) else {
                continue;
            };
            let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
            if matches!(
                kind,
                rustix::fs::FileType::CharacterDevice
                    | rustix::fs::FileType::Fifo
                    | rustix::fs::FileType::Socket
            ) {
                let _ = self.close_raw(fd);
            }
        }
    }

    /// EPOLL_CTL_ADD of `fd` to the epoll at `epfd`: see [`crate::anon_files::epoll_add_raw`].
    pub fn epoll_add_raw(&self, epfd: RawFd, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        // SAFETY: as in `dup3_raw`.
        unsafe { crate::anon_files::epoll_add_raw(epfd, fd, events, data) }
    }

    /// Drops the queued events of the inotify instance at `fd`: see
    /// [`crate::anon_files::inotify_discard_events_raw`].
    pub fn inotify_discard_events_raw(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: as in `dup3_raw`.
        unsafe { crate::anon_files::inotify_discard_events_raw(fd) }
    }
}

/// Fails unless the calling process has a single thread. Forking is only sound then: the
/// child has nothing but a copy of the calling thread, and a lock or data structure another
/// thread was in the middle of changing (the allocator's, say) would stay half-changed in it.
/// The check cannot race: with one thread, nothing but the caller could start another.
fn ensure_single_threaded() -> io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Field 20 (num_threads), the 18th after the parenthesized command name.
    let threads = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no thread count in /proc/self/stat",
            )
        })?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork a process with {threads} threads: only a single-threaded one can be"
        )));
    }
    Ok(())
}

fn forked(ret: Pid) -> Forked {
    if ret == 0 {
        Forked::Child(ForkedChild {
            _single_threaded: PhantomData,
        })
    } else {
        Forked::Parent(ret)
    }
}

/// Forks this process so that the child gets exactly `pid` (clone3 with `set_tid`). Fails with
/// `EEXIST` when the pid is in use, and when the caller has more than one thread (as with
/// fork(2), the child would only have the calling thread).
pub fn fork_with_pid(pid: Pid) -> io::Result<Forked> {
    clone_like_fork(0, Some(pid))
}

/// Like [`fork_with_pid`], but the child is a child of the caller's parent (CLONE_PARENT), a
/// sibling of the caller: for a process forked only to create it, which exits afterwards
/// while the parent waits for the child. Its exit signal is the caller's own (SIGCHLD for a
/// process made by [`fork`]).
pub fn fork_with_pid_as_sibling(pid: Pid) -> io::Result<Forked> {
    clone_like_fork(libc::CLONE_PARENT as u64, Some(pid))
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
/// gets in the innermost pid namespace. Fails when the caller has more than one thread.
fn clone_like_fork(flags: u64, pid: Option<Pid>) -> io::Result<Forked> {
    ensure_single_threaded()?;
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
        // With CLONE_PARENT the child gets the caller's own exit signal; clone3 wants 0.
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        set_tid: if pid.is_some() {
            tids.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        ..Default::default()
    };
    let r = retry_released_id(pid, || {
        // SAFETY: clone3 without CLONE_VM behaves like fork(): the child gets a copy of our
        // memory and continues from here with a return value of 0. The process has a single
        // thread (checked above), so the copy is consistent. `args` and `tids` outlive the
        // call.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        })
    })?;
    Ok(forked(r as Pid))
}

/// Runs `create` (a clone3 with `set_tid` = `id`, when given) again while it fails with
/// EEXIST although no task has that id, for up to [`RELEASED_ID_WAIT`]. A process's ids are
/// not all free when its parent's wait returns: measured on 6.18, a thread id of a process
/// killed while someone held a pidfd of it stayed taken, with no task, for up to 210 ms after
/// the process was reaped (never without the pidfd). An id that a task has (alive or a
/// zombie: it is in /proc) is really in use: the EEXIST is returned at once.
pub fn retry_released_id<T>(
    id: Option<Pid>,
    create: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    retry_released_id_with(
        id,
        |e: &io::Error| e.raw_os_error() == Some(libc::EEXIST),
        create,
    )
}

/// [`retry_released_id`] for a `create` whose errors are not `io::Error`s: `is_eexist` says
/// which of them is EEXIST.
pub fn retry_released_id_with<T, E>(
    id: Option<Pid>,
    is_eexist: impl Fn(&E) -> bool,
    mut create: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let start = std::time::Instant::now();
    loop {
        match create() {
            Err(e)
                if is_eexist(&e)
                    && id.is_some_and(id_being_released)
                    && start.elapsed() < RELEASED_ID_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

/// Whether no task has the id `id` (in our pid namespace's /proc): taken, it is being
/// released.
pub fn id_being_released(id: Pid) -> bool {
    matches!(
        std::fs::symlink_metadata(format!("/proc/{id}")),
        Err(e) if e.kind() == io::ErrorKind::NotFound
    )
}

/// How long [`retry_released_id`] waits for an id being released.
pub const RELEASED_ID_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Terminates the calling process immediately, without running destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// Creates an anonymous memory file.
pub fn memfd_create(name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        name,
        rustix::fs::MemfdFlags::CLOEXEC,
    )?)
}

/// Creates a pipe; returns (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Duplicates up to `len` bytes from pipe `from` into pipe `to` without consuming them.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    Ok(rustix::pipe::tee(
        from,
        to,
        len,
        rustix::pipe::SpliceFlags::NONBLOCK,
    )?)
}

/// Bytes waiting to be read in a pipe (FIONREAD).
pub fn pipe_bytes_queued(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::io::ioctl_fionread(fd)? as usize)
}

/// Capacity of a pipe in bytes.
pub fn pipe_capacity(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_getpipe_size(fd)?)
}

/// Sets the capacity of a pipe.
pub fn set_pipe_capacity(fd: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    rustix::pipe::fcntl_setpipe_size(fd, size)?;
    Ok(())
}

/// File status flags (F_GETFL).
pub fn get_status_flags(fd: BorrowedFd<'_>) -> io::Result<i32> {
    Ok(rustix::fs::fcntl_getfl(fd)?.bits() as i32)
}

/// Sets file status flags (F_SETFL; only O_APPEND, O_NONBLOCK, O_ASYNC, O_DIRECT, O_NOATIME
/// can change).
pub fn set_status_flags(fd: BorrowedFd<'_>, flags: i32) -> io::Result<()> {
    Ok(rustix::fs::fcntl_setfl(
        fd,
        rustix::fs::OFlags::from_bits_retain(flags as u32),
    )?)
}

/// Who receives the I/O signals of a file description (`struct f_owner_ex`, F_GETOWN_EX): a
/// thread ([`F_OWNER_TID`]), a process ([`F_OWNER_PID`]) or a process group
/// ([`F_OWNER_PGRP`]); `pid` 0 means nobody.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoOwner {
    pub kind: i32,
    pub pid: Pid,
}

/// [`IoOwner::kind`]: a thread (F_SETOWN_EX with F_OWNER_TID).
pub const F_OWNER_TID: i32 = 0;
/// [`IoOwner::kind`]: a process (F_SETOWN, F_SETOWN_EX with F_OWNER_PID).
pub const F_OWNER_PID: i32 = 1;
/// [`IoOwner::kind`]: a process group (F_SETOWN with a negative id, F_SETOWN_EX with
/// F_OWNER_PGRP).
pub const F_OWNER_PGRP: i32 = 2;

/// fcntl commands glibc's libc crate does not name (asm-generic/fcntl.h).
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;

/// `struct f_owner_ex`.
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// The owner of the I/O signals of the description behind `fd` (F_GETOWN_EX). The kernel
/// reports pid 0 when the owner no longer exists.
pub fn io_owner(fd: BorrowedFd<'_>) -> io::Result<IoOwner> {
    let mut ex = FOwnerEx { kind: 0, pid: 0 };
    // SAFETY: F_GETOWN_EX writes one `struct f_owner_ex` (which `FOwnerEx` lays out) through
    // the pointer, which points to our local for the duration of the call.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut ex as *mut FOwnerEx) })?;
    Ok(IoOwner {
        kind: ex.kind,
        pid: ex.pid,
    })
}

/// Makes `owner` receive the I/O signals of the description behind `fd` (F_SETOWN_EX). The
/// kernel records the caller's credentials for the permission check of each signal.
pub fn set_io_owner(fd: BorrowedFd<'_>, owner: IoOwner) -> io::Result<()> {
    let ex = FOwnerEx {
        kind: owner.kind,
        pid: owner.pid,
    };
    // SAFETY: F_SETOWN_EX reads one `struct f_owner_ex` through the pointer, which points to
    // our local for the duration of the call.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &ex as *const FOwnerEx) })?;
    Ok(())
}

/// The signal the description behind `fd` sends for I/O (F_GETSIG; 0: SIGIO without
/// siginfo details).
pub fn io_signal(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: F_GETSIG takes no argument and touches no memory of ours.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) })
}

/// Sets the signal the description behind `fd` sends for I/O (F_SETSIG; 0: SIGIO).
pub fn set_io_signal(fd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: F_SETSIG takes an integer argument and touches no memory of ours.
    cvt_int(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig) })?;
    Ok(())
}

/// Sets or clears FD_CLOEXEC on a raw descriptor number of this process.
///
/// # Safety
///
/// `fd` must not be owned by anything else in the process (an `OwnedFd`, a `File`, ...) that
/// relies on its flags. [`ForkedChild::set_cloexec_raw`] is the safe form for a forked child.
pub unsafe fn set_cloexec_raw(fd: RawFd, cloexec: bool) -> io::Result<()> {
    let flags = if cloexec {
        rustix::io::FdFlags::CLOEXEC
    } else {
        rustix::io::FdFlags::empty()
    };
    // SAFETY: the caller guarantees that nothing else relies on `fd` (see above); the borrow
    // ends with the call, and the kernel answers EBADF for a number that is not open.
    let fd = unsafe { crate::borrow_number(fd)? };
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}

/// dup3(2) on raw descriptor numbers: `new` becomes a copy of `old` (without close-on-exec),
/// closing what `new` was. For a freshly forked restore child laying out its fd table, where
/// descriptors are numbers in a table being rebuilt, not owned objects.
///
/// # Safety
///
/// Nothing else in the process may own or borrow `new` (it is closed behind its back) and use
/// it afterwards. [`ForkedChild::dup3_raw`] is the safe form for a forked child.
pub unsafe fn dup3_raw(old: RawFd, new: RawFd) -> io::Result<()> {
    // rustix's dup3 only replaces an `OwnedFd`: a bare number needs the raw call.
    // SAFETY: no pointers; the kernel validates both numbers; the caller guarantees that `new`
    // may be replaced.
    cvt_int(unsafe { libc::dup3(old, new, 0) }).map(drop)
}

/// fcntl(F_DUPFD_CLOEXEC): duplicates `old` to the lowest free number >= `min`. The copy is
/// returned as a number, owned by nobody.
///
/// # Safety
///
/// `old` must be open for the duration of the call and not be closed by anything else
/// meanwhile; the caller takes charge of closing the copy. [`ForkedChild::dup_at_least_raw`]
/// is the safe form for a forked child.
pub unsafe fn dup_at_least_raw(old: RawFd, min: RawFd) -> io::Result<RawFd> {
    use std::os::fd::IntoRawFd;
    // SAFETY: the caller guarantees that `old` stays open during the call.
    let old = unsafe { crate::borrow_number(old)? };
    Ok(rustix::io::fcntl_dupfd_cloexec(old, min)?.into_raw_fd())
}

/// Closes every descriptor in `first..=last`.
///
/// # Safety
///
/// None of those descriptors may be owned or borrowed by anything in the process that uses or
/// closes it afterwards (this is for a freshly forked child laying out its fd table, or a hook
/// run between fork and exec). [`ForkedChild::close_range`] is the safe form for a forked
/// child.
pub unsafe fn close_range(first: u32, last: u32) -> io::Result<()> {
    // rustix has no close_range.
    // SAFETY: no pointers; the caller guarantees that the descriptors may be closed.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}

/// Closes one raw descriptor number.
///
/// # Safety
///
/// `fd` must not be owned or borrowed by anything else in the process that uses or closes it
/// afterwards. [`ForkedChild::close_raw`] is the safe form for a forked child.
pub unsafe fn close_raw(fd: RawFd) -> io::Result<()> {
    // Not rustix::io::close, which cannot report errors.
    // SAFETY: the caller guarantees that nothing else holds `fd`.
    cvt_int(unsafe { libc::close(fd) }).map(drop)
}

/// Replaces the standard error of this process (descriptor 2) with a copy of `to`.
pub fn redirect_stderr(to: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::stdio::dup2_stderr(to)?)
}

/// Makes the process that `cmd` starts close every inherited descriptor above standard error
/// when it executes its program (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)` between fork and
/// exec): descriptors of whoever started this process (a build tool's jobserver pipe, say) would
/// tie the new process to processes it has nothing to do with.
pub fn close_inherited_fds_on_exec(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: the hook runs in the forked child between fork and exec, where only
    // async-signal-safe calls may be made: it makes one system call, which allocates nothing and
    // touches no memory. It only marks descriptors close-on-exec (the child's own table), so the
    // descriptor through which the standard library reports a failed exec keeps working.
    unsafe {
        cmd.pre_exec(|| {
            cvt(libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                CLOSE_RANGE_CLOEXEC,
            ))
            .map(drop)
        })
    }
}

/// setsid(2).
pub fn setsid() -> io::Result<Pid> {
    Ok(rustix::process::setsid()?.as_raw_pid())
}

/// setpgid(2): 0 for `pid` is the caller, 0 for `pgid` is `pid`.
pub fn setpgid(pid: Pid, pgid: Pid) -> io::Result<()> {
    let pgid = rpid_or_self(pgid, libc::EINVAL)?;
    let pid = rpid_or_self(pid, libc::ESRCH)?;
    Ok(rustix::process::setpgid(pid, pgid)?)
}

// getsid and getpgid are not rustix's: those return a non-zero `Pid`, but the kernel answers 0
// for a session or group whose leader is outside our pid namespace (as for the init of a
// `--pid-ns` restore).

/// getsid(2) of this process (0) or another; 0 when the session's leader is outside our pid
/// namespace.
pub fn getsid(pid: Pid) -> io::Result<Pid> {
    // SAFETY: no pointers.
    cvt_int(unsafe { libc::getsid(pid) })
}

/// getpgid(2) of this process (0) or another; 0 when the group's leader is outside our pid
/// namespace.
pub fn getpgid(pid: Pid) -> io::Result<Pid> {
    // SAFETY: no pointers.
    cvt_int(unsafe { libc::getpgid(pid) })
}

/// Sets the umask, returning the old one.
pub fn umask(mask: u32) -> u32 {
    rustix::process::umask(rustix::fs::Mode::from_bits_retain(mask)).bits()
}

/// chroot(2).
pub fn chroot(path: &std::path::Path) -> io::Result<()> {
    Ok(rustix::process::chroot(path)?)
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

/// Whether the calling process is a child subreaper (PR_GET_CHILD_SUBREAPER).
pub fn is_child_subreaper() -> io::Result<bool> {
    let mut v: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer, which points to `v`.
    cvt_int(unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut v as *mut libc::c_int,
            0u64,
            0u64,
            0u64,
        )
    })?;
    Ok(v != 0)
}

/// Makes the calling process a child subreaper, or not (PR_SET_CHILD_SUBREAPER).
pub fn set_child_subreaper(on: bool) -> io::Result<()> {
    prctl_int(libc::PR_SET_CHILD_SUBREAPER, u64::from(on), 0).map(drop)
}

/// Sets the calling thread's name (comm), at most 15 bytes (up to the first NUL, if any).
pub fn set_thread_name(name: &[u8]) -> io::Result<()> {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    let name = std::ffi::CStr::from_bytes_until_nul(&buf)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::thread::set_name(name)?)
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

/// Where the kernel mapped this process's vDSO (its ELF header), from the auxiliary vector
/// (AT_SYSINFO_EHDR); `None` without one.
pub fn vdso_base() -> Option<u64> {
    // SAFETY: getauxval only looks the value up in the auxiliary vector the kernel gave this
    // process; it takes no pointer and returns 0 when the entry is missing.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    (base != 0).then_some(base)
}

/// The kernel's release (`uname -r`), from uname(2).
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// Effective uid of the caller.
pub fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Process id of the caller.
pub fn getpid() -> Pid {
    rustix::process::getpid().as_raw_pid()
}

/// Thread id of the caller.
pub fn gettid() -> Pid {
    rustix::thread::gettid().as_raw_pid()
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
    match rustix::fs::seek(fd, rustix::fs::SeekFrom::Data(from)) {
        Ok(off) => Ok(Some(off)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// lseek(SEEK_HOLE): the first offset >= `from` in a hole (the file size at most).
pub fn seek_hole(fd: BorrowedFd<'_>, from: u64) -> io::Result<u64> {
    Ok(rustix::fs::seek(fd, rustix::fs::SeekFrom::Hole(from))?)
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
///
/// # Safety
///
/// `fd` must stay open during the call, and writing to it must not disturb anything else in the
/// process that owns it. [`ForkedChild::write_raw`] is the safe form for a forked child.
pub unsafe fn write_raw(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the caller guarantees that `fd` may be written to during the call.
    let fd = unsafe { crate::borrow_number(fd)? };
    Ok(rustix::io::write(fd, data)?)
}

/// rt_sigaction(2) of the calling process: `sig` to SIG_DFL (or SIG_IGN with `ignore`), with
/// no flag, mask bit or restorer (unlike the C library's `signal` and `sigaction`, which add
/// `SA_RESTART`, the signal in the mask and their restorer).
fn set_plain_disposition(sig: i32, ignore: bool) -> io::Result<()> {
    let act = crate::kabi::KernelSigaction {
        handler: if ignore { libc::SIG_IGN as u64 } else { 0 },
        ..Default::default()
    };
    // SAFETY: rt_sigaction reads one kernel_sigaction we own (no handler code: SIG_DFL or
    // SIG_IGN; sigsetsize 8, the kernel's) and writes no old action (null).
    cvt(unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &act as *const crate::kabi::KernelSigaction,
            std::ptr::null_mut::<crate::kabi::KernelSigaction>(),
            8usize,
        )
    })
    .map(drop)
}

/// Sets every catchable signal of the calling process back to its default action and clears
/// the alternate signal stack: a freshly forked restore child must not keep handlers or stacks
/// that point into the restorer's memory.
///
/// The actions are those of a process that never touched them: no flags, an empty mask, no
/// restorer (rt_sigaction(2) itself: the C library's `signal` sets `SA_RESTART`, the signal
/// in the mask and its own restorer, an address of the restorer's C library, which a dump of
/// the restored process then found and kept, cycle after cycle).
pub fn reset_signal_dispositions() -> io::Result<()> {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || (32..34).contains(&sig) {
            continue;
        }
        set_plain_disposition(sig, false)?;
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
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
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

/// fork(2). Fails when the caller has more than one thread (the child would only have the
/// calling thread).
pub fn fork() -> io::Result<Forked> {
    ensure_single_threaded()?;
    // SAFETY: the process has a single thread (checked above), so the child has a consistent
    // copy of the whole process.
    let r = cvt_int(unsafe { libc::fork() })?;
    Ok(forked(r))
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
    match rustix::io::read(fd, &mut info) {
        Ok(_) => Ok(Some(
            u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32,
        )),
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// poll(2) for readability on `fds`; returns which are readable (or hung up). EINTR counts as
/// "nothing ready". A negative `timeout_ms` waits for ever.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Vec<bool>> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut p: Vec<PollFd<'_>> = fds
        .iter()
        .map(|f| PollFd::from_borrowed_fd(*f, PollFlags::IN))
        .collect();
    let timeout = (timeout_ms >= 0).then(|| Timespec {
        tv_sec: (timeout_ms / 1000).into(),
        tv_nsec: ((timeout_ms % 1000) * 1_000_000).into(),
    });
    match rustix::event::poll(&mut p, timeout.as_ref()) {
        Ok(_) => Ok(p.iter().map(|x| !x.revents().is_empty()).collect()),
        Err(rustix::io::Errno::INTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(e.into()),
    }
}

/// Sets SO_RCVTIMEO and SO_SNDTIMEO on a socket (a zero `timeout`: none).
pub fn set_socket_timeouts(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<()> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    let timeout = (!timeout.is_zero()).then_some(timeout);
    for which in [Timeout::Recv, Timeout::Send] {
        set_socket_timeout(fd, which, timeout)?;
    }
    Ok(())
}

/// Whether `fd` is a listening SOCK_SEQPACKET socket (for socket activation).
pub fn is_listening_seqpacket(fd: BorrowedFd<'_>) -> bool {
    use rustix::net::sockopt::{socket_acceptconn, socket_type};
    socket_type(fd).ok() == Some(rustix::net::SocketType::SEQPACKET)
        && socket_acceptconn(fd).ok() == Some(true)
}

/// Takes the descriptors that socket activation passed to this process (as sd_listen_fds(3)):
/// when `LISTEN_PID` is this process, the `LISTEN_FDS` descriptors from 3 on, each checked to
/// be open; none otherwise.
///
/// `LISTEN_PID` says that they were handed to this very process when it started, so no code of
/// it opened them; and only the first call in a process takes them (later calls get none), so
/// none of them gets two owners.
pub fn take_socket_activation_fds() -> io::Result<Vec<OwnedFd>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<Pid>().ok())
        == Some(getpid());
    let count: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !ours || count <= 0 || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    (3..3_i32.saturating_add(count))
        .map(|fd| {
            // SAFETY: F_GETFD takes no argument; it only checks that the number is open.
            cvt_int(unsafe { libc::fcntl(fd, libc::F_GETFD) })
                .map_err(|e| io::Error::new(e.kind(), format!("fd {fd}: {e}")))?;
            // SAFETY: the number is open and was handed to this process at its start, to be
            // taken here once (see above).
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}

/// Waits until child `pid` has exited, without reaping it (waitid WEXITED | WNOWAIT).
pub fn wait_exited_nowait(pid: Pid) -> io::Result<()> {
    use rustix::process::{WaitId, WaitIdOptions};
    let pid = rpid(pid, libc::EINVAL)?;
    loop {
        match rustix::process::waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Discards a pending SIGCHLD (setting a pending signal to SIG_IGN discards it), leaving the
/// disposition at its default.
pub fn discard_pending_sigchld() -> io::Result<()> {
    // The kernel's default action exactly (see `reset_signal_dispositions`: not `signal`).
    set_plain_disposition(libc::SIGCHLD, true)?;
    set_plain_disposition(libc::SIGCHLD, false)?;
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
    use rustix::mount::{MountFlags, MountPropagationFlags};
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )?;
    rustix::mount::mount(
        "proc",
        "/proc",
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )?;
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
    let pid = rpid(pid, libc::ECHILD)?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
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
    Ok(rustix::fs::fstatfs(fd)?.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_a_task_has_is_in_use_at_once() {
        // Our own pid: a task has it, so the EEXIST is final (no wait for a release).
        let me = getpid();
        assert!(!id_being_released(me));
        let started = std::time::Instant::now();
        let mut calls = 0;
        let r: io::Result<()> = retry_released_id(Some(me), || {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::EEXIST))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert_eq!(calls, 1);
        assert!(started.elapsed() < RELEASED_ID_WAIT / 4);
    }

    #[test]
    fn an_id_without_a_task_is_waited_for() {
        // An id no task has (the last pid there can be is never handed out here): EEXIST is
        // tried again until it goes.
        let free = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<Pid>().ok())
            .map_or(4_194_303, |m| m - 1);
        assert!(id_being_released(free));
        let mut calls = 0;
        let r = retry_released_id(Some(free), || {
            calls += 1;
            if calls < 3 {
                Err(io::Error::from_raw_os_error(libc::EEXIST))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 3);
    }
    use std::os::fd::AsFd;

    #[test]
    fn io_owner_and_signal_round_trip() {
        let (r, _w) = pipe().unwrap();
        assert_eq!(io_owner(r.as_fd()).unwrap().pid, 0, "no owner at first");
        assert_eq!(io_signal(r.as_fd()).unwrap(), 0);
        let me = getpid();
        for kind in [F_OWNER_PID, F_OWNER_TID, F_OWNER_PGRP] {
            let pid = if kind == F_OWNER_PGRP {
                getpgid(0).unwrap()
            } else {
                me
            };
            set_io_owner(r.as_fd(), IoOwner { kind, pid }).unwrap();
            assert_eq!(io_owner(r.as_fd()).unwrap(), IoOwner { kind, pid });
        }
        set_io_signal(r.as_fd(), libc::SIGUSR2).unwrap();
        assert_eq!(io_signal(r.as_fd()).unwrap(), libc::SIGUSR2);
        assert!(set_io_signal(r.as_fd(), 200).is_err(), "not a signal");
    }

    #[test]
    fn fork_refuses_a_process_with_threads() {
        // The test harness runs this on a thread of its own: there are at least two.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        for r in [fork(), fork_with_pid(1), fork_into_new_pid_ns()] {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("threads"), "{e}");
        }
        drop(tx);
        let _ = other.join();
    }

    #[test]
    fn inherited_descriptors_are_closed_at_exec() {
        let file = std::fs::File::open("/").unwrap();
        // SAFETY: test: dup of an open descriptor, which takes no pointers.
        let raw = unsafe { libc::dup(file.as_raw_fd()) };
        assert!(raw >= 0);
        // SAFETY: the copy (without close-on-exec) was just made and is owned by nobody else.
        let inherited = unsafe { OwnedFd::from_raw_fd(raw) };
        let probe = |close: bool| {
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(format!(
                "test -e /proc/self/fd/{} && echo open || echo closed",
                inherited.as_raw_fd()
            ));
            if close {
                close_inherited_fds_on_exec(&mut cmd);
            }
            String::from_utf8(cmd.output().unwrap().stdout).unwrap()
        };
        assert_eq!(probe(false), "open\n");
        assert_eq!(probe(true), "closed\n");
        // The descriptor of this process is untouched.
        assert!(fs_type(inherited.as_fd()).is_ok());
    }

    #[test]
    fn pids_and_sessions() {
        assert_eq!(getpid() as u32, std::process::id());
        assert_eq!(getsid(0).unwrap(), getsid(getpid()).unwrap());
        assert_eq!(getpgid(0).unwrap(), getpgid(getpid()).unwrap());
        assert!(pidfd_open(0).is_err() && pidfd_open(-3).is_err());
        let pidfd = pidfd_open(getpid()).unwrap();
        pidfd_send_signal(pidfd.as_fd(), 0).unwrap();
        assert_eq!(
            wait_exited(-2).unwrap_err().raw_os_error(),
            Some(libc::ECHILD)
        );
    }
}
