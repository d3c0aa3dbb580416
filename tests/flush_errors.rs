//! A failed flush returns the error and keeps the data dirty: the next flush
//! writes it (no errseq-style loss).

mod common;

use std::sync::Arc;

use common::injector::{Fault, Injector};
use mkwrite::{MappingOptions, MemStore, Store};

/// A 64 KiB mapping over a MemStore whose first call of `fault`'s kind fails.
fn setup(fault: Fault) -> (mkwrite::Mapping, Arc<Injector<MemStore>>) {
    let store = Arc::new(Injector::new(
        MemStore::new(1024, 1000).unwrap(),
        Some((fault, 0)),
    ));
    store.set_len(64 * 1024).unwrap();
    let map = MappingOptions::new()
        .capacity(64 * 1024)
        .map_store(store.clone())
        .unwrap();
    (map, store)
}

#[test]
fn a_failed_write_keeps_the_data_dirty() {
    let (map, store) = setup(Fault::WriteEio);
    map.write(100, &[5; 10_000]).unwrap();
    let err = map.flush().unwrap_err();
    assert!(
        matches!(&err, mkwrite::Error::Io(e) if e.raw_os_error() == Some(libc::EIO)),
        "{err}"
    );
    assert!(map.stats().pages_dirty >= 3, "still dirty after the failure");
    map.check_invariants().unwrap();
    // The fault has cleared.
    map.flush().unwrap();
    assert!(store.inner.contents()[100..10_100].iter().all(|&b| b == 5));
    assert_eq!(map.stats().pages_dirty, 0);
}

#[test]
fn a_failed_sync_keeps_the_data_dirty() {
    let (map, store) = setup(Fault::SyncEio);
    map.write(0, &[6; 8192]).unwrap();
    assert!(map.flush().is_err());
    assert_eq!(map.stats().pages_dirty, 2, "a failed sync leaves the pages dirty");
    let written = map.stats().bytes_flushed;
    map.flush().unwrap();
    assert_eq!(
        map.stats().bytes_flushed - written,
        8192,
        "the next flush wrote them again"
    );
    assert!(store.inner.contents()[..8192].iter().all(|&b| b == 6));
}
