//! Pre-copy: the memory of a process that runs on after its dump is copied while it runs, so
//! that it is stopped only for the pages it wrote during the copy.
//!
//! How (a leave-running dump, [`crate::dump()`]):
//!
//! 1. **arm** ([`Tracked::arm`], process frozen for one injected call): a userfaultfd is
//!    created inside the process (`userfaultfd(UFFD_USER_MODE_ONLY)`, so an unprivileged
//!    process may too), taken with pidfd_getfd and closed there. Once the process runs again,
//!    every private mapping is registered for write-protect tracking in asynchronous mode
//!    (the parts holding data are write-protected by the first pass): a write clears the
//!    protection of its page without any fault reaching anybody, and `PAGEMAP_SCAN` lists
//!    the pages written since.
//! 2. **passes** ([`Tracked::pass`], process running): the first pass copies every page
//!    holding data (the pagemap, as the frozen dump does) into the pages file; each later
//!    pass copies the pages written since the previous one (and protects them again). A page
//!    copied again is appended again; the index ([`Slot`], one per page of each tracked
//!    range) keeps the latest copy. All-zero pages are not stored.
//! 3. **final** ([`Tracked::finish`], process frozen again): the pages written since the last
//!    pass are copied; pages the process dropped meanwhile (madvise) lose their copy (a
//!    `PAGEMAP_SCAN` of the pages neither present nor swapped); a mapping that was not
//!    tracked the whole time (created, moved or replaced since the arm: the scan's
//!    `PM_SCAN_CHECK_WPASYNC` refuses it) and shared memory are copied the frozen way
//!    ([`super::source::PagemapSource`]). The process runs on.
//! 4. **after** ([`Finished::complete`]): the ranges are unregistered a piece at a time (each
//!    piece takes the process's mmap lock briefly, where closing the userfaultfd would take
//!    it for a walk of all its memory), and the run index is built from the slots, each
//!    run's CRC combined from its pages' CRCs ([`PageCrcShift`]).
//!
//! Not seen by write tracking: writes that bypass the page tables (a device writing into
//! memory pinned before the dump, O_DIRECT reads already in flight into pinned pages). A
//! process that registers its own userfaultfd on a range while the dump runs gets EBUSY.
//! `stasis dump --no-pre-copy` copies everything while the process is frozen instead.

use super::dump::{copy_pages, NonZeroRuns};
use super::sink::{PageSink, Payload, RawSink};
use super::source::{
    next_stretch, read_pagemap, wanted, PagemapSource, MAX_RUN_BYTES, MAX_RUN_PAGES, PM_PRESENT,
};
use super::vma::is_special;
use crate::inject::Injector;
use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RawWriter, Vma, VmaKind};
use stasis_sys::wp::{self, PageRegion, ScanQuery};
use stasis_sys::{proc_mem, process, ptrace, Pid};
use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// Where the latest copy of one page is in the pages file, and its CRC-32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub offset: u64,
    pub crc: u32,
}

impl Slot {
    /// No copy (never copied, all zero, or dropped by the process).
    pub const NONE: Slot = Slot {
        offset: u64::MAX,
        crc: 0,
    };

    pub fn is_some(&self) -> bool {
        self.offset != u64::MAX
    }
}

/// A range registered for write tracking: one private mapping as it was when tracking began.
struct Range {
    start: u64,
    end: u64,
    /// A private mapping of a file: its clean pages come back from the file.
    file_backed: bool,
    /// Readable with process_vm_readv (else /proc/PID/mem).
    readable: bool,
    /// Trusted while every write to it is known: cleared when a scan or read fails.
    trusted: bool,
    slots: Vec<Slot>,
}

impl Range {
    fn slot_mut(&mut self, addr: u64) -> &mut Slot {
        &mut self.slots[((addr - self.start) / PAGE_SIZE) as usize]
    }
}

/// Figures of one pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassStats {
    /// Bytes read from the process.
    pub read: u64,
    /// Bytes appended to the pages file.
    pub stored: u64,
}

/// A process whose writes are tracked, and the pages copied from it so far.
pub struct Tracked {
    pid: Pid,
    uffd: OwnedFd,
    pagemap: File,
    mem: File,
    ranges: Vec<Range>,
    /// Passes done (the first copies everything).
    passes: u32,
}

/// The mappings write tracking covers: private, not special.
fn trackable(v: &Vma) -> bool {
    !v.shared && !is_special(&v.kind) && v.end > v.start
}

impl Tracked {
    /// Creates a userfaultfd inside the frozen process `pid` (whose thread `leader` is in a
    /// ptrace-stop) and takes it. `Ok(None)` when the process cannot have one (userfaultfd
    /// refused in it: a seccomp filter, a kernel without it): the dump copies it frozen.
    pub fn arm(pid: Pid, leader: Pid, syscall_ip: u64) -> Result<Option<Tracked>, Error> {
        // A seccomp filter could kill the process for a call it does not expect (the
        // collect phase suspends filters; nothing is injected before that).
        if crate::procfs::read_status(pid).map_or(true, |s| s.seccomp != 0) {
            tracing::debug!("pid {pid} is under seccomp: no pre-copy");
            return Ok(None);
        }
        let pidfd = process::pidfd_open(pid).map_err(|e| Error::sys("pidfd_open", pid, e))?;
        let mask =
            ptrace::get_sigmask(leader).map_err(|e| Error::sys("PTRACE_GETSIGMASK", leader, e))?;
        let mut inj = Injector::new(leader, syscall_ip)?;
        let created = (|| {
            // A dumper that dies from here leaves the thread as it was (also blocks signals).
            if !inj.park(mask)? {
                tracing::debug!("pid {pid}: its leader cannot be parked: no pre-copy");
                return Ok(None);
            }
            inj.map_scratch(None)?;
            // The userfaultfd is created and closed again by one stub, which the dumper
            // stops between the two calls to take it: none of ours can stay in the process.
            let flags = wp::UFFD_USER_MODE_ONLY | libc::O_CLOEXEC as u32;
            let taken = inj.userfaultfd_taken(flags, |fd| {
                process::pidfd_getfd(pidfd.as_fd(), fd)
                    .map_err(|e| Error::sys("pidfd_getfd of the userfaultfd", pid, e))
            })?;
            match taken {
                None => {
                    tracing::debug!("pid {pid}: no code page in it: no pre-copy");
                    Ok(None)
                }
                Some(crate::inject::batch::UffdTaken {
                    created: Err(errno),
                    ..
                }) => {
                    tracing::debug!("pid {pid}: no userfaultfd ({errno:?}): no pre-copy");
                    Ok(None)
                }
                Some(crate::inject::batch::UffdTaken {
                    taken: Some(taken), ..
                }) => taken.map(Some),
                Some(_) => Ok(None),
            }
        })();
        let finished = inj.finish_parked();
        let restored_mask = ptrace::set_sigmask(leader, mask)
            .map_err(|e| Error::sys("PTRACE_SETSIGMASK", leader, e));
        let uffd = created?;
        finished?;
        restored_mask?;
        let Some(uffd) = uffd else { return Ok(None) };
        if let Err(e) = wp::uffd_api(uffd.as_fd(), wp::UFFD_FEATURE_WP_ASYNC) {
            tracing::debug!(
                "pid {pid}: userfaultfd without asynchronous write-protect ({e}): no pre-copy"
            );
            return Ok(None);
        }
        let open = |what: &str| {
            let path = format!("/proc/{pid}/{what}");
            File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))
        };
        Ok(Some(Tracked {
            pid,
            uffd,
            pagemap: open("pagemap")?,
            mem: open("mem")?,
            ranges: Vec::new(),
            passes: 0,
        }))
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Registers the private mappings `vmas` for write tracking (read while the process ran
    /// on: one that changed since simply fails to register and is copied frozen later). The
    /// first pass write-protects the parts that hold data.
    pub fn track(&mut self, vmas: &[Vma]) {
        let uffd = self.uffd.as_fd();
        for v in vmas.iter().filter(|v| trackable(v)) {
            let len = v.end - v.start;
            match wp::uffd_register_wp(uffd, v.start, len) {
                Ok(()) => self.ranges.push(Range {
                    start: v.start,
                    end: v.end,
                    file_backed: matches!(
                        v.kind,
                        VmaKind::File { .. } | VmaKind::Memfd { .. } | VmaKind::Deleted { .. }
                    ),
                    readable: v.prot & libc::PROT_READ as u32 != 0,
                    trusted: true,
                    slots: vec![Slot::NONE; (len / PAGE_SIZE) as usize],
                }),
                Err(e) => tracing::debug!(
                    "pid {}: mapping {:#x}-{:#x} not tracked ({e}): copied frozen",
                    self.pid,
                    v.start,
                    v.end
                ),
            }
        }
    }

    /// Bytes of memory tracked.
    pub fn tracked_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .filter(|r| r.trusted)
            .map(|r| r.end - r.start)
            .sum()
    }

    /// One copy pass while the process runs: the first copies every page holding data, the
    /// next ones the pages written since the previous pass. A range whose scan or read fails
    /// (the process changed its mappings) stops being trusted: it is copied frozen.
    pub fn pass(&mut self, out: &mut RawWriter, buf: &mut [u8]) -> Result<PassStats, Error> {
        crate::fault::point("a pre-copy pass")?;
        let first = self.passes == 0;
        self.passes += 1;
        let mut stats = PassStats::default();
        let mut regions = Vec::new();
        let mut entries = Vec::new();
        for i in 0..self.ranges.len() {
            if !self.ranges[i].trusted {
                continue;
            }
            let r = if first {
                self.copy_present(i, out, buf, &mut entries, &mut stats)
            } else {
                self.copy_written(i, true, out, buf, &mut regions, &mut stats)
            };
            if let Err(e) = r {
                let range = &mut self.ranges[i];
                tracing::debug!(
                    "pid {}: mapping {:#x}-{:#x} no longer tracked ({e}): copied frozen",
                    self.pid,
                    range.start,
                    range.end
                );
                range.trusted = false;
            }
        }
        Ok(stats)
    }

    /// First pass over range `i`: every page the pagemap says holds data.
    ///
    /// Each piece of the range within one 2 MiB-aligned block (one page table) that holds
    /// data is write-protected, after its pagemap entries are read and before its pages are
    /// copied; the other blocks are not. Write-protecting a range in asynchronous mode puts a
    /// marker into every empty entry of it (allocating page tables where there were none), and
    /// a marker reads as a swapped page in the pagemap: protecting whole mappings cost a walk
    /// of every reserved byte (the 64 MiB PROT_NONE reservations of glibc's malloc arenas, a
    /// thread's untouched stack) and made every empty page look worth reading. A page that
    /// gets data later in an unprotected block is reported written (present, not protected),
    /// and the written scan protects it again.
    fn copy_present(
        &mut self,
        i: usize,
        out: &mut dyn Payload,
        buf: &mut [u8],
        entries: &mut Vec<u64>,
        stats: &mut PassStats,
    ) -> Result<(), Error> {
        let (start, end, file_backed) = {
            let r = &self.ranges[i];
            (r.start, r.end, r.file_backed)
        };
        const BLOCK: u64 = 2 << 20;
        const _: () = assert!(BLOCK / PAGE_SIZE <= MAX_RUN_PAGES);
        let (mut raw, mut after) = (Vec::new(), Vec::new());
        let mut batch = start;
        while batch < end {
            let block_end = ((batch / BLOCK) + 1) * BLOCK;
            let npages = ((block_end.min(end) - batch) / PAGE_SIZE) as usize;
            read_pagemap(&self.pagemap, self.pid, batch, npages, &mut raw, entries)?;
            if entries.iter().any(|&e| wanted(e, file_backed)) {
                let len = npages as u64 * PAGE_SIZE;
                wp::uffd_writeprotect(self.uffd.as_fd(), batch, len, true)
                    .map_err(|e| Error::sys("UFFDIO_WRITEPROTECT", self.pid, e))?;
                // A page written for the first time between the read and the protection is
                // protected now (never reported written): read the entries again and take
                // the pages that became present. (Not all of the second read: the markers
                // the protection put into empty entries read as swapped pages.)
                read_pagemap(&self.pagemap, self.pid, batch, npages, &mut raw, &mut after)?;
                for (e, &a) in entries.iter_mut().zip(after.iter()) {
                    if !wanted(*e, file_backed) && a & PM_PRESENT != 0 && wanted(a, file_backed) {
                        *e = a;
                    }
                }
            }
            let mut at = 0;
            while let Some((a, b)) = next_stretch(entries, at, file_backed) {
                at = b;
                let addr = batch + a as u64 * PAGE_SIZE;
                self.copy(
                    i,
                    addr,
                    (b - a) as u64,
                    Some(&entries[a..b]),
                    out,
                    buf,
                    stats,
                )?;
            }
            batch += npages as u64 * PAGE_SIZE;
        }
        Ok(())
    }

    /// The pages of `start..end` written since the last scan (`reset`: and protects them
    /// again): present or swapped ones (an empty entry of a block never protected reads as
    /// written, and holds nothing). Fails when part of the range is not registered with our
    /// userfaultfd.
    fn scan_written(
        &self,
        start: u64,
        end: u64,
        reset: bool,
        regions: &mut Vec<PageRegion>,
    ) -> Result<(), Error> {
        let q = ScanQuery {
            flags: wp::PM_SCAN_CHECK_WPASYNC | if reset { wp::PM_SCAN_WP_MATCHING } else { 0 },
            category_mask: wp::PAGE_IS_WRITTEN,
            category_inverted: 0,
            category_anyof_mask: wp::PAGE_IS_PRESENT | wp::PAGE_IS_SWAPPED,
            return_mask: wp::PAGE_IS_WRITTEN,
        };
        scan_all(&self.pagemap, self.pid, start, end, q, regions)
    }

    /// Copies the pages of range `i` written since the last scan.
    fn copy_written(
        &mut self,
        i: usize,
        reset: bool,
        out: &mut dyn Payload,
        buf: &mut [u8],
        regions: &mut Vec<PageRegion>,
        stats: &mut PassStats,
    ) -> Result<(), Error> {
        let (start, end) = (self.ranges[i].start, self.ranges[i].end);
        regions.clear();
        self.scan_written(start, end, reset, regions)?;
        for reg in regions.iter() {
            let mut addr = reg.start.max(start);
            let stop = reg.end.min(end);
            while addr < stop {
                let n = ((stop - addr) / PAGE_SIZE).min(MAX_RUN_PAGES);
                self.copy(i, addr, n, None, out, buf, stats)?;
                addr += n * PAGE_SIZE;
            }
        }
        Ok(())
    }

    /// The pages of `start..end` whose pagemap entry is a write-protect marker (an empty
    /// page that was protected), or `None` when markers cannot be told from swapped pages and
    /// one of them looks swapped.
    fn marked_pages(&self, start: u64, end: u64) -> Result<Option<Vec<u64>>, Error> {
        let marker = wp::wp_marker_swap_bits();
        let (mut raw, mut entries, mut marked) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = start;
        while at < end {
            let npages = ((end - at) / PAGE_SIZE).min(MAX_RUN_PAGES);
            read_pagemap(
                &self.pagemap,
                self.pid,
                at,
                npages as usize,
                &mut raw,
                &mut entries,
            )?;
            for (k, &e) in entries.iter().enumerate() {
                if e & super::source::PM_SWAPPED == 0 {
                    continue;
                }
                match marker {
                    Some(bits) if e & wp::PM_SWAP_BITS == bits => {
                        marked.push(at + k as u64 * PAGE_SIZE)
                    }
                    Some(_) => {}
                    None => return Ok(None),
                }
            }
            at += npages * PAGE_SIZE;
        }
        Ok(Some(marked))
    }

    /// Reads `npages` pages at `addr` of range `i` and stores them: the all-zero ones lose
    /// their copy, the others are appended (one write per stretch, at most 2 MiB) and their
    /// slots point there. `known`: the pages' pagemap entries when the caller has just read
    /// them (else they are read here, when needed).
    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        i: usize,
        addr: u64,
        npages: u64,
        known: Option<&[u64]>,
        out: &mut dyn Payload,
        buf: &mut [u8],
        stats: &mut PassStats,
    ) -> Result<(), Error> {
        let len = (npages * PAGE_SIZE) as usize;
        let data = &mut buf[..len];
        let pid = self.pid;
        let (readable, file_backed) = (self.ranges[i].readable, self.ranges[i].file_backed);
        let (mut raw, mut read) = (Vec::new(), Vec::new());
        let entries: &[u64] = match known {
            Some(e) => e,
            None if readable || file_backed => {
                read_pagemap(
                    &self.pagemap,
                    pid,
                    addr,
                    npages as usize,
                    &mut raw,
                    &mut read,
                )?;
                &read
            }
            None => &[],
        };
        // Pages shared with another process (copy-on-write after a fork) are read through
        // /proc/PID/mem: process_vm_readv pins them, which unshares them in the process that
        // runs on (see `super::source::PagemapSource`).
        let shared = entries
            .iter()
            .any(|&e| e & PM_PRESENT != 0 && e & super::source::PM_MMAP_EXCLUSIVE == 0);
        if readable && !shared {
            proc_mem::read_exact(pid, addr, data)
                .map_err(|e| Error::sys("process_vm_readv", pid, e))?;
        } else {
            self.mem
                .read_exact_at(data, addr)
                .map_err(|e| Error::io(format!("read /proc/{pid}/mem at {addr:#x}"), e))?;
        }
        stats.read += len as u64;
        let pg = PAGE_SIZE as usize;
        // Which pages to keep: not all zero and, in a private file mapping, the process's
        // own (a clean page of the file comes back from the file; a read fault maps it
        // unprotected, so it may be reported written).
        let mut keep = vec![false; npages as usize];
        for (first, end) in NonZeroRuns::new(data) {
            keep[first..end].fill(true);
        }
        if file_backed {
            for (k, &e) in entries.iter().enumerate() {
                keep[k] &= wanted(e, true);
            }
        }
        let range = &mut self.ranges[i];
        let mut p = 0usize;
        while p < keep.len() {
            let at = addr + (p * pg) as u64;
            if !keep[p] {
                *range.slot_mut(at) = Slot::NONE;
                p += 1;
                continue;
            }
            let end = p + keep[p..].iter().take_while(|&&k| k).count();
            let bytes = &data[p * pg..end * pg];
            let offset = out.position();
            out.append(bytes)?;
            stats.stored += bytes.len() as u64;
            for (k, page) in bytes.chunks_exact(pg).enumerate() {
                *range.slot_mut(at + (k * pg) as u64) = Slot {
                    offset: offset + (k * pg) as u64,
                    crc: crc32c::crc32c(page),
                };
            }
            p = end;
        }
        Ok(())
    }

    /// The final step, with the process frozen again and `vmas` its mappings now: copies what
    /// was written since the last pass, forgets pages the process dropped, and copies the rest
    /// (untracked mappings, shared memory) the frozen way. The run index is built from what
    /// this returns ([`Finished::complete`]), which needs the process no more.
    pub fn finish(
        mut self,
        vmas: &[Vma],
        out: RawWriter,
        shmem_done: &mut HashSet<u64>,
    ) -> Result<Finished, Error> {
        let mut out = Staged::new(out);
        let started = std::time::Instant::now();
        let mut buf = vec![0u8; MAX_RUN_BYTES];
        let mut regions = Vec::new();
        let mut stats = PassStats::default();
        let mut runs = Vec::new();
        let mut pending = Vec::new();
        let mut frozen_vmas: Vec<Vma> = Vec::new();
        for v in vmas {
            let i = self
                .ranges
                .iter()
                .position(|r| r.trusted && r.start <= v.start && v.end <= r.end);
            let tracked = match i {
                Some(i) if trackable(v) => self.finish_vma(
                    i,
                    v,
                    &mut out,
                    &mut buf,
                    &mut regions,
                    &mut stats,
                    &mut pending,
                ),
                _ => Ok(false),
            };
            match tracked {
                Ok(true) => {}
                Ok(false) => frozen_vmas.push(v.clone()),
                Err(e) => {
                    tracing::debug!(
                        "pid {}: mapping {:#x}-{:#x} copied frozen ({e})",
                        self.pid,
                        v.start,
                        v.end
                    );
                    // Drop what `finish_vma` may have produced for it.
                    pending.retain(|p: &PendingVma| p.start != v.start);
                    frozen_vmas.push(v.clone());
                }
            }
        }
        let tracked_done = started.elapsed();
        tracing::debug!(
            "pid {}: final copy of {} KiB written since the last pass ({:.2} ms); {} mappings \
             copied frozen",
            self.pid,
            stats.read >> 10,
            tracked_done.as_secs_f64() * 1e3,
            frozen_vmas
                .iter()
                .filter(|v| {
                    !is_special(&v.kind) && (!v.shared || matches!(v.kind, VmaKind::Anonymous))
                })
                .count()
        );
        let mut source = PagemapSource::open(self.pid, &frozen_vmas, shmem_done)?;
        let mut sink = RawSink::new(&mut out);
        copy_pages(&mut source, &mut sink)?;
        runs.extend(sink.finish()?);
        tracing::debug!(
            "pid {}: frozen copy of the other mappings: {:.2} ms",
            self.pid,
            (started.elapsed() - tracked_done).as_secs_f64() * 1e3
        );
        let registered = self.ranges.iter().map(|r| (r.start, r.end)).collect();
        Ok(Finished {
            runs,
            pending,
            uffd: self.uffd,
            registered,
            out,
        })
    }

    /// Finishes the tracked mapping `v` (inside range `i`): `Ok(false)` when it was not
    /// tracked the whole time.
    #[allow(clippy::too_many_arguments)]
    fn finish_vma(
        &mut self,
        i: usize,
        v: &Vma,
        out: &mut dyn Payload,
        buf: &mut [u8],
        regions: &mut Vec<PageRegion>,
        stats: &mut PassStats,
        pending: &mut Vec<PendingVma>,
    ) -> Result<bool, Error> {
        regions.clear();
        if self.scan_written(v.start, v.end, false, regions).is_err() {
            return Ok(false);
        }
        for reg in std::mem::take(regions) {
            let mut addr = reg.start.max(v.start);
            let stop = reg.end.min(v.end);
            while addr < stop {
                let n = ((stop - addr) / PAGE_SIZE).min(MAX_RUN_PAGES);
                self.copy(i, addr, n, None, out, buf, stats)?;
                addr += n * PAGE_SIZE;
            }
        }
        // Pages the process dropped (madvise, reclaim of a lazily freed page) are neither
        // present nor swapped now: their copies go. (Asking for that is cheap; asking which
        // present pages are the zero page or the file's is not, and needs no asking: a page
        // faulted in again by a read is mapped without write protection, so it was reported
        // written and copied again above.)
        let q = ScanQuery {
            flags: 0,
            category_mask: wp::PAGE_IS_PRESENT | wp::PAGE_IS_SWAPPED,
            category_inverted: wp::PAGE_IS_PRESENT | wp::PAGE_IS_SWAPPED,
            category_anyof_mask: 0,
            return_mask: wp::PAGE_IS_PRESENT,
        };
        regions.clear();
        scan_all(&self.pagemap, self.pid, v.start, v.end, q, regions)?;
        // In a file mapping, a protected page the process dropped leaves a write-protect
        // marker instead of an empty entry (the scan above takes it for a swapped page): the
        // process reads the file there again, and the copy goes too.
        let marked = if self.ranges[i].file_backed {
            match self.marked_pages(v.start, v.end)? {
                Some(marked) => marked,
                // A marker cannot be told from a swapped page here: copied frozen.
                None => return Ok(false),
            }
        } else {
            Vec::new()
        };
        let range = &mut self.ranges[i];
        let mut dropped = 0;
        for reg in regions.iter() {
            let mut a = reg.start.max(v.start);
            while a < reg.end.min(v.end) {
                let slot = range.slot_mut(a);
                dropped += u64::from(slot.is_some());
                *slot = Slot::NONE;
                a += PAGE_SIZE;
            }
        }
        for a in marked {
            let slot = range.slot_mut(a);
            dropped += u64::from(slot.is_some());
            *slot = Slot::NONE;
        }
        if dropped > 0 {
            tracing::debug!(
                "pid {}: {dropped} pages of {:#x}-{:#x} copied before were dropped since",
                self.pid,
                v.start,
                v.end
            );
        }
        let first = ((v.start - range.start) / PAGE_SIZE) as usize;
        let n = ((v.end - v.start) / PAGE_SIZE) as usize;
        let slots = if n == range.slots.len() {
            std::mem::take(&mut range.slots)
        } else {
            range.slots[first..first + n].to_vec()
        };
        pending.push(PendingVma {
            start: v.start,
            slots,
        });
        Ok(true)
    }
}

/// The copies of one tracked mapping's pages, final.
struct PendingVma {
    start: u64,
    slots: Vec<Slot>,
}

/// What [`Tracked::finish`] leaves: the runs copied frozen and the final copies of the
/// tracked mappings, whose run index [`Finished::complete`] builds once the process runs again.
pub struct Finished {
    runs: Vec<PageRun>,
    pending: Vec<PendingVma>,
    uffd: OwnedFd,
    registered: Vec<(u64, u64)>,
    out: Staged,
}

/// The most memory the frozen copy holds before it writes to the pages file (past it, the
/// process waits for the file).
const STAGED_MAX: usize = 256 << 20;

/// The pages file behind a buffer: what the frozen copy appends is kept in memory (up to
/// `STAGED_MAX`) and written once the process runs again, each append as one write (an
/// authenticated extent), at the offsets it was given.
pub struct Staged {
    out: RawWriter,
    buf: Vec<u8>,
    /// Length of each append held in `buf`.
    pieces: Vec<usize>,
}

impl Staged {
    fn new(out: RawWriter) -> Self {
        Staged {
            out,
            buf: Vec::new(),
            pieces: Vec::new(),
        }
    }

    /// Writes what is held.
    fn flush(&mut self) -> Result<(), Error> {
        let mut at = 0;
        for len in self.pieces.drain(..) {
            self.out.write(&self.buf[at..at + len])?;
            at += len;
        }
        self.buf.clear();
        Ok(())
    }

    /// Writes what is held and ends the pages file; returns its payload length.
    fn finish(mut self) -> Result<u64, Error> {
        self.flush()?;
        Ok(self.out.finish()?)
    }
}

impl Payload for Staged {
    fn position(&self) -> u64 {
        self.out.position() + self.buf.len() as u64
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.buf.len() + data.len() > STAGED_MAX {
            self.flush()?;
            return Ok(self.out.write(data)?);
        }
        self.buf.extend_from_slice(data);
        self.pieces.push(data.len());
        Ok(())
    }
}

/// Write tracking is ended this much memory at a time: each piece holds the process's mmap
/// lock while its page tables are walked, and a thread of the process that faults meanwhile
/// waits (4 ms per 16 MiB of populated memory was measured here under load).
const UNREGISTER_PIECE: u64 = 4 << 20;

impl Finished {
    /// Once the process runs again: writes the pages copied frozen, ends the pages file and
    /// the write tracking, and returns the run index of the whole process, in address order,
    /// with the pages file's payload length.
    pub fn complete(self) -> Result<(Vec<PageRun>, u64), Error> {
        let Finished {
            mut runs,
            pending,
            uffd,
            registered,
            out,
        } = self;
        let page_bytes = out.finish()?;
        for (start, end) in registered {
            let mut at = start;
            while at < end {
                let len = (end - at).min(UNREGISTER_PIECE);
                // A range the process unmapped or replaced since is no longer ours: fine.
                let _ = wp::uffd_unregister(uffd.as_fd(), at, len);
                at += len;
            }
        }
        drop(uffd);
        let shift = PageCrcShift::new();
        for p in &pending {
            runs.extend(runs_from_slots(p.start, &p.slots, &shift));
        }
        runs.sort_by_key(|r| r.addr);
        Ok((runs, page_bytes))
    }
}

/// The pre-copy of a compressed or incremental dump, once the processes run on: the raw
/// pages of the scratch file `scratch` (indexed by `runs`, in address order, as
/// [`Finished::complete`] returns them) are read back, each run checked against its CRC, and
/// stored into the pages file `name`, created here: compressed by `pool` when given, and with
/// `parent` only what differs from the parent dump ([`super::incremental`]), as the frozen
/// dump would have stored them. Runs next to each other in memory and in one mapping of
/// `vmas` are stored together (a pass copies a page again at the end of the file: a run of
/// the index may be one page). Returns the new run index and the pages file's payload
/// length; the caller removes the scratch file.
pub fn store_scratch(
    dir: &stasis_image::ImageDir,
    scratch: &str,
    name: &str,
    runs: &[PageRun],
    vmas: &[Vma],
    pool: Option<&mut super::compress::ZstdPool>,
    parent: Option<super::incremental::ParentRuns<'_>>,
) -> Result<(Vec<PageRun>, u64), Error> {
    let file = dir.open_file(scratch)?;
    crate::fault::point("creating a pages file")?;
    let mut out = RawWriter::create(dir, name, stasis_image::RecordKind::Pages)?;
    let mut source = Scratch {
        file: &file,
        name: scratch,
        runs,
        vmas,
        next: 0,
    };
    let new_runs = match pool {
        Some(pool) => super::dump::store(
            &mut source,
            super::compress::ZstdSink::new(pool, &mut out),
            parent,
        ),
        None => super::dump::store(&mut source, super::sink::RawSink::new(&mut out), parent),
    }?;
    Ok((new_runs, out.finish()?))
}

/// The pre-copied pages of a scratch file as a page source, for [`store_scratch`]: one
/// stretch of memory at a time (runs next to each other in memory and in one mapping, at
/// most [`MAX_RUN_BYTES`]), each run checked against its CRC as it is read back.
struct Scratch<'a> {
    file: &'a File,
    name: &'a str,
    runs: &'a [PageRun],
    vmas: &'a [Vma],
    /// The first run not read yet.
    next: usize,
}

impl super::source::PageSource for Scratch<'_> {
    /// A pre-copied run is read whole (its CRC covers it).
    fn min_buffer(&self) -> usize {
        MAX_RUN_BYTES
    }

    fn next_run(&mut self, buf: &mut [u8]) -> Result<Option<super::source::PageSpan>, Error> {
        let Some(first) = self.runs.get(self.next) else {
            return Ok(None);
        };
        let mapping_end = self
            .vmas
            .iter()
            .find(|v| v.start <= first.addr && first.addr < v.end)
            .map_or(first.addr, |v| v.end);
        let mut len = 0u64;
        while let Some(run) = self.runs.get(self.next) {
            let run_len = run.npages * PAGE_SIZE;
            let follows = first.addr + len == run.addr
                && run.addr + run_len <= mapping_end
                && len + run_len <= MAX_RUN_BYTES as u64;
            if len > 0 && !follows {
                break;
            }
            let at = len as usize;
            let piece = buf
                .get_mut(at..at + run_len as usize)
                .ok_or_else(|| Error::Internal {
                    what: format!(
                        "a pre-copied run of {} pages is longer than a buffer",
                        run.npages
                    ),
                })?;
            self.file
                .read_exact_at(piece, stasis_image::RAW_DATA_OFFSET + run.offset)
                .map_err(|e| {
                    Error::io(
                        format!("reading back the pre-copied pages ({})", self.name),
                        e,
                    )
                })?;
            if crc32c::crc32c(piece) != run.crc {
                return Err(Error::Invalid(format!(
                    "the pre-copied pages at {:#x} ({} pages) read back from {} do not match \
                     their CRC",
                    run.addr, run.npages, self.name
                )));
            }
            len += run_len;
            self.next += 1;
        }
        Ok(Some(super::source::PageSpan {
            addr: first.addr,
            npages: len / PAGE_SIZE,
        }))
    }
}

/// CRC-32C of a concatenation, from the CRCs of its parts when the second is one page:
/// crc(A ‖ B) = shift(crc(A)) ⊕ crc(B), `shift` linear over GF(2), applied with four byte
/// tables built once (from `crc32c_combine`, far slower when called per page).
pub struct PageCrcShift {
    tables: [[u32; 256]; 4],
}

impl PageCrcShift {
    pub fn new() -> Self {
        let mut basis = [0u32; 32];
        for (i, b) in basis.iter_mut().enumerate() {
            *b = crc32c::crc32c_combine(1 << i, 0, PAGE_SIZE as usize);
        }
        let mut tables = [[0u32; 256]; 4];
        for (k, t) in tables.iter_mut().enumerate() {
            for (byte, e) in t.iter_mut().enumerate() {
                *e = (0..8)
                    .filter(|bit| byte & (1 << bit) != 0)
                    .fold(0, |acc, bit| acc ^ basis[8 * k + bit]);
            }
        }
        PageCrcShift { tables }
    }

    /// crc(A ‖ B) from `crc_a` and `crc_b`, B being one page long.
    pub fn combine(&self, crc_a: u32, crc_b: u32) -> u32 {
        let t = &self.tables;
        let shifted = t[0][(crc_a & 0xff) as usize]
            ^ t[1][((crc_a >> 8) & 0xff) as usize]
            ^ t[2][((crc_a >> 16) & 0xff) as usize]
            ^ t[3][(crc_a >> 24) as usize];
        shifted ^ crc_b
    }
}

impl Default for PageCrcShift {
    fn default() -> Self {
        Self::new()
    }
}

/// `PAGEMAP_SCAN` of `start..end`, every matching region appended to `regions`.
fn scan_all(
    pagemap: &File,
    pid: Pid,
    start: u64,
    end: u64,
    q: ScanQuery,
    regions: &mut Vec<PageRegion>,
) -> Result<(), Error> {
    let mut at = start;
    while at < end {
        let walked = wp::pagemap_scan(pagemap.as_fd(), at, end, q, regions, 4096)
            .map_err(|e| Error::sys("PAGEMAP_SCAN", pid, e))?;
        if walked <= at {
            break;
        }
        at = walked;
    }
    Ok(())
}

/// The run index of the pages at `start` whose slots hold a copy: stretches of pages whose
/// copies lie back to back in the pages file, at most [`MAX_RUN_PAGES`] long, each with the
/// CRC of its bytes combined from its pages' CRCs.
pub fn runs_from_slots(start: u64, slots: &[Slot], shift: &PageCrcShift) -> Vec<PageRun> {
    let mut runs: Vec<PageRun> = Vec::new();
    let pg = PAGE_SIZE;
    for (k, s) in slots.iter().enumerate() {
        if !s.is_some() {
            continue;
        }
        let addr = start + k as u64 * pg;
        if let Some(last) = runs.last_mut() {
            let contiguous = last.addr + last.npages * pg == addr
                && last.offset + last.npages * pg == s.offset
                && last.npages < MAX_RUN_PAGES;
            if contiguous {
                last.crc = shift.combine(last.crc, s.crc);
                last.npages += 1;
                last.stored_len += pg;
                continue;
            }
        }
        runs.push(PageRun::raw(addr, 1, s.offset, s.crc));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_follow_contiguous_copies_and_combine_crcs() {
        let pg = PAGE_SIZE as usize;
        // Pages 0..4 copied back to back at offset 0; page 2 copied again later at 5 pages;
        // page 4 never copied.
        let pages: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8 + 1; pg]).collect();
        let crc = |i: usize| crc32c::crc32c(&pages[i]);
        let slot = |off: u64, i: usize| Slot {
            offset: off * PAGE_SIZE,
            crc: crc(i),
        };
        let slots = vec![slot(0, 0), slot(1, 1), slot(5, 2), slot(3, 3), Slot::NONE];
        let runs = runs_from_slots(0x10000, &slots, &PageCrcShift::new());
        let whole = |a: usize, b: usize| crc32c::crc32c(&pages[a..b].concat());
        assert_eq!(
            runs,
            vec![
                PageRun::raw(0x10000, 2, 0, whole(0, 2)),
                PageRun::raw(0x12000, 1, 5 * PAGE_SIZE, crc(2)),
                PageRun::raw(0x13000, 1, 3 * PAGE_SIZE, crc(3)),
            ]
        );
    }

    #[test]
    fn runs_are_capped() {
        let n = MAX_RUN_PAGES as usize + 3;
        let slots: Vec<Slot> = (0..n)
            .map(|i| Slot {
                offset: i as u64 * PAGE_SIZE,
                crc: crc32c::crc32c(&[0u8; 4096]),
            })
            .collect();
        let runs = runs_from_slots(0, &slots, &PageCrcShift::new());
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].npages, MAX_RUN_PAGES);
        assert_eq!(runs[1].npages, 3);
        assert_eq!(runs[0].crc, crc32c::crc32c(&vec![0u8; MAX_RUN_BYTES]));
    }

    #[test]
    fn page_shift_matches_the_crc_of_the_concatenation() {
        let shift = PageCrcShift::new();
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        for a_len in [0usize, 1, 4096, 3 * 4096 + 5] {
            let a = bytes(a_len);
            let b = bytes(4096);
            let whole = [a.clone(), b.clone()].concat();
            assert_eq!(
                shift.combine(crc32c::crc32c(&a), crc32c::crc32c(&b)),
                crc32c::crc32c(&whole)
            );
        }
    }

    /// The pages of one stretch at `base`, 4 pages: text-like (compressible) and distinct.
    fn page(i: u8) -> Vec<u8> {
        (0..PAGE_SIZE as usize)
            .map(|k| b"stasis pre-copy "[k % 16] ^ i)
            .collect()
    }

    /// A scratch file as a pre-copy leaves it: pages 0..4 of a stretch, then page 2 copied
    /// again (written since), in an authenticated directory; its run index.
    fn scratch_dir(d: &std::path::Path, base: u64) -> (stasis_image::ImageDir, Vec<PageRun>) {
        use stasis_image::{ImageDir, ImageKey, RecordKind};
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
        let dir = ImageDir::open(d).unwrap();
        dir.seal(&ImageKey::from_secret(&[9; 32])).unwrap();
        let mut w = RawWriter::create_scratch(&dir, "pages-1.precopy", RecordKind::Pages).unwrap();
        for i in [0u8, 1, 2, 3, 22] {
            w.write(&page(i)).unwrap();
        }
        w.finish().unwrap();
        let pg = PAGE_SIZE;
        let slot = |k: u64, i: u8| Slot {
            offset: k * pg,
            crc: crc32c::crc32c(&page(i)),
        };
        let slots = [slot(0, 0), slot(1, 1), slot(4, 22), slot(3, 3)];
        (dir, runs_from_slots(base, &slots, &PageCrcShift::new()))
    }

    #[test]
    fn a_scratch_file_is_stored_raw_or_compressed_with_the_latest_copies() {
        use super::super::fill::{EagerFill, PageFill};
        use stasis_image::{ImageKey, RawReader, RecordKind, RunCodec};
        let pg = PAGE_SIZE as usize;
        // The pages are filled into this buffer of our own (the target is this process).
        let mut target = vec![0u8; 6 * pg];
        let base = (target.as_ptr() as u64).next_multiple_of(PAGE_SIZE);
        let skip = (base - target.as_ptr() as u64) as usize;
        let d = std::env::temp_dir().join(format!("stasis-scratch-{}", std::process::id()));
        let vmas = [Vma::anonymous(base, base + 4 * PAGE_SIZE)];
        for compress in [false, true] {
            let (dir, runs) = scratch_dir(&d, base);
            assert_eq!(runs.len(), 3, "{runs:?}");
            let mut pool =
                super::super::compress::ZstdPool::new(super::super::compress::Compression {
                    level: 1,
                    threads: 2,
                })
                .unwrap();
            let (stored, _) = store_scratch(
                &dir,
                "pages-1.precopy",
                "pages-1.img",
                &runs,
                &vmas,
                compress.then_some(&mut pool),
                None,
            )
            .unwrap();
            // One stretch, put whole.
            assert_eq!(stored.len(), 1, "{stored:?}");
            let codec = if compress {
                RunCodec::Zstd
            } else {
                RunCodec::Raw
            };
            assert_eq!(stored[0].codec, codec);
            assert_eq!((stored[0].addr, stored[0].npages), (base, 4));
            dir.remove("pages-1.precopy").unwrap();
            stasis_image::write_record_atomic(
                &dir,
                stasis_image::names::INVENTORY,
                RecordKind::Inventory,
                &1u8,
            )
            .unwrap();
            drop(dir);
            // Authenticated: the scratch file, never sealed, is not missed.
            let dir = stasis_image::ImageDir::open(&d).unwrap();
            assert!(dir.authenticate(&ImageKey::from_secret(&[9; 32])).unwrap());
            let pages = RawReader::open(&dir, "pages-1.img", RecordKind::Pages).unwrap();
            EagerFill::new(&pages)
                .fill(stasis_sys::process::getpid(), &stored)
                .unwrap();
            let now = std::hint::black_box(&target[skip..]);
            for (k, i) in [0u8, 1, 22, 3].into_iter().enumerate() {
                assert!(now[k * pg..(k + 1) * pg] == page(i)[..], "page {k}");
            }
            target.fill(0);
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_scratch_page_changed_on_disk_is_refused() {
        let d = std::env::temp_dir().join(format!("stasis-scratch-bad-{}", std::process::id()));
        let (dir, runs) = scratch_dir(&d, 0x10000);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("pages-1.precopy"))
            .unwrap();
        f.write_all_at(b"X", stasis_image::RAW_DATA_OFFSET + 4 * PAGE_SIZE + 7)
            .unwrap();
        let err = store_scratch(
            &dir,
            "pages-1.precopy",
            "pages-1.img",
            &runs,
            &[],
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("do not match their CRC"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
