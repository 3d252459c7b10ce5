//! Restore phase 3: fork the tree. The restorer forks the root with its dumped pid (clone3
//! `set_tid`); every process then forks its own children (and zombies, and stand-in leaders
//! of groups whose leader had died) once the restorer has seized it, so parents, sessions and
//! groups come out as they were. Each child lays out its fd table from the inherited
//! descriptions, sets its own attributes and stops itself for the rebuild.
//!
//! A child that fails reports a [`ChildFailure`] (JSON, one message) on the error pipe and
//! exits; the restorer turns it into an [`Error`] naming the process and what failed.

use super::plan::Plan;
use crate::task::attrs;
use crate::{files, pages};
use crate::{procfs, Error};
use serde::{Deserialize, Serialize};
use stasis_sys::process::{self, Forked, ForkedChild};
use stasis_sys::{ptrace, Pid};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

/// What went wrong in a restore child, as it reports it to the restorer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildFailure {
    /// A pid the tree needs was taken meanwhile (clone3 set_tid: EEXIST).
    PidInUse { pid: Pid },
    /// The restore is not possible here as asked (for example the session is not available).
    Refused { why: String },
    /// A system call failed.
    Sys { op: String, errno: i32 },
    /// Anything else, described.
    Other { what: String },
}

/// A failure of process `pid` of the tree while setting itself up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildReport {
    pub pid: Pid,
    pub failure: ChildFailure,
}

impl ChildReport {
    /// The engine error this report stands for.
    pub fn into_error(self) -> Error {
        let pid = self.pid;
        match self.failure {
            ChildFailure::PidInUse { pid } => Error::PidInUse {
                pid,
                holder: super::load::pid_holder(pid, None),
            },
            ChildFailure::Refused { why } => Error::Refused(why),
            ChildFailure::Sys { op, errno } => Error::Child {
                pid,
                what: format!("{op}: {}", std::io::Error::from_raw_os_error(errno)),
            },
            ChildFailure::Other { what } => Error::Child { pid, what },
        }
    }
}

fn sys(op: &'static str) -> impl Fn(std::io::Error) -> ChildFailure {
    move |e| ChildFailure::Sys {
        op: op.to_string(),
        errno: e.raw_os_error().unwrap_or(0),
    }
}

fn sys_owned(op: String) -> impl FnOnce(std::io::Error) -> ChildFailure {
    move |e| ChildFailure::Sys {
        op,
        errno: e.raw_os_error().unwrap_or(0),
    }
}

fn other(what: &'static str) -> impl Fn(String) -> ChildFailure {
    move |m| ChildFailure::Other {
        what: format!("{what}: {m}"),
    }
}

fn clone_failed(pid: Pid, e: std::io::Error) -> ChildFailure {
    if e.raw_os_error() == Some(libc::EEXIST) {
        ChildFailure::PidInUse { pid }
    } else {
        sys_owned(format!("clone3 for pid {pid}"))(e)
    }
}

/// The processes a restore created, each pinned by a pidfd taken once it was known to be one
/// of the tree's (its parent is the one the plan says): the clean-up of a failed restore
/// signals these and nothing else, never a pid that another process may hold by then.
#[derive(Default)]
pub(crate) struct Created {
    pidfds: Vec<(Pid, OwnedFd)>,
}

impl Created {
    /// Pins `pid` if its parent is `parent`; an error (the pid is in use by another process)
    /// otherwise.
    pub fn adopt(&mut self, pid: Pid, parent: Pid) -> Result<(), Error> {
        let in_use = || Error::PidInUse {
            pid,
            holder: super::load::pid_holder(pid, None),
        };
        let pidfd = process::pidfd_open(pid).map_err(|_| in_use())?;
        // Read after the pidfd pins the process: the parent seen is the pinned one's. A
        // failed read is that error, not "in use" (found by fault injection).
        let ppid = match procfs::read_stat(pid) {
            Ok(s) => s.ppid,
            Err(_) if process::pidfd_send_signal(pidfd.as_fd(), 0).is_err() => 0,
            Err(e) => return Err(e.into()),
        };
        if ppid != parent {
            return Err(in_use());
        }
        self.pidfds.push((pid, pidfd));
        Ok(())
    }

    /// Pins `pid`, a child this process forked and has not reaped: its pid cannot have been
    /// taken by another process, so no check is needed (and the clean-up must reach it
    /// whatever else fails: a root left unpinned waited on its sync pipe and the restorer for
    /// it, forever; found by fault injection).
    pub fn pin_own_child(&mut self, pid: Pid) -> Result<(), Error> {
        let pidfd = process::pidfd_open(pid).map_err(|e| Error::sys("pidfd_open", pid, e))?;
        self.pidfds.push((pid, pidfd));
        Ok(())
    }

    /// SIGKILL to every process created, children before their parents.
    pub fn kill_all(&self) {
        for (_, pidfd) in self.pidfds.iter().rev() {
            let _ = process::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        }
    }
}

/// After a failed restore: reaps the processes of the tree that were orphaned and came back to
/// the restorer (a subreaper meanwhile), waiting a little for those still dying.
pub(crate) fn reap_orphans(plan: &Plan<'_>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for p in &plan.processes {
        let pid = p.image.pid;
        loop {
            match ptrace::waitpid_nohang(pid) {
                Ok(Some(ptrace::WaitStatus::Exited(_)))
                | Ok(Some(ptrace::WaitStatus::Signaled(_))) => break,
                Ok(Some(_)) => continue,
                // Not our child (another process's, or gone): nothing to reap here.
                Err(_) => break,
                Ok(None) if std::time::Instant::now() > deadline => break,
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }
}

/// Forks the root of the tree (which forks the rest). Returns in the restorer only, with the
/// root pinned in `created`.
pub(crate) fn fork_root(plan: &Plan<'_>, created: &mut Created) -> Result<(), Error> {
    let root = plan.loaded.inventory.root_pid;
    crate::fault::point("clone3(set_tid) of the root")?;
    // The root's parent-to-be, known to the child (a copy of this memory) before the fork.
    // (A failed read is that error: read as 0, it sent the root away and the restore failed
    // naming another process; found by fault injection through stasisd.)
    let forker = if plan.root_as_sibling {
        procfs::read_stat(process::getpid())?.ppid
    } else {
        process::getpid()
    };
    let forked = if plan.root_as_sibling {
        process::fork_with_pid_as_sibling(root)
    } else {
        process::fork_with_pid(root)
    };
    match forked {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let comm = plan.processes.first().map(|p| p.image.task.comm.as_str());
            Err(Error::PidInUse {
                pid: root,
                holder: super::load::pid_holder(root, comm),
            })
        }
        Err(e) => Err(Error::sys("clone3(set_tid)", root, e)),
        Ok(Forked::Child(child)) => child_main(&child, plan, 0, forker),
        Ok(Forked::Parent(_)) => {
            // It waits on its sync pipe, alive, until seized: the pid is still ours.
            if !plan.root_as_sibling {
                return created.pin_own_child(root);
            }
            created.adopt(root, forker)
        }
    }
}

/// How long a restore child may take to appear, or to set itself up and stop. Its setup opens
/// nothing (the restorer opened every file) and forks only its own children, so this is
/// generous; it bounds the wait when a child hangs or a parent failed before forking it.
const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The restorer's end of the error pipe, on which failing children write their reports.
pub(crate) struct ChildReports {
    read: OwnedFd,
}

impl ChildReports {
    pub fn new(read: OwnedFd) -> ChildReports {
        ChildReports { read }
    }

    /// Whether some child has written a report.
    fn has_report(&self) -> bool {
        process::poll_readable(&[self.read.as_fd()], 0)
            .map(|r| r.first().copied().unwrap_or(false))
            .unwrap_or(false)
    }

    /// The error for process `pid` that ended or misbehaved (`how`): the report a child
    /// wrote, if any (it names the process that failed, which may be another one). Never
    /// blocks for long: other children may still hold the pipe open.
    pub fn error(&mut self, pid: Pid, how: String) -> Error {
        let mut msg = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
        while msg.len() < 1 << 16 {
            let wait = deadline
                .saturating_duration_since(std::time::Instant::now())
                .as_millis() as i32;
            let readable = process::poll_readable(&[self.read.as_fd()], wait)
                .map(|r| r.first().copied().unwrap_or(false))
                .unwrap_or(false);
            if !readable {
                break;
            }
            let Ok(dup) = self.read.try_clone() else {
                break;
            };
            match File::from(dup).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => msg.extend_from_slice(&buf[..n]),
            }
            // One report is one write: take the first whole one.
            if serde_json::from_slice::<ChildReport>(&msg).is_ok() {
                break;
            }
        }
        let msg = String::from_utf8_lossy(&msg);
        match serde_json::from_str::<ChildReport>(msg.trim()) {
            Ok(report) => report.into_error(),
            Err(_) if msg.is_empty() => Error::Child {
                pid,
                what: format!("the restore process ended early: {how}"),
            },
            Err(_) => Error::Child {
                pid,
                what: msg.into_owned(),
            },
        }
    }
}

/// Seizes every process as it appears, top down (a parent forks its children only once it is
/// seized and woken), then waits until each has stopped itself after its setup. Every wait is
/// bounded, and cut short when a child reports a failure.
pub(crate) fn seize_tree(
    plan: &Plan<'_>,
    reports: &mut ChildReports,
    created: &mut Created,
) -> Result<(), Error> {
    for (i, p) in plan.processes.iter().enumerate() {
        let pid = p.image.pid;
        if !wait_until_exists(pid, reports) {
            return Err(reports.error(pid, "it was never created".into()));
        }
        // The pid is ours only if its parent is the process of the tree that forks it (or,
        // for the root, the restorer or its parent): a process that took the pid meanwhile is
        // never seized, nor killed by the clean-up.
        if i > 0 {
            if let Err(e) = created.adopt(pid, p.image.ppid) {
                // Its parent failed (and died) meanwhile: that failure is the one to report.
                return Err(if reports.has_report() {
                    reports.error(pid, "its parent failed".into())
                } else {
                    e
                });
            }
        }
        crate::fault::point("PTRACE_SEIZE")?;
        ptrace::seize(pid, true).map_err(|e| Error::sys("PTRACE_SEIZE", pid, e))?;
        std::io::Write::write_all(
            &mut File::from(p.sync.1.try_clone().map_err(|e| Error::io("dup", e))?),
            b"g",
        )
        .map_err(|e| Error::io("wake a restore child", e))?;
    }
    for p in &plan.processes {
        let pid = p.image.pid;
        let deadline = std::time::Instant::now() + SETUP_TIMEOUT;
        loop {
            match ptrace::waitpid_nohang(pid).map_err(|e| Error::sys("waitpid", pid, e))? {
                Some(ptrace::WaitStatus::Stopped { sig, .. }) if sig == libc::SIGSTOP => break,
                Some(other) => return Err(reports.error(pid, format!("{other:?}"))),
                None if reports.has_report() => {
                    return Err(reports.error(pid, "another process failed".into()))
                }
                None if std::time::Instant::now() > deadline => {
                    return Err(reports.error(
                        pid,
                        format!(
                            "it did not finish its setup within {} s",
                            SETUP_TIMEOUT.as_secs()
                        ),
                    ))
                }
                None => std::thread::sleep(std::time::Duration::from_micros(200)),
            }
        }
    }
    Ok(())
}

/// Waits until process `pid` exists; false when it does not appear in time or a child
/// reported a failure meanwhile (its parent may have failed before forking it).
fn wait_until_exists(pid: Pid, reports: &ChildReports) -> bool {
    let deadline = std::time::Instant::now() + SETUP_TIMEOUT;
    while !Path::new(&format!("/proc/{pid}")).exists() {
        if std::time::Instant::now() > deadline || reports.has_report() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    true
}

/// Runs in a forked restore child as process `idx` of the tree; never returns.
fn child_main(child: &ForkedChild, plan: &Plan<'_>, idx: usize, parent: Pid) -> ! {
    let failure = match child_setup(child, plan, idx, parent) {
        Ok(()) => ChildFailure::Other {
            what: "child setup returned".into(),
        },
        Err(f) => f,
    };
    let report = ChildReport {
        pid: plan.processes[idx].image.pid,
        failure,
    };
    let text = serde_json::to_string(&report).unwrap_or_default();
    // Before the layout the error pipe is at its own number, after it at base + err_index.
    if child
        .write_raw(plan.base + plan.err_index as RawFd, text.as_bytes())
        .is_err()
    {
        let _ = child.write_raw(plan.aux[plan.err_index].as_raw_fd(), text.as_bytes());
    }
    process::exit_now(1);
}

/// Sets up process `idx` in the freshly forked child: waits to be seized, takes its session,
/// forks its own children (and zombies), lays out its fd table and attributes, then stops.
/// Returns only on failure, with a message for the restorer.
fn child_setup(
    child: &ForkedChild,
    plan: &Plan<'_>,
    idx: usize,
    parent: Pid,
) -> Result<(), ChildFailure> {
    let image = plan.processes[idx].image;
    // Die with the process that forked us, from the start: a parent that fails before the
    // restorer seizes us (and so before the restorer knows us) must not leave us waiting.
    process::prctl_int(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0)
        .map_err(sys("PR_SET_PDEATHSIG"))?;
    // It died before the line above: nobody will wake us. (The root too: a restorer killed
    // right after forking it left it waiting on its sync pipe forever, holding its pid;
    // found by fault injection.)
    if procfs::read_stat(process::getpid()).map_or(0, |s| s.ppid) != parent {
        process::exit_now(1);
    }
    // Wait until the restorer has seized us: stopping before that would not be a ptrace-stop.
    let mut b = [0u8; 1];
    File::from(
        plan.processes[idx]
            .sync
            .0
            .try_clone()
            .map_err(sys("dup of the sync pipe"))?,
    )
    .read_exact(&mut b)
    .map_err(sys("waiting for the restorer"))?;
    process::reset_signal_dispositions().map_err(sys("resetting signal handlers"))?;
    // A traced process stops for every signal delivered to it, even an ignored one (the
    // SIGCHLD of a child that exits): blocked, they wait without stopping us. The dumped mask is
    // set at the end.
    process::block_all_signals().map_err(sys("blocking signals"))?;
    // The session first: children inherit it.
    let ours = process::getsid(0).map_err(sys("getsid"))?;
    // A shell job: the root joins our session when the terminal is ours, else it takes the
    // terminal in a session of its own (see "Terminals" in the restore module).
    let job = plan.shell_job.as_ref().filter(|_| idx == 0);
    let joins_ours = job.is_some_and(|j| j.our_ctty);
    if let Some(j) = job.filter(|j| !j.our_ctty) {
        process::setsid().map_err(sys("setsid"))?;
        stasis_sys::tty::set_controlling_terminal(j.fd.as_fd()).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                // Never stolen (TIOCSCTTY 0): a terminal belongs to one session at a time.
                ChildFailure::Refused {
                    why: "the terminal given to attach the job to is the controlling terminal of \
                          another session (a shell's, say: the kernel gives a terminal to one \
                          session at a time, and never takes it from one here), or it is not \
                          open for reading (TIOCSCTTY: EPERM); give it a terminal that no \
                          session holds, or restore as root in the shell (sudo stasis restore)"
                        .into(),
                }
            } else {
                sys("taking the terminal as controlling terminal (TIOCSCTTY)")(e)
            }
        })?;
    } else if !joins_ours
        && (image.sid == image.pid || (idx == 0 && ours != image.sid && plan.new_session))
    {
        process::setsid().map_err(sys("setsid"))?;
    } else if idx == 0 {
        if ours != image.sid && !joins_ours {
            return Err(ChildFailure::Refused {
                why: format!(
                    "the process was in session {} (not its own); restore it from a process in that session, or allow a new session (--new-session)",
                    image.sid
                ),
            });
        }
        let pgid = if image.pgid == image.pid {
            0
        } else {
            image.pgid
        };
        match process::setpgid(0, pgid) {
            Ok(()) => {}
            // The group it was in is gone (its leader and every other member exited, as the
            // group of a script that started it in the background once the script ends): no
            // group of that id is left to join in this session, and none can be made with
            // another leader's id. It leads a group of its own, as a job of a shell would.
            Err(e) if pgid != 0 && e.raw_os_error() == Some(libc::EPERM) => {
                process::setpgid(0, 0).map_err(sys("setpgid"))?
            }
            Err(e) => return Err(sys_owned(format!("setpgid to {}", image.pgid))(e)),
        }
    } else if image.pgid == image.pid {
        process::setpgid(0, 0).map_err(sys("setpgid"))?;
    } else if process::getpgid(0).ok() != Some(image.pgid) {
        // Join a group that exists by now (led by an ancestor, or by a stand-in for a leader
        // that had died, see below); one that does not exist yet is joined later, by the
        // restorer, once the whole tree exists.
        let _ = process::setpgid(0, image.pgid);
    }
    // Its controlling terminal and foreground group, when a pty of the tree (before its
    // children are forked: they inherit the terminal).
    files::tty::take_terminal_in_child(image, &plan.descriptions)
        .map_err(other("taking its controlling terminal"))?;
    // Private memory shared with its parent or its children, built before the children
    // are forked so that they inherit it copy-on-write (see `pages::cow`).
    pages::cow::prepare_in_child(
        child,
        image,
        &plan.cow.prepared[idx],
        &plan.cow.parking,
        plan.processes[idx].pages,
    )
    .map_err(|e| e.to_string())
    .map_err(other(
        "preparing memory shared copy-on-write with its parent or children",
    ))?;
    // Children (and exited children) in pid order, each with its pid.
    let loaded = plan.loaded;
    let mut kids: Vec<(Pid, Option<usize>, i32)> = loaded
        .processes
        .iter()
        .enumerate()
        .filter(|(_, (p, _))| p.ppid == image.pid && p.pid != image.pid)
        .map(|(j, (p, _))| (p.pid, Some(j), 0))
        .chain(
            loaded
                .inventory
                .zombies
                .iter()
                .filter(|z| z.ppid == image.pid)
                .map(|z| (z.pid, None, z.exit_status)),
        )
        .collect();
    kids.sort();
    let mut made_zombies = false;
    // Process groups whose leader was gone at dump time (and is not in the images): a
    // stand-in process takes the leader's pid just long enough for the members to join.
    let in_tree = |pid: Pid| {
        loaded.processes.iter().any(|(p, _)| p.pid == pid)
            || loaded.inventory.zombies.iter().any(|z| z.pid == pid)
    };
    let mut stand_ins: Vec<(Pid, Vec<Pid>)> = Vec::new();
    for (p, _) in loaded
        .processes
        .iter()
        .filter(|(p, _)| p.ppid == image.pid && p.pid != image.pid)
    {
        if p.pgid != p.pid && p.pgid != image.pgid && !in_tree(p.pgid) {
            match stand_ins.iter_mut().find(|(g, _)| *g == p.pgid) {
                Some((_, members)) => members.push(p.pid),
                None => stand_ins.push((p.pgid, vec![p.pid])),
            }
        }
    }
    for (group, members) in &stand_ins {
        match process::fork_with_pid(*group).map_err(|e| clone_failed(*group, e))? {
            Forked::Child(_) => stand_in_group_leader(members),
            Forked::Parent(_) => {}
        }
        // The members join the group in their own setup: it must exist by then.
        wait_group_exists(*group)?;
    }
    let mut table_sharers = Vec::new();
    for (pid, live, status) in kids {
        // A child that shares our fd table or fs state is created sharing it.
        let (files, fs) = live.map_or((false, false), |j| {
            let k = &loaded.processes[j].0;
            (
                k.shares_fd_table_with == image.pid,
                k.shares_fs_with == image.pid,
            )
        });
        if files {
            table_sharers.push(pid);
        }
        match process::fork_with_pid_sharing(pid, files, fs).map_err(|e| clone_failed(pid, e))? {
            Forked::Child(kid) => match live {
                Some(j) => child_main(&kid, plan, j, plan.processes[j].image.ppid),
                None => exit_like(status),
            },
            Forked::Parent(_) if live.is_none() => {
                // Wait until it is a zombie, leaving it unreaped for the restored parent.
                process::wait_exited_nowait(pid)
                    .map_err(sys_owned(format!("waiting for zombie {pid}")))?;
                made_zombies = true;
            }
            Forked::Parent(_) => {}
        }
    }
    for (group, _) in &stand_ins {
        // It leaves once every member has joined (each does in its own setup).
        process::wait_exited(*group).map_err(sys_owned(format!(
            "waiting for the leader of group {group}"
        )))?;
    }
    if made_zombies || !stand_ins.is_empty() {
        // Their SIGCHLD was not part of the dumped state.
        process::discard_pending_sigchld().map_err(sys("discarding SIGCHLD"))?;
    }
    // Children sharing our fd table must be past their own setup (which reads their sync
    // pipe from this very table) before we lay it out.
    for &pid in &table_sharers {
        wait_until_stopped(pid)?;
    }
    if image.shares_fd_table_with == 0 {
        for (i, fd) in plan.aux.iter().enumerate() {
            child
                .dup3_raw(fd.as_raw_fd(), plan.base + i as RawFd)
                .map_err(sys("dup3 aux fd"))?;
        }
        files::layout_in_child(child, &image.fds, &plan.by_id(), plan.base, plan.park_from)
            .map_err(other("laying out the fd table"))?;
        files::after_layout_in_child(child, image.pid, &image.files, &image.fds)
            .map_err(other("setting up O_ASYNC, epoll and inotify"))?;
    }
    attrs::apply_in_child(
        &image.task,
        image.shares_fs_with != 0,
        &plan.default_rlimits,
        plan.confined,
    )
    .map_err(other("setting cwd, root, umask, rlimits and name"))?;
    process::stop_self().map_err(sys("raise(SIGSTOP)"))?;
    Ok(())
}

/// Waits (from inside the tree) until process `pid` stands stopped for the restorer.
fn wait_until_stopped(pid: Pid) -> Result<(), ChildFailure> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match procfs::read_stat(pid) {
            Ok(s) if s.state == 't' || s.state == 'T' => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(ChildFailure::Other {
                    what: format!("waiting for pid {pid} to finish its setup: {e}"),
                })
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(ChildFailure::Other {
                what: format!("pid {pid} did not finish its setup"),
            });
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Waits until the stand-in leader `group` has made its process group.
fn wait_group_exists(group: Pid) -> Result<(), ChildFailure> {
    let deadline = std::time::Instant::now() + SETUP_TIMEOUT;
    while process::getpgid(group).ok() != Some(group) {
        if std::time::Instant::now() > deadline {
            return Err(ChildFailure::Other {
                what: format!("the stand-in leader of process group {group} did not make it"),
            });
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    Ok(())
}

/// A stand-in leader of a process group whose real leader had died: it creates the group and
/// exits once every member has joined it (or after 30 s, when something went wrong).
fn stand_in_group_leader(members: &[Pid]) -> ! {
    let _ = process::setpgid(0, 0);
    let me = process::getpid();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if members
            .iter()
            .all(|&m| process::getpgid(m).ok() == Some(me))
        {
            process::exit_now(0);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    process::exit_now(1)
}

/// Ends a restored zombie the way the original ended: with its exit code, or killed by its
/// signal (dispositions are at their defaults here).
fn exit_like(status: i32) -> ! {
    let sig = status & 0x7f;
    if sig != 0 && sig != 0x7f {
        // The parent blocked every signal before forking us.
        let _ = process::unblock_all_signals();
        let _ = process::kill(process::getpid(), sig);
    }
    process::exit_now((status >> 8) & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process is adopted (and so ever signalled by a failed restore's clean-up) only when
    /// its parent is the one the plan names: a process that took the pid meanwhile is not.
    #[test]
    fn only_processes_with_the_planned_parent_are_adopted() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as Pid;
        let mut created = Created::default();
        match created.adopt(pid, pid + 1) {
            Err(Error::PidInUse { pid: p, .. }) => assert_eq!(p, pid),
            other => panic!("adopted a process of another parent: {:?}", other.err()),
        }
        assert!(created.pidfds.is_empty());
        created
            .adopt(pid, process::getpid())
            .expect("adopt our own child");
        created.kill_all();
        let status = child.wait().expect("wait for sleep");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}
