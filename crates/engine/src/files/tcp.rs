//! TCP sockets (AF_INET and AF_INET6, SOCK_STREAM): unbound, bound, listening, and
//! connections (established, or closed on one side), restored on the same connection with
//! TCP_REPAIR.
//!
//! Dump: TCP_INFO gives the state. A listener keeps its address, options and backlog (TCP_INFO
//! reports it); one with connections waiting to be accepted is refused. For a connection,
//! first the peer's packets are held off by a rule in this dump's nftables table
//! ([`super::inet::ConnectionHold`]), then our duplicate of the socket goes into repair mode
//! (TCP_REPAIR) and the dump reads, without consuming anything: the state again (now that
//! nothing moves), the sequence numbers of both queues (TCP_QUEUE_SEQ), the receive queue
//! (unread data) and the send queue (every byte the peer did not acknowledge, `unsent` of them
//! not sent yet; SIOCINQ, SIOCOUTQ, SIOCOUTQNSD and MSG_PEEK in repair mode), the negotiated
//! options (TCP_INFO: window scales, SACK, timestamps; TCP_MAXSEG in repair mode: the MSS
//! clamp), the timestamp clock (TCP_TIMESTAMP) and the window (TCP_REPAIR_WINDOW). Whether
//! each end sent its FIN follows from the state: FIN_WAIT1, FIN_WAIT2, CLOSING and LAST_ACK
//! sent one, CLOSE_WAIT, CLOSING and LAST_ACK received one. The connection stays in repair
//! mode until the dump is over: when the processes are killed, the sockets close in repair
//! mode and vanish without a packet to the peer, and the rule stays until the restore; when
//! the dump fails or the processes run on, repair mode is switched off and the table deleted
//! before the processes are thawed. A connection that ended (state CLOSE with its fd open) is
//! kept as a socket shut down both ways (unread data in it is refused). SYN_SENT and SYN_RECV
//! are refused by name.
//!
//! Restore: a new socket goes into repair mode (which needs CAP_NET_ADMIN: a restore as an
//! unprivileged user fails naming the connection), gets its options, is bound to its local
//! address (repair mode lets it reuse an address in use), gets the sequence numbers less the
//! queue lengths (and less the FINs), and connects without a packet; then the TCP options and
//! timestamp; the buffer sizes are forced as large as the queues need; the queues are refilled
//! (the bytes of the send queue that had been sent count as sent, and go again when the
//! retransmission timer fires); the window is set; the bytes not sent yet are queued as new
//! data, out of repair mode. A FIN this end had sent is sent again (shutdown(SHUT_WR)): the
//! peer acknowledges it again, and a restored peer of the tree gets it as the FIN it was
//! waiting for. A FIN the peer had sent is not sent again by the peer: shutdown(SHUT_RD) makes
//! the program read end-of-file after the data, as it would have (the kernel's state is then
//! ESTABLISHED or FIN_WAIT1 with reading shut down, where it was CLOSE_WAIT or LAST_ACK).
//! Once every description of the tree is open ([`FileOps::all_opened`]), the hold tables are
//! deleted and the sockets leave repair mode (with a window probe to the peer). A restore
//! that fails before keeps the tables, so a later restore still finds the peers waiting;
//! `nft delete table inet NAME` (the name is in the error and in `stasis show`) gives up on
//! them.

use super::inet::{self, ConnectionHold};
use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::dump::TcpConnections;
use crate::Error;
use stasis_image::{FileDesc, FileKind, InetSocket, ProcessImage, TcpConnection};
use stasis_sys::inet as sys;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_SYN_SENT: u32 = 2;
pub const TCP_SYN_RECV: u32 = 3;
pub const TCP_FIN_WAIT1: u32 = 4;
pub const TCP_FIN_WAIT2: u32 = 5;
pub const TCP_TIME_WAIT: u32 = 6;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_CLOSE_WAIT: u32 = 8;
pub const TCP_LAST_ACK: u32 = 9;
pub const TCP_LISTEN: u32 = 10;
pub const TCP_CLOSING: u32 = 11;

/// The name of a TCP state, for messages.
pub fn state_name(state: u32) -> &'static str {
    match state {
        TCP_ESTABLISHED => "ESTABLISHED",
        TCP_SYN_SENT => "SYN_SENT",
        TCP_SYN_RECV => "SYN_RECV",
        TCP_FIN_WAIT1 => "FIN_WAIT1",
        TCP_FIN_WAIT2 => "FIN_WAIT2",
        TCP_TIME_WAIT => "TIME_WAIT",
        TCP_CLOSE => "CLOSE",
        TCP_CLOSE_WAIT => "CLOSE_WAIT",
        TCP_LAST_ACK => "LAST_ACK",
        TCP_LISTEN => "LISTEN",
        TCP_CLOSING => "CLOSING",
        _ => "an unknown state",
    }
}

/// The states of a connection stasis dumps: established, or closing on one side or both.
const CONNECTED: [u32; 6] = [
    TCP_ESTABLISHED,
    TCP_FIN_WAIT1,
    TCP_FIN_WAIT2,
    TCP_CLOSE_WAIT,
    TCP_LAST_ACK,
    TCP_CLOSING,
];

fn refuse_state(what: &str, state: u32) -> Error {
    Error::Unsupported {
        what: format!(
            "{what} is a TCP socket in state {}, which stasis cannot dump (a connection being set up)",
            state_name(state)
        ),
    }
}

/// Largest listen backlog a record may ask for.
const MAX_BACKLOG: u32 = 1 << 20;
/// Chunks the queues are refilled in.
const CHUNK: usize = 64 << 10;

/// The TCP kind: at dump, the connections held in repair mode; at restore, the connections
/// waiting to leave repair mode and the hold tables to delete.
#[derive(Default)]
pub struct TcpSockets {
    policy: TcpConnections,
    hold: ConnectionHold,
    restored: Vec<(String, OwnedFd, stasis_image::InetOptions)>,
    tables: BTreeSet<String>,
}

fn is_tcp(k: Option<stasis_sys::socket::SocketKind>) -> bool {
    k.is_some_and(|k| {
        (k.domain == libc::AF_INET || k.domain == libc::AF_INET6)
            && k.ty == libc::SOCK_STREAM
            && k.protocol == libc::IPPROTO_TCP
    })
}

fn sock(kind: &FileKind) -> Option<&InetSocket> {
    match kind {
        FileKind::Inet(s) if s.ty as i32 == libc::SOCK_STREAM => Some(s),
        _ => None,
    }
}

fn repair(fd: BorrowedFd<'_>, how: i32) -> std::io::Result<()> {
    sys::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, how)
}

fn tcp_int(fd: BorrowedFd<'_>, name: i32) -> std::io::Result<i32> {
    sys::int_option(fd, libc::IPPROTO_TCP, name)
}

fn set_tcp_int(fd: BorrowedFd<'_>, name: i32, v: i32) -> std::io::Result<()> {
    sys::set_int_option(fd, libc::IPPROTO_TCP, name, v)
}

impl TcpSockets {
    /// Holds off the peer, puts the connection in repair mode, and reads it.
    fn dump_connection(
        &mut self,
        file: &std::fs::File,
        local: &SocketAddr,
        peer: &SocketAddr,
        what: &str,
    ) -> Result<(u32, TcpConnection), Error> {
        let fd = file.as_fd();
        self.hold
            .hold(local, peer)
            .map_err(|e| Error::Unsupported {
                what: format!(
                "{what}: the peer's packets cannot be held off while the connection is dumped: {e} (--tcp-closed dumps it as closed instead)"
            ),
            })?;
        let reuseaddr = sys::int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)
            .map_err(|e| Error::io(format!("SO_REUSEADDR of {what}"), e))?
            != 0;
        let dup = file
            .try_clone()
            .map_err(|e| Error::io(format!("dup {what}"), e))?;
        repair(fd, sys::TCP_REPAIR_ON)
            .map_err(|e| Error::io(format!("TCP_REPAIR on {what}"), e))?;
        self.hold.repaired(dup.into(), reuseaddr);
        let io = |op: &str| {
            let op = op.to_string();
            move |e| Error::io(format!("{op} of {what}"), e)
        };
        // With the send queue selected, the kernel sends nothing new any more (what it would
        // send counts as sent without going out): the bytes recorded as not sent were not, so
        // the peer (perhaps not held off yet, if it is dumped after this end) can never
        // acknowledge bytes the restored socket thinks unsent, which it would drop as
        // acknowledging unsent data, every segment of the peer's, for good.
        set_tcp_int(fd, libc::TCP_REPAIR_QUEUE, sys::TCP_SEND_QUEUE)
            .map_err(io("TCP_REPAIR_QUEUE"))?;
        // The state now that nothing moves any more (a FIN may have come meanwhile).
        let info = sys::tcp_info(fd).map_err(io("TCP_INFO"))?;
        let state = info.state as u32;
        if !CONNECTED.contains(&state) {
            return Err(refuse_state(what, state));
        }
        let fin_received = matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING);
        let fin_sent = matches!(
            state,
            TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING
        );
        // SIOCOUTQ and SIOCOUTQNSD count a FIN not acknowledged (not sent); SIOCINQ does not
        // count a FIN received.
        let (inq, outq, notsent) = sys::queue_lengths(fd).map_err(io("SIOCINQ/SIOCOUTQ"))?;
        let fin_unacked = fin_sent && state != TCP_FIN_WAIT2;
        let outq = outq - (fin_unacked && outq > 0) as u32;
        let notsent = notsent - (fin_sent && notsent > 0) as u32;
        set_tcp_int(fd, libc::TCP_REPAIR_QUEUE, sys::TCP_RECV_QUEUE)
            .map_err(io("TCP_REPAIR_QUEUE"))?;
        let rcv_seq = tcp_int(fd, libc::TCP_QUEUE_SEQ).map_err(io("TCP_QUEUE_SEQ"))? as u32;
        let recv_queue = sys::peek_exact(fd, inq as usize).map_err(io("the receive queue"))?;
        set_tcp_int(fd, libc::TCP_REPAIR_QUEUE, sys::TCP_SEND_QUEUE)
            .map_err(io("TCP_REPAIR_QUEUE"))?;
        let snd_seq = tcp_int(fd, libc::TCP_QUEUE_SEQ).map_err(io("TCP_QUEUE_SEQ"))? as u32;
        let send_queue = sys::peek_exact(fd, outq as usize).map_err(io("the send queue"))?;
        let mss = tcp_int(fd, libc::TCP_MAXSEG).map_err(io("TCP_MAXSEG"))? as u32;
        let tsval = tcp_int(fd, libc::TCP_TIMESTAMP).map_err(io("TCP_TIMESTAMP"))? as u32;
        let w = sys::repair_window(fd).map_err(io("TCP_REPAIR_WINDOW"))?;
        let (snd_wscale, rcv_wscale) = if info.options & sys::TCPI_OPT_WSCALE != 0 {
            (info.snd_wscale as u32, info.rcv_wscale as u32)
        } else {
            (0, 0)
        };
        if recv_queue.len() > inet::MAX_QUEUE || send_queue.len() > inet::MAX_QUEUE {
            return Err(Error::Unsupported {
                what: format!("{what} has more than {} bytes queued", inet::MAX_QUEUE),
            });
        }
        let conn = TcpConnection {
            snd_seq,
            rcv_seq,
            send_queue,
            unsent: notsent.min(outq),
            recv_queue,
            mss,
            snd_wscale,
            rcv_wscale,
            sack: info.options & sys::TCPI_OPT_SACK != 0,
            timestamps: info.options & sys::TCPI_OPT_TIMESTAMPS != 0,
            tsval,
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window,
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
            fin_sent,
            fin_received,
            hold_table: self.hold.table().map_err(Error::Refused)?.to_string(),
        };
        Ok((state, conn))
    }
}

/// Puts a connection together on `fd` (in repair mode, options set, bound): see the module's
/// documentation for the order.
fn restore_connection(
    fd: BorrowedFd<'_>,
    s: &InetSocket,
    t: &TcpConnection,
    peer: &SocketAddr,
    what: &str,
) -> Result<(), Error> {
    let io = |op: &str| {
        let op = op.to_string();
        move |e| Error::io(format!("{op} on {what}"), e)
    };
    // The data ends before the FINs; a FIN sent is sent again (below), a FIN received is
    // replaced by shutdown(SHUT_RD) (the peer does not send it again).
    let snd_end = t.snd_seq.wrapping_sub(t.fin_sent as u32);
    let rcv_end = t.rcv_seq.wrapping_sub(t.fin_received as u32);
    set_tcp_int(fd, libc::TCP_REPAIR_QUEUE, sys::TCP_SEND_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
    let snd = snd_end.wrapping_sub(t.send_queue.len() as u32);
    set_tcp_int(fd, libc::TCP_QUEUE_SEQ, snd as i32).map_err(io("TCP_QUEUE_SEQ (send)"))?;
    set_tcp_int(fd, libc::TCP_REPAIR_QUEUE, sys::TCP_RECV_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
    let rcv = rcv_end.wrapping_sub(t.recv_queue.len() as u32);
    set_tcp_int(fd, libc::TCP_QUEUE_SEQ, rcv as i32).map_err(io("TCP_QUEUE_SEQ (receive)"))?;
    sys::connect(fd, peer).map_err(io("connect (repair mode)"))?;
    let mut opts = vec![(sys::TCPOPT_MSS, t.mss)];
    if t.snd_wscale != 0 || t.rcv_wscale != 0 {
        opts.push((sys::TCPOPT_WINDOW, t.snd_wscale | (t.rcv_wscale << 16)));
    }
    if t.sack {
        opts.push((sys::TCPOPT_SACK_PERM, 0));
    }
    if t.timestamps {
        opts.push((sys::TCPOPT_TIMESTAMP, 0));
    }
    sys::set_repair_options(fd, &opts).map_err(io("TCP_REPAIR_OPTIONS"))?;
    if t.timestamps {
        set_tcp_int(fd, libc::TCP_TIMESTAMP, t.tsval as i32).map_err(io("TCP_TIMESTAMP"))?;
    }
    // Room for the queues (the kernel doubles the value given).
    let o = &s.options;
    if !t.send_queue.is_empty() {
        let want = (o.sndbuf / 2).max(t.send_queue.len() as u32);
        inet::force_buffer(fd, libc::SO_SNDBUF, want, what)?;
    }
    if !t.recv_queue.is_empty() {
        let want = (o.rcvbuf / 2).max(t.recv_queue.len() as u32);
        inet::force_buffer(fd, libc::SO_RCVBUF, want, what)?;
    }
    set_tcp_int(fd, libc::TCP_REPAIR_QUEUE, sys::TCP_RECV_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
    for c in t.recv_queue.chunks(CHUNK) {
        sys::send_all(fd, c).map_err(io("refilling the receive queue"))?;
    }
    set_tcp_int(fd, libc::TCP_REPAIR_QUEUE, sys::TCP_SEND_QUEUE).map_err(io("TCP_REPAIR_QUEUE"))?;
    let sent = t.send_queue.len() - t.unsent as usize;
    for c in t.send_queue[..sent].chunks(CHUNK) {
        sys::send_all(fd, c).map_err(io("refilling the send queue"))?;
    }
    sys::set_repair_window(
        fd,
        &sys::RepairWindow {
            snd_wl1: t.snd_wl1,
            snd_wnd: t.snd_wnd,
            max_window: t.max_window,
            rcv_wnd: t.rcv_wnd,
            // Not past the data (a FIN received is not counted again).
            rcv_wup: if (t.rcv_wup.wrapping_sub(rcv_end) as i32) > 0 {
                rcv_end
            } else {
                t.rcv_wup
            },
        },
    )
    .map_err(io("TCP_REPAIR_WINDOW"))?;
    // What was not sent yet is queued as new data, out of repair mode (the peer's answers are
    // still held off; they come again once the hold is removed), and a FIN after it.
    if sent < t.send_queue.len() {
        repair(fd, sys::TCP_REPAIR_OFF_NO_WP).map_err(io("leaving TCP repair mode"))?;
        for c in t.send_queue[sent..].chunks(CHUNK) {
            sys::send_all(fd, c).map_err(io("queueing the data not sent"))?;
        }
        if t.fin_sent {
            sys::shutdown(fd, libc::SHUT_WR).map_err(io("shutdown(SHUT_WR)"))?;
        }
        repair(fd, sys::TCP_REPAIR_ON).map_err(io("TCP_REPAIR"))?;
    } else if t.fin_sent {
        // In repair mode, on the send queue: the FIN counts as sent and goes again when the
        // retransmission timer fires (the peer acknowledges it, again if it had).
        sys::shutdown(fd, libc::SHUT_WR).map_err(io("shutdown(SHUT_WR)"))?;
    }
    if t.fin_received {
        // The program reads end-of-file after the data, as it would have.
        sys::shutdown(fd, libc::SHUT_RD).map_err(io("shutdown(SHUT_RD)"))?;
    }
    Ok(())
}

impl FileOps for TcpSockets {
    fn name(&self) -> &'static str {
        "TCP socket"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        sock(kind).is_some()
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::Socket && is_tcp(fd.socket)
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let k = fd
            .socket
            .ok_or_else(|| fd.unsupported("a socket of unknown kind"))?;
        let file = fd.file()?;
        let b = file.as_fd();
        let what0 = format!("fd {} of pid {}", fd.fd, fd.pid);
        let info = sys::tcp_info(b).map_err(|e| Error::io(format!("TCP_INFO of {what0}"), e))?;
        let (local, peer) = super::inet::addresses(b, &what0)?;
        let six = if k.domain == libc::AF_INET6 { "6" } else { "" };
        let what = format!(
            "{what0} ({})",
            inet::describe_live(&format!("tcp{six}"), &local, peer.as_ref())
        );
        let options = inet::dump_options(b, k, &what)?;
        let state = info.state as u32;
        let mut s = InetSocket {
            family: k.domain as u32,
            ty: k.ty as u32,
            protocol: k.protocol as u32,
            state,
            local: (!inet::is_unbound(&local)).then(|| inet::addr_to_image(&local)),
            peer: peer.as_ref().map(inet::addr_to_image),
            options,
            ..Default::default()
        };
        match state {
            TCP_LISTEN => {
                if info.unacked > 0 {
                    return Err(Error::Unsupported {
                        what: format!(
                            "{what} is a listener with {} connection(s) waiting to be accepted, which stasis cannot dump yet",
                            info.unacked
                        ),
                    });
                }
                s.backlog = info.sacked;
            }
            TCP_CLOSE => {
                s.peer = None;
                // A connection that ended keeps its fd (the kernel shut it down both ways): it
                // reads end-of-file and refuses to write; its address is no longer bound (a
                // TIME_WAIT may hold it) and is not kept; data left unread would be lost.
                if sys::read_hung_up(b).map_err(|e| Error::io(format!("poll {what}"), e))? {
                    s.shutdown = 3;
                    s.local = None;
                }
                let (inq, _, _) = sys::queue_lengths(b)
                    .map_err(|e| Error::io(format!("SIOCINQ of {what}"), e))?;
                if inq > 0 {
                    return Err(Error::Unsupported {
                        what: format!(
                            "{what} is a closed TCP connection with {inq} bytes not read, which stasis cannot keep"
                        ),
                    });
                }
            }
            st if CONNECTED.contains(&st) && self.policy == TcpConnections::Closed => {
                // Restored as a socket that is not connected; reset once the process is
                // killed.
                let dup = file
                    .try_clone()
                    .map_err(|e| Error::io(format!("dup {what}"), e))?;
                self.hold.closing(dup.into());
                s.state = TCP_CLOSE;
                s.local = None;
                s.peer = None;
                s.shutdown = 3;
            }
            st if CONNECTED.contains(&st) => {
                if let TcpConnections::RefuseForUser(uid) = self.policy {
                    return Err(Error::Refused(format!(
                        "{what} is a TCP connection: a restore for uid {uid} cannot put it back (TCP_REPAIR needs CAP_NET_ADMIN); close it before the dump"
                    )));
                }
                // A connection's buffers grow by themselves (autotuning): a size that differs
                // from a fresh socket's does not tell that the program set it.
                s.options.buf_locks = 0;
                let Some(peer) = peer else {
                    return Err(Error::Invalid(format!(
                        "{what} is connected without a peer"
                    )));
                };
                let (state, conn) = self.dump_connection(file, &local, &peer, &what)?;
                s.state = state;
                s.tcp = Some(conn);
            }
            other => return Err(refuse_state(&what, other)),
        }
        Ok(FileKind::Inet(Box::new(s)))
    }

    fn configure(&mut self, opts: &super::DumpFileOptions) {
        self.policy = opts.tcp;
    }

    fn take_hold(&mut self) -> Option<ConnectionHold> {
        Some(std::mem::take(&mut self.hold))
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let s = sock(&desc.kind).ok_or("not a TCP socket")?;
        inet::validate(s)?;
        if s.protocol as i32 != libc::IPPROTO_TCP {
            return Err(format!("protocol {} on a stream socket", s.protocol));
        }
        if s.backlog > MAX_BACKLOG {
            return Err(format!("backlog {} above {MAX_BACKLOG}", s.backlog));
        }
        if !s.datagrams.is_empty() {
            return Err("datagrams queued on a stream socket".into());
        }
        match (s.state, &s.tcp) {
            (TCP_LISTEN, None) if s.local.is_some() => Ok(()),
            (TCP_CLOSE, None) if s.peer.is_none() => Ok(()),
            (st, Some(t)) if CONNECTED.contains(&st) && s.local.is_some() && s.peer.is_some() => {
                let fin_received = matches!(st, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING);
                let fin_sent = matches!(
                    st,
                    TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING
                );
                if (t.fin_sent, t.fin_received) != (fin_sent, fin_received) {
                    return Err(format!(
                        "FIN flags that do not match state {}",
                        state_name(st)
                    ));
                }
                Ok(())
            }
            (state, _) => Err(format!(
                "a TCP socket in state {} with {} (local {}, peer {})",
                state_name(state),
                if s.tcp.is_some() {
                    "connection state"
                } else {
                    "no connection state"
                },
                s.local.is_some(),
                s.peer.is_some()
            )),
        }
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let s = sock(&desc.kind)
            .ok_or_else(|| Error::Invalid(format!("description {} is not TCP", desc.id)))?;
        let what = format!("description {} ({})", desc.id, inet::describe(s));
        let fd = sys::socket(s.family as i32, libc::SOCK_STREAM, s.protocol as i32)
            .map_err(|e| Error::io(format!("socket for {what}"), e))?;
        let b = fd.as_fd();
        // Before repair mode: SO_REUSEADDR would undo the reuse repair mode forces.
        inet::restore_options_before_bind(b, s.family as i32, &s.options, &what)?;
        if let Some(t) = &s.tcp {
            repair(b, sys::TCP_REPAIR_ON).map_err(|e| {
                let why = if e.raw_os_error() == Some(libc::EPERM) {
                    " (TCP_REPAIR needs CAP_NET_ADMIN: a restore as an unprivileged user cannot restore TCP connections)"
                } else {
                    ""
                };
                let held = if t.hold_table.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; the peer's packets stay held off by nftables table inet {0} until a restore succeeds (`nft delete table inet {0}` lets them through)",
                        t.hold_table
                    )
                };
                Error::io(format!("TCP_REPAIR on {what}{why}{held}"), e)
            })?;
        }
        if let Some(local) = &s.local {
            let a = inet::image_to_addr(local)?;
            sys::bind(b, &a).map_err(|e| Error::io(format!("bind {a} for {what}"), e))?;
        }
        match (&s.tcp, &s.peer) {
            (Some(t), Some(peer)) => {
                let peer = inet::image_to_addr(peer)?;
                restore_connection(b, s, t, &peer, &what)?;
                let dup = fd
                    .try_clone()
                    .map_err(|e| Error::io(format!("dup {what}"), e))?;
                self.restored.push((what.clone(), dup, s.options.clone()));
                if !t.hold_table.is_empty() {
                    self.tables.insert(t.hold_table.clone());
                }
            }
            _ if s.state == TCP_LISTEN => {
                sys::listen(b, s.backlog as i32)
                    .map_err(|e| Error::io(format!("listen on {what}"), e))?;
            }
            _ => {}
        }
        inet::restore_options(b, s.family as i32, libc::SOCK_STREAM, &s.options, &what)?;
        if s.state == TCP_CLOSE && s.shutdown != 0 {
            // A connection that was closed both ways: reads end-of-file, writes fail (the
            // kernel records the shutdown, and says ENOTCONN).
            let how = match s.shutdown {
                1 => libc::SHUT_RD,
                2 => libc::SHUT_WR,
                _ => libc::SHUT_RDWR,
            };
            match sys::shutdown(b, how) {
                Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => {
                    return Err(Error::io(format!("shutdown of {what}"), e))
                }
                _ => {}
            }
        }
        Ok(fd)
    }

    /// The holds go first, so that the window probes of leaving repair mode reach the peers
    /// (their answers update the windows at once; a connection waiting for a window would
    /// otherwise wait for its next zero-window probe, backed off while the hold dropped them).
    /// Until then the sockets stay in repair mode: a restore that fails on a hold closes them
    /// without a word to the peers, which the next restore can still reach.
    fn all_opened(&mut self) -> Result<(), Error> {
        for t in std::mem::take(&mut self.tables) {
            inet::delete_hold_table(&t).map_err(|e| {
                Error::Refused(format!(
                    "deleting nftables table inet {t} (the hold of the restored connections): {e}"
                ))
            })?;
        }
        for (what, fd, o) in self.restored.drain(..) {
            let b = fd.as_fd();
            repair(b, sys::TCP_REPAIR_OFF)
                .map_err(|e| Error::io(format!("leaving TCP repair mode on {what}"), e))?;
            // Leaving repair mode resets the address reuse.
            if o.reuseaddr {
                sys::set_int_option(b, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
                    .map_err(|e| Error::io(format!("SO_REUSEADDR on {what}"), e))?;
            }
            // The data not sent yet could not go while the hold was there: push it now
            // (TCP_NODELAY on pushes what is queued), unless the program corked the socket.
            if !o.cork {
                let push = |v: i32| {
                    set_tcp_int(b, libc::TCP_NODELAY, v)
                        .map_err(|e| Error::io(format!("TCP_NODELAY on {what}"), e))
                };
                push(1)?;
                if !o.nodelay {
                    push(0)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    /// A change to a record that makes it invalid.
    type Edit = fn(&mut InetSocket);

    fn sample() -> FileDesc {
        sample_process()
            .files
            .into_iter()
            .find(|f| sock(&f.kind).is_some())
            .unwrap()
    }

    #[test]
    fn validate_refuses_bad_records() {
        let p = sample_process();
        let ok = sample();
        TcpSockets::default().validate(&ok, &p).unwrap();
        let edits: Vec<(&str, Edit)> = vec![
            ("family", |s| s.family = 1),
            ("address length", |s| s.local.as_mut().unwrap().ip.push(1)),
            ("state", |s| s.state = TCP_SYN_SENT),
            ("no connection", |s| s.tcp = None),
            ("no peer", |s| s.peer = None),
            ("queue", |s| {
                s.tcp.as_mut().unwrap().recv_queue = vec![0; inet::MAX_QUEUE + 1]
            }),
            ("unsent", |s| s.tcp.as_mut().unwrap().unsent = 100),
            ("table", |s| {
                s.tcp.as_mut().unwrap().hold_table = "stasis_hold_x; flush ruleset".into()
            }),
            ("device", |s| s.options.bindtodevice = "x".repeat(40)),
            ("backlog", |s| s.backlog = u32::MAX),
            ("datagrams", |s| s.datagrams = vec![vec![1]]),
            ("fin flags", |s| s.tcp.as_mut().unwrap().fin_sent = true),
            ("option not in the list", |s| {
                s.options.extra.push(stasis_image::RawSockOpt {
                    level: libc::SOL_SOCKET,
                    name: libc::SO_ATTACH_FILTER,
                    value: vec![0; 16],
                })
            }),
            ("option too long", |s| {
                s.options.extra.push(stasis_image::RawSockOpt {
                    level: libc::IPPROTO_TCP,
                    name: libc::TCP_USER_TIMEOUT,
                    value: vec![0; 5],
                })
            }),
            ("filter too long", |s| {
                s.options.filter = vec![Default::default(); 5000]
            }),
        ];
        for (what, edit) in edits {
            let mut d = ok.clone();
            if let FileKind::Inet(s) = &mut d.kind {
                edit(s);
            }
            assert!(
                TcpSockets::default().validate(&d, &p).is_err(),
                "{what} accepted"
            );
        }
    }
}
