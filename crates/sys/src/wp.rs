//! Write tracking of another process's memory: userfaultfd in asynchronous write-protect mode
//! (`UFFD_FEATURE_WP_ASYNC`) and the `PAGEMAP_SCAN` ioctl of /proc/PID/pagemap.
//!
//! The userfaultfd is created inside the tracked process (an injected system call) and taken
//! with pidfd_getfd; every call here works on it from outside. Once a range is registered and
//! write-protected, a write by the process clears the protection of the page it writes (no
//! fault reaches anybody: asynchronous mode), and `PAGEMAP_SCAN` with `PAGE_IS_WRITTEN` lists
//! exactly those pages, re-protecting them when asked (`PM_SCAN_WP_MATCHING`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `UFFD_API`: the API version UFFDIO_API asks for.
const UFFD_API: u64 = 0xaa;
/// Features (include/uapi/linux/userfaultfd.h).
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `UFFD_USER_MODE_ONLY`: a userfaultfd() flag (faults from kernel mode are not caught).
pub const UFFD_USER_MODE_ONLY: u32 = 1;

const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xc018_aa06;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;

/// Page categories of `PAGEMAP_SCAN` (include/uapi/linux/fs.h).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// Scan flags.
pub const PM_SCAN_WP_MATCHING: u64 = 1;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 2;

/// userfaultfd(flags) in this process (the engine injects the same call into a target).
pub fn userfaultfd(flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd takes one integer and returns a new descriptor or -1.
    let fd = crate::cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, flags as libc::c_long) })?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// One region of pages with the same categories, as `PAGEMAP_SCAN` returns them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

fn ioctl<T>(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request passed here reads and writes exactly one `T`, the #[repr(C)]
    // structure the kernel defines for it, which `arg` points to for the whole call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// UFFDIO_API on a fresh userfaultfd, asking for `features`; returns the features the kernel
/// has (an error when one asked for is missing).
pub fn uffd_api(uffd: BorrowedFd<'_>, features: u64) -> io::Result<u64> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    ioctl(uffd, UFFDIO_API, &mut api)?;
    Ok(api.features)
}

/// Registers `start..start+len` of the userfaultfd's process for write-protect tracking.
pub fn uffd_register_wp(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut reg = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    ioctl(uffd, UFFDIO_REGISTER, &mut reg)
}

/// Ends the registration of `start..start+len` (write protection of its pages included).
pub fn uffd_unregister(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut range = UffdioRange { start, len };
    ioctl(uffd, UFFDIO_UNREGISTER, &mut range)
}

/// Write-protects (`protect`) or unprotects a registered range.
pub fn uffd_writeprotect(
    uffd: BorrowedFd<'_>,
    start: u64,
    len: u64,
    protect: bool,
) -> io::Result<()> {
    let mut wp = UffdioWriteprotect {
        range: UffdioRange { start, len },
        mode: if protect {
            UFFDIO_WRITEPROTECT_MODE_WP
        } else {
            0
        },
    };
    ioctl(uffd, UFFDIO_WRITEPROTECT, &mut wp)
}

/// A pagemap entry's swap type and offset bits (0-54: readable only with CAP_SYS_ADMIN).
pub const PM_SWAP_BITS: u64 = (1 << 55) - 1;

/// The swap bits ([`PM_SWAP_BITS`]) of the pagemap entry of an empty page that asynchronous
/// write protection marked: such a marker reads as a swapped page (bit 62) in the pagemap,
/// and only these bits tell it from a page that was really swapped out (or is migrating).
/// Learned once from a page of this process (mapped, registered, protected, read back,
/// unmapped). `None` when the kernel has no such markers or hides the bits (no
/// CAP_SYS_ADMIN): a marker then cannot be told from a swapped page.
pub fn wp_marker_swap_bits() -> Option<u64> {
    static BITS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *BITS.get_or_init(|| probe_wp_marker().ok().flatten())
}

fn probe_wp_marker() -> io::Result<Option<u64>> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    let uffd = userfaultfd(UFFD_USER_MODE_ONLY | libc::O_CLOEXEC as u32)?;
    uffd_api(uffd.as_fd(), UFFD_FEATURE_WP_ASYNC)?;
    let len = page_size();
    let page = AnonPages::map(len)?;
    let start = page.addr();
    let entry = (|| {
        uffd_register_wp(uffd.as_fd(), start, len as u64)?;
        uffd_writeprotect(uffd.as_fd(), start, len as u64, true)?;
        let mut e = [0u8; 8];
        std::fs::File::open("/proc/self/pagemap")?.read_exact_at(&mut e, start / len as u64 * 8)?;
        Ok::<u64, io::Error>(u64::from_le_bytes(e))
    })();
    drop(page);
    let entry = entry?;
    let swapped = entry & (1 << 62) != 0;
    Ok((swapped && entry & PM_SWAP_BITS != 0).then_some(entry & PM_SWAP_BITS))
}

/// A private anonymous mapping of our own, unmapped when dropped (for the probes and tests).
struct AnonPages {
    ptr: *mut libc::c_void,
    len: usize,
}

impl AnonPages {
    fn map(len: usize) -> io::Result<AnonPages> {
        // SAFETY: a fresh private anonymous mapping anywhere: it replaces nothing; it is
        // unmapped only by Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(AnonPages { ptr, len })
    }

    fn addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for AnonPages {
    fn drop(&mut self) {
        // SAFETY: unmaps our own mapping; whoever borrowed its bytes is gone with `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

/// What one [`pagemap_scan`] asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanQuery {
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// Pages must have all of these categories (those also in `category_inverted`: must
    /// lack them)...
    pub category_mask: u64,
    /// Categories of `category_mask` that must be absent.
    pub category_inverted: u64,
    /// ...or any of these (0: no such condition).
    pub category_anyof_mask: u64,
    /// Categories reported in the regions.
    pub return_mask: u64,
}

/// `PAGEMAP_SCAN` over `start..end` of the process of `pagemap` (its /proc/PID/pagemap),
/// appending matching regions to `out` (at most `max_regions` in one call). Returns where the
/// walk stopped: `end`, or earlier when `out` filled up (call again from there).
pub fn pagemap_scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    query: ScanQuery,
    out: &mut Vec<PageRegion>,
    max_regions: usize,
) -> io::Result<u64> {
    let have = out.len();
    out.resize(have + max_regions, PageRegion::default());
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: query.flags,
        start,
        end,
        walk_end: 0,
        vec: out[have..].as_mut_ptr() as u64,
        vec_len: max_regions as u64,
        max_pages: 0,
        category_inverted: query.category_inverted,
        category_mask: query.category_mask,
        category_anyof_mask: query.category_anyof_mask,
        return_mask: query.return_mask,
    };
    // SAFETY: `arg.vec` points to `max_regions` writable PageRegions of `out` (resized above,
    // not touched during the call); the kernel writes at most `vec_len` of them and returns
    // how many.
    let r = unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN,
            &mut arg as *mut PmScanArg,
        )
    };
    if r < 0 {
        out.truncate(have);
        return Err(io::Error::last_os_error());
    }
    out.truncate(have + r as usize);
    Ok(arg.walk_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_sizes_match_the_ioctl_numbers() {
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
        assert_eq!(std::mem::size_of::<UffdioWriteprotect>(), 24);
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
        assert_eq!((UFFDIO_API >> 16) & 0x3fff, 24);
        assert_eq!((PAGEMAP_SCAN >> 16) & 0x3fff, 96);
    }

    /// As root, the marker of a protected empty page is found, and it is not an entry a
    /// swapped page could have (a swap type beyond the swap files').
    #[test]
    fn the_write_protect_marker_is_learned() {
        let bits = wp_marker_swap_bits().expect("no marker learned (run as root)");
        // Type: the low 5 bits; the kernel reserves the highest types for its own entries.
        assert!(bits & 0x1f >= 24, "{bits:#x}");
    }

    /// Tracks writes to a mapping of this very process: exactly the pages written are
    /// reported, once.
    #[test]
    fn reports_exactly_the_written_pages() {
        use std::os::fd::AsFd;
        const PG: usize = 4096;
        let len = 16 * PG;
        let pages = AnonPages::map(len).unwrap();
        let p = pages.ptr as *mut u8;
        // SAFETY: `p` is `len` writable bytes, mapped as long as `pages` lives.
        let mem = unsafe { std::slice::from_raw_parts_mut(p, len) };
        mem.fill(1);
        let uffd = userfaultfd(UFFD_USER_MODE_ONLY | libc::O_CLOEXEC as u32).unwrap();
        uffd_api(uffd.as_fd(), UFFD_FEATURE_WP_ASYNC).unwrap();
        let start = p as u64;
        uffd_register_wp(uffd.as_fd(), start, len as u64).unwrap();
        uffd_writeprotect(uffd.as_fd(), start, len as u64, true).unwrap();
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let q = ScanQuery {
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..Default::default()
        };
        let mut out = Vec::new();
        pagemap_scan(pagemap.as_fd(), start, start + len as u64, q, &mut out, 64).unwrap();
        assert!(out.is_empty(), "{out:?}");
        mem[3 * PG] = 7;
        mem[7 * PG + 5] = 7;
        mem[8 * PG] = 7;
        let end =
            pagemap_scan(pagemap.as_fd(), start, start + len as u64, q, &mut out, 64).unwrap();
        assert_eq!(end, start + len as u64);
        let pages: Vec<(u64, u64)> = out
            .iter()
            .map(|r| ((r.start - start) / PG as u64, (r.end - start) / PG as u64))
            .collect();
        assert_eq!(pages, vec![(3, 4), (7, 9)]);
        out.clear();
        // Re-protected by the scan: nothing is written now.
        pagemap_scan(pagemap.as_fd(), start, start + len as u64, q, &mut out, 64).unwrap();
        assert!(out.is_empty(), "{out:?}");
        drop(uffd);
        drop(pages);
    }
}
