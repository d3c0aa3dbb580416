//! DESIGN rules 1, 2, 4, 5 and 6 observed through stats and through the bytes,
//! for every block size (below, equal to and above the page size).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::strace::{self, Syscall};
use common::{BLOCK_SIZES, Mount, pattern, read_file};
use mkwrite::{FileStore, Mapping, MappingOptions, MemStore, Stats, Store};

fn mem_map(block: u64, len: u64) -> (Mapping, Arc<MemStore>) {
    let store = Arc::new(MemStore::new(block, 4096).unwrap());
    store.set_len(len).unwrap();
    let map = MappingOptions::new()
        .capacity(1 << 20)
        .map_store(store.clone())
        .unwrap();
    (map, store)
}

fn poke(map: &Mapping, offset: usize, byte: u8) {
    // SAFETY: offset < capacity; no reference to the mapping's memory is alive.
    unsafe { map.as_ptr().add(offset).write_volatile(byte) }
}

fn peek(map: &Mapping, offset: usize) -> u8 {
    // SAFETY: as in `poke`.
    unsafe { map.as_ptr().add(offset).read_volatile() }
}

fn faults(s: &Stats) -> (u64, u64, u64) {
    (
        s.faults_missing_read,
        s.faults_missing_write,
        s.faults_write_protect,
    )
}

#[test]
fn rule_1_a_read_then_a_write_faults_twice_and_flush_rearms_the_trap() {
    for block in BLOCK_SIZES {
        let (map, _) = mem_map(block, 256 * 1024);
        let page_blocks = (4096 / block).max(1);
        assert_eq!(peek(&map, 100), 0);
        assert_eq!(faults(&map.stats()), (1, 0, 0), "block {block}: read fills");
        assert_eq!(map.stats().allocations, 0, "a read allocates nothing");
        poke(&map, 100, 1);
        assert_eq!(
            faults(&map.stats()),
            (1, 0, 1),
            "block {block}: first write to a clean page traps"
        );
        assert_eq!(map.stats().allocations, page_blocks);
        poke(&map, 200, 2);
        assert_eq!(faults(&map.stats()), (1, 0, 1), "a writable page writes free");
        map.flush().unwrap();
        poke(&map, 300, 3);
        assert_eq!(
            faults(&map.stats()),
            (1, 0, 2),
            "block {block}: after flush the next write traps again"
        );
        assert_eq!(map.stats().allocations, page_blocks, "and needs no new block");
        // Outside the 16-page group the first read filled around itself.
        poke(&map, 128 * 1024, 4);
        assert_eq!(
            faults(&map.stats()),
            (1, 1, 2),
            "a first touch by a write does both in one step"
        );
        map.check_invariants().unwrap();
    }
}

#[test]
fn rule_5_and_6_growing_zeroes_the_old_tail_and_reprotects() {
    for block in BLOCK_SIZES {
        let (map, store) = mem_map(block, 1000);
        map.write(0, &[7; 1000]).unwrap();
        for i in 1000..1100 {
            poke(&map, i, b'p'); // past EOF, inside the EOF page: accepted, as mmap does
        }
        assert_eq!(peek(&map, 1050), b'p');
        map.flush().unwrap();
        assert_eq!(
            store.contents().len(),
            1000,
            "bytes past EOF never reach the store"
        );
        poke(&map, 0, 8); // writable again after the flush's protect
        let before = map.stats();
        map.set_len(5000).unwrap();
        assert_eq!(
            peek(&map, 1050),
            0,
            "block {block}: grown-over bytes read as zero"
        );
        poke(&map, 2000, 9);
        let after = map.stats();
        if block < 4096 {
            assert_eq!(
                after.faults_write_protect,
                before.faults_write_protect + 1,
                "block {block}: re-protected"
            );
            assert!(
                after.allocations > before.allocations,
                "block {block}: new blocks allocated"
            );
        } else {
            assert_eq!(
                after.allocations, before.allocations,
                "block {block}: the page's block was whole already"
            );
        }
        map.flush().unwrap();
        let file = store.contents();
        assert_eq!(file[0], 8);
        assert!(file[1..1000].iter().all(|&b| b == 7));
        assert!(file[1000..2000].iter().all(|&b| b == 0), "block {block}");
        assert_eq!(file[2000], 9);
        map.check_invariants().unwrap();
    }
}

#[test]
fn rule_6_shrinking_drops_pages_zeroes_the_tail_and_frees_blocks() {
    for block in BLOCK_SIZES {
        let (map, store) = mem_map(block, 256 * 1024);
        map.write(0, &pattern(1, 256 * 1024)).unwrap();
        map.flush().unwrap();
        let held = store.held_blocks();
        map.set_len(5000).unwrap();
        assert!(store.held_blocks() < held, "block {block}: blocks freed");
        assert_eq!(peek(&map, 5100), 0, "tail of the new last page zeroed");
        map.set_len(20000).unwrap();
        let mut back = vec![0u8; 20000];
        map.read(0, &mut back).unwrap();
        assert_eq!(&back[..5000], &pattern(1, 5000)[..]);
        assert!(back[5000..].iter().all(|&b| b == 0), "block {block}");
        map.flush().unwrap();
        assert_eq!(store.contents(), back);
        map.check_invariants().unwrap();
    }
}

#[test]
fn punch_hole_zeroes_and_frees_whole_blocks() {
    for block in BLOCK_SIZES {
        let (map, store) = mem_map(block, 256 * 1024);
        let data = pattern(2, 256 * 1024);
        map.write(0, &data).unwrap();
        map.flush().unwrap();
        let held = store.held_blocks();
        let (off, len) = (1000usize, 150_000usize);
        map.punch_hole(off as u64, len as u64).unwrap();
        assert!(store.held_blocks() < held, "block {block}: blocks freed");
        let mut expect = data.clone();
        expect[off..off + len].fill(0);
        let mut back = vec![0u8; expect.len()];
        map.read(0, &mut back).unwrap();
        assert_eq!(back, expect, "block {block}: memory after punch");
        map.flush().unwrap();
        assert_eq!(store.contents(), expect, "block {block}: store after flush");
        map.check_invariants().unwrap();
    }
}

#[test]
fn evicted_pages_refill_from_the_store() {
    for block in BLOCK_SIZES {
        let (map, _) = mem_map(block, 64 * 1024);
        let data = pattern(3, 64 * 1024);
        map.write(0, &data).unwrap();
        map.flush().unwrap();
        map.evict().unwrap();
        assert_eq!(map.stats().pages_resident, 0);
        let mut back = vec![0u8; data.len()];
        map.read(0, &mut back).unwrap();
        assert_eq!(back, data, "block {block}");
    }
}

#[test]
fn flush_never_writes_past_eof_or_unallocated_blocks() {
    // 1 KiB blocks, EOF mid-page: the page is dirty, but only its allocated
    // blocks are written, and the store clips at EOF.
    let (map, store) = mem_map(1024, 1500);
    map.write(0, &[1; 1500]).unwrap();
    for i in 1500..4096 {
        poke(&map, i, 0xEE);
    }
    map.flush().unwrap();
    assert_eq!(store.contents(), vec![1; 1500]);
    assert_eq!(store.held_blocks(), 2);
}

#[test]
fn an_existing_file_opens_with_its_data_and_allocation() {
    let fs = Mount::tmpfs(16 << 20);
    let path = fs.path("existing");
    std::fs::write(&path, pattern(4, 100_000)).unwrap();
    let map = Mapping::open(&path).unwrap();
    assert_eq!(map.len(), 100_000);
    let known = map.stats().blocks_allocated;
    assert!(known >= 24, "allocation learned from SEEK_DATA: {known}");
    let mut back = vec![0u8; 100_000];
    map.read(0, &mut back).unwrap();
    assert_eq!(back, pattern(4, 100_000));
    map.write(50_000, b"hello").unwrap();
    assert_eq!(
        map.stats().allocations,
        0,
        "already allocated blocks are not allocated again"
    );
    map.close().unwrap();
    let mut expect = pattern(4, 100_000);
    expect[50_000..50_005].copy_from_slice(b"hello");
    assert_eq!(read_file(&path), expect);
}

/// Set in the traced child of [`a_file_store_grows_and_syncs_its_directory`]:
/// the directory it works in.
const TRACED_DIR: &str = "MKWRITE_TEST_TRACED_DIR";

/// The store syncs the file's directory in `sync` after a create (so the new
/// name is durable) and again after a resize: a successful `fsync` of the
/// directory after each, seen in the system calls under strace (which must
/// be installed: CI's `.ci/run` installs it).
#[test]
fn a_file_store_grows_and_syncs_its_directory() {
    if let Some(dir) = std::env::var_os(TRACED_DIR) {
        return create_flush_grow_close(&Path::new(&dir).join("new"));
    }
    let fs = Mount::tmpfs(16 << 20);
    let dir = fs.dir.path().canonicalize().unwrap();
    let path = dir.join("new");
    let calls = strace::trace_test(
        "a_file_store_grows_and_syncs_its_directory",
        (TRACED_DIR, dir.as_os_str()),
        &["openat", "ftruncate", "fsync", "fdatasync"],
    );
    let (dir, path) = (dir.to_str().unwrap(), path.to_str().unwrap());
    let ours: Vec<&Syscall> = calls.iter().filter(|c| c.args.contains(dir)).collect();
    let created = ours
        .iter()
        .position(|c| {
            c.name == "openat"
                && c.args.contains(&format!("\"{path}\""))
                && c.args.contains("O_CREAT")
                && c.succeeded()
        })
        .unwrap_or_else(|| panic!("no creating open of {path}: {ours:#?}"));
    let grown = ours
        .iter()
        .position(|c| {
            c.name == "ftruncate" && c.fd_path() == Some(path) && c.arg(1) == Some("10000") && c.succeeded()
        })
        .unwrap_or_else(|| panic!("no ftruncate of {path} to 10000: {ours:#?}"));
    assert!(created < grown, "{ours:#?}");
    let dir_synced = |c: &&Syscall| {
        matches!(c.name.as_str(), "fsync" | "fdatasync") && c.fd_path() == Some(dir) && c.succeeded()
    };
    assert!(
        ours[created..grown].iter().any(dir_synced),
        "the flush after the create did not sync {dir}: {ours:#?}"
    );
    assert!(
        ours[grown..].iter().any(dir_synced),
        "the close after the resize did not sync {dir}: {ours:#?}"
    );
    let file = read_file(Path::new(path));
    assert_eq!(file.len(), 10_000);
    assert!(file[9_000..].iter().all(|&b| b == 6));
}

/// The traced part: create (a new name in the directory), flush, grow (a new
/// size), write, close.
fn create_flush_grow_close(path: &Path) {
    let store = FileStore::create(path).unwrap();
    let map = MappingOptions::new().capacity(1 << 20).map_store(store).unwrap();
    map.flush().unwrap();
    map.set_len(10_000).unwrap();
    map.write(9_000, &[6; 1000]).unwrap();
    map.close().unwrap();
}
