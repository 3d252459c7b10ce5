//! pidfds (pidfd_open, clone's CLONE_PIDFD) of processes of the dumped tree.
//!
//! Dump: an `anon_inode:[pidfd]` fd; its fdinfo `Pid:` line names the process (in the
//! dumper's pid namespace, which is the tree's). Refused by name: a pidfd whose process has
//! exited and been reaped (`Pid: -1`: nothing has that pid any more, and a pidfd cannot be
//! made for a pid nobody holds), and a thread pidfd (PIDFD_THREAD, shown as O_EXCL in the
//! flags). Whether the process is in the tree, and in reach of the restore, is checked once
//! the whole tree is collected ([`check_tree`]): only pidfds of the process itself, of its
//! ancestors and of its children (zombies included) can be made again, because the restore
//! child opens them while it lays out its fd table, when those surely exist (it forks its
//! children just before; its grandchildren are forked by them meanwhile).
//!
//! Restore: the restorer opens a placeholder (a pidfd of itself, so that the status flags of
//! the description can be set), and the restore child, once its fd table is laid out, opens
//! the real pidfd with pidfd_open (PIDFD_NONBLOCK when the description had O_NONBLOCK) and
//! puts it at every fd of the description with its FD_CLOEXEC ([`FileOps::replace_in_child`]).
//! A pidfd description shared by several processes (inherited over fork) becomes one per
//! process: the same process behind each, but O_NONBLOCK set later by one is no longer seen
//! by the others.

use super::{FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FdEntry, FileDesc, FileKind, ProcessImage};
use stasis_sys::process::{self, ForkedChild};
use stasis_sys::Pid;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

/// The pidfd kind.
#[derive(Default)]
pub struct Pidfds;

impl FileOps for Pidfds {
    fn name(&self) -> &'static str {
        "pidfd"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Pidfd { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.anon_name() == Some("[pidfd]")
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let (pid, n) = (fd.pid, fd.fd);
        let refuse = |why: String| Error::Unsupported {
            what: format!("pidfd {n} of pid {pid}: {why}"),
        };
        if fd.flags & libc::O_EXCL as u32 != 0 {
            return Err(refuse(
                "a thread pidfd (PIDFD_THREAD) is not supported".into(),
            ));
        }
        let target = parse_fdinfo(&fd.fdinfo()?).map_err(refuse)?;
        if target <= 0 {
            return Err(refuse(
                "its process has exited and been reaped: a pidfd of a pid that no process \
                 holds cannot be made again"
                    .into(),
            ));
        }
        Ok(FileKind::Pidfd { pid: target })
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        match &desc.kind {
            FileKind::Pidfd { pid } if *pid <= 0 => Err(format!("pidfd of pid {pid}")),
            FileKind::Pidfd { .. } => Ok(()),
            _ => Err("not a pidfd".into()),
        }
    }

    /// A placeholder: a pidfd of the restorer, replaced in the restore child.
    fn open(&mut self, _desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let me = process::getpid();
        process::pidfd_open(me).map_err(|e| Error::io("pidfd_open of the restorer", e))
    }

    fn replace_in_child(
        &self,
        child: &ForkedChild,
        desc: &FileDesc,
        fds: &[&FdEntry],
    ) -> Result<(), String> {
        let FileKind::Pidfd { pid } = &desc.kind else {
            return Ok(());
        };
        let nonblock = desc.flags as i32 & libc::O_NONBLOCK != 0;
        let new = child
            .pidfd_open_raw(*pid, nonblock)
            .map_err(|e| format!("pidfd_open of pid {pid}: {e}"))?;
        for e in fds {
            child
                .dup3_raw(new, e.fd)
                .and_then(|()| child.set_cloexec_raw(e.fd, e.cloexec))
                .map_err(|err| format!("pidfd of pid {pid} at fd {}: {err}", e.fd))?;
        }
        child
            .close_raw(new)
            .map_err(|e| format!("close pidfd {new}: {e}"))
    }
}

/// The `Pid:` of a pidfd's fdinfo (-1 once its process is reaped; 0 when it is in another
/// pid namespace).
pub fn parse_fdinfo(text: &str) -> Result<i32, String> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .ok_or("no Pid line in its fdinfo")?
        .trim()
        .parse()
        .map_err(|_| "a bad Pid line in its fdinfo".to_string())
}

/// Refuses, by name, pidfds the restore cannot make again: of a process outside the tree, or
/// of one that is neither the holder, nor one of its ancestors or children (see the module
/// documentation). `zombies` are (pid, parent) of the tree's zombies.
pub fn check_tree(images: &[&ProcessImage], zombies: &[(Pid, Pid)]) -> Result<(), Error> {
    let parent: HashMap<Pid, Pid> = images
        .iter()
        .map(|p| (p.pid, p.ppid))
        .chain(zombies.iter().copied())
        .collect();
    let ancestors = |mut p: Pid| {
        let mut out = HashSet::new();
        while let Some(&pp) = parent.get(&p) {
            if !out.insert(pp) {
                break;
            }
            p = pp;
        }
        out
    };
    for p in images {
        for f in &p.files {
            let FileKind::Pidfd { pid: target } = f.kind else {
                continue;
            };
            let fd = p
                .fds
                .iter()
                .find(|e| e.file_id == f.id)
                .map_or(-1, |e| e.fd);
            let what = |why: String| Error::Unsupported {
                what: format!("pidfd {fd} of pid {}: {why}", p.pid),
            };
            if !parent.contains_key(&target) {
                return Err(what(format!(
                    "pid {target} is outside the dumped tree (a restore would give it another \
                     process, or none)"
                )));
            }
            let related = target == p.pid
                || ancestors(p.pid).contains(&target)
                || parent.get(&target) == Some(&p.pid);
            if !related {
                return Err(what(format!(
                    "pid {target} is neither it, nor its ancestor or child: not supported \
                     (the restore makes a pidfd while its holder lays out its fds, when only \
                     those exist)"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    #[test]
    fn fdinfo() {
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t02\nPid:\t42\nNSpid:\t42\n"),
            Ok(42)
        );
        assert_eq!(parse_fdinfo("Pid:\t-1\n"), Ok(-1));
        assert!(parse_fdinfo("pos:\t0\n").is_err());
    }

    /// The sample without its own pidfd.
    fn plain() -> ProcessImage {
        let mut p = sample_process();
        p.files
            .retain(|f| !matches!(f.kind, FileKind::Pidfd { .. }));
        p
    }

    #[test]
    fn tree_reach() {
        let mut root = plain();
        root.pid = 10;
        root.ppid = 1;
        let mut child = plain();
        child.pid = 11;
        child.ppid = 10;
        let mut other = plain();
        other.pid = 12;
        other.ppid = 10;
        let id = 900;
        let give = |p: &mut ProcessImage, target: i32| {
            p.files.push(FileDesc {
                id,
                flags: 2,
                pos: 0,
                kind: FileKind::Pidfd { pid: target },
                owner: Default::default(),
                locks: Vec::new(),
            });
            p.fds.push(FdEntry {
                fd: 77,
                file_id: id,
                cloexec: false,
            });
        };
        let (mut r, mut c) = (root.clone(), child.clone());
        give(&mut r, 11);
        give(&mut c, 10);
        check_tree(&[&r, &c, &other], &[(13, 11)]).unwrap();
        let mut c2 = child.clone();
        give(&mut c2, 13);
        check_tree(&[&root, &c2, &other], &[(13, 11)]).unwrap();
        let mut r2 = root.clone();
        give(&mut r2, 13);
        let e = check_tree(&[&r2, &child, &other], &[(13, 11)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither"), "a grandchild: {e}");
        let mut c3 = child.clone();
        give(&mut c3, 12);
        let e = check_tree(&[&root, &c3, &other], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pidfd 77 of pid 11") && e.contains("neither"),
            "{e}"
        );
        let mut c4 = child;
        give(&mut c4, 999);
        let e = check_tree(&[&root, &c4, &other], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the dumped tree"), "{e}");
    }
}
