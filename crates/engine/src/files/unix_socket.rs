//! Unix sockets (stream, datagram, seqpacket): connections, names, listeners with the
//! connections waiting in their backlog, shutdown state, common options and the data queued.
//!
//! Dump: each socket is one description ([`FileKind::UnixSocket`], linked to the others by its
//! inode). sock_diag tells its state, name, peer, the clients of a listener's pending
//! connections, queue lengths and shutdown bits; SO_PASSCRED, SO_RCVBUF, SO_SNDBUF and
//! SO_PEEK_OFF are read from our duplicate. Once every process is dumped
//! ([`FileOps::finish`]) every socket's peer must be in the tree, and the messages waiting to be
//! read are copied without being consumed (MSG_PEEK from successive SO_PEEK_OFF offsets, the
//! socket's own offset put back: a process left running finds its data unchanged), with the
//! first description of the socket only. The files in flight with them (SCM_RIGHTS) arrive in
//! the dumper with the peek: they are described like fds of the process
//! ([`FileOps::files_in_flight`]), as descriptions without fd of its record (the same
//! description as an fd of the tree, a socket in flight in its own queue for one, is that fd's);
//! only the kinds that name fds or processes of their holder (epoll, pidfd) are refused in
//! flight. Refused, by fd: a connection to a socket outside the
//! dumped tree (unless [`DumpFileOptions::unix_peers_closed`]: then it comes back connected to a
//! peer that closed), a connection waiting to be accepted whose client sent data (that data
//! cannot be read without accepting it) or was closed, a datagram socket connected to an
//! unnamed socket that is not connected back, a message carrying more descriptors than one may, a
//! zero-length datagram in a queue (peeking cannot step over it; on a socket whose receive
//! direction is shut down it cannot be told from end-of-file, and ends the dumped queue), and
//! a path-bound socket whose file was replaced by another file.
//!
//! Names: a relative path is made absolute with the process's cwd at dump time (it was bound
//! relative to the cwd of that time, which stasis cannot know), and bound at restore from that
//! directory with its relative name (from a thread with a cwd of its own), so getsockname shows
//! the same name. The socket file must still
//! be the socket's (same inode), or be gone (deleted since the bind: restored bound and then
//! unlinked again, so nobody can connect, as before). A connection accepted from a listener of
//! the tree is made again by connecting to the listener and accepting (the accepted socket
//! shows the listener's name, and its peer's getpeername too); other connected stream and
//! seqpacket sockets (a listener closed since, a client that bound a name of its own) do not
//! get their name back: getsockname on them shows an unnamed socket after restore.
//!
//! Restore ([`FileOps::prepare`], once for the whole tree, before any description is opened):
//! one socketpair per connection in the tree (and per mutually connected pair of datagram
//! sockets), one socket for everything else; options (buffer sizes first, so the queues fit);
//! names bound (a socket file left at the path, from the original process, is replaced, unless
//! a live socket is bound to it (the original, still running, keeps it); any other file there
//! fails the restore) with the dumped mode and, when root restores, owner;
//! listen; the pending clients connect to their listener, oldest first; the queues are refilled
//! by sending from the peer end, or from a temporary socket: a socket whose peer was closed is
//! made as one end of a socketpair whose other end sends its data and is closed (a stream
//! then reads its data, then end-of-file; a datagram socket stays connected to a closed peer, as
//! it was: its next send fails with ECONNREFUSED); a named datagram socket gets its datagrams
//! from the named socket of the tree that sent each (recvfrom tells the same sender), or else
//! from an unnamed socket (the sender's address is lost); the kernel's limit of datagrams
//! queued from unconnected senders, net.unix.max_dgram_qlen, applies. Then datagram
//! sockets connect to their peers, SO_PEEK_OFF and the shutdown bits are set, the temporary ends
//! closed, and names whose file was deleted unlinked again. A message that carried credentials
//! (SCM_CREDENTIALS, seen at dump when the socket has SO_PASSCRED) is sent again with them; as
//! their pid must exist, the queues of a tree with such messages are refilled (and everything
//! after) only once every process of the tree exists, before any runs
//! ([`FileOps::when_tree_exists`]); the pid of a sender that is gone by then, or that the
//! restorer may not claim (without CAP_SYS_ADMIN), is the restorer's (and so are the uid and
//! gid it may not claim).
//! What the restored sockets do not keep: SO_PEERCRED (the restorer made them) and a pending
//! ECONNRESET error (reading it with SO_ERROR at dump would clear it).

use super::{Class, DumpFileOptions, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{
    FileDesc, FileKind, ProcessImage, SocketFile, UnixCred, UnixMessage, UnixSocketName,
};
use stasis_sys::sock_diag::{self, UnixDiag, UNIX_ESTABLISHED, UNIX_LISTEN};
use stasis_sys::socket::{get_option, set_option};
use stasis_sys::unix_socket::{self as usock, UnixName};
use stasis_sys::Pid;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Most bytes a record may queue for one socket.
pub const MAX_QUEUE_BYTES: usize = 16 << 20;
/// Most messages a record may queue for one socket.
pub const MAX_QUEUE_MESSAGES: usize = 1 << 16;
/// Most pending connections a listener record may have.
const MAX_PENDING: usize = 1 << 16;
/// Longest name (`sun_path` holds 108 bytes with the NUL).
const MAX_NAME: usize = 107;

/// The unix socket kind: sockets seen at dump, sockets made at restore.
#[derive(Default)]
pub struct UnixSockets {
    opts: DumpFileOptions,
    /// Dump: every socket of the tree, in the order seen.
    seen: Vec<Seen>,
    /// Restore: inode -> the socket made for it, until its description is opened.
    made: HashMap<u64, OwnedFd>,
    /// Restore: the queues to refill once the tree's processes exist (their messages carry
    /// credentials or files).
    later: Option<Finish>,
    /// Dump: the files in flight found so far.
    flight: Vec<Flight>,
}

struct Seen {
    pid: Pid,
    fd: RawFd,
    id: u32,
    ty: i32,
    diag: UnixDiag,
    /// The messages waiting to be read, each with the slots of its files in flight in
    /// [`UnixSockets::flight`] (their ids are filled in by [`FileOps::finish`]) and the name of
    /// its sender (a datagram from a named socket).
    queue: Vec<Peeked>,
}

/// A message read at dump: the record (its files and sender filled in by [`FileOps::finish`]),
/// the slots of its files in flight, and its sender's name as recvmsg gives it.
type Peeked = (UnixMessage, Vec<usize>, Option<Vec<u8>>);

/// A file in flight: the dumper's duplicate (kept open for the whole dump: kcmp finds the
/// descriptions seen later that are the same), and its description id once dumped.
struct Flight {
    fd: OwnedFd,
    id: Option<u32>,
    /// The socket it is in flight in: "fd N of pid P".
    at: String,
}

fn type_name(ty: i32) -> &'static str {
    match ty {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unknown",
    }
}

impl Seen {
    /// "fd 4 of pid 12 is a unix stream socket (socket:[345])".
    fn refuse(&self, what: &str) -> Error {
        Error::Unsupported {
            what: format!(
                "fd {} of pid {} is a unix {} socket (socket:[{}]) {what}",
                self.fd,
                self.pid,
                type_name(self.ty),
                self.diag.ino
            ),
        }
    }
}

impl UnixSockets {
    /// Reads the messages waiting on socket `fd` without consuming them; the files in flight
    /// with them are kept in [`UnixSockets::flight`].
    fn peek(&mut self, fd: &Probe<'_>, ty: i32, diag: &UnixDiag) -> Result<Vec<Peeked>, Error> {
        // Only a datagram socket or a connection has a queue (recv on an unconnected stream
        // socket fails).
        if ty != libc::SOCK_DGRAM && diag.state != UNIX_ESTABLISHED {
            return Ok(Vec::new());
        }
        let q = usock::peek_queue(fd.file()?.as_fd(), ty, MAX_QUEUE_BYTES).map_err(|e| {
            Error::io(
                format!(
                    "reading the queue of fd {} of pid {} (MSG_PEEK)",
                    fd.fd, fd.pid
                ),
                e,
            )
        })?;
        if q.fds_truncated {
            return Err(fd.unsupported(
                "a unix socket with a queued message carrying more file descriptors than one message can",
            ));
        }
        // Without RCV_SHUTDOWN, a read of 0 bytes is a zero-length message.
        if q.zero_read && diag.shutdown & 1 == 0 {
            return Err(fd.unsupported(
                "a unix socket with a zero-length datagram queued, which stasis cannot read without consuming it",
            ));
        }
        if q.messages.len() > MAX_QUEUE_MESSAGES {
            return Err(fd.unsupported(&format!(
                "a unix socket with more than {MAX_QUEUE_MESSAGES} messages queued"
            )));
        }
        let mut out = Vec::with_capacity(q.messages.len());
        for m in q.messages {
            let mut slots = Vec::with_capacity(m.fds.len());
            for f in m.fds {
                slots.push(self.flight.len());
                self.flight.push(Flight {
                    fd: f,
                    id: None,
                    at: format!("fd {} of pid {}", fd.fd, fd.pid),
                });
            }
            let msg = UnixMessage {
                data: m.data,
                cred: m.cred.map(|c| UnixCred {
                    pid: c.pid,
                    uid: c.uid,
                    gid: c.gid,
                }),
                files: Vec::new(),
                from: 0,
            };
            out.push((msg, slots, m.from));
        }
        Ok(out)
    }
}

impl FileOps for UnixSockets {
    fn name(&self) -> &'static str {
        "unix socket"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::UnixSocket { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::Socket && fd.socket.is_some_and(|k| k.domain == libc::AF_UNIX)
    }

    fn configure(&mut self, opts: &DumpFileOptions) {
        self.opts = *opts;
    }

    /// Records the socket's own state; its peer, pending connections and queue are settled
    /// by [`FileOps::finish`].
    fn dump(
        &mut self,
        fd: &Probe<'_>,
        id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let file = fd.file()?;
        let ino = fd.metadata()?.ino();
        let ty = fd.socket.map(|k| k.ty).unwrap_or(0);
        if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
            return Err(fd.unsupported("a unix socket of a type stasis cannot dump"));
        }
        // Its names and peers belong to its network namespace: only ours is restored into.
        if let Ok(ns) = stasis_sys::socket::network_namespace_of(file.as_fd()) {
            let ours = std::fs::metadata("/proc/self/ns/net")
                .map_err(|e| Error::io("stat /proc/self/ns/net", e))?;
            let theirs = File::from(ns)
                .metadata()
                .map_err(|e| Error::io("fstat a network namespace", e))?;
            if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
                return Err(fd.unsupported(
                    "a unix socket of another network namespace than stasis's, which stasis cannot dump yet",
                ));
            }
        }
        let diag = sock_diag::unix_diag(ino).map_err(|e| {
            Error::io(
                format!(
                    "sock_diag of fd {} of pid {} (socket:[{ino}])",
                    fd.fd, fd.pid
                ),
                e,
            )
        })?;
        let opt = |name: libc::c_int, what: &str| {
            get_option::<i32>(file.as_fd(), libc::SOL_SOCKET, name)
                .map_err(|e| Error::io(format!("{what} of fd {} of pid {}", fd.fd, fd.pid), e))
        };
        let listening = diag.state == UNIX_LISTEN;
        // A connected stream or seqpacket socket keeps no name of its own (see the module's
        // documentation).
        let connected = diag.state == UNIX_ESTABLISHED && ty != libc::SOCK_DGRAM;
        let name = match &diag.name {
            Some(raw) if !connected => Some(dumped_name(fd, raw, diag.vfs)?),
            _ => None,
        };
        let kind = FileKind::UnixSocket {
            ino,
            ty: ty as u32,
            name,
            listen: listening.then(|| diag.rqlen.map(|r| r.1).unwrap_or(0)),
            pending: Vec::new(),
            peer: 0,
            peer_closed: false,
            accepted_from: 0,
            shutdown: diag.shutdown & 3,
            passcred: opt(libc::SO_PASSCRED, "SO_PASSCRED")? != 0,
            rcvbuf: opt(libc::SO_RCVBUF, "SO_RCVBUF")? as u32,
            sndbuf: opt(libc::SO_SNDBUF, "SO_SNDBUF")? as u32,
            peek_off: opt(libc::SO_PEEK_OFF, "SO_PEEK_OFF")?,
            queue: Vec::new(),
        };
        let queue = self.peek(fd, ty, &diag)?;
        self.seen.push(Seen {
            pid: fd.pid,
            fd: fd.fd,
            id,
            ty,
            diag,
            queue,
        });
        Ok(kind)
    }

    fn files_in_flight(&self) -> Vec<(usize, RawFd, String)> {
        use std::os::fd::AsRawFd;
        self.flight
            .iter()
            .enumerate()
            .filter(|(_, f)| f.id.is_none())
            .map(|(i, f)| (i, f.fd.as_raw_fd(), f.at.clone()))
            .collect()
    }

    fn in_flight_dumped(&mut self, slot: usize, id: u32) {
        if let Some(f) = self.flight.get_mut(slot) {
            f.id = Some(id);
        }
    }

    /// Settles each socket's peer and pending connections against the whole tree (refusing
    /// what leads outside), and stores the queues.
    fn finish(&mut self, descs: &mut [&mut FileDesc]) -> Result<(), Error> {
        let inos: HashMap<u64, usize> = self
            .seen
            .iter()
            .enumerate()
            .map(|(i, s)| (s.diag.ino, i))
            .collect();
        // Clients of the pending connections of the tree's listeners.
        let pending_clients: HashSet<u64> = self
            .seen
            .iter()
            .filter(|s| s.diag.state == UNIX_LISTEN)
            .flat_map(|s| s.diag.icons.iter().copied())
            .filter(|&c| c != 0)
            .collect();
        let pids: Vec<Pid> = self.seen.iter().map(|s| s.pid).collect();
        let closed_ok = self.opts.unix_peers_closed;
        for s in &self.seen {
            let mut peer = 0;
            let mut peer_closed = false;
            let mut pending = Vec::new();
            match s.diag.peer {
                None => {}
                Some(p) if p != 0 && inos.contains_key(&p) => peer = p,
                Some(p) if p != 0 => {
                    if !closed_ok {
                        return Err(s.refuse(&outside(p, &pids)));
                    }
                    peer_closed = true;
                }
                Some(_) if s.ty == libc::SOCK_DGRAM => peer_closed = true,
                Some(_) if pending_clients.contains(&s.diag.ino) => {
                    let sent = s.diag.rqlen.map(|r| r.1).unwrap_or(0);
                    if sent != 0 {
                        return Err(s.refuse(&format!("has a connection waiting to be accepted with data it sent ({sent} bytes of buffer), which cannot be read without accepting it")));
                    }
                }
                // The kernel marks both directions shut down when the peer closes.
                Some(_) if s.diag.shutdown & 3 == 3 => peer_closed = true,
                Some(_) => {
                    if !closed_ok {
                        return Err(s.refuse("is connected to a listener outside the dumped processes that has not accepted the connection yet (--unix-peers-closed restores it as a connection whose peer closed)"));
                    }
                    peer_closed = true;
                }
            }
            if s.diag.state == UNIX_LISTEN {
                for &c in &s.diag.icons {
                    if c == 0 {
                        return Err(s.refuse("has a connection waiting to be accepted whose client was closed: the data it may have sent cannot be read without accepting it"));
                    }
                    if inos.contains_key(&c) {
                        pending.push(c);
                        continue;
                    }
                    let sent = sock_diag::unix_diag(c)
                        .ok()
                        .and_then(|d| d.rqlen)
                        .map(|r| r.1)
                        .unwrap_or(0);
                    if !closed_ok || sent != 0 {
                        return Err(s.refuse(&format!(
                            "has a connection waiting to be accepted from {}{}",
                            outside(c, &pids)
                                .trim_start_matches("is connected to ")
                                .trim_end_matches(" (--unix-peers-closed restores it as a connection whose peer closed)"),
                            if sent != 0 {
                                ", which sent data that cannot be read without accepting it"
                            } else {
                                " (--unix-peers-closed restores it as a connection whose client closed)"
                            }
                        )));
                    }
                    pending.push(0);
                }
            }
            if s.ty == libc::SOCK_DGRAM && peer != 0 {
                let p = &self.seen[inos[&peer]];
                if p.diag.peer != Some(s.diag.ino) && p.diag.name.is_none() {
                    return Err(s.refuse(&format!(
                        "is connected to socket:[{peer}] (fd {} of pid {}), which has no name and is not connected back: stasis cannot connect to it again",
                        p.fd, p.pid
                    )));
                }
            }
            // Only a datagram socket or a connection has a queue (recv on an unconnected
            // stream socket fails).
            let mut queue = Vec::with_capacity(s.queue.len());
            for (m, slots, from) in &s.queue {
                let mut m = m.clone();
                // A datagram from a named socket of the tree comes from it again.
                if let Some(from) = from {
                    m.from = self
                        .seen
                        .iter()
                        .find(|o| {
                            o.ty == libc::SOCK_DGRAM
                                && o.diag.name.as_deref().map(trim_name) == Some(trim_name(from))
                        })
                        .map(|o| o.diag.ino)
                        .unwrap_or(0);
                }
                for &slot in slots {
                    let id = self.flight.get(slot).and_then(|f| f.id).ok_or_else(|| {
                        Error::Invalid(format!(
                            "a file in flight in fd {} of pid {} was not described",
                            s.fd, s.pid
                        ))
                    })?;
                    m.files.push(id);
                }
                queue.push(m);
            }
            if s.ty == libc::SOCK_DGRAM && !queue.is_empty() && peer != 0 {
                let p = &self.seen[inos[&peer]];
                let named = descs.iter().any(|d| {
                    d.id == s.id && matches!(&d.kind, FileKind::UnixSocket { name: Some(_), .. })
                });
                if p.diag.peer != Some(s.diag.ino) && !named {
                    return Err(s.refuse("has datagrams queued, no name, and a peer that is not connected back: stasis cannot queue them again"));
                }
            }
            // A connection accepted from a listener of the tree shows its name.
            let accepted_from = match &s.diag.name {
                Some(raw) if peer != 0 && s.ty != libc::SOCK_DGRAM => self
                    .seen
                    .iter()
                    .find(|l| {
                        l.diag.state == UNIX_LISTEN
                            && l.ty == s.ty
                            && l.diag.name.as_deref().map(trim_name) == Some(trim_name(raw))
                    })
                    .map(|l| l.diag.ino)
                    .unwrap_or(0),
                _ => 0,
            };
            let mut first = true;
            for d in descs.iter_mut().filter(|d| d.id == s.id) {
                if let FileKind::UnixSocket {
                    peer: dp,
                    peer_closed: dc,
                    accepted_from: da,
                    pending: dpend,
                    queue: dq,
                    ..
                } = &mut d.kind
                {
                    *dp = peer;
                    *dc = peer_closed;
                    *da = accepted_from;
                    dpend.clone_from(&pending);
                    if first {
                        dq.clone_from(&queue);
                        first = false;
                    }
                }
            }
        }
        Ok(())
    }

    fn validate(&self, desc: &FileDesc, image: &ProcessImage) -> Result<(), String> {
        let FileKind::UnixSocket {
            ty,
            name,
            listen,
            pending,
            peer,
            peer_closed,
            accepted_from,
            shutdown,
            rcvbuf,
            sndbuf,
            peek_off,
            queue,
            ..
        } = &desc.kind
        else {
            return Err("not a unix socket".into());
        };
        let ty = *ty as i32;
        if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
            return Err(format!("socket type {ty}"));
        }
        match name {
            Some(UnixSocketName::Path {
                path,
                file,
                relative,
            }) => {
                super::check_path(path)?;
                if let Some(r) = relative {
                    if r.is_empty()
                        || r.starts_with('/')
                        || r.contains('\0')
                        || !path.ends_with(&format!("/{r}"))
                    {
                        return Err(format!("relative name {r:?} of path {path:?}"));
                    }
                }
                if path.len() > MAX_NAME {
                    return Err(format!("a path name of {} bytes", path.len()));
                }
                if file.is_some_and(|f| f.mode & !0o7777 != 0) {
                    return Err("socket file mode beyond 0o7777".into());
                }
            }
            Some(UnixSocketName::Abstract(n)) if n.len() > MAX_NAME => {
                return Err(format!("an abstract name of {} bytes", n.len()));
            }
            _ => {}
        }
        if listen.is_some() {
            if ty == libc::SOCK_DGRAM {
                return Err("a listening datagram socket".into());
            }
            if *peer != 0 || *peer_closed || !queue.is_empty() {
                return Err("a listening socket with a peer or a queue".into());
            }
            if listen.is_some_and(|b| b > i32::MAX as u32) {
                return Err("backlog out of range".into());
            }
        }
        if !pending.is_empty() && (listen.is_none() || name.is_none()) {
            return Err("pending connections on a socket that does not listen on a name".into());
        }
        if pending.len() > MAX_PENDING {
            return Err(format!("{} pending connections", pending.len()));
        }
        if *peer != 0 && *peer_closed {
            return Err("a peer that is both present and closed".into());
        }
        if *accepted_from != 0 && (*peer == 0 || ty == libc::SOCK_DGRAM || listen.is_some()) {
            return Err("accepted from a listener without being connected".into());
        }
        if *shutdown > 3 {
            return Err(format!("shutdown bits {shutdown:#x}"));
        }
        if *rcvbuf > i32::MAX as u32 || *sndbuf > i32::MAX as u32 || *peek_off < -1 {
            return Err("socket option out of range".into());
        }
        let total: usize = queue.iter().map(|m| m.data.len()).sum();
        if queue.len() > MAX_QUEUE_MESSAGES || total > MAX_QUEUE_BYTES {
            return Err(format!(
                "{} messages, {total} bytes queued (at most {MAX_QUEUE_MESSAGES}, {MAX_QUEUE_BYTES})",
                queue.len()
            ));
        }
        if queue.iter().any(|m| m.data.is_empty()) {
            return Err("an empty message queued".into());
        }
        if queue.iter().any(|m| m.cred.is_some_and(|c| c.pid <= 0)) {
            return Err("a message with the credentials of pid 0 or below".into());
        }
        for m in queue {
            if m.files.len() > usock::MAX_FDS {
                return Err(format!("{} files in flight in one message", m.files.len()));
            }
            if let Some(id) = m
                .files
                .iter()
                .find(|&&id| !image.files.iter().any(|f| f.id == id))
            {
                return Err(format!("a file in flight that is no description ({id})"));
            }
        }
        Ok(())
    }

    /// The queue is stored with one copy of the description only.
    fn merge(&self, tree: &mut FileDesc, copy: &FileDesc) {
        if let (FileKind::UnixSocket { queue: t, .. }, FileKind::UnixSocket { queue: c, .. }) =
            (&mut tree.kind, &copy.kind)
        {
            if t.is_empty() {
                t.clone_from(c);
            }
        }
    }

    fn prepare(&mut self, descs: &[FileDesc]) -> Result<(), Error> {
        let socks: Vec<Sock<'_>> = descs.iter().filter_map(Sock::of).collect();
        if socks.is_empty() {
            return Ok(());
        }
        let mine = descs
            .iter()
            .filter(|d| self.owns(&d.kind))
            .cloned()
            .collect();
        let (made, finish) = make_all(&socks, mine)?;
        self.made = made;
        if finish.needs_tree() {
            self.later = Some(finish);
        } else {
            finish.finish(None)?;
        }
        Ok(())
    }

    fn when_tree_exists(&mut self) -> Option<Box<dyn super::WhenTreeExists>> {
        self.later
            .take()
            .map(|f| Box::new(f) as Box<dyn super::WhenTreeExists>)
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::UnixSocket { ino, .. } = &desc.kind else {
            return Err(Error::Invalid(format!(
                "description {} is not a unix socket",
                desc.id
            )));
        };
        self.made.remove(ino).ok_or_else(|| {
            Error::Invalid(format!(
                "description {} is a unix socket (socket:[{ino}]) another description already is",
                desc.id
            ))
        })
    }
}

/// The name of a socket as the record keeps it: an abstract name, or an absolute path with
/// its socket file's mode and owner (none when the file was deleted).
fn dumped_name(
    fd: &Probe<'_>,
    raw: &[u8],
    vfs: Option<(u32, u64)>,
) -> Result<UnixSocketName, Error> {
    if let Some(abstract_name) = raw.strip_prefix(&[0]) {
        return Ok(UnixSocketName::Abstract(abstract_name.to_vec()));
    }
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let Ok(name) = std::str::from_utf8(&raw[..end]) else {
        return Err(fd.unsupported("a unix socket bound to a path that is not UTF-8"));
    };
    let relative = !name.starts_with('/');
    let path = if relative {
        let cwd = crate::procfs::link(fd.pid, "cwd")?;
        Path::new(&cwd).join(name)
    } else {
        PathBuf::from(name)
    };
    let path_str = path.to_string_lossy().into_owned();
    if path_str.len() > MAX_NAME {
        return Err(fd.unsupported(&format!(
            "a unix socket bound to {name:?}, which is {path_str:?} from the process's cwd: longer than a socket name may be"
        )));
    }
    let file = match std::fs::symlink_metadata(&path) {
        Ok(md) => {
            let ours = vfs.is_some_and(|(kdev, ino)| {
                md.ino() == ino && md.dev() == libc::makedev(kdev >> 20, kdev & 0xfffff)
            });
            if !(md.file_type().is_socket() && ours) {
                return Err(fd.unsupported(&format!(
                    "a unix socket bound to {path_str}, which now names another file (the socket's file was replaced): stasis cannot restore the name"
                )));
            }
            Some(SocketFile {
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("lstat {path_str}"), e)),
    };
    // The relative name must be the end of the absolute path ("./x" or "a/../x" are not).
    let relative = (relative && path_str.ends_with(&format!("/{name}"))).then(|| name.to_string());
    Ok(UnixSocketName::Path {
        path: path_str,
        file,
        relative,
    })
}

/// A name as sock_diag or recvmsg give it, without the NUL bytes that may end a path.
fn trim_name(raw: &[u8]) -> &[u8] {
    if raw.first() == Some(&0) {
        return raw;
    }
    let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &raw[..end]
}

/// Why a connection to socket `peer`, outside the tree (`tree`: its processes), is refused,
/// naming the peer and, when /proc shows it, the process holding it.
fn outside(peer: u64, tree: &[Pid]) -> String {
    let name = match sock_diag::unix_diag(peer).ok().and_then(|d| d.name) {
        Some(n) if n.first() == Some(&0) => {
            format!(" (@{})", String::from_utf8_lossy(&n[1..]))
        }
        Some(n) => format!(" ({})", String::from_utf8_lossy(&n).trim_end_matches('\0')),
        None => String::new(),
    };
    let link = format!("socket:[{peer}]");
    let holder = super::pipebuf::outside_holder(tree, |_, _, _, l| (l == link).then_some(()));
    let by = match holder {
        Some(h) => format!(", held by fd {} of pid {} ({})", h.fd, h.pid, h.comm),
        None => String::new(),
    };
    format!(
        "is connected to socket:[{peer}]{name} outside the dumped processes{by} (--unix-peers-closed restores it as a connection whose peer closed)"
    )
}

/// One socket of a restore, as its record says.
struct Sock<'a> {
    id: u32,
    ino: u64,
    ty: i32,
    name: Option<&'a UnixSocketName>,
    listen: Option<u32>,
    pending: &'a [u64],
    peer: u64,
    peer_closed: bool,
    accepted_from: u64,
    shutdown: u8,
    passcred: bool,
    rcvbuf: u32,
    sndbuf: u32,
    peek_off: i32,
    queue: &'a [UnixMessage],
}

impl<'a> Sock<'a> {
    fn of(d: &'a FileDesc) -> Option<Sock<'a>> {
        let FileKind::UnixSocket {
            ino,
            ty,
            name,
            listen,
            pending,
            peer,
            peer_closed,
            accepted_from,
            shutdown,
            passcred,
            rcvbuf,
            sndbuf,
            peek_off,
            queue,
        } = &d.kind
        else {
            return None;
        };
        Some(Sock {
            id: d.id,
            ino: *ino,
            ty: *ty as i32,
            name: name.as_ref(),
            listen: *listen,
            pending,
            peer: *peer,
            peer_closed: *peer_closed,
            accepted_from: *accepted_from,
            shutdown: *shutdown,
            passcred: *passcred,
            rcvbuf: *rcvbuf,
            sndbuf: *sndbuf,
            peek_off: *peek_off,
            queue,
        })
    }

    fn what(&self) -> String {
        format!(
            "unix {} socket of description {} (socket:[{}])",
            type_name(self.ty),
            self.id,
            self.ino
        )
    }
}

fn sys_name(n: &UnixSocketName) -> UnixName<'_> {
    match n {
        UnixSocketName::Path { path, .. } => UnixName::Path(Path::new(path)),
        UnixSocketName::Abstract(a) => UnixName::Abstract(a),
    }
}

fn show_name(n: &UnixSocketName) -> String {
    match n {
        UnixSocketName::Path { path, .. } => path.clone(),
        UnixSocketName::Abstract(a) => format!("@{}", String::from_utf8_lossy(a)),
    }
}

/// Makes every socket of the tree (see the module's documentation for the order of the steps)
/// up to their queues; returns them by inode, and the rest of the work ([`Finish`]).
fn make_all(
    socks: &[Sock<'_>],
    descs: Vec<FileDesc>,
) -> Result<(HashMap<u64, OwnedFd>, Finish), Error> {
    let invalid = |s: &Sock<'_>, what: &str| Error::Invalid(format!("{}: {what}", s.what()));
    let by_ino: HashMap<u64, &Sock<'_>> = socks.iter().map(|s| (s.ino, s)).collect();
    if by_ino.len() != socks.len() {
        return Err(Error::Invalid(
            "two unix socket descriptions have the same inode".into(),
        ));
    }
    // The records are untrusted: the links between them must make sense.
    let mut clients = HashSet::new();
    for s in socks {
        let mutual = s.peer != 0 && by_ino.get(&s.peer).is_some_and(|p| p.peer == s.ino);
        if s.peer != 0 {
            let Some(p) = by_ino.get(&s.peer) else {
                return Err(invalid(
                    s,
                    &format!("its peer socket:[{}] is not restored", s.peer),
                ));
            };
            if p.ty != s.ty || p.listen.is_some() {
                return Err(invalid(
                    s,
                    "its peer is not a socket it can be connected to",
                ));
            }
            if s.ty != libc::SOCK_DGRAM && !mutual {
                return Err(invalid(s, "its peer is connected elsewhere"));
            }
            if !mutual && p.name.is_none() {
                return Err(invalid(s, "its peer has no name to connect to"));
            }
        }
        if s.accepted_from != 0 {
            let l = by_ino.get(&s.accepted_from);
            if !mutual
                || by_ino[&s.peer].accepted_from != 0
                || !l.is_some_and(|l| l.listen.is_some() && l.name.is_some() && l.ty == s.ty)
            {
                return Err(invalid(
                    s,
                    "it was accepted from a socket that is no named listener, or its peer too",
                ));
            }
        }
        for &c in s.pending.iter().filter(|&&c| c != 0) {
            let Some(cs) = by_ino.get(&c) else {
                return Err(invalid(
                    s,
                    &format!("pending client socket:[{c}] is not restored"),
                ));
            };
            if cs.ty != s.ty || cs.listen.is_some() || cs.peer != 0 || cs.peer_closed {
                return Err(invalid(
                    s,
                    &format!("pending client socket:[{c}] cannot connect"),
                ));
            }
            if !clients.insert(c) {
                return Err(invalid(s, &format!("socket:[{c}] is pending twice")));
            }
        }
    }
    let mut made: HashMap<u64, OwnedFd> = HashMap::new();
    // Temporary peers: inode of the socket they serve -> the other end.
    let mut temps: HashMap<u64, OwnedFd> = HashMap::new();
    let io = |s: &Sock<'_>, what: &str, e: std::io::Error| {
        Error::io(format!("{what} for the {}", s.what()), e)
    };
    for s in socks {
        if made.contains_key(&s.ino) {
            continue;
        }
        let mutual = s.peer != 0 && by_ino[&s.peer].peer == s.ino;
        if mutual && (s.accepted_from != 0 || by_ino[&s.peer].accepted_from != 0) {
            // Made by connecting to its listener, once it listens.
            continue;
        } else if mutual {
            let (a, b) = usock::pair(s.ty).map_err(|e| io(s, "socketpair", e))?;
            made.insert(s.ino, a);
            made.insert(s.peer, b);
        } else if s.peer_closed
            || (s.ty == libc::SOCK_DGRAM && !s.queue.is_empty() && s.name.is_none())
        {
            let (a, t) = usock::pair(s.ty).map_err(|e| io(s, "socketpair", e))?;
            made.insert(s.ino, a);
            temps.insert(s.ino, t);
        } else {
            made.insert(s.ino, usock::socket(s.ty).map_err(|e| io(s, "socket", e))?);
        }
    }
    // Names, then listeners with the connections they accepted and those waiting in their
    // backlog.
    let mut unlink_after = Vec::new();
    for s in socks {
        let Some(name) = s.name else { continue };
        let fd = |ino: u64| made[&ino].as_fd();
        if let UnixSocketName::Path {
            path,
            file,
            relative,
        } = name
        {
            clear_stale(path)
                .map_err(|e| io(s, &format!("replacing the socket file at {path}"), e))?;
            match relative
                .as_deref()
                .and_then(|r| Some((path.strip_suffix(r)?, r)))
            {
                // As the process did, from its directory (getsockname shows the same name).
                Some((dir, r)) => usock::bind_relative(fd(s.ino), Path::new(dir), Path::new(r))
                    .map_err(|e| io(s, &format!("bind to {r} in {dir}"), e))?,
                None => usock::bind(fd(s.ino), &sys_name(name))
                    .map_err(|e| io(s, &format!("bind to {path}"), e))?,
            }
            match file {
                Some(f) => {
                    set_file(path, f).map_err(|e| io(s, &format!("chmod/chown {path}"), e))?
                }
                None => unlink_after.push(path.clone()),
            }
        } else {
            usock::bind(fd(s.ino), &sys_name(name))
                .map_err(|e| io(s, &format!("bind to {}", show_name(name)), e))?;
        }
    }
    let mut closed_clients = Vec::new();
    for s in socks {
        let Some(backlog) = s.listen else { continue };
        usock::listen(made[&s.ino].as_fd(), backlog as i32).map_err(|e| io(s, "listen", e))?;
        let Some(name) = s.name else { continue };
        // Its accepted connections: the client connects again, and is accepted (both ends
        // show the listener's name, as before).
        for a in socks.iter().filter(|a| a.accepted_from == s.ino) {
            let client = usock::socket(s.ty).map_err(|e| io(a, "socket", e))?;
            usock::connect(client.as_fd(), &sys_name(name))
                .map_err(|e| io(a, &format!("connect again to {}", show_name(name)), e))?;
            let server = stasis_sys::socket::accept(made[&s.ino].as_fd())
                .map_err(|e| io(a, &format!("accept on {}", show_name(name)), e))?;
            made.insert(a.ino, server);
            made.insert(a.peer, client);
        }
        let fd = |ino: u64| made[&ino].as_fd();
        for &c in s.pending {
            let connect = |cfd: BorrowedFd<'_>| {
                usock::connect(cfd, &sys_name(name)).map_err(|e| {
                    io(
                        s,
                        &format!("connect a pending client to {}", show_name(name)),
                        e,
                    )
                })
            };
            if c == 0 {
                let client = usock::socket(s.ty).map_err(|e| io(s, "socket", e))?;
                connect(client.as_fd())?;
                closed_clients.push(client);
            } else {
                connect(fd(c))?;
            }
        }
    }
    // Options, the buffer sizes before the queues are refilled.
    for s in socks {
        let f = made[&s.ino].as_fd();
        set_option(
            f,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            &i32::from(s.passcred),
        )
        .map_err(|e| io(s, "SO_PASSCRED", e))?;
        set_buffer(f, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, s.rcvbuf)
            .map_err(|e| io(s, "SO_RCVBUF", e))?;
        set_buffer(f, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, s.sndbuf)
            .map_err(|e| io(s, "SO_SNDBUF", e))?;
    }
    let mut dups = HashMap::new();
    for (&ino, f) in &made {
        dups.insert(ino, f.try_clone().map_err(|e| Error::io("dup", e))?);
    }
    Ok((
        made,
        Finish {
            descs,
            made: dups,
            temps,
            closed_clients,
            unlink_after,
        },
    ))
}

/// The second half of the restore of a tree's unix sockets, from the queues on (it runs once
/// the tree's processes exist when a queued message carries credentials, whose pid must
/// exist): the descriptions, our duplicates of their sockets, the temporary peers, the closed
/// clients of pending connections, and the names whose file is unlinked at the end.
struct Finish {
    descs: Vec<FileDesc>,
    made: HashMap<u64, OwnedFd>,
    temps: HashMap<u64, OwnedFd>,
    closed_clients: Vec<OwnedFd>,
    unlink_after: Vec<String>,
}

impl Finish {
    /// Whether a queued message carries credentials or files.
    fn needs_tree(&self) -> bool {
        self.descs.iter().any(|d| {
            matches!(&d.kind, FileKind::UnixSocket { queue, .. }
                if queue.iter().any(|m| m.cred.is_some() || !m.files.is_empty()))
        })
    }
}

impl super::WhenTreeExists for Finish {
    fn run(self: Box<Self>, files: &super::OpenedFiles) -> Result<(), Error> {
        self.finish(Some(files))
    }
}

impl Finish {
    /// Refills the queues, connects the datagram sockets, sets SO_PEEK_OFF and the shutdown
    /// bits, closes the temporary peers and unlinks the names whose file was deleted. `files`:
    /// the tree's descriptions, for the files in flight.
    fn finish(self, files: Option<&super::OpenedFiles>) -> Result<(), Error> {
        let socks: Vec<Sock<'_>> = self.descs.iter().filter_map(Sock::of).collect();
        let by_ino: HashMap<u64, &Sock<'_>> = socks.iter().map(|s| (s.ino, s)).collect();
        let invalid = |s: &Sock<'_>, what: &str| Error::Invalid(format!("{}: {what}", s.what()));
        let io = |s: &Sock<'_>, what: &str, e: std::io::Error| {
            Error::io(format!("{what} for the {}", s.what()), e)
        };
        let made = &self.made;
        let temps = &self.temps;
        let fd = |ino: u64| made[&ino].as_fd();
        // The queues.
        for s in socks.iter().filter(|s| !s.queue.is_empty()) {
            let fresh;
            // The sender, where to send, and the peer whose buffer size is set again after.
            let (sender, to, peer) = if let Some(t) = temps.get(&s.ino) {
                (t.as_fd(), None, None)
            } else if s.peer != 0 && by_ino[&s.peer].peer == s.ino {
                (fd(s.peer), None, Some(by_ino[&s.peer]))
            } else if let (libc::SOCK_DGRAM, Some(name)) = (s.ty, s.name) {
                fresh = usock::socket(libc::SOCK_DGRAM).map_err(|e| io(s, "socket", e))?;
                (fresh.as_fd(), Some(sys_name(name)), None)
            } else {
                return Err(invalid(s, "messages queued but nothing can send them"));
            };
            let total: usize = s.queue.iter().map(|m| m.data.len()).sum();
            tracing::debug!(
                "{}: queueing {} messages ({total} bytes) again",
                s.what(),
                s.queue.len()
            );
            // Room for everything in the sender's buffer (root only; its own size is set again
            // below), then the messages.
            let _ = set_option(
                sender,
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                &(total
                    .saturating_mul(2)
                    .saturating_add(1 << 20)
                    .min(i32::MAX as usize / 2) as i32),
            );
            // Datagrams a named socket of the tree sent to this named one come from it again
            // (its address is what recvfrom tells); their senders get room too.
            let mut senders = Vec::new();
            for m in s.queue.iter().filter(|m| m.from != 0 && to.is_some()) {
                if let Some(f) = by_ino
                    .get(&m.from)
                    .filter(|f| f.ty == libc::SOCK_DGRAM && !senders.contains(&f.ino))
                {
                    senders.push(f.ino);
                    let _ = set_option(
                        fd(f.ino),
                        libc::SOL_SOCKET,
                        libc::SO_SNDBUFFORCE,
                        &(total.saturating_add(1 << 20).min(i32::MAX as usize / 2) as i32),
                    );
                }
            }
            for m in s.queue {
                let sender = match by_ino.get(&m.from) {
                    Some(f) if to.is_some() && f.ty == libc::SOCK_DGRAM => fd(f.ino),
                    _ => sender,
                };
                let mut fds = Vec::with_capacity(m.files.len());
                for id in &m.files {
                    let f = files
                        .and_then(|f| f.get(*id))
                        .ok_or_else(|| invalid(s, &format!("file in flight {id} is not opened")))?;
                    fds.push(f.as_fd());
                }
                let r = send_message(s.ty, sender, m, to.as_ref(), &fds);
                r.map_err(|e| io(s, &format!("queueing {} bytes again (net.unix.max_dgram_qlen limits datagrams from unconnected senders)", m.data.len()), e))?;
            }
            if let Some(p) = peer {
                set_buffer(sender, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, p.sndbuf)
                    .map_err(|e| io(p, "SO_SNDBUF", e))?;
            }
            for ino in senders {
                let f = by_ino[&ino];
                set_buffer(fd(ino), libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, f.sndbuf)
                    .map_err(|e| io(f, "SO_SNDBUF", e))?;
            }
        }
        // Datagram sockets connect to their peers (a connected socket only takes datagrams from
        // its peer, so after the queues).
        for s in socks
            .iter()
            .filter(|s| s.peer != 0 && by_ino[&s.peer].peer != s.ino)
        {
            let Some(name) = by_ino[&s.peer].name else {
                return Err(invalid(s, "its peer has no name to connect to"));
            };
            usock::connect(fd(s.ino), &sys_name(name))
                .map_err(|e| io(s, &format!("connect to {}", show_name(name)), e))?;
        }
        for s in &socks {
            let f = fd(s.ino);
            if s.peek_off != -1 {
                set_option(f, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &s.peek_off)
                    .map_err(|e| io(s, "SO_PEEK_OFF", e))?;
            }
            if !s.peer_closed {
                usock::shutdown(f, s.shutdown).map_err(|e| io(s, "shutdown", e))?;
            }
        }
        drop(self.temps);
        drop(self.closed_clients);
        for path in &self.unlink_after {
            std::fs::remove_file(path).map_err(|e| Error::io(format!("unlink {path}"), e))?;
        }
        Ok(())
    }
}

/// Sends one queued message again (all of it), with its credentials: those of the dump when
/// its sender's pid exists (the processes of the tree, once they exist), else the restorer's
/// pid with the dumped uid and gid.
fn send_message(
    ty: i32,
    sender: BorrowedFd<'_>,
    m: &UnixMessage,
    to: Option<&UnixName<'_>>,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let cred = m.cred.map(|c| usock::Cred {
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
    });
    let once = |cred| {
        if ty == libc::SOCK_STREAM {
            usock::send_all(sender, &m.data, cred, fds)
        } else {
            usock::send(sender, &m.data, to, cred, fds).and_then(|n| {
                if n == m.data.len() {
                    Ok(())
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::WriteZero))
                }
            })
        }
    };
    match once(cred) {
        // The sender is gone (ESRCH), or the restorer may not claim its pid (EPERM: a restore
        // without CAP_SYS_ADMIN): our pid, with the uid and gid if we may.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::EPERM)) => {
            let own = cred.map(|c| usock::Cred {
                pid: stasis_sys::process::getpid(),
                ..c
            });
            tracing::debug!(?cred, error = %e, "a queued message is sent with our pid");
            match once(own) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => once(None),
                r => r,
            }
        }
        r => r,
    }
}

/// Sets a buffer size to `dumped` (what getsockopt showed, twice what was set): beyond the
/// system's limit when root (the FORCE option), else as close as allowed.
fn set_buffer(fd: BorrowedFd<'_>, name: i32, force: i32, dumped: u32) -> std::io::Result<()> {
    let half = (dumped / 2) as i32;
    if set_option(fd, libc::SOL_SOCKET, force, &half).is_ok() {
        return Ok(());
    }
    set_option(fd, libc::SOL_SOCKET, name, &half)
}

/// Removes a socket file left at `path` (by the original process), unless a live socket is
/// bound to that name (the original, still running: it keeps its socket); anything else there
/// is left for bind to refuse.
fn clear_stale(path: &str) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if let Some(ino) = live_socket_bound_to(path) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("a live socket (socket:[{ino}]) is bound to it"),
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a file that is not a socket is there",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The inode of a live unix socket (of this network namespace) bound to `path`, as
/// /proc/net/unix lists them.
fn live_socket_bound_to(path: &str) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    table.lines().skip(1).find_map(|line| {
        // Num RefCount Protocol Flags Type St Inode Path (the path may hold spaces).
        let mut rest = line;
        let mut ino = 0;
        for i in 0..7 {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap_or(rest.len());
            if i == 6 {
                ino = rest[..end].parse::<u64>().ok()?;
            }
            rest = &rest[end..];
        }
        (rest.strip_prefix(' ')? == path).then_some(ino)
    })
}

/// Gives the new socket file its dumped permission bits and, when root restores, its owner.
fn set_file(path: &str, f: &SocketFile) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode))?;
    if stasis_sys::process::geteuid() == 0 {
        std::os::unix::fs::lchown(path, Some(f.uid), Some(f.gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use std::fs::File;

    fn sock(id: u32, ino: u64, ty: i32, peer: u64, queue: &[&[u8]]) -> FileDesc {
        FileDesc {
            id,
            flags: 2,
            pos: 0,
            kind: FileKind::UnixSocket {
                ino,
                ty: ty as u32,
                name: None,
                listen: None,
                pending: Vec::new(),
                peer,
                peer_closed: false,
                accepted_from: 0,
                shutdown: 0,
                passcred: false,
                rcvbuf: 212992,
                sndbuf: 212992,
                peek_off: -1,
                queue: queue
                    .iter()
                    .map(|q| UnixMessage {
                        data: q.to_vec(),
                        cred: None,
                        files: Vec::new(),
                        from: 0,
                    })
                    .collect(),
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    fn edit(d: &mut FileDesc, f: impl FnOnce(&mut FileKind)) {
        f(&mut d.kind);
    }

    #[test]
    fn validate() {
        let p = sample_process();
        let k = UnixSockets::default();
        k.validate(&sock(1, 5, libc::SOCK_STREAM, 6, &[b"x"]), &p)
            .unwrap();
        type Edit = Box<dyn Fn(&mut FileKind)>;
        let bad: Vec<(&str, Edit)> = vec![
            (
                "type",
                Box::new(|k| {
                    if let FileKind::UnixSocket { ty, .. } = k {
                        *ty = 3
                    }
                }),
            ),
            (
                "shutdown",
                Box::new(|k| {
                    if let FileKind::UnixSocket { shutdown, .. } = k {
                        *shutdown = 4
                    }
                }),
            ),
            (
                "peer and closed",
                Box::new(|k| {
                    if let FileKind::UnixSocket { peer_closed, .. } = k {
                        *peer_closed = true
                    }
                }),
            ),
            (
                "too much",
                Box::new(|k| {
                    if let FileKind::UnixSocket { queue, .. } = k {
                        *queue = vec![UnixMessage {
                            data: vec![0; MAX_QUEUE_BYTES + 1],
                            cred: None,
                            files: Vec::new(),
                            from: 0,
                        }]
                    }
                }),
            ),
            (
                "relative path",
                Box::new(|k| {
                    if let FileKind::UnixSocket { name, .. } = k {
                        *name = Some(UnixSocketName::Path {
                            path: "x".into(),
                            file: None,
                            relative: None,
                        })
                    }
                }),
            ),
            (
                "relative name not the end of the path",
                Box::new(|k| {
                    if let FileKind::UnixSocket { name, .. } = k {
                        *name = Some(UnixSocketName::Path {
                            path: "/a/b.sock".into(),
                            file: None,
                            relative: Some("c.sock".into()),
                        })
                    }
                }),
            ),
            (
                "long name",
                Box::new(|k| {
                    if let FileKind::UnixSocket { name, .. } = k {
                        *name = Some(UnixSocketName::Abstract(vec![1; 108]))
                    }
                }),
            ),
            (
                "pending without listen",
                Box::new(|k| {
                    if let FileKind::UnixSocket { pending, .. } = k {
                        *pending = vec![1]
                    }
                }),
            ),
            (
                "mode",
                Box::new(|k| {
                    if let FileKind::UnixSocket { name, .. } = k {
                        *name = Some(UnixSocketName::Path {
                            path: "/x".into(),
                            relative: None,
                            file: Some(SocketFile {
                                mode: 0o140777,
                                uid: 0,
                                gid: 0,
                            }),
                        })
                    }
                }),
            ),
        ];
        for (what, f) in bad {
            let mut d = sock(1, 5, libc::SOCK_STREAM, 6, &[b"x"]);
            edit(&mut d, f);
            assert!(k.validate(&d, &p).is_err(), "{what}");
        }
        let mut d = sock(1, 5, libc::SOCK_DGRAM, 0, &[b""]);
        assert!(k.validate(&d, &p).is_err(), "empty datagram");
        edit(&mut d, |k| {
            if let FileKind::UnixSocket { queue, .. } = k {
                queue.clear()
            }
        });
        k.validate(&d, &p).unwrap();
    }

    fn open(k: &mut UnixSockets, d: &FileDesc) -> File {
        let images = stasis_image::ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = crate::files::OpenContext::new(&images, crate::files::ReplacedFiles::Refuse);
        File::from(k.open(d, &mut ctx).unwrap())
    }

    #[test]
    fn pairs_get_their_queues_back() {
        for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
            let descs = vec![
                sock(1, 10, ty, 11, &[b"to a 1", b"to a 2"]),
                sock(2, 11, ty, 10, &[b"to b"]),
            ];
            let mut k = UnixSockets::default();
            k.prepare(&descs).unwrap();
            let a = open(&mut k, &descs[0]);
            let b = open(&mut k, &descs[1]);
            let data = |f: &File| -> Vec<Vec<u8>> {
                let q = usock::peek_queue(f.as_fd(), ty, 1 << 20).unwrap();
                q.messages.into_iter().map(|m| m.data).collect()
            };
            if ty == libc::SOCK_STREAM {
                assert_eq!(data(&a).concat(), b"to a 1to a 2");
            } else {
                assert_eq!(data(&a), vec![b"to a 1".to_vec(), b"to a 2".to_vec()]);
            }
            assert_eq!(data(&b).concat(), b"to b");
            assert!(
                k.open(
                    &descs[0],
                    &mut crate::files::OpenContext::new(
                        &stasis_image::ImageDir::open(&std::env::temp_dir()).unwrap(),
                        crate::files::ReplacedFiles::Refuse
                    )
                )
                .is_err(),
                "opened twice"
            );
        }
    }

    #[test]
    fn a_closed_peer_leaves_the_data_then_eof() {
        let mut d = sock(1, 10, libc::SOCK_STREAM, 0, &[b"last words"]);
        edit(&mut d, |k| {
            if let FileKind::UnixSocket {
                peer_closed,
                shutdown,
                ..
            } = k
            {
                *peer_closed = true;
                *shutdown = 3
            }
        });
        let mut k = UnixSockets::default();
        k.prepare(std::slice::from_ref(&d)).unwrap();
        let mut a = open(&mut k, &d);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut a, &mut got).unwrap();
        assert_eq!(got, b"last words");
        assert_eq!(
            sock_diag::unix_diag(a.metadata().unwrap().ino())
                .unwrap()
                .shutdown,
            3
        );
    }

    #[test]
    fn only_a_stale_socket_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("stasis-unix-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let p = path.to_str().unwrap();
        clear_stale(p).unwrap();
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = clear_stale(p).unwrap_err().to_string();
        assert!(err.contains("live socket"), "{err}");
        assert!(path.exists(), "a live socket keeps its file");
        drop(live);
        assert!(path.exists(), "the closed listener leaves its file");
        clear_stale(p).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, b"data").unwrap();
        assert!(clear_stale(p).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"data", "left alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_compare_without_their_trailing_nul() {
        assert_eq!(trim_name(b"/a/b\0"), b"/a/b");
        assert_eq!(trim_name(b"/a/b"), b"/a/b");
        assert_eq!(
            trim_name(b"\0abs\0"),
            b"\0abs\0",
            "abstract names are kept whole"
        );
        assert_eq!(trim_name(b""), b"");
    }

    #[test]
    fn untrusted_links_are_refused() {
        let mut k = UnixSockets::default();
        let err = k
            .prepare(&[sock(1, 10, libc::SOCK_STREAM, 99, &[])])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not restored"), "{err}");
        let err = k
            .prepare(&[
                sock(1, 10, libc::SOCK_STREAM, 11, &[]),
                sock(2, 11, libc::SOCK_DGRAM, 10, &[]),
            ])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("can be connected to"), "{err}");
    }
}
