//! ptrace(2) and waitpid(2): seizing, stopping, single-stepping and reading/writing thread state.

use crate::{cvt, cvt_int, Pid, UserRegs};
use std::io;

/// `NT_X86_XSTATE`, the regset that holds the whole XSAVE area (x87, SSE, AVX, ...).
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Upper bound for the XSAVE area we accept (this kernel reports 832 bytes; AVX-512 needs ~2.7 KiB).
pub const XSTATE_MAX: usize = 16 * 1024;

/// Seizes a thread without stopping it. With `exit_kill` the thread is killed if the tracer
/// dies (used at restore, where a half-built process must never run on its own).
pub fn seize(tid: Pid, exit_kill: bool) -> io::Result<()> {
    let opts = if exit_kill {
        libc::PTRACE_O_EXITKILL as libc::c_long
    } else {
        0
    };
    // SAFETY: PTRACE_SEIZE takes no pointers; addr is ignored and data holds the options.
    cvt(unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, opts) }).map(drop)
}

/// Asks a seized thread to stop (it reports `PTRACE_EVENT_STOP` to `waitpid`).
pub fn interrupt(tid: Pid) -> io::Result<()> {
    // SAFETY: no pointers are passed.
    cvt(unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) }).map(drop)
}

/// Resumes a stopped thread, delivering `sig` (0 for none).
pub fn cont(tid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: no pointers are passed; data is the signal number.
    cvt(unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0usize, sig as libc::c_long) }).map(drop)
}

/// Executes one instruction in a stopped thread.
pub fn singlestep(tid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: no pointers are passed; data is the signal number.
    cvt(unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, tid, 0usize, sig as libc::c_long) })
        .map(drop)
}

/// Resumes a stopped thread until its next system call entry or exit (PTRACE_SYSCALL).
/// Unlike single-stepping, this leaves nothing set in the thread should the tracer die.
pub fn syscall(tid: Pid) -> io::Result<()> {
    // SAFETY: no pointers are passed; data is the signal number (none).
    cvt(unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0usize, 0usize) }).map(drop)
}

/// Detaches from a thread and lets it run, delivering `sig` (0 for none).
pub fn detach(tid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: no pointers are passed; data is the signal number.
    cvt(unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, sig as libc::c_long) }).map(drop)
}

/// Reads the general registers of a stopped thread (including fs_base/gs_base and orig_rax).
pub fn get_regs(tid: Pid) -> io::Result<UserRegs> {
    // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
    let mut regs: UserRegs = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes exactly one user_regs_struct to the pointer we own.
    cvt(unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGS,
            tid,
            0usize,
            &mut regs as *mut UserRegs,
        )
    })?;
    Ok(regs)
}

/// Writes the general registers of a stopped thread.
pub fn set_regs(tid: Pid, regs: &UserRegs) -> io::Result<()> {
    // SAFETY: PTRACE_SETREGS only reads one user_regs_struct from the pointer.
    cvt(unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, 0usize, regs as *const UserRegs) })
        .map(drop)
}

/// Reads the XSAVE area (FPU, SSE, AVX state) of a stopped thread.
pub fn get_xstate(tid: Pid) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the kernel writes at most iov_len bytes into buf and updates iov_len.
    cvt(unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid,
            NT_X86_XSTATE as usize,
            &mut iov as *mut _,
        )
    })?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Writes the XSAVE area of a stopped thread.
pub fn set_xstate(tid: Pid, xstate: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_ptr() as *mut _,
        iov_len: xstate.len(),
    };
    // SAFETY: PTRACE_SETREGSET only reads iov_len bytes from the buffer.
    cvt(unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            tid,
            NT_X86_XSTATE as usize,
            &mut iov as *mut _,
        )
    })
    .map(drop)
}

/// Reads the blocked-signal mask of a stopped thread (bit n-1 is signal n).
pub fn get_sigmask(tid: Pid) -> io::Result<u64> {
    let mut mask = 0u64;
    // SAFETY: the kernel writes 8 bytes (addr = size of the set) into `mask`.
    cvt(unsafe { libc::ptrace(libc::PTRACE_GETSIGMASK, tid, 8usize, &mut mask as *mut u64) })?;
    Ok(mask)
}

/// Sets the blocked-signal mask of a stopped thread.
pub fn set_sigmask(tid: Pid, mask: u64) -> io::Result<()> {
    // SAFETY: the kernel reads 8 bytes from `mask`.
    cvt(unsafe { libc::ptrace(libc::PTRACE_SETSIGMASK, tid, 8usize, &mask as *const u64) })
        .map(drop)
}

/// A raw `siginfo_t` (128 bytes) as the kernel stores it in a pending queue.
pub type RawSiginfo = [u8; 128];

/// Reads the pending signals of a thread without removing them: the thread's private queue, or
/// the process-wide (shared) queue.
pub fn peek_siginfo(tid: Pid, shared: bool) -> io::Result<Vec<RawSiginfo>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
    let mut out = Vec::new();
    loop {
        let mut chunk = [[0u8; 128]; 32];
        let args = PeekArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: chunk.len() as i32,
        };
        // SAFETY: the kernel writes at most `nr` siginfo records (128 bytes each) into `chunk`.
        let n = cvt(unsafe {
            libc::ptrace(
                libc::PTRACE_PEEKSIGINFO,
                tid,
                &args as *const PeekArgs,
                chunk.as_mut_ptr(),
            )
        })? as usize;
        out.extend_from_slice(&chunk[..n]);
        if n < chunk.len() {
            return Ok(out);
        }
    }
}

/// The rseq registration of a thread, as reported by `PTRACE_GET_RSEQ_CONFIGURATION`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
}

/// Reads a thread's rseq registration (all zero when none).
pub fn get_rseq_config(tid: Pid) -> io::Result<RseqConfig> {
    #[repr(C)]
    #[derive(Default)]
    struct Raw {
        ptr: u64,
        size: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
    let mut raw = Raw::default();
    // SAFETY: the kernel writes at most addr (= size of Raw) bytes into `raw`.
    cvt(unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            std::mem::size_of::<Raw>(),
            &mut raw as *mut Raw,
        )
    })?;
    Ok(RseqConfig {
        rseq_abi_pointer: raw.ptr,
        rseq_abi_size: raw.size,
        signature: raw.sig,
        flags: raw.flags,
    })
}

/// What `waitpid` reported about a child or tracee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
    /// Stopped with a signal; `event` is the ptrace event (high byte of the status), 0 for none.
    Stopped {
        sig: i32,
        event: i32,
    },
    Other(i32),
}

impl WaitStatus {
    fn from_raw(status: i32) -> WaitStatus {
        if libc::WIFEXITED(status) {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            WaitStatus::Signaled(libc::WTERMSIG(status))
        } else if libc::WIFSTOPPED(status) {
            WaitStatus::Stopped {
                sig: libc::WSTOPSIG(status),
                event: (status >> 16) & 0xff,
            }
        } else {
            WaitStatus::Other(status)
        }
    }
}

/// Waits for a state change of `pid` (a child, or a thread we trace). `__WALL` is always added
/// so that threads are waited for too; EINTR is retried.
pub fn waitpid(pid: Pid, flags: i32) -> io::Result<WaitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int into `status`.
        match cvt_int(unsafe { libc::waitpid(pid, &mut status, flags | libc::__WALL) }) {
            Ok(_) => return Ok(WaitStatus::from_raw(status)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Like [`waitpid`] with `WNOHANG`: `None` when nothing changed.
pub fn waitpid_nohang(pid: Pid) -> io::Result<Option<WaitStatus>> {
    let mut status = 0;
    // SAFETY: waitpid writes one int into `status`.
    let r = cvt_int(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) })?;
    Ok(if r == 0 {
        None
    } else {
        Some(WaitStatus::from_raw(status))
    })
}

/// Reads a thread's robust futex list head and its length (works on a thread we may ptrace).
pub fn get_robust_list(tid: Pid) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: the kernel writes one pointer-sized value into each out-parameter.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    })?;
    Ok((head, len as u64))
}

/// PTRACE_O_TRACECLONE: threads and children a tracee creates start traced and stopped.
pub const OPT_TRACECLONE: u32 = libc::PTRACE_O_TRACECLONE as u32;

/// Sets ptrace options on a stopped tracee.
pub fn set_options(tid: Pid, options: u32) -> io::Result<()> {
    // SAFETY: no pointers; data holds the options.
    cvt(unsafe {
        libc::ptrace(
            libc::PTRACE_SETOPTIONS,
            tid,
            0usize,
            options as libc::c_long,
        )
    })
    .map(drop)
}

/// PTRACE_O_EXITKILL: the tracee is killed if the tracer exits.
pub const OPT_EXITKILL: u32 = libc::PTRACE_O_EXITKILL as u32;

/// PTRACE_O_SUSPEND_SECCOMP: the tracee's seccomp filters (and strict mode) do not apply while
/// it is traced with this option (needs CAP_SYS_ADMIN and a tracer not under seccomp itself).
/// Detaching clears it.
pub const OPT_SUSPEND_SECCOMP: u32 = 1 << 21;

/// `PTRACE_SECCOMP_GET_FILTER` (linux/ptrace.h).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
/// `PTRACE_SECCOMP_GET_METADATA` (linux/ptrace.h).
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// The most instructions a classic BPF program may have (BPF_MAXINSNS).
pub const SECCOMP_MAX_INSNS: usize = 4096;

/// Reads the classic BPF program of a stopped tracee's seccomp filter number `index`, counted
/// from the first installed (0) to the most recent (the kernel walks back from the newest). Each instruction is one
/// `struct sock_filter` (code u16, jt u8, jf u8, k u32) packed little-endian into a u64.
/// `ENOENT` past the oldest filter. Needs CAP_SYS_ADMIN.
pub fn seccomp_get_filter(tid: Pid, index: u64) -> io::Result<Vec<u64>> {
    // SAFETY: with a null data pointer the kernel only returns the instruction count.
    let n = cvt(unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as usize,
            std::ptr::null_mut::<u64>(),
        )
    })? as usize;
    if n > SECCOMP_MAX_INSNS {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let mut buf = vec![0u64; n];
    // SAFETY: the buffer holds n instructions of 8 bytes, the count the kernel just gave for
    // this filter (filters are immutable once installed, and the tracee is stopped).
    let got = cvt(unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as usize,
            buf.as_mut_ptr(),
        )
    })? as usize;
    buf.truncate(got.min(n));
    Ok(buf)
}

/// The flags of a stopped tracee's seccomp filter number `index` (as for
/// [`seccomp_get_filter`]): the kernel reports `SECCOMP_FILTER_FLAG_LOG` only.
pub fn seccomp_get_metadata(tid: Pid, index: u64) -> io::Result<u64> {
    #[repr(C)]
    struct Metadata {
        filter_off: u64,
        flags: u64,
    }
    let mut md = Metadata {
        filter_off: index,
        flags: 0,
    };
    // SAFETY: addr is the size of the structure and data points to it; the kernel reads
    // filter_off and writes the structure.
    cvt(unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_METADATA,
            tid,
            std::mem::size_of::<Metadata>(),
            &mut md as *mut Metadata,
        )
    })?;
    Ok(md.flags)
}
