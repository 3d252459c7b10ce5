//! Typed wrappers for the Linux system calls stasis needs.
//!
//! This is the only crate of the workspace that contains `unsafe` code: every raw system call is
//! wrapped here exactly once, with owned file descriptors and `io::Result` errors, so that the
//! engine above it can stay `deny(unsafe_code)`.
#![allow(unsafe_code)]

pub mod anon_files;
pub mod fs;
pub mod kabi;
pub mod proc_mem;
pub mod process;
pub mod ptrace;
pub mod sock_diag;
pub mod socket;

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

/// Same as [`cvt`] for functions returning `c_int`.
pub(crate) fn cvt_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
