//! Flushes that write straight from the mapping's memory (a store that
//! says [`Store::writes_from_mapping`]): the pages stay stable while the
//! store reads them (a write to one waits for the flush, in both
//! deliveries), and a page the user drops from memory meanwhile is
//! reported lost without a hang. A store here stops inside its first write
//! until the case lets it go. Each case runs in a child process with a
//! time limit: a wait that never ends fails it.

mod common;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::bounded::{Case, End, Setup, dir};
use common::{pattern, read_file};
use mkwrite::store::SignalSafe;
use mkwrite::{Delivery, DirtyTracking, Error, FileStore, Mapping, MappingOptions, Store};

const PAGE: usize = 4096;
const PAGES: usize = 8;

const CASES: &[Case] = &[
    (
        "a_write_to_a_page_in_writeback_waits_for_the_flush_handler_thread",
        || a_write_to_a_page_in_writeback_waits_for_the_flush(Delivery::HandlerThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_write_to_a_page_in_writeback_waits_for_the_flush_in_thread",
        || a_write_to_a_page_in_writeback_waits_for_the_flush(Delivery::InThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_page_dropped_in_writeback_is_reported_lost_handler_thread",
        || a_page_dropped_in_writeback_is_reported_lost(Delivery::HandlerThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_page_dropped_in_writeback_is_reported_lost_in_thread",
        || a_page_dropped_in_writeback_is_reported_lost(Delivery::InThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "with_kernel_dirty_tracking_a_write_during_a_flush_goes_on_handler_thread",
        || with_kernel_dirty_tracking_a_write_during_a_flush_goes_on(Delivery::HandlerThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "with_kernel_dirty_tracking_a_write_during_a_flush_goes_on_in_thread",
        || with_kernel_dirty_tracking_a_write_during_a_flush_goes_on(Delivery::InThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
];

fn main() {
    common::bounded::run_cases(CASES);
}

/// A file store whose first write after [`stop_next_write`](Self::stop_next_write)
/// waits until [`go_on`](Self::go_on), keeping a copy of what it was given.
struct Stopping {
    inner: FileStore,
    armed: AtomicBool,
    stopped: AtomicBool,
    go: AtomicBool,
    seen: std::sync::Mutex<Vec<u8>>,
}

impl Stopping {
    fn new(inner: FileStore) -> Stopping {
        Stopping {
            inner,
            armed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            go: AtomicBool::new(false),
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn stop_next_write(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn wait_stopped(&self) {
        wait_for("the flush's write", || self.stopped.load(Ordering::SeqCst));
    }

    fn go_on(&self) {
        self.go.store(true, Ordering::SeqCst);
    }
}

impl Store for Stopping {
    fn block_size(&self) -> u64 {
        self.inner.block_size()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.stopped.store(true, Ordering::SeqCst);
            wait_for("the case to let the write go", || self.go.load(Ordering::SeqCst));
            if offset == 0 {
                // What the store reads of the first page once let go; a
                // page dropped meanwhile is not read here (the system call
                // below meets it as the kernel does).
                *self.seen.lock().unwrap() = data[..PAGE].to_vec();
            }
        }
        self.inner.write_at(offset, data)
    }
    fn allocate(&self, blocks: Range<u64>) -> std::io::Result<()> {
        self.inner.allocate(blocks)
    }
    fn deallocate(&self, blocks: Range<u64>) -> std::io::Result<()> {
        self.inner.deallocate(blocks)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn allocated(&self) -> std::io::Result<Vec<Range<u64>>> {
        self.inner.allocated()
    }
    fn unallocated_reads_zero(&self) -> bool {
        self.inner.unallocated_reads_zero()
    }
    fn signal_safe(&self) -> Option<&dyn SignalSafe> {
        self.inner.signal_safe()
    }
    fn writes_from_mapping(&self) -> bool {
        true
    }
}

/// Waits until `done` (up to 10 s; the case's time limit is the backstop).
fn wait_for(what: &str, done: impl Fn() -> bool) {
    common::wait_for(what, Duration::from_secs(10), done);
}

/// A mapping of a new file of [`PAGES`] pages over a [`Stopping`] store,
/// every page written with a pattern (dirty, not yet flushed).
fn dirty_mapping(delivery: Delivery) -> (std::path::PathBuf, Arc<Stopping>, Arc<Mapping>) {
    dirty_mapping_tracked(delivery, DirtyTracking::Faults)
}

fn dirty_mapping_tracked(
    delivery: Delivery,
    tracking: DirtyTracking,
) -> (std::path::PathBuf, Arc<Stopping>, Arc<Mapping>) {
    let path = dir().join("f");
    let store = Arc::new(Stopping::new(FileStore::create(&path).unwrap()));
    store.set_len((PAGES * PAGE) as u64).unwrap();
    let map = MappingOptions::new()
        .delivery(delivery)
        .dirty_tracking(tracking)
        .capacity(1 << 20)
        .map_store(store.clone())
        .unwrap();
    // SAFETY: inside the file; nothing else touches the mapping meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(pattern(1, PAGES * PAGE).as_ptr(), map.as_ptr(), PAGES * PAGE) };
    (path, store, Arc::new(map))
}

/// Starts a flush that stops in the store's first write; returns its thread.
fn flush_stopped(store: &Stopping, map: &Arc<Mapping>) -> thread::JoinHandle<mkwrite::Result<()>> {
    store.stop_next_write();
    let flushing = map.clone();
    let flush = thread::spawn(move || flushing.flush());
    store.wait_stopped();
    flush
}

/// Writes `byte` at the start of `page` from a thread of its own; `done` once written.
fn write_from_thread(map: &Mapping, page: usize, byte: u8, done: &Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let (memory, done) = (map.raw(), done.clone());
    thread::spawn(move || {
        // SAFETY: inside the file; the mapping outlives the thread (joined below).
        unsafe { memory.as_ptr().add(page * PAGE).write_volatile(byte) };
        done.store(true, Ordering::SeqCst);
    })
}

fn a_write_to_a_page_in_writeback_waits_for_the_flush(delivery: Delivery) {
    let (path, store, map) = dirty_mapping(delivery);
    let flush = flush_stopped(&store, &map);
    let done = Arc::new(AtomicBool::new(false));
    let writer = write_from_thread(&map, 0, 0xAB, &done);
    wait_for("the write's fault", || map.stats().writeback_waits >= 1);
    thread::sleep(Duration::from_millis(50));
    assert!(
        !done.load(Ordering::SeqCst),
        "the write went on while the store read the page"
    );
    store.go_on();
    flush.join().unwrap().unwrap();
    writer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    let expected = pattern(1, PAGES * PAGE);
    assert_eq!(
        *store.seen.lock().unwrap(),
        expected[..PAGE],
        "the store read the page as it was flushed"
    );
    assert_eq!(
        read_file(&path),
        expected,
        "the flush wrote what was there when it began"
    );
    map.flush().unwrap();
    let mut after = expected;
    after[0] = 0xAB;
    assert_eq!(
        read_file(&path),
        after,
        "the write that waited reached the next flush"
    );
    map.check_invariants().unwrap();
}

fn a_page_dropped_in_writeback_is_reported_lost(delivery: Delivery) {
    let (path, store, map) = dirty_mapping(delivery);
    let flush = flush_stopped(&store, &map);
    // A writer waits on the first page meanwhile: with a handler thread it
    // must not hold up the worker the flush's own write needs for the
    // dropped pages.
    let done = Arc::new(AtomicBool::new(false));
    let writer = write_from_thread(&map, 0, 0xCD, &done);
    wait_for("the write's fault", || map.stats().writeback_waits >= 1);
    // SAFETY: the mapping's own memory; dropping two of its pages behind its
    // back is what this case does on purpose.
    let rc = unsafe { libc::madvise(map.as_ptr().add(2 * PAGE).cast(), 2 * PAGE, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
    store.go_on();
    let err = flush.join().unwrap().unwrap_err();
    let lost = (2 * PAGE) as u64..(4 * PAGE) as u64;
    assert!(
        matches!(&err, Error::Discarded { ranges } if ranges.len() == 1 && ranges[0] == lost),
        "{err:?}"
    );
    writer.join().unwrap();
    map.flush().unwrap();
    let expected = pattern(1, PAGES * PAGE);
    let file = read_file(&path);
    assert_eq!(file[0], 0xCD, "the write that waited reached the next flush");
    assert_eq!(file[1..2 * PAGE], expected[1..2 * PAGE]);
    assert_eq!(
        file[4 * PAGE..],
        expected[4 * PAGE..],
        "every page not dropped was written"
    );
    map.check_invariants().unwrap();
}

/// With the kernel tracking writes, nothing holds a writer off: a write to
/// a page the flush is writing goes on at once, and the next flush writes
/// it. The store here takes no `LiveBytes` (`Store::write_live`), so the
/// flush writes copies, taken before the write.
fn with_kernel_dirty_tracking_a_write_during_a_flush_goes_on(delivery: Delivery) {
    let (path, store, map) = dirty_mapping_tracked(delivery, DirtyTracking::Kernel);
    assert_eq!(map.dirty_tracking(), DirtyTracking::Kernel);
    let flush = flush_stopped(&store, &map);
    let done = Arc::new(AtomicBool::new(false));
    write_from_thread(&map, 0, 0xEF, &done).join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(map.stats().writeback_waits, 0, "nothing waited");
    store.go_on();
    flush.join().unwrap().unwrap();
    let expected = pattern(1, PAGES * PAGE);
    assert_eq!(read_file(&path), expected, "the flush wrote its copies");
    map.flush().unwrap();
    let mut after = expected;
    after[0] = 0xEF;
    assert_eq!(read_file(&path), after, "the next flush wrote the write");
    map.check_invariants().unwrap();
}
