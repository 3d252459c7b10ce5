//! O_PATH descriptors: a handle on an object in the file tree (any type: file, directory,
//! symbolic link, FIFO, device, socket) that opens nothing, reopened by path.
//!
//! Dump: any fd whose flags have O_PATH, whatever the class of its object (so this kind is
//! tried before every other). Its path is where /proc/PID/fd/N points; with O_NOFOLLOW on a
//! symbolic link, that is the link itself (and the descriptor refers to the link). The path
//! must still name the object (device and inode); an object that was deleted, or that has no
//! path (a pipe, socket or anonymous inode reached through /proc), has nothing to be reopened
//! by and fails the dump.
//!
//! Restore: open(2) of the path with O_PATH and the O_NOFOLLOW and O_DIRECTORY the
//! description was opened with (O_NOFOLLOW always for a symbolic link). The object must be the
//! dumped one (device and inode; refused otherwise unless replaced files are accepted,
//! [`super::ReplacedFiles`]) and always of the same type. An O_PATH descriptor has no offset,
//! status flags or owner (fcntl refuses them).

use super::{FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// The O_PATH kind.
#[derive(Default)]
pub struct OPaths;

/// The open flags an O_PATH descriptor keeps besides O_PATH (and O_CLOEXEC, which is the fd's).
const KEPT_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_DIRECTORY;

impl FileOps for OPaths {
    fn name(&self) -> &'static str {
        "O_PATH descriptor"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::OPath { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.flags as i32 & libc::O_PATH != 0
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        if super::check_path(&fd.link).is_err() {
            return Err(fd.unsupported("an O_PATH descriptor of an object without a path"));
        }
        let md = fd.metadata()?;
        if md.nlink() == 0 {
            return Err(fd.unsupported("an O_PATH descriptor of a deleted object"));
        }
        let by_path = std::fs::symlink_metadata(&fd.link).map_err(|e| {
            Error::io(
                format!("stat {} (O_PATH fd {} of pid {})", fd.link, fd.fd, fd.pid),
                e,
            )
        })?;
        if (by_path.dev(), by_path.ino()) != (md.dev(), md.ino()) {
            return Err(Error::Unsupported {
                what: format!(
                    "fd {} of pid {}: the path {} of its O_PATH object now names another file",
                    fd.fd, fd.pid, fd.link
                ),
            });
        }
        Ok(FileKind::OPath {
            path: fd.link.clone(),
            dev: md.dev(),
            ino: md.ino(),
            mode: md.mode() & libc::S_IFMT,
        })
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::OPath { path, mode, .. } = &desc.kind else {
            return Err("not an O_PATH descriptor".into());
        };
        super::check_path(path)?;
        if *mode == 0 || mode & !libc::S_IFMT != 0 {
            return Err(format!("file type {mode:#o} is not one"));
        }
        if desc.flags as i32 & libc::O_PATH == 0 {
            return Err(format!("flags {:#o} without O_PATH", desc.flags));
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::OPath {
            path,
            dev,
            ino,
            mode,
        } = &desc.kind
        else {
            return Err(Error::Invalid(format!(
                "description {} is not an O_PATH descriptor",
                desc.id
            )));
        };
        let mut flags = libc::O_PATH | desc.flags as i32 & KEPT_FLAGS;
        if *mode == libc::S_IFLNK {
            flags |= libc::O_NOFOLLOW;
        }
        // With O_PATH the access mode is ignored; the standard library wants one.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| Error::io(format!("open {path} with O_PATH"), e))?;
        ctx.check_opened(path, f, *dev, *ino, Some(*mode), "the object that was open")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::ReplacedFiles;
    use stasis_image::testing::sample_process;
    use stasis_image::ImageDir;
    use std::os::fd::AsFd;

    fn opath(path: &str, flags: i32, md: &std::fs::Metadata) -> FileDesc {
        FileDesc {
            id: 1,
            flags: (libc::O_PATH | flags) as u32,
            pos: 0,
            kind: FileKind::OPath {
                path: path.into(),
                dev: md.dev(),
                ino: md.ino(),
                mode: md.mode() & libc::S_IFMT,
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate() {
        let p = sample_process();
        let md = std::fs::metadata("/").unwrap();
        OPaths.validate(&opath("/", 0, &md), &p).unwrap();
        assert!(OPaths.validate(&opath("tmp", 0, &md), &p).is_err());
        let mut bad = opath("/", 0, &md);
        bad.flags = 0;
        assert!(OPaths.validate(&bad, &p).is_err(), "no O_PATH");
        if let FileKind::OPath { mode, .. } = &mut bad.kind {
            *mode |= 0o644;
        }
        bad.flags = libc::O_PATH as u32;
        assert!(OPaths.validate(&bad, &p).is_err(), "permission bits");
    }

    /// A symbolic link's O_PATH descriptor is the link itself; a replaced object is refused
    /// unless accepted, and another type of object always.
    #[test]
    fn reopens_the_object_itself() {
        let dir = std::env::temp_dir().join(format!("stasis-opath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (file, link) = (dir.join("file"), dir.join("link"));
        std::fs::write(&file, b"x").unwrap();
        std::os::unix::fs::symlink("file", &link).unwrap();
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = OpenContext::new(&images, ReplacedFiles::Refuse);
        let lmd = std::fs::symlink_metadata(&link).unwrap();
        let desc = opath(link.to_str().unwrap(), libc::O_NOFOLLOW, &lmd);
        let fd = OPaths.open(&desc, &mut ctx).unwrap();
        let flags = stasis_sys::process::get_status_flags(fd.as_fd()).unwrap();
        assert_eq!(
            flags & (libc::O_PATH | libc::O_NOFOLLOW),
            libc::O_PATH | libc::O_NOFOLLOW
        );
        let md = std::fs::File::from(fd).metadata().unwrap();
        assert_eq!((md.ino(), md.file_type().is_symlink()), (lmd.ino(), true));

        // Another link (made before the old one goes, so it is another inode).
        std::os::unix::fs::symlink("file", dir.join("other")).unwrap();
        std::fs::rename(dir.join("other"), &link).unwrap();
        let err = OPaths.open(&desc, &mut ctx).unwrap_err().to_string();
        assert!(err.contains("not the object that was open"), "{err}");
        let mut accept = OpenContext::new(&images, ReplacedFiles::Accept { warn: |_| {} });
        OPaths.open(&desc, &mut accept).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::fs::create_dir(&link).unwrap();
        let err = OPaths.open(&desc, &mut accept).unwrap_err().to_string();
        assert!(err.contains("is a directory, not the object"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
