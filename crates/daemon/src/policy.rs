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

/// Reads what the kernel says about `pid` (the process behind the caller's pidfd).
pub fn caller_from_pid(pid: Pid, peer_uid: u32, peer_gid: u32) -> Result<Caller, String> {
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
/// gids as the caller's uid and gid, dumpable, and no capability the caller lacks. Root may
/// dump anything.
pub fn check_may_dump(caller: &Caller, pid: Pid, what: &str) -> Result<(), String> {
    if caller.is_root() {
        return Ok(());
    }
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

/// The requester for a restore on behalf of `caller` (None for root: restore as dumped).
pub fn requester(caller: &Caller) -> Result<Option<stasis_engine::Requester>, String> {
    if caller.is_root() {
        return Ok(None);
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", caller.pid))
        .map_err(|e| e.to_string())?;
    let loginuid = std::fs::read_to_string(format!("/proc/{}/loginuid", caller.pid))
        .map_err(|e| e.to_string())?;
    Ok(Some(stasis_engine::Requester {
        uid: caller.uid,
        gid: caller.gid,
        groups: caller.groups.clone(),
        cap_permitted: caller.cap_permitted,
        hard_limits: parse_hard_limits(&limits),
        loginuid: loginuid
            .trim()
            .parse()
            .map_err(|_| format!("bad loginuid {loginuid:?}"))?,
    }))
}

/// /proc/PID/limits rows in resource-number order, as (resource, hard limit).
fn parse_hard_limits(text: &str) -> Vec<(u32, u64)> {
    // The rows come in RLIMIT_* order: cpu, fsize, data, stack, core, rss, nproc, nofile,
    // memlock, as, locks, sigpending, msgqueue, nice, rtprio, rttime.
    text.lines()
        .skip(1)
        .enumerate()
        .filter_map(|(i, line)| {
            let cols: Vec<&str> = line[25.min(line.len())..].split_whitespace().collect();
            let hard = cols.get(1)?;
            let v = if *hard == "unlimited" {
                u64::MAX
            } else {
                hard.parse().ok()?
            };
            Some((i as u32, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max file size             unlimited            unlimited            bytes     \n\
Max data size             unlimited            unlimited            bytes     \n\
Max stack size            8388608              unlimited            bytes     \n\
Max core file size        0                    unlimited            bytes     \n\
Max resident set          unlimited            unlimited            bytes     \n\
Max processes             95617                95617                processes \n\
Max open files            1024                 524288               files     \n";
        let l = parse_hard_limits(t);
        assert_eq!(l[3], (3, u64::MAX));
        assert_eq!(l[6], (6, 95617));
        assert_eq!(l[7], (7, 524288));
    }
}
