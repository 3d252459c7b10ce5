//! The page sink of an incremental dump (`stasis dump --parent`): only the pages changed since
//! the parent dump are stored; the others become references to the parent's runs.
//!
//! This kernel has no soft-dirty bit, so changes are found by comparison: every page the
//! source hands out (already without its all-zero pages, see [`super::dump`]) is compared
//! with the parent's copy of the same address, read from the pages file of the image of the
//! chain that holds it (found by binary search in the parent's runs, which are sorted by
//! address). Equal pages become runs of image `k + 1` for a parent run of image `k`: a
//! sub-range of a raw run is its offset plus the distance into it, with the CRC recomputed
//! over the sub-range's bytes (equal to the pages in hand). Changed pages, and pages the
//! parent did not hold, go to the inner sink (stored in this image). Pages the parent held
//! that are now zero or unmapped are simply not listed: the record lists the complete page
//! state, and pages not listed are zero.
//!
//! A run the parent stored encoded (compressed) cannot be cut: it is referenced whole when all
//! its pages lie in one piece handed to the sink and are all unchanged (compared through
//! [`decoded_run`]), and its pages are stored anew otherwise.

use super::fill::RunReader;
use super::sink::PageSink;
use super::source::MAX_RUN_BYTES;
use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RunCodec};

const PG: usize = PAGE_SIZE as usize;
/// Longest run of references written (as long as the runs the dumper stores itself, so the
/// fill checks each one whole before writing it).
const MAX_REF_PAGES: u64 = (MAX_RUN_BYTES / PG) as u64;

/// The parent dump's pages of one process: its runs (sorted by address, not overlapping: a
/// validated record) and the pages files of its chain.
#[derive(Clone, Copy)]
pub struct ParentRuns<'a> {
    pub runs: &'a [PageRun],
    pub files: &'a dyn RunReader,
}

/// What an [`IncrementalSink`] did, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Diffed {
    /// Pages equal to the parent's, referenced.
    pub unchanged: u64,
    /// Pages that differ from the parent's copy.
    pub changed: u64,
    /// Pages the parent did not hold (or held in a run that could not be referenced).
    pub new: u64,
}

/// Stores in `inner` only what differs from `parent`; see the module documentation.
pub struct IncrementalSink<'a, S: PageSink> {
    inner: S,
    parent: ParentRuns<'a>,
    refs: Vec<PageRun>,
    /// How many of `refs` were made by earlier puts (never extended: a put lies inside one
    /// mapping, and so must every run).
    sealed: usize,
    buf: Vec<u8>,
    diffed: Diffed,
}

impl<'a, S: PageSink> IncrementalSink<'a, S> {
    pub fn new(inner: S, parent: ParentRuns<'a>) -> Self {
        IncrementalSink {
            inner,
            parent,
            refs: Vec::new(),
            sealed: 0,
            buf: Vec::new(),
            diffed: Diffed::default(),
        }
    }

    /// The counts so far.
    pub fn diffed(&self) -> Diffed {
        self.diffed
    }

    /// The inner sink (where the pages of this image went).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// References page `page` (its bytes) at `addr`, held by `run` of the parent, extending
    /// the last reference of this put when it continues it in the same file.
    fn reference(&mut self, run: &PageRun, addr: u64, page: &[u8]) {
        let offset = run.offset + (addr - run.addr);
        let image = run.image + 1;
        if let Some(last) = self.refs[self.sealed..].last_mut() {
            let len = last.npages * PAGE_SIZE;
            if last.image == image
                && last.codec == RunCodec::Raw
                && last.addr + len == addr
                && last.offset + len == offset
                && last.npages < MAX_REF_PAGES
            {
                last.npages += 1;
                last.stored_len += PAGE_SIZE;
                last.crc = crc32c::crc32c_append(last.crc, page);
                return;
            }
        }
        self.refs.push(PageRun {
            image,
            ..PageRun::raw(addr, 1, offset, crc32c::crc32c(page))
        });
    }
}

/// Pages `from..to` of `data` (at `addr`) are stored in this image.
fn store<S: PageSink>(
    inner: &mut S,
    addr: u64,
    data: &[u8],
    from: usize,
    to: usize,
) -> Result<(), Error> {
    if from < to {
        inner.put(addr + (from * PG) as u64, &data[from * PG..to * PG])?;
    }
    Ok(())
}

impl<S: PageSink> PageSink for IncrementalSink<'_, S> {
    fn put(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        if !(data.len() as u64).is_multiple_of(PAGE_SIZE) || !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Invalid(format!(
                "page run of {} bytes at {addr:#x} is not whole pages",
                data.len()
            )));
        }
        let n = data.len() / PG;
        let runs = self.parent.runs;
        self.sealed = self.refs.len();
        // Pages `pending..i` are to be stored here (not yet handed to the inner sink).
        let mut pending = 0usize;
        let mut i = 0usize;
        while i < n {
            let at = addr + (i * PG) as u64;
            let k = runs.partition_point(|r| r.addr + r.npages * PAGE_SIZE <= at);
            let Some(run) = runs.get(k).filter(|r| r.addr <= at) else {
                // The parent holds nothing here: new up to its next run.
                let next = runs
                    .get(k)
                    .map(|r| i + ((r.addr - at) / PAGE_SIZE) as usize)
                    .unwrap_or(n)
                    .min(n);
                self.diffed.new += (next - i) as u64;
                i = next;
                continue;
            };
            let run_end = run.addr + run.npages * PAGE_SIZE;
            let upto = n.min(i + ((run_end - at) / PAGE_SIZE) as usize);
            if run.codec == RunCodec::Raw {
                let files = self.parent.files;
                let file = files.in_image(run.image).ok_or_else(|| Error::Internal {
                    what: format!(
                        "the parent's run at {:#x} is in image {}, which is not open",
                        run.addr, run.image
                    ),
                })?;
                // Compared a piece at a time (a put may be longer than a buffer should be).
                let mut j = i;
                while j < upto {
                    let m = (upto - j).min(MAX_RUN_BYTES / PG);
                    let page_addr = addr + (j * PG) as u64;
                    self.buf.resize(m * PG, 0);
                    file.read_bytes(run.offset + (page_addr - run.addr), &mut self.buf)?;
                    for p in 0..m {
                        let here = &data[(j + p) * PG..(j + p + 1) * PG];
                        if here == &self.buf[p * PG..(p + 1) * PG] {
                            store(&mut self.inner, addr, data, pending, j + p)?;
                            pending = j + p + 1;
                            self.reference(run, page_addr + (p * PG) as u64, here);
                            self.diffed.unchanged += 1;
                        } else {
                            self.diffed.changed += 1;
                        }
                    }
                    j += m;
                }
            } else {
                // An encoded run: referenced whole or not at all.
                let whole = run.addr >= addr && run_end <= addr + data.len() as u64;
                let from = (run.addr.max(addr) - addr) as usize / PG;
                let same = whole
                    && decoded_run(self.parent.files, run, &mut self.buf)?
                        .is_some_and(|d| d == &data[from * PG..upto * PG]);
                if same {
                    store(&mut self.inner, addr, data, pending, from)?;
                    pending = upto;
                    self.refs.push(PageRun {
                        image: run.image + 1,
                        ..*run
                    });
                    self.diffed.unchanged += (upto - i) as u64;
                } else {
                    self.diffed.new += (upto - i) as u64;
                }
            }
            i = upto;
        }
        store(&mut self.inner, addr, data, pending, n)
    }

    fn finish(&mut self) -> Result<Vec<PageRun>, Error> {
        let mut runs = self.inner.finish()?;
        runs.append(&mut self.refs);
        runs.sort_by_key(|r| r.addr);
        Ok(runs)
    }
}

/// The page contents of the parent's `run`, decoded, in `buf` (a compressed run's stored bytes
/// are CRC-checked first); `None` when the run's image is not open. Bounded: a run longer than
/// the dumper writes is not decoded.
pub fn decoded_run<'b>(
    files: &dyn RunReader,
    run: &PageRun,
    buf: &'b mut Vec<u8>,
) -> Result<Option<&'b [u8]>, Error> {
    let Some(file) = files.in_image(run.image) else {
        return Ok(None);
    };
    let len = run.npages.saturating_mul(PAGE_SIZE);
    if len > MAX_RUN_BYTES as u64 {
        return Ok(None);
    }
    match run.codec {
        RunCodec::Raw => {
            buf.resize(len as usize, 0);
            file.read_bytes(run.offset, buf)?;
            Ok(Some(&buf[..]))
        }
        // A compressed parent (`stasis dump --compress`): read, checked and decoded.
        RunCodec::Zstd => {
            super::compress::decode_into(files, run, buf)?;
            Ok(Some(&buf[..]))
        }
        // The parent process's pages: nothing of this process's is stored to refer to.
        RunCodec::Inherited => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fill::{EagerFill, PageFill};
    use super::super::sink::RawSink;
    use super::*;

    /// One pages file in memory.
    struct File(Vec<u8>);

    impl RunReader for File {
        fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
            let at = offset as usize;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }

        fn bad_crc(&self, run: &PageRun) -> Error {
            Error::Invalid(format!("bad crc at {:#x}", run.addr))
        }

        fn in_image(&self, image: u32) -> Option<&dyn RunReader> {
            (image == 0).then_some(self as &dyn RunReader)
        }
    }

    /// The pages files of one process across a chain: element k is image k.
    struct Chain(Vec<File>);

    impl RunReader for Chain {
        fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
            self.0[0].read_bytes(offset, buf)
        }

        fn bad_crc(&self, run: &PageRun) -> Error {
            self.0[0].bad_crc(run)
        }

        fn in_image(&self, image: u32) -> Option<&dyn RunReader> {
            self.0.get(image as usize).map(|f| f as &dyn RunReader)
        }
    }

    /// One page per character, filled with it (see `dump::tests::pages`).
    fn pages(pattern: &str) -> Vec<u8> {
        pattern
            .bytes()
            .flat_map(|c| {
                let mut p = vec![c; PG];
                p[7] = 0;
                p
            })
            .collect()
    }

    /// Dumps `puts` (address, pattern) into a plain pages file.
    fn full(puts: &[(u64, &str)]) -> (Vec<PageRun>, File) {
        let mut sink = RawSink::new(Vec::new());
        for (a, p) in puts {
            sink.put(*a, &pages(p)).unwrap();
        }
        (sink.finish().unwrap(), File(sink.payload().clone()))
    }

    /// Dumps `puts` as an increment of `runs` held in `files`.
    fn incr(
        runs: &[PageRun],
        files: &dyn RunReader,
        puts: &[(u64, &str)],
    ) -> (Vec<PageRun>, File, Diffed) {
        let parent = ParentRuns { runs, files };
        let mut sink = IncrementalSink::new(RawSink::new(Vec::new()), parent);
        for (a, p) in puts {
            sink.put(*a, &pages(p)).unwrap();
        }
        let runs = sink.finish().unwrap();
        let diffed = sink.diffed();
        (runs, File(sink.inner().payload().clone()), diffed)
    }

    fn at(runs: &[PageRun]) -> Vec<(u64, u64, u64, u32)> {
        runs.iter()
            .map(|r| (r.addr, r.npages, r.offset, r.image))
            .collect()
    }

    /// Every run's CRC matches the bytes of the file of its image.
    fn check_crcs(runs: &[PageRun], chain: &Chain) {
        for r in runs {
            let f = &chain.0[r.image as usize].0;
            let bytes = &f[r.offset as usize..(r.offset + r.npages * PAGE_SIZE) as usize];
            assert_eq!(crc32c::crc32c(bytes), r.crc, "{r:?}");
        }
    }

    const A: u64 = 0x10000;
    const B: u64 = 0x40000;
    const C: u64 = 0x80000;

    #[test]
    fn unchanged_changed_new_and_removed_pages() {
        let (p_runs, p_file) = full(&[(A, "abcd"), (B, "ef")]);
        let parent = Chain(vec![p_file]);
        // Page 2 of A changed, B's pages removed (zero or unmapped), a new run at C.
        let (runs, file, d) = incr(&p_runs, &parent, &[(A, "abXd"), (C, "g")]);
        assert_eq!(
            at(&runs),
            vec![
                (A, 2, 0, 1),
                (A + 0x2000, 1, 0, 0),
                (A + 0x3000, 1, 3 * PAGE_SIZE, 1),
                (C, 1, PAGE_SIZE, 0),
            ]
        );
        assert_eq!(
            d,
            Diffed {
                unchanged: 3,
                changed: 1,
                new: 1
            }
        );
        assert_eq!(
            file.0.len(),
            2 * PG,
            "only the changed and new pages are stored"
        );
        let chain = Chain(vec![file, parent.0.into_iter().next().unwrap()]);
        check_crcs(&runs, &chain);
    }

    #[test]
    fn nothing_changed_stores_nothing_and_merges_references() {
        let (p_runs, p_file) = full(&[(A, "abcd"), (A + 0x4000, "ef")]);
        let parent = Chain(vec![p_file]);
        // One piece over two runs of the parent, contiguous in its file: one reference. Two
        // pieces (two mappings, maybe): two references, never one across them.
        let (runs, file, d) = incr(&p_runs, &parent, &[(A, "a"), (A + 0x1000, "bcdef")]);
        assert!(file.0.is_empty());
        assert_eq!(at(&runs), vec![(A, 1, 0, 1), (A + 0x1000, 5, PAGE_SIZE, 1)]);
        assert_eq!(d.unchanged, 6);
        check_crcs(
            &runs,
            &Chain(vec![file, parent.0.into_iter().next().unwrap()]),
        );
    }

    #[test]
    fn runs_of_ancestors_are_referenced_one_image_further() {
        // Grandparent: "abcd" at A. Parent: page 1 changed. Child: page 3 changed.
        let (g_runs, g_file) = full(&[(A, "abcd")]);
        let g = Chain(vec![g_file]);
        let (p_runs, p_file, _) = incr(&g_runs, &g, &[(A, "aBcd")]);
        let parent = Chain(vec![p_file, g.0.into_iter().next().unwrap()]);
        let (runs, file, d) = incr(&p_runs, &parent, &[(A, "aBcD")]);
        assert_eq!(
            at(&runs),
            vec![
                (A, 1, 0, 2),
                (A + 0x1000, 1, 0, 1),
                (A + 0x2000, 1, 2 * PAGE_SIZE, 2),
                (A + 0x3000, 1, 0, 0),
            ]
        );
        assert_eq!((d.unchanged, d.changed), (3, 1));
        let mut files = vec![file];
        files.extend(parent.0);
        let chain = Chain(files);
        check_crcs(&runs, &chain);

        // Restored from the chain into this process: exactly the child's pages.
        let mut target = vec![0u8; 6 * PG];
        let base = (target.as_mut_ptr() as u64).next_multiple_of(PAGE_SIZE);
        let skip = (base - target.as_ptr() as u64) as usize;
        let moved: Vec<PageRun> = runs
            .iter()
            .map(|r| PageRun {
                addr: r.addr - A + base,
                ..*r
            })
            .collect();
        let me = stasis_sys::process::getpid();
        EagerFill::new(&chain).fill(me, &moved).unwrap();
        let now = std::hint::black_box(&target[skip..skip + 4 * PG]);
        assert!(now == &pages("aBcD")[..]);
        // A run of an image the chain does not have is refused.
        let mut bad = moved[0];
        bad.image = 3;
        let err = EagerFill::new(&chain).fill(me, &[bad]).unwrap_err();
        assert!(err.to_string().contains("image 3"), "{err}");
    }

    #[test]
    fn compressed_parent_runs_are_decoded_and_compared() {
        use super::super::compress::{Compression, ZstdPool, ZstdSink};
        // The parent, dumped with --compress.
        let mut pool = ZstdPool::new(Compression {
            level: 1,
            threads: 1,
        })
        .unwrap();
        let mut sink = ZstdSink::new(&mut pool, Vec::new());
        sink.put(A, &pages("abcd")).unwrap();
        let p_runs = sink.finish().unwrap();
        let p_file = File(sink.payload().clone());
        drop(sink);
        assert_eq!(p_runs[0].codec, RunCodec::Zstd);
        let parent = Chain(vec![p_file]);
        // Unchanged: the compressed run is referenced whole.
        let (runs, file, d) = incr(&p_runs, &parent, &[(A, "abcd")]);
        assert_eq!(at(&runs), vec![(A, 4, 0, 1)]);
        assert_eq!(runs[0].codec, RunCodec::Zstd);
        assert!(file.0.is_empty());
        assert_eq!(d.unchanged, 4);
        // One page changed: a frame is referenced whole or not at all, so all 4 are stored.
        let (runs, file, _) = incr(&p_runs, &parent, &[(A, "abxd")]);
        assert_eq!(file.0.len(), 4 * PG);
        assert!(runs.iter().all(|r| r.image == 0));
        // A compressed parent run whose bytes do not match its CRC fails the dump.
        let mut bad = p_runs.clone();
        bad[0].crc ^= 1;
        let parent_runs = ParentRuns {
            runs: &bad,
            files: &parent,
        };
        let mut sink = IncrementalSink::new(RawSink::new(Vec::new()), parent_runs);
        assert!(sink.put(A, &pages("abcd")).is_err());
    }

    #[test]
    fn pages_around_parent_runs_are_new() {
        let (p_runs, p_file) = full(&[(A + 0x1000, "b"), (A + 0x3000, "d")]);
        let parent = Chain(vec![p_file]);
        let (runs, file, d) = incr(&p_runs, &parent, &[(A, "abcde")]);
        assert_eq!(
            at(&runs),
            vec![
                (A, 1, 0, 0),
                (A + 0x1000, 1, 0, 1),
                (A + 0x2000, 1, PAGE_SIZE, 0),
                (A + 0x3000, 1, PAGE_SIZE, 1),
                (A + 0x4000, 1, 2 * PAGE_SIZE, 0),
            ]
        );
        assert_eq!((d.unchanged, d.changed, d.new), (2, 0, 3));
        check_crcs(
            &runs,
            &Chain(vec![file, parent.0.into_iter().next().unwrap()]),
        );
    }
}
