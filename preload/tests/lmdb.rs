//! LMDB with `MDB_WRITEMAP`, unmodified, on mkwrite through the
//! interposer: its database pages are written through a shared mapping.
//! 100,000 records written and read back; and on a full tmpfs the writer
//! waits at the fault (policy `wait`), finishes once space is freed, and
//! every record is there, where the kernel's own mmap dies with SIGBUS.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Bounded, Mount, ballast, describe, preloaded, run_ok, signal_of};

const RECORDS: &str = "100000";
const LIMIT: Duration = Duration::from_secs(120);

fn program(dir: &Path) -> std::path::PathBuf {
    common::compile_c("lmdb_records", dir, &["-llmdb"])
}

fn command(exe: &Path, step: &str, db: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg(step).arg(db).arg(RECORDS);
    cmd
}

/// Reopens the database with the kernel's own mmap and checks every record.
fn verify(exe: &Path, db: &Path) {
    let out = run_ok(command(exe, "verify", db), LIMIT);
    assert_eq!(out, format!("verified {RECORDS}\n"));
}

/// The interposer's statistics line for `data.mdb`: proof it managed the file.
fn assert_managed(stderr: &str, db: &Path) {
    let line = format!("mkwrite-preload: {}: Stats", db.join("data.mdb").display());
    assert!(
        stderr.contains(&line),
        "the interposer did not manage data.mdb:\n{stderr}"
    );
}

#[test]
fn records_written_through_the_interposer_read_back() {
    write_and_read_back(&[]);
}

/// As above, the kernel tracking dirty pages: LMDB's commits rewrite pages
/// an earlier `msync` cleaned, and those writes take no fault at all.
#[test]
fn records_written_with_kernel_dirty_tracking_read_back() {
    let stderr = write_and_read_back(&[("MKWRITE_PRELOAD_DIRTY_TRACKING", "kernel")]);
    let found = stderr
        .split("pages_found_written: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("the stats line counts pages found written");
    assert!(found > 0, "no page was found written by the kernel:\n{stderr}");
    assert!(
        stderr.contains("faults_write_protect: 0,"),
        "a write-protect fault reached mkwrite:\n{stderr}"
    );
}

/// Writes the records through the interposer with `settings`, checks the
/// file was managed, and reads every record back through the kernel;
/// returns the writer's stderr.
fn write_and_read_back(settings: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let exe = program(dir.path());
    let db = dir.path().join("db");
    std::fs::create_dir(&db).unwrap();
    let data = db.join("data.mdb");
    let mut env = vec![("MKWRITE_PRELOAD_STATS", "1")];
    env.extend_from_slice(settings);
    let cmd = preloaded(command(&exe, "write", &db), &[&data], &env);
    let out = common::run_bounded(cmd, LIMIT);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(&format!("committed {RECORDS}\n")));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_managed(&stderr, &db);
    verify(&exe, &db);
    stderr
}

/// A 16 MiB tmpfs with 10 MiB taken: the 100,000 records (about 9 MiB
/// of pages) do not fit until the ballast goes.
fn full_tmpfs() -> (Mount, std::path::PathBuf) {
    let mount = Mount::tmpfs(16 << 20);
    ballast(&mount.path("ballast"), 10 << 20);
    let db = mount.path("db");
    std::fs::create_dir(&db).unwrap();
    (mount, db)
}

#[test]
fn on_a_full_tmpfs_the_writer_waits_and_completes_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let exe = program(dir.path());
    let (mount, db) = full_tmpfs();
    let data = db.join("data.mdb");
    let env = [
        ("MKWRITE_PRELOAD_ON_FULL", "wait"),
        ("MKWRITE_PRELOAD_STATS", "1"),
    ];
    let mut writer = Bounded::spawn(preloaded(command(&exe, "write", &db), &[&data], &env), LIMIT);
    common::wait_until_full_and_blocked(&mut writer, mount.dir.path(), LIMIT);
    std::fs::remove_file(mount.path("ballast")).unwrap(); // the second step frees space
    let out = writer.wait();
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_managed(&stderr, &db);
    assert!(
        !stderr.contains("allocation_failures: 0,"),
        "the writer never found the store full:\n{stderr}"
    );
    verify(&exe, &db);
}

#[test]
fn on_a_full_tmpfs_the_kernels_mmap_kills_the_writer_with_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let exe = program(dir.path());
    let (_mount, db) = full_tmpfs();
    let out = common::run_bounded(command(&exe, "write", &db), LIMIT);
    assert_eq!(signal_of(&out.status), Some(libc::SIGBUS), "{}", describe(&out));
}
