//! What the end-to-end test binaries of stasisd share (`mod common;` in each): the programs
//! under test, the directories of a run, the C programs linked with libstasis. The helpers
//! that are not about stasisd are in `stasis-test-infra`.
//!
//! Each binary uses a part of it only.
#![allow(dead_code)]

use stasis_client::protocol::{self, Message};
use stasis_test_infra::build::c_program;
use stasis_test_infra::process::append_log;
use stasis_test_infra::repo_root;
use stasis_test_infra::user::{at_exit, test_user};
use stasis_test_infra::WorkDir;
use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The stasisd under test.
pub fn stasisd_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stasisd"))
}

/// The `stasis` CLI next to stasisd (cargo builds it with the workspace, not for this crate).
pub fn stasis_cli() -> PathBuf {
    let cli = stasisd_exe().with_file_name("stasis");
    assert!(
        cli.is_file(),
        "{} is missing: these tests need the `stasis` CLI next to stasisd; build the whole \
         workspace first (`cargo build --workspace`, or run `cargo test --workspace`)",
        cli.display()
    );
    cli
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

static RUN_ROOT: OnceLock<PathBuf> = OnceLock::new();
static SOCKET_DIR: OnceLock<PathBuf> = OnceLock::new();

/// `target/tmp/<name>-<pid>`: work directories of this run (world-traversable). The first
/// call names it. Removed at exit when only the programs (`bin/`) are left in it, that is when
/// every test passed (failed tests keep theirs, and then the programs stay too, for reruns by
/// hand).
pub fn run_root(name: &str) -> &'static Path {
    RUN_ROOT.get_or_init(|| {
        let d =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o755);
        at_exit(cleanup_at_exit);
        d
    })
}

/// `/tmp/<name>.<pid>`: the daemons' sockets (unix socket paths must stay short). The first
/// call names it; removed at exit.
pub fn socket_dir(name: &str) -> &'static Path {
    SOCKET_DIR.get_or_init(|| {
        let d = PathBuf::from(format!("/tmp/{name}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o755);
        at_exit(cleanup_at_exit);
        d
    })
}

/// A new socket path in [`socket_dir`].
pub fn new_socket_path(socket_dir_name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    socket_dir(socket_dir_name).join(format!("{}.sock", N.fetch_add(1, Ordering::Relaxed)))
}

/// At exit: the sockets' directory, and the run's directory if every test passed.
fn cleanup_at_exit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Some(d) = SOCKET_DIR.get() {
            let _ = fs::remove_dir_all(d);
        }
        if let Some(root) = RUN_ROOT.get() {
            let only_bin = fs::read_dir(root)
                .map(|d| d.flatten().all(|e| e.file_name() == "bin"))
                .unwrap_or(false);
            if only_bin {
                let _ = fs::remove_dir_all(root);
            }
        }
    });
}

/// Compiles `src` (relative to the repository) into `bin/<name>` of the [`run_root`] named
/// `run`, linked with the release libstasis when `with_libstasis`.
pub fn c_program_in_run(
    run: &str,
    src: &str,
    name: &str,
    with_libstasis: bool,
) -> Result<PathBuf, String> {
    let bin = run_root(run).join("bin");
    fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    chmod(&bin, 0o755);
    c_program(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &repo_root().join(src),
        &bin.join(name),
        with_libstasis,
    )
}

/// The value in `cell`, made by `build` on first use; panics (in every test that asks) when
/// making it failed.
pub fn built<T>(
    cell: &'static OnceLock<Result<T, String>>,
    build: impl FnOnce() -> Result<T, String>,
) -> &'static T {
    match cell.get_or_init(build) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// The C programs of `tests/selfdump/`.
pub struct Programs {
    /// `selfdumper.c`, linked with libstasis.
    pub selfdumper: PathBuf,
    pub ticker: PathBuf,
}

/// The C programs of `tests/selfdump/`, built once per run into `bin/` of the [`run_root`]
/// named `run`.
pub fn selfdump_programs(run: &str) -> &'static Programs {
    static P: OnceLock<Result<Programs, String>> = OnceLock::new();
    built(&P, || {
        let gcc = |name: &str, with_lib: bool| -> Result<PathBuf, String> {
            c_program_in_run(run, &format!("tests/selfdump/{name}.c"), name, with_lib)
        };
        Ok(Programs {
            selfdumper: gcc("selfdumper", true)?,
            ticker: gcc("ticker", false)?,
        })
    })
}

/// `name` in the [`run_root`] named `run`: a new work directory owned by the test user, mode
/// 0755.
pub fn user_work_dir(run: &str, name: &str) -> WorkDir {
    let dir = WorkDir::new(run_root(run).join(name));
    let u = test_user();
    std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid)).unwrap();
    chmod(&dir, 0o755);
    dir
}

/// Opens `path` (created mode 0644) for appending, owned by `uid`:`gid`: a log that restored
/// copies reopen as the user.
pub fn user_log(path: &Path, uid: u32, gid: u32) -> File {
    let f = append_log(path).unwrap();
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).unwrap();
    f
}

/// Sends the Hello of this protocol version on `conn`.
pub fn send_hello(conn: &OwnedFd) {
    protocol::send(
        conn.as_fd(),
        &Message::Hello {
            version: protocol::VERSION.into(),
        },
        None,
    )
    .unwrap();
}

/// A `stasisd` started by a test: `--socket <new path> --mode 0666` and the test's arguments,
/// its output in a log. Killed (with its workers) when dropped unless [`Stasisd::stop`]ped.
pub struct Stasisd {
    pub child: std::process::Child,
    pub pid: i32,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Stasisd {
    /// Starts it with its socket in [`socket_dir`] `sockets` and its log `log`, and waits until
    /// it listens.
    pub fn start(sockets: &str, log: &Path, args: &[&str]) -> Stasisd {
        Stasisd::start_with_env(sockets, log, args, &[])
    }

    /// [`Stasisd::start`] with these variables set in its environment.
    pub fn start_with_env(
        sockets: &str,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Stasisd {
        use std::process::{Command, Stdio};
        let socket = new_socket_path(sockets);
        let f = File::create(log).unwrap();
        let mut cmd = Command::new(stasisd_exe());
        cmd.arg("--socket")
            .arg(&socket)
            .args(["--mode", "0666"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .envs(env.iter().copied());
        stasis_sys::process::close_inherited_fds_on_exec(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut d = Stasisd {
            pid: child.id() as i32,
            child,
            socket,
            log: log.to_path_buf(),
        };
        let ok = stasis_test_infra::wait::wait_until(std::time::Duration::from_secs(10), || {
            d.log_text().contains(": listening (") || !matches!(d.child.try_wait(), Ok(None))
        });
        assert!(
            ok && d.log_text().contains(": listening ("),
            "{}",
            d.log_text()
        );
        d
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its socket's path, as a string (for the clients' command lines).
    pub fn socket_str(&self) -> &str {
        path_str(&self.socket)
    }

    /// Waits (30 s at most) until it has `n` workers.
    pub fn wait_workers(&self, n: usize) {
        assert!(
            stasis_test_infra::wait::wait_until(std::time::Duration::from_secs(30), || self
                .workers()
                .len()
                == n),
            "stasisd has workers {:?}, expected {n}\n{}",
            self.workers(),
            self.log_text()
        );
    }

    /// Its worker processes (its children).
    pub fn workers(&self) -> Vec<i32> {
        stasis_test_infra::procfs::children(self.pid)
    }

    /// Its resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        stasis_test_infra::procfs::status_field(self.pid, "VmRSS")
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS for stasisd {}", self.pid))
    }

    /// How many descriptors it has open.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    /// Stops it with SIGTERM and checks that it exits with status 0.
    pub fn stop(mut self) {
        assert!(stasis_sys::process::kill(self.pid, libc::SIGTERM).is_ok());
        let mut st = None;
        stasis_test_infra::wait::wait_until(std::time::Duration::from_secs(30), || {
            st = self.child.try_wait().unwrap();
            st.is_some()
        });
        assert_eq!(
            st.and_then(|s| s.code()),
            Some(0),
            "stasisd: {st:?}\n{}",
            self.log_text()
        );
    }
}

impl Drop for Stasisd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let workers = self.workers();
            let _ = self.child.kill();
            let _ = self.child.wait();
            for w in workers {
                let _ = stasis_sys::process::kill(w, libc::SIGKILL);
            }
        }
    }
}
