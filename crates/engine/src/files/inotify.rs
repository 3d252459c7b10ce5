//! inotify: an instance's watches, each with its watch descriptor, path and mask.
//!
//! Dump: /proc/PID/fdinfo/N of an `anon_inode:inotify` lists one line per watch (newest
//! first), `inotify wd:W ino:I sdev:D mask:M ignored_mask:0 fhandle-bytes:B fhandle-type:T
//! f_handle:H` (all hex; D is the superblock's device in the kernel's encoding, major << 20 |
//! minor; H is B bytes). The mask is what inotify_add_watch took, reduced to the bits a watch
//! keeps: the IN_ALL_EVENTS bits, IN_ONESHOT and IN_EXCL_UNLINK (IN_DONT_FOLLOW, IN_ONLYDIR,
//! IN_MASK_ADD and IN_MASK_CREATE only act while adding; a one-shot watch that fired is gone).
//! The kernel leaves the file handle out when it cannot lock the filesystem at that moment; the
//! fdinfo is read again a few times before that refuses the dump. Each watch is resolved to a
//! path: a mount of device D (from /proc/self/mountinfo; the mount point is opened, and statx's
//! mount id proves it is not covered by another mount) lets open_by_handle_at (which needs
//! CAP_DAC_READ_SEARCH) open the object with O_PATH, whose /proc/self/fd link is its path; the
//! path must name the same object again (lstat: device and inode). A file whose dentry the
//! kernel evicted comes back from its handle disconnected (its link reads "/"); it is then
//! looked up by inode number in the process' cwd and in the directories of the instance's other
//! watches. Refused, naming the watch: an object deleted since it was watched (nlink 0; the
//! watch lives as long as something else holds the object), one that cannot be opened by file
//! handle (proc, sysfs and the like only give identifiers that cannot be opened), on no visible
//! mount, or whose path cannot be found; and watch descriptors above
//! [`MAX_INOTIFY_WD`]. A dumper that changed its fsuid (stasisd's worker acting
//! for a user) has no CAP_DAC_READ_SEARCH in effect, so every watch is refused (EPERM).
//!
//! Restore: inotify_init1 in the restorer, then the watches in watch-descriptor order with
//! inotify_add_watch(path, mask | IN_DONT_FOLLOW | IN_MASK_CREATE) (the path is the watched
//! object itself, even a symlink; IN_MASK_CREATE makes a path that now names an object already
//! watched an error instead of a merge). The kernel hands out watch descriptors from a cyclic
//! counter starting at 1 (a removed one is not reused before the counter wraps at INT_MAX), so
//! every unused number below a watch's is burnt first by adding and removing a throwaway watch
//! (on "/", or on a memfd when "/" is itself watched); every descriptor returned is checked
//! against the expected one. The restored instance's own fdinfo then proves that each watch is
//! on the dumped object (device and inode), the IN_IGNORED events the removals queued are read
//! and dropped; the status flags (O_NONBLOCK) are set by [`super::open_all`]. The restore child
//! drops again whatever the rest of the restore queued ([`FileOps::after_layout_in_child`]).
//!
//! Not preserved: events queued but not read at dump time (reading them would take them away
//! from the live process; a `--leave-running` process keeps them), events that happen between
//! the dump and the end of the restore, and where the kernel's watch-descriptor counter stood
//! beyond the highest live watch (a restored instance hands out the next number after it).

use super::{FileOps, OpenContext, Probe, ProcessFiles};
use crate::{files, procfs, Error};
use stasis_image::{FileDesc, FileKind, InotifyWatch, ProcessImage};
use stasis_sys::process::ForkedChild;
use stasis_sys::{anon_files, Pid};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// Most watches one inotify instance may have in an image.
pub const MAX_INOTIFY_WATCHES: usize = 1 << 20;
/// Highest inotify watch descriptor an image may hold: restoring watch descriptor n creates and
/// removes a throwaway watch for every unused number below n (about 5 µs each).
pub const MAX_INOTIFY_WD: i32 = 1 << 22;
/// The mask bits inotify_add_watch takes that a watch keeps: IN_ALL_EVENTS, IN_EXCL_UNLINK,
/// IN_ONESHOT.
pub const INOTIFY_WATCH_MASK: u32 = libc::IN_ALL_EVENTS | libc::IN_EXCL_UNLINK | libc::IN_ONESHOT;

/// The inotify kind.
#[derive(Default)]
pub struct Inotifies;

impl FileOps for Inotifies {
    fn name(&self) -> &'static str {
        "inotify"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Inotify { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.anon_name() == Some("inotify")
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        dump(fd.pid, fd.fd, &fd.fdinfo()?)
    }

    /// Watches sorted by watch descriptor, unique, in the kernel's range and below the restore
    /// bound; absolute paths; masks that inotify_add_watch takes and that watch something.
    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Inotify { watches } = &desc.kind else {
            return Err("not an inotify instance".into());
        };
        if watches.len() > MAX_INOTIFY_WATCHES {
            return Err(format!("{} watches", watches.len()));
        }
        let mut prev_wd = 0;
        for w in watches {
            if w.wd <= prev_wd || w.wd > MAX_INOTIFY_WD {
                return Err(format!(
                    "watch descriptor {} after {prev_wd} (they must rise, up to {MAX_INOTIFY_WD})",
                    w.wd
                ));
            }
            prev_wd = w.wd;
            files::check_path(&w.path).map_err(|e| format!("watch {}: {e}", w.wd))?;
            if w.mask & !INOTIFY_WATCH_MASK != 0 || w.mask & libc::IN_ALL_EVENTS == 0 {
                return Err(format!("watch {} has mask {:#x}", w.wd, w.mask));
            }
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        open(desc)
    }

    /// Drops the events the rest of the restore caused in the instance (opening and mapping
    /// files the process watches).
    fn after_layout_in_child(
        &self,
        child: &ForkedChild,
        _pid: Pid,
        _desc: &FileDesc,
        fd: RawFd,
    ) -> Result<(), String> {
        child
            .inotify_discard_events_raw(fd)
            .map_err(|e| format!("dropping the queued events of inotify fd {fd}: {e}"))
    }
}
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How many times fdinfo is read again when a watch shows no file handle.
const HANDLE_RETRIES: u32 = 5;

/// One `inotify wd:` line of fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchInfo {
    pub wd: i32,
    pub ino: u64,
    /// The superblock's device, major << 20 | minor.
    pub sdev: u32,
    pub mask: u32,
    /// The file handle (type and bytes), when the kernel could encode one.
    pub handle: Option<(i32, Vec<u8>)>,
}

/// `major:minor` of a device number in the kernel's encoding (fdinfo `sdev`).
pub fn dev_name(sdev: u32) -> String {
    format!("{}:{}", sdev >> 20, sdev & 0xf_ffff)
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The `key:value` fields of one fsnotify line of fdinfo (`inotify ...`, `fanotify ...`,
/// after that word), with readers for hex numbers and the file handle.
pub(crate) struct NotifyFields<'a> {
    line: &'a str,
    fields: HashMap<&'a str, &'a str>,
}

impl<'a> NotifyFields<'a> {
    /// Splits `rest` (the line after its first word) into its fields.
    pub(crate) fn parse(line: &'a str, rest: &'a str) -> Result<Self, String> {
        let mut fields = HashMap::new();
        for word in rest.split_whitespace() {
            let (k, v) = word
                .split_once(':')
                .ok_or_else(|| format!("bad field {word:?} in {line:?}"))?;
            fields.insert(k, v);
        }
        Ok(NotifyFields { line, fields })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// Field `name` as a hex number.
    pub(crate) fn hex(&self, name: &str) -> Result<u64, String> {
        let line = self.line;
        let v = self
            .fields
            .get(name)
            .ok_or_else(|| format!("no {name} in {line:?}"))?;
        u64::from_str_radix(v, 16).map_err(|_| format!("bad {name} {v:?} in {line:?}"))
    }

    /// Field `name` as a hex number of 32 bits.
    pub(crate) fn hex32(&self, name: &str) -> Result<u32, String> {
        u32::try_from(self.hex(name)?).map_err(|_| format!("bad {name} in {:?}", self.line))
    }

    /// The file handle (`fhandle-bytes`, `fhandle-type`, `f_handle`), when the kernel could
    /// encode one.
    pub(crate) fn handle(&self) -> Result<Option<(i32, Vec<u8>)>, String> {
        if !self.has("fhandle-bytes") {
            return Ok(None);
        }
        let line = self.line;
        let len = self.hex("fhandle-bytes")? as usize;
        let htype = i32::try_from(self.hex("fhandle-type")?)
            .map_err(|_| format!("bad fhandle-type in {line:?}"))?;
        let bytes = self
            .fields
            .get("f_handle")
            .and_then(|h| hex_bytes(h))
            .filter(|b| b.len() == len && len <= anon_files::MAX_HANDLE_SZ)
            .ok_or_else(|| format!("bad f_handle in {line:?}"))?;
        Ok(Some((htype, bytes)))
    }
}

/// Parses the `inotify` lines of /proc/PID/fdinfo/N.
pub fn parse_fdinfo(text: &str) -> Result<Vec<WatchInfo>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("inotify ") else {
            continue;
        };
        let f = NotifyFields::parse(line, rest)?;
        let wd = i32::try_from(f.hex("wd")?).map_err(|_| format!("bad wd in {line:?}"))?;
        let (sdev, mask, ino) = (f.hex32("sdev")?, f.hex32("mask")?, f.hex("ino")?);
        let handle = f.handle()?;
        if wd <= 0 {
            return Err(format!("bad wd {wd} in {line:?}"));
        }
        out.push(WatchInfo {
            wd,
            ino,
            sdev,
            mask,
            handle,
        });
    }
    Ok(out)
}

/// One line of /proc/PID/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    /// major << 20 | minor, as fdinfo shows devices.
    pub sdev: u32,
    /// The directory of the filesystem mounted there ("/" for a whole filesystem).
    pub root: String,
    pub point: PathBuf,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/PID/mountinfo (lines that do not parse are skipped).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(id), Some(dev), Some(root), Some(point)) =
            (f.first(), f.get(2), f.get(3), f.get(4))
        else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(id), Ok(major), Ok(minor)) =
            (id.parse(), major.parse::<u32>(), minor.parse::<u32>())
        else {
            continue;
        };
        out.push(Mount {
            id,
            sdev: (major << 20) | (minor & 0xf_ffff),
            root: unescape(root),
            point: PathBuf::from(unescape(point)),
        });
    }
    out
}

/// Opens watched objects by file handle through the mounts of their filesystem.
pub(crate) struct Resolver {
    mounts: Vec<Mount>,
    /// Opened mount points by mount id (None: cannot be used).
    opened: HashMap<u64, Option<File>>,
}

impl Resolver {
    /// A resolver over the mounts stasis sees.
    pub(crate) fn new() -> Result<Resolver, Error> {
        let mountinfo = procfs::read_string(Path::new("/proc/self/mountinfo"))?;
        Ok(Resolver {
            mounts: parse_mountinfo(&mountinfo),
            opened: HashMap::new(),
        })
    }

    /// The mounts stasis sees.
    pub(crate) fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// Opens the object with file handle (`htype`, `handle`), inode `ino` on the filesystem of
    /// device `sdev`, with O_PATH, checking its inode number.
    pub(crate) fn open(
        &mut self,
        sdev: u32,
        ino: u64,
        htype: i32,
        handle: &[u8],
    ) -> Result<File, String> {
        let mut candidates: Vec<&Mount> = self.mounts.iter().filter(|m| m.sdev == sdev).collect();
        if candidates.is_empty() {
            return Err(format!(
                "no mount of its filesystem (device {}) is visible to stasis",
                dev_name(sdev)
            ));
        }
        // Whole filesystems first: every object is reachable from their root.
        candidates.sort_by_key(|m| m.root != "/");
        let mut last = String::from("no mount point of its filesystem could be opened");
        for m in candidates {
            let mount = self.opened.entry(m.id).or_insert_with(|| {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(&m.point)
                    .ok()?;
                // A mount point covered by a later mount opens that one instead.
                (anon_files::mount_id(f.as_fd()).ok()? == m.id).then_some(f)
            });
            let Some(mount) = mount else {
                continue;
            };
            // Opening by handle needs CAP_DAC_READ_SEARCH, which a dump through stasisd gives
            // up with the caller's file identity. The handle comes from the kernel (the
            // caller's own watch) and the object is only opened as a path (O_PATH), to learn
            // its name: root's file identity for this one call only.
            let opened = stasis_sys::process::with_root_fs_identity(|| {
                anon_files::open_by_handle(
                    mount.as_fd(),
                    htype,
                    handle,
                    libc::O_PATH | libc::O_CLOEXEC,
                )
            });
            match opened {
                Ok(fd) => {
                    let f = File::from(fd);
                    match f.metadata() {
                        Ok(md) if md.ino() == ino => return Ok(f),
                        Ok(md) => {
                            last = format!(
                                "its file handle opens inode {:#x} through {}",
                                md.ino(),
                                m.point.display()
                            )
                        }
                        Err(e) => last = format!("fstat: {e}"),
                    }
                }
                Err(e) => {
                    last = format!(
                        "open_by_handle_at (handle type {htype:#x}) through {}: {e}{}",
                        m.point.display(),
                        match e.raw_os_error() {
                            Some(libc::ESTALE) => {
                                " (its filesystem cannot open objects by file handle, or the \
                                 object is gone)"
                            }
                            // setfsuid to another user drops CAP_DAC_READ_SEARCH, as in a dump
                            // through stasisd.
                            Some(libc::EPERM) => " (this needs CAP_DAC_READ_SEARCH)",
                            _ => "",
                        }
                    )
                }
            }
        }
        Err(last)
    }
}

/// Whether `path` names the object whose metadata is `md` (without following a final symlink).
pub(crate) fn names_object(path: &Path, md: &std::fs::Metadata) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|p| (p.dev(), p.ino()) == (md.dev(), md.ino()))
}

/// A watch being dumped: its fdinfo line, its object's metadata, and its path once found.
type Found<'a> = (&'a WatchInfo, std::fs::Metadata, Option<String>);

/// Looks for names of the objects of `missing` among the entries of the directories `dirs`,
/// reading each directory once.
fn search(dirs: &[PathBuf], missing: &mut [&mut Found<'_>]) {
    for dir in dirs {
        if missing.iter().all(|m| m.2.is_some()) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            for m in missing
                .iter_mut()
                .filter(|m| m.2.is_none() && m.1.ino() == e.ino())
            {
                let path = e.path();
                if names_object(&path, &m.1) {
                    m.2 = path.to_str().map(str::to_string);
                }
            }
        }
    }
}

/// Describes inotify fd `fd` of `pid` from its fdinfo text. Fails, naming the watch, for any
/// watch that cannot be restored.
pub fn dump(pid: Pid, fd: RawFd, fdinfo: &str) -> Result<FileKind, Error> {
    let parse = |text: &str| {
        parse_fdinfo(text)
            .map_err(|e| Error::Invalid(format!("fdinfo of inotify fd {fd} of pid {pid}: {e}")))
    };
    let mut infos = parse(fdinfo)?;
    for _ in 0..HANDLE_RETRIES {
        if infos.iter().all(|w| w.handle.is_some()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        infos = parse(&files::fdinfo_text(pid, fd)?)?;
    }
    infos.sort_by_key(|w| w.wd);
    let refuse = |w: &WatchInfo, why: String| Error::Unsupported {
        what: format!(
            "inotify fd {fd} of pid {pid}: watch {} (inode {:#x} on device {}) {why}",
            w.wd,
            w.ino,
            dev_name(w.sdev)
        ),
    };
    if infos.len() > MAX_INOTIFY_WATCHES {
        return Err(Error::Unsupported {
            what: format!(
                "inotify fd {fd} of pid {pid} has {} watches, more than the {MAX_INOTIFY_WATCHES} \
                 stasis restores",
                infos.len()
            ),
        });
    }
    let mut resolver = Resolver::new()?;
    let mut found: Vec<Found<'_>> = Vec::with_capacity(infos.len());
    for w in &infos {
        if w.mask & !INOTIFY_WATCH_MASK != 0 || w.mask & libc::IN_ALL_EVENTS == 0 {
            return Err(refuse(
                w,
                format!(
                    "has mask {:#x}, which stasis does not know how to add",
                    w.mask
                ),
            ));
        }
        if w.wd > MAX_INOTIFY_WD {
            return Err(refuse(
                w,
                format!(
                    "has watch descriptor {}: restoring it would burn every unused number below \
                     it, and stasis stops at {MAX_INOTIFY_WD}",
                    w.wd
                ),
            ));
        }
        let Some((htype, handle)) = &w.handle else {
            return Err(refuse(
                w,
                "has no file handle in fdinfo (its filesystem stayed busy)".into(),
            ));
        };
        let obj = resolver
            .open(w.sdev, w.ino, *htype, handle)
            .map_err(|e| refuse(w, format!("cannot be found: {e}")))?;
        let md = obj
            .metadata()
            .map_err(|e| Error::io(format!("fstat watch {} of inotify fd {fd}", w.wd), e))?;
        let link = procfs::read_link(Path::new(&format!("/proc/self/fd/{}", obj.as_raw_fd())))?;
        if md.nlink() == 0 {
            return Err(refuse(
                w,
                format!(
                    "is on an object that was deleted ({link}); stasis can only restore watches \
                     of objects that still have a path"
                ),
            ));
        }
        // A disconnected dentry reads "/", a removed hard link "... (deleted)": neither names
        // the object, which is then searched for.
        let path = (link.starts_with('/') && names_object(Path::new(&link), &md)).then_some(link);
        found.push((w, md, path));
    }
    // Files whose dentry was evicted have no path of their own: look in the likely places.
    if found.iter().any(|f| f.2.is_none()) {
        let mut dirs = std::collections::BTreeSet::new();
        if let Ok(cwd) = procfs::link(pid, "cwd") {
            dirs.insert(PathBuf::from(cwd));
        }
        for (_, md, path) in &found {
            if let Some(p) = path {
                let p = PathBuf::from(p);
                if let Some(parent) = p.parent() {
                    dirs.insert(parent.to_path_buf());
                }
                if md.is_dir() {
                    dirs.insert(p);
                }
            }
        }
        let dirs: Vec<PathBuf> = dirs.into_iter().collect();
        let mut missing: Vec<_> = found.iter_mut().filter(|f| f.2.is_none()).collect();
        search(&dirs, &mut missing);
    }
    let mut watches = Vec::with_capacity(found.len());
    for (w, _, path) in found {
        let Some(path) = path else {
            return Err(refuse(
                w,
                "has no path stasis can find (its dentry was evicted, and no entry of the \
                 process' cwd or of the instance's watched directories names it)"
                    .into(),
            ));
        };
        watches.push(InotifyWatch {
            wd: w.wd,
            path,
            mask: w.mask,
            sdev: w.sdev,
            ino: w.ino,
        });
    }
    Ok(FileKind::Inotify { watches })
}

/// Hands out watch descriptors that nobody will use, by adding and removing throwaway watches.
struct Burner {
    /// A memfd of our own, watched instead of "/" once "/" cannot be (the instance watches it
    /// already, or it is not readable).
    memfd: Option<OwnedFd>,
}

impl Burner {
    /// Burns watch descriptor `wd`, the next one `ino` hands out.
    fn burn(&mut self, ino: &OwnedFd, wd: i32) -> Result<(), String> {
        let got = loop {
            let r = match &self.memfd {
                None => anon_files::inotify_add_watch(
                    ino.as_fd(),
                    Path::new("/"),
                    libc::IN_OPEN | libc::IN_MASK_CREATE | libc::IN_DONT_FOLLOW,
                ),
                // Through the magic link, to the memfd itself.
                Some(m) => anon_files::inotify_add_watch(
                    ino.as_fd(),
                    Path::new(&format!("/proc/self/fd/{}", m.as_raw_fd())),
                    libc::IN_OPEN | libc::IN_MASK_CREATE,
                ),
            };
            match r {
                Ok(got) => break got,
                Err(_) if self.memfd.is_none() => {
                    let m = anon_files::memfd_create_with("stasis-inotify", libc::MFD_CLOEXEC)
                        .map_err(|e| format!("memfd_create: {e}"))?;
                    self.memfd = Some(m);
                }
                Err(e) => return Err(format!("inotify_add_watch on a memfd: {e}")),
            }
        };
        anon_files::inotify_rm_watch(ino.as_fd(), got)
            .map_err(|e| format!("inotify_rm_watch {got}: {e}"))?;
        if got != wd {
            return Err(format!(
                "a throwaway watch got watch descriptor {got}, expected {wd}"
            ));
        }
        Ok(())
    }
}

/// Reads and drops every event queued on `ino` (which must be non-blocking).
fn discard_events(ino: &OwnedFd) -> Result<(), std::io::Error> {
    let mut f = File::from(ino.try_clone()?);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Creates the inotify instance of description `f` in the restorer, with every watch at its
/// dumped watch descriptor. It is non-blocking (its own events are drained that way) until
/// [`super::open_all`] gives it the dumped status flags.
fn open(f: &FileDesc) -> Result<OwnedFd, Error> {
    let FileKind::Inotify { watches } = &f.kind else {
        return Err(Error::Invalid(format!(
            "description {} is not an inotify instance",
            f.id
        )));
    };
    let what = |w: &InotifyWatch| format!("watch {} on {} of inotify {}", w.wd, w.path, f.id);
    let ino = anon_files::inotify_init(libc::IN_CLOEXEC | libc::IN_NONBLOCK)
        .map_err(|e| Error::io("inotify_init1", e))?;
    let mut burner = Burner { memfd: None };
    // The next watch descriptor the instance hands out.
    let mut next = 1;
    for w in watches {
        while next < w.wd {
            burner.burn(&ino, next).map_err(|e| {
                Error::Invalid(format!(
                    "restoring {}: burning watch descriptor {next}: {e}",
                    what(w)
                ))
            })?;
            next += 1;
        }
        let mask = w.mask | libc::IN_DONT_FOLLOW | libc::IN_MASK_CREATE;
        let got = anon_files::inotify_add_watch(ino.as_fd(), Path::new(&w.path), mask)
            .map_err(|e| Error::io(format!("inotify_add_watch for {}", what(w)), e))?;
        if got != w.wd {
            return Err(Error::Invalid(format!(
                "restoring {}: the kernel gave it watch descriptor {got}",
                what(w)
            )));
        }
        next = w.wd.saturating_add(1);
    }
    // Each watch must be on the object that was watched.
    let text = procfs::read_string(Path::new(&format!("/proc/self/fdinfo/{}", ino.as_raw_fd())))?;
    let live = parse_fdinfo(&text)
        .map_err(|e| Error::Invalid(format!("fdinfo of the restored inotify {}: {e}", f.id)))?;
    for w in watches {
        match live.iter().find(|l| l.wd == w.wd) {
            Some(l) if (l.sdev, l.ino) == (w.sdev, w.ino) => {}
            Some(l) => {
                return Err(Error::Invalid(format!(
                    "{} is not the object that was watched at dump time: it is inode {:#x} on \
                     device {}, the image expects inode {:#x} on device {}",
                    what(w),
                    l.ino,
                    dev_name(l.sdev),
                    w.ino,
                    dev_name(w.sdev)
                )))
            }
            None => {
                return Err(Error::Invalid(format!(
                    "{} is missing from the restored instance (a one-shot watch that fired \
                     during the restore?)",
                    what(w)
                )))
            }
        }
    }
    if live.len() != watches.len() {
        return Err(Error::Invalid(format!(
            "the restored inotify {} has {} watches, the image {}",
            f.id,
            live.len(),
            watches.len()
        )));
    }
    // The throwaway watches queued IN_IGNORED events (and the watches may have seen events).
    discard_events(&ino).map_err(|e| {
        Error::io(
            format!("reading the events of restored inotify {}", f.id),
            e,
        )
    })?;
    Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_image::ImageDir;

    #[test]
    fn validate() {
        let p = sample_process();
        let sample = p
            .files
            .iter()
            .find(|f| Inotifies.owns(&f.kind))
            .cloned()
            .unwrap();
        Inotifies.validate(&sample, &p).unwrap();
        type WatchEdit = fn(&mut Vec<InotifyWatch>);
        let edits: [(&str, WatchEdit); 9] = [
            ("inotify wd 0", |w| w[0].wd = 0),
            ("inotify wds out of order", |w| w.swap(0, 1)),
            ("inotify wd twice", |w| w[1].wd = w[0].wd),
            ("inotify wd too high", |w| w[1].wd = MAX_INOTIFY_WD + 1),
            ("inotify relative path", |w| w[0].path = "tmp/x".into()),
            ("inotify path with NUL", |w| w[0].path = "/tmp/\0x".into()),
            ("inotify mask without events", |w| w[0].mask = 0x8000_0000),
            ("inotify internal mask bit", |w| w[0].mask |= 0x0800_0000),
            ("too many watches", |w| {
                let last = w[1].clone();
                w.extend((0..MAX_INOTIFY_WATCHES as i32).map(|i| InotifyWatch {
                    wd: last.wd + 1 + i,
                    ..last.clone()
                }))
            }),
        ];
        for (what, edit) in edits {
            let mut f = sample.clone();
            match &mut f.kind {
                FileKind::Inotify { watches } => edit(watches),
                _ => unreachable!(),
            }
            assert!(Inotifies.validate(&f, &p).is_err(), "{what}");
        }
        let mut f = sample.clone();
        if let FileKind::Inotify { watches } = &mut f.kind {
            watches[1].wd = MAX_INOTIFY_WD;
        }
        Inotifies.validate(&f, &p).unwrap();
    }

    #[test]
    fn fdinfo() {
        let text = "pos:\t0\nflags:\t02004000\nmnt_id:\t17\nino:\t1038\n\
            inotify wd:8 ino:3 sdev:6 mask:100 ignored_mask:0 fhandle-bytes:c fhandle-type:1 \
            f_handle:38532e090300000000000000\n\
            inotify wd:3 ino:99059a sdev:fe00000 mask:84000004 ignored_mask:0 fhandle-bytes:8 \
            fhandle-type:1 f_handle:9a05990045f6e130\n\
            inotify wd:2 ino:1 sdev:1b mask:fff ignored_mask:0\n";
        let w = parse_fdinfo(text).unwrap();
        assert_eq!(
            w[0],
            WatchInfo {
                wd: 8,
                ino: 3,
                sdev: 6,
                mask: 0x100,
                handle: Some((1, vec![0x38, 0x53, 0x2e, 9, 3, 0, 0, 0, 0, 0, 0, 0])),
            }
        );
        assert_eq!(w[1].wd, 3);
        assert_eq!(w[1].sdev, 0xfe0_0000);
        assert_eq!(w[1].mask, 0x8400_0004);
        assert_eq!(w[1].handle.as_ref().unwrap().1.len(), 8);
        assert_eq!(w[2].handle, None);
        assert_eq!(dev_name(0xfe0_0000), "254:0");
        assert_eq!(dev_name(0x1b), "0:27");
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\n").unwrap(), vec![]);
        for bad in [
            "inotify wd:zz ino:1 sdev:1 mask:1 ignored_mask:0\n",
            "inotify wd:1 ino:1 mask:1 ignored_mask:0\n",
            "inotify wd:0 ino:1 sdev:1 mask:1 ignored_mask:0\n",
            "inotify wd:1 ino:1 sdev:1 mask:1 fhandle-bytes:4 fhandle-type:1 f_handle:0011\n",
            "inotify wd:1 ino:1 sdev:1 mask:1 fhandle-bytes:2 fhandle-type:1 f_handle:0x11\n",
            "inotify wd:1 ino:1 sdev:1 mask:1 fhandle-bytes:2 fhandle-type:1\n",
            "inotify wd:1 ino:1 sdev:1 mask:1 garbage\n",
        ] {
            assert!(parse_fdinfo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mountinfo() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw\n\
                    90 27 8:17 /sub /mnt/with\\040space rw - ext4 /dev/sdb1 rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0],
            Mount {
                id: 27,
                sdev: 0xfe0_0000,
                root: "/".into(),
                point: "/".into()
            }
        );
        assert_eq!(m[1].sdev, 27);
        assert_eq!(m[2].sdev, (8 << 20) | 17);
        assert_eq!(m[2].root, "/sub");
        assert_eq!(m[2].point, PathBuf::from("/mnt/with space"));
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }

    /// Watches set up in this process, dumped and restored as a second instance.
    #[test]
    fn dump_and_restore_in_this_process() {
        // open_by_handle_at needs root.
        if !stasis_test_infra::require_root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("stasis-inotify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        std::fs::write(dir.join("g"), b"y").unwrap();
        std::os::unix::fs::symlink("f", dir.join("lnk")).unwrap();
        let orig = anon_files::inotify_init(libc::IN_CLOEXEC | libc::IN_NONBLOCK).unwrap();
        let add = |p: &Path, m: u32| anon_files::inotify_add_watch(orig.as_fd(), p, m).unwrap();
        assert_eq!(add(Path::new("/"), libc::IN_OPEN), 1);
        assert_eq!(add(&dir.join("a"), libc::IN_CREATE | libc::IN_ONESHOT), 2);
        assert_eq!(add(&dir.join("g"), libc::IN_MODIFY), 3);
        assert_eq!(
            add(&dir.join("f"), libc::IN_MODIFY | libc::IN_EXCL_UNLINK),
            4
        );
        assert_eq!(add(&dir.join("g"), libc::IN_MODIFY), 3);
        anon_files::inotify_rm_watch(orig.as_fd(), 3).unwrap();
        for wd in [5, 6] {
            assert_eq!(add(&dir.join("g"), libc::IN_MODIFY), wd);
            anon_files::inotify_rm_watch(orig.as_fd(), wd).unwrap();
        }
        let lnk_mask = libc::IN_ATTRIB | libc::IN_DONT_FOLLOW | libc::IN_MASK_CREATE;
        assert_eq!(add(&dir.join("lnk"), lnk_mask), 7);

        let me = stasis_sys::process::getpid();
        let fd = orig.as_raw_fd();
        let kind = dump(me, fd, &files::fdinfo_text(me, fd).unwrap()).unwrap();
        let FileKind::Inotify { watches } = &kind else {
            panic!("{kind:?}");
        };
        let summary: Vec<(i32, &str, u32)> = watches
            .iter()
            .map(|w| (w.wd, w.path.as_str(), w.mask))
            .collect();
        let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let (a, f, lnk) = (path("a"), path("f"), path("lnk"));
        assert_eq!(
            summary,
            vec![
                (1, "/", libc::IN_OPEN),
                (2, a.as_str(), libc::IN_CREATE | libc::IN_ONESHOT),
                (4, f.as_str(), libc::IN_MODIFY | libc::IN_EXCL_UNLINK),
                (7, lnk.as_str(), libc::IN_ATTRIB),
            ]
        );

        let desc = FileDesc {
            id: 9,
            flags: libc::O_NONBLOCK as u32,
            pos: 0,
            kind: kind.clone(),
            owner: Default::default(),
            locks: Vec::new(),
        };
        // "/" is watched, so the gaps are burnt on a memfd.
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = crate::files::OpenContext::new(&images, crate::files::ReplacedFiles::Refuse);
        let mut open = |desc: &FileDesc| files::open_description(&mut Inotifies, desc, &mut ctx);
        let restored = open(&desc).unwrap();
        let live = |fd: &OwnedFd| {
            let t = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()));
            let mut w = parse_fdinfo(&t.unwrap()).unwrap();
            w.sort_by_key(|w| w.wd);
            w.into_iter()
                .map(|w| (w.wd, w.sdev, w.ino, w.mask))
                .collect::<Vec<_>>()
        };
        assert_eq!(live(&restored), live(&orig));
        let flags = stasis_sys::process::get_status_flags(restored.as_fd()).unwrap();
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        // Nothing from the throwaway watches is left, and new events name the restored wds.
        discard_events(&orig).unwrap();
        let mut buf = [0u8; 4096];
        let mut r = File::from(restored.try_clone().unwrap());
        let e = r.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        std::fs::write(dir.join("a/new"), b"").unwrap();
        let n = r.read(&mut buf).unwrap();
        let word = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
        let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
        assert!(16 + len <= n);
        let name = String::from_utf8_lossy(&buf[16..16 + len]);
        assert_eq!((wd, mask), (2, libc::IN_CREATE));
        assert_eq!(name.trim_end_matches('\0'), "new");
        // The one-shot watch fired and is gone.
        let after = 16 + len;
        assert_eq!((word(after) as i32, word(after + 4)), (2, libc::IN_IGNORED));

        // A blocking instance comes back blocking.
        let blocking = FileDesc {
            flags: 0,
            ..desc.clone()
        };
        let b = open(&blocking).unwrap();
        let flags = stasis_sys::process::get_status_flags(b.as_fd()).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0);

        // A path that names another object by now is refused.
        let mut moved = desc.clone();
        if let FileKind::Inotify { watches } = &mut moved.kind {
            watches[2].path = path("g");
        }
        let err = open(&moved).unwrap_err().to_string();
        assert!(err.contains("not the object"), "{err}");

        // A deleted object is refused at dump time while the watch lives on.
        std::fs::create_dir(dir.join("b")).unwrap();
        assert_eq!(add(&dir.join("b"), libc::IN_CREATE), 8);
        let held = File::open(dir.join("b")).unwrap();
        std::fs::remove_dir(dir.join("b")).unwrap();
        let err = dump(me, fd, &files::fdinfo_text(me, fd).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("watch 8") && err.contains("deleted"), "{err}");
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn search_finds_a_name_by_inode() {
        let dir =
            std::env::temp_dir().join(format!("stasis-inotify-search-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/file"), b"x").unwrap();
        std::fs::write(dir.join("top"), b"x").unwrap();
        let info = WatchInfo {
            wd: 1,
            ino: 0,
            sdev: 0,
            mask: 2,
            handle: None,
        };
        let mut a = (&info, std::fs::metadata(dir.join("d/file")).unwrap(), None);
        let mut b = (&info, std::fs::metadata(dir.join("top")).unwrap(), None);
        search(std::slice::from_ref(&dir), &mut [&mut a, &mut b]);
        assert_eq!(a.2, None);
        assert_eq!(b.2.as_deref(), dir.join("top").to_str());
        search(&[dir.clone(), dir.join("d")], &mut [&mut a, &mut b]);
        assert_eq!(a.2.as_deref(), dir.join("d/file").to_str());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
