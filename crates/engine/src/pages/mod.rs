//! Memory: the list of mappings and the contents of their pages.
//!
//! Dump: mappings come from /proc/PID/smaps; pages that hold data are found with
//! /proc/PID/pagemap (present or swapped; for private file mappings only the pages the process
//! changed, since clean ones come back from the file), read with process_vm_readv (or
//! /proc/PID/mem for mappings without PROT_READ), and streamed into the pages file in runs of at
//! most 2 MiB; all-zero pages are not stored. Shared anonymous memory is read through
//! /proc/PID/map_files with SEEK_DATA so untouched pages are neither read nor allocated.
//!
//! Restore: inside the new process (see [`crate::inject`]) the kernel's special mappings
//! (`[vvar]`, `[vvar_vclock]`, `[vdso]`) are moved to their dumped addresses with mremap,
//! everything else is unmapped, each mapping is recreated at its address (writable while it is
//! filled), pages are written with process_vm_writev, and final protections are applied.

use crate::inject::Injector;
use crate::procfs::{self, MapEntry};
use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RawReader, RawWriter, Vma, VmaKind};
use stasis_sys::{proc_mem, Pid};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Pages handled per batch: 2 MiB, the size process_vm_readv is fastest with.
const BATCH_PAGES: u64 = 512;
/// Highest user address (4-level paging).
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE_OR_SHARED: u64 = 1 << 61;

fn is_special(kind: &VmaKind) -> bool {
    matches!(
        kind,
        VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
    )
}

/// Reads the mappings of `pid` and classifies them. Mappings stasis cannot restore yet make
/// this fail with an error naming them.
pub fn collect_vmas(pid: Pid) -> Result<Vec<Vma>, Error> {
    let maps = procfs::read_smaps(pid)?;
    maps.iter().map(|m| classify(pid, m)).collect()
}

fn classify(pid: Pid, m: &MapEntry) -> Result<Vma, Error> {
    let prot = ((m.read as u32) * libc::PROT_READ as u32)
        | ((m.write as u32) * libc::PROT_WRITE as u32)
        | ((m.exec as u32) * libc::PROT_EXEC as u32);
    let unsupported = |why: &str| Error::Unsupported {
        what: format!("mapping {:#x}-{:#x} {:?}: {why}", m.start, m.end, m.name),
    };
    let kind = match m.name.as_str() {
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => VmaKind::Vsyscall,
        "" | "[heap]" | "[stack]" => VmaKind::Anonymous,
        n if n.starts_with("[anon:") => VmaKind::Anonymous,
        n if m.shared
            && n.starts_with("/dev/zero")
            && m.inode != 0
            && n.ends_with(" (deleted)") =>
        {
            VmaKind::Anonymous
        }
        n if crate::files::memfd::is_memfd_name(n) => crate::files::memfd::mapping_kind(pid, m)?,
        n if n.ends_with(" (deleted)") => return Err(unsupported("the mapped file was deleted")),
        n if n.starts_with('/') => {
            let link = procfs::map_file(pid, m.start, m.end);
            let md = std::fs::metadata(&link).map_err(|e| Error::io(format!("stat {link}"), e))?;
            if !md.is_file() {
                return Err(unsupported("only regular files can be mapped"));
            }
            // The path must still name the same file, or restore would map another one.
            let by_path = std::fs::metadata(n).map_err(|e| Error::io(format!("stat {n}"), e))?;
            if (by_path.dev(), by_path.ino()) != (md.dev(), md.ino()) {
                return Err(unsupported("the path now names another file"));
            }
            VmaKind::File {
                path: n.to_string(),
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
            }
        }
        _ => return Err(unsupported("unknown special mapping")),
    };
    Ok(Vma {
        start: m.start,
        end: m.end,
        prot,
        shared: m.shared,
        growsdown: m.has_flag("gd"),
        file_offset: m.offset,
        shmem_id: if m.shared && kind == VmaKind::Anonymous {
            m.inode
        } else {
            0
        },
        kind,
        name: m.name.clone(),
    })
}

/// Streams the page contents of every mapping into `out` and returns the runs written. Shared
/// anonymous memory is stored once, with the first mapping of it in the tree: `shmem_done`
/// holds the objects already stored.
pub fn dump_pages(
    pid: Pid,
    vmas: &[Vma],
    out: &mut RawWriter,
    shmem_done: &mut std::collections::HashSet<u64>,
) -> Result<Vec<PageRun>, Error> {
    let pagemap_path = format!("/proc/{pid}/pagemap");
    let pagemap = std::fs::File::open(&pagemap_path)
        .map_err(|e| Error::io(format!("open {pagemap_path}"), e))?;
    let mem_path = format!("/proc/{pid}/mem");
    let mem =
        std::fs::File::open(&mem_path).map_err(|e| Error::io(format!("open {mem_path}"), e))?;
    let mut buf = vec![0u8; (BATCH_PAGES * PAGE_SIZE) as usize];
    let mut runs = Vec::new();
    for v in vmas {
        match (&v.kind, v.shared) {
            (k, _) if is_special(k) => {}
            (VmaKind::File { .. } | VmaKind::Memfd { .. }, true) => {} // the file holds the data
            (VmaKind::Anonymous, true) if shmem_done.insert(v.shmem_id) => {
                dump_shmem(pid, v, &mut buf, out, &mut runs)?
            }
            (VmaKind::Anonymous, true) => {}
            (kind, false) => {
                let skip_file_pages = matches!(kind, VmaKind::File { .. } | VmaKind::Memfd { .. });
                dump_private(
                    pid,
                    v,
                    skip_file_pages,
                    &pagemap,
                    &mem,
                    &mut buf,
                    out,
                    &mut runs,
                )?
            }
            _ => {}
        }
    }
    Ok(runs)
}

#[allow(clippy::too_many_arguments)]
fn dump_private(
    pid: Pid,
    v: &Vma,
    skip_file_pages: bool,
    pagemap: &std::fs::File,
    mem: &std::fs::File,
    buf: &mut [u8],
    out: &mut RawWriter,
    runs: &mut Vec<PageRun>,
) -> Result<(), Error> {
    let mut entries = vec![0u8; (BATCH_PAGES * 8) as usize];
    let mut addr = v.start;
    while addr < v.end {
        let npages = ((v.end - addr) / PAGE_SIZE).min(BATCH_PAGES);
        let ent = &mut entries[..(npages * 8) as usize];
        pagemap
            .read_exact_at(ent, addr / PAGE_SIZE * 8)
            .map_err(|e| Error::io(format!("read pagemap of {pid} at {addr:#x}"), e))?;
        let wanted = |i: u64| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&ent[(i * 8) as usize..(i * 8 + 8) as usize]);
            let e = u64::from_le_bytes(w);
            let has_data = e & (PM_PRESENT | PM_SWAPPED) != 0;
            has_data && !(skip_file_pages && e & PM_FILE_OR_SHARED != 0 && e & PM_SWAPPED == 0)
        };
        // Read maximal stretches of wanted pages, then keep their non-zero pages.
        let mut i = 0;
        while i < npages {
            if !wanted(i) {
                i += 1;
                continue;
            }
            let first = i;
            while i < npages && wanted(i) {
                i += 1;
            }
            let at = addr + first * PAGE_SIZE;
            let data = &mut buf[..((i - first) * PAGE_SIZE) as usize];
            if v.prot & libc::PROT_READ as u32 != 0 {
                proc_mem::read_exact(pid, at, data)
                    .map_err(|e| Error::sys("process_vm_readv", pid, e))?;
            } else {
                mem.read_exact_at(data, at)
                    .map_err(|e| Error::io(format!("read /proc/{pid}/mem at {at:#x}"), e))?;
            }
            emit_nonzero(at, data, out, runs)?;
        }
        addr += npages * PAGE_SIZE;
    }
    Ok(())
}

/// Shared anonymous memory: read the backing object directly, skipping holes.
fn dump_shmem(
    pid: Pid,
    v: &Vma,
    buf: &mut [u8],
    out: &mut RawWriter,
    runs: &mut Vec<PageRun>,
) -> Result<(), Error> {
    let link = procfs::map_file(pid, v.start, v.end);
    let file = std::fs::File::open(&link).map_err(|e| Error::io(format!("open {link}"), e))?;
    let (lo, hi) = (v.file_offset, v.file_offset + (v.end - v.start));
    let mut off = lo;
    while off < hi {
        let Some(data_at) = stasis_sys::process::seek_data(file.as_fd(), off)
            .map_err(|e| Error::io(format!("SEEK_DATA in {link}"), e))?
        else {
            break;
        };
        if data_at >= hi {
            break;
        }
        let data_at = data_at / PAGE_SIZE * PAGE_SIZE;
        let hole = stasis_sys::process::seek_hole(file.as_fd(), data_at)
            .map_err(|e| Error::io(format!("SEEK_HOLE in {link}"), e))?;
        let end = hole.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE).min(hi);
        let mut at = data_at;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            let data = &mut buf[..n];
            file.read_exact_at(data, at)
                .map_err(|e| Error::io(format!("read {link} at {at:#x}"), e))?;
            emit_nonzero(v.start + (at - lo), data, out, runs)?;
            at += n as u64;
        }
        off = end.max(off + PAGE_SIZE);
    }
    Ok(())
}

fn is_zero_page(p: &[u8]) -> bool {
    p.chunks_exact(8).fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
    }) == 0
}

/// Writes the non-zero pages of `data` (which starts at `addr`) as runs.
fn emit_nonzero(
    addr: u64,
    data: &[u8],
    out: &mut RawWriter,
    runs: &mut Vec<PageRun>,
) -> Result<(), Error> {
    let pages: Vec<&[u8]> = data.chunks_exact(PAGE_SIZE as usize).collect();
    let mut i = 0;
    while i < pages.len() {
        if is_zero_page(pages[i]) {
            i += 1;
            continue;
        }
        let first = i;
        while i < pages.len() && !is_zero_page(pages[i]) {
            i += 1;
        }
        let bytes = &data[first * PAGE_SIZE as usize..i * PAGE_SIZE as usize];
        let offset = out.position();
        out.write(bytes)?;
        runs.push(PageRun {
            addr: addr + first as u64 * PAGE_SIZE,
            npages: (i - first) as u64,
            offset,
            crc: crc32c::crc32c(bytes),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Restore

/// The special mappings of a layout, in address order, without `[vsyscall]` (which is fixed).
fn specials(vmas: impl Iterator<Item = (u64, u64, String)>) -> Vec<(u64, u64, String)> {
    let mut s: Vec<_> = vmas
        .filter(|(_, _, n)| n == "[vdso]" || n == "[vvar]" || n == "[vvar_vclock]")
        .collect();
    s.sort();
    s
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Moves the child's `[vvar]`, `[vvar_vclock]` and `[vdso]` to the addresses they had in the
/// dumped process (via a temporary place when the two layouts overlap), updating the
/// injector's syscall address as the vdso moves. `vdso_offset` is the syscall instruction's
/// offset in the vdso.
pub fn move_specials(inj: &mut Injector, image: &[Vma], vdso_offset: u64) -> Result<(), Error> {
    let child = specials(
        procfs::read_smaps(inj.tid())?
            .into_iter()
            .map(|m| (m.start, m.end, m.name)),
    );
    let target = specials(
        image
            .iter()
            .filter(|v| is_special(&v.kind))
            .map(|v| (v.start, v.end, v.name.clone())),
    );
    let shape = |s: &[(u64, u64, String)]| -> Vec<(u64, u64, String)> {
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
    let block = |s: &[(u64, u64, String)]| (s[0].0, s[s.len() - 1].1);
    let (cur_block, dst_block) = (block(&child), block(&target));
    if cur_block == dst_block {
        return Ok(());
    }
    let span = cur_block.1 - cur_block.0;
    let temp = [0x1000_0000_0000u64, 0x2000_0000_0000, 0x3000_0000_0000]
        .into_iter()
        .find(|&t| !overlaps((t, t + span), cur_block) && !overlaps((t, t + span), dst_block))
        .ok_or_else(|| Error::Invalid("no temporary place to move the vdso through".into()))?;
    let mut from = cur_block.0;
    for to in [temp, dst_block.0] {
        // The vdso moves last: its syscall instruction runs every mremap.
        let mut order: Vec<&(u64, u64, String)> = child.iter().collect();
        order.sort_by_key(|(_, _, n)| n == "[vdso]");
        for (a, b, name) in order {
            let (old, len) = (from + (a - cur_block.0), b - a);
            let new = to + (a - cur_block.0);
            inj.call(
                "mremap(special mapping)",
                libc::SYS_mremap,
                [
                    old,
                    len,
                    len,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    new,
                    0,
                ],
            )?;
            if name == "[vdso]" {
                inj.set_syscall_ip(new + vdso_offset);
            }
        }
        from = to;
    }
    Ok(())
}

/// Unmaps everything in the child except the special mappings of the image's layout.
pub fn unmap_all_but_specials(inj: &mut Injector, image: &[Vma]) -> Result<(), Error> {
    let keep = specials(
        image
            .iter()
            .filter(|v| is_special(&v.kind))
            .map(|v| (v.start, v.end, v.name.clone())),
    );
    let mut from = 0u64;
    for (a, b, _) in keep
        .iter()
        .map(|(a, b, n)| (*a, *b, n))
        .chain(std::iter::once((TASK_SIZE, TASK_SIZE, &String::new())))
    {
        if a > from {
            inj.call("munmap", libc::SYS_munmap, [from, a - from, 0, 0, 0, 0])?;
        }
        from = from.max(b);
    }
    Ok(())
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

/// Indices of the mappings that receive pages from the image.
fn with_pages(vmas: &[Vma], runs: &[PageRun]) -> Vec<bool> {
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

/// Recreates every non-special mapping. `file_fds` maps a mapping index to the descriptor
/// number, in the child, of the file to map.
/// Shared anonymous memory objects of a restored tree: for each, the process and mapping that
/// creates it; every later mapping of it opens that mapping's /proc/PID/map_files entry.
pub type ShmemOwners = HashMap<u64, (Pid, u64, u64)>;

pub fn map_vmas(
    inj: &mut Injector,
    vmas: &[Vma],
    runs: &[PageRun],
    file_fds: &HashMap<usize, i32>,
    shmem: &ShmemOwners,
) -> Result<(), Error> {
    let filled = with_pages(vmas, runs);
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
        let mut opened_here = None;
        let fd = match (&v.kind, owner) {
            (VmaKind::File { .. } | VmaKind::Memfd { .. }, _) => {
                *file_fds.get(&i).ok_or_else(|| {
                    Error::Invalid(format!("no file opened for mapping {:#x}", v.start))
                })? as u64
            }
            (_, Some((pid, start, end))) if (pid, start) != (inj.tid(), v.start) => {
                // A later mapping of shared memory that already exists in the tree.
                let path = format!("{}\0", procfs::map_file(pid, start, end));
                let at = inj.put(2048, path.as_bytes())?;
                let access = if v.prot & libc::PROT_WRITE as u32 != 0 {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                let fd = inj.call(
                    "open(shared memory)",
                    libc::SYS_open,
                    [at, access as u64, 0, 0, 0, 0],
                )?;
                opened_here = Some(fd);
                fd
            }
            _ => {
                flags |= libc::MAP_ANONYMOUS;
                u64::MAX
            }
        };
        let got = inj.call(
            "mmap",
            libc::SYS_mmap,
            [
                v.start,
                v.end - v.start,
                prot as u64,
                flags as u64,
                fd,
                v.file_offset,
            ],
        )?;
        if got != v.start {
            return Err(Error::Invalid(format!(
                "mapping {:#x} landed at {got:#x}",
                v.start
            )));
        }
        if let Some(fd) = opened_here {
            inj.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
    }
    Ok(())
}

/// Writes every page run into the child, checking each run's CRC.
pub fn fill_pages(pid: Pid, runs: &[PageRun], pages: &RawReader) -> Result<(), Error> {
    let mut buf = Vec::new();
    for r in runs {
        let len = (r.npages * PAGE_SIZE) as usize;
        buf.resize(len, 0);
        pages.read_extent(r.offset, &mut buf, r.crc)?;
        proc_mem::write_all(pid, r.addr, &buf)
            .map_err(|e| Error::sys("process_vm_writev", pid, e))?;
    }
    Ok(())
}

/// Applies the final protections to the mappings that were made writable to be filled.
pub fn finish_protections(inj: &mut Injector, vmas: &[Vma], runs: &[PageRun]) -> Result<(), Error> {
    let filled = with_pages(vmas, runs);
    for (i, v) in vmas.iter().enumerate() {
        let mapped = v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32;
        if filled[i] && mapped != v.prot {
            inj.call(
                "mprotect",
                libc::SYS_mprotect,
                [v.start, v.end - v.start, v.prot as u64, 0, 0, 0],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages() {
        let mut p = vec![0u8; 4096];
        assert!(is_zero_page(&p));
        p[4095] = 1;
        assert!(!is_zero_page(&p));
    }

    #[test]
    fn scratch_avoids_mappings() {
        let v = |s, e| Vma {
            shmem_id: 0,
            start: s,
            end: e,
            prot: 3,
            shared: false,
            growsdown: false,
            file_offset: 0,
            kind: VmaKind::Anonymous,
            name: String::new(),
        };
        let vmas = vec![v(0x1_0000_0000, 0x1_0001_0000)];
        let a = free_scratch_address(&vmas, 0x10000).unwrap();
        assert!(!overlaps((a, a + 0x10000), (0x1_0000_0000, 0x1_0001_0000)));
    }
}
