//! The OOM killer's adjustment of the process, /proc/PID/oom_score_adj (-1000..=1000).
//!
//! Dump: read from /proc. Restore ([`apply_in_child`]): the restore child writes its own
//! /proc/self/oom_score_adj before it stops. Raising it needs no privilege; lowering it needs
//! CAP_SYS_RESOURCE below `oom_score_adj_min`, a floor the kernel keeps per process (inherited
//! by children, moved only by a writer that has CAP_SYS_RESOURCE): without that capability
//! (as on this machine), a restorer can give back any value down to its own floor (0 for a
//! restorer started the usual way: values below 0 fail). The restore then fails, naming the
//! value, rather than leaving a higher one.

use crate::{procfs, Error};
use stasis_sys::Pid;
use std::path::Path;

const SELF: &str = "/proc/self/oom_score_adj";

/// /proc/PID/oom_score_adj.
pub fn dump(pid: Pid) -> Result<i32, Error> {
    Ok(procfs::read_number(Path::new(&format!(
        "/proc/{pid}/oom_score_adj"
    )))?)
}

/// Runs in the restore child: gives it the dumped `oom_score_adj` (a message on failure).
///
/// With `confined` (a restore for a requester, whose value the restorer took), the current
/// value is a floor: the dumped one is kept only when it is higher.
pub fn apply_in_child(oom_score_adj: i32, confined: bool) -> Result<(), String> {
    let current: i32 =
        procfs::read_number(Path::new(SELF)).map_err(|e| format!("oom_score_adj: {e}"))?;
    let oom_score_adj = if confined {
        oom_score_adj.max(current)
    } else {
        oom_score_adj
    };
    if current == oom_score_adj {
        return Ok(());
    }
    std::fs::write(SELF, oom_score_adj.to_string()).map_err(|e| {
        let why = if e.raw_os_error() == Some(libc::EACCES) {
            " (lowering oom_score_adj below the restorer's own floor needs CAP_SYS_RESOURCE)"
        } else {
            ""
        };
        format!("oom_score_adj {oom_score_adj}: writing {SELF}: {e}{why}")
    })
}
