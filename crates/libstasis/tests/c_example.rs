//! The C side: the header compiles, `examples/c/selfdump.c` links against libstasis.so and
//! libstasis.a (built for this test run with `cargo build --release`), fails cleanly without
//! a daemon, and takes both branches against a fake daemon. Skipped (with a notice) without gcc.
// Helpers outside #[test] functions panic on setup failures on purpose.
#![allow(clippy::unwrap_used)]

use stasis_client::protocol::{self, Message};
use stasis_sys::socket as sock;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where libstasis.so and libstasis.a are: built once per run with `cargo build --release` in a
/// target directory of their own (the outer cargo holds the lock of the main one, and the test
/// must not depend on the order in which cargo builds artifacts). The self-dump tests of stasisd
/// use the same directory, so the library is built once.
fn lib_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("selfdump-libstasis");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(Command::new(cargo)
            .args(["build", "--release", "-p", "libstasis", "--manifest-path"])
            .arg(repo().join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .stdin(std::process::Stdio::null()));
        target.join("release")
    })
    .clone()
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("libstasis-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("images")).unwrap();
    d
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds the example, dynamically or statically linked.
fn build_example(dir: &Path, statically: bool) -> PathBuf {
    let exe = dir.join(if statically {
        "selfdump-static"
    } else {
        "selfdump"
    });
    let libdir = lib_dir();
    let lib = if statically {
        "-l:libstasis.a"
    } else {
        "-lstasis"
    };
    let mut cmd = Command::new("gcc");
    cmd.args(["-Wall", "-Wextra", "-Werror", "-I"])
        .arg(repo().join("include"))
        .arg(repo().join("examples/c/selfdump.c"))
        .arg("-L")
        .arg(&libdir)
        .arg(lib);
    if statically {
        cmd.args("-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc".split(' '));
    }
    run(cmd.arg("-o").arg(&exe));
    exe
}

fn run_example(exe: &Path, images: &Path, socket: &Path) -> Output {
    Command::new(exe)
        .arg(images)
        .env("STASIS_SOCKET", socket)
        .env("LD_LIBRARY_PATH", lib_dir())
        .output()
        .unwrap()
}

#[test]
fn header_is_valid_c_and_cxx() {
    if !have("gcc") {
        eprintln!("notice: gcc not found; C tests skipped");
        return;
    }
    let d = scratch("header");
    let src = d.join("h.c");
    std::fs::write(&src, "#include <stasis.h>\nint main(void) { return 0; }\n").unwrap();
    run(Command::new("gcc")
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-I",
        ])
        .arg(repo().join("include"))
        .arg(&src));
    if have("g++") {
        run(Command::new("g++")
            .args(["-x", "c++", "-Wall", "-Werror", "-fsyntax-only", "-I"])
            .arg(repo().join("include"))
            .arg(&src));
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn pkg_config_version_matches() {
    let pc = std::fs::read_to_string(repo().join("include/stasis.pc")).unwrap();
    let want = format!("Version: {}", env!("CARGO_PKG_VERSION"));
    assert!(
        pc.lines().any(|l| l == want),
        "include/stasis.pc lacks `{want}`"
    );
}

#[test]
fn example_fails_cleanly_without_daemon() {
    if !have("gcc") {
        eprintln!("notice: gcc not found; C tests skipped");
        return;
    }
    let d = scratch("nodaemon");
    for statically in [false, true] {
        let exe = build_example(&d, statically);
        let socket = d.join("nobody-listens.sock");
        let out = run_example(&exe, &d.join("images"), &socket);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("(-1002)"), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot reach the stasis daemon at {}",
                socket.display()
            )),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// Serves one self-dump request with `Done { outcome }`; returns the flags and whether the
/// images directory descriptor arrived.
fn serve_once(socket: &Path, outcome: u32) -> std::thread::JoinHandle<(u32, bool)> {
    let listener = sock::seqpacket_listen(socket, 1).unwrap();
    std::thread::spawn(move || {
        let conn = sock::accept(listener.as_fd()).unwrap();
        let (hello, _) = protocol::recv(conn.as_fd()).unwrap();
        assert!(matches!(hello, Message::Hello { .. }), "{hello:?}");
        let welcome = Message::Welcome {
            version: protocol::VERSION.into(),
        };
        protocol::send(conn.as_fd(), &welcome, None).unwrap();
        let (req, dir) = protocol::recv(conn.as_fd()).unwrap();
        let Message::DumpSelf { flags, conn_fd } = req else {
            panic!("{req:?}")
        };
        assert!(conn_fd >= 0);
        protocol::send(conn.as_fd(), &Message::Done { outcome }, None).unwrap();
        (flags, dir.is_some())
    })
}

#[test]
fn example_against_a_fake_daemon() {
    if !have("gcc") {
        eprintln!("notice: gcc not found; C tests skipped");
        return;
    }
    let d = scratch("fake");
    for (statically, outcome, word) in [(false, 0, "dumped"), (true, 1, "restored")] {
        let exe = build_example(&d, statically);
        let socket = d.join(format!("d{outcome}.sock"));
        let daemon = serve_once(&socket, outcome);
        let out = run_example(&exe, &d.join("images"), &socket);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("{word} (pid ")), "{stdout}");
        assert!(stdout.contains("memory pattern ok (64 MiB)"), "{stdout}");
        assert!(stdout.contains("count 5"), "{stdout}");
        assert_eq!(daemon.join().unwrap(), (0, true));
    }
    std::fs::remove_dir_all(d).unwrap();
}
