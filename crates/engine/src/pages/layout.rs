//! The restore layout: the dumped address space rebuilt inside the new process.
//!
//! In order, through system calls injected into the stopped child ([`crate::inject`]):
//! 1. [`move_specials`]: the kernel's `[vvar]`, `[vvar_vclock]` and `[vdso]` are moved with
//!    mremap to their dumped addresses (through a temporary place when the two layouts
//!    overlap; the vdso moves last, since its `syscall` instruction runs every move);
//! 2. [`unmap_all_but_specials`]: everything else the child inherited is unmapped;
//! 3. [`free_scratch_address`]: a hole of the dumped layout for the injector's scratch area;
//! 4. [`map_vmas`]: every mapping is recreated at its address, writable while it receives
//!    pages; shared anonymous memory is created by its owner (the first mapping of it in the
//!    tree, see [`ShmemOwners`]) and every later mapping opens the owner's
//!    /proc/PID/map_files entry; then the AIO contexts ([`restore_aio_rings`]): io_setup makes
//!    a ring of the dumped size, which mremap moves to the dumped address (the context's id);
//! 5. (the pages are filled, see [`super::fill`]);
//! 6. [`finish_protections`]: the final protections of the mappings made writable.
//!
//! Each step is a pure plan ([`plan_special_moves`], [`unmap_ranges`], [`plan_mappings`],
//! [`final_protections`]) carried out by a thin loop of injected calls.

use super::vma::is_special;
use crate::inject::Injector;
use crate::procfs;
use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, Vma, VmaKind};
use stasis_sys::Pid;
use std::collections::HashMap;

/// Highest user address (4-level paging).
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// Where the vdso block may be parked while it moves: far from any usual layout.
const TEMP_PLACES: [u64; 3] = [0x1000_0000_0000, 0x2000_0000_0000, 0x3000_0000_0000];

/// Shared anonymous memory objects of a restored tree: for each `shmem_id`, the process and
/// mapping (pid, start, end) that creates it; every later mapping of it opens that mapping's
/// /proc/PID/map_files entry.
pub type ShmemOwners = HashMap<u64, (Pid, u64, u64)>;

/// The owners of the shared anonymous memory of a tree: the first mapping of each object, with
/// the processes (pid and mappings) in restore order (parents before children).
pub fn shmem_owners<'a>(processes: impl IntoIterator<Item = (Pid, &'a [Vma])>) -> ShmemOwners {
    let mut owners = ShmemOwners::new();
    for (pid, vmas) in processes {
        for v in vmas.iter().filter(|v| v.shmem_id != 0) {
            owners.entry(v.shmem_id).or_insert((pid, v.start, v.end));
        }
    }
    owners
}

/// A special mapping: start, end, name.
pub type Special = (u64, u64, String);

/// The special mappings of a layout, in address order, without `[vsyscall]` (which is fixed).
fn specials(vmas: impl Iterator<Item = Special>) -> Vec<Special> {
    let mut s: Vec<_> = vmas
        .filter(|(_, _, n)| n == "[vdso]" || n == "[vvar]" || n == "[vvar_vclock]")
        .collect();
    s.sort();
    s
}

/// The special mappings of an image.
fn image_specials(image: &[Vma]) -> Vec<Special> {
    specials(
        image
            .iter()
            .filter(|v| is_special(&v.kind))
            .map(|v| (v.start, v.end, v.name.clone())),
    )
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// One mremap of a special mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialMove {
    pub from: u64,
    pub len: u64,
    pub to: u64,
    /// The `[vdso]`: the injector's syscall instruction moves with it.
    pub vdso: bool,
}

/// Plans the mremaps that bring the child's special mappings (`child`, as
/// [`procfs::read_smaps`] shows them) to the image's addresses (`image`): nothing when they are
/// already there; each straight to its place when the two blocks do not overlap; else every
/// mapping to a temporary place clear of both layouts and then to its place. The vdso moves
/// last each time. The two must have the same shape (names, sizes and
/// distances): images from another kernel are refused.
pub fn plan_special_moves(child: &[Special], image: &[Special]) -> Result<Vec<SpecialMove>, Error> {
    let (child, target) = (
        specials(child.iter().cloned()),
        specials(image.iter().cloned()),
    );
    let shape = |s: &[Special]| -> Vec<Special> {
        let base = s.first().map(|x| x.0).unwrap_or(0);
        s.iter()
            .map(|(a, b, n)| (a - base, b - base, n.clone()))
            .collect()
    };
    if shape(&child) != shape(&target) || child.is_empty() {
        return Err(Error::Unsupported {
            what: format!("the image's vdso/vvar layout {:?} differs from this kernel's {:?} (images from another kernel?)", shape(&target), shape(&child)),
        });
    }
    let block = |s: &[Special]| (s[0].0, s[s.len() - 1].1);
    let (cur_block, dst_block) = (block(&child), block(&target));
    if cur_block == dst_block {
        return Ok(Vec::new());
    }
    let span = cur_block.1 - cur_block.0;
    // The vdso moves last: its syscall instruction runs every mremap.
    let mut order: Vec<&Special> = child.iter().collect();
    order.sort_by_key(|(_, _, n)| n == "[vdso]");
    let hop = |from: u64, to: u64| -> Vec<SpecialMove> {
        order
            .iter()
            .map(|(a, b, name)| SpecialMove {
                from: from + (a - cur_block.0),
                len: b - a,
                to: to + (a - cur_block.0),
                vdso: name == "[vdso]",
            })
            .collect()
    };
    if !overlaps(cur_block, dst_block) {
        // No mapping can land on one of the block not moved yet.
        return Ok(hop(cur_block.0, dst_block.0));
    }
    let temp = TEMP_PLACES
        .into_iter()
        .find(|&t| !overlaps((t, t + span), cur_block) && !overlaps((t, t + span), dst_block))
        .ok_or_else(|| Error::Invalid("no temporary place to move the vdso through".into()))?;
    let mut moves = hop(cur_block.0, temp);
    moves.extend(hop(temp, dst_block.0));
    Ok(moves)
}

/// Moves the child's `[vvar]`, `[vvar_vclock]` and `[vdso]` to the addresses they had in the
/// dumped process (via a temporary place when the two layouts overlap), updating the
/// injector's syscall address as the vdso moves. `vdso_offset` is the syscall instruction's
/// offset in the vdso.
///
/// A process that had unmapped its vdso (and its vvar) has none in the image: the child's
/// are then kept for the restore's own calls in a free place of the dumped layout, just above
/// room for the scratch area (`scratch_len`), and that place is returned, to be unmapped last
/// ([`unmap_temporary_specials`]).
pub fn move_specials(
    inj: &mut Injector,
    image: &[Vma],
    vdso_offset: u64,
    scratch_len: u64,
) -> Result<Option<(u64, u64)>, Error> {
    // maps, not smaps: the child is a copy of the restorer, whose whole memory smaps would
    // walk, for lines that maps has too.
    let child: Vec<Special> = specials(
        procfs::read_maps(inj.tid())?
            .into_iter()
            .map(|m| (m.start, m.end, m.name)),
    );
    let mut target = image_specials(image);
    let mut temporary = None;
    if !target.iter().any(|(_, _, n)| n == "[vdso]") {
        if !target.is_empty() || child.is_empty() {
            return Err(Error::Unsupported {
                what: "the image keeps [vvar] without [vdso] (a process that unmapped its vdso \
                       only): not supported"
                    .into(),
            });
        }
        let (lo, hi) = (child[0].0, child[child.len() - 1].1);
        let at = free_scratch_address(image, scratch_len + (hi - lo))? + scratch_len;
        target = child
            .iter()
            .map(|(a, b, n)| (a - lo + at, b - lo + at, n.clone()))
            .collect();
        temporary = Some((at, at + (hi - lo)));
    }
    for m in plan_special_moves(&child, &target)? {
        inj.mremap_fixed(m.from, m.len, m.to)?;
        if m.vdso {
            inj.set_syscall_ip(m.to + vdso_offset);
        }
    }
    Ok(temporary)
}

/// Unmaps the vdso and vvar kept for a process that had none ([`move_specials`]): the last
/// call of the restore in it, run by the vdso's own syscall instruction (the thread stops
/// right after it, before fetching from the unmapped page).
pub fn unmap_temporary_specials(inj: &mut Injector, range: (u64, u64)) -> Result<(), Error> {
    inj.munmap(range.0, range.1 - range.0)
}

/// The ranges (start, length) to unmap so that only the image's special mappings remain of
/// the user address space.
pub fn unmap_ranges(image: &[Vma]) -> Vec<(u64, u64)> {
    let keep = image_specials(image);
    let mut ranges = Vec::new();
    let mut from = 0u64;
    for (a, b) in keep
        .iter()
        .map(|(a, b, _)| (*a, *b))
        .chain(std::iter::once((TASK_SIZE, TASK_SIZE)))
    {
        if a > from {
            ranges.push((from, a - from));
        }
        from = from.max(b);
    }
    ranges
}

/// Unmaps everything in the child except the special mappings of the image's layout and the
/// ranges of `keep` (the temporary place of the child's own specials, for an image without
/// them; memory staged before the fork, see [`super::cow`]).
pub fn unmap_all_but_specials(
    inj: &mut Injector,
    image: &[Vma],
    keep: &[(u64, u64)],
) -> Result<(), Error> {
    for (start, len) in subtract(&unmap_ranges(image), keep) {
        inj.munmap(start, len)?;
    }
    Ok(())
}

/// The ranges (start, length) of `ranges` without what lies in `keep` (start, end).
pub fn subtract(ranges: &[(u64, u64)], keep: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut keep = keep.to_vec();
    keep.sort();
    let mut out = Vec::new();
    for &(start, len) in ranges {
        let end = start + len;
        let mut at = start;
        for &(a, b) in keep.iter().filter(|&&(a, b)| a < end && start < b) {
            if a > at {
                out.push((at, a - at));
            }
            at = at.max(b);
        }
        if at < end {
            out.push((at, end - at));
        }
    }
    out
}

/// Finds a free place for the injector's scratch area in the image's layout.
pub fn free_scratch_address(image: &[Vma], len: u64) -> Result<u64, Error> {
    let mut candidate = 0x1_0000_0000u64;
    let mut sorted: Vec<(u64, u64)> = image.iter().map(|v| (v.start, v.end)).collect();
    sorted.sort();
    for (a, b) in sorted {
        // Keep a page of distance: a grows-down stack needs its guard gap.
        if overlaps(
            (candidate, candidate + len + PAGE_SIZE),
            (a.saturating_sub(256 * PAGE_SIZE), b + PAGE_SIZE),
        ) {
            candidate = b + 257 * PAGE_SIZE;
        }
    }
    if candidate + len < TASK_SIZE {
        Ok(candidate)
    } else {
        Err(Error::Invalid(
            "no free address for the restore scratch area".into(),
        ))
    }
}

/// For each mapping, whether page runs of the image land in it.
pub fn with_pages(vmas: &[Vma], runs: &[PageRun]) -> Vec<bool> {
    let mut has = vec![false; vmas.len()];
    let mut vi = 0;
    for r in runs {
        while vi < vmas.len() && vmas[vi].end <= r.addr {
            vi += 1;
        }
        if vi < vmas.len() {
            has[vi] = true;
        }
    }
    has
}

/// What a recreated mapping maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapFrom {
    /// New anonymous memory (private, or shared memory this mapping creates).
    Anonymous,
    /// A descriptor of the child: a mapped file or memfd.
    Fd(i32),
    /// Shared memory another mapping created: opened from this /proc/PID/map_files entry.
    Shared { path: String, write: bool },
}

/// One mmap that recreates a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapCall {
    pub start: u64,
    pub len: u64,
    pub prot: u32,
    /// MAP_FIXED_NOREPLACE, MAP_SHARED or MAP_PRIVATE, MAP_GROWSDOWN, MAP_ANONYMOUS.
    pub flags: i32,
    pub from: MapFrom,
    pub offset: u64,
}

/// Plans the mmaps that recreate every non-special mapping of `vmas` in the process `pid`.
/// Mappings that receive pages are mapped readable and writable until they are filled.
/// `file_fds` maps a mapping index to the descriptor number, in the child, of the file to map.
pub fn plan_mappings(
    pid: Pid,
    vmas: &[Vma],
    runs: &[PageRun],
    file_fds: &HashMap<usize, i32>,
    shmem: &ShmemOwners,
) -> Result<Vec<MapCall>, Error> {
    let filled = with_pages(vmas, runs);
    let mut calls = Vec::new();
    for (i, v) in vmas.iter().enumerate() {
        if is_special(&v.kind) {
            continue;
        }
        let mut prot = v.prot;
        if filled[i] {
            prot |= (libc::PROT_READ | libc::PROT_WRITE) as u32;
        }
        let mut flags = libc::MAP_FIXED_NOREPLACE
            | if v.shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        if v.growsdown {
            flags |= libc::MAP_GROWSDOWN;
        }
        let owner = shmem.get(&v.shmem_id).copied().filter(|_| v.shmem_id != 0);
        let from = match (&v.kind, owner) {
            (VmaKind::File { .. } | VmaKind::Memfd { .. } | VmaKind::Deleted { .. }, _) => {
                MapFrom::Fd(*file_fds.get(&i).ok_or_else(|| {
                    Error::Invalid(format!("no file opened for mapping {:#x}", v.start))
                })?)
            }
            // A later mapping of shared memory that already exists in the tree.
            (_, Some((owner, start, end))) if (owner, start) != (pid, v.start) => MapFrom::Shared {
                path: procfs::map_file(owner, start, end),
                write: v.prot & libc::PROT_WRITE as u32 != 0,
            },
            _ => {
                flags |= libc::MAP_ANONYMOUS;
                MapFrom::Anonymous
            }
        };
        calls.push(MapCall {
            start: v.start,
            len: v.end - v.start,
            prot,
            flags,
            from,
            offset: v.file_offset,
        });
    }
    Ok(calls)
}

/// Recreates every non-special mapping of `vmas` in the child (see [`plan_mappings`]), but
/// those starting at an address of `in_place` (already there).
pub fn map_vmas(
    inj: &mut Injector,
    vmas: &[Vma],
    runs: &[PageRun],
    file_fds: &HashMap<usize, i32>,
    shmem: &ShmemOwners,
    in_place: &[u64],
) -> Result<(), Error> {
    let planned: Vec<_> = plan_mappings(inj.tid(), vmas, runs, file_fds, shmem)?
        .into_iter()
        // Those prepared before the fork are moved here already (see `super::cow`).
        .filter(|call| !in_place.contains(&call.start))
        .collect();
    // Every mapping at its own address (MAP_FIXED_NOREPLACE): the order does not matter.
    // Those from a descriptor of the restorer (or none) in batches...
    let (by_fd, by_path): (Vec<_>, Vec<_>) = planned
        .into_iter()
        .partition(|call| !matches!(call.from, MapFrom::Shared { .. }));
    let calls: Vec<(i64, [u64; 6])> = by_fd
        .iter()
        .map(|call| {
            let fd = match &call.from {
                MapFrom::Fd(fd) => *fd,
                _ => -1,
            };
            let (prot, flags) = (call.prot as i32, call.flags);
            let args = [
                call.start,
                call.len,
                prot as u64,
                flags as u64,
                fd as u64,
                call.offset,
            ];
            (libc::SYS_mmap, args)
        })
        .collect();
    let got = inj.calls_in_order("mmap", &calls)?;
    for (call, got) in by_fd.iter().zip(got) {
        if got != call.start {
            return Err(Error::Invalid(format!(
                "mapping {:#x} landed at {got:#x}",
                call.start
            )));
        }
    }
    // ... those of a file the process opens itself, one by one.
    for call in by_path {
        let mut opened_here = None;
        let fd = match &call.from {
            MapFrom::Anonymous => -1,
            MapFrom::Fd(fd) => *fd,
            MapFrom::Shared { path, write } => {
                let access = if *write { libc::O_RDWR } else { libc::O_RDONLY };
                let fd = inj.open(path, access)?;
                opened_here = Some(fd);
                fd
            }
        };
        let got = inj.mmap(
            call.start,
            call.len,
            call.prot as i32,
            call.flags,
            fd,
            call.offset,
        )?;
        if got != call.start {
            return Err(Error::Invalid(format!(
                "mapping {:#x} landed at {got:#x}",
                call.start
            )));
        }
        if let Some(fd) = opened_here {
            inj.close(fd)?;
        }
    }
    restore_aio_rings(inj, vmas)
}

/// The number of events to ask io_setup for, for a ring of `nr` events: the most that still
/// make a ring of that size (the kernel makes room for twice the events asked for, plus two,
/// rounded up to whole pages; a small request gets the smallest ring, as the original did).
pub fn aio_request(nr: u32) -> u32 {
    (nr.saturating_sub(2) / 2).max(1)
}

/// Recreates the AIO contexts of `vmas`: a context with a ring of the same size, moved to the
/// dumped ring's address (which is the context's id, so the process finds its context under
/// the same id). Needs the rest of the layout in place, so that the new ring lands elsewhere.
pub fn restore_aio_rings(inj: &mut Injector, vmas: &[Vma]) -> Result<(), Error> {
    for v in vmas {
        let VmaKind::Aio { nr } = v.kind else {
            continue;
        };
        let len = v.end - v.start;
        let ring = inj.io_setup(aio_request(nr))?;
        let maps = procfs::read_smaps(inj.tid())?;
        let made = maps
            .iter()
            .find(|m| m.start == ring)
            .map(|m| m.end - m.start)
            .unwrap_or(0);
        if made != len {
            return Err(Error::Unsupported {
                what: format!(
                    "AIO context {:#x}: io_setup({}) made a ring of {made} bytes here, the dumped                      one had {len} (another kernel or number of CPUs?)",
                    v.start,
                    aio_request(nr)
                ),
            });
        }
        if ring != v.start {
            inj.mremap_fixed(ring, len, v.start)?;
        }
    }
    Ok(())
}

/// The mprotects (start, length, protection) that give the mappings made writable to be filled
/// their final protection.
pub fn final_protections(vmas: &[Vma], runs: &[PageRun]) -> Vec<(u64, u64, u32)> {
    let filled = with_pages(vmas, runs);
    vmas.iter()
        .zip(filled)
        .filter(|(v, filled)| {
            *filled && v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32 != v.prot
        })
        .map(|(v, _)| (v.start, v.end - v.start, v.prot))
        .collect()
}

/// Applies the final protections to the mappings that were made writable to be filled.
pub fn finish_protections(inj: &mut Injector, vmas: &[Vma], runs: &[PageRun]) -> Result<(), Error> {
    let calls: Vec<(i64, [u64; 6])> = final_protections(vmas, runs)
        .into_iter()
        .map(|(start, len, prot)| (libc::SYS_mprotect, [start, len, prot as u64, 0, 0, 0]))
        .collect();
    inj.calls_in_order("mprotect", &calls)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u32 = libc::PROT_READ as u32;
    const W: u32 = libc::PROT_WRITE as u32;
    const X: u32 = libc::PROT_EXEC as u32;

    fn vma(start: u64, end: u64, prot: u32, kind: VmaKind) -> Vma {
        let name = match kind {
            VmaKind::Vdso => "[vdso]",
            VmaKind::Vvar => "[vvar]",
            VmaKind::VvarVclock => "[vvar_vclock]",
            VmaKind::Vsyscall => "[vsyscall]",
            _ => "",
        };
        Vma {
            shmem_id: 0,
            advice: Default::default(),
            start,
            end,
            prot,
            shared: false,
            growsdown: false,
            file_offset: 0,
            kind,
            name: name.into(),
        }
    }

    fn run(addr: u64, npages: u64) -> PageRun {
        PageRun::raw(addr, npages, 0, 0)
    }

    /// vvar (4 pages), vvar_vclock (2), vdso (2) at `base`, as on this kernel.
    fn special_block(base: u64) -> Vec<Special> {
        vec![
            (base, base + 0x4000, "[vvar]".into()),
            (base + 0x4000, base + 0x6000, "[vvar_vclock]".into()),
            (base + 0x6000, base + 0x8000, "[vdso]".into()),
        ]
    }

    /// Measured on this kernel (2 CPUs): io_setup(1..=62) makes a ring of 127 events (one
    /// page), 63..=126 one of 255 (two pages), 127..=190 one of 383 (three).
    #[test]
    fn aio_requests_make_the_same_ring() {
        let pages = |req: u32| (32 + (2 * u64::from(req.max(8)) + 2) * 32).div_ceil(4096);
        for (nr, want_pages) in [(127u32, 1u64), (255, 2), (383, 3), (2047, 16), (8319, 65)] {
            let req = aio_request(nr);
            assert_eq!(pages(req), want_pages, "ring of {nr} events: request {req}");
            assert!(pages(req + 1) > want_pages, "request {req} is the largest");
        }
    }

    #[test]
    fn specials_stay_when_in_place() {
        let b = special_block(0x7ffd_0000_0000);
        assert_eq!(plan_special_moves(&b, &b).unwrap(), vec![]);
    }

    #[test]
    fn specials_move_through_a_temporary_place_vdso_last() {
        let child = special_block(0x7ffd_0000_0000);
        // Overlapping the child's block: a direct move could land on itself.
        let image = special_block(0x7ffd_0000_4000);
        let moves = plan_special_moves(&child, &image).unwrap();
        let temp = 0x1000_0000_0000;
        let m = |from, len, to, vdso| SpecialMove {
            from,
            len,
            to,
            vdso,
        };
        let c = 0x7ffd_0000_0000u64;
        let d = 0x7ffd_0000_4000u64;
        assert_eq!(
            moves,
            vec![
                m(c, 0x4000, temp, false),
                m(c + 0x4000, 0x2000, temp + 0x4000, false),
                m(c + 0x6000, 0x2000, temp + 0x6000, true),
                m(temp, 0x4000, d, false),
                m(temp + 0x4000, 0x2000, d + 0x4000, false),
                m(temp + 0x6000, 0x2000, d + 0x6000, true),
            ]
        );
        // A vdso below its vvar still moves last.
        let vdso_first = |base: u64| -> Vec<Special> {
            vec![
                (base, base + 0x2000, "[vdso]".into()),
                (base + 0x2000, base + 0x6000, "[vvar]".into()),
            ]
        };
        let moves = plan_special_moves(&vdso_first(c), &vdso_first(c + 0x2000)).unwrap();
        let vdso: Vec<bool> = moves.iter().map(|m| m.vdso).collect();
        assert_eq!(vdso, vec![false, true, false, true]);
        assert_eq!(moves[0], m(c + 0x2000, 0x4000, temp + 0x2000, false));
        assert_eq!(moves[3], m(temp, 0x2000, c + 0x2000, true));
        // Neither block may be used as the temporary place.
        let child = special_block(0x1000_0000_0000);
        let image = special_block(0x1000_0000_4000);
        let moves = plan_special_moves(&child, &image).unwrap();
        assert_eq!(moves[0].to, 0x2000_0000_0000);
    }

    #[test]
    fn specials_clear_of_each_other_move_straight_vdso_last() {
        let c = 0x7ffd_0000_0000u64;
        let d = 0x7f43_0000_0000u64;
        let moves = plan_special_moves(&special_block(c), &special_block(d)).unwrap();
        let m = |from, len, to, vdso| SpecialMove {
            from,
            len,
            to,
            vdso,
        };
        assert_eq!(
            moves,
            vec![
                m(c, 0x4000, d, false),
                m(c + 0x4000, 0x2000, d + 0x4000, false),
                m(c + 0x6000, 0x2000, d + 0x6000, true),
            ]
        );
        // Right next to each other, not overlapping: straight too.
        let moves = plan_special_moves(&special_block(c), &special_block(c + 0x8000)).unwrap();
        assert_eq!(moves.len(), 3);
    }

    #[test]
    fn specials_of_another_shape_are_refused() {
        let child = special_block(0x7ffd_0000_0000);
        let mut image = special_block(0x7ffe_0000_0000);
        image.pop();
        assert!(matches!(
            plan_special_moves(&child, &image),
            Err(Error::Unsupported { .. })
        ));
        assert!(plan_special_moves(&[], &[]).is_err());
    }

    #[test]
    fn unmap_everything_but_the_specials() {
        let image = vec![
            vma(0x40_0000, 0x41_0000, R | X, VmaKind::Anonymous),
            vma(0x7ffd_0000_0000, 0x7ffd_0000_4000, R, VmaKind::Vvar),
            vma(0x7ffd_0000_4000, 0x7ffd_0000_6000, R, VmaKind::VvarVclock),
            vma(0x7ffd_0000_6000, 0x7ffd_0000_8000, R | X, VmaKind::Vdso),
            vma(
                0x7ffd_1000_0000,
                0x7ffd_1000_1000,
                R | W,
                VmaKind::Anonymous,
            ),
        ];
        assert_eq!(
            unmap_ranges(&image),
            vec![
                (0, 0x7ffd_0000_0000),
                (0x7ffd_0000_8000, TASK_SIZE - 0x7ffd_0000_8000)
            ]
        );
        // Without specials (never in a valid image): the whole address space.
        assert_eq!(unmap_ranges(&image[..1]), vec![(0, TASK_SIZE)]);
    }

    #[test]
    fn kept_ranges_are_cut_out_of_the_unmap() {
        let all = [(0x1000, 0x9000), (0x20000, 0x1000)];
        assert_eq!(subtract(&all, &[]), all.to_vec());
        assert_eq!(
            subtract(
                &all,
                &[(0x3000, 0x4000), (0x1000, 0x2000), (0x8000, 0x30000)]
            ),
            vec![(0x2000, 0x1000), (0x4000, 0x4000)]
        );
    }

    #[test]
    fn scratch_avoids_mappings() {
        let vmas = vec![
            vma(0x1_0000_0000, 0x1_0001_0000, R | W, VmaKind::Anonymous),
            vma(0x1_0013_0000, 0x1_0020_0000, R | W, VmaKind::Anonymous),
        ];
        let a = free_scratch_address(&vmas, 0x10000).unwrap();
        for v in &vmas {
            // Clear of every mapping by a guard gap (a stack may grow down into it).
            assert!(!overlaps(
                (a, a + 0x10000 + PAGE_SIZE),
                (v.start - 256 * PAGE_SIZE, v.end + PAGE_SIZE)
            ));
        }
        assert_eq!(free_scratch_address(&[], 0x10000).unwrap(), 0x1_0000_0000);
        let full = vec![vma(0x1000, TASK_SIZE, R, VmaKind::Anonymous)];
        assert!(free_scratch_address(&full, 0x10000).is_err());
    }

    #[test]
    fn shared_memory_has_one_owner_per_object() {
        let shm = |start: u64, id: u64| Vma {
            shared: true,
            shmem_id: id,
            ..vma(start, start + 0x1000, R | W, VmaKind::Anonymous)
        };
        let tree = [
            (10, vec![shm(0x1000, 7), shm(0x5000, 7)]),
            (
                11,
                vec![
                    shm(0x1000, 7),
                    shm(0x9000, 8),
                    vma(0xa000, 0xb000, R, VmaKind::Anonymous),
                ],
            ),
        ];
        let owners = shmem_owners(tree.iter().map(|(pid, v)| (*pid, &v[..])));
        assert_eq!(owners.len(), 2);
        assert_eq!(owners[&7], (10, 0x1000, 0x2000));
        assert_eq!(owners[&8], (11, 0x9000, 0xa000));
    }

    #[test]
    fn mapping_plan() {
        let file = VmaKind::File {
            path: "/bin/x".into(),
            dev: 1,
            ino: 2,
            size: 0x3000,
        };
        let mut vmas = vec![
            vma(0x40_0000, 0x40_2000, R | X, file.clone()), // 0: text, clean
            Vma {
                file_offset: 0x2000,
                ..vma(0x40_2000, 0x40_3000, R, file) // 1: relro, written pages
            },
            vma(0x50_0000, 0x50_4000, R | W, VmaKind::Anonymous), // 2: heap, pages
            vma(0x60_0000, 0x60_1000, 0, VmaKind::Anonymous),     // 3: PROT_NONE, pages
            Vma {
                shared: true,
                shmem_id: 9,
                ..vma(0x70_0000, 0x70_1000, R | W, VmaKind::Anonymous) // 4: shm owner
            },
            Vma {
                shared: true,
                shmem_id: 9,
                ..vma(0x71_0000, 0x71_1000, R, VmaKind::Anonymous) // 5: later shm view
            },
            vma(0x7ffd_0000_6000, 0x7ffd_0000_8000, R | X, VmaKind::Vdso), // 6
            Vma {
                growsdown: true,
                ..vma(
                    0x7ffe_0000_0000,
                    0x7ffe_0002_0000,
                    R | W,
                    VmaKind::Anonymous,
                ) // 7: stack
            },
        ];
        vmas[7].name = "[stack]".into();
        let runs = [
            run(0x40_2000, 1),
            run(0x50_0000, 2),
            run(0x50_3000, 1),
            run(0x60_0000, 1),
            run(0x7ffe_0001_f000, 1),
        ];
        let fds = HashMap::from([(0, 100), (1, 100)]);
        let owners = ShmemOwners::from([(9, (42, 0x70_0000, 0x70_1000))]);
        let plan = plan_mappings(42, &vmas, &runs, &fds, &owners).unwrap();
        let fixed = libc::MAP_FIXED_NOREPLACE;
        let (private, shared, anon) = (libc::MAP_PRIVATE, libc::MAP_SHARED, libc::MAP_ANONYMOUS);
        let got: Vec<(u64, u32, i32, MapFrom, u64)> = plan
            .into_iter()
            .map(|c| (c.start, c.prot, c.flags, c.from, c.offset))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x40_0000, R | X, fixed | private, MapFrom::Fd(100), 0),
                (0x40_2000, R | W, fixed | private, MapFrom::Fd(100), 0x2000),
                (
                    0x50_0000,
                    R | W,
                    fixed | private | anon,
                    MapFrom::Anonymous,
                    0
                ),
                (
                    0x60_0000,
                    R | W,
                    fixed | private | anon,
                    MapFrom::Anonymous,
                    0
                ),
                (
                    0x70_0000,
                    R | W,
                    fixed | shared | anon,
                    MapFrom::Anonymous,
                    0
                ),
                (
                    0x71_0000,
                    R,
                    fixed | shared,
                    MapFrom::Shared {
                        path: "/proc/42/map_files/700000-701000".into(),
                        write: false
                    },
                    0
                ),
                (
                    0x7ffe_0000_0000,
                    R | W,
                    fixed | private | anon | libc::MAP_GROWSDOWN,
                    MapFrom::Anonymous,
                    0
                ),
            ]
        );
        // In another process of the tree the owner's mapping is opened, with write access.
        let plan = plan_mappings(43, &vmas, &runs, &fds, &owners).unwrap();
        assert_eq!(
            plan[4].from,
            MapFrom::Shared {
                path: "/proc/42/map_files/700000-701000".into(),
                write: true
            }
        );
        assert_eq!(plan[4].flags, fixed | shared);
        // Only the mappings made writable to be filled get an mprotect back.
        assert_eq!(
            final_protections(&vmas, &runs),
            vec![(0x40_2000, 0x1000, R), (0x60_0000, 0x1000, 0)]
        );
        // A file mapping without an opened file is an error, not a guess.
        assert!(plan_mappings(42, &vmas, &runs, &HashMap::new(), &owners).is_err());
    }
}
