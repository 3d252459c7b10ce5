//! Hostile image files: what a user can plant in an image directory that a privileged reader
//! (stasisd restoring a user's images) then opens. Every case must fail at once, with an error
//! naming the file, and without allocating what the image claims.
//!
//! Readers that could block (a FIFO) run on a thread with a deadline, so that a regression
//! fails the test instead of hanging it.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use stasis_image::{
    read_record, Header, ImageDir, ImageError, Inventory, ProcessImage, RawReader, RawWriter,
    RecordKind, FORMAT_VERSION, HEADER_LEN, MAX_RECORD_LEN, RAW_DATA_OFFSET,
};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// How long a reader may take to refuse a file. Generous: a correct one returns in microseconds.
const DEADLINE: Duration = Duration::from_secs(5);

/// Every kind of image file, under the name a restore looks for.
const KINDS: [(&str, RecordKind); 4] = [
    ("inventory.img", RecordKind::Inventory),
    ("process-1.img", RecordKind::Process),
    ("pages-1.img", RecordKind::Pages),
    ("blob-1.img", RecordKind::Blob),
];

fn tmpdir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-files-{tag}"));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Reads `name` the way a restore does for its kind.
fn read_as(dir: &ImageDir, name: &str, kind: RecordKind) -> Result<(), ImageError> {
    match kind {
        RecordKind::Inventory => read_record::<Inventory>(dir, name, kind).map(drop),
        RecordKind::Process => read_record::<ProcessImage>(dir, name, kind).map(drop),
        RecordKind::Pages | RecordKind::Blob => RawReader::open(dir, name, kind).map(drop),
        // auth.img is read by authenticating the directory.
        RecordKind::Auth => {
            assert_eq!(name, stasis_image::names::AUTH);
            dir.authenticate(&stasis_image::ImageKey::from_secret(&[7; 32]))
                .map(drop)
        }
    }
}

/// Runs `f` on a thread; panics if it has not returned within DEADLINE (the thread is left
/// blocked, and goes away with the test process).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what}: still blocked after {DEADLINE:?}"))
}

/// Reads `name` in `d` as `kind` under the deadline; expects `NotRegular` naming the file and
/// `what`, also in the message.
fn expect_not_regular(d: &Path, name: &'static str, kind: RecordKind, what: &str) {
    let dd = d.to_path_buf();
    let r = within(&format!("reading {name} ({what})"), move || {
        read_as(&ImageDir::open(&dd).unwrap(), name, kind)
    });
    match r {
        Err(ref e @ ImageError::NotRegular { ref path, what: w }) => {
            assert_eq!(path, &d.join(name));
            assert!(w.contains(what), "{name}: {w:?} instead of {what:?}");
            let msg = e.to_string();
            assert!(
                msg.contains(name) && msg.contains(what) && msg.contains("not a regular file"),
                "unclear message: {msg}"
            );
        }
        other => panic!("{name} ({what}): expected NotRegular, got {other:?}"),
    }
}

fn run(cmd: &str, args: &[&Path]) -> bool {
    Command::new(cmd)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn write_header(path: &Path, kind: RecordKind, payload_len: u64) -> File {
    let f = File::create(path).unwrap();
    let h = Header {
        version: FORMAT_VERSION,
        kind: kind as u32,
        payload_len,
        payload_crc: 0,
    };
    f.write_all_at(&h.encode(), 0).unwrap();
    f
}

#[test]
fn fifo_in_place_of_each_image_is_refused_at_once() {
    let d = tmpdir("fifo");
    for (name, kind) in KINDS.into_iter().chain([("auth.img", RecordKind::Auth)]) {
        assert!(run("mkfifo", &[&d.join(name)]), "mkfifo {name}");
        expect_not_regular(&d, name, kind, "FIFO");
    }
    // The writer's sync of a file it wrote, which the owner of the directory replaced.
    let dd = d.clone();
    let r = within("sync_file of a FIFO", move || {
        ImageDir::open(&dd).unwrap().sync_file("pages-1.img")
    });
    assert!(
        matches!(r, Err(ImageError::NotRegular { .. })),
        "sync_file: {r:?}"
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn symlink_directory_and_socket_are_refused() {
    let d = tmpdir("others");
    // A valid image next to the links: links are refused for what they are, not for their
    // target.
    let dir = ImageDir::open(&d).unwrap();
    let mut w = RawWriter::create(&dir, "real.img", RecordKind::Pages).unwrap();
    w.write(&[1u8; 4096]).unwrap();
    w.finish().unwrap();
    RawReader::open(&dir, "real.img", RecordKind::Pages).unwrap();
    std::os::unix::fs::symlink("real.img", d.join("pages-1.img")).unwrap();
    std::os::unix::fs::symlink(d.join("real.img"), d.join("blob-1.img")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.join("inventory.img")).unwrap();
    for (name, kind) in [KINDS[0], KINDS[2], KINDS[3]] {
        expect_not_regular(&d, name, kind, "symbolic link");
    }
    fs::create_dir(d.join("process-1.img")).unwrap();
    expect_not_regular(&d, "process-1.img", RecordKind::Process, "directory");
    fs::remove_file(d.join("blob-1.img")).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(d.join("blob-1.img")).unwrap();
    expect_not_regular(&d, "blob-1.img", RecordKind::Blob, "socket");
    // A missing file stays an I/O error (not found).
    assert!(matches!(
        read_as(&dir, "process-2.img", RecordKind::Process),
        Err(ImageError::Io { .. })
    ));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn character_device_is_refused() {
    let d = tmpdir("chardev");
    // /dev/zero's numbers (1, 5): reading it would never end. Creating a device node needs
    // CAP_MKNOD (root, outside a user namespace); without it this one case is skipped.
    if !run(
        "mknod",
        &[
            &d.join("pages-1.img"),
            "c".as_ref(),
            "1".as_ref(),
            "5".as_ref(),
        ],
    ) {
        eprintln!("skipping character_device_is_refused: cannot mknod (needs CAP_MKNOD)");
        fs::remove_dir_all(&d).unwrap();
        return;
    }
    expect_not_regular(&d, "pages-1.img", RecordKind::Pages, "character device");
    fs::rename(d.join("pages-1.img"), d.join("inventory.img")).unwrap();
    expect_not_regular(
        &d,
        "inventory.img",
        RecordKind::Inventory,
        "character device",
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn header_length_beyond_the_file_is_refused_before_reading() {
    let d = tmpdir("length");
    let dir = ImageDir::open(&d).unwrap();
    // Records: a header claiming 1 MiB in a file of 42 bytes.
    let f = write_header(&d.join("process-1.img"), RecordKind::Process, 1 << 20);
    f.write_all_at(&[0u8; 10], HEADER_LEN as u64).unwrap();
    match read_record::<ProcessImage>(&dir, "process-1.img", RecordKind::Process) {
        Err(ImageError::Truncated {
            expected, found, ..
        }) => assert_eq!((expected, found), (HEADER_LEN as u64 + (1 << 20), 42)),
        other => panic!("process record: {other:?}"),
    }
    // ... claiming more than any record may hold.
    write_header(
        &d.join("inventory.img"),
        RecordKind::Inventory,
        MAX_RECORD_LEN + 1,
    );
    assert!(matches!(
        read_record::<Inventory>(&dir, "inventory.img", RecordKind::Inventory),
        Err(ImageError::TooLarge { .. })
    ));
    // ... claiming less than the file holds.
    let f = write_header(&d.join("inventory.img"), RecordKind::Inventory, 10);
    f.set_len(HEADER_LEN as u64 + 20).unwrap();
    assert!(matches!(
        read_record::<Inventory>(&dir, "inventory.img", RecordKind::Inventory),
        Err(ImageError::Invalid { .. })
    ));
    // Raw data: a header claiming 1 MiB in a file of 4196 bytes.
    let f = write_header(&d.join("pages-1.img"), RecordKind::Pages, 1 << 20);
    f.set_len(RAW_DATA_OFFSET + 100).unwrap();
    match RawReader::open(&dir, "pages-1.img", RecordKind::Pages) {
        Err(ImageError::Truncated {
            expected, found, ..
        }) => assert_eq!((expected, found), (RAW_DATA_OFFSET + (1 << 20), 4196)),
        other => panic!("pages: {:?}", other.map(|r| r.len())),
    }
    // A header cut short.
    File::create(d.join("blob-1.img"))
        .unwrap()
        .write_all_at(b"STASIS", 0)
        .unwrap();
    assert!(matches!(
        RawReader::open(&dir, "blob-1.img", RecordKind::Blob),
        Err(ImageError::Truncated { .. })
    ));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn sparse_files_claiming_huge_payloads() {
    let d = tmpdir("sparse");
    let dir = ImageDir::open(&d).unwrap();
    // A record file of 1 GiB (sparse) whose header agrees: refused from its size alone.
    let f = write_header(&d.join("process-1.img"), RecordKind::Process, 1 << 30);
    f.set_len(HEADER_LEN as u64 + (1 << 30)).unwrap();
    match read_record::<ProcessImage>(&dir, "process-1.img", RecordKind::Process) {
        Err(ImageError::TooLarge { len, limit, .. }) => {
            assert_eq!(
                (len, limit),
                (HEADER_LEN as u64 + (1 << 30), MAX_RECORD_LEN)
            )
        }
        other => panic!("sparse record: {other:?}"),
    }
    // A pages file of 2 GiB (sparse) with a consistent header is a valid file: its extents are
    // read through a fixed buffer, whatever length is asked for.
    let payload = 2u64 << 30;
    let f = write_header(&d.join("pages-1.img"), RecordKind::Pages, payload);
    f.set_len(RAW_DATA_OFFSET + payload).unwrap();
    f.write_all_at(&[0xaa; 4096], RAW_DATA_OFFSET + payload - 4096)
        .unwrap();
    let r = RawReader::open(&dir, "pages-1.img", RecordKind::Pages).unwrap();
    assert_eq!(r.len(), payload);
    let mut chunk = vec![0u8; 64 << 10];
    let (mut pieces, mut total) = (0, 0u64);
    // The whole 2 GiB run is asked for; the callback stops it after 8 MiB (reading it all
    // would only take time).
    let e = r.read_chunks(0, payload, &mut chunk, |at, bytes| {
        assert_eq!(at, total);
        assert!(bytes.len() <= 64 << 10);
        pieces += 1;
        total += bytes.len() as u64;
        if total >= 8 << 20 {
            return Err(ImageError::Invalid {
                path: PathBuf::from("stop"),
                reason: String::new(),
            });
        }
        Ok(())
    });
    assert!(matches!(e, Err(ImageError::Invalid { ref path, .. }) if path == Path::new("stop")));
    assert_eq!((pieces, total), (128, 8 << 20));
    // The end of the run, through Read.
    let mut ext = r.extent(payload - 8192, 8192).unwrap();
    let mut tail = Vec::new();
    std::io::copy(&mut ext, &mut tail).unwrap();
    assert_eq!(&tail[..4096], &[0u8; 4096][..]);
    assert_eq!(&tail[4096..], &[0xaa; 4096][..]);
    let mut want = vec![0u8; 4096];
    want.extend_from_slice(&[0xaa; 4096]);
    ext.check_crc(crc32c::crc32c(&want)).unwrap();
    // Beyond the payload: refused before reading.
    assert!(matches!(
        r.read_chunks(
            payload - 4096,
            8192,
            &mut chunk,
            |_, _| Ok::<(), ImageError>(())
        ),
        Err(ImageError::Invalid { .. })
    ));
    fs::remove_dir_all(&d).unwrap();
}
