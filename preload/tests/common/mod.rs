//! Helpers for the interposer's tests: where the library is, a C compiler,
//! children with a time limit, real mounts.
#![allow(dead_code)]

#[path = "../../../tests/common/mount.rs"]
pub mod mount;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use mount::Mount;

/// `libmkwrite_preload.so`, which cargo builds beside the test binary.
pub fn preload_lib() -> PathBuf {
    let lib = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join("libmkwrite_preload.so");
    assert!(
        lib.exists(),
        "cargo builds the interposer for its tests: {}",
        lib.display()
    );
    lib
}

/// `cmd` run under the interposer, managing `paths`, with `env` besides.
pub fn preloaded(mut cmd: Command, paths: &[&Path], env: &[(&str, &str)]) -> Command {
    let joined: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    cmd.env("LD_PRELOAD", preload_lib())
        .env("MKWRITE_PRELOAD_PATHS", joined.join(":"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Compiles the C program `tests/c/<name>.c` into `dir` with `libs`.
pub fn compile_c(name: &str, dir: &Path, libs: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let exe = dir.join(name);
    let out = Command::new("cc")
        .arg(&source)
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .args(libs)
        .output()
        .expect("the system C compiler (cc)");
    assert!(
        out.status.success(),
        "cc {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// A child with a deadline: killed, and the test failed, if it outlives it.
pub struct Bounded {
    child: Child,
    what: String,
    deadline: Instant,
}

impl Bounded {
    pub fn spawn(mut cmd: Command, limit: Duration) -> Bounded {
        let what = format!("{cmd:?}");
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Bounded {
            child,
            what,
            deadline: Instant::now() + limit,
        }
    }

    /// Whether it is still running (it has not exited yet).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for it to end; panics (after killing it) at the deadline.
    pub fn wait(mut self) -> Output {
        while self.running() {
            if Instant::now() > self.deadline {
                let _ = self.child.kill();
                let out = self.child.wait_with_output().unwrap();
                panic!(
                    "HUNG: {} killed at its deadline\nstdout: {}\nstderr: {}",
                    self.what,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.wait_with_output().unwrap()
    }
}

/// Runs `cmd` within `limit`; its output.
pub fn run_bounded(cmd: Command, limit: Duration) -> Output {
    Bounded::spawn(cmd, limit).wait()
}

/// Runs `cmd` within `limit` and asserts it succeeded; its stdout.
pub fn run_ok(cmd: Command, limit: Duration) -> String {
    let out = run_bounded(cmd, limit);
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How a child ended and what it printed, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The signal that ended a child, if one did.
pub fn signal_of(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

/// Free bytes on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: statvfs fills the buffer we pass for a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// Waits (up to `limit`) until `dir`'s filesystem is full, then asserts
/// `child` is still running a second later: blocked, not failed.
pub fn wait_until_full_and_blocked(child: &mut Bounded, dir: &Path, limit: Duration) {
    let start = Instant::now();
    while free_bytes(dir) >= 4096 {
        assert!(child.running(), "the writer ended before the filesystem filled");
        assert!(start.elapsed() < limit, "the filesystem never filled");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(child.running(), "the writer did not wait on the full filesystem");
}

/// A file of `bytes` bytes of data (not a hole) at `path`, taking space.
pub fn ballast(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0xbb; bytes]).unwrap();
}
