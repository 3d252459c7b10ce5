//! Memory: the mappings of a process and the contents of their pages, dumped and restored.
//!
//! # Facade
//!
//! The orchestration (`dump`, `restore`) uses only these:
//!
//! | side    | function                   | job                                                       |
//! |---------|----------------------------|-----------------------------------------------------------|
//! | dump    | [`collect_vmas`]           | the process's mappings as image records; refuses what cannot be restored |
//! | dump    | [`dump_pages`]             | page contents into the pages file; returns the run index   |
//! | dump    | [`dump_future_lock`]       | mlockall(MCL_FUTURE) in effect, from the scratch area's flags |
//! | restore | [`ShmemOwners`]            | which process creates each shared anonymous memory object  |
//! | restore | [`move_specials`]          | vdso/vvar moved to their dumped addresses                  |
//! | restore | [`unmap_all_but_specials`] | the child's inherited mappings removed                     |
//! | restore | [`free_scratch_address`]   | a hole of the dumped layout for the injector's scratch     |
//! | restore | [`map_vmas`]               | every mapping recreated (writable while filled)            |
//! | restore | [`fill_pages`]             | page contents written into the child                       |
//! | restore | [`lazy::register`]         | (`--lazy`) private memory registered on a userfaultfd instead |
//! | restore | [`lazy::spawn_server`]     | (`--lazy`) the page server forked once the tree runs        |
//! | restore | [`finish_protections`]     | final protections of the mappings made writable            |
//! | restore | [`apply_advice`]           | madvise, mlock, mlockall(MCL_FUTURE) and mseal as dumped   |
//!
//! # Parts
//!
//! * [`vma`]: classification of /proc/PID/smaps entries into [`stasis_image::Vma`] records.
//! * [`advice`]: what madvise, mlock and mseal left on each mapping (its VmFlags), and
//!   mlockall(MCL_FUTURE); dumped with the mappings, re-applied once they are final.
//! * [`source`] → [`dump`](mod@dump) → [`sink`]: on the dump side a [`PageSource`] hands out
//!   runs of pages that may hold data (today [`source::PagemapSource`]: a pagemap scan, and
//!   SEEK_DATA over shared memory), [`dump::copy_pages`] drops the all-zero pages, and a
//!   [`PageSink`] stores the rest and produces the run index (today [`sink::RawSink`]: the raw
//!   pages file; with `--compress`, [`compress::ZstdSink`]: each run one zstd frame,
//!   compressed by worker threads). Dirty tracking plugs in as a source; incremental or
//!   streamed output as a sink: [`incremental::IncrementalSink`] (`stasis dump --parent`)
//!   stores only the pages that differ from the parent dump's and refers to the parent's runs
//!   for the others.
//! * [`cow`]: copy-on-write sharing between a parent and its children: pages shared at
//!   dump time are stored once (the child's runs say inherited) and shared again after the
//!   restore (the parent prepares that memory before it forks the child).
//! * [`precopy`]: a leave-running dump copies the memory while the process runs, tracking its
//!   writes (userfaultfd WP_ASYNC + PAGEMAP_SCAN), and freezes it again only for the pages
//!   written since the last pass.
//! * [`layout`]: the restore layout inside the target, as pure plans carried out by injected
//!   system calls.
//! * [`buffer`]: the buffer page contents pass through on both sides, small at first.
//! * [`fill`]: on the restore side a [`PageFill`] puts the pages into the target (today
//!   [`fill::EagerFill`]: every run read from the image, CRC-checked and written with
//!   process_vm_writev; compressed runs decoded by [`compress::RunDecoder`]); [`lazy`]:
//!   served on first touch by a userfaultfd page server.
//!
//! Page data stays apart from the metadata: the pages file holds the bytes, the process record
//! holds the mappings and the run index (docs/image-format.md).

pub mod advice;
pub mod buffer;
pub mod compress;
pub mod cow;
pub mod dump;
pub mod fill;
pub mod incremental;
pub mod layout;
pub mod lazy;
pub mod precopy;
pub mod sink;
pub mod source;
pub mod vma;

pub use self::advice::{apply_advice, dump_future_lock};
pub use self::dump::dump_pages;
pub use self::fill::{fill_pages, PageFill};
pub use self::layout::{
    finish_protections, free_scratch_address, map_vmas, move_specials, unmap_all_but_specials,
    unmap_temporary_specials, ShmemOwners,
};
pub use self::sink::PageSink;
pub use self::source::PageSource;
pub use self::vma::collect_vmas;
