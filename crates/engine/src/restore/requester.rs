//! Restore on behalf of a user other than root (through stasisd): who asks, and the checks
//! that refuse images describing a process with more privilege than the requester.

use crate::Error;
use stasis_image::ProcessImage;

/// The user a restore runs for, as the kernel reported it.
#[derive(Debug, Clone)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The requester's permitted capabilities: the restored process gets none beyond them.
    pub cap_permitted: u64,
    /// The requester's hard resource limits, by resource number.
    pub hard_limits: Vec<(u32, u64)>,
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
        if let Some((_, hard)) = r.hard_limits.iter().find(|(res, _)| *res == l.resource) {
            if l.hard > *hard {
                return refuse(format!(
                    "resource limit {} of {}, above the requester's {hard}",
                    l.resource, l.hard
                ));
            }
        }
    }
    Ok(())
}
