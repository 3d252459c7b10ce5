//! Freezing a process (every thread seized and stopped) and letting it go again.
//!
//! Threads are seized and interrupted, then the task list is read again until no new thread
//! appears, so a thread created during the freeze is never missed.

use crate::{procfs, Error};
use stasis_sys::{ptrace, Pid};

/// A process whose threads are all in a ptrace-stop. Dropping it detaches from every thread
/// (the process runs on); [`Frozen::kill`] ends it instead.
pub struct Frozen {
    pub pid: Pid,
    /// Every thread, the leader first.
    pub threads: Vec<Pid>,
    /// The signal of the job-control stop the process was in (or entered while it was being
    /// frozen): what its threads reported as their group-stop (see [`crate::task::stop`]).
    pub stop_signal: Option<i32>,
    /// Its smaps as read just before this freeze (a pre-copy's last step), for
    /// [`crate::pages::vma::collect_vmas_hinted`].
    pub smaps_hint: Option<Vec<procfs::MapEntry>>,
    /// Threads that an earlier freeze of this dump (a pre-copy's) interrupted in a system
    /// call the kernel resumes through `restart_syscall`: (tid, the call, its return
    /// address). See [`restart_hints`].
    pub restart_hints: Vec<(Pid, u64, u64)>,
    detached: bool,
}

/// `restart_syscall`, which a thread interrupted in a call such as nanosleep or poll runs
/// to resume it (from a block of state only the kernel holds).
const SYS_RESTART_SYSCALL: u64 = 219;
/// -ERESTART_RESTARTBLOCK: the call resumes through `restart_syscall`.
const ERESTART_RESTARTBLOCK: u64 = (-516i64) as u64;

/// The threads of a frozen process stopped in a call that resumes through `restart_syscall`
/// once they run again (see [`Frozen::restart_hints`]).
pub fn restart_hints(f: &Frozen) -> Vec<(Pid, u64, u64)> {
    f.threads
        .iter()
        .filter_map(|&tid| {
            let r = ptrace::get_regs(tid).ok()?;
            ((r.orig_rax as i64) >= 0 && r.rax == ERESTART_RESTARTBLOCK)
                .then_some((tid, r.orig_rax, r.rip))
        })
        .collect()
}

/// The call a thread found in `restart_syscall` is resuming, when an earlier freeze of this
/// dump saw it interrupted in that call at the same place: a restore must run that call
/// again (a new process has no kernel restart block).
pub fn resumed_call(f: &Frozen, tid: Pid, orig_rax: u64, rip: u64) -> Option<u64> {
    if orig_rax != SYS_RESTART_SYSCALL {
        return None;
    }
    f.restart_hints
        .iter()
        .find(|&&(t, _, at)| t == tid && at == rip)
        .map(|&(_, nr, _)| nr)
}

/// PTRACE_EVENT_STOP: the stop PTRACE_INTERRUPT produces.
const PTRACE_EVENT_STOP: i32 = 128;

impl Frozen {
    /// Seizes and stops every thread of `pid`.
    #[tracing::instrument(name = "process", level = "info", skip_all, fields(pid = pid))]
    pub fn freeze(pid: Pid) -> Result<Frozen, Error> {
        let mut frozen = Frozen {
            pid,
            threads: Vec::new(),
            stop_signal: None,
            smaps_hint: None,
            restart_hints: Vec::new(),
            detached: false,
        };
        loop {
            // A process that is gone is named as such; any other failure as itself (it was
            // reported as "does not exist", found by fault injection).
            let tids = procfs::list_threads(pid).map_err(|e| {
                if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    Error::Proc(e)
                } else {
                    Error::NoSuchProcess { pid }
                }
            })?;
            let new: Vec<Pid> = tids
                .iter()
                .copied()
                .filter(|t| !frozen.threads.contains(t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                crate::fault::point("PTRACE_SEIZE")?;
                match ptrace::seize(tid, false) {
                    Ok(()) => {}
                    // The thread exited between listing and seizing.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) && tid != pid => continue,
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                        return Err(Error::NoSuchProcess { pid })
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        return Err(crate::task::stop::traced_by_another(pid, tid)
                            .unwrap_or_else(|| Error::sys("PTRACE_SEIZE", tid, e)))
                    }
                    Err(e) => return Err(Error::sys("PTRACE_SEIZE", tid, e)),
                }
                ptrace::interrupt(tid).map_err(|e| Error::sys("PTRACE_INTERRUPT", tid, e))?;
                match wait_for_stop(tid) {
                    Ok(sig) => {
                        if crate::task::stop::is_stop_signal(sig) {
                            frozen.stop_signal = Some(sig);
                        }
                        frozen.threads.push(tid)
                    }
                    // A thread that exits while being frozen is simply not part of the dump.
                    Err(Error::TargetDied { .. }) if tid != pid => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // The leader first.
        frozen.threads.sort_by_key(|&t| (t != pid, t));
        tracing::debug!("pid {pid} frozen ({} threads)", frozen.threads.len());
        Ok(frozen)
    }

    /// Kills the process (after a successful dump). The kill cannot be caught; the threads
    /// stay traced until they are gone.
    pub fn kill(mut self) -> Result<(), Error> {
        stasis_sys::process::kill(self.pid, libc::SIGKILL)
            .map_err(|e| Error::sys("kill", self.pid, e))?;
        tracing::debug!("pid {} killed", self.pid);
        self.detached = true;
        Ok(())
    }

    /// Detaches from every thread so the process runs on.
    pub fn thaw(&mut self) -> Result<(), Error> {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Result<(), Error> {
        if self.detached {
            return Ok(());
        }
        self.detached = true;
        tracing::debug!("pid {} detached", self.pid);
        let mut first = Ok(());
        for &tid in &self.threads {
            if let Err(e) = ptrace::detach(tid, 0) {
                if first.is_ok() {
                    first = Err(Error::sys("PTRACE_DETACH", tid, e));
                }
            }
        }
        first
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}

/// Waits until `tid` reports the stop PTRACE_INTERRUPT asked for, and returns its signal:
/// SIGTRAP, or the stop signal of a group-stop (a thread in, or entering, a job-control stop).
/// A signal-delivery-stop that comes first is resumed with the same signal, so nothing is lost.
fn wait_for_stop(tid: Pid) -> Result<i32, Error> {
    loop {
        match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
            ptrace::WaitStatus::Stopped {
                event: PTRACE_EVENT_STOP,
                sig,
            } => return Ok(sig),
            ptrace::WaitStatus::Stopped { sig, .. } => {
                // A signal was about to be delivered: hand it back and wait for our stop.
                ptrace::cont(tid, sig).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?;
            }
            other => {
                return Err(Error::TargetDied {
                    pid: tid,
                    how: format!("{other:?}"),
                })
            }
        }
    }
}

/// A whole process tree, frozen top-down: once a process is frozen its set of children can no
/// longer change, so descending from the root catches every descendant, even one forked while
/// the freeze was going on.
pub struct FrozenTree {
    /// Live processes, breadth-first from the root (parents before their children).
    pub processes: Vec<Frozen>,
    /// Exited children not yet reaped.
    pub zombies: Vec<stasis_image::Zombie>,
}

impl FrozenTree {
    pub fn freeze(root: Pid) -> Result<FrozenTree, Error> {
        let mut tree = FrozenTree {
            processes: vec![Frozen::freeze(root)?],
            zombies: Vec::new(),
        };
        let mut i = 0;
        while i < tree.processes.len() {
            let parent = tree.processes[i].pid;
            for child in procfs::children(parent)? {
                let stat = match procfs::read_stat(child) {
                    Ok(s) => s,
                    // Reaped meanwhile by a thread we had not frozen yet.
                    Err(_) if !std::path::Path::new(&format!("/proc/{child}")).exists() => continue,
                    // A child that is there but could not be read is not left out of the
                    // dump (it was: found by fault injection).
                    Err(e) => return Err(e.into()),
                };
                // A zombie leader whose other threads still run is a live process.
                if stat.state == 'Z' && stat.num_threads <= 1 {
                    tracing::debug!("pid {child} is a zombie (parent {parent})");
                    tree.zombies.push(zombie(child, parent, &stat));
                    continue;
                }
                // A child may exit while it is being frozen (its parent is frozen, so it
                // stays a zombie of the tree, unless the kernel reaps it at once).
                match Frozen::freeze(child) {
                    Ok(f) => tree.processes.push(f),
                    Err(e) => match exited_while_freezing(parent, child) {
                        Some(Some(z)) => tree.zombies.push(z),
                        Some(None) => {}
                        None => return Err(e),
                    },
                }
            }
            i += 1;
        }
        Ok(tree)
    }

    pub fn pids(&self) -> Vec<Pid> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    /// Lets every process run on.
    pub fn thaw(&mut self) -> Result<(), Error> {
        let mut first = Ok(());
        for p in &mut self.processes {
            if let Err(e) = p.thaw() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Kills every process of the tree (after a successful dump), leaves first. Each killed
    /// descendant is reaped right away by its own (still frozen) parent through an injected
    /// wait4, and so are the tree's zombies: their pids are free for a restore at once, even
    /// where orphans would go to an init that does not reap them. The root is reaped by its
    /// own parent.
    ///
    /// The dead threads stay traced by us until we wait for them: a thread other than the
    /// leader is then gone, and a leader is handed back to its parent. The leader only once
    /// every other thread of its process is gone (until then the kernel does not report it),
    /// so they are waited for first.
    pub fn kill(self, vdso_offset: u64) -> Result<(), Error> {
        let FrozenTree {
            mut processes,
            zombies,
        } = self;
        let ppid_of = |pid: Pid| procfs::read_stat(pid).map(|s| s.ppid).unwrap_or(0);
        let mut reap: Vec<(Pid, Pid)> = zombies.iter().map(|z| (z.pid, z.ppid)).collect();
        // Leaves first: reverse breadth-first order.
        while processes.len() > 1 {
            let Some(p) = processes.pop() else { break };
            let (pid, threads) = (p.pid, p.threads.clone());
            let parent = ppid_of(pid);
            p.kill()?;
            // As tracer we see each thread die first (the leader last); then the parent can
            // reap.
            for &tid in threads.iter().skip(1).chain(threads.first()) {
                wait_dead(tid);
            }
            reap.push((pid, parent));
            if let Some(pp) = processes.iter().find(|q| q.pid == parent) {
                reap_in(pp.threads[0], vdso_offset, &mut reap)?;
            }
        }
        if let Some(root) = processes.pop() {
            reap_in(root.threads[0], vdso_offset, &mut reap)?;
            let (pid, threads) = (root.pid, root.threads.clone());
            let parent = ppid_of(pid);
            root.kill()?;
            for &tid in threads.iter().skip(1) {
                wait_dead(tid);
            }
            // Hand the root back to its parent, which reaps it; unless that parent is us, the
            // caller, who wants its status (our wait would consume it).
            if parent != stasis_sys::process::getpid() {
                wait_dead(pid);
            }
        }
        Ok(())
    }
}

/// Waits, as its tracer, until the killed thread `tid` has died (stops reported meanwhile are
/// passed over). A thread that is already gone is not an error: there is nothing left to wait
/// for.
fn wait_dead(tid: Pid) {
    while let Ok(ptrace::WaitStatus::Stopped { .. }) = ptrace::waitpid(tid, 0) {}
}

fn zombie(pid: Pid, ppid: Pid, stat: &procfs::Stat) -> stasis_image::Zombie {
    stasis_image::Zombie {
        pid,
        ppid,
        pgid: stat.pgid,
        sid: stat.sid,
        exit_status: stat.exit_code,
    }
}

/// How long a child whose freeze failed may take to finish exiting.
const EXIT_SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// After freezing `child` of the frozen `parent` failed: whether that is because it exited.
/// `Some(Some(zombie))`: it is a zombie of `parent` now; `Some(None)`: it is gone (reaped by
/// the kernel); `None`: it is alive, and the failure stands.
///
/// Threads of it that were seized before it died stay traced zombies until their tracer waits
/// for them, and the process is not a plain zombie of its parent until then: they are waited
/// for here.
fn exited_while_freezing(parent: Pid, child: Pid) -> Option<Option<stasis_image::Zombie>> {
    let me = stasis_sys::process::getpid();
    let deadline = std::time::Instant::now() + EXIT_SETTLE;
    loop {
        for tid in procfs::list_threads(child).unwrap_or_default() {
            let _ = ptrace::waitpid_nohang(tid);
        }
        let Ok(stat) = procfs::read_stat(child) else {
            return Some(None);
        };
        if stat.ppid != parent {
            return None;
        }
        let tracer = procfs::read_status(child).map_or(0, |s| s.tracer_pid);
        if tracer != 0 && tracer != me {
            return None; // traced by someone else: it cannot be frozen
        }
        if stat.state == 'Z' && stat.num_threads <= 1 && tracer == 0 {
            return Some(Some(zombie(child, parent, &stat)));
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Runs wait4 inside the frozen process `tid` for every pending (child, parent) pair whose
/// parent it is.
#[tracing::instrument(name = "process", level = "info", skip_all, fields(pid = tid))]
fn reap_in(tid: Pid, vdso_offset: u64, reap: &mut Vec<(Pid, Pid)>) -> Result<(), Error> {
    let mine: Vec<Pid> = reap
        .iter()
        .filter(|(_, parent)| *parent == tid)
        .map(|(c, _)| *c)
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    let ip = crate::inject::syscall_ip(tid, vdso_offset)?;
    let mut inj = crate::inject::Injector::new(tid, ip)?;
    for &child in &mine {
        match inj.wait4(child, libc::__WALL) {
            Ok(_) => tracing::debug!("pid {child} reaped by its parent {tid}"),
            // A parent that ignores SIGCHLD has its children reaped by the kernel.
            Err(Error::Remote { errno, .. }) if errno.raw_os_error() == Some(libc::ECHILD) => {}
            Err(e) => return Err(e),
        }
    }
    inj.finish()?;
    reap.retain(|(c, _)| !mine.contains(c));
    Ok(())
}
