//! Dump phase 3: write. Blobs and the process records go into the image directory (the
//! pages are in their files already: [`super::page_copy`]), each file created with its header
//! and checksums; the inventory, written last (staged under a temporary name, synced with the
//! other files, then renamed into place), marks the dump complete. An incremental dump links
//! its parent in its inventory ([`crate::chain`]).

use super::collect::Collected;
use super::page_copy::{Copied, Runs};
use crate::chain::Parent;
use crate::pages::incremental::ParentRuns;
use crate::{files, pages, Error};
use stasis_image::{
    names, write_record_unsynced, ImageDir, Inventory, ParentLink, ParentPages, ProcessImage,
    RecordKind,
};
use stasis_sys::Pid;

/// Writes the blobs of every collected process (the tree is frozen) and hands back their
/// records, for [`write_records`], each with its pages as the pages thread copied them
/// (`copied`, [`super::page_copy`]). Every file created is added to `written` as soon as it
/// exists (so a failure can remove it). Returns the number of mappings and the records.
pub(crate) fn write_tree(
    dir: &ImageDir,
    collected: Vec<Collected>,
    written: &mut Vec<String>,
    mut copied: Copied,
) -> Result<(usize, Vec<Record>), Error> {
    let mut blobs_done = std::collections::HashSet::new();
    let mut mappings = 0;
    let mut records = Vec::with_capacity(collected.len());
    for mut c in collected {
        let _process = tracing::info_span!("process", pid = c.image.pid).entered();
        let runs = match copied.runs.remove(&c.image.pid) {
            Some(Runs::Copied(runs)) => {
                c.image.page_runs = runs;
                None
            }
            Some(Runs::PreCopied(finished)) => Some(*finished),
            None => {
                return Err(Error::Internal {
                    what: format!("no pages were copied for pid {}", c.image.pid),
                })
            }
        };
        c.blobs.retain(|(id, _)| blobs_done.insert(*id));
        crate::fault::point("writing blobs")?;
        written.extend(files::write_blobs(dir, &c.blobs, &c.image.files)?);
        mappings += c.image.vmas.len();
        records.push(Record {
            image: c.image,
            runs,
        });
    }
    Ok((mappings, records))
}

/// The dump's compression (`DumpOptions::compress`) and its one pool of threads, made when a
/// pages file first needs it: not while the tree is frozen when every process was pre-copied
/// (their pages are compressed once it runs on).
pub(crate) struct Zstd {
    compress: Option<pages::compress::Compression>,
    pool: Option<pages::compress::ZstdPool>,
}

impl Zstd {
    pub(crate) fn new(compress: Option<pages::compress::Compression>) -> Zstd {
        Zstd {
            compress,
            pool: None,
        }
    }

    /// Whether the pages are stored compressed.
    pub(super) fn on(&self) -> bool {
        self.compress.is_some()
    }

    /// The pool, made on first use; `None` without compression.
    pub(super) fn pool(&mut self) -> Result<Option<&mut pages::compress::ZstdPool>, Error> {
        let Some(c) = self.compress else {
            return Ok(None);
        };
        if self.pool.is_none() {
            self.pool = Some(pages::compress::ZstdPool::new(c)?);
        }
        Ok(self.pool.as_mut())
    }
}

/// The file a pre-copy of `pid` writes its pages into: its pages file, or with `scratch` (a
/// compressed or incremental dump) a scratch file that [`write_records`] stores into its
/// pages file.
pub(crate) fn pre_copy_file(pid: Pid, scratch: bool) -> String {
    if scratch {
        names::pages_scratch(pid)
    } else {
        names::pages(pid)
    }
}

/// A process record waiting to be written; the run index of a pre-copied process is built
/// when it is written, after the tree was thawed.
pub(crate) struct Record {
    image: ProcessImage,
    runs: Option<pages::precopy::Finished>,
}

/// Writes the process records (made durable with the other files before the inventory is
/// written), after completing the pages files of pre-copied processes (with `compress` or
/// `parent`, by storing their scratch files into them compressed or compared with the
/// parent: [`pages::precopy::store_scratch`]); returns the page bytes those hold.
pub(crate) fn write_records(
    dir: &ImageDir,
    records: Vec<Record>,
    written: &mut Vec<String>,
    zstd: &mut Zstd,
    mut parent: Option<&mut Parent>,
) -> Result<u64, Error> {
    let mut page_bytes = 0;
    for Record { mut image, runs } in records {
        if let Some(runs) = runs {
            let (runs, bytes) = runs.complete()?;
            if !zstd.on() && parent.is_none() {
                image.page_runs = runs;
                page_bytes += bytes;
            } else {
                let pool = zstd.pool()?;
                let pid = image.pid;
                let scratch = names::pages_scratch(pid);
                let name = names::pages(pid);
                written.push(name.clone());
                let from_parent = parent.as_deref().and_then(|p| p.process(pid));
                let parent_runs = from_parent.map(|(runs, files)| ParentRuns { runs, files });
                let (runs, bytes) = pages::precopy::store_scratch(
                    dir,
                    &scratch,
                    &name,
                    &runs,
                    &image.vmas,
                    pool,
                    parent_runs,
                )?;
                // The parent's pages files this one refers to, with their lengths now.
                let parent_len = from_parent
                    .filter(|_| runs.iter().any(|r| r.image == 1))
                    .map(|(_, files)| files.own().len());
                if let (Some(p), Some(payload_len)) = (parent.as_deref_mut(), parent_len) {
                    p.link.pages.push(ParentPages { pid, payload_len });
                }
                dir.remove(&scratch)?;
                written.retain(|n| *n != scratch);
                image.page_runs = runs;
                page_bytes += bytes;
            }
        }
        let process_name = names::process(image.pid);
        crate::fault::point("writing a process record")?;
        // Named before it exists: a write that fails half-way leaves a file to remove.
        written.push(process_name.clone());
        write_record_unsynced(dir, &process_name, RecordKind::Process, &image)?;
    }
    Ok(page_bytes)
}

/// Writes the inventory, staged ([`stasis_image::Staged`]): the caller syncs its files with
/// the others, then commits it (the last file in place, whose presence marks the dump
/// complete) and syncs the directory.
pub(crate) fn stage_inventory(
    dir: &ImageDir,
    root: Pid,
    processes: Vec<Pid>,
    zombies: Vec<stasis_image::Zombie>,
    parent: Option<ParentLink>,
) -> Result<stasis_image::Staged, Error> {
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: stasis_sys::process::kernel_release(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        root_pid: root,
        processes,
        zombies,
        parent,
    };
    crate::fault::point("writing the inventory")?;
    Ok(stasis_image::stage_inventory(dir, &inventory)?)
}
