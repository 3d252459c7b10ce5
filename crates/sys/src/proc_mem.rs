//! Reading and writing another process's memory with process_vm_readv(2)/process_vm_writev(2).

use crate::{cvt, Pid};
use std::io;

/// Copies `buf.len()` bytes from `remote_addr` in `pid` into `buf`. Returns how many bytes were
/// copied (short when part of the range is not mapped or not readable).
pub fn read(pid: Pid, remote_addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: remote_addr as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: the local iovec covers exactly `buf`, which we own mutably; the remote iovec is
    // only interpreted in the other process's address space by the kernel.
    let n = cvt(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as libc::c_long)?;
    Ok(n as usize)
}

/// Copies `buf` into `pid` at `remote_addr`. Returns how many bytes were copied.
pub fn write(pid: Pid, remote_addr: u64, buf: &[u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: remote_addr as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: the kernel only reads from the local iovec, which covers exactly `buf`.
    let n = cvt(unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) } as libc::c_long)?;
    Ok(n as usize)
}

/// Reads the whole range or fails with `UnexpectedEof` naming the address.
pub fn read_exact(pid: Pid, remote_addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = read(pid, remote_addr + done as u64, &mut buf[done..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read at {:#x}", remote_addr + done as u64),
            ));
        }
        done += n;
    }
    Ok(())
}

/// Writes the whole buffer or fails with `WriteZero` naming the address.
pub fn write_all(pid: Pid, remote_addr: u64, buf: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = write(pid, remote_addr + done as u64, &buf[done..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write at {:#x}", remote_addr + done as u64),
            ));
        }
        done += n;
    }
    Ok(())
}
