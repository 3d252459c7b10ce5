//! Where stasis's own threads run: next to the processes they drive with ptrace.
//!
//! Every injected call (or batch) resumes a stopped thread and waits for it to stop again, a
//! wakeup each way. When the two are on different CPUs, each wakeup is an interrupt to a CPU
//! that is often idle (halted, in a VM: a trip through the host); on one CPU it is a hand-over.
//!
//! * The restore ([`OneCpu::pin`]): the restorer's thread and the restore children it forks
//!   (they inherit it) keep to the CPU it runs on until the restore is done; a 1 MiB restore's
//!   rebuild went from 2.6–2.9 ms to 1.85 ms here. The restored threads get their dumped
//!   affinity in the rebuild's scheduling step (every thread, always); processes the restore
//!   makes to outlive it (a lazy restore's page server) are made after the restorer has its
//!   own back, and a fill shared between threads runs on every CPU ([`OneCpu::spread`]).
//! * The dump ([`OneCpu::pin_to`]): the processes are not ours to move, so collect's thread
//!   moves to the CPU the process it asks last ran on, and the pages thread keeps off that CPU
//!   ([`keep_off`]): the process, woken, finds its CPU busy with collect (about to wait for it)
//!   and no other idle, and runs there. Collect of a 1 MiB process beside the pages thread:
//!   2.5 → 1.9 ms.
//!
//! All of it is best effort: a CPU that cannot be had (a cpuset that changed) leaves the
//! thread where it was.

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
    /// read or set (a cpuset that changed meanwhile): it goes on as it is.
    pub fn pin() -> Option<OneCpu> {
        OneCpu::pin_to(sched::current_cpu())
    }

    /// Keeps the calling thread on CPU `cpu`, if it may run there. `None` otherwise, or when
    /// it may run on that CPU only anyway.
    pub fn pin_to(cpu: usize) -> Option<OneCpu> {
        let tid = process::gettid();
        let before = sched::get_affinity(tid).ok()?;
        let one = only(cpu);
        if before == one || !has(&before, cpu) {
            return None;
        }
        match sched::set_affinity(tid, &one) {
            Ok(()) => {
                tracing::trace!("tid {tid} on CPU {cpu}");
                Some(OneCpu { tid, before, one })
            }
            Err(e) => {
                tracing::debug!("tid {tid} stays on every CPU: sched_setaffinity: {e}");
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

/// The affinity of CPU `cpu` alone.
fn only(cpu: usize) -> Vec<u64> {
    let mut one = vec![0u64; cpu / 64 + 1];
    one[cpu / 64] = 1 << (cpu % 64);
    one
}

/// Whether affinity `mask` holds CPU `cpu`.
fn has(mask: &[u64], cpu: usize) -> bool {
    mask.get(cpu / 64)
        .is_some_and(|w| w & (1 << (cpu % 64)) != 0)
}

/// Keeps the calling thread off CPU `cpu` (`None`: back on every CPU of `all`, its affinity
/// when it started), when that leaves it a CPU.
pub fn keep_off(all: &[u64], cpu: Option<usize>) {
    let mut mask = all.to_vec();
    if let Some(c) = cpu.filter(|&c| has(all, c)) {
        mask[c / 64] &= !(1 << (c % 64));
        if mask.iter().all(|&w| w == 0) {
            return;
        }
    }
    let _ = sched::set_affinity(process::gettid(), &mask);
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

    /// Run in a thread of its own, as above.
    #[test]
    fn pin_to_and_keep_off() {
        std::thread::spawn(|| {
            let tid = process::gettid();
            let all = sched::get_affinity(tid).unwrap();
            let cpus: Vec<usize> = (0..all.len() * 64).filter(|&c| has(&all, c)).collect();
            // A CPU it may not run on is refused.
            assert!(OneCpu::pin_to(all.len() * 64 + 5).is_none());
            if cpus.len() < 2 {
                return;
            }
            let last = *cpus.last().unwrap();
            {
                let _on = OneCpu::pin_to(last).unwrap();
                assert_eq!(sched::get_affinity(tid).unwrap(), only(last));
                assert_eq!(sched::current_cpu(), last);
            }
            assert_eq!(sched::get_affinity(tid).unwrap(), all);
            keep_off(&all, Some(last));
            let now = sched::get_affinity(tid).unwrap();
            assert!(!has(&now, last) && has(&now, cpus[0]));
            keep_off(&all, None);
            assert_eq!(sched::get_affinity(tid).unwrap(), all);
            // Off the only CPU it has: it stays.
            let _one = OneCpu::pin_to(cpus[0]).unwrap();
            keep_off(&only(cpus[0]), Some(cpus[0]));
            assert_eq!(sched::get_affinity(tid).unwrap(), only(cpus[0]));
        })
        .join()
        .unwrap();
    }
}
