//! Real servers from Debian's packages, checkpointed while a client (this test process, outside
//! the dumped tree) holds a TCP connection to them on the loopback interface.
//!
//! Each test starts one server in a work directory of its own (its own configuration, logs and
//! pid file there, a port found free at run time, bound to 127.0.0.1 only), talks to it over a
//! connection that stays open, checkpoints it with `stasis dump -t PID` (the server and its
//! descendants), and checks the data on that same connection afterwards:
//!
//! - dump + restore: the dump kills the server; `stasis restore --detach` brings it back with
//!   the same pids; the client goes on on the same connection (what it sent while the server
//!   was away is answered too) and a new connection works;
//! - `--leave-running`: the server runs on after the dump and the client goes on using it.
//!
//! The servers: redis-server (RESP; also `--tcp-closed`, after which redis drops the client,
//! and a client on its unix socket: refused, or with `--unix-peers-closed` dropped likewise),
//! memcached (text protocol), nginx (master and two workers, a keep-alive HTTP/1.1 connection,
//! a static file, 8 MiB of a response and a pipelined request under way at the dump), python3
//! -m http.server (the same; one thread per connection), and echo servers (socat, a small
//! python3 one) that a byte stream derived from a counter flows through across a
//! `--leave-running` dump and a dump + restore, arriving back exactly, once. And a client in
//! the tree: curl downloading from this process across both kinds of dump.
//!
//! The tests need root and the servers' programs (`require_root`, `require_tool`: under CI
//! (`CI=true`) a missing one fails the test), and `nft` (the dump holds the connections off
//! with an nftables rule). They run one at a time (a lock); every process a test started is
//! killed when it ends, also when it fails. Work directories of failed tests are kept in
//! `target/tmp/servers/<test name>/` (server logs, `dump-N.log`, `restore-N.log`).

#![allow(clippy::unwrap_used)] // a test that cannot set up fails

use stasis_test_infra::log::{read_for_report, tail};
use stasis_test_infra::process::{
    append_log, become_subreaper, describe_exit_status, kill, kill_child, live_children,
    spawn_isolated, wait_child_for, wait_pid, WaitStatus, Waited,
};
use stasis_test_infra::procfs;
use stasis_test_infra::wait::{wait_for, wait_until};
use stasis_test_infra::{require_root, require_tool, WorkDir};
use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Deadline for one stasis command, for a server to start listening, for an answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The system python (not a user's pyenv shim in front of it).
const PYTHON: &str = "/usr/bin/python3";

// ---------------------------------------------------------------------------------------------
// The harness: one test at a time, its work directory, the servers it started.

/// One test's world. Dropping it kills every process tree it started (also when the test
/// fails), before its work directory is removed (or kept, on failure).
struct Ctx {
    name: &'static str,
    dir: WorkDir,
    /// The roots of the process trees started; killed with their descendants at the end.
    trees: RefCell<Vec<i32>>,
    /// The pids of the `stasis dump` runs: their nftables hold tables are deleted at the end
    /// if a failed test left them.
    dumpers: RefCell<Vec<u32>>,
    /// Numbers the dumps and restores of the test (`img1`, `dump-1.log`, `restore-1.log`).
    step: Cell<u32>,
    _lock: MutexGuard<'static, ()>,
}

/// `None` when the test cannot run here (see `require_root`, `require_tool`).
fn start(name: &'static str, tools: &[&str]) -> Option<Ctx> {
    // The lock first: a test reaps the zombies of this process's children (`live_children`,
    // `wait_pid`), which would take the `--version` run of `require_tool` from another.
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() || !require_tool("nft") || !tools.iter().all(|t| require_tool(t)) {
        return None;
    }
    become_subreaper();
    for (pid, comm) in live_children() {
        eprintln!("{name}: killing pid {pid} ({comm}) left over by an earlier test");
        kill(pid, libc::SIGKILL);
        let _ = wait_pid(pid, Duration::from_secs(5));
    }
    let dir = WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("servers")
            .join(name),
    );
    Some(Ctx {
        name,
        dir,
        trees: RefCell::new(Vec::new()),
        dumpers: RefCell::new(Vec::new()),
        step: Cell::new(0),
        _lock: lock,
    })
}

impl Drop for Ctx {
    fn drop(&mut self) {
        for &root in self.trees.borrow().iter() {
            kill_tree(root);
        }
        for &dumper in self.dumpers.borrow().iter() {
            for table in hold_tables(dumper) {
                eprintln!("cleanup: deleting the nftables table {table} a dump left");
                let _ = Command::new("nft")
                    .args(["delete", "table", "inet", &table])
                    .status();
            }
        }
    }
}

/// `pid` and all its descendants (children of any of its threads), parents first.
fn tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let tasks = fs::read_dir(format!("/proc/{p}/task"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                    .collect::<Vec<i32>>()
            })
            .unwrap_or_default();
        for t in tasks {
            for c in fs::read_to_string(format!("/proc/{p}/task/{t}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
            {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        i += 1;
    }
    out.retain(|&p| procfs::exists(p));
    out
}

/// SIGKILLs `root` and its descendants (the parent first, so that it respawns nothing) and
/// waits for them; orphans come to this (subreaper) process and are reaped.
fn kill_tree(root: i32) {
    for _ in 0..3 {
        let pids = tree(root);
        if pids.is_empty() {
            return;
        }
        for &p in &pids {
            kill(p, libc::SIGKILL);
        }
        for &p in &pids {
            if let Err(e) = wait_pid(p, Duration::from_secs(10)) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A loopback port that nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Connects to the loopback `port`, with read and write timeouts (a lost answer fails the
/// test instead of hanging it).
fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr(port), TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// How a test dumps its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dump {
    /// `--leave-running`.
    LeaveRunning,
    /// Killing it, its connections kept (TCP_REPAIR, held off until the restore).
    Kill,
    /// Killing it, `--tcp-closed`: its connections end and are restored closed.
    TcpClosed,
    /// Killing it, `--unix-peers-closed`: its unix connections to processes outside the tree
    /// are restored as connections whose peer closed.
    UnixPeersClosed,
}

/// A server process (tree) a test started.
struct Server {
    /// The process started (nginx: the master).
    pid: i32,
    /// The port it listens on (0: none, a client).
    port: u16,
    /// Its stdout and stderr.
    log: PathBuf,
    what: &'static str,
}

impl Ctx {
    /// Starts `cmd` isolated (own session, only stdio inherited), in the work directory, its
    /// output into `NAME.log`; waits until a socket listens on `port` (without connecting:
    /// socat serves one connection only).
    fn spawn_server(&self, what: &'static str, cmd: &mut Command, port: u16) -> Server {
        let log = self.dir.join(format!("{what}.log"));
        cmd.current_dir(&*self.dir);
        let child = spawn_isolated(cmd, append_log(&log).unwrap())
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        let pid = child.id() as i32;
        drop(child); // reaped by pid
        self.trees.borrow_mut().push(pid);
        let server = Server {
            pid,
            port,
            log,
            what,
        };
        let up = wait_until(TIMEOUT, || procfs::exists(pid) && listening(port));
        assert!(
            up,
            "{what} never listened on port {port}: {}",
            server.report()
        );
        server
    }

    /// Runs `stasis ARGS` (output into files of the work directory, not pipes a restored
    /// process could keep); panics when it does not end within [`TIMEOUT`]. Returns its pid
    /// and stdout, or panics with the command's stderr and its log.
    fn stasis(&self, args: &[OsString], log: &Path) -> (u32, String) {
        let (pid, status, stdout, stderr) = self.run_stasis(args);
        assert!(
            status.success(),
            "{}: stasis {args:?} {}: {stderr}\n--- last lines of {} ---\n{}",
            self.name,
            describe_exit_status(status),
            log.display(),
            tail(&read_for_report(log), 30)
        );
        (pid, stdout)
    }

    /// Runs `stasis ARGS` like [`Ctx::stasis`], whatever its outcome: its pid, exit status,
    /// stdout and stderr.
    fn run_stasis(&self, args: &[OsString]) -> (u32, std::process::ExitStatus, String, String) {
        let (out, err) = (self.dir.join(".stasis.out"), self.dir.join(".stasis.err"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_stasis"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        if args.first().is_some_and(|a| a == "dump") {
            self.dumpers.borrow_mut().push(pid);
        }
        let Some(status) = wait_child_for(&mut child, TIMEOUT).unwrap() else {
            kill_child(&mut child);
            panic!("stasis {args:?} did not end within {TIMEOUT:?}");
        };
        (
            pid,
            status,
            fs::read_to_string(&out).unwrap_or_default(),
            fs::read_to_string(&err).unwrap_or_default(),
        )
    }

    /// `stasis dump -t PID` of `server` and its descendants; with [`Dump::LeaveRunning`] they
    /// run on (checked), else they are gone (reaped) when this returns. The images directory,
    /// and the dumper's pid.
    ///
    /// The client's connection is established during the dump: a [`Dump::Kill`] leaves the
    /// nftables table holding it off until the restore; the others leave none.
    fn dump(&self, server: &Server, how: Dump) -> (PathBuf, u32) {
        let leave_running = how == Dump::LeaveRunning;
        let n = self.step.get() + 1;
        self.step.set(n);
        let pids = tree(server.pid);
        let img = self.dir.join(format!("img{n}"));
        let log = self.dir.join(format!("dump-{n}.log"));
        let mut args: Vec<OsString> = vec![
            "dump".into(),
            "-t".into(),
            server.pid.to_string().into(),
            "-D".into(),
            img.clone().into(),
            "--log-file".into(),
            log.clone().into(),
        ];
        match how {
            Dump::LeaveRunning => args.push("--leave-running".into()),
            Dump::TcpClosed => args.push("--tcp-closed".into()),
            Dump::UnixPeersClosed => args.push("--unix-peers-closed".into()),
            Dump::Kill => {}
        }
        let (dumper, _) = self.stasis(&args, &log);
        assert!(
            img.join("inventory.img").exists(),
            "the dump of {} wrote no inventory",
            server.what
        );
        let tables = hold_tables(dumper);
        assert_eq!(
            tables.is_empty(),
            how != Dump::Kill,
            "{}: the nftables hold tables of the dump (pid {dumper}) after it: {tables:?}",
            server.what
        );
        if leave_running {
            for &p in &pids {
                assert!(
                    matches!(procfs::state(p), Some('S' | 'R')),
                    "{}: pid {p} does not run on after --leave-running: {}",
                    server.what,
                    procfs::describe_proc(p)
                );
            }
        } else {
            for &p in &pids {
                if let Err(e) = wait_pid(p, TIMEOUT) {
                    panic!("{}: the dump did not kill pid {p}: {e}", server.what);
                }
            }
        }
        (img, dumper)
    }

    /// `stasis restore -D IMG --detach`: checks that it prints the server's pid and that the
    /// processes of `pids` (the tree at dump time, with the `parents` they had) are back, with
    /// the same parents (the root's is `stasis restore`'s, then this process's).
    /// The restore deletes the hold table of the dump (pid `dumper`).
    fn restore(
        &self,
        server: &Server,
        (img, dumper): (&Path, u32),
        pids: &[i32],
        parents: &[Option<i32>],
    ) {
        let n = self.step.get();
        let log = self.dir.join(format!("restore-{n}.log"));
        let (_, out) = self.stasis(
            &[
                "restore".into(),
                "-D".into(),
                img.into(),
                "--detach".into(),
                "--log-file".into(),
                log.clone().into(),
            ],
            &log,
        );
        assert_eq!(
            out.trim(),
            server.pid.to_string(),
            "restore --detach of {} printed another pid",
            server.what
        );
        let tables = hold_tables(dumper);
        assert!(
            tables.is_empty(),
            "{}: the restore left the nftables table(s) {tables:?} of the dump",
            server.what
        );
        let back = tree(server.pid);
        for (i, &p) in pids.iter().enumerate() {
            assert!(
                back.contains(&p),
                "{}: pid {p} was not restored (the tree now: {back:?})",
                server.what
            );
            if i > 0 {
                assert_eq!(
                    procfs::ppid(p),
                    parents[i],
                    "{}: pid {p} came back with another parent",
                    server.what
                );
            }
        }
    }

    /// Dumps `server` (killing it), checks that it is gone and that its port is closed, then
    /// restores it. `while_away` runs between the two (a client sending while it is away).
    fn dump_kill_restore(&self, server: &Server, while_away: impl FnOnce()) {
        self.dump_kill_restore_as(server, Dump::Kill, while_away);
    }

    /// [`Ctx::dump_kill_restore`] with a dump that kills: any but [`Dump::LeaveRunning`].
    fn dump_kill_restore_as(&self, server: &Server, how: Dump, while_away: impl FnOnce()) {
        let pids = tree(server.pid);
        let parents: Vec<Option<i32>> = pids.iter().map(|&p| procfs::ppid(p)).collect();
        let (img, dumper) = self.dump(server, how);
        assert!(
            server.port == 0 || !listening(server.port),
            "{}: port {} still listens after the dump killed the server",
            server.what,
            server.port
        );
        while_away();
        self.restore(server, (&img, dumper), &pids, &parents);
    }
}

impl Server {
    /// The server's log, for an error message.
    fn report(&self) -> String {
        format!(
            "{} (pid {}: {})\n--- last lines of {} ---\n{}",
            self.what,
            self.pid,
            procfs::describe_proc(self.pid),
            self.log.display(),
            tail(&read_for_report(&self.log), 30)
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Data: counter-derived bytes, so that a lost, repeated or reordered chunk shows.

/// The byte at `offset` of the test streams.
fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(offset + i)).collect()
}

/// A printable value of `len` bytes for key `key` (memcached and redis keys and values).
fn value(key: &str, len: usize) -> Vec<u8> {
    let seed = key
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    (0..len as u64)
        .map(|i| b'a' + (pattern_byte(seed.wrapping_add(i)) % 26))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Key-value clients: redis (RESP) and memcached (text protocol) over a plain TcpStream.

/// A connection with a buffered reader on it.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn new(port: u16) -> Conn {
        let stream = connect(port);
        let reader = BufReader::new(stream.try_clone().unwrap());
        Conn { stream, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!(
                "send {} bytes: {e}\n{}",
                bytes.len(),
                tcp_report(&self.stream)
            );
        }
    }

    /// One line, without its `\r\n`.
    fn line(&mut self) -> String {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(_) => {}
            Err(e) => panic!("read a line: {e}\n{}", tcp_report(&self.stream)),
        }
        assert!(l.ends_with("\r\n"), "a line without CRLF: {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    fn exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        let mut got = 0;
        while got < n {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => panic!("the server closed the connection after {got} of {n} bytes"),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!(
                    "read {n} bytes: {e} after {got}\n{}",
                    tcp_report(&self.stream)
                ),
            }
        }
        buf
    }
}

/// The TCP state of both ends of the connection of `stream` (`ss -tnio`), for an error.
fn tcp_report(stream: &TcpStream) -> String {
    let Ok(local) = stream.local_addr() else {
        return String::new();
    };
    let filter = format!("( sport = :{p} or dport = :{p} )", p = local.port());
    Command::new("ss")
        .args(["-tnio", "state", "all", &filter])
        .stdin(Stdio::null())
        .output()
        .map(|o| format!("ss -tnio:\n{}", String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// What a key-value test needs of a protocol.
trait Kv {
    /// Sends a request storing `val` under `key`, without waiting for the answer.
    fn send_set(&mut self, key: &str, val: &[u8]);
    /// Reads the answer to a set.
    fn read_set_answer(&mut self, key: &str);
    fn get(&mut self, key: &str) -> Option<Vec<u8>>;

    fn set(&mut self, key: &str, val: &[u8]) {
        self.send_set(key, val);
        self.read_set_answer(key);
    }
}

struct Redis(Conn);

impl Redis {
    fn command(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

impl Kv for Redis {
    fn send_set(&mut self, key: &str, val: &[u8]) {
        self.0.send(&Redis::command(&[b"SET", key.as_bytes(), val]));
    }

    fn read_set_answer(&mut self, key: &str) {
        let l = self.0.line();
        assert_eq!(l, "+OK", "redis: SET {key}");
    }

    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.0.send(&Redis::command(&[b"GET", key.as_bytes()]));
        let l = self.0.line();
        let len: i64 = l
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("redis: GET {key}: {l:?}"));
        if len < 0 {
            return None;
        }
        let v = self.0.exact(len as usize);
        assert_eq!(
            self.0.exact(2),
            b"\r\n",
            "redis: GET {key}: no CRLF after the value"
        );
        Some(v)
    }
}

struct Memcached(Conn);

impl Kv for Memcached {
    fn send_set(&mut self, key: &str, val: &[u8]) {
        let mut req = format!("set {key} 0 0 {}\r\n", val.len()).into_bytes();
        req.extend_from_slice(val);
        req.extend_from_slice(b"\r\n");
        self.0.send(&req);
    }

    fn read_set_answer(&mut self, key: &str) {
        let l = self.0.line();
        assert_eq!(l, "STORED", "memcached: set {key}");
    }

    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.0.send(format!("get {key}\r\n").as_bytes());
        let l = self.0.line();
        if l == "END" {
            return None;
        }
        let len: usize = l
            .strip_prefix(&format!("VALUE {key} 0 "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("memcached: get {key}: {l:?}"));
        let v = self.0.exact(len);
        assert_eq!(self.0.exact(2), b"\r\n", "memcached: get {key}: no CRLF");
        assert_eq!(self.0.line(), "END", "memcached: get {key}: no END");
        Some(v)
    }
}

/// Stores keys `prefix0..prefixN` (values of growing sizes, up to 20 KiB).
fn set_keys(kv: &mut dyn Kv, prefix: &str, n: usize) {
    for i in 0..n {
        let key = format!("{prefix}{i}");
        kv.set(&key, &value(&key, 1 + i * 1000));
    }
}

/// Checks the keys `set_keys` stored.
fn check_keys(kv: &mut dyn Kv, prefix: &str, n: usize, when: &str) {
    for i in 0..n {
        let key = format!("{prefix}{i}");
        match kv.get(&key) {
            Some(v) if v == value(&key, 1 + i * 1000) => {}
            Some(v) => panic!(
                "{when}: {key} holds {} other bytes ({:?}...)",
                v.len(),
                String::from_utf8_lossy(&v[..v.len().min(40)])
            ),
            None => panic!("{when}: {key} is missing"),
        }
    }
}

/// The key-value test: keys written on a connection, the server dumped (and restored, or left
/// running), the keys read back on the same connection, more written; a new connection sees
/// them all. In the dump + restore case the client also sends a request while the server is
/// away; its answer comes after the restore.
fn kv_test(ctx: &Ctx, server: &Server, open: fn(u16) -> Box<dyn Kv>, leave_running: bool) {
    let mut kv = open(server.port);
    set_keys(kv.as_mut(), "before", 20);
    check_keys(kv.as_mut(), "before", 20, "before the dump");
    if leave_running {
        ctx.dump(server, Dump::LeaveRunning);
    } else {
        ctx.dump_kill_restore(server, || {
            // Nobody listens now: what the client sends must wait (held off, not refused)
            // and be answered by the restored server.
            kv.send_set("sent_while_away", b"hello");
            std::thread::sleep(Duration::from_millis(300));
        });
        kv.read_set_answer("sent_while_away");
        assert_eq!(
            kv.get("sent_while_away").as_deref(),
            Some(&b"hello"[..]),
            "after the restore: what was sent while the server was away"
        );
    }
    let when = if leave_running {
        "after the dump (left running), same connection"
    } else {
        "after the restore, same connection"
    };
    check_keys(kv.as_mut(), "before", 20, when);
    set_keys(kv.as_mut(), "after", 10);
    check_keys(kv.as_mut(), "after", 10, when);
    let mut fresh = open(server.port);
    check_keys(fresh.as_mut(), "before", 20, "new connection");
    check_keys(fresh.as_mut(), "after", 10, "new connection");
    fresh.set("fresh", b"new");
    assert_eq!(kv.get("fresh").as_deref(), Some(&b"new"[..]));
}

fn open_redis(port: u16) -> Box<dyn Kv> {
    Box::new(Redis(Conn::new(port)))
}

fn open_memcached(port: u16) -> Box<dyn Kv> {
    Box::new(Memcached(Conn::new(port)))
}

fn start_redis(ctx: &Ctx) -> Server {
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--protected-mode", "no", "--logfile", ""])
        .arg("--dir")
        .arg(&*ctx.dir)
        .arg("--pidfile")
        .arg(ctx.dir.join("redis.pid"));
    ctx.spawn_server("redis-server", &mut cmd, port)
}

fn start_memcached(ctx: &Ctx) -> Server {
    let port = free_port();
    let mut cmd = Command::new("memcached");
    cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"])
        .args(["-u", "root", "-t", "2", "-m", "16"]);
    ctx.spawn_server("memcached", &mut cmd, port)
}

#[test]
fn redis_client_goes_on_across_dump_and_restore() {
    let Some(ctx) = start("redis_dump_restore", &["redis-server"]) else {
        return;
    };
    let server = start_redis(&ctx);
    kv_test(&ctx, &server, open_redis, false);
}

#[test]
fn redis_client_goes_on_with_leave_running() {
    let Some(ctx) = start("redis_leave_running", &["redis-server"]) else {
        return;
    };
    let server = start_redis(&ctx);
    kv_test(&ctx, &server, open_redis, true);
}

/// `stasis dump --tcp-closed`: the client's connection ends when the dump kills redis (reset,
/// or end of stream), the restored redis finds it closed (it drops that client: one client
/// left, the new one) and has its keys.
#[test]
fn redis_connections_end_with_tcp_closed() {
    let Some(ctx) = start("redis_tcp_closed", &["redis-server"]) else {
        return;
    };
    let server = start_redis(&ctx);
    let mut kv = Redis(Conn::new(server.port));
    set_keys(&mut kv, "before", 20);
    ctx.dump_kill_restore_as(&server, Dump::TcpClosed, || {
        let mut buf = [0u8; 16];
        match kv.0.reader.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the client's connection did not end with the dump: {other:?}"),
        }
    });
    let mut fresh = Redis(Conn::new(server.port));
    check_keys(
        &mut fresh,
        "before",
        20,
        "after the restore, new connection",
    );
    // Redis notices the closed connection when it polls it: at most a moment later.
    wait_for(
        "redis to drop the client whose connection was restored closed",
        TIMEOUT,
        || redis_clients(&mut fresh) == 1,
    );
}

/// The number of clients redis lists (`CLIENT LIST`), asked on `conn`.
fn redis_clients(conn: &mut Redis) -> usize {
    conn.0.send(&Redis::command(&[b"CLIENT", b"LIST"]));
    let l = conn.0.line();
    let len: usize = l
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("redis: CLIENT LIST: {l:?}"));
    let list = String::from_utf8_lossy(&conn.0.exact(len + 2)).into_owned();
    list.lines().filter(|l| l.starts_with("id=")).count()
}

/// A client of redis's unix socket (`--unixsocket`) is a peer outside the tree: the dump is
/// refused, naming it (this process), and redis runs on; `--unix-peers-closed` dumps it, and
/// the restored redis finds that connection closed (it drops the client) and has its keys.
#[test]
fn redis_unix_socket_client_refused_or_closed() {
    let Some(ctx) = start("redis_unix_client", &["redis-server"]) else {
        return;
    };
    let sock = ctx.dir.join("redis.sock");
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--logfile", ""])
        .arg("--unixsocket")
        .arg(&sock);
    let server = ctx.spawn_server("redis-server", &mut cmd, port);
    let mut unix = std::os::unix::net::UnixStream::connect(&sock)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", sock.display()));
    unix.set_read_timeout(Some(TIMEOUT)).unwrap();
    let ask = |unix: &mut std::os::unix::net::UnixStream, req: &[u8]| {
        unix.write_all(req).unwrap();
        let mut b = [0u8; 64];
        let n = unix.read(&mut b).unwrap();
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    assert_eq!(ask(&mut unix, b"SET k v\r\n"), "+OK\r\n");

    let img = ctx.dir.join("img-refused");
    let (_, status, _, err) = ctx.run_stasis(&[
        "dump".into(),
        "-t".into(),
        server.pid.to_string().into(),
        "-D".into(),
        img.clone().into(),
    ]);
    let me = std::process::id();
    assert!(
        !status.success(),
        "the dump with a unix client outside succeeded"
    );
    assert!(
        err.contains(&format!("of pid {}", server.pid))
            && err.contains("unix stream socket")
            && err.contains(&format!("pid {me}"))
            && err.contains("--unix-peers-closed"),
        "the refusal should name redis's fd, this process (pid {me}) and the option: {err}"
    );
    assert!(
        !img.join("inventory.img").exists(),
        "a refused dump wrote an inventory"
    );
    assert_eq!(
        ask(&mut unix, b"SET k2 v2\r\n"),
        "+OK\r\n",
        "redis after the refused dump"
    );

    ctx.dump_kill_restore_as(&server, Dump::UnixPeersClosed, || {
        let mut b = [0u8; 16];
        assert_eq!(
            unix.read(&mut b).ok(),
            Some(0),
            "the unix client's connection did not end with the dump"
        );
    });
    let mut fresh = Redis(Conn::new(server.port));
    assert_eq!(fresh.get("k").as_deref(), Some(&b"v"[..]));
    assert_eq!(fresh.get("k2").as_deref(), Some(&b"v2"[..]));
    wait_for(
        "redis to drop the unix client whose connection was restored closed",
        TIMEOUT,
        || redis_clients(&mut fresh) == 1,
    );
}

#[test]
fn memcached_client_goes_on_across_dump_and_restore() {
    let Some(ctx) = start("memcached_dump_restore", &["memcached"]) else {
        return;
    };
    let server = start_memcached(&ctx);
    kv_test(&ctx, &server, open_memcached, false);
}

#[test]
fn memcached_client_goes_on_with_leave_running() {
    let Some(ctx) = start("memcached_leave_running", &["memcached"]) else {
        return;
    };
    let server = start_memcached(&ctx);
    kv_test(&ctx, &server, open_memcached, true);
}

// ---------------------------------------------------------------------------------------------
// HTTP: a keep-alive HTTP/1.1 connection to nginx and to python3's http.server.

/// The file the HTTP servers serve (200 KiB of pattern bytes).
/// The files the HTTP servers serve: `file.bin` (200 KiB) and `big.bin` (8 MiB, more than the
/// socket buffers of both ends hold), of pattern bytes.
struct WebFiles {
    file: Vec<u8>,
    big: Vec<u8>,
}

fn web_root(ctx: &Ctx) -> (PathBuf, WebFiles) {
    let www = ctx.dir.mkdir("www");
    let files = WebFiles {
        file: pattern(7, 200 * 1024),
        big: pattern(1 << 40, 8 << 20),
    };
    fs::write(www.join("file.bin"), &files.file).unwrap();
    fs::write(www.join("big.bin"), &files.big).unwrap();
    (www, files)
}

/// Reads the head of an HTTP/1.1 response: checks that it is a 200 and that the server keeps
/// the connection open. Its Content-Length.
fn read_head(conn: &mut Conn, when: &str) -> usize {
    let status = conn.line();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "{when}: status line {status:?}"
    );
    let mut len = None;
    loop {
        let h = conn.line();
        if h.is_empty() {
            break;
        }
        let (name, val) = h.split_once(':').unwrap_or((&h, ""));
        let (name, val) = (name.trim().to_ascii_lowercase(), val.trim());
        if name == "content-length" {
            len = val.parse::<usize>().ok();
        }
        assert!(
            !(name == "connection" && val.eq_ignore_ascii_case("close")),
            "{when}: the server closes the connection"
        );
    }
    len.unwrap_or_else(|| panic!("{when}: no Content-Length"))
}

/// Reads one HTTP/1.1 response (see [`read_head`]) and checks that it brings `body`.
fn read_response(conn: &mut Conn, body: &[u8], when: &str) {
    let len = read_head(conn, when);
    assert_eq!(len, body.len(), "{when}: Content-Length");
    let got = conn.exact(len);
    assert!(got == body, "{when}: the file came back different");
}

const REQUEST_HEAD: &[u8] = b"GET /file.bin HTTP/1.1\r\nHost: localhost\r\nUser-Agent: stasis\r\n";

fn get_file(conn: &mut Conn, body: &[u8], when: &str) {
    conn.send(REQUEST_HEAD);
    conn.send(b"\r\n");
    read_response(conn, body, when);
}

/// The HTTP test: the file served on a keep-alive connection; the server dumped (restored, or
/// left running) while 8 MiB of a response are under way on that connection (the client read
/// only their beginning: the rest is in the sockets' queues and in the server, blocked in its
/// write) and the first half of the next (pipelined) request is there too; after the dump, the
/// rest of the response read and checked, the second half of the request sent and the file
/// served on the same connection; a new connection too.
fn http_test(ctx: &Ctx, server: &Server, files: &WebFiles, leave_running: bool) {
    let body = &files.file[..];
    let mut conn = Conn::new(server.port);
    get_file(&mut conn, body, "before the dump");
    get_file(&mut conn, body, "before the dump (second request)");
    // A large response under way: its head and first 256 KiB read.
    conn.send(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let len = read_head(&mut conn, "big.bin");
    assert_eq!(len, files.big.len(), "big.bin: Content-Length");
    let first = 256 << 10;
    assert!(
        conn.exact(first) == files.big[..first],
        "big.bin: its beginning came back different"
    );
    // A request under way: the server has its first lines.
    conn.send(REQUEST_HEAD);
    std::thread::sleep(Duration::from_millis(200));
    if leave_running {
        ctx.dump(server, Dump::LeaveRunning);
    } else {
        ctx.dump_kill_restore(server, || {});
    }
    assert!(
        conn.exact(len - first) == files.big[first..],
        "big.bin: what was in flight at the dump came back different"
    );
    conn.send(b"\r\n");
    read_response(&mut conn, body, "the request begun before the dump");
    get_file(&mut conn, body, "after the dump, same connection");
    let mut fresh = Conn::new(server.port);
    get_file(&mut fresh, body, "after the dump, new connection");
    get_file(&mut conn, body, "after the dump, same connection again");
}

fn start_nginx(ctx: &Ctx) -> (Server, WebFiles) {
    let (www, files) = web_root(ctx);
    let port = free_port();
    let d = ctx.dir.display();
    let tmp = ctx.mkdir_tmp();
    let t = tmp.display();
    let conf = format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes 2;\n\
         user {user};\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
           access_log {d}/access.log;\n\
           client_body_temp_path {t}/body;\n\
           proxy_temp_path {t}/proxy;\n\
           fastcgi_temp_path {t}/fastcgi;\n\
           uwsgi_temp_path {t}/uwsgi;\n\
           scgi_temp_path {t}/scgi;\n\
           keepalive_timeout 300s;\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             root {www};\n\
           }}\n\
         }}\n",
        www = www.display(),
        user = nginx_user(&www),
    );
    let conf_path = ctx.dir.join("nginx.conf");
    fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&*ctx.dir)
        .arg("-e")
        .arg(ctx.dir.join("error.log"))
        .arg("-c")
        .arg(&conf_path);
    let server = ctx.spawn_server("nginx", &mut cmd, port);
    wait_for("nginx's two workers", TIMEOUT, || {
        tree(server.pid).len() == 3
    });
    (server, files)
}

/// The user nginx's workers run as: nobody, as a real nginx would, when others may reach the
/// files in `www` (the work directory is under the target directory, which may be in a home
/// that others cannot enter); else root.
fn nginx_user(www: &Path) -> &'static str {
    use std::os::unix::fs::PermissionsExt;
    let reachable = www
        .ancestors()
        .all(|d| fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable {
        "nobody nogroup"
    } else {
        eprintln!(
            "{} is not reachable by others: nginx's workers run as root",
            www.display()
        );
        "root root"
    }
}

impl Ctx {
    /// A directory the nginx workers (user nobody) may write their temporary files into.
    fn mkdir_tmp(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.dir.mkdir("tmp");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o777)).unwrap();
        tmp
    }
}

fn start_python_http(ctx: &Ctx) -> (Server, WebFiles) {
    let (www, files) = web_root(ctx);
    let port = free_port();
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-I", "-m", "http.server", "--protocol", "HTTP/1.1"])
        .args(["--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(port.to_string());
    (
        ctx.spawn_server("python3-http.server", &mut cmd, port),
        files,
    )
}

#[test]
fn nginx_keepalive_connection_across_dump_and_restore() {
    let Some(ctx) = start("nginx_dump_restore", &["nginx"]) else {
        return;
    };
    let (server, files) = start_nginx(&ctx);
    http_test(&ctx, &server, &files, false);
}

#[test]
fn nginx_keepalive_connection_with_leave_running() {
    let Some(ctx) = start("nginx_leave_running", &["nginx"]) else {
        return;
    };
    let (server, files) = start_nginx(&ctx);
    http_test(&ctx, &server, &files, true);
}

#[test]
fn python_http_server_keepalive_connection_across_dump_and_restore() {
    let Some(ctx) = start("python_http_dump_restore", &[PYTHON]) else {
        return;
    };
    let (server, files) = start_python_http(&ctx);
    http_test(&ctx, &server, &files, false);
}

#[test]
fn python_http_server_keepalive_connection_with_leave_running() {
    let Some(ctx) = start("python_http_leave_running", &[PYTHON]) else {
        return;
    };
    let (server, files) = start_python_http(&ctx);
    http_test(&ctx, &server, &files, true);
}

// ---------------------------------------------------------------------------------------------
// A byte stream through an echo server, across a --leave-running dump and a dump + restore.

/// Counters of a stream: bytes sent, bytes received back (checked), the first mismatch.
#[derive(Default)]
struct Stream {
    sent: AtomicU64,
    received: AtomicU64,
    stop_writing: AtomicBool,
    stop_reading: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Stream {
    fn fail(&self, e: String) {
        self.error.lock().unwrap().get_or_insert(e);
    }

    fn check(&self) {
        if let Some(e) = self.error.lock().unwrap().as_ref() {
            panic!("the stream: {e}");
        }
    }

    /// Waits until `n` more bytes than now came back.
    fn wait_more(&self, n: u64, what: &str) {
        let target = self.received.load(Ordering::SeqCst) + n;
        let ok = wait_until(TIMEOUT, || {
            self.received.load(Ordering::SeqCst) >= target || self.error.lock().unwrap().is_some()
        });
        self.check();
        assert!(
            ok,
            "{what}: the echo stalled at {} bytes received of {} sent",
            self.received.load(Ordering::SeqCst),
            self.sent.load(Ordering::SeqCst)
        );
    }
}

/// Streams pattern bytes through the echo server (a writer thread, at most 8 MiB/s, and a
/// reader thread that checks every byte), dumps it with --leave-running, then dumps, kills
/// and restores it, each while the stream flows; then stops writing and checks that exactly
/// what was sent came back.
fn stream_test(ctx: &Ctx, server: &Server) {
    let conn = connect(server.port);
    let st = Arc::new(Stream::default());
    let writer = {
        let st = Arc::clone(&st);
        let mut w = conn.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut off = 0u64;
            while !st.stop_writing.load(Ordering::SeqCst) {
                let chunk = pattern(off, 8192);
                match w.write(&chunk) {
                    Ok(n) => {
                        off += n as u64;
                        st.sent.store(off, Ordering::SeqCst);
                    }
                    Err(e) => {
                        st.fail(format!("write at byte {off}: {e}"));
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let reader = {
        let st = Arc::clone(&st);
        let mut r = conn.try_clone().unwrap();
        r.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut off = 0u64;
            while !st.stop_reading.load(Ordering::SeqCst) {
                match r.read(&mut buf) {
                    Ok(0) => {
                        st.fail(format!("end of stream after {off} bytes"));
                        return;
                    }
                    Ok(n) => {
                        if let Some(i) = (0..n).find(|&i| buf[i] != pattern_byte(off + i as u64)) {
                            st.fail(format!(
                                "byte {} came back as {:#04x}, sent {:#04x}",
                                off + i as u64,
                                buf[i],
                                pattern_byte(off + i as u64)
                            ));
                            return;
                        }
                        off += n as u64;
                        st.received.store(off, Ordering::SeqCst);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => {
                        st.fail(format!("read at byte {off}: {e}"));
                        return;
                    }
                }
            }
        })
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        st.wait_more(1 << 20, "before the dumps");
        ctx.dump(server, Dump::LeaveRunning);
        st.wait_more(1 << 20, "after the --leave-running dump");
        let start = Instant::now();
        ctx.dump_kill_restore(server, || {});
        eprintln!("{}: dump + restore took {:?}", ctx.name, start.elapsed());
        st.wait_more(1 << 20, "after the restore");
        st.stop_writing.store(true, Ordering::SeqCst);
    }));
    st.stop_writing.store(true, Ordering::SeqCst);
    let _ = writer.join();
    if result.is_ok() {
        let sent = st.sent.load(Ordering::SeqCst);
        let all = wait_until(TIMEOUT, || {
            st.received.load(Ordering::SeqCst) >= sent || st.error.lock().unwrap().is_some()
        });
        // Anything more than what was sent would be an error too: give it a moment.
        std::thread::sleep(Duration::from_millis(200));
        st.stop_reading.store(true, Ordering::SeqCst);
        let _ = reader.join();
        st.check();
        let received = st.received.load(Ordering::SeqCst);
        assert!(all, "{received} bytes came back of {sent} sent");
        assert_eq!(received, sent, "bytes received back != bytes sent");
    } else {
        st.stop_reading.store(true, Ordering::SeqCst);
        let _ = reader.join();
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

#[test]
fn stream_through_socat_echo_across_dumps() {
    let Some(ctx) = start("socat_echo", &["socat"]) else {
        return;
    };
    let port = free_port();
    // One connection, echoed through an anonymous pipe of socat's (bytes in flight in it too).
    let mut cmd = Command::new("socat");
    cmd.arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"))
        .arg("PIPE");
    let server = ctx.spawn_server("socat", &mut cmd, port);
    stream_test(&ctx, &server);
}

/// A threaded echo server: one thread per connection.
const PY_ECHO: &str = "\
import socket, sys, threading
def echo(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
";

#[test]
fn stream_through_python_echo_across_dumps() {
    let Some(ctx) = start("python_echo", &[PYTHON]) else {
        return;
    };
    let port = free_port();
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-I", "-c", PY_ECHO, &port.to_string()]);
    let server = ctx.spawn_server("python3-echo", &mut cmd, port);
    stream_test(&ctx, &server);
}

// ---------------------------------------------------------------------------------------------
// A client in the dumped tree: curl downloading from a server outside it (this process).

/// curl downloads 4 MiB from a server of this test that sends them slowly (32 KiB every 20
/// ms); curl is dumped with --leave-running, then dumped, killed and restored, mid-download
/// each time; the restored curl finishes the download (exit status 0) and the file is exact.
#[test]
fn curl_download_across_dumps() {
    let Some(ctx) = start("curl_download", &["curl"]) else {
        return;
    };
    let data = Arc::new(pattern(3, 4 << 20));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let server = {
        let (data, sent) = (Arc::clone(&data), Arc::clone(&sent));
        std::thread::spawn(move || -> Result<(), String> {
            let (mut c, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            c.set_write_timeout(Some(TIMEOUT)).unwrap();
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut b) {
                    Ok(0) => return Err("the request ended early".into()),
                    Ok(n) => req.extend_from_slice(&b[..n]),
                    Err(e) => return Err(format!("read the request: {e}")),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            );
            c.write_all(head.as_bytes())
                .map_err(|e| format!("write the head: {e}"))?;
            for (i, chunk) in data.chunks(32 << 10).enumerate() {
                c.write_all(chunk)
                    .map_err(|e| format!("write chunk {i}: {e}"))?;
                sent.store(((i + 1) * (32 << 10)) as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };
    let out = ctx.dir.join("download");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "-o"])
        .arg(&out)
        .arg(format!("http://127.0.0.1:{port}/data"));
    let log = ctx.dir.join("curl.log");
    cmd.current_dir(&*ctx.dir);
    let child = spawn_isolated(&mut cmd, append_log(&log).unwrap()).unwrap();
    let pid = child.id() as i32;
    drop(child); // reaped by pid
    ctx.trees.borrow_mut().push(pid);
    let curl = Server {
        pid,
        port: 0,
        log,
        what: "curl",
    };
    let mid = |what: &str| {
        let at = sent.load(Ordering::SeqCst) + (256 << 10);
        wait_for(what, TIMEOUT, || sent.load(Ordering::SeqCst) >= at);
        assert!(
            sent.load(Ordering::SeqCst) < data.len() as u64 - (1 << 20),
            "the download is nearly over before {what}: too fast to test"
        );
    };
    mid("the download to be under way");
    ctx.dump(&curl, Dump::LeaveRunning);
    mid("the download to go on after the --leave-running dump");
    ctx.dump_kill_restore(&curl, || {});
    match wait_pid(pid, TIMEOUT) {
        Ok(Waited::Status(WaitStatus::Exited(0))) => {}
        other => panic!(
            "the restored curl did not exit 0: {other:?}: {}",
            curl.report()
        ),
    }
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the server: {e}"),
        Err(_) => panic!("the server thread panicked"),
    }
    let got = fs::read(&out).unwrap();
    assert_eq!(got.len(), data.len(), "the download's size");
    assert!(got == *data, "the downloaded bytes differ from those sent");
}

/// The nftables tables (family inet) holding off connections for the dump run by `dumper`:
/// `stasis_hold_<dumper's pid>_<nonce>`.
fn hold_tables(dumper: u32) -> Vec<String> {
    let prefix = format!("stasis_hold_{dumper}_");
    let out = Command::new("nft")
        .args(["list", "tables", "inet"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run nft list tables");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table inet "))
        .filter(|t| t.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Whether a socket listens on 127.0.0.1:`port` (from /proc/net/tcp: state 0A).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}
