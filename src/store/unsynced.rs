//! A store that remembers whether anything changed since its last
//! successful sync, so that a flush with nothing to make durable costs no
//! `fdatasync` (or NBD flush): ~40 µs here per clean mapping flushed or
//! closed. Every mapping's store is wrapped in it.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{LiveBytes, SignalSafe, Store};

pub(crate) struct Unsynced<S> {
    inner: S,
    /// Something changed (written, allocated, freed, resized) since the
    /// last sync that succeeded. Starts set: what came before is unknown.
    changed: AtomicBool,
}

impl<S: Store> Unsynced<S> {
    pub fn new(inner: S) -> Unsynced<S> {
        Unsynced {
            inner,
            changed: AtomicBool::new(true),
        }
    }

    /// Async-signal-safe: one atomic store.
    fn changing(&self) {
        self.changed.store(true, Ordering::SeqCst);
    }
}

impl<S: Store> Store for Unsynced<S> {
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
        self.changing();
        self.inner.write_at(offset, data)
    }
    fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.changing();
        self.inner.allocate(blocks)
    }
    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.changing();
        self.inner.deallocate(blocks)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.changing();
        self.inner.set_len(len)
    }
    /// Syncs only if something changed since the last sync that succeeded.
    /// A change racing with the sync marks the store changed again first,
    /// so the next sync covers it.
    fn sync(&self) -> io::Result<()> {
        if !self.changed.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let synced = self.inner.sync();
        if synced.is_err() {
            self.changing();
        }
        synced
    }
    fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
        self.inner.allocated()
    }
    fn unallocated_reads_zero(&self) -> bool {
        self.inner.unallocated_reads_zero()
    }
    fn writes_from_mapping(&self) -> bool {
        self.inner.writes_from_mapping()
    }
    fn write_live(&self, offset: u64, data: LiveBytes<'_>) -> io::Result<()> {
        self.changing();
        self.inner.write_live(offset, data)
    }
    fn signal_safe(&self) -> Option<&dyn SignalSafe> {
        self.inner.signal_safe().map(|_| self as &dyn SignalSafe)
    }
}

// SAFETY: each call forwards to the inner store's signal-safe calls (which
// exist: `signal_safe` hands this out only then), adding one atomic store.
#[allow(unsafe_code)]
unsafe impl<S: Store> SignalSafe for Unsynced<S> {
    fn read_at_in_signal(&self, offset: u64, buf: &mut [u8]) -> Result<(), i32> {
        match self.inner.signal_safe() {
            Some(inner) => inner.read_at_in_signal(offset, buf),
            None => Err(libc::ENOTSUP),
        }
    }

    fn allocate_in_signal(&self, blocks: Range<u64>) -> Result<(), i32> {
        self.changing();
        match self.inner.signal_safe() {
            Some(inner) => inner.allocate_in_signal(blocks),
            None => Err(libc::ENOTSUP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;
    use std::sync::atomic::AtomicUsize;

    /// Counts syncs, fails the ones asked to.
    struct Counting {
        inner: MemStore,
        syncs: AtomicUsize,
        fail: AtomicBool,
    }

    impl Store for Counting {
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
            self.syncs.fetch_add(1, Ordering::SeqCst);
            match self.fail.load(Ordering::SeqCst) {
                true => Err(io::Error::from_raw_os_error(libc::EIO)),
                false => Ok(()),
            }
        }
        fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
            self.inner.allocated()
        }
    }

    #[test]
    fn a_sync_with_nothing_changed_since_the_last_one_is_skipped() {
        let store = Unsynced::new(Counting {
            inner: MemStore::new(4096, 4).unwrap(),
            syncs: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
        });
        let syncs = || store.inner.syncs.load(Ordering::SeqCst);
        store.sync().unwrap();
        assert_eq!(syncs(), 1, "what came before opening is unknown: synced");
        store.sync().unwrap();
        assert_eq!(syncs(), 1, "nothing changed");
        let changes: [&dyn Fn(); 4] = [
            &|| store.set_len(4096).unwrap(),
            &|| store.allocate(0..1).unwrap(),
            &|| store.write_at(0, b"x").unwrap(),
            &|| store.deallocate(0..1).unwrap(),
        ];
        for (i, change) in changes.iter().enumerate() {
            change();
            store.sync().unwrap();
            assert_eq!(syncs(), i + 2, "change {i} is synced");
        }
        store.allocate(0..1).unwrap();
        store.write_at(0, b"y").unwrap();
        store.inner.fail.store(true, Ordering::SeqCst);
        assert!(store.sync().is_err());
        store.inner.fail.store(false, Ordering::SeqCst);
        store.sync().unwrap();
        assert_eq!(syncs(), 7, "a failed sync is tried again");
        store.sync().unwrap();
        assert_eq!(syncs(), 7);
    }
}
