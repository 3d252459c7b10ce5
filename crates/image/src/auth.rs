//! Authenticated images: a MAC over every image file, keyed by a secret only root can read.
//!
//! A user owns the images of their self-dump and can rewrite them at will; stasisd must restore
//! only what it wrote. A directory written through a *sealing* [`ImageDir`] ([`ImageDir::seal`])
//! gets, besides its files, `auth.img`: the **manifest** of the dump, and its MAC.
//!
//! # What is MACed
//!
//! Every MAC is keyed BLAKE3 with the image key ([`ImageKey`], derived from the 32-byte
//! secret with `blake3::derive_key("stasis image mac v1", secret)`), over an input that starts
//! with a label naming what it is (so no MAC of one kind can stand for another), the dump's
//! random 16-byte id and the file's name, each length-prefixed (so a file cannot be moved to
//! another name or into another dump):
//!
//! | MAC of                    | input after the key                                                    |
//! |---------------------------|------------------------------------------------------------------------|
//! | a record file             | `"stasis record\0"` id name_len name file_len, then every byte of the file (header and payload) |
//! | an extent of a raw file   | `"stasis extent\0"` id name_len name offset len, then the extent's bytes |
//! | a raw file (pages, blob)  | `"stasis raw file\0"` id name_len name file_len, the 4096-byte header block, the number of extents and each extent's length and MAC |
//! | the manifest              | `"stasis manifest\0"`, then the manifest's encoding                   |
//!
//! (numbers are little-endian u64). A raw file's payload is cut into **extents**: each
//! [`RawWriter::write`](crate::RawWriter::write) call is one extent (longer writes are cut
//! into pieces of [`MAX_EXTENT_LEN`]), so a page run or a 1 MiB piece of a blob is one extent.
//! Every byte of every file is covered once: records whole, raw files by their extents and
//! their header block.
//!
//! The MACs are computed while the files are written, on the bytes written (records are
//! encoded in memory; raw data is hashed as it is appended), never in a second pass. The
//! manifest ([`Manifest`]: the dump id and, for every file, its name, kind, length, MAC and
//! extents) is written as `auth.img` just before the inventory, which stays the last file.
//!
//! # How it is verified, and why rewriting a file later does not help
//!
//! [`ImageDir::authenticate`] reads `auth.img` into memory, checks its MAC and keeps the
//! manifest. From then on the directory's readers check everything they hand out, on the very
//! bytes they hand out:
//!
//! * [`read_record`](crate::read_record) refuses a file the manifest does not list, reads the
//!   record whole into memory (it already did: at most 64 MiB), checks its length and MAC on
//!   that buffer, and decodes that same buffer.
//! * [`RawReader::open`](crate::RawReader::open) refuses an unlisted file, checks its length
//!   and the MAC of its header block (read into memory once, and decoded from there).
//! * Every read of a [`RawReader`](crate::RawReader) covers whole extents: read into the
//!   caller's buffer, each extent is checked there before the call returns; a read that starts
//!   or ends inside an extent reads that extent whole into a buffer of its own, checks it, and
//!   copies the part asked for. No byte leaves the reader unverified.
//!
//! Nothing is verified by path or in a pass before use: what is checked is the copy in the
//! reader's memory, which the user cannot touch, so rewriting a file between the check and
//! the use (TOCTOU) changes nothing. Nor does it cost a pass: each byte is hashed once, when
//! it is read for use. [`verify_all`] is the full pass (`stasis show`, or a decision before a
//! restore); it proves only what the files held while it ran.

use crate::frame::{
    decode_record, encode_record, read_up_to, RecordKind, HEADER_LEN, MAX_RECORD_LEN,
};
use crate::raw::RAW_DATA_OFFSET;
use crate::{names, ImageDir, ImageError};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// Length of the secret an [`ImageKey`] is derived from.
pub const SECRET_LEN: usize = 32;
/// Length of every MAC.
pub const MAC_LEN: usize = 32;
/// Length of the random id of a dump.
pub const DUMP_ID_LEN: usize = 16;
/// The longest extent of a raw file: a longer write is cut into extents of this length. It
/// bounds the buffer a reader allocates to verify an extent it reads only in part.
pub const MAX_EXTENT_LEN: u64 = 2 << 20;
/// The context of the derivation of the MAC key from the secret (BLAKE3 `derive_key`).
pub const KEY_CONTEXT: &str = "stasis image mac v1";

const LABEL_RECORD: &[u8] = b"stasis record\0";
const LABEL_EXTENT: &[u8] = b"stasis extent\0";
const LABEL_RAW_FILE: &[u8] = b"stasis raw file\0";
const LABEL_MANIFEST: &[u8] = b"stasis manifest\0";

/// A MAC (keyed BLAKE3).
pub type Mac = [u8; MAC_LEN];
/// The random id of one dump: part of every MAC of its files.
pub type DumpId = [u8; DUMP_ID_LEN];

/// The key images are authenticated with, derived from a secret (stasisd's key file).
#[derive(Clone, PartialEq, Eq)]
pub struct ImageKey {
    mac_key: [u8; 32],
}

impl ImageKey {
    /// The image key of `secret`: `blake3::derive_key(KEY_CONTEXT, secret)`, so the secret
    /// itself is never used as a key and could serve another purpose under another context.
    pub fn from_secret(secret: &[u8; SECRET_LEN]) -> ImageKey {
        ImageKey {
            mac_key: blake3::derive_key(KEY_CONTEXT, secret),
        }
    }

    fn hasher(&self, label: &[u8]) -> blake3::Hasher {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        h.update(label);
        h
    }

    /// A hasher for a MAC of file `name` of dump `id`, after the label.
    fn file_hasher(&self, label: &[u8], id: &DumpId, name: &str) -> blake3::Hasher {
        let mut h = self.hasher(label);
        h.update(id);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h
    }

    fn record_mac(&self, id: &DumpId, name: &str, bytes: &[u8]) -> Mac {
        let mut h = self.file_hasher(LABEL_RECORD, id, name);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
        *h.finalize().as_bytes()
    }

    fn extent_mac(&self, id: &DumpId, name: &str, offset: u64, bytes: &[u8]) -> Mac {
        let mut h = self.file_hasher(LABEL_EXTENT, id, name);
        h.update(&offset.to_le_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
        *h.finalize().as_bytes()
    }

    fn raw_file_mac(
        &self,
        id: &DumpId,
        name: &str,
        file_len: u64,
        header_block: &[u8],
        extents: &[ExtentAuth],
    ) -> Mac {
        let mut h = self.file_hasher(LABEL_RAW_FILE, id, name);
        h.update(&file_len.to_le_bytes());
        h.update(header_block);
        h.update(&(extents.len() as u64).to_le_bytes());
        for e in extents {
            h.update(&e.len.to_le_bytes());
            h.update(&e.mac);
        }
        *h.finalize().as_bytes()
    }

    fn manifest_mac(&self, encoded: &[u8]) -> Mac {
        let mut h = self.hasher(LABEL_MANIFEST);
        h.update(encoded);
        *h.finalize().as_bytes()
    }
}

impl std::fmt::Debug for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImageKey(..)")
    }
}

/// Compares two MACs in constant time.
fn same_mac(a: &Mac, b: &Mac) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

/// `auth.img`: what one dump wrote, each file with its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Random, drawn when the dump started; part of every MAC of its files.
    pub dump_id: DumpId,
    /// Every file the dump wrote except `auth.img`, sorted by name.
    pub files: Vec<FileAuth>,
}

/// One file of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAuth {
    pub name: String,
    /// Its [`RecordKind`], as in its header.
    pub kind: u32,
    /// Its size in bytes (header included).
    pub len: u64,
    /// The MAC of the whole file (see the module documentation).
    pub mac: Mac,
    /// Raw data files: the extents the payload is cut into, in order, from payload offset 0;
    /// together exactly the payload. Empty for records.
    pub extents: Vec<ExtentAuth>,
}

/// One extent of a raw data file: `len` bytes, with their MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentAuth {
    pub len: u64,
    pub mac: Mac,
}

/// The payload of `auth.img`: the manifest's encoding and its MAC.
#[derive(Debug, Serialize, Deserialize)]
struct SealedManifest {
    manifest: Vec<u8>,
    mac: Mac,
}

fn not_authenticated(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::NotAuthenticated {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn kind_of(kind: u32) -> Option<RecordKind> {
    [
        RecordKind::Inventory,
        RecordKind::Process,
        RecordKind::Pages,
        RecordKind::Blob,
    ]
    .into_iter()
    .find(|k| *k as u32 == kind)
}

fn is_raw(kind: RecordKind) -> bool {
    matches!(kind, RecordKind::Pages | RecordKind::Blob)
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// The sealing state of an [`ImageDir`] that writes a dump: the key, the dump's id and the
/// files written so far.
#[derive(Debug)]
pub(crate) struct Sealer {
    key: ImageKey,
    dump_id: DumpId,
    files: Mutex<Vec<FileAuth>>,
}

impl Sealer {
    /// A new dump, with a fresh random id.
    pub(crate) fn new(key: &ImageKey) -> std::io::Result<Sealer> {
        let mut dump_id = [0u8; DUMP_ID_LEN];
        stasis_sys::random::fill(&mut dump_id)?;
        Ok(Sealer {
            key: key.clone(),
            dump_id,
            files: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn key(&self) -> &ImageKey {
        &self.key
    }

    pub(crate) fn dump_id(&self) -> &DumpId {
        &self.dump_id
    }

    fn add(&self, entry: FileAuth) {
        // A panic while the lock is held cannot leave the list half-changed: keep going.
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.retain(|f| f.name != entry.name);
        files.push(entry);
    }

    /// Notes record file `name`, whose whole contents are `bytes`.
    pub(crate) fn add_record(&self, name: &str, kind: RecordKind, bytes: &[u8]) {
        self.add(FileAuth {
            name: name.to_string(),
            kind: kind as u32,
            len: bytes.len() as u64,
            mac: self.key.record_mac(&self.dump_id, name, bytes),
            extents: Vec::new(),
        });
    }

    /// Notes raw file `name` of `file_len` bytes, with its header block and extents.
    pub(crate) fn add_raw(
        &self,
        name: &str,
        kind: RecordKind,
        file_len: u64,
        header_block: &[u8],
        extents: Vec<ExtentAuth>,
    ) {
        let mac = self
            .key
            .raw_file_mac(&self.dump_id, name, file_len, header_block, &extents);
        self.add(FileAuth {
            name: name.to_string(),
            kind: kind as u32,
            len: file_len,
            mac,
            extents,
        });
    }

    /// The contents of `auth.img` for the files noted so far.
    pub(crate) fn encode_manifest(&self, dir: &ImageDir) -> Result<Vec<u8>, ImageError> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner()).clone();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        seal_manifest(
            &self.key,
            &Manifest {
                dump_id: self.dump_id,
                files,
            },
            dir,
        )
    }
}

/// Encodes `manifest` with its MAC as the contents of `auth.img`.
fn seal_manifest(
    key: &ImageKey,
    manifest: &Manifest,
    dir: &ImageDir,
) -> Result<Vec<u8>, ImageError> {
    let path = dir.path_of(names::AUTH);
    let encoded = postcard::to_stdvec(manifest).map_err(|e| ImageError::Encode {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let sealed = SealedManifest {
        mac: key.manifest_mac(&encoded),
        manifest: encoded,
    };
    encode_record(RecordKind::Auth, &sealed, &path)
}

/// What a [`RawWriter`](crate::RawWriter) of a sealing directory keeps: the MAC of each extent
/// it wrote.
#[derive(Debug)]
pub(crate) struct RawSeal {
    sealer: std::sync::Arc<Sealer>,
    name: String,
    extents: Vec<ExtentAuth>,
}

impl RawSeal {
    pub(crate) fn new(sealer: std::sync::Arc<Sealer>, name: &str) -> RawSeal {
        RawSeal {
            sealer,
            name: name.to_string(),
            extents: Vec::new(),
        }
    }

    /// `data` is appended at payload offset `offset`: one extent, or several of at most
    /// [`MAX_EXTENT_LEN`].
    pub(crate) fn append(&mut self, offset: u64, data: &[u8]) {
        let mut at = 0usize;
        for piece in data.chunks(MAX_EXTENT_LEN as usize) {
            let mac = self.sealer.key().extent_mac(
                self.sealer.dump_id(),
                &self.name,
                offset + at as u64,
                piece,
            );
            self.extents.push(ExtentAuth {
                len: piece.len() as u64,
                mac,
            });
            at += piece.len();
        }
    }

    /// The file is complete: `header_block` holds its first [`RAW_DATA_OFFSET`] bytes.
    pub(crate) fn finish(self, kind: RecordKind, payload_len: u64, header_block: &[u8]) {
        self.sealer.add_raw(
            &self.name,
            kind,
            RAW_DATA_OFFSET + payload_len,
            header_block,
            self.extents,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// The verifying state of an [`ImageDir`] whose `auth.img` was checked: the key and the
/// manifest.
#[derive(Debug)]
pub(crate) struct Verifier {
    key: ImageKey,
    manifest: Manifest,
}

impl Verifier {
    /// Reads and checks `auth.img` of `dir`; `Ok(None)` when there is none.
    pub(crate) fn load(dir: &ImageDir, key: &ImageKey) -> Result<Option<Verifier>, ImageError> {
        let path = dir.path_of(names::AUTH);
        let bytes = match crate::frame::read_record_bytes(dir, names::AUTH, RecordKind::Auth) {
            Ok(b) => b,
            Err(ImageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let sealed: SealedManifest = decode_record(RecordKind::Auth, &bytes, &path)?;
        if !same_mac(&key.manifest_mac(&sealed.manifest), &sealed.mac) {
            return Err(not_authenticated(
                &path,
                "its MAC does not match: it was written with another image key (another \
                 machine's, or one since replaced), or modified",
            ));
        }
        let manifest: Manifest = crate::budget::decode(
            &sealed.manifest,
            crate::budget::DECODE_BUDGET,
            &path,
            "manifest",
        )?;
        check_manifest(&manifest, &path)?;
        Ok(Some(Verifier {
            key: key.clone(),
            manifest,
        }))
    }

    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The entry of `name`, which must be listed with kind `kind`.
    fn entry(&self, name: &str, kind: RecordKind, path: &Path) -> Result<&FileAuth, ImageError> {
        let f = self
            .manifest
            .files
            .binary_search_by(|f| f.name.as_str().cmp(name))
            .map(|i| &self.manifest.files[i])
            .map_err(|_| not_authenticated(path, "not listed in auth.img"))?;
        if f.kind != kind as u32 {
            return Err(not_authenticated(
                path,
                format!(
                    "auth.img lists it as kind {}, it is read as a {}",
                    f.kind,
                    kind.name()
                ),
            ));
        }
        Ok(f)
    }

    /// The error for a listed file that could not be opened: one that is gone is not
    /// authenticated (a dump is complete only with every file it listed).
    pub(crate) fn open_failed(&self, e: ImageError, path: &Path) -> ImageError {
        match e {
            ImageError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                not_authenticated(path, "listed in auth.img, but missing")
            }
            e => e,
        }
    }

    /// Before a file is opened: it must be listed.
    pub(crate) fn check_listed(
        &self,
        name: &str,
        kind: RecordKind,
        path: &Path,
    ) -> Result<(), ImageError> {
        self.entry(name, kind, path).map(drop)
    }

    /// The file's size (fstat) must be the listed one.
    pub(crate) fn check_size(
        &self,
        name: &str,
        kind: RecordKind,
        size: u64,
        path: &Path,
    ) -> Result<(), ImageError> {
        let f = self.entry(name, kind, path)?;
        if f.len != size {
            return Err(not_authenticated(
                path,
                format!("holds {size} bytes, auth.img says {}", f.len),
            ));
        }
        Ok(())
    }

    /// `bytes`, the whole record file as read into memory, must have the listed length and MAC.
    pub(crate) fn check_record(
        &self,
        name: &str,
        kind: RecordKind,
        bytes: &[u8],
        path: &Path,
    ) -> Result<(), ImageError> {
        self.check_size(name, kind, bytes.len() as u64, path)?;
        let f = self.entry(name, kind, path)?;
        let mac = self.key.record_mac(&self.manifest.dump_id, name, bytes);
        if !same_mac(&mac, &f.mac) {
            return Err(not_authenticated(
                path,
                "its MAC does not match: modified since it was written, or from another dump",
            ));
        }
        Ok(())
    }

    /// Raw file `name` of `size` bytes whose first [`RAW_DATA_OFFSET`] bytes are
    /// `header_block`: checks size and MAC, and returns what its reader checks extents with.
    pub(crate) fn raw(
        &self,
        name: &str,
        kind: RecordKind,
        size: u64,
        header_block: &[u8],
        path: &Path,
    ) -> Result<RawAuth, ImageError> {
        self.check_size(name, kind, size, path)?;
        let f = self.entry(name, kind, path)?;
        let mac = self.key.raw_file_mac(
            &self.manifest.dump_id,
            name,
            f.len,
            header_block,
            &f.extents,
        );
        if !same_mac(&mac, &f.mac) {
            return Err(not_authenticated(
                path,
                "the MAC of its header does not match: modified since it was written, or from \
                 another dump",
            ));
        }
        let mut starts = Vec::with_capacity(f.extents.len());
        let mut at = 0u64;
        for e in &f.extents {
            starts.push(at);
            at += e.len; // bounded: check_manifest summed them to the payload length
        }
        Ok(RawAuth {
            key: self.key.clone(),
            dump_id: self.manifest.dump_id,
            name: name.to_string(),
            starts,
            extents: f.extents.clone(),
            last_part: std::sync::Mutex::new((usize::MAX, Vec::new())),
        })
    }
}

/// Checks the shape of a manifest whose MAC is valid (defence in depth: the readers rely on it).
fn check_manifest(m: &Manifest, path: &Path) -> Result<(), ImageError> {
    let bad = |why: String| ImageError::Invalid {
        path: path.to_path_buf(),
        reason: why,
    };
    for (i, f) in m.files.iter().enumerate() {
        let plain = !f.name.is_empty()
            && f.name.len() <= 255
            && !f.name.contains('/')
            && !f.name.contains('\0')
            && f.name != "."
            && f.name != ".."
            && f.name != names::AUTH;
        if !plain {
            return Err(bad(format!("file name {:?} is not allowed", f.name)));
        }
        if i > 0 && m.files[i - 1].name >= f.name {
            return Err(bad(format!(
                "file names are not sorted and unique at {:?}",
                f.name
            )));
        }
        let Some(kind) = kind_of(f.kind) else {
            return Err(bad(format!("{}: unknown kind {}", f.name, f.kind)));
        };
        if is_raw(kind) {
            let mut sum = 0u64;
            for e in &f.extents {
                if e.len == 0 || e.len > MAX_EXTENT_LEN {
                    return Err(bad(format!("{}: extent of {} bytes", f.name, e.len)));
                }
                sum = sum
                    .checked_add(e.len)
                    .ok_or_else(|| bad(format!("{}: extents overflow", f.name)))?;
            }
            if f.len.checked_sub(RAW_DATA_OFFSET) != Some(sum) {
                return Err(bad(format!(
                    "{}: extents of {sum} bytes in a file of {} bytes",
                    f.name, f.len
                )));
            }
        } else if !f.extents.is_empty()
            || f.len < HEADER_LEN as u64
            || f.len > HEADER_LEN as u64 + MAX_RECORD_LEN
        {
            return Err(bad(format!(
                "{}: record of {} bytes with {} extents",
                f.name,
                f.len,
                f.extents.len()
            )));
        }
    }
    Ok(())
}

/// What an authenticated [`RawReader`](crate::RawReader) checks its reads with.
#[derive(Debug)]
pub(crate) struct RawAuth {
    key: ImageKey,
    dump_id: DumpId,
    name: String,
    /// Payload offset of each extent.
    starts: Vec<u64>,
    extents: Vec<ExtentAuth>,
    /// The last extent read in part, checked, kept in memory (its index, its bytes), so that
    /// reads of several parts of one extent (the runs of an incremental dump that refer to
    /// parts of a parent's run) read and check it once.
    last_part: std::sync::Mutex<(usize, Vec<u8>)>,
}

impl RawAuth {
    fn check(&self, i: usize, bytes: &[u8], path: &Path) -> Result<(), ImageError> {
        let mac = self
            .key
            .extent_mac(&self.dump_id, &self.name, self.starts[i], bytes);
        if !same_mac(&mac, &self.extents[i].mac) {
            return Err(not_authenticated(
                path,
                format!(
                    "payload bytes {}..{} do not match their MAC: modified since they were \
                     written, or from another dump",
                    self.starts[i],
                    self.starts[i] + bytes.len() as u64
                ),
            ));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at payload offset `offset` (inside the payload: the caller
    /// checked) from `file`, and checks every extent they touch before returning. Whole
    /// extents are read into `buf` and checked there; an extent the read covers only in part
    /// is read whole into a buffer of its own (at most [`MAX_EXTENT_LEN`]) and checked there,
    /// then the part asked for is copied.
    pub(crate) fn read(
        &self,
        file: &File,
        offset: u64,
        buf: &mut [u8],
        path: &Path,
    ) -> Result<(), ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let end = offset + buf.len() as u64;
        // The extent holding `offset`: the last one starting at or before it.
        let mut i = self
            .starts
            .partition_point(|&s| s <= offset)
            .wrapping_sub(1);
        let mut pos = offset;
        while pos < end {
            let (start, len) = match (self.starts.get(i), self.extents.get(i)) {
                (Some(&s), Some(e)) => (s, e.len),
                _ => {
                    return Err(ImageError::Invalid {
                        path: path.to_path_buf(),
                        reason: format!("read at {pos} lies outside the authenticated extents"),
                    })
                }
            };
            let ext_end = start + len;
            let at = (pos - offset) as usize;
            if start == pos && ext_end <= end {
                let dst = &mut buf[at..at + len as usize];
                file.read_exact_at(dst, RAW_DATA_OFFSET + start)
                    .map_err(io)?;
                self.check(i, dst, path)?;
            } else {
                let mut last = self
                    .last_part
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (index, scratch) = &mut *last;
                if *index != i {
                    *index = usize::MAX;
                    scratch.resize(len as usize, 0);
                    file.read_exact_at(scratch, RAW_DATA_OFFSET + start)
                        .map_err(io)?;
                    self.check(i, scratch, path)?;
                    *index = i;
                }
                let upto = ext_end.min(end);
                let from = (pos - start) as usize;
                let n = (upto - pos) as usize;
                buf[at..at + n].copy_from_slice(&scratch[from..from + n]);
            }
            pos = ext_end.min(end);
            i += 1;
        }
        Ok(())
    }

    /// Reads and checks every extent of `file`.
    fn verify_all(&self, file: &File, path: &Path) -> Result<(), ImageError> {
        let mut buf = Vec::new();
        for (i, e) in self.extents.iter().enumerate() {
            buf.resize(e.len as usize, 0);
            file.read_exact_at(&mut buf, RAW_DATA_OFFSET + self.starts[i])
                .map_err(|source| ImageError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            self.check(i, &buf, path)?;
        }
        Ok(())
    }
}

/// Whether `name` in an images directory is an image file (`*.img`, not hidden).
fn is_image_name(name: &str) -> bool {
    name.ends_with(".img") && !name.starts_with('.')
}

/// The full check of an authenticated directory (one read of every byte): every file listed
/// in `auth.img` is there with its length and MAC (raw files extent by extent), and no other
/// image file (`*.img`) is in the directory. `dir` must have been authenticated
/// ([`ImageDir::authenticate`]).
///
/// It proves what the files held while it ran: a user who owns them can change them
/// afterwards. Restores check what they use as they read it, whatever this said.
pub fn verify_all(dir: &ImageDir) -> Result<(), ImageError> {
    let Some(v) = dir.verifier() else {
        return Err(not_authenticated(
            &dir.path_of(names::AUTH),
            "the directory was not authenticated with a key",
        ));
    };
    for f in &v.manifest().files {
        let path = dir.path_of(&f.name);
        let kind = kind_of(f.kind).ok_or_else(|| ImageError::Invalid {
            path: path.clone(),
            reason: format!("unknown kind {}", f.kind),
        })?;
        if is_raw(kind) {
            crate::RawReader::open(dir, &f.name, kind)?.verify_all()?;
        } else {
            crate::frame::read_record_bytes(dir, &f.name, kind)?;
        }
    }
    let listed = |n: &str| {
        v.manifest()
            .files
            .binary_search_by(|f| f.name.as_str().cmp(n))
            .is_ok()
    };
    let mut names = dir.file_names()?;
    names.sort();
    for n in names {
        if is_image_name(&n) && n != names::AUTH && !listed(&n) {
            return Err(not_authenticated(
                &dir.path_of(&n),
                "an image file that auth.img does not list",
            ));
        }
    }
    Ok(())
}

impl crate::RawReader {
    /// Reads and checks every extent of an authenticated raw file (a no-op without
    /// authentication).
    pub(crate) fn verify_all(&self) -> Result<(), ImageError> {
        match self.auth() {
            Some(a) => a.verify_all(self.file(), self.path()),
            None => Ok(()),
        }
    }
}

/// Authenticates again, with `key`, every file `auth.img` of `dir` lists, as the files are
/// now: the dump id and the extent boundaries stay, lengths and MACs are recomputed, and
/// `auth.img` is replaced. For tools and tests that change images on purpose and vouch for
/// the result; only a holder of the key (root) can. Nothing is verified first.
pub fn reseal(dir: &ImageDir, key: &ImageKey) -> Result<(), ImageError> {
    let path = dir.path_of(names::AUTH);
    let bytes = crate::frame::read_record_bytes(dir, names::AUTH, RecordKind::Auth)?;
    let sealed: SealedManifest = decode_record(RecordKind::Auth, &bytes, &path)?;
    let mut manifest: Manifest = crate::budget::decode(
        &sealed.manifest,
        crate::budget::DECODE_BUDGET,
        &path,
        "manifest",
    )?;
    check_manifest(&manifest, &path)?;
    let id = manifest.dump_id;
    for f in &mut manifest.files {
        let fpath = dir.path_of(&f.name);
        let io = |source| ImageError::Io {
            path: fpath.clone(),
            source,
        };
        let (mut file, size) = dir.open_regular(&f.name)?;
        let kind = kind_of(f.kind).ok_or_else(|| ImageError::Invalid {
            path: fpath.clone(),
            reason: format!("unknown kind {}", f.kind),
        })?;
        if is_raw(kind) {
            let payload: u64 = f.extents.iter().map(|e| e.len).sum();
            if size != RAW_DATA_OFFSET + payload {
                return Err(ImageError::Invalid {
                    path: fpath,
                    reason: format!(
                        "holds {size} bytes; its extents need {}",
                        RAW_DATA_OFFSET + payload
                    ),
                });
            }
            let mut block = vec![0u8; RAW_DATA_OFFSET as usize];
            file.read_exact_at(&mut block, 0).map_err(io)?;
            let mut at = 0u64;
            let mut buf = Vec::new();
            for e in &mut f.extents {
                buf.resize(e.len as usize, 0);
                file.read_exact_at(&mut buf, RAW_DATA_OFFSET + at)
                    .map_err(io)?;
                e.mac = key.extent_mac(&id, &f.name, at, &buf);
                at += e.len;
            }
            f.mac = key.raw_file_mac(&id, &f.name, size, &block, &f.extents);
        } else {
            if size > HEADER_LEN as u64 + MAX_RECORD_LEN {
                return Err(ImageError::TooLarge {
                    path: fpath,
                    len: size,
                    limit: MAX_RECORD_LEN,
                });
            }
            let mut all = vec![0u8; size as usize];
            let n = read_up_to(&mut file, &mut all).map_err(io)?;
            all.truncate(n);
            f.len = all.len() as u64;
            f.mac = key.record_mac(&id, &f.name, &all);
        }
    }
    let out = seal_manifest(key, &manifest, dir)?;
    crate::frame::write_bytes_atomic(dir, names::AUTH, &out)
}
