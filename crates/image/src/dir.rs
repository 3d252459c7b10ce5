//! An image directory, held as an open directory descriptor.
//!
//! Every file is created and opened relative to that descriptor with
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, created exclusively (O_EXCL) with mode 0600 and,
//! when an owner is set, handed to that owner — so a directory passed in by an unprivileged
//! client can never make a privileged writer follow a planted link or leave the directory.

use crate::ImageError;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// An open image directory.
#[derive(Debug)]
pub struct ImageDir {
    fd: OwnedFd,
    /// How the directory is named in messages (its path, or a description).
    label: PathBuf,
    /// uid and gid that created files are given to.
    owner: Option<(u32, u32)>,
}

impl ImageDir {
    /// Opens an existing directory by path.
    pub fn open(path: &Path) -> Result<ImageDir, ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)
            .map_err(io)?;
        Ok(ImageDir {
            fd: f.into(),
            label: path.to_path_buf(),
            owner: None,
        })
    }

    /// Creates the directory (and its parents) if needed, then opens it.
    pub fn create(path: &Path) -> Result<ImageDir, ImageError> {
        std::fs::create_dir_all(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ImageDir::open(path)
    }

    /// Wraps a directory descriptor received from elsewhere (a client). `label` names it in
    /// messages.
    pub fn from_fd(fd: OwnedFd, label: impl Into<PathBuf>) -> Result<ImageDir, ImageError> {
        let label = label.into();
        let f = File::from(fd);
        let md = f.metadata().map_err(|source| ImageError::Io {
            path: label.clone(),
            source,
        })?;
        if !md.is_dir() {
            return Err(ImageError::Invalid {
                path: label,
                reason: "not a directory".into(),
            });
        }
        Ok(ImageDir {
            fd: f.into(),
            label,
            owner: None,
        })
    }

    /// Files created from now on are given to `uid`:`gid`.
    pub fn with_owner(mut self, uid: u32, gid: u32) -> ImageDir {
        self.owner = Some((uid, gid));
        self
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The path used in messages for `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.label.join(name)
    }

    pub fn label(&self) -> &Path {
        &self.label
    }

    fn io(&self, name: &str) -> impl Fn(std::io::Error) -> ImageError {
        let path = self.path_of(name);
        move |source| ImageError::Io {
            path: path.clone(),
            source,
        }
    }

    /// Creates `name`, which must not exist, for writing.
    pub fn create_file(&self, name: &str) -> Result<File, ImageError> {
        let fd = stasis_sys::fs::open_beneath(
            self.fd(),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .map_err(self.io(name))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(self.io(name))?;
        }
        Ok(File::from(fd))
    }

    /// Checks, by creating and removing a probe file, that files can be created here (with the
    /// identity and permissions in force), so a dump can fail before it freezes anything.
    pub fn check_writable(&self) -> Result<(), ImageError> {
        let probe = format!(".stasis-probe-{}", std::process::id());
        drop(self.create_file(&probe)?);
        self.remove(&probe)
    }

    /// Opens `name` for reading.
    pub fn open_file(&self, name: &str) -> Result<File, ImageError> {
        let fd = stasis_sys::fs::open_beneath(self.fd(), name, libc::O_RDONLY, 0)
            .map_err(self.io(name))?;
        let f = File::from(fd);
        let md = f.metadata().map_err(self.io(name))?;
        if !md.is_file() {
            return Err(ImageError::Invalid {
                path: self.path_of(name),
                reason: "not a regular file".into(),
            });
        }
        Ok(f)
    }

    /// Whether `name` exists (as anything).
    pub fn exists(&self, name: &str) -> bool {
        stasis_sys::fs::open_beneath(self.fd(), name, libc::O_PATH, 0).is_ok()
    }

    /// Atomically replaces `to` with `from`.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), ImageError> {
        stasis_sys::fs::rename_in(self.fd(), from, to).map_err(self.io(to))
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        stasis_sys::fs::unlink_in(self.fd(), name).map_err(self.io(name))
    }

    /// Flushes `name` to stable storage.
    pub fn sync_file(&self, name: &str) -> Result<(), ImageError> {
        let f = stasis_sys::fs::open_beneath(self.fd(), name, libc::O_RDONLY, 0)
            .map_err(self.io(name))?;
        File::from(f).sync_all().map_err(self.io(name))
    }
}

use std::os::unix::fs::OpenOptionsExt;

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("stasis-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let d = tmp("symlink");
        let outside = d.join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        let inner = d.join("images");
        std::fs::create_dir(&inner).unwrap();
        std::os::unix::fs::symlink(&outside, inner.join("inventory.img")).unwrap();
        std::os::unix::fs::symlink("/", inner.join("up")).unwrap();
        let dir = ImageDir::open(&inner).unwrap();
        assert!(
            dir.create_file("inventory.img").is_err(),
            "must not write through a link"
        );
        assert!(
            dir.open_file("inventory.img").is_err(),
            "must not read through a link"
        );
        assert!(
            dir.create_file("up/etc-x").is_err(),
            "must not resolve through a link"
        );
        assert!(
            dir.create_file("../escape").is_err(),
            "must not leave the directory"
        );
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
        let f = dir.create_file("new.img").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
        assert!(dir.create_file("new.img").is_err(), "exclusive create");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
