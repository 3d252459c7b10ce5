//! Restoring a process tree, driven entirely from outside with ptrace (see
//! docs/architecture.md). The restore runs in the phases of [`RESTORE_PHASES`], one module
//! each:
//!
//! 1. [`load`](mod@load): read and validate every record and the shape of the tree;
//! 2. [`plan`]: open every description, mapped file and executable the tree needs, and plan
//!    each process (one `PlannedProcess` each);
//! 3. [`fork`]: fork the tree with the dumped pids; each child lays out its fd table and
//!    attributes, then stops itself;
//! 4. [`rebuild`]: rebuild each stopped child from inside with injected system calls, in the
//!    order of [`rebuild::REBUILD_ORDER`] (memory, mm fields, signals, timers, threads,
//!    credentials last, final registers);
//! 5. finish: let the whole tree go at once.
//!
//! [`pidns`] runs the same phases in a new pid namespace. Any failure kills every process
//! created so far (they are traced with PTRACE_O_EXITKILL, so even a crash of the restorer
//! cannot leave a half-built process running).
//!
//! # Terminals
//!
//! A tree whose processes hold a terminal outside the tree (a job started from a shell, see
//! [`crate::files::tty`]) is attached to [`RestoreOptions::terminal`] as a *shell job*:
//! * when that terminal is the restorer's controlling terminal (`stasis restore` run at a
//!   shell), the root joins the restorer's session (whatever session it had: the dumped one
//!   was the old shell's) in a process group of its own (its dumped one), and once the tree
//!   exists that group becomes the terminal's foreground group;
//! * otherwise (a terminal given by path, or the terminal a requester passed to stasisd: its
//!   restorer leads a session of its own) the root gets a session of its own with that
//!   terminal as its controlling terminal (TIOCSCTTY, never stolen from another session: a
//!   terminal that is one's is refused, saying so), its group in the foreground.
//!
//! With `--pid-ns` the namespace's init is in the restorer's session, so the first case
//! applies; [`pidns::wait_job_in_namespace`] does the waiting.
//!
//! Before the tree runs, the terminal gets the job's dumped termios; once it runs, its
//! foreground group gets SIGWINCH (a new terminal, as if its window changed, so full-screen
//! programs redraw). [`wait_job`] then waits for it as a shell would: when the job stops
//! (Ctrl-Z), the terminal goes back to the restorer's group, which stops too (so the shell
//! that runs it sees a stopped job); when it is continued (`fg`), the job is given the
//! terminal again and continued; when it ends, the terminal goes back to the restorer's
//! group.

pub mod as_user;
pub mod fork;
pub mod load;
pub mod pidns;
pub mod plan;
pub mod rebuild;
pub mod requester;

pub use fork::{ChildFailure, ChildReport};
pub use load::{authenticate, images_authenticated, load, load_chain, verify_images, Loaded};
pub use pidns::{
    restore_in_new_pid_namespace, restore_job_in_new_pid_namespace, wait_job_in_namespace,
    RestoredInNamespace,
};
pub use requester::Requester;

use crate::{inject, Error};
use stasis_image::ImageDir;
use stasis_sys::process;
use stasis_sys::{ptrace, tty, Pid};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The phases of a restore, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Load,
    Plan,
    ForkTree,
    Rebuild,
    Finish,
}

/// The order of the phases of [`restore`].
pub const RESTORE_PHASES: &[Phase] = &[
    Phase::Load,
    Phase::Plan,
    Phase::ForkTree,
    Phase::Rebuild,
    Phase::Finish,
];

impl Phase {
    /// The phase's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Plan => "plan",
            Phase::ForkTree => "fork",
            Phase::Rebuild => "rebuild",
            Phase::Finish => "finish",
        }
    }

    /// The span of the phase (named by the phase, see docs/architecture.md "Logging").
    fn span(self) -> tracing::span::EnteredSpan {
        crate::fault::phase(self.name());
        match self {
            Phase::Load => tracing::info_span!("load"),
            Phase::Plan => tracing::info_span!("plan"),
            Phase::ForkTree => tracing::info_span!("fork"),
            Phase::Rebuild => tracing::info_span!("rebuild"),
            Phase::Finish => tracing::info_span!("finish"),
        }
        .entered()
    }
}

/// What to restore and how.
#[derive(Debug)]
pub struct RestoreOptions {
    pub images: ImageDir,
    /// Set when the restore runs on behalf of someone else than root (through stasisd): the
    /// images must describe a process with exactly that user's credentials, and no restored
    /// thread gets a capability the requester lacks. The calling process must already *be*
    /// the requester (`as_user::enter`, or `as_user::restore_as` which does it all), so
    /// every file is opened, and every process created, with the requester's privileges.
    pub requester: Option<Requester>,
    /// When the dumped process was in a session whose leader was not dumped and the restorer
    /// is not in it, give it a session of its own instead of failing.
    pub new_session: bool,
    /// The image key. When the images carry `auth.img`, it is checked with this key and every
    /// byte the restore reads is checked against it, as it is read (see
    /// [`stasis_image::auth`]); a mismatch fails the restore.
    pub auth: Option<stasis_image::ImageKey>,
    /// Refuse images that cannot be authenticated with `auth` (no `auth.img`, or no key).
    /// stasisd sets it for every requester but root.
    pub require_authenticated: bool,
    /// Fork the root of the tree as a sibling of the calling process (CLONE_PARENT): a child
    /// of the caller's parent. For a restorer process forked for one restore, which exits
    /// afterwards while its parent waits for the restored process (`as_user::restore_as`).
    pub root_as_sibling: bool,
    /// Restore the root's dumped parent-death signal. Its parent is the process that restores
    /// it, not the one it had: a restore whose parent exits (stasisd's worker once a detached
    /// restore is answered) would see it killed at once, so stasisd clears it instead.
    pub root_pdeathsig: bool,
    /// What to do with a file replaced at its path since the dump (default: refuse).
    pub replaced_files: crate::files::ReplacedFiles,
    /// The terminal to attach a tree to whose processes had a terminal outside the tree (a
    /// job started from a shell, see "Terminals" above): `stasis restore`'s own terminal
    /// or one it was given. Unused for images without such a terminal; without it, they are
    /// refused.
    pub terminal: Option<OwnedFd>,
    /// Lazy restore (`--lazy`, see [`crate::pages::lazy`]): private anonymous memory is not
    /// filled before the tree runs but served on first touch, and pushed in the background, by
    /// a page server forked once the tree runs, which exits when every page has arrived.
    /// For root's own restores (the server is detached, outlives the restorer, and holds the
    /// images' pages files open).
    pub lazy: bool,
}

/// A restored process, running. It is a child of the calling process.
#[derive(Debug, Clone)]
pub struct Restored {
    pub pid: Pid,
    /// How long each phase took (`load`, `plan`, `fork`, `rebuild`, `finish`) and, summed
    /// over the processes, each rebuild step (`rebuild.<step name>`, e.g. `rebuild.fill
    /// pages`). Empty when the restore ran in another process (as the images' owner).
    pub timings: crate::timings::Timings,
}

/// Recreates the dumped process tree. Returns once every process runs.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, Error> {
    let _restore =
        tracing::info_span!("restore", images = %opts.images.label().display()).entered();
    let mut timings = crate::timings::Timings::default();
    let started = std::time::Instant::now();
    let phase = Phase::Load.span();
    if let Some(r) = &opts.requester {
        // The files, processes and pids of the restore (and the parents of an incremental
        // dump, opened by the paths in the images) are the requester's only if this process
        // is the requester (as_user::enter).
        let (uids, gids) = stasis_sys::privilege::res_ids();
        if uids.iter().any(|&u| u != r.uid) || gids.iter().any(|&g| g != r.gid) {
            return Err(Error::Internal {
                what: format!(
                    "a restore for uid {} gid {} runs with uids {uids:?} gids {gids:?}: it must run as the requester (restore::as_user)",
                    r.uid, r.gid
                ),
            });
        }
    }
    authenticate(&opts.images, opts.auth.as_ref(), opts.require_authenticated)?;
    // The ancestors of an incremental dump are trusted no more than the dump itself:
    // authenticated when it is; root's alone (or authenticated) when root restores root's
    // images as they are.
    let chain_auth = crate::chain::ChainAuth {
        key: opts.auth.as_ref(),
        required: opts.require_authenticated || opts.images.is_authenticated(),
        root_only_unless_authenticated: opts.requester.is_none() && process::geteuid() == 0,
    };
    let loaded = load::load_chain(&opts.images, chain_auth)?;
    if let Some(r) = &opts.requester {
        for (image, _) in &loaded.processes {
            requester::check_requester(image, r)?;
        }
    }
    load::check_pids_free(&loaded)?;
    let vdso_offset = inject::vdso_syscall_offset()?;
    drop(phase);
    timings.since("load", started);

    let started = std::time::Instant::now();
    let phase = Phase::Plan.span();
    let (mut plan, err_read) = plan::Plan::make(opts, &loaded)?;
    drop(phase);
    timings.since("plan", started);

    // From here the restorer and the processes it forks keep to one CPU (see `crate::cpu`), until
    // the restore is over.
    let one_cpu = crate::cpu::OneCpu::pin();
    let started = std::time::Instant::now();
    let phase = Phase::ForkTree.span();
    // Restore children orphaned by a failure (their parent in the tree died before they were
    // known to the restorer, and they die with it) come back to the restorer, which reaps
    // them, instead of staying zombies of an init that may not reap. As it was afterwards.
    let was_subreaper = process::is_child_subreaper().unwrap_or(true);
    if !was_subreaper {
        let _ = process::set_child_subreaper(true);
    }
    let mut created = fork::Created::default();
    let forked = fork::fork_root(&plan, &mut created);
    // The children hold the restore descriptors now; ours would keep the error pipe open.
    plan.aux.clear();
    let mut reports = fork::ChildReports::new(err_read);
    let forked = forked.and_then(|()| fork::seize_tree(&plan, &mut reports, &mut created));
    drop(phase);
    timings.since("fork", started);

    let (result, lazy) = std::thread::scope(|scope| {
        // A lazy restore: a thread serves the page faults until the page server takes over.
        let helper = if plan.lazy {
            match crate::pages::lazy::Helper::start(scope) {
                Ok(h) => Some(h),
                Err(e) => return (Err(e), None),
            }
        } else {
            None
        };
        let result = forked.and_then(|()| {
            rebuild_and_finish(
                &plan,
                &loaded,
                vdso_offset,
                helper.as_ref(),
                one_cpu.as_ref(),
                &mut timings,
            )
        });
        let lazy = helper.map(|h| h.stop());
        match (result, lazy) {
            // The helper's error (a page it could not serve) says why the rest failed.
            (_, Some(Err(e))) => (Err(e), None),
            (result, lazy) => (result, lazy.and_then(Result::ok)),
        }
    });
    let root = loaded.inventory.root_pid;
    if let Err(e) = result {
        tracing::debug!(error = %e, "restore failed: killing every process it created");
        // Nothing half-built may run: kill every process it created (by pidfd: never a pid
        // another process may hold by now). Those not pinned yet die with their parents.
        created.kill_all();
        // Their userfaultfds are closed only now: a process killed waiting for a page ends.
        drop(lazy);
        // The threads created so far are traced by us: each must be waited for before its
        // leader can be (waiting for the root first hung: found by fault injection).
        for (image, _) in &loaded.processes {
            for t in image.threads.iter().skip(1) {
                while let Ok(ptrace::WaitStatus::Stopped { .. }) = ptrace::waitpid(t.tid, 0) {}
            }
        }
        if !plan.root_as_sibling {
            let _ = ptrace::waitpid(root, 0);
        }
        if !was_subreaper {
            fork::reap_orphans(&plan);
            let _ = process::set_child_subreaper(false);
        }
        return Err(e);
    }
    drop(plan);
    if !was_subreaper {
        let _ = process::set_child_subreaper(false);
    }
    // The page server outlives the restore: made with the restorer's own affinity.
    drop(one_cpu);
    if let Some(server) = lazy {
        // Not a child of a subreaper restorer: detached, it outlives the restorer.
        if let Err(e) = crate::pages::lazy::spawn_server(server) {
            let _ = process::kill(root, libc::SIGKILL);
            return Err(e);
        }
    }
    Ok(Restored { pid: root, timings })
}

/// Phases 4 and 5 of [`restore`]: rebuilds every process, then lets the tree go. A lazy
/// restore hands each process's userfaultfd to `helper` as soon as it is registered.
fn rebuild_and_finish<'a>(
    plan: &plan::Plan<'a>,
    loaded: &Loaded,
    vdso_offset: u64,
    helper: Option<&crate::pages::lazy::Helper<'_, 'a>>,
    one_cpu: Option<&crate::cpu::OneCpu>,
    timings: &mut crate::timings::Timings,
) -> Result<(), Error> {
    {
        let started = std::time::Instant::now();
        let phase = Phase::Rebuild.span();
        let mut to_detach = Vec::new();
        let mut steps = crate::timings::Timings::default();
        for (i, planned) in plan.processes.iter().enumerate() {
            let hand_over = |p| match helper {
                Some(h) => h.add(p, planned.pages.own()),
                None => Err(Error::Internal {
                    what: "a lazy restore without its helper thread".into(),
                }),
            };
            to_detach.extend(rebuild::rebuild(
                plan,
                i,
                vdso_offset,
                &hand_over,
                one_cpu,
                &mut steps,
            )?);
        }
        drop(phase);
        timings.since("rebuild", started);
        timings.entries.extend(steps.entries);
        let started = std::time::Instant::now();
        let _phase = Phase::Finish.span();
        // Every process and thread exists: the owners of I/O signals can be set.
        crate::fault::point("setting the owners of I/O signals")?;
        plan.descriptions
            .set_owners(loaded.processes.iter().map(|(p, _)| p))?;
        // ... and the queued messages that carry their credentials be sent again.
        plan.descriptions.tree_exists()?;
        if let Some(job) = &plan.shell_job {
            attach_terminal(job, loaded)?;
        }
        // Everything is in place: let the whole tree go at once.
        for tid in to_detach {
            crate::fault::point("PTRACE_DETACH")?;
            ptrace::detach(tid, 0).map_err(|e| Error::sys("PTRACE_DETACH", tid, e))?;
        }
        if plan.shell_job.is_some() {
            let root = loaded.inventory.root_pid;
            let group = process::getpgid(root).unwrap_or(root);
            let _ = process::kill(-group, libc::SIGWINCH);
        }
        timings.since("finish", started);
        Ok(())
    }
}

/// Gives the terminal of a shell job the job's termios and, when it is the restorer's
/// controlling terminal, makes the root's group its foreground group.
fn attach_terminal(job: &plan::ShellJob, loaded: &Loaded) -> Result<(), Error> {
    let me = process::getpid();
    if let Some(t) = crate::files::tty::dumped_termios(loaded.processes.iter().map(|(p, _)| p)) {
        tty::tcsetattr(job.fd.as_fd(), &t)
            .map_err(|e| Error::io("setting the job's termios on its terminal (TCSETS)", e))?;
    }
    if job.our_ctty {
        let root = loaded.inventory.root_pid;
        let group = process::getpgid(root).map_err(|e| Error::sys("getpgid", root, e))?;
        tty::tcsetpgrp(job.fd.as_fd(), group).map_err(|e| {
            Error::sys(
                "making its group the terminal's foreground (TIOCSPGRP)",
                group,
                e,
            )
        })?;
        tracing::debug!(
            pid = me,
            group,
            "the job's group is the terminal's foreground group"
        );
    }
    Ok(())
}

/// Waits for a restored shell job (the root `pid`, a child of the caller, in the caller's
/// session) on `terminal`, the caller's controlling terminal, as a shell would: its group has
/// the terminal; when it stops, the terminal goes back to the caller's group and the caller
/// stops itself with SIGSTOP (its shell, or `sudo`, sees a stopped job); on SIGCONT the job
/// gets the terminal again and SIGCONT. Returns its exit code (or 128 + the signal that
/// killed it) once it ends, with the terminal back in the caller's group.
pub fn wait_job(pid: Pid, terminal: BorrowedFd<'_>) -> Result<i32, Error> {
    let mine = process::getpgid(0).map_err(|e| Error::sys("getpgid", 0, e))?;
    let give_back = || {
        let _ = tty::tcsetpgrp(terminal, mine);
    };
    loop {
        let status = match ptrace::waitpid(pid, libc::WUNTRACED) {
            Ok(s) => s,
            Err(e) => {
                give_back();
                return Err(Error::sys("waitpid", pid, e));
            }
        };
        match status {
            ptrace::WaitStatus::Exited(c) => {
                give_back();
                return Ok(c);
            }
            ptrace::WaitStatus::Signaled(s) => {
                give_back();
                return Ok(128 + s);
            }
            ptrace::WaitStatus::Stopped { .. } => {
                let group = process::getpgid(pid).unwrap_or(pid);
                give_back();
                // SIGSTOP, not SIGTSTP: the kernel discards SIGTSTP for an orphaned group (as
                // under `sudo`, whose monitor runs us as a session leader, and which suspends
                // itself when we stop).
                let _ = process::kill(process::getpid(), libc::SIGSTOP);
                // Continued (or never stopped): the job goes on in the foreground.
                let _ = tty::tcsetpgrp(terminal, group);
                let _ = process::kill(-group, libc::SIGCONT);
            }
            ptrace::WaitStatus::Other(_) => continue,
        }
    }
}

/// Waits for a restored process (a child of the caller) to end and returns its exit code, or
/// 128 + the signal that killed it, as a shell would.
pub fn wait_exit_code(pid: Pid) -> Result<i32, Error> {
    loop {
        match ptrace::waitpid(pid, 0).map_err(|e| Error::sys("waitpid", pid, e))? {
            ptrace::WaitStatus::Exited(c) => return Ok(c),
            ptrace::WaitStatus::Signaled(s) => return Ok(128 + s),
            _ => continue,
        }
    }
}
