//! How a mapping is opened, and what it does when the store is full.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::store::{FileStore, Store, Window};

/// A write fault that could not allocate its blocks, as shown to an
/// [`OnFull::callback`].
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

/// What to do with a write fault the store has no room for.
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
/// never use it: they return the error.
#[derive(Clone, Default)]
pub enum OnFull {
    /// SIGBUS to the faulting thread (the default, as the kernel does). It
    /// arrives with `si_code == SI_QUEUE`, the fault address in `si_value`,
    /// and `ENOSPC` or `EDQUOT` in `si_errno`. A system call that faulted
    /// gets `EFAULT` instead. [`guarded`](crate::guarded) turns the signal
    /// into an error for one copy.
    #[default]
    Sigbus,
    /// Block the faulting thread until space is freed.
    Wait,
    /// Ask a function, called on the handler thread. It must not touch the
    /// mapping's memory or call its methods.
    Callback(Arc<Callback>),
}

impl OnFull {
    /// A policy that asks `f` for each full fault.
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

/// Default capacity when none is given: room to grow without remapping.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;

/// Options for opening a [`Mapping`], in the spirit of `memmap2::MmapOptions`.
///
/// ```no_run
/// use mkwrite::{MappingOptions, OnFull};
/// let map = MappingOptions::new()
///     .capacity(64 << 20)
///     .block_size(1024)
///     .on_full(OnFull::Wait)
///     .create(true)
///     .open("data.db")?;
/// # Ok::<(), mkwrite::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MappingOptions {
    pub(crate) capacity: Option<u64>,
    pub(crate) block_size: Option<u64>,
    pub(crate) on_full: OnFull,
    pub(crate) create: bool,
    pub(crate) uffd_fallback: bool,
    pub(crate) read_only: bool,
    /// The window: where in the file the mapping starts, and how far it reaches.
    pub(crate) offset: u64,
    pub(crate) len: Option<u64>,
}

impl Default for MappingOptions {
    fn default() -> Self {
        MappingOptions {
            capacity: None,
            block_size: None,
            on_full: OnFull::Sigbus,
            create: false,
            uffd_fallback: true,
            read_only: false,
            offset: 0,
            len: None,
        }
    }
}

impl MappingOptions {
    /// Default options: capacity `max(len, 1 GiB)`, the filesystem's block size, SIGBUS when full.
    pub fn new() -> MappingOptions {
        MappingOptions::default()
    }

    /// How far the file may grow without remapping (rounded up to pages and blocks).
    pub fn capacity(&mut self, bytes: u64) -> &mut Self {
        self.capacity = Some(bytes);
        self
    }

    /// Block size of the [`FileStore`] that [`open`](Self::open) makes.
    pub fn block_size(&mut self, bytes: u64) -> &mut Self {
        self.block_size = Some(bytes);
        self
    }

    /// What a write fault does when the store is full.
    pub fn on_full(&mut self, policy: OnFull) -> &mut Self {
        self.on_full = policy;
        self
    }

    /// Create the file if it does not exist.
    pub fn create(&mut self, yes: bool) -> &mut Self {
        self.create = yes;
        self
    }

    /// Whether to fall back to `/dev/userfaultfd` and `UFFD_USER_MODE_ONLY`
    /// when the `userfaultfd` system call is refused (default: true).
    pub fn userfaultfd_fallback(&mut self, yes: bool) -> &mut Self {
        self.uffd_fallback = yes;
        self
    }

    /// Map for reading only: [`open`](Self::open) opens the file read-only
    /// (so a file the process may only read can be mapped), the memory is
    /// read-only (a store through it gets SIGSEGV, a system call `EFAULT`, as
    /// with a `PROT_READ` mmap), and every call that would change the file
    /// returns [`Error::ReadOnlyMapping`].
    ///
    /// ```no_run
    /// let map = mkwrite::MappingOptions::new().read_only(true).open("/etc/hostname")?;
    /// let mut name = vec![0; map.len() as usize];
    /// map.read(0, &mut name)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_only(&mut self, yes: bool) -> &mut Self {
        self.read_only = yes;
        self
    }

    /// Maps the file at `path` through a [`FileStore`].
    ///
    /// # Errors
    ///
    /// [`Error::Open`] naming the file if it cannot be opened (it does not
    /// exist and [`create`](Self::create) is off, say), [`Error::ReadOnly`] if
    /// it may not be written and [`read_only`](Self::read_only) is off.
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

    /// Maps any store.
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
    pub fn len(&mut self, len: u64) -> &mut Self {
        self.len = Some(len);
        self
    }
}
