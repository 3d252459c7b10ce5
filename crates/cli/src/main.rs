//! `stasis`: the command-line front end of the engine. Thin by design: it parses arguments,
//! calls `stasis_engine`, and turns errors into one line on stderr and a non-zero exit code.
#![deny(unsafe_code)]

mod bench;
mod demo;

use clap::{Parser, Subcommand};
use stasis_engine::{dump, restore, DumpOptions, RestoreOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "stasis",
    version,
    about = "Checkpoint and restore Linux processes"
)]
struct Cli {
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
    },
    /// Restore a process from an images directory, with its original pid.
    Restore {
        #[arg(short = 'D', long = "images")]
        images: PathBuf,
        /// Return as soon as the process runs instead of waiting for it to exit.
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Decode an images directory into JSON.
    Show {
        /// The images directory.
        dir: PathBuf,
    },
    /// Run the demo: start a counter, dump it, kill it, restore it, watch it go on.
    Demo,
    /// Measure dump and restore of a process with --mib MiB of memory against baselines.
    Bench {
        #[arg(long, default_value_t = 256)]
        mib: u64,
    },
    /// The program the benchmark dumps (internal).
    #[command(hide = true)]
    BenchWorkload { mib: u64, ready: PathBuf },
    /// The counter program the demo dumps (internal).
    #[command(hide = true)]
    DemoCounter,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (what, result) = match cli.command {
        Command::Check => ("check", run_check()),
        Command::Dump {
            pid,
            images,
            leave_running,
        } => ("dump", run_dump(pid, images, leave_running)),
        Command::Restore { images, detach } => ("restore", run_restore(images, detach)),
        Command::Show { dir } => ("show", run_show(dir)),
        Command::Demo => ("demo", demo::run()),
        Command::DemoCounter => ("demo-counter", demo::counter()),
        Command::Bench { mib } => ("bench", bench::run(mib)),
        Command::BenchWorkload { mib, ready } => ("bench-workload", bench::workload(mib, &ready)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

type CmdResult = Result<u8, Box<dyn std::error::Error>>;

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

fn run_dump(pid: i32, images: PathBuf, leave_running: bool) -> CmdResult {
    let report = dump(DumpOptions {
        pid,
        pidfd: None,
        images: stasis_engine::ImageDir::create(&images)?,
        leave_running,
        service: None,
    })?;
    eprintln!(
        "dumped pid {} into {}: {} mappings, {} KiB of pages, frozen for {:.1} ms",
        report.pid,
        images.display(),
        report.mappings,
        report.page_bytes / 1024,
        report.frozen.as_secs_f64() * 1e3
    );
    Ok(0)
}

fn run_restore(images: PathBuf, detach: bool) -> CmdResult {
    let restored = restore(&RestoreOptions {
        images: stasis_engine::ImageDir::open(&images)?,
        requester: None,
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
