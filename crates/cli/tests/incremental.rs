//! Incremental dumps end to end (`stasis dump --parent`): a chain of three dumps of a real
//! process tree (two threads, a child, shared anonymous memory, a private file mapping; see
//! `incremental_workload.c`) that changes about 1 % of its pages between dumps (the first two
//! leave it running, so they pre-copy: the increment is compared with its parent after the
//! thaw), restored from the last dump and checked page by page; each increment stores about
//! 1 % of the pages of the full dump; a chain moved as a whole still restores; a parent that
//! is missing or was changed refuses the restore, and nothing runs.
//!
//! The test needs root (`stasis_test_infra::require_root`) and gcc. Work directories of failed
//! tests are kept in `target/tmp/incremental/<test name>/`.

mod common;

use common::stasis;
use stasis_test_infra::build::c_program;
use stasis_test_infra::process::{become_subreaper, isolate, kill, wait_pid};
use stasis_test_infra::procfs::{children, exists};
use stasis_test_infra::wait::wait_until;
use stasis_test_infra::{require_root, WorkDir};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Deadline for one stasis command, and for the workload to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of the pages files of the dump in `dir`.
fn pages_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read the images directory")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().expect("stat a pages file").len())
        .sum()
}

/// Waits until the log holds `line` (a whole line).
fn wait_line(log: &Path, line: &str) {
    let found = wait_until(TIMEOUT, || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .any(|l| l == line)
    });
    assert!(
        found,
        "no line {line:?} in the workload's log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Kills the workload (parent and child) and reaps what it can.
fn kill_tree(pid: i32, child: i32) {
    kill(child, libc::SIGKILL);
    kill(pid, libc::SIGKILL);
    let _ = wait_pid(pid, TIMEOUT);
    let _ = wait_pid(child, Duration::from_millis(100));
}

#[test]
fn chain_of_three_dumps_restores_the_exact_memory() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("incremental")
            .join("chain"),
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/incremental_workload.c");
    let exe = c_program(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &src,
        &w.join("workload"),
        false,
    )
    .expect("build the workload");
    let (log, control, file) = (w.join("log"), w.join("control"), w.join("mapped"));
    std::fs::write(&file, vec![0x5au8; 64 * 4096]).expect("write the mapped file");
    let mut cmd = Command::new(&exe);
    cmd.arg(&log)
        .arg(&control)
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = isolate(&mut cmd).spawn().expect("start the workload").id() as i32;
    wait_line(&log, "ready parent");
    wait_line(&log, "ready child");
    let child = *children(pid).first().expect("the workload's child");
    let chain = w.mkdir("chain");
    let d = |n: u32| chain.join(format!("d{n}"));
    let step = |n: u32| {
        kill(pid, libc::SIGUSR1);
        kill(child, libc::SIGUSR1);
        wait_line(&log, &format!("mutated parent {n}"));
        wait_line(&log, &format!("mutated child {n}"));
    };
    let dump = |n: u32, leave_running: bool| {
        let mut args = vec![
            "dump".to_string(),
            "-t".into(),
            pid.to_string(),
            "-D".into(),
            d(n).display().to_string(),
        ];
        if n > 1 {
            args.extend(["--parent".into(), d(n - 1).display().to_string()]);
        }
        let stats = w.join(format!("stats-{n}.json"));
        if leave_running {
            args.push("--leave-running".into());
            args.extend(["--stats".into(), stats.display().to_string()]);
        }
        let (ok, err) = stasis(&args);
        if !ok {
            kill_tree(pid, child);
        }
        assert!(ok, "dump {n}: {err}");
        if leave_running {
            // Pre-copied (an increment too: compared with its parent after the thaw).
            let stats: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&stats).expect("read the stats"))
                    .expect("the stats' JSON");
            assert!(
                stats["phases_ms"]["pre-copy"].as_f64().is_some(),
                "dump {n} did not pre-copy: {stats}"
            );
        }
    };

    // A parent that is not there refuses the dump before anything is frozen.
    let (ok, err) = stasis(&[
        OsStr::new("dump"),
        "-t".as_ref(),
        pid.to_string().as_ref(),
        "-D".as_ref(),
        w.join("never").as_os_str(),
        "--parent".as_ref(),
        w.join("missing").as_os_str(),
        "--leave-running".as_ref(),
    ]);
    assert!(
        !ok && err.contains("broken chain") && err.contains("missing"),
        "{err}"
    );
    assert!(!w.join("never").join("inventory.img").exists());

    dump(1, true);
    step(1);
    dump(2, true);
    step(2);
    dump(3, false);
    let _ = wait_pid(pid, TIMEOUT);
    let _ = wait_pid(child, Duration::from_millis(100));
    assert!(!exists(pid) && !exists(child), "dump 3 killed the tree");

    let sizes: Vec<u64> = (1..=3).map(|n| pages_bytes(&d(n))).collect();
    let pct = |n: usize| sizes[n] as f64 * 100.0 / sizes[0] as f64;
    eprintln!(
        "pages files: dump 1 {} KiB, dump 2 {} KiB ({:.2} %), dump 3 {} KiB ({:.2} %)",
        sizes[0] / 1024,
        sizes[1] / 1024,
        pct(1),
        sizes[2] / 1024,
        pct(2)
    );
    // About 1 % of the pages changed (plus a few of stacks, libc data and the threads'
    // counters): each increment stores little more than that.
    for n in [1, 2] {
        assert!(
            pct(n) < 3.0,
            "dump {} stored {:.2} % of dump 1's pages",
            n + 1,
            pct(n)
        );
        assert!(
            pct(n) > 0.5,
            "dump {} stored too little: {:.2} %",
            n + 1,
            pct(n)
        );
    }

    // `show` lists the chain and checks the runs of every image of it.
    let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .arg("show")
        .arg(d(3))
        .output()
        .expect("run stasis show");
    assert!(
        out.status.success(),
        "show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("show's JSON");
    assert_eq!(
        shown["chain"].as_array().map(Vec::len),
        Some(2),
        "{}",
        shown["chain"]
    );
    // A run of d3 held by d1 (image 2), to change below.
    let (held_pid, held_offset) = shown["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find_map(|p| {
            let run = p["page_runs"]
                .as_array()?
                .iter()
                .find(|r| r["image"] == 2)?;
            Some((p["pid"].as_i64()?, run["offset"].as_u64()?))
        })
        .expect("a run of dump 3 held by dump 1");

    // The chain moved as a whole still restores (the links are relative) ...
    let moved = w.join("moved");
    std::fs::rename(&chain, &moved).expect("move the chain");
    let md = |n: u32| moved.join(format!("d{n}"));
    // ... but not without its middle dump,
    std::fs::rename(md(2), w.join("d2-away")).expect("move d2 away");
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-d".as_ref(),
        "-D".as_ref(),
        md(3).as_os_str(),
    ]);
    eprintln!("d2 missing: {}", err.trim());
    assert!(
        !ok && err.contains("broken chain") && err.contains("../d2"),
        "{err}"
    );
    assert!(!exists(pid), "a failed restore left the process running");
    std::fs::rename(w.join("d2-away"), md(2)).expect("move d2 back");
    // ... nor with its first dump changed (another inventory: a different dump in its place),
    let inv = md(1).join("inventory.img");
    let saved = std::fs::read(&inv).expect("read d1's inventory");
    let mut other = saved.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    std::fs::write(&inv, &other).expect("change d1's inventory");
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-d".as_ref(),
        "-D".as_ref(),
        md(3).as_os_str(),
    ]);
    assert!(
        !ok && err.contains("broken chain") && err.contains("replaced or changed"),
        "{err}"
    );
    assert!(!exists(pid), "a failed restore left the process running");
    std::fs::write(&inv, &saved).expect("restore d1's inventory");
    // ... nor with a page of its first dump changed (its auth.img no longer matches).
    let pages = md(1).join(format!("pages-{held_pid}.img"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pages)
        .expect("open d1's pages");
    let at = 4096 + held_offset + 100;
    let mut byte = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut byte, at).expect("read a byte");
    std::os::unix::fs::FileExt::write_all_at(&f, &[byte[0] ^ 0x40], at).expect("change it");
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-d".as_ref(),
        "-D".as_ref(),
        md(3).as_os_str(),
    ]);
    eprintln!("a changed page of d1: {}", err.trim());
    assert!(
        !ok && err.contains(&format!("pages-{held_pid}.img")) && err.contains("d1"),
        "{err}"
    );
    assert!(!exists(pid), "a failed restore left the process running");
    std::os::unix::fs::FileExt::write_all_at(&f, &byte, at).expect("change it back");

    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-d".as_ref(),
        "-D".as_ref(),
        md(3).as_os_str(),
    ]);
    assert!(ok, "restore: {err}");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count());
    std::fs::write(&control, "2").expect("write the control file");
    kill(pid, libc::SIGUSR2);
    kill(child, libc::SIGUSR2);
    let verified = wait_until(TIMEOUT, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("verify parent") && text.contains("verify child")
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    kill_tree(pid, child);
    assert!(verified, "no verification in the log:\n{text}");
    assert!(
        text.contains("verify parent ok\n") && text.contains("verify child ok\n"),
        "the restored memory differs:\n{text}"
    );
    assert_eq!(
        threads.ok(),
        Some(3),
        "the restored process has its threads"
    );
}

/// Root restores root's own unauthenticated images as they are: their parents must be root's
/// alone too, or a user who can write a parent would choose the restored memory.
#[test]
fn unauthenticated_parent_others_can_write_is_refused() {
    if !require_root() {
        return;
    }
    become_subreaper();
    let w = WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("incremental")
            .join("writable_parent"),
    );
    let mut cmd = Command::new("sleep");
    cmd.arg("100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = isolate(&mut cmd).spawn().expect("start sleep").id() as i32;
    stasis_test_infra::process::wait_sleeping(pid, Some("sleep"), TIMEOUT).expect("sleep sleeps");
    let (d1, d2) = (w.join("d1"), w.join("d2"));
    let pid_s = pid.to_string();
    let args1 = ["dump", "--no-auth", "--leave-running", "-t", &pid_s, "-D"];
    let (ok, err) = stasis(&[&args1[..], &[d1.to_str().unwrap()]].concat());
    if !ok {
        kill(pid, libc::SIGKILL);
    }
    assert!(ok, "dump 1: {err}");
    let args2 = [
        "dump",
        "--no-auth",
        "-t",
        &pid_s,
        "--parent",
        d1.to_str().unwrap(),
        "-D",
    ];
    let (ok, err) = stasis(&[&args2[..], &[d2.to_str().unwrap()]].concat());
    if !ok {
        kill(pid, libc::SIGKILL);
    }
    let _ = wait_pid(pid, TIMEOUT);
    assert!(ok, "dump 2: {err}");
    assert!(
        pages_bytes(&d2) < pages_bytes(&d1) / 4,
        "sleep's memory did not change"
    );

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d1, std::fs::Permissions::from_mode(0o777)).expect("chmod d1");
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-d".as_ref(),
        "-D".as_ref(),
        d2.as_os_str(),
    ]);
    assert!(
        !ok && err.contains("broken chain") && err.contains("not authenticated"),
        "{err}"
    );
    assert!(!exists(pid), "a failed restore left the process running");
    std::fs::set_permissions(&d1, std::fs::Permissions::from_mode(0o755)).expect("chmod d1");
    let (ok, err) = stasis(&[
        OsStr::new("restore"),
        "-d".as_ref(),
        "-D".as_ref(),
        d2.as_os_str(),
    ]);
    let running = exists(pid);
    kill(pid, libc::SIGKILL);
    let _ = wait_pid(pid, TIMEOUT);
    assert!(ok && running, "restore: {err}");
}
