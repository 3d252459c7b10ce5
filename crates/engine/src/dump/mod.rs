//! Dumping a process and its descendants, in the phases of [`DUMP_PHASES`]:
//!
//! 1. freeze ([`freeze`]): every thread of every process of the tree seized and stopped,
//!    top-down; the caller's admission check runs on each process;
//!
//!    pre-copy (a dump that lets the tree run on, unless `DumpOptions::pre_copy` is off): a
//!    userfaultfd is made in each process and the tree thawed at once; the memory is copied
//!    while the tree runs, in passes that each copy what the previous one saw written
//!    ([`crate::pages::precopy`]); then the tree is frozen again (and admitted again) for
//!    the rest, and the write phase copies only what was written since the last pass;
//! 2. collect ([`collect`](mod@collect)): every process read into its image, all checks first;
//!
//!    pages ([`page_copy`]): alongside collect, a thread of its own copies each process's
//!    pages into its pages file as soon as collect has read its mappings (an incremental
//!    dump, [`DumpOptions::parent`], writes only the pages changed since its parent);
//! 3. write ([`write`](mod@write)): once the pages are copied, blobs and records written;
//! 4. sync: a process that runs on is thawed first; the files are made durable and the
//!    inventory is written last;
//! 5. release: the tree is killed (default) or left running.
//!
//! TCP connections (files::tcp) are put in repair mode during collect, behind an nftables rule
//! that holds off their peers' packets ([`crate::files::DumpHolds`]); a dump that fails or
//! lets the tree run on releases them before thawing it, a dump that kills the tree leaves the
//! rule for the restore to remove. Deleted files that keep links elsewhere get a hard link of
//! their own during collect (files::link_remap), removed again unless the dump completes.
//!
//! Order matters for the guarantees: everything that can refuse the dump (unsupported fds or
//! mappings, pipes leading out of the tree) is checked for every process before any file but
//! the pages files is created (those are removed again, the copy stopped); the inventory is
//! written last and atomically, so a directory without it is never taken for a complete
//! dump; on any failure the files written so far are removed and every process is thawed
//! with its registers and signal masks as they were.

pub mod collect;
pub mod freeze;
pub mod page_copy;
pub mod write;

use crate::timings::Timings;
use crate::{inject, pages, procfs, Error};
use freeze::{Frozen, FrozenTree};
use stasis_image::{names, ImageDir, RawWriter, RecordKind};
use stasis_sys::{process, Pid};
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
    /// What to do with established TCP connections (files::tcp).
    pub tcp: TcpConnections,
    /// Authenticate the images with this key: every file gets a MAC, listed in `auth.img`
    /// (see [`stasis_image::auth`]). stasisd always sets it; without it, the images can be
    /// restored by root only.
    pub auth: Option<stasis_image::ImageKey>,
    /// Restore a unix socket connected to a socket outside the dumped tree as a connection
    /// whose peer closed, instead of refusing the dump (engine::files::unix_socket).
    pub unix_peers_closed: bool,
    /// Store page runs as zstd frames (`stasis dump --compress`, see
    /// [`crate::pages::compress`]); `None`: raw. Restore and `stasis show` read either. A
    /// compressed dump that pre-copies writes the pages raw into scratch files while the tree
    /// runs, and compresses them into the pages files once it runs on again (as an
    /// incremental one compares them with its parent then).
    pub compress: Option<crate::pages::compress::Compression>,
    /// With `leave_running`: copy the memory while the tree runs (write tracking, see
    /// [`crate::pages::precopy`]) so that it is stopped only briefly. Off: the tree stays
    /// frozen while all its memory is copied.
    pub pre_copy: bool,
    /// Make an incremental dump on top of the dump in this directory (`stasis dump --parent`):
    /// only the pages changed since it are written (see [`crate::chain`]).
    pub parent: Option<std::path::PathBuf>,
}

/// What a dump does with established TCP connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TcpConnections {
    /// Dump them in repair mode, holding their peers off until the restore (the default).
    #[default]
    Repair,
    /// Record them as closed (`stasis dump --tcp-closed`): no repair mode, no nftables rule;
    /// they are reset when the processes are killed (SO_LINGER 0: the peers see a reset, and
    /// no TIME_WAIT keeps a restored listener from its port), and the restore gives the
    /// program a TCP socket closed both ways (reads return end-of-file, writes fail with
    /// EPIPE, poll reports POLLHUP). A dump that lets the processes run on leaves them alone.
    Closed,
    /// Refuse them, naming each (stasisd, for a caller of this uid, whose restore could not
    /// put them back: TCP_REPAIR needs CAP_NET_ADMIN).
    RefuseForUser(u32),
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
    /// How long each phase took (`prepare`: the checks before the freeze, `freeze`,
    /// `collect`, `pages` (alongside collect), `write` with `write.wait` (for the pages),
    /// `sync` with `sync.fsync`, `release`).
    pub timings: Timings,
}

/// The phases of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Freeze,
    /// Memory copied while the tree runs (leave-running dumps), then the tree frozen again.
    PreCopy,
    Collect,
    /// The page contents, copied by a thread of their own alongside collect ([`page_copy`]).
    Pages,
    Write,
    Sync,
    Release,
}

/// The order of the phases of [`dump()`].
pub const DUMP_PHASES: &[Phase] = &[
    Phase::Freeze,
    Phase::PreCopy,
    Phase::Collect,
    Phase::Pages,
    Phase::Write,
    Phase::Sync,
    Phase::Release,
];

impl Phase {
    /// The phase's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Freeze => "freeze",
            Phase::PreCopy => "pre-copy",
            Phase::Collect => "collect",
            Phase::Pages => "pages",
            Phase::Write => "write",
            Phase::Sync => "sync",
            Phase::Release => "release",
        }
    }

    /// The span of the phase (named by the phase, see docs/architecture.md "Logging").
    fn span(self) -> tracing::span::EnteredSpan {
        self.span_under(&tracing::Span::current())
    }

    /// [`Phase::span`] under `parent` (the dump's span, for a phase run by another thread).
    fn span_under(self, parent: &tracing::Span) -> tracing::span::EnteredSpan {
        crate::fault::phase(self.name());
        match self {
            Phase::Freeze => tracing::info_span!(parent: parent, "freeze"),
            Phase::PreCopy => tracing::info_span!(parent: parent, "pre-copy"),
            Phase::Collect => tracing::info_span!(parent: parent, "collect"),
            Phase::Pages => tracing::info_span!(parent: parent, "pages"),
            Phase::Write => tracing::info_span!(parent: parent, "write"),
            Phase::Sync => tracing::info_span!(parent: parent, "sync"),
            Phase::Release => tracing::info_span!(parent: parent, "release"),
        }
        .entered()
    }
}

/// Dumps `opts.pid` into `opts.images`.
pub fn dump(opts: DumpOptions) -> Result<DumpReport, Error> {
    let started = Instant::now();
    let pid = opts.pid;
    if let Some(c) = &opts.compress {
        c.check()?;
    }
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
    if let Some(key) = &opts.auth {
        dir.seal(key)?;
    }
    // The parent is opened and checked before anything is frozen: a broken chain refuses the
    // dump with the process untouched.
    let mut parent = match &opts.parent {
        Some(p) => Some(crate::chain::Parent::open(dir, p)?),
        None => None,
    };
    let vdso_offset = inject::vdso_syscall_offset()?;
    let mut timings = Timings::default();
    timings.since("prepare", started);

    let _dump = tracing::info_span!("dump", pid, images = %dir.label().display()).entered();
    let phase = Phase::Freeze.span();
    let mut frozen_at = Instant::now();
    let mut tree = freeze_tree(pid, opts.tree, &pidfd, opts.admit.as_ref())?;
    drop(phase);
    timings.since("freeze", frozen_at);
    let mut written: Vec<String> = Vec::new();
    let mut frozen_for = None;
    // Frozen time before the last freeze (the arm of a pre-copy).
    let mut frozen_before = std::time::Duration::ZERO;
    let result = (|| {
        let mut pre = Vec::new();
        // A compressed or incremental dump pre-copies into scratch files, compressed or
        // compared with the parent once the tree runs on (`write::write_records`).
        if opts.leave_running && opts.pre_copy {
            let _phase = Phase::PreCopy.span();
            let started = Instant::now();
            // Threads interrupted in a call that resumes through restart_syscall, before
            // the thaw (see `freeze::resumed_call`).
            let restarts: Vec<_> = tree
                .processes
                .iter()
                .map(|f| (f.pid, freeze::restart_hints(f)))
                .collect();
            pre = pre_copy(
                &mut tree,
                vdso_offset,
                dir,
                &mut written,
                &mut frozen_before,
                frozen_at,
                opts.compress.is_some() || opts.parent.is_some(),
            )?;
            // Read while the tree runs (see `collect_vmas_hinted`).
            let hints: Vec<_> = pre
                .iter()
                .filter_map(|(t, _)| Some((t.pid(), procfs::read_smaps(t.pid()).ok()?)))
                .collect();
            timings.since("pre-copy", started);
            frozen_at = Instant::now();
            tree = freeze_tree(pid, opts.tree, &pidfd, opts.admit.as_ref())?;
            timings.since("freeze.again", frozen_at);
            for (p, smaps) in hints {
                if let Some(f) = tree.processes.iter_mut().find(|f| f.pid == p) {
                    f.smaps_hint = Some(smaps);
                }
            }
            for (p, hints) in restarts {
                if let Some(f) = tree.processes.iter_mut().find(|f| f.pid == p) {
                    f.restart_hints = hints;
                }
            }
        }
        let file_opts = crate::files::DumpFileOptions {
            unix_peers_closed: opts.unix_peers_closed,
            tcp: opts.tcp,
        };
        // The compression threads, shared by the frozen copy and the pre-copied pages.
        let mut zstd = write::Zstd::new(opts.compress);
        // `holds`: TCP connections in repair mode and the nftables rule holding off their
        // packets; dropped (released) on any failure below, before the tree is thawed.
        let started = Instant::now();
        let mut collect_ended = started;
        let both = page_copy::alongside(dir, pre, parent.as_mut(), &mut zstd, |hand_over| {
            let _phase = Phase::Collect.span();
            let r = collect::collect_tree(
                &tree,
                &pidfd,
                vdso_offset,
                opts.service.as_ref(),
                &file_opts,
                hand_over,
            );
            collect_ended = Instant::now();
            r
        });
        written.extend(both.created);
        timings.add("collect", collect_ended - started);
        timings.add("pages", both.busy);
        let phase = Phase::Write.span();
        timings.since("write.wait", collect_ended);
        let ((collected, mut holds), copied) = both.result?;
        // The remap links made for deleted files with links elsewhere: removed when this
        // closure fails (dropped), kept with the images once the inventory is written.
        let links = holds.take_links();
        let started = Instant::now();
        let page_bytes = copied.page_bytes;
        written.retain(|n| !copied.removed.contains(n));
        let (mappings, records) = write::write_tree(dir, collected, &mut written, copied)?;
        drop(phase);
        timings.since("write", collect_ended);
        timings.add("write.blobs", started.elapsed());
        let _phase = Phase::Sync.span();
        let started = Instant::now();
        // A process that runs on need not wait for the disk (nor for its records, which are
        // in memory); one that is killed stays frozen until its images are durable, so a
        // failure here still leaves it alive.
        let holds = if opts.leave_running {
            drop(holds);
            tree.thaw()?;
            frozen_for = Some(frozen_before + frozen_at.elapsed());
            None
        } else {
            Some(holds)
        };
        let page_bytes = page_bytes
            + write::write_records(dir, records, &mut written, &mut zstd, parent.as_mut())?;
        // The inventory is staged (written under a temporary name) and synced with the other
        // files, in one round of fsyncs; only then is it put in place, marking the dump
        // complete.
        let link = parent.take().map(|p| p.link);
        let staged = write::stage_inventory(dir, pid, tree.pids(), tree.zombies.clone(), link)?;
        written.extend(staged.files().iter().cloned());
        let fsync = Instant::now();
        crate::fault::point("syncing the images")?;
        dir.sync_files(&written)?;
        timings.since("sync.fsync", fsync);
        // From here a failure removes the inventory too.
        written.push(names::INVENTORY.to_string());
        staged.commit(dir)?;
        // The renames into place (the inventory's last) are durable only once the directory is.
        dir.sync_dir()?;
        links.keep();
        timings.since("sync", started);
        Ok::<_, Error>((mappings, page_bytes, holds))
    })();
    match result {
        Ok((mappings, page_bytes, holds)) => {
            let processes = tree.processes.len();
            let _phase = Phase::Release.span();
            let started = Instant::now();
            if !opts.leave_running {
                tree.kill(vdso_offset)?;
            }
            // Killed: the connections vanish silently and their peers stay held off until
            // the restore.
            if let Some(h) = holds {
                h.keep();
            }
            timings.since("release", started);
            Ok(DumpReport {
                pid,
                processes,
                mappings,
                page_bytes,
                frozen: frozen_for.unwrap_or_else(|| frozen_at.elapsed()),
                timings,
            })
        }
        Err(e) => {
            tracing::debug!(error = %e, "dump failed: removing its files and thawing the tree");
            for name in written {
                let _ = dir.remove(&name);
            }
            drop(tree); // detaches (unless already done): the processes run on
            Err(e)
        }
    }
}

/// Freezes `pid` (with its descendants when `tree`), checks that it is still the process
/// `pidfd` pins, and runs the caller's admission check on every process.
fn freeze_tree(
    pid: Pid,
    tree: bool,
    pidfd: &OwnedFd,
    admit: Option<&Admit>,
) -> Result<FrozenTree, Error> {
    let frozen = if tree {
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
    if let Some(admit) = admit {
        for p in frozen.pids() {
            admit(p).map_err(Error::Refused)?;
        }
    }
    Ok(frozen)
}

/// Pre-copy passes stop once a pass reads at most this much (or stops shrinking).
const PRE_COPY_SETTLED: u64 = 4 << 20;
/// At most this many passes (the first copies everything).
const PRE_COPY_MAX_PASSES: u32 = 6;

/// The pre-copy: a userfaultfd made in every process of the frozen `tree`, which is then
/// thawed; its memory copied in passes while it runs, into the pages files (created here and
/// added to `written`). Adds the time the tree was frozen (since `frozen_at`) to `frozen`.
/// Returns the processes tracked, each with its pages file, for the final copy. With
/// `scratch` (a compressed or incremental dump), each pages file is a scratch file
/// ([`names::pages_scratch`]), stored into the pages file once the tree runs on.
fn pre_copy(
    tree: &mut FrozenTree,
    vdso_offset: u64,
    dir: &ImageDir,
    written: &mut Vec<String>,
    frozen: &mut std::time::Duration,
    frozen_at: Instant,
    scratch: bool,
) -> Result<Vec<(pages::precopy::Tracked, RawWriter)>, Error> {
    use pages::precopy::Tracked;
    let mut armed = Vec::new();
    for p in &tree.processes {
        let ip = inject::syscall_ip(p.pid, vdso_offset)?;
        if let Some(t) = Tracked::arm(p.pid, p.threads[0], ip)? {
            armed.push(t);
        }
    }
    tree.thaw()?;
    *frozen += frozen_at.elapsed();
    let started = Instant::now();
    let mut out = Vec::new();
    for mut t in armed {
        // Read while it runs: a mapping that changes before it is registered fails to
        // register, or is found untracked at the end, and is copied frozen.
        match pages::collect_vmas(t.pid()) {
            Ok(vmas) => t.track(&vmas),
            Err(e) => {
                tracing::debug!("pid {}: no pre-copy ({e})", t.pid());
                continue;
            }
        }
        let name = write::pre_copy_file(t.pid(), scratch);
        let w = if scratch {
            RawWriter::create_scratch(dir, &name, RecordKind::Pages)?
        } else {
            RawWriter::create(dir, &name, RecordKind::Pages)?
        };
        written.push(name);
        out.push((t, w));
    }
    let mut buf = vec![0u8; pages::source::MAX_RUN_BYTES];
    let mut last_read = u64::MAX;
    for pass in 0..PRE_COPY_MAX_PASSES {
        let (mut read, mut stored) = (0, 0);
        for (t, w) in &mut out {
            let s = t.pass(w, &mut buf)?;
            read += s.read;
            stored += s.stored;
        }
        tracing::debug!(
            "pre-copy pass {pass}: read {} KiB, stored {} KiB ({:.1} ms since the thaw)",
            read >> 10,
            stored >> 10,
            started.elapsed().as_secs_f64() * 1e3
        );
        if pass > 0 && (read <= PRE_COPY_SETTLED || read >= last_read) {
            break;
        }
        if pass > 0 {
            last_read = read;
        }
    }
    Ok(out)
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
