//! Process behaviours on a managed file, each in a C program run under the
//! interposer within a deadline: data written through a view reaches the
//! file when the program ends with `exit` or `_exit` without unmapping, or
//! stores after closing the descriptor; the calls it does not cover fail
//! with `ENOTSUP` and say so; a forked child is not given the view; two
//! views of one range end one at a time; `mremap` grows a view in place;
//! a `pwrite` on an `O_DSYNC` descriptor is in the file when it returns.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{describe, preloaded, run_bounded};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `behaviours <mode> <dir>/data` under the interposer; the file and
/// the program's output.
fn run(mode: &str) -> (PathBuf, std::process::Output, tempfile::TempDir) {
    run_with(mode, &[])
}

/// As [`run`], with more settings.
fn run_with(mode: &str, env: &[(&str, &str)]) -> (PathBuf, std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let exe = common::compile_c("behaviours", dir.path(), &[]);
    let file = dir.path().join("data");
    let mut cmd = Command::new(exe);
    cmd.arg(mode).arg(&file);
    let env = [&[("MKWRITE_PRELOAD_STATS", "1")], env].concat();
    let out = run_bounded(preloaded(cmd, &[&file], &env), LIMIT);
    (file, out, dir)
}

fn assert_written(file: &Path, out: &std::process::Output) {
    assert!(out.status.success(), "{}", describe(out));
    let data = std::fs::read(file).unwrap();
    assert_eq!(data.len(), 8192);
    assert_eq!(&data[5000..5007], b"mkwrite", "{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The kernel's mapping has no statistics line; mkwrite's allocated.
    let managed = stderr.contains("Stats {") && !stderr.contains("blocks_allocated: 0,");
    assert!(managed, "not managed: {stderr}");
}

#[test]
fn exit_without_munmap_flushes() {
    let (file, out, _dir) = run("exit");
    assert_written(&file, &out);
}

#[test]
fn underscore_exit_without_munmap_flushes() {
    let (file, out, _dir) = run("_exit");
    assert_written(&file, &out);
}

#[test]
fn a_view_outlives_its_descriptor() {
    let (file, out, _dir) = run("closed");
    assert_written(&file, &out);
}

#[test]
fn uncovered_calls_fail_with_enotsup_and_say_so() {
    let (file, out, _dir) = run("refused");
    assert_written(&file, &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for call in ["copy_file_range", "sendfile", "mremap"] {
        assert!(
            stderr.contains(&format!("mkwrite-preload: {call}")),
            "no line for {call}: {stderr}"
        );
    }
}

#[test]
fn a_forked_child_does_not_get_the_view() {
    let (file, out, _dir) = run("fork");
    assert_written(&file, &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("child signal {}\n", libc::SIGSEGV)
    );
}

#[test]
fn a_bad_setting_stops_the_program_at_load_and_says_which() {
    for (name, value) in [
        ("MKWRITE_PRELOAD_ON_FULL", "later"),
        ("MKWRITE_PRELOAD_CAPACITY", "lots"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        let mut cmd = Command::new("true");
        cmd.arg(&file);
        let out = run_bounded(preloaded(cmd, &[&file], &[(name, value)]), LIMIT);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with(&format!("mkwrite-preload: {name}={value}: expected")),
            "{stderr}"
        );
    }
}

#[test]
fn two_views_of_one_range_end_one_at_a_time() {
    let (file, out, _dir) = run("twice");
    assert_written(&file, &out);
}

#[test]
fn mremap_grows_a_view_in_place() {
    let (file, out, _dir) = run("grow");
    assert_written(&file, &out);
}

#[test]
fn an_o_dsync_write_is_durable_when_it_returns() {
    let (file, out, _dir) = run("dsync");
    assert_eq!(
        common::signal_of(&out.status),
        Some(libc::SIGKILL),
        "{}",
        describe(&out)
    );
    let data = std::fs::read(&file).unwrap();
    assert_eq!(&data[5000..5007], b"mkwrite", "{}", describe(&out));
}

/// Every name a program may call a covered function by is exported (a
/// missing alias, `mmap` beside `mmap64`, silently leaves the kernel in
/// charge of a managed file).
#[test]
fn the_library_exports_every_name_it_covers() {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(common::preload_lib())
        .output()
        .expect("nm (binutils)");
    let listing = String::from_utf8_lossy(&out.stdout);
    let exported: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let names = "mmap mmap64 munmap msync madvise mremap read write pread pread64 pwrite pwrite64 \
        readv writev preadv preadv64 pwritev pwritev64 preadv2 preadv64v2 pwritev2 pwritev64v2 \
        ftruncate ftruncate64 truncate truncate64 fallocate fallocate64 posix_fallocate \
        posix_fallocate64 fsync fdatasync sync_file_range close close_range closefrom dup dup2 \
        dup3 fcntl fcntl64 open open64 openat openat64 creat creat64 __open_2 __open64_2 \
        __openat_2 __openat64_2 __read_chk __pread_chk __pread64_chk copy_file_range sendfile \
        sendfile64 splice _exit _Exit execve execv execvp execvpe";
    let missing: Vec<&str> = names
        .split_whitespace()
        .filter(|n| !exported.contains(n))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
}

/// With faults resolved in the faulting thread, a system call on a view's
/// page that nothing touched yet would get `EFAULT`; the interposer readies
/// the pages of the calls it covers first. With the default delivery the
/// kernel simply waits for mkwrite's fault thread.
#[test]
fn system_calls_on_untouched_view_pages_work_in_both_deliveries() {
    for delivery in ["handler", "in-thread"] {
        let (file, out, _dir) = run_with("syscall", &[("MKWRITE_PRELOAD_DELIVERY", delivery)]);
        assert_written(&file, &out);
    }
}
