//! Bad stores and files get their typed errors (the table of bad call
//! arguments is in `hostile.rs`).

mod common;

use std::fs::File;

use common::Mount;
use mkwrite::{Error, FileStore, Mapping, MappingOptions, MemStore, QuotaStore, Store};

#[test]
fn block_sizes_must_be_powers_of_two_in_range() {
    for bad in [0, 100, 511, 1000, 3072, 2 << 20] {
        assert!(matches!(MemStore::new(bad, 10), Err(Error::InvalidBlockSize(b)) if b == bad));
    }
    let fs = Mount::tmpfs(1 << 20);
    let store = FileStore::create(fs.path("f")).unwrap();
    assert!(matches!(
        store.with_block_size(1536),
        Err(Error::InvalidBlockSize(1536))
    ));
    let store = MemStore::new(1024, 4).unwrap();
    let err = MappingOptions::new()
        .block_size(12345)
        .map_store(store)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidBlockSize(12345)));
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn read_only_files_are_refused() {
    let fs = Mount::tmpfs(1 << 20);
    let path = fs.path("ro");
    std::fs::write(&path, b"data").unwrap();
    let err = FileStore::from_file(File::open(&path).unwrap(), Some(path.clone())).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    fs.remount_read_only();
    let err = Mapping::open(&path).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    let err = MappingOptions::new()
        .create(true)
        .open(fs.path("new"))
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
}

#[test]
fn missing_files_are_open_errors_that_name_the_file() {
    let err = Mapping::open("/nonexistent/mkwrite/file").unwrap_err();
    assert!(
        matches!(&err, Error::Open { path, source } if source.kind() == std::io::ErrorKind::NotFound
            && path == std::path::Path::new("/nonexistent/mkwrite/file")),
        "{err}"
    );
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("/nonexistent/mkwrite/file"), "{err}");
}

#[test]
fn read_only_errors_show_the_path_plainly() {
    let fs = Mount::tmpfs(1 << 20);
    let path = fs.path("ro");
    std::fs::write(&path, b"x").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let err = mkwrite::FileStore::from_file(file, Some(path.clone())).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{} is read-only", path.display())),
        "{text}"
    );
    assert!(!text.contains("Some("), "{text}");
}

#[test]
fn a_capacity_the_address_space_cannot_hold_says_so() {
    let store = MemStore::new(4096, 1).unwrap();
    // 2^62 bytes: a power of two so rounding cannot overflow, far beyond the
    // 47-bit user address space.
    let err = MappingOptions::new()
        .capacity(1 << 62)
        .map_store(store)
        .unwrap_err();
    assert!(
        matches!(err, Error::CapacityUnavailable { capacity, .. } if capacity == 1 << 62),
        "{err}"
    );
    assert!(err.to_string().contains("smaller capacity"), "{err}");
    let store = MemStore::new(4096, 1).unwrap();
    let err = MappingOptions::new()
        .capacity(u64::MAX)
        .map_store(store)
        .unwrap_err();
    assert!(
        matches!(err, Error::CapacityUnavailable { .. }),
        "rounding up overflows: {err}"
    );
}

#[test]
fn set_len_beyond_capacity_says_to_raise_the_capacity() {
    let store = MemStore::new(4096, 4).unwrap();
    let map = MappingOptions::new().capacity(16384).map_store(store).unwrap();
    let err = map.set_len(1 << 20).unwrap_err();
    assert!(
        matches!(err, Error::BeyondCapacity { len, capacity } if len == 1 << 20 && capacity == 16384),
        "{err}"
    );
    assert!(err.to_string().contains("larger capacity"), "{err}");
    assert!(!err.to_string().contains("offset"), "{err}");
}

#[test]
fn full_store_errors_map_to_their_io_kinds() {
    let quota = QuotaStore::new(MemStore::new(1024, 100).unwrap(), 0).unwrap();
    quota.set_len(4096).unwrap();
    let map = MappingOptions::new().capacity(4096).map_store(quota).unwrap();
    let e = map.write(0, b"x").unwrap_err();
    assert_eq!(e.error.kind(), std::io::ErrorKind::QuotaExceeded);
    let io: std::io::Error = e.error.into();
    assert_eq!(io.kind(), std::io::ErrorKind::QuotaExceeded);
    let e = map.reserve(0, 4096).unwrap_err();
    assert!(matches!(e.error, Error::Quota(_)) && e.done == 0);
}
