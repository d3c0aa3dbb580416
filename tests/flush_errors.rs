//! A failed flush returns the error and keeps the data dirty: the next flush
//! writes it (no errseq-style loss).

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mkwrite::{MappingOptions, MemStore, Store};

/// A MemStore whose writes or syncs fail while a switch is on.
struct Failing {
    inner: MemStore,
    fail_write: AtomicBool,
    fail_sync: AtomicBool,
}

impl Store for Failing {
    fn block_size(&self) -> u64 {
        self.inner.block_size()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.fail_write.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.write_at(offset, data)
    }
    fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.inner.allocate(blocks)
    }
    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.inner.deallocate(blocks)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync()
    }
    fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
        self.inner.allocated()
    }
}

fn setup() -> (mkwrite::Mapping, Arc<Failing>) {
    let store = Arc::new(Failing {
        inner: MemStore::new(1024, 1000).unwrap(),
        fail_write: AtomicBool::new(false),
        fail_sync: AtomicBool::new(false),
    });
    store.set_len(64 * 1024).unwrap();
    let map = MappingOptions::new()
        .capacity(64 * 1024)
        .map_store(store.clone())
        .unwrap();
    (map, store)
}

#[test]
fn a_failed_write_keeps_the_data_dirty() {
    let (map, store) = setup();
    map.write(100, &[5; 10_000]).unwrap();
    store.fail_write.store(true, Ordering::SeqCst);
    let err = map.flush().unwrap_err();
    assert!(
        matches!(&err, mkwrite::Error::Io(e) if e.raw_os_error() == Some(libc::EIO)),
        "{err}"
    );
    assert!(map.stats().pages_dirty >= 3, "still dirty after the failure");
    map.check_invariants().unwrap();
    store.fail_write.store(false, Ordering::SeqCst);
    map.flush().unwrap();
    assert!(store.inner.contents()[100..10_100].iter().all(|&b| b == 5));
    assert_eq!(map.stats().pages_dirty, 0);
}

#[test]
fn a_failed_sync_keeps_the_data_dirty() {
    let (map, store) = setup();
    map.write(0, &[6; 8192]).unwrap();
    store.fail_sync.store(true, Ordering::SeqCst);
    assert!(map.flush().is_err());
    assert_eq!(map.stats().pages_dirty, 2, "a failed sync leaves the pages dirty");
    let written = map.stats().bytes_flushed;
    store.fail_sync.store(false, Ordering::SeqCst);
    map.flush().unwrap();
    assert_eq!(
        map.stats().bytes_flushed - written,
        8192,
        "the next flush wrote them again"
    );
    assert!(store.inner.contents()[..8192].iter().all(|&b| b == 6));
}
