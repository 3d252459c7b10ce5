//! Restores that fail part-way through building the tree: the restore must end with a clear
//! error within a bounded time (no restorer waiting forever on a child that will never
//! answer), and nothing it created may be left running.

use stasis_test_infra::process::{isolate, kill};
use stasis_test_infra::procfs::{children as children_of, exists};
use stasis_test_infra::require_root;
use stasis_test_infra::wait::wait_for;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stasis() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stasis"))
}

fn work_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("restore_failures")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create work dir");
    d
}

/// A parent whose own setup fails after it has forked its child (its cwd was removed after the
/// dump): the child, already set up and stopped, keeps the restore's error pipe open. The
/// restore must still end quickly with the parent's error, and leave no process behind.
#[test]
fn parent_failing_after_forking_its_children_ends_the_restore() {
    if !require_root() {
        return;
    }
    let dir = work_dir("parent_fails_after_fork");
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a).expect("mkdir a");
    std::fs::create_dir_all(&b).expect("mkdir b");
    let script = format!(
        "cd {b} && (sleep 1000; true) & cd {a} && echo ready > {ready}; wait",
        a = a.display(),
        b = b.display(),
        ready = dir.join("ready").display()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut root = isolate(&mut cmd).spawn().expect("spawn bash");
    let pid = root.id() as i32;
    wait_for("the tree to be ready", Duration::from_secs(10), || {
        dir.join("ready").exists() && !children_of(pid).is_empty()
    });
    let child = children_of(pid)[0];
    let images = dir.join("images");
    std::fs::create_dir_all(&images).expect("mkdir images");
    let dump = Command::new(stasis())
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(&images)
        .output()
        .expect("run stasis dump");
    assert!(
        dump.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let _ = root.wait();
    wait_for(
        "the dumped tree to be gone",
        Duration::from_secs(10),
        || !exists(pid) && !exists(child),
    );
    std::fs::remove_dir(&a).expect("rmdir a");

    let started = Instant::now();
    let mut restore = Command::new(stasis())
        .args(["restore", "-D"])
        .arg(&images)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stasis restore");
    let deadline = started + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = restore.try_wait().expect("wait for stasis restore") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = restore.kill();
            for p in [pid, child] {
                kill(p, libc::SIGKILL);
            }
            panic!("stasis restore hung after a restore child failed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = restore.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(!status.success(), "the restore succeeded without its cwd");
    assert!(
        err.contains(&pid.to_string()) && err.contains(&a.display().to_string()),
        "the error does not name the process and its cwd: {err}"
    );
    wait_for("nothing left running", Duration::from_secs(5), || {
        !exists(pid) && !exists(child)
    });
}

/// A lock the dumped process held that another process took between the dump and the
/// restore: the restore fails naming the file, the lock and its holder, and leaves nothing
/// running. Once with each kind of lock the restore takes in a different place: a POSIX lock
/// (injected into the restored process), an OFD lock (taken by the restorer) and a flock lock
/// (injected).
#[test]
fn a_lock_taken_meanwhile_fails_the_restore_naming_its_holder() {
    if !require_root() || !stasis_test_infra::require_tool("python3") {
        return;
    }
    // What the dumped process takes on bytes 0-99 (or the whole file), and what the outsider
    // takes then.
    let posix = "fcntl.lockf(f, fcntl.LOCK_EX, 100, 0)";
    let ofd = "fcntl.fcntl(f, 37, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 100, 0))";
    let flock = "fcntl.flock(f, fcntl.LOCK_EX)";
    for (name, dumped, outsider, want) in [
        (
            "posix",
            posix,
            posix,
            "the write lock on bytes 0-99 is held by pid",
        ),
        (
            "ofd",
            ofd,
            posix,
            "the write lock on bytes 0-99 is held by pid",
        ),
        (
            "flock",
            flock,
            flock,
            "the exclusive flock lock is held by pid HOLDER now",
        ),
    ] {
        let dir = work_dir(&format!("lock_taken_{name}"));
        let file = dir.join("locked.dat");
        std::fs::write(&file, [b'x'; 200]).expect("write locked.dat");
        let script = |lock: &str, ready: &str| {
            format!(
                "import fcntl, os, struct, time\npath = {file:?}\nf = os.open(path, os.O_RDONLY \
                 if 'LEASE' in {lock:?} else os.O_RDWR)\n{lock}\n\
                 open({ready:?}, 'w').write('1')\ntime.sleep(1000)\n",
                file = file.display().to_string(),
                ready = dir.join(ready).display().to_string(),
            )
        };
        let spawn = |code: String| {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", &code])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            isolate(&mut cmd).spawn().expect("spawn python3")
        };
        let mut dumped_proc = spawn(script(dumped, "ready"));
        let pid = dumped_proc.id() as i32;
        wait_for("the locker to be ready", Duration::from_secs(10), || {
            dir.join("ready").exists()
        });
        let images = dir.join("images");
        std::fs::create_dir_all(&images).expect("mkdir images");
        let dump = Command::new(stasis())
            .args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(&images)
            .output()
            .expect("run stasis dump");
        assert!(
            dump.status.success(),
            "{name}: dump failed: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let _ = dumped_proc.wait();
        let mut holder = spawn(script(outsider, "ready2"));
        let holder_pid = holder.id() as i32;
        wait_for(
            "the outsider to hold the lock",
            Duration::from_secs(10),
            || dir.join("ready2").exists(),
        );
        let restore = Command::new(stasis())
            .args(["restore", "-D"])
            .arg(&images)
            .stdin(Stdio::null())
            .output()
            .expect("run stasis restore");
        kill(holder_pid, libc::SIGKILL);
        let _ = holder.wait();
        let err = String::from_utf8_lossy(&restore.stderr);
        assert!(!restore.status.success(), "{name}: the restore succeeded");
        let want = format!(
            "file {}: {}",
            file.display(),
            want.replace("HOLDER", &holder_pid.to_string())
        );
        assert!(
            err.contains(&want),
            "{name}: the error does not say {want:?}: {err}"
        );
        wait_for("nothing left running", Duration::from_secs(5), || {
            !exists(pid)
        });
    }
}
