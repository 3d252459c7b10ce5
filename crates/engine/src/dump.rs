//! Dumping a process: freeze, collect every resource, write the images, then kill the process
//! or let it run on.
//!
//! Order matters for the guarantees: everything that can refuse the dump (unsupported fds or
//! mappings) is checked before any file is created; the inventory is written last and
//! atomically, so a directory without it is never taken for a complete dump; on any failure
//! the files written so far are removed and the process is thawed with its registers and
//! signal mask as they were.

use crate::freeze::Frozen;
use crate::inject::{self, Injector};
use crate::{creds, files, memory, mm, procfs, signals, task, thread, timers, Error};
use stasis_image::{
    names, write_record_atomic, ImageDir, Inventory, ProcessImage, RawWriter, RecordKind, VmaKind,
};
use stasis_sys::{process, ptrace, Pid};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

/// What to dump and how.
#[derive(Debug)]
pub struct DumpOptions {
    pub pid: Pid,
    /// A pidfd of the process obtained by the caller (for example from SO_PEERPIDFD): when
    /// given, the dump refuses to go on unless this very process is the one frozen.
    pub pidfd: Option<OwnedFd>,
    /// Where the images go.
    pub images: ImageDir,
    /// Let the process run on after the dump instead of killing it.
    pub leave_running: bool,
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
    let dir = &opts.images;
    if dir.exists(names::INVENTORY) {
        return Err(Error::Invalid(format!(
            "{} already holds a complete dump; use an empty directory",
            dir.label().display()
        )));
    }
    let vdso_offset = inject::vdso_syscall_offset()?;

    let frozen_at = Instant::now();
    let mut frozen = Frozen::freeze(pid)?;
    // The pid was pinned by a pidfd: if that process is gone, the pid may have been reused
    // and what we froze is another process.
    if process::pidfd_send_signal(pidfd.as_fd(), 0).is_err() {
        return Err(Error::NoSuchProcess { pid });
    }
    let mut written: Vec<String> = Vec::new();
    let mut frozen_for = None;
    let result = (|| {
        let (mappings, page_bytes) = collect_and_write(
            pid,
            &pidfd,
            &frozen,
            vdso_offset,
            dir,
            opts.service.as_ref(),
            &mut written,
        )?;
        // A process that runs on need not wait for the disk; one that is killed stays frozen
        // until its images are durable, so a failure here still leaves it alive.
        if opts.leave_running {
            frozen.thaw()?;
            frozen_for = Some(frozen_at.elapsed());
        }
        for name in &written {
            dir.sync_file(name)?;
        }
        write_inventory(dir, pid)?;
        Ok::<_, Error>((mappings, page_bytes))
    })();
    match result {
        Ok((mappings, page_bytes)) => {
            if !opts.leave_running {
                frozen.kill()?;
            }
            Ok(DumpReport {
                pid,
                mappings,
                page_bytes,
                frozen: frozen_for.unwrap_or_else(|| frozen_at.elapsed()),
            })
        }
        Err(e) => {
            for name in written {
                let _ = dir.remove(&name);
            }
            drop(frozen); // detaches (unless already done): the process runs on
            Err(e)
        }
    }
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
    let finished = inj.finish();
    let restored_mask =
        ptrace::set_sigmask(tid, mask).map_err(|e| Error::sys("PTRACE_SETSIGMASK", tid, e));
    let mut t = dumped?;
    finished?;
    restored_mask?;
    t.sigmask = mask;
    Ok(t)
}

/// Writes the inventory: the last file, whose presence marks the dump complete.
fn write_inventory(dir: &ImageDir, pid: Pid) -> Result<(), Error> {
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: procfs::kernel_release(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        root_pid: pid,
        processes: vec![pid],
    };
    Ok(write_record_atomic(
        dir,
        names::INVENTORY,
        RecordKind::Inventory,
        &inventory,
    )?)
}

fn collect_and_write(
    pid: Pid,
    pidfd: &OwnedFd,
    frozen: &Frozen,
    vdso_offset: u64,
    dir: &ImageDir,
    service: Option<&ServiceConnection>,
    written: &mut Vec<String>,
) -> Result<(usize, u64), Error> {
    let stat = procfs::read_stat(pid)?;
    let status = procfs::read_status(pid)?;
    if status.seccomp == 2 {
        return Err(Error::Unsupported {
            what: format!("pid {pid} uses seccomp filters"),
        });
    }
    // Everything that can refuse the dump comes before any file is created.
    let vmas = memory::collect_vmas(pid)?;
    let dumped_files = files::dump(pid, pidfd, service)?;
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
        let itimers = timers::dump(&mut inj)?;
        let creds = creds::dump(&status, &mut inj)?;
        let task = task::dump(pid, &status, &mut inj)?;
        Ok::<_, Error>((mm, threads, sigs, itimers, creds, task))
    })();
    // Put the thread back as it was whatever happened.
    let finished = inj.finish();
    let restored_mask =
        ptrace::set_sigmask(leader, mask).map_err(|e| Error::sys("PTRACE_SETSIGMASK", leader, e));
    let (mm, threads, signals, itimers, creds, task) = asked?;
    finished?;
    restored_mask?;

    let pages_name = names::pages(pid);
    let mut pages = RawWriter::create(dir, &pages_name, RecordKind::Pages)?;
    written.push(pages_name);
    let page_runs = memory::dump_pages(pid, &vmas, &mut pages)?;
    let page_bytes = pages.finish()?;
    written.extend(files::write_blobs(
        dir,
        &dumped_files.blobs,
        &dumped_files.files,
    )?);

    let image = ProcessImage {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgid,
        sid: stat.sid,
        task,
        creds,
        mm,
        vmas,
        page_runs,
        files: dumped_files.files,
        fds: dumped_files.fds,
        signals,
        itimers,
        threads,
    };
    let mappings = image.vmas.len();
    let process_name = names::process(pid);
    write_record_atomic(dir, &process_name, RecordKind::Process, &image)?;
    written.push(process_name);
    Ok((mappings, page_bytes))
}
