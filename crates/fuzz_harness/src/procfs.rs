//! Targets of the /proc parsers of the engine. The dumper reads these files from the kernel,
//! but a parser must still never panic or loop on what it did not expect (another kernel
//! version, a name with spaces or newlines in it).

use stasis_engine::files::{
    epoll, eventfd, fanotify, inotify, locks, nsfile, pidfd, signalfd, timerfd,
};
use stasis_engine::procfs;
use std::borrow::Cow;
use std::path::Path;

/// The text the dumper would read (/proc files are read with `read_to_string`: invalid UTF-8
/// is an error before parsing; here it is replaced, so that every input reaches the parser).
fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn path() -> &'static Path {
    Path::new("/proc/1/x")
}

/// `proc_status`: /proc/PID/status.
pub fn status(data: &[u8]) {
    let _ = procfs::parse_status(&text(data), path());
}

/// `proc_stat`: /proc/PID/stat.
pub fn stat(data: &[u8]) {
    let _ = procfs::parse_stat(&text(data), path());
}

/// `proc_maps`: /proc/PID/smaps or maps; the VmFlags of what parses are turned into advice.
pub fn maps(data: &[u8]) {
    if let Ok(maps) = procfs::parse_smaps(&text(data), path()) {
        for m in &maps {
            let _ = stasis_engine::pages::advice::from_vm_flags(&m.vm_flags);
        }
    }
}

/// `fdinfo`: `[which][text]`: /proc/PID/fdinfo/N of the kind `which % 9` picks (the common
/// fields, epoll, inotify, fanotify, pidfd, locks, timerfd, signalfd, eventfd).
pub fn fdinfo(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let t = text(rest);
    match which % 9 {
        0 => drop(procfs::parse_fdinfo(&t, path())),
        1 => drop(epoll::parse_fdinfo(&t)),
        2 => drop(inotify::parse_fdinfo(&t)),
        3 => drop(fanotify::parse_fdinfo(&t)),
        4 => drop(pidfd::parse_fdinfo(&t)),
        5 => drop(locks::parse_fdinfo(&t)),
        6 => drop(timerfd::parse_fdinfo(&t)),
        7 => drop(signalfd::parse_fdinfo(&t)),
        _ => drop(eventfd::parse_fdinfo(&t)),
    }
}

/// `mountinfo`: /proc/PID/mountinfo.
pub fn mountinfo(data: &[u8]) {
    let _ = inotify::parse_mountinfo(&text(data));
}

/// `proc_misc`: `[which][bytes]`: `which % 6` picks /proc/locks, one of its lines,
/// /proc/PID/timers, /proc/PID/auxv (bytes), a namespace link (`net:[4026531840]`), or a
/// file of one number.
pub fn misc(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let t = text(rest);
    match which % 6 {
        0 => drop(locks::parse_proc_locks(&t)),
        1 => drop(locks::parse_line(&t)),
        2 => drop(stasis_engine::task::posix_timers::parse_timers(&t)),
        3 => drop(procfs::parse_auxv(rest)),
        4 => drop(nsfile::parse_link(&t)),
        _ => drop(procfs::parse_number::<i64>(&t, path())),
    }
}
