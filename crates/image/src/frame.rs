//! The common 32-byte header and postcard-encoded metadata records.

use crate::{ImageDir, ImageError};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};
use std::path::Path;

/// First 8 bytes of every image file.
pub const MAGIC: [u8; 8] = *b"STASISIM";
/// The version of the image format (not of the tool). Bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 6;
/// Size of the header that starts every image file.
pub const HEADER_LEN: usize = 32;
/// Largest metadata record we agree to decode (raw data files are not bounded by this).
pub const MAX_RECORD_LEN: u64 = 64 << 20;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordKind {
    Inventory = 1,
    Process = 2,
    Pages = 3,
    Blob = 4,
    /// `auth.img`: the manifest of an authenticated dump (see [`crate::auth`]).
    Auth = 5,
}

impl RecordKind {
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Inventory => "inventory",
            RecordKind::Process => "process",
            RecordKind::Pages => "pages",
            RecordKind::Blob => "blob",
            RecordKind::Auth => "auth",
        }
    }
}

/// The header of every image file. Little-endian on disk:
/// `magic[8] version:u32 kind:u32 payload_len:u64 payload_crc:u32 header_crc:u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub kind: u32,
    pub payload_len: u64,
    pub payload_crc: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.kind.to_le_bytes());
        b[16..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header: magic, header CRC, version and kind.
    pub fn decode(bytes: &[u8], expected: RecordKind, path: &Path) -> Result<Header, ImageError> {
        let p = || path.to_path_buf();
        if bytes.len() < HEADER_LEN {
            return Err(ImageError::Truncated {
                path: p(),
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        }
        if bytes[0..8] != MAGIC {
            return Err(ImageError::BadMagic { path: p() });
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        if crc32c::crc32c(&bytes[0..28]) != u32_at(28) {
            return Err(ImageError::BadHeaderCrc { path: p() });
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(ImageError::BadVersion {
                path: p(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let kind = u32_at(12);
        if kind != expected as u32 {
            return Err(ImageError::WrongKind {
                path: p(),
                expected: expected.name(),
                found: kind,
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[16..24]);
        Ok(Header {
            version,
            kind,
            payload_len: u64::from_le_bytes(len),
            payload_crc: u32_at(24),
        })
    }
}

/// Encodes a metadata record (header + postcard payload) into bytes.
pub fn encode_record<T: Serialize>(
    kind: RecordKind,
    value: &T,
    path: &Path,
) -> Result<Vec<u8>, ImageError> {
    let payload = postcard::to_stdvec(value).map_err(|e| ImageError::Encode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if payload.len() as u64 > MAX_RECORD_LEN {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            len: payload.len() as u64,
            limit: MAX_RECORD_LEN,
        });
    }
    let header = Header {
        version: FORMAT_VERSION,
        kind: kind as u32,
        payload_len: payload.len() as u64,
        payload_crc: crc32c::crc32c(&payload),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes a metadata record from the whole contents of a file, checking everything.
pub fn decode_record<T: DeserializeOwned>(
    kind: RecordKind,
    bytes: &[u8],
    path: &Path,
) -> Result<T, ImageError> {
    let header = Header::decode(bytes, kind, path)?;
    if header.payload_len > MAX_RECORD_LEN {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            len: header.payload_len,
            limit: MAX_RECORD_LEN,
        });
    }
    let expected = HEADER_LEN as u64 + header.payload_len;
    if (bytes.len() as u64) < expected {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: bytes.len() as u64,
        });
    }
    if (bytes.len() as u64) > expected {
        return Err(ImageError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "{} trailing bytes after the record",
                bytes.len() as u64 - expected
            ),
        });
    }
    let payload = &bytes[HEADER_LEN..];
    if crc32c::crc32c(payload) != header.payload_crc {
        return Err(ImageError::BadPayloadCrc {
            path: path.to_path_buf(),
        });
    }
    crate::budget::decode(payload, crate::budget::DECODE_BUDGET, path, "payload")
}

/// Reads and decodes a metadata record from `name` in `dir`.
///
/// The file is opened without blocking and must be a regular file (see [`ImageDir`]). Before
/// anything is allocated, its size (fstat) is checked against the limit and against the length
/// its header declares: a record over [`MAX_RECORD_LEN`], a header claiming more bytes than the
/// file holds ([`ImageError::Truncated`]) or fewer (trailing bytes, [`ImageError::Invalid`]) is
/// refused. The one buffer allocated is the record itself, at most `HEADER_LEN +
/// MAX_RECORD_LEN` bytes and never more than the file holds; it is filled in chunks of
/// [`READ_CHUNK`](crate::READ_CHUNK) bytes.
///
/// In an authenticated directory ([`ImageDir::authenticate`]) the file must be listed in
/// `auth.img` (checked before it is opened), have the listed size, and the bytes read must
/// have the listed MAC; they are checked in memory and then decoded from there
/// ([`ImageError::NotAuthenticated`] otherwise).
pub fn read_record<T: DeserializeOwned>(
    dir: &ImageDir,
    name: &str,
    kind: RecordKind,
) -> Result<T, ImageError> {
    let bytes = read_record_bytes(dir, name, kind)?;
    decode_record(kind, &bytes, &dir.path_of(name))
}

/// The whole file of record `name` (header and payload), read and checked as
/// [`read_record`] does, not decoded.
pub(crate) fn read_record_bytes(
    dir: &ImageDir,
    name: &str,
    kind: RecordKind,
) -> Result<Vec<u8>, ImageError> {
    let path = dir.path_of(name);
    let io = |source| ImageError::Io {
        path: path.clone(),
        source,
    };
    let verifier = dir.verifier();
    if let Some(v) = verifier {
        v.check_listed(name, kind, &path)?;
    }
    let (mut file, size) = dir.open_regular(name).map_err(|e| match verifier {
        Some(v) => v.open_failed(e, &path),
        None => e,
    })?;
    if size > MAX_RECORD_LEN + HEADER_LEN as u64 {
        return Err(ImageError::TooLarge {
            path,
            len: size,
            limit: MAX_RECORD_LEN,
        });
    }
    let mut hdr = [0u8; HEADER_LEN];
    let n = read_up_to(&mut file, &mut hdr).map_err(io)?;
    let header = Header::decode(&hdr[..n], kind, &path)?;
    if header.payload_len > MAX_RECORD_LEN {
        return Err(ImageError::TooLarge {
            path,
            len: header.payload_len,
            limit: MAX_RECORD_LEN,
        });
    }
    let expected = HEADER_LEN as u64 + header.payload_len;
    if size < expected {
        return Err(ImageError::Truncated {
            path,
            expected,
            found: size,
        });
    }
    if size > expected {
        return Err(ImageError::Invalid {
            path,
            reason: format!("{} trailing bytes after the record", size - expected),
        });
    }
    if let Some(v) = verifier {
        v.check_size(name, kind, size, &path)?;
    }
    // Both bounded above: expected <= HEADER_LEN + MAX_RECORD_LEN, and == the file's size.
    let mut bytes = vec![0u8; expected as usize];
    bytes[..HEADER_LEN].copy_from_slice(&hdr);
    let mut done = HEADER_LEN;
    while done < bytes.len() {
        let end = bytes.len().min(done + crate::READ_CHUNK);
        match file.read(&mut bytes[done..end]) {
            Ok(0) => {
                // The file shrank after the fstat.
                return Err(ImageError::Truncated {
                    path,
                    expected,
                    found: done as u64,
                });
            }
            Ok(k) => done += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    if let Some(v) = verifier {
        // The very bytes that are decoded next: rewriting the file now changes nothing.
        v.check_record(name, kind, &bytes, &path)?;
    }
    Ok(bytes)
}

/// Reads until `buf` is full or the end of the file; returns how many bytes were read.
pub(crate) fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes a metadata record as `name` in `dir` atomically: a temporary file, fsync, rename. A
/// crash leaves either no file or the complete new one, never a half-written one.
///
/// In a sealing directory ([`ImageDir::seal`]) the record's MAC is noted; writing the
/// inventory (the last file of a dump) first writes `auth.img`, the manifest of every file
/// noted, the inventory included, so that the inventory stays the last file written.
pub fn write_record_atomic<T: Serialize>(
    dir: &ImageDir,
    name: &str,
    kind: RecordKind,
    value: &T,
) -> Result<(), ImageError> {
    if kind == RecordKind::Inventory && dir.sealer().is_some() {
        debug_assert_eq!(name, crate::names::INVENTORY);
        // `auth.img` and the inventory, both durable before the inventory is in place (synced
        // together: the first fsync commits both, on most filesystems).
        let staged = stage_inventory(dir, value)?;
        return match dir.sync_files(staged.files()) {
            Ok(()) => staged.commit(dir),
            Err(e) => {
                staged.discard(dir);
                Err(e)
            }
        };
    }
    let path = dir.path_of(name);
    let bytes = encode_record(kind, value, &path)?;
    if let Some(sealer) = dir.sealer() {
        sealer.add_record(name, kind, &bytes);
    }
    write_bytes_atomic(dir, name, &bytes)
}

/// An inventory written under a temporary name, not yet durable nor in place: a dump stages
/// it ([`stage_inventory`]) before it syncs its files, syncs it with them ([`Staged::files`]:
/// one round of fsyncs for all, instead of one more for the inventory), then puts it in place
/// ([`Staged::commit`]) and syncs the directory. A crash before the commit leaves no
/// inventory: the dump is not complete.
#[must_use = "a staged inventory is not in place until committed"]
pub struct Staged {
    tmp: String,
    files: Vec<String>,
}

impl Staged {
    /// The files to make durable before [`Staged::commit`]: the temporary inventory, and in a
    /// sealing directory `auth.img` (already in place: without the inventory it means
    /// nothing).
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Renames the inventory into place (the caller then syncs the directory).
    pub fn commit(self, dir: &ImageDir) -> Result<(), ImageError> {
        dir.rename(&self.tmp, crate::names::INVENTORY)
    }

    /// Removes what [`stage_inventory`] wrote (after a failure).
    fn discard(self, dir: &ImageDir) {
        for f in &self.files {
            let _ = dir.remove(f);
        }
    }
}

/// Writes `value` as the inventory of `dir`, staged (see [`Staged`]). In a sealing directory
/// `auth.img`, the manifest of every file noted (the inventory included), is written first.
/// On failure nothing of it is left.
pub fn stage_inventory<T: Serialize>(dir: &ImageDir, value: &T) -> Result<Staged, ImageError> {
    let name = crate::names::INVENTORY;
    let kind = RecordKind::Inventory;
    let path = dir.path_of(name);
    let bytes = encode_record(kind, value, &path)?;
    let mut files = Vec::new();
    if let Some(sealer) = dir.sealer() {
        sealer.add_record(name, kind, &bytes);
        let manifest = sealer.encode_manifest(dir)?;
        write_bytes_replacing(dir, crate::names::AUTH, &manifest, false)?;
        files.push(crate::names::AUTH.to_string());
    }
    let tmp = match write_temporary(dir, name, &bytes, false) {
        Ok(tmp) => tmp,
        Err(e) => {
            if !files.is_empty() {
                let _ = dir.remove(crate::names::AUTH);
            }
            return Err(e);
        }
    };
    files.push(tmp.clone());
    Ok(Staged { tmp, files })
}

/// Like [`write_record_atomic`] (a temporary file renamed into place, its MAC noted in a
/// sealing directory), but without the fsync: for the records of a dump, which fsyncs every
/// file it wrote before it writes the inventory (the only record whose presence means
/// anything), so that one fsync per file is enough. Not for the inventory.
pub fn write_record_unsynced<T: Serialize>(
    dir: &ImageDir,
    name: &str,
    kind: RecordKind,
    value: &T,
) -> Result<(), ImageError> {
    let path = dir.path_of(name);
    if kind == RecordKind::Inventory {
        return Err(ImageError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the inventory is always written with write_record_atomic",
            ),
        });
    }
    let bytes = encode_record(kind, value, &path)?;
    if let Some(sealer) = dir.sealer() {
        sealer.add_record(name, kind, &bytes);
    }
    write_bytes_replacing(dir, name, &bytes, false)
}

/// Writes `bytes` as `name` in `dir` atomically (see [`write_record_atomic`]).
pub(crate) fn write_bytes_atomic(
    dir: &ImageDir,
    name: &str,
    bytes: &[u8],
) -> Result<(), ImageError> {
    write_bytes_replacing(dir, name, bytes, true)
}

/// Writes `bytes` into a temporary file, fsynced when `sync`, renamed to `name`.
fn write_bytes_replacing(
    dir: &ImageDir,
    name: &str,
    bytes: &[u8],
    sync: bool,
) -> Result<(), ImageError> {
    let tmp = write_temporary(dir, name, bytes, sync)?;
    dir.rename(&tmp, name)
}

/// Writes `bytes` into the temporary file of `name` (`.NAME.tmp`), fsynced when `sync`, and
/// returns its name; nothing is left on failure.
fn write_temporary(
    dir: &ImageDir,
    name: &str,
    bytes: &[u8],
    sync: bool,
) -> Result<String, ImageError> {
    let path = dir.path_of(name);
    let tmp = format!(".{name}.tmp");
    let io = |source| ImageError::Io {
        path: path.clone(),
        source,
    };
    let mut f = dir.create_file(&tmp)?;
    let written = f.write_all(bytes).and_then(|_| {
        if sync {
            f.sync_all()
        } else {
            // Synced later with the others (`ImageDir::sync_files`): the disk can start now.
            crate::dir::start_writeback(&f);
            Ok(())
        }
    });
    if let Err(e) = written {
        let _ = dir.remove(&tmp);
        return Err(io(e));
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn p() -> PathBuf {
        PathBuf::from("test.img")
    }

    #[test]
    fn round_trip() {
        let v = (1u32, String::from("hello"), vec![1u64, 2, 3]);
        let b = encode_record(RecordKind::Process, &v, &p()).unwrap();
        let back: (u32, String, Vec<u64>) = decode_record(RecordKind::Process, &b, &p()).unwrap();
        assert_eq!(v, back);
    }

    #[test]
    fn rejects_bad_magic_crc_version_kind_truncation() {
        let v = vec![7u8; 100];
        let good = encode_record(RecordKind::Process, &v, &p()).unwrap();

        let mut b = good.clone();
        b[0] ^= 1;
        assert!(matches!(
            decode_record::<Vec<u8>>(RecordKind::Process, &b, &p()),
            Err(ImageError::BadMagic { .. })
        ));

        let mut b = good.clone();
        b[9] ^= 1;
        assert!(matches!(
            decode_record::<Vec<u8>>(RecordKind::Process, &b, &p()),
            Err(ImageError::BadHeaderCrc { .. })
        ));

        let mut b = good.clone();
        b[HEADER_LEN + 10] ^= 1;
        assert!(matches!(
            decode_record::<Vec<u8>>(RecordKind::Process, &b, &p()),
            Err(ImageError::BadPayloadCrc { .. })
        ));

        // A version bump with a consistent header CRC must still be refused.
        let h = Header {
            version: FORMAT_VERSION + 1,
            kind: RecordKind::Process as u32,
            payload_len: 1,
            payload_crc: 0,
        };
        let mut b = h.encode().to_vec();
        b.push(0);
        assert!(
            matches!(decode_record::<Vec<u8>>(RecordKind::Process, &b, &p()), Err(ImageError::BadVersion { found, .. }) if found == FORMAT_VERSION + 1)
        );

        assert!(matches!(
            decode_record::<Vec<u8>>(RecordKind::Inventory, &good, &p()),
            Err(ImageError::WrongKind { .. })
        ));

        for cut in [0, 5, HEADER_LEN - 1, HEADER_LEN, good.len() - 1] {
            assert!(
                matches!(
                    decode_record::<Vec<u8>>(RecordKind::Process, &good[..cut], &p()),
                    Err(ImageError::Truncated { .. })
                ),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let h = Header {
            version: FORMAT_VERSION,
            kind: RecordKind::Process as u32,
            payload_len: u64::MAX,
            payload_crc: 0,
        };
        let b = h.encode();
        assert!(matches!(
            decode_record::<Vec<u8>>(RecordKind::Process, &b, &p()),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn hostile_vector_length_in_payload_is_an_error() {
        // postcard varint for a huge Vec length followed by nothing.
        let payload = [0xff, 0xff, 0xff, 0xff, 0x0f];
        let h = Header {
            version: FORMAT_VERSION,
            kind: RecordKind::Process as u32,
            payload_len: payload.len() as u64,
            payload_crc: crc32c::crc32c(&payload),
        };
        let mut b = h.encode().to_vec();
        b.extend_from_slice(&payload);
        assert!(matches!(
            decode_record::<Vec<u64>>(RecordKind::Process, &b, &p()),
            Err(ImageError::Decode { .. })
        ));
    }
}
