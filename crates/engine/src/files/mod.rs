//! Open files: the fd table of each process and the open file descriptions behind it, with one
//! module per kind of file. Each kind implements [`FileOps`] (how to recognise, dump, check,
//! show and restore it) and is listed once, in [`kinds`]; nothing else here knows the kinds.
//!
//! | kind                                   | module          |
//! |----------------------------------------|-----------------|
//! | the self-dump connection to stasisd    | [`service`]     |
//! | O_PATH descriptors, reopened by path   | [`opath`]       |
//! | pipes (both ends, bytes in flight)     | [`pipe`]        |
//! | named FIFOs (by path, bytes in flight) | [`fifo`]        |
//! | eventfd                                | [`eventfd`]     |
//! | timerfd                                | [`timerfd`]     |
//! | signalfd                               | [`signalfd`]    |
//! | epoll instances and their watches      | [`epoll`]       |
//! | inotify instances and their watches    | [`inotify`]     |
//! | fanotify groups and their marks        | [`fanotify`]    |
//! | memfds (fds and mappings)              | [`memfd`]       |
//! | namespace files (/proc/PID/ns/TYPE)    | [`nsfile`]      |
//! | the process's own /proc/PID entries    | [`procfile`]    |
//! | files deleted while open (blob)        | [`deleted`]     |
//! | deleted names of files with links elsewhere (remap link) | [`link_remap`] |
//! | regular files, by path                 | [`regular`]     |
//! | directories                            | [`directory`]   |
//! | terminals: pty pairs, a terminal outside the tree, /dev/tty | [`tty`] |
//! | character devices                      | [`chardev`]     |
//! | TCP sockets (listeners, connections)   | [`tcp`]         |
//! | UDP and UDP-Lite sockets               | [`udp`]         |
//! | raw and ICMP ping sockets              | [`raw`]         |
//! | (what TCP and UDP share)               | [`inet`]        |
//! | unix sockets (stream, datagram, seqpacket; connections, names, backlogs, queued data) | [`unix_socket`] |
//! | netlink sockets                        | [`netlink_socket`] |
//! | packet sockets (AF_PACKET)             | [`packet_socket`] |
//! | (SOL_SOCKET options and filters of the two above) | [`sol_socket`] |
//!
//! Adding a kind: its record (a variant of [`stasis_image::FileKind`]), a module implementing
//! [`FileOps`], and one line in [`kinds`].
//!
//! # Entry points
//!
//! Dump ([`crate::dump`](mod@crate::dump)):
//! * [`FileRegistry`] (`new(options)`): one per dumped tree. It gives every open file description
//!   one id however many fds of however many processes refer to it (kcmp), and holds what the
//!   kinds gather across processes.
//! * [`dump`]: the fd table of one process ([`DumpedFiles`]); refuses, naming the fd, anything
//!   no kind claims (sockets other than unix sockets, POSIX message queues, unknown
//!   anonymous-inode files); then the files in flight in its unix sockets (SCM_RIGHTS), as
//!   descriptions without fd.
//! * [`FileRegistry::finish`]: once every process is collected, completes the objects that
//!   span processes (pipes, FIFOs and unix sockets: an end or peer outside the tree is refused
//!   where it cannot come back; the bytes in flight are stored once, with the first process
//!   record that has the first description) and checks that the owner of every description's
//!   I/O signals is in the tree.
//! * [`write_blobs`]: the contents of deleted files and memfds, into `blob-ID.img`.
//!
//! Images ([`crate::restore`](mod@crate::restore) and [`crate::show`]):
//! * [`KindChecks`]: what each kind's records may hold, for [`stasis_image::validate_process`].
//! * [`verify`]: reads and checks data stored outside the records (blobs).
//!
//! Restore ([`crate::restore`](mod@crate::restore)):
//! * [`open_all`]: merges the copies of each description found in several process records and
//!   opens every description once, in the restorer, for the whole tree ([`OpenedFiles`]; the
//!   kinds whose objects are made together, unix sockets, make them first in
//!   [`FileOps::prepare`]); the processes inherit them across their forks. A file reopened by path must still be the one
//!   of the dump (device and inode), unless the [`OpenContext`] accepts replaced files
//!   ([`ReplacedFiles`]; mapped files go through the same check).
//! * [`memfd::open_for_mapping`]: a descriptor of a restored memfd to map it from.
//! * [`layout_in_child`]: in each restore child, moves the inherited descriptions to their fd
//!   numbers; then [`after_layout_in_child`] sets up what names fds by number (epoll watches,
//!   O_ASYNC, whose fd number the kernel reports in the siginfo of I/O signals) and drops the
//!   inotify events the restore itself caused.
//! * [`OpenedFiles::set_owners`]: once every process and thread of the tree exists, gives each
//!   description the owner and signal of its I/O signals (F_SETOWN_EX, F_SETSIG); then
//!   [`OpenedFiles::tree_exists`] runs what the kinds left for that moment (unix socket queues
//!   whose messages carry credentials or files).
//!
//! Dump duplicates each fd into the dumper with pidfd_getfd (the same description, so offsets,
//! pipe contents and socket state can be read without disturbing the target). A socket
//! received by another process (pidfd_getfd receives it) takes that process's cgroup-v1
//! net_prio and net_cls tags; on a cgroup-v2 system (Debian 12's default) there are none to
//! take. The owner of a description's I/O signals
//! and their signal (F_GETOWN_EX, F_GETSIG) are read from the duplicate too, whatever the kind.
//! At restore, every description gets its dumped status flags through one helper whatever its
//! kind ([`apply_status_flags`]), then its offset when its kind has one.
//!
//! O_ASYNC is special: a file with signal-driven I/O (pipes, FIFOs, terminals, inotify, ...)
//! only sends signals when the flag was set with F_SETFL, which records the fd number it was
//! set through (the siginfo's `si_fd`); given to open(2), the flag shows but does nothing. So
//! it is set in the restore child, through the description's first fd in that process
//! ([`after_layout_in_child`]). A file without signal-driven I/O (regular files, directories)
//! cannot get the flag from F_SETFL at all; only open(2) sets it there (without effect, but
//! F_GETFL shows it), so such a description is reopened with it (`open_description`).

use crate::dump::ServiceConnection;
use crate::{procfs, Error};
use stasis_image::{
    FdEntry, FileChecks, FileDesc, FileKind, FileOwner, ImageDir, PosixLock, ProcessImage,
};
use stasis_sys::process::{self, ForkedChild, IoOwner};
use stasis_sys::Pid;
use std::collections::{BTreeSet, HashMap};
use std::fs::{File, Metadata};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

mod blob;
pub mod chardev;
pub mod deleted;
pub mod directory;
pub mod epoll;
pub mod eventfd;
pub mod fanotify;
pub mod fifo;
pub mod inet;
pub mod inotify;
pub mod link_remap;
pub mod locks;
pub mod memfd;
pub mod netlink_socket;
pub mod nsfile;
pub mod opath;
pub mod packet_socket;
pub mod pidfd;
pub mod pipe;
mod pipebuf;
pub mod procfile;
pub mod raw;
pub mod regular;
pub mod service;
pub mod signalfd;
pub mod sol_socket;
pub mod tcp;
pub mod timerfd;
pub mod tty;
pub mod udp;
pub mod unix_socket;

/// Every kind of file stasis dumps and restores, in the order they are tried at dump: the
/// first kind that [claims](FileOps::claims) an fd dumps it. Kinds that claim the same class
/// of file come from the most particular to the most general (O_PATH descriptors of any
/// class first; memfd, deleted, regular).
pub fn kinds() -> Vec<Box<dyn FileOps>> {
    vec![
        Box::<service::ServiceConnections>::default(),
        Box::<opath::OPaths>::default(),
        Box::<unix_socket::UnixSockets>::default(),
        Box::<pipe::Pipes>::default(),
        Box::<fifo::Fifos>::default(),
        Box::<eventfd::EventFds>::default(),
        Box::<pidfd::Pidfds>::default(),
        Box::<timerfd::TimerFds>::default(),
        Box::<signalfd::SignalFds>::default(),
        Box::<epoll::Epolls>::default(),
        Box::<inotify::Inotifies>::default(),
        Box::<fanotify::Fanotifies>::default(),
        Box::<nsfile::NamespaceFiles>::default(),
        Box::<procfile::ProcFiles>::default(),
        Box::<memfd::Memfds>::default(),
        Box::<deleted::DeletedFiles>::default(),
        Box::<link_remap::LinkRemaps>::default(),
        Box::<regular::RegularFiles>::default(),
        Box::<directory::Directories>::default(),
        Box::<tty::Terminals>::default(),
        Box::<chardev::CharDevices>::default(),
        Box::<tcp::TcpSockets>::default(),
        Box::<udp::UdpSockets>::default(),
        Box::<raw::RawSockets>::default(),
        Box::<netlink_socket::NetlinkSockets>::default(),
        Box::<packet_socket::PacketSockets>::default(),
    ]
}

/// One kind of file: everything stasis does with it, dump and restore side. A value holds the
/// kind's state for one dump (objects seen across processes) or one restore (objects already
/// created); [`kinds`] makes fresh ones.
pub trait FileOps {
    /// What the kind is called in messages ("pipe").
    fn name(&self) -> &'static str;

    /// Whether `kind` is a record of this kind.
    fn owns(&self, kind: &FileKind) -> bool;

    /// Dump: whether `fd` is of this kind (cheap, no side effects: the kinds are asked in turn).
    fn claims(&self, fd: &Probe<'_>) -> bool;

    /// Dump: takes the options of this dump, before any fd is dumped (most kinds have none).
    fn configure(&mut self, _opts: &DumpFileOptions) {}

    /// Dump: describes `fd`, a new description with id `id` (contents to store go through
    /// `out`). An error refuses the dump; it names the fd.
    fn dump(
        &mut self,
        fd: &Probe<'_>,
        id: u32,
        out: &mut ProcessFiles<'_>,
    ) -> Result<FileKind, Error>;

    /// Dump: what the kind holds in place until the dump is over (TCP connections in repair
    /// mode behind an nftables rule), handed to the dump's release phase by
    /// [`FileRegistry::finish`].
    fn take_hold(&mut self) -> Option<inet::ConnectionHold> {
        None
    }

    /// Dump: the files the kind made outside the images (the remap links of
    /// [`link_remap`]), handed to the dump by [`FileRegistry::finish`]: removed if the dump
    /// fails, kept with the images once it completes.
    fn take_links(&mut self) -> link_remap::RemapLinks {
        link_remap::RemapLinks::default()
    }

    /// Restore: runs once every description of the tree is open ([`open_all`]): TCP
    /// connections leave repair mode and their nftables hold is removed.
    fn all_opened(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Dump: whether fds of this kind that share a description with an fd seen before (in the
    /// tree) are found with kcmp and given its id. Only the self-dump connection is not.
    fn deduplicated(&self) -> bool {
        true
    }

    /// Dump: after every fd of process `pid` was dumped, adds the descriptions the process
    /// needs without holding an fd (memfds that are only mapped); `maps` are its mappings
    /// (/proc/PID/maps, read once for every kind).
    fn dump_without_fds(
        &mut self,
        _pid: Pid,
        _maps: &[crate::procfs::MapEntry],
        _out: &mut ProcessFiles<'_>,
    ) -> Result<(), Error> {
        Ok(())
    }

    /// Dump: the files in flight this kind found (descriptors a unix socket's queued messages
    /// carry, received into the dumper by peeking) that have no description yet: (slot, our
    /// descriptor, where it is in flight: "fd N of pid P"). [`dump`] describes each like an fd
    /// of the process, as a description without fd, and gives its id back with
    /// [`in_flight_dumped`](Self::in_flight_dumped).
    fn files_in_flight(&self) -> Vec<(usize, RawFd, String)> {
        Vec::new()
    }

    /// Dump: the description id of the file in flight in `slot`.
    fn in_flight_dumped(&mut self, _slot: usize, _id: u32) {}

    /// Dump: once every process of the tree was dumped, checks the objects that span processes
    /// and completes their descriptions. `descs` are the descriptions of every process record,
    /// in tree order (a shared description once per process that has it).
    fn finish(&mut self, _descs: &mut [&mut FileDesc]) -> Result<(), Error> {
        Ok(())
    }

    /// The length and CRC-32C of the contents this description stores in `blob-ID.img`, for a
    /// kind that stores contents.
    fn blob(&self, _desc: &FileDesc) -> Option<(u64, u32)> {
        None
    }

    /// The parts of the file (offset, length) the blob holds, one after the other, for a kind
    /// that stores only some (the data extents of a sparse file); `None`: the first `len`
    /// bytes of [`blob`](Self::blob).
    fn blob_extents(&self, _desc: &FileDesc) -> Option<Vec<(u64, u64)>> {
        None
    }

    /// Images: checks a description of this kind from an untrusted record (`image`: the whole
    /// record, for references to fds or other descriptions). The error says what is wrong.
    fn validate(&self, desc: &FileDesc, image: &ProcessImage) -> Result<(), String>;

    /// Images: checks what else in a record refers to this kind (mappings of memfds).
    fn validate_image(&self, _image: &ProcessImage) -> Result<(), String> {
        Ok(())
    }

    /// `stasis show`: reads and checks the data a description keeps outside its record
    /// (by default its blob, when [`blob`](Self::blob) says it has one).
    fn verify(&self, images: &ImageDir, desc: &FileDesc) -> Result<(), Error> {
        match self.blob(desc) {
            Some((len, crc)) => blob::verify(images, desc.id, len, crc, self.name()),
            None => Ok(()),
        }
    }

    /// Restore: merges `copy`, the same description in a later process record, into the
    /// description the tree will use (data stored with one copy only).
    fn merge(&self, _tree: &mut FileDesc, _copy: &FileDesc) {}

    /// Restore: before any description is opened, with every description of the tree (merged):
    /// a kind whose objects must be made together (the unix sockets of a tree: connections,
    /// listeners and their pending clients) makes them here, and [`open`](Self::open) hands
    /// them out.
    fn prepare(&mut self, _descs: &[FileDesc]) -> Result<(), Error> {
        Ok(())
    }

    /// Restore: opens the description in the restorer, with its access mode (the status flags
    /// and, when [`has_position`](Self::has_position), the offset are set by the caller; never
    /// O_ASYNC, see the module's documentation). A kind that reopens a file by path checks it
    /// with [`OpenContext::check_same_file`].
    fn open(&mut self, desc: &FileDesc, ctx: &mut OpenContext<'_>) -> Result<OwnedFd, Error>;

    /// Restore: once every description is open, the work the kind leaves for when every
    /// process of the tree exists (run by [`OpenedFiles::tree_exists`]).
    fn when_tree_exists(&mut self) -> Option<Box<dyn WhenTreeExists>> {
        None
    }

    /// Restore: whether `desc` is opened before the descriptions of which this is not true
    /// (a pty master, which its slaves are opened from).
    fn opens_first(&self, _desc: &FileDesc) -> bool {
        false
    }

    /// Whether the dumped file position of this kind is restored (lseek).
    fn has_position(&self) -> bool {
        false
    }

    /// Restore, in the child once its fd table is laid out, before any
    /// [`FileOps::after_layout_in_child`]: replace the description the restorer opened, at
    /// every one of its fds (`fds`), with one only the child can open (a pidfd of a process
    /// that did not exist when the restorer opened the files).
    fn replace_in_child(
        &self,
        _child: &ForkedChild,
        _desc: &FileDesc,
        _fds: &[&FdEntry],
    ) -> Result<(), String> {
        Ok(())
    }

    /// Restore, in the child of process `pid` once its fd table is laid out: the work that
    /// needs fd numbers. `fd` is the first fd of the description.
    fn after_layout_in_child(
        &self,
        _child: &ForkedChild,
        _pid: Pid,
        _desc: &FileDesc,
        _fd: RawFd,
    ) -> Result<(), String> {
        Ok(())
    }
}

/// What a dump may do with files besides refusing them, from [`crate::DumpOptions`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpFileOptions {
    /// Restore a unix socket connected to a socket outside the dumped tree as a connection
    /// whose peer closed (`stasis dump --unix-peers-closed`; see [`unix_socket`]).
    pub unix_peers_closed: bool,
    /// What to do with TCP connections (`stasis dump --tcp-closed`; see [`tcp`]).
    pub tcp: crate::dump::TcpConnections,
}

/// Work a kind leaves for when every process of the restored tree exists, before any runs (the
/// credentials of messages queued on unix sockets name processes of the tree; the files in
/// flight with them are descriptions of the tree).
pub trait WhenTreeExists {
    /// `files`: every description of the tree, opened (files in flight are sent again).
    fn run(self: Box<Self>, files: &OpenedFiles) -> Result<(), Error>;
}

/// The kind of file an fd is, by the kernel's account, before any [`FileOps`] looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `socket:[N]` (never duplicated into the dumper).
    Socket,
    /// `anon_inode:NAME` ([`Probe::anon_name`]).
    Anon,
    /// An unnamed pipe (`pipe:[N]`).
    Pipe,
    /// A named FIFO.
    Fifo,
    /// A regular file (a memfd, or a file that may have been deleted).
    File,
    /// A POSIX message queue (a regular file on the mqueue filesystem).
    MessageQueue,
    Directory,
    CharDevice,
    /// Anything else (block devices, ...).
    Other,
}

/// statfs f_type of the mqueue filesystem (POSIX message queues).
const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// One fd of a process being dumped, as the kinds see it.
pub struct Probe<'a> {
    pub pid: Pid,
    pub fd: RawFd,
    /// Where /proc/PID/fd/N points.
    pub link: String,
    /// Access mode and status flags (fdinfo `flags:` without O_CLOEXEC).
    pub flags: u32,
    /// File position (fdinfo `pos:`).
    pub pos: u64,
    pub class: Class,
    /// Every fd number of the process.
    pub all_fds: &'a [RawFd],
    /// The self-dump connection of the process, if it has one.
    pub service: Option<&'a ServiceConnection>,
    /// For a socket, its domain, type and protocol.
    pub socket: Option<stasis_sys::socket::SocketKind>,
    cloexec: bool,
    /// Our duplicate of the fd and its metadata.
    dup: Option<(File, Metadata)>,
    /// The text of its fdinfo, read once (the process is frozen: it does not change).
    fdinfo: Option<String>,
}

impl<'a> Probe<'a> {
    fn new(
        pid: Pid,
        fd: RawFd,
        pidfd: &OwnedFd,
        all_fds: &'a [RawFd],
        service: Option<&'a ServiceConnection>,
    ) -> Result<Probe<'a>, Error> {
        let link = procfs::link(pid, &format!("fd/{fd}"))?;
        let path = std::path::PathBuf::from(format!("/proc/{pid}/fdinfo/{fd}"));
        let text = procfs::read_string(&path)?;
        let info = procfs::parse_fdinfo(&text, &path)?;
        let mut probe = Probe {
            pid,
            fd,
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            pos: info.pos,
            class: Class::Socket,
            all_fds,
            service,
            socket: None,
            cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
            dup: None,
            fdinfo: Some(text),
            link,
        };
        let dup = process::pidfd_getfd(pidfd.as_fd(), fd)
            .map_err(|e| Error::sys("pidfd_getfd", pid, e))?;
        let file = File::from(dup);
        let md = file
            .metadata()
            .map_err(|e| Error::io(format!("fstat fd {fd} of pid {pid}"), e))?;
        let ft = md.file_type();
        probe.class = if probe.link.starts_with("anon_inode:") {
            Class::Anon
        } else if ft.is_fifo() && probe.link.starts_with("pipe:") {
            Class::Pipe
        } else if ft.is_fifo() {
            Class::Fifo
        } else if ft.is_socket() {
            probe.socket =
                Some(stasis_sys::socket::socket_kind(file.as_fd()).map_err(|e| {
                    Error::io(format!("SO_DOMAIN/SO_TYPE of fd {fd} of pid {pid}"), e)
                })?);
            Class::Socket
        } else if ft.is_file() {
            let fs = process::fs_type(file.as_fd())
                .map_err(|e| Error::io(format!("fstatfs fd {fd}"), e))?;
            if fs == MQUEUE_MAGIC {
                Class::MessageQueue
            } else {
                Class::File
            }
        } else if ft.is_dir() {
            Class::Directory
        } else if ft.is_char_device() {
            Class::CharDevice
        } else {
            Class::Other
        };
        probe.dup = Some((file, md));
        Ok(probe)
    }

    /// For an anonymous-inode file, its name as the link shows it (`[eventfd]`, `inotify`).
    pub fn anon_name(&self) -> Option<&str> {
        self.link.strip_prefix("anon_inode:")
    }

    /// Our duplicate of the fd (the same description).
    pub fn file(&self) -> Result<&File, Error> {
        self.dup
            .as_ref()
            .map(|(f, _)| f)
            .ok_or_else(|| self.not_duplicated())
    }

    /// fstat of the fd.
    pub fn metadata(&self) -> Result<&Metadata, Error> {
        self.dup
            .as_ref()
            .map(|(_, md)| md)
            .ok_or_else(|| self.not_duplicated())
    }

    fn not_duplicated(&self) -> Error {
        Error::Invalid(format!(
            "fd {} of pid {} ({}) was not duplicated into the dumper",
            self.fd, self.pid, self.link
        ))
    }

    /// The text of /proc/PID/fdinfo/FD (each kind parses the fields it adds).
    pub fn fdinfo(&self) -> Result<String, Error> {
        match &self.fdinfo {
            Some(text) => Ok(text.clone()),
            None => fdinfo_text(self.pid, self.fd),
        }
    }

    /// The refusal of this fd: "fd N of pid P is WHAT (LINK)".
    pub fn unsupported(&self, what: &str) -> Error {
        Error::Unsupported {
            what: format!(
                "fd {} of pid {} is {what} ({})",
                self.fd, self.pid, self.link
            ),
        }
    }
}

/// The text of /proc/PID/fdinfo/FD (the fields each kind of file adds are parsed by its
/// module).
pub(crate) fn fdinfo_text(pid: Pid, fd: RawFd) -> Result<String, Error> {
    let path = std::path::PathBuf::from(format!("/proc/{pid}/fdinfo/{fd}"));
    Ok(procfs::read_string(&path)?)
}

/// Why an fd that no kind claims is refused.
fn refusal(fd: &Probe<'_>) -> Error {
    let socket;
    let what = match fd.class {
        Class::Socket => {
            socket = match fd.socket {
                Some(k) => format!(
                    "a socket ({}), which stasis cannot dump yet",
                    socket_name(k)
                ),
                None => "a socket".to_string(),
            };
            socket.as_str()
        }
        Class::MessageQueue => "a POSIX message queue",
        Class::Anon => match fd.anon_name() {
            Some("[userfaultfd]") => "a userfaultfd, which stasis cannot dump yet",
            Some("[io_uring]") => "an io_uring instance, which stasis cannot dump yet",
            Some("[pidfd]") => "a pidfd, which stasis cannot dump yet",
            Some("[perf_event]") => "a perf event, which stasis cannot dump yet",
            _ => "an anonymous-inode file of a kind stasis cannot dump",
        },
        Class::Pipe
        | Class::Fifo
        | Class::File
        | Class::Directory
        | Class::CharDevice
        | Class::Other => "a file of an unsupported type",
    };
    fd.unsupported(what)
}

/// How messages name a socket kind: "unix stream", "inet6 datagram (protocol 17)".
pub fn socket_name(k: stasis_sys::socket::SocketKind) -> String {
    let domain = match k.domain {
        libc::AF_UNIX => "unix".to_string(),
        libc::AF_INET => "inet".to_string(),
        libc::AF_INET6 => "inet6".to_string(),
        libc::AF_NETLINK => "netlink".to_string(),
        libc::AF_PACKET => "packet".to_string(),
        d => format!("family {d}"),
    };
    let ty = match k.ty {
        libc::SOCK_STREAM => "stream".to_string(),
        libc::SOCK_DGRAM => "datagram".to_string(),
        libc::SOCK_SEQPACKET => "seqpacket".to_string(),
        libc::SOCK_RAW => "raw".to_string(),
        t => format!("type {t}"),
    };
    format!("{domain} {ty}, protocol {}", k.protocol)
}

/// The files of one process being dumped: its descriptions and fd table so far, and the
/// contents to store as blobs.
pub struct ProcessFiles<'a> {
    files: Vec<FileDesc>,
    fds: Vec<FdEntry>,
    blobs: Vec<(u32, File)>,
    next_id: &'a mut u32,
}

impl ProcessFiles<'_> {
    /// The descriptions of the process so far.
    pub fn descriptions(&self) -> &[FileDesc] {
        &self.files
    }

    /// Stores the contents of `file` in the blob of description `id` (see
    /// [`FileOps::blob`] for its length and CRC).
    pub fn add_blob(&mut self, id: u32, file: &File) -> Result<(), Error> {
        let dup = file
            .try_clone()
            .map_err(|e| Error::io(format!("dup the file of description {id}"), e))?;
        self.blobs.push((id, dup));
        Ok(())
    }

    /// Adds a description no fd refers to, with a new id, which it returns.
    pub fn add_without_fd(&mut self, flags: u32, pos: u64, kind: FileKind) -> u32 {
        let id = self.new_id();
        self.files.push(FileDesc {
            id,
            flags,
            pos,
            kind,
            owner: FileOwner::default(),
            locks: Vec::new(),
        });
        id
    }

    /// Adds a copy of a description dumped with another process of the tree (same id), unless
    /// the process has it already.
    pub fn add_copy(&mut self, desc: &FileDesc) {
        if !self.files.iter().any(|f| f.id == desc.id) {
            self.files.push(desc.clone());
        }
    }

    fn new_id(&mut self) -> u32 {
        let id = *self.next_id;
        *self.next_id += 1;
        id
    }
}

/// What [`dump`] found: descriptions, the fd table, and file contents to store as blobs.
pub struct DumpedFiles {
    pub files: Vec<FileDesc>,
    pub fds: Vec<FdEntry>,
    /// The POSIX locks of the process ([`locks`]).
    pub posix_locks: Vec<PosixLock>,
    /// Description id and a handle to read the contents from (deleted files, memfds).
    pub blobs: Vec<(u32, File)>,
}

/// The file descriptions of a dumped tree: one id per description, however many fds of however
/// many processes refer to it (found with kcmp), and the kinds' state across processes.
pub struct FileRegistry {
    kinds: Vec<Box<dyn FileOps>>,
    /// (pid, fd, inode, description id) of every description's first fd.
    seen: Vec<(Pid, RawFd, u64, u32)>,
    descs: HashMap<u32, FileDesc>,
    next_id: u32,
    /// The processes, threads and process groups of the tree (owners of I/O signals must be
    /// among them).
    members: TreeMembers,
    /// (pid, fd, owner) of every description with an owner of its I/O signals.
    owners: Vec<(Pid, RawFd, FileOwner)>,
}

impl Default for FileRegistry {
    fn default() -> Self {
        FileRegistry::new(&DumpFileOptions::default())
    }
}

impl FileRegistry {
    /// A registry for one dump with options `opts`.
    pub fn new(opts: &DumpFileOptions) -> Self {
        let mut kinds = kinds();
        for k in &mut kinds {
            k.configure(opts);
        }
        FileRegistry {
            kinds,
            seen: Vec::new(),
            descs: HashMap::new(),
            next_id: 0,
            members: TreeMembers::default(),
            owners: Vec::new(),
        }
    }
}

/// The processes, threads and process groups of a dumped tree.
#[derive(Default)]
struct TreeMembers {
    pids: BTreeSet<Pid>,
    tids: BTreeSet<Pid>,
    pgids: BTreeSet<Pid>,
}

impl TreeMembers {
    /// Why `owner` cannot be restored, naming it: a pid outside the tree would be another
    /// process (or none) after the restore.
    fn outside(&self, owner: &FileOwner) -> Option<String> {
        let (set, what) = match owner.kind as i32 {
            process::F_OWNER_TID => (&self.tids, "thread"),
            process::F_OWNER_PGRP => (&self.pgids, "process group"),
            _ => (&self.pids, "process"),
        };
        (owner.pid != 0 && !set.contains(&owner.pid)).then(|| format!("{what} {}", owner.pid))
    }
}

impl FileRegistry {
    /// Completes the objects that span processes, once every process is collected: `processes`
    /// are the descriptions of every process record, in tree order. Fails when one cannot be
    /// restored (a pipe with an end outside the tree); the bytes in flight of each pipe go into
    /// the first record that has the pipe's first description. Returns what the kinds hold in
    /// place until the dump is over ([`DumpHolds`]); on failure, it is released here.
    pub fn finish<'a>(
        mut self,
        processes: impl IntoIterator<Item = &'a mut Vec<FileDesc>>,
    ) -> Result<DumpHolds, Error> {
        for (pid, fd, owner) in &self.owners {
            if let Some(who) = self.members.outside(owner) {
                return Err(Error::Unsupported {
                    what: format!(
                        "fd {fd} of pid {pid} sends its I/O signals (F_SETOWN) to {who}, which is not one of the dumped processes"
                    ),
                });
            }
        }
        let mut all: Vec<&mut FileDesc> = processes.into_iter().flatten().collect();
        for kind in &mut self.kinds {
            kind.finish(&mut all)?;
        }
        let mut links = link_remap::RemapLinks::default();
        for k in &mut self.kinds {
            links.append(k.take_links());
        }
        Ok(DumpHolds(
            self.kinds
                .iter_mut()
                .filter_map(|k| k.take_hold())
                .collect(),
            links,
        ))
    }
}

/// What the kinds hold in place while a dump is under way (TCP connections in repair mode, the
/// nftables rule that keeps their peers' packets away). Dropping it releases everything (the
/// dump failed, or the processes run on: call it before they are thawed);
/// [`DumpHolds::keep`] is for a dump whose processes were killed.
///
/// It also holds the remap links the dump made ([`link_remap::RemapLinks`]), which the dump
/// takes with [`DumpHolds::take_links`] to keep them once it completes (dropped, they are
/// removed).
#[derive(Default)]
pub struct DumpHolds(Vec<inet::ConnectionHold>, link_remap::RemapLinks);

impl DumpHolds {
    /// The remap links the dump made, to keep once it completes ([`link_remap::RemapLinks::keep`])
    /// or to drop (removing them) when it fails.
    pub fn take_links(&mut self) -> link_remap::RemapLinks {
        std::mem::take(&mut self.1)
    }

    /// The dumped processes were killed: the connections vanish without a word to their peers,
    /// whose packets stay held off until the restore.
    pub fn keep(self) {
        for h in self.0 {
            h.keep();
        }
        self.1.keep();
    }
}

/// The id of the description of `fd` when an fd seen before (in this process or another)
/// refers to the same description; `seen` as in [`FileRegistry`].
fn shared_id(seen: &[(Pid, RawFd, u64, u32)], fd: &Probe<'_>) -> Result<Option<u32>, Error> {
    let ino = fd.metadata()?.ino();
    for &(other_pid, other, seen_ino, id) in seen {
        if seen_ino == ino
            && process::same_file_description(fd.pid, fd.fd, other_pid, other)
                .map_err(|e| Error::sys("kcmp", fd.pid, e))?
        {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The owner and signal of the I/O signals of `fd`'s description (F_GETOWN_EX and F_GETSIG on
/// our duplicate, which shares the description). O_PATH descriptors have none (fcntl refuses
/// them), and neither has an fd that is not duplicated (the self-dump connection).
fn io_owner_of(fd: &Probe<'_>) -> Result<FileOwner, Error> {
    let Some((file, _)) = &fd.dup else {
        return Ok(FileOwner::default());
    };
    if fd.flags as i32 & libc::O_PATH != 0 {
        return Ok(FileOwner::default());
    }
    let what = |op: &str| format!("{op} on fd {} of pid {}", fd.fd, fd.pid);
    let owner = process::io_owner(file.as_fd()).map_err(|e| Error::io(what("F_GETOWN_EX"), e))?;
    let signal = process::io_signal(file.as_fd()).map_err(|e| Error::io(what("F_GETSIG"), e))?;
    Ok(FileOwner {
        kind: owner.kind as u32,
        pid: owner.pid,
        signal: signal as u32,
    })
}

/// Collects every fd of `pid`. Fails on the first fd stasis cannot restore.
/// `service` is the self-dump connection (fd number in the target and the reply its restored
/// copy will read), dumped as such. Descriptions shared with processes dumped before get the
/// same id (and a copy of the description). The files in flight in the process's unix sockets
/// are described last, as descriptions without fd.
pub fn dump(
    pid: Pid,
    pidfd: &OwnedFd,
    service: Option<&ServiceConnection>,
    registry: &mut FileRegistry,
) -> Result<DumpedFiles, Error> {
    let all_fds = procfs::list_fds(pid)?;
    let FileRegistry {
        kinds,
        seen,
        descs,
        next_id,
        members,
        owners,
    } = registry;
    members.pids.insert(pid);
    members.tids.extend(procfs::list_threads(pid)?);
    members.pgids.insert(procfs::read_stat(pid)?.pgid);
    let mut out = ProcessFiles {
        files: Vec::new(),
        fds: Vec::new(),
        blobs: Vec::new(),
        next_id,
    };
    let mut posix_locks: Vec<(u32, PosixLock)> = Vec::new();
    for &fd in &all_fds {
        let probe = Probe::new(pid, fd, pidfd, &all_fds, service)?;
        let Some(kind) = kinds.iter_mut().find(|k| k.claims(&probe)) else {
            return Err(refusal(&probe));
        };
        let what = format!("fd {fd} ({}) of pid {pid}", probe.link);
        // A lock stasis cannot read is one it could not take again: refused by name.
        let held = locks::parse_fdinfo(&probe.fdinfo()?)
            .map_err(|e| Error::Refused(format!("{what}: {e}")))?;
        let held = locks::classify(&held, &what)?;
        let shared = if kind.deduplicated() {
            shared_id(seen, &probe)?
        } else {
            None
        };
        let id = match shared {
            Some(id) => {
                if let Some(d) = descs.get(&id) {
                    out.add_copy(d);
                }
                id
            }
            None => {
                let id = out.new_id();
                let desc = FileDesc {
                    id,
                    flags: probe.flags,
                    pos: probe.pos,
                    kind: kind.dump(&probe, id, &mut out)?,
                    owner: io_owner_of(&probe)?,
                    locks: held.desc,
                };
                if desc.owner.pid != 0 {
                    owners.push((pid, fd, desc.owner));
                }
                if kind.deduplicated() {
                    seen.push((pid, fd, probe.metadata()?.ino(), id));
                    descs.insert(id, desc.clone());
                }
                out.files.push(desc);
                id
            }
        };
        // A POSIX lock shows on every fd of the description it was taken through: keep it once.
        for range in held.posix {
            if !posix_locks
                .iter()
                .any(|(i, l)| *i == id && l.range == range)
            {
                posix_locks.push((id, PosixLock { fd, range }));
            }
        }
        out.fds.push(FdEntry {
            fd,
            file_id: id,
            cloexec: probe.cloexec,
        });
    }
    let maps = crate::procfs::read_maps(pid)?;
    for kind in kinds.iter_mut() {
        kind.dump_without_fds(pid, &maps, &mut out)?;
    }
    // Files in flight in the process's unix sockets (and in those in flight, and so on).
    let mut own_pidfd = None;
    loop {
        let mut pending = Vec::new();
        for (k, kind) in kinds.iter().enumerate() {
            pending.extend(
                kind.files_in_flight()
                    .into_iter()
                    .map(|(slot, fd, at)| (k, slot, fd, at)),
            );
        }
        if pending.is_empty() {
            break;
        }
        let me = process::getpid();
        let pidfd = match &own_pidfd {
            Some(p) => p,
            None => own_pidfd
                .insert(process::pidfd_open(me).map_err(|e| Error::sys("pidfd_open", me, e))?),
        };
        for (k, slot, fd, at) in pending {
            let mut ctx = InFlight {
                kinds: &mut *kinds,
                seen: &mut *seen,
                descs: &mut *descs,
                out: &mut out,
            };
            let id = ctx.dump(&at, fd, pidfd)?;
            kinds[k].in_flight_dumped(slot, id);
        }
    }
    Ok(DumpedFiles {
        files: out.files,
        fds: out.fds,
        posix_locks: posix_locks.into_iter().map(|(_, l)| l).collect(),
        blobs: out.blobs,
    })
}

/// What describing a file in flight needs of [`dump`]'s state.
struct InFlight<'r, 'o> {
    kinds: &'r mut Vec<Box<dyn FileOps>>,
    seen: &'r mut Vec<(Pid, RawFd, u64, u32)>,
    descs: &'r mut HashMap<u32, FileDesc>,
    out: &'r mut ProcessFiles<'o>,
}

impl InFlight<'_, '_> {
    /// Describes `fd`, the dumper's duplicate of a file in flight in unix socket `at` ("fd N
    /// of pid P"), like an fd of that process (the same description as one seen before gets
    /// its id), as a description without fd of its record; returns its id.
    fn dump(&mut self, at: &str, fd: RawFd, pidfd: &OwnedFd) -> Result<u32, Error> {
        let me = process::getpid();
        let probe = Probe::new(me, fd, pidfd, &[], None)?;
        let what = format!(
            "a file in flight in a message queued on the unix socket at {at} ({})",
            probe.link
        );
        let Some(kind) = self.kinds.iter_mut().find(|k| k.claims(&probe)) else {
            return Err(Error::Unsupported {
                what: format!("{what} is of a kind stasis cannot dump"),
            });
        };
        if let Some(id) = shared_id(self.seen, &probe)? {
            if let Some(d) = self.descs.get(&id) {
                self.out.add_copy(d);
            }
            return Ok(id);
        }
        let held = locks::parse_fdinfo(&probe.fdinfo()?)
            .map_err(|e| Error::Refused(format!("{what}: {e}")))?;
        let held = locks::classify(&held, &what)?;
        let id = self.out.new_id();
        let record = kind.dump(&probe, id, self.out)?;
        // Kinds that name fds or processes of the holder cannot be described from here.
        if matches!(
            record,
            FileKind::Epoll { .. } | FileKind::Pidfd { .. } | FileKind::ServiceSocket { .. }
        ) {
            return Err(Error::Unsupported {
                what: format!(
                    "{what} is of kind {}, which stasis cannot restore in flight",
                    kind.name()
                ),
            });
        }
        let desc = FileDesc {
            id,
            flags: probe.flags,
            pos: probe.pos,
            kind: record,
            owner: io_owner_of(&probe)?,
            locks: held.desc,
        };
        self.seen.push((me, fd, probe.metadata()?.ino(), id));
        self.descs.insert(id, desc.clone());
        self.out.files.push(desc);
        Ok(id)
    }
}

/// The kind of a description.
fn kind_of<'k>(
    kinds: &'k mut [Box<dyn FileOps>],
    desc: &FileDesc,
) -> Result<&'k mut Box<dyn FileOps>, Error> {
    kinds
        .iter_mut()
        .find(|k| k.owns(&desc.kind))
        .ok_or_else(|| Error::Invalid(format!("no module restores description {}", desc.id)))
}

/// Writes the blobs of one process (the contents of deleted files and memfds) into
/// `blob-ID.img` files; returns their names. On failure, those it created are removed.
pub fn write_blobs(
    dir: &ImageDir,
    blobs: &[(u32, File)],
    files: &[FileDesc],
) -> Result<Vec<String>, Error> {
    let mut kinds = kinds();
    let mut written = Vec::new();
    for (id, file) in blobs {
        let Some(desc) = files.iter().find(|f| f.id == *id) else {
            continue;
        };
        let kind = kind_of(&mut kinds, desc)?;
        let Some((len, crc)) = kind.blob(desc) else {
            continue;
        };
        let extents = kind.blob_extents(desc).unwrap_or_else(|| vec![(0, len)]);
        match blob::write(dir, *id, file, &extents, crc, kind.name()) {
            Ok(name) => written.push(name),
            Err(e) => {
                for name in written {
                    let _ = dir.remove(&name);
                }
                return Err(e);
            }
        }
    }
    Ok(written)
}

/// The per-kind checks of file descriptions, for [`stasis_image::validate_process`].
pub struct KindChecks;

impl FileChecks for KindChecks {
    fn check(&self, p: &ProcessImage) -> Result<(), String> {
        let kinds = kinds();
        for f in &p.files {
            let kind = kinds.iter().find(|k| k.owns(&f.kind)).ok_or_else(|| {
                format!("file description {} is of a kind no module restores", f.id)
            })?;
            kind.validate(f, p)
                .map_err(|e| format!("file description {} ({}): {e}", f.id, kind.name()))?;
        }
        for kind in &kinds {
            kind.validate_image(p)?;
        }
        Ok(())
    }
}

/// Reads and checks the data the descriptions of `image` keep outside the record (blobs).
pub fn verify(images: &ImageDir, image: &ProcessImage) -> Result<(), Error> {
    let mut kinds = kinds();
    for f in &image.files {
        kind_of(&mut kinds, f)?.verify(images, f)?;
    }
    Ok(())
}

/// Every description of a tree being restored, opened once in the restorer.
pub struct OpenedFiles {
    /// One per id, merged from every process record that has it.
    descs: Vec<FileDesc>,
    fds: HashMap<u32, OwnedFd>,
    /// What the kinds left for when every process exists.
    later: std::cell::RefCell<Vec<Box<dyn WhenTreeExists>>>,
}

impl OpenedFiles {
    /// The descriptions of the tree, one per id.
    pub fn descriptions(&self) -> &[FileDesc] {
        &self.descs
    }

    /// Runs what the kinds left for when every process of the tree exists (and none runs yet):
    /// once, after [`OpenedFiles::set_owners`].
    pub fn tree_exists(&self) -> Result<(), Error> {
        let later = std::mem::take(&mut *self.later.borrow_mut());
        for work in later {
            work.run(self)?;
        }
        Ok(())
    }

    /// The restorer's descriptor of description `id`.
    pub fn get(&self, id: u32) -> Option<&OwnedFd> {
        self.fds.get(&id)
    }

    /// Every description's descriptor number in the restorer (inherited by the children).
    pub fn raw_fds(&self) -> HashMap<u32, RawFd> {
        self.fds
            .iter()
            .map(|(id, fd)| (*id, fd.as_raw_fd()))
            .collect()
    }

    /// Gives every description the owner and signal of its I/O signals (F_SETSIG,
    /// F_SETOWN_EX), through the restorer's descriptor (the same description). Run once every
    /// process and thread of the tree (`processes`) exists and has joined its process group:
    /// the owner must exist (it keeps its dumped id). Images are untrusted, so an owner must be
    /// a process or thread of the restored tree, or the process group one of them is in now;
    /// anything else is refused. The kernel records the restorer's credentials for the
    /// permission check of each signal, where the process had recorded its own.
    pub fn set_owners<'a>(
        &self,
        processes: impl IntoIterator<Item = &'a ProcessImage>,
    ) -> Result<(), Error> {
        let mut tree = TreeMembers::default();
        for p in processes {
            tree.pids.insert(p.pid);
            tree.tids.extend(p.threads.iter().map(|t| t.tid));
            if let Ok(pgid) = process::getpgid(p.pid) {
                tree.pgids.insert(pgid);
            }
        }
        for d in &self.descs {
            let o = d.owner;
            if o == FileOwner::default() {
                continue;
            }
            if let Some(who) = tree.outside(&o) {
                return Err(Error::Invalid(format!(
                    "description {} sends its I/O signals to {who}, which is not restored with the tree",
                    d.id
                )));
            }
            let Some(fd) = self.fds.get(&d.id) else {
                continue;
            };
            if o.signal != 0 {
                process::set_io_signal(fd.as_fd(), o.signal as i32).map_err(|e| {
                    Error::io(format!("F_SETSIG {} on description {}", o.signal, d.id), e)
                })?;
            }
            if o.kind != 0 || o.pid != 0 {
                let owner = IoOwner {
                    kind: o.kind as i32,
                    pid: o.pid,
                };
                process::set_io_owner(fd.as_fd(), owner).map_err(|e| {
                    Error::io(format!("F_SETOWN_EX {owner:?} on description {}", d.id), e)
                })?;
            }
        }
        Ok(())
    }
}

/// What a restore does with a file reopened by path (a regular file, directory, FIFO, the
/// object of an O_PATH descriptor, a mapped file) that is no longer the one of the dump: the
/// same path now names another inode (the file was restored from a backup, saved by an editor
/// through a rename, copied to another machine). A device is the same file when it has the
/// same device number (its inode changes with every boot of devtmpfs); another device number
/// is always refused.
#[derive(Debug, Clone, Copy, Default)]
pub enum ReplacedFiles {
    /// Fail the restore, naming the file (the default).
    #[default]
    Refuse,
    /// Restore the file found at the path when it is of the same type; `warn` is called once
    /// per such path with a one-line message naming it (and the engine logs it at warn level).
    Accept { warn: fn(&str) },
}

/// What opening the descriptions of a restore needs besides the descriptions: the images
/// (blobs) and what to do with replaced files.
pub struct OpenContext<'a> {
    pub images: &'a ImageDir,
    /// The terminal the tree is attached to, if the restore has one (see [`tty`]).
    pub terminal: Option<RawFd>,
    replaced: ReplacedFiles,
    /// Paths a replacement was accepted for (each is warned about once).
    warned: BTreeSet<String>,
}

impl<'a> OpenContext<'a> {
    pub fn new(images: &'a ImageDir, replaced: ReplacedFiles) -> OpenContext<'a> {
        OpenContext {
            images,
            terminal: None,
            replaced,
            warned: BTreeSet::new(),
        }
    }

    /// Checks with [`OpenContext::check_same_file`] that `file`, just opened at `path`, is the
    /// file of the dump, and hands it over as the description.
    pub fn check_opened(
        &mut self,
        path: &str,
        file: File,
        dev: u64,
        ino: u64,
        file_type: Option<u32>,
        what: &str,
    ) -> Result<OwnedFd, Error> {
        let md = file
            .metadata()
            .map_err(|e| Error::io(format!("fstat {path}"), e))?;
        self.check_same_file(path, &md, dev, ino, file_type, what)?;
        Ok(file.into())
    }

    /// Checks that `md`, the file opened at `path`, is the file of the dump: device `dev` and
    /// inode `ino`, and when `file_type` is given (`S_IFMT` bits) that type. `what` says what
    /// the file was ("the file that was open", "the file that was mapped"). Another inode of
    /// the same type is accepted (with a warning) only when the context says so; another type
    /// never is.
    pub fn check_same_file(
        &mut self,
        path: &str,
        md: &Metadata,
        dev: u64,
        ino: u64,
        file_type: Option<u32>,
        what: &str,
    ) -> Result<(), Error> {
        let now = md.mode() & libc::S_IFMT;
        if let Some(t) = file_type.filter(|&t| t != now) {
            return Err(Error::Changed {
                what: format!(
                    "{path} is {}, not {what} at dump time ({})",
                    type_name(now),
                    type_name(t)
                ),
            });
        }
        if (md.dev(), md.ino()) == (dev, ino) {
            return Ok(());
        }
        match self.replaced {
            ReplacedFiles::Refuse => Err(Error::Changed {
                what: format!(
                    "{path} is not {what} at dump time (its inode changed; --accept-replaced-files restores the file found there)"
                ),
            }),
            ReplacedFiles::Accept { warn } => {
                if self.warned.insert(path.to_string()) {
                    let msg = format!(
                        "{path} was replaced since the dump (inode {ino} on device {dev:#x} then, {} on {:#x} now): restoring the file found there",
                        md.ino(),
                        md.dev()
                    );
                    tracing::warn!("{msg}");
                    warn(&msg);
                }
                Ok(())
            }
        }
    }
}

/// "a regular file", "a directory", ... for the `S_IFMT` bits of a mode.
fn type_name(t: u32) -> &'static str {
    match t {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        _ => "a file of unknown type",
    }
}

/// One description per id for the whole tree: a description shared by several processes has a
/// copy in each record, merged here by its kind (a pipe's bytes in flight are stored with one
/// copy only). Copies of one id must be of one kind.
pub fn merge_descriptions<'a>(
    processes: impl IntoIterator<Item = &'a ProcessImage>,
) -> Result<Vec<FileDesc>, Error> {
    let mut kinds = kinds();
    let mut out: Vec<FileDesc> = Vec::new();
    let mut index: HashMap<u32, usize> = HashMap::new();
    for image in processes {
        for f in &image.files {
            let Some(&i) = index.get(&f.id) else {
                index.insert(f.id, out.len());
                out.push(f.clone());
                continue;
            };
            let kind = kind_of(&mut kinds, &out[i])?;
            if !kind.owns(&f.kind) {
                return Err(Error::Invalid(format!(
                    "description {} is a {} in one process record and not in pid {}'s",
                    f.id,
                    kind.name(),
                    image.pid
                )));
            }
            kind.merge(&mut out[i], f);
        }
    }
    Ok(out)
}

/// Opens every description of `processes` (a whole tree) in the restorer, once per id.
pub fn open_all<'a>(
    ctx: &mut OpenContext<'_>,
    processes: impl IntoIterator<Item = &'a ProcessImage>,
) -> Result<OpenedFiles, Error> {
    let descs = merge_descriptions(processes)?;
    let mut kinds = kinds();
    for k in &mut kinds {
        k.prepare(&descs)?;
    }
    let mut fds = HashMap::new();
    let mut order: Vec<(bool, &FileDesc)> = Vec::with_capacity(descs.len());
    for f in &descs {
        order.push((!kind_of(&mut kinds, f)?.opens_first(f), f));
    }
    // Stable: in id order within each class.
    order.sort_by_key(|(later, _)| *later);
    for (_, f) in order {
        let fd = open_description(kind_of(&mut kinds, f)?.as_mut(), f, ctx)?;
        locks::take_on_description(&fd, f)?;
        fds.insert(f.id, fd);
    }
    for kind in &mut kinds {
        kind.all_opened()?;
    }
    let later = kinds
        .iter_mut()
        .filter_map(|k| k.when_tree_exists())
        .collect();
    Ok(OpenedFiles {
        descs,
        fds,
        later: std::cell::RefCell::new(later),
    })
}

/// Opens one description with `kind`, then gives it its status flags and position. A
/// description with O_ASYNC on a file without signal-driven I/O is reopened with the flag
/// (only open(2) sets it there); on a file with signal-driven I/O it is left for the restore
/// child ([`after_layout_in_child`]).
pub(crate) fn open_description(
    kind: &mut dyn FileOps,
    desc: &FileDesc,
    ctx: &mut OpenContext<'_>,
) -> Result<OwnedFd, Error> {
    let mut fd = kind.open(desc, ctx)?;
    apply_status_flags(&fd, desc)?;
    if desc.flags as i32 & libc::O_ASYNC != 0 && !has_signal_driven_io(&fd, desc)? {
        fd = reopen_with_async(&fd, desc)?;
        apply_status_flags(&fd, desc)?;
    }
    if kind.has_position() && desc.pos != 0 {
        seek(&fd, desc.pos)?;
    }
    Ok(fd)
}

/// Whether the file of `fd` (a description without O_ASYNC) has signal-driven I/O: F_SETFL
/// sets O_ASYNC only on such a file (its fasync operation does). The flag is cleared again
/// (which also forgets the fd number it was set through).
fn has_signal_driven_io(fd: &OwnedFd, desc: &FileDesc) -> Result<bool, Error> {
    let what = |op: &str| format!("{op} on description {}", desc.id);
    let flags = process::get_status_flags(fd.as_fd()).map_err(|e| Error::io(what("F_GETFL"), e))?;
    process::set_status_flags(fd.as_fd(), flags | libc::O_ASYNC)
        .map_err(|e| Error::io(what("F_SETFL O_ASYNC"), e))?;
    let with = process::get_status_flags(fd.as_fd()).map_err(|e| Error::io(what("F_GETFL"), e))?;
    if with & libc::O_ASYNC == 0 {
        return Ok(false);
    }
    process::set_status_flags(fd.as_fd(), with & !libc::O_ASYNC)
        .map_err(|e| Error::io(what("F_SETFL without O_ASYNC"), e))?;
    Ok(true)
}

/// A new description of the file of `fd`, opened through /proc/self/fd with the access mode
/// and open flags of `desc` and O_ASYNC.
fn reopen_with_async(fd: &OwnedFd, desc: &FileDesc) -> Result<OwnedFd, Error> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let more = libc::O_ASYNC | desc.flags as i32 & libc::O_LARGEFILE;
    open_path(&path, desc, more)
        .map(OwnedFd::from)
        .map_err(|e| match e {
            Error::Io { source, .. } => Error::io(
                format!("reopen description {} with O_ASYNC", desc.id),
                source,
            ),
            e => e,
        })
}

/// The status flags F_SETFL can change. O_ASYNC is not among those [`apply_status_flags`]
/// sets (see the module's documentation).
const STATUS_FLAGS: i32 = libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME;

/// Gives a restored description the status flags it had (O_APPEND, O_NONBLOCK, O_DIRECT,
/// O_NOATIME), whatever its kind; nothing is changed when they are already right. O_ASYNC is
/// set elsewhere (see the module's documentation).
pub fn apply_status_flags(fd: &OwnedFd, desc: &FileDesc) -> Result<(), Error> {
    let want = desc.flags as i32 & STATUS_FLAGS;
    let have = process::get_status_flags(fd.as_fd())
        .map_err(|e| Error::io(format!("F_GETFL on description {}", desc.id), e))?;
    if have & STATUS_FLAGS != want {
        process::set_status_flags(fd.as_fd(), (have & !STATUS_FLAGS) | want)
            .map_err(|e| Error::io(format!("F_SETFL {want:#o} on description {}", desc.id), e))?;
    }
    Ok(())
}

/// Flags a description reopened by path is opened with, besides its access mode (O_SYNC and
/// O_DSYNC can only be given to open(2)). Never O_ASYNC: given to open(2) on a file with
/// signal-driven I/O, it would show without effect, and F_SETFL could not set it any more.
const REOPEN_FLAGS: i32 = STATUS_FLAGS | libc::O_SYNC | libc::O_DSYNC;

/// Opens `path` for description `desc`: its access mode and open flags, plus `more`.
pub(crate) fn open_path(path: &str, desc: &FileDesc, more: i32) -> Result<File, Error> {
    let access = desc.flags as i32 & libc::O_ACCMODE;
    let mut o = std::fs::OpenOptions::new();
    o.read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY)
        .custom_flags(reopen_flags(desc) | more);
    o.open(path)
        .map_err(|e| Error::io(format!("open {path}"), e))
}

/// The open flags (besides the access mode) a description is reopened with.
pub(crate) fn reopen_flags(desc: &FileDesc) -> i32 {
    desc.flags as i32 & REOPEN_FLAGS
}

/// Checks a path from a record: absolute, bounded, without NUL.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if stasis_image::valid_absolute_path(path) {
        Ok(())
    } else {
        Err(format!("bad path {path:?}"))
    }
}

fn seek(fd: &OwnedFd, pos: u64) -> Result<(), Error> {
    use std::io::Seek;
    let mut f = File::from(fd.try_clone().map_err(|e| Error::io("dup", e))?);
    f.seek(std::io::SeekFrom::Start(pos))
        .map_err(|e| Error::io(format!("lseek fd {} to {pos}", fd.as_raw_fd()), e))?;
    Ok(())
}

/// Lays out the fd table of the freshly forked process: every inherited description moves
/// to its number and gets its close-on-exec flag; everything else below `base` is closed.
/// `by_id` gives the inherited descriptor of each description; every descriptor we hold is
/// below `base` and so is every wanted number; `base..park_from` is kept (the restorer's own
/// descriptors for the child), and descriptions are parked at `park_from` and above meanwhile.
pub fn layout_in_child(
    child: &ForkedChild,
    table: &[FdEntry],
    by_id: &HashMap<u32, RawFd>,
    base: RawFd,
    park_from: RawFd,
) -> Result<(), String> {
    // Park every source above `base` first so no dup3 can clobber a source not yet moved.
    let mut parked: HashMap<u32, RawFd> = HashMap::new();
    for (&id, &fd) in by_id {
        let p = child
            .dup_at_least_raw(fd, park_from)
            .map_err(|e| format!("F_DUPFD {fd}: {e}"))?;
        parked.insert(id, p);
    }
    child
        .close_range(0, (base - 1) as u32)
        .map_err(|e| format!("close_range: {e}"))?;
    for e in table {
        let src = *parked
            .get(&e.file_id)
            .ok_or_else(|| format!("fd {} has no opened description {}", e.fd, e.file_id))?;
        child
            .dup3_raw(src, e.fd)
            .map_err(|err| format!("dup3 to fd {}: {err}", e.fd))?;
        child
            .set_cloexec_raw(e.fd, e.cloexec)
            .map_err(|err| format!("F_SETFD fd {}: {err}", e.fd))?;
    }
    for p in parked.values() {
        let _ = child.close_raw(*p);
    }
    Ok(())
}

/// Runs in the restore child of process `pid` right after [`layout_in_child`], once every fd
/// has its final number: O_ASYNC is set on each description that had it and lacks it (through
/// its first fd, the number its I/O signals will report), then each kind's
/// [`FileOps::after_layout_in_child`], kind by kind in the order of [`kinds`] (epoll watches
/// are added, then the events that opening and mapping its files queued in its inotify
/// instances are dropped).
pub fn after_layout_in_child(
    child: &ForkedChild,
    pid: Pid,
    files: &[FileDesc],
    table: &[FdEntry],
) -> Result<(), String> {
    for f in files.iter().filter(|f| f.flags as i32 & libc::O_ASYNC != 0) {
        let Some(e) = table.iter().find(|e| e.file_id == f.id) else {
            continue;
        };
        let flags = child
            .status_flags_raw(e.fd)
            .map_err(|err| format!("F_GETFL fd {}: {err}", e.fd))?;
        // Shared with a process laid out before, or a file without signal-driven I/O
        // (opened with the flag): nothing to do.
        if flags & libc::O_ASYNC == 0 {
            child
                .set_status_flags_raw(e.fd, flags | libc::O_ASYNC)
                .map_err(|err| format!("F_SETFL O_ASYNC fd {}: {err}", e.fd))?;
        }
    }
    for kind in kinds() {
        for f in files.iter().filter(|f| kind.owns(&f.kind)) {
            let fds: Vec<&FdEntry> = table.iter().filter(|e| e.file_id == f.id).collect();
            if !fds.is_empty() {
                kind.replace_in_child(child, f, &fds)?;
            }
        }
    }
    for kind in kinds() {
        for f in files.iter().filter(|f| kind.owns(&f.kind)) {
            // A description without fds has nothing to set up by number.
            if let Some(e) = table.iter().find(|e| e.file_id == f.id) {
                kind.after_layout_in_child(child, pid, f, e.fd)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::testing::sample_process;
    use stasis_image::validate_process;
    use std::path::Path;

    /// One record of every kind. The match makes adding a variant of [`FileKind`] without a
    /// sample here a compile error, and the test below then requires a module for it.
    fn one_of_each() -> Vec<FileKind> {
        let kinds: Vec<FileKind> = sample_process().files.into_iter().map(|f| f.kind).collect();
        let mut seen = std::collections::BTreeSet::new();
        for k in &kinds {
            let variant = match k {
                FileKind::Regular { .. } => 0,
                FileKind::Deleted { .. } => 1,
                FileKind::Directory { .. } => 2,
                FileKind::CharDevice { .. } => 3,
                FileKind::Pipe { .. } => 4,
                FileKind::ServiceSocket { .. } => 5,
                FileKind::EventFd { .. } => 6,
                FileKind::TimerFd { .. } => 7,
                FileKind::SignalFd { .. } => 8,
                FileKind::Epoll { .. } => 9,
                FileKind::Memfd { .. } => 10,
                FileKind::Inotify { .. } => 11,
                FileKind::Fifo { .. } => 12,
                FileKind::OPath { .. } => 13,
                FileKind::Pidfd { .. } => 14,
                FileKind::Namespace { .. } => 15,
                FileKind::ProcFile { .. } => 16,
                FileKind::Fanotify { .. } => 17,
                FileKind::NetlinkSocket { .. } => 18,
                FileKind::PacketSocket { .. } => 19,
                FileKind::UnixSocket { .. } => 20,
                FileKind::ExternalTerminal { .. } => 21,
                FileKind::ControllingTerminal { .. } => 22,
                FileKind::PtyMaster { .. } => 23,
                FileKind::PtySlave { .. } => 24,
                FileKind::Inet(s) => 25 + s.ty as usize,
                FileKind::LinkRemap { .. } => 100,
            };
            seen.insert(variant);
        }
        assert_eq!(seen.len(), 27, "the sample record lacks a kind of file");
        kinds
    }

    #[test]
    fn every_kind_has_one_module() {
        let table = kinds();
        for k in one_of_each() {
            let owners: Vec<&str> = table
                .iter()
                .filter(|ops| ops.owns(&k))
                .map(|ops| ops.name())
                .collect();
            assert_eq!(owners.len(), 1, "{k:?} is owned by {owners:?}");
        }
        let mut names: Vec<&str> = table.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), table.len(), "two kinds share a name");
    }

    #[test]
    fn sample_passes_every_kinds_checks() {
        validate_process(&sample_process(), 8192, Path::new("x"), &KindChecks).unwrap();
    }

    #[test]
    fn kind_check_failures_name_the_description_and_kind() {
        let mut p = sample_process();
        for f in &mut p.files {
            if let FileKind::EventFd { count, .. } = &mut f.kind {
                *count = u64::MAX;
            }
        }
        let err = validate_process(&p, 8192, Path::new("process-42.img"), &KindChecks)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("process-42.img") && err.contains("file description 2 (eventfd)"),
            "{err}"
        );
        // What the image crate checked before the kinds moved here is still refused.
        for (what, edit) in [
            ("eventfd count", 2usize),
            ("timerfd clock", 3),
            ("memfd name", 6),
        ] {
            let mut p = sample_process();
            match &mut p.files[edit].kind {
                FileKind::EventFd { count, .. } => *count = u64::MAX,
                FileKind::TimerFd { clockid, .. } => *clockid = 3,
                FileKind::Memfd { name, .. } => *name = "x".repeat(300),
                _ => unreachable!(),
            }
            assert!(KindChecks.check(&p).is_err(), "{what}");
        }
        let mut p = sample_process();
        p.fds.retain(|f| f.fd != 3);
        assert!(
            KindChecks.check(&p).is_err(),
            "epoll watch of an fd not in the table"
        );
        let mut p = sample_process();
        p.vmas[2].kind = stasis_image::VmaKind::Memfd { memfd_id: 1 };
        assert!(KindChecks.check(&p).is_err(), "unknown memfd");
    }

    /// Hostile records, checked by every kind: the payload of a valid record mutated at random
    /// (with a fixed seed), its CRC recomputed so decoding really runs, then decoded and
    /// validated. Nothing may panic or hang.
    #[test]
    fn mutated_process_records_never_panic_in_the_kinds_checks() {
        let decoded =
            stasis_image::testing::mutated_process_records(0x9e37_79b9_7f4a_7c15, 20_000, |img| {
                let _ = validate_process(&img, 1 << 20, Path::new("x"), &KindChecks);
            });
        assert!(decoded > 0, "no mutation decoded");
    }

    #[test]
    fn merge_keeps_one_description_per_id() {
        let a = sample_process();
        let mut b = sample_process();
        b.pid = 43;
        // The bytes in flight are stored with one copy only: here, the second process's.
        let mut a2 = a.clone();
        for f in &mut a2.files {
            if let FileKind::Pipe { data, .. } = &mut f.kind {
                data.clear();
            }
        }
        let merged = merge_descriptions([&a2, &b]).unwrap();
        assert_eq!(merged, a.files);
        // A description of another kind under the same id is refused.
        b.files[1].kind = FileKind::SignalFd { mask: 0 };
        let err = merge_descriptions([&a, &b]).unwrap_err().to_string();
        assert!(err.contains("description 1 is a pipe"), "{err}");
    }

    #[test]
    fn status_flags_are_set_whatever_the_kind() {
        let (r, _w) = process::pipe().unwrap();
        let desc = |flags: i32| FileDesc {
            id: 1,
            flags: flags as u32,
            pos: 0,
            kind: FileKind::SignalFd { mask: 0 },
            owner: Default::default(),
            locks: Vec::new(),
        };
        let flags = || process::get_status_flags(r.as_fd()).unwrap();
        apply_status_flags(&r, &desc(libc::O_NONBLOCK | libc::O_ASYNC)).unwrap();
        assert_eq!(
            flags() & (STATUS_FLAGS | libc::O_ASYNC),
            libc::O_NONBLOCK,
            "set, but O_ASYNC (the restore child sets it)"
        );
        apply_status_flags(&r, &desc(libc::O_RDONLY)).unwrap();
        assert_eq!(flags() & STATUS_FLAGS, 0, "all cleared");
    }

    /// O_ASYNC: a pipe has signal-driven I/O (the flag is left for the restore child, and the
    /// probe leaves nothing behind); a regular file has none, and gets the flag from open(2).
    #[test]
    fn o_async_where_the_file_has_signal_driven_io_or_not() {
        let (r, _w) = process::pipe().unwrap();
        let desc = |flags: i32| FileDesc {
            id: 1,
            flags: flags as u32,
            pos: 0,
            kind: FileKind::SignalFd { mask: 0 },
            owner: Default::default(),
            locks: Vec::new(),
        };
        assert!(has_signal_driven_io(&r, &desc(libc::O_ASYNC)).unwrap());
        let flags = process::get_status_flags(r.as_fd()).unwrap();
        assert_eq!(flags & libc::O_ASYNC, 0, "the probe clears the flag");
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let f = OwnedFd::from(f);
        assert!(!has_signal_driven_io(&f, &desc(libc::O_ASYNC)).unwrap());
        let again = reopen_with_async(&f, &desc(libc::O_ASYNC)).unwrap();
        let flags = process::get_status_flags(again.as_fd()).unwrap();
        assert_eq!(flags & (libc::O_ASYNC | libc::O_ACCMODE), libc::O_ASYNC);
    }

    /// Owners are set on the restored descriptions only when they are in the restored tree.
    #[test]
    fn owners_are_set_only_inside_the_restored_tree() {
        let (r, _w) = process::pipe().unwrap();
        let me = process::getpid();
        let mut image = sample_process();
        image.pid = me;
        image.threads[0].tid = me;
        let opened = |owner| OpenedFiles {
            descs: vec![FileDesc {
                id: 1,
                flags: 0,
                pos: 0,
                kind: FileKind::SignalFd { mask: 0 },
                owner,
                locks: Vec::new(),
            }],
            fds: HashMap::from([(1, r.try_clone().unwrap())]),
            later: Default::default(),
        };
        let pgrp = process::getpgid(0).unwrap();
        opened(FileOwner {
            kind: 2,
            pid: pgrp,
            signal: 0,
        })
        .set_owners([&image])
        .unwrap();
        assert_eq!(process::io_owner(r.as_fd()).unwrap().pid, pgrp);
        opened(FileOwner {
            kind: 1,
            pid: me,
            signal: 10,
        })
        .set_owners([&image])
        .unwrap();
        assert_eq!(
            process::io_owner(r.as_fd()).unwrap(),
            IoOwner { kind: 1, pid: me }
        );
        assert_eq!(process::io_signal(r.as_fd()).unwrap(), 10);
        for (kind, pid, who) in [
            (1, 1, "process 1"),
            (0, 1, "thread 1"),
            (2, 1, "process group 1"),
        ] {
            let err = opened(FileOwner {
                kind,
                pid,
                signal: 9,
            })
            .set_owners([&image])
            .unwrap_err()
            .to_string();
            assert!(err.contains(who) && err.contains("not restored"), "{err}");
        }
        assert_eq!(process::io_owner(r.as_fd()).unwrap().pid, me, "left alone");
    }

    fn probe(class: Class, link: &str) -> Probe<'static> {
        Probe {
            pid: 7,
            fd: 4,
            link: link.into(),
            flags: 0,
            pos: 0,
            class,
            all_fds: &[],
            service: None,
            socket: None,
            cloexec: false,
            dup: None,
            fdinfo: None,
        }
    }

    #[test]
    fn refusals_name_the_fd_and_what_it_is() {
        for (class, link, what) in [
            (Class::Socket, "socket:[1]", "a socket"),
            (Class::MessageQueue, "/q", "a POSIX message queue"),
            (Class::Anon, "anon_inode:[userfaultfd]", "a userfaultfd"),
            (Class::Anon, "anon_inode:[io_uring]", "an io_uring instance"),
            (Class::Anon, "anon_inode:[x]", "an anonymous-inode file"),
            (Class::Other, "/dev/sda", "a file of an unsupported type"),
        ] {
            let p = probe(class, link);
            assert!(kinds().iter().all(|k| !k.claims(&p)), "{link} is claimed");
            let err = refusal(&p).to_string();
            assert!(
                err.contains("fd 4 of pid 7") && err.contains(what) && err.contains(link),
                "{err}"
            );
        }
    }

    #[test]
    fn the_service_connection_is_claimed_by_its_fd_number() {
        let svc = ServiceConnection {
            fd: 4,
            restored_reply: b"r".to_vec(),
        };
        let mut p = probe(Class::Socket, "socket:[1]");
        p.service = Some(&svc);
        let claimed: Vec<&str> = kinds()
            .iter()
            .filter(|k| k.claims(&p))
            .map(|k| k.name())
            .collect();
        assert_eq!(claimed, vec!["service connection"]);
    }
}
