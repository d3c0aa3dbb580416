//! The `pager` example run as a process: the demo, the script protocol with
//! exact answers, one-line errors, and the output's own failures (a closed
//! pipe, a full stdout).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use common::Mount;
use common::pager::{pager, script, sha};

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
fn kernel_dirty_tracking_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let f = file.to_str().unwrap();
    let write = |at: &str, data: &str, extra: &[&str]| {
        let mut cmd = pager();
        cmd.args(["write", f, at, "--data", data, "--dirty-tracking", "kernel"])
            .args(extra);
        cmd.output().unwrap()
    };
    assert!(write("0", "hello", &[]).status.success());
    assert!(write("2", "LL", &[]).status.success());
    let cat = pager().args(["cat", f]).output().unwrap();
    assert_eq!(cat.stdout, b"heLLo");
    // Blocks smaller than a page cannot be kept safe in this mode.
    let refused = write("0", "x", &["--block-size", "1024"]);
    one_line_error(&refused);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("DirtyTracking::Kernel"),
        "{refused:?}"
    );
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

const MAX: &str = "18446744073709551615";

/// Runs the pager for a test's setup, which must succeed; its output is not the point.
fn setup(args: &[&str]) {
    let out = pager().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn no_panic(out: &Output) {
    let err = stderr_of(out);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "a panic's exit code: {err}");
}

/// Runs the pager with stdout into a pipe whose reader takes `keep` bytes,
/// then closes it (`pager ... | head -c keep`).
fn with_closed_stdout(args: &[&str], keep: usize) -> Output {
    let (mut reader, writer) = std::io::pipe().unwrap();
    if keep == 0 {
        drop(reader);
        return pager().args(args).stdout(writer).output().unwrap();
    }
    let mut cmd = pager();
    cmd.args(args).stdout(writer).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    drop(cmd);
    let mut head = vec![0; keep];
    reader.read_exact(&mut head).unwrap();
    drop(reader);
    child.wait_with_output().unwrap()
}

fn assert_quiet_141(out: &Output, what: &str) {
    no_panic(out);
    assert_eq!(out.status.code(), Some(141), "{what}: {out:?}");
    assert_eq!(stderr_of(out), "", "{what}: a closed pipe is not an error");
}

#[test]
fn a_closed_stdout_ends_quietly_with_141() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    let f = f.to_str().unwrap();
    // Bigger than any pipe buffer, so the pager is still writing when the reader leaves.
    setup(&["truncate", f, "8M"]);
    assert_quiet_141(&with_closed_stdout(&["cat", f], 3), "cat | head -c 3");
    assert_quiet_141(&with_closed_stdout(&["demo"], 0), "demo | (closed)");
    assert_quiet_141(&with_closed_stdout(&["stat", f], 0), "stat | (closed)");
    let filled = dir.path().join("filled");
    let fill = ["fill", filled.to_str().unwrap(), "--size", "1M"];
    assert_quiet_141(&with_closed_stdout(&fill, 0), "fill | (closed)");
    let (commands, mut to_script) = std::io::pipe().unwrap();
    to_script.write_all(b"len\n").unwrap();
    drop(to_script);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let script = pager()
        .args(["script", f])
        .stdin(commands)
        .stdout(writer)
        .output()
        .unwrap();
    assert_quiet_141(&script, "script | (closed)");
    let help = pager().arg("--help").output().unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("141 stdout was closed"),
        "the exit status is documented"
    );
}

#[test]
fn a_full_stdout_is_one_error_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    let f = f.to_str().unwrap();
    setup(&["write", f, "0", "--data", "abc"]);
    for args in [
        vec!["demo"],
        vec!["stat", f],
        vec!["cat", f],
        vec!["write", f, "1", "--data", "x"],
    ] {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let out = pager().args(&args).stdout(full).output().unwrap();
        no_panic(&out);
        one_line_error(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(stderr_of(&out).contains("cannot write the output"), "{out:?}");
    }
}

#[test]
fn cat_stat_and_punch_of_a_missing_file_fail_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let m = missing.to_str().unwrap();
    for args in [vec!["cat", m], vec!["stat", m], vec!["punch", m, "0", "1"]] {
        let out = pager().args(&args).output().unwrap();
        one_line_error(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr_of(&out).contains("No such file"), "{out:?}");
        assert!(!missing.exists(), "{args:?} created the file");
    }
}

#[test]
fn cat_stat_and_script_read_only_work_on_a_read_only_mount() {
    let fs = Mount::tmpfs(1 << 20);
    let file = fs.path("ro");
    std::fs::write(&file, b"read me, do not write me").unwrap();
    fs.remount_read_only();
    let f = file.to_str().unwrap();
    let cat = pager().args(["cat", f, "--offset", "5"]).output().unwrap();
    assert!(cat.status.success(), "{cat:?}");
    assert_eq!(cat.stdout, b"me, do not write me");
    let stat = pager().args(["stat", f]).output().unwrap();
    assert!(stat.status.success(), "{stat:?}");
    assert!(String::from_utf8_lossy(&stat.stdout).contains("len=24"));
    let answers = script(&["--read-only", f], "read 0 4\nfill 0 1 1\nsetlen 1\n");
    assert_eq!(
        answers,
        [
            format!("ok {}", sha(b"read")),
            "err readonly 0".into(),
            "err readonly 0".into(),
        ]
    );
    let write = pager().args(["write", f, "0", "--data", "x"]).output().unwrap();
    one_line_error(&write);
}

/// The real case: a user who may only read the file. Runs a copy of the
/// pager (the build tree may be private to root) as `nobody`.
#[test]
fn cat_and_stat_work_for_a_user_who_may_only_read_the_file() {
    let public = tempfile::tempdir().unwrap();
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = public.path().join("pager");
    std::fs::copy(pager().get_program(), &exe).unwrap();
    let file = public.path().join("readable");
    std::fs::write(&file, b"yours to read").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let as_nobody = |command: &str, rest: &[&str]| {
        let sysctl = unprivileged_userfaultfd();
        let out = Command::new(&exe)
            .arg(command)
            .arg(&file)
            .args(rest)
            .uid(65534)
            .gid(65534)
            .current_dir("/")
            .output()
            .unwrap();
        (out, sysctl && unprivileged_userfaultfd())
    };
    let (cat, _) = as_nobody("cat", &[]);
    assert!(cat.status.success(), "{cat:?}");
    assert_eq!(cat.stdout, b"yours to read");
    let (stat, allowed) = as_nobody("stat", &[]);
    assert!(stat.status.success(), "{stat:?}");
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(text.contains("len=13"), "{text}");
    if !allowed {
        // No syscall for unprivileged users and /dev/userfaultfd is root's:
        // only the user-mode fallback is left, and stat says what that means.
        assert!(text.contains("userfaultfd=user-mode-only"), "{text}");
        assert!(stderr_of(&stat).contains("EFAULT"), "{stat:?}");
    }
    let (write, _) = as_nobody("write", &["0", "--data", "x"]);
    assert!(!write.status.success(), "nobody wrote a 0444 file: {write:?}");
}

/// Whether vm.unprivileged_userfaultfd lets any user make a full userfaultfd
/// (false while it is 0, the default; another test may set it for a while).
fn unprivileged_userfaultfd() -> bool {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map(|s| s.trim() != "0")
        .unwrap_or(false)
}

#[test]
fn huge_offsets_are_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let f = file.to_str().unwrap();
    let refused = pager().args(["write", f, MAX, "--data", "x"]).output().unwrap();
    no_panic(&refused);
    one_line_error(&refused);
    assert_eq!(refused.status.code(), Some(1));
    assert!(!file.exists(), "a refused write creates no file");
    setup(&["write", f, "0", "--data", "hello"]);
    for args in [
        vec!["cat", f, "--offset", MAX, "--len", "10"],
        vec!["cat", f, "--offset", MAX],
        vec!["cat", f, "--offset", "6"],
        vec!["punch", f, MAX, "10"],
        vec!["punch", f, "10", MAX],
        vec!["truncate", f, MAX],
        vec!["write", f, "18446744073709551614", "--data", "x"],
    ] {
        let out = pager().args(&args).output().unwrap();
        no_panic(&out);
        one_line_error(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"hello");
}

/// The argument lines of a `--help` and what each says, in either of clap's
/// layouts (the text beside the name, or on the next line).
fn described_arguments(help: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = help.lines().collect();
    let mut args = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        if indent > 6 || !(trimmed.starts_with('<') || trimmed.starts_with('-')) {
            continue;
        }
        // The name ends at the first double space (or the end of the line).
        let (name, beside) = trimmed.split_once("  ").unwrap_or((trimmed, ""));
        let text = match beside.trim() {
            "" => lines.get(i + 1).map_or("", |l| l.trim()),
            t => t,
        };
        args.push((name.to_owned(), text.to_owned()));
    }
    args
}

#[test]
fn every_argument_has_help() {
    for sub in ["cat", "write", "truncate", "punch", "stat", "fill", "script"] {
        let out = pager().args([sub, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let args = described_arguments(&help);
        assert!(args.len() >= 8, "{sub}: found {args:?} in {help}");
        for (name, text) in &args {
            assert!(
                !text.is_empty() && !text.starts_with('['),
                "{sub} {name} has no help: {help}"
            );
        }
    }
    let cat = pager().args(["cat", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&cat.stdout);
    for name in [
        "<FILE>",
        "--offset",
        "--len",
        "--block-size",
        "--capacity",
        "--on-full",
    ] {
        assert!(help.contains(name), "{name}: {help}");
    }
    let (_, block) = described_arguments(&help)
        .into_iter()
        .find(|(name, _)| name.starts_with("--block-size"))
        .unwrap();
    assert!(block.contains("512 B to 1 MiB"), "{block}");
}

#[test]
fn demo_stat_and_script_name_the_userfaultfd_mode() {
    let demo = pager().arg("demo").output().unwrap();
    assert!(String::from_utf8_lossy(&demo.stdout).contains("userfaultfd: syscall"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let f = file.to_str().unwrap();
    setup(&["truncate", f, "4K"]);
    let stat = pager().args(["stat", f]).output().unwrap();
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(text.lines().any(|l| l == "userfaultfd=syscall"), "{text}");
    let answers = script(&[f], "stat\n");
    assert!(answers[0].ends_with(" uffd=syscall"), "{answers:?}");
}

#[test]
fn in_thread_delivery_writes_reads_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let f = file.to_str().unwrap();
    setup(&["truncate", f, "64K"]);
    let stat = pager()
        .args(["stat", "--delivery", "in-thread", f])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(text.lines().any(|l| l == "delivery=in-thread"), "{text}");
    // Raw pokes through the faulting thread's own handler, then peeks.
    let answers = script(
        &["--delivery", "in-thread", f],
        "poke 100 8192 7
peek 100 8192
flush
",
    );
    assert_eq!(answers[0], "ok", "{answers:?}");
    assert_eq!(answers[1], format!("ok {}", sha(&[7; 8192])), "{answers:?}");
    assert_eq!(answers[2], "ok", "{answers:?}");
    assert!(std::fs::read(&file).unwrap()[100..8292].iter().all(|&b| b == 7));
}

/// A pseudo-terminal wide enough for the whole bar: (master, slave).
fn pty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 250,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty stores two new descriptors in the ints it is given;
    // the name and termios may be null, and `size` outlives the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nobody else.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Everything written to the terminal, until its last writer closes it (Linux
/// then answers the master's read with EIO).
fn drain(mut master: File) -> String {
    let mut text = Vec::new();
    let mut buf = [0; 4096];
    while let Ok(n @ 1..) = master.read(&mut buf) {
        text.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// On a full store the bar stays where the writes stopped, and both it and
/// the error say exactly how many bytes landed. Stderr is a terminal, or
/// indicatif would not draw the bar at all.
#[test]
fn fill_on_a_full_store_states_what_landed_and_not_100_percent() {
    let fs = Mount::tmpfs(64 * 1024);
    let file = fs.path("filled");
    let (master, slave) = pty();
    let mut cmd = pager();
    cmd.args([
        "fill",
        file.to_str().unwrap(),
        "--size",
        "1M",
        "--block-size",
        "4096",
    ])
    .env("TERM", "xterm")
    .stdout(Stdio::piped())
    .stderr(slave);
    let child = cmd.spawn().unwrap();
    drop(cmd); // its copy of the terminal, or the drain would never end
    let terminal = drain(master);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "the store is full: {terminal}");
    assert!(!terminal.contains("panicked"), "{terminal}");
    assert!(!terminal.contains("100%"), "{terminal}");
    assert!(!terminal.contains("1.00 MiB/1.00 MiB"), "{terminal}");
    assert!(terminal.contains("  6% 64.00 KiB/1.00 MiB"), "{terminal}");
    assert!(terminal.contains("stopped: 65536 bytes landed"), "{terminal}");
    assert!(
        terminal.contains("pager: 65536 of 1048576 bytes landed"),
        "{terminal}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("wrote"));
    let on_disk = std::fs::read(&file).unwrap();
    assert!(on_disk[..65536].iter().enumerate().all(|(i, &b)| b == i as u8));
    assert!(on_disk[65536..].iter().all(|&b| b == 0));
}
