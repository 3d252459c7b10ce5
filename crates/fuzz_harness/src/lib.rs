//! The bodies of the fuzz targets.
//!
//! `fuzz/` (a cargo-fuzz crate, outside the workspace, built with the nightly toolchain) has
//! one libFuzzer target per entry of [`TARGETS`], each a one-line call of the function here.
//! Keeping the bodies in this workspace crate lets a normal `cargo test` (on stable) run every
//! seed input of `fuzz/corpus/<target>/` and every kept crash input of
//! `fuzz/regressions/<target>/` through the same code (`tests/corpus.rs`), so a bug the fuzzers
//! found stays fixed. See `fuzz/README.md` for how to run them.
//!
//! Every body takes any bytes. It must not panic, hang or allocate beyond the bound of what it
//! decodes, whatever the input: a panic is a bug of the decoder (or a broken property the body
//! asserts, such as "what decodes encodes back to the same bytes"). The bodies `expect` only
//! what the harness itself needs from the machine (a scratch directory on tmpfs, a socket
//! pair): when that fails, the run is broken, not the code under test, and stopping is right.
//!
//! | target | what it feeds | input |
//! |--------|---------------|-------|
//! | `inventory` | `decode_record::<Inventory>` (and `read_record` from a file) | [`image::inventory`] |
//! | `process` | `decode_record::<ProcessImage>`, then `validate_process` with the engine's `KindChecks` | [`image::process`] |
//! | `auth_manifest` | `auth.img`: `ImageDir::authenticate`, then `verify_all` | [`image::auth_manifest`] |
//! | `raw_reader` | `RawReader` of a pages or blob file, plain or authenticated, read at fuzzed ranges | [`image::raw_reader`] |
//! | `image_dir` | a directory of mutated files: restore's `load`, and `stasis show` | [`image::image_dir`] |
//! | `protocol` | the stasisd message decoder (client and daemon share it) | [`protocol::decode`] |
//! | `protocol_recv` | one packet with descriptors through a real `SOCK_SEQPACKET` connection into `protocol::recv` | [`protocol::recv`] |
//! | `proc_status`, `proc_stat`, `proc_maps` | /proc/PID/status, stat, smaps (and maps) | text |
//! | `fdinfo` | /proc/PID/fdinfo/N of every kind (first byte picks the parser) | [`procfs::fdinfo`] |
//! | `mountinfo` | /proc/PID/mountinfo (the inotify and fanotify dumps read it) | text |
//! | `proc_misc` | /proc/locks, /proc/PID/timers, auxv, namespace links, numbers | [`procfs::misc`] |

pub mod image;
pub mod procfs;
pub mod protocol;
mod scratch;

/// Prints `what()` when `STASIS_FUZZ_VERBOSE` is set (to see how far the seeds get:
/// `STASIS_FUZZ_VERBOSE=1 cargo test -p stasis-fuzz-harness -- --nocapture`).
pub fn verbose(what: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("STASIS_FUZZ_VERBOSE").is_some()) {
        eprintln!("  {}", what());
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its file under `fuzz/fuzz_targets/` and of its corpus
/// directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("inventory", image::inventory),
    ("process", image::process),
    ("auth_manifest", image::auth_manifest),
    ("raw_reader", image::raw_reader),
    ("image_dir", image::image_dir),
    ("protocol", protocol::decode),
    ("protocol_recv", protocol::recv),
    ("proc_status", procfs::status),
    ("proc_stat", procfs::stat),
    ("proc_maps", procfs::maps),
    ("fdinfo", procfs::fdinfo),
    ("mountinfo", procfs::mountinfo),
    ("proc_misc", procfs::misc),
];
