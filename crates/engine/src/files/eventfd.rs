//! eventfd: the counter, EFD_SEMAPHORE and the status flags (O_NONBLOCK).
//!
//! Dump: /proc/PID/fdinfo/N of an `anon_inode:[eventfd]` shows the counter in hex
//! (`eventfd-count:`) and, on kernels that have the line, `eventfd-semaphore: 0|1`. Reading
//! fdinfo does not touch the counter. A kernel without the semaphore line cannot tell; the
//! eventfd is then dumped as a plain counter.
//!
//! Restore: eventfd2(0, EFD_SEMAPHORE?) in the restorer, then one write(2) of the counter (the
//! initial value of eventfd2 is only 32 bits wide, a write takes the whole u64); the status
//! flags are set by [`super::open_all`]. The description is inherited by the new process like
//! any other.

use super::{FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use stasis_sys::{anon_files, Pid};
use std::os::fd::{AsFd, OwnedFd, RawFd};

/// Highest value an eventfd counter can hold.
const MAX_COUNT: u64 = u64::MAX - 1;

/// The eventfd kind.
#[derive(Default)]
pub struct EventFds;

impl FileOps for EventFds {
    fn name(&self) -> &'static str {
        "eventfd"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::EventFd { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.anon_name() == Some("[eventfd]")
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        dump(fd.pid, fd.fd, &fd.fdinfo()?)
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        match &desc.kind {
            FileKind::EventFd { count, .. } if *count > MAX_COUNT => Err(format!(
                "counter {count:#x} above the highest, {MAX_COUNT:#x}"
            )),
            FileKind::EventFd { .. } => Ok(()),
            _ => Err("not an eventfd".into()),
        }
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        open(desc)
    }
}

/// The eventfd fields of one fdinfo text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFdInfo {
    pub count: u64,
    pub semaphore: bool,
}

/// Parses the eventfd lines of /proc/PID/fdinfo/N.
pub fn parse_fdinfo(text: &str) -> Result<EventFdInfo, String> {
    let mut count = None;
    let mut semaphore = false;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "eventfd-count" => {
                count = Some(
                    u64::from_str_radix(v, 16).map_err(|_| format!("bad eventfd-count {v:?}"))?,
                )
            }
            "eventfd-semaphore" => {
                semaphore = match v {
                    "0" => false,
                    "1" => true,
                    _ => return Err(format!("bad eventfd-semaphore {v:?}")),
                }
            }
            _ => {}
        }
    }
    let count = count.ok_or("no eventfd-count line")?;
    Ok(EventFdInfo { count, semaphore })
}

/// Describes eventfd `fd` of `pid` from its fdinfo text.
pub fn dump(pid: Pid, fd: RawFd, fdinfo: &str) -> Result<FileKind, Error> {
    let info = parse_fdinfo(fdinfo)
        .map_err(|e| Error::Invalid(format!("fdinfo of eventfd {fd} of pid {pid}: {e}")))?;
    Ok(FileKind::EventFd {
        count: info.count,
        semaphore: info.semaphore,
    })
}

/// Creates the eventfd of description `f` in the restorer.
fn open(f: &FileDesc) -> Result<OwnedFd, Error> {
    let FileKind::EventFd { count, semaphore } = &f.kind else {
        return Err(Error::Invalid(format!(
            "description {} is not an eventfd",
            f.id
        )));
    };
    let mut flags = libc::EFD_CLOEXEC;
    if *semaphore {
        flags |= libc::EFD_SEMAPHORE;
    }
    let fd = anon_files::eventfd(flags).map_err(|e| Error::io("eventfd", e))?;
    if *count != 0 {
        anon_files::eventfd_add(fd.as_fd(), *count)
            .map_err(|e| Error::io(format!("set the counter of eventfd {} to {count}", f.id), e))?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_image::ImageDir;

    #[test]
    fn validate() {
        let p = sample_process();
        let desc = |count| FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::EventFd {
                count,
                semaphore: false,
            },
            owner: Default::default(),
            locks: Vec::new(),
        };
        EventFds.validate(&desc(MAX_COUNT), &p).unwrap();
        assert!(EventFds.validate(&desc(u64::MAX), &p).is_err());
    }

    #[test]
    fn restored_with_counter_and_flags() {
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = crate::files::OpenContext::new(&images, crate::files::ReplacedFiles::Refuse);
        let desc = FileDesc {
            id: 1,
            flags: (libc::O_RDWR | libc::O_NONBLOCK) as u32,
            pos: 0,
            kind: FileKind::EventFd {
                count: 0x1_0000_0005,
                semaphore: false,
            },
            owner: Default::default(),
            locks: Vec::new(),
        };
        let fd = super::super::open_description(&mut EventFds, &desc, &mut ctx).unwrap();
        let flags = stasis_sys::process::get_status_flags(fd.as_fd()).unwrap();
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        let mut buf = [0u8; 8];
        std::io::Read::read_exact(&mut std::fs::File::from(fd), &mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 0x1_0000_0005);
    }

    #[test]
    fn fdinfo() {
        let text = "pos:\t0\nflags:\t02004002\nmnt_id:\t17\nino:\t1038\n\
                    eventfd-count:         23456799\neventfd-id: 2\neventfd-semaphore: 1\n";
        assert_eq!(
            parse_fdinfo(text).unwrap(),
            EventFdInfo {
                count: 0x2345_6799,
                semaphore: true
            }
        );
        let old_kernel = "pos:\t0\nflags:\t02\neventfd-count:                5\n";
        assert_eq!(
            parse_fdinfo(old_kernel).unwrap(),
            EventFdInfo {
                count: 5,
                semaphore: false
            }
        );
        let max = "eventfd-count: fffffffffffffffe\neventfd-semaphore: 0\n";
        assert_eq!(parse_fdinfo(max).unwrap().count, u64::MAX - 1);
        assert!(parse_fdinfo("pos:\t0\n").is_err());
        assert!(parse_fdinfo("eventfd-count: xyz\n").is_err());
        assert!(parse_fdinfo("eventfd-count: 1\neventfd-semaphore: 2\n").is_err());
    }
}
