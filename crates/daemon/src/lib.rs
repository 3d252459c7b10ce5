//! stasisd: the privileged daemon that lets unprivileged processes checkpoint themselves.
//!
//! It listens on a unix SOCK_SEQPACKET socket (its own, or one handed over by systemd socket
//! activation), forks one worker per connection (see [`worker`]), reaps finished workers, and
//! stops cleanly on SIGTERM or SIGINT. It never reads client data itself, so no client can
//! stall it: it learns the caller's uid from `SO_PEERCRED`, and a connection over
//! `--max-workers` or `--max-workers-per-uid` gets a `Failure` with code `BUSY` at once (a
//! worker holds its slot until it gives it back, [`worker::Slot`], or ends; one holding it
//! longer than `--request-deadline` is killed). Workers log through a pipe to the daemon,
//! which rate-limits their lines per uid ([`log::UidRateLimit`]). The rules it enforces are in
//! docs/security.md. The `stasisd` binary is a thin
//! wrapper; `stasis demo` embeds the same loop. It logs one line per event on stderr (see
//! [`log`]); every request is numbered, and what its worker logs carries the number and the
//! caller's pid and uid.
#![deny(unsafe_code)]

pub mod log;
pub mod policy;
pub mod worker;

use clap::Parser;
use stasis_client::protocol;
use stasis_sys::process::{self, Forked};
use stasis_sys::socket;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the daemon listens and how much it serves.
#[derive(Debug, Clone, Parser)]
#[command(name = "stasisd", version, about = "The stasis self-checkpoint daemon")]
pub struct Args {
    /// Where to listen (ignored under socket activation).
    #[arg(long, default_value = stasis_client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Permissions of the socket file, in octal.
    #[arg(long, default_value = "0660", value_parser = parse_mode)]
    pub mode: u32,
    /// Group that owns the socket file (default: "stasis" if that group exists, else root's).
    #[arg(long)]
    pub group: Option<String>,
    /// How many requests may be served at once; more are refused ("busy") until one ends.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_workers: u32,
    /// How many requests of one uid may be served at once (default: a quarter of
    /// --max-workers, at least 1). Root's requests count against --max-workers only.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_workers_per_uid: Option<u32>,
    /// Longest time, in seconds, a request may hold its worker slot; a worker still holding
    /// it then is killed. A non-detached restore gives its slot back once the process runs.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    pub request_deadline: u32,
    /// Log lines one uid's requests may produce at once (root is not limited).
    #[arg(long, default_value_t = 20)]
    pub log_burst_per_uid: u32,
    /// Log lines per second one uid's requests may produce after the burst (0: no limit).
    #[arg(long, default_value_t = 2)]
    pub log_rate_per_uid: u32,
    /// Log more: -v the phases of each dump and restore, -vv also every system call run
    /// inside a target.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The secret images are authenticated with: 32 bytes, root's alone (mode 0600, in a
    /// directory only root can write to). Created at the first start when missing.
    #[arg(long, default_value = stasis_engine::auth::DEFAULT_KEY_FILE)]
    pub key_file: PathBuf,
}

impl Args {
    /// --max-workers-per-uid, or its default: a quarter of --max-workers, at least 1.
    pub fn per_uid_limit(&self) -> u32 {
        self.max_workers_per_uid
            .unwrap_or((self.max_workers / 4).max(1))
    }

    /// The log rate limit per uid.
    pub fn log_limit(&self) -> log::RateLimit {
        log::RateLimit {
            burst: self.log_burst_per_uid,
            per_second: self.log_rate_per_uid,
        }
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("{s}: {e}"))
}

/// A listening socket: handed over by systemd, or ours (then removed when we stop).
struct Listener {
    fd: OwnedFd,
    owned_path: Option<PathBuf>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = &self.owned_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The socket systemd passed (LISTEN_PID is us and LISTEN_FDS >= 1: fd 3), if any.
fn activated_socket() -> Result<Option<OwnedFd>, String> {
    let mut fds =
        process::take_socket_activation_fds().map_err(|e| format!("socket activation {e}"))?;
    if fds.len() > 1 {
        return Err(format!(
            "socket activation passed {} sockets; stasisd takes one",
            fds.len()
        ));
    }
    let Some(fd) = fds.pop() else {
        return Ok(None);
    };
    if !process::is_listening_seqpacket(fd.as_fd()) {
        return Err("socket activation fd 3 is not a listening SOCK_SEQPACKET socket".into());
    }
    Ok(Some(fd))
}

fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

fn bind(args: &Args) -> Result<Listener, String> {
    let path = &args.socket;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        }
    }
    remove_stale_socket(path)?;
    let fd = socket::seqpacket_listen(path, 128)
        .map_err(|e| format!("listen on {}: {e}", path.display()))?;
    let listener = Listener {
        fd,
        owned_path: Some(path.clone()),
    };
    let gid = match &args.group {
        Some(g) => Some(group_id(g).ok_or_else(|| format!("no group named {g}"))?),
        None => group_id("stasis"),
    };
    std::os::unix::fs::chown(path, None, gid)
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(args.mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(listener)
}

/// Removes a socket left by a previous run, refusing to remove anything else.
fn remove_stale_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| format!("remove stale {}: {e}", path.display()))
        }
        Ok(_) => Err(format!("{} exists and is not a socket", path.display())),
        Err(_) => Ok(()),
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: &Args) -> Result<(), String> {
    if process::geteuid() != 0 {
        return Err("stasisd must run as root".into());
    }
    let _log = log::install(args.verbose);
    // Test builds only (stasis_engine::fault): a fault injected into every worker's dump or
    // restore, read once here.
    let fault = stasis_engine::fault::FaultPlan::from_env()?;
    if let Some(f) = &fault {
        tracing::warn!("test build: {} = {f:?}", stasis_engine::fault::ENV);
    }
    // Every dump is authenticated with it, and every restore for a user checked against it.
    let (key, created) =
        stasis_engine::auth::load_or_create_key(&args.key_file).map_err(|e| e.to_string())?;
    if created {
        tracing::info!("created the image key {}", args.key_file.display());
    }
    // Signals arrive through a signalfd polled with the listener: no handler, no races.
    let signals = process::signalfd_for(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD])
        .map_err(|e| format!("signalfd: {e}"))?;
    let listener = match activated_socket()? {
        Some(fd) => Listener {
            fd,
            owned_path: None,
        },
        None => bind(args)?,
    };
    let source = listener
        .owned_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "socket activation".into());
    tracing::info!(
        "stasisd {}: listening ({source})",
        env!("CARGO_PKG_VERSION")
    );
    let limits = Limits {
        total: args.max_workers as usize,
        per_uid: args.per_uid_limit() as usize,
        deadline: Duration::from_secs(args.request_deadline.into()),
    };
    let mut rate = log::UidRateLimit::new(args.log_limit());
    let mut workers: Vec<Worker> = Vec::new();
    // Requests are numbered from 1 in the order they are accepted.
    let mut request: u64 = 0;
    loop {
        // Listener, signals, then each worker's slot (while held) and log pipe.
        let mut fds = vec![listener.fd.as_fd(), signals.as_fd()];
        let mut owners = Vec::new();
        for (i, w) in workers.iter().enumerate() {
            if let Some(slot) = &w.slot {
                fds.push(slot.as_fd());
                owners.push((i, Ready::Slot));
            }
            if let Some(log) = &w.log {
                fds.push(log.fd());
                owners.push((i, Ready::Log));
            }
        }
        let ready = process::poll_readable(&fds, 1000).map_err(|e| format!("poll: {e}"))?;
        drop(fds);
        let now = Instant::now();
        let mut stop = false;
        if ready[1] {
            while let Some(sig) =
                process::read_signalfd(signals.as_fd()).map_err(|e| format!("signalfd: {e}"))?
            {
                stop |= sig == libc::SIGTERM || sig == libc::SIGINT;
            }
        }
        for (&(i, what), _) in owners.iter().zip(&ready[2..]).filter(|(_, &r)| r) {
            let w = &mut workers[i];
            match what {
                // Nothing is ever written there: readable means every copy was closed.
                Ready::Slot => w.slot = None,
                Ready::Log => w.forward_log(&mut rate, now),
            }
        }
        workers.retain_mut(|w| !w.reaped(&mut rate, now));
        for w in workers.iter_mut() {
            w.enforce_deadline(limits.deadline, now);
        }
        for (uid, dropped) in rate.summaries(now) {
            tracing::warn!("{}", rate.summary_text(uid, dropped));
        }
        if stop {
            tracing::info!(
                "stopping ({} requests still being served finish on their own)",
                workers.len()
            );
            return Ok(());
        }
        if !ready[0] {
            continue;
        }
        let conn = match socket::accept(listener.fd.as_fd()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        request += 1;
        // Who connected, from the kernel; nothing the client sent is read here.
        let uid = match socket::peer_cred(conn.as_fd()) {
            Ok(cred) => cred.uid,
            Err(e) => {
                tracing::warn!(request, "refusing a connection: SO_PEERCRED: {e}");
                continue;
            }
        };
        if let Some(why) = limits.refusal(&workers, uid) {
            if rate.admit(uid, now) {
                tracing::warn!(request, "refusing a connection of uid {uid}: {why}");
            }
            turn_away(conn, &why);
            continue;
        }
        match start_worker(conn, request, uid, now, &key, fault.as_ref()) {
            Ok(w) => {
                tracing::debug!(request, "worker {} serves the connection", w.pid);
                workers.push(w);
            }
            Err(e) => tracing::error!(request, "{e}"),
        }
    }
}

/// How much the daemon serves at once, and for how long.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Slots in all (--max-workers).
    total: usize,
    /// Slots of one uid other than root (--max-workers-per-uid).
    per_uid: usize,
    /// Longest time a worker may hold its slot (--request-deadline).
    deadline: Duration,
}

impl Limits {
    /// Why a new connection of `uid` is turned away, if it is.
    fn refusal(&self, workers: &[Worker], uid: u32) -> Option<String> {
        let busy = workers.iter().filter(|w| w.slot.is_some());
        let total = busy.clone().count();
        if total >= self.total {
            return Some(format!(
                "stasisd is busy: {total} requests are being served, the most it serves at once \
                 (--max-workers {}); try again later",
                self.total
            ));
        }
        let of_uid = busy.filter(|w| w.uid == uid).count();
        if uid != 0 && of_uid >= self.per_uid {
            return Some(format!(
                "stasisd is busy: uid {uid} already has {of_uid} requests being served, the most \
                 one user may have at once (--max-workers-per-uid {}); try again later",
                self.per_uid
            ));
        }
        None
    }
}

/// What became readable among a worker's descriptors.
#[derive(Debug, Clone, Copy)]
enum Ready {
    Slot,
    Log,
}

/// A forked worker, as the daemon tracks it.
struct Worker {
    pid: i32,
    /// The caller's uid (SO_PEERCRED).
    uid: u32,
    /// The read end of the worker's slot pipe while the worker holds its slot: the worker never
    /// writes to it and closes it (or exits) to give the slot back.
    slot: Option<OwnedFd>,
    /// When it started (for --request-deadline).
    started: Instant,
    killed: bool,
    /// Its stderr, passed on to ours under the per-uid rate limit; None once it ended.
    log: Option<log::LineReader>,
}

impl Worker {
    fn forward_log(&mut self, rate: &mut log::UidRateLimit, now: Instant) {
        use std::io::Write;
        let Some(reader) = &mut self.log else {
            return;
        };
        let lines = reader.read_lines();
        let mut err = std::io::stderr().lock();
        for line in lines {
            if rate.admit(self.uid, now) {
                let _ = err.write_all(&line);
            }
        }
        if reader.ended() {
            self.log = None;
        }
    }

    /// Reaps the worker if it ended (after passing on the rest of its log).
    fn reaped(&mut self, rate: &mut log::UidRateLimit, now: Instant) -> bool {
        if !matches!(
            stasis_sys::ptrace::waitpid_nohang(self.pid),
            Ok(Some(_)) | Err(_)
        ) {
            return false;
        }
        self.forward_log(rate, now);
        true
    }

    /// Kills the worker if it has held its slot longer than `deadline`.
    fn enforce_deadline(&mut self, deadline: Duration, now: Instant) {
        if self.slot.is_none() || self.killed || now.duration_since(self.started) < deadline {
            return;
        }
        tracing::warn!(
            "worker {} (uid {}) held its slot for more than {} s: killed",
            self.pid,
            self.uid,
            deadline.as_secs()
        );
        let _ = process::kill(self.pid, libc::SIGKILL);
        self.killed = true;
    }
}

/// Answers a connection that is turned away with a `Failure` (BUSY) and closes it. The
/// connection is made non-blocking first: the daemon never waits on a client.
fn turn_away(conn: OwnedFd, why: &str) {
    let nonblocking = process::get_status_flags(conn.as_fd())
        .and_then(|f| process::set_status_flags(conn.as_fd(), f | libc::O_NONBLOCK));
    if nonblocking.is_ok() {
        let _ = protocol::send(
            conn.as_fd(),
            &protocol::Message::failure(stasis_client::code::BUSY, why),
            None,
        );
    }
}

/// Forks the worker for `conn`: its stderr becomes a pipe to the daemon (the log, rate-limited
/// per uid) and it holds a slot ([`worker::Slot`]) until it gives it back or ends.
fn start_worker(
    conn: OwnedFd,
    request: u64,
    uid: u32,
    now: Instant,
    key: &stasis_engine::ImageKey,
    fault: Option<&stasis_engine::fault::FaultPlan>,
) -> Result<Worker, String> {
    let (slot_read, slot_write) = process::pipe().map_err(|e| format!("slot pipe: {e}"))?;
    let (log_read, log_write) = process::pipe().map_err(|e| format!("log pipe: {e}"))?;
    match process::fork().map_err(|e| format!("fork: {e}"))? {
        Forked::Child(_) => {
            drop((slot_read, log_read));
            let _ = process::unblock_all_signals();
            // Lines the worker could not pass on are lost: there is nowhere else to put them.
            let _ = process::redirect_stderr(log_write.as_fd());
            drop(log_write);
            let code = stasis_engine::fault::armed(fault, || {
                worker::serve(conn, request, worker::Slot::new(slot_write), key)
            });
            process::exit_now(code);
        }
        Forked::Parent(pid) => {
            // The worker has its own copies: when it ends, the client sees it.
            drop((conn, slot_write, log_write));
            let log = log::LineReader::new(log_read)
                .map_err(|e| tracing::warn!("log pipe of worker {pid}: {e}"))
                .ok();
            Ok(Worker {
                pid,
                uid,
                slot: Some(slot_read),
                started: now,
                killed: false,
                log,
            })
        }
    }
}
