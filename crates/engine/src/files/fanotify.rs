//! fanotify groups: the group's flags and its marks (on files and directories, on mounts, on
//! whole filesystems), each with its mask and ignore mask.
//!
//! Dump: /proc/PID/fdinfo/N of an `anon_inode:[fanotify]` shows `fanotify flags:F
//! event-flags:E` (the flags given to fanotify_init, FAN_CLOEXEC and FAN_NONBLOCK included;
//! E: the open flags of the event fds) and one line per mark, all
//! hex:
//! * `fanotify ino:I sdev:D mflags:M mask:K ignored_mask:G fhandle-bytes:.. fhandle-type:..
//!   f_handle:..`: a mark on an inode, found again by its file handle like an inotify watch
//!   (see [`super::inotify`]: open_by_handle_at through a mount of its filesystem, then the
//!   path of what it opened, which must name the object again);
//! * `fanotify mnt_id:N mflags:M mask:K ignored_mask:G`: a mark on a mount, kept as the mount's
//!   mount point (from /proc/self/mountinfo);
//! * `fanotify sdev:D mflags:M ...`: a mark on a filesystem, kept as a mount point of it.
//!
//! M holds the mark's flags as fanotify_mark takes them (FAN_MARK_IGNORED_SURV_MODIFY,
//! FAN_MARK_EVICTABLE, FAN_MARK_IGNORE). Refused, naming the mark: an inode that was deleted
//! or has no path stasis can find, or a mount or filesystem stasis does not see.
//!
//! Restore: fanotify_init with the dumped flags as they are (our descriptor made close-on-exec
//! right after when FAN_CLOEXEC is not among them; the status flags are set by
//! [`super::open_all`]), then each mark with fanotify_mark(FAN_MARK_ADD, its kind and
//! flags, the mask) and, when it has one, the ignore mask in a second call. A path that names
//! another object than the marked one by then fails the restore.
//!
//! Not preserved: events queued but not read at dump time (as for inotify), and permission
//! events waiting for an answer (the process that waited was frozen in the kernel and gets
//! its answer as if the group had been closed).

use super::inotify::{dev_name, names_object, NotifyFields, Resolver};
use super::{FileOps, OpenContext, Probe, ProcessFiles};
use crate::{procfs, Error};
use stasis_image::{FanotifyMark, FileDesc, FileKind, ProcessImage};
use stasis_sys::anon_files;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Most marks one group may have in an image.
pub const MAX_FANOTIFY_MARKS: usize = 1 << 16;

/// fanotify_mark flags.
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;
/// The mark flags fdinfo's `mflags` may show.
const MARK_FLAGS: u32 = FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE;
/// fanotify_init's FAN_CLOEXEC.
const FAN_CLOEXEC: u32 = 0x1;

/// What a mark is on, as [`FanotifyMark::on`] records it.
pub const ON_INODE: u8 = 0;
pub const ON_MOUNT: u8 = 1;
pub const ON_FILESYSTEM: u8 = 2;

/// The fanotify kind.
#[derive(Default)]
pub struct Fanotifies;

/// One parsed `fanotify` mark line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkInfo {
    pub on: u8,
    pub ino: u64,
    pub sdev: u32,
    pub mnt_id: u64,
    pub mflags: u32,
    pub mask: u64,
    pub ignored: u64,
    pub handle: Option<(i32, Vec<u8>)>,
}

/// Parses a fanotify fdinfo: (init flags, event flags, marks).
pub fn parse_fdinfo(text: &str) -> Result<(u32, u32, Vec<MarkInfo>), String> {
    let mut init = None;
    let mut marks = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("fanotify ") else {
            continue;
        };
        let f = NotifyFields::parse(line, rest)?;
        if f.has("flags") {
            init = Some((f.hex32("flags")?, f.hex32("event-flags")?));
            continue;
        }
        let (on, ino, sdev, mnt_id) = if f.has("ino") {
            (ON_INODE, f.hex("ino")?, f.hex32("sdev")?, 0)
        } else if f.has("mnt_id") {
            (ON_MOUNT, 0, 0, f.hex("mnt_id")?)
        } else {
            (ON_FILESYSTEM, 0, f.hex32("sdev")?, 0)
        };
        let handle = f.handle()?;
        marks.push(MarkInfo {
            on,
            ino,
            sdev,
            mnt_id,
            mflags: f.hex32("mflags")?,
            mask: f.hex("mask")?,
            ignored: f.hex("ignored_mask")?,
            handle,
        });
    }
    let (flags, event_flags) = init.ok_or("no `fanotify flags:` line")?;
    Ok((flags, event_flags, marks))
}

impl FileOps for Fanotifies {
    fn name(&self) -> &'static str {
        "fanotify"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Fanotify { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.anon_name() == Some("[fanotify]")
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let (pid, n) = (fd.pid, fd.fd);
        let (flags, event_flags, infos) = parse_fdinfo(&fd.fdinfo()?)
            .map_err(|e| Error::Invalid(format!("fdinfo of fanotify fd {n} of pid {pid}: {e}")))?;
        if infos.len() > MAX_FANOTIFY_MARKS {
            return Err(fd.unsupported(&format!(
                "a fanotify group with {} marks, more than the {MAX_FANOTIFY_MARKS} stasis \
                 restores",
                infos.len()
            )));
        }
        let mut resolver = Resolver::new()?;
        let mut marks = Vec::with_capacity(infos.len());
        for m in &infos {
            let refuse = |why: String| Error::Unsupported {
                what: format!("fanotify fd {n} of pid {pid}: a mark {why}"),
            };
            if m.mflags & !MARK_FLAGS != 0 {
                return Err(refuse(format!(
                    "with flags {:#x}, which stasis does not know",
                    m.mflags
                )));
            }
            let (path, ino) = match m.on {
                ON_INODE => {
                    let what = format!("on inode {:#x} of device {}", m.ino, dev_name(m.sdev));
                    let Some((htype, handle)) = &m.handle else {
                        return Err(refuse(format!("{what} has no file handle in fdinfo")));
                    };
                    let obj = resolver
                        .open(m.sdev, m.ino, *htype, handle)
                        .map_err(|e| refuse(format!("{what} cannot be found: {e}")))?;
                    let md = obj
                        .metadata()
                        .map_err(|e| Error::io(format!("fstat the object of a mark {what}"), e))?;
                    let link = procfs::read_link(Path::new(&format!(
                        "/proc/self/fd/{}",
                        obj.as_raw_fd()
                    )))?;
                    if md.nlink() == 0 || !link.starts_with('/') {
                        return Err(refuse(format!(
                            "{what} is on an object that was deleted or has no path ({link})"
                        )));
                    }
                    if !names_object(Path::new(&link), &md) {
                        return Err(refuse(format!("{what}: {link} names another object")));
                    }
                    (link, m.ino)
                }
                ON_MOUNT => {
                    let mount = resolver
                        .mounts()
                        .iter()
                        .find(|x| x.id == m.mnt_id)
                        .ok_or_else(|| {
                            refuse(format!("on mount {}, which stasis does not see", m.mnt_id))
                        })?;
                    (mount.point.display().to_string(), 0)
                }
                _ => {
                    let mount = resolver
                        .mounts()
                        .iter()
                        .find(|x| x.sdev == m.sdev)
                        .ok_or_else(|| {
                            refuse(format!(
                                "on the filesystem of device {}, which no mount stasis sees has",
                                dev_name(m.sdev)
                            ))
                        })?;
                    (mount.point.display().to_string(), 0)
                }
            };
            marks.push(FanotifyMark {
                on: m.on,
                path,
                sdev: m.sdev,
                ino,
                flags: m.mflags,
                mask: m.mask,
                ignored_mask: m.ignored,
            });
        }
        Ok(FileKind::Fanotify {
            flags,
            event_flags,
            marks,
        })
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Fanotify { marks, .. } = &desc.kind else {
            return Err("not a fanotify group".into());
        };
        if marks.len() > MAX_FANOTIFY_MARKS {
            return Err(format!("{} marks", marks.len()));
        }
        for m in marks {
            super::check_path(&m.path).map_err(|e| format!("mark on {}: {e}", m.path))?;
            if m.on > ON_FILESYSTEM || m.flags & !MARK_FLAGS != 0 {
                return Err(format!(
                    "mark on {} of kind {} with flags {:#x}",
                    m.path, m.on, m.flags
                ));
            }
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::Fanotify {
            flags,
            event_flags,
            marks,
        } = &desc.kind
        else {
            return Err(Error::Invalid(format!(
                "description {} is not a fanotify group",
                desc.id
            )));
        };
        // The flags as the process gave them: the kernel keeps FAN_CLOEXEC and FAN_NONBLOCK
        // among the group's flags and fdinfo shows them (with FAN_CLOEXEC always added, a dump
        // of the restored process found other flags than the original's). Our descriptor is
        // made close-on-exec at once when the process's was not.
        let init = *flags;
        let group = anon_files::fanotify_init(init, *event_flags)
            .map_err(|e| Error::io(format!("fanotify_init({init:#x}, {event_flags:#x})"), e))?;
        if init & FAN_CLOEXEC == 0 {
            anon_files::set_cloexec(group.as_fd())
                .map_err(|e| Error::io("F_SETFD FD_CLOEXEC on a fanotify group", e))?;
        }
        for m in marks {
            let path = Path::new(&m.path);
            if m.on == ON_INODE {
                let md = std::fs::symlink_metadata(path)
                    .map_err(|e| Error::io(format!("lstat {} (a fanotify mark)", m.path), e))?;
                if md.ino() != m.ino {
                    return Err(Error::Changed {
                        what: format!(
                            "{} is not the object a fanotify mark was on at dump time",
                            m.path
                        ),
                    });
                }
            }
            let kind = match m.on {
                ON_INODE => FAN_MARK_DONT_FOLLOW,
                ON_MOUNT => FAN_MARK_MOUNT,
                _ => FAN_MARK_FILESYSTEM,
            };
            let what = |which: &str| format!("fanotify_mark of the {which} on {}", m.path);
            let ignore_flag = if m.flags & FAN_MARK_IGNORE != 0 {
                FAN_MARK_IGNORE
            } else {
                FAN_MARK_IGNORED_MASK
            };
            if m.mask != 0 || m.ignored_mask == 0 {
                let f = FAN_MARK_ADD | kind | (m.flags & FAN_MARK_EVICTABLE);
                anon_files::fanotify_mark(group.as_fd(), f, m.mask, path)
                    .map_err(|e| Error::io(what("mask"), e))?;
            }
            if m.ignored_mask != 0 {
                let f = FAN_MARK_ADD
                    | kind
                    | ignore_flag
                    | (m.flags & (FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE));
                anon_files::fanotify_mark(group.as_fd(), f, m.ignored_mask, path)
                    .map_err(|e| Error::io(what("ignore mask"), e))?;
            }
        }
        Ok(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n\
            fanotify flags:10 event-flags:0\n\
            fanotify mnt_id:1c mflags:0 mask:3b ignored_mask:0\n\
            fanotify ino:4f969 sdev:800013 mflags:40 mask:8 ignored_mask:40000000 \
            fhandle-bytes:8 fhandle-type:1 f_handle:69f90400c275b5b4\n\
            fanotify sdev:800013 mflags:0 mask:20 ignored_mask:0\n";
        let (flags, ev, marks) = parse_fdinfo(text).unwrap();
        assert_eq!((flags, ev), (0x10, 0));
        assert_eq!(marks.len(), 3);
        assert_eq!(
            (marks[0].on, marks[0].mnt_id, marks[0].mask),
            (ON_MOUNT, 0x1c, 0x3b)
        );
        assert_eq!(marks[1].on, ON_INODE);
        assert_eq!(marks[1].ino, 0x4f969);
        assert_eq!(marks[1].mflags, 0x40);
        assert_eq!(marks[1].ignored, 0x4000_0000);
        assert_eq!(marks[1].handle.as_ref().unwrap().1.len(), 8);
        assert_eq!((marks[2].on, marks[2].sdev), (ON_FILESYSTEM, 0x80_0013));
        assert!(parse_fdinfo("fanotify mnt_id:1c mflags:0 mask:3b ignored_mask:0\n").is_err());
        assert!(parse_fdinfo("fanotify flags:10 event-flags:0\nfanotify ino:zz\n").is_err());
    }
}
