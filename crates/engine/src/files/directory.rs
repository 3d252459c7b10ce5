//! Directories, reopened by path (for openat, fchdir, getdents).
//!
//! Dump: the path /proc/PID/fd/N points to, with the directory's device and inode. A directory
//! that was deleted while open (link count 0) has no path to be reopened by and fails the dump.
//!
//! Restore: open(2) of the path, read-only with O_DIRECTORY and the dumped open flags; it must
//! be the dumped directory (device and inode), unless the restore accepts replaced files
//! ([`super::ReplacedFiles`]). The offset (the getdents position) is set afterwards (lseek).

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

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
            return Err(fd.unsupported("a directory that was deleted"));
        }
        Ok(FileKind::Directory {
            path: fd.link.clone(),
            dev: md.dev(),
            ino: md.ino(),
        })
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Directory { path, .. } = &desc.kind else {
            return Err("not a directory".into());
        };
        super::check_path(path)
    }

    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::Directory { path, dev, ino } = &desc.kind else {
            return Err(Error::Invalid(format!(
                "description {} is not a directory",
                desc.id
            )));
        };
        let mut o = std::fs::OpenOptions::new();
        o.read(true)
            .custom_flags(libc::O_DIRECTORY | super::reopen_flags(desc));
        let dir = o
            .open(path)
            .map_err(|e| Error::io(format!("open directory {path}"), e))?;
        let md = dir
            .metadata()
            .map_err(|e| Error::io(format!("fstat {path}"), e))?;
        ctx.check_same_file(
            path,
            &md,
            *dev,
            *ino,
            Some(libc::S_IFDIR),
            "the directory that was open",
        )?;
        Ok(dir.into())
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
}
