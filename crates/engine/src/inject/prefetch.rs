//! Questions asked inside a frozen thread ([`Query`]), answered all at once.
//!
//! The dump asks each process about eighty questions that only the process can answer (brk,
//! sigaltstack, its clear-child-tid address, prctl values, interval timers, the action of each
//! signal, ...), each one system call that only reads. One by one, each costs a resume of the thread and two stops
//! (about 20–60 µs on a VM); [`Injector::prefetch`] runs them in one batch ([`super::batch`])
//! and keeps the answers, which the typed methods of [`super::calls`] (`brk_query`,
//! `get_tsc`, ...) hand out instead of running the call again, each once. A process that
//! cannot take batches, or a question not prefetched, is asked the usual way, so the answers
//! and the errors are the same either way (each answer is checked by the method that uses
//! it, as if the call had just run).

use super::{CallRecord, Injector};
use crate::Error;

/// A read-only question: one system call whose answer does not change while the thread is
/// stopped, and which changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// brk(0).
    Brk,
    /// sigaltstack(NULL, &old): a `stack_t`.
    Sigaltstack,
    /// prctl(PR_GET_TID_ADDRESS, &addr): a u64.
    TidAddress,
    /// prctl(option, arg2, 0, 0, 0) answering in its result: the name and the two arguments.
    Prctl(&'static str, u64, u64),
    /// prctl(option, &int): the name and the option; the answer is an int.
    PrctlInt(&'static str, u64),
    /// membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS).
    MembarrierRegistrations,
    /// getitimer(which, &value): an `itimerval`.
    Getitimer(u32),
    /// rt_sigaction(sig, NULL, &old, 8): a kernel `sigaction`.
    Sigaction(u32),
}

use super::calls::{MEMBARRIER_CMD_GET_REGISTRATIONS, PR_GET_TID_ADDRESS};

impl Query {
    /// Its name in logs and errors (as the one-by-one call names it).
    pub fn name(self) -> &'static str {
        match self {
            Query::Brk => "brk(0)",
            Query::Sigaltstack => "sigaltstack",
            Query::TidAddress => "prctl(PR_GET_TID_ADDRESS)",
            Query::Prctl(name, ..) | Query::PrctlInt(name, _) => name,
            Query::MembarrierRegistrations => "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)",
            Query::Getitimer(_) => "getitimer",
            Query::Sigaction(_) => "rt_sigaction(query)",
        }
    }

    /// How many bytes it writes through its pointer (0: it answers in its result).
    pub fn out_len(self) -> u64 {
        match self {
            Query::Sigaltstack => std::mem::size_of::<super::kabi::StackT>() as u64,
            Query::TidAddress => 8,
            Query::PrctlInt(..) => 4,
            Query::Getitimer(_) => std::mem::size_of::<super::kabi::Itimerval>() as u64,
            Query::Sigaction(_) => std::mem::size_of::<super::kabi::KernelSigaction>() as u64,
            Query::Brk | Query::Prctl(..) | Query::MembarrierRegistrations => 0,
        }
    }

    /// The call: number and arguments, `out` the address its answer goes to (if any).
    pub fn call(self, out: u64) -> (i64, [u64; 6]) {
        match self {
            Query::Brk => (libc::SYS_brk, [0; 6]),
            Query::Sigaltstack => (libc::SYS_sigaltstack, [0, out, 0, 0, 0, 0]),
            Query::TidAddress => (libc::SYS_prctl, [PR_GET_TID_ADDRESS, out, 0, 0, 0, 0]),
            Query::Prctl(_, option, arg) => (libc::SYS_prctl, [option, arg, 0, 0, 0, 0]),
            Query::PrctlInt(_, option) => (libc::SYS_prctl, [option, out, 0, 0, 0, 0]),
            Query::MembarrierRegistrations => (
                libc::SYS_membarrier,
                [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, 0, 0, 0],
            ),
            Query::Getitimer(which) => (libc::SYS_getitimer, [which.into(), out, 0, 0, 0, 0]),
            Query::Sigaction(sig) => (libc::SYS_rt_sigaction, [sig.into(), 0, out, 8, 0, 0]),
        }
    }
}

/// An answer kept for later: the raw result (a negative errno on failure) and what the call
/// wrote through its pointer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    query: Query,
    result: i64,
    out: Vec<u8>,
}

impl Injector {
    /// Asks `queries` in one batch and keeps the answers for the typed methods. Nothing is
    /// kept when the process cannot take batches (each question is then asked when needed).
    pub fn prefetch(&mut self, queries: &[Query]) -> Result<(), Error> {
        if queries.is_empty() || queries.len() > super::batch::MAX_BATCH {
            return Ok(());
        }
        let mut f = self.frame();
        let total: u64 = queries
            .iter()
            .map(|q| q.out_len().next_multiple_of(8))
            .sum();
        let base = f.alloc_bytes(total.max(8))?;
        let mut at = base;
        let mut outs = Vec::with_capacity(queries.len());
        let calls: Vec<(i64, [u64; 6])> = queries
            .iter()
            .map(|q| {
                outs.push(at);
                let call = q.call(at);
                at += q.out_len().next_multiple_of(8);
                call
            })
            .collect();
        let Some(results) = f.batch("queries", &calls)? else {
            return Ok(());
        };
        let bytes = f.read_bytes(base, total as usize)?;
        let answers: Vec<Answer> = queries
            .iter()
            .zip(&results)
            .zip(&outs)
            .map(|((&query, &result), &out)| {
                let off = (out - base) as usize;
                Answer {
                    query,
                    result,
                    out: bytes[off..off + query.out_len() as usize].to_vec(),
                }
            })
            .collect();
        drop(f);
        self.answers = answers;
        Ok(())
    }

    /// The answer to `q`: the prefetched one (handed out once), or the call run now. Returns
    /// the raw result and what the call wrote through its pointer; the call is the last call.
    pub(crate) fn ask(&mut self, q: Query) -> Result<(i64, Vec<u8>), Error> {
        if let Some(i) = self.answers.iter().position(|a| a.query == q) {
            let a = self.answers.swap_remove(i);
            let (nr, args) = q.call(0);
            let rec = CallRecord {
                name: q.name(),
                nr,
                args,
                result: Some(a.result),
            };
            tracing::trace!("tid {}: {rec} (answered by the batch)", self.tid);
            self.last = Some(rec);
            return Ok((a.result, a.out));
        }
        let mut f = self.frame();
        let out = if q.out_len() > 0 {
            f.alloc_bytes(q.out_len())?
        } else {
            0
        };
        let (nr, args) = q.call(out);
        let r = f.run(q.name(), nr, args)?;
        f.log_done(false);
        let bytes = if q.out_len() > 0 && !(-4095..0).contains(&r) {
            f.read_bytes(out, q.out_len() as usize)?
        } else {
            vec![0; q.out_len() as usize]
        };
        Ok((r, bytes))
    }

    /// Whether the answer to `q` is kept (prefetched and not yet taken).
    pub fn has_answer(&self, q: Query) -> bool {
        self.answers.iter().any(|a| a.query == q)
    }

    /// How many prefetched answers no getter has taken yet.
    pub fn answers_left(&self) -> usize {
        self.answers.len()
    }

    /// [`Injector::ask`], a failure of the call being an error naming it.
    pub(crate) fn ask_ok(&mut self, q: Query) -> Result<(u64, Vec<u8>), Error> {
        let (r, out) = self.ask(q)?;
        if (-4095..0).contains(&r) {
            self.log_done(true);
            return Err(self.remote_error(q.name(), super::Errno(-r as i32)));
        }
        Ok((r as u64, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{attrs, creds, itimers, mm, prctl, signals, thread};

    /// The getters the dump runs take every prefetched answer (none is asked twice, none
    /// left over), and the answers are those of the calls run one by one.
    #[test]
    fn the_dump_getters_take_every_prefetched_answer() {
        if !stasis_test_infra::require_root() {
            return;
        }
        let (child, mut frozen, mut inj) = super::super::testing::frozen_sleep();
        let pid = child.pid();
        {
            let stat = crate::procfs::read_stat(pid).expect("stat");
            let status = crate::procfs::read_status(pid).expect("status");
            let dump_all = |inj: &mut Injector| {
                (
                    mm::dump(pid, &stat, inj).expect("mm"),
                    thread::dump(pid, pid, inj).expect("thread"),
                    itimers::dump(inj).expect("itimers"),
                    creds::dump(&status, inj).expect("creds"),
                    attrs::dump(pid, &status, inj).expect("attrs"),
                    prctl::dump_process(pid, inj).expect("prctl"),
                    signals::dump(pid, inj).expect("signals"),
                )
            };
            inj.guard().expect("guard");
            inj.map_scratch(None).expect("scratch");
            let one_by_one = dump_all(&mut inj);
            inj.prefetch(&super::super::calls::dump_queries(&prctl::SPEC_WHICH))
                .expect("prefetch");
            let queries = super::super::calls::dump_queries(&prctl::SPEC_WHICH).len();
            assert_eq!(inj.answers_left(), queries, "the batch ran");
            let batched = dump_all(&mut inj);
            assert_eq!(inj.answers_left(), 0, "an answer no getter took");
            assert_eq!(format!("{one_by_one:?}"), format!("{batched:?}"));
            // The questions of the other threads: exactly those `thread::dump` asks.
            inj.prefetch(&super::super::calls::thread_queries(&prctl::SPEC_WHICH))
                .expect("prefetch of a thread");
            let thread_batched = thread::dump(pid, pid, &mut inj).expect("thread");
            assert_eq!(inj.answers_left(), 0, "an answer thread::dump did not take");
            assert_eq!(format!("{:?}", one_by_one.1), format!("{thread_batched:?}"));
            inj.finish().expect("finish");
            frozen.thaw().expect("thaw");
        }
    }

    #[test]
    fn pointers_go_where_the_answer_is_read() {
        for q in [
            Query::Sigaltstack,
            Query::TidAddress,
            Query::PrctlInt("x", 2),
            Query::Getitimer(1),
            Query::Sigaction(10),
        ] {
            let (_, args) = q.call(0x5000);
            assert!(args.contains(&0x5000), "{q:?}");
            assert!(q.out_len() > 0);
        }
        for q in [
            Query::Brk,
            Query::Prctl("x", 30, 0),
            Query::MembarrierRegistrations,
        ] {
            assert_eq!(q.out_len(), 0, "{q:?}");
            assert!(!q.call(0x5000).1.contains(&0x5000), "{q:?}");
        }
    }
}
