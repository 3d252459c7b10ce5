//! The restore side's page source: puts the stored page contents into the restored process.
//!
//! A [`PageFill`] is called once the mappings exist (writable where runs land, see
//! [`super::layout`]) and before the final protections are set. [`EagerFill`] is today's: every
//! run is read from the image, checked against its CRC, and written into the target with
//! process_vm_writev before the process runs. The image side is behind [`RunReader`] (the raw
//! pages file today; a compressed one later). A lazy fill (userfaultfd, pages served on fault)
//! or a fill that maps runs straight from the image would implement [`PageFill`] too.

use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RawReader};
use stasis_sys::{proc_mem, Pid};

/// Gives a restored process the contents of its pages.
pub trait PageFill {
    /// Puts the contents of `runs` into `target`, whose mappings already exist.
    fn fill(&mut self, target: Pid, runs: &[PageRun]) -> Result<(), Error>;
}

/// Reads the stored bytes of a page run.
pub trait RunReader {
    /// Reads the `run.npages` pages of `run` into `buf` (exactly that long) and checks them
    /// against the run's CRC.
    fn read_run(&self, run: &PageRun, buf: &mut [u8]) -> Result<(), Error>;
}

impl RunReader for RawReader {
    fn read_run(&self, run: &PageRun, buf: &mut [u8]) -> Result<(), Error> {
        Ok(self.read_extent(run.offset, buf, run.crc)?)
    }
}

/// Writes every run into the target before it runs.
pub struct EagerFill<'a, R: RunReader + ?Sized> {
    pages: &'a R,
    buf: Vec<u8>,
}

impl<'a, R: RunReader + ?Sized> EagerFill<'a, R> {
    pub fn new(pages: &'a R) -> Self {
        EagerFill {
            pages,
            buf: Vec::new(),
        }
    }
}

impl<R: RunReader + ?Sized> PageFill for EagerFill<'_, R> {
    fn fill(&mut self, target: Pid, runs: &[PageRun]) -> Result<(), Error> {
        for r in runs {
            let len = r
                .npages
                .checked_mul(PAGE_SIZE)
                .and_then(|l| usize::try_from(l).ok())
                .ok_or_else(|| Error::Invalid(format!("page run at {:#x} is too long", r.addr)))?;
            self.buf.resize(len, 0);
            self.pages.read_run(r, &mut self.buf)?;
            proc_mem::write_all(target, r.addr, &self.buf)
                .map_err(|e| Error::sys("process_vm_writev", target, e))?;
        }
        Ok(())
    }
}

/// Writes every page run into the process `pid`, checking each run's CRC.
pub fn fill_pages(pid: Pid, runs: &[PageRun], pages: &RawReader) -> Result<(), Error> {
    EagerFill::new(pages).fill(pid, runs)
}

#[cfg(test)]
mod tests {
    use super::super::sink::{PageSink, RawSink};
    use super::*;

    /// A pages payload in memory.
    struct InMemory(Vec<u8>);

    impl RunReader for InMemory {
        fn read_run(&self, run: &PageRun, buf: &mut [u8]) -> Result<(), Error> {
            let at = run.offset as usize;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            if crc32c::crc32c(buf) != run.crc {
                return Err(Error::Invalid("bad crc".into()));
            }
            Ok(())
        }
    }

    /// Dumps two runs into memory with the sink, then fills them into this very process.
    #[test]
    fn eager_fill_writes_runs_and_checks_crcs() {
        let pg = PAGE_SIZE as usize;
        let mut target = vec![0u8; 4 * pg];
        // Page-aligned address inside the buffer for the runs.
        let base = (target.as_mut_ptr() as u64).next_multiple_of(PAGE_SIZE);
        let skip = (base - target.as_ptr() as u64) as usize;
        let target_len = target.len();
        let usable = &mut target[skip..];
        assert!(usable.len() >= 3 * pg, "{target_len}");
        let a: Vec<u8> = (0..pg).map(|i| i as u8 | 1).collect();
        let b = vec![0xeeu8; pg];
        let mut sink = RawSink::new(Vec::new());
        sink.put(base, &a).unwrap();
        sink.put(base + 2 * PAGE_SIZE, &b).unwrap();
        let runs = sink.finish().unwrap();
        let payload = InMemory(sink.payload().clone());

        let me = stasis_sys::process::getpid();
        EagerFill::new(&payload).fill(me, &runs).unwrap();
        let now = std::hint::black_box(&target[skip..]);
        assert_eq!(now[..pg], a[..]);
        assert!(now[pg..2 * pg].iter().all(|&x| x == 0), "a hole stays zero");
        assert_eq!(now[2 * pg..3 * pg], b[..]);

        // A run whose bytes do not match its CRC is not written.
        let mut bad = runs[1];
        bad.addr = base + PAGE_SIZE;
        bad.crc ^= 1;
        assert!(EagerFill::new(&payload).fill(me, &[bad]).is_err());
        let now = std::hint::black_box(&target[skip..]);
        assert!(now[pg..2 * pg].iter().all(|&x| x == 0));
    }
}
