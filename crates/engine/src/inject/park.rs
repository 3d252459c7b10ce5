//! Parking a thread between injected calls so that it survives the death of the injector.
//!
//! When the tracer dies (the dumper, a stasisd worker killed mid-dump), the kernel detaches
//! its tracees and they run on from the registers they have at that moment. Between two
//! injected calls those are the registers left by the last call: the thread would resume
//! inside the `[vdso]` with an injected call's result in `rax` and crash.
//!
//! A parked thread instead stands at the `syscall` instruction used for injection with
//! `rax` = `rt_sigreturn` and its stack pointer on a signal frame written in the scratch
//! area ([`frame`]): the thread's saved registers (with the kernel's restart of an
//! interrupted call applied, as a resume from the stop would do), its signal mask from
//! before the injection, and its XSAVE area (FPU, SSE, AVX). Resumed without its tracer, the
//! thread returns through that frame to exactly where it was. The tracer itself always sets
//! registers before running anything, so the parked registers are never run while it lives.
//!
//! The frame's return address (`pretcode`, as for a handler) is the process's own signal
//! restorer when it has one ([`Gadgets`]: the bytes `mov $15,%rax; syscall` of libc's
//! `__restore_rt`, and the bytes `syscall; ret` of any system call wrapper): a call is then run
//! from that `syscall; ret` with the stack pointer on the frame, so that a thread whose tracer
//! dies while the call runs finishes it, returns to the restorer and through the frame. And
//! once the injector has memory of its own in the process (the scratch area and the code
//! page, one mapping), a second, small frame below the first ([`cleanup_frame`]) makes that
//! return go through `munmap` of that memory first: the thread runs `rt_sigreturn` into the
//! small frame, which resumes it at `syscall; ret` with `munmap`'s arguments, and that `ret`
//! goes to the restorer again with the stack on the thread's own frame. A dumper killed at
//! any moment then leaves nothing of its own in the process (the clean-up frame is in use
//! before the `mmap` of that memory runs, at an address chosen free beforehand; where none is
//! found, the memory is mapped anywhere and a dumper killed during that one `mmap` leaves it:
//! see [`super::Injector::map_scratch`]).
//!
//! Without the two gadgets (a process without libc's restorer: a static binary of another
//! runtime), the thread stands at the `syscall` of the `[vdso]` and the calls run from a stub
//! of the code page (`super::batch`) whose next instructions are `rt_sigreturn`: the thread
//! survives, but a killed dumper leaves the scratch area and the code page mapped.

use stasis_sys::UserRegs;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The largest frame written (an XSAVE area with every feature known today, AMX tiles
/// included, is under 12 KiB); the frame goes right below the red zone of the thread's stack,
/// taking only its own length ([`frame_len`]).
pub const FRAME_ROOM: u64 = 64 * 1024;
/// Room for the clean-up frame, below the thread's frame ([`cleanup_frame`]).
pub const CLEANUP_ROOM: u64 = 512;

/// Code of the process itself through which a parked thread returns without us: the address
/// of bytes `syscall; ret` and of bytes `mov $15,%rax; syscall` (a signal restorer) in its
/// executable mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gadgets {
    pub syscall_ret: u64,
    pub restorer: u64,
}

/// `syscall; ret`.
const SYSCALL_RET: [u8; 3] = [0x0f, 0x05, 0xc3];
/// `mov $15,%rax; syscall` (glibc's and musl's `__restore_rt`), or `mov $15,%eax; syscall`.
const RESTORERS: [&[u8]; 2] = [
    &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
    &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
];

/// Gadgets found before, by the executable mapping they were found in (its file's device
/// and inode, and its offset in the file): their offsets from the mapping's start. The
/// processes of a tree, stasisd's callers and the runs of `stasis` (through the file of
/// [`super::gadget_cache`], read at the first use) share their libc, whose text then need not
/// be read and scanned again (~0.2 ms a process).
type FoundGadgets = HashMap<super::gadget_cache::Key, super::gadget_cache::Offsets>;
static FOUND: OnceLock<Mutex<FoundGadgets>> = OnceLock::new();

fn found() -> std::sync::MutexGuard<'static, FoundGadgets> {
    FOUND
        .get_or_init(|| {
            Mutex::new(
                super::gadget_cache::path()
                    .map(super::gadget_cache::load)
                    .unwrap_or_default(),
            )
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Finds [`Gadgets`] in the readable executable mappings of `pid` (libc first, where both
/// are). `None` when either is missing. The bytes run as the instructions they spell
/// whatever instruction of the program they are part of. Where they were found in another
/// process mapping the same file, the same places are tried first (their bytes read again:
/// a file changed since, or text the process rewrote, is scanned afresh).
/// `maps`: its mappings as read a moment ago (else they are read).
pub fn find_gadgets(
    pid: stasis_sys::Pid,
    maps: Option<&[crate::procfs::MapEntry]>,
) -> Result<Option<Gadgets>, crate::Error> {
    let maps = crate::procfs::maps_or_read(pid, maps)?;
    let mut maps: Vec<_> = maps
        .iter()
        .filter(|m| m.exec && m.read && m.name != "[vsyscall]" && m.name != "[vdso]")
        .collect();
    // libc's text first: it has both.
    maps.sort_by_key(|m| !m.name.contains("libc"));
    let key = |m: &crate::procfs::MapEntry| (m.dev_major, m.dev_minor, m.inode, m.offset);
    for m in maps.iter().filter(|m| m.inode != 0) {
        let Some(&(sr, rest)) = found().get(&key(m)) else {
            continue;
        };
        let (sr, rest) = (m.start + sr, m.start + rest);
        let mut a = [0u8; 3];
        // As long as the longest restorer (a shorter one at the very end of the text fails
        // the read, and is found by the scan below).
        let mut b = [0u8; 9];
        let same = stasis_sys::proc_mem::read_exact(pid, sr, &mut a).is_ok()
            && stasis_sys::proc_mem::read_exact(pid, rest, &mut b).is_ok()
            && a == SYSCALL_RET
            && RESTORERS.iter().any(|r| b.starts_with(r));
        if same {
            return Ok(Some(Gadgets {
                syscall_ret: sr,
                restorer: rest,
            }));
        }
    }
    let (mut sr, mut rest) = (None, None);
    // Both are usually in the first chunks of libc's text.
    let mut buf = vec![0u8; 64 << 10];
    for m in &maps {
        let mut at = m.start;
        while at < m.end && (sr.is_none() || rest.is_none()) {
            let len = (m.end - at).min(buf.len() as u64) as usize;
            if stasis_sys::proc_mem::read_exact(pid, at, &mut buf[..len]).is_err() {
                break;
            }
            let (s, r) = scan(&buf[..len]);
            sr = sr.or(s.map(|p| (at + p as u64, m)));
            rest = rest.or(r.map(|p| (at + p as u64, m)));
            // Back by the longest pattern, so that one across two chunks is found.
            at += (len as u64).saturating_sub(8).max(1);
        }
        if let (Some((syscall_ret, ms)), Some((restorer, mr))) = (sr, rest) {
            if std::ptr::eq(ms, mr) && ms.inode != 0 {
                let mut found = found();
                let offsets = (syscall_ret - ms.start, restorer - ms.start);
                // Bounded as the file is: stasisd's callers choose the files they map.
                let room =
                    found.len() < super::gadget_cache::MAX_ENTRIES || found.contains_key(&key(ms));
                if room && found.insert(key(ms), offsets) != Some(offsets) {
                    if let Some(path) = super::gadget_cache::path() {
                        super::gadget_cache::store(path, &found);
                    }
                }
            }
            return Ok(Some(Gadgets {
                syscall_ret,
                restorer,
            }));
        }
    }
    Ok(None)
}

/// The offsets of the first `syscall; ret` and the first restorer in `hay` (SIMD substring
/// searches: a byte-by-byte pass over the ~0.5 MiB of libc's text they take to find cost
/// ~0.4 ms of every dump).
fn scan(hay: &[u8]) -> (Option<usize>, Option<usize>) {
    let sr = memchr::memmem::find(hay, &SYSCALL_RET);
    let rest = RESTORERS
        .iter()
        .filter_map(|r| memchr::memmem::find(hay, r))
        .min();
    (sr, rest)
}

/// `__NR_rt_sigreturn` on x86-64.
const RT_SIGRETURN: u64 = 15;
/// The frame's `ucontext` flags: the XSAVE layout is used, and `ss` is restored as saved.
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
/// Marks the end of the XSAVE area of a signal frame.
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Marks the software-reserved bytes of an XSAVE area that the kernel filled in.
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;

/// The trap flag of `eflags` (single-stepping).
const TRAP_FLAG: u64 = 0x100;
/// `__NR_munmap`.
const MUNMAP: u64 = 11;

/// Errors of interrupted calls that the kernel restarts when the thread resumes.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const NR_RESTART_SYSCALL: u64 = 219;

/// pretcode (8), ucontext (flags 8, link 8, stack 24, sigcontext 256, sigmask 8), siginfo
/// (128); then the XSAVE area, 64-byte aligned, and magic2.
const FP_OFF: usize = (8 + 8 + 8 + 24 + 256 + 8 + 128usize).next_multiple_of(64);

/// The length of the frame of a thread whose XSAVE area is `xstate_len` bytes.
pub fn frame_len(xstate_len: usize) -> u64 {
    (FP_OFF + xstate_len + 4) as u64
}

/// A frame to write at `at` (the address where the `rt_sigframe` starts, 16-byte aligned)
/// and the registers of the parked thread. `None` when the XSAVE area has no layout the
/// kernel accepts in a frame or does not fit [`FRAME_ROOM`].
pub fn frame(
    saved: &UserRegs,
    sigmask: u64,
    xstate: &[u8],
    at: u64,
    syscall_ip: u64,
    pretcode: u64,
) -> Option<(Vec<u8>, UserRegs)> {
    // PTRACE_GETREGSET puts the enabled features (XCR0) in the first software-reserved
    // bytes of the legacy area (offset 464); a signal frame has its own description there
    // (magic1, extended size, features, xstate size), written below.
    let xstate_size = xstate.len();
    if xstate_size < 576 {
        return None;
    }
    let xfeatures = u64::from_le_bytes(xstate.get(464..472)?.try_into().ok()?);
    const UC: usize = 8;
    const MCONTEXT: usize = UC + 8 + 8 + 24;
    const SIGMASK: usize = MCONTEXT + 256;
    let fp_off = FP_OFF;
    let len = frame_len(xstate_size) as usize;
    if len as u64 > FRAME_ROOM || at & 63 != 0 {
        return None;
    }
    let mut f = vec![0u8; len];
    let mut put = |off: usize, v: u64| f[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(0, pretcode);
    put(UC, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    // uc_stack: an invalid mode, which rt_sigreturn's sigaltstack refuses (and ignores),
    // so the thread's alternate stack stays as it is.
    put(UC + 16 + 8, 3);
    // The kernel's restart of an interrupted call on resume (no handler runs).
    let mut r = *saved;
    let err = -(r.rax as i64);
    if (r.orig_rax as i64) >= 0 {
        match err {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => {
                r.rax = NR_RESTART_SYSCALL;
                r.rip -= 2;
            }
            _ => {}
        }
    }
    let sc = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ];
    for (i, v) in sc.iter().enumerate() {
        put(MCONTEXT + i * 8, *v);
    }
    // cs, gs, fs, ss (16 bits each).
    let segs =
        (r.cs & 0xffff) | (r.gs & 0xffff) << 16 | (r.fs & 0xffff) << 32 | (r.ss & 0xffff) << 48;
    put(MCONTEXT + 18 * 8, segs);
    // err, trapno, oldmask, cr2: 0; fpstate:
    put(MCONTEXT + 23 * 8, at + fp_off as u64);
    put(SIGMASK, sigmask);
    f[fp_off..fp_off + xstate_size].copy_from_slice(xstate);
    let sw = fp_off + 464;
    f[sw..sw + 48].fill(0);
    f[sw..sw + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    f[sw + 4..sw + 8].copy_from_slice(&(xstate_size as u32 + 4).to_le_bytes());
    f[sw + 8..sw + 16].copy_from_slice(&xfeatures.to_le_bytes());
    f[sw + 16..sw + 20].copy_from_slice(&(xstate_size as u32).to_le_bytes());
    f[fp_off + xstate_size..].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    let mut parked = *saved;
    parked.rip = syscall_ip;
    parked.rax = RT_SIGRETURN;
    parked.orig_rax = u64::MAX;
    // rt_sigreturn finds its frame at rsp - 8 (the handler's `ret` popped pretcode).
    parked.rsp = at + UC as u64;
    Some((f, parked))
}

/// The clean-up frame, to write [`CLEANUP_ROOM`] below the thread's frame at `frame`: `rt_sigreturn` through it resumes the thread at `gadgets.syscall_ret` with the
/// registers of `munmap(addr, len)` and its stack pointer on the thread's frame, whose
/// `pretcode` is the restorer; every signal blocked meanwhile, the FPU state left to the
/// thread's frame (none here). `saved` gives the segment registers and flags.
pub fn cleanup_frame(
    saved: &UserRegs,
    frame: u64,
    gadgets: Gadgets,
    (addr, len): (u64, u64),
) -> Vec<u8> {
    const UC: usize = 8;
    const MCONTEXT: usize = UC + 8 + 8 + 24;
    const SIGMASK: usize = MCONTEXT + 256;
    const LEN: usize = SIGMASK + 8 + 128;
    let mut f = vec![0u8; LEN];
    let mut put = |off: usize, v: u64| f[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(0, gadgets.restorer);
    put(UC, UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    put(UC + 16 + 8, 3);
    let r = saved;
    // r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags.
    let sc = [
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        addr,
        len,
        0,
        0,
        0,
        MUNMAP,
        0,
        frame,
        gadgets.syscall_ret,
        r.eflags & !TRAP_FLAG,
    ];
    for (i, v) in sc.iter().enumerate() {
        put(MCONTEXT + i * 8, *v);
    }
    let segs =
        (r.cs & 0xffff) | (r.gs & 0xffff) << 16 | (r.fs & 0xffff) << 32 | (r.ss & 0xffff) << 48;
    put(MCONTEXT + 18 * 8, segs);
    // fpstate NULL: the FPU state is reset, then the thread's frame restores it.
    put(SIGMASK, u64::MAX);
    debug_assert!(LEN as u64 <= CLEANUP_ROOM);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xstate(size: u32) -> Vec<u8> {
        let mut x = vec![0u8; size as usize];
        x[464] = 0xe7; // XCR0, as ptrace reports it
        x
    }

    #[test]
    fn gadgets_are_found_by_their_bytes() {
        let mut code = vec![0x90u8; 64];
        code[10..13].copy_from_slice(&SYSCALL_RET);
        code[30..39].copy_from_slice(RESTORERS[0]);
        assert_eq!(scan(&code), (Some(10), Some(30)));
        // `syscall` not followed by `ret`, and a restorer cut at the start: none.
        assert_eq!(scan(&code[..12]), (None, None));
        assert_eq!(scan(&code[31..]), (None, None));
        code[50..57].copy_from_slice(RESTORERS[1]);
        assert_eq!(scan(&code[31..]), (None, Some(50 - 31)));
    }

    /// A second process mapping the same libc gets the gadgets found in the first (from
    /// where they were found, checked again), and their bytes are the gadgets'.
    #[test]
    fn gadgets_found_once_serve_another_process_of_the_same_libc() {
        if stasis_sys::process::geteuid() != 0 {
            eprintln!("notice: gadgets_found_once_... needs root; skipped");
            return;
        }
        use super::super::testing::Sleeper;
        let (a, b) = (Sleeper::start(), Sleeper::start());
        let libc_start = |pid: stasis_sys::Pid| {
            crate::procfs::read_maps(pid)
                .expect("maps")
                .into_iter()
                .find(|m| m.exec && m.name.contains("libc"))
                .expect("libc text")
                .start
        };
        let (pa, pb) = (a.pid(), b.pid());
        // Until the loader has mapped libc in both.
        let has_libc = |pid| {
            crate::procfs::read_maps(pid)
                .is_ok_and(|m| m.iter().any(|m| m.exec && m.name.contains("libc")))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !(has_libc(pa) && has_libc(pb)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let ga = find_gadgets(pa, None)
            .expect("find")
            .expect("gadgets in sleep");
        let gb = find_gadgets(pb, None)
            .expect("find")
            .expect("gadgets in sleep");
        // Same offsets into libc's text (address layouts differ).
        assert_eq!(
            ga.syscall_ret - libc_start(pa),
            gb.syscall_ret - libc_start(pb)
        );
        let mut sr = [0u8; 3];
        stasis_sys::proc_mem::read_exact(pb, gb.syscall_ret, &mut sr).expect("read");
        assert_eq!(sr, SYSCALL_RET);
        let mut rest = [0u8; 9];
        stasis_sys::proc_mem::read_exact(pb, gb.restorer, &mut rest).expect("read");
        assert!(RESTORERS.iter().any(|r| rest.starts_with(r)));
    }

    #[test]
    fn the_frame_holds_the_registers_mask_and_restart() {
        let mut r = crate::task::thread::user_from_regs(&Default::default());
        r.rip = 0x1002;
        r.orig_rax = 35; // nanosleep, interrupted
        r.rax = (-ERESTART_RESTARTBLOCK) as u64;
        r.rsp = 0x7000;
        let (f, parked) =
            frame(&r, 0x8000, &xstate(832), 0x10000, 0x5000, 0x4242).expect("a frame");
        assert_eq!(parked.rip, 0x5000);
        assert_eq!(parked.rax, RT_SIGRETURN);
        assert_eq!(parked.rsp, 0x10008);
        let at = |off: usize| u64::from_le_bytes(f[off..off + 8].try_into().expect("8 bytes"));
        assert_eq!(at(0), 0x4242, "pretcode");
        assert_eq!(at(48 + 13 * 8), NR_RESTART_SYSCALL, "rax");
        assert_eq!(at(48 + 16 * 8), 0x1000, "rip back on the syscall");
        assert_eq!(at(48 + 15 * 8), 0x7000, "rsp");
        assert_eq!(at(304), 0x8000, "sigmask");
        let fp = at(48 + 23 * 8);
        assert_eq!(fp & 63, 0);
        let fp_off = (fp - 0x10000) as usize;
        assert_eq!(
            &f[fp_off + 832..],
            &FP_XSTATE_MAGIC2.to_le_bytes(),
            "magic2 ends the area"
        );
        let sw = fp_off + 464;
        assert_eq!(f[sw..sw + 4], FP_XSTATE_MAGIC1.to_le_bytes());
        assert_eq!(f[sw + 4..sw + 8], 836u32.to_le_bytes(), "extended size");
        assert_eq!(f[sw + 8], 0xe7, "features");
        assert_eq!(f[sw + 16..sw + 20], 832u32.to_le_bytes(), "xstate size");
        // Too small.
        assert!(frame(&r, 0, &[0u8; 512], 0x10000, 0x5000, 0).is_none());
        // Too big.
        assert!(frame(&r, 0, &xstate(70_000), 0x10000, 0x5000, 0).is_none());
        // An XSAVE area with AMX tiles (11008 bytes) fits.
        let (f, _) = frame(&r, 0, &xstate(11008), 0x10000, 0x5000, 0).expect("an AMX frame");
        assert_eq!(f.len() as u64, frame_len(11008));
    }
}
