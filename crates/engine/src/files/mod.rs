//! The fd table and the open file descriptions behind it: regular files (path, flags, offset),
//! files deleted while open (their contents go into a blob image), directories and character
//! devices. Pipes are in [`pipe`]; eventfd, timerfd, signalfd, epoll, memfd and inotify
//! each have their own module, which this one dispatches to.
//!
//! Dump: each fd is duplicated into the dumper with pidfd_getfd (the same file description, so
//! offsets and pipe contents can be read without disturbing the target); fds that share one
//! description are found with kcmp. Anything stasis cannot restore yet (sockets, fanotify,
//! other anonymous-inode files, ...) fails the dump with an error naming the fd, before
//! anything is written.
//!
//! Restore: the restorer opens every description itself ([`open_all`]); the new process
//! inherits them across the fork and moves them to their numbers ([`layout_in_child`]), then
//! sets up what refers to fds by number ([`after_layout_in_child`]: epoll watches; it also
//! drops the inotify events the restore itself caused).

use crate::dump::ServiceConnection;
use crate::{procfs, Error};
use stasis_image::{
    names, FdEntry, FileDesc, FileKind, ImageDir, RawReader, RawWriter, RecordKind,
};
use stasis_sys::process::{self, ForkedChild};
use stasis_sys::Pid;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};

pub mod epoll;
pub mod eventfd;
pub mod inotify;
pub mod memfd;
pub mod pipe;
pub mod signalfd;
pub mod timerfd;

/// Status flags a restored description gets through open(2) or F_SETFL.
const RESTORED_FLAGS: i32 = libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_ASYNC;

/// statfs f_type of the mqueue filesystem (POSIX message queues).
const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// What [`dump`] found: descriptions, the fd table, and file contents to store as blobs.
pub struct DumpedFiles {
    pub files: Vec<FileDesc>,
    pub fds: Vec<FdEntry>,
    /// Deleted files: description id and a handle to read their contents from.
    pub blobs: Vec<(u32, File)>,
}

/// Open file descriptions seen so far in a dumped tree: one id per description, however many
/// fds of however many processes refer to it (found with kcmp).
#[derive(Default)]
pub struct FileRegistry {
    /// (pid, fd, inode, description id) of every description's first fd.
    seen: Vec<(Pid, RawFd, u64, u32)>,
    descs: HashMap<u32, FileDesc>,
    next_id: u32,
    pipes: pipe::PipeCollector,
}

impl FileRegistry {
    /// Refuses a pipe whose end that `tree` (the dumped processes) lacks is held outside it,
    /// and returns the bytes in flight, by the id of the description that stores them.
    pub fn finish(self, tree: &[Pid]) -> Result<HashMap<u32, Vec<u8>>, Error> {
        self.pipes.finish(tree)
    }
}

/// Collects every fd of `pid`. Fails on the first fd stasis cannot restore.
/// `service` is the self-dump connection (fd number in the target and the reply its restored
/// copy will read); it is the one socket that is dumped. Descriptions shared with processes
/// dumped before get the same id (and a copy of the description).
pub fn dump(
    pid: Pid,
    pidfd: &OwnedFd,
    service: Option<&ServiceConnection>,
    registry: &mut FileRegistry,
) -> Result<DumpedFiles, Error> {
    let mut files: Vec<FileDesc> = Vec::new();
    let mut fds = Vec::new();
    let mut blobs = Vec::new();
    let all_fds = procfs::list_fds(pid)?;
    for &fd in &all_fds {
        let link = procfs::link(pid, &format!("fd/{fd}"))?;
        let info = procfs::read_fdinfo(pid, fd)?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let unsupported = |what: &str| Error::Unsupported {
            what: format!("fd {fd} of pid {pid} is {what} ({link})"),
        };
        if let Some(svc) = service.filter(|s| s.fd == fd) {
            if !link.starts_with("socket:") {
                return Err(unsupported(
                    "named as the service connection but not a socket",
                ));
            }
            let id = registry.next_id;
            registry.next_id += 1;
            files.push(FileDesc {
                id,
                flags,
                pos: 0,
                kind: FileKind::ServiceSocket {
                    reply: svc.restored_reply.clone(),
                },
            });
            fds.push(FdEntry {
                fd,
                file_id: id,
                cloexec,
            });
            continue;
        }
        if link.starts_with("socket:") {
            return Err(unsupported("a socket"));
        }
        let anon = link.strip_prefix("anon_inode:");
        if let Some(what) = anon.and_then(unsupported_anon_kind) {
            return Err(unsupported(what));
        }
        let dup = process::pidfd_getfd(pidfd.as_fd(), fd)
            .map_err(|e| Error::sys("pidfd_getfd", pid, e))?;
        let file = File::from(dup);
        let md = file
            .metadata()
            .map_err(|e| Error::io(format!("fstat fd {fd} of pid {pid}"), e))?;
        // Same description as an fd seen before, in this process or another?
        let mut shared = None;
        for &(other_pid, other, ino, id) in &registry.seen {
            if ino == md.ino()
                && process::same_file_description(pid, fd, other_pid, other)
                    .map_err(|e| Error::sys("kcmp", pid, e))?
            {
                shared = Some(id);
                break;
            }
        }
        if let Some(id) = shared {
            if !files.iter().any(|f| f.id == id) {
                if let Some(d) = registry.descs.get(&id) {
                    files.push(d.clone());
                }
            }
            fds.push(FdEntry {
                fd,
                file_id: id,
                cloexec,
            });
            continue;
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let ft = md.file_type();
        let kind = if let Some(anon) = anon {
            let text = fdinfo_text(pid, fd)?;
            match anon {
                "[eventfd]" => eventfd::dump(pid, fd, &text)?,
                "[timerfd]" => timerfd::dump(pid, fd, &text)?,
                "[signalfd]" => signalfd::dump(pid, fd, &text)?,
                "[eventpoll]" => epoll::dump(pid, fd, &text, &all_fds)?,
                "inotify" => inotify::dump(pid, fd, &text)?,
                _ => return Err(unsupported("an anonymous-inode file of an unknown kind")),
            }
        } else if ft.is_fifo() && link.starts_with("pipe:") {
            registry.pipes.add(pid, fd, id, &file, flags, md.ino())?
        } else if ft.is_fifo() {
            return Err(unsupported("a named FIFO"));
        } else if ft.is_socket() {
            return Err(unsupported("a socket"));
        } else if ft.is_file() && memfd::is_memfd_name(&link) && md.nlink() == 0 {
            memfd::dump(
                pid,
                fd,
                id,
                &file,
                &link,
                registry.descs.values(),
                &mut blobs,
            )?
        } else if ft.is_file()
            && process::fs_type(file.as_fd())
                .map_err(|e| Error::io(format!("fstatfs fd {fd}"), e))?
                == MQUEUE_MAGIC
        {
            return Err(unsupported("a POSIX message queue"));
        } else if ft.is_file() && md.nlink() == 0 {
            let path = link.strip_suffix(" (deleted)").unwrap_or(&link).to_string();
            let crc = crc_of(&file, md.size(), fd)?;
            blobs.push((id, file.try_clone().map_err(|e| Error::io("dup", e))?));
            FileKind::Deleted {
                path,
                mode: md.mode() & 0o7777,
                len: md.size(),
                crc,
            }
        } else if ft.is_file() {
            check_same_file(&link, &md, fd)?;
            FileKind::Regular {
                path: link.clone(),
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
            }
        } else if ft.is_dir() && md.nlink() == 0 {
            return Err(unsupported("a directory that was deleted"));
        } else if ft.is_dir() {
            FileKind::Directory { path: link.clone() }
        } else if ft.is_char_device() {
            FileKind::CharDevice {
                path: link.clone(),
                rdev: md.rdev(),
            }
        } else {
            return Err(unsupported("a file of an unsupported type"));
        };
        registry.seen.push((pid, fd, md.ino(), id));
        let desc = FileDesc {
            id,
            flags,
            pos: info.pos,
            kind,
        };
        registry.descs.insert(id, desc.clone());
        files.push(desc);
        fds.push(FdEntry {
            fd,
            file_id: id,
            cloexec,
        });
    }
    // A memfd that is only mapped (its fds closed) still needs a description to be mapped from.
    for m in memfd::mapped(pid)? {
        let is_it = |d: &FileDesc| memfd::memfd_id_of(&d.kind) == Some(m.memfd_id);
        if files.iter().any(is_it) {
            continue;
        }
        if let Some(d) = registry.descs.values().find(|d| is_it(d)) {
            files.push(d.clone());
            continue;
        }
        let (kind, handle) = m.describe(pid)?;
        let id = registry.next_id;
        registry.next_id += 1;
        let desc = FileDesc {
            id,
            flags: (libc::O_RDWR | libc::O_LARGEFILE) as u32,
            pos: 0,
            kind,
        };
        registry.descs.insert(id, desc.clone());
        files.push(desc);
        blobs.push((id, handle));
    }
    Ok(DumpedFiles { files, fds, blobs })
}

/// For an `anon_inode:` link (without the prefix) of a kind stasis cannot dump, what to call
/// it in the refusal; `None` for the kinds it dumps.
fn unsupported_anon_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "[eventfd]" | "[timerfd]" | "[signalfd]" | "[eventpoll]" | "inotify" => None,
        "[fanotify]" => Some("a fanotify instance, which stasis cannot dump yet"),
        "[userfaultfd]" => Some("a userfaultfd, which stasis cannot dump yet"),
        "[io_uring]" => Some("an io_uring instance, which stasis cannot dump yet"),
        "[pidfd]" => Some("a pidfd, which stasis cannot dump yet"),
        "[perf_event]" => Some("a perf event, which stasis cannot dump yet"),
        _ => Some("an anonymous-inode file of a kind stasis cannot dump"),
    }
}

/// The text of /proc/PID/fdinfo/FD (the fields each kind of file adds are parsed by its
/// module).
pub(crate) fn fdinfo_text(pid: Pid, fd: RawFd) -> Result<String, Error> {
    let path = std::path::PathBuf::from(format!("/proc/{pid}/fdinfo/{fd}"));
    Ok(procfs::read_string(&path)?)
}

/// Gives a recreated anonymous-inode file the status flags it had (O_NONBLOCK, O_ASYNC).
pub(crate) fn set_anon_status_flags(fd: &OwnedFd, f: &FileDesc) -> Result<(), Error> {
    let status = f.flags as i32 & (libc::O_NONBLOCK | libc::O_ASYNC);
    if status != 0 {
        process::set_status_flags(fd.as_fd(), status)
            .map_err(|e| Error::io(format!("F_SETFL on description {}", f.id), e))?;
    }
    Ok(())
}

fn check_same_file(path: &str, md: &std::fs::Metadata, fd: RawFd) -> Result<(), Error> {
    let by_path = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("stat {path} (open as fd {fd})"), e))?;
    if (by_path.dev(), by_path.ino()) != (md.dev(), md.ino()) {
        return Err(Error::Unsupported {
            what: format!("fd {fd}: the path {path} now names another file"),
        });
    }
    Ok(())
}

fn crc_of(file: &File, len: u64, fd: RawFd) -> Result<u32, Error> {
    let mut crc = 0u32;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], off)
            .map_err(|e| Error::io(format!("read deleted file of fd {fd}"), e))?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        off += n as u64;
    }
    Ok(crc)
}

/// Writes the contents of deleted files into `blob-ID.img` files.
pub fn write_blobs(
    dir: &ImageDir,
    blobs: &[(u32, File)],
    files: &[FileDesc],
) -> Result<Vec<String>, Error> {
    let mut written = Vec::new();
    for (id, file) in blobs {
        let (len, crc) = match files.iter().find(|f| f.id == *id).map(|f| &f.kind) {
            Some(FileKind::Deleted { len, crc, .. }) | Some(FileKind::Memfd { len, crc, .. }) => {
                (len, crc)
            }
            _ => continue,
        };
        let name = names::blob(*id);
        let mut w = RawWriter::create(dir, &name, RecordKind::Blob)?;
        written.push(name);
        let mut buf = vec![0u8; 1 << 20];
        let (mut off, mut c) = (0u64, 0u32);
        while off < *len {
            let n = (*len - off).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], off)
                .map_err(|e| Error::io(format!("read deleted file {id}"), e))?;
            c = crc32c::crc32c_append(c, &buf[..n]);
            w.write(&buf[..n])?;
            off += n as u64;
        }
        if c != *crc {
            return Err(Error::Invalid(format!(
                "deleted file {id} changed while it was dumped"
            )));
        }
        w.finish()?;
    }
    Ok(written)
}

/// Opens every description of the image in the restorer. Returns descriptions by id.
pub fn open_all(dir: &ImageDir, files: &[FileDesc]) -> Result<HashMap<u32, OwnedFd>, Error> {
    let mut out = HashMap::new();
    let mut pipes = pipe::PipeBuilder::default();
    let mut memfds = memfd::MemfdBuilder::default();
    for f in files {
        let access = f.flags as i32 & libc::O_ACCMODE;
        let extra = f.flags as i32 & RESTORED_FLAGS;
        let open = |path: &str, more: i32| -> Result<File, Error> {
            let mut o = std::fs::OpenOptions::new();
            o.read(access != libc::O_WRONLY)
                .write(access != libc::O_RDONLY)
                .custom_flags(extra | more);
            o.open(path)
                .map_err(|e| Error::io(format!("open {path}"), e))
        };
        let fd: OwnedFd = match &f.kind {
            FileKind::Regular { path, dev, ino, .. } => {
                let file = open(path, 0)?;
                let md = file
                    .metadata()
                    .map_err(|e| Error::io(format!("fstat {path}"), e))?;
                if (md.dev(), md.ino()) != (*dev, *ino) {
                    return Err(Error::Invalid(format!(
                        "{path} is not the file that was open at dump time (its inode changed)"
                    )));
                }
                file.into()
            }
            FileKind::Deleted {
                path,
                mode,
                len,
                crc,
            } => recreate_deleted(dir, f.id, path, *mode, *len, *crc, &open)?.into(),
            FileKind::Directory { path } => {
                let mut o = std::fs::OpenOptions::new();
                o.read(true).custom_flags(libc::O_DIRECTORY | extra);
                o.open(path)
                    .map_err(|e| Error::io(format!("open directory {path}"), e))?
                    .into()
            }
            FileKind::CharDevice { path, rdev } => {
                let file = open(path, 0)?;
                let md = file
                    .metadata()
                    .map_err(|e| Error::io(format!("fstat {path}"), e))?;
                if md.rdev() != *rdev {
                    return Err(Error::Invalid(format!(
                        "{path} is device {:#x}, the image expects {rdev:#x}",
                        md.rdev()
                    )));
                }
                file.into()
            }
            FileKind::Pipe { .. } => pipes.open(f)?,
            FileKind::ServiceSocket { reply } => service_socket(reply)?,
            FileKind::EventFd { .. } => eventfd::open(f)?,
            FileKind::TimerFd { .. } => timerfd::open(f)?,
            FileKind::SignalFd { .. } => signalfd::open(f)?,
            FileKind::Epoll { .. } => epoll::open(f)?,
            FileKind::Memfd { .. } => memfds.open(dir, f)?,
            FileKind::Inotify { .. } => inotify::open(f)?,
        };
        if matches!(
            f.kind,
            FileKind::Regular { .. }
                | FileKind::Deleted { .. }
                | FileKind::Directory { .. }
                | FileKind::Memfd { .. }
        ) && f.pos != 0
        {
            seek(&fd, f.pos)?;
        }
        out.insert(f.id, fd);
    }
    Ok(out)
}

fn seek(fd: &OwnedFd, pos: u64) -> Result<(), Error> {
    use std::io::Seek;
    let mut f = File::from(fd.try_clone().map_err(|e| Error::io("dup", e))?);
    f.seek(std::io::SeekFrom::Start(pos))
        .map_err(|e| Error::io(format!("lseek fd {} to {pos}", fd.as_raw_fd()), e))?;
    Ok(())
}

/// A deleted file comes back as a new file next to the original path, filled from its blob,
/// opened, and unlinked again.
fn recreate_deleted(
    dir: &ImageDir,
    id: u32,
    path: &str,
    mode: u32,
    len: u64,
    crc: u32,
    open: &dyn Fn(&str, i32) -> Result<File, Error>,
) -> Result<File, Error> {
    let blob = RawReader::open(dir, &names::blob(id), RecordKind::Blob)?;
    if blob.len() != len {
        return Err(Error::Invalid(format!(
            "blob of deleted file {path} has {} bytes, expected {len}",
            blob.len()
        )));
    }
    let tmp = format!("{path}.stasis-{}-{id}", std::process::id());
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(format!("create {tmp}"), e))?;
    let result = (|| {
        // Streamed in 1 MiB pieces; the CRC covers the whole blob.
        let mut buf = vec![0u8; 1 << 20];
        let (mut off, mut c) = (0u64, 0u32);
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            blob.read_unchecked(off, &mut buf[..n])?;
            c = crc32c::crc32c_append(c, &buf[..n]);
            writer
                .write_all_at(&buf[..n], off)
                .map_err(|e| Error::io(format!("write {tmp}"), e))?;
            off += n as u64;
        }
        if c != crc {
            return Err(Error::Image(stasis_image::ImageError::BadPayloadCrc {
                path: blob.path().to_path_buf(),
            }));
        }
        open(&tmp, 0)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The restored end of a self-dump connection: the reply is queued by the peer, which closes.
fn service_socket(reply: &[u8]) -> Result<OwnedFd, Error> {
    let (ours, peer) = process::socketpair_seqpacket().map_err(|e| Error::io("socketpair", e))?;
    let mut peer = File::from(peer);
    std::io::Write::write_all(&mut peer, reply)
        .map_err(|e| Error::io("queue the restored reply", e))?;
    Ok(ours)
}

/// Lays out the fd table of the freshly forked process: every inherited description moves
/// to its number and gets its close-on-exec flag; everything else below `base` is closed.
/// `by_id` gives the inherited descriptor of each description; every descriptor we hold is
/// below `base` and so is every wanted number; `base..park_from` is kept (the restorer's own
/// descriptors for the child), and descriptions are parked at `park_from` and above meanwhile.
pub fn layout_in_child(
    child: &ForkedChild,
    table: &[FdEntry],
    by_id: &HashMap<u32, RawFd>,
    base: RawFd,
    park_from: RawFd,
) -> Result<(), String> {
    // Park every source above `base` first so no dup3 can clobber a source not yet moved.
    let mut parked: HashMap<u32, RawFd> = HashMap::new();
    for (&id, &fd) in by_id {
        let p = child
            .dup_at_least_raw(fd, park_from)
            .map_err(|e| format!("F_DUPFD {fd}: {e}"))?;
        parked.insert(id, p);
    }
    child
        .close_range(0, (base - 1) as u32)
        .map_err(|e| format!("close_range: {e}"))?;
    for e in table {
        let src = *parked
            .get(&e.file_id)
            .ok_or_else(|| format!("fd {} has no opened description {}", e.fd, e.file_id))?;
        child
            .dup3_raw(src, e.fd)
            .map_err(|err| format!("dup3 to fd {}: {err}", e.fd))?;
        child
            .set_cloexec_raw(e.fd, e.cloexec)
            .map_err(|err| format!("F_SETFD fd {}: {err}", e.fd))?;
    }
    for p in parked.values() {
        let _ = child.close_raw(*p);
    }
    Ok(())
}

/// Runs in the restore child of process `pid` right after [`layout_in_child`], once every fd
/// has its final number: sets up what refers to other fds by number (epoll watches), and drops
/// the events that opening and mapping its files queued in its inotify instances.
pub fn after_layout_in_child(
    child: &ForkedChild,
    pid: Pid,
    files: &[FileDesc],
    table: &[FdEntry],
) -> Result<(), String> {
    epoll::register_in_child(child, pid, files, table)?;
    inotify::discard_events_in_child(child, files, table)
}
