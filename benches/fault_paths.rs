//! Criterion's view of the main rows of the table (`benches/table.rs`):
//! first writes, first reads of a cached file, re-dirty after a flush, a
//! flush, and resident stores, for mkwrite (both fault deliveries) and the
//! kernel's `mmap(MAP_SHARED)`
//! on the same filesystem (a temporary directory). Only the workload is
//! timed (`iter_custom`): set-up, `Drop` and `close` are not.
//!
//! `cargo bench --bench fault_paths`; the table command prints ratios.

mod workloads;

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use workloads::{Run, Subject};

/// 16 MiB files: criterion repeats each workload many times.
const PAGES: usize = 4096;

const SUBJECTS: [(&str, Subject); 3] = [
    (
        "mkwrite",
        Subject::Mkwrite {
            block: 4096,
            in_thread: false,
            kernel_dirty: false,
        },
    ),
    (
        "mkwrite_in_thread",
        Subject::Mkwrite {
            block: 4096,
            in_thread: true,
            kernel_dirty: false,
        },
    ),
    ("kernel", Subject::Kernel),
];

/// Benchmarks `workload` per page for both subjects, timing only its runs.
fn pair(c: &mut Criterion, name: &str, workload: impl Fn(&Path, Subject) -> Run) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group(name);
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for (label, subject) in SUBJECTS {
        group.bench_function(label, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| workload(dir.path(), subject).per_unit()).sum())
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    pair(c, "first_write_per_page", |d, s| {
        workloads::first_write(d, s, PAGES, false)
    });
    pair(c, "first_read_cached_per_page", |d, s| {
        workloads::first_read(d, s, PAGES, false, true)
    });
    pair(c, "redirty_after_flush_per_page", |d, s| {
        workloads::redirty(d, s, PAGES)
    });
    pair(c, "flush_all_dirty_per_page", |d, s| {
        workloads::flush(d, s, PAGES, PAGES)
    });
    pair(c, "resident_store_load", |d, s| workloads::resident(d, s, PAGES));
}

criterion_group!(fault_paths, benches);
criterion_main!(fault_paths);
