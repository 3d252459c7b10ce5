//! The records stored in an image directory. Each struct is one save/restore unit; the engine
//! module that fills it is named in its doc comment.

use serde::{Deserialize, Serialize};

/// `inventory.img`: what was dumped. Written last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Version of the stasis tool that wrote the images (informative).
    pub tool_version: String,
    /// `uname -r` of the machine that wrote the images.
    pub kernel_release: String,
    /// Milliseconds since the epoch when the dump completed.
    pub created_unix_ms: u64,
    /// The pid the dump was asked for.
    pub root_pid: i32,
    /// Every dumped process (root first, then breadth-first, so parents come before their
    /// children); each has a process and a pages file.
    pub processes: Vec<i32>,
    /// Children that had exited but were not yet reaped when the tree was dumped.
    pub zombies: Vec<Zombie>,
    /// The dump this one is an increment of (`stasis dump --parent`): page runs of image 1
    /// are in its pages files, of image 2 in its parent's, and so on (see [`ParentLink`]).
    pub parent: Option<ParentLink>,
}

/// Longest chain of incremental dumps a restore follows: a dump and at most this many
/// ancestors.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// The link from an incremental dump to its parent dump, and what the parent held when the
/// child was made, so that a parent replaced or changed since is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The parent's directory: relative to this dump's directory when the two share a
    /// directory other than `/` (so a chain moved together still works), absolute otherwise.
    pub path: String,
    /// BLAKE3 of the parent's whole `inventory.img` file (which holds its creation time, its
    /// process list and its own link, so it also pins the rest of the chain).
    pub inventory_blake3: [u8; 32],
    /// The parent's pages files this dump refers to (runs of image 1), with their payload
    /// lengths then.
    pub pages: Vec<ParentPages>,
}

/// A pages file of a parent dump that a child refers to: `pages-PID.img` and its payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentPages {
    pub pid: i32,
    pub payload_len: u64,
}

/// An exited, unreaped child: restored as a process that exits at once the same way, so its
/// parent can still wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zombie {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The wait status the parent will see (as /proc/PID/stat field 52 reports it).
    pub exit_status: i32,
}

/// `process-PID.img`: one process and its threads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessImage {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Dumped and restored in `engine::task`.
    pub task: TaskState,
    /// Dumped and restored in `engine::creds`.
    pub creds: Creds,
    /// Dumped and restored in `engine::mm`.
    pub mm: MmFields,
    /// Dumped and restored in `engine::memory`.
    pub vmas: Vec<Vma>,
    /// Page contents in `pages-PID.img`, sorted by address (engine::memory).
    pub page_runs: Vec<PageRun>,
    /// Open file descriptions (engine::files), referenced from `fds`.
    pub files: Vec<FileDesc>,
    /// The fd table (engine::files).
    pub fds: Vec<FdEntry>,
    /// Signal dispositions and process-wide pending signals (engine::signals).
    pub signals: ProcessSignals,
    /// Interval timers (engine::timers).
    pub itimers: Vec<ITimer>,
    /// Threads, the thread-group leader first (engine::thread).
    pub threads: Vec<ThreadImage>,
    /// POSIX timers (timer_create), by id (engine::posix_timers).
    pub posix_timers: Vec<PosixTimer>,
    /// The parent's pid when this process shares the parent's fd table (clone with
    /// CLONE_FILES), else 0. Its `fds` are then the same as the parent's.
    pub shares_fd_table_with: i32,
    /// The parent's pid when this process shares the parent's cwd, root and umask (clone
    /// with CLONE_FS), else 0.
    pub shares_fs_with: i32,
    /// The job-control stop the process was in (SIGSTOP, SIGTSTP, ...), if any
    /// (engine::task::stop).
    pub stop: Option<JobStop>,
    /// Process-wide prctl state (engine::task::prctl).
    pub prctl: ProcessPrctl,
    /// What mlockall(MCL_FUTURE) left for mappings made later: 0, or `MCL_FUTURE` (2), with
    /// `MCL_ONFAULT` (4) when they are locked on fault (engine::pages::advice).
    pub mlock_future: u32,
    /// POSIX record locks (fcntl F_SETLK) the process holds: they belong to the process, not
    /// to a description, and are taken again by the restored process itself, through `fd`
    /// (engine::files::locks).
    pub posix_locks: Vec<PosixLock>,
    /// Seccomp filters and modes of the threads (engine::task::seccomp).
    pub seccomp: ProcessSeccomp,
}

/// A POSIX record lock held by a process, taken through fd `fd` (engine::files::locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixLock {
    /// An fd of the process on the locked file, through which it is taken again.
    pub fd: i32,
    pub range: LockRange,
}

/// The type and byte range of a lock, as /proc/PID/fdinfo shows it (engine::files::locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    /// A write (exclusive) lock; else a read (shared) lock.
    pub write: bool,
    /// First byte.
    pub start: u64,
    /// Last byte, included; `None`: up to the end of the file, whatever its length.
    pub end: Option<u64>,
}

/// What kind of lock a description holds (engine::files::locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DescLockKind {
    /// An open file description lock (fcntl F_OFD_SETLK).
    Ofd,
    /// A flock(2) lock (always the whole file).
    Flock,
    /// A lease (fcntl F_SETLEASE; always the whole file).
    Lease,
}

/// A lock that belongs to an open file description (engine::files::locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescLock {
    pub kind: DescLockKind,
    pub range: LockRange,
    /// The process that took it, as /proc/locks shows it (-1 for OFD locks): flock locks and
    /// leases are taken again by that process when it has an fd of the description.
    pub pid: i32,
}

/// The seccomp state of a process (engine::task::seccomp): every distinct filter once, and
/// for each thread its mode and its chain of filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSeccomp {
    /// The distinct filters of the process's threads. A filter is the same for two threads
    /// when its program, its flags and the filters before it are the same.
    pub filters: Vec<SeccompFilter>,
    /// One entry per thread, in the order of `ProcessImage.threads`; empty when no thread is
    /// under seccomp.
    pub threads: Vec<ThreadSeccomp>,
}

/// One seccomp filter: a classic BPF program (engine::task::seccomp).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompFilter {
    /// The instructions, each a `struct sock_filter` (code u16, jt u8, jf u8, k u32) packed
    /// little-endian into a u64; 1 to 4096 of them.
    pub insns: Vec<u64>,
    /// SECCOMP_FILTER_FLAG_LOG: the filter's non-allow actions are logged.
    pub log: bool,
}

/// A thread's seccomp mode and filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSeccomp {
    /// 0 disabled, 1 strict, 2 filter.
    pub mode: u32,
    /// Indices into `ProcessSeccomp.filters`, oldest first (empty unless mode 2).
    pub chain: Vec<u32>,
}

/// A process in a job-control stop (state T in /proc/PID/stat) when it was dumped
/// (engine::task::stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStop {
    /// The signal that stopped it: SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU.
    pub signal: u32,
    /// Whether its parent (a process of the dump) had not collected the stop yet: a
    /// waitpid(WUNTRACED) in the parent would still report it.
    pub report_pending: bool,
}

/// Process-wide prctl state that a fork inherits (engine::task::prctl).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPrctl {
    /// PR_GET_THP_DISABLE: 0, 1 (THP disabled), or 3 (disabled except where advised,
    /// PR_THP_DISABLE_EXCEPT_ADVISED).
    pub thp_disable: u32,
    /// PR_GET_MDWE: PR_MDWE_REFUSE_EXEC_GAIN (1), PR_MDWE_NO_INHERIT (2).
    pub mdwe: u32,
    /// membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS): the registration commands issued.
    pub membarrier: u32,
    /// PR_SET_MEMORY_MERGE (KSM for every mapping; `ksm_merge_any` in /proc/PID/ksm_stat).
    pub memory_merge: bool,
}

/// A directory removed while a process held it (as an fd or its cwd): what its empty
/// stand-in gets at restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedDir {
    /// Permission bits (nothing beyond 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Miscellaneous per-process state (engine::task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub comm: String,
    pub exe_path: String,
    /// When the executable is a memfd (a program started with execveat or fexecve from
    /// one): the memfd's id (its inode number, `VmaKind::Memfd.memfd_id` of the mappings of
    /// it, one of which must be in the record); else 0 (engine::task::attrs).
    pub exe_memfd: u64,
    pub cwd: String,
    /// The cwd was removed: `cwd` is its path without " (deleted)", recreated empty at
    /// restore, entered and removed again.
    pub cwd_deleted: Option<DeletedDir>,
    pub root: String,
    pub umask: u32,
    pub personality: u32,
    pub rlimits: Vec<Rlimit>,
    /// PR_GET_PDEATHSIG.
    pub pdeathsig: i32,
    /// PR_GET_DUMPABLE.
    pub dumpable: i32,
    /// PR_GET_CHILD_SUBREAPER.
    pub child_subreaper: bool,
    /// /proc/PID/oom_score_adj (engine::task::oom).
    pub oom_score_adj: i32,
    /// The audit login uid of the thread-group leader, /proc/PID/loginuid; u32::MAX when
    /// unset (engine::task::loginuid).
    pub loginuid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Credentials (engine::creds), from /proc/PID/status and prctl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    /// real, effective, saved, filesystem
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: bool,
    pub securebits: u32,
    pub keepcaps: bool,
}

/// The mm fields that PR_SET_MM_MAP restores (engine::mm).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// The auxiliary vector as pairs of words, ending with AT_NULL.
    pub auxv: Vec<u64>,
}

/// One memory mapping (engine::memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC.
    pub prot: u32,
    pub shared: bool,
    /// VM_GROWSDOWN (stacks).
    pub growsdown: bool,
    /// Offset in the mapped file, in bytes.
    pub file_offset: u64,
    pub kind: VmaKind,
    /// The name /proc/PID/maps shows (path, `"[heap]"`, `"[stack]"`, ...), for humans.
    pub name: String,
    /// For shared anonymous memory: the identity (inode) of the memory object, the same in
    /// every process that shares it; its pages are stored with the first process that maps it.
    /// 0 otherwise.
    pub shmem_id: u64,
    /// What madvise, mlock and mseal left on the mapping (engine::pages::advice).
    pub advice: VmaAdvice,
}

impl Vma {
    /// A private anonymous mapping of `start..end`, readable and writable, with nothing else
    /// set: what tests build mappings from.
    pub fn anonymous(start: u64, end: u64) -> Vma {
        Vma {
            start,
            end,
            prot: 3,
            shared: false,
            growsdown: false,
            file_offset: 0,
            kind: VmaKind::Anonymous,
            name: String::new(),
            shmem_id: 0,
            advice: VmaAdvice::default(),
        }
    }
}

/// The behavior madvise, mlock and mseal gave a mapping, as the VmFlags of /proc/PID/smaps
/// show it (engine::pages::advice). All false: the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmaAdvice {
    /// `dc`: MADV_DONTFORK.
    pub dontfork: bool,
    /// `dd`: MADV_DONTDUMP.
    pub dontdump: bool,
    /// `hg`: MADV_HUGEPAGE.
    pub hugepage: bool,
    /// `nh`: MADV_NOHUGEPAGE.
    pub nohugepage: bool,
    /// `wf`: MADV_WIPEONFORK (private anonymous memory only).
    pub wipeonfork: bool,
    /// `sr`: MADV_SEQUENTIAL.
    pub sequential: bool,
    /// `rr`: MADV_RANDOM.
    pub random: bool,
    /// `mg`: MADV_MERGEABLE (KSM).
    pub mergeable: bool,
    /// `lo`: locked (mlock, mlockall).
    pub locked: bool,
    /// `lf`: locked on fault (mlock2 MLOCK_ONFAULT, mlockall MCL_ONFAULT); only with `locked`.
    pub lock_on_fault: bool,
    /// `sl`: sealed (mseal).
    pub sealed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmaKind {
    /// Private or shared anonymous memory (shared anonymous is /dev/zero (deleted)).
    Anonymous,
    /// A mapping of a file that still exists at `path`. `dev`/`ino`/`size` identify it so that
    /// restore can refuse a file that was replaced.
    File {
        path: String,
        dev: u64,
        ino: u64,
        size: u64,
    },
    /// The kernel's special mappings: never stored, moved into place at restore.
    Vdso,
    Vvar,
    VvarVclock,
    Vsyscall,
    /// A mapping of a memfd: the `FileKind::Memfd` descriptions with this `memfd_id` hold
    /// its contents (engine::files::memfd); restore maps the recreated memfd.
    Memfd {
        memfd_id: u64,
    },
    /// A mapping of a regular file deleted while mapped: the `FileKind::Deleted` descriptions
    /// with this `dev` and `ino` hold its contents (engine::files::deleted); restore maps the
    /// recreated file. For a file that keeps links elsewhere, the `FileKind::LinkRemap`
    /// descriptions with this `dev` and `ino` name its remap link, and restore maps that file.
    Deleted {
        dev: u64,
        ino: u64,
    },
    /// The ring of an AIO context (io_setup), whose address is the context's id: `nr` events
    /// fit in it. Never stored; restore makes a context with a ring of the same size and moves
    /// it here (engine::pages::layout).
    Aio {
        nr: u32,
    },
}

/// A run of pages stored in a pages file: `npages` pages at `addr`, whose stored bytes are
/// `stored_len` bytes at payload offset `offset` of the pages file of image `image` of the
/// chain, encoded as `codec`, with CRC-32C `crc` of those stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    pub addr: u64,
    pub npages: u64,
    /// Payload offset of the stored bytes.
    pub offset: u64,
    /// Length of the stored bytes: `npages * 4096` for [`RunCodec::Raw`], less for a
    /// compressed run.
    pub stored_len: u64,
    pub codec: RunCodec,
    /// CRC-32C of the stored bytes (compressed ones for a compressed run).
    pub crc: u32,
    /// Which image of a chain of incremental dumps holds the bytes: 0 this one, 1 its parent,
    /// 2 the parent's parent, and so on (the same process's pages file in each).
    pub image: u32,
}

impl PageRun {
    /// A run of `npages` pages at `addr` shared with the parent process
    /// ([`RunCodec::Inherited`]).
    pub fn inherited(addr: u64, npages: u64) -> Self {
        PageRun {
            addr,
            npages,
            offset: 0,
            stored_len: 0,
            codec: RunCodec::Inherited,
            crc: 0,
            image: 0,
        }
    }

    /// A run stored raw in this image's pages file.
    pub fn raw(addr: u64, npages: u64, offset: u64, crc: u32) -> Self {
        PageRun {
            addr,
            npages,
            offset,
            stored_len: npages.saturating_mul(4096),
            codec: RunCodec::Raw,
            crc,
            image: 0,
        }
    }
}

/// How a [`PageRun`]'s bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunCodec {
    /// The page contents as they are.
    Raw,
    /// One zstd frame holding exactly the run's page contents (at most
    /// [`MAX_ZSTD_RUN_PAGES`] pages).
    Zstd,
    /// Nothing stored: the pages are the parent process's pages at the same addresses,
    /// shared copy-on-write at dump time (the parent is the process whose pid is this
    /// process's `ppid`, in the same dump). `offset`, `stored_len`, `crc` and `image` are 0.
    /// Only in private anonymous mappings (not growing down); the restore fills the parent's
    /// memory before forking the child, which inherits these pages (engine::pages::cow).
    /// Added after format version 6 without a bump: older images decode as before.
    Inherited,
}

/// The most pages a [`RunCodec::Zstd`] run may hold: 2 MiB, the dumper's longest run. It bounds
/// the buffer a reader decodes a run into, whatever an image claims.
pub const MAX_ZSTD_RUN_PAGES: u64 = 512;

/// An open file description (engine::files). Several fds may refer to one.
/// Each kind of file is dumped, checked (beyond what [`crate::validate_process`] checks for
/// every kind) and restored by its own module, `engine::files::KIND`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDesc {
    pub id: u32,
    /// Open flags (O_ACCMODE, O_APPEND, O_NONBLOCK, ...) as fdinfo shows them.
    pub flags: u32,
    /// File position.
    pub pos: u64,
    pub kind: FileKind,
    /// Who gets the description's I/O signals, and which signal (engine::files, for every
    /// kind).
    pub owner: FileOwner,
    /// OFD locks, flock locks and leases held by the description (engine::files::locks).
    pub locks: Vec<DescLock>,
}

/// The owner of a description's signal-driven I/O (O_ASYNC), as F_GETOWN_EX and F_GETSIG
/// report it: `pid` is a thread (`kind` 0, F_OWNER_TID), a process (1, F_OWNER_PID) or a
/// process group (2, F_OWNER_PGRP), 0 for nobody; `signal` is the one F_SETSIG chose (0:
/// SIGIO). The default (all 0) is a description nobody set an owner or signal on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOwner {
    pub kind: u32,
    pub pid: i32,
    pub signal: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file reopened by path (engine::files::regular); `size` is recorded to detect
    /// replaced files.
    Regular {
        path: String,
        dev: u64,
        ino: u64,
        size: u64,
    },
    /// A regular file deleted while open (engine::files::deleted): `size` bytes long, of
    /// which only the data `extents` (offset, length; in order, not overlapping, within
    /// `size`) are stored, one after the other, in `blob-ID.img` (`len` bytes, their sum, and
    /// `crc`); the rest is holes. Also its owner, permission bits and access and modification
    /// times (seconds, nanoseconds). `dev` and `ino` identify the file: descriptions and
    /// mappings (`VmaKind::Deleted`) of one file get one recreated file.
    Deleted {
        path: String,
        dev: u64,
        ino: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
        extents: Vec<(u64, u64)>,
        atime: (i64, u32),
        mtime: (i64, u32),
        len: u64,
        crc: u32,
    },
    /// A directory reopened by path (engine::files::directory); `dev` and `ino` identify it
    /// (restore refuses another directory at the path unless told to accept it).
    ///
    /// `deleted`: the directory was removed while open; it is recreated empty next to `path`
    /// with these permission bits, uid and gid, opened and removed again.
    Directory {
        path: String,
        dev: u64,
        ino: u64,
        deleted: Option<DeletedDir>,
    },
    /// A character device reopened by path (engine::files::chardev); `rdev` must match at
    /// restore.
    CharDevice { path: String, rdev: u64 },
    /// One end of a pipe (engine::files::pipe). `pipe_id` (the pipe's inode) links the ends;
    /// the bytes in flight are stored once, with the first end dumped.
    Pipe {
        pipe_id: u64,
        write_end: bool,
        capacity: u32,
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// The caller's connection to stasisd during a self-dump (engine::files::service). It comes
    /// back as a SOCK_SEQPACKET socket whose peer queued `reply` (one message) and closed, so
    /// the restored process reads "you were restored" from it.
    ServiceSocket {
        #[serde(with = "crate::bytes")]
        reply: Vec<u8>,
    },
    /// An eventfd (engine::files::eventfd): the counter's value and EFD_SEMAPHORE.
    EventFd { count: u64, semaphore: bool },
    /// A pidfd of a process of the dumped tree (engine::files::pidfd): its pid.
    Pidfd { pid: i32 },
    /// A timerfd (engine::files::timerfd). `settime_flags` are the TFD_TIMER_ABSTIME and
    /// TFD_TIMER_CANCEL_ON_SET given to timerfd_settime. `remaining_ns` is the time to the next
    /// expiry when the process was frozen (0: disarmed, or expired and waiting to be read);
    /// `deadline_ns` is, for an absolute timer on CLOCK_REALTIME or CLOCK_REALTIME_ALARM, the
    /// expiry as that clock's time (0 otherwise). `ticks`: expirations not read yet.
    TimerFd {
        clockid: i32,
        settime_flags: u32,
        ticks: u64,
        interval_ns: u64,
        remaining_ns: u64,
        deadline_ns: u64,
    },
    /// A signalfd (engine::files::signalfd): bit n-1 of `mask` stands for signal n.
    SignalFd { mask: u64 },
    /// An epoll instance (engine::files::epoll) with the files it watches, by their fd numbers in
    /// process `owner` (the process dumped with it; in a tree, others may share it).
    Epoll {
        owner: i32,
        watches: Vec<EpollWatch>,
    },
    /// A memfd (engine::files::memfd). Every description of one memfd carries the same fields and
    /// `memfd_id` (its inode number at dump time); its contents (`len` bytes, CRC-32C `crc`)
    /// are in `blob-ID.img` of the first of those descriptions in `files`. `seals` as
    /// F_GET_SEALS reports them (F_SEAL_SEAL alone: created without MFD_ALLOW_SEALING);
    /// `mode`, `uid`, `gid`: the file's permissions and owner.
    Memfd {
        memfd_id: u64,
        name: String,
        mode: u32,
        uid: u32,
        gid: u32,
        seals: u32,
        len: u64,
        crc: u32,
    },
    /// An inotify instance (engine::files::inotify) with its watches, sorted by watch descriptor.
    /// Events queued but not read at dump time are not kept.
    Inotify { watches: Vec<InotifyWatch> },
    /// One end of a named FIFO (engine::files::fifo), reopened by `path`; `dev` and `ino`
    /// identify the FIFO (and link the descriptions of one FIFO). A FIFO that was unlinked
    /// while open (`deleted`) is made again with permission bits `mode`. `capacity` and the
    /// bytes in flight (`data`, stored with the first description of the FIFO only) as for
    /// pipes.
    Fifo {
        path: String,
        dev: u64,
        ino: u64,
        deleted: bool,
        mode: u32,
        capacity: u32,
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// An O_PATH descriptor (engine::files::opath) of the object at `path`, identified by
    /// `dev`, `ino` and its file type (`mode & S_IFMT`); O_NOFOLLOW in the description's
    /// flags means the object is a symbolic link itself.
    OPath {
        path: String,
        dev: u64,
        ino: u64,
        mode: u32,
    },
    /// A file of one of the process's own namespaces (engine::files::nsfile): `ns` is the
    /// name under /proc/PID/ns (`net`, `pid_for_children`, ...), `ino` the namespace's inode.
    Namespace { ns: String, ino: u64 },
    /// A file or directory below /proc/PID of the process itself (engine::files::procfile),
    /// reopened as /proc/self/`path` (empty: the directory /proc/self).
    ProcFile { path: String, directory: bool },
    /// A fanotify group (engine::files::fanotify): the flags and event flags fanotify_init
    /// took (without FAN_CLOEXEC and FAN_NONBLOCK) and its marks.
    Fanotify {
        flags: u32,
        event_flags: u32,
        marks: Vec<FanotifyMark>,
    },
    /// A netlink socket (engine::files::netlink_socket) of type `ty` (SOCK_RAW or SOCK_DGRAM)
    /// and `protocol` (NETLINK_ROUTE, ...). `port_id`: the port it is bound to (0: not bound),
    /// bound again to the same value; `groups`: its multicast groups as a bitmap of 32-bit
    /// words (bit n-1 of the whole for group n); `dst_port_id` and `dst_group`: the default
    /// destination set by connect (0 and 0: none). Messages queued unread at dump time are
    /// not kept.
    NetlinkSocket {
        ty: i32,
        protocol: i32,
        port_id: u32,
        groups: Vec<u32>,
        dst_port_id: u32,
        dst_group: u32,
        options: NetlinkOptions,
        common: SocketCommon,
    },
    /// A packet socket (engine::files::packet_socket) of type `ty` (SOCK_RAW or SOCK_DGRAM),
    /// receiving `protocol` (an ethertype, host byte order; 0: nothing) on interface `ifindex`
    /// named `ifname` (0 and "": every interface), with its packet options, memberships and
    /// fanout group. Packets queued unread at dump time are not kept.
    PacketSocket {
        ty: i32,
        protocol: u16,
        ifindex: i32,
        ifname: String,
        options: PacketOptions,
        memberships: Vec<PacketMembership>,
        /// PACKET_FANOUT as getsockopt reports it (id | (type | flags) << 16), if in a group.
        fanout: Option<u32>,
        common: SocketCommon,
    },
    /// A unix socket (engine::files::unix_socket). `ino` (its inode at dump time) links it to
    /// its `peer` (0: none in the tree) and to the listener whose `pending` connections it is
    /// a client of; `ty` is SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    UnixSocket {
        ino: u64,
        ty: u32,
        /// The name it is bound to, if any.
        name: Option<UnixSocketName>,
        /// A listening socket: its backlog.
        listen: Option<u32>,
        /// A listener: the client ends (inodes) of the connections not yet accepted, oldest
        /// first; 0 is a client that is gone (the connection is restored with a closed client).
        pending: Vec<u64>,
        peer: u64,
        /// Connected, but the peer was closed (or, with `--unix-peers-closed`, was outside
        /// the dumped tree): restored connected to a peer that is then closed.
        peer_closed: bool,
        /// A connection accepted from this listener of the tree (its inode; else 0): its peer
        /// connects to the listener again and it is accepted, so both show the listener's name.
        accepted_from: u64,
        /// The kernel's RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2) bits.
        shutdown: u8,
        /// SO_PASSCRED.
        passcred: bool,
        /// SO_RCVBUF and SO_SNDBUF as getsockopt reports them (twice what was set).
        rcvbuf: u32,
        sndbuf: u32,
        /// SO_PEEK_OFF (-1: off).
        peek_off: i32,
        /// The messages (datagrams, seqpacket records; chunks of a stream) waiting to be read,
        /// oldest first; stored with the first description of the socket only.
        queue: Vec<UnixMessage>,
    },
    /// A terminal outside the dumped tree (engine::files::tty): the slave `path`
    /// (`/dev/pts/N`, device `rdev`) of a pseudo-terminal whose master no process of the tree
    /// holds, such as the terminal of the shell a job was started from. It is not reopened by
    /// path: the restore attaches the tree to a terminal it is given, and sets `termios` there.
    /// `winsize` is the size it had (kept for `stasis show`; the new terminal keeps its own).
    /// `foreground`: the group of the process holding it was the terminal's foreground group.
    ExternalTerminal {
        path: String,
        rdev: u64,
        termios: TermiosImage,
        winsize: WinSizeImage,
        foreground: bool,
    },
    /// `/dev/tty` opened by path (engine::files::tty): the controlling terminal of the
    /// process that opened it. `of_pair`: that terminal is the slave of a pair of the tree
    /// (the restored process opens `/dev/tty` itself); else it is external, and after a
    /// restore it is the terminal the tree is attached to.
    ControllingTerminal { path: String, of_pair: bool },
    /// The master of a pseudo-terminal pair whose slave side is in the tree too, or nowhere
    /// (engine::files::tty): everything about the pair is kept here, once.
    PtyMaster { pty: PtyPair },
    /// A slave of a pair whose master is in the tree (engine::files::tty): the dumped index of
    /// its master's [`PtyPair`] (the restored pair may have another, see there).
    PtySlave { index: u32 },
    /// An AF_INET or AF_INET6 socket (engine::files::tcp for SOCK_STREAM, engine::files::udp
    /// for SOCK_DGRAM; shared parts in engine::files::inet).
    Inet(Box<InetSocket>),
    /// A regular file whose name `path` was deleted while open or mapped but which keeps
    /// links under other names (engine::files::link_remap): the dump made one more hard link
    /// to it, `remap` (`.stasis-remap.DEV.INO` in the directory of `path`, or at the root of
    /// its mount), which stays with the images; the restore reopens the very file through it.
    /// `dev`, `ino` and `size` identify the file (descriptions and mappings,
    /// `VmaKind::Deleted`, of one file share them). Added after format version 6 without a
    /// bump (a variant at the end: images without it decode as before).
    LinkRemap {
        path: String,
        remap: String,
        dev: u64,
        ino: u64,
        size: u64,
    },
}

/// An address of an inet socket: `ip` is 4 bytes (AF_INET) or 16 (AF_INET6, a v4-mapped
/// address included), `port` in host order; `scope_id` and `flowinfo` only for AF_INET6.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetAddr {
    #[serde(with = "crate::bytes")]
    pub ip: Vec<u8>,
    pub port: u16,
    pub flowinfo: u32,
    pub scope_id: u32,
}

/// An AF_INET/AF_INET6 socket: its creation triple, addresses, options, and what it holds.
/// `local` is `None` for an unbound socket, `peer` for an unconnected one. `state` is the
/// TCP state (TCP_ESTABLISHED = 1, TCP_LISTEN = 10, TCP_CLOSE = 7, ...) of a stream socket,
/// and for a datagram socket 1 (connected) or 7 (not). `backlog` is a listener's (0
/// otherwise). `shutdown`: SHUT_RD (1) and SHUT_WR (2) bits of a datagram socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetSocket {
    pub family: u32,
    pub ty: u32,
    pub protocol: u32,
    pub state: u32,
    pub local: Option<InetAddr>,
    pub peer: Option<InetAddr>,
    pub backlog: u32,
    pub shutdown: u32,
    pub options: InetOptions,
    /// A connection restored with TCP_REPAIR.
    pub tcp: Option<TcpConnection>,
    /// Datagrams queued on a datagram socket, oldest first.
    #[serde(with = "crate::bytes::vecs")]
    pub datagrams: Vec<Vec<u8>>,
    /// Who sent each of `datagrams` (the same length, or empty: not known).
    pub senders: Vec<Option<InetAddr>>,
}

/// Socket options of an inet socket, as getsockopt reads them. `linger` is `l_onoff` /
/// `l_linger`; `buf_locks`: bit 0 SO_SNDBUF was set, bit 1 SO_RCVBUF was set (then `sndbuf`
/// and `rcvbuf` are set again, as the kernel reported them, halved for setsockopt). For raw
/// sockets, `hdrincl` (IP_HDRINCL, IPV6_HDRINCL) and `icmp_filter` (ICMP_FILTER: 4 bytes,
/// ICMP6_FILTER: 32 bytes; empty: none read). `filter`: the classic BPF socket filter
/// (SO_ATTACH_FILTER; empty: none), `filter_locked`: SO_LOCK_FILTER.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetOptions {
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
    pub keepalive: bool,
    pub keepidle: u32,
    pub keepintvl: u32,
    pub keepcnt: u32,
    pub nodelay: bool,
    pub cork: bool,
    pub linger: Option<u32>,
    pub sndbuf: u32,
    pub rcvbuf: u32,
    pub buf_locks: u32,
    pub rcvlowat: u32,
    pub priority: u32,
    pub mark: u32,
    pub broadcast: bool,
    pub bindtodevice: String,
    pub freebind: bool,
    pub tos: u32,
    pub ttl: u32,
    pub hdrincl: bool,
    #[serde(with = "crate::bytes")]
    pub icmp_filter: Vec<u8>,
    pub filter: Vec<BpfInsn>,
    pub filter_locked: bool,
    /// Further options (engine::files::inet's list of them) whose value differs from a fresh
    /// socket's: set again as they were read.
    pub extra: Vec<RawSockOpt>,
    /// Multicast groups joined (datagram and raw sockets).
    pub memberships: Vec<McMembership>,
}

/// A multicast group a socket joined on interface `ifindex`: `group` is 4 (IPv4) or 16
/// (IPv6) bytes; its source filter includes (`include`) or excludes `sources` (none and
/// excluding: every source, as IP_ADD_MEMBERSHIP leaves it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct McMembership {
    pub ifindex: u32,
    #[serde(with = "crate::bytes")]
    pub group: Vec<u8>,
    pub include: bool,
    #[serde(with = "crate::bytes::vecs")]
    pub sources: Vec<Vec<u8>>,
}

/// A socket option as getsockopt gave it and setsockopt takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawSockOpt {
    pub level: i32,
    pub name: i32,
    #[serde(with = "crate::bytes")]
    pub value: Vec<u8>,
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// The state of an established (or closing) TCP connection, for TCP_REPAIR. Sequence numbers
/// are those after the queues: `snd_seq` the next byte to queue for sending (write_seq),
/// `rcv_seq` the next byte expected (rcv_nxt); both count a FIN (`fin_sent`: this end shut
/// down writing, `fin_received`: the peer did). `send_queue` holds every byte of data not
/// acknowledged by the peer, of which the last `unsent` were not sent yet; `recv_queue` what
/// arrived and was not read. `mss` (the clamp), window scales, SACK and timestamps as negotiated; `tsval`
/// the TCP_TIMESTAMP clock; the window as TCP_REPAIR_WINDOW reads it. `hold_table`: the
/// nftables table (family inet) that holds off the peer's packets until the restore removes
/// it (empty when none was installed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnection {
    pub snd_seq: u32,
    pub rcv_seq: u32,
    #[serde(with = "crate::bytes")]
    pub send_queue: Vec<u8>,
    pub unsent: u32,
    #[serde(with = "crate::bytes")]
    pub recv_queue: Vec<u8>,
    pub mss: u32,
    pub snd_wscale: u32,
    pub rcv_wscale: u32,
    pub sack: bool,
    pub timestamps: bool,
    pub tsval: u32,
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
    pub fin_sent: bool,
    pub fin_received: bool,
    pub hold_table: String,
}

/// A message queued on a unix socket (engine::files::unix_socket): its bytes, the
/// credentials it carries (SCM_CREDENTIALS) when the socket has SO_PASSCRED, the files in
/// flight with it (SCM_RIGHTS): ids of descriptions of the same record (usually without fd),
/// and for a datagram that a named socket of the tree sent, that socket's inode (else 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixMessage {
    #[serde(with = "crate::bytes")]
    pub data: Vec<u8>,
    pub cred: Option<UnixCred>,
    pub files: Vec<u32>,
    pub from: u64,
}

/// The sender's pid, uid and gid a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The name a unix socket is bound to (engine::files::unix_socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixSocketName {
    /// A filesystem path (absolute), with the socket file's permission bits and owner; `file`
    /// is `None` when the socket file was deleted since the bind. `relative`: the name as the
    /// process bound it, when relative (the end of `path`, which the process's cwd at dump time
    /// completes); it is bound that way again.
    Path {
        path: String,
        file: Option<SocketFile>,
        relative: Option<String>,
    },
    /// An abstract name, without its leading NUL byte.
    Abstract(#[serde(with = "crate::bytes")] Vec<u8>),
}

/// The file a path-bound unix socket made: permission bits (nothing beyond 0o7777) and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A pseudo-terminal pair inside the tree (engine::files::tty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyPair {
    /// N of /dev/pts/N at dump time; the restore takes the same one when it is free.
    pub index: u32,
    /// TIOCGPTLCK: the slave cannot be opened.
    pub locked: bool,
    /// TIOCGPKT: the master reads in packet mode.
    pub packet: bool,
    /// TIOCGEXCL of the slave: no new opens but by root.
    pub exclusive: bool,
    /// The slave's settings (termios calls on the master act on the slave too).
    pub slave_termios: TermiosImage,
    pub winsize: WinSizeImage,
    /// The session whose controlling terminal the slave is (0: none), and its foreground
    /// process group (0: none).
    pub session: i32,
    pub foreground: i32,
    /// Bytes written on the master side that the slave side has not read (in the slave's
    /// input queue), and bytes written on the slave side that the master side has not read;
    /// each at most [`MAX_PTY_QUEUE`].
    #[serde(with = "crate::bytes")]
    pub to_slave: Vec<u8>,
    #[serde(with = "crate::bytes")]
    pub to_master: Vec<u8>,
}

/// The most bytes a [`PtyPair`] keeps in one direction (the kernel's buffers hold less).
pub const MAX_PTY_QUEUE: usize = 1 << 20;

/// A terminal's settings (the kernel's `struct termios`; the line speeds are in `cflag`).
/// `cc`: the control characters, at most [`MAX_TERMIOS_CC`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermiosImage {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    #[serde(with = "crate::bytes")]
    pub cc: Vec<u8>,
}

/// The most control characters a [`TermiosImage`] holds (the kernel's NCCS is 19 on x86-64).
pub const MAX_TERMIOS_CC: usize = 32;

/// A terminal's window size (TIOCGWINSZ).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSizeImage {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

/// One mark of a fanotify group: `on` an inode (0), a mount (1) or a filesystem (2), reached
/// at `path` (the object itself; a mount point of the mount or filesystem); for an inode mark,
/// `sdev` and `ino` identify the object. `flags` are the mark's fanotify_mark flags
/// (FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE, FAN_MARK_IGNORE); `mask` and
/// `ignored_mask` as fanotify_mark takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanotifyMark {
    pub on: u8,
    pub path: String,
    pub sdev: u32,
    pub ino: u64,
    pub flags: u32,
    pub mask: u64,
    pub ignored_mask: u64,
}

/// The SOL_SOCKET options netlink and packet sockets keep (engine::files::sol_socket), as
/// getsockopt reports them (the buffer sizes doubled by the kernel), and the classic BPF
/// filter attached with SO_ATTACH_FILTER (`filter_locked`: SO_LOCK_FILTER).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketCommon {
    pub rcvbuf: u32,
    pub sndbuf: u32,
    pub passcred: bool,
    pub priority: u32,
    pub mark: u32,
    /// SO_TIMESTAMP.
    pub timestamp: bool,
    /// SO_TIMESTAMPNS.
    pub timestamp_ns: bool,
    pub filter: Vec<SockFilterInsn>,
    pub filter_locked: bool,
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockFilterInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// The SOL_NETLINK options of a netlink socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetlinkOptions {
    pub pktinfo: bool,
    pub broadcast_error: bool,
    pub no_enobufs: bool,
    pub listen_all_nsid: bool,
    pub cap_ack: bool,
    pub ext_ack: bool,
    pub get_strict_chk: bool,
}

/// The SOL_PACKET options of a packet socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketOptions {
    /// PACKET_VERSION: TPACKET_V1 0, V2 1, V3 2.
    pub version: u32,
    pub reserve: u32,
    pub auxdata: bool,
    pub origdev: bool,
    /// PACKET_VNET_HDR_SZ (0: no virtio-net header).
    pub vnet_hdr_sz: u32,
    /// PACKET_TIMESTAMP (SOF_TIMESTAMPING_* bits).
    pub timestamp: u32,
    pub loss: bool,
    pub qdisc_bypass: bool,
    pub ignore_outgoing: bool,
    pub tx_has_off: bool,
    pub copy_thresh: u32,
}

/// One PACKET_ADD_MEMBERSHIP of a packet socket: on interface `ifindex` named `ifname`, of
/// type `ty` (PACKET_MR_*), with address `addr` (at most 32 bytes), added `count` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketMembership {
    pub ifindex: i32,
    pub ifname: String,
    pub ty: u16,
    pub count: u32,
    #[serde(with = "crate::bytes")]
    pub addr: Vec<u8>,
}

/// One watch of an inotify instance: its watch descriptor (which the restored instance hands
/// out again), the path of the watched object, and the mask as inotify_add_watch takes it
/// (IN_ALL_EVENTS bits, IN_ONESHOT, IN_EXCL_UNLINK). `sdev` (the superblock's device number in
/// the kernel's encoding, major << 20 | minor, as fdinfo shows it) and `ino` identify the
/// watched object: restore refuses a path that names another one by then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    pub wd: i32,
    pub path: String,
    pub mask: u32,
    pub sdev: u32,
    pub ino: u64,
}

/// One file an epoll instance watches: the fd number it was added with, the event mask and the
/// user data, as fdinfo shows them. When that number no longer names the watched file (closed
/// since, or reused for another file), `through` is an fd of the process that does: the watch
/// is added again under number `fd` through that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollWatch {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
    pub through: Option<i32>,
}

/// One slot of the fd table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdEntry {
    pub fd: i32,
    pub file_id: u32,
    pub cloexec: bool,
}

/// A signal disposition other than the default (engine::signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub sig: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSignals {
    pub actions: Vec<SigAction>,
    /// Process-wide pending signals, each a raw 128-byte siginfo.
    pub shared_pending: Vec<Siginfo>,
}

/// A raw siginfo as the kernel queues it (128 bytes), with the signal number for readability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Siginfo {
    pub signo: u32,
    #[serde(with = "crate::bytes")]
    pub raw: Vec<u8>,
}

/// One interval timer (engine::timers): which = ITIMER_REAL, ITIMER_VIRTUAL or ITIMER_PROF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimer {
    pub which: u32,
    pub interval_us: u64,
    pub value_us: u64,
}

/// One POSIX timer (engine::posix_timers), as /proc/PID/timers, timer_gettime and
/// timer_getoverrun report it. `notify` is the sigev_notify value (SIGEV_SIGNAL, SIGEV_NONE,
/// SIGEV_THREAD, or SIGEV_THREAD_ID with the thread in `tid`); `signo` and `sival` are the
/// signal and value it sends. `value_ns` is the time to the next expiry when the process was
/// frozen (0: disarmed); `overrun` is informative (the kernel has no way to set it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    pub notify: i32,
    pub signo: u32,
    pub sival: u64,
    pub tid: i32,
    pub value_ns: u64,
    pub interval_ns: u64,
    pub overrun: i32,
}

/// One thread (engine::thread).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadImage {
    pub tid: i32,
    pub comm: String,
    pub regs: Regs,
    /// The XSAVE area (x87, SSE, AVX, ...), as PTRACE_GETREGSET NT_X86_XSTATE returns it.
    #[serde(with = "crate::bytes")]
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    pub pending: Vec<Siginfo>,
    pub altstack: AltStack,
    pub rseq: Option<Rseq>,
    pub robust_list: u64,
    pub robust_list_len: u64,
    pub clear_child_tid: u64,
    /// The audit login uid of the thread (u32::MAX: unset), usually the process's
    /// (engine::task::loginuid).
    pub loginuid: u32,
    /// Scheduling policy, priority, nice value and CPU affinity (engine::task::sched).
    pub sched: ThreadSched,
    /// Per-thread prctl state (engine::task::prctl).
    pub prctl: ThreadPrctl,
}

/// A thread's scheduling (engine::task::sched), as sched_getattr, getpriority and
/// sched_getaffinity report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSched {
    /// SCHED_OTHER 0, SCHED_FIFO 1, SCHED_RR 2, SCHED_BATCH 3, SCHED_IDLE 5, SCHED_DEADLINE 6.
    pub policy: u32,
    /// SCHED_FLAG_RESET_ON_FORK (1).
    pub reset_on_fork: bool,
    /// The nice value (-20..=19); kept for real-time threads too, whose nice value applies
    /// again when they return to a fair policy.
    pub nice: i32,
    /// The real-time priority (1..=99 for SCHED_FIFO and SCHED_RR, else 0).
    pub priority: u32,
    /// For a fair policy, a time slice the thread asked for (sched_runtime), or 0 for the
    /// default; for SCHED_DEADLINE, its runtime. In ns.
    pub runtime_ns: u64,
    /// SCHED_DEADLINE's deadline and period in ns (0 otherwise).
    pub deadline_ns: u64,
    pub period_ns: u64,
    /// CPU affinity: bit n of word n / 64 stands for CPU n.
    pub affinity: Vec<u64>,
}

/// Per-thread prctl state that clone inherits (engine::task::prctl).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadPrctl {
    /// PR_GET_TIMERSLACK, in ns.
    pub timerslack_ns: u64,
    /// PR_GET_TSC: PR_TSC_ENABLE (1) or PR_TSC_SIGSEGV (2).
    pub tsc: u32,
    /// PR_MCE_KILL_GET: PR_MCE_KILL_LATE (0), PR_MCE_KILL_EARLY (1) or PR_MCE_KILL_DEFAULT (2).
    pub mce_kill: u32,
    /// PR_SET_IO_FLUSHER in effect (PF_MEMALLOC_NOIO and PF_LOCAL_THROTTLE in the task flags).
    pub io_flusher: bool,
    /// PR_GET_SPECULATION_CTRL for PR_SPEC_STORE_BYPASS, PR_SPEC_INDIRECT_BRANCH and
    /// PR_SPEC_L1D_FLUSH (0 where the kernel has no such control); only restored when it has
    /// PR_SPEC_PRCTL (the mitigation is under prctl control).
    pub spec_store_bypass: u32,
    pub spec_indirect_branch: u32,
    pub spec_l1d_flush: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub signature: u32,
}

/// x86-64 general registers, in the order of the kernel's `user_regs_struct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_process;
    use crate::{decode_record, encode_record, RecordKind};
    use std::path::Path;

    #[test]
    fn process_round_trip() {
        let p = sample_process();
        let b = encode_record(RecordKind::Process, &p, Path::new("x")).unwrap();
        let back: ProcessImage = decode_record(RecordKind::Process, &b, Path::new("x")).unwrap();
        assert_eq!(p, back);
    }

    /// `LinkRemap` was added after format version 6 without a bump: it must stay the last
    /// variant, so that every other kind keeps the number older images were written with.
    #[test]
    fn link_remap_is_appended_and_round_trips() {
        let old = postcard::to_allocvec(&FileKind::PtySlave { index: 3 }).unwrap();
        assert_eq!(old, [24, 3], "PtySlave keeps its number");
        let inet = postcard::to_allocvec(&FileKind::Inet(Box::default())).unwrap();
        assert_eq!(inet[0], 25, "Inet keeps its number");
        let kind = FileKind::LinkRemap {
            path: "/d/a".into(),
            remap: "/d/.stasis-remap.2049.7".into(),
            dev: 2049,
            ino: 7,
            size: 9,
        };
        let b = postcard::to_allocvec(&kind).unwrap();
        assert_eq!(b[0], 26, "the new kind comes last");
        assert_eq!(postcard::from_bytes::<FileKind>(&b).unwrap(), kind);
        // In a whole record too (the sample holds one).
        let p = sample_process();
        assert!(p
            .files
            .iter()
            .any(|f| matches!(f.kind, FileKind::LinkRemap { .. })));
    }

    #[test]
    fn inventory_round_trip() {
        let i = Inventory {
            tool_version: "0.1.0".into(),
            kernel_release: "6.18".into(),
            created_unix_ms: 5,
            root_pid: 42,
            processes: vec![42],
            zombies: vec![Zombie {
                pid: 43,
                ppid: 42,
                pgid: 42,
                sid: 42,
                exit_status: 0x2a00,
            }],
            parent: Some(ParentLink {
                path: "../d1".into(),
                inventory_blake3: [7; 32],
                pages: vec![ParentPages {
                    pid: 42,
                    payload_len: 8192,
                }],
            }),
        };
        let b = encode_record(RecordKind::Inventory, &i, Path::new("x")).unwrap();
        let back: Inventory = decode_record(RecordKind::Inventory, &b, Path::new("x")).unwrap();
        assert_eq!(i, back);
    }

    /// Hostile payloads: the payload of a valid record mutated at random (with a fixed seed),
    /// its CRC recomputed so decoding really runs, then decoded and validated. Nothing may
    /// panic or hang; whatever decodes must pass or fail validation cleanly.
    #[test]
    fn mutated_process_records_never_panic() {
        let decoded =
            crate::testing::mutated_process_records(0x2545_f491_4f6c_dd1d, 20_000, |img| {
                let _ = crate::validate_process(
                    &img,
                    1 << 20,
                    Path::new("x"),
                    &crate::testing::NoFileChecks,
                );
            });
        assert!(
            decoded > 0,
            "no mutation decoded: the test would not exercise validation"
        );
    }

    #[test]
    fn every_truncation_of_a_process_record_fails_cleanly() {
        let b = encode_record(RecordKind::Process, &sample_process(), Path::new("x")).unwrap();
        for cut in 0..b.len() {
            assert!(
                decode_record::<ProcessImage>(RecordKind::Process, &b[..cut], Path::new("x"))
                    .is_err()
            );
        }
    }
}
