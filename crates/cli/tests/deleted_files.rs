//! Files deleted while open, end to end: a process holding a 1 GiB sparse deleted file with a
//! few data blocks makes images of a few blocks, not of a gigabyte, and comes back with the
//! same sparse file (size, holes, blocks allocated, owner, mode). A name deleted while the file
//! keeps a hard link elsewhere comes back as that very file, through the remap link the dump
//! made (engine::files::link_remap), or is refused by name where no link can be made. A
//! deleted file is recreated in its directory without following a symbolic link put there.
//!
//! The test needs root (`stasis_test_infra::require_root`). Work directories of failed tests
//! are kept in `target/tmp/deleted_files/<test name>/`.

mod common;

use common::stasis;
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

/// The bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read the images directory")
        .flatten()
        .map(|e| e.metadata().expect("stat an image").len())
        .sum()
}

/// The work directory of test `name` (kept when it fails).
fn work_dir(name: &str) -> WorkDir {
    common::work_dir("deleted_files", name)
}

/// A `sleep` holding `file` as its fd 0, sleeping once `prepare` (run after it started: say,
/// unlinking the file's name) is done. Returns its pid.
fn sleep_holding(file: std::fs::File, prepare: impl FnOnce()) -> i32 {
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .stdin(Stdio::from(file))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = isolate(&mut cmd).spawn().expect("start sleep");
    let pid = child.id() as i32;
    drop(child); // reaped by pid
    prepare();
    wait_sleeping(pid, Some("sleep"), TIMEOUT).expect("sleep sleeps");
    pid
}

/// `stasis dump [--no-auth] -t PID -D IMG` (the process killed after).
fn dump(pid: i32, img: &Path, auth: bool) -> (bool, String) {
    let mut args = vec![OsStr::new("dump")];
    if !auth {
        args.push("--no-auth".as_ref());
    }
    let pid = pid.to_string();
    args.extend(["-t".as_ref(), pid.as_ref(), "-D".as_ref(), img.as_os_str()]);
    stasis(&args)
}

#[test]
fn sparse_deleted_file_makes_small_images() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("sparse");
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
    let pid = sleep_holding(file, || {
        std::fs::remove_file(&path).expect("unlink the sparse file")
    });

    let img = w.mkdir("img");
    let (ok, err) = dump(pid, &img, false);
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

/// A `sleep` holding fd 0 on `dir/a`, whose name is then deleted while `dir/b` (a hard link)
/// remains. Returns its pid.
fn sleep_on_a_deleted_name(a: &Path, b: &Path) -> i32 {
    std::fs::write(a, b"data").expect("create a");
    std::fs::hard_link(a, b).expect("link b to a");
    sleep_holding(std::fs::File::open(a).expect("open a"), || {
        std::fs::remove_file(a).expect("unlink a")
    })
}

/// A name deleted while the file keeps a link elsewhere: the dump keeps the file by a remap
/// link next to the name (listed by `stasis show`), and every restore (twice: the link stays)
/// gives the process that very file again, under its old name, deleted.
#[test]
fn deleted_name_with_a_link_elsewhere_comes_back_as_that_file() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("hard_link");
    let (a, b) = (w.join("a"), w.join("b"));
    let pid = sleep_on_a_deleted_name(&a, &b);
    let img = w.join("img");
    let (ok, err) = dump(pid, &img, false);
    assert!(ok, "the dump failed: {err}");
    let _ = wait_pid(pid, TIMEOUT);
    let ino = std::fs::metadata(&b).expect("stat b").ino();
    let remap = w.join(format!(
        ".stasis-remap.{}.{ino}",
        std::fs::metadata(&b).unwrap().dev()
    ));
    assert!(remap.exists(), "no remap link {}", remap.display());
    let shown = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["show".as_ref(), img.as_os_str()])
        .output()
        .expect("stasis show");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(remap.to_str().unwrap()),
        "stasis show does not list the remap link"
    );
    for round in 0..2 {
        let (ok, err) = stasis(&[
            OsStr::new("restore"),
            "-d".as_ref(),
            "-D".as_ref(),
            img.as_os_str(),
        ]);
        assert!(ok, "restore {round} failed: {err}");
        let link = std::fs::read_link(format!("/proc/{pid}/fd/0"));
        let md = std::fs::metadata(format!("/proc/{pid}/fd/0"));
        kill(pid, libc::SIGKILL);
        let _ = wait_pid(pid, TIMEOUT);
        assert_eq!(
            link.expect("read the fd link").display().to_string(),
            format!("{} (deleted)", a.display())
        );
        assert_eq!(md.expect("stat the fd").ino(), ino, "the very file of b");
        assert!(!a.exists(), "the old name is deleted again");
        assert!(remap.exists(), "the remap link stays with the images");
    }
}

/// Where no remap link can be made (a read-only filesystem), the dump is refused naming the
/// fd, the deleted name and why, and the process runs on.
#[test]
fn deleted_name_with_a_link_on_a_read_only_filesystem_is_refused_by_name() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("hard_link_ro");
    let mnt = w.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    let mount = |args: &[&OsStr]| {
        let st = Command::new("mount")
            .args(args)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount {args:?}");
    };
    mount(&[
        "-t".as_ref(),
        "tmpfs".as_ref(),
        "-o".as_ref(),
        "size=1m".as_ref(),
        "tmpfs".as_ref(),
        mnt.as_os_str(),
    ]);
    let (a, b) = (mnt.join("a"), mnt.join("b"));
    let pid = sleep_on_a_deleted_name(&a, &b);
    mount(&["-o".as_ref(), "remount,ro".as_ref(), mnt.as_os_str()]);
    let img = w.join("img");
    let (ok, err) = dump(pid, &img, false);
    let alive = stasis_test_infra::procfs::exists(pid);
    kill(pid, libc::SIGKILL);
    let _ = wait_pid(pid, TIMEOUT);
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(!ok, "the dump succeeded");
    assert!(alive, "the refused process was killed");
    assert!(
        err.contains(&format!("fd 0 of pid {pid}"))
            && err.contains(&format!("the name {} was deleted", a.display()))
            && err.contains("1 link(s) elsewhere")
            && err.contains("could make none")
            && err.contains("Read-only file system"),
        "the error should name the fd, the deleted name and why: {err}"
    );
}

/// The directory of a deleted file replaced by a symbolic link after the dump (by whoever owns
/// it): the restore, which recreates the file in that directory, fails saying so, and creates
/// nothing where the link points.
#[test]
fn deleted_file_in_a_directory_replaced_by_a_symlink_is_not_created_elsewhere() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = work_dir("symlinked_dir");
    let dir = w.mkdir("d");
    let elsewhere = w.mkdir("elsewhere");
    let path = dir.join("gone.dat");
    std::fs::write(&path, b"contents").expect("create the file");
    let pid = sleep_holding(std::fs::File::open(&path).expect("open it"), || {
        std::fs::remove_file(&path).expect("unlink it")
    });
    let img = w.join("img");
    let (ok, err) = dump(pid, &img, true);
    assert!(ok, "the dump failed: {err}");
    let _ = wait_pid(pid, TIMEOUT);
    std::fs::rename(&dir, w.join("d.old")).expect("move the directory away");
    std::os::unix::fs::symlink(&elsewhere, &dir).expect("put a symlink in its place");
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-d".as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ]);
    if ok {
        kill(pid, libc::SIGKILL);
        let _ = wait_pid(pid, TIMEOUT);
    }
    assert!(!ok, "the restore went through a symlinked directory");
    assert!(err.contains(dir.to_str().unwrap()), "{err}");
    let made: Vec<_> = std::fs::read_dir(&elsewhere)
        .expect("read the link's target")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(made.is_empty(), "files made through the link: {made:?}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the failed restore left pid {pid} running"
    );
}
