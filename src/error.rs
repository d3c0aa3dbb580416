//! The crate's one error type.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in mkwrite.
///
/// No-space and quota are their own variants so a database can tell "the disk
/// is full" from "the disk is broken"; their [`io::ErrorKind`] is
/// [`StorageFull`](io::ErrorKind::StorageFull) and
/// [`QuotaExceeded`](io::ErrorKind::QuotaExceeded).
///
/// ```
/// use mkwrite::{Error, MappingOptions, MemStore, QuotaStore, Store};
/// use std::io::ErrorKind;
///
/// let store = QuotaStore::new(MemStore::new(4096, 16)?, 0)?; // a quota of nothing
/// store.set_len(4096)?;
/// let map = MappingOptions::new().capacity(4096).map_store(store)?;
/// let err = map.write(0, b"row").unwrap_err().error;
/// match &err {
///     Error::NoSpace(_) | Error::Quota(_) => {} // full: fail this transaction, go on
///     other => panic!("the store is broken: {other}"),
/// }
/// assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
/// let io: std::io::Error = err.into(); // for callers that speak io::Error
/// assert_eq!(io.kind(), ErrorKind::QuotaExceeded);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store has no free block for a write (`ENOSPC`).
    #[error("no space left in the store: {0}")]
    NoSpace(#[source] io::Error),

    /// The store's quota would be exceeded (`EDQUOT`).
    #[error("store quota exceeded: {0}")]
    Quota(#[source] io::Error),

    /// An offset or length outside what the mapping covers.
    #[error("{what}: range {offset}..{end} is outside 0..{limit}")]
    OutOfRange {
        /// Which limit was crossed (the file's end, the capacity, ...).
        what: &'static str,
        /// Start of the requested range.
        offset: u64,
        /// End of the requested range (saturated on overflow).
        end: u64,
        /// The limit it crossed.
        limit: u64,
    },

    /// A block size that is not a power of two from 512 B to 1 MiB.
    #[error("invalid block size {0}: must be a power of two from 512 B to 1 MiB")]
    InvalidBlockSize(u64),

    /// A capacity smaller than the file it must hold.
    #[error("capacity {capacity} is below the file's length {len}: pass a larger capacity")]
    CapacityBelowLength {
        /// The capacity asked for.
        capacity: u64,
        /// The file's length.
        len: u64,
    },

    /// A length past the mapping's capacity: the memory reserved at open ends there.
    #[error("length {len} is beyond the mapping's capacity {capacity}: open it with a larger capacity")]
    BeyondCapacity {
        /// The length asked for.
        len: u64,
        /// The mapping's capacity.
        capacity: u64,
    },

    /// The address space has no room for the capacity asked for.
    #[error(
        "cannot reserve {capacity} bytes of address space for the mapping: {source}; pass a smaller capacity"
    )]
    CapacityUnavailable {
        /// The capacity asked for.
        capacity: u64,
        /// What `mmap` said.
        #[source]
        source: io::Error,
    },

    /// The file could not be opened.
    #[error("cannot open {}: {source}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// The file cannot be written (opened read-only, read-only filesystem, no permission).
    #[error("{} is read-only; open it read-write or map it with `read_only(true)`: {source}", show(.path.as_deref()))]
    ReadOnly {
        /// The file, where known.
        path: Option<PathBuf>,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// The process may not create a userfaultfd.
    #[error("cannot create a userfaultfd: {advice} ({source})")]
    Userfaultfd {
        /// Why, and what to do about it.
        advice: &'static str,
        /// The error of the first attempt.
        #[source]
        source: io::Error,
    },

    /// The kernel lacks a userfaultfd feature mkwrite needs.
    #[error("the kernel lacks {0}: mkwrite needs Linux 5.7 or later for write-protect on anonymous memory")]
    MissingFeature(&'static str),

    /// What was asked for cannot be kept safe under
    /// [`DirtyTracking::Kernel`](crate::DirtyTracking::Kernel), where the
    /// kernel lets writes through without asking mkwrite: blocks smaller
    /// than a page, a [`Budget`](crate::Budget), or
    /// [`Mapping::evict`](crate::Mapping::evict). Nothing was done; open the
    /// mapping with `DirtyTracking::Faults` for these.
    #[error("{0} is not supported with DirtyTracking::Kernel (use DirtyTracking::Faults); nothing was done")]
    NotWithKernelDirtyTracking(&'static str),

    /// The mapping was opened read-only; it cannot be written, resized or punched.
    #[error("the mapping is read-only (opened with `read_only(true)`)")]
    ReadOnlyMapping,

    /// The fault handler failed (a panic in it, in the store, or in an
    /// [`OnFull::Callback`](crate::OnFull::Callback)); the mapping no longer
    /// resolves faults and every call reports this.
    #[error("the fault handler failed: {0}")]
    HandlerFailed(String),

    /// The call was made in a child of the process that opened the mapping.
    /// A child after `fork` has no copy of the mapping's memory (it is
    /// `MADV_DONTFORK`), and its store, userfaultfd and handler belong to the
    /// parent, so nothing is done; dropping the mapping in the child does nothing.
    #[error("the mapping belongs to process {owner}, not to its forked child {pid}; nothing was done")]
    Forked {
        /// The process that opened the mapping.
        owner: u32,
        /// The process that made the call.
        pid: u32,
    },

    /// Dirty pages were dropped from memory behind the mapping's back
    /// (`madvise(MADV_DONTNEED)`, `MADV_FREE`, ... on the mapping's memory)
    /// before they were flushed: those bytes now read as the store holds
    /// them. Reported once, by the flush after the loss was found; everything
    /// else that flush wrote is durable. To drop clean pages safely, call
    /// [`Mapping::evict`](crate::Mapping::evict).
    #[error(
        "unflushed writes were discarded from memory (madvise on the mapping?) in file ranges {ranges:?}"
    )]
    Discarded {
        /// File byte ranges whose unflushed changes were lost.
        ranges: Vec<Range<u64>>,
    },

    /// Another process truncated or extended the file underneath the
    /// mapping. mkwrite writes nothing more to it, since that would bring
    /// truncated data back; the dirty data stays in memory. Adopt a length
    /// with [`Mapping::set_len`](crate::Mapping::set_len), then
    /// [`evict`](crate::Mapping::evict) so clean pages reread the file, and
    /// flush again.
    #[error(
        "the file's length changed underneath the mapping: expected {expected}, found {found} \
         (another process truncated or extended it; set_len adopts a length)"
    )]
    LengthChanged {
        /// The length the mapping gave the file.
        expected: u64,
        /// The length the file has now.
        found: u64,
    },

    /// Any other I/O error, kept as the kernel or the store returned it.
    #[error(transparent)]
    Io(io::Error),
}

fn show(path: Option<&Path>) -> String {
    path.map_or_else(|| "the file".to_owned(), |p| p.display().to_string())
}

/// The payload a [`FileStore`](crate::FileStore) puts in an [`io::Error`] when
/// the file's length is not the one it set; [`Error`] turns it into
/// [`Error::LengthChanged`].
#[derive(Debug, thiserror::Error)]
#[error("the file's length changed underneath: expected {expected}, found {found}")]
pub(crate) struct LengthChanged {
    pub expected: u64,
    pub found: u64,
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<LengthChanged>())
        {
            Some(&LengthChanged { expected, found }) => Error::LengthChanged { expected, found },
            None => Error::Io(err),
        }
    }
}

/// The crate's result type: [`Error`] unless another is named.
///
/// ```
/// use mkwrite::{MappingOptions, MemStore, Result};
///
/// fn open_scratch() -> Result<mkwrite::Mapping> {
///     MappingOptions::new().capacity(1 << 20).map_store(MemStore::new(4096, 256)?)
/// }
/// assert_eq!(open_scratch()?.capacity(), 1 << 20);
/// # Ok::<(), mkwrite::Error>(())
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The `errno` value a C caller should see for this error: `ENOSPC`,
    /// `EDQUOT`, the operating system's own code where there is one,
    /// `EINVAL` for bad input, `EIO` for the rest. The C interface and the
    /// interposer both report errors this way.
    ///
    /// ```
    /// use mkwrite::{MappingOptions, MemStore};
    /// let map = MappingOptions::new().capacity(4096).map_store(MemStore::new(4096, 1)?)?;
    /// let err = map.set_len(1 << 20).unwrap_err(); // beyond the capacity
    /// assert_eq!(err.errno(), libc::EINVAL);
    /// # Ok::<(), mkwrite::Error>(())
    /// ```
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoSpace(_) => libc::ENOSPC,
            Error::Quota(_) => libc::EDQUOT,
            Error::OutOfRange { .. }
            | Error::InvalidBlockSize(_)
            | Error::CapacityBelowLength { .. }
            | Error::BeyondCapacity { .. } => libc::EINVAL,
            Error::CapacityUnavailable { .. } => libc::ENOMEM,
            Error::Open { source, .. } | Error::Userfaultfd { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            Error::ReadOnly { .. } => libc::EACCES,
            Error::ReadOnlyMapping => libc::EBADF,
            Error::MissingFeature(_) | Error::NotWithKernelDirtyTracking(_) => libc::ENOTSUP,
            Error::Forked { .. } => libc::EPERM,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }

    /// Classifies a store's allocation error: `ENOSPC` and `EDQUOT` get
    /// their own variants (as do [`io::ErrorKind::StorageFull`] and
    /// [`QuotaExceeded`](io::ErrorKind::QuotaExceeded)); anything else is
    /// kept as it came.
    ///
    /// ```
    /// use mkwrite::Error;
    /// use std::io;
    ///
    /// let err = Error::from_allocation(io::Error::from_raw_os_error(libc::ENOSPC));
    /// assert!(matches!(err, Error::NoSpace(_)));
    /// let err = Error::from_allocation(io::ErrorKind::QuotaExceeded.into());
    /// assert!(matches!(err, Error::Quota(_)));
    /// let err = Error::from_allocation(io::Error::from_raw_os_error(libc::EIO));
    /// assert!(matches!(err, Error::Io(_)));
    /// ```
    pub fn from_allocation(err: io::Error) -> Error {
        match err.raw_os_error() {
            Some(libc::ENOSPC) => Error::NoSpace(err),
            Some(libc::EDQUOT) => Error::Quota(err),
            _ => match err.kind() {
                io::ErrorKind::StorageFull => Error::NoSpace(err),
                io::ErrorKind::QuotaExceeded => Error::Quota(err),
                _ => Error::from(err),
            },
        }
    }

    /// The [`io::ErrorKind`] this error corresponds to (also the kind of
    /// the [`io::Error`] it converts into).
    ///
    /// ```
    /// use mkwrite::{Error, MemStore};
    /// use std::io::ErrorKind;
    ///
    /// let err = MemStore::new(1000, 16).unwrap_err(); // not a power of two
    /// assert!(matches!(err, Error::InvalidBlockSize(1000)));
    /// assert_eq!(err.kind(), ErrorKind::InvalidInput);
    /// ```
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::NoSpace(_) => io::ErrorKind::StorageFull,
            Error::Quota(_) => io::ErrorKind::QuotaExceeded,
            Error::OutOfRange { .. }
            | Error::InvalidBlockSize(_)
            | Error::CapacityBelowLength { .. }
            | Error::BeyondCapacity { .. } => io::ErrorKind::InvalidInput,
            Error::CapacityUnavailable { .. } => io::ErrorKind::OutOfMemory,
            Error::Open { source, .. } => source.kind(),
            Error::ReadOnly { .. } | Error::ReadOnlyMapping => io::ErrorKind::PermissionDenied,
            Error::Userfaultfd { source, .. } => source.kind(),
            Error::MissingFeature(_) | Error::NotWithKernelDirtyTracking(_) => io::ErrorKind::Unsupported,
            Error::HandlerFailed(_)
            | Error::LengthChanged { .. }
            | Error::Forked { .. }
            | Error::Discarded { .. } => io::ErrorKind::Other,
            Error::Io(e) => e.kind(),
        }
    }

    /// True for the errors that more space (or a raised quota) would cure:
    /// [`NoSpace`](Error::NoSpace) and [`Quota`](Error::Quota).
    ///
    /// ```
    /// use mkwrite::{MappingOptions, MemStore, Store};
    /// # let store = MemStore::new(4096, 1)?; // room for one page
    /// # store.set_len(8192)?;
    /// let map = MappingOptions::new().capacity(8192).map_store(store)?;
    /// map.write(0, b"a")?;
    /// let err = map.write(4096, b"b").unwrap_err().error;
    /// assert!(err.is_full()); // retry after freeing space, not after fixing the disk
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_full(&self) -> bool {
        matches!(self, Error::NoSpace(_) | Error::Quota(_))
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        match err {
            Error::Io(e) => e,
            other => io::Error::new(other.kind(), other),
        }
    }
}

/// A write, read or reservation that stopped part-way: how many bytes landed
/// before `error`, counted from the start of the request.
///
/// ```
/// use mkwrite::{Error, MappingOptions, MemStore, Store};
///
/// let store = std::sync::Arc::new(MemStore::new(4096, 1)?); // room for one page
/// store.set_len(8192)?;
/// let map = MappingOptions::new().capacity(8192).map_store(store.clone())?;
/// let err = map.write(4000, &[7; 1000]).unwrap_err();
/// assert_eq!(err.done, 96); // [4000, 4096) landed; the next page had no room
/// assert!(matches!(err.error, Error::NoSpace(_)));
/// map.flush()?; // and what landed reaches the store
/// assert_eq!(store.contents()[4095], 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {done} bytes)")]
pub struct PartialError {
    /// Bytes that landed (or were reserved) before the failure.
    pub done: usize,
    /// Why it stopped.
    #[source]
    pub error: Error,
}

impl PartialError {
    /// A failure before any byte landed.
    pub(crate) fn none(error: Error) -> PartialError {
        PartialError { done: 0, error }
    }
}

impl From<PartialError> for Error {
    fn from(p: PartialError) -> Error {
        p.error
    }
}

pub(crate) fn out_of_range(what: &'static str, offset: u64, len: u64, limit: u64) -> Error {
    Error::OutOfRange {
        what,
        offset,
        end: offset.saturating_add(len),
        limit,
    }
}
