//! An unprivileged user for the tests of one run, and cleanups at exit.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// A user created for this run of a test binary: `stasis-t-<pid>`, no home, no login shell,
/// its own group. Removed when the test binary exits (and, should it be killed first, by the
/// next run).
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

const USER_PREFIX: &str = "stasis-t-";

static USER: OnceLock<Result<TestUser, String>> = OnceLock::new();

/// The user of this run, created on first use (needs root: `useradd`). Panics when it cannot be
/// created.
pub fn test_user() -> &'static TestUser {
    match USER.get_or_init(create_user) {
        Ok(u) => u,
        Err(e) => panic!("cannot create the test user: {e}"),
    }
}

fn create_user() -> Result<TestUser, String> {
    let u = add_user(&format!("{USER_PREFIX}{}", std::process::id()))?;
    // Removed at exit, once every test has finished (and killed what it started).
    at_exit(remove_user);
    Ok(u)
}

/// useradd and userdel lock /etc/passwd: one at a time in this process.
static USERS_LOCK: Mutex<()> = Mutex::new(());

/// Creates user `name` (after removing the users of earlier runs that are gone), retrying for
/// a while when another process holds the lock of /etc/passwd.
fn add_user(name: &str) -> Result<TestUser, String> {
    let _lock = USERS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    static STALE: Once = Once::new();
    STALE.call_once(remove_stale_users);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("useradd")
            .args(["-M", "-N", "-s", "/usr/sbin/nologin", name])
            .output()
            .map_err(|e| format!("useradd: {e}"))?;
        if out.status.success() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .arg(flag)
            .arg(name)
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| format!("id {flag} {name}: {e}"))
    };
    let u = TestUser {
        uid: id("-u")?,
        gid: id("-g")?,
        name: name.to_string(),
    };
    if u.uid == 0 || u.gid == 0 {
        return Err(format!("{u:?} has root ids"));
    }
    Ok(u)
}

impl TestUser {
    /// A command that runs `exe` as this user (`setpriv`: real, effective and saved ids, its
    /// group, no supplementary groups).
    pub fn command(&self, exe: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(exe);
        c
    }
}

/// A user of one test's own, for tests that need more than [`test_user`] (two users, say):
/// `stasis-t-<pid>-<n>`, created by [`OwnUser::create`] (needs root), removed when dropped.
#[derive(Debug)]
pub struct OwnUser(TestUser);

impl OwnUser {
    /// Creates the user; panics when it cannot.
    pub fn create() -> OwnUser {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{USER_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        match add_user(&name) {
            Ok(u) => OwnUser(u),
            Err(e) => panic!("cannot create a test user: {e}"),
        }
    }
}

impl std::ops::Deref for OwnUser {
    type Target = TestUser;
    fn deref(&self) -> &TestUser {
        &self.0
    }
}

impl Drop for OwnUser {
    fn drop(&mut self) {
        let _lock = USERS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("userdel")
            .arg(&self.0.name)
            .output()
            .is_ok_and(|o| o.status.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Users of earlier runs whose test binary is gone (killed before its exit handler ran).
fn remove_stale_users() {
    let Ok(passwd) = fs::read_to_string("/etc/passwd") else {
        return;
    };
    for line in passwd.lines() {
        let name = line.split(':').next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(USER_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("userdel").arg(name).output();
        }
    }
}

fn remove_user() {
    if let Some(Ok(u)) = USER.get() {
        match Command::new("userdel").arg(&u.name).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: userdel {}: {}",
                u.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: userdel {}: {e}", u.name),
        }
    }
}

static AT_EXIT: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Runs `f` when the test binary exits normally (after every test has finished), in the order
/// of registration. For cleanups of a whole run: libtest has no hook for them.
pub fn at_exit(f: fn()) {
    static REGISTER: Once = Once::new();
    AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    REGISTER.call_once(|| {
        // SAFETY: registers a plain extern "C" function without arguments, which the C library
        // calls at exit. (atexit has no safe wrapper.)
        #[allow(unsafe_code)]
        let rc = unsafe { libc::atexit(run_at_exit) };
        if rc != 0 {
            eprintln!("warning: atexit failed: the cleanups of this run will not happen");
        }
    });
}

extern "C" fn run_at_exit() {
    let fs: Vec<fn()> = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for f in fs {
        f();
    }
}
