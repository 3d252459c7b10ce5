//! The restore runs on one CPU ([`OneCpu`]): the restorer's thread, and the restore children
//! it forks (they inherit it), until the restore is done.
//!
//! The rebuild is a conversation: each injected call (or batch) resumes a stopped child and
//! waits for it to stop again, a wakeup each way. On two CPUs the child is woken on the other
//! one, often idle (halted, in a VM: the wakeup is an interrupt to another virtual CPU), and
//! the restorer is woken back the same way; on one CPU each just hands it over. Here a 1 MiB
//! restore's rebuild went from 2.6–2.9 ms to 1.85 ms. The restored threads get their dumped
//! affinity in the rebuild's scheduling step (every thread, always), and processes the
//! restore makes to outlive it (a lazy restore's page server) are made after the restorer has
//! its own back. A fill big enough to be shared between threads runs on every CPU again
//! ([`OneCpu::spread`]).

use stasis_sys::{process, sched, Pid};

/// The calling thread kept on the CPU it ran on; its affinity comes back when dropped.
pub struct OneCpu {
    tid: Pid,
    /// Its affinity before.
    before: Vec<u64>,
    /// The one CPU, as an affinity.
    one: Vec<u64>,
}

impl OneCpu {
    /// Keeps the calling thread on its current CPU. `None` when its affinity could not be
    /// read or set (a cpuset that changed meanwhile): the restore goes on as it is.
    pub fn pin() -> Option<OneCpu> {
        let tid = process::gettid();
        let before = sched::get_affinity(tid).ok()?;
        let cpu = sched::current_cpu();
        let mut one = vec![0u64; cpu / 64 + 1];
        one[cpu / 64] = 1 << (cpu % 64);
        if before == one {
            return None;
        }
        match sched::set_affinity(tid, &one) {
            Ok(()) => {
                tracing::trace!("restoring on CPU {cpu}");
                Some(OneCpu { tid, before, one })
            }
            Err(e) => {
                tracing::debug!("the restore runs on every CPU: sched_setaffinity: {e}");
                None
            }
        }
    }

    /// Every CPU it had again, until the guard returned is dropped (for work shared between
    /// threads, which the calling thread spawns meanwhile).
    pub fn spread(&self) -> Spread<'_> {
        let _ = sched::set_affinity(self.tid, &self.before);
        Spread(self)
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        let _ = sched::set_affinity(self.tid, &self.before);
    }
}

/// See [`OneCpu::spread`].
pub struct Spread<'a>(&'a OneCpu);

impl Drop for Spread<'_> {
    fn drop(&mut self) {
        let _ = sched::set_affinity(self.0.tid, &self.0.one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run in a thread of its own: the guard changes the affinity of the calling thread.
    #[test]
    fn pins_spreads_and_gives_back() {
        std::thread::spawn(|| {
            let tid = process::gettid();
            let before = sched::get_affinity(tid).unwrap();
            let Some(pinned) = OneCpu::pin() else {
                // A machine (or cpuset) of one CPU: nothing to pin.
                assert_eq!(before.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
                return;
            };
            let now = sched::get_affinity(tid).unwrap();
            assert_eq!(now.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
            // A child inherits it.
            let child = std::process::Command::new("cat")
                .arg("/proc/self/status")
                .output()
                .unwrap();
            let status = String::from_utf8_lossy(&child.stdout).to_string();
            let allowed = status
                .lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_string();
            assert!(
                !allowed.contains(',') && !allowed.contains('-'),
                "{allowed}"
            );
            {
                let _all = pinned.spread();
                assert_eq!(sched::get_affinity(tid).unwrap(), before);
            }
            assert_eq!(sched::get_affinity(tid).unwrap(), now);
            drop(pinned);
            assert_eq!(sched::get_affinity(tid).unwrap(), before);
        })
        .join()
        .unwrap();
    }
}
