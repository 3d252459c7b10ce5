//! Restore phase 1: authenticate, load and validate. The images are authenticated first when
//! a key is given ([`authenticate`]: from then on every byte read from them is checked against
//! `auth.img` as it is read); then every record of the image directory is decoded and checked
//! (bounds, CRCs, semantics), and so is the shape of the tree (parents before children,
//! sessions, shared tables, zombies), before anything is created.

use crate::chain::{ChainAuth, ChainPages};
use crate::Error;
use stasis_image::{
    names, read_record, validate_process_in_chain, ImageDir, ImageError, ImageKey, Inventory,
    ProcessImage, RecordKind,
};
use stasis_sys::Pid;
use std::path::Path;

/// Authenticates `dir` with `key` ([`ImageDir::authenticate`]): when the images carry
/// `auth.img` and it verifies, every later read of `dir` (records, pages, blobs) is checked
/// against it as it is read, so that images changed after the dump fail the restore, naming
/// the file. Returns whether the images are authenticated. With `required`, images without
/// `auth.img` (or no key to check them with) are refused, as not authenticated.
pub fn authenticate(dir: &ImageDir, key: Option<&ImageKey>, required: bool) -> Result<bool, Error> {
    let authenticated = match key {
        Some(k) => dir.authenticate(k)?,
        None => false,
    };
    tracing::debug!(authenticated, required, "image authentication");
    if required && !authenticated {
        let reason = if key.is_none() {
            "authentication is required, but no image key was given to check it with"
        } else {
            "missing: these images were written without the image key (by `stasis dump \
             --no-auth`, by an older stasis, or copied without auth.img), and only images \
             stasisd or root's `stasis dump` wrote and nobody changed can be restored this way"
        };
        return Err(Error::Image(ImageError::NotAuthenticated {
            path: dir.path_of(names::AUTH),
            reason: reason.into(),
        }));
    }
    Ok(authenticated)
}

/// Checks, with `key`, that the images in `dir` are authenticated and unchanged: `auth.img`
/// verifies, every file it lists is there with its length and MAC (one read of every byte),
/// and no other image file is in the directory. `Ok(false)`: no `auth.img` (images written
/// without the key); an error names the first file that does not verify. `dir` itself is not
/// changed (a duplicate handle is authenticated).
///
/// This proves what the files held while it ran: their owner can change them afterwards. A
/// restore must not rely on it; pass the key in [`super::RestoreOptions::auth`] (with
/// `require_authenticated`), and the restore checks every byte it uses as it reads it.
pub fn verify_images(dir: &ImageDir, key: &ImageKey) -> Result<bool, Error> {
    let dir = dir.try_clone()?;
    if !dir.authenticate(key)? {
        return Ok(false);
    }
    stasis_image::auth::verify_all(&dir)?;
    Ok(true)
}

/// Whether the images in `dir` are authenticated with `key` and unchanged
/// ([`verify_images`] is `Ok(true)`): written by stasisd or root's `stasis dump` with this key,
/// and not changed since, at the time of the call (see [`verify_images`]).
pub fn images_authenticated(dir: &ImageDir, key: &ImageKey) -> bool {
    matches!(verify_images(dir, key), Ok(true))
}

/// A loaded, checked image directory: every process (parents before children) with its pages
/// (in the chain of incremental dumps the directory ends, see [`crate::chain`]).
pub struct Loaded {
    pub inventory: Inventory,
    pub processes: Vec<(ProcessImage, ChainPages)>,
    /// How many ancestors the dump has (0: not an incremental dump).
    pub depth: usize,
}

/// Loads and checks every record of an image directory, and the shape of the tree; the
/// ancestors of an incremental dump are opened without authentication (see [`load_chain`]).
pub fn load(dir: &ImageDir) -> Result<Loaded, Error> {
    load_chain(dir, ChainAuth::default())
}

/// [`load`], each ancestor of an incremental dump authenticated as `auth` says (as the
/// dump itself was, by [`authenticate`]).
pub fn load_chain(dir: &ImageDir, auth: ChainAuth<'_>) -> Result<Loaded, Error> {
    crate::fault::point("reading the inventory")?;
    let inventory: Inventory = read_record(dir, names::INVENTORY, RecordKind::Inventory)?;
    let ancestors = crate::chain::open_ancestors(dir, &inventory, auth)?;
    let bad = |why: String| {
        Err(Error::Invalid(format!(
            "{}: {why}",
            dir.path_of(names::INVENTORY).display()
        )))
    };
    if inventory.processes.first() != Some(&inventory.root_pid)
        || inventory.processes.len() > 1 << 16
        || inventory.zombies.len() > 1 << 16
    {
        return bad("the process list does not start with the root".into());
    }
    let mut seen = std::collections::HashSet::new();
    let mut processes = Vec::with_capacity(inventory.processes.len());
    for &pid in &inventory.processes {
        if pid <= 0 || !seen.insert(pid) {
            return bad(format!("pid {pid} is invalid or listed twice"));
        }
        crate::fault::point("reading a process record")?;
        let image: ProcessImage = read_record(dir, &names::process(pid), RecordKind::Process)?;
        crate::fault::point("opening a pages file")?;
        let pages = ChainPages::open(dir, &ancestors, pid, &image.page_runs)?;
        validate_process_in_chain(
            &image,
            &pages.lens(),
            &dir.path_of(&names::process(pid)),
            &crate::files::KindChecks,
        )?;
        if image.pid != pid {
            return bad(format!(
                "{} describes pid {}",
                names::process(pid),
                image.pid
            ));
        }
        for t in &image.threads {
            if t.tid != pid && !seen.insert(t.tid) {
                return bad(format!("thread id {} is used twice", t.tid));
            }
        }
        processes.push((image, pages));
    }
    // Parents come before their children, children share their parent's session unless they
    // lead their own.
    for (i, (p, _)) in processes.iter().enumerate().skip(1) {
        let Some(parent) = processes[..i]
            .iter()
            .map(|(q, _)| q)
            .find(|q| q.pid == p.ppid)
        else {
            return bad(format!(
                "the parent {} of pid {} is not restored before it",
                p.ppid, p.pid
            ));
        };
        if p.sid != p.pid && p.sid != parent.sid {
            return Err(Error::Unsupported {
                what: format!(
                    "pid {} is in session {}, which is neither its own nor its parent's",
                    p.pid, p.sid
                ),
            });
        }
    }
    // A process sharing its parent's fd table has the same fds.
    for (p, _) in &processes {
        if p.shares_fd_table_with != 0 {
            let parent = processes
                .iter()
                .map(|(q, _)| q)
                .find(|q| q.pid == p.shares_fd_table_with);
            let same = parent.is_some_and(|q| q.pid == p.ppid && q.fds == p.fds);
            if !same {
                return bad(format!(
                    "pid {} shares an fd table it cannot be restored with",
                    p.pid
                ));
            }
        }
        if p.shares_fs_with != 0 && p.shares_fs_with != p.ppid {
            return bad(format!(
                "pid {} shares fs state with a process that is not its parent",
                p.pid
            ));
        }
    }
    for z in &inventory.zombies {
        if z.pid <= 0 || !seen.insert(z.pid) || !processes.iter().any(|(p, _)| p.pid == z.ppid) {
            return bad(format!(
                "zombie {} is invalid or its parent is not in the tree",
                z.pid
            ));
        }
    }
    Ok(Loaded {
        inventory,
        processes,
        depth: ancestors.len(),
    })
}

/// Refuses the restore when a pid the tree needs (a process, thread or zombie) is taken,
/// saying by what (see [`pid_holder`]).
pub(crate) fn check_pids_free(loaded: &Loaded) -> Result<(), Error> {
    let all_pids = loaded
        .processes
        .iter()
        .flat_map(|(p, _)| p.threads.iter().map(|t| (t.tid, Some(t.comm.as_str()))))
        .chain(loaded.inventory.zombies.iter().map(|z| (z.pid, None)));
    for (pid, comm) in all_pids {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::PidInUse {
                pid,
                holder: pid_holder(pid, comm),
            });
        }
    }
    Ok(())
}

/// What holds `pid`, for "pid N is in use by ...", from /proc/N/stat: a zombie (the dumped
/// process itself, killed by the dump and not yet reaped, when it has the name `dumped_comm`
/// the process with that pid had) and the parent that has not reaped it, or another process.
pub(crate) fn pid_holder(pid: Pid, dumped_comm: Option<&str>) -> String {
    match crate::procfs::read_stat(pid) {
        Ok(st) => describe_holder(&st, dumped_comm),
        Err(_) if stasis_sys::process::id_being_released(pid) => {
            "no process: the kernel has not released it yet (a process that ended just before)"
                .to_string()
        }
        Err(_) => "another process".to_string(),
    }
}

/// [`pid_holder`] for the /proc/N/stat of the holder.
fn describe_holder(st: &crate::procfs::Stat, dumped_comm: Option<&str>) -> String {
    if st.state == 'X' || st.state == 'x' {
        format!("a process that is exiting ({:?})", st.comm)
    } else if st.state == 'Z' {
        let who = if dumped_comm == Some(st.comm.as_str()) {
            "the dumped process itself".to_string()
        } else {
            format!("{:?}", st.comm)
        };
        format!("a zombie ({who}, not yet reaped by its parent {})", st.ppid)
    } else {
        format!("another process ({:?})", st.comm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::Stat;

    #[test]
    fn the_holder_of_a_pid_is_described() {
        let zombie = Stat {
            comm: "sleep".into(),
            state: 'Z',
            ppid: 4100,
            ..Stat::default()
        };
        assert_eq!(
            describe_holder(&zombie, Some("sleep")),
            "a zombie (the dumped process itself, not yet reaped by its parent 4100)"
        );
        assert_eq!(
            describe_holder(&zombie, Some("bash")),
            "a zombie (\"sleep\", not yet reaped by its parent 4100)"
        );
        let live = Stat {
            state: 'S',
            ..zombie
        };
        assert_eq!(describe_holder(&live, None), "another process (\"sleep\")");
        // This process is alive.
        let me = stasis_sys::process::getpid();
        assert!(pid_holder(me, None).starts_with("another process"));
    }
}
