//! End-to-end tests of `stasis dump --compress` on a real process (a python3 holding a large
//! dict and some random bytes, i.e. real heap data): the images hold zstd runs (and raw ones
//! for what does not compress), `stasis show` verifies them, the restored process finds its
//! data intact, and corrupted compressed runs are refused by `show` and by the restore, which
//! leaves nothing running; a dump that lets the process run on pre-copies, then compresses.
//! (Threads, children, shared memory and file mappings under `--compress` are the
//! `zdtm_tree_mem_mixed_compress_*` tests.)
//!
//! The tests need root: without it each test fails under CI (`CI=true`) and elsewhere prints a
//! notice and returns (`stasis_test_infra::require_root`). Work directories of failed tests are
//! kept in `target/tmp/compressed_images/<test>/`.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use stasis_image::{names, ImageDir, PageRun, ProcessImage, RecordKind, RunCodec};
use stasis_test_infra::process::{
    append_log, become_subreaper, kill, live_children, spawn_isolated, wait_child_for, wait_pid,
    Waited,
};
use stasis_test_infra::wait::wait_until;
use stasis_test_infra::{require_root, WorkDir};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const KILL_AFTER: Duration = Duration::from_secs(60);

/// The lock that serializes these tests (they look for stray children), and the test's work
/// directory. `None` when the test cannot run (see `require_root`).
fn start(test: &str) -> Option<(MutexGuard<'static, ()>, WorkDir)> {
    if !require_root() {
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("compressed_images")
        .join(test);
    Some((guard, WorkDir::new(dir)))
}

/// Runs `stasis ARGS` (killed after KILL_AFTER). Its output goes through files: `show`
/// prints more than a pipe holds.
fn stasis(args: &[&str]) -> Output {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compressed_images");
    fs::create_dir_all(&base).unwrap();
    let (out, err) = (
        base.join(format!("out-{}-{n}", std::process::id())),
        base.join(format!("err-{}-{n}", std::process::id())),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_child_for(&mut child, KILL_AFTER).unwrap();
    let (stdout, stderr) = (fs::read(&out).unwrap(), fs::read(&err).unwrap());
    let _ = (fs::remove_file(&out), fs::remove_file(&err));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "stasis {args:?} still running after {KILL_AFTER:?} (killed); stderr: {}",
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

fn ok(args: &[&str]) -> String {
    let out = stasis(args);
    assert!(
        out.status.success(),
        "stasis {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = stasis(args);
    assert!(!out.status.success(), "stasis {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A python3 with `entries` dict entries of text and 1 MiB of random bytes; on SIGUSR1 it
/// checks them against the digest it took at start and logs "OK" or "BAD", then exits.
const PROGRAM: &str = r#"
import hashlib, os, signal, sys
n = int(sys.argv[1])
d = {i: ("user-%d" % (i * 7919 % 100003), i * 0.5, "x" * (i % 50)) for i in range(n)}
noise = os.urandom(1 << 20)
def digest():
    h = hashlib.sha256(noise)
    for k in range(n):
        h.update(repr(d[k]).encode())
    return h.hexdigest()
before = digest()
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])
print("OK" if digest() == before else "BAD", flush=True)
"#;

/// Starts the program in `dir` (log: `dir/py.log`) and waits until it is ready. It is reaped
/// by pid ([`wait_pid`]), as are its restored copies, which have the same pid.
#[allow(clippy::zombie_processes)]
fn spawn_python(dir: &Path, entries: u32) -> (i32, PathBuf) {
    let log = dir.join("py.log");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PROGRAM, &entries.to_string()])
        .current_dir(dir);
    let child = spawn_isolated(&mut cmd, append_log(&log).unwrap()).unwrap();
    let pid = child.id() as i32;
    let ready = wait_until(Duration::from_secs(60), || {
        fs::read_to_string(&log).is_ok_and(|s| s.contains("ready"))
    });
    if !ready {
        kill(pid, libc::SIGKILL);
        let _ = wait_pid(pid, Duration::from_secs(5));
        panic!(
            "python3 did not get ready: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    (pid, log)
}

/// Dumps `pid` (killed) with `extra` options and reaps it.
fn dump(pid: i32, img: &Path, extra: &[&str]) {
    let pid_s = pid.to_string();
    let mut args = vec![
        "dump",
        "-t",
        &pid_s,
        "-D",
        img.to_str().unwrap(),
        "--compress",
    ];
    args.extend(extra);
    ok(&args);
    assert!(matches!(
        wait_pid(pid, Duration::from_secs(10)),
        Ok(Waited::Status(_))
    ));
}

fn runs_of(img: &Path, pid: i32) -> (ImageDir, ProcessImage) {
    let dir = ImageDir::open(img).unwrap();
    let image: ProcessImage =
        stasis_image::read_record(&dir, &names::process(pid), RecordKind::Process).unwrap();
    (dir, image)
}

fn copy_images(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Flips the byte `at` bytes into the stored bytes of `run` in the pages file of `pid`.
fn flip(img: &Path, pid: i32, run: &PageRun, at: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img.join(names::pages(pid)))
        .unwrap();
    let pos = stasis_image::RAW_DATA_OFFSET + run.offset + at;
    let mut b = [0u8];
    f.read_exact_at(&mut b, pos).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], pos).unwrap();
}

/// A restore of corrupted images fails, naming what, and leaves nothing running.
fn restore_fails(img: &Path) -> String {
    let err = fails(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    assert!(
        wait_until(Duration::from_secs(5), || live_children().is_empty()),
        "left running: {:?}",
        live_children()
    );
    err
}

/// The images in `img` are authenticated and verified whole by `show`, and the pages of
/// `pid` are stored compressed (at least `zstd` runs, at most a third of their size) and more
/// than 8 MiB; returns show's JSON.
fn check_compressed(img: &Path, pid: i32) -> serde_json::Value {
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["show", img.to_str().unwrap()])).unwrap();
    assert_eq!(json["authentication"]["status"], "verified", "{json}");
    let (_, image) = runs_of(img, pid);
    let pages: u64 = image.page_runs.iter().map(|r| r.npages * 4096).sum();
    let stored: u64 = image.page_runs.iter().map(|r| r.stored_len).sum();
    assert!(
        image.page_runs.iter().any(|r| r.codec == RunCodec::Zstd)
            && pages > 8 << 20
            && stored * 3 < pages,
        "{stored} bytes stored for {pages} bytes of pages"
    );
    json
}

/// Asks python `pid` to check its data (SIGUSR1), waits for it to exit, and checks that its
/// log ends with `tail`.
fn check_and_end(pid: i32, log: &Path, tail: &str) {
    assert!(kill(pid, libc::SIGUSR1));
    assert!(matches!(
        wait_pid(pid, Duration::from_secs(30)),
        Ok(Waited::Status(_))
    ));
    let out = fs::read_to_string(log).unwrap();
    assert!(out.ends_with(tail), "{out:?}");
}

#[test]
fn compressed_dump_of_a_python_heap_shows_and_restores_intact() {
    let Some((_lock, w)) = start("compressed_dump_of_a_python_heap_shows_and_restores_intact")
    else {
        return;
    };
    let (pid, log) = spawn_python(&w, 150_000);
    let img = w.join("img");
    dump(pid, &img, &[]);
    // Authenticated (root has the image key), verified whole by show.
    let json = check_compressed(&img, pid);
    // What does not compress (python's random bytes) is stored raw.
    let (_, image) = runs_of(&img, pid);
    assert!(
        image.page_runs.iter().any(|r| r.codec == RunCodec::Raw),
        "{json}"
    );
    // `stasis show DIR | head`: a reader gone early is not an error (nor a panic).
    let mut show = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["show", img.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(show.stdout.take());
    let out = show.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "show into a closed pipe: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    check_and_end(pid, &log, "ready\nOK\n");
}

/// A compressed dump that lets the process run on pre-copies (its stats have a pre-copy
/// phase): the pages go raw into a scratch file while python runs, and are compressed into
/// the pages file after the thaw; the scratch file is gone, the images are authenticated and
/// hold zstd runs, the process ran on (its check passes), and the images restore intact.
#[test]
fn compressed_dump_that_leaves_the_process_running_pre_copies() {
    let Some((_lock, w)) = start("compressed_dump_that_leaves_the_process_running_pre_copies")
    else {
        return;
    };
    let (pid, log) = spawn_python(&w, 150_000);
    let img = w.join("img");
    let stats = w.join("stats.json");
    ok(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        img.to_str().unwrap(),
        "--compress",
        "--leave-running",
        "--stats",
        stats.to_str().unwrap(),
    ]);
    let stats: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(
        stats["phases_ms"]["pre-copy"].as_f64().is_some(),
        "no pre-copy: {stats}"
    );
    let mut names: Vec<String> = fs::read_dir(&img)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        !names.iter().any(|n| n.ends_with(".precopy")),
        "scratch file left: {names:?}"
    );
    check_compressed(&img, pid);
    // The original ran on: its check passes, and it exits; then the restored copy's.
    check_and_end(pid, &log, "ready\nOK\n");
    ok(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    check_and_end(pid, &log, "ready\nOK\nOK\n");
}

#[test]
fn corrupted_compressed_runs_are_refused_by_show_and_restore() {
    let Some((_lock, w)) = start("corrupted_compressed_runs_are_refused_by_show_and_restore")
    else {
        return;
    };
    let (pid, _) = spawn_python(&w, 20_000);
    let img = w.join("img");
    dump(pid, &img, &["--no-auth"]);
    ok(&["show", img.to_str().unwrap()]);
    let (_, image) = runs_of(&img, pid);
    let (i, zrun) = image
        .page_runs
        .iter()
        .enumerate()
        .find(|(_, r)| r.codec == RunCodec::Zstd)
        .map(|(i, r)| (i, *r))
        .unwrap();

    // A changed byte: the CRC of the stored bytes no longer matches.
    let bad = w.join("crc");
    copy_images(&img, &bad);
    flip(&bad, pid, &zrun, zrun.stored_len / 2);
    let err = fails(&["show", bad.to_str().unwrap()]);
    assert!(err.contains("checksum mismatch"), "{err}");
    let err = restore_fails(&bad);
    assert!(err.contains("checksum mismatch"), "{err}");

    // A frame header changed and the CRC in the record fixed up: the frame does not decode.
    let bad = w.join("frame");
    copy_images(&img, &bad);
    flip(&bad, pid, &zrun, 0);
    let (dir, mut image2) = runs_of(&bad, pid);
    let mut stored = vec![0u8; zrun.stored_len as usize];
    fs::File::open(bad.join(names::pages(pid)))
        .unwrap()
        .read_exact_at(&mut stored, stasis_image::RAW_DATA_OFFSET + zrun.offset)
        .unwrap();
    image2.page_runs[i].crc = crc32c::crc32c(&stored);
    fs::remove_file(bad.join(names::process(pid))).unwrap();
    stasis_image::write_record_atomic(&dir, &names::process(pid), RecordKind::Process, &image2)
        .unwrap();
    let want = format!("page run at {:#x}", zrun.addr);
    let err = fails(&["show", bad.to_str().unwrap()]);
    assert!(err.contains(&want) && err.contains("zstd"), "{err}");
    let err = restore_fails(&bad);
    assert!(err.contains(&want) && err.contains("zstd"), "{err}");

    // A run that claims fewer pages than its frame holds: the frame does not fit.
    let bad = w.join("length");
    copy_images(&img, &bad);
    let (dir, mut image3) = runs_of(&bad, pid);
    let (j, r) = image3
        .page_runs
        .iter()
        .enumerate()
        .find(|(_, r)| r.codec == RunCodec::Zstd && r.stored_len < (r.npages - 1) * 4096)
        .map(|(j, r)| (j, *r))
        .unwrap();
    image3.page_runs[j].npages -= 1;
    fs::remove_file(bad.join(names::process(pid))).unwrap();
    stasis_image::write_record_atomic(&dir, &names::process(pid), RecordKind::Process, &image3)
        .unwrap();
    let want = format!("page run at {:#x}", r.addr);
    let err = fails(&["show", bad.to_str().unwrap()]);
    assert!(err.contains(&want) && err.contains("decode"), "{err}");
    let err = restore_fails(&bad);
    assert!(err.contains(&want) && err.contains("decode"), "{err}");

    // Authenticated images: a changed byte is not authenticated.
    let (pid, _) = spawn_python(&w, 20_000);
    let img = w.join("auth");
    dump(pid, &img, &[]);
    let (_, image) = runs_of(&img, pid);
    let zrun = *image
        .page_runs
        .iter()
        .find(|r| r.codec == RunCodec::Zstd)
        .unwrap();
    flip(&img, pid, &zrun, zrun.stored_len - 1);
    let err = fails(&["show", img.to_str().unwrap()]);
    assert!(err.contains("not authenticated"), "{err}");
    let err = restore_fails(&img);
    assert!(err.contains("not authenticated"), "{err}");
}

#[test]
fn bad_compression_levels_are_refused_before_anything() {
    let Some((_lock, w)) = start("bad_compression_levels_are_refused_before_anything") else {
        return;
    };
    let img = w.join("img");
    for level in ["0", "20", "-8"] {
        let err = fails(&[
            "dump",
            "-t",
            "1",
            "-D",
            img.to_str().unwrap(),
            "--compress",
            "--compress-level",
            level,
        ]);
        assert!(
            err.contains(&format!("compression level {level} ")),
            "{err}"
        );
        assert!(!img.exists(), "the images directory was left behind");
    }
    let err = fails(&[
        "dump",
        "-t",
        "1",
        "-D",
        img.to_str().unwrap(),
        "--compress-level",
        "3",
    ]);
    assert!(err.contains("--compress"), "{err}");
}
