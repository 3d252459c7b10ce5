//! The image key: the secret stasisd, and root's `stasis dump`, authenticate images with (see
//! [`stasis_image::auth`] for what is MACed and how reads are checked).
//!
//! The secret is 32 random bytes in a file only root can read, [`DEFAULT_KEY_FILE`] unless told
//! otherwise. stasisd creates it at its first start ([`load_or_create_key`]); a key file that
//! is not a regular file owned by root, that others can read or write, that is not 32 bytes
//! long, or that lies in a directory others can write to (so could replace it), is refused
//! with a message saying which, never "fixed".

use crate::Error;
pub use stasis_image::auth::SECRET_LEN;
pub use stasis_image::ImageKey;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Where stasisd keeps the secret unless told otherwise (`--key-file`).
pub const DEFAULT_KEY_FILE: &str = "/var/lib/stasis/image.key";

fn key_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("image key {}: {what}", path.display()))
}

/// The directory that holds the key file: root's, and writable by root only (else anyone who
/// can write there could replace the key).
fn check_key_dir(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let md = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("image key directory {}: stat", dir.display()), e))?;
    if !md.is_dir() {
        return Err(key_error(
            path,
            format!("{} is not a directory", dir.display()),
        ));
    }
    if md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(key_error(
            path,
            format!(
                "its directory {} is owned by uid {} with mode {:04o}; it must be root's and \
                 writable by root only (0700)",
                dir.display(),
                md.uid(),
                md.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Reads the key file at `path`: a regular file owned by root, mode 0600 (or 0400), holding
/// exactly [`SECRET_LEN`] bytes, in a directory only root can write to.
pub fn load_key(path: &Path) -> Result<ImageKey, Error> {
    check_key_dir(path)?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::io(format!("image key {}: open", path.display()), e))?;
    let md = f
        .metadata()
        .map_err(|e| Error::io(format!("image key {}: fstat", path.display()), e))?;
    if !md.is_file() {
        return Err(key_error(path, "not a regular file"));
    }
    if md.uid() != 0 {
        return Err(key_error(
            path,
            format!("owned by uid {}; it must be owned by root", md.uid()),
        ));
    }
    if md.mode() & 0o177 != 0 {
        return Err(key_error(
            path,
            format!(
                "mode {:04o}; it must be 0600 (readable and writable by root only)",
                md.mode() & 0o7777
            ),
        ));
    }
    if md.len() != SECRET_LEN as u64 {
        return Err(key_error(
            path,
            format!("{} bytes; it must hold exactly {SECRET_LEN}", md.len()),
        ));
    }
    let mut secret = [0u8; SECRET_LEN];
    f.read_exact(&mut secret)
        .map_err(|e| Error::io(format!("image key {}: read", path.display()), e))?;
    let key = ImageKey::from_secret(&secret);
    secret.fill(0);
    std::hint::black_box(&secret);
    Ok(key)
}

/// Reads the key file at `path`, creating it first when it does not exist: 32 bytes from
/// getrandom, mode 0600, in a directory created with mode 0700 if missing. The file is written
/// under a temporary name (created exclusively), synced, and linked into place, which fails
/// if a key appeared meanwhile (another stasisd starting): then that key is used. Returns the
/// key and whether it was created. Needs root.
pub fn load_or_create_key(path: &Path) -> Result<(ImageKey, bool), Error> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => return load_key(path).map(|k| (k, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("image key {}: stat", path.display()), e)),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::io(
                format!("create the image key directory {}", dir.display()),
                e,
            )
        })?;
    check_key_dir(path)?;
    let mut secret = [0u8; SECRET_LEN];
    stasis_sys::random::fill(&mut secret)
        .map_err(|e| Error::io("getrandom for the image key", e))?;
    let tmp = dir.join(format!(".image.key.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = stasis_sys::fs::create_private(&tmp)?;
        f.write_all(&secret)?;
        f.sync_all()
    })();
    secret.fill(0);
    std::hint::black_box(&secret);
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    let created = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(Error::io(format!("create image key {}", path.display()), e)),
    };
    if created {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("sync {}", dir.display()), e))?;
    }
    load_key(path).map(|k| (k, created))
}

/// The key root's own `stasis dump` (with `create`) or `stasis restore`/`stasis show` use: the
/// key file at `path` when this process is root and the file can be read (or, with `create`,
/// created). `None` otherwise, silently: images are then written without authentication, or
/// read without checking it.
pub fn key_for_root(path: &Path, create: bool) -> Option<ImageKey> {
    if stasis_sys::process::geteuid() != 0 {
        return None;
    }
    let key = if create {
        load_or_create_key(path).map(|(k, _)| k)
    } else {
        load_key(path)
    };
    match key {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::debug!(error = %e, "no image key: images are not authenticated");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> std::path::PathBuf {
        crate::fresh_test_dir(&format!("key-{tag}"))
    }

    /// Creating, reading back, and refusing a key file that is not root's alone. Needs root
    /// (the file must be owned by root); elsewhere it checks only that the refusal is clear.
    #[test]
    fn key_file_is_created_once_and_checked() {
        let d = tmp("create");
        let path = d.join("sub").join("image.key");
        if stasis_sys::process::geteuid() != 0 {
            let e = load_or_create_key(&path).err();
            assert!(e.is_some(), "a non-root key file was accepted");
            let _ = std::fs::remove_dir_all(&d);
            return;
        }
        let (k1, created) = load_or_create_key(&path).unwrap();
        assert!(created);
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!((md.mode() & 0o7777, md.len(), md.uid()), (0o600, 32, 0));
        let dmd = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dmd.mode() & 0o7777, 0o700);
        let (k2, created) = load_or_create_key(&path).unwrap();
        assert!(!created);
        assert!(k1 == k2, "the key changed");
        assert!(load_key(&path).unwrap() == k1);
        // Nothing left behind but the key.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("image.key")]);

        let refused = |needle: &str| {
            let e = load_key(&path)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains(needle) && e.contains("image.key"),
                "expected {needle:?}: {e:?}"
            );
            let e = load_or_create_key(&path).err().map(|e| e.to_string());
            assert!(e.is_some(), "load_or_create accepted it ({needle})");
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        refused("mode 0644");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(1), None).unwrap();
        refused("owned by uid 1");
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        refused("33 bytes");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        refused("open");
        std::fs::remove_file(&path).unwrap();
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        refused("writable by root only");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
