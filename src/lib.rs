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
//! The rules every part keeps are in `docs/design.md`: a page is writable only
//! when its blocks below EOF are allocated; a failed allocation is never silent;
//! flush writes by per-block flags, never by file size; bytes past EOF read as
//! zero and are zeroed when EOF moves up across them.
//!
//! Unsafe code lives in the `sys` module (the kernel calls) and in the two
//! slice accessors of [`Mapping`], whose soundness rests on their `&mut self`.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod checked;
mod engine;
mod error;
mod flags;
mod flush;
mod geometry;
mod handler;
mod mapping;
mod options;
mod resize;
mod stats;
pub mod store;
#[allow(unsafe_code)]
mod sys;

pub use error::{Error, PartialError, Result};
pub use geometry::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, check_block_size};
pub use mapping::Mapping;
pub use options::{DEFAULT_CAPACITY, FullAction, FullFault, MappingOptions, OnFull};
pub use stats::Stats;
pub use store::{FileStore, MemStore, QuotaStore, Store};
pub use sys::UffdOrigin;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
