//! What madvise, mlock, mlockall and mseal left on the mappings: the VMA flags
//! /proc/PID/smaps shows in `VmFlags` (`dc` MADV_DONTFORK, `dd` MADV_DONTDUMP, `hg`/`nh`
//! MADV_HUGEPAGE/NOHUGEPAGE, `wf` MADV_WIPEONFORK, `sr`/`rr` MADV_SEQUENTIAL/RANDOM, `mg`
//! MADV_MERGEABLE, `lo`/`lf` locked / locked on fault, `sl` sealed), and mlockall(MCL_FUTURE),
//! which leaves no trace on existing mappings but locks every later one.
//!
//! Dump: [`from_vm_flags`] per mapping (the kernel's special mappings are never advised; the
//! flags the kernel gives them itself stay the kernel's); [`dump_future_lock`] looks at the
//! flags of the injector's scratch area, a mapping made after any mlockall.
//!
//! Restore ([`apply_advice`], the rebuild step after the final protections): madvise each
//! mapping, then lock it, then mlockall(MCL_FUTURE), and seal last. Locking comes after the
//! protections because mlock populates a writable private mapping with write faults: a
//! read-only private file mapping locked while the restore still had it writable would become
//! anonymous copies of the file's pages. It comes after the pages are filled so that the pages
//! locked are the dumped ones. The restored process still has the restorer's privileges here
//! (CAP_IPC_LOCK), so RLIMIT_MEMLOCK, already set to the dumped value, does not stand in the way;
//! the memory locked is what the dumped process had locked within it.

use crate::inject::calls::Advice;
use crate::inject::Injector;
use crate::pages::vma::is_special;
use crate::{procfs, Error};
use stasis_image::{Vma, VmaAdvice};
use stasis_sys::Pid;

/// `MCL_FUTURE` and `MCL_ONFAULT` of mlockall.
pub const MCL_FUTURE: u32 = 2;
pub const MCL_ONFAULT: u32 = 4;

/// The advice of a mapping from its two-letter VmFlags.
pub fn from_vm_flags<S: AsRef<str>>(flags: &[S]) -> VmaAdvice {
    let mut a = VmaAdvice::default();
    for f in flags {
        let field = match f.as_ref() {
            "dc" => &mut a.dontfork,
            "dd" => &mut a.dontdump,
            "hg" => &mut a.hugepage,
            "nh" => &mut a.nohugepage,
            "wf" => &mut a.wipeonfork,
            "sr" => &mut a.sequential,
            "rr" => &mut a.random,
            "mg" => &mut a.mergeable,
            "lo" => &mut a.locked,
            "lf" => &mut a.lock_on_fault,
            "sl" => &mut a.sealed,
            _ => continue,
        };
        *field = true;
    }
    a
}

/// The mlockall flags for future mappings (0, `MCL_FUTURE`, or with `MCL_ONFAULT`) of a
/// process in which the injector mapped its scratch area at `scratch`: a mapping made now is
/// locked exactly when mlockall(MCL_FUTURE) is in effect. Memory locked shows in VmLck first,
/// so smaps is read only when something is locked.
pub fn dump_future_lock(pid: Pid, scratch: u64) -> Result<u32, Error> {
    if procfs::read_status(pid)?.locked_kb == 0 {
        return Ok(0);
    }
    let maps = procfs::read_smaps(pid)?;
    let Some(m) = maps.iter().find(|m| m.start <= scratch && scratch < m.end) else {
        return Err(Error::Internal {
            what: format!("pid {pid}: the scratch area at {scratch:#x} is not in its smaps"),
        });
    };
    let a = from_vm_flags(&m.vm_flags);
    Ok(match (a.locked, a.lock_on_fault) {
        (false, _) => 0,
        (true, false) => MCL_FUTURE,
        (true, true) => MCL_FUTURE | MCL_ONFAULT,
    })
}

/// The madvise calls that give a fresh mapping `a`, in order.
pub fn advice_calls(a: &VmaAdvice) -> Vec<Advice> {
    [
        (a.dontfork, Advice::DontFork),
        (a.dontdump, Advice::DontDump),
        (a.hugepage, Advice::HugePage),
        (a.nohugepage, Advice::NoHugePage),
        (a.wipeonfork, Advice::WipeOnFork),
        (a.sequential, Advice::Sequential),
        (a.random, Advice::Random),
        (a.mergeable, Advice::Mergeable),
    ]
    .into_iter()
    .filter_map(|(on, advice)| on.then_some(advice))
    .collect()
}

/// Gives every restored mapping its advice, locks and seal, and sets mlockall(MCL_FUTURE)
/// (`mlock_future`). Runs after the final protections (see the module documentation).
pub fn apply_advice(inj: &mut Injector, vmas: &[Vma], mlock_future: u32) -> Result<(), Error> {
    let advised = || vmas.iter().filter(|v| !is_special(&v.kind));
    for v in advised() {
        for advice in advice_calls(&v.advice) {
            inj.madvise(v.start, v.end - v.start, advice)?;
        }
        if v.advice.locked {
            inj.mlock(v.start, v.end - v.start, v.advice.lock_on_fault)?;
        }
    }
    if mlock_future != 0 {
        inj.mlockall(mlock_future)?;
    }
    // Nothing changes a sealed mapping any more: last.
    for v in advised().filter(|v| v.advice.sealed) {
        inj.mseal(v.start, v.end - v.start)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_smaps;
    use std::path::Path;

    #[test]
    fn parses_every_flag_and_ignores_the_others() {
        let smaps = "\
7f0000000000-7f0000004000 rw-p 00000000 00:00 0
VmFlags: rd wr mr mw me dc dd hg wf sr mg lo lf sl ac sd
7f0000004000-7f0000008000 rw-p 00000000 00:00 0
VmFlags: rd wr mr mw me nh rr ac
7f0000008000-7f000000c000 rw-p 00000000 00:00 0
VmFlags: rd wr mr mw me ac
";
        let m = parse_smaps(smaps, Path::new("smaps")).unwrap();
        assert_eq!(
            from_vm_flags(&m[0].vm_flags),
            VmaAdvice {
                dontfork: true,
                dontdump: true,
                hugepage: true,
                nohugepage: false,
                wipeonfork: true,
                sequential: true,
                random: false,
                mergeable: true,
                locked: true,
                lock_on_fault: true,
                sealed: true,
            }
        );
        let b = from_vm_flags(&m[1].vm_flags);
        assert!(b.nohugepage && b.random);
        assert_eq!(
            b,
            VmaAdvice {
                nohugepage: true,
                random: true,
                ..VmaAdvice::default()
            }
        );
        assert_eq!(from_vm_flags(&m[2].vm_flags), VmaAdvice::default());
        // A flag name is matched whole: "lock" or "l" is not "lo".
        assert_eq!(from_vm_flags(&["lock", "l", "o"]), VmaAdvice::default());
    }

    #[test]
    fn madvise_calls_in_order() {
        let a = VmaAdvice {
            mergeable: true,
            dontdump: true,
            nohugepage: true,
            locked: true,
            sealed: true,
            ..VmaAdvice::default()
        };
        assert_eq!(
            advice_calls(&a),
            vec![Advice::DontDump, Advice::NoHugePage, Advice::Mergeable]
        );
        assert!(advice_calls(&VmaAdvice::default()).is_empty());
    }
}
