//! Pipes: both ends with their flags, the pipe's capacity, and the bytes in flight.
//!
//! Dump: the bytes waiting in a pipe are copied without being consumed, with tee(2) from the
//! target's own read end (duplicated by pidfd_getfd) into a private pipe. A pipe with an end
//! outside the dumped process cannot be restored yet and fails the dump.
//!
//! Restore: the restorer creates a pipe of the same capacity, writes the bytes back, and
//! hands each end to the new process.

use crate::Error;
use stasis_image::{FileDesc, FileKind};
use stasis_sys::{process, Pid};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd, RawFd};

/// Gathers pipe ends while the fd table is walked.
#[derive(Default)]
pub struct PipeCollector {
    /// pipe inode -> (read end seen, write end seen, a read end handle, description ids).
    pipes: HashMap<u64, PipeSeen>,
}

#[derive(Default)]
struct PipeSeen {
    read_end: Option<File>,
    has_write: bool,
    first_pid: Pid,
    first_fd: RawFd,
    ids: Vec<u32>,
}

impl PipeCollector {
    /// Records one pipe end; returns its description kind (data filled in by `finish`).
    pub fn add(
        &mut self,
        pid: Pid,
        fd: RawFd,
        id: u32,
        file: &File,
        flags: u32,
        ino: u64,
    ) -> Result<FileKind, Error> {
        let write_end = flags as i32 & libc::O_ACCMODE == libc::O_WRONLY;
        let capacity = process::pipe_capacity(file.as_fd())
            .map_err(|e| Error::io(format!("F_GETPIPE_SZ on fd {fd}"), e))?;
        let seen = self.pipes.entry(ino).or_insert_with(|| PipeSeen {
            first_pid: pid,
            first_fd: fd,
            ..Default::default()
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

    /// Checks that both ends of every pipe are in the process and stores the bytes in flight
    /// with the first description of each pipe.
    pub fn finish(self) -> Result<HashMap<u32, Vec<u8>>, Error> {
        let mut out = HashMap::new();
        for (ino, seen) in self.pipes {
            let (Some(read_end), true) = (&seen.read_end, seen.has_write) else {
                return Err(Error::Unsupported {
                    what: format!(
                        "fd {} of pid {} is one end of pipe:[{ino}] whose other end is outside the dumped processes",
                        seen.first_fd, seen.first_pid
                    ),
                });
            };
            let data = peek(read_end, seen.first_fd)?;
            if !data.is_empty() {
                out.insert(seen.ids[0], data);
            }
        }
        Ok(out)
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

/// Creates restored pipes; each pipe is created when its first end is asked for.
#[derive(Default)]
pub struct PipeBuilder {
    /// pipe id -> (read end, write end)
    made: HashMap<u64, (OwnedFd, OwnedFd)>,
}

impl PipeBuilder {
    /// Returns a new description for this pipe end (its own open file, with its flags).
    pub fn open(&mut self, f: &FileDesc) -> Result<OwnedFd, Error> {
        let FileKind::Pipe {
            pipe_id,
            write_end,
            capacity,
            data,
        } = &f.kind
        else {
            return Err(Error::Invalid("not a pipe".into()));
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
        // Both ends were made by pipe(2) with O_CLOEXEC; status flags (O_NONBLOCK) are per end.
        let fd = end.try_clone().map_err(|e| Error::io("dup", e))?;
        let status = f.flags as i32 & (libc::O_NONBLOCK | libc::O_DIRECT | libc::O_ASYNC);
        process::set_status_flags(fd.as_fd(), status)
            .map_err(|e| Error::io("F_SETFL on pipe", e))?;
        Ok(fd)
    }
}
