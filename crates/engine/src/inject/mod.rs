//! Running system calls inside a stopped thread.
//!
//! The thread's registers are saved, its instruction pointer is pointed at a `syscall`
//! instruction (one found in the `[vdso]`, so nothing is written into the target's code), the
//! argument registers are set, and the thread is single-stepped over that one instruction.
//! `orig_rax` is set to -1 so that the kernel never applies its syscall-restart logic to the
//! injected call. [`Injector::finish`] puts the saved registers back.
//!
//! At dump, the thread is first *parked* ([`Injector::park`], [`park`]): its calls then run
//! from `syscall; ret` bytes of its own code with its stack on a signal frame of its state,
//! driven with syscall stops, so that a thread whose dumper dies at any moment returns to
//! where it was, and the injector's memory (scratch area and code page, one mapping made by
//! [`Injector::map_scratch`]) is unmapped by the thread itself on the way.
//!
//! Layers, from the bottom:
//!
//! * [`Injector::raw`], [`Injector::try_call`] and [`Injector::call`] run one call by number
//!   with six raw arguments. Every call is logged (`tracing`, target `stasis_engine::inject`,
//!   level trace; a call that fails as an error at debug) with its name, number, arguments and
//!   result, and the last one is kept ([`Injector::last_call`]) so that a failure can name it.
//! * The scratch area ([`scratch`]): memory mapped in the target for arguments passed by
//!   pointer. A [`Frame`] hands out typed remote pointers ([`RemotePtr`], [`RemoteSlice`]) to
//!   values copied there ([`Frame::push`]), read back with [`Injector::read`].
//! * Typed wrappers ([`calls`]): one method per system call the engine injects, taking typed
//!   arguments and the kernel structures of [`kabi`] and returning typed results.

pub mod batch;
pub mod calls;
mod errno;
pub mod gadget_cache;
pub mod park;
pub mod prefetch;
pub mod scratch;

pub use calls::Errno;
pub use errno::errno_name;
pub use scratch::{Frame, RemotePtr, RemoteSlice, ScratchAlloc};
/// The kernel structures the typed wrappers take and return.
pub use stasis_sys::kabi;

use crate::Error;
use stasis_sys::kabi::Pod;
use stasis_sys::{proc_mem, process, ptrace, Pid, UserRegs};
use std::fmt;

/// A stopped thread in which system calls can be run.
pub struct Injector {
    tid: Pid,
    syscall_ip: u64,
    saved: UserRegs,
    /// A private read-write scratch area mapped in the target, for syscall arguments.
    scratch: Option<(u64, u64)>,
    /// Hands out the scratch area (see [`Frame`]).
    alloc: ScratchAlloc,
    /// The last call run, for error reports.
    last: Option<CallRecord>,
    /// [`Injector::finish`] completed: the thread has its registers back.
    finished: bool,
    /// The page of code for batched calls ([`batch`]).
    code: batch::CodePage,
    /// The registers the thread is left with between calls, when parked ([`park`]).
    parked: Option<UserRegs>,
    /// When parked: the signal mask the thread had, put back by [`Injector::finish`].
    park_mask: Option<u64>,
    /// When parked with a code page: the `syscall` of the guarded stub, which calls are run
    /// from (and which returns through the frame if the thread runs on without us).
    guarded: Option<u64>,
    /// Answers asked ahead in one batch ([`prefetch`]), each handed out once.
    answers: Vec<prefetch::Answer>,
    /// The process's own code a parked thread returns through ([`park::Gadgets`]), once
    /// looked for (`Some(None)`: it has none).
    gadgets: Option<Option<park::Gadgets>>,
    /// When parked with gadgets: where the thread's frame starts (its `pretcode`).
    frame_at: Option<u64>,
    /// The mapping this injector made and owns (the scratch area and, in its last page, the
    /// code page), and whether the clean-up frame below the thread's frame unmaps it if
    /// the thread runs on without us ([`park::cleanup_frame`]).
    area: Option<Area>,
    /// Stop signals that arrived while calls ran (signal-delivery-stops), held back so that
    /// the calls go on: a SIGSTOP (which no mask blocks) sent to a process being dumped, say.
    /// Each is sent to the thread again ([`process::tkill`]) when the injector lets go of it,
    /// so that the process stops, as it was asked to, once it runs. (Other signals only come
    /// through an unparked thread's own mask, and are passed over as before: a restore queues
    /// the pending signals of its image itself.)
    held: Vec<i32>,
    /// Calls gathered to run in one batch ([`Injector::batched`]), while gathering.
    queue: Option<Vec<batch::Queued>>,
    /// The thread was single-stepped (a call run in a thread that is not parked): the
    /// kernel keeps its trap flag after the last step, which [`Injector::finish_parked`]
    /// then turns off. (Every other resume, PTRACE_CONT or PTRACE_SYSCALL, turns it off.)
    stepped: bool,
    /// The process's mappings, read a moment ago while it was frozen ([`Injector::know_mappings`]):
    /// until the injector maps memory of its own, where gadgets and a free address are looked
    /// for instead of in a new read of /proc/PID/maps.
    maps: Option<Vec<crate::procfs::MapEntry>>,
}

/// The scratch area and the code page, one mapping of [`AREA_LEN`] bytes.
#[derive(Debug, Clone, Copy)]
struct Area {
    addr: u64,
    /// The clean-up frame that unmaps it, when written and in use.
    cleanup: Option<u64>,
}

/// The mapping of an injector: the scratch area and a page for code after it.
pub const AREA_LEN: u64 = SCRATCH_LEN + 4096;

/// Size of the scratch area used for syscall arguments.
pub const SCRATCH_LEN: u64 = 64 * 1024;

/// One injected system call: what ran and what it returned. Displayed like a line of strace:
/// `prctl(PR_SET_PDEATHSIG) [157] (1, 200, 0, 0, 0, 0) = -1 EINVAL (Invalid argument)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub name: &'static str,
    pub nr: i64,
    pub args: [u64; 6],
    /// The raw result (a negative errno on failure); `None` when the call did not complete.
    pub result: Option<i64>,
}

/// An argument or result: small numbers in decimal, addresses and flags in hex.
struct Num(u64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let signed = self.0 as i64;
        if self.0 < 0x10000 || (-0x10000..0).contains(&signed) {
            write!(f, "{signed}")
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

impl fmt::Display for CallRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] (", self.name, self.nr)?;
        // All six registers: which of them a call reads is up to the call.
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", Num(*a))?;
        }
        f.write_str(") = ")?;
        match self.result {
            None => f.write_str("? (did not complete)"),
            Some(r) if (-4095..0).contains(&r) => write!(f, "-1 {}", Errno(-r as i32)),
            Some(r) => write!(f, "{}", Num(r as u64)),
        }
    }
}

impl Injector {
    /// Takes over `tid`, which must be in a ptrace-stop. `syscall_ip` is the address of a
    /// `syscall` instruction in the target.
    pub fn new(tid: Pid, syscall_ip: u64) -> Result<Injector, Error> {
        let saved = ptrace::get_regs(tid).map_err(|e| Error::sys("PTRACE_GETREGS", tid, e))?;
        tracing::trace!("tid {tid}: injecting at {syscall_ip:#x}");
        Ok(Injector {
            tid,
            syscall_ip,
            saved,
            scratch: None,
            alloc: ScratchAlloc::new(SCRATCH_LEN),
            last: None,
            finished: false,
            code: batch::CodePage::NotYet,
            parked: None,
            park_mask: None,
            guarded: None,
            answers: Vec::new(),
            gadgets: None,
            frame_at: None,
            area: None,
            held: Vec::new(),
            queue: None,
            stepped: false,
            maps: None,
        })
    }

    /// The process's mappings as read a moment ago, all its threads stopped since (collect's
    /// smaps): [`Injector::park`] and [`Injector::map_scratch`] use them instead of reading
    /// /proc/PID/maps again (~50 µs each).
    pub fn know_mappings(&mut self, maps: Vec<crate::procfs::MapEntry>) {
        self.maps = Some(maps);
    }

    /// The gadgets found in the process, to hand to the injector of another of its threads
    /// ([`Injector::set_gadgets`]) so that it does not look for them again.
    pub fn gadgets(&self) -> Option<Option<park::Gadgets>> {
        self.gadgets
    }

    /// Uses gadgets found by the injector of another thread of the same process.
    pub fn set_gadgets(&mut self, gadgets: Option<Option<park::Gadgets>>) {
        self.gadgets = gadgets;
    }

    /// The gadgets of the process, looked for once.
    fn find_gadgets(&mut self) -> Result<Option<park::Gadgets>, Error> {
        if let Some(g) = self.gadgets {
            return Ok(g);
        }
        let t0 = std::time::Instant::now();
        let g = park::find_gadgets(self.tid, self.maps.as_deref())?;
        tracing::trace!(
            "tid {}: gadgets {g:x?} found in {:?}",
            self.tid,
            t0.elapsed()
        );
        if g.is_none() {
            tracing::debug!(
                "tid {}: no `syscall; ret` or signal restorer in its code: a killed dumper \
                 would leave the scratch area and the code page mapped",
                self.tid
            );
        }
        self.gadgets = Some(g);
        Ok(g)
    }

    /// Parks the thread between calls on a signal frame written below its stack (under the
    /// red zone, where a signal frame would go), so that it returns to its saved registers,
    /// `sigmask` and XSAVE area if it is resumed without us ([`park`]). Run no call before
    /// (the frame holds the registers the thread had when taken over); signals are blocked
    /// here. Returns whether it is parked (not when its XSAVE area has no layout a frame
    /// can hold, or its stack has no room mapped). [`Injector::guard`] covers the calls too.
    pub fn park(&mut self, sigmask: u64) -> Result<bool, Error> {
        let tid = self.tid;
        let xstate =
            ptrace::get_xstate(tid).map_err(|e| Error::sys("PTRACE_GETREGSET(xstate)", tid, e))?;
        // Right below the red zone, where the kernel would put a signal frame.
        let at = (self
            .saved
            .rsp
            .wrapping_sub(128 + park::frame_len(xstate.len())))
            & !63;
        let gadgets = self.find_gadgets()?;
        // With gadgets, the room of the clean-up frame below is written too (zeros), so that
        // its write later cannot fail.
        let mut parked = None;
        for g in [gadgets, None] {
            let (ip, pretcode) = g.map_or((self.syscall_ip, 0), |g| (g.syscall_ret, g.restorer));
            let Some((frame, regs)) = park::frame(&self.saved, sigmask, &xstate, at, ip, pretcode)
            else {
                tracing::debug!(
                    "tid {tid}: not parked (XSAVE area of {} bytes, software bytes {:02x?})",
                    xstate.len(),
                    xstate.get(464..512)
                );
                break;
            };
            let room = if g.is_some() { park::CLEANUP_ROOM } else { 0 };
            let mut bytes = vec![0u8; room as usize];
            bytes.extend_from_slice(&frame);
            match proc_mem::write_all(tid, at - room, &bytes) {
                Ok(()) => {
                    parked = Some((regs, g));
                    break;
                }
                Err(e) => {
                    tracing::debug!(
                        "tid {tid}: no room below its stack ({e}) for frames of {} bytes",
                        bytes.len()
                    );
                    if g.is_none() {
                        break;
                    }
                }
            }
        }
        let is_parked = parked.is_some();
        if let Some((regs, g)) = parked {
            self.parked = Some(regs);
            self.park_mask = Some(sigmask);
            if g.is_some() {
                self.frame_at = Some(at);
            } else {
                self.gadgets = Some(None);
            }
            self.repark()?;
        }
        ptrace::set_sigmask(tid, u64::MAX).map_err(|e| Error::sys("PTRACE_SETSIGMASK", tid, e))?;
        Ok(is_parked)
    }

    /// Where the thread returns through when it runs on without us: its frame, or the
    /// clean-up frame below it while the area is ours and armed. The parked stack pointer is
    /// this plus 8 (as after a handler's `ret`).
    fn return_frame(&self) -> Option<u64> {
        let f = self.frame_at?;
        Some(self.area.and_then(|a| a.cleanup).unwrap_or(f))
    }

    /// Points the parked registers at the frame the thread returns through.
    fn set_return_frame(&mut self) -> Result<(), Error> {
        if let (Some(f), Some(p)) = (self.return_frame(), self.parked.as_mut()) {
            p.rsp = f + 8;
        }
        self.repark()
    }

    /// For a parked thread: runs the calls from now on from a stub in the code page of
    /// batched calls, whose next instructions return through the frame if the thread runs on
    /// without us while a call runs. Nothing when not parked or without a code page.
    pub fn guard(&mut self) -> Result<(), Error> {
        // With gadgets every call returns through the frame by itself.
        if self.parked.is_none() || self.guarded.is_some() || self.frame_at.is_some() {
            return Ok(());
        }
        if let Some(code) = self.code_page()? {
            let stub = code + batch::GUARD_STUB;
            if let Some(p) = self.parked.as_mut() {
                p.rip = stub + 2;
            }
            self.guarded = Some(stub);
            self.repark()?;
        }
        Ok(())
    }

    /// Runs calls from the `[vdso]` again, before the code page goes.
    fn unguard(&mut self) -> Result<(), Error> {
        if self.guarded.take().is_some() {
            if let Some(p) = self.parked.as_mut() {
                p.rip = self.syscall_ip;
                p.rax = 15; // rt_sigreturn
            }
            self.repark()?;
        }
        Ok(())
    }

    /// Puts the thread back in its parked registers after a call, when parked.
    fn repark(&mut self) -> Result<(), Error> {
        if let Some(regs) = &self.parked {
            ptrace::set_regs(self.tid, regs)
                .map_err(|e| Error::sys("PTRACE_SETREGS(parked)", self.tid, e))?;
        }
        Ok(())
    }

    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// The registers the thread had when we took it over.
    pub fn saved_regs(&self) -> &UserRegs {
        &self.saved
    }

    /// Replaces the registers that [`Injector::finish`] will restore.
    pub fn set_saved_regs(&mut self, regs: UserRegs) {
        self.saved = regs;
    }

    /// The address of the `syscall` instruction used for injection.
    pub fn syscall_ip(&self) -> u64 {
        self.syscall_ip
    }

    /// Moves the `syscall` instruction used for injection (after the vdso was moved).
    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    /// The last system call run in this thread (completed or not), for error reports.
    pub fn last_call(&self) -> Option<&CallRecord> {
        self.last.as_ref()
    }

    /// Runs one system call and returns the raw result (a negative errno on failure).
    pub fn raw(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, Error> {
        let r = self.run("syscall", nr, args)?;
        self.log_done(false);
        Ok(r)
    }

    /// Runs a system call; `Ok(Err(errno))` when the call itself failed. Errors are those of
    /// the injection (the thread died, ptrace failed).
    pub fn try_call(
        &mut self,
        name: &'static str,
        nr: i64,
        args: [u64; 6],
    ) -> Result<Result<u64, Errno>, Error> {
        let r = self.run(name, nr, args)?;
        self.log_done(false);
        Ok(if (-4095..0).contains(&r) {
            Err(Errno(-r as i32))
        } else {
            Ok(r as u64)
        })
    }

    /// Runs a system call and turns a negative result into an error naming it.
    pub fn call(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<u64, Error> {
        let r = self.run(name, nr, args)?;
        if (-4095..0).contains(&r) {
            self.log_done(true);
            return Err(self.remote_error(name, Errno(-r as i32)));
        }
        self.log_done(false);
        Ok(r as u64)
    }

    /// The error for call `name` having failed with `errno` in this thread.
    pub fn remote_error(&self, name: &'static str, errno: Errno) -> Error {
        Error::Remote {
            call: name,
            tid: self.tid,
            errno: errno.io_error(),
        }
    }

    /// Logs the last call: at trace level, or at debug level when it failed as an error.
    fn log_done(&self, failed: bool) {
        if let Some(rec) = &self.last {
            if failed {
                tracing::debug!("tid {}: injected call failed: {rec}", self.tid);
            } else {
                tracing::trace!("tid {}: {rec}", self.tid);
            }
        }
    }

    /// Runs one system call; records it as the last call.
    fn run(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<i64, Error> {
        // Calls gathered before this one run first, in their order.
        self.flush_queue()?;
        self.last = Some(CallRecord {
            name,
            nr,
            args,
            result: None,
        });
        let r = self.step_over_syscall(nr, args);
        match &r {
            Ok(v) => {
                if let Some(rec) = self.last.as_mut() {
                    rec.result = Some(*v);
                }
            }
            Err(e) => {
                if let Some(rec) = &self.last {
                    tracing::debug!("tid {}: {rec}: {e}", self.tid);
                }
            }
        }
        r
    }

    /// A stop (`sig`, ptrace `event`) that the calls are resumed past: a signal-delivery-stop
    /// of a stop signal is held, to be sent again when the injector lets go of the thread
    /// (see `held`); a ptrace event (`event` != 0) is not a signal.
    fn hold(&mut self, sig: i32, event: i32) {
        if event != 0 {
            return;
        }
        if hold_stop(&mut self.held, sig) {
            tracing::debug!(
                "tid {}: stop signal {sig} arrived during injected calls: held until they end",
                self.tid
            );
        } else if sig != libc::SIGTRAP {
            tracing::debug!(
                "tid {}: signal {sig} arrived during injected calls: passed over",
                self.tid
            );
        }
    }

    /// Sends the held signals to the thread again (see `held`).
    fn release_held(&mut self) -> Result<(), Error> {
        for sig in std::mem::take(&mut self.held) {
            process::tkill(self.tid, sig).map_err(|e| Error::sys("tkill", self.tid, e))?;
        }
        Ok(())
    }

    /// What the last call was, for the errors of the injection itself.
    fn during(&self) -> String {
        self.last
            .as_ref()
            .map(|r| format!(" during {r}"))
            .unwrap_or_default()
    }

    fn step_over_syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, Error> {
        let tid = self.tid;
        let mut regs = self.saved;
        // Parked: the call runs on the frame's stack (no call injected at dump reads the
        // stack pointer), from `syscall; ret` with the frame's `pretcode` on top of the stack
        // when there are gadgets, else from the guarded stub when there is one.
        let ip = match (self.return_frame(), self.gadgets.flatten()) {
            (Some(f), Some(g)) => {
                regs.rsp = f;
                g.syscall_ret
            }
            _ => {
                if let Some(p) = &self.parked {
                    regs.rsp = p.rsp;
                }
                self.guarded.unwrap_or(self.syscall_ip)
            }
        };
        let protected = self.guarded.is_some() || self.return_frame().is_some();
        regs.rip = ip;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        // Test builds: a failure (or the death of the injector) at this call: with its
        // registers set when the call is guarded (see `park`), else just before.
        let name = self.last.as_ref().map_or("?", |r| r.name);
        if !protected {
            crate::fault::point_of("injected system call (before it starts)", name)?;
        }
        ptrace::set_regs(tid, &regs).map_err(|e| Error::sys("PTRACE_SETREGS", tid, e))?;
        if protected {
            crate::fault::point_of("injected system call (while it runs)", name)?;
        }
        if self.parked.is_some() {
            return self.run_to_syscall_exit(ip);
        }
        loop {
            self.stepped = true;
            ptrace::singlestep(tid, 0).map_err(|e| Error::sys("PTRACE_SINGLESTEP", tid, e))?;
            match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
                // A ptrace event (a clone reported in the middle of the call, say) is not the
                // end of the call: go on stepping.
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
            // The instruction ran when the thread stands right after it. Any other stop (a
            // signal arriving, a pending ptrace event) happened before: step again.
            if after.rip == ip + 2 {
                self.repark()?;
                return Ok(after.rax as i64);
            }
            if after.rip != ip {
                return Err(Error::Inject {
                    tid,
                    nr,
                    reason: format!(
                        "thread went to {:#x} instead of running the syscall{}",
                        after.rip,
                        self.during()
                    ),
                });
            }
        }
    }

    /// Runs the call set up at `ip` to its end with syscall stops instead of a single step
    /// (a parked thread: single-stepping would leave the trap flag set, and the thread
    /// would die of SIGTRAP if we died). The first syscall stop is the call's entry, the
    /// next its exit, where the result is read; then the thread is parked again.
    fn run_to_syscall_exit(&mut self, ip: u64) -> Result<i64, Error> {
        // Entry and exit stops both stand right after the `syscall` instruction.
        self.syscall_stop(ip + 2)?;
        let result = self.syscall_stop(ip + 2)?.rax as i64;
        self.repark()?;
        Ok(result)
    }

    /// Maps the scratch area (anywhere, or at `at` when given) and returns its address:
    /// one mapping of [`AREA_LEN`] bytes, the scratch area then a page for the code of
    /// batched calls ([`batch`]). In a thread parked with gadgets, the clean-up
    /// frame that unmaps it is written and in use before the `mmap` runs, at an address
    /// chosen free beforehand ([`free_address`]), so that a dumper killed even while the
    /// `mmap` runs leaves nothing mapped.
    pub fn map_scratch(&mut self, at: Option<u64>) -> Result<u64, Error> {
        if let Some((addr, _)) = self.scratch {
            return Ok(addr);
        }
        if let Some(a) = at {
            // The scratch area and the code page after it, one mapping: made and removed by
            // one call each.
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
            let got = self.mmap_rw("mmap(scratch)", a, AREA_LEN, flags)?;
            self.area = Some(Area {
                addr: got,
                cleanup: None,
            });
            self.set_scratch(Some((got, SCRATCH_LEN)));
            return Ok(got);
        }
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let mut want = 0;
        if let (Some(frame), Some(g)) = (self.frame_at, self.gadgets.flatten()) {
            // Read now: the mappings change from here on.
            let maps = self.maps.take();
            if let Some(addr) = free_address(self.tid, AREA_LEN, maps.as_deref())? {
                let cleanup = frame - park::CLEANUP_ROOM;
                let f = park::cleanup_frame(&self.saved, frame, g, (addr, AREA_LEN));
                proc_mem::write_all(self.tid, cleanup, &f)
                    .map_err(|e| Error::sys("process_vm_writev(clean-up frame)", self.tid, e))?;
                // From here the thread unmaps [addr, addr + AREA_LEN) before it returns
                // through its frame: a range that is free until the mmap below.
                self.area = Some(Area {
                    addr,
                    cleanup: Some(cleanup),
                });
                self.set_return_frame()?;
                flags |= libc::MAP_FIXED_NOREPLACE;
                want = addr;
            }
        }
        let got = self.mmap_rw("mmap(scratch)", want, AREA_LEN, flags);
        let got = match got {
            Ok(g) if want == 0 || g == want => g,
            other => {
                // Nothing of ours there: the thread must not unmap that range.
                self.area = None;
                self.set_return_frame()?;
                let got = other?;
                return Err(Error::Inject {
                    tid: self.tid,
                    nr: libc::SYS_mmap,
                    reason: format!("mmap of the scratch area at {want:#x} gave {got:#x}"),
                });
            }
        };
        if want == 0 {
            self.area = Some(Area {
                addr: got,
                cleanup: None,
            });
        }
        self.set_scratch(Some((got, SCRATCH_LEN)));
        Ok(got)
    }

    /// Runs `mmap(addr, len, PROT_READ|PROT_WRITE, flags, -1, 0)`.
    fn mmap_rw(
        &mut self,
        name: &'static str,
        addr: u64,
        len: u64,
        flags: i32,
    ) -> Result<u64, Error> {
        self.call(
            name,
            libc::SYS_mmap,
            [
                addr,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                flags as u64,
                u64::MAX,
                0,
            ],
        )
    }

    /// The page for code after the scratch area, when this injector mapped both.
    pub(crate) fn code_tail(&self) -> Option<u64> {
        self.area.map(|a| a.addr + SCRATCH_LEN)
    }

    fn set_scratch(&mut self, scratch: Option<(u64, u64)>) {
        self.scratch = scratch;
        self.alloc = ScratchAlloc::new(scratch.map_or(0, |(_, len)| len));
    }

    /// Address of the scratch area; it must have been mapped.
    pub fn scratch(&self) -> Result<u64, Error> {
        self.scratch.map(|(a, _)| a).ok_or(Error::Inject {
            tid: self.tid,
            nr: 0,
            reason: "no scratch area mapped".into(),
        })
    }

    /// Checks that `[addr, addr + len)` lies inside the scratch area.
    fn check_scratch(&self, addr: u64, len: u64) -> Result<(), Error> {
        let base = self.scratch()?;
        let inside = addr
            .checked_sub(base)
            .is_some_and(|off| self.alloc.contains(off, len));
        if inside {
            return Ok(());
        }
        Err(Error::Inject {
            tid: self.tid,
            nr: 0,
            reason: format!(
                "{len} bytes at {addr:#x} are outside the scratch area at {base:#x}{}",
                self.during()
            ),
        })
    }

    fn write_bytes(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        self.check_scratch(addr, data.len() as u64)?;
        proc_mem::write_all(self.tid, addr, data)
            .map_err(|e| Error::sys("process_vm_writev(scratch)", self.tid, e))
    }

    fn read_bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>, Error> {
        self.check_scratch(addr, len as u64)?;
        let mut buf = vec![0u8; len];
        proc_mem::read_exact(self.tid, addr, &mut buf)
            .map_err(|e| Error::sys("process_vm_readv(scratch)", self.tid, e))?;
        Ok(buf)
    }

    /// Writes `value` at `p`, which must lie in the scratch area.
    pub fn write<T: Pod>(&mut self, p: RemotePtr<T>, value: &T) -> Result<(), Error> {
        self.write_bytes(p.addr(), value.as_bytes())?;
        tracing::trace!("tid {}: scratch {p:?} <- {value:?}", self.tid);
        Ok(())
    }

    /// Reads the `T` at `p`, which must lie in the scratch area.
    pub fn read<T: Pod>(&self, p: RemotePtr<T>) -> Result<T, Error> {
        let bytes = self.read_bytes(p.addr(), std::mem::size_of::<T>())?;
        let value = T::from_bytes(&bytes).ok_or_else(|| Error::Inject {
            tid: self.tid,
            nr: 0,
            reason: format!("short read of {} at {p:?}", std::any::type_name::<T>()),
        })?;
        tracing::trace!("tid {}: scratch {p:?} -> {value:?}", self.tid);
        Ok(value)
    }

    /// Unmaps the scratch area (and the code page of batched calls). An area whose clean-up
    /// frame is in use goes in one `munmap`, after which the thread returns through its own
    /// frame again (a death in between unmaps a free range).
    pub fn unmap_scratch(&mut self) -> Result<(), Error> {
        self.unmap_code()?;
        if let Some(area) = self.area {
            self.set_scratch(None);
            let r = self.call_cleanup(
                "munmap(scratch)",
                libc::SYS_munmap,
                [area.addr, AREA_LEN, 0, 0, 0, 0],
            );
            self.area = None;
            self.set_return_frame()?;
            r?;
            return Ok(());
        }
        if let Some((addr, len)) = self.scratch {
            self.set_scratch(None);
            self.call_cleanup("munmap(scratch)", libc::SYS_munmap, [addr, len, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Runs a call that undoes what the injection made in the target (an unmap, a close):
    /// tried a second time when it fails, so that a passing failure leaves nothing of ours
    /// behind in the target.
    pub fn call_cleanup(
        &mut self,
        name: &'static str,
        nr: i64,
        args: [u64; 6],
    ) -> Result<u64, Error> {
        self.call(name, nr, args).or_else(|e| {
            tracing::debug!("tid {}: {name} failed ({e}): once more", self.tid);
            self.call(name, nr, args)
        })
    }

    /// Forgets the scratch area without unmapping it (it was unmapped by other means, or it
    /// belongs to another injector of the same process).
    pub fn forget_scratch(&mut self) {
        self.set_scratch(None);
    }

    /// Uses a scratch area mapped by another injector of the same process (threads share
    /// memory). Call [`Injector::forget_scratch`] before [`Injector::finish`].
    pub fn share_scratch(&mut self, addr: u64) {
        self.set_scratch(Some((addr, SCRATCH_LEN)));
    }

    /// Unmaps the scratch area and restores the saved registers (and, when parked, the
    /// signal mask it was parked with). The thread stays stopped.
    pub fn finish(self) -> Result<(), Error> {
        self.finish_with(false)
    }

    /// Like [`Injector::finish`], then leaves the thread stopped with single-stepping turned
    /// off. The kernel keeps a thread's single-step flag after its last PTRACE_SINGLESTEP; if
    /// the tracer then died, the thread would resume stepping and die of SIGTRAP. Used at dump,
    /// where the process must survive a dumper that is killed. The thread must have every
    /// blockable signal blocked. (A parked thread, never single-stepped, needs no turning off:
    /// one resume and stop fewer.)
    pub fn finish_parked(self) -> Result<(), Error> {
        self.finish_with(true)
    }

    fn finish_with(mut self, clear_step: bool) -> Result<(), Error> {
        let tid = self.tid;
        // The registers go back even when the unmap fails: a thread left with the registers
        // of an injected call would crash once it runs (found by fault injection).
        let unmapped = self.unmap_scratch();
        // Still parked (when it was) meanwhile, so that each step leaves a thread that
        // survives our death: single-stepping off, then its mask, then its registers.
        if clear_step && self.stepped {
            clear_single_step(tid, &mut self.held)?;
        }
        if let Some(mask) = self.park_mask {
            ptrace::set_sigmask(tid, mask).map_err(|e| Error::sys("PTRACE_SETSIGMASK", tid, e))?;
        }
        ptrace::set_regs(tid, &self.saved).map_err(|e| Error::sys("PTRACE_SETREGS", tid, e))?;
        self.finished = true;
        self.release_held()?;
        unmapped
    }
}

/// Adds `sig` to `held` when it is a stop signal (once); whether it is one.
fn hold_stop(held: &mut Vec<i32>, sig: i32) -> bool {
    let stop = crate::task::stop::is_stop_signal(sig);
    if stop && !held.contains(&sig) {
        held.push(sig);
    }
    stop
}

/// Clears the single-step flag of the stopped thread `tid` without running any of its
/// instructions: PTRACE_CONT clears it, and the interrupt queued before stops the thread
/// again before it runs a single user instruction.
fn clear_single_step(tid: Pid, held: &mut Vec<i32>) -> Result<(), Error> {
    ptrace::interrupt(tid).map_err(|e| Error::sys("PTRACE_INTERRUPT", tid, e))?;
    ptrace::cont(tid, 0).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?;
    loop {
        match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
            ptrace::WaitStatus::Stopped {
                event: PTRACE_EVENT_STOP,
                ..
            } => return Ok(()),
            // Only an unblockable stop signal can come here: held (see `Injector::held`).
            ptrace::WaitStatus::Stopped { sig, .. } => {
                hold_stop(held, sig);
                ptrace::cont(tid, 0).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?
            }
            other => {
                return Err(Error::TargetDied {
                    pid: tid,
                    how: format!("{other:?}"),
                })
            }
        }
    }
}

impl Drop for Injector {
    /// An injector left without [`Injector::finish`] belongs to an operation that failed:
    /// the log says what ran last in the thread.
    fn drop(&mut self) {
        // Not lost on a failure either: the thread takes them once it runs.
        let _ = self.release_held();
        if !self.finished {
            if let Some(rec) = &self.last {
                tracing::debug!(
                    "tid {}: left unfinished; last injected call: {rec}",
                    self.tid
                );
            }
        }
    }
}

/// PTRACE_EVENT_STOP: the stop PTRACE_INTERRUPT produces.
pub(crate) const PTRACE_EVENT_STOP: i32 = 128;

/// An address where `len` bytes are free in process `pid` (whose threads are all stopped):
/// right below the lowest mapping of the area where the kernel puts mappings top-down (the
/// lowest one above 0x7000_0000_0000, where a mapping made anywhere would go too), with a
/// free page on either side. `None` when the layout is not that one. `maps`: its mappings as
/// read a moment ago (else they are read).
pub fn free_address(
    pid: Pid,
    len: u64,
    maps: Option<&[crate::procfs::MapEntry]>,
) -> Result<Option<u64>, Error> {
    const PAGE: u64 = 4096;
    let maps = crate::procfs::maps_or_read(pid, maps)?;
    let Some(i) = maps.iter().position(|m| m.start >= 0x7000_0000_0000) else {
        return Ok(None);
    };
    let Some(addr) = maps[i].start.checked_sub(len + PAGE) else {
        return Ok(None);
    };
    let below = if i == 0 { 0 } else { maps[i - 1].end };
    Ok((below + PAGE <= addr).then_some(addr))
}

/// The address of a `syscall` instruction in process `pid`: the one in its `[vdso]`, or, when
/// the process unmapped its vdso, the first bytes 0f 05 of one of its readable executable
/// mappings (libc has many; executing them from there runs a `syscall` whatever instruction
/// they are part of).
pub fn syscall_ip(pid: Pid, vdso_offset: u64) -> Result<u64, Error> {
    let maps = crate::procfs::read_maps(pid)?;
    if let Some(v) = maps.iter().find(|m| m.name == "[vdso]") {
        return Ok(v.start + vdso_offset);
    }
    let mut buf = vec![0u8; 1 << 20];
    for m in maps
        .iter()
        .filter(|m| m.exec && m.read && m.name != "[vsyscall]")
    {
        let mut at = m.start;
        while at < m.end {
            let len = (m.end - at).min(buf.len() as u64) as usize;
            if proc_mem::read_exact(pid, at, &mut buf[..len]).is_err() {
                break;
            }
            if let Some(p) = buf[..len].windows(2).position(|w| w == [0x0f, 0x05]) {
                return Ok(at + p as u64);
            }
            // One byte back, so that an instruction across two chunks is found.
            at += (len as u64).saturating_sub(1).max(1);
        }
    }
    Err(Error::Unsupported {
        what: format!(
            "pid {pid} has unmapped its [vdso] and has no syscall instruction in a readable \
             executable mapping: stasis cannot run system calls in it"
        ),
    })
}

/// Finds the offset of a `syscall` instruction (0f 05) inside the vdso. The vdso image is the
/// same in every process on this kernel, so our own copy is searched, once per process (a
/// daemon or a benchmark that dumps many times asks the kernel once: the answer cannot change
/// while the kernel runs).
pub fn vdso_syscall_offset() -> Result<u64, Error> {
    static OFFSET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    if let Some(&o) = OFFSET.get() {
        return Ok(o);
    }
    let o = find_vdso_syscall_offset()?;
    Ok(*OFFSET.get_or_init(|| o))
}

fn find_vdso_syscall_offset() -> Result<u64, Error> {
    let me = stasis_sys::process::getpid();
    // Where and how long: from the auxiliary vector and the vDSO's own ELF header (no file
    // to read), else from /proc/self/maps.
    let (start, len) = match stasis_sys::process::vdso_base().and_then(|b| vdso_len(me, b)) {
        Some(l) => l,
        None => {
            // maps, not smaps: the same lines without the page counts the kernel would walk
            // our whole memory for.
            let maps = crate::procfs::read_maps(me)?;
            let vdso = maps
                .iter()
                .find(|m| m.name == "[vdso]")
                .ok_or(Error::Unsupported {
                    what: "this kernel maps no [vdso]; stasis needs it to run system calls in \
                           a target"
                        .into(),
                })?;
            (vdso.start, vdso.end - vdso.start)
        }
    };
    let mut buf = vec![0u8; len as usize];
    proc_mem::read_exact(me, start, &mut buf)
        .map_err(|e| Error::sys("process_vm_readv(vdso)", me, e))?;
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|p| p as u64)
        .ok_or(Error::Unsupported {
            what: "no syscall instruction in the [vdso]".into(),
        })
}

/// The vDSO whose ELF header is at `base` in process `pid` (this one): `(base, length)`, its
/// length the end of its section headers (the image's last bytes), when the header is one of
/// a 64-bit ELF and the length plausible.
fn vdso_len(pid: Pid, base: u64) -> Option<(u64, u64)> {
    let mut h = [0u8; 64];
    proc_mem::read_exact(pid, base, &mut h).ok()?;
    if h[..5] != [0x7f, b'E', b'L', b'F', 2] {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or_default());
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([h[o], h[o + 1]]));
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    let len = shoff.checked_add(shentsize.checked_mul(shnum)?)?;
    (64..=1 << 20).contains(&len).then_some((base, len))
}

/// Helpers of the tests that inject calls into a real process.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::dump::freeze::Frozen;

    /// A `sleep 10` of ours, killed and reaped on drop.
    pub(crate) struct Sleeper(pub std::process::Child);

    impl Sleeper {
        pub(crate) fn start() -> Sleeper {
            Sleeper(
                std::process::Command::new("sleep")
                    .arg("10")
                    .spawn()
                    .expect("start sleep"),
            )
        }

        pub(crate) fn pid(&self) -> Pid {
            self.0.id() as Pid
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A frozen `sleep` and an injector in it (calls run from its `[vdso]`).
    pub(crate) fn frozen_sleep() -> (Sleeper, Frozen, Injector) {
        let sleeper = Sleeper::start();
        let pid = sleeper.pid();
        let frozen = Frozen::freeze(pid).expect("freeze");
        let vdso = crate::procfs::read_smaps(pid)
            .expect("smaps")
            .into_iter()
            .find(|m| m.name == "[vdso]")
            .expect("a vdso");
        let inj = Injector::new(pid, vdso.start + vdso_syscall_offset().expect("offset"))
            .expect("injector");
        (sleeper, frozen, inj)
    }
}

#[cfg(test)]
mod tests {
    use super::kabi::{StackT, Timespec};
    use super::testing::frozen_sleep;
    use super::*;

    /// The vDSO found from the auxiliary vector is the `[vdso]` mapping of /proc/self/maps,
    /// and the offset found holds a `syscall`.
    #[test]
    fn the_vdso_is_found_without_proc() {
        let me = stasis_sys::process::getpid();
        let (base, len) = stasis_sys::process::vdso_base()
            .and_then(|b| vdso_len(me, b))
            .expect("a vDSO in the auxiliary vector");
        let maps = crate::procfs::read_maps(me).unwrap();
        let vdso = maps.iter().find(|m| m.name == "[vdso]").unwrap();
        assert_eq!(base, vdso.start);
        assert!(
            len <= vdso.end - vdso.start,
            "{len} > {}",
            vdso.end - vdso.start
        );
        let off = find_vdso_syscall_offset().unwrap();
        let mut two = [0u8; 2];
        proc_mem::read_exact(me, base + off, &mut two).unwrap();
        assert_eq!(two, [0x0f, 0x05]);
        // Not an ELF header: no length.
        let not_elf = maps.iter().find(|m| m.name == "[stack]").unwrap();
        assert!(vdso_len(me, not_elf.end - 4096).is_none());
    }

    #[test]
    fn frames_and_typed_calls_in_a_real_process() {
        if stasis_sys::process::geteuid() != 0 {
            eprintln!("notice: frames_and_typed_calls_in_a_real_process needs root; skipped");
            return;
        }
        let (sleeper, mut frozen, mut inj) = frozen_sleep();
        let pid = sleeper.pid();
        assert_eq!(inj.getpid().expect("getpid"), pid);
        assert_eq!(inj.last_call().and_then(|c| c.result), Some(pid as i64));

        // Nothing can be allocated before the area is mapped.
        assert!(inj.frame().alloc::<u64>().is_err());
        let base = inj.map_scratch(None).expect("map scratch");
        {
            let mut f = inj.frame();
            let t = Timespec { sec: 5, nsec: 7 };
            let a = f.push(&t).expect("push");
            let s = f.push_slice(&[1u32, 2, 3]).expect("push slice");
            assert_eq!(a.addr(), base);
            assert_eq!(s.addr(), base + 16, "allocations are 16-byte aligned");
            assert_eq!(s.byte_len(), 12);
            assert_eq!(f.read(a).expect("read back"), t);
            let inner_at = {
                let mut g = f.frame();
                g.alloc::<[u8; 100]>().expect("nested").addr()
            };
            // The nested frame gave its room back.
            assert_eq!(f.alloc::<u8>().expect("after nested").addr(), inner_at);
            assert_eq!(
                f.read(RemotePtr::<[u32; 3]>::at(s.addr())).expect("read"),
                [1, 2, 3]
            );
        }
        // The frame gave everything back.
        assert_eq!(inj.frame().alloc::<u8>().expect("alloc").addr(), base);
        // Out of bounds: too big, or a pointer outside the area.
        assert!(inj.frame().alloc_bytes(SCRATCH_LEN + 1).is_err());
        assert!(inj
            .read(RemotePtr::<u64>::at(base + SCRATCH_LEN - 4))
            .is_err());
        assert!(inj.read(RemotePtr::<u64>::at(0x1000)).is_err());

        // Typed calls with results through the scratch area.
        let ss: StackT = inj.sigaltstack_get().expect("sigaltstack");
        assert_eq!(ss.flags, libc::SS_DISABLE);
        let nofile = inj.prlimit64_get(libc::RLIMIT_NOFILE).expect("prlimit64");
        let ours = stasis_sys::process::getrlimit(libc::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!((nofile.cur, nofile.max), ours, "sleep inherited our limits");

        // A failing call: the error and the last call name it.
        match inj.set_pdeathsig(200) {
            Err(Error::Remote { call, tid, errno }) => {
                assert_eq!(call, "prctl(PR_SET_PDEATHSIG)");
                assert_eq!(tid, pid);
                assert_eq!(errno.raw_os_error(), Some(libc::EINVAL));
            }
            other => panic!("PR_SET_PDEATHSIG 200 should fail with EINVAL: {other:?}"),
        }
        let last = inj.last_call().expect("a last call").clone();
        assert_eq!(last.name, "prctl(PR_SET_PDEATHSIG)");
        assert_eq!(last.args[..2], [1, 200]);
        assert_eq!(last.result, Some(-(libc::EINVAL as i64)));

        inj.finish().expect("finish");
        frozen.thaw().expect("thaw");
        drop(sleeper);
    }
    /// Calls gathered by `batched` run once it returns (or before any call that is not
    /// gathered), in their order, with what they pass by pointer intact; a failed one is
    /// the error, naming it; nothing gathered runs when the closure fails.
    #[test]
    fn gathered_calls_run_together_in_order() {
        if stasis_sys::process::geteuid() != 0 {
            eprintln!("notice: gathered_calls_run_together_in_order needs root; skipped");
            return;
        }
        let (sleeper, mut frozen, mut inj) = frozen_sleep();
        let pid = sleeper.pid();
        inj.map_scratch(None).expect("map scratch");
        let slack = || {
            std::fs::read_to_string(format!("/proc/{pid}/timerslack_ns"))
                .expect("timerslack_ns")
                .trim()
                .parse::<u64>()
                .expect("a number")
        };
        let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
        let before = slack();
        let stack = StackT {
            sp: 0x7000_0000,
            flags: 0,
            pad: 0,
            size: 64 * 1024,
        };

        inj.batched(|inj| {
            inj.set_timerslack(before + 1000)?;
            inj.set_name(b"gathered\0\0\0\0\0\0\0\0")?;
            inj.sigaltstack_set(&stack)?;
            // Nothing has run yet.
            assert_eq!(slack(), before);
            assert_eq!(comm(), "sleep\n");
            Ok(())
        })
        .expect("gathered calls");
        assert_eq!(slack(), before + 1000);
        assert_eq!(comm(), "gathered\n", "the name passed by pointer survived");
        let ss = inj.sigaltstack_get().expect("sigaltstack");
        assert_eq!((ss.sp, ss.size), (stack.sp, stack.size));

        // A call that is not gathered runs after those gathered before it.
        let seen = inj
            .batched(|inj| {
                inj.set_timerslack(before + 2000)?;
                inj.get_timerslack()
            })
            .expect("a getter among gathered calls");
        assert_eq!(seen, before + 2000);

        // A failed call is the error, naming it; those after it in the batch ran.
        let failed = inj.batched(|inj| {
            inj.set_tsc(99)?;
            inj.set_timerslack(before + 3000)
        });
        match failed {
            Err(Error::Remote { call, errno, .. }) => {
                assert_eq!(call, "prctl(PR_SET_TSC)");
                assert_eq!(errno.raw_os_error(), Some(libc::EINVAL));
            }
            other => panic!("PR_SET_TSC 99 should fail with EINVAL: {other:?}"),
        }
        assert_eq!(slack(), before + 3000);

        // Nothing gathered runs when the closure fails.
        let r: Result<(), Error> = inj.batched(|inj| {
            inj.set_timerslack(before + 4000)?;
            Err(Error::Internal {
                what: "stop here".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(slack(), before + 3000);

        inj.sigaltstack_set(&StackT {
            sp: 0,
            flags: libc::SS_DISABLE,
            pad: 0,
            size: 0,
        })
        .expect("sigaltstack off");
        inj.finish().expect("finish");
        frozen.thaw().expect("thaw");
        drop(sleeper);
    }
}
