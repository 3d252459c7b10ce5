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

use std::borrow::Cow;
use std::fmt::{self, Write as _};
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
