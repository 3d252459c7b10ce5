//! The daemon's log: one line per event on stderr, which systemd sends to the journal.
//!
//! ```text
//! 2026-12-04T10:00:00.000000Z stasisd[4242]: INFO request{id=7 caller_pid=1234 caller_uid=1000}: dump-self from pid 1234 uid 1000
//! ```
//!
//! A line is the time (left out when stderr is the journal, which keeps its own, and which then
//! gets the level as a `<N>` syslog prefix instead), the process (the daemon or one of its
//! workers), the level, the spans the event happened in (`request{...}` for everything a worker
//! does for one request, then the engine's own spans), and the message with its fields.
//!
//! Clients control some of what gets logged (paths, names, messages of failures that quote
//! them): every value goes through [`escape`], so no value can break a line or forge another.
//! [`EscapedFields`] is also what the `stasis` command uses for its log.
//!
//! Clients also control how much gets logged: each request logs a few lines, and a client can
//! make thousands of requests. A worker's lines therefore do not go to the log directly: its
//! stderr is a pipe to the daemon ([`LineReader`]), which passes them on through a token bucket
//! per uid ([`UidRateLimit`]; root is not limited). Lines over the limit are dropped and
//! counted; once the uid's bucket has a token again, one summary line says how many were
//! dropped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{self, Read as _};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `s` with every control character (and the Unicode line and paragraph separators) written
/// as an escape: `\n`, `\r`, `\t` or `\u{..}`. Everything else is left as it is.
pub fn escape(s: &str) -> Cow<'_, str> {
    let special = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.contains(special) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if special(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Formats the fields of events and spans as `message key=value ...`, each value escaped
/// ([`escape`]); string values are quoted.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = FieldWriter {
            writer,
            result: Ok(()),
            empty: true,
        };
        fields.record(&mut v);
        v.result
    }
}

struct FieldWriter<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    empty: bool,
}

impl FieldWriter<'_> {
    fn put(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.empty { "" } else { " " };
        self.empty = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{}", escape(value))
        } else {
            write!(self.writer, "{sep}{}={}", field.name(), escape(value))
        };
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.put(field, value);
        } else {
            self.put(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, &format!("{value:?}"));
    }
}

/// The line format of the daemon (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct DaemonLine {
    /// stderr is the journal: `<N>` priority prefixes, no time.
    pub journal: bool,
}

/// The syslog priority of a level (what systemd reads from a `<N>` prefix).
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for DaemonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        if self.journal {
            write!(w, "<{}>", syslog_priority(level))?;
        } else {
            SystemTime.format_time(&mut w)?;
            w.write_char(' ')?;
        }
        write!(w, "stasisd[{}]: {level}", std::process::id())?;
        if let Some(scope) = ctx.event_scope() {
            let mut sep = ' ';
            for span in scope.from_root() {
                write!(w, "{sep}{}", span.name())?;
                sep = ':';
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(w, "{{{fields}}}")?;
                    }
                }
            }
        }
        w.write_str(": ")?;
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The level `-v` flags ask for: info, then debug (-v), then trace (-vv: every system call
/// run inside a target).
pub fn level_for(verbose: u8) -> LevelFilter {
    match verbose {
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Whether stderr is connected to the journal ($JOURNAL_STREAM names its device and inode).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(md) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", md.dev(), md.ino())
}

/// Sends the daemon's log to stderr at the level `verbose` asks for. When the process already
/// has a global logger (`stasis demo` runs the daemon in a child of the `stasis` command), the
/// daemon's takes over for this thread for as long as the returned guard lives.
pub fn install(verbose: u8) -> Option<tracing::subscriber::DefaultGuard> {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level_for(verbose))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .fmt_fields(EscapedFields)
        .event_format(DaemonLine {
            journal: stderr_is_journal(),
        })
        .finish();
    if tracing::dispatcher::has_been_set() {
        return Some(tracing::subscriber::set_default(subscriber));
    }
    // Only fails when another global logger won a race: then that one logs.
    let _ = tracing::subscriber::set_global_default(subscriber);
    None
}

/// How many log lines one uid's requests may produce: `burst` at once, then `per_second`
/// (`per_second` 0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: u32,
}

/// Token buckets of log lines, one per uid (root is not limited).
#[derive(Debug)]
pub struct UidRateLimit {
    limit: RateLimit,
    buckets: HashMap<u32, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    dropped: u64,
}

impl Bucket {
    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + dt * f64::from(limit.per_second)).min(f64::from(limit.burst));
        self.updated = now;
    }
}

impl UidRateLimit {
    pub fn new(limit: RateLimit) -> UidRateLimit {
        UidRateLimit {
            limit,
            buckets: HashMap::new(),
        }
    }

    fn unlimited(&self, uid: u32) -> bool {
        uid == 0 || self.limit.per_second == 0
    }

    /// Whether one more line of `uid` may be logged at `now` (it takes a token); if not, the
    /// line is counted as dropped.
    pub fn admit(&mut self, uid: u32, now: Instant) -> bool {
        if self.unlimited(uid) {
            return true;
        }
        let limit = self.limit;
        let b = self.buckets.entry(uid).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            updated: now,
            dropped: 0,
        });
        b.refill(limit, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            b.dropped += 1;
            false
        }
    }

    /// The uids that had lines dropped and whose bucket holds a token again, with how many
    /// were dropped: each gets one summary line (which takes that token). Buckets that are
    /// full again and dropped nothing are forgotten.
    pub fn summaries(&mut self, now: Instant) -> Vec<(u32, u64)> {
        let limit = self.limit;
        let mut out = Vec::new();
        self.buckets.retain(|&uid, b| {
            b.refill(limit, now);
            if b.dropped > 0 && b.tokens >= 1.0 {
                b.tokens -= 1.0;
                out.push((uid, std::mem::take(&mut b.dropped)));
            }
            b.dropped > 0 || b.tokens < f64::from(limit.burst)
        });
        out.sort_unstable();
        out
    }

    /// The summary line for `dropped` lines of `uid`.
    pub fn summary_text(&self, uid: u32, dropped: u64) -> String {
        format!(
            "uid {uid}: {dropped} log lines dropped (at most {} at once, then {} per second, per uid)",
            self.limit.burst, self.limit.per_second
        )
    }
}

/// Longest line passed on from a worker; the rest of a longer one is cut.
pub const MAX_LINE: usize = 8192;

/// The daemon's end of a worker's stderr pipe: reads what is there (never blocks) and hands
/// out complete lines, each ending with `\n`, at most [`MAX_LINE`] bytes.
#[derive(Debug)]
pub struct LineReader {
    pipe: std::fs::File,
    partial: Vec<u8>,
    /// Dropping the rest of a line that was too long.
    skipping: bool,
    ended: bool,
}

impl LineReader {
    /// Takes the read end of the pipe (made non-blocking here).
    pub fn new(pipe: OwnedFd) -> io::Result<LineReader> {
        let flags = stasis_sys::process::get_status_flags(pipe.as_fd())?;
        stasis_sys::process::set_status_flags(pipe.as_fd(), flags | libc::O_NONBLOCK)?;
        Ok(LineReader {
            pipe: std::fs::File::from(pipe),
            partial: Vec::new(),
            skipping: false,
            ended: false,
        })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Whether every writer closed the pipe (and every line was handed out).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Reads at most 64 KiB of what is in the pipe and returns the complete lines in it (at
    /// the end of the pipe, also an unfinished last line).
    pub fn read_lines(&mut self) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 16384];
        for _ in 0..4 {
            match self.pipe.read(&mut buf) {
                Ok(0) => {
                    self.ended = true;
                    break;
                }
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: nothing more for now. Any other error: the pipe is of no use.
                Err(e) => {
                    self.ended = e.kind() != io::ErrorKind::WouldBlock;
                    break;
                }
            }
        }
        let mut lines = Vec::new();
        loop {
            let end = self.partial.iter().position(|&b| b == b'\n');
            if self.skipping {
                // The rest of a line that was cut: dropped, so that it cannot pass for a line
                // of its own.
                match end {
                    Some(i) => {
                        self.partial.drain(..=i);
                        self.skipping = false;
                        continue;
                    }
                    None => {
                        self.partial.clear();
                        break;
                    }
                }
            }
            let cut = match end {
                Some(i) if i < MAX_LINE => i + 1,
                _ if self.partial.len() >= MAX_LINE => MAX_LINE,
                None if self.ended && !self.partial.is_empty() => self.partial.len(),
                _ => break,
            };
            let mut line: Vec<u8> = self.partial.drain(..cut).collect();
            if line.last() != Some(&b'\n') {
                line.extend_from_slice(b" [cut]\n");
                self.skipping = !self.ended;
            }
            lines.push(line);
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn escaping() {
        assert!(matches!(escape("plain /path ok"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape("x\u{2028}y\u{85}z"), "x\\u{2028}y\\u{85}z");
        assert_eq!(escape("back\\slash é"), "back\\slash é");
    }

    /// A writer the tests can read back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(journal: bool, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(LevelFilter::TRACE)
            .with_writer(move || out.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .event_format(DaemonLine { journal })
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn one_line_per_event_whatever_the_values() {
        let text = capture(false, || {
            let span = tracing::info_span!(
                "request",
                id = 7,
                caller_pid = tracing::field::Empty,
                caller_uid = tracing::field::Empty
            );
            let _e = span.enter();
            span.record("caller_pid", 1234);
            span.record("caller_uid", 1000);
            let path = "/tmp/evil\nstasisd[1]: INFO forged";
            tracing::error!("open {path}: refused");
            tracing::info!(path, "field");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let me = std::process::id();
        assert!(
            lines[0].ends_with(&format!(
                " stasisd[{me}]: ERROR request{{id=7 caller_pid=1234 caller_uid=1000}}: \
                 open /tmp/evil\\nstasisd[1]: INFO forged: refused"
            )),
            "{text}"
        );
        assert!(
            lines[1].ends_with(r#": field path="/tmp/evil\nstasisd[1]: INFO forged""#),
            "{text}"
        );
    }

    #[test]
    fn rate_limit_per_uid() {
        let mut r = UidRateLimit::new(RateLimit {
            burst: 20,
            per_second: 2,
        });
        let t0 = Instant::now();
        let admitted = (0..1000).filter(|_| r.admit(1000, t0)).count();
        assert_eq!(admitted, 20);
        // Other uids have their own bucket; root has none.
        assert!(r.admit(1001, t0));
        assert!((0..1000).all(|_| r.admit(0, t0)));
        // No token yet: no summary.
        assert!(r.summaries(t0).is_empty());
        // Half a second later one token is back: one summary (which takes it), then nothing.
        let t1 = t0 + std::time::Duration::from_millis(500);
        assert_eq!(r.summaries(t1), vec![(1000, 980)]);
        assert!(!r.admit(1000, t1));
        assert!(r.summaries(t1).is_empty());
        let t2 = t1 + std::time::Duration::from_secs(1);
        assert_eq!(r.summaries(t2), vec![(1000, 1)]);
        assert!(r.admit(1000, t2));
        assert!(r.summary_text(1000, 980).contains("980 log lines dropped"));
        // Full buckets without drops are forgotten.
        let later = t2 + std::time::Duration::from_secs(60);
        assert!(r.summaries(later).is_empty());
        assert!(r.buckets.is_empty());
        // Rate 0: no limit.
        let mut off = UidRateLimit::new(RateLimit {
            burst: 0,
            per_second: 0,
        });
        assert!((0..100).all(|_| off.admit(1000, t0)));
    }

    #[test]
    fn lines_from_a_pipe() {
        let (r, w) = stasis_sys::process::pipe().unwrap();
        let mut reader = LineReader::new(r).unwrap();
        let mut w = std::fs::File::from(w);
        assert!(reader.read_lines().is_empty());
        assert!(!reader.ended());
        w.write_all(b"one\ntw").unwrap();
        assert_eq!(reader.read_lines(), vec![b"one\n".to_vec()]);
        w.write_all(b"o\n").unwrap();
        assert_eq!(reader.read_lines(), vec![b"two\n".to_vec()]);
        // A line too long is cut, and its rest is dropped (it cannot pass for a line).
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.extend_from_slice(b"stasisd[1]: INFO forged\nnext\n");
        w.write_all(&long).unwrap();
        let lines = reader.read_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].ends_with(b"xx [cut]\n"));
        assert_eq!(lines[0].len(), MAX_LINE + 7);
        assert_eq!(lines[1], b"next\n");
        w.write_all(b"last").unwrap();
        drop(w);
        assert_eq!(reader.read_lines(), vec![b"last [cut]\n".to_vec()]);
        assert!(reader.ended());
    }

    #[test]
    fn journal_lines_carry_the_priority() {
        let text = capture(true, || {
            tracing::info!("stasisd 0.1.0: listening (/run/x)");
            tracing::warn!("refusing a connection");
        });
        let me = std::process::id();
        assert_eq!(
            text,
            format!(
                "<6>stasisd[{me}]: INFO: stasisd 0.1.0: listening (/run/x)\n\
                 <4>stasisd[{me}]: WARN: refusing a connection\n"
            )
        );
    }
}
