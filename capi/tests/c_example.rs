//! The C interface from C: `examples/demo.c` compiled with the system
//! compiler against `include/mkwrite.h` and `libmkwrite_c.so`, run on a real
//! file (the seed scenario) and on a size-limited tmpfs (a checked write
//! runs the store out of space: `ENOSPC` at the write, with the count that
//! landed, and every accepted byte in the file). And the checked-in header
//! is the one cbindgen generates from the code.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where cargo put this package's libraries: beside the test binary.
fn lib_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().to_owned()
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles the demo into `dir`; returns its path.
fn compile(dir: &Path) -> PathBuf {
    let exe = dir.join("demo");
    let libs = lib_dir();
    assert!(
        libs.join("libmkwrite_c.so").exists(),
        "cargo builds the cdylib for tests"
    );
    let out = Command::new("cc")
        .arg(manifest_dir().join("examples/demo.c"))
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg("-L")
        .arg(&libs)
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .arg("-lmkwrite_c")
        .output()
        .expect("the system C compiler (cc)");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(exe: &Path, args: &[&str]) -> String {
    let out = Command::new(exe).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_seed_scenario_in_c() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    assert_eq!(run(&exe, &["seed", data.to_str().unwrap()]), "seed ok\n");
}

#[test]
fn kernel_dirty_tracking_from_c() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path());
    assert_eq!(
        run(&exe, &["kernel", dir.path().to_str().unwrap()]),
        "kernel ok\n"
    );
}

/// A tmpfs of `bytes`, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(bytes: u64) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(root, "this test mounts a tmpfs and must run as root (CI does)");
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_store_fails_the_checked_write_in_c_and_keeps_every_accepted_byte() {
    let work = tempfile::tempdir().unwrap();
    let exe = compile(work.path());
    let fs = Tmpfs::mount(1 << 20);
    let out = run(&exe, &["full", fs.0.path().to_str().unwrap()]);
    let accepted: u64 = out.trim().strip_prefix("full ok ").expect(&out).parse().unwrap();
    assert!(
        (512 << 10..=1 << 20).contains(&accepted),
        "a 1 MiB tmpfs took {accepted} bytes"
    );
}

#[test]
fn the_checked_in_header_is_the_generated_one() {
    let generated = std::fs::read_to_string(Path::new(env!("OUT_DIR")).join("mkwrite.h")).unwrap();
    let checked_in = std::fs::read_to_string(manifest_dir().join("include/mkwrite.h")).unwrap();
    assert!(
        generated == checked_in,
        "include/mkwrite.h is stale: copy {}/mkwrite.h over it",
        env!("OUT_DIR")
    );
}
