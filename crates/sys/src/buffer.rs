//! [`PageBuffer`]: a buffer for page contents, an anonymous mapping of our own aligned to
//! 2 MiB and advised for transparent huge pages.
//!
//! A buffer that receives pages (process_vm_readv at dump, reads of the pages file at
//! restore) is written once from start to end, by the kernel. A fresh `Vec` of 2 MiB costs
//! one page fault per 4 KiB page on that first write (about 450 µs for 1 MiB on this kind of
//! VM, more than the copy itself); with a huge page it is one fault (about 130 µs). Where the
//! kernel gives no huge page (THP off, no contiguous memory), it is an ordinary mapping.

use std::io;

/// 2 MiB: the size and alignment of a huge page on x86-64.
const HUGE: usize = 2 << 20;

/// An owned, zero-filled, read-write anonymous mapping of `len` bytes (rounded up to 2 MiB),
/// starting on a 2 MiB boundary; unmapped on drop.
pub struct PageBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by the value (nothing else refers to it), like a Vec<u8>.
unsafe impl Send for PageBuffer {}
// SAFETY: shared references only read it, as for a Vec<u8>.
unsafe impl Sync for PageBuffer {}

impl PageBuffer {
    /// A buffer of at least `len` bytes (`len` > 0).
    pub fn new(len: usize) -> io::Result<PageBuffer> {
        let len = len.max(1).div_ceil(HUGE) * HUGE;
        // Twice the room of the alignment, the ends trimmed below.
        let room = len + HUGE;
        // SAFETY: a new anonymous private mapping at an address of the kernel's choice: it
        // touches no memory of ours.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                room,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE);
        let head = aligned - start;
        let tail = room - head - len;
        // SAFETY: the two ends lie inside the mapping just made, and nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
            // Advice only: without huge pages the buffer works the same.
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Ok(PageBuffer {
            ptr: aligned as *mut u8,
            len,
        })
    }

    /// Its length (a multiple of 2 MiB).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::ops::Deref for PageBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a readable mapping of `len` bytes owned by `self` for its lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for PageBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`, writable, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PageBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no reference to it outlives `self`.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        let mut b = PageBuffer::new(3 << 20).expect("map");
        assert_eq!(b.len(), 4 << 20);
        assert_eq!(b.as_ptr() as usize % HUGE, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[0] = 1;
        let n = b.len();
        b[n - 1] = 2;
        assert_eq!((b[0], b[n - 1]), (1, 2));
    }
}
