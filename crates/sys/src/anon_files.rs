//! Files that live on no filesystem path: eventfd, timerfd, signalfd, epoll, memfd, inotify and
//! fanotify,
//! plus the few calls around them (seals, timer ticks, epoll registrations, clocks, kcmp of
//! epoll targets, inotify watches, fanotify marks, file handles and mount ids) that the engine needs to dump
//! and recreate them.

use crate::{cvt, cvt_int, Pid};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `TFD_IOC_SET_TICKS` (`_IOW('T', 0, u64)`): sets the expiration counter of a timerfd. Only
/// present with CONFIG_CHECKPOINT_RESTORE.
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
/// `KCMP_EPOLL_TFD` from linux/kcmp.h.
const KCMP_EPOLL_TFD: libc::c_long = 7;
/// memfd_create: the file may be executed (linux/memfd.h, 6.3+).
pub const MFD_EXEC: u32 = 0x0010;
/// memfd_create: the file is not executable and sealed so (implies MFD_ALLOW_SEALING).
pub const MFD_NOEXEC_SEAL: u32 = 0x0008;

fn timespec(ns: u64) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i64,
    }
}

/// eventfd2(0, flags) (`EFD_SEMAPHORE`, `EFD_NONBLOCK`, `EFD_CLOEXEC`).
pub fn eventfd(flags: i32) -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::from_bits_retain(flags as u32),
    )?)
}

/// Adds `value` to an eventfd's counter (write(2) of one u64).
pub fn eventfd_add(fd: BorrowedFd<'_>, value: u64) -> io::Result<()> {
    let n = rustix::io::write(fd, &value.to_ne_bytes())?;
    if n != 8 {
        return Err(io::Error::from(io::ErrorKind::WriteZero));
    }
    Ok(())
}

/// timerfd_create(clockid, flags) (`TFD_NONBLOCK`, `TFD_CLOEXEC`). A clock timerfds do not
/// support gives `EINVAL`, as from the kernel.
pub fn timerfd_create(clockid: i32, flags: i32) -> io::Result<OwnedFd> {
    use rustix::time::TimerfdClockId as C;
    let clock = match clockid {
        libc::CLOCK_REALTIME => C::Realtime,
        libc::CLOCK_MONOTONIC => C::Monotonic,
        libc::CLOCK_BOOTTIME => C::Boottime,
        libc::CLOCK_REALTIME_ALARM => C::RealtimeAlarm,
        libc::CLOCK_BOOTTIME_ALARM => C::BoottimeAlarm,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    Ok(rustix::time::timerfd_create(
        clock,
        rustix::time::TimerfdFlags::from_bits_retain(flags as u32),
    )?)
}

/// timerfd_settime(fd, flags, {interval, value}) with both times in nanoseconds.
pub fn timerfd_settime(
    fd: BorrowedFd<'_>,
    flags: i32,
    interval_ns: u64,
    value_ns: u64,
) -> io::Result<()> {
    let its = rustix::time::Itimerspec {
        it_interval: timespec(interval_ns),
        it_value: timespec(value_ns),
    };
    rustix::time::timerfd_settime(
        fd,
        rustix::time::TimerfdTimerFlags::from_bits_retain(flags as u32),
        &its,
    )?;
    Ok(())
}

/// Sets the number of expirations a timerfd reports on its next read (TFD_IOC_SET_TICKS).
/// `ticks` must not be 0 (the kernel refuses it).
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> io::Result<()> {
    // rustix has no wrapper for this ioctl.
    // SAFETY: the ioctl reads one u64 from `ticks`, which lives across the call.
    cvt_int(unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) })
        .map(drop)
}

/// signalfd4(-1, mask, flags): `mask` has bit `n - 1` set for signal `n`, as the kernel's
/// sigset and /proc show it.
pub fn signalfd(mask: u64, flags: i32) -> io::Result<OwnedFd> {
    // rustix has no signalfd.
    // SAFETY: the kernel reads 8 bytes (its sigset size) from `mask`, which outlives the call.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            std::mem::size_of::<u64>(),
            flags,
        )
    })?;
    // SAFETY: `fd` was just created by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// epoll_create1(flags).
pub fn epoll_create(flags: i32) -> io::Result<OwnedFd> {
    Ok(rustix::event::epoll::create(
        rustix::event::epoll::CreateFlags::from_bits_retain(flags as u32),
    )?)
}

/// EPOLL_CTL_ADD of `fd` to the epoll `epfd`, with `events` and `data` exactly as given.
pub fn epoll_add(
    epfd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    events: u32,
    data: u64,
) -> io::Result<()> {
    use rustix::event::epoll::{self, EventData, EventFlags};
    Ok(epoll::add(
        epfd,
        fd,
        EventData::new_u64(data),
        EventFlags::from_bits_retain(events),
    )?)
}

/// [`epoll_add`] on descriptor numbers: for a restore child whose fd table was just laid out.
///
/// # Safety
///
/// Both numbers must stay open during the call. [`crate::process::ForkedChild::epoll_add_raw`]
/// is the safe form for a forked child.
pub unsafe fn epoll_add_raw(epfd: RawFd, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    // SAFETY: the caller guarantees that both numbers stay open during the call.
    let (epfd, fd) = unsafe { (crate::borrow_number(epfd)?, crate::borrow_number(fd)?) };
    epoll_add(epfd, fd, events, data)
}

/// kcmp(KCMP_EPOLL_TFD): whether the file behind fd `fd` of `pid` is the one registered as
/// target `tfd` (the `toff`-th registration with that number) of epoll fd `epfd` of `pid`.
pub fn epoll_target_is(
    pid: Pid,
    fd: RawFd,
    epfd: RawFd,
    tfd: RawFd,
    toff: u32,
) -> io::Result<bool> {
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: KCMP_EPOLL_TFD reads one kcmp_epoll_slot from `slot`, which outlives the call.
    let r = cvt(unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            fd,
            &slot as *const Slot,
        )
    })?;
    Ok(r == 0)
}

/// memfd_create(name, flags) (`MFD_CLOEXEC`, `MFD_ALLOW_SEALING`, [`MFD_EXEC`], ...).
pub fn memfd_create_with(name: &str, flags: u32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        name,
        rustix::fs::MemfdFlags::from_bits_retain(flags),
    )?)
}

/// F_GET_SEALS. `EINVAL` means the file cannot be sealed at all (not shmem/hugetlbfs).
pub fn get_seals(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::fs::fcntl_get_seals(fd)?.bits())
}

/// F_ADD_SEALS.
pub fn add_seals(fd: BorrowedFd<'_>, seals: u32) -> io::Result<()> {
    Ok(rustix::fs::fcntl_add_seals(
        fd,
        rustix::fs::SealFlags::from_bits_retain(seals),
    )?)
}

/// clock_gettime(clockid) in nanoseconds. A clock id rustix does not know (CPU-time clocks of
/// other processes, say) gives `EINVAL`.
pub fn clock_ns(clockid: i32) -> io::Result<u64> {
    use rustix::time::{ClockId, DynamicClockId as D};
    let id = match clockid {
        libc::CLOCK_BOOTTIME => D::Boottime,
        libc::CLOCK_REALTIME_ALARM => D::RealtimeAlarm,
        libc::CLOCK_BOOTTIME_ALARM => D::BoottimeAlarm,
        libc::CLOCK_TAI => D::Tai,
        other => D::Known(
            ClockId::try_from(other).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        ),
    };
    let ts = rustix::time::clock_gettime_dynamic(id)?;
    Ok((ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64))
}

/// inotify_init1(flags) (`IN_NONBLOCK`, `IN_CLOEXEC`).
pub fn inotify_init(flags: i32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::inotify::init(
        rustix::fs::inotify::CreateFlags::from_bits_retain(flags as u32),
    )?)
}

/// inotify_add_watch(fd, path, mask): the watch descriptor of the (new or updated) watch.
pub fn inotify_add_watch(fd: BorrowedFd<'_>, path: &std::path::Path, mask: u32) -> io::Result<i32> {
    Ok(rustix::fs::inotify::add_watch(
        fd,
        path,
        rustix::fs::inotify::WatchFlags::from_bits_retain(mask),
    )?)
}

/// inotify_rm_watch(fd, wd). The kernel queues an IN_IGNORED event for `wd`.
pub fn inotify_rm_watch(fd: BorrowedFd<'_>, wd: i32) -> io::Result<()> {
    Ok(rustix::fs::inotify::remove_watch(fd, wd)?)
}

/// Reads and drops every event queued on the inotify instance `fd`, blocking or not (FIONREAD
/// tells how much there is).
pub fn inotify_discard_events(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if rustix::io::ioctl_fionread(fd)? == 0 {
            return Ok(());
        }
        // Events are at most 16 + NAME_MAX + 1 bytes: with something queued, this read
        // returns at once with whole events.
        match rustix::io::read(fd, &mut buf) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// [`inotify_discard_events`] on a descriptor number: for a restore child whose fd table was
/// just laid out.
///
/// # Safety
///
/// `fd` must stay open during the call, and nothing else in the process may rely on the events
/// queued on it. [`crate::process::ForkedChild::inotify_discard_events_raw`] is the safe form
/// for a forked child.
pub unsafe fn inotify_discard_events_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller guarantees that `fd` stays open during the call.
    inotify_discard_events(unsafe { crate::borrow_number(fd)? })
}

/// Longest file handle the kernel hands out or accepts (MAX_HANDLE_SZ).
pub const MAX_HANDLE_SZ: usize = 128;

/// open_by_handle_at(mount, {handle_type, handle}, flags): opens the object a file handle
/// names, on the filesystem of `mount` (which must not be an O_PATH descriptor: the kernel
/// answers EBADF). Needs CAP_DAC_READ_SEARCH (or, since Linux 6.10, privilege over the mount).
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
    flags: i32,
) -> io::Result<OwnedFd> {
    if handle.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }, in u32 words
    // so that the header is aligned.
    let mut buf = vec![0u32; 2 + MAX_HANDLE_SZ / 4];
    buf[0] = handle.len() as u32;
    buf[1] = handle_type as u32;
    for (i, b) in handle.iter().enumerate() {
        let word = &mut buf[2 + i / 4];
        *word |= u32::from(*b) << (8 * (i % 4));
    }
    // The bytes of the words above are in memory order only on little-endian machines.
    #[cfg(not(target_endian = "little"))]
    compile_error!("open_by_handle assumes a little-endian machine");
    // SAFETY: `buf` holds a complete file_handle of `handle.len()` bytes and outlives the call;
    // the kernel only reads it.
    let fd = cvt_int(unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::file_handle>(),
            flags,
        )
    })?;
    // SAFETY: `fd` was just created by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The id of the mount `fd` is on (statx STATX_MNT_ID), as the first field of
/// /proc/PID/mountinfo shows it.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    use rustix::fs::{AtFlags, StatxFlags};
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    if st.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    Ok(st.stx_mnt_id)
}

/// fanotify_init(flags, event_f_flags): a new fanotify group (close-on-exec is the caller's
/// FAN_CLOEXEC).
pub fn fanotify_init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: no pointers; on success the kernel installed a new descriptor nobody else owns.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_fanotify_init,
            flags as libc::c_long,
            event_f_flags as libc::c_long,
        )
    })?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Makes `fd` close-on-exec (FD_CLOEXEC).
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?)
}

/// fanotify_mark(fd, flags, mask, AT_FDCWD, path).
pub fn fanotify_mark(
    fd: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    path: &std::path::Path,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_fanotify_mark,
            fd.as_raw_fd(),
            flags as libc::c_long,
            mask,
            libc::AT_FDCWD as libc::c_long,
            c.as_ptr(),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn eventfd_counter_and_timerfd_ticks() {
        let e = eventfd(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK).unwrap();
        eventfd_add(e.as_fd(), 41).unwrap();
        eventfd_add(e.as_fd(), 1).unwrap();
        let mut b = [0u8; 8];
        // SAFETY: test: reads 8 bytes into `b`.
        let n = unsafe { libc::read(e.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(b), 42);

        let t = timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
        )
        .unwrap();
        timerfd_settime(t.as_fd(), 0, 0, 3_600_000_000_000).unwrap();
        timerfd_set_ticks(t.as_fd(), 7).unwrap();
        // SAFETY: test: reads 8 bytes into `b`.
        let n = unsafe { libc::read(t.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(b), 7);
    }

    #[test]
    fn memfd_seals() {
        let m =
            memfd_create_with("stasis-test", libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING).unwrap();
        assert_eq!(get_seals(m.as_fd()).unwrap(), 0);
        add_seals(m.as_fd(), libc::F_SEAL_GROW as u32).unwrap();
        assert_eq!(get_seals(m.as_fd()).unwrap(), libc::F_SEAL_GROW as u32);
        assert_eq!(
            crate::process::fs_type(m.as_fd()).unwrap(),
            libc::TMPFS_MAGIC
        );
        let plain = memfd_create_with("stasis-test", libc::MFD_CLOEXEC).unwrap();
        assert_eq!(get_seals(plain.as_fd()).unwrap(), libc::F_SEAL_SEAL as u32);
    }

    #[test]
    fn signalfd_and_epoll() {
        let s = signalfd(1 << (libc::SIGUSR1 - 1), libc::SFD_CLOEXEC).unwrap();
        let ep = epoll_create(libc::EPOLL_CLOEXEC).unwrap();
        epoll_add(ep.as_fd(), s.as_fd(), libc::EPOLLIN as u32, 5).unwrap();
        let me = crate::process::getpid();
        assert!(epoll_target_is(me, s.as_raw_fd(), ep.as_raw_fd(), s.as_raw_fd(), 0).unwrap());
        assert!(!epoll_target_is(me, ep.as_raw_fd(), ep.as_raw_fd(), s.as_raw_fd(), 0).unwrap());
        assert!(clock_ns(libc::CLOCK_MONOTONIC).unwrap() > 0);
        assert!(clock_ns(libc::CLOCK_BOOTTIME).unwrap() > 0);
        assert!(clock_ns(libc::CLOCK_REALTIME_COARSE).unwrap() > 0);
        assert_eq!(clock_ns(-7).unwrap_err().raw_os_error(), Some(libc::EINVAL));
        assert_eq!(
            timerfd_create(libc::CLOCK_PROCESS_CPUTIME_ID, libc::TFD_CLOEXEC)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
    }

    #[test]
    fn inotify_watches_and_file_handles() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("stasis-sys-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ino = inotify_init(libc::IN_CLOEXEC | libc::IN_NONBLOCK).unwrap();
        let a = inotify_add_watch(ino.as_fd(), &dir, libc::IN_CREATE).unwrap();
        let root =
            inotify_add_watch(ino.as_fd(), std::path::Path::new("/"), libc::IN_OPEN).unwrap();
        assert_eq!((a, root), (1, 2));
        inotify_rm_watch(ino.as_fd(), root).unwrap();
        // Watch descriptors are allocated cyclically: a removed one is not handed out again.
        let again =
            inotify_add_watch(ino.as_fd(), std::path::Path::new("/"), libc::IN_OPEN).unwrap();
        assert_eq!(again, 3);
        assert_eq!(
            inotify_add_watch(ino.as_fd(), &dir, libc::IN_CREATE | libc::IN_MASK_CREATE)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EEXIST)
        );

        // The handle fdinfo shows for the first watch opens the directory again.
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ino.as_raw_fd())).unwrap();
        let line = info
            .lines()
            .find(|l| l.starts_with("inotify wd:1 "))
            .unwrap();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap()
                .to_string()
        };
        let htype = i32::from_str_radix(&field("fhandle-type:"), 16).unwrap();
        let hex = field("f_handle:");
        let handle: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        // Any descriptor on the mount will do as the mount descriptor, but not an O_PATH one.
        let mount = std::fs::File::open(&dir).unwrap();
        assert!(mount_id(mount.as_fd()).unwrap() > 0);
        if crate::process::geteuid() == 0 {
            use std::os::unix::fs::MetadataExt;
            let f = open_by_handle(
                mount.as_fd(),
                htype,
                &handle,
                libc::O_PATH | libc::O_CLOEXEC,
            )
            .unwrap();
            let got = std::fs::File::from(f).metadata().unwrap();
            let want = std::fs::metadata(&dir).unwrap();
            assert_eq!((got.dev(), got.ino()), (want.dev(), want.ino()));
            let o_path = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(&dir)
                .unwrap();
            let err = open_by_handle(o_path.as_fd(), htype, &handle, libc::O_PATH).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        }
        assert!(open_by_handle(mount.as_fd(), htype, &[0; 129], libc::O_PATH).is_err());
        std::fs::remove_dir(&dir).unwrap();
    }
}
