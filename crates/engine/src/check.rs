//! `stasis check`: probes the kernel features the engine relies on, each with a real call on
//! a short-lived child process where needed.

use crate::inject::{self, Injector};
use crate::{procfs, Error};
use stasis_sys::{process, ptrace};

/// One probed feature.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
        },
    }
}

/// Runs every probe.
pub fn run() -> Vec<Check> {
    let mut out = vec![
        check(
            "root",
            if process::geteuid() == 0 {
                Ok("running as root".into())
            } else {
                Err("stasis dump/restore need root".into())
            },
        ),
        check("kernel", Ok(stasis_sys::process::kernel_release())),
        check(
            "vdso syscall instruction",
            inject::vdso_syscall_offset()
                .map(|o| format!("at offset {o:#x}"))
                .map_err(|e| e.to_string()),
        ),
        check(
            "pidfd_open",
            process::pidfd_open(process::getpid())
                .map(|_| "works".to_string())
                .map_err(|e| e.to_string()),
        ),
        check(
            "/proc/self/pagemap",
            std::fs::File::open("/proc/self/pagemap")
                .map(|_| "readable".to_string())
                .map_err(|e| e.to_string()),
        ),
        check(
            "/proc/self/map_files",
            std::fs::read_dir("/proc/self/map_files")
                .map(|_| "readable".to_string())
                .map_err(|e| e.to_string()),
        ),
        check(
            "clone3 set_tid",
            std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
                .map(|_| "ns_last_pid present (CONFIG_CHECKPOINT_RESTORE)".to_string())
                .map_err(|e| e.to_string()),
        ),
    ];
    out.push(check(
        "ptrace + syscall injection",
        probe_injection().map_err(|e| e.to_string()),
    ));
    out
}

/// Starts `sleep`, seizes it, runs getpid inside it, and kills it.
fn probe_injection() -> Result<String, Error> {
    let mut child = std::process::Command::new("sleep")
        .arg("10")
        .spawn()
        .map_err(|e| Error::io("spawn sleep", e))?;
    let pid = child.id() as i32;
    let r = (|| {
        let mut frozen = crate::dump::freeze::Frozen::freeze(pid)?;
        let vdso = procfs::read_smaps(pid)?
            .into_iter()
            .find(|m| m.name == "[vdso]")
            .ok_or_else(|| Error::Invalid("no vdso".into()))?;
        let mut inj = Injector::new(pid, vdso.start + inject::vdso_syscall_offset()?)?;
        let got = inj.getpid()?;
        let xstate = ptrace::get_xstate(pid).map_err(|e| Error::sys("PTRACE_GETREGSET", pid, e))?;
        inj.finish()?;
        frozen.thaw()?;
        if got != pid {
            return Err(Error::Invalid(format!(
                "getpid inside the target returned {got}"
            )));
        }
        Ok(format!(
            "getpid inside a seized process returned {got}; xstate is {} bytes",
            xstate.len()
        ))
    })();
    let _ = child.kill();
    let _ = child.wait();
    r
}
