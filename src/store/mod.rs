//! Where a file's blocks live: the [`Store`] trait and its implementations.

mod file;
mod mem;
mod nbd;
mod quota;
mod unsynced;
mod window;

pub use file::FileStore;
pub use mem::MemStore;
pub use nbd::{NbdOptions, NbdStore};
pub use quota::QuotaStore;
pub use window::Window;

pub use crate::sys::LiveBytes;

pub(crate) use unsynced::Unsynced;

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
///
/// A store of your own: a file in a `Vec` with room for a budget of blocks.
///
/// ```
/// use mkwrite::{Error, MappingOptions, Store};
/// use std::{collections::BTreeSet, io, ops::Range, sync::Mutex};
///
/// const BLOCK: u64 = 4096;
///
/// /// The file's bytes `[0, len)` and the blocks held, at most `budget` of them.
/// struct VecStore { inner: Mutex<(Vec<u8>, BTreeSet<u64>)>, budget: usize }
///
/// impl Store for VecStore {
///     fn block_size(&self) -> u64 { BLOCK }
///     fn len(&self) -> u64 { self.inner.lock().unwrap().0.len() as u64 }
///     fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
///         let (bytes, _) = &*self.inner.lock().unwrap();
///         let from = bytes.get(offset as usize..).unwrap_or_default();
///         let n = from.len().min(buf.len());
///         buf[..n].copy_from_slice(&from[..n]);
///         buf[n..].fill(0); // past EOF reads as zeros
///         Ok(())
///     }
///     fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
///         let (bytes, _) = &mut *self.inner.lock().unwrap();
///         let to = bytes.get_mut(offset as usize..).unwrap_or_default();
///         let n = to.len().min(data.len()); // a write never moves EOF
///         to[..n].copy_from_slice(&data[..n]);
///         Ok(())
///     }
///     fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
///         let (_, held) = &mut *self.inner.lock().unwrap();
///         let new = blocks.clone().filter(|b| !held.contains(b)).count();
///         if held.len() + new > self.budget {
///             return Err(io::Error::from_raw_os_error(libc::ENOSPC));
///         }
///         held.extend(blocks);
///         Ok(())
///     }
///     fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
///         let (bytes, held) = &mut *self.inner.lock().unwrap();
///         let end = bytes.len();
///         let clip = |b: u64| ((b * BLOCK) as usize).min(end);
///         bytes[clip(blocks.start)..clip(blocks.end)].fill(0);
///         held.retain(|b| !blocks.contains(b));
///         Ok(())
///     }
///     fn set_len(&self, len: u64) -> io::Result<()> {
///         let (bytes, held) = &mut *self.inner.lock().unwrap();
///         bytes.resize(len as usize, 0); // what a shrink cut off comes back as zeros
///         held.retain(|&b| b * BLOCK < len);
///         Ok(())
///     }
///     fn sync(&self) -> io::Result<()> { Ok(()) }
///     fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
///         Ok(self.inner.lock().unwrap().1.iter().map(|&b| b..b + 1).collect())
///     }
/// }
///
/// let store = VecStore { inner: Mutex::default(), budget: 2 };
/// store.set_len(4 * BLOCK)?;
/// let map = MappingOptions::new().capacity(4 * BLOCK).map_store(store)?;
/// map.write(0, &[1; 8192])?; // both blocks of the budget
/// let full = map.write(8192, b"x").unwrap_err();
/// assert!(matches!(full.error, Error::NoSpace(_)));
/// map.punch_hole(0, 4096)?; // gives one back
/// map.write(8192, b"x")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Store: Send + Sync {
    /// The allocation unit: a power of two from 512 B to 1 MiB (see
    /// [`check_block_size`](crate::check_block_size)).
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// assert_eq!(MemStore::new(1024, 8)?.block_size(), 1024);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn block_size(&self) -> u64;

    /// The file's length (EOF).
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// let store = MemStore::new(4096, 8)?;
    /// store.set_len(100)?;
    /// assert_eq!(store.len(), 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn len(&self) -> u64;

    /// True when the file is empty.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// assert!(MemStore::new(4096, 8)?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; holes and bytes at or past [`len`](Store::len) read as zeros.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// let store = MemStore::new(4096, 8)?;
    /// store.set_len(100)?;
    /// let mut buf = [9; 200];
    /// store.read_at(0, &mut buf)?; // a hole, then past EOF
    /// assert_eq!(buf, [0; 200]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The medium's read errors (`EIO`, a lost connection).
    #[doc(alias = "pread")]
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes `data` at `offset` into allocated blocks. Bytes at or past
    /// [`len`](Store::len) are dropped: a write never moves EOF.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// let store = MemStore::new(512, 8)?;
    /// store.set_len(600)?;
    /// store.allocate(0..2)?;
    /// store.write_at(590, &[7; 20])?; // ten bytes are past EOF
    /// assert_eq!(store.len(), 600);
    /// assert_eq!(&store.contents()[590..], &[7; 10]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The medium's write errors (`EIO`, a lost connection), or any error
    /// for a write to a block that is not allocated. A store may report a
    /// failed write late, at a later `write_at` or [`sync`](Store::sync).
    #[doc(alias = "pwrite")]
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Allocates `blocks` so that later writes to them cannot run out of space.
    /// Blocks already allocated are left alone. Fails with `ENOSPC` or `EDQUOT`.
    ///
    /// ```
    /// use mkwrite::{Error, MemStore, Store};
    /// let store = MemStore::new(4096, 2)?; // room for two blocks
    /// store.set_len(1 << 20)?;
    /// store.allocate(0..2)?;
    /// store.allocate(1..2)?; // held already: needs no room
    /// let err = store.allocate(2..3).unwrap_err();
    /// assert!(matches!(Error::from_allocation(err), Error::NoSpace(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `ENOSPC` when the store has no room (the mapping reports
    /// [`Error::NoSpace`](crate::Error::NoSpace)), `EDQUOT` over a quota
    /// ([`Error::Quota`](crate::Error::Quota)); anything else is an I/O
    /// failure.
    #[doc(alias = "fallocate")]
    fn allocate(&self, blocks: Range<u64>) -> io::Result<()>;

    /// Frees `blocks` (punches a hole); they read as zeros afterwards.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// let store = MemStore::new(512, 8)?;
    /// store.set_len(1024)?;
    /// store.allocate(0..2)?;
    /// store.write_at(0, &[7; 1024])?;
    /// store.deallocate(1..2)?;
    /// assert_eq!(store.held_blocks(), 1);
    /// assert_eq!(store.contents()[512..], [0; 512]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The medium's errors; the blocks may then still be held.
    #[doc(alias = "FALLOC_FL_PUNCH_HOLE")]
    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()>;

    /// Moves EOF. Shrinking frees the blocks wholly past it and zeroes the
    /// tail of the block that holds it; growing adds a hole.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// let store = MemStore::new(512, 8)?;
    /// store.set_len(1024)?;
    /// store.allocate(0..2)?;
    /// store.write_at(0, &[7; 1024])?;
    /// store.set_len(100)?; // frees block 1, zeroes block 0 past 100
    /// store.set_len(1024)?;
    /// assert_eq!(store.held_blocks(), 1);
    /// assert_eq!(store.contents()[100..], [0; 924]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The medium's errors; `InvalidInput` from a store whose length is not
    /// its own to change (a [`Window`]).
    #[doc(alias = "ftruncate")]
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes every completed write and length change durable.
    ///
    /// ```
    /// use mkwrite::{FileStore, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = FileStore::create(dir.path().join("new.db"))?;
    /// store.set_len(4096)?;
    /// store.sync()?; // the data, the length and the new directory entry
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The medium's sync errors, including a write that failed since the
    /// last sync; the caller writes the data again before it syncs again.
    #[doc(alias = "fdatasync")]
    #[doc(alias = "fsync")]
    fn sync(&self) -> io::Result<()>;

    /// The block ranges that already hold data, as far as the store can tell
    /// (used when an existing file is opened). Under-reporting is safe: those
    /// blocks are allocated again before their first write.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// let store = MemStore::new(4096, 8)?;
    /// store.set_len(1 << 20)?;
    /// store.allocate(0..2)?;
    /// store.allocate(5..6)?;
    /// assert_eq!(store.allocated()?, [0..2, 5..6]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The medium's errors (`lseek` with `SEEK_DATA`, a block status query).
    #[doc(alias = "SEEK_DATA")]
    fn allocated(&self) -> io::Result<Vec<Range<u64>>>;

    /// Whether every block that [`allocated`](Store::allocated) does not
    /// report (and that was not allocated since) reads as zeros, and still
    /// does once [`allocate`](Store::allocate) returns for it. `true` lets
    /// the first write to a page with no allocated block skip reading it;
    /// the default, `false`, is always safe.
    ///
    /// ```
    /// use mkwrite::{MemStore, Store};
    /// assert!(MemStore::new(4096, 8)?.unallocated_reads_zero());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn unallocated_reads_zero(&self) -> bool {
        false
    }

    /// The calls a fault needs in a form a signal handler may make, if this
    /// store has one; `None` (the default) if not. A mapping opened with
    /// [`Delivery::InThread`](crate::Delivery::InThread) resolves faults in
    /// the faulting thread's SIGBUS handler only over a store that answers
    /// here; any other store's faults are handed to the mapping's service
    /// thread (correct, at the cost of a round trip). [`FileStore`] answers.
    ///
    /// ```
    /// use mkwrite::{FileStore, MemStore, Store};
    /// # let dir = tempfile::tempdir()?;
    /// assert!(MemStore::new(4096, 8)?.signal_safe().is_none()); // it allocates and locks
    /// assert!(FileStore::create(dir.path().join("f"))?.signal_safe().is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn signal_safe(&self) -> Option<&dyn SignalSafe> {
        None
    }

    /// Whether a flush may hand [`write_at`](Store::write_at) the mapping's
    /// own memory instead of a copy of it (saving a copy of every page it
    /// writes). `false` (the default) is always safe. Answer `true` only if
    /// `write_at` reads `data` inside system calls alone (`pwrite`, ...),
    /// so a page of it dropped from memory behind the mapping's back fails
    /// the call with `EFAULT` or waits in the kernel for the fault service,
    /// and holds no lock that [`read_at`](Store::read_at) or
    /// [`allocate`](Store::allocate) take meanwhile (the fault service may
    /// call them to serve that page). The pages stay write-protected while
    /// the store reads them: writes to them wait. [`FileStore`] answers `true`.
    ///
    /// ```
    /// use mkwrite::{FileStore, MemStore, Store};
    /// # let dir = tempfile::tempdir()?;
    /// assert!(!MemStore::new(4096, 8)?.writes_from_mapping()); // it copies under a lock
    /// assert!(FileStore::create(dir.path().join("f"))?.writes_from_mapping());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn writes_from_mapping(&self) -> bool {
        false
    }

    /// Writes `data` at `offset`, as [`write_at`](Store::write_at), for a
    /// flush from the mapping under
    /// [`DirtyTracking::Kernel`](crate::DirtyTracking::Kernel): there the
    /// program's threads may write the bytes while the store hands them on
    /// (a write the flush races is found by the next flush, which writes
    /// the page again), so they come as [`LiveBytes`], which only the kernel
    /// reads. Asked only of a store whose
    /// [`writes_from_mapping`](Store::writes_from_mapping) is `true`. The
    /// default answers [`io::ErrorKind::Unsupported`], and the flush writes
    /// copies instead. [`FileStore`] writes them with `pwrite(2)`.
    fn write_live(&self, offset: u64, data: LiveBytes<'_>) -> io::Result<()> {
        let _ = (offset, data);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// A store's reads and allocations as a signal handler may call them.
///
/// Errors are plain errnos, and any error sends the fault to the mapping's
/// service thread, which calls [`Store::read_at`] or [`Store::allocate`]
/// again for the full error and the mapping's [`OnFull`](crate::OnFull) policy.
///
/// # Safety
///
/// Both methods must be async-signal-safe: they run inside a SIGBUS handler,
/// interrupting a thread at an access to the mapping's memory. They may make
/// system calls on POSIX's async-signal-safe list (`pread`, `fallocate`, ...);
/// they must not allocate, take a lock that any thread may hold while it
/// touches a mapping's memory, or touch a mapping's memory themselves; and
/// they must not panic.
///
/// ```
/// use mkwrite::{FileStore, Store};
/// # let dir = tempfile::tempdir()?;
/// let store = FileStore::create(dir.path().join("f"))?;
/// store.set_len(4096)?;
/// let fast = store.signal_safe().expect("a file store is signal-safe");
/// fast.allocate_in_signal(0..1).expect("room for one block");
/// let mut page = [1u8; 4096];
/// fast.read_at_in_signal(0, &mut page).unwrap();
/// assert!(page.iter().all(|&b| b == 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[allow(unsafe_code)]
pub unsafe trait SignalSafe {
    /// Fills all of `buf` from `offset`, below the store's length; an errno
    /// if it cannot (a short read is an error here).
    fn read_at_in_signal(&self, offset: u64, buf: &mut [u8]) -> Result<(), i32>;

    /// As [`Store::allocate`].
    fn allocate_in_signal(&self, blocks: Range<u64>) -> Result<(), i32>;
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
            fn signal_safe(&self) -> Option<&dyn SignalSafe> {
                (**self).signal_safe()
            }
            fn unallocated_reads_zero(&self) -> bool {
                (**self).unallocated_reads_zero()
            }
            fn writes_from_mapping(&self) -> bool {
                (**self).writes_from_mapping()
            }
            fn write_live(&self, offset: u64, data: LiveBytes<'_>) -> io::Result<()> {
                (**self).write_live(offset, data)
            }
        }
    };
}

forward_store!(Box<S>);
forward_store!(Arc<S>);

/// How many of `count` bytes at `offset` lie below `len`: the ones a store
/// reads or writes (bytes past its EOF read as zeros and are never written,
/// DESIGN rule 5).
pub(crate) fn below_eof(len: u64, offset: u64, count: usize) -> usize {
    len.saturating_sub(offset).min(count as u64) as usize
}

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
