//! A pseudo-terminal the test holds the master of, acting as a user's terminal: programs run
//! on its slave, the test types at the master, and a thread collects what they write.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long [`Terminal::wait_output`] waits.
pub const OUTPUT_TIMEOUT: Duration = Duration::from_secs(20);

/// A pseudo-terminal the test holds the master of: what is written to the slave side is
/// collected by a thread.
pub struct Terminal {
    pub master: File,
    /// N of /dev/pts/N.
    pub index: u32,
    /// A description of the slave (O_NOCTTY), for the programs' stdio.
    pub slave: OwnedFd,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    /// A new pty with this window size. Panics when it cannot be made (a test's setup).
    pub fn open(rows: u16, cols: u16) -> Terminal {
        let (master, slave, index) = stasis_sys::tty::open_pty().expect("open a pty");
        stasis_sys::tty::set_window_size(
            master.as_fd(),
            &stasis_sys::tty::WinSize {
                rows,
                cols,
                xpixel: 0,
                ypixel: 0,
            },
        )
        .expect("TIOCSWINSZ");
        let master = File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup the master");
        let out = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .expect("the output lock")
                    .extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            master,
            index,
            slave,
            output,
        }
    }

    /// `/dev/pts/N`.
    pub fn path(&self) -> String {
        format!("/dev/pts/{}", self.index)
    }

    /// A new description of the slave's descriptor, for a program's stdin, stdout or stderr.
    pub fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().expect("dup the slave"))
    }

    /// Types `text` (as the user would, at the master).
    pub fn type_in(&self, text: &[u8]) {
        (&self.master).write_all(text).expect("write to the master");
    }

    /// The output so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("the output lock")).into_owned()
    }

    /// Forgets the output so far.
    pub fn clear(&self) {
        self.output.lock().expect("the output lock").clear();
    }

    /// Waits (up to [`OUTPUT_TIMEOUT`]) until the output satisfies `f`; panics naming `what`
    /// and showing the output otherwise.
    pub fn wait_output(&self, what: &str, f: impl Fn(&str) -> bool) {
        let ok = crate::wait::wait_until(OUTPUT_TIMEOUT, || f(&self.text()));
        assert!(
            ok,
            "timed out waiting for {what}; the terminal shows {:?}",
            self.text()
        );
    }
}
