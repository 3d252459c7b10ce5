//! Directories, reopened by path (for openat, fchdir, getdents).
//!
//! Dump: the path /proc/PID/fd/N points to. A directory that was deleted while open (link
//! count 0) has no path to be reopened by and fails the dump.
//!
//! Restore: open(2) of the path, read-only with O_DIRECTORY and the dumped open flags; the
//! offset (the getdents position) is set afterwards (lseek).

use super::{Class, FileOps, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ImageDir, ProcessImage};
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
        if fd.metadata()?.nlink() == 0 {
            return Err(fd.unsupported("a directory that was deleted"));
        }
        Ok(FileKind::Directory {
            path: fd.link.clone(),
        })
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Directory { path } = &desc.kind else {
            return Err("not a directory".into());
        };
        super::check_path(path)
    }

    fn open(&mut self, desc: &FileDesc, _images: &ImageDir) -> Result<OwnedFd, Error> {
        let FileKind::Directory { path } = &desc.kind else {
            return Err(Error::Invalid(format!(
                "description {} is not a directory",
                desc.id
            )));
        };
        let mut o = std::fs::OpenOptions::new();
        o.read(true)
            .custom_flags(libc::O_DIRECTORY | super::reopen_flags(desc));
        Ok(o.open(path)
            .map_err(|e| Error::io(format!("open directory {path}"), e))?
            .into())
    }

    fn has_position(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    fn directory(path: &str) -> FileDesc {
        FileDesc {
            id: 1,
            flags: 0,
            pos: 0,
            kind: FileKind::Directory { path: path.into() },
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
    fn open_refuses_a_file() {
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        Directories.open(&directory("/"), &images).unwrap();
        assert!(Directories.open(&directory("/dev/null"), &images).is_err());
    }
}
