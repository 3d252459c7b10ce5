//! Test support for the stasis workspace: the one implementation of every helper the tests
//! share, so that no test file carries its own copy. It is a dev-dependency only (never
//! published, never linked into a product).
//!
//! The end-to-end tests (`crates/cli/tests`, `crates/daemon/tests`, `crates/libstasis/tests`,
//! `crates/client/tests`) run real processes and real kernels; what they need for that is here:
//!
//! - [`env`](mod@env): the gate of tests that need something the machine may lack.
//!   [`require_root`] and [`require_tool`] return `true` when the test can run; otherwise they
//!   fail the test when `CI=true` (CI must run everything) and elsewhere print a notice and
//!   return `false`, so that the test returns early. Also the repository's root.
//! - [`process`]: starting programs isolated (own session, only stdio inherited, output to a
//!   log) and a `sleep` to dump, making the test process a child subreaper and listing the
//!   children left to it, killing and waiting for pids (children or not) with deadlines, until
//!   they exit or sleep, describing exit statuses.
//! - [`procfs`]: fields of `/proc/PID/status` and `/proc/PID/stat`, process states, children.
//! - [`wait`]: polling a condition with a deadline.
//! - [`log`]: logs that programs append to: reading them, finding lines in them.
//! - [`build`]: compiling the C test programs (`tests/zdtm/`) with gcc, the release build of
//!   libstasis, running a build command with its output in the error.
//! - [`workdir`]: a test's own directory, removed when the test passes and kept when it fails.
//! - [`user`]: an unprivileged user created for the run and removed at exit, and
//!   [`user::at_exit`] for other cleanups at exit.
//! - [`terminal`]: a pseudo-terminal the test holds as a user's terminal (types at it, reads
//!   what programs write on it).
//!
//! [`paste`] (token pasting, for macros that generate test names) is re-exported.
//!
//! The workspace denies `unsafe_code`: system calls go through the safe wrappers of
//! `stasis-sys`. The two exceptions are marked where they are: the hook that runs between fork
//! and exec ([`process::isolate`]) and the registration of the exit handler ([`user::at_exit`]),
//! for which there is no safe interface.

pub mod build;
pub mod env;
pub mod log;
pub mod process;
pub mod procfs;
pub mod terminal;
pub mod user;
pub mod wait;
pub mod workdir;

pub use env::{in_ci, is_root, repo_root, require_root, require_tool};
pub use pastey::paste;
pub use workdir::WorkDir;
