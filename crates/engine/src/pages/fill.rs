//! The restore side's page source: puts the stored page contents into the restored process.
//!
//! A [`PageFill`] is called once the mappings exist (writable where runs land, see
//! [`super::layout`]) and before the final protections are set. [`EagerFill`] is today's: every
//! run is read from the image, checked against its CRC, and written into the target with
//! process_vm_writev before the process runs; compressed runs are read whole, CRC-checked and
//! decoded first, by threads ([`super::compress::RunDecoder`]). The image side is behind
//! [`RunReader`]; a run of an incremental dump is read from the
//! pages file of its image of the chain ([`RunReader::in_image`], `crate::chain::ChainPages`). A lazy fill (userfaultfd, pages served on fault)
//! or a fill that maps runs straight from the image would implement [`PageFill`] too.
//!
//! Authenticated images: a [`RawReader`] of an authenticated directory checks the MAC of
//! every extent it returns before returning it (an extent is a run as the dumper wrote it, at
//! most 2 MiB), so every piece written into the target was verified, in the restorer's own
//! buffer, before it was written. A fill that mapped the pages file instead could not do that
//! (the user owns the file): it would have to copy, or verify a private copy, first.

use super::buffer::GrowingBuffer;
use super::compress::RunDecoder;
use crate::chain::ChainPages;
use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RawReader};
use stasis_sys::{proc_mem, Pid};

/// Gives a restored process the contents of its pages.
pub trait PageFill {
    /// Puts the contents of `runs` into `target`, whose mappings already exist.
    fn fill(&mut self, target: Pid, runs: &[PageRun]) -> Result<(), Error>;
}

/// Reads the stored bytes of page runs, a piece at a time (the caller checks the CRCs). Shared
/// by the threads of a parallel fill, hence `Sync` (positioned reads need no lock).
pub trait RunReader: Sync {
    /// Reads `buf.len()` bytes at payload offset `offset` (within the payload's bounds).
    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error>;
    /// The error for a run whose bytes do not match its CRC.
    fn bad_crc(&self, run: &PageRun) -> Error;
    /// The error for a run whose stored bytes do not decode (`reason` says why).
    fn bad_run(&self, run: &PageRun, reason: String) -> Error {
        Error::Invalid(format!("page run at {:#x}: {reason}", run.addr))
    }
    /// The reader of the pages file of image `image` of a chain of incremental dumps (0: this
    /// one's own), when open (`crate::chain::ChainPages`).
    fn in_image(&self, image: u32) -> Option<&dyn RunReader>;
}

impl RunReader for RawReader {
    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        Ok(self.read_unchecked(offset, buf)?)
    }

    fn bad_crc(&self, _run: &PageRun) -> Error {
        Error::Image(stasis_image::ImageError::BadPayloadCrc {
            path: self.path().to_path_buf(),
        })
    }

    fn bad_run(&self, run: &PageRun, reason: String) -> Error {
        Error::Image(stasis_image::ImageError::Invalid {
            path: self.path().to_path_buf(),
            reason: format!("page run at {:#x}: {reason}", run.addr),
        })
    }

    fn in_image(&self, image: u32) -> Option<&dyn RunReader> {
        (image == 0).then_some(self as &dyn RunReader)
    }
}

/// The reader of the pages file that holds `run` (its image of the chain).
pub(crate) fn reader_of<'r, R: RunReader + ?Sized>(
    pages: &'r R,
    run: &PageRun,
) -> Result<&'r dyn RunReader, Error> {
    pages.in_image(run.image).ok_or_else(|| {
        Error::Invalid(format!(
            "page run at {:#x} is in image {} of a chain of incremental dumps, which is not open",
            run.addr, run.image
        ))
    })
}

/// The most memory a fill holds at once, whatever length a run claims: runs are read, checked
/// and written in pieces of this size (the dumper writes runs of at most 2 MiB, which are
/// checked whole before any byte of them is written; in authenticated images each piece is
/// also checked against its MAC when it is read, before it is written).
const FILL_CHUNK: u64 = 2 << 20;

/// Writes every run into the target before it runs.
pub struct EagerFill<'a, R: RunReader + ?Sized> {
    pages: &'a R,
    /// For raw runs ([`super::buffer`]).
    buf: GrowingBuffer,
    /// For compressed runs (made at the first one).
    decoder: Option<RunDecoder>,
}

impl<'a, R: RunReader + ?Sized> EagerFill<'a, R> {
    pub fn new(pages: &'a R) -> Self {
        EagerFill {
            pages,
            buf: GrowingBuffer::new(),
            decoder: None,
        }
    }

    /// Compressed runs: each read whole (at most 2 MiB) and CRC-checked, decoded by worker
    /// threads, then written in order.
    fn fill_zstd(&mut self, target: Pid, runs: &[PageRun]) -> Result<(), Error> {
        let decoder = match &mut self.decoder {
            Some(d) => d,
            None => self.decoder.insert(RunDecoder::new()?),
        };
        decoder.fill_runs(self.pages, runs, |r, pages| {
            proc_mem::write_all(target, r.addr, pages)
                .map_err(|e| Error::sys("process_vm_writev", target, e))
        })
    }
}

/// A fill of at least this many bytes of raw runs is shared between threads: writing pages
/// into a process that has none yet costs a fault and a zeroed page each, and on a process of
/// 1 GiB that, not reading the image, is most of the time.
const PARALLEL_MIN: u64 = 32 << 20;

/// Whether a fill of `runs` may use threads: compressed runs, or raw ones of at least
/// `PARALLEL_MIN` bytes.
pub fn uses_threads(runs: &[PageRun]) -> bool {
    let raw: u64 = runs
        .iter()
        .filter(|r| r.codec == stasis_image::RunCodec::Raw)
        .map(|r| r.npages.saturating_mul(PAGE_SIZE))
        .sum();
    raw >= PARALLEL_MIN || runs.iter().any(|r| r.codec == stasis_image::RunCodec::Zstd)
}

/// At most this many threads fill one process.
const MAX_FILL_THREADS: usize = 4;

impl<R: RunReader + ?Sized> PageFill for EagerFill<'_, R> {
    fn fill(&mut self, target: Pid, runs: &[PageRun]) -> Result<(), Error> {
        let mut raw = Vec::new();
        let mut rest = runs;
        while let Some(r) = rest.first() {
            if r.codec == stasis_image::RunCodec::Zstd {
                // The compressed runs that follow, together.
                let n = rest
                    .iter()
                    .take_while(|r| r.codec == stasis_image::RunCodec::Zstd)
                    .count();
                self.fill_zstd(target, &rest[..n])?;
                rest = &rest[n..];
                continue;
            }
            raw.push(r);
            rest = &rest[1..];
        }
        let bytes: u64 = raw.iter().map(|r| r.npages.saturating_mul(PAGE_SIZE)).sum();
        // (available_parallelism reads cgroup files: only asked for a fill that may use it.)
        let threads = if bytes < PARALLEL_MIN {
            1
        } else {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_FILL_THREADS)
        };
        if threads < 2 {
            for r in raw {
                fill_raw(self.pages, target, r, &mut self.buf)?;
            }
            return Ok(());
        }
        // Contiguous shares of about the same number of bytes, one per thread.
        let share = bytes.div_ceil(threads as u64);
        let mut groups: Vec<Vec<&PageRun>> = vec![Vec::new()];
        let mut in_group = 0u64;
        for r in raw {
            if in_group >= share {
                groups.push(Vec::new());
                in_group = 0;
            }
            in_group += r.npages.saturating_mul(PAGE_SIZE);
            if let Some(g) = groups.last_mut() {
                g.push(r);
            }
        }
        let pages = self.pages;
        std::thread::scope(|scope| {
            let workers: Vec<_> = groups
                .into_iter()
                .map(|group| {
                    scope.spawn(move || {
                        let mut buf = GrowingBuffer::big()?;
                        group
                            .into_iter()
                            .try_for_each(|r| fill_raw(pages, target, r, &mut buf))
                    })
                })
                .collect();
            // Every worker is joined; the first error is the one reported.
            let mut result = Ok(());
            for w in workers {
                let r = w
                    .join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a page fill thread panicked".into())));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }
}

/// Writes raw run `r` into `target` in pieces of at most [`FILL_CHUNK`] read into `buf`; its
/// CRC is checked before the last piece is written (so a bad run leaves the target partly
/// filled: the restore fails and the process never runs).
fn fill_raw<R: RunReader + ?Sized>(
    pages: &R,
    target: Pid,
    r: &PageRun,
    buffer: &mut GrowingBuffer,
) -> Result<(), Error> {
    if r.codec == stasis_image::RunCodec::Inherited {
        // Its pages come with the fork, from the parent (see `super::cow`).
        return Err(Error::Internal {
            what: format!("page run at {:#x} is inherited, not stored", r.addr),
        });
    }
    let len = r
        .npages
        .checked_mul(PAGE_SIZE)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| Error::Invalid(format!("page run at {:#x} is too long", r.addr)))?;
    let len = len as u64;
    let pages = reader_of(pages, r)?;
    let (mut done, mut crc) = (0u64, 0u32);
    while done < len {
        // A run is read in one piece when the buffer can grow to it: authenticated images
        // check a run's MAC over the whole of it, and a piece of it costs a read of it all
        // into a scratch buffer of the reader's.
        let buf = buffer.bytes(len.min(FILL_CHUNK) as usize)?;
        let n = (len - done).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        pages.read_bytes(r.offset + done, buf)?;
        crc = crc32c::crc32c_append(crc, buf);
        if done + n as u64 == len && crc != r.crc {
            return Err(pages.bad_crc(r));
        }
        proc_mem::write_all(target, r.addr + done, buf)
            .map_err(|e| Error::sys("process_vm_writev", target, e))?;
        buffer.went_through(n);
        done += n as u64;
    }
    Ok(())
}

/// Reads raw run `run` whole into `buf` (resized to it) and checks its CRC: for a fill that
/// serves pieces of runs (the lazy restore's page server). The caller bounds the run's length.
pub fn read_checked_run<R: RunReader + ?Sized>(
    pages: &R,
    run: &PageRun,
    buf: &mut Vec<u8>,
) -> Result<(), Error> {
    if run.codec != stasis_image::RunCodec::Raw {
        return Err(Error::Invalid(format!(
            "page run at {:#x} is stored as {:?}, which this fill cannot read",
            run.addr, run.codec
        )));
    }
    let len = run
        .npages
        .checked_mul(PAGE_SIZE)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| Error::Invalid(format!("page run at {:#x} is too long", run.addr)))?;
    buf.resize(len, 0);
    pages.read_bytes(run.offset, buf)?;
    if crc32c::crc32c(buf) != run.crc {
        return Err(pages.bad_crc(run));
    }
    Ok(())
}

/// Writes every page run into the process `pid`, checking each run's CRC; each run is read
/// from the pages file of its image of the chain.
pub fn fill_pages(pid: Pid, runs: &[PageRun], pages: &ChainPages) -> Result<(), Error> {
    EagerFill::new(pages).fill(pid, runs)
}

#[cfg(test)]
mod tests {
    use super::super::sink::{PageSink, RawSink};
    use super::*;
    use stasis_image::RawWriter;

    /// A pages payload in memory.
    struct InMemory(Vec<u8>);

    impl RunReader for InMemory {
        fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
            let at = offset as usize;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }

        fn bad_crc(&self, _run: &PageRun) -> Error {
            Error::Invalid("bad crc".into())
        }

        fn in_image(&self, image: u32) -> Option<&dyn RunReader> {
            (image == 0).then_some(self as &dyn RunReader)
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

    /// A fill past [`PARALLEL_MIN`] is shared between threads: every run lands where it
    /// belongs, and a bad run in any share fails the whole fill.
    #[test]
    fn large_fills_are_shared_between_threads() {
        let pg = PAGE_SIZE as usize;
        let len = (PARALLEL_MIN as usize) * 2;
        let mut target = vec![0u8; len + pg];
        let base = (target.as_mut_ptr() as u64).next_multiple_of(PAGE_SIZE);
        let skip = (base - target.as_ptr() as u64) as usize;
        // Runs of 1 MiB every 2 MiB, each page marked with its index.
        let mut sink = RawSink::new(Vec::new());
        let mut want = vec![0u8; len];
        for run in 0..len / (2 << 20) {
            let at = run * (2 << 20);
            for p in 0..(1 << 20) / pg {
                let page = &mut want[at + p * pg..at + (p + 1) * pg];
                page.fill((at / pg + p) as u8 | 1);
            }
            sink.put(base + at as u64, &want[at..at + (1 << 20)])
                .unwrap();
        }
        let runs = sink.finish().unwrap();
        assert!(runs.len() >= 32);
        let payload = InMemory(sink.payload().clone());
        let me = stasis_sys::process::getpid();
        EagerFill::new(&payload).fill(me, &runs).unwrap();
        let now = std::hint::black_box(&target[skip..skip + len]);
        assert!(now == &want[..], "the pages differ after a parallel fill");

        let mut broken = runs.clone();
        let last = broken.len() - 1;
        broken[last].crc ^= 1;
        let err = EagerFill::new(&payload).fill(me, &broken).unwrap_err();
        assert!(err.to_string().contains("bad crc"), "{err}");
    }

    /// Authenticated pages: a run whose stored bytes were changed after the dump (its CRC
    /// fixed up or not) is refused as not authenticated, and not one byte of it is written.
    #[test]
    fn changed_run_of_authenticated_pages_is_not_written() {
        use stasis_image::{names, ImageDir, ImageKey, RecordKind};
        let pg = PAGE_SIZE as usize;
        let d = std::env::temp_dir().join(format!("stasis-fill-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let key = ImageKey::from_secret(&[3; 32]);
        let mut target = vec![0u8; 5 * pg];
        let base = (target.as_mut_ptr() as u64).next_multiple_of(PAGE_SIZE);
        let skip = (base - target.as_ptr() as u64) as usize;
        let a = vec![0x11u8; pg];
        let b = vec![0x22u8; 2 * pg];
        let runs = {
            let dir = ImageDir::open(&d).unwrap();
            dir.seal(&key).unwrap();
            let mut w = RawWriter::create(&dir, "pages-1.img", RecordKind::Pages).unwrap();
            let mut sink = RawSink::new(&mut w);
            sink.put(base, &a).unwrap();
            sink.put(base + 2 * PAGE_SIZE, &b).unwrap();
            let runs = sink.finish().unwrap();
            w.finish().unwrap();
            stasis_image::write_record_atomic(&dir, names::INVENTORY, RecordKind::Inventory, &1u8)
                .unwrap();
            runs
        };
        // The last byte of the second run.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("pages-1.img"))
            .unwrap();
        let at = stasis_image::RAW_DATA_OFFSET + runs[1].offset + 2 * PAGE_SIZE - 1;
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x23], at).unwrap();
        let dir = ImageDir::open(&d).unwrap();
        assert!(dir.authenticate(&key).unwrap());
        let pages = RawReader::open(&dir, "pages-1.img", RecordKind::Pages).unwrap();
        let me = stasis_sys::process::getpid();
        let err = EagerFill::new(&pages)
            .fill(me, &runs)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pages-1.img") && err.contains("not authenticated"),
            "{err}"
        );
        let now = std::hint::black_box(&target[skip..]);
        assert_eq!(now[..pg], a[..], "the unchanged run is written");
        assert!(
            now[2 * pg..4 * pg].iter().all(|&x| x == 0),
            "bytes of the changed run were written"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A run longer than the fill's piece size is read, checked and written piece by piece,
    /// with one CRC over the whole run.
    #[test]
    fn long_runs_are_filled_in_pieces() {
        let pg = PAGE_SIZE as usize;
        let len = 2 * FILL_CHUNK as usize + pg;
        let mut target = vec![0u8; len + pg];
        let base = (target.as_mut_ptr() as u64).next_multiple_of(PAGE_SIZE);
        let skip = (base - target.as_ptr() as u64) as usize;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        let run = PageRun::raw(base, (len / pg) as u64, 0, crc32c::crc32c(&data));
        let payload = InMemory(data.clone());
        let me = stasis_sys::process::getpid();
        EagerFill::new(&payload).fill(me, &[run]).unwrap();
        let now = std::hint::black_box(&target[skip..skip + len]);
        assert!(now == &data[..], "the long run was not written whole");
        let bad = PageRun {
            crc: run.crc ^ 1,
            ..run
        };
        assert!(EagerFill::new(&payload).fill(me, &[bad]).is_err());
    }
}
