//! The gadgets found in mapped files ([`super::park::Gadgets`]), kept across runs in a small
//! file, so that a dump or a restore by a new `stasis` process need not read and scan its
//! target's libc again (~0.2 ms of every dump here).
//!
//! An entry is only a hint: where it says the gadgets are, the bytes are read from the
//! process and compared with the patterns before anything runs there
//! ([`super::park::find_gadgets`]), so a stale, wrong or forged entry costs a scan, never a
//! wrong jump. The file is root's only ([`PATH`], used when running as root, and only when it
//! belongs to root and nobody else may write it), bounded ([`MAX_LEN`], [`MAX_ENTRIES`]),
//! versioned by its first line, replaced atomically, never synced (losing it costs a scan),
//! and anything unexpected in it makes it ignored as a whole.
//!
//! Format: the line [`HEADER`], then one line per mapped file and offset where gadgets were
//! found: `dev_major dev_minor inode file_offset syscall_ret restorer`, the last two as
//! offsets from the mapping's start, all in hexadecimal.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Where root's stasis keeps the gadgets it found.
pub const PATH: &str = "/var/cache/stasis/gadgets";
/// The first line of the file: its format and version.
pub const HEADER: &str = "stasis gadgets 1";
/// The longest file read.
pub const MAX_LEN: u64 = 64 << 10;
/// The most entries kept (a machine has few libcs).
pub const MAX_ENTRIES: usize = 256;

/// A mapped file's identity and offset (device major, minor, inode, file offset).
pub type Key = (u32, u32, u64, u64);
/// Offsets of the `syscall; ret` and of the restorer from the mapping's start.
pub type Offsets = (u64, u64);

/// The path this process uses: [`PATH`] when it runs as root, none otherwise.
pub fn path() -> Option<&'static Path> {
    (stasis_sys::process::geteuid() == 0).then(|| Path::new(PATH))
}

/// The entries of the file at `path`; empty when it is missing, not owned by this user,
/// writable by others, too long or not exactly in the format.
pub fn load(path: &Path) -> HashMap<Key, Offsets> {
    match read(path) {
        Ok(m) => m,
        Err(why) => {
            tracing::debug!("gadget cache {} not used: {why}", path.display());
            HashMap::new()
        }
    }
}

fn read(path: &Path) -> Result<HashMap<Key, Offsets>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != stasis_sys::process::geteuid() || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "owned by uid {} with mode {:o}: only a file of ours that nobody else may write \
             is read",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    file.take(MAX_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} bytes"));
    }
    parse(&text)
}

/// Parses the file's text (see the module's doc).
pub fn parse(text: &str) -> Result<HashMap<Key, Offsets>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err("not a gadget cache of this version".into());
    }
    let mut out = HashMap::new();
    for (n, line) in lines.enumerate() {
        let bad = || format!("line {}: {line:?}", n + 2);
        let f: Vec<u64> = line
            .split(' ')
            .map(|w| u64::from_str_radix(w, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let [major, minor, inode, offset, sr, rest] = f[..] else {
            return Err(bad());
        };
        let (Ok(major), Ok(minor)) = (u32::try_from(major), u32::try_from(minor)) else {
            return Err(bad());
        };
        if out.len() >= MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        out.insert((major, minor, inode, offset), (sr, rest));
    }
    Ok(out)
}

/// The file's text for `entries` (at most [`MAX_ENTRIES`] of them, in a stable order).
pub fn format(entries: &HashMap<Key, Offsets>) -> String {
    let mut keys: Vec<&Key> = entries.keys().collect();
    keys.sort();
    let mut text = format!("{HEADER}\n");
    for k in keys.into_iter().take(MAX_ENTRIES) {
        let (sr, rest) = entries[k];
        text.push_str(&format!(
            "{:x} {:x} {:x} {:x} {sr:x} {rest:x}\n",
            k.0, k.1, k.2, k.3
        ));
    }
    text
}

/// Replaces the file at `path` with `entries` (its directory made if missing, mode 0700;
/// the file 0600): written under a temporary name, then renamed. Best effort: a failure is
/// logged, nothing else (the next run scans again).
pub fn store(path: &Path, entries: &HashMap<Key, Offsets>) {
    if let Err(e) = write(path, entries) {
        tracing::debug!("gadget cache {} not written: {e}", path.display());
    }
}

fn write(path: &Path, entries: &HashMap<Key, Offsets>) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no directory"))?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = stasis_sys::fs::create_private(&tmp)?;
        f.write_all(format(entries).as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path whose directory does not exist yet (`store` makes it).
    fn temp(name: &str) -> std::path::PathBuf {
        crate::fresh_test_dir(&format!("gadgets-{name}"))
            .join("cache")
            .join("gadgets")
    }

    #[test]
    fn entries_round_trip_through_the_file() {
        let path = temp("rt");
        let mut m = HashMap::new();
        m.insert((254, 1, 123456, 0x28000), (0x1172, 0x2050));
        m.insert((8, 3, 7, 0), (0x10, 0x20));
        store(&path, &m);
        assert_eq!(load(&path), m);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Replaced, not appended to.
        let mut one = HashMap::new();
        one.insert((1, 2, 3, 4), (5, 6));
        store(&path, &one);
        assert_eq!(load(&path), one);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn anything_unexpected_makes_it_ignored() {
        for bad in [
            "",
            "stasis gadgets 2\n",
            "stasis gadgets 1\n1 2 3 4 5\n",
            "stasis gadgets 1\n1 2 3 4 5 6 7\n",
            "stasis gadgets 1\n1 2 3 4 5 zz\n",
            "stasis gadgets 1\n1  2 3 4 5 6\n",
            "stasis gadgets 1\n100000000 2 3 4 5 6\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let many: String = std::iter::once(format!("{HEADER}\n"))
            .chain((0..=MAX_ENTRIES).map(|i| format!("1 2 {i:x} 0 5 6\n")))
            .collect();
        assert!(parse(&many).is_err());
        // A file others may write is not read, nor one too long.
        let path = temp("perm");
        let mut m = HashMap::new();
        m.insert((1, 2, 3, 4), (5, 6));
        store(&path, &m);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622)).unwrap();
        assert!(load(&path).is_empty());
        let long = format!("{HEADER}\n{}", "x".repeat(MAX_LEN as usize));
        std::fs::write(&path, long).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&path).is_empty());
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }
}
