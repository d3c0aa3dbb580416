//! Every bad input gets its typed error, nothing panics, and the mapping stays usable.

mod common;

use std::fs::File;
use std::process::Command;

use common::Mount;
use mkwrite::{Error, FileStore, Mapping, MappingOptions, MemStore, QuotaStore, Store};

fn map_64k() -> Mapping {
    let store = MemStore::new(1024, 1024).unwrap();
    store.set_len(10_000).unwrap();
    MappingOptions::new()
        .capacity(64 * 1024)
        .map_store(store)
        .unwrap()
}

fn out_of_range<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::OutOfRange { .. }))
}

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
fn capacity_below_length_is_refused() {
    let store = MemStore::new(4096, 4).unwrap();
    store.set_len(1 << 20).unwrap();
    let err = MappingOptions::new().capacity(4096).map_store(store).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CapacityBelowLength {
                capacity: 4096,
                len: 1048576
            }
        ),
        "{err}"
    );
}

#[test]
fn ranges_outside_the_file_or_capacity_are_typed_errors() {
    let map = map_64k();
    let cap = map.capacity();
    let e = map.write(cap - 10, &[1; 20]).unwrap_err();
    assert!(matches!(e.error, Error::OutOfRange { .. }) && e.done == 0);
    let e = map.write(u64::MAX - 5, &[1; 20]).unwrap_err();
    assert!(matches!(e.error, Error::OutOfRange { .. }));
    // A page wholly past EOF (10 000): a checked write says so, with the count.
    let e = map.write(8000, &[1; 5000]).unwrap_err();
    assert!(matches!(e.error, Error::OutOfRange { .. }), "{e}");
    assert_eq!(e.done, 4288, "bytes up to the end of the EOF page landed");
    let mut buf = [0u8; 10];
    assert!(matches!(
        map.read(20_000, &mut buf).unwrap_err().error,
        Error::OutOfRange { .. }
    ));
    assert!(out_of_range(map.reserve(9_000, 2_000).map_err(|e| e.error)));
    assert!(out_of_range(map.reserve(u64::MAX, 2).map_err(|e| e.error)));
    assert!(out_of_range(map.set_len(cap + 1)));
    assert!(out_of_range(map.punch_hole(0, cap + 1)));
    assert!(out_of_range(map.punch_hole(u64::MAX, 2)));
    assert!(out_of_range(map.flush_range(cap, 1)));
    assert!(out_of_range(map.flush_range(1, u64::MAX)));
    // Still usable.
    map.write(0, b"still fine").unwrap();
    map.flush().unwrap();
    map.check_invariants().unwrap();
}

#[test]
fn read_only_files_are_refused() {
    let fs = Mount::tmpfs(1 << 20);
    let path = fs.path("ro");
    std::fs::write(&path, b"data").unwrap();
    let err = FileStore::from_file(File::open(&path).unwrap(), Some(path.clone())).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    let status = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(fs.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
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
fn missing_files_are_io_errors() {
    let err = Mapping::open("/nonexistent/mkwrite/file").unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
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
