//! # A guide for a database embedding mkwrite
//!
//! ## Choosing what a full store does: [`OnFull`](crate::OnFull)
//!
//! A write through the mapping's memory to a page whose blocks are not yet
//! in the store faults; mkwrite allocates the blocks, then lets the write
//! go on. When the store has no room (`ENOSPC`) or the quota is spent
//! (`EDQUOT`), the mapping's policy decides:
//!
//! | policy | the writing thread | fits |
//! | --- | --- | --- |
//! | [`OnFull::Sigbus`](crate::OnFull::Sigbus) (default) | gets SIGBUS, as with the kernel's `mmap`; a system call writing into the page gets `EFAULT` | engines that already handle SIGBUS, or that copy through [`guarded`](crate::guarded) |
//! | [`OnFull::Wait`](crate::OnFull::Wait) | blocks until [`notify_space_freed`](crate::Mapping::notify_space_freed), a hole punch or a shrink | engines with a cleaner that frees space |
//! | [`OnFull::Callback`](crate::OnFull::Callback) | as a function decides, per fault: SIGBUS, wait, or retry after freeing space itself | engines that want to log, or free space on demand |
//!
//! Checked calls ([`write`](crate::Mapping::write),
//! [`reserve`](crate::Mapping::reserve), [`populate`](crate::Mapping::populate))
//! never signal: they return [`Error::NoSpace`](crate::Error::NoSpace) or
//! [`Error::Quota`](crate::Error::Quota) with the count of bytes that landed.
//! A database that reserves a transaction's pages with `reserve` before
//! writing them through memory never meets the policy at all.
//!
//! ```
//! use mkwrite::{Error, FullAction, MappingOptions, MemStore, OnFull, Store};
//!
//! let policy = OnFull::callback(|fault| {
//!     eprintln!("no room for the write at {}: {}", fault.offset, fault.error);
//!     FullAction::Sigbus // or Wait, or Retry after freeing space
//! });
//! let store = MemStore::new(4096, 1)?; // room for one page
//! store.set_len(8192)?;
//! let map = MappingOptions::new().capacity(8192).on_full(policy).map_store(store)?;
//! map.reserve(0, 4096)?; // the first page's block, ahead of the writes
//! let err = map.reserve(4096, 4096).unwrap_err();
//! assert!(matches!(err.error, Error::NoSpace(_)) && err.done == 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## SIGBUS in a database: one failed transaction, not a dead process
//!
//! mkwrite's SIGBUS carries `si_code == SI_QUEUE`, the faulting address in
//! `si_value`, and why in `si_errno` (`ENOSPC`, `EDQUOT`, `EFAULT` for a
//! page past EOF on kernels without poison markers, or the store's error).
//! A page wholly past EOF is poisoned instead: the kernel itself raises
//! SIGBUS `BUS_ADRERR` with the address in `si_addr`, exactly as for a
//! mapped file. Rather than writing a handler, copy a transaction's bytes
//! with [`guarded::store`](crate::guarded::store): the fault becomes an
//! [`AccessFault`](crate::guarded::AccessFault) for that one copy, with the
//! bytes that landed, and the process goes on.
//!
//! ```
//! use mkwrite::guarded::{self, FaultCause};
//! use mkwrite::{MappingOptions, MemStore, Store};
//!
//! let store = MemStore::new(4096, 2)?; // room for two pages
//! store.set_len(4 * 4096)?;
//! let map = MappingOptions::new().capacity(4 * 4096).map_store(store)?;
//! guarded::install()?;
//! let commit = |offset: usize, record: &[u8]| {
//!     // SAFETY: the record's range lies in the mapping's memory, and no
//!     // reference to those bytes is alive.
//!     unsafe { guarded::store(map.as_ptr().add(offset), record) }
//! };
//! commit(0, &[1; 8192]).unwrap(); // two pages: fits
//! let full = commit(8192, &[2; 100]).unwrap_err();
//! assert_eq!(full.cause, FaultCause::NoSpace); // abort this transaction only
//! assert_eq!(full.done, 0);
//! map.flush()?; // the first transaction is durable
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## System calls on the mapping and the userfaultfd modes
//!
//! [`Mapping::userfaultfd_origin`](crate::Mapping::userfaultfd_origin) says how
//! the userfaultfd was obtained:
//!
//! * `Syscall` or `Device`: faults taken inside system calls are served like
//!   plain loads and stores. `read(2)` into the mapping fills or allocates
//!   its pages; `write(2)` from it reads them. An access that must fail
//!   fails with `EFAULT`, as with the kernel's `mmap`.
//! * `UserModeOnly` (the fallback for unprivileged processes): a system call
//!   that touches a page not in memory fails with `EFAULT`. Make the range
//!   resident first: [`populate`](crate::Mapping::populate) (for reading,
//!   or for writing, which allocates) or [`lock`](crate::Mapping::lock).
//!
//! ## Faster faults: [`Delivery::InThread`](crate::Delivery::InThread)
//!
//! By default a thread of the process's fault service (a small pool shared
//! by every mapping) resolves a mapping's faults, and the faulting
//! thread sleeps meanwhile: two wake-ups a fault, ~40–60 µs on a small VM.
//! With `delivery(Delivery::InThread)` the faulting thread resolves its own
//! fault in a SIGBUS handler (over a [`FileStore`](crate::FileStore); other
//! stores' faults are handed to the fault service), ~5–7 µs a first
//! write. The price: like `UserModeOnly` above, a system call touching a
//! page that is not ready fails with `EFAULT`, so [`populate`](crate::Mapping::populate)
//! a range before `read(2)` into it or `write(2)` from it; and the process's
//! SIGBUS handler is mkwrite's (it passes every signal that is not its own
//! to the handler installed before it). A failed access gets the kernel's
//! SIGBUS `BUS_ADRERR` with the reason in `si_errno`;
//! [`guarded`](crate::guarded) copies turn it into an
//! [`AccessFault`](crate::guarded::AccessFault) as in the other mode.
//!
//! ```
//! use mkwrite::{Delivery, MappingOptions};
//! # let dir = tempfile::tempdir()?;
//! let map = MappingOptions::new()
//!     .delivery(Delivery::InThread)
//!     .create(true)
//!     .open(dir.path().join("db"))?;
//! map.set_len(1 << 20)?;
//! map.populate(0, 65536, true)?; // ready for a read(2) into it
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Capacity and growth
//!
//! The mapping reserves address space for
//! [`capacity`](crate::MappingOptions::capacity) bytes at open (1 GiB or the
//! file's length by default; reserving costs no memory, `MAP_NORESERVE`,
//! and the mapping's own state costs memory only for the pages touched: an
//! idle mapping costs ~8 KiB, whatever its capacity).
//! [`set_len`](crate::Mapping::set_len) moves EOF anywhere below it; past it
//! is [`Error::BeyondCapacity`](crate::Error::BeyondCapacity). Pick the
//! largest size the file may reach: the memory never moves, so pointers
//! into it stay valid for the mapping's life.
//!
//! ## Files larger than memory: [`Budget`](crate::Budget)
//!
//! A mapping keeps every page it touched until it is evicted. Give it a
//! [`Budget`](crate::Budget) ([`MappingOptions::budget`](crate::MappingOptions::budget),
//! one per mapping or shared by a group) and mkwrite evicts past it: dirty
//! pages are written back first (a failed write-back keeps them, and the
//! next flush reports it), pages faulted in or written lately get a second
//! chance, [locked](crate::Mapping::lock) pages stay. The thread that went
//! over waits for the room (a fault, or a checked call on return), so
//! memory stays within the budget plus about one fill (33 pages) per thread
//! faulting at that moment. Pages made ready with
//! [`populate`](crate::Mapping::populate) may be evicted like any other:
//! lock them to keep them for a system call.
//!
//! ## What is not promised
//!
//! * **Crash atomicity**: a flush writes pages in order; a crash in the
//!   middle leaves each block either old or new. Build atomic commits on top
//!   (a log, or copy-on-write pages) as with any file.
//! * **Coherence with other processes**: the file is read once into private
//!   memory. Writes to the file by another process, or another mapping, are
//!   not seen; a file resized underneath is caught
//!   ([`Error::LengthChanged`](crate::Error::LengthChanged)) and nothing more
//!   is written to it.
//! * **fork**: the child has no copy of the memory and every call there
//!   returns [`Error::Forked`](crate::Error::Forked). Open the file again in
//!   the child if it needs it.
//! * **Memory dropped behind the mapping's back** (`madvise(MADV_DONTNEED)`):
//!   unflushed bytes of a dirty page are lost (private memory, unlike the
//!   page cache); the next flush reports them
//!   ([`Error::Discarded`](crate::Error::Discarded)).
