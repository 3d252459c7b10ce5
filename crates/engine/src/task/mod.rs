//! Per-process and per-thread state other than memory and files, one module per part. Each
//! module has the same shape: `dump` collects its part of the image from a frozen process
//! (reading /proc or asking the process itself through [`crate::inject`]), and `restore`
//! (or `apply_in_child` for what the restore child does to itself before it stops) puts it
//! back.
//!
//! | module           | what it saves and restores                                        |
//! |------------------|-------------------------------------------------------------------|
//! | [`attrs`]        | cwd, root, umask, rlimits, personality, comm, session, prctl bits |
//! | [`creds`]        | uids, gids, groups, capabilities, securebits, no_new_privs        |
//! | [`mm`]           | mm fields (code/data/brk/stack/arg/env bounds, auxv, exe link)    |
//! | [`thread`]       | registers, FPU/xsave, signal mask, rseq, robust list, altstack    |
//! | [`signals`]      | signal dispositions and pending signals                           |
//! | [`itimers`]      | interval timers (setitimer)                                       |
//! | [`posix_timers`] | POSIX timers (timer_create), with their ids                       |
//! | [`sched`]        | per thread: scheduling policy, priority, nice value, CPU affinity |
//! | [`prctl`]        | inherited prctl state: THP disable, MDWE, membarrier, KSM merge; per thread timer slack, TSC, MCE kill, speculation control, IO flusher |
//! | [`oom`]          | oom_score_adj                                                      |
//! | [`loginuid`]     | the audit login uid                                                |
//! | [`stop`]         | job-control stop (SIGSTOP, SIGTSTP, ...) and the parent's stop report |
//! | [`seccomp`]      | seccomp strict mode and filters, per thread (shared chains once)  |

pub mod attrs;
pub mod creds;
pub mod itimers;
pub mod loginuid;
pub mod mm;
pub mod oom;
pub mod posix_timers;
pub mod prctl;
pub mod sched;
pub mod seccomp;
pub mod signals;
pub mod stop;
pub mod thread;
