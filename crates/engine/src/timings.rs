//! Timings of the phases of a dump or a restore ([`Timings`]), handed back in
//! [`crate::DumpReport`] and [`crate::Restored`] for `stasis dump/restore --stats` and
//! `stasis bench`. Names are the phases' log names; a sub-phase is `phase.part`.

use std::time::{Duration, Instant};

/// Named durations, in the order they were first recorded; the same name recorded again
/// (a step run for each process) adds up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timings {
    pub entries: Vec<(&'static str, Duration)>,
}

impl Timings {
    /// Adds `d` to `name`.
    pub fn add(&mut self, name: &'static str, d: Duration) {
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += d,
            None => self.entries.push((name, d)),
        }
    }

    /// Adds the time since `since` to `name`.
    pub fn since(&mut self, name: &'static str, since: Instant) {
        self.add(name, since.elapsed());
    }

    /// The time recorded for `name`.
    pub fn get(&self, name: &str) -> Option<Duration> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_adds_up_in_first_order() {
        let mut t = Timings::default();
        t.add("a", Duration::from_millis(1));
        t.add("b", Duration::from_millis(2));
        t.add("a", Duration::from_millis(3));
        assert_eq!(t.get("a"), Some(Duration::from_millis(4)));
        assert_eq!(t.entries[1].0, "b");
        assert_eq!(t.get("c"), None);
    }
}
