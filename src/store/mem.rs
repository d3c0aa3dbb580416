//! An in-memory store that holds at most a fixed number of blocks.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::Mutex;

use super::{Store, runs};
use crate::error::Result;
use crate::geometry::check_block_size;

/// A store in memory with room for `capacity` blocks: a disk that fills up.
/// For tests, examples and scratch files.
///
/// ```
/// use mkwrite::{Error, MappingOptions, MemStore, Store};
///
/// let store = std::sync::Arc::new(MemStore::new(1024, 8)?); // 8 KiB of room
/// store.set_len(1 << 20)?; // a 1 MiB file, sparse
/// let map = MappingOptions::new().map_store(store.clone())?;
/// map.write(0, &[1; 8192])?;
/// assert!(matches!(map.write(8192, b"x").unwrap_err().error, Error::NoSpace(_)));
/// map.flush()?;
/// assert_eq!(store.held_blocks(), 8);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MemStore {
    block: u64,
    capacity: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    len: u64,
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl MemStore {
    /// An empty store of `block_size` blocks with room for `capacity_blocks` of them.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// let store = MemStore::new(4096, 256)?; // 1 MiB of room
    /// assert_eq!((store.block_size(), store.len()), (4096, 0));
    /// assert!(MemStore::new(3000, 256).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBlockSize`](crate::Error::InvalidBlockSize) unless
    /// `block_size` is a power of two from 512 B to 1 MiB.
    pub fn new(block_size: u64, capacity_blocks: u64) -> Result<MemStore> {
        Ok(MemStore {
            block: check_block_size(block_size)?,
            capacity: capacity_blocks,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Blocks currently held.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// let store = MemStore::new(4096, 8)?;
    /// store.set_len(1 << 20)?;
    /// store.allocate(0..3)?;
    /// assert_eq!(store.held_blocks(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn held_blocks(&self) -> u64 {
        self.lock().blocks.len() as u64
    }

    /// The file's bytes `[0, len)`, holes as zeros.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// let store = MemStore::new(512, 8)?;
    /// store.set_len(1024)?;
    /// store.allocate(1..2)?;
    /// store.write_at(512, b"data")?;
    /// let bytes = store.contents();
    /// assert_eq!((bytes.len(), &bytes[512..516], bytes[0]), (1024, &b"data"[..], 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn contents(&self) -> Vec<u8> {
        let mut out = vec![0; self.len() as usize];
        self.read_at(0, &mut out).expect("memory reads cannot fail");
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only whole-block updates behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f(block, block_offset, range_in_buf)` for each block piece of `[offset, offset+len)`.
    fn pieces(&self, offset: u64, len: usize, mut f: impl FnMut(u64, usize, Range<usize>)) {
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let block = pos / self.block;
            let in_block = (pos % self.block) as usize;
            let n = (self.block as usize - in_block).min(len - done);
            f(block, in_block, done..done + n);
            done += n;
        }
    }
}

impl Store for MemStore {
    fn block_size(&self) -> u64 {
        self.block
    }

    fn len(&self) -> u64 {
        self.lock().len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let inner = self.lock();
        buf.fill(0);
        let visible = super::below_eof(inner.len, offset, buf.len());
        self.pieces(offset, visible, |block, at, range| {
            if let Some(data) = inner.blocks.get(&block) {
                let n = range.len();
                buf[range].copy_from_slice(&data[at..at + n]);
            }
        });
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut inner = self.lock();
        let visible = super::below_eof(inner.len, offset, data.len());
        let mut result = Ok(());
        self.pieces(offset, visible, |block, at, range| {
            match inner.blocks.get_mut(&block) {
                Some(dst) => dst[at..at + range.len()].copy_from_slice(&data[range]),
                None => result = Err(io::Error::other(format!("write to unallocated block {block}"))),
            }
        });
        result
    }

    fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
        let mut inner = self.lock();
        let new = blocks.clone().filter(|b| !inner.blocks.contains_key(b)).count() as u64;
        if inner.blocks.len() as u64 + new > self.capacity {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        for b in blocks {
            inner
                .blocks
                .entry(b)
                .or_insert_with(|| vec![0; self.block as usize].into_boxed_slice());
        }
        Ok(())
    }

    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        let mut inner = self.lock();
        for b in blocks {
            inner.blocks.remove(&b);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut inner = self.lock();
        if len < inner.len {
            let kept = len.div_ceil(self.block);
            inner.blocks.retain(|&b, _| b < kept);
            if !len.is_multiple_of(self.block)
                && let Some(last) = inner.blocks.get_mut(&(len / self.block))
            {
                last[(len % self.block) as usize..].fill(0);
            }
        }
        inner.len = len;
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
        Ok(runs(self.lock().blocks.keys().copied()))
    }

    /// Only held blocks have bytes; a new one starts zeroed.
    fn unallocated_reads_zero(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_up_and_frees() {
        let s = MemStore::new(1024, 2).unwrap();
        s.set_len(10_000).unwrap();
        s.allocate(0..2).unwrap();
        let err = s.allocate(2..3).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        s.allocate(1..2).unwrap(); // already held: no new space needed
        s.deallocate(0..1).unwrap();
        s.allocate(5..6).unwrap();
        assert_eq!(s.allocated().unwrap(), vec![1..2, 5..6]);
    }

    #[test]
    fn writes_stop_at_eof_and_shrink_zeroes_the_tail() {
        let s = MemStore::new(512, 8).unwrap();
        s.set_len(700).unwrap();
        s.allocate(0..2).unwrap();
        s.write_at(0, &[7u8; 1024]).unwrap();
        s.set_len(1024).unwrap();
        assert_eq!(&s.contents()[690..710], &[[7u8; 10], [0u8; 10]].concat()[..]);
        s.set_len(600).unwrap();
        s.set_len(1024).unwrap();
        assert!(s.contents()[600..].iter().all(|&b| b == 0));
        assert_eq!(s.contents()[599], 7);
    }

    #[test]
    fn writing_an_unallocated_block_is_an_error() {
        let s = MemStore::new(512, 8).unwrap();
        s.set_len(4096).unwrap();
        assert!(s.write_at(0, &[1]).is_err());
    }
}
