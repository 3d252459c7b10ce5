//! Compressed page runs (`stasis dump --compress`): a [`ZstdSink`] that stores each run as one
//! zstd frame, compressed by a small pool of worker threads, and [`RunDecoder`], which reads a
//! compressed run back on the restore side (and for `stasis show`'s verification).
//!
//! # Dump side
//!
//! [`copy_pages`](super::dump::copy_pages) hands the sink runs of non-zero pages (at most 2
//! MiB each, zero pages already cut out). The sink copies each run into a buffer of its own and
//! gives it to a worker of a [`ZstdPool`]: workers compress runs in parallel while the dumping
//! thread reads the next ones; results come back in the order the runs were put (runs go to
//! the workers in turn, and each worker answers in order), and the sink appends each run with
//! one write of the payload, so that in an authenticated image every run is one extent with
//! its own MAC (see [`stasis_image::auth`]). A run that zstd does not make smaller is stored
//! raw ([`RunCodec::Raw`]): a [`RunCodec::Zstd`] run is always shorter than its pages, as the
//! validator requires, and a raw run starts on a page boundary of the payload as for
//! uncompressed images (zeros pad the payload up to it). The memory held is bounded: at most two runs in flight per worker, each
//! with a 2 MiB input and output buffer, recycled from run to run.
//!
//! # Restore side
//!
//! A compressed run is at most [`MAX_ZSTD_RUN_PAGES`] pages (the validator refuses longer
//! ones): [`RunDecoder`] reads its stored bytes whole (one extent, checked against its MAC in an
//! authenticated image), checks their CRC-32C, and only then decodes them into a buffer of
//! exactly the run's length; a frame that is not exactly one zstd frame, or that decodes to
//! anything but the run's `npages * 4096` bytes, is refused with an error that names the run.
//! [`RunDecoder::fill_runs`] does that for a series of runs with decoding threads: runs are read
//! and checked in order on the caller's thread, decoded in parallel, and handed back in order
//! (at most two per thread in flight, so the memory held stays bounded).

use super::fill::{reader_of, RunReader};
use super::sink::{PageSink, Payload};
use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RunCodec, MAX_ZSTD_RUN_PAGES};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The longest run a [`ZstdSink`] takes, in bytes (longer ones are split).
const MAX_JOB_BYTES: usize = (MAX_ZSTD_RUN_PAGES * PAGE_SIZE) as usize;

/// Padding before a raw run.
static ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

/// Runs in flight per worker: one being compressed, one waiting.
const IN_FLIGHT_PER_WORKER: usize = 2;

/// How page runs are compressed (`DumpOptions::compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// zstd level: 1 by default (fast; negative levels are faster and compress less, up to 22
    /// is slower and smaller).
    pub level: i32,
    /// Worker threads compressing runs; 0: one per CPU this process may run on (at most 8).
    pub threads: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            level: DEFAULT_LEVEL,
            threads: 0,
        }
    }
}

/// The default zstd level of `--compress`.
pub const DEFAULT_LEVEL: i32 = 1;

/// The levels `--compress-level` accepts (zstd's fast negative levels down to -7, and 1 to 19;
/// 20 to 22 need large windows and are far too slow for a dump).
pub const LEVELS: std::ops::RangeInclusive<i32> = -7..=19;

impl Compression {
    /// Err unless the level is one of [`LEVELS`].
    pub fn check(&self) -> Result<(), Error> {
        if !LEVELS.contains(&self.level) || self.level == 0 {
            return Err(Error::Invalid(format!(
                "compression level {} is not one of -7..-1 or 1..19",
                self.level
            )));
        }
        Ok(())
    }
}

/// A run to compress, with the buffers it is done in.
struct Job {
    addr: u64,
    /// The run's pages (its length is the run's).
    input: Vec<u8>,
    /// Room for the frame: [`MAX_JOB_BYTES`] bytes.
    output: Vec<u8>,
}

/// A compressed (or not) run, handed back in order.
struct Done {
    job: Job,
    /// Length of the frame at the start of `job.output`, or `None`: store `job.input` raw.
    frame_len: Option<usize>,
    /// CRC-32C of the bytes to store.
    crc: u32,
}

/// Threads that each run `work` on the jobs given to them; results come back in the order the
/// jobs were given (job `n` goes to thread `n % threads`, and each answers in order).
struct Workers<J, D> {
    threads: Vec<WorkerThread<J, D>>,
    /// Jobs handed out, and results taken back.
    sent: usize,
    taken: usize,
    /// What the workers do, in messages ("compression", "decompression").
    what: &'static str,
}

struct WorkerThread<J, D> {
    jobs: Option<mpsc::Sender<J>>,
    done: mpsc::Receiver<D>,
    thread: Option<JoinHandle<()>>,
}

impl<J: Send + 'static, D: Send + 'static> Workers<J, D> {
    /// One thread per state of `states`, each running `work(&mut its state, job)`.
    fn start<S: Send + 'static>(
        what: &'static str,
        states: Vec<S>,
        work: fn(&mut S, J) -> D,
    ) -> Result<Self, Error> {
        let mut threads = Vec::with_capacity(states.len());
        for (i, mut state) in states.into_iter().enumerate() {
            let (jobs_tx, jobs_rx) = mpsc::channel::<J>();
            let (done_tx, done_rx) = mpsc::channel::<D>();
            let thread = std::thread::Builder::new()
                .name(format!("stasis-zstd-{i}"))
                .spawn(move || {
                    for job in jobs_rx {
                        if done_tx.send(work(&mut state, job)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| Error::Io {
                    what: format!("starting a {what} thread"),
                    source: e,
                })?;
            threads.push(WorkerThread {
                jobs: Some(jobs_tx),
                done: done_rx,
                thread: Some(thread),
            });
        }
        Ok(Workers {
            threads,
            sent: 0,
            taken: 0,
            what,
        })
    }

    fn len(&self) -> usize {
        self.threads.len()
    }

    fn in_flight(&self) -> usize {
        self.sent - self.taken
    }

    fn submit(&mut self, job: J) -> Result<(), Error> {
        let gone = || Error::Internal {
            what: format!("a {} thread is gone", self.what),
        };
        let w = self
            .threads
            .get(self.sent % self.threads.len().max(1))
            .ok_or_else(gone)?;
        w.jobs
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(gone)?;
        self.sent += 1;
        Ok(())
    }

    /// The oldest result (waits for it).
    fn take(&mut self) -> Result<D, Error> {
        let died = || Error::Internal {
            what: format!("a {} thread died", self.what),
        };
        let w = self
            .threads
            .get(self.taken % self.threads.len().max(1))
            .ok_or_else(died)?;
        let done = w.done.recv().map_err(|_| died())?;
        self.taken += 1;
        Ok(done)
    }

    /// Waits for every result not taken and hands each to `keep` (an error on the way: the
    /// results are not needed). A worker that died leaves no worker to use.
    fn drain(&mut self, mut keep: impl FnMut(D)) {
        while self.in_flight() > 0 {
            match self.take() {
                Ok(done) => keep(done),
                Err(_) => {
                    self.taken = self.sent;
                    self.threads.clear();
                }
            }
        }
    }
}

impl<J, D> Drop for Workers<J, D> {
    fn drop(&mut self) {
        for w in &mut self.threads {
            w.jobs = None; // the worker's loop ends
        }
        for w in &mut self.threads {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// How many threads: `n`, or with 0 one per CPU this process may run on (at most 8).
fn thread_count(n: usize) -> usize {
    match n {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8),
        n => n.min(64),
    }
}

/// Worker threads that compress page runs, shared by the sinks of one dump (one per process).
pub struct ZstdPool {
    workers: Workers<Job, Done>,
    /// Buffers of finished jobs, for the next ones.
    spare: Vec<Job>,
}

impl ZstdPool {
    /// Starts the workers.
    pub fn new(c: Compression) -> Result<ZstdPool, Error> {
        c.check()?;
        let mut cctxs = Vec::new();
        for _ in 0..thread_count(c.threads) {
            // Created here, so that a level zstd refuses is an error of the dump.
            cctxs.push(zstd::bulk::Compressor::new(c.level).map_err(|e| Error::Io {
                what: format!("creating a zstd compressor of level {}", c.level),
                source: e,
            })?);
        }
        Ok(ZstdPool {
            workers: Workers::start("compression", cctxs, compress_job)?,
            spare: Vec::new(),
        })
    }

    /// How many worker threads compress.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Waits for and throws away every result not taken (a sink dropped mid-way).
    fn discard_in_flight(&mut self) {
        let spare = &mut self.spare;
        self.workers.drain(|done| spare.push(done.job));
    }

    /// Buffers for a job of `data`.
    fn job(&mut self, addr: u64, data: &[u8]) -> Job {
        let mut job = self.spare.pop().unwrap_or_else(|| Job {
            addr: 0,
            input: Vec::with_capacity(MAX_JOB_BYTES),
            output: vec![0u8; MAX_JOB_BYTES],
        });
        job.addr = addr;
        job.input.clear();
        job.input.extend_from_slice(data);
        job
    }
}

/// Compresses `job.input` into `job.output`, a frame strictly shorter than the input or none.
fn compress_job(cctx: &mut zstd::bulk::Compressor<'static>, job: Job) -> Done {
    let len = job.input.len();
    let mut job = job;
    // Room for one byte less than the pages: a frame that does not fit is not worth storing
    // (zstd says "destination buffer too small"), and the run is stored raw.
    let room = len.saturating_sub(1).min(job.output.len());
    let frame_len = cctx
        .compress_to_buffer(&job.input[..], &mut job.output[..room])
        .ok()
        .filter(|&n| n > 0 && n < len);
    let crc = match frame_len {
        Some(n) => crc32c::crc32c(&job.output[..n]),
        None => crc32c::crc32c(&job.input),
    };
    Done {
        job,
        frame_len,
        crc,
    }
}

/// A [`PageSink`] that stores each run as one zstd frame (or raw when that is not smaller),
/// compressed by the workers of a [`ZstdPool`], appended to `out` in the order put.
pub struct ZstdSink<'a, P: Payload> {
    pool: &'a mut ZstdPool,
    out: P,
    runs: Vec<PageRun>,
    /// Bytes of pages put, and bytes stored.
    pages_bytes: u64,
    stored_bytes: u64,
}

impl<'a, P: Payload> ZstdSink<'a, P> {
    pub fn new(pool: &'a mut ZstdPool, out: P) -> Self {
        ZstdSink {
            pool,
            out,
            runs: Vec::new(),
            pages_bytes: 0,
            stored_bytes: 0,
        }
    }

    /// The payload written so far (runs still compressing are not in it yet).
    pub fn payload(&self) -> &P {
        &self.out
    }

    /// Bytes of pages put so far, and bytes stored for those written.
    pub fn sizes(&self) -> (u64, u64) {
        (self.pages_bytes, self.stored_bytes)
    }

    /// Takes the oldest result and appends it to the payload (one write: one extent).
    fn write_oldest(&mut self) -> Result<(), Error> {
        let done = self.pool.workers.take()?;
        if done.frame_len.is_none() {
            // Raw runs start on a page of the payload (the validator requires it, so that
            // they can be mapped from the file): zeros up to there, an extent of their own.
            let pad = (PAGE_SIZE - self.out.position() % PAGE_SIZE) % PAGE_SIZE;
            if pad > 0 {
                if let Err(e) = self.out.append(&ZEROS[..pad as usize]) {
                    self.pool.spare.push(done.job);
                    return Err(e);
                }
                self.stored_bytes += pad;
            }
        }
        let offset = self.out.position();
        let job = &done.job;
        let npages = job.input.len() as u64 / PAGE_SIZE;
        let result = match done.frame_len {
            Some(n) => self.out.append(&job.output[..n]).map(|()| PageRun {
                addr: job.addr,
                npages,
                offset,
                stored_len: n as u64,
                codec: RunCodec::Zstd,
                crc: done.crc,
                image: 0,
            }),
            None => self
                .out
                .append(&job.input)
                .map(|()| PageRun::raw(job.addr, npages, offset, done.crc)),
        };
        self.pool.spare.push(done.job);
        let run = result?;
        self.stored_bytes += run.stored_len;
        self.runs.push(run);
        Ok(())
    }
}

impl<P: Payload> PageSink for ZstdSink<'_, P> {
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
        if self.pool.workers.len() == 0 {
            return Err(Error::Internal {
                what: "the compression threads are gone".into(),
            });
        }
        for (i, piece) in data.chunks(MAX_JOB_BYTES).enumerate() {
            let at = addr + (i * MAX_JOB_BYTES) as u64;
            while self.pool.workers.in_flight() >= IN_FLIGHT_PER_WORKER * self.pool.threads() {
                self.write_oldest()?;
            }
            let job = self.pool.job(at, piece);
            self.pool.workers.submit(job)?;
            self.pages_bytes += piece.len() as u64;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PageRun>, Error> {
        while self.pool.workers.in_flight() > 0 {
            self.write_oldest()?;
        }
        Ok(std::mem::take(&mut self.runs))
    }
}

impl<P: Payload> Drop for ZstdSink<'_, P> {
    /// A sink given up on (an error) leaves no result in the pool for the next one.
    fn drop(&mut self) {
        self.pool.discard_in_flight();
    }
}

/// Reads the compressed run `run` from `reader` (the pages file of its image), checks its CRC
/// and decodes it into `out`, which holds exactly its pages afterwards: for the comparison of
/// an incremental dump with a compressed parent. One decoder per thread, kept.
pub fn decode_into<R: RunReader + ?Sized>(
    reader: &R,
    run: &PageRun,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    thread_local! {
        static DECODER: std::cell::RefCell<Option<RunDecoder>> =
            const { std::cell::RefCell::new(None) };
    }
    DECODER.with(|d| {
        let mut d = d.borrow_mut();
        let decoder = match &mut *d {
            Some(decoder) => decoder,
            None => d.insert(RunDecoder::new()?),
        };
        let pages = decoder.read_zstd(reader, run)?;
        out.clear();
        out.extend_from_slice(pages);
        Ok(())
    })
}

/// Reads page runs back: the stored bytes read, CRC-checked and decoded.
pub struct RunDecoder {
    dctx: zstd::bulk::Decompressor<'static>,
    /// The stored bytes of a run (at most [`MAX_JOB_BYTES`]).
    stored: Vec<u8>,
    /// Its pages, decoded.
    pages: Vec<u8>,
    /// For [`RunDecoder::fill_runs`]: threads that decode runs (started at the first batch),
    /// and the buffers of finished jobs.
    workers: Option<Workers<DecodeJob, DecodeJob>>,
    spare: Vec<DecodeJob>,
}

/// A run to decode on a worker thread, with its buffers; handed back with the result.
struct DecodeJob {
    run: PageRun,
    stored: Vec<u8>,
    /// [`MAX_JOB_BYTES`] long; the run's pages at its start.
    pages: Vec<u8>,
    result: Result<(), String>,
}

/// A zstd decompressor whose window is bounded: a frame asking for a larger window than a run
/// needs is refused before any allocation.
fn decompressor() -> Result<zstd::bulk::Decompressor<'static>, Error> {
    let mut dctx = zstd::bulk::Decompressor::new().map_err(|e| Error::Io {
        what: "creating a zstd decompressor".into(),
        source: e,
    })?;
    dctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(22))
        .map_err(|e| Error::Io {
            what: "setting up a zstd decompressor".into(),
            source: e,
        })?;
    Ok(dctx)
}

/// Decodes `stored`, which must be one zstd frame of exactly `out.len()` bytes, into `out`;
/// the error says what is wrong with the frame.
fn decode_frame(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    let len = out.len();
    let frame = zstd::zstd_safe::find_frame_compressed_size(stored).map_err(|code| {
        format!(
            "not a zstd frame ({})",
            zstd::zstd_safe::get_error_name(code)
        )
    })?;
    if frame != stored.len() {
        return Err(format!(
            "its {} stored bytes are not one zstd frame (the first one ends at {frame})",
            stored.len()
        ));
    }
    // The destination is exactly the run: a frame holding more does not fit and fails.
    let n = dctx
        .decompress_to_buffer(stored, out)
        .map_err(|e| format!("its zstd frame does not decode to {len} bytes: {e}"))?;
    if n != len {
        return Err(format!(
            "its zstd frame decodes to {n} bytes instead of {len}"
        ));
    }
    Ok(())
}

fn decode_job(dctx: &mut zstd::bulk::Decompressor<'static>, mut job: DecodeJob) -> DecodeJob {
    let len = (job.run.npages * PAGE_SIZE) as usize; // checked by read_checked
    job.result = decode_frame(dctx, &job.stored, &mut job.pages[..len]);
    job
}

/// The error for `run`, whose stored bytes do not decode, from the reader of its image.
fn bad_run<R: RunReader + ?Sized>(reader: &R, run: &PageRun, reason: String) -> Error {
    match reader_of(reader, run) {
        Ok(src) => src.bad_run(run, reason),
        Err(e) => e,
    }
}

/// Checks that `run` is a compressed run of sane lengths, reads its stored bytes from the
/// pages file of its image (`reader`'s, or an ancestor's in a chain of incremental dumps) into
/// `stored` and checks their CRC. Returns the length of its pages (at most [`MAX_JOB_BYTES`]).
fn read_checked<R: RunReader + ?Sized>(
    reader: &R,
    run: &PageRun,
    stored: &mut Vec<u8>,
) -> Result<usize, Error> {
    let reader = reader_of(reader, run)?;
    if run.codec != RunCodec::Zstd {
        return Err(reader.bad_run(run, format!("stored as {:?}, not zstd", run.codec)));
    }
    if run.npages == 0 || run.npages > MAX_ZSTD_RUN_PAGES {
        return Err(reader.bad_run(
            run,
            format!(
                "{} pages compressed as one frame (at most {MAX_ZSTD_RUN_PAGES})",
                run.npages
            ),
        ));
    }
    // Both buffers are bounded by MAX_ZSTD_RUN_PAGES pages.
    let pages_len = (run.npages * PAGE_SIZE) as usize;
    if run.stored_len == 0 || run.stored_len >= pages_len as u64 {
        return Err(reader.bad_run(
            run,
            format!(
                "{} stored bytes for {} compressed pages",
                run.stored_len, run.npages
            ),
        ));
    }
    stored.resize(run.stored_len as usize, 0);
    reader.read_bytes(run.offset, stored)?;
    if crc32c::crc32c(stored) != run.crc {
        return Err(reader.bad_crc(run));
    }
    Ok(pages_len)
}

impl RunDecoder {
    pub fn new() -> Result<RunDecoder, Error> {
        Ok(RunDecoder {
            dctx: decompressor()?,
            stored: Vec::new(),
            pages: Vec::new(),
            workers: None,
            spare: Vec::new(),
        })
    }

    /// Reads the compressed run `run` from `reader`, checks the CRC of its stored bytes and
    /// decodes them: returns the run's pages (exactly `run.npages * 4096` bytes).
    pub fn read_zstd<R: RunReader + ?Sized>(
        &mut self,
        reader: &R,
        run: &PageRun,
    ) -> Result<&[u8], Error> {
        let len = read_checked(reader, run, &mut self.stored)?;
        self.pages.resize(len, 0);
        decode_frame(&mut self.dctx, &self.stored, &mut self.pages)
            .map_err(|reason| bad_run(reader, run, reason))?;
        Ok(&self.pages)
    }

    /// Reads, checks and decodes the compressed runs `runs` and calls `write(run, pages)` for
    /// each, in order. The runs are read and CRC-checked on this thread (in an authenticated
    /// image, checked against their MACs too), decoded by worker threads (one per CPU) while
    /// the next ones are read and the decoded ones written; at most two runs per worker are in
    /// flight. The first error stops it (the runs before it were written).
    pub fn fill_runs<R: RunReader + ?Sized>(
        &mut self,
        reader: &R,
        runs: &[PageRun],
        mut write: impl FnMut(&PageRun, &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if runs.len() < 2 || thread_count(0) < 2 {
            for r in runs {
                let pages = self.read_zstd(reader, r)?;
                write(r, pages)?;
            }
            return Ok(());
        }
        if self.workers.is_none() {
            let dctxs = (0..thread_count(0))
                .map(|_| decompressor())
                .collect::<Result<Vec<_>, _>>()?;
            self.workers = Some(Workers::start("decompression", dctxs, decode_job)?);
        }
        let result = self.fill_parallel(reader, runs, &mut write);
        if let Some(w) = &mut self.workers {
            let spare = &mut self.spare;
            w.drain(|job| spare.push(job));
        }
        result
    }

    fn fill_parallel<R: RunReader + ?Sized>(
        &mut self,
        reader: &R,
        runs: &[PageRun],
        write: &mut impl FnMut(&PageRun, &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let Some(workers) = &mut self.workers else {
            return Err(Error::Internal {
                what: "decompression threads not started".into(),
            });
        };
        let max_in_flight = IN_FLIGHT_PER_WORKER * workers.len();
        let mut finish = |workers: &mut Workers<DecodeJob, DecodeJob>,
                          spare: &mut Vec<DecodeJob>|
         -> Result<(), Error> {
            let job = workers.take()?;
            let len = (job.run.npages * PAGE_SIZE) as usize;
            let done = match &job.result {
                Ok(()) => write(&job.run, &job.pages[..len]),
                Err(reason) => Err(bad_run(reader, &job.run, reason.clone())),
            };
            spare.push(job);
            done
        };
        for r in runs {
            while workers.in_flight() >= max_in_flight {
                finish(workers, &mut self.spare)?;
            }
            let mut job = self.spare.pop().unwrap_or_else(|| DecodeJob {
                run: *r,
                stored: Vec::new(),
                pages: vec![0u8; MAX_JOB_BYTES],
                result: Ok(()),
            });
            job.run = *r;
            if let Err(e) = read_checked(reader, r, &mut job.stored) {
                self.spare.push(job);
                // The runs before it first (an error of theirs comes first).
                while workers.in_flight() > 0 {
                    finish(workers, &mut self.spare)?;
                }
                return Err(e);
            }
            workers.submit(job)?;
        }
        while workers.in_flight() > 0 {
            finish(workers, &mut self.spare)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fill::{EagerFill, PageFill};
    use super::*;
    use stasis_image::{ImageDir, ImageKey, RawReader, RawWriter, RecordKind};

    const PG: usize = PAGE_SIZE as usize;

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

    /// A reader that must not be read.
    struct Unread;

    impl RunReader for Unread {
        fn read_bytes(&self, _: u64, _: &mut [u8]) -> Result<(), Error> {
            panic!("read of a run that should have been refused first")
        }

        fn bad_crc(&self, _run: &PageRun) -> Error {
            Error::Invalid("bad crc".into())
        }

        fn in_image(&self, image: u32) -> Option<&dyn RunReader> {
            (image == 0).then_some(self as &dyn RunReader)
        }
    }

    /// Pseudo-random bytes (incompressible).
    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Heap-like data: text records with numbers, compressible.
    fn heapish(n: usize, seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 64);
        let mut i = seed;
        while v.len() < n {
            v.extend_from_slice(format!("key-{i}:value-{}|", i * 7919 % 10007).as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn pool(threads: usize) -> ZstdPool {
        ZstdPool::new(Compression {
            level: DEFAULT_LEVEL,
            threads,
        })
        .unwrap()
    }

    /// Decodes every run of `payload` back, raw or compressed.
    fn decode_all(runs: &[PageRun], payload: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let reader = InMemory(payload.to_vec());
        let mut d = RunDecoder::new().unwrap();
        runs.iter()
            .map(|r| {
                let bytes = match r.codec {
                    RunCodec::Zstd => d.read_zstd(&reader, r).unwrap().to_vec(),
                    RunCodec::Raw => {
                        let at = r.offset as usize;
                        payload[at..at + r.stored_len as usize].to_vec()
                    }
                    RunCodec::Inherited => panic!("a sink made an inherited run"),
                };
                (r.addr, bytes)
            })
            .collect()
    }

    #[test]
    fn runs_round_trip_in_order_and_incompressible_ones_stay_raw() {
        let mut pool = pool(2);
        let mut sink = ZstdSink::new(&mut pool, Vec::new());
        // Many runs of different sizes and kinds, more than the pool holds in flight.
        let mut put = Vec::new();
        for i in 0..40u64 {
            let npages = 1 + (i as usize * 37) % 512;
            let data = match i % 3 {
                0 => random(npages * PG, i + 1),
                1 => heapish(npages * PG, i),
                _ => {
                    let mut d = heapish(npages * PG, i);
                    let half = d.len() / 2;
                    d[..half].copy_from_slice(&random(half, i + 100));
                    d
                }
            };
            let addr = 0x7f00_0000_0000 + i * (1 << 21);
            sink.put(addr, &data).unwrap();
            put.push((addr, data));
        }
        let runs = sink.finish().unwrap();
        let payload = sink.payload().clone();
        drop(sink);
        assert_eq!(runs.len(), 40);
        // Offsets follow each other in the order put (raw runs on a page boundary, after
        // zeros); CRCs cover the stored bytes.
        let mut at = 0u64;
        for (r, (addr, data)) in runs.iter().zip(&put) {
            assert_eq!((r.addr, r.npages), (*addr, (data.len() / PG) as u64));
            if r.codec == RunCodec::Raw {
                let aligned = at.next_multiple_of(PAGE_SIZE);
                assert!(payload[at as usize..aligned as usize]
                    .iter()
                    .all(|&b| b == 0));
                at = aligned;
            }
            assert_eq!(r.offset, at);
            at += r.stored_len;
            let stored = &payload[r.offset as usize..(r.offset + r.stored_len) as usize];
            assert_eq!(crc32c::crc32c(stored), r.crc);
            assert_eq!(r.image, 0);
            match r.codec {
                RunCodec::Zstd => assert!(r.stored_len < r.npages * PAGE_SIZE),
                RunCodec::Raw => assert_eq!(stored, &data[..]),
                RunCodec::Inherited => panic!("a sink made an inherited run"),
            }
        }
        assert_eq!(at, payload.len() as u64);
        for (i, r) in runs.iter().enumerate() {
            let want = if i % 3 == 0 {
                RunCodec::Raw
            } else {
                RunCodec::Zstd
            };
            assert_eq!(r.codec, want, "run {i}");
        }
        assert_eq!(decode_all(&runs, &payload), put);
        // The pool serves the next process's sink.
        let mut sink = ZstdSink::new(&mut pool, Vec::new());
        sink.put(0x1000, &heapish(3 * PG, 5)).unwrap();
        let runs = sink.finish().unwrap();
        assert_eq!(runs[0].offset, 0);
        assert_eq!(
            decode_all(&runs, sink.payload()),
            vec![(0x1000, heapish(3 * PG, 5))]
        );
    }

    #[test]
    fn a_sink_given_up_leaves_nothing_behind() {
        let mut pool = pool(1);
        let mut sink = ZstdSink::new(&mut pool, Vec::new());
        sink.put(0x1000, &heapish(PG, 1)).unwrap();
        sink.put(0x3000, &heapish(PG, 2)).unwrap();
        drop(sink); // an error in the dump: no finish
        let mut sink = ZstdSink::new(&mut pool, Vec::new());
        sink.put(0x9000, &heapish(2 * PG, 3)).unwrap();
        let runs = sink.finish().unwrap();
        assert_eq!(
            decode_all(&runs, sink.payload()),
            vec![(0x9000, heapish(2 * PG, 3))]
        );
    }

    #[test]
    fn refuses_partial_pages_and_bad_levels() {
        let mut pool = pool(1);
        let mut sink = ZstdSink::new(&mut pool, Vec::new());
        assert!(sink.put(0x1000, &[1u8; 100]).is_err());
        assert!(sink.put(0x1001, &[1u8; PG]).is_err());
        assert!(sink.put(0x1000, &[]).is_err());
        assert!(sink.finish().unwrap().is_empty());
        for level in [0, 20, 22, -8, i32::MIN] {
            let c = Compression { level, threads: 1 };
            assert!(c.check().is_err(), "{level}");
            assert!(ZstdPool::new(c).is_err(), "{level}");
        }
        for level in [-7, -1, 1, 3, 19] {
            Compression { level, threads: 1 }.check().unwrap();
        }
    }

    /// Many compressed runs through the decoding threads: written in order; a bad run stops
    /// the fill after the runs before it, and the decoder still works afterwards.
    #[test]
    fn fill_runs_decode_in_parallel_in_order() {
        let mut pool = pool(2);
        let mut sink = ZstdSink::new(&mut pool, Vec::new());
        let mut put = Vec::new();
        for i in 0..24u64 {
            let data = heapish((1 + (i as usize * 13) % 64) * PG, i);
            sink.put(0x100000 * (i + 1), &data).unwrap();
            put.push((0x100000 * (i + 1), data));
        }
        let runs = sink.finish().unwrap();
        let payload = InMemory(sink.payload().clone());
        drop(sink);
        assert!(runs.iter().all(|r| r.codec == RunCodec::Zstd));
        let mut d = RunDecoder::new().unwrap();
        let mut got = Vec::new();
        d.fill_runs(&payload, &runs, |r, pages| {
            got.push((r.addr, pages.to_vec()));
            Ok(())
        })
        .unwrap();
        assert!(got == put, "wrong pages");

        for (bad_at, break_it) in [
            (10, &(|r: &mut PageRun| r.crc ^= 1) as &dyn Fn(&mut PageRun)),
            (15, &|r: &mut PageRun| r.npages -= 1),
            (0, &|r: &mut PageRun| r.npages = MAX_ZSTD_RUN_PAGES + 1),
        ] {
            let mut bad = runs.clone();
            break_it(&mut bad[bad_at]);
            let mut got = Vec::new();
            let e = d.fill_runs(&payload, &bad, |r, pages| {
                got.push((r.addr, pages.to_vec()));
                Ok(())
            });
            assert!(e.is_err(), "run {bad_at}");
            assert_eq!(got.len(), bad_at, "run {bad_at}");
            assert!(got == put[..bad_at], "run {bad_at}: wrong pages written");
        }
        // An error of the writer stops it too.
        let mut n = 0;
        let e = d.fill_runs(&payload, &runs, |_, _| {
            n += 1;
            if n == 5 {
                Err(Error::Invalid("full".into()))
            } else {
                Ok(())
            }
        });
        assert!(e.is_err() && n == 5);
        let mut got = Vec::new();
        d.fill_runs(&payload, &runs, |r, pages| {
            got.push((r.addr, pages.to_vec()));
            Ok(())
        })
        .unwrap();
        assert!(got == put, "wrong pages after errors");
    }

    /// Frames of every accepted level, the slowest included, decode with the decoder's
    /// bounded window.
    #[test]
    fn every_level_decodes() {
        let data = heapish(MAX_JOB_BYTES / 2, 4);
        for level in [*LEVELS.start(), -1, DEFAULT_LEVEL, 3, *LEVELS.end()] {
            let mut pool = ZstdPool::new(Compression { level, threads: 1 }).unwrap();
            let mut sink = ZstdSink::new(&mut pool, Vec::new());
            sink.put(0x200000, &data).unwrap();
            let runs = sink.finish().unwrap();
            assert_eq!(runs[0].codec, RunCodec::Zstd, "level {level}");
            assert_eq!(
                decode_all(&runs, sink.payload()),
                vec![(0x200000, data.clone())],
                "level {level}"
            );
        }
    }

    /// One compressed run of `npages` pages of heap-like data, with its payload.
    fn one_run(npages: usize) -> (PageRun, Vec<u8>, Vec<u8>) {
        let data = heapish(npages * PG, 9);
        let mut pool = pool(1);
        let mut sink = ZstdSink::new(&mut pool, Vec::new());
        sink.put(0x10000, &data).unwrap();
        let runs = sink.finish().unwrap();
        assert_eq!(runs[0].codec, RunCodec::Zstd);
        let payload = sink.payload().clone();
        (runs[0], payload, data)
    }

    fn error_of(run: &PageRun, payload: Vec<u8>) -> String {
        let mut d = RunDecoder::new().unwrap();
        d.read_zstd(&InMemory(payload), run)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn crc_mismatch_is_refused_before_decoding() {
        let (run, payload, _) = one_run(4);
        let bad = PageRun {
            crc: run.crc ^ 1,
            ..run
        };
        assert_eq!(error_of(&bad, payload.clone()), "bad crc");
        // A changed byte without its CRC fixed up: the same.
        let mut changed = payload;
        changed[run.stored_len as usize / 2] ^= 0x40;
        assert_eq!(error_of(&run, changed), "bad crc");
    }

    #[test]
    fn corrupt_frames_are_refused() {
        let (run, payload, _) = one_run(4);
        // Changed bytes whose CRC was fixed up: zstd must notice (or the length check does).
        for at in [
            0usize,
            4,
            run.stored_len as usize / 2,
            run.stored_len as usize - 1,
        ] {
            let mut p = payload.clone();
            p[at] ^= 0xff;
            let fixed = PageRun {
                crc: crc32c::crc32c(&p[..run.stored_len as usize]),
                ..run
            };
            let mut d = RunDecoder::new().unwrap();
            match d.read_zstd(&InMemory(p), &fixed) {
                Err(e) => assert!(e.to_string().contains("0x10000"), "{e}"),
                // A byte of a literal may change without breaking the frame: then the
                // pages differ, which only the CRC of the stored bytes can tell.
                Ok(pages) => assert_ne!(pages, &heapish(4 * PG, 9)[..], "byte {at}"),
            }
        }
        // Not zstd at all.
        let junk = vec![0x55u8; 100];
        let run_junk = PageRun {
            stored_len: 100,
            crc: crc32c::crc32c(&junk),
            offset: 0,
            ..run
        };
        let e = error_of(&run_junk, junk);
        assert!(e.contains("not a zstd frame"), "{e}");
        // Two frames one after the other.
        let frame = payload[..run.stored_len as usize].to_vec();
        let two = [frame.clone(), frame].concat();
        let run_two = PageRun {
            stored_len: two.len() as u64,
            crc: crc32c::crc32c(&two),
            npages: 8,
            ..run
        };
        let e = error_of(&run_two, two);
        assert!(e.contains("not one zstd frame"), "{e}");
        // Truncated.
        let cut = PageRun {
            stored_len: run.stored_len - 1,
            crc: crc32c::crc32c(&payload[..run.stored_len as usize - 1]),
            ..run
        };
        assert!(error_of(&cut, payload).contains("0x10000"));
    }

    #[test]
    fn frames_must_decode_to_exactly_the_run() {
        let (run, payload, _) = one_run(4);
        let longer = PageRun { npages: 5, ..run };
        let e = error_of(&longer, payload.clone());
        assert!(e.contains("decode"), "{e}");
        let shorter = PageRun { npages: 3, ..run };
        let e = error_of(&shorter, payload);
        assert!(e.contains("decode"), "{e}");
    }

    #[test]
    fn lengths_are_bounded_before_any_read() {
        let (run, _, _) = one_run(4);
        let mut d = RunDecoder::new().unwrap();
        for bad in [
            PageRun {
                npages: MAX_ZSTD_RUN_PAGES + 1,
                ..run
            },
            PageRun {
                npages: u64::MAX,
                ..run
            },
            PageRun { npages: 0, ..run },
            PageRun {
                stored_len: 4 * PAGE_SIZE,
                ..run
            },
            PageRun {
                stored_len: 0,
                ..run
            },
            PageRun {
                codec: RunCodec::Raw,
                ..run
            },
        ] {
            assert!(d.read_zstd(&Unread, &bad).is_err(), "{bad:?}");
        }
    }

    /// Compressed runs of an authenticated image are filled into this very process; a run
    /// changed after the dump (CRC fixed up or not) is refused and not written.
    #[test]
    fn authenticated_compressed_runs_fill_and_changed_ones_are_refused() {
        let d = std::env::temp_dir().join(format!("stasis-zstd-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let key = ImageKey::from_secret(&[7; 32]);
        let mut target = vec![0u8; 12 * PG];
        let base = (target.as_mut_ptr() as u64).next_multiple_of(PAGE_SIZE);
        let skip = (base - target.as_ptr() as u64) as usize;
        let a = heapish(4 * PG, 1);
        let b = random(2 * PG, 3);
        let c = heapish(3 * PG, 2);
        let runs = {
            let dir = ImageDir::open(&d).unwrap();
            dir.seal(&key).unwrap();
            let mut w = RawWriter::create(&dir, "pages-1.img", RecordKind::Pages).unwrap();
            let mut pool = pool(2);
            let mut sink = ZstdSink::new(&mut pool, &mut w);
            sink.put(base, &a).unwrap();
            sink.put(base + 5 * PAGE_SIZE, &b).unwrap();
            sink.put(base + 8 * PAGE_SIZE, &c).unwrap();
            let runs = sink.finish().unwrap();
            drop(sink);
            w.finish().unwrap();
            stasis_image::write_record_atomic(
                &dir,
                stasis_image::names::INVENTORY,
                RecordKind::Inventory,
                &1u8,
            )
            .unwrap();
            runs
        };
        let codecs: Vec<RunCodec> = runs.iter().map(|r| r.codec).collect();
        assert_eq!(codecs, [RunCodec::Zstd, RunCodec::Raw, RunCodec::Zstd]);
        let me = stasis_sys::process::getpid();
        {
            let dir = ImageDir::open(&d).unwrap();
            assert!(dir.authenticate(&key).unwrap());
            let pages = RawReader::open(&dir, "pages-1.img", RecordKind::Pages).unwrap();
            EagerFill::new(&pages).fill(me, &runs).unwrap();
            let now = std::hint::black_box(&target[skip..]);
            assert!(now[..4 * PG] == a[..]);
            assert!(now[5 * PG..7 * PG] == b[..]);
            assert!(now[8 * PG..11 * PG] == c[..]);
        }
        target[skip..skip + 11 * PG].fill(0);
        // A byte of the last run changed.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("pages-1.img"))
            .unwrap();
        let at = stasis_image::RAW_DATA_OFFSET + runs[2].offset + runs[2].stored_len / 2;
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a], at).unwrap();
        let dir = ImageDir::open(&d).unwrap();
        assert!(dir.authenticate(&key).unwrap());
        let pages = RawReader::open(&dir, "pages-1.img", RecordKind::Pages).unwrap();
        let err = EagerFill::new(&pages)
            .fill(me, &runs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not authenticated"), "{err}");
        let now = std::hint::black_box(&target[skip..]);
        assert!(now[..4 * PG] == a[..], "the runs before it are written");
        assert!(
            now[8 * PG..11 * PG].iter().all(|&x| x == 0),
            "bytes of the changed run were written"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// Figures for the README: `STASIS_MEASURE_PAGES=FILE[,FILE...] cargo test --release -p
/// stasis-engine measure_compression -- --ignored --nocapture`, each FILE the pages file of an
/// uncompressed dump (zero pages already cut, as the sink sees them).
#[cfg(test)]
mod measure {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore = "a measurement, not a test: see the module doc"]
    fn measure_compression() {
        let Ok(files) = std::env::var("STASIS_MEASURE_PAGES") else {
            eprintln!("STASIS_MEASURE_PAGES is not set");
            return;
        };
        for f in files.split(',') {
            let all = std::fs::read(f).unwrap();
            let data = &all[stasis_image::RAW_DATA_OFFSET as usize..];
            let mb = data.len() as f64 / 1e6;
            println!("{f}: {mb:.0} MB of non-zero pages");
            for level in [-7, -5, -3, -1, 1, 2, 3] {
                let mut c = zstd::bulk::Compressor::new(level).unwrap();
                let mut d = zstd::bulk::Decompressor::new().unwrap();
                let mut out = vec![0u8; MAX_JOB_BYTES + 1024];
                let mut back = vec![0u8; MAX_JOB_BYTES];
                let (mut stored, mut tc, mut td) = (0usize, 0f64, 0f64);
                for chunk in data.chunks(MAX_JOB_BYTES) {
                    let t = Instant::now();
                    let n = c.compress_to_buffer(chunk, &mut out[..]).unwrap();
                    tc += t.elapsed().as_secs_f64();
                    if n < chunk.len() {
                        let t = Instant::now();
                        let m = d
                            .decompress_to_buffer(&out[..n], &mut back[..chunk.len()])
                            .unwrap();
                        td += t.elapsed().as_secs_f64();
                        assert_eq!(m, chunk.len());
                        stored += n;
                    } else {
                        stored += chunk.len();
                    }
                }
                println!(
                    "  level {level:>3}: ratio {:.2}, compress {:.0} MB/s, decompress {:.0} MB/s (one core)",
                    data.len() as f64 / stored as f64,
                    mb / tc,
                    mb / td
                );
            }
            for threads in [1, 2] {
                let mut pool = ZstdPool::new(Compression {
                    level: DEFAULT_LEVEL,
                    threads,
                })
                .unwrap();
                let t = Instant::now();
                let mut sink = ZstdSink::new(&mut pool, Vec::with_capacity(data.len()));
                for (i, chunk) in data.chunks(MAX_JOB_BYTES).enumerate() {
                    sink.put((i * MAX_JOB_BYTES) as u64, chunk).unwrap();
                }
                sink.finish().unwrap();
                let e = t.elapsed().as_secs_f64();
                println!(
                    "  ZstdSink, level 1, {threads} thread(s): {:.0} MB/s wall clock",
                    mb / e
                );
            }
        }
    }
}
