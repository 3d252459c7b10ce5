//! Helpers shared by the CLI's integration tests (a test file says `mod common;`): running the
//! `stasis` binary under test, and the work directories of tests.
#![allow(dead_code)]

use stasis_test_infra::WorkDir;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `stasis ARGS` (stdin from /dev/null) and waits: whether it succeeded, and its stderr.
pub fn stasis<S: AsRef<OsStr>>(args: &[S]) -> (bool, String) {
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

/// The work directory of test `test` of the test file `file`:
/// `target/tmp/<file>/<test>/` (kept when the test fails).
pub fn work_dir(file: &str, test: &str) -> WorkDir {
    WorkDir::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join(file).join(test))
}
