//! Denial of service, log floods and namespaces (docs/security.md, "Denial of service",
//! "Logs" and "Requests from other namespaces"): a real `stasisd` on a socket of its own per
//! test, real unprivileged users (created per test, `stasis-dos-<pid>-<n>`, removed when the
//! test ends), real clients:
//!
//! * Python scripts (`/usr/bin/python3`) that speak the wire protocol by hand: connections that
//!   stall after the handshake, floods of garbage requests, a single Hello to see the answer;
//! * `tests/dos/client.c`, linked with libstasis (built once per run with `cargo build
//!   --release -p libstasis` in `target/tmp/selfdump-libstasis`, shared with the other tests
//!   that need it): one `stasis_dump_self()`;
//! * the `stasis` CLI (expected next to stasisd, as `cargo build --workspace` puts it) for a
//!   dump and a non-detached restore through the daemon.
//!
//! The tests need root, gcc and python3. Without them each test prints a notice and passes,
//! except under `CI=true`, where it fails. Work directories of failed tests are kept in
//! `target/tmp/dos-<pid>/<test>/` with the daemon's log.

// Helpers panic on setup failures on purpose: a test that cannot set up fails.
#![allow(clippy::unwrap_used)]

mod common;

use common::{built, c_program_in_run, chmod, run_root, send_hello, stasis_cli, Stasisd};
use stasis_client::code;
use stasis_client::protocol::{self, Message, TransportError};
use stasis_sys::process;
use stasis_sys::socket as sock;
use stasis_test_infra::procfs::{ppid, status_field};
use stasis_test_infra::user::{OwnUser, TestUser};
use stasis_test_infra::wait::wait_until;
use stasis_test_infra::{require_root, require_tool, WorkDir};
use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// This run's work directories: `target/tmp/dos-<pid>`.
const RUN: &str = "dos";
/// The daemons' sockets: `/tmp/stasis-dos.<pid>`.
const SOCKETS: &str = "stasis-dos";

/// Deadline for a line, a worker count or a process state to appear.
const WAIT: Duration = Duration::from_secs(30);
const PYTHON: &str = "/usr/bin/python3";

// ---------------------------------------------------------------------------------------
// Environment.

/// Whether the test can run here: root, python3, and gcc when `gcc` is set. If not, a notice
/// (and the test passes), or a failure under `CI=true`.
fn can_run(_test: &str, gcc: bool) -> bool {
    require_root() && require_tool(PYTHON) && (!gcc || require_tool("gcc"))
}

// ---------------------------------------------------------------------------------------
// Users.

// ---------------------------------------------------------------------------------------
// Programs.

/// `tests/dos/client.c` linked with libstasis, built once per run.
fn c_client() -> &'static Path {
    static P: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&P, || {
        c_program_in_run(RUN, "tests/dos/client.c", "client", true)
    })
    .as_path()
}

/// The protocol by hand. `stall PATH N VERSION`: N connections, each through the handshake,
/// then nothing ("STALLED N"). `hello PATH VERSION`: one Hello, prints the answer ("ANSWER
/// Welcome" or "ANSWER Failure CODE MESSAGE"). `garbage PATH N`: N connections that each send
/// garbage and read the answer ("DONE" and the answers counted by code).
const PY_CLIENT: &str = r#"
import socket, struct, sys, time
MAGIC = 0x50535453
def msg(kind, body):
    return struct.pack('<IHHI', MAGIC, kind, 0, len(body)) + body
def hello(version):
    v = version.encode()
    return msg(1, struct.pack('<H', len(v)) + v)
def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(path)
    return s
def answer(s):
    for _ in range(2):
        try:
            b = s.recv(4096)
            break
        except ConnectionResetError:
            # Reported once, before what the daemon sent.
            continue
    if len(b) < 12:
        return ('closed', 0, '')
    magic, kind, _, n = struct.unpack_from('<IHHI', b)
    if kind == 2:
        return ('Welcome', 0, '')
    if kind == 9:
        code, = struct.unpack_from('<i', b, 12)
        l, = struct.unpack_from('<H', b, 16)
        return ('Failure', code, b[18:18 + l].decode())
    return ('kind%d' % kind, 0, '')
mode, path = sys.argv[1], sys.argv[2]
if mode == 'stall':
    n, version = int(sys.argv[3]), sys.argv[4]
    held = []
    for i in range(n):
        s = connect(path)
        s.send(hello(version))
        a = answer(s)
        if a[0] != 'Welcome':
            print('UNEXPECTED', *a, flush=True)
            sys.exit(1)
        held.append(s)
    print('STALLED', n, flush=True)
    time.sleep(120)
elif mode == 'hello':
    s = connect(path)
    try:
        s.send(hello(sys.argv[3]))
    except (BrokenPipeError, ConnectionResetError):
        pass
    print('ANSWER', *answer(s), flush=True)
elif mode == 'garbage':
    counts = {}
    for i in range(int(sys.argv[3])):
        s = connect(path)
        try:
            s.send(b'garbage\n forged line')
        except (BrokenPipeError, ConnectionResetError):
            pass
        a = answer(s)
        key = '%s:%d' % (a[0], a[1])
        counts[key] = counts.get(key, 0) + 1
        s.close()
    print('DONE', ' '.join('%s=%d' % kv for kv in sorted(counts.items())), flush=True)
"#;

// ---------------------------------------------------------------------------------------
// A test's directory, processes and daemon.

/// A program started by a test, its stdout and stderr in `log`.
struct Prog {
    child: Child,
    log: PathBuf,
}

impl Prog {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a line starting with `prefix`; returns it.
    fn wait_line(&mut self, prefix: &str) -> String {
        let mut found = None;
        let mut ended = None;
        wait_until(WAIT, || {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            found = text
                .lines()
                .find(|l| l.starts_with(prefix))
                .map(str::to_string);
            if found.is_none() && ended.is_none() {
                ended = self.child.try_wait().unwrap();
                return false;
            }
            found.is_some() || ended.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no line starting with {prefix:?} in {} ({}):\n{}",
                self.log.display(),
                match ended {
                    Some(st) => format!("the program ended: {st}"),
                    None => format!("not within {WAIT:?}"),
                },
                fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }

    /// Waits (bounded) for the program to end.
    fn wait(&mut self) -> ExitStatus {
        let mut st = None;
        wait_until(WAIT, || {
            st = self.child.try_wait().unwrap();
            st.is_some()
        });
        st.unwrap_or_else(|| panic!("{} did not end within {WAIT:?}", self.log.display()))
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ctx {
    dir: WorkDir,
    seq: AtomicUsize,
}

impl Ctx {
    fn new(name: &str) -> Ctx {
        let dir = WorkDir::new(run_root(RUN).join(name));
        chmod(&dir, 0o755);
        Ctx {
            dir,
            seq: AtomicUsize::new(0),
        }
    }

    /// A directory owned by `user`, mode 0700.
    fn user_dir(&self, user: &TestUser, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(user.uid), Some(user.gid)).unwrap();
        chmod(&d, 0o700);
        d
    }

    /// Starts `cmd` (clean environment plus `STASIS_SOCKET=socket` when given, stdin
    /// /dev/null, no inherited descriptors, in `/`) with its output in `<name>-<n>.log`.
    fn spawn(&self, mut cmd: Command, name: &str, socket: Option<&Path>) -> Prog {
        let log = self.dir.join(format!(
            "{name}-{}.log",
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let f = File::create(&log).unwrap();
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C")
            .envs(socket.map(|s| ("STASIS_SOCKET", s)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f));
        process::close_inherited_fds_on_exec(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Prog { child, log }
    }

    /// The Python client as `user` (root if None).
    fn python(&self, user: Option<&TestUser>, args: &[&str]) -> Prog {
        let mut cmd = match user {
            Some(u) => u.command(Path::new(PYTHON)),
            None => Command::new(PYTHON),
        };
        cmd.arg("-c").arg(PY_CLIENT).args(args);
        self.spawn(cmd, args[0], None)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // (The directory goes with `self.dir`, or is kept when the test failed.)
    }
}

/// `stasisd --socket <new path> --mode 0666 <args>`, its log in the test's directory.
fn start_daemon(ctx: &Ctx, args: &[&str]) -> Stasisd {
    Stasisd::start(SOCKETS, &ctx.dir.join("stasisd.log"), args)
}

/// `user`'s Python client holding `n` connections through the handshake (so `n` workers of
/// the daemon wait for their requests, for 5 s).
fn hold(ctx: &Ctx, d: &Stasisd, user: &TestUser, n: usize) -> Prog {
    let before = d.workers().len();
    let mut p = ctx.python(
        Some(user),
        &["stall", d.socket_str(), &n.to_string(), protocol::VERSION],
    );
    p.wait_line(&format!("STALLED {n}"));
    d.wait_workers(before + n);
    p
}

/// Ends a [`hold`] and waits until its workers are gone.
fn release(d: &Stasisd, p: Prog, remaining: usize) {
    drop(p);
    d.wait_workers(remaining);
}

/// The answer to a Hello from `user`'s Python client: `("Welcome", 0, "")` or `("Failure",
/// code, message)`.
fn hello_answer(ctx: &Ctx, d: &Stasisd, user: &TestUser) -> (String, i32, String) {
    let mut p = ctx.python(Some(user), &["hello", d.socket_str(), protocol::VERSION]);
    let line = p.wait_line("ANSWER ");
    let mut f = line.splitn(4, ' ').skip(1);
    let kind = f.next().unwrap_or("").to_string();
    let code = f.next().unwrap_or("0").parse().unwrap();
    (kind, code, f.next().unwrap_or("").to_string())
}

/// `client.c` as `user`, dumping itself into `images`; returns its line (DUMPED or ERROR).
/// With `wrap`, that command (run as root, e.g. `unshare -n --`) starts the client's setpriv.
fn c_self_dump(ctx: &Ctx, d: &Stasisd, user: &TestUser, images: &Path, wrap: &[&str]) -> String {
    let mut cmd = match wrap.split_first() {
        None => user.command(c_client()),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest)
                .arg("setpriv")
                .arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .arg("--clear-groups")
                .arg("--")
                .arg(c_client());
            c
        }
    };
    cmd.arg(images);
    let mut p = ctx.spawn(cmd, "client", Some(&d.socket));
    let line = p.wait_line("");
    p.wait();
    line
}

/// The `stasis` CLI as `user`, through `d`.
fn cli(ctx: &Ctx, d: &Stasisd, user: &TestUser, args: &[&str]) -> Prog {
    let mut cmd = user.command(stasis_cli());
    cmd.args(args);
    ctx.spawn(cmd, &format!("stasis-{}", args[0]), Some(&d.socket))
}

// ---------------------------------------------------------------------------------------
// Tests.

#[test]
fn one_user_at_its_limit_does_not_block_another() {
    if !can_run("one_user_at_its_limit_does_not_block_another", true) {
        return;
    }
    let ctx = Ctx::new("one_user_at_its_limit_does_not_block_another");
    let (a, b) = (OwnUser::create(), OwnUser::create());
    let d = start_daemon(&ctx, &["--max-workers", "4", "--max-workers-per-uid", "2"]);

    // A holds both of its slots: its next connection is answered "busy" at once, naming the
    // uid and the limit.
    let held = hold(&ctx, &d, &a, 2);
    let t0 = Instant::now();
    let (kind, c, message) = hello_answer(&ctx, &d, &a);
    assert_eq!((kind.as_str(), c), ("Failure", code::BUSY), "{message}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(
        message.contains("busy")
            && message.contains(&format!("uid {}", a.uid))
            && message.contains("--max-workers-per-uid 2"),
        "{message}"
    );
    release(&d, held, 0);

    // Through the C library: stasis_dump_self returns STASIS_E_BUSY with the daemon's reason.
    // (The client is built first: a held worker waits 5 s for its request, and a build under
    // load can take longer.)
    let images_a = ctx.user_dir(&a, "images-a");
    c_client();
    let held = hold(&ctx, &d, &a, 2);
    let line = c_self_dump(&ctx, &d, &a, &images_a, &[]);
    eprintln!("[one_user_at_its_limit_does_not_block_another] C client over the limit: {line}");
    assert!(
        line.starts_with(&format!("ERROR {} ", code::BUSY))
            && line.contains("busy")
            && line.contains(&format!("uid {}", a.uid)),
        "{line}"
    );
    // B is served meanwhile: a complete self-dump.
    let images_b = ctx.user_dir(&b, "images-b");
    let line = c_self_dump(&ctx, &d, &b, &images_b, &[]);
    assert!(line.starts_with("DUMPED "), "{line}\n{}", d.log_text());
    assert!(images_b.join(stasis_image::names::INVENTORY).exists());
    assert_eq!(fs::read_dir(&images_a).unwrap().count(), 0);
    release(&d, held, 0);

    // With A's and B's slots all taken, the daemon is full: even root is answered "busy".
    let held = hold(&ctx, &d, &a, 2);
    let held_b = hold(&ctx, &d, &b, 2);
    let conn = sock::seqpacket_connect(&d.socket).unwrap();
    process::set_socket_timeouts(conn.as_fd(), Duration::from_secs(5)).unwrap();
    match protocol::recv(conn.as_fd()) {
        Ok((Message::Failure { code: c, message }, _)) => {
            assert_eq!(c, code::BUSY, "{message}");
            assert!(message.contains("--max-workers 4"), "{message}");
        }
        other => panic!("root over --max-workers: expected a Failure, got {other:?}"),
    }
    release(&d, held_b, 2);
    release(&d, held, 0);
    let log = d.log_text();
    assert!(
        log.contains(&format!("refusing a connection of uid {}", a.uid)),
        "{log}"
    );
    d.stop();
}

#[test]
fn non_detached_restore_gives_its_slot_back_and_ends_with_its_client() {
    let name = "non_detached_restore_gives_its_slot_back_and_ends_with_its_client";
    if !can_run(name, false) {
        return;
    }
    let ctx = Ctx::new(name);
    let a = OwnUser::create();
    let d = start_daemon(&ctx, &["--max-workers-per-uid", "1"]);

    // A process of A's, dumped (and killed) by A through the daemon.
    let mut sleep = a.command(Path::new("/bin/sleep"));
    sleep.arg("1000");
    let mut sleeper = ctx.spawn(sleep, "sleep", None);
    let pid = sleeper.pid();
    // The restore reopens its output as A.
    std::os::unix::fs::chown(&sleeper.log, Some(a.uid), Some(a.gid)).unwrap();
    let images = ctx.user_dir(&a, "images");
    let images_str = images.to_str().unwrap();
    let st = cli(
        &ctx,
        &d,
        &a,
        &["dump", "-t", &pid.to_string(), "-D", images_str],
    )
    .wait();
    assert!(st.success(), "stasis dump: {st}\n{}", d.log_text());
    sleeper.wait();

    // A restores it and waits for it (not detached).
    let mut restorer = cli(&ctx, &d, &a, &["restore", "-D", images_str]);
    let mut worker = None;
    let appeared = wait_until(WAIT, || {
        worker = ppid(pid).filter(|p| d.workers().contains(p));
        worker.is_some()
    });
    assert!(
        appeared,
        "pid {pid} was not restored as a child of a worker\n{}",
        d.log_text()
    );
    let worker = worker.unwrap();
    // Its worker gave its slot back: with --max-workers-per-uid 1, A is served again.
    let mut answer = (String::new(), 0, String::new());
    let served = wait_until(Duration::from_secs(10), || {
        answer = hello_answer(&ctx, &d, &a);
        answer.0 == "Welcome"
    });
    assert!(
        served,
        "A is refused while its restore only waits: {answer:?}\n{}",
        d.log_text()
    );
    assert!(d.workers().contains(&worker));

    // The client goes away: the worker ends, the restored process runs on without it.
    assert!(process::kill(restorer.pid(), libc::SIGKILL).is_ok());
    restorer.wait();
    assert!(
        wait_until(WAIT, || !d.workers().contains(&worker)),
        "worker {worker} still waits for pid {pid} after its client hung up\n{}",
        d.log_text()
    );
    assert!(
        wait_until(WAIT, || ppid(pid).is_some_and(|p| p != worker)),
        "pid {pid}: parent {:?}",
        ppid(pid)
    );
    let state = status_field(pid, "State").unwrap_or_default();
    assert!(
        state.starts_with('S') || state.starts_with('R'),
        "the restored pid {pid} is {state:?}"
    );
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        PathBuf::from("/usr/bin/sleep")
    );
    let _ = process::kill(pid, libc::SIGKILL);
    assert!(
        d.log_text().contains("the client hung up"),
        "{}",
        d.log_text()
    );
    d.stop();
}

#[test]
fn log_of_a_flood_is_rate_limited_per_uid() {
    if !can_run("log_of_a_flood_is_rate_limited_per_uid", false) {
        return;
    }
    let ctx = Ctx::new("log_of_a_flood_is_rate_limited_per_uid");
    let a = OwnUser::create();
    // The defaults: 20 lines at once, then 2 per second.
    let d = start_daemon(&ctx, &[]);
    let t0 = Instant::now();
    let mut flood = ctx.python(Some(&a), &["garbage", d.socket_str(), "1000"]);
    let done = flood.wait_line("DONE");
    let elapsed = t0.elapsed();
    eprintln!("[log_of_a_flood_is_rate_limited_per_uid] 1000 requests in {elapsed:?}: {done}");
    // Every request got an answer (a protocol error, or "busy" when the uid's slots were
    // still taken).
    let answered: u64 = done
        .split_whitespace()
        .skip(1)
        .filter(|kv| {
            kv.starts_with(&format!("Failure:{}=", code::PROTOCOL))
                || kv.starts_with(&format!("Failure:{}=", code::BUSY))
        })
        .map(|kv| kv.rsplit('=').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(answered, 1000, "{done}");
    // Once the bucket refills, a summary says how many lines were dropped.
    let summary = format!("uid {}: ", a.uid);
    assert!(
        wait_until(Duration::from_secs(10), || d.log_text().contains(&summary)),
        "no summary line\n{}",
        d.log_text()
    );
    d.wait_workers(0);
    // Let the last summary come (the bucket gets a token every 0.5 s).
    std::thread::sleep(Duration::from_millis(1500));
    let log = d.log_text();
    let uid_field = format!("caller_uid={}", a.uid);
    let refusal = format!("refusing a connection of uid {}", a.uid);
    let logged = log
        .lines()
        .filter(|l| l.contains(&uid_field) || l.contains(&refusal))
        .count() as u64;
    let dropped: u64 = log
        .lines()
        .filter_map(|l| l.split_once(&summary))
        .map(|(_, rest)| {
            rest.split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    let summaries = log.lines().filter(|l| l.contains(&summary)).count();
    eprintln!(
        "[log_of_a_flood_is_rate_limited_per_uid] {logged} lines logged, {dropped} dropped, \
         {summaries} summaries, {} lines in all",
        log.lines().count()
    );
    // One line per failed request: each was either logged or counted as dropped.
    assert_eq!(logged + dropped, 1000, "{log}");
    let allowed = 20 + 2 * (elapsed.as_secs() + 2);
    assert!(
        logged + summaries as u64 <= allowed,
        "{logged} lines and {summaries} summaries in {elapsed:?}, at most {allowed} allowed"
    );
    // Escaped: the newline in the garbage forged no line.
    assert!(!log.lines().any(|l| l.starts_with(" forged line")), "{log}");
    d.stop();
}

#[test]
fn request_deadline_kills_a_worker_that_holds_its_slot() {
    if !can_run("request_deadline_kills_a_worker_that_holds_its_slot", false) {
        return;
    }
    let ctx = Ctx::new("request_deadline_kills_a_worker_that_holds_its_slot");
    let d = start_daemon(&ctx, &["--request-deadline", "2"]);
    // The worker waits for a request (up to 5 s per message); the deadline ends it before.
    let conn: OwnedFd = sock::seqpacket_connect(&d.socket).unwrap();
    send_hello(&conn);
    process::set_socket_timeouts(conn.as_fd(), Duration::from_secs(10)).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        protocol::recv(conn.as_fd()),
        Ok((Message::Welcome { .. }, _))
    ));
    let r = protocol::recv(conn.as_fd());
    let waited = t0.elapsed();
    assert!(matches!(r, Err(TransportError::Closed)), "{r:?}");
    assert!(
        waited < Duration::from_millis(4500),
        "closed after {waited:?}\n{}",
        d.log_text()
    );
    assert!(
        d.log_text()
            .contains("held its slot for more than 2 s: killed"),
        "{}",
        d.log_text()
    );
    d.wait_workers(0);
    d.stop();
}

#[test]
fn self_dumps_from_other_namespaces() {
    if !can_run("self_dumps_from_other_namespaces", true) {
        return;
    }
    let ctx = Ctx::new("self_dumps_from_other_namespaces");
    let a = OwnUser::create();
    let d = start_daemon(&ctx, &[]);

    // A user namespace of A's own making: refused, naming it and why.
    let images = ctx.user_dir(&a, "images-userns");
    let mut cmd = a.command(Path::new("/usr/bin/unshare"));
    cmd.args(["-U", "-r", "--"]).arg(c_client()).arg(&images);
    let mut p = ctx.spawn(cmd, "client-userns", Some(&d.socket));
    let line = p.wait_line("");
    eprintln!("[self_dumps_from_other_namespaces] user namespace: {line}");
    assert!(
        line.starts_with(&format!("ERROR {} ", code::REFUSED))
            && line.contains("user namespace user:[")
            && line.contains("capabilities and ids"),
        "{line}"
    );
    assert_eq!(fs::read_dir(&images).unwrap().count(), 0);

    // A network namespace (made by root, A inside it): supported.
    let images = ctx.user_dir(&a, "images-netns");
    let line = c_self_dump(&ctx, &d, &a, &images, &["unshare", "-n", "--"]);
    assert!(line.starts_with("DUMPED "), "{line}\n{}", d.log_text());
    assert!(images.join(stasis_image::names::INVENTORY).exists());

    // A pid namespace: refused, naming it.
    let images = ctx.user_dir(&a, "images-pidns");
    let line = c_self_dump(&ctx, &d, &a, &images, &["unshare", "-p", "-f", "--"]);
    eprintln!("[self_dumps_from_other_namespaces] pid namespace: {line}");
    assert!(
        line.starts_with(&format!("ERROR {} ", code::REFUSED))
            && line.contains("pid namespace pid:["),
        "{line}"
    );
    assert_eq!(fs::read_dir(&images).unwrap().count(), 0);
    d.stop();
}
