//! Dump of page contents: drives a [`PageSource`] into a [`PageSink`], dropping all-zero pages.
//!
//! [`copy_pages`] is the whole pipeline (one buffer, [`super::buffer`], reused); the zero
//! pages of each run are cut out here, before any sink sees them, so that no sink stores or
//! compresses them. [`dump_pages`] is today's pipeline for one process of the tree.

use super::buffer::GrowingBuffer;
use super::compress::{ZstdPool, ZstdSink};
use super::cow::CowParent;
use super::incremental::{IncrementalSink, ParentRuns};
use super::sink::{PageSink, RawSink};
use super::source::{PageSource, PagemapSource, Stoppable};
use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RawWriter, Vma};
use stasis_sys::Pid;
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;

/// Streams the page contents of every mapping of the frozen process `pid` into `out` and
/// returns the runs written. Shared anonymous memory is stored once, with the first mapping of
/// it in the tree: `shmem_done` holds the objects already stored. With `parent` (an
/// incremental dump), only the pages that differ from the parent's are written; the runs
/// returned refer to the parent's runs for the others. With `compress`, the runs written are
/// zstd frames compressed by its workers. With `cow` (its frozen parent in the tree), pages
/// shared with the parent are not stored but listed as inherited ([`super::cow`]). Once
/// `stop` is set, no more pages are read and the copy fails. `without_pages` (by index in
/// `vmas`, may be empty): the mappings known to hold no page of the process's own
/// ([`super::vma::without_own_pages`]), not looked at.
#[allow(clippy::too_many_arguments)]
pub fn dump_pages(
    pid: Pid,
    vmas: &[Vma],
    without_pages: &[bool],
    out: &mut RawWriter,
    shmem_done: &mut HashSet<u64>,
    parent: Option<ParentRuns<'_>>,
    compress: Option<&mut ZstdPool>,
    cow: Option<CowParent>,
    stop: &AtomicBool,
) -> Result<Vec<PageRun>, Error> {
    let mut source = PagemapSource::open(pid, vmas, shmem_done)?
        .share_with(cow)
        .skipping(without_pages);
    let mut stoppable = Stoppable {
        source: &mut source,
        stop,
    };
    let mut runs = match compress {
        Some(pool) => store(&mut stoppable, ZstdSink::new(pool, out), parent),
        None => store(&mut stoppable, RawSink::new(out), parent),
    }?;
    let inherited = source.take_inherited();
    if !inherited.is_empty() {
        tracing::debug!(
            pages = inherited.iter().map(|r| r.npages).sum::<u64>(),
            "pages shared with the parent (stored once, with the parent)"
        );
        runs.extend(inherited);
        runs.sort_by_key(|r| r.addr);
    }
    Ok(runs)
}

/// Copies `source` into `sink`, through an [`IncrementalSink`] with `parent`.
pub(crate) fn store<S: PageSink>(
    source: &mut dyn PageSource,
    sink: S,
    parent: Option<ParentRuns<'_>>,
) -> Result<Vec<PageRun>, Error> {
    match parent {
        None => {
            let mut sink = sink;
            copy_pages(source, &mut sink)?;
            sink.finish()
        }
        Some(parent) => {
            let mut sink = IncrementalSink::new(sink, parent);
            copy_pages(source, &mut sink)?;
            let d = sink.diffed();
            tracing::debug!(
                unchanged = d.unchanged,
                changed = d.changed,
                new = d.new,
                "pages compared with the parent dump"
            );
            sink.finish()
        }
    }
}

/// What [`copy_pages`] moved, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Pages the source handed out.
    pub read: u64,
    /// Pages given to the sink (the others were all zero).
    pub stored: u64,
}

/// Moves every run of `source` into `sink`, without its all-zero pages. The sink is not
/// finished: its caller takes the run index with [`PageSink::finish`].
pub fn copy_pages(source: &mut dyn PageSource, sink: &mut dyn PageSink) -> Result<Copied, Error> {
    let mut buffer = GrowingBuffer::new();
    let mut copied = Copied::default();
    loop {
        let buf = buffer.bytes(source.min_buffer())?;
        let Some(span) = source.next_run(buf)? else {
            break;
        };
        let data = &buf[..span.len()];
        copied.read += span.npages;
        for (first, end) in NonZeroRuns::new(data) {
            let bytes = &data[first * PAGE_SIZE as usize..end * PAGE_SIZE as usize];
            crate::fault::point("writing a page run")?;
            sink.put(span.addr + first as u64 * PAGE_SIZE, bytes)?;
            copied.stored += (end - first) as u64;
        }
        buffer.went_through(span.len());
    }
    Ok(copied)
}

/// Whether a page holds only zeros.
///
/// A page with data nearly always has some in its first bytes: those are looked at first,
/// then the rest in blocks of 256 bytes (each one OR-reduced, which vectorizes), stopping at
/// the first block with a non-zero byte. (Reducing the whole page took 14 % of a 1 GiB dump.)
pub fn is_zero_page(p: &[u8]) -> bool {
    let (head, rest) = p.split_at(p.len().min(64));
    all_zero(head) && rest.chunks(256).all(all_zero)
}

/// Whether `b` holds only zeros (all of it read: for short blocks). A plain OR of the bytes,
/// which the compiler makes 16 bytes at a time (about 35 µs per MiB here; gathering u64
/// words from 8 bytes each did not vectorize: 350 µs per MiB).
fn all_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |acc, &x| acc | x) == 0
}

/// The maximal stretches `first..end` (page indices) of pages of `data` that are not all zero.
pub struct NonZeroRuns<'a> {
    pages: std::slice::ChunksExact<'a, u8>,
    next: usize,
}

impl<'a> NonZeroRuns<'a> {
    /// Over `data`, whole pages (a partial page at the end is ignored).
    pub fn new(data: &'a [u8]) -> Self {
        NonZeroRuns {
            pages: data.chunks_exact(PAGE_SIZE as usize),
            next: 0,
        }
    }
}

impl Iterator for NonZeroRuns<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let first = loop {
            let page = self.pages.next()?;
            self.next += 1;
            if !is_zero_page(page) {
                break self.next - 1;
            }
        };
        for page in self.pages.by_ref() {
            if is_zero_page(page) {
                // This zero page is consumed: the next run starts after it.
                self.next += 1;
                return Some((first, self.next - 1));
            }
            self.next += 1;
        }
        Some((first, self.next))
    }
}

#[cfg(test)]
mod tests {
    use super::super::source::{PageSpan, MAX_RUN_PAGES};
    use super::super::vma::collect_vmas;
    use super::*;

    const PG: usize = PAGE_SIZE as usize;

    #[test]
    fn zero_pages_are_found_wherever_their_one_byte_is() {
        let mut page = vec![0u8; PG];
        assert!(is_zero_page(&page));
        for at in [0, 7, 63, 64, 65, 255, 319, 320, 2048, PG - 9, PG - 1] {
            page[at] = 1;
            assert!(!is_zero_page(&page), "byte {at}");
            page[at] = 0;
        }
        // Not a multiple of the blocks or of 8 bytes.
        assert!(is_zero_page(&page[..1001]));
        assert!(!is_zero_page(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 3]));
        assert!(is_zero_page(&[]));
    }

    /// `pattern` has one character per page: '0' a zero page, anything else a page of it.
    fn pages(pattern: &str) -> Vec<u8> {
        pattern
            .bytes()
            .flat_map(|c| {
                let mut p = vec![if c == b'0' { 0 } else { c }; PG];
                if c != b'0' {
                    p[0] = 0; // non-zero pages need not start with a non-zero byte
                }
                p
            })
            .collect()
    }

    #[test]
    fn zero_pages() {
        let mut p = vec![0u8; PG];
        assert!(is_zero_page(&p));
        p[PG - 1] = 1;
        assert!(!is_zero_page(&p));
    }

    #[test]
    fn non_zero_runs() {
        let runs = |pattern: &str| NonZeroRuns::new(&pages(pattern)).collect::<Vec<_>>();
        assert_eq!(runs(""), vec![]);
        assert_eq!(runs("000"), vec![]);
        assert_eq!(runs("a"), vec![(0, 1)]);
        assert_eq!(runs("ab0c"), vec![(0, 2), (3, 4)]);
        assert_eq!(runs("00ab00c00"), vec![(2, 4), (6, 7)]);
        assert_eq!(runs("a0b0c"), vec![(0, 1), (2, 3), (4, 5)]);
    }

    /// A source of fixed runs (`pattern` per run, as in [`pages`]).
    struct Fixed(Vec<(u64, &'static str)>);

    impl PageSource for Fixed {
        fn next_run(&mut self, buf: &mut [u8]) -> Result<Option<PageSpan>, Error> {
            if self.0.is_empty() {
                return Ok(None);
            }
            let (addr, pattern) = self.0.remove(0);
            let data = pages(pattern);
            buf[..data.len()].copy_from_slice(&data);
            Ok(Some(PageSpan {
                addr,
                npages: pattern.len() as u64,
            }))
        }
    }

    #[test]
    fn copy_drops_zero_pages_and_indexes_the_rest() {
        let mut source = Fixed(vec![(0x10000, "ab0c"), (0x20000, "000"), (0x30000, "0dd")]);
        let mut sink = RawSink::new(Vec::new());
        let copied = copy_pages(&mut source, &mut sink).unwrap();
        assert_eq!(
            copied,
            Copied {
                read: 10,
                stored: 5
            }
        );
        let runs = sink.finish().unwrap();
        let at: Vec<(u64, u64, u64)> = runs.iter().map(|r| (r.addr, r.npages, r.offset)).collect();
        assert_eq!(
            at,
            vec![
                (0x10000, 2, 0),
                (0x13000, 1, 2 * PAGE_SIZE),
                (0x31000, 2, 3 * PAGE_SIZE)
            ]
        );
        let payload = sink.payload();
        assert_eq!(payload.len(), 5 * PG);
        assert_eq!(payload[..2 * PG], pages("ab")[..]);
        assert_eq!(payload[2 * PG..3 * PG], pages("c")[..]);
        assert_eq!(payload[3 * PG..], pages("dd")[..]);
        for r in &runs {
            let bytes = &payload[r.offset as usize..r.offset as usize + r.npages as usize * PG];
            assert_eq!(crc32c::crc32c(bytes), r.crc);
        }
    }

    /// The real source on a real (idle) process: every run lies in one mapping, in order, at
    /// most a batch long, and holds exactly the process's bytes.
    #[test]
    fn pagemap_source_reads_a_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pid = child.id() as Pid;
        let vmas = collect_vmas(pid).unwrap();
        let mut done = HashSet::new();
        let mut source = PagemapSource::open(pid, &vmas, &mut done).unwrap();
        let mut sink = RawSink::new(Vec::new());
        let copied = copy_pages(&mut source, &mut sink).unwrap();
        let runs = sink.finish().unwrap();
        let payload = sink.payload();
        assert!(!runs.is_empty() && copied.stored > 0 && copied.read >= copied.stored);
        assert_eq!(payload.len() as u64, copied.stored * PAGE_SIZE);
        let mut prev_end = 0;
        for r in &runs {
            let end = r.addr + r.npages * PAGE_SIZE;
            assert!(r.addr >= prev_end && r.npages <= 512, "{r:?}");
            prev_end = end;
            let v = vmas.iter().find(|v| v.start <= r.addr && end <= v.end);
            let v = v.unwrap_or_else(|| panic!("{r:?} is not inside one mapping"));
            assert!(!super::super::vma::is_special(&v.kind));
            let bytes = &payload[r.offset as usize..(r.offset + r.npages * PAGE_SIZE) as usize];
            assert_eq!(crc32c::crc32c(bytes), r.crc);
            assert!(bytes.chunks(PG).all(|p| !is_zero_page(p)));
            if v.prot & libc::PROT_READ as u32 != 0 {
                let mut now = vec![0u8; bytes.len()];
                stasis_sys::proc_mem::read_exact(pid, r.addr, &mut now).unwrap();
                assert!(now == bytes, "{r:?} differs from the process's memory");
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs `script` in python3 and returns it with the first line it printed (once ready).
    fn python_ready(script: &str) -> (std::process::Child, String) {
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        (child, line)
    }

    /// The pages of `pid` as `copy_pages` stores them (runs and payload), skipping the
    /// mappings flagged in `skip`, read through a buffer of `buf_pages` pages at most.
    fn store_of(
        pid: Pid,
        vmas: &[Vma],
        skip: &[bool],
        buf_pages: usize,
    ) -> (Vec<PageRun>, Vec<u8>) {
        struct Short<'a>(PagemapSource<'a>, usize);
        impl PageSource for Short<'_> {
            fn next_run(&mut self, buf: &mut [u8]) -> Result<Option<PageSpan>, Error> {
                let n = (self.1 * PG).min(buf.len());
                let span = self.0.next_run(&mut buf[..n])?;
                assert!(
                    span.is_none_or(|s| s.len() <= n),
                    "{span:?} is longer than the buffer"
                );
                Ok(span)
            }
        }
        let mut done = HashSet::new();
        let source = PagemapSource::open(pid, vmas, &mut done)
            .unwrap()
            .skipping(skip);
        let mut source = Short(source, buf_pages);
        let mut sink = RawSink::new(Vec::new());
        copy_pages(&mut source, &mut sink).unwrap();
        let runs = sink.finish().unwrap();
        (runs, sink.payload().to_vec())
    }

    /// Mappings whose smaps count no page of the process's own are flagged (untouched
    /// anonymous memory, a private file mapping never written), the others not (written
    /// anonymous memory, a private file mapping with a page copied on write); a copy that
    /// skips the flagged ones stores exactly what a full one stores, through a buffer of any
    /// size.
    #[test]
    fn mappings_without_own_pages_are_skipped_to_the_same_pages() {
        let script = "import mmap,time,ctypes\n\
                      f=open('/proc/self/exe','rb')\n\
                      P=mmap.MAP_PRIVATE\n\
                      RW=mmap.PROT_READ|mmap.PROT_WRITE\n\
                      untouched=mmap.mmap(-1,64<<20,flags=P|mmap.MAP_ANONYMOUS,prot=mmap.PROT_READ)\n\
                      written=mmap.mmap(-1,300*4096,flags=P|mmap.MAP_ANONYMOUS)\n\
                      for i in range(300): written[i*4096:i*4096+3]=b'abc'\n\
                      clean=mmap.mmap(f.fileno(),8192,flags=P,prot=RW)\n\
                      dirty=mmap.mmap(f.fileno(),8192,flags=P,prot=RW)\n\
                      dirty[5]=7\n\
                      at=lambda m: ctypes.addressof(ctypes.c_char.from_buffer(m))\n\
                      print(*(at(m) for m in (written,clean,dirty)),flush=True)\n\
                      time.sleep(30)\n";
        let (mut child, line) = python_ready(script);
        let at: Vec<u64> = line
            .split_whitespace()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(at.len(), 3, "{line:?}");
        let pid = child.id() as Pid;
        stasis_sys::process::kill(pid, libc::SIGSTOP).unwrap();
        let (vmas, maps) = super::super::vma::collect_vmas_and_maps(pid, None).unwrap();
        let skip = super::super::vma::without_own_pages(&maps);
        assert_eq!(skip.len(), vmas.len());
        let flag = |at: u64| {
            let i = vmas.iter().position(|v| v.start <= at && at < v.end);
            skip[i.unwrap_or_else(|| panic!("no mapping at {at:#x}"))]
        };
        // (Read-only: a mapping with a neighbour of the same kind would be merged with it.)
        let untouched = vmas.iter().position(|v| {
            v.end - v.start == 64 << 20 && v.prot == libc::PROT_READ as u32 && !v.shared
        });
        assert!(skip[untouched.unwrap()], "untouched anonymous memory");
        assert!(!flag(at[0]), "written anonymous memory");
        assert!(flag(at[1]), "a private file mapping never written");
        assert!(
            !flag(at[2]),
            "a private file mapping with a page copied on write"
        );
        // Nothing is flagged without counts read now (maps read earlier).
        let hinted: Vec<_> = maps
            .iter()
            .map(|m| crate::procfs::MapEntry {
                own_kib: None,
                ..m.clone()
            })
            .collect();
        assert!(super::super::vma::without_own_pages(&hinted)
            .iter()
            .all(|s| !s));
        let full = store_of(pid, &vmas, &[], MAX_RUN_PAGES as usize);
        assert_eq!(store_of(pid, &vmas, &skip, MAX_RUN_PAGES as usize), full);
        // Through short buffers: the same pages in shorter runs.
        for pages in [1, 7, 32] {
            let (runs, payload) = store_of(pid, &vmas, &skip, pages);
            assert_eq!(payload, full.1, "{pages}-page buffer");
            assert!(runs.iter().all(|r| r.npages <= pages as u64));
            let total = |r: &[PageRun]| r.iter().map(|r| r.npages).sum::<u64>();
            assert_eq!(total(&runs), total(&full.0));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Shared anonymous memory is read from its object (only the pages that exist), and only
    /// by the first source of the tree that meets it.
    #[test]
    fn pagemap_source_reads_shared_memory_once() {
        if stasis_sys::process::geteuid() != 0 {
            eprintln!("skipped: /proc/PID/map_files needs root");
            return;
        }
        // 64 pages of MAP_SHARED|MAP_ANONYMOUS; pages 3, 4 and 40 written (4 with zeros).
        let script = "import mmap,sys,time\n\
                      m=mmap.mmap(-1,64*4096)\n\
                      m[3*4096:4*4096]=b'x'*4096\n\
                      m[4*4096:5*4096]=bytes(4096)\n\
                      m[40*4096:40*4096+1]=b'y'\n\
                      print(len(m),flush=True)\n\
                      time.sleep(30)\n";
        let (mut child, line) = python_ready(script);
        assert_eq!(line.trim(), (64 * 4096).to_string());
        let pid = child.id() as Pid;
        let vmas = collect_vmas(pid).unwrap();
        let shm = vmas
            .iter()
            .find(|v| v.shmem_id != 0 && v.end - v.start == 64 * PAGE_SIZE)
            .unwrap()
            .clone();
        let mut done = HashSet::new();
        let mut source = PagemapSource::open(pid, &vmas, &mut done).unwrap();
        let mut sink = RawSink::new(Vec::new());
        copy_pages(&mut source, &mut sink).unwrap();
        let runs = sink.finish().unwrap();
        let in_shm: Vec<(u64, u64)> = runs
            .iter()
            .filter(|r| r.addr >= shm.start && r.addr < shm.end)
            .map(|r| ((r.addr - shm.start) / PAGE_SIZE, r.npages))
            .collect();
        assert_eq!(in_shm, vec![(3, 1), (40, 1)]);
        let r = runs.iter().find(|r| r.addr == shm.start + 3 * PAGE_SIZE);
        let off = r.unwrap().offset as usize;
        assert!(sink.payload()[off..off + PG].iter().all(|&b| b == b'x'));
        assert!(done.contains(&shm.shmem_id));
        // Another process of the tree mapping the same object stores none of it.
        let mut source = PagemapSource::open(pid, &vmas, &mut done).unwrap();
        let mut sink = RawSink::new(Vec::new());
        copy_pages(&mut source, &mut sink).unwrap();
        let runs = sink.finish().unwrap();
        assert!(runs.iter().all(|r| r.addr < shm.start || r.addr >= shm.end));
        let _ = child.kill();
        let _ = child.wait();
    }
}
