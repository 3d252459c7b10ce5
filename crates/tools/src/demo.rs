//! `stasis demo`: the self-dump demo. It starts an embedded stasisd on a temporary socket and a
//! small counting program that checkpoints itself through the client library; then it kills
//! the counter, restores it from its images, and shows the restored copy going on from where
//! it was — and knowing that it was restored.

use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::ToolResult as DemoResult;

/// The program being dumped: counts, checkpoints itself at tick 5, and counts on.
pub fn counter(images: &Path) -> DemoResult {
    let dir = std::fs::File::open(images)?;
    let mut out = std::io::stdout().lock();
    let mut n: u64 = 0;
    loop {
        n += 1;
        writeln!(out, "tick {n} (pid {})", std::process::id())?;
        if n == 5 {
            writeln!(out, "checkpointing myself through stasisd...")?;
            match stasis_client::dump_self(dir.as_fd(), &stasis_client::DumpOptions::default()) {
                Ok(stasis_client::Outcome::Dumped) => writeln!(
                    out,
                    "dump_self returned 0: my images are written; carrying on"
                )?,
                Ok(stasis_client::Outcome::Restored) => writeln!(
                    out,
                    "dump_self returned 1: I am a restored copy! carrying on from tick {n}"
                )?,
                Err(e) => writeln!(out, "dump_self failed ({}): {e}", e.code())?,
            }
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints the log lines not shown yet.
fn show_new_lines(log: &Path, seen: &mut usize) -> std::io::Result<()> {
    let f = std::fs::File::open(log)?;
    for line in std::io::BufReader::new(f).lines().skip(*seen) {
        println!("    | {}", line?);
        *seen += 1;
    }
    Ok(())
}

fn wait_for_line(log: &Path, needle: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(needle)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "timed out waiting for {needle:?} in {}",
        log.display()
    ))
}

/// `stasis demo`: see the top of this module.
pub fn run() -> DemoResult {
    let dir = std::env::temp_dir().join(format!("stasis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("stasis.sock");
    let log = dir.join("counter.log");
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;

    // The embedded daemon: the same code as stasisd, in a child process, with an image key
    // of its own.
    let key_file = dir.join("key").join("image.key");
    let daemon_args = stasisd::Args {
        socket: socket.clone(),
        mode: 0o600,
        group: None,
        max_workers: 4,
        max_workers_per_uid: None,
        request_deadline: 600,
        log_burst_per_uid: 20,
        log_rate_per_uid: 2,
        verbose: 0,
        key_file: key_file.clone(),
    };
    let daemon = match stasis_sys::process::fork()? {
        stasis_sys::process::Forked::Child(_) => {
            // The daemon's log goes to a file, not between the demo's lines.
            if let Ok(f) = std::fs::File::create(dir.join("stasisd.log")) {
                let _ = stasis_sys::process::redirect_stderr(f.as_fd());
            }
            let code = match stasisd::run(&daemon_args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("stasisd: {e}");
                    1
                }
            };
            stasis_sys::process::exit_now(code);
        }
        stasis_sys::process::Forked::Parent(pid) => pid,
    };
    let result = demo_with_daemon(&socket, &log, &images, &key_file);
    let _ = stasis_sys::process::kill(daemon, libc::SIGTERM);
    let _ = stasis_engine::restore::wait_exit_code(daemon);
    match result {
        Ok(()) => {
            println!("done; images and logs are in {}", dir.display());
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

fn demo_with_daemon(
    socket: &Path,
    log: &Path,
    images: &Path,
    key_file: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err("the embedded stasisd did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("started an embedded stasisd on {}", socket.display());

    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    // Descriptors inherited from whoever started the demo (a build tool's jobserver pipe, say)
    // would tie the counter to processes outside the dump.
    stasis_sys::process::close_inherited_fds_on_exec(&mut cmd);
    cmd.arg("demo-counter")
        .arg(images)
        .env(stasis_client::SOCKET_ENV, socket)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    println!("started a counter (pid {pid}) that checkpoints itself at tick 5:");
    let mut seen = 0;
    let waited = wait_for_line(log, "dump_self returned", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(450));
    show_new_lines(log, &mut seen)?;
    if let Err(e) = waited {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.into());
    }

    stasis_sys::process::kill(pid, libc::SIGKILL)?;
    let _ = child.wait();
    println!(
        "killed the counter; nothing runs now. Restoring it from {}:",
        images.display()
    );
    // The daemon authenticated the images: restore them only if they are unchanged.
    let restored = stasis_engine::restore(&stasis_engine::RestoreOptions {
        images: stasis_engine::ImageDir::open(images)?,
        requester: None,
        new_session: false,
        auth: Some(stasis_engine::auth::load_key(key_file)?),
        require_authenticated: true,
        root_as_sibling: false,
        root_pdeathsig: true,
        replaced_files: stasis_engine::ReplacedFiles::Refuse,
        terminal: None,
        lazy: false,
    })?;
    println!("restored it with pid {}; it goes on:", restored.pid);
    let waited = wait_for_line(log, "I am a restored copy", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(650));
    show_new_lines(log, &mut seen)?;
    stasis_sys::process::kill(restored.pid, libc::SIGTERM)?;
    let _ = stasis_engine::restore::wait_exit_code(restored.pid);
    waited?;
    Ok(())
}
