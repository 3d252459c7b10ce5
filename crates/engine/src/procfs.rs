//! Parsers for the /proc files the dumper reads. Pure functions over text, unit-tested below;
//! the `read_*` helpers only add the file access.

use std::path::{Path, PathBuf};

/// Errors reading or parsing a /proc file.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

fn proc_path(pid: i32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

/// Reads a whole /proc (or /sys) file: one open and, for the usual small file, two reads (the
/// text, then the end). `std::fs::read` would first ask its size (0 here: one statx) and its
/// position (lseek), then read from 32 bytes up, doubling: 5 to 10 calls for a file of a few
/// hundred bytes, on every /proc file of every dump.
pub fn slurp(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    // Not `read_to_end`: for a File it first asks the size and the position (statx, lseek).
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// [`slurp`] as text.
pub fn slurp_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(slurp(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

pub fn read_string(path: &Path) -> Result<String, ProcError> {
    crate::fault::proc_point(path)?;
    slurp_string(path).map_err(|source| ProcError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub fn read_bytes(path: &Path) -> Result<Vec<u8>, ProcError> {
    crate::fault::proc_point(path)?;
    slurp(path).map_err(|source| ProcError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub fn read_link(path: &Path) -> Result<String, ProcError> {
    crate::fault::proc_point(path)?;
    let target = std::fs::read_link(path).map_err(|source| ProcError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    target
        .into_os_string()
        .into_string()
        .map_err(|_| ProcError::Parse {
            path: path.to_path_buf(),
            reason: "link target is not UTF-8".into(),
        })
}

/// One line of /proc/PID/smaps with the VmFlags that matter to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`), empty for anonymous memory.
    pub name: String,
    /// Two-letter VmFlags ("gd" for grows-down, ...), when read from smaps.
    pub vm_flags: Vec<String>,
    /// The pages the process has of its own in the mapping, in KiB: smaps's `Anonymous`
    /// (anonymous pages, copied-on-write ones of a private file mapping included) plus its
    /// `Swap`. `None` when read from maps (or not known to be current).
    pub own_kib: Option<u64>,
}

impl MapEntry {
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
}

/// Parses the header line of a maps/smaps entry.
fn parse_map_line(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?;
    let inode: u64 = it.next()?.parse().ok()?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() != 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode,
        name,
        vm_flags: Vec::new(),
        own_kib: None,
    })
}

/// Parses /proc/PID/smaps (or maps: then `vm_flags` stay empty).
pub fn parse_smaps(text: &str, path: &Path) -> Result<Vec<MapEntry>, ProcError> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.split_whitespace().map(str::to_string).collect();
            }
            continue;
        }
        for field in ["Anonymous:", "Swap:"] {
            if let Some(v) = line.strip_prefix(field) {
                let kib = v
                    .trim()
                    .strip_suffix("kB")
                    .map(str::trim)
                    .map(str::parse::<u64>);
                let Some(Ok(kib)) = kib else {
                    return Err(ProcError::Parse {
                        path: path.to_path_buf(),
                        reason: format!("bad line {line:?}"),
                    });
                };
                if let Some(last) = out.last_mut() {
                    last.own_kib = Some(last.own_kib.unwrap_or(0) + kib);
                }
            }
        }
        // smaps detail lines look like "Rss:   4 kB"; header lines start with a hex range.
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            let e = parse_map_line(line).ok_or_else(|| ProcError::Parse {
                path: path.to_path_buf(),
                reason: format!("bad line {line:?}"),
            })?;
            out.push(e);
        }
    }
    Ok(out)
}

/// /proc/PID/smaps: the mappings with their VmFlags. Costly for a large process (the kernel
/// walks every page table to count what smaps shows: ~17 ms for 1 GiB): read
/// [`read_maps`] when the flags are not needed.
pub fn read_smaps(pid: i32) -> Result<Vec<MapEntry>, ProcError> {
    let path = proc_path(pid, "smaps");
    parse_smaps(&read_string(&path)?, &path)
}

/// `given` (the mappings of `pid` as read a moment ago) when there are, else /proc/PID/maps
/// read now.
pub fn maps_or_read(
    pid: i32,
    given: Option<&[MapEntry]>,
) -> Result<std::borrow::Cow<'_, [MapEntry]>, ProcError> {
    Ok(match given {
        Some(m) => std::borrow::Cow::Borrowed(m),
        None => std::borrow::Cow::Owned(read_maps(pid)?),
    })
}

/// /proc/PID/maps: the mappings without their VmFlags (cheap).
pub fn read_maps(pid: i32) -> Result<Vec<MapEntry>, ProcError> {
    let path = proc_path(pid, "maps");
    parse_smaps(&read_string(&path)?, &path)
}

/// Whether two readings of the mappings list the same mappings (flags aside).
pub fn same_mappings(a: &[MapEntry], b: &[MapEntry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (x.start, x.end, x.read, x.write, x.exec, x.shared, x.offset)
                == (y.start, y.end, y.read, y.write, y.exec, y.shared, y.offset)
                && (x.dev_major, x.dev_minor, x.inode, &x.name)
                    == (y.dev_major, y.dev_minor, y.inode, &y.name)
        })
}

/// The resource limits of `pid` from /proc/PID/limits, soft and hard, in resource order
/// (RLIMIT_CPU first), with RLIM_INFINITY for "unlimited": the values prlimit64 gives, read
/// without running a call inside the process (prlimit64 on a process of another uid needs
/// CAP_SYS_RESOURCE, which root lacks on some systems). At least `n` rows are required; the
/// first `n` are returned.
pub fn read_limits(pid: i32, n: usize) -> Result<Vec<(u64, u64)>, ProcError> {
    let path = proc_path(pid, "limits");
    let text = read_string(&path)?;
    let bad = |reason: String| ProcError::Parse {
        path: path.clone(),
        reason,
    };
    let value = |v: &str| -> Option<u64> {
        if v == "unlimited" {
            Some(u64::MAX)
        } else {
            v.parse().ok()
        }
    };
    let mut out = Vec::with_capacity(n);
    // Rows are "%-25s %-20s %-20s %-10s": the name, the soft and hard limits, the unit.
    for line in text.lines().skip(1).take(n) {
        let fields = line
            .get(26..)
            .ok_or_else(|| bad(format!("short line {line:?}")))?;
        let mut it = fields.split_whitespace();
        match (it.next().and_then(value), it.next().and_then(value)) {
            (Some(soft), Some(hard)) => out.push((soft, hard)),
            _ => return Err(bad(format!("bad line {line:?}"))),
        }
    }
    if out.len() != n {
        return Err(bad(format!("{} limits, not {n}", out.len())));
    }
    Ok(out)
}

/// The fields of /proc/PID/stat we use (1-based field numbers as in proc(5)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// Field 2, the command name (without its parentheses).
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Field 7: the device number of the controlling terminal (0: none).
    pub tty_nr: u64,
    /// Field 8: the foreground process group of the controlling terminal (-1: none).
    pub tpgid: i32,
    /// Field 9: the kernel's flags of the task (PF_*).
    pub flags: u64,
    pub num_threads: i64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Field 39: the CPU it last ran on.
    pub processor: Option<usize>,
    pub exit_code: i32,
}

/// Parses /proc/PID/stat; the command name may contain spaces and parentheses, so fields are
/// counted from the last ')'.
pub fn parse_stat(text: &str, path: &Path) -> Result<Stat, ProcError> {
    let bad = |reason: &str| ProcError::Parse {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let close = text.rfind(')').ok_or_else(|| bad("no ')'"))?;
    let open = text[..close].find('(').ok_or_else(|| bad("no '('"))?;
    // Field 3 (state) is the first after ") ".
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<&str, ProcError> {
        rest.get(n - 3)
            .copied()
            .ok_or_else(|| bad("too few fields"))
    };
    let num = |n: usize| -> Result<u64, ProcError> {
        field(n)?.parse::<u64>().map_err(|_| bad("bad number"))
    };
    let int = |n: usize| -> Result<i64, ProcError> {
        field(n)?.parse::<i64>().map_err(|_| bad("bad number"))
    };
    Ok(Stat {
        comm: text[open + 1..close].to_string(),
        state: field(3)?.chars().next().unwrap_or('?'),
        ppid: int(4)? as i32,
        pgid: int(5)? as i32,
        sid: int(6)? as i32,
        tty_nr: int(7)? as u32 as u64,
        tpgid: int(8)? as i32,
        flags: num(9)?,
        num_threads: int(20)?,
        start_code: num(26)?,
        end_code: num(27)?,
        start_stack: num(28)?,
        start_data: num(45)?,
        end_data: num(46)?,
        start_brk: num(47)?,
        arg_start: num(48)?,
        arg_end: num(49)?,
        env_start: num(50)?,
        env_end: num(51)?,
        processor: num(39).ok().map(|c| c as usize),
        // Field 52 (exit code, as waitpid reports it) exists since Linux 3.5.
        exit_code: int(52).unwrap_or(0) as i32,
    })
}

pub fn read_stat(pid: i32) -> Result<Stat, ProcError> {
    let path = proc_path(pid, "stat");
    parse_stat(&read_string(&path)?, &path)
}

/// /proc/PID/task/TID/stat: one thread's stat.
pub fn read_thread_stat(pid: i32, tid: i32) -> Result<Stat, ProcError> {
    let path = proc_path(pid, &format!("task/{tid}/stat"));
    parse_stat(&read_string(&path)?, &path)
}

/// Parses a file holding one decimal number and a newline (/proc/PID/oom_score_adj,
/// /proc/PID/loginuid, ...).
pub fn parse_number<T: std::str::FromStr>(text: &str, path: &Path) -> Result<T, ProcError> {
    text.trim().parse().map_err(|_| ProcError::Parse {
        path: path.to_path_buf(),
        reason: format!("not a number: {text:?}"),
    })
}

/// Reads a /proc file holding one decimal number.
pub fn read_number<T: std::str::FromStr>(path: &Path) -> Result<T, ProcError> {
    parse_number(&read_string(path)?, path)
}

/// The fields of /proc/PID/status we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub umask: u32,
    pub tgid: i32,
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
    pub tracer_pid: i32,
    /// VmLck: memory locked (mlock), in kB.
    pub locked_kb: u64,
}

pub fn parse_status(text: &str, path: &Path) -> Result<Status, ProcError> {
    let bad = |reason: String| ProcError::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let mut s = Status::default();
    let four = |v: &str| -> Result<[u32; 4], ProcError> {
        let n: Vec<u32> = v
            .split_whitespace()
            .map(|x| x.parse().map_err(|_| bad(format!("bad id list {v:?}"))))
            .collect::<Result<_, _>>()?;
        n.try_into()
            .map_err(|_| bad(format!("expected 4 ids in {v:?}")))
    };
    let hex =
        |v: &str| u64::from_str_radix(v.trim(), 16).map_err(|_| bad(format!("bad hex {v:?}")));
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Umask" => s.umask = u32::from_str_radix(v, 8).map_err(|_| bad("bad umask".into()))?,
            "Tgid" => s.tgid = v.parse().map_err(|_| bad("bad tgid".into()))?,
            "TracerPid" => s.tracer_pid = v.parse().map_err(|_| bad("bad tracer".into()))?,
            "Uid" => s.uids = four(v)?,
            "Gid" => s.gids = four(v)?,
            "Groups" => {
                s.groups = v
                    .split_whitespace()
                    .map(|x| x.parse().map_err(|_| bad("bad group".into())))
                    .collect::<Result<_, _>>()?
            }
            "CapInh" => s.cap_inh = hex(v)?,
            "CapPrm" => s.cap_prm = hex(v)?,
            "CapEff" => s.cap_eff = hex(v)?,
            "CapBnd" => s.cap_bnd = hex(v)?,
            "CapAmb" => s.cap_amb = hex(v)?,
            "NoNewPrivs" => s.no_new_privs = v == "1",
            "Seccomp" => s.seccomp = v.parse().map_err(|_| bad("bad seccomp".into()))?,
            "VmLck" => {
                s.locked_kb = v
                    .strip_suffix(" kB")
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| bad(format!("bad VmLck {v:?}")))?
            }
            _ => {}
        }
    }
    Ok(s)
}

pub fn read_status(pid: i32) -> Result<Status, ProcError> {
    let path = proc_path(pid, "status");
    parse_status(&read_string(&path)?, &path)
}

/// The fields of /proc/PID/fdinfo/N we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    pub mnt_id: u64,
    pub ino: u64,
}

pub fn parse_fdinfo(text: &str, path: &Path) -> Result<FdInfo, ProcError> {
    let bad = |reason: String| ProcError::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let mut fi = FdInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => fi.pos = v.parse().map_err(|_| bad(format!("bad pos {v:?}")))?,
            "flags" => {
                fi.flags = u32::from_str_radix(v, 8).map_err(|_| bad(format!("bad flags {v:?}")))?
            }
            "mnt_id" => fi.mnt_id = v.parse().map_err(|_| bad(format!("bad mnt_id {v:?}")))?,
            "ino" => fi.ino = v.parse().map_err(|_| bad(format!("bad ino {v:?}")))?,
            _ => {}
        }
    }
    Ok(fi)
}

pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    let path = proc_path(pid, &format!("fdinfo/{fd}"));
    parse_fdinfo(&read_string(&path)?, &path)
}

/// Lists the numeric entries of a /proc directory (fds or task ids), sorted.
pub fn list_numeric(path: &Path) -> Result<Vec<i32>, ProcError> {
    let io = |source| ProcError::Io {
        path: path.to_path_buf(),
        source,
    };
    crate::fault::proc_point(path)?;
    let mut out = Vec::new();
    for e in std::fs::read_dir(path).map_err(io)? {
        let e = e.map_err(io)?;
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub fn list_threads(pid: i32) -> Result<Vec<i32>, ProcError> {
    list_numeric(&proc_path(pid, "task"))
}

pub fn list_fds(pid: i32) -> Result<Vec<i32>, ProcError> {
    list_numeric(&proc_path(pid, "fd"))
}

/// Parses /proc/PID/auxv (pairs of native words) into a flat vector ending with AT_NULL.
pub fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    for pair in bytes.chunks_exact(16) {
        let mut k = [0u8; 8];
        let mut v = [0u8; 8];
        k.copy_from_slice(&pair[..8]);
        v.copy_from_slice(&pair[8..]);
        let (k, v) = (u64::from_le_bytes(k), u64::from_le_bytes(v));
        out.push(k);
        out.push(v);
        if k == 0 {
            break;
        }
    }
    out
}

pub fn read_auxv(pid: i32) -> Result<Vec<u64>, ProcError> {
    Ok(parse_auxv(&read_bytes(&proc_path(pid, "auxv"))?))
}

/// The children of every thread of `pid` (from /proc/PID/task/TID/children).
pub fn children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut out = Vec::new();
    for tid in list_threads(pid)? {
        let path = proc_path(pid, &format!("task/{tid}/children"));
        let text = match slurp_string(&path) {
            Ok(t) => t,
            // The thread exited meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ProcError::Io { path, source }),
        };
        for c in text.split_whitespace() {
            out.push(c.parse().map_err(|_| ProcError::Parse {
                path: path.clone(),
                reason: format!("bad pid {c:?}"),
            })?);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Reads /proc/PID/personality (hex).
pub fn read_personality(pid: i32) -> Result<u32, ProcError> {
    let path = proc_path(pid, "personality");
    let t = read_string(&path)?;
    u32::from_str_radix(t.trim(), 16).map_err(|_| ProcError::Parse {
        path,
        reason: format!("bad personality {t:?}"),
    })
}

/// /proc/PID/map_files/START-END: the file behind one mapping (opening it needs
/// CAP_SYS_ADMIN; for shared anonymous memory it is the memory object itself).
pub fn map_file(pid: i32, start: u64, end: u64) -> String {
    format!("/proc/{pid}/map_files/{start:x}-{end:x}")
}

pub fn link(pid: i32, what: &str) -> Result<String, ProcError> {
    read_link(&proc_path(pid, what))
}

pub fn comm(pid: i32, tid: i32) -> Result<String, ProcError> {
    let path = proc_path(pid, &format!("task/{tid}/comm"));
    Ok(read_string(&path)?.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/proc/x";

    /// /proc/self/limits gives what getrlimit gives, for every resource.
    #[test]
    fn limits_match_getrlimit() {
        let limits = read_limits(stasis_sys::process::getpid(), 16).expect("read limits");
        for (resource, &(soft, hard)) in limits.iter().enumerate() {
            let (s, h) = stasis_sys::process::getrlimit(resource as u32).expect("getrlimit");
            assert_eq!((soft, hard), (s, h), "resource {resource}");
        }
        assert!(read_limits(stasis_sys::process::getpid(), 40).is_err());
    }

    #[test]
    fn smaps() {
        let text = "\
55d4c8a00000-55d4c8a02000 r--p 00000000 fe:01 1234  /usr/bin/cat
Size:                  8 kB
Anonymous:             0 kB
Swap:                  0 kB
SwapPss:               0 kB
VmFlags: rd mr mw me dw sd
7ffd1c9e0000-7ffd1ca01000 rw-p 00000000 00:00 0                          [stack]
Anonymous:            12 kB
AnonHugePages:         0 kB
Swap:                  8 kB
SwapPss:               8 kB
VmFlags: rd wr mr mw me gd ac
7f0000000000-7f0000001000 rw-s 00000000 00:01 99   /dev/zero (deleted)
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
        let m = parse_smaps(text, Path::new(P)).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].name, "/usr/bin/cat");
        assert_eq!(
            (m[0].dev_major, m[0].dev_minor, m[0].inode),
            (0xfe, 1, 1234)
        );
        assert!(m[1].has_flag("gd") && m[1].read && m[1].write && !m[1].shared);
        assert_eq!(m[1].name, "[stack]");
        assert!(m[2].shared);
        assert_eq!(m[2].name, "/dev/zero (deleted)");
        assert_eq!(m[3].start, 0xffffffffff600000);
        // Anonymous + Swap; unknown without the lines (maps).
        assert_eq!(
            (m[0].own_kib, m[1].own_kib, m[2].own_kib),
            (Some(0), Some(20), None)
        );
        assert!(parse_smaps("7f00-7f01 rw-p 0 0:0 x\n", Path::new(P)).is_err());
        let bad = "7f00-7f01 rw-p 0 0:0 0\nAnonymous: lots\n";
        assert!(parse_smaps(bad, Path::new(P)).is_err());
    }

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        let text = format!("123 (a (b) c) {}\n", fields.join(" "));
        let s = parse_stat(&text, Path::new(P)).unwrap();
        assert_eq!(s.comm, "a (b) c");
        assert_eq!(s.state, 'S');
        assert_eq!((s.ppid, s.pgid, s.sid, s.flags), (4, 5, 6, 9));
        assert_eq!((s.start_code, s.end_code, s.start_stack), (26, 27, 28));
        assert_eq!((s.start_data, s.env_end), (45, 51));
        assert!(parse_stat("1 (x) S 2", Path::new(P)).is_err());
        assert!(parse_stat("1 x) S 2", Path::new(P)).is_err(), "no '('");
    }

    /// A zombie's stat, as the kernel writes it (its memory fields are 0).
    #[test]
    fn stat_of_a_zombie() {
        let text = "4242 (sleep) Z 4100 4242 4242 0 -1 4227084 101 0 0 0 0 0 0 0 20 0 1 0 \
                    1043 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 \
                    0 0 0 0 9\n";
        let s = parse_stat(text, Path::new(P)).unwrap();
        assert_eq!(
            (s.comm.as_str(), s.state, s.ppid, s.pgid),
            ("sleep", 'Z', 4100, 4242)
        );
        assert_eq!(s.exit_code, 9);
    }

    #[test]
    fn status() {
        let text = "Name:\tcat\nUmask:\t0022\nTgid:\t7\nTracerPid:\t0\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 \nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t0\nVmLck:\t      64 kB\n";
        let s = parse_status(text, Path::new(P)).unwrap();
        assert_eq!(s.umask, 0o22);
        assert_eq!(s.uids, [1, 2, 3, 4]);
        assert_eq!(s.gids, [5, 6, 7, 8]);
        assert_eq!(s.groups, vec![10, 20]);
        assert_eq!(s.cap_prm, 0x1ffffffffff);
        assert!(s.no_new_privs);
        assert_eq!(s.locked_kb, 64);
        assert!(parse_status("Uid:\t1 2\n", Path::new(P)).is_err());
        assert!(parse_status("VmLck:\t64 pages\n", Path::new(P)).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number::<i32>("-17\n", Path::new(P)).unwrap(), -17);
        assert_eq!(
            parse_number::<u32>("4294967295\n", Path::new(P)).unwrap(),
            u32::MAX
        );
        assert!(parse_number::<u32>("-1\n", Path::new(P)).is_err());
        assert!(parse_number::<i32>("", Path::new(P)).is_err());
    }

    #[test]
    fn fdinfo() {
        let fi = parse_fdinfo(
            "pos:\t42\nflags:\t02102002\nmnt_id:\t25\nino:\t77\n",
            Path::new(P),
        )
        .unwrap();
        assert_eq!(
            fi,
            FdInfo {
                pos: 42,
                flags: 0o2102002,
                mnt_id: 25,
                ino: 77
            }
        );
        assert!(parse_fdinfo("pos:\tx\n", Path::new(P)).is_err());
    }

    #[test]
    fn auxv_stops_at_null() {
        let mut b = Vec::new();
        for w in [6u64, 4096, 0, 0, 99, 99] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(parse_auxv(&b), vec![6, 4096, 0, 0]);
    }
}
