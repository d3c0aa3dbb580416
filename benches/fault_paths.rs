//! mkwrite against the kernel's own `mmap(MAP_SHARED)` on the same kind of
//! file: first writes to a sparse file (fault + allocate), rewrites of
//! writable pages (plain memory), and a flush of dirty pages.
//! Run: `cargo bench --bench fault_paths`; compare each pair's times.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mkwrite::{Mapping, MappingOptions};

const PAGES: usize = 256;
const PAGE: usize = 4096;
const LEN: u64 = (PAGES * PAGE) as u64;

fn sparse_file(dir: &Path, name: &str) -> File {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(LEN).unwrap();
    file
}

fn ours(dir: &Path) -> Mapping {
    let path = dir.join("mkwrite.dat");
    let _ = std::fs::remove_file(&path);
    let file = sparse_file(dir, "mkwrite.dat");
    drop(file);
    MappingOptions::new().capacity(LEN).open(&path).unwrap()
}

fn kernel(dir: &Path) -> (File, memmap2::MmapMut) {
    let file = sparse_file(dir, "kernel.dat");
    // SAFETY: the file is private to this bench and keeps its length while mapped.
    let map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
    (file, map)
}

fn touch_pages(ptr: *mut u8) {
    for p in 0..PAGES {
        // SAFETY: `ptr` maps at least PAGES pages of a file of that length.
        unsafe { ptr.add(p * PAGE).write_volatile(p as u8) };
    }
}

fn first_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("first_write_256_pages");
    g.bench_function("mkwrite", |b| {
        b.iter_batched(
            || ours(dir.path()),
            |map| touch_pages(black_box(map.as_ptr())),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("kernel_map_shared", |b| {
        b.iter_batched(
            || kernel(dir.path()),
            |(_f, mut map)| touch_pages(black_box(map.as_mut_ptr())),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn rewrite(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("rewrite_256_writable_pages");
    let map = ours(dir.path());
    touch_pages(map.as_ptr());
    g.bench_function("mkwrite", |b| b.iter(|| touch_pages(black_box(map.as_ptr()))));
    let (_f, mut kmap) = kernel(dir.path());
    touch_pages(kmap.as_mut_ptr());
    g.bench_function("kernel_map_shared", |b| {
        b.iter(|| touch_pages(black_box(kmap.as_mut_ptr())))
    });
    g.finish();
}

fn flush(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("dirty_256_pages_then_flush");
    g.sample_size(20);
    let map = ours(dir.path());
    g.bench_function("mkwrite", |b| {
        b.iter(|| {
            touch_pages(map.as_ptr());
            map.flush().unwrap();
        })
    });
    let (_f, mut kmap) = kernel(dir.path());
    g.bench_function("kernel_map_shared", |b| {
        b.iter(|| {
            touch_pages(kmap.as_mut_ptr());
            kmap.flush().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, first_write, rewrite, flush);
criterion_main!(benches);
