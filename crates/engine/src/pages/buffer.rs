//! The buffer page contents pass through, on both sides: the dump's copy
//! ([`super::dump::copy_pages`]) and the restore's fill ([`super::fill::EagerFill`]).
//!
//! Small at first: each 4 KiB page of a fresh buffer costs a page fault the first time it is
//! written (~1 µs on this VM). Once [`SMALL_UNTIL`] bytes went through, a buffer of 2 MiB
//! on a huge page when the kernel gives one ([`stasis_sys::buffer::PageBuffer`]): fewer,
//! longer system calls for big processes; but its first fault zeroes all of 2 MiB (0.15–0.25
//! ms here), which the dump or restore of a 1 MiB process would pay for nothing.

use crate::Error;
use stasis_sys::buffer::PageBuffer;

/// The buffer's size at first.
pub const SMALL: usize = 128 << 10;
/// How many bytes go through the small buffer before the big one is taken.
pub const SMALL_UNTIL: u64 = 4 << 20;
/// The big buffer's size.
pub const BIG: usize = 2 << 20;

/// A buffer that starts small and grows once ([`Self::bytes`]).
pub enum GrowingBuffer {
    Small { buf: Vec<u8>, through: u64 },
    Big(PageBuffer),
}

impl GrowingBuffer {
    /// A small buffer.
    pub fn new() -> GrowingBuffer {
        GrowingBuffer::Small {
            buf: Vec::new(),
            through: 0,
        }
    }

    /// The big buffer at once (for work known to be big).
    pub fn big() -> Result<GrowingBuffer, Error> {
        Ok(GrowingBuffer::Big(
            PageBuffer::new(BIG).map_err(|e| Error::io("mapping a buffer for pages", e))?,
        ))
    }

    /// The buffer for the next piece, at least `min` bytes long (at most [`BIG`]): the big
    /// one once [`SMALL_UNTIL`] bytes went through or `min` is more than [`SMALL`].
    pub fn bytes(&mut self, min: usize) -> Result<&mut [u8], Error> {
        if let GrowingBuffer::Small { through, .. } = self {
            if *through >= SMALL_UNTIL || min > SMALL {
                *self = GrowingBuffer::big()?;
            }
        }
        Ok(match self {
            GrowingBuffer::Small { buf, .. } => {
                if buf.is_empty() {
                    buf.resize(SMALL, 0);
                }
                buf
            }
            GrowingBuffer::Big(b) => b,
        })
    }

    /// Notes that `n` bytes went through.
    pub fn went_through(&mut self, n: usize) {
        if let GrowingBuffer::Small { through, .. } = self {
            *through += n as u64;
        }
    }
}

impl Default for GrowingBuffer {
    fn default() -> Self {
        GrowingBuffer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_once_past_its_threshold_or_for_a_longer_piece() {
        let mut b = GrowingBuffer::new();
        assert_eq!(b.bytes(4096).unwrap().len(), SMALL);
        b.went_through(SMALL_UNTIL as usize - 1);
        assert_eq!(b.bytes(1).unwrap().len(), SMALL);
        b.went_through(1);
        assert_eq!(b.bytes(1).unwrap().len(), BIG);
        b.went_through(BIG);
        assert_eq!(b.bytes(BIG).unwrap().len(), BIG);
        let mut b = GrowingBuffer::new();
        assert_eq!(b.bytes(SMALL + 1).unwrap().len(), BIG);
        assert!(matches!(
            GrowingBuffer::big().unwrap(),
            GrowingBuffer::Big(_)
        ));
    }
}
