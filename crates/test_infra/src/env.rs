//! What the machine offers a test: root, tools, CI. And where the repository is.
//!
//! A test that cannot run here (not root, a tool missing) must not pass as if it had run. Under
//! CI (`CI=true`) it fails; elsewhere (a developer's unprivileged `cargo test`) it prints a
//! notice and returns early:
//!
//! ```no_run
//! // #[test]
//! fn restores_a_pid() {
//!     if !stasis_test_infra::require_root() {
//!         return;
//!     }
//!     // ...
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    stasis_sys::process::geteuid() == 0
}

/// Whether this is a CI run: the environment variable `CI` is `true`.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| v == "true")
}

/// Whether `tool` can be run (it is found and starts with `--version`).
pub fn have_tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// True when running as root. Otherwise: panics under CI (see [`in_ci`]), else prints a notice
/// and returns false, and the test returns early.
pub fn require_root() -> bool {
    is_root() || unavailable("needs root")
}

/// True when `tool` (e.g. `gcc`) can be run. Otherwise: panics under CI (see [`in_ci`]), else
/// prints a notice and returns false, and the test (or the part of it that needs the tool)
/// does not run.
pub fn require_tool(tool: &str) -> bool {
    have_tool(tool) || unavailable(&format!("needs `{tool}`, which cannot be run here"))
}

/// The test cannot run: fail under CI, else a notice and `false`.
fn unavailable(why: &str) -> bool {
    let test = current_test();
    if in_ci() {
        panic!("{test} {why}: under CI (CI=true) every test must run, none may be skipped");
    }
    eprintln!("notice: {test} {why}; skipped (under CI=true this fails)");
    false
}

/// The name of the running test: libtest names each test's thread after it.
fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "this test".to_string(),
    }
}

/// The root of the repository (the workspace), where `tests/`, `include/` and `examples/` are.
pub fn repo_root() -> PathBuf {
    // crates/test_infra -> the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}
