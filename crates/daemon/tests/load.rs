//! Load (issue 13, "Load"): one real `stasisd` with its default limits (`--max-workers` 64,
//! 16 per uid) under many clients at once, real unprivileged users (created per test,
//! `stasis-t-<pid>-<n>`, removed when the test ends).
//!
//! * `concurrent_self_dumps_of_two_users`: 100 processes of two users (`tests/load/client.c`,
//!   linked with libstasis) self-dump at once. Every request is served (a complete dump of its
//!   process) or answered "busy" (`STASIS_E_BUSY`; the client then tries again), none is lost
//!   or hangs, and afterwards the daemon has its descriptors and (about) its memory of before.
//! * `hostile_connections_mixed_with_real_requests`: 10 000 connections of garbage, empty and
//!   half-closed connections, unknown messages, wrong versions and slow clients (Python, two
//!   users), while a third user's real self-dumps go on: each of those is served, and the
//!   daemon ends with its descriptors and memory of before.
//!
//! `STASIS_LOAD_SCALE=N` multiplies the figures (clients, connections) for a longer run. The
//! tests need root, gcc and python3; without them each test prints a notice and passes, except
//! under `CI=true`, where it fails. Work directories of failed tests are kept in
//! `target/tmp/load-<pid>/<test>/` with the daemon's log and the clients' logs.

// Helpers panic on setup failures on purpose: a test that cannot set up fails.
#![allow(clippy::unwrap_used)]

mod common;

use common::{built, c_program_in_run, chmod, run_root, Stasisd};
use stasis_client::code;
use stasis_image::{read_record, ImageDir, Inventory, ProcessImage, RecordKind};
use stasis_sys::process;
use stasis_test_infra::user::{OwnUser, TestUser};
use stasis_test_infra::wait::wait_until;
use stasis_test_infra::{require_root, require_tool, WorkDir};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// This run's work directories: `target/tmp/load-<pid>`.
const RUN: &str = "load";
/// The daemons' sockets: `/tmp/stasis-load.<pid>`.
const SOCKETS: &str = "stasis-load";
const PYTHON: &str = "/usr/bin/python3";
/// How often a client tries again after "busy" (20–120 ms apart) before it gives up.
const TRIES: &str = "1000";
/// Deadline for everything the tests wait for: generous, the machine is shared.
const WAIT: Duration = Duration::from_secs(180);

/// `STASIS_LOAD_SCALE` (default 1): the figures of the tests are multiplied by it.
fn scale() -> usize {
    std::env::var("STASIS_LOAD_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

fn can_run() -> bool {
    require_root() && require_tool(PYTHON) && require_tool("gcc")
}

/// `tests/load/client.c` linked with libstasis, built once per run.
fn client() -> &'static Path {
    static P: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built(&P, || {
        c_program_in_run(RUN, "tests/load/client.c", "client", true)
    })
    .as_path()
}

/// A test's work directory (world-traversable).
fn work_dir(name: &str) -> WorkDir {
    let dir = WorkDir::new(run_root(RUN).join(name));
    chmod(&dir, 0o755);
    dir
}

/// A directory owned by `user`, mode 0700.
fn user_dir(dir: &Path, user: &TestUser, name: &str) -> PathBuf {
    let d = dir.join(name);
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(user.uid), Some(user.gid)).unwrap();
    chmod(&d, 0o700);
    d
}

/// Starts `cmd` (clean environment plus `STASIS_SOCKET`, stdin /dev/null, no inherited
/// descriptors, in `/`) with its output in `log`.
fn spawn(mut cmd: Command, log: &Path, socket: &Path) -> Child {
    let f = File::create(log).unwrap();
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .env("STASIS_SOCKET", socket)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f));
    process::close_inherited_fds_on_exec(&mut cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

/// One self-dump of `client.c` as `user` into `images`, its output in `log`.
fn start_client(user: &TestUser, images: &Path, log: &Path, d: &Stasisd) -> Child {
    let mut cmd = user.command(client());
    cmd.arg(images).arg(TRIES);
    spawn(cmd, log, &d.socket)
}

/// Waits (until `deadline`) for `child` to end; its log then.
fn finish(child: &mut Child, log: &Path, deadline: Instant) -> String {
    let ended = wait_until(deadline.saturating_duration_since(Instant::now()), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    assert!(ended, "{} hung:\n{text}", log.display());
    text
}

/// What a client's line says.
enum Outcome {
    /// Dumped (pid), after so many "busy" answers.
    Dumped(i32, usize),
    /// Gave up after so many "busy" answers.
    Busy(usize),
}

fn outcome(line: &str, d: &Stasisd) -> Outcome {
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.as_slice() {
        ["DUMPED", pid, busy] => Outcome::Dumped(pid.parse().unwrap(), busy.parse().unwrap()),
        ["ERROR", c, busy, ..] if c.parse::<i32>().ok() == Some(code::BUSY) => {
            Outcome::Busy(busy.parse().unwrap())
        }
        _ => panic!(
            "a request neither served nor refused \"busy\": {line:?}\n{}",
            d.log_text()
        ),
    }
}

/// Checks that `images` holds a complete dump of `pid`.
fn check_dump(images: &Path, pid: i32) {
    let dir = ImageDir::open(images).unwrap();
    let inv: Inventory = read_record(&dir, stasis_image::names::INVENTORY, RecordKind::Inventory)
        .unwrap_or_else(|e| panic!("{}: {e}", images.display()));
    assert_eq!(inv.root_pid, pid, "{}", images.display());
    assert_eq!(inv.processes, vec![pid], "{}", images.display());
    let p: ProcessImage = read_record(
        &dir,
        &stasis_image::names::process(pid),
        RecordKind::Process,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", images.display()));
    assert_eq!(p.pid, pid);
    assert!(
        !p.vmas.is_empty() && !p.page_runs.is_empty(),
        "{}",
        images.display()
    );
    assert!(
        images.join(stasis_image::names::pages(pid)).is_file(),
        "{}",
        images.display()
    );
}

/// The daemon's descriptors and memory before the load.
struct Baseline {
    fds: usize,
    rss_kib: u64,
}

/// Waits until the daemon has no worker left, then takes its figures.
fn settle(d: &Stasisd) -> Baseline {
    assert!(
        wait_until(WAIT, || d.workers().is_empty()),
        "stasisd still has workers {:?}\n{}",
        d.workers(),
        d.log_text()
    );
    Baseline {
        fds: d.fd_count(),
        rss_kib: d.rss_kib(),
    }
}

/// The daemon is back to `before`: the same descriptors, and its memory within 2 MiB (or a
/// tenth) of it.
fn check_back_to(d: &Stasisd, before: &Baseline, test: &str) {
    let after = settle(d);
    eprintln!(
        "[{test}] stasisd: {} fds before, {} after; VmRSS {} KiB before, {} KiB after",
        before.fds, after.fds, before.rss_kib, after.rss_kib
    );
    assert_eq!(
        after.fds, before.fds,
        "stasisd's descriptors after the load"
    );
    let slack = (before.rss_kib / 10).max(2048);
    assert!(
        after.rss_kib <= before.rss_kib + slack,
        "stasisd's memory grew from {} to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
}

#[test]
fn concurrent_self_dumps_of_two_users() {
    let test = "concurrent_self_dumps_of_two_users";
    if !can_run() {
        return;
    }
    let n = 100 * scale();
    let dir = work_dir(test);
    let users = [OwnUser::create(), OwnUser::create()];
    client();
    let d = Stasisd::start(SOCKETS, &dir.join("stasisd.log"), &[]);

    // One request first: what the daemon allocates once is not counted as growth.
    let warm = user_dir(&dir, &users[0], "warm");
    let log = dir.join("warm.log");
    let mut c = start_client(&users[0], &warm, &log, &d);
    let line = finish(&mut c, &log, Instant::now() + WAIT);
    assert!(line.starts_with("DUMPED "), "{line}\n{}", d.log_text());
    let before = settle(&d);

    // n clients at once, half of each user.
    let t0 = Instant::now();
    let mut clients: Vec<(Child, PathBuf, PathBuf)> = (0..n)
        .map(|i| {
            let user = &users[i % 2];
            let images = user_dir(&dir, user, &format!("images-{i}"));
            let log = dir.join(format!("client-{i}.log"));
            (start_client(user, &images, &log, &d), images, log)
        })
        .collect();
    let started = t0.elapsed();
    let deadline = Instant::now() + WAIT;
    let (mut served, mut first_try, mut busy_answers, mut gave_up) = (0, 0, 0, 0);
    for (child, images, log) in &mut clients {
        let text = finish(child, log, deadline);
        match outcome(text.lines().next().unwrap_or(""), &d) {
            Outcome::Dumped(pid, busy) => {
                assert_eq!(pid as u32, child.id(), "{}", log.display());
                check_dump(images, pid);
                served += 1;
                first_try += usize::from(busy == 0);
                busy_answers += busy;
            }
            Outcome::Busy(busy) => {
                // Refused: nothing written.
                assert_eq!(fs::read_dir(&*images).unwrap().count(), 0);
                gave_up += 1;
                busy_answers += busy;
            }
        }
    }
    eprintln!(
        "[{test}] {n} clients of 2 users (started in {started:?}): {served} served \
         ({first_try} at the first try), {busy_answers} \"busy\" answers, {gave_up} gave up; \
         all done in {:?}",
        t0.elapsed()
    );
    assert_eq!(served + gave_up, n);
    // Each retries for a minute or more: with the daemon serving, every one gets through.
    assert_eq!(served, n, "clients gave up while the daemon was busy");
    check_back_to(&d, &before, test);
    d.stop();
}

/// The hostile clients: `flood PATH N VERSION SEED` makes N connections, each one of: garbage
/// (random bytes, up to over the largest message), a connection closed at once, one
/// half-closed (shutdown of its writing side) and left, a Hello and then a message of an
/// unknown kind or a truncated one, a Hello of another version, a Hello and then nothing for
/// up to 7 s (past the worker's 5-s timeout; at most 8 such slow clients at a time), a
/// connection that waits up to 50 ms before its Hello and reads the answer. Prints "DONE" and the counts by kind and answer.
const PY_FLOOD: &str = r#"
import os, random, socket, struct, sys, time
MAGIC = 0x50535453
def msg(kind, body):
    return struct.pack('<IHHI', MAGIC, kind, 0, len(body)) + body
def hello(version):
    v = version.encode()
    return msg(1, struct.pack('<H', len(v)) + v)
path, n, version, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rnd = random.Random(seed)
counts = {}
def count(k):
    counts[k] = counts.get(k, 0) + 1
slow = []
for i in range(n):
    now = time.monotonic()
    for t, s in [x for x in slow if x[0] <= now]:
        s.close()
    slow = [x for x in slow if x[0] > now]
    kind = rnd.choice(['garbage', 'close', 'halfclose', 'unknown', 'truncated', 'version',
                       'slow', 'late'])
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(10)
        s.connect(path)
    except OSError as e:
        count('connect-error-' + type(e).__name__)
        continue
    try:
        if kind == 'garbage':
            s.send(os.urandom(rnd.randrange(1, 5000)))
            s.close()
        elif kind == 'close':
            s.close()
        elif kind == 'halfclose':
            s.shutdown(socket.SHUT_WR)
            s.close()
        elif kind == 'unknown':
            s.send(hello(version))
            s.send(msg(rnd.randrange(10, 65535), os.urandom(rnd.randrange(0, 64))))
            s.close()
        elif kind == 'truncated':
            s.send(hello(version))
            s.send(msg(3, b'\x01')[:rnd.randrange(1, 13)])
            s.close()
        elif kind == 'version':
            s.send(hello('0.0.0-other'))
            s.close()
        elif kind == 'slow':
            if len(slow) < 8:
                s.send(hello(version))
                slow.append((now + rnd.uniform(0.5, 7.0), s))
            else:
                kind = 'close'
                s.close()
        elif kind == 'late':
            time.sleep(rnd.uniform(0, 0.05))
            s.send(hello(version))
            b = s.recv(4096)
            a = struct.unpack_from('<IHHI', b)[1] if len(b) >= 12 else 0
            kind = 'late-answer%d' % a
            s.close()
        count(kind)
    except OSError as e:
        count(kind + '-' + type(e).__name__)
        s.close()
for t, s in slow:
    s.close()
print('DONE', ' '.join('%s=%d' % kv for kv in sorted(counts.items())), flush=True)
"#;

#[test]
fn hostile_connections_mixed_with_real_requests() {
    let test = "hostile_connections_mixed_with_real_requests";
    if !can_run() {
        return;
    }
    let n = 10_000 * scale();
    let dir = work_dir(test);
    let (a, b, c) = (OwnUser::create(), OwnUser::create(), OwnUser::create());
    client();
    let d = Stasisd::start(SOCKETS, &dir.join("stasisd.log"), &[]);

    let warm = user_dir(&dir, &c, "warm");
    let log = dir.join("warm.log");
    let mut w = start_client(&c, &warm, &log, &d);
    let line = finish(&mut w, &log, Instant::now() + WAIT);
    assert!(line.starts_with("DUMPED "), "{line}\n{}", d.log_text());
    let before = settle(&d);

    // Two users flood, half the connections each.
    let t0 = Instant::now();
    let mut floods: Vec<(Child, PathBuf)> = [&a, &b]
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let mut cmd = u.command(PYTHON);
            cmd.arg("-c").arg(PY_FLOOD).args([
                d.socket.to_str().unwrap(),
                &(n / 2).to_string(),
                stasis_client::protocol::VERSION,
                &i.to_string(),
            ]);
            let log = dir.join(format!("flood-{i}.log"));
            (spawn(cmd, &log, &d.socket), log)
        })
        .collect();

    // Meanwhile the third user's real self-dumps, one after the other, until the floods end
    // (at least 5).
    let deadline = Instant::now() + WAIT;
    let mut real = 0;
    let mut busy_answers = 0;
    let mut real_times = Vec::new();
    loop {
        let flooding = floods
            .iter_mut()
            .any(|(f, _)| matches!(f.try_wait(), Ok(None)));
        if !flooding && real >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the floods did not end");
        let images = user_dir(&dir, &c, &format!("images-{real}"));
        let log = dir.join(format!("client-{real}.log"));
        let t = Instant::now();
        let mut child = start_client(&c, &images, &log, &d);
        let text = finish(&mut child, &log, deadline);
        match outcome(text.lines().next().unwrap_or(""), &d) {
            Outcome::Dumped(pid, busy) => {
                check_dump(&images, pid);
                busy_answers += busy;
            }
            Outcome::Busy(busy) => panic!(
                "a real request got only \"busy\" ({busy} times) during the flood\n{}",
                d.log_text()
            ),
        }
        real_times.push(t.elapsed());
        real += 1;
    }
    let flood_time = t0.elapsed();
    for (f, log) in &mut floods {
        let text = finish(f, log, deadline);
        eprintln!("[{test}] flood: {}", text.trim());
        assert!(text.starts_with("DONE "), "{text}");
    }
    real_times.sort();
    eprintln!(
        "[{test}] {n} hostile connections of 2 users in {flood_time:?}; meanwhile {real} real \
         self-dumps of a third user all served ({busy_answers} \"busy\" answers), in {:?} to \
         {:?} each",
        real_times[0],
        real_times[real_times.len() - 1]
    );
    assert!(
        process::kill(d.pid, 0).is_ok(),
        "stasisd died\n{}",
        d.log_text()
    );
    check_back_to(&d, &before, test);

    // And it still serves.
    let images = user_dir(&dir, &a, "images-after");
    let log = dir.join("after.log");
    let mut child = start_client(&a, &images, &log, &d);
    let text = finish(&mut child, &log, Instant::now() + WAIT);
    match outcome(text.lines().next().unwrap_or(""), &d) {
        Outcome::Dumped(pid, _) => check_dump(&images, pid),
        Outcome::Busy(_) => panic!("busy after the flood\n{}", d.log_text()),
    }
    d.stop();
}
