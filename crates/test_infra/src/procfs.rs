//! What /proc says about a process.

use std::fs;
use std::path::Path;

/// Whether a process (or thread) `pid` exists (a zombie too).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A field of the text of a /proc/PID/status file, e.g. `field(&text, "State")`, trimmed.
pub fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// A field of /proc/PID/status, e.g. `status_field(pid, "TracerPid")`.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field(&text, key).map(str::to_string)
}

/// The numbers of a field of /proc/PID/status, e.g. the four ids of `Uid` (empty when the
/// process does not exist).
pub fn status_ids(pid: i32, key: &str) -> Vec<u32> {
    status_field(pid, key)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// The parent of `pid`.
pub fn ppid(pid: i32) -> Option<i32> {
    status_field(pid, "PPid")?.parse().ok()
}

/// The state letter of `pid` (`R`, `S`, `t`, `Z`...).
pub fn state(pid: i32) -> Option<char> {
    status_field(pid, "State")?.chars().next()
}

/// A process as a harness sees it while waiting for it to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcState {
    /// No such process.
    Absent,
    /// Exists, not traced, not stopped.
    Running,
    /// Exited, not reaped yet.
    Zombie,
    /// Exists but stopped or traced (being dumped or restored, say).
    Busy,
}

/// The [`ProcState`] of `pid`.
pub fn proc_state(pid: i32) -> ProcState {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return ProcState::Absent;
    };
    let state = field(&s, "State").and_then(|v| v.chars().next());
    let tracer = field(&s, "TracerPid");
    match state {
        Some('Z') | Some('X') => ProcState::Zombie,
        Some('t') | Some('T') => ProcState::Busy,
        Some(_) if tracer == Some("0") => ProcState::Running,
        _ => ProcState::Busy,
    }
}

/// One line describing what /proc says about `pid` (state, tracer, parent, executable), for
/// error messages.
pub fn describe_proc(pid: i32) -> String {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => "no such process".to_string(),
        Ok(s) => {
            let exe = fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| format!("? ({e})"));
            format!(
                "State {}, TracerPid {}, PPid {}, exe {}",
                field(&s, "State").unwrap_or("?"),
                field(&s, "TracerPid").unwrap_or("?"),
                field(&s, "PPid").unwrap_or("?"),
                exe
            )
        }
    }
}

/// Fields of /proc/PID/stat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Field 2, without its parentheses.
    pub comm: String,
    /// Field 3.
    pub state: char,
    /// Field 4.
    pub ppid: i32,
    /// Field 5: the process group.
    pub pgrp: i32,
    /// Field 6.
    pub session: i32,
    /// Field 22, in clock ticks since boot: with the pid, names one process for good.
    pub start_time: u64,
}

/// /proc/PID/stat of `pid`.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let f: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // f[0] is field 3 (state), so field n is f[n - 3].
    Some(Stat {
        comm,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// The start time of `pid` (see [`Stat::start_time`]).
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// The pids of all processes now (the numeric entries of /proc).
pub fn pids() -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// The children of process `pid` (of its main thread), from /proc/PID/task/PID/children.
pub fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_tricky_comm() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "a) b (c");
        assert_eq!(
            (s.state, s.ppid, s.pgrp, s.session, s.start_time),
            ('S', 1, 42, 42, 12345)
        );
    }

    #[test]
    fn this_process() {
        let me = std::process::id() as i32;
        assert!(exists(me));
        assert_eq!(proc_state(me), ProcState::Running);
        assert_eq!(stat(me).unwrap().ppid, ppid(me).unwrap());
        assert_eq!(status_ids(me, "Uid").len(), 4);
        assert!(pids().contains(&me));
        assert!(describe_proc(me).starts_with("State "));
    }
}
