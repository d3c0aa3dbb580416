//! Dirty tracking by the kernel (`DirtyTracking::Kernel`, `WP_ASYNC` and
//! `PAGEMAP_SCAN`), on real files: a write after a flush takes no fault and
//! still reaches the file; a page comes into memory only with its blocks,
//! so reading a hole allocates them and a full filesystem fails that read;
//! layout changes zero bytes in place; a page dropped behind the mapping's
//! back counts as lost; what cannot be kept safe is refused. Each case runs
//! in a child process with a time limit, in both deliveries.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::bounded::{Case, End, Setup, dir};
use common::{Mount, pattern, read_file};
use mkwrite::{Budget, Delivery, DirtyTracking, Error, Mapping, MappingOptions, MemStore};

const PAGE: usize = 4096;
const PAGES: usize = 16;

macro_rules! both_deliveries {
    ($name:literal, $case:ident, $end:expr, $setup:expr) => {
        [
            (
                concat!($name, "_handler_thread"),
                (|| $case(Delivery::HandlerThread)) as fn(),
                $end,
                $setup,
            ),
            (
                concat!($name, "_in_thread"),
                (|| $case(Delivery::InThread)) as fn(),
                $end,
                $setup,
            ),
        ]
    };
}

fn main() {
    let mut cases: Vec<Case> = [
        both_deliveries!(
            "a_write_after_a_flush_takes_no_fault_and_reaches_the_file",
            a_write_after_a_flush_takes_no_fault_and_reaches_the_file,
            End::Exit(0),
            Setup::Tmpfs
        ),
        both_deliveries!(
            "reading_a_hole_allocates_its_blocks",
            reading_a_hole_allocates_its_blocks,
            End::Exit(0),
            Setup::Tmpfs
        ),
        both_deliveries!(
            "reading_a_hole_of_a_full_filesystem_fails_by_the_policy",
            reading_a_hole_of_a_full_filesystem_fails_by_the_policy,
            End::Exit(0),
            Setup::None
        ),
        both_deliveries!(
            "a_plain_read_of_a_hole_of_a_full_filesystem_raises_sigbus",
            a_plain_read_of_a_hole_of_a_full_filesystem_raises_sigbus,
            End::Signal(libc::SIGBUS),
            Setup::None
        ),
        both_deliveries!(
            "resizing_and_punching_zero_bytes_in_place",
            resizing_and_punching_zero_bytes_in_place,
            End::Exit(0),
            Setup::Tmpfs
        ),
        both_deliveries!(
            "a_system_call_writing_into_clean_pages_is_found_by_the_flush",
            a_system_call_writing_into_clean_pages_is_found_by_the_flush,
            End::Exit(0),
            Setup::Tmpfs
        ),
        both_deliveries!(
            "a_clean_page_dropped_by_madvise_counts_as_lost",
            a_clean_page_dropped_by_madvise_counts_as_lost,
            End::Exit(0),
            Setup::Tmpfs
        ),
        [
            (
                "what_cannot_be_kept_safe_is_refused",
                what_cannot_be_kept_safe_is_refused as fn(),
                End::Exit(0),
                Setup::Tmpfs,
            ),
            (
                "growing_the_capacity_keeps_writes_the_kernel_let_through",
                growing_the_capacity_keeps_writes_the_kernel_let_through as fn(),
                End::Exit(0),
                Setup::Tmpfs,
            ),
        ],
    ]
    .concat();
    cases.extend(both_deliveries!(
        "writes_to_pages_a_read_fill_brings_in_survive_a_racing_flush",
        writes_to_pages_a_read_fill_brings_in_survive_a_racing_flush,
        End::Exit(0),
        Setup::Tmpfs
    ));
    cases.push((
        "without_wp_async_the_mapping_tracks_by_faults",
        without_wp_async_the_mapping_tracks_by_faults,
        End::Exit(0),
        Setup::Tmpfs,
    ));
    common::bounded::run_cases(&cases);
}

/// A new sparse file of `pages` pages at `path`, mapped with the kernel
/// tracking writes.
fn mapping(path: &Path, pages: usize, delivery: Delivery) -> Mapping {
    let map = MappingOptions::new()
        .delivery(delivery)
        .dirty_tracking(DirtyTracking::Kernel)
        .capacity(1 << 20)
        .create(true)
        .open(path)
        .unwrap();
    map.set_len((pages * PAGE) as u64).unwrap();
    assert_eq!(
        map.dirty_tracking(),
        DirtyTracking::Kernel,
        "Linux 6.18 has WP_ASYNC"
    );
    map
}

/// Writes `data` at `offset` with plain stores, as a program does.
fn store(map: &Mapping, offset: usize, data: &[u8]) {
    // SAFETY: inside the file; no reference to these bytes is alive.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_ptr().add(offset), data.len()) };
}

/// Reads `len` bytes at `offset` with plain loads.
fn load(map: &Mapping, offset: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: as in `store`.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr().add(offset), out.as_mut_ptr(), len) };
    out
}

/// Every fault of any kind the mapping has seen.
fn faults(map: &Mapping) -> u64 {
    let s = map.stats();
    s.faults_missing_read + s.faults_missing_write + s.faults_write_protect + s.faults_in_thread
}

fn a_write_after_a_flush_takes_no_fault_and_reaches_the_file(delivery: Delivery) {
    let path = dir().join("f");
    let map = mapping(&path, PAGES, delivery);
    let first = pattern(1, PAGES * PAGE);
    store(&map, 0, &first);
    map.flush().unwrap();
    assert_eq!(read_file(&path), first);
    let before = faults(&map);
    assert!(before > 0, "the first writes faulted");
    let second = pattern(2, PAGES * PAGE);
    store(&map, 0, &second);
    assert_eq!(faults(&map), before, "no write after the flush faulted");
    assert_eq!(map.stats().pages_found_written, 0, "nothing scanned yet");
    map.flush().unwrap();
    assert_eq!(read_file(&path), second, "the writes reached the file");
    assert_eq!(map.stats().pages_found_written, PAGES as u64);
    // One page written again: only it is found, and only it changes.
    store(&map, 5 * PAGE + 7, b"again");
    map.flush().unwrap();
    assert_eq!(map.stats().pages_found_written, PAGES as u64 + 1);
    let mut third = second;
    third[5 * PAGE + 7..5 * PAGE + 12].copy_from_slice(b"again");
    assert_eq!(read_file(&path), third);
    map.check_invariants().unwrap();
    drop(map);
    assert_eq!(read_file(&path), third, "nothing changed at close");
}

fn reading_a_hole_allocates_its_blocks(delivery: Delivery) {
    let path = dir().join("f");
    let map = mapping(&path, PAGES, delivery);
    assert_eq!(std::fs::metadata(&path).unwrap().blocks(), 0, "a sparse file");
    assert_eq!(
        load(&map, 3 * PAGE, PAGE),
        vec![0u8; PAGE],
        "a hole reads as zeros"
    );
    assert_eq!(
        map.stats().blocks_allocated,
        1,
        "the read allocated the page's block"
    );
    assert!(std::fs::metadata(&path).unwrap().blocks() * 512 >= PAGE as u64);
    // So a write to it needs no fault: its block is there.
    let before = faults(&map);
    store(&map, 3 * PAGE + 1, b"x");
    assert_eq!(faults(&map), before);
    map.flush().unwrap();
    assert_eq!(read_file(&path)[3 * PAGE + 1], b'x');
    // Read-ahead stays within allocated pages: the sequential reader's next
    // pages are holes, each allocated by its own read.
    for p in 8..12 {
        std::hint::black_box(load(&map, p * PAGE, 1));
    }
    assert_eq!(map.stats().blocks_allocated, 5, "{:?}", map.stats());
    map.check_invariants().unwrap();
}

/// A 1 MiB tmpfs with a file of 16 sparse pages, filled up by a ballast file.
fn full_filesystem() -> (Mount, std::path::PathBuf) {
    let fs = Mount::tmpfs(1 << 20);
    let path = fs.path("f");
    std::fs::write(&path, b"").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len((PAGES * PAGE) as u64)
        .unwrap();
    let mut ballast = std::fs::File::create(fs.path("ballast")).unwrap();
    let chunk = vec![1u8; PAGE];
    while std::io::Write::write_all(&mut ballast, &chunk).is_ok() {}
    (fs, path)
}

fn open_full(path: &Path, delivery: Delivery) -> Mapping {
    let map = MappingOptions::new()
        .delivery(delivery)
        .dirty_tracking(DirtyTracking::Kernel)
        .capacity(1 << 20)
        .open(path)
        .unwrap();
    assert_eq!(map.dirty_tracking(), DirtyTracking::Kernel);
    map
}

fn reading_a_hole_of_a_full_filesystem_fails_by_the_policy(delivery: Delivery) {
    let (fs, path) = full_filesystem();
    let map = open_full(&path, delivery);
    let mut buf = [0u8; 16];
    let err = map.read(PAGE as u64, &mut buf).unwrap_err();
    assert!(matches!(err.error, Error::NoSpace(_)), "{err}");
    assert_eq!(map.stats().pages_resident, 0, "nothing came in without its block");
    std::fs::remove_file(fs.path("ballast")).unwrap();
    map.read(PAGE as u64, &mut buf).unwrap();
    assert_eq!(buf, [0u8; 16]);
    assert_eq!(map.stats().blocks_allocated, 1);
    map.check_invariants().unwrap();
}

fn a_plain_read_of_a_hole_of_a_full_filesystem_raises_sigbus(delivery: Delivery) {
    let (_fs, path) = full_filesystem();
    let map = open_full(&path, delivery);
    let byte = load(&map, PAGE, 1);
    println!("read {byte:?} without a block: rule 1 broken");
}

fn resizing_and_punching_zero_bytes_in_place(delivery: Delivery) {
    let path = dir().join("f");
    let map = mapping(&path, 4, delivery);
    store(&map, 0, &[0xFF; 4 * PAGE]);
    map.flush().unwrap();
    // A write the kernel let through: only its page tables know of it.
    store(&map, PAGE + 10, b"head");
    // Shrink into page 1 and grow back: its tail reads as zeros, in memory
    // and in the file; the bytes before the tail are kept, and still
    // known written (a copy, drop and reinstall would forget that).
    map.set_len((PAGE + 100) as u64).unwrap();
    map.set_len((4 * PAGE) as u64).unwrap();
    let mut expected = vec![0xFFu8; PAGE + 100];
    expected[PAGE + 10..PAGE + 14].copy_from_slice(b"head");
    expected.resize(4 * PAGE, 0);
    assert_eq!(load(&map, 0, 4 * PAGE), expected);
    map.flush().unwrap();
    assert_eq!(read_file(&path), expected);
    // A write right after the zeroing is kept: the page stayed in memory.
    store(&map, PAGE + 50, b"kept");
    expected[PAGE + 50..PAGE + 54].copy_from_slice(b"kept");
    // Punch part of page 0: zeroed in place, and in the file at the flush.
    map.punch_hole(10, 20).unwrap();
    expected[10..30].fill(0);
    assert_eq!(load(&map, 0, 4 * PAGE), expected);
    map.flush().unwrap();
    assert_eq!(read_file(&path), expected);
    map.check_invariants().unwrap();
}

fn a_clean_page_dropped_by_madvise_counts_as_lost(delivery: Delivery) {
    let path = dir().join("f");
    let map = mapping(&path, 4, delivery);
    store(&map, 0, &[7u8; 4 * PAGE]);
    map.flush().unwrap();
    // Page 2 is clean as far as anyone knows: the kernel keeps no record of
    // a write once the page is gone, so its drop counts as a loss.
    // SAFETY: the mapping's own memory; dropping a page behind its back is
    // what this case does on purpose.
    let rc = unsafe { libc::madvise(map.as_ptr().add(2 * PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
    assert_eq!(
        load(&map, 2 * PAGE, PAGE),
        vec![7u8; PAGE],
        "refilled from the file"
    );
    let err = map.flush().unwrap_err();
    let lost = (2 * PAGE) as u64..(3 * PAGE) as u64;
    assert!(
        matches!(&err, Error::Discarded { ranges } if ranges == std::slice::from_ref(&lost)),
        "{err}"
    );
    map.flush().unwrap();
    // Written pages, one dropped before the flush copies them: the flush
    // writes the others (copied as one run) and reports that one.
    store(&map, 0, &[8u8; 4 * PAGE]);
    // SAFETY: as above.
    let rc = unsafe { libc::madvise(map.as_ptr().add(PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
    let err = map.flush().unwrap_err();
    let lost = PAGE as u64..(2 * PAGE) as u64;
    assert!(
        matches!(&err, Error::Discarded { ranges } if ranges == std::slice::from_ref(&lost)),
        "{err}"
    );
    let mut expected = vec![8u8; 4 * PAGE];
    expected[PAGE..2 * PAGE].fill(7);
    assert_eq!(read_file(&path), expected);
    map.check_invariants().unwrap();
}

fn what_cannot_be_kept_safe_is_refused() {
    let kernel = || {
        let mut opts = MappingOptions::new();
        opts.dirty_tracking(DirtyTracking::Kernel);
        opts
    };
    let small_blocks = kernel().map_store(MemStore::new(1024, 64).unwrap());
    assert!(
        matches!(small_blocks, Err(Error::NotWithKernelDirtyTracking(_))),
        "blocks smaller than a page"
    );
    let budget = kernel()
        .budget(&Budget::new(1 << 20))
        .map_store(MemStore::new(4096, 16).unwrap());
    assert!(
        matches!(budget, Err(Error::NotWithKernelDirtyTracking(_))),
        "a budget"
    );
    let map = kernel().map_store(MemStore::new(4096, 16).unwrap()).unwrap();
    map.set_len(PAGE as u64).unwrap();
    map.write(0, b"x").unwrap();
    map.flush().unwrap();
    let err = map.evict().unwrap_err();
    assert!(matches!(err, Error::NotWithKernelDirtyTracking(_)), "{err}");
    assert_eq!(err.errno(), libc::ENOTSUP);
    assert_eq!(map.stats().pages_resident, 1, "nothing was evicted");
    // Read-only memory is never written: it needs no tracking.
    std::fs::write(dir().join("ro"), b"read only").unwrap();
    let ro = kernel().read_only(true).open(dir().join("ro")).unwrap();
    assert_eq!(ro.dirty_tracking(), DirtyTracking::Faults);
}

fn growing_the_capacity_keeps_writes_the_kernel_let_through() {
    let path = dir().join("f");
    let mut map = mapping(&path, 4, Delivery::HandlerThread);
    store(&map, 0, &[1u8; 4 * PAGE]);
    map.flush().unwrap();
    store(&map, PAGE, b"unflushed");
    map.grow_capacity(4 << 20).unwrap();
    map.flush().unwrap();
    let mut expected = vec![1u8; 4 * PAGE];
    expected[PAGE..PAGE + 9].copy_from_slice(b"unflushed");
    assert_eq!(read_file(&path), expected);
    map.check_invariants().unwrap();
}

/// Where the kernel offers no `WP_ASYNC` (here: `MKWRITE_WP_ASYNC=0`, set
/// before the process's first mapping, so its service never asks for it),
/// kernel tracking falls back to faults: a write after a flush faults,
/// and still reaches the file.
fn without_wp_async_the_mapping_tracks_by_faults() {
    // SAFETY: set before any thread of this child reads the environment
    // (no mapping, and so no fault service, exists yet).
    unsafe { std::env::set_var("MKWRITE_WP_ASYNC", "0") };
    let path = dir().join("f");
    let map = MappingOptions::new()
        .dirty_tracking(DirtyTracking::Kernel)
        .create(true)
        .open(&path)
        .unwrap();
    assert_eq!(map.dirty_tracking(), DirtyTracking::Faults);
    map.set_len((4 * PAGE) as u64).unwrap();
    store(&map, 0, &[1u8; 4 * PAGE]);
    map.flush().unwrap();
    let before = map.stats().faults_write_protect;
    store(&map, PAGE, b"after");
    assert_eq!(map.stats().faults_write_protect, before + 1, "the write faulted");
    map.flush().unwrap();
    let mut expected = vec![1u8; 4 * PAGE];
    expected[PAGE..PAGE + 5].copy_from_slice(b"after");
    assert_eq!(read_file(&path), expected);
    // Refused settings stay refused: they depend on what was asked for.
    let small = MappingOptions::new()
        .dirty_tracking(DirtyTracking::Kernel)
        .map_store(MemStore::new(1024, 16).unwrap());
    assert!(matches!(small, Err(Error::NotWithKernelDirtyTracking(_))));
}

/// `read(2)` into pages a flush cleaned: the kernel writes them (resolving
/// its own write-protect faults, no fault reaches mkwrite), and the next
/// flush finds them written, as it finds a plain store.
fn a_system_call_writing_into_clean_pages_is_found_by_the_flush(delivery: Delivery) {
    let path = dir().join("f");
    let map = mapping(&path, 4, delivery);
    store(&map, 0, &[3u8; 4 * PAGE]);
    map.flush().unwrap();
    let source = dir().join("source");
    std::fs::write(&source, vec![9u8; 2 * PAGE]).unwrap();
    let file = std::fs::File::open(&source).unwrap();
    let before = faults(&map);
    // SAFETY: the two pages lie inside the mapping, and nothing else reads
    // or writes them while the kernel does.
    let n = unsafe {
        libc::read(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            map.as_ptr().add(PAGE).cast(),
            2 * PAGE,
        )
    };
    assert_eq!(n, (2 * PAGE) as isize, "{}", std::io::Error::last_os_error());
    assert_eq!(faults(&map), before, "no fault reached mkwrite");
    map.flush().unwrap();
    let mut expected = vec![3u8; 4 * PAGE];
    expected[PAGE..3 * PAGE].fill(9);
    assert_eq!(read_file(&path), expected);
    assert_eq!(map.stats().pages_found_written, 2);
    map.check_invariants().unwrap();
}

/// A read fill puts pages in memory before the flags record them, and a
/// thread may write one at once (the kernel lets it); a flush whose scan
/// meets that write must not drop it as a write to an absent page. Rounds
/// of: a reader walking a file (its faults fill pages ahead), a writer
/// writing each page once right behind the fills, and a flusher flushing
/// all along; after the last flush every page holds its write.
fn writes_to_pages_a_read_fill_brings_in_survive_a_racing_flush(delivery: Delivery) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const ROUND_PAGES: usize = 256;
    let began = std::time::Instant::now();
    let mut rounds = 0;
    while began.elapsed() < std::time::Duration::from_secs(3) {
        let path = dir().join(format!("f{rounds}"));
        std::fs::write(&path, vec![1u8; ROUND_PAGES * PAGE]).unwrap();
        let map = MappingOptions::new()
            .delivery(delivery)
            .dirty_tracking(DirtyTracking::Kernel)
            .capacity(1 << 21)
            .open(&path)
            .unwrap();
        let read_to = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for p in 0..ROUND_PAGES {
                    std::hint::black_box(load(&map, p * PAGE, 1));
                    read_to.store(p + 1, Ordering::Release);
                }
            });
            s.spawn(|| {
                // Each page once, as soon as a fill ahead may have brought
                // it in: a few pages past where the reader has got to.
                let mut p = 0;
                while p < ROUND_PAGES {
                    if p < read_to.load(Ordering::Acquire) + 8 {
                        store(&map, p * PAGE + 100, &[2u8]);
                        p += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
                stop.store(true, Ordering::Release);
            });
            s.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    map.flush().unwrap();
                }
            });
        });
        map.flush().unwrap();
        let file = read_file(&path);
        for p in 0..ROUND_PAGES {
            assert_eq!(
                file[p * PAGE + 100],
                2,
                "round {rounds}: the write to page {p} was lost"
            );
        }
        map.check_invariants().unwrap();
        drop(map);
        std::fs::remove_file(&path).unwrap();
        rounds += 1;
    }
    println!("{rounds} rounds");
}
