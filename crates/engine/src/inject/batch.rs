//! Batched injection: many independent system calls run inside a stopped thread in one
//! resume, instead of one ptrace round trip (set registers, step, wait, read registers:
//! ~15–90 µs) each.
//!
//! A small piece of code (`BLOB`, 53 bytes) is put in the page after the scratch area (the
//! injector maps both at once), or in a page of its own when the scratch area was mapped
//! alone; mapped read-write, filled, then made read-only and executable (never writable and
//! executable at once, so a process under PR_SET_MDWE accepts it; where the page cannot be made
//! executable, [`Injector::batch`] says so and the caller runs its calls one by one). The code
//! reads a table of calls from the scratch area (`rbx`: 7 words each, the number then the six
//! arguments), runs them in order, stores each raw result (`r13`: one word each). A parked
//! thread's batch (`SLEEP_TAIL`) then waits in a `ppoll` of 2 s and returns through its frame
//! (`rt_sigreturn`): it runs with PTRACE_CONT, and the dumper stops it with PTRACE_INTERRUPT
//! once /proc shows it in that wait (one stop for the batch; driving it with syscall stops
//! cost two per call, ~45 µs each on a VM: 8 ms of a small dump); a thread whose dumper dies
//! in the middle of a batch runs the rest, waits and returns through its frame
//! ([`super::park`]). A thread that is not parked (a restore child, which dies with its
//! restorer) runs a copy ending on `int3` (`TRAP_BLOB`). It touches no stack and no memory
//! but the table, the results and the timespec.
//!
//! The same page holds two stubs: the guarded stub of a thread parked without gadgets
//! (`GUARD_STUB`), and [`Injector::userfaultfd_taken`]'s, which creates a userfaultfd and
//! closes it again before the thread returns through its frame, so that the dumper takes it
//! (pidfd_getfd) while the thread stands between the two calls and none can stay open in the
//! process whenever the dumper dies.
//!
//! The page is the last of the injector's mapping (after the scratch area), mapped anywhere
//! for a process whose layout does not change while the injector lives (the dump), or at a
//! place chosen by the caller (the restore maps both in a hole of the dumped layout); it is
//! unmapped with the scratch area. (An injector using another's scratch area maps a page of
//! its own anywhere, unless it shares that injector's page: [`Injector::share_code_page`].)

use super::{CallRecord, Injector};
use crate::Error;
use stasis_sys::{proc_mem, ptrace};

/// The loop, x86-64 (assembled from):
/// ```text
/// 1:  mov (%rbx),%rax ; mov 8(%rbx),%rdi ; mov 16(%rbx),%rsi ; mov 24(%rbx),%rdx
///     mov 32(%rbx),%r10 ; mov 40(%rbx),%r8 ; mov 48(%rbx),%r9
///     syscall
///     mov %rax,(%r13) ; add $56,%rbx ; add $8,%r13
///     dec %r12 ; jnz 1b
///     mov $15,%eax ; syscall          (rt_sigreturn: the end)
/// ```
const BLOB: [u8; 53] = [
    0x48, 0x8b, 0x03, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, 0x10, 0x48, 0x8b, 0x53, 0x18, 0x4c,
    0x8b, 0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x45,
    0x00, 0x48, 0x83, 0xc3, 0x38, 0x49, 0x83, 0xc5, 0x08, 0x49, 0xff, 0xcc, 0x75, 0xd2, 0xb8, 0x0f,
    0x00, 0x00, 0x00, 0x0f, 0x05,
];

/// The same loop ending on an `int3` instead of `rt_sigreturn`, at [`TRAP_BLOB_AT`] in the
/// code page: for a thread that is not parked (a restore child, which dies with its
/// restorer anyway), run with PTRACE_CONT until the trap: one stop for the whole batch
/// instead of two per call.
const TRAP_BLOB: [u8; 47] = [
    0x48, 0x8b, 0x03, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, 0x10, 0x48, 0x8b, 0x53, 0x18, 0x4c,
    0x8b, 0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x45,
    0x00, 0x48, 0x83, 0xc3, 0x38, 0x49, 0x83, 0xc5, 0x08, 0x49, 0xff, 0xcc, 0x75, 0xd2, 0xcc,
];
const TRAP_BLOB_AT: u64 = 192;

/// For a parked thread, the same loop ending on a wait, at [`SLEEP_BLOB_AT`]: after its
/// calls the thread sleeps (`ppoll` with no descriptors, for [`SLEEP_SECS`], the timespec
/// at `r14`), then returns through its frame (`rt_sigreturn`). It runs with PTRACE_CONT: the
/// dumper waits until the thread sleeps there, then stops it with PTRACE_INTERRUPT: one stop
/// for the whole batch instead of two per call. A thread whose dumper dies meanwhile runs its
/// calls, sleeps and returns through its frame, as with the syscall stops of [`BLOB`].
/// ```text
///     (the loop of BLOB, up to its jnz)
///     mov $271,%eax ; xor %edi,%edi ; xor %esi,%esi ; mov %r14,%rdx
///     xor %r10d,%r10d ; xor %r8d,%r8d ; syscall      (ppoll(NULL, 0, ts, NULL, 0))
///     mov $15,%eax ; syscall                          (rt_sigreturn)
/// ```
const SLEEP_TAIL: [u8; 27] = [
    0xb8, 0x0f, 0x01, 0x00, 0x00, 0x31, 0xff, 0x31, 0xf6, 0x4c, 0x89, 0xf2, 0x45, 0x31, 0xd2, 0x45,
    0x31, 0xc0, 0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05,
];
const SLEEP_BLOB_AT: u64 = 256;
/// The loop of [`BLOB`], then the `ppoll` of [`SLEEP_TAIL`] run from the process's own
/// `syscall; ret` (`r15`) with the stack on the thread's frame, whose `pretcode` (the
/// restorer) the `ret` goes to: a thread batching from another thread's code page leaves
/// the page before it waits, and returns through its frame from there if we die.
/// ```text
///     (the loop of BLOB, up to its jnz)
///     mov $271,%eax ; xor %edi,%edi ; xor %esi,%esi ; mov %r14,%rdx
///     xor %r10d,%r10d ; xor %r8d,%r8d ; jmp *%r15
/// ```
const GADGET_SLEEP_TAIL: [u8; 3] = [0x41, 0xff, 0xe7];
const GADGET_SLEEP_BLOB_AT: u64 = 384;
/// Where a timespec of [`SLEEP_SECS`] is kept in the code page (read by the `ppoll` at the
/// end of the sleeping blobs, and by that of a thread that lends its code page,
/// [`Injector::lend_code_page`]).
const SLEEP_TS_AT: u64 = PAGE - 16;
/// The loop's length in [`BLOB`] (without its rt_sigreturn).
const LOOP_LEN: usize = 46;
/// Where the `ppoll` returns to, from the start of the sleeping blob.
const SLEEP_AT: u64 = LOOP_LEN as u64 + 20;
/// How long a thread whose dumper died sleeps before it returns through its frame.
const SLEEP_SECS: i64 = 2;
/// `__NR_ppoll`.
const NR_PPOLL: u64 = 271;

/// Where [`Injector::userfaultfd_taken`]'s stub is in the code page:
/// `syscall ; mov %eax,%edi ; mov $3,%eax ; syscall ; mov $15,%eax ; syscall`
/// (userfaultfd, then close of what it returned, then rt_sigreturn through the frame).
const UFFD_STUB: u64 = 128;
const UFFD_CODE: [u8; 23] = [
    0x0f, 0x05, 0x89, 0xc7, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00,
    0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
];
/// Offsets in it: after the userfaultfd, after the close.
const UFFD_CREATED: u64 = 2;
const UFFD_CLOSED: u64 = 11;

const PAGE: u64 = 4096;

/// Where the guarded stub of a parked thread ([`super::park`]) is in the code page:
/// `syscall ; mov $15,%eax ; syscall` (the injected call, then rt_sigreturn through the
/// frame, for a thread that runs on without its tracer).
pub(crate) const GUARD_STUB: u64 = 64;
const STUB: [u8; 9] = [0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// At most this many calls in one batch (the table and results must fit the scratch area).
pub const MAX_BATCH: usize = 256;

/// What [`Injector::userfaultfd_taken`] did: the userfaultfd's number in the process (or the
/// error of the call that makes it), and what `take` returned once it was made.
pub struct UffdTaken<R> {
    pub created: Result<i32, super::Errno>,
    pub taken: Option<R>,
}

/// The code page of an injector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum CodePage {
    #[default]
    NotYet,
    Mapped(u64),
    /// Mapped by the injector of another thread of the process, which unmaps it
    /// ([`Injector::share_code_page`]).
    Shared(u64),
    /// The target cannot have it (the page could not be made executable).
    Refused,
}

/// A call gathered by [`Injector::batched`], run with the next batch.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub name: &'static str,
    pub nr: i64,
    pub args: [u64; 6],
    /// Where it was asked for (the span its log lines belong to: the rebuild step, the
    /// function that set it).
    pub span: tracing::Span,
}

impl Queued {
    /// `calls`, all named `name`, in the current span.
    fn all(name: &'static str, calls: &[(i64, [u64; 6])]) -> Vec<Queued> {
        let span = tracing::Span::current();
        calls
            .iter()
            .map(|&(nr, args)| Queued {
                name,
                nr,
                args,
                span: span.clone(),
            })
            .collect()
    }
}

impl Injector {
    /// Runs `calls` (number and arguments) one after the other inside the thread, in one
    /// resume, and returns each raw result (a negative errno on failure), in order. `None`
    /// when this process cannot run batches: the caller runs the calls one by one. `name`
    /// names the batch in logs and errors. Arguments that point to memory must point into the
    /// scratch area.
    pub fn batch(
        &mut self,
        name: &'static str,
        calls: &[(i64, [u64; 6])],
    ) -> Result<Option<Vec<i64>>, Error> {
        self.batch_named(name, &Queued::all(name, calls))
    }

    /// [`Injector::batch`] with a name for each call (in logs); `name` names the batch.
    fn batch_named(
        &mut self,
        name: &'static str,
        calls: &[Queued],
    ) -> Result<Option<Vec<i64>>, Error> {
        // Calls gathered before this batch run first, in their order.
        self.flush_queue()?;
        if calls.len() > MAX_BATCH {
            return Err(Error::Internal {
                what: format!("a batch of {} calls (at most {MAX_BATCH})", calls.len()),
            });
        }
        if calls.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let Some(code) = self.code_page()? else {
            return Ok(None);
        };
        let table: Vec<u64> = calls
            .iter()
            .flat_map(|c| std::iter::once(c.nr as u64).chain(c.args.iter().copied()))
            .collect();
        let mut f = self.frame();
        let table = f.push_slice(&table)?;
        // Results start as a value no call returns here, so one not run is seen.
        let results = f.push_slice(&vec![u64::MAX - 5000; calls.len()])?;
        f.last = Some(CallRecord {
            name,
            nr: calls[0].nr,
            args: [calls.len() as u64, 0, 0, 0, 0, 0],
            result: None,
        });
        let mut regs = f.saved;
        regs.rip = code;
        regs.orig_rax = u64::MAX;
        regs.rbx = table.addr();
        regs.r12 = calls.len() as u64;
        regs.r13 = results.addr();
        if let Some(p) = f.parked {
            regs.r14 = code + SLEEP_TS_AT;
            if let CodePage::Shared(_) = f.code {
                // Another thread's code page: the thread leaves it for its wait, which runs
                // from the process's own `syscall; ret` and returns through the thread's
                // frame (`GADGET_SLEEP_TAIL`): only the calls themselves run from the page,
                // while its owner, if we die, first sleeps (`lend_code_page`).
                let (Some(g), Some(frame)) = (f.gadgets.flatten(), f.return_frame()) else {
                    return Ok(None);
                };
                regs.rip = code + GADGET_SLEEP_BLOB_AT;
                regs.rsp = frame;
                regs.r15 = g.syscall_ret;
                f.run_to_sleep(regs, g.syscall_ret + 2)?;
            } else {
                regs.rsp = p.rsp;
                regs.rip = code + SLEEP_BLOB_AT;
                f.run_to_sleep(regs, code + SLEEP_BLOB_AT + SLEEP_AT)?;
            }
        } else {
            regs.rip = code + TRAP_BLOB_AT;
            f.run_to_trap(regs, code + TRAP_BLOB_AT + TRAP_BLOB.len() as u64)?;
        }
        let bytes = f.read_bytes(results.addr(), calls.len() * 8)?;
        let out: Vec<i64> = bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        for (c, r) in calls.iter().zip(&out) {
            let rec = CallRecord {
                name: c.name,
                nr: c.nr,
                args: c.args,
                result: Some(*r),
            };
            let _in = c.span.enter();
            tracing::trace!("tid {}: {rec} (batched)", f.tid);
        }
        if let Some(rec) = f.last.as_mut() {
            rec.result = Some(0);
        }
        Ok(Some(out))
    }

    /// The code page, mapped and filled on first use; `None` when the target refuses it.
    pub(crate) fn code_page(&mut self) -> Result<Option<u64>, Error> {
        match self.code {
            CodePage::Mapped(a) | CodePage::Shared(a) => return Ok(Some(a)),
            CodePage::Refused => return Ok(None),
            CodePage::NotYet => {}
        }
        let page = match self.code_tail() {
            Some(page) => page,
            None => self.call(
                "mmap(code)",
                libc::SYS_mmap,
                [
                    0,
                    PAGE,
                    (libc::PROT_READ | libc::PROT_WRITE) as u64,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            )?,
        };
        // Unmapped with the scratch area from now on, whatever happens next.
        self.code = CodePage::Mapped(page);
        proc_mem::write_all(self.tid, page, &BLOB)
            .and_then(|()| proc_mem::write_all(self.tid, page + GUARD_STUB, &STUB))
            .and_then(|()| proc_mem::write_all(self.tid, page + UFFD_STUB, &UFFD_CODE))
            .and_then(|()| proc_mem::write_all(self.tid, page + TRAP_BLOB_AT, &TRAP_BLOB))
            .and_then(|()| {
                let mut sleep = BLOB[..LOOP_LEN].to_vec();
                sleep.extend_from_slice(&SLEEP_TAIL);
                proc_mem::write_all(self.tid, page + SLEEP_BLOB_AT, &sleep)
            })
            .and_then(|()| {
                let mut sleep = BLOB[..LOOP_LEN].to_vec();
                // SLEEP_TAIL without its `syscall`, `mov $15,%eax` and `syscall` (9 bytes).
                sleep.extend_from_slice(&SLEEP_TAIL[..SLEEP_TAIL.len() - 9]);
                sleep.extend_from_slice(&GADGET_SLEEP_TAIL);
                proc_mem::write_all(self.tid, page + GADGET_SLEEP_BLOB_AT, &sleep)
            })
            .and_then(|()| {
                let mut ts = SLEEP_SECS.to_le_bytes().to_vec();
                ts.extend_from_slice(&0i64.to_le_bytes());
                proc_mem::write_all(self.tid, page + SLEEP_TS_AT, &ts)
            })
            .map_err(|e| Error::sys("process_vm_writev(code)", self.tid, e))?;
        let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        match self.try_call(
            "mprotect(code)",
            libc::SYS_mprotect,
            [page, PAGE, prot, 0, 0, 0],
        )? {
            Ok(_) => Ok(Some(page)),
            Err(errno) => {
                tracing::debug!(
                    "tid {}: no batched calls (mprotect of the code page: {errno})",
                    self.tid
                );
                self.unmap_code()?;
                self.code = CodePage::Refused;
                Ok(None)
            }
        }
    }

    /// Runs `calls` in order, in batches when the process takes them, else one by one, and
    /// returns their results; the first that failed is the error (naming the call `name`).
    /// In a batch the calls after a failed one run too: only for calls that do no harm then
    /// (the layout of a process that the restore kills on any failure).
    pub fn calls_in_order(
        &mut self,
        name: &'static str,
        calls: &[(i64, [u64; 6])],
    ) -> Result<Vec<u64>, Error> {
        self.run_in_order(name, &Queued::all(name, calls))
    }

    /// [`Injector::calls_in_order`] with a name for each call; the error names the first
    /// that failed.
    fn run_in_order(&mut self, name: &'static str, calls: &[Queued]) -> Result<Vec<u64>, Error> {
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(MAX_BATCH) {
            match self.batch_named(name, chunk)? {
                Some(results) => {
                    for (c, r) in chunk.iter().zip(results) {
                        if (-4095..0).contains(&r) {
                            let rec = CallRecord {
                                name: c.name,
                                nr: c.nr,
                                args: c.args,
                                result: Some(r),
                            };
                            let _in = c.span.enter();
                            tracing::debug!("tid {}: injected call failed: {rec}", self.tid);
                            self.last = Some(rec);
                            return Err(self.remote_error(c.name, super::Errno(-r as i32)));
                        }
                        out.push(r as u64);
                    }
                }
                None => {
                    for c in chunk {
                        let _in = c.span.enter();
                        out.push(self.call(c.name, c.nr, c.args)?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Runs `f` with the calls that only set something (the typed methods that do not need
    /// their result: `rt_sigaction_set`, `setresuid`, `madvise`, ...) gathered, and run in
    /// one batch when `f` has returned, or earlier, in their order, before any other call
    /// (one whose result is needed) or batch; what they pass by pointer stays in the scratch
    /// area until then. One resume of the thread instead of one per call. A failed call is
    /// reported when its batch runs (naming it), and the calls after it in that batch run
    /// too: for a process that the restore kills on any failure, and for callers that do
    /// not expect some of these calls to fail. Nothing gathered runs when `f` fails.
    pub fn batched<T>(
        &mut self,
        f: impl FnOnce(&mut Injector) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if self.queue.is_some() {
            return f(self);
        }
        let mark = self.alloc.mark();
        self.queue = Some(Vec::new());
        let r = f(self);
        let gathered = self.queue.take().unwrap_or_default();
        let ran = match &r {
            Ok(_) if !gathered.is_empty() => self.run_in_order("gathered calls", &gathered),
            _ => Ok(Vec::new()),
        };
        self.alloc.release(mark);
        let value = r?;
        ran?;
        Ok(value)
    }

    /// Adds a call to those being gathered ([`Injector::batched`]); false when none are.
    pub(crate) fn gather(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> bool {
        let Some(q) = self.queue.as_mut() else {
            return false;
        };
        q.push(Queued {
            name,
            nr,
            args,
            span: tracing::Span::current(),
        });
        true
    }

    /// Runs the calls gathered so far ([`Injector::batched`]), if any.
    pub(crate) fn flush_queue(&mut self) -> Result<(), Error> {
        let gathered = match self.queue.as_mut() {
            Some(q) if !q.is_empty() => std::mem::take(q),
            _ => return Ok(()),
        };
        self.run_in_order("gathered calls", &gathered)?;
        Ok(())
    }

    /// The code page, when this injector has it mapped, for the injector of another thread
    /// of the process ([`Injector::share_code_page`]).
    pub fn code_page_mapped(&self) -> Option<u64> {
        match self.code {
            CodePage::Mapped(a) | CodePage::Shared(a) => Some(a),
            _ => None,
        }
    }

    /// For a parked thread with gadgets whose injector owns its code page (the leader at
    /// dump): leaves the thread, until its next call or [`Injector::take_back_code_page`],
    /// in a state where, if we die, it first sleeps 2 s (a `ppoll` from its own
    /// `syscall; ret`), then returns through its frames as usual (unmapping the page). Other
    /// threads can then run batches from the page ([`Injector::share_code_page`]): one that
    /// is in the middle of its calls when we die finishes them long before the page goes.
    /// Returns the page, or `None` when this thread cannot lend it (the others then run
    /// their calls one by one).
    pub fn lend_code_page(&mut self) -> Result<Option<u64>, Error> {
        let (Some(parked), Some(g), Some(frame), CodePage::Mapped(page)) = (
            self.parked,
            self.gadgets.flatten(),
            self.return_frame(),
            self.code,
        ) else {
            return Ok(None);
        };
        if self.area.is_none() {
            return Ok(None);
        }
        let mut regs = parked;
        regs.rip = g.syscall_ret;
        regs.rax = NR_PPOLL;
        regs.orig_rax = u64::MAX;
        regs.rdi = 0;
        regs.rsi = 0;
        regs.rdx = page + SLEEP_TS_AT;
        regs.r10 = 0;
        regs.r8 = 0;
        regs.rsp = frame;
        ptrace::set_regs(self.tid, &regs)
            .map_err(|e| Error::sys("PTRACE_SETREGS(sleeping)", self.tid, e))?;
        Ok(Some(page))
    }

    /// Ends [`Injector::lend_code_page`]: the thread is parked as before.
    pub fn take_back_code_page(&mut self) -> Result<(), Error> {
        self.repark()
    }

    /// Runs batches from the code page another injector of the process mapped (`None`: it
    /// has none, and this one makes none either: its calls run one by one). It is never
    /// unmapped by this injector. A parked thread's batches leave the page before their
    /// final wait (`GADGET_SLEEP_TAIL`), and run only when it has gadgets.
    pub fn share_code_page(&mut self, page: Option<u64>) {
        self.code = match page {
            Some(a) => CodePage::Shared(a),
            None => CodePage::Refused,
        };
    }

    /// Unmaps the code page, if mapped (the page after the scratch area goes with it).
    pub(crate) fn unmap_code(&mut self) -> Result<(), Error> {
        self.unguard()?;
        if let CodePage::Shared(_) = self.code {
            self.code = CodePage::NotYet;
        }
        if let CodePage::Mapped(page) = self.code {
            self.code = CodePage::NotYet;
            if self.code_tail() != Some(page) {
                self.call_cleanup("munmap(code)", libc::SYS_munmap, [page, PAGE, 0, 0, 0, 0])?;
            }
        }
        Ok(())
    }

    /// Creates a userfaultfd with `flags` in the parked thread and lets `take` take it (by
    /// its number in the process) while the thread stands right after the call; then the
    /// thread closes it. The stub runs both calls and returns through the thread's frame
    /// whenever the dumper dies, so no userfaultfd of ours can stay in the process. `None`
    /// when the thread is not parked or the process cannot have the code page.
    pub fn userfaultfd_taken<R>(
        &mut self,
        flags: u32,
        take: impl FnOnce(i32) -> R,
    ) -> Result<Option<UffdTaken<R>>, Error> {
        let Some(parked) = self.parked else {
            return Ok(None);
        };
        let Some(code) = self.code_page()? else {
            return Ok(None);
        };
        let tid = self.tid;
        let stub = code + UFFD_STUB;
        let mut regs = self.saved;
        regs.rip = stub;
        regs.rsp = parked.rsp;
        regs.orig_rax = u64::MAX;
        regs.rax = libc::SYS_userfaultfd as u64;
        regs.rdi = flags.into();
        self.last = Some(CallRecord {
            name: "userfaultfd",
            nr: libc::SYS_userfaultfd,
            args: [flags.into(), 0, 0, 0, 0, 0],
            result: None,
        });
        ptrace::set_regs(tid, &regs).map_err(|e| Error::sys("PTRACE_SETREGS", tid, e))?;
        crate::fault::point_of("injected system call (while it runs)", "userfaultfd")?;
        // Entry and exit of userfaultfd.
        self.syscall_stop(stub + UFFD_CREATED)?;
        let r = self.syscall_stop(stub + UFFD_CREATED)?.rax as i64;
        if let Some(rec) = self.last.as_mut() {
            rec.result = Some(r);
        }
        tracing::trace!(
            "tid {tid}: {} (stub)",
            self.last
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default()
        );
        let created = if (-4095..0).contains(&r) {
            Err(super::Errno(-r as i32))
        } else {
            Ok(r as i32)
        };
        let taken = created.ok().map(take);
        // A failure injected here still closes it (as the thread would without us).
        let fault =
            crate::fault::point_of("injected system call (while it runs)", "close(userfaultfd)");
        // Entry and exit of the close.
        self.syscall_stop(stub + UFFD_CLOSED)?;
        let closed = self.syscall_stop(stub + UFFD_CLOSED)?.rax as i64;
        self.repark()?;
        fault?;
        if created.is_ok() && closed != 0 {
            return Err(Error::Inject {
                tid,
                nr: libc::SYS_close,
                reason: format!("close of the userfaultfd {r} in the process gave {closed}"),
            });
        }
        Ok(Some(UffdTaken { created, taken }))
    }

    /// Resumes the thread to its next syscall stop, which must be at `ip` (right after the
    /// `syscall` instruction), and returns its registers there.
    pub(super) fn syscall_stop(&mut self, ip: u64) -> Result<stasis_sys::UserRegs, Error> {
        let tid = self.tid;
        for _ in 0..1000 {
            ptrace::syscall(tid).map_err(|e| Error::sys("PTRACE_SYSCALL", tid, e))?;
            match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
                ptrace::WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } => {}
                ptrace::WaitStatus::Stopped { sig, event } => {
                    self.hold(sig, event);
                    continue;
                }
                other => {
                    return Err(Error::TargetDied {
                        pid: tid,
                        how: format!("{other:?}{}", self.during()),
                    })
                }
            }
            let after = ptrace::get_regs(tid).map_err(|e| Error::sys("PTRACE_GETREGS", tid, e))?;
            if after.rip != ip {
                return Err(Error::Inject {
                    tid,
                    nr: after.orig_rax as i64,
                    reason: format!(
                        "thread went to {:#x} instead of {ip:#x}{}",
                        after.rip,
                        self.during()
                    ),
                });
            }
            return Ok(after);
        }
        Err(Error::Inject {
            tid,
            nr: 0,
            reason: format!("no syscall stop{}", self.during()),
        })
    }

    /// Runs a parked thread from `regs` (at a sleeping blob) until it sleeps in the `ppoll`
    /// at its end (stopped there, it stands at `sleep_ip`), and stops it there (see
    /// [`SLEEP_TAIL`]); then parks it again.
    fn run_to_sleep(&mut self, regs: stasis_sys::UserRegs, sleep_ip: u64) -> Result<(), Error> {
        let tid = self.tid;
        ptrace::set_regs(tid, &regs).map_err(|e| Error::sys("PTRACE_SETREGS", tid, e))?;
        crate::fault::point_of("injected system call (while it runs)", "batch")?;
        ptrace::cont(tid, 0).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?;
        // Until it sleeps in the ppoll at the end (its calls do not block): the kernel shows
        // the call a thread waits in, with its arguments, in /proc/PID/task/TID/syscall.
        let path = std::path::PathBuf::from(format!("/proc/{tid}/task/{tid}/syscall"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut spins = 0u32;
        loop {
            let text = crate::procfs::slurp_string(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if text.split_whitespace().next() == Some(&NR_PPOLL.to_string()) {
                break;
            }
            // Stopped meanwhile for something else (an unblockable stop): held, passed over.
            match ptrace::waitpid_nohang(tid).map_err(|e| Error::sys("waitpid", tid, e))? {
                None => {}
                Some(ptrace::WaitStatus::Stopped { sig, event }) => {
                    self.hold(sig, event);
                    ptrace::cont(tid, 0).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?
                }
                Some(other) => {
                    return Err(Error::TargetDied {
                        pid: tid,
                        how: format!("{other:?}{}", self.during()),
                    })
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Inject {
                    tid,
                    nr: 0,
                    reason: format!("batched calls did not end{}", self.during()),
                });
            }
            spins += 1;
            if spins > 20 {
                std::thread::sleep(std::time::Duration::from_micros(20));
            } else {
                std::thread::yield_now();
            }
        }
        ptrace::interrupt(tid).map_err(|e| Error::sys("PTRACE_INTERRUPT", tid, e))?;
        loop {
            match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
                ptrace::WaitStatus::Stopped {
                    event: super::PTRACE_EVENT_STOP,
                    ..
                } => break,
                ptrace::WaitStatus::Stopped { sig, event } => {
                    self.hold(sig, event);
                    ptrace::cont(tid, 0).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?
                }
                other => {
                    return Err(Error::TargetDied {
                        pid: tid,
                        how: format!("{other:?}{}", self.during()),
                    })
                }
            }
        }
        let after = ptrace::get_regs(tid).map_err(|e| Error::sys("PTRACE_GETREGS", tid, e))?;
        // Parked again whatever happened: its registers are the frame's return.
        self.repark()?;
        if after.rip != sleep_ip {
            return Err(Error::Inject {
                tid,
                nr: 0,
                reason: format!(
                    "batched calls: the thread was stopped at {:#x}, not in its final wait at {:#x}{}",
                    after.rip,
                    sleep_ip,
                    self.during()
                ),
            });
        }
        Ok(())
    }

    /// Runs a thread that is not parked from `regs` until it stands at `end` (after the
    /// final `int3` of [`TRAP_BLOB`]).
    fn run_to_trap(&mut self, regs: stasis_sys::UserRegs, end: u64) -> Result<(), Error> {
        let tid = self.tid;
        ptrace::set_regs(tid, &regs).map_err(|e| Error::sys("PTRACE_SETREGS", tid, e))?;
        crate::fault::point_of("injected system call (while it runs)", "batch")?;
        let start = end - TRAP_BLOB.len() as u64;
        // Every blockable signal is blocked while calls are injected; a stop for anything
        // else (a ptrace event, an unblockable stop) is passed over, a bounded number of times.
        for _ in 0..1000 {
            ptrace::cont(tid, 0).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?;
            match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
                ptrace::WaitStatus::Stopped { event, .. } if event != 0 => continue,
                ptrace::WaitStatus::Stopped { sig, event } => self.hold(sig, event),
                other => {
                    return Err(Error::TargetDied {
                        pid: tid,
                        how: format!("{other:?}{}", self.during()),
                    })
                }
            }
            let after = ptrace::get_regs(tid).map_err(|e| Error::sys("PTRACE_GETREGS", tid, e))?;
            if after.rip == end {
                return Ok(());
            }
            if !(start..end).contains(&after.rip) {
                return Err(Error::Inject {
                    tid,
                    nr: 0,
                    reason: format!(
                        "batched calls: thread went to {:#x}, outside the code at {start:#x}{}",
                        after.rip,
                        self.during()
                    ),
                });
            }
        }
        Err(Error::Inject {
            tid,
            nr: 0,
            reason: format!("batched calls did not end{}", self.during()),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::dump::freeze::Frozen;
    use crate::inject::{vdso_syscall_offset, Injector};

    /// A batch in a real process: every call runs, in order, failures included; the code page
    /// goes with the scratch area.
    #[test]
    fn batch_runs_every_call_in_order() {
        if stasis_sys::process::geteuid() != 0 {
            eprintln!("notice: batch_runs_every_call_in_order needs root; skipped");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("start sleep");
        let pid = child.id() as i32;
        let result = std::panic::catch_unwind(|| {
            let mut frozen = Frozen::freeze(pid).expect("freeze");
            let vdso = crate::procfs::read_maps(pid)
                .expect("maps")
                .into_iter()
                .find(|m| m.name == "[vdso]")
                .expect("a vdso");
            let mut inj = Injector::new(pid, vdso.start + vdso_syscall_offset().expect("offset"))
                .expect("injector");
            inj.map_scratch(None).expect("scratch");
            let maps_before = crate::procfs::read_maps(pid).expect("maps").len();
            let calls = [
                (libc::SYS_getpid, [0; 6]),
                // An unknown system call: ENOSYS, and the batch goes on.
                (100_000, [0; 6]),
                (libc::SYS_getppid, [0; 6]),
                (libc::SYS_close, [u64::MAX >> 33, 0, 0, 0, 0, 0]),
            ];
            let r = inj
                .batch("test", &calls)
                .expect("batch")
                .expect("batches run");
            assert_eq!(r[0], pid as i64);
            assert_eq!(r[1], -(libc::ENOSYS as i64));
            assert_eq!(r[2], stasis_sys::process::getpid() as i64);
            assert_eq!(r[3], -(libc::EBADF as i64));
            // The code page is there once, then goes with the scratch area.
            let again = inj.batch("test", &calls[..1]).expect("batch").expect("run");
            assert_eq!(again, vec![pid as i64]);
            let maps = crate::procfs::read_maps(pid).expect("maps").len();
            assert_eq!(maps, maps_before + 1, "one code page");
            inj.finish().expect("finish");
            let maps_after = crate::procfs::read_maps(pid).expect("maps").len();
            assert_eq!(
                maps_after,
                maps_before - 1,
                "scratch and code page unmapped"
            );
            frozen.thaw().expect("thaw");
        });
        let _ = child.kill();
        let _ = child.wait();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
}
