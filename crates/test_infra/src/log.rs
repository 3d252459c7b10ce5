//! Logs that test programs append to (one line per event, `READY`, `PASS`...).

use std::fs;
use std::path::Path;

/// The text of `path` (invalid UTF-8 replaced); empty when it cannot be read (not yet
/// created, say).
pub fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The text of `path` for an error report: like [`read_log`], but says why it cannot be read.
pub fn read_for_report(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// The size of `path` in bytes (0 when it does not exist): where the next line will start.
pub fn log_len(path: &Path) -> usize {
    fs::metadata(path).map_or(0, |m| m.len() as usize)
}

/// The first complete line (ended by a newline) starting with `prefix` at or after byte `from`
/// of `path`, without its newline, and the offset just past it.
pub fn find_line(path: &Path, from: usize, prefix: &str) -> Option<(String, usize)> {
    let text = fs::read(path).unwrap_or_default();
    let mut off = from;
    for line in text.get(from..)?.split_inclusive(|&b| b == b'\n') {
        let end = off + line.len();
        if line.ends_with(b"\n") && line.starts_with(prefix.as_bytes()) {
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            return Some((line, end));
        }
        off = end;
    }
    None
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_line_needs_the_prefix_and_a_newline() {
        let dir = crate::WorkDir::unique(&std::env::temp_dir(), "stasis-test-infra-log");
        let log = dir.join("log");
        fs::write(&log, "READY 1\nPASS 2\nPASS 3").unwrap();
        assert_eq!(find_line(&log, 0, "PASS"), Some(("PASS 2".to_string(), 15)));
        assert_eq!(find_line(&log, 15, "PASS"), None, "no newline yet");
        assert_eq!(
            find_line(&log, 0, "READY"),
            Some(("READY 1".to_string(), 8))
        );
        assert_eq!(find_line(&log, 100, "READY"), None);
        assert_eq!(log_len(&log), 21);
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
