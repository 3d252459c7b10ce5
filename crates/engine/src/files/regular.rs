//! Regular files, reopened by path: each description's path, flags and offset, and the file's
//! device, inode and size.
//!
//! Dump: a regular file that still has a name (link count above 0). Its path is where
//! /proc/PID/fd/N points, and it must still name that very file (device and inode): a file
//! renamed over or replaced since it was opened fails the dump. A name that was deleted while
//! the file keeps links under other names (a hard link left elsewhere) is
//! [`super::link_remap`]'s, which comes first; should one reach this kind, it is refused.
//!
//! Restore: open(2) of the path with the dumped access mode and open flags; the file opened
//! must be the dumped one (device and inode), else the restore fails rather than hand the
//! process another file, unless it was told to accept a replaced file
//! ([`super::ReplacedFiles`]): then any regular file at the path is restored, with a warning.
//! The offset is set afterwards (lseek).

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The regular-file kind.
#[derive(Default)]
pub struct RegularFiles;

impl FileOps for RegularFiles {
    fn name(&self) -> &'static str {
        "regular file"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Regular { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::File && fd.metadata().is_ok_and(|md| md.nlink() > 0)
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let md = fd.metadata()?;
        let by_path = match std::fs::metadata(&fd.link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(name) = fd.link.strip_suffix(" (deleted)") {
                    return Err(Error::Unsupported {
                        what: format!(
                            "fd {} of pid {}: the name {name} was deleted but the file keeps {} \
                             link(s) under another name, which cannot be found from the fd",
                            fd.fd,
                            fd.pid,
                            md.nlink()
                        ),
                    });
                }
                return Err(Error::io(
                    format!("stat {} (open as fd {})", fd.link, fd.fd),
                    e,
                ));
            }
            other => other
                .map_err(|e| Error::io(format!("stat {} (open as fd {})", fd.link, fd.fd), e))?,
        };
        if (by_path.dev(), by_path.ino()) != (md.dev(), md.ino()) {
            return Err(Error::Unsupported {
                what: format!("fd {}: the path {} now names another file", fd.fd, fd.link),
            });
        }
        Ok(FileKind::Regular {
            path: fd.link.clone(),
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
        })
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Regular { path, .. } = &desc.kind else {
            return Err("not a regular file".into());
        };
        super::check_path(path)
    }

    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::Regular { path, dev, ino, .. } = &desc.kind else {
            return Err(Error::Invalid(format!(
                "description {} is not a regular file",
                desc.id
            )));
        };
        let file = super::open_path(path, desc, 0)?;
        ctx.check_opened(
            path,
            file,
            *dev,
            *ino,
            Some(libc::S_IFREG),
            "the file that was open",
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

    fn regular(path: &str) -> FileDesc {
        FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::Regular {
                path: path.into(),
                dev: 1,
                ino: 2,
                size: 3,
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate() {
        let p = sample_process();
        RegularFiles.validate(&regular("/tmp/f"), &p).unwrap();
        for bad in ["tmp/f", "", "/tmp/\0f"] {
            assert!(RegularFiles.validate(&regular(bad), &p).is_err(), "{bad:?}");
        }
        let long = format!("/{}", "x".repeat(stasis_image::MAX_PATH));
        assert!(RegularFiles.validate(&regular(&long), &p).is_err());
    }

    #[test]
    fn open_refuses_another_inode() {
        let path = std::env::temp_dir().join(format!("stasis-regular-{}", std::process::id()));
        std::fs::write(&path, b"hello").unwrap();
        let md = std::fs::metadata(&path).unwrap();
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = OpenContext::new(&images, super::super::ReplacedFiles::Refuse);
        let mut desc = regular(path.to_str().unwrap());
        desc.pos = 3;
        desc.flags = (libc::O_RDONLY | libc::O_NONBLOCK) as u32;
        if let FileKind::Regular { dev, ino, .. } = &mut desc.kind {
            (*dev, *ino) = (md.dev(), md.ino());
        }
        let fd = super::super::open_description(&mut RegularFiles, &desc, &mut ctx).unwrap();
        let flags = stasis_sys::process::get_status_flags(std::os::fd::AsFd::as_fd(&fd)).unwrap();
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut rest).unwrap();
        assert_eq!(rest, "lo", "the offset is restored");
        if let FileKind::Regular { ino, .. } = &mut desc.kind {
            *ino += 1;
        }
        let err = RegularFiles.open(&desc, &mut ctx).unwrap_err().to_string();
        assert!(
            err.contains("not the file that was open at dump time")
                && err.contains("inode changed")
                && err.contains("--accept-replaced-files"),
            "{err}"
        );
        // Told to accept a replaced file, it restores the one found there (and warns once).
        let mut accept = OpenContext::new(
            &images,
            super::super::ReplacedFiles::Accept { warn: |_| {} },
        );
        RegularFiles.open(&desc, &mut accept).unwrap();
        assert_eq!(accept.warned.len(), 1);
        RegularFiles.open(&desc, &mut accept).unwrap();
        assert_eq!(accept.warned.len(), 1, "one warning per path");
        // Another type is refused even so.
        let mut dir = regular(std::env::temp_dir().to_str().unwrap());
        dir.flags = libc::O_RDONLY as u32;
        let err = RegularFiles
            .open(&dir, &mut accept)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a directory, not the file"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
