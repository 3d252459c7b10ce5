//! What pipes and FIFOs share: a pipe buffer whose bytes in flight are copied without being
//! consumed (tee(2)), put back, and checked against its capacity; new descriptions of it opened
//! through /proc/self/fd; and the search for a process outside the dumped tree that holds it.

use crate::Error;
use stasis_image::{FileDesc, FileKind};
use stasis_sys::{process, Pid};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Most bytes in flight a record may hold for one pipe or FIFO.
pub(super) const MAX_PIPE_DATA: usize = 16 << 20;

/// Checks that `data`, the bytes in flight of a `what` ("pipe", "FIFO") of `capacity` bytes,
/// fit in it and in a record.
pub(super) fn check_data(what: &str, data: &[u8], capacity: u32) -> Result<(), String> {
    if data.len() > MAX_PIPE_DATA || data.len() > capacity as usize {
        return Err(format!(
            "{} bytes in flight in a {what} of capacity {capacity} (at most {MAX_PIPE_DATA})",
            data.len()
        ));
    }
    Ok(())
}

/// The bytes in flight of a pipe or FIFO are stored with one copy of its description only:
/// `tree` takes them from `copy`, a copy of the same description, when it has none.
pub(super) fn merge(tree: &mut FileDesc, copy: &FileDesc) {
    let (tree, data) = match (&mut tree.kind, &copy.kind) {
        (FileKind::Pipe { data: tree, .. }, FileKind::Pipe { data, .. })
        | (FileKind::Fifo { data: tree, .. }, FileKind::Fifo { data, .. }) => (tree, data),
        _ => return,
    };
    if tree.is_empty() {
        tree.clone_from(data);
    }
}

/// Stores `bytes`, the bytes in flight of a pipe or FIFO, with its description `id`.
pub(super) fn store(descs: &mut [&mut FileDesc], id: u32, bytes: Vec<u8>) {
    let first = descs.iter_mut().find(|d| d.id == id);
    if let Some(FileKind::Pipe { data, .. } | FileKind::Fifo { data, .. }) =
        first.map(|d| &mut d.kind)
    {
        *data = bytes;
    }
}

/// Opens the pipe or FIFO behind `fd` again through /proc/self/fd with `access` (O_RDONLY,
/// O_WRONLY or O_RDWR) and the extra open flags `flags`: a new open file description of the
/// same pipe buffer.
pub(super) fn reopen(fd: &impl AsRawFd, access: i32, flags: i32) -> std::io::Result<OwnedFd> {
    let mut o = std::fs::OpenOptions::new();
    o.read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY)
        .custom_flags(flags);
    Ok(o.open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?.into())
}

/// Copies the bytes queued in a pipe (or FIFO) without consuming them; `fd` names the
/// description in errors.
pub(super) fn peek(read_end: &File, fd: RawFd) -> Result<Vec<u8>, Error> {
    let queued = process::pipe_bytes_queued(read_end.as_fd())
        .map_err(|e| Error::io(format!("FIONREAD on fd {fd}"), e))?;
    if queued == 0 {
        return Ok(Vec::new());
    }
    let (r, w) = process::pipe().map_err(|e| Error::io("pipe", e))?;
    let cap = process::pipe_capacity(read_end.as_fd()).map_err(|e| Error::io("F_GETPIPE_SZ", e))?;
    process::set_pipe_capacity(w.as_fd(), cap.max(queued))
        .map_err(|e| Error::io("F_SETPIPE_SZ", e))?;
    // tee copies from the start of the pipe's queue; the target is frozen, so one call that
    // is given room for everything takes all of it.
    let copied = process::tee(read_end.as_fd(), w.as_fd(), queued)
        .map_err(|e| Error::io(format!("tee from fd {fd}"), e))?;
    drop(w);
    let mut data = Vec::with_capacity(copied);
    File::from(r)
        .read_to_end(&mut data)
        .map_err(|e| Error::io("read peeked pipe data", e))?;
    if data.len() != queued {
        return Err(Error::Invalid(format!(
            "fd {fd}: {queued} bytes queued in the pipe but {} copied",
            data.len()
        )));
    }
    Ok(data)
}

/// A process outside the dumped tree that holds what was looked for (`found`).
pub(super) struct OutsideHolder<T> {
    pub found: T,
    pub pid: Pid,
    pub fd: RawFd,
    pub comm: String,
}

/// Looks through the fds of every process but `tree` (those whose ends were dumped) and this
/// one for the first that `wanted` accepts, given the process, the fd, its path under
/// /proc/PID/fd and the link it shows. Processes and fds that vanish or cannot be read
/// meanwhile are passed over.
pub(super) fn outside_holder<T>(
    tree: &[Pid],
    mut wanted: impl FnMut(Pid, RawFd, &Path, &str) -> Option<T>,
) -> Option<OutsideHolder<T>> {
    let me = process::getpid();
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()) else {
            continue;
        };
        if pid == me || tree.contains(&pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for f in fds.flatten() {
            let Some(fd) = f.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
                continue;
            };
            let path = f.path();
            let Ok(link) = std::fs::read_link(&path) else {
                continue;
            };
            let Some(link) = link.to_str() else {
                continue;
            };
            if let Some(found) = wanted(pid, fd, &path, link) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim_end().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Some(OutsideHolder {
                    found,
                    pid,
                    fd,
                    comm,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_data_limits() {
        check_data("pipe", &[7; 4096], 4096).unwrap();
        assert!(check_data("pipe", &[7; 4097], 4096).is_err());
        assert!(check_data("pipe", &vec![7; MAX_PIPE_DATA + 1], u32::MAX).is_err());
    }
}
