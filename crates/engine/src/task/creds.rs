//! Credentials: real/effective/saved/filesystem uids and gids, supplementary groups,
//! capability sets (inheritable, permitted, effective, bounding, ambient), securebits and
//! no_new_privs.
//!
//! Dump: /proc/PID/status plus PR_GET_SECUREBITS inside the target. Restore: the very last
//! step inside the new process, because everything before it needs root: the bounding set is
//! reduced, groups and ids are set with capabilities kept across the uid change, then the
//! capability sets, ambient capabilities, securebits and no_new_privs.

use crate::inject::Injector;
use crate::procfs::Status;
use crate::Error;
use stasis_image::Creds;

const PR_GET_SECUREBITS: u64 = 27;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_KEEPCAPS: u64 = 8;
const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const SECBIT_KEEP_CAPS: u32 = 1 << 4;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

pub fn dump(status: &Status, inj: &mut Injector) -> Result<Creds, Error> {
    let securebits = inj.call(
        "prctl(PR_GET_SECUREBITS)",
        libc::SYS_prctl,
        [PR_GET_SECUREBITS, 0, 0, 0, 0, 0],
    )? as u32;
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

/// Gives the process `inj` runs in the dumped credentials. The process must still be root
/// with all capabilities (the restorer's own).
pub fn restore(inj: &mut Injector, c: &Creds) -> Result<(), Error> {
    for cap in 0..=last_cap().min(63) {
        if c.cap_bounding & (1 << cap) == 0 {
            inj.call(
                "prctl(PR_CAPBSET_DROP)",
                libc::SYS_prctl,
                [PR_CAPBSET_DROP, cap, 0, 0, 0, 0],
            )?;
        }
    }
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let at = inj.put(0, &groups)?;
    inj.call(
        "setgroups",
        libc::SYS_setgroups,
        [c.groups.len() as u64, at, 0, 0, 0, 0],
    )?;
    // Keep the permitted set across the uid change; the dumped securebits are set at the end.
    inj.call(
        "prctl(PR_SET_SECUREBITS)",
        libc::SYS_prctl,
        [
            PR_SET_SECUREBITS,
            (c.securebits | SECBIT_KEEP_CAPS) as u64,
            0,
            0,
            0,
            0,
        ],
    )?;
    let [rg, eg, sg, fg] = c.gids.map(u64::from);
    inj.call("setresgid", libc::SYS_setresgid, [rg, eg, sg, 0, 0, 0])?;
    inj.call("setfsgid", libc::SYS_setfsgid, [fg, 0, 0, 0, 0, 0])?;
    let [ru, eu, su, fu] = c.uids.map(u64::from);
    inj.call("setresuid", libc::SYS_setresuid, [ru, eu, su, 0, 0, 0])?;
    inj.call("setfsuid", libc::SYS_setfsuid, [fu, 0, 0, 0, 0, 0])?;
    // capset v3: header { version, pid } then two { effective, permitted, inheritable } halves.
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&LINUX_CAPABILITY_VERSION_3.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for half in 0..2 {
        for set in [c.cap_effective, c.cap_permitted, c.cap_inheritable] {
            b.extend_from_slice(&((set >> (32 * half)) as u32).to_le_bytes());
        }
    }
    let hdr = inj.put(0, &b)?;
    inj.call("capset", libc::SYS_capset, [hdr, hdr + 8, 0, 0, 0, 0])?;
    for cap in 0..=63u64 {
        if c.cap_ambient & (1 << cap) != 0 {
            inj.call(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                libc::SYS_prctl,
                [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
            )?;
        }
    }
    if c.securebits & SECBIT_KEEP_CAPS == 0 {
        inj.call(
            "prctl(PR_SET_KEEPCAPS)",
            libc::SYS_prctl,
            [PR_SET_KEEPCAPS, 0, 0, 0, 0, 0],
        )?;
    }
    if c.no_new_privs {
        inj.call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}
