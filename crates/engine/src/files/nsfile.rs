//! Namespace files: an fd of `/proc/PID/ns/TYPE` (kept to `setns` into later, or to hold a
//! namespace), shown by /proc/PID/fd as `TYPE:[INODE]`.
//!
//! Dump: the namespace type and inode. Only a namespace the dumped process is in itself can
//! be reopened (stasis restores processes into the namespaces they had, and does not re-create
//! namespaces): an fd of another namespace (of another process, or one kept alive by a bind
//! mount) is refused by name.
//!
//! Restore: the restorer, which is in the namespaces the restored processes will be in, opens
//! its own `/proc/self/ns/TYPE` and checks that it is the dumped namespace (inode). (With
//! `--pid-ns`, a `pid` file names the pid namespace of the restorer, the parent of the new one.)

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The namespace types of /proc/PID/ns, as their links name them.
pub const TYPES: [&str; 10] = [
    "cgroup",
    "ipc",
    "mnt",
    "net",
    "pid",
    "pid_for_children",
    "time",
    "time_for_children",
    "user",
    "uts",
];

/// The namespace-file kind.
#[derive(Default)]
pub struct NamespaceFiles;

/// `TYPE:[INODE]` of a namespace file's link, or `None` for another link. The type is the
/// one of the namespace (`pid`); /proc/PID/ns/pid_for_children links to a `pid:[..]` too.
pub fn parse_link(link: &str) -> Option<(&str, u64)> {
    let (ty, rest) = link.split_once(":[")?;
    let ino = rest.strip_suffix(']')?.parse().ok()?;
    TYPES.contains(&ty).then_some((ty, ino))
}

impl FileOps for NamespaceFiles {
    fn name(&self) -> &'static str {
        "namespace file"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::Namespace { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        matches!(fd.class, Class::File | Class::Other) && parse_link(&fd.link).is_some()
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let Some((ty, ino)) = parse_link(&fd.link) else {
            return Err(fd.unsupported("not a namespace file"));
        };
        // Which of the process's own namespaces this is (pid may also be pid_for_children,
        // time may be time_for_children).
        let candidates: &[&str] = match ty {
            "pid" => &["pid", "pid_for_children"],
            "time" => &["time", "time_for_children"],
            _ => std::slice::from_ref(&ty),
        };
        for name in candidates {
            let own = std::fs::metadata(format!("/proc/{}/ns/{name}", fd.pid))
                .map_err(|e| Error::io(format!("stat /proc/{}/ns/{name}", fd.pid), e))?;
            if own.ino() == ino {
                return Ok(FileKind::Namespace {
                    ns: (*name).to_string(),
                    ino,
                });
            }
        }
        Err(fd.unsupported(&format!(
            "a file of a {ty} namespace the process is not in (stasis reopens only the \
             process's own namespaces)"
        )))
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        match &desc.kind {
            FileKind::Namespace { ns, .. } if TYPES.contains(&ns.as_str()) => Ok(()),
            FileKind::Namespace { ns, .. } => Err(format!("an unknown namespace type {ns:?}")),
            _ => Err("not a namespace file".into()),
        }
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::Namespace { ns, ino } = &desc.kind else {
            return Err(Error::Invalid(format!(
                "description {} is not a namespace file",
                desc.id
            )));
        };
        let path = format!("/proc/self/ns/{ns}");
        let file = File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))?;
        let now = file
            .metadata()
            .map_err(|e| Error::io(format!("fstat {path}"), e))?
            .ino();
        if now != *ino {
            return Err(Error::Changed {
                what: format!(
                    "the {ns} namespace of the dump ({ns}:[{ino}]) is not the one this restore \
                     runs in ({ns}:[{now}]): its file cannot be reopened"
                ),
            });
        }
        Ok(OwnedFd::from(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(parse_link("net:[4026531833]"), Some(("net", 4026531833)));
        assert_eq!(parse_link("pid:[1]"), Some(("pid", 1)));
        assert_eq!(parse_link("socket:[12]"), None);
        assert_eq!(parse_link("net:[x]"), None);
        assert_eq!(parse_link("net:[12"), None);
        assert_eq!(parse_link("/tmp/net:[12]"), None);
    }
}
