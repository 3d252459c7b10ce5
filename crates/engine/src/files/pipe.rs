//! Pipes: both ends with their flags, the pipe's capacity, and the bytes in flight.
//!
//! Dump: the bytes waiting in a pipe are copied without being consumed, with tee(2) from the
//! target's own read end (duplicated by pidfd_getfd) into a private pipe. A pipe of which the
//! dumped processes hold one end only is fine when the other end is closed everywhere (the
//! reader of a finished writer, GNU make's jobs); when a process outside the tree holds that
//! other end (found by its `pipe:[INO]` link in /proc/*/fd), the pipe cannot be restored yet
//! and fails the dump, naming that process and fd. An end held where /proc does not show it
//! (in flight in a unix socket, say) counts as closed.
//!
//! Restore: the restorer creates a pipe of the same capacity, writes the bytes back, and
//! hands each end to the new process; every further description of an end (one opened
//! through /proc/PID/fd) is opened the same way, so that status flags stay per description.
//! An end no process held is closed once every description is open: the reader of a pipe
//! without writers reads the bytes, then EOF; a writer without readers gets EPIPE.

use crate::Error;
use stasis_image::{FileDesc, FileKind};
use stasis_sys::{process, Pid};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// O_LARGEFILE as the kernel shows it in fdinfo on x86-64 (where libc's is 0): set on every
/// description open(2) makes, never on those pipe(2) makes.
const O_LARGEFILE: i32 = 0o100000;

/// Gathers pipe ends while the fd table is walked.
#[derive(Default)]
pub struct PipeCollector {
    /// pipe inode -> (read end seen, write end seen, a read end handle, description ids).
    pipes: HashMap<u64, PipeSeen>,
}

#[derive(Default)]
struct PipeSeen {
    /// A description open for reading, if the tree has one.
    read_end: Option<File>,
    /// Whether the tree has a description open for writing.
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
        let access = flags as i32 & libc::O_ACCMODE;
        let write_end = access == libc::O_WRONLY;
        let capacity = process::pipe_capacity(file.as_fd())
            .map_err(|e| Error::io(format!("F_GETPIPE_SZ on fd {fd}"), e))?;
        let seen = self.pipes.entry(ino).or_insert_with(|| PipeSeen {
            first_pid: pid,
            first_fd: fd,
            ..Default::default()
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

    /// Checks that no process outside `tree` (the dumped processes) holds an end of a pipe
    /// that the tree does not hold, and returns the bytes in flight by the id of the first
    /// description of each pipe, which stores them.
    pub fn finish(self, tree: &[Pid]) -> Result<HashMap<u32, Vec<u8>>, Error> {
        let lone: HashMap<u64, bool> = self
            .pipes
            .iter()
            .filter(|(_, s)| s.read_end.is_none() || !s.has_write)
            .map(|(&ino, s)| (ino, s.read_end.is_some()))
            .collect();
        let held = outside_holder(&lone, tree).and_then(|h| Some((self.pipes.get(&h.ino)?, h)));
        if let Some((seen, h)) = held {
            let (ours, theirs) = if h.needs_write {
                ("read", "write")
            } else {
                ("write", "read")
            };
            return Err(Error::Unsupported {
                what: format!(
                    "fd {} of pid {} is the {ours} end of pipe:[{}], whose {theirs} end is held outside the dumped processes, by fd {} of pid {} ({})",
                    seen.first_fd, seen.first_pid, h.ino, h.fd, h.pid, h.comm
                ),
            });
        }
        let mut out = HashMap::new();
        for (_, seen) in self.pipes {
            // Without a read end, nothing can read what is in the pipe.
            let Some(read_end) = &seen.read_end else {
                continue;
            };
            let data = peek(read_end, seen.first_fd)?;
            if !data.is_empty() {
                out.insert(seen.ids[0], data);
            }
        }
        Ok(out)
    }
}

/// A process outside the dumped tree that holds the end of a pipe the tree lacks.
struct OutsideHolder {
    ino: u64,
    /// The tree lacks the write end (else the read end).
    needs_write: bool,
    pid: Pid,
    fd: RawFd,
    comm: String,
}

/// Looks through the fds of every process but `tree` and this one for an end of one of the
/// `lone` pipes (inode -> whether the tree lacks the write end rather than the read end) that
/// the tree lacks. Processes and fds that vanish or cannot be read meanwhile are passed over.
fn outside_holder(lone: &HashMap<u64, bool>, tree: &[Pid]) -> Option<OutsideHolder> {
    if lone.is_empty() {
        return None;
    }
    let me = process::getpid();
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()) else {
            continue;
        };
        if pid == me || tree.contains(&pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for f in fds.flatten() {
            let Ok(link) = std::fs::read_link(f.path()) else {
                continue;
            };
            let Some(ino) = link
                .to_str()
                .and_then(|l| l.strip_prefix("pipe:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok())
            else {
                continue;
            };
            let Some(&needs_write) = lone.get(&ino) else {
                continue;
            };
            let Some(fd) = f.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
                continue;
            };
            let Ok(info) = crate::procfs::read_fdinfo(pid, fd) else {
                continue;
            };
            let access = info.flags as i32 & libc::O_ACCMODE;
            let has_it = if needs_write {
                access != libc::O_RDONLY
            } else {
                access != libc::O_WRONLY
            };
            if has_it {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim_end().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Some(OutsideHolder {
                    ino,
                    needs_write,
                    pid,
                    fd,
                    comm,
                });
            }
        }
    }
    None
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
    made: HashMap<u64, MadePipe>,
}

/// A recreated pipe: the two descriptions pipe(2) made, and whether each was handed out yet.
struct MadePipe {
    read: OwnedFd,
    write: OwnedFd,
    read_given: bool,
    write_given: bool,
}

impl PipeBuilder {
    /// Returns a new description for this pipe end: its own open file description, with its
    /// access mode and status flags (F_SETFL on one description must not change another).
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
                reopen(&made.write, libc::O_WRONLY)
                    .map_err(|e| Error::io(format!("reopen pipe:[{pipe_id}] to refill it"), e))?,
            );
            std::io::Write::write_all(&mut wf, data)
                .map_err(|e| Error::io(format!("refill pipe:[{pipe_id}]"), e))?;
        }
        let access = f.flags as i32 & libc::O_ACCMODE;
        let (end, given, pipe_access) = if *write_end {
            (&made.write, &mut made.write_given, libc::O_WRONLY)
        } else {
            (&made.read, &mut made.read_given, libc::O_RDONLY)
        };
        // pipe(2) makes one description of each end, without O_LARGEFILE; every other one was
        // opened through /proc/PID/fd (and has O_LARGEFILE) and is opened the same way here,
        // a new description of the same pipe.
        let fd = if !*given && access == pipe_access && f.flags as i32 & O_LARGEFILE == 0 {
            *given = true;
            end.try_clone().map_err(|e| Error::io("dup", e))?
        } else {
            reopen(end, access).map_err(|e| {
                Error::io(
                    format!("reopen pipe:[{pipe_id}] for description {}", f.id),
                    e,
                )
            })?
        };
        let status = f.flags as i32 & (libc::O_NONBLOCK | libc::O_DIRECT | libc::O_ASYNC);
        process::set_status_flags(fd.as_fd(), status)
            .map_err(|e| Error::io(format!("F_SETFL on pipe description {}", f.id), e))?;
        Ok(fd)
    }
}

/// Opens the pipe behind `fd` again through /proc/self/fd with `access` (O_RDONLY, O_WRONLY
/// or O_RDWR): a new open file description of the same pipe. (For a pipe, unlike a FIFO,
/// this never waits for the other end.)
fn reopen(fd: &OwnedFd, access: i32) -> std::io::Result<OwnedFd> {
    let mut o = std::fs::OpenOptions::new();
    o.read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY);
    Ok(o.open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?.into())
}
