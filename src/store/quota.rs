//! A wrapper that caps how many blocks a store may hold.

use std::io;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fixedbitset::FixedBitSet;

use super::{LiveBytes, Store};

/// Caps the blocks `inner` may hold at a limit; an allocation past it fails
/// with `EDQUOT`, as a filesystem quota does.
///
/// ```
/// use mkwrite::{Error, MappingOptions, MemStore, QuotaStore, Store};
///
/// let store = std::sync::Arc::new(QuotaStore::new(MemStore::new(4096, 1024)?, 2)?);
/// store.set_len(1 << 20)?;
/// let map = MappingOptions::new().map_store(store.clone())?;
/// map.write(0, &[1; 8192])?;
/// let err = map.write(8192, b"x").unwrap_err();
/// assert!(matches!(err.error, Error::Quota(_))); // not NoSpace: the disk has room
/// store.set_limit(3);
/// map.write(8192, b"x")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QuotaStore<S> {
    inner: S,
    limit: AtomicU64,
    held: Mutex<FixedBitSet>,
}

impl<S: Store> QuotaStore<S> {
    /// Wraps `inner`, counting the blocks it already holds against `limit_blocks`.
    ///
    /// ```
    /// use mkwrite::{MemStore, QuotaStore, Store};
    /// let disk = MemStore::new(4096, 64)?;
    /// disk.set_len(1 << 20)?;
    /// disk.allocate(0..5)?;
    /// let store = QuotaStore::new(disk, 4)?;
    /// assert_eq!(store.held_blocks(), 5); // over the limit already: no allocation fits
    /// assert!(store.allocate(10..11).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Those of `inner`'s [`allocated`](Store::allocated).
    pub fn new(inner: S, limit_blocks: u64) -> io::Result<QuotaStore<S>> {
        let mut held = FixedBitSet::new();
        for r in inner.allocated()? {
            held.grow(r.end as usize);
            held.insert_range(r.start as usize..r.end as usize);
        }
        Ok(QuotaStore {
            inner,
            limit: AtomicU64::new(limit_blocks),
            held: Mutex::new(held),
        })
    }

    /// Changes the limit (raising it is how a quota is "freed"). Faults
    /// waiting for space learn of it by
    /// [`Mapping::notify_space_freed`](crate::Mapping::notify_space_freed).
    ///
    /// ```
    /// use mkwrite::{MemStore, QuotaStore, Store};
    /// let store = QuotaStore::new(MemStore::new(4096, 64)?, 0)?;
    /// store.set_len(1 << 20)?;
    /// assert!(store.allocate(0..1).is_err());
    /// store.set_limit(1);
    /// store.allocate(0..1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_limit(&self, limit_blocks: u64) {
        self.limit.store(limit_blocks, Ordering::SeqCst);
    }

    /// Blocks counted against the limit.
    ///
    /// ```
    /// use mkwrite::{MemStore, QuotaStore, Store};
    /// let store = QuotaStore::new(MemStore::new(4096, 64)?, 8)?;
    /// store.set_len(1 << 20)?;
    /// store.allocate(0..3)?;
    /// store.deallocate(0..1)?;
    /// assert_eq!(store.held_blocks(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn held_blocks(&self) -> u64 {
        self.lock().count_ones(..) as u64
    }

    /// The wrapped store.
    ///
    /// ```
    /// use mkwrite::{MemStore, QuotaStore, Store};
    /// let store = QuotaStore::new(MemStore::new(4096, 64)?, 0)?;
    /// store.set_len(1 << 20)?;
    /// assert!(store.allocate(0..1).is_err());
    /// assert_eq!(store.inner().held_blocks(), 0); // refused before it got there
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FixedBitSet> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, blocks: Range<u64>) {
        let mut held = self.lock();
        let end = (blocks.end as usize).min(held.len());
        if (blocks.start as usize) < end {
            held.remove_range(blocks.start as usize..end);
        }
    }
}

impl<S: Store> Store for QuotaStore<S> {
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
        // Holding the count across the inner call keeps two allocators from
        // both squeezing under the limit.
        let mut held = self.lock();
        held.grow(blocks.end as usize);
        let range = blocks.start as usize..blocks.end as usize;
        let new = range.len() - held.count_ones(range.clone());
        if (held.count_ones(..) + new) as u64 > self.limit.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EDQUOT));
        }
        self.inner.allocate(blocks)?;
        held.insert_range(range);
        Ok(())
    }

    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.inner.deallocate(blocks.clone())?;
        self.release(blocks);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        self.release(len.div_ceil(self.block_size())..u64::MAX);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
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
        self.inner.write_live(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn counts_blocks_and_says_edquot() {
        let q = QuotaStore::new(MemStore::new(1024, 100).unwrap(), 3).unwrap();
        q.set_len(100 * 1024).unwrap();
        q.allocate(0..3).unwrap();
        let err = q.allocate(3..4).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EDQUOT));
        assert_eq!(q.inner().held_blocks(), 3, "nothing reached the inner store");
        q.allocate(1..3).unwrap();
        q.deallocate(0..1).unwrap();
        q.allocate(10..11).unwrap();
        q.set_len(5 * 1024).unwrap();
        assert_eq!(q.held_blocks(), 2);
        q.set_limit(10);
        q.allocate(3..5).unwrap();
        assert_eq!(q.held_blocks(), 4);
    }
}
