//! `stasis demo`: starts a counter, dumps it, kills it, restores it, and shows it going on from
//! where it was, with the same pid.

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

type DemoResult = Result<u8, Box<dyn std::error::Error>>;

/// The program being dumped: prints a tick every 200 ms.
pub fn counter() -> DemoResult {
    // Descriptors inherited from whoever started the demo (a build tool's jobserver pipe, say)
    // would tie the counter to processes outside the dump.
    stasis_sys::process::close_range(3, u32::MAX)?;
    let mut out = std::io::stdout().lock();
    let mut n: u64 = 0;
    loop {
        n += 1;
        writeln!(out, "tick {n} from pid {}", std::process::id())?;
        out.flush()?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn show_new_lines(log: &Path, seen: &mut usize) -> std::io::Result<()> {
    let f = std::fs::File::open(log)?;
    for line in std::io::BufReader::new(f).lines().skip(*seen) {
        println!("    | {}", line?);
        *seen += 1;
    }
    Ok(())
}

pub fn run() -> DemoResult {
    let dir = std::env::temp_dir().join(format!("stasis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("counter.log");
    let images = dir.join("images");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("demo-counter")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .current_dir(&dir);
    // The counter leads its own process group in our session; restore runs in this session.
    cmd.process_group(0);
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    println!("started the counter, pid {pid}; its output:");
    let mut seen = 0;
    std::thread::sleep(Duration::from_millis(1100));
    show_new_lines(&log, &mut seen)?;

    let report = stasis_engine::dump(stasis_engine::DumpOptions {
        pid,
        pidfd: None,
        images: stasis_engine::ImageDir::create(&images)?,
        leave_running: false,
        service: None,
    })?;
    let _ = child.wait();
    println!(
        "dumped it into {} ({} mappings, {} KiB of pages, frozen {:.1} ms) and killed it",
        images.display(),
        report.mappings,
        report.page_bytes / 1024,
        report.frozen.as_secs_f64() * 1e3
    );
    std::thread::sleep(Duration::from_millis(600));
    println!("nothing runs now; the log is still:");
    show_new_lines(&log, &mut seen)?;

    let restored = stasis_engine::restore(&stasis_engine::RestoreOptions {
        images: stasis_engine::ImageDir::open(&images)?,
        requester: None,
    })?;
    println!(
        "restored it with pid {}; it goes on counting:",
        restored.pid
    );
    std::thread::sleep(Duration::from_millis(1100));
    show_new_lines(&log, &mut seen)?;
    stasis_sys::process::kill(restored.pid, libc::SIGTERM)?;
    let _ = stasis_engine::restore::wait_exit_code(restored.pid);
    println!("done; images and log are in {}", dir.display());
    Ok(0)
}
