//! Root's `stasis restore` of images a user could have written (docs/security.md, "Root's
//! restore of images a user could have written"): images that are not authenticated and that
//! another user owns are restored *as that user* (`as_user::restore_as_owner`), with a notice
//! on stderr; images nobody in particular owns (writable by group or others) are refused;
//! `--trust-images` restores them as they are; authenticated images, and root's own, restore
//! as they are, without a notice.
//!
//! Each test dumps a `sleep` as root (cwd `/`, stdio `/dev/null`, so that any user can have it
//! back), then hands the images to the unprivileged test user (`chown`) and edits their
//! credentials where the test says so (the images are dumped with `--no-auth`, so edits are
//! not refused as such).
//!
//! The tests need root (and `useradd` for the test user): without it each test fails under CI
//! (`CI=true`) and elsewhere prints a notice and returns. They run one at a time (a lock) and
//! check that a refused restore leaves no process behind. Work directories of failed tests are
//! kept in `target/tmp/root_restore/<test name>/`.

#![allow(clippy::unwrap_used)] // a test that cannot set up fails

use stasis_image::{names, ProcessImage, RecordKind};
use stasis_test_infra::process::{
    become_subreaper, describe_exit_status, isolate, kill, kill_child, live_children,
    wait_child_for, wait_pid, wait_sleeping,
};
use stasis_test_infra::procfs::{self, status_field, status_ids};
use stasis_test_infra::user::{test_user, TestUser};
use stasis_test_infra::{require_root, require_tool, WorkDir};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Deadline for one stasis command.
const STASIS_TIMEOUT: Duration = Duration::from_secs(30);

/// The words of the notice of a restore as the images' owner.
const AS_OWNER: &str = "restoring as";

/// One test's world: the lock that serializes these tests, its work directory, the user.
struct Ctx {
    _lock: MutexGuard<'static, ()>,
    dir: WorkDir,
    user: &'static TestUser,
}

/// `None` when the test cannot run (see `require_root`).
fn start(test: &str) -> Option<Ctx> {
    if !require_root() || !require_tool("useradd") {
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    for (pid, comm) in live_children() {
        eprintln!("{test}: killing pid {pid} ({comm}) left over by an earlier test");
        kill(pid, libc::SIGKILL);
        let _ = wait_pid(pid, Duration::from_secs(5));
    }
    let dir = WorkDir::new(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("root_restore")
            .join(test),
    );
    Some(Ctx {
        _lock: lock,
        dir,
        user: test_user(),
    })
}

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            describe_exit_status(self.status),
            self.stdout,
            self.stderr
        )
    }

    /// The pid a successful `restore --detach` printed; panics otherwise.
    fn restored_pid(&self, what: &str) -> i32 {
        assert!(self.status.success(), "{what}: {}", self.describe());
        self.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{what}: no pid on stdout: {}", self.describe()))
    }
}

impl Ctx {
    /// Runs `stasis ARGS` (output into files of the work directory, not pipes a restored
    /// process could hold); panics when it does not end within [`STASIS_TIMEOUT`].
    fn stasis(&self, args: &[&OsStr]) -> Out {
        let (out, err) = (self.dir.join(".stasis.out"), self.dir.join(".stasis.err"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_stasis"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let Some(status) = wait_child_for(&mut child, STASIS_TIMEOUT).unwrap() else {
            kill_child(&mut child);
            panic!("stasis {args:?} did not end within {STASIS_TIMEOUT:?}");
        };
        Out {
            status,
            stdout: fs::read_to_string(&out).unwrap_or_default(),
            stderr: fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// `stasis restore -D IMAGES --detach EXTRA...`.
    fn restore(&self, images: &Path, extra: &[&str]) -> Out {
        let mut args: Vec<&OsStr> = vec![
            "restore".as_ref(),
            "-D".as_ref(),
            images.as_os_str(),
            "--detach".as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        self.stasis(&args)
    }

    /// Starts a `sleep` as root (cwd `/`, stdio `/dev/null`) and dumps it into the new
    /// directory `name` with the options `extra` (it is killed by the dump); returns its pid
    /// and the images.
    fn dump_sleep(&self, name: &str, extra: &[&OsStr]) -> (i32, PathBuf) {
        let mut cmd = Command::new("sleep");
        cmd.arg("100")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = isolate(&mut cmd).spawn().unwrap();
        let pid = child.id() as i32;
        if let Err(e) = wait_sleeping(pid, Some("sleep"), Duration::from_secs(10)) {
            kill_child(&mut child);
            panic!("{e}");
        }
        let images = self.dir.join(name);
        let pid_s = pid.to_string();
        let mut args: Vec<&OsStr> = vec![
            "dump".as_ref(),
            "-t".as_ref(),
            pid_s.as_ref(),
            "-D".as_ref(),
            images.as_os_str(),
        ];
        args.extend_from_slice(extra);
        let out = self.stasis(&args);
        if !out.status.success() {
            kill_child(&mut child);
            panic!("dump of sleep {pid}: {}", out.describe());
        }
        let _ = child.wait();
        fs::set_permissions(&images, fs::Permissions::from_mode(0o700)).unwrap();
        (pid, images)
    }

    /// Gives the directory `images` and every file in it to `uid`:`gid`.
    fn give(&self, images: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(images, Some(uid), Some(gid)).unwrap();
        for e in fs::read_dir(images).unwrap() {
            std::os::unix::fs::chown(e.unwrap().path(), Some(uid), Some(gid)).unwrap();
        }
    }

    /// Gives the images to the test user.
    fn give_to_user(&self, images: &Path) {
        self.give(images, self.user.uid, self.user.gid);
    }
}

/// Re-encodes the process record of `pid` in `images` after `edit` (valid CRCs; the owner of
/// the file stays).
fn edit_process(images: &Path, pid: i32, edit: impl FnOnce(&mut ProcessImage)) {
    let path = images.join(names::process(pid));
    let bytes = fs::read(&path).unwrap();
    let mut img: ProcessImage = stasis_image::decode_record(RecordKind::Process, &bytes, &path)
        .unwrap_or_else(|e| panic!("decode {}: {e}", path.display()));
    edit(&mut img);
    fs::write(
        &path,
        stasis_image::encode_record(RecordKind::Process, &img, &path).unwrap(),
    )
    .unwrap();
}

/// Credentials of `uid`:`gid` in `groups`, without capabilities (the bounding set stays).
fn creds_of(img: &mut ProcessImage, uid: u32, gid: u32, groups: Vec<u32>) {
    let c = &mut img.creds;
    c.uids = [uid; 4];
    c.gids = [gid; 4];
    c.groups = groups;
    c.cap_inheritable = 0;
    c.cap_permitted = 0;
    c.cap_effective = 0;
    c.cap_ambient = 0;
    c.securebits = 0;
    c.keepcaps = false;
}

/// The groups of the test user, as the group database lists them (`id -G`).
fn groups_of(user: &TestUser) -> Vec<u32> {
    let out = Command::new("id")
        .arg("-G")
        .arg(&user.name)
        .output()
        .unwrap();
    assert!(out.status.success(), "id -G {}: {out:?}", user.name);
    let mut g: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    g.sort_unstable();
    g
}

/// A capability set of /proc/PID/status as a number.
fn caps(pid: i32, key: &str) -> u64 {
    let v = status_field(pid, key).unwrap_or_else(|| panic!("no {key} for pid {pid}"));
    u64::from_str_radix(&v, 16).unwrap()
}

/// The restored `pid` runs (sleeps in its nanosleep), as `sleep`.
fn check_runs(pid: i32) {
    wait_sleeping(pid, Some("sleep"), Duration::from_secs(10)).unwrap();
}

/// Kills the restored `pid` (our child, by the subreaper, once `stasis` exited) and reaps it.
fn finish(pid: i32) {
    kill(pid, libc::SIGKILL);
    wait_pid(pid, Duration::from_secs(10)).unwrap();
}

/// A refused or failed restore: non-zero exit, an error line, no process with `pid`, no
/// process left behind.
fn check_failed(what: &str, out: &Out, pid: i32) {
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "{what}: {}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("panicked"),
        "{what}: {}",
        out.describe()
    );
    assert!(
        out.stderr.lines().any(|l| l.starts_with("restore: ")),
        "{what}: no error line: {}",
        out.describe()
    );
    assert!(!procfs::exists(pid), "{what}: pid {pid} exists");
    assert_eq!(live_children(), vec![], "{what}: processes left behind");
    eprintln!("{what}: {}", out.stderr.trim_end());
}

/// A user's images whose process record says uid 0 with every capability: root's restore
/// restores them as the user, which cannot become root (the restore is refused before any
/// process is made, and the kernel would refuse the ids anyway), and nothing runs;
/// `--trust-images` restores them as root, as asked.
#[test]
fn user_images_claiming_root_run_as_root_only_when_trusted() {
    let Some(ctx) = start("user_images_claiming_root_run_as_root_only_when_trusted") else {
        return;
    };
    let (pid, images) = ctx.dump_sleep("img", &["--no-auth".as_ref()]);
    let full = caps(std::process::id() as i32, "CapBnd");
    edit_process(&images, pid, |img| {
        let c = &mut img.creds;
        c.uids = [0; 4];
        c.gids = [0; 4];
        c.cap_permitted = full;
        c.cap_effective = full;
        c.cap_bounding = full;
    });
    ctx.give_to_user(&images);

    let out = ctx.restore(&images, &[]);
    let notice = format!(
        "restore: the images are owned by uid {} ({}) and not authenticated",
        ctx.user.uid, ctx.user.name
    );
    assert!(
        out.stderr
            .lines()
            .next()
            .is_some_and(|l| l.starts_with(&notice)
                && l.contains("restoring as that user (use --trust-images")),
        "no notice: {}",
        out.describe()
    );
    check_failed("user's images claiming uid 0", &out, pid);
    assert!(
        out.stderr
            .contains(&format!("not those of uid {}", ctx.user.uid))
            || out.stderr.contains("setresuid"),
        "the restore as the user did not fail on the ids: {}",
        out.describe()
    );

    let out = ctx.restore(&images, &["--trust-images"]);
    let restored = out.restored_pid("--trust-images");
    assert_eq!(restored, pid);
    assert_eq!(out.stderr, "", "--trust-images says nothing");
    check_runs(pid);
    assert_eq!(status_ids(pid, "Uid"), vec![0; 4]);
    assert_eq!(caps(pid, "CapEff"), full);
    finish(pid);
}

/// A user's images, with the user's credentials, restore as the user without
/// `--trust-images`: the user's ids and groups, no capabilities, and a one-line notice.
#[test]
fn user_images_restore_as_the_user() {
    let Some(ctx) = start("user_images_restore_as_the_user") else {
        return;
    };
    let u = ctx.user;
    let groups = groups_of(u);
    let (pid, images) = ctx.dump_sleep("img", &["--no-auth".as_ref()]);
    edit_process(&images, pid, |img| {
        creds_of(img, u.uid, u.gid, groups.clone())
    });
    ctx.give_to_user(&images);

    let out = ctx.restore(&images, &[]);
    let restored = out.restored_pid("the user's images");
    assert_eq!(restored, pid);
    let expected = format!(
        "restore: the images are owned by uid {} ({}) and not authenticated",
        u.uid, u.name
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.len() == 1
            && lines[0].starts_with(&expected)
            && lines[0].ends_with(
                ": restoring as that user (use --trust-images to restore them as they are)"
            ),
        "not the one-line notice: {}",
        out.describe()
    );
    eprintln!("{}", lines[0]);
    check_runs(pid);
    assert_eq!(status_ids(pid, "Uid"), vec![u.uid; 4]);
    assert_eq!(status_ids(pid, "Gid"), vec![u.gid; 4]);
    let mut restored_groups = status_ids(pid, "Groups");
    restored_groups.sort_unstable();
    assert_eq!(restored_groups, groups);
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(caps(pid, set), 0, "{set} of the restored process");
    }
    assert_eq!(fs::metadata(format!("/proc/{pid}")).unwrap().uid(), u.uid);
    finish(pid);

    // Attached: stasis waits for the restored process (its child, though the restorer made
    // it) and exits with its status.
    let mut cli = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["restore".as_ref(), "-D".as_ref(), images.as_os_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(ctx.dir.join(".attached.err")).unwrap())
        .spawn()
        .unwrap();
    check_runs(pid);
    assert_eq!(status_ids(pid, "Uid"), vec![u.uid; 4]);
    assert_eq!(
        procfs::ppid(pid),
        Some(cli.id() as i32),
        "not stasis's child"
    );
    kill(pid, libc::SIGTERM);
    let status = wait_child_for(&mut cli, STASIS_TIMEOUT).unwrap();
    if status.is_none() {
        kill_child(&mut cli);
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(128 + libc::SIGTERM),
        "the attached restore: {status:?}\n{}",
        fs::read_to_string(ctx.dir.join(".attached.err")).unwrap_or_default()
    );
}

/// Images owned by a uid without a passwd entry restore as that uid, with the images' group,
/// and the notice says so.
#[test]
fn images_of_a_uid_without_passwd_entry_restore_as_that_uid() {
    let Some(ctx) = start("images_of_a_uid_without_passwd_entry_restore_as_that_uid") else {
        return;
    };
    // A uid and gid nobody has, here.
    let (uid, gid) = (3_999_000_000 + std::process::id() % 100_000, 3_999_000_007);
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&uid.to_string())),
        "uid {uid} is in /etc/passwd"
    );
    let (pid, images) = ctx.dump_sleep("img", &["--no-auth".as_ref()]);
    edit_process(&images, pid, |img| creds_of(img, uid, gid, vec![gid]));
    ctx.give(&images, uid, gid);

    let out = ctx.restore(&images, &[]);
    let restored = out.restored_pid("images of a uid without a passwd entry");
    assert_eq!(restored, pid);
    assert!(
        out.stderr.starts_with(&format!(
            "restore: the images are owned by uid {uid}, which has no passwd entry, and not authenticated"
        )) && out.stderr.contains(&format!(
            "restoring as uid {uid} with the images' group, gid {gid} (use --trust-images"
        )) && out.stderr.lines().count() == 1,
        "not the one-line notice: {}",
        out.describe()
    );
    eprintln!("{}", out.stderr.trim_end());
    check_runs(pid);
    assert_eq!(status_ids(pid, "Uid"), vec![uid; 4]);
    assert_eq!(status_ids(pid, "Gid"), vec![gid; 4]);
    assert_eq!(caps(pid, "CapEff"), 0);
    finish(pid);
}

/// Root's authenticated images restore as they are when a user owns them, without a notice;
/// the same images with `--no-auth` (authentication not checked) are the user's to have
/// written, and restore as the user (refused: they say uid 0). A record edited afterwards
/// fails the restore of the authenticated images.
#[test]
fn authenticated_images_owned_by_a_user_restore_as_they_are() {
    let Some(ctx) = start("authenticated_images_owned_by_a_user_restore_as_they_are") else {
        return;
    };
    let key = ctx.dir.join("key").join("image.key");
    let (pid, images) = ctx.dump_sleep("img", &["--key-file".as_ref(), key.as_os_str()]);
    assert!(
        images.join(names::AUTH).exists(),
        "the dump is not authenticated"
    );
    ctx.give_to_user(&images);
    let key_s = key.to_str().unwrap();

    let out = ctx.restore(&images, &["--no-auth"]);
    assert!(
        out.stderr
            .contains("not authenticated (--no-auth: not checked)")
            && out.stderr.contains(AS_OWNER),
        "{}",
        out.describe()
    );
    check_failed("authenticated images with --no-auth", &out, pid);

    let out = ctx.restore(&images, &["--key-file", key_s]);
    let restored = out.restored_pid("authenticated images owned by the user");
    assert_eq!(restored, pid);
    assert_eq!(out.stderr, "", "a notice for authenticated images");
    check_runs(pid);
    assert_eq!(
        status_ids(pid, "Uid"),
        vec![0; 4],
        "not restored as they are"
    );
    finish(pid);

    // An edit after the dump: the images are still judged authenticated (auth.img verifies),
    // and the restore, which checks every byte it reads, fails on the edited record.
    edit_process(&images, pid, |img| img.task.umask ^= 0o002);
    let out = ctx.restore(&images, &["--key-file", key_s]);
    assert!(
        out.stderr.contains(&names::process(pid)) && out.stderr.contains("not authenticated"),
        "{}",
        out.describe()
    );
    check_failed("an edited authenticated record", &out, pid);
}

/// Root's own images (a root-owned 0700 directory, files root's) restore as they are, as
/// before, without a notice, authenticated or not.
#[test]
fn root_own_images_restore_as_before() {
    let Some(ctx) = start("root_own_images_restore_as_before") else {
        return;
    };
    let (pid, images) = ctx.dump_sleep("img", &["--no-auth".as_ref()]);
    let md = fs::metadata(&images).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o700));
    let out = ctx.restore(&images, &[]);
    let restored = out.restored_pid("root's own images");
    assert_eq!(restored, pid);
    assert_eq!(out.stderr, "", "a notice for root's own images");
    check_runs(pid);
    assert_eq!(status_ids(pid, "Uid"), vec![0; 4]);
    finish(pid);
}

/// Images in root's directory that group or others can write have no single owner to restore
/// them as: refused, naming the entry and --trust-images; with --trust-images they restore as
/// they are.
#[test]
fn images_writable_by_others_are_refused_unless_trusted() {
    let Some(ctx) = start("images_writable_by_others_are_refused_unless_trusted") else {
        return;
    };
    let (pid, images) = ctx.dump_sleep("img", &["--no-auth".as_ref()]);
    let chmod =
        |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    let pages = images.join(names::pages(pid));

    chmod(&pages, 0o606);
    let out = ctx.restore(&images, &[]);
    check_failed("a pages file writable by others", &out, pid);
    assert!(
        out.stderr.contains(&format!(
            "{} is writable by others (mode 0606, owner uid 0)",
            pages.display()
        )) && out.stderr.contains("--trust-images")
            && !out.stderr.contains(AS_OWNER),
        "{}",
        out.describe()
    );

    chmod(&pages, 0o600);
    chmod(&images, 0o770);
    let out = ctx.restore(&images, &[]);
    check_failed("a directory writable by its group", &out, pid);
    assert!(
        out.stderr.contains(&format!(
            "{} is writable by its group (gid 0) (mode 0770",
            images.display()
        )) && out.stderr.contains("--trust-images"),
        "{}",
        out.describe()
    );

    let out = ctx.restore(&images, &["--trust-images"]);
    let restored = out.restored_pid("--trust-images");
    assert_eq!(restored, pid);
    assert_eq!(out.stderr, "");
    check_runs(pid);
    assert_eq!(status_ids(pid, "Uid"), vec![0; 4]);
    finish(pid);
}
