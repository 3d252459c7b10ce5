//! Restoring a process, driven entirely from outside with ptrace (see docs/architecture.md).
//!
//! 1. The images are read and validated, and every file the process needs is opened here.
//! 2. The restorer forks a child with the dumped pid (clone3 `set_tid`). The child lays out
//!    its fd table from the inherited descriptions, sets its session, cwd, root, umask,
//!    rlimits, personality and name, resets its signal handlers, and stops itself.
//! 3. The restorer rebuilds the child from inside with injected system calls: moves the vdso
//!    and vvar, unmaps everything else, maps the dumped mappings and fills their pages, sets
//!    the mm fields, signals, timers, thread state and, last, the credentials.
//! 4. Registers and FPU state are set and the child is let go.
//!
//! Any failure kills the child (it is traced with PTRACE_O_EXITKILL, so even a crash of the
//! restorer cannot leave a half-built process running).

use crate::files::{self, memfd};
use crate::inject::{self, Injector};
use crate::task::{attrs, creds, itimers, mm, posix_timers, signals, thread};
use crate::{pages, procfs, Error};
use stasis_image::{
    names, read_record, validate_process, ImageDir, Inventory, ProcessImage, RawReader, RecordKind,
    VmaKind,
};
use stasis_sys::process::{self, Forked};
use stasis_sys::{ptrace, Pid};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What to restore and how.
#[derive(Debug)]
pub struct RestoreOptions {
    pub images: ImageDir,
    /// Set when the restore runs on behalf of someone else than root (through stasisd): the
    /// images must describe a process with exactly that user's credentials, and every file is
    /// opened with that user's permissions.
    pub requester: Option<Requester>,
    /// When the dumped process was in a session whose leader was not dumped and the restorer
    /// is not in it, give it a session of its own instead of failing.
    pub new_session: bool,
}

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
fn check_requester(image: &ProcessImage, r: &Requester) -> Result<(), Error> {
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

/// A restored process, running. It is a child of the calling process.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    pub pid: Pid,
}

/// A loaded, checked image directory: every process (parents before children) with its pages.
pub struct Loaded {
    pub inventory: Inventory,
    pub processes: Vec<(ProcessImage, RawReader)>,
}

/// Loads and checks every record of an image directory, and the shape of the tree.
pub fn load(dir: &ImageDir) -> Result<Loaded, Error> {
    let inventory: Inventory = read_record(dir, names::INVENTORY, RecordKind::Inventory)?;
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
        let image: ProcessImage = read_record(dir, &names::process(pid), RecordKind::Process)?;
        let pages = RawReader::open(dir, &names::pages(pid), RecordKind::Pages)?;
        validate_process(
            &image,
            pages.len(),
            &dir.path_of(&names::process(pid)),
            &files::KindChecks,
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
    // A process sharing its parent's fd table has the same fds, and no children of its own.
    for (p, _) in &processes {
        if p.shares_fd_table_with != 0 {
            let parent = processes
                .iter()
                .map(|(q, _)| q)
                .find(|q| q.pid == p.shares_fd_table_with);
            let same = parent.is_some_and(|q| q.pid == p.ppid && q.fds == p.fds);
            if !same
                || processes
                    .iter()
                    .any(|(q, _)| q.ppid == p.pid && q.pid != p.pid)
            {
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
    })
}

/// What every restore child needs, inherited across the forks that build the tree.
struct TreePlan<'a> {
    loaded: &'a Loaded,
    /// Descriptors the children keep at `base + i`: mapped files, executables, the error pipe.
    aux: Vec<OwnedFd>,
    /// Per process: mapping index -> aux index, and the executable's aux index.
    map_index: Vec<HashMap<usize, usize>>,
    exe_index: Vec<usize>,
    err_index: usize,
    /// One pipe per process: it waits on it until the restorer has seized it.
    sync: Vec<(OwnedFd, OwnedFd)>,
    by_id: HashMap<u32, RawFd>,
    base: RawFd,
    park_from: RawFd,
    new_session: bool,
}

/// Recreates the dumped process tree. Returns once every process runs.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, Error> {
    let loaded = load(&opts.images)?;
    if let Some(r) = &opts.requester {
        for (image, _) in &loaded.processes {
            check_requester(image, r)?;
        }
        // From here on every file is opened with the requester's permissions.
        process::set_fs_identity(r.uid, r.gid, &r.groups)
            .map_err(|e| Error::sys("setfsuid", process::getpid(), e))?;
    }
    let all_pids = loaded
        .processes
        .iter()
        .flat_map(|(p, _)| p.threads.iter().map(|t| t.tid))
        .chain(loaded.inventory.zombies.iter().map(|z| z.pid));
    for pid in all_pids {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::PidInUse { pid });
        }
    }
    let vdso_offset = inject::vdso_syscall_offset()?;

    // Everything the children need, opened here: one description per id for the whole tree,
    // so descriptions shared between processes stay shared.
    let descriptions = files::open_all(&opts.images, loaded.processes.iter().map(|(p, _)| p))?;
    let mut aux: Vec<OwnedFd> = Vec::new();
    let mut map_index = Vec::new();
    let mut exe_index = Vec::new();
    for (image, _) in &loaded.processes {
        let mut mi = HashMap::new();
        for (i, v) in image.vmas.iter().enumerate() {
            if let VmaKind::File { path, dev, ino, .. } = &v.kind {
                let writable = v.shared && v.prot & libc::PROT_WRITE as u32 != 0;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .open(path)
                    .map_err(|e| Error::io(format!("open mapped file {path}"), e))?;
                let md = f
                    .metadata()
                    .map_err(|e| Error::io(format!("fstat {path}"), e))?;
                if (md.dev(), md.ino()) != (*dev, *ino) {
                    return Err(Error::Invalid(format!("mapped file {path} is not the one that was mapped at dump time (its inode changed)")));
                }
                mi.insert(i, aux.len());
                aux.push(f.into());
            }
            if let VmaKind::Memfd { memfd_id } = &v.kind {
                mi.insert(i, aux.len());
                aux.push(memfd::open_for_mapping(&descriptions, *memfd_id)?);
            }
        }
        map_index.push(mi);
        let exe = File::open(&image.task.exe_path)
            .map_err(|e| Error::io(format!("open executable {}", image.task.exe_path), e))?;
        exe_index.push(aux.len());
        aux.push(exe.into());
    }
    let (err_r, err_w) = process::pipe().map_err(|e| Error::io("pipe", e))?;
    let err_index = aux.len();
    aux.push(err_w);
    let mut sync = Vec::new();
    for _ in &loaded.processes {
        sync.push(process::pipe().map_err(|e| Error::io("pipe", e))?);
    }
    // Descriptor numbers: `base` is above every fd we hold and every fd of the images.
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
    let by_id = descriptions.raw_fds();
    let plan = TreePlan {
        loaded: &loaded,
        aux,
        map_index,
        exe_index,
        err_index,
        sync,
        by_id,
        base,
        park_from,
        new_session: opts.new_session,
    };

    let root = loaded.inventory.root_pid;
    match process::fork_with_pid(root) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            return Err(Error::PidInUse { pid: root })
        }
        Err(e) => return Err(Error::sys("clone3(set_tid)", root, e)),
        Ok(Forked::Child) => child_main(&plan, 0),
        Ok(Forked::Parent(_)) => {}
    }
    let TreePlan {
        aux,
        sync,
        map_index,
        exe_index,
        ..
    } = plan;
    let aux_count = aux.len();
    drop(aux);
    let mut err_r = Some(err_r);
    let mut early_error = |pid: Pid, how: String| -> Error {
        let mut msg = String::new();
        if let Some(r) = err_r.take() {
            let _ = File::from(r).read_to_string(&mut msg);
        }
        Error::Invalid(if msg.is_empty() {
            format!("restore process {pid} ended early: {how}")
        } else {
            format!("setting up pid {pid}: {msg}")
        })
    };
    let mut seized: Vec<Pid> = Vec::new();
    let result = (|| {
        // Parents fork their children only once they are seized and woken: go down the tree.
        for (i, (image, _)) in loaded.processes.iter().enumerate() {
            let pid = image.pid;
            wait_until_exists(pid).map_err(|_| early_error(pid, "it was never created".into()))?;
            ptrace::seize(pid, true).map_err(|e| Error::sys("PTRACE_SEIZE", pid, e))?;
            seized.push(pid);
            std::io::Write::write_all(
                &mut File::from(sync[i].1.try_clone().map_err(|e| Error::io("dup", e))?),
                b"g",
            )
            .map_err(|e| Error::io("wake a restore child", e))?;
        }
        for (image, _) in &loaded.processes {
            let pid = image.pid;
            match ptrace::waitpid(pid, 0).map_err(|e| Error::sys("waitpid", pid, e))? {
                ptrace::WaitStatus::Stopped { sig, .. } if sig == libc::SIGSTOP => {}
                other => return Err(early_error(pid, format!("{other:?}"))),
            }
        }
        let mut shmem = pages::ShmemOwners::new();
        for (image, _) in &loaded.processes {
            for v in image.vmas.iter().filter(|v| v.shmem_id != 0) {
                shmem
                    .entry(v.shmem_id)
                    .or_insert((image.pid, v.start, v.end));
            }
        }
        let mut to_detach = Vec::new();
        for (i, (image, pages)) in loaded.processes.iter().enumerate() {
            let parent_pgid = loaded
                .processes
                .iter()
                .find(|(p, _)| p.pid == image.ppid)
                .map(|(p, _)| p.pgid);
            let set_pgid = i != 0 && image.pgid != image.pid && Some(image.pgid) != parent_pgid;
            // Processes sharing an fd table share the restore descriptors in it: the last of
            // them to be rebuilt closes them.
            let table = |p: &ProcessImage| {
                if p.shares_fd_table_with != 0 {
                    p.shares_fd_table_with
                } else {
                    p.pid
                }
            };
            let close_aux = !loaded.processes[i + 1..]
                .iter()
                .any(|(p, _)| table(p) == table(image));
            let parts = RebuildParts {
                base,
                map_index: &map_index[i],
                exe_index: exe_index[i],
                aux_count,
                shmem: &shmem,
                set_pgid,
                close_aux,
            };
            to_detach.extend(rebuild(image.pid, image, pages, vdso_offset, &parts)?);
        }
        // Everything is in place: let the whole tree go at once.
        for tid in to_detach {
            ptrace::detach(tid, 0).map_err(|e| Error::sys("PTRACE_DETACH", tid, e))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Nothing half-built may run: kill every process (traced ones die with us anyway).
        for (image, _) in loaded.processes.iter().rev() {
            let _ = process::kill(image.pid, libc::SIGKILL);
        }
        let _ = ptrace::waitpid(root, 0);
        return Err(e);
    }
    drop(sync);
    drop(descriptions);
    Ok(Restored { pid: root })
}

fn wait_until_exists(pid: Pid) -> Result<(), ()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !Path::new(&format!("/proc/{pid}")).exists() {
        if std::time::Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    Ok(())
}

/// Runs in a forked restore child as process `idx` of the tree; never returns.
fn child_main(plan: &TreePlan<'_>, idx: usize) -> ! {
    let msg = match child_setup(plan, idx) {
        Ok(()) => "child setup returned".to_string(),
        Err(m) => m,
    };
    let pid = plan.loaded.processes[idx].0.pid;
    let text = format!("pid {pid}: {msg}");
    // Before the layout the error pipe is at its own number, after it at base + err_index.
    if process::write_raw(plan.base + plan.err_index as RawFd, text.as_bytes()).is_err() {
        let _ = process::write_raw(plan.aux[plan.err_index].as_raw_fd(), text.as_bytes());
    }
    process::exit_now(1);
}

/// Sets up process `idx` in the freshly forked child: waits to be seized, takes its session,
/// forks its own children (and zombies), lays out its fd table and attributes, then stops.
/// Returns only on failure, with a message for the restorer.
fn child_setup(plan: &TreePlan<'_>, idx: usize) -> Result<(), String> {
    let image = &plan.loaded.processes[idx].0;
    // Wait until the restorer has seized us: stopping before that would not be a ptrace-stop.
    let mut b = [0u8; 1];
    File::from(plan.sync[idx].0.try_clone().map_err(|e| e.to_string())?)
        .read_exact(&mut b)
        .map_err(|e| format!("waiting for the restorer: {e}"))?;
    process::prctl_int(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0)
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    process::reset_signal_dispositions().map_err(|e| format!("resetting signal handlers: {e}"))?;
    // A traced process stops for every signal delivered to it, even an ignored one (the
    // SIGCHLD of a child that exits): blocked, they wait without stopping us. The dumped mask is
    // set at the end.
    process::block_all_signals().map_err(|e| format!("blocking signals: {e}"))?;
    // The session first: children inherit it.
    let ours = process::getsid(0).map_err(|e| format!("getsid: {e}"))?;
    if image.sid == image.pid || (idx == 0 && ours != image.sid && plan.new_session) {
        process::setsid().map_err(|e| format!("setsid: {e}"))?;
    } else if idx == 0 {
        if ours != image.sid {
            return Err(format!(
                "the process was in session {} (not its own); restore it from a process in that session, or allow a new session (--new-session)",
                image.sid
            ));
        }
        let pgid = if image.pgid == image.pid {
            0
        } else {
            image.pgid
        };
        process::setpgid(0, pgid).map_err(|e| format!("setpgid to {}: {e}", image.pgid))?;
    } else if image.pgid == image.pid {
        process::setpgid(0, 0).map_err(|e| format!("setpgid: {e}"))?;
    } else if process::getpgid(0).ok() != Some(image.pgid) {
        // Join a group that exists by now (led by an ancestor, or by a stand-in for a leader
        // that had died, see below); one that does not exist yet is joined later, by the
        // restorer, once the whole tree exists.
        let _ = process::setpgid(0, image.pgid);
    }
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
        match process::fork_with_pid(*group)
            .map_err(|e| format!("clone3 for the leader of group {group}: {e}"))?
        {
            Forked::Child => stand_in_group_leader(members),
            Forked::Parent(_) => {}
        }
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
        match process::fork_with_pid_sharing(pid, files, fs)
            .map_err(|e| format!("clone3 for pid {pid}: {e}"))?
        {
            Forked::Child => match live {
                Some(j) => child_main(plan, j),
                None => exit_like(status),
            },
            Forked::Parent(_) if live.is_none() => {
                // Wait until it is a zombie, leaving it unreaped for the restored parent.
                process::wait_exited_nowait(pid)
                    .map_err(|e| format!("waiting for zombie {pid}: {e}"))?;
                made_zombies = true;
            }
            Forked::Parent(_) => {}
        }
    }
    for (group, _) in &stand_ins {
        // It leaves once every member has joined (each does in its own setup).
        process::wait_exited(*group)
            .map_err(|e| format!("waiting for the leader of group {group}: {e}"))?;
    }
    if made_zombies || !stand_ins.is_empty() {
        // Their SIGCHLD was not part of the dumped state.
        process::discard_pending_sigchld().map_err(|e| format!("discarding SIGCHLD: {e}"))?;
    }
    // Children sharing our fd table must be past their own setup (which reads their sync
    // pipe from this very table) before we lay it out.
    for &pid in &table_sharers {
        wait_until_stopped(pid)?;
    }
    if image.shares_fd_table_with == 0 {
        for (i, fd) in plan.aux.iter().enumerate() {
            process::dup3_raw(fd.as_raw_fd(), plan.base + i as RawFd)
                .map_err(|e| format!("dup3 aux fd: {e}"))?;
        }
        files::layout_in_child(&image.fds, &plan.by_id, plan.base, plan.park_from)?;
        files::after_layout_in_child(image.pid, &image.files, &image.fds)?;
    }
    attrs::apply_in_child(&image.task, image.shares_fs_with != 0)?;
    process::stop_self().map_err(|e| format!("raise(SIGSTOP): {e}"))?;
    Ok(())
}

/// Waits (from inside the tree) until process `pid` stands stopped for the restorer.
fn wait_until_stopped(pid: Pid) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match procfs::read_stat(pid) {
            Ok(s) if s.state == 't' || s.state == 'T' => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for pid {pid} to finish its setup: {e}")),
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("pid {pid} did not finish its setup"));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
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

/// The per-process descriptors and choices [`rebuild`] needs.
struct RebuildParts<'a> {
    base: RawFd,
    map_index: &'a HashMap<usize, usize>,
    exe_index: usize,
    aux_count: usize,
    shmem: &'a pages::ShmemOwners,
    /// Join a process group that did not exist when the process was forked.
    set_pgid: bool,
    /// Close the restore descriptors at the end (not while another process sharing this fd
    /// table still needs them).
    close_aux: bool,
}

/// Rebuilds the stopped child from inside. `base + i` is the child's descriptor of aux entry
/// `i` (mapped files, then the executable, then the error pipe).
#[allow(clippy::too_many_arguments)]
fn rebuild(
    child: Pid,
    image: &ProcessImage,
    pages: &RawReader,
    vdso_offset: u64,
    parts: &RebuildParts<'_>,
) -> Result<Vec<Pid>, Error> {
    let RebuildParts {
        base,
        map_index,
        exe_index,
        aux_count,
        shmem,
        set_pgid,
        close_aux,
    } = *parts;
    let child_vdso = procfs::read_smaps(child)?
        .into_iter()
        .find(|m| m.name == "[vdso]")
        .ok_or_else(|| Error::Unsupported {
            what: "the restore child has no [vdso]".into(),
        })?;
    let syscall_ip = child_vdso.start + vdso_offset;
    let mut inj = Injector::new(child, syscall_ip)?;
    ptrace::set_sigmask(child, u64::MAX).map_err(|e| Error::sys("PTRACE_SETSIGMASK", child, e))?;
    thread::unregister_inherited_rseq(&mut inj)?;
    pages::move_specials(&mut inj, &image.vmas, vdso_offset)?;
    pages::unmap_all_but_specials(&mut inj, &image.vmas)?;
    inj.forget_scratch();
    let scratch = pages::free_scratch_address(&image.vmas, inject::SCRATCH_LEN)?;
    inj.map_scratch(Some(scratch))?;
    let file_fds: HashMap<usize, i32> = map_index
        .iter()
        .map(|(&vma, &aux)| (vma, base + aux as i32))
        .collect();
    pages::map_vmas(&mut inj, &image.vmas, &image.page_runs, &file_fds, shmem)?;
    pages::fill_pages(child, &image.page_runs, pages)?;
    pages::finish_protections(&mut inj, &image.vmas, &image.page_runs)?;
    // The child's exe link is the restorer's executable. When that is also the dumped
    // process's executable it is already right (and the kernel refuses to replace an exe
    // that is still mapped).
    let exe_fd = if same_file(&image.task.exe_path, "/proc/self/exe") {
        -1
    } else {
        base + exe_index as i32
    };
    mm::restore(&mut inj, &image.mm, exe_fd)?;
    signals::restore(&mut inj, child, &image.signals)?;
    itimers::restore(&mut inj, &image.itimers)?;
    let leader = &image.threads[0];
    thread::restore_in_thread(&mut inj, child, leader)?;
    if close_aux {
        inj.call(
            "close_range(restore fds)",
            libc::SYS_close_range,
            [
                base as u64,
                (base as u64) + aux_count as u64 - 1,
                0,
                0,
                0,
                0,
            ],
        )?;
    }
    // The other threads, created by the leader while it still has every privilege
    // (clone3 with set_tid needs it); each then gets its own per-thread state.
    let mut others = Vec::with_capacity(image.threads.len() - 1);
    for t in &image.threads[1..] {
        thread::create_thread(&mut inj, t.tid)?;
        // The vdso has moved since the leader's injector was made: ask it where it is now.
        let mut tinj = Injector::new(t.tid, inj.syscall_ip())?;
        tinj.share_scratch(scratch);
        ptrace::set_sigmask(t.tid, u64::MAX)
            .map_err(|e| Error::sys("PTRACE_SETSIGMASK", t.tid, e))?;
        thread::restore_in_thread(&mut tinj, child, t)?;
        others.push((tinj, t));
    }
    // After the threads exist (a timer may signal one of them), before the credentials.
    posix_timers::restore(&mut inj, &image.posix_timers)?;
    // Credentials are per thread: every thread gets them, the leader last.
    for (tinj, t) in &mut others {
        creds::restore(tinj, &image.creds)?;
        thread::restore_name(tinj, &t.comm)?;
    }
    if set_pgid {
        inj.call(
            "setpgid",
            libc::SYS_setpgid,
            [0, image.pgid as u64, 0, 0, 0, 0],
        )?;
    }
    creds::restore(&mut inj, &image.creds)?;
    attrs::restore_prctl(&mut inj, &image.task)?;
    // No system call runs in a thread after its restore_final: pending signals stay queued.
    for (mut tinj, t) in others {
        tinj.forget_scratch();
        thread::restore_final(&mut tinj, t)?;
        tinj.finish()?;
    }
    inj.unmap_scratch()?;
    thread::restore_final(&mut inj, leader)?;
    inj.finish()?;
    // The caller detaches every thread once the whole tree is rebuilt.
    let mut tids: Vec<Pid> = image.threads[1..].iter().map(|t| t.tid).collect();
    tids.push(child);
    Ok(tids)
}

fn same_file(a: &str, b: &str) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
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

/// A tree restored in a pid namespace of its own (`--pid-ns`).
#[derive(Debug, Clone, Copy)]
pub struct RestoredInNamespace {
    /// The namespace's init, a child of the caller (its pid in the caller's namespace). It
    /// exits with the root's exit status once the root has exited.
    pub init: Pid,
    /// The root's pid (the dumped one), as seen inside the namespace.
    pub root: Pid,
}

/// Restores the tree in a new pid namespace (and a new mount namespace with its own /proc),
/// under a minimal init: the processes keep their dumped pids inside, whatever runs outside, so
/// the same images can be restored many times side by side.
pub fn restore_in_new_pid_namespace(opts: &RestoreOptions) -> Result<RestoredInNamespace, Error> {
    let (r, w) = process::pipe().map_err(|e| Error::io("pipe", e))?;
    match process::fork_into_new_pid_ns()
        .map_err(|e| Error::sys("clone3(CLONE_NEWPID)", process::getpid(), e))?
    {
        Forked::Child => {
            drop(r);
            let mut w = File::from(w);
            let restored = process::mount_private_proc()
                .map_err(|e| {
                    Error::sys("mounting /proc in the new namespace", process::getpid(), e)
                })
                .and_then(|()| restore(opts));
            match restored {
                Ok(rs) => {
                    let _ = std::io::Write::write_all(&mut w, format!("ok {}", rs.pid).as_bytes());
                    drop(w);
                    process::exit_now(minimal_init(rs.pid));
                }
                Err(e) => {
                    let _ = std::io::Write::write_all(&mut w, format!("error {e}").as_bytes());
                    process::exit_now(1);
                }
            }
        }
        Forked::Parent(init) => {
            drop(w);
            let mut answer = String::new();
            let _ = File::from(r).read_to_string(&mut answer);
            if let Some(pid) = answer.strip_prefix("ok ").and_then(|p| p.parse().ok()) {
                return Ok(RestoredInNamespace { init, root: pid });
            }
            let _ = ptrace::waitpid(init, 0);
            Err(Error::Invalid(
                answer
                    .strip_prefix("error ")
                    .unwrap_or("the namespace init ended without restoring")
                    .to_string(),
            ))
        }
    }
}

/// The namespace's init: reaps every orphan, and exits with the root's status when the root
/// ends (the kernel then ends whatever else runs in the namespace).
fn minimal_init(root: Pid) -> i32 {
    loop {
        match ptrace::waitpid(-1, 0) {
            Ok(ptrace::WaitStatus::Exited(c)) if is_root_gone(root) => return c,
            Ok(ptrace::WaitStatus::Signaled(s)) if is_root_gone(root) => return 128 + s,
            Ok(_) => continue,
            Err(_) => return 0,
        }
    }
}

fn is_root_gone(root: Pid) -> bool {
    !Path::new(&format!("/proc/{root}")).exists()
}
