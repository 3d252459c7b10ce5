//! Dump phase `pages`: the page contents of every process, copied by a thread of their own
//! while collect reads the rest (`alongside`).
//!
//! Collect hands each process over as soon as its mappings are read (`Job`: the first thing
//! collect reads, with which of them hold no page of the process's own); this thread
//! reads its pages (pagemap, process_vm_readv) and writes its pages file while collect asks
//! the process for its files, threads, signals and the rest through injected calls. Those
//! leave the pages alone: their arguments and results live in a scratch area mapped for them
//! (not among the mappings read), and the frames the threads are parked on lie below the
//! stacks' red zones, where the kernel may put a signal frame at any time: whatever a copy
//! reads there is garbage to the process. On this machine a 1 MiB process's pages and the
//! rest of it take about as long (~0.9 ms for the pages, ~0.8 ms for the rest, after the
//! 0.3 ms of its mappings). The write phase waits for the thread before the blobs and
//! records are written.
//!
//! A process pre-copied while it ran (a leave-running dump) gets only what it wrote since
//! ([`pages::precopy::Tracked::finish`]); a process whose parent in the tree was copied here
//! stores the pages it still shares with it only once (`pages::cow`); an incremental dump
//! writes only the pages changed since its parent dump.
//!
//! Its writes are short ([`stasis_image::WRITE_PIECE`]): the kernel gives a CPU to a woken
//! process only when the thread on it returns from its system call (this machine's kernel
//! does not preempt threads in the kernel), and collect's calls wait for the processes they
//! wake; with 1 MiB writes collect took twice as long beside the copy.
//!
//! Failures: the thread stops at its first error, and collect at its next process; when
//! collect fails first, the thread stops before its next run of pages. Either way every file
//! the thread created is handed back, for the failed dump to remove.

use super::write::Zstd;
use super::Phase;
use crate::chain::Parent;
use crate::pages::incremental::ParentRuns;
use crate::pages::precopy::{Finished, Tracked};
use crate::{pages, Error};
use stasis_image::{names, ImageDir, PageRun, ParentPages, RawWriter, RecordKind, Vma};
use stasis_sys::Pid;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A process whose pages are to be copied: its mappings as collect read them.
pub(crate) struct Job {
    pub pid: Pid,
    pub ppid: Pid,
    pub vmas: Vec<Vma>,
    /// Which of `vmas` hold no page of the process's own (`pages::vma::without_own_pages`).
    pub without_pages: Vec<bool>,
    /// The CPU collect asks the process on, which the copy keeps off (crate::cpu).
    pub collect_cpu: Option<usize>,
}

/// How collect hands a process over; an error when the thread has stopped (failed).
pub(crate) type HandOver<'a> = &'a mut dyn FnMut(Job) -> Result<(), Error>;

/// The pages of one process.
pub(crate) enum Runs {
    /// Copied here: its run index.
    Copied(Vec<PageRun>),
    /// Pre-copied, completed here: its run index is made once the tree runs on.
    PreCopied(Box<Finished>),
}

/// What the thread copied.
pub(crate) struct Copied {
    /// The pages of each process handed over.
    pub runs: HashMap<Pid, Runs>,
    /// Page bytes written (of the processes copied here).
    pub page_bytes: u64,
    /// Pages files of pre-copied processes that exited since, removed.
    pub removed: Vec<String>,
}

/// What [`alongside`] hands back.
pub(crate) struct Alongside<R> {
    /// Files the thread created: removed by a dump that fails.
    pub created: Vec<String>,
    /// Collect's result and the thread's, or the first failure.
    pub result: Result<(R, Copied), Error>,
    /// How long the thread worked.
    pub busy: Duration,
}

/// Runs `collect` (which hands each process over through its argument) with the pages thread
/// alongside, and waits for both. `pre`: the processes pre-copied, each with its pages file;
/// `parent`: the parent dump of an incremental dump.
pub(crate) fn alongside<R>(
    dir: &ImageDir,
    pre: Vec<(Tracked, RawWriter)>,
    parent: Option<&mut Parent>,
    zstd: &mut Zstd,
    collect: impl FnOnce(HandOver<'_>) -> Result<R, Error>,
) -> Alongside<R> {
    let stop = AtomicBool::new(false);
    // Kept out of the thread: a thread that panics still leaves the list of its files.
    let created = Mutex::new(Vec::new());
    let plan = crate::fault::plan();
    let dump_span = tracing::Span::current();
    let mut thread = Thread {
        dir,
        pre,
        parent,
        zstd,
        stop: &stop,
        shmem_done: HashSet::new(),
        copied: Vec::new(),
        runs: HashMap::new(),
        page_bytes: 0,
        created: &created,
    };
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("stasis-pages".into())
            .spawn_scoped(s, move || {
                crate::fault::armed(plan.as_ref(), || {
                    let started = Instant::now();
                    let result = {
                        let _phase = Phase::Pages.span_under(&dump_span);
                        thread.run(rx)
                    };
                    (result, started.elapsed())
                })
            });
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => {
                return Alongside {
                    created: Vec::new(),
                    result: Err(Error::io("starting the pages thread", e)),
                    busy: Duration::ZERO,
                }
            }
        };
        let mut thread_gone = false;
        let collected = collect(&mut |job| {
            tx.send(job).map_err(|_| {
                thread_gone = true;
                Error::Internal {
                    what: "the pages thread stopped".into(),
                }
            })
        });
        if collected.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        drop(tx);
        let (copied, busy) = handle.join().unwrap_or_else(|_| {
            let e = Error::Internal {
                what: "the pages thread panicked".into(),
            };
            (Err(e), Duration::ZERO)
        });
        let result = match (collected, copied) {
            (Ok(r), Ok(c)) => Ok((r, c)),
            // The thread failed first (collect then found it gone), or on its own.
            (Err(_), Err(e)) if thread_gone => Err(e),
            (Ok(_), Err(e)) => Err(e),
            // Collect failed first: the thread stopped, or finished meanwhile.
            (Err(e), _) => Err(e),
        };
        Alongside {
            created: std::mem::take(&mut *lock(&created)),
            result,
            busy,
        }
    })
}

/// The pages thread's state.
struct Thread<'a> {
    dir: &'a ImageDir,
    pre: Vec<(Tracked, RawWriter)>,
    parent: Option<&'a mut Parent>,
    zstd: &'a mut Zstd,
    /// Set when collect failed: copy no more.
    stop: &'a AtomicBool,
    /// Shared anonymous memory objects stored already (once per tree).
    shmem_done: HashSet<u64>,
    /// Processes copied here (not pre-copied): their mappings, for their children's
    /// shared pages; their runs are in `runs`.
    copied: Vec<(Pid, Vec<Vma>)>,
    runs: HashMap<Pid, Runs>,
    page_bytes: u64,
    /// The files created (see `alongside`).
    created: &'a Mutex<Vec<String>>,
}

impl Thread<'_> {
    /// Copies every process handed over until collect is done (the channel closes).
    fn run(&mut self, jobs: mpsc::Receiver<Job>) -> Result<Copied, Error> {
        let all = stasis_sys::sched::get_affinity(stasis_sys::process::gettid()).ok();
        for job in jobs {
            let _process = tracing::info_span!("process", pid = job.pid).entered();
            if let Some(all) = &all {
                crate::cpu::keep_off(all, job.collect_cpu);
            }
            self.copy(job)?;
        }
        let mut removed = Vec::new();
        for (tracked, pages) in std::mem::take(&mut self.pre) {
            // Exited since the pre-copy.
            let name = super::write::pre_copy_file(tracked.pid(), self.zstd.on());
            drop(pages);
            self.dir.remove(&name)?;
            removed.push(name);
        }
        Ok(Copied {
            runs: std::mem::take(&mut self.runs),
            page_bytes: self.page_bytes,
            removed,
        })
    }

    /// Copies one process's pages into its pages file (completes it, when pre-copied).
    fn copy(&mut self, job: Job) -> Result<(), Error> {
        let Job {
            pid,
            ppid,
            vmas,
            without_pages,
            ..
        } = job;
        if let Some(i) = self.pre.iter().position(|(t, _)| t.pid() == pid) {
            let (tracked, pages) = self.pre.swap_remove(i);
            let finished = tracked.finish(&vmas, pages, &mut self.shmem_done)?;
            self.runs.insert(pid, Runs::PreCopied(Box::new(finished)));
            return Ok(());
        }
        let name = names::pages(pid);
        crate::fault::point("creating a pages file")?;
        let mut out = RawWriter::create(self.dir, &name, RecordKind::Pages)?;
        lock(self.created).push(name);
        let from_parent = self.parent.as_deref().and_then(|p| p.process(pid));
        let parent_runs = from_parent.map(|(runs, files)| ParentRuns { runs, files });
        // Pages shared with the parent process (copied here, frozen still) are stored once,
        // with the parent (pages::cow).
        let cow = match self.copied.iter().find(|(p, _)| *p == ppid) {
            Some((p, p_vmas)) => match self.runs.get(p) {
                Some(Runs::Copied(p_runs)) => pages::cow::CowParent::open(*p, p_vmas, p_runs)?,
                _ => None,
            },
            None => None,
        };
        let runs = pages::dump_pages(
            pid,
            &vmas,
            &without_pages,
            &mut out,
            &mut self.shmem_done,
            parent_runs,
            self.zstd.pool()?,
            cow,
            self.stop,
        )?;
        // The parent's pages files this one refers to, with their lengths now.
        let parent_len = from_parent
            .filter(|_| runs.iter().any(|r| r.image == 1))
            .map(|(_, files)| files.own().len());
        if let (Some(p), Some(payload_len)) = (self.parent.as_deref_mut(), parent_len) {
            p.link.pages.push(ParentPages { pid, payload_len });
        }
        self.page_bytes += out.finish()?;
        self.runs.insert(pid, Runs::Copied(runs));
        self.copied.push((pid, vmas));
        Ok(())
    }
}

/// The list of files created, also after a panic of the thread that held it.
fn lock(created: &Mutex<Vec<String>>) -> MutexGuard<'_, Vec<String>> {
    created.lock().unwrap_or_else(PoisonError::into_inner)
}
