//! Workload 11: fio's mmap engine writing a sparse file, unmodified,
//! through mkwrite's interposer (`libmkwrite_preload.so`) and through the
//! kernel's mmap, on the same filesystem. The time is fio's own mean
//! completion latency per 4 KiB write (fio's startup and the final flush
//! at exit are outside it, for both).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{PAGE, Run, sparse};

/// Why fio cannot run, or `None` if it can.
pub fn fio_missing() -> Option<String> {
    match Command::new("fio").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(_) => Some("fio --version failed".into()),
        Err(e) => Some(format!("fio not found ({e}); .ci/run installs it")),
    }
}

/// `libmkwrite_preload.so`, built in this profile beside the bench binary.
pub fn preload_lib() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "mkwrite-preload"])
        .status()
        .expect("cargo build of the interposer");
    assert!(status.success(), "building libmkwrite_preload.so failed");
    // The bench runs from target/release/deps; the library lands in target/release.
    let exe = std::env::current_exe().expect("bench path");
    let lib = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("libmkwrite_preload.so");
    assert!(lib.exists(), "{} missing after the build", lib.display());
    lib
}

/// One fio write job of `pages` 4 KiB writes on a fresh sparse file in
/// `dir`, through the interposer when given (its path, and the delivery:
/// `handler` or `in-thread`).
pub fn fio_write(dir: &Path, preload: Option<(&Path, &str)>, pages: usize, random: bool) -> Run {
    let file = dir.join(if preload.is_some() {
        "fio-mkwrite.dat"
    } else {
        "fio-kernel.dat"
    });
    // A sparse file of the job's size: fio maps it as it is (a missing
    // one it would write out first), so every page's first write faults.
    sparse(&file, (pages * PAGE) as u64);
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=w",
        "--ioengine=mmap",
        "--bs=4k",
        "--randrepeat=1",
        "--output-format=json",
        &format!("--rw={}", if random { "randwrite" } else { "write" }),
        &format!("--size={}", pages * PAGE),
        &format!("--filename={}", file.display()),
    ]);
    if let Some((lib, delivery)) = preload {
        cmd.env("LD_PRELOAD", lib)
            .env("MKWRITE_PRELOAD_PATHS", &file)
            .env("MKWRITE_PRELOAD_DELIVERY", delivery);
    }
    let out = cmd.output().expect("fio");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mean_ns =
        write_clat_mean_ns(&report).unwrap_or_else(|| panic!("no write latency in fio's report: {report}"));
    Run {
        time: Duration::from_nanos((mean_ns * pages as f64) as u64),
        units: pages as u64,
        stats: None,
    }
}

/// The mean completion latency of the writes in fio's JSON report. Read by
/// hand: the one number needed does not justify a JSON parser dependency.
fn write_clat_mean_ns(report: &str) -> Option<f64> {
    let write = &report[report.find("\"write\" : {")?..];
    let clat = &write[write.find("\"clat_ns\" : {")?..];
    let mean = &clat[clat.find("\"mean\" : ")? + "\"mean\" : ".len()..];
    let end = mean.find([',', '\n'])?;
    mean[..end].trim().parse().ok()
}
