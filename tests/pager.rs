//! The `pager` example run as a process: the demo, the script protocol with
//! exact answers, and one-line errors.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::Mount;
use sha2::{Digest, Sha256};

/// The example binary, built once by the same cargo and profile as this test.
fn pager() -> Command {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    BUILT.call_once(|| {
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "--quiet", "--example", "pager"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(
            build.status().unwrap().success(),
            "building the pager example failed"
        );
    });
    let path: PathBuf = profile_dir.join("examples/pager");
    Command::new(path)
}

fn script(args: &[&str], input: &str) -> Vec<String> {
    let mut child = pager()
        .arg("script")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn demo_exits_zero_and_names_the_failed_write() {
    let out = pager().output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("FAILED AT THE FAULT"), "{text}");
    assert!(text.contains("quota exceeded"), "{text}");
    assert!(text.contains("Every check held."), "{text}");
    let demo = pager().arg("demo").output().unwrap();
    assert!(demo.status.success());
}

#[test]
fn script_round_trip_on_a_mem_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unused");
    let input = "setlen 16384\n\
                 fill 0 4096 97\n\
                 fill 4096 8192 98\n\
                 read 0 4096\n\
                 \n\
                 # a comment gets no answer\n\
                 flush\n\
                 len\n\
                 bogus command\n\
                 fill 1 2\n\
                 fill 20000 10 1\n\
                 reserve 0 99999\n\
                 punch 0 4096\n\
                 fill 8192 4096 99\n\
                 read 4096 4096\n\
                 evict\n\
                 stat\n";
    let answers = script(
        &[
            file.to_str().unwrap(),
            "--store",
            "mem",
            "--block-size",
            "1024",
            "--mem-size",
            "8K",
        ],
        input,
    );
    let expected = [
        "ok".to_string(),
        "ok".into(),
        "err nospace 4096".into(),
        format!("ok {}", sha(&[97; 4096])),
        "ok".into(),
        "ok 16384".into(),
        "err invalid 0".into(),
        "err invalid 0".into(),
        "err range 0".into(),
        "err range 0".into(),
        "ok".into(),
        "ok".into(),
        format!("ok {}", sha(&[98; 4096])),
        "ok".into(),
    ];
    assert_eq!(answers[..expected.len()], expected[..], "{answers:#?}");
    let stat = &answers[expected.len()];
    for key in [
        "ok len=16384",
        "block_size=1024",
        "blocks_allocated=8",
        "pages_resident=",
        "faults_wp=",
        "flushes=1",
    ] {
        assert!(stat.contains(key), "{stat} lacks {key}");
    }
    assert_eq!(answers.len(), expected.len() + 1);
}

#[test]
fn script_reports_nospace_on_a_small_tmpfs() {
    let fs = Mount::tmpfs(64 * 1024);
    let file = fs.path("small");
    let answers = script(
        &[file.to_str().unwrap(), "--block-size", "4096"],
        "setlen 1048576\nfill 0 131072 1\nflush\nread 0 65536\n",
    );
    assert_eq!(answers[0], "ok");
    assert_eq!(answers[1], "err nospace 65536");
    assert_eq!(answers[2], "ok");
    assert_eq!(answers[3], format!("ok {}", sha(&[1; 65536])));
    let on_disk = std::fs::read(&file).unwrap();
    assert!(on_disk[..65536].iter().all(|&b| b == 1));
    assert!(on_disk[65536..].iter().all(|&b| b == 0));
}

fn one_line_error(out: &Output) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("pager: error: "), "{err}");
}

#[test]
fn bad_arguments_give_one_line_and_a_nonzero_exit() {
    one_line_error(&pager().args(["cat", "/nonexistent/dir/file"]).output().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let f = file.to_str().unwrap();
    one_line_error(
        &pager()
            .args(["truncate", f, "10", "--block-size", "3000"])
            .output()
            .unwrap(),
    );
    one_line_error(
        &pager()
            .args(["punch", f, "0", "1T", "--capacity", "1M"])
            .output()
            .unwrap(),
    );
    let usage = pager().args(["write", f]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2), "clap usage errors exit 2");
    let size = pager().args(["truncate", f, "12Q"]).output().unwrap();
    assert_eq!(size.status.code(), Some(2));
}

#[test]
fn write_cat_stat_and_a_full_store_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let f = file.to_str().unwrap();
    assert!(
        pager()
            .args(["write", f, "5", "--data", "hello"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let cat = pager().args(["cat", f, "--offset", "5"]).output().unwrap();
    assert_eq!(cat.stdout, b"hello");
    let stat = pager().args(["stat", f]).output().unwrap();
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(
        text.contains("len=10") && text.contains("blocks_allocated="),
        "{text}"
    );
    let full = pager()
        .args(["write", f, "0", "--data", &"x".repeat(20_000), "--quota", "8K"])
        .output()
        .unwrap();
    assert_eq!(full.status.code(), Some(3), "{full:?}");
    assert!(String::from_utf8_lossy(&full.stderr).contains("quota"));
}

#[test]
fn script_bytes_past_eof_are_accepted_and_zeroed_when_the_file_grows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eof");
    let answers = script(
        &[file.to_str().unwrap(), "--block-size", "1024"],
        "setlen 1000\nfill 1000 100 7\nread 1000 100\nfill 5000 1 7\nsetlen 2000\nread 1000 100\nflush\n",
    );
    assert_eq!(
        answers,
        [
            "ok".to_string(),
            "ok".into(),
            format!("ok {}", sha(&[7; 100])),
            "err range 0".into(),
            "ok".into(),
            format!("ok {}", sha(&[0; 100])),
            "ok".into(),
        ]
    );
    assert_eq!(std::fs::read(&file).unwrap(), vec![0; 2000]);
}
