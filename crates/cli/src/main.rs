//! `stasis`: the command-line front end of the engine. Thin by design: it parses arguments,
//! calls `stasis_engine` (or `stasis_tools` for `demo` and `bench`), and turns errors into one
//! line on stderr and a non-zero exit code. Quiet by default; `-v`/`-vv` log to stderr,
//! `--log-file` (dump, restore) into a file.
#![deny(unsafe_code)]

use clap::{Parser, Subcommand};
use stasis_engine::{dump, restore, DumpOptions, ReplacedFiles, RestoreOptions};
use stasis_tools::{bench, demo};
use std::os::fd::AsFd;
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
        /// Write the log into FILE (debug level, or trace with -vv); errors still go to
        /// stderr.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
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
        /// Restore a file that was replaced at its path since the dump (restored from a
        /// backup, saved by an editor, copied to another machine) if it is of the same type
        /// (regular file, directory, FIFO, mapped file, object of an O_PATH descriptor),
        /// printing a warning naming each; without it such a file fails the restore. (A device
        /// is the same when its device number is; stasisd always refuses replaced files.)
        #[arg(long)]
        accept_replaced_files: bool,
        /// Write the log into FILE (debug level, or trace with -vv); errors still go to
        /// stderr.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
    },
    /// Decode an images directory into JSON.
    Show {
        /// The images directory.
        dir: PathBuf,
    },
    /// Run the demo: a counter checkpoints itself through an embedded stasisd, gets killed,
    /// is restored, and goes on knowing it was restored.
    Demo,
    /// Measure dump and restore of a process with --mib MiB of memory against baselines.
    Bench {
        #[arg(long, default_value_t = 256)]
        mib: u64,
        /// Processes in the tree-freeze benchmark.
        #[arg(long, default_value_t = 50)]
        tree_processes: u32,
        /// Threads per process in the tree-freeze benchmark.
        #[arg(long, default_value_t = 10)]
        tree_threads: u32,
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
    BenchWorkload { mib: u64, ready: PathBuf },
    /// The counter program the demo dumps (internal).
    #[command(hide = true)]
    DemoCounter { images: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            log_file: _,
        } => ("dump", run_dump(pid, images, leave_running)),
        Command::Restore {
            images,
            detach,
            new_session,
            pid_ns,
            accept_replaced_files,
            log_file: _,
        } => {
            let replaced = if accept_replaced_files {
                ReplacedFiles::Accept {
                    warn: warn_replaced,
                }
            } else {
                ReplacedFiles::Refuse
            };
            let r = run_restore(images, detach, new_session, pid_ns, replaced);
            ("restore", r)
        }
        Command::Show { dir } => ("show", run_show(dir)),
        Command::Demo => ("demo", demo::run()),
        Command::DemoCounter { images } => ("demo-counter", demo::counter(&images)),
        Command::Bench {
            mib,
            tree_processes,
            tree_threads,
        } => ("bench", bench::run(mib, tree_processes, tree_threads)),
        Command::BenchTreeWorkload {
            procs,
            threads,
            ready,
        } => (
            "bench-tree-workload",
            bench::tree_workload(procs, threads, &ready),
        ),
        Command::BenchWorkload { mib, ready } => ("bench-workload", bench::workload(mib, &ready)),
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

fn run_dump(pid: i32, images: PathBuf, leave_running: bool) -> CmdResult {
    // The directory is created if needed; if the dump fails, what it created goes again.
    let created = create_dirs(&images)?;
    let result = dump_into(pid, &images, leave_running);
    if result.is_err() {
        remove_empty_dirs(&created);
    }
    result
}

fn dump_into(pid: i32, images: &PathBuf, leave_running: bool) -> CmdResult {
    if stasis_sys::process::geteuid() != 0 {
        // Not root: stasisd dumps it, if it is ours to dump.
        let dir = open_dir_for_daemon(images)?;
        stasis_client::dump_pid(pid, dir.as_fd(), !leave_running, None)?;
        eprintln!("dumped pid {pid} into {} through stasisd", images.display());
        return Ok(0);
    }
    let report = dump(DumpOptions {
        pid,
        pidfd: None,
        images: stasis_engine::ImageDir::open(images)?,
        leave_running,
        service: None,
        tree: true,
        admit: None,
    })?;
    eprintln!(
        "dumped pid {} ({} processes) into {}: {} mappings, {} KiB of pages, frozen for {:.1} ms",
        report.pid,
        report.processes,
        images.display(),
        report.mappings,
        report.page_bytes / 1024,
        report.frozen.as_secs_f64() * 1e3
    );
    Ok(0)
}

/// Prints the warning about a replaced file the restore accepted (one line each).
fn warn_replaced(msg: &str) {
    eprintln!("restore: warning: {msg}");
}

fn run_restore(
    images: PathBuf,
    detach: bool,
    new_session: bool,
    pid_ns: bool,
    replaced_files: ReplacedFiles,
) -> CmdResult {
    if pid_ns {
        if stasis_sys::process::geteuid() != 0 {
            return Err("--pid-ns needs root".into());
        }
        let opts = RestoreOptions {
            images: stasis_engine::ImageDir::open(&images)?,
            requester: None,
            // The namespace's init is the root's parent, in a session of its own.
            new_session: true,
            replaced_files,
        };
        let r = stasis_engine::restore::restore_in_new_pid_namespace(&opts)?;
        if detach {
            println!(
                "{} (in a new pid namespace; its init is pid {})",
                r.root, r.init
            );
            return Ok(0);
        }
        let code = stasis_engine::restore::wait_exit_code(r.init)?;
        return Ok(code.clamp(0, 255) as u8);
    }
    if stasis_sys::process::geteuid() != 0 {
        if matches!(replaced_files, ReplacedFiles::Accept { .. }) {
            return Err(
                "--accept-replaced-files needs root (stasisd always refuses replaced files)".into(),
            );
        }
        // Not root: stasisd restores it with our own credentials, or refuses.
        let dir = open_dir_for_daemon(&images)?;
        let opts = stasis_client::RestoreOptions {
            detach,
            socket: None,
        };
        let restored = stasis_client::restore(dir.as_fd(), &opts)?;
        if detach {
            println!("{}", restored.pid);
            return Ok(0);
        }
        return Ok(restored.wait()?.clamp(0, 255) as u8);
    }
    let restored = restore(&RestoreOptions {
        images: stasis_engine::ImageDir::open(&images)?,
        requester: None,
        new_session,
        replaced_files,
    })?;
    if detach {
        println!("{}", restored.pid);
        return Ok(0);
    }
    let code = stasis_engine::restore::wait_exit_code(restored.pid)?;
    Ok(code.clamp(0, 255) as u8)
}

fn run_show(dir: PathBuf) -> CmdResult {
    let v = stasis_engine::show::show(&stasis_engine::ImageDir::open(&dir)?)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}
