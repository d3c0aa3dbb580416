//! The mapping's memory as a plain value that may cross threads.

/// A mapping's memory: its start and its length (the capacity). Unlike
/// `*mut u8` it is `Send + Sync` and `Copy`, so handing the memory to a
/// thread needs no cast. Accessing it is as with
/// [`Mapping::as_ptr`](crate::Mapping::as_ptr): the caller keeps Rust's
/// aliasing rules, and the memory lives only as long as the mapping.
///
/// ```
/// use mkwrite::{MappingOptions, MemStore, Store};
/// let store = MemStore::new(4096, 16)?;
/// store.set_len(8192)?;
/// let map = MappingOptions::new().capacity(8192).map_store(store)?;
/// let memory = map.raw();
/// std::thread::scope(|s| {
///     s.spawn(move || {
///         // SAFETY: inside the file, and the mapping outlives the scope.
///         unsafe { memory.as_ptr().add(4096).write_volatile(7) };
///     });
/// });
/// let mut byte = [0];
/// map.read(4096, &mut byte)?;
/// assert_eq!(byte, [7]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a RawMemory is an address and a length; it grants no access by
// itself. Every access through it is an unsafe raw-pointer access whose
// caller promises what a `*mut u8` caller would, and the memory itself is
// shared by design (any number of threads may fault on it at once).
#[allow(unsafe_code)]
unsafe impl Send for RawMemory {}
// SAFETY: as for Send.
#[allow(unsafe_code)]
unsafe impl Sync for RawMemory {}

impl RawMemory {
    pub(crate) fn new(ptr: *mut u8, len: usize) -> RawMemory {
        RawMemory { ptr, len }
    }

    /// The start of the memory: [`Mapping::as_ptr`](crate::Mapping::as_ptr).
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(8192).map_store(MemStore::new(4096, 2)?)?;
    /// assert_eq!(map.raw().as_ptr(), map.as_ptr());
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn as_ptr(self) -> *mut u8 {
        self.ptr
    }

    /// Its length in bytes: the mapping's capacity, not the file's length.
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(8192).map_store(MemStore::new(4096, 2)?)?;
    /// assert_eq!((map.raw().len(), map.len()), (8192, 0));
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn len(self) -> usize {
        self.len
    }

    /// True for a mapping of no capacity (which the rounding up to whole
    /// pages makes rare: a capacity of 0 is one).
    ///
    /// ```
    /// # use mkwrite::{MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(1).map_store(MemStore::new(4096, 2)?)?;
    /// assert!(!map.raw().is_empty()); // one page
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
}
