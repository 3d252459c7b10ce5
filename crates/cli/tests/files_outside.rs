//! Files that lead outside the dumped tree: named FIFOs that a process outside it holds open
//! too (this test process), and I/O signals sent to a process outside it.
//!
//! An empty FIFO with a name is dumped: the restored end is reopened by path and rejoins the
//! outside holder's FIFO (what it writes reaches the restored reader). A FIFO with bytes in
//! flight is refused, naming the FIFO and the outside process: those bytes are in the buffer
//! both share, so the dump cannot own them. A description whose I/O signals go to a process
//! outside the tree is refused too (after a restore that pid would be another process or
//! none). A lease being broken by an opener outside is refused too.
//!
//! The tests need root (`stasis_test_infra::require_root`). Work directories of failed tests
//! are kept in `target/tmp/files_outside/<test name>/`.

mod common;

use common::stasis;
use stasis_test_infra::process::{become_subreaper, isolate, kill, wait_pid, Waited};
use stasis_test_infra::procfs::{exists, proc_state, ProcState};
use stasis_test_infra::wait::wait_for;
use stasis_test_infra::{require_root, WorkDir};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Deadline for one stasis command, and for a process to get where a test wants it.
const TIMEOUT: Duration = Duration::from_secs(20);

fn work_dir(test: &str) -> WorkDir {
    common::work_dir("files_outside", test)
}

/// Makes a FIFO at `path` and opens it read-write (this process holds it from now on).
fn make_fifo(path: &Path) -> File {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the FIFO read-write")
}

/// Starts `prog` in a session of its own with the FIFO at `fifo` as its stdin (opened
/// read-only) and `out` as its stdout; returns its pid once it sleeps (blocked in a read or a
/// sleep).
fn start_reader(prog: &[&str], fifo: &Path, out: &Path) -> i32 {
    let stdin = File::open(fifo).expect("open the FIFO for reading");
    let mut cmd = Command::new(prog[0]);
    cmd.args(&prog[1..])
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(File::create(out).expect("create the output")))
        .stderr(Stdio::null());
    let child = isolate(&mut cmd).spawn().expect("start the reader");
    let pid = child.id() as i32;
    drop(child); // reaped by pid
    wait_for("the reader to block", TIMEOUT, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('S'))
        })
    });
    pid
}

#[test]
fn fifo_with_bytes_in_flight_held_outside_is_refused() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("bytes_held_outside");
    let path = w.join("fifo");
    let mut ours = make_fifo(&path);
    let pid = start_reader(&["sleep", "100"], &path, &w.join("out"));
    ours.write_all(b"in flight").expect("write into the FIFO");
    let img = w.mkdir("img");
    let (ok, err) = stasis(&[
        OsStr::new("dump"),
        "-t".as_ref(),
        pid.to_string().as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ]);
    let me = std::process::id();
    kill(pid, libc::SIGKILL);
    let _ = wait_pid(pid, TIMEOUT);
    assert!(!ok, "the dump succeeded");
    assert!(
        err.contains("fd 0 of pid")
            && err.contains(&format!("FIFO {}", path.display()))
            && err.contains(&format!("pid {me}"))
            && err.contains("outside")
            && err.contains("9 bytes in flight"),
        "the error should name the fd, the FIFO, its bytes and the outside holder (pid {me}): {err}"
    );
    assert!(
        !img.join("inventory.img").exists(),
        "a refused dump wrote an inventory"
    );
}

#[test]
fn empty_fifo_held_outside_is_rejoined_after_restore() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("empty_held_outside");
    let path = w.join("fifo");
    let out = w.join("out");
    let mut ours = make_fifo(&path);
    let pid = start_reader(&["cat"], &path, &out);
    let img = w.mkdir("img");
    let pid_s = pid.to_string();
    let (ok, err) = stasis(&[
        OsStr::new("dump"),
        "-t".as_ref(),
        pid_s.as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ]);
    assert!(ok, "dump of cat reading a FIFO this process holds: {err}");
    // Our child: reap it, or its zombie keeps the pid.
    assert!(
        matches!(wait_pid(pid, TIMEOUT), Ok(Waited::Status(_))),
        "the dumped cat was not reaped"
    );
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-D".as_ref(),
        img.as_os_str(),
        "--detach".as_ref(),
    ]);
    assert!(ok, "restore: {err}");
    wait_for("the restored cat to run", TIMEOUT, || {
        proc_state(pid) == ProcState::Running
    });
    // What we write reaches the restored cat through the FIFO it reopened by path.
    ours.write_all(b"after the restore\n")
        .expect("write into the FIFO");
    wait_for("cat to copy what we wrote", TIMEOUT, || {
        std::fs::read_to_string(&out).is_ok_and(|s| s == "after the restore\n")
    });
    // Our end was its last writer: cat reads end-of-file and exits 0.
    drop(ours);
    match wait_pid(pid, TIMEOUT) {
        Ok(Waited::Status(stasis_test_infra::process::WaitStatus::Exited(0))) => {}
        other => {
            kill(pid, libc::SIGKILL);
            panic!("the restored cat did not exit 0 at end-of-file: {other:?}");
        }
    }
    assert!(!exists(pid) || proc_state(pid) == ProcState::Absent);
}

#[test]
fn io_signals_sent_outside_the_tree_are_refused() {
    if !require_root() || !stasis_test_infra::require_tool("python3") {
        return;
    }
    become_subreaper();
    let w = work_dir("owner_outside");
    let me = std::process::id();
    // A pipe whose read end sends SIGIO to this test process, its parent.
    let script = "import fcntl, os, time\n\
                  r, w = os.pipe()\n\
                  fcntl.fcntl(r, fcntl.F_SETOWN, os.getppid())\n\
                  time.sleep(100)\n";
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-I", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = isolate(&mut cmd).spawn().expect("start python3");
    let pid = child.id() as i32;
    drop(child);
    wait_for("python to set the owner and sleep", TIMEOUT, || {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| d.count() >= 5)
            && std::fs::read_to_string(format!("/proc/{pid}/wchan"))
                .is_ok_and(|c| c.contains("sleep"))
    });
    let img = w.mkdir("img");
    let (ok, err) = stasis(&[
        OsStr::new("dump"),
        "-t".as_ref(),
        pid.to_string().as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ]);
    kill(pid, libc::SIGKILL);
    let _ = wait_pid(pid, TIMEOUT);
    assert!(!ok, "the dump succeeded");
    assert!(
        err.contains(&format!("of pid {pid}"))
            && err.contains(&format!("process {me}"))
            && err.contains("not one of the dumped processes"),
        "the error should name the fd and the owner outside (pid {me}): {err}"
    );
}

/// A lease being broken (a process outside the tree opened the file for writing and waits
/// for the holder to give the lease up) is refused at dump, naming the fd; the holder keeps
/// running.
#[test]
fn a_lease_being_broken_is_refused() {
    if !require_root() || !stasis_test_infra::require_tool("python3") {
        return;
    }
    become_subreaper();
    let w = work_dir("lease_breaking");
    let file = w.path().join("leased.dat");
    std::fs::write(&file, b"x").expect("write leased.dat");
    // SIGIO (the break notice) is ignored: the holder keeps its lease until the break times
    // out (lease-break-time, 45 s by default).
    let script = format!(
        "import fcntl, os, signal, time\n\
         signal.signal(signal.SIGIO, signal.SIG_IGN)\n\
         f = os.open({path:?}, os.O_RDONLY)\n\
         fcntl.fcntl(f, fcntl.F_SETLEASE, fcntl.F_RDLCK)\n\
         open({ready:?}, 'w').write('1')\n\
         time.sleep(100)\n",
        path = file.display().to_string(),
        ready = w.path().join("ready").display().to_string(),
    );
    let spawn = |code: &str| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-I", "-c", code])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = isolate(&mut cmd).spawn().expect("start python3");
        let pid = child.id() as i32;
        // Reaped below with wait_pid (this test is their subreaper).
        drop(child);
        pid
    };
    let pid = spawn(&script);
    wait_for("the lease", TIMEOUT, || w.path().join("ready").exists());
    let opener = spawn(&format!(
        "import os\nos.open({:?}, os.O_WRONLY)\n",
        file.display().to_string()
    ));
    wait_for("the lease to be breaking", TIMEOUT, || {
        std::fs::read_to_string("/proc/locks").is_ok_and(|l| {
            l.lines()
                .any(|l| l.contains("BREAKING") && l.contains(&pid.to_string()))
        })
    });
    let img = w.mkdir("img");
    let (ok, err) = stasis(&[
        OsStr::new("dump"),
        "-t".as_ref(),
        pid.to_string().as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ]);
    let running = exists(pid);
    for p in [pid, opener] {
        kill(p, libc::SIGKILL);
        let _ = wait_pid(p, TIMEOUT);
    }
    assert!(!ok, "the dump succeeded");
    assert!(
        err.contains(&format!("of pid {pid}"))
            && err.contains("leased.dat")
            && err.contains("lease is being broken"),
        "the error should name the fd and the lease being broken: {err}"
    );
    assert!(running, "the refused dump did not leave the holder running");
}
