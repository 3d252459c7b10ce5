//! Authenticated images (`stasis_image::auth`): what a sealing directory writes verifies with
//! its key, and every kind of tampering a user who owns the files could do is refused, naming
//! the file: a byte changed in a header, a payload or a page run (with every CRC fixed up), a
//! file truncated, added, removed, renamed or taken from another dump, the inventory or the
//! manifest edited, another key.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use stasis_image::auth::{self, ImageKey, MAX_EXTENT_LEN};
use stasis_image::{
    decode_record, encode_record, names, read_record, write_record_atomic, Header, ImageDir,
    ImageError, Inventory, RawReader, RawWriter, RecordKind, FORMAT_VERSION, HEADER_LEN,
    RAW_DATA_OFFSET,
};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn key() -> ImageKey {
    ImageKey::from_secret(&[0x5a; 32])
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("authenticated-{tag}"));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// What the test dump holds, to compare with what is read back.
struct Dump {
    inventory: Inventory,
    record: (u32, String),
    /// Page runs of the pages file, as written: (payload offset, bytes).
    runs: Vec<(u64, Vec<u8>)>,
    blob: Vec<u8>,
}

fn run_bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
        .collect()
}

/// A small dump written through a sealing directory the way the engine writes one: pages and
/// a blob (raw), a process record, the inventory last. The runs are 2 pages, 1 page, and one
/// longer than an extent; the blob is written in 1 MiB pieces.
fn write_dump(d: &Path, key: &ImageKey, seed: u8) -> Dump {
    let dir = ImageDir::open(d).unwrap();
    dir.seal(key).unwrap();
    let runs_len = [8192usize, 4096, MAX_EXTENT_LEN as usize + 8192];
    let mut pages = RawWriter::create(&dir, "pages-1.img", RecordKind::Pages).unwrap();
    let mut runs = Vec::new();
    for (i, len) in runs_len.into_iter().enumerate() {
        let bytes = run_bytes(seed.wrapping_add(i as u8), len);
        runs.push((pages.position(), bytes.clone()));
        pages.write(&bytes).unwrap();
    }
    pages.finish().unwrap();
    let blob = run_bytes(seed ^ 0x80, (1 << 20) + 1000);
    // Two blobs of one size: blob-4 holds blob-3's bytes reversed.
    for (name, bytes) in [
        ("blob-3.img", blob.clone()),
        ("blob-4.img", blob.iter().rev().copied().collect()),
    ] {
        let mut w = RawWriter::create(&dir, name, RecordKind::Blob).unwrap();
        for piece in bytes.chunks(1 << 20) {
            w.write(piece).unwrap();
        }
        w.finish().unwrap();
    }
    let record = (7u32, format!("process of dump {seed}"));
    write_record_atomic(&dir, "process-1.img", RecordKind::Process, &record).unwrap();
    let inventory = inventory(seed);
    write_record_atomic(&dir, names::INVENTORY, RecordKind::Inventory, &inventory).unwrap();
    Dump {
        inventory,
        record,
        runs,
        blob,
    }
}

fn inventory(seed: u8) -> Inventory {
    Inventory {
        tool_version: "test".into(),
        kernel_release: "6.1".into(),
        created_unix_ms: seed.into(),
        root_pid: 1,
        processes: vec![1],
        zombies: vec![],
        parent: None,
    }
}

/// A fresh handle on the dump, authenticated with `key`.
fn open_auth(d: &Path, key: &ImageKey) -> Result<ImageDir, ImageError> {
    let dir = ImageDir::open(d).unwrap();
    assert!(dir.authenticate(key)?, "no auth.img in {}", d.display());
    Ok(dir)
}

/// Everything a restore reads, read back through `dir`: the inventory, the record, every run
/// (whole, as the page fill reads runs of at most 2 MiB, and in pieces), the blob in 1 MiB
/// pieces as the blob readers do.
fn read_all(dump: &Dump, dir: &ImageDir) -> Result<(), ImageError> {
    let inv: Inventory = read_record(dir, names::INVENTORY, RecordKind::Inventory)?;
    assert_eq!(inv, dump.inventory);
    let rec: (u32, String) = read_record(dir, "process-1.img", RecordKind::Process)?;
    assert_eq!(rec, dump.record);
    let pages = RawReader::open(dir, "pages-1.img", RecordKind::Pages)?;
    for (off, bytes) in &dump.runs {
        let mut buf = vec![0u8; bytes.len().min(2 << 20)];
        pages.read_unchecked(*off, &mut buf)?;
        assert_eq!(&buf[..], &bytes[..buf.len()]);
    }
    let blob = RawReader::open(dir, "blob-3.img", RecordKind::Blob)?;
    let mut back = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    blob.read_chunks(0, blob.len(), &mut chunk, |_, b| {
        back.extend_from_slice(b);
        Ok::<(), ImageError>(())
    })?;
    assert_eq!(back, dump.blob);
    Ok(())
}

/// `r` is `NotAuthenticated` for the file `name`, and says so.
#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, ImageError>, name: &str) -> String {
    match r {
        Err(e @ ImageError::NotAuthenticated { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(name) && msg.contains("not authenticated"),
                "unclear message: {msg}"
            );
            msg
        }
        other => panic!("{name}: expected NotAuthenticated, got {other:?}"),
    }
}

#[test]
fn round_trip() {
    let d = tmpdir("round-trip");
    let dump = write_dump(&d, &key(), 1);
    let mut files = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    files.sort();
    assert_eq!(
        files,
        [
            "auth.img",
            "blob-3.img",
            "blob-4.img",
            "inventory.img",
            "pages-1.img",
            "process-1.img"
        ]
    );
    let dir = open_auth(&d, &key()).unwrap();
    assert!(dir.is_authenticated() && dir.dump_id().is_some());
    read_all(&dump, &dir).unwrap();
    auth::verify_all(&dir).unwrap();
    // Every read shape: misaligned pieces across extents, through read_chunks and extent().
    let pages = RawReader::open(&dir, "pages-1.img", RecordKind::Pages).unwrap();
    assert!(pages.is_authenticated());
    let all: Vec<u8> = dump.runs.iter().flat_map(|(_, b)| b.clone()).collect();
    let mut chunk = vec![0u8; 5000];
    let mut back = Vec::new();
    pages
        .read_chunks(100, all.len() as u64 - 200, &mut chunk, |_, b| {
            back.extend_from_slice(b);
            Ok::<(), ImageError>(())
        })
        .unwrap();
    assert_eq!(back, &all[100..all.len() - 100]);
    let mut ext = pages.extent(4000, 20_000).unwrap();
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut ext, &mut v).unwrap();
    assert_eq!(v, &all[4000..24_000]);

    // The same files without the manifest are plain images again: readable without a key.
    fs::remove_file(d.join(names::AUTH)).unwrap();
    let plain = ImageDir::open(&d).unwrap();
    assert!(!plain.authenticate(&key()).unwrap());
    assert!(!plain.is_authenticated());
    read_all(&dump, &plain).unwrap();
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn wrong_key_is_refused() {
    let d = tmpdir("wrong-key");
    write_dump(&d, &key(), 2);
    let other = ImageKey::from_secret(&[0x5b; 32]);
    refused(
        ImageDir::open(&d).unwrap().authenticate(&other),
        names::AUTH,
    );
    fs::remove_dir_all(&d).unwrap();
}

/// Flips one byte at `at` of `name` (fixing up the header CRC when the byte is in the
/// header, so that only the MAC can tell).
fn flip(d: &Path, name: &str, at: usize) {
    let p = d.join(name);
    let mut b = fs::read(&p).unwrap();
    b[at] ^= 0x40;
    if at < 28 {
        let crc = crc32c::crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
    }
    fs::write(&p, b).unwrap();
}

#[test]
fn byte_changed_in_a_raw_header_block_is_refused() {
    let d = tmpdir("raw-header");
    let dump = write_dump(&d, &key(), 3);
    // The unused CRC field of a raw header (header CRC fixed up), then a byte of the padding:
    // both parse; only the MAC sees them.
    flip(&d, "pages-1.img", 24);
    refused(
        RawReader::open(
            &open_auth(&d, &key()).unwrap(),
            "pages-1.img",
            RecordKind::Pages,
        ),
        "pages-1.img",
    );
    flip(&d, "pages-1.img", 24);
    flip(&d, "blob-3.img", 1000);
    let dir = open_auth(&d, &key()).unwrap();
    refused(read_all(&dump, &dir), "blob-3.img");
    refused(auth::verify_all(&dir), "blob-3.img");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn byte_changed_in_a_record_is_refused() {
    let d = tmpdir("record");
    let dump = write_dump(&d, &key(), 4);
    let p = d.join("process-1.img");
    let original = fs::read(&p).unwrap();
    // Re-encoded with valid CRCs: a well-formed record, which the MAC refuses.
    let mut rec: (u32, String) = decode_record(RecordKind::Process, &original, &p).unwrap();
    rec.0 = 0;
    fs::write(&p, encode_record(RecordKind::Process, &rec, &p).unwrap()).unwrap();
    let dir = open_auth(&d, &key()).unwrap();
    let msg = refused(
        read_record::<(u32, String)>(&dir, "process-1.img", RecordKind::Process),
        "process-1.img",
    );
    assert!(msg.contains("MAC"), "{msg}");
    // A header field (the kind's neighbour: the version, with the header CRC fixed up) is
    // refused too, by the version check before the MAC.
    fs::write(&p, &original).unwrap();
    flip(&d, "process-1.img", 9);
    let dir = open_auth(&d, &key()).unwrap();
    assert!(matches!(
        read_record::<(u32, String)>(&dir, "process-1.img", RecordKind::Process),
        Err(ImageError::BadVersion { .. })
    ));
    fs::write(&p, &original).unwrap();
    read_all(&dump, &open_auth(&d, &key()).unwrap()).unwrap();
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn byte_changed_in_a_page_run_is_refused_when_read() {
    let d = tmpdir("page-run");
    let dump = write_dump(&d, &key(), 5);
    // A byte of the second run (CRCs do not matter: the image crate does not keep them).
    let (off, bytes) = &dump.runs[1];
    flip(&d, "pages-1.img", (RAW_DATA_OFFSET + off) as usize + 77);
    let dir = open_auth(&d, &key()).unwrap();
    let pages = RawReader::open(&dir, "pages-1.img", RecordKind::Pages).unwrap();
    // The other runs still read; this one does not, whole or in part, and its bytes never
    // reach the caller's buffer.
    let (off0, first) = &dump.runs[0];
    let mut buf = vec![0u8; first.len()];
    pages.read_unchecked(*off0, &mut buf).unwrap();
    let mut buf = vec![0u8; bytes.len()];
    let msg = refused(pages.read_unchecked(*off, &mut buf), "pages-1.img");
    assert!(msg.contains(&format!("{off}..")), "{msg}");
    let mut part = vec![0u8; 100];
    refused(pages.read_unchecked(off + 10, &mut part), "pages-1.img");
    assert!(
        part.iter().all(|&b| b == 0),
        "unverified bytes were handed out"
    );
    refused(auth::verify_all(&dir), "pages-1.img");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn truncated_or_extended_file_is_refused() {
    let d = tmpdir("truncated");
    write_dump(&d, &key(), 6);
    for (name, kind) in [
        ("pages-1.img", RecordKind::Pages),
        ("process-1.img", RecordKind::Process),
    ] {
        let p = d.join(name);
        let original = fs::read(&p).unwrap();
        // Cut, with the header's length fixed up so that the file is consistent in itself.
        let by = if kind == RecordKind::Pages { 4096 } else { 4 };
        let mut cut = original[..original.len() - by].to_vec();
        let payload = (cut.len() as u64)
            - if kind == RecordKind::Pages {
                RAW_DATA_OFFSET
            } else {
                HEADER_LEN as u64
            };
        let h = Header {
            version: FORMAT_VERSION,
            kind: kind as u32,
            payload_len: payload,
            payload_crc: if kind == RecordKind::Pages {
                0
            } else {
                crc32c::crc32c(&cut[HEADER_LEN..])
            },
        };
        cut[..HEADER_LEN].copy_from_slice(&h.encode());
        fs::write(&p, &cut).unwrap();
        let dir = open_auth(&d, &key()).unwrap();
        let r = match kind {
            RecordKind::Pages => RawReader::open(&dir, name, kind).map(drop),
            _ => read_record::<(u32, String)>(&dir, name, kind).map(drop),
        };
        let msg = refused(r, name);
        assert!(msg.contains("bytes, auth.img says"), "{msg}");
        fs::write(&p, &original).unwrap();
    }
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn unlisted_file_is_refused() {
    let d = tmpdir("extra");
    write_dump(&d, &key(), 7);
    // A blob the dump did not write, well-formed, planted next to the others.
    let plain = ImageDir::open(&d).unwrap();
    let mut w = RawWriter::create(&plain, "blob-9.img", RecordKind::Blob).unwrap();
    w.write(b"planted").unwrap();
    w.finish().unwrap();
    let dir = open_auth(&d, &key()).unwrap();
    let msg = refused(
        RawReader::open(&dir, "blob-9.img", RecordKind::Blob),
        "blob-9.img",
    );
    assert!(msg.contains("not listed"), "{msg}");
    refused(auth::verify_all(&dir), "blob-9.img");
    // A listed file read as another kind.
    refused(
        RawReader::open(&dir, "process-1.img", RecordKind::Blob),
        "process-1.img",
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn missing_file_is_refused() {
    let d = tmpdir("missing");
    write_dump(&d, &key(), 8);
    fs::remove_file(d.join("blob-3.img")).unwrap();
    let dir = open_auth(&d, &key()).unwrap();
    let msg = refused(
        RawReader::open(&dir, "blob-3.img", RecordKind::Blob),
        "blob-3.img",
    );
    assert!(msg.contains("listed in auth.img, but missing"), "{msg}");
    let msg = refused(auth::verify_all(&dir), "blob-3.img");
    assert!(msg.contains("missing"), "{msg}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn files_swapped_between_names_or_dumps_are_refused() {
    let a = tmpdir("swap-a");
    let b = tmpdir("swap-b");
    // Same key, same process, same file names and sizes, other contents. (A file of another
    // dump with the very same bytes would be accepted: it is what this dump wrote.)
    let dump_a = write_dump(&a, &key(), 9);
    write_dump(&b, &key(), 19);
    for name in [
        "pages-1.img",
        "blob-3.img",
        "process-1.img",
        names::INVENTORY,
    ] {
        let mine = fs::read(a.join(name)).unwrap();
        fs::copy(b.join(name), a.join(name)).unwrap();
        refused(read_all(&dump_a, &open_auth(&a, &key()).unwrap()), name);
        fs::write(a.join(name), mine).unwrap();
    }
    read_all(&dump_a, &open_auth(&a, &key()).unwrap()).unwrap();
    // The whole manifest of the other dump: the files of this one do not match it.
    let mine = fs::read(a.join(names::AUTH)).unwrap();
    fs::copy(b.join(names::AUTH), a.join(names::AUTH)).unwrap();
    refused(
        read_record::<Inventory>(
            &open_auth(&a, &key()).unwrap(),
            names::INVENTORY,
            RecordKind::Inventory,
        ),
        names::INVENTORY,
    );
    fs::write(a.join(names::AUTH), mine).unwrap();

    // Two files of one dump, of one kind and size, swapped.
    fs::rename(a.join("blob-3.img"), a.join("tmp")).unwrap();
    fs::rename(a.join("blob-4.img"), a.join("blob-3.img")).unwrap();
    fs::rename(a.join("tmp"), a.join("blob-4.img")).unwrap();
    refused(
        read_all(&dump_a, &open_auth(&a, &key()).unwrap()),
        "blob-3.img",
    );
    // A pages file under a blob's name (kind fixed up).
    let w = ImageDir::open(&a).unwrap();
    let mut pw = RawWriter::create(&w, "blob-3.img.new", RecordKind::Blob).unwrap();
    let pages = fs::read(a.join("pages-1.img")).unwrap();
    pw.write(&pages[RAW_DATA_OFFSET as usize..]).unwrap();
    pw.finish().unwrap();
    fs::rename(a.join("blob-3.img.new"), a.join("blob-3.img")).unwrap();
    let dir = open_auth(&a, &key()).unwrap();
    refused(
        RawReader::open(&dir, "blob-3.img", RecordKind::Blob),
        "blob-3.img",
    );
    fs::remove_dir_all(&a).unwrap();
    fs::remove_dir_all(&b).unwrap();
}

#[test]
fn edited_inventory_or_manifest_is_refused() {
    let d = tmpdir("inventory");
    let dump = write_dump(&d, &key(), 10);
    let p = d.join(names::INVENTORY);
    let original = fs::read(&p).unwrap();
    let mut inv: Inventory = decode_record(RecordKind::Inventory, &original, &p).unwrap();
    inv.root_pid = 2;
    inv.processes = vec![2];
    fs::write(&p, encode_record(RecordKind::Inventory, &inv, &p).unwrap()).unwrap();
    refused(
        read_record::<Inventory>(
            &open_auth(&d, &key()).unwrap(),
            names::INVENTORY,
            RecordKind::Inventory,
        ),
        names::INVENTORY,
    );
    fs::write(&p, &original).unwrap();

    // Any byte of auth.img: its CRC or its MAC catches it.
    let a = d.join(names::AUTH);
    let manifest = fs::read(&a).unwrap();
    for at in [HEADER_LEN + 3, manifest.len() / 2, manifest.len() - 1] {
        let mut m = manifest.clone();
        m[at] ^= 1;
        fs::write(&a, &m).unwrap();
        let r = ImageDir::open(&d).unwrap().authenticate(&key());
        assert!(r.is_err(), "auth.img changed at {at}: {r:?}");
    }
    // Removing the manifest leaves plain, unauthenticated images.
    fs::remove_file(&a).unwrap();
    assert!(!ImageDir::open(&d).unwrap().authenticate(&key()).unwrap());
    fs::write(&a, &manifest).unwrap();
    read_all(&dump, &open_auth(&d, &key()).unwrap()).unwrap();
    fs::remove_dir_all(&d).unwrap();
}

/// The check happens when the bytes are read, on the bytes read: a reader opened (and its
/// header checked) before the file is rewritten still refuses the new bytes.
#[test]
fn rewriting_after_open_is_caught_at_read() {
    let d = tmpdir("toctou");
    let dump = write_dump(&d, &key(), 11);
    let dir = open_auth(&d, &key()).unwrap();
    let pages = RawReader::open(&dir, "pages-1.img", RecordKind::Pages).unwrap();
    let (off, bytes) = &dump.runs[0];
    // The same file (same inode), rewritten in place after the open.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d.join("pages-1.img"))
        .unwrap();
    f.write_all_at(b"evil", RAW_DATA_OFFSET + off).unwrap();
    let mut buf = vec![0u8; bytes.len()];
    refused(pages.read_unchecked(*off, &mut buf), "pages-1.img");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn reseal_vouches_for_edited_files() {
    let d = tmpdir("reseal");
    write_dump(&d, &key(), 12);
    let p = d.join("process-1.img");
    let rec = (8u32, "edited on purpose, by the key's holder".to_string());
    fs::write(&p, encode_record(RecordKind::Process, &rec, &p).unwrap()).unwrap();
    let dir = open_auth(&d, &key()).unwrap();
    refused(
        read_record::<(u32, String)>(&dir, "process-1.img", RecordKind::Process),
        "process-1.img",
    );
    let id = dir.dump_id();
    auth::reseal(&ImageDir::open(&d).unwrap(), &key()).unwrap();
    let dir = open_auth(&d, &key()).unwrap();
    assert_eq!(dir.dump_id(), id, "the dump keeps its id");
    let back: (u32, String) = read_record(&dir, "process-1.img", RecordKind::Process).unwrap();
    assert_eq!(back, rec);
    auth::verify_all(&dir).unwrap();
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_handle_seals_or_authenticates_once() {
    let d = tmpdir("once");
    write_dump(&d, &key(), 13);
    let dir = open_auth(&d, &key()).unwrap();
    assert!(dir.authenticate(&key()).is_err());
    assert!(dir.seal(&key()).is_err());
    let w = ImageDir::open(&d).unwrap();
    w.seal(&key()).unwrap();
    assert!(w.seal(&key()).is_err());
    assert!(w.authenticate(&key()).is_err());
    // A clone starts afresh.
    assert!(dir.try_clone().unwrap().authenticate(&key()).unwrap());
    fs::remove_dir_all(&d).unwrap();
}
