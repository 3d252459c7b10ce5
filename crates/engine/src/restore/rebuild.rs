//! Restore phase 4: rebuild. Each stopped restore child is rebuilt from inside with injected
//! system calls, one [`RebuildStep`] after the other in the order of [`REBUILD_ORDER`]. The
//! order is the contract of this phase; what must come before what is said on each step and
//! checked by the tests at the bottom:
//!
//! - the restorer's own mappings go before the dumped ones are mapped, pages are written
//!   before the final protections make them read-only;
//! - threads are created (clone3 with `set_tid`, which needs privilege) before the
//!   credentials drop it, and POSIX timers after the threads they may signal;
//! - POSIX locks are taken after the restore fds are closed (closing any fd of a file drops
//!   the process's POSIX locks on it);
//! - credentials come last of everything that needs privilege;
//! - seccomp filters are installed after every other step that injects calls (they may
//!   forbid them); only the munmap of the scratch area follows, exempted from them by
//!   `PTRACE_O_SUSPEND_SECCOMP` when the restorer may (see [`crate::task::seccomp`]);
//! - no system call runs in a thread after its final registers are set (a pending signal
//!   would be delivered at the wrong place).

use super::plan::{Plan, PlannedProcess};
use crate::inject::{self, Injector};
use crate::task::{
    attrs, creds, itimers, loginuid, mm, posix_timers, prctl, sched, seccomp, signals, stop, thread,
};
use crate::{files, pages, procfs, Error};
use stasis_image::{DescLock, DescLockKind, PosixLock, ProcessImage, ThreadImage};
use stasis_sys::{ptrace, Pid};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

/// One step of the rebuild of a process, in [`REBUILD_ORDER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildStep {
    /// Take the stopped child over: every signal blocked, the rseq area it inherited from the
    /// restorer unregistered.
    Prepare,
    /// Move the vdso and vvar to their dumped addresses.
    MoveSpecials,
    /// Unmap everything inherited from the restorer but the special mappings, and map the
    /// scratch area for system call arguments where the dumped layout leaves room.
    UnmapInherited,
    /// Map every dumped mapping (anonymous, files, memfds, shared memory).
    MapVmas,
    /// Write the dumped pages (a lazy restore registers private anonymous memory on a
    /// userfaultfd instead, see [`crate::pages::lazy`]).
    FillPages,
    /// Give every mapping its final protection (after the pages are written).
    Protections,
    /// madvise, mlock, mlockall(MCL_FUTURE) and mseal as dumped: after the final protections
    /// (locking populates a mapping, and a private file mapping still writable would be copied
    /// page by page), and before the credentials (the target can lock whatever it had locked,
    /// whatever its RLIMIT_MEMLOCK, only while it has CAP_IPC_LOCK).
    MemoryAdvice,
    /// The mm fields (code, data, brk, stack, arg and env bounds, auxv, exe link).
    MmFields,
    /// Signal dispositions and process-wide pending signals.
    Signals,
    /// Interval timers.
    IntervalTimers,
    /// The leader's per-thread state but its registers.
    LeaderThread,
    /// Close the restore descriptors (mapped files, executables, error pipe) once the last
    /// process sharing this fd table no longer needs them.
    CloseRestoreFds,
    /// pidfds of processes of the tree that did not exist yet while the process laid out its
    /// fd table (siblings, grandchildren, ...): every process exists now.
    Pidfds,
    /// POSIX record locks, flock locks and leases, taken by the process itself through its fds
    /// (OFD locks came with the descriptions): after the restore fds are closed (a process
    /// that closes any fd of a file loses its POSIX locks on it), and before the credentials
    /// (a lease on a file of another owner needs CAP_LEASE).
    Locks,
    /// Create the other threads with their ids (clone3 `set_tid`: needs privilege, so before
    /// the credentials) and give each its per-thread state (and its own audit login uid when
    /// it is not the leader's: changing one needs CAP_AUDIT_CONTROL).
    CreateThreads,
    /// POSIX timers with their ids: after the threads exist (a timer may signal one of them).
    PosixTimers,
    /// Inherited prctl state, process-wide and per thread (THP disable, MDWE, membarrier
    /// registrations, KSM merging; timer slack, TSC, MCE kill policy, speculation control, IO
    /// flusher): once the threads exist and the memory layout is final (MDWE refuses to make
    /// memory executable from then on), before the credentials (IO flusher and KSM merging
    /// need CAP_SYS_RESOURCE).
    InheritedPrctl,
    /// Join a process group that did not exist yet when the process was forked.
    JoinProcessGroup,
    /// Credentials of every thread, the leader last: the last step that needs privilege.
    Credentials,
    /// prctl bits set after the credentials (dumpable, pdeathsig, ...).
    Prctl,
    /// Enter the job-control stop the process was in: after everything that runs inside it
    /// but the final registers (a stopped thread still takes injected calls, but every
    /// blockable signal must still be blocked while the stop starts). Detaching at the end of
    /// the restore puts every thread back into the stop without a new report to the parent.
    JobStop,
    /// Seccomp strict mode and filters of every thread: the last step that injects calls
    /// (a filter may forbid any of them), after the job-control stop, whose start may inject
    /// a signal; the scratch area's munmap in the final step is exempted from the filters
    /// with `PTRACE_O_SUSPEND_SECCOMP` when the restorer holds CAP_SYS_ADMIN.
    Seccomp,
    /// Scheduling policy, priority, nice value and affinity of every thread, set from outside:
    /// late, so that the restore runs at the restorer's priority (a SCHED_IDLE thread would
    /// make each injected call wait for an idle CPU).
    Scheduling,
    /// Registers, FPU state and signal masks of every thread: no system call runs in a thread
    /// after this (pending signals stay queued for the process to take).
    FinalRegisters,
}

/// The order of the rebuild (see the module documentation).
pub const REBUILD_ORDER: &[RebuildStep] = &[
    RebuildStep::Prepare,
    RebuildStep::MoveSpecials,
    RebuildStep::UnmapInherited,
    RebuildStep::MapVmas,
    RebuildStep::FillPages,
    RebuildStep::Protections,
    RebuildStep::MemoryAdvice,
    RebuildStep::MmFields,
    RebuildStep::Signals,
    RebuildStep::IntervalTimers,
    RebuildStep::LeaderThread,
    RebuildStep::CloseRestoreFds,
    RebuildStep::Pidfds,
    RebuildStep::Locks,
    RebuildStep::CreateThreads,
    RebuildStep::PosixTimers,
    RebuildStep::InheritedPrctl,
    RebuildStep::JoinProcessGroup,
    RebuildStep::Credentials,
    RebuildStep::Prctl,
    RebuildStep::JobStop,
    RebuildStep::Seccomp,
    RebuildStep::Scheduling,
    RebuildStep::FinalRegisters,
];

impl RebuildStep {
    /// The step's name in [`crate::timings::Timings`]: `rebuild.` and its name.
    pub fn stats_name(self) -> &'static str {
        match self {
            RebuildStep::Prepare => "rebuild.prepare",
            RebuildStep::MoveSpecials => "rebuild.move vdso/vvar",
            RebuildStep::UnmapInherited => "rebuild.unmap inherited memory",
            RebuildStep::MapVmas => "rebuild.map memory",
            RebuildStep::FillPages => "rebuild.fill pages",
            RebuildStep::Protections => "rebuild.set protections",
            RebuildStep::MemoryAdvice => "rebuild.memory advice and locks",
            RebuildStep::MmFields => "rebuild.mm fields",
            RebuildStep::Signals => "rebuild.signals",
            RebuildStep::IntervalTimers => "rebuild.interval timers",
            RebuildStep::LeaderThread => "rebuild.leader thread state",
            RebuildStep::CloseRestoreFds => "rebuild.close restore fds",
            RebuildStep::Pidfds => "rebuild.pidfds",
            RebuildStep::Locks => "rebuild.locks",
            RebuildStep::CreateThreads => "rebuild.create threads",
            RebuildStep::PosixTimers => "rebuild.POSIX timers",
            RebuildStep::InheritedPrctl => "rebuild.inherited prctl state",
            RebuildStep::JoinProcessGroup => "rebuild.join process group",
            RebuildStep::Credentials => "rebuild.credentials",
            RebuildStep::Prctl => "rebuild.prctl",
            RebuildStep::JobStop => "rebuild.job-control stop",
            RebuildStep::Seccomp => "rebuild.seccomp",
            RebuildStep::Scheduling => "rebuild.scheduling",
            RebuildStep::FinalRegisters => "rebuild.final registers",
        }
    }

    /// The step's name in logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            RebuildStep::Prepare => "prepare",
            RebuildStep::MoveSpecials => "move vdso/vvar",
            RebuildStep::UnmapInherited => "unmap inherited memory",
            RebuildStep::MapVmas => "map memory",
            RebuildStep::FillPages => "fill pages",
            RebuildStep::Protections => "set protections",
            RebuildStep::MemoryAdvice => "memory advice and locks",
            RebuildStep::MmFields => "mm fields",
            RebuildStep::Signals => "signals",
            RebuildStep::IntervalTimers => "interval timers",
            RebuildStep::LeaderThread => "leader thread state",
            RebuildStep::CloseRestoreFds => "close restore fds",
            RebuildStep::Pidfds => "pidfds",
            RebuildStep::Locks => "locks",
            RebuildStep::CreateThreads => "create threads",
            RebuildStep::PosixTimers => "POSIX timers",
            RebuildStep::InheritedPrctl => "inherited prctl state",
            RebuildStep::JoinProcessGroup => "join process group",
            RebuildStep::Credentials => "credentials",
            RebuildStep::Prctl => "prctl",
            RebuildStep::JobStop => "job-control stop",
            RebuildStep::Seccomp => "seccomp",
            RebuildStep::Scheduling => "scheduling",
            RebuildStep::FinalRegisters => "final registers",
        }
    }
}

/// The state of one process's rebuild, handed from step to step.
struct Rebuild<'p, 'a> {
    child: Pid,
    planned: &'p PlannedProcess<'a>,
    plan: &'p Plan<'a>,
    vdso_offset: u64,
    /// The leader's injector (taken by the last step, which lets it go).
    inj: Option<Injector>,
    scratch: u64,
    /// Where the child's vdso and vvar are kept when the image has none (unmapped last).
    temporary_specials: Option<(u64, u64)>,
    /// The other threads, once created, with their injectors.
    others: Vec<(Injector, &'a ThreadImage)>,
    /// A lazy restore: takes the userfaultfd the private memory is registered on as soon as
    /// it is (the rest of the rebuild touches that memory: its faults must be served).
    hand_over: &'p LazyHandOver<'p>,
    /// The restore keeps to one CPU ([`crate::cpu`]): but for a fill shared between threads.
    one_cpu: Option<&'p crate::cpu::OneCpu>,
}

/// Takes a lazy restore's registered process (see [`crate::pages::lazy`]).
pub(crate) type LazyHandOver<'p> = dyn Fn(pages::lazy::LazyProcess) -> Result<(), Error> + 'p;

/// Rebuilds the stopped process `idx` of the plan. Returns the thread ids to detach once the
/// whole tree is rebuilt. A lazy restore hands the process's userfaultfd to `hand_over`. The
/// time of each step is added to `timings` (as `rebuild.<name>`). `one_cpu`: the restore keeps
/// to one CPU ([`crate::cpu`]).
pub(crate) fn rebuild<'p>(
    plan: &'p Plan<'_>,
    idx: usize,
    vdso_offset: u64,
    hand_over: &'p LazyHandOver<'p>,
    one_cpu: Option<&'p crate::cpu::OneCpu>,
    timings: &mut crate::timings::Timings,
) -> Result<Vec<Pid>, Error> {
    let planned = &plan.processes[idx];
    let child = planned.image.pid;
    let _process = tracing::info_span!("process", pid = child).entered();
    let child_vdso = procfs::read_maps(child)?
        .into_iter()
        .find(|m| m.name == "[vdso]")
        .ok_or_else(|| Error::Unsupported {
            what: "the restore child has no [vdso]".into(),
        })?;
    let mut r = Rebuild {
        child,
        planned,
        plan,
        vdso_offset,
        inj: Some(Injector::new(child, child_vdso.start + vdso_offset)?),
        scratch: 0,
        temporary_specials: None,
        others: Vec::new(),
        hand_over,
        one_cpu,
    };
    for &step in REBUILD_ORDER {
        let _step = tracing::debug_span!("step", name = step.name()).entered();
        tracing::debug!("rebuild step");
        let started = std::time::Instant::now();
        r.run(step).map_err(|e| Error::Rebuild {
            pid: child,
            step: step.name(),
            source: Box::new(e),
        })?;
        timings.since(step.stats_name(), started);
    }
    // The caller detaches every thread once the whole tree is rebuilt.
    let mut tids: Vec<Pid> = planned.image.threads[1..].iter().map(|t| t.tid).collect();
    tids.push(child);
    Ok(tids)
}

impl<'p, 'a> Rebuild<'p, 'a> {
    fn inj(&mut self) -> Result<&mut Injector, Error> {
        self.inj.as_mut().ok_or_else(|| Error::Internal {
            what: "a rebuild step after the final registers".into(),
        })
    }

    /// The indices of the mappings the process prepared before it forked (`pages::cow`).
    fn prepared(&self) -> &'p [usize] {
        let plan: &'p Plan<'a> = self.plan;
        plan.cow
            .prepared
            .iter()
            .zip(&plan.processes)
            .find(|(_, p)| p.image.pid == self.child)
            .map_or(&[], |(v, _)| &v[..])
    }

    fn run(&mut self, step: RebuildStep) -> Result<(), Error> {
        let (plan, planned, vdso_offset) = (self.plan, self.planned, self.vdso_offset);
        let image = planned.image;
        let child = self.child;
        let base = plan.base;
        match step {
            RebuildStep::Prepare => {
                ptrace::set_sigmask(child, u64::MAX)
                    .map_err(|e| Error::sys("PTRACE_SETSIGMASK", child, e))?;
                thread::unregister_inherited_rseq(self.inj()?)?;
            }
            RebuildStep::MoveSpecials => {
                // Room for the scratch area and the code page of batches (step
                // `UnmapInherited`) before a temporary vdso.
                self.temporary_specials = pages::move_specials(
                    self.inj()?,
                    &image.vmas,
                    vdso_offset,
                    inject::SCRATCH_LEN + crate::PAGE_SIZE,
                )?;
            }
            RebuildStep::UnmapInherited => {
                // The memory it prepared before forking stays (staged), see `pages::cow`.
                let mut keep =
                    pages::cow::parked_ranges(image, self.prepared(), &plan.cow.parking)?;
                keep.extend(self.temporary_specials);
                pages::unmap_all_but_specials(self.inj()?, &image.vmas, &keep)?;
                self.inj()?.forget_scratch();
                // The scratch area and, right after it, the page of code of batched calls
                // (the mappings and protections below are made in batches): one mapping.
                let scratch = pages::free_scratch_address(&image.vmas, inject::AREA_LEN)?;
                self.scratch = self.inj()?.map_scratch(Some(scratch))?;
            }
            RebuildStep::MapVmas => {
                let file_fds: HashMap<usize, i32> = self
                    .planned
                    .map_aux
                    .iter()
                    .map(|(&vma, &aux)| (vma, base + aux as i32))
                    .collect();
                let prepared = self.prepared();
                pages::cow::move_parked(self.inj()?, image, prepared, &plan.cow.parking)?;
                let moved: Vec<u64> = prepared.iter().map(|&v| image.vmas[v].start).collect();
                pages::map_vmas(
                    self.inj()?,
                    &image.vmas,
                    &image.page_runs,
                    &file_fds,
                    &plan.shmem,
                    &moved,
                )?;
            }
            RebuildStep::FillPages => {
                // Prepared memory was filled before the fork (`pages::cow`).
                let runs = pages::cow::runs_to_fill(image, self.prepared())?;
                if plan.lazy {
                    let registered =
                        pages::lazy::register(self.inj()?, &image.vmas, &runs, planned.pages)?;
                    if let Some(p) = registered {
                        (self.hand_over)(p)?;
                    }
                } else {
                    // A fill shared between threads (or with compressed runs, decoded by
                    // threads) has every CPU.
                    let _all = self
                        .one_cpu
                        .filter(|_| pages::fill::uses_threads(&runs))
                        .map(|c| c.spread());
                    pages::fill_pages(child, &runs, planned.pages)?;
                }
            }
            RebuildStep::Protections => {
                pages::finish_protections(self.inj()?, &image.vmas, &image.page_runs)?;
            }
            RebuildStep::MemoryAdvice => {
                self.inj()?
                    .batched(|inj| pages::apply_advice(inj, &image.vmas, image.mlock_future))?;
            }
            RebuildStep::MmFields => {
                // The child's exe link is the restorer's executable. When that is also the
                // dumped process's executable it is already right (and the kernel refuses to
                // replace an exe that is still mapped).
                let exe_fd = if same_file(&image.task.exe_path, "/proc/self/exe") {
                    -1
                } else {
                    base + planned.exe_aux as i32
                };
                mm::restore(self.inj()?, &image.mm, exe_fd)?;
            }
            RebuildStep::Signals => self
                .inj()?
                .batched(|inj| signals::restore(inj, child, &image.signals))?,
            RebuildStep::IntervalTimers => self
                .inj()?
                .batched(|inj| itimers::restore(inj, &image.itimers))?,
            RebuildStep::LeaderThread => {
                self.inj()?
                    .batched(|inj| thread::restore_in_thread(inj, child, &image.threads[0]))?;
            }
            RebuildStep::CloseRestoreFds => {
                if planned.close_aux {
                    let last = base as u32 + plan.aux_count as u32 - 1;
                    self.inj()?.close_range(base as u32, last, 0)?;
                }
            }
            RebuildStep::Pidfds => {
                let loaded = plan.loaded;
                let images: Vec<&ProcessImage> = loaded.processes.iter().map(|(p, _)| p).collect();
                let zombies: Vec<(Pid, Pid)> = loaded
                    .inventory
                    .zombies
                    .iter()
                    .map(|z| (z.pid, z.ppid))
                    .collect();
                files::pidfd::restore_late(self.inj()?, image, &images, &zombies)?;
            }
            RebuildStep::Locks => {
                let desc_locks = desc_locks_of(plan, image);
                // POSIX locks belong to the fd table: processes sharing one (CLONE_FILES) have
                // the same locks in their records, and the last of them to be rebuilt, the
                // one that closes the restore fds (which would drop them), takes them.
                let posix: &[PosixLock] = if planned.close_aux {
                    &image.posix_locks
                } else {
                    &[]
                };
                if !posix.is_empty() || !desc_locks.is_empty() {
                    files::locks::take_in_process(self.inj()?, child, posix, &desc_locks)?;
                }
            }
            RebuildStep::CreateThreads => {
                for t in &image.threads[1..] {
                    thread::create_thread(self.inj()?, t.tid)?;
                    // The vdso has moved since the leader's injector was made: ask it where it
                    // is now.
                    let mut tinj = Injector::new(t.tid, self.inj()?.syscall_ip())?;
                    tinj.share_scratch(self.scratch);
                    tinj.share_code_page(self.inj()?.code_page_mapped());
                    ptrace::set_sigmask(t.tid, u64::MAX)
                        .map_err(|e| Error::sys("PTRACE_SETSIGMASK", t.tid, e))?;
                    tinj.batched(|inj| {
                        thread::restore_in_thread(inj, child, t)?;
                        loginuid::restore_thread(inj, t.loginuid, image.task.loginuid)
                    })?;
                    self.others.push((tinj, t));
                }
            }
            RebuildStep::PosixTimers => posix_timers::restore(self.inj()?, &image.posix_timers)?,
            RebuildStep::InheritedPrctl => {
                // Every thread has the leader's (cloned from it, which changed none yet).
                let now = prctl::ThreadNow::of(self.inj()?)?;
                for (tinj, t) in &mut self.others {
                    tinj.batched(|inj| prctl::restore_thread(inj, &t.prctl, &now))?;
                }
                self.inj()?.batched(|inj| {
                    prctl::restore_process(inj, &image.prctl)?;
                    prctl::restore_thread(inj, &image.threads[0].prctl, &now)
                })?;
            }
            RebuildStep::JoinProcessGroup => {
                if planned.set_pgid {
                    self.inj()?.setpgid(0, image.pgid)?;
                }
            }
            RebuildStep::Credentials => {
                // Credentials are per thread: every thread gets them, the leader last. They
                // all have the leader's now (cloned from it).
                let now = creds::Now::of(self.inj()?)?;
                for (tinj, t) in &mut self.others {
                    tinj.batched(|inj| {
                        creds::restore(inj, &image.creds, plan.allowed_caps, &now)?;
                        thread::restore_name(inj, &t.comm)
                    })?;
                }
                self.inj()?
                    .batched(|inj| creds::restore(inj, &image.creds, plan.allowed_caps, &now))?;
            }
            RebuildStep::Prctl => {
                let with_pdeathsig =
                    plan.root_pdeathsig || image.pid != plan.loaded.inventory.root_pid;
                self.inj()?
                    .batched(|inj| attrs::restore_prctl(inj, &image.task, with_pdeathsig))?
            }
            RebuildStep::JobStop => {
                if let Some(js) = &image.stop {
                    let tids: Vec<_> = image.threads.iter().map(|t| t.tid).collect();
                    // The parent, when it is in the dump: already rebuilt, still traced.
                    let parent = plan
                        .processes
                        .iter()
                        .map(|p| p.image)
                        .find(|p| p.pid == image.ppid)
                        .map(|_| inject::syscall_ip(image.ppid, vdso_offset))
                        .transpose()?
                        .map(|ip| (image.ppid, ip));
                    stop::restore(child, &tids, js, &image.signals.actions, parent)?;
                }
            }
            RebuildStep::Seccomp => {
                let leader = self.inj.as_mut().ok_or_else(|| Error::Internal {
                    what: "a rebuild step after the final registers".into(),
                })?;
                seccomp::restore(&image.seccomp, leader, &mut self.others)?;
            }
            RebuildStep::Scheduling => {
                for t in &image.threads {
                    sched::restore(t.tid, &t.sched, plan.confined)?;
                }
            }
            RebuildStep::FinalRegisters => {
                for (mut tinj, t) in std::mem::take(&mut self.others) {
                    tinj.forget_scratch();
                    thread::restore_final(&mut tinj, t)?;
                    tinj.finish()?;
                }
                let mut inj = self.inj.take().ok_or_else(|| Error::Internal {
                    what: "the leader's injector is gone".into(),
                })?;
                inj.unmap_scratch()?;
                if let Some(range) = self.temporary_specials {
                    pages::unmap_temporary_specials(&mut inj, range)?;
                }
                thread::restore_final(&mut inj, &image.threads[0])?;
                inj.finish()?;
            }
        }
        Ok(())
    }
}

/// The flock locks and leases process `image` takes again, with the fd it takes each through:
/// those of its descriptions that it took (the pid /proc/locks showed), or, when the process
/// that took one has no fd of the description in the tree, those of descriptions it is the
/// first process of the plan to have an fd of.
fn desc_locks_of(plan: &Plan<'_>, image: &ProcessImage) -> Vec<(i32, DescLock)> {
    let fd_of = |p: &ProcessImage, id: u32| p.fds.iter().find(|f| f.file_id == id).map(|f| f.fd);
    let mut out = Vec::new();
    for desc in &image.files {
        let Some(fd) = fd_of(image, desc.id) else {
            continue;
        };
        for lock in desc.locks.iter().filter(|l| l.kind != DescLockKind::Ofd) {
            let holders: Vec<&ProcessImage> = plan
                .processes
                .iter()
                .map(|p| p.image)
                .filter(|p| fd_of(p, desc.id).is_some())
                .collect();
            let mine = if holders.iter().any(|p| p.pid == lock.pid) {
                lock.pid == image.pid
            } else {
                holders.first().is_some_and(|p| p.pid == image.pid)
            };
            if mine {
                out.push((fd, *lock));
            }
        }
    }
    out
}

fn same_file(a: &str, b: &str) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{RebuildStep as S, REBUILD_ORDER};

    fn pos(s: S) -> usize {
        REBUILD_ORDER
            .iter()
            .position(|&x| x == s)
            .unwrap_or_else(|| panic!("{s:?} is not in REBUILD_ORDER"))
    }

    #[test]
    fn every_step_once() {
        let mut seen = Vec::new();
        for s in REBUILD_ORDER {
            assert!(!seen.contains(s), "{s:?} twice");
            seen.push(*s);
        }
        assert_eq!(seen.len(), 24);
    }

    #[test]
    fn pidfds_once_the_fd_table_is_final() {
        assert!(pos(S::CloseRestoreFds) < pos(S::Pidfds));
        assert!(pos(S::Pidfds) < pos(S::Seccomp));
    }

    #[test]
    fn memory_before_what_lives_in_it() {
        assert!(pos(S::MoveSpecials) < pos(S::UnmapInherited));
        assert!(pos(S::UnmapInherited) < pos(S::MapVmas));
        assert!(pos(S::MapVmas) < pos(S::FillPages));
        assert!(pos(S::FillPages) < pos(S::Protections));
        assert!(pos(S::Protections) < pos(S::MemoryAdvice));
        assert!(pos(S::MemoryAdvice) < pos(S::Credentials));
        assert!(pos(S::MapVmas) < pos(S::MmFields));
    }

    #[test]
    fn privilege_needed_before_credentials() {
        for s in [
            S::CreateThreads,
            S::PosixTimers,
            S::MmFields,
            S::JoinProcessGroup,
            S::CloseRestoreFds,
            S::InheritedPrctl,
            S::Locks,
        ] {
            assert!(pos(s) < pos(S::Credentials), "{s:?} after credentials");
        }
        assert!(pos(S::CreateThreads) < pos(S::PosixTimers));
        assert!(pos(S::CreateThreads) < pos(S::InheritedPrctl));
        assert!(pos(S::Protections) < pos(S::InheritedPrctl));
        // Closing any fd of a file drops the process's POSIX locks on it.
        assert!(pos(S::CloseRestoreFds) < pos(S::Locks));
    }

    #[test]
    fn final_registers_last() {
        assert_eq!(REBUILD_ORDER.last(), Some(&S::FinalRegisters));
        // Everything that injects calls runs at the restorer's priority.
        assert_eq!(pos(S::Scheduling) + 1, pos(S::FinalRegisters));
        // The stop starts once nothing but the final registers is left to do.
        for s in REBUILD_ORDER {
            if !matches!(
                s,
                S::JobStop | S::Seccomp | S::Scheduling | S::FinalRegisters
            ) {
                assert!(pos(*s) < pos(S::JobStop), "{s:?} after the stop");
            }
        }
        assert_eq!(REBUILD_ORDER.first(), Some(&S::Prepare));
    }

    #[test]
    fn seccomp_after_every_injected_call() {
        // Scheduling is set from outside; only the final registers follow.
        assert_eq!(pos(S::Seccomp) + 2, pos(S::FinalRegisters));
        assert_eq!(pos(S::Seccomp) + 1, pos(S::Scheduling));
        assert!(pos(S::JobStop) < pos(S::Seccomp));
    }
}
