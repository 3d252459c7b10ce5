//! A directory of one test.

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory for one test, empty when made. Dropping it removes it, unless the thread is
/// panicking (the test failed) or [`WorkDir::keep`] was called: what the test left there is
/// then kept for inspection. It dereferences to its [`Path`].
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// Makes `path` an empty directory (removing what an earlier run left there). Panics when
    /// it cannot.
    pub fn new(path: impl Into<PathBuf>) -> WorkDir {
        let path = path.into();
        if path.exists() {
            fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("rm -r {}: {e}", path.display()));
        }
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        WorkDir { path, keep: false }
    }

    /// A new directory in `base` named after `name`, this process and a counter, so that tests
    /// running at the same time (in this process or another) never share it.
    pub fn unique(base: &Path, name: &str) -> WorkDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        WorkDir::new(base.join(format!("{name}-{}-{n}", std::process::id())))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes (if needed) and returns the subdirectory `name`. Panics when it cannot.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let d = self.path.join(name);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }

    /// Keeps the directory when this is dropped (a failure about to be reported).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Deref for WorkDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for WorkDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("work directory kept: {}", self.path.display());
        } else if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_unless_kept() {
        let base = std::env::temp_dir();
        let w = WorkDir::unique(&base, "stasis-test-infra-wd");
        let sub = w.mkdir("a");
        fs::write(sub.join("f"), b"x").unwrap();
        let path = w.to_path_buf();
        drop(w);
        assert!(!path.exists());

        let mut w = WorkDir::unique(&base, "stasis-test-infra-wd");
        w.keep();
        let path = w.path().to_path_buf();
        drop(w);
        assert!(path.is_dir());
        // A new WorkDir on the same path starts empty.
        fs::write(path.join("old"), b"x").unwrap();
        let w = WorkDir::new(&path);
        assert_eq!(fs::read_dir(&*w).unwrap().count(), 0);
    }
}
