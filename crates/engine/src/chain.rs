//! Chains of incremental dumps (`stasis dump --parent DIR`, docs/image-format.md "Incremental
//! dumps"): opening the ancestors of an image directory, checking that each is the very dump
//! its child was made against, and the pages files of one process across the chain.
//!
//! A dump's inventory may name its parent ([`ParentLink`]): the parent's directory (relative to
//! the child's when they share a directory other than `/`, absolute otherwise), the BLAKE3 of
//! the parent's `inventory.img` and the payload length of each of the parent's pages files the
//! child refers to. [`open_ancestors`] follows the links (at most [`MAX_CHAIN_DEPTH`], never
//! the same directory twice) and refuses, as [`Error::BrokenChain`], a parent that is missing,
//! holds no complete dump, or was replaced or changed since (another inventory, a pages file of
//! another length). The bytes of every run are still checked against the run's CRC as they
//! are read, and in authenticated images against the MACs of the image that holds them.
//!
//! Parents are opened by the path from the image, with ordinary path resolution, by the
//! process that loads the images: a restore through stasisd does that in the restorer that
//! already runs with the requester's credentials (`restore::as_user`), so a user can only
//! name a parent they could open themselves.

use crate::pages::fill::RunReader;
use crate::Error;
use stasis_image::{
    names, read_record, ImageDir, ImageKey, Inventory, PageRun, ParentLink, RawReader, RecordKind,
    HEADER_LEN, MAX_CHAIN_DEPTH, MAX_RECORD_LEN,
};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

/// How the images of a chain are authenticated: every ancestor the same way as the dump
/// itself (see [`crate::restore::authenticate`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainAuth<'a> {
    pub key: Option<&'a ImageKey>,
    /// Refuse an image of the chain that cannot be authenticated with `key`.
    pub required: bool,
    /// Refuse an ancestor that is not authenticated unless root alone could have written it
    /// (root's restore of images as they are, [`crate::restore::as_user::images_writers`]):
    /// a parent a user could write would give that user the restored memory.
    pub root_only_unless_authenticated: bool,
}

/// Longest list of parent pages files a link may hold.
const MAX_LINK_PAGES: usize = 1 << 16;

/// Opens the ancestors of the dump in `dir`, whose inventory is `inventory`: the result's
/// element `k - 1` is image `k` of the chain (1 the parent). Each is authenticated as `auth`
/// says and checked against the link of its child.
pub fn open_ancestors(
    dir: &ImageDir,
    inventory: &Inventory,
    auth: ChainAuth<'_>,
) -> Result<Vec<ImageDir>, Error> {
    let mut seen = HashSet::from([dir.identity()?]);
    let mut ancestors: Vec<ImageDir> = Vec::new();
    let mut link = inventory.parent.clone();
    while let Some(l) = link {
        let child = ancestors.last().unwrap_or(dir);
        let broken = |reason: String| Error::BrokenChain {
            image: child.label().to_path_buf(),
            parent: l.path.clone(),
            reason,
        };
        if ancestors.len() >= MAX_CHAIN_DEPTH {
            return Err(broken(format!(
                "is beyond the longest chain followed ({MAX_CHAIN_DEPTH} dumps)"
            )));
        }
        if l.path.is_empty() || l.path.contains('\0') || l.pages.len() > MAX_LINK_PAGES {
            return Err(broken("is named by an invalid link".into()));
        }
        let parent = child
            .open_relative(Path::new(&l.path))
            .map_err(|e| broken(format!("cannot be opened: {e}")))?;
        if !seen.insert(parent.identity()?) {
            return Err(broken(
                "is already a dump of this chain (the chain is a cycle)".into(),
            ));
        }
        let authenticated = crate::restore::authenticate(&parent, auth.key, auth.required)?;
        if auth.root_only_unless_authenticated && !authenticated {
            use crate::restore::as_user::{images_writers, ImagesWriters};
            match images_writers(&parent)? {
                ImagesWriters::Root => {}
                ImagesWriters::User { uid, .. } => {
                    return Err(broken(format!(
                        "is not authenticated and uid {uid} could have written it: its pages \
                         would be restored with root's power (make it root's alone, or dump \
                         with the image key)"
                    )))
                }
                ImagesWriters::NoSingleUser { why } => {
                    return Err(broken(format!(
                        "is not authenticated and not root's alone ({why})"
                    )))
                }
            }
        }
        if !parent.exists(names::INVENTORY) {
            return Err(broken(
                "holds no complete dump (no inventory.img): it was removed or never finished"
                    .into(),
            ));
        }
        let digest = parent
            .digest_file(names::INVENTORY, MAX_RECORD_LEN + HEADER_LEN as u64)
            .map_err(|e| broken(e.to_string()))?;
        if digest != l.inventory_blake3 {
            return Err(broken(
                "was replaced or changed since this dump was made (its inventory.img differs)"
                    .into(),
            ));
        }
        let parent_inventory: Inventory =
            read_record(&parent, names::INVENTORY, RecordKind::Inventory)?;
        for p in &l.pages {
            let name = names::pages(p.pid);
            let pages = RawReader::open(&parent, &name, RecordKind::Pages)
                .map_err(|e| broken(format!("cannot be used: {e}")))?;
            if pages.len() != p.payload_len {
                return Err(broken(format!(
                    "was changed since this dump was made: its {name} holds {} payload bytes, {} then",
                    pages.len(),
                    p.payload_len
                )));
            }
        }
        tracing::debug!(image = ancestors.len() + 1, parent = %parent.label().display(), "chain");
        link = parent_inventory.parent;
        ancestors.push(parent);
    }
    Ok(ancestors)
}

/// The pages files of one process across a chain: element `k` is its pages file in image
/// `k` (0 the dump itself), open only where one of its runs is.
#[derive(Debug)]
pub struct ChainPages {
    files: Vec<Option<RawReader>>,
}

impl ChainPages {
    /// Opens `pages-PID.img` of `dir` and of each ancestor (`ancestors[k - 1]` is image `k`)
    /// that one of `runs` is in. A run of an image beyond the chain is left for the record's
    /// check ([`stasis_image::validate_process_in_chain`]) to refuse.
    pub fn open(
        dir: &ImageDir,
        ancestors: &[ImageDir],
        pid: i32,
        runs: &[PageRun],
    ) -> Result<ChainPages, Error> {
        let name = names::pages(pid);
        let mut files = vec![Some(RawReader::open(dir, &name, RecordKind::Pages)?)];
        let mut used = vec![false; ancestors.len()];
        for r in runs {
            if let Some(u) = (r.image as usize)
                .checked_sub(1)
                .and_then(|k| used.get_mut(k))
            {
                *u = true;
            }
        }
        for (a, used) in ancestors.iter().zip(used) {
            files.push(if used {
                Some(RawReader::open(a, &name, RecordKind::Pages)?)
            } else {
                None
            });
        }
        Ok(ChainPages { files })
    }

    /// Only this dump's own pages file (a dump without a parent).
    pub fn single(pages: RawReader) -> ChainPages {
        ChainPages {
            files: vec![Some(pages)],
        }
    }

    /// The pages file of image `image`, when open.
    pub fn file(&self, image: u32) -> Option<&RawReader> {
        self.files.get(image as usize).and_then(Option::as_ref)
    }

    /// This dump's own pages file.
    pub fn own(&self) -> &RawReader {
        // Always opened first by both constructors.
        self.files[0]
            .as_ref()
            .expect("the pages file of image 0 is always open")
    }

    /// The payload length of the pages file of each image (`None` where not open), for
    /// [`stasis_image::validate_process_in_chain`].
    pub fn lens(&self) -> Vec<Option<u64>> {
        self.files
            .iter()
            .map(|f| f.as_ref().map(RawReader::len))
            .collect()
    }
}

impl RunReader for ChainPages {
    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.own().read_bytes(offset, buf)
    }

    fn bad_crc(&self, run: &PageRun) -> Error {
        self.own().bad_crc(run)
    }

    fn in_image(&self, image: u32) -> Option<&dyn RunReader> {
        self.file(image).map(|f| f as &dyn RunReader)
    }
}

/// The parent of a dump being made: opened, its chain checked and loaded.
pub struct Parent {
    /// What the child's inventory records about it.
    pub link: ParentLink,
    /// Every process of the parent with its pages across the parent's chain.
    pub loaded: crate::restore::Loaded,
}

impl Parent {
    /// Opens the dump at `path` (as the user gave it) as the parent of a dump into `child`:
    /// loads and checks it and its chain, and makes the link the child records. The child's
    /// chain must stay within [`MAX_CHAIN_DEPTH`].
    ///
    /// The parent's pages are read without authentication: they are only compared with the
    /// process's, and a page referred to gets the CRC of the process's bytes; the restore
    /// checks them against the parent's `auth.img` (and that CRC) when it reads them.
    pub fn open(child: &ImageDir, path: &Path) -> Result<Parent, Error> {
        let broken = |reason: String| Error::BrokenChain {
            image: child.label().to_path_buf(),
            parent: path.display().to_string(),
            reason,
        };
        let dir = ImageDir::open(path).map_err(|e| broken(format!("cannot be opened: {e}")))?;
        if dir.identity()? == child.identity()? {
            return Err(broken("is the directory the dump goes into".into()));
        }
        if !dir.exists(names::INVENTORY) {
            return Err(broken("holds no complete dump (no inventory.img)".into()));
        }
        let loaded = crate::restore::load::load_chain(&dir, ChainAuth::default())?;
        if loaded.depth + 1 > MAX_CHAIN_DEPTH {
            return Err(broken(format!(
                "ends a chain of {MAX_CHAIN_DEPTH} dumps already: make a full dump"
            )));
        }
        let inventory_blake3 =
            dir.digest_file(names::INVENTORY, MAX_RECORD_LEN + HEADER_LEN as u64)?;
        let link = ParentLink {
            path: link_path(child.label(), path)?,
            inventory_blake3,
            pages: Vec::new(),
        };
        Ok(Parent { link, loaded })
    }

    /// The parent's runs and pages of process `pid`, if it was in the parent dump.
    pub fn process(&self, pid: i32) -> Option<(&[PageRun], &ChainPages)> {
        self.loaded
            .processes
            .iter()
            .find(|(p, _)| p.pid == pid)
            .map(|(p, pages)| (&p.page_runs[..], pages))
    }
}

/// The path a child dump in `child` records for its parent at `parent`: relative to the child
/// when both (made absolute and canonical) share a directory other than `/`, absolute
/// otherwise.
pub fn link_path(child: &Path, parent: &Path) -> Result<String, Error> {
    let canon = |p: &Path| {
        std::fs::canonicalize(p).map_err(|e| Error::io(format!("resolving {}", p.display()), e))
    };
    let parent = canon(parent)?;
    let path = match canon(child) {
        Ok(child) => relative_path(&child, &parent).unwrap_or(parent),
        Err(_) => parent,
    };
    path.to_str().map(str::to_string).ok_or_else(|| {
        Error::Invalid(format!(
            "the parent dump's path {} is not UTF-8",
            path.display()
        ))
    })
}

/// `to` relative to `from` (both absolute and canonical), or `None` when they share no
/// directory but `/`.
fn relative_path(from: &Path, to: &Path) -> Option<PathBuf> {
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    // The first component is the root: sharing only it is sharing nothing.
    if common <= 1 {
        return None;
    }
    let mut rel = PathBuf::new();
    for _ in common..a.len() {
        rel.push("..");
    }
    for c in &b[common..] {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_image::{write_record_atomic, ParentPages, RawWriter};

    fn inventory(ms: u64, parent: Option<ParentLink>) -> Inventory {
        Inventory {
            tool_version: "test".into(),
            kernel_release: "6.18".into(),
            created_unix_ms: ms,
            root_pid: 7,
            processes: vec![7],
            zombies: vec![],
            parent,
        }
    }

    /// Makes dump `name` in `base`: a pages file of `pages` bytes for pid 7, and an
    /// inventory linking `parent` (a directory of `base`) when given.
    fn make(base: &Path, name: &str, pages: usize, parent: Option<&str>) -> ImageDir {
        let dir = ImageDir::create(&base.join(name)).unwrap();
        let mut w = RawWriter::create(&dir, &names::pages(7), RecordKind::Pages).unwrap();
        w.write(&vec![1u8; pages]).unwrap();
        w.finish().unwrap();
        let link = parent.map(|p| {
            let pd = ImageDir::open(&base.join(p)).unwrap();
            ParentLink {
                path: format!("../{p}"),
                inventory_blake3: pd.digest_file(names::INVENTORY, 1 << 20).unwrap(),
                pages: vec![ParentPages {
                    pid: 7,
                    payload_len: RawReader::open(&pd, &names::pages(7), RecordKind::Pages)
                        .unwrap()
                        .len(),
                }],
            }
        });
        write_record_atomic(
            &dir,
            names::INVENTORY,
            RecordKind::Inventory,
            &inventory(1, link),
        )
        .unwrap();
        dir
    }

    fn ancestors_of(dir: &ImageDir) -> Result<Vec<ImageDir>, Error> {
        let inv: Inventory = read_record(dir, names::INVENTORY, RecordKind::Inventory).unwrap();
        open_ancestors(dir, &inv, ChainAuth::default())
    }

    fn temp(name: &str) -> PathBuf {
        crate::fresh_test_dir(&format!("chain-{name}"))
    }

    #[test]
    fn a_chain_opens_and_a_broken_one_is_refused() {
        let base = temp("broken");
        make(&base, "d1", 4096, None);
        make(&base, "d2", 8192, Some("d1"));
        let d3 = make(&base, "d3", 4096, Some("d2"));
        let a = ancestors_of(&d3).unwrap();
        assert_eq!(a.len(), 2);
        assert!(
            a[1].label().ends_with("d3/../d2/../d1"),
            "{:?}",
            a[1].label()
        );
        let expect = |what: &str| {
            let err = ancestors_of(&d3).unwrap_err();
            assert!(matches!(err, Error::BrokenChain { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(what), "{msg}");
        };
        // The grandparent missing.
        std::fs::rename(base.join("d1"), base.join("d1-away")).unwrap();
        expect("../d1 cannot be opened");
        // Another dump in its place (same files, another inventory).
        make(&base, "d1", 4096, None);
        let other = inventory(2, None);
        write_record_atomic(
            &ImageDir::open(&base.join("d1")).unwrap(),
            names::INVENTORY,
            RecordKind::Inventory,
            &other,
        )
        .unwrap();
        expect("../d1 was replaced or changed");
        std::fs::remove_dir_all(base.join("d1")).unwrap();
        std::fs::rename(base.join("d1-away"), base.join("d1")).unwrap();
        ancestors_of(&d3).unwrap();
        // A pages file of the parent of another length.
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(base.join("d2").join(names::pages(7)))
            .unwrap();
        f.set_len(f.metadata().unwrap().len() + 4096).unwrap();
        let err = ancestors_of(&d3).unwrap_err().to_string();
        assert!(
            err.contains("../d2") && err.contains("pages-7.img"),
            "{err}"
        );
        f.set_len(f.metadata().unwrap().len() - 4096).unwrap();
        // An unfinished parent (no inventory).
        std::fs::remove_file(base.join("d1").join(names::INVENTORY)).unwrap();
        expect("holds no complete dump");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn cycles_and_endless_chains_are_refused() {
        let base = temp("cycle");
        // A dump that names itself as its parent.
        let d = make(&base, "self", 4096, None);
        let link = ParentLink {
            path: ".".into(),
            inventory_blake3: d.digest_file(names::INVENTORY, 1 << 20).unwrap(),
            pages: vec![],
        };
        write_record_atomic(
            &d,
            names::INVENTORY,
            RecordKind::Inventory,
            &inventory(1, Some(link)),
        )
        .unwrap();
        let err = ancestors_of(&d).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        // A chain one dump longer than followed.
        make(&base, "c0", 4096, None);
        for k in 1..=MAX_CHAIN_DEPTH + 1 {
            make(&base, &format!("c{k}"), 4096, Some(&format!("c{}", k - 1)));
        }
        let last = ImageDir::open(&base.join(format!("c{}", MAX_CHAIN_DEPTH + 1))).unwrap();
        let err = ancestors_of(&last).unwrap_err().to_string();
        assert!(err.contains("longest chain"), "{err}");
        let ok = ImageDir::open(&base.join(format!("c{MAX_CHAIN_DEPTH}"))).unwrap();
        assert_eq!(ancestors_of(&ok).unwrap().len(), MAX_CHAIN_DEPTH);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn parent_paths_are_relative_when_the_dumps_share_a_directory() {
        let rel = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(rel("/work/d2", "/work/d1"), Some("../d1".into()));
        assert_eq!(rel("/work/x/d2", "/work/d1"), Some("../../d1".into()));
        assert_eq!(rel("/work/d2", "/work/d2/sub"), Some("sub".into()));
        assert_eq!(rel("/work/d2/sub", "/work/d2"), Some("..".into()));
        assert_eq!(rel("/tmp/d2", "/work/d1"), None);
        assert_eq!(rel("/d2", "/d1"), None);
    }
}
