//! fio's mmap engine, unmodified, on mkwrite through the interposer:
//! sequential and random write jobs whose data fio itself verifies, read
//! back again through the kernel, in both deliveries; and on a full tmpfs with the `wait`
//! policy a write job blocks at the fault, resumes when space is freed,
//! and every byte it wrote is in the file.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Bounded, Mount, ballast, describe, preloaded, run_ok};

const LIMIT: Duration = Duration::from_secs(120);

/// A fio job on `file` with `args`.
fn fio(file: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("fio");
    cmd.arg("--name=job")
        .arg(format!("--filename={}", file.display()))
        .args(args);
    cmd
}

#[test]
fn write_jobs_through_the_interposer_verify_and_read_back_through_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let runs = ["write", "randwrite"]
        .into_iter()
        .flat_map(|rw| [(rw, "handler"), (rw, "in-thread")]);
    for (rw, delivery) in runs {
        let file = dir.path().join(format!("{rw}-{delivery}"));
        let job = [
            "--ioengine=mmap",
            &format!("--rw={rw}"),
            "--bs=4k",
            "--size=16M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--randrepeat=1",
        ];
        let env = [
            ("MKWRITE_PRELOAD_STATS", "1"),
            ("MKWRITE_PRELOAD_DELIVERY", delivery),
        ];
        let cmd = preloaded(fio(&file, &job), &[&file], &env);
        let out = common::run_bounded(cmd, LIMIT);
        assert!(out.status.success(), "{rw}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let managed = format!("mkwrite-preload: {}: Stats", file.display());
        assert!(
            stderr.contains(&managed),
            "{rw}: the interposer did not manage the file:\n{stderr}"
        );
        // The same job's verification alone, through read(2) and the kernel.
        let check = [
            "--ioengine=psync",
            &format!("--rw={rw}"),
            "--bs=4k",
            "--size=16M",
            "--verify=crc32c",
            "--verify_only=1",
            "--verify_fatal=1",
            "--randrepeat=1",
        ];
        let report = run_ok(fio(&file, &check), LIMIT);
        assert!(report.contains("err= 0"), "{rw}: {report}");
    }
}

#[test]
fn on_a_full_tmpfs_a_write_job_waits_resumes_and_every_byte_lands() {
    const PATTERN: &[u8] = b"mkwrite!";
    let mount = Mount::tmpfs(16 << 20);
    ballast(&mount.path("ballast"), 8 << 20);
    // fio lays out a missing file with write(2) before it maps it; a
    // sparse file of the job's size it maps as it is, so every block is
    // allocated at a write fault.
    let file = mount.path("data");
    std::fs::File::create(&file).unwrap().set_len(12 << 20).unwrap();
    let job = [
        "--ioengine=mmap",
        "--rw=write",
        "--bs=64k",
        "--size=12M",
        "--fallocate=none",
        "--buffer_pattern=\"mkwrite!\"",
        "--scramble_buffers=0",
    ];
    let cmd = preloaded(fio(&file, &job), &[&file], &[("MKWRITE_PRELOAD_ON_FULL", "wait")]);
    let mut writer = Bounded::spawn(cmd, LIMIT);
    common::wait_until_full_and_blocked(&mut writer, mount.dir.path(), LIMIT);
    std::fs::remove_file(mount.path("ballast")).unwrap();
    let out = writer.wait();
    assert!(out.status.success(), "{}", describe(&out));
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len(), 12 << 20);
    let wrong = data.chunks(PATTERN.len()).position(|c| c != PATTERN);
    assert_eq!(
        wrong,
        None,
        "the file differs from what fio wrote at byte {:?}",
        wrong.map(|w| w * 8)
    );
}
