//! Lazy restore (`stasis restore --lazy`): the pages of private anonymous memory are brought
//! in on first touch by a userfaultfd in MISSING mode, served by a separate process, which also
//! pushes every remaining page in the background and exits once all have arrived.
//!
//! # How
//!
//! 1. [`register`], in the rebuild's fill step: the mappings that can be served lazily
//!    ([`lazy_mappings`]: private anonymous, not mlocked, whose runs are raw runs of this
//!    image of at most [`MAX_LAZY_RUN`]) get no pages; the others are filled eagerly as
//!    always. A userfaultfd is made inside the child (an injected `userfaultfd()`), taken with
//!    pidfd_getfd, closed in the child, and the lazy mappings are registered on it in MISSING
//!    mode, with the fork, mremap, remove (madvise DONTNEED) and munmap events.
//! 2. While the rest of the tree is rebuilt, and until it runs, a [`Helper`] thread of the
//!    restorer serves the faults (the rebuild itself touches the memory: the kernel writes
//!    the rseq area, for one).
//! 3. Once the tree runs, [`spawn_server`] forks the page server (detached: its own session,
//!    not a child of the restorer, stdin/stdout/stderr on /dev/null, no terminal, pipe or
//!    socket of the restorer; it logs into `--log-file` when there is one). It serves the
//!    faults first, and between them pushes the rest in address order (UFFDIO_COPY); once no
//!    page is missing it closes the userfaultfds (the kernel unregisters the ranges: the
//!    processes are ordinary processes again) and exits.
//!
//! # Serving
//!
//! Each process has its *pending* pages: pieces of runs, by address, not yet in the process.
//! A fault inside a pending piece gets the [`FAULT_WINDOW`]-aligned window around it (within
//! the piece); a fault outside one (a hole of the image, or memory the process dropped since)
//! gets zero pages. A run is read whole and checked against its CRC (and, in authenticated
//! images, its MACs) before any byte of it is copied; a few checked runs are cached.
//! The events keep the pending pages right: pages the process drops (MADV_DONTNEED, munmap)
//! are no longer pending (the kernel gives zero pages on the next touch, as it would have);
//! pages moved by mremap are pending at their new address; a forked child gets the parent's
//! pending pages (it has a copy of every page the parent had).
//!
//! # Failure
//!
//! A process waiting for a page the server cannot give would hang for ever, and a closed
//! userfaultfd would make the kernel hand it zero pages: neither may happen silently. When
//! the server finds a run it cannot use (bad CRC or MAC, read error) or a copy fails for
//! another reason than the process being gone, it kills every process it serves that it
//! knows by pid (SIGKILL through their pidfds), logs the error, and exits with status 1.
//!
//! A server that dies (killed from outside, say) would close its userfaultfds, and the kernel
//! would then give zero pages for every page still missing. A *watchdog*, forked just before
//! the server (so that the server never runs without one), holds a copy of each userfaultfd
//! (so the ranges stay registered and the faulting threads wait) and the pidfds; when the
//! server ends without saying that every page arrived, the watchdog kills the processes, logs
//! why, and exits. Not covered: children the processes fork
//! after the restore (the watchdog has neither their userfaultfd nor their pid: they get zero
//! pages for what is still missing, with their parent killed), and the watchdog and the server
//! killed together (zero pages).

use super::fill;
use crate::inject::Injector;
use crate::{Error, PAGE_SIZE};
use stasis_image::{PageRun, RawReader, RunCodec, Vma, VmaKind};
use stasis_sys::userfaultfd::{feature, Event, Userfaultfd};
use stasis_sys::{process, Pid};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

/// The longest run served lazily: a run is checked whole before any byte of it is copied, so
/// the server holds it whole (the dumper writes runs of at most 2 MiB). Mappings with longer
/// runs are filled eagerly.
pub const MAX_LAZY_RUN: u64 = 2 << 20;

/// What a fault brings in: the aligned window of this size around the faulting page (within
/// the run piece it falls in).
pub const FAULT_WINDOW: u64 = 64 << 10;

/// What the server pushes at once in the background, between looks at the faults.
const PUSH_CHUNK: u64 = 512 << 10;

/// Checked runs kept in memory (each at most [`MAX_LAZY_RUN`]).
const CACHED_RUNS: usize = 8;

/// The userfaultfd features the server needs.
const FEATURES: u64 =
    feature::EVENT_FORK | feature::EVENT_REMAP | feature::EVENT_REMOVE | feature::EVENT_UNMAP;

/// For each mapping, whether its pages are served lazily: private anonymous memory that is not
/// mlocked (locking populates it while the restorer waits), that receives pages, all of them
/// raw runs of this image of at most [`MAX_LAZY_RUN`].
pub fn lazy_mappings(vmas: &[Vma], runs: &[PageRun]) -> Vec<bool> {
    let mut lazy: Vec<bool> = vmas
        .iter()
        .map(|v| {
            v.kind == VmaKind::Anonymous
                && !v.shared
                && v.shmem_id == 0
                && (!v.advice.locked || v.advice.lock_on_fault)
        })
        .collect();
    let mut has_runs = vec![false; vmas.len()];
    for r in runs {
        let Some(i) = vmas
            .iter()
            .position(|v| v.start <= r.addr && r.addr < v.end)
        else {
            continue;
        };
        has_runs[i] = true;
        let servable = r.codec == RunCodec::Raw
            && r.image == 0
            && r.npages > 0
            && r.npages.saturating_mul(PAGE_SIZE) <= MAX_LAZY_RUN
            && r.addr.saturating_add(r.npages * PAGE_SIZE) <= vmas[i].end;
        if !servable {
            if lazy[i] {
                tracing::debug!(
                    mapping = format_args!("{:#x}", vmas[i].start),
                    run = format_args!("{:#x}", r.addr),
                    codec = ?r.codec,
                    image = r.image,
                    npages = r.npages,
                    "lazy restore: a run of this mapping cannot be served lazily; filling it eagerly"
                );
            }
            lazy[i] = false;
        }
    }
    lazy.iter().zip(has_runs).map(|(l, h)| *l && h).collect()
}

/// A restored process whose lazy mappings are registered on a userfaultfd.
#[derive(Debug)]
pub struct LazyProcess {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    pub uffd: Userfaultfd,
    /// The runs served lazily, in address order.
    pub runs: Vec<PageRun>,
}

/// The fill step of a lazy restore: fills the runs that are not served lazily, and registers
/// the lazy mappings of the child on a userfaultfd made inside it. `None` when nothing is
/// served lazily.
pub fn register(
    inj: &mut Injector,
    vmas: &[Vma],
    runs: &[PageRun],
    pages: &crate::chain::ChainPages,
) -> Result<Option<LazyProcess>, Error> {
    let child = inj.tid();
    let lazy = lazy_mappings(vmas, runs);
    let in_lazy = |r: &PageRun| {
        vmas.iter()
            .position(|v| v.start <= r.addr && r.addr < v.end)
            .is_some_and(|i| lazy[i])
    };
    let (lazy_runs, eager): (Vec<PageRun>, Vec<PageRun>) = runs.iter().partition(|r| in_lazy(r));
    fill::fill_pages(child, &eager, pages)?;
    if lazy_runs.is_empty() {
        return Ok(None);
    }
    let fd = inj.userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    let pidfd = process::pidfd_open(child).map_err(|e| Error::sys("pidfd_open", child, e))?;
    let taken = process::pidfd_getfd(pidfd.as_fd(), fd);
    inj.close(fd)?;
    let uffd = Userfaultfd::from_fd(taken.map_err(|e| Error::sys("pidfd_getfd", child, e))?);
    uffd.api(FEATURES).map_err(|e| {
        Error::sys(
            "UFFDIO_API (fork, remap, remove and unmap events)",
            child,
            e,
        )
    })?;
    let mut bytes = 0;
    for (v, _) in vmas.iter().zip(&lazy).filter(|(_, l)| **l) {
        uffd.register_missing(v.start, v.end - v.start)
            .map_err(|e| {
                Error::sys(
                    "UFFDIO_REGISTER (missing pages)",
                    child,
                    std::io::Error::new(
                        e.kind(),
                        format!("mapping {:#x}-{:#x}: {e}", v.start, v.end),
                    ),
                )
            })?;
    }
    for r in &lazy_runs {
        bytes += r.npages * PAGE_SIZE;
    }
    tracing::debug!(
        pid = child,
        runs = lazy_runs.len(),
        bytes,
        eager_runs = eager.len(),
        "lazy restore: mappings registered"
    );
    Ok(Some(LazyProcess {
        pid: child,
        pidfd,
        uffd,
        runs: lazy_runs,
    }))
}

/// A piece of a run not yet in the process, at some address.
#[derive(Debug, Clone, Copy)]
struct Piece {
    len: u64,
    /// Index of the run in its image's runs.
    run: usize,
    /// Offset of the piece's first byte in the run.
    at: u64,
}

/// One userfaultfd served: a restored process, or a child it forked.
struct Served {
    uffd: Userfaultfd,
    /// Which image's runs it is served from.
    image: usize,
    /// Pages not yet in the process, by address (disjoint).
    pending: BTreeMap<u64, Piece>,
    /// Its memory is gone (exit or exec) or it has every page.
    finished: bool,
    /// Faults to answer again once the pending events are read (a copy met a layout change).
    retry: Vec<u64>,
}

impl Served {
    /// Takes the pending pieces within `start..end` out (split at the bounds).
    fn take(&mut self, start: u64, end: u64) -> Vec<(u64, Piece)> {
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.pending.range(start..end).map(|(&k, _)| k).collect();
        keys.into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|p| (k, p)))
            .collect()
    }

    fn split_at(&mut self, at: u64) {
        let Some((&k, &p)) = self.pending.range(..at).next_back() else {
            return;
        };
        if k + p.len > at {
            let head = at - k;
            self.pending.insert(k, Piece { len: head, ..p });
            self.pending.insert(
                at,
                Piece {
                    len: p.len - head,
                    run: p.run,
                    at: p.at + head,
                },
            );
        }
    }

    fn piece_at(&self, addr: u64) -> Option<(u64, Piece)> {
        self.pending
            .range(..=addr)
            .next_back()
            .filter(|(&k, p)| addr < k + p.len)
            .map(|(&k, &p)| (k, p))
    }
}

/// Figures of a server's work, for its log.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    faults: u64,
    /// Bytes copied into the processes (forked children included).
    copied_bytes: u64,
    zero_pages: u64,
}

/// The serving state: shared by the restorer's helper thread and the page server it forks.
pub struct Server<'a> {
    /// Each image's pages file and lazy runs.
    images: Vec<(&'a RawReader, Vec<PageRun>)>,
    served: Vec<Served>,
    /// pidfds of the processes served, to kill them when their pages cannot be served.
    pidfds: Vec<(Pid, OwnedFd)>,
    /// Checked runs: (image, run) and the run's bytes, the most recently used last.
    cache: RunCache,
    stats: Stats,
}

/// What a copy of a piece came to.
enum Copied {
    Done,
    /// The layout is changing: read the events, then try again.
    Again,
    /// The process's memory is gone.
    Gone,
}

impl<'a> Server<'a> {
    fn new() -> Self {
        Server {
            images: Vec::new(),
            served: Vec::new(),
            pidfds: Vec::new(),
            cache: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Serves `p`'s lazy pages from `pages`.
    fn add(&mut self, p: LazyProcess, pages: &'a RawReader) {
        let image = self.images.len();
        let mut pending = BTreeMap::new();
        for (i, r) in p.runs.iter().enumerate() {
            pending.insert(
                r.addr,
                Piece {
                    len: r.npages * PAGE_SIZE,
                    run: i,
                    at: 0,
                },
            );
        }
        self.images.push((pages, p.runs));
        self.served.push(Served {
            uffd: p.uffd,
            image,
            pending,
            finished: false,
            retry: Vec::new(),
        });
        self.pidfds.push((p.pid, p.pidfd));
    }

    /// Bytes not yet in the processes.
    fn pending_bytes(&self) -> u64 {
        self.served
            .iter()
            .filter(|s| !s.finished)
            .flat_map(|s| s.pending.values())
            .map(|p| p.len)
            .sum()
    }

    /// Copies the piece `piece` to `addr` in served `s`; what could not be copied for a layout
    /// change goes back to the pending pieces.
    fn copy_piece(&mut self, s: usize, addr: u64, piece: Piece) -> Result<Copied, Error> {
        let image = self.served[s].image;
        let mut done = 0u64;
        while done < piece.len {
            let data = run_bytes(&mut self.cache, &self.images, image, piece.run)?;
            let from = (piece.at + done) as usize;
            let to = (piece.at + piece.len) as usize;
            let slice = data.get(from..to).ok_or_else(|| Error::Internal {
                what: format!("lazy piece at {addr:#x} outside its run"),
            })?;
            let r = self.served[s].uffd.copy(addr + done, slice);
            done += r.bytes;
            match r.error.as_ref().and_then(|e| e.raw_os_error()) {
                None => {}
                Some(libc::EEXIST) if r.bytes == 0 => done += PAGE_SIZE,
                Some(libc::EEXIST) => {}
                Some(libc::EAGAIN) if r.bytes > 0 => {}
                Some(libc::EAGAIN) => {
                    self.served[s].pending.insert(
                        addr + done,
                        Piece {
                            len: piece.len - done,
                            run: piece.run,
                            at: piece.at + done,
                        },
                    );
                    return Ok(Copied::Again);
                }
                Some(libc::ESRCH) => return Ok(Copied::Gone),
                // Nothing registered there any more (unmapped, the event not read yet): the
                // page cannot be asked for.
                Some(libc::ENOENT) if r.bytes == 0 => done += PAGE_SIZE,
                Some(libc::ENOENT) => {}
                Some(_) => {
                    let e = r.error.unwrap_or_else(|| std::io::Error::other("?"));
                    return Err(Error::io(
                        format!("UFFDIO_COPY of {} bytes at {:#x}", slice.len(), addr + done),
                        e,
                    ));
                }
            }
        }
        Ok(Copied::Done)
    }

    /// Answers a fault at `addr` in served `s`.
    fn fault(&mut self, s: usize, addr: u64) -> Result<(), Error> {
        self.stats.faults += 1;
        let Some((start, piece)) = self.served[s].piece_at(addr) else {
            // Not pending: a hole of the image or memory dropped since: zero pages.
            return self.zero(s, addr);
        };
        let w0 = (addr & !(FAULT_WINDOW - 1)).max(start);
        let w1 = ((addr | (FAULT_WINDOW - 1)) + 1).min(start + piece.len);
        let taken = self.served[s].take(w0, w1);
        if self.copy_pieces(s, taken)? {
            self.served[s].retry.push(addr);
        }
        Ok(())
    }

    /// Copies the pieces `taken` (out of the pending ones) into served `s`. True when the
    /// layout is changing: every piece not copied is pending again, and the events must be
    /// read before a retry.
    fn copy_pieces(&mut self, s: usize, taken: Vec<(u64, Piece)>) -> Result<bool, Error> {
        let mut rest = taken.into_iter();
        while let Some((a, p)) = rest.next() {
            match self.copy_piece(s, a, p)? {
                Copied::Done => self.stats.copied_bytes += p.len,
                Copied::Again => {
                    for (a, p) in rest {
                        self.served[s].pending.insert(a, p);
                    }
                    return Ok(true);
                }
                Copied::Gone => {
                    self.served[s].finished = true;
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    fn zero(&mut self, s: usize, addr: u64) -> Result<(), Error> {
        self.stats.zero_pages += 1;
        let r = self.served[s].uffd.zeropage(addr, PAGE_SIZE);
        match r.error.as_ref().and_then(|e| e.raw_os_error()) {
            None => Ok(()),
            // Already there (served otherwise since): wake whoever waits for it.
            Some(libc::EEXIST) => {
                let _ = self.served[s].uffd.wake(addr, PAGE_SIZE);
                Ok(())
            }
            Some(libc::EAGAIN) => {
                self.served[s].retry.push(addr);
                Ok(())
            }
            Some(libc::ESRCH) => {
                self.served[s].finished = true;
                Ok(())
            }
            // A fault at an address no longer registered (moved or unmapped since): the
            // thread, woken, faults again where the memory is now.
            Some(libc::ENOENT) => {
                let _ = self.served[s].uffd.wake(addr, PAGE_SIZE);
                Ok(())
            }
            _ => Err(Error::io(
                format!("UFFDIO_ZEROPAGE at {addr:#x}"),
                r.error.unwrap_or_else(|| std::io::Error::other("?")),
            )),
        }
    }

    /// Reads and handles every pending message of served `s`.
    fn events(&mut self, s: usize) -> Result<(), Error> {
        loop {
            if self.served[s].finished {
                return Ok(());
            }
            let mut events = match self.served[s].uffd.read_events() {
                Ok(e) => e,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    self.served[s].finished = true;
                    return Ok(());
                }
                Err(e) => return Err(Error::io("reading a userfaultfd", e)),
            };
            if events.is_empty() {
                break;
            }
            // Forks first: a fork is over once its message is read, and the child has what
            // the parent had then, so it gets the pages pending at the read (no copy into the
            // parent succeeds between the fork and the read, and a removal the batch reports
            // is carried out after the read, after the fork: it does not concern the child).
            // Then the layout changes, before any fault of the batch: the kernel hands out
            // waiting faults ahead of events, so a fault read with a removal may be older than
            // it, and the thread that dropped the memory zaps it once its message is read: a
            // page copied for that fault after the zap would bring the dropped data back.
            // (A stable sort: each kind keeps its order.)
            events.sort_by_key(|e| match e {
                Event::Fork { .. } => 0,
                Event::PageFault { .. } => 2,
                _ => 1,
            });
            for ev in events {
                match ev {
                    Event::Fork { uffd } => {
                        let child = Served {
                            uffd: Userfaultfd::from_fd(uffd),
                            image: self.served[s].image,
                            pending: self.served[s].pending.clone(),
                            finished: false,
                            retry: Vec::new(),
                        };
                        tracing::debug!("lazy restore: a served process forked");
                        self.served.push(child);
                    }
                    Event::PageFault { addr, .. } => self.fault(s, addr)?,
                    Event::Remap { from, to, len } => {
                        let moved = self.served[s].take(from, from.saturating_add(len));
                        for (a, p) in moved {
                            self.served[s].pending.insert(a - from + to, p);
                        }
                    }
                    Event::Remove { start, end } | Event::Unmap { start, end } => {
                        self.served[s].take(start, end);
                    }
                    Event::Other(kind) => {
                        tracing::debug!(kind, "lazy restore: unknown userfaultfd message")
                    }
                }
            }
        }
        let retry = std::mem::take(&mut self.served[s].retry);
        for addr in retry {
            self.fault(s, addr)?;
        }
        Ok(())
    }

    /// Pushes one chunk of pending pages in the background. False when none is pending.
    fn push(&mut self) -> Result<bool, Error> {
        for s in 0..self.served.len() {
            if self.served[s].finished {
                continue;
            }
            let Some((&start, &piece)) = self.served[s].pending.iter().next() else {
                self.served[s].finished = true;
                continue;
            };
            let end = start + piece.len.min(PUSH_CHUNK);
            let taken = self.served[s].take(start, end);
            if self.copy_pieces(s, taken)? {
                // The layout changes: the events first (what was not copied is pending again,
                // so that a fork's child gets it too).
                self.events(s)?;
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// The userfaultfds still served, with their indexes.
    fn live(&self) -> Vec<(usize, BorrowedFd<'_>)> {
        self.served
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.finished)
            .map(|(i, s)| (i, s.uffd.as_fd()))
            .collect()
    }

    /// Serves the faults on every userfaultfd that has messages within `timeout_ms`, and the
    /// `extra` descriptor's readiness; returns whether `extra` is readable.
    fn serve_ready(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        timeout_ms: i32,
    ) -> Result<bool, Error> {
        let live: Vec<usize> = self.live().iter().map(|(i, _)| *i).collect();
        let ready = {
            let mut fds: Vec<BorrowedFd<'_>> = self.live().iter().map(|(_, f)| *f).collect();
            fds.extend(extra);
            process::poll_readable(&fds, timeout_ms)
                .map_err(|e| Error::io("poll of the userfaultfds", e))?
        };
        for (k, &s) in live.iter().enumerate() {
            if ready[k] {
                self.events(s)?;
            }
        }
        Ok(extra.is_some() && ready[live.len()])
    }

    /// Kills every process served that is known by pid (their pages cannot be served).
    fn kill_all(&self) {
        for (pid, fd) in &self.pidfds {
            let _ = process::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            tracing::error!(pid, "lazy restore: killed the restored process");
        }
    }
}

/// Checked runs: (image, run) and the run's bytes, the most recently used last.
type RunCache = Vec<((usize, usize), Vec<u8>)>;

/// The checked bytes of run `run` of image `image`, read and checked once while cached.
fn run_bytes<'c>(
    cache: &'c mut RunCache,
    images: &[(&RawReader, Vec<PageRun>)],
    image: usize,
    run: usize,
) -> Result<&'c [u8], Error> {
    if let Some(i) = cache.iter().position(|(k, _)| *k == (image, run)) {
        let hit = cache.remove(i);
        cache.push(hit);
    } else {
        let (pages, runs) = &images[image];
        let mut buf = if cache.len() >= CACHED_RUNS {
            cache.remove(0).1
        } else {
            Vec::new()
        };
        fill::read_checked_run(*pages, &runs[run], &mut buf)?;
        cache.push(((image, run), buf));
    }
    Ok(cache.last().map(|(_, b)| b.as_slice()).unwrap_or(&[]))
}

/// The restorer's helper thread: serves the faults of the processes being rebuilt (and
/// running, until the page server takes over), pushing nothing in the background.
pub struct Helper<'scope, 'a> {
    handle: std::thread::ScopedJoinHandle<'scope, Result<Server<'a>, Error>>,
    send: std::sync::mpsc::Sender<(LazyProcess, &'a RawReader)>,
    /// Written to wake the thread (a new process, or the end).
    wake: std::fs::File,
}

impl<'scope, 'a: 'scope> Helper<'scope, 'a> {
    /// Starts the helper thread in `scope`.
    pub fn start<'env>(scope: &'scope std::thread::Scope<'scope, 'env>) -> Result<Self, Error>
    where
        'a: 'env,
    {
        let (read, wake) = process::pipe().map_err(|e| Error::io("pipe", e))?;
        let (mut read, wake) = (std::fs::File::from(read), std::fs::File::from(wake));
        let (send, recv) = std::sync::mpsc::channel::<(LazyProcess, &'a RawReader)>();
        let handle = scope.spawn(move || -> Result<Server<'a>, Error> {
            let mut server = Server::new();
            let result = (|| -> Result<(), Error> {
                loop {
                    if server.serve_ready(Some(read.as_fd()), -1)? {
                        let mut b = [0u8; 64];
                        let n = std::io::Read::read(&mut read, &mut b).unwrap_or(0);
                        for (p, pages) in recv.try_iter() {
                            server.add(p, pages);
                        }
                        // A zero byte ends the thread (EOF: the restorer is gone).
                        if n == 0 || b[..n].contains(&0) {
                            return Ok(());
                        }
                    }
                }
            })();
            match result {
                Ok(()) => Ok(server),
                Err(e) => {
                    // They may run already: killed before their userfaultfds are closed (the
                    // kernel would give them zero pages).
                    tracing::error!(error = %e, "lazy restore: a page cannot be served: killing the restored processes");
                    server.kill_all();
                    Err(e)
                }
            }
        });
        Ok(Helper { handle, send, wake })
    }

    /// Hands a registered process over to the helper.
    pub fn add(&self, p: LazyProcess, pages: &'a RawReader) -> Result<(), Error> {
        let gone = || Error::Internal {
            what: "the lazy restore's helper thread is gone".into(),
        };
        self.send.send((p, pages)).map_err(|_| gone())?;
        std::io::Write::write_all(&mut &self.wake, &[1]).map_err(|_| gone())
    }

    /// Stops the helper: the serving state, for the page server.
    pub fn stop(self) -> Result<Server<'a>, Error> {
        let _ = std::io::Write::write_all(&mut &self.wake, &[0]);
        drop(self.send);
        self.handle.join().map_err(|_| Error::Internal {
            what: "the lazy restore's helper thread panicked".into(),
        })?
    }
}

/// Forks the detached page server, which serves `server`'s processes until every page has
/// arrived. Returns once it is started (its pid, for the log). Called by a single-threaded
/// restorer once the tree runs.
pub fn spawn_server(server: Server<'_>) -> Result<(), Error> {
    if server.served.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    // The helper thread has just been joined: its exit may not be complete for the kernel yet.
    let mut tries = 0;
    let forked = loop {
        match process::fork() {
            Ok(f) => break f,
            Err(e) if tries < 100 && e.kind() == std::io::ErrorKind::Other => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Err(e) => return Err(Error::io("fork of the lazy page server", e)),
        }
    };
    match forked {
        process::Forked::Parent(middle) => {
            // The middle process exits at once, once its child (the server) is started; it is
            // reaped if it is done by now (not waited for: the restore has returned sooner).
            let _ = stasis_sys::ptrace::waitpid_nohang(middle);
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                fork_tries = tries + 1,
                "lazy restore: page server started"
            );
            Ok(())
        }
        process::Forked::Child(child) => {
            let _ = process::setsid();
            child.detach_stdio_and_pipes();
            // The watchdog first, so that no instant exists where the server could die
            // without one (the restorer lets go of its userfaultfds once this process runs).
            let done = match start_watchdog(&server) {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "lazy restore: the page server's watchdog cannot start: killing the restored processes");
                    server.kill_all();
                    process::exit_now(1)
                }
            };
            match process::fork() {
                Ok(process::Forked::Child(_)) => {}
                Ok(process::Forked::Parent(_)) => process::exit_now(0),
                Err(e) => {
                    tracing::error!(error = %e, "lazy restore: fork of the page server failed: killing the restored processes");
                    server.kill_all();
                    let _ = std::io::Write::write_all(&mut &done, b"K");
                    process::exit_now(1)
                }
            }
            let code = match run_server(server, done) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "lazy restore: the page server failed");
                    1
                }
            };
            process::exit_now(code)
        }
    }
}

/// The page server's loop: faults first, the rest pushed between them.
/// `done` is the pipe to the watchdog (see [`start_watchdog`]).
fn run_server(mut server: Server<'_>, done: std::fs::File) -> Result<(), Error> {
    let started = Instant::now();
    let total = server.pending_bytes();
    tracing::info!(
        pid = process::getpid(),
        processes = server.served.len(),
        bytes = total,
        "lazy restore: page server serving"
    );
    let result = (|| -> Result<(), Error> {
        loop {
            let more = server.push()?;
            if !more {
                // Nothing left to push: the last events (a fork or faults in flight).
                server.serve_ready(None, 0)?;
                if server.pending_bytes() == 0 {
                    return Ok(());
                }
                continue;
            }
            server.serve_ready(None, 0)?;
        }
    })();
    if let Err(e) = &result {
        tracing::error!(error = %e, "lazy restore: a page cannot be served: killing the restored processes");
        server.kill_all();
        // The watchdog need not kill them again.
        let _ = std::io::Write::write_all(&mut &done, b"K");
        return result;
    }
    let s = server.stats;
    tracing::info!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        bytes = total,
        faults = s.faults,
        copied_bytes = s.copied_bytes,
        zero_pages = s.zero_pages,
        "lazy restore: every page arrived; page server exiting"
    );
    // The watchdog lets go of its copies; closing ours too unregisters the ranges.
    let _ = std::io::Write::write_all(&mut &done, b"D");
    drop(server);
    Ok(())
}

/// Forks the server's watchdog (see "Failure" in the module documentation). Returns the pipe
/// the server writes `D` into once every page has arrived (`K` when it killed the processes
/// itself); its end without either tells the watchdog that the server died.
fn start_watchdog(server: &Server<'_>) -> Result<std::fs::File, Error> {
    let (read, write) = process::pipe().map_err(|e| Error::io("pipe", e))?;
    let uffds = server
        .served
        .iter()
        .map(|s| s.uffd.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::io("dup of a userfaultfd", e))?;
    match process::fork().map_err(|e| Error::io("fork of the page server's watchdog", e))? {
        process::Forked::Parent(_) => Ok(std::fs::File::from(write)),
        process::Forked::Child(_) => {
            drop(write);
            let mut read = std::fs::File::from(read);
            let mut said = Vec::new();
            let _ = std::io::Read::read_to_end(&mut read, &mut said);
            if !said.contains(&b'D') && !said.contains(&b'K') {
                tracing::error!(
                    "lazy restore: the page server died before every page arrived: killing the restored processes"
                );
                server.kill_all();
            }
            drop(uffds);
            process::exit_now(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(pieces: &[(u64, u64)]) -> Served {
        let uffd = Userfaultfd::from_fd(process::pipe().map(|(r, _)| r).unwrap());
        let mut pending = BTreeMap::new();
        for (i, &(a, l)) in pieces.iter().enumerate() {
            pending.insert(
                a,
                Piece {
                    len: l,
                    run: i,
                    at: 0,
                },
            );
        }
        Served {
            uffd,
            image: 0,
            pending,
            finished: false,
            retry: Vec::new(),
        }
    }

    #[test]
    fn take_splits_pieces_at_the_bounds() {
        let mut s = served(&[(0x1000, 0x4000), (0x8000, 0x2000)]);
        let got = s.take(0x2000, 0x9000);
        let got: Vec<(u64, u64, u64)> = got.iter().map(|(a, p)| (*a, p.len, p.at)).collect();
        assert_eq!(got, vec![(0x2000, 0x3000, 0x1000), (0x8000, 0x1000, 0)]);
        let left: Vec<(u64, u64, u64)> = s.pending.iter().map(|(a, p)| (*a, p.len, p.at)).collect();
        assert_eq!(left, vec![(0x1000, 0x1000, 0), (0x9000, 0x1000, 0x1000)]);
        assert_eq!(s.piece_at(0x9fff).map(|(a, _)| a), Some(0x9000));
        assert!(s.piece_at(0x2000).is_none());
    }

    fn vma(start: u64, end: u64) -> Vma {
        Vma::anonymous(start, end)
    }

    #[test]
    fn which_mappings_are_lazy() {
        let mut locked = vma(0x10000, 0x20000);
        locked.advice.locked = true;
        let mut shared = vma(0x20000, 0x30000);
        shared.shared = true;
        let vmas = vec![
            vma(0x1000, 0x8000),
            locked,
            shared,
            vma(0x30000, 0x40000),
            vma(0x40000, 0x50000),
        ];
        let mut zstd = PageRun::raw(0x40000, 1, 0, 0);
        zstd.codec = RunCodec::Zstd;
        zstd.stored_len = 10;
        let runs = vec![
            PageRun::raw(0x1000, 2, 0, 0),
            PageRun::raw(0x10000, 1, 0, 0),
            PageRun::raw(0x20000, 1, 0, 0),
            zstd,
        ];
        assert_eq!(
            lazy_mappings(&vmas, &runs),
            vec![true, false, false, false, false]
        );
    }
}
