//! The mm fields: code, data, brk, stack, argument and environment bounds, the auxiliary
//! vector and the exe link. They make /proc/PID/cmdline, environ, auxv and exe read as before
//! and let brk() go on growing the heap.
//!
//! Dump: /proc/PID/stat fields 26–28 and 45–51, /proc/PID/auxv. Restore: one PR_SET_MM_MAP
//! call inside the new process (the legacy PR_SET_MM_* calls need CAP_SYS_RESOURCE).

use crate::inject::kabi::PrctlMmMap;
use crate::inject::Injector;
use crate::procfs::{self, Stat};
use crate::Error;
use stasis_image::MmFields;
use stasis_sys::Pid;

/// Collects the mm fields of `pid`. `brk` is not in /proc/PID/stat: it is asked from the
/// process itself with brk(0) through the injector.
#[tracing::instrument(name = "mm", level = "debug", skip_all, fields(pid = pid))]
pub fn dump(pid: Pid, stat: &Stat, inj: &mut Injector) -> Result<MmFields, Error> {
    let brk = inj.brk_query()?;
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
/// process, of the executable to show as /proc/PID/exe (-1: leave it).
#[tracing::instrument(name = "mm", level = "debug", skip_all, fields(pid = inj.tid()))]
pub fn restore(inj: &mut Injector, mm: &MmFields, exe_fd: i32) -> Result<(), Error> {
    let map = PrctlMmMap {
        start_code: mm.start_code,
        end_code: mm.end_code,
        start_data: mm.start_data,
        end_data: mm.end_data,
        start_brk: mm.start_brk,
        brk: mm.brk,
        start_stack: mm.start_stack,
        arg_start: mm.arg_start,
        arg_end: mm.arg_end,
        env_start: mm.env_start,
        env_end: mm.env_end,
        auxv: 0,
        auxv_size: 0,
        exe_fd: exe_fd as u32,
    };
    inj.set_mm_map(&map, &mm.auxv)
}
