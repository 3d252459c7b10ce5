//! memfd: anonymous memory files (memfd_create), open as fds and/or mapped.
//!
//! Dump: a memfd shows as `/memfd:NAME (deleted)` (fd link or mapping name), on the kernel's
//! internal tmpfs mount. Each open description is recorded with its flags and offset; all
//! descriptions of one memfd share its inode number (`memfd_id`), its name, mode, owner, seals
//! (F_GET_SEALS) and size. The contents are streamed once per memfd, in 1 MiB pieces, into the
//! blob image of the memfd's first description in the tree, like a deleted file's (see
//! [`super::write_blobs`]). A memfd that is only mapped (its fds closed) is read through
//! /proc/PID/map_files and gets a description without fds. Mappings of a memfd
//! ([`mapping_kind`]) refer to it by `memfd_id`; the pages of a shared mapping are the memfd's
//! contents, and a private mapping stores only the pages the process changed, as for files.
//! Refused: hugetlbfs memfds (MFD_HUGETLB), and a writable shared mapping of a memfd sealed with
//! F_SEAL_FUTURE_WRITE (the kernel would refuse to map it again).
//!
//! Restore: the restorer creates the memfd once per `memfd_id` with MFD_ALLOW_SEALING (and
//! MFD_NOEXEC_SEAL when it was sealed against exec, MFD_EXEC otherwise), sets its size, writes
//! the non-zero pieces of the blob (holes stay holes, so a sparse memfd does not grow), checks
//! the CRC, sets mode and owner, and adds the seals last (F_ADD_SEALS). A memfd created without
//! MFD_ALLOW_SEALING reports just F_SEAL_SEAL, which is added back: the result cannot be told
//! apart. Every description is then a reopen of the memfd through /proc/self/fd with its own
//! flags (status flags and offset are then set by [`super::open_all`]); mappings get a
//! reopen ([`open_for_mapping`]: read-write for shared mappings, else read-only) that the
//! restore passes to the child like a mapped file. A program run from a memfd (execveat,
//! fexecve) has it as its exe link (`TaskState.exe_memfd`, one of its mapped memfds): the
//! restore makes a read-only reopen of it the exe link, which the kernel accepts only while
//! no description of the memfd is open for writing (the restorer's copy of a memfd that is
//! only mapped is read-only for that reason).

use super::{blob, Class, FileOps, OpenContext, OpenedFiles, Probe, ProcessFiles};
use crate::procfs::{self, MapEntry};
use crate::Error;
use stasis_image::{names, FileDesc, FileKind, ImageDir, ProcessImage, VmaKind};
use stasis_sys::{anon_files, Pid};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

const LINK_PREFIX: &str = "/memfd:";
const DELETED: &str = " (deleted)";
/// Longest memfd name the kernel accepts (MFD_NAME_MAX_LEN).
const MAX_NAME: usize = 249;
/// The seals F_ADD_SEALS knows: SEAL, SHRINK, GROW, WRITE, FUTURE_WRITE, EXEC.
const KNOWN_SEALS: u32 = 0x3f;

/// The memfd kind: at dump, the first description of each memfd in the tree (the one whose
/// blob holds the contents); at restore, the memfds created so far.
#[derive(Default)]
pub struct Memfds {
    /// Dump: memfd_id -> its first description.
    first: HashMap<u64, FileDesc>,
    /// Restore: memfd_id -> a read-write descriptor of the recreated memfd.
    made: HashMap<u64, OwnedFd>,
}

impl FileOps for Memfds {
    fn name(&self) -> &'static str {
        "memfd"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Memfd { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::File
            && is_memfd_name(&fd.link)
            && fd.metadata().is_ok_and(|md| md.nlink() == 0)
    }

    /// The first description of each memfd (in the tree) queues the contents.
    fn dump(
        &mut self,
        fd: &Probe<'_>,
        id: u32,
        out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let what = || format!("memfd fd {} of pid {} ({})", fd.fd, fd.pid, fd.link);
        let kind = describe(fd.file()?, &fd.link, &what)?;
        if let Some(memfd_id) = memfd_id_of(&kind) {
            if let std::collections::hash_map::Entry::Vacant(e) = self.first.entry(memfd_id) {
                out.add_blob(id, fd.file()?)?;
                e.insert(FileDesc {
                    id,
                    flags: fd.flags,
                    pos: fd.pos,
                    kind: kind.clone(),
                    owner: Default::default(),
                    locks: Vec::new(),
                });
            }
        }
        Ok(kind)
    }

    /// A memfd that is only mapped (its fds closed) still needs a description to be mapped
    /// from: one of another process of the tree, or a new one read through map_files.
    fn dump_without_fds(
        &mut self,
        pid: Pid,
        maps: &[procfs::MapEntry],
        out: &mut ProcessFiles<'_>,
    ) -> Result<(), Error> {
        for m in mapped(maps) {
            let is_it = |d: &FileDesc| memfd_id_of(&d.kind) == Some(m.memfd_id);
            if out.descriptions().iter().any(is_it) {
                continue;
            }
            if let Some(d) = self.first.get(&m.memfd_id) {
                out.add_copy(d);
                continue;
            }
            let (kind, handle) = m.describe(pid)?;
            // Read-only: the restorer's copy of a memfd mapped without an fd must not count
            // as a writer (the kernel refuses a file open for writing as an exe link, which a
            // program run from a memfd needs); a shared mapping gets its own read-write
            // descriptor (`open_for_mapping`).
            let flags = (libc::O_RDONLY | libc::O_LARGEFILE) as u32;
            let id = out.add_without_fd(flags, 0, kind.clone());
            out.add_blob(id, &handle)?;
            let desc = FileDesc {
                id,
                flags,
                pos: 0,
                kind,
                owner: Default::default(),
                locks: Vec::new(),
            };
            self.first.insert(m.memfd_id, desc);
        }
        Ok(())
    }

    fn blob(&self, desc: &FileDesc) -> Option<(u64, u32)> {
        match &desc.kind {
            FileKind::Memfd { len, crc, .. } => Some((*len, *crc)),
            _ => None,
        }
    }

    /// Name, mode and seals; that the descriptions of one memfd agree is checked once per
    /// record ([`validate_image`](FileOps::validate_image)).
    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Memfd {
            name, mode, seals, ..
        } = &desc.kind
        else {
            return Err("not a memfd".into());
        };
        if name.len() > MAX_NAME || name.contains('\0') {
            return Err(format!("bad name {name:?}"));
        }
        if mode & !0o7777 != 0 {
            return Err(format!("mode {mode:#o} has more than permission bits"));
        }
        if seals & !KNOWN_SEALS != 0 {
            return Err(format!("unknown seals {seals:#x}"));
        }
        Ok(())
    }

    /// Every description of one memfd describes the same file as the first one in the record
    /// (name, seals, length, CRC), and every mapping of a memfd refers to a memfd description
    /// of the record. Checked once per record with a map by memfd id (not per description
    /// against every other: a record of a million memfd descriptions must not take 10^12
    /// steps).
    fn validate_image(&self, image: &ProcessImage) -> Result<(), String> {
        let mut first = HashMap::new();
        for g in &image.files {
            let FileKind::Memfd {
                memfd_id,
                name,
                seals,
                len,
                crc,
                ..
            } = &g.kind
            else {
                continue;
            };
            let (id, seen) = *first
                .entry(*memfd_id)
                .or_insert((g.id, (name, seals, len, crc)));
            if seen != (name, seals, len, crc) {
                return Err(format!(
                    "file description {} ({}): it disagrees with description {id} of the \
                     same memfd {memfd_id}",
                    g.id,
                    self.name()
                ));
            }
        }
        for v in &image.vmas {
            if let VmaKind::Memfd { memfd_id } = &v.kind {
                if !first.contains_key(memfd_id) {
                    return Err(format!(
                        "mapping {:#x}-{:#x} refers to unknown memfd {memfd_id}",
                        v.start, v.end
                    ));
                }
            }
        }
        Ok(())
    }

    /// The contents are stored with one description of each memfd only.
    fn verify(&self, images: &ImageDir, desc: &FileDesc) -> Result<(), Error> {
        match self.blob(desc) {
            Some((len, crc)) if images.exists(&names::blob(desc.id)) => {
                blob::verify(images, desc.id, len, crc, self.name())
            }
            _ => Ok(()),
        }
    }

    /// A new description of the memfd of `desc`, with its access mode and open flags (the
    /// memfd is created with its first description).
    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let Some(memfd_id) = memfd_id_of(&desc.kind) else {
            return Err(Error::Invalid(format!(
                "description {} is not a memfd",
                desc.id
            )));
        };
        let base = match self.made.entry(memfd_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(create(ctx.images, desc)?),
        };
        let access = desc.flags as i32 & libc::O_ACCMODE;
        // open(2) keeps O_DIRECT, O_SYNC and O_DSYNC as given (F_SETFL would drop some of
        // them on a memfd); O_ASYNC is the caller's (`open_description`).
        let extra = super::reopen_flags(desc) | desc.flags as i32 & libc::O_LARGEFILE;
        reopen(base, access | extra)
            .map_err(|e| Error::io(format!("reopen memfd of description {}", desc.id), e))
    }

    fn has_position(&self) -> bool {
        true
    }
}

/// Whether an fd link or mapping name looks like a memfd.
pub fn is_memfd_name(name: &str) -> bool {
    name.starts_with(LINK_PREFIX) && name.ends_with(DELETED)
}

/// The name given to memfd_create, from the link `/memfd:NAME (deleted)`.
pub fn name_of(link: &str) -> &str {
    let n = link.strip_prefix(LINK_PREFIX).unwrap_or(link);
    n.strip_suffix(DELETED).unwrap_or(n)
}

/// Checks that `file` is a memfd stasis can dump; `what` names it in errors.
fn check_fs(file: &File, what: &dyn Fn() -> String) -> Result<(), Error> {
    let magic = stasis_sys::process::fs_type(file.as_fd())
        .map_err(|e| Error::io(format!("fstatfs {}", what()), e))?;
    if magic == libc::HUGETLBFS_MAGIC {
        return Err(Error::Unsupported {
            what: format!("{} is a hugetlbfs memfd (MFD_HUGETLB)", what()),
        });
    }
    if magic != libc::TMPFS_MAGIC {
        return Err(Error::Unsupported {
            what: format!("{} is named like a memfd but is not on tmpfs", what()),
        });
    }
    Ok(())
}

/// Reads everything about the memfd behind `file` except what belongs to one description.
fn describe(file: &File, link: &str, what: &dyn Fn() -> String) -> Result<FileKind, Error> {
    check_fs(file, what)?;
    let md = file
        .metadata()
        .map_err(|e| Error::io(format!("fstat {}", what()), e))?;
    let seals = anon_files::get_seals(file.as_fd())
        .map_err(|e| Error::io(format!("F_GET_SEALS on {}", what()), e))?;
    let len = md.size();
    let crc = blob::crc_of(file, len, &what())?;
    Ok(FileKind::Memfd {
        memfd_id: md.ino(),
        name: name_of(link).to_string(),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        seals,
        len,
        crc,
    })
}

/// The `memfd_id` of a memfd description.
pub fn memfd_id_of(kind: &FileKind) -> Option<u64> {
    match kind {
        FileKind::Memfd { memfd_id, .. } => Some(*memfd_id),
        _ => None,
    }
}

/// The kind of a mapping of a memfd (called by [`crate::pages`] while classifying mappings).
pub fn mapping_kind(pid: Pid, m: &MapEntry) -> Result<VmaKind, Error> {
    let link = crate::procfs::map_file(pid, m.start, m.end);
    let what = || {
        format!(
            "mapping {:#x}-{:#x} of pid {pid} ({})",
            m.start, m.end, m.name
        )
    };
    let file = File::open(&link).map_err(|e| Error::io(format!("open {link}"), e))?;
    check_fs(&file, &what)?;
    let md = file
        .metadata()
        .map_err(|e| Error::io(format!("fstat {link}"), e))?;
    let seals = anon_files::get_seals(file.as_fd())
        .map_err(|e| Error::io(format!("F_GET_SEALS on {}", what()), e))?;
    if m.shared && m.write && seals & libc::F_SEAL_FUTURE_WRITE as u32 != 0 {
        return Err(Error::Unsupported {
            what: format!(
                "{} is a writable shared mapping of a memfd sealed with F_SEAL_FUTURE_WRITE, \
                 which cannot be mapped again",
                what()
            ),
        });
    }
    Ok(VmaKind::Memfd { memfd_id: md.ino() })
}

/// A memfd mapped by a process (one per memfd, whatever the number of mappings).
struct MappedMemfd {
    memfd_id: u64,
    start: u64,
    end: u64,
    name: String,
}

/// The memfds among the mappings `maps` of a process. Those whose fds are closed need a
/// description of their own (made with [`MappedMemfd::describe`]) so that the restore has
/// something to map.
fn mapped(maps: &[procfs::MapEntry]) -> Vec<MappedMemfd> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in maps {
        if is_memfd_name(&m.name) && seen.insert(m.inode) {
            out.push(MappedMemfd {
                memfd_id: m.inode,
                start: m.start,
                end: m.end,
                name: m.name.clone(),
            });
        }
    }
    out
}

impl MappedMemfd {
    /// Reads the memfd through /proc/PID/map_files: its description kind and a handle to
    /// read its contents from.
    fn describe(&self, pid: Pid) -> Result<(FileKind, File), Error> {
        let link = crate::procfs::map_file(pid, self.start, self.end);
        let what = || {
            format!(
                "mapping {:#x}-{:#x} of pid {pid} ({})",
                self.start, self.end, self.name
            )
        };
        let file = File::open(&link).map_err(|e| Error::io(format!("open {link}"), e))?;
        let kind = describe(&file, &self.name, &what)?;
        // smaps shows the inode too; a mismatch means the mapping changed under us.
        if memfd_id_of(&kind) != Some(self.memfd_id) {
            return Err(Error::Invalid(format!(
                "{}: the memfd is not inode {} that smaps showed",
                what(),
                self.memfd_id
            )));
        }
        Ok((kind, file))
    }
}

/// Opens the memfd behind `fd` again (a new description) through /proc/self/fd.
fn reopen(fd: &OwnedFd, flags: i32) -> std::io::Result<OwnedFd> {
    let access = flags & libc::O_ACCMODE;
    let mut o = std::fs::OpenOptions::new();
    o.read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY)
        .custom_flags((flags & !libc::O_ACCMODE) | libc::O_CLOEXEC);
    Ok(o.open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?.into())
}

/// Creates and fills one memfd from the blob of description `f` (its first description).
fn create(images: &ImageDir, f: &FileDesc) -> Result<OwnedFd, Error> {
    let FileKind::Memfd {
        name,
        mode,
        uid,
        gid,
        seals,
        len,
        crc,
        ..
    } = &f.kind
    else {
        return Err(Error::Invalid(format!(
            "description {} is not a memfd",
            f.id
        )));
    };
    let what = format!("memfd {name:?} (description {})", f.id);
    let noexec = seals & libc::F_SEAL_EXEC as u32 != 0;
    let base_flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let flags = base_flags
        | if noexec {
            anon_files::MFD_NOEXEC_SEAL
        } else {
            anon_files::MFD_EXEC
        };
    let fd = match anon_files::memfd_create_with(name, flags) {
        // Kernels before 6.3 know neither MFD_EXEC nor MFD_NOEXEC_SEAL.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            anon_files::memfd_create_with(name, base_flags)
        }
        r => r,
    }
    .map_err(|e| Error::io(format!("memfd_create for {what}"), e))?;
    let file = File::from(fd);
    blob::read(images, f.id, *len, *crc, &what, |off, piece| {
        // Sized once the blob is known to hold as many bytes.
        if off == 0 {
            file.set_len(*len)
                .map_err(|e| Error::io(format!("ftruncate {what} to {len}"), e))?;
        }
        // Holes read as zeros; writing zeros would allocate memory for nothing.
        if piece.iter().all(|&b| b == 0) {
            return Ok(());
        }
        file.write_all_at(piece, off)
            .map_err(|e| Error::io(format!("write {what}"), e))
    })?;
    file.set_permissions(std::fs::Permissions::from_mode(*mode))
        .map_err(|e| Error::io(format!("fchmod {what}"), e))?;
    let md = file
        .metadata()
        .map_err(|e| Error::io(format!("fstat {what}"), e))?;
    if (md.uid(), md.gid()) != (*uid, *gid) {
        std::os::unix::fs::fchown(&file, Some(*uid), Some(*gid))
            .map_err(|e| Error::io(format!("fchown {what} to {uid}:{gid}"), e))?;
    }
    let have = anon_files::get_seals(file.as_fd())
        .map_err(|e| Error::io(format!("F_GET_SEALS on {what}"), e))?;
    if seals & !have != 0 {
        anon_files::add_seals(file.as_fd(), seals & !have)
            .map_err(|e| Error::io(format!("F_ADD_SEALS {seals:#x} on {what}"), e))?;
    }
    let got = anon_files::get_seals(file.as_fd())
        .map_err(|e| Error::io(format!("F_GET_SEALS on {what}"), e))?;
    if got != *seals {
        return Err(Error::Invalid(format!(
            "{what} has seals {got:#x} after restore, the image says {seals:#x} (vm.memfd_noexec?)"
        )));
    }
    Ok(file.into())
}

/// A description of the restored memfd `memfd_id`, for mapping it into the new process or
/// making it the exe link: read-write when `write` (a shared mapping, which the process may
/// make writable), else read-only (a file open for writing cannot be an exe link); `opened`
/// are the descriptions [`super::open_all`] opened.
pub fn open_for_mapping(
    opened: &OpenedFiles,
    memfd_id: u64,
    write: bool,
) -> Result<OwnedFd, Error> {
    let fd = opened
        .descriptions()
        .iter()
        .filter(|f| memfd_id_of(&f.kind) == Some(memfd_id))
        .find_map(|f| opened.get(f.id))
        .ok_or_else(|| Error::Invalid(format!("no restored memfd {memfd_id} to map")))?;
    let mode = if write { libc::O_RDWR } else { libc::O_RDONLY };
    reopen(fd, mode).map_err(|e| Error::io(format!("reopen memfd {memfd_id}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_sys::process;

    /// The sample's memfd description (mapped by the sample process).
    fn sample_memfd() -> (ProcessImage, FileDesc) {
        let p = sample_process();
        let desc = p
            .files
            .iter()
            .find(|f| Memfds::default().owns(&f.kind))
            .cloned()
            .unwrap();
        (p, desc)
    }

    #[test]
    fn validate() {
        let (p, desc) = sample_memfd();
        let m = Memfds::default();
        m.validate(&desc, &p).unwrap();
        m.validate_image(&p).unwrap();
        type Edit = fn(&mut FileKind);
        let edits: [(&str, Edit); 4] = [
            ("memfd name", |k| {
                if let FileKind::Memfd { name, .. } = k {
                    *name = "x".repeat(300)
                }
            }),
            ("memfd name with NUL", |k| {
                if let FileKind::Memfd { name, .. } = k {
                    *name = "a\0b".into()
                }
            }),
            ("memfd mode", |k| {
                if let FileKind::Memfd { mode, .. } = k {
                    *mode = 0o100644
                }
            }),
            ("memfd seals", |k| {
                if let FileKind::Memfd { seals, .. } = k {
                    *seals = 0x40
                }
            }),
        ];
        for (what, edit) in edits {
            let mut p = p.clone();
            let f = p.files.iter_mut().find(|f| f.id == desc.id).unwrap();
            edit(&mut f.kind);
            let f = f.clone();
            assert!(m.validate(&f, &p).is_err(), "{what}");
        }

        // Two descriptions of one memfd that disagree.
        let mut p2 = p.clone();
        let mut other = desc.clone();
        other.id = 70;
        if let FileKind::Memfd { len, .. } = &mut other.kind {
            *len = 1;
        }
        p2.files.push(other.clone());
        let err = m.validate_image(&p2).unwrap_err();
        assert!(
            err.contains("file description 70") && err.contains("disagrees"),
            "two descriptions of one memfd disagree: {err}"
        );
        assert!(m.validate_image(&p).is_ok());

        // A mapping of a memfd the record does not describe.
        let mut p3 = p.clone();
        p3.vmas[2].kind = VmaKind::Memfd { memfd_id: 1 };
        assert!(m.validate_image(&p3).is_err(), "unknown memfd");
    }

    #[test]
    fn names() {
        assert!(is_memfd_name("/memfd:hello world (deleted)"));
        assert!(!is_memfd_name("/memfd:x"));
        assert!(!is_memfd_name("/tmp/memfd:x (deleted)"));
        assert_eq!(name_of("/memfd:hello world (deleted)"), "hello world");
        assert_eq!(name_of("/memfd: (deleted) (deleted)"), " (deleted)");
    }

    #[test]
    fn reopen_shares_the_file() {
        let m = anon_files::memfd_create_with("stasis-test", libc::MFD_CLOEXEC).unwrap();
        let r = reopen(&m, libc::O_RDONLY).unwrap();
        let ino = |fd: &OwnedFd| {
            File::from(fd.try_clone().unwrap())
                .metadata()
                .unwrap()
                .ino()
        };
        assert_eq!(ino(&m), ino(&r));
        let flags = process::get_status_flags(r.as_fd()).unwrap();
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
    }
}
