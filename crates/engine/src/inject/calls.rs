//! Typed wrappers of the system calls the engine runs inside a target: typed arguments in,
//! typed results out. Structures passed by pointer ([`kabi`]) go through a
//! [`Frame`](super::Frame) of the scratch area, which must be mapped; calls that take only
//! values need none.
//!
//! Each wrapper names its call the way errors and logs show it (`prctl(PR_SET_PDEATHSIG)`).

use super::prefetch::Query;
use super::{kabi, Injector, RemotePtr};
use crate::Error;
use kabi::{
    CapUserData, CapUserHeader, CloneArgs, Flock, Itimerspec, Itimerval, KernelSigaction,
    PrctlMmMap, Rlimit64, Rseq, Sigevent, Siginfo, StackT,
};
use stasis_sys::kabi::Pod;
use stasis_sys::Pid;
use std::fmt;

/// An errno a system call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub fn io_error(self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.0)
    }

    /// `EINVAL`, or the number when it has no name.
    pub fn name(self) -> String {
        super::errno_name(self.0).map_or_else(|| format!("errno {}", self.0), str::to_string)
    }
}

impl fmt::Display for Errno {
    /// `EINVAL (Invalid argument)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.io_error().to_string();
        // The io::Error text ends in " (os error N)": the name says that already.
        let text = text.split(" (os error").next().unwrap_or(&text);
        write!(f, "{} ({text})", self.name())
    }
}

const PR_SET_PDEATHSIG: u64 = 1;
const PR_GET_PDEATHSIG: u64 = 2;
const PR_GET_DUMPABLE: u64 = 3;
const PR_SET_DUMPABLE: u64 = 4;
const PR_SET_KEEPCAPS: u64 = 8;
const PR_SET_NAME: u64 = 15;
const PR_CAPBSET_DROP: u64 = 24;
const PR_GET_SECUREBITS: u64 = 27;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PR_SET_CHILD_SUBREAPER: u64 = 36;
const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
pub(super) const PR_GET_TID_ADDRESS: u64 = 40;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const PR_SET_TIMERSLACK: u64 = 29;
const PR_GET_TIMERSLACK: u64 = 30;
const PR_GET_TSC: u64 = 25;
const PR_SET_TSC: u64 = 26;
const PR_MCE_KILL: u64 = 33;
const PR_MCE_KILL_CLEAR: u64 = 0;
const PR_MCE_KILL_SET: u64 = 1;
const PR_MCE_KILL_GET: u64 = 34;
const PR_MCE_KILL_DEFAULT: u32 = 2;
const PR_GET_THP_DISABLE: u64 = 42;
const PR_SET_THP_DISABLE: u64 = 41;
const PR_GET_SPECULATION_CTRL: u64 = 52;
const PR_SET_SPECULATION_CTRL: u64 = 53;
const PR_SET_IO_FLUSHER: u64 = 57;
const PR_SET_MDWE: u64 = 65;
const PR_GET_MDWE: u64 = 66;
const PR_SET_MEMORY_MERGE: u64 = 67;
const PR_GET_MEMORY_MERGE: u64 = 68;
pub(super) const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
/// mlock2's flag (not in the libc crate).
const MLOCK_ONFAULT: u64 = 1;
/// `_LINUX_CAPABILITY_VERSION_3`.
pub const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The questions the dump asks a process's leader through the getters below (`brk_query`,
/// `sigaltstack_get`, `get_tid_address`, the prctl getters, `getitimer`,
/// `membarrier_registrations`, `rt_sigaction_get`), speculation controls `spec_which`: the
/// dump prefetches them in one batch ([`Injector::prefetch`]; one batch, as the signal
/// actions alone were before: see docs/security.md on what a batch leaves open). Each must be the very question its getter asks (an
/// answer no getter takes only costs its place in the batch; a test checks there is none).
pub fn dump_queries(spec_which: &[u32]) -> Vec<Query> {
    let mut q = vec![Query::Brk];
    q.extend(thread_queries(spec_which));
    q.extend((0..3).map(Query::Getitimer));
    // The dispositions of every signal but SIGKILL and SIGSTOP (`task::signals`).
    q.extend(
        (1..=64u32)
            .filter(|&s| s != libc::SIGKILL as u32 && s != libc::SIGSTOP as u32)
            .map(Query::Sigaction),
    );
    q.extend([
        Query::Prctl("prctl(PR_GET_SECUREBITS)", PR_GET_SECUREBITS, 0),
        Query::PrctlInt("prctl(PR_GET_PDEATHSIG)", PR_GET_PDEATHSIG),
        Query::Prctl("prctl(PR_GET_DUMPABLE)", PR_GET_DUMPABLE, 0),
        Query::PrctlInt("prctl(PR_GET_CHILD_SUBREAPER)", PR_GET_CHILD_SUBREAPER),
        Query::Prctl("prctl(PR_GET_THP_DISABLE)", PR_GET_THP_DISABLE, 0),
        Query::Prctl("prctl(PR_GET_MDWE)", PR_GET_MDWE, 0),
        Query::MembarrierRegistrations,
        Query::Prctl("prctl(PR_GET_MEMORY_MERGE)", PR_GET_MEMORY_MERGE, 0),
    ]);
    q
}

/// The questions `task::thread::dump` asks a thread (`sigaltstack_get`, `get_tid_address`,
/// its prctl getters), speculation controls `spec_which`: the dump prefetches them in each
/// thread but the leader, which asks them among [`dump_queries`].
pub fn thread_queries(spec_which: &[u32]) -> Vec<Query> {
    let mut q = vec![
        Query::Sigaltstack,
        Query::TidAddress,
        Query::Prctl("prctl(PR_GET_TIMERSLACK)", PR_GET_TIMERSLACK, 0),
    ];
    q.extend(thread_prctl_queries(spec_which));
    q
}

/// The questions of `get_tsc`, `get_mce_kill` and `get_speculation_ctrl` (for each of
/// `spec_which`): what a thread's prctl state is, which the restore compares with the
/// dumped one before it sets it ([`Injector::prefetch`]).
pub fn thread_prctl_queries(spec_which: &[u32]) -> Vec<Query> {
    let mut q = vec![
        Query::PrctlInt("prctl(PR_GET_TSC)", PR_GET_TSC),
        Query::Prctl("prctl(PR_MCE_KILL_GET)", PR_MCE_KILL_GET, 0),
    ];
    q.extend(spec_which.iter().map(|&w| {
        Query::Prctl(
            "prctl(PR_GET_SPECULATION_CTRL)",
            PR_GET_SPECULATION_CTRL,
            w.into(),
        )
    }));
    q
}

/// A child's state change as waitid reports it: its pid, si_code (CLD_STOPPED, ...) and
/// si_status (the signal or exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildState {
    pub pid: Pid,
    pub code: i32,
    pub status: i32,
}

/// An madvise advice the restore gives a mapping back (what /proc/PID/smaps shows of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    DontFork,
    DontDump,
    HugePage,
    NoHugePage,
    WipeOnFork,
    Sequential,
    Random,
    Mergeable,
}

impl Advice {
    /// The MADV_* value.
    pub fn value(self) -> i32 {
        match self {
            Advice::DontFork => libc::MADV_DONTFORK,
            Advice::DontDump => libc::MADV_DONTDUMP,
            Advice::HugePage => libc::MADV_HUGEPAGE,
            Advice::NoHugePage => libc::MADV_NOHUGEPAGE,
            Advice::WipeOnFork => libc::MADV_WIPEONFORK,
            Advice::Sequential => libc::MADV_SEQUENTIAL,
            Advice::Random => libc::MADV_RANDOM,
            Advice::Mergeable => libc::MADV_MERGEABLE,
        }
    }

    /// The call's name in logs and errors.
    pub fn call_name(self) -> &'static str {
        match self {
            Advice::DontFork => "madvise(MADV_DONTFORK)",
            Advice::DontDump => "madvise(MADV_DONTDUMP)",
            Advice::HugePage => "madvise(MADV_HUGEPAGE)",
            Advice::NoHugePage => "madvise(MADV_NOHUGEPAGE)",
            Advice::WipeOnFork => "madvise(MADV_WIPEONFORK)",
            Advice::Sequential => "madvise(MADV_SEQUENTIAL)",
            Advice::Random => "madvise(MADV_RANDOM)",
            Advice::Mergeable => "madvise(MADV_MERGEABLE)",
        }
    }
}

/// A signed value as the register holds it.
fn reg(v: i64) -> u64 {
    v as u64
}

impl Injector {
    // --- Process ---------------------------------------------------------------------------

    /// getpid().
    pub fn getpid(&mut self) -> Result<Pid, Error> {
        Ok(self.call("getpid", libc::SYS_getpid, [0; 6])? as Pid)
    }

    /// brk(0): the current program break.
    pub fn brk_query(&mut self) -> Result<u64, Error> {
        Ok(self.ask_ok(Query::Brk)?.0)
    }

    /// wait4(pid, NULL, options, NULL): reaps a child; returns its pid.
    pub fn wait4(&mut self, pid: Pid, options: i32) -> Result<Pid, Error> {
        let got = self.call(
            "wait4",
            libc::SYS_wait4,
            [reg(pid.into()), 0, reg(options.into()), 0, 0, 0],
        )?;
        Ok(got as Pid)
    }

    /// waitid(P_PID, pid, &info, options, NULL): the child's state change as waitid reports
    /// it, or None when there is none (WNOHANG and nothing to report).
    pub fn waitid(&mut self, pid: Pid, options: i32) -> Result<Option<ChildState>, Error> {
        let mut f = self.frame();
        let info = f.push(&Siginfo::default())?;
        f.call(
            "waitid",
            libc::SYS_waitid,
            [
                libc::P_PID as u64,
                reg(pid.into()),
                info.addr(),
                reg(options.into()),
                0,
                0,
            ],
        )?;
        let raw = f.read(info)?.bytes;
        let int = |at: usize| i32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        // siginfo_t of SIGCHLD: si_code at 8, si_pid at 16, si_status at 24.
        let state = ChildState {
            pid: int(16),
            code: int(8),
            status: int(24),
        };
        Ok((state.pid != 0).then_some(state))
    }

    /// prlimit64(0, resource, NULL, &old): a resource limit of the calling process.
    pub fn prlimit64_get(&mut self, resource: u32) -> Result<Rlimit64, Error> {
        self.call_reading("prlimit64", libc::SYS_prlimit64, |old| {
            [0, resource.into(), 0, old, 0, 0]
        })
    }

    /// setpgid(pid, pgid).
    pub fn setpgid(&mut self, pid: Pid, pgid: Pid) -> Result<(), Error> {
        self.call(
            "setpgid",
            libc::SYS_setpgid,
            [reg(pid.into()), reg(pgid.into()), 0, 0, 0, 0],
        )?;
        Ok(())
    }

    /// fcntl(fd, F_SETLK, &lock): takes a POSIX record lock for the process without waiting;
    /// `Ok(Err(_))` when the kernel refuses it (EAGAIN or EACCES: another owner holds a
    /// conflicting lock), so that the caller can say who.
    pub fn fcntl_setlk(&mut self, fd: i32, lock: &Flock) -> Result<Result<(), Errno>, Error> {
        let mut f = self.frame();
        let at = f.push(lock)?;
        let r = f.try_call(
            "fcntl(F_SETLK)",
            libc::SYS_fcntl,
            [reg(fd.into()), libc::F_SETLK as u64, at.addr(), 0, 0, 0],
        )?;
        Ok(r.map(|_| ()))
    }

    /// fcntl(fd, F_SETLEASE, F_RDLCK or F_WRLCK): takes a lease on the description behind
    /// `fd` and makes this process its I/O owner; `Ok(Err(_))` when the kernel refuses it
    /// (EAGAIN: the file is open in a way that conflicts).
    pub fn fcntl_setlease(&mut self, fd: i32, write: bool) -> Result<Result<(), Errno>, Error> {
        let ty = if write { libc::F_WRLCK } else { libc::F_RDLCK };
        let r = self.try_call(
            "fcntl(F_SETLEASE)",
            libc::SYS_fcntl,
            [reg(fd.into()), libc::F_SETLEASE as u64, ty as u64, 0, 0, 0],
        )?;
        Ok(r.map(|_| ()))
    }

    /// flock(fd, LOCK_SH or LOCK_EX | LOCK_NB); `Ok(Err(_))` when the kernel refuses it
    /// (EWOULDBLOCK: another description holds a conflicting lock).
    pub fn flock_nonblocking(
        &mut self,
        fd: i32,
        exclusive: bool,
    ) -> Result<Result<(), Errno>, Error> {
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        let r = self.try_call(
            "flock",
            libc::SYS_flock,
            [reg(fd.into()), op as u64, 0, 0, 0, 0],
        )?;
        Ok(r.map(|_| ()))
    }

    // --- prctl -----------------------------------------------------------------------------

    /// A prctl that takes only values and returns 0 or a value.
    fn prctl(&mut self, name: &'static str, args: [u64; 5]) -> Result<(), Error> {
        let [a, b, c, d, e] = args;
        self.set(name, libc::SYS_prctl, [a, b, c, d, e, 0])
    }

    /// A prctl that stores an int through its second argument.
    fn prctl_get_int(&mut self, name: &'static str, option: u64) -> Result<i32, Error> {
        let (_, out) = self.ask_ok(Query::PrctlInt(name, option))?;
        Ok(i32::from_le_bytes([out[0], out[1], out[2], out[3]]))
    }

    /// A prctl that only reads a value, answering in its result (see [`Query`]).
    fn prctl_query(&mut self, name: &'static str, option: u64, arg: u64) -> Result<u64, Error> {
        Ok(self.ask_ok(Query::Prctl(name, option, arg))?.0)
    }

    /// PR_GET_PDEATHSIG.
    pub fn get_pdeathsig(&mut self) -> Result<i32, Error> {
        self.prctl_get_int("prctl(PR_GET_PDEATHSIG)", PR_GET_PDEATHSIG)
    }

    /// PR_SET_PDEATHSIG.
    pub fn set_pdeathsig(&mut self, sig: i32) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_SET_PDEATHSIG)",
            [PR_SET_PDEATHSIG, reg(sig.into()), 0, 0, 0],
        )?;
        Ok(())
    }

    /// PR_GET_DUMPABLE.
    pub fn get_dumpable(&mut self) -> Result<i32, Error> {
        Ok(self.prctl_query("prctl(PR_GET_DUMPABLE)", PR_GET_DUMPABLE, 0)? as i32)
    }

    /// PR_SET_DUMPABLE.
    pub fn set_dumpable(&mut self, dumpable: i32) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_SET_DUMPABLE)",
            [PR_SET_DUMPABLE, reg(dumpable.into()), 0, 0, 0],
        )?;
        Ok(())
    }

    /// PR_GET_CHILD_SUBREAPER.
    pub fn get_child_subreaper(&mut self) -> Result<bool, Error> {
        Ok(self.prctl_get_int("prctl(PR_GET_CHILD_SUBREAPER)", PR_GET_CHILD_SUBREAPER)? != 0)
    }

    /// PR_SET_CHILD_SUBREAPER.
    pub fn set_child_subreaper(&mut self, on: bool) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            [PR_SET_CHILD_SUBREAPER, on.into(), 0, 0, 0],
        )?;
        Ok(())
    }

    /// PR_GET_TID_ADDRESS: the thread's clear-child-tid address.
    pub fn get_tid_address(&mut self) -> Result<u64, Error> {
        let (_, out) = self.ask_ok(Query::TidAddress)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&out[..8]);
        Ok(u64::from_le_bytes(b))
    }

    /// PR_SET_NAME: the thread's name (15 bytes and a NUL).
    pub fn set_name(&mut self, name: &[u8; 16]) -> Result<(), Error> {
        let mut f = self.frame();
        let at = f.push(name)?;
        f.set(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [PR_SET_NAME, at.addr(), 0, 0, 0, 0],
        )
    }

    /// PR_SET_MM_MAP with `map`, whose `auxv` and `auxv_size` are set to a copy of `auxv`.
    pub fn set_mm_map(&mut self, map: &PrctlMmMap, auxv: &[u64]) -> Result<(), Error> {
        let mut f = self.frame();
        let at = f.push_slice(auxv)?;
        let map = PrctlMmMap {
            auxv: at.addr(),
            auxv_size: at.byte_len() as u32,
            ..*map
        };
        let p = f.push(&map)?;
        f.set(
            "prctl(PR_SET_MM_MAP)",
            libc::SYS_prctl,
            [
                PR_SET_MM,
                PR_SET_MM_MAP,
                p.addr(),
                std::mem::size_of::<PrctlMmMap>() as u64,
                0,
                0,
            ],
        )
    }

    /// PR_GET_SECUREBITS.
    pub fn get_securebits(&mut self) -> Result<u32, Error> {
        Ok(self.prctl_query("prctl(PR_GET_SECUREBITS)", PR_GET_SECUREBITS, 0)? as u32)
    }

    /// PR_SET_SECUREBITS.
    pub fn set_securebits(&mut self, bits: u32) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_SET_SECUREBITS)",
            [PR_SET_SECUREBITS, bits.into(), 0, 0, 0],
        )?;
        Ok(())
    }

    /// PR_CAPBSET_DROP: drops `cap` from the bounding set.
    pub fn capbset_drop(&mut self, cap: u32) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_CAPBSET_DROP)",
            [PR_CAPBSET_DROP, cap.into(), 0, 0, 0],
        )?;
        Ok(())
    }

    /// PR_CAP_AMBIENT_RAISE: adds `cap` to the ambient set.
    pub fn cap_ambient_raise(&mut self, cap: u32) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_CAP_AMBIENT_RAISE)",
            [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap.into(), 0, 0],
        )?;
        Ok(())
    }

    /// PR_SET_KEEPCAPS.
    pub fn set_keepcaps(&mut self, on: bool) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_SET_KEEPCAPS)",
            [PR_SET_KEEPCAPS, on.into(), 0, 0, 0],
        )?;
        Ok(())
    }

    /// PR_SET_NO_NEW_PRIVS (it cannot be unset).
    pub fn set_no_new_privs(&mut self) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0],
        )?;
        Ok(())
    }

    /// PR_TIMER_CREATE_RESTORE_IDS on or off (Linux 6.15+); `Ok(Err(_))` when the kernel
    /// refuses (EINVAL: it does not have it).
    pub fn timer_create_restore_ids(&mut self, on: bool) -> Result<Result<(), Errno>, Error> {
        let name = if on {
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)"
        } else {
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)"
        };
        let r = self.try_call(
            name,
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, on.into(), 0, 0, 0, 0],
        )?;
        Ok(r.map(|_| ()))
    }

    /// A prctl that reads a value the kernel may not have (EINVAL: an older kernel, or one
    /// built without the feature): `Ok(None)` then.
    fn prctl_optional(
        &mut self,
        name: &'static str,
        option: u64,
        arg: u64,
    ) -> Result<Option<u64>, Error> {
        let (r, _) = self.ask(Query::Prctl(name, option, arg))?;
        match r {
            0.. => Ok(Some(r as u64)),
            r if r == -(libc::EINVAL as i64) || r == -(libc::ENODEV as i64) => Ok(None),
            r => Err(self.remote_error(name, Errno(-r as i32))),
        }
    }

    /// PR_GET_TIMERSLACK: the thread's timer slack in ns.
    pub fn get_timerslack(&mut self) -> Result<u64, Error> {
        self.prctl_query("prctl(PR_GET_TIMERSLACK)", PR_GET_TIMERSLACK, 0)
    }

    /// PR_SET_TIMERSLACK (0: back to the thread's default).
    pub fn set_timerslack(&mut self, ns: u64) -> Result<(), Error> {
        self.prctl("prctl(PR_SET_TIMERSLACK)", [PR_SET_TIMERSLACK, ns, 0, 0, 0])?;
        Ok(())
    }

    /// PR_GET_TSC: PR_TSC_ENABLE (1) or PR_TSC_SIGSEGV (2).
    pub fn get_tsc(&mut self) -> Result<u32, Error> {
        Ok(self.prctl_get_int("prctl(PR_GET_TSC)", PR_GET_TSC)? as u32)
    }

    /// PR_SET_TSC.
    pub fn set_tsc(&mut self, mode: u32) -> Result<(), Error> {
        self.prctl("prctl(PR_SET_TSC)", [PR_SET_TSC, mode.into(), 0, 0, 0])?;
        Ok(())
    }

    /// PR_MCE_KILL_GET: PR_MCE_KILL_LATE (0), PR_MCE_KILL_EARLY (1) or PR_MCE_KILL_DEFAULT (2).
    pub fn get_mce_kill(&mut self) -> Result<u32, Error> {
        Ok(self.prctl_query("prctl(PR_MCE_KILL_GET)", PR_MCE_KILL_GET, 0)? as u32)
    }

    /// PR_MCE_KILL: the thread's policy (PR_MCE_KILL_DEFAULT clears it).
    pub fn set_mce_kill(&mut self, policy: u32) -> Result<(), Error> {
        let args = if policy == PR_MCE_KILL_DEFAULT {
            [PR_MCE_KILL, PR_MCE_KILL_CLEAR, 0, 0, 0]
        } else {
            [PR_MCE_KILL, PR_MCE_KILL_SET, policy.into(), 0, 0]
        };
        self.prctl("prctl(PR_MCE_KILL)", args)?;
        Ok(())
    }

    /// PR_GET_SPECULATION_CTRL(which); 0 (PR_SPEC_NOT_AFFECTED) where the kernel has no such
    /// control.
    pub fn get_speculation_ctrl(&mut self, which: u32) -> Result<u32, Error> {
        let v = self.prctl_optional(
            "prctl(PR_GET_SPECULATION_CTRL)",
            PR_GET_SPECULATION_CTRL,
            which.into(),
        )?;
        Ok(v.unwrap_or(0) as u32)
    }

    /// PR_SET_SPECULATION_CTRL(which, ctrl).
    pub fn set_speculation_ctrl(&mut self, which: u32, ctrl: u32) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_SET_SPECULATION_CTRL)",
            [PR_SET_SPECULATION_CTRL, which.into(), ctrl.into(), 0, 0],
        )?;
        Ok(())
    }

    /// PR_SET_IO_FLUSHER(1) (needs CAP_SYS_RESOURCE).
    pub fn set_io_flusher(&mut self) -> Result<(), Error> {
        self.prctl("prctl(PR_SET_IO_FLUSHER)", [PR_SET_IO_FLUSHER, 1, 0, 0, 0])?;
        Ok(())
    }

    /// PR_GET_THP_DISABLE: 0, 1, or 3 (PR_THP_DISABLE_EXCEPT_ADVISED).
    pub fn get_thp_disable(&mut self) -> Result<u32, Error> {
        Ok(self.prctl_query("prctl(PR_GET_THP_DISABLE)", PR_GET_THP_DISABLE, 0)? as u32)
    }

    /// PR_SET_THP_DISABLE(1, flags).
    pub fn set_thp_disable(&mut self, flags: u32) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_SET_THP_DISABLE)",
            [PR_SET_THP_DISABLE, 1, flags.into(), 0, 0],
        )?;
        Ok(())
    }

    /// PR_GET_MDWE (0 where the kernel does not have it).
    pub fn get_mdwe(&mut self) -> Result<u32, Error> {
        let v = self.prctl_optional("prctl(PR_GET_MDWE)", PR_GET_MDWE, 0)?;
        Ok(v.unwrap_or(0) as u32)
    }

    /// PR_SET_MDWE(bits): it cannot be unset.
    pub fn set_mdwe(&mut self, bits: u32) -> Result<(), Error> {
        self.prctl("prctl(PR_SET_MDWE)", [PR_SET_MDWE, bits.into(), 0, 0, 0])?;
        Ok(())
    }

    /// PR_GET_MEMORY_MERGE (false where the kernel has no KSM).
    pub fn get_memory_merge(&mut self) -> Result<bool, Error> {
        let v = self.prctl_optional("prctl(PR_GET_MEMORY_MERGE)", PR_GET_MEMORY_MERGE, 0)?;
        Ok(v.unwrap_or(0) != 0)
    }

    /// PR_SET_MEMORY_MERGE(1) (needs CAP_SYS_RESOURCE).
    pub fn set_memory_merge(&mut self) -> Result<(), Error> {
        self.prctl(
            "prctl(PR_SET_MEMORY_MERGE)",
            [PR_SET_MEMORY_MERGE, 1, 0, 0, 0],
        )?;
        Ok(())
    }

    /// membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS): the registration commands the process
    /// issued (0 where the kernel cannot tell, before Linux 6.3).
    pub fn membarrier_registrations(&mut self) -> Result<u32, Error> {
        let q = Query::MembarrierRegistrations;
        let (r, _) = self.ask(q)?;
        match r {
            0.. => Ok(r as u32),
            r if r == -(libc::EINVAL as i64) => Ok(0),
            r => Err(self.remote_error(q.name(), Errno(-r as i32))),
        }
    }

    /// membarrier(cmd, 0, 0): one registration command.
    pub fn membarrier_register(&mut self, cmd: u32) -> Result<(), Error> {
        self.set(
            "membarrier(register)",
            libc::SYS_membarrier,
            [cmd.into(), 0, 0, 0, 0, 0],
        )
    }

    // --- Signals ---------------------------------------------------------------------------

    /// rt_sigaction(sig, NULL, &old): the disposition of `sig`.
    pub fn rt_sigaction_get(&mut self, sig: u32) -> Result<KernelSigaction, Error> {
        self.ask_reading(Query::Sigaction(sig))
    }

    /// rt_sigaction(sig, &act, NULL).
    pub fn rt_sigaction_set(&mut self, sig: u32, act: &KernelSigaction) -> Result<(), Error> {
        self.sigaction_set("rt_sigaction", sig, act)
    }

    /// rt_sigaction(sig, {SIG_DFL}, NULL).
    pub fn rt_sigaction_reset(&mut self, sig: u32) -> Result<(), Error> {
        self.sigaction_set("rt_sigaction(default)", sig, &KernelSigaction::default())
    }

    fn sigaction_set(
        &mut self,
        name: &'static str,
        sig: u32,
        act: &KernelSigaction,
    ) -> Result<(), Error> {
        self.call_passing(name, libc::SYS_rt_sigaction, act, |at| {
            [sig.into(), at, 0, 8, 0, 0]
        })
    }

    /// rt_sigqueueinfo(pid, sig, &info): queues a process-wide signal.
    pub fn rt_sigqueueinfo(&mut self, pid: Pid, sig: u32, info: &Siginfo) -> Result<(), Error> {
        self.call_passing("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo, info, |at| {
            [reg(pid.into()), sig.into(), at, 0, 0, 0]
        })
    }

    /// rt_tgsigqueueinfo(pid, tid, sig, &info): queues a signal for one thread.
    pub fn rt_tgsigqueueinfo(
        &mut self,
        pid: Pid,
        tid: Pid,
        sig: u32,
        info: &Siginfo,
    ) -> Result<(), Error> {
        self.call_passing(
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            info,
            |at| [reg(pid.into()), reg(tid.into()), sig.into(), at, 0, 0],
        )
    }

    /// sigaltstack(NULL, &old): the thread's alternate signal stack.
    pub fn sigaltstack_get(&mut self) -> Result<StackT, Error> {
        self.ask_reading(Query::Sigaltstack)
    }

    /// sigaltstack(&ss, NULL).
    pub fn sigaltstack_set(&mut self, ss: &StackT) -> Result<(), Error> {
        self.call_passing("sigaltstack", libc::SYS_sigaltstack, ss, |at| {
            [at, 0, 0, 0, 0, 0]
        })
    }

    // --- Timers ----------------------------------------------------------------------------

    /// getitimer(which, &value).
    pub fn getitimer(&mut self, which: u32) -> Result<Itimerval, Error> {
        self.ask_reading(Query::Getitimer(which))
    }

    /// setitimer(which, &value, NULL).
    pub fn setitimer(&mut self, which: u32, value: &Itimerval) -> Result<(), Error> {
        self.call_passing("setitimer", libc::SYS_setitimer, value, |at| {
            [which.into(), at, 0, 0, 0, 0]
        })
    }

    /// timer_create(clock, &sev, &id) with `id` as the wanted id (used by the kernel under
    /// PR_TIMER_CREATE_RESTORE_IDS); returns the id the timer got, or the call's errno.
    pub fn timer_create(
        &mut self,
        clock: i32,
        sev: &Sigevent,
        id: i32,
    ) -> Result<Result<i32, Errno>, Error> {
        let mut f = self.frame();
        let sev_at = f.push(sev)?;
        let id_at = f.push(&id)?;
        let r = f.try_call(
            "timer_create",
            libc::SYS_timer_create,
            [reg(clock.into()), sev_at.addr(), id_at.addr(), 0, 0, 0],
        )?;
        match r {
            Ok(_) => Ok(Ok(f.read(id_at)?)),
            Err(e) => Ok(Err(e)),
        }
    }

    /// timer_gettime(id, &value).
    pub fn timer_gettime(&mut self, id: i32) -> Result<Itimerspec, Error> {
        self.call_reading("timer_gettime", libc::SYS_timer_gettime, |out| {
            [reg(id.into()), out, 0, 0, 0, 0]
        })
    }

    /// timer_getoverrun(id).
    pub fn timer_getoverrun(&mut self, id: i32) -> Result<i32, Error> {
        Ok(self.call(
            "timer_getoverrun",
            libc::SYS_timer_getoverrun,
            [reg(id.into()), 0, 0, 0, 0, 0],
        )? as i32)
    }

    /// timer_settime(id, flags, &value, NULL).
    pub fn timer_settime(&mut self, id: i32, flags: i32, value: &Itimerspec) -> Result<(), Error> {
        self.call_passing("timer_settime", libc::SYS_timer_settime, value, |at| {
            [reg(id.into()), reg(flags.into()), at, 0, 0, 0]
        })
    }

    // --- Threads ---------------------------------------------------------------------------

    /// rseq(area, len, 0, sig): registers the rseq area the thread has at `area`.
    pub fn rseq_register(
        &mut self,
        area: RemotePtr<Rseq>,
        len: u32,
        sig: u32,
    ) -> Result<(), Error> {
        self.set(
            "rseq(register)",
            libc::SYS_rseq,
            [area.addr(), len.into(), 0, sig.into(), 0, 0],
        )
    }

    /// rseq(area, len, RSEQ_FLAG_UNREGISTER, sig).
    pub fn rseq_unregister(
        &mut self,
        area: RemotePtr<Rseq>,
        len: u32,
        sig: u32,
    ) -> Result<(), Error> {
        self.call(
            "rseq(unregister)",
            libc::SYS_rseq,
            [
                area.addr(),
                len.into(),
                RSEQ_FLAG_UNREGISTER,
                sig.into(),
                0,
                0,
            ],
        )?;
        Ok(())
    }

    /// set_robust_list(head, len): `head` is an address in the thread's own memory.
    pub fn set_robust_list(&mut self, head: u64, len: u64) -> Result<(), Error> {
        self.set(
            "set_robust_list",
            libc::SYS_set_robust_list,
            [head, len, 0, 0, 0, 0],
        )
    }

    /// set_tid_address(addr): the thread's clear-child-tid address.
    pub fn set_tid_address(&mut self, addr: u64) -> Result<(), Error> {
        self.set(
            "set_tid_address",
            libc::SYS_set_tid_address,
            [addr, 0, 0, 0, 0, 0],
        )
    }

    /// clone3 with `flags` creating a thread with id `tid` (set_tid) that starts where the
    /// calling thread stands; returns the id the kernel gave it.
    pub fn clone3_thread(&mut self, flags: u64, tid: Pid) -> Result<Pid, Error> {
        let mut f = self.frame();
        let set_tid = f.push_slice(&[tid])?;
        let args = CloneArgs {
            flags,
            set_tid: set_tid.addr(),
            set_tid_size: set_tid.len() as u64,
            ..Default::default()
        };
        let at = f.push(&args)?;
        let got = f.call(
            "clone3(thread)",
            libc::SYS_clone3,
            [
                at.addr(),
                std::mem::size_of::<CloneArgs>() as u64,
                0,
                0,
                0,
                0,
            ],
        )?;
        Ok(got as Pid)
    }

    // --- Credentials -----------------------------------------------------------------------

    /// setgroups(groups).
    pub fn setgroups(&mut self, groups: &[u32]) -> Result<(), Error> {
        let mut f = self.frame();
        let at = f.push_slice(groups)?;
        f.set(
            "setgroups",
            libc::SYS_setgroups,
            [at.len() as u64, at.addr(), 0, 0, 0, 0],
        )
    }

    /// setresgid(real, effective, saved).
    pub fn setresgid(&mut self, [r, e, s]: [u32; 3]) -> Result<(), Error> {
        self.set(
            "setresgid",
            libc::SYS_setresgid,
            [r.into(), e.into(), s.into(), 0, 0, 0],
        )
    }

    /// setresuid(real, effective, saved).
    pub fn setresuid(&mut self, [r, e, s]: [u32; 3]) -> Result<(), Error> {
        self.set(
            "setresuid",
            libc::SYS_setresuid,
            [r.into(), e.into(), s.into(), 0, 0, 0],
        )
    }

    /// setfsgid(gid) (it returns the previous one and never fails).
    pub fn setfsgid(&mut self, gid: u32) -> Result<(), Error> {
        self.set("setfsgid", libc::SYS_setfsgid, [gid.into(), 0, 0, 0, 0, 0])
    }

    /// setfsuid(uid) (it returns the previous one and never fails).
    pub fn setfsuid(&mut self, uid: u32) -> Result<(), Error> {
        self.set("setfsuid", libc::SYS_setfsuid, [uid.into(), 0, 0, 0, 0, 0])
    }

    /// capset(&header, data): version 3 takes two data structures (capabilities 0–31 and
    /// 32–63).
    pub fn capset(&mut self, header: &CapUserHeader, data: &[CapUserData; 2]) -> Result<(), Error> {
        let mut f = self.frame();
        let hdr = f.push(header)?;
        let at = f.push(data)?;
        f.set(
            "capset",
            libc::SYS_capset,
            [hdr.addr(), at.addr(), 0, 0, 0, 0],
        )
    }

    // --- Seccomp ------------------------------------------------------------------------------

    /// seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog) with the classic BPF program `insns`
    /// (each a packed `struct sock_filter`). Returns the kernel's answer: with
    /// SECCOMP_FILTER_FLAG_TSYNC a positive value is the id of a thread that could not be
    /// synchronized; `Ok(Err(_))` when the kernel refuses.
    pub fn seccomp_set_filter(
        &mut self,
        flags: u32,
        insns: &[u64],
    ) -> Result<Result<u64, Errno>, Error> {
        let mut f = self.frame();
        let prog = f.push_slice(insns)?;
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        let fprog = f.push(&[prog.len() as u64, prog.addr()])?;
        f.try_call(
            "seccomp(SECCOMP_SET_MODE_FILTER)",
            libc::SYS_seccomp,
            [1, flags.into(), fprog.addr(), 0, 0, 0],
        )
    }

    /// seccomp(SECCOMP_SET_MODE_STRICT, 0, NULL): from then on only read, write, _exit and
    /// sigreturn.
    pub fn seccomp_set_strict(&mut self) -> Result<(), Error> {
        self.call(
            "seccomp(SECCOMP_SET_MODE_STRICT)",
            libc::SYS_seccomp,
            [0, 0, 0, 0, 0, 0],
        )?;
        Ok(())
    }

    // --- Memory and descriptors --------------------------------------------------------------

    /// mmap(addr, len, prot, flags, fd, offset); returns the address.
    pub fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: i32,
        flags: i32,
        fd: i32,
        offset: u64,
    ) -> Result<u64, Error> {
        self.call(
            "mmap",
            libc::SYS_mmap,
            [
                addr,
                len,
                reg(prot.into()),
                reg(flags.into()),
                reg(fd.into()),
                offset,
            ],
        )
    }

    /// munmap(addr, len).
    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        self.call("munmap", libc::SYS_munmap, [addr, len, 0, 0, 0, 0])?;
        Ok(())
    }

    /// mprotect(addr, len, prot).
    pub fn mprotect(&mut self, addr: u64, len: u64, prot: i32) -> Result<(), Error> {
        self.call(
            "mprotect",
            libc::SYS_mprotect,
            [addr, len, reg(prot.into()), 0, 0, 0],
        )?;
        Ok(())
    }

    /// madvise(addr, len, advice).
    pub fn madvise(&mut self, addr: u64, len: u64, advice: Advice) -> Result<(), Error> {
        self.set(
            advice.call_name(),
            libc::SYS_madvise,
            [addr, len, reg(advice.value().into()), 0, 0, 0],
        )
    }

    /// mlock2(addr, len, flags): locks a range, with MLOCK_ONFAULT when `on_fault` (its pages
    /// are locked as they are touched, not populated now).
    pub fn mlock(&mut self, addr: u64, len: u64, on_fault: bool) -> Result<(), Error> {
        let (name, flags) = if on_fault {
            ("mlock2(MLOCK_ONFAULT)", MLOCK_ONFAULT)
        } else {
            ("mlock2", 0)
        };
        self.set(name, libc::SYS_mlock2, [addr, len, flags, 0, 0, 0])
    }

    /// mlockall(flags) (MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT).
    pub fn mlockall(&mut self, flags: u32) -> Result<(), Error> {
        self.set(
            "mlockall",
            libc::SYS_mlockall,
            [flags.into(), 0, 0, 0, 0, 0],
        )
    }

    /// mseal(addr, len, 0): the range can no longer be unmapped, moved or reprotected.
    pub fn mseal(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        self.set("mseal", libc::SYS_mseal, [addr, len, 0, 0, 0, 0])
    }

    /// mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to): moves a mapping.
    pub fn mremap_fixed(&mut self, from: u64, len: u64, to: u64) -> Result<(), Error> {
        self.call(
            "mremap",
            libc::SYS_mremap,
            [
                from,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                to,
                0,
            ],
        )?;
        Ok(())
    }

    /// io_setup(nr_events, &ctx): a new AIO context; its ring's address (the context id).
    pub fn io_setup(&mut self, nr_events: u32) -> Result<u64, Error> {
        let mut f = self.frame();
        let out = f.push(&0u64)?;
        f.call(
            "io_setup",
            libc::SYS_io_setup,
            [nr_events.into(), out.addr(), 0, 0, 0, 0],
        )?;
        f.read(out)
    }

    /// open(path, flags): a descriptor of the target; the path is copied into the scratch area.
    pub fn open(&mut self, path: &str, flags: i32) -> Result<i32, Error> {
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        let mut f = self.frame();
        let at = f.push_slice(&bytes)?;
        let fd = f.call(
            "open",
            libc::SYS_open,
            [at.addr(), reg(flags.into()), 0, 0, 0, 0],
        )?;
        Ok(fd as i32)
    }

    /// write(fd, data): returns how many bytes were written.
    pub fn write_fd(&mut self, fd: i32, data: &[u8]) -> Result<usize, Error> {
        let mut f = self.frame();
        let at = f.push_slice(data)?;
        let n = f.call(
            "write",
            libc::SYS_write,
            [reg(fd.into()), at.addr(), at.len() as u64, 0, 0, 0],
        )?;
        Ok(n as usize)
    }

    /// close(fd).
    pub fn close(&mut self, fd: i32) -> Result<(), Error> {
        self.call("close", libc::SYS_close, [reg(fd.into()), 0, 0, 0, 0, 0])?;
        Ok(())
    }

    /// pidfd_open(pid, flags): a new pidfd (close-on-exec) in the target.
    pub fn pidfd_open(&mut self, pid: i32, flags: u32) -> Result<i32, Error> {
        let fd = self.call(
            "pidfd_open",
            libc::SYS_pidfd_open,
            [reg(pid.into()), flags.into(), 0, 0, 0, 0],
        )?;
        Ok(fd as i32)
    }

    /// userfaultfd(flags): a new userfaultfd of the target's memory.
    pub fn userfaultfd(&mut self, flags: i32) -> Result<i32, Error> {
        let fd = self.call(
            "userfaultfd",
            libc::SYS_userfaultfd,
            [reg(flags.into()), 0, 0, 0, 0, 0],
        )?;
        Ok(fd as i32)
    }

    /// dup3(old, new, flags).
    pub fn dup3(&mut self, old: i32, new: i32, flags: i32) -> Result<(), Error> {
        self.call(
            "dup3",
            libc::SYS_dup3,
            [reg(old.into()), reg(new.into()), reg(flags.into()), 0, 0, 0],
        )?;
        Ok(())
    }

    /// close_range(first, last, flags).
    pub fn close_range(&mut self, first: u32, last: u32, flags: u32) -> Result<(), Error> {
        self.call(
            "close_range",
            libc::SYS_close_range,
            [first.into(), last.into(), flags.into(), 0, 0, 0],
        )?;
        Ok(())
    }

    // --- Helpers ---------------------------------------------------------------------------

    /// Runs `nr` with the arguments `args(out)` makes, `out` the address of room for a `T`
    /// in a frame, and reads the `T` the call left there.
    /// The answer to `q` (prefetched or asked now), a `T` it wrote through its pointer.
    fn ask_reading<T: Pod>(&mut self, q: Query) -> Result<T, Error> {
        let (_, out) = self.ask_ok(q)?;
        T::from_bytes(&out).ok_or_else(|| Error::Inject {
            tid: self.tid(),
            nr: q.call(0).0,
            reason: format!(
                "short answer of {} to {}",
                std::any::type_name::<T>(),
                q.name()
            ),
        })
    }

    fn call_reading<T: Pod>(
        &mut self,
        name: &'static str,
        nr: i64,
        args: impl FnOnce(u64) -> [u64; 6],
    ) -> Result<T, Error> {
        let mut f = self.frame();
        let out = f.alloc::<T>()?;
        f.call(name, nr, args(out.addr()))?;
        f.read(out)
    }

    /// Runs `nr` with the arguments `args(at)` makes, `at` the address of a copy of `value`
    /// in a frame.
    fn call_passing<T: Pod>(
        &mut self,
        name: &'static str,
        nr: i64,
        value: &T,
        args: impl FnOnce(u64) -> [u64; 6],
    ) -> Result<(), Error> {
        let mut f = self.frame();
        let at = f.push(value)?;
        f.set(name, nr, args(at.addr()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::CallRecord;

    #[test]
    fn errno_display() {
        assert_eq!(Errno(libc::EINVAL).to_string(), "EINVAL (Invalid argument)");
        assert_eq!(Errno(4000).name(), "errno 4000");
    }

    #[test]
    fn call_records_read_like_strace() {
        let mut r = CallRecord {
            name: "prctl(PR_SET_PDEATHSIG)",
            nr: libc::SYS_prctl,
            args: [PR_SET_PDEATHSIG, 200, 0, 0, 0, 0],
            result: Some(-(libc::EINVAL as i64)),
        };
        assert_eq!(
            r.to_string(),
            "prctl(PR_SET_PDEATHSIG) [157] (1, 200, 0, 0, 0, 0) = -1 EINVAL (Invalid argument)"
        );
        r.args = [0x7f00_0000_0000, 0x10000, 3, 0x22, u64::MAX, 0];
        r.result = Some(0x7f00_0000_0000);
        assert_eq!(
            r.to_string(),
            "prctl(PR_SET_PDEATHSIG) [157] (0x7f0000000000, 0x10000, 3, 34, -1, 0) = 0x7f0000000000"
        );
        r.args = [0; 6];
        r.result = None;
        assert_eq!(
            r.to_string(),
            "prctl(PR_SET_PDEATHSIG) [157] (0, 0, 0, 0, 0, 0) = ? (did not complete)"
        );
    }
}
