//! Running system calls inside a stopped thread.
//!
//! The thread's registers are saved, its instruction pointer is pointed at a `syscall`
//! instruction (one found in the `[vdso]`, so nothing is written into the target's code), the
//! argument registers are set, and the thread is single-stepped over that one instruction.
//! `orig_rax` is set to -1 so that the kernel never applies its syscall-restart logic to the
//! injected call. [`Injector::finish`] puts the saved registers back.

use crate::Error;
use stasis_sys::{proc_mem, ptrace, Pid, UserRegs};

/// A stopped thread in which system calls can be run.
pub struct Injector {
    tid: Pid,
    syscall_ip: u64,
    saved: UserRegs,
    /// A private read-write scratch area mapped in the target, for syscall arguments.
    scratch: Option<(u64, u64)>,
}

/// Size of the scratch area used for syscall arguments.
pub const SCRATCH_LEN: u64 = 64 * 1024;

impl Injector {
    /// Takes over `tid`, which must be in a ptrace-stop. `syscall_ip` is the address of a
    /// `syscall` instruction in the target.
    pub fn new(tid: Pid, syscall_ip: u64) -> Result<Injector, Error> {
        let saved = ptrace::get_regs(tid).map_err(|e| Error::sys("PTRACE_GETREGS", tid, e))?;
        Ok(Injector {
            tid,
            syscall_ip,
            saved,
            scratch: None,
        })
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

    /// Runs one system call and returns the raw result (a negative errno on failure).
    pub fn raw(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, Error> {
        let tid = self.tid;
        let mut regs = self.saved;
        regs.rip = self.syscall_ip;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::set_regs(tid, &regs).map_err(|e| Error::sys("PTRACE_SETREGS", tid, e))?;
        loop {
            ptrace::singlestep(tid, 0).map_err(|e| Error::sys("PTRACE_SINGLESTEP", tid, e))?;
            match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
                // A ptrace event (a clone reported in the middle of the call, say) is not the
                // end of the call: go on stepping.
                ptrace::WaitStatus::Stopped { event, .. } if event != 0 => continue,
                ptrace::WaitStatus::Stopped { .. } => {}
                other => {
                    return Err(Error::TargetDied {
                        pid: tid,
                        how: format!("{other:?}"),
                    })
                }
            }
            let after = ptrace::get_regs(tid).map_err(|e| Error::sys("PTRACE_GETREGS", tid, e))?;
            // The instruction ran when the thread stands right after it. Any other stop (a
            // signal arriving, a pending ptrace event) happened before: step again.
            if after.rip == self.syscall_ip + 2 {
                return Ok(after.rax as i64);
            }
            if after.rip != self.syscall_ip {
                return Err(Error::Inject {
                    tid,
                    nr,
                    reason: format!(
                        "thread went to {:#x} instead of running the syscall",
                        after.rip
                    ),
                });
            }
        }
    }

    /// Runs a system call and turns a negative result into an error naming it.
    pub fn call(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<u64, Error> {
        let r = self.raw(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(Error::Remote {
                call: name,
                tid: self.tid,
                errno: std::io::Error::from_raw_os_error(-r as i32),
            });
        }
        Ok(r as u64)
    }

    /// Maps the scratch area (anywhere, or at `at` when given) and returns its address.
    pub fn map_scratch(&mut self, at: Option<u64>) -> Result<u64, Error> {
        if let Some((addr, _)) = self.scratch {
            return Ok(addr);
        }
        let (addr, flags) = match at {
            Some(a) => (
                a,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            ),
            None => (0, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
        };
        let got = self.call(
            "mmap(scratch)",
            libc::SYS_mmap,
            [
                addr,
                SCRATCH_LEN,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                flags as u64,
                u64::MAX,
                0,
            ],
        )?;
        self.scratch = Some((got, SCRATCH_LEN));
        Ok(got)
    }

    /// Address of the scratch area; it must have been mapped.
    pub fn scratch(&self) -> Result<u64, Error> {
        self.scratch.map(|(a, _)| a).ok_or(Error::Inject {
            tid: self.tid,
            nr: 0,
            reason: "no scratch area mapped".into(),
        })
    }

    /// Copies `data` into the scratch area at `offset` and returns its remote address.
    pub fn put(&mut self, offset: u64, data: &[u8]) -> Result<u64, Error> {
        let base = self.scratch()?;
        if offset + data.len() as u64 > SCRATCH_LEN {
            return Err(Error::Inject {
                tid: self.tid,
                nr: 0,
                reason: "argument does not fit the scratch area".into(),
            });
        }
        proc_mem::write_all(self.tid, base + offset, data)
            .map_err(|e| Error::sys("process_vm_writev(scratch)", self.tid, e))?;
        Ok(base + offset)
    }

    /// Reads `len` bytes from the scratch area at `offset`.
    pub fn get(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let base = self.scratch()?;
        let mut buf = vec![0u8; len];
        proc_mem::read_exact(self.tid, base + offset, &mut buf)
            .map_err(|e| Error::sys("process_vm_readv(scratch)", self.tid, e))?;
        Ok(buf)
    }

    /// Unmaps the scratch area.
    pub fn unmap_scratch(&mut self) -> Result<(), Error> {
        if let Some((addr, len)) = self.scratch.take() {
            self.call("munmap(scratch)", libc::SYS_munmap, [addr, len, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Forgets the scratch area without unmapping it (it was unmapped by other means, or it
    /// belongs to another injector of the same process).
    pub fn forget_scratch(&mut self) {
        self.scratch = None;
    }

    /// Uses a scratch area mapped by another injector of the same process (threads share
    /// memory). Call [`Injector::forget_scratch`] before [`Injector::finish`].
    pub fn share_scratch(&mut self, addr: u64) {
        self.scratch = Some((addr, SCRATCH_LEN));
    }

    /// Unmaps the scratch area and restores the saved registers. The thread stays stopped.
    pub fn finish(mut self) -> Result<(), Error> {
        self.unmap_scratch()?;
        ptrace::set_regs(self.tid, &self.saved)
            .map_err(|e| Error::sys("PTRACE_SETREGS", self.tid, e))
    }

    /// Like [`Injector::finish`], then leaves the thread stopped with single-stepping turned
    /// off. The kernel keeps a thread's single-step flag after its last PTRACE_SINGLESTEP; if
    /// the tracer then died, the thread would resume stepping and die of SIGTRAP. Used at dump,
    /// where the process must survive a dumper that is killed. The thread must have every
    /// blockable signal blocked.
    pub fn finish_parked(self) -> Result<(), Error> {
        let tid = self.tid;
        self.finish()?;
        // PTRACE_CONT clears the single-step flag; the pending interrupt stops the thread again
        // before it runs a single user instruction.
        ptrace::interrupt(tid).map_err(|e| Error::sys("PTRACE_INTERRUPT", tid, e))?;
        ptrace::cont(tid, 0).map_err(|e| Error::sys("PTRACE_CONT", tid, e))?;
        loop {
            match ptrace::waitpid(tid, 0).map_err(|e| Error::sys("waitpid", tid, e))? {
                ptrace::WaitStatus::Stopped {
                    event: PTRACE_EVENT_STOP,
                    ..
                } => return Ok(()),
                // Only an unblockable stop signal can come here; the dump goes on.
                ptrace::WaitStatus::Stopped { .. } => {
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
}

/// PTRACE_EVENT_STOP: the stop PTRACE_INTERRUPT produces.
const PTRACE_EVENT_STOP: i32 = 128;

/// Finds the offset of a `syscall` instruction (0f 05) inside the vdso. The vdso image is the
/// same in every process on this kernel, so our own copy is searched once.
pub fn vdso_syscall_offset() -> Result<u64, Error> {
    let me = stasis_sys::process::getpid();
    let maps = crate::procfs::read_smaps(me)?;
    let vdso = maps
        .iter()
        .find(|m| m.name == "[vdso]")
        .ok_or(Error::Unsupported {
            what: "this kernel maps no [vdso]; stasis needs it to run system calls in a target"
                .into(),
        })?;
    let mut buf = vec![0u8; (vdso.end - vdso.start) as usize];
    proc_mem::read_exact(me, vdso.start, &mut buf)
        .map_err(|e| Error::sys("process_vm_readv(vdso)", me, e))?;
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|p| p as u64)
        .ok_or(Error::Unsupported {
            what: "no syscall instruction in the [vdso]".into(),
        })
}
