//! Pipes: both ends with their flags, the pipe's capacity, and the bytes in flight.
//!
//! Dump: each end is a description of its own (`pipe_id`, the pipe's inode, links the ends);
//! ends are gathered across the whole tree, and once every process is dumped
//! ([`FileOps::finish`]) the bytes waiting in each pipe are copied without being consumed,
//! with tee(2) from a read end (our duplicate, by pidfd_getfd) into a private pipe, and stored
//! once, with the first description of the pipe in the first process record that has it. A
//! pipe of which the dumped processes hold one end only is fine when the other end is closed
//! everywhere (the reader of a finished writer, GNU make's jobs); when a process outside the
//! tree holds that other end (found by its `pipe:[INO]` link in /proc/*/fd), the pipe cannot be
//! restored yet and fails the dump, naming that process and fd. An end held where /proc does
//! not show it (in flight in a unix socket, say) counts as closed.
//!
//! Restore: the restorer creates each pipe once (pipe2, F_SETPIPE_SZ to the dumped capacity)
//! when its first end is opened, and writes the bytes in flight back; the copies of a
//! description in several process records are merged first, so the bytes come from whichever
//! record holds them. Every further description of an end (one the process had opened through
//! /proc/PID/fd) is opened the same way, so status flags stay per description. An end no
//! process held is closed once every description is open: the reader of a pipe without
//! writers reads the bytes, then EOF; a writer without readers gets EPIPE.

use super::pipebuf::{self, reopen};
use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use stasis_sys::{process, Pid};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd, RawFd};

/// O_LARGEFILE as the kernel shows it in fdinfo on x86-64 (where libc's is 0): set on every
/// description open(2) makes, never on those pipe(2) makes.
const O_LARGEFILE: i32 = 0o100000;

/// The pipe kind: ends seen at dump, pipes made at restore.
#[derive(Default)]
pub struct Pipes {
    /// Dump: pipe inode -> what was seen of it.
    seen: HashMap<u64, PipeSeen>,
    /// Dump: the processes whose pipe ends were seen (they are not "outside").
    pids: Vec<Pid>,
    /// Restore: pipe id -> the pipe made for it.
    made: HashMap<u64, MadePipe>,
}

struct PipeSeen {
    /// A description open for reading, if the tree has one.
    read_end: Option<File>,
    /// Whether the tree has a description open for writing.
    has_write: bool,
    first_pid: Pid,
    first_fd: RawFd,
    /// Description ids of its ends, in the order they were seen.
    ids: Vec<u32>,
}

impl FileOps for Pipes {
    fn name(&self) -> &'static str {
        "pipe"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Pipe { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::Pipe
    }

    /// Records one end; its bytes in flight are filled in by [`FileOps::finish`].
    fn dump(
        &mut self,
        fd: &Probe<'_>,
        id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let (file, ino) = (
            fd.file()?,
            fd.metadata().map(std::os::unix::fs::MetadataExt::ino)?,
        );
        let access = fd.flags as i32 & libc::O_ACCMODE;
        let write_end = access == libc::O_WRONLY;
        if !self.pids.contains(&fd.pid) {
            self.pids.push(fd.pid);
        }
        let capacity = process::pipe_capacity(file.as_fd())
            .map_err(|e| Error::io(format!("F_GETPIPE_SZ on fd {}", fd.fd), e))?;
        let seen = self.seen.entry(ino).or_insert_with(|| PipeSeen {
            read_end: None,
            has_write: false,
            first_pid: fd.pid,
            first_fd: fd.fd,
            ids: Vec::new(),
        });
        seen.ids.push(id);
        // A pipe reopened through /proc/PID/fd with O_RDWR is both ends at once.
        if access != libc::O_RDONLY {
            seen.has_write = true;
        }
        if !write_end && seen.read_end.is_none() {
            seen.read_end = Some(file.try_clone().map_err(|e| Error::io("dup", e))?);
        }
        Ok(FileKind::Pipe {
            pipe_id: ino,
            write_end,
            capacity: capacity as u32,
            data: Vec::new(),
        })
    }

    /// Refuses a pipe whose end the tree lacks when a process outside the tree holds it, and
    /// stores the bytes in flight with the first description of each pipe.
    fn finish(&mut self, descs: &mut [&mut FileDesc]) -> Result<(), Error> {
        let lone: HashMap<u64, bool> = self
            .seen
            .iter()
            .filter(|(_, s)| s.read_end.is_none() || !s.has_write)
            .map(|(&ino, s)| (ino, s.read_end.is_some()))
            .collect();
        let held =
            outside_holder(&lone, &self.pids).and_then(|h| Some((self.seen.get(&h.found.0)?, h)));
        if let Some((seen, h)) = held {
            let (ino, needs_write) = h.found;
            let (ours, theirs) = if needs_write {
                ("read", "write")
            } else {
                ("write", "read")
            };
            return Err(Error::Unsupported {
                what: format!(
                    "fd {} of pid {} is the {ours} end of pipe:[{}], whose {theirs} end is held outside the dumped processes, by fd {} of pid {} ({})",
                    seen.first_fd, seen.first_pid, ino, h.fd, h.pid, h.comm
                ),
            });
        }
        for (_, seen) in self.seen.drain() {
            // Without a read end, nothing can read what is in the pipe.
            let Some(read_end) = &seen.read_end else {
                continue;
            };
            let bytes = pipebuf::peek(read_end, seen.first_fd)?;
            if bytes.is_empty() {
                continue;
            }
            pipebuf::store(descs, seen.ids[0], bytes);
        }
        Ok(())
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Pipe { data, capacity, .. } = &desc.kind else {
            return Err("not a pipe".into());
        };
        pipebuf::check_data("pipe", data, *capacity)
    }

    /// The bytes in flight are stored with one copy of the description only.
    fn merge(&self, tree: &mut FileDesc, copy: &FileDesc) {
        pipebuf::merge(tree, copy);
    }

    /// A new description for this pipe end (the pipe is made with its first end).
    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::Pipe {
            pipe_id,
            write_end,
            capacity,
            data,
        } = &desc.kind
        else {
            return Err(Error::Invalid(format!(
                "description {} is not a pipe",
                desc.id
            )));
        };
        let made = match self.made.entry(*pipe_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let (read, write) = process::pipe().map_err(|e| Error::io("pipe", e))?;
                process::set_pipe_capacity(write.as_fd(), *capacity as usize)
                    .map_err(|e| Error::io(format!("F_SETPIPE_SZ {capacity}"), e))?;
                e.insert(MadePipe {
                    read,
                    write,
                    read_given: false,
                    write_given: false,
                })
            }
        };
        if !data.is_empty() {
            // Through a description of its own, whatever flags the others get.
            let mut wf = File::from(
                reopen(&made.write, libc::O_WRONLY, 0)
                    .map_err(|e| Error::io(format!("reopen pipe:[{pipe_id}] to refill it"), e))?,
            );
            std::io::Write::write_all(&mut wf, data)
                .map_err(|e| Error::io(format!("refill pipe:[{pipe_id}]"), e))?;
        }
        let access = desc.flags as i32 & libc::O_ACCMODE;
        let (end, given, pipe_access) = if *write_end {
            (&made.write, &mut made.write_given, libc::O_WRONLY)
        } else {
            (&made.read, &mut made.read_given, libc::O_RDONLY)
        };
        // pipe(2) makes one description of each end, without O_LARGEFILE; every other one was
        // opened through /proc/PID/fd (and has O_LARGEFILE) and is opened the same way here, a
        // new description of the same pipe. Status flags are set by the caller, per
        // description.
        if !*given && access == pipe_access && desc.flags as i32 & O_LARGEFILE == 0 {
            *given = true;
            end.try_clone().map_err(|e| Error::io("dup", e))
        } else {
            // (For a pipe, unlike a FIFO, opening never waits for the other end.)
            reopen(end, access, 0).map_err(|e| {
                Error::io(
                    format!("reopen pipe:[{pipe_id}] for description {}", desc.id),
                    e,
                )
            })
        }
    }
}

/// A recreated pipe: the two descriptions pipe(2) made, and whether each was handed out yet.
struct MadePipe {
    read: OwnedFd,
    write: OwnedFd,
    read_given: bool,
    write_given: bool,
}

/// Looks through the fds of every process but `tree` (those whose pipe ends were dumped) and
/// this one for an end of one of the `lone` pipes (inode -> whether the tree lacks the write end
/// rather than the read end) that the tree lacks; finds that pipe's inode and what it lacks.
fn outside_holder(
    lone: &HashMap<u64, bool>,
    tree: &[Pid],
) -> Option<pipebuf::OutsideHolder<(u64, bool)>> {
    if lone.is_empty() {
        return None;
    }
    pipebuf::outside_holder(tree, |pid, fd, _, link| {
        let ino = link
            .strip_prefix("pipe:[")
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse::<u64>().ok())?;
        let &needs_write = lone.get(&ino)?;
        let info = crate::procfs::read_fdinfo(pid, fd).ok()?;
        let access = info.flags as i32 & libc::O_ACCMODE;
        let has_it = if needs_write {
            access != libc::O_RDONLY
        } else {
            access != libc::O_WRONLY
        };
        has_it.then_some((ino, needs_write))
    })
}

#[cfg(test)]
mod tests {
    use super::pipebuf::MAX_PIPE_DATA;
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_image::ImageDir;
    use std::io::Read;

    fn end(id: u32, write_end: bool, data: &[u8]) -> FileDesc {
        FileDesc {
            id,
            flags: if write_end { 1 } else { 0 },
            pos: 0,
            kind: FileKind::Pipe {
                pipe_id: 9,
                write_end,
                capacity: 4096,
                data: data.to_vec(),
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate() {
        let p = sample_process();
        Pipes::default()
            .validate(&end(1, false, &[7; 4096]), &p)
            .unwrap();
        assert!(
            Pipes::default()
                .validate(&end(1, false, &[7; 4097]), &p)
                .is_err(),
            "more data than the capacity"
        );
        let mut huge = end(1, false, &vec![7; MAX_PIPE_DATA + 1]);
        if let FileKind::Pipe { capacity, .. } = &mut huge.kind {
            *capacity = u32::MAX;
        }
        assert!(
            Pipes::default().validate(&huge, &p).is_err(),
            "too much data"
        );
    }

    #[test]
    fn merge_takes_the_data_from_the_copy_that_has_it() {
        let mut tree = end(1, false, b"");
        Pipes::default().merge(&mut tree, &end(1, false, b"abc"));
        Pipes::default().merge(&mut tree, &end(1, false, b""));
        assert_eq!(tree, end(1, false, b"abc"));
    }

    #[test]
    fn restored_pipe_holds_the_bytes_once() {
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = crate::files::OpenContext::new(&images, crate::files::ReplacedFiles::Refuse);
        let mut pipes = Pipes::default();
        let r = pipes.open(&end(1, false, b"abc"), &mut ctx).unwrap();
        let w = pipes.open(&end(2, true, b""), &mut ctx).unwrap();
        // Every write end closed: the reader sees the bytes, then end-of-file.
        drop((w, pipes));
        let mut got = Vec::new();
        File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abc");
    }
}
