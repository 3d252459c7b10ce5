//! Credentials: real/effective/saved/filesystem uids and gids, supplementary groups,
//! capability sets (inheritable, permitted, effective, bounding, ambient), securebits and
//! no_new_privs.
//!
//! Dump: /proc/PID/status plus PR_GET_SECUREBITS inside the target. Restore: the very last
//! step inside the new process, because everything before it needs root: the bounding set is
//! reduced, groups and ids are set with capabilities kept across the uid change, then the
//! capability sets, ambient capabilities, securebits and no_new_privs.

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

/// Highest capability number this kernel knows.
fn last_cap() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Gives the thread `inj` runs in the dumped credentials. The thread must still be root
/// with all capabilities (the restorer's own).
#[tracing::instrument(name = "creds", level = "debug", skip_all, fields(tid = inj.tid()))]
pub fn restore(inj: &mut Injector, c: &Creds) -> Result<(), Error> {
    for cap in 0..=last_cap().min(63) {
        if c.cap_bounding & (1 << cap) == 0 {
            inj.capbset_drop(cap as u32)?;
        }
    }
    inj.setgroups(&c.groups)?;
    // Keep the permitted set across the uid change; the dumped securebits are set at the end.
    inj.set_securebits(c.securebits | SECBIT_KEEP_CAPS)?;
    let [rg, eg, sg, fg] = c.gids;
    inj.setresgid([rg, eg, sg])?;
    inj.setfsgid(fg)?;
    let [ru, eu, su, fu] = c.uids;
    inj.setresuid([ru, eu, su])?;
    inj.setfsuid(fu)?;
    // capset v3: capabilities 0-31, then 32-63.
    let half = |i: u32| CapUserData {
        effective: (c.cap_effective >> (32 * i)) as u32,
        permitted: (c.cap_permitted >> (32 * i)) as u32,
        inheritable: (c.cap_inheritable >> (32 * i)) as u32,
    };
    let header = CapUserHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    inj.capset(&header, &[half(0), half(1)])?;
    for cap in 0..=63u32 {
        if c.cap_ambient & (1 << cap) != 0 {
            inj.cap_ambient_raise(cap)?;
        }
    }
    if c.securebits & SECBIT_KEEP_CAPS == 0 {
        inj.set_keepcaps(false)?;
    }
    if c.no_new_privs {
        inj.set_no_new_privs()?;
    }
    Ok(())
}
