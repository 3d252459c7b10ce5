//! Checkpoint the calling process with one call.
//!
//! [`dump_self`] asks the privileged `stasisd` daemon, over a unix socket, to dump the calling
//! process into an images directory that the caller passes as an open descriptor. The daemon
//! learns who is asking from the kernel (peer pidfd / credentials), freezes the caller while it
//! waits for the answer, writes the images, thaws it and answers: the call returns
//! [`Outcome::Dumped`]. When a process is later restored from those images, the same call
//! returns a second time, in the restored process, with [`Outcome::Restored`] — like `fork()`
//! returning twice.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! let dir = std::fs::File::open("/var/lib/myapp/checkpoint")?;
//! match stasis_client::dump_self(dir.as_fd(), &Default::default())? {
//!     stasis_client::Outcome::Dumped => println!("checkpoint written, running on"),
//!     stasis_client::Outcome::Restored => println!("restored from the checkpoint"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The daemon's socket is `/run/stasis/stasis.sock`, or `$STASIS_SOCKET` when set, or the path
//! given in the options. Nothing here keeps global state: every call opens its own
//! close-on-exec connection, so the functions can be called from any thread.
#![deny(unsafe_code)]

#[doc(hidden)]
pub mod protocol;

use protocol::{Message, TransportError};
use stasis_sys::socket as sock;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use protocol::ProtocolError;

/// Error codes, as returned by the C library and carried by the daemon's `Failure` messages.
/// Plain negative `errno` values are possible too, for system errors.
pub mod code {
    /// Client and daemon versions differ.
    pub const VERSION: i32 = -1001;
    /// The daemon cannot be reached.
    pub const CONNECT: i32 = -1002;
    /// A malformed or unexpected message.
    pub const PROTOCOL: i32 = -1003;
    /// Not allowed by a security rule.
    pub const REFUSED: i32 = -1004;
    /// The process uses a resource stasis cannot dump yet.
    pub const UNSUPPORTED: i32 = -1005;
    /// The dump failed.
    pub const DUMP: i32 = -1006;
    /// The daemon or its worker failed, or the connection was lost.
    pub const DAEMON: i32 = -1007;
    /// A bad argument (also: the `before_checkpoint` hook refused).
    pub const INVALID: i32 = -1008;
    /// The restore failed.
    pub const RESTORE: i32 = -1009;
    /// The images are corrupt, truncated, of another format version, or describe something
    /// invalid.
    pub const IMAGE: i32 = -1010;
    /// The machine is not as the images need it: a pid is taken, a file is gone or was
    /// replaced since the dump, a process does not exist.
    pub const ENVIRONMENT: i32 = -1011;
    /// The daemon is serving as many requests as it may (at once, or for this user): try
    /// again later.
    pub const BUSY: i32 = -1012;
}

/// Where the daemon listens unless `$STASIS_SOCKET` or an option says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/stasis/stasis.sock";
/// The environment variable that overrides [`DEFAULT_SOCKET`].
pub const SOCKET_ENV: &str = "STASIS_SOCKET";

/// `$STASIS_SOCKET` if set and not empty, else [`DEFAULT_SOCKET`].
pub fn default_socket() -> PathBuf {
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// Options of [`dump_self`].
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Dump the caller's child processes too.
    pub with_children: bool,
    /// Kill the caller after the dump: the call then never returns in the original, only in
    /// restored copies.
    pub kill: bool,
    /// The daemon's socket; `None` means [`default_socket`].
    pub socket: Option<PathBuf>,
}

/// Which side of a checkpoint the caller is on when [`dump_self`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The original process, after its images were written.
    Dumped,
    /// A process restored from the images.
    Restored,
}

/// Code the application runs around a checkpoint, in the application itself: nothing here
/// runs while the process is frozen, and nothing waits on a frozen process.
pub trait Hooks {
    /// Runs before anything is sent (e.g. flush buffers, quiesce threads). An error aborts the
    /// checkpoint with [`Error::Aborted`] before the daemon is contacted.
    fn before_checkpoint(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Runs in the original process once the dump is written.
    fn after_dump(&mut self) {}
    /// Runs in a restored process, before [`dump_self`] returns there.
    fn after_restore(&mut self) {}
}

struct NoHooks;
impl Hooks for NoHooks {}

/// Why a request failed. [`Error::code`] gives the number the C library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("stasis version mismatch: client {client}, daemon {daemon}")]
    VersionMismatch { client: String, daemon: String },
    #[error("cannot reach the stasis daemon at {}: {source} (is stasisd running? ${SOCKET_ENV} overrides the path)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stasis protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("refused by stasisd: {0}")]
    Refused(String),
    #[error("cannot be dumped yet: {0}")]
    Unsupported(String),
    #[error("dump failed: {0}")]
    DumpFailed(String),
    #[error("restore failed: {0}")]
    RestoreFailed(String),
    #[error("bad images: {0}")]
    BadImages(String),
    #[error("the environment changed since the dump: {0}")]
    Environment(String),
    #[error("stasis daemon: {0}")]
    Daemon(String),
    #[error("stasis daemon busy: {0}")]
    Busy(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("checkpoint aborted by the before_checkpoint hook: {0}")]
    Aborted(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The negative code for this error: one of [`code`], or `-errno` for an [`Error::Io`]
    /// that carries one ([`code::DAEMON`] otherwise).
    pub fn code(&self) -> i32 {
        match self {
            Error::VersionMismatch { .. } => code::VERSION,
            Error::Connect { .. } => code::CONNECT,
            Error::Protocol(_) => code::PROTOCOL,
            Error::Refused(_) => code::REFUSED,
            Error::Unsupported(_) => code::UNSUPPORTED,
            Error::DumpFailed(_) => code::DUMP,
            Error::RestoreFailed(_) => code::RESTORE,
            Error::BadImages(_) => code::IMAGE,
            Error::Environment(_) => code::ENVIRONMENT,
            Error::Daemon(_) => code::DAEMON,
            Error::Busy(_) => code::BUSY,
            Error::Invalid(_) | Error::Aborted(_) => code::INVALID,
            Error::Io { source, .. } => match source.raw_os_error() {
                Some(errno) if errno > 0 => -errno,
                _ => code::DAEMON,
            },
        }
    }

    /// The error a daemon's `Failure { code, message }` stands for.
    fn from_failure(c: i32, message: String) -> Error {
        match c {
            code::VERSION => {
                let daemon = match protocol::parse_version_mismatch(&message) {
                    Some((_, daemon)) => daemon.to_string(),
                    None => format!("unknown ({message})"),
                };
                Error::VersionMismatch {
                    client: protocol::VERSION.to_string(),
                    daemon,
                }
            }
            code::PROTOCOL => Error::Protocol(ProtocolError::Remote(message)),
            code::REFUSED => Error::Refused(message),
            code::UNSUPPORTED => Error::Unsupported(message),
            code::DUMP => Error::DumpFailed(message),
            code::RESTORE => Error::RestoreFailed(message),
            code::IMAGE => Error::BadImages(message),
            code::ENVIRONMENT => Error::Environment(message),
            code::DAEMON | code::CONNECT => Error::Daemon(message),
            code::BUSY => Error::Busy(message),
            code::INVALID => Error::Invalid(message),
            -4095..=-1 => Error::Io {
                context: message,
                source: io::Error::from_raw_os_error(-c),
            },
            _ => Error::Daemon(format!("{message} (unknown error code {c})")),
        }
    }
}

impl From<TransportError> for Error {
    fn from(e: TransportError) -> Error {
        match e {
            TransportError::Closed => Error::Daemon("connection closed by the daemon".into()),
            TransportError::Io { op, source } => Error::Io {
                context: format!("{op} on the stasis daemon connection"),
                source,
            },
            TransportError::Protocol(p) => Error::Protocol(p),
        }
    }
}

/// An open, version-checked connection to the daemon.
struct Connection {
    fd: OwnedFd,
}

impl Connection {
    fn open(socket: Option<&Path>) -> Result<Connection, Error> {
        let path = socket.map_or_else(default_socket, Path::to_path_buf);
        let fd =
            sock::seqpacket_connect(&path).map_err(|source| Error::Connect { path, source })?;
        let conn = Connection { fd };
        let hello = protocol::send(
            conn.fd.as_fd(),
            &Message::Hello {
                version: protocol::VERSION.into(),
            },
            None,
        );
        match hello {
            Ok(()) => {}
            // A daemon that turns the connection away (busy) answers with a Failure and closes
            // the connection, possibly before the Hello went out (EPIPE): its answer, already
            // queued, is the better error.
            Err(TransportError::Closed) => {
                if let Ok((Message::Failure { code, message }, _)) = protocol::recv(conn.fd.as_fd())
                {
                    return Err(Error::from_failure(code, message));
                }
                return Err(TransportError::Closed.into());
            }
            Err(e) => return Err(e.into()),
        }
        match conn.recv()? {
            Message::Welcome { version } if version == protocol::VERSION => Ok(conn),
            Message::Welcome { version } => Err(Error::VersionMismatch {
                client: protocol::VERSION.into(),
                daemon: version,
            }),
            other => Err(unexpected("Welcome", &other)),
        }
    }

    fn send(&self, msg: &Message, pass: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        protocol::send(self.fd.as_fd(), msg, pass).map_err(Error::from)
    }

    /// The next message; a `Failure` becomes its error.
    fn recv(&self) -> Result<Message, Error> {
        // No message sent to a client carries a descriptor; recv enforces that.
        let (msg, _) = protocol::recv(self.fd.as_fd())?;
        match msg {
            Message::Failure { code, message } => Err(Error::from_failure(code, message)),
            other => Ok(other),
        }
    }
}

fn unexpected(expected: &'static str, got: &Message) -> Error {
    Error::Protocol(ProtocolError::Unexpected {
        expected,
        got: got.name(),
    })
}

/// Fails with [`Error::Invalid`] unless `fd` is an open directory.
fn check_dir(fd: BorrowedFd<'_>) -> Result<(), Error> {
    let dup = fd.try_clone_to_owned().map_err(|e| {
        Error::Invalid(format!(
            "images directory descriptor {}: {e}",
            fd.as_raw_fd()
        ))
    })?;
    let meta = std::fs::File::from(dup).metadata().map_err(|e| Error::Io {
        context: format!("fstat of images directory descriptor {}", fd.as_raw_fd()),
        source: e,
    })?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "images descriptor {} is not a directory",
            fd.as_raw_fd()
        )));
    }
    Ok(())
}

/// Checkpoints the calling process into `images_dir` (an open directory) through the daemon.
/// Returns [`Outcome::Dumped`] in the original and [`Outcome::Restored`] in a process restored
/// from the images. With [`DumpOptions::kill`] the original never returns.
pub fn dump_self(images_dir: BorrowedFd<'_>, opts: &DumpOptions) -> Result<Outcome, Error> {
    dump_self_with_hooks(images_dir, opts, &mut NoHooks)
}

/// [`dump_self`] with [`Hooks`] run around it: `before_checkpoint` before the daemon is
/// contacted, `after_dump` or `after_restore` after the connection is closed.
pub fn dump_self_with_hooks(
    images_dir: BorrowedFd<'_>,
    opts: &DumpOptions,
    hooks: &mut dyn Hooks,
) -> Result<Outcome, Error> {
    check_dir(images_dir)?;
    hooks.before_checkpoint().map_err(Error::Aborted)?;
    let outcome = {
        let conn = Connection::open(opts.socket.as_deref())?;
        let mut flags = 0;
        if opts.with_children {
            flags |= protocol::DUMP_WITH_CHILDREN;
        }
        if opts.kill {
            flags |= protocol::DUMP_KILL;
        }
        let conn_fd = conn.fd.as_raw_fd();
        conn.send(&Message::DumpSelf { flags, conn_fd }, Some(images_dir))?;
        // Here the daemon freezes, dumps and thaws this process; in a restored copy this very
        // recv is restarted and reads the Done{restored} queued on the recreated connection.
        match conn.recv()? {
            Message::Done {
                outcome: protocol::OUTCOME_DUMPED,
            } => Outcome::Dumped,
            Message::Done {
                outcome: protocol::OUTCOME_RESTORED,
            } => Outcome::Restored,
            Message::Done { outcome } => {
                return Err(Error::Protocol(ProtocolError::BadOutcome(outcome)))
            }
            other => return Err(unexpected("Done", &other)),
        }
        // The connection closes here, before any hook runs.
    };
    match outcome {
        Outcome::Dumped => hooks.after_dump(),
        Outcome::Restored => hooks.after_restore(),
    }
    Ok(outcome)
}

/// Dumps another process `pid` of the caller's into `images_dir` through the daemon, which
/// checks that the caller could ptrace it. With `kill` the process is killed after the dump,
/// else it runs on. `socket: None` means [`default_socket`].
pub fn dump_pid(
    pid: i32,
    images_dir: BorrowedFd<'_>,
    kill: bool,
    socket: Option<&Path>,
) -> Result<(), Error> {
    if pid <= 0 {
        return Err(Error::Invalid(format!("pid {pid}")));
    }
    check_dir(images_dir)?;
    let conn = Connection::open(socket)?;
    let flags = if kill { protocol::DUMP_KILL } else { 0 };
    conn.send(&Message::DumpPid { pid, flags }, Some(images_dir))?;
    match conn.recv()? {
        Message::Done {
            outcome: protocol::OUTCOME_DUMPED,
        } => Ok(()),
        Message::Done { outcome } => Err(Error::Protocol(ProtocolError::BadOutcome(outcome))),
        other => Err(unexpected("Done", &other)),
    }
}

/// Options of [`restore`].
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Do not wait for the restored process: the daemon answers once it runs and then closes
    /// the connection ([`Restored::wait`] is then of no use).
    pub detach: bool,
    /// The daemon's socket; `None` means [`default_socket`].
    pub socket: Option<PathBuf>,
}

/// A process restored by [`restore`].
#[derive(Debug)]
pub struct Restored {
    /// Its pid (the dumped one).
    pub pid: i32,
    /// The connection on which the daemon reports its exit (unless detached).
    pub connection: OwnedFd,
}

impl Restored {
    /// Waits until the restored process exits; returns its exit code, or 128 + the signal that
    /// killed it.
    pub fn wait(self) -> Result<i32, Error> {
        let conn = Connection {
            fd: self.connection,
        };
        match conn.recv()? {
            Message::Exited { status } => Ok(status),
            other => Err(unexpected("Exited", &other)),
        }
    }
}

/// Restores the process whose images are in `images_dir`, through the daemon and with the
/// caller's own credentials. Returns once it runs. Images of a job that ran on a terminal
/// outside its tree (started from a shell) are refused: see [`restore_on_terminal`].
pub fn restore(images_dir: BorrowedFd<'_>, opts: &RestoreOptions) -> Result<Restored, Error> {
    restore_with(images_dir, None, opts)
}

/// [`restore`], attaching a job that ran on a terminal outside its tree (started from a
/// shell) to `terminal`, an open terminal of the caller's (opened for reading, as a
/// controlling terminal must be), passed to the daemon as a descriptor: the restored job
/// gets a session of its own with that terminal as its controlling terminal, its process
/// group in the foreground, and the dumped terminal settings. The terminal must not be the
/// controlling terminal of another session (such as the caller's own shell's: the kernel
/// gives a terminal to one session at a time), or the restore fails saying so. Images
/// without such a terminal ignore it.
pub fn restore_on_terminal(
    images_dir: BorrowedFd<'_>,
    terminal: BorrowedFd<'_>,
    opts: &RestoreOptions,
) -> Result<Restored, Error> {
    if !stasis_sys::tty::isatty(terminal) {
        return Err(Error::Invalid(format!(
            "descriptor {} is not a terminal",
            terminal.as_raw_fd()
        )));
    }
    restore_with(images_dir, Some(terminal), opts)
}

fn restore_with(
    images_dir: BorrowedFd<'_>,
    terminal: Option<BorrowedFd<'_>>,
    opts: &RestoreOptions,
) -> Result<Restored, Error> {
    check_dir(images_dir)?;
    let conn = Connection::open(opts.socket.as_deref())?;
    let mut flags = if opts.detach {
        protocol::RESTORE_DETACH
    } else {
        0
    };
    let mut fds = vec![images_dir];
    if let Some(t) = terminal {
        flags |= protocol::RESTORE_TERMINAL;
        fds.push(t);
    }
    protocol::send_fds(conn.fd.as_fd(), &Message::Restore { flags }, &fds)?;
    match conn.recv()? {
        Message::Started { pid } => Ok(Restored {
            pid,
            connection: conn.fd,
        }),
        other => Err(unexpected("Started", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_codes() {
        for c in [
            code::PROTOCOL,
            code::REFUSED,
            code::UNSUPPORTED,
            code::DUMP,
            code::RESTORE,
            code::IMAGE,
            code::ENVIRONMENT,
            code::DAEMON,
            code::BUSY,
            code::INVALID,
            code::VERSION,
            -2,
        ] {
            let e = Error::from_failure(c, "why".into());
            assert_eq!(e.code(), c, "{e}");
        }
        let e = Error::from_failure(-77_777, "odd".into());
        assert_eq!(e.code(), code::DAEMON);
        assert!(e.to_string().contains("-77777"));
        let e = Error::from_failure(
            code::VERSION,
            protocol::version_mismatch_text(protocol::VERSION, "9.9.9"),
        );
        let text = e.to_string();
        assert!(
            text.contains(protocol::VERSION) && text.contains("9.9.9"),
            "{text}"
        );
    }
}
