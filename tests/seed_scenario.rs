//! DESIGN.md section 1: the scenario of seed 000 (Jan Kara's blocksize < pagesize
//! case), on mkwrite and on the real kernel, with the same bytes expected.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{BLOCK_SIZES, Mount, read_file};
use mkwrite::{FileStore, Mapping, MappingOptions, MemStore, Store};

/// set_len(0); write 1024 'x' at 0; map[0]='a'; map[1024..1124]='y' (past EOF,
/// inside the page); set_len(10000); map[2048..2058]='z'; flush.
fn scenario_on_mkwrite(map: Mapping) {
    map.set_len(0).unwrap();
    map.set_len(1024).unwrap();
    map.write(0, &[b'x'; 1024]).unwrap();
    map.flush().unwrap();
    let ptr = map.as_ptr();
    // SAFETY-free writes through the raw pointer: the real fault path.
    raw_write(ptr, 0, b"a");
    raw_write(ptr, 1024, &[b'y'; 100]);
    map.set_len(10000).unwrap();
    raw_write(ptr, 2048, &[b'z'; 10]);
    map.flush().unwrap();
    let mut head = [0u8; 2058];
    map.read(0, &mut head).unwrap();
    check_bytes(&head);
    map.check_invariants().unwrap();
}

fn raw_write(ptr: *mut u8, offset: usize, data: &[u8]) {
    // SAFETY: `ptr` is the mapping's base, valid for its capacity (1 MiB or
    // more here), and no Rust reference to these bytes exists.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.add(offset), data.len()) };
}

fn check_bytes(file: &[u8]) {
    assert_eq!(file[0], b'a');
    assert!(file[1..1024].iter().all(|&b| b == b'x'));
    assert!(
        file[1024..1124].iter().all(|&b| b == 0),
        "the 'y's past the old EOF must be zeroed"
    );
    assert!(file[1124..2048].iter().all(|&b| b == 0));
    assert!(file[2048..2058].iter().all(|&b| b == b'z'));
}

/// The same scenario through the kernel's own MAP_SHARED mapping.
fn scenario_on_kernel(path: &Path) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.write_all_at(&[b'x'; 1024], 0).unwrap();
    // SAFETY: the file is private to this test and is not truncated below 4096
    // bytes while mapped except by this very scenario, which only touches the
    // first page (always within EOF or within the EOF page).
    let mut map = unsafe { memmap2::MmapOptions::new().len(4096).map_mut(&file).unwrap() };
    map[0] = b'a';
    map[1024..1124].fill(b'y');
    file.set_len(10000).unwrap();
    map[2048..2058].fill(b'z');
    map.flush().unwrap();
    file.sync_all().unwrap();
}

#[test]
fn seed_000_on_ext4_1k_matches_the_kernel() {
    let fs = Mount::ext4(16 << 20, 1024);

    let ours = fs.path("mkwrite.dat");
    let map = MappingOptions::new()
        .create(true)
        .capacity(1 << 20)
        .open(&ours)
        .unwrap();
    assert_eq!(
        map.block_size(),
        1024,
        "FileStore takes the filesystem's block size"
    );
    scenario_on_mkwrite(map);

    let theirs = fs.path("kernel.dat");
    scenario_on_kernel(&theirs);

    let ours = read_file(&ours);
    let theirs = read_file(&theirs);
    assert_eq!(ours.len(), 10000);
    check_bytes(&ours);
    check_bytes(&theirs);
    assert_eq!(
        ours, theirs,
        "mkwrite and the kernel (ext4, 1 KiB blocks) disagree"
    );
}

#[test]
fn seed_000_on_every_block_size() {
    for block in BLOCK_SIZES {
        let store = MemStore::new(block, 1024).unwrap();
        let shared = std::sync::Arc::new(store);
        let map = MappingOptions::new()
            .capacity(1 << 20)
            .map_store(shared.clone())
            .unwrap();
        scenario_on_mkwrite(map);
        let bytes = shared.contents();
        assert_eq!(bytes.len(), 10000, "block {block}");
        check_bytes(&bytes);
    }
}

#[test]
fn seed_000_on_a_file_store_with_every_block_size() {
    let fs = Mount::tmpfs(64 << 20);
    for block in BLOCK_SIZES {
        let path = fs.path(&format!("b{block}.dat"));
        let store = FileStore::create(&path).unwrap().with_block_size(block).unwrap();
        assert_eq!(store.block_size(), block);
        let map = MappingOptions::new().capacity(1 << 20).map_store(store).unwrap();
        scenario_on_mkwrite(map);
        let bytes = read_file(&path);
        check_bytes(&bytes);
    }
}
