//! Restore on behalf of a user other than root (through stasisd): who asks, and the checks
//! that refuse images describing a process with more privilege than the requester.
//!
//! These checks are defence in depth: the restore for a requester runs in a process that
//! has become the requester (`restore::as_user`), so the kernel itself refuses ids, groups,
//! capabilities and limits beyond the requester's; the checks give a clear message first.

use crate::Error;
use stasis_image::{ProcessImage, Rlimit};

/// The user a restore runs for, as the kernel reported it.
#[derive(Debug, Clone)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The requester's permitted capabilities: the restored process gets none beyond them
    /// (the credentials step intersects the image's sets with it).
    pub cap_permitted: u64,
    /// The requester's resource limits: no hard limit of the images may exceed them, and a
    /// resource the images do not list gets the requester's limits.
    pub rlimits: Vec<Rlimit>,
}

/// Refuses images whose process would have more privilege than the requester.
pub(crate) fn check_requester(image: &ProcessImage, r: &Requester) -> Result<(), Error> {
    let refuse = |why: String| Err(Error::Refused(format!("the images describe {why}")));
    let c = &image.creds;
    if c.uids.iter().any(|&u| u != r.uid) || c.gids.iter().any(|&g| g != r.gid) {
        return refuse(format!(
            "a process with uids {:?} and gids {:?}, not those of uid {} gid {}",
            c.uids, c.gids, r.uid, r.gid
        ));
    }
    if let Some(g) = c.groups.iter().find(|g| !r.groups.contains(g)) {
        return refuse(format!(
            "a process in group {g}, which uid {} is not in",
            r.uid
        ));
    }
    let caps = c.cap_permitted | c.cap_effective | c.cap_inheritable | c.cap_ambient;
    if caps & !r.cap_permitted != 0 {
        return refuse(format!(
            "a process with capabilities {caps:#x} beyond the requester's {:#x}",
            r.cap_permitted
        ));
    }
    if image.task.root != "/" {
        return refuse(format!("a process with root directory {}", image.task.root));
    }
    for l in &image.task.rlimits {
        if let Some(mine) = r.rlimits.iter().find(|m| m.resource == l.resource) {
            if l.hard > mine.hard {
                return refuse(format!(
                    "resource limit {} of {}, above the requester's {}",
                    l.resource, l.hard, mine.hard
                ));
            }
        }
    }
    Ok(())
}
