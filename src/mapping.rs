//! The public mapping: open, access, resize, flush, close.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crate::ahead::Advice;
use crate::engine::Access;
use crate::engine::Engine;
use crate::error::{Error, PartialError, Result};
use crate::flags::Flags;
use crate::geometry::{Geometry, check_block_size};
use crate::handoff::Handoffs;
use crate::options::{DEFAULT_CAPACITY, Delivery, DirtyTracking, MappingOptions};
use crate::raw::RawMemory;
use crate::stats::{Counters, Stats};
use crate::store::Store;
use crate::sys::{self, Region, UffdOrigin};

/// A file's contents in memory, where the first write to each clean page
/// allocates its blocks in the store before it may proceed.
///
/// `Mapping` is `Send + Sync`: any number of threads may read and write its
/// memory (through [`as_ptr`](Self::as_ptr)) and call its `&self` methods at
/// once. The slice accessors take `&mut self`, so the borrow checker keeps
/// every other access away while a slice lives.
///
/// Dropping the mapping flushes best-effort, then takes it off the fault
/// service, unregisters and unmaps the memory, and closes the store, in
/// that order. Use [`close`](Self::close) to see the flush's error.
///
/// # Shared access
///
/// There is no `Deref<Target = [u8]>` and no shared read guard: a `&[u8]`
/// promises that no one writes those bytes while it lives, and nothing can
/// promise that while any thread may store through [`as_ptr`](Self::as_ptr).
/// Shared readers use the checked [`read`](Self::read) (a copy), or raw
/// loads through [`raw`](Self::raw) under their own discipline; the slices
/// ([`as_slice`](Self::as_slice), [`as_mut_slice`](Self::as_mut_slice)) take
/// `&mut self`, so the borrow checker keeps every other caller away.
///
/// # Fork
///
/// The memory is not inherited by a child of `fork` (`MADV_DONTFORK`): a
/// child that touches it gets SIGSEGV, never stale or zeroed data. Every
/// fallible call in the child returns [`Error::Forked`] and touches nothing;
/// dropping the mapping there does nothing (no flush, no join). The parent
/// goes on as if the child never existed.
///
/// # Errors every call may return
///
/// Besides what each method lists: [`Error::Forked`] in a child of the
/// process that opened the mapping, [`Error::HandlerFailed`] once the fault
/// handler has failed, and, from every call that would change the file,
/// [`Error::ReadOnlyMapping`] for a mapping opened
/// [`read_only`](MappingOptions::read_only).
///
/// ```
/// use mkwrite::Mapping;
///
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("table.db");
/// std::fs::write(&path, [0; 8192])?;
/// let map = Mapping::open(&path)?;
/// map.write(4096, b"row 1")?; // allocates the page's blocks, then copies
/// map.close()?;               // flushes, and says if that failed
/// assert_eq!(&std::fs::read(&path)?[4096..4101], b"row 1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "mmap")]
#[derive(Debug)]
pub struct Mapping {
    /// The signal handler's entry for this mapping (in-thread delivery);
    /// declared first so it goes before the engine it points to.
    in_thread: Option<Registration>,
    engine: Arc<Engine>,
    /// Attached to its fault service (false once closed).
    served: bool,
    /// Flushes started by [`flush_async`](Self::flush_async), not yet waited for.
    async_flushes: Mutex<Vec<JoinHandle<()>>>,
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
    /// Maps an existing file with default options ([`MappingOptions::new`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("table.db");
    /// std::fs::write(&path, b"hello")?;
    /// let map = mkwrite::Mapping::open(&path)?;
    /// assert_eq!(map.len(), 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`MappingOptions::open`]: [`Error::Open`] if the file does not
    /// exist, [`Error::ReadOnly`] if it may not be written, and those of
    /// mapping it.
    pub fn open(path: impl AsRef<Path>) -> Result<Mapping> {
        MappingOptions::new().open(path)
    }

    /// Options for opening a mapping: the same as [`MappingOptions::new`].
    ///
    /// ```
    /// # use mkwrite::{Mapping, MemStore};
    /// let map = Mapping::options().capacity(1 << 20).map_store(MemStore::new(4096, 16)?)?;
    /// assert_eq!(map.capacity(), 1 << 20);
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn options() -> MappingOptions {
        MappingOptions::new()
    }

    pub(crate) fn new(store: Box<dyn Store>, opts: &MappingOptions) -> Result<Mapping> {
        let store: Box<dyn Store> = Box::new(crate::store::Unsynced::new(store));
        let budget = opts.budget.as_ref().map(crate::Budget::shared);
        let block = check_block_size(store.block_size())?;
        let len = store.len();
        let capacity = opts.capacity.unwrap_or(len.max(DEFAULT_CAPACITY));
        if capacity < len {
            return Err(Error::CapacityBelowLength { capacity, len });
        }
        let too_large = || Error::CapacityUnavailable {
            capacity,
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        };
        let geo = Geometry::new(sys::page_size(), block, capacity).ok_or_else(too_large)?;
        let size = usize::try_from(geo.capacity).map_err(|_| too_large())?;
        let kernel_dirty = opts.dirty_tracking == DirtyTracking::Kernel && !opts.read_only;
        if kernel_dirty {
            crate::kernel_dirty::check_options(block, opts.budget.is_some())?;
        }
        let allocated = store.allocated()?;
        let in_thread = opts.delivery == Delivery::InThread;
        let service = crate::service::shared(crate::service::Kind {
            fallback: opts.uffd_fallback,
            sigbus: in_thread,
            user_mode_only: opts.uffd_user_mode_only,
            wp_async: kernel_dirty,
        })?;
        let kernel_dirty = service.uffd.wp_async();
        let region = Region::reserve(size, opts.read_only).map_err(|source| match source.raw_os_error() {
            Some(libc::ENOMEM) => Error::CapacityUnavailable { capacity, source },
            _ => Error::Io(source),
        })?;
        if in_thread && !region.probes_without_faulting() {
            return Err(Error::MissingFeature(
                "/proc/self/mem, which in-thread delivery reads memory through",
            ));
        }
        service
            .uffd
            .register(region.base(), region.len() as u64, opts.read_only)?;
        crate::engine::init_zero_pages()?;
        let fill_buffers = crate::engine::fill_buffers_for(&geo)?;
        let flags = match &budget {
            Some(b) => Flags::new(geo, len, &allocated)?.metered(b.meter()),
            None => Flags::new(geo, len, &allocated)?,
        };
        let engine = Arc::new(Engine {
            region,
            service,
            store,
            geo,
            page_states: flags.states(),
            flags: Mutex::new(flags),
            budget: budget.clone(),
            clock_hand: Mutex::new(0),
            ghosts: Mutex::default(),
            eof: AtomicU64::new(len),
            fences: Mutex::default(),
            owner: sys::process_id(),
            read_only: opts.read_only,
            kernel_dirty,
            streams: Mutex::default(),
            fill_buffers,
            layout: RwLock::new(()),
            flush_lock: Mutex::new(()),
            counters: Counters::default(),
            on_full: opts.on_full.clone(),
            attention: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            serving: RwLock::default(),
            waiting: Mutex::default(),
            handler_failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            claim_events: Default::default(),
            handoffs: Handoffs::default(),
            last_fault_error: Mutex::new(None),
        });
        if let Some(budget) = &engine.budget {
            budget.join(&engine);
        }
        engine.service.attach(&engine);
        let mut map = Mapping {
            in_thread: None,
            engine,
            served: true,
            async_flushes: Mutex::default(),
        };
        map.in_thread = register(&map.engine, opts.delivery)?;
        Ok(map)
    }

    /// How this mapping's faults are delivered (see [`Delivery`]).
    ///
    /// ```
    /// # use mkwrite::{Delivery, MappingOptions, MemStore};
    /// let map = MappingOptions::new().map_store(MemStore::new(4096, 16)?)?;
    /// assert_eq!(map.delivery(), Delivery::HandlerThread);
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn delivery(&self) -> Delivery {
        match self.engine.uffd().raises_sigbus() {
            true => Delivery::InThread,
            false => Delivery::HandlerThread,
        }
    }

    /// Who finds the pages written since the last flush: what
    /// [`MappingOptions::dirty_tracking`] asked for, or
    /// [`DirtyTracking::Faults`] where the kernel cannot track them itself
    /// (before Linux 6.7) and for a read-only mapping.
    ///
    /// ```
    /// use mkwrite::{DirtyTracking, MappingOptions, MemStore};
    /// let map = MappingOptions::new().map_store(MemStore::new(4096, 16)?)?;
    /// assert_eq!(map.dirty_tracking(), DirtyTracking::Faults);
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn dirty_tracking(&self) -> DirtyTracking {
        match self.engine.kernel_dirty {
            true => DirtyTracking::Kernel,
            false => DirtyTracking::Faults,
        }
    }

    /// The file's length (EOF).
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(1 << 20).map_store(MemStore::new(4096, 16)?)?;
    /// assert_eq!(map.len(), 0); // a new store is empty
    /// map.set_len(10_000)?;
    /// assert_eq!(map.len(), 10_000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.engine.eof.load(Ordering::Acquire)
    }

    /// True when the file is empty.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(8192).map_store(MemStore::new(4096, 2)?)?;
    /// assert!(map.is_empty());
    /// map.set_len(1)?;
    /// assert!(!map.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes reserved: how far the file may grow (the
    /// [`capacity`](MappingOptions::capacity) asked for, rounded up to whole
    /// pages and blocks).
    ///
    /// ```
    /// # use mkwrite::{Error, MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(10_000).map_store(MemStore::new(4096, 4)?)?;
    /// assert_eq!(map.capacity(), 12_288); // three 4 KiB pages
    /// let err = map.set_len(map.capacity() + 1).unwrap_err();
    /// assert!(matches!(err, Error::BeyondCapacity { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capacity(&self) -> u64 {
        self.engine.geo.capacity
    }

    /// The store's block size: the unit in which the first write to a page
    /// allocates.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// let store = std::sync::Arc::new(MemStore::new(1024, 16)?);
    /// store.set_len(4096)?;
    /// let map = MappingOptions::new().capacity(4096).map_store(store.clone())?;
    /// assert_eq!(map.block_size(), 1024);
    /// map.write(0, b"x")?;
    /// assert_eq!(store.held_blocks(), 4); // the whole page's blocks, not one
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn block_size(&self) -> u64 {
        self.engine.geo.block
    }

    /// The page size faults are resolved in (the system's).
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(1).map_store(MemStore::new(512, 16)?)?;
    /// assert_eq!(map.capacity(), map.page_size()); // one page at least
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn page_size(&self) -> u64 {
        self.engine.geo.page
    }

    /// Whether the mapping was opened
    /// [read-only](MappingOptions::read_only).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("table.db");
    /// std::fs::write(&path, b"hello")?;
    /// let map = mkwrite::MappingOptions::new().read_only(true).open(&path)?;
    /// assert!(map.is_read_only());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_read_only(&self) -> bool {
        self.engine.read_only
    }

    /// How the userfaultfd was obtained (syscall, device, or user-mode only).
    /// With [`UffdOrigin::UserModeOnly`], a system call that touches a page
    /// not in memory (`read(2)` into the mapping) fails with `EFAULT`: make
    /// the range resident first with [`populate`](Self::populate).
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store, UffdOrigin};
    /// # let store = MemStore::new(4096, 16)?;
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(8192).map_store(store)?;
    /// if map.userfaultfd_origin() == UffdOrigin::UserModeOnly {
    ///     map.populate(0, 8192, false)?; // before read(2) or write(2) touch it
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "userfaultfd")]
    pub fn userfaultfd_origin(&self) -> UffdOrigin {
        self.engine.uffd().origin()
    }

    /// The start of the mapping's memory, valid for [`capacity`](Self::capacity) bytes.
    ///
    /// Reads and writes through it behave as with `mmap(MAP_SHARED)`: a write
    /// to a clean page faults and allocates first; a full store is handled by
    /// the mapping's [`OnFull`](crate::OnFull) policy (SIGBUS by default); a
    /// touch of a page wholly past EOF gets SIGBUS. The caller keeps Rust's
    /// aliasing rules for any reference it makes from this pointer.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// let p = map.as_ptr();
    /// // SAFETY: inside the file, and no reference to these bytes is alive.
    /// unsafe { p.add(4096).write(42) }; // faults and allocates first
    /// assert_eq!(map.stats().faults_missing_write, 1);
    /// assert_eq!(store.held_blocks(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.engine.region.as_ptr()
    }

    /// The memory as a `Send + Sync` value, for handing to other threads.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(8192).map_store(MemStore::new(4096, 2)?)?;
    /// let memory = map.raw();
    /// assert_eq!((memory.as_ptr(), memory.len()), (map.as_ptr(), 8192));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn raw(&self) -> RawMemory {
        RawMemory::new(self.as_ptr(), self.engine.region.len())
    }

    /// The file's bytes `[0, len)`. A page the store cannot serve raises SIGBUS.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = MemStore::new(4096, 16)?;
    /// # store.set_len(8192)?;
    /// let mut map = MappingOptions::new().capacity(16384).map_store(store)?;
    /// map.write(0, b"hello")?;
    /// let bytes = map.as_slice();
    /// assert_eq!(bytes.len(), 8192); // up to EOF, not the capacity
    /// assert_eq!(&bytes[..5], b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// In a forked child, which has no such memory (see [Fork](#fork)).
    #[allow(unsafe_code)]
    pub fn as_slice(&mut self) -> &[u8] {
        self.owned_or_panic();
        let len = self.len() as usize;
        // SAFETY: `&mut self` excludes every other call on this mapping for the
        // slice's lifetime, so none of its writers (checked writes, size
        // changes, holes) can run; `len <= capacity` by the flags' invariant.
        unsafe { self.engine.region.slice(len) }
    }

    /// The file's bytes `[0, len)`, writable. Each first write to a clean page
    /// allocates its blocks; a full store follows the [`OnFull`](crate::OnFull) policy.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// let mut map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.as_mut_slice()[4096..4101].copy_from_slice(b"hello"); // faults and allocates
    /// map.flush()?;
    /// assert_eq!(&store.contents()[4096..4101], b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// In a forked child, or for a read-only mapping (whose memory cannot be written).
    #[allow(unsafe_code)]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.owned_or_panic();
        assert!(!self.engine.read_only, "as_mut_slice of a read-only mapping");
        let len = self.len() as usize;
        // SAFETY: as in `as_slice`; `&mut self` also makes this the only slice.
        unsafe { self.engine.region.slice_mut(len) }
    }

    /// Writes `data` at `offset` through the real fault path, returning a full
    /// store as [`Error::NoSpace`] / [`Error::Quota`] with the bytes that
    /// landed, instead of raising SIGBUS. Bytes past EOF inside the last page
    /// are accepted and never reach the store, as with mmap; a page wholly
    /// past EOF is [`Error::OutOfRange`].
    ///
    /// ```
    /// use mkwrite::{Error, MappingOptions, MemStore, QuotaStore, Store};
    ///
    /// let store = QuotaStore::new(MemStore::new(4096, 16)?, 1)?; // a quota of one block
    /// store.set_len(3 * 4096)?;
    /// let map = MappingOptions::new().capacity(3 * 4096).map_store(store)?;
    /// map.write(0, b"fits")?;
    /// let err = map.write(4000, &[7; 200]).unwrap_err(); // runs into the second page
    /// assert!(matches!(err.error, Error::Quota(_)));
    /// assert_eq!(err.done, 96); // the first page's part landed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// With `done` counting the bytes that landed: [`Error::NoSpace`] or
    /// [`Error::Quota`] when a page's blocks cannot be allocated;
    /// [`Error::OutOfRange`] at a page wholly past EOF or past the capacity;
    /// the store's other failures (reading a page in, allocating) as
    /// [`Error::Io`] or [`Error::LengthChanged`].
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), PartialError> {
        self.usable_for_writing().map_err(PartialError::none)?;
        let written = self.engine.write(offset, data);
        self.keep_budget();
        written
    }

    /// Reads the mapping's bytes at `offset` into `buf`. Bytes past EOF
    /// inside the last page read as zeros, as with mmap.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.write(0, b"hello")?;
    /// let mut buf = [0; 5];
    /// map.read(0, &mut buf)?;
    /// assert_eq!(&buf, b"hello");
    /// assert!(map.read(8192, &mut buf).is_err()); // a page wholly past EOF
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// With `done` counting the bytes read: [`Error::OutOfRange`] at a page
    /// wholly past EOF or past the capacity; the store's read failures as
    /// [`Error::Io`] or [`Error::LengthChanged`].
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), PartialError> {
        self.usable().map_err(PartialError::none)?;
        let read = self.engine.read(offset, buf);
        self.keep_budget();
        read
    }

    /// After a checked call brought pages in: evicts if the budget is
    /// exceeded. A write-back that fails leaves its pages dirty and
    /// resident, and the next flush reports it; the call itself succeeded.
    fn keep_budget(&self) {
        if let Err(e) = self.engine.make_room() {
            self.engine
                .record_fault_error(format!("evicting for the budget: {e}"));
        }
    }

    /// Makes the pages under `[offset, offset + len)` resident now, as the
    /// first touch would: for reading (filled from the store), or for
    /// `writing` (blocks allocated too, so a full store is an error here
    /// rather than a signal later). Use it before handing a range to a system
    /// call when the userfaultfd is user-mode only, or to warm a range. The
    /// range must lie within EOF; on failure `done` counts the bytes made ready.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.populate(0, 8192, true)?; // both pages writable now
    /// assert_eq!(store.held_blocks(), 2);
    /// // SAFETY: inside the file, and no reference to these bytes is alive.
    /// unsafe { map.as_ptr().add(4096).write(1) };
    /// let stats = map.stats();
    /// assert_eq!(stats.faults_write_protect + stats.faults_missing_write, 0); // no fault
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// With `done` counting the bytes made ready: [`Error::NoSpace`] or
    /// [`Error::Quota`] (when `writing`); [`Error::OutOfRange`] at a page
    /// wholly past EOF; the store's failures as [`Error::Io`] or
    /// [`Error::LengthChanged`].
    #[doc(alias = "MADV_POPULATE_WRITE")]
    #[doc(alias = "MADV_POPULATE_READ")]
    pub fn populate(&self, offset: u64, len: u64, writing: bool) -> Result<(), PartialError> {
        if writing {
            self.usable_for_writing().map_err(PartialError::none)?;
        } else {
            self.usable().map_err(PartialError::none)?;
        }
        let access = if writing { Access::Write } else { Access::Read };
        self.engine.populate(offset, len, access)
    }

    /// Locks the pages under `[offset, offset + len)` in memory, so eviction
    /// and the kernel's reclaim leave them, without making anything writable:
    /// `mlock2(MLOCK_ONFAULT)`, then the pages below EOF are filled for
    /// reading. Locking never allocates (a plain `mlock(2)` of this memory
    /// would: the kernel populates private memory for writing, so every page
    /// below EOF would fault as a write, allocate its blocks and be flushed).
    /// Pages past EOF are locked as they come to exist.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.lock(0, 8192)?;
    /// assert_eq!(store.held_blocks(), 0); // locked, and nothing allocated
    /// map.evict()?;
    /// assert_eq!(map.stats().pages_resident, 2); // eviction leaves locked pages
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] past the capacity; the kernel's `mlock2` errors
    /// as [`Error::Io`] (`ENOMEM` past `RLIMIT_MEMLOCK`); those of reading
    /// the store.
    #[doc(alias = "mlock")]
    #[doc(alias = "mlock2")]
    pub fn lock(&self, offset: u64, len: u64) -> Result<()> {
        self.usable()?;
        self.engine.lock(offset, len)
    }

    /// Undoes [`lock`](Self::lock) for `[offset, offset + len)`.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.lock(0, 8192)?;
    /// map.unlock(0, 8192)?;
    /// map.evict()?;
    /// assert_eq!(map.stats().pages_resident, 0); // evictable again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] past the capacity; the kernel's `munlock`
    /// errors as [`Error::Io`].
    #[doc(alias = "munlock")]
    pub fn unlock(&self, offset: u64, len: u64) -> Result<()> {
        self.usable()?;
        self.engine.unlock(offset, len)
    }

    /// Allocates the blocks under `[offset, offset + len)` ahead of writing,
    /// like `fallocate`. The range must lie within EOF (call
    /// [`set_len`](Self::set_len) first). On failure, `done` counts the bytes
    /// from `offset` that are reserved.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.reserve(0, 8192)?; // a transaction's pages, before writing them
    /// assert_eq!(store.held_blocks(), 2);
    /// assert!(map.reserve(8192, 1).is_err()); // past EOF
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// With `done` counting the bytes reserved: [`Error::NoSpace`] or
    /// [`Error::Quota`]; [`Error::OutOfRange`] for a range reaching past
    /// EOF; the store's other failures as [`Error::Io`].
    #[doc(alias = "fallocate")]
    pub fn reserve(&self, offset: u64, len: u64) -> Result<(), PartialError> {
        self.usable_for_writing().map_err(PartialError::none)?;
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
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.write(0, &[1; 8192])?;
    /// map.set_len(100)?; // frees the blocks past it
    /// assert_eq!(store.held_blocks(), 1);
    /// map.set_len(8192)?;
    /// let mut buf = [9; 8];
    /// map.read(100, &mut buf)?;
    /// assert_eq!(buf, [0; 8]); // what was cut off reads as zeros
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::BeyondCapacity`] past the capacity given at open (see
    /// [`grow_capacity`](Self::grow_capacity)); the store's failures to
    /// change its length as [`Error::Io`].
    #[doc(alias = "ftruncate")]
    #[doc(alias = "truncate")]
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.usable_for_writing()?;
        self.engine.set_len(len)
    }

    /// Zeroes `[offset, offset + len)` (clipped to EOF) and frees the blocks
    /// wholly inside it. Faults waiting for space
    /// ([`OnFull::Wait`](crate::OnFull::Wait)) retry.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.write(0, &[1; 8192])?;
    /// map.punch_hole(4096, 4096)?;
    /// assert_eq!(store.held_blocks(), 1);
    /// let mut buf = [9; 4];
    /// map.read(4096, &mut buf)?;
    /// assert_eq!(buf, [0; 4]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] past the capacity; the store's failures to
    /// free blocks or read a page as [`Error::Io`].
    #[doc(alias = "FALLOC_FL_PUNCH_HOLE")]
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        self.usable_for_writing()?;
        self.engine.punch_hole(offset, len)
    }

    /// Writes every dirty page's allocated blocks and syncs the store. After
    /// it returns `Ok`, every byte written before it began is durable. On
    /// error the data stays dirty and the next flush writes it.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("table.db");
    /// let map = mkwrite::MappingOptions::new().create(true).open(&path)?;
    /// map.set_len(4096)?;
    /// map.write(0, b"durable")?;
    /// map.flush()?; // written, fdatasync'd, and the new file's directory synced
    /// assert_eq!(&std::fs::read(&path)?[..7], b"durable");
    /// assert_eq!(map.stats().pages_dirty, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The store's write and sync errors as [`Error::Io`];
    /// [`Error::LengthChanged`] if another process resized the file;
    /// [`Error::Discarded`] (once, after everything else was written and
    /// synced) if dirty pages were dropped from memory behind the mapping's
    /// back by `madvise`.
    #[doc(alias = "msync")]
    #[doc(alias = "fdatasync")]
    pub fn flush(&self) -> Result<()> {
        self.usable()?;
        self.wait_async_flushes();
        self.engine.flush(0..self.engine.geo.pages())
    }

    /// Starts writing back every dirty page and syncing, on a thread of its
    /// own, and returns at once (memmap2's `flush_async`). A later
    /// [`flush`](Self::flush) (or [`close`](Self::close)) waits for it first,
    /// then writes what it missed, so after that `flush` returns `Ok` every
    /// byte written before the `flush_async` began is durable. A background
    /// flush that fails leaves its pages dirty; its error is not reported
    /// (the waiting flush retries them and reports its own).
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(8192).map_store(store.clone())?;
    /// map.write(0, b"early")?;
    /// map.flush_async()?;          // write-back starts; this thread goes on
    /// map.write(4096, b"late")?;
    /// map.flush()?;                // waits for it, then writes the rest
    /// assert_eq!(&store.contents()[4096..4100], b"late");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the flushing thread cannot be started.
    #[doc(alias = "MS_ASYNC")]
    pub fn flush_async(&self) -> Result<()> {
        self.usable()?;
        self.start_flush(0..self.engine.geo.pages())
    }

    /// [`flush_async`](Self::flush_async) for the pages overlapping
    /// `[offset, offset + len)`.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(16384)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.write(0, &[1; 8192])?;
    /// map.flush_async_range(4096, 10)?; // starts writing the second page
    /// map.flush()?;                     // waits for it, then writes the first
    /// assert_eq!(&store.contents()[..8192], &[1; 8192][..]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] past the capacity; otherwise as
    /// [`flush_async`](Self::flush_async).
    pub fn flush_async_range(&self, offset: u64, len: u64) -> Result<()> {
        self.usable()?;
        let geo = &self.engine.geo;
        let end = geo.end_within_capacity("flush_async_range beyond the mapping's capacity", offset, len)?;
        self.start_flush(geo.pages_overlapping(&(offset..end)))
    }

    /// Flushes `pages` on a thread of its own; `flush` and `close` wait for it.
    fn start_flush(&self, pages: std::ops::Range<u64>) -> Result<()> {
        let engine = Arc::clone(&self.engine);
        let handle = std::thread::Builder::new()
            .name(format!("{}flush", crate::THREAD_PREFIX))
            .spawn(move || {
                // Failed pages stay dirty for the flush that waits on this one.
                let _ = engine.flush(pages);
            })?;
        self.async_flushes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
        Ok(())
    }

    /// Waits for the flushes [`flush_async`](Self::flush_async) started.
    fn wait_async_flushes(&self) {
        let started = std::mem::take(&mut *self.async_flushes.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in started {
            // A panic in a background flush left its pages dirty; the
            // waiting flush writes them.
            let _ = handle.join();
        }
    }

    /// How the memory will be used, as `madvise(2)` advices say it.
    /// [`Advice::Sequential`] and [`Advice::Random`] set how far faults work
    /// ahead for the whole mapping (reads fill, writes allocate ahead);
    /// [`Advice::Normal`] guesses again; [`Advice::WillNeed`] fills
    /// `[offset, offset + len)` for reading now (within EOF).
    ///
    /// ```
    /// # use mkwrite::{Advice, MappingOptions, MemStore, Store};
    /// # let store = MemStore::new(4096, 64)?;
    /// # store.set_len(65536)?;
    /// # let map = MappingOptions::new().capacity(65536).map_store(store)?;
    /// map.advise(Advice::WillNeed, 0, 65536)?;
    /// assert_eq!(map.stats().pages_resident, 16);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// For [`Advice::WillNeed`], those of [`read`](Self::read):
    /// [`Error::OutOfRange`] at a page wholly past EOF, the store's read
    /// failures. The other advices cannot fail.
    #[doc(alias = "madvise")]
    pub fn advise(&self, advice: Advice, offset: u64, len: u64) -> Result<()> {
        self.usable()?;
        match advice {
            Advice::WillNeed => self
                .engine
                .populate(offset, len, Access::Read)
                .map_err(Error::from),
            _ => {
                self.engine
                    .streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .advice = advice;
                Ok(())
            }
        }
    }

    /// [`flush`](Self::flush) for the pages overlapping `[offset, offset + len)`.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.write(0, &[1; 8192])?;
    /// map.flush_range(0, 10)?; // the first page only
    /// assert_eq!(map.stats().pages_dirty, 1);
    /// assert_eq!(store.contents()[4096], 0); // the second is not in the store yet
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] past the capacity; otherwise as
    /// [`flush`](Self::flush).
    pub fn flush_range(&self, offset: u64, len: u64) -> Result<()> {
        self.usable()?;
        let geo = &self.engine.geo;
        let end = geo.end_within_capacity("flush_range beyond the mapping's capacity", offset, len)?;
        self.engine.flush(geo.pages_overlapping(&(offset..end)))
    }

    /// Drops every clean resident page that is not [locked](Self::lock); they
    /// refill from the store when touched. This is the safe way to give
    /// memory back: `madvise(MADV_DONTNEED)` on the mapping would drop dirty
    /// pages too (reported by the next flush as [`Error::Discarded`]).
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.write(0, &[1; 8192])?;
    /// map.flush()?; // clean now
    /// map.evict()?;
    /// assert_eq!(map.stats().pages_resident, 0);
    /// let mut byte = [0];
    /// map.read(0, &mut byte)?; // refilled from the store
    /// assert_eq!(byte, [1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The kernel's failure to drop the memory (`madvise`) as [`Error::Io`];
    /// [`Error::NotWithKernelDirtyTracking`] under
    /// [`DirtyTracking::Kernel`] (a write between finding a page clean and
    /// dropping it would be lost), with nothing dropped.
    pub fn evict(&self) -> Result<()> {
        self.usable()?;
        if self.engine.kernel_dirty {
            return Err(Error::NotWithKernelDirtyTracking("Mapping::evict"));
        }
        self.engine.evict()
    }

    /// Tells the mapping that the store has room again: faults waiting for
    /// space (policy [`OnFull::Wait`](crate::OnFull::Wait)) retry. Does
    /// nothing in a forked child. Space freed through this mapping
    /// ([`punch_hole`](Self::punch_hole), a shrinking
    /// [`set_len`](Self::set_len)) wakes them by itself; call this when it
    /// was freed elsewhere: another file deleted, a quota raised.
    ///
    /// ```
    /// use mkwrite::{MappingOptions, MemStore, OnFull, QuotaStore, Store};
    /// use std::sync::Arc;
    ///
    /// let store = Arc::new(QuotaStore::new(MemStore::new(4096, 16)?, 0)?); // no room yet
    /// store.set_len(4096)?;
    /// let map = MappingOptions::new().on_full(OnFull::Wait).map_store(store.clone())?;
    /// let memory = map.raw();
    /// std::thread::scope(|s| {
    ///     // SAFETY: inside the file; the mapping outlives the scope.
    ///     s.spawn(move || unsafe { memory.as_ptr().write(1) }); // blocks in the fault
    ///     while map.stats().faults_parked == 0 {
    ///         std::thread::yield_now();
    ///     }
    ///     store.set_limit(1); // the operator raised the quota
    ///     map.notify_space_freed(); // the writer retries, and its store lands
    /// });
    /// assert_eq!(store.held_blocks(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn notify_space_freed(&self) {
        if self.engine.check_owner().is_ok() {
            // Lifting a fence only fails if mprotect does; the doorbell still rings.
            let _ = self.engine.space_freed();
        }
    }

    /// Counters and flag totals. In a forked child only the counters and the
    /// length are filled in (the flags may be locked by a parent thread that
    /// does not exist there).
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.write(0, b"checked")?; // made ready by the call: no fault
    /// // SAFETY: inside the file, and no reference to these bytes is alive.
    /// unsafe { map.as_ptr().add(4096).write(1) }; // a plain store: one fault
    /// let stats = map.stats();
    /// assert_eq!((stats.pages_prepared, stats.faults_missing_write), (1, 1));
    /// assert_eq!((stats.pages_dirty, stats.blocks_allocated), (2, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        if self.engine.check_owner().is_ok() {
            let flags = self.engine.lock_flags();
            stats.blocks_allocated = flags.allocated_blocks();
            stats.pages_resident = flags.resident_count();
            stats.pages_dirty = flags.dirty_count();
        }
        stats.len = self.len();
        stats.block_size = self.engine.geo.block;
        self.engine.counters.snapshot(&mut stats);
        stats
    }

    /// Why the most recent access was failed (SIGBUS, `EFAULT`), for a log.
    /// It takes a lock and allocates: do not call it from a signal handler.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store, guarded};
    /// # let store = MemStore::new(4096, 0)?; // no room at all
    /// # store.set_len(4096)?;
    /// # let map = MappingOptions::new().capacity(4096).map_store(store)?;
    /// guarded::install()?;
    /// // SAFETY: inside the file, and no reference to these bytes is alive.
    /// let failed = unsafe { guarded::fill(map.as_ptr(), 1, 10) };
    /// assert!(failed.is_err());
    /// let why = map.last_fault_error().unwrap();
    /// assert!(why.contains("no space"), "{why}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn last_fault_error(&self) -> Option<String> {
        self.engine.check_owner().ok()?;
        self.engine.last_fault_error()
    }

    /// Checks the flags' invariants (DESIGN rule 1 and residency); for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.usable().map_err(|e| e.to_string())?;
        self.engine.lock_flags().check()
    }

    /// The checks every call makes first: the caller is the process that
    /// opened the mapping, and the handler has not failed.
    fn usable(&self) -> Result<()> {
        self.engine.check_owner()?;
        match self.engine.handler_failure() {
            Some(why) => Err(Error::HandlerFailed(why)),
            None => Ok(()),
        }
    }

    fn usable_for_writing(&self) -> Result<()> {
        self.usable()?;
        self.engine.check_writable()
    }

    fn owned_or_panic(&self) {
        if let Err(e) = self.engine.check_owner() {
            panic!("{e}");
        }
    }

    /// Takes the mapping off the fault service; faults parked for space fail.
    fn stop_serving(&mut self) -> bool {
        let served = std::mem::take(&mut self.served);
        if served {
            self.engine.service.detach(&self.engine);
        }
        served
    }

    /// Grows the reservation to at least `capacity` bytes, for a file that
    /// outgrew it (memmap2's `remap`). The memory moves: pointers from
    /// [`as_ptr`](Self::as_ptr) and [`raw`](Self::raw) before the call are
    /// invalid after it, which `&mut self` makes explicit; no thread may
    /// touch the old memory meanwhile. Every resident page is copied with
    /// its protection, so data, allocation, dirty and locked state are kept.
    /// A smaller `capacity` does nothing.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = MemStore::new(4096, 64)?;
    /// let mut map = MappingOptions::new().capacity(8192).map_store(store)?;
    /// map.set_len(8192)?;
    /// map.write(0, b"kept")?;
    /// map.grow_capacity(1 << 20)?;
    /// map.set_len(1 << 20)?; // past the old capacity
    /// let mut back = [0; 4];
    /// map.read(0, &mut back)?;
    /// assert_eq!(&back, b"kept");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::CapacityUnavailable`] if the address space has no room;
    /// the mapping is then unchanged.
    #[doc(alias = "mremap")]
    #[doc(alias = "remap")]
    pub fn grow_capacity(&mut self, capacity: u64) -> Result<()> {
        self.usable()?;
        if capacity <= self.capacity() {
            return Ok(());
        }
        self.wait_async_flushes();
        self.stop_serving();
        let delivery = self.delivery();
        // No signal handler may read the engine while it changes.
        drop(self.in_thread.take());
        let regrown = match self.engine_alone() {
            Some(engine) => engine.regrow(capacity),
            None => Err(Error::HandlerFailed(
                "the mapping's engine is still shared".into(),
            )),
        };
        self.engine.service.attach(&self.engine);
        self.served = true;
        self.in_thread = register(&self.engine, delivery)?;
        regrown
    }

    /// The engine, once no worker of the fault service holds it any more
    /// (one that took it before [`stop_serving`](Self::stop_serving) lets
    /// go when it has looked at it); `None` if something else keeps it.
    fn engine_alone(&mut self) -> Option<&mut Engine> {
        for _ in 0..10_000 {
            if Arc::get_mut(&mut self.engine).is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        Arc::get_mut(&mut self.engine)
    }

    /// Flushes, then tears down; returns the flush's (or the handler's) error.
    /// In a forked child it does nothing and returns [`Error::Forked`].
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// # store.set_len(8192)?;
    /// # let map = MappingOptions::new().capacity(16384).map_store(store.clone())?;
    /// map.write(0, b"last words")?;
    /// map.close()?; // unlike a drop, a failed last flush is seen
    /// assert_eq!(&store.contents()[..10], b"last words");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`flush`](Self::flush); [`Error::HandlerFailed`] if the
    /// handler failed or its thread panicked; [`Error::Forked`] in a child.
    pub fn close(mut self) -> Result<()> {
        self.engine.check_owner()?;
        self.teardown()
    }

    /// The documented order: flush, leave the fault service, unregister;
    /// the region is unmapped and the store closed when the engine drops.
    fn teardown(&mut self) -> Result<()> {
        if !self.served {
            return Ok(());
        }
        self.wait_async_flushes();
        let flushed = self
            .usable()
            .and_then(|()| self.engine.flush(0..self.engine.geo.pages()));
        self.stop_serving();
        // Wakes any thread still (wrongly) waiting on a fault; nothing else to do.
        let _ = self
            .engine
            .uffd()
            .unregister(self.engine.region.base(), self.engine.region.len() as u64);
        // Waits out any signal handler still inside the engine.
        drop(self.in_thread.take());
        flushed?;
        self.usable()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.engine.check_owner().is_err() {
            // A forked child: the fault service, the memory and the store's
            // state are the parent's. Touch nothing; never drop the engine
            // here (unmapping its address range could hit the child's own
            // mappings there), so leak one reference to it and the handle.
            std::mem::forget(self.in_thread.take());
            std::mem::forget(Arc::clone(&self.engine));
            return;
        }
        // Best effort: a caller who needs the flush's error calls `close`.
        let _ = self.teardown();
    }
}

#[cfg(target_arch = "x86_64")]
type Registration = crate::in_thread::Registration;
#[cfg(not(target_arch = "x86_64"))]
type Registration = ();

/// Registers `engine` with the signal handler if its faults are delivered in-thread.
fn register(engine: &Arc<Engine>, delivery: Delivery) -> Result<Option<Registration>> {
    match delivery {
        Delivery::HandlerThread => Ok(None),
        #[cfg(target_arch = "x86_64")]
        Delivery::InThread => crate::in_thread::register(engine).map(Some),
        #[cfg(not(target_arch = "x86_64"))]
        Delivery::InThread => Err(Error::MissingFeature("in-thread delivery (x86-64 only)")),
    }
}

// The mapping is shared across threads by design; keep it that way.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Mapping>();
};
