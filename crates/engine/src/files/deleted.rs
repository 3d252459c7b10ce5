//! Regular files deleted while open: they have no name to be reopened by, so their contents
//! are stored.
//!
//! Dump: a regular file with no links left (and not a memfd, which [`super::memfd`] claims
//! first). The path it had (/proc/PID/fd/N without " (deleted)"), its permission bits, and its
//! length and CRC-32C are recorded; the contents go into the description's blob image
//! (`blob-ID.img`, written by [`super::write_blobs`], which checks that the CRC still holds).
//!
//! Restore: a new file is created next to the original path (`PATH.stasis-PID-ID`, with the
//! dumped permission bits), filled from the blob (whose length and CRC are checked), opened
//! with the dumped access mode and open flags, and unlinked again; the offset is set
//! afterwards (lseek). The restored file is thus deleted too, with the same contents.

use super::{blob, Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

/// The deleted-file kind.
#[derive(Default)]
pub struct DeletedFiles;

impl FileOps for DeletedFiles {
    fn name(&self) -> &'static str {
        "deleted file"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Deleted { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::File && fd.metadata().is_ok_and(|md| md.nlink() == 0)
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        id: u32,
        out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let (file, md) = (fd.file()?, fd.metadata()?);
        let path = fd.link.strip_suffix(" (deleted)").unwrap_or(&fd.link);
        let what = format!("deleted file of fd {} of pid {}", fd.fd, fd.pid);
        let crc = blob::crc_of(file, md.size(), &what)?;
        out.add_blob(id, file)?;
        Ok(FileKind::Deleted {
            path: path.to_string(),
            mode: md.mode() & 0o7777,
            len: md.size(),
            crc,
        })
    }

    fn blob(&self, desc: &FileDesc) -> Option<(u64, u32)> {
        match &desc.kind {
            FileKind::Deleted { len, crc, .. } => Some((*len, *crc)),
            _ => None,
        }
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Deleted { path, mode, .. } = &desc.kind else {
            return Err("not a deleted file".into());
        };
        super::check_path(path)?;
        if mode & !0o7777 != 0 {
            return Err(format!("mode {mode:#o} has more than permission bits"));
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::Deleted {
            path,
            mode,
            len,
            crc,
        } = &desc.kind
        else {
            return Err(Error::Invalid(format!(
                "description {} is not a deleted file",
                desc.id
            )));
        };
        let tmp = format!("{path}.stasis-{}-{}", std::process::id(), desc.id);
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&tmp)
            .map_err(|e| Error::io(format!("create {tmp}"), e))?;
        let result = blob::read(
            ctx.images,
            desc.id,
            *len,
            *crc,
            &format!("deleted file {path}"),
            |off, piece| {
                writer
                    .write_all_at(piece, off)
                    .map_err(|e| Error::io(format!("write {tmp}"), e))
            },
        )
        .and_then(|()| super::open_path(&tmp, desc, 0));
        let _ = std::fs::remove_file(&tmp);
        result.map(File::into)
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

    fn deleted(path: &str, mode: u32) -> FileDesc {
        FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::Deleted {
                path: path.into(),
                mode,
                len: 0,
                crc: 0,
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate() {
        let p = sample_process();
        DeletedFiles
            .validate(&deleted("/tmp/x", 0o4755), &p)
            .unwrap();
        assert!(DeletedFiles.validate(&deleted("x", 0o644), &p).is_err());
        assert!(DeletedFiles.validate(&deleted("/x\0", 0o644), &p).is_err());
        assert!(
            DeletedFiles
                .validate(&deleted("/tmp/x", 0o100644), &p)
                .is_err(),
            "file type bits"
        );
    }

    #[test]
    fn recreated_from_the_blob_and_deleted_again() {
        let tmp = std::env::temp_dir().join(format!("stasis-deleted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let images = ImageDir::create(&tmp).unwrap();
        let mut ctx = crate::files::OpenContext::new(&images, crate::files::ReplacedFiles::Refuse);
        let src = tmp.join("src");
        std::fs::write(&src, b"contents").unwrap();
        let file = File::open(&src).unwrap();
        let crc = blob::crc_of(&file, 8, "src").unwrap();
        blob::write(&images, 5, &file, 8, crc, "deleted file").unwrap();
        let path = tmp.join("gone");
        let desc = FileDesc {
            id: 5,
            flags: libc::O_RDWR as u32,
            pos: 3,
            kind: FileKind::Deleted {
                path: path.to_str().unwrap().into(),
                mode: 0o640,
                len: 8,
                crc,
            },
            owner: Default::default(),
            locks: Vec::new(),
        };
        DeletedFiles.verify(&images, &desc).unwrap();
        let fd = super::super::open_description(&mut DeletedFiles, &desc, &mut ctx).unwrap();
        let f = File::from(fd);
        let md = f.metadata().unwrap();
        assert_eq!((md.nlink(), md.mode() & 0o7777, md.len()), (0, 0o640, 8));
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut &f, &mut rest).unwrap();
        assert_eq!(rest, "tents");
        assert!(!path.exists());
        let names: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
        assert_eq!(names.len(), 2, "only src and the blob are left: {names:?}");

        let mut bad = desc.clone();
        if let FileKind::Deleted { crc, .. } = &mut bad.kind {
            *crc ^= 1;
        }
        assert!(DeletedFiles.verify(&images, &bad).is_err());
        assert!(DeletedFiles.open(&bad, &mut ctx).is_err());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
