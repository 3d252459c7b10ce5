//! Pipes: both ends with their flags, the pipe's capacity, and the bytes in flight.
//!
//! Dump: each end is a description of its own (`pipe_id`, the pipe's inode, links the ends);
//! ends are gathered across the whole tree, and once every process is dumped
//! ([`FileOps::finish`]) every pipe must have both a read and a write end in the tree (else
//! the dump fails, naming an fd of it). The bytes waiting in a pipe are then copied without
//! being consumed, with tee(2) from a read end (our duplicate, by pidfd_getfd) into a private
//! pipe, and stored once, with the first description of the pipe in the first process record
//! that has it.
//!
//! Restore: the restorer creates each pipe once (pipe2, F_SETPIPE_SZ to the dumped capacity)
//! when its first end is opened, and writes the bytes in flight back; the copies of a
//! description in several process records are merged first, so the bytes come from whichever
//! record holds them. Each end is handed to the processes like any description.

use super::{Class, FileOps, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ImageDir, ProcessImage};
use stasis_sys::{process, Pid};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd, RawFd};

/// Most bytes in flight a record may hold for one pipe.
const MAX_PIPE_DATA: usize = 16 << 20;

/// The pipe kind: ends seen at dump, pipes made at restore.
#[derive(Default)]
pub struct Pipes {
    /// Dump: pipe inode -> what was seen of it.
    seen: HashMap<u64, PipeSeen>,
    /// Restore: pipe id -> (read end, write end).
    made: HashMap<u64, (OwnedFd, OwnedFd)>,
}

struct PipeSeen {
    read_end: Option<File>,
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
        let write_end = fd.flags as i32 & libc::O_ACCMODE == libc::O_WRONLY;
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
        if write_end {
            seen.has_write = true;
        } else if seen.read_end.is_none() {
            seen.read_end = Some(file.try_clone().map_err(|e| Error::io("dup", e))?);
        }
        Ok(FileKind::Pipe {
            pipe_id: ino,
            write_end,
            capacity: capacity as u32,
            data: Vec::new(),
        })
    }

    /// Checks that both ends of every pipe are in the tree and stores the bytes in flight
    /// with the first description of each pipe.
    fn finish(&mut self, descs: &mut [&mut FileDesc]) -> Result<(), Error> {
        for (ino, seen) in self.seen.drain() {
            let (Some(read_end), true) = (&seen.read_end, seen.has_write) else {
                return Err(Error::Unsupported {
                    what: format!(
                        "fd {} of pid {} is one end of pipe:[{ino}] whose other end is outside the dumped processes",
                        seen.first_fd, seen.first_pid
                    ),
                });
            };
            let bytes = peek(read_end, seen.first_fd)?;
            if bytes.is_empty() {
                continue;
            }
            let first = descs.iter_mut().find(|d| d.id == seen.ids[0]);
            if let Some(FileKind::Pipe { data, .. }) = first.map(|d| &mut d.kind) {
                *data = bytes;
            }
        }
        Ok(())
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Pipe { data, capacity, .. } = &desc.kind else {
            return Err("not a pipe".into());
        };
        if data.len() > MAX_PIPE_DATA || data.len() > *capacity as usize {
            return Err(format!(
                "{} bytes in flight in a pipe of capacity {capacity} (at most {MAX_PIPE_DATA})",
                data.len()
            ));
        }
        Ok(())
    }

    /// The bytes in flight are stored with one copy of the description only.
    fn merge(&self, tree: &mut FileDesc, copy: &FileDesc) {
        if let (FileKind::Pipe { data: tree, .. }, FileKind::Pipe { data, .. }) =
            (&mut tree.kind, &copy.kind)
        {
            if tree.is_empty() {
                tree.clone_from(data);
            }
        }
    }

    /// A new description for this pipe end (the pipe is made with its first end).
    fn open(&mut self, desc: &FileDesc, _images: &ImageDir) -> Result<OwnedFd, Error> {
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
        if !self.made.contains_key(pipe_id) {
            let (r, w) = process::pipe().map_err(|e| Error::io("pipe", e))?;
            process::set_pipe_capacity(w.as_fd(), *capacity as usize)
                .map_err(|e| Error::io(format!("F_SETPIPE_SZ {capacity}"), e))?;
            self.made.insert(*pipe_id, (r, w));
        }
        let (r, w) = &self.made[pipe_id];
        if !data.is_empty() {
            let mut wf = File::from(w.try_clone().map_err(|e| Error::io("dup", e))?);
            std::io::Write::write_all(&mut wf, data)
                .map_err(|e| Error::io(format!("refill pipe:[{pipe_id}]"), e))?;
        }
        let end = if *write_end { w } else { r };
        // Both ends were made by pipe(2) with O_CLOEXEC; status flags are set by the caller.
        end.try_clone().map_err(|e| Error::io("dup", e))
    }
}

/// Copies the bytes queued in a pipe without consuming them.
fn peek(read_end: &File, fd: RawFd) -> Result<Vec<u8>, Error> {
    let queued = process::pipe_bytes_queued(read_end.as_fd())
        .map_err(|e| Error::io(format!("FIONREAD on fd {fd}"), e))?;
    if queued == 0 {
        return Ok(Vec::new());
    }
    let (r, w) = process::pipe().map_err(|e| Error::io("pipe", e))?;
    let cap = process::pipe_capacity(read_end.as_fd()).map_err(|e| Error::io("F_GETPIPE_SZ", e))?;
    process::set_pipe_capacity(w.as_fd(), cap.max(queued))
        .map_err(|e| Error::io("F_SETPIPE_SZ", e))?;
    // tee copies from the start of the pipe's queue; the target is frozen, so one call that
    // is given room for everything takes all of it.
    let copied = process::tee(read_end.as_fd(), w.as_fd(), queued)
        .map_err(|e| Error::io(format!("tee from fd {fd}"), e))?;
    drop(w);
    let mut data = Vec::with_capacity(copied);
    File::from(r)
        .read_to_end(&mut data)
        .map_err(|e| Error::io("read peeked pipe data", e))?;
    if data.len() != queued {
        return Err(Error::Invalid(format!(
            "fd {fd}: {queued} bytes queued in the pipe but {} copied",
            data.len()
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

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
        let mut pipes = Pipes::default();
        let r = pipes.open(&end(1, false, b"abc"), &images).unwrap();
        let w = pipes.open(&end(2, true, b""), &images).unwrap();
        // Every write end closed: the reader sees the bytes, then end-of-file.
        drop((w, pipes));
        let mut got = Vec::new();
        File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abc");
    }
}
