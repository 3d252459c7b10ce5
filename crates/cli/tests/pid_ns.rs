//! `stasis restore --pid-ns`: the same images restored twice side by side, each copy in its own
//! pid namespace with its dumped pid, both verifying their state. Needs root (skips otherwise).
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stasis() -> &'static str {
    env!("CARGO_BIN_EXE_stasis")
}

fn workdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("pid_ns")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn compile(src: &str, out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/zdtm");
    let st = Command::new("gcc")
        .args(["-O1", "-Wall", "-Werror", "-D_GNU_SOURCE", "-I"])
        .arg(root.join("lib"))
        .arg("-o")
        .arg(out)
        .arg(root.join(src))
        .arg(root.join("lib/zdtm.c"))
        .status()
        .unwrap();
    assert!(st.success(), "gcc {src}");
}

/// Starts `cmd` in a new session with nothing but stdio inherited.
fn isolate(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure only makes async-signal-safe system calls (setsid, close_range).
    unsafe {
        cmd.pre_exec(|| {
            stasis_sys::process::setsid()?;
            stasis_sys::process::close_range(3, u32::MAX)?;
            Ok(())
        })
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn same_images_restored_twice_side_by_side() {
    if stasis_sys::process::geteuid() != 0 {
        eprintln!("skipping: needs root");
        return;
    }
    let dir = workdir("side_by_side");
    let bin = dir.join("busy_loop");
    compile("busy_loop.c", &bin);
    let log = dir.join("test.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut prog = isolate(
        Command::new(&bin)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out),
    )
    .spawn()
    .unwrap();
    let pid = prog.id();
    wait_for("READY", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("READY")
    });
    let images = dir.join("images");
    let st = Command::new(stasis())
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(&images)
        .status()
        .unwrap();
    assert!(st.success(), "dump failed");
    let _ = prog.wait();

    let mut restorers: Vec<_> = (0..2)
        .map(|_| {
            isolate(
                Command::new(stasis())
                    .args(["restore", "--pid-ns", "-D"])
                    .arg(&images),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    // Each restorer's child is a namespace init whose child is the restored root, which has the
    // dumped pid inside its namespace.
    let mut roots = Vec::new();
    for r in &restorers {
        let rp = r.id();
        let mut root = 0;
        wait_for("the restored root", Duration::from_secs(20), || {
            root = children(rp)
                .into_iter()
                .flat_map(|init| children(init as u32))
                .next()
                .unwrap_or(0);
            root != 0
                && std::fs::read_to_string(format!("/proc/{root}/status"))
                    .map(|s| s.contains("TracerPid:\t0") && !s.contains("State:\tt"))
                    .unwrap_or(false)
        });
        let status = std::fs::read_to_string(format!("/proc/{root}/status")).unwrap();
        let nspid = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .unwrap()
            .to_string();
        assert!(
            nspid.ends_with(&format!("\t{pid}")),
            "inner pid is not the dumped pid: {nspid}"
        );
        roots.push(root);
    }
    assert_ne!(roots[0], roots[1]);
    for &root in &roots {
        stasis_sys::process::kill(root, libc::SIGTERM).unwrap();
    }
    for r in &mut restorers {
        let st = r.wait().unwrap();
        assert_eq!(
            st.code(),
            Some(0),
            "a restored copy failed:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("PASS").count(), 2, "log:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
