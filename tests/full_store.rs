//! A write into a full store fails at the fault, with the count of bytes that
//! landed, and every byte accepted before it reaches the file after flush:
//! on a size-limited tmpfs, on a 1 KiB-block ext4 loop mount, and under the
//! quota wrapper.

mod common;

use std::path::Path;

use common::{BLOCK_SIZES, Mount, pattern, read_file};
use mkwrite::{Error, FileStore, Mapping, MappingOptions, MemStore, QuotaStore, Store};

const CHUNK: usize = 48 * 1024 + 100; // not aligned to pages or blocks

/// Writes the pattern in chunks until the store is full; returns the bytes accepted.
fn fill_until_full(map: &Mapping, expect: fn(&Error) -> bool) -> u64 {
    let data = pattern(7, map.len() as usize);
    let mut offset = 0usize;
    loop {
        let end = (offset + CHUNK).min(data.len());
        assert!(offset < end, "the store never filled up");
        match map.write(offset as u64, &data[offset..end]) {
            Ok(()) => offset = end,
            Err(e) => {
                assert!(expect(&e.error), "unexpected error: {e}");
                return (offset + e.done) as u64;
            }
        }
    }
}

/// After a failure the mapping stays usable, flush succeeds, and the file holds
/// exactly the accepted bytes followed by zeros.
fn check_accepted(map: Mapping, accepted: u64, path: Option<&Path>, store_bytes: impl Fn() -> Vec<u8>) {
    let unit = map.page_size().max(map.block_size());
    assert_eq!(accepted % unit, 0, "a write fails at a whole page/block boundary");
    assert!(accepted > 0);
    // Rewriting what was accepted needs no new blocks, so it still works.
    map.write(0, &pattern(7, 4096)).unwrap();
    map.flush().unwrap();
    let stats = map.stats();
    assert!(stats.allocation_failures >= 1);
    map.check_invariants().unwrap();
    map.close().unwrap();
    let file = match path {
        Some(p) => read_file(p),
        None => store_bytes(),
    };
    let expected = pattern(7, file.len());
    let accepted = accepted as usize;
    assert_eq!(
        &file[..accepted],
        &expected[..accepted],
        "accepted bytes must all be in the file"
    );
    assert!(
        file[accepted..].iter().all(|&b| b == 0),
        "nothing past the failure may reach the file"
    );
}

fn is_nospace(e: &Error) -> bool {
    matches!(e, Error::NoSpace(_)) && e.kind() == std::io::ErrorKind::StorageFull
}

fn is_quota(e: &Error) -> bool {
    matches!(e, Error::Quota(_)) && e.kind() == std::io::ErrorKind::QuotaExceeded
}

#[test]
fn tmpfs_fills_up_at_the_fault_for_every_block_size() {
    for block in BLOCK_SIZES {
        let fs = Mount::tmpfs(1 << 20);
        let path = fs.path("data");
        let store = FileStore::create(&path).unwrap().with_block_size(block).unwrap();
        store.set_len(4 << 20).unwrap();
        let map = MappingOptions::new().capacity(8 << 20).map_store(store).unwrap();
        let accepted = fill_until_full(&map, is_nospace);
        assert!(
            accepted <= 1 << 20,
            "block {block}: tmpfs holds at most 1 MiB, accepted {accepted}"
        );
        check_accepted(map, accepted, Some(&path), Vec::new);
    }
}

#[test]
fn ext4_1k_fills_up_at_the_fault() {
    let fs = Mount::ext4(8 << 20, 1024);
    let path = fs.path("data");
    let store = FileStore::create(&path).unwrap();
    assert_eq!(store.block_size(), 1024);
    store.set_len(16 << 20).unwrap();
    let map = MappingOptions::new().capacity(16 << 20).map_store(store).unwrap();
    let accepted = fill_until_full(&map, is_nospace);
    assert!(accepted > 4 << 20 && accepted < 8 << 20, "accepted {accepted}");
    check_accepted(map, accepted, Some(&path), Vec::new);
}

#[test]
fn ext4_1k_small_blocks_under_a_page() {
    // 512 B logical blocks on a 1 KiB-block ext4: allocation rounds up, ENOSPC stays real.
    let fs = Mount::ext4(4 << 20, 1024);
    let path = fs.path("data");
    let store = FileStore::create(&path).unwrap().with_block_size(512).unwrap();
    store.set_len(8 << 20).unwrap();
    let map = MappingOptions::new().capacity(8 << 20).map_store(store).unwrap();
    let accepted = fill_until_full(&map, is_nospace);
    check_accepted(map, accepted, Some(&path), Vec::new);
}

#[test]
fn quota_is_its_own_error_for_every_block_size() {
    let fs = Mount::tmpfs(64 << 20);
    for block in BLOCK_SIZES {
        let path = fs.path(&format!("quota{block}"));
        let store = FileStore::create(&path).unwrap().with_block_size(block).unwrap();
        store.set_len(4 << 20).unwrap();
        let limit = 16; // 16 blocks: a whole number of pages at every block size
        let map = MappingOptions::new()
            .capacity(4 << 20)
            .map_store(QuotaStore::new(store, limit).unwrap())
            .unwrap();
        let accepted = fill_until_full(&map, is_quota);
        assert_eq!(accepted, limit * block, "block {block}");
        check_accepted(map, accepted, Some(&path), Vec::new);
    }
}

#[test]
fn mem_store_fills_up_for_every_block_size() {
    for block in BLOCK_SIZES {
        let store = std::sync::Arc::new(MemStore::new(block, (256 << 10) / block).unwrap());
        store.set_len(1 << 20).unwrap();
        let map = MappingOptions::new()
            .capacity(1 << 20)
            .map_store(store.clone())
            .unwrap();
        let accepted = fill_until_full(&map, is_nospace);
        assert_eq!(accepted, 256 << 10, "block {block}");
        check_accepted(map, accepted, None, || store.contents());
    }
}
