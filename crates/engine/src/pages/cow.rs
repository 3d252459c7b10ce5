//! Copy-on-write sharing between a parent and its forked children: pages still shared at dump
//! time are stored once (with the parent), and are shared again after the restore.
//!
//! # Dump
//!
//! A child's page is shared with its parent when both map it, present, at the same address,
//! in private anonymous memory (not growing down), with the same page frame (pagemap PFN,
//! which only a dumper with CAP_SYS_ADMIN reads: without it every PFN reads 0 and nothing is
//! shared), and the parent's record holds that page (a run of the parent). [`CowParent`] finds
//! them while the child's pages are read ([`super::source::PagemapSource`]); the child's
//! record lists them as runs of [`RunCodec::Inherited`], which store nothing. Only the frozen
//! path detects sharing: a pre-copied process (a `--leave-running` dump's pre-copy, which
//! copies while the tree runs) stores its pages whole, as before.
//!
//! # Restore
//!
//! A child inherits its parent's pages only if they are in the parent's memory when it is
//! forked, but the rebuild lays out memory after every fork. So each process that has
//! inherited runs, or whose children do, *prepares* those of its private anonymous mappings
//! before it forks its children, in the restore child itself ([`prepare_in_child`]): each is
//! built in a staging area ([`Parking`], far from every layout of the tree and of the
//! restorer, at the same place in every process), from what it inherited there where its runs
//! say inherited, zero pages elsewhere, and its own runs written. Its children inherit the
//! staging area copy-on-write. In the rebuild, the prepared mappings are kept through the
//! unmap of inherited memory ([`parked_ranges`]), moved to their addresses with mremap, which
//! keeps the pages shared ([`move_parked`]), and not filled again ([`runs_to_fill`]). The
//! plan ([`CowPlan`]) says which mappings each process prepares: the ones holding its own
//! inherited runs and the ones of the parent under them.
//!
//! A lazy restore (`--lazy`) fills prepared mappings this way too (eagerly, before the fork);
//! the rest of private anonymous memory is served lazily as before. Incremental dumps compare
//! only what the child stores (its inherited runs refer to no data); a parent dump's inherited
//! run is never referred to by a later increment (its pages are stored anew).

use super::fill::{EagerFill, PageFill};
use super::source::{PM_PRESENT, PM_SWAPPED};
use crate::chain::ChainPages;
use crate::inject::Injector;
use crate::{procfs, Error, PAGE_SIZE};
use stasis_image::{PageRun, ProcessImage, RunCodec, Vma, VmaKind};
use stasis_sys::process::ForkedChild;
use stasis_sys::Pid;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The page frame number bits of a pagemap entry of a present page (0 without CAP_SYS_ADMIN).
pub const PFN_MASK: u64 = (1 << 55) - 1;

/// Whether pages of mapping `v` can be shared with a parent or child (private anonymous
/// memory, not growing down: a stack's mapping cannot be made again with mremap's flags).
pub fn eligible(v: &Vma) -> bool {
    v.kind == VmaKind::Anonymous && !v.shared && v.shmem_id == 0 && !v.growsdown
}

/// Whether a child's page (pagemap entry `child`) is the same page frame as its parent's at the
/// same address (`parent`): both present, not swapped, with the same non-zero PFN.
pub fn same_frame(child: u64, parent: u64) -> bool {
    let present = |e: u64| e & PM_PRESENT != 0 && e & PM_SWAPPED == 0;
    present(child)
        && present(parent)
        && child & PFN_MASK != 0
        && child & PFN_MASK == parent & PFN_MASK
}

/// The address ranges (sorted, merged) where the record of a process holds pages that it has
/// back before it forks its children: its runs in eligible mappings.
pub fn held_ranges(vmas: &[Vma], runs: &[PageRun]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in runs {
        let end = r.addr + r.npages * PAGE_SIZE;
        let in_eligible = vma_at(vmas, r.addr).is_some_and(|i| eligible(&vmas[i]));
        if !in_eligible {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == r.addr => last.1 = end,
            _ => out.push((r.addr, end)),
        }
    }
    out
}

/// The index of the mapping of `vmas` (sorted) that holds `addr`.
fn vma_at(vmas: &[Vma], addr: u64) -> Option<usize> {
    let i = vmas.partition_point(|v| v.end <= addr);
    vmas.get(i).filter(|v| v.start <= addr).map(|_| i)
}

/// Dump side: the frozen parent of the process being dumped, whose pages the child may share.
pub struct CowParent {
    pid: Pid,
    pagemap: File,
    /// See [`held_ranges`].
    held: Vec<(u64, u64)>,
    raw: Vec<u8>,
}

impl CowParent {
    /// The parent `pid` (frozen, its record's mappings and runs already made), or `None` when
    /// its record holds no page a child could share.
    pub fn open(pid: Pid, vmas: &[Vma], runs: &[PageRun]) -> Result<Option<CowParent>, Error> {
        let held = held_ranges(vmas, runs);
        tracing::debug!(parent = pid, ranges = held.len(), "pages a child may share");
        if held.is_empty() {
            return Ok(None);
        }
        let path = format!("/proc/{pid}/pagemap");
        let pagemap = File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))?;
        Ok(Some(CowParent {
            pid,
            pagemap,
            held,
            raw: Vec::new(),
        }))
    }

    /// Whether the parent's record holds the page at `addr`.
    fn holds(&self, addr: u64) -> bool {
        let i = self.held.partition_point(|&(_, b)| b <= addr);
        self.held.get(i).is_some_and(|&(a, _)| a <= addr)
    }

    /// For the child's pagemap `entries` of the pages from `addr` on (in an eligible mapping):
    /// calls `shared(page address)` for each page shared with the parent, and clears its entry
    /// (the child does not store it).
    pub fn take_shared(
        &mut self,
        addr: u64,
        entries: &mut [u64],
        mut shared: impl FnMut(u64),
    ) -> Result<(), Error> {
        let end = addr + entries.len() as u64 * PAGE_SIZE;
        if !self.held.iter().any(|&(a, b)| a < end && addr < b) {
            return Ok(());
        }
        self.raw.resize(entries.len() * 8, 0);
        self.pagemap
            .read_exact_at(&mut self.raw, addr / PAGE_SIZE * 8)
            .map_err(|e| Error::io(format!("read pagemap of {} at {addr:#x}", self.pid), e))?;
        for (i, e) in entries.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.raw[i * 8..i * 8 + 8]);
            let at = addr + i as u64 * PAGE_SIZE;
            if same_frame(*e, u64::from_le_bytes(w)) && self.holds(at) {
                shared(at);
                *e = 0;
            }
        }
        Ok(())
    }
}

/// Appends the page at `addr` of mapping `vma` to `runs` (inherited runs, in address order),
/// extending the last run when it continues it in the same mapping.
pub fn push_inherited(runs: &mut Vec<(usize, PageRun)>, vma: usize, addr: u64) {
    if let Some((v, last)) = runs.last_mut() {
        if *v == vma && last.addr + last.npages * PAGE_SIZE == addr {
            last.npages += 1;
            return;
        }
    }
    runs.push((vma, PageRun::inherited(addr, 1)));
}

/// The lowest address of the staging area.
pub const PARKING_FLOOR: u64 = 0x4000_0000_0000;
/// The staging area ends below this.
const PARKING_CEILING: u64 = 0x7000_0000_0000;
/// The staging area keeps this far from any mapping of the tree or the restorer (the
/// scratch area and a vdso without a place of its own are put just above dumped mappings).
const PARKING_MARGIN: u64 = 1 << 30;
/// Huge page size: parked memory keeps its address modulo this (transparent huge pages).
const HUGE: u64 = 2 << 20;

/// Where prepared memory waits until the rebuild moves it to its address: one slot per range
/// of the tree's prepared mappings (merged), the same in every process, so that a child finds
/// what it inherited where its own prepared mapping is staged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parking {
    /// (start, end, staged start), sorted by start.
    slots: Vec<(u64, u64, u64)>,
}

impl Parking {
    /// Where the page at `addr` (of a prepared mapping) is staged.
    pub fn at(&self, addr: u64) -> Result<u64, Error> {
        let i = self.slots.partition_point(|&(_, b, _)| b <= addr);
        match self.slots.get(i) {
            Some(&(a, _, p)) if a <= addr => Ok(p + (addr - a)),
            _ => Err(Error::Internal {
                what: format!("no staging place for prepared memory at {addr:#x}"),
            }),
        }
    }

    /// Places the merged ranges `ranges` (sorted) in one block at or above [`PARKING_FLOOR`],
    /// clear of every range of `occupied` by a margin (1 GiB).
    pub fn place(ranges: &[(u64, u64)], occupied: &[(u64, u64)]) -> Result<Parking, Error> {
        if ranges.is_empty() {
            return Ok(Parking::default());
        }
        let total: u64 = ranges
            .iter()
            .map(|&(a, b)| (b - a).next_multiple_of(HUGE) + 2 * HUGE)
            .sum();
        let mut occupied = occupied.to_vec();
        occupied.sort();
        let mut base = PARKING_FLOOR;
        for &(a, b) in &occupied {
            let clear =
                b.saturating_add(PARKING_MARGIN) <= base || base + total + PARKING_MARGIN <= a;
            if !clear {
                base = b.saturating_add(PARKING_MARGIN).next_multiple_of(HUGE);
            }
        }
        if base + total > PARKING_CEILING {
            return Err(Error::Unsupported {
                what: format!(
                    "no room for {} MiB of copy-on-write memory staged for the restore",
                    total >> 20
                ),
            });
        }
        let mut slots = Vec::with_capacity(ranges.len());
        let mut cursor = base;
        for &(a, b) in ranges {
            let park = cursor.next_multiple_of(HUGE) + a % HUGE;
            slots.push((a, b, park));
            cursor = park + (b - a) + HUGE;
        }
        Ok(Parking { slots })
    }
}

/// The copy-on-write part of a restore's plan.
#[derive(Debug, Clone, Default)]
pub struct CowPlan {
    pub parking: Parking,
    /// For each process (in plan order), the indices of the mappings it prepares before it
    /// forks its children (sorted).
    pub prepared: Vec<Vec<usize>>,
}

impl CowPlan {
    /// The plan for `images` (parents before children). `occupied`: the restorer's own
    /// mappings (the restore children start as copies of it). Refuses an inherited run whose
    /// parent is not in the images or has no private anonymous memory under it.
    pub fn make(images: &[&ProcessImage], occupied: &[(u64, u64)]) -> Result<CowPlan, Error> {
        let mut prepared: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); images.len()];
        for (i, p) in images.iter().enumerate() {
            let mut inherited = p
                .page_runs
                .iter()
                .filter(|r| r.codec == RunCodec::Inherited)
                .peekable();
            if inherited.peek().is_none() {
                continue;
            }
            let j = images
                .iter()
                .position(|q| q.pid == p.ppid && q.pid != p.pid)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "pid {}: its record has pages inherited from its parent {}, which is \
                         not in the images",
                        p.pid, p.ppid
                    ))
                })?;
            let parent = images[j];
            for r in inherited {
                let end = r.addr + r.npages * PAGE_SIZE;
                let v = vma_at(&p.vmas, r.addr)
                    .filter(|&v| eligible(&p.vmas[v]) && end <= p.vmas[v].end)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "pid {}: inherited page run at {:#x} is not in one private \
                             anonymous mapping",
                            p.pid, r.addr
                        ))
                    })?;
                prepared[i].insert(v);
                let mut at = r.addr;
                while at < end {
                    let k = vma_at(&parent.vmas, at)
                        .filter(|&k| eligible(&parent.vmas[k]))
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "pid {}: page run at {:#x} is inherited from its parent {}, \
                                 which has no private anonymous memory at {at:#x}",
                                p.pid, r.addr, parent.pid
                            ))
                        })?;
                    prepared[j].insert(k);
                    at = parent.vmas[k].end;
                }
            }
        }
        let mut ranges: Vec<(u64, u64)> = prepared
            .iter()
            .zip(images)
            .flat_map(|(set, p)| set.iter().map(|&v| (p.vmas[v].start, p.vmas[v].end)))
            .collect();
        ranges.sort();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let mut taken: Vec<(u64, u64)> = occupied.to_vec();
        if !merged.is_empty() {
            for p in images {
                taken.extend(p.vmas.iter().map(|v| (v.start, v.end)));
            }
        }
        Ok(CowPlan {
            parking: Parking::place(&merged, &taken)?,
            prepared: prepared
                .into_iter()
                .map(|s| s.into_iter().collect())
                .collect(),
        })
    }

    /// Whether no process prepares anything.
    pub fn is_empty(&self) -> bool {
        self.prepared.iter().all(Vec::is_empty)
    }
}

/// The runs of `runs` (sorted) inside `v`.
fn runs_in<'r>(runs: &'r [PageRun], v: &Vma) -> &'r [PageRun] {
    let a = runs.partition_point(|r| r.addr < v.start);
    let b = runs.partition_point(|r| r.addr < v.end);
    &runs[a..b]
}

/// In the restore child of `image`, before it forks its children: builds each prepared
/// mapping (`prepared`, indices of `image.vmas`) in its staging place, from the pages it
/// inherited there where its runs say inherited, zero pages elsewhere, and its own runs,
/// read from `pages` (CRC-checked; one run at a time, with no thread: the child forks next).
pub fn prepare_in_child(
    child: &ForkedChild,
    image: &ProcessImage,
    prepared: &[usize],
    parking: &Parking,
    pages: &ChainPages,
) -> Result<(), Error> {
    if prepared.is_empty() {
        return Ok(());
    }
    let me = stasis_sys::process::getpid();
    let maps = procfs::read_maps(me)?;
    let mut own = Vec::new();
    for &vi in prepared {
        let v = image.vmas.get(vi).ok_or_else(|| Error::Internal {
            what: format!("prepared mapping {vi} of pid {} does not exist", image.pid),
        })?;
        let (park, len) = (parking.at(v.start)?, v.end - v.start);
        // What is mapped there already was inherited from the parent's staging area: anything
        // else there would be the restorer's own memory.
        let mut at = park;
        for m in maps.iter().filter(|m| m.start < park + len && park < m.end) {
            if m.inode != 0 || !m.name.is_empty() || m.shared {
                return Err(Error::Internal {
                    what: format!(
                        "the staging place {:#x}-{:#x} of copy-on-write memory meets a mapping \
                         of the restorer ({:#x}-{:#x} {})",
                        park,
                        park + len,
                        m.start,
                        m.end,
                        m.name
                    ),
                });
            }
            if m.start > at {
                map_zero(child, at, m.start - at)?;
            }
            at = at.max(m.end);
        }
        if at < park + len {
            map_zero(child, at, park + len - at)?;
        }
        // Only the pages its runs say inherited stay the parent's; the rest starts as zero.
        let mut at = v.start;
        for r in runs_in(&image.page_runs, v) {
            if r.codec == RunCodec::Inherited {
                if r.addr > at {
                    discard(child, parking.at(at)?, r.addr - at)?;
                }
                at = r.addr + r.npages * PAGE_SIZE;
            } else {
                own.push(PageRun {
                    addr: parking.at(r.addr)?,
                    ..*r
                });
            }
        }
        if at < v.end {
            discard(child, parking.at(at)?, v.end - at)?;
        }
    }
    let mut fill = EagerFill::new(pages);
    for r in &own {
        // One run at a time: a series of compressed runs would be decoded by threads.
        fill.fill(me, std::slice::from_ref(r))?;
    }
    Ok(())
}

fn map_zero(child: &ForkedChild, at: u64, len: u64) -> Result<(), Error> {
    child
        .map_zero_pages(at, len)
        .map_err(|e| Error::io(format!("mmap of {len} bytes at {at:#x} (staging)"), e))
}

fn discard(child: &ForkedChild, at: u64, len: u64) -> Result<(), Error> {
    child
        .discard_pages(at, len)
        .map_err(|e| Error::io(format!("madvise(MADV_DONTNEED) at {at:#x} (staging)"), e))
}

/// The staging ranges of the prepared mappings of a process: kept when the rebuild unmaps
/// what the process inherited.
pub fn parked_ranges(
    image: &ProcessImage,
    prepared: &[usize],
    parking: &Parking,
) -> Result<Vec<(u64, u64)>, Error> {
    prepared
        .iter()
        .filter_map(|&vi| image.vmas.get(vi))
        .map(|v| {
            let p = parking.at(v.start)?;
            Ok((p, p + (v.end - v.start)))
        })
        .collect()
}

/// Moves the prepared mappings of the stopped process (`inj`) from their staging places to
/// their addresses with mremap (which keeps their pages, shared or not), piece by piece (a
/// staged mapping may be several mappings: what was inherited and what was made there).
pub fn move_parked(
    inj: &mut Injector,
    image: &ProcessImage,
    prepared: &[usize],
    parking: &Parking,
) -> Result<(), Error> {
    if prepared.is_empty() {
        return Ok(());
    }
    let maps = procfs::read_maps(inj.tid())?;
    for &vi in prepared {
        let Some(v) = image.vmas.get(vi) else {
            continue;
        };
        let (park, len) = (parking.at(v.start)?, v.end - v.start);
        let mut covered = park;
        for m in maps.iter().filter(|m| m.start < park + len && park < m.end) {
            let (a, b) = (m.start.max(park), m.end.min(park + len));
            if a != covered {
                break;
            }
            inj.mremap_fixed(a, b - a, v.start + (a - park))?;
            covered = b;
        }
        if covered != park + len {
            return Err(Error::Internal {
                what: format!(
                    "the staged copy of mapping {:#x}-{:#x} is not whole at {covered:#x}",
                    v.start, v.end
                ),
            });
        }
    }
    Ok(())
}

/// The runs of `image` the rebuild still fills: those outside its prepared mappings.
pub fn runs_to_fill(image: &ProcessImage, prepared: &[usize]) -> Result<Vec<PageRun>, Error> {
    let ranges: Vec<(u64, u64)> = prepared
        .iter()
        .filter_map(|&vi| image.vmas.get(vi))
        .map(|v| (v.start, v.end))
        .collect();
    let mut out = Vec::with_capacity(image.page_runs.len());
    for r in &image.page_runs {
        if ranges.iter().any(|&(a, b)| a <= r.addr && r.addr < b) {
            continue;
        }
        if r.codec == RunCodec::Inherited {
            return Err(Error::Internal {
                what: format!(
                    "pid {}: inherited page run at {:#x} outside its prepared memory",
                    image.pid, r.addr
                ),
            });
        }
        out.push(*r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::source::PM_FILE_OR_SHARED;

    fn anon(start: u64, end: u64) -> Vma {
        Vma::anonymous(start, end)
    }

    #[test]
    fn frames_are_the_same_only_when_present_with_one_pfn() {
        let p = |pfn: u64| PM_PRESENT | pfn;
        assert!(same_frame(p(77), p(77)));
        assert!(same_frame(p(77) | PM_FILE_OR_SHARED, p(77)));
        assert!(!same_frame(p(77), p(78)));
        assert!(!same_frame(p(0), p(0)), "PFNs hidden without CAP_SYS_ADMIN");
        assert!(!same_frame(77, p(77)), "not present");
        assert!(
            !same_frame(PM_SWAPPED | 77, PM_SWAPPED | 77),
            "swap entries"
        );
    }

    #[test]
    fn held_ranges_are_runs_in_private_anonymous_memory() {
        let mut stack = anon(0x9000, 0xa000);
        stack.growsdown = true;
        let vmas = vec![anon(0x1000, 0x5000), stack];
        let runs = [
            PageRun::raw(0x1000, 1, 0, 0),
            PageRun::inherited(0x2000, 2),
            PageRun::raw(0x4000, 1, 0, 0),
            PageRun::raw(0x9000, 1, 0, 0),
        ];
        assert_eq!(held_ranges(&vmas, &runs), vec![(0x1000, 0x5000)]);
    }

    #[test]
    fn inherited_pages_coalesce_within_a_mapping() {
        let mut runs = Vec::new();
        for a in [0x1000, 0x2000, 0x4000] {
            push_inherited(&mut runs, 0, a);
        }
        push_inherited(&mut runs, 1, 0x5000);
        let got: Vec<(u64, u64)> = runs.iter().map(|(_, r)| (r.addr, r.npages)).collect();
        assert_eq!(got, vec![(0x1000, 2), (0x4000, 1), (0x5000, 1)]);
    }

    fn image(pid: i32, ppid: i32, vmas: Vec<Vma>, runs: Vec<PageRun>) -> ProcessImage {
        let mut p = stasis_image::testing::sample_process();
        p.pid = pid;
        p.ppid = ppid;
        p.vmas = vmas;
        p.page_runs = runs;
        p
    }

    #[test]
    fn the_parent_prepares_what_its_child_inherits() {
        // The parent's mapping was split in two by an mprotect after the fork; the child's
        // was not. The grandchild inherits from the child.
        let parent = image(
            10,
            1,
            vec![
                anon(0x10000, 0x14000),
                anon(0x14000, 0x20000),
                anon(0x30000, 0x31000),
            ],
            vec![PageRun::raw(0x10000, 8, 0, 0)],
        );
        let child = image(
            11,
            10,
            vec![anon(0x10000, 0x20000), anon(0x40000, 0x41000)],
            vec![
                PageRun::inherited(0x12000, 4),
                PageRun::raw(0x16000, 1, 0, 0),
            ],
        );
        let grandchild = image(
            12,
            11,
            vec![anon(0x10000, 0x20000)],
            vec![PageRun::inherited(0x16000, 1)],
        );
        let images = [&parent, &child, &grandchild];
        let plan = CowPlan::make(&images, &[(0x7f00_0000_0000, 0x7f00_0010_0000)]).unwrap();
        assert_eq!(plan.prepared, vec![vec![0, 1], vec![0], vec![0]]);
        let staged = plan.parking.at(0x10000).unwrap();
        assert!(staged >= PARKING_FLOOR && staged % HUGE == 0x10000);
        assert_eq!(plan.parking.at(0x1f000).unwrap(), staged + 0xf000);
        assert!(plan.parking.at(0x30000).is_err(), "not prepared");
        // The child fills only what it does not prepare.
        assert!(runs_to_fill(&child, &plan.prepared[1]).unwrap().is_empty());
        assert_eq!(runs_to_fill(&parent, &[]).unwrap().len(), 1);
        assert!(runs_to_fill(&child, &[]).is_err());
        // A parent without memory under the inherited run, or not in the images: refused.
        let orphan = image(
            13,
            99,
            vec![anon(0x10000, 0x20000)],
            vec![PageRun::inherited(0x10000, 1)],
        );
        assert!(CowPlan::make(&[&parent, &orphan], &[]).is_err());
        let far = image(
            14,
            10,
            vec![anon(0x50000, 0x60000)],
            vec![PageRun::inherited(0x50000, 1)],
        );
        assert!(CowPlan::make(&[&parent, &far], &[]).is_err());
        // Nothing inherited: nothing prepared, nothing staged.
        let plan = CowPlan::make(&[&parent], &[]).unwrap();
        assert!(plan.is_empty() && plan.parking == Parking::default());
    }

    #[test]
    fn staging_keeps_clear_of_occupied_ranges() {
        let ranges = [(0x1000, 0x3000), (0x200000, 0x600000)];
        let busy = [(PARKING_FLOOR, PARKING_FLOOR + 0x1000)];
        let p = Parking::place(&ranges, &busy).unwrap();
        let first = p.at(0x1000).unwrap();
        assert!(first >= PARKING_FLOOR + 0x1000 + PARKING_MARGIN);
        assert_eq!(first % HUGE, 0x1000);
        let second = p.at(0x200000).unwrap();
        assert!(second >= first + 0x2000 && second.is_multiple_of(HUGE));
        let everything = [(0, PARKING_CEILING)];
        assert!(Parking::place(&ranges, &everything).is_err());
    }
}
