//! Regular files whose name was deleted while they were open or mapped, but which keep links
//! under other names (a hard link left elsewhere): /proc/PID/fd/N reads "PATH (deleted)" and
//! the link count is above 0. Other names (and other processes) see the same inode, so its
//! contents are not copied: the restored process must have that very file again.
//!
//! Dump: the fd (or, for a file that is only mapped, the mapping through map_files) is
//! described with the name it had, its device, inode and size ([`FileKind::LinkRemap`]). Once
//! every process is collected ([`FileOps::finish`], so a dump refused for another reason makes
//! no link), the dump gives each such file (device and inode) one more hard link of its own,
//! the *remap link* `.stasis-remap.DEV.INO`: linkat of `/proc/self/fd/N` with
//! AT_SYMLINK_FOLLOW into the directory the deleted name was in (opened without following any
//! symbolic link: the kernel's path has none), else at the root of the file's mount (from
//! /proc/self/mountinfo); a dump that can make it in neither is refused, naming the file and
//! both reasons. A name already taken by the same file (a dump of the same file before) is
//! used as it is; one taken by anything else gets a numbered name (`.stasis-remap.DEV.INO.1`).
//! The link is made with the dumper's file identity: through stasisd, the caller's (the
//! kernel then allows it only where the caller could make it; see docs/security.md). The
//! links this dump made are held in [`RemapLinks`], which removes them unless the dump
//! completes: a failed dump leaves none behind. A complete dump leaves them in place: they
//! belong to the images (`stasis show` lists them as `remap`), so the images restore as many
//! times as wanted; whoever removes the images removes them.
//!
//! Restore: the remap link is opened (`O_PATH`, following no symbolic link on the way: a root
//! restore must not be led into another directory by a user's link) and must be a regular
//! file, the dumped device and inode (unless replaced files are accepted,
//! [`super::ReplacedFiles`]); a remap link that is gone fails the restore naming both paths.
//! When the old name is free, the file is linked there again (through the descriptor just
//! checked, into its directory opened without following symbolic links), opened by that name
//! and the name is unlinked again, so the restored process's
//! fd reads "PATH (deleted)" as before; a name taken by another file is never touched: the
//! file is then restored through its remap link (whose name the fd then shows), with a
//! warning in the log. Every description of the file (several fds, processes, mappings:
//! [`super::deleted::open_for_mapping`], which serves both kinds) is a new open of that one
//! descriptor through /proc/self/fd, with its dumped access mode and flags; the offset is set
//! afterwards (lseek). The remap link stays.

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use stasis_sys::Pid;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How the remap links are named: this, then the device and inode (`.stasis-remap.DEV.INO`).
pub const REMAP_PREFIX: &str = ".stasis-remap.";

/// Names tried in one directory before giving up (`NAME`, `NAME.1`, ...).
const NAMES_PER_DIR: u32 = 16;

/// How /proc/PID/fd/N and smaps end for a name that was unlinked.
const DELETED: &str = " (deleted)";

/// The name a file with links left had before it was deleted: `link` ("PATH (deleted)")
/// without the suffix, unless a file really named so is the file `md` describes.
fn deleted_name<'a>(link: &'a str, md: &Metadata) -> Option<&'a str> {
    let path = link.strip_suffix(DELETED)?;
    if !path.starts_with('/') {
        return None;
    }
    match std::fs::symlink_metadata(link) {
        Ok(m) if (m.dev(), m.ino()) == (md.dev(), md.ino()) => None,
        _ => Some(path),
    }
}

/// A file to give a remap link to, once every process is collected.
struct Pending {
    /// The dumper's own descriptor of it.
    file: File,
    /// The deleted name it had (its first description's).
    path: String,
    /// What it is, for messages ("fd 3 of pid 42").
    what: String,
}

/// The remap links a dump made: removed when dropped, unless [`RemapLinks::keep`] was called
/// (the dump completed).
#[derive(Default)]
pub struct RemapLinks(Vec<MadeLink>);

struct MadeLink {
    dir: OwnedFd,
    name: String,
    path: String,
    id: (u64, u64),
}

impl RemapLinks {
    /// The dump completed: its remap links stay with the images.
    pub fn keep(mut self) {
        for l in self.0.drain(..) {
            tracing::info!(link = %l.path, "remap link kept with the images");
        }
    }

    /// The paths of the links made so far.
    pub fn paths(&self) -> Vec<String> {
        self.0.iter().map(|l| l.path.clone()).collect()
    }

    /// Moves the links of `other` into these.
    pub fn append(&mut self, mut other: RemapLinks) {
        self.0.append(&mut other.0);
    }
}

impl Drop for RemapLinks {
    fn drop(&mut self) {
        for l in self.0.drain(..) {
            // Only the link made here: a name that now holds another file stays.
            let ours = stasis_sys::fs::stat_in(l.dir.as_fd(), &l.name)
                .is_ok_and(|(dev, ino, _)| (dev, ino) == l.id);
            if ours {
                match stasis_sys::fs::unlink_in(l.dir.as_fd(), &l.name) {
                    Ok(()) => {
                        tracing::debug!(link = %l.path, "the dump failed: remap link removed")
                    }
                    Err(e) => tracing::warn!(link = %l.path, "cannot remove the remap link: {e}"),
                }
            }
        }
    }
}

/// The link-remap kind: dump, the files waiting for their remap link and the links made;
/// restore, one descriptor per restored file.
#[derive(Default)]
pub struct LinkRemaps {
    /// Dump: (dev, ino) -> the file, until [`FileOps::finish`] links it.
    pending: BTreeMap<(u64, u64), Pending>,
    /// Dump: the links made (removed unless the dump completes).
    made: RemapLinks,
    /// Restore: (dev, ino, deleted name) -> an `O_PATH` descriptor of the restored file
    /// (by its old name, unlinked again, or by its remap link).
    opened: HashMap<(u64, u64, String), OwnedFd>,
}

impl LinkRemaps {
    /// Notes the file `file` (`md`) with deleted name `path` for a remap link; returns its
    /// record (the remap path is filled in by [`FileOps::finish`]).
    fn note(
        &mut self,
        file: &File,
        md: &Metadata,
        path: &str,
        what: String,
    ) -> Result<FileKind, Error> {
        let key = (md.dev(), md.ino());
        if let std::collections::btree_map::Entry::Vacant(e) = self.pending.entry(key) {
            let file = file
                .try_clone()
                .map_err(|err| Error::io(format!("dup {what}"), err))?;
            e.insert(Pending {
                file,
                path: path.to_string(),
                what,
            });
        }
        Ok(FileKind::LinkRemap {
            path: path.to_string(),
            remap: String::new(),
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
        })
    }

    /// The remap links made so far, handed to the dump (which keeps them once it completes).
    pub fn take_links(&mut self) -> RemapLinks {
        std::mem::take(&mut self.made)
    }
}

/// Makes the remap link of `p` (device and inode `id`): in the directory of its deleted name,
/// else at the root of its mount. Returns its path, and records it in `made` when it is new.
fn make_link(p: &Pending, id: (u64, u64), made: &mut RemapLinks) -> Result<String, Error> {
    crate::fault::point("making a remap link")?;
    let base = format!("{REMAP_PREFIX}{}.{}", id.0, id.1);
    let mut why = Vec::new();
    let parent = Path::new(&p.path).parent().unwrap_or(Path::new("/"));
    match try_dir(p, parent, &base, id, made) {
        Ok(path) => return Ok(path),
        Err(e) => why.push(format!("in {}: {e}", parent.display())),
    }
    match mount_root(&p.file) {
        Ok(root) if root != parent => match try_dir(p, &root, &base, id, made) {
            Ok(path) => return Ok(path),
            Err(e) => why.push(format!("at the root of its mount, {}: {e}", root.display())),
        },
        Ok(_) => {}
        Err(e) => why.push(format!("the root of its mount: {e}")),
    }
    Err(Error::Unsupported {
        what: format!(
            "{}: the name {} was deleted but the file keeps {} link(s) elsewhere; stasis keeps \
             such a file by a hard link of its own on the same filesystem and could make none \
             ({})",
            p.what,
            p.path,
            p.file.metadata().map(|m| m.nlink()).unwrap_or(0),
            why.join("; ")
        ),
    })
}

/// Links `p` into the directory `dir` under `base` (or `base.N` when that name holds another
/// file); a name that already holds this very file is used as it is.
fn try_dir(
    p: &Pending,
    dir: &Path,
    base: &str,
    id: (u64, u64),
    made: &mut RemapLinks,
) -> std::io::Result<String> {
    let fd = stasis_sys::fs::open_dir_no_symlinks(dir)?;
    let md = File::from(fd.try_clone()?).metadata()?;
    if md.dev() != id.0 {
        return Err(std::io::Error::other("another filesystem"));
    }
    for n in 0..NAMES_PER_DIR {
        let name = if n == 0 {
            base.to_string()
        } else {
            format!("{base}.{n}")
        };
        let path = dir.join(&name).display().to_string();
        match stasis_sys::fs::link_fd_in(p.file.as_fd(), fd.as_fd(), Path::new(&name)) {
            Ok(()) => {
                tracing::info!(file = %p.path, link = %path, "remap link made");
                made.0.push(MadeLink {
                    dir: fd,
                    name,
                    path: path.clone(),
                    id,
                });
                return Ok(path);
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let (dev, ino, mode) = stasis_sys::fs::stat_in(fd.as_fd(), &name)?;
                if (dev, ino) == id && mode & libc::S_IFMT == libc::S_IFREG {
                    tracing::info!(file = %p.path, link = %path, "remap link already there");
                    return Ok(path);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "{NAMES_PER_DIR} names {base}* hold other files"
    )))
}

/// Where the mount `file` is on is mounted, by the dumper's /proc/self/mountinfo.
fn mount_root(file: &File) -> Result<std::path::PathBuf, String> {
    let id = stasis_sys::anon_files::mount_id(file.as_fd()).map_err(|e| format!("statx: {e}"))?;
    let text =
        crate::procfs::read_string(Path::new("/proc/self/mountinfo")).map_err(|e| e.to_string())?;
    super::inotify::parse_mountinfo(&text)
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.point)
        .ok_or_else(|| format!("mount {id} is not in /proc/self/mountinfo"))
}

/// The device and inode of a link-remap description.
pub(crate) fn file_id(kind: &FileKind) -> Option<(u64, u64)> {
    match kind {
        FileKind::LinkRemap { dev, ino, .. } => Some((*dev, *ino)),
        _ => None,
    }
}

/// The directory of the absolute `path` (opened without following any symbolic link, so that a
/// directory swapped for a link cannot redirect what is made or removed there) and its last
/// component.
fn dir_and_name(path: &str) -> std::io::Result<(OwnedFd, &str)> {
    let p = Path::new(path);
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let dir = stasis_sys::fs::open_dir_no_symlinks(p.parent().unwrap_or(Path::new("/")))?;
    Ok((dir, name))
}

/// Restore: the file of `remap` (checked against `dev` and `ino`), as an `O_PATH` descriptor
/// named `path` (deleted again) when that name is free, else named `remap`. Both are reached
/// without following symbolic links.
fn open_remapped(
    path: &str,
    remap: &str,
    dev: u64,
    ino: u64,
    ctx: &mut OpenContext<'_>,
) -> Result<OwnedFd, Error> {
    let o_path = libc::O_PATH | libc::O_NOFOLLOW;
    let kept = dir_and_name(remap)
        .and_then(|(dir, name)| stasis_sys::fs::open_beneath(dir.as_fd(), name, o_path, 0));
    let kept = match kept {
        Ok(f) => File::from(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Invalid(format!(
                "the file deleted at {path} (which kept other links) was kept for the images by \
                 its remap link {remap}, which is gone: it cannot be restored without it"
            )))
        }
        Err(e) => {
            return Err(Error::io(
                format!("open {remap} (the remap link of {path})"),
                e,
            ))
        }
    };
    let kept = ctx.check_opened(
        remap,
        kept,
        dev,
        ino,
        Some(libc::S_IFREG),
        &format!("the file deleted at {path} that its remap link kept"),
    )?;
    let kept_md = File::from(kept.try_clone().map_err(|e| Error::io("dup", e))?)
        .metadata()
        .map_err(|e| Error::io(format!("fstat {remap}"), e))?;
    let id = (kept_md.dev(), kept_md.ino());
    // At its old name, which is then unlinked again: the process sees "PATH (deleted)".
    let linked = dir_and_name(path).and_then(|(dir, name)| {
        stasis_sys::fs::link_fd_in(kept.as_fd(), dir.as_fd(), Path::new(name))?;
        Ok((dir, name))
    });
    match linked {
        Ok((dir, name)) => {
            let opened = stasis_sys::fs::open_beneath(dir.as_fd(), name, o_path, 0);
            // Remove only the name made here (it is the file just linked).
            if stasis_sys::fs::stat_in(dir.as_fd(), name).is_ok_and(|(d, i, _)| (d, i) == id) {
                stasis_sys::fs::unlink_in(dir.as_fd(), name)
                    .map_err(|e| Error::io(format!("unlink {path} (linked from {remap})"), e))?;
            }
            let same = |f: &OwnedFd| {
                File::from(f.try_clone()?)
                    .metadata()
                    .map(|m| (m.dev(), m.ino()) == id)
            };
            match opened {
                Ok(f) if same(&f).unwrap_or(false) => return Ok(f),
                _ => tracing::warn!(
                    file = %path,
                    "the name changed while it was linked again: restored through its remap \
                     link {remap}"
                ),
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => tracing::warn!(
            file = %path,
            "the name of the deleted file is taken by another file: restored through its remap \
             link {remap} (its fd shows that name)"
        ),
        Err(e) => tracing::warn!(
            file = %path,
            "cannot link the file to its old name again ({e}): restored through its remap link \
             {remap} (its fd shows that name)"
        ),
    }
    Ok(kept)
}

impl FileOps for LinkRemaps {
    fn name(&self) -> &'static str {
        "deleted file with links elsewhere"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::LinkRemap { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::File
            && fd
                .metadata()
                .is_ok_and(|md| md.nlink() > 0 && deleted_name(&fd.link, md).is_some())
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let md = fd.metadata()?;
        let path = deleted_name(&fd.link, md).ok_or_else(|| {
            Error::Invalid(format!(
                "fd {} of pid {} is not a deleted name",
                fd.fd, fd.pid
            ))
        })?;
        let what = format!("fd {} of pid {}", fd.fd, fd.pid);
        self.note(fd.file()?, md, path, what)
    }

    /// A file with links elsewhere whose deleted name is only mapped (fds closed) needs a
    /// description to be mapped from: a new one (read-only: the mapping reopens it with the
    /// access it needs), read through map_files.
    fn dump_without_fds(
        &mut self,
        pid: Pid,
        maps: &[crate::procfs::MapEntry],
        out: &mut ProcessFiles<'_>,
    ) -> Result<(), Error> {
        super::deleted::each_undescribed_mapping(pid, maps, out, |m, file, md, out| {
            if md.nlink() == 0 || !md.file_type().is_file() {
                return Ok(());
            }
            let Some(path) = m.name.strip_suffix(DELETED) else {
                return Ok(());
            };
            let what = format!("mapping {:#x}-{:#x} of pid {pid}", m.start, m.end);
            let kind = self.note(&file, md, path, what)?;
            out.add_without_fd((libc::O_RDONLY | libc::O_LARGEFILE) as u32, 0, kind);
            Ok(())
        })
    }

    /// Gives every file noted its remap link, and names it in every description of it. A
    /// failure leaves the links made so far to [`RemapLinks`], which removes them.
    fn finish(&mut self, descs: &mut [&mut FileDesc]) -> Result<(), Error> {
        let mut remaps = HashMap::new();
        for (id, p) in std::mem::take(&mut self.pending) {
            remaps.insert(id, make_link(&p, id, &mut self.made)?);
        }
        for d in descs.iter_mut() {
            if let FileKind::LinkRemap {
                dev, ino, remap, ..
            } = &mut d.kind
            {
                *remap = remaps.get(&(*dev, *ino)).cloned().ok_or_else(|| {
                    Error::Invalid(format!(
                        "description {}: no remap link was made for file {dev}:{ino}",
                        d.id
                    ))
                })?;
            }
        }
        Ok(())
    }

    fn take_links(&mut self) -> RemapLinks {
        LinkRemaps::take_links(self)
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::LinkRemap { path, remap, .. } = &desc.kind else {
            return Err("not a deleted file with links elsewhere".into());
        };
        super::check_path(path)?;
        super::check_path(remap)?;
        // Only a link the dump made: the restore links it to `path`.
        let name = Path::new(remap)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if !name.starts_with(REMAP_PREFIX) {
            return Err(format!(
                "remap link {remap:?} is not named {REMAP_PREFIX}DEV.INO"
            ));
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::LinkRemap {
            path,
            remap,
            dev,
            ino,
            ..
        } = &desc.kind
        else {
            return Err(Error::Invalid(format!(
                "description {} is not a deleted file with links elsewhere",
                desc.id
            )));
        };
        let key = (*dev, *ino, path.clone());
        if !self.opened.contains_key(&key) {
            let b = open_remapped(path, remap, *dev, *ino, ctx)?;
            self.opened.insert(key.clone(), b);
        }
        let base = &self.opened[&key];
        let flags = desc.flags as i32 & libc::O_ACCMODE | super::reopen_flags(desc);
        super::deleted::reopen_own(base, flags).map_err(|e| {
            Error::io(
                format!(
                    "open the file deleted at {path} (kept by {remap}) through /proc/self/fd/{}",
                    base.as_raw_fd()
                ),
                e,
            )
        })
    }

    fn has_position(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_image::ImageDir;

    fn remapped(path: &str, remap: &str, dev: u64, ino: u64) -> FileDesc {
        FileDesc {
            id: 3,
            flags: (libc::O_RDWR | libc::O_APPEND) as u32,
            pos: 2,
            kind: FileKind::LinkRemap {
                path: path.into(),
                remap: remap.into(),
                dev,
                ino,
                size: 5,
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate() {
        let p = sample_process();
        let ok = remapped("/d/a", "/d/.stasis-remap.1.2", 1, 2);
        LinkRemaps::default().validate(&ok, &p).unwrap();
        for (path, remap) in [
            ("d/a", "/d/.stasis-remap.1.2"),
            ("/d/a", "/d/x"),
            ("/d/a", ""),
            ("/d/a", "/d/.stasis-remap.1\0"),
        ] {
            assert!(
                LinkRemaps::default()
                    .validate(&remapped(path, remap, 1, 2), &p)
                    .is_err(),
                "{path:?} {remap:?}"
            );
        }
    }

    /// Dump side: the link made for a deleted name, reused by a second dump, removed when the
    /// dump fails; restore side: the file comes back under its old name, deleted again, the
    /// same inode; a taken name is left alone; a missing remap link is named.
    #[test]
    fn remap_link_made_removed_and_restored() {
        let tmp = std::env::temp_dir().join(format!("stasis-remap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let a = tmp.join("a");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&a)
            .unwrap();
        std::fs::write(&a, b"hello").unwrap();
        std::fs::hard_link(&a, tmp.join("other")).unwrap();
        std::fs::remove_file(&a).unwrap();
        let md = file.metadata().unwrap();
        let id = (md.dev(), md.ino());
        let link = format!("{} (deleted)", a.display());
        assert_eq!(deleted_name(&link, &md), Some(a.to_str().unwrap()));
        let p = Pending {
            file: file.try_clone().unwrap(),
            path: a.to_str().unwrap().into(),
            what: "test".into(),
        };
        let mut made = RemapLinks::default();
        let remap = make_link(&p, id, &mut made).unwrap();
        assert_eq!(
            remap,
            tmp.join(format!(".stasis-remap.{}.{}", id.0, id.1))
                .display()
                .to_string()
        );
        assert_eq!(std::fs::metadata(&remap).unwrap().ino(), id.1);
        // A second dump finds it there: the same name, not made again.
        let mut again = RemapLinks::default();
        assert_eq!(make_link(&p, id, &mut again).unwrap(), remap);
        assert!(again.paths().is_empty());
        drop(again);
        assert!(Path::new(&remap).exists());
        // A failed dump removes what it made.
        drop(made);
        assert!(!Path::new(&remap).exists());
        let mut made = RemapLinks::default();
        let remap = make_link(&p, id, &mut made).unwrap();
        made.keep();
        assert!(Path::new(&remap).exists());

        let images = ImageDir::open(&tmp).unwrap();
        let mut ctx = OpenContext::new(&images, super::super::ReplacedFiles::Refuse);
        let desc = remapped(a.to_str().unwrap(), &remap, id.0, id.1);
        let mut kind = LinkRemaps::default();
        let fd = super::super::open_description(&mut kind, &desc, &mut ctx).unwrap();
        let f = File::from(fd);
        assert_eq!(f.metadata().unwrap().ino(), id.1);
        let shown = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert_eq!(shown.display().to_string(), link);
        assert!(!a.exists(), "the old name is deleted again");
        std::io::Write::write_all(&mut &f, b"!").unwrap();
        assert_eq!(std::fs::read(tmp.join("other")).unwrap(), b"hello!");
        // A second description of the same file: the same name.
        let fd2 = super::super::open_description(&mut kind, &desc, &mut ctx).unwrap();
        let shown = std::fs::read_link(format!("/proc/self/fd/{}", fd2.as_raw_fd())).unwrap();
        assert_eq!(shown.display().to_string(), link);

        // A taken name is left alone: restored through the remap link.
        std::fs::write(&a, b"someone else's").unwrap();
        let fd =
            super::super::open_description(&mut LinkRemaps::default(), &desc, &mut ctx).unwrap();
        assert_eq!(File::from(fd).metadata().unwrap().ino(), id.1);
        assert_eq!(std::fs::read(&a).unwrap(), b"someone else's");

        // A symbolic link on the way to the old name is not followed: nothing is made behind
        // it, the file comes back through its remap link.
        std::os::unix::fs::symlink(&tmp, tmp.join("sym")).unwrap();
        let via = remapped(tmp.join("sym/b2").to_str().unwrap(), &remap, id.0, id.1);
        let fd =
            super::super::open_description(&mut LinkRemaps::default(), &via, &mut ctx).unwrap();
        let shown = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(shown.display().to_string(), remap);
        assert!(!tmp.join("b2").exists());

        // Another file at the remap link is refused; a missing one is named.
        let mut other = desc.clone();
        if let FileKind::LinkRemap { ino, .. } = &mut other.kind {
            *ino += 1;
        }
        let err = LinkRemaps::default()
            .open(&other, &mut ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inode changed"), "{err}");
        std::fs::remove_file(&remap).unwrap();
        let err = LinkRemaps::default()
            .open(&desc, &mut ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&remap) && err.contains("is gone"), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
