//! Turns what `fuzz/seeds/collect.sh` collected (real dumps of ZDTM programs and their /proc
//! files) into the seed corpora of the fuzz targets, one small file per input, in each
//! target's input format (see the target functions of `stasis_fuzz_harness`):
//!
//! ```text
//! cargo run -p stasis-fuzz-harness --example make_corpus -- /tmp/stasis-fuzz-seeds fuzz/corpus
//! ```
//!
//! Pages files are kept without their contents (a header and zeros to their length: type 1
//! entries of `image_dir`), and their records' page-run CRCs are made those of zeros, so the
//! seeds stay small and still load, show and authenticate whole.

use stasis_client::protocol::{self, Message};
use stasis_image::{
    decode_record, encode_record, Header, ProcessImage, RecordKind, HEADER_LEN, RAW_DATA_OFFSET,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Dumps whose images become seeds of the record targets (one process each); those with a
/// small directory become seeds of `image_dir` too.
const DUMPS: &[&str] = &[
    "file_epoll",
    "file_inotify",
    "file_fanotify",
    "file_signalfd",
    "file_timerfd",
    "file_eventfd",
    "file_locks",
    "pidfd",
    "files_deleted",
    "posix_timers",
    "tree_threads",
    "seccomp_filter",
    "signals",
    "fifo",
    "file_opath",
    "files_devnull_dir",
    "files_proc_self",
    "mem_aio_ring",
    "mem_file_shared",
    "pipe_lone_end",
    "process_chroot",
    "process_stopped",
    "sock_netlink",
    "sock_packet",
    "syscall_read_pipe",
    "exe_memfd",
    "mm_fields",
    "rseq",
    "mem_cow_tree",
    "tree_mem_mixed",
    "files_deleted_linked",
];

struct Out {
    root: PathBuf,
}

impl Out {
    fn put(&self, target: &str, name: &str, data: &[u8]) -> Res<()> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), data)?;
        Ok(())
    }
}

fn payload(file: &[u8]) -> &[u8] {
    &file[HEADER_LEN..]
}

fn raw_payload_len(file: &[u8]) -> u64 {
    u64::from_le_bytes(file[16..24].try_into().expect("8 bytes"))
}

/// The payload of a process record whose page runs have the CRCs of zero pages.
fn with_zero_pages(p: &mut ProcessImage) {
    for r in &mut p.page_runs {
        let zeros = vec![0u8; (r.npages * 4096) as usize];
        r.crc = crc32c::crc32c(&zeros);
    }
}

/// An `image_dir` entry.
fn entry(out: &mut Vec<u8>, kind: u8, name: &str, bytes: &[u8], extend: Option<u32>) {
    out.push(kind);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
    if let Some(e) = extend {
        out.extend_from_slice(&e.to_le_bytes());
    }
}

fn images(src: &Path, out: &Out) -> Res<()> {
    for (i, dump) in DUMPS.iter().enumerate() {
        let dir = src.join("images").join(dump);
        if !dir.is_dir() {
            eprintln!("{dump}: no images, skipped");
            continue;
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)?
            .map(|e| Ok(e?.file_name().into_string().map_err(|_| "name")?))
            .collect::<Res<_>>()?;
        names.sort();
        let mut packed = vec![if i % 3 == 2 { 2 } else { 3 }];
        let mut kept_dump = false;
        for n in &names {
            let bytes = std::fs::read(dir.join(n))?;
            if n == "inventory.img" {
                let mut seed = vec![0u8];
                seed.extend_from_slice(payload(&bytes));
                out.put("inventory", dump, &seed)?;
                if i < 2 {
                    let mut whole = vec![3u8];
                    whole.extend_from_slice(&bytes);
                    out.put("inventory", &format!("{dump}-whole"), &whole)?;
                }
                entry(&mut packed, 0, n, &bytes, None);
            } else if n == "auth.img" {
                let (manifest, _mac): (Vec<u8>, [u8; 32]) = postcard::from_bytes(payload(&bytes))?;
                let mut seed = vec![0u8];
                seed.extend_from_slice(&manifest);
                out.put("auth_manifest", dump, &seed)?;
                if i == 0 {
                    let mut whole = vec![1u8];
                    whole.extend_from_slice(&bytes);
                    out.put("auth_manifest", &format!("{dump}-whole"), &whole)?;
                }
                entry(&mut packed, 0, n, &bytes, None);
            } else if let Some(pid) = n
                .strip_prefix("process-")
                .and_then(|s| s.strip_suffix(".img"))
            {
                let path = dir.join(n);
                let mut p: ProcessImage = decode_record(RecordKind::Process, &bytes, &path)?;
                with_zero_pages(&mut p);
                let record = encode_record(RecordKind::Process, &p, &path)?;
                let pages = std::fs::read(dir.join(format!("pages-{pid}.img")))?;
                // The first process of every dump (the others hold the same kinds).
                if !kept_dump {
                    kept_dump = true;
                    let mut seed = vec![0u8];
                    seed.extend_from_slice(&raw_payload_len(&pages).to_le_bytes());
                    seed.extend_from_slice(payload(&record));
                    out.put("process", &format!("{dump}-{pid}"), &seed)?;
                }
                entry(&mut packed, 0, n, &record, None);
            } else if n.starts_with("pages-") {
                let extend = (bytes.len() - HEADER_LEN) as u32;
                entry(&mut packed, 1, n, &bytes[..HEADER_LEN], Some(extend));
            } else if n.starts_with("blob-") {
                if bytes.len() <= 32 << 10 {
                    // Blob contents are checked by show: kept whole, header block cut to its
                    // header and zeros.
                    let mut b = bytes[..HEADER_LEN].to_vec();
                    b.extend(std::iter::repeat_n(
                        0,
                        RAW_DATA_OFFSET as usize - HEADER_LEN,
                    ));
                    b.extend_from_slice(&bytes[RAW_DATA_OFFSET as usize..]);
                    entry(&mut packed, 0, n, &b, None);
                    let mut raw = vec![5u8, 3];
                    for (kind, off, len, param) in [
                        (0u8, 0u32, 100u32, 0u16),
                        (2, 10, 20000, 4000),
                        (3, 4096, 8192, 100),
                    ] {
                        raw.push(kind);
                        raw.extend_from_slice(&off.to_le_bytes());
                        raw.extend_from_slice(&len.to_le_bytes());
                        raw.extend_from_slice(&param.to_le_bytes());
                    }
                    raw.push(0);
                    raw.extend_from_slice(&b);
                    out.put("raw_reader", &format!("{dump}-{n}"), &raw)?;
                } else {
                    let extend = (bytes.len() - HEADER_LEN) as u32;
                    entry(&mut packed, 1, n, &bytes[..HEADER_LEN], Some(extend));
                }
            }
        }
        // Directories of several processes or with data in their records are large seeds: the
        // blob of files_deleted and the page runs of every codec (inherited from a parent in
        // mem_cow_tree, zstd in tree_mem_mixed) are kept, the others are left out.
        let kept = ["files_deleted", "mem_cow_tree", "tree_mem_mixed"];
        if packed.len() > 16 << 10 && !kept.contains(dump) {
            continue;
        }
        out.put("image_dir", dump, &packed)?;
        if i < 3 {
            // Sealed, then one file changed (every kind of change, on a few files).
            for op in 0..6u8 {
                let file = op.wrapping_mul(3).wrapping_add(i as u8);
                let mut t = vec![7u8, op, file];
                t.extend_from_slice(&(1000 + u32::from(op) * 37).to_le_bytes());
                t.push(0x40);
                t.extend_from_slice(&packed[1..]);
                if op % 3 == i as u8 % 3 && (i < 2 || op < 3) {
                    out.put("image_dir", &format!("{dump}-tampered-{op}"), &t)?;
                }
            }
            // Page contents and a process record: bytes only the full check reads.
            for (n, (op, file, offset)) in [(0u8, 2u8, 5000u32), (0, 3, 100), (1, 2, 4100)]
                .into_iter()
                .enumerate()
                .filter(|(n, _)| *n == i)
            {
                let mut t = vec![7u8, op, file];
                t.extend_from_slice(&offset.to_le_bytes());
                t.push(1);
                t.extend_from_slice(&packed[1..]);
                out.put("image_dir", &format!("{dump}-tampered-data-{n}"), &t)?;
            }
        }
    }
    Ok(())
}

/// A few `raw_reader` inputs of every shape: pages and blobs, plain and authenticated, reads of
/// every kind at extent boundaries and across them.
fn raw_seeds(out: &Out) -> Res<()> {
    for flags in [0u8, 1, 2, 3] {
        let mut seed = vec![flags, 6];
        for (kind, off, len, param) in [
            (0u8, 0u32, 4096u32, 0u16),
            (1, 100, 5000, 7),
            (2, 0, 9000, 1000),
            (2, 3000, 3000, 0),
            (3, 4095, 2, 3),
            (3, 0, 9000, 4095),
        ] {
            seed.push(kind);
            seed.extend_from_slice(&off.to_le_bytes());
            seed.extend_from_slice(&len.to_le_bytes());
            seed.extend_from_slice(&param.to_le_bytes());
        }
        let cuts: [u16; 3] = [4096, 1, 3000];
        seed.push(cuts.len() as u8);
        for c in cuts {
            seed.extend_from_slice(&c.to_le_bytes());
        }
        seed.extend((0..9000u32).map(|i| (i * 7 % 251) as u8));
        out.put("raw_reader", &format!("flags-{flags}"), &seed)?;
    }
    // A whole file with its header, as read from disk.
    let header = Header {
        version: stasis_image::FORMAT_VERSION,
        kind: RecordKind::Pages as u32,
        payload_len: 16,
        payload_crc: 0,
    };
    let mut seed = vec![4u8, 1, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0];
    let mut block = vec![0u8; RAW_DATA_OFFSET as usize];
    block[..HEADER_LEN].copy_from_slice(&header.encode());
    seed.extend_from_slice(&block);
    seed.extend_from_slice(&[0xaa; 16]);
    out.put("raw_reader", "whole-file", &seed)?;
    // A compressed page run of 3 pages (`dump --compress`), decoded whole, as 2 pages (too
    // long) and cut short by a byte.
    let text: Vec<u8> = (0..2000u32)
        .flat_map(|i| {
            format!("{{\"id\": {i}, \"name\": \"user-{}\"}}\n", i * 7919 % 5003).into_bytes()
        })
        .take(3 * 4096)
        .collect();
    let frame = zstd::bulk::compress(&text, 1)?;
    let mut seed = vec![0u8, 3];
    let n = frame.len() as u32;
    for (len, npages) in [(n, 3u16), (n, 2), (n - 1, 3)] {
        seed.push(4);
        seed.extend_from_slice(&0u32.to_le_bytes());
        seed.extend_from_slice(&len.to_le_bytes());
        seed.extend_from_slice(&npages.to_le_bytes());
    }
    seed.push(0);
    seed.extend_from_slice(&frame);
    out.put("raw_reader", "zstd-run", &seed)?;
    Ok(())
}

fn protocol_seeds(out: &Out) -> Res<()> {
    let messages = [
        Message::Hello {
            version: protocol::VERSION.into(),
        },
        Message::Welcome {
            version: protocol::VERSION.into(),
        },
        Message::DumpSelf {
            flags: protocol::DUMP_WITH_CHILDREN,
            conn_fd: 3,
        },
        Message::DumpPid {
            pid: 1234,
            flags: protocol::DUMP_KILL,
        },
        Message::Restore {
            flags: protocol::RESTORE_DETACH,
        },
        Message::Done {
            outcome: protocol::OUTCOME_RESTORED,
        },
        Message::Started { pid: 99 },
        Message::Exited { status: 137 },
        Message::Failure {
            code: 3,
            message: protocol::version_mismatch_text("0.1.0", "0.2.0"),
        },
    ];
    for m in messages {
        let bytes = protocol::encode(&m)?;
        out.put("protocol", m.name(), &bytes)?;
        let mut with_fds = vec![u8::from(m.carries_fd())];
        with_fds.extend_from_slice(&bytes);
        out.put("protocol_recv", m.name(), &with_fds)?;
    }
    Ok(())
}

/// Which `fdinfo` parser reads the fdinfo of a descriptor whose link is `link`.
fn fdinfo_parser(link: &str, text: &str) -> u8 {
    match link {
        "anon_inode:[eventpoll]" => 1,
        "anon_inode:inotify" => 2,
        "anon_inode:[fanotify]" => 3,
        "anon_inode:[pidfd]" => 4,
        "anon_inode:[timerfd]" => 6,
        "anon_inode:[signalfd]" => 7,
        "anon_inode:[eventfd]" => 8,
        _ if text.contains("lock:") => 5,
        _ => 0,
    }
}

fn proc_seeds(src: &Path, out: &Out) -> Res<()> {
    let mut fdinfos = BTreeSet::new();
    let mut firsts = 0;
    for e in std::fs::read_dir(src.join("proc"))? {
        let e = e?;
        let test = e.file_name().into_string().map_err(|_| "name")?;
        let p = e.path();
        let read = |f: &str| std::fs::read(p.join(f)).unwrap_or_default();
        if firsts < 4 {
            out.put("proc_status", &test, &read("status"))?;
            out.put("proc_stat", &test, &read("stat"))?;
            out.put("proc_maps", &format!("{test}-maps"), &read("maps"))?;
            firsts += 1;
        }
        if test == "file_epoll" {
            out.put("proc_maps", "file_epoll-smaps", &read("smaps"))?;
            out.put("mountinfo", "mountinfo", &read("mountinfo"))?;
            let locks = read("locks");
            out.put("proc_misc", "locks", &[&[0u8][..], &locks].concat())?;
            if let Some(line) = locks.split(|&b| b == b'\n').next() {
                out.put("proc_misc", "locks-line", &[&[1u8][..], line].concat())?;
            }
        }
        let timers = read("timers");
        if !timers.is_empty() {
            out.put("proc_misc", "timers", &[&[2u8][..], &timers].concat())?;
        }
        for f in std::fs::read_dir(p.join("fdinfo"))? {
            let f = f?.path();
            if f.extension().is_some() {
                continue;
            }
            let text = std::fs::read_to_string(&f)?;
            let link = std::fs::read_to_string(f.with_extension("link")).unwrap_or_default();
            let which = fdinfo_parser(link.trim(), &text);
            // One of each shape: the fields without their values.
            let shape: String = text
                .lines()
                .map(|l| l.split(':').next().unwrap_or(""))
                .collect();
            if fdinfos.insert((which, shape)) {
                let name = format!(
                    "{which}-{test}-{}",
                    f.file_name().unwrap_or_default().to_string_lossy()
                );
                out.put("fdinfo", &name, &[&[which][..], text.as_bytes()].concat())?;
            }
        }
    }
    let auxv = std::fs::read("/proc/self/auxv")?;
    out.put("proc_misc", "auxv", &[&[3u8][..], &auxv].concat())?;
    let ns = std::fs::read_link("/proc/self/ns/net")?;
    out.put(
        "proc_misc",
        "nslink",
        &[&[4u8][..], ns.to_string_lossy().as_bytes()].concat(),
    )?;
    out.put("proc_misc", "number", b"\x05-1000\n")?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, src, dst] = &args[..] else {
        return Err("usage: make_corpus COLLECTED_DIR CORPUS_DIR".into());
    };
    let (src, out) = (Path::new(src), Out { root: dst.into() });
    images(src, &out)?;
    raw_seeds(&out)?;
    protocol_seeds(&out)?;
    proc_seeds(src, &out)?;
    Ok(())
}
