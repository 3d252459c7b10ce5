//! Typed wrappers for the Linux system calls stasis needs.
//!
//! This is the only crate of the workspace that contains `unsafe` code: every raw system call is
//! wrapped here exactly once, with owned file descriptors and `io::Result` errors, so that the
//! engine above it can stay `deny(unsafe_code)`.
//!
//! The generic calls (pipes, pidfds, eventfd, timerfd, epoll, inotify, memfd, fcntl, seeks,
//! sockets and descriptor passing, statfs/statx, openat2, mount, ...) go through rustix; what
//! rustix does not have, or has in a form that cannot hold what the kernel answers (a pid 0), is
//! written here by hand: ptrace, kcmp, clone3 with `set_tid`, file handles, process_vm_*,
//! sock_diag messages, signal masks and dispositions, capabilities and fs ids, prlimit, prctl,
//! getsid/getpgid, SO_PEERCRED/SO_PEERPIDFD, the passwd and group databases (getpwuid_r,
//! getgrouplist), sched_getattr/sched_setattr, the userfaultfd ioctls and messages.
//!
//! A function whose safety depends on its caller is an `unsafe fn` with a `# Safety` section.
//! The ones that work on descriptor *numbers* (closing, duplicating onto, writing to a number)
//! also exist as safe methods of [`process::ForkedChild`], the token the fork wrappers hand to
//! a freshly forked child, which is the one place where a table of numbers is laid out; the
//! fork wrappers themselves refuse to fork a process that has more than one thread.
#![allow(unsafe_code)]

pub mod anon_files;
pub mod buffer;
pub mod fs;
pub mod inet;
pub mod kabi;
pub mod netlink;
pub mod packet;
pub mod privilege;
pub mod proc_mem;
pub mod process;
pub mod ptrace;
pub mod random;
pub mod sched;
pub mod sock_diag;
pub mod socket;
pub mod tty;
pub mod unix_socket;
pub mod userfaultfd;
pub mod users;
pub mod wp;

pub use libc::user_regs_struct as UserRegs;

/// A process or thread id as the kernel knows it.
pub type Pid = i32;

use std::io;

/// Turns a `-1`-style libc return value into an `io::Result`.
pub(crate) fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A descriptor number as a `BorrowedFd` for one call; a negative number (which a
/// `BorrowedFd` cannot hold) gives `EBADF`, as the kernel would.
///
/// # Safety
///
/// A non-negative `fd` must stay open for as long as the returned borrow is used.
pub(crate) unsafe fn borrow_number<'a>(
    fd: std::os::fd::RawFd,
) -> io::Result<std::os::fd::BorrowedFd<'a>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` is not -1, and the caller keeps it open while the borrow is used.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// Same as [`cvt`] for functions returning `c_int`.
pub(crate) fn cvt_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
