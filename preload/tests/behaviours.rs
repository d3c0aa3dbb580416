//! Process behaviours on a managed file, each in a C program run under the
//! interposer within a deadline: data written through a view reaches the
//! file when the program ends with `exit` or `_exit` without unmapping, or
//! stores after closing the descriptor; the calls it does not cover fail
//! with `ENOTSUP` and say so; a forked child is not given the view.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{describe, preloaded, run_bounded};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `behaviours <mode> <dir>/data` under the interposer; the file and
/// the program's output.
fn run(mode: &str) -> (PathBuf, std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let exe = common::compile_c("behaviours", dir.path(), &[]);
    let file = dir.path().join("data");
    let mut cmd = Command::new(exe);
    cmd.arg(mode).arg(&file);
    let out = run_bounded(preloaded(cmd, &[&file], &[("MKWRITE_PRELOAD_STATS", "1")]), LIMIT);
    (file, out, dir)
}

fn assert_written(file: &Path, out: &std::process::Output) {
    assert!(out.status.success(), "{}", describe(out));
    let data = std::fs::read(file).unwrap();
    assert_eq!(data.len(), 8192);
    assert_eq!(&data[5000..5007], b"mkwrite", "{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("faults_missing_write: 1,"),
        "not managed: {stderr}"
    );
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
