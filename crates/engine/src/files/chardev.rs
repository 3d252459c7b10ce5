//! Character devices (/dev/null, /dev/zero, terminals, ...), reopened by path.
//!
//! Dump: the path /proc/PID/fd/N points to, and the device number (rdev).
//!
//! Restore: open(2) of the path with the dumped access mode and open flags; it must be the same
//! device (rdev), else the restore fails. The offset is not restored (devices keep their own).

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The character-device kind.
#[derive(Default)]
pub struct CharDevices;

impl FileOps for CharDevices {
    fn name(&self) -> &'static str {
        "character device"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::CharDevice { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::CharDevice
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        Ok(FileKind::CharDevice {
            path: fd.link.clone(),
            rdev: fd.metadata()?.rdev(),
        })
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::CharDevice { path, .. } = &desc.kind else {
            return Err("not a character device".into());
        };
        super::check_path(path)
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::CharDevice { path, rdev } = &desc.kind else {
            return Err(Error::Invalid(format!(
                "description {} is not a character device",
                desc.id
            )));
        };
        let file = super::open_path(path, desc, 0)?;
        let md = file
            .metadata()
            .map_err(|e| Error::io(format!("fstat {path}"), e))?;
        if md.rdev() != *rdev {
            return Err(Error::Invalid(format!(
                "{path} is device {:#x}, the image expects {rdev:#x}",
                md.rdev()
            )));
        }
        Ok(file.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_image::ImageDir;

    fn device(path: &str, rdev: u64) -> FileDesc {
        FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::CharDevice {
                path: path.into(),
                rdev,
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate() {
        let p = sample_process();
        CharDevices
            .validate(&device("/dev/null", 0x103), &p)
            .unwrap();
        for bad in ["dev/null", "/dev/\0null"] {
            assert!(
                CharDevices.validate(&device(bad, 0x103), &p).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn open_checks_the_device() {
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = crate::files::OpenContext::new(&images, crate::files::ReplacedFiles::Refuse);
        let rdev = std::fs::metadata("/dev/null").unwrap().rdev();
        CharDevices
            .open(&device("/dev/null", rdev), &mut ctx)
            .unwrap();
        let err = CharDevices
            .open(&device("/dev/null", rdev + 1), &mut ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/dev/null is device"), "{err}");
    }
}
