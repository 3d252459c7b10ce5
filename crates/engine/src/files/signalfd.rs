//! signalfd: the set of signals it reports, and its status flags (O_NONBLOCK).
//!
//! Dump: /proc/PID/fdinfo/N of an `anon_inode:[signalfd]` shows `sigmask:` as 16 hex digits,
//! bit n-1 standing for signal n (the format of SigBlk in /proc/PID/status). The signals
//! themselves stay queued on the process and are dumped with it (see [`crate::task::signals`]).
//!
//! Restore: signalfd4(-1, mask) in the restorer, then the status flags.

use crate::Error;
use stasis_image::{FileDesc, FileKind};
use stasis_sys::{anon_files, Pid};
use std::os::fd::{OwnedFd, RawFd};

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
pub fn open(f: &FileDesc) -> Result<OwnedFd, Error> {
    let FileKind::SignalFd { mask } = &f.kind else {
        return Err(Error::Invalid(format!(
            "description {} is not a signalfd",
            f.id
        )));
    };
    let fd = anon_files::signalfd(*mask, libc::SFD_CLOEXEC)
        .map_err(|e| Error::io(format!("signalfd with mask {mask:#x}"), e))?;
    crate::files::set_anon_status_flags(&fd, f)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo() {
        let text = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\nsigmask:\t0000000800000200\n";
        assert_eq!(parse_fdinfo(text).unwrap(), (1 << 9) | (1 << 35));
        assert!(parse_fdinfo("pos:\t0\n").is_err());
        assert!(parse_fdinfo("sigmask:\tzz\n").is_err());
    }
}
