//! stasisd: the privileged daemon that lets unprivileged processes checkpoint themselves.
//!
//! It listens on a unix SOCK_SEQPACKET socket (its own, or one handed over by systemd socket
//! activation), forks one worker per connection (see [`worker`]), reaps finished workers, and
//! stops cleanly on SIGTERM or SIGINT. It never reads client data itself, so no client can
//! stall it. The rules it enforces are in docs/security.md. The `stasisd` binary is a thin
//! wrapper; `stasis demo` embeds the same loop.
#![deny(unsafe_code)]

pub mod policy;
pub mod worker;

use clap::Parser;
use stasis_sys::process::{self, Forked};
use stasis_sys::socket;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
    /// How many requests may be served at once; more are refused until one ends.
    #[arg(long, default_value_t = 64)]
    pub max_workers: usize,
    /// The secret images are authenticated with: 32 bytes, root's alone (mode 0600, in a
    /// directory only root can write to). Created at the first start when missing.
    #[arg(long, default_value = stasis_engine::auth::DEFAULT_KEY_FILE)]
    pub key_file: PathBuf,
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
    // Every dump is authenticated with it, and every restore for a user checked against it.
    let (key, created) =
        stasis_engine::auth::load_or_create_key(&args.key_file).map_err(|e| e.to_string())?;
    if created {
        eprintln!("stasisd: created the image key {}", args.key_file.display());
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
    eprintln!(
        "stasisd {}: listening ({source})",
        env!("CARGO_PKG_VERSION")
    );
    let mut workers: Vec<i32> = Vec::new();
    loop {
        let ready = process::poll_readable(&[listener.fd.as_fd(), signals.as_fd()], 1000)
            .map_err(|e| format!("poll: {e}"))?;
        let mut stop = false;
        if ready[1] {
            while let Some(sig) =
                process::read_signalfd(signals.as_fd()).map_err(|e| format!("signalfd: {e}"))?
            {
                stop |= sig == libc::SIGTERM || sig == libc::SIGINT;
            }
        }
        workers.retain(|&w| matches!(stasis_sys::ptrace::waitpid_nohang(w), Ok(None)));
        if stop {
            eprintln!(
                "stasisd: stopping ({} requests still being served finish on their own)",
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
                eprintln!("stasisd: accept: {e}");
                continue;
            }
        };
        if workers.len() >= args.max_workers {
            eprintln!(
                "stasisd: refusing a connection: {} requests already being served",
                workers.len()
            );
            continue;
        }
        match process::fork() {
            Ok(Forked::Child(_)) => {
                let _ = process::unblock_all_signals();
                let code = worker::serve(conn, &key);
                process::exit_now(code);
            }
            Ok(Forked::Parent(pid)) => workers.push(pid),
            Err(e) => eprintln!("stasisd: fork: {e}"),
        }
        // The worker has its own copy of the connection: when it ends, the client sees it.
        drop(conn);
    }
}
