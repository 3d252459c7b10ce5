//! Dump phase 2: collect. Every frozen process is read (from /proc, with ptrace, and by
//! system calls injected into it) into its [`ProcessImage`], everything but its page contents;
//! everything that can refuse the dump (unsupported fds or mappings, pipes leading out of the
//! tree, sharing that cannot be restored) is found here, before any file but the pages files
//! is created (each process's pages are copied alongside once its mappings are read:
//! [`super::page_copy`]). The tree-wide registries (shared descriptions, pipes) are finished
//! once every process is seen.

use super::freeze::{Frozen, FrozenTree};
use super::page_copy::{HandOver, Job};
use super::ServiceConnection;
use crate::files;
use crate::inject::{self, Injector};
use crate::task::{attrs, creds, itimers, mm, posix_timers, prctl, seccomp, signals, stop, thread};
use crate::{pages, procfs, Error};
use stasis_image::{ProcessImage, VmaKind};
use stasis_sys::{process, ptrace, Pid};
use std::os::fd::OwnedFd;

/// One process's metadata, collected while the tree is frozen, before anything is written.
pub(crate) struct Collected {
    pub image: ProcessImage,
    pub blobs: Vec<(u32, std::fs::File)>,
}

/// Collects every process of the frozen tree (all checks first; nothing is written but the
/// pages: each process is handed over to the pages thread through `hand_over` as soon as its
/// mappings are read, [`super::page_copy`]). Also returns what the file kinds hold in place
/// until the dump is over (TCP connections in repair mode behind an nftables rule:
/// [`files::DumpHolds`]); on failure it is released here.
pub(crate) fn collect_tree(
    tree: &FrozenTree,
    root_pidfd: &OwnedFd,
    vdso_offset: u64,
    service: Option<&ServiceConnection>,
    file_opts: &files::DumpFileOptions,
    hand_over: HandOver<'_>,
) -> Result<(Vec<Collected>, files::DumpHolds), Error> {
    let shared = shared_tables(tree)?;
    let mut registry = files::FileRegistry::new(file_opts);
    let mut collected = Vec::with_capacity(tree.processes.len());
    // Each collected process and the address of a `syscall` instruction in it (to ask a
    // parent about its children).
    let mut syscall_ips: Vec<(Pid, u64)> = Vec::new();
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
        let _process = tracing::info_span!("process", pid = frozen.pid).entered();
        let (mut c, syscall_ip) = collect(
            frozen,
            pidfd,
            vdso_offset,
            svc,
            &mut registry,
            &syscall_ips,
            hand_over,
        )?;
        syscall_ips.push((frozen.pid, syscall_ip));
        (c.image.shares_fd_table_with, c.image.shares_fs_with) =
            shared.get(&frozen.pid).copied().unwrap_or((0, 0));
        collected.push(c);
    }
    // pidfds name processes: only those of the tree, in reach of the restore.
    let images: Vec<&ProcessImage> = collected.iter().map(|c| &c.image).collect();
    let zombies: Vec<(Pid, Pid)> = tree.zombies.iter().map(|z| (z.pid, z.ppid)).collect();
    files::pidfd::check_tree(&images, &zombies)?;
    // Objects that span processes (pipes) are complete only once every process is seen.
    let holds = registry.finish(collected.iter_mut().map(|c| &mut c.image.files))?;
    Ok((collected, holds))
}

/// What a process shares with its parent: (fd table, fs state), as the parent's pid or 0.
type SharedWithParent = std::collections::HashMap<Pid, (Pid, Pid)>;

/// Sharing between the processes of the tree (clone without CLONE_THREAD). An fd table or fs
/// state shared with the parent is recorded and restored (also by a process that has children
/// of its own, which may share it in turn); anything else (a shared address space or signal
/// handlers, sharing between siblings only) would come back as separate copies, and is refused
/// by name.
fn shared_tables(tree: &FrozenTree) -> Result<SharedWithParent, Error> {
    use stasis_sys::process::Shared;
    let shares =
        |a: Pid, b: Pid, what| process::shares(a, b, what).map_err(|e| Error::sys("kcmp", b, e));
    let refuse = |what: String| Err(Error::Unsupported { what });
    let mut out = SharedWithParent::new();
    // Sharing comes from clone: compare each process with its parent and its previous
    // sibling (linear in the size of the tree).
    let mut last_child: std::collections::HashMap<Pid, Pid> = std::collections::HashMap::new();
    for p in tree.processes.iter().skip(1) {
        let (b, a) = (p.pid, procfs::read_stat(p.pid)?.ppid);
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
    Ok(out)
}

/// Collects one frozen process: everything but its page contents, which `hand_over` gives to
/// the pages thread once its mappings are read. Also returns the address of the `syscall`
/// instruction used to run calls in it.
fn collect(
    frozen: &Frozen,
    pidfd: &OwnedFd,
    vdso_offset: u64,
    service: Option<&ServiceConnection>,
    registry: &mut files::FileRegistry,
    parents: &[(Pid, u64)],
    hand_over: HandOver<'_>,
) -> Result<(Collected, u64), Error> {
    let pid = frozen.pid;
    let stat = procfs::read_stat(pid)?;
    // The mappings first: the pages thread starts from them.
    let (vmas, maps) = pages::vma::collect_vmas_and_maps(pid, frozen.smaps_hint.as_deref())?;
    let has = |k: VmaKind| vmas.iter().any(|v| v.kind == k);
    if !has(VmaKind::Vdso) && (has(VmaKind::Vvar) || has(VmaKind::VvarVclock)) {
        return Err(Error::Unsupported {
            what: format!(
                "pid {pid} has unmapped its [vdso] but kept [vvar]: a restore can keep the \
                 kernel's vvar only together with its vdso"
            ),
        });
    }
    // The pages are copied from here on, while the rest is read (the calls injected below
    // leave them alone: see page_copy).
    hand_over(Job {
        pid,
        ppid: stat.ppid,
        vmas: vmas.clone(),
        without_pages: pages::vma::without_own_pages(&maps),
        collect_cpu: stat.processor,
    })?;
    // Next to the process while asking it (crate::cpu); back where we were once done.
    let _next_to_it = stat.processor.and_then(crate::cpu::OneCpu::pin_to);
    let status = procfs::read_status(pid)?;
    // Before anything is injected: suspends the filters of threads under seccomp.
    let seccomp = seccomp::dump(pid, &frozen.threads)?;
    let dumped_files = files::dump(pid, pidfd, service, registry)?;
    // The vdso's syscall instruction (the mappings were just read), or another when the
    // process unmapped its vdso.
    let syscall_ip = match vmas.iter().find(|v| v.kind == VmaKind::Vdso) {
        Some(v) => v.start + vdso_offset,
        None => inject::syscall_ip(pid, vdso_offset)?,
    };
    let leader = frozen.threads[0];
    let mask =
        ptrace::get_sigmask(leader).map_err(|e| Error::sys("PTRACE_GETSIGMASK", leader, e))?;
    let mut inj = Injector::new(leader, syscall_ip)?;
    inj.know_mappings(maps);
    let mut timers_posix = Vec::new();
    let asked = (|| {
        // From here a dumper that dies leaves the thread as it was (inject::park); this also
        // blocks its signals.
        inj.park(mask)?;
        inj.guard()?;
        let scratch = inj.map_scratch(None)?;
        // What the getters below ask the leader, in one resume instead of one each.
        inj.prefetch(&inject::calls::dump_queries(&prctl::SPEC_WHICH))?;
        let mlock_future = pages::dump_future_lock(pid, scratch)?;
        let mm = mm::dump(pid, &stat, &mut inj)?;
        let mut t = thread::dump(pid, leader, &mut inj)?;
        t.sigmask = mask;
        let mut threads = vec![t];
        // The other threads ask their questions in one batch each, from the leader's code
        // page, which the leader lends them meanwhile (if we die, it sleeps before it unmaps
        // the page, so that none of them is left running code that is gone).
        let lent = if frozen.threads.len() > 1 {
            inj.lend_code_page()?
        } else {
            None
        };
        for &tid in &frozen.threads[1..] {
            threads.push(dump_other_thread(
                pid,
                tid,
                syscall_ip,
                scratch,
                inj.gadgets(),
                lent,
            )?);
        }
        if lent.is_some() {
            inj.take_back_code_page()?;
        }
        for t in &mut threads {
            if let Some(nr) =
                super::freeze::resumed_call(frozen, t.tid, t.regs.orig_rax, t.regs.rip)
            {
                tracing::debug!("thread {} resumes call {nr} (restart_syscall)", t.tid);
                t.regs.orig_rax = nr;
            }
        }
        let sigs = signals::dump(pid, &mut inj)?;
        let itimers = itimers::dump(&mut inj)?;
        timers_posix = posix_timers::dump(pid, &mut inj)?;
        let creds = creds::dump(&status, &mut inj)?;
        let task = attrs::dump(pid, &status, &mut inj)?;
        let prctl = prctl::dump_process(pid, &mut inj)?;
        Ok::<_, Error>((mm, threads, sigs, itimers, creds, task, mlock_future, prctl))
    })();
    // Put the thread back as it was whatever happened.
    let finished = inj.finish_parked();
    let restored_mask =
        ptrace::set_sigmask(leader, mask).map_err(|e| Error::sys("PTRACE_SETSIGMASK", leader, e));
    let (mm, threads, signals, itimers, creds, task, mlock_future, prctl) = asked?;
    if task.exe_memfd != 0
        && !vmas.iter().any(|v| {
            v.kind
                == (VmaKind::Memfd {
                    memfd_id: task.exe_memfd,
                })
        })
    {
        return Err(Error::Unsupported {
            what: format!(
                "pid {pid} runs a memfd executable ({}) of which it maps nothing: its contents \
                 cannot be read",
                task.exe_path
            ),
        });
    }
    finished?;
    restored_mask?;
    let parent = parents.iter().find(|(p, _)| *p == stat.ppid).copied();
    let pending = signals
        .shared_pending
        .iter()
        .chain(threads.iter().flat_map(|t| &t.pending));
    let stop = stop::dump(pid, frozen.stop_signal, pending, parent)?;
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
        stop,
        prctl,
        mlock_future,
        posix_locks: dumped_files.posix_locks,
        seccomp,
    };
    Ok((
        Collected {
            image,
            blobs: dumped_files.blobs,
        },
        syscall_ip,
    ))
}

/// Collects a non-leader thread, running its per-thread queries inside it with the scratch area
/// the leader mapped, and puts it back as it was.
fn dump_other_thread(
    pid: Pid,
    tid: Pid,
    syscall_ip: u64,
    scratch: u64,
    gadgets: Option<Option<inject::park::Gadgets>>,
    code_page: Option<u64>,
) -> Result<stasis_image::ThreadImage, Error> {
    let mask = ptrace::get_sigmask(tid).map_err(|e| Error::sys("PTRACE_GETSIGMASK", tid, e))?;
    let mut inj = Injector::new(tid, syscall_ip)?;
    inj.set_gadgets(gadgets);
    let dumped = inj.park(mask).and_then(|parked| {
        inj.share_scratch(scratch);
        if let (true, Some(page)) = (parked, code_page) {
            inj.share_code_page(Some(page));
            inj.prefetch(&inject::calls::thread_queries(&prctl::SPEC_WHICH))?;
        }
        thread::dump(pid, tid, &mut inj)
    });
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
