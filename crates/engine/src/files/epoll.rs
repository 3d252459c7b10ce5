//! epoll: the set of watched files, each with its event mask and user data.
//!
//! Dump: /proc/PID/fdinfo/N of an `anon_inode:[eventpoll]` lists one line per registration,
//! `tfd: T events: E data: D pos: ... ino: ... sdev: ...` (E and D in hex), where T is the fd
//! number the file was added with. The number alone proves nothing: the fd may have been
//! closed since (the registration lives as long as the file, so it stays listed when another
//! descriptor keeps the file open), or the number may have been reused for another file. So
//! every registration is checked with kcmp(KCMP_EPOLL_TFD), which compares the registered file
//! with the file at fd T; when fd T no longer names that file, the other fds of the process are
//! compared too, and the watch is recorded with one that holds the file (`through`). A file no
//! fd of the process holds (kept open by another process or a mapping) fails the dump with a
//! message naming it. The watched files themselves are dumped as fds of the process like any
//! other.
//!
//! Restore: the restorer creates an empty epoll instance; the registrations are made in the
//! restore child itself (of the process the epoll was dumped with, when a tree shares it),
//! right after it laid out its fd table ([`FileOps::after_layout_in_child`]), because they
//! name fds by their final numbers. A watch recorded `through` another fd is added under its
//! own number with the file put there for the moment (and what the number holds put back),
//! so that the kernel knows it by the same (file, number) pair as before.
//! EPOLL_CTL_ADD gets the dumped events and data as they are. Readiness is computed afresh by
//! the kernel: a level-triggered event that is still true is reported again, and so is an
//! edge-triggered one whose condition holds (the kernel checks readiness when a file is added).
//! A one-shot registration that already fired (only the EPOLLONESHOT/EPOLLET bits left) comes
//! back watching EPOLLERR and EPOLLHUP, which the kernel adds to every registration.

use super::{FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{EpollWatch, FileDesc, FileKind, ProcessImage};
use stasis_sys::process::ForkedChild;
use stasis_sys::{anon_files, Pid};
use std::collections::{HashMap, HashSet};
use std::os::fd::{OwnedFd, RawFd};

/// The epoll kind.
#[derive(Default)]
pub struct Epolls;

impl FileOps for Epolls {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Epoll { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.anon_name() == Some("[eventpoll]")
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        dump(fd.pid, fd.fd, &fd.fdinfo()?, fd.all_fds)
    }

    /// What one description holds: a bounded number of watches of valid fds. That the watches
    /// name fds of the table is checked once per record ([`validate_image`](FileOps::validate_image)).
    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::Epoll { watches, .. } = &desc.kind else {
            return Err("not an epoll".into());
        };
        if watches.len() > stasis_image::MAX_FDS {
            return Err(format!("{} watches", watches.len()));
        }
        if let Some(w) = watches
            .iter()
            .find(|w| w.fd < 0 || w.through.is_some_and(|t| t < 0 || t == w.fd))
        {
            return Err(format!("a watch of fd {} through {:?}", w.fd, w.through));
        }
        Ok(())
    }

    /// The watches of an epoll the process owns must name fds of its table (a process sharing
    /// the epoll has other fds). Looked up in a set of the table, built once per record: a
    /// record of a million watches and a million fds must not take 10^12 steps to check.
    fn validate_image(&self, image: &ProcessImage) -> Result<(), String> {
        let mut table: Option<HashSet<i32>> = None;
        for f in &image.files {
            let FileKind::Epoll { owner, watches } = &f.kind else {
                continue;
            };
            if *owner != image.pid || watches.is_empty() {
                continue;
            }
            let table = table.get_or_insert_with(|| image.fds.iter().map(|e| e.fd).collect());
            if let Some(w) = watches
                .iter()
                .find(|w| !table.contains(&w.through.unwrap_or(w.fd)))
            {
                return Err(format!(
                    "file description {} ({}): it watches fd {}, which is not in the fd table",
                    f.id,
                    self.name(),
                    w.through.unwrap_or(w.fd)
                ));
            }
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        open(desc)
    }

    /// Adds the watches of an epoll description the process owns (an epoll shared by several
    /// processes of a tree gets its watches once, from the process that was dumped with it),
    /// through the first fd that refers to it.
    fn after_layout_in_child(
        &self,
        child: &ForkedChild,
        pid: Pid,
        desc: &FileDesc,
        epfd: RawFd,
    ) -> Result<(), String> {
        let FileKind::Epoll { owner, watches } = &desc.kind else {
            return Ok(());
        };
        if *owner != pid {
            return Ok(());
        }
        for w in watches {
            let added = match w.through {
                None => child.epoll_add_raw(epfd, w.fd, w.events, w.data),
                Some(through) => add_through(child, epfd, w, through),
            };
            added.map_err(|e| {
                format!(
                    "EPOLL_CTL_ADD of fd {} (events {:#x}{}) to epoll fd {epfd}: {e}",
                    w.fd,
                    w.events,
                    w.through
                        .map(|t| format!(", through fd {t}"))
                        .unwrap_or_default()
                )
            })?;
        }
        Ok(())
    }
}

/// Adds watch `w`, whose file is at fd `through`, under its own number `w.fd`: the file is put
/// at `w.fd` for the moment of EPOLL_CTL_ADD (what `w.fd` holds meanwhile, if anything, is
/// put back after, with its close-on-exec flag).
fn add_through(
    child: &ForkedChild,
    epfd: RawFd,
    w: &EpollWatch,
    through: RawFd,
) -> std::io::Result<()> {
    // Any free number will do for the moment (not `w.fd`, which is taken when this is used).
    const ASIDE: RawFd = 0;
    let ep = if epfd == w.fd {
        child.dup_at_least_raw(epfd, ASIDE)?
    } else {
        epfd
    };
    let saved = match child.cloexec_raw(w.fd) {
        Ok(cloexec) => Some((child.dup_at_least_raw(w.fd, ASIDE)?, cloexec)),
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => None,
        Err(e) => return Err(e),
    };
    child.dup3_raw(through, w.fd)?;
    let added = child.epoll_add_raw(ep, w.fd, w.events, w.data);
    match saved {
        Some((aside, cloexec)) => {
            child.dup3_raw(aside, w.fd)?;
            child.set_cloexec_raw(w.fd, cloexec)?;
            child.close_raw(aside)?;
        }
        None => child.close_raw(w.fd)?,
    }
    if ep != epfd {
        child.close_raw(ep)?;
    }
    added
}

/// Parses the `tfd:` lines of /proc/PID/fdinfo/N of an epoll instance.
pub fn parse_fdinfo(text: &str) -> Result<Vec<EpollWatch>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tfd:") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let mut field = |name: &str| -> Result<&str, String> {
            if name != "tfd" && words.next() != Some(name) {
                return Err(format!("no {name} in {line:?}"));
            }
            words
                .next()
                .ok_or_else(|| format!("no {name} value in {line:?}"))
        };
        let fd = field("tfd")?;
        let fd: i32 = fd.parse().map_err(|_| format!("bad tfd {fd:?}"))?;
        let events = field("events:")?;
        let events =
            u32::from_str_radix(events, 16).map_err(|_| format!("bad events {events:?}"))?;
        let data = field("data:")?;
        let data = u64::from_str_radix(data, 16).map_err(|_| format!("bad data {data:?}"))?;
        if fd < 0 {
            return Err(format!("bad tfd {fd}"));
        }
        out.push(EpollWatch {
            fd,
            events,
            data,
            through: None,
        });
    }
    Ok(out)
}

/// Describes epoll fd `epfd` of `pid` from its fdinfo text; `open_fds` are the fd numbers of
/// the process. Fails when a registration's fd number does not name the registered file.
/// `pid` becomes the owner: in a tree, the process whose fd numbers the watches use.
pub fn dump(pid: Pid, epfd: RawFd, fdinfo: &str, open_fds: &[RawFd]) -> Result<FileKind, Error> {
    let watches = parse_fdinfo(fdinfo)
        .map_err(|e| Error::Invalid(format!("fdinfo of epoll fd {epfd} of pid {pid}: {e}")))?;
    // The n-th registration with a given number is slot `toff` = n for kcmp.
    let mut seen: HashMap<RawFd, u32> = HashMap::new();
    let mut watches = watches;
    for w in &mut watches {
        let toff = seen.entry(w.fd).or_insert(0);
        let registered_at = |fd: RawFd| {
            anon_files::epoll_target_is(pid, fd, epfd, w.fd, *toff)
                .map_err(|e| Error::sys("kcmp(KCMP_EPOLL_TFD)", pid, e))
        };
        if !(open_fds.contains(&w.fd) && registered_at(w.fd)?) {
            // Closed or reused: another fd of the process may still hold the file.
            let mut through = None;
            for &other in open_fds {
                if other != w.fd && registered_at(other)? {
                    through = Some(other);
                    break;
                }
            }
            let Some(other) = through else {
                return Err(Error::Unsupported {
                    what: format!(
                        "epoll fd {epfd} of pid {pid} watches a file registered as fd {}, which                          no fd of the process holds any more (another process or a mapping                          keeps it open); stasis restores a watch only through an fd of the                          process",
                        w.fd
                    ),
                });
            };
            w.through = Some(other);
        }
        *toff += 1;
    }
    Ok(FileKind::Epoll {
        owner: pid,
        watches,
    })
}

/// Creates the (empty) epoll instance of description `f` in the restorer.
fn open(f: &FileDesc) -> Result<OwnedFd, Error> {
    if !matches!(f.kind, FileKind::Epoll { .. }) {
        return Err(Error::Invalid(format!(
            "description {} is not an epoll",
            f.id
        )));
    }
    anon_files::epoll_create(libc::EPOLL_CLOEXEC).map_err(|e| Error::io("epoll_create1", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;

    /// The sample's epoll (owned by the sample process, watching its fd 3).
    fn sample_epoll() -> (ProcessImage, FileDesc) {
        let p = sample_process();
        let desc = p
            .files
            .iter()
            .find(|f| Epolls.owns(&f.kind))
            .cloned()
            .unwrap();
        (p, desc)
    }

    #[test]
    fn validate() {
        let (mut p, desc) = sample_epoll();
        Epolls.validate(&desc, &p).unwrap();
        Epolls.validate_image(&p).unwrap();
        // The record with `desc` replaced by `d`.
        let with = |p: &ProcessImage, d: &FileDesc| {
            let mut p = p.clone();
            for f in &mut p.files {
                if f.id == d.id {
                    *f = d.clone();
                }
            }
            p
        };
        let mut other = desc.clone();
        if let FileKind::Epoll { watches, .. } = &mut other.kind {
            watches[0].fd = 99;
        }
        let err = Epolls.validate_image(&with(&p, &other)).unwrap_err();
        assert!(
            err.contains("fd 99") && err.contains(&format!("description {}", desc.id)),
            "watch of an fd not in the table: {err}"
        );
        if let FileKind::Epoll { owner, .. } = &mut other.kind {
            *owner += 1;
        }
        Epolls.validate_image(&with(&p, &other)).unwrap();
        p.fds.retain(|f| f.fd != 3);
        assert!(
            Epolls.validate_image(&p).is_err(),
            "epoll watch of an fd not in the table"
        );
        let mut many = desc.clone();
        if let FileKind::Epoll { watches, .. } = &mut many.kind {
            *watches = vec![watches[0]; stasis_image::MAX_FDS + 1];
        }
        assert!(
            Epolls.validate(&many, &sample_process()).is_err(),
            "too many"
        );
    }

    /// A record of many watches and many fds is checked in linear time (it took 10^10 steps
    /// when each watch scanned the table; found reading the checks the fuzzers run).
    #[test]
    fn many_watches_and_fds_are_checked_quickly() {
        let (mut p, mut desc) = sample_epoll();
        let n = 100_000;
        let file_id = p.fds[0].file_id;
        p.fds = (0..n)
            .map(|fd| stasis_image::FdEntry {
                fd,
                file_id,
                cloexec: false,
            })
            .collect();
        if let FileKind::Epoll { watches, .. } = &mut desc.kind {
            let w = watches[0];
            *watches = (0..n)
                .rev()
                .map(|fd| EpollWatch {
                    fd,
                    through: None,
                    ..w
                })
                .collect();
        }
        for f in &mut p.files {
            if f.id == desc.id {
                *f = desc.clone();
            }
        }
        let t = std::time::Instant::now();
        Epolls.validate_image(&p).unwrap();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn fdinfo() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n\
            tfd:        3 events: 80000019 data: 1122334455667788  pos:0 ino:40e sdev:10\n\
            tfd:       11 events:       19 data:                9  pos:0 ino:40e sdev:10\n";
        assert_eq!(
            parse_fdinfo(text).unwrap(),
            vec![
                EpollWatch {
                    fd: 3,
                    events: 0x8000_0019,
                    data: 0x1122_3344_5566_7788,
                    through: None,
                },
                EpollWatch {
                    fd: 11,
                    events: 0x19,
                    data: 9,
                    through: None,
                },
            ]
        );
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\n").unwrap(), vec![]);
        assert!(parse_fdinfo("tfd: 3 events: zz data: 1\n").is_err());
        assert!(parse_fdinfo("tfd: 3 events: 1\n").is_err());
        assert!(parse_fdinfo("tfd: -1 events: 1 data: 1\n").is_err());
    }
}
