//! Directory-relative file operations that never leave their directory: openat2 with
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, renameat, unlinkat.

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Opens `name` relative to `dir` without following any symlink and without leaving `dir`.
/// `flags` are open(2) flags (O_CLOEXEC is always added); `mode` applies with O_CREAT.
pub fn open_beneath(dir: BorrowedFd<'_>, name: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let flags = OFlags::from_bits_retain((flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u32);
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_bits_retain(mode)
    } else {
        Mode::empty()
    };
    Ok(rustix::fs::openat2(
        dir,
        name,
        flags,
        mode,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Renames `from` to `to` inside `dir` (replacing `to`).
pub fn rename_in(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::fs::renameat(dir, from, dir, to)?)
}

/// Removes the file `name` inside `dir`.
pub fn unlink_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
}
