//! Terminals: pseudo-terminals (`/dev/ptmx` masters, `/dev/pts/N` slaves), `/dev/tty`, and
//! the serial devices that are refused. Claimed before [`super::chardev`], which would
//! otherwise reopen `/dev/pts/N` by path (gone after a reboot, or someone else's terminal).
//! Virtual consoles (`/dev/tty1`) and `/dev/console` stay character devices reopened by path.
//!
//! # Dump
//!
//! * A **pair inside the tree** (a terminal multiplexer, an `expect`-like driver, a remote
//!   shell server and its shell): the master (`/dev/ptmx`) is recorded with everything about
//!   the pair ([`stasis_image::PtyPair`]): its index, lock (TIOCGPTLCK), packet mode, the
//!   slave's exclusive mode, the termios (the kernel's termios calls on a master act on its
//!   slave: the master's own settings are the kernel's, raw), the window size, the session whose
//!   controlling terminal the slave is and its foreground group (TIOCGSID, TIOCGPGRP through
//!   the master), and the bytes queued in each direction. The slave's settings and queue
//!   are read through a slave description of the dumper's own (TIOCGPTPEER). The queues
//!   cannot be peeked: they are read, and written back at once the way they were (with the
//!   echo and the processing of each side off meanwhile), so a process left running finds
//!   them again. Refused by name: input queued for a slave in canonical mode (complete lines:
//!   read back, their line boundaries and end-of-file marks could not be kept), and output
//!   queued for a master in packet mode. A line being typed in
//!   canonical mode (not yet ended) is not seen by anyone, not even as a count: it is lost.
//!   Each slave description of the pair is a [`FileKind::PtySlave`].
//! * A slave whose master the tree does not hold is an **external terminal**
//!   ([`FileKind::ExternalTerminal`]), as for a job started from a shell: its path and
//!   device only for messages and `stasis show`, the termios settings, the window size and
//!   whether the holder's process group was the terminal's foreground group (/proc/PID/stat
//!   `tty_nr` and `tpgid`).
//! * `/dev/tty` opened by path ([`FileKind::ControllingTerminal`]), marked when the
//!   controlling terminal of the process is the slave of a pair of the tree.
//! * Serial devices (`ttyS*`, `ttyUSB*`, `ttyACM*`) are refused: their line settings and
//!   modem state belong to the hardware.
//!
//! # Restore
//!
//! * A pair: masters are opened before every other description. `/dev/ptmx` is opened until
//!   the dumped index comes (the kernel gives the lowest free one; the lower ones are closed
//!   again); when that index is taken by then, the pair gets the first free index above it,
//!   and its slave another path. The queued bytes are written back as at dump, then the
//!   pair gets its termios, the window size, packet mode, exclusive mode and lock. Slave
//!   descriptions are new descriptions of the new slave (TIOCGPTPEER). The session leader
//!   whose controlling terminal the slave was takes it (TIOCSCTTY through the master, after
//!   its setsid, before it forks), and the leader of the foreground group makes its group
//!   the foreground one (TIOCSPGRP), each in its restore child ([`take_terminal_in_child`]).
//! * `/dev/tty` of a process whose controlling terminal is a pair of the tree is opened by
//!   the process itself, in its restore child, once it has that terminal
//!   ([`FileOps::replace_in_child`]): one description per process (a description two
//!   processes shared becomes one each). Otherwise it is the terminal the tree is attached
//!   to (below).
//! * A tree with an external terminal is attached to the terminal the restore is given
//!   ([`crate::restore::RestoreOptions::terminal`]; `stasis restore` passes its stdin when it
//!   is a terminal, or `--tty PATH`; stasisd the terminal its requester passed as a
//!   descriptor), and fails without one, saying what to do. Each of its
//!   descriptions, and `/dev/tty`, is a new description of that terminal (reopened through
//!   /proc/self/fd, with the dumped access mode and flags, never making it a controlling
//!   terminal by opening). The restore then sets the dumped termios on it and makes the
//!   root's process group its foreground group (see
//!   [`crate::restore`](mod@crate::restore), "Terminals"). The window size stays the new
//!   terminal's own (the restored programs get SIGWINCH to redraw).

//! # Kernel facts this relies on (measured on 6.18)
//!
//! * termios, window size, TIOCSCTTY, TIOCGSID, TIOCGPGRP and TIOCSPGRP on a master act on
//!   its slave (the kernel's `tty_pair_get_tty`); TIOCEXCL/TIOCNXCL/TIOCGEXCL act on the side
//!   they are called on; TIOCSPTLCK, TIOCGPTN, TIOCPKT and TIOCGPTPEER only on a master.
//! * FIONREAD on a slave in canonical mode counts the bytes of complete lines only (without
//!   end-of-file marks); a partial line is counted nowhere. On a master (whose own line
//!   discipline is raw) it counts every byte.
//! * Bytes written on one side reach the other side's queue through the flip buffers, a
//!   moment later (a work queue): FIONREAD is polled until they are there.
//! * SIGTTOU for a background caller of TCSETS/TIOCSPGRP is not sent when the caller blocks
//!   it (restore children block every signal).

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::{procfs, Error};
use stasis_image::{
    FdEntry, FileDesc, FileKind, ProcessImage, PtyPair, TermiosImage, WinSizeImage, MAX_PTY_QUEUE,
    MAX_TERMIOS_CC,
};
use stasis_sys::process::ForkedChild;
use stasis_sys::tty;
use stasis_sys::Pid;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The terminal kind. At dump, what it saw of pairs; at restore, the pairs it made.
#[derive(Default)]
pub struct Terminals {
    /// Dump: the (device, rdev) of the slave of every master dumped, with the master's index.
    masters: HashMap<(u64, u64), u32>,
    /// Dump: every slave description dumped (id, device, rdev).
    slaves: Vec<(u32, u64, u64)>,
    /// Dump: the descriptions of `/dev/tty` (id, the controlling terminal of the process
    /// that has it), to tell those of a pair of the tree.
    dev_tty: Vec<(u32, u64)>,
    /// Restore: the master made for each pair (by dumped index), a slave description of our
    /// own (exclusive mode is set and cleared through a slave), and its record.
    pairs: HashMap<u32, (OwnedFd, File, PtyPair)>,
}

/// How the refusal of a restore without a terminal for a job that had one outside the tree
/// names it (`stasis restore` recognizes the refusal by it, to relay a terminal).
pub const OUTSIDE_TERMINAL: &str =
    "a terminal outside the dumped tree (a job started from a shell)";

/// The most `/dev/ptmx` opens spent looking for a dumped index.
const MAX_INDEX_SEARCH: u32 = 4096;
/// The highest pty index a record may hold.
const MAX_INDEX: u32 = 1 << 20;
/// How long written-back bytes may take to reach the other side's line discipline.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

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
            FileKind::ExternalTerminal { .. }
                | FileKind::ControllingTerminal { .. }
                | FileKind::PtyMaster { .. }
                | FileKind::PtySlave { .. }
        )
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.class == Class::CharDevice && fd.metadata().is_ok_and(|md| classify(md.rdev()).is_some())
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let md = fd.metadata()?;
        let rdev = md.rdev();
        match classify(rdev) {
            Some(TtyClass::Controlling) => {
                let stat = procfs::read_stat(fd.pid)?;
                self.dev_tty.push((id, stat.tty_nr));
                Ok(FileKind::ControllingTerminal {
                    path: "/dev/tty".into(),
                    of_pair: false,
                })
            }
            Some(TtyClass::Master) => {
                let (pty, slave_id) = dump_pair(fd)?;
                self.masters.insert(slave_id, pty.index);
                Ok(FileKind::PtyMaster { pty })
            }
            Some(TtyClass::Serial) => Err(fd.unsupported(
                "a serial device, whose line settings and modem state stasis cannot keep",
            )),
            Some(TtyClass::Slave) => {
                self.slaves.push((id, md.dev(), rdev));
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
                    winsize: winsize_image(&w),
                    foreground,
                })
            }
            None => Err(fd.unsupported("a terminal of an unknown kind")),
        }
    }

    fn finish(&mut self, descs: &mut [&mut FileDesc]) -> Result<(), Error> {
        let pair_slaves: HashMap<u32, u32> = self
            .slaves
            .iter()
            .filter_map(|(id, dev, rdev)| self.masters.get(&(*dev, *rdev)).map(|i| (*id, *i)))
            .collect();
        for d in descs.iter_mut() {
            if let Some(&index) = pair_slaves.get(&d.id) {
                d.kind = FileKind::PtySlave { index };
            }
        }
        let pair_rdevs: HashSet<u64> = self.masters.keys().map(|(_, rdev)| *rdev).collect();
        let of_pairs: HashSet<u32> = self
            .dev_tty
            .iter()
            .filter(|(_, ctty)| pair_rdevs.contains(ctty))
            .map(|(id, _)| *id)
            .collect();
        for d in descs.iter_mut() {
            if of_pairs.contains(&d.id) {
                if let FileKind::ControllingTerminal { of_pair, .. } = &mut d.kind {
                    *of_pair = true;
                }
            }
        }
        Ok(())
    }

    fn replace_in_child(
        &self,
        child: &ForkedChild,
        desc: &FileDesc,
        fds: &[&FdEntry],
    ) -> Result<(), String> {
        let FileKind::ControllingTerminal { of_pair: true, .. } = &desc.kind else {
            return Ok(());
        };
        let flags = desc.flags as i32 & libc::O_ACCMODE | super::reopen_flags(desc);
        let new = child
            .open_raw(std::path::Path::new("/dev/tty"), flags)
            .map_err(|e| format!("open /dev/tty: {e}"))?;
        for e in fds {
            child
                .dup3_raw(new, e.fd)
                .and_then(|()| child.set_cloexec_raw(e.fd, e.cloexec))
                .map_err(|err| format!("/dev/tty at fd {}: {err}", e.fd))?;
        }
        child
            .close_raw(new)
            .map_err(|e| format!("close /dev/tty {new}: {e}"))
    }

    fn opens_first(&self, desc: &FileDesc) -> bool {
        matches!(desc.kind, FileKind::PtyMaster { .. })
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
            FileKind::PtyMaster { pty } => validate_pair(pty),
            FileKind::PtySlave { index } if *index <= MAX_INDEX => Ok(()),
            FileKind::PtySlave { index } => Err(format!("pty index {index} is out of range")),
            FileKind::ControllingTerminal { path, .. } if path == "/dev/tty" => Ok(()),
            FileKind::ControllingTerminal { path, .. } => Err(format!(
                "the controlling terminal is opened as {path:?}, not /dev/tty"
            )),
            _ => Err("not a terminal".into()),
        }
    }

    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        match &desc.kind {
            FileKind::PtyMaster { pty } => {
                let (master, slave) = make_pair(pty)?;
                let ours = master
                    .try_clone()
                    .map_err(|e| Error::io("dup of a pty master", e))?;
                self.pairs.insert(pty.index, (ours, slave, pty.clone()));
                Ok(master)
            }
            FileKind::PtySlave { index } => {
                let Some((master, slave, pty)) = self.pairs.get(index) else {
                    return Err(Error::Invalid(format!(
                        "description {} is the slave of pty {index}, whose master no process \
                         of the images holds",
                        desc.id
                    )));
                };
                open_slave(master.as_fd(), slave, pty, desc)
            }
            FileKind::ControllingTerminal { of_pair: true, .. } => {
                // A stand-in: the child opens /dev/tty once it has its controlling terminal
                // (`replace_in_child`).
                let file = super::open_path("/dev/null", desc, 0)?;
                Ok(file.into())
            }
            _ => {
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
    }
}

fn winsize_image(w: &tty::WinSize) -> WinSizeImage {
    WinSizeImage {
        rows: w.rows,
        cols: w.cols,
        xpixel: w.xpixel,
        ypixel: w.ypixel,
    }
}

fn winsize_of(w: &WinSizeImage) -> tty::WinSize {
    tty::WinSize {
        rows: w.rows,
        cols: w.cols,
        xpixel: w.xpixel,
        ypixel: w.ypixel,
    }
}

fn validate_termios(t: &TermiosImage, what: &str) -> Result<(), String> {
    if t.cc.len() > MAX_TERMIOS_CC {
        return Err(format!(
            "{what} has {} control characters (at most {MAX_TERMIOS_CC})",
            t.cc.len()
        ));
    }
    Ok(())
}

fn validate_pair(pty: &PtyPair) -> Result<(), String> {
    let what = format!("pty {}", pty.index);
    if pty.index > MAX_INDEX {
        return Err(format!("{what}: index out of range"));
    }
    validate_termios(&pty.slave_termios, &what)?;
    for (q, name) in [
        (&pty.to_slave, "to its slave"),
        (&pty.to_master, "to its master"),
    ] {
        if q.len() > MAX_PTY_QUEUE {
            return Err(format!(
                "{what} has {} bytes queued {name} (at most {MAX_PTY_QUEUE})",
                q.len()
            ));
        }
    }
    if pty.session < 0 || pty.foreground < 0 {
        return Err(format!("{what}: negative session or group"));
    }
    if pty.session == 0 && pty.foreground != 0 {
        return Err(format!("{what}: a foreground group without a session"));
    }
    Ok(())
}

/// Reads exactly `n` bytes from a terminal that has them queued.
fn drain(file: &File, n: usize, what: &str) -> Result<Vec<u8>, Error> {
    let mut data = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match (&*file).read(&mut data[got..]) {
            Ok(0) => {
                return Err(Error::Invalid(format!(
                    "{what}: end of file after {got} of {n} queued bytes"
                )))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("reading the queue of {what}"), e)),
        }
    }
    Ok(data)
}

/// Waits until `fd` (a terminal) has `n` bytes to read: bytes written on the other side go
/// through the kernel's flip buffers first.
fn wait_readable(fd: BorrowedFd<'_>, n: usize, what: &str) -> Result<(), Error> {
    let deadline = Instant::now() + QUEUE_TIMEOUT;
    loop {
        let now =
            tty::bytes_readable(fd).map_err(|e| Error::io(format!("FIONREAD on {what}"), e))?;
        if now >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "{what}: {now} of {n} bytes written back arrived within {} s",
                QUEUE_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Writes `data` on the master side so that it lands in the slave's input queue as it is: the
/// slave (`slave`, whose settings are `t`) echoes nothing and processes nothing meanwhile.
fn write_to_slave(
    master: &File,
    slave: &File,
    t: &tty::Termios,
    data: &[u8],
    what: &str,
) -> Result<(), Error> {
    if data.is_empty() {
        return Ok(());
    }
    let mut quiet = *t;
    quiet.iflag = 0;
    quiet.lflag &= !(libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN);
    tty::tcsetattr(slave.as_fd(), &quiet).map_err(|e| Error::io(format!("TCSETS on {what}"), e))?;
    (&*master)
        .write_all(data)
        .map_err(|e| Error::io(format!("writing the input queue of {what} back"), e))?;
    let arrived = wait_readable(slave.as_fd(), data.len(), what);
    tty::tcsetattr(slave.as_fd(), t).map_err(|e| Error::io(format!("TCSETS on {what}"), e))?;
    arrived
}

/// Writes `data` on the slave side so that it lands in the master's input queue as it is (the
/// slave's output processing off meanwhile).
fn write_to_master(
    master: &File,
    slave: &File,
    t: &tty::Termios,
    data: &[u8],
    what: &str,
) -> Result<(), Error> {
    if data.is_empty() {
        return Ok(());
    }
    let mut raw = *t;
    raw.oflag &= !libc::OPOST;
    tty::tcsetattr(slave.as_fd(), &raw).map_err(|e| Error::io(format!("TCSETS on {what}"), e))?;
    (&*slave)
        .write_all(data)
        .map_err(|e| Error::io(format!("writing the output queue of {what} back"), e))?;
    let arrived = wait_readable(master.as_fd(), data.len(), what);
    tty::tcsetattr(slave.as_fd(), t).map_err(|e| Error::io(format!("TCSETS on {what}"), e))?;
    arrived
}

/// Dumps the pair of the master `fd`; also returns the (device, rdev) of its slave.
fn dump_pair(fd: &Probe<'_>) -> Result<(PtyPair, (u64, u64)), Error> {
    let master = fd.file()?;
    let m = master.as_fd();
    let what = format!("pty master fd {} of pid {}", fd.fd, fd.pid);
    let io = |op: &str| {
        let w = what.clone();
        let op = op.to_string();
        move |e| Error::io(format!("{op} on {w}"), e)
    };
    let index = tty::pty_index(m).map_err(io("TIOCGPTN"))?;
    let what = format!("{what} (/dev/pts/{index})");
    let locked = tty::locked(m).map_err(io("TIOCGPTLCK"))?;
    let packet = tty::packet_mode(m).map_err(io("TIOCGPKT"))?;
    let winsize = tty::window_size(m).map_err(io("TIOCGWINSZ"))?;
    let session = tty::session_of(m).unwrap_or(0);
    let foreground = if session != 0 {
        tty::tcgetpgrp(m).unwrap_or(0)
    } else {
        0
    };
    // Our own slave description, to read the slave's side (unlocked for the open).
    if locked {
        tty::set_locked(m, false).map_err(io("TIOCSPTLCK"))?;
    }
    let peer = tty::open_peer(m, libc::O_RDWR);
    if locked {
        tty::set_locked(m, true).map_err(io("TIOCSPTLCK"))?;
    }
    let slave = File::from(peer.map_err(io("TIOCGPTPEER"))?);
    let smd = slave
        .metadata()
        .map_err(|e| Error::io(format!("fstat of the slave of {what}"), e))?;
    let s = slave.as_fd();
    let slave_termios = tty::tcgetattr(s).map_err(io("TCGETS on the slave"))?;
    let exclusive = tty::exclusive(s).map_err(io("TIOCGEXCL on the slave"))?;
    let icanon = libc::ICANON;
    let n_slave = tty::bytes_readable(s).map_err(io("FIONREAD on the slave"))?;
    let n_master = tty::bytes_readable(m).map_err(io("FIONREAD"))?;
    if n_slave > 0 && slave_termios.lflag & icanon != 0 {
        return Err(fd.unsupported(&format!(
            "a pseudo-terminal master whose slave /dev/pts/{index} has {n_slave} bytes of \
             input (complete lines) its reader has not read, in canonical mode: they cannot be \
             read without taking them from it, and their line ends could not be written back \
             as they are (dump again once it has read them)"
        )));
    }
    if n_master > 0 && packet {
        return Err(fd.unsupported(&format!(
            "a pseudo-terminal master in packet mode with {n_master} bytes of output of \
             /dev/pts/{index} not read yet: they cannot be read without taking them and the \
             packet state from it (dump again once it has read them)"
        )));
    }
    if n_slave > MAX_PTY_QUEUE || n_master > MAX_PTY_QUEUE {
        return Err(fd.unsupported("a pseudo-terminal master with more queued than stasis keeps"));
    }
    let to_slave = drain(&slave, n_slave, &what)?;
    let to_master = drain(master, n_master, &what)?;
    // Back where they were, for a process that goes on running.
    write_to_slave(master, &slave, &slave_termios, &to_slave, &what)?;
    write_to_master(master, &slave, &slave_termios, &to_master, &what)?;
    Ok((
        PtyPair {
            index,
            locked,
            packet,
            exclusive,
            slave_termios: termios_image(&slave_termios),
            winsize: winsize_image(&winsize),
            session,
            foreground,
            to_slave,
            to_master,
        },
        (smd.dev(), smd.rdev()),
    ))
}

/// Makes the pair of `pty`: a master with the dumped index where it is free, everything of
/// the record set on it. Returns the master (O_RDWR; the caller sets the status flags) and a
/// slave description.
fn make_pair(pty: &PtyPair) -> Result<(OwnedFd, File), Error> {
    let what = format!("pty {}", pty.index);
    let io = |op: &str| {
        let w = what.clone();
        let op = op.to_string();
        move |e| Error::io(format!("{op} for {w}"), e)
    };
    // The kernel hands out the lowest free index: hold the lower ones until ours comes.
    let mut held = Vec::new();
    let master = loop {
        let m = tty::open_master(0).map_err(io("open /dev/ptmx"))?;
        let got = tty::pty_index(m.as_fd()).map_err(io("TIOCGPTN"))?;
        if got >= pty.index || held.len() as u32 >= MAX_INDEX_SEARCH {
            if got != pty.index {
                tracing::debug!(dumped = pty.index, got, "pty index taken: another one");
            }
            break m;
        }
        held.push(m);
    };
    drop(held);
    let m = master.as_fd();
    tty::set_locked(m, false).map_err(io("TIOCSPTLCK"))?;
    let slave = File::from(tty::open_peer(m, libc::O_RDWR).map_err(io("TIOCGPTPEER"))?);
    let master = File::from(master);
    let slave_termios = termios_of(&pty.slave_termios);
    write_to_slave(&master, &slave, &slave_termios, &pty.to_slave, &what)?;
    write_to_master(&master, &slave, &slave_termios, &pty.to_master, &what)?;
    let m = master.as_fd();
    tty::tcsetattr(slave.as_fd(), &slave_termios).map_err(io("TCSETS on the slave"))?;
    tty::set_window_size(m, &winsize_of(&pty.winsize)).map_err(io("TIOCSWINSZ"))?;
    if pty.packet {
        tty::set_packet_mode(m, true).map_err(io("TIOCPKT"))?;
    }
    if pty.exclusive {
        tty::set_exclusive(slave.as_fd(), true).map_err(io("TIOCEXCL"))?;
    }
    if pty.locked {
        tty::set_locked(m, true).map_err(io("TIOCSPTLCK"))?;
    }
    Ok((master.into(), slave))
}

/// A new description of the slave of `master` for `desc` (the lock and exclusive mode lifted
/// for the open, then set again).
fn open_slave(
    master: BorrowedFd<'_>,
    slave: &File,
    pty: &PtyPair,
    desc: &FileDesc,
) -> Result<OwnedFd, Error> {
    let what = format!("the slave of pty {}", pty.index);
    let io = |op: &str| {
        let w = what.clone();
        let op = op.to_string();
        move |e| Error::io(format!("{op} for {w}"), e)
    };
    if pty.locked {
        tty::set_locked(master, false).map_err(io("TIOCSPTLCK"))?;
    }
    // Exclusive mode refuses new opens but root's (a restore for a user is not root); it is
    // the slave's, set and cleared through a slave description.
    if pty.exclusive {
        tty::set_exclusive(slave.as_fd(), false).map_err(io("TIOCNXCL"))?;
    }
    let flags = desc.flags as i32 & libc::O_ACCMODE | super::reopen_flags(desc);
    let opened = tty::open_peer(master, flags);
    if pty.exclusive {
        tty::set_exclusive(slave.as_fd(), true).map_err(io("TIOCEXCL"))?;
    }
    if pty.locked {
        tty::set_locked(master, true).map_err(io("TIOCSPTLCK"))?;
    }
    opened.map_err(io("TIOCGPTPEER"))
}

/// In the restore child of `image`, once it has its session and group: a session leader
/// takes the slave of a pair of the tree that was its controlling terminal (TIOCSCTTY
/// through the master), and the leader of a terminal's foreground group makes its group
/// the foreground one (TIOCSPGRP). `descriptions`: the tree's, inherited from the restorer.
pub fn take_terminal_in_child(
    image: &ProcessImage,
    descriptions: &super::OpenedFiles,
) -> Result<(), String> {
    for d in descriptions.descriptions() {
        let FileKind::PtyMaster { pty } = &d.kind else {
            continue;
        };
        if pty.session == 0 || image.sid != pty.session {
            continue;
        }
        let Some(master) = descriptions.get(d.id) else {
            continue;
        };
        if image.pid == pty.session {
            tty::set_controlling_terminal(master.as_fd()).map_err(|e| {
                format!(
                    "taking pty {} as controlling terminal (TIOCSCTTY): {e}",
                    pty.index
                )
            })?;
        }
        if image.pid == pty.foreground && image.pgid == image.pid {
            tty::tcsetpgrp(master.as_fd(), image.pid).map_err(|e| {
                format!(
                    "making group {} the foreground of pty {} (TIOCSPGRP): {e}",
                    image.pid, pty.index
                )
            })?;
        }
    }
    Ok(())
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
                FileKind::ControllingTerminal {
                    path,
                    of_pair: false,
                } => path,
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
        Terminals::default()
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
            assert!(Terminals::default().validate(&bad, &p).is_err(), "{why}");
        }
        let mut tty = terminal("/dev/pts/3", 0x8803, 19);
        tty.kind = FileKind::ControllingTerminal {
            path: "/etc/passwd".into(),
            of_pair: false,
        };
        assert!(Terminals::default().validate(&tty, &p).is_err());
    }

    fn pair(pty: PtyPair) -> FileDesc {
        FileDesc {
            id: 2,
            flags: 2,
            pos: 0,
            kind: FileKind::PtyMaster { pty },
            owner: Default::default(),
            locks: Vec::new(),
        }
    }

    #[test]
    fn validate_pairs() {
        let p = sample_process();
        let good = PtyPair {
            index: 3,
            session: 40,
            foreground: 41,
            to_slave: b"abc".to_vec(),
            ..Default::default()
        };
        Terminals::default()
            .validate(&pair(good.clone()), &p)
            .expect("a good pair");
        let bad = [
            (
                PtyPair {
                    index: MAX_INDEX + 1,
                    ..good.clone()
                },
                "index",
            ),
            (
                PtyPair {
                    to_slave: vec![0; MAX_PTY_QUEUE + 1],
                    ..good.clone()
                },
                "queue to the slave",
            ),
            (
                PtyPair {
                    to_master: vec![0; MAX_PTY_QUEUE + 1],
                    ..good.clone()
                },
                "queue to the master",
            ),
            (
                PtyPair {
                    slave_termios: TermiosImage {
                        cc: vec![0; MAX_TERMIOS_CC + 1],
                        ..Default::default()
                    },
                    ..good.clone()
                },
                "control characters",
            ),
            (
                PtyPair {
                    session: 0,
                    ..good.clone()
                },
                "foreground without session",
            ),
            (
                PtyPair {
                    session: -1,
                    ..good.clone()
                },
                "negative session",
            ),
        ];
        for (pty, why) in bad {
            assert!(
                Terminals::default().validate(&pair(pty), &p).is_err(),
                "{why}"
            );
        }
        let mut slave = pair(good);
        slave.kind = FileKind::PtySlave {
            index: MAX_INDEX + 1,
        };
        assert!(Terminals::default().validate(&slave, &p).is_err());
    }

    #[test]
    fn a_pair_comes_back_with_its_queues_and_settings() {
        let pty = PtyPair {
            index: 0,
            slave_termios: {
                let (_m, s, _) = tty::open_pty().expect("a pty");
                let mut t = tty::tcgetattr(s.as_fd()).expect("TCGETS");
                t.lflag &= !(libc::ICANON | libc::ECHO);
                termios_image(&t)
            },
            winsize: WinSizeImage {
                rows: 7,
                cols: 9,
                ..Default::default()
            },
            locked: true,
            exclusive: true,
            to_slave: b"in".to_vec(),
            to_master: b"out".to_vec(),
            ..Default::default()
        };
        let (master, ours) = make_pair(&pty).expect("make the pair");
        let m = master.as_fd();
        assert!(tty::locked(m).expect("TIOCGPTLCK"));
        let desc = pair(pty.clone());
        let slave = File::from(open_slave(m, &ours, &pty, &desc).expect("open the slave"));
        drop(ours);
        assert!(tty::locked(m).expect("TIOCGPTLCK"), "locked again");
        assert!(
            tty::exclusive(slave.as_fd()).expect("TIOCGEXCL"),
            "exclusive again"
        );
        assert_eq!(tty::window_size(slave.as_fd()).expect("TIOCGWINSZ").rows, 7);
        assert_eq!(
            tty::tcgetattr(slave.as_fd()).expect("TCGETS").lflag & libc::ICANON,
            0
        );
        let master = File::from(master);
        assert_eq!(drain(&slave, 2, "slave").expect("read"), b"in");
        assert_eq!(drain(&master, 3, "master").expect("read"), b"out");
        assert_eq!(tty::bytes_readable(slave.as_fd()).expect("FIONREAD"), 0);
        assert_eq!(tty::bytes_readable(master.as_fd()).expect("FIONREAD"), 0);
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
