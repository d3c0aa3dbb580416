//! Plain loads and stores through a mapping's memory, with the SIGBUS of a
//! full store (or of a page past EOF) returned as an error for that one
//! operation instead of ending the process.
//!
//! With [`OnFull::Sigbus`](crate::OnFull::Sigbus), the default, a store to a
//! page whose blocks cannot be allocated raises SIGBUS in the storing thread,
//! as the kernel's `mmap` does. A database that would rather fail the one
//! transaction than die copies its bytes with [`store`] or [`fill`], and
//! reads with [`load`]: each is one copy instruction whose fault the
//! handler installed by [`install`] turns into an [`AccessFault`] with the
//! number of bytes that landed and why the rest did not. Every byte before
//! the fault is in the mapping and reaches the store at the next flush; none
//! after it was written anywhere.
//!
//! ```
//! use mkwrite::{MappingOptions, MemStore, Store, guarded::{self, FaultCause}};
//!
//! let store = MemStore::new(1024, 4)?; // room for one page
//! store.set_len(8192)?;                  // two pages long
//! let map = MappingOptions::new().capacity(16384).map_store(store)?;
//! guarded::install()?;
//! // SAFETY: every range lies in the mapping's memory.
//! unsafe {
//!     guarded::fill(map.as_ptr(), 1, 4094).unwrap(); // page 0: allocated
//!     let full = guarded::fill(map.as_ptr().add(4094), 2, 10).unwrap_err();
//!     assert_eq!((full.cause, full.done), (FaultCause::NoSpace, 2)); // page 1 cannot be
//!     let past_eof = guarded::fill(map.as_ptr().add(12288), 3, 10).unwrap_err();
//!     assert_eq!((past_eof.cause, past_eof.done), (FaultCause::PastEof, 0));
//! }
//! map.flush()?; // the 4096 bytes that landed are in the store
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The handler is async-signal-safe and edits only the interrupted
//! registers (no `siglongjmp`). Signals raised anywhere else go to the
//! handler installed before [`install`], or take their default action.
//! x86-64 only.

use std::fmt;
use std::io;

use crate::sys::guard;

/// Why a guarded copy stopped.
///
/// ```
/// # use mkwrite::{MappingOptions, MemStore, Store, guarded};
/// # let store = MemStore::new(4096, 1)?; // room for one page
/// # store.set_len(8192)?;
/// # let map = MappingOptions::new().capacity(16384).map_store(store)?;
/// guarded::install()?;
/// // SAFETY: every range lies in the mapping's memory, and no reference to it is alive.
/// let fill = |offset: usize| unsafe { guarded::fill(map.as_ptr().add(offset), 1, 10) };
/// fill(0)?; // page 0 takes the only block
/// let cause = |offset| fill(offset).unwrap_err().cause;
/// assert_eq!(cause(4096), guarded::FaultCause::NoSpace); // page 1: no room
/// assert_eq!(cause(8192), guarded::FaultCause::PastEof); // page 2: past EOF
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultCause {
    /// The store has no space for the page's blocks (`ENOSPC`).
    NoSpace,
    /// The store's quota would be exceeded (`EDQUOT`).
    Quota,
    /// The page lies wholly past the end of the file.
    PastEof,
    /// The memory may not be accessed that way (a read-only mapping, or a
    /// page fenced for a moment while a system call is failed; SIGSEGV).
    Denied,
    /// The store failed otherwise, or the mapping's handler failed (errno).
    Io(i32),
}

/// A guarded copy that stopped at a fault.
///
/// ```
/// # use mkwrite::{MappingOptions, MemStore, Store, guarded};
/// # let store = MemStore::new(4096, 1)?; // room for one page
/// # store.set_len(8192)?;
/// # let map = MappingOptions::new().capacity(16384).map_store(store)?;
/// guarded::install()?;
/// // SAFETY: the range lies in the mapping's memory, and no reference to it is alive.
/// let err = unsafe { guarded::store(map.as_ptr().add(4000), &[7; 200]) }.unwrap_err();
/// assert_eq!(err.done, 96); // up to the end of page 0; page 1 has no room
/// assert_eq!(err.to_string(), "access fault after 96 bytes: NoSpace");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessFault {
    /// Bytes copied before the fault.
    pub done: usize,
    /// Why it stopped.
    pub cause: FaultCause,
}

impl fmt::Display for AccessFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "access fault after {} bytes: {:?}", self.done, self.cause)
    }
}

impl std::error::Error for AccessFault {}

/// Installs the SIGBUS and SIGSEGV handler that guarded copies need; call
/// it once before the first (more calls do nothing). Handlers installed
/// earlier keep receiving the signals that are not a guarded copy's.
///
/// ```
/// mkwrite::guarded::install()?;
/// mkwrite::guarded::install()?; // again: nothing more happens
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// The kernel's `sigaction` error, which later calls return too.
#[doc(alias = "sigaction")]
pub fn install() -> io::Result<()> {
    guard::install()
}

fn outcome(len: usize, out: guard::Outcome) -> Result<(), AccessFault> {
    if out.cause == 0 {
        return Ok(());
    }
    let (signal, code, errno) = guard::unpack(out.cause);
    let cause = match (signal, code, errno) {
        (libc::SIGSEGV, _, _) => FaultCause::Denied,
        // mkwrite's own SIGBUS says why in si_errno (see `OnFull::Sigbus`):
        // queued by the fault service, or the kernel's own for a fault the
        // faulting thread failed itself (in-thread delivery).
        (_, libc::SI_QUEUE | libc::BUS_ADRERR, libc::ENOSPC) => FaultCause::NoSpace,
        (_, libc::SI_QUEUE | libc::BUS_ADRERR, libc::EDQUOT) => FaultCause::Quota,
        (_, libc::SI_QUEUE | libc::BUS_ADRERR, libc::EFAULT) => FaultCause::PastEof,
        // The kernel's, unexplained: a poisoned page past EOF (or a mapped file's end).
        (_, libc::BUS_ADRERR, 0) => FaultCause::PastEof,
        (_, libc::SI_QUEUE | libc::BUS_ADRERR, e) => FaultCause::Io(e),
        _ => FaultCause::Io(libc::EIO),
    };
    Err(AccessFault {
        done: len - out.remaining as usize,
        cause,
    })
}

/// Stores `src` at `dst` with plain stores; a fault stops it.
///
/// ```
/// # use mkwrite::{MappingOptions, MemStore, Store, guarded};
/// # let store = MemStore::new(4096, 1)?; // room for one page
/// # store.set_len(8192)?;
/// # let map = MappingOptions::new().capacity(16384).map_store(store)?;
/// guarded::install()?;
/// // SAFETY: the range lies in the mapping's memory, and no reference to it is alive.
/// unsafe { guarded::store(map.as_ptr().add(100), b"row 1") }?;
/// let mut back = [0; 5];
/// map.read(100, &mut back)?;
/// assert_eq!(&back, b"row 1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// An [`AccessFault`] at the first byte whose fault failed: no room or
/// quota for its page, a page past EOF, a denied access, a store failure.
/// The bytes before it landed; none after it did.
///
/// # Safety
///
/// * `dst..dst + src.len()` lies in a [`Mapping`](crate::Mapping)'s memory
///   (or other memory whose every fault is a SIGBUS or SIGSEGV), and no Rust
///   reference to those bytes is alive;
/// * [`install`] has returned `Ok`.
pub unsafe fn store(dst: *mut u8, src: &[u8]) -> Result<(), AccessFault> {
    // SAFETY: per the contract; `src` is a valid slice.
    outcome(src.len(), unsafe { guard::copy(dst, src.as_ptr(), src.len()) })
}

/// Stores `len` copies of `byte` at `dst`; a fault stops it.
///
/// ```
/// # use mkwrite::{MappingOptions, MemStore, Store, guarded};
/// # let store = MemStore::new(4096, 1)?; // room for one page
/// # store.set_len(8192)?;
/// # let map = MappingOptions::new().capacity(16384).map_store(store)?;
/// guarded::install()?;
/// // SAFETY: the range lies in the mapping's memory, and no reference to it is alive.
/// let err = unsafe { guarded::fill(map.as_ptr(), 0xff, 8192) }.unwrap_err();
/// assert_eq!(err.done, 4096); // page 0 is filled; page 1 has no room
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// As for [`store`].
///
/// # Safety
///
/// As for [`store`], for `dst..dst + len`.
pub unsafe fn fill(dst: *mut u8, byte: u8, len: usize) -> Result<(), AccessFault> {
    // SAFETY: per the contract.
    outcome(len, unsafe { guard::fill(dst, byte, len) })
}

/// Loads `dst.len()` bytes from `src` with plain loads; a fault stops it.
///
/// ```
/// # use mkwrite::{MappingOptions, MemStore, Store, guarded};
/// # let store = MemStore::new(4096, 1)?; // room for one page
/// # store.set_len(8192)?;
/// # let map = MappingOptions::new().capacity(16384).map_store(store)?;
/// guarded::install()?;
/// map.write(0, b"row 1")?;
/// let mut row = [0; 5];
/// // SAFETY: the range lies in the mapping's memory, and no reference to it is alive.
/// unsafe { guarded::load(map.as_ptr(), &mut row) }?;
/// assert_eq!(&row, b"row 1");
/// // SAFETY: as above; the page is past EOF.
/// let past_eof = unsafe { guarded::load(map.as_ptr().add(8192), &mut row) }.unwrap_err();
/// assert_eq!(past_eof.cause, guarded::FaultCause::PastEof);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// An [`AccessFault`] at the first byte whose fault failed: a page past
/// EOF, or a store that failed to read it in.
///
/// # Safety
///
/// As for [`store`], for `src..src + dst.len()`, with no writer of those
/// bytes other than through the mapping's rules.
pub unsafe fn load(src: *const u8, dst: &mut [u8]) -> Result<(), AccessFault> {
    // SAFETY: per the contract; `dst` is a valid, exclusive slice.
    outcome(dst.len(), unsafe {
        guard::copy(dst.as_mut_ptr(), src, dst.len())
    })
}
