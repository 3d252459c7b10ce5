//! Named FIFOs (mkfifo): each end with its flags, the FIFO's capacity and the bytes in flight,
//! reopened by path; a FIFO deleted while open is made again.
//!
//! A FIFO is a pipe with a name: all its open descriptions share one pipe buffer, which exists
//! while any of them is open and holds the bytes written and not yet read, whoever reads them
//! next (a reader that opens the FIFO later gets them too).
//!
//! Dump: each description is one end (read, write or both), linked to the other ends of its
//! FIFO by the FIFO's device and inode. A FIFO that still has its name is recorded by the path
//! /proc/PID/fd/N shows (which must still name it); one that was unlinked while open by the
//! path it had and its permission bits. Once every process is dumped ([`FileOps::finish`]) the
//! bytes waiting in each FIFO are copied without being consumed: tee(2) from a temporary read
//! description (opened through our pidfd_getfd duplicate, O_NONBLOCK, so that it never waits,
//! and closed at once), stored with the first description of the FIFO.
//!
//! Ends held outside the dumped processes: unlike a pipe, a FIFO that has its name is found
//! again by path, so the restored ends rejoin the outside holder's FIFO when it still holds it
//! open (as the processes had it), or a new buffer otherwise (as if the holder had closed it).
//! That is exact as long as the buffer is empty. Bytes in flight, though, belong to the buffer
//! they share with the outside holder, which may read them (or add to them) while the dumped
//! processes are gone: writing the stored copy back would duplicate or reorder them. So a FIFO
//! with bytes in flight that a process outside the tree holds open fails the dump, naming that
//! process and its fd; so does a deleted FIFO held outside (it cannot be found again: the
//! restored one would be another FIFO). An empty FIFO with a name held outside is dumped.
//!
//! Restore: the restorer opens each FIFO once, read-write and non-blocking (a FIFO opened
//! read-write never waits for a peer), through an O_PATH descriptor of its path whose device
//! and inode are checked first (a FIFO replaced at its path is refused unless replaced files
//! are accepted, [`super::ReplacedFiles`]; another type of file is never opened); a deleted
//! FIFO is made next to its old path (`PATH.stasis-PID-ID`), opened and unlinked. That
//! description, kept until every description of the tree is open, sets the capacity, gets the
//! bytes in flight back (refused if the FIFO already holds bytes: another process has it open)
//! and is where every description is reopened from, through /proc/self/fd with its access mode
//! (which then never waits either). Once it is closed, a reader whose writers are all gone
//! reads the bytes, then end-of-file.

use super::pipebuf::{self, reopen};
use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use stasis_sys::{process, Pid};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

/// How /proc/PID/fd/N ends for a file that was unlinked.
const DELETED: &str = " (deleted)";

/// A FIFO's identity: its device and inode.
type FifoKey = (u64, u64);

/// The FIFO kind: ends seen at dump, FIFOs opened at restore.
#[derive(Default)]
pub struct Fifos {
    /// Dump: what was seen of each FIFO.
    seen: HashMap<FifoKey, FifoSeen>,
    /// Dump: the processes whose FIFO ends were seen (they are not "outside").
    pids: Vec<Pid>,
    /// Restore: a read-write description of each FIFO, held until every description is open.
    keepers: HashMap<FifoKey, OwnedFd>,
}

struct FifoSeen {
    /// Our duplicate of its first description.
    dup: File,
    /// /proc/PID/fd/N of that description.
    link: String,
    path: String,
    deleted: bool,
    first_pid: Pid,
    first_fd: RawFd,
    /// Description ids of its ends, in the order they were seen.
    ids: Vec<u32>,
}

impl FileOps for Fifos {
    fn name(&self) -> &'static str {
        "FIFO"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Fifo { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::Fifo
    }

    /// Records one end; its bytes in flight are filled in by [`FileOps::finish`].
    fn dump(
        &mut self,
        fd: &Probe<'_>,
        id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let (file, md) = (fd.file()?, fd.metadata()?);
        let deleted = md.nlink() == 0;
        let path = if deleted {
            fd.link.strip_suffix(DELETED).unwrap_or(&fd.link)
        } else {
            &fd.link
        };
        if super::check_path(path).is_err() {
            return Err(fd.unsupported("a FIFO without a path to reopen it by"));
        }
        if !deleted {
            let by_path = std::fs::metadata(path).map_err(|e| {
                Error::io(
                    format!("stat {path} (open as fd {} of pid {})", fd.fd, fd.pid),
                    e,
                )
            })?;
            if (by_path.dev(), by_path.ino()) != (md.dev(), md.ino()) {
                return Err(Error::Unsupported {
                    what: format!(
                        "fd {} of pid {}: the path {path} of its FIFO now names another file",
                        fd.fd, fd.pid
                    ),
                });
            }
        }
        if !self.pids.contains(&fd.pid) {
            self.pids.push(fd.pid);
        }
        let capacity = process::pipe_capacity(file.as_fd())
            .map_err(|e| Error::io(format!("F_GETPIPE_SZ on fd {} of pid {}", fd.fd, fd.pid), e))?;
        let seen = match self.seen.entry((md.dev(), md.ino())) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(FifoSeen {
                dup: file.try_clone().map_err(|e| Error::io("dup", e))?,
                link: fd.link.clone(),
                path: path.to_string(),
                deleted,
                first_pid: fd.pid,
                first_fd: fd.fd,
                ids: Vec::new(),
            }),
        };
        seen.ids.push(id);
        Ok(FileKind::Fifo {
            path: path.to_string(),
            dev: md.dev(),
            ino: md.ino(),
            deleted,
            mode: md.mode() & 0o7777,
            capacity: capacity as u32,
            data: Vec::new(),
        })
    }

    /// Refuses a FIFO with bytes in flight, or a deleted one, that a process outside the tree
    /// holds too, and stores the bytes in flight with the first description of each FIFO.
    fn finish(&mut self, descs: &mut [&mut FileDesc]) -> Result<(), Error> {
        let mut queued = HashMap::new();
        for (&key, s) in &self.seen {
            let n = process::pipe_bytes_queued(s.dup.as_fd()).map_err(|e| {
                Error::io(
                    format!("FIONREAD on fd {} of pid {}", s.first_fd, s.first_pid),
                    e,
                )
            })?;
            queued.insert(key, n);
        }
        let bytes_of = |key: &FifoKey| queued.get(key).copied().unwrap_or(0);
        let watched: HashMap<FifoKey, &str> = self
            .seen
            .iter()
            .filter(|(key, s)| s.deleted || bytes_of(key) > 0)
            .map(|(&key, s)| (key, s.link.as_str()))
            .collect();
        let held =
            outside_holder(&watched, &self.pids).and_then(|h| Some((self.seen.get(&h.found)?, h)));
        if let Some((s, h)) = held {
            let (what, why) = if s.deleted {
                (
                    format!("the deleted FIFO {}", s.path),
                    "a deleted FIFO cannot be shared with it again after a restore".to_string(),
                )
            } else {
                (
                    format!("the FIFO {}", s.path),
                    format!(
                        "its {} bytes in flight are in the buffer they share, where that process may read or add to them",
                        bytes_of(&h.found)
                    ),
                )
            };
            return Err(Error::Unsupported {
                what: format!(
                    "fd {} of pid {} is {what}, which fd {} of pid {} ({}) outside the dumped processes holds too: {why}",
                    s.first_fd, s.first_pid, h.fd, h.pid, h.comm
                ),
            });
        }
        for (key, s) in self.seen.drain() {
            if bytes_of(&key) == 0 {
                continue;
            }
            let bytes = peek(&s)?;
            pipebuf::store(descs, s.ids[0], bytes);
        }
        Ok(())
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Fifo {
            path,
            mode,
            capacity,
            data,
            ..
        } = &desc.kind
        else {
            return Err("not a FIFO".into());
        };
        super::check_path(path)?;
        if mode & !0o7777 != 0 {
            return Err(format!("mode {mode:#o} has more than permission bits"));
        }
        pipebuf::check_data("FIFO", data, *capacity)
    }

    /// The bytes in flight are stored with one copy of the description only.
    fn merge(&self, tree: &mut FileDesc, copy: &FileDesc) {
        pipebuf::merge(tree, copy);
    }

    /// A new description of this FIFO (the FIFO is opened, or made, with its first one).
    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::Fifo {
            path,
            dev,
            ino,
            deleted,
            mode,
            capacity,
            data,
        } = &desc.kind
        else {
            return Err(Error::Invalid(format!(
                "description {} is not a FIFO",
                desc.id
            )));
        };
        let keeper = match self.keepers.entry((*dev, *ino)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let keeper = if *deleted {
                    make_deleted(path, *mode, desc.id)?
                } else {
                    open_named(path, *dev, *ino, ctx)?
                };
                let now = process::pipe_capacity(keeper.as_fd())
                    .map_err(|e| Error::io(format!("F_GETPIPE_SZ on FIFO {path}"), e))?;
                if now != *capacity as usize {
                    process::set_pipe_capacity(keeper.as_fd(), *capacity as usize).map_err(
                        |e| Error::io(format!("F_SETPIPE_SZ {capacity} on FIFO {path}"), e),
                    )?;
                }
                e.insert(keeper)
            }
        };
        if !data.is_empty() {
            refill(keeper, path, data)?;
        }
        let access = desc.flags as i32 & libc::O_ACCMODE;
        // Non-blocking: with a read-write description of the FIFO open (the keeper), this never
        // fails for want of a peer.
        reopen(keeper, access, libc::O_NONBLOCK)
            .map_err(|e| Error::io(format!("reopen FIFO {path} for description {}", desc.id), e))
    }
}

/// Opens the FIFO at `path` read-write and non-blocking, once its device and inode (and that
/// it is a FIFO) are checked through an O_PATH descriptor, which opens nothing.
fn open_named(path: &str, dev: u64, ino: u64, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
    let at = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(|e| Error::io(format!("open FIFO {path}"), e))?;
    let at = ctx.check_opened(
        path,
        at,
        dev,
        ino,
        Some(libc::S_IFIFO),
        "the FIFO that was open",
    )?;
    reopen(&at, libc::O_RDWR, libc::O_NONBLOCK)
        .map_err(|e| Error::io(format!("open FIFO {path}"), e))
}

/// Makes a deleted FIFO again: a new FIFO at `path` when that name is free (the process then
/// sees the same "PATH (deleted)"), else next to it, with permission bits `mode`, opened
/// read-write and non-blocking, and unlinked.
fn make_deleted(path: &str, mode: u32, id: u32) -> Result<OwnedFd, Error> {
    let tmp = match stasis_sys::fs::mkfifo(std::path::Path::new(path), mode) {
        Ok(()) => path.to_string(),
        Err(_) => {
            let tmp = format!("{path}.stasis-{}-{id}", std::process::id());
            stasis_sys::fs::mkfifo(std::path::Path::new(&tmp), mode)
                .map_err(|e| Error::io(format!("mkfifo {tmp}"), e))?;
            tmp
        }
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| Error::io(format!("open FIFO {tmp}"), e));
    let _ = std::fs::remove_file(&tmp);
    let fifo = opened?;
    let md = fifo
        .metadata()
        .map_err(|e| Error::io(format!("fstat {tmp}"), e))?;
    if md.mode() & libc::S_IFMT != libc::S_IFIFO {
        return Err(Error::Changed {
            what: format!("{tmp} is not the FIFO just made there"),
        });
    }
    // mkfifo applied the umask; fchmod does not.
    fifo.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("fchmod {tmp} to {mode:#o}"), e))?;
    Ok(fifo.into())
}

/// Writes the bytes in flight back into the FIFO behind `keeper`, which must hold nothing else.
fn refill(keeper: &OwnedFd, path: &str, data: &[u8]) -> Result<(), Error> {
    let held = process::pipe_bytes_queued(keeper.as_fd())
        .map_err(|e| Error::io(format!("FIONREAD on FIFO {path}"), e))?;
    if held != 0 {
        return Err(Error::Changed {
            what: format!(
                "FIFO {path} already holds {held} bytes (another process has it open): its {} bytes in flight cannot be put back",
                data.len()
            ),
        });
    }
    let mut w = File::from(keeper.try_clone().map_err(|e| Error::io("dup", e))?);
    std::io::Write::write_all(&mut w, data).map_err(|e| Error::io(format!("refill FIFO {path}"), e))
}

/// Copies the bytes queued in a FIFO without consuming them, through a read description of its
/// own (non-blocking, so that opening it never waits; a FIFO whose readers are all gone still
/// holds its bytes for the next one).
fn peek(s: &FifoSeen) -> Result<Vec<u8>, Error> {
    let reader = reopen(&s.dup, libc::O_RDONLY, libc::O_NONBLOCK).map_err(|e| {
        Error::io(
            format!(
                "open a reader of the FIFO of fd {} of pid {}",
                s.first_fd, s.first_pid
            ),
            e,
        )
    })?;
    pipebuf::peek(&File::from(reader), s.first_fd)
}

/// Looks through the fds of every process but `tree` and this one for one of the `watched`
/// FIFOs (identity -> the link /proc shows for it); finds its identity.
fn outside_holder(
    watched: &HashMap<FifoKey, &str>,
    tree: &[Pid],
) -> Option<pipebuf::OutsideHolder<FifoKey>> {
    if watched.is_empty() {
        return None;
    }
    pipebuf::outside_holder(tree, |_, _, path, link| {
        if !watched.values().any(|w| *w == link) {
            return None;
        }
        let md = std::fs::metadata(path).ok()?;
        let key = (md.dev(), md.ino());
        watched.contains_key(&key).then_some(key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::ReplacedFiles;
    use stasis_image::testing::sample_process;
    use stasis_image::ImageDir;
    use std::io::Read;

    fn end(id: u32, path: &str, key: FifoKey, flags: i32, deleted: bool, data: &[u8]) -> FileDesc {
        FileDesc {
            id,
            flags: flags as u32,
            pos: 0,
            kind: FileKind::Fifo {
                path: path.into(),
                dev: key.0,
                ino: key.1,
                deleted,
                mode: 0o640,
                capacity: 8192,
                data: data.to_vec(),
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("stasis-fifo-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn validate() {
        let p = sample_process();
        let ok = end(1, "/tmp/f", (1, 2), 0, false, &[7; 8192]);
        Fifos::default().validate(&ok, &p).unwrap();
        for bad in [
            end(1, "tmp/f", (1, 2), 0, false, b""),
            end(1, "/tmp/f", (1, 2), 0, false, &[7; 8193]),
        ] {
            assert!(Fifos::default().validate(&bad, &p).is_err(), "{bad:?}");
        }
        let mut bad = ok.clone();
        if let FileKind::Fifo { mode, .. } = &mut bad.kind {
            *mode = 0o10644;
        }
        assert!(
            Fifos::default().validate(&bad, &p).is_err(),
            "file type bits"
        );
    }

    #[test]
    fn merge_takes_the_data_from_the_copy_that_has_it() {
        let mut tree = end(1, "/f", (1, 2), 0, false, b"");
        Fifos::default().merge(&mut tree, &end(1, "/f", (1, 2), 0, false, b"abc"));
        Fifos::default().merge(&mut tree, &end(1, "/f", (1, 2), 0, false, b""));
        assert_eq!(tree, end(1, "/f", (1, 2), 0, false, b"abc"));
    }

    /// A named FIFO comes back with its bytes, read and write ends of one FIFO, and no wait
    /// for a peer; a reader without writers reads the bytes, then end-of-file.
    #[test]
    fn named_fifo_is_reopened_with_its_bytes() {
        let path = tmp("named");
        stasis_sys::fs::mkfifo(&path, 0o600).unwrap();
        let md = std::fs::metadata(&path).unwrap();
        let key = (md.dev(), md.ino());
        let p = path.to_str().unwrap();
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = OpenContext::new(&images, ReplacedFiles::Refuse);
        let mut fifos = Fifos::default();
        let r = fifos
            .open(&end(1, p, key, libc::O_RDONLY, false, b""), &mut ctx)
            .unwrap();
        let w = fifos
            .open(&end(2, p, key, libc::O_WRONLY, false, b"abc"), &mut ctx)
            .unwrap();
        assert_eq!(
            std::fs::File::from(r.try_clone().unwrap())
                .metadata()
                .unwrap()
                .ino(),
            md.ino()
        );
        assert_eq!(process::pipe_capacity(r.as_fd()).unwrap(), 8192);
        drop((w, fifos));
        // Blocking reads from here (the description was opened non-blocking).
        process::set_status_flags(r.as_fd(), libc::O_RDONLY).unwrap();
        let mut got = Vec::new();
        File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abc");

        // Another FIFO at the path (made before the old one goes, so it is another inode):
        // refused, or accepted when told so.
        let other = tmp("other");
        stasis_sys::fs::mkfifo(&other, 0o600).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let err = Fifos::default()
            .open(&end(1, p, key, libc::O_RDONLY, false, b""), &mut ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not the FIFO that was open"), "{err}");
        let mut accept = OpenContext::new(&images, ReplacedFiles::Accept { warn: |_| {} });
        Fifos::default()
            .open(&end(1, p, key, libc::O_RDONLY, false, b""), &mut accept)
            .unwrap();
        // A regular file at the path is never opened as the FIFO.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        let err = Fifos::default()
            .open(&end(1, p, key, libc::O_RDONLY, false, b""), &mut accept)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a regular file, not the FIFO"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    /// A deleted FIFO is made again, deleted, with its mode; the bytes are refused when the
    /// FIFO already holds some.
    #[test]
    fn deleted_fifo_is_made_again() {
        let path = tmp("gone");
        let p = path.to_str().unwrap();
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = OpenContext::new(&images, ReplacedFiles::Refuse);
        let mut fifos = Fifos::default();
        let rw = fifos
            .open(&end(1, p, (0, 1), libc::O_RDWR, true, b"xyz"), &mut ctx)
            .unwrap();
        let md = File::from(rw.try_clone().unwrap()).metadata().unwrap();
        assert_eq!(md.mode() & libc::S_IFMT, libc::S_IFIFO);
        assert_eq!((md.nlink(), md.mode() & 0o7777), (0, 0o640));
        assert_eq!(process::pipe_bytes_queued(rw.as_fd()).unwrap(), 3);
        assert!(!path.exists());
        let err = fifos
            .open(&end(2, p, (0, 1), libc::O_RDWR, true, b"again"), &mut ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds 3 bytes"), "{err}");
    }
}
