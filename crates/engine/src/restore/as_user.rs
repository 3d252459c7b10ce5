//! Restore for a user other than root, *as* that user.
//!
//! stasisd restores images on behalf of unprivileged users. Checking image fields against the
//! requester and then doing the work with root's power leaves a hole for every field or kernel
//! object forgotten. Instead, the restore runs in a **restorer process** forked for it, which
//! becomes the requester before it reads a single byte of the images ([`enter`]):
//!
//! 1. a requester in another user, pid or time namespace than the daemon's is refused
//!    ([`check_namespaces`]): ids, capabilities and pids in the images only mean something in
//!    the daemon's;
//! 2. `setsid()`: no controlling terminal (`/dev/tty` gives ENXIO) and no session of the daemon;
//! 3. the requester's cgroups are joined (its pids, memory, ... limits apply to everything the
//!    restore creates), then its mount, network, IPC, UTS and cgroup namespaces (one `setns` on
//!    its pidfd) and its root directory: paths resolve as the requester sees them;
//! 4. its resource limits are applied (the kernel enforces them; the soft limit of open files
//!    is raised to the hard one, which anyone may do, for the descriptors the restore holds);
//! 5. the bounding set is reduced to the requester's; its groups, gid and uid are taken (with
//!    keep-caps); only the requester's own capabilities and [`RESTORER_CAPS`] stay permitted
//!    and effective, none inheritable or ambient; the process is made dumpable again (the uid
//!    change made it non-dumpable, and then it could not ptrace its own children); the
//!    requester's no_new_privs is set; the restorer dies with its parent.
//!
//! Then the ordinary restore runs in it. Whatever an image says, the kernel grants nothing the
//! requester could not get itself: other ids (setresuid: EPERM), capabilities (capset: EPERM;
//! and the credentials step keeps image ∩ requester's, dropping CAP_CHECKPOINT_RESTORE),
//! limits above the requester's hard limits (EPERM), files it cannot open (EACCES), the
//! /proc links of others' processes (ptrace access checks as the requester), terminals; and
//! inotify instances, queued signals and processes are charged to it. See docs/security.md.
//!
//! [`restore_as`] does all of it: forks the restorer, which enters, restores, and reports the
//! restored pid (or a typed error) over a pipe. The root of the restored tree is a child of
//! the caller of `restore_as` (CLONE_PARENT), which may wait for it.
//!
//! Root's `stasis restore` uses the same path for images a user could have written and that
//! are not authenticated ([`images_writers`] says who could have written them): the restorer
//! becomes their owner, an identity without a process ([`RequesterIdentity::for_user`]: ids
//! and groups from the passwd and group databases, no capabilities, and the caller's own
//! namespaces, cgroups, limits, nice value and OOM score adjustment), through
//! [`restore_as_owner`], which joins no namespace (steps 1 and 3 have nothing to do).

use super::{restore, Requester, RestoreOptions, Restored};
use crate::{procfs, Error, ErrorClass};
use serde::{Deserialize, Serialize};
use stasis_image::{ImageDir, Rlimit};
use stasis_sys::privilege::{self, Caps, Namespaces};
use stasis_sys::process::{self, Forked};
use stasis_sys::{ptrace, users, Pid};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// CAP_CHECKPOINT_RESTORE.
pub const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// The capabilities a restorer holds beyond the requester's own, and why:
/// CAP_CHECKPOINT_RESTORE lets it, and the restore children it forks (until their credentials
/// step drops it), create processes and threads with the dumped pids (clone3 `set_tid`), open
/// another process's `/proc/PID/map_files/` entries (shared anonymous memory), and set the exe
/// link (`PR_SET_MM_MAP` with `exe_fd`). Nothing else the restore does needs privilege over the
/// requester's own processes and files.
///
/// Hook for authenticated images: CAP_CHECKPOINT_RESTORE is what lets images choose their
/// pids. When pid choice depends on image authentication, the restorer of unauthenticated
/// images must not keep it (and the restore must then give fresh pids).
pub const RESTORER_CAPS: u64 = 1 << CAP_CHECKPOINT_RESTORE;

/// Namespaces a requester must share with the daemon, and why.
const SHARED_NAMESPACES: [(&str, &str); 3] = [
    (
        "user",
        "ids and capabilities (those of the images, and those it holds there: a full set after `unshare -U -r`) are only meaningful in stasisd's user namespace",
    ),
    (
        "pid",
        "the pids of the images are only meaningful in stasisd's pid namespace, and the restored process would not be in the requester's",
    ),
    (
        "time",
        "the restored timers would run on stasisd's clocks, not the requester's",
    ),
];

/// One line of /proc/PID/cgroup: a hierarchy ("" for cgroup v2, else its controllers or
/// `name=...`) and the path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMembership {
    pub hierarchy: String,
    pub path: String,
}

/// Who a restore runs as: a requester process, read by root from /proc (before anything of the
/// requester's is trusted) while the requester's pidfd pins the process
/// ([`RequesterIdentity::of_process`]); or the owner of images, who has no process
/// ([`RequesterIdentity::for_user`], [`RequesterIdentity::for_ids`]).
#[derive(Debug, Clone)]
pub struct RequesterIdentity {
    /// The requester's process, whose namespaces and root the restorer joins ([`enter`]).
    /// `None` for an identity without a process: the restorer stays in the caller's
    /// namespaces and root ([`restore_as_owner`]).
    pub pid: Option<Pid>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    pub cgroups: Vec<CgroupMembership>,
    /// Its nice value and OOM score adjustment: a restored process inherits the restorer's.
    pub nice: i32,
    pub oom_score_adj: i32,
    /// Its audit login uid (u32::MAX: unset): the restorer takes it while it is still root,
    /// so the restored processes inherit it.
    pub loginuid: u32,
}

impl RequesterIdentity {
    /// Reads the identity of process `pid` (the one behind `pidfd`, whose effective uid and
    /// gid the kernel reported as `uid`, `gid`). Refuses a requester in another user, pid or
    /// time namespace than ours ([`check_namespaces`]). The pidfd is checked after every read:
    /// the pid was not reused meanwhile.
    pub fn of_process(
        pid: Pid,
        pidfd: BorrowedFd<'_>,
        uid: u32,
        gid: u32,
    ) -> Result<RequesterIdentity, Error> {
        check_namespaces(pid)?;
        let st = procfs::read_status(pid)?;
        if st.uids[1] != uid || st.gids[1] != gid {
            return Err(Error::Refused(
                "the requester's credentials changed since it connected".into(),
            ));
        }
        if st.seccomp != 0 {
            return Err(Error::Refused(format!(
                "the requester (pid {pid}) is confined by seccomp: its filters cannot be given to a restored process, which would run without them"
            )));
        }
        let inherited = Inherited::of(pid)?;
        let who = RequesterIdentity {
            pid: Some(pid),
            uid,
            gid,
            groups: st.groups,
            cap_permitted: st.cap_prm,
            cap_effective: st.cap_eff,
            cap_bounding: st.cap_bnd,
            no_new_privs: st.no_new_privs,
            rlimits: inherited.rlimits,
            cgroups: inherited.cgroups,
            nice: inherited.nice,
            oom_score_adj: inherited.oom_score_adj,
            loginuid: inherited.loginuid,
        };
        still_alive(pid, pidfd)?;
        Ok(who)
    }

    /// The identity of user `uid`, who has no process here (the owner of images root
    /// restores): its gid from the passwd database and its groups from the group database
    /// (getgrouplist), and otherwise as [`RequesterIdentity::for_ids`]. An error when `uid` has no
    /// passwd entry.
    pub fn for_user(uid: u32) -> Result<RequesterIdentity, Error> {
        let user = users::user_by_uid(uid)
            .map_err(|e| Error::io(format!("looking up uid {uid} in the passwd database"), e))?
            .ok_or_else(|| {
                Error::Invalid(format!("uid {uid} has no entry in the passwd database"))
            })?;
        let groups = users::group_list(&user.name, user.gid).map_err(|e| {
            Error::io(
                format!("listing the groups of user {} (uid {uid})", user.name),
                e,
            )
        })?;
        RequesterIdentity::for_ids(uid, user.gid, groups)
    }

    /// An identity without a process: `uid`, `gid` and supplementary `groups`, no
    /// capabilities (none permitted or effective), and otherwise the calling process's own
    /// state: its bounding set, no_new_privs, resource limits, cgroups, nice value and OOM
    /// score adjustment (a restored process inherits them from the restorer). Restore with it
    /// through [`restore_as_owner`]: the namespaces and root are the caller's.
    pub fn for_ids(uid: u32, gid: u32, groups: Vec<u32>) -> Result<RequesterIdentity, Error> {
        let me = process::getpid();
        let st = procfs::read_status(me)?;
        let inherited = Inherited::of(me)?;
        Ok(RequesterIdentity {
            pid: None,
            uid,
            gid,
            groups,
            cap_permitted: 0,
            cap_effective: 0,
            cap_bounding: st.cap_bnd,
            no_new_privs: st.no_new_privs,
            rlimits: inherited.rlimits,
            cgroups: inherited.cgroups,
            nice: inherited.nice,
            oom_score_adj: inherited.oom_score_adj,
            loginuid: inherited.loginuid,
        })
    }

    /// What the restore checks the images against (see [`Requester`]).
    pub fn requester(&self) -> Requester {
        Requester {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            cap_permitted: self.cap_permitted,
            rlimits: self.rlimits.clone(),
            loginuid: self.loginuid,
        }
    }
}

/// What a restored process inherits from its restorer, as process `pid` has it: its resource
/// limits, cgroups, nice value and OOM score adjustment.
struct Inherited {
    rlimits: Vec<Rlimit>,
    cgroups: Vec<CgroupMembership>,
    nice: i32,
    oom_score_adj: i32,
    /// The audit login uid (u32::MAX: unset).
    loginuid: u32,
}

impl Inherited {
    fn of(pid: Pid) -> Result<Inherited, Error> {
        let read = |what: &str| procfs::read_string(Path::new(&format!("/proc/{pid}/{what}")));
        let limits = read("limits")?;
        let cgroups = read("cgroup")?;
        let stat = read("stat")?;
        let bad = |what: &str| Error::Invalid(format!("/proc/{pid}/{what} cannot be parsed"));
        // Field 19 of stat, the 17th after the parenthesized command name.
        let nice = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(16)?.parse().ok())
            .ok_or_else(|| bad("stat"))?;
        let oom_score_adj = read("oom_score_adj")?
            .trim()
            .parse()
            .map_err(|_| bad("oom_score_adj"))?;
        let loginuid = read("loginuid")?
            .trim()
            .parse()
            .map_err(|_| bad("loginuid"))?;
        Ok(Inherited {
            rlimits: parse_limits(&limits),
            cgroups: parse_cgroups(&cgroups)?,
            nice,
            oom_score_adj,
            loginuid,
        })
    }
}

/// Refuses (naming the namespace) a process `pid` in another user, pid or time namespace than
/// the calling one.
pub fn check_namespaces(pid: Pid) -> Result<(), Error> {
    for (ns, why) in SHARED_NAMESPACES {
        if ns_id(&format!("/proc/{pid}/ns/{ns}"))? != ns_id(&format!("/proc/self/ns/{ns}"))? {
            return Err(Error::Refused(format!(
                "the requester (pid {pid}) is in another {ns} namespace than stasisd: {why}; ask from stasisd's {ns} namespace"
            )));
        }
    }
    Ok(())
}

fn ns_id(path: &str) -> Result<(u64, u64), Error> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(format!("stat {path}"), e))?;
    Ok((md.dev(), md.ino()))
}

fn still_alive(pid: Pid, pidfd: BorrowedFd<'_>) -> Result<(), Error> {
    process::pidfd_send_signal(pidfd, 0).map_err(|_| Error::NoSuchProcess { pid })
}

/// /proc/PID/limits as limits by resource number (its rows come in RLIMIT_* order:
/// cpu, fsize, data, stack, core, rss, nproc, nofile, memlock, as, locks, sigpending,
/// msgqueue, nice, rtprio, rttime).
pub fn parse_limits(text: &str) -> Vec<Rlimit> {
    let value = |v: &str| {
        if v == "unlimited" {
            Some(u64::MAX)
        } else {
            v.parse().ok()
        }
    };
    text.lines()
        .skip(1)
        .enumerate()
        .filter_map(|(i, line)| {
            let cols: Vec<&str> = line.get(25..)?.split_whitespace().collect();
            Some(Rlimit {
                resource: i as u32,
                soft: value(cols.first()?)?,
                hard: value(cols.get(1)?)?,
            })
        })
        .collect()
}

/// /proc/PID/cgroup as memberships; refuses paths that are not plain absolute paths.
pub fn parse_cgroups(text: &str) -> Result<Vec<CgroupMembership>, Error> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(hierarchy), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(Error::Refused(format!(
                "the requester's cgroup {path:?} is not a path stasisd can join"
            )));
        }
        out.push(CgroupMembership {
            hierarchy: hierarchy.to_string(),
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// A cgroup file system mounted in the calling process's mount namespace.
struct CgroupMount {
    point: String,
    /// cgroup v2.
    v2: bool,
    /// The super-block options (the controllers of a v1 hierarchy).
    options: Vec<String>,
}

fn cgroup_mounts() -> Result<Vec<CgroupMount>, Error> {
    let text = procfs::read_string(std::path::Path::new("/proc/self/mountinfo"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let mut post = post.split_whitespace();
            let (fstype, _source, opts) = (post.next()?, post.next()?, post.next()?);
            // Only hierarchies mounted at their root map a cgroup path to a directory.
            if pre.get(3) != Some(&"/") || !matches!(fstype, "cgroup" | "cgroup2") {
                return None;
            }
            Some(CgroupMount {
                point: pre.get(4)?.to_string(),
                v2: fstype == "cgroup2",
                options: opts.split(',').map(str::to_string).collect(),
            })
        })
        .collect())
}

/// Moves the calling process into every cgroup of the requester (as root, in our mount
/// namespace, before entering the requester's).
fn join_cgroups(who: &RequesterIdentity) -> Result<(), Error> {
    let mine = parse_cgroups(&procfs::read_string(std::path::Path::new(
        "/proc/self/cgroup",
    ))?)?;
    let mounts = cgroup_mounts()?;
    for c in &who.cgroups {
        if mine.contains(c) {
            continue;
        }
        let mount = mounts.iter().find(|m| {
            if c.hierarchy.is_empty() {
                m.v2
            } else {
                !m.v2
                    && c.hierarchy
                        .split(',')
                        .all(|h| m.options.iter().any(|o| o == h))
            }
        });
        let Some(mount) = mount else {
            if c.hierarchy.starts_with("name=") {
                // A named hierarchy without controllers limits nothing.
                continue;
            }
            return Err(Error::Unsupported {
                what: format!(
                    "the requester's cgroup {} of hierarchy {:?} is not mounted where stasisd runs, so its limits could not apply",
                    c.path, c.hierarchy
                ),
            });
        };
        let procs = format!(
            "{}{}/cgroup.procs",
            mount.point,
            c.path.trim_end_matches('/')
        );
        let what = || format!("joining the requester's cgroup: write {procs}");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&procs)
            .map_err(|e| Error::io(what(), e))?;
        f.write_all(b"0").map_err(|e| Error::io(what(), e))?;
    }
    Ok(())
}

/// Makes the calling process the requester (see the module documentation). It must be a
/// single-threaded process forked for this (the daemon's worker forks one per restore): it
/// cannot go back. `pidfd` is the requester's.
pub fn enter(who: &RequesterIdentity, pidfd: BorrowedFd<'_>) -> Result<(), Error> {
    enter_identity(who, Some(pidfd))
}

/// [`enter`], for a requester process (`pidfd`: its namespaces and root are joined) or for an
/// identity without one (`None`: the caller's namespaces and root stay).
fn enter_identity(who: &RequesterIdentity, pidfd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
    let me = process::getpid();
    let sys = |op: &'static str| move |e: std::io::Error| Error::sys(op, me, e);
    let joined = match (who.pid, pidfd) {
        (Some(pid), Some(pidfd)) => Some((pid, pidfd)),
        (None, None) => None,
        (pid, _) => {
            return Err(Error::Internal {
                what: format!(
                    "a restorer for uid {} (process {pid:?}) was given {} pidfd",
                    who.uid,
                    if pid.is_some() { "no" } else { "a" }
                ),
            })
        }
    };
    let parent = privilege::parent_pid();
    // No controlling terminal and no session of the daemon (or of root's shell), before
    // anything else.
    process::setsid().map_err(sys("setsid"))?;
    join_cgroups(who)?;
    apply_limits(who)?;
    apply_scheduling(who)?;
    if let Some((pid, pidfd)) = joined {
        let root_path = format!("/proc/{pid}/root");
        let root: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&root_path)
            .map_err(|e| Error::io(format!("open {root_path}"), e))?
            .into();
        still_alive(pid, pidfd)?;
        privilege::setns_pidfd(
            pidfd,
            Namespaces {
                mount: true,
                network: true,
                ipc: true,
                uts: true,
                cgroup: true,
            },
        )
        .map_err(sys(
            "setns into the requester's mount, network, ipc, uts and cgroup namespaces",
        ))?;
        privilege::chroot_to(root.as_fd()).map_err(sys("chroot to the requester's root"))?;
        drop(root);
    }
    for cap in 0..64u32 {
        if who.cap_bounding & (1 << cap) == 0 && privilege::in_bounding_set(cap).unwrap_or(false) {
            privilege::drop_from_bounding_set(cap).map_err(sys("PR_CAPBSET_DROP"))?;
        }
    }
    privilege::set_groups(&who.groups).map_err(sys("setgroups"))?;
    privilege::set_all_gids(who.gid).map_err(sys("setresgid"))?;
    privilege::set_keep_caps(true).map_err(sys("PR_SET_KEEPCAPS"))?;
    privilege::set_all_uids(who.uid).map_err(sys("setresuid"))?;
    privilege::set_keep_caps(false).map_err(sys("PR_SET_KEEPCAPS"))?;
    let held = privilege::capabilities().map_err(sys("capget"))?;
    let keep = (who.cap_permitted | RESTORER_CAPS) & held.permitted;
    privilege::set_capabilities(Caps {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })
    .map_err(sys("capset"))?;
    privilege::clear_ambient_caps().map_err(sys("PR_CAP_AMBIENT_CLEAR_ALL"))?;
    privilege::set_dumpable(true).map_err(sys("PR_SET_DUMPABLE"))?;
    if who.no_new_privs {
        privilege::set_no_new_privs().map_err(sys("PR_SET_NO_NEW_PRIVS"))?;
    }
    // The credential change cleared any parent-death signal: set it now, then make sure the
    // parent did not end before.
    privilege::die_with_parent().map_err(sys("PR_SET_PDEATHSIG"))?;
    if privilege::parent_pid() != parent {
        return Err(Error::Internal {
            what: "the restorer's parent ended".into(),
        });
    }
    let (uids, gids) = privilege::res_ids();
    if uids != [who.uid; 3] || gids != [who.gid; 3] {
        return Err(Error::Internal {
            what: format!(
                "the restorer has uids {uids:?} and gids {gids:?} after becoming the requester"
            ),
        });
    }
    tracing::debug!(
        uid = who.uid,
        caps = format_args!("{keep:#x}"),
        "the restorer runs as the requester"
    );
    Ok(())
}

/// The requester's limits on the calling process (still root: a hard limit above ours cannot
/// be raised without CAP_SYS_RESOURCE, so it stays ours, the lower). The soft limit of open
/// files is its hard limit: the restore holds the descriptors of the whole tree at once.
fn apply_limits(who: &RequesterIdentity) -> Result<(), Error> {
    for l in &who.rlimits {
        let (_, our_hard) = process::getrlimit(l.resource)
            .map_err(|e| Error::sys("getrlimit", process::getpid(), e))?;
        let hard = l.hard.min(our_hard);
        let soft = if l.resource == libc::RLIMIT_NOFILE {
            hard
        } else {
            l.soft.min(hard)
        };
        process::setrlimit(l.resource, soft, hard).map_err(|e| Error::Io {
            what: format!("setrlimit {} to the requester's {soft}:{hard}", l.resource),
            source: e,
        })?;
    }
    Ok(())
}

/// The requester's nice value, OOM score adjustment and audit login uid (as root: either may
/// be lower than ours). An OOM score adjustment lower than ours needs CAP_SYS_RESOURCE, which
/// root lacks on some machines: ours, the higher, then stays.
fn apply_scheduling(who: &RequesterIdentity) -> Result<(), Error> {
    let ours: u32 = procfs::read_number(Path::new("/proc/self/loginuid"))?;
    if ours != who.loginuid {
        std::fs::write("/proc/self/loginuid", who.loginuid.to_string()).map_err(|e| {
            Error::io(
                format!("write the requester's audit login uid {}", who.loginuid),
                e,
            )
        })?;
    }
    privilege::set_nice(who.nice).map_err(|e| {
        Error::sys(
            "setpriority to the requester's nice value",
            process::getpid(),
            e,
        )
    })?;
    let adj = who.oom_score_adj.to_string();
    match std::fs::write("/proc/self/oom_score_adj", &adj) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            let ours = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
            match ours.trim().parse::<i32>() {
                Ok(o) if o >= who.oom_score_adj => Ok(()),
                _ => Err(Error::io("write /proc/self/oom_score_adj", e)),
            }
        }
        Err(e) => Err(Error::io(
            format!("write the requester's {adj} to /proc/self/oom_score_adj"),
            e,
        )),
    }
}

/// What a restorer reports to the process that forked it.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    Restored { pid: Pid },
    Failed { class: ErrorClass, message: String },
}

/// Restores `opts` in a restorer process that is the requester `who` ([`enter`]); returns the
/// restored root, a child of the calling process (wait for it with
/// [`super::wait_exit_code`]). Errors keep their class. The calling process must be
/// single-threaded (it forks).
pub fn restore_as(
    who: &RequesterIdentity,
    pidfd: BorrowedFd<'_>,
    opts: RestoreOptions,
) -> Result<Restored, Error> {
    restore_in_restorer(who, Some(pidfd), opts)
}

/// [`restore_as`] for an identity without a process ([`RequesterIdentity::for_user`],
/// [`RequesterIdentity::for_ids`]): the restorer becomes `who` in the caller's own
/// namespaces, root, cgroups and limits (no `setns`). For root restoring images a user could
/// have written: whatever they say, the restore gets only what that user could get.
pub fn restore_as_owner(who: &RequesterIdentity, opts: RestoreOptions) -> Result<Restored, Error> {
    restore_in_restorer(who, None, opts)
}

fn restore_in_restorer(
    who: &RequesterIdentity,
    pidfd: Option<BorrowedFd<'_>>,
    mut opts: RestoreOptions,
) -> Result<Restored, Error> {
    opts.requester = Some(who.requester());
    opts.root_as_sibling = true;
    let me = process::getpid();
    // Our children before the restorer: any other one it leaves (the root it forks as our
    // child) is killed if it fails.
    let before = procfs::children(me).unwrap_or_default();
    let (read, write) = process::pipe().map_err(|e| Error::io("pipe", e))?;
    match process::fork().map_err(|e| Error::sys("fork a restorer", me, e))? {
        Forked::Child(child) => {
            drop(read);
            // Test builds: the restore's fault points are this process's.
            crate::fault::adopt();
            // The daemon's stdin (a terminal, when started from one) is nothing the
            // requester's restore needs.
            let quiet = std::fs::File::open("/dev/null")
                .map_err(|e| Error::io("open /dev/null", e))
                .and_then(|null| {
                    child
                        .dup3_raw(std::os::fd::AsRawFd::as_raw_fd(&null), 0)
                        .map_err(|e| Error::sys("dup3 of /dev/null onto stdin", me, e))
                });
            let report = match quiet
                .and_then(|()| enter_identity(who, pidfd))
                .and_then(|()| restore(&opts))
            {
                Ok(r) => Report::Restored { pid: r.pid },
                Err(e) => Report::Failed {
                    class: e.class(),
                    message: e.to_string(),
                },
            };
            let ok = matches!(report, Report::Restored { .. });
            let mut line = serde_json::to_string(&report).unwrap_or_default();
            line.push('\n');
            let _ = File::from(write).write_all(line.as_bytes());
            crate::fault::flush();
            process::exit_now(if ok { 0 } else { 1 });
        }
        Forked::Parent(restorer) => {
            drop(write);
            let (line, read) = read_report(read, restorer);
            let status = ptrace::waitpid(restorer, 0);
            let report = serde_json::from_str::<Report>(line.trim());
            if !matches!(report, Ok(Report::Restored { .. })) {
                // A restorer killed after it forked the root (our child) could not kill it:
                // it would wait for the restorer forever, holding its pid (found by fault
                // injection through stasisd).
                kill_new_children(me, &before, restorer);
                reap_failed_root();
            }
            match (read, report) {
                (_, Ok(Report::Restored { pid })) => Ok(Restored {
                    pid,
                    timings: Default::default(),
                }),
                (_, Ok(Report::Failed { class, message })) => {
                    Err(Error::Reported { class, message })
                }
                (r, Err(_)) => Err(Error::Internal {
                    what: format!(
                        "the restorer (pid {restorer}) ended without a report: {status:?} (read: {r:?})"
                    ),
                }),
            }
        }
    }
}

/// The owner and mode of an images directory (`name` empty) or of one entry in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// st_mode: type and permission bits.
    pub mode: u32,
    /// On a FUSE file system: its server reports whatever owner and mode it likes (a user's
    /// server, mounted with `allow_other`, can say root's 0600).
    pub on_fuse: bool,
}

impl ImageEntry {
    fn is_dir_or_file(&self) -> bool {
        matches!(self.mode & libc::S_IFMT, libc::S_IFDIR | libc::S_IFREG)
    }

    /// Writable by its group or by others (for a directory: files can be added, removed or
    /// renamed in it). The mode of other kinds of objects (a symbolic link's is always 0777)
    /// means nothing here: they are refused when opened.
    fn writable_by_others(&self) -> bool {
        self.is_dir_or_file() && self.mode & 0o022 != 0
    }
}

/// statfs f_type of FUSE file systems.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Who could have written an images directory, from the owner and mode of the directory and
/// every entry in it ([`images_writers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImagesWriters {
    /// Root alone: root owns the directory and everything in it, and nothing is writable by
    /// group or others.
    Root,
    /// One user other than root owns the directory or entries in it (root may own the
    /// others), and nothing is writable by group or others: that user could have written
    /// any of the images. `gid` is the group of what the user owns (of the directory when
    /// it is the user's).
    User { uid: u32, gid: u32 },
    /// No single user: entries of several users, a directory or file writable by its group
    /// or others, or on a FUSE file system. `why` says which, naming the entry.
    NoSingleUser { why: String },
}

/// Who could have written the images in `dir`: the directory and every entry in it, looked at
/// with fstat through the directory descriptor (each entry through an `O_PATH` descriptor
/// opened beneath it, which opens nothing and follows no link). An entry removed meanwhile is
/// left out. This says what the entries were during the call: anyone who can write them may
/// change them afterwards, which is why a user's images are restored as that user, not
/// checked and then restored as root.
pub fn images_writers(dir: &ImageDir) -> Result<ImagesWriters, Error> {
    let stat = |fd: BorrowedFd<'_>, name: &str| -> std::io::Result<ImageEntry> {
        let md = File::from(fd.try_clone_to_owned()?).metadata()?;
        Ok(ImageEntry {
            name: name.to_string(),
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode(),
            on_fuse: process::fs_type(fd)? == FUSE_SUPER_MAGIC,
        })
    };
    let label = dir.label().to_path_buf();
    let mut entries = vec![stat(dir.fd(), "").map_err(|e| {
        Error::io(
            format!("fstat of the images directory {}", label.display()),
            e,
        )
    })?];
    let mut names = dir.file_names()?;
    names.sort();
    for name in names {
        let fd = match stasis_sys::fs::open_beneath(dir.fd(), &name, libc::O_PATH, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => {
                return Err(Error::io(
                    format!("open {} (O_PATH)", dir.path_of(&name).display()),
                    e,
                ))
            }
        };
        entries.push(
            stat(fd.as_fd(), &name)
                .map_err(|e| Error::io(format!("fstat {}", dir.path_of(&name).display()), e))?,
        );
    }
    Ok(classify_writers(&label, &entries))
}

/// [`images_writers`] of the entries of the directory `label` (the directory itself first,
/// with an empty name).
pub fn classify_writers(label: &Path, entries: &[ImageEntry]) -> ImagesWriters {
    let path = |e: &ImageEntry| -> PathBuf {
        if e.name.is_empty() {
            label.to_path_buf()
        } else {
            label.join(&e.name)
        }
    };
    if let Some(e) = entries.iter().find(|e| e.on_fuse) {
        return ImagesWriters::NoSingleUser {
            why: format!(
                "{} is on a FUSE file system, whose server reports any owner and mode it likes",
                path(e).display()
            ),
        };
    }
    if let Some(e) = entries.iter().find(|e| e.writable_by_others()) {
        let by = match (e.mode & 0o020 != 0, e.mode & 0o002 != 0) {
            (true, true) => format!("its group (gid {}) and by others", e.gid),
            (true, false) => format!("its group (gid {})", e.gid),
            _ => "others".to_string(),
        };
        return ImagesWriters::NoSingleUser {
            why: format!(
                "{} is writable by {by} (mode {:04o}, owner uid {})",
                path(e).display(),
                e.mode & 0o7777,
                e.uid
            ),
        };
    }
    let mut owners: Vec<u32> = entries.iter().map(|e| e.uid).filter(|&u| u != 0).collect();
    owners.sort_unstable();
    owners.dedup();
    match owners.as_slice() {
        [] => ImagesWriters::Root,
        [uid] => {
            // The directory's group when it is the user's, else that of the user's first file.
            let gid = entries.iter().find(|e| e.uid == *uid).map_or(0, |e| e.gid);
            ImagesWriters::User { uid: *uid, gid }
        }
        several => ImagesWriters::NoSingleUser {
            why: format!(
                "{} holds entries of several users (uids {})",
                label.display(),
                several
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// The restorer's report: one line on `read`, read until its end, the end of the pipe, or the
/// restorer's exit (a restorer killed before its report leaves the pipe open in the root it
/// forked, whose copy never closes).
fn read_report(read: OwnedFd, restorer: Pid) -> (String, std::io::Result<usize>) {
    let pidfd = match process::pidfd_open(restorer) {
        Ok(fd) => fd,
        Err(_) => {
            let mut line = String::new();
            let r = BufReader::new(File::from(read).take(1 << 16)).read_line(&mut line);
            return (line, r);
        }
    };
    let mut bytes = Vec::new();
    let mut file = File::from(read);
    let mut buf = [0u8; 4096];
    let mut ended = false;
    loop {
        let ready = match process::poll_readable(&[file.as_fd(), pidfd.as_fd()], -1) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return (String::from_utf8_lossy(&bytes).into_owned(), Err(e)),
        };
        if ready.first().copied().unwrap_or(false) {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return (String::from_utf8_lossy(&bytes).into_owned(), Err(e)),
            }
            if bytes.contains(&b'\n') || bytes.len() >= 1 << 16 {
                break;
            }
        } else if ended {
            break;
        }
        if ready.get(1).copied().unwrap_or(false) {
            // Gone: what it wrote is in the pipe already; one more look without waiting.
            if ended {
                break;
            }
            ended = true;
            if !process::poll_readable(&[file.as_fd()], 0)
                .map(|r| r.first().copied().unwrap_or(false))
                .unwrap_or(false)
            {
                break;
            }
        }
    }
    let n = bytes.len();
    let line = String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    (line, Ok(n))
}

/// Kills (by pidfd) the children of `me` that are not in `before` and are not `restorer`:
/// what a failed restorer left of the tree (the root it forked as our child).
fn kill_new_children(me: Pid, before: &[Pid], restorer: Pid) {
    for pid in procfs::children(me).unwrap_or_default() {
        if pid == restorer || before.contains(&pid) {
            continue;
        }
        if let Ok(fd) = process::pidfd_open(pid) {
            tracing::debug!("killing pid {pid}, left by the failed restorer {restorer}");
            let _ = process::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
        }
    }
}

/// After a failed restore: the root it had forked (our child, killed by the restorer) is
/// reaped, so its pid is free again at once. Bounded: a second at most.
fn reap_failed_root() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match ptrace::waitpid_nohang(-1) {
            Ok(Some(_)) => continue,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max file size             unlimited            unlimited            bytes     \n\
Max data size             unlimited            unlimited            bytes     \n\
Max stack size            8388608              unlimited            bytes     \n\
Max core file size        0                    unlimited            bytes     \n\
Max resident set          unlimited            unlimited            bytes     \n\
Max processes             95617                95617                processes \n\
Max open files            1024                 524288               files     \n";
        let l = parse_limits(t);
        assert_eq!(l.len(), 8);
        assert_eq!(
            (l[3].resource, l[3].soft, l[3].hard),
            (3, 8388608, u64::MAX)
        );
        assert_eq!((l[6].soft, l[6].hard), (95617, 95617));
        assert_eq!((l[7].resource, l[7].soft, l[7].hard), (7, 1024, 524288));
    }

    #[test]
    fn cgroups_parse() {
        let c = parse_cgroups("4:memory:/a/b\n1:name=systemd:/\n0::/user.slice\n").unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].hierarchy, "memory");
        assert_eq!(c[2].hierarchy, "");
        assert_eq!(c[2].path, "/user.slice");
        assert!(parse_cgroups("0::/a/../b\n").is_err());
        assert!(parse_cgroups("0::relative\n").is_err());
    }

    #[test]
    fn our_own_namespaces_are_shared() {
        check_namespaces(process::getpid()).unwrap();
    }

    fn entry(name: &str, uid: u32, gid: u32, mode: u32) -> ImageEntry {
        ImageEntry {
            name: name.into(),
            uid,
            gid,
            mode,
            on_fuse: false,
        }
    }

    #[test]
    fn who_could_have_written_the_images() {
        let d = Path::new("/img");
        let dir = |uid, mode| entry("", uid, uid, libc::S_IFDIR | mode);
        let file = |name: &str, uid, mode| entry(name, uid, uid + 1, libc::S_IFREG | mode);
        let root_only = [dir(0, 0o700), file("inventory.img", 0, 0o600)];
        assert_eq!(classify_writers(d, &root_only), ImagesWriters::Root);
        // A world-readable directory of root's is still root's alone.
        let readable = [dir(0, 0o755), file("inventory.img", 0, 0o644)];
        assert_eq!(classify_writers(d, &readable), ImagesWriters::Root);
        // A user's directory with root's files, or root's directory with a user's file.
        let users_dir = [dir(1001, 0o700), file("inventory.img", 0, 0o600)];
        assert_eq!(
            classify_writers(d, &users_dir),
            ImagesWriters::User {
                uid: 1001,
                gid: 1001
            }
        );
        let users_file = [dir(0, 0o700), file("a", 0, 0o600), file("b", 1001, 0o600)];
        assert_eq!(
            classify_writers(d, &users_file),
            ImagesWriters::User {
                uid: 1001,
                gid: 1002
            }
        );
        // Writable by group or others, or owned by two users: nobody in particular.
        let why = |entries: &[ImageEntry]| match classify_writers(d, entries) {
            ImagesWriters::NoSingleUser { why } => why,
            other => panic!("{other:?}"),
        };
        let w = why(&[dir(0, 0o700), file("pages-1.img", 0, 0o666)]);
        assert!(
            w.contains(
                "/img/pages-1.img is writable by its group (gid 1) and by others (mode 0666"
            ),
            "{w}"
        );
        let w = why(&[dir(0, 0o770), file("a", 0, 0o600)]);
        assert!(
            w.contains("/img is writable by its group (gid 0) (mode 0770"),
            "{w}"
        );
        let w = why(&[dir(1001, 0o702)]);
        assert!(w.contains("writable by others"), "{w}");
        let w = why(&[dir(1001, 0o700), file("a", 1002, 0o600)]);
        assert!(w.contains("several users (uids 1001, 1002)"), "{w}");
        // Root's 0600 as a FUSE server reports it is anyone's.
        let mut fuse = file("a", 0, 0o600);
        fuse.on_fuse = true;
        let w = why(&[dir(0, 0o700), fuse]);
        assert!(w.contains("/img/a is on a FUSE file system"), "{w}");
        // A symbolic link's mode (0777) is no permission; its owner counts.
        let link = entry("l", 1001, 1001, libc::S_IFLNK | 0o777);
        assert_eq!(
            classify_writers(d, &[dir(0, 0o700), link]),
            ImagesWriters::User {
                uid: 1001,
                gid: 1001
            }
        );
    }

    #[test]
    fn an_identity_without_a_process() {
        let who = RequesterIdentity::for_user(0).unwrap();
        assert_eq!((who.pid, who.uid, who.gid), (None, 0, 0));
        assert!(who.groups.contains(&0), "{:?}", who.groups);
        assert_eq!((who.cap_permitted, who.cap_effective), (0, 0));
        let me = procfs::read_status(process::getpid()).unwrap();
        assert_eq!(who.cap_bounding, me.cap_bnd);
        assert!(!who.rlimits.is_empty());
        let mine =
            parse_cgroups(&procfs::read_string(Path::new("/proc/self/cgroup")).unwrap()).unwrap();
        assert_eq!(who.cgroups, mine);
        let e = RequesterIdentity::for_user(3_999_999_917)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("uid 3999999917 has no entry in the passwd database"),
            "{e}"
        );
        let who = RequesterIdentity::for_ids(4242, 4243, vec![4243]).unwrap();
        assert_eq!((who.uid, who.gid, who.groups), (4242, 4243, vec![4243]));
    }

    #[test]
    fn a_report_keeps_its_class() {
        let r = Report::Failed {
            class: ErrorClass::Refused,
            message: "no".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        match serde_json::from_str::<Report>(&text).unwrap() {
            Report::Failed { class, message } => {
                let e = Error::Reported { class, message };
                assert_eq!(e.class(), ErrorClass::Refused);
                assert_eq!(e.to_string(), "no");
            }
            other => panic!("{other:?}"),
        }
    }
}
