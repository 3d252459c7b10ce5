//! Directory-relative file operations that never leave their directory: openat2 with
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, renameat, unlinkat, the
//! names a directory holds; mkfifo; and starting the writeback of a file's range.

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

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

/// Creates `path`, a new file of this user's alone (mode 0600; an existing file or a
/// symbolic link there is an error), open for writing.
pub fn create_private(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens the directory `path` relative to `dir` (or `path` itself when absolute) with the
/// ordinary path resolution (`..` and symbolic links followed, as the caller's credentials
/// allow): for a path a user named, opened with that user's credentials.
pub fn open_dir_at(dir: BorrowedFd<'_>, path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
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

/// Starts writing `len` bytes of `file` at `offset` to its device, without waiting
/// (sync_file_range with SYNC_FILE_RANGE_WRITE): an fsync later has less to wait for. Nothing
/// is made durable by this call alone.
pub fn start_writeback(file: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: sync_file_range reads no memory of ours; `file` is a valid descriptor.
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the calling process may create files in the directory `dir` (write and search
/// permission with its effective ids, a filesystem mounted read-write, a directory not
/// immutable): faccessat(dir, ".", W_OK | X_OK, AT_EACCESS). Nothing is created.
pub fn check_dir_writable(dir: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::accessat(
        dir,
        ".",
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        AtFlags::EACCESS,
    )
    .map_err(io::Error::from)
}

/// The names of the entries of `dir` (without `.` and `..`), read through a new descriptor of
/// it. Names that are not UTF-8 are returned with their invalid bytes replaced (U+FFFD).
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy();
        if name != "." && name != ".." {
            names.push(name.into_owned());
        }
    }
    Ok(names)
}

/// Creates a FIFO (named pipe) at `path` with permission bits `mode` (less the umask), like
/// mkfifo(3).
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        Mode::from_bits_retain(mode & 0o7777),
    )?)
}

/// Opens the directory at the absolute `path` as an `O_PATH` descriptor, refusing any symbolic
/// link on the way (RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS): for a path the kernel gave
/// (d_path has none), a symbolic link found there was planted since.
pub fn open_dir_no_symlinks(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Makes a new hard link named `name` in `dir` to the file `file` is open on (linkat of
/// `/proc/self/fd/N` with AT_SYMLINK_FOLLOW, which needs no capability, unlike AT_EMPTY_PATH):
/// also a file whose name was deleted, as long as it has links left. The kernel checks the
/// caller's file identity (write permission on `dir`; with fs.protected_hardlinks, owning the
/// file or being allowed to read and write it). `name` must be a plain name or, with `dir` the
/// current directory, a path; an existing `name` fails with EEXIST.
pub fn link_fd_in(file: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &Path) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{}", file.as_raw_fd()),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

/// [`link_fd_in`] to the absolute (or current-directory-relative) `path`.
pub fn link_fd_to(file: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    link_fd_in(file, rustix::fs::CWD, path)
}

/// The device, inode and mode (with the file type bits) of `name` in `dir`, not following a
/// symbolic link (fstatat with AT_SYMLINK_NOFOLLOW).
pub fn stat_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<(u64, u64, u32)> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok((st.st_dev, st.st_ino, st.st_mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    #[test]
    fn a_file_whose_name_was_deleted_is_linked_again_through_its_fd() {
        let d = std::env::temp_dir().join(format!("stasis-sys-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let file = std::fs::File::create(d.join("a")).unwrap();
        std::fs::hard_link(d.join("a"), d.join("b")).unwrap();
        std::fs::remove_file(d.join("a")).unwrap();
        let dir = open_dir_no_symlinks(&d).unwrap();
        link_fd_in(file.as_fd(), dir.as_fd(), Path::new("r")).unwrap();
        let md = file.metadata().unwrap();
        assert_eq!(md.nlink(), 2);
        let (dev, ino, mode) = stat_in(dir.as_fd(), "r").unwrap();
        assert_eq!((dev, ino), (md.dev(), md.ino()));
        assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
        let err = link_fd_in(file.as_fd(), dir.as_fd(), Path::new("b")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        link_fd_to(file.as_fd(), &d.join("a")).unwrap();
        assert_eq!(std::fs::metadata(d.join("a")).unwrap().ino(), md.ino());
        // A symbolic link on the way is refused.
        std::os::unix::fs::symlink(&d, d.join("sym")).unwrap();
        assert!(open_dir_no_symlinks(&d.join("sym")).is_err());
        assert!(open_dir_no_symlinks(&d.join("sym/")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn list_dir_names_every_entry() {
        let d = std::env::temp_dir().join(format!("stasis-sys-list-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.img"), b"x").unwrap();
        let dir = std::fs::File::open(&d).unwrap();
        let mut names = list_dir(dir.as_fd()).unwrap();
        names.sort();
        assert_eq!(names, vec!["a.img".to_string(), "sub".to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mkfifo_makes_a_fifo() {
        let path = std::env::temp_dir().join(format!("stasis-sys-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        mkfifo(&path, 0o600).unwrap();
        let md = std::fs::symlink_metadata(&path).unwrap();
        assert!(md.file_type().is_fifo());
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            mkfifo(&path, 0o600).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        std::fs::remove_file(&path).unwrap();
    }
}

/// Which owner a byte-range lock of [`set_range_lock`] and [`get_range_lock`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeLockOwner {
    /// The calling process (F_SETLK, F_GETLK).
    Process,
    /// The open file description (F_OFD_SETLK, F_OFD_GETLK).
    Description,
}

fn range_lock_cmd(owner: RangeLockOwner, set: bool) -> libc::c_int {
    match (owner, set) {
        (RangeLockOwner::Process, true) => libc::F_SETLK,
        (RangeLockOwner::Process, false) => libc::F_GETLK,
        (RangeLockOwner::Description, true) => libc::F_OFD_SETLK,
        (RangeLockOwner::Description, false) => libc::F_OFD_GETLK,
    }
}

/// Takes a byte-range lock without waiting (`lock.l_type` F_RDLCK or F_WRLCK, `whence`
/// SEEK_SET); EAGAIN or EACCES when another owner holds a conflicting one.
pub fn set_range_lock(
    fd: BorrowedFd<'_>,
    owner: RangeLockOwner,
    lock: &crate::kabi::Flock,
) -> io::Result<()> {
    let mut l = *lock;
    // SAFETY: F_SETLK and F_OFD_SETLK read one `struct flock` through the pointer, which
    // points to a valid one of ours for the whole call.
    crate::cvt_int(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            range_lock_cmd(owner, true),
            &mut l as *mut crate::kabi::Flock,
        )
    })?;
    Ok(())
}

/// The first lock of another owner that conflicts with `lock` (F_GETLK, F_OFD_GETLK), or
/// `None` when `lock` could be taken.
pub fn get_range_lock(
    fd: BorrowedFd<'_>,
    owner: RangeLockOwner,
    lock: &crate::kabi::Flock,
) -> io::Result<Option<crate::kabi::Flock>> {
    let mut l = *lock;
    // SAFETY: F_GETLK and F_OFD_GETLK read and write one `struct flock` through the pointer,
    // which points to a valid one of ours for the whole call.
    crate::cvt_int(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            range_lock_cmd(owner, false),
            &mut l as *mut crate::kabi::Flock,
        )
    })?;
    Ok((l.l_type != libc::F_UNLCK as i16).then_some(l))
}
