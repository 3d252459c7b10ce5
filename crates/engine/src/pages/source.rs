//! The dump side's page source: which pages of a frozen process hold data, and their bytes.
//!
//! A [`PageSource`] hands out runs of pages in address order, each inside one mapping and at
//! most [`MAX_RUN_PAGES`] long, read into the caller's buffer. [`PagemapSource`] is today's
//! source: for private mappings /proc/PID/pagemap tells which pages are present or swapped
//! (for private file and memfd mappings only the pages the process changed: clean ones come
//! back from the file), and they are read with process_vm_readv (or /proc/PID/mem for mappings
//! without PROT_READ); shared anonymous memory is read once per tree from its object through
//! /proc/PID/map_files with SEEK_DATA/SEEK_HOLE, so untouched pages are neither read nor
//! allocated; special mappings and shared file/memfd mappings (the file holds the data) give
//! nothing. A source that tracks dirty pages (UFFD-WP + PAGEMAP_SCAN) would implement the same
//! trait.

use super::vma::is_special;
use crate::procfs;
use crate::{Error, PAGE_SIZE};
use stasis_image::{Vma, VmaKind};
use stasis_sys::{proc_mem, Pid};
use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

/// The longest run a source hands out: 2 MiB, the size process_vm_readv is fastest with.
pub const MAX_RUN_PAGES: u64 = 512;
/// [`MAX_RUN_PAGES`] in bytes: the buffer size a source needs.
pub const MAX_RUN_BYTES: usize = (MAX_RUN_PAGES * PAGE_SIZE) as usize;

/// `npages` pages of the process starting at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSpan {
    pub addr: u64,
    pub npages: u64,
}

impl PageSpan {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        (self.npages * PAGE_SIZE) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.npages == 0
    }
}

/// Runs of pages of a process that may hold data (they may still be all zero).
pub trait PageSource {
    /// Reads the next run into the start of `buf` (at least [`PageSource::min_buffer`]
    /// long) and says where it belongs, or `None` once everything is read. Runs come in
    /// address order, lie inside one mapping each, and are at most [`MAX_RUN_PAGES`] long
    /// and at most as long as `buf`.
    fn next_run(&mut self, buf: &mut [u8]) -> Result<Option<PageSpan>, Error>;

    /// The shortest buffer [`PageSource::next_run`] takes: one page, unless the source
    /// hands out runs it cannot cut.
    fn min_buffer(&self) -> usize {
        PAGE_SIZE as usize
    }
}

/// A source that hands out no more runs once `stop` is set (the dump failed elsewhere: what
/// is still to copy would only be removed again).
pub struct Stoppable<'a> {
    pub source: &'a mut dyn PageSource,
    pub stop: &'a std::sync::atomic::AtomicBool,
}

impl PageSource for Stoppable<'_> {
    fn next_run(&mut self, buf: &mut [u8]) -> Result<Option<PageSpan>, Error> {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Invalid(
                "page copy stopped: another part of the dump failed".into(),
            ));
        }
        self.source.next_run(buf)
    }

    fn min_buffer(&self) -> usize {
        self.source.min_buffer()
    }
}

/// pagemap bits (Documentation/admin-guide/mm/pagemap.rst).
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAPPED: u64 = 1 << 62;
pub const PM_FILE_OR_SHARED: u64 = 1 << 61;
/// The page is mapped by this process only (its map count is 1).
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;

/// Whether a page with this pagemap entry is dumped. `file_backed`: the mapping is a private
/// mapping of a file or memfd, whose pages that are still the file's (present, file-backed,
/// not swapped) come back from the file at restore.
pub fn wanted(entry: u64, file_backed: bool) -> bool {
    let has_data = entry & (PM_PRESENT | PM_SWAPPED) != 0;
    has_data && !(file_backed && entry & PM_FILE_OR_SHARED != 0 && entry & PM_SWAPPED == 0)
}

/// Reads the pagemap entries of the `npages` pages at `addr` of process `pid` from its open
/// `/proc/PID/pagemap` into `entries` (replacing what it held), through the byte buffer `raw`.
pub fn read_pagemap(
    pagemap: &File,
    pid: Pid,
    addr: u64,
    npages: usize,
    raw: &mut Vec<u8>,
    entries: &mut Vec<u64>,
) -> Result<(), Error> {
    raw.resize(npages * 8, 0);
    pagemap
        .read_exact_at(raw, addr / PAGE_SIZE * 8)
        .map_err(|e| Error::io(format!("read pagemap of {pid} at {addr:#x}"), e))?;
    entries.clear();
    entries.extend(raw.chunks_exact(8).map(|w| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        u64::from_le_bytes(b)
    }));
    Ok(())
}

/// The first maximal stretch `first..end` of wanted entries at or after index `from`.
pub fn next_stretch(entries: &[u64], from: usize, file_backed: bool) -> Option<(usize, usize)> {
    let first = from
        + entries
            .get(from..)?
            .iter()
            .position(|&e| wanted(e, file_backed))?;
    let len = entries[first..]
        .iter()
        .take_while(|&&e| wanted(e, file_backed))
        .count();
    Some((first, first + len))
}

/// Where a [`PagemapSource`] is in its walk over the mappings.
enum Walk {
    /// Between mappings: the next one to look at is `PagemapSource::next_vma`.
    Between,
    /// A private mapping, scanned in batches of pagemap entries.
    Private {
        vma: usize,
        file_backed: bool,
        /// Its pages may be shared with the parent's ([`super::cow`]).
        cow: bool,
        /// Address of the current batch; `entries` holds its pagemap entries.
        batch: u64,
        /// Next entry of the batch to look at.
        i: usize,
    },
    /// Shared anonymous memory, read from its object where it has data.
    Shmem {
        vma: usize,
        file: File,
        link: String,
        /// Object offset of the next SEEK_DATA.
        seek: u64,
        /// The data stretch being read: object offsets `at..end`.
        at: u64,
        end: u64,
    },
}

/// Today's page source: pagemap scan of private mappings, SEEK_DATA over shared memory.
pub struct PagemapSource<'a> {
    pid: Pid,
    vmas: &'a [Vma],
    /// Shared anonymous memory objects already stored (by an earlier process of the tree).
    shmem_done: &'a mut HashSet<u64>,
    pagemap: File,
    mem: File,
    next_vma: usize,
    walk: Walk,
    entries: Vec<u64>,
    raw_entries: Vec<u8>,
    /// The frozen parent whose pages this process may share ([`super::cow`]).
    cow: Option<super::cow::CowParent>,
    /// The pages found shared with the parent, with their mapping's index (not handed out).
    inherited: Vec<(usize, stasis_image::PageRun)>,
    /// The mappings (by index) known to hold no page of the process's own: not looked at.
    without_pages: &'a [bool],
}

impl<'a> PagemapSource<'a> {
    /// A source over `vmas` of the frozen process `pid`. Shared anonymous memory whose
    /// `shmem_id` is in `shmem_done` is skipped; the ids of the objects this source reads are
    /// added to it.
    pub fn open(
        pid: Pid,
        vmas: &'a [Vma],
        shmem_done: &'a mut HashSet<u64>,
    ) -> Result<Self, Error> {
        let open = |what: &str| {
            let path = format!("/proc/{pid}/{what}");
            File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))
        };
        Ok(PagemapSource {
            pid,
            vmas,
            shmem_done,
            pagemap: open("pagemap")?,
            mem: open("mem")?,
            next_vma: 0,
            walk: Walk::Between,
            entries: Vec::with_capacity(MAX_RUN_PAGES as usize),
            raw_entries: vec![0; (MAX_RUN_PAGES * 8) as usize],
            cow: None,
            inherited: Vec::new(),
            without_pages: &[],
        })
    }

    /// Private mappings flagged in `without_pages` (by index in the mappings; shorter is
    /// fine) are skipped: their pagemap is not read (for a large reservation never touched,
    /// such as a malloc arena's 64 MiB, that is 32 reads). Only for flags read while the
    /// process was frozen ([`super::vma::without_own_pages`]).
    pub fn skipping(mut self, without_pages: &'a [bool]) -> Self {
        self.without_pages = without_pages;
        self
    }

    /// Pages of private anonymous memory that are the same page frames as `parent`'s at the
    /// same addresses are not handed out but listed as inherited ([`Self::take_inherited`]).
    pub fn share_with(mut self, parent: Option<super::cow::CowParent>) -> Self {
        self.cow = parent;
        self
    }

    /// The runs of pages shared with the parent, in address order (each inside one mapping).
    pub fn take_inherited(&mut self) -> Vec<stasis_image::PageRun> {
        std::mem::take(&mut self.inherited)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// Chooses how to read the next mapping. Returns false when there is none left.
    fn start_next_vma(&mut self) -> Result<bool, Error> {
        let vmas = self.vmas;
        let Some(v) = vmas.get(self.next_vma) else {
            return Ok(false);
        };
        let vma = self.next_vma;
        self.next_vma += 1;
        self.walk = match (&v.kind, v.shared) {
            (k, _) if is_special(k) => Walk::Between,
            // The file holds the data.
            (VmaKind::File { .. } | VmaKind::Memfd { .. } | VmaKind::Deleted { .. }, true) => {
                Walk::Between
            }
            (VmaKind::Anonymous, true) if self.shmem_done.insert(v.shmem_id) => {
                let link = procfs::map_file(self.pid, v.start, v.end);
                let file = File::open(&link).map_err(|e| Error::io(format!("open {link}"), e))?;
                Walk::Shmem {
                    vma,
                    file,
                    link,
                    seek: v.file_offset,
                    at: 0,
                    end: 0,
                }
            }
            (VmaKind::Anonymous, true) => Walk::Between,
            (_, false) if self.without_pages.get(vma) == Some(&true) => Walk::Between,
            (kind, false) => {
                let cow = self.cow.is_some() && super::cow::eligible(v);
                self.load_batch(v.start, v.end, cow.then_some(vma))?;
                Walk::Private {
                    vma,
                    cow,
                    file_backed: matches!(
                        kind,
                        VmaKind::File { .. } | VmaKind::Memfd { .. } | VmaKind::Deleted { .. }
                    ),
                    batch: v.start,
                    i: 0,
                }
            }
            _ => Walk::Between,
        };
        Ok(true)
    }

    /// Reads the pagemap entries of the batch at `addr` (up to `end`) into `entries`; in
    /// mapping `cow` (one that may share pages with the parent), the pages shared are listed
    /// as inherited and their entries cleared.
    fn load_batch(&mut self, addr: u64, end: u64, cow: Option<usize>) -> Result<(), Error> {
        let npages = ((end - addr) / PAGE_SIZE).min(MAX_RUN_PAGES) as usize;
        read_pagemap(
            &self.pagemap,
            self.pid,
            addr,
            npages,
            &mut self.raw_entries,
            &mut self.entries,
        )?;
        if let (Some(vma), Some(parent)) = (cow, self.cow.as_mut()) {
            let inherited = &mut self.inherited;
            parent.take_shared(addr, &mut self.entries, |at| {
                super::cow::push_inherited(inherited, vma, at)
            })?;
        }
        Ok(())
    }

    /// Reads process memory at `at` into `data`. `shared`: some of the pages are mapped by
    /// other processes too (copy-on-write after a fork): they are read through
    /// /proc/PID/mem, because process_vm_readv pins the pages it reads, and the kernel
    /// unshares (copies, in the process read) an anonymous page that is pinned while shared,
    /// so the dump would break the sharing of the tree it reads (and of a tree left running).
    fn read_memory(&self, v: &Vma, at: u64, data: &mut [u8], shared: bool) -> Result<(), Error> {
        let pid = self.pid;
        if v.prot & libc::PROT_READ as u32 != 0 && !shared {
            proc_mem::read_exact(pid, at, data).map_err(|e| Error::sys("process_vm_readv", pid, e))
        } else {
            self.mem
                .read_exact_at(data, at)
                .map_err(|e| Error::io(format!("read /proc/{pid}/mem at {at:#x}"), e))
        }
    }
}

impl PageSource for PagemapSource<'_> {
    fn next_run(&mut self, buf: &mut [u8]) -> Result<Option<PageSpan>, Error> {
        let room = (buf.len() / PAGE_SIZE as usize).min(MAX_RUN_PAGES as usize);
        if room == 0 {
            return Err(Error::Internal {
                what: format!("a page buffer of {} bytes holds no page", buf.len()),
            });
        }
        let vmas = self.vmas;
        loop {
            match &mut self.walk {
                Walk::Between => {
                    if !self.start_next_vma()? {
                        return Ok(None);
                    }
                }
                Walk::Private {
                    vma,
                    file_backed,
                    cow,
                    batch,
                    i,
                } => {
                    let v = &vmas[*vma];
                    let Some((first, end)) = next_stretch(&self.entries, *i, *file_backed)
                        .map(|(first, end)| (first, end.min(first + room)))
                    else {
                        // Batch done: on to the next one, or the next mapping.
                        *batch += self.entries.len() as u64 * PAGE_SIZE;
                        *i = 0;
                        if *batch >= v.end {
                            self.walk = Walk::Between;
                        } else {
                            let (at, cow) = (*batch, cow.then_some(*vma));
                            self.load_batch(at, v.end, cow)?;
                        }
                        continue;
                    };
                    *i = end;
                    let span = PageSpan {
                        addr: *batch + first as u64 * PAGE_SIZE,
                        npages: (end - first) as u64,
                    };
                    let shared = self.entries[first..end]
                        .iter()
                        .any(|e| e & PM_PRESENT != 0 && e & PM_MMAP_EXCLUSIVE == 0);
                    self.read_memory(v, span.addr, &mut buf[..span.len()], shared)?;
                    return Ok(Some(span));
                }
                Walk::Shmem {
                    vma,
                    file,
                    link,
                    seek,
                    at,
                    end,
                } => {
                    let v = &vmas[*vma];
                    let (lo, hi) = (v.file_offset, v.file_offset + (v.end - v.start));
                    if *at < *end {
                        let n = (*end - *at).min((room as u64) * PAGE_SIZE);
                        let data = &mut buf[..n as usize];
                        file.read_exact_at(data, *at)
                            .map_err(|e| Error::io(format!("read {link} at {at:#x}"), e))?;
                        let span = PageSpan {
                            addr: v.start + (*at - lo),
                            npages: n / PAGE_SIZE,
                        };
                        *at += n;
                        return Ok(Some(span));
                    }
                    // The next stretch of data in the object, if any.
                    let data_at = if *seek < hi {
                        stasis_sys::process::seek_data(file.as_fd(), *seek)
                            .map_err(|e| Error::io(format!("SEEK_DATA in {link}"), e))?
                            .filter(|&d| d < hi)
                    } else {
                        None
                    };
                    let Some(data_at) = data_at else {
                        self.walk = Walk::Between;
                        continue;
                    };
                    let data_at = data_at / PAGE_SIZE * PAGE_SIZE;
                    let hole = stasis_sys::process::seek_hole(file.as_fd(), data_at)
                        .map_err(|e| Error::io(format!("SEEK_HOLE in {link}"), e))?;
                    let stretch_end = hole.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE).min(hi);
                    (*at, *end) = (data_at, stretch_end);
                    *seek = stretch_end.max(*seek + PAGE_SIZE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PM_PRESENT;
    const S: u64 = PM_SWAPPED;
    const F: u64 = PM_FILE_OR_SHARED;

    #[test]
    fn wanted_pages() {
        assert!(!wanted(0, false));
        assert!(wanted(P, false));
        assert!(wanted(S, false));
        // Private file mappings: a page still backed by the file comes back from the file; a
        // copied (anonymous) page or a swapped one is the process's own.
        assert!(!wanted(P | F, true));
        assert!(wanted(P, true));
        assert!(wanted(S | F, true));
        // In anonymous memory, a shared (file/shared bit) present page is still dumped.
        assert!(wanted(P | F, false));
    }

    #[test]
    fn stretches_coalesce_wanted_pages() {
        let e = [0, P, P | 0x1234, S, 0, 0, P, P | F, P, 0];
        let all = |file_backed| {
            let mut out = Vec::new();
            let mut i = 0;
            while let Some((a, b)) = next_stretch(&e, i, file_backed) {
                assert!(a < b && b <= e.len());
                out.push((a, b));
                i = b;
            }
            out
        };
        assert_eq!(all(false), vec![(1, 4), (6, 9)]);
        assert_eq!(all(true), vec![(1, 4), (6, 7), (8, 9)]);
        assert_eq!(next_stretch(&e, e.len(), false), None);
        assert_eq!(next_stretch(&e, e.len() + 1, false), None);
        assert_eq!(next_stretch(&[], 0, false), None);
        assert_eq!(next_stretch(&[P; 4], 0, false), Some((0, 4)));
    }

    /// A source of `n` one-page runs.
    struct Pages(u64);

    impl PageSource for Pages {
        fn next_run(&mut self, buf: &mut [u8]) -> Result<Option<PageSpan>, Error> {
            if self.0 == 0 {
                return Ok(None);
            }
            self.0 -= 1;
            buf[0] = 1;
            Ok(Some(PageSpan {
                addr: self.0 * PAGE_SIZE,
                npages: 1,
            }))
        }
    }

    #[test]
    fn a_stopped_source_hands_out_nothing_more() {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut inner = Pages(3);
        let mut s = Stoppable {
            source: &mut inner,
            stop: &stop,
        };
        let mut buf = vec![0u8; MAX_RUN_BYTES];
        assert!(s.next_run(&mut buf).unwrap().is_some());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(s.next_run(&mut buf), Err(Error::Invalid(_))));
    }
}
