//! Freezing a process (every thread seized and stopped) and letting it go again.
//!
//! Threads are seized and interrupted, then the task list is read again until no new thread
//! appears, so a thread created during the freeze is never missed.

use crate::{procfs, Error};
use stasis_sys::{ptrace, Pid};

/// A process whose threads are all in a ptrace-stop. Dropping it detaches from every thread
/// (the process runs on); [`Frozen::kill`] ends it instead.
pub struct Frozen {
    pub pid: Pid,
    /// Every thread, the leader first.
    pub threads: Vec<Pid>,
    detached: bool,
}

/// PTRACE_EVENT_STOP: the stop PTRACE_INTERRUPT produces.
const PTRACE_EVENT_STOP: i32 = 128;

impl Frozen {
    /// Seizes and stops every thread of `pid`.
    pub fn freeze(pid: Pid) -> Result<Frozen, Error> {
        let mut frozen = Frozen {
            pid,
            threads: Vec::new(),
            detached: false,
        };
        loop {
            let tids = procfs::list_threads(pid).map_err(|_| Error::NoSuchProcess { pid })?;
            let new: Vec<Pid> = tids
                .iter()
                .copied()
                .filter(|t| !frozen.threads.contains(t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                match ptrace::seize(tid, false) {
                    Ok(()) => {}
                    // The thread exited between listing and seizing.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) && tid != pid => continue,
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                        return Err(Error::NoSuchProcess { pid })
                    }
                    Err(e) => return Err(Error::sys("PTRACE_SEIZE", tid, e)),
                }
                ptrace::interrupt(tid).map_err(|e| Error::sys("PTRACE_INTERRUPT", tid, e))?;
                match wait_for_stop(tid) {
                    Ok(()) => frozen.threads.push(tid),
                    // A thread that exits while being frozen is simply not part of the dump.
                    Err(Error::TargetDied { .. }) if tid != pid => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // The leader first.
        frozen.threads.sort_by_key(|&t| (t != pid, t));
        Ok(frozen)
    }

    /// Kills the process (after a successful dump). The kill cannot be caught; the threads
    /// stay traced until they are gone.
    pub fn kill(mut self) -> Result<(), Error> {
        stasis_sys::process::kill(self.pid, libc::SIGKILL)
            .map_err(|e| Error::sys("kill", self.pid, e))?;
        self.detached = true;
        Ok(())
    }

    /// Detaches from every thread so the process runs on.
    pub fn thaw(&mut self) -> Result<(), Error> {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Result<(), Error> {
        if self.detached {
            return Ok(());
        }
        self.detached = true;
        let mut first = Ok(());
        for &tid in &self.threads {
            if let Err(e) = ptrace::detach(tid, 0) {
                if first.is_ok() {
                    first = Err(Error::sys("PTRACE_DETACH", tid, e));
                }
            }
        }
        first
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}

/// Waits until `tid` reports the stop PTRACE_INTERRUPT asked for. A signal-delivery-stop that
/// comes first is resumed with the same signal, so nothing is lost.
fn wait_for_stop(tid: Pid) -> Result<(), Error> {
    loop {
        match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
            ptrace::WaitStatus::Stopped {
                event: PTRACE_EVENT_STOP,
                ..
            } => return Ok(()),
            ptrace::WaitStatus::Stopped { sig, .. } => {
                // A signal was about to be delivered: hand it back and wait for our stop.
                ptrace::cont(tid, sig).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?;
            }
            other => {
                return Err(Error::TargetDied {
                    pid: tid,
                    how: format!("{other:?}"),
                })
            }
        }
    }
}
