//! End-to-end tests of what `stasis restore` and `stasis dump` do around the images, rather
//! than inside the process:
//!
//! - a file replaced at its path after the dump (a regular file, a directory, a mapped file)
//!   fails the restore, naming it, unless `--accept-replaced-files` is given: then the file
//!   found there is restored, with one warning line per file on stderr;
//! - a dump that fails removes the images directory it created itself (and keeps one that was
//!   there before);
//! - a restore whose pid is held by the dumped process's own zombie says so, and names the
//!   parent that has not reaped it;
//! - a process whose process group is gone by the restore leads a group of its own.
//!
//! The tests need root (`stasis_test_infra::require_root`). Work directories of failed tests
//! are kept in `target/tmp/restore_options/<test name>/`.

mod common;

use common::stasis;
use stasis_test_infra::process::{
    become_subreaper, isolate, isolate_in_group, kill, wait_pid, Waited,
};
use stasis_test_infra::procfs::{exists, proc_state, ProcState};
use stasis_test_infra::wait::wait_for;
use stasis_test_infra::{require_root, require_tool, WorkDir};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Deadline for a process to get where a test wants it.
const TIMEOUT: Duration = Duration::from_secs(20);

fn work_dir(test: &str) -> WorkDir {
    common::work_dir("restore_options", test)
}

fn dump(pid: i32, img: &Path) -> (bool, String) {
    stasis(&[
        OsStr::new("dump"),
        "-t".as_ref(),
        pid.to_string().as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ])
}

/// Starts `cmd` in a session of its own; returns its pid (this process is its parent).
fn start(cmd: &mut Command) -> i32 {
    let child = isolate(cmd).spawn().expect("start the program");
    let pid = child.id() as i32;
    drop(child); // reaped by pid
    pid
}

/// Kills `pid` and reaps it (when it is ours).
fn kill_and_reap(pid: i32) {
    kill(pid, libc::SIGKILL);
    let _ = wait_pid(pid, TIMEOUT);
}

/// A python3 process in `dir` that holds `data` open (fd), `sub` (a directory fd) and a
/// private mapping of `mapped` (whose fd it closed), then sleeps.
const HOLDER: &str = "import ctypes, os, time\n\
    data = open('data', 'rb')\n\
    sub = os.open('sub', os.O_RDONLY | os.O_DIRECTORY)\n\
    libc = ctypes.CDLL(None, use_errno=True)\n\
    libc.mmap.restype = ctypes.c_void_p\n\
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
    fd = os.open('mapped', os.O_RDONLY)\n\
    if libc.mmap(None, 4096, 1, 2, fd, 0) in (None, 2**64 - 1): raise OSError(ctypes.get_errno(), 'mmap')\n\
    os.close(fd)\n\
    open('ready', 'w').close()\n\
    time.sleep(1000)\n";

/// Replaces `name` in `dir` by a new file (or empty directory) of the same type, the way an
/// editor saves: a new inode renamed over the old one.
fn replace(dir: &Path, name: &str, is_dir: bool) {
    let new = dir.join(format!("{name}.new"));
    if is_dir {
        std::fs::create_dir(&new).expect("mkdir the replacement");
    } else {
        std::fs::write(&new, vec![b'n'; 4096]).expect("write the replacement");
    }
    std::fs::rename(&new, dir.join(name)).expect("rename the replacement over the file");
}

#[test]
fn replaced_files_are_refused_unless_accepted() {
    if !require_root() || !require_tool("python3") {
        return;
    }
    become_subreaper();
    let w = work_dir("replaced_files");
    std::fs::write(w.join("data"), b"the data").expect("write data");
    std::fs::write(w.join("mapped"), vec![b'm'; 4096]).expect("write mapped");
    w.mkdir("sub");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-I", "-c", HOLDER])
        .current_dir(&w)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = start(&mut cmd);
    wait_for("python to open its files", TIMEOUT, || {
        w.join("ready").exists()
    });
    let img = w.join("img");
    let (ok, err) = dump(pid, &img);
    assert!(ok, "dump: {err}");
    assert!(matches!(wait_pid(pid, TIMEOUT), Ok(Waited::Status(_))));
    for (name, is_dir) in [("data", false), ("sub", true), ("mapped", false)] {
        replace(&w, name, is_dir);
    }

    // By default: refused, naming a replaced file, and nothing left running.
    let (ok, err) = stasis(&[OsStr::new("restore"), "-D".as_ref(), img.as_os_str()]);
    assert!(!ok, "the restore succeeded with replaced files");
    let named = ["data", "sub", "mapped"]
        .iter()
        .any(|n| err.contains(&w.join(n).display().to_string()));
    assert!(
        named
            && err.contains("at dump time (its inode changed")
            && err.contains("--accept-replaced-files")
            && err.lines().count() == 1,
        "the error should be one line naming a replaced file and the option: {err}"
    );
    wait_for("no restored process left", TIMEOUT, || !exists(pid));

    // With --accept-replaced-files: restored, one warning per file.
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-D".as_ref(),
        img.as_os_str(),
        "--detach".as_ref(),
        "--accept-replaced-files".as_ref(),
    ]);
    let running = ok && {
        wait_for("the restored python to run", TIMEOUT, || {
            proc_state(pid) == ProcState::Running
        });
        true
    };
    let fd_of = |name: &str| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .any(|md| md.ino() == std::fs::metadata(w.join(name)).map_or(0, |m| m.ino()))
    };
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let (has_data, has_sub) = (fd_of("data"), fd_of("sub"));
    kill_and_reap(pid);
    assert!(running, "restore --accept-replaced-files: {err}");
    let warnings: Vec<&str> = err.lines().collect();
    assert_eq!(warnings.len(), 3, "one warning per replaced file: {err}");
    for name in ["data", "sub", "mapped"] {
        let path = w.join(name).display().to_string();
        assert!(
            warnings.iter().any(|l| l.starts_with("restore: warning: ")
                && l.contains(&format!("{path} was replaced since the dump"))),
            "no warning names {path}: {err}"
        );
    }
    assert!(
        has_data && has_sub,
        "the restored process should hold the new data file and directory"
    );
    assert!(
        maps.contains(&w.join("mapped").display().to_string()),
        "the restored process should map the new file: {maps}"
    );
}

#[test]
fn restore_help_shows_the_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["restore", "--help"])
        .output()
        .expect("run stasis restore --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--accept-replaced-files"), "{help}");
}

/// A pid that no process or thread has.
fn unused_pid() -> i32 {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (300..max).rev().find(|p| !exists(*p)).expect("a free pid")
}

#[test]
fn failed_dump_leaves_no_directory_it_created() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("failed_dump_dir");

    // The process does not exist: the directories made for it go again.
    let (ok, err) = dump(unused_pid(), &w.join("new/images/dir"));
    assert!(!ok, "a dump of a missing pid succeeded");
    assert!(
        !w.join("new").exists(),
        "a failed dump left {} behind: {err}",
        w.join("new").display()
    );

    // A directory that was there before stays, empty.
    let before = w.mkdir("existing");
    let (ok, _) = dump(unused_pid(), &before);
    assert!(!ok);
    assert!(
        before.is_dir(),
        "a failed dump removed a directory it had not made"
    );
    assert_eq!(std::fs::read_dir(&before).map(|d| d.count()).ok(), Some(0));

    // A refused process (a socket at fd 0 whose peer this test holds, outside the dumped
    // tree): refused before anything is written; the
    // directory goes, the process runs on.
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(sock)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = start(&mut cmd);
    wait_for("sleep to sleep", TIMEOUT, || {
        proc_state(pid) == ProcState::Running
    });
    let (ok, err) = dump(pid, &w.join("refused/images"));
    let alive = proc_state(pid) == ProcState::Running;
    kill_and_reap(pid);
    assert!(
        !ok && err.contains("socket"),
        "the dump should refuse the socket: {err}"
    );
    assert!(
        !w.join("refused").exists(),
        "a refused dump left its directory behind"
    );
    assert!(alive, "the refused process should run on");
}

#[test]
fn pid_held_by_the_dumped_zombie_is_named() {
    if !require_root() {
        return;
    }
    let w = work_dir("zombie_holds_pid");
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = start(&mut cmd);
    wait_for("sleep to sleep", TIMEOUT, || {
        proc_state(pid) == ProcState::Running
    });
    let img = w.join("img");
    let (ok, err) = dump(pid, &img);
    assert!(ok, "dump: {err}");
    // The dump killed it; we are its parent and have not reaped it yet.
    wait_for("the dumped sleep to be a zombie", TIMEOUT, || {
        proc_state(pid) == ProcState::Zombie
    });
    let (ok, err) = stasis(&[OsStr::new("restore"), "-D".as_ref(), img.as_os_str()]);
    let _ = wait_pid(pid, TIMEOUT);
    assert!(!ok, "the restore succeeded while the zombie held the pid");
    let me = std::process::id();
    assert!(
        err.contains(&format!(
            "pid {pid} is in use by a zombie (the dumped process itself, not yet reaped by its parent {me})"
        )),
        "the error should name the zombie and its parent {me}: {err}"
    );
}

/// A process a script started in the background is in the script's process group; once the
/// script and then the dumped process are gone, that group no longer exists, and a restore in
/// the same session cannot join it: the process leads a group of its own (the restore failed
/// before: "setpgid to N: Operation not permitted").
#[test]
fn a_process_whose_group_is_gone_gets_a_group_of_its_own() {
    if !require_root() || !require_tool("sh") {
        return;
    }
    become_subreaper();
    let w = work_dir("group_gone");
    let pidfile = w.join("pid");
    // sh leads a group of its own in our session; sleep joins it; sh exits.
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("sleep 1000 & echo $! > {}", pidfile.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut sh = isolate_in_group(&mut sh).spawn().expect("start sh");
    let sh_pid = sh.id() as i32;
    assert!(sh.wait().expect("wait for sh").success());
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("read the pid")
        .trim()
        .parse()
        .expect("a pid");
    let pgid = |p: i32| stasis_test_infra::procfs::stat(p).map(|s| s.pgrp);
    assert_eq!(pgid(pid), Some(sh_pid), "sleep in sh's group");
    let img = w.join("img");
    let (ok, err) = dump(pid, &img);
    assert!(ok, "dump: {err}");
    // Orphaned when sh exited: reaped by us, the subreaper.
    let _ = wait_pid(pid, TIMEOUT);
    assert!(!exists(pid));
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-d".as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ]);
    assert!(ok, "restore: {err}");
    let led = pgid(pid);
    kill_and_reap(pid);
    assert_eq!(led, Some(pid), "the restored sleep leads its own group");
}
