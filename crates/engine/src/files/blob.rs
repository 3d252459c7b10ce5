//! Blob images (`blob-ID.img`): the contents of a description that has no path to be reopened
//! by (a file deleted while open, a memfd). Contents are streamed in 1 MiB pieces; one CRC-32C
//! covers them all and is kept, with the length, in the description's record (see
//! [`super::FileOps::blob`]). These helpers are shared by the kinds that store contents.

use crate::Error;
use stasis_image::{names, ImageDir, ImageError, RawReader, RawWriter, RecordKind};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Size of the pieces contents are streamed in.
pub(crate) const CHUNK: usize = 1 << 20;

/// Calls `piece(offset, bytes)` for the bytes of `file` in `extents` (offset, length), in
/// order, in pieces of at most [`CHUNK`]; `what` names the file in errors.
fn each_piece(
    file: &File,
    extents: &[(u64, u64)],
    what: &str,
    mut piece: impl FnMut(u64, &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let longest = extents.iter().map(|e| e.1).max().unwrap_or(0);
    let mut buf = vec![0u8; CHUNK.min(longest as usize)];
    for &(start, len) in extents {
        let mut done = 0u64;
        while done < len {
            let off = start + done;
            let n = (len - done).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], off)
                .map_err(|e| Error::io(format!("read {what} at offset {off}"), e))?;
            piece(off, &buf[..n])?;
            done += n as u64;
        }
    }
    Ok(())
}

/// The CRC-32C of the first `len` bytes of `file`.
pub(crate) fn crc_of(file: &File, len: u64, what: &str) -> Result<u32, Error> {
    crc_of_extents(file, &[(0, len)], what)
}

/// The CRC-32C of the bytes of `file` in `extents` (offset, length), one after the other.
pub(crate) fn crc_of_extents(
    file: &File,
    extents: &[(u64, u64)],
    what: &str,
) -> Result<u32, Error> {
    let mut crc = 0u32;
    each_piece(file, extents, what, |_, b| {
        crc = crc32c::crc32c_append(crc, b);
        Ok(())
    })?;
    Ok(crc)
}

/// Copies the bytes of `file` in `extents` (offset, length), one after the other, into the
/// blob of description `id`; fails when they no longer have CRC `crc` (the file changed since
/// it was described). Returns the blob's file name; a blob that failed is removed.
pub(crate) fn write(
    dir: &ImageDir,
    id: u32,
    file: &File,
    extents: &[(u64, u64)],
    crc: u32,
    kind: &str,
) -> Result<String, Error> {
    let name = names::blob(id);
    let mut w = RawWriter::create(dir, &name, RecordKind::Blob)?;
    let what = format!("{kind} of description {id}");
    let result = (|| {
        let mut c = 0u32;
        each_piece(file, extents, &what, |_, b| {
            c = crc32c::crc32c_append(c, b);
            Ok(w.write(b)?)
        })?;
        if c != crc {
            return Err(Error::Invalid(format!(
                "the {what} changed while it was dumped"
            )));
        }
        Ok(())
    })();
    match result.and_then(|()| Ok(w.finish()?)) {
        Ok(_) => Ok(name),
        Err(e) => {
            let _ = dir.remove(&name);
            Err(e)
        }
    }
}

/// Streams the blob of description `id`, which must hold `len` bytes with CRC `crc`, to
/// `piece(offset, bytes)` in [`CHUNK`] pieces. The CRC is only known to match at the end: on
/// error, whatever `piece` built must be thrown away. `what` names the contents in errors.
pub(crate) fn read(
    dir: &ImageDir,
    id: u32,
    len: u64,
    crc: u32,
    what: &str,
    mut piece: impl FnMut(u64, &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let blob = RawReader::open(dir, &names::blob(id), RecordKind::Blob)?;
    if blob.len() != len {
        return Err(Error::Invalid(format!(
            "{} holds {} bytes, the image expects {len} for the {what}",
            blob.path().display(),
            blob.len()
        )));
    }
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let (mut off, mut c) = (0u64, 0u32);
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        blob.read_unchecked(off, &mut buf[..n])?;
        c = crc32c::crc32c_append(c, &buf[..n]);
        piece(off, &buf[..n])?;
        off += n as u64;
    }
    if c != crc {
        return Err(Error::Image(ImageError::BadPayloadCrc {
            path: blob.path().to_path_buf(),
        }));
    }
    Ok(())
}

/// Checks the blob of description `id`: `len` bytes with CRC `crc`.
pub(crate) fn verify(dir: &ImageDir, id: u32, len: u64, crc: u32, kind: &str) -> Result<(), Error> {
    read(dir, id, len, crc, kind, |_, _| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_verify() {
        let tmp = std::env::temp_dir().join(format!("stasis-blob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let dir = ImageDir::create(&tmp).unwrap();
        let src_path = tmp.join("src");
        let data: Vec<u8> = (0..(CHUNK + 4321)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src_path, &data).unwrap();
        let src = File::open(&src_path).unwrap();
        let len = data.len() as u64;
        let crc = crc_of(&src, len, "src").unwrap();
        assert_eq!(crc, crc32c::crc32c(&data));

        let name = write(&dir, 7, &src, &[(0, len)], crc, "test").unwrap();
        assert_eq!(name, names::blob(7));
        verify(&dir, 7, len, crc, "test").unwrap();
        let mut back = vec![0u8; data.len()];
        read(&dir, 7, len, crc, "test", |off, b| {
            back[off as usize..off as usize + b.len()].copy_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(back, data);

        // Wrong length, wrong CRC, contents that changed since they were described.
        let err = verify(&dir, 7, len - 1, crc, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("blob-7.img") && err.contains("holds"), "{err}");
        let err = verify(&dir, 7, len, crc ^ 1, "test")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blob-7.img") && err.contains("checksum"),
            "{err}"
        );
        let err = write(&dir, 8, &src, &[(0, len)], crc ^ 1, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("changed"), "{err}");
        assert!(!dir.exists(&names::blob(8)), "a failed blob is removed");
        // An empty blob is a valid blob.
        write(&dir, 9, &src, &[], 0, "test").unwrap();
        // Extents: only their bytes, one after the other.
        let ext = [(10, 5), (CHUNK as u64 + 7, 3)];
        let mut want = data[10..15].to_vec();
        want.extend_from_slice(&data[CHUNK + 7..CHUNK + 10]);
        let crc = crc_of_extents(&src, &ext, "src").unwrap();
        assert_eq!(crc, crc32c::crc32c(&want));
        write(&dir, 10, &src, &ext, crc, "test").unwrap();
        verify(&dir, 10, 8, crc, "test").unwrap();
        verify(&dir, 9, 0, 0, "test").unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
