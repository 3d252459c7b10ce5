//! `stasis restore --pid-ns`: the same images restored twice side by side, each copy in its own
//! pid namespace with its dumped pid, both verifying their state. Needs root (see
//! `stasis_test_infra::require_root`).
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use stasis_test_infra::build::zdtm_program;
use stasis_test_infra::process::{append_log, isolate, kill, spawn_isolated};
use stasis_test_infra::procfs::{children, proc_state, status_field, ProcState};
use stasis_test_infra::wait::wait_for;
use stasis_test_infra::{require_root, WorkDir};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn stasis() -> &'static str {
    env!("CARGO_BIN_EXE_stasis")
}

#[test]
fn same_images_restored_twice_side_by_side() {
    if !require_root() {
        return;
    }
    let dir = WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("pid_ns")
            .join("side_by_side"),
    );
    let bin = zdtm_program("busy_loop", &dir).unwrap();
    let log = dir.join("test.log");
    let mut prog = spawn_isolated(
        Command::new(&bin).current_dir(&dir),
        append_log(&log).unwrap(),
    )
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
        let rp = r.id() as i32;
        let mut root = 0;
        wait_for("the restored root", Duration::from_secs(20), || {
            root = children(rp)
                .into_iter()
                .flat_map(children)
                .next()
                .unwrap_or(0);
            root != 0 && proc_state(root) == ProcState::Running
        });
        let nspid = status_field(root, "NSpid").unwrap();
        assert!(
            nspid.ends_with(&format!("\t{pid}")),
            "inner pid is not the dumped pid: {nspid}"
        );
        roots.push(root);
    }
    assert_ne!(roots[0], roots[1]);
    for &root in &roots {
        assert!(kill(root, libc::SIGTERM), "kill({root}, SIGTERM)");
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
}
