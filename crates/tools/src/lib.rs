//! `stasis-tools`: what runs behind `stasis demo` and `stasis bench`, kept out of the thin
//! `stasis` binary, which only parses their arguments and calls [`demo::run`] or [`bench::run`].
//!
//! Both start helper processes by running the current executable again with a hidden
//! subcommand, which that executable must hand back to this crate:
//!
//! | hidden subcommand                           | function               |
//! |---------------------------------------------|------------------------|
//! | `demo-counter IMAGES`                       | [`demo::counter`]      |
//! | `bench-workload MIB --threads N READY`      | [`bench::workload`]    |
//! | `bench-tree-workload PROCS THREADS READY`   | [`bench::tree_workload`] |
#![deny(unsafe_code)]

pub mod bench;
pub mod demo;

/// What every entry point returns: the process's exit code, or the error to print.
pub type ToolResult = Result<u8, Box<dyn std::error::Error>>;
