//! A write into a full store fails at the fault, with the count of bytes that
//! landed, and every byte accepted before it reaches the file after flush:
//! on a size-limited tmpfs, on a 1 KiB-block ext4 loop mount, and under the
//! quota wrapper.

mod common;

use common::{BLOCK_SIZES, Mount, check_accepted, fill_until_full, is_nospace, is_quota, read_file};
use mkwrite::{FileStore, MappingOptions, MemStore, QuotaStore, Store};

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
        check_accepted(map, accepted, &format!("tmpfs, block {block}"), || {
            read_file(&path)
        });
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
    check_accepted(map, accepted, "ext4 1 KiB", || read_file(&path));
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
    check_accepted(map, accepted, "ext4 1 KiB, block 512", || read_file(&path));
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
        check_accepted(map, accepted, &format!("quota, block {block}"), || {
            read_file(&path)
        });
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
        check_accepted(map, accepted, &format!("MemStore, block {block}"), || {
            store.contents()
        });
    }
}
