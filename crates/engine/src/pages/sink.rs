//! The dump side's page sink: where runs of page contents go, and the run index they get.
//!
//! A [`PageSink`] receives runs of non-zero pages in address order and, at the end, hands back
//! the [`PageRun`] index that the process record stores. [`RawSink`] is today's sink: the raw
//! pages file, each run's bytes appended as they are and indexed by payload offset and CRC-32C
//! (docs/image-format.md). It writes into any append-only [`Payload`]: the pages file
//! ([`RawWriter`]) or, in tests, memory. A compressing, incremental or streaming sink would
//! implement [`PageSink`] the same way.

use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RawWriter};

/// Receives the contents of a process's pages, one run at a time.
pub trait PageSink {
    /// Stores `data` (whole pages, not all zero) as the contents of the pages starting at
    /// `addr`. Runs come in address order and lie inside one mapping each.
    fn put(&mut self, addr: u64, data: &[u8]) -> Result<(), Error>;

    /// Ends the output and hands back the run index, in the order the runs were put.
    fn finish(&mut self) -> Result<Vec<PageRun>, Error>;
}

/// An append-only byte stream with a known position: where a [`RawSink`] writes.
pub trait Payload {
    /// Offset where the next append lands.
    fn position(&self) -> u64;
    /// Appends bytes.
    fn append(&mut self, data: &[u8]) -> Result<(), Error>;
}

impl Payload for RawWriter {
    fn position(&self) -> u64 {
        RawWriter::position(self)
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        Ok(self.write(data)?)
    }
}

impl Payload for Vec<u8> {
    fn position(&self) -> u64 {
        self.len() as u64
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        self.extend_from_slice(data);
        Ok(())
    }
}

impl<P: Payload + ?Sized> Payload for &mut P {
    fn position(&self) -> u64 {
        (**self).position()
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        (**self).append(data)
    }
}

/// The raw pages file: runs stored as they are, each indexed by its offset and CRC-32C.
pub struct RawSink<P: Payload> {
    out: P,
    runs: Vec<PageRun>,
}

impl<P: Payload> RawSink<P> {
    pub fn new(out: P) -> Self {
        RawSink {
            out,
            runs: Vec::new(),
        }
    }

    /// The payload written so far.
    pub fn payload(&self) -> &P {
        &self.out
    }
}

impl<P: Payload> PageSink for RawSink<P> {
    fn put(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        if data.is_empty()
            || !(data.len() as u64).is_multiple_of(PAGE_SIZE)
            || !addr.is_multiple_of(PAGE_SIZE)
        {
            return Err(Error::Invalid(format!(
                "page run of {} bytes at {addr:#x} is not whole pages",
                data.len()
            )));
        }
        let offset = self.out.position();
        self.out.append(data)?;
        self.runs.push(PageRun::raw(
            addr,
            data.len() as u64 / PAGE_SIZE,
            offset,
            crc32c::crc32c(data),
        ));
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PageRun>, Error> {
        Ok(std::mem::take(&mut self.runs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_index_offsets_and_crcs() {
        let mut sink = RawSink::new(Vec::new());
        let a = vec![1u8; 4096 * 2];
        let b: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        sink.put(0x7f00_0000_0000, &a).unwrap();
        sink.put(0x7f00_0001_0000, &b).unwrap();
        assert_eq!(sink.payload().len(), 3 * 4096);
        let runs = sink.finish().unwrap();
        assert_eq!(
            runs,
            vec![
                PageRun::raw(0x7f00_0000_0000, 2, 0, crc32c::crc32c(&a)),
                PageRun::raw(0x7f00_0001_0000, 1, 8192, crc32c::crc32c(&b)),
            ]
        );
        // Each run's CRC covers exactly its bytes in the payload.
        let payload = sink.payload();
        for r in &runs {
            let bytes = &payload[r.offset as usize..(r.offset + r.npages * 4096) as usize];
            assert_eq!(crc32c::crc32c(bytes), r.crc);
        }
        assert_ne!(runs[0].crc, runs[1].crc);
        // finish hands the index over once.
        assert!(sink.finish().unwrap().is_empty());
    }

    #[test]
    fn offsets_continue_after_existing_payload() {
        let mut out = vec![9u8; 4096];
        let mut sink = RawSink::new(&mut out);
        sink.put(0x1000, &[5u8; 4096]).unwrap();
        let runs = sink.finish().unwrap();
        assert_eq!(runs[0].offset, 4096);
        assert_eq!(out.len(), 8192);
    }

    #[test]
    fn refuses_partial_pages() {
        let mut sink = RawSink::new(Vec::new());
        assert!(matches!(
            sink.put(0x1000, &[1u8; 100]),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(sink.put(0x1000, &[]), Err(Error::Invalid(_))));
        assert!(matches!(
            sink.put(0x1001, &[1u8; 4096]),
            Err(Error::Invalid(_))
        ));
        assert!(sink.payload().is_empty());
        assert!(sink.finish().unwrap().is_empty());
    }
}
