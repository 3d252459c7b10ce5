//! Files and directories under /proc/PID of the process itself (`/proc/self/status`,
//! `/proc/self/fd` opened to list the fds, `/proc/self/maps`, ...).
//!
//! Dump: the path below /proc/PID (empty for the directory itself), the position, and whether
//! it is a directory. Only the process's own entries come back (its pid is the same after the
//! restore): an entry of another process, or of one of its threads other than the main one
//! (`task/TID`: the threads are made after the fd table), is refused by name.
//!
//! Restore: these entries exist only once the process does, so the restorer opens a
//! placeholder (/dev/null, to carry the status flags) and the restore child, once its fd
//! table is laid out, opens `/proc/self/PATH` with the dumped flags, seeks to the position and
//! puts it at every fd of the description ([`FileOps::replace_in_child`]). A description
//! shared by several processes (inherited over fork) becomes one per process, like pidfds.

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FdEntry, FileDesc, FileKind, ProcessImage};
use stasis_sys::process::ForkedChild;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

/// statfs f_type of procfs.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Longest path kept below /proc/PID.
const MAX_PATH: usize = 512;

/// The proc-file kind.
#[derive(Default)]
pub struct ProcFiles;

/// For a link `/proc/N` or `/proc/N/REST`: N and REST (empty for `/proc/N`).
pub fn split_link(link: &str) -> Option<(i32, &str)> {
    let rest = link.strip_prefix("/proc/")?;
    let (n, rel) = rest.split_once('/').unwrap_or((rest, ""));
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((n.parse().ok()?, rel))
}

/// Whether `rel` is a plain relative path (no `..`, no root, no empty parts).
fn plain(rel: &str) -> bool {
    rel.len() <= MAX_PATH
        && !rel.contains('\0')
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

impl FileOps for ProcFiles {
    fn name(&self) -> &'static str {
        "file of /proc/PID"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::ProcFile { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        matches!(fd.class, Class::File | Class::Directory)
            && fd.flags as i32 & libc::O_PATH == 0
            && split_link(&fd.link).is_some()
            && fd.file().is_ok_and(|f| {
                stasis_sys::process::fs_type(f.as_fd()).is_ok_and(|t| t == PROC_SUPER_MAGIC)
            })
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let Some((owner, rel)) = split_link(&fd.link) else {
            return Err(fd.unsupported("not a file of /proc/PID"));
        };
        if owner != fd.pid {
            return Err(fd.unsupported(&format!(
                "a file of /proc/{owner}, another process's (only a process's own /proc \
                 entries can be reopened)"
            )));
        }
        if !plain(rel) {
            return Err(fd.unsupported("a /proc path stasis cannot keep"));
        }
        if let Some(task) = rel.strip_prefix("task/") {
            let tid = task.split('/').next().unwrap_or("");
            if tid != owner.to_string() {
                return Err(fd.unsupported(&format!(
                    "a file of thread {tid}'s /proc entry, which does not exist yet when the \
                     fd table is restored"
                )));
            }
        }
        Ok(FileKind::ProcFile {
            path: rel.to_string(),
            directory: fd.class == Class::Directory,
        })
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        match &desc.kind {
            FileKind::ProcFile { path, .. } if path.is_empty() || plain(path) => Ok(()),
            FileKind::ProcFile { path, .. } => Err(format!("a bad path {path:?}")),
            _ => Err("not a file of /proc/PID".into()),
        }
    }

    /// A placeholder, replaced in the restore child.
    fn open(&mut self, _desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| Error::io("open /dev/null (placeholder of a /proc file)", e))
    }

    fn replace_in_child(
        &self,
        child: &ForkedChild,
        desc: &FileDesc,
        fds: &[&FdEntry],
    ) -> Result<(), String> {
        let FileKind::ProcFile { path, directory } = &desc.kind else {
            return Ok(());
        };
        let full = Path::new("/proc/self").join(path);
        let keep = libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND | libc::O_NOATIME;
        let mut flags = desc.flags as i32 & keep;
        if *directory {
            flags |= libc::O_DIRECTORY;
        }
        let new = child
            .open_raw(&full, flags)
            .map_err(|e| format!("open {}: {e}", full.display()))?;
        if desc.pos != 0 {
            // A /proc file that cannot seek (few can't) reads from its start.
            let _ = child.seek_raw(new, desc.pos);
        }
        for e in fds {
            child
                .dup3_raw(new, e.fd)
                .and_then(|()| child.set_cloexec_raw(e.fd, e.cloexec))
                .map_err(|err| format!("{} at fd {}: {err}", full.display(), e.fd))?;
        }
        child
            .close_raw(new)
            .map_err(|e| format!("close {}: {e}", full.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(split_link("/proc/12/status"), Some((12, "status")));
        assert_eq!(split_link("/proc/12"), Some((12, "")));
        assert_eq!(
            split_link("/proc/12/task/13/stat"),
            Some((12, "task/13/stat"))
        );
        assert_eq!(split_link("/proc/meminfo"), None);
        assert_eq!(split_link("/proc/self/status"), None);
        assert_eq!(split_link("/tmp/12"), None);
        assert!(plain("fd"));
        assert!(plain("task/1/stat"));
        assert!(!plain("../etc"));
        assert!(!plain("/etc"));
    }
}
