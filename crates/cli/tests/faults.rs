//! Faults at every point of a dump and of a restore (`STASIS_TEST_FAULT`, see
//! crates/engine/src/fault.rs), full disks, and images that change under a restore.
//!
//! A clean run first counts the points of each phase (`count:FILE`); then each point in turn
//! fails (or the dumper/restorer is killed there), on a program that checks itself all the
//! time (`faults_workload.c`: memory against its pattern, its signal mask, its descriptors, a
//! child through pipes, threads whose registers hold an invariant). After each failed dump
//! the program runs on as before (its self-checks pass and go on, nothing traced or stopped),
//! no inventory exists, and nothing was left outside the images directory (a failed dump
//! leaves no images directory at all). After each failed restore no process of the images
//! exists and their pids are free, and the error is clear.
//!
//! CI runs a sample of the points: the first and last of each phase and every k-th point in
//! between, about [`SAMPLE`] points per sweep. `STASIS_FAULTS_FULL=1` runs every point (see
//! DEVELOPERS.md, "Fault injection"). The test needs root and gcc; work directories of failed
//! runs are kept in `target/tmp/faults/`.

use stasis_test_infra::build::c_program;
use stasis_test_infra::process::{become_subreaper, isolate, kill, try_wait_pid, wait_pid, Waited};
use stasis_test_infra::procfs::{exists, field};
use stasis_test_infra::wait::wait_until;
use stasis_test_infra::{require_root, require_tool, WorkDir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Points per sweep in a sampled (CI) run.
const SAMPLE: u64 = 24;

fn stasis() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stasis"))
}

fn full_sweep() -> bool {
    std::env::var("STASIS_FAULTS_FULL").is_ok_and(|v| v == "1")
}

fn work(name: &str) -> WorkDir {
    WorkDir::unique(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults"), name)
}

/// The self-checking program, built into `w`.
fn workload_exe(w: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults_workload.c");
    c_program(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &src,
        &w.join("workload"),
        false,
    )
    .expect("build faults_workload.c")
}

/// A running faults_workload.
struct Workload {
    child: Option<Child>,
    pid: i32,
    echo: i32,
    log: PathBuf,
    /// The descriptors of it and its child and what they are, when it started.
    fds: Vec<(String, String)>,
    /// The mappings of it and its child when it started (a dump must leave none of its own).
    maps: Vec<String>,
}

/// The mappings of `pid`, one line each as in /proc/PID/maps.
fn maps_of(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The descriptors of `pid` and their links.
fn fd_table(pid: i32) -> Vec<(String, String)> {
    let dir = format!("/proc/{pid}/fd");
    let mut v: Vec<_> = listing(Path::new(&dir))
        .into_iter()
        .map(|fd| {
            let link = std::fs::read_link(format!("{dir}/{fd}"))
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            (fd, link)
        })
        .collect();
    v.sort();
    v
}

impl Workload {
    fn start(w: &Path, exe: &Path, mib: u32) -> Workload {
        // A log of its own: an earlier workload of the same test may still write to its own.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = w.join(format!("workload-{n}.log"));
        let mut cmd = Command::new(exe);
        cmd.arg(mib.to_string())
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let from = 0;
        let child = isolate(&mut cmd).spawn().expect("start faults_workload");
        let pid = child.id() as i32;
        let mut wl = Workload {
            child: Some(child),
            pid,
            echo: 0,
            log,
            fds: Vec::new(),
            maps: Vec::new(),
        };
        wl.wait_ok(from).expect("the workload starts");
        let mut kids = Vec::new();
        wait_until(Duration::from_secs(10), || {
            kids = stasis_test_infra::procfs::children(pid);
            !kids.is_empty()
        });
        wl.echo = *kids.first().unwrap_or_else(|| {
            panic!(
                "the workload's child ({})",
                stasis_test_infra::procfs::describe_proc(pid)
            )
        });
        wl.fds = wl.fd_tables();
        wl.maps = wl.all_maps();
        wl
    }

    /// The mappings of both processes, the child's prefixed with "child ".
    fn all_maps(&self) -> Vec<String> {
        let mut v = maps_of(self.pid);
        v.extend(maps_of(self.echo).into_iter().map(|l| format!("child {l}")));
        v
    }

    /// The descriptors of both processes, the child's prefixed with "child ".
    fn fd_tables(&self) -> Vec<(String, String)> {
        let mut v = fd_table(self.pid);
        v.extend(
            fd_table(self.echo)
                .into_iter()
                .map(|(fd, l)| (format!("child {fd}"), l)),
        );
        v
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a line "ok ..." written after byte `from` of the log.
    fn wait_ok(&self, from: usize) -> Result<(), String> {
        self.wait_line(from, "ok ")
    }

    fn wait_line(&self, from: usize, prefix: &str) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            let text = self.log_text();
            if let Some(l) = text.lines().find(|l| l.starts_with("FAIL")) {
                return Err(format!("the workload failed its own check: {l}"));
            }
            if text.len() > from && text[from..].lines().any(|l| l.starts_with(prefix)) {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "no new {prefix:?} line from the workload in 20 s ({})",
                    stasis_test_infra::procfs::describe_proc(self.pid)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The workload runs on as before: its processes exist, none is stopped or traced or has
    /// a stop pending, and it writes a new line of passed checks (with `full`, after checking
    /// its whole memory).
    fn check_healthy(&self, full: bool) -> Result<(), String> {
        for pid in [self.pid, self.echo] {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map_err(|e| format!("pid {pid} is gone ({e})"))?;
            for t in tasks.flatten() {
                let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                let state = field(&s, "State").unwrap_or("?");
                let tracer = field(&s, "TracerPid").unwrap_or("?");
                // SIGSTOP is signal 19: bit 18 of the pending masks.
                let stop_pending = ["SigPnd", "ShdPnd"].iter().any(|k| {
                    field(&s, k)
                        .and_then(|v| u64::from_str_radix(v, 16).ok())
                        .is_some_and(|m| m & (1 << 18) != 0)
                });
                if state.starts_with(['T', 't', 'Z', 'X']) || tracer != "0" || stop_pending {
                    return Err(format!(
                        "thread {:?} of pid {pid}: State {state}, TracerPid {tracer}, stop pending {stop_pending}",
                        t.file_name()
                    ));
                }
            }
        }
        if !self.fds.is_empty() || !self.maps.is_empty() {
            // A thread whose dumper died undoes what was injected in it (closes the
            // userfaultfd, unmaps the scratch area) on its own way back, once it runs: two
            // new lines of checks (each with a round trip through the child) say both have.
            for _ in 0..2 {
                let from = self.log_text().len();
                self.wait_ok(from)?;
            }
        }
        if !self.fds.is_empty() && self.fd_tables() != self.fds {
            return Err(format!(
                "its descriptors changed: {:?} (were {:?})",
                self.fd_tables(),
                self.fds
            ));
        }
        if !self.maps.is_empty() && self.all_maps() != self.maps {
            let now = self.all_maps();
            let added: Vec<_> = now.iter().filter(|l| !self.maps.contains(l)).collect();
            let gone: Vec<_> = self.maps.iter().filter(|l| !now.contains(l)).collect();
            return Err(format!(
                "its mappings changed: {added:?} added, {gone:?} gone"
            ));
        }
        let from = self.log_text().len();
        if full {
            kill(self.pid, libc::SIGUSR1);
            self.wait_line(from, "full ")?;
        }
        self.wait_ok(from)
    }

    /// Ends it (SIGTERM: it exits 0 once its checks pass) and reaps it.
    fn stop(mut self) {
        kill(self.pid, libc::SIGTERM);
        if let Some(mut c) = self.child.take() {
            let st = stasis_test_infra::process::wait_child_for(&mut c, Duration::from_secs(20));
            match st {
                Ok(Some(s)) => assert!(s.success(), "the workload ended with {s:?}"),
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("the workload did not end on SIGTERM");
                }
            }
        } else {
            let _ = wait_pid(self.pid, Duration::from_secs(20));
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How one run of stasis ended.
struct Run {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `stasis ARGS` with `STASIS_TEST_FAULT=fault` (when given); its stderr goes to a file
/// in `w`. A run that takes over 60 s is killed and fails the test.
fn run_stasis(w: &Path, args: &[&str], fault: Option<&str>) -> Run {
    use std::os::unix::process::ExitStatusExt;
    let err_path = w.join("stasis.err");
    let err = std::fs::File::create(&err_path).expect("create stasis.err");
    let mut cmd = Command::new(stasis());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .env_remove("STASIS_TEST_FAULT");
    if let Some(f) = fault {
        cmd.env("STASIS_TEST_FAULT", f);
    }
    let mut child = isolate(&mut cmd).spawn().expect("run stasis");
    let status =
        match stasis_test_infra::process::wait_child_for(&mut child, Duration::from_secs(60)) {
            Ok(Some(s)) => s,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("stasis {args:?} with fault {fault:?} hung");
            }
        };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    Run {
        code: status.code(),
        signal: status.signal(),
        stderr,
    }
}

/// The points of one clean run of `stasis ARGS` (`count:FILE`): how many in each phase, and
/// what each is (phase, number, what is done there).
struct Points {
    counts: BTreeMap<String, u64>,
    labels: Vec<(String, u64, String)>,
}

/// The points of each phase of one clean run of `stasis ARGS` (`count:FILE`).
fn count_points(w: &Path, args: &[&str]) -> BTreeMap<String, u64> {
    count_labelled_points(w, args).counts
}

/// [`count_points`], with what each point is.
fn count_labelled_points(w: &Path, args: &[&str]) -> Points {
    let file = w.join("points");
    let list = w.join("points.points");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&list);
    let run = run_stasis(w, args, Some(&format!("count:{}", file.display())));
    assert!(
        run.ok(),
        "clean run of stasis {args:?} failed: {}",
        run.stderr
    );
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "no count of fault points in {} ({e}): the stasis binary was built without the \
             feature fault-injection",
            file.display()
        )
    });
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let (phase, n) = line.split_once(' ').expect("PHASE N");
        *counts.entry(phase.to_string()).or_insert(0) += n.parse::<u64>().expect("a count");
    }
    let labels = std::fs::read_to_string(&list)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let phase = it.next()?.to_string();
            let n = it.next()?.parse().ok()?;
            Some((phase, n, it.next()?.to_string()))
        })
        .collect();
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&list);
    Points { counts, labels }
}

/// The points to try: all of them in a full sweep; else the first and last of each phase and
/// every k-th in between, about `SAMPLE` in all.
fn points_to_try(points: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let total: u64 = points.values().sum();
    let k = if full_sweep() {
        1
    } else {
        (total / SAMPLE).max(1)
    };
    let mut out = Vec::new();
    for (phase, &c) in points {
        for n in 1..=c {
            if n == 1 || n == c || n % k == 0 {
                out.push((phase.clone(), n));
            }
        }
    }
    out
}

/// The calls of an injector that map, protect, fill or remove its memory in the process, or
/// create and close the pre-copy's userfaultfd there: the points where a killed dumper used to
/// leave something of its own behind (docs/security.md), all tried in CI too.
const CALLS_OF_INTEREST: [&str; 7] = [
    "mmap(scratch)",
    "mmap(code)",
    "mprotect(code)",
    "munmap(scratch)",
    "munmap(code)",
    "userfaultfd",
    ": batch",
];

/// [`points_to_try`], and every point of [`CALLS_OF_INTEREST`].
fn points_to_try_labelled(points: &Points) -> Vec<(String, u64)> {
    let mut out = points_to_try(&points.counts);
    for (phase, n, what) in &points.labels {
        if CALLS_OF_INTEREST.iter().any(|c| what.contains(c)) {
            out.push((phase.clone(), *n));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every point of a dump that lets the program run on (with pre-copy), failed and then with
/// the dumper killed there: the program runs on exactly as before each time.
#[test]
fn a_dump_failing_or_killed_at_any_point_leaves_the_process_running_as_before() {
    if !require_root() || !require_tool("gcc") {
        return;
    }
    let mut w = work("dump_points");
    let exe = workload_exe(&w);
    let wl = Workload::start(&w, &exe, 4);
    let images = w.join("img");
    let img = images.to_str().expect("utf-8 path");
    let args_of =
        |pid: i32| ["dump", "-t", &pid.to_string(), "-D", img, "--leave-running"].map(String::from);
    let args = args_of(wl.pid);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let labelled = count_labelled_points(&w, &args);
    let points = labelled.counts.clone();
    std::fs::remove_dir_all(&images).expect("remove the clean dump");
    wl.check_healthy(true).expect("after a clean dump");
    let before = listing(&w);
    let started = Instant::now();
    let tried = points_to_try_labelled(&labelled);
    let of_interest = labelled
        .labels
        .iter()
        .filter(|(_, _, what)| CALLS_OF_INTEREST.iter().any(|c| what.contains(c)))
        .count();
    let mut failures = Vec::new();
    for action in ["fail", "kill"] {
        for (phase, n) in &tried {
            let fault = format!("{phase}:{n}:{action}");
            let args = args_of(wl.pid);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = run_stasis(&w, &args, Some(&fault));
            let mut problems = Vec::new();
            if run.ok() {
                // The count changes a little from one run to the next (pre-copy passes):
                // a point past the end of this run's phase was not reached.
                std::fs::remove_dir_all(&images).ok();
            } else {
                match action {
                    "fail" => {
                        if !run.stderr.contains("fault injected") {
                            problems.push(format!("unclear error: {:?}", run.stderr));
                        }
                        if images.exists() {
                            problems.push(format!("the failed dump left {:?}", listing(&images)));
                        }
                    }
                    _ => {
                        if run.signal != Some(libc::SIGKILL) {
                            problems
                                .push(format!("not killed: code {:?}, {}", run.code, run.stderr));
                        }
                        if images.join("inventory.img").exists() {
                            problems.push("a killed dump left an inventory".into());
                        }
                        std::fs::remove_dir_all(&images).ok();
                    }
                }
            }
            if listing(&w) != before {
                problems.push(format!("stray files: {:?} (was {before:?})", listing(&w)));
            }
            if let Err(e) = wl.check_healthy(false) {
                problems.push(format!("the process: {e}"));
            }
            if !problems.is_empty() {
                failures.push(format!("{fault}: {}", problems.join("; ")));
                if !exists(wl.pid) {
                    break;
                }
            }
        }
    }
    if let Err(e) = wl.check_healthy(true) {
        failures.push(format!("at the end: {e}"));
    }
    eprintln!(
        "dump points (leave running): {points:?}, {} in all ({of_interest} in calls that map, \
         fill or remove the injector's memory or make the userfaultfd); tried {} x 2 in {:.1} s",
        points.values().sum::<u64>(),
        tried.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        w.keep();
        panic!(
            "{} faults went wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    wl.stop();
}

/// Every point of a dump that kills the program (the default), failed: the program, frozen
/// until its images are durable, runs on. Failures in the release phase come after the
/// inventory: the dump is complete, and the program must then be gone or running untraced.
#[test]
fn a_dump_that_kills_the_process_failing_at_any_point_leaves_it_running() {
    if !require_root() || !require_tool("gcc") {
        return;
    }
    let mut w = work("dump_kill_points");
    let exe = workload_exe(&w);
    let images = w.join("img");
    let img = images.to_str().expect("utf-8 path").to_string();
    // Counted on a workload of its own, which the clean dump kills.
    let points = {
        let wl = Workload::start(&w, &exe, 4);
        let pid = wl.pid.to_string();
        let p = count_points(&w, &["dump", "-t", &pid, "-D", &img]);
        drop(wl);
        std::fs::remove_dir_all(&images).expect("remove the clean dump");
        p
    };
    let mut wl = Workload::start(&w, &exe, 4);
    let mut before = listing(&w);
    let started = Instant::now();
    let tried: Vec<_> = points_to_try(&points)
        .into_iter()
        .filter(|(p, _)| p != "release")
        .collect();
    let mut failures = Vec::new();
    for (phase, n) in &tried {
        let fault = format!("{phase}:{n}");
        let pid = wl.pid.to_string();
        let run = run_stasis(&w, &["dump", "-t", &pid, "-D", &img], Some(&fault));
        let mut problems = Vec::new();
        if run.ok() {
            // Not reached (the count varies a little from one run to the next): the
            // program was dumped and killed; a new one goes on.
            std::fs::remove_dir_all(&images).ok();
            drop(wl);
            wl = Workload::start(&w, &exe, 4);
            before = listing(&w);
        } else {
            if !run.stderr.contains("fault injected") {
                problems.push(format!("unclear error: {:?}", run.stderr));
            }
            if images.exists() {
                problems.push(format!("the failed dump left {:?}", listing(&images)));
            }
            if let Err(e) = wl.check_healthy(false) {
                problems.push(format!("the process: {e}"));
            }
        }
        if listing(&w) != before {
            problems.push(format!("stray files: {:?} (was {before:?})", listing(&w)));
        }
        if !problems.is_empty() {
            failures.push(format!("{fault}: {}", problems.join("; ")));
            if !exists(wl.pid) {
                break;
            }
        }
    }
    // The release phase: the dump is complete when it fails.
    let release = points.get("release").copied().unwrap_or(0);
    for n in [1, release].into_iter().filter(|&n| n > 0) {
        let wl = Workload::start(&w, &exe, 4);
        let pid = wl.pid.to_string();
        let args = ["dump", "-t", &pid, "-D", &img];
        let fault = format!("release:{n}");
        let run = run_stasis(&w, &args, Some(&fault));
        if !run.ok() && !run.stderr.contains("fault injected") {
            failures.push(format!("{fault}: unclear error: {:?}", run.stderr));
        }
        if !images.join("inventory.img").exists() {
            failures.push(format!("{fault}: the dump is not complete"));
        }
        for p in [wl.pid, wl.echo] {
            let st = stasis_test_infra::procfs::proc_state(p);
            if st == stasis_test_infra::procfs::ProcState::Busy {
                failures.push(format!(
                    "{fault}: pid {p} left stopped or traced: {}",
                    stasis_test_infra::procfs::describe_proc(p)
                ));
            }
        }
        drop(wl);
        std::fs::remove_dir_all(&images).ok();
    }
    if let Err(e) = wl.check_healthy(true) {
        failures.push(format!("at the end: {e}"));
    }
    eprintln!(
        "dump points (killing): {points:?}, {} in all; tried {} in {:.1} s",
        points.values().sum::<u64>(),
        tried.len() + 2,
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        w.keep();
        panic!(
            "{} faults went wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    wl.stop();
}

/// A complete dump of a fresh workload, killed by the dump: returns its pids (root, echo
/// child, threads) and its log.
fn dumped_workload(w: &Path, exe: &Path, mib: u32, images: &Path) -> (Vec<i32>, PathBuf) {
    let wl = Workload::start(w, exe, mib);
    let log = wl.log.clone();
    let mut pids = vec![wl.pid, wl.echo];
    pids.extend(
        listing(Path::new(&format!("/proc/{}/task", wl.pid)))
            .iter()
            .filter_map(|t| t.parse::<i32>().ok()),
    );
    let run = run_stasis(
        w,
        &[
            "dump",
            "-t",
            &wl.pid.to_string(),
            "-D",
            images.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(run.ok(), "dump: {}", run.stderr);
    let mut wl = wl;
    if let Some(mut c) = wl.child.take() {
        let _ = c.wait();
    }
    pids.sort();
    pids.dedup();
    assert!(
        wait_until(Duration::from_secs(10), || pids.iter().all(|&p| !exists(p))),
        "the dumped processes are gone"
    );
    (pids, log)
}

/// Waits until none of `pids` exists (reaping those that come back to us), or says which do.
fn all_gone(pids: &[i32]) -> Result<(), String> {
    let ok = wait_until(Duration::from_secs(10), || {
        pids.iter()
            .all(|&p| matches!(try_wait_pid(p), Ok(Waited::Gone | Waited::Status(_))))
    });
    if ok {
        return Ok(());
    }
    Err(pids
        .iter()
        .filter(|&&p| exists(p))
        .map(|&p| {
            format!(
                "pid {p} left: {}",
                stasis_test_infra::procfs::describe_proc(p)
            )
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// Restores the workload detached and checks it runs; then ends it.
fn restore_and_check(w: &Path, images: &Path, pids: &[i32], log: &Path) -> Result<(), String> {
    let run = run_stasis(
        w,
        &["restore", "-d", "-D", images.to_str().expect("utf-8")],
        None,
    );
    if !run.ok() {
        return Err(format!("the restore failed: {}", run.stderr));
    }
    let mut wl = Workload {
        child: None,
        pid: pids[0],
        echo: 0,
        log: log.to_path_buf(),
        fds: Vec::new(),
        maps: Vec::new(),
    };
    wl.echo = stasis_test_infra::procfs::children(wl.pid)
        .first()
        .copied()
        .unwrap_or(0);
    let r = wl.check_healthy(true);
    kill(wl.pid, libc::SIGKILL);
    let _ = wait_pid(wl.pid, Duration::from_secs(10));
    all_gone(pids)?;
    r
}

/// Every point of a restore, failed and then with the restorer killed there: no process of
/// the images is left, their pids are free, the error is clear; the images restore afterwards.
#[test]
fn a_restore_failing_or_killed_at_any_point_leaves_nothing_behind() {
    if !require_root() || !require_tool("gcc") {
        return;
    }
    become_subreaper();
    let mut w = work("restore_points");
    let exe = workload_exe(&w);
    let images = w.join("img");
    let (pids, log) = dumped_workload(&w, &exe, 4, &images);
    let img = images.to_str().expect("utf-8").to_string();
    let args = ["restore", "-d", "-D", &img];
    let points = count_points(&w, &args);
    kill(pids[0], libc::SIGKILL);
    all_gone(&pids).expect("the counted restore ends");
    let started = Instant::now();
    let tried = points_to_try(&points);
    let mut failures = Vec::new();
    for action in ["fail", "kill"] {
        for (phase, n) in &tried {
            let fault = format!("{phase}:{n}:{action}");
            let run = run_stasis(&w, &args, Some(&fault));
            let mut problems = Vec::new();
            if run.ok() {
                // A failure the restore absorbed (a clean-up call retried, such as the
                // unmap of the scratch area) or a point past the end of this run's phase:
                // then the restored program must be whole.
                let restored = Workload {
                    child: None,
                    pid: pids[0],
                    echo: stasis_test_infra::procfs::children(pids[0])
                        .first()
                        .copied()
                        .unwrap_or(0),
                    log: log.clone(),
                    fds: Vec::new(),
                    maps: Vec::new(),
                };
                if let Err(e) = restored.check_healthy(false) {
                    problems.push(format!("the restore succeeded, but: {e}"));
                }
                kill(pids[0], libc::SIGKILL);
                let _ = wait_pid(pids[0], Duration::from_secs(10));
            } else if action == "fail" && !run.stderr.contains("fault injected") {
                problems.push(format!("unclear error: {:?}", run.stderr));
            } else if action == "kill" && run.signal != Some(libc::SIGKILL) {
                problems.push(format!("not killed: {:?} {}", run.code, run.stderr));
            }
            if let Err(e) = all_gone(&pids) {
                problems.push(e);
            }
            if !problems.is_empty() {
                failures.push(format!("{fault}: {}", problems.join("; ")));
            }
        }
    }
    eprintln!(
        "restore points: {points:?}, {} in all; tried {} x 2 in {:.1} s",
        points.values().sum::<u64>(),
        tried.len(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = restore_and_check(&w, &images, &pids, &log) {
        failures.push(format!("the restore after the faults: {e}"));
    }
    if !failures.is_empty() {
        w.keep();
        panic!(
            "{} faults went wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// Starts `stasis ARGS` with `STASIS_TEST_FAULT=fault` (a `stop` action), waits until it has
/// stopped itself there, runs `meanwhile`, continues it and returns how it ended.
fn run_stopped_at(w: &Path, args: &[&str], fault: &str, meanwhile: impl FnOnce()) -> Run {
    use std::os::unix::process::ExitStatusExt;
    let err_path = w.join("stasis.err");
    let err = std::fs::File::create(&err_path).expect("create stasis.err");
    let mut cmd = Command::new(stasis());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .env("STASIS_TEST_FAULT", fault);
    let mut child = isolate(&mut cmd).spawn().expect("run stasis");
    let pid = child.id() as i32;
    let stopped = wait_until(Duration::from_secs(30), || {
        stasis_test_infra::procfs::state(pid) == Some('T')
    });
    if !stopped {
        let _ = child.kill();
        let _ = child.wait();
        panic!("stasis {args:?} did not stop at {fault}");
    }
    meanwhile();
    kill(pid, libc::SIGCONT);
    let status =
        match stasis_test_infra::process::wait_child_for(&mut child, Duration::from_secs(60)) {
            Ok(Some(s)) => s,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("stasis {args:?} hung after {fault}");
            }
        };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    Run {
        code: status.code(),
        signal: status.signal(),
        stderr,
    }
}

/// A tmpfs of `size` mounted on `dir` for the time of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir the mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Fills it up with a file `filler` (until the write fails with ENOSPC).
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).expect("create the filler");
        let chunk = vec![0x55u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // And the last bytes, page by page.
        while f.write_all(&chunk[..1]).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Dumps into filesystems that run out of space: with no room for the pages (an 8 MiB tmpfs
/// for a 64 MiB process), and with room for the pages but none left for the records (the
/// tmpfs filled while the dump is stopped before its first record). Each fails cleanly with
/// "No space left on device", leaves nothing in the filesystem, and the process runs on.
/// Then a complete dump on a full filesystem restores (the restore writes nothing there).
#[test]
fn dumps_into_a_full_filesystem_fail_cleanly_and_restores_from_one_work() {
    if !require_root() || !require_tool("gcc") {
        return;
    }
    become_subreaper();
    let mut w = work("full_disk");
    let exe = workload_exe(&w);
    let mut failures = Vec::new();
    let wl = Workload::start(&w, &exe, 64);
    let pid = wl.pid.to_string();
    {
        let small = Tmpfs::mount(&w.join("small"), "8m");
        let img = small.0.join("img");
        for extra in [None, Some("--no-pre-copy")] {
            let mut args = vec!["dump", "-t", &pid, "-D", img.to_str().expect("utf-8")];
            args.push("--leave-running");
            args.extend(extra);
            let run = run_stasis(&w, &args, None);
            if run.ok() || !run.stderr.contains("No space left on device") {
                failures.push(format!("{args:?} into 8 MiB: {:?}", run.stderr));
            }
            if !listing(&small.0).is_empty() {
                failures.push(format!("{args:?} left {:?}", listing(&small.0)));
            }
            if let Err(e) = wl.check_healthy(true) {
                failures.push(format!("{args:?}: the process: {e}"));
            }
        }
    }
    {
        let big = Tmpfs::mount(&w.join("big"), "256m");
        let img = big.0.join("img");
        let args = [
            "dump",
            "-t",
            &pid,
            "-D",
            img.to_str().expect("utf-8"),
            "--leave-running",
        ];
        let run = run_stopped_at(&w, &args, "sync:1:stop", || big.fill());
        if run.ok() || !run.stderr.contains("No space left on device") {
            failures.push(format!("records on a full disk: {:?}", run.stderr));
        }
        let _ = std::fs::remove_file(big.0.join("filler"));
        if !listing(&big.0).is_empty() {
            failures.push(format!("records on a full disk left {:?}", listing(&big.0)));
        }
        if let Err(e) = wl.check_healthy(true) {
            failures.push(format!("records on a full disk: the process: {e}"));
        }
    }
    wl.stop();
    {
        let big = Tmpfs::mount(&w.join("big2"), "256m");
        let images = big.0.join("img");
        let (pids, log) = dumped_workload(&w, &exe, 64, &images);
        big.fill();
        if let Err(e) = restore_and_check(&w, &images, &pids, &log) {
            failures.push(format!("restore from a full disk: {e}"));
        }
    }
    if !failures.is_empty() {
        w.keep();
        panic!("{}", failures.join("\n"));
    }
}

/// A SIGSTOP sent to a process while the dump runs calls in it (the dumper stopped at such a
/// point, `STASIS_TEST_FAULT=...:stop`, the SIGSTOP sent meanwhile): no signal mask blocks a
/// SIGSTOP, so the thread reports it to the dumper when resumed, and resuming past it would
/// lose it. The dump holds it and sends it again when it lets go of the thread: the process
/// ends stopped (every thread), as it was asked to be, and goes on healthy on SIGCONT. Tried
/// at the first and last batch of calls and the first single call that run in a parked thread,
/// with and without pre-copy. (The dumper ignored it before: the process ran on.)
#[test]
fn a_sigstop_sent_while_the_dump_runs_calls_in_the_process_is_kept() {
    if !require_root() || !require_tool("gcc") {
        return;
    }
    let mut w = work("stop_during_dump");
    let exe = workload_exe(&w);
    let wl = Workload::start(&w, &exe, 4);
    let images = w.join("img");
    let img = images.to_str().expect("utf-8 path").to_string();
    let pid = wl.pid.to_string();
    let mut failures = Vec::new();
    let mut tried = 0;
    for extra in [None, Some("--no-pre-copy")] {
        let mut args = vec!["dump", "-t", &pid, "-D", &img, "--leave-running"];
        args.extend(extra);
        let labelled = count_labelled_points(&w, &args);
        std::fs::remove_dir_all(&images).expect("remove the clean dump");
        let running: Vec<&(String, u64, String)> = labelled
            .labels
            .iter()
            .filter(|(_, _, what)| what.contains("(while it runs)"))
            .collect();
        let batches: Vec<_> = running.iter().filter(|p| p.2.contains(": batch")).collect();
        let single = running.iter().find(|p| !p.2.contains(": batch"));
        let mut points: Vec<(String, u64, String)> = [batches.first(), batches.last()]
            .into_iter()
            .flatten()
            .map(|p| (**p).clone())
            .chain(single.map(|p| (*p).clone()))
            .collect();
        points.dedup();
        assert!(
            !batches.is_empty() && single.is_some(),
            "no batch or single call running in a parked thread among {:?}",
            labelled.labels
        );
        for (phase, n, what) in points {
            tried += 1;
            let fault = format!("{phase}:{n}:stop");
            let run = run_stopped_at(&w, &args, &fault, || {
                kill(wl.pid, libc::SIGSTOP);
            });
            let at = format!("{extra:?}, SIGSTOP at {fault} ({what})");
            if !run.ok() {
                failures.push(format!("{at}: the dump failed: {}", run.stderr));
            }
            std::fs::remove_dir_all(&images).ok();
            let all_stopped = || {
                std::fs::read_dir(format!("/proc/{}/task", wl.pid))
                    .map(|d| {
                        d.flatten().all(|t| {
                            let s = std::fs::read_to_string(t.path().join("status"))
                                .unwrap_or_default();
                            field(&s, "State").is_some_and(|st| st.starts_with('T'))
                        })
                    })
                    .unwrap_or(false)
            };
            if !wait_until(Duration::from_secs(5), all_stopped) {
                failures.push(format!(
                    "{at}: the process was not left stopped: {}",
                    stasis_test_infra::procfs::describe_proc(wl.pid)
                ));
            }
            kill(wl.pid, libc::SIGCONT);
            if let Err(e) = wl.check_healthy(false) {
                failures.push(format!("{at}: after SIGCONT: {e}"));
            }
        }
    }
    eprintln!("SIGSTOP during the dump: {tried} points tried");
    wl.stop();
    if !failures.is_empty() {
        w.keep();
        panic!("{}", failures.join("\n"));
    }
}

/// The images change under a restore, stopped at a point (`STASIS_TEST_FAULT=...:stop`):
/// a process record removed after the inventory was read, the root's pages file truncated or
/// overwritten in place once the rebuild started. Each fails with an error naming the file,
/// and nothing is left running; the pristine images restore afterwards.
#[test]
fn images_that_change_under_a_restore_fail_it_cleanly() {
    if !require_root() || !require_tool("gcc") {
        return;
    }
    become_subreaper();
    let mut w = work("images_change");
    let exe = workload_exe(&w);
    let images = w.join("img");
    let pristine = w.join("pristine");
    let (pids, log) = dumped_workload(&w, &exe, 4, &images);
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&images)
        .arg(&pristine)
        .status()
        .expect("cp");
    assert!(cp.success());
    let file = |prefix: &str| {
        listing(&images)
            .into_iter()
            .find(|n| n.starts_with(prefix) && n.contains(&pids[0].to_string()))
            .map(|n| images.join(n))
            .unwrap_or_else(|| panic!("no {prefix}*{}* in the images", pids[0]))
    };
    let record = file("process");
    let pages = file("pages");
    let img = images.to_str().expect("utf-8").to_string();
    let args = ["restore", "-d", "-D", &img];
    type Change<'a> = (&'a str, &'a str, Box<dyn Fn() + 'a>);
    let changes: Vec<Change> = vec![
        (
            "load:2:stop",
            "process record removed",
            Box::new(|| std::fs::remove_file(&record).expect("rm the record")),
        ),
        // Before any page is read: a parent reads the pages its children share with it
        // before it forks them (pages::cow), in the fork phase.
        (
            "plan:1:stop",
            "pages file truncated",
            Box::new(|| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&pages)
                    .expect("open pages");
                let len = f.metadata().expect("stat").len();
                f.set_len(len / 2).expect("truncate pages");
            }),
        ),
        (
            "plan:1:stop",
            "pages file overwritten",
            Box::new(|| {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&pages)
                    .expect("open pages");
                let len = f.metadata().expect("stat").len();
                let junk = vec![0xa5u8; (len / 2) as usize];
                f.write_all_at(&junk, len / 4).expect("overwrite pages");
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (fault, what, change) in &changes {
        let run = run_stopped_at(&w, &args, fault, change);
        if run.ok() {
            failures.push(format!("{what}: the restore succeeded"));
            kill(pids[0], libc::SIGKILL);
        } else if run.stderr.trim().is_empty() || run.signal.is_some() {
            failures.push(format!("{what}: no clear error: {run:?}", run = run.stderr));
        } else {
            eprintln!("{what}: {}", run.stderr.trim());
        }
        if let Err(e) = all_gone(&pids) {
            failures.push(format!("{what}: {e}"));
        }
        std::fs::remove_dir_all(&images).expect("rm images");
        let cp = Command::new("cp")
            .arg("-a")
            .arg(&pristine)
            .arg(&images)
            .status()
            .expect("cp");
        assert!(cp.success());
    }
    if let Err(e) = restore_and_check(&w, &images, &pids, &log) {
        failures.push(format!("the pristine images: {e}"));
    }
    if !failures.is_empty() {
        w.keep();
        panic!("{}", failures.join("\n"));
    }
}

/// A dump of a file whose name was deleted while it keeps a link elsewhere makes a remap link
/// next to it (engine::files::link_remap): a dump that fails once the link is made (every
/// point of the write and sync phases, and the last points of collect, where the link is
/// made) removes it, and the program runs on; a complete dump leaves it for the images.
#[test]
fn a_failed_dump_removes_the_remap_links_it_made() {
    if !require_root() || !require_tool("gcc") {
        return;
    }
    let mut w = work("remap_links");
    let exe = stasis_test_infra::build::zdtm_program("files_deleted_linked", &w)
        .expect("build files_deleted_linked");
    let run_dir = w.join("run");
    std::fs::create_dir_all(&run_dir).expect("mkdir run");
    let log = w.join("program.log");
    let out = std::fs::File::create(&log).expect("create the log");
    let mut cmd = Command::new(&exe);
    cmd.current_dir(&run_dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup the log"))
        .stderr(out);
    let mut child = isolate(&mut cmd)
        .spawn()
        .expect("start files_deleted_linked");
    let pid = child.id() as i32;
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("READY"))),
        "the program gets ready"
    );
    let remaps = || -> Vec<String> {
        listing(&run_dir)
            .into_iter()
            .filter(|n| n.starts_with(".stasis-remap."))
            .collect()
    };
    let images = w.join("img");
    let img = images.to_str().expect("utf-8").to_string();
    let pid_s = pid.to_string();
    let args = ["dump", "-t", &pid_s, "-D", &img, "--leave-running"];
    let points = count_points(&w, &args);
    assert_eq!(
        remaps().len(),
        2,
        "a complete dump leaves one remap link per file: {:?}",
        listing(&run_dir)
    );
    std::fs::remove_dir_all(&images).expect("remove the clean dump");
    for r in remaps() {
        std::fs::remove_file(run_dir.join(r)).expect("remove a remap link");
    }
    let mut tried = Vec::new();
    for (phase, &c) in &points {
        let from = match phase.as_str() {
            "write" | "sync" => 1,
            "collect" => c.saturating_sub(2).max(1),
            _ => continue,
        };
        tried.extend((from..=c).map(|n| format!("{phase}:{n}")));
    }
    let mut failures = Vec::new();
    let mut failed_after_link = 0;
    for fault in &tried {
        let run = run_stasis(&w, &args, Some(fault));
        if run.ok() {
            // A point past the end of this run's phase.
            std::fs::remove_dir_all(&images).ok();
            for r in remaps() {
                std::fs::remove_file(run_dir.join(r)).ok();
            }
            continue;
        }
        if !run.stderr.contains("fault injected") {
            failures.push(format!("{fault}: unclear error: {:?}", run.stderr));
        }
        if !fault.starts_with("collect") {
            failed_after_link += 1;
        }
        if images.exists() {
            failures.push(format!(
                "{fault}: the failed dump left {:?}",
                listing(&images)
            ));
            std::fs::remove_dir_all(&images).ok();
        }
        if !remaps().is_empty() {
            failures.push(format!("{fault}: the failed dump left {:?}", remaps()));
            for r in remaps() {
                std::fs::remove_file(run_dir.join(r)).ok();
            }
        }
    }
    assert!(
        failed_after_link > 0,
        "no dump failed after the links were made: {points:?}"
    );
    kill(pid, libc::SIGTERM);
    let status = stasis_test_infra::process::wait_child_for(&mut child, Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !matches!(status, Ok(Some(s)) if s.success()) || !text.contains("PASS") {
        failures.push(format!("the program after the faults: {status:?}\n{text}"));
    }
    eprintln!("remap links: tried {} points ({points:?})", tried.len());
    if !failures.is_empty() {
        w.keep();
        panic!(
            "{} faults went wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
