//! userfaultfd(2) in MISSING mode, used from outside the process it belongs to: the handshake
//! (UFFDIO_API), registration of ranges, and the calls of a page server (UFFDIO_COPY,
//! UFFDIO_ZEROPAGE, UFFDIO_WAKE) and its messages (page faults, fork, mremap, madvise
//! removals, munmap).
//!
//! The descriptor is made inside the target (an injected `userfaultfd()`) and taken with
//! pidfd_getfd: it belongs to the target's mm whichever process holds it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `UFFD_API`: the API version of the handshake.
const UFFD_API: u64 = 0xaa;

/// Report page faults on missing pages (`UFFDIO_REGISTER_MODE_MISSING`).
const MODE_MISSING: u64 = 1;

/// The optional features a page server asks for (`UFFD_FEATURE_*`).
pub mod feature {
    /// A child forked by the process gets its own userfaultfd, handed over in a fork event.
    pub const EVENT_FORK: u64 = 1 << 1;
    /// mremap of a registered range is reported (and the range stays registered).
    pub const EVENT_REMAP: u64 = 1 << 2;
    /// madvise(MADV_DONTNEED / MADV_REMOVE) of a registered range is reported.
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// munmap of a registered range is reported.
    pub const EVENT_UNMAP: u64 = 1 << 6;
}

const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xaa << 8) | nr
}

const fn ior(nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | (0xaa << 8) | nr
}

const UFFDIO_API: u64 = iowr(0x3f, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);
const UFFDIO_WAKE: u64 = ior(0x02, 16);
const UFFDIO_COPY: u64 = iowr(0x03, 40);
const UFFDIO_ZEROPAGE: u64 = iowr(0x04, 32);

#[repr(C)]
struct ApiArg {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct RegisterArg {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct CopyArg {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct ZeropageArg {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

/// What a UFFDIO_COPY or UFFDIO_ZEROPAGE did: how many bytes are in place, and the error that
/// stopped it before the end (EEXIST: a page was already there; EAGAIN: the layout is changing,
/// read the pending events first; ESRCH: the process's memory is gone).
#[derive(Debug)]
pub struct Filled {
    pub bytes: u64,
    pub error: Option<io::Error>,
}

/// A message read from a userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A thread touched the missing page at `addr` (page aligned); `write` for a write access.
    PageFault { addr: u64, write: bool },
    /// The process forked: the child's memory is reported on `uffd`.
    Fork { uffd: OwnedFd },
    /// The range `from..from + len` moved to `to` (mremap).
    Remap { from: u64, to: u64, len: u64 },
    /// The pages of `start..end` were dropped (madvise MADV_DONTNEED or MADV_REMOVE).
    Remove { start: u64, end: u64 },
    /// `start..end` was unmapped.
    Unmap { start: u64, end: u64 },
    /// A message of a kind this wrapper does not know.
    Other(u8),
}

/// A userfaultfd, held by whichever process serves its pages.
#[derive(Debug)]
pub struct Userfaultfd(OwnedFd);

impl Userfaultfd {
    /// Wraps a descriptor that is a userfaultfd (taken from the target with pidfd_getfd).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Userfaultfd(fd)
    }

    /// Another descriptor of the same userfaultfd (a process holding one keeps the ranges
    /// registered, and threads waiting for pages waiting, when the other is closed).
    pub fn try_clone(&self) -> io::Result<Userfaultfd> {
        Ok(Userfaultfd(self.0.try_clone()?))
    }

    /// UFFDIO_API: the handshake, asking for `features`. Returns the features the kernel
    /// offers (all of those asked for, or an error).
    pub fn api(&self, features: u64) -> io::Result<u64> {
        let mut arg = ApiArg {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_API, &mut arg as *mut ApiArg as *mut libc::c_void)?;
        Ok(arg.features)
    }

    /// UFFDIO_REGISTER of `start..start + len` in MISSING mode.
    pub fn register_missing(&self, start: u64, len: u64) -> io::Result<()> {
        let mut arg = RegisterArg {
            start,
            len,
            mode: MODE_MISSING,
            ioctls: 0,
        };
        self.ioctl(
            UFFDIO_REGISTER,
            &mut arg as *mut RegisterArg as *mut libc::c_void,
        )
    }

    /// UFFDIO_COPY of `data` to `dst` (page aligned, whole pages), waking the threads that
    /// wait for the range.
    pub fn copy(&self, dst: u64, data: &[u8]) -> Filled {
        let mut arg = CopyArg {
            dst,
            src: data.as_ptr() as u64,
            len: data.len() as u64,
            mode: 0,
            copy: 0,
        };
        let r = self.ioctl(UFFDIO_COPY, &mut arg as *mut CopyArg as *mut libc::c_void);
        filled(r, arg.copy)
    }

    /// UFFDIO_ZEROPAGE of `start..start + len`, waking the threads that wait for it.
    pub fn zeropage(&self, start: u64, len: u64) -> Filled {
        let mut arg = ZeropageArg {
            start,
            len,
            mode: 0,
            zeropage: 0,
        };
        let r = self.ioctl(
            UFFDIO_ZEROPAGE,
            &mut arg as *mut ZeropageArg as *mut libc::c_void,
        );
        filled(r, arg.zeropage)
    }

    /// UFFDIO_WAKE of `start..start + len`: threads waiting for pages that arrived otherwise
    /// retry their fault.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut arg = [start, len];
        self.ioctl(UFFDIO_WAKE, arg.as_mut_ptr() as *mut libc::c_void)
    }

    /// Reads the pending messages (the descriptor is non-blocking): empty when none is.
    pub fn read_events(&self) -> io::Result<Vec<Event>> {
        let mut buf = [0u8; 32 * 16];
        let n = match rustix::io::read(self.0.as_fd(), &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(n / 32);
        for m in buf[..n - n % 32].chunks_exact(32) {
            let word = |at: usize| u64::from_ne_bytes(m[at..at + 8].try_into().unwrap_or([0u8; 8]));
            out.push(match m[0] {
                0x12 => Event::PageFault {
                    addr: word(16) & !4095,
                    write: word(8) & 1 != 0,
                },
                0x13 => {
                    let fd = word(8) as u32 as i32;
                    // SAFETY: the kernel installed `fd` in our table for this message; nothing
                    // else owns it.
                    let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
                    Event::Fork { uffd }
                }
                0x14 => Event::Remap {
                    from: word(8),
                    to: word(16),
                    len: word(24),
                },
                0x15 => Event::Remove {
                    start: word(8),
                    end: word(16),
                },
                0x16 => Event::Unmap {
                    start: word(8),
                    end: word(16),
                },
                other => Event::Other(other),
            });
        }
        Ok(out)
    }

    fn ioctl(&self, request: u64, arg: *mut libc::c_void) -> io::Result<()> {
        // SAFETY: every caller passes the argument structure of `request`, laid out as the
        // kernel's (repr(C)), alive for the call; UFFDIO_COPY's source buffer is a slice the
        // caller borrows for the call.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, arg) };
        crate::cvt_int(r).map(|_| ())
    }
}

fn filled(r: io::Result<()>, done: i64) -> Filled {
    match r {
        Ok(()) => Filled {
            bytes: done.max(0) as u64,
            error: None,
        },
        Err(e) => Filled {
            bytes: done.max(0) as u64,
            error: Some(e),
        },
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
