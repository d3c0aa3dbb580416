//! Block and page arithmetic: which blocks lie under a page, which pages under a range.

use std::ops::Range;

use crate::error::{Error, Result, out_of_range};

/// Smallest and largest block sizes a store may have.
///
/// ```
/// use mkwrite::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, check_block_size};
/// assert!(check_block_size(MIN_BLOCK_SIZE).is_ok() && check_block_size(MIN_BLOCK_SIZE / 2).is_err());
/// assert!(check_block_size(MAX_BLOCK_SIZE).is_ok() && check_block_size(MAX_BLOCK_SIZE * 2).is_err());
/// ```
pub const MIN_BLOCK_SIZE: u64 = 512;
/// The largest block size a store may have (1 MiB); see [`MIN_BLOCK_SIZE`].
///
/// ```
/// # use mkwrite::{MAX_BLOCK_SIZE, MemStore};
/// assert!(MemStore::new(MAX_BLOCK_SIZE, 4).is_ok());
/// assert!(MemStore::new(MAX_BLOCK_SIZE * 2, 4).is_err());
/// ```
pub const MAX_BLOCK_SIZE: u64 = 1 << 20;

/// Checks a block size: a power of two from 512 B to 1 MiB. A [`Store`](crate::Store)
/// implementation may call it on the size it is given.
///
/// ```
/// use mkwrite::{Error, check_block_size};
/// assert_eq!(check_block_size(4096)?, 4096);
/// assert!(matches!(check_block_size(3000), Err(Error::InvalidBlockSize(3000))));
/// # Ok::<(), Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidBlockSize`] for any other size.
pub fn check_block_size(size: u64) -> Result<u64> {
    if size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
        Ok(size)
    } else {
        Err(Error::InvalidBlockSize(size))
    }
}

/// Page size, block size and capacity of one mapping; all offsets are bytes
/// from the start of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub page: u64,
    pub block: u64,
    /// Bytes reserved; a multiple of both the page and the block size.
    pub capacity: u64,
}

impl Geometry {
    /// Rounds `capacity` up to whole pages and whole blocks; `None` if that
    /// does not fit in a `u64`.
    pub fn new(page: u64, block: u64, capacity: u64) -> Option<Geometry> {
        let unit = page.max(block);
        Some(Geometry {
            page,
            block,
            capacity: capacity.div_ceil(unit).checked_mul(unit)?,
        })
    }

    pub fn pages(&self) -> u64 {
        self.capacity / self.page
    }

    pub fn blocks(&self) -> u64 {
        self.capacity / self.block
    }

    pub fn page_of(&self, offset: u64) -> u64 {
        offset / self.page
    }

    pub fn page_bytes(&self, page: u64) -> Range<u64> {
        page * self.page..(page + 1) * self.page
    }

    pub fn block_bytes(&self, block: u64) -> Range<u64> {
        block * self.block..(block + 1) * self.block
    }

    /// The end of `[offset, offset + len)`, or `OutOfRange` naming `what` if it
    /// overflows or reaches past the capacity.
    pub fn end_within_capacity(&self, what: &'static str, offset: u64, len: u64) -> Result<u64> {
        offset
            .checked_add(len)
            .filter(|&end| end <= self.capacity)
            .ok_or_else(|| out_of_range(what, offset, len, self.capacity))
    }

    /// Pages that overlap `bytes`.
    pub fn pages_overlapping(&self, bytes: &Range<u64>) -> Range<u64> {
        if bytes.is_empty() {
            return 0..0;
        }
        bytes.start / self.page..bytes.end.div_ceil(self.page)
    }

    /// Blocks that overlap `bytes`.
    pub fn blocks_overlapping(&self, bytes: &Range<u64>) -> Range<u64> {
        if bytes.is_empty() {
            return 0..0;
        }
        bytes.start / self.block..bytes.end.div_ceil(self.block)
    }

    /// Blocks lying wholly inside `bytes`.
    pub fn blocks_inside(&self, bytes: &Range<u64>) -> Range<u64> {
        let first = bytes.start.div_ceil(self.block);
        let end = bytes.end / self.block;
        if first < end { first..end } else { 0..0 }
    }

    /// The blocks a write to `page` needs: those overlapping the part of the
    /// page below `eof`. When a block is larger than a page that is the whole
    /// block holding the page (DESIGN rule 1).
    pub fn blocks_backing(&self, page: u64, eof: u64) -> Range<u64> {
        let bytes = self.page_bytes(page);
        self.blocks_overlapping(&(bytes.start..bytes.end.min(eof)))
    }

    /// True when no byte of `page` lies below `eof`.
    pub fn page_past_eof(&self, page: u64, eof: u64) -> bool {
        page * self.page >= eof
    }
}

/// Intersection of two byte ranges (empty if disjoint).
pub(crate) fn intersect(a: &Range<u64>, b: &Range<u64>) -> Range<u64> {
    let start = a.start.max(b.start);
    let end = a.end.min(b.end);
    if start < end { start..end } else { start..start }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_checked() {
        for ok in [512, 1024, 4096, 65536, 1 << 20] {
            assert_eq!(check_block_size(ok).unwrap(), ok);
        }
        for bad in [0, 1, 256, 1000, 3072, 2 << 20] {
            assert!(matches!(check_block_size(bad), Err(Error::InvalidBlockSize(b)) if b == bad));
        }
    }

    #[test]
    fn capacity_rounds_to_pages_and_blocks() {
        assert_eq!(Geometry::new(4096, 1024, 1).unwrap().capacity, 4096);
        assert_eq!(Geometry::new(4096, 65536, 70000).unwrap().capacity, 131072);
    }

    #[test]
    fn small_blocks_backing_the_eof_page_stop_at_eof() {
        let g = Geometry::new(4096, 1024, 1 << 20).unwrap();
        // EOF at 1024: only the first block of page 0 is file data.
        assert_eq!(g.blocks_backing(0, 1024), 0..1);
        assert_eq!(g.blocks_backing(0, 1025), 0..2);
        assert_eq!(g.blocks_backing(0, 10000), 0..4);
        assert_eq!(g.blocks_backing(2, 10000), 8..10);
        assert_eq!(g.blocks_backing(3, 10000), 0..0);
        assert!(g.page_past_eof(3, 10000));
        assert!(!g.page_past_eof(2, 10000));
    }

    #[test]
    fn large_blocks_back_a_page_with_their_whole_block() {
        let g = Geometry::new(4096, 16384, 1 << 20).unwrap();
        assert_eq!(g.blocks_backing(0, 100), 0..1);
        assert_eq!(g.blocks_backing(5, 100_000), 1..2);
    }

    #[test]
    fn ranges_split_into_pages_and_blocks() {
        let g = Geometry::new(4096, 1024, 1 << 20).unwrap();
        assert_eq!(g.pages_overlapping(&(4095..4097)), 0..2);
        assert_eq!(g.pages_overlapping(&(5..5)), 0..0);
        assert_eq!(g.blocks_inside(&(100..3000)), 1..2);
        assert_eq!(g.blocks_inside(&(100..1000)), 0..0);
        assert_eq!(intersect(&(0..10), &(5..20)), 5..10);
        assert!(intersect(&(0..5), &(6..9)).is_empty());
    }
}
