//! Who may ask for what. Identity always comes from the kernel (SO_PEERCRED, SO_PEERPIDFD,
//! /proc), never from a request. See docs/security.md.

use stasis_engine::procfs;
use stasis_sys::Pid;

/// The connected client, as the kernel reports it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub pid: Pid,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub cap_permitted: u64,
}

impl Caller {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// The namespace of kind `kind` (`user`, `pid`, `net`, ...) that process `pid` is in, as the
/// kernel names it (`user:[4026531837]`).
pub fn namespace_of(pid: Pid, kind: &str) -> Result<String, String> {
    let path = format!("/proc/{pid}/ns/{kind}");
    std::fs::read_link(&path)
        .map(|p| p.display().to_string())
        .map_err(|e| format!("readlink {path}: {e}"))
}

/// The namespace of kind `kind` the daemon is in.
fn own_namespace(kind: &str) -> Result<String, String> {
    let path = format!("/proc/self/ns/{kind}");
    std::fs::read_link(&path)
        .map(|p| p.display().to_string())
        .map_err(|e| format!("readlink {path}: {e}"))
}

/// Refuses process `pid` (`what`) when it is in another user namespace than the daemon's: the
/// ids and capabilities it has there (a full set after `unshare -U -r`) are not those it has
/// on the host, so none of the rules could be checked against them.
pub fn check_user_namespace(pid: Pid, what: &str) -> Result<(), String> {
    let theirs =
        namespace_of(pid, "user").map_err(|_| format!("{what} (pid {pid}) does not exist"))?;
    let ours = own_namespace("user")?;
    if theirs != ours {
        return Err(format!(
            "{what} (pid {pid}) is in user namespace {theirs}, not in stasisd's ({ours}): the \
             capabilities and ids a process has in a user namespace are not those of the host, \
             so stasisd cannot tell what it may do; requests from or for processes in another \
             user namespace are refused"
        ));
    }
    Ok(())
}

/// Refuses to dump process `pid` (`what`) when it is in another pid namespace than the
/// daemon's: its images would record the pids stasisd sees, and a restore could not give it
/// back the pids it has inside its namespace.
pub fn check_pid_namespace(pid: Pid, what: &str) -> Result<(), String> {
    let theirs =
        namespace_of(pid, "pid").map_err(|_| format!("{what} (pid {pid}) does not exist"))?;
    let ours = own_namespace("pid")?;
    if theirs != ours {
        return Err(format!(
            "{what} (pid {pid}) is in pid namespace {theirs}, not in stasisd's ({ours}): its \
             images would record the pids stasisd sees, and a restore cannot put it back into \
             its namespace with the pids it has there; processes of another pid namespace \
             cannot be dumped through stasisd"
        ));
    }
    Ok(())
}

/// Reads what the kernel says about `pid` (the process behind the caller's pidfd). A caller
/// in another user namespace is refused ([`check_user_namespace`]).
pub fn caller_from_pid(pid: Pid, peer_uid: u32, peer_gid: u32) -> Result<Caller, String> {
    check_user_namespace(pid, "the caller")?;
    let st = procfs::read_status(pid).map_err(|e| e.to_string())?;
    if st.uids[1] != peer_uid || st.gids[1] != peer_gid {
        return Err("the caller's credentials changed since it connected".into());
    }
    Ok(Caller {
        pid,
        uid: peer_uid,
        gid: peer_gid,
        groups: st.groups,
        cap_permitted: st.cap_prm,
    })
}

/// Whether `caller` could ptrace process `pid` itself: same real, effective and saved uids and
/// gids as the caller's uid and gid, dumpable, and no capability the caller lacks, in the
/// daemon's user namespace. Root may dump anything but a process of another pid namespace
/// ([`check_pid_namespace`]).
pub fn check_may_dump(caller: &Caller, pid: Pid, what: &str) -> Result<(), String> {
    check_pid_namespace(pid, what)?;
    if caller.is_root() {
        return Ok(());
    }
    check_user_namespace(pid, what)?;
    let st = procfs::read_status(pid).map_err(|_| format!("{what} (pid {pid}) does not exist"))?;
    if st.uids[..3].iter().any(|&u| u != caller.uid)
        || st.gids[..3].iter().any(|&g| g != caller.gid)
    {
        return Err(format!(
            "{what} (pid {pid}) has uids {:?} and gids {:?}; only processes whose ids are all uid {} and gid {} may be dumped",
            &st.uids[..3],
            &st.gids[..3],
            caller.uid,
            caller.gid
        ));
    }
    let caps = st.cap_prm | st.cap_eff | st.cap_amb;
    if caps & !caller.cap_permitted != 0 {
        return Err(format!(
            "{what} (pid {pid}) holds capabilities {caps:#x} that the caller does not"
        ));
    }
    // The kernel's own ptrace check, as the caller: catches a process that is not dumpable.
    match stasis_sys::process::user_may_ptrace(pid, caller.uid, caller.gid) {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "{what} (pid {pid}) is not dumpable: uid {} could not ptrace it",
                caller.uid
            ))
        }
        Err(e) => return Err(format!("checking access to {what} (pid {pid}): {e}")),
    }
    Ok(())
}

/// [`check_may_dump`] for `pid` and, with `descendants`, for every process below it: all of
/// them must pass before anything is frozen.
pub fn check_may_dump_tree(
    caller: &Caller,
    pid: Pid,
    what: &str,
    descendants_too: bool,
) -> Result<(), String> {
    if descendants_too {
        let of = format!("a descendant of {what}");
        for p in descendants(pid) {
            check_may_dump(caller, p, &of)?;
        }
    }
    check_may_dump(caller, pid, what)
}

/// Every descendant of `pid` (children, grandchildren, ...), as /proc shows them now.
pub fn descendants(pid: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in procfs::children(p).unwrap_or_default() {
            if !out.contains(&c) && out.len() < 1 << 16 {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}
