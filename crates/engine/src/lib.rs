//! The stasis checkpoint/restore engine.
//!
//! [`dump()`] freezes a process tree with ptrace, collects its state and writes it into an
//! image directory; [`restore()`] recreates the tree from those images with the same pids.
//! The engine is organised by phase and by resource (see docs/architecture.md for the table
//! "where is X dumped and restored"):
//!
//! | module      | what it holds                                                        |
//! |-------------|----------------------------------------------------------------------|
//! | [`dump`](mod@dump) | the dump phases: freeze the tree, collect, write, thaw or kill |
//! | [`restore`](mod@restore) | the restore phases: load, plan, fork the tree, rebuild, finish |
//! | [`files`]   | the fd table and one module per file kind (pipes, eventfd, epoll, ...) |
//! | [`pages`]   | memory mappings and page contents, vdso/vvar placement               |
//! | [`task`]    | per-process parts: credentials, mm fields, threads, signals, timers  |
//! | [`inject`]  | system calls run inside a stopped thread of the target               |
//! | [`procfs`]  | parsers for /proc                                                    |
//! | [`show`]    | the images as JSON                                                   |
//! | [`check`]   | probes of the kernel features stasis needs                           |
//! | [`auth`]    | the image key images are authenticated with                          |
//!
//! The engine logs with `tracing` and never installs a logger: spans `dump`/`restore`, one per
//! phase, `process{pid}` and one per resource part (`signals{pid}`, `thread{tid}`, ...), and
//! every system call injected into a target at trace level. The names, fields and levels are
//! listed in docs/architecture.md ("Logging").

pub mod auth;
pub mod chain;
pub mod check;
pub mod cpu;
pub mod dump;
pub mod fault;
pub mod files;
pub mod inject;
pub mod pages;
pub mod procfs;
pub mod restore;
pub mod show;
pub mod task;
pub mod timings;

pub use dump::{dump, DumpOptions, DumpReport, ServiceConnection, TcpConnections};
pub use files::ReplacedFiles;
pub use pages::compress::Compression;
pub use restore::{restore, Requester, RestoreOptions, Restored};

pub use stasis_image::{ImageDir, ImageKey};

use stasis_sys::Pid;

/// Everything that can go wrong in the engine. Messages say which operation failed on what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pid {pid} does not exist")]
    NoSuchProcess { pid: Pid },
    /// `holder` says by what: "another process (bash)", "a zombie (the dumped process itself,
    /// not yet reaped by its parent 4100)" (see `restore::load::pid_holder`).
    #[error("pid {pid} is in use by {holder}")]
    PidInUse { pid: Pid, holder: String },
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
    /// The world changed since the dump: a file was replaced or removed, a device differs.
    #[error("{what}")]
    Changed { what: String },
    /// A restore child failed while setting itself up (reported over the error pipe).
    #[error("setting up pid {pid}: {what}")]
    Child { pid: Pid, what: String },
    /// A step of the rebuild of a restored process failed.
    #[error("restoring pid {pid} ({step}): {source}")]
    Rebuild {
        pid: Pid,
        step: &'static str,
        source: Box<Error>,
    },
    /// The parent of an incremental dump (`image`, which names it by `parent`) cannot be
    /// used: missing, not a complete dump, replaced or changed since, or a chain too long or
    /// circular (see [`chain`]).
    #[error("{image}: broken chain of incremental dumps: the parent dump {parent} {reason}")]
    BrokenChain {
        image: std::path::PathBuf,
        parent: String,
        reason: String,
    },
    /// A bug in stasis: a state the code should never reach.
    #[error("internal error: {what}")]
    Internal { what: String },
    /// An error another process of the restore reported (the restorer that runs as the
    /// requester, `restore::as_user`), with its message and class.
    #[error("{message}")]
    Reported { class: ErrorClass, message: String },
}

/// What kind of failure an [`Error`] is, for callers that map errors to codes (stasisd and
/// its client libraries) or decide whether retrying may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorClass {
    /// The images are corrupt, truncated, of another version, or describe something invalid.
    Image,
    /// The machine is not as the images need it: a pid is taken, a file is gone or was
    /// replaced, a process does not exist.
    Environment,
    /// Something stasis does not support (yet), named.
    Unsupported,
    /// Not allowed: a security rule or an option the caller did not give.
    Refused,
    /// A system call failed for another reason, or a bug.
    Internal,
}

impl Error {
    /// The class of this error (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Image(_) | Error::Invalid(_) => ErrorClass::Image,
            Error::NoSuchProcess { .. }
            | Error::PidInUse { .. }
            | Error::Changed { .. }
            | Error::BrokenChain { .. } => ErrorClass::Environment,
            Error::Io { source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::EACCES)
                ) =>
            {
                ErrorClass::Environment
            }
            Error::Unsupported { .. } => ErrorClass::Unsupported,
            Error::Refused(_) => ErrorClass::Refused,
            Error::Rebuild { source, .. } => source.class(),
            Error::Reported { class, .. } => *class,
            Error::Sys { .. }
            | Error::Remote { .. }
            | Error::Inject { .. }
            | Error::TargetDied { .. }
            | Error::Proc(_)
            | Error::Io { .. }
            | Error::Child { .. }
            | Error::Internal { .. } => ErrorClass::Internal,
        }
    }
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

/// A fresh, empty directory for a test, `stasis-TAG-PID` under the temporary directory (what
/// an earlier run left there is removed first).
#[cfg(test)]
pub(crate) fn fresh_test_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("stasis-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

#[cfg(test)]
mod tests {
    use super::{Error, ErrorClass};

    #[test]
    fn error_classes_keep_images_environment_and_internal_apart() {
        let enoent = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let cases = [
            (Error::Invalid("bad record".into()), ErrorClass::Image),
            (
                Error::PidInUse {
                    pid: 7,
                    holder: "another process".into(),
                },
                ErrorClass::Environment,
            ),
            (
                Error::Changed {
                    what: "replaced".into(),
                },
                ErrorClass::Environment,
            ),
            (Error::io("open /gone", enoent()), ErrorClass::Environment),
            (
                Error::io("write", std::io::Error::from_raw_os_error(libc::ENOSPC)),
                ErrorClass::Internal,
            ),
            (Error::Refused("no".into()), ErrorClass::Refused),
            (
                Error::Unsupported {
                    what: "a socket".into(),
                },
                ErrorClass::Unsupported,
            ),
            (
                Error::Rebuild {
                    pid: 9,
                    step: "map memory",
                    source: Box::new(Error::PidInUse {
                        pid: 10,
                        holder: "another process".into(),
                    }),
                },
                ErrorClass::Environment,
            ),
            (
                Error::Child {
                    pid: 9,
                    what: "setsid: EPERM".into(),
                },
                ErrorClass::Internal,
            ),
        ];
        for (e, class) in cases {
            assert_eq!(e.class(), class, "{e}");
        }
    }
}
