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

pub mod layout;
pub mod vma;

pub use self::layout::{
    finish_protections, free_scratch_address, map_vmas, move_specials, unmap_all_but_specials,
    ShmemOwners,
};
pub use self::vma::collect_vmas;

use self::vma::is_special;
use crate::procfs;
use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RawReader, RawWriter, Vma, VmaKind};
use stasis_sys::{proc_mem, Pid};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

/// Pages handled per batch: 2 MiB, the size process_vm_readv is fastest with.
const BATCH_PAGES: u64 = 512;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE_OR_SHARED: u64 = 1 << 61;

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
}
