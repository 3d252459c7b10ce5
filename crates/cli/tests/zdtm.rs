//! End-to-end checkpoint/restore tests ("zdtm": zero downtime migration).
//!
//! Each test compiles one C program from `tests/zdtm/` (workspace root), runs
//! it in a fresh session with its output going to `test.log` in a per-test
//! work directory, waits for it to print `READY`, and then drives it through
//! one [`Mode`]: plain run (no checkpoint), dump + restore, dump with
//! `--leave-running`, several dump/restore cycles, or two restores from the
//! same images. At the end the program gets SIGTERM, checks that everything it
//! set up survived, prints `PASS` (or `FAIL: what differed`) and exits with
//! status 0 on success.
//!
//! Every program runs in every mode: the registry at the end of this file has
//! one line per program, which makes one test per mode, and a program may
//! leave a mode out only with a reason (see `zdtm_tests!`). A test checks that
//! every program of `tests/zdtm/` has its line.
//!
//! The tests need root (ptrace, restoring a given pid): without it each test
//! fails under CI (`CI=true`) and elsewhere prints a notice and returns
//! (`stasis_test_infra::require_root`).
//!
//! The harness process makes itself a child subreaper, so that processes
//! restored with `stasis restore --detach` (and anything else stasis leaves
//! behind) are reparented to it and can be waited for.
//!
//! Work directories of failed tests are kept in
//! `target/tmp/zdtm/run/<test name>/` for inspection.

use stasis_test_infra::build::{zdtm_dir, zdtm_program};
use stasis_test_infra::log::{read_for_report, read_log};
use stasis_test_infra::process::{
    append_log, become_subreaper, describe_exit_status, describe_wait_status, kill, kill_child,
    spawn_isolated, try_wait_pid, wait_child_for, wait_gone, wait_pid, WaitStatus, Waited,
};
use stasis_test_infra::procfs::{self, describe_proc, proc_state, ProcState};
use stasis_test_infra::wait::POLL;
use stasis_test_infra::{require_root, WorkDir};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long to let a test program settle into its wait after `READY`.
const SETTLE_AFTER_READY: Duration = Duration::from_millis(300);
/// How long to let a restored program run before touching it again.
const SETTLE_AFTER_RESTORE: Duration = Duration::from_millis(200);
/// Deadline for the program to print `READY`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for one `stasis dump` or `stasis restore --detach`.
const STASIS_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for a restored process to show up running.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the program to finish after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// What the harness does with a test program between `READY` and SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No checkpoint at all: validates the test program itself.
    Sanity,
    /// Dump (which kills the program), restore attached, SIGTERM.
    DumpRestore,
    /// Dump with `--leave-running`; SIGTERM the original and check it; then
    /// restore from the images and check the restored copy too.
    LeaveRunning,
    /// `n` times: dump (kills) into a fresh images dir, restore detached.
    /// Then SIGTERM the last restored process.
    Cycles(u32),
    /// Dump (kills), restore attached, SIGTERM, check; restore from the same
    /// images once more, SIGTERM, check.
    RestoreTwice,
    /// The other mode with `--compress` on every dump; each dump's images must
    /// hold compressed runs and pass `stasis show` (which decodes them all).
    Compressed(&'static Mode),
    /// Dump (kills), `restore --lazy` attached (pages served on first touch by the page
    /// server), SIGTERM.
    Lazy,
}

// ---------------------------------------------------------------------------
// Building the programs.

fn zdtm_tmp_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("zdtm")
}

/// Compiles `tests/zdtm/NAME.c` once per test run; later calls (from any
/// thread) get the same result.
fn build(name: &str) -> Result<PathBuf, String> {
    type Slot = Arc<OnceLock<Result<PathBuf, String>>>;
    static BUILT: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    let slot = {
        let mut map = BUILT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(name.to_string()).or_default())
    };
    slot.get_or_init(|| compile(name)).clone()
}

fn compile(name: &str) -> Result<PathBuf, String> {
    let src_dir = zdtm_dir();
    if !src_dir.join(format!("{name}.c")).exists() {
        // Scripts run from the source tree (see `program_command`).
        for ext in SCRIPT_EXTENSIONS {
            let script = src_dir.join(format!("{name}.{ext}"));
            if script.exists() {
                return Ok(script);
            }
        }
    }
    zdtm_program(name, &zdtm_tmp_dir().join("bin"))
}

/// The kinds of test scripts (`tests/zdtm/NAME.sh`, `NAME.py`), run by
/// `program_command` when there is no `NAME.c`.
const SCRIPT_EXTENSIONS: [&str; 2] = ["sh", "py"];

// ---------------------------------------------------------------------------
// One test run.

struct Run {
    test: &'static str,
    bin: PathBuf,
    args: &'static [&'static str],
    dir: WorkDir,
    log: PathBuf,
    /// The test program's pid (the original and every restored copy).
    pid: i32,
    /// Whether a process with `pid` may exist and must be killed on cleanup.
    live: bool,
    /// The attached `stasis restore`, while it runs.
    restore: Option<Child>,
    /// Counter for naming stasis output files.
    nstasis: u32,
    /// Offset into test.log where the current phase's output starts.
    mark: usize,
    /// The test's processes (pid, start time) when last looked at: the root
    /// and its descendants (see `tree_of`).
    tree: Vec<(i32, u64)>,
    /// Dumps with `--compress` ([`Mode::Compressed`]).
    compress: bool,
}

impl Run {
    fn new(test: &'static str, bin: PathBuf, args: &'static [&'static str]) -> Self {
        let dir = WorkDir::new(zdtm_tmp_dir().join("run").join(test));
        let log = dir.join("test.log");
        Run {
            test,
            bin,
            args,
            dir,
            log,
            pid: 0,
            live: false,
            restore: None,
            nstasis: 0,
            mark: 0,
            tree: Vec::new(),
            compress: false,
        }
    }

    fn read_log(&self) -> String {
        read_log(&self.log)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = append_log(&self.log).map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let mut cmd = program_command(&self.bin);
        cmd.args(self.args)
            .env(RUN_TOKEN_VAR, self.run_token())
            .current_dir(&self.dir);
        let child = spawn_isolated(&mut cmd, log)
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.pid = child.id() as i32;
        self.live = true;
        // From here on the process is handled through its pid (waitpid),
        // like restored copies that are not `Child`ren of ours.
        drop(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if self.read_log().contains("READY") {
                return Ok(());
            }
            if let Waited::Status(status) = try_wait_pid(self.pid)? {
                self.live = false;
                return Err(format!(
                    "test program {} before printing READY",
                    describe_wait_status(status)
                ));
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!("no READY within {READY_TIMEOUT:?}"));
            }
            sleep(POLL);
        }
    }

    /// Runs `stasis ARGS` to completion, output into a file in the work dir.
    fn stasis(&mut self, what: &str, args: &[OsString]) -> Result<(), String> {
        // `show` of a socket with megabytes queued prints them as JSON numbers: slower.
        let timeout = if what == "show" {
            3 * STASIS_TIMEOUT
        } else {
            STASIS_TIMEOUT
        };
        let (mut child, out) = self.spawn_stasis(what, args)?;
        let status = match wait_child_for(&mut child, timeout) {
            Ok(Some(status)) => status,
            Ok(None) => {
                kill_child(&mut child);
                return Err(format!(
                    "stasis {what} did not finish within {timeout:?}; output:\n{}",
                    read_for_report(&out)
                ));
            }
            Err(e) => return Err(format!("waiting for stasis {what}: {e}")),
        };
        if !status.success() {
            return Err(format!(
                "stasis {what} failed ({}); output:\n{}",
                describe_exit_status(status),
                read_for_report(&out)
            ));
        }
        Ok(())
    }

    fn spawn_stasis(&mut self, what: &str, args: &[OsString]) -> Result<(Child, PathBuf), String> {
        self.nstasis += 1;
        let out = self.dir.join(format!("stasis-{}-{what}.log", self.nstasis));
        let f = File::create(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
        let f2 = f
            .try_clone()
            .map_err(|e| format!("dup {}: {e}", out.display()))?;
        let child = Command::new(env!("CARGO_BIN_EXE_stasis"))
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|e| format!("cannot start stasis {what}: {e}"))?;
        Ok((child, out))
    }

    /// `stasis show DIR` verifies every run (compressed ones decoded) and
    /// shows that some are compressed.
    fn check_compressed(&mut self, images: &Path) -> Result<(), String> {
        self.stasis("show", &["show".into(), images.into()])?;
        let out = self.dir.join(format!("stasis-{}-show.log", self.nstasis));
        let json = fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        if !json.contains("\"Zstd\"") {
            return Err(format!(
                "dump --compress stored no compressed run ({})",
                out.display()
            ));
        }
        Ok(())
    }

    /// `stasis show DIR`, parsed.
    fn show(&mut self, images: &Path) -> Result<serde_json::Value, String> {
        self.stasis("show", &["show".into(), images.into()])?;
        let out = self.dir.join(format!("stasis-{}-show.log", self.nstasis));
        let json = fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        serde_json::from_str(&json).map_err(|e| format!("{}: not JSON: {e}", out.display()))
    }

    /// The state `later` shows is the state `first` showed, but for what changes from one
    /// cycle to the next ([`CYCLE_MASK`], and this program's [`CYCLE_CHANGES`]).
    fn same_state(
        &self,
        first: &serde_json::Value,
        later: &serde_json::Value,
    ) -> Result<(), String> {
        let program = self.bin.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let mut masks: Vec<&str> = CYCLE_MASK.to_vec();
        for (p, fields, _why) in CYCLE_CHANGES {
            if *p == program || *p == self.test {
                masks.extend_from_slice(fields);
            }
        }
        let mut diffs = Vec::new();
        json_diff(
            &normalized(first),
            &normalized(later),
            &mut Vec::new(),
            &masks,
            &mut diffs,
        );
        if diffs.is_empty() {
            return Ok(());
        }
        let n = diffs.len();
        diffs.truncate(20);
        Err(format!(
            "the images show another state than those of cycle 1 ({n} differences; \
             `stasis show` of each is in the work dir):\n  {}",
            diffs.join("\n  ")
        ))
    }

    fn images(&self, name: &str) -> Result<PathBuf, String> {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// `stasis dump -t PID -D DIR [--leave-running]`.
    fn dump(&mut self, images: &Path, leave_running: bool) -> Result<(), String> {
        self.note_tree();
        let mut args: Vec<OsString> = vec![
            "dump".into(),
            "-t".into(),
            self.pid.to_string().into(),
            "-D".into(),
            images.into(),
        ];
        if leave_running {
            args.push("--leave-running".into());
        }
        if self.compress {
            args.push("--compress".into());
        }
        self.stasis("dump", &args)?;
        if self.compress {
            self.check_compressed(images)?;
        }
        if leave_running {
            return self
                .wait_running(None)
                .map_err(|e| format!("after dump --leave-running: {e}"));
        }
        // The dump kills the process: reap it (it is our child, directly or
        // through the subreaper) and check how it died.
        let root = match wait_pid(self.pid, Duration::from_secs(5)) {
            Ok(Waited::Status(st)) => {
                self.live = false;
                if st == WaitStatus::Signaled(libc::SIGKILL) {
                    Ok(())
                } else {
                    Err(format!(
                        "after a successful dump the process should have died of SIGKILL, but it {}",
                        describe_wait_status(st)
                    ))
                }
            }
            Ok(_) => {
                self.live = false;
                Ok(())
            }
            Err(e) => Err(format!("after a successful dump: {e}")),
        };
        root?;
        // The rest of a process tree is gone too; reap what became ours (a
        // zombie keeps its pid, which the restore needs).
        self.reap_tree("after a successful dump")
    }

    /// Waits until the process with our pid exists, is not traced and not
    /// stopped (for a few consecutive polls). `restore` is an attached
    /// `stasis restore` that must not exit meanwhile.
    fn wait_running(&mut self, mut restore: Option<&mut Child>) -> Result<(), String> {
        let start = Instant::now();
        let mut good = 0;
        loop {
            if let Some(child) = restore.as_deref_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "stasis restore {} before pid {} was seen running",
                        describe_exit_status(status),
                        self.pid
                    ));
                }
            }
            match proc_state(self.pid) {
                ProcState::Running => {
                    good += 1;
                    if good >= 3 {
                        return Ok(());
                    }
                }
                ProcState::Zombie => {
                    return Err(format!("pid {} exited prematurely (zombie)", self.pid));
                }
                ProcState::Absent | ProcState::Busy => good = 0,
            }
            if start.elapsed() > RUNNING_TIMEOUT {
                return Err(format!(
                    "pid {} not running within {RUNNING_TIMEOUT:?} ({})",
                    self.pid,
                    describe_proc(self.pid)
                ));
            }
            sleep(POLL);
        }
    }

    /// `stasis restore -D DIR`, staying attached; returns once the restored
    /// process runs.
    fn restore_attached(&mut self, images: &Path) -> Result<(), String> {
        self.restore_attached_with(images, &[])
    }

    /// [`Self::restore_attached`] with more arguments.
    fn restore_attached_with(&mut self, images: &Path, more: &[&str]) -> Result<(), String> {
        self.ensure_pid_free()?;
        let mut args: Vec<OsString> = vec!["restore".into(), "-D".into(), images.into()];
        args.extend(more.iter().map(OsString::from));
        let (child, out) = self.spawn_stasis("restore", &args)?;
        self.live = true;
        let mut child = child;
        let res = self.wait_running(Some(&mut child));
        self.restore = Some(child);
        res.map_err(|e| format!("{e}; stasis restore output:\n{}", read_for_report(&out)))
    }

    /// `stasis restore -D DIR --detach`; returns once the restored process
    /// runs.
    fn restore_detached(&mut self, images: &Path) -> Result<(), String> {
        self.ensure_pid_free()?;
        let args: Vec<OsString> = vec![
            "restore".into(),
            "-D".into(),
            images.into(),
            "--detach".into(),
        ];
        self.live = true;
        self.stasis("restore", &args)?;
        self.wait_running(None)
            .map_err(|e| format!("after stasis restore --detach: {e}"))
    }

    fn ensure_pid_free(&self) -> Result<(), String> {
        if procfs::exists(self.pid) {
            return Err(format!(
                "harness bug: pid {} still exists before restore ({})",
                self.pid,
                describe_proc(self.pid)
            ));
        }
        Ok(())
    }

    /// Notes the test's processes, then sends SIGTERM to the program: time
    /// to check.
    fn sigterm(&mut self) -> Result<(), String> {
        self.note_tree();
        if !kill(self.pid, libc::SIGTERM) {
            return Err(format!(
                "cannot send SIGTERM to pid {}: {}",
                self.pid,
                io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// SIGTERM to the process, which is not under an attached restore; wait
    /// for it (our child, directly or through the subreaper) and check.
    fn finish_direct(&mut self) -> Result<(), String> {
        self.sigterm()?;
        let reaped = wait_pid(self.pid, EXIT_TIMEOUT).map_err(|e| format!("after SIGTERM: {e}"))?;
        self.live = false;
        if let Waited::Status(st) = reaped {
            if st != WaitStatus::Exited(0) {
                return Err(format!(
                    "test program {} after SIGTERM{}",
                    describe_wait_status(st),
                    self.first_fail()
                ));
            }
        }
        self.reap_tree("after the test program exited")?;
        self.check_verdict()
    }

    /// SIGTERM to the process restored by the attached `stasis restore`;
    /// `stasis restore` must then exit with the program's status, 0.
    fn finish_attached(&mut self) -> Result<(), String> {
        let mut child = self
            .restore
            .take()
            .ok_or("harness bug: no attached restore")?;
        if let Err(e) = self.sigterm() {
            self.restore = Some(child);
            return Err(e);
        }
        let status = match wait_child_for(&mut child, EXIT_TIMEOUT) {
            Ok(Some(status)) => status,
            Ok(None) => {
                self.restore = Some(child);
                return Err(format!(
                    "stasis restore did not exit within {EXIT_TIMEOUT:?} after SIGTERM to pid {} ({})",
                    self.pid,
                    describe_proc(self.pid)
                ));
            }
            Err(e) => return Err(format!("waiting for stasis restore: {e}")),
        };
        // The restored process must be gone with it.
        match wait_pid(self.pid, Duration::from_secs(2)) {
            Ok(_) => self.live = false,
            Err(e) => {
                return Err(format!(
                    "stasis restore {} but the restored process is still there: {e}",
                    describe_exit_status(status)
                ))
            }
        }
        if !status.success() {
            let hint = match status.code() {
                Some(c) if c > 128 => {
                    format!(" (the restored program was killed by signal {})", c - 128)
                }
                _ => String::new(),
            };
            return Err(format!(
                "stasis restore (attached) {}{hint} after SIGTERM to the restored program{}",
                describe_exit_status(status),
                self.first_fail()
            ));
        }
        self.reap_tree("after the restored program exited")?;
        self.check_verdict()
    }

    /// The log written since the current phase started must say PASS and
    /// must not say FAIL.
    fn check_verdict(&mut self) -> Result<(), String> {
        let log = self.read_log();
        let new = log.get(self.mark..).unwrap_or("");
        self.mark = log.len();
        if let Some(line) = new.lines().find(|l| l.trim_start().starts_with("FAIL")) {
            return Err(format!("test program reported: {line}"));
        }
        if !new.contains("PASS") {
            return Err("no PASS in the test log".to_string());
        }
        Ok(())
    }

    /// ": FAIL..." with the first FAIL line of the current phase, if any.
    fn first_fail(&self) -> String {
        let log = self.read_log();
        log.get(self.mark..)
            .unwrap_or("")
            .lines()
            .find(|l| l.trim_start().starts_with("FAIL"))
            .map(|l| format!(": {l}"))
            .unwrap_or_default()
    }

    fn settle(&self, d: Duration) {
        sleep(d);
    }

    fn run(&mut self, mut mode: Mode) -> Result<(), String> {
        if let Mode::Compressed(inner) = mode {
            self.compress = true;
            mode = *inner;
        }
        self.spawn()?;
        self.wait_ready()?;
        self.settle(SETTLE_AFTER_READY);
        match mode {
            Mode::Sanity => self.finish_direct(),
            Mode::DumpRestore => {
                let img = self.images("img")?;
                self.dump(&img, false)?;
                self.restore_attached(&img)?;
                self.settle(SETTLE_AFTER_RESTORE);
                self.finish_attached()
            }
            Mode::Lazy => {
                let img = self.images("img")?;
                self.dump(&img, false)?;
                self.restore_attached_with(&img, &["--lazy"])?;
                self.settle(SETTLE_AFTER_RESTORE);
                self.finish_attached()
            }
            Mode::LeaveRunning => {
                let img = self.images("img")?;
                self.dump(&img, true)?;
                self.settle(SETTLE_AFTER_RESTORE);
                self.finish_direct()
                    .map_err(|e| format!("original after dump --leave-running: {e}"))?;
                self.restore_attached(&img)?;
                self.settle(SETTLE_AFTER_RESTORE);
                self.finish_attached()
                    .map_err(|e| format!("restored copy: {e}"))
            }
            Mode::Cycles(n) => {
                let n = cycles_wanted(n);
                let mut first: Option<serde_json::Value> = None;
                let program = self.bin.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let compare = !CYCLE_NOT_COMPARED.iter().any(|(p, _)| *p == program);
                for i in 1..=n {
                    let img = self.images(&format!("img-{i}"))?;
                    self.dump(&img, false)
                        .map_err(|e| format!("cycle {i}/{n}: {e}"))?;
                    // The images of every cycle show the state of the first one.
                    if compare {
                        let shown = self.show(&img).map_err(|e| format!("cycle {i}/{n}: {e}"))?;
                        match &first {
                            None => first = Some(shown),
                            Some(first) => self
                                .same_state(first, &shown)
                                .map_err(|e| format!("cycle {i}/{n}: {e}"))?,
                        }
                    }
                    self.restore_detached(&img)
                        .map_err(|e| format!("cycle {i}/{n}: {e}"))?;
                    self.settle(SETTLE_AFTER_RESTORE);
                }
                self.finish_direct()
            }
            Mode::RestoreTwice => {
                let img = self.images("img")?;
                self.dump(&img, false)?;
                self.restore_attached(&img)?;
                self.settle(SETTLE_AFTER_RESTORE);
                self.finish_attached()
                    .map_err(|e| format!("first restore: {e}"))?;
                self.restore_attached(&img)
                    .map_err(|e| format!("second restore: {e}"))?;
                self.settle(SETTLE_AFTER_RESTORE);
                self.finish_attached()
                    .map_err(|e| format!("second restore: {e}"))
            }
            Mode::Compressed(_) => Err("Compressed(Compressed(..))".into()),
        }
    }

    /// Everything in the work dir that helps to understand a failure.
    fn report(&self) -> String {
        let mut s = format!(
            "--- {}: {} ({}) ---\n",
            self.test,
            self.log.display(),
            self.bin.display()
        );
        s.push_str(&self.read_log());
        let mut outs: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("stasis-"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        outs.sort_by_key(|p| {
            // stasis-N-what.log: sort by N.
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('-').nth(1))
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        });
        for p in outs {
            s.push_str(&format!("\n--- {} ---\n", p.display()));
            s.push_str(&read_for_report(&p));
        }
        s
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Everything of a process tree, found while the root still exists.
        let others = self.tree_members();
        if let Some(mut child) = self.restore.take() {
            kill_child(&mut child);
        }
        if self.live && kill(self.pid, libc::SIGKILL) {
            let _ = wait_pid(self.pid, Duration::from_secs(5));
        }
        for &(pid, start) in &others {
            if procfs::start_time(pid) == Some(start) {
                kill(pid, libc::SIGKILL);
            }
        }
        for &(pid, start) in &others {
            let _ = wait_gone(pid, start, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------
// Process trees: a test's root may have threads, children, grandchildren,
// orphans it adopted as a subreaper, members of its session or process
// group that went elsewhere... They are not the harness' children (until
// they are orphaned to it, the subreaper), so the harness finds them in
// /proc, waits for them and, at cleanup, kills them all.

impl Run {
    /// Remembers the test's processes as they are now (the root is alive).
    fn note_tree(&mut self) {
        self.tree = tree_of(self.pid, true, &self.run_token());
    }

    /// The value of `RUN_TOKEN_VAR` in this test's environment.
    fn run_token(&self) -> String {
        format!("{}-{}", self.test, std::process::id())
    }

    /// The test's processes other than the root: those remembered by
    /// `note_tree` that still exist, plus those /proc shows now.
    fn tree_members(&self) -> Vec<(i32, u64)> {
        let mut all: Vec<(i32, u64)> = self
            .tree
            .iter()
            .copied()
            .filter(|&(pid, start)| procfs::start_time(pid) == Some(start))
            .collect();
        all.extend(tree_of(self.pid, self.live, &self.run_token()));
        all.retain(|&(pid, _)| pid != self.pid);
        all.sort_unstable();
        all.dedup();
        all
    }

    /// After the root has exited (and been reaped): every other process of
    /// the test must exit within 2 s; those that become our zombies are
    /// reaped. Processes still running are an error (`Drop` kills them).
    fn reap_tree(&mut self, what: &str) -> Result<(), String> {
        let mut left = Vec::new();
        for (pid, start) in self.tree_members() {
            if let Err(e) = wait_gone(pid, start, Duration::from_secs(2)) {
                left.push(e);
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}, processes of the test are still there: {}",
                left.join("; ")
            ))
        }
    }
}

/// The command that runs test program `bin`: compiled programs directly,
/// `.sh` scripts with bash, `.py` scripts with Debian's python3 (`-u`:
/// unbuffered output, `-I`: no environment or user site).
fn program_command(bin: &Path) -> Command {
    match bin.extension().and_then(|e| e.to_str()) {
        Some("sh") => {
            let mut cmd = Command::new("/bin/bash");
            cmd.arg(bin);
            cmd
        }
        Some("py") => {
            let mut cmd = Command::new("/usr/bin/python3");
            cmd.arg("-u").arg("-I").arg(bin);
            cmd
        }
        _ => Command::new(bin),
    }
}

/// Environment variable that marks a test's processes: a process that left
/// the tree and its session (double fork and setsid) and was orphaned to
/// the harness (the subreaper) is still recognised by it.
const RUN_TOKEN_VAR: &str = "STASIS_ZDTM_RUN";

/// Whether `RUN_TOKEN_VAR=token` is in the environment of `pid`.
fn has_run_token(pid: i32, token: &str) -> bool {
    let want = format!("{RUN_TOKEN_VAR}={token}");
    fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
        .unwrap_or(false)
}

/// The processes of the tree rooted at `root`, as (pid, start time): the
/// root itself (with `include_root`), the members of its session and of
/// its process group, orphans of the harness with the test's `token`, and
/// all descendants of any of these.
fn tree_of(root: i32, include_root: bool, token: &str) -> Vec<(i32, u64)> {
    let me = std::process::id() as i32;
    let procs: Vec<(i32, procfs::Stat)> = procfs::pids()
        .into_iter()
        .filter_map(|pid| procfs::stat(pid).map(|st| (pid, st)))
        .collect();
    let mut inside: Vec<i32> = procs
        .iter()
        .filter(|(pid, st)| {
            (include_root && *pid == root)
                || st.pgrp == root
                || st.session == root
                || (st.ppid == me && *pid != root && has_run_token(*pid, token))
        })
        .map(|(pid, _)| *pid)
        .collect();
    loop {
        let before = inside.len();
        for (pid, st) in &procs {
            if inside.contains(&st.ppid) && !inside.contains(pid) && *pid != root {
                inside.push(*pid);
            }
        }
        if inside.len() == before {
            break;
        }
    }
    procs
        .iter()
        .filter(|(pid, _)| inside.contains(pid))
        .map(|(pid, st)| (*pid, st.start_time))
        .collect()
}

/// Runs program `name` with `args` in `mode`; panics with the program's log
/// and stasis' output on failure.
fn run(test: &'static str, name: &str, args: &'static [&'static str], mode: Mode) {
    if !require_root() {
        return;
    }
    become_subreaper();
    let bin = match build(name) {
        Ok(bin) => bin,
        Err(e) => panic!("{test}: {e}"),
    };
    let mut r = Run::new(test, bin, args);
    if let Err(e) = r.run(mode) {
        let report = r.report();
        r.dir.keep();
        let dir = r.dir.to_path_buf();
        drop(r); // kill whatever is left before panicking
        panic!(
            "{test} ({name}, {mode:?}): {e}\n(work dir kept: {})\n{report}",
            dir.display()
        );
    }
}
// ---------------------------------------------------------------------------
// Repeated cycles: the same state in every cycle's images.

/// `STASIS_CYCLES=N`: every cycles test runs at least `N` dump/restore cycles (the nightly
/// run: 10); by default each runs the cycles its variant says (`cycles3`: 3).
fn cycles_wanted(n: u32) -> u32 {
    std::env::var("STASIS_CYCLES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(n, |want| want.max(n))
}

/// What `stasis show` prints that changes from one cycle to the next for any program: paths
/// in its JSON, `*` for any key or index. Everything else must be the same in the images of
/// every cycle as in those of the first.
const CYCLE_MASK: &[&str] = &[
    // When the dump was made.
    "inventory/created_unix_ms",
    "authentication/dump_id",
    // Memory contents and registers: programs compute, and even one that waits has its stack
    // written by the signal that ends its wait. Page runs follow the contents (pages of zeros
    // are not stored); the programs check their memory themselves.
    "processes/*/page_runs",
    "processes/*/pages_file/payload_bytes",
    "processes/*/threads/*/regs",
    "processes/*/threads/*/xstate",
    // Time left on timers, and expiries counted meanwhile. (A timerfd's wall-clock deadline is
    // the dump's clock plus the time left fdinfo shows: a few microseconds apart.)
    "processes/*/itimers/*/value_us",
    "processes/*/posix_timers/*/value_ns",
    "processes/*/posix_timers/*/overrun",
    "processes/*/files/*/kind/TimerFd/remaining_ns",
    "processes/*/files/*/kind/TimerFd/deadline_ns",
    "processes/*/files/*/kind/TimerFd/ticks",
    // A TCP connection's clock, windows and autotuned buffers move on, and its repair-time
    // hold table is named per restore.
    "processes/*/files/*/kind/Inet/tcp/tsval",
    "processes/*/files/*/kind/Inet/tcp/snd_wl1",
    "processes/*/files/*/kind/Inet/tcp/snd_wnd",
    "processes/*/files/*/kind/Inet/tcp/rcv_wnd",
    "processes/*/files/*/kind/Inet/tcp/max_window",
    "processes/*/files/*/kind/Inet/tcp/rcv_wup",
    "processes/*/files/*/kind/Inet/tcp/hold_table",
];

/// Keys whose values name kernel objects that a restore makes anew (pipes, memfds, shared
/// memory, sockets; and those of [`CYCLE_NEW_IDS`]): compared by which descriptions, mappings
/// and peers share them, not by number (renumbered in order of first appearance).
const CYCLE_IDENTITIES: &[&str] = &[
    "pipe_id",
    "memfd_id",
    "exe_memfd",
    "shmem_id",
    "peer",
    "pending",
    "accepted_from",
    "from",
];

/// (object, key): more identities of objects the restore makes anew, under an object of that
/// name only: the inodes of deleted files and directories, FIFOs and unix sockets (other files
/// are reopened, with their inode), and pty numbers (the kernel gives the first free one).
const CYCLE_NEW_IDS: &[(&str, &str)] = &[
    ("Deleted", "ino"),
    ("Fifo", "ino"),
    ("Directory", "ino"),
    ("UnixSocket", "ino"),
    ("pty", "index"),
    ("PtySlave", "index"),
];

/// Programs whose images are not compared from cycle to cycle, and why.
const CYCLE_NOT_COMPARED: &[(&str, &str)] = &[
    (
        "sock_tcp_loop",
        "megabytes queued in its connection make `stasis show` print millions of JSON numbers \
         (up to a minute on a loaded machine); they change all the time anyway",
    ),
    (
        "sock_tcp_half",
        "megabytes queued in its connection make `stasis show` print millions of JSON numbers \
         (up to a minute on a loaded machine); they change all the time anyway",
    ),
];

/// Lists whose order is the kernel's order of objects in memory, not part of the state:
/// compared sorted.
const CYCLE_SETS: &[&str] = &[
    "processes/*/files/*/kind/Epoll/watches",
    "processes/*/files/*/kind/Fanotify/marks",
    "processes/*/files/*/kind/Inotify/watches",
];

/// What changes from one cycle to the next for one program (or one test), and why: (program or
/// test name, paths as in [`CYCLE_MASK`], reason).
const CYCLE_CHANGES: &[(&str, &[&str], &str)] = &[
    (
        "files_deleted",
        &["processes/*/files/*/kind/Deleted/path"],
        "a new gone.dat takes the deleted file's name: the restore makes the deleted file \
         under another name next to it (gone.dat.stasis-PID-ID), which the next dump records",
    ),
    (
        "make_jobs",
        &["inventory", "processes"],
        "make starts and reaps jobs all the time: the tree is another one at every dump",
    ),
    (
        "shell_spawn",
        &["inventory", "processes"],
        "the shell starts and reaps commands all the time: the tree is another one at every dump",
    ),
    (
        "shell_pipeline",
        &["inventory", "processes"],
        "the pipeline's processes run and write all the time (pages, pipes, files)",
    ),
    (
        "tree_pipes",
        &["processes/*/files/*/kind/Pipe/data"],
        "the processes stream data through their pipes all the time",
    ),
    (
        "sock_opts",
        &[
            "processes/*/files/*/kind/Inet/options/sndbuf",
            "processes/*/files/*/kind/Inet/options/rcvbuf",
        ],
        "a connection's buffer sizes are not restored (the dump cannot tell sizes the program \
         set, here inherited from the listener, from autotuned ones: engine::files::tcp)",
    ),
    (
        "sock_udp",
        &["processes/*/files/*/kind/Inet/senders"],
        "a queued datagram is sent again from a socket of the restore's, on a port of its own",
    ),
    (
        "posix_timers",
        &["processes/*/signals/shared_pending"],
        "a timer fires between cycles: its signal is pending at one dump, not at another",
    ),
    (
        "sleep_pause",
        &["processes/*/signals/shared_pending"],
        "its interval timer may expire while it is frozen: SIGALRM is pending at that dump",
    ),
    (
        "itimers",
        &["processes/*/signals/shared_pending"],
        "its interval timers may expire while it is frozen: their signal is pending at that dump",
    ),
    (
        "itimer_frozen",
        &["processes/*/signals/shared_pending"],
        "its interval timers expire while it is frozen: their signal is pending at that dump",
    ),
    (
        "python_threads",
        &["processes/*/vmas"],
        "the interpreter's threads run and allocate: its mappings change",
    ),
];

/// `v` with [`CYCLE_IDENTITIES`] renumbered and [`CYCLE_SETS`] sorted.
fn normalized(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn walk(v: &mut Value, path: &mut Vec<String>, ids: &mut HashMap<String, usize>) {
        match v {
            Value::Object(m) => {
                let parent = path.last().cloned().unwrap_or_default();
                for (k, x) in m.iter_mut() {
                    if CYCLE_IDENTITIES.contains(&k.as_str())
                        || CYCLE_NEW_IDS.contains(&(parent.as_str(), k.as_str()))
                    {
                        // One numbering per kind of object: a socket's peer is another
                        // socket's ino, an exe_memfd a memfd_id.
                        let space = match (parent.as_str(), k.as_str()) {
                            ("UnixSocket", "ino")
                            | (_, "peer" | "pending" | "accepted_from")
                            | (_, "from") => "socket",
                            (_, "memfd_id" | "exe_memfd") => "memfd",
                            (_, key) => key,
                        };
                        let mut renumber = |x: &mut Value| {
                            if x.is_number() {
                                let n = ids
                                    .keys()
                                    .filter(|k| k.starts_with(&format!("{space}:")))
                                    .count();
                                let key = format!("{space}:{x}");
                                *x = Value::from(*ids.entry(key).or_insert(n));
                            }
                        };
                        match x {
                            Value::Array(a) => a.iter_mut().for_each(renumber),
                            x => renumber(x),
                        }
                        continue;
                    }
                    path.push(k.clone());
                    walk(x, path, ids);
                    path.pop();
                }
            }
            Value::Array(a) => {
                if CYCLE_SETS
                    .iter()
                    .any(|m| mask_matches(m, path) && m.split('/').count() == path.len())
                {
                    a.sort_by_key(|x| x.to_string());
                }
                for (i, x) in a.iter_mut().enumerate() {
                    path.push(i.to_string());
                    walk(x, path, ids);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut v = v.clone();
    walk(&mut v, &mut Vec::new(), &mut HashMap::new());
    if let Some(procs) = v.get_mut("processes").and_then(Value::as_array_mut) {
        for p in procs {
            if let Some(vmas) = p.get_mut("vmas").and_then(Value::as_array_mut) {
                merge_adjacent(vmas);
            }
        }
    }
    v
}

/// Merges each anonymous mapping of `vmas` into the one before when it starts where that one
/// ends and is otherwise the same: the kernel merges anonymous mappings that the restore made
/// next to each other, which the original had apart.
fn merge_adjacent(vmas: &mut Vec<serde_json::Value>) {
    use serde_json::Value;
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    let rest = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("start");
            m.remove("end");
        }
        v
    };
    let mut out: Vec<Value> = Vec::with_capacity(vmas.len());
    for vma in vmas.drain(..) {
        if let Some(last) = out.last_mut() {
            let anonymous = vma.get("kind") == Some(&serde_json::json!("Anonymous"));
            if anonymous && num(last, "end") == num(&vma, "start") && rest(last) == rest(&vma) {
                if let (Some(m), Some(end)) = (last.as_object_mut(), num(&vma, "end")) {
                    m.insert("end".into(), end.into());
                    continue;
                }
            }
        }
        out.push(vma);
    }
    *vmas = out;
}

/// Collects into `diffs` the paths where `a` and `b` differ, but for those `masks` match.
fn json_diff<'a>(
    a: &'a serde_json::Value,
    b: &'a serde_json::Value,
    path: &mut Vec<String>,
    masks: &[&str],
    diffs: &mut Vec<String>,
) {
    use serde_json::Value;
    if masks.iter().any(|m| mask_matches(m, path)) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                path.push(k.clone());
                match y.get(k) {
                    Some(vb) => json_diff(va, vb, path, masks, diffs),
                    None => diffs.push(format!("{}: only in cycle 1", path.join("/"))),
                }
                path.pop();
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                path.push(k.clone());
                diffs.push(format!("{}: not in cycle 1", path.join("/")));
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                path.push("len".into());
                if !masks.iter().any(|m| mask_matches(m, path)) {
                    diffs.push(format!("{}: {} then {}", path.join("/"), x.len(), y.len()));
                }
                path.pop();
            }
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                path.push(i.to_string());
                json_diff(va, vb, path, masks, diffs);
                path.pop();
            }
        }
        _ if a != b => diffs.push(format!("{}: {a} then {b}", path.join("/"))),
        _ => {}
    }
}

/// Whether `mask` (`a/*/b`) matches `path` or a path above it.
fn mask_matches(mask: &str, path: &[String]) -> bool {
    let parts: Vec<&str> = mask.split('/').collect();
    parts.len() <= path.len() && parts.iter().zip(path).all(|(m, p)| *m == "*" || m == p)
}

// ---------------------------------------------------------------------------
// The tests: one per (program, mode).

/// Registers the programs of `tests/zdtm/`, one line each:
///
/// ```text
/// NAME [= PROGRAM] [[ARGS...]] [except { VARIANT: "reason", ... }] [also { SUFFIX: MODE, ... }];
/// ```
///
/// Each line makes one `#[test]` per variant, named `zdtm_NAME_VARIANT`:
/// `sanity` ([`Mode::Sanity`]), `dump_restore`, `leave_running`, `cycles3`
/// (three dump/restore cycles) and `restore_twice`. `NAME` is the program
/// (`tests/zdtm/NAME.c`, `.sh` or `.py`) unless `= PROGRAM` names another
/// (the same program run with other arguments). `except` leaves variants out,
/// each with the reason why it cannot pass: they are still generated, as
/// `#[ignore = "reason"]` tests (`cargo test -- --ignored` runs them). `also`
/// adds tests `zdtm_NAME_SUFFIX` in other modes.
///
/// Next to the tests it defines `REGISTERED` (test name, program) and
/// `EXCLUDED` (test name, variant, reason), which
/// `every_zdtm_program_is_registered` checks.
macro_rules! zdtm_tests {
    // Collects the `#[ignore]` attribute of each variant from the `except`
    // list: {sanity} {dump_restore} {leave_running} {cycles3} {restore_twice}.
    (@variants $line:tt {$($s:tt)*} {$($d:tt)*} {$($l:tt)*} {$($c:tt)*} {$($r:tt)*}
        sanity: $why:literal, $($rest:tt)*) => {
        zdtm_tests!(@variants $line {$($s)* #[ignore = $why]} {$($d)*} {$($l)*} {$($c)*} {$($r)*} $($rest)*);
    };
    (@variants $line:tt {$($s:tt)*} {$($d:tt)*} {$($l:tt)*} {$($c:tt)*} {$($r:tt)*}
        dump_restore: $why:literal, $($rest:tt)*) => {
        zdtm_tests!(@variants $line {$($s)*} {$($d)* #[ignore = $why]} {$($l)*} {$($c)*} {$($r)*} $($rest)*);
    };
    (@variants $line:tt {$($s:tt)*} {$($d:tt)*} {$($l:tt)*} {$($c:tt)*} {$($r:tt)*}
        leave_running: $why:literal, $($rest:tt)*) => {
        zdtm_tests!(@variants $line {$($s)*} {$($d)*} {$($l)* #[ignore = $why]} {$($c)*} {$($r)*} $($rest)*);
    };
    (@variants $line:tt {$($s:tt)*} {$($d:tt)*} {$($l:tt)*} {$($c:tt)*} {$($r:tt)*}
        cycles3: $why:literal, $($rest:tt)*) => {
        zdtm_tests!(@variants $line {$($s)*} {$($d)*} {$($l)*} {$($c)* #[ignore = $why]} {$($r)*} $($rest)*);
    };
    (@variants $line:tt {$($s:tt)*} {$($d:tt)*} {$($l:tt)*} {$($c:tt)*} {$($r:tt)*}
        restore_twice: $why:literal, $($rest:tt)*) => {
        zdtm_tests!(@variants $line {$($s)*} {$($d)*} {$($l)*} {$($c)*} {$($r)* #[ignore = $why]} $($rest)*);
    };
    (@variants $line:tt $s:tt $d:tt $l:tt $c:tt $r:tt $other:ident: $why:literal, $($rest:tt)*) => {
        compile_error!(concat!(
            "zdtm_tests!: no variant `", stringify!($other),
            "` (sanity, dump_restore, leave_running, cycles3, restore_twice)"
        ));
    };
    (@variants [$name:ident $prog:expr, $args:expr]
        {$($s:tt)*} {$($d:tt)*} {$($l:tt)*} {$($c:tt)*} {$($r:tt)*}) => {
        zdtm_tests!(@test $name $prog, $args, [$($s)*] sanity => Sanity);
        zdtm_tests!(@test $name $prog, $args, [$($d)*] dump_restore => DumpRestore);
        zdtm_tests!(@test $name $prog, $args, [$($l)*] leave_running => LeaveRunning);
        zdtm_tests!(@test $name $prog, $args, [$($c)*] cycles3 => Cycles(3));
        zdtm_tests!(@test $name $prog, $args, [$($r)*] restore_twice => RestoreTwice);
    };
    (@test $name:ident $prog:expr, $args:expr, [$($attr:tt)*] $variant:ident => $mode:expr) => {
        stasis_test_infra::paste! {
            #[test]
            $($attr)*
            fn [<zdtm_ $name _ $variant>]() {
                run(stringify!([<zdtm_ $name _ $variant>]), $prog, $args, $mode);
            }
        }
    };
    // One line: the five variants and the extra tests.
    (@line $name:ident $prog:tt $args:tt [$($ex:tt)*] [$($extra:ident: $mode:expr,)*]) => {
        zdtm_tests!(@variants [$name $prog, &$args] {} {} {} {} {} $($ex)*);
        $(zdtm_tests!(@test $name $prog, &$args, [] $extra => $mode);)*
    };
    // The program: NAME, or PROGRAM after `=`.
    (@prog $name:ident) => { stringify!($name) };
    (@prog $name:ident $prog:ident) => { stringify!($prog) };
    ($(
        $name:ident $(= $prog:ident)? $([$($arg:literal),* $(,)?])?
            $(except { $($ex:ident: $why:literal),* $(,)? })?
            $(also { $($extra:ident: $mode:expr),* $(,)? })?
    ;)*) => {
        /// (test name, program) of every line of the registry.
        const REGISTERED: &[(&str, &str)] = &[
            $((stringify!($name), zdtm_tests!(@prog $name $($prog)?)),)*
        ];
        /// (test name, variant, reason) of every variant left out.
        const EXCLUDED: &[(&str, &str, &str)] = &[
            $($($((stringify!($name), stringify!($ex), $why),)*)?)*
        ];
        $(
            zdtm_tests!(
                @line $name (zdtm_tests!(@prog $name $($prog)?)) [$($($arg),*)?]
                [$($($ex: $why,)*)?] [$($($extra: $mode,)*)?]
            );
        )*
    };
}

use Mode::*;

// One line per program of tests/zdtm/ (see `zdtm_tests!` above).
zdtm_tests! {
    busy_loop;
    mem_anon ["64"] also { lazy: Lazy };
    mem_heap also { lazy: Lazy };
    mem_stack also { lazy: Lazy };
    mem_file_private also { lazy: Lazy };
    mem_file_shared;
    mem_shared_anon also { lazy: Lazy };
    vdso;
    regs_gpr;
    regs_fpu;
    tls;
    sleep_nanosleep also { cycles2: Cycles(2) };
    sleep_pause;
    syscall_read_pipe also { cycles2: Cycles(2) };
    syscall_poll;
    rseq;
    robust_tid;
    mm_fields;
    files_regular;
    files_deleted;
    files_deleted_sparse;
    files_deleted_mapped;
    files_deleted_linked;
    files_deleted_dir;
    files_times;
    files_devnull_dir;
    files_proc_self;
    file_fanotify;
    file_epoll_closed;
    mem_shm_unlinked;
    mem_aio_ring;
    tree_clone_files_kids;
    process_chroot;
    process_cwd_dead_proc;
    pipe_inflight;
    signals;
    itimers;
    process_state;
    creds;
    file_eventfd;
    file_timerfd;
    file_signalfd;
    file_epoll;
    file_inotify;
    file_memfd;
    posix_timers;
    // Threads and process trees.
    thread_compute also { cycles2: Cycles(2), lazy: Lazy };
    thread_blocked;
    thread_signals;
    tree_pipes also { cycles2: Cycles(2) };
    tree_shared_file;
    tree_shared_anon also { lazy: Lazy };
    tree_session;
    tree_wait;
    tree_orphan;
    tree_clone_files;
    // A process group whose leader is dead: the restore recreates it with a stand-in leader.
    tree_orphan_pgid = tree_orphan ["pgid"];
    // Issue 10's bugs: threads in a non-root process, itimers that fire while frozen,
    // children exiting during the freeze, lone pipe ends, make -j, status flags.
    tree_threads also { lazy: Lazy };
    tree_mem_mixed also {
        compress_dump_restore: Compressed(&DumpRestore),
        compress_leave_running: Compressed(&LeaveRunning),
        compress_cycles2: Compressed(&Cycles(2)),
    };
    itimer_frozen;
    shell_spawn also { cycles8: Cycles(8) };
    pipe_lone_end;
    make_jobs;
    file_status_flags;
    // Inet sockets (files::tcp, files::udp).
    sock_tcp_loop;
    sock_tcp6 = sock_tcp_loop ["6"];
    sock_tcp_mapped = sock_tcp_loop ["mapped"];
    sock_tcp_listen;
    sock_tcp_half;
    sock_udp;
    sock_udp_mcast;
    sock_opts;
    sock_raw;
    // Unix sockets (issue 9).
    sock_unix_pair;
    sock_unix_shutdown;
    sock_unix_listen;
    sock_unix_tree;
    sock_unix_cred;
    sock_unix_rights;
    // Processes and memory: memory advice, scheduling and prctl state, job-control stops.
    mem_madvise also { lazy: Lazy };
    mem_precopy;
    // A written page of a private file mapping dropped (MADV_DONTNEED) during the pre-copy.
    mem_precopy_file_drop;
    // Memory shared copy-on-write by a parent, its children and a grandchild comes back
    // shared (pages::cow).
    mem_cow_tree except {
        leave_running: "a --leave-running dump pre-copies the tree while it runs, and pages are \
            found shared with the parent only on the frozen path: the restored copy's children \
            get their own copies (the contents are right; the test checks the sharing too)",
    } also {
        lazy: Lazy,
        compress_dump_restore: Compressed(&DumpRestore),
    };
    sched_prio;
    process_stopped;
    // Seccomp: filters shared by threads (TSYNC), per thread (LOG) and inherited by a child;
    // strict mode in a thread and in a child.
    seccomp_filter;
    seccomp_strict;
    // A program run from a memfd (fexecve): its exe link is the recreated memfd.
    exe_memfd;
    // pidfds of the process itself, of a child, of a zombie child, and of the parent.
    pidfd;
    pidfd_tree;
    // A process that unmapped its vdso and vvar.
    vdso_unmapped;
    // Files: named FIFOs (also deleted), O_PATH descriptors, owners and signals of O_ASYNC.
    fifo;
    file_opath;
    file_fown;
    // Locks: POSIX (two ranges), OFD, flock and a lease; a child blocked in F_SETLKW.
    file_locks;
    // Netlink sockets (route, generic, usersock, uevent: ports, groups, options, a filter)
    // and packet sockets (bound to lo, options, filter, memberships, fanout).
    sock_netlink;
    sock_packet;
    // Terminals: a pty pair with bytes queued both ways, termios, window size, lock and
    // exclusive mode; a session leader whose controlling terminal is a pty of the tree, with
    // a foreground and a background group.
    tty_pty_pair;
    tty_session;
    // Scripts: tests/zdtm/python_threads.py (python3 -u -I), shell_pipeline.sh (bash).
    python_threads;
    shell_pipeline except {
        leave_running: "the pipeline writes consumed.txt all the time, and files are not part of \
            the images: the original, left running, writes lines past the dump that the restored \
            copy has not written yet (and may not overwrite), so it finds consumed.txt longer than \
            what it consumed",
        restore_twice: "the pipeline writes consumed.txt all the time, and files are not part of \
            the images: the first restored copy may write more lines than the second one (restored \
            at the same offset) overwrites, which then finds consumed.txt longer than what it \
            consumed (passes or fails by timing)",
    };
}

/// Files of `tests/zdtm/` with a program's extension that are not test
/// programs.
const NOT_PROGRAMS: &[&str] = &["run-standalone.sh"];

/// Every program of `tests/zdtm/` (`*.c`, `*.sh`, `*.py`, but not `lib/` and
/// [`NOT_PROGRAMS`]) has its line in the registry, every line names a
/// program that exists, and every variant left out says why.
#[test]
fn every_zdtm_program_is_registered() {
    let dir = zdtm_dir();
    let mut programs: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| !NOT_PROGRAMS.contains(&f.as_str()))
        .filter_map(|f| {
            let (stem, ext) = f.rsplit_once('.')?;
            (ext == "c" || SCRIPT_EXTENSIONS.contains(&ext)).then(|| stem.to_string())
        })
        .collect();
    programs.sort();
    programs.dedup();
    let unregistered: Vec<&String> = programs
        .iter()
        .filter(|p| !REGISTERED.iter().any(|(_, prog)| prog == p))
        .collect();
    assert!(
        unregistered.is_empty(),
        "programs of {} without a line in `zdtm_tests!` (crates/cli/tests/zdtm.rs): {unregistered:?}; \
         add `NAME;` for each (all variants), with `except {{ VARIANT: \"reason\" }}` for a \
         variant it cannot pass",
        dir.display()
    );
    let missing: Vec<&str> = REGISTERED
        .iter()
        .filter(|(_, prog)| !programs.iter().any(|p| p == prog))
        .map(|(name, _)| *name)
        .collect();
    assert!(
        missing.is_empty(),
        "lines of `zdtm_tests!` whose program is not in {}: {missing:?}",
        dir.display()
    );
    let mut names: Vec<&str> = REGISTERED.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names.len(),
        REGISTERED.len(),
        "a test name is registered twice"
    );
    for (name, variant, why) in EXCLUDED {
        assert!(
            why.trim().len() >= 20,
            "zdtm_{name}_{variant} is left out with too short a reason: {why:?}"
        );
        let dups = EXCLUDED
            .iter()
            .filter(|(n, v, _)| n == name && v == variant)
            .count();
        assert_eq!(dups, 1, "zdtm_{name}_{variant} is left out twice");
    }
}
