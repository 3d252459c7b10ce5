//! A TCP connection whose peer is outside the dumped tree: this test process streams a
//! counter-derived byte sequence to an echo server that is dumped and restored, and checks
//! that every byte comes back exactly once, in order, and that the connection is never reset:
//! through a `--leave-running` dump, through a dump (the server killed) and a restore, and
//! through a dump that fails (the server runs on; no nftables table is left behind).
//!
//! The tests need root (`stasis_test_infra::require_root`) and the `nft` binary. Work
//! directories of failed tests are kept in `target/tmp/tcp_peer/<test name>/`.

mod common;

use common::stasis;
use stasis_test_infra::build::c_program;
use stasis_test_infra::process::{become_subreaper, isolate, kill, wait_pid};
use stasis_test_infra::procfs::exists;
use stasis_test_infra::wait::wait_for;
use stasis_test_infra::{require_root, require_tool, WorkDir};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);

/// The echo server: listens on 127.0.0.1 (port 0), prints its port, accepts one connection
/// and echoes everything until end-of-file. With an argument, it also opens a POSIX message
/// queue after accepting (an fd stasis refuses, numbered after the connection).
const SERVER: &str = r#"
#include <arpa/inet.h>
#include <fcntl.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	(void)argv;
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t l = sizeof(a);
	char buf[65536];
	int lfd = socket(AF_INET, SOCK_STREAM, 0), c;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (lfd < 0 || bind(lfd, (void *)&a, sizeof(a)) || listen(lfd, 4) ||
	    getsockname(lfd, (void *)&a, &l))
		return 2;
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	/* stdout to /dev/null: anyone can have it back at a restore */
	int null = open("/dev/null", O_WRONLY);
	if (null < 0 || dup2(null, 1) != 1)
		return 7;
	close(null);
	c = accept(lfd, NULL, NULL);
	if (c < 0)
		return 3;
	if (argc > 1) {
		char name[64];
		snprintf(name, sizeof(name), "/stasis-tcp-peer-%d", getpid());
		if (mq_open(name, O_RDWR | O_CREAT, 0600, NULL) < 0)
			return 4;
		mq_unlink(name);
	}
	for (;;) {
		ssize_t n = read(c, buf, sizeof(buf));
		if (n == 0)
			return 0;
		if (n < 0)
			return 5;
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(c, buf + off, n - off);
			if (w <= 0)
				return 6;
			off += w;
		}
	}
}
"#;

fn work_dir(test: &str) -> WorkDir {
    common::work_dir("tcp_peer", test)
}

/// Byte `i` of the stream.
fn byte(i: u64) -> u8 {
    (i ^ (i >> 8) ^ (i >> 16) ^ (i >> 24).wrapping_mul(31)) as u8
}

/// The server, started in a session of its own: its pid and port.
fn start_server(w: &WorkDir, with_mq: bool) -> (i32, u16) {
    let src = w.join("server.c");
    std::fs::write(&src, SERVER).expect("write the server's source");
    let exe = c_program(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &src,
        &w.join("server"),
        false,
    )
    .expect("build the server");
    let out = w.join("port");
    let mut cmd = Command::new(exe);
    if with_mq {
        cmd.arg("mq");
    }
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out).expect("port file")))
        .stderr(Stdio::null());
    let child = isolate(&mut cmd).spawn().expect("start the server");
    let pid = child.id() as i32;
    drop(child);
    let mut port = 0;
    wait_for("the server's port", TIMEOUT, || {
        port = std::fs::read_to_string(&out)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        port != 0
    });
    (pid, port)
}

/// The client: a writer thread streaming the sequence, a reader thread checking the echo.
struct Client {
    stream: TcpStream,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    echoed: Arc<AtomicU64>,
    writer: JoinHandle<Result<(), String>>,
    reader: JoinHandle<Result<(), String>>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let echoed = Arc::new(AtomicU64::new(0));
        let mut w = stream.try_clone().expect("clone the stream");
        let (s, st) = (sent.clone(), stop.clone());
        let writer = std::thread::spawn(move || {
            let mut off = 0u64;
            let mut chunk = vec![0u8; 1000];
            while !st.load(Ordering::SeqCst) {
                for (k, b) in chunk.iter_mut().enumerate() {
                    *b = byte(off + k as u64);
                }
                w.write_all(&chunk)
                    .map_err(|e| format!("write after {off} bytes: {e}"))?;
                off += chunk.len() as u64;
                s.store(off, Ordering::SeqCst);
                sleep(Duration::from_millis(2));
            }
            w.shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))
        });
        let mut r = stream.try_clone().expect("clone the stream");
        let e = echoed.clone();
        let reader = std::thread::spawn(move || {
            let mut off = 0u64;
            let mut buf = vec![0u8; 65536];
            loop {
                let n = r
                    .read(&mut buf)
                    .map_err(|err| format!("read after {off} bytes: {err}"))?;
                if n == 0 {
                    return Ok(());
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    if *b != byte(off + k as u64) {
                        return Err(format!("echoed byte {} differs", off + k as u64));
                    }
                }
                off += n as u64;
                e.store(off, Ordering::SeqCst);
            }
        });
        Client {
            stream,
            stop,
            sent,
            echoed,
            writer,
            reader,
        }
    }

    /// Waits until at least `more` bytes more came back.
    fn wait_progress(&self, more: u64) {
        let from = self.echoed.load(Ordering::SeqCst);
        wait_for("the echo to make progress", TIMEOUT, || {
            self.echoed.load(Ordering::SeqCst) >= from + more
        });
    }

    /// Stops writing, and checks that every byte came back once and nothing more.
    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        let w = self.writer.join().expect("writer thread");
        let r = self.reader.join().expect("reader thread");
        w.expect("the writer");
        r.expect("the reader");
        assert_eq!(
            self.echoed.load(Ordering::SeqCst),
            self.sent.load(Ordering::SeqCst),
            "every byte sent came back exactly once"
        );
    }
}

fn hold_tables() -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("run nft list tables");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("stasis_hold_"))
        .map(str::to_string)
        .collect()
}

fn dump(pid: i32, img: &Path, extra: &[&str]) -> (bool, String) {
    let mut args: Vec<&OsStr> = vec![
        "dump".as_ref(),
        "-t".as_ref(),
        OsStr::new(""),
        "-D".as_ref(),
        img.as_os_str(),
    ];
    let p = pid.to_string();
    args[2] = p.as_ref();
    args.extend(extra.iter().map(OsStr::new));
    stasis(&args)
}

fn kill_and_reap(pid: i32) {
    kill(pid, libc::SIGKILL);
    let _ = wait_pid(pid, TIMEOUT);
}

/// One test at a time: each checks the hold tables of the whole machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn setup(test: &str) -> Option<(WorkDir, std::sync::MutexGuard<'static, ()>)> {
    if !require_root() || !require_tool("nft") {
        return None;
    }
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    Some((work_dir(test), guard))
}

#[test]
fn stream_survives_leave_running_and_dump_restore() {
    let Some((w, _serial)) = setup("dump_restore") else {
        return;
    };
    let (pid, port) = start_server(&w, false);
    let client = Client::connect(port);
    client.wait_progress(20_000);

    let img1: PathBuf = w.mkdir("img-leave-running");
    let (ok, err) = dump(pid, &img1, &["--leave-running"]);
    assert!(ok, "dump --leave-running: {err}");
    let left = hold_tables();
    assert!(left.is_empty(), "dump --leave-running left {left:?}");
    client.wait_progress(20_000);

    let img2 = w.mkdir("img");
    let (ok, err) = dump(pid, &img2, &[]);
    if !ok {
        kill_and_reap(pid);
        panic!("dump: {err}");
    }
    // Our child (killed by the dump): reaped here.
    wait_pid(pid, TIMEOUT).expect("the dumped server to be gone");
    // The client writes on into the void for a while: its packets are held off.
    sleep(Duration::from_millis(500));
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-D".as_ref(),
        img2.as_os_str(),
        "--detach".as_ref(),
    ]);
    assert!(ok, "restore: {err}");
    let tables = hold_tables();
    client.wait_progress(50_000);
    client.finish();
    kill_and_reap(pid);
    assert!(
        tables.is_empty(),
        "the restore left hold tables: {tables:?}"
    );
}

#[test]
fn failed_dump_releases_the_connection() {
    let Some((w, _serial)) = setup("failed_dump") else {
        return;
    };
    let (pid, port) = start_server(&w, true);
    let client = Client::connect(port);
    client.wait_progress(20_000);
    let before = hold_tables();
    let img = w.mkdir("img");
    let (ok, err) = dump(pid, &img, &[]);
    let after = hold_tables();
    assert!(!ok, "the dump of a process with a message queue succeeded");
    assert!(err.contains("POSIX message queue"), "{err}");
    assert!(exists(pid), "the server is gone after a failed dump");
    client.wait_progress(50_000);
    client.finish();
    kill_and_reap(pid);
    for t in &after {
        assert!(before.contains(t), "the failed dump left {t}");
    }
}

/// `--tcp-closed`: the connection ends at the dump (the peer sees it close), no hold is
/// installed, and the restored server finds its socket closed (its read returns end-of-file,
/// and it exits 0).
#[test]
fn tcp_closed_ends_the_connection() {
    let Some((w, _serial)) = setup("tcp_closed") else {
        return;
    };
    let (pid, port) = start_server(&w, false);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(b"hello").expect("write");
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).expect("echo");
    let img = w.mkdir("img");
    let (ok, err) = dump(pid, &img, &["--tcp-closed"]);
    if !ok {
        kill_and_reap(pid);
        panic!("dump --tcp-closed: {err}");
    }
    let left = hold_tables();
    wait_pid(pid, TIMEOUT).expect("the dumped server to be gone");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes from a connection that should be closed"),
    }
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-D".as_ref(),
        img.as_os_str(),
        "--detach".as_ref(),
    ]);
    assert!(ok, "restore: {err}");
    let status = wait_pid(pid, TIMEOUT).expect("the restored server to exit");
    assert!(left.is_empty(), "--tcp-closed installed a hold: {left:?}");
    use stasis_test_infra::process::{WaitStatus, Waited};
    assert!(
        matches!(status, Waited::Status(WaitStatus::Exited(0))),
        "the restored server should read end-of-file (exit 0): {status:?}"
    );
}

/// A restore that runs as an unprivileged user (root's restore of images a user owns) cannot
/// put a connection back (TCP_REPAIR needs CAP_NET_ADMIN): it fails naming the connection and
/// the hold, which it keeps.
#[test]
fn restore_as_a_user_names_the_connection() {
    let Some((w, _serial)) = setup("as_user") else {
        return;
    };
    if !require_tool("useradd") {
        return;
    }
    let user = stasis_test_infra::user::test_user();
    let (pid, port) = start_server(&w, false);
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let client_port = stream.local_addr().expect("local address").port();
    let img = w.mkdir("img");
    let (ok, err) = dump(pid, &img, &["--no-auth"]);
    if !ok {
        kill_and_reap(pid);
        panic!("dump: {err}");
    }
    wait_pid(pid, TIMEOUT).expect("the dumped server to be gone");
    // The process record says the user's credentials; the images are the user's.
    let path = img.join(stasis_image::names::process(pid));
    let bytes = std::fs::read(&path).expect("read the process record");
    let mut rec: stasis_image::ProcessImage =
        stasis_image::decode_record(stasis_image::RecordKind::Process, &bytes, &path)
            .expect("decode the process record");
    let c = &mut rec.creds;
    c.uids = [user.uid; 4];
    c.gids = [user.gid; 4];
    c.groups = Vec::new();
    (
        c.cap_inheritable,
        c.cap_permitted,
        c.cap_effective,
        c.cap_ambient,
    ) = (0, 0, 0, 0);
    std::fs::write(
        &path,
        stasis_image::encode_record(stasis_image::RecordKind::Process, &rec, &path)
            .expect("encode the process record"),
    )
    .expect("write the process record");
    std::os::unix::fs::chown(&img, Some(user.uid), Some(user.gid)).expect("chown");
    for e in std::fs::read_dir(&img).expect("list the images") {
        std::os::unix::fs::chown(e.expect("entry").path(), Some(user.uid), Some(user.gid))
            .expect("chown");
    }
    let (ok, err) = stasis(&[OsStr::new("restore"), "-D".as_ref(), img.as_os_str()]);
    let tables = hold_tables();
    for t in &tables {
        if let Some(name) = t.split_whitespace().nth(2) {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", name])
                .status();
        }
    }
    if ok {
        kill_and_reap(pid);
    }
    assert!(!ok, "the restore as a user succeeded");
    eprintln!("{err}");
    let conn = format!("tcp 127.0.0.1:{port} <-> 127.0.0.1:{client_port}");
    assert!(
        err.contains(&conn)
            && err.contains("CAP_NET_ADMIN")
            && err.contains("nft delete table inet stasis_hold_"),
        "the error should name the connection ({conn}), the capability and the hold: {err}"
    );
    assert_eq!(
        tables.len(),
        1,
        "the failed restore keeps its hold: {tables:?}"
    );
    assert!(!exists(pid), "a failed restore left pid {pid}");
}

/// A listener with a connection waiting to be accepted is refused, naming it; the server runs
/// on and keeps its connections.
#[test]
fn listener_with_pending_connections_is_refused() {
    let Some((w, _serial)) = setup("pending") else {
        return;
    };
    let (pid, port) = start_server(&w, false);
    let client = Client::connect(port);
    client.wait_progress(10_000);
    let _pending = TcpStream::connect(("127.0.0.1", port)).expect("connect a second client");
    let img = w.mkdir("img");
    let (ok, err) = dump(pid, &img, &[]);
    assert!(!ok, "the dump succeeded");
    assert!(
        err.contains(&format!("tcp 127.0.0.1:{port}"))
            && err.contains("1 connection(s) waiting to be accepted"),
        "the error should name the listener and its pending connection: {err}"
    );
    client.wait_progress(10_000);
    client.finish();
    kill_and_reap(pid);
    assert!(hold_tables().is_empty(), "a refused dump left a hold");
}
