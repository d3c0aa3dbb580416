//! The memmap2-style calls: `flush_async`, `advise`, `raw`, each against
//! the real kernel and a real store.

mod common;

use std::sync::Arc;

use common::Mount;
use common::injector::{Fault, Injector};
use mkwrite::{Advice, Mapping, MappingOptions, MemStore, Store};

const PAGE: usize = 4096;

fn poke(map: &Mapping, offset: usize, byte: u8) {
    // SAFETY: callers stay inside the file's pages.
    unsafe { map.raw().as_ptr().add(offset).write_volatile(byte) }
}

fn peek(map: &Mapping, offset: usize) -> u8 {
    // SAFETY: callers stay inside the file's pages.
    unsafe { map.raw().as_ptr().add(offset).read_volatile() }
}

#[test]
fn a_flush_after_flush_async_makes_every_earlier_byte_durable() {
    let fs = Mount::tmpfs(16 << 20);
    let path = fs.path("f");
    let map = common::kib_block_mapping(&path, (256 * PAGE) as u64);
    for p in 0..256 {
        poke(&map, p * PAGE, 1);
    }
    map.flush_async().unwrap();
    // Written while the background flush may be running: caught by the flush.
    for p in (0..256).step_by(3) {
        poke(&map, p * PAGE + 1, 2);
    }
    map.flush_async().unwrap();
    map.flush().unwrap();
    assert_eq!(map.stats().pages_dirty, 0);
    let file = common::read_file(&path);
    for p in 0..256 {
        assert_eq!(file[p * PAGE], 1, "page {p}");
        assert_eq!(file[p * PAGE + 1], if p % 3 == 0 { 2 } else { 0 }, "page {p}");
    }
}

#[test]
fn a_failed_background_flush_is_written_by_the_flush_that_waits() {
    let store = Arc::new(Injector::new(
        MemStore::new(1024, 1000).unwrap(),
        Some((Fault::WriteEio, 0)),
    ));
    store.set_len(64 * 1024).unwrap();
    let map = MappingOptions::new()
        .capacity(64 * 1024)
        .map_store(store.clone())
        .unwrap();
    map.write(100, &[5; 10_000]).unwrap();
    map.flush_async().unwrap(); // its first write fails
    map.flush().unwrap();
    assert!(store.inner.contents()[100..10_100].iter().all(|&b| b == 5));
    assert_eq!(map.stats().pages_dirty, 0);
    map.check_invariants().unwrap();
}

/// A mapping of 64 written pages, none resident.
fn written(advice: Advice) -> Mapping {
    let store = MemStore::new(4096, 64).unwrap();
    store.set_len((64 * PAGE) as u64).unwrap();
    store.allocate(0..64).unwrap();
    store.write_at(0, &[9; 64 * PAGE]).unwrap();
    let map = MappingOptions::new()
        .capacity((64 * PAGE) as u64)
        .map_store(store)
        .unwrap();
    map.advise(advice, 0, 0).unwrap();
    map
}

fn read_faults_of_a_sequential_pass(map: &Mapping) -> u64 {
    for p in 0..64 {
        assert_eq!(peek(map, p * PAGE), 9);
    }
    map.stats().faults_missing_read
}

#[test]
fn advice_sets_how_far_reads_fill_ahead() {
    let random = read_faults_of_a_sequential_pass(&written(Advice::Random));
    let normal = read_faults_of_a_sequential_pass(&written(Advice::Normal));
    let sequential = read_faults_of_a_sequential_pass(&written(Advice::Sequential));
    assert_eq!(random, 64, "one fault a page");
    assert!(
        normal < 16,
        "a sequential pass is seen and read ahead: {normal} faults"
    );
    assert!(
        sequential <= 2,
        "the widest window from the first fault: {sequential} faults"
    );
}

#[test]
fn a_read_that_is_not_sequential_fills_its_aligned_group() {
    let map = written(Advice::Normal);
    assert_eq!(peek(&map, 37 * PAGE + 5), 9);
    assert_eq!(map.stats().pages_resident, 16, "pages 32..48 came with it");
    for p in 32..48 {
        assert_eq!(peek(&map, p * PAGE), 9);
    }
    assert_eq!(map.stats().faults_missing_read, 1, "its neighbours read free");
    let random = written(Advice::Random);
    assert_eq!(peek(&random, 37 * PAGE), 9);
    assert_eq!(random.stats().pages_resident, 1, "Random reads only the page");
}

#[test]
fn will_need_fills_a_range_without_a_fault() {
    let map = written(Advice::Normal);
    map.advise(Advice::WillNeed, 8 * PAGE as u64, 8 * PAGE as u64)
        .unwrap();
    let stats = map.stats();
    // The range, and maybe pages read ahead of it (as the kernel's WILLNEED does).
    assert!(
        (8..=40).contains(&stats.pages_resident),
        "{}",
        stats.pages_resident
    );
    assert_eq!(stats.faults_missing_read + stats.faults_missing_write, 0);
    assert_eq!(peek(&map, 8 * PAGE), 9);
    assert_eq!(
        map.stats().faults_missing_read,
        0,
        "the filled page reads without a fault"
    );
    assert!(
        map.advise(Advice::WillNeed, 60 * PAGE as u64, 8 * PAGE as u64)
            .is_err(),
        "past EOF"
    );
}

#[test]
fn raw_memory_crosses_threads() {
    let map = written(Advice::Normal);
    let memory = map.raw();
    assert_eq!(memory.len(), 64 * PAGE);
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                // SAFETY: distinct pages of the file; the mapping outlives the scope.
                unsafe { memory.as_ptr().add(t * PAGE).write_volatile(t as u8) };
            });
        }
    });
    for t in 0..4 {
        assert_eq!(peek(&map, t * PAGE), t as u8);
    }
}

#[test]
fn growing_the_capacity_keeps_data_allocation_dirty_and_locked_state() {
    let fs = Mount::tmpfs(16 << 20);
    let path = fs.path("g");
    let mut map = common::kib_block_mapping(&path, (16 * PAGE) as u64);
    for p in 0..16 {
        poke(&map, p * PAGE, p as u8 + 1);
    }
    map.flush().unwrap(); // clean and write-protected
    for p in (0..16).step_by(2) {
        poke(&map, p * PAGE + 1, 0xEE); // dirty, writable
    }
    map.lock(0, 4 * PAGE as u64).unwrap();
    let before = map.stats();
    let old = map.raw();
    map.grow_capacity(64 << 20).unwrap();
    assert!(map.capacity() >= 64 << 20);
    assert_ne!(map.raw(), old, "the memory moved");
    let after = map.stats();
    assert_eq!(after.pages_resident, before.pages_resident);
    assert_eq!(after.pages_dirty, before.pages_dirty);
    assert_eq!(after.blocks_allocated, before.blocks_allocated);
    for p in 0..16 {
        assert_eq!(peek(&map, p * PAGE), p as u8 + 1, "page {p}");
        assert_eq!(
            peek(&map, p * PAGE + 1),
            if p % 2 == 0 { 0xEE } else { 0 },
            "page {p}"
        );
    }
    // Writable pages stayed writable, protected ones still fault once.
    let faults = after.faults_write_protect;
    poke(&map, 2, 1);
    assert_eq!(map.stats().faults_write_protect, faults, "page 0 was writable");
    poke(&map, PAGE + 2, 1);
    assert_eq!(
        map.stats().faults_write_protect,
        faults + 1,
        "page 1 was protected"
    );
    map.evict().unwrap();
    assert!(map.stats().pages_resident >= 4, "locked pages stay");
    // The file grows past the old capacity.
    map.set_len(32 << 20).unwrap();
    poke(&map, (32 << 20) - 1, 7);
    map.flush().unwrap();
    map.check_invariants().unwrap();
    let file = common::read_file(&path);
    assert_eq!(file.len(), 32 << 20);
    assert_eq!((file[PAGE], file[PAGE + 2], file[(32 << 20) - 1]), (2, 1, 7));
    assert_eq!(file[2 * PAGE + 1], 0xEE);
}

#[test]
fn a_window_maps_reads_allocates_and_flushes_only_its_range() {
    let fs = Mount::tmpfs(16 << 20);
    let path = fs.path("w");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(64 * 1024).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[3; 4096], 20 * 1024).unwrap();
    file.sync_all().unwrap();
    let map = MappingOptions::new()
        .offset(16 * 1024)
        .len(16 * 1024)
        .open(&path)
        .unwrap();
    assert_eq!((map.len(), map.capacity()), (16 * 1024, 16 * 1024));
    assert_eq!(peek(&map, 4 * 1024), 3, "file offset 20 KiB");
    for p in 0..4 {
        poke(&map, p * PAGE + 100, 9);
    }
    map.flush().unwrap();
    let bytes = common::read_file(&path);
    for (i, &b) in bytes.iter().enumerate() {
        let want = match i {
            _ if (16 * 1024..32 * 1024).contains(&i) && i % PAGE == 100 => 9,
            _ if (20 * 1024..24 * 1024).contains(&i) => 3,
            _ => 0,
        };
        assert_eq!(b, want, "byte {i}");
    }
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap()) * 512;
    assert_eq!(used, 16 * 1024, "only the window's blocks are allocated");
    assert!(
        map.set_len(8 * 1024).is_err(),
        "a window cannot change the file's length"
    );
    let past = map.write(16 * 1024, b"x").unwrap_err();
    assert!(matches!(past.error, mkwrite::Error::OutOfRange { .. }), "{past}");
    let odd = MappingOptions::new().offset(100).open(&path).unwrap_err();
    assert_eq!(odd.kind(), std::io::ErrorKind::InvalidInput, "{odd}");
}
