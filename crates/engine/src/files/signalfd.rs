//! signalfd: the set of signals it reports, and its status flags (O_NONBLOCK).
//!
//! Dump: /proc/PID/fdinfo/N of an `anon_inode:[signalfd]` shows `sigmask:` as 16 hex digits,
//! bit n-1 standing for signal n (the format of SigBlk in /proc/PID/status). The signals
//! themselves stay queued on the process and are dumped with it (see [`crate::task::signals`]).
//!
//! Restore: signalfd4(-1, mask) in the restorer; the status flags are set by
//! [`super::open_all`].

use super::{FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use stasis_sys::{anon_files, Pid};
use std::os::fd::{OwnedFd, RawFd};

/// Bits of SIGKILL and SIGSTOP, which the kernel never leaves in a signalfd's mask.
const UNBLOCKABLE: u64 = (1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1));

/// The signalfd kind.
#[derive(Default)]
pub struct SignalFds;

impl FileOps for SignalFds {
    fn name(&self) -> &'static str {
        "signalfd"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::SignalFd { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.anon_name() == Some("[signalfd]")
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
            FileKind::SignalFd { mask } if mask & UNBLOCKABLE != 0 => Err(format!(
                "mask {mask:#x} holds SIGKILL or SIGSTOP, which no signalfd reports"
            )),
            FileKind::SignalFd { .. } => Ok(()),
            _ => Err("not a signalfd".into()),
        }
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        open(desc)
    }
}

/// Parses the `sigmask:` line of /proc/PID/fdinfo/N of a signalfd.
pub fn parse_fdinfo(text: &str) -> Result<u64, String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("sigmask:"))
        .ok_or("no sigmask line")?;
    let v = line.trim();
    u64::from_str_radix(v, 16).map_err(|_| format!("bad sigmask {v:?}"))
}

/// Describes signalfd `fd` of `pid` from its fdinfo text.
pub fn dump(pid: Pid, fd: RawFd, fdinfo: &str) -> Result<FileKind, Error> {
    let mask = parse_fdinfo(fdinfo)
        .map_err(|e| Error::Invalid(format!("fdinfo of signalfd {fd} of pid {pid}: {e}")))?;
    Ok(FileKind::SignalFd { mask })
}

/// Creates the signalfd of description `f` in the restorer.
fn open(f: &FileDesc) -> Result<OwnedFd, Error> {
    let FileKind::SignalFd { mask } = &f.kind else {
        return Err(Error::Invalid(format!(
            "description {} is not a signalfd",
            f.id
        )));
    };
    let fd = anon_files::signalfd(*mask, libc::SFD_CLOEXEC)
        .map_err(|e| Error::io(format!("signalfd with mask {mask:#x}"), e))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    #[test]
    fn validate() {
        let p = sample_process();
        let desc = |mask| FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::SignalFd { mask },
            owner: Default::default(),
            locks: Vec::new(),
        };
        SignalFds.validate(&desc(1 << 9), &p).unwrap();
        SignalFds.validate(&desc(0), &p).unwrap();
        assert!(SignalFds.validate(&desc(1 << 8), &p).is_err(), "SIGKILL");
        assert!(SignalFds.validate(&desc(1 << 18), &p).is_err(), "SIGSTOP");
    }

    #[test]
    fn fdinfo() {
        let text = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\nsigmask:\t0000000800000200\n";
        assert_eq!(parse_fdinfo(text).unwrap(), (1 << 9) | (1 << 35));
        assert!(parse_fdinfo("pos:\t0\n").is_err());
        assert!(parse_fdinfo("sigmask:\tzz\n").is_err());
    }
}
