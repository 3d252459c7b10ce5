//! Targets of the image format: each record decoder with its checks, the raw data readers,
//! the authentication manifest and the whole directory loader.

use crate::scratch::Scratch;
use serde::{de::DeserializeOwned, Serialize};
use stasis_image::auth::{
    self, ExtentAuth, FileAuth, Manifest, KEY_CONTEXT, MAX_EXTENT_LEN, SECRET_LEN,
};
use stasis_image::{
    decode_record, encode_record, names, read_record, validate_process, Header, ImageDir, ImageKey,
    Inventory, ProcessImage, RawReader, RecordKind, FORMAT_VERSION, HEADER_LEN, RAW_DATA_OFFSET,
};
use std::io::Read;
use std::path::Path;

/// The secret of the image key the targets authenticate with.
pub const SECRET: [u8; SECRET_LEN] = [0x5a; SECRET_LEN];

/// The image key of [`SECRET`].
pub fn key() -> ImageKey {
    ImageKey::from_secret(&SECRET)
}

/// The contents of a record file for `rest`: as given when bit 0 of `mode` is set (so headers
/// are fuzzed too), else `rest` as the payload behind a valid header (so the fuzzer need not
/// find CRCs to reach the decoder).
pub fn record_bytes(mode: u8, kind: RecordKind, rest: &[u8]) -> Vec<u8> {
    if mode & 1 != 0 {
        return rest.to_vec();
    }
    let header = Header {
        version: FORMAT_VERSION,
        kind: kind as u32,
        payload_len: rest.len() as u64,
        payload_crc: crc32c::crc32c(rest),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + rest.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(rest);
    out
}

/// What decodes encodes back into a record that decodes to the same value.
fn round_trip<T>(kind: RecordKind, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let path = Path::new("round-trip.img");
    let bytes = encode_record(kind, value, path).expect("a decoded record encodes");
    let again: T = decode_record(kind, &bytes, path).expect("an encoded record decodes");
    assert_eq!(&again, value, "a record changed through encode and decode");
}

/// `inventory`: `[mode][record]`; see [`record_bytes`]. Bit 1 of `mode` also writes the
/// record to a file and reads it back with `read_record`, which must agree with
/// `decode_record`.
pub fn inventory(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = record_bytes(mode, RecordKind::Inventory, rest);
    let path = Path::new("inventory.img");
    let decoded = decode_record::<Inventory>(RecordKind::Inventory, &bytes, path);
    if let Ok(inv) = &decoded {
        round_trip(RecordKind::Inventory, inv);
    }
    if mode & 2 != 0 {
        let scratch = Scratch::new();
        std::fs::write(scratch.path().join(names::INVENTORY), &bytes).expect("writing a file");
        let dir = ImageDir::open(scratch.path()).expect("opening the scratch directory");
        let read = read_record::<Inventory>(&dir, names::INVENTORY, RecordKind::Inventory);
        assert_eq!(
            read.as_ref().ok(),
            decoded.as_ref().ok(),
            "read_record and decode_record disagree"
        );
    }
}

/// `process`: `[mode][pages_len: u64 le][record]`; see [`record_bytes`]. A record that decodes
/// is validated as a restore does, with a pages file of `pages_len` bytes and the engine's
/// checks of every file kind.
pub fn process(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let pages_len = u64::from_le_bytes(*len);
    let bytes = record_bytes(mode, RecordKind::Process, rest);
    let path = Path::new("process-1.img");
    let Ok(p) = decode_record::<ProcessImage>(RecordKind::Process, &bytes, path) else {
        return;
    };
    round_trip(RecordKind::Process, &p);
    if validate_process(&p, pages_len, path, &stasis_engine::files::KindChecks).is_ok() {
        // `stasis show` prints what validates.
        let _ = serde_json::to_value(&p);
    }
}

/// The contents of an `auth.img` holding the manifest encoding `manifest`, with its MAC under
/// [`key`], computed here from the format's documentation (`stasis_image::auth`).
pub fn sealed_auth(manifest: &[u8]) -> Vec<u8> {
    let mac_key = blake3::derive_key(KEY_CONTEXT, &SECRET);
    let mut h = blake3::Hasher::new_keyed(&mac_key);
    h.update(b"stasis manifest\0");
    h.update(manifest);
    let mac: [u8; 32] = *h.finalize().as_bytes();
    // The payload of auth.img: the manifest's bytes, then its MAC.
    encode_record(
        RecordKind::Auth,
        &(manifest.to_vec(), mac),
        Path::new(names::AUTH),
    )
    .expect("encoding auth.img")
}

/// Longest file the targets create for a file a manifest lists (sparse, on tmpfs).
const MAX_LISTED_FILE: u64 = 1 << 20;

/// `auth_manifest`: `[mode][bytes]`. Bit 0 of `mode` clear: `bytes` is a manifest encoding,
/// sealed with its MAC under [`key`] (so the decoding and checks behind the MAC are reached);
/// set: `bytes` is the whole `auth.img`. The directory is authenticated with [`key`]; when it
/// is, every listed file is created (zeros of the listed length, up to 1 MiB) and the whole
/// directory is verified, which must fail (the MACs of zeros do not match) without panicking.
pub fn auth_manifest(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 != 0 {
        rest.to_vec()
    } else {
        sealed_auth(rest)
    };
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join(names::AUTH), &file).expect("writing auth.img");
    let dir = ImageDir::open(scratch.path()).expect("opening the scratch directory");
    if !matches!(dir.authenticate(&key()), Ok(true)) {
        return;
    }
    // The files the manifest lists (its names are plain: the reader checked them).
    let Some(m) = file
        .get(HEADER_LEN..)
        .and_then(|p| postcard::from_bytes::<(Vec<u8>, [u8; 32])>(p).ok())
        .and_then(|(m, _)| postcard::from_bytes::<Manifest>(&m).ok())
    else {
        panic!("auth.img authenticated, but its manifest does not decode");
    };
    for f in m.files.iter().take(8) {
        if f.len <= MAX_LISTED_FILE {
            let fd = std::fs::File::create(scratch.path().join(&f.name)).expect("creating");
            fd.set_len(f.len).expect("sizing a file");
        }
    }
    // Nobody without the key can make the MAC of a file: only an empty list verifies.
    if auth::verify_all(&dir).is_ok() {
        assert!(
            m.files.is_empty(),
            "verify_all accepted files it cannot have MACs for"
        );
    }
}

/// One read of [`raw_reader`]: kind, payload offset, length, and a parameter.
struct Op {
    kind: u8,
    offset: u64,
    len: u64,
    param: u16,
}

/// Largest buffer a read of [`raw_reader`] is given.
const MAX_READ: u64 = 1 << 16;
/// Most pieces a chunked read of [`raw_reader`] is cut into (each is a read of the file, and
/// authenticated, a read of every extent it touches: tiny chunks of a long read would make a
/// slow input, not a finding).
const MAX_PIECES: u64 = 64;

/// `raw_reader`: `[flags][n_ops][n_ops × (kind u8, offset u32, len u32, param u16)]
/// [n_cuts][n_cuts × u16][payload]`.
///
/// Flags: bit 0 a blob (else pages); bit 2 `payload` is the whole file, header block included
/// (else a valid header block is put before it); bit 1 authenticated: `auth.img` lists the
/// file with extents of the lengths in `cuts` (made to cover the payload exactly), the files
/// are resealed with [`key`] and the directory authenticated before the file is opened.
///
/// Every read that succeeds must return the bytes of the payload at its offset, whether
/// authenticated or not; chunked reads hand out contiguous pieces no longer than the chunk.
/// Op kind 4 decodes the bytes as a compressed page run (`dump --compress`): it must give
/// exactly the run's pages or an error.
pub fn raw_reader(data: &[u8]) {
    let mut r = Cursor(data);
    let Some(flags) = r.u8() else { return };
    let n_ops = r.u8().unwrap_or(0);
    let mut ops = Vec::new();
    for _ in 0..n_ops {
        let (Some(kind), Some(offset), Some(len), Some(param)) =
            (r.u8(), r.u32(), r.u32(), r.u16())
        else {
            break;
        };
        ops.push(Op {
            kind,
            offset: offset.into(),
            len: len.into(),
            param,
        });
    }
    let n_cuts = r.u8().unwrap_or(0);
    let cuts: Vec<u64> = (0..n_cuts).map_while(|_| r.u16()).map(u64::from).collect();
    let kind = if flags & 1 != 0 {
        RecordKind::Blob
    } else {
        RecordKind::Pages
    };
    let name = if flags & 1 != 0 {
        names::blob(1)
    } else {
        names::pages(1)
    };
    let file = if flags & 4 != 0 {
        r.0.to_vec()
    } else {
        let header = Header {
            version: FORMAT_VERSION,
            kind: kind as u32,
            payload_len: r.0.len() as u64,
            payload_crc: 0,
        };
        let mut f = vec![0u8; RAW_DATA_OFFSET as usize];
        f[..HEADER_LEN].copy_from_slice(&header.encode());
        f.extend_from_slice(r.0);
        f
    };
    let payload = file.get(RAW_DATA_OFFSET as usize..).unwrap_or_default();
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join(&name), &file).expect("writing the raw file");
    let dir = ImageDir::open(scratch.path()).expect("opening the scratch directory");
    if flags & 2 != 0 {
        let extents = extents_of(&cuts, payload.len() as u64);
        let manifest = Manifest {
            dump_id: [7; 16],
            files: vec![FileAuth {
                name: name.clone(),
                kind: kind as u32,
                len: file.len() as u64,
                mac: [0; 32],
                extents,
            }],
        };
        let encoded = postcard::to_stdvec(&manifest).expect("encoding a manifest");
        std::fs::write(scratch.path().join(names::AUTH), sealed_auth(&encoded))
            .expect("writing auth.img");
        if auth::reseal(&dir, &key()).is_err() {
            return;
        }
        assert!(
            matches!(dir.authenticate(&key()), Ok(true)),
            "a resealed directory does not authenticate"
        );
    }
    let Ok(reader) = RawReader::open(&dir, &name, kind) else {
        return;
    };
    assert_eq!(reader.len(), payload.len() as u64, "payload length");
    for op in ops {
        read_op(&reader, &op, payload);
    }
}

/// Extent lengths from `cuts` (0 counts as 1), cut to cover `payload` bytes exactly, the rest
/// in extents of at most [`MAX_EXTENT_LEN`].
fn extents_of(cuts: &[u64], payload: u64) -> Vec<ExtentAuth> {
    let mut out = Vec::new();
    let mut left = payload;
    for &c in cuts {
        if left == 0 {
            break;
        }
        let len = c.clamp(1, MAX_EXTENT_LEN).min(left);
        out.push(ExtentAuth { len, mac: [0; 32] });
        left -= len;
    }
    while left > 0 {
        let len = left.min(MAX_EXTENT_LEN);
        out.push(ExtentAuth { len, mac: [0; 32] });
        left -= len;
    }
    out
}

fn expected(payload: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    payload.get(start..end)
}

fn read_op(reader: &RawReader, op: &Op, payload: &[u8]) {
    let want = expected(payload, op.offset, op.len);
    match op.kind % 5 {
        4 => {
            // The stored bytes as a compressed run of `param % 600` pages, their CRC right:
            // the frame must decode to exactly the run or be refused, within bounds.
            let Some(stored) = want else { return };
            let run = stasis_image::PageRun {
                addr: 0x1000,
                npages: u64::from(op.param % 600),
                offset: op.offset,
                stored_len: op.len,
                codec: stasis_image::RunCodec::Zstd,
                crc: crc32c::crc32c(stored),
                image: 0,
            };
            let Ok(mut decoder) = stasis_engine::pages::compress::RunDecoder::new() else {
                return;
            };
            if let Ok(pages) = decoder.read_zstd(reader, &run) {
                assert_eq!(pages.len() as u64, run.npages * 4096, "decoded length");
                assert!(run.npages <= stasis_image::MAX_ZSTD_RUN_PAGES);
            }
        }
        k @ (0 | 1) => {
            // No longer than the payload and a page more: a read past its end is refused all
            // the same, and zeroing 64 KiB for each of up to 255 reads of a small input was
            // most of the target's time.
            let len = op.len.min(MAX_READ).min(payload.len() as u64 + 4096);
            let mut buf = vec![0u8; len as usize];
            let crc = u32::from(op.param);
            let got = if k == 0 {
                reader.read_unchecked(op.offset, &mut buf)
            } else {
                reader.read_extent(op.offset, &mut buf, crc)
            };
            if got.is_ok() {
                let want = expected(payload, op.offset, buf.len() as u64);
                assert_eq!(Some(&buf[..]), want, "read_unchecked/read_extent bytes");
            }
        }
        2 => {
            let mut chunk = vec![0u8; usize::from(op.param % 4096)];
            if op.len / (chunk.len() as u64).max(1) > MAX_PIECES {
                return;
            }
            let mut seen = Vec::new();
            let got = reader.read_chunks::<stasis_image::ImageError, _>(
                op.offset,
                op.len,
                &mut chunk,
                |at, bytes| {
                    assert_eq!(at, seen.len() as u64, "chunks are contiguous");
                    assert!(!bytes.is_empty(), "an empty chunk");
                    seen.extend_from_slice(bytes);
                    Ok(())
                },
            );
            if let Ok(crc) = got {
                assert_eq!(Some(&seen[..]), want, "read_chunks bytes");
                assert_eq!(crc, crc32c::crc32c(&seen), "read_chunks CRC");
            }
        }
        _ => {
            let Ok(mut ext) = reader.extent(op.offset, op.len) else {
                assert!(
                    want.is_none(),
                    "extent() refused a range inside the payload"
                );
                return;
            };
            let mut buf = vec![0u8; 1 + usize::from(op.param % 4096)];
            if op.len / buf.len() as u64 > MAX_PIECES {
                return;
            }
            let mut seen = Vec::new();
            loop {
                match ext.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(_) => return,
                }
            }
            assert_eq!(Some(&seen[..]), want, "extent() bytes");
            let crc = crc32c::crc32c(&seen);
            assert!(ext.check_crc(crc).is_ok(), "check_crc of the bytes read");
        }
    }
}

/// A little-endian reader over the input.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take::<2>().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// Longest a file of [`image_dir`] is extended with zeros to (sparse, on tmpfs).
const MAX_EXTEND: u64 = 16 << 20;

/// `image_dir`: a directory of files, loaded as a restore and `stasis show` load it.
///
/// `[flags]`, with bit 2 of `flags` a tampering `[op][file][offset u32 le][byte]`, then
/// entries `[type][name_len u8][name][len u32 le][bytes]`, and for type 1 `[extend u32 le]`.
/// Types: 0 (or any other) a regular file of `bytes`; 1 a regular file of `bytes` extended
/// with `extend` zeros (at most 16 MiB: pages files without their contents); 2 a FIFO, 3 a
/// directory, 4 a symbolic link to `bytes` (as a path). Names are made plain (characters other
/// than `[A-Za-z0-9._-]` become `_`; `.` and `..` are dropped).
///
/// Flags: bit 0 authenticated (the files `auth.img` lists are resealed with [`key`] first,
/// then the directory is authenticated as a restore does with a key); bit 1 `stasis show`
/// too. Nothing is restored: `load` decodes and checks every record and the shape of the tree.
///
/// Bit 2 (with bit 0): once resealed, one file is changed ([`tamper`]): then `stasis show`
/// with the key must not say the images are verified, and `verify_images` must not say they
/// are authenticated.
pub fn image_dir(data: &[u8]) {
    let mut r = Cursor(data);
    let Some(flags) = r.u8() else { return };
    let tampering = if flags & 4 != 0 {
        let (Some(op), Some(file), Some(offset), Some(byte)) = (r.u8(), r.u8(), r.u32(), r.u8())
        else {
            return;
        };
        Some((op, file, offset, byte))
    } else {
        None
    };
    let scratch = Scratch::new();
    unpack(&mut r, scratch.path());
    let authenticated = flags & 1 != 0;
    let open = || ImageDir::open(scratch.path()).expect("opening the scratch directory");
    let key = key();
    if authenticated {
        // Resealed, and whole (every file listed, no other image file): then any change must
        // be seen.
        let sealed = auth::reseal(&open(), &key).is_ok()
            && matches!(
                stasis_engine::restore::verify_images(&open(), &key),
                Ok(true)
            );
        if let (true, Some((op, file, offset, byte))) = (sealed, tampering) {
            if tamper(scratch.path(), op, file, offset, byte) {
                let shown = stasis_engine::show::show(&open(), Some(&key));
                crate::verbose(|| format!("show of tampered images: {:?}", shown.as_ref().err()));
                if let Ok(v) = shown {
                    assert_ne!(
                        v["authentication"]["status"], "verified",
                        "show verified images changed after they were sealed"
                    );
                }
                assert!(
                    !matches!(
                        stasis_engine::restore::verify_images(&open(), &key),
                        Ok(true)
                    ),
                    "verify_images accepted images changed after they were sealed"
                );
            }
        }
    }
    let dir = open();
    match stasis_engine::restore::authenticate(&dir, authenticated.then_some(&key), false) {
        Ok(_) => {
            let loaded = stasis_engine::restore::load(&dir);
            crate::verbose(|| format!("load: {:?}", loaded.as_ref().map(|l| l.processes.len())));
        }
        Err(e) => crate::verbose(|| format!("authenticate: {e}")),
    }
    if flags & 2 != 0 {
        let shown = stasis_engine::show::show(&open(), authenticated.then_some(&key));
        crate::verbose(|| format!("show: {:?}", shown.map(drop)));
    }
}

/// Changes image file number `file` (of the `*.img` files, sorted by name) in `dir`: `op % 6`
/// flips bits of the byte at `offset` (modulo its length) with `byte` (at least one bit),
/// truncates it to `offset` (modulo its length), appends `byte`, replaces it with a FIFO,
/// removes it, or adds an image file `auth.img` does not list. Returns whether something
/// changed.
pub fn tamper(dir: &Path, op: u8, file: u8, offset: u32, byte: u8) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut files: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".img") && !n.starts_with('.'))
        .filter(|n| dir.join(n).symlink_metadata().is_ok_and(|m| m.is_file()))
        .collect();
    files.sort();
    if files.is_empty() {
        return false;
    }
    let path = dir.join(&files[usize::from(file) % files.len()]);
    let Ok(mut bytes) = std::fs::read(&path) else {
        return false;
    };
    match op % 6 {
        0 | 1 if bytes.is_empty() => return false,
        0 => {
            let at = offset as usize % bytes.len();
            bytes[at] ^= byte.max(1);
        }
        1 => bytes.truncate(offset as usize % bytes.len()),
        2 => bytes.push(byte),
        3 => {
            return std::fs::remove_file(&path).is_ok()
                && stasis_sys::fs::mkfifo(&path, 0o600).is_ok();
        }
        4 => return std::fs::remove_file(&path).is_ok(),
        _ => {
            let extra = dir.join(format!("extra-{byte}.img"));
            return !extra.exists() && std::fs::write(extra, [byte]).is_ok();
        }
    }
    std::fs::write(&path, bytes).is_ok()
}

/// Writes the entries of [`image_dir`] into `dir`.
fn unpack(r: &mut Cursor<'_>, dir: &Path) {
    while let (Some(kind), Some(name_len)) = (r.u8(), r.u8()) {
        let name: String = r
            .bytes(name_len.into())
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_' {
                    char::from(b)
                } else {
                    '_'
                }
            })
            .collect();
        let len = r.u32().unwrap_or(0);
        let bytes = r.bytes(len as usize).to_vec();
        let extend = if kind == 1 { r.u32().unwrap_or(0) } else { 0 };
        if name.is_empty() || name == "." || name == ".." {
            continue;
        }
        let path = dir.join(&name);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        match kind {
            2 => {
                let _ = stasis_sys::fs::mkfifo(&path, 0o600);
            }
            3 => {
                let _ = std::fs::create_dir(&path);
            }
            4 => {
                let target = String::from_utf8_lossy(&bytes).replace('\0', "_");
                let _ = std::os::unix::fs::symlink(target, &path);
            }
            _ => {
                let _ = std::fs::write(&path, &bytes);
                if extend > 0 {
                    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                        let _ = f.set_len(bytes.len() as u64 + u64::from(extend).min(MAX_EXTEND));
                    }
                }
            }
        }
    }
}
