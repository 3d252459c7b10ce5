//! End-to-end tests of authenticated images (docs/security.md, "Restore runs only images
//! stasisd wrote, unchanged"): a real `stasisd` with an image key of its own, an unprivileged
//! user created for the run, the C self-dumping program linked with libstasis.
//!
//! * `self_dump_restores_and_any_edit_is_refused`: the user's self-dump through stasisd
//!   restores through stasisd; the same images with one byte of a page run changed, a record
//!   edited (with valid CRCs), a pages file of another dump or of another process of the dump
//!   in its place, a file removed, or `auth.img` removed, are each refused with
//!   `STASIS_E_IMAGE` (-1010) and "not authenticated", and nothing runs.
//! * `images_root_wrote_without_the_key_are_refused`: root's `stasis dump --no-auth` (as an
//!   older stasis would write them) and a dump with another key are refused for the user; the
//!   same dump with stasisd's key restores. `stasis show` tells which is which.
//!
//! The restores are requested by this test binary run as the user (`setpriv`), through the
//! client library, so that the code the library returns is checked. The tests need root, gcc
//! and setpriv: without them they print a notice and pass, except under CI (`CI=true`), where
//! they fail.

#![allow(clippy::unwrap_used)] // a test that cannot set up fails

mod common;

use common::{chmod, run_root, selfdump_programs, stasis_cli, stasisd_exe, user_log, Programs};
use stasis_image::{names, ProcessImage, RecordKind, RAW_DATA_OFFSET};
use stasis_test_infra::user::OwnUser;
use stasis_test_infra::wait::wait_until;
use stasis_test_infra::{require_root, require_tool};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// This run's work directories: `target/tmp/authimg-<pid>`.
const RUN: &str = "authimg";
const TIMEOUT: Duration = Duration::from_secs(30);
/// Set (to an images directory) when this binary runs as the restore helper.
const HELPER_IMAGES_ENV: &str = "STASIS_AUTH_TEST_IMAGES";
const HELPER_SOCKET_ENV: &str = "STASIS_AUTH_TEST_SOCKET";

// ---------------------------------------------------------------------------------------
// What the machine offers.

/// True when the test can run; otherwise fails under CI, else prints a notice.
fn can_run(_test: &str) -> bool {
    require_root() && require_tool("gcc") && require_tool("setpriv") && require_tool("useradd")
}

/// Whether `pid` runs (a zombie does not).
fn runs(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// The programs: libstasis (release, in the target directory the self-dump tests use too) and
// the C programs of tests/selfdump/.

/// The C programs of `tests/selfdump/`, built once per run.
fn programs() -> &'static Programs {
    selfdump_programs(RUN)
}

// ---------------------------------------------------------------------------------------
// One test's world: a user, a work directory, a daemon with a key of its own.

struct World {
    name: String,
    dir: PathBuf,
    user: OwnUser,
    uid: u32,
    gid: u32,
    key_file: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    /// Processes to kill at the end, whatever happened.
    pids: Vec<i32>,
    children: Vec<Child>,
    seq: AtomicUsize,
}

impl World {
    fn new(name: &str) -> World {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let user = OwnUser::create();
        let (uid, gid) = (user.uid, user.gid);
        let dir = run_root(RUN).join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        chmod(dir.parent().unwrap(), 0o755);
        chmod(&dir, 0o755);
        let mut w = World {
            name: name.to_string(),
            key_file: dir.join("key").join("image.key"),
            socket: PathBuf::from(format!("/tmp/stasis-ai.{}.{n}.sock", std::process::id())),
            dir,
            user,
            uid,
            gid,
            daemon: None,
            pids: Vec::new(),
            children: Vec::new(),
            seq: AtomicUsize::new(0),
        };
        w.start_daemon();
        w
    }

    fn start_daemon(&mut self) {
        let log = File::create(self.dir.join("stasisd.log")).unwrap();
        let mut cmd = Command::new(stasisd_exe());
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(["--mode", "0666", "--key-file"])
            .arg(&self.key_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        stasis_sys::process::close_inherited_fds_on_exec(&mut cmd).process_group(0);
        self.daemon = Some(cmd.spawn().unwrap());
        let log = self.dir.join("stasisd.log");
        let up = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(": listening (")
        });
        assert!(up, "stasisd did not start:\n{}", self.text("stasisd.log"));
        let key = fs::metadata(&self.key_file).unwrap();
        assert_eq!((key.mode() & 0o777, key.len(), key.uid()), (0o600, 32, 0));
        assert!(self.text("stasisd.log").contains("created the image key"));
    }

    fn text(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn next(&self) -> usize {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A directory of the user's (mode 0700).
    fn user_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(self.uid), Some(self.gid)).unwrap();
        chmod(&d, 0o700);
        d
    }

    /// `exe` as the user (real and effective ids, no supplementary group).
    fn as_user(&self, exe: &Path) -> Command {
        let mut c = self.user.command(exe);
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env(stasis_client::SOCKET_ENV, &self.socket);
        c
    }

    /// Starts `cmd` with stdout and stderr appended to `log` (a file of the user's, so that a
    /// restored copy can reopen it); returns its pid.
    fn spawn(&mut self, mut cmd: Command, log: &str) -> (i32, PathBuf) {
        let path = self.dir.join(log);
        let f = user_log(&path, self.uid, self.gid);
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        stasis_sys::process::close_inherited_fds_on_exec(&mut cmd).process_group(0);
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        self.pids.push(pid);
        self.children.push(child);
        (pid, path)
    }

    /// Waits for a line starting with `prefix` in `log`; returns it.
    fn wait_line(&self, log: &Path, prefix: &str) -> String {
        let mut line = None;
        let found = wait_until(TIMEOUT, || {
            line = fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with(prefix))
                .map(str::to_string);
            line.is_some()
        });
        assert!(
            found,
            "no {prefix:?} in {}:\n{}\nstasisd:\n{}",
            log.display(),
            fs::read_to_string(log).unwrap_or_default(),
            self.text("stasisd.log")
        );
        line.unwrap()
    }

    /// Waits until `pid`, a child of this test, has exited; returns its status.
    fn wait_child(&mut self, pid: i32) -> std::process::ExitStatus {
        let i = self
            .children
            .iter()
            .position(|c| c.id() as i32 == pid)
            .unwrap();
        let mut child = self.children.remove(i);
        let mut status = None;
        wait_until(TIMEOUT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap_or_else(|| panic!("pid {pid} did not exit"))
    }

    /// Stops a process that is not a child of this test (a restored copy) with SIGTERM.
    fn terminate(&self, pid: i32) {
        stasis_sys::process::kill(pid, libc::SIGTERM).unwrap();
        assert!(wait_until(TIMEOUT, || !runs(pid)), "pid {pid} runs on");
    }

    /// The user asks stasisd to restore `images`, through the client library (this binary,
    /// run as the user): `Ok(pid)` when it runs, else `Err((code, message))`.
    fn user_restore(&self, images: &Path) -> Result<i32, (i32, String)> {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = self.as_user(&exe);
        cmd.args([
            "helper_restore_as_user",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_IMAGES_ENV, images)
        .env(HELPER_SOCKET_ENV, &self.socket)
        .stdin(Stdio::null());
        stasis_sys::process::close_inherited_fds_on_exec(&mut cmd);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines() {
            if let Some(pid) = line.strip_prefix("STARTED ") {
                return Ok(pid.trim().parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("FAILED ") {
                let (code, msg) = rest.split_once(' ').unwrap();
                return Err((code.parse().unwrap(), msg.to_string()));
            }
        }
        panic!(
            "the restore helper said nothing: {out:?}\nstasisd:\n{}",
            self.text("stasisd.log")
        );
    }

    /// Root runs the `stasis` CLI; returns stdout, or panics with stderr.
    fn root_cli(&self, args: &[&std::ffi::OsStr]) -> String {
        let mut cmd = Command::new(stasis_cli());
        cmd.args(args).stdin(Stdio::null());
        stasis_sys::process::close_inherited_fds_on_exec(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "stasis {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A copy of `images` as a new directory of the user's, files owned by the user, 0600.
    fn user_copy(&self, images: &Path) -> PathBuf {
        let to = self.user_dir(&format!("copy-{}", self.next()));
        for e in fs::read_dir(images).unwrap() {
            let e = e.unwrap();
            let dst = to.join(e.file_name());
            fs::copy(e.path(), &dst).unwrap();
            std::os::unix::fs::chown(&dst, Some(self.uid), Some(self.gid)).unwrap();
            chmod(&dst, 0o600);
        }
        to
    }

    /// The user's restore of `images` is refused as not authenticated, with code -1010, with
    /// `needle` in the message; nothing runs with `pid` afterwards.
    fn refused(&self, images: &Path, pid: i32, needle: &str, case: &str) {
        match self.user_restore(images) {
            Ok(p) => panic!("{case}: the restore was allowed (pid {p})"),
            Err((code, msg)) => {
                eprintln!("[{}] {case}: {code} {msg}", self.name);
                assert_eq!(code, stasis_client::code::IMAGE, "{case}: {msg}");
                assert!(msg.contains(needle), "{case}: {needle:?} not in {msg:?}");
            }
        }
        assert!(!runs(pid), "{case}: pid {pid} runs");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for &p in &self.pids {
            let _ = stasis_sys::process::kill(p, libc::SIGKILL);
        }
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = stasis_sys::process::kill(d.id() as i32, libc::SIGTERM);
            let ended = wait_until(Duration::from_secs(10), || {
                matches!(d.try_wait(), Ok(Some(_)))
            });
            if !ended {
                let _ = d.kill();
                let _ = d.wait();
            }
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Not a test of its own: the restore request of [`World::user_restore`], when this binary
/// runs as the user with the images in its environment.
#[test]
fn helper_restore_as_user() {
    let Some(images) = std::env::var_os(HELPER_IMAGES_ENV) else {
        return;
    };
    let opts = stasis_client::RestoreOptions {
        detach: true,
        socket: std::env::var_os(HELPER_SOCKET_ENV).map(PathBuf::from),
    };
    let dir = File::open(&images).unwrap();
    // On lines of their own: libtest prints "test helper_restore_as_user ... " before them.
    match stasis_client::restore(dir.as_fd(), &opts) {
        Ok(r) => println!("\nSTARTED {}", r.pid),
        Err(e) => println!("\nFAILED {} {e}", e.code()),
    }
}

// ---------------------------------------------------------------------------------------
// Edits.

fn flip_byte(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0x01], at).unwrap();
}

/// Re-encodes the process record at `path` after `edit`, with valid CRCs.
fn edit_record(path: &Path, edit: impl FnOnce(&mut ProcessImage)) {
    let bytes = fs::read(path).unwrap();
    let mut img: ProcessImage =
        stasis_image::decode_record(RecordKind::Process, &bytes, path).unwrap();
    edit(&mut img);
    fs::write(
        path,
        stasis_image::encode_record(RecordKind::Process, &img, path).unwrap(),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn self_dump_restores_and_any_edit_is_refused() {
    if !can_run("self_dump_restores_and_any_edit_is_refused") {
        return;
    }
    let mut w = World::new("self_dump_restores_and_any_edit_is_refused");
    let p = programs();

    // Three self-dumps through stasisd: A (the one restored), B (another dump of the same
    // program), T (a process and its child).
    let dump = |w: &mut World, tag: &str, args: &[&str]| -> (i32, PathBuf, PathBuf) {
        let images = w.user_dir(tag);
        let mut cmd = w.as_user(&p.selfdumper);
        cmd.arg(&images).args(["--mib", "2", "--kill"]).args(args);
        let (pid, log) = w.spawn(cmd, &format!("{tag}.log"));
        let st = w.wait_child(pid);
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "{tag}: the self-dump with --kill: {st:?}\n{}\nstasisd:\n{}",
            fs::read_to_string(&log).unwrap_or_default(),
            w.text("stasisd.log")
        );
        let auth = fs::metadata(images.join(names::AUTH)).unwrap();
        assert_eq!((auth.uid(), auth.mode() & 0o777), (w.uid, 0o600));
        (pid, images, log)
    };
    let (pid, images, log) = dump(&mut w, "a", &[]);
    let (pid_b, images_b, _) = dump(&mut w, "b", &[]);
    let (pid_t, images_t, log_t) = dump(&mut w, "t", &["--child", "--children"]);
    let child_t: i32 = w
        .wait_line(&log_t, "CHILD ")
        .trim_start_matches("CHILD ")
        .parse()
        .unwrap();
    let pages = names::pages(pid);
    let record = names::process(pid);

    // One byte of a page run's data.
    let c = w.user_copy(&images);
    let len = fs::metadata(c.join(&pages)).unwrap().len();
    flip_byte(
        &c.join(&pages),
        RAW_DATA_OFFSET + (len - RAW_DATA_OFFSET) / 2,
    );
    w.refused(&c, pid, "not authenticated", "a byte of a page run");
    // A field of the process record, re-encoded with valid CRCs (the umask: harmless, and
    // allowed by every other check).
    let c = w.user_copy(&images);
    edit_record(&c.join(&record), |img| img.task.umask ^= 0o002);
    w.refused(&c, pid, "not authenticated", "an edited record");
    // One byte of the inventory's payload.
    let c = w.user_copy(&images);
    let inv = c.join(names::INVENTORY);
    flip_byte(&inv, fs::metadata(&inv).unwrap().len() - 1);
    w.refused(&c, pid, names::INVENTORY, "a byte of the inventory");
    // The pages file of another dump of the same program, under this dump's name.
    let c = w.user_copy(&images);
    fs::copy(images_b.join(names::pages(pid_b)), c.join(&pages)).unwrap();
    w.refused(&c, pid, &pages, "the pages of another dump");
    // The pages files of the two processes of one dump, swapped.
    let c = w.user_copy(&images_t);
    let (pt, pc) = (names::pages(pid_t), names::pages(child_t));
    fs::rename(c.join(&pt), c.join("swap")).unwrap();
    fs::rename(c.join(&pc), c.join(&pt)).unwrap();
    fs::rename(c.join("swap"), c.join(&pc)).unwrap();
    w.refused(&c, pid_t, "not authenticated", "two pages files swapped");
    // A file removed: the pages, then auth.img itself.
    let c = w.user_copy(&images);
    fs::remove_file(c.join(&pages)).unwrap();
    w.refused(
        &c,
        pid,
        &format!("{pages}: not authenticated"),
        "the pages file removed",
    );
    let c = w.user_copy(&images);
    fs::remove_file(c.join(names::AUTH)).unwrap();
    w.refused(&c, pid, "not authenticated", "auth.img removed");

    // The images as stasisd wrote them restore, and the copy runs on.
    let restored = w.user_restore(&images).unwrap_or_else(|e| {
        panic!(
            "the unchanged images were refused: {e:?}\nstasisd:\n{}",
            w.text("stasisd.log")
        )
    });
    assert_eq!(restored, pid);
    w.wait_line(&log, &format!("RESTORED {pid}"));
    w.wait_line(&log, "PASS ");
    w.terminate(pid);
    // The restored copy of T was never made: its child is not running either.
    assert!(!runs(child_t));
}

#[test]
fn images_root_wrote_without_the_key_are_refused() {
    if !can_run("images_root_wrote_without_the_key_are_refused") {
        return;
    }
    let mut w = World::new("images_root_wrote_without_the_key_are_refused");
    let p = programs();
    let other_key = w.dir.join("other-key").join("image.key");

    // The user's ticker, dumped by root's `stasis dump` with `extra` options; the images are
    // then handed to the user.
    let dumped = |w: &mut World, tag: &str, extra: &[&std::ffi::OsStr]| -> (i32, PathBuf) {
        let counter = w.user_dir(&format!("{tag}-counter")).join("counter");
        let mut cmd = w.as_user(&p.ticker);
        cmd.arg(&counter);
        let (pid, log) = w.spawn(cmd, &format!("{tag}.log"));
        w.wait_line(&log, "READY ");
        let root_images = w.dir.join(format!("{tag}-root"));
        let pid_s = pid.to_string();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "dump".as_ref(),
            "-t".as_ref(),
            pid_s.as_ref(),
            "-D".as_ref(),
            root_images.as_os_str(),
        ];
        args.extend_from_slice(extra);
        w.root_cli(&args);
        let st = w.wait_child(pid);
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{tag}: {st:?}");
        (pid, w.user_copy(&root_images))
    };

    // Without the key, as an older stasis wrote images: no auth.img.
    let (pid, images) = dumped(&mut w, "no-auth", &["--no-auth".as_ref()]);
    assert!(!images.join(names::AUTH).exists());
    let show = w.root_cli(&[
        "show".as_ref(),
        images.as_os_str(),
        "--key-file".as_ref(),
        w.key_file.as_os_str(),
    ]);
    assert!(show.contains(r#""status": "none""#), "{show}");
    w.refused(&images, pid, "auth.img", "root's --no-auth dump");

    // With another key (root's default one would be another too).
    let (pid, images) = dumped(
        &mut w,
        "other-key",
        &["--key-file".as_ref(), other_key.as_os_str()],
    );
    assert!(images.join(names::AUTH).exists());
    w.refused(&images, pid, "auth.img", "a dump with another key");

    // With stasisd's key: the user gets it back.
    let key_file = w.key_file.clone();
    let (pid, images) = dumped(
        &mut w,
        "daemon-key",
        &["--key-file".as_ref(), key_file.as_os_str()],
    );
    let show = w.root_cli(&[
        "show".as_ref(),
        images.as_os_str(),
        "--key-file".as_ref(),
        w.key_file.as_os_str(),
    ]);
    assert!(show.contains(r#""status": "verified""#), "{show}");
    let restored = w.user_restore(&images).unwrap_or_else(|e| {
        panic!(
            "root's dump with the daemon's key was refused: {e:?}\nstasisd:\n{}",
            w.text("stasisd.log")
        )
    });
    assert_eq!(restored, pid);
    let counter = w.dir.join("daemon-key-counter").join("counter");
    let read = || {
        fs::read_to_string(&counter)
            .unwrap_or_default()
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let before = read();
    assert!(
        wait_until(TIMEOUT, || read() > before + 10),
        "the restored ticker does not tick"
    );
    assert_eq!(
        fs::metadata(format!("/proc/{pid}")).unwrap().uid(),
        w.uid,
        "the restored ticker is the user's"
    );
    w.terminate(pid);
}
