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
