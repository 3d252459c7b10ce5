//! The wire protocol between the client library and `stasisd`. Private to the project (shared by
//! the client and the daemon, not a public API): it may change with any version, which is why
//! both sides refuse to talk unless their versions are equal.
//!
//! One message per `SOCK_SEQPACKET` packet, at most [`MAX_MESSAGE`] bytes:
//!
//! ```text
//! magic: u32 = 0x5053_5453 ("STSP")  kind: u16  reserved: u16 = 0  body_len: u32  body
//! ```
//!
//! Integers are little-endian; strings are a `u16` byte length followed by UTF-8. Decoding is
//! strict and bounded: anything that is not exactly one well-formed message is a
//! [`ProtocolError`], never a panic. Descriptors travel as `SCM_RIGHTS` next to the messages
//! that need them ([`Message::fd_count`]: the images directory, and for a `Restore` with
//! [`RESTORE_TERMINAL`] the requester's terminal after it); [`recv_fds`] enforces that too.
//!
//! Versions: the protocol version is the workspace's (0.2.0 added [`RESTORE_TERMINAL`]).

use stasis_sys::socket as sock;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// `"STSP"` read as a little-endian `u32`.
pub const MAGIC: u32 = 0x5053_5453;
/// Size of the fixed header: magic, kind, reserved, body length.
pub const HEADER_LEN: usize = 12;
/// Largest message, header included.
pub const MAX_MESSAGE: usize = 4096;
/// The protocol version both sides announce: the shared workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Message kinds on the wire.
pub mod kind {
    pub const HELLO: u16 = 1;
    pub const WELCOME: u16 = 2;
    pub const DUMP_SELF: u16 = 3;
    pub const DUMP_PID: u16 = 4;
    pub const RESTORE: u16 = 5;
    pub const DONE: u16 = 6;
    pub const STARTED: u16 = 7;
    pub const EXITED: u16 = 8;
    pub const FAILURE: u16 = 9;
}

/// `DumpSelf` flag: dump the caller's children too.
pub const DUMP_WITH_CHILDREN: u32 = 1 << 0;
/// `DumpSelf`/`DumpPid` flag: kill the dumped process afterwards (else it runs on).
pub const DUMP_KILL: u32 = 1 << 1;
/// `Restore` flag: answer `Started` and do not wait for the restored process.
pub const RESTORE_DETACH: u32 = 1 << 0;
/// `Restore` flag: a second descriptor follows the images directory, the requester's
/// terminal, to attach a job that ran on a terminal outside its tree to (a session of its
/// own with that terminal as its controlling terminal, its group in the foreground). The
/// daemon never opens a terminal by path: this descriptor is the only terminal a restore
/// through it can get.
pub const RESTORE_TERMINAL: u32 = 1 << 1;

/// `Done` outcome in the original process after the dump.
pub const OUTCOME_DUMPED: u32 = 0;
/// `Done` outcome in a process restored from the images (queued by the restorer).
pub const OUTCOME_RESTORED: u32 = 1;

/// Longest `Failure` message text that still fits in one message.
pub const MAX_FAILURE_TEXT: usize = MAX_MESSAGE - HEADER_LEN - 4 - 2;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// client → daemon, first message.
    Hello { version: String },
    /// daemon → client, answer to `Hello`.
    Welcome { version: String },
    /// client → daemon, with the images directory as `SCM_RIGHTS`. `conn_fd` is the client's
    /// own descriptor number of this connection.
    DumpSelf { flags: u32, conn_fd: i32 },
    /// client → daemon, with the images directory: dump another process of the caller's.
    DumpPid { pid: i32, flags: u32 },
    /// client → daemon, with the images directory (and, with [`RESTORE_TERMINAL`], the
    /// caller's terminal): restore as the caller.
    Restore { flags: u32 },
    /// daemon → client: [`OUTCOME_DUMPED`] or [`OUTCOME_RESTORED`].
    Done { outcome: u32 },
    /// daemon → client: the restored process runs.
    Started { pid: i32 },
    /// daemon → client: the restored process ended (exit code, or 128 + signal).
    Exited { status: i32 },
    /// daemon → client: the request failed; `code` is one of [`crate::code`] or `-errno`.
    Failure { code: i32, message: String },
}

impl Message {
    /// The kind number on the wire.
    pub fn kind(&self) -> u16 {
        match self {
            Message::Hello { .. } => kind::HELLO,
            Message::Welcome { .. } => kind::WELCOME,
            Message::DumpSelf { .. } => kind::DUMP_SELF,
            Message::DumpPid { .. } => kind::DUMP_PID,
            Message::Restore { .. } => kind::RESTORE,
            Message::Done { .. } => kind::DONE,
            Message::Started { .. } => kind::STARTED,
            Message::Exited { .. } => kind::EXITED,
            Message::Failure { .. } => kind::FAILURE,
        }
    }

    /// The message's name, for error messages.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind()).unwrap_or("unknown")
    }

    /// Whether this message travels with descriptors (the images directory first).
    pub fn carries_fd(&self) -> bool {
        self.fd_count() > 0
    }

    /// How many descriptors travel with this message: the images directory for the
    /// requests, and the terminal after it for a `Restore` with [`RESTORE_TERMINAL`].
    pub fn fd_count(&self) -> usize {
        match self {
            Message::Restore { flags } if flags & RESTORE_TERMINAL != 0 => 2,
            _ => usize::from(kind_carries_fd(self.kind())),
        }
    }

    /// A `Failure` whose text is cut (at a character boundary) to fit in one message.
    pub fn failure(code: i32, message: impl Into<String>) -> Message {
        let mut message = message.into();
        if message.len() > MAX_FAILURE_TEXT {
            let mut end = MAX_FAILURE_TEXT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Message::Failure { code, message }
    }
}

fn kind_name(k: u16) -> Option<&'static str> {
    Some(match k {
        kind::HELLO => "Hello",
        kind::WELCOME => "Welcome",
        kind::DUMP_SELF => "DumpSelf",
        kind::DUMP_PID => "DumpPid",
        kind::RESTORE => "Restore",
        kind::DONE => "Done",
        kind::STARTED => "Started",
        kind::EXITED => "Exited",
        kind::FAILURE => "Failure",
        _ => return None,
    })
}

fn kind_carries_fd(k: u16) -> bool {
    matches!(k, kind::DUMP_SELF | kind::DUMP_PID | kind::RESTORE)
}

/// The text a daemon sends in a `Failure` with [`crate::code::VERSION`]; the client reads the daemon's
/// version back out of it with [`parse_version_mismatch`].
pub fn version_mismatch_text(client: &str, daemon: &str) -> String {
    format!("version mismatch: client {client}, daemon {daemon}")
}

/// Reads `(client, daemon)` back from a [`version_mismatch_text`].
pub fn parse_version_mismatch(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("version mismatch: client ")?;
    let (client, daemon) = rest.split_once(", daemon ")?;
    Some((client, daemon))
}

/// Why bytes or descriptors are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message of {len} bytes or more exceeds the {MAX_MESSAGE}-byte limit")]
    TooLong { len: usize },
    #[error("message of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    #[error("reserved header field is {0}, not 0")]
    BadReserved(u16),
    #[error("header announces {declared} body bytes but the packet holds {actual}")]
    LengthMismatch { declared: u32, actual: usize },
    #[error("{kind} message is truncated in field `{field}`")]
    Truncated {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{count} trailing bytes after a {kind} message")]
    TrailingBytes { kind: &'static str, count: usize },
    #[error("field `{field}` of a {kind} message is not valid UTF-8")]
    InvalidUtf8 {
        kind: &'static str,
        field: &'static str,
    },
    #[error("string field `{field}` of {len} bytes does not fit in a message")]
    StringTooLong { field: &'static str, len: usize },
    #[error("a {kind} message must carry {expected} descriptor(s), got {got}")]
    WrongFdCount {
        kind: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("too many descriptors were passed with one message; the extra ones were discarded")]
    FdsTruncated,
    #[error("expected {expected}, got a {got} message")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("unknown outcome {0} in a Done message")]
    BadOutcome(u32),
    #[error("the daemon reported a protocol error: {0}")]
    Remote(String),
}

/// Encodes one message; fails if it would exceed [`MAX_MESSAGE`].
pub fn encode(msg: &Message) -> Result<Vec<u8>, ProtocolError> {
    let mut body = Vec::new();
    fn put_str(body: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), ProtocolError> {
        let len = u16::try_from(s.len()).map_err(|_| ProtocolError::StringTooLong {
            field,
            len: s.len(),
        })?;
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(s.as_bytes());
        Ok(())
    }
    match msg {
        Message::Hello { version } | Message::Welcome { version } => {
            put_str(&mut body, "version", version)?
        }
        Message::DumpSelf { flags, conn_fd } => {
            body.extend_from_slice(&flags.to_le_bytes());
            body.extend_from_slice(&conn_fd.to_le_bytes());
        }
        Message::DumpPid { pid, flags } => {
            body.extend_from_slice(&pid.to_le_bytes());
            body.extend_from_slice(&flags.to_le_bytes());
        }
        Message::Restore { flags } => body.extend_from_slice(&flags.to_le_bytes()),
        Message::Done { outcome } => body.extend_from_slice(&outcome.to_le_bytes()),
        Message::Started { pid } => body.extend_from_slice(&pid.to_le_bytes()),
        Message::Exited { status } => body.extend_from_slice(&status.to_le_bytes()),
        Message::Failure { code, message } => {
            body.extend_from_slice(&code.to_le_bytes());
            put_str(&mut body, "message", message)?;
        }
    }
    let total = HEADER_LEN + body.len();
    if total > MAX_MESSAGE {
        return Err(ProtocolError::TooLong { len: total });
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&msg.kind().to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    // Cannot overflow: body.len() < MAX_MESSAGE.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A bounds-checked cursor over a message body.
struct Reader<'a> {
    buf: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(ProtocolError::Truncated {
                kind: self.kind,
                field,
            })?;
        self.buf = rest;
        Ok(*head)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        self.take::<4>(field).map(u32::from_le_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, ProtocolError> {
        self.take::<4>(field).map(i32::from_le_bytes)
    }

    fn string(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let len = usize::from(u16::from_le_bytes(self.take::<2>(field)?));
        if self.buf.len() < len {
            return Err(ProtocolError::Truncated {
                kind: self.kind,
                field,
            });
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtocolError::InvalidUtf8 {
            kind: self.kind,
            field,
        })
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                kind: self.kind,
                count: self.buf.len(),
            })
        }
    }
}

/// Decodes exactly one message from `packet` (a whole received packet).
pub fn decode(packet: &[u8]) -> Result<Message, ProtocolError> {
    if packet.len() > MAX_MESSAGE {
        return Err(ProtocolError::TooLong { len: packet.len() });
    }
    let Some((header, body)) = packet.split_first_chunk::<HEADER_LEN>() else {
        return Err(ProtocolError::ShortHeader { len: packet.len() });
    };
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let k = u16::from_le_bytes([header[4], header[5]]);
    let kind = kind_name(k).ok_or(ProtocolError::UnknownKind(k))?;
    let reserved = u16::from_le_bytes([header[6], header[7]]);
    if reserved != 0 {
        return Err(ProtocolError::BadReserved(reserved));
    }
    let declared = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if usize::try_from(declared).ok() != Some(body.len()) {
        return Err(ProtocolError::LengthMismatch {
            declared,
            actual: body.len(),
        });
    }
    let mut r = Reader { buf: body, kind };
    let msg = match k {
        kind::HELLO => Message::Hello {
            version: r.string("version")?,
        },
        kind::WELCOME => Message::Welcome {
            version: r.string("version")?,
        },
        kind::DUMP_SELF => Message::DumpSelf {
            flags: r.u32("flags")?,
            conn_fd: r.i32("conn_fd")?,
        },
        kind::DUMP_PID => Message::DumpPid {
            pid: r.i32("pid")?,
            flags: r.u32("flags")?,
        },
        kind::RESTORE => Message::Restore {
            flags: r.u32("flags")?,
        },
        kind::DONE => Message::Done {
            outcome: r.u32("outcome")?,
        },
        kind::STARTED => Message::Started { pid: r.i32("pid")? },
        kind::EXITED => Message::Exited {
            status: r.i32("status")?,
        },
        kind::FAILURE => Message::Failure {
            code: r.i32("code")?,
            message: r.string("message")?,
        },
        // kind_name above accepted only the kinds matched here.
        _ => return Err(ProtocolError::UnknownKind(k)),
    };
    r.finish()?;
    Ok(msg)
}

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{op} on the stasis connection: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("connection closed by the peer")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Sends `msg` as one packet, with `pass` as `SCM_RIGHTS`. A message that
/// [carries a descriptor](Message::carries_fd) must be given exactly one, others none
/// ([`send_fds`] for a message with two).
pub fn send(
    fd: BorrowedFd<'_>,
    msg: &Message,
    pass: Option<BorrowedFd<'_>>,
) -> Result<(), TransportError> {
    let fds: Vec<BorrowedFd<'_>> = pass.into_iter().collect();
    send_fds(fd, msg, &fds)
}

/// Sends `msg` as one packet, with `fds` as `SCM_RIGHTS`, in order: exactly
/// [`Message::fd_count`] of them.
pub fn send_fds(
    fd: BorrowedFd<'_>,
    msg: &Message,
    fds: &[BorrowedFd<'_>],
) -> Result<(), TransportError> {
    let expected = msg.fd_count();
    if expected != fds.len() {
        return Err(ProtocolError::WrongFdCount {
            kind: msg.name(),
            expected,
            got: fds.len(),
        }
        .into());
    }
    let bytes = encode(msg)?;
    loop {
        match sock::send_with_fds(fd, &bytes, fds) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(TransportError::Io {
                    op: "send",
                    source: io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short send: {n} of {} bytes", bytes.len()),
                    ),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_closed(&e) => return Err(TransportError::Closed),
            Err(source) => return Err(TransportError::Io { op: "send", source }),
        }
    }
}

/// Receives one message and the descriptor that came with it, retrying on `EINTR`: as
/// [`recv_fds`], and a message with two descriptors (a `Restore` with [`RESTORE_TERMINAL`])
/// is an error here ([`ProtocolError::WrongFdCount`]).
pub fn recv(fd: BorrowedFd<'_>) -> Result<(Message, Option<OwnedFd>), TransportError> {
    let (msg, fds) = recv_fds(fd)?;
    if fds.len() > 1 {
        return Err(ProtocolError::WrongFdCount {
            kind: msg.name(),
            expected: 1,
            got: fds.len(),
        }
        .into());
    }
    Ok((msg, fds.into_iter().next()))
}

/// Receives one message and the descriptors that came with it, in order, retrying on
/// `EINTR`. A packet longer than [`MAX_MESSAGE`], or a descriptor count other than the
/// message's [`Message::fd_count`], is an error (and every descriptor received is closed).
/// End of connection is [`TransportError::Closed`].
pub fn recv_fds(fd: BorrowedFd<'_>) -> Result<(Message, Vec<OwnedFd>), TransportError> {
    let mut buf = [0u8; MAX_MESSAGE + 1];
    let mut reset_seen = false;
    let got = loop {
        match sock::recv_with_fds(fd, &mut buf) {
            Ok(r) => break r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A peer that closed without reading what we sent leaves ECONNRESET, which the
            // kernel reports (once) before the packets it had sent us: read those.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !reset_seen => {
                reset_seen = true;
                continue;
            }
            Err(e) if is_closed(&e) => return Err(TransportError::Closed),
            Err(source) => return Err(TransportError::Io { op: "recv", source }),
        }
    };
    // Every early return below drops `got.fds`, closing whatever arrived.
    if got.len == 0 && !got.truncated {
        return Err(TransportError::Closed);
    }
    if got.truncated || got.len > MAX_MESSAGE {
        return Err(ProtocolError::TooLong { len: got.len }.into());
    }
    if got.fds_truncated {
        return Err(ProtocolError::FdsTruncated.into());
    }
    let msg = decode(&buf[..got.len])?;
    let expected = msg.fd_count();
    if got.fds.len() != expected {
        return Err(ProtocolError::WrongFdCount {
            kind: msg.name(),
            expected,
            got: got.fds.len(),
        }
        .into());
    }
    Ok((msg, got.fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello {
                version: VERSION.into(),
            },
            Message::Hello {
                version: String::new(),
            },
            Message::Welcome {
                version: "1.2.3-ß".into(),
            },
            Message::DumpSelf {
                flags: DUMP_WITH_CHILDREN | DUMP_KILL,
                conn_fd: 7,
            },
            Message::DumpSelf {
                flags: 0,
                conn_fd: -1,
            },
            Message::DumpPid {
                pid: 4242,
                flags: DUMP_KILL,
            },
            Message::Restore {
                flags: RESTORE_DETACH,
            },
            Message::Restore {
                flags: RESTORE_DETACH | RESTORE_TERMINAL,
            },
            Message::Done {
                outcome: OUTCOME_DUMPED,
            },
            Message::Done {
                outcome: OUTCOME_RESTORED,
            },
            Message::Started { pid: i32::MAX },
            Message::Exited { status: 128 + 9 },
            Message::Failure {
                code: code::REFUSED,
                message: "not yours".into(),
            },
            Message::failure(code::DUMP, "x".repeat(10_000)),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_messages() {
            let bytes = encode(&m).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE);
            assert_eq!(decode(&bytes).unwrap(), m, "{m:?}");
        }
    }

    #[test]
    fn header_layout_is_fixed() {
        let bytes = encode(&Message::Done { outcome: 1 }).unwrap();
        assert_eq!(
            bytes,
            [b'S', b'T', b'S', b'P', 6, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0]
        );
        let bytes = encode(&Message::Hello {
            version: "ab".into(),
        })
        .unwrap();
        assert_eq!(&bytes[12..], [2, 0, b'a', b'b']);
    }

    #[test]
    fn failure_text_is_cut_to_fit_at_a_char_boundary() {
        let m = Message::failure(-1, "é".repeat(4000));
        let Message::Failure { message, .. } = &m else {
            unreachable!()
        };
        assert!(message.len() <= MAX_FAILURE_TEXT);
        assert_eq!(encode(&m).unwrap().len(), HEADER_LEN + 6 + message.len());
        // Without the helper, an oversized message refuses to encode.
        let big = Message::Failure {
            code: -1,
            message: "x".repeat(5000),
        };
        assert!(matches!(encode(&big), Err(ProtocolError::TooLong { .. })));
        let huge = Message::Hello {
            version: "x".repeat(70_000),
        };
        assert!(matches!(
            encode(&huge),
            Err(ProtocolError::StringTooLong { .. })
        ));
    }

    fn valid() -> Vec<u8> {
        encode(&Message::Failure {
            code: -5,
            message: "abc".into(),
        })
        .unwrap()
    }

    #[test]
    fn malformations_are_errors() {
        use ProtocolError as E;
        // Bad magic.
        let mut b = valid();
        b[0] ^= 1;
        assert!(matches!(decode(&b), Err(E::BadMagic(_))));
        // Unknown kinds.
        for k in [0u16, 10, 0xffff] {
            let mut b = valid();
            b[4..6].copy_from_slice(&k.to_le_bytes());
            assert_eq!(decode(&b), Err(E::UnknownKind(k)));
        }
        // Reserved not zero.
        let mut b = valid();
        b[6] = 1;
        assert_eq!(decode(&b), Err(E::BadReserved(1)));
        // body_len larger / smaller than the packet.
        let mut b = valid();
        b[8] += 1;
        assert!(matches!(decode(&b), Err(E::LengthMismatch { .. })));
        let mut b = valid();
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&b), Err(E::LengthMismatch { .. })));
        // Short header, empty packet.
        assert!(matches!(decode(&[]), Err(E::ShortHeader { len: 0 })));
        assert!(matches!(decode(&valid()[..11]), Err(E::ShortHeader { .. })));
        // Truncated fields (header fixed up so only the body is short).
        for cut in 0..(valid().len() - HEADER_LEN) {
            let mut b = valid();
            b.truncate(HEADER_LEN + cut);
            b[8..12].copy_from_slice(&(cut as u32).to_le_bytes());
            assert!(
                matches!(decode(&b), Err(E::Truncated { .. })),
                "cut {cut}: {:?}",
                decode(&b)
            );
        }
        // Trailing bytes.
        let mut b = valid();
        b.push(0);
        let n = (b.len() - HEADER_LEN) as u32;
        b[8..12].copy_from_slice(&n.to_le_bytes());
        assert_eq!(
            decode(&b),
            Err(E::TrailingBytes {
                kind: "Failure",
                count: 1
            })
        );
        // Invalid UTF-8.
        let mut b = valid();
        let last = b.len() - 1;
        b[last] = 0xff;
        assert!(matches!(decode(&b), Err(E::InvalidUtf8 { .. })));
        // Too long.
        let mut b = vec![0u8; MAX_MESSAGE + 1];
        b[..4].copy_from_slice(&MAGIC.to_le_bytes());
        assert!(matches!(decode(&b), Err(E::TooLong { .. })));
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn mutated_encodings_never_panic() {
        let seeds: Vec<Vec<u8>> = all_messages().iter().map(|m| encode(m).unwrap()).collect();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut decoded_ok = 0usize;
        for _ in 0..100_000 {
            let mut b = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(6) {
                    0 if !b.is_empty() => {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                    1 if !b.is_empty() => {
                        let i = rng.below(b.len());
                        b[i] = rng.next() as u8;
                    }
                    2 => b.truncate(rng.below(b.len() + 1)),
                    3 => {
                        let i = rng.below(b.len() + 1);
                        b.insert(i, rng.next() as u8);
                    }
                    4 if b.len() >= HEADER_LEN => {
                        // Keep body_len consistent so the body parsers get exercised.
                        let n = (b.len() - HEADER_LEN) as u32;
                        b[8..12].copy_from_slice(&n.to_le_bytes());
                    }
                    _ => b.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
                }
            }
            if let Ok(m) = decode(&b) {
                decoded_ok += 1;
                // Whatever decodes re-encodes to the same bytes: decoding is exact.
                assert_eq!(encode(&m).unwrap(), b);
            }
        }
        assert!(decoded_ok > 0);
    }

    #[test]
    fn version_mismatch_text_parses_back() {
        let t = version_mismatch_text("0.1.0", "0.2.0");
        assert_eq!(parse_version_mismatch(&t), Some(("0.1.0", "0.2.0")));
        assert_eq!(parse_version_mismatch("something else"), None);
    }

    #[test]
    fn descriptors_must_match_the_kind() {
        let (a, b) = pair();
        use std::os::fd::AsFd;
        // A DumpSelf without its directory is refused before anything is sent.
        let e = send(
            a.as_fd(),
            &Message::DumpSelf {
                flags: 0,
                conn_fd: 3,
            },
            None,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            TransportError::Protocol(ProtocolError::WrongFdCount { .. })
        ));
        let dir = std::fs::File::open("/").unwrap();
        let e = send(a.as_fd(), &Message::Done { outcome: 0 }, Some(dir.as_fd())).unwrap_err();
        assert!(matches!(e, TransportError::Protocol(_)));
        // Raw packets that break the rule are refused by recv.
        let bytes = encode(&Message::Done { outcome: 0 }).unwrap();
        sock::send_with_fds(a.as_fd(), &bytes, &[dir.as_fd()]).unwrap();
        assert!(matches!(
            recv(b.as_fd()),
            Err(TransportError::Protocol(ProtocolError::WrongFdCount {
                got: 1,
                ..
            }))
        ));
        let bytes = encode(&Message::Restore { flags: 0 }).unwrap();
        sock::send_with_fds(a.as_fd(), &bytes, &[dir.as_fd(), dir.as_fd()]).unwrap();
        assert!(matches!(
            recv(b.as_fd()),
            Err(TransportError::Protocol(ProtocolError::WrongFdCount {
                got: 2,
                ..
            }))
        ));
        // A Restore with a terminal carries two, in order; recv alone refuses it.
        let with_tty = Message::Restore {
            flags: RESTORE_TERMINAL,
        };
        assert!(send(a.as_fd(), &with_tty, Some(dir.as_fd())).is_err());
        let tty = std::fs::File::open("/dev/null").unwrap();
        send_fds(a.as_fd(), &with_tty, &[dir.as_fd(), tty.as_fd()]).unwrap();
        let (m, fds) = recv_fds(b.as_fd()).unwrap();
        assert_eq!(m, with_tty);
        assert_eq!(fds.len(), 2);
        let rdev = |f: &OwnedFd| {
            use std::os::unix::fs::MetadataExt;
            std::fs::File::from(f.try_clone().unwrap())
                .metadata()
                .unwrap()
                .rdev()
        };
        assert_eq!(
            rdev(&fds[1]),
            rdev(&OwnedFd::from(tty.try_clone().unwrap()))
        );
        send_fds(a.as_fd(), &with_tty, &[dir.as_fd(), tty.as_fd()]).unwrap();
        assert!(matches!(
            recv(b.as_fd()),
            Err(TransportError::Protocol(ProtocolError::WrongFdCount {
                got: 2,
                ..
            }))
        ));
        sock::send_with_fds(a.as_fd(), &encode(&with_tty).unwrap(), &[dir.as_fd()]).unwrap();
        assert!(matches!(
            recv_fds(b.as_fd()),
            Err(TransportError::Protocol(ProtocolError::WrongFdCount {
                expected: 2,
                got: 1,
                ..
            }))
        ));
        // The well-formed case.
        send(a.as_fd(), &Message::Restore { flags: 1 }, Some(dir.as_fd())).unwrap();
        let (m, fd) = recv(b.as_fd()).unwrap();
        assert_eq!(m, Message::Restore { flags: 1 });
        assert!(fd.is_some());
        // Oversized and empty packets.
        sock::send_with_fds(a.as_fd(), &[0u8; MAX_MESSAGE + 100], &[]).unwrap();
        assert!(matches!(
            recv(b.as_fd()),
            Err(TransportError::Protocol(ProtocolError::TooLong { .. }))
        ));
        drop(a);
        assert!(matches!(recv(b.as_fd()), Err(TransportError::Closed)));
    }

    /// A connected SOCK_SEQPACKET pair through a listener (the sys crate's own API).
    fn pair() -> (OwnedFd, OwnedFd) {
        use std::os::fd::AsFd;
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stasis-proto-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let l = sock::seqpacket_listen(&path, 1).unwrap();
        let a = sock::seqpacket_connect(&path).unwrap();
        let b = sock::accept(l.as_fd()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (a, b)
    }
}
