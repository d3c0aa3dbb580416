//! In-thread delivery (`Delivery::InThread`): faults resolved in the
//! faulting thread's SIGBUS handler over a signal-safe store, handed to the
//! service thread otherwise, failed with SIGBUS and the reason in
//! `si_errno`; signals that are not mkwrite's go to the handler installed
//! before. Each case runs in a child process with a time limit.

mod common;

use std::io::{Seek, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::bounded::{Case, End, Setup, dir};
use common::{pattern, read_file};
use mkwrite::guarded::{self, FaultCause};
use mkwrite::store::SignalSafe;
use mkwrite::{Advice, Delivery, Error, FileStore, Mapping, MappingOptions, MemStore, OnFull, Store};

const PAGE: usize = 4096;

const CASES: &[Case] = &[
    (
        "faults_on_a_file_resolve_in_the_faulting_thread",
        faults_on_a_file_resolve_in_the_faulting_thread,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_store_without_signal_safe_calls_is_served_by_hand_off",
        a_store_without_signal_safe_calls_is_served_by_hand_off,
        End::Exit(0),
        Setup::None,
    ),
    (
        "a_full_store_fails_the_write_with_enospc_and_keeps_the_rest",
        a_full_store_fails_the_write_with_enospc_and_keeps_the_rest,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_plain_write_to_a_full_store_ends_the_process_with_sigbus",
        a_plain_write_to_a_full_store_ends_the_process_with_sigbus,
        End::Signal(libc::SIGBUS),
        Setup::Tmpfs,
    ),
    (
        "wait_blocks_the_writer_until_space_is_freed",
        wait_blocks_the_writer_until_space_is_freed,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "an_access_past_eof_fails_with_efault",
        an_access_past_eof_fails_with_efault,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "populate_makes_read_into_the_mapping_work",
        populate_makes_read_into_the_mapping_work,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "one_page_faulted_by_many_threads_is_filled_once",
        || one_page_faulted_by_many_threads_is_filled_once(Delivery::InThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "one_page_faulted_by_many_threads_is_filled_once_handler_thread",
        || one_page_faulted_by_many_threads_is_filled_once(Delivery::HandlerThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_sigbus_outside_every_mapping_reaches_the_previous_handler",
        a_sigbus_outside_every_mapping_reaches_the_previous_handler,
        End::Exit(42),
        Setup::Tmpfs,
    ),
    (
        "a_dirty_page_dropped_by_madvise_is_reported_by_flush",
        a_dirty_page_dropped_by_madvise_is_reported_by_flush,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_panicking_callback_fails_the_access_and_the_mapping",
        a_panicking_callback_fails_the_access_and_the_mapping,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_thread_waiting_for_space_still_gets_its_signals",
        a_thread_waiting_for_space_still_gets_its_signals,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "two_threads_faulting_different_pages_allocate_in_parallel",
        || two_threads_faulting_different_pages_allocate_in_parallel(Delivery::InThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "two_threads_faulting_different_pages_allocate_in_parallel_handler_thread",
        || two_threads_faulting_different_pages_allocate_in_parallel(Delivery::HandlerThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "two_threads_faulting_different_pages_fill_in_parallel",
        || two_threads_faulting_different_pages_fill_in_parallel(Delivery::InThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "two_threads_faulting_different_pages_fill_in_parallel_handler_thread",
        || two_threads_faulting_different_pages_fill_in_parallel(Delivery::HandlerThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_fault_on_a_page_being_filled_sleeps_on_that_page",
        || a_fault_on_a_page_being_filled_sleeps_on_that_page(Delivery::InThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_fault_on_a_page_being_filled_sleeps_on_that_page_handler_thread",
        || a_fault_on_a_page_being_filled_sleeps_on_that_page(Delivery::HandlerThread),
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "working_ahead_leaves_no_block_past_eof",
        working_ahead_leaves_no_block_past_eof,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_window_resolves_in_thread_inside_its_range",
        a_window_resolves_in_thread_inside_its_range,
        End::Exit(0),
        Setup::Tmpfs,
    ),
];

fn main() {
    common::bounded::run_cases(CASES);
}

fn in_thread() -> MappingOptions {
    let mut opts = MappingOptions::new();
    opts.delivery(Delivery::InThread).capacity(4 << 20);
    opts
}

fn file_mapping(
    name: &str,
    block: u64,
    len: u64,
    opts: &mut MappingOptions,
) -> (std::path::PathBuf, Mapping) {
    let path = dir().join(name);
    let map = opts.block_size(block).create(true).open(&path).unwrap();
    map.set_len(len).unwrap();
    (path, map)
}

/// Fills a tmpfs until one page of room is left (or none); returns the filler.
fn leave_room(room_pages: u64) -> std::path::PathBuf {
    let filler = dir().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    let len = f.stream_position().unwrap();
    // Give back exactly `room_pages` pages' worth.
    let keep = len.saturating_sub(room_pages * PAGE as u64) / PAGE as u64 * PAGE as u64;
    f.set_len(keep).unwrap();
    filler
}

fn faults_on_a_file_resolve_in_the_faulting_thread() {
    let (path, map) = file_mapping("f", 1024, 64 * PAGE as u64, &mut in_thread());
    let data = pattern(3, 64 * PAGE);
    let p = map.as_ptr();
    for page in (0..64).rev() {
        // SAFETY: inside the file; no reference to these bytes is alive.
        unsafe { std::ptr::copy_nonoverlapping(data[page * PAGE..].as_ptr(), p.add(page * PAGE), PAGE) };
    }
    map.flush().unwrap();
    assert_eq!(read_file(&path), data);
    // A write after the flush faults on a protected page, also in-thread.
    // SAFETY: as above.
    unsafe { p.add(5).write(0xEE) };
    let stats = map.stats();
    assert_eq!(stats.faults_write_protect, 1, "{stats:?}");
    assert_eq!(stats.faults_handed_off, 0, "{stats:?}");
    assert_eq!(stats.faults_in_thread, 65, "{stats:?}");
    drop(map);
    let again = Mapping::options()
        .delivery(Delivery::InThread)
        .open(&path)
        .unwrap();
    let mut back = vec![0u8; 64 * PAGE];
    // SAFETY: inside the file; read faults fill from the store in-thread.
    unsafe { std::ptr::copy_nonoverlapping(again.as_ptr(), back.as_mut_ptr(), back.len()) };
    assert_eq!(back[5], 0xEE);
    assert_eq!(back[6..], data[6..]);
    assert!(again.stats().faults_in_thread > 0 && again.stats().faults_handed_off == 0);
}

fn a_store_without_signal_safe_calls_is_served_by_hand_off() {
    let store = Arc::new(MemStore::new(4096, 64).unwrap());
    store.set_len(16 * PAGE as u64).unwrap();
    let map = in_thread().map_store(store.clone()).unwrap();
    assert_eq!(map.delivery(), Delivery::InThread);
    let p = map.as_ptr();
    for page in 0..16 {
        // SAFETY: inside the file.
        unsafe { p.add(page * PAGE + 1).write(page as u8) };
    }
    map.flush().unwrap();
    for page in 0..16 {
        assert_eq!(store.contents()[page * PAGE + 1], page as u8);
    }
    let stats = map.stats();
    // Fewer than 16: sequential writes make pages ahead writable too.
    let faults = stats.faults_missing_write + stats.faults_write_protect;
    assert!(faults > 0, "{stats:?}");
    assert_eq!(
        (stats.faults_in_thread, stats.faults_handed_off),
        (0, faults),
        "{stats:?}"
    );
}

fn a_full_store_fails_the_write_with_enospc_and_keeps_the_rest() {
    guarded::install().unwrap();
    let (path, map) = file_mapping("f", 1024, 256 * PAGE as u64, &mut in_thread());
    let _filler = leave_room(4);
    let data = pattern(9, 256 * PAGE);
    let mut written = 0;
    let fault = loop {
        // SAFETY: inside the file; failures come back as AccessFault.
        match unsafe { guarded::store(map.as_ptr().add(written), &data[written..written + PAGE]) } {
            Ok(()) => written += PAGE,
            Err(f) => break f,
        }
        assert!(written < data.len(), "the store never filled");
    };
    assert_eq!(fault.cause, FaultCause::NoSpace, "{fault}");
    assert_eq!(fault.done, 0, "a page fails whole, at its first byte");
    assert!(map.stats().faults_handed_off >= 1);
    map.flush().unwrap();
    drop(map);
    let file = read_file(&path);
    assert_eq!(
        file[..written],
        data[..written],
        "every accepted byte is in the file"
    );
}

fn a_plain_write_to_a_full_store_ends_the_process_with_sigbus() {
    let (_, map) = file_mapping("f", 4096, 256 * PAGE as u64, &mut in_thread());
    let _filler = leave_room(0);
    for page in 0..256 {
        // SAFETY: inside the file: the default action of the SIGBUS ends us.
        unsafe { map.as_ptr().add(page * PAGE).write(1) };
    }
    unreachable!("a tmpfs with no room took 1 MiB");
}

fn wait_blocks_the_writer_until_space_is_freed() {
    let (path, map) = file_mapping("f", 4096, 64 * PAGE as u64, in_thread().on_full(OnFull::Wait));
    let map = Arc::new(map);
    let filler = leave_room(0);
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (map, done) = (map.clone(), done.clone());
        thread::spawn(move || {
            for page in 0..8 {
                // SAFETY: inside the file; blocks at the fault while full.
                unsafe { map.as_ptr().add(page * PAGE).write(page as u8 + 1) };
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "the writer waits at its first fault"
    );
    assert!(map.stats().faults_parked >= 1);
    std::fs::remove_file(&filler).unwrap();
    map.notify_space_freed();
    writer.join().unwrap();
    map.flush().unwrap();
    let file = read_file(&path);
    assert!((0..8).all(|p| file[p * PAGE] == p as u8 + 1));
}

fn an_access_past_eof_fails_with_efault() {
    guarded::install().unwrap();
    let (_, map) = file_mapping("f", 1024, 5000, &mut in_thread());
    let mut byte = [0u8; 1];
    // SAFETY: page 2 lies wholly past EOF: the access fails as AccessFault.
    let err = unsafe { guarded::load(map.as_ptr().add(2 * PAGE), &mut byte) }.unwrap_err();
    assert_eq!(err.cause, FaultCause::PastEof);
    // SAFETY: the straddling page reads, zeros past EOF.
    unsafe { guarded::load(map.as_ptr().add(4999 + 2), &mut byte) }.unwrap();
    assert_eq!(byte, [0]);
    map.set_len(3 * PAGE as u64).unwrap();
    // SAFETY: page 2 is below EOF now.
    unsafe { guarded::store(map.as_ptr().add(2 * PAGE), b"now") }.unwrap();
}

fn populate_makes_read_into_the_mapping_work() {
    let (_, map) = file_mapping("f", 1024, 4 * PAGE as u64, &mut in_thread());
    let source = dir().join("source");
    std::fs::write(&source, pattern(4, PAGE)).unwrap();
    let file = std::fs::File::open(&source).unwrap();
    let read_into = |offset: usize| {
        // SAFETY: reads into the mapping's memory, inside the file; a page the
        // kernel cannot use fails the call with EFAULT instead.
        let n = unsafe { libc::pread(file.as_raw_fd(), map.as_ptr().add(offset).cast(), PAGE, 0) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    };
    let err = read_into(PAGE).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EFAULT),
        "an unprepared page fails the call"
    );
    map.populate(PAGE as u64, PAGE as u64, true).unwrap();
    assert_eq!(read_into(PAGE).unwrap(), PAGE);
    let mut back = vec![0u8; PAGE];
    map.read(PAGE as u64, &mut back).unwrap();
    assert_eq!(back, pattern(4, PAGE));
}

/// Where [`Instrumented`] makes two faults meet, or holds one.
#[derive(Clone, Copy, PartialEq)]
enum Meet {
    Nowhere,
    InAllocate,
    InRead,
    /// Reads of this page wait (up to 5 s) until the gate opens.
    GatedRead(u64),
}

/// A file store, still signal-safe, that counts its reads and, as a
/// rendezvous, makes each allocation or read wait (up to 2 s) until two are
/// inside at once, noting whether they met; or holds reads of one page
/// until the test opens a gate.
struct Instrumented {
    inner: FileStore,
    reads: AtomicU64,
    rendezvous: Meet,
    inside: AtomicUsize,
    met: std::sync::atomic::AtomicBool,
    /// A read reached the gated page.
    entered: std::sync::atomic::AtomicBool,
    open: std::sync::atomic::AtomicBool,
}

impl Instrumented {
    fn new(inner: FileStore, rendezvous: Meet) -> Instrumented {
        Instrumented {
            inner,
            reads: AtomicU64::new(0),
            rendezvous,
            inside: AtomicUsize::new(0),
            met: std::sync::atomic::AtomicBool::new(false),
            entered: false.into(),
            open: false.into(),
        }
    }

    /// Holds a read of `len` bytes at `offset` while the gate is closed, if
    /// it covers the gated page.
    fn gate(&self, offset: u64, len: usize) {
        let Meet::GatedRead(page) = self.rendezvous else {
            return;
        };
        let at = page * PAGE as u64;
        if offset > at || offset + len as u64 <= at {
            return;
        }
        self.entered.store(true, Ordering::SeqCst);
        let began = std::time::Instant::now();
        while !self.open.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(5) {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }

    /// Runs `call`, first meeting another fault if `place` is the rendezvous.
    fn met_in<T>(&self, place: Meet, call: impl FnOnce() -> T) -> T {
        if self.rendezvous != place {
            return call();
        }
        self.meet();
        let done = call();
        self.inside.fetch_sub(1, Ordering::SeqCst);
        done
    }

    fn meet(&self) {
        self.inside.fetch_add(1, Ordering::SeqCst);
        let began = std::time::Instant::now();
        while began.elapsed() < Duration::from_secs(2) {
            if self.inside.load(Ordering::SeqCst) >= 2 {
                self.met.store(true, Ordering::SeqCst);
                break;
            }
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
}

impl Store for Instrumented {
    fn block_size(&self) -> u64 {
        self.inner.block_size()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.gate(offset, buf.len());
        self.met_in(Meet::InRead, || self.inner.read_at(offset, buf))
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(offset, data)
    }
    fn allocate(&self, blocks: Range<u64>) -> std::io::Result<()> {
        self.met_in(Meet::InAllocate, || self.inner.allocate(blocks))
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
    fn signal_safe(&self) -> Option<&dyn SignalSafe> {
        Some(self)
    }
}

// SAFETY: atomics, clock_gettime and sched_yield, then the file store's own
// signal-safe calls.
unsafe impl SignalSafe for Instrumented {
    fn read_at_in_signal(&self, offset: u64, buf: &mut [u8]) -> Result<(), i32> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.gate(offset, buf.len());
        self.met_in(Meet::InRead, || {
            self.inner.signal_safe().unwrap().read_at_in_signal(offset, buf)
        })
    }
    fn allocate_in_signal(&self, blocks: Range<u64>) -> Result<(), i32> {
        self.met_in(Meet::InAllocate, || {
            self.inner.signal_safe().unwrap().allocate_in_signal(blocks)
        })
    }
}

/// Eight threads fault one page at once, 20 times: 20 store reads. The
/// other faults find the page being filled (and sleep on it) or already in,
/// from its state word. With a handler thread every thread's fault is
/// reported, so most reports are of a page resolved since, and the
/// service settles them without the mapping's lock.
fn one_page_faulted_by_many_threads_is_filled_once(delivery: Delivery) {
    let path = dir().join("f");
    std::fs::write(&path, pattern(5, 8 * PAGE)).unwrap();
    let store = Arc::new(Instrumented::new(FileStore::open(&path).unwrap(), Meet::Nowhere));
    let map = Arc::new(in_thread().delivery(delivery).map_store(store.clone()).unwrap());
    map.advise(Advice::Random, 0, 0).unwrap();
    for round in 0..20 {
        let page = round % 8;
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (map, barrier) = (map.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    // SAFETY: inside the file.
                    unsafe { map.as_ptr().add(page * PAGE + 7).read_volatile() }
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), pattern(5, 8 * PAGE)[page * PAGE + 7]);
        }
        if round % 8 == 7 {
            map.evict().unwrap();
        }
    }
    // 20 rounds over 8 pages, evicted after each 8: 20 fills, one per page each time.
    assert_eq!(store.reads.load(Ordering::SeqCst), 20);
    let stats = map.stats();
    println!(
        "{delivery:?}: {} faults counted, {} found their page ready, {} slept on its fill",
        stats.faults_missing_read, stats.faults_found_ready, stats.fill_waits
    );
    if delivery == Delivery::HandlerThread {
        assert!(stats.faults_missing_read > 20, "{stats:?}");
        assert!(stats.faults_found_ready > 0, "{stats:?}");
    }
}

extern "C" fn previous_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel's siginfo for this SIGBUS; _exit is async-signal-safe.
    unsafe {
        let code = (*info).si_code;
        libc::_exit(if code == libc::BUS_ADRERR { 42 } else { 43 });
    }
}

fn a_sigbus_outside_every_mapping_reaches_the_previous_handler() {
    // SAFETY: installs a handler that only reads the siginfo and exits.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = previous_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()), 0);
    }
    let (_, map) = file_mapping("f", 4096, PAGE as u64, &mut in_thread());
    // SAFETY: inside the file: resolved in-thread, never reaching the previous handler.
    unsafe { map.as_ptr().write(1) };
    // A kernel SIGBUS at an address of no mapping of ours: a shared mapping
    // of a file cut short under it.
    let path = dir().join("cut");
    std::fs::write(&path, [0u8; PAGE]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: a fresh shared mapping of one page of our own file.
    let other = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(other, libc::MAP_FAILED);
    file.set_len(0).unwrap();
    // SAFETY: reading past the file's end raises SIGBUS; the previous handler exits 42.
    unsafe { other.cast::<u8>().read_volatile() };
    unreachable!("no SIGBUS");
}

fn a_dirty_page_dropped_by_madvise_is_reported_by_flush() {
    let (_, map) = file_mapping("f", 1024, 4 * PAGE as u64, &mut in_thread());
    map.write(0, &[1u8; 4 * PAGE]).unwrap();
    // SAFETY: drops two of the mapping's pages, as a careless caller might.
    unsafe { libc::madvise(map.as_ptr().add(PAGE).cast(), 2 * PAGE, libc::MADV_DONTNEED) };
    // SAFETY: inside the file: a missing page the flags call resident.
    let byte = unsafe { map.as_ptr().add(PAGE).read_volatile() };
    assert_eq!(byte, 0, "refilled from the store, which never had it");
    match map.flush() {
        Err(Error::Discarded { ranges }) => assert_eq!(ranges, vec![PAGE as u64..3 * PAGE as u64]),
        other => panic!("expected Discarded, got {other:?}"),
    }
    // A clean protected page dropped, then written: missing to the CPU,
    // protected to the flags; nothing was lost, so nothing is reported.
    map.flush().unwrap();
    // SAFETY: page 3 is clean and protected after the flush; drop it.
    unsafe { libc::madvise(map.as_ptr().add(3 * PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
    // SAFETY: inside the file.
    unsafe { map.as_ptr().add(3 * PAGE + 9).write(0x77) };
    map.flush().unwrap();
    let mut back = [0u8; 2];
    map.read(3 * PAGE as u64 + 8, &mut back).unwrap();
    assert_eq!(back, [1, 0x77], "refilled from the store, then written");
}

fn a_panicking_callback_fails_the_access_and_the_mapping() {
    guarded::install().unwrap();
    let policy = OnFull::callback(|_| panic!("the callback broke"));
    let (_, map) = file_mapping("f", 4096, 64 * PAGE as u64, in_thread().on_full(policy));
    let _filler = leave_room(0);
    // SAFETY: inside the file; the failed access comes back as AccessFault.
    let err = unsafe { guarded::store(map.as_ptr(), b"x") }.unwrap_err();
    assert!(matches!(err.cause, FaultCause::Io(_)), "{err}");
    assert!(matches!(map.flush(), Err(Error::HandlerFailed(_))));
}

fn a_window_resolves_in_thread_inside_its_range() {
    let path = dir().join("f");
    std::fs::write(&path, pattern(6, 16 * PAGE)).unwrap();
    let map = in_thread()
        .offset(4 * PAGE as u64)
        .len(4 * PAGE as u64)
        .open(&path)
        .unwrap();
    // SAFETY: inside the window.
    unsafe {
        assert_eq!(map.as_ptr().read_volatile(), pattern(6, 16 * PAGE)[4 * PAGE]);
        map.as_ptr().add(PAGE).write(0xAB);
    }
    map.flush().unwrap();
    assert_eq!(map.stats().faults_handed_off, 0);
    let file = read_file(&path);
    assert_eq!(file[5 * PAGE], 0xAB);
    assert_eq!(file[..5 * PAGE], pattern(6, 16 * PAGE)[..5 * PAGE]);
}

static SIGNALS_SEEN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS_SEEN.fetch_add(1, Ordering::SeqCst);
}

fn a_thread_waiting_for_space_still_gets_its_signals() {
    // SAFETY: a handler that only bumps an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_signal as *const () as usize;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()), 0);
    }
    let (_, map) = file_mapping("f", 4096, 16 * PAGE as u64, in_thread().on_full(OnFull::Wait));
    let map = Arc::new(map);
    let filler = leave_room(0);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let writer = {
        let map = map.clone();
        thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            // SAFETY: inside the file; waits at the fault for space.
            unsafe { map.as_ptr().write(9) };
        })
    };
    let tid = tid_rx.recv().unwrap();
    while map.stats().faults_parked == 0 {
        thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..3 {
        // SAFETY: signals a thread of this process that is still alive (it waits).
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(SIGNALS_SEEN.load(Ordering::SeqCst), 3, "handled while waiting");
    assert!(!writer.is_finished(), "still waiting for space");
    std::fs::remove_file(&filler).unwrap();
    map.notify_space_freed();
    writer.join().unwrap();
}

/// Two threads released at once, each running `touch` on the first byte
/// of its page of `map`; what each returned.
fn at_once<T: Send + 'static>(
    map: &Arc<Mapping>,
    pages: [usize; 2],
    touch: fn(*mut u8, usize) -> T,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = pages
        .into_iter()
        .map(|page| {
            let (map, barrier) = (map.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                // SAFETY: the caller's pages are inside the mapping.
                touch(unsafe { map.as_ptr().add(page * PAGE) }, page)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// In the faulting threads, or by two workers of the fault service at once.
fn two_threads_faulting_different_pages_allocate_in_parallel(delivery: Delivery) {
    let path = dir().join("f");
    let inner = FileStore::create(&path).unwrap();
    inner.set_len(256 * PAGE as u64).unwrap();
    let store = Arc::new(Instrumented::new(inner, Meet::InAllocate));
    let map = Arc::new(in_thread().delivery(delivery).map_store(store.clone()).unwrap());
    map.advise(Advice::Random, 0, 0).unwrap();
    // SAFETY: inside the file.
    at_once(&map, [3, 200], |at, page| unsafe { at.write(page as u8) });
    let stats = map.stats();
    assert!(
        store.met.load(Ordering::SeqCst),
        "the two allocations never overlapped: {stats:?}"
    );
    assert_eq!(stats.allocations_overlapped, 1, "{stats:?}");
    assert_eq!(stats.faults_missing_write, 2, "{stats:?}");
    assert_eq!(stats.faults_in_thread, in_thread_faults(delivery, 2), "{stats:?}");
    map.flush().unwrap();
    let file = read_file(&path);
    assert_eq!((file[3 * PAGE], file[200 * PAGE]), (3, 200));
}

/// Two threads' first reads of different pages: each fault reads the store
/// and copies its page in with the flags lock released, so the two reads
/// are inside the store at once (the store's rendezvous sees it; under the
/// lock the second would wait for the first, and they would not meet).
/// With a handler thread, two workers serve the one mapping at once.
fn two_threads_faulting_different_pages_fill_in_parallel(delivery: Delivery) {
    let path = dir().join("f");
    let data = pattern(7, 256 * PAGE);
    std::fs::write(&path, &data).unwrap();
    let store = Arc::new(Instrumented::new(FileStore::open(&path).unwrap(), Meet::InRead));
    let map = Arc::new(in_thread().delivery(delivery).map_store(store.clone()).unwrap());
    map.advise(Advice::Random, 0, 0).unwrap();
    // SAFETY: inside the file.
    let seen = at_once(&map, [3, 200], |at, _| unsafe { at.add(5).read_volatile() });
    assert_eq!(seen, [data[3 * PAGE + 5], data[200 * PAGE + 5]]);
    let stats = map.stats();
    assert!(
        store.met.load(Ordering::SeqCst),
        "the two fills never overlapped: {stats:?}"
    );
    assert_eq!(stats.fills_overlapped, 1, "{stats:?}");
    assert_eq!(stats.faults_missing_read, 2, "{stats:?}");
    assert_eq!(stats.faults_in_thread, in_thread_faults(delivery, 2), "{stats:?}");
    assert_eq!(store.reads.load(Ordering::SeqCst), 2);
    map.check_invariants().unwrap();
}

/// A fault on a page another fault is filling sleeps on that page's state
/// word (counted in `fill_waits`) until the fill records it, and the page
/// is read from the store once; meanwhile faults on other pages, and calls
/// that take the mapping's lock, go on.
fn a_fault_on_a_page_being_filled_sleeps_on_that_page(delivery: Delivery) {
    let path = dir().join("f");
    let data = pattern(9, 256 * PAGE);
    std::fs::write(&path, &data).unwrap();
    let store = Arc::new(Instrumented::new(
        FileStore::open(&path).unwrap(),
        Meet::GatedRead(3),
    ));
    let map = Arc::new(in_thread().delivery(delivery).map_store(store.clone()).unwrap());
    map.advise(Advice::Random, 0, 0).unwrap();
    let reader = |map: &Arc<Mapping>| {
        let map = map.clone();
        // SAFETY: inside the file.
        thread::spawn(move || unsafe { map.as_ptr().add(3 * PAGE + 11).read_volatile() })
    };
    let first = reader(&map);
    let five_s = Duration::from_secs(5);
    common::wait_for("the fill to reach the store", five_s, || {
        store.entered.load(Ordering::SeqCst)
    });
    let second = reader(&map);
    common::wait_for("the second reader to sleep on the fill", five_s, || {
        map.stats().fill_waits == 1
    });
    // SAFETY: inside the file.
    let elsewhere = unsafe { map.as_ptr().add(200 * PAGE + 11).read_volatile() };
    assert_eq!(elsewhere, data[200 * PAGE + 11]);
    assert!(
        !first.is_finished() && !second.is_finished(),
        "both wait for the gated fill"
    );
    store.open.store(true, Ordering::SeqCst);
    assert_eq!(first.join().unwrap(), data[3 * PAGE + 11]);
    assert_eq!(second.join().unwrap(), data[3 * PAGE + 11]);
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        2,
        "page 3 read once, and page 200"
    );
    assert_eq!(map.stats().fill_waits, 1, "{:?}", map.stats());
    map.check_invariants().unwrap();
}

/// The faults of `faults` resolved in-thread under `delivery`.
fn in_thread_faults(delivery: Delivery, faults: u64) -> u64 {
    match delivery {
        Delivery::InThread => faults,
        _ => 0,
    }
}

/// Sequential writers up to EOF under both deliveries: allocation and
/// write-ahead stop at EOF, so after `close` the file holds no block past it
/// (by `SEEK_DATA`, and by the blocks `stat` counts).
fn working_ahead_leaves_no_block_past_eof() {
    use std::os::unix::fs::MetadataExt;
    for (i, delivery) in [Delivery::HandlerThread, Delivery::InThread]
        .into_iter()
        .enumerate()
    {
        for block in [1024u64, 4096, 65536] {
            let path = dir().join(format!("ahead-{i}-{block}"));
            // EOF inside a page and inside a block.
            let eof = 200 * PAGE as u64 + 1500;
            let map = MappingOptions::new()
                .delivery(delivery)
                .capacity(4 << 20)
                .block_size(block)
                .create(true)
                .open(&path)
                .unwrap();
            map.set_len(eof).unwrap();
            for page in 0..=200 {
                // SAFETY: inside the file (page 200 holds EOF).
                unsafe { map.as_ptr().add(page * PAGE).write(page as u8 | 1) };
            }
            map.close().unwrap();
            let store = FileStore::open(&path).unwrap().with_block_size(block).unwrap();
            let end = store.allocated().unwrap().last().map_or(0, |r| r.end);
            assert!(
                end * block <= eof.next_multiple_of(block),
                "{delivery:?} block {block}: data up to block {end}"
            );
            // The filesystem allocates in its own unit (tmpfs: pages).
            let meta = std::fs::metadata(&path).unwrap();
            let (held, unit) = (meta.blocks() * 512, block.max(meta.blksize()));
            assert!(
                held <= eof.next_multiple_of(unit),
                "{delivery:?} block {block}: {held} bytes held for EOF {eof}"
            );
            let file = read_file(&path);
            assert_eq!(file.len() as u64, eof);
            assert!((0..=200).all(|p| file[p * PAGE] == p as u8 | 1));
        }
    }
}
