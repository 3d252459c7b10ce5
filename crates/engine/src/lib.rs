//! The stasis checkpoint/restore engine.
//!
//! [`dump()`] freezes a process with ptrace, collects its state and writes it into an image
//! directory; [`restore()`] recreates the process from those images with the same pid. Each
//! kind of resource has one module holding both its dump and its restore side:
//!
//! | module      | what it saves and restores                                        |
//! |-------------|-------------------------------------------------------------------|
//! | [`memory`]  | mappings and page contents, vdso/vvar placement                   |
//! | [`mm`]      | mm fields (code/data/brk/stack/arg/env bounds, auxv, exe link)    |
//! | [`thread`]  | registers, FPU/xsave, signal mask, rseq, robust list, altstack    |
//! | [`files`]   | the fd table: regular files, deleted files, devices, directories  |
//! | [`pipes`]   | pipes, with the bytes in flight                                   |
//! | [`eventfd`] | eventfd counters                                                  |
//! | [`timerfd`] | timerfds: clock, time left, interval, unread expirations          |
//! | [`signalfd`] | signalfd masks                                                   |
//! | [`epoll`]   | epoll instances and their watches                                 |
//! | [`memfd`]   | memfds: contents, seals, mappings                                 |
//! | [`inotify`] | inotify watches: paths, masks, watch descriptors                  |
//! | [`signals`] | signal dispositions and pending signals                           |
//! | [`timers`]  | interval timers                                                   |
//! | [`posix_timers`] | POSIX timers (timer_create), with their ids                  |
//! | [`creds`]   | uids, gids, groups, capabilities, securebits, no_new_privs        |
//! | [`task`]    | cwd, root, umask, rlimits, personality, comm, session, prctl bits |
//!
//! The orchestration lives in [`dump`](mod@dump) and [`restore`](mod@restore); [`freeze`]
//! stops and resumes the threads, [`inject`] runs system calls inside a stopped thread, and
//! [`procfs`] parses /proc.

pub mod check;
pub mod creds;
pub mod dump;
pub mod epoll;
pub mod eventfd;
pub mod files;
pub mod freeze;
pub mod inject;
pub mod inotify;
pub mod memfd;
pub mod memory;
pub mod mm;
pub mod pipes;
pub mod posix_timers;
pub mod procfs;
pub mod restore;
pub mod show;
pub mod signalfd;
pub mod signals;
pub mod task;
pub mod thread;
pub mod timerfd;
pub mod timers;

pub use dump::{dump, DumpOptions, DumpReport, ServiceConnection};
pub use restore::{restore, Requester, RestoreOptions, Restored};
pub use stasis_image::ImageDir;

use stasis_sys::Pid;

/// Everything that can go wrong in the engine. Messages say which operation failed on what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pid {pid} does not exist")]
    NoSuchProcess { pid: Pid },
    #[error("pid {pid} is in use by another process")]
    PidInUse { pid: Pid },
    #[error("unsupported: {what}")]
    Unsupported { what: String },
    #[error("{op} on {pid} failed: {source}")]
    Sys {
        op: &'static str,
        pid: Pid,
        source: std::io::Error,
    },
    #[error("{call} in thread {tid} failed: {errno}")]
    Remote {
        call: &'static str,
        tid: Pid,
        errno: std::io::Error,
    },
    #[error("running syscall {nr} in thread {tid}: {reason}")]
    Inject { tid: Pid, nr: i64, reason: String },
    #[error("process {pid} died unexpectedly ({how})")]
    TargetDied { pid: Pid, how: String },
    #[error(transparent)]
    Proc(#[from] procfs::ProcError),
    #[error(transparent)]
    Image(#[from] stasis_image::ImageError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("refused: {0}")]
    Refused(String),
}

impl Error {
    pub(crate) fn sys(op: &'static str, pid: Pid, source: std::io::Error) -> Error {
        Error::Sys { op, pid, source }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The page size the engine assumes (x86-64).
pub const PAGE_SIZE: u64 = 4096;
