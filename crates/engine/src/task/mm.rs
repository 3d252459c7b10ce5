//! The mm fields: code, data, brk, stack, argument and environment bounds, the auxiliary
//! vector and the exe link. They make /proc/PID/cmdline, environ, auxv and exe read as before
//! and let brk() go on growing the heap.
//!
//! Dump: /proc/PID/stat fields 26–28 and 45–51, /proc/PID/auxv. Restore: one PR_SET_MM_MAP
//! call inside the new process (the legacy PR_SET_MM_* calls need CAP_SYS_RESOURCE).

use crate::inject::Injector;
use crate::procfs::{self, Stat};
use crate::Error;
use stasis_image::MmFields;
use stasis_sys::Pid;

/// Collects the mm fields of `pid`. `brk` is not in /proc/PID/stat: it is asked from the
/// process itself with brk(0) through the injector.
pub fn dump(pid: Pid, stat: &Stat, inj: &mut Injector) -> Result<MmFields, Error> {
    let brk = inj.call("brk(0)", libc::SYS_brk, [0; 6])?;
    Ok(MmFields {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv: procfs::read_auxv(pid)?,
    })
}

/// Sets the mm fields of the process `inj` runs in. `exe_fd` is a descriptor, in that
/// process, of the executable to show as /proc/PID/exe. Uses the start of the scratch area.
pub fn restore(inj: &mut Injector, mm: &MmFields, exe_fd: i32) -> Result<(), Error> {
    const PR_SET_MM: u64 = 35;
    const PR_SET_MM_MAP: u64 = 14;
    let auxv_bytes: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
    let auxv_addr = inj.put(512, &auxv_bytes)?;
    // struct prctl_mm_map: eleven u64 fields, the auxv pointer, auxv_size (u32), exe_fd (u32).
    let mut map = Vec::with_capacity(104);
    for w in [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_addr,
    ] {
        map.extend_from_slice(&w.to_le_bytes());
    }
    map.extend_from_slice(&(auxv_bytes.len() as u32).to_le_bytes());
    map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    let map_addr = inj.put(0, &map)?;
    inj.call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [PR_SET_MM, PR_SET_MM_MAP, map_addr, map.len() as u64, 0, 0],
    )?;
    Ok(())
}
