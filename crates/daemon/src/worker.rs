//! One worker process per connection: handshake, one request, the dump or restore, the
//! answer. It runs in a forked child of the daemon, so a crash here never takes the daemon
//! down, and a worker stuck on one client never delays another.

use crate::policy::{self, Caller};
use stasis_client::code;
use stasis_client::protocol::{self, Message, TransportError};
use stasis_engine::restore::as_user;
use stasis_engine::{
    DumpOptions, Error as EngineError, ErrorClass, ImageDir, ImageKey, RestoreOptions,
    ServiceConnection,
};
use stasis_sys::{process, socket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::Duration;

/// How long a client may take to send each message of the handshake and its request (and to
/// take each answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`wait_for_exit`] wakes up while nothing happens.
const WAIT_TICK_MS: i32 = 1000;

/// The worker's slot: counted against `--max-workers` and `--max-workers-per-uid` until it is
/// dropped (or the worker ends). It is the write end of a pipe whose read end the daemon polls;
/// nothing is ever written to it.
#[derive(Debug)]
pub struct Slot(OwnedFd);

impl Slot {
    pub fn new(fd: OwnedFd) -> Slot {
        Slot(fd)
    }

    /// Gives the slot back: the daemon may serve another request in its place.
    pub fn give_back(self) {
        drop(self.0);
    }
}

/// A request refused or failed, with the code the client library maps to its error.
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Failure {
        let code = match (&e, e.class()) {
            (EngineError::NoSuchProcess { .. }, _) => code::INVALID,
            (_, ErrorClass::Unsupported) => code::UNSUPPORTED,
            (_, ErrorClass::Refused) => code::REFUSED,
            (_, ErrorClass::Environment) => code::ENVIRONMENT,
            _ => code::DUMP,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Failure {
        Failure::new(code::PROTOCOL, e.to_string())
    }
}

/// Serves one connection, request number `request` of the daemon; returns the process exit
/// code for the worker. Dumps are authenticated with `key`; restores for anyone but root
/// must authenticate with it. Everything it logs is inside a span `request{id, caller_pid,
/// caller_uid}` (the caller's fields once the kernel told who it is).
pub fn serve(conn: OwnedFd, request: u64, slot: Slot, key: &ImageKey) -> i32 {
    let span = tracing::info_span!(
        "request",
        id = request,
        caller_pid = tracing::field::Empty,
        caller_uid = tracing::field::Empty
    );
    let _entered = span.enter();
    match handle(conn.as_fd(), slot, key) {
        Ok(()) => 0,
        Err(f) => {
            tracing::error!("{}", f.message);
            let text: String = f
                .message
                .chars()
                .take(protocol::MAX_FAILURE_TEXT / 4)
                .collect();
            let _ = protocol::send(
                conn.as_fd(),
                &Message::Failure {
                    code: f.code,
                    message: text,
                },
                None,
            );
            1
        }
    }
}

fn handle(conn: BorrowedFd<'_>, slot: Slot, key: &ImageKey) -> Result<(), Failure> {
    process::set_socket_timeouts(conn, REQUEST_TIMEOUT)
        .map_err(|e| Failure::new(code::DAEMON, format!("socket timeouts: {e}")))?;
    // Identity from the kernel: the pidfd pins the very process that connected.
    let cred = socket::peer_cred(conn)
        .map_err(|e| Failure::new(code::DAEMON, format!("SO_PEERCRED: {e}")))?;
    let pidfd = socket::peer_pidfd(conn)
        .map_err(|e| Failure::new(code::DAEMON, format!("SO_PEERPIDFD: {e}")))?;
    let pid =
        pid_of_pidfd(&pidfd).ok_or_else(|| Failure::new(code::DAEMON, "the caller has exited"))?;
    if pid != cred.pid {
        return Err(Failure::new(
            code::DAEMON,
            "the caller's pidfd and SO_PEERCRED disagree",
        ));
    }
    tracing::Span::current()
        .record("caller_pid", pid)
        .record("caller_uid", cred.uid);
    let caller = policy::caller_from_pid(pid, cred.uid, cred.gid)
        .map_err(|m| Failure::new(code::REFUSED, m))?;

    match protocol::recv(conn)? {
        (Message::Hello { version }, _) if version == protocol::VERSION => {}
        (Message::Hello { version }, _) => {
            return Err(Failure::new(
                code::VERSION,
                protocol::version_mismatch_text(&version, protocol::VERSION),
            ));
        }
        (other, _) => {
            return Err(Failure::new(
                code::PROTOCOL,
                format!("expected Hello, got {}", other.name()),
            ))
        }
    }
    protocol::send(
        conn,
        &Message::Welcome {
            version: protocol::VERSION.to_string(),
        },
        None,
    )?;

    let (request, fds) = protocol::recv_fds(conn)?;
    let mut fds = fds.into_iter();
    let dir = fds
        .next()
        .ok_or_else(|| Failure::new(code::PROTOCOL, "no images directory was passed"))?;
    // The requester's terminal, after the directory (a Restore with RESTORE_TERMINAL only:
    // recv_fds checked the count).
    let terminal = fds.next();
    let images = ImageDir::from_fd(dir, "the images directory passed by the client")
        .map_err(|e| Failure::new(code::INVALID, e.to_string()))?;
    let name = request.name();
    tracing::info!("{} from pid {} uid {}", name, caller.pid, caller.uid);
    match request {
        Message::DumpSelf { flags, conn_fd } => {
            dump_self(conn, &caller, pidfd, images, flags, conn_fd, key)
        }
        Message::DumpPid { pid, flags } => dump_pid(conn, &caller, pid, images, flags, key),
        Message::Restore { flags } => {
            restore(conn, &caller, pidfd, images, terminal, flags, slot, key)
        }
        other => Err(Failure::new(
            code::PROTOCOL,
            format!("{} is not a request", other.name()),
        )),
    }?;
    tracing::info!("{name} done");
    Ok(())
}

/// The pid a pidfd refers to, from /proc/self/fdinfo (None once the process has exited).
fn pid_of_pidfd(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid > 0).then_some(pid)
}

/// From here on, files are created and opened with the caller's permissions (and so are
/// owned by the caller).
fn act_as(caller: &Caller) -> Result<(), Failure> {
    process::set_fs_identity(caller.uid, caller.gid, &caller.groups).map_err(|e| {
        Failure::new(
            code::DAEMON,
            format!("taking the caller's file identity: {e}"),
        )
    })
}

/// Checks that fd `conn_fd` of the caller is its end of this very connection.
fn check_connection_fd(
    conn: BorrowedFd<'_>,
    caller_pid: stasis_sys::Pid,
    pidfd: &OwnedFd,
    conn_fd: i32,
) -> Result<(), Failure> {
    let refuse = |m: String| Failure::new(code::REFUSED, m);
    let theirs = process::pidfd_getfd(pidfd.as_fd(), conn_fd)
        .map_err(|e| refuse(format!("fd {conn_fd} of the caller: {e}")))?;
    let theirs_md = std::fs::File::from(theirs)
        .metadata()
        .map_err(|e| refuse(e.to_string()))?;
    let ours = std::fs::File::from(
        conn.try_clone_to_owned()
            .map_err(|e| refuse(e.to_string()))?,
    );
    let our_ino = ours.metadata().map_err(|e| refuse(e.to_string()))?.ino();
    // Our end of the connection belongs to the network namespace of the caller, which may not
    // be ours: sock_diag looks there.
    let netns = socket::network_namespace_of(conn).map_err(|e| {
        Failure::new(
            code::DAEMON,
            format!("the network namespace of the connection (SIOCGSKNS): {e}"),
        )
    })?;
    let peer = stasis_sys::sock_diag::unix_peer_inode_in(netns.as_fd(), our_ino).map_err(|e| {
        Failure::new(
            code::DAEMON,
            format!(
                "sock_diag in the caller's network namespace ({}): {e}",
                policy::namespace_of(caller_pid, "net").unwrap_or_else(|e| e)
            ),
        )
    })?;
    if !theirs_md.file_type().is_socket() || peer != Some(theirs_md.ino()) {
        return Err(refuse(format!(
            "fd {conn_fd} of the caller is not its connection to stasisd"
        )));
    }
    Ok(())
}

fn dump_self(
    conn: BorrowedFd<'_>,
    caller: &Caller,
    pidfd: OwnedFd,
    images: ImageDir,
    flags: u32,
    conn_fd: i32,
    key: &ImageKey,
) -> Result<(), Failure> {
    let with_children = flags & protocol::DUMP_WITH_CHILDREN != 0;
    policy::check_may_dump_tree(caller, caller.pid, "the caller", with_children)
        .map_err(|m| Failure::new(code::REFUSED, m))?;
    check_connection_fd(conn, caller.pid, &pidfd, conn_fd)?;
    act_as(caller)?;
    let restored_reply = protocol::encode(&Message::Done {
        outcome: protocol::OUTCOME_RESTORED,
    })
    .map_err(|e| Failure::new(code::DAEMON, e.to_string()))?;
    let kill = flags & protocol::DUMP_KILL != 0;
    stasis_engine::dump(DumpOptions {
        pid: caller.pid,
        pidfd: Some(pidfd),
        images,
        leave_running: !kill,
        tree: with_children,
        admit: Some(admit_for(caller)),
        service: Some(ServiceConnection {
            fd: conn_fd,
            restored_reply,
        }),
        tcp: tcp_for(caller),
        auth: Some(key.clone()),
        unix_peers_closed: false,
        pre_copy: true,
        // Incremental dumps are not offered through stasisd yet.
        parent: None,
        compress: None,
    })?;
    if !kill {
        send_dumped(conn)?;
    }
    Ok(())
}

/// Tells the client its dump is complete (the original process's `dump_self` returns 0).
fn send_dumped(conn: BorrowedFd<'_>) -> Result<(), Failure> {
    let done = Message::Done {
        outcome: protocol::OUTCOME_DUMPED,
    };
    Ok(protocol::send(conn, &done, None)?)
}

/// Established TCP connections: kept for root; refused for anyone else, whose restore runs
/// without CAP_NET_ADMIN and could not put them back (TCP_REPAIR needs it).
fn tcp_for(caller: &Caller) -> stasis_engine::TcpConnections {
    if caller.is_root() {
        stasis_engine::TcpConnections::Repair
    } else {
        stasis_engine::TcpConnections::RefuseForUser(caller.uid)
    }
}

/// The check the engine repeats for every process once the tree is frozen (a descendant
/// could have changed between the first check and the freeze).
fn admit_for(caller: &Caller) -> Box<dyn Fn(i32) -> Result<(), String>> {
    let caller = caller.clone();
    Box::new(move |pid| policy::check_may_dump(&caller, pid, "a process of the dumped tree"))
}

fn dump_pid(
    conn: BorrowedFd<'_>,
    caller: &Caller,
    pid: i32,
    images: ImageDir,
    flags: u32,
    key: &ImageKey,
) -> Result<(), Failure> {
    if pid <= 0 {
        return Err(Failure::new(code::INVALID, format!("{pid} is not a pid")));
    }
    // Pin the target before checking it, so the checks and the dump see one process.
    let pidfd = process::pidfd_open(pid)
        .map_err(|_| Failure::new(code::INVALID, format!("pid {pid} does not exist")))?;
    policy::check_may_dump_tree(caller, pid, "the process", true)
        .map_err(|m| Failure::new(code::REFUSED, m))?;
    act_as(caller)?;
    stasis_engine::dump(DumpOptions {
        pid,
        pidfd: Some(pidfd),
        images,
        leave_running: flags & protocol::DUMP_KILL == 0,
        service: None,
        tree: true,
        admit: Some(admit_for(caller)),
        tcp: tcp_for(caller),
        auth: Some(key.clone()),
        unix_peers_closed: false,
        pre_copy: true,
        parent: None,
        compress: None,
    })?;
    send_dumped(conn)
}

/// Restores the images for the caller. Root's restore runs here, as before; anyone else's
/// runs in a restorer process that becomes the caller first (`as_user::restore_as`: its
/// namespaces, cgroups, limits, ids and capabilities; see docs/security.md). Either way the
/// restored process is a child of this worker, which waits for it unless detached.
///
/// `terminal`: the caller's terminal, passed as a descriptor (`RESTORE_TERMINAL`), for a job
/// that ran on a terminal outside its tree. The worker does nothing with it but hand it to
/// the restore (the restorer, which is the caller by then, makes it the controlling terminal
/// of the job's new session: the kernel checks that as the caller); it never opens a terminal
/// by path.
#[allow(clippy::too_many_arguments)]
fn restore(
    conn: BorrowedFd<'_>,
    caller: &Caller,
    pidfd: OwnedFd,
    images: ImageDir,
    terminal: Option<OwnedFd>,
    flags: u32,
    slot: Slot,
    key: &ImageKey,
) -> Result<(), Failure> {
    let opts = RestoreOptions {
        images,
        requester: None,
        new_session: true,
        // The images are the requester's to change: a user gets back only what stasisd (or
        // root) wrote, unchanged. Root's own images are checked when they carry auth.img. The
        // key goes to the restorer in memory (it cannot read the key file once it is the
        // requester); the restorer and its children keep CAP_CHECKPOINT_RESTORE until their
        // memory is replaced, so the requester cannot read it from them.
        auth: Some(key.clone()),
        require_authenticated: !caller.is_root(),
        root_as_sibling: false,
        // The root's parent here is this worker, which exits once a detached restore is
        // answered: a dumped parent-death signal would kill it at once.
        root_pdeathsig: false,
        // A file replaced since the dump is always refused here.
        replaced_files: stasis_engine::ReplacedFiles::Refuse,
        // A job on a terminal is attached to the terminal the caller passed, if any (never
        // one opened here); refused without one.
        terminal,
        lazy: false,
    };
    let restored = if caller.is_root() {
        stasis_engine::restore(&opts)
    } else {
        as_user::RequesterIdentity::of_process(caller.pid, pidfd.as_fd(), caller.uid, caller.gid)
            .and_then(|who| as_user::restore_as(&who, pidfd.as_fd(), opts))
    }
    .map_err(|e| {
        let code = match e.class() {
            ErrorClass::Refused => code::REFUSED,
            ErrorClass::Unsupported => code::UNSUPPORTED,
            ErrorClass::Image => code::IMAGE,
            ErrorClass::Environment => code::ENVIRONMENT,
            ErrorClass::Internal => code::RESTORE,
        };
        Failure::new(code, e.to_string())
    })?;
    protocol::send(conn, &Message::Started { pid: restored.pid }, None)?;
    if flags & protocol::RESTORE_DETACH != 0 {
        return Ok(());
    }
    wait_for_exit(conn, restored.pid, slot)
}

/// The end of a non-detached restore: reports the exit status of the restored root `pid` (a
/// child of this worker) to the client. The slot is given back first: merely waiting holds
/// none. Waits only while the client is there: when it hangs up (or sends anything), the
/// worker ends and the restored process runs on, reparented.
fn wait_for_exit(conn: BorrowedFd<'_>, pid: stasis_sys::Pid, slot: Slot) -> Result<(), Failure> {
    // Our child, not reaped: the pid cannot be reused before we wait for it.
    let pidfd = process::pidfd_open(pid)
        .map_err(|e| Failure::new(code::DAEMON, format!("pidfd_open({pid}): {e}")))?;
    slot.give_back();
    tracing::debug!("waiting for pid {pid} to exit");
    loop {
        let ready = process::poll_readable(&[conn, pidfd.as_fd()], WAIT_TICK_MS)
            .map_err(|e| Failure::new(code::DAEMON, format!("poll: {e}")))?;
        if ready[1] {
            let status = match stasis_sys::ptrace::waitpid_nohang(pid) {
                Ok(Some(stasis_sys::ptrace::WaitStatus::Exited(c))) => c,
                Ok(Some(stasis_sys::ptrace::WaitStatus::Signaled(s))) => 128 + s,
                Ok(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => {
                    return Err(Failure::new(code::DAEMON, format!("waitpid({pid}): {e}")));
                }
            };
            tracing::info!("pid {pid} exited with status {status}");
            // The client may be gone by now; that is not an error of the restore.
            let _ = protocol::send(conn, &Message::Exited { status }, None);
            return Ok(());
        }
        if ready[0] {
            tracing::info!(
                "the client hung up (or sent something) while waiting for pid {pid}: it runs on"
            );
            return Ok(());
        }
    }
}
