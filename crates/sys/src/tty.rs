//! Terminals: termios, window size, the foreground process group, the controlling terminal,
//! and opening a pseudo-terminal pair.
//!
//! The calls that change a terminal's settings or foreground group are refused to a process
//! in a background group of the terminal's session with SIGTTOU (which stops it) unless the
//! caller blocks or ignores SIGTTOU; [`tcsetattr`] and [`tcsetpgrp`] block it in the calling
//! thread for the duration of the call (the kernel then allows the change).

use crate::{cvt_int, Pid};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The settings of a terminal (the kernel's `struct termios`: the speeds are in `cflag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    /// The control characters (NCCS of the kernel's struct: 19 on x86-64).
    pub cc: [u8; KERNEL_NCCS],
}

/// The number of control characters the kernel's `struct termios` has (TCGETS).
pub const KERNEL_NCCS: usize = 19;

/// A window size (TIOCGWINSZ): rows, columns, and the pixel sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

/// Whether `fd` is a terminal.
pub fn isatty(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: no pointers.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

/// TCGETS: the settings of terminal `fd`.
pub fn tcgetattr(fd: BorrowedFd<'_>) -> io::Result<Termios> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios we own.
    cvt_int(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) })?;
    let mut cc = [0u8; KERNEL_NCCS];
    cc.copy_from_slice(&t.c_cc[..KERNEL_NCCS]);
    Ok(Termios {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc,
    })
}

/// Runs `f` with SIGTTOU blocked in the calling thread (see the module's documentation).
fn without_sigttou<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset; pthread_sigmask reads and
    // writes only sets we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        let e = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        if e != 0 {
            return Err(io::Error::from_raw_os_error(e));
        }
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// TCSETS (now): sets the settings of terminal `fd` (SIGTTOU blocked meanwhile).
pub fn tcsetattr(fd: BorrowedFd<'_>, t: &Termios) -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills what we do not set (the speeds).
    let mut raw: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `raw` is a valid termios we own.
    cvt_int(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut raw) })?;
    raw.c_iflag = t.iflag;
    raw.c_oflag = t.oflag;
    raw.c_cflag = t.cflag;
    raw.c_lflag = t.lflag;
    raw.c_line = t.line;
    raw.c_cc[..KERNEL_NCCS].copy_from_slice(&t.cc);
    // The speeds glibc passes are taken from c_cflag's CBAUD bits (as the kernel's are).
    // SAFETY: cfgetospeed reads the termios we own.
    let speed = unsafe { libc::cfgetospeed(&raw) };
    // SAFETY: as above; the speed comes from the same struct.
    unsafe {
        libc::cfsetospeed(&mut raw, speed);
    }
    // SAFETY: `raw` is a valid termios we own.
    without_sigttou(|| cvt_int(unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &raw) }))?;
    Ok(())
}

/// TIOCGWINSZ: the window size of terminal `fd`.
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<WinSize> {
    // SAFETY: winsize is plain data.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize we own.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) })?;
    Ok(WinSize {
        rows: w.ws_row,
        cols: w.ws_col,
        xpixel: w.ws_xpixel,
        ypixel: w.ws_ypixel,
    })
}

/// TIOCSWINSZ: sets the window size of terminal `fd` (the foreground group gets SIGWINCH when
/// it changes).
pub fn set_window_size(fd: BorrowedFd<'_>, s: &WinSize) -> io::Result<()> {
    let w = libc::winsize {
        ws_row: s.rows,
        ws_col: s.cols,
        ws_xpixel: s.xpixel,
        ws_ypixel: s.ypixel,
    };
    // SAFETY: TIOCSWINSZ reads one winsize we own.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &w) })?;
    Ok(())
}

/// TIOCGPGRP: the foreground process group of terminal `fd` (which must be the caller's
/// controlling terminal).
pub fn tcgetpgrp(fd: BorrowedFd<'_>) -> io::Result<Pid> {
    let mut pgrp: libc::pid_t = 0;
    // SAFETY: TIOCGPGRP writes one pid_t we own.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPGRP, &mut pgrp) })?;
    Ok(pgrp)
}

/// TIOCSPGRP: makes `pgrp` (a group of the caller's session) the foreground process group of
/// terminal `fd`, the caller's controlling terminal (SIGTTOU blocked meanwhile).
pub fn tcsetpgrp(fd: BorrowedFd<'_>, pgrp: Pid) -> io::Result<()> {
    // SAFETY: TIOCSPGRP reads one pid_t we own.
    without_sigttou(|| cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSPGRP, &pgrp) }))?;
    Ok(())
}

/// TIOCGSID: the session whose controlling terminal `fd` is (ENOTTY when it is nobody's, or
/// not the caller's).
pub fn session_of(fd: BorrowedFd<'_>) -> io::Result<Pid> {
    let mut sid: libc::pid_t = 0;
    // SAFETY: TIOCGSID writes one pid_t we own.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGSID, &mut sid) })?;
    Ok(sid)
}

/// TIOCSCTTY (without stealing): makes terminal `fd` the controlling terminal of the caller, a
/// session leader without one.
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal).
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) })?;
    Ok(())
}

/// TIOCGPTN: the index N of a pseudo-terminal master (its slave is /dev/pts/N).
pub fn pty_index(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int we own.
    cvt_int(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
    Ok(n)
}

/// Opens /dev/ptmx: a new pseudo-terminal master (locked, as the kernel makes it), with
/// O_RDWR|O_NOCTTY|O_CLOEXEC and `more` flags.
pub fn open_master(more: i32) -> io::Result<OwnedFd> {
    // SAFETY: a constant path; the flags are plain.
    let m = cvt_int(unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | more,
        )
    })?;
    // SAFETY: open just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(m) })
}

/// The kernel's O_LARGEFILE on x86-64 (the C library defines it as 0 there, and open(2) adds
/// it on 64-bit).
const O_LARGEFILE: i32 = 0o100000;

/// TIOCGPTPEER: a new description of the slave of `master`, opened with `flags` (the access
/// mode and open flags; O_NOCTTY and O_LARGEFILE are added, as open(2) of the slave's path
/// would), its descriptor close-on-exec.
///
/// O_CLOEXEC is not passed to the ioctl: unlike open(2), it keeps it in the description's
/// flags, which /proc/PID/fdinfo then reports for every descriptor of it (a dump of a
/// restored process took its descriptors for close-on-exec, and the next restore made them
/// so). FD_CLOEXEC is set on the new descriptor right after.
pub fn open_peer(master: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes the open flags as its argument and returns a new descriptor.
    let s = cvt_int(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            (flags | libc::O_NOCTTY | O_LARGEFILE) & !libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the ioctl just returned this descriptor, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(s) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// An ioctl that reads one int.
fn get_int(fd: BorrowedFd<'_>, req: libc::c_ulong) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the requests this is used with write one int we own.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) })?;
    Ok(v)
}

/// An ioctl that takes a pointer to one int.
fn set_int(fd: BorrowedFd<'_>, req: libc::c_ulong, v: i32) -> io::Result<()> {
    // SAFETY: the requests this is used with read one int we own.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), req, &v) })?;
    Ok(())
}

/// TIOCGPTLCK: whether the slave of `master` is locked (cannot be opened).
pub fn locked(master: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(get_int(master, libc::TIOCGPTLCK)? != 0)
}

/// TIOCSPTLCK: locks or unlocks the slave of `master`.
pub fn set_locked(master: BorrowedFd<'_>, lock: bool) -> io::Result<()> {
    set_int(master, libc::TIOCSPTLCK, lock as i32)
}

/// TIOCGPKT: whether `master` is in packet mode.
pub fn packet_mode(master: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(get_int(master, libc::TIOCGPKT)? != 0)
}

/// TIOCPKT: sets or clears packet mode on `master`.
pub fn set_packet_mode(master: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    set_int(master, libc::TIOCPKT, on as i32)
}

/// TIOCGEXCL: whether terminal `fd` is in exclusive mode (no new opens but by root).
pub fn exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(get_int(fd, libc::TIOCGEXCL)? != 0)
}

/// TIOCEXCL or TIOCNXCL: sets or clears exclusive mode on terminal `fd`.
pub fn set_exclusive(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let req = if on { libc::TIOCEXCL } else { libc::TIOCNXCL };
    // SAFETY: TIOCEXCL and TIOCNXCL take no argument.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), req) })?;
    Ok(())
}

/// FIONREAD: how many bytes a read of terminal `fd` would find (in canonical mode: the
/// complete lines only).
pub fn bytes_readable(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(get_int(fd, libc::FIONREAD)? as usize)
}

/// TIOCOUTQ: how many bytes wait in the output of terminal `fd` (written, not yet taken by
/// the other side's line discipline).
pub fn bytes_unsent(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(get_int(fd, libc::TIOCOUTQ)? as usize)
}

/// Opens a new pseudo-terminal pair: the master (/dev/ptmx, O_RDWR|O_NOCTTY|O_CLOEXEC,
/// unlocked) and its slave (O_RDWR|O_NOCTTY|O_CLOEXEC), with the slave's index.
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd, u32)> {
    // SAFETY: a constant path; the flags are plain.
    let m = cvt_int(unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: open just returned this descriptor, owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int we own.
    cvt_int(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    let index = pty_index(std::os::fd::AsFd::as_fd(&master))?;
    // SAFETY: TIOCGPTPEER takes the open flags as its argument and returns a new descriptor.
    let s = cvt_int(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the ioctl just returned this descriptor, owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    Ok((master, slave, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pty_pair_settings() {
        let (master, slave, index) = open_pty().unwrap();
        assert!(isatty(slave.as_fd()));
        assert!(std::path::Path::new(&format!("/dev/pts/{index}")).exists());
        let mut t = tcgetattr(slave.as_fd()).unwrap();
        t.lflag &= !libc::ECHO;
        t.cc[libc::VINTR] = 7;
        tcsetattr(slave.as_fd(), &t).unwrap();
        assert_eq!(tcgetattr(slave.as_fd()).unwrap(), t);
        let w = WinSize {
            rows: 33,
            cols: 101,
            xpixel: 0,
            ypixel: 0,
        };
        set_window_size(master.as_fd(), &w).unwrap();
        assert_eq!(window_size(slave.as_fd()).unwrap(), w);
    }
}
