//! Credentials: real/effective/saved/filesystem uids and gids, supplementary groups,
//! capability sets (inheritable, permitted, effective, bounding, ambient), securebits and
//! no_new_privs.
//!
//! Dump: /proc/PID/status plus PR_GET_SECUREBITS inside the target. Restore: the last step
//! that needs privilege inside the new process (root's, or CAP_CHECKPOINT_RESTORE in a restore
//! as the requester): the bounding set is reduced, groups and ids are set with capabilities
//! kept across the uid change, then the capability sets (image ∩ allowed), ambient
//! capabilities, securebits and no_new_privs; the privileged calls only when they change
//! something.

use crate::inject::calls::LINUX_CAPABILITY_VERSION_3;
use crate::inject::kabi::{CapUserData, CapUserHeader};
use crate::inject::Injector;
use crate::procfs::Status;
use crate::Error;
use stasis_image::Creds;

const SECBIT_KEEP_CAPS: u32 = 1 << 4;

#[tracing::instrument(name = "creds", level = "debug", skip_all, fields(pid = inj.tid()))]
pub fn dump(status: &Status, inj: &mut Injector) -> Result<Creds, Error> {
    let securebits = inj.get_securebits()?;
    Ok(Creds {
        uids: status.uids,
        gids: status.gids,
        groups: status.groups.clone(),
        cap_inheritable: status.cap_inh,
        cap_permitted: status.cap_prm,
        cap_effective: status.cap_eff,
        cap_bounding: status.cap_bnd,
        cap_ambient: status.cap_amb,
        no_new_privs: status.no_new_privs,
        securebits,
        keepcaps: securebits & SECBIT_KEEP_CAPS != 0,
    })
}

/// Highest capability number this kernel knows (read once per process: it is the kernel's).
fn last_cap() -> u64 {
    static LAST: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        crate::procfs::slurp_string(std::path::Path::new("/proc/sys/kernel/cap_last_cap"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// The credentials a thread has before [`restore`] gives it the dumped ones.
#[derive(Debug, Clone)]
pub struct Now {
    /// Its /proc status (ids, groups, capability sets, no_new_privs).
    pub status: Status,
    pub securebits: u32,
}

impl Now {
    /// What the thread `inj` runs in has.
    pub fn of(inj: &mut Injector) -> Result<Now, Error> {
        Ok(Now {
            status: crate::procfs::read_status(inj.tid())?,
            securebits: inj.get_securebits()?,
        })
    }
}

/// Gives the thread `inj` runs in the dumped credentials, with no capability outside
/// `allowed` in any set (permitted, effective, inheritable, ambient): image ∩ allowed. The
/// restore of a requester's images (through stasisd) passes the requester's permitted set, so
/// the CAP_CHECKPOINT_RESTORE its restorer holds is dropped here unless the requester had it;
/// root's own restore passes every capability.
///
/// The thread holds the restorer's credentials: root with every capability, or (a restore
/// as the requester, see `restore::as_user`) the requester's ids and only a few
/// capabilities. The calls that need privilege even when they change nothing (bounding set,
/// groups, securebits) are made only when they change something, so a restore without
/// CAP_SETPCAP, CAP_SETUID and CAP_SETGID works as long as the images ask for nothing those
/// would be needed for (the kernel refuses the rest: EPERM).
///
/// `now` is what the thread has before ([`Now::of`]): the threads of a process being
/// rebuilt all have the leader's (they were cloned from it), so it is read once.
#[tracing::instrument(name = "creds", level = "debug", skip_all, fields(tid = inj.tid()))]
pub fn restore(inj: &mut Injector, c: &Creds, allowed: u64, now: &Now) -> Result<(), Error> {
    let Now {
        status: now,
        securebits,
    } = now;
    let permitted = c.cap_permitted & allowed;
    let effective = c.cap_effective & permitted;
    let inheritable = c.cap_inheritable & allowed;
    let ambient = c.cap_ambient & permitted & inheritable;
    // Leaving uid 0 clears the permitted set unless keep-caps is on; the dumped securebits
    // are set at the end.
    let leaves_root = now.uids[..3].contains(&0) && c.uids[..3].iter().all(|&u| u != 0);
    // The securebits the thread has once its ids are set (nothing below changes them but
    // the keep-caps set for leaving root): known before, so that every call below, which
    // only sets something, can run in one batch (see `Injector::batched`).
    let bits_now = if leaves_root {
        c.securebits | SECBIT_KEEP_CAPS
    } else {
        *securebits
    };
    // The bounding set can only shrink (PR_CAPBSET_DROP needs CAP_SETPCAP): bits already
    // absent are left alone.
    for cap in 0..=last_cap().min(63) {
        if c.cap_bounding & (1 << cap) == 0 && now.cap_bnd & (1 << cap) != 0 {
            inj.capbset_drop(cap as u32)?;
        }
    }
    let mut groups = c.groups.clone();
    let mut now_groups = now.groups.clone();
    groups.sort_unstable();
    now_groups.sort_unstable();
    if groups != now_groups {
        inj.setgroups(&c.groups)?;
    }
    if leaves_root {
        inj.set_securebits(c.securebits | SECBIT_KEEP_CAPS)?;
    }
    // Setting ids to values the thread already has needs no privilege: always made.
    let [rg, eg, sg, fg] = c.gids;
    inj.setresgid([rg, eg, sg])?;
    inj.setfsgid(fg)?;
    let [ru, eu, su, fu] = c.uids;
    inj.setresuid([ru, eu, su])?;
    inj.setfsuid(fu)?;
    // capset v3: capabilities 0-31, then 32-63. Lowering needs no privilege.
    let half = |i: u32| CapUserData {
        effective: (effective >> (32 * i)) as u32,
        permitted: (permitted >> (32 * i)) as u32,
        inheritable: (inheritable >> (32 * i)) as u32,
    };
    let header = CapUserHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    inj.capset(&header, &[half(0), half(1)])?;
    for cap in 0..=63u32 {
        if ambient & (1 << cap) != 0 {
            inj.cap_ambient_raise(cap)?;
        }
    }
    // Securebits other than keep-caps need CAP_SETPCAP: set only when they change.
    if (bits_now ^ c.securebits) & !SECBIT_KEEP_CAPS != 0 {
        inj.set_securebits(c.securebits | (bits_now & SECBIT_KEEP_CAPS))?;
    }
    if (bits_now ^ c.securebits) & SECBIT_KEEP_CAPS != 0 {
        inj.set_keepcaps(c.securebits & SECBIT_KEEP_CAPS != 0)?;
    }
    if c.no_new_privs && !now.no_new_privs {
        inj.set_no_new_privs()?;
    }
    Ok(())
}
