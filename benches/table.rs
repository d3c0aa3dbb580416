//! The benchmark table: every workload of `workloads/` through mkwrite and
//! through the kernel's `mmap(MAP_SHARED)` on a twin file on the same
//! filesystem, in one run, with the ratio; then what mkwrite's counters say
//! about its time, and the physical floor under the fault path.
//!
//! `cargo bench --bench table` (a few minutes: 64 MiB files, median of 3),
//! `cargo bench --bench table -- --smoke` (seconds: 1 MiB files, one run; CI
//! runs it to keep the suite working, and asserts no time).
//! `cargo bench --bench table -- --only 1,6` runs only workloads 1 and 6
//! (to compare one step's rows before and after; the README's table is
//! always a full run).
//!
//! As root it creates and removes an ext4 (4 KiB blocks) loop mount and a
//! tmpfs; otherwise it uses a temporary directory, and says so.
//!
//! Workload 11 runs fio's mmap engine through `libmkwrite_preload.so`
//! (built here with `cargo build --release -p mkwrite-preload`) and through
//! the kernel; without fio those rows are skipped, and it says so.
//!
//! On ext4 (or the temporary directory) it also runs the first-write and
//! flush workloads through mkwrite over an `NbdStore`, served by nbdkit's
//! file plugin from an image on that filesystem over TCP on 127.0.0.1,
//! beside the kernel's mmap of a local file there. Without nbdkit those
//! rows are skipped, and it says so in one line.

#[path = "../tests/common/mod.rs"]
mod common;
mod workloads;

use std::path::Path;
use std::time::Duration;

use common::nbd_server::{Listen, Program, Server};
use workloads::{Nbd, Run, Subject, Writer};

struct Size {
    pages: usize,
    /// Mappings open at once in workload 10.
    mappings: usize,
    reps: usize,
    db_len: u64,
    db_records: u64,
}

const FULL: Size = Size {
    pages: 16 * 1024,
    mappings: 10_000,
    reps: 3,
    db_len: 256 << 20,
    db_records: 100_000,
};

const SMOKE: Size = Size {
    pages: 256,
    mappings: 200,
    reps: 1,
    db_len: 16 << 20,
    db_records: 20_000,
};

const MK: Subject = Subject::Mkwrite {
    block: 4096,
    in_thread: false,
    kernel_dirty: false,
};
/// mkwrite with faults resolved in the faulting thread (`Delivery::InThread`).
const MK_IN: Subject = Subject::Mkwrite {
    block: 4096,
    in_thread: true,
    kernel_dirty: false,
};
/// The fault rows run once per delivery; this suffix names the in-thread one.
const DELIVERIES: [(Subject, &str); 2] = [(MK, ""), (MK_IN, ", in-thread")];
/// mkwrite with dirty pages tracked by the kernel (`DirtyTracking::Kernel`), per delivery.
const KERNEL_DIRTY: [(Subject, &str); 2] = [
    (
        Subject::Mkwrite {
            block: 4096,
            in_thread: false,
            kernel_dirty: true,
        },
        ", kernel dirty tracking",
    ),
    (
        Subject::Mkwrite {
            block: 4096,
            in_thread: true,
            kernel_dirty: true,
        },
        ", kernel dirty tracking, in-thread",
    ),
];
const KERNEL: Subject = Subject::Kernel;

/// One row: mkwrite's run, the kernel's run.
struct Row {
    name: String,
    fs: &'static str,
    mk: Run,
    kernel: Run,
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let size = if smoke { &SMOKE } else { &FULL };
    let root = is_root();
    let mut rows = Vec::new();
    let mut floors = Vec::new();
    println!(
        "mkwrite vs the kernel's mmap(MAP_SHARED): {} pages a file ({} MiB), median of {}{}",
        size.pages,
        (size.pages * workloads::PAGE) >> 20,
        size.reps,
        if smoke {
            " (smoke run: not a measurement)"
        } else {
            ""
        }
    );
    let mounts: Vec<(&'static str, Dir)> = if root {
        vec![
            ("ext4", Dir::Mount(common::Mount::ext4(1 << 30, 4096))),
            ("tmpfs", Dir::Mount(common::Mount::tmpfs(1 << 30))),
        ]
    } else {
        println!("not root: a temporary directory only (no ext4 loop mount, no tmpfs)");
        vec![("tempdir", Dir::Temp(tempfile::tempdir().expect("tempdir")))]
    };
    let fio = match workloads::fio::fio_missing() {
        _ if !wanted("11.") => None,
        None => Some(workloads::fio::preload_lib()),
        Some(why) => {
            println!("fio rows skipped: {why}");
            None
        }
    };
    for (fs, dir) in &mounts {
        rows.extend(suite(dir.path(), fs, size));
        if let Some(lib) = &fio {
            rows.extend(fio_rows(dir.path(), fs, size, lib));
        }
        if *fs != "tmpfs" {
            match nbdkit_missing() {
                None => rows.extend(nbd_suite(dir.path(), fs, size)),
                Some(why) => println!("NBD rows skipped: {why}"),
            }
        }
        floors.push((*fs, fallocate_floor(dir.path())));
    }
    print_table(&rows);
    print_breakdown(&rows);
    print_floor(size.pages, &floors);
}

enum Dir {
    Mount(common::Mount),
    Temp(tempfile::TempDir),
}

impl Dir {
    fn path(&self) -> &Path {
        match self {
            Dir::Mount(m) => m.dir.path(),
            Dir::Temp(t) => t.path(),
        }
    }
}

fn is_root() -> bool {
    common::effective_uid() == 0
}

/// The median run of `reps`.
fn median(reps: usize, mut run: impl FnMut() -> Run) -> Run {
    let mut runs: Vec<Run> = (0..reps).map(|_| run()).collect();
    runs.sort_by_key(Run::per_unit);
    runs.swap_remove(runs.len() / 2)
}

/// The workloads `--only N,M` names, or `None` for all.
fn only() -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--only")?;
    let list = args
        .get(at + 1)
        .expect("--only takes a list of workload numbers, as 1,6");
    Some(list.split(',').map(|n| n.trim().to_string()).collect())
}

/// Whether the row `name` ("6. first write, ...") is of a wanted workload.
fn wanted(name: &str) -> bool {
    static ONLY: std::sync::OnceLock<Option<Vec<String>>> = std::sync::OnceLock::new();
    let number = name.split('.').next().unwrap_or("");
    ONLY.get_or_init(only)
        .as_ref()
        .is_none_or(|list| list.iter().any(|n| n == number))
}

/// A row: the median of `reps` runs of each subject; `None` (nothing run)
/// if its workload is not wanted.
fn measure(
    name: String,
    fs: &'static str,
    reps: usize,
    mk: &mut dyn FnMut() -> Run,
    kernel: &mut dyn FnMut() -> Run,
) -> Option<Row> {
    if !wanted(&name) {
        return None;
    }
    let mk = median(reps, mk);
    let kernel = median(reps, kernel);
    Some(Row { name, fs, mk, kernel })
}

fn suite(dir: &Path, fs: &'static str, size: &Size) -> Vec<Row> {
    let n = size.pages;
    let mut rows = Vec::new();
    let mut row = |name, mk: &mut dyn FnMut() -> Run, kernel: &mut dyn FnMut() -> Run| {
        rows.extend(measure(name, fs, size.reps, mk, kernel))
    };
    for (mk, tag) in DELIVERIES {
        for random in [false, true] {
            let how = if random { "random" } else { "sequential" };
            row(
                format!("1. first write, {how}{tag}"),
                &mut || workloads::first_write(dir, mk, n, random),
                &mut || workloads::first_write(dir, KERNEL, n, random),
            );
        }
    }
    for (mk, tag) in DELIVERIES {
        for cached in [true, false] {
            for random in [false, true] {
                let how = if random { "random" } else { "sequential" };
                let cache = if cached { "cached" } else { "uncached" };
                row(
                    format!("2. first read, {how}, {cache}{tag}"),
                    &mut || workloads::first_read(dir, mk, n, random, cached),
                    &mut || workloads::first_read(dir, KERNEL, n, random, cached),
                );
            }
        }
    }
    for cached in [true, false] {
        for random in [false, true] {
            let how = if random { "random" } else { "sequential" };
            let cache = if cached { "cached" } else { "uncached" };
            row(
                format!(
                    "2. first read, {how}, {cache}, in-thread, vs pread (kernel column: pread into private memory)"
                ),
                &mut || workloads::first_read(dir, MK_IN, n, random, cached),
                &mut || workloads::first_read_pread(dir, n, random, cached),
            );
        }
    }
    for (mk, tag) in DELIVERIES.into_iter().chain(KERNEL_DIRTY) {
        row(
            format!("3. re-dirty after flush{tag}"),
            &mut || workloads::redirty(dir, mk, n),
            &mut || workloads::redirty(dir, KERNEL, n),
        );
    }
    for dirty in [1, 64, n] {
        row(
            format!("4. flush of {dirty} dirty pages (per page)"),
            &mut || workloads::flush(dir, MK, n, dirty),
            &mut || workloads::flush(dir, KERNEL, n, dirty),
        );
    }
    // The kernel tracking writes: the flush scans for them and writes from copies.
    row(
        format!("4. flush of {n} dirty pages (per page), kernel dirty tracking"),
        &mut || workloads::flush(dir, KERNEL_DIRTY[0].0, n, n),
        &mut || workloads::flush(dir, KERNEL, n, n),
    );
    row(
        "5. resident 8-byte store + load".into(),
        &mut || workloads::resident(dir, MK, n),
        &mut || workloads::resident(dir, KERNEL, n),
    );
    for (mk, tag) in DELIVERIES {
        row(
            format!("6. first write, 2 threads{tag}"),
            &mut || workloads::two_writers(dir, mk, n),
            &mut || workloads::two_writers(dir, KERNEL, n),
        );
    }
    for up in [true, false] {
        row(
            format!(
                "7. set_len {} {} MiB (per call)",
                if up { "up" } else { "down" },
                (n * workloads::PAGE) >> 20
            ),
            &mut || workloads::resize(dir, MK, n, up),
            &mut || workloads::resize(dir, KERNEL, n, up),
        );
    }
    row(
        "7. punch_hole 1 MiB (per call)".into(),
        &mut || workloads::punch(dir, MK, n),
        &mut || workloads::punch(dir, KERNEL, n),
    );
    for block in [1024, 65536] {
        let sub = Subject::Mkwrite {
            block,
            in_thread: false,
            kernel_dirty: false,
        };
        row(
            format!("8. first write, sequential, {} KiB blocks", block >> 10),
            &mut || workloads::first_write(dir, sub, n, false),
            &mut || workloads::first_write(dir, KERNEL, n, false),
        );
        row(
            format!("8. re-dirty after flush, {} KiB blocks", block >> 10),
            &mut || workloads::redirty(dir, sub, n),
            &mut || workloads::redirty(dir, KERNEL, n),
        );
    }
    let db = |s: Subject, w: Writer| workloads::database(dir, s, w, size.db_len, size.db_records);
    let mib = size.db_len >> 20;
    for (mk, tag) in DELIVERIES.into_iter().chain(KERNEL_DIRTY) {
        row(
            format!("9. 512 B records, {mib} MiB, 2 threads: mkwrite raw{tag}"),
            &mut || db(mk, Writer::Raw),
            &mut || db(KERNEL, Writer::Raw),
        );
    }
    row(
        format!("9. 512 B records, {mib} MiB, 2 threads: mkwrite write()"),
        &mut || db(MK, Writer::Checked),
        &mut || db(KERNEL, Writer::Raw),
    );
    row(
        format!("9. 512 B records, {mib} MiB, 2 threads: pwrite+fdatasync"),
        &mut || db(KERNEL, Writer::Pwrite),
        &mut || db(KERNEL, Writer::Raw),
    );
    if fs == "ext4" || fs == "tempdir" {
        rows.extend(many_mappings_rows(dir, fs, size));
    }
    rows
}

/// Workload 11: fio's mmap engine, unmodified, through the interposer and
/// through the kernel.
fn fio_rows(dir: &Path, fs: &'static str, size: &Size, lib: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for random in [false, true] {
        for delivery in ["handler", "in-thread"] {
            let run = |preload| workloads::fio::fio_write(dir, preload, size.pages, random);
            let name = format!(
                "11. fio --ioengine=mmap {}, via LD_PRELOAD{}",
                if random { "randwrite" } else { "write" },
                if delivery == "handler" { "" } else { ", in-thread" }
            );
            let mk = &mut || run(Some((lib, delivery)));
            rows.extend(measure(name, fs, size.reps, mk, &mut || run(None)));
        }
    }
    rows
}

/// Picks one phase of workload 10's run.
type Phase = fn(&workloads::ManyMappings) -> &Run;

/// Workload 10's rows: each phase's median over the runs, per subject.
fn many_mappings_rows(dir: &Path, fs: &'static str, size: &Size) -> Vec<Row> {
    if !wanted("10.") {
        return Vec::new();
    }
    let count = size.mappings;
    let runs = |s: Subject| {
        (0..size.reps)
            .map(|_| workloads::many_mappings(dir, s, count))
            .collect::<Vec<_>>()
    };
    let kernel = runs(KERNEL);
    let mut rows = Vec::new();
    for (mk, tag) in DELIVERIES {
        let mk = runs(mk);
        let phase = |runs: &[workloads::ManyMappings], pick: Phase| {
            let mut phase: Vec<Run> = runs.iter().map(|r| pick(r).clone()).collect();
            phase.sort_by_key(Run::per_unit);
            phase.swap_remove(phase.len() / 2)
        };
        let phases: [(String, Phase); 4] = [
            (format!("10. open a mapping, {count} open{tag}"), |r| &r.open),
            (format!("10. first write, mappings 1-100 of {count}{tag}"), |r| {
                &r.first_fault_early
            }),
            (
                format!("10. first write, last 100 of {count} mappings{tag}"),
                |r| &r.first_fault_late,
            ),
            (format!("10. close a mapping, {count} open{tag}"), |r| &r.close),
        ];
        for (name, pick) in phases {
            rows.push(Row {
                name,
                fs,
                mk: phase(&mk, pick),
                kernel: phase(&kernel, pick),
            });
        }
    }
    rows
}

/// Why nbdkit cannot serve the NBD rows, or `None` if it can: the program
/// and its file plugin must both be installed.
fn nbdkit_missing() -> Option<String> {
    match std::process::Command::new("nbdkit")
        .args(["file", "--dump-plugin"])
        .output()
    {
        Err(e) => Some(format!("nbdkit not found ({e}); .ci/run installs it")),
        Ok(out) if !out.status.success() => Some(format!(
            "nbdkit has no file plugin: {}",
            String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("")
        )),
        Ok(_) => None,
    }
}

/// Workloads 1 (sequential) and 4 through mkwrite over an `NbdStore` on
/// nbdkit's file plugin, serving an image in `dir` over TCP on 127.0.0.1;
/// the kernel's column is its mmap of a local file in `dir`, as elsewhere.
fn nbd_suite(dir: &Path, fs: &'static str, size: &Size) -> Vec<Row> {
    if !wanted("1.") && !wanted("4.") {
        return Vec::new();
    }
    let n = size.pages;
    let image = dir.join("nbd-export.img");
    let image_len = Nbd::image_len((n * workloads::PAGE) as u64);
    workloads::blank_image(&image, image_len);
    let server = Server::start(Program::nbdkit(), &image, Listen::Tcp);
    let nbd = Nbd {
        uri: server.uri(),
        image: image.clone(),
        image_len,
    };
    const OVER: &str = "mkwrite over NBD (nbdkit, TCP 127.0.0.1)";
    let mut rows = Vec::new();
    let mut row = |name, mk: &mut dyn FnMut() -> Run, kernel: &mut dyn FnMut() -> Run| {
        rows.extend(measure(name, fs, size.reps, mk, kernel))
    };
    row(
        format!("1. first write, sequential, {OVER}"),
        &mut || workloads::first_write_nbd(&nbd, n, false),
        &mut || workloads::first_write(dir, KERNEL, n, false),
    );
    for dirty in [1, 64, n] {
        row(
            format!("4. flush of {dirty} dirty pages (per page), {OVER}"),
            &mut || workloads::flush_nbd(&nbd, n, dirty),
            &mut || workloads::flush(dir, KERNEL, n, dirty),
        );
    }
    drop(server);
    let _ = std::fs::remove_file(&image);
    rows
}

fn us(d: Duration) -> String {
    ns(d.as_secs_f64() * 1e9)
}

fn ns(ns: f64) -> String {
    if ns >= 100_000.0 {
        format!("{:.0} µs", ns / 1000.0)
    } else if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| workload (per 4 KiB page unless noted) | fs | mkwrite | kernel mmap | ratio |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for r in rows {
        let (mk, k) = (r.mk.per_unit_ns(), r.kernel.per_unit_ns());
        // Below a nanosecond the kernel did nothing measurable (tmpfs never
        // write-protects on msync): a ratio would be noise.
        let ratio = if k >= 1.0 {
            format!("{:.2}x", mk / k)
        } else {
            "kernel ~0".into()
        };
        println!("| {} | {} | {} | {} | {ratio} |", r.name, r.fs, ns(mk), ns(k));
    }
    let one = |fs: &str, tag: &str, mk: bool| {
        rows.iter()
            .find(|r| r.fs == fs && r.name == format!("1. first write, sequential{tag}"))
            .map(|r| if mk { r.mk.per_unit() } else { r.kernel.per_unit() })
    };
    for r in rows.iter().filter(|r| r.name.starts_with("6.")) {
        let tag = r.name.strip_prefix("6. first write, 2 threads").unwrap_or("");
        if let (Some(mk1), Some(k1)) = (one(r.fs, tag, true), one(r.fs, tag, false)) {
            println!(
                "\n{}{tag}: two writers' throughput over one: mkwrite {:.2}x, kernel {:.2}x",
                r.fs,
                mk1.as_secs_f64() / r.mk.per_unit().as_secs_f64(),
                k1.as_secs_f64() / r.kernel.per_unit().as_secs_f64()
            );
        }
    }
}

fn print_breakdown(rows: &[Row]) {
    println!("\nWhere mkwrite's time went (its counters for the median run; per unit of the row):");
    println!(
        "| workload | fs | faults missing r/w, wp | in-thread / handed off | found ready / fill waits | allocate calls | handler per fault | store read / allocate / write / sync | ioctls |"
    );
    println!("| --- | --- | --- | --- | --- | ---: | ---: | --- | ---: |");
    for r in rows {
        let Some(s) = r.mk.stats else { continue };
        let units = r.mk.units.max(1) as u32;
        let faults = s.faults_missing_read + s.faults_missing_write + s.faults_write_protect;
        println!(
            "| {} | {} | {} / {}, {} | {} / {} | {} / {} | {:.2} | {} | {} / {} / {} / {} | {} |",
            r.name,
            r.fs,
            s.faults_missing_read,
            s.faults_missing_write,
            s.faults_write_protect,
            s.faults_in_thread,
            s.faults_handed_off,
            s.faults_found_ready,
            s.fill_waits,
            s.allocate_calls as f64 / f64::from(units),
            us(s.handler_time / (faults.max(1) as u32)),
            us(s.store_read_time / units),
            us(s.store_allocate_time / units),
            us(s.store_write_time / units),
            us(s.store_sync_time / units),
            us(s.ioctl_time / units),
        );
    }
}

fn fallocate_floor(dir: &Path) -> (Duration, Duration) {
    (
        workloads::fallocate_per_call(dir, 4096, 16 << 20),
        workloads::fallocate_per_call(dir, 1 << 20, 64 << 20),
    )
}

fn print_floor(pages: usize, fallocates: &[(&str, (Duration, Duration))]) {
    let per =
        |d: std::io::Result<Duration>| d.map_or_else(|e| format!("n/a ({e})"), |d| us(d / pages as u32));
    println!("\nThe floor, measured in the same run (per page unless noted):");
    println!(
        "- anonymous memory, first-touch write: {}",
        per(mkwrite::floor::anonymous_first_touch(pages))
    );
    println!(
        "- userfaultfd missing fault resolved by UFFDIO_COPY from a handler thread: {}",
        per(mkwrite::floor::userfaultfd_write(pages, false))
    );
    println!(
        "- userfaultfd write-protect fault resolved by UFFDIO_WRITEPROTECT from a handler thread: {}",
        per(mkwrite::floor::userfaultfd_write(pages, true))
    );
    for (fs, (small, large)) in fallocates {
        println!(
            "- fallocate on {fs}: 4 KiB {} a call, 1 MiB {} a call",
            us(*small),
            us(*large)
        );
    }
}
