//! The self-dump connection: a process that checkpoints itself through stasisd holds a unix
//! socket to the daemon while it is dumped; its state is not dumped, only the reply its
//! restored copy reads.
//!
//! Dump: the fd the daemon names ([`crate::dump::ServiceConnection`]) must be a socket; it is
//! recorded with the reply its restored copy is to read ("you were restored"), not with any
//! socket state. It is never shared with another fd.
//!
//! Restore: a SOCK_SEQPACKET socketpair in the restorer; the reply is queued on our end's peer,
//! which is then closed, so the restored process reads the reply and then end-of-file.

use super::{Class, FileOps, OpenContext, Probe, ProcessFiles};
use crate::Error;
use stasis_image::{FileDesc, FileKind, ProcessImage};
use stasis_sys::process;
use std::fs::File;
use std::os::fd::OwnedFd;

/// Longest reply a record may queue (one SOCK_SEQPACKET message).
const MAX_REPLY: usize = 4096;

/// The self-dump connection kind.
#[derive(Default)]
pub struct ServiceConnections;

impl FileOps for ServiceConnections {
    fn name(&self) -> &'static str {
        "service connection"
    }

    fn owns(&self, kind: &FileKind) -> bool {
        matches!(kind, FileKind::ServiceSocket { .. })
    }

    fn claims(&self, fd: &Probe<'_>) -> bool {
        fd.service.is_some_and(|s| s.fd == fd.fd)
    }

    fn dump(
        &mut self,
        fd: &Probe<'_>,
        _id: u32,
        _out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error> {
        let (Some(service), Class::Socket) = (fd.service, fd.class) else {
            return Err(fd.unsupported("named as the service connection but not a socket"));
        };
        Ok(FileKind::ServiceSocket {
            reply: service.restored_reply.clone(),
        })
    }

    fn deduplicated(&self) -> bool {
        false
    }

    fn validate(&self, desc: &FileDesc, _image: &ProcessImage) -> Result<(), String> {
        let FileKind::ServiceSocket { reply } = &desc.kind else {
            return Err("not a service connection".into());
        };
        if reply.len() > MAX_REPLY {
            return Err(format!(
                "a reply of {} bytes, more than {MAX_REPLY}",
                reply.len()
            ));
        }
        Ok(())
    }

    fn open(&mut self, desc: &FileDesc, _ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error> {
        let FileKind::ServiceSocket { reply } = &desc.kind else {
            return Err(Error::Invalid(format!(
                "description {} is not a service connection",
                desc.id
            )));
        };
        let (ours, peer) =
            process::socketpair_seqpacket().map_err(|e| Error::io("socketpair", e))?;
        let mut peer = File::from(peer);
        std::io::Write::write_all(&mut peer, reply)
            .map_err(|e| Error::io("queue the restored reply", e))?;
        Ok(ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_image::ImageDir;

    #[test]
    fn validate() {
        let p = sample_process();
        let ok = FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::ServiceSocket {
                reply: vec![1; MAX_REPLY],
            },
            owner: Default::default(),
            locks: Vec::new(),
        };
        ServiceConnections.validate(&ok, &p).unwrap();
        let long = FileDesc {
            kind: FileKind::ServiceSocket {
                reply: vec![1; MAX_REPLY + 1],
            },
            ..ok
        };
        assert!(ServiceConnections.validate(&long, &p).is_err());
    }

    #[test]
    fn the_restored_end_reads_the_reply_then_eof() {
        let desc = FileDesc {
            id: 1,
            flags: 2,
            pos: 0,
            kind: FileKind::ServiceSocket {
                reply: b"restored".to_vec(),
            },
            owner: Default::default(),
            locks: Vec::new(),
        };
        let images = ImageDir::open(&std::env::temp_dir()).unwrap();
        let mut ctx = crate::files::OpenContext::new(&images, crate::files::ReplacedFiles::Refuse);
        let fd = ServiceConnections.open(&desc, &mut ctx).unwrap();
        let mut f = File::from(fd);
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"restored");
        assert_eq!(std::io::Read::read(&mut f, &mut buf).unwrap(), 0);
    }
}
