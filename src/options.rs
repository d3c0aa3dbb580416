//! How a mapping is opened, and what it does when the store is full.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::store::{FileStore, Store, Window};

/// A write fault that could not allocate its blocks, as shown to an
/// [`OnFull::callback`].
///
/// ```
/// use mkwrite::{FullAction, MappingOptions, MemStore, OnFull, Store, guarded};
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let policy = OnFull::callback(move |fault| {
///     log.lock().unwrap().push((fault.offset, fault.error.is_full()));
///     FullAction::Sigbus
/// });
/// # let store = MemStore::new(4096, 1)?; // room for one page
/// # store.set_len(8192)?;
/// let map = MappingOptions::new().capacity(8192).on_full(policy).map_store(store)?;
/// guarded::install()?;
/// // SAFETY: inside the file, and no reference to these bytes is alive.
/// unsafe { guarded::fill(map.as_ptr(), 1, 8192) }.unwrap_err(); // the second page is full
/// assert_eq!(seen.lock().unwrap()[..], [(4096, true)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct FullFault<'a> {
    /// File offset of the faulting address.
    pub offset: u64,
    /// Kernel thread id of the faulting thread.
    pub thread: i32,
    /// [`Error::NoSpace`] or [`Error::Quota`].
    pub error: &'a Error,
}

/// What to do with a write fault the store has no room for: an
/// [`OnFull::callback`]'s answer.
///
/// ```
/// use mkwrite::{Error, FullAction, MappingOptions, MemStore, OnFull, Store, guarded};
///
/// let policy = OnFull::callback(|fault| match fault.error {
///     Error::Quota(_) => FullAction::Wait, // an operator may raise the quota
///     _ => FullAction::Sigbus,             // the disk is full: fail the write
/// });
/// # let store = MemStore::new(4096, 0)?; // a full disk
/// # store.set_len(4096)?;
/// let map = MappingOptions::new().capacity(4096).on_full(policy).map_store(store)?;
/// guarded::install()?;
/// // SAFETY: inside the file, and no reference to these bytes is alive.
/// let err = unsafe { guarded::fill(map.as_ptr(), 1, 10) }.unwrap_err();
/// assert_eq!(err.cause, guarded::FaultCause::NoSpace);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullAction {
    /// Send SIGBUS to the faulting thread, as the kernel does.
    Sigbus,
    /// Keep the thread blocked until [`Mapping::notify_space_freed`] (or a
    /// hole punch or shrink on this mapping), then try again.
    Wait,
    /// Try the allocation again now (after the callback freed space itself).
    Retry,
}

type Callback = dyn Fn(&FullFault<'_>) -> FullAction + Send + Sync;

/// The mapping's policy for write faults that find the store full
/// (DESIGN rule 3). Checked calls ([`Mapping::write`], [`Mapping::reserve`])
/// never use it: they return the error. Each variant has an example of
/// its own.
///
/// ```
/// use mkwrite::{MappingOptions, MemStore, OnFull};
/// let cleaner_running = true; // something that frees space, or not
/// let policy = if cleaner_running { OnFull::Wait } else { OnFull::default() };
/// let map = MappingOptions::new().on_full(policy).map_store(MemStore::new(4096, 16)?)?;
/// assert!(matches!(OnFull::default(), OnFull::Sigbus)); // as the kernel's mmap
/// # Ok::<(), mkwrite::Error>(())
/// ```
#[derive(Clone, Default)]
pub enum OnFull {
    /// SIGBUS to the faulting thread (the default, as the kernel does). It
    /// arrives with `si_code == SI_QUEUE`, the fault address in `si_value`,
    /// and `ENOSPC` or `EDQUOT` in `si_errno`. A system call that faulted
    /// gets `EFAULT` instead. [`guarded`](crate::guarded) turns the signal
    /// into an error for one copy.
    ///
    /// ```
    /// use mkwrite::{MappingOptions, MemStore, OnFull, Store, guarded};
    ///
    /// # let store = MemStore::new(4096, 1)?; // room for one page
    /// # store.set_len(8192)?;
    /// let map = MappingOptions::new().capacity(8192).on_full(OnFull::Sigbus).map_store(store)?;
    /// guarded::install()?; // SIGBUS becomes an error for a guarded copy
    /// // SAFETY: inside the file, and no reference to these bytes is alive.
    /// let err = unsafe { guarded::fill(map.as_ptr(), 1, 8192) }.unwrap_err();
    /// assert_eq!((err.cause, err.done), (guarded::FaultCause::NoSpace, 4096));
    /// assert_eq!(map.stats().sigbus_sent, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[default]
    Sigbus,
    /// Block the faulting thread until space is freed: by
    /// [`Mapping::notify_space_freed`], or by a hole punch or shrink on the
    /// mapping. A full store then stalls writers instead of failing them.
    ///
    /// ```
    /// use mkwrite::{MappingOptions, MemStore, OnFull, Store};
    ///
    /// let disk = std::sync::Arc::new(MemStore::new(4096, 1)?); // room for one block
    /// disk.set_len(8192)?;
    /// let log = MappingOptions::new().len(4096).map_store(disk.clone())?;
    /// let table = MappingOptions::new().offset(4096).on_full(OnFull::Wait).map_store(disk.clone())?;
    /// log.write(0, b"old log")?; // takes the only block
    /// let memory = table.raw();
    /// std::thread::scope(|s| {
    ///     // SAFETY: inside the file; the mapping outlives the scope.
    ///     s.spawn(move || unsafe { memory.as_ptr().write(1) }); // waits for space
    ///     while table.stats().faults_parked == 0 {
    ///         std::thread::yield_now();
    ///     }
    ///     log.punch_hole(0, 4096).unwrap(); // the log was checkpointed: its block is free
    ///     table.notify_space_freed(); // the table's writer retries, and its store lands
    /// });
    /// let mut byte = [0];
    /// table.read(0, &mut byte)?;
    /// assert_eq!(byte, [1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    Wait,
    /// Ask a function, called on a thread of the fault service. It must not touch the
    /// mapping's memory or call its methods. Made by [`OnFull::callback`].
    ///
    /// ```
    /// use mkwrite::{FullAction, MappingOptions, MemStore, OnFull, QuotaStore, Store};
    /// use std::sync::Arc;
    ///
    /// let store = Arc::new(QuotaStore::new(MemStore::new(4096, 16)?, 1)?); // one block's quota
    /// store.set_len(8192)?;
    /// let quota = store.clone();
    /// let policy = OnFull::callback(move |_fault| {
    ///     quota.set_limit(16); // free space on demand, then try again
    ///     FullAction::Retry
    /// });
    /// let mut map = MappingOptions::new().on_full(policy).map_store(store.clone())?;
    /// map.as_mut_slice().fill(1); // the second page's fault asks the callback
    /// assert_eq!(store.held_blocks(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    Callback(Arc<Callback>),
}

impl OnFull {
    /// A policy that asks `f` for each full fault.
    ///
    /// ```
    /// use mkwrite::{FullAction, MappingOptions, MemStore, OnFull, Store, guarded};
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let counter = calls.clone();
    /// let policy = OnFull::callback(move |_fault| {
    ///     counter.fetch_add(1, Ordering::Relaxed); // e.g. log it, alert someone
    ///     FullAction::Sigbus
    /// });
    /// # let store = MemStore::new(4096, 0)?; // no room at all
    /// # store.set_len(4096)?;
    /// let map = MappingOptions::new().capacity(4096).on_full(policy).map_store(store)?;
    /// guarded::install()?;
    /// // SAFETY: inside the file, and no reference to these bytes is alive.
    /// assert!(unsafe { guarded::fill(map.as_ptr(), 1, 10) }.is_err());
    /// assert!(map.write(0, b"checked").is_err()); // checked calls never ask it
    /// assert_eq!(calls.load(Ordering::Relaxed), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn callback(f: impl Fn(&FullFault<'_>) -> FullAction + Send + Sync + 'static) -> OnFull {
        OnFull::Callback(Arc::new(f))
    }

    pub(crate) fn decide(&self, fault: &FullFault<'_>) -> FullAction {
        match self {
            OnFull::Sigbus => FullAction::Sigbus,
            OnFull::Wait => FullAction::Wait,
            OnFull::Callback(f) => f(fault),
        }
    }
}

impl fmt::Debug for OnFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnFull::Sigbus => f.write_str("Sigbus"),
            OnFull::Wait => f.write_str("Wait"),
            OnFull::Callback(_) => f.write_str("Callback(..)"),
        }
    }
}

/// How a mapping's faults reach the code that resolves them; see
/// [`MappingOptions::delivery`](crate::MappingOptions::delivery).
///
/// ```
/// use mkwrite::{Delivery, MappingOptions};
/// # let dir = tempfile::tempdir()?;
/// let map = MappingOptions::new()
///     .delivery(Delivery::InThread)
///     .create(true)
///     .open(dir.path().join("data.db"))?;
/// map.set_len(4096)?;
/// // SAFETY: inside the file, and no reference to these bytes is alive.
/// unsafe { map.as_ptr().write(7) }; // resolved in this thread's SIGBUS handler
/// assert_eq!(map.stats().faults_in_thread, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// A thread of the process's fault service (a small pool every mapping
    /// shares) reads fault messages from the userfaultfd and resolves
    /// them; the faulting thread sleeps meanwhile (two
    /// wake-ups a fault). System calls on unprepared pages (`read(2)`
    /// into the mapping) work: they wait for the fault like a thread does.
    #[default]
    HandlerThread,
    /// The faulting thread resolves its own fault in a SIGBUS handler
    /// (x86-64). About ten times faster a fault; but a system call that
    /// touches a missing or write-protected page fails with `EFAULT`, so
    /// [`Mapping::populate`](crate::Mapping::populate) a range before handing
    /// it to `read(2)`, `pwrite(2)` or `O_DIRECT`. Needs `/proc/self/mem`.
    /// Over a store without [`signal_safe`](crate::Store::signal_safe)
    /// calls every fault is handed to the fault service.
    InThread,
}

/// Who finds the pages written since the last flush; see
/// [`MappingOptions::dirty_tracking`](crate::MappingOptions::dirty_tracking).
///
/// ```
/// use mkwrite::{DirtyTracking, MappingOptions};
/// # let dir = tempfile::tempdir()?;
/// let map = MappingOptions::new()
///     .dirty_tracking(DirtyTracking::Kernel)
///     .create(true)
///     .open(dir.path().join("data.db"))?;
/// map.set_len(4096)?;
/// map.write(0, b"once")?; // allocates the page's blocks, as always
/// map.flush()?;
/// // SAFETY: inside the file, and no reference to these bytes is alive.
/// unsafe { map.as_ptr().write(b'O') }; // no fault: the kernel notes the write
/// map.flush()?; // finds the page written, and writes it
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DirtyTracking {
    /// Every first write to a clean page faults, and the fault marks it
    /// dirty: a write after a flush costs a fault (a few µs in-thread, tens
    /// with a handler thread). Everything is supported.
    #[default]
    Faults,
    /// The kernel resolves write faults on pages whose blocks are held
    /// (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7+) and a flush asks it which pages
    /// were written (`PAGEMAP_SCAN`): a write after a flush costs no fault.
    /// The rule that no write lands without its blocks holds because no
    /// page is in memory without them: the first *read* of a page whose
    /// blocks are not allocated allocates them (so reading a hole uses
    /// space, and a full store fails that read by the [`OnFull`] policy).
    ///
    /// What cannot be kept safe without stopping writers (the kernel lets
    /// them through) is refused with
    /// [`Error::NotWithKernelDirtyTracking`](crate::Error::NotWithKernelDirtyTracking):
    /// blocks smaller than a page, a [`Budget`](crate::Budget), and
    /// [`Mapping::evict`](crate::Mapping::evict). And a page dropped behind
    /// the mapping's back (`madvise(MADV_DONTNEED)`) is reported lost
    /// ([`Error::Discarded`](crate::Error::Discarded)) even if it was clean,
    /// since nothing says whether it was written.
    ///
    /// On a kernel without `WP_ASYNC` the mapping tracks by faults instead;
    /// [`Mapping::dirty_tracking`](crate::Mapping::dirty_tracking) says which it got.
    Kernel,
}

/// Default capacity when none is given: room to grow without remapping.
/// A file longer than it gets its own length.
///
/// ```
/// use mkwrite::{DEFAULT_CAPACITY, MappingOptions, MemStore};
/// let map = MappingOptions::new().map_store(MemStore::new(4096, 16)?)?;
/// assert_eq!(map.capacity(), DEFAULT_CAPACITY); // address space only: no memory is used
/// # Ok::<(), mkwrite::Error>(())
/// ```
pub const DEFAULT_CAPACITY: u64 = 1 << 30;

/// Options for opening a [`Mapping`], in the spirit of `memmap2::MmapOptions`.
///
/// ```
/// use mkwrite::{MappingOptions, OnFull};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("data.db");
/// let map = MappingOptions::new()
///     .capacity(64 << 20)
///     .block_size(1024)
///     .on_full(OnFull::Wait)
///     .create(true)
///     .open(&path)?;
/// assert_eq!((map.len(), map.block_size()), (0, 1024));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct MappingOptions {
    pub(crate) capacity: Option<u64>,
    pub(crate) block_size: Option<u64>,
    pub(crate) on_full: OnFull,
    pub(crate) create: bool,
    pub(crate) uffd_fallback: bool,
    pub(crate) uffd_user_mode_only: bool,
    pub(crate) read_only: bool,
    /// The window: where in the file the mapping starts, and how far it reaches.
    pub(crate) offset: u64,
    pub(crate) len: Option<u64>,
    pub(crate) delivery: Delivery,
    pub(crate) budget: Option<crate::Budget>,
    pub(crate) dirty_tracking: DirtyTracking,
}

impl Default for MappingOptions {
    fn default() -> Self {
        MappingOptions {
            capacity: None,
            block_size: None,
            on_full: OnFull::Sigbus,
            create: false,
            uffd_fallback: true,
            uffd_user_mode_only: false,
            read_only: false,
            offset: 0,
            len: None,
            delivery: Delivery::default(),
            budget: None,
            dirty_tracking: DirtyTracking::default(),
        }
    }
}

impl MappingOptions {
    /// Default options: capacity `max(len, 1 GiB)`, the filesystem's block size, SIGBUS when full.
    ///
    /// ```
    /// use mkwrite::{MappingOptions, MemStore};
    /// let map = MappingOptions::new().map_store(MemStore::new(4096, 16)?)?;
    /// assert_eq!(map.capacity(), mkwrite::DEFAULT_CAPACITY);
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn new() -> MappingOptions {
        MappingOptions::default()
    }

    /// How far the file may grow without remapping (rounded up to pages and
    /// blocks). Reserving address space costs no memory; past it,
    /// [`Mapping::set_len`] fails until [`Mapping::grow_capacity`].
    ///
    /// ```
    /// use mkwrite::{Error, MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(1 << 20).map_store(MemStore::new(4096, 16)?)?;
    /// map.set_len(1 << 20)?;
    /// assert!(matches!(map.set_len((1 << 20) + 1), Err(Error::BeyondCapacity { .. })));
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn capacity(&mut self, bytes: u64) -> &mut Self {
        self.capacity = Some(bytes);
        self
    }

    /// Block size of the [`FileStore`] that [`open`](Self::open) makes: a
    /// power of two from 512 B to 1 MiB. A store given to
    /// [`map_store`](Self::map_store) keeps its own.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("data.db");
    /// let map = mkwrite::MappingOptions::new().block_size(512).create(true).open(&path)?;
    /// assert_eq!(map.block_size(), 512);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn block_size(&mut self, bytes: u64) -> &mut Self {
        self.block_size = Some(bytes);
        self
    }

    /// What a write fault does when the store is full (see [`OnFull`]).
    /// Checked calls never ask it: they return the error.
    ///
    /// ```
    /// use mkwrite::{Error, MappingOptions, MemStore, OnFull, Store};
    /// # let store = MemStore::new(4096, 0)?; // no room at all
    /// # store.set_len(4096)?;
    /// let map = MappingOptions::new().on_full(OnFull::Wait).map_store(store)?;
    /// let err = map.write(0, b"x").unwrap_err(); // no waiting here
    /// assert!(matches!(err.error, Error::NoSpace(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_full(&mut self, policy: OnFull) -> &mut Self {
        self.on_full = policy;
        self
    }

    /// How faults reach the code that resolves them (see [`Delivery`]): a
    /// worker of the fault service (the default: every system call on the mapping works
    /// as with the kernel's `mmap`), or the faulting thread itself (about
    /// ten times faster a fault; system calls need
    /// [`populate`](Mapping::populate) first).
    ///
    /// ```
    /// use mkwrite::{Delivery, MappingOptions};
    /// # let dir = tempfile::tempdir()?;
    /// let map = MappingOptions::new().delivery(Delivery::InThread).create(true).open(dir.path().join("f"))?;
    /// assert_eq!(map.delivery(), Delivery::InThread);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delivery(&mut self, delivery: Delivery) -> &mut Self {
        self.delivery = delivery;
        self
    }

    /// Who finds the pages written since the last flush: faults
    /// ([`DirtyTracking::Faults`], the default: every write after a flush
    /// faults once) or the kernel ([`DirtyTracking::Kernel`]: such writes
    /// cost nothing, with the limits that variant lists).
    ///
    /// ```
    /// use mkwrite::{Budget, DirtyTracking, Error, MappingOptions, MemStore};
    /// let refused = MappingOptions::new()
    ///     .dirty_tracking(DirtyTracking::Kernel)
    ///     .budget(&Budget::new(1 << 20))
    ///     .map_store(MemStore::new(4096, 16)?);
    /// assert!(matches!(refused, Err(Error::NotWithKernelDirtyTracking(_))));
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn dirty_tracking(&mut self, tracking: DirtyTracking) -> &mut Self {
        self.dirty_tracking = tracking;
        self
    }

    /// Create the file if it does not exist (empty), as `O_CREAT` does.
    ///
    /// ```
    /// use mkwrite::{Error, MappingOptions};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("new.db");
    /// assert!(matches!(MappingOptions::new().open(&path), Err(Error::Open { .. })));
    /// let map = MappingOptions::new().create(true).open(&path)?;
    /// assert!(map.is_empty() && path.exists());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "O_CREAT")]
    pub fn create(&mut self, yes: bool) -> &mut Self {
        self.create = yes;
        self
    }

    /// Whether to fall back to `/dev/userfaultfd` and `UFFD_USER_MODE_ONLY`
    /// when the `userfaultfd` system call is refused (default: true). Off,
    /// an unprivileged process gets [`Error::Userfaultfd`] rather than a
    /// mapping whose system calls may fail with `EFAULT`.
    ///
    /// ```
    /// use mkwrite::{MappingOptions, MemStore, UffdOrigin};
    /// let map = MappingOptions::new()
    ///     .userfaultfd_fallback(false)
    ///     .map_store(MemStore::new(4096, 16)?)?;
    /// assert_ne!(map.userfaultfd_origin(), UffdOrigin::UserModeOnly);
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    #[doc(alias = "UFFD_USER_MODE_ONLY")]
    pub fn userfaultfd_fallback(&mut self, yes: bool) -> &mut Self {
        self.uffd_fallback = yes;
        self
    }

    /// Use `UFFD_USER_MODE_ONLY` even where the full userfaultfd is allowed:
    /// what an unprivileged process gets (see
    /// [`Mapping::userfaultfd_origin`]). For testing a program (and mkwrite)
    /// under that mode as root.
    ///
    /// ```
    /// use mkwrite::{MappingOptions, MemStore, UffdOrigin};
    /// let map = MappingOptions::new()
    ///     .userfaultfd_user_mode_only(true)
    ///     .map_store(MemStore::new(4096, 16)?)?;
    /// assert_eq!(map.userfaultfd_origin(), UffdOrigin::UserModeOnly);
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn userfaultfd_user_mode_only(&mut self, yes: bool) -> &mut Self {
        self.uffd_user_mode_only = yes;
        self
    }

    /// Keep this mapping's resident pages within `budget` (shared with every
    /// other mapping given a clone of it): past it, pages are evicted, dirty
    /// ones written back first. See [`Budget`](crate::Budget).
    ///
    /// ```
    /// use mkwrite::{Budget, MappingOptions, MemStore};
    /// let budget = Budget::new(16 << 20);
    /// let a = MappingOptions::new().budget(&budget).map_store(MemStore::new(4096, 16)?)?;
    /// let b = MappingOptions::new().budget(&budget).map_store(MemStore::new(4096, 16)?)?;
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn budget(&mut self, budget: &crate::Budget) -> &mut Self {
        self.budget = Some(budget.clone());
        self
    }

    /// Map for reading only: [`open`](Self::open) opens the file read-only
    /// (so a file the process may only read can be mapped), the memory is
    /// read-only (a store through it gets SIGSEGV, a system call `EFAULT`, as
    /// with a `PROT_READ` mmap), and every call that would change the file
    /// returns [`Error::ReadOnlyMapping`].
    ///
    /// ```
    /// use mkwrite::{Error, MappingOptions};
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("hostname");
    /// # std::fs::write(&path, b"db1\n")?;
    /// let map = MappingOptions::new().read_only(true).open(&path)?;
    /// let mut name = vec![0; map.len() as usize];
    /// map.read(0, &mut name)?;
    /// assert_eq!(name, b"db1\n");
    /// assert!(matches!(map.write(0, b"x").unwrap_err().error, Error::ReadOnlyMapping));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_only(&mut self, yes: bool) -> &mut Self {
        self.read_only = yes;
        self
    }

    /// Maps the file at `path` through a [`FileStore`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("table.db");
    /// let map = mkwrite::MappingOptions::new().capacity(1 << 20).create(true).open(&path)?;
    /// map.set_len(8192)?;
    /// map.write(0, b"row 1")?;
    /// map.flush()?;
    /// assert_eq!(std::fs::metadata(&path)?.len(), 8192);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Open`] naming the file if it cannot be opened (it does not
    /// exist and [`create`](Self::create) is off, say), [`Error::ReadOnly`] if
    /// it may not be written and [`read_only`](Self::read_only) is off;
    /// [`Error::ReadOnlyMapping`] for `read_only` with `create`;
    /// [`Error::InvalidBlockSize`] for a bad [`block_size`](Self::block_size);
    /// and those of [`map_store`](Self::map_store).
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Mapping> {
        if self.read_only {
            if self.create {
                return Err(Error::ReadOnlyMapping);
            }
            let store = FileStore::open_read_only(path)?;
            let store = match self.block_size {
                Some(b) => store.with_block_size(b)?,
                None => store,
            };
            return self.map_store(store);
        }
        let store = if self.create {
            FileStore::create(path)?
        } else {
            FileStore::open(path)?
        };
        let store = match self.block_size {
            Some(b) => store.with_block_size(b)?,
            None => store,
        };
        self.map_store(store)
    }

    /// Maps the file on the NBD export at `uri` through an
    /// [`NbdStore`](crate::NbdStore): [`create`](Self::create) initialises a
    /// blank export, [`block_size`](Self::block_size) is a new export's block size.
    ///
    /// ```no_run
    /// let map = mkwrite::MappingOptions::new()
    ///     .create(true)
    ///     .open_nbd("nbd+unix:///db?socket=/run/nbd.sock")?;
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Open`] naming the URI, as [`NbdOptions::connect`](crate::NbdOptions::connect) says.
    pub fn open_nbd(&self, uri: &str) -> Result<Mapping> {
        let mut nbd = crate::NbdOptions::new();
        nbd.create(self.create);
        if let Some(b) = self.block_size {
            nbd.block_size(b);
        }
        self.map_store(nbd.connect(uri)?)
    }

    /// Maps any store: one of this crate's, or your own [`Store`].
    ///
    /// ```
    /// use mkwrite::{MappingOptions, MemStore, QuotaStore, Store};
    /// let store = QuotaStore::new(MemStore::new(4096, 1024)?, 16)?; // a 64 KiB quota
    /// store.set_len(1 << 20)?;
    /// let map = MappingOptions::new().map_store(store)?;
    /// assert_eq!(map.len(), 1 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBlockSize`] for a store's (or
    /// [`block_size`](Self::block_size)'s) bad block size;
    /// [`Error::CapacityBelowLength`] for a [`capacity`](Self::capacity)
    /// below the store's length; [`Error::CapacityUnavailable`] when the
    /// address space has no room for it; [`Error::Userfaultfd`] when the
    /// process may not create a userfaultfd, [`Error::MissingFeature`] on a
    /// kernel older than 5.7; [`Error::Io`] for an [`offset`](Self::offset)
    /// off a block boundary (`InvalidInput`), the store's failure to list
    /// its blocks, or the kernel's to set the mapping up.
    pub fn map_store<S: Store + 'static>(&self, store: S) -> Result<Mapping> {
        if let Some(b) = self.block_size
            && b != store.block_size()
        {
            crate::geometry::check_block_size(b)?;
        }
        if self.offset == 0 && self.len.is_none() {
            return Mapping::new(Box::new(store), self);
        }
        let len = self
            .len
            .unwrap_or_else(|| store.len().saturating_sub(self.offset));
        // An offset off a block boundary: InvalidInput, saying so.
        let window = Window::new(store, self.offset, len).map_err(Error::Io)?;
        let mut opts = self.clone();
        opts.capacity.get_or_insert(len);
        Mapping::new(Box::new(window), &opts)
    }

    /// Maps the file from `offset` on (a multiple of the block size), as
    /// memmap2's `MmapOptions::offset`: offset 0 of the mapping is `offset`
    /// of the file, and the mapping reads, allocates and writes only inside
    /// its window (see [`len`](Self::len)). A window cannot change the
    /// file's length.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// store.set_len(16384)?;
    /// let map = MappingOptions::new().offset(8192).len(4096).map_store(store.clone())?;
    /// map.write(0, b"in the window")?;
    /// map.flush()?;
    /// assert_eq!(&store.contents()[8192..8205], b"in the window");
    /// assert_eq!(store.held_blocks(), 1); // only the window's block
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn offset(&mut self, offset: u64) -> &mut Self {
        self.offset = offset;
        self
    }

    /// How far the window reaches from [`offset`](Self::offset) (default: to
    /// the file's end); the mapping's length is the part of it the file
    /// covers, and its capacity defaults to it.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore, Store};
    /// let store = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// store.set_len(10_000)?;
    /// let map = MappingOptions::new().offset(8192).len(8192).map_store(store.clone())?;
    /// assert_eq!(map.len(), 10_000 - 8192); // the file ends inside the window
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&mut self, len: u64) -> &mut Self {
        self.len = Some(len);
        self
    }
}
