//! The stasis image format.
//!
//! An image directory holds one *inventory* (written last, so a directory without it is never
//! mistaken for a complete dump), one *process* record per dumped process, one *pages* file per
//! process with the raw page contents, and *blob* files for file contents (deleted files).
//!
//! Every file starts with the same 32-byte header (magic, format version, record kind, payload
//! length, payload CRC, header CRC); see `docs/image-format.md`. Metadata records are
//! postcard-encoded structs with a size limit; raw data files (pages, blobs) start their payload
//! at a 4 KiB boundary so that pages can be copied or mapped in bulk, and are covered by CRCs
//! kept in the metadata, per extent.
//!
//! # Reading untrusted images
//!
//! Images are untrusted input (a privileged daemon restores images an unprivileged user handed
//! over). Reading them never blocks on, and never allocates by, what the image says:
//!
//! * Every file is opened beneath the directory descriptor ([`ImageDir`]: openat2 with
//!   RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) with
//!   O_NONBLOCK | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, and checked with fstat to be a regular file
//!   before anything is read: a FIFO, device, socket, directory or symbolic link in place of an
//!   image is [`ImageError::NotRegular`], at once.
//! * Lengths in headers are checked against the size fstat reported before anything is
//!   allocated or read ([`ImageError::Truncated`] when a header claims more than the file
//!   holds).
//! * Metadata records ([`read_record`]) are at most [`MAX_RECORD_LEN`] (64 MiB): the only
//!   buffer sized by an image, and never larger than the file. What one decodes into is at
//!   most [`DECODE_BUDGET`] bytes of lists and strings, charged element by element while
//!   decoding.
//! * Raw data (pages, blobs) is never read whole: page runs and blob lengths can be as large as
//!   a sparse file. Stream an extent through a fixed buffer of the caller's with
//!   [`RawReader::read_chunks`] (returns the CRC) or [`RawReader::read_extent_chunks`] (checks
//!   it), or read it through [`RawReader::extent`] (an [`std::io::Read`] limited to the
//!   extent). [`RawReader::read_extent`] and [`RawReader::read_unchecked`] fill a buffer the
//!   caller sized, and are only for extents the caller bounded itself.
//!
//! # Authenticated images
//!
//! A directory that seals what it writes ([`ImageDir::seal`]) MACs every file as it is written
//! (keyed BLAKE3, with a key derived from a secret only root can read) and lists them in
//! `auth.img`, written just before the inventory. A directory that authenticates what it reads
//! ([`ImageDir::authenticate`]) checks `auth.img` and then every byte its readers hand out, on
//! the bytes handed out: a user who owns the files can change them, but not make a reader
//! accept the change. See [`auth`].

pub mod auth;
mod budget;
mod bytes;
mod dir;
mod entries;
mod frame;
mod raw;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod validate;

pub use auth::ImageKey;
pub use budget::DECODE_BUDGET;
pub use dir::ImageDir;
pub use entries::*;
pub use frame::{
    decode_record, encode_record, read_record, stage_inventory, write_record_atomic,
    write_record_unsynced, Header, RecordKind, Staged, FORMAT_VERSION, HEADER_LEN, MAGIC,
    MAX_RECORD_LEN,
};
pub use raw::{ExtentReader, RawReader, RawWriter, RAW_DATA_OFFSET, READ_CHUNK, WRITE_PIECE};
pub use validate::{
    valid_absolute_path, validate_process, validate_process_in_chain, FileChecks, MAX_FDS,
    MAX_PATH, MAX_SECCOMP_FILTERS,
};

use std::path::PathBuf;

/// Errors from reading or writing images. Each says which file and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a stasis image (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path}: image format version {found} is not supported (this stasis reads version {supported})")]
    BadVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: header checksum mismatch (corrupted image)")]
    BadHeaderCrc { path: PathBuf },
    #[error("{path}: payload checksum mismatch (corrupted image)")]
    BadPayloadCrc { path: PathBuf },
    #[error("{path}: expected a {expected} record, found kind {found}")]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
        found: u32,
    },
    #[error("{path}: record of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { path: PathBuf, len: u64, limit: u64 },
    #[error("{path}: truncated (expected {expected} bytes, found {found})")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: cannot decode record: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("{path}: cannot encode record: {reason}")]
    Encode { path: PathBuf, reason: String },
    #[error("{path}: invalid content: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// An image file that is not a regular file (a FIFO, device, socket, directory or symbolic
    /// link planted in the image directory). Found with fstat right after a non-blocking open,
    /// before anything is read from it.
    #[error("{path}: is {what}, not a regular file")]
    NotRegular { path: PathBuf, what: &'static str },
    /// An image file of an authenticated directory that does not match `auth.img`: not
    /// listed, of another length, or with another MAC (see [`auth`]); or an `auth.img` that
    /// does not verify, or is missing where authentication is required.
    #[error("{path}: not authenticated: {reason}")]
    NotAuthenticated { path: PathBuf, reason: String },
}

/// File names inside an image directory.
pub mod names {
    /// The inventory: written last; its presence marks a complete dump.
    pub const INVENTORY: &str = "inventory.img";

    /// The manifest of an authenticated dump: every other file with its MAC
    /// ([`crate::auth`]). Written just before the inventory.
    pub const AUTH: &str = "auth.img";

    /// Metadata of one process.
    pub fn process(pid: i32) -> String {
        format!("process-{pid}.img")
    }

    /// Page contents of one process.
    pub fn pages(pid: i32) -> String {
        format!("pages-{pid}.img")
    }

    /// The pages a compressed dump pre-copies, raw, before it compresses them into
    /// [`pages`] once the processes run on: a scratch file, removed before the dump is
    /// complete.
    pub fn pages_scratch(pid: i32) -> String {
        format!("pages-{pid}.precopy")
    }

    /// Contents of a file that was deleted while open, or of another object without a path.
    pub fn blob(id: u32) -> String {
        format!("blob-{id}.img")
    }
}
