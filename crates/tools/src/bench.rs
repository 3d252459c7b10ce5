//! `stasis bench`: dump and restore figures for a process with N MiB of memory, each next to a
//! baseline measured in the same run on the same machine (memcpy; keyed BLAKE3, the MAC of
//! authenticated images; process_vm_readv + write to the images' filesystem), so that numbers
//! from different machines can be compared as ratios. The dump is authenticated, as stasisd's
//! are; it is restored twice: as root restores by default without a key, and with every byte
//! checked against its MAC, as stasisd restores for users.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::ToolResult as BenchResult;

/// The program the benchmark dumps: N MiB of non-zero memory, then idle.
pub fn workload(mib: u64, ready: &Path) -> BenchResult {
    let len = (mib << 20) as usize;
    let mut mem = vec![0u8; len];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in mem.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(ready, format!("{:p} {}\n", mem.as_ptr(), mem.len()))?;
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

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// `stasis bench`: the memory benchmark with `mib` MiB ([`run_memory`]), then the tree-freeze
/// benchmark with `tree_processes` processes of `tree_threads` threads each ([`run_tree`]).
pub fn run(mib: u64, tree_processes: u32, tree_threads: u32) -> BenchResult {
    run_memory(mib).and_then(|_| run_tree(tree_processes, tree_threads))
}

/// Dump and restore of a process with `mib` MiB of non-zero memory, against memcpy and
/// process_vm_readv + write + fsync of the same memory.
pub fn run_memory(mib: u64) -> BenchResult {
    let dir = std::env::temp_dir().join(format!("stasis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bytes = mib << 20;
    println!(
        "stasis bench: a process with {mib} MiB of non-zero memory; images in {}",
        dir.display()
    );

    // Baseline 1: memcpy.
    let src = vec![1u8; bytes as usize];
    // Touch the destination first: the baseline measures copying, not page faults.
    let mut dst = vec![2u8; bytes as usize];
    let t = Instant::now();
    dst.copy_from_slice(&src);
    let memcpy = t.elapsed();
    std::hint::black_box(&dst);
    println!(
        "{:<38} {:>8.3} s {:>7.2} GB/s",
        "baseline memcpy",
        memcpy.as_secs_f64(),
        gbps(bytes, memcpy)
    );
    // Baseline: the MAC alone, over the same memory in the pieces a dump writes (2 MiB).
    let mut secret = [0u8; stasis_engine::auth::SECRET_LEN];
    stasis_sys::random::fill(&mut secret)?;
    let t = Instant::now();
    for piece in src.chunks(2 << 20) {
        std::hint::black_box(blake3::keyed_hash(&secret, piece));
    }
    let mac = t.elapsed();
    drop((src, dst));
    println!(
        "{:<38} {:>8.3} s {:>7.2} GB/s",
        "baseline keyed BLAKE3 (the MAC)",
        mac.as_secs_f64(),
        gbps(bytes, mac)
    );
    let key = stasis_engine::ImageKey::from_secret(&secret);

    let ready = dir.join("ready");
    let mut child = spawn_workload(&["bench-workload", &mib.to_string()], &ready)?;
    let pid = child.id() as i32;
    let result = (|| -> BenchResult {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready.exists() {
            if Instant::now() > deadline {
                return Err("the workload did not get ready".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        let info = std::fs::read_to_string(&ready)?;
        let addr = u64::from_str_radix(
            info.split_whitespace()
                .next()
                .unwrap_or("0")
                .trim_start_matches("0x"),
            16,
        )?;

        // Baseline 2: copy the same memory out with process_vm_readv and write it to a file
        // on the images' filesystem: the floor a dump could reach without compression.
        let raw = dir.join("raw.bin");
        let out = std::fs::File::create(&raw)?;
        let mut buf = vec![0u8; 2 << 20];
        let t = Instant::now();
        let mut off = 0u64;
        while off < bytes {
            let n = (bytes - off).min(buf.len() as u64) as usize;
            stasis_sys::proc_mem::read_exact(pid, addr + off, &mut buf[..n])?;
            out.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
        // The dump makes its images durable before it reports success: so does the baseline.
        out.sync_all()?;
        let baseline = t.elapsed();
        drop(out);
        std::fs::remove_file(&raw)?;
        println!(
            "{:<38} {:>8.3} s {:>7.2} GB/s",
            "baseline process_vm_readv+write+fsync",
            baseline.as_secs_f64(),
            gbps(bytes, baseline)
        );

        let images = dir.join("images");
        let t = Instant::now();
        let report = stasis_engine::dump(stasis_engine::DumpOptions {
            pid,
            pidfd: None,
            images: stasis_engine::ImageDir::create(&images)?,
            leave_running: false,
            service: None,
            tree: true,
            admit: None,
            tcp: Default::default(),
            auth: Some(key.clone()),
            unix_peers_closed: false,
        })?;
        let dump = t.elapsed();
        let _ = child.wait();
        println!(
            "{:<38} {:>8.3} s {:>7.2} GB/s  {:.2}x baseline; frozen {:.1} ms",
            "dump, authenticated (killed after)",
            dump.as_secs_f64(),
            gbps(bytes, dump),
            baseline.as_secs_f64() / dump.as_secs_f64(),
            report.frozen.as_secs_f64() * 1e3
        );

        for (what, auth) in [
            ("restore, unchecked (until it runs)", None),
            ("restore, every byte MAC-checked", Some(key.clone())),
        ] {
            let t = Instant::now();
            let restored = stasis_engine::restore(&stasis_engine::RestoreOptions {
                images: stasis_engine::ImageDir::open(&images)?,
                requester: None,
                new_session: false,
                require_authenticated: auth.is_some(),
                auth,
                root_as_sibling: false,
                root_pdeathsig: true,
                replaced_files: stasis_engine::ReplacedFiles::Refuse,
                terminal: None,
                lazy: false,
            })?;
            let restore = t.elapsed();
            println!(
                "{:<38} {:>8.3} s {:>7.2} GB/s  {:.2}x baseline",
                what,
                restore.as_secs_f64(),
                gbps(bytes, restore),
                baseline.as_secs_f64() / restore.as_secs_f64()
            );
            stasis_sys::process::kill(restored.pid, libc::SIGKILL)?;
            let _ = stasis_engine::restore::wait_exit_code(restored.pid);
        }
        std::io::stdout().flush()?;
        Ok(0)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The tree the benchmark freezes: `procs` processes (the root and its children) with
/// `threads` threads each, all idle, little memory.
pub fn tree_workload(procs: u32, threads: u32, ready: &Path) -> BenchResult {
    // Fork every child first, while this process is single-threaded.
    for _ in 1..procs {
        if let stasis_sys::process::Forked::Child(_) = stasis_sys::process::fork()? {
            break;
        }
    }
    for _ in 1..threads {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
        });
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

/// Freezing and collecting a tree of `procs` processes with `threads` threads each, against a
/// plain freeze and thaw of the same tree.
pub fn run_tree(procs: u32, threads: u32) -> BenchResult {
    let dir = std::env::temp_dir().join(format!("stasis-bench-tree-{}", std::process::id()));
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
        let t = Instant::now();
        let mut tree = stasis_engine::dump::freeze::FrozenTree::freeze(pid)?;
        let frozen = t.elapsed();
        let n_threads: usize = tree.processes.iter().map(|p| p.threads.len()).sum();
        tree.thaw()?;
        drop(tree);
        let baseline = t.elapsed();
        println!(
            "{:<38} {:>8.1} ms  ({} processes, {n_threads} threads; freeze alone {:.1} ms)",
            "baseline freeze + thaw of the tree",
            baseline.as_secs_f64() * 1e3,
            procs,
            frozen.as_secs_f64() * 1e3
        );
        let t = Instant::now();
        let report = stasis_engine::dump(stasis_engine::DumpOptions {
            pid,
            pidfd: None,
            images: stasis_engine::ImageDir::create(&dir.join("images"))?,
            leave_running: true,
            service: None,
            tree: true,
            admit: None,
            tcp: Default::default(),
            auth: None,
            unix_peers_closed: false,
        })?;
        let dump = t.elapsed();
        println!(
            "{:<38} {:>8.1} ms  {:.2}x baseline; frozen {:.1} ms, {} processes, {} KiB of pages",
            "dump of the tree (left running)",
            dump.as_secs_f64() * 1e3,
            dump.as_secs_f64() / baseline.as_secs_f64(),
            report.frozen.as_secs_f64() * 1e3,
            report.processes,
            report.page_bytes / 1024
        );
        Ok(0)
    })();
    // The whole tree is in the workload's process group.
    let _ = stasis_sys::process::kill(-pid, libc::SIGKILL);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
