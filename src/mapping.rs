//! The public mapping: open, access, resize, flush, close.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crate::engine::Engine;
use crate::error::{Error, PartialError, Result, out_of_range};
use crate::flags::Flags;
use crate::geometry::{Geometry, check_block_size};
use crate::options::{DEFAULT_CAPACITY, MappingOptions};
use crate::stats::{Counters, Stats};
use crate::store::Store;
use crate::sys::{self, Doorbell, Region, Uffd, UffdOrigin};

/// A file's contents in memory, where the first write to each clean page
/// allocates its blocks in the store before it may proceed.
///
/// `Mapping` is `Send + Sync`: any number of threads may read and write its
/// memory (through [`as_ptr`](Self::as_ptr)) and call its `&self` methods at
/// once. The slice accessors take `&mut self`, so the borrow checker keeps
/// every other access away while a slice lives.
///
/// Dropping the mapping flushes best-effort, then stops the handler thread,
/// unregisters and unmaps the memory, and closes the userfaultfd and the
/// store, in that order. Use [`close`](Self::close) to see the flush's error.
#[derive(Debug)]
pub struct Mapping {
    engine: Arc<Engine>,
    handler: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("geometry", &self.geo)
            .field("on_full", &self.on_full)
            .finish_non_exhaustive()
    }
}

impl Mapping {
    /// Maps an existing file with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Mapping> {
        MappingOptions::new().open(path)
    }

    /// Options for opening a mapping.
    pub fn options() -> MappingOptions {
        MappingOptions::new()
    }

    pub(crate) fn new(store: Box<dyn Store>, opts: &MappingOptions) -> Result<Mapping> {
        let block = check_block_size(store.block_size())?;
        let len = store.len();
        let capacity = opts.capacity.unwrap_or(len.max(DEFAULT_CAPACITY));
        if capacity < len {
            return Err(Error::CapacityBelowLength { capacity, len });
        }
        let geo = Geometry::new(sys::page_size(), block, capacity);
        let size = usize::try_from(geo.capacity).map_err(|_| {
            out_of_range(
                "capacity beyond the address space",
                0,
                capacity,
                usize::MAX as u64,
            )
        })?;
        let allocated = store.allocated()?;
        let uffd = Uffd::open(opts.uffd_fallback)?;
        let region = Region::reserve(size)?;
        uffd.register(region.base(), region.len() as u64)?;
        let engine = Arc::new(Engine {
            region,
            uffd,
            store,
            geo,
            flags: Mutex::new(Flags::new(geo, len, &allocated)),
            layout: RwLock::new(()),
            flush_lock: Mutex::new(()),
            counters: Counters::default(),
            on_full: opts.on_full.clone(),
            doorbell: Doorbell::new()?,
            stopping: AtomicBool::new(false),
            handler_failure: Mutex::new(None),
            last_fault_error: Mutex::new(None),
        });
        let handler = crate::handler::spawn(Arc::clone(&engine))?;
        Ok(Mapping {
            engine,
            handler: Some(handler),
        })
    }

    /// The file's length (EOF).
    pub fn len(&self) -> u64 {
        self.engine.lock_flags().eof()
    }

    /// True when the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes reserved: how far the file may grow.
    pub fn capacity(&self) -> u64 {
        self.engine.geo.capacity
    }

    /// The store's block size.
    pub fn block_size(&self) -> u64 {
        self.engine.geo.block
    }

    /// The page size faults are resolved in.
    pub fn page_size(&self) -> u64 {
        self.engine.geo.page
    }

    /// How the userfaultfd was obtained (syscall, device, or user-mode only).
    pub fn userfaultfd_origin(&self) -> UffdOrigin {
        self.engine.uffd.origin()
    }

    /// The start of the mapping's memory, valid for [`capacity`](Self::capacity) bytes.
    ///
    /// Reads and writes through it behave as with `mmap(MAP_SHARED)`: a write
    /// to a clean page faults and allocates first; a full store is handled by
    /// the mapping's [`OnFull`](crate::OnFull) policy (SIGBUS by default); a
    /// touch of a page wholly past EOF gets SIGBUS. The caller keeps Rust's
    /// aliasing rules for any reference it makes from this pointer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.engine.region.as_ptr()
    }

    /// The file's bytes `[0, len)`. A page the store cannot serve raises SIGBUS.
    #[allow(unsafe_code)]
    pub fn as_slice(&mut self) -> &[u8] {
        let len = self.len() as usize;
        // SAFETY: `&mut self` excludes every other call on this mapping for the
        // slice's lifetime, so none of its writers (checked writes, size
        // changes, holes) can run; `len <= capacity` by the flags' invariant.
        unsafe { self.engine.region.slice(len) }
    }

    /// The file's bytes `[0, len)`, writable. Each first write to a clean page
    /// allocates its blocks; a full store follows the [`OnFull`](crate::OnFull) policy.
    #[allow(unsafe_code)]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len() as usize;
        // SAFETY: as in `as_slice`; `&mut self` also makes this the only slice.
        unsafe { self.engine.region.slice_mut(len) }
    }

    /// Writes `data` at `offset` through the real fault path, returning a full
    /// store as [`Error::NoSpace`] / [`Error::Quota`] with the bytes that
    /// landed, instead of raising SIGBUS. Bytes past EOF inside the last page
    /// are accepted and never reach the store, as with mmap; a page wholly
    /// past EOF is [`Error::OutOfRange`].
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), PartialError> {
        self.engine.write(offset, data)
    }

    /// Reads the mapping's bytes at `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), PartialError> {
        self.engine.read(offset, buf)
    }

    /// Allocates the blocks under `[offset, offset + len)` ahead of writing,
    /// like `fallocate`. The range must lie within EOF (call
    /// [`set_len`](Self::set_len) first). On failure, `done` counts the bytes
    /// from `offset` that are reserved.
    pub fn reserve(&self, offset: u64, len: u64) -> Result<(), PartialError> {
        let eof = self.len();
        if offset.checked_add(len).is_none_or(|end| end > eof) {
            return Err(PartialError {
                done: 0,
                error: out_of_range("reserve beyond the end of the file", offset, len, eof),
            });
        }
        self.check_handler()
            .map_err(|error| PartialError { done: 0, error })?;
        self.engine
            .reserve(offset, len)
            .map_err(|(done, error)| PartialError {
                done: done as usize,
                error,
            })
    }

    /// Moves EOF. Growing zeroes what was past the old EOF in its page and
    /// write-protects that page again; shrinking drops the pages past the new
    /// EOF, zeroes the tail of the new last page and frees the blocks.
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.check_handler()?;
        self.engine.set_len(len)
    }

    /// Zeroes `[offset, offset + len)` (clipped to EOF) and frees the blocks
    /// wholly inside it.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        self.check_handler()?;
        self.engine.punch_hole(offset, len)
    }

    /// Writes every dirty page's allocated blocks and syncs the store. After
    /// it returns `Ok`, every byte written before it began is durable. On
    /// error the data stays dirty and the next flush writes it.
    pub fn flush(&self) -> Result<()> {
        self.engine.flush(0..self.engine.geo.pages())
    }

    /// [`flush`](Self::flush) for the pages overlapping `[offset, offset + len)`.
    pub fn flush_range(&self, offset: u64, len: u64) -> Result<()> {
        let geo = &self.engine.geo;
        let end = geo.end_within_capacity("flush_range beyond the mapping's capacity", offset, len)?;
        self.engine.flush(geo.pages_overlapping(&(offset..end)))
    }

    /// Drops every clean resident page; they refill from the store when touched.
    pub fn evict(&self) -> Result<()> {
        self.check_handler()?;
        self.engine.evict()
    }

    /// Tells the mapping that the store has room again: faults waiting for
    /// space (policy [`OnFull::Wait`](crate::OnFull::Wait)) retry.
    pub fn notify_space_freed(&self) {
        self.engine.doorbell.ring();
    }

    /// Counters and flag totals.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        {
            let flags = self.engine.lock_flags();
            stats.len = flags.eof();
            stats.blocks_allocated = flags.allocated_blocks();
            stats.pages_resident = flags.resident_count();
            stats.pages_dirty = flags.dirty_count();
        }
        stats.block_size = self.engine.geo.block;
        self.engine.counters.snapshot(&mut stats);
        stats
    }

    /// Why the most recent SIGBUS was sent, for a signal handler or a log.
    pub fn last_fault_error(&self) -> Option<String> {
        self.engine.last_fault_error()
    }

    /// Checks the flags' invariants (DESIGN rule 1 and residency); for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.engine.lock_flags().check()
    }

    fn check_handler(&self) -> Result<()> {
        match self.engine.handler_failure() {
            Some(why) => Err(Error::HandlerFailed(why)),
            None => Ok(()),
        }
    }

    /// Flushes, then tears down; returns the flush's (or the handler's) error.
    pub fn close(mut self) -> Result<()> {
        self.teardown()
    }

    /// The documented order: flush, stop the handler, unregister; the region
    /// is unmapped and the fds closed when the engine drops.
    fn teardown(&mut self) -> Result<()> {
        let Some(handler) = self.handler.take() else {
            return Ok(());
        };
        let flushed = self.engine.flush(0..self.engine.geo.pages());
        self.engine.stopping.store(true, Ordering::SeqCst);
        self.engine.doorbell.ring();
        let joined = handler.join();
        // Wakes any thread still (wrongly) waiting on a fault; nothing else to do.
        let _ = self
            .engine
            .uffd
            .unregister(self.engine.region.base(), self.engine.region.len() as u64);
        flushed?;
        if joined.is_err() {
            return Err(Error::HandlerFailed("the handler thread panicked".into()));
        }
        self.check_handler()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Best effort: a caller who needs the flush's error calls `close`.
        let _ = self.teardown();
    }
}

// The mapping is shared across threads by design; keep it that way.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Mapping>();
};
