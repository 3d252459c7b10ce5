//! The scratch area: memory mapped in the target for the arguments of injected system calls,
//! handed out by a stack allocator.
//!
//! A caller opens a [`Frame`] ([`Injector::frame`]), asks it for room for a value or a buffer
//! ([`Frame::alloc`], [`Frame::push`], [`Frame::push_slice`]) and gets a typed remote pointer
//! ([`RemotePtr`], [`RemoteSlice`]) to pass to a system call; whatever the frame allocated is
//! given back when it is dropped. Frames nest (a frame derefs to its [`Injector`], which can open
//! another one), so a typed wrapper can use a frame inside a caller's frame.
//!
//! Injectors of threads of one process share one scratch area (see
//! [`Injector::share_scratch`]); each has its own allocator. That is safe because frames are
//! short-lived: one is open only while its injector runs its calls, and injectors of one
//! process never run calls at the same time.

use super::Injector;
use crate::Error;
use stasis_sys::kabi::Pod;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// Alignment of every allocation (enough for every kernel structure).
const ALIGN: u64 = 16;

/// A stack allocator over `len` bytes (offsets from the start of the scratch area).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScratchAlloc {
    len: u64,
    top: u64,
}

/// Not enough room left in the scratch area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScratchFull {
    pub wanted: u64,
    pub free: u64,
}

impl ScratchAlloc {
    pub fn new(len: u64) -> ScratchAlloc {
        ScratchAlloc { len, top: 0 }
    }

    /// Reserves `size` bytes (aligned to 16) and returns their offset.
    pub fn alloc(&mut self, size: u64) -> Result<u64, ScratchFull> {
        let start = self.top.next_multiple_of(ALIGN);
        let free = self.len.saturating_sub(start);
        if size > free {
            return Err(ScratchFull {
                wanted: size,
                free: self.len.saturating_sub(self.top),
            });
        }
        self.top = start + size;
        Ok(start)
    }

    /// The current top, to [`ScratchAlloc::release`] back to.
    pub fn mark(&self) -> u64 {
        self.top
    }

    /// Gives back everything allocated since `mark` was taken.
    pub fn release(&mut self, mark: u64) {
        self.top = self.top.min(mark);
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.top
    }

    /// Whether `[offset, offset + size)` lies inside the area.
    pub fn contains(&self, offset: u64, size: u64) -> bool {
        offset.checked_add(size).is_some_and(|end| end <= self.len)
    }
}

/// The address of a `T` in the target.
pub struct RemotePtr<T> {
    addr: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T> RemotePtr<T> {
    /// A pointer to `addr`, which the caller knows holds a `T` in the target (an area of the
    /// target's own memory, not of the scratch area).
    pub fn at(addr: u64) -> RemotePtr<T> {
        RemotePtr {
            addr,
            _t: PhantomData,
        }
    }

    /// The NULL pointer.
    pub fn null() -> RemotePtr<T> {
        RemotePtr::at(0)
    }

    pub fn addr(self) -> u64 {
        self.addr
    }
}

impl<T> Clone for RemotePtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RemotePtr<T> {}

impl<T> std::fmt::Debug for RemotePtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.addr)
    }
}

/// The address of `len` consecutive `T`s in the target.
pub struct RemoteSlice<T> {
    addr: u64,
    len: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> RemoteSlice<T> {
    pub fn addr(self) -> u64 {
        self.addr
    }

    /// Number of elements.
    pub fn len(self) -> usize {
        self.len
    }

    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// Size in bytes.
    pub fn byte_len(self) -> u64 {
        (self.len * std::mem::size_of::<T>()) as u64
    }
}

impl<T> Clone for RemoteSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RemoteSlice<T> {}

impl<T> std::fmt::Debug for RemoteSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}[{}]", self.addr, self.len)
    }
}

/// Allocations in the scratch area that last as long as this value; it derefs to the
/// [`Injector`], so calls can be run through it.
pub struct Frame<'a> {
    inj: &'a mut Injector,
    mark: u64,
}

impl Injector {
    /// Opens an allocation frame in the scratch area (which must be mapped).
    pub fn frame(&mut self) -> Frame<'_> {
        let mark = self.alloc.mark();
        Frame { inj: self, mark }
    }

    /// [`Frame::set`] for a call that passes nothing by pointer.
    pub fn set(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<(), Error> {
        self.frame().set(name, nr, args)
    }
}

impl Frame<'_> {
    /// Room for one `T` (contents undefined until written).
    pub fn alloc<T: Pod>(&mut self) -> Result<RemotePtr<T>, Error> {
        let addr = self.alloc_bytes(std::mem::size_of::<T>() as u64)?;
        Ok(RemotePtr::at(addr))
    }

    /// Copies `value` into the scratch area.
    pub fn push<T: Pod>(&mut self, value: &T) -> Result<RemotePtr<T>, Error> {
        let p = self.alloc::<T>()?;
        self.inj.write(p, value)?;
        Ok(p)
    }

    /// Copies `values` into the scratch area.
    pub fn push_slice<T: Pod>(&mut self, values: &[T]) -> Result<RemoteSlice<T>, Error> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.as_bytes()).copied().collect();
        let addr = self.alloc_bytes(bytes.len() as u64)?;
        self.inj.write_bytes(addr, &bytes)?;
        if values.len() <= 64 {
            tracing::trace!("tid {}: scratch {addr:#x} <- {values:?}", self.inj.tid());
        } else {
            tracing::trace!(
                "tid {}: scratch {addr:#x} <- {} x {}",
                self.inj.tid(),
                values.len(),
                std::any::type_name::<T>()
            );
        }
        Ok(RemoteSlice {
            addr,
            len: values.len(),
            _t: PhantomData,
        })
    }

    /// Runs a call whose result is not needed; while calls are gathered
    /// ([`Injector::batched`]), adds it to them instead and keeps what this frame allocated
    /// (its arguments) until they have run.
    pub fn set(mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<(), Error> {
        if self.inj.gather(name, nr, args) {
            // Released by `batched` once the gathered calls have run.
            self.mark = u64::MAX;
            return Ok(());
        }
        self.inj.call(name, nr, args)?;
        Ok(())
    }

    /// Room for `len` bytes; returns their remote address.
    pub fn alloc_bytes(&mut self, len: u64) -> Result<u64, Error> {
        let base = self.inj.scratch()?;
        let tid = self.inj.tid();
        let off = self.inj.alloc.alloc(len).map_err(|full| Error::Inject {
            tid,
            nr: 0,
            reason: format!(
                "an argument of {} bytes does not fit the scratch area ({} bytes free)",
                full.wanted, full.free
            ),
        })?;
        Ok(base + off)
    }
}

impl Deref for Frame<'_> {
    type Target = Injector;
    fn deref(&self) -> &Injector {
        self.inj
    }
}

impl DerefMut for Frame<'_> {
    fn deref_mut(&mut self) -> &mut Injector {
        self.inj
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        self.inj.alloc.release(self.mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_and_bounded() {
        let mut a = ScratchAlloc::new(64);
        assert_eq!(a.alloc(3), Ok(0));
        assert_eq!(a.alloc(8), Ok(16));
        assert_eq!(a.used(), 24);
        // 32..64 is free: 32 bytes fit, 33 do not.
        let m = a.mark();
        assert_eq!(
            a.alloc(33),
            Err(ScratchFull {
                wanted: 33,
                free: 40
            })
        );
        assert_eq!(a.mark(), m, "a failed allocation takes nothing");
        assert_eq!(a.alloc(32), Ok(32));
        assert_eq!(a.alloc(1), Err(ScratchFull { wanted: 1, free: 0 }));
        assert_eq!(a.alloc(0), Ok(64), "an empty allocation at the very end");
    }

    #[test]
    fn release_gives_back_a_frame() {
        let mut a = ScratchAlloc::new(4096);
        let outer = a.mark();
        assert_eq!(a.alloc(100), Ok(0));
        let inner = a.mark();
        assert_eq!(a.alloc(100), Ok(112));
        a.release(inner);
        assert_eq!(a.alloc(1), Ok(112), "the inner frame's room is reused");
        a.release(outer);
        assert_eq!(a.used(), 0);
        // Releasing to a mark above the top (an outer frame released first) changes nothing.
        a.release(1000);
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn huge_requests_do_not_overflow() {
        let mut a = ScratchAlloc::new(4096);
        assert!(a.alloc(u64::MAX).is_err());
        assert_eq!(a.alloc(16), Ok(0));
        assert!(a.contains(4000, 96));
        assert!(!a.contains(4000, 97));
        assert!(!a.contains(u64::MAX, 2));
    }
}
