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

use crate::inject::{self, Injector};
use crate::{creds, files, memory, mm, procfs, signals, task, thread, timers, Error};
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

/// Loads and checks every record of an image directory.
pub fn load(dir: &ImageDir) -> Result<(Inventory, ProcessImage, RawReader), Error> {
    let inventory: Inventory = read_record(dir, names::INVENTORY, RecordKind::Inventory)?;
    if inventory.processes.len() != 1 || inventory.processes[0] != inventory.root_pid {
        return Err(Error::Unsupported {
            what: format!(
                "the images hold {} processes; restoring process trees is not supported yet",
                inventory.processes.len()
            ),
        });
    }
    let pid = inventory.root_pid;
    let image: ProcessImage = read_record(dir, &names::process(pid), RecordKind::Process)?;
    let pages = RawReader::open(dir, &names::pages(pid), RecordKind::Pages)?;
    validate_process(&image, pages.len(), &dir.path_of(&names::process(pid)))?;
    if image.pid != pid {
        return Err(Error::Invalid(format!(
            "{} describes pid {}, the inventory says {pid}",
            names::process(pid),
            image.pid
        )));
    }
    Ok((inventory, image, pages))
}

/// Recreates the dumped process. Returns once it runs.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, Error> {
    let (_inventory, image, pages) = load(&opts.images)?;
    let pid = image.pid;
    if let Some(r) = &opts.requester {
        check_requester(&image, r)?;
        // From here on every file is opened with the requester's permissions.
        process::set_fs_identity(r.uid, r.gid, &r.groups)
            .map_err(|e| Error::sys("setfsuid", process::getpid(), e))?;
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::PidInUse { pid });
    }
    let vdso_offset = inject::vdso_syscall_offset()?;

    // Everything the child needs, opened here.
    let descriptions = files::open_all(&opts.images, &image.files)?;
    let mut aux: Vec<OwnedFd> = Vec::new();
    let mut map_index: HashMap<usize, usize> = HashMap::new();
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
            map_index.insert(i, aux.len());
            aux.push(f.into());
        }
    }
    let exe = File::open(&image.task.exe_path)
        .map_err(|e| Error::io(format!("open executable {}", image.task.exe_path), e))?;
    let exe_index = aux.len();
    aux.push(exe.into());
    let (err_r, err_w) = process::pipe().map_err(|e| Error::io("pipe", e))?;
    let err_index = aux.len();
    aux.push(err_w);
    let (sync_r, sync_w) = process::pipe().map_err(|e| Error::io("pipe", e))?;

    // Descriptor numbers: `base` is above every fd we hold and every fd of the image.
    let own_max = procfs::list_fds(process::getpid())?
        .into_iter()
        .max()
        .unwrap_or(0);
    let image_max = image.fds.iter().map(|f| f.fd).max().unwrap_or(0);
    let base = own_max.max(image_max) + 1;
    let aux_count = aux.len();
    let park_from = base + aux_count as RawFd;
    let by_id: HashMap<u32, RawFd> = descriptions
        .iter()
        .map(|(id, fd)| (*id, fd.as_raw_fd()))
        .collect();

    let child = match process::fork_with_pid(pid) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(Error::PidInUse { pid }),
        Err(e) => return Err(Error::sys("clone3(set_tid)", pid, e)),
        Ok(Forked::Child) => {
            let msg = match child_setup(
                &image,
                &aux,
                base,
                park_from,
                &by_id,
                &sync_r,
                opts.new_session,
            ) {
                Ok(()) => "child setup returned".to_string(),
                Err(m) => m,
            };
            let _ = process::write_raw(base + err_index as RawFd, msg.as_bytes());
            process::exit_now(1);
        }
        Ok(Forked::Parent(child)) => child,
    };
    drop(aux);
    drop(sync_r);
    let result = (|| {
        ptrace::seize(child, true).map_err(|e| Error::sys("PTRACE_SEIZE", child, e))?;
        std::io::Write::write_all(&mut File::from(sync_w), b"g")
            .map_err(|e| Error::io("wake the restore child", e))?;
        match ptrace::waitpid(child, 0).map_err(|e| Error::sys("waitpid", child, e))? {
            ptrace::WaitStatus::Stopped { sig, .. } if sig == libc::SIGSTOP => {}
            other => {
                let mut msg = String::new();
                let _ = File::from(err_r).read_to_string(&mut msg);
                return Err(Error::Invalid(if msg.is_empty() {
                    format!("restore child {child} ended early: {other:?}")
                } else {
                    format!("setting up pid {child}: {msg}")
                }));
            }
        }
        rebuild(
            child,
            &image,
            &pages,
            vdso_offset,
            base,
            &map_index,
            exe_index,
            aux_count,
        )
    })();
    if let Err(e) = result {
        let _ = process::kill(child, libc::SIGKILL);
        let _ = ptrace::waitpid(child, 0);
        return Err(e);
    }
    drop(descriptions);
    Ok(Restored { pid: child })
}

/// Runs in the forked child: lays out the fd table and per-process attributes, then stops.
/// Returns only on failure, with a message for the restorer.
fn child_setup(
    image: &ProcessImage,
    aux: &[OwnedFd],
    base: RawFd,
    park_from: RawFd,
    by_id: &HashMap<u32, RawFd>,
    sync_r: &OwnedFd,
    new_session: bool,
) -> Result<(), String> {
    // Wait until the restorer has seized us: stopping before that would not be a ptrace-stop.
    let mut b = [0u8; 1];
    File::from(sync_r.try_clone().map_err(|e| e.to_string())?)
        .read_exact(&mut b)
        .map_err(|e| format!("waiting for the restorer: {e}"))?;
    process::prctl_int(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0)
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    process::reset_signal_dispositions().map_err(|e| format!("resetting signal handlers: {e}"))?;
    for (i, fd) in aux.iter().enumerate() {
        process::dup3_raw(fd.as_raw_fd(), base + i as RawFd)
            .map_err(|e| format!("dup3 aux fd: {e}"))?;
    }
    files::layout_in_child(&image.fds, by_id, base, park_from)?;
    let ours = process::getsid(0).map_err(|e| format!("getsid: {e}"))?;
    if image.sid == image.pid || (ours != image.sid && new_session) {
        process::setsid().map_err(|e| format!("setsid: {e}"))?;
    } else {
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
    }
    task::apply_in_child(&image.task)?;
    process::stop_self().map_err(|e| format!("raise(SIGSTOP): {e}"))?;
    Ok(())
}

/// Rebuilds the stopped child from inside. `base + i` is the child's descriptor of aux entry
/// `i` (mapped files, then the executable, then the error pipe).
#[allow(clippy::too_many_arguments)]
fn rebuild(
    child: Pid,
    image: &ProcessImage,
    pages: &RawReader,
    vdso_offset: u64,
    base: RawFd,
    map_index: &HashMap<usize, usize>,
    exe_index: usize,
    aux_count: usize,
) -> Result<(), Error> {
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
    memory::move_specials(&mut inj, &image.vmas, vdso_offset)?;
    memory::unmap_all_but_specials(&mut inj, &image.vmas)?;
    inj.forget_scratch();
    let scratch = memory::free_scratch_address(&image.vmas, inject::SCRATCH_LEN)?;
    inj.map_scratch(Some(scratch))?;
    let file_fds: HashMap<usize, i32> = map_index
        .iter()
        .map(|(&vma, &aux)| (vma, base + aux as i32))
        .collect();
    memory::map_vmas(&mut inj, &image.vmas, &image.page_runs, &file_fds)?;
    memory::fill_pages(child, &image.page_runs, pages)?;
    memory::finish_protections(&mut inj, &image.vmas, &image.page_runs)?;
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
    timers::restore(&mut inj, &image.itimers)?;
    let leader = &image.threads[0];
    thread::restore_in_thread(&mut inj, child, leader)?;
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
    // Credentials are per thread: every thread gets them, the leader last.
    for (tinj, t) in &mut others {
        creds::restore(tinj, &image.creds)?;
        thread::restore_name(tinj, &t.comm)?;
    }
    creds::restore(&mut inj, &image.creds)?;
    task::restore_prctl(&mut inj, &image.task)?;
    // No system call runs in a thread after its restore_final: pending signals stay queued.
    for (mut tinj, t) in others {
        tinj.forget_scratch();
        thread::restore_final(&mut tinj, t)?;
        tinj.finish()?;
    }
    inj.unmap_scratch()?;
    thread::restore_final(&mut inj, leader)?;
    inj.finish()?;
    for t in &image.threads[1..] {
        ptrace::detach(t.tid, 0).map_err(|e| Error::sys("PTRACE_DETACH", t.tid, e))?;
    }
    ptrace::detach(child, 0).map_err(|e| Error::sys("PTRACE_DETACH", child, e))?;
    Ok(())
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
