//! `stasis`: the command-line front end of the engine. Thin by design: it parses arguments,
//! calls `stasis_engine` (or `stasis_tools` for `demo` and `bench`), and turns errors into one
//! line on stderr and a non-zero exit code. Quiet by default; `-v`/`-vv` log to stderr,
//! `--log-file` (dump, restore) into a file.
#![deny(unsafe_code)]

mod relay;
mod report;

use clap::{Parser, Subcommand};
use stasis_engine::{dump, restore, DumpOptions, ReplacedFiles, RestoreOptions, TcpConnections};
use stasis_tools::{bench, demo};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "stasis",
    version,
    about = "Checkpoint and restore Linux processes"
)]
struct Cli {
    /// Log what stasis does: -v the phases and processes (debug), -vv also every system call
    /// run inside a target (trace). The log goes to stderr, or to --log-file.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the kernel features stasis needs are present.
    Check,
    /// Dump a process into an images directory (the process is killed afterwards unless
    /// --leave-running is given).
    Dump {
        /// The process to dump.
        #[arg(short = 't', long = "pid")]
        pid: i32,
        /// Directory to write the images into (created if missing; must not hold a dump).
        #[arg(short = 'D', long = "images")]
        images: PathBuf,
        /// Let the process run on after the dump.
        #[arg(long)]
        leave_running: bool,
        /// Record established TCP connections as closed instead of keeping them: they end
        /// when the process is killed (their peers see them close), and the restored process
        /// finds them closed. Without it they are kept with TCP_REPAIR, their peers' packets
        /// held off by an nftables rule until the restore (needs `nft`).
        #[arg(long)]
        tcp_closed: bool,
        /// Dump a unix socket connected to a socket outside the dumped processes as a
        /// connection whose peer closed (it reads what was queued, then end-of-file), instead
        /// of refusing the dump.
        #[arg(long)]
        unix_peers_closed: bool,
        /// Store the pages compressed (zstd, one frame per run of up to 2 MiB, compressed by
        /// one thread per CPU); restore and `show` read them as they are.
        #[arg(long)]
        compress: bool,
        /// The zstd level of --compress: 1 (the default) to 19, or -7 to -1 (faster, larger).
        #[arg(
            long,
            value_name = "N",
            requires = "compress",
            allow_hyphen_values = true
        )]
        compress_level: Option<i32>,
        /// With --leave-running: keep the processes frozen while all their memory is copied,
        /// instead of copying it while they run and freezing them again only for what they
        /// wrote meanwhile (the default, which stops them for milliseconds).
        #[arg(long)]
        no_pre_copy: bool,
        /// Make an incremental dump on top of the dump in DIR: only the pages changed since
        /// it are written, the others are read from DIR (and its own parents) at restore, so
        /// DIR must stay as it is (root only).
        #[arg(long, value_name = "DIR")]
        parent: Option<PathBuf>,
        /// Write the log into FILE (debug level, or trace with -vv); errors still go to
        /// stderr.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// Do not authenticate the images (root: they are authenticated with the image key
        /// when it exists or can be created; stasisd will not restore unauthenticated images
        /// for users).
        #[arg(long)]
        no_auth: bool,
        /// The image key (root only).
        #[arg(long, default_value = stasis_engine::auth::DEFAULT_KEY_FILE)]
        key_file: PathBuf,
        /// Write the timings of each phase (ms) and the sizes of the images as JSON into FILE.
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
    },
    /// Restore a process from an images directory, with its original pid.
    Restore {
        #[arg(short = 'D', long = "images")]
        images: PathBuf,
        /// Return as soon as the process runs instead of waiting for it to exit.
        #[arg(short = 'd', long)]
        detach: bool,
        /// If the process's session is not available here, give it a new session instead of
        /// failing.
        #[arg(long)]
        new_session: bool,
        /// Restore into a new pid namespace under a minimal init, so the same images can be
        /// restored many times side by side (the processes keep their pids inside it).
        #[arg(long)]
        pid_ns: bool,
        /// Write the log into FILE (debug level, or trace with -vv); errors still go to
        /// stderr.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// The image key (root only): authenticated images are checked with it when it is
        /// readable.
        #[arg(long, default_value = stasis_engine::auth::DEFAULT_KEY_FILE)]
        key_file: PathBuf,
        /// Root: do not check the images' authentication (images authenticated with another
        /// machine's key, say).
        #[arg(long)]
        no_auth: bool,
        /// Root: restore the images as they are, with root's power, even when they are not
        /// authenticated and another user owns them or could have written them. Without it,
        /// such images are restored as their owner (the restored processes get nothing that
        /// user could not get: a notice on stderr says so), and images writable by group or
        /// others, or owned by several users, are refused.
        #[arg(long)]
        trust_images: bool,
        /// Restore a file that was replaced at its path since the dump (restored from a
        /// backup, saved by an editor, copied to another machine) if it is of the same type
        /// (regular file, directory, FIFO, mapped file, object of an O_PATH descriptor),
        /// printing a warning naming each; without it such a file fails the restore. (A device
        /// is the same when its device number is; stasisd always refuses replaced files.)
        #[arg(long)]
        accept_replaced_files: bool,
        /// Attach a job that ran on a terminal outside the dumped tree (started from a shell)
        /// to the terminal at PATH instead of this command's own (its stdin): the root gets a
        /// session of its own there, with PATH as its controlling terminal.
        #[arg(long, value_name = "PATH")]
        tty: Option<PathBuf>,
        /// Attach a job that ran on a terminal outside the dumped tree to this command's
        /// terminal (its stdin), in the foreground: the default when stdin is a terminal; with
        /// this flag, a stdin that is not a terminal is an error. (CRIU's name.)
        #[arg(short = 'j', long)]
        shell_job: bool,
        /// Write the timings of each phase and rebuild step (ms) and the sizes of the images
        /// as JSON into FILE, once the process runs.
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
        /// Start the process before its memory is in: private memory is brought in on first
        /// touch (userfaultfd) by a detached page server, which pushes the rest in the
        /// background and exits once every page has arrived (root, without --pid-ns; see
        /// README "Lazy restore").
        #[arg(long)]
        lazy: bool,
    },
    /// Decode an images directory into JSON; say whether the images are authenticated (and,
    /// as root, verify them).
    Show {
        /// The images directory.
        dir: PathBuf,
        /// The image key (root only).
        #[arg(long, default_value = stasis_engine::auth::DEFAULT_KEY_FILE)]
        key_file: PathBuf,
    },
    /// Run the demo: a counter checkpoints itself through an embedded stasisd, gets killed,
    /// is restored, and goes on knowing it was restored.
    Demo,
    /// Measure dumps and restores of workloads (64 MiB, 256 MiB, 1 GiB, a multi-threaded
    /// process, a tree of processes) against baselines measured in the same run (and against
    /// CRIU when $CRIU_BIN names CRIU 4.1 or newer).
    Bench {
        /// Only a workload of this many MiB (instead of 64, 256 and 1024).
        #[arg(long)]
        mib: Option<u64>,
        /// Processes in the tree benchmark [default: 50; 5 with --quick].
        #[arg(long)]
        tree_processes: Option<u32>,
        /// Threads per process in the tree benchmark [default: 10; 2 with --quick].
        #[arg(long)]
        tree_threads: Option<u32>,
        /// Runs of each figure; the median is printed [default: 3; 1 with --quick].
        #[arg(long)]
        runs: Option<usize>,
        /// Small sizes and one run: seconds (to check that the benchmark works, not speed).
        #[arg(long)]
        quick: bool,
        /// Only the fixed cost (a 1 MiB process dumped and restored, by the command and by
        /// the engine): seconds; with --runs 25 for figures to compare.
        #[arg(long)]
        fixed: bool,
    },
    /// The tree the benchmark freezes (internal).
    #[command(hide = true)]
    BenchTreeWorkload {
        procs: u32,
        threads: u32,
        ready: PathBuf,
    },
    /// The program the benchmark dumps (internal).
    #[command(hide = true)]
    BenchWorkload {
        mib: u64,
        ready: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: u32,
    },
    /// The progress bar of a restore, run by the restorer on a terminal (internal).
    #[command(hide = true)]
    ProgressRestore { images: PathBuf },
    /// The counter program the demo dumps (internal).
    #[command(hide = true)]
    DemoCounter { images: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Test builds only: the fault to inject into a dump or restore (crates/engine/src/fault.rs).
    let fault = match stasis_engine::fault::FaultPlan::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("stasis: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log_file = match &cli.command {
        Command::Dump { log_file, .. } | Command::Restore { log_file, .. } => log_file.clone(),
        _ => None,
    };
    let logging = match init_logging(cli.verbose, log_file.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stasis: {e}");
            return ExitCode::FAILURE;
        }
    };
    if logging != Logging::Off {
        let args: Vec<String> = std::env::args().collect();
        tracing::info!("stasis {}: {}", env!("CARGO_PKG_VERSION"), args.join(" "));
    }
    let (what, result) = match cli.command {
        Command::Check => ("check", run_check()),
        Command::Dump {
            pid,
            images,
            leave_running,
            tcp_closed,
            unix_peers_closed,
            compress,
            compress_level,
            no_pre_copy,
            parent,
            no_auth,
            key_file,
            stats,
            log_file: _,
        } => {
            let compress = compress.then(|| stasis_engine::Compression {
                level: compress_level.unwrap_or(stasis_engine::Compression::default().level),
                ..Default::default()
            });
            let key = (!no_auth).then_some(key_file);
            let tcp = if tcp_closed {
                TcpConnections::Closed
            } else {
                TcpConnections::Repair
            };
            let request = DumpRequest {
                pid,
                images,
                leave_running,
                unix_peers_closed,
                tcp,
                compress,
                key_file: key,
                pre_copy: !no_pre_copy,
                parent,
                stats,
            };
            (
                "dump",
                stasis_engine::fault::armed(fault.as_ref(), || run_dump(request)),
            )
        }
        Command::Restore {
            images,
            detach,
            new_session,
            pid_ns,
            key_file,
            no_auth,
            trust_images,
            accept_replaced_files,
            tty,
            shell_job,
            stats,
            lazy,
            log_file: _,
        } => {
            let how = RestoreHow {
                stats,
                lazy,
                tty,
                shell_job,
                detach,
                new_session,
                pid_ns,
                key_file: (!no_auth).then_some(key_file),
                trust_images,
                replaced_files: if accept_replaced_files {
                    ReplacedFiles::Accept {
                        warn: warn_replaced,
                    }
                } else {
                    ReplacedFiles::Refuse
                },
            };
            (
                "restore",
                stasis_engine::fault::armed(fault.as_ref(), || run_restore(images, &how)),
            )
        }
        Command::Show { dir, key_file } => ("show", run_show(dir, &key_file)),
        Command::Demo => ("demo", demo::run()),
        Command::ProgressRestore { images } => {
            ("progress-restore", report::follow_restore(&images))
        }
        Command::DemoCounter { images } => ("demo-counter", demo::counter(&images)),
        Command::Bench {
            mib,
            tree_processes,
            tree_threads,
            runs,
            quick,
            fixed,
        } => {
            let mut opts = if quick {
                bench::BenchOptions::quick()
            } else {
                bench::BenchOptions::full()
            };
            if let Some(mib) = mib {
                opts.sizes_mib = vec![mib];
            }
            if let Some(tree) = &mut opts.tree {
                tree.0 = tree_processes.unwrap_or(tree.0);
                tree.1 = tree_threads.unwrap_or(tree.1);
            }
            opts.runs = runs.unwrap_or(opts.runs);
            if fixed {
                opts.sizes_mib.clear();
                opts.threaded = None;
                opts.tree = None;
            }
            ("bench", bench::run(&opts))
        }
        Command::BenchTreeWorkload {
            procs,
            threads,
            ready,
        } => (
            "bench-tree-workload",
            bench::tree_workload(procs, threads, &ready),
        ),
        Command::BenchWorkload {
            mib,
            ready,
            threads,
        } => ("bench-workload", bench::workload(mib, threads, &ready)),
    };
    match result {
        Ok(code) => {
            if logging != Logging::Off {
                tracing::info!("{what}: done (exit code {code})");
            }
            ExitCode::from(code)
        }
        Err(e) => {
            // On stderr the error line says it all; a log file gets it too, at the end of
            // what led to it.
            if logging == Logging::File {
                tracing::error!("{what}: {e}");
            }
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the log goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logging {
    /// Nowhere (the default).
    Off,
    Stderr,
    File,
}

/// Sets up the log: into `file` when given (at debug level, trace with -vv), else on stderr
/// with -v (debug) or -vv (trace), else nowhere.
fn init_logging(verbose: u8, file: Option<&std::path::Path>) -> Result<Logging, String> {
    use tracing_subscriber::filter::LevelFilter;
    let level = if verbose >= 2 {
        LevelFilter::TRACE
    } else {
        LevelFilter::DEBUG
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .fmt_fields(stasisd::log::EscapedFields);
    let installed = match file {
        Some(path) => {
            let f = std::fs::File::create(path)
                .map_err(|e| format!("log file {}: {e}", path.display()))?;
            builder
                .with_writer(std::sync::Mutex::new(f))
                .with_ansi(false)
                .try_init()
                .map(|_| Logging::File)
        }
        None if verbose > 0 => {
            use std::io::IsTerminal;
            builder
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .try_init()
                .map(|_| Logging::Stderr)
        }
        None => return Ok(Logging::Off),
    };
    installed.map_err(|e| format!("setting up the log: {e}"))
}

type CmdResult = stasis_tools::ToolResult;

fn run_check() -> CmdResult {
    let mut all = true;
    for c in stasis_engine::check::run() {
        println!(
            "{:<28} {:<4} {}",
            c.name,
            if c.ok { "ok" } else { "FAIL" },
            c.detail
        );
        all &= c.ok;
    }
    Ok(if all { 0 } else { 1 })
}

/// Opens an existing images directory as the calling user, for the daemon.
fn open_dir_for_daemon(images: &PathBuf) -> Result<std::fs::File, Box<dyn std::error::Error>> {
    Ok(std::fs::File::open(images).map_err(|e| format!("open {}: {e}", images.display()))?)
}

/// Creates `dir` and those of its parents that are missing, like `mkdir -p`; returns the
/// directories it created, outermost first.
fn create_dirs(dir: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(p.to_path_buf());
        d = p.parent();
    }
    let mut created = Vec::new();
    for p in missing.into_iter().rev() {
        match std::fs::create_dir(&p) {
            Ok(()) => created.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                remove_empty_dirs(&created);
                return Err(format!("create {}: {e}", p.display()));
            }
        }
    }
    Ok(created)
}

/// Removes the directories `create_dirs` made, innermost first, as long as they are empty (a
/// failed dump removes the files it wrote).
fn remove_empty_dirs(created: &[PathBuf]) {
    for p in created.iter().rev() {
        if std::fs::remove_dir(p).is_err() {
            break;
        }
    }
}

/// The options of `stasis dump`, as given.
struct DumpRequest {
    pid: i32,
    images: PathBuf,
    leave_running: bool,
    unix_peers_closed: bool,
    tcp: TcpConnections,
    /// `--compress` (and `--compress-level`).
    compress: Option<stasis_engine::Compression>,
    /// The image key to authenticate the images with (None: `--no-auth`).
    key_file: Option<PathBuf>,
    pre_copy: bool,
    parent: Option<PathBuf>,
    /// `--stats FILE`: where the timings and sizes go.
    stats: Option<PathBuf>,
}

fn run_dump(req: DumpRequest) -> CmdResult {
    let started = std::time::Instant::now();
    // The directory is created if needed; if the dump fails, what it created goes again.
    let created = create_dirs(&req.images)?;
    let result = dump_into(&req);
    let result = match (result, &req.stats) {
        (Ok(report), Some(path)) => {
            let v = report::dump_stats(report.as_ref(), &req.images, started.elapsed());
            report::write_stats(path, &v)
                .map(|()| 0)
                .map_err(Into::into)
        }
        (r, _) => r.map(|_| 0),
    };
    if result.is_err() {
        remove_empty_dirs(&created);
    }
    result
}

/// Dumps as asked: the engine's report, or None when stasisd dumped it.
fn dump_into(
    req: &DumpRequest,
) -> Result<Option<stasis_engine::DumpReport>, Box<dyn std::error::Error>> {
    let DumpRequest {
        pid,
        ref images,
        leave_running,
        unix_peers_closed,
        tcp,
        compress,
        ref key_file,
        pre_copy,
        ref parent,
        stats: _,
    } = *req;
    if stasis_sys::process::geteuid() != 0 {
        if parent.is_some() {
            return Err("--parent: incremental dumps are not available through stasisd yet".into());
        }
        if key_file.is_none() {
            return Err("--no-auth: dumps through stasisd are always authenticated".into());
        }
        if tcp == TcpConnections::Closed {
            return Err("--tcp-closed: not for dumps through stasisd (root only)".into());
        }
        if unix_peers_closed {
            return Err("--unix-peers-closed: not available for dumps through stasisd".into());
        }
        if compress.is_some() {
            return Err("--compress: not available for dumps through stasisd yet".into());
        }
        // Not root: stasisd dumps it, if it is ours to dump.
        let dir = open_dir_for_daemon(images)?;
        stasis_client::dump_pid(pid, dir.as_fd(), !leave_running, None)?;
        eprintln!("dumped pid {pid} into {} through stasisd", images.display());
        return Ok(None);
    }
    let progress = report::Progress::start(report::Follow::Dump {
        pid,
        images: images.clone(),
    });
    let report = dump(DumpOptions {
        pid,
        pidfd: None,
        images: stasis_engine::ImageDir::open(images)?,
        leave_running,
        unix_peers_closed,
        service: None,
        tree: true,
        admit: None,
        tcp,
        auth: key_file
            .as_ref()
            .and_then(|k| stasis_engine::auth::key_for_root(k, true)),
        pre_copy,
        parent: parent.clone(),
        compress,
    });
    drop(progress);
    let report = report?;
    eprintln!(
        "dumped pid {} ({} processes) into {}: {} mappings, {} KiB of pages{}, frozen for {:.1} ms",
        report.pid,
        report.processes,
        images.display(),
        report.mappings,
        report.page_bytes / 1024,
        if compress.is_some() {
            " (compressed)"
        } else {
            ""
        },
        report.frozen.as_secs_f64() * 1e3
    );
    Ok(Some(report))
}

/// The options of `stasis restore`.
struct RestoreHow {
    detach: bool,
    new_session: bool,
    pid_ns: bool,
    /// The image key to check authenticated images with (None: `--no-auth`).
    key_file: Option<PathBuf>,
    trust_images: bool,
    /// What to do with a file replaced since the dump (`--accept-replaced-files`).
    replaced_files: ReplacedFiles,
    /// `--tty PATH`: the terminal to attach a shell job to.
    tty: Option<PathBuf>,
    /// `--shell-job`: attach it to our terminal, which must exist.
    shell_job: bool,
    /// `--stats FILE`: where the timings and sizes go.
    stats: Option<PathBuf>,
    /// `--lazy`: pages served on first touch by a page server.
    lazy: bool,
}

/// The terminal a shell job is attached to: `--tty PATH`, or our stdin when it is a terminal
/// (`--shell-job` requires it to be one).
fn restore_terminal(how: &RestoreHow) -> Result<Option<OwnedFd>, Box<dyn std::error::Error>> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(path) = &how.tty {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .map_err(|e| format!("--tty {}: {e}", path.display()))?;
        if !stasis_sys::tty::isatty(file.as_fd()) {
            return Err(format!("--tty {}: not a terminal", path.display()).into());
        }
        return Ok(Some(file.into()));
    }
    let stdin = std::io::stdin();
    if stasis_sys::tty::isatty(stdin.as_fd()) {
        return Ok(Some(
            stdin
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| format!("dup of stdin: {e}"))?,
        ));
    }
    if how.shell_job {
        return Err(
            "--shell-job: stdin is not a terminal (run stasis restore in a terminal, \
                    or give one with --tty PATH)"
                .into(),
        );
    }
    Ok(None)
}

/// The terminal a user's restore passes to stasisd for a shell job (as a descriptor: the
/// daemon never opens one): `--tty PATH` (opened here, as the user: the kernel decides), or
/// stdin when it is a terminal that is not our controlling terminal. Our controlling terminal
/// is our shell's session's, which the job, restored in a session of its own, cannot take: a
/// shell job is then given a terminal of its own, relayed to ours ([`relay`]).
fn user_restore_terminal(how: &RestoreHow) -> Result<Option<OwnedFd>, Box<dyn std::error::Error>> {
    let Some(t) = restore_terminal(how)? else {
        return Ok(None);
    };
    if how.tty.is_none() && stasis_sys::tty::session_of(t.as_fd()).is_ok() {
        // A shell job gets a terminal of its own, relayed to this one (`relay`).
        return Ok(None);
    }
    Ok(Some(t))
}

/// Whether stasisd refused a restore for want of a terminal, and we can relay ours: stdin is
/// our controlling terminal (our shell's) and we wait for the job.
fn needs_relay(e: &stasis_client::Error, how: &RestoreHow) -> bool {
    e.code() == stasis_client::code::UNSUPPORTED
        && e.to_string()
            .contains(stasis_engine::files::tty::OUTSIDE_TERMINAL)
        && !how.detach
        && how.tty.is_none()
        && stasis_sys::tty::session_of(std::io::stdin().as_fd()).is_ok()
}

/// Waits for the restored root: as a shell job when it has the terminal (its group is the
/// terminal's foreground group), else until it ends.
fn wait_restored(pid: i32, terminal: Option<&OwnedFd>) -> Result<i32, stasis_engine::Error> {
    if let Some(t) = terminal {
        let fg = stasis_sys::tty::tcgetpgrp(t.as_fd()).ok();
        let group = stasis_sys::process::getpgid(pid).ok();
        if fg.is_some() && fg == group && group != stasis_sys::process::getpgid(0).ok() {
            return stasis_engine::restore::wait_job(pid, t.as_fd());
        }
    }
    stasis_engine::restore::wait_exit_code(pid)
}

/// Whether the terminal's foreground group is that of a child of the pid namespace's `init`
/// (the restored root), not ours: a shell job restored with `--pid-ns`.
fn job_has_terminal(init: i32, terminal: &OwnedFd) -> bool {
    let fg = stasis_sys::tty::tcgetpgrp(terminal.as_fd()).ok();
    let root: Option<i32> = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()));
    let group = root.and_then(|r| stasis_sys::process::getpgid(r).ok());
    fg.is_some() && fg == group && group != stasis_sys::process::getpgid(0).ok()
}

/// Prints the warning about a replaced file the restore accepted (one line each).
fn warn_replaced(msg: &str) {
    eprintln!("restore: warning: {msg}");
}

/// Writes the `--stats` file of a restore, if asked for.
fn restore_stats(
    how: &RestoreHow,
    restored: Option<&stasis_engine::Restored>,
    images: &std::path::Path,
    started: std::time::Instant,
) -> Result<(), String> {
    match &how.stats {
        Some(path) => report::write_stats(
            path,
            &report::restore_stats(restored, images, started.elapsed()),
        ),
        None => Ok(()),
    }
}

fn run_restore(images: PathBuf, how: &RestoreHow) -> CmdResult {
    let started = std::time::Instant::now();
    if stasis_sys::process::geteuid() != 0 {
        if how.lazy {
            return Err("--lazy needs root (stasisd restores eagerly)".into());
        }
        if how.pid_ns {
            return Err("--pid-ns needs root".into());
        }
        if how.trust_images {
            return Err(
                "--trust-images is for root: stasisd restores only authenticated images for users"
                    .into(),
            );
        }
        if how.key_file.is_none() {
            return Err("--no-auth: stasisd restores only authenticated images for users".into());
        }
        if matches!(how.replaced_files, ReplacedFiles::Accept { .. }) {
            return Err(
                "--accept-replaced-files needs root (stasisd always refuses replaced files)".into(),
            );
        }
        // Not root: stasisd restores it with our own credentials, or refuses.
        let dir = open_dir_for_daemon(&images)?;
        let opts = stasis_client::RestoreOptions {
            detach: how.detach,
            socket: None,
        };
        let restored = match user_restore_terminal(how)? {
            Some(t) => stasis_client::restore_on_terminal(dir.as_fd(), t.as_fd(), &opts)?,
            None => match stasis_client::restore(dir.as_fd(), &opts) {
                // A shell job, and we run in our shell's terminal: the job gets a terminal of
                // its own, relayed to ours.
                Err(e) if needs_relay(&e, how) => {
                    let code = relay::restore_job(dir.as_fd(), std::io::stdin().as_fd(), &opts)?;
                    restore_stats(how, None, &images, started)?;
                    return Ok(code.clamp(0, 255) as u8);
                }
                r => r?,
            },
        };
        restore_stats(how, None, &images, started)?;
        if how.detach {
            println!("{}", restored.pid);
            return Ok(0);
        }
        return Ok(restored.wait()?.clamp(0, 255) as u8);
    }
    // Root: images that carry auth.img are checked when the key is readable (unless
    // --no-auth). Images another user could have written are restored as they are only when
    // they are authenticated (or with --trust-images); otherwise as their owner.
    let dir = stasis_engine::ImageDir::open(&images)?;
    let key = how
        .key_file
        .as_deref()
        .and_then(|k| stasis_engine::auth::key_for_root(k, false));
    let trust = if how.trust_images {
        RootRestore::AsTheyAre {
            require_authenticated: false,
        }
    } else {
        root_restore_of(&dir, how.key_file.as_deref(), key.as_ref())?
    };
    let mut opts = RestoreOptions {
        images: dir,
        requester: None,
        new_session: how.new_session,
        auth: key,
        require_authenticated: false,
        root_as_sibling: false,
        root_pdeathsig: true,
        replaced_files: how.replaced_files,
        terminal: restore_terminal(how)?,
        lazy: how.lazy,
    };
    // Ours, to wait for a shell job as a shell would.
    let terminal = match &opts.terminal {
        Some(t) => Some(
            t.try_clone()
                .map_err(|e| format!("dup of the terminal: {e}"))?,
        ),
        None => None,
    };
    let restored = match trust {
        RootRestore::AsTheyAre {
            require_authenticated,
        } => {
            opts.require_authenticated = require_authenticated;
            if how.pid_ns {
                if how.lazy {
                    return Err("--lazy cannot be combined with --pid-ns yet".into());
                }
                // The namespace's init is the root's parent, in a session of its own.
                opts.new_session = true;
                // No progress bar: its pids are the namespace's, not ours.
                let (r, events) = match &terminal {
                    // A shell job, maybe: the init reports the root's stops.
                    Some(_) => {
                        let (r, events) =
                            stasis_engine::restore::restore_job_in_new_pid_namespace(&opts)?;
                        (r, Some(events))
                    }
                    None => (
                        stasis_engine::restore::restore_in_new_pid_namespace(&opts)?,
                        None,
                    ),
                };
                restore_stats(how, None, &images, started)?;
                if how.detach {
                    println!(
                        "{} (in a new pid namespace; its init is pid {})",
                        r.root, r.init
                    );
                    return Ok(0);
                }
                let code = match (&terminal, events) {
                    (Some(t), Some(events)) if job_has_terminal(r.init, t) => {
                        stasis_engine::restore::wait_job_in_namespace(&r, events, t.as_fd())?
                    }
                    _ => stasis_engine::restore::wait_exit_code(r.init)?,
                };
                return Ok(code.clamp(0, 255) as u8);
            }
            let progress = report::Progress::start(report::Follow::Restore {
                images: images.clone(),
            });
            let r = restore(&opts);
            drop(progress);
            r?
        }
        RootRestore::AsOwner { who, why, whom } => {
            if how.pid_ns {
                return Err(format!(
                    "{why}: they would be restored as {whom}, which --pid-ns cannot do; \
                     restore them without --pid-ns, or as they are with --trust-images"
                )
                .into());
            }
            if how.lazy {
                return Err(format!(
                    "{why}: they would be restored as {whom}, which --lazy cannot do; restore \
                     them without --lazy, or as they are with --trust-images"
                )
                .into());
            }
            eprintln!(
                "restore: {why}: restoring as {whom} (use --trust-images to restore them as they \
                 are)"
            );
            // Nothing of them is trusted: the restorer is their owner, and the key is not
            // handed to it.
            opts.auth = None;
            // A restore as a user gets no terminal of ours (see docs/security.md).
            opts.terminal = None;
            stasis_engine::restore::as_user::restore_as_owner(&who, opts)?
        }
    };
    restore_stats(how, Some(&restored), &images, started)?;
    if how.detach {
        println!("{}", restored.pid);
        return Ok(0);
    }
    let code = wait_restored(restored.pid, terminal.as_ref())?;
    Ok(code.clamp(0, 255) as u8)
}

/// How root restores an images directory.
enum RootRestore {
    /// As they are, with root's power: root's own images (`require_authenticated` false), or
    /// authenticated ones that another user could have written (true: the restore checks
    /// every byte it reads, so a change after this decision fails it).
    AsTheyAre { require_authenticated: bool },
    /// As `who`, the user who owns them; `why` says who that is and why, `whom` how they are
    /// restored.
    AsOwner {
        who: stasis_engine::restore::as_user::RequesterIdentity,
        why: String,
        whom: String,
    },
}

/// Decides how root restores the images in `dir` (docs/security.md, "Root's restore of images
/// a user could have written"): root's alone (the directory and every file root's and not
/// writable by group or others) as they are; others that are authenticated with `key` as they
/// are; others not authenticated as their single owner, or not at all when no single user
/// could have written them.
fn root_restore_of(
    dir: &stasis_engine::ImageDir,
    key_file: Option<&std::path::Path>,
    key: Option<&stasis_engine::ImageKey>,
) -> Result<RootRestore, Box<dyn std::error::Error>> {
    use stasis_engine::restore::as_user::{ImagesWriters, RequesterIdentity};
    // Why the images are not authenticated; None when they are.
    let unauthenticated = || -> Result<Option<String>, Box<dyn std::error::Error>> {
        Ok(match (key_file, key) {
            (None, _) => Some("not authenticated (--no-auth: not checked)".to_string()),
            (Some(path), None) => Some(format!(
                "not authenticated (no image key readable at {} to check them with)",
                path.display()
            )),
            // Written by stasisd or root with this key: trusted as long as they are unchanged,
            // which the restore checks as it reads them.
            (Some(_), Some(key)) => match dir.try_clone()?.authenticate(key) {
                Ok(true) => None,
                Ok(false) => Some("not authenticated (no auth.img)".to_string()),
                Err(e) => {
                    tracing::debug!(error = %e, "the images' auth.img does not verify");
                    Some(
                        "not authenticated (their auth.img does not verify with the image key)"
                            .to_string(),
                    )
                }
            },
        })
    };
    let authenticated = RootRestore::AsTheyAre {
        require_authenticated: true,
    };
    match stasis_engine::restore::as_user::images_writers(dir)? {
        ImagesWriters::Root => Ok(RootRestore::AsTheyAre {
            require_authenticated: false,
        }),
        ImagesWriters::NoSingleUser { why } => {
            let Some(unauthenticated) = unauthenticated()? else {
                return Ok(authenticated);
            };
            Err(format!(
                "{why}, and the images are {unauthenticated}: no single user could have \
                 written them, so they cannot be restored as their owner; remove the write \
                 permission of group and others (chmod go-w), or restore them as they are with \
                 --trust-images if you trust them"
            )
            .into())
        }
        ImagesWriters::User { uid, gid } => {
            let Some(unauthenticated) = unauthenticated()? else {
                return Ok(authenticated);
            };
            let user = stasis_sys::users::user_by_uid(uid)
                .map_err(|e| format!("looking up uid {uid}, the owner of the images: {e}"))?;
            match user {
                Some(user) => Ok(RootRestore::AsOwner {
                    who: RequesterIdentity::for_user(uid)?,
                    why: format!(
                        "the images are owned by uid {uid} ({}) and {unauthenticated}",
                        user.name
                    ),
                    whom: "that user".to_string(),
                }),
                None if gid == 0 => Err(format!(
                    "the images are owned by uid {uid}, which has no passwd entry, with group 0 \
                     (root), and {unauthenticated}: they are not restored as group root; change \
                     their group, or restore them as they are with --trust-images"
                )
                .into()),
                None => Ok(RootRestore::AsOwner {
                    who: RequesterIdentity::for_ids(uid, gid, vec![gid])?,
                    why: format!(
                        "the images are owned by uid {uid}, which has no passwd entry, and \
                         {unauthenticated}"
                    ),
                    whom: format!("uid {uid} with the images' group, gid {gid}"),
                }),
            }
        }
    }
}

fn run_show(dir: PathBuf, key_file: &std::path::Path) -> CmdResult {
    let key = stasis_engine::auth::key_for_root(key_file, false);
    let v = stasis_engine::show::show(&stasis_engine::ImageDir::open(&dir)?, key.as_ref())?;
    let text = serde_json::to_string_pretty(&v)?;
    // `stasis show DIR | head`: a reader that stops early is not an error.
    match std::io::Write::write_all(
        &mut std::io::stdout().lock(),
        format!("{text}\n").as_bytes(),
    ) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        r => Ok(r.map(|()| 0)?),
    }
}
