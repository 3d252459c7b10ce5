//! Semantic checks of a decoded process record. Images are untrusted input: a record that
//! decodes is still checked for sizes, alignment, ranges and references before any of it is
//! used to build a process.

use crate::{FileKind, ImageError, ProcessImage, VmaKind};
use std::path::Path;

const PAGE: u64 = 4096;
/// Highest user address on x86-64 with 4-level page tables.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const MAX_VMAS: usize = 1 << 20;
const MAX_FDS: usize = 1 << 20;
const MAX_PATH: usize = 4096;
const MAX_XSTATE: usize = 16 * 1024;
const MAX_PIPE_DATA: usize = 16 << 20;
/// Longest memfd name the kernel accepts (MFD_NAME_MAX_LEN).
const MAX_MEMFD_NAME: usize = 249;
/// Highest value an eventfd counter can hold.
const MAX_EVENTFD_COUNT: u64 = u64::MAX - 1;
const MAX_POSIX_TIMERS: usize = 1 << 16;
/// Most watches one inotify instance may have in an image.
pub const MAX_INOTIFY_WATCHES: usize = 1 << 20;
/// Highest inotify watch descriptor an image may hold: restoring watch descriptor n creates and
/// removes a throwaway watch for every unused number below n (about 5 µs each).
pub const MAX_INOTIFY_WD: i32 = 1 << 22;
/// The mask bits inotify_add_watch takes that a watch keeps: IN_ALL_EVENTS, IN_EXCL_UNLINK,
/// IN_ONESHOT.
pub const INOTIFY_WATCH_MASK: u32 = 0xfff | 0x0400_0000 | 0x8000_0000;

/// Checks everything the restore relies on. `pages_len` is the payload length of the pages
/// file, so that every page run is known to lie inside it.
pub fn validate_process(p: &ProcessImage, pages_len: u64, path: &Path) -> Result<(), ImageError> {
    let bad = |reason: String| {
        Err(ImageError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    };
    if p.pid <= 0 || p.threads.is_empty() || p.threads.len() > 1 << 16 {
        return bad(format!("pid {} with {} threads", p.pid, p.threads.len()));
    }
    if p.vmas.len() > MAX_VMAS || p.fds.len() > MAX_FDS {
        return bad("too many mappings or fds".into());
    }
    let check_path = |s: &str| s.len() <= MAX_PATH && !s.contains('\0');
    for s in [&p.task.exe_path, &p.task.cwd, &p.task.root] {
        if !check_path(s) || !s.starts_with('/') {
            return bad(format!("bad path {s:?}"));
        }
    }
    if p.task.comm.len() > 64 {
        return bad("comm too long".into());
    }
    if p.creds.groups.len() > 65536 {
        return bad("too many supplementary groups".into());
    }
    if p.mm.auxv.len() > 1024 || !p.mm.auxv.len().is_multiple_of(2) {
        return bad("bad auxv length".into());
    }
    let mut prev_end = 0u64;
    for v in &p.vmas {
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
            if !check_path(fp) || !fp.starts_with('/') {
                return bad(format!("bad mapped file path {fp:?}"));
            }
        }
        if let VmaKind::Memfd { memfd_id } = &v.kind {
            let known = p
                .files
                .iter()
                .any(|f| matches!(&f.kind, FileKind::Memfd { memfd_id: m, .. } if m == memfd_id));
            if !known {
                return bad(format!(
                    "mapping {:#x}-{:#x} refers to unknown memfd {memfd_id}",
                    v.start, v.end
                ));
            }
        }
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
        if r.addr % PAGE != 0 || r.npages == 0 || r.addr < prev || r.offset % PAGE != 0 {
            return bad(format!(
                "page run at {:#x} is unaligned, empty or out of order",
                r.addr
            ));
        }
        prev = end;
        while vi < p.vmas.len() && p.vmas[vi].end <= r.addr {
            vi += 1;
        }
        let inside = p.vmas.get(vi).is_some_and(|v| {
            v.start <= r.addr
                && end <= v.end
                && !matches!(
                    v.kind,
                    VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
                )
        });
        if !inside {
            return bad(format!(
                "page run {:#x}-{end:#x} is not inside one restorable mapping",
                r.addr
            ));
        }
        if r.offset.checked_add(len).is_none_or(|e| e > pages_len) {
            return bad(format!(
                "page run at {:#x} points past the end of the pages file",
                r.addr
            ));
        }
    }
    // Files and fds.
    for f in &p.files {
        let ok = match &f.kind {
            FileKind::Regular { path, .. }
            | FileKind::Directory { path }
            | FileKind::CharDevice { path, .. }
            | FileKind::Deleted { path, .. } => check_path(path) && path.starts_with('/'),
            FileKind::Pipe { data, capacity, .. } => {
                data.len() <= MAX_PIPE_DATA && data.len() <= *capacity as usize
            }
            FileKind::ServiceSocket { reply } => reply.len() <= 4096,
            FileKind::EventFd { count, .. } => *count <= MAX_EVENTFD_COUNT,
            FileKind::TimerFd {
                clockid,
                settime_flags,
                ..
            } => [0, 1, 7, 8, 9].contains(clockid) && settime_flags & !3 == 0,
            FileKind::SignalFd { .. } => true,
            FileKind::Epoll { watches, .. } => watches.len() <= MAX_FDS,
            FileKind::Memfd {
                memfd_id,
                name,
                mode,
                seals,
                len,
                crc,
                ..
            } => {
                // Every description of one memfd must describe the same file.
                let first = p.files.iter().find_map(|g| match &g.kind {
                    FileKind::Memfd {
                        memfd_id: m,
                        name: n,
                        seals: s,
                        len: l,
                        crc: c,
                        ..
                    } if m == memfd_id => Some((n, s, l, c)),
                    _ => None,
                });
                name.len() <= MAX_MEMFD_NAME
                    && !name.contains('\0')
                    && mode & !0o7777 == 0
                    && seals & !0x3f == 0
                    && first == Some((name, seals, len, crc))
            }
            FileKind::Inotify { watches } => {
                let mut prev_wd = 0;
                watches.len() <= MAX_INOTIFY_WATCHES
                    && watches.iter().all(|w| {
                        // Sorted, unique, in the kernel's range and below the restore bound.
                        let wd_ok = w.wd > prev_wd && w.wd <= MAX_INOTIFY_WD;
                        prev_wd = w.wd;
                        wd_ok
                            && check_path(&w.path)
                            && w.path.starts_with('/')
                            && w.mask & !INOTIFY_WATCH_MASK == 0
                            && w.mask & 0xfff != 0
                    })
            }
        };
        if !ok {
            return bad(format!("file description {} is invalid", f.id));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for fd in &p.fds {
        if fd.fd < 0 || !seen.insert(fd.fd) {
            return bad(format!("fd {} is negative or listed twice", fd.fd));
        }
        if !p.files.iter().any(|f| f.id == fd.file_id) {
            return bad(format!(
                "fd {} refers to unknown file {}",
                fd.fd, fd.file_id
            ));
        }
    }
    for f in &p.files {
        if let FileKind::Epoll { owner, watches } = &f.kind {
            let missing = watches.iter().find(|w| !seen.contains(&w.fd));
            if let Some(w) = missing.filter(|_| *owner == p.pid) {
                return bad(format!(
                    "epoll description {} watches fd {}, which is not in the fd table",
                    f.id, w.fd
                ));
            }
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_process;
    use crate::{FdEntry, PageRun};

    #[test]
    fn sample_is_valid() {
        validate_process(&sample_process(), 8192, Path::new("x")).unwrap();
    }

    #[test]
    fn rejects_bad_records() {
        let path = Path::new("x");
        let mut p = sample_process();
        p.page_runs[0] = PageRun {
            addr: 0x500000,
            npages: 3,
            offset: 0,
            crc: 0,
        };
        assert!(
            validate_process(&p, 8192, path).is_err(),
            "run past the pages file"
        );

        let mut p = sample_process();
        p.page_runs[0].addr = 0x7ffd00000000;
        assert!(validate_process(&p, 8192, path).is_err(), "run inside vvar");

        let mut p = sample_process();
        p.page_runs[0].npages = u64::MAX;
        assert!(validate_process(&p, u64::MAX, path).is_err(), "overflow");

        let mut p = sample_process();
        p.vmas.swap(0, 1);
        assert!(
            validate_process(&p, 8192, path).is_err(),
            "unsorted mappings"
        );

        let mut p = sample_process();
        p.fds.push(FdEntry {
            fd: 3,
            file_id: 0,
            cloexec: false,
        });
        assert!(validate_process(&p, 8192, path).is_err(), "duplicate fd");

        let mut p = sample_process();
        p.fds[0].file_id = 99;
        assert!(
            validate_process(&p, 8192, path).is_err(),
            "dangling file id"
        );

        let mut p = sample_process();
        p.signals.actions[0].sig = 9;
        assert!(validate_process(&p, 8192, path).is_err(), "SIGKILL action");

        let mut p = sample_process();
        p.task.cwd = "relative".into();
        assert!(validate_process(&p, 8192, path).is_err(), "relative cwd");

        let mut p = sample_process();
        p.threads[0].xstate = vec![0; 1 << 20];
        assert!(validate_process(&p, 8192, path).is_err(), "huge xstate");

        let mut p = sample_process();
        p.fds.retain(|f| f.fd != 3);
        assert!(
            validate_process(&p, 8192, path).is_err(),
            "epoll watch of an fd not in the table"
        );

        for (kind_index, what) in [
            (2, "eventfd count"),
            (3, "timerfd clock"),
            (6, "memfd name"),
        ] {
            let mut p = sample_process();
            match &mut p.files[kind_index].kind {
                FileKind::EventFd { count, .. } => *count = u64::MAX,
                FileKind::TimerFd { clockid, .. } => *clockid = 3,
                FileKind::Memfd { name, .. } => *name = "x".repeat(300),
                _ => unreachable!(),
            }
            assert!(validate_process(&p, 8192, path).is_err(), "{what}");
        }

        let mut p = sample_process();
        let mut other = p.files[6].clone();
        other.id = 7;
        if let FileKind::Memfd { len, .. } = &mut other.kind {
            *len = 1;
        }
        p.files.push(other);
        assert!(
            validate_process(&p, 8192, path).is_err(),
            "two descriptions of one memfd disagree"
        );

        let mut p = sample_process();
        p.vmas[2].kind = VmaKind::Memfd { memfd_id: 1 };
        assert!(validate_process(&p, 8192, path).is_err(), "unknown memfd");

        let mut p = sample_process();
        p.posix_timers.push(p.posix_timers[0]);
        assert!(validate_process(&p, 8192, path).is_err(), "duplicate timer");

        let mut p = sample_process();
        p.posix_timers[0].signo = 65;
        assert!(validate_process(&p, 8192, path).is_err(), "timer signal");

        type WatchEdit = fn(&mut [crate::InotifyWatch]);
        let edits: [(&str, WatchEdit); 8] = [
            ("inotify wd 0", |w| w[0].wd = 0),
            ("inotify wds out of order", |w| w.swap(0, 1)),
            ("inotify wd twice", |w| w[1].wd = w[0].wd),
            ("inotify wd too high", |w| w[1].wd = MAX_INOTIFY_WD + 1),
            ("inotify relative path", |w| w[0].path = "tmp/x".into()),
            ("inotify path with NUL", |w| w[0].path = "/tmp/\0x".into()),
            ("inotify mask without events", |w| w[0].mask = 0x8000_0000),
            ("inotify internal mask bit", |w| w[0].mask |= 0x0800_0000),
        ];
        for (what, edit) in edits {
            let mut p = sample_process();
            match &mut p.files[7].kind {
                FileKind::Inotify { watches } => edit(watches),
                _ => unreachable!(),
            }
            assert!(validate_process(&p, 8192, path).is_err(), "{what}");
        }
        let mut p = sample_process();
        if let FileKind::Inotify { watches } = &mut p.files[7].kind {
            watches[1].wd = MAX_INOTIFY_WD;
        }
        validate_process(&p, 8192, path).unwrap();
    }
}
