//! A user's `stasis restore` of a shell job in its shell's terminal, through stasisd.
//!
//! stasisd's restorer leads a session of its own, so the restored job cannot join the
//! session of the user's shell, nor take that session's terminal (the kernel gives a terminal
//! to one session at a time). So, as `sudo`'s `use_pty`, `ssh` and `machinectl shell` do, the
//! job gets a terminal of its own: a new pseudo-terminal made here (as the user), whose slave
//! is passed to stasisd as the job's terminal (the job's session gets it as its controlling
//! terminal, in the foreground, with the dumped settings), and this command relays between
//! the user's terminal (in raw mode meanwhile: the job's own terminal does the line editing,
//! echo and signal keys, with the job's settings) and the master, as a shell's job would run:
//!
//! * what is typed goes to the job, what it writes comes back; Ctrl-C, Ctrl-Z, ... reach it
//!   as keys, so its terminal signals it;
//! * the user's window size is copied onto the job's terminal (at the start and whenever it
//!   changes: the job gets SIGWINCH);
//! * when the job stops (Ctrl-Z), this command gives the user's terminal its settings back
//!   and stops itself (SIGSTOP), so the shell shows a stopped job; `fg` continues it, and it
//!   continues the job (SIGCONT to its terminal's foreground group). The job's group is
//!   orphaned (its session leader's parent, stasisd's worker, is outside its session), so the
//!   kernel discards the SIGTSTP of Ctrl-Z where it would stop the job: this command then
//!   stops the group with SIGSTOP, as its terminal would have (a program that handles SIGTSTP
//!   gets it as usual);
//! * when the job ends (stasisd reports its status), its last output is copied, the user's
//!   terminal gets its settings back and the status is returned.

use stasis_sys::{process, tty};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// How often the window size and the job's state are looked at.
const TICK: Duration = Duration::from_millis(50);

/// The user's terminal, back to its settings when dropped (also on errors).
struct RawMode<'a> {
    terminal: BorrowedFd<'a>,
    saved: tty::Termios,
}

impl<'a> RawMode<'a> {
    fn enter(terminal: BorrowedFd<'a>) -> std::io::Result<RawMode<'a>> {
        let saved = tty::tcgetattr(terminal)?;
        let r = RawMode { terminal, saved };
        r.raw()?;
        Ok(r)
    }

    fn raw(&self) -> std::io::Result<()> {
        let mut t = self.saved;
        t.iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        t.oflag &= !libc::OPOST;
        t.lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        t.cflag &= !(libc::CSIZE | libc::PARENB);
        t.cflag |= libc::CS8;
        t.cc[libc::VMIN] = 1;
        t.cc[libc::VTIME] = 0;
        tty::tcsetattr(self.terminal, &t)
    }

    fn restore(&self) {
        let _ = tty::tcsetattr(self.terminal, &self.saved);
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Restores the images in `dir` through stasisd on a new terminal relayed to `terminal` (our
/// stdin, the controlling terminal of our shell's session), and waits for the job as a shell
/// would. Returns its exit status.
pub fn restore_job(
    dir: BorrowedFd<'_>,
    terminal: BorrowedFd<'_>,
    opts: &stasis_client::RestoreOptions,
) -> Result<i32, Box<dyn std::error::Error>> {
    let (master, slave, _) = tty::open_pty().map_err(|e| format!("a terminal for the job: {e}"))?;
    let mut size = tty::window_size(terminal).ok();
    if let Some(s) = &size {
        let _ = tty::set_window_size(master.as_fd(), s);
    }
    if let Ok(t) = tty::tcgetattr(terminal) {
        let _ = tty::tcsetattr(slave.as_fd(), &t);
    }
    let restored = stasis_client::restore_on_terminal(dir, slave.as_fd(), opts)?;
    // The job holds its terminal now: once it closes it, reading the master ends.
    drop(slave);
    let raw = RawMode::enter(terminal).map_err(|e| format!("raw mode of the terminal: {e}"))?;
    let mut master = File::from(master);
    let mut input = File::from(dup(terminal)?);
    let mut output = File::from(dup(std::io::stdout().as_fd())?);
    let conn = restored.connection.as_fd();
    let mut master_open = true;
    let mut buf = [0u8; 4096];
    loop {
        // stdin, stasisd's connection, and the job's terminal while it is open.
        let mut watch = vec![input.as_fd(), conn];
        if master_open {
            watch.push(master.as_fd());
        }
        let ready = process::poll_readable(&watch, TICK.as_millis() as i32)
            .map_err(|e| format!("poll: {e}"))?;
        if ready[0] {
            match input.read(&mut buf) {
                Ok(k) if k > 0 => {
                    master.write_all(&buf[..k])?;
                    if typed_suspend(master.as_fd(), &buf[..k]) {
                        suspend_orphaned_job(master.as_fd());
                    }
                }
                _ => {}
            }
        }
        if master_open && ready[2] {
            match master.read(&mut buf) {
                Ok(k) if k > 0 => output.write_all(&buf[..k])?,
                // EIO: every description of the job's terminal is closed.
                _ => master_open = false,
            }
        }
        if ready[1] {
            // stasisd reports the job's end (or hangs up).
            break;
        }
        // The window of the user's terminal changed: so does the job's.
        let now = tty::window_size(terminal).ok();
        if now != size {
            if let Some(s) = &now {
                let _ = tty::set_window_size(master.as_fd(), s);
            }
            size = now;
        }
        // The job stopped (Ctrl-Z, or reading while in the background): so do we.
        if let Ok(group) = tty::tcgetpgrp(master.as_fd()) {
            if stopped(group) {
                raw.restore();
                let _ = process::kill(process::getpid(), libc::SIGSTOP);
                // Continued (`fg`): the job too.
                raw.raw()?;
                let _ = process::kill(-group, libc::SIGCONT);
            }
        }
    }
    // The job ended: its last output, then its status.
    while master_open {
        match process::poll_readable(&[master.as_fd()], 0) {
            Ok(r) if r[0] => match master.read(&mut buf) {
                Ok(k) if k > 0 => output.write_all(&buf[..k])?,
                _ => master_open = false,
            },
            _ => master_open = false,
        }
    }
    drop(raw);
    Ok(restored.wait()?)
}

/// Whether `typed` holds the suspend key (Ctrl-Z) of the job's terminal, whose signal keys
/// are on.
fn typed_suspend(master: BorrowedFd<'_>, typed: &[u8]) -> bool {
    match tty::tcgetattr(master) {
        Ok(t) => {
            let key = t.cc[libc::VSUSP];
            t.lflag & libc::ISIG != 0 && key != 0 && typed.contains(&key)
        }
        Err(_) => false,
    }
}

/// The job's terminal sent SIGTSTP to its foreground group; but the job's session leader's
/// parent is stasisd's worker, outside the session, so the group is orphaned and the kernel
/// discards SIGTSTP where its action is the default (stop). As its shell would have seen it
/// stop, the group is stopped with SIGSTOP then (a program that handles SIGTSTP, such as an
/// editor, got it and stops itself).
fn suspend_orphaned_job(master: BorrowedFd<'_>) {
    let Ok(group) = tty::tcgetpgrp(master) else {
        return;
    };
    let status = std::fs::read_to_string(format!("/proc/{group}/status")).unwrap_or_default();
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = 1u64 << (libc::SIGTSTP - 1);
    if (mask("SigCgt:") | mask("SigIgn:")) & bit == 0 {
        let _ = process::kill(-group, libc::SIGSTOP);
    }
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    fd.try_clone_to_owned().map_err(|e| format!("dup: {e}"))
}

/// Whether the leader of process group `group` is stopped (state T).
fn stopped(group: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{group}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "T"))
        })
        .unwrap_or(false)
}
