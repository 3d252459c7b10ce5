//! Terminals: pseudo-terminals (`/dev/ptmx` masters, `/dev/pts/N` slaves), `/dev/tty`, and
//! the serial devices that are refused. Claimed before [`super::chardev`], which would
//! otherwise reopen `/dev/pts/N` by path (gone after a reboot, or someone else's terminal).
//! Virtual consoles (`/dev/tty1`) and `/dev/console` stay character devices reopened by path.
//!
//! Dump:
//! * a slave `/dev/pts/N` is an **external terminal**: the master is not held by the tree
//!   (masters are refused, below), as for a job started from a shell. The record keeps the
//!   path and device only for messages and `stasis show`, the termios settings, the window
//!   size and whether the holder's process group was the terminal's foreground group
//!   (/proc/PID/stat `tty_nr` and `tpgid`).
//! * `/dev/tty` opened by path: recorded as such ([`FileKind::ControllingTerminal`]).
//! * refused by name: a pseudo-terminal master (`/dev/ptmx`: a pty pair inside the tree, a
//!   terminal emulator or multiplexer, is not supported yet) and serial devices (`ttyS*`,
//!   `ttyUSB*`, `ttyACM*`: their line settings and modem state are the hardware's).
//!
//! Restore: a tree with an external terminal is attached to the terminal the restore is
//! given ([`crate::restore::RestoreOptions::terminal`]; `stasis restore` passes its stdin when
//! it is a terminal, or `--tty PATH`), and fails without one, saying what to do. Each
//! description of the external terminal, and `/dev/tty`, is a new description of that
//! terminal (reopened through /proc/self/fd, with the dumped access mode and flags, never
//! making it a controlling terminal by opening). The restore then sets the dumped termios on
//! it and makes the root's process group its foreground group (see
//! [`crate::restore`](mod@crate::restore), "Terminals"). The window size stays the new
//! terminal's own (the restored programs get SIGWINCH to redraw).

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::{procfs, Error};
use stasis_image::{FileDesc, FileKind, ProcessImage, TermiosImage, WinSizeImage, MAX_TERMIOS_CC};
use stasis_sys::tty;
use stasis_sys::Pid;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// The terminal kind.
#[derive(Default)]
pub struct Terminals;

/// `/dev/tty` (5:0) and `/dev/ptmx` (5:2).
const TTYAUX_MAJOR: u64 = 5;
/// Majors of pseudo-terminal slaves (devpts: 136 to 143).
const PTS_MAJORS: std::ops::RangeInclusive<u64> = 136..=143;

fn major(rdev: u64) -> u64 {
    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)
}

fn minor(rdev: u64) -> u64 {
    (rdev & 0xff) | ((rdev >> 12) & !0xff)
}

/// What a terminal device is, by its device number.
#[derive(Debug, PartialEq, Eq)]
enum TtyClass {
    /// `/dev/tty`.
    Controlling,
    /// `/dev/ptmx` (or `/dev/pts/ptmx`).
    Master,
    /// `/dev/pts/N`.
    Slave,
    /// A serial port (`ttyS*` 4:64+, `ttyUSB*` 188, `ttyACM*` 166, low-density serial 204).
    Serial,
}

fn classify(rdev: u64) -> Option<TtyClass> {
    let (ma, mi) = (major(rdev), minor(rdev));
    match (ma, mi) {
        (TTYAUX_MAJOR, 0) => Some(TtyClass::Controlling),
        (TTYAUX_MAJOR, 2) => Some(TtyClass::Master),
        (m, _) if PTS_MAJORS.contains(&m) => Some(TtyClass::Slave),
        (4, m) if m >= 64 => Some(TtyClass::Serial),
        (188 | 166 | 204, _) => Some(TtyClass::Serial),
        _ => None,
    }
}

/// The record's termios from the kernel's.
pub fn termios_image(t: &tty::Termios) -> TermiosImage {
    TermiosImage {
        iflag: t.iflag,
        oflag: t.oflag,
        cflag: t.cflag,
        lflag: t.lflag,
        line: t.line,
        cc: t.cc.to_vec(),
    }
}

/// The kernel's termios from a (validated) record: control characters past the kernel's
/// count are dropped, missing ones are 0.
pub fn termios_of(t: &TermiosImage) -> tty::Termios {
    let mut cc = [0u8; tty::KERNEL_NCCS];
    for (d, s) in cc.iter_mut().zip(&t.cc) {
        *d = *s;
    }
    tty::Termios {
        iflag: t.iflag,
        oflag: t.oflag,
        cflag: t.cflag,
        lflag: t.lflag,
        line: t.line,
        cc,
    }
}

impl FileOps for Terminals {
    fn name(&self) -> &'static str {
        "terminal"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(
            kind,
            FileKind::ExternalTerminal { .. } | FileKind::ControllingTerminal { .. }
        )
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::CharDevice && fd.metadata().is_ok_and(|md| classify(md.rdev()).is_some())
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let rdev = fd.metadata()?.rdev();
        match classify(rdev) {
            Some(TtyClass::Controlling) => Ok(FileKind::ControllingTerminal {
                path: "/dev/tty".into(),
            }),
            Some(TtyClass::Master) => Err(fd.unsupported(
                "a pseudo-terminal master: a terminal whose both ends are in the dumped tree \
                 (a terminal emulator, multiplexer or remote shell server), which stasis cannot \
                 dump yet",
            )),
            Some(TtyClass::Serial) => Err(fd.unsupported(
                "a serial device, whose line settings and modem state stasis cannot keep",
            )),
            Some(TtyClass::Slave) => {
                let file = fd.file()?;
                let termios = tty::tcgetattr(file.as_fd()).map_err(|e| {
                    Error::io(format!("TCGETS on fd {} of pid {}", fd.fd, fd.pid), e)
                })?;
                let w = tty::window_size(file.as_fd()).map_err(|e| {
                    Error::io(format!("TIOCGWINSZ on fd {} of pid {}", fd.fd, fd.pid), e)
                })?;
                let stat = procfs::read_stat(fd.pid)?;
                let foreground = stat.tty_nr == rdev && stat.tpgid == stat.pgid;
                Ok(FileKind::ExternalTerminal {
                    path: fd.link.clone(),
                    rdev,
                    termios: termios_image(&termios),
                    winsize: WinSizeImage {
                        rows: w.rows,
                        cols: w.cols,
                        xpixel: w.xpixel,
                        ypixel: w.ypixel,
                    },
                    foreground,
                })
            }
            None => Err(fd.unsupported("a terminal of an unknown kind")),
        }
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        match &desc.kind {
            FileKind::ExternalTerminal {
                path,
                rdev,
                termios,
                ..
            } => {
                super::check_path(path)?;
                if classify(*rdev) != Some(TtyClass::Slave) {
                    return Err(format!(
                        "device {rdev:#x} of terminal {path} is not a pseudo-terminal"
                    ));
                }
                if termios.cc.len() > MAX_TERMIOS_CC {
                    return Err(format!(
                        "terminal {path} has {} control characters (at most {MAX_TERMIOS_CC})",
                        termios.cc.len()
                    ));
                }
                Ok(())
            }
            FileKind::ControllingTerminal { path } if path == "/dev/tty" => Ok(()),
            FileKind::ControllingTerminal { path } => Err(format!(
                "the controlling terminal is opened as {path:?}, not /dev/tty"
            )),
            _ => Err("not a terminal".into()),
        }
    }

    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let Some(terminal) = ctx.terminal else {
            return Err(Error::Invalid(format!(
                "description {} is a terminal, and the restore has none to attach it to",
                desc.id
            )));
        };
        let path = format!("/proc/self/fd/{terminal}");
        let file = super::open_path(&path, desc, libc::O_NOCTTY)?;
        Ok(file.into())
    }
}

/// The first description of a terminal in the tree that needs one to attach to: its holder,
/// fd and path, for messages.
pub fn needs_terminal<'a>(
    processes: impl Iterator<Item = &'a ProcessImage>,
) -> Option<(Pid, RawFd, String)> {
    for p in processes {
        for f in &p.files {
            let path = match &f.kind {
                FileKind::ExternalTerminal { path, .. } => path,
                FileKind::ControllingTerminal { path } => path,
                _ => continue,
            };
            let fd = p
                .fds
                .iter()
                .find(|e| e.file_id == f.id)
                .map_or(-1, |e| e.fd);
            return Some((p.pid, fd, path.clone()));
        }
    }
    None
}

/// The termios of the first external terminal of the tree (all its descriptions are of one
/// terminal, whose settings were read once per description).
pub fn dumped_termios<'a>(
    processes: impl Iterator<Item = &'a ProcessImage>,
) -> Option<tty::Termios> {
    processes
        .flat_map(|p| p.files.iter())
        .find_map(|f| match &f.kind {
            FileKind::ExternalTerminal { termios, .. } => Some(termios_of(termios)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    fn terminal(path: &str, rdev: u64, cc: usize) -> FileDesc {
        FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::ExternalTerminal {
                path: path.into(),
                rdev,
                termios: TermiosImage {
                    cc: vec![0; cc],
                    ..Default::default()
                },
                winsize: WinSizeImage::default(),
                foreground: true,
            },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn classify_devices() {
        let dev = |ma: u64, mi: u64| (ma << 8) | (mi & 0xff) | ((mi & !0xff) << 12);
        assert_eq!(classify(dev(5, 0)), Some(TtyClass::Controlling));
        assert_eq!(classify(dev(5, 2)), Some(TtyClass::Master));
        assert_eq!(classify(dev(136, 3)), Some(TtyClass::Slave));
        assert_eq!(classify(dev(137, 300)), Some(TtyClass::Slave));
        assert_eq!(classify(dev(4, 64)), Some(TtyClass::Serial));
        assert_eq!(classify(dev(188, 0)), Some(TtyClass::Serial));
        // Virtual consoles and /dev/console stay character devices.
        assert_eq!(classify(dev(4, 1)), None);
        assert_eq!(classify(dev(5, 1)), None);
        assert_eq!(classify(dev(1, 3)), None);
    }

    #[test]
    fn validate() {
        let p = sample_process();
        Terminals
            .validate(&terminal("/dev/pts/3", 0x8803, 19), &p)
            .unwrap();
        for (bad, why) in [
            (terminal("pts/3", 0x8803, 19), "relative path"),
            (terminal("/dev/pts/3", 0x103, 19), "not a pty"),
            (
                terminal("/dev/pts/3", 0x8803, 33),
                "too many control characters",
            ),
        ] {
            assert!(Terminals.validate(&bad, &p).is_err(), "{why}");
        }
        let mut tty = terminal("/dev/pts/3", 0x8803, 19);
        tty.kind = FileKind::ControllingTerminal {
            path: "/etc/passwd".into(),
        };
        assert!(Terminals.validate(&tty, &p).is_err());
    }

    #[test]
    fn termios_round_trip() {
        let mut t = tty::Termios {
            iflag: 1,
            oflag: 2,
            cflag: 3,
            lflag: 4,
            line: 0,
            ..Default::default()
        };
        t.cc[0] = 3;
        assert_eq!(termios_of(&termios_image(&t)), t);
    }
}
