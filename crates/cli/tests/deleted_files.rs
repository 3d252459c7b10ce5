//! Files deleted while open, end to end: a process holding a 1 GiB sparse deleted file with a
//! few data blocks makes images of a few blocks, not of a gigabyte, and comes back with the
//! same sparse file (size, holes, blocks allocated, owner, mode).
//!
//! The test needs root (`stasis_test_infra::require_root`). Work directories of failed tests
//! are kept in `target/tmp/deleted_files/<test name>/`.

use stasis_test_infra::process::{become_subreaper, isolate, kill, wait_pid, wait_sleeping};
use stasis_test_infra::{require_root, WorkDir};
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Deadline for one stasis command, and for a process to get where the test wants it.
const TIMEOUT: Duration = Duration::from_secs(30);
const GIB: u64 = 1 << 30;

/// Runs `stasis ARGS`: whether it succeeded, and its stderr.
fn stasis<S: AsRef<OsStr>>(args: &[S]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run stasis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read the images directory")
        .flatten()
        .map(|e| e.metadata().expect("stat an image").len())
        .sum()
}

#[test]
fn sparse_deleted_file_makes_small_images() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("deleted_files")
            .join("sparse"),
    );
    let path = w.join("sparse.dat");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create the sparse file");
    for (i, off) in [0, 300 << 20, GIB - 4096].into_iter().enumerate() {
        file.write_all_at(&[i as u8 + 1; 4096], off)
            .expect("write a data block");
    }
    file.set_len(GIB).expect("make the file 1 GiB");
    std::os::unix::fs::fchown(&file, Some(4321), Some(4322)).expect("fchown");
    file.set_permissions(PermissionsExt::from_mode(0o640))
        .expect("fchmod");
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .stdin(Stdio::from(file.try_clone().expect("dup")))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = isolate(&mut cmd).spawn().expect("start sleep");
    let pid = child.id() as i32;
    drop(child); // reaped by pid
    drop(file);
    std::fs::remove_file(&path).expect("unlink the sparse file");
    wait_sleeping(pid, Some("sleep"), TIMEOUT).expect("sleep sleeps");

    let img = w.mkdir("img");
    let (ok, err) = stasis(&[
        OsStr::new("dump"),
        "--no-auth".as_ref(),
        "-t".as_ref(),
        pid.to_string().as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ]);
    if !ok {
        kill(pid, libc::SIGKILL);
    }
    let _ = wait_pid(pid, TIMEOUT);
    assert!(ok, "dump: {err}");
    let size = du(&img);
    assert!(
        size < 4 << 20,
        "the images of a 1 GiB sparse file with 12 KiB of data take {size} bytes"
    );

    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "--no-auth".as_ref(),
        "-d".as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ]);
    assert!(ok, "restore: {err}");
    let md = std::fs::metadata(format!("/proc/{pid}/fd/0"));
    kill(pid, libc::SIGKILL);
    let _ = wait_pid(pid, TIMEOUT);
    let md = md.expect("stat the restored file");
    assert_eq!(md.nlink(), 0, "the restored file is deleted");
    assert_eq!(md.len(), GIB);
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!((md.uid(), md.gid()), (4321, 4322));
    assert!(
        md.blocks() * 512 < 1 << 20,
        "the restored file has {} blocks: its holes were filled",
        md.blocks()
    );
}

#[test]
fn deleted_name_with_a_link_elsewhere_is_refused_by_name() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("deleted_files")
            .join("hard_link"),
    );
    let (a, b) = (w.join("a"), w.join("b"));
    std::fs::write(&a, b"data").expect("create a");
    std::fs::hard_link(&a, &b).expect("link b to a");
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .stdin(Stdio::from(std::fs::File::open(&a).expect("open a")))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = isolate(&mut cmd).spawn().expect("start sleep");
    let pid = child.id() as i32;
    drop(child); // reaped by pid
    std::fs::remove_file(&a).expect("unlink a");
    wait_sleeping(pid, Some("sleep"), TIMEOUT).expect("sleep sleeps");
    let img = w.join("img");
    let (ok, err) = stasis(&[
        OsStr::new("dump"),
        "--no-auth".as_ref(),
        "-t".as_ref(),
        pid.to_string().as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ]);
    kill(pid, libc::SIGKILL);
    let _ = wait_pid(pid, TIMEOUT);
    assert!(!ok, "the dump succeeded");
    assert!(
        err.contains(&format!("fd 0 of pid {pid}"))
            && err.contains(&format!("the name {} was deleted", a.display()))
            && err.contains("1 link(s) under another name"),
        "the error should name the fd, the deleted name and the links left: {err}"
    );
}
