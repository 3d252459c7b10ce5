//! Polling with a deadline.

use std::time::{Duration, Instant};

/// How often the helpers of this crate poll (/proc, logs, children). Not faster: a harness
/// that polls more often takes CPU time from the processes it waits for (with 5 ms, a restore
/// race in tree_orphan_pgid showed up in one run of eight instead of none in 25).
pub const POLL: Duration = Duration::from_millis(10);

/// Calls `f` every [`POLL`] until it returns true (then true) or `timeout` has passed (then
/// false, after one last call).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Like [`wait_until`], but panics ("timed out waiting for `what`") when the time is up.
pub fn wait_for(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, f),
        "timed out after {timeout:?} waiting for {what}"
    );
}
