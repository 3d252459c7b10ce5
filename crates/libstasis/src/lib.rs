//! libstasis: the C interface of stasis (`include/stasis.h`), built as `libstasis.so` and
//! `libstasis.a`. A thin wrapper over `stasis_client`: it converts arguments, maps errors to the
//! `STASIS_E_*` codes and keeps each thread's last error message.

// This crate is the FFI boundary: it reads structs through pointers handed over by C callers,
// turns descriptor numbers into borrowed descriptors and calls C function pointers, none of which
// can be expressed without `unsafe`. All the logic lives in `stasis_client`, which has none.
#![allow(unsafe_code)]

use stasis_client::{code, DumpOptions, Error, Hooks, Outcome, RestoreOptions};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::BorrowedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `STASIS_DUMP_WITH_CHILDREN`: dump the caller's children too.
pub const STASIS_DUMP_WITH_CHILDREN: u32 = 1 << 0;
/// `STASIS_DUMP_KILL`: kill the caller after the dump.
pub const STASIS_DUMP_KILL: u32 = 1 << 1;
const KNOWN_DUMP_FLAGS: u32 = STASIS_DUMP_WITH_CHILDREN | STASIS_DUMP_KILL;

/// `struct stasis_dump_opts`. Only `flags` is read; fields appended later will be read only
/// when a flag says they are set, so older callers keep working.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct stasis_dump_opts {
    pub flags: u32,
}

/// `struct stasis_hooks`; every function pointer may be NULL.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct stasis_hooks {
    pub before_checkpoint: Option<unsafe extern "C" fn(user: *mut c_void) -> c_int>,
    pub after_dump: Option<unsafe extern "C" fn(user: *mut c_void)>,
    pub after_restore: Option<unsafe extern "C" fn(user: *mut c_void)>,
    pub user: *mut c_void,
}

thread_local! {
    /// The message of this thread's last failure, handed out by `stasis_last_error`.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// Records `e` as this thread's last error and returns its code.
fn fail(e: &Error) -> c_int {
    set_last_error(&e.to_string());
    e.code()
}

fn invalid(message: &str) -> c_int {
    fail(&Error::Invalid(message.to_string()))
}

/// Runs `f`, turning a panic (a bug in libstasis) into `STASIS_E_DAEMON` instead of unwinding
/// into C.
fn guarded(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        set_last_error("internal error in libstasis (panic)");
        code::DAEMON
    })
}

struct NoHooks;
impl Hooks for NoHooks {}

/// The C callbacks as [`Hooks`].
struct CHooks<'a>(&'a stasis_hooks);

impl Hooks for CHooks<'_> {
    fn before_checkpoint(&mut self) -> Result<(), String> {
        let Some(f) = self.0.before_checkpoint else {
            return Ok(());
        };
        // SAFETY: the caller of stasis_dump_self_hooks supplied this function and its `user`
        // argument for exactly this call, as documented in stasis.h.
        match unsafe { f(self.0.user) } {
            0 => Ok(()),
            r => Err(format!("before_checkpoint returned {r}")),
        }
    }

    fn after_dump(&mut self) {
        if let Some(f) = self.0.after_dump {
            // SAFETY: as for before_checkpoint.
            unsafe { f(self.0.user) }
        }
    }

    fn after_restore(&mut self) {
        if let Some(f) = self.0.after_restore {
            // SAFETY: as for before_checkpoint.
            unsafe { f(self.0.user) }
        }
    }
}

/// Turns the C descriptor argument into a borrowed descriptor, refusing negative numbers.
fn images_fd<'a>(fd: c_int) -> Result<BorrowedFd<'a>, c_int> {
    if fd < 0 {
        return Err(invalid(&format!("images directory descriptor {fd}")));
    }
    // SAFETY: stasis.h requires the descriptor to stay open for the duration of the call, and
    // it is only used within the call. A number that is not open merely makes the kernel answer
    // EBADF (reported as STASIS_E_INVALID); no memory is involved.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

fn dump(images_dir_fd: c_int, opts: Option<&stasis_dump_opts>, hooks: &mut dyn Hooks) -> c_int {
    let dir = match images_fd(images_dir_fd) {
        Ok(d) => d,
        Err(c) => return c,
    };
    // Only `flags`, present in every version of the struct, is read.
    let flags = opts.map_or(0, |o| o.flags);
    if flags & !KNOWN_DUMP_FLAGS != 0 {
        return invalid(&format!(
            "unknown dump flags {:#x}",
            flags & !KNOWN_DUMP_FLAGS
        ));
    }
    let options = DumpOptions {
        with_children: flags & STASIS_DUMP_WITH_CHILDREN != 0,
        kill: flags & STASIS_DUMP_KILL != 0,
        socket: None,
    };
    match stasis_client::dump_self_with_hooks(dir, &options, hooks) {
        Ok(Outcome::Dumped) => 0,
        Ok(Outcome::Restored) => 1,
        Err(e) => fail(&e),
    }
}

/// See stasis.h.
///
/// # Safety
/// `opts` is NULL or points to a readable `struct stasis_dump_opts`; `images_dir_fd` stays open
/// during the call.
#[no_mangle]
pub unsafe extern "C" fn stasis_dump_self(
    images_dir_fd: c_int,
    opts: *const stasis_dump_opts,
) -> c_int {
    guarded(|| {
        // SAFETY: the caller guarantees `opts` is NULL or valid for reads during the call.
        let opts = unsafe { opts.as_ref() };
        dump(images_dir_fd, opts, &mut NoHooks)
    })
}

/// See stasis.h.
///
/// # Safety
/// As [`stasis_dump_self`]; `hooks` is NULL or points to a readable `struct stasis_hooks` whose
/// non-NULL function pointers may be called with its `user` pointer.
#[no_mangle]
pub unsafe extern "C" fn stasis_dump_self_hooks(
    images_dir_fd: c_int,
    opts: *const stasis_dump_opts,
    hooks: *const stasis_hooks,
) -> c_int {
    guarded(|| {
        // SAFETY: the caller guarantees `opts` and `hooks` are NULL or valid for reads during
        // the call; both are only read.
        let (opts, hooks) = unsafe { (opts.as_ref(), hooks.as_ref()) };
        match hooks {
            None => dump(images_dir_fd, opts, &mut NoHooks),
            Some(h) => dump(images_dir_fd, opts, &mut CHooks(h)),
        }
    })
}

/// See stasis.h.
///
/// # Safety
/// `pid_out` is NULL or points to a writable `int`; `images_dir_fd` stays open during the call.
#[no_mangle]
pub unsafe extern "C" fn stasis_restore(
    images_dir_fd: c_int,
    detach: c_int,
    pid_out: *mut c_int,
) -> c_int {
    guarded(|| {
        let dir = match images_fd(images_dir_fd) {
            Ok(d) => d,
            Err(c) => return c,
        };
        let opts = RestoreOptions {
            detach: detach != 0,
            socket: None,
        };
        // SAFETY: the caller guarantees `pid_out` is NULL or valid for writes.
        unsafe { finish_restore(stasis_client::restore(dir, &opts), detach, pid_out) }
    })
}

/// See stasis.h.
///
/// # Safety
/// `pid_out` is NULL or points to a writable `int`; `images_dir_fd` and `terminal_fd` stay
/// open during the call.
#[no_mangle]
pub unsafe extern "C" fn stasis_restore_tty(
    images_dir_fd: c_int,
    terminal_fd: c_int,
    detach: c_int,
    pid_out: *mut c_int,
) -> c_int {
    guarded(|| {
        let dir = match images_fd(images_dir_fd) {
            Ok(d) => d,
            Err(c) => return c,
        };
        if terminal_fd < 0 {
            return invalid(&format!("terminal descriptor {terminal_fd}"));
        }
        // SAFETY: as in `images_fd`: stasis.h requires the descriptor to stay open for the
        // duration of the call, and it is only used within the call.
        let terminal = unsafe { BorrowedFd::borrow_raw(terminal_fd) };
        let opts = RestoreOptions {
            detach: detach != 0,
            socket: None,
        };
        let restored = stasis_client::restore_on_terminal(dir, terminal, &opts);
        // SAFETY: the caller guarantees `pid_out` is NULL or valid for writes.
        unsafe { finish_restore(restored, detach, pid_out) }
    })
}

/// What `stasis_restore` and `stasis_restore_tty` return for the daemon's answer `restored`:
/// the pid stored through `pid_out`, then 0 when detached, else the restored process's exit
/// status (or the error's code).
///
/// # Safety
/// `pid_out` is NULL or valid for writes of an `int`.
unsafe fn finish_restore(
    restored: Result<stasis_client::Restored, Error>,
    detach: c_int,
    pid_out: *mut c_int,
) -> c_int {
    let restored = match restored {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    // SAFETY: the caller guarantees `pid_out` is NULL or valid for writes.
    if let Some(out) = unsafe { pid_out.as_mut() } {
        *out = restored.pid;
    }
    if detach != 0 {
        return 0;
    }
    match restored.wait() {
        Ok(status) => status,
        Err(e) => fail(&e),
    }
}

/// Describes a system error number with glibc's static table.
#[cfg(target_env = "gnu")]
fn errno_text(errno: c_int) -> Option<&'static CStr> {
    extern "C" {
        /// glibc ≥ 2.32: a pointer to a static description, or NULL for an unknown number.
        fn strerrordesc_np(errnum: c_int) -> *const c_char;
    }
    // SAFETY: strerrordesc_np only reads its integer argument and is thread-safe.
    let p = unsafe { strerrordesc_np(errno) };
    if p.is_null() {
        None
    } else {
        // SAFETY: a non-NULL result points to a NUL-terminated string in glibc's read-only
        // data, valid for the life of the process.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

#[cfg(not(target_env = "gnu"))]
fn errno_text(_errno: c_int) -> Option<&'static CStr> {
    None
}

fn strerror(c: c_int) -> &'static CStr {
    match c {
        0 => c"success (dumped)",
        1 => c"restored from a checkpoint",
        code::VERSION => c"stasis client and daemon versions differ",
        code::CONNECT => c"cannot reach the stasis daemon",
        code::PROTOCOL => c"stasis protocol error",
        code::REFUSED => c"refused by the stasis daemon",
        code::UNSUPPORTED => c"the process uses something stasis cannot dump yet",
        code::DUMP => c"the dump failed",
        code::RESTORE => c"the restore failed",
        code::IMAGE => c"the images are corrupt or invalid",
        code::ENVIRONMENT => {
            c"the environment changed since the dump (pid taken, file gone or replaced)"
        }
        code::DAEMON => c"the stasis daemon failed or the connection was lost",
        code::BUSY => c"the stasis daemon is busy (too many requests at once): try again later",
        code::INVALID => c"invalid argument",
        -4095..=-1 => errno_text(-c).unwrap_or(c"unknown system error"),
        _ => c"unknown stasis error code",
    }
}

/// See stasis.h.
#[no_mangle]
pub extern "C" fn stasis_strerror(code: c_int) -> *const c_char {
    strerror(code).as_ptr()
}

/// See stasis.h. The pointer stays valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn stasis_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: stasis_last_error returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(stasis_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn strerror_is_never_null() {
        for c in (-5000..10).chain([i32::MIN, i32::MAX]) {
            let p = stasis_strerror(c);
            assert!(!p.is_null());
            // SAFETY: non-NULL, NUL-terminated static string.
            assert!(!unsafe { CStr::from_ptr(p) }.to_bytes().is_empty());
        }
        // SAFETY: as above.
        let enoent = unsafe { CStr::from_ptr(stasis_strerror(-2)) };
        assert_eq!(enoent.to_str().unwrap(), "No such file or directory");
        // SAFETY: as above.
        let busy = unsafe { CStr::from_ptr(stasis_strerror(code::BUSY)) };
        assert!(busy.to_str().unwrap().contains("busy"), "{busy:?}");
    }

    /// `stasis_dump_self` with Rust references.
    fn dump_self(fd: c_int, opts: Option<&stasis_dump_opts>) -> c_int {
        let opts = opts.map_or(std::ptr::null(), |o| o as *const stasis_dump_opts);
        // SAFETY: `opts` is NULL or borrowed from a live struct for the call.
        unsafe { stasis_dump_self(fd, opts) }
    }

    #[test]
    fn bad_arguments_are_invalid() {
        assert_eq!(last_error(), "");
        assert_eq!(dump_self(-1, None), code::INVALID);
        assert!(last_error().contains("-1"), "{}", last_error());

        let dir = std::fs::File::open("/").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        let opts = stasis_dump_opts { flags: 1 << 7 };
        assert_eq!(dump_self(fd, Some(&opts)), code::INVALID);
        assert!(last_error().contains("0x80"), "{}", last_error());

        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert_eq!(dump_self(fd, None), code::INVALID);
        // SAFETY: a NULL pid_out is allowed.
        let r = unsafe { stasis_restore(-5, 1, std::ptr::null_mut()) };
        assert_eq!(r, code::INVALID);
    }

    #[test]
    fn last_error_is_per_thread() {
        assert_eq!(dump_self(-1, None), code::INVALID);
        let other = std::thread::spawn(last_error).join().unwrap();
        assert_eq!(other, "");
        assert_ne!(last_error(), "");
    }

    unsafe extern "C" fn refuse(user: *mut c_void) -> c_int {
        // SAFETY: the test passes a pointer to a live u32 counter.
        unsafe { *(user as *mut u32) += 1 };
        -42
    }

    #[test]
    fn refusing_c_hook_aborts() {
        let mut calls = 0u32;
        let hooks = stasis_hooks {
            before_checkpoint: Some(refuse),
            after_dump: None,
            after_restore: None,
            user: &mut calls as *mut u32 as *mut c_void,
        };
        let dir = std::fs::File::open("/").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        // SAFETY: `hooks` and the counter it points to outlive the call.
        let r = unsafe { stasis_dump_self_hooks(fd, std::ptr::null(), &hooks) };
        assert_eq!(r, code::INVALID);
        assert_eq!(calls, 1);
        assert!(last_error().contains("-42"), "{}", last_error());
    }
}
