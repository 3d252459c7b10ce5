//! Directories, reopened by path (for openat, fchdir, getdents).
//!
//! Dump: the path /proc/PID/fd/N points to, with the directory's device and inode. A directory
//! that was deleted while open (link count 0) has no path to be reopened by: its old path
//! (without " (deleted)"), permission bits and owner are recorded instead.
//!
//! Restore of a deleted directory: an empty directory is made (`recreate_deleted`: at the old
//! path when that name is free, else next to it, `PATH.stasis-PID-ID`; the owner when the
//! restorer is root; the permission bits), opened and removed again, so the process holds a
//! deleted, empty directory again (a deleted directory is always empty: rmdir only removes
//! empty ones). The cwd uses the same.
//!
//! Restore: open(2) of the path, read-only with O_DIRECTORY and the dumped open flags; it must
//! be the dumped directory (device and inode), unless the restore accepts replaced files
//! ([`super::ReplacedFiles`]). The offset (the getdents position) is set afterwards (lseek).

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{DeletedDir, FileDesc, FileKind, ProcessImage};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};

/// What a deleted directory's stand-in gets: its permission bits and owner.
pub(crate) fn deleted_dir(md: &std::fs::Metadata) -> DeletedDir {
    DeletedDir {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    }
}

/// Checks a deleted directory from an untrusted record.
pub(crate) fn check_deleted(d: &DeletedDir) -> Result<(), String> {
    if d.mode & !0o7777 != 0 {
        return Err(format!("mode {:#o} has more than permission bits", d.mode));
    }
    Ok(())
}

/// Makes the empty stand-in of a deleted directory at `old` when that name is free (so that the
/// restored process sees the same "PATH (deleted)"), else at `fallback`: mkdir (private until
/// done), the owner when the restorer is root, then the permission bits. Returns the name it
/// used; the caller opens and removes it.
pub(crate) fn recreate_deleted(old: &str, fallback: &str, d: &DeletedDir) -> Result<String, Error> {
    let mkdir = |p: &str| std::fs::DirBuilder::new().mode(0o700).create(p);
    let path = match mkdir(old) {
        Ok(()) => old,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => fallback,
        Err(_) => fallback,
    };
    if path == fallback {
        mkdir(path).map_err(|e| Error::io(format!("mkdir {path} (for a deleted directory)"), e))?;
    }
    let result = (|| {
        if stasis_sys::process::geteuid() == 0 {
            std::os::unix::fs::chown(path, Some(d.uid), Some(d.gid))
                .map_err(|e| Error::io(format!("chown {path} to {}:{}", d.uid, d.gid), e))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(d.mode))
            .map_err(|e| Error::io(format!("chmod {path} to {:#o}", d.mode), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir(path);
    }
    result.map(|()| path.to_string())
}

/// The directory kind.
#[derive(Default)]
pub struct Directories;

impl FileOps for Directories {
    fn name(&self) -> &'static str {
        "directory"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Directory { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::Directory
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let md = fd.metadata()?;
        if md.nlink() == 0 {
            return Ok(FileKind::Directory {
                path: fd
                    .link
                    .strip_suffix(" (deleted)")
                    .unwrap_or(&fd.link)
                    .to_string(),
                dev: md.dev(),
                ino: md.ino(),
                deleted: Some(deleted_dir(md)),
            });
        }
        Ok(FileKind::Directory {
            path: fd.link.clone(),
            dev: md.dev(),
            ino: md.ino(),
            deleted: None,
        })
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Directory { path, deleted, .. } = &desc.kind else {
            return Err("not a directory".into());
        };
        if let Some(d) = deleted {
            check_deleted(d)?;
        }
        super::check_path(path)
    }

    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::Directory {
            path,
            dev,
            ino,
            deleted,
        } = &desc.kind
        else {
            return Err(Error::Invalid(format!(
                "description {} is not a directory",
                desc.id
            )));
        };
        let open_dir = |at: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | super::reopen_flags(desc))
                .open(at)
                .map_err(|e| Error::io(format!("open directory {at}"), e))
        };
        if let Some(d) = deleted {
            let fallback = format!("{path}.stasis-{}-{}", std::process::id(), desc.id);
            let tmp = recreate_deleted(path, &fallback, d)?;
            let opened = open_dir(&tmp);
            let removed = std::fs::remove_dir(&tmp)
                .map_err(|e| Error::io(format!("rmdir {tmp} (made for a deleted directory)"), e));
            let dir = opened?;
            removed?;
            return Ok(dir.into());
        }
        ctx.check_opened(
            path,
            open_dir(path)?,
            *dev,
            *ino,
            Some(libc::S_IFDIR),
            "the directory that was open",
        )
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

    fn directory(path: &str) -> FileDesc {
        FileDesc {
            id: 1,
            flags: 0,
            pos: 0,
            kind: FileKind::Directory {
                path: path.into(),
                dev: 0,
                ino: 0,
                deleted: None,
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate() {
        let p = sample_process();
        Directories.validate(&directory("/tmp"), &p).unwrap();
        for bad in ["tmp", "/t\0mp", ""] {
            assert!(
                Directories.validate(&directory(bad), &p).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn open_checks_the_directory() {
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = OpenContext::new(&images, super::super::ReplacedFiles::Refuse);
        let md = std::fs::metadata("/").unwrap();
        let mut root = directory("/");
        if let FileKind::Directory { dev, ino, .. } = &mut root.kind {
            (*dev, *ino) = (md.dev(), md.ino());
        }
        Directories.open(&root, &mut ctx).unwrap();
        assert!(Directories.open(&directory("/dev/null"), &mut ctx).is_err());
        let err = Directories
            .open(&directory("/"), &mut ctx)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not the directory that was open at dump time"),
            "{err}"
        );
    }

    #[test]
    fn deleted_directory_is_recreated_empty_and_removed() {
        let tmp = std::env::temp_dir().join(format!("stasis-deldir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).unwrap();
        let images = ImageDir::open(&tmp).unwrap();
        let mut ctx = OpenContext::new(&images, super::super::ReplacedFiles::Refuse);
        let gone = tmp.join("gone");
        let mut desc = directory(gone.to_str().unwrap());
        let d = DeletedDir {
            mode: 0o750,
            uid: 4321,
            gid: 4322,
        };
        if let FileKind::Directory { deleted, .. } = &mut desc.kind {
            *deleted = Some(d);
        }
        Directories.validate(&desc, &sample_process()).unwrap();
        let fd = Directories.open(&desc, &mut ctx).unwrap();
        let md = std::fs::File::from(fd).metadata().unwrap();
        assert!(md.is_dir());
        assert_eq!((md.nlink(), md.mode() & 0o7777), (0, 0o750));
        if stasis_sys::process::geteuid() == 0 {
            assert_eq!((md.uid(), md.gid()), (4321, 4322));
        }
        assert!(!gone.exists());
        // The old name taken: made next to it, and removed too.
        std::fs::create_dir(&gone).unwrap();
        Directories.open(&desc, &mut ctx).unwrap();
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            1,
            "only the new gone is left"
        );
        if let FileKind::Directory { deleted, .. } = &mut desc.kind {
            *deleted = Some(DeletedDir { mode: 0o40750, ..d });
        }
        assert!(Directories.validate(&desc, &sample_process()).is_err());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
