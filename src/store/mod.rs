//! Where a file's blocks live: the [`Store`] trait and its implementations.

mod file;
mod mem;
mod nbd;
mod quota;
mod window;

pub use file::FileStore;
pub use mem::MemStore;
pub use nbd::{NbdOptions, NbdStore};
pub use quota::QuotaStore;
pub use window::Window;

use std::io;
use std::ops::Range;
use std::sync::Arc;

/// The backing store of a mapping: a length (EOF) and blocks that must be
/// *allocated* before they may be written.
///
/// Offsets are bytes; block ranges are block indexes. Every method takes
/// `&self` (implementations use interior locking) so a store can be shared,
/// and returns [`io::Error`]s as the system gave them: `ENOSPC` for no space,
/// `EDQUOT` for an exceeded quota.
pub trait Store: Send + Sync {
    /// The allocation unit: a power of two from 512 B to 1 MiB.
    fn block_size(&self) -> u64;

    /// The file's length (EOF).
    fn len(&self) -> u64;

    /// True when the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; holes and bytes at or past [`len`](Store::len) read as zeros.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes `data` at `offset` into allocated blocks. Bytes at or past
    /// [`len`](Store::len) are dropped: a write never moves EOF.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Allocates `blocks` so that later writes to them cannot run out of space.
    /// Blocks already allocated are left alone. Fails with `ENOSPC` or `EDQUOT`.
    fn allocate(&self, blocks: Range<u64>) -> io::Result<()>;

    /// Frees `blocks` (punches a hole); they read as zeros afterwards.
    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()>;

    /// Moves EOF. Shrinking frees the blocks wholly past it and zeroes the
    /// tail of the block that holds it; growing adds a hole.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes every completed write and length change durable.
    fn sync(&self) -> io::Result<()>;

    /// The block ranges that already hold data, as far as the store can tell
    /// (used when an existing file is opened). Under-reporting is safe: those
    /// blocks are allocated again before their first write.
    fn allocated(&self) -> io::Result<Vec<Range<u64>>>;
}

macro_rules! forward_store {
    ($ty:ty) => {
        impl<S: Store + ?Sized> Store for $ty {
            fn block_size(&self) -> u64 {
                (**self).block_size()
            }
            fn len(&self) -> u64 {
                (**self).len()
            }
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
                (**self).read_at(offset, buf)
            }
            fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
                (**self).write_at(offset, data)
            }
            fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
                (**self).allocate(blocks)
            }
            fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
                (**self).deallocate(blocks)
            }
            fn set_len(&self, len: u64) -> io::Result<()> {
                (**self).set_len(len)
            }
            fn sync(&self) -> io::Result<()> {
                (**self).sync()
            }
            fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
                (**self).allocated()
            }
        }
    };
}

forward_store!(Box<S>);
forward_store!(Arc<S>);

/// Merges sorted block indexes into ranges.
pub(crate) fn runs(blocks: impl IntoIterator<Item = u64>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for b in blocks {
        match out.last_mut() {
            Some(last) if last.end == b => last.end = b + 1,
            _ => out.push(b..b + 1),
        }
    }
    out
}
