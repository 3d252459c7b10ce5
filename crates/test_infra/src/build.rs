//! Building what the tests run: the C programs of `tests/zdtm/` and the release libstasis.

use crate::env::repo_root;
use crate::process::describe_exit_status;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// Runs a build command (gcc, cargo) to completion with stdin `/dev/null`. Err, with the
/// command, how it ended and its output, when it cannot start or fails.
pub fn run_build(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            describe_exit_status(out.status),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

/// `tests/zdtm/`: the ZDTM test programs and their library (`lib/`).
pub fn zdtm_dir() -> PathBuf {
    repo_root().join("tests").join("zdtm")
}

/// Compiles `tests/zdtm/NAME.c` with the ZDTM library into `bin_dir/NAME`, with the flags of the
/// ZDTM protocol (tests/zdtm/README.md):
/// `gcc -O1 -g -Wall -Werror -D_GNU_SOURCE -I tests/zdtm/lib -o BIN NAME.c lib/zdtm.c`.
///
/// The program is built under a private name and renamed into place, so that another test
/// binary (or a process of an earlier run) may go on executing the old file.
pub fn zdtm_program(name: &str, bin_dir: &Path) -> Result<PathBuf, String> {
    let src_dir = zdtm_dir();
    let src = src_dir.join(format!("{name}.c"));
    if !src.exists() {
        return Err(format!("missing test program {}", src.display()));
    }
    let lib = src_dir.join("lib");
    if !lib.join("zdtm.c").exists() || !lib.join("zdtm.h").exists() {
        return Err(format!(
            "missing test library {}/zdtm.c or zdtm.h",
            lib.display()
        ));
    }
    fs::create_dir_all(bin_dir).map_err(|e| format!("mkdir {}: {e}", bin_dir.display()))?;
    let bin = bin_dir.join(name);
    let tmp = bin_dir.join(format!(".{name}.{}", std::process::id()));
    let built = run_build(
        Command::new("gcc")
            .args(["-O1", "-g", "-Wall", "-Werror", "-D_GNU_SOURCE", "-I"])
            .arg(&lib)
            .arg("-o")
            .arg(&tmp)
            .arg(&src)
            .arg(lib.join("zdtm.c")),
    );
    if let Err(e) = built {
        let _ = fs::remove_file(&tmp);
        return Err(format!("compiling {}: {e}", src.display()));
    }
    fs::rename(&tmp, &bin).map_err(|e| format!("rename to {}: {e}", bin.display()))?;
    Ok(bin)
}

/// The directory holding `libstasis.so` and `libstasis.a`, built once per test process with
/// `cargo build --release -p libstasis` in a target directory of its own under
/// `target_tmpdir` (pass `env!("CARGO_TARGET_TMPDIR")`): the cargo running the tests holds the
/// lock of the main target directory, and a test must not depend on the order in which cargo
/// builds artifacts. Every test binary uses the same directory, so the library is built once
/// and later builds are no-ops.
pub fn libstasis_release_dir(target_tmpdir: &Path) -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = target_tmpdir.join("selfdump-libstasis");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let started = Instant::now();
        run_build(
            Command::new(cargo)
                .args(["build", "--release", "-p", "libstasis", "--manifest-path"])
                .arg(repo_root().join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(repo_root()),
        )?;
        eprintln!(
            "libstasis built in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(target.join("release"))
    })
    .clone()
}

/// Compiles the C program `src` into `exe` (mode 0755) with
/// `gcc -O1 -g -Wall -Wextra -Werror -I include`, linked with the release `libstasis.a` of
/// [`libstasis_release_dir`] (and what the Rust standard library inside it needs) when
/// `with_libstasis`. `target_tmpdir` as for [`libstasis_release_dir`].
pub fn c_program(
    target_tmpdir: &Path,
    src: &Path,
    exe: &Path,
    with_libstasis: bool,
) -> Result<PathBuf, String> {
    let mut cmd = Command::new("gcc");
    cmd.args(["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(repo_root().join("include"))
        .arg(src)
        .arg("-o")
        .arg(exe);
    if with_libstasis {
        cmd.arg(libstasis_release_dir(target_tmpdir)?.join("libstasis.a"))
            .args("-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc".split(' '));
    }
    run_build(&mut cmd)?;
    fs::set_permissions(exe, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", exe.display()))?;
    Ok(exe.to_path_buf())
}
