//! Dump phase 3: write. Pages, blobs and the process records go into the image directory,
//! each file created with its header and checksums; the inventory, written last and
//! atomically once every other file is durable, marks the dump complete.

use super::collect::Collected;
use crate::timings::Timings;
use crate::{files, pages, procfs, Error};
use stasis_image::{
    names, write_record_atomic, write_record_unsynced, ImageDir, Inventory, RawWriter, RecordKind,
};
use stasis_sys::Pid;
use std::time::Instant;

/// Writes the pages, blobs and record of every collected process. Every file created is
/// added to `written` as soon as it exists (so a failure can remove it). Returns the number
/// of mappings and of page bytes written; the time spent on pages (read from the processes
/// and written) and on the rest goes to `write.pages` and `write.records` in `timings`.
pub(crate) fn write_tree(
    dir: &ImageDir,
    collected: Vec<Collected>,
    written: &mut Vec<String>,
    timings: &mut Timings,
) -> Result<(usize, u64), Error> {
    let mut blobs_done = std::collections::HashSet::new();
    let mut shmem_done = std::collections::HashSet::new();
    let (mut mappings, mut page_bytes) = (0, 0);
    for mut c in collected {
        let _process = tracing::info_span!("process", pid = c.image.pid).entered();
        let pid = c.image.pid;
        let started = Instant::now();
        let pages_name = names::pages(pid);
        let mut pages = RawWriter::create(dir, &pages_name, RecordKind::Pages)?;
        written.push(pages_name);
        c.image.page_runs = pages::dump_pages(pid, &c.image.vmas, &mut pages, &mut shmem_done)?;
        page_bytes += pages.finish()?;
        timings.since("write.pages", started);
        let started = Instant::now();
        c.blobs.retain(|(id, _)| blobs_done.insert(*id));
        written.extend(files::write_blobs(dir, &c.blobs, &c.image.files)?);
        mappings += c.image.vmas.len();
        let process_name = names::process(pid);
        // Made durable with the other files before the inventory is written.
        write_record_unsynced(dir, &process_name, RecordKind::Process, &c.image)?;
        written.push(process_name);
        timings.since("write.records", started);
    }
    Ok((mappings, page_bytes))
}

/// Writes the inventory: the last file, whose presence marks the dump complete; durable, with
/// its directory entry, when this returns.
pub(crate) fn write_inventory(
    dir: &ImageDir,
    root: Pid,
    processes: Vec<Pid>,
    zombies: Vec<stasis_image::Zombie>,
) -> Result<(), Error> {
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: procfs::kernel_release(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        root_pid: root,
        processes,
        zombies,
    };
    write_record_atomic(dir, names::INVENTORY, RecordKind::Inventory, &inventory)?;
    // The renames into place (the inventory's last) are durable only once the directory is.
    Ok(dir.sync_dir()?)
}
