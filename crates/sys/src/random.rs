//! Random bytes from the kernel (getrandom(2)).

use rustix::rand::{getrandom, GetRandomFlags};
use std::io;

/// Fills `buf` with random bytes from the kernel's pool (getrandom(2) without flags: blocks
/// only until the pool is initialized at boot, then never). Retries after a signal and after
/// short reads.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match getrandom(&mut buf[done..], GetRandomFlags::empty()) {
            Ok(0) => return Err(io::Error::other("getrandom returned no bytes")),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_the_whole_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        super::fill(&mut a).unwrap();
        super::fill(&mut b).unwrap();
        assert_ne!(a, b, "two draws of 512 bits are equal");
        super::fill(&mut []).unwrap();
    }
}
