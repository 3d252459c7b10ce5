//! Raw data files (pages, blobs): a header block padded to 4 KiB, then the payload.
//!
//! Payload bytes are written as they come (streaming, never held whole in memory); the header
//! is written last, so an interrupted writer leaves a file whose header does not verify.
//! They are read the same way: [`RawReader`] streams an extent through a fixed buffer, so no
//! length found in an image ever sizes an allocation.
//!
//! In a sealing directory each [`RawWriter::write`] is an authenticated extent whose MAC is
//! computed as it is written; in an authenticated directory every read of a [`RawReader`] is
//! checked against those MACs before it returns (see [`crate::auth`]).

use crate::auth::{RawAuth, RawSeal};
use crate::frame::{read_up_to, Header, RecordKind, FORMAT_VERSION, HEADER_LEN};
use crate::{ImageDir, ImageError};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where the payload of a raw data file starts: page-aligned for bulk copies or mmap.
pub const RAW_DATA_OFFSET: u64 = 4096;

/// Streams the payload of a raw data file.
pub struct RawWriter {
    file: std::io::BufWriter<File>,
    path: PathBuf,
    kind: RecordKind,
    len: u64,
    /// In a sealing directory: the MACs of the extents written.
    seal: Option<RawSeal>,
    /// Payload bytes whose writeback was started ([`WRITEBACK_STEP`]).
    writeback_from: u64,
    /// Payload bytes to write before the next writeback is started.
    writeback_step: u64,
    /// A scratch file ([`RawWriter::create_scratch`]): never sealed nor written back.
    scratch: bool,
}

/// Every this many payload bytes written, their writeback to the device is started (not
/// waited for): the disk works while the dump copies on, and the fsync that makes the images
/// durable finds most of them written. (A 1 GiB dump spent 350 ms in that fsync, after the
/// copy.)
const WRITEBACK_STEP: u64 = 8 << 20;

/// The first writeback starts after this many bytes, the next after twice as many, and so
/// on up to [`WRITEBACK_STEP`]: a small file is on its way to the disk while it is written
/// too. Measured here, the dump of a 1 MiB process (1.1 MiB of pages written in 64 KiB
/// pieces): the fsync took 0.5–0.9 ms when the writeback started at the end, 0.15–0.3 ms
/// this way (the inode and the disk's cache flush are what is left).
///
/// Not for a writer at real-time priority: it keeps the kernel's workers that complete the
/// writes (ext4 converts the extents it wrote in a worker thread, the block layer restarts a
/// full queue from one) off the CPUs while it copies on, and here 4 of 10 such dumps then
/// waited 5–12 ms in the fsync for a write dispatched late. Its writeback starts at
/// [`WRITEBACK_STEP`] (fsync 0.4–1.3 ms, none of those waits in 30 dumps).
const FIRST_WRITEBACK_STEP: u64 = 256 << 10;

/// The buffer that gathers small writes into one system call. Larger writes go to the file
/// straight from the caller's memory (the dumper's copy buffer), without a copy: each fresh
/// page of a bigger buffer also costs a fault the first time it is filled (~2 µs on a VM:
/// 0.5 ms of a 1 MiB process's dump with a 1 MiB buffer).
const WRITE_BUFFER: usize = 64 << 10;

/// The most one `write` carries: longer data goes in pieces of this size. The kernel sizes
/// the page cache's folios for a file after the writes that fill it, and on a VM that hands
/// its free memory back to the host (free page reporting, this one) the blocks big folios
/// come from are often memory the host must fault in again, page by page: writes into a new
/// file are erratic there whatever their size (256 MiB took 60 ms to 2.3 s), but the dump of
/// 256 MiB left running took 170–235 ms in pieces against 420–740 ms in whole runs (four
/// runs each, alternated). A shorter system call also gives the CPU back sooner to a process
/// woken meanwhile (the dump's collect, beside its pages thread: this kernel does not
/// preempt a thread inside the kernel). On a machine without those costs, 64 KiB writes cost
/// ~30 % more per byte than 1 MiB ones.
pub const WRITE_PIECE: usize = 64 << 10;

impl RawWriter {
    /// Creates `name` in `dir` (it must not exist).
    pub fn create(dir: &ImageDir, name: &str, kind: RecordKind) -> Result<RawWriter, ImageError> {
        let path = dir.path_of(name);
        let mut file = dir.create_file(name)?;
        file.seek(SeekFrom::Start(RAW_DATA_OFFSET))
            .map_err(|source| ImageError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(RawWriter {
            file: std::io::BufWriter::with_capacity(WRITE_BUFFER, file),
            path,
            kind,
            len: 0,
            seal: dir.sealer().map(|s| RawSeal::new(s, name)),
            writeback_from: 0,
            writeback_step: if stasis_sys::sched::realtime() {
                WRITEBACK_STEP
            } else {
                FIRST_WRITEBACK_STEP
            },
            scratch: false,
        })
    }

    /// Creates `name` in `dir` as a scratch file of the writer's own, which it removes before
    /// the dump is complete and no reader ever opens as part of the images: not sealed (an
    /// authenticated directory has no record of it) and not pushed to the disk as it is
    /// written. Its payload is read back from [`RAW_DATA_OFFSET`] on
    /// ([`ImageDir::open_file`]).
    pub fn create_scratch(
        dir: &ImageDir,
        name: &str,
        kind: RecordKind,
    ) -> Result<RawWriter, ImageError> {
        let mut w = RawWriter::create(dir, name, kind)?;
        w.seal = None;
        w.scratch = true;
        Ok(w)
    }

    /// Offset in the payload where the next write lands.
    pub fn position(&self) -> u64 {
        self.len
    }

    /// Appends bytes to the payload. In a sealing directory, `data` is one authenticated
    /// extent (or several of at most [`MAX_EXTENT_LEN`](crate::auth::MAX_EXTENT_LEN)), MACed
    /// here: readers get them back fastest by reading the same pieces.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ImageError> {
        if data.is_empty() {
            return Ok(());
        }
        for piece in data.chunks(WRITE_PIECE) {
            self.file
                .write_all(piece)
                .map_err(|source| ImageError::Io {
                    path: self.path.clone(),
                    source,
                })?;
        }
        if let Some(seal) = &mut self.seal {
            seal.append(self.len, data);
        }
        self.len += data.len() as u64;
        if !self.scratch && self.len - self.writeback_from >= self.writeback_step {
            self.start_writeback();
            self.writeback_step = (self.writeback_step * 2).min(WRITEBACK_STEP);
        }
        Ok(())
    }

    /// Starts the writeback of what was written since the last time (best effort: a
    /// filesystem that refuses it is synced by the final fsync all the same).
    fn start_writeback(&mut self) {
        // What the buffer holds reaches the kernel first (a flush error shows again at the
        // next write or at `finish`).
        if self.file.flush().is_err() {
            return;
        }
        let (from, to) = (self.writeback_from, self.len);
        let _ = stasis_sys::fs::start_writeback(
            self.file.get_ref().as_fd(),
            RAW_DATA_OFFSET + from,
            to - from,
        );
        self.writeback_from = to;
    }

    /// Writes the header (payload CRC 0: raw payloads are covered per extent by the metadata).
    /// The file is not synced here: the caller syncs it (`ImageDir::sync_file`) before it
    /// writes the inventory, possibly after letting the dumped process run on.
    pub fn finish(self) -> Result<u64, ImageError> {
        let path = self.path.clone();
        let io = |source| ImageError::Io {
            path: path.clone(),
            source,
        };
        let file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        // An empty payload writes nothing after the padding: make the file its full size.
        file.set_len(RAW_DATA_OFFSET + self.len).map_err(io)?;
        let header = Header {
            version: FORMAT_VERSION,
            kind: self.kind as u32,
            payload_len: self.len,
            payload_crc: 0,
        };
        file.write_all_at(&header.encode(), 0).map_err(io)?;
        // The fsync comes later (before the inventory): the disk can start now.
        if !self.scratch {
            crate::dir::start_writeback(&file);
        }
        if let Some(seal) = self.seal {
            // The header block as written: the header, then the zeros of the padding.
            let mut block = vec![0u8; RAW_DATA_OFFSET as usize];
            block[..HEADER_LEN].copy_from_slice(&header.encode());
            seal.finish(self.kind, self.len, &block);
        }
        Ok(self.len)
    }
}

/// Size of the pieces the image crate reads at a time, and a good size for the buffer given to
/// [`RawReader::read_chunks`]: 1 MiB.
pub const READ_CHUNK: usize = 1 << 20;

/// Reads extents of a raw data file after checking its header and length.
///
/// The file is opened without blocking and must be a regular file (see [`ImageDir`]); its size
/// (fstat) must be exactly [`RAW_DATA_OFFSET`] plus the payload length in its header. The reader
/// allocates nothing: lengths in the image (page runs, blob lengths) may be as large as the
/// file, which may be sparse, so they must not size a buffer either. Read them with
/// [`read_chunks`](RawReader::read_chunks) or [`read_extent_chunks`](RawReader::read_extent_chunks)
/// into a fixed buffer, or through [`extent`](RawReader::extent) (a [`Read`] limited to the
/// extent):
///
/// ```no_run
/// # use stasis_image::{ImageDir, ImageError, RawReader, RecordKind, READ_CHUNK};
/// # fn f(dir: &ImageDir, offset: u64, len: u64, crc: u32) -> Result<(), ImageError> {
/// let pages = RawReader::open(dir, "pages-1.img", RecordKind::Pages)?;
/// let mut chunk = vec![0u8; READ_CHUNK]; // once, reused for every extent
/// pages.read_extent_chunks(offset, len, crc, &mut chunk, |at, bytes| {
///     // `bytes` belong at `at` bytes into the extent; the CRC is checked after the last chunk.
///     Ok::<(), ImageError>(())
/// })?;
/// # Ok(()) }
/// ```
///
/// [`read_extent`](RawReader::read_extent) and [`read_unchecked`](RawReader::read_unchecked)
/// read into a buffer the caller sized: they are for extents the caller knows to be small.
#[derive(Debug)]
pub struct RawReader {
    file: File,
    path: PathBuf,
    len: u64,
    /// In an authenticated directory: the extents every read is checked against.
    auth: Option<RawAuth>,
}

impl RawReader {
    /// Opens raw data file `name` and checks its header and size. In an authenticated
    /// directory ([`ImageDir::authenticate`]) the file must be listed in `auth.img` (checked
    /// before it is opened) with its size, its header block must have the listed MAC (it is
    /// read into memory once and decoded from there), and every read afterwards checks the
    /// extents it returns ([`ImageError::NotAuthenticated`] otherwise).
    pub fn open(dir: &ImageDir, name: &str, kind: RecordKind) -> Result<RawReader, ImageError> {
        let path = &dir.path_of(name);
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let verifier = dir.verifier();
        if let Some(v) = verifier {
            v.check_listed(name, kind, path)?;
        }
        let (mut file, size) = dir.open_regular(name).map_err(|e| match verifier {
            Some(v) => v.open_failed(e, path),
            None => e,
        })?;
        // Authenticated: the whole header block, which its MAC covers.
        let mut block = vec![
            0u8;
            if verifier.is_some() {
                RAW_DATA_OFFSET as usize
            } else {
                HEADER_LEN
            }
        ];
        let n = read_up_to(&mut file, &mut block).map_err(io)?;
        let header = Header::decode(&block[..n.min(HEADER_LEN)], kind, path)?;
        let expected = RAW_DATA_OFFSET.saturating_add(header.payload_len);
        if size != expected || n < block.len() {
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                expected,
                found: size,
            });
        }
        let auth = match verifier {
            Some(v) => Some(v.raw(name, kind, size, &block, path)?),
            None => None,
        };
        Ok(RawReader {
            file,
            path: path.to_path_buf(),
            len: header.payload_len,
            auth,
        })
    }

    /// Whether reads are checked against the MACs of an authenticated directory.
    pub fn is_authenticated(&self) -> bool {
        self.auth.is_some()
    }

    pub(crate) fn auth(&self) -> Option<&RawAuth> {
        self.auth.as_ref()
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Payload length.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Err unless `len` bytes at payload offset `offset` lie inside the payload.
    fn check_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(ImageError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "read at {offset} of {len} bytes lies outside the payload of {} bytes",
                    self.len
                ),
            });
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at payload offset `offset` (known to be in range);
    /// authenticated, checks them before returning.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        if let Some(auth) = &self.auth {
            return auth.read(&self.file, offset, buf, &self.path);
        }
        self.file
            .read_exact_at(buf, RAW_DATA_OFFSET + offset)
            .map_err(|source| ImageError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads `buf.len()` bytes at payload offset `offset` without a CRC check: for callers that
    /// stream a large extent and check its CRC as a whole.
    pub fn read_unchecked(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.check_range(offset, buf.len() as u64)?;
        self.read_at(offset, buf)
    }

    /// Reads `buf.len()` bytes at payload offset `offset` and checks them against `crc`.
    pub fn read_extent(&self, offset: u64, buf: &mut [u8], crc: u32) -> Result<(), ImageError> {
        self.read_unchecked(offset, buf)?;
        if crc32c::crc32c(buf) != crc {
            return Err(ImageError::BadPayloadCrc {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Streams the `len` bytes at payload offset `offset` through `chunk`, a buffer the caller
    /// allocated once (its length is the chunk size; [`READ_CHUNK`] is a good one): `f(at,
    /// bytes)` is called for each piece in order, `at` being the piece's offset from the start
    /// of the extent, `bytes` at most `chunk.len()` long. Nothing is allocated, whatever `len`
    /// says. Returns the CRC-32C of the whole extent, for the caller to check.
    ///
    /// The range is checked against the payload first. An error of `f` stops the reading and is
    /// returned as is; errors of the reader itself come as `E::from(ImageError)`.
    pub fn read_chunks<E, F>(
        &self,
        offset: u64,
        len: u64,
        chunk: &mut [u8],
        mut f: F,
    ) -> Result<u32, E>
    where
        E: From<ImageError>,
        F: FnMut(u64, &[u8]) -> Result<(), E>,
    {
        self.check_range(offset, len)?;
        if chunk.is_empty() && len > 0 {
            return Err(ImageError::Invalid {
                path: self.path.clone(),
                reason: format!("read of {len} bytes at {offset} with an empty buffer"),
            }
            .into());
        }
        let (mut at, mut crc) = (0u64, 0u32);
        while at < len {
            // At most chunk.len(), so it fits in usize.
            let n = (len - at).min(chunk.len() as u64) as usize;
            let piece = &mut chunk[..n];
            self.read_at(offset + at, piece)?;
            crc = crc32c::crc32c_append(crc, piece);
            f(at, piece)?;
            at += n as u64;
        }
        Ok(crc)
    }

    /// [`read_chunks`](RawReader::read_chunks), then checks the CRC of the whole extent against
    /// `crc` ([`ImageError::BadPayloadCrc`] when it differs).
    ///
    /// The CRC can only be known after the last chunk: `f` sees the bytes *before* they are
    /// verified. Whatever it does with them must stay without effect until this returns `Ok`
    /// (a restore writes pages into a process that does not run yet, and kills it when this
    /// fails).
    pub fn read_extent_chunks<E, F>(
        &self,
        offset: u64,
        len: u64,
        crc: u32,
        chunk: &mut [u8],
        f: F,
    ) -> Result<(), E>
    where
        E: From<ImageError>,
        F: FnMut(u64, &[u8]) -> Result<(), E>,
    {
        if self.read_chunks(offset, len, chunk, f)? != crc {
            return Err(ImageError::BadPayloadCrc {
                path: self.path.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// A [`Read`] of the `len` bytes at payload offset `offset` (checked against the payload),
    /// reading no further than the caller's buffer at a time; it keeps the CRC of what it read
    /// ([`ExtentReader::check_crc`]).
    pub fn extent(&self, offset: u64, len: u64) -> Result<ExtentReader<'_>, ImageError> {
        self.check_range(offset, len)?;
        Ok(ExtentReader {
            reader: self,
            start: offset,
            pos: offset,
            end: offset + len,
            crc: 0,
        })
    }
}

/// An extent of a raw data file as a [`Read`] ([`RawReader::extent`]): reads return at most
/// the caller's buffer and end at the end of the extent. The I/O errors it returns do not name
/// the file: wrap them with [`ExtentReader::path`].
pub struct ExtentReader<'a> {
    reader: &'a RawReader,
    start: u64,
    pos: u64,
    end: u64,
    crc: u32,
}

impl ExtentReader<'_> {
    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// The file, for messages.
    pub fn path(&self) -> &Path {
        &self.reader.path
    }

    /// Checks, once the whole extent is read, its CRC-32C against `crc`.
    pub fn check_crc(&self, crc: u32) -> Result<(), ImageError> {
        if self.pos != self.end {
            return Err(ImageError::Invalid {
                path: self.reader.path.clone(),
                reason: format!(
                    "CRC check of the extent at {} after {} of its {} bytes",
                    self.start,
                    self.pos - self.start,
                    self.end - self.start
                ),
            });
        }
        if self.crc != crc {
            return Err(ImageError::BadPayloadCrc {
                path: self.reader.path.clone(),
            });
        }
        Ok(())
    }
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.remaining().min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        if self.reader.auth.is_some() {
            // Checked before it is handed out; a failure names the file in its message.
            self.reader
                .read_at(self.pos, &mut buf[..n])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let got = self
            .reader
            .file
            .read_at(&mut buf[..n], RAW_DATA_OFFSET + self.pos)?;
        if got == 0 {
            // The file shrank under us: its header promised these bytes.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..got]);
        self.pos += got as u64;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "stasis-raw-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_corruption() {
        let d = tmpdir();
        let dir = ImageDir::open(&d).unwrap();
        let p = d.join("pages.img");
        let mut w = RawWriter::create(&dir, "pages.img", RecordKind::Pages).unwrap();
        let data = vec![0xabu8; 8192];
        w.write(&data).unwrap();
        assert_eq!(w.finish().unwrap(), 8192);
        let r = RawReader::open(&dir, "pages.img", RecordKind::Pages).unwrap();
        let mut buf = vec![0u8; 4096];
        r.read_extent(4096, &mut buf, crc32c::crc32c(&data[..4096]))
            .unwrap();
        assert!(matches!(
            r.read_extent(4096, &mut buf, 1),
            Err(ImageError::BadPayloadCrc { .. })
        ));
        assert!(matches!(
            r.read_extent(8000, &mut buf, 0),
            Err(ImageError::Invalid { .. })
        ));
        assert!(matches!(
            RawReader::open(&dir, "pages.img", RecordKind::Blob),
            Err(ImageError::WrongKind { .. })
        ));
        // Truncation is detected from the header's length.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(4096 + 100).unwrap();
        assert!(matches!(
            RawReader::open(&dir, "pages.img", RecordKind::Pages),
            Err(ImageError::Truncated { .. })
        ));
        // An empty payload still has the padded header block.
        let w = RawWriter::create(&dir, "empty.img", RecordKind::Blob).unwrap();
        assert_eq!(w.finish().unwrap(), 0);
        let r = RawReader::open(&dir, "empty.img", RecordKind::Blob).unwrap();
        assert!(r.is_empty());
        // An unfinished writer leaves no valid header.
        let mut w = RawWriter::create(&dir, "unfinished.img", RecordKind::Pages).unwrap();
        w.write(&data).unwrap();
        drop(w);
        assert!(matches!(
            RawReader::open(&dir, "unfinished.img", RecordKind::Pages),
            Err(ImageError::BadMagic { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Writes longer than a piece, after a short one still in the buffer, come back whole.
    #[test]
    fn long_writes_go_in_pieces_and_lose_nothing() {
        let d = tmpdir();
        let dir = ImageDir::open(&d).unwrap();
        let small = vec![1u8; 4096];
        let long: Vec<u8> = (0..3 * WRITE_PIECE + 8192)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut w = RawWriter::create(&dir, "pages.img", RecordKind::Pages).unwrap();
        w.write(&small).unwrap();
        w.write(&long).unwrap();
        w.write(&small).unwrap();
        let total = (2 * small.len() + long.len()) as u64;
        assert_eq!(w.position(), total);
        assert_eq!(w.finish().unwrap(), total);
        let r = RawReader::open(&dir, "pages.img", RecordKind::Pages).unwrap();
        let mut got = vec![0u8; long.len()];
        r.read_extent(4096, &mut got, crc32c::crc32c(&long))
            .unwrap();
        assert!(got == long);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn chunked_reads() {
        let d = tmpdir();
        let dir = ImageDir::open(&d).unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 100u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut w = RawWriter::create(&dir, "blob.img", RecordKind::Blob).unwrap();
        w.write(&data).unwrap();
        w.finish().unwrap();
        let r = RawReader::open(&dir, "blob.img", RecordKind::Blob).unwrap();
        let (off, len) = (100u64, 10_000u64);
        let want = &data[off as usize..(off + len) as usize];

        // Pieces in order, none longer than the buffer, together the extent.
        let mut chunk = vec![0u8; 4096];
        let mut got = Vec::new();
        let crc = r
            .read_chunks(off, len, &mut chunk, |at, bytes| {
                assert_eq!(at, got.len() as u64);
                assert!(!bytes.is_empty() && bytes.len() <= 4096);
                got.extend_from_slice(bytes);
                Ok::<(), ImageError>(())
            })
            .unwrap();
        assert_eq!(got, want);
        assert_eq!(crc, crc32c::crc32c(want));
        let ok = |_: u64, _: &[u8]| Ok::<(), ImageError>(());
        r.read_extent_chunks(off, len, crc, &mut chunk, ok).unwrap();
        assert!(matches!(
            r.read_extent_chunks(off, len, crc ^ 1, &mut chunk, ok),
            Err(ImageError::BadPayloadCrc { .. })
        ));
        // Out of range (also overflowing) and an empty buffer are errors before any read.
        for (o, l) in [
            (0, data.len() as u64 + 1),
            (u64::MAX, 2),
            (data.len() as u64, 1),
        ] {
            assert!(matches!(
                r.read_chunks(o, l, &mut chunk, |_, _| -> Result<(), ImageError> {
                    panic!("read out of range")
                }),
                Err(ImageError::Invalid { .. })
            ));
        }
        assert!(matches!(
            r.read_chunks(0, 1, &mut [], ok),
            Err(ImageError::Invalid { .. })
        ));
        assert_eq!(r.read_chunks(5, 0, &mut [], ok).unwrap(), 0);
        // The caller's error stops the reading and comes back as is.
        #[derive(Debug)]
        enum E {
            Mine(u64),
            Image,
        }
        impl From<ImageError> for E {
            fn from(_: ImageError) -> E {
                E::Image
            }
        }
        let mut calls = 0;
        let e = r.read_chunks(0, len, &mut chunk, |at, _| {
            calls += 1;
            if at > 0 {
                Err(E::Mine(at))
            } else {
                Ok(())
            }
        });
        assert!(matches!(e, Err(E::Mine(4096))), "{e:?}");
        assert_eq!(calls, 2);
        assert!(matches!(
            r.read_chunks(0, u64::MAX, &mut chunk, |_, _| Ok(())),
            Err(E::Image)
        ));

        // The same extent through Read.
        let mut ext = r.extent(off, len).unwrap();
        let mut small = [0u8; 1000];
        let n = ext.read(&mut small).unwrap();
        assert!(n > 0 && n <= 1000);
        assert!(matches!(
            ext.check_crc(crc),
            Err(ImageError::Invalid { .. })
        ));
        let mut rest = small[..n].to_vec();
        std::io::copy(&mut ext, &mut rest).unwrap();
        assert_eq!(rest, want);
        assert_eq!(ext.remaining(), 0);
        assert_eq!(ext.read(&mut small).unwrap(), 0);
        ext.check_crc(crc).unwrap();
        assert!(matches!(
            ext.check_crc(crc ^ 1),
            Err(ImageError::BadPayloadCrc { .. })
        ));
        assert!(matches!(
            r.extent(1, data.len() as u64),
            Err(ImageError::Invalid { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
