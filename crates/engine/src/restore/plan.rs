//! Restore phase 2: plan. Everything the tree needs is opened here, in the restorer, before
//! the first fork: one description per id for the whole tree (so descriptions shared between
//! processes stay shared), every mapped file and executable, the error pipe and one sync pipe
//! per process; and every per-process choice the later phases act on (which process joins
//! its group late, which closes the restore descriptors) is made once, in one
//! `PlannedProcess` per process.
//!
//! Descriptor numbers: the restore children find the auxiliary descriptors (mapped files,
//! executables, the error pipe) at `base + i`; `base` is above every descriptor the restorer
//! holds and every fd number of the images, and the descriptions are parked at `park_from`
//! and above while a child lays out its fd table.

use super::load::Loaded;
use super::RestoreOptions;
use crate::files::{self, memfd};
use crate::{pages, procfs, Error};
use stasis_image::{ProcessImage, VmaKind};
use stasis_sys::{process, Pid};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// One process of the tree as the restore will create it.
pub(crate) struct PlannedProcess<'a> {
    pub image: &'a ProcessImage,
    pub pages: &'a crate::chain::ChainPages,
    /// Mapping index -> index in [`Plan::aux`] of the file it maps (files and memfds).
    pub map_aux: HashMap<usize, usize>,
    /// Index in [`Plan::aux`] of its executable.
    pub exe_aux: usize,
    /// The process waits on this pipe until the restorer has seized it: (read, write).
    pub sync: (OwnedFd, OwnedFd),
    /// It joins a process group that does not exist yet when it is forked (the restorer
    /// makes it join during the rebuild, once the whole tree exists).
    pub set_pgid: bool,
    /// It is the last process rebuilt of those sharing its fd table, and closes the restore
    /// descriptors in it.
    pub close_aux: bool,
}

/// What every restore child needs, inherited across the forks that build the tree.
pub(crate) struct Plan<'a> {
    pub loaded: &'a Loaded,
    /// One per process, in the order of the images (parents before children).
    pub processes: Vec<PlannedProcess<'a>>,
    /// Descriptors the children keep at `base + i`: mapped files, executables, the error pipe.
    pub aux: Vec<OwnedFd>,
    /// How many entries `aux` has (it is emptied in the restorer once the root is forked).
    pub aux_count: usize,
    /// Index in `aux` of the write end of the error pipe.
    pub err_index: usize,
    /// The descriptions of the whole tree by id, opened here.
    pub descriptions: files::OpenedFiles,
    pub base: RawFd,
    pub park_from: RawFd,
    pub new_session: bool,
    /// The root is forked as a sibling of the restorer (see [`RestoreOptions::root_as_sibling`]).
    pub root_as_sibling: bool,
    /// The root's dumped parent-death signal is restored (see
    /// [`RestoreOptions::root_pdeathsig`]).
    pub root_pdeathsig: bool,
    /// No restored thread ends up with a capability outside this set: the requester's
    /// permitted set, or every capability for root's own restore.
    pub allowed_caps: u64,
    /// Limits of the resources an image does not list: the requester's (none for root).
    pub default_rlimits: Vec<stasis_image::Rlimit>,
    /// A restore for a requester: its nice value and OOM score adjustment (which the restorer
    /// took) are floors the restored processes do not go below (the kernel would refuse it).
    pub confined: bool,
    /// Where each shared anonymous memory object is first mapped.
    pub shmem: pages::ShmemOwners,
    /// The terminal a shell job is attached to (see "Terminals" in
    /// [`crate::restore`](mod@crate::restore)), when the images have a terminal outside the
    /// tree.
    pub shell_job: Option<ShellJob>,
    /// Private anonymous memory is served lazily (see [`RestoreOptions::lazy`]).
    pub lazy: bool,
    /// Memory shared copy-on-write between parents and children: which mappings each process
    /// prepares before it forks its children, and where they are staged
    /// ([`pages::cow`]).
    pub cow: pages::cow::CowPlan,
}

/// The terminal of a shell job.
pub(crate) struct ShellJob {
    /// The restorer's descriptor of it (the children inherit it across their forks).
    pub fd: OwnedFd,
    /// It is the restorer's controlling terminal: the root joins the restorer's session.
    /// Otherwise the root makes it its own controlling terminal in a new session.
    pub our_ctty: bool,
}

/// The shell job of a restore whose images have a terminal outside the tree; an error that
/// says what to do when the restore has no terminal to attach them to.
fn shell_job(opts: &RestoreOptions, loaded: &Loaded) -> Result<Option<ShellJob>, Error> {
    let Some((pid, fd, path)) = files::tty::needs_terminal(loaded.processes.iter().map(|(p, _)| p))
    else {
        return Ok(None);
    };
    let Some(terminal) = &opts.terminal else {
        let what = if opts.requester.is_some() {
            "a restore as a user (through stasisd, or root's restore of a user's \
             unauthenticated images) runs in a session of its own, away from the user's \
             terminal, and attaches the job only to a terminal the requester passes as a \
             descriptor: run `stasis restore -D DIR` in a shell (without --detach: it gives \
             the job a terminal of its own and relays it to yours), or give one with --tty \
             PATH; in a program, `stasis_client::restore_on_terminal` or `stasis_restore_tty()` \
             in C; the job then gets a session of its own with that terminal. Or, as root, \
             restore the images in a shell (`sudo stasis restore -D DIR`; images a user wrote \
             without stasisd need --trust-images)"
        } else {
            "restore it from a terminal (run `stasis restore` in a shell: the job comes back \
             in it, in the foreground), or give one with --tty PATH"
        };
        return Err(Error::Unsupported {
            what: format!(
                "fd {fd} of pid {pid} is {path}, {}; {what}",
                files::tty::OUTSIDE_TERMINAL
            ),
        });
    };
    let fd = terminal
        .try_clone()
        .map_err(|e| Error::io("dup of the terminal", e))?;
    let ours = process::getsid(0).ok();
    let our_ctty = stasis_sys::tty::session_of(fd.as_fd()).ok() == ours;
    Ok(Some(ShellJob { fd, our_ctty }))
}

impl<'a> Plan<'a> {
    /// Opens everything the tree needs and plans each process. Returns the plan and the read
    /// end of the error pipe (which the restorer keeps; the children write failures into it).
    pub fn make(opts: &RestoreOptions, loaded: &'a Loaded) -> Result<(Plan<'a>, OwnedFd), Error> {
        let shell_job = shell_job(opts, loaded)?;
        let mut ctx = files::OpenContext::new(&opts.images, opts.replaced_files);
        ctx.terminal = shell_job.as_ref().map(|j| j.fd.as_raw_fd());
        crate::fault::point("opening the files")?;
        let descriptions = files::open_all(&mut ctx, loaded.processes.iter().map(|(p, _)| p))?;
        let mut aux: Vec<OwnedFd> = Vec::new();
        let mut processes = Vec::with_capacity(loaded.processes.len());
        let closers = restore_fd_closers(loaded);
        for (i, (image, pages)) in loaded.processes.iter().enumerate() {
            let mut map_aux = HashMap::new();
            // A file is opened once for all the mappings of it (a library has four or five).
            let mut opened: HashMap<(&str, bool, u64, u64), usize> = HashMap::new();
            for (v, vma) in image.vmas.iter().enumerate() {
                if let VmaKind::File { path, dev, ino, .. } = &vma.kind {
                    let writable = vma.shared && vma.prot & libc::PROT_WRITE as u32 != 0;
                    let key = (path.as_str(), writable, *dev, *ino);
                    let at = match opened.get(&key) {
                        Some(&at) => at,
                        None => {
                            aux.push(open_mapped_file(path, writable, *dev, *ino, &mut ctx)?);
                            opened.insert(key, aux.len() - 1);
                            aux.len() - 1
                        }
                    };
                    map_aux.insert(v, at);
                }
                if let VmaKind::Memfd { memfd_id } = &vma.kind {
                    map_aux.insert(v, aux.len());
                    aux.push(memfd::open_for_mapping(
                        &descriptions,
                        *memfd_id,
                        vma.shared,
                    )?);
                }
                if let VmaKind::Deleted { dev, ino } = &vma.kind {
                    map_aux.insert(v, aux.len());
                    aux.push(files::deleted::open_for_mapping(&descriptions, *dev, *ino)?);
                }
            }
            let exe_aux = aux.len();
            if image.task.exe_memfd != 0 {
                // A program run from a memfd: its exe link is the recreated memfd.
                aux.push(memfd::open_for_mapping(
                    &descriptions,
                    image.task.exe_memfd,
                    false,
                )?);
            } else {
                let exe = File::open(&image.task.exe_path).map_err(|e| {
                    Error::io(format!("open executable {}", image.task.exe_path), e)
                })?;
                aux.push(exe.into());
            }
            processes.push(PlannedProcess {
                image,
                pages,
                map_aux,
                exe_aux,
                sync: process::pipe().map_err(|e| Error::io("pipe", e))?,
                set_pgid: joins_group_late(loaded, i),
                close_aux: closers[i],
            });
        }
        let (err_read, err_write) = process::pipe().map_err(|e| Error::io("pipe", e))?;
        let err_index = aux.len();
        aux.push(err_write);
        let own_max = procfs::list_fds(process::getpid())?
            .into_iter()
            .max()
            .unwrap_or(0);
        let image_max = loaded
            .processes
            .iter()
            .flat_map(|(p, _)| p.fds.iter().map(|f| f.fd))
            .max()
            .unwrap_or(0);
        let base = own_max.max(image_max) + 1;
        let park_from = base + aux.len() as RawFd;
        // The restore children start as copies of this process: its mappings are taken.
        let own_maps: Vec<(u64, u64)> = procfs::read_maps(process::getpid())?
            .into_iter()
            .map(|m| (m.start, m.end))
            .collect();
        let images: Vec<&ProcessImage> = loaded.processes.iter().map(|(p, _)| p).collect();
        let cow = pages::cow::CowPlan::make(&images, &own_maps)?;
        let shmem = pages::layout::shmem_owners(
            loaded
                .processes
                .iter()
                .map(|(image, _)| (image.pid, &image.vmas[..])),
        );
        let plan = Plan {
            loaded,
            processes,
            aux_count: aux.len(),
            aux,
            err_index,
            descriptions,
            base,
            park_from,
            new_session: opts.new_session,
            root_as_sibling: opts.root_as_sibling,
            root_pdeathsig: opts.root_pdeathsig,
            allowed_caps: opts
                .requester
                .as_ref()
                .map_or(u64::MAX, |r| r.cap_permitted),
            default_rlimits: opts
                .requester
                .as_ref()
                .map_or_else(Vec::new, |r| r.rlimits.clone()),
            confined: opts.requester.is_some(),
            shmem,
            shell_job,
            lazy: opts.lazy,
            cow,
        };
        Ok((plan, err_read))
    }

    /// The descriptions by id as raw numbers (a forked child inherits them at these numbers).
    pub fn by_id(&self) -> HashMap<u32, RawFd> {
        self.descriptions.raw_fds()
    }
}

/// Opens a mapped file for its mapping, refusing a file that was replaced since the dump
/// unless `ctx` accepts replaced files.
fn open_mapped_file(
    path: &str,
    writable: bool,
    dev: u64,
    ino: u64,
    ctx: &mut files::OpenContext<'_>,
) -> Result<OwnedFd, Error> {
    crate::fault::point("opening a mapped file")?;
    // O_NOATIME where the restorer may (it owns the file, or root): mmap(2) counts as an
    // access, and the restore must not change the times of files the process did not touch.
    let open = |more: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(more)
            .open(path)
    };
    let f = match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
    .map_err(|e| Error::io(format!("open mapped file {path}"), e))?;
    ctx.check_opened(path, f, dev, ino, None, "the file that was mapped")
}

/// Whether process `i` joins a process group that does not exist yet when it is forked: a
/// group that is neither its own nor its parent's (the root always takes its group itself).
fn joins_group_late(loaded: &Loaded, i: usize) -> bool {
    let image = &loaded.processes[i].0;
    let parent_pgid = loaded
        .processes
        .iter()
        .find(|(p, _)| p.pid == image.ppid)
        .map(|(p, _)| p.pgid);
    i != 0 && image.pgid != image.pid && Some(image.pgid) != parent_pgid
}

/// For each process, whether it is the last one rebuilt of those sharing its fd table (which
/// hold the restore descriptors in that one table): it closes them.
fn restore_fd_closers(loaded: &Loaded) -> Vec<bool> {
    let shares: HashMap<Pid, Pid> = loaded
        .processes
        .iter()
        .map(|(p, _)| (p.pid, p.shares_fd_table_with))
        .collect();
    // The table's owner: the first of a chain of sharers (a sharer's child may share it too).
    let owner = |mut pid: Pid| {
        for _ in 0..shares.len() {
            match shares.get(&pid) {
                Some(&next) if next != 0 && shares.contains_key(&next) => pid = next,
                _ => break,
            }
        }
        pid
    };
    let owners: Vec<Pid> = loaded.processes.iter().map(|(p, _)| owner(p.pid)).collect();
    let mut last: HashMap<Pid, usize> = HashMap::new();
    for (i, o) in owners.iter().enumerate() {
        last.insert(*o, i);
    }
    owners
        .iter()
        .enumerate()
        .map(|(i, o)| last[o] == i)
        .collect()
}
