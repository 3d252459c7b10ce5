//! Classification of a process's mappings (/proc/PID/smaps) into image [`Vma`] records.
//!
//! Each smaps entry is first classified from its line alone ([`backing`]: anonymous, a kernel
//! special mapping, shared anonymous memory, a memfd, a file, or refused); only memfds and files
//! then need a look at the mapped object through /proc/PID/map_files (the memfd's identity and
//! seals, the file's device, inode and size, and that its path still names it). Mappings stasis
//! cannot restore make the dump fail with an error naming them.

use crate::procfs::{self, MapEntry};
use crate::Error;
use stasis_image::{Vma, VmaKind};
use stasis_sys::Pid;
use std::os::unix::fs::MetadataExt;

/// Whether a mapping is one of the kernel's special mappings (`[vdso]`, `[vvar]`,
/// `[vvar_vclock]`, `[vsyscall]`, AIO rings): never dumped, made by the kernel and moved into
/// place at restore.
pub fn is_special(kind: &VmaKind) -> bool {
    matches!(
        kind,
        VmaKind::Vdso
            | VmaKind::Vvar
            | VmaKind::VvarVclock
            | VmaKind::Vsyscall
            | VmaKind::Aio { .. }
    )
}

/// The name /proc/PID/maps gives the ring of an AIO context.
pub const AIO_RING_NAME: &str = "/[aio] (deleted)";
/// The size of an AIO ring's header and of one event in it (struct aio_ring, io_event).
pub const AIO_RING_HEADER: u64 = 32;
pub const AIO_EVENT_SIZE: u64 = 32;

/// The ring of the AIO context at `m`: how many events it holds. Refused: a ring with
/// completed events that were not reaped yet (they would have to be made again), and a ring
/// whose header does not match its size.
fn aio_kind(pid: Pid, m: &MapEntry) -> Result<VmaKind, Error> {
    let unsupported = |why: String| Error::Unsupported {
        what: format!("AIO context {:#x} of pid {pid}: {why}", m.start),
    };
    let mut header = [0u8; AIO_RING_HEADER as usize];
    stasis_sys::proc_mem::read_exact(pid, m.start, &mut header)
        .map_err(|e| Error::sys("reading an AIO ring header", pid, e))?;
    let word =
        |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (nr, head, tail) = (word(4), word(8), word(12));
    let fits = (m.end - m.start).saturating_sub(AIO_RING_HEADER) / AIO_EVENT_SIZE;
    if u64::from(nr) != fits {
        return Err(unsupported(format!(
            "its ring says it holds {nr} events, but its {} bytes hold {fits}",
            m.end - m.start
        )));
    }
    if head != tail {
        return Err(unsupported(format!(
            "{} completed events wait in its ring (head {head}, tail {tail}); stasis restores              AIO contexts whose completions were all reaped",
            (u64::from(tail) + u64::from(nr) - u64::from(head)) % u64::from(nr.max(1))
        )));
    }
    Ok(VmaKind::Aio { nr })
}

/// Reads the mappings of `pid` and classifies them. Mappings stasis cannot restore yet make
/// this fail with an error naming them.
pub fn collect_vmas(pid: Pid) -> Result<Vec<Vma>, Error> {
    collect_vmas_hinted(pid, None)
}

/// [`collect_vmas`], with the smaps of the process read a moment ago (a pre-copy reads them
/// while the process runs, to spare the frozen process the page-table walk of smaps): used
/// when /proc/PID/maps still lists exactly the same mappings. Flags changed by madvise
/// without any change of the mappings in between are those of the earlier reading.
pub fn collect_vmas_hinted(pid: Pid, hint: Option<&[procfs::MapEntry]>) -> Result<Vec<Vma>, Error> {
    Ok(collect_vmas_and_maps(pid, hint)?.0)
}

/// [`collect_vmas_hinted`], with the entries of smaps the mappings were made from (for the
/// injector: [`crate::inject::Injector::know_mappings`]).
pub fn collect_vmas_and_maps(
    pid: Pid,
    hint: Option<&[procfs::MapEntry]>,
) -> Result<(Vec<Vma>, Vec<MapEntry>), Error> {
    let maps = match hint {
        // Read while the process ran: its counts of pages may be out of date.
        Some(h) if procfs::same_mappings(h, &procfs::read_maps(pid)?) => h
            .iter()
            .map(|m| MapEntry {
                own_kib: None,
                ..m.clone()
            })
            .collect(),
        _ => procfs::read_smaps(pid)?,
    };
    let vmas = classify_all(pid, &maps)?;
    Ok((vmas, maps))
}

/// Which of the mappings classified from `maps` (one [`Vma`] each, in order) hold no page of
/// the process's own: private mappings whose smaps, read while the process is frozen, count
/// no anonymous and no swapped page (the pages of a private file mapping that are still the
/// file's are not dumped; a page mapped from the shared zero page is all zeros). Their
/// pagemap need not be read. False where not known (maps read earlier, or hugetlb mappings,
/// whose pages smaps counts apart).
pub fn without_own_pages(maps: &[MapEntry]) -> Vec<bool> {
    maps.iter()
        .map(|m| !m.shared && m.own_kib == Some(0) && !m.has_flag("ht"))
        .collect()
}

/// Classifies every entry of `maps` (of process `pid`).
fn classify_all(pid: Pid, maps: &[MapEntry]) -> Result<Vec<Vma>, Error> {
    // A file mapped several times (a library's text, data and bss) is looked at once: the
    // same name, device and inode in the list are the same mapped file, whose identity and
    // size do not change while the process is frozen.
    let mut files: Vec<(&MapEntry, VmaKind)> = Vec::new();
    maps.iter()
        .map(|m| {
            if backing(m)? != Backing::File {
                return classify(pid, m);
            }
            let same = |f: &&(&MapEntry, VmaKind)| {
                (&f.0.name, f.0.dev_major, f.0.dev_minor, f.0.inode)
                    == (&m.name, m.dev_major, m.dev_minor, m.inode)
            };
            let kind = match files.iter().find(same) {
                Some((_, kind)) => kind.clone(),
                None => {
                    let kind = file_kind(pid, m)?;
                    files.push((m, kind.clone()));
                    kind
                }
            };
            Ok(record(m, kind))
        })
        .collect()
}

/// What backs a mapping, as far as its smaps entry tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// Fully known from the line: anonymous memory (private or shared) or a special mapping.
    Known(VmaKind),
    /// A memfd: its identity and seals come from the mapped object.
    Memfd,
    /// A regular file at this path: its identity comes from the mapped object.
    File,
    /// A file deleted while mapped: its identity comes from the mapped object.
    Deleted,
    /// The ring of an AIO context: its header says how big it is.
    Aio,
}

/// Classifies a mapping from its smaps entry alone; refuses what cannot be restored.
pub fn backing(m: &MapEntry) -> Result<Backing, Error> {
    let unsupported = |why: &str| Error::Unsupported {
        what: format!("mapping {:#x}-{:#x} {:?}: {why}", m.start, m.end, m.name),
    };
    // `um`: registered on a userfaultfd for missing pages. Its pages not yet brought in look
    // like holes to the page scan: dumping it would lose them.
    if m.vm_flags.iter().any(|f| f == "um") {
        return Err(unsupported(
            "registered on a userfaultfd for missing pages (a lazy restore still bringing its \
             pages in: wait for its page server to exit; or the process's own userfaultfd)",
        ));
    }
    Ok(match m.name.as_str() {
        AIO_RING_NAME => Backing::Aio,
        "[vdso]" => Backing::Known(VmaKind::Vdso),
        "[vvar]" => Backing::Known(VmaKind::Vvar),
        "[vvar_vclock]" => Backing::Known(VmaKind::VvarVclock),
        "[vsyscall]" => Backing::Known(VmaKind::Vsyscall),
        "" | "[heap]" | "[stack]" => Backing::Known(VmaKind::Anonymous),
        n if n.starts_with("[anon:") => Backing::Known(VmaKind::Anonymous),
        // Shared anonymous memory is a deleted /dev/zero on the kernel's internal shmem mount.
        n if m.shared
            && n.starts_with("/dev/zero")
            && m.inode != 0
            && n.ends_with(" (deleted)") =>
        {
            Backing::Known(VmaKind::Anonymous)
        }
        n if crate::files::memfd::is_memfd_name(n) => Backing::Memfd,
        n if n.starts_with('/') && n.ends_with(" (deleted)") => Backing::Deleted,
        n if n.starts_with('/') => Backing::File,
        // The only socket that can be mapped is a packet socket's PACKET_MMAP ring.
        n if n.starts_with("socket:[") => {
            return Err(unsupported(
                "a PACKET_MMAP ring of a packet socket, which stasis cannot restore (the kernel's position in a new ring cannot be set to the old one's; see engine::files::packet_socket)",
            ))
        }
        _ => return Err(unsupported("unknown special mapping")),
    })
}

/// The image record of a mapping whose kind is known.
pub fn record(m: &MapEntry, kind: VmaKind) -> Vma {
    let prot = ((m.read as u32) * libc::PROT_READ as u32)
        | ((m.write as u32) * libc::PROT_WRITE as u32)
        | ((m.exec as u32) * libc::PROT_EXEC as u32);
    Vma {
        start: m.start,
        end: m.end,
        prot,
        shared: m.shared,
        growsdown: m.has_flag("gd"),
        file_offset: m.offset,
        shmem_id: if m.shared && kind == VmaKind::Anonymous {
            m.inode
        } else {
            0
        },
        // The kernel's special mappings carry flags of the kernel's own (`dd` on vvar), which
        // the restore does not give them.
        advice: if is_special(&kind) {
            Default::default()
        } else {
            super::advice::from_vm_flags(&m.vm_flags)
        },
        kind,
        name: m.name.clone(),
    }
}

/// Classifies one mapping of `pid`, looking at the mapped object when the line is not enough.
pub fn classify(pid: Pid, m: &MapEntry) -> Result<Vma, Error> {
    let kind = match backing(m)? {
        Backing::Known(kind) => kind,
        Backing::Memfd => crate::files::memfd::mapping_kind(pid, m)?,
        Backing::File => file_kind(pid, m)?,
        Backing::Deleted => crate::files::deleted::mapping_kind(pid, m)?,
        Backing::Aio => aio_kind(pid, m)?,
    };
    Ok(record(m, kind))
}

/// The identity of a mapped regular file, checked against its path.
fn file_kind(pid: Pid, m: &MapEntry) -> Result<VmaKind, Error> {
    let unsupported = |why: &str| Error::Unsupported {
        what: format!("mapping {:#x}-{:#x} {:?}: {why}", m.start, m.end, m.name),
    };
    let link = procfs::map_file(pid, m.start, m.end);
    let md = std::fs::metadata(&link).map_err(|e| Error::io(format!("stat {link}"), e))?;
    if !md.is_file() {
        return Err(unsupported("only regular files can be mapped"));
    }
    // The path must still name the same file, or restore would map another one.
    let path = &m.name;
    let by_path = std::fs::metadata(path).map_err(|e| Error::io(format!("stat {path}"), e))?;
    if (by_path.dev(), by_path.ino()) != (md.dev(), md.ino()) {
        return Err(unsupported("the path now names another file"));
    }
    Ok(VmaKind::File {
        path: path.clone(),
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A sample /proc/PID/smaps (detail lines shortened), one entry per case.
    const SMAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 fe:01 1311 /usr/bin/cat
Size:                132 kB
VmFlags: rd mr mw me sd
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0 [heap]
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000400000 rw-s 00000000 00:01 4242 /dev/zero (deleted)
VmFlags: rd wr sh mr mw me ms sd
7f0000400000-7f0000401000 r--s 00001000 00:01 4243 /dev/zero (deleted)
VmFlags: rd sh mr mw me ms sd
7f0000500000-7f0000600000 rw-s 00000000 00:01 77 /memfd:shm (deleted)
VmFlags: rd wr sh mr mw me ms sd
7f0000600000-7f0000601000 ---p 00000000 00:00 0
VmFlags: mr mw me sd
7f0000700000-7f0000701000 rw-p 00000000 00:00 0 [anon:named]
VmFlags: rd wr mr mw me ac sd
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
VmFlags: rd wr mr mw me gd ac
7ffc00100000-7ffc00104000 r--p 00000000 00:00 0 [vvar]
7ffc00104000-7ffc00106000 r--p 00000000 00:00 0 [vvar_vclock]
7ffc00106000-7ffc00108000 r-xp 00000000 00:00 0 [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
";

    fn entries(text: &str) -> Vec<MapEntry> {
        procfs::parse_smaps(text, Path::new("smaps")).unwrap()
    }

    #[test]
    fn classifies_sample_smaps() {
        let maps = entries(SMAPS);
        let got: Vec<Backing> = maps.iter().map(|m| backing(m).unwrap()).collect();
        use Backing::*;
        assert_eq!(
            got,
            vec![
                File,
                Known(VmaKind::Anonymous),
                Known(VmaKind::Anonymous),
                Known(VmaKind::Anonymous),
                Memfd,
                Known(VmaKind::Anonymous),
                Known(VmaKind::Anonymous),
                Known(VmaKind::Anonymous),
                Known(VmaKind::Vvar),
                Known(VmaKind::VvarVclock),
                Known(VmaKind::Vdso),
                Known(VmaKind::Vsyscall),
            ]
        );
        let specials: Vec<bool> = got
            .iter()
            .map(|b| matches!(b, Known(k) if is_special(k)))
            .collect();
        assert_eq!(specials.iter().filter(|s| **s).count(), 4);
    }

    #[test]
    fn records_carry_protection_sharing_and_identity() {
        let maps = entries(SMAPS);
        let rec = |i: usize| record(&maps[i], VmaKind::Anonymous);
        let heap = rec(1);
        assert_eq!((heap.start, heap.end), (0x55d0c1000000, 0x55d0c1021000));
        assert_eq!(heap.prot, (libc::PROT_READ | libc::PROT_WRITE) as u32);
        assert!(!heap.shared && !heap.growsdown);
        assert_eq!((heap.shmem_id, heap.name.as_str()), (0, "[heap]"));
        // Shared anonymous memory is identified by its inode, in every process that maps it.
        let shm = rec(2);
        assert!(shm.shared);
        assert_eq!(shm.shmem_id, 4242);
        let ro = rec(3);
        assert_eq!((ro.prot, ro.shmem_id, ro.file_offset), (1, 4243, 0x1000));
        // Only shared anonymous memory has a shmem_id: a shared memfd mapping has none.
        let memfd = record(&maps[4], VmaKind::Memfd { memfd_id: 77 });
        assert_eq!(memfd.shmem_id, 0);
        assert_eq!(rec(5).prot, libc::PROT_NONE as u32);
        let stack = rec(7);
        assert!(stack.growsdown, "VmFlags gd is a grows-down stack");
        let vdso = record(&maps[10], VmaKind::Vdso);
        assert_eq!(vdso.prot, (libc::PROT_READ | libc::PROT_EXEC) as u32);
    }

    #[test]
    fn records_carry_advice_but_special_mappings_none() {
        let text = "\
7f0000000000-7f0000004000 rw-p 00000000 00:00 0
VmFlags: rd wr mr mw me dd lo lf ac
7ffc00100000-7ffc00104000 r--p 00000000 00:00 0 [vvar]
VmFlags: rd mr pf io de dd
";
        let maps = entries(text);
        let a = record(&maps[0], VmaKind::Anonymous).advice;
        assert!(a.dontdump && a.locked && a.lock_on_fault && !a.dontfork);
        // The kernel marks vvar "dd" itself; the restore never advises special mappings.
        assert_eq!(
            record(&maps[1], VmaKind::Vvar).advice,
            stasis_image::VmaAdvice::default()
        );
    }

    #[test]
    fn refuses_what_cannot_be_restored() {
        // Deleted files are looked at through map_files (engine::files::deleted), which
        // refuses what is not a regular file without links.
        for line in [
            "7f0000000000-7f0000001000 r--p 00000000 fe:01 99 /tmp/gone (deleted)",
            // A deleted /dev/zero that is not shared memory is an ordinary deleted file.
            "7f0000000000-7f0000001000 rw-p 00000000 00:01 42 /dev/zero (deleted)",
            "7f0000000000-7f0000001000 rw-s 00000000 00:01 0 /dev/zero (deleted)",
        ] {
            assert_eq!(
                backing(&entries(line)[0]).unwrap(),
                Backing::Deleted,
                "{line}"
            );
        }
        let refused = [
            "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 [uprobes]",
            "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 anon_inode:[perf_event]",
            "7f0000000000-7f0000001000 rw-s 00000000 00:08 4711 socket:[4711]",
        ];
        for line in refused {
            let m = &entries(line)[0];
            let err = backing(m).expect_err(line);
            assert!(
                matches!(&err, Error::Unsupported { what } if what.contains("7f0000000000")),
                "{line}: {err}"
            );
        }
        let ring = backing(&entries(refused[2])[0]).unwrap_err().to_string();
        assert!(ring.contains("PACKET_MMAP ring"), "{ring}");
    }

    /// A real file mapping: this test binary's own, through /proc/self/map_files (root).
    #[test]
    fn classifies_a_mapped_file_of_this_process() {
        if stasis_sys::process::geteuid() != 0 {
            eprintln!("skipped: /proc/PID/map_files needs root");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_string_lossy().into_owned();
        let me = stasis_sys::process::getpid();
        let m = procfs::read_smaps(me)
            .unwrap()
            .into_iter()
            .find(|m| m.name == exe)
            .unwrap();
        assert_eq!(backing(&m).unwrap(), Backing::File);
        let v = classify(me, &m).unwrap();
        let md = std::fs::metadata(&exe).unwrap();
        assert_eq!(
            v.kind,
            VmaKind::File {
                path: exe,
                dev: md.dev(),
                ino: md.ino(),
                size: md.size()
            }
        );
        assert_eq!((v.start, v.end, v.file_offset), (m.start, m.end, m.offset));
    }
}
