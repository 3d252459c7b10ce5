//! What `stasis dump` and `stasis restore` report besides their one line: the `--stats FILE`
//! JSON (timings of each phase and sizes, [`write_stats`]) and the progress bar shown on a
//! terminal while a long dump or restore runs ([`Progress`]).
//!
//! The progress bar is driven from outside the engine: every 100 ms it looks at the bytes the
//! pages files hold (dump: a thread, against the target's resident memory) or at the restored
//! processes' resident memory (restore: a helper process, against the pages files' size). It
//! appears only when stderr is a terminal, the images are big (64 MiB) and the command has
//! run for a second, and is cleared when the command ends.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use stasis_engine::timings::Timings;

/// Sizes of an images directory: the pages files, all files, and the processes.
pub struct ImageSizes {
    pub page_bytes: u64,
    pub image_bytes: u64,
    pub processes: usize,
}

/// Reads the sizes of the images in `dir` (files of another kind are left out).
pub fn image_sizes(dir: &Path) -> ImageSizes {
    let mut s = ImageSizes {
        page_bytes: 0,
        image_bytes: 0,
        processes: 0,
    };
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Ok(m) = e.metadata() else { continue };
        if !m.is_file() || !name.ends_with(".img") {
            continue;
        }
        s.image_bytes += m.len();
        if name.starts_with("pages-") {
            s.page_bytes += m.len();
        }
        if name.starts_with("process-") {
            s.processes += 1;
        }
    }
    s
}

fn ms(d: Duration) -> Value {
    json!((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// `{ "<phase>": ms, ... }` in the order the engine recorded them.
fn phases(t: &Timings) -> Value {
    let mut m = Map::new();
    for (name, d) in &t.entries {
        m.insert((*name).to_string(), ms(*d));
    }
    Value::Object(m)
}

/// The rebuild steps of a restore grouped: memory layout, fill, process state, threads, and
/// the last steps (job stop, seccomp, scheduling, final registers).
fn rebuild_groups(t: &Timings) -> Value {
    let group = |step: &str| match step {
        "rebuild.fill pages" => "fill",
        "rebuild.prepare"
        | "rebuild.move vdso/vvar"
        | "rebuild.unmap inherited memory"
        | "rebuild.map memory"
        | "rebuild.set protections"
        | "rebuild.memory advice and locks" => "memory layout",
        "rebuild.create threads" | "rebuild.leader thread state" => "threads",
        "rebuild.job-control stop"
        | "rebuild.seccomp"
        | "rebuild.scheduling"
        | "rebuild.final registers" => "final",
        _ => "process state",
    };
    let mut groups = Timings::default();
    for (name, d) in &t.entries {
        if name.starts_with("rebuild.") {
            groups.add(group(name), *d);
        }
    }
    phases(&groups)
}

/// The `--stats` JSON of a dump.
pub fn dump_stats(
    report: Option<&stasis_engine::DumpReport>,
    images: &Path,
    total: Duration,
) -> Value {
    let sizes = image_sizes(images);
    let mut v = json!({
        "command": "dump",
        "images": images.display().to_string(),
        "total_ms": ms(total),
        "page_bytes": sizes.page_bytes,
        "image_bytes": sizes.image_bytes,
        "processes": sizes.processes,
    });
    match report {
        Some(r) => {
            v["pid"] = json!(r.pid);
            v["mappings"] = json!(r.mappings);
            v["pages_dumped_bytes"] = json!(r.page_bytes);
            v["frozen_ms"] = ms(r.frozen);
            v["phases_ms"] = phases(&r.timings);
        }
        None => v["note"] = json!("dumped through stasisd: no phase timings"),
    }
    v
}

/// The `--stats` JSON of a restore (`restored`: None when the restore ran elsewhere).
pub fn restore_stats(
    restored: Option<&stasis_engine::Restored>,
    images: &Path,
    total: Duration,
) -> Value {
    let sizes = image_sizes(images);
    let mut v = json!({
        "command": "restore",
        "images": images.display().to_string(),
        "total_ms": ms(total),
        "page_bytes": sizes.page_bytes,
        "image_bytes": sizes.image_bytes,
        "processes": sizes.processes,
    });
    match restored {
        Some(r) if !r.timings.entries.is_empty() => {
            v["pid"] = json!(r.pid);
            let (steps, top): (Vec<_>, Vec<_>) = r
                .timings
                .entries
                .iter()
                .partition(|(n, _)| n.starts_with("rebuild."));
            v["phases_ms"] = phases(&Timings { entries: top });
            v["rebuild_ms"] = rebuild_groups(&r.timings);
            v["rebuild_steps_ms"] = phases(&Timings {
                entries: steps
                    .into_iter()
                    .map(|(n, d)| (n.trim_start_matches("rebuild."), d))
                    .collect(),
            });
        }
        Some(r) => {
            v["pid"] = json!(r.pid);
            v["note"] = json!("restored in another process: no phase timings");
        }
        None => v["note"] = json!("no phase timings for this kind of restore"),
    }
    v
}

/// Writes `stats` into `path` (pretty JSON and a newline).
pub fn write_stats(path: &Path, stats: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(stats).map_err(|e| format!("--stats: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("--stats {}: {e}", path.display()))
}

/// What a progress bar follows.
pub enum Follow {
    /// A dump of `pid` into `images`: the pages files grow towards the target's resident
    /// memory.
    Dump { pid: i32, images: PathBuf },
    /// A restore from `images`: the resident memory of the processes it restores grows
    /// towards the pages files' size. Followed from a helper process
    /// ([`follow_restore`], `stasis progress-restore IMAGES`), because the restorer forks and
    /// must stay single-threaded.
    Restore { images: PathBuf },
}

/// Resident memory of `pid` in bytes (0 when unknown).
fn rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// The pids of the processes of the images in `dir` (from the names of their records).
fn image_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_prefix("process-")?
                .strip_suffix(".img")?
                .parse()
                .ok()
        })
        .collect()
}

/// Below this many bytes of pages, no progress bar.
const BAR_MIN_BYTES: u64 = 64 << 20;
/// No progress bar before the command has run this long.
const BAR_DELAY: Duration = Duration::from_secs(1);

/// Shows a bar of `total` bytes on stderr, updated every 100 ms from `done()`, once
/// [`BAR_DELAY`] has passed, until `stop()` says so; then clears it.
fn show_bar(label: &'static str, total: u64, done: impl Fn() -> u64, stop: impl Fn() -> bool) {
    let started = Instant::now();
    let mut bar: Option<indicatif::ProgressBar> = None;
    while !stop() {
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() < BAR_DELAY || total < BAR_MIN_BYTES {
            continue;
        }
        let done = done();
        let b = bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} {bytes}/{total_bytes} {bytes_per_sec} [{wide_bar}]",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label);
            b
        });
        b.set_length(total.max(done));
        b.set_position(done);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// `stasis progress-restore IMAGES` (internal): the progress bar of a restore from IMAGES,
/// run by [`Progress`] as a child of the restorer; it ends when its stdin closes (the
/// restorer ends).
pub fn follow_restore(images: &Path) -> stasis_tools::ToolResult {
    let total = image_sizes(images).page_bytes;
    let pids = image_pids(images);
    // The restorer closes our stdin when the restore ends.
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, Ordering::Relaxed);
    });
    show_bar(
        "restore",
        total,
        || pids.iter().map(|&p| rss(p)).sum(),
        || ended.load(Ordering::Relaxed),
    );
    Ok(0)
}

/// A progress bar on stderr while a dump or restore runs (see the module documentation).
/// Nothing at all unless stderr is a terminal and the images are big.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    helper: Option<std::process::Child>,
    started: Instant,
}

impl Progress {
    /// Starts following `what`, unless stderr is not a terminal.
    pub fn start(what: Follow) -> Progress {
        let mut p = Progress {
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            helper: None,
            started: Instant::now(),
        };
        if !std::io::stderr().is_terminal() {
            return p;
        }
        match what {
            Follow::Dump { pid, images } => {
                let total = rss(pid);
                if total < BAR_MIN_BYTES {
                    return p;
                }
                let flag = p.stop.clone();
                p.thread = Some(std::thread::spawn(move || {
                    show_bar(
                        "dump",
                        total,
                        || image_sizes(&images).page_bytes,
                        || flag.load(Ordering::Relaxed),
                    )
                }));
            }
            Follow::Restore { images } => {
                if image_sizes(&images).page_bytes < BAR_MIN_BYTES {
                    return p;
                }
                p.helper = std::env::current_exe().ok().and_then(|exe| {
                    std::process::Command::new(exe)
                        .arg("progress-restore")
                        .arg(&images)
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::null())
                        .spawn()
                        .ok()
                });
                // The helper must not hold a pid the restore needs.
                if let Some(h) = &mut p.helper {
                    if image_pids(&images).contains(&(h.id() as i32)) {
                        let _ = h.kill();
                        let _ = h.wait();
                        p.helper = None;
                    }
                }
            }
        }
        p
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(mut h) = self.helper.take() {
            if self.started.elapsed() < BAR_DELAY {
                // No bar drawn yet: nothing to clear.
                let _ = h.kill();
            }
            // Else its stdin closes: it clears its bar and ends (within 100 ms).
            drop(h.stdin.take());
            let _ = h.wait();
        }
    }
}
