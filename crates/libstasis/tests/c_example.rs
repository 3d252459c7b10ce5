//! The C side: the header compiles, `examples/c/selfdump.c` links against libstasis.so and
//! libstasis.a (built for this test run with `cargo build --release`), fails cleanly without
//! a daemon, and takes both branches against a fake daemon. Needs gcc (see
//! `stasis_test_infra::require_tool`).
// Helpers outside #[test] functions panic on setup failures on purpose.
#![allow(clippy::unwrap_used)]

use stasis_client::protocol::{self, Message};
use stasis_sys::socket as sock;
use stasis_test_infra::build::{libstasis_release_dir, run_build};
use stasis_test_infra::{repo_root, require_tool, WorkDir};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where libstasis.so and libstasis.a are (built once per run).
fn lib_dir() -> PathBuf {
    libstasis_release_dir(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap()
}

/// A work directory with an `images` subdirectory.
fn scratch(name: &str) -> WorkDir {
    let d = WorkDir::unique(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &format!("libstasis-{name}"),
    );
    d.mkdir("images");
    d
}

fn run(cmd: &mut Command) -> Output {
    run_build(cmd).unwrap_or_else(|e| panic!("{e}"))
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
        .arg(repo_root().join("include"))
        .arg(repo_root().join("examples/c/selfdump.c"))
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
    if !require_tool("gcc") {
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
        .arg(repo_root().join("include"))
        .arg(&src));
    if require_tool("g++") {
        run(Command::new("g++")
            .args(["-x", "c++", "-Wall", "-Werror", "-fsyntax-only", "-I"])
            .arg(repo_root().join("include"))
            .arg(&src));
    }
}

#[test]
fn pkg_config_version_matches() {
    let pc = std::fs::read_to_string(repo_root().join("include/stasis.pc")).unwrap();
    let want = format!("Version: {}", env!("CARGO_PKG_VERSION"));
    assert!(
        pc.lines().any(|l| l == want),
        "include/stasis.pc lacks `{want}`"
    );
}

#[test]
fn example_fails_cleanly_without_daemon() {
    if !require_tool("gcc") {
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
    if !require_tool("gcc") {
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
}
