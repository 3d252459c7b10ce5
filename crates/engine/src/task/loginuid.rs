//! The audit login uid, /proc/PID/loginuid (u32::MAX: unset), and with it the audit session.
//!
//! The kernel keeps it per thread: a thread starts with the one of the thread that created it,
//! and only a thread itself may write its own. Dump: read from /proc for the leader (the
//! process's, [`dump`]) and for every thread ([`dump_thread`]). Restore: the restore child
//! writes its own /proc/self/loginuid before it stops ([`apply_in_child`]), so the threads
//! created later inherit it; a thread that had another one writes /proc/thread-self/loginuid
//! itself, by injection, before the credentials ([`restore_thread`]).
//!
//! An unset loginuid can be set once without privilege; changing a set one (the restorer's,
//! when it runs in a login session, or the leader's inherited by a thread) needs
//! CAP_AUDIT_CONTROL, and the kernel refuses it altogether when the audit feature
//! `loginuid_immutable` is on. A restore that cannot set it fails naming it. When the restorer's
//! loginuid is already the dumped one nothing is written. Not kept: the audit session id
//! (/proc/PID/sessionid), which the kernel numbers anew on every write of a loginuid.

use crate::inject::Injector;
use crate::{procfs, Error};
use stasis_sys::Pid;
use std::path::Path;

const SELF: &str = "/proc/self/loginuid";
const THREAD_SELF: &str = "/proc/thread-self/loginuid";

/// The loginuid of the thread-group leader of `pid`.
pub fn dump(pid: Pid) -> Result<u32, Error> {
    dump_thread(pid, pid)
}

/// The loginuid of thread `tid` of `pid`.
pub fn dump_thread(pid: Pid, tid: Pid) -> Result<u32, Error> {
    Ok(procfs::read_number(Path::new(&format!(
        "/proc/{pid}/task/{tid}/loginuid"
    )))?)
}

/// Runs in the restore child: gives it the dumped loginuid when it has another one (a message
/// on failure).
pub fn apply_in_child(loginuid: u32) -> Result<(), String> {
    let current: u32 =
        procfs::read_number(Path::new(SELF)).map_err(|e| format!("loginuid: {e}"))?;
    if current == loginuid {
        return Ok(());
    }
    std::fs::write(SELF, loginuid.to_string()).map_err(|e| {
        format!(
            "audit login uid {loginuid}: writing {SELF} failed: {e} (the restorer's is {current}; \
             changing a set one needs CAP_AUDIT_CONTROL and a kernel without loginuid_immutable)"
        )
    })
}

/// Gives the thread `inj` runs in its own `loginuid` when it differs from the one it inherited
/// from the leader (`leader`).
pub fn restore_thread(inj: &mut Injector, loginuid: u32, leader: u32) -> Result<(), Error> {
    if loginuid == leader {
        return Ok(());
    }
    let fd = inj.open(THREAD_SELF, libc::O_WRONLY | libc::O_CLOEXEC)?;
    let text = loginuid.to_string();
    let written = inj.write_fd(fd, text.as_bytes());
    inj.close(fd)?;
    if written? != text.len() {
        return Err(Error::Internal {
            what: format!("short write of loginuid {loginuid} in thread {}", inj.tid()),
        });
    }
    Ok(())
}
