//! pidfds (pidfd_open, clone's CLONE_PIDFD) of processes of the dumped tree.
//!
//! Dump: an `anon_inode:[pidfd]` fd; its fdinfo `Pid:` line names the process (in the
//! dumper's pid namespace, which is the tree's). Refused by name: a pidfd whose process has
//! exited and been reaped (`Pid: -1`: nothing has that pid any more, and a pidfd cannot be
//! made for a pid nobody holds), and a thread pidfd (PIDFD_THREAD, shown as O_EXCL in the
//! flags). Whether the process is in the tree (zombies included) is checked once the whole
//! tree is collected ([`check_tree`]): a pidfd of a process outside it is refused by name.
//!
//! Restore: the restorer opens a placeholder (a pidfd of itself, so that the status flags of
//! the description can be set), and the restore child, once its fd table is laid out, opens
//! the real pidfd with pidfd_open (PIDFD_NONBLOCK when the description had O_NONBLOCK) and
//! puts it at every fd of the description with its FD_CLOEXEC ([`FileOps::replace_in_child`]).
//! That works for the process itself, its ancestors and its children (it forks them just
//! before); a pidfd of another process of the tree (a sibling, a grandchild), which may not
//! exist yet then, is opened inside the process during the rebuild, once every process exists
//! ([`restore_late`]).
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
        let new = match child.pidfd_open_raw(*pid, nonblock) {
            Ok(fd) => fd,
            // Not forked yet (a sibling, a grandchild): opened in the rebuild
            // ([`restore_late`]), which also redoes any pidfd of a pid that is not an ancestor
            // or child (whatever held that pid now may not be the tree's process).
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) => return Err(format!("pidfd_open of pid {pid}: {e}")),
        };
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

/// The parents of a tree's processes and zombies (`zombies`: (pid, parent)).
fn parents(images: &[&ProcessImage], zombies: &[(Pid, Pid)]) -> HashMap<Pid, Pid> {
    images
        .iter()
        .map(|p| (p.pid, p.ppid))
        .chain(zombies.iter().copied())
        .collect()
}

/// Whether `target` exists when `holder` lays out its fd table in the restore: itself, its
/// ancestors and its children (it forks them just before).
fn exists_at_layout(parent: &HashMap<Pid, Pid>, holder: Pid, target: Pid) -> bool {
    if target == holder || parent.get(&target) == Some(&holder) {
        return true;
    }
    let mut seen = HashSet::new();
    let mut p = holder;
    while let Some(&pp) = parent.get(&p) {
        if pp == target {
            return true;
        }
        if !seen.insert(pp) {
            break;
        }
        p = pp;
    }
    false
}

/// Restore, once every process of the tree exists: the pidfds of `image` whose process did
/// not exist yet while it laid out its fd table (a sibling, a grandchild, ...; they hold the
/// placeholder until now) are opened inside it and put at their fds.
pub fn restore_late(
    inj: &mut crate::inject::Injector,
    image: &ProcessImage,
    images: &[&ProcessImage],
    zombies: &[(Pid, Pid)],
) -> Result<(), Error> {
    let parent = parents(images, zombies);
    // The fds of each description, once (not a scan of the table per pidfd).
    let mut fds_of: HashMap<u32, Vec<&stasis_image::FdEntry>> = HashMap::new();
    for e in &image.fds {
        fds_of.entry(e.file_id).or_default().push(e);
    }
    for f in &image.files {
        let FileKind::Pidfd { pid: target } = f.kind else {
            continue;
        };
        if exists_at_layout(&parent, image.pid, target) {
            continue;
        }
        let nonblock = if f.flags as i32 & libc::O_NONBLOCK != 0 {
            libc::O_NONBLOCK as u32
        } else {
            0
        };
        let new = inj.pidfd_open(target, nonblock)?;
        for e in fds_of.get(&f.id).into_iter().flatten() {
            let cloexec = if e.cloexec { libc::O_CLOEXEC } else { 0 };
            inj.dup3(new, e.fd, cloexec)?;
        }
        inj.close(new)?;
    }
    Ok(())
}

/// Refuses, by name, pidfds the restore cannot make again: of a process outside the tree.
/// `zombies` are (pid, parent) of the tree's zombies.
pub fn check_tree(images: &[&ProcessImage], zombies: &[(Pid, Pid)]) -> Result<(), Error> {
    let parent = parents(images, zombies);
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
        // A grandchild and a sibling: made later, in the rebuild.
        let mut r2 = root.clone();
        give(&mut r2, 13);
        check_tree(&[&r2, &child, &other], &[(13, 11)]).unwrap();
        let mut c3 = child.clone();
        give(&mut c3, 12);
        check_tree(&[&root, &c3, &other], &[]).unwrap();
        let parent = parents(&[&root, &child, &other], &[(13, 11)]);
        assert!(exists_at_layout(&parent, 10, 10));
        assert!(exists_at_layout(&parent, 10, 11), "child");
        assert!(exists_at_layout(&parent, 11, 10), "parent");
        assert!(!exists_at_layout(&parent, 10, 13), "grandchild");
        assert!(!exists_at_layout(&parent, 11, 12), "sibling");
        let mut c4 = child;
        give(&mut c4, 999);
        let e = check_tree(&[&root, &c4, &other], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the dumped tree"), "{e}");
    }
}
