//! Regular files deleted while open: they have no name to be reopened by, so their contents
//! are stored.
//!
//! Dump: a regular file with no links left (and not a memfd, which [`super::memfd`] claims
//! first). The file is read through a description of its own (`/proc/PID/fd/N` reopened
//! read-only with `O_NOATIME` where permitted), so neither the process's offset nor the
//! file's access time moves. The path it had (/proc/PID/fd/N without " (deleted)"), its
//! permission bits, owner, access and modification times and size are recorded, with its data
//! extents (SEEK_DATA/SEEK_HOLE): only their bytes go into the description's blob image
//! (`blob-ID.img`, written by [`super::write_blobs`], which checks that the CRC still holds),
//! so a 1 GiB sparse file with a few blocks of data makes a blob of a few blocks.
//!
//! A deleted file that is only mapped (fds closed) gets a description without fd, read through
//! /proc/PID/map_files ([`FileOps::dump_without_fds`]); its mappings are `VmaKind::Deleted`
//! by device and inode ([`mapping_kind`]). A mapped name that was deleted while the file keeps
//! links elsewhere is mapped the same way, by device and inode, but its description is one of
//! [`super::link_remap`] (the file itself is kept, not its contents).
//!
//! Restore: one file per dumped device and inode, created at the original path when that name
//! is free (else next to it, `PATH.stasis-PID-ID`), given the dumped owner when the restorer
//! is root (a restore as a user leaves it the user's), its size (ftruncate: holes) and the
//! extents from the blob (whose length and CRC are checked) written at their offsets, then the
//! permission bits (after fchown, which clears set-id bits) and last the access and
//! modification times; it is unlinked again. Every description of it (and every mapping,
//! [`open_for_mapping`]) reopens it through /proc/self/fd with the dumped access mode and open
//! flags; the offset is set afterwards (lseek). The restored file is thus deleted too, with
//! the same contents, holes, size, mode, owner and times.

use super::{blob, Class, FileOps, OpenContext, OpenedFiles, Probe, ProcessFiles};
use crate::procfs::MapEntry;
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage, VmaKind};
use stasis_sys::Pid;
use std::collections::HashMap;
use std::fs::{File, FileTimes, Permissions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most data extents a deleted file may have (a record of 16 MiB at most).
pub(crate) const MAX_EXTENTS: usize = 1 << 20;

/// The deleted-file kind: at restore, the files recreated so far (one per dumped device and
/// inode, whatever the number of descriptions and mappings).
#[derive(Default)]
pub struct DeletedFiles {
    /// Restore: (dev, ino) -> a read-write descriptor of the recreated (unlinked) file.
    made: HashMap<(u64, u64), OwnedFd>,
}

/// Opens `fd` again through /proc/self/fd with `flags` (a new description of the same file).
pub(crate) fn reopen_own(fd: &impl AsRawFd, flags: i32) -> std::io::Result<OwnedFd> {
    let access = flags & libc::O_ACCMODE;
    let mut o = std::fs::OpenOptions::new();
    o.read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY)
        .custom_flags((flags & !libc::O_ACCMODE) | libc::O_CLOEXEC);
    Ok(o.open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?.into())
}

/// Describes the deleted file read through `file` (a description of the dumper's own); its
/// data extents are stored. `path` is the name it had.
fn describe(file: &File, path: &str, what: &str) -> Result<FileKind, Error> {
    let md = file
        .metadata()
        .map_err(|e| Error::io(format!("fstat {what}"), e))?;
    let size = md.size();
    let extents = data_extents(file, size, what)?;
    let crc = blob::crc_of_extents(file, &extents, what)?;
    Ok(FileKind::Deleted {
        path: path.to_string(),
        dev: md.dev(),
        ino: md.ino(),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size,
        len: extents.iter().map(|e| e.1).sum(),
        extents,
        atime: (md.atime(), md.atime_nsec() as u32),
        mtime: (md.mtime(), md.mtime_nsec() as u32),
        crc,
    })
}

/// Calls `f` with each mapping among `maps` (of `pid`) of a deleted name whose file no
/// description in `out` is of yet (checked before each call, so a file mapped twice comes
/// once), opened through /proc/PID/map_files, and its metadata: the mappings that need a
/// description without fd ([`FileOps::dump_without_fds`] of deleted files and of files
/// kept by a remap link).
pub(super) fn each_undescribed_mapping(
    pid: Pid,
    maps: &[MapEntry],
    out: &mut ProcessFiles<'_>,
    mut f: impl FnMut(&MapEntry, File, &std::fs::Metadata, &mut ProcessFiles<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    for m in maps {
        if crate::pages::vma::backing(m).ok() != Some(crate::pages::vma::Backing::Deleted) {
            continue;
        }
        let link = crate::procfs::map_file(pid, m.start, m.end);
        let file = open_mapped(&link)?;
        let md = file
            .metadata()
            .map_err(|e| Error::io(format!("fstat {link}"), e))?;
        let key = (md.dev(), md.ino());
        if out
            .descriptions()
            .iter()
            .any(|d| file_id(&d.kind) == Some(key))
        {
            continue;
        }
        f(m, file, &md, out)?;
    }
    Ok(())
}

/// The device and inode of a deleted-file description: a file deleted while open (its
/// contents stored) or one that keeps links elsewhere ([`super::link_remap`]); mappings of
/// either (`VmaKind::Deleted`) refer to them by these.
pub(crate) fn file_id(kind: &FileKind) -> Option<(u64, u64)> {
    match kind {
        FileKind::Deleted { dev, ino, .. } => Some((*dev, *ino)),
        _ => super::link_remap::file_id(kind),
    }
}

/// Opens a mapped file through /proc/PID/map_files, read-only, with O_NOATIME when permitted.
pub(crate) fn open_mapped(link: &str) -> Result<File, Error> {
    let open = |more: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(more)
            .open(link)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
    .map_err(|e| Error::io(format!("open {link}"), e))
}

/// Dump: the record of a mapping of a file deleted while mapped (smaps names it
/// "PATH (deleted)"), by device and inode. A file that still has links elsewhere (a hard link
/// left under another name) is mapped the same way; its description (an fd's, or one made by
/// [`super::link_remap`] for a file only mapped) keeps it by a remap link.
pub fn mapping_kind(pid: Pid, m: &MapEntry) -> Result<VmaKind, Error> {
    let link = crate::procfs::map_file(pid, m.start, m.end);
    let file = open_mapped(&link)?;
    let md = file
        .metadata()
        .map_err(|e| Error::io(format!("fstat {link}"), e))?;
    let what = || {
        format!(
            "mapping {:#x}-{:#x} of pid {pid} ({})",
            m.start, m.end, m.name
        )
    };
    if !md.file_type().is_file() {
        return Err(Error::Unsupported {
            what: format!("{}: the deleted object is not a regular file", what()),
        });
    }
    Ok(VmaKind::Deleted {
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// Restore: a descriptor of the recreated file (or the file kept by its remap link) with
/// `dev` and `ino` to map, read-write when the file allows it.
pub fn open_for_mapping(opened: &OpenedFiles, dev: u64, ino: u64) -> Result<OwnedFd, Error> {
    let fd = opened
        .descriptions()
        .iter()
        .filter(|f| file_id(&f.kind) == Some((dev, ino)))
        .find_map(|f| opened.get(f.id))
        .ok_or_else(|| Error::Invalid(format!("no restored deleted file {dev}:{ino} to map")))?;
    // O_NOATIME: mmap(2) counts as an access (the restorer made the file, so it may).
    reopen_own(fd, libc::O_RDWR | libc::O_NOATIME)
        .or_else(|_| reopen_own(fd, libc::O_RDWR))
        .or_else(|_| reopen_own(fd, libc::O_RDONLY | libc::O_NOATIME))
        .or_else(|_| reopen_own(fd, libc::O_RDONLY))
        .map_err(|e| Error::io(format!("reopen deleted file {dev}:{ino} to map it"), e))
}

/// Opens the file behind fd `fd` of `pid` again, read-only, as a description of its own;
/// with `O_NOATIME` when the dumper may (it owns the file or has CAP_FOWNER).
fn reopen(pid: Pid, fd: i32) -> Result<File, Error> {
    let path = format!("/proc/{pid}/fd/{fd}");
    let open = |more: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(more)
            .open(&path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
    .map_err(|e| Error::io(format!("reopen {path} (a deleted file) to read it"), e))
}

/// The data extents (offset, length) of the first `size` bytes of `file`.
pub(crate) fn data_extents(file: &File, size: u64, what: &str) -> Result<Vec<(u64, u64)>, Error> {
    let mut extents = Vec::new();
    let mut at = 0u64;
    while at < size {
        let Some(data) = stasis_sys::process::seek_data(file.as_fd(), at)
            .map_err(|e| Error::io(format!("SEEK_DATA in {what} from {at}"), e))?
        else {
            break;
        };
        if data >= size {
            break;
        }
        let hole = stasis_sys::process::seek_hole(file.as_fd(), data)
            .map_err(|e| Error::io(format!("SEEK_HOLE in {what} from {data}"), e))?
            .min(size);
        if hole <= data {
            return Err(Error::Invalid(format!(
                "SEEK_HOLE in {what} from {data} went back to {hole}"
            )));
        }
        if extents.len() == MAX_EXTENTS {
            return Err(Error::Unsupported {
                what: format!("{what} has more than {MAX_EXTENTS} data extents"),
            });
        }
        extents.push((data, hole - data));
        at = hole;
    }
    Ok(extents)
}

/// A time as (seconds, nanoseconds) since the epoch turned into a [`SystemTime`].
fn system_time((sec, nsec): (i64, u32)) -> Option<SystemTime> {
    let nanos = Duration::from_nanos(u64::from(nsec));
    if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64) + nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(sec.unsigned_abs()))
            .and_then(|t| t.checked_add(nanos))
    }
}

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
        let path = fd.link.strip_suffix(" (deleted)").unwrap_or(&fd.link);
        let what = format!("deleted file {path} (fd {} of pid {})", fd.fd, fd.pid);
        let file = reopen(fd.pid, fd.fd)?;
        let kind = describe(&file, path, &what)?;
        out.add_blob(id, &file)?;
        Ok(kind)
    }

    /// A deleted file that is only mapped (its fds closed) still needs a description to be
    /// mapped from: a new one, read through map_files.
    fn dump_without_fds(
        &mut self,
        pid: Pid,
        maps: &[crate::procfs::MapEntry],
        out: &mut ProcessFiles<'_>,
    ) -> Result<(), Error> {
        each_undescribed_mapping(pid, maps, out, |m, file, md, out| {
            // A file with links elsewhere is kept by a remap link (super::link_remap).
            if md.nlink() != 0 {
                return Ok(());
            }
            let path = m.name.strip_suffix(" (deleted)").unwrap_or(&m.name);
            let what = format!("deleted file {path} mapped by pid {pid}");
            let kind = describe(&file, path, &what)?;
            let id = out.add_without_fd((libc::O_RDWR | libc::O_LARGEFILE) as u32, 0, kind);
            out.add_blob(id, &file)
        })
    }

    fn blob(&self, desc: &FileDesc) -> Option<(u64, u32)> {
        match &desc.kind {
            FileKind::Deleted { len, crc, .. } => Some((*len, *crc)),
            _ => None,
        }
    }

    fn blob_extents(&self, desc: &FileDesc) -> Option<Vec<(u64, u64)>> {
        match &desc.kind {
            FileKind::Deleted { extents, .. } => Some(extents.clone()),
            _ => None,
        }
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Deleted {
            path,
            mode,
            size,
            extents,
            atime,
            mtime,
            len,
            ..
        } = &desc.kind
        else {
            return Err("not a deleted file".into());
        };
        super::check_path(path)?;
        if mode & !0o7777 != 0 {
            return Err(format!("mode {mode:#o} has more than permission bits"));
        }
        if extents.len() > MAX_EXTENTS {
            return Err(format!(
                "{} data extents (at most {MAX_EXTENTS})",
                extents.len()
            ));
        }
        let mut end = 0u64;
        let mut sum = 0u64;
        for &(off, n) in extents {
            let stop = off
                .checked_add(n)
                .filter(|&s| n > 0 && off >= end && s <= *size);
            let Some(stop) = stop else {
                return Err(format!(
                    "data extent ({off}, {n}) is empty, out of order or beyond the size {size}"
                ));
            };
            end = stop;
            sum += n;
        }
        if sum != *len {
            return Err(format!("the extents hold {sum} bytes, the blob {len}"));
        }
        for (name, t) in [("access", atime), ("modification", mtime)] {
            if t.1 >= 1_000_000_000 || system_time(*t).is_none() {
                return Err(format!("bad {name} time {}.{:09}", t.0, t.1));
            }
        }
        Ok(())
    }

    /// Every mapping of a deleted file refers to a description of it.
    fn validate_image(&self, image: &ProcessImage) -> Result<(), String> {
        // A set, not a scan of the descriptions per mapping (10^12 steps for a record of a
        // million of each).
        let files: std::collections::HashSet<(u64, u64)> = image
            .files
            .iter()
            .filter_map(|f| file_id(&f.kind))
            .collect();
        for v in &image.vmas {
            if let VmaKind::Deleted { dev, ino } = &v.kind {
                if !files.contains(&(*dev, *ino)) {
                    return Err(format!(
                        "mapping {:#x}-{:#x} refers to unknown deleted file {dev}:{ino}",
                        v.start, v.end
                    ));
                }
            }
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::Deleted {
            path,
            dev,
            ino,
            mode,
            uid,
            gid,
            size,
            extents,
            atime,
            mtime,
            len,
            crc,
        } = &desc.kind
        else {
            return Err(Error::Invalid(format!(
                "description {} is not a deleted file",
                desc.id
            )));
        };
        let key = (*dev, *ino);
        if let Some(base) = self.made.get(&key) {
            let flags = desc.flags as i32 & libc::O_ACCMODE | super::reopen_flags(desc);
            return reopen_own(base, flags)
                .map_err(|e| Error::io(format!("reopen deleted file {path}"), e));
        }
        // At the old path when that name is free (the process then sees the same
        // "PATH (deleted)"), else next to it. Made in its directory, opened without following
        // a symbolic link anywhere on the way (the directories may belong to the user whose
        // process this was, and a restore may run as root): a link put there since the dump
        // makes the restore fail, never create a file elsewhere.
        let (parent, base) = match path.rsplit_once('/') {
            Some((parent, base)) if !base.is_empty() => {
                (if parent.is_empty() { "/" } else { parent }, base)
            }
            _ => return Err(Error::Invalid(format!("deleted file path {path:?}"))),
        };
        let dir =
            stasis_sys::fs::open_dir_no_symlinks(std::path::Path::new(parent)).map_err(|e| {
                Error::io(
                    format!("open the directory {parent} of deleted file {path}"),
                    e,
                )
            })?;
        let create = |name: &str| {
            stasis_sys::fs::open_beneath(
                dir.as_fd(),
                name,
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )
            .map(File::from)
        };
        let fallback = format!("{base}.stasis-{}-{}", std::process::id(), desc.id);
        let (tmp, writer) = match create(base) {
            Ok(w) => (base.to_string(), w),
            Err(_) => (
                fallback.clone(),
                create(&fallback)
                    .map_err(|e| Error::io(format!("create {fallback} in {parent}"), e))?,
            ),
        };
        let result = (|| {
            if stasis_sys::process::geteuid() == 0 {
                std::os::unix::fs::fchown(&writer, Some(*uid), Some(*gid))
                    .map_err(|e| Error::io(format!("fchown {tmp} to {uid}:{gid}"), e))?;
            }
            writer
                .set_len(*size)
                .map_err(|e| Error::io(format!("ftruncate {tmp} to {size}"), e))?;
            // Blob offsets to file offsets: the extents are stored one after the other.
            let mut next = extents.iter();
            let (mut ext_file, mut ext_left) = (0u64, 0u64);
            blob::read(
                ctx.images,
                desc.id,
                *len,
                *crc,
                &format!("deleted file {path}"),
                |_, mut piece| {
                    while !piece.is_empty() {
                        if ext_left == 0 {
                            let &(off, n) = next.next().ok_or_else(|| {
                                Error::Invalid(format!("the blob of {path} outgrows its extents"))
                            })?;
                            (ext_file, ext_left) = (off, n);
                        }
                        let n = (ext_left.min(piece.len() as u64)) as usize;
                        writer
                            .write_all_at(&piece[..n], ext_file)
                            .map_err(|e| Error::io(format!("write {tmp} at {ext_file}"), e))?;
                        (ext_file, ext_left) = (ext_file + n as u64, ext_left - n as u64);
                        piece = &piece[n..];
                    }
                    Ok(())
                },
            )?;
            writer
                .set_permissions(Permissions::from_mode(*mode))
                .map_err(|e| Error::io(format!("fchmod {tmp} to {mode:#o}"), e))?;
            let times = FileTimes::new()
                .set_accessed(system_time(*atime).unwrap_or(UNIX_EPOCH))
                .set_modified(system_time(*mtime).unwrap_or(UNIX_EPOCH));
            writer
                .set_times(times)
                .map_err(|e| Error::io(format!("futimens {tmp}"), e))?;
            let flags = desc.flags as i32 & libc::O_ACCMODE | super::reopen_flags(desc);
            reopen_own(&writer, flags)
                .map(File::from)
                .map_err(|e| Error::io(format!("reopen deleted file {path}"), e))
        })();
        let _ = stasis_sys::fs::unlink_in(dir.as_fd(), &tmp);
        let opened = result?;
        self.made.insert(key, writer.into());
        Ok(opened.into())
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
                dev: 1,
                ino: 2,
                mode,
                uid: 0,
                gid: 0,
                size: 100,
                extents: vec![(0, 10), (50, 50)],
                atime: (-5, 0),
                mtime: (1_600_000_000, 999_999_999),
                len: 60,
                crc: 0,
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate() {
        let p = sample_process();
        DeletedFiles::default()
            .validate(&deleted("/tmp/x", 0o4755), &p)
            .unwrap();
        assert!(DeletedFiles::default()
            .validate(&deleted("x", 0o644), &p)
            .is_err());
        assert!(DeletedFiles::default()
            .validate(&deleted("/x\0", 0o644), &p)
            .is_err());
        assert!(
            DeletedFiles::default()
                .validate(&deleted("/tmp/x", 0o100644), &p)
                .is_err(),
            "file type bits"
        );
        let with = |f: &dyn Fn(&mut FileKind)| {
            let mut d = deleted("/tmp/x", 0o600);
            f(&mut d.kind);
            DeletedFiles::default().validate(&d, &p)
        };
        type Edit = fn(&mut FileKind);
        let bad: [(&str, Edit); 6] = [
            ("overlap", |k| set(k, |e, _, _| e[1].0 = 5)),
            ("beyond the size", |k| set(k, |_, s, _| *s = 99)),
            ("empty extent", |k| set(k, |e, _, l| (e[0].1, *l) = (0, 50))),
            ("sum", |k| set(k, |_, _, l| *l = 61)),
            ("nanoseconds", |k| {
                if let FileKind::Deleted { atime, .. } = k {
                    atime.1 = 1_000_000_000;
                }
            }),
            ("overflow", |k| set(k, |e, _, _| e[1] = (u64::MAX, 50))),
        ];
        for (what, edit) in bad {
            assert!(with(&|k| edit(k)).is_err(), "{what}");
        }
    }

    #[test]
    fn mappings_refer_to_a_description() {
        let mut p = sample_process();
        DeletedFiles::default().validate_image(&p).unwrap();
        p.vmas[0].kind = VmaKind::Deleted { dev: 2049, ino: 77 };
        DeletedFiles::default().validate_image(&p).unwrap();
        // A file kept by a remap link (engine::files::link_remap) is mapped the same way.
        p.vmas[0].kind = VmaKind::Deleted { dev: 2049, ino: 80 };
        DeletedFiles::default().validate_image(&p).unwrap();
        p.vmas[0].kind = VmaKind::Deleted { dev: 2049, ino: 78 };
        let err = DeletedFiles::default().validate_image(&p).unwrap_err();
        assert!(err.contains("unknown deleted file 2049:78"), "{err}");
    }

    fn set(k: &mut FileKind, f: impl FnOnce(&mut Vec<(u64, u64)>, &mut u64, &mut u64)) {
        if let FileKind::Deleted {
            extents, size, len, ..
        } = k
        {
            f(extents, size, len);
        }
    }

    #[test]
    fn recreated_sparse_from_the_blob_and_deleted_again() {
        let tmp = std::env::temp_dir().join(format!("stasis-deleted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let images = ImageDir::create(&tmp).unwrap();
        let mut ctx = crate::files::OpenContext::new(&images, crate::files::ReplacedFiles::Refuse);
        // 64 MiB with two data blocks and a hole at the end.
        let src = tmp.join("src");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&src)
            .unwrap();
        file.write_all_at(b"contents", 0).unwrap();
        file.write_all_at(&[7u8; 4096], 32 << 20).unwrap();
        file.set_len(64 << 20).unwrap();
        let extents = data_extents(&file, 64 << 20, "src").unwrap();
        assert_eq!(extents, vec![(0, 4096), (32 << 20, 4096)]);
        let crc = blob::crc_of_extents(&file, &extents, "src").unwrap();
        blob::write(&images, 5, &file, &extents, crc, "deleted file").unwrap();
        assert_eq!(
            std::fs::metadata(tmp.join(stasis_image::names::blob(5)))
                .unwrap()
                .len(),
            4096 + 8192,
            "the blob holds the extents only (after its header block)"
        );
        let path = tmp.join("gone");
        let desc = FileDesc {
            id: 5,
            flags: libc::O_RDWR as u32,
            pos: 3,
            kind: FileKind::Deleted {
                path: path.to_str().unwrap().into(),
                dev: 1,
                ino: 2,
                mode: 0o640,
                uid: 4321,
                gid: 4322,
                size: 64 << 20,
                extents: extents.clone(),
                atime: (1_500_000_000, 5),
                mtime: (1_600_000_000, 6),
                len: 8192,
                crc,
            },
            owner: Default::default(),
            locks: Vec::new(),
        };
        DeletedFiles::default()
            .validate(&desc, &sample_process())
            .unwrap();
        DeletedFiles::default().verify(&images, &desc).unwrap();
        let fd =
            super::super::open_description(&mut DeletedFiles::default(), &desc, &mut ctx).unwrap();
        let f = File::from(fd);
        let md = f.metadata().unwrap();
        assert_eq!(
            (md.nlink(), md.mode() & 0o7777, md.len()),
            (0, 0o640, 64 << 20)
        );
        assert_eq!((md.atime(), md.atime_nsec()), (1_500_000_000, 5));
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 6));
        if stasis_sys::process::geteuid() == 0 {
            assert_eq!((md.uid(), md.gid()), (4321, 4322));
        }
        let mut head = [0u8; 5];
        std::io::Read::read_exact(&mut &f, &mut head).unwrap();
        assert_eq!(&head, b"tents");
        let mut block = vec![0u8; 4096];
        f.read_exact_at(&mut block, 32 << 20).unwrap();
        assert!(block.iter().all(|&b| b == 7));
        // (SEEK_DATA moves the offset: after the read.)
        assert_eq!(data_extents(&f, 64 << 20, "restored").unwrap(), extents);
        assert!(!path.exists());
        let names: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
        assert_eq!(names.len(), 2, "only src and the blob are left: {names:?}");

        let mut bad = desc.clone();
        if let FileKind::Deleted { crc, .. } = &mut bad.kind {
            *crc ^= 1;
        }
        assert!(DeletedFiles::default().verify(&images, &bad).is_err());
        assert!(DeletedFiles::default().open(&bad, &mut ctx).is_err());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
