//! Raw data files (pages, blobs): a header block padded to 4 KiB, then the payload.
//!
//! Payload bytes are written as they come (streaming, never held whole in memory); the header
//! is written last, so an interrupted writer leaves a file whose header does not verify.

use crate::frame::{Header, RecordKind, FORMAT_VERSION, HEADER_LEN};
use crate::{ImageDir, ImageError};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
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
}

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
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            path,
            kind,
            len: 0,
        })
    }

    /// Offset in the payload where the next write lands.
    pub fn position(&self) -> u64 {
        self.len
    }

    /// Appends bytes to the payload.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.file.write_all(data).map_err(|source| ImageError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.len += data.len() as u64;
        Ok(())
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
        Ok(self.len)
    }
}

/// Reads extents of a raw data file after checking its header and length.
pub struct RawReader {
    file: File,
    path: PathBuf,
    len: u64,
}

impl RawReader {
    pub fn open(dir: &ImageDir, name: &str, kind: RecordKind) -> Result<RawReader, ImageError> {
        let path = &dir.path_of(name);
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = dir.open_file(name)?;
        let mut hdr = [0u8; HEADER_LEN];
        let n = read_full(&mut file, &mut hdr).map_err(io)?;
        let header = Header::decode(&hdr[..n], kind, path)?;
        let size = file.metadata().map_err(io)?.len();
        let expected = RAW_DATA_OFFSET.saturating_add(header.payload_len);
        if size != expected {
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                expected,
                found: size,
            });
        }
        Ok(RawReader {
            file,
            path: path.to_path_buf(),
            len: header.payload_len,
        })
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

    /// Reads `buf.len()` bytes at payload offset `offset` without a CRC check: for callers that
    /// stream a large extent and check its CRC as a whole.
    pub fn read_unchecked(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(ImageError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "read at {offset} of {} bytes lies outside the payload of {} bytes",
                    buf.len(),
                    self.len
                ),
            });
        }
        self.file
            .read_exact_at(buf, RAW_DATA_OFFSET + offset)
            .map_err(|source| ImageError::Io {
                path: self.path.clone(),
                source,
            })
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
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
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
}
