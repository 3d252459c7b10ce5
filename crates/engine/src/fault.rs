//! Fault injection, for tests only: makes the n-th fallible operation of a phase of a dump or
//! a restore fail, or kills (or stops) the process that runs it at that point.
//!
//! Honoured only in builds with the cargo feature `fault-injection`, which the test builds
//! turn on (the `stasis` and `stasisd` crates enable it in their dev-dependencies, so
//! `cargo test` builds the binaries with it, and `cargo build`/`cargo install` never do). In
//! other builds [`FaultPlan::from_env`] returns `None` without reading the environment and
//! the choke points are empty inline functions.
//!
//! The entry points (`stasis dump`/`restore`, stasisd at start) read [`ENV`] once into a
//! [`FaultPlan`] and run the operation inside [`armed`]. The plan is then kept in a slot of
//! the calling thread for the time of that call: the choke points (every system call injected
//! into a target, every /proc read, every seize, clone, detach, and every image file created,
//! read, written or synced) sit hundreds of calls deep, and passing the plan down to each
//! would change every signature for a test hook. The current phase is the one whose span
//! ([`crate::dump::Phase`], [`crate::restore::Phase`]) was entered last; points reached
//! outside any phase, or in another thread or another process than the one that armed the
//! plan (a forked restore child) are not counted, but for the restorer stasisd forks to
//! restore as a user, which takes the plan over ([`adopt`]), and for the dump's pages thread,
//! which arms it again for its own phase (`pages`, see [`crate::dump::Phase::Pages`]).
//!
//! Syntax of `STASIS_TEST_FAULT`:
//!
//! * `count:FILE`: count the points of each phase, appending `PHASE N` to FILE as each phase
//!   ends (a clean run tells the test how many points there are), and `PHASE N WHAT` for each
//!   point to `FILE.points` (what is done there: a test picks the points of one call);
//! * `PHASE:N`: the N-th point (from 1) of PHASE fails with an error that names it;
//! * `PHASE:N:kill`: the process is killed (SIGKILL) there (for an injected call: with the
//!   call's registers already set in the target thread, the worst moment);
//! * `PHASE:N:stop`: the process stops itself (SIGSTOP) there, and goes on when continued
//!   (a test changes the world meanwhile).
//!
//! PHASE is a name of [`crate::dump::Phase::name`] or [`crate::restore::Phase::name`].

use crate::Error;
use std::path::PathBuf;

/// The environment variable the entry points read (test builds only).
pub const ENV: &str = "STASIS_TEST_FAULT";

/// What happens at the chosen point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The operation fails with an error naming the point.
    Fail,
    /// SIGKILL to the process itself.
    Kill,
    /// SIGSTOP to the process itself; it goes on when continued.
    Stop,
}

/// A fault to inject, or points to count (see the module's doc for the syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultPlan {
    /// Count the points of each phase into this file.
    Count(PathBuf),
    /// Act at the `n`-th point (from 1) of `phase`.
    At {
        phase: String,
        n: u64,
        action: Action,
    },
}

impl FaultPlan {
    /// Parses a plan (`count:FILE`, `PHASE:N`, `PHASE:N:kill`, `PHASE:N:stop`).
    pub fn parse(s: &str) -> Result<FaultPlan, String> {
        if let Some(file) = s.strip_prefix("count:") {
            if file.is_empty() {
                return Err(format!("{ENV}=count:FILE needs a file"));
            }
            return Ok(FaultPlan::Count(PathBuf::from(file)));
        }
        let mut parts = s.split(':');
        let (Some(phase), Some(n)) = (parts.next(), parts.next()) else {
            return Err(format!(
                "{ENV}={s}: expected PHASE:N[:kill|:stop] or count:FILE"
            ));
        };
        let n: u64 = n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{ENV}={s}: N must be a number from 1"))?;
        let action = match parts.next() {
            None | Some("fail") => Action::Fail,
            Some("kill") => Action::Kill,
            Some("stop") => Action::Stop,
            Some(other) => return Err(format!("{ENV}={s}: unknown action {other:?}")),
        };
        if parts.next().is_some() {
            return Err(format!("{ENV}={s}: too many fields"));
        }
        Ok(FaultPlan::At {
            phase: phase.to_string(),
            n,
            action,
        })
    }

    /// The plan in [`ENV`], read once by an entry point. `Ok(None)` when it is unset, and
    /// always in a build without the feature `fault-injection` (the variable is not read).
    pub fn from_env() -> Result<Option<FaultPlan>, String> {
        if !cfg!(feature = "fault-injection") {
            return Ok(None);
        }
        match std::env::var(ENV) {
            Ok(s) => FaultPlan::parse(&s).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(format!("{ENV}: {e}")),
        }
    }
}

#[cfg(feature = "fault-injection")]
mod imp {
    use super::*;
    use std::cell::RefCell;
    use std::io::Write;

    struct State {
        plan: FaultPlan,
        /// The process that armed the plan: a forked child (a restore child) counts nothing.
        pid: stasis_sys::Pid,
        phase: Option<&'static str>,
        count: u64,
    }

    thread_local! {
        static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    }

    /// Appends the count of the phase that ends to the count file.
    fn flush(st: &State) {
        if st.pid != stasis_sys::process::getpid() {
            return;
        }
        if let (FaultPlan::Count(file), Some(phase)) = (&st.plan, st.phase) {
            let line = format!("{phase} {}\n", st.count);
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
    }

    pub fn armed<R>(plan: Option<&FaultPlan>, f: impl FnOnce() -> R) -> R {
        let Some(plan) = plan else { return f() };
        let previous = STATE.with(|s| {
            s.borrow_mut().replace(State {
                plan: plan.clone(),
                pid: stasis_sys::process::getpid(),
                phase: None,
                count: 0,
            })
        });
        let r = f();
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(st) = s.as_ref() {
                flush(st);
            }
            *s = previous;
        });
        r
    }

    pub fn adopt() {
        STATE.with(|s| {
            if let Some(st) = s.borrow_mut().as_mut() {
                st.pid = stasis_sys::process::getpid();
                st.phase = None;
                st.count = 0;
            }
        })
    }

    pub fn plan() -> Option<FaultPlan> {
        STATE.with(|s| {
            let s = s.borrow();
            let st = s.as_ref()?;
            (st.pid == stasis_sys::process::getpid()).then(|| st.plan.clone())
        })
    }

    pub fn flush_now() {
        STATE.with(|s| {
            if let Some(st) = s.borrow_mut().as_mut() {
                flush(st);
                st.phase = None;
                st.count = 0;
            }
        })
    }

    pub fn phase(name: &'static str) {
        STATE.with(|s| {
            if let Some(st) = s.borrow_mut().as_mut() {
                flush(st);
                st.phase = Some(name);
                st.count = 0;
            }
        })
    }

    pub fn reached(what: &str) -> Option<Action> {
        let hit = STATE.with(|s| {
            let mut s = s.borrow_mut();
            let st = s.as_mut()?;
            if st.pid != stasis_sys::process::getpid() {
                return None;
            }
            let phase = st.phase?;
            st.count += 1;
            if let FaultPlan::Count(file) = &st.plan {
                let mut name = file.clone().into_os_string();
                name.push(".points");
                let line = format!("{phase} {} {what}\n", st.count);
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(name)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
            }
            match &st.plan {
                FaultPlan::At {
                    phase: p,
                    n,
                    action,
                } if p == phase && *n == st.count => Some((*action, phase, *n)),
                _ => None,
            }
        })?;
        let (action, phase, n) = hit;
        tracing::debug!("{ENV}: point {n} of phase {phase} ({what}): {action:?}");
        let me = stasis_sys::process::getpid();
        match action {
            Action::Fail => Some(Action::Fail),
            Action::Kill => {
                let _ = stasis_sys::process::kill(me, libc::SIGKILL);
                // SIGKILL to oneself is delivered before the call returns.
                Some(Action::Kill)
            }
            Action::Stop => {
                let _ = stasis_sys::process::kill(me, libc::SIGSTOP);
                None
            }
        }
    }
}

/// Runs `f` with `plan` armed in this thread (nothing when `None`). See the module's doc.
pub fn armed<R>(plan: Option<&FaultPlan>, f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "fault-injection")]
    {
        imp::armed(plan, f)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = plan;
        f()
    }
}

/// A forked process that runs the operation on behalf of the one that armed the plan (the
/// restorer stasisd forks to restore as a user) takes the plan over: its points count, its
/// parent's (which only waits for it) are not reached meanwhile.
pub fn adopt() {
    #[cfg(feature = "fault-injection")]
    imp::adopt();
}

/// The plan armed in this thread, for a thread that works on its behalf (the dump's pages
/// thread), which arms it in turn with phases of its own: a point of its phases counts there,
/// whatever the calling thread is doing meanwhile.
pub(crate) fn plan() -> Option<FaultPlan> {
    #[cfg(feature = "fault-injection")]
    {
        imp::plan()
    }
    #[cfg(not(feature = "fault-injection"))]
    None
}

/// Writes the count of the current phase now (a process about to `_exit` without leaving
/// [`armed`]).
pub fn flush() {
    #[cfg(feature = "fault-injection")]
    imp::flush_now();
}

/// A phase starts (called when its span is entered).
#[inline(always)]
pub(crate) fn phase(name: &'static str) {
    #[cfg(feature = "fault-injection")]
    imp::phase(name);
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}

/// A choke point: `what` is about to be done. An error when the armed plan fails this point.
#[inline(always)]
pub(crate) fn point(what: &'static str) -> Result<(), Error> {
    #[cfg(feature = "fault-injection")]
    if imp::reached(what).is_some() {
        return Err(injected(what));
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = what;
    Ok(())
}

/// A choke point of one call (`what`: where in it; `name`: the call), named so in the list
/// of points and in the error of a failed point.
#[inline(always)]
pub(crate) fn point_of(what: &'static str, name: &str) -> Result<(), Error> {
    #[cfg(feature = "fault-injection")]
    {
        let full = format!("{what}: {name}");
        if imp::reached(&full).is_some() {
            return Err(injected(&full));
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (what, name);
    Ok(())
}

/// The error of a failed point (EIO, naming the point).
#[cfg(feature = "fault-injection")]
fn injected(what: &str) -> Error {
    Error::io(
        format!("{what} (fault injected by {ENV})"),
        std::io::Error::from_raw_os_error(libc::EIO),
    )
}

/// A choke point for /proc reads, with the error of a failed read.
#[inline(always)]
pub(crate) fn proc_point(path: &std::path::Path) -> Result<(), crate::procfs::ProcError> {
    #[cfg(feature = "fault-injection")]
    if imp::reached("/proc read").is_some() {
        return Err(crate::procfs::ProcError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("fault injected by {ENV}")),
        });
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_are_refused() {
        assert_eq!(
            FaultPlan::parse("collect:12:kill"),
            Ok(FaultPlan::At {
                phase: "collect".into(),
                n: 12,
                action: Action::Kill
            })
        );
        assert_eq!(
            FaultPlan::parse("load:1"),
            Ok(FaultPlan::At {
                phase: "load".into(),
                n: 1,
                action: Action::Fail
            })
        );
        assert_eq!(
            FaultPlan::parse("count:/tmp/x"),
            Ok(FaultPlan::Count("/tmp/x".into()))
        );
        for bad in [
            "",
            "collect",
            "collect:0",
            "collect:x",
            "collect:1:boom",
            "a:1:kill:2",
            "count:",
        ] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad}");
        }
    }
}
