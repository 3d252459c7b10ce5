//! Dumping a process and its descendants: freeze the tree top-down, collect every resource of
//! every process, write the images, then kill the tree or let it run on.
//!
//! Order matters for the guarantees: everything that can refuse the dump (unsupported fds or
//! mappings, pipes leading out of the tree) is checked for every process before any file is
//! created; the inventory is written last and atomically, so a directory without it is never
//! taken for a complete dump; on any failure the files written so far are removed and every
//! process is thawed with its registers and signal masks as they were.

use crate::inject::{self, Injector};
use crate::task::{attrs, creds, itimers, mm, posix_timers, signals, thread};
use crate::{files, pages, procfs, Error};
use freeze::{Frozen, FrozenTree};

pub mod freeze;
use stasis_image::{
    names, write_record_atomic, ImageDir, Inventory, ProcessImage, RawWriter, RecordKind, VmaKind,
};
use stasis_sys::{process, ptrace, Pid};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

/// A check run on every frozen process before the dump goes on (see [`DumpOptions::admit`]).
pub type Admit = Box<dyn Fn(Pid) -> Result<(), String>>;

/// What to dump and how.
pub struct DumpOptions {
    pub pid: Pid,
    /// A pidfd of the process obtained by the caller (for example from SO_PEERPIDFD): when
    /// given, the dump refuses to go on unless this very process is the one frozen.
    pub pidfd: Option<OwnedFd>,
    /// Where the images go.
    pub images: ImageDir,
    /// Let the process run on after the dump instead of killing it.
    pub leave_running: bool,
    /// Dump the process's descendants too (the whole tree below it).
    pub tree: bool,
    /// Called for every process once the tree is frozen, before anything is read or written:
    /// an error refuses the whole dump (the tree is thawed untouched). stasisd uses it to check
    /// that the caller may dump each process.
    pub admit: Option<Admit>,
    /// The self-dump connection of the process, if any.
    pub service: Option<ServiceConnection>,
}

/// A self-dumping process's connection to stasisd: the socket at `fd` in the target is
/// recorded, and restored as a socket on which `restored_reply` waits to be read.
#[derive(Debug, Clone)]
pub struct ServiceConnection {
    pub fd: i32,
    pub restored_reply: Vec<u8>,
}

/// Figures about a finished dump.
#[derive(Debug, Clone)]
pub struct DumpReport {
    pub pid: Pid,
    /// How many processes were dumped.
    pub processes: usize,
    pub mappings: usize,
    pub page_bytes: u64,
    /// How long the process was frozen.
    pub frozen: std::time::Duration,
}

/// Dumps `opts.pid` into `opts.images`.
pub fn dump(opts: DumpOptions) -> Result<DumpReport, Error> {
    let pid = opts.pid;
    if pid <= 0 {
        return Err(Error::NoSuchProcess { pid });
    }
    if pid == process::getpid() {
        return Err(Error::Invalid("stasis cannot dump itself this way".into()));
    }
    let pidfd = match opts.pidfd {
        Some(fd) => fd,
        None => process::pidfd_open(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoSuchProcess { pid },
            _ => Error::sys("pidfd_open", pid, e),
        })?,
    };
    let status = procfs::read_status(pid).map_err(|_| Error::NoSuchProcess { pid })?;
    if status.tgid != pid {
        return Err(Error::Invalid(format!(
            "{pid} is a thread of process {}, not a process",
            status.tgid
        )));
    }
    if is_our_ancestor(pid) {
        return Err(Error::Invalid(format!(
            "pid {pid} is an ancestor of this stasis process, which cannot dump itself"
        )));
    }
    let dir = &opts.images;
    if dir.exists(names::INVENTORY) {
        return Err(Error::Invalid(format!(
            "{} already holds a complete dump; use an empty directory",
            dir.label().display()
        )));
    }
    dir.check_writable()?;
    let vdso_offset = inject::vdso_syscall_offset()?;

    let frozen_at = Instant::now();
    let mut tree = if opts.tree {
        FrozenTree::freeze(pid)?
    } else {
        FrozenTree {
            processes: vec![Frozen::freeze(pid)?],
            zombies: Vec::new(),
        }
    };
    // The pid was pinned by a pidfd: if that process is gone, the pid may have been reused
    // and what we froze is another process.
    if process::pidfd_send_signal(pidfd.as_fd(), 0).is_err() {
        return Err(Error::NoSuchProcess { pid });
    }
    if let Some(admit) = &opts.admit {
        for p in tree.pids() {
            admit(p).map_err(Error::Refused)?;
        }
    }
    let mut written: Vec<String> = Vec::new();
    let mut frozen_for = None;
    let result = (|| {
        let (mappings, page_bytes) = collect_and_write(
            &tree,
            &pidfd,
            vdso_offset,
            dir,
            opts.service.as_ref(),
            &mut written,
        )?;
        // A process that runs on need not wait for the disk; one that is killed stays frozen
        // until its images are durable, so a failure here still leaves it alive.
        if opts.leave_running {
            tree.thaw()?;
            frozen_for = Some(frozen_at.elapsed());
        }
        for name in &written {
            dir.sync_file(name)?;
        }
        write_inventory(dir, pid, tree.pids(), tree.zombies.clone())?;
        Ok::<_, Error>((mappings, page_bytes))
    })();
    match result {
        Ok((mappings, page_bytes)) => {
            let processes = tree.processes.len();
            if !opts.leave_running {
                tree.kill(vdso_offset)?;
            }
            Ok(DumpReport {
                pid,
                processes,
                mappings,
                page_bytes,
                frozen: frozen_for.unwrap_or_else(|| frozen_at.elapsed()),
            })
        }
        Err(e) => {
            for name in written {
                let _ = dir.remove(&name);
            }
            drop(tree); // detaches (unless already done): the processes run on
            Err(e)
        }
    }
}

/// Whether `pid` is this process or one of its ancestors (freezing it would freeze us).
fn is_our_ancestor(pid: Pid) -> bool {
    let mut p = process::getpid();
    for _ in 0..4096 {
        if p == pid {
            return true;
        }
        match procfs::read_stat(p) {
            Ok(s) if s.ppid > 0 => p = s.ppid,
            _ => return false,
        }
    }
    false
}

/// Writes the inventory: the last file, whose presence marks the dump complete.
fn write_inventory(
    dir: &ImageDir,
    root: Pid,
    processes: Vec<Pid>,
    zombies: Vec<stasis_image::Zombie>,
) -> Result<(), Error> {
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: procfs::kernel_release(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        root_pid: root,
        processes,
        zombies,
    };
    Ok(write_record_atomic(
        dir,
        names::INVENTORY,
        RecordKind::Inventory,
        &inventory,
    )?)
}

/// One process's metadata, collected while the tree is frozen, before anything is written.
struct Collected {
    image: ProcessImage,
    blobs: Vec<(u32, std::fs::File)>,
}

/// Collects every process (all checks first), then writes pages, blobs and records.
fn collect_and_write(
    tree: &FrozenTree,
    root_pidfd: &OwnedFd,
    vdso_offset: u64,
    dir: &ImageDir,
    service: Option<&ServiceConnection>,
    written: &mut Vec<String>,
) -> Result<(usize, u64), Error> {
    let shared = shared_tables(tree)?;
    let mut registry = files::FileRegistry::default();
    let mut collected = Vec::with_capacity(tree.processes.len());
    for (i, frozen) in tree.processes.iter().enumerate() {
        // The service connection belongs to the root (the self-dumping process).
        let svc = if i == 0 { service } else { None };
        let own_pidfd;
        let pidfd = if i == 0 {
            root_pidfd
        } else {
            own_pidfd = process::pidfd_open(frozen.pid)
                .map_err(|e| Error::sys("pidfd_open", frozen.pid, e))?;
            &own_pidfd
        };
        let mut c = collect(frozen, pidfd, vdso_offset, svc, &mut registry)?;
        (c.image.shares_fd_table_with, c.image.shares_fs_with) =
            shared.get(&frozen.pid).copied().unwrap_or((0, 0));
        collected.push(c);
    }
    // Objects that span processes (pipes) are complete only once every process is seen.
    registry.finish(collected.iter_mut().map(|c| &mut c.image.files))?;
    let mut blobs_done = std::collections::HashSet::new();
    let mut shmem_done = std::collections::HashSet::new();
    let (mut mappings, mut page_bytes) = (0, 0);
    for mut c in collected {
        let pid = c.image.pid;
        let pages_name = names::pages(pid);
        let mut pages = RawWriter::create(dir, &pages_name, RecordKind::Pages)?;
        written.push(pages_name);
        c.image.page_runs = pages::dump_pages(pid, &c.image.vmas, &mut pages, &mut shmem_done)?;
        page_bytes += pages.finish()?;
        c.blobs.retain(|(id, _)| blobs_done.insert(*id));
        written.extend(files::write_blobs(dir, &c.blobs, &c.image.files)?);
        mappings += c.image.vmas.len();
        let process_name = names::process(pid);
        write_record_atomic(dir, &process_name, RecordKind::Process, &c.image)?;
        written.push(process_name);
    }
    Ok((mappings, page_bytes))
}

/// What a process shares with its parent: (fd table, fs state), as the parent's pid or 0.
type SharedWithParent = std::collections::HashMap<Pid, (Pid, Pid)>;

/// Sharing between the processes of the tree (clone without CLONE_THREAD). An fd table or fs
/// state shared with the parent is recorded and restored; anything else (a shared address
/// space or signal handlers, sharing between siblings only, a sharer with children of its own)
/// would come back as separate copies, and is refused by name.
fn shared_tables(tree: &FrozenTree) -> Result<SharedWithParent, Error> {
    use stasis_sys::process::Shared;
    let shares =
        |a: Pid, b: Pid, what| process::shares(a, b, what).map_err(|e| Error::sys("kcmp", b, e));
    let refuse = |what: String| Err(Error::Unsupported { what });
    let mut out = SharedWithParent::new();
    // Sharing comes from clone: compare each process with its parent and its previous
    // sibling (linear in the size of the tree).
    let mut last_child: std::collections::HashMap<Pid, Pid> = std::collections::HashMap::new();
    let mut ppids = std::collections::HashMap::new();
    for p in tree.processes.iter().skip(1) {
        let (b, a) = (p.pid, procfs::read_stat(p.pid)?.ppid);
        ppids.insert(b, a);
        if shares(a, b, Shared::Memory)? {
            return refuse(format!(
                "pid {b} shares its address space with pid {a} (CLONE_VM, a vfork child?)"
            ));
        }
        if shares(a, b, Shared::SignalHandlers)? {
            return refuse(format!(
                "pid {b} shares its signal handlers with pid {a} (CLONE_SIGHAND)"
            ));
        }
        let files = if shares(a, b, Shared::Files)? { a } else { 0 };
        let fs = if shares(a, b, Shared::Fs)? { a } else { 0 };
        out.insert(b, (files, fs));
        if let Some(prev) = last_child.insert(a, b) {
            let (pf, pfs) = out.get(&prev).copied().unwrap_or((0, 0));
            if (files == 0 || pf == 0) && shares(prev, b, Shared::Files)? {
                return refuse(format!("pid {b} shares its fd table (CLONE_FILES) with pid {prev}, not with their parent"));
            }
            if (fs == 0 || pfs == 0) && shares(prev, b, Shared::Fs)? {
                return refuse(format!("pid {b} shares its cwd/root/umask (CLONE_FS) with pid {prev}, not with their parent"));
            }
        }
    }
    for (&child, &parent) in &ppids {
        if let Some((files, _)) = out.get(&parent) {
            if *files != 0 {
                return refuse(format!(
                    "pid {parent} shares its parent's fd table (CLONE_FILES) and has a child ({child}) of its own"
                ));
            }
        }
    }
    Ok(out)
}

/// Collects one frozen process: everything but its page contents.
fn collect(
    frozen: &Frozen,
    pidfd: &OwnedFd,
    vdso_offset: u64,
    service: Option<&ServiceConnection>,
    registry: &mut files::FileRegistry,
) -> Result<Collected, Error> {
    let pid = frozen.pid;
    let stat = procfs::read_stat(pid)?;
    let status = procfs::read_status(pid)?;
    if status.seccomp == 2 {
        return Err(Error::Unsupported {
            what: format!("pid {pid} uses seccomp filters"),
        });
    }
    // Everything that can refuse the dump comes before any file is created.
    let vmas = pages::collect_vmas(pid)?;
    let dumped_files = files::dump(pid, pidfd, service, registry)?;
    let vdso = vmas
        .iter()
        .find(|v| v.kind == VmaKind::Vdso)
        .ok_or_else(|| Error::Unsupported {
            what: format!("pid {pid} has no [vdso] mapping"),
        })?;

    // State that the process itself must be asked for, with all signals blocked meanwhile.
    let syscall_ip = vdso.start + vdso_offset;
    let leader = frozen.threads[0];
    let mask =
        ptrace::get_sigmask(leader).map_err(|e| Error::sys("PTRACE_GETSIGMASK", leader, e))?;
    let mut inj = Injector::new(leader, syscall_ip)?;
    ptrace::set_sigmask(leader, u64::MAX)
        .map_err(|e| Error::sys("PTRACE_SETSIGMASK", leader, e))?;
    let mut timers_posix = Vec::new();
    let asked = (|| {
        let scratch = inj.map_scratch(None)?;
        let mm = mm::dump(pid, &stat, &mut inj)?;
        let mut t = thread::dump(pid, leader, &mut inj)?;
        t.sigmask = mask;
        let mut threads = vec![t];
        for &tid in &frozen.threads[1..] {
            threads.push(dump_other_thread(pid, tid, syscall_ip, scratch)?);
        }
        let sigs = signals::dump(pid, &mut inj)?;
        let itimers = itimers::dump(&mut inj)?;
        timers_posix = posix_timers::dump(pid, &mut inj)?;
        let creds = creds::dump(&status, &mut inj)?;
        let task = attrs::dump(pid, &status, &mut inj)?;
        Ok::<_, Error>((mm, threads, sigs, itimers, creds, task))
    })();
    // Put the thread back as it was whatever happened.
    let finished = inj.finish_parked();
    let restored_mask =
        ptrace::set_sigmask(leader, mask).map_err(|e| Error::sys("PTRACE_SETSIGMASK", leader, e));
    let (mm, threads, signals, itimers, creds, task) = asked?;
    finished?;
    restored_mask?;
    let image = ProcessImage {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgid,
        sid: stat.sid,
        task,
        creds,
        mm,
        vmas,
        page_runs: Vec::new(),
        files: dumped_files.files,
        fds: dumped_files.fds,
        signals,
        itimers,
        threads,
        posix_timers: timers_posix,
        shares_fd_table_with: 0,
        shares_fs_with: 0,
    };
    Ok(Collected {
        image,
        blobs: dumped_files.blobs,
    })
}

/// Collects a non-leader thread, running its per-thread queries inside it with the scratch area
/// the leader mapped, and puts it back as it was.
fn dump_other_thread(
    pid: Pid,
    tid: Pid,
    syscall_ip: u64,
    scratch: u64,
) -> Result<stasis_image::ThreadImage, Error> {
    let mask = ptrace::get_sigmask(tid).map_err(|e| Error::sys("PTRACE_GETSIGMASK", tid, e))?;
    let mut inj = Injector::new(tid, syscall_ip)?;
    ptrace::set_sigmask(tid, u64::MAX).map_err(|e| Error::sys("PTRACE_SETSIGMASK", tid, e))?;
    inj.share_scratch(scratch);
    let dumped = thread::dump(pid, tid, &mut inj);
    inj.forget_scratch();
    let finished = inj.finish_parked();
    let restored_mask =
        ptrace::set_sigmask(tid, mask).map_err(|e| Error::sys("PTRACE_SETSIGMASK", tid, e));
    let mut t = dumped?;
    finished?;
    restored_mask?;
    t.sigmask = mask;
    Ok(t)
}
