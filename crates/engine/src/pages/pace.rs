//! The pace of a page copy that runs alongside other work (the dump's pages thread, next to
//! collect: `dump::page_copy`): at full speed, in short steps, or stopped.
//!
//! Short steps: collect waits on the frozen processes it runs calls in, and each call needs a
//! CPU at once. A thread inside a long system call keeps its CPU until it returns to user
//! space where the kernel is built without forced preemption (this machine's kernel preempts
//! a running thread for a woken one only then, or at the next tick, 4 ms away), and the woken
//! process may be queued on that CPU: a 1 MiB `write` took 2.5 ms here (its page cache came
//! from memory the host had to fault in again), and collect took twice as long beside it.
//! So while collect runs, the copy writes at most [`SHORT_WRITE`] bytes per call; once it is
//! done, whole runs again (64 KiB writes cost ~30 % more per byte than 1 MiB ones).

use super::sink::Payload;
use super::source::{PageSource, PageSpan};
use crate::Error;
use stasis_image::RawWriter;
use std::sync::atomic::{AtomicU8, Ordering};

/// The most a write may carry while the copy goes in short steps.
pub const SHORT_WRITE: usize = 64 << 10;

/// How a copy goes on, set by the thread that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speed {
    /// Whole runs per write.
    Full,
    /// Writes of at most [`SHORT_WRITE`] bytes.
    Short,
    /// No more pages: the dump failed elsewhere (what is still to copy would only be removed).
    Stop,
}

/// A [`Speed`] shared between threads.
#[derive(Debug)]
pub struct Pace(AtomicU8);

impl Pace {
    pub fn new(speed: Speed) -> Pace {
        Pace(AtomicU8::new(speed as u8))
    }

    pub fn set(&self, speed: Speed) {
        self.0.store(speed as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> Speed {
        match self.0.load(Ordering::Relaxed) {
            0 => Speed::Full,
            1 => Speed::Short,
            _ => Speed::Stop,
        }
    }
}

/// A source that hands out no more runs once its pace is [`Speed::Stop`].
pub struct Stoppable<'a> {
    pub source: &'a mut dyn PageSource,
    pub pace: &'a Pace,
}

impl PageSource for Stoppable<'_> {
    fn next_run(&mut self, buf: &mut [u8]) -> Result<Option<PageSpan>, Error> {
        if self.pace.get() == Speed::Stop {
            return Err(Error::Invalid(
                "page copy stopped: another part of the dump failed".into(),
            ));
        }
        self.source.next_run(buf)
    }
}

/// A pages file written at a pace: in pieces of at most [`SHORT_WRITE`] bytes while it is
/// [`Speed::Short`].
pub struct Paced<'a> {
    pub out: &'a mut RawWriter,
    pub pace: &'a Pace,
}

impl Payload for Paced<'_> {
    fn position(&self) -> u64 {
        self.out.position()
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.pace.get() == Speed::Short {
            for piece in data.chunks(SHORT_WRITE) {
                self.out.write(piece)?;
            }
            return Ok(());
        }
        Ok(self.out.write(data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_round_trips() {
        let p = Pace::new(Speed::Short);
        assert_eq!(p.get(), Speed::Short);
        for s in [Speed::Full, Speed::Stop, Speed::Short] {
            p.set(s);
            assert_eq!(p.get(), s);
        }
    }

    /// A source of `n` one-page runs.
    struct Pages(u64);

    impl PageSource for Pages {
        fn next_run(&mut self, buf: &mut [u8]) -> Result<Option<PageSpan>, Error> {
            if self.0 == 0 {
                return Ok(None);
            }
            self.0 -= 1;
            buf[0] = 1;
            Ok(Some(PageSpan {
                addr: self.0 * 4096,
                npages: 1,
            }))
        }
    }

    #[test]
    fn a_stopped_source_hands_out_nothing_more() {
        let pace = Pace::new(Speed::Short);
        let mut inner = Pages(3);
        let mut s = Stoppable {
            source: &mut inner,
            pace: &pace,
        };
        let mut buf = vec![0u8; super::super::source::MAX_RUN_BYTES];
        assert!(s.next_run(&mut buf).unwrap().is_some());
        pace.set(Speed::Stop);
        assert!(matches!(s.next_run(&mut buf), Err(Error::Invalid(_))));
    }

    /// Short or whole, the bytes and the run index are the same.
    #[test]
    fn paced_writes_lose_nothing() {
        use super::super::sink::{PageSink, RawSink};
        use stasis_image::{ImageDir, RawReader, RecordKind};
        let d = std::env::temp_dir().join(format!("stasis-pace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let dir = ImageDir::create(&d).unwrap();
        // Two runs: one over several short writes, one shorter than a piece.
        let a: Vec<u8> = (0..3 * SHORT_WRITE + 8192)
            .map(|i| (i % 251) as u8)
            .collect();
        let b = vec![7u8; 4096];
        for (name, speed) in [("pages-1.img", Speed::Short), ("pages-2.img", Speed::Full)] {
            let pace = Pace::new(speed);
            let mut w = RawWriter::create(&dir, name, RecordKind::Pages).unwrap();
            let runs = {
                let mut sink = RawSink::new(Paced {
                    out: &mut w,
                    pace: &pace,
                });
                sink.put(0x10000, &a).unwrap();
                sink.put(0x7000_0000, &b).unwrap();
                sink.finish().unwrap()
            };
            w.finish().unwrap();
            assert_eq!(runs.len(), 2);
            assert_eq!(runs[1].offset, runs[0].offset + a.len() as u64);
            let r = RawReader::open(&dir, name, RecordKind::Pages).unwrap();
            for (run, want) in runs.iter().zip([&a, &b]) {
                let mut got = vec![0u8; want.len()];
                r.read_extent(run.offset, &mut got, run.crc).unwrap();
                assert!(got == *want, "{speed:?}");
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
