//! The client against a fake daemon: a `SOCK_SEQPACKET` listener on a temporary path, answered by
//! a thread of the test. Each test has its own socket, passed through the options (never through
//! `$STASIS_SOCKET`: tests run in parallel).
// Helpers outside #[test] functions panic on setup failures on purpose.
#![allow(clippy::unwrap_used)]

use stasis_client::protocol::{self, Message, TransportError, VERSION};
use stasis_client::{code, DumpOptions, Error, Hooks, Outcome, ProtocolError, RestoreOptions};
use stasis_sys::socket as sock;
use stasis_test_infra::WorkDir;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A predicate on an error, for table-driven tests.
type Check<T> = fn(&T) -> bool;

/// A temporary directory holding the fake daemon's socket and an images directory (in the
/// system's temporary directory: socket paths must stay short).
struct Scratch {
    root: WorkDir,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let root = WorkDir::unique(&std::env::temp_dir(), &format!("stasis-client-{name}"));
        root.mkdir("images");
        Scratch { root }
    }
    fn socket(&self) -> PathBuf {
        self.root.join("d.sock")
    }
    fn images(&self) -> File {
        File::open(self.root.join("images")).unwrap()
    }
    fn opts(&self) -> DumpOptions {
        DumpOptions {
            socket: Some(self.socket()),
            ..Default::default()
        }
    }
}

/// Listens on the scratch socket (before returning, so the client cannot race it) and serves
/// exactly one connection with `serve` on a thread.
fn fake_daemon<T: Send + 'static>(
    s: &Scratch,
    serve: impl FnOnce(OwnedFd) -> T + Send + 'static,
) -> JoinHandle<T> {
    let listener = sock::seqpacket_listen(&s.socket(), 4).unwrap();
    std::thread::spawn(move || {
        let conn = sock::accept(listener.as_fd()).unwrap();
        serve(conn)
    })
}

/// The daemon's side of the handshake, checking the client's Hello.
fn welcome(conn: &OwnedFd) {
    let (hello, fd) = protocol::recv(conn.as_fd()).unwrap();
    assert_eq!(
        hello,
        Message::Hello {
            version: VERSION.into()
        }
    );
    assert!(fd.is_none());
    reply(
        conn,
        Message::Welcome {
            version: VERSION.into(),
        },
    );
}

fn reply(conn: &OwnedFd, msg: Message) {
    protocol::send(conn.as_fd(), &msg, None).unwrap();
}

/// Handshake, take the request (with its descriptor), answer `answer`.
fn answer_request(conn: &OwnedFd, answer: Message) -> (Message, OwnedFd) {
    welcome(conn);
    let (req, fd) = protocol::recv(conn.as_fd()).unwrap();
    reply(conn, answer);
    (req, fd.expect("request without a descriptor"))
}

#[test]
fn dump_self_returns_dumped_and_restored() {
    for (outcome, want) in [
        (protocol::OUTCOME_DUMPED, Outcome::Dumped),
        (protocol::OUTCOME_RESTORED, Outcome::Restored),
    ] {
        let s = Scratch::new("outcome");
        let d = fake_daemon(&s, move |c| answer_request(&c, Message::Done { outcome }).0);
        let got = stasis_client::dump_self(s.images().as_fd(), &s.opts()).unwrap();
        assert_eq!(got, want);
        let req = d.join().unwrap();
        assert!(matches!(req, Message::DumpSelf { flags: 0, .. }), "{req:?}");
    }
}

#[test]
fn flags_are_sent() {
    let s = Scratch::new("flags");
    let d = fake_daemon(&s, |c| answer_request(&c, Message::Done { outcome: 0 }).0);
    let opts = DumpOptions {
        with_children: true,
        kill: true,
        ..s.opts()
    };
    stasis_client::dump_self(s.images().as_fd(), &opts).unwrap();
    let req = d.join().unwrap();
    assert!(
        matches!(req, Message::DumpSelf { flags, .. } if flags == protocol::DUMP_WITH_CHILDREN | protocol::DUMP_KILL),
        "{req:?}"
    );
}

/// The images directory arrives as a descriptor of the very same directory, and `conn_fd` is
/// the client's descriptor of this connection: its socket inode matches, and a packet sent
/// through a copy of it (taken with pidfd_getfd, as a daemon could) arrives at the daemon's end.
#[test]
fn dir_fd_arrives_and_conn_fd_is_the_clients_end() {
    let s = Scratch::new("fds");
    let images = s.images();
    let want = images.metadata().unwrap();
    let d = fake_daemon(&s, |conn| {
        welcome(&conn);
        let (req, dir) = protocol::recv(conn.as_fd()).unwrap();
        let Message::DumpSelf { conn_fd, .. } = req else {
            panic!("{req:?}")
        };
        let dir = File::from(dir.unwrap()).metadata().unwrap();

        let cred = sock::peer_cred(conn.as_fd()).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        let link = std::fs::read_link(format!("/proc/self/fd/{conn_fd}")).unwrap();
        let pidfd = stasis_sys::process::pidfd_open(cred.pid).unwrap();
        let copy = stasis_sys::process::pidfd_getfd(pidfd.as_fd(), conn_fd).unwrap();
        let copy_ino = File::from(copy.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino();
        sock::send_with_fds(copy.as_fd(), b"ping", &[]).unwrap();
        let mut buf = [0u8; 16];
        let got = sock::recv_with_fds(conn.as_fd(), &mut buf).unwrap();
        let pinged = &buf[..got.len] == b"ping";

        reply(&conn, Message::Done { outcome: 0 });
        (dir.dev(), dir.ino(), link, copy_ino, pinged)
    });
    let out = stasis_client::dump_self(images.as_fd(), &s.opts()).unwrap();
    assert_eq!(out, Outcome::Dumped);
    let (dev, ino, link, copy_ino, pinged) = d.join().unwrap();
    assert_eq!((dev, ino), (want.dev(), want.ino()));
    assert_eq!(link.to_str().unwrap(), format!("socket:[{copy_ino}]"));
    assert!(
        pinged,
        "a packet sent on conn_fd did not reach the daemon's end"
    );
}

#[test]
fn version_mismatch_names_both_versions() {
    let s = Scratch::new("welcome");
    let d = fake_daemon(&s, |c| {
        protocol::recv(c.as_fd()).unwrap();
        reply(
            &c,
            Message::Welcome {
                version: "9.9.9".into(),
            },
        );
        // Nothing more may come: the client hangs up.
        matches!(protocol::recv(c.as_fd()), Err(TransportError::Closed))
    });
    let e = stasis_client::dump_self(s.images().as_fd(), &s.opts()).unwrap_err();
    assert!(
        d.join().unwrap(),
        "the client sent a request after a bad Welcome"
    );
    assert!(matches!(e, Error::VersionMismatch { .. }), "{e:?}");
    assert_eq!(e.code(), code::VERSION);
    let text = e.to_string();
    assert!(text.contains(VERSION) && text.contains("9.9.9"), "{text}");

    // The daemon refusing the Hello itself.
    let s = Scratch::new("refuse-hello");
    let d = fake_daemon(&s, |c| {
        protocol::recv(c.as_fd()).unwrap();
        reply(
            &c,
            Message::failure(
                code::VERSION,
                protocol::version_mismatch_text(VERSION, "0.0.1"),
            ),
        );
    });
    let e = stasis_client::dump_self(s.images().as_fd(), &s.opts()).unwrap_err();
    d.join().unwrap();
    assert_eq!(e.code(), code::VERSION);
    let text = e.to_string();
    assert!(text.contains(VERSION) && text.contains("0.0.1"), "{text}");
}

#[test]
fn failures_map_to_errors_and_codes() {
    let cases: [(i32, Check<Error>); 11] = [
        (code::REFUSED, |e| matches!(e, Error::Refused(_))),
        (code::RESTORE, |e| matches!(e, Error::RestoreFailed(_))),
        (code::IMAGE, |e| matches!(e, Error::BadImages(_))),
        (code::ENVIRONMENT, |e| matches!(e, Error::Environment(_))),
        (code::UNSUPPORTED, |e| matches!(e, Error::Unsupported(_))),
        (code::DUMP, |e| matches!(e, Error::DumpFailed(_))),
        (code::DAEMON, |e| matches!(e, Error::Daemon(_))),
        (code::BUSY, |e| matches!(e, Error::Busy(_))),
        (code::INVALID, |e| matches!(e, Error::Invalid(_))),
        (code::PROTOCOL, |e| {
            matches!(e, Error::Protocol(ProtocolError::Remote(_)))
        }),
        (-13, |e| matches!(e, Error::Io { .. })),
    ];
    for (c, is_right) in cases {
        let s = Scratch::new("failure");
        let d = fake_daemon(&s, move |conn| {
            answer_request(&conn, Message::failure(c, format!("reason {c}")))
        });
        let e = stasis_client::dump_self(s.images().as_fd(), &s.opts()).unwrap_err();
        d.join().unwrap();
        assert!(is_right(&e), "code {c}: {e:?}");
        assert_eq!(e.code(), c);
        assert!(e.to_string().contains(&format!("reason {c}")), "{e}");
    }
}

/// A busy daemon answers a Failure with [`code::BUSY`] as soon as it accepts, and closes the
/// connection without reading anything: before or after the client's Hello went out, the
/// client reports "busy", for a self-dump and a restore alike.
#[test]
fn busy_daemon_turns_the_connection_away() {
    // Without waiting, the answer and the close race the client's Hello: several rounds.
    for hello_first in [false; 20].into_iter().chain([true]) {
        let s = Scratch::new("busy");
        let d = fake_daemon(&s, move |conn| {
            if hello_first {
                // Wait until the Hello is queued (but leave it unread).
                let ready = stasis_sys::process::poll_readable(&[conn.as_fd()], 10_000).unwrap();
                assert!(ready[0]);
            }
            reply(
                &conn,
                Message::failure(code::BUSY, "busy: 2 requests of uid 1000 already"),
            );
        });
        let e = stasis_client::dump_self(s.images().as_fd(), &s.opts()).unwrap_err();
        d.join().unwrap();
        assert!(
            matches!(&e, Error::Busy(m) if m.contains("uid 1000")),
            "{e:?}"
        );
        assert_eq!(e.code(), code::BUSY);
        assert!(e.to_string().contains("busy"), "{e}");
    }
    let s = Scratch::new("busy-restore");
    let d = fake_daemon(&s, |conn| {
        reply(&conn, Message::failure(code::BUSY, "busy"))
    });
    let opts = RestoreOptions {
        socket: Some(s.socket()),
        ..Default::default()
    };
    let e = stasis_client::restore(s.images().as_fd(), &opts).unwrap_err();
    d.join().unwrap();
    assert_eq!(e.code(), code::BUSY, "{e:?}");
}

#[test]
fn connection_closed_mid_request_is_a_daemon_error() {
    // Closed after the request arrived (the worker died).
    let s = Scratch::new("closed");
    let d = fake_daemon(&s, |c| {
        welcome(&c);
        let _ = protocol::recv(c.as_fd()).unwrap();
    });
    let e = stasis_client::dump_self(s.images().as_fd(), &s.opts()).unwrap_err();
    d.join().unwrap();
    assert!(
        matches!(&e, Error::Daemon(m) if m.contains("closed")),
        "{e:?}"
    );
    assert_eq!(e.code(), code::DAEMON);

    // Closed before the Welcome.
    let s = Scratch::new("closed-early");
    let d = fake_daemon(&s, drop);
    let e = stasis_client::dump_self(s.images().as_fd(), &s.opts()).unwrap_err();
    d.join().unwrap();
    assert_eq!(e.code(), code::DAEMON, "{e:?}");
}

#[test]
fn garbage_replies_are_protocol_errors() {
    let cases: Vec<(Vec<u8>, Check<ProtocolError>)> = vec![
        (vec![0xab; protocol::MAX_MESSAGE + 500], |p| {
            matches!(p, ProtocolError::TooLong { .. })
        }),
        (b"definitely not a stasis message".to_vec(), |p| {
            matches!(p, ProtocolError::BadMagic(_))
        }),
        (
            protocol::encode(&Message::Done { outcome: 7 }).unwrap(),
            |p| matches!(p, ProtocolError::BadOutcome(7)),
        ),
        (
            protocol::encode(&Message::Started { pid: 1 }).unwrap(),
            |p| matches!(p, ProtocolError::Unexpected { .. }),
        ),
    ];
    for (bytes, is_right) in cases {
        let s = Scratch::new("garbage");
        let d = fake_daemon(&s, move |c| {
            welcome(&c);
            let _ = protocol::recv(c.as_fd()).unwrap();
            sock::send_with_fds(c.as_fd(), &bytes, &[]).unwrap();
        });
        let e = stasis_client::dump_self(s.images().as_fd(), &s.opts()).unwrap_err();
        d.join().unwrap();
        match &e {
            Error::Protocol(p) => assert!(is_right(p), "{p:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.code(), code::PROTOCOL);
    }
}

#[derive(Default)]
struct Recorder {
    log: Vec<&'static str>,
    refuse: bool,
    /// Signalled by the fake daemon once it saw the client hang up.
    closed: Option<mpsc::Receiver<()>>,
}

impl Hooks for Recorder {
    fn before_checkpoint(&mut self) -> Result<(), String> {
        self.log.push("before_checkpoint");
        if self.refuse {
            Err("not now".into())
        } else {
            Ok(())
        }
    }
    fn after_dump(&mut self) {
        // The connection must already be closed when the hook runs.
        if let Some(rx) = &self.closed {
            if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
                self.log.push("connection closed");
            }
        }
        self.log.push("after_dump");
    }
    fn after_restore(&mut self) {
        self.log.push("after_restore");
    }
}

#[test]
fn hooks_run_in_order() {
    let s = Scratch::new("hooks");
    let (tx, rx) = mpsc::channel();
    let d = fake_daemon(&s, move |c| {
        answer_request(&c, Message::Done { outcome: 0 });
        if matches!(protocol::recv(c.as_fd()), Err(TransportError::Closed)) {
            tx.send(()).unwrap();
        }
    });
    let mut hooks = Recorder {
        closed: Some(rx),
        ..Default::default()
    };
    let out =
        stasis_client::dump_self_with_hooks(s.images().as_fd(), &s.opts(), &mut hooks).unwrap();
    d.join().unwrap();
    assert_eq!(out, Outcome::Dumped);
    assert_eq!(
        hooks.log,
        ["before_checkpoint", "connection closed", "after_dump"]
    );

    let s = Scratch::new("hooks-restored");
    let d = fake_daemon(&s, |c| {
        answer_request(&c, Message::Done { outcome: 1 });
    });
    let mut hooks = Recorder::default();
    let out =
        stasis_client::dump_self_with_hooks(s.images().as_fd(), &s.opts(), &mut hooks).unwrap();
    d.join().unwrap();
    assert_eq!(out, Outcome::Restored);
    assert_eq!(hooks.log, ["before_checkpoint", "after_restore"]);
}

#[test]
fn refusing_hook_sends_nothing() {
    let s = Scratch::new("hook-refuses");
    // The first connection the daemon sees must be the probe made after the call.
    let d = fake_daemon(&s, |c| protocol::recv(c.as_fd()).unwrap().0);
    let mut hooks = Recorder {
        refuse: true,
        ..Default::default()
    };
    let e =
        stasis_client::dump_self_with_hooks(s.images().as_fd(), &s.opts(), &mut hooks).unwrap_err();
    assert!(matches!(&e, Error::Aborted(m) if m == "not now"), "{e:?}");
    assert_eq!(e.code(), code::INVALID);
    assert_eq!(hooks.log, ["before_checkpoint"]);

    let probe = sock::seqpacket_connect(&s.socket()).unwrap();
    let hello = Message::Hello {
        version: "probe".into(),
    };
    protocol::send(probe.as_fd(), &hello, None).unwrap();
    assert_eq!(d.join().unwrap(), hello);
}

#[test]
fn bad_arguments_and_no_daemon() {
    let s = Scratch::new("args");
    // Nobody listens: a clean Connect error naming the path.
    let e = stasis_client::dump_self(s.images().as_fd(), &s.opts()).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert_eq!(e.code(), code::CONNECT);
    assert!(e.to_string().contains(s.socket().to_str().unwrap()), "{e}");

    // A regular file is not an images directory; refused before connecting.
    let file = File::open("/proc/self/status").unwrap();
    let e = stasis_client::dump_self(file.as_fd(), &s.opts()).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert_eq!(e.code(), code::INVALID);

    let e = stasis_client::dump_pid(0, s.images().as_fd(), false, Some(&s.socket())).unwrap_err();
    assert_eq!(e.code(), code::INVALID);
}

#[test]
fn dump_pid_request() {
    let s = Scratch::new("dump-pid");
    let images = s.images();
    let ino = images.metadata().unwrap().ino();
    let d = fake_daemon(&s, |c| {
        let (req, fd) = answer_request(&c, Message::Done { outcome: 0 });
        (req, File::from(fd).metadata().unwrap().ino())
    });
    stasis_client::dump_pid(4242, images.as_fd(), true, Some(&s.socket())).unwrap();
    let (req, got_ino) = d.join().unwrap();
    assert_eq!(
        req,
        Message::DumpPid {
            pid: 4242,
            flags: protocol::DUMP_KILL
        }
    );
    assert_eq!(got_ino, ino);
}

#[test]
fn restore_request_and_wait() {
    let s = Scratch::new("restore");
    let d = fake_daemon(&s, |c| {
        let (req, _) = answer_request(&c, Message::Started { pid: 31337 });
        reply(&c, Message::Exited { status: 128 + 9 });
        req
    });
    let opts = RestoreOptions {
        detach: false,
        socket: Some(s.socket()),
    };
    let restored = stasis_client::restore(s.images().as_fd(), &opts).unwrap();
    assert_eq!(restored.pid, 31337);
    assert!(restored.connection.as_raw_fd() >= 0);
    assert_eq!(restored.wait().unwrap(), 137);
    assert_eq!(d.join().unwrap(), Message::Restore { flags: 0 });

    let s = Scratch::new("restore-detach");
    let d = fake_daemon(&s, |c| answer_request(&c, Message::Started { pid: 5 }).0);
    let opts = RestoreOptions {
        detach: true,
        socket: Some(s.socket()),
    };
    let restored = stasis_client::restore(s.images().as_fd(), &opts).unwrap();
    assert_eq!(restored.pid, 5);
    assert_eq!(
        d.join().unwrap(),
        Message::Restore {
            flags: protocol::RESTORE_DETACH
        }
    );
    // The daemon hung up: waiting reports it instead of blocking.
    assert_eq!(restored.wait().unwrap_err().code(), code::DAEMON);

    // A restore failure comes back as its error.
    let s = Scratch::new("restore-fails");
    let d = fake_daemon(&s, |c| {
        answer_request(
            &c,
            Message::failure(code::REFUSED, "images of another user"),
        );
    });
    let opts = RestoreOptions {
        detach: false,
        socket: Some(s.socket()),
    };
    let e = stasis_client::restore(s.images().as_fd(), &opts).unwrap_err();
    d.join().unwrap();
    assert!(matches!(e, Error::Refused(_)), "{e:?}");
}

/// What the restorer does: the connection is recreated as one end of a socketpair whose peer
/// has `Done{restored}` queued (and may already be closed); receiving on it gives that message.
#[test]
fn queued_restored_reply_is_read() {
    let s = Scratch::new("queued");
    let listener = sock::seqpacket_listen(&s.socket(), 1).unwrap();
    let ours = sock::seqpacket_connect(&s.socket()).unwrap();
    let peer = sock::accept(listener.as_fd()).unwrap();
    reply(
        &peer,
        Message::Done {
            outcome: protocol::OUTCOME_RESTORED,
        },
    );
    drop(peer);
    let (m, fd) = protocol::recv(ours.as_fd()).unwrap();
    assert_eq!(
        m,
        Message::Done {
            outcome: protocol::OUTCOME_RESTORED
        }
    );
    assert!(fd.is_none());
    assert!(matches!(
        protocol::recv(ours.as_fd()),
        Err(TransportError::Closed)
    ));
}
