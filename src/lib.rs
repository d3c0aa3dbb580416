//! # mkwrite
//!
//! Memory-mapped files that cannot silently lose writes when the disk fills up.
//!
//! A write through `mmap(MAP_SHARED)` dirties a page in memory; only at
//! writeback does the filesystem find it has no block for it, and then the
//! data is lost with no error returned to anyone. mkwrite does in user space
//! what the kernel's `page_mkwrite` does: the file's contents live in anonymous
//! memory guarded by a userfaultfd, and the first write to each clean page
//! traps and **allocates the page's blocks in the store** before it may
//! proceed. No space fails that write, at the fault, and loses nothing written
//! before it.
//!
//! ```
//! use mkwrite::{Error, MappingOptions, MemStore, Store};
//!
//! // A store with room for four 1 KiB blocks, holding a 16 KiB file.
//! let store = MemStore::new(1024, 4)?;
//! store.set_len(16 * 1024)?;
//! let map = MappingOptions::new().capacity(1 << 20).map_store(store)?;
//!
//! map.write(0, &[1; 4096])?;                 // allocates blocks 0..4
//! let full = map.write(4096, b"more").unwrap_err();
//! assert!(matches!(full.error, Error::NoSpace(_)));
//! assert_eq!(full.done, 0);                  // failed at the fault, nothing half-done
//! map.flush()?;                              // the first 4 KiB are in the store
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The [`guide`] says how a database uses it: choosing a policy for a full
//! store, turning SIGBUS into an error for one transaction, system calls on
//! the mapping, capacity, and what is not promised.
//!
//! The rules every part keeps are in `docs/design.md`: a page is writable only
//! when its blocks below EOF are allocated; a failed allocation is never silent;
//! flush writes by per-block flags, never by file size; bytes past EOF read as
//! zero and are zeroed when EOF moves up across them.
//!
//! # Living in an ordinary process
//!
//! The memory is plain anonymous memory guarded by a userfaultfd, and what a
//! process commonly does to memory is handled the way the kernel's own
//! `mmap(MAP_SHARED)` handles it, or is documented where it cannot be:
//!
//! * **fork**: the child gets no copy of the mapping's memory
//!   (`MADV_DONTFORK`: touching it there is SIGSEGV, never stale data), every
//!   fallible call in the child returns [`Error::Forked`] without touching
//!   the store, and dropping the mapping there does nothing.
//! * **System calls that touch the mapping** (`read(2)` into it, `recv(2)`,
//!   `mlock(2)`) fault in kernel mode and are served like plain loads and
//!   stores. One that must fail gets `EFAULT`, as with mmap: an access to a
//!   page wholly past EOF (the page is then *poisoned* until EOF moves over
//!   it, so a plain load or store there gets SIGBUS `BUS_ADRERR` with the
//!   address, exactly as from the kernel), or a write the store has no room
//!   for under [`OnFull::Sigbus`]. For that last case the page is *fenced*
//!   for a moment (its write permission taken away, so the retry fails): a
//!   plain store by another thread to that page in that moment gets SIGSEGV
//!   rather than SIGBUS. Under [`OnFull::Wait`] the call waits for space;
//!   a signal arriving meanwhile ends it with `EFAULT` (the kernel would
//!   otherwise retry the fault in a busy loop, unable to deliver the signal).
//! * **`madvise`**: `MADV_DONTNEED` / `MADV_FREE` on the mapping drop pages
//!   the mapping thinks it holds. A clean page refills from the store on the
//!   next touch. A dirty page's unflushed bytes are gone (the memory is
//!   private, unlike the kernel's page cache): the next
//!   [`flush`](Mapping::flush) returns [`Error::Discarded`] with the ranges,
//!   and [`Stats::pages_discarded`] counts them. [`Mapping::evict`] is the
//!   safe way to drop clean pages. (`MADV_REMOVE` is refused by the kernel
//!   on private memory.) Under [`DirtyTracking::Kernel`] nothing records
//!   a write to a dropped page, so any page found dropped is reported lost.
//! * **`mlock(2)`** populates private memory for *writing*: every page below
//!   EOF is write-faulted, allocates its blocks, and will be flushed. Past
//!   EOF it fails with `ENOMEM`, as with mmap. [`Mapping::lock`] locks
//!   without writing (`MLOCK_ONFAULT` plus a read fill) and never allocates.
//! * **SIGBUS as an error**: with the default [`OnFull::Sigbus`], a plain
//!   store to a full store raises SIGBUS. [`guarded`] copies turn it into an
//!   error for that one copy, with the count of bytes that landed.
//! * **A panic in the fault handler** (a store's, or an
//!   [`OnFull::Callback`]'s) is caught: the faulting access fails (SIGBUS,
//!   or `EFAULT` in a system call), later faults fail too, and every call
//!   returns [`Error::HandlerFailed`].
//! * **Unprivileged processes**: where the `userfaultfd` system call and
//!   `/dev/userfaultfd` are refused, the mapping falls back to
//!   `UFFD_USER_MODE_ONLY` ([`Mapping::userfaultfd_origin`] says so). Then a
//!   system call that touches a page not in memory fails with `EFAULT`
//!   instead of faulting it in: make such a range resident first with
//!   [`Mapping::populate`] (for reading, or for writing, which allocates).
//!
//! Unsafe code lives in the `sys` module (the kernel calls), in the two
//! slice accessors of [`Mapping`], whose soundness rests on their `&mut self`,
//! in the registry the fault signal handler reads (raw pointers guarded by a
//! loom-checked protocol), and in the [`store::SignalSafe`] contract.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod ahead;
mod bitmaps;
mod budget;
mod checked;
mod claims;
mod engine;
mod error;
mod evict;
mod fence;
mod flags;
#[doc(hidden)]
pub mod floor;
mod flush;
mod geometry;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // unsafe fns over raw memory; the unsafe work is in sys::guard
pub mod guarded;
pub mod guide;
mod handler;
mod handoff;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // registers an engine's address with the registry
mod in_thread;
mod kernel_dirty;
mod mapping;
mod options;
mod page_state;
mod raw;
#[allow(unsafe_code)] // raw pointers read by a signal handler; see its module docs
mod registry;
mod regrow;
mod resize;
mod service;
mod stats;
pub mod store;
mod sync;
#[allow(unsafe_code)]
mod sys;

/// The start of the name of every thread mkwrite starts (its fault
/// workers, background flushes): their system calls are all mkwrite's own,
/// which an interposer can tell by it.
pub const THREAD_PREFIX: &str = "mkwrite-";

pub use ahead::Advice;
pub use budget::Budget;
pub use error::{Error, PartialError, Result};
pub use geometry::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, check_block_size};
pub use mapping::Mapping;
pub use options::{DEFAULT_CAPACITY, Delivery, DirtyTracking, FullAction, FullFault, MappingOptions, OnFull};
pub use raw::RawMemory;
pub use stats::Stats;
pub use store::{FileStore, MemStore, NbdOptions, NbdStore, QuotaStore, Store};
pub use sys::UffdOrigin;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
