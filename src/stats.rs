//! Counters of what the mapping did, for tests, benches and the pager's table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of a mapping's counters and flags, from [`Mapping::stats`](crate::Mapping::stats).
/// The counters only grow; the flag totals (`blocks_allocated`,
/// `pages_resident`, `pages_dirty`) and `len` are as of the call.
///
/// ```
/// use mkwrite::{MappingOptions, MemStore, Store};
/// # let store = MemStore::new(1024, 64)?;
/// # store.set_len(8192)?;
/// let map = MappingOptions::new().capacity(8192).map_store(store)?;
/// // SAFETY: inside the file, and no reference to these bytes is alive.
/// unsafe { map.as_ptr().write(1) }; // one write fault, the page's four blocks
/// map.flush()?;
/// let stats = map.stats();
/// assert_eq!((stats.faults_missing_write, stats.blocks_allocated), (1, 4));
/// assert_eq!((stats.flushes, stats.bytes_flushed, stats.pages_dirty), (1, 4096, 0));
/// println!("{:?} in the fault handler", stats.handler_time);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// File length (EOF).
    pub len: u64,
    /// The store's block size.
    pub block_size: u64,
    /// Blocks the mapping knows to be allocated in the store.
    pub blocks_allocated: u64,
    /// Pages in memory.
    pub pages_resident: u64,
    /// Pages whose bytes may differ from the store.
    pub pages_dirty: u64,
    /// Faults on missing pages by reads.
    pub faults_missing_read: u64,
    /// Faults on missing pages by writes.
    pub faults_missing_write: u64,
    /// Faults by writes to write-protected pages.
    pub faults_write_protect: u64,
    /// Pages made ready by checked reads and writes, without a fault.
    pub pages_prepared: u64,
    /// Blocks allocated in the store.
    pub allocations: u64,
    /// Allocations that failed (no space, quota or I/O).
    pub allocation_failures: u64,
    /// SIGBUS signals sent to faulting threads.
    pub sigbus_sent: u64,
    /// Faults parked to wait for space.
    pub faults_parked: u64,
    /// Accesses past EOF failed by poisoning the page (SIGBUS for a thread,
    /// `EFAULT` for a system call, as with the kernel's mmap).
    pub faults_poisoned: u64,
    /// System calls failed with `EFAULT` by fencing a page (see the crate docs).
    pub faults_fenced: u64,
    /// Dirty pages found dropped from memory behind the mapping's back
    /// (`madvise`); their unflushed bytes are reported by the next flush.
    pub pages_discarded: u64,
    /// Clean pages the kernel reported written, found by flushes under
    /// [`DirtyTracking::Kernel`](crate::DirtyTracking::Kernel): writes that
    /// took no fault.
    pub pages_found_written: u64,
    /// Completed flushes.
    pub flushes: u64,
    /// Bytes written to the store by flushes.
    pub bytes_flushed: u64,
    /// Time the handler spent resolving faults, from reading the fault to
    /// waking the thread (the thread waits this plus two wake-ups).
    pub handler_time: Duration,
    /// Calls to the store's `allocate` (one per page, or one per run).
    pub allocate_calls: u64,
    /// Time in the store's `read_at` (filling pages).
    pub store_read_time: Duration,
    /// Time in the store's `allocate`.
    pub store_allocate_time: Duration,
    /// Time in the store's `write_at` (flushes).
    pub store_write_time: Duration,
    /// Time in the store's `sync` (flushes).
    pub store_sync_time: Duration,
    /// Time in userfaultfd ioctls (copy, write-protect, wake, poison).
    pub ioctl_time: Duration,
    /// Faults resolved in the faulting thread's own signal handler
    /// ([`Delivery::InThread`](crate::Delivery::InThread)).
    pub faults_in_thread: u64,
    /// Faults the faulting thread's signal handler handed to the service
    /// thread (a store that is not signal-safe, a full store, a failure).
    pub faults_handed_off: u64,
    /// Store allocations started while another fault's was in flight: faults
    /// allocating in parallel (the flags lock is not held across them).
    pub allocations_overlapped: u64,
    /// Fills (store reads and copies into the mapping) started while
    /// another fault's was in flight: faults filling in parallel.
    pub fills_overlapped: u64,
    /// Faults that found their page being filled by another and slept on
    /// that page's state word, without the mapping's lock, until it was in.
    pub fill_waits: u64,
    /// Faults that found their page already serving their access (another
    /// fault resolved it a moment before) from its state word alone,
    /// without the mapping's lock.
    pub faults_found_ready: u64,
    /// Writes that found their page being written back by a flush straight
    /// from the mapping's memory, and waited for it (counted once a wait).
    pub writeback_waits: u64,
    /// Pages dropped to keep a [`Budget`](crate::Budget) (written back first if dirty).
    pub pages_evicted: u64,
}

/// What a timed section was doing, for [`Counters::timed`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Timer {
    StoreRead,
    StoreAllocate,
    StoreWrite,
    StoreSync,
    Ioctl,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    missing_read: AtomicU64,
    missing_write: AtomicU64,
    write_protect: AtomicU64,
    prepared: AtomicU64,
    allocations: AtomicU64,
    allocation_failures: AtomicU64,
    sigbus: AtomicU64,
    parked: AtomicU64,
    poisoned: AtomicU64,
    fenced: AtomicU64,
    discarded: AtomicU64,
    found_written: AtomicU64,
    flushes: AtomicU64,
    bytes_flushed: AtomicU64,
    handler_nanos: AtomicU64,
    allocate_calls: AtomicU64,
    in_thread: AtomicU64,
    handed_off: AtomicU64,
    evicted: AtomicU64,
    overlapped: AtomicU64,
    overlapped_fills: AtomicU64,
    writeback_waits: AtomicU64,
    fill_waits: AtomicU64,
    found_ready: AtomicU64,
    /// Nanoseconds per [`Timer`], in its order.
    timers: [AtomicU64; 5],
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub fn fault(&self, write: bool, write_protect: bool) {
        let c = match (write, write_protect) {
            (_, true) => &self.write_protect,
            (true, false) => &self.missing_write,
            (false, false) => &self.missing_read,
        };
        bump(c, 1);
    }

    pub fn in_thread(&self) {
        bump(&self.in_thread, 1);
    }

    pub fn overlapped_allocation(&self) {
        bump(&self.overlapped, 1);
    }

    pub fn overlapped_fill(&self) {
        bump(&self.overlapped_fills, 1);
    }

    pub fn fill_wait(&self) {
        bump(&self.fill_waits, 1);
    }

    pub fn found_ready(&self) {
        bump(&self.found_ready, 1);
    }

    pub fn writeback_wait(&self) {
        bump(&self.writeback_waits, 1);
    }

    pub fn evicted(&self, pages: u64) {
        bump(&self.evicted, pages);
    }

    pub fn handed_off(&self) {
        bump(&self.handed_off, 1);
    }

    pub fn prepared(&self) {
        bump(&self.prepared, 1);
    }

    pub fn add_blocks(&self, n: u64) {
        bump(&self.allocations, n);
    }

    pub fn allocation_failed(&self) {
        bump(&self.allocation_failures, 1);
    }

    pub fn sigbus(&self) {
        bump(&self.sigbus, 1);
    }

    pub fn parked(&self) {
        bump(&self.parked, 1);
    }

    pub fn poisoned(&self) {
        bump(&self.poisoned, 1);
    }

    pub fn fenced(&self) {
        bump(&self.fenced, 1);
    }

    pub fn discarded(&self) {
        bump(&self.discarded, 1);
    }

    pub fn found_written(&self) {
        bump(&self.found_written, 1);
    }

    pub fn flushed(&self, bytes: u64) {
        bump(&self.flushes, 1);
        bump(&self.bytes_flushed, bytes);
    }

    /// Runs `f`, adding its duration to `timer` (about 25 ns of clock reads,
    /// against the microseconds of a store call or an ioctl).
    pub fn timed<T>(&self, timer: Timer, f: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let out = f();
        bump(&self.timers[timer as usize], started.elapsed().as_nanos() as u64);
        if let Timer::StoreAllocate = timer {
            bump(&self.allocate_calls, 1);
        }
        out
    }

    pub fn handler_time(&self, d: Duration) {
        bump(&self.handler_nanos, d.as_nanos() as u64);
    }

    /// Fills the counter fields of `stats`.
    pub fn snapshot(&self, stats: &mut Stats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        stats.faults_missing_read = get(&self.missing_read);
        stats.faults_missing_write = get(&self.missing_write);
        stats.faults_write_protect = get(&self.write_protect);
        stats.pages_prepared = get(&self.prepared);
        stats.allocations = get(&self.allocations);
        stats.allocation_failures = get(&self.allocation_failures);
        stats.sigbus_sent = get(&self.sigbus);
        stats.faults_parked = get(&self.parked);
        stats.faults_poisoned = get(&self.poisoned);
        stats.faults_fenced = get(&self.fenced);
        stats.pages_discarded = get(&self.discarded);
        stats.pages_found_written = get(&self.found_written);
        stats.flushes = get(&self.flushes);
        stats.bytes_flushed = get(&self.bytes_flushed);
        stats.handler_time = Duration::from_nanos(get(&self.handler_nanos));
        stats.allocate_calls = get(&self.allocate_calls);
        stats.faults_in_thread = get(&self.in_thread);
        stats.faults_handed_off = get(&self.handed_off);
        stats.pages_evicted = get(&self.evicted);
        stats.allocations_overlapped = get(&self.overlapped);
        stats.fills_overlapped = get(&self.overlapped_fills);
        stats.writeback_waits = get(&self.writeback_waits);
        stats.fill_waits = get(&self.fill_waits);
        stats.faults_found_ready = get(&self.found_ready);
        let time = |t: Timer| Duration::from_nanos(get(&self.timers[t as usize]));
        stats.store_read_time = time(Timer::StoreRead);
        stats.store_allocate_time = time(Timer::StoreAllocate);
        stats.store_write_time = time(Timer::StoreWrite);
        stats.store_sync_time = time(Timer::StoreSync);
        stats.ioctl_time = time(Timer::Ioctl);
    }
}
