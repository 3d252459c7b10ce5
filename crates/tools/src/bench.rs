//! `stasis bench`: dump and restore figures for a set of workloads, each next to a baseline
//! measured in the same run on the same machine, so that numbers from different machines (and
//! from CRIU, when `$CRIU_BIN` names a CRIU ≥ 4.1) can be compared as ratios.
//!
//! Workloads ([`workload`], [`tree_workload`]): processes with 64 MiB, 256 MiB and 1 GiB of
//! touched memory (a third random data, a third one repeated page, a third zero pages, in
//! 256 KiB stretches), a multi-threaded process, a tree of small processes ([`run_tree`]), and
//! a 1 MiB process for the fixed cost of a dump and a restore. Each workload runs a
//! thread that watches the clock (`Watcher`): it reads CLOCK_MONOTONIC every ~100 µs and
//! remembers the largest gap between two readings; the benchmark asks for that gap through a
//! file before and after a dump (`GapProbe`), which gives the stall the application saw.
//!
//! Figures, each the median of `--runs` runs: the leave-running dump's time and throughput,
//! the stall, the frozen time the engine reports, the image size, the restore time until the
//! process runs, and its throughput. Baselines: memcpy, process_vm_readv of the workload's
//! memory, writing those bytes to the images' filesystem (without and with fsync), reading
//! them back into new memory. The output is one table per workload, with rows
//! `  <figure name>  <value> <unit> [<GB/s> GB/s] [<ratio>x <baseline>]` (see `Row`), which
//! the CI test parses.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ToolResult as BenchResult;

/// What `stasis bench` runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Sizes of the single-threaded memory workloads, in MiB.
    pub sizes_mib: Vec<u64>,
    /// The multi-threaded workload: total MiB and threads (None: skipped).
    pub threaded: Option<(u64, u32)>,
    /// The tree: processes and threads per process (None: skipped).
    pub tree: Option<(u32, u32)>,
    /// Runs per figure (the median is printed).
    pub runs: usize,
}

impl BenchOptions {
    /// The full benchmark: 64 MiB, 256 MiB, 1 GiB, 64 MiB in 8 threads, a tree of 50
    /// processes, 3 runs each.
    pub fn full() -> BenchOptions {
        BenchOptions {
            sizes_mib: vec![64, 256, 1024],
            threaded: Some((64, 8)),
            tree: Some((50, 10)),
            runs: 3,
        }
    }

    /// `--quick`: small sizes, one run; seconds (for CI: it catches breakage, not slowness).
    pub fn quick() -> BenchOptions {
        BenchOptions {
            sizes_mib: vec![8],
            threaded: Some((8, 4)),
            tree: Some((5, 2)),
            runs: 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workloads' side.

/// Size of the stretches of each kind of data in a workload's memory.
const STRETCH: usize = 256 << 10;
const PAGE: usize = 4096;

/// Fills `mem` with mixed data: 256 KiB stretches of random data, of one repeated page, and of
/// zero pages, in turn; every page is touched (written), zero pages included.
fn fill_mixed(mem: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    let mut pattern = [0u8; PAGE];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    for (i, stretch) in mem.chunks_mut(STRETCH).enumerate() {
        match i % 3 {
            0 => {
                for chunk in stretch.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let n = chunk.len();
                    chunk.copy_from_slice(&x.to_le_bytes()[..n]);
                }
            }
            1 => {
                for page in stretch.chunks_mut(PAGE) {
                    let n = page.len();
                    page.copy_from_slice(&pattern[..n]);
                }
            }
            _ => {
                // Zero pages, but present: write a zero into each.
                for page in stretch.chunks_mut(PAGE) {
                    // black_box keeps the write (the allocation is already zero).
                    page[0] = std::hint::black_box(0);
                }
            }
        }
    }
}

/// The clock watcher of a workload: a thread that reads the clock every ~100 µs, keeps the
/// largest gap between two readings, and answers requests: when the file `req` holds a new
/// number N, it writes `N <largest gap in ns>` into the file `gap` (atomically) and starts
/// over. It checks for requests every ~5 ms and holds no descriptor open in between.
struct Watcher;

impl Watcher {
    fn start(ready: &Path) {
        let (req, gap) = probe_paths(ready);
        std::thread::spawn(move || {
            let mut last = Instant::now();
            let mut max = Duration::ZERO;
            // When the largest gap ended (wall clock, to find it in a `-v` log).
            let mut max_end = std::time::SystemTime::now();
            let mut answered: Option<u64> = None;
            let mut n: u64 = 0;
            loop {
                std::thread::sleep(Duration::from_micros(100));
                let now = Instant::now();
                if now - last > max {
                    max = now - last;
                    max_end = std::time::SystemTime::now();
                }
                last = now;
                n += 1;
                if !n.is_multiple_of(50) {
                    continue;
                }
                let Some(seq) = std::fs::read_to_string(&req)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                else {
                    continue;
                };
                if answered == Some(seq) {
                    continue;
                }
                answered = Some(seq);
                let tmp = gap.with_extension("gap-tmp");
                let end = max_end
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_micros();
                if std::fs::write(&tmp, format!("{seq} {} {end}\n", max.as_nanos())).is_ok() {
                    let _ = std::fs::rename(&tmp, &gap);
                }
                max = Duration::ZERO;
                last = Instant::now();
            }
        });
    }
}

/// The request and answer files of a workload's watcher, next to its `ready` file.
fn probe_paths(ready: &Path) -> (PathBuf, PathBuf) {
    (ready.with_extension("req"), ready.with_extension("gap"))
}

/// The program the benchmark dumps: `mib` MiB of mixed memory (`fill_mixed`) spread over
/// `threads` threads (each allocates and fills its share), a clock watcher, then idle. Writes
/// `ready` once everything is touched: one line `ADDR LEN` per memory area.
pub fn workload(mib: u64, threads: u32, ready: &Path) -> BenchResult {
    let threads = threads.max(1) as u64;
    let share = ((mib << 20) / threads) as usize / PAGE * PAGE;
    let (tx, rx) = std::sync::mpsc::channel::<(usize, usize)>();
    for t in 1..threads {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut mem = vec![0u8; share];
            fill_mixed(&mut mem, 0x9e37_79b9_7f4a_7c15 ^ t);
            let _ = tx.send((mem.as_ptr() as usize, mem.len()));
            loop {
                std::thread::sleep(Duration::from_millis(100));
                std::hint::black_box(&mem);
            }
        });
    }
    let mut mem = vec![0u8; share];
    fill_mixed(&mut mem, 0x9e37_79b9_7f4a_7c15);
    let mut areas = vec![(mem.as_ptr() as usize, mem.len())];
    for _ in 1..threads {
        areas.push(rx.recv()?);
    }
    Watcher::start(ready);
    let text: String = areas.iter().map(|(a, l)| format!("{a:#x} {l}\n")).collect();
    let tmp = ready.with_extension("ready-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, ready)?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        std::hint::black_box(&mem);
    }
}

/// Starts this binary with a hidden workload subcommand (`args`, then the `ready` file it
/// reports to), in a process group of its own so the whole workload can be killed at once.
/// Every descriptor the workload would inherit above stderr is closed when it starts.
fn spawn_workload(args: &[&str], ready: &Path) -> std::io::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    stasis_sys::process::close_inherited_fds_on_exec(&mut cmd)
        .args(args)
        .arg(ready)
        .stdin(std::process::Stdio::null())
        // Inherited stdout/stderr (a pipe to `less`, say) would tie the workload to a process
        // outside the dump, which refuses it.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// Asks a workload's watcher for the largest clock gap it saw since the previous request.
struct GapProbe {
    req: PathBuf,
    gap: PathBuf,
    seq: u64,
}

impl GapProbe {
    fn new(ready: &Path) -> GapProbe {
        let (req, gap) = probe_paths(ready);
        GapProbe { req, gap, seq: 0 }
    }

    /// The largest gap since the previous call (the first call just starts the count).
    fn take(&mut self) -> Result<Duration, Box<dyn std::error::Error>> {
        self.seq += 1;
        let tmp = self.req.with_extension("req-tmp");
        std::fs::write(&tmp, format!("{}\n", self.seq))?;
        std::fs::rename(&tmp, &self.req)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = std::fs::read_to_string(&self.gap) {
                let mut it = s.split_whitespace();
                if it.next().and_then(|n| n.parse::<u64>().ok()) == Some(self.seq) {
                    let ns: u64 = it.next().unwrap_or("0").parse()?;
                    let end_us: u64 = it.next().unwrap_or("0").parse()?;
                    tracing::debug!(
                        "workload's largest clock gap: {:.2} ms, ended at {}.{:06} (Unix time)",
                        ns as f64 / 1e6,
                        end_us / 1_000_000,
                        end_us % 1_000_000
                    );
                    return Ok(Duration::from_nanos(ns));
                }
            }
            if Instant::now() > deadline {
                return Err("the workload's clock watcher did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// One figure of a table: a time (with the bytes it moved, for a throughput, and the
/// baseline it is compared with), a size, or nothing (with why).
#[derive(Debug, Clone)]
enum Fig {
    Time {
        t: Duration,
        bytes: Option<u64>,
        /// The baseline's time and name: the ratio printed is baseline / this (the share of
        /// the baseline's speed this reaches), or this / reference for `Share`.
        vs: Option<(Duration, &'static str)>,
    },
    /// This time as a share of another (the stall as a share of the dump).
    Share {
        t: Duration,
        of: Duration,
        what: &'static str,
    },
    /// A size, with the touched memory it holds when known.
    Size { bytes: u64, of: Option<u64> },
}

impl Fig {
    fn render(&self) -> String {
        match self {
            Fig::Time { t, bytes, vs } => {
                let mut s = format!("{:>10.2} ms", t.as_secs_f64() * 1e3);
                if let Some(b) = bytes {
                    s += &format!(" {:>7.2} GB/s", gbps(*b, *t));
                }
                if let Some((base, name)) = vs {
                    s += &format!(
                        "  {:.2}x {name}",
                        base.as_secs_f64() / t.as_secs_f64().max(1e-9)
                    );
                }
                s
            }
            Fig::Share { t, of, what } => format!(
                "{:>10.2} ms  {:.2}x {what}",
                t.as_secs_f64() * 1e3,
                t.as_secs_f64() / of.as_secs_f64().max(1e-9)
            ),
            Fig::Size { bytes, of } => {
                let mut s = format!("{:>10.2} MiB", *bytes as f64 / (1 << 20) as f64);
                if let Some(of) = of {
                    s += &format!("  {:.2}x touched", *bytes as f64 / (*of).max(1) as f64);
                }
                s
            }
        }
    }
}

/// A row of a table: a figure of stasis's, and CRIU's next to it when CRIU ran.
struct Row {
    name: &'static str,
    stasis: Fig,
    criu: Option<Fig>,
}

fn print_table(rows: &[Row]) {
    for r in rows {
        let mut line = format!("  {:<36} {}", r.name, r.stasis.render());
        if let Some(c) = &r.criu {
            let pad = 70usize.saturating_sub(line.len());
            line += &format!("{}  | criu {}", " ".repeat(pad), c.render().trim_start());
        }
        println!("{line}");
    }
    let _ = std::io::stdout().flush();
}

/// The CRIU to compare with: `$CRIU_BIN` when it is a CRIU ≥ 4.1, else why not.
fn find_criu() -> Result<PathBuf, String> {
    let Some(bin) = std::env::var_os("CRIU_BIN") else {
        return Err("CRIU_BIN is not set".into());
    };
    let bin = PathBuf::from(bin);
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {} --version: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(str::trim)
        .ok_or_else(|| format!("{} --version does not say its version", bin.display()))?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (4, 1) {
        return Err(format!(
            "{} is CRIU {version}; 4.1 or newer is needed ([vvar_vclock])",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Runs CRIU with `args`; an error carries the tail of its log.
fn run_criu(bin: &Path, args: &[&str], dir: &Path, log: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let status = std::process::Command::new(bin)
        .args(args)
        .arg("-D")
        .arg(dir)
        .args(["-o", log])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let took = t.elapsed();
    if !status.success() {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        return Err(format!("criu {} failed: {}", args[0], tail.join(" / ")));
    }
    Ok(took)
}

/// Total size of the files in `dir` (apparent sizes: a hole costs nothing only if the format
/// leaves it out).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until `ready` exists and returns its content.
fn wait_ready(ready: &Path, timeout: Duration) -> Result<String, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(ready) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(format!("the workload did not get ready in {timeout:?}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `stasis bench`.
pub fn run(opts: &BenchOptions) -> BenchResult {
    let base = std::env::temp_dir().join(format!("stasis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    // Restored processes and those CRIU restores come back to us, to be reaped.
    let _ = stasis_sys::process::set_child_subreaper(true);
    let criu = find_criu();
    println!(
        "stasis bench: images in {}; median of {} run(s); {}",
        base.display(),
        opts.runs.max(1),
        match &criu {
            Ok(bin) => format!("CRIU: {}", bin.display()),
            Err(why) => format!("CRIU skipped: {why}"),
        }
    );
    let criu = criu.ok();
    let result = (|| -> BenchResult {
        // First, while this process is small: the engine's restore forks its restore children
        // from it, and a fork copies its page tables, which the big workloads' buffers grow
        // (measured after them, the engine's restore of 1 MiB took 9-12 ms instead of 2.5).
        run_fixed(&base, opts.runs)?;
        for &mib in &opts.sizes_mib {
            run_memory(&base, mib, 1, opts.runs, criu.as_deref())?;
        }
        if let Some((mib, threads)) = opts.threaded {
            run_memory(&base, mib, threads, opts.runs, criu.as_deref())?;
        }
        if let Some((procs, threads)) = opts.tree {
            run_tree_in(&base, procs, threads, opts.runs)?;
        }
        Ok(0)
    })();
    let _ = std::fs::remove_dir_all(&base);
    result
}

/// Kills the workload's process group and reaps everything that comes back to us.
fn kill_and_reap(child: &mut std::process::Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return; // done before: its pid may belong to a restored process by now
    }
    let pid = child.id() as i32;
    let _ = stasis_sys::process::kill(-pid, libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
    reap_until_none();
}

/// Waits (at most 10 s) until no child is left: killed processes of a tree come back to us (we
/// are their subreaper) only once SIGKILL has ended them, some time after the signal is sent,
/// and each zombie holds a pid the next restore needs.
fn reap_until_none() {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        match stasis_sys::ptrace::waitpid_nohang(-1) {
            Ok(Some(_)) => {}
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return, // ECHILD: nothing left
        }
    }
}

/// Reaps every child that has ended (zombies hold their pids, which a restore needs).
fn reap_all() {
    while let Ok(Some(_)) = stasis_sys::ptrace::waitpid_nohang(-1) {}
}

/// Kills a restored process (ours, by the subreaper flag) and waits for it.
fn kill_restored(pid: i32) {
    let _ = stasis_sys::process::kill(pid, libc::SIGKILL);
    let _ = stasis_engine::restore::wait_exit_code(pid);
    reap_all();
}

/// The baselines of a workload whose memory is `areas` in process `pid`.
struct Baselines {
    memcpy: Duration,
    readv: Duration,
    write: Duration,
    write_fsync: Duration,
    read_back: Duration,
}

fn measure_baselines(
    dir: &Path,
    pid: i32,
    areas: &[(u64, u64)],
    runs: usize,
) -> Result<Baselines, Box<dyn std::error::Error>> {
    let bytes: u64 = areas.iter().map(|a| a.1).sum();
    let (mut memcpy, mut readv, mut write, mut write_fsync, mut read_back) =
        (vec![], vec![], vec![], vec![], vec![]);
    let raw = dir.join("baseline.bin");
    for run in 0..runs {
        // memcpy of the same size, between touched buffers.
        {
            let src = vec![1u8; bytes as usize];
            let mut dst = vec![2u8; bytes as usize];
            let t = Instant::now();
            dst.copy_from_slice(&src);
            memcpy.push(t.elapsed());
            std::hint::black_box(&dst);
        }
        // process_vm_readv alone, 2 MiB at a time into a reused buffer.
        let mut buf = vec![0u8; 2 << 20];
        let t = Instant::now();
        for &(addr, len) in areas {
            let mut off = 0;
            while off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                stasis_sys::proc_mem::read_exact(pid, addr + off, &mut buf[..n])?;
                off += n as u64;
            }
        }
        readv.push(t.elapsed());
        // The same bytes written to the images' filesystem: the write calls alone (without
        // fsync), and the same with an fsync at the end; which goes first alternates from run
        // to run (the first write of a run meets the dirty pages of what ran before). Written
        // as the images are, at most `WRITE_PIECE` bytes a call (bigger writes took 20 times
        // longer at times on this VM: see there).
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for sync in order {
            let _ = std::fs::remove_file(&raw);
            let out = std::fs::File::create(&raw)?;
            let mut spent = Duration::ZERO;
            let mut pos = 0u64;
            for &(addr, len) in areas {
                let mut off = 0;
                while off < len {
                    let n = (len - off).min(buf.len() as u64) as usize;
                    stasis_sys::proc_mem::read_exact(pid, addr + off, &mut buf[..n])?;
                    let t = Instant::now();
                    for (i, piece) in buf[..n].chunks(stasis_image::WRITE_PIECE).enumerate() {
                        out.write_all_at(piece, pos + (i * stasis_image::WRITE_PIECE) as u64)?;
                    }
                    spent += t.elapsed();
                    off += n as u64;
                    pos += n as u64;
                }
            }
            if sync {
                let t = Instant::now();
                out.sync_all()?;
                spent += t.elapsed();
                write_fsync.push(spent);
            } else {
                write.push(spent);
            }
        }
        // Read back (page cache) into new memory: what a restore must at least do.
        {
            let file = std::fs::File::open(&raw)?;
            let t = Instant::now();
            let mut mem = vec![0u8; bytes as usize];
            let mut off = 0usize;
            while off < mem.len() {
                let n = file.read_at(&mut mem[off..], off as u64)?;
                if n == 0 {
                    break;
                }
                off += n;
            }
            read_back.push(t.elapsed());
            std::hint::black_box(&mem);
        }
        std::fs::remove_file(&raw)?;
    }
    Ok(Baselines {
        memcpy: median(memcpy),
        readv: median(readv),
        write: median(write),
        write_fsync: median(write_fsync),
        read_back: median(read_back),
    })
}

/// One memory workload: `mib` MiB over `threads` threads, dumped (left running) and restored
/// `runs` times by stasis, and by CRIU when `criu` is given.
fn run_memory(
    base: &Path,
    mib: u64,
    threads: u32,
    runs: usize,
    criu: Option<&Path>,
) -> BenchResult {
    let runs = runs.max(1);
    let dir = base.join(format!("mem-{mib}-{threads}"));
    std::fs::create_dir_all(&dir)?;
    let ready = dir.join("ready");
    let mut child = spawn_workload(
        &[
            "bench-workload",
            &mib.to_string(),
            "--threads",
            &threads.to_string(),
        ],
        &ready,
    )?;
    let pid = child.id() as i32;
    let result = (|| -> BenchResult {
        let info = wait_ready(&ready, Duration::from_secs(300))?;
        let areas: Vec<(u64, u64)> = info
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
                Some((addr, it.next()?.parse().ok()?))
            })
            .collect();
        let bytes: u64 = areas.iter().map(|a| a.1).sum();
        let name = if threads > 1 {
            format!("{mib} MiB in {threads} threads")
        } else {
            format!("{mib} MiB")
        };
        println!(
            "\n== {name}: {:.0} MiB touched (1/3 random, 1/3 repeated page, 1/3 zero pages)",
            bytes as f64 / (1 << 20) as f64
        );
        let b = measure_baselines(&dir, pid, &areas, runs)?;
        let readv_write = b.readv + b.write;
        print_table(&[
            Row {
                name: "baseline memcpy",
                stasis: Fig::Time {
                    t: b.memcpy,
                    bytes: Some(bytes),
                    vs: None,
                },
                criu: None,
            },
            Row {
                name: "baseline process_vm_readv",
                stasis: Fig::Time {
                    t: b.readv,
                    bytes: Some(bytes),
                    vs: None,
                },
                criu: None,
            },
            Row {
                name: "baseline write (no fsync)",
                stasis: Fig::Time {
                    t: b.write,
                    bytes: Some(bytes),
                    vs: None,
                },
                criu: None,
            },
            Row {
                name: "baseline write + fsync",
                stasis: Fig::Time {
                    t: b.write_fsync,
                    bytes: Some(bytes),
                    vs: None,
                },
                criu: None,
            },
            Row {
                name: "baseline readv + write",
                stasis: Fig::Time {
                    t: readv_write,
                    bytes: Some(bytes),
                    vs: None,
                },
                criu: None,
            },
            Row {
                name: "baseline read back into new memory",
                stasis: Fig::Time {
                    t: b.read_back,
                    bytes: Some(bytes),
                    vs: None,
                },
                criu: None,
            },
        ]);

        let mut probe = GapProbe::new(&ready);
        probe.take()?;
        std::thread::sleep(Duration::from_millis(100));
        let at_rest = probe.take()?;

        // stasis: dumps left running.
        let images = dir.join("images");
        let (mut dump_t, mut stall, mut frozen) = (vec![], vec![], vec![]);
        for _ in 0..runs {
            let _ = std::fs::remove_dir_all(&images);
            probe.take()?;
            let t = Instant::now();
            let report = stasis_engine::dump(stasis_engine::DumpOptions {
                pid,
                pidfd: None,
                images: stasis_engine::ImageDir::create(&images)?,
                leave_running: true,
                service: None,
                tree: true,
                admit: None,
                tcp: Default::default(),
                auth: None,
                unix_peers_closed: false,
                pre_copy: true,
                parent: None,
                compress: None,
            })?;
            dump_t.push(t.elapsed());
            stall.push(probe.take()?);
            frozen.push(report.frozen);
        }
        let image_bytes = dir_bytes(&images);

        // CRIU: the same dumps.
        let criu_dir = dir.join("criu");
        let mut criu_dump = None;
        if let Some(bin) = criu {
            let (mut d, mut s) = (vec![], vec![]);
            let mut failed = None;
            for _ in 0..runs {
                let _ = std::fs::remove_dir_all(&criu_dir);
                std::fs::create_dir_all(&criu_dir)?;
                probe.take()?;
                match run_criu(
                    bin,
                    &[
                        "dump",
                        "-t",
                        &pid.to_string(),
                        "--leave-running",
                        "--shell-job",
                    ],
                    &criu_dir,
                    "dump.log",
                ) {
                    Ok(t) => d.push(t),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                s.push(probe.take()?);
            }
            match failed {
                Some(e) => println!("  (criu: {e})"),
                None => criu_dump = Some((median(d), median(s), dir_bytes(&criu_dir))),
            }
        }

        // Restores need the pid free: the workload goes.
        kill_and_reap(&mut child);
        let mut restore_t = vec![];
        for _ in 0..runs {
            let t = Instant::now();
            let restored = engine_restore(&images, false)?;
            restore_t.push(t.elapsed());
            kill_restored(restored.pid);
        }
        let mut criu_restore = None;
        if let (Some(bin), Some(_)) = (criu, &criu_dump) {
            let mut r = vec![];
            for _ in 0..runs {
                match run_criu(
                    bin,
                    &["restore", "-d", "--shell-job"],
                    &criu_dir,
                    "restore.log",
                ) {
                    Ok(t) => {
                        r.push(t);
                        kill_restored(pid);
                    }
                    Err(e) => {
                        println!("  (criu: {e})");
                        break;
                    }
                }
            }
            if r.len() == runs {
                criu_restore = Some(median(r));
            }
        }

        let dump_m = median(dump_t);
        let restore_m = median(restore_t);
        let criu_fig = |f: &dyn Fn(&(Duration, Duration, u64)) -> Fig| criu_dump.as_ref().map(f);
        print_table(&[
            Row {
                name: "dump, left running",
                stasis: Fig::Time {
                    t: dump_m,
                    bytes: Some(bytes),
                    vs: Some((readv_write, "readv+write")),
                },
                criu: criu_fig(&|c| Fig::Time {
                    t: c.0,
                    bytes: Some(bytes),
                    vs: Some((readv_write, "readv+write")),
                }),
            },
            Row {
                name: "dump vs baseline with fsync",
                stasis: Fig::Time {
                    t: dump_m,
                    bytes: None,
                    vs: Some((b.readv + b.write_fsync, "readv+write+fsync")),
                },
                criu: criu_fig(&|c| Fig::Time {
                    t: c.0,
                    bytes: None,
                    vs: Some((b.readv + b.write_fsync, "readv+write+fsync")),
                }),
            },
            Row {
                name: "stall seen by the application",
                stasis: Fig::Share {
                    t: median(stall),
                    of: dump_m,
                    what: "of the dump",
                },
                criu: criu_fig(&|c| Fig::Share {
                    t: c.1,
                    of: c.0,
                    what: "of the dump",
                }),
            },
            Row {
                name: "largest clock gap at rest",
                stasis: Fig::Time {
                    t: at_rest,
                    bytes: None,
                    vs: None,
                },
                criu: None,
            },
            Row {
                name: "frozen (engine's figure)",
                stasis: Fig::Share {
                    t: median(frozen),
                    of: dump_m,
                    what: "of the dump",
                },
                criu: None,
            },
            Row {
                name: "image size",
                stasis: Fig::Size {
                    bytes: image_bytes,
                    of: Some(bytes),
                },
                criu: criu_fig(&|c| Fig::Size {
                    bytes: c.2,
                    of: Some(bytes),
                }),
            },
            Row {
                name: "restore, until it runs",
                stasis: Fig::Time {
                    t: restore_m,
                    bytes: Some(bytes),
                    vs: Some((b.read_back, "read back")),
                },
                criu: criu_restore.map(|t| Fig::Time {
                    t,
                    bytes: Some(bytes),
                    vs: Some((b.read_back, "read back")),
                }),
            },
            Row {
                name: "lazy restore, to first instruction",
                stasis: Fig::Time {
                    t: lazy_restore(&images, runs)?,
                    bytes: None,
                    vs: Some((restore_m, "eager restore")),
                },
                criu: None,
            },
        ]);
        Ok(0)
    })();
    kill_and_reap(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A restore of `images` by the engine in this process, as `stasis restore [--lazy]` does it.
fn engine_restore(
    images: &Path,
    lazy: bool,
) -> Result<stasis_engine::Restored, Box<dyn std::error::Error>> {
    Ok(stasis_engine::restore(&stasis_engine::RestoreOptions {
        images: stasis_engine::ImageDir::open(images)?,
        requester: None,
        new_session: false,
        require_authenticated: false,
        auth: None,
        root_as_sibling: false,
        root_pdeathsig: true,
        replaced_files: stasis_engine::ReplacedFiles::Refuse,
        terminal: None,
        lazy,
    })?)
}

/// The time of a lazy restore (`stasis restore --lazy`) of `images` until the process runs
/// (median of `runs`): its pages are then still arriving, pushed by the page server.
fn lazy_restore(images: &Path, runs: usize) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut t_all = vec![];
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let restored = engine_restore(images, true)?;
        t_all.push(t.elapsed());
        // The page server sees its process die and exits.
        kill_restored(restored.pid);
    }
    Ok(median(t_all))
}

// ---------------------------------------------------------------------------------------------
// The fixed cost.

/// The fixed cost: a workload of 1 MiB (two threads: it watches the clock) dumped (killed
/// after) and restored by the `stasis` command, as a user runs it (the time includes starting
/// the command), and by the engine in this process.
fn run_fixed(base: &Path, runs: usize) -> BenchResult {
    let runs = runs.max(1);
    let dir = base.join("fixed");
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    println!("\n== fixed cost: 1 MiB, dumped (killed after) and restored");
    let (mut cli_dump, mut cli_restore, mut eng_dump, mut eng_restore) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        for via_cli in [true, false] {
            let ready = dir.join("ready");
            let _ = std::fs::remove_file(&ready);
            let mut child = spawn_workload(&["bench-workload", "1"], &ready)?;
            let pid = child.id() as i32;
            let result = (|| -> BenchResult {
                wait_ready(&ready, Duration::from_secs(60))?;
                let images = dir.join("images");
                let _ = std::fs::remove_dir_all(&images);
                let t = Instant::now();
                if via_cli {
                    let out = std::process::Command::new(&exe)
                        .args(["dump", "--no-auth", "-t", &pid.to_string(), "-D"])
                        .arg(&images)
                        .stdin(std::process::Stdio::null())
                        .output()?;
                    cli_dump.push(t.elapsed());
                    if !out.status.success() {
                        return Err(format!(
                            "stasis dump: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        )
                        .into());
                    }
                } else {
                    stasis_engine::dump(stasis_engine::DumpOptions {
                        pid,
                        pidfd: None,
                        images: stasis_engine::ImageDir::create(&images)?,
                        leave_running: false,
                        service: None,
                        tree: true,
                        admit: None,
                        tcp: Default::default(),
                        auth: None,
                        unix_peers_closed: false,
                        pre_copy: true,
                        parent: None,
                        compress: None,
                    })?;
                    eng_dump.push(t.elapsed());
                }
                let _ = child.wait();
                reap_all();
                let t = Instant::now();
                let restored = if via_cli {
                    let out = std::process::Command::new(&exe)
                        .args(["restore", "--no-auth", "-d", "-D"])
                        .arg(&images)
                        .stdin(std::process::Stdio::null())
                        .output()?;
                    cli_restore.push(t.elapsed());
                    if !out.status.success() {
                        return Err(format!(
                            "stasis restore: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        )
                        .into());
                    }
                    String::from_utf8_lossy(&out.stdout).trim().parse::<i32>()?
                } else {
                    let r = engine_restore(&images, false)?;
                    eng_restore.push(t.elapsed());
                    r.pid
                };
                kill_restored(restored);
                Ok(0)
            })();
            kill_and_reap(&mut child);
            result?;
        }
    }
    let row = |name, v: Vec<Duration>| Row {
        name,
        stasis: Fig::Time {
            t: median(v),
            bytes: None,
            vs: None,
        },
        criu: None,
    };
    print_table(&[
        row("dump by `stasis dump`", cli_dump),
        row("restore by `stasis restore -d`", cli_restore),
        row("dump by the engine", eng_dump),
        row("restore by the engine", eng_restore),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// The tree.

/// The tree the benchmark freezes: `procs` processes (the root and its children) with
/// `threads` threads each, all idle, little memory; the root watches the clock.
pub fn tree_workload(procs: u32, threads: u32, ready: &Path) -> BenchResult {
    // Fork every child first, while this process is single-threaded.
    let mut root = true;
    for _ in 1..procs {
        if let stasis_sys::process::Forked::Child(_) = stasis_sys::process::fork()? {
            root = false;
            break;
        }
    }
    for _ in 1..threads {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
        });
    }
    if root {
        Watcher::start(ready);
    }
    // Each process reports itself once its threads run.
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ready)
        .and_then(|mut f| writeln!(f, "{}", std::process::id()));
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `stasis bench`'s tree alone, as before: `procs` processes of `threads` threads, one run.
pub fn run_tree(procs: u32, threads: u32) -> BenchResult {
    let base = std::env::temp_dir().join(format!("stasis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    let _ = stasis_sys::process::set_child_subreaper(true);
    let r = run_tree_in(&base, procs, threads, 1);
    let _ = std::fs::remove_dir_all(&base);
    r
}

/// Freezing, dumping (left running) and restoring a tree of `procs` processes with `threads`
/// threads each, against a plain freeze and thaw of the same tree.
fn run_tree_in(base: &Path, procs: u32, threads: u32, runs: usize) -> BenchResult {
    let runs = runs.max(1);
    let dir = base.join("tree");
    std::fs::create_dir_all(&dir)?;
    let ready = dir.join("ready");
    let mut child = spawn_workload(
        &[
            "bench-tree-workload",
            &procs.to_string(),
            &threads.to_string(),
        ],
        &ready,
    )?;
    let pid = child.id() as i32;
    let result = (|| -> BenchResult {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(&ready)
            .map(|s| s.lines().count())
            .unwrap_or(0)
            < procs as usize
        {
            if Instant::now() > deadline {
                return Err("the tree workload did not get ready".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("\n== tree: {procs} processes of {threads} threads");
        let (mut base_t, mut freeze_t) = (vec![], vec![]);
        let mut n_threads = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let mut tree = stasis_engine::dump::freeze::FrozenTree::freeze(pid)?;
            freeze_t.push(t.elapsed());
            n_threads = tree
                .processes
                .iter()
                .map(|p| p.threads.len())
                .sum::<usize>();
            tree.thaw()?;
            drop(tree);
            base_t.push(t.elapsed());
        }
        let baseline = median(base_t);
        let mut probe = GapProbe::new(&ready);
        let images = dir.join("images");
        let (mut dump_t, mut stall, mut frozen) = (vec![], vec![], vec![]);
        let mut processes = 0;
        for _ in 0..runs {
            let _ = std::fs::remove_dir_all(&images);
            probe.take()?;
            let t = Instant::now();
            let report = stasis_engine::dump(stasis_engine::DumpOptions {
                pid,
                pidfd: None,
                images: stasis_engine::ImageDir::create(&images)?,
                leave_running: true,
                service: None,
                tree: true,
                admit: None,
                tcp: Default::default(),
                auth: None,
                unix_peers_closed: false,
                pre_copy: true,
                parent: None,
                compress: None,
            })?;
            dump_t.push(t.elapsed());
            stall.push(probe.take()?);
            frozen.push(report.frozen);
            processes = report.processes;
        }
        let image_bytes = dir_bytes(&images);
        kill_and_reap(&mut child);
        let mut restore_t = vec![];
        for _ in 0..runs {
            let t = Instant::now();
            let restored = engine_restore(&images, false)?;
            restore_t.push(t.elapsed());
            // The whole restored tree is in the root's process group.
            let _ = stasis_sys::process::kill(-restored.pid, libc::SIGKILL);
            kill_restored(restored.pid);
            // Its other processes come back to us as they die.
            reap_until_none();
        }
        let dump_m = median(dump_t);
        println!("  ({processes} processes, {n_threads} threads)");
        print_table(&[
            Row {
                name: "baseline freeze + thaw of the tree",
                stasis: Fig::Time {
                    t: baseline,
                    bytes: None,
                    vs: None,
                },
                criu: None,
            },
            Row {
                name: "freeze alone",
                stasis: Fig::Time {
                    t: median(freeze_t),
                    bytes: None,
                    vs: None,
                },
                criu: None,
            },
            Row {
                name: "dump, left running",
                stasis: Fig::Time {
                    t: dump_m,
                    bytes: None,
                    vs: Some((baseline, "freeze+thaw")),
                },
                criu: None,
            },
            Row {
                name: "stall seen by the application",
                stasis: Fig::Share {
                    t: median(stall),
                    of: dump_m,
                    what: "of the dump",
                },
                criu: None,
            },
            Row {
                name: "frozen (engine's figure)",
                stasis: Fig::Share {
                    t: median(frozen),
                    of: dump_m,
                    what: "of the dump",
                },
                criu: None,
            },
            Row {
                name: "image size",
                stasis: Fig::Size {
                    bytes: image_bytes,
                    of: None,
                },
                criu: None,
            },
            Row {
                name: "restore, until it runs",
                stasis: Fig::Time {
                    t: median(restore_t),
                    bytes: None,
                    vs: None,
                },
                criu: None,
            },
        ]);
        Ok(0)
    })();
    kill_and_reap(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
