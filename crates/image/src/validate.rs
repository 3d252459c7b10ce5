//! Semantic checks of a decoded process record. Images are untrusted input: a record that
//! decodes is still checked for sizes, alignment, ranges and references before any of it is
//! used to build a process.
//!
//! File descriptions are checked here only for what every kind shares (unique ids, an fd table
//! that refers to known descriptions); what a description of one kind may hold is checked by
//! the module that restores that kind (the engine's `files/`), handed to [`validate_process`]
//! as a [`FileChecks`]. So the rules for a kind live next to the code that relies on them, and
//! a new kind needs no change here.

use crate::{ImageError, LockRange, ProcessImage, RunCodec, VmaKind, MAX_ZSTD_RUN_PAGES};
use std::path::Path;

const PAGE: u64 = 4096;
/// Highest user address on x86-64 with 4-level page tables.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const MAX_VMAS: usize = 1 << 20;
/// Most fds (and file descriptions) a process record may have.
pub const MAX_FDS: usize = 1 << 20;
/// Longest path a record may hold (PATH_MAX).
pub const MAX_PATH: usize = 4096;
const MAX_XSTATE: usize = 16 * 1024;
const MAX_POSIX_TIMERS: usize = 1 << 16;

/// Whether `s` is a path a record may hold: absolute, at most [`MAX_PATH`] bytes, without NUL.
pub fn valid_absolute_path(s: &str) -> bool {
    s.len() <= MAX_PATH && !s.contains('\0') && s.starts_with('/')
}

/// The checks of file descriptions that depend on their kind, supplied by the engine (each
/// kind's module checks its own records). [`validate_process`] runs them after its own checks.
pub trait FileChecks {
    /// Checks every description of `p`, and whatever else in `p` refers to one of a kind (a
    /// mapping of a memfd); the error says what is wrong with which description.
    fn check(&self, p: &ProcessImage) -> Result<(), String>;
}

/// Checks everything the restore relies on. `pages_len` is the payload length of the pages
/// file, so that every page run is known to lie inside it; `files` checks the descriptions of
/// each kind. Page runs in an earlier image of a chain are refused: a record of an
/// incremental dump is checked with [`validate_process_in_chain`].
pub fn validate_process(
    p: &ProcessImage,
    pages_len: u64,
    path: &Path,
    files: &dyn FileChecks,
) -> Result<(), ImageError> {
    validate_process_in_chain(p, &[Some(pages_len)], path, files)
}

/// [`validate_process`] for a record of a chain of incremental dumps: `pages_lens[k]` is the
/// payload length of the process's pages file in image `k` of the chain (0 this dump, 1 its
/// parent, ...), `None` where that file is not open; every run must lie inside the pages file
/// of its image.
pub fn validate_process_in_chain(
    p: &ProcessImage,
    pages_lens: &[Option<u64>],
    path: &Path,
    files: &dyn FileChecks,
) -> Result<(), ImageError> {
    let bad = |reason: String| {
        Err(ImageError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    };
    if p.pid <= 0 || p.threads.is_empty() || p.threads.len() > 1 << 16 {
        return bad(format!("pid {} with {} threads", p.pid, p.threads.len()));
    }
    if p.vmas.len() > MAX_VMAS || p.fds.len() > MAX_FDS || p.files.len() > MAX_FDS {
        return bad("too many mappings, fds or file descriptions".into());
    }
    for s in [&p.task.exe_path, &p.task.cwd, &p.task.root] {
        if !valid_absolute_path(s) {
            return bad(format!("bad path {s:?}"));
        }
    }
    if let Some(d) = &p.task.cwd_deleted {
        if d.mode & !0o7777 != 0 {
            return bad(format!(
                "deleted cwd mode {:#o} has more than permission bits",
                d.mode
            ));
        }
    }
    if p.task.comm.len() > 64 {
        return bad("comm too long".into());
    }
    // Locks: a lock range ends after it starts (and fits an off_t); a POSIX lock is taken
    // through an fd of the process.
    let bad_range = |r: &LockRange| {
        r.start > i64::MAX as u64 || r.end.is_some_and(|e| e < r.start || e > i64::MAX as u64)
    };
    if p.posix_locks.len() > MAX_FDS || p.files.iter().any(|f| f.locks.len() > 16) {
        return bad("too many locks".into());
    }
    // A set, not a scan of the table per lock: a record of a million locks and a million fds
    // (a few MiB) must not take 10^12 steps to check.
    let fd_set: std::collections::HashSet<i32> = p.fds.iter().map(|f| f.fd).collect();
    for l in &p.posix_locks {
        if bad_range(&l.range) || !fd_set.contains(&l.fd) {
            return bad(format!("POSIX lock through fd {} is not valid", l.fd));
        }
    }
    for f in &p.files {
        if f.locks.iter().any(|l| bad_range(&l.range) || l.pid < -1) {
            return bad(format!(
                "a lock of description {} has a bad range or pid",
                f.id
            ));
        }
    }
    if p.creds.groups.len() > 65536 {
        return bad("too many supplementary groups".into());
    }
    if p.mm.auxv.len() > 1024 || !p.mm.auxv.len().is_multiple_of(2) {
        return bad("bad auxv length".into());
    }
    validate_seccomp(&p.seccomp, p.threads.len()).or_else(bad)?;
    if p.task.exe_memfd != 0
        && !p.vmas.iter().any(|v| {
            v.kind
                == (VmaKind::Memfd {
                    memfd_id: p.task.exe_memfd,
                })
        })
    {
        return bad(format!(
            "the executable is memfd {}, which no mapping maps",
            p.task.exe_memfd
        ));
    }
    let mut prev_end = 0u64;
    for v in &p.vmas {
        if let VmaKind::Aio { nr } = v.kind {
            // struct aio_ring (32 bytes) and nr io_events (32 bytes each), shared.
            if !v.shared || v.end.saturating_sub(v.start).saturating_sub(32) / 32 != u64::from(nr) {
                return bad(format!(
                    "AIO ring {:#x}-{:#x} does not hold {nr} events",
                    v.start, v.end
                ));
            }
        }
        let special = matches!(v.kind, VmaKind::Vsyscall);
        if v.start % PAGE != 0
            || v.end % PAGE != 0
            || v.start >= v.end
            || (!special && v.end > TASK_SIZE)
        {
            return bad(format!(
                "mapping {:#x}-{:#x} is not a valid range",
                v.start, v.end
            ));
        }
        if v.start < prev_end {
            return bad(format!(
                "mapping {:#x}-{:#x} overlaps the previous one",
                v.start, v.end
            ));
        }
        prev_end = v.end;
        if v.prot & !7 != 0 || v.file_offset % PAGE != 0 || v.name.len() > MAX_PATH {
            return bad(format!(
                "mapping {:#x}-{:#x} has bad protection, offset or name",
                v.start, v.end
            ));
        }
        if let VmaKind::File { path: fp, .. } = &v.kind {
            if !valid_absolute_path(fp) {
                return bad(format!("bad mapped file path {fp:?}"));
            }
        }
        if let Err(why) = check_advice(v) {
            return bad(format!(
                "mapping {:#x}-{:#x} has impossible advice: {why}",
                v.start, v.end
            ));
        }
    }
    if let Err(why) = check_process_parts(p) {
        return bad(why);
    }
    // Page runs: sorted, inside one non-special mapping each, inside the pages file.
    let mut prev = 0u64;
    let mut vi = 0usize;
    for r in &p.page_runs {
        let len = r.npages.checked_mul(PAGE);
        let end = len.and_then(|l| r.addr.checked_add(l));
        let (Some(len), Some(end)) = (len, end) else {
            return bad(format!("page run at {:#x} overflows", r.addr));
        };
        if r.addr % PAGE != 0 || r.npages == 0 || r.addr < prev {
            return bad(format!(
                "page run at {:#x} is unaligned, empty or out of order",
                r.addr
            ));
        }
        let stored_ok = match r.codec {
            RunCodec::Raw => r.stored_len == len && r.offset % PAGE == 0,
            // A compressed run is stored only when it is smaller than the pages, and is
            // decoded whole into a buffer: its length is bounded.
            RunCodec::Zstd => {
                r.stored_len > 0 && r.stored_len < len && r.npages <= MAX_ZSTD_RUN_PAGES
            }
            // Nothing stored (the parent's pages, see `RunCodec::Inherited`).
            RunCodec::Inherited => r.stored_len == 0 && r.offset == 0 && r.crc == 0 && r.image == 0,
        };
        if !stored_ok {
            return bad(format!(
                "page run at {:#x} has {} stored bytes at offset {}: impossible for {} pages stored as {:?}",
                r.addr, r.stored_len, r.offset, r.npages, r.codec
            ));
        }
        let Some(&Some(pages_len)) = pages_lens.get(r.image as usize) else {
            return bad(format!(
                "page run at {:#x} is in image {} of a chain of incremental dumps, which is not \
                 there (this dump's chain has {} image(s) open)",
                r.addr,
                r.image,
                pages_lens.len()
            ));
        };
        prev = end;
        while vi < p.vmas.len() && p.vmas[vi].end <= r.addr {
            vi += 1;
        }
        let inside = p.vmas.get(vi).is_some_and(|v| {
            v.start <= r.addr
                && end <= v.end
                && !matches!(
                    v.kind,
                    VmaKind::Vdso
                        | VmaKind::Vvar
                        | VmaKind::VvarVclock
                        | VmaKind::Vsyscall
                        | VmaKind::Aio { .. }
                )
        });
        if !inside {
            return bad(format!(
                "page run {:#x}-{end:#x} is not inside one restorable mapping",
                r.addr
            ));
        }
        let inherited_ok = r.codec != RunCodec::Inherited
            || p.vmas.get(vi).is_some_and(|v| {
                v.kind == VmaKind::Anonymous && !v.shared && v.shmem_id == 0 && !v.growsdown
            });
        if !inherited_ok {
            return bad(format!(
                "page run {:#x}-{end:#x} is inherited from the parent process but is not in \
                 private anonymous memory",
                r.addr
            ));
        }
        if r.offset
            .checked_add(r.stored_len)
            .is_none_or(|e| e > pages_len)
        {
            return bad(format!(
                "page run at {:#x} points past the end of the pages file",
                r.addr
            ));
        }
    }
    // Files and fds: what every kind shares; the rest is the kinds' own checks (at the end).
    let mut ids = std::collections::BTreeSet::new();
    for f in &p.files {
        if !ids.insert(f.id) {
            return bad(format!("file description {} is listed twice", f.id));
        }
        // The owner of its I/O signals: F_OWNER_TID, F_OWNER_PID or F_OWNER_PGRP, a pid that
        // is not negative, a signal number up to 64 (0: SIGIO).
        let o = &f.owner;
        if o.kind > 2 || o.pid < 0 || o.signal > 64 {
            return bad(format!(
                "file description {} has a bad I/O signal owner ({o:?})",
                f.id
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for fd in &p.fds {
        if fd.fd < 0 || !seen.insert(fd.fd) {
            return bad(format!("fd {} is negative or listed twice", fd.fd));
        }
        if !ids.contains(&fd.file_id) {
            return bad(format!(
                "fd {} refers to unknown file {}",
                fd.fd, fd.file_id
            ));
        }
    }
    // Signals and threads.
    let sig_ok = |s: u32| (1..=64).contains(&s);
    for a in &p.signals.actions {
        if !sig_ok(a.sig) || a.sig == 9 || a.sig == 19 {
            return bad(format!("bad signal action for signal {}", a.sig));
        }
    }
    let info_ok = |i: &crate::Siginfo| sig_ok(i.signo) && i.raw.len() == 128;
    if !p.signals.shared_pending.iter().all(info_ok) || p.signals.shared_pending.len() > 1 << 16 {
        return bad("bad pending signal".into());
    }
    if p.itimers.iter().any(|t| t.which > 2) || p.itimers.len() > 3 {
        return bad("bad interval timer".into());
    }
    for t in &p.threads {
        if t.tid <= 0 || t.xstate.len() > MAX_XSTATE || t.xstate.len() < 576 {
            return bad(format!(
                "thread {} has bad xstate of {} bytes",
                t.tid,
                t.xstate.len()
            ));
        }
        if !t.pending.iter().all(info_ok) || t.pending.len() > 1 << 16 || t.comm.len() > 64 {
            return bad(format!("thread {} has bad pending signals or name", t.tid));
        }
    }
    if p.threads[0].tid != p.pid {
        return bad("the first thread is not the thread-group leader".into());
    }
    if p.posix_timers.len() > MAX_POSIX_TIMERS {
        return bad("too many POSIX timers".into());
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in &p.posix_timers {
        // sigev_notify: SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD 2, SIGEV_THREAD_ID 4.
        let notify_ok = [0, 1, 2].contains(&t.notify) || (t.notify == 4 && t.tid > 0);
        let signo_ok = t.signo <= 64 && (t.signo != 0 || t.notify == 1);
        if t.id < 0 || !ids.insert(t.id) || !notify_ok || !signo_ok {
            return bad(format!("bad POSIX timer {}", t.id));
        }
    }
    files.check(p).or_else(bad)
}

/// SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: the signals that stop a process.
const STOP_SIGNALS: [u32; 4] = [19, 20, 21, 22];
/// The registration commands membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS) reports.
const MEMBARRIER_REGISTRATIONS: u32 = (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8);
/// Most words of a CPU affinity mask (8192 CPUs).
const MAX_AFFINITY_WORDS: usize = 128;

/// What madvise, mlock and mseal can leave on one mapping.
fn check_advice(v: &crate::Vma) -> Result<(), &'static str> {
    let a = &v.advice;
    let special = matches!(
        v.kind,
        VmaKind::Vdso
            | VmaKind::Vvar
            | VmaKind::VvarVclock
            | VmaKind::Vsyscall
            | VmaKind::Aio { .. }
    );
    if special && *a != crate::VmaAdvice::default() {
        return Err("a special mapping is never advised");
    }
    if a.hugepage && a.nohugepage {
        return Err("MADV_HUGEPAGE and MADV_NOHUGEPAGE");
    }
    if a.sequential && a.random {
        return Err("MADV_SEQUENTIAL and MADV_RANDOM");
    }
    if a.lock_on_fault && !a.locked {
        return Err("locked on fault without being locked");
    }
    if a.wipeonfork && (v.shared || v.kind != VmaKind::Anonymous) {
        return Err("MADV_WIPEONFORK on memory other than private anonymous");
    }
    Ok(())
}

/// The per-process and per-thread parts outside memory and files: job-control stop, prctl
/// state, scheduling, oom_score_adj.
fn check_process_parts(p: &ProcessImage) -> Result<(), String> {
    if let Some(s) = &p.stop {
        if !STOP_SIGNALS.contains(&s.signal) {
            return Err(format!("stopped by signal {}, not a stop signal", s.signal));
        }
    }
    if ![0, 2, 6].contains(&p.mlock_future) {
        return Err(format!("bad mlockall flags {:#x}", p.mlock_future));
    }
    let c = &p.prctl;
    if ![0, 1, 3].contains(&c.thp_disable)
        || c.mdwe & !3 != 0
        || c.membarrier & !MEMBARRIER_REGISTRATIONS != 0
    {
        return Err(format!("bad process prctl state {c:?}"));
    }
    if !(-1000..=1000).contains(&p.task.oom_score_adj) {
        return Err(format!("bad oom_score_adj {}", p.task.oom_score_adj));
    }
    for t in &p.threads {
        let s = &t.sched;
        let rt = s.policy == 1 || s.policy == 2;
        let ok = [0, 1, 2, 3, 5, 6].contains(&s.policy)
            && (-20..=19).contains(&s.nice)
            && (if rt {
                (1..=99).contains(&s.priority)
            } else {
                s.priority == 0
            })
            && (s.policy == 6 || (s.deadline_ns == 0 && s.period_ns == 0))
            && !s.affinity.is_empty()
            && s.affinity.len() <= MAX_AFFINITY_WORDS
            && s.affinity.iter().any(|w| *w != 0);
        if !ok {
            return Err(format!("thread {} has bad scheduling {s:?}", t.tid));
        }
        let c = &t.prctl;
        if ![1, 2].contains(&c.tsc)
            || c.mce_kill > 2
            || c.spec_store_bypass > 31
            || c.spec_indirect_branch > 31
            || c.spec_l1d_flush > 31
        {
            return Err(format!("thread {} has bad prctl state {c:?}", t.tid));
        }
    }
    Ok(())
}

/// The most seccomp filters a process record may hold (the kernel limits a chain to 32768
/// instructions in all, each filter counting 4 more: at most 4096 one-instruction filters).
pub const MAX_SECCOMP_FILTERS: usize = 4096;

fn validate_seccomp(s: &crate::ProcessSeccomp, threads: usize) -> Result<(), String> {
    if s.filters.len() > MAX_SECCOMP_FILTERS {
        return Err(format!("{} seccomp filters", s.filters.len()));
    }
    if s.filters
        .iter()
        .any(|f| f.insns.is_empty() || f.insns.len() > 4096)
    {
        return Err("a seccomp filter with no or more than 4096 instructions".into());
    }
    if !s.threads.is_empty() && s.threads.len() != threads {
        return Err(format!(
            "seccomp state for {} threads, the process has {threads}",
            s.threads.len()
        ));
    }
    for t in &s.threads {
        let bad_chain = match t.mode {
            0 | 1 => !t.chain.is_empty(),
            2 => t.chain.is_empty() || t.chain.len() > MAX_SECCOMP_FILTERS,
            _ => true,
        };
        if bad_chain || t.chain.iter().any(|&i| i as usize >= s.filters.len()) {
            return Err(format!(
                "bad seccomp mode {} or filter chain {:?}",
                t.mode, t.chain
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{sample_process, NoFileChecks};
    use crate::{FdEntry, PageRun};

    fn validate(p: &ProcessImage, pages_len: u64) -> Result<(), ImageError> {
        validate_process(p, pages_len, Path::new("x"), &NoFileChecks)
    }

    #[test]
    fn sample_is_valid() {
        validate(&sample_process(), 8192).unwrap();
    }

    /// A compressed run is shorter than its pages and at most MAX_ZSTD_RUN_PAGES long.
    #[test]
    fn compressed_runs_are_bounded() {
        let mut p = sample_process();
        // Room for 1024 pages of heap.
        p.vmas[1].end = 0x900000;
        p.vmas[2].start = 0x900000;
        p.vmas[2].end = 0x902000;
        let run = |npages: u64, stored_len: u64| crate::PageRun {
            addr: 0x500000,
            npages,
            offset: 1,
            stored_len,
            codec: RunCodec::Zstd,
            crc: 0,
            image: 0,
        };
        p.page_runs = vec![run(MAX_ZSTD_RUN_PAGES, 1000)];
        validate(&p, 8192).unwrap();
        for (r, why) in [
            (run(MAX_ZSTD_RUN_PAGES + 1, 1000), "too many pages"),
            (run(1, 4096), "not smaller"),
            (run(2, 0), "empty"),
            (run(3, 8192), "past the pages file"),
        ] {
            p.page_runs = vec![r];
            assert!(validate(&p, 8192).is_err(), "{why}");
        }
    }

    /// A run inherited from the parent stores nothing and lies in private anonymous memory
    /// that does not grow down.
    #[test]
    fn inherited_runs_store_nothing_in_private_anonymous_memory() {
        let mut p = sample_process();
        // vmas[1]: the heap (private anonymous); vmas[3]: the stack (grows down).
        p.page_runs = vec![PageRun::inherited(0x500000, 2)];
        validate(&p, 0).unwrap();
        let stack = p.vmas[3].start;
        for (r, why) in [
            (
                PageRun {
                    offset: 4096,
                    ..PageRun::inherited(0x500000, 2)
                },
                "an offset",
            ),
            (
                PageRun {
                    stored_len: 4096,
                    ..PageRun::inherited(0x500000, 2)
                },
                "stored bytes",
            ),
            (
                PageRun {
                    image: 1,
                    ..PageRun::inherited(0x500000, 2)
                },
                "an image of a chain",
            ),
            (PageRun::inherited(0x600000, 1), "a memfd mapping"),
            (PageRun::inherited(stack, 1), "a stack"),
        ] {
            p.page_runs = vec![r];
            assert!(validate(&p, 1 << 20).is_err(), "{why}");
        }
    }

    /// Many POSIX locks through many fds are checked in linear time (a scan of the fd table
    /// per lock took 10^10 steps here; found reading the checks the fuzzers run).
    #[test]
    fn many_locks_and_fds_are_checked_quickly() {
        let mut p = sample_process();
        let n = 100_000;
        let (file_id, lock) = (p.fds[0].file_id, p.posix_locks[0]);
        p.fds = (0..n)
            .map(|fd| FdEntry {
                fd,
                file_id,
                cloexec: false,
            })
            .collect();
        p.posix_locks = (0..n)
            .rev()
            .map(|fd| crate::PosixLock { fd, ..lock })
            .collect();
        let t = std::time::Instant::now();
        validate(&p, 8192).unwrap();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        p.posix_locks[7].fd = n;
        assert!(
            validate(&p, 8192).is_err(),
            "a lock through an fd not in the table"
        );
    }

    #[test]
    fn runs_of_a_chain_lie_in_the_pages_file_of_their_image() {
        let chain = |p: &ProcessImage, lens: &[Option<u64>]| {
            validate_process_in_chain(p, lens, Path::new("x"), &NoFileChecks)
        };
        let mut p = sample_process();
        p.page_runs[0] = PageRun {
            image: 2,
            ..PageRun::raw(0x500000, 3, 4096, 0)
        };
        assert!(validate(&p, 1 << 20).is_err(), "not a chain");
        assert!(chain(&p, &[Some(0), None, Some(4 * 4096)]).is_ok());
        let err = chain(&p, &[Some(0), Some(1 << 20)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("image 2"), "{err}");
        assert!(chain(&p, &[Some(1 << 20), Some(1 << 20), None]).is_err());
        assert!(
            chain(&p, &[Some(0), None, Some(3 * 4096)]).is_err(),
            "past the end of the grandparent's pages file"
        );
    }

    #[test]
    fn rejects_bad_records() {
        let mut p = sample_process();
        p.page_runs[0] = PageRun::raw(0x500000, 3, 0, 0);
        assert!(validate(&p, 8192).is_err(), "run past the pages file");

        let mut p = sample_process();
        p.page_runs[0].addr = 0x7ffd00000000;
        assert!(validate(&p, 8192).is_err(), "run inside vvar");

        let mut p = sample_process();
        p.page_runs[0].npages = u64::MAX;
        assert!(validate(&p, u64::MAX).is_err(), "overflow");

        let mut p = sample_process();
        p.vmas.swap(0, 1);
        assert!(validate(&p, 8192).is_err(), "unsorted mappings");

        let mut p = sample_process();
        p.fds.push(FdEntry {
            fd: 3,
            file_id: 0,
            cloexec: false,
        });
        assert!(validate(&p, 8192).is_err(), "duplicate fd");

        let mut p = sample_process();
        p.fds[0].file_id = 99;
        assert!(validate(&p, 8192).is_err(), "dangling file id");

        let mut p = sample_process();
        p.posix_locks[0].fd = 77;
        assert!(
            validate(&p, 8192).is_err(),
            "POSIX lock through an unknown fd"
        );

        let mut p = sample_process();
        p.posix_locks[0].range.end = Some(0);
        p.posix_locks[0].range.start = 5;
        assert!(
            validate(&p, 8192).is_err(),
            "POSIX lock ending before it starts"
        );

        let mut p = sample_process();
        let locked = p.files.iter_mut().find(|f| !f.locks.is_empty()).unwrap();
        locked.locks[0].range.start = u64::MAX;
        assert!(validate(&p, 8192).is_err(), "description lock past off_t");

        let mut p = sample_process();
        let locked = p.files.iter_mut().find(|f| !f.locks.is_empty()).unwrap();
        locked.locks[0].pid = -5;
        assert!(validate(&p, 8192).is_err(), "description lock with pid -5");

        let mut p = sample_process();
        p.files[1].id = p.files[0].id;
        assert!(validate(&p, 8192).is_err(), "description id twice");

        for (kind, pid, signal) in [(3, 1, 0), (1, -1, 0), (1, 1, 65)] {
            let mut p = sample_process();
            p.files[0].owner = crate::FileOwner { kind, pid, signal };
            assert!(validate(&p, 8192).is_err(), "owner {kind} {pid} {signal}");
        }

        let mut p = sample_process();
        p.signals.actions[0].sig = 9;
        assert!(validate(&p, 8192).is_err(), "SIGKILL action");

        let mut p = sample_process();
        p.task.cwd = "relative".into();
        assert!(validate(&p, 8192).is_err(), "relative cwd");
        let mut p = sample_process();
        p.task.cwd_deleted = Some(crate::DeletedDir {
            mode: 0o40755,
            uid: 0,
            gid: 0,
        });
        assert!(
            validate(&p, 8192).is_err(),
            "file type bits in a deleted cwd's mode"
        );

        let mut p = sample_process();
        p.threads[0].xstate = vec![0; 1 << 20];
        assert!(validate(&p, 8192).is_err(), "huge xstate");

        let mut p = sample_process();
        p.posix_timers.push(p.posix_timers[0]);
        assert!(validate(&p, 8192).is_err(), "duplicate timer");

        let mut p = sample_process();
        p.posix_timers[0].signo = 65;
        assert!(validate(&p, 8192).is_err(), "timer signal");

        let mut p = sample_process();
        p.vmas[1].advice.nohugepage = true;
        assert!(validate(&p, 8192).is_err(), "hugepage and nohugepage");

        let mut p = sample_process();
        p.vmas[2].advice.wipeonfork = true;
        assert!(validate(&p, 8192).is_err(), "wipeonfork on a shared memfd");

        let mut p = sample_process();
        p.vmas[5].advice.locked = true;
        assert!(validate(&p, 8192).is_err(), "locked vdso");

        let mut p = sample_process();
        p.vmas[1].advice.locked = false;
        p.vmas[1].advice.lock_on_fault = true;
        assert!(validate(&p, 8192).is_err(), "lock on fault without lock");

        let mut p = sample_process();
        p.stop = Some(crate::JobStop {
            signal: 9,
            report_pending: false,
        });
        assert!(validate(&p, 8192).is_err(), "stopped by SIGKILL");

        let mut p = sample_process();
        p.threads[0].sched.priority = 0;
        assert!(validate(&p, 8192).is_err(), "SCHED_FIFO priority 0");

        let mut p = sample_process();
        p.threads[0].sched.affinity = vec![0];
        assert!(validate(&p, 8192).is_err(), "no CPU");

        let mut p = sample_process();
        p.threads[0].sched.nice = 20;
        assert!(validate(&p, 8192).is_err(), "nice 20");

        let mut p = sample_process();
        p.task.oom_score_adj = 1001;
        assert!(validate(&p, 8192).is_err(), "oom_score_adj");

        let mut p = sample_process();
        p.prctl.membarrier = 1 << 3;
        assert!(
            validate(&p, 8192).is_err(),
            "membarrier command that is no registration"
        );

        let mut p = sample_process();
        p.mlock_future = 4;
        assert!(validate(&p, 8192).is_err(), "MCL_ONFAULT alone");

        let mut p = sample_process();
        p.threads[0].prctl.tsc = 0;
        assert!(validate(&p, 8192).is_err(), "PR_GET_TSC 0");
    }

    /// The kinds' checks run last, and their message names the record.
    #[test]
    fn rejects_bad_seccomp_state() {
        let mut p = sample_process();
        p.seccomp.threads[0].chain = vec![1];
        assert!(validate(&p, 8192).is_err(), "chain past the filters");
        let mut p = sample_process();
        p.seccomp.threads[0].mode = 3;
        assert!(validate(&p, 8192).is_err(), "unknown mode");
        let mut p = sample_process();
        p.seccomp.threads[0].mode = 1;
        assert!(validate(&p, 8192).is_err(), "strict mode with filters");
        let mut p = sample_process();
        p.seccomp.threads[0].chain.clear();
        assert!(validate(&p, 8192).is_err(), "filter mode without filters");
        let mut p = sample_process();
        p.seccomp.filters[0].insns.clear();
        assert!(validate(&p, 8192).is_err(), "empty program");
        let mut p = sample_process();
        p.seccomp.filters[0].insns = vec![6; 4097];
        assert!(validate(&p, 8192).is_err(), "program too long");
        let mut p = sample_process();
        p.seccomp.threads.push(crate::ThreadSeccomp::default());
        assert!(validate(&p, 8192).is_err(), "more entries than threads");
        let mut p = sample_process();
        p.seccomp.threads.clear();
        validate(&p, 8192).unwrap();
    }

    #[test]
    fn exe_memfd_must_be_mapped() {
        let mut p = sample_process();
        p.task.exe_memfd = 987654;
        assert!(validate(&p, 8192).is_err(), "an exe memfd no mapping maps");
        let mapped = p.vmas.iter().find_map(|v| match v.kind {
            VmaKind::Memfd { memfd_id } => Some(memfd_id),
            _ => None,
        });
        if let Some(id) = mapped {
            p.task.exe_memfd = id;
            validate(&p, 8192).unwrap();
        }
    }

    #[test]
    fn runs_the_file_checks() {
        struct Refuse;
        impl FileChecks for Refuse {
            fn check(&self, p: &ProcessImage) -> Result<(), String> {
                Err(format!("description {} is wrong", p.files[0].id))
            }
        }
        let err = validate_process(&sample_process(), 8192, Path::new("rec"), &Refuse)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rec") && err.contains("description 0 is wrong"),
            "{err}"
        );
    }

    #[test]
    fn absolute_paths() {
        assert!(valid_absolute_path("/tmp/x"));
        assert!(!valid_absolute_path("tmp/x"));
        assert!(!valid_absolute_path("/tmp/\0x"));
        assert!(!valid_absolute_path(&format!("/{}", "x".repeat(MAX_PATH))));
    }
}
