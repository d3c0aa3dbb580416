//! What an ordinary database process does to its memory must never hang or
//! corrupt a mapping: fork, `madvise`, system calls that read into the
//! mapping, `mlock`, a panicking callback or store (issue 8).
//!
//! Each case runs in a child process of this binary with a time limit
//! (`harness = false`): a case that hangs is killed and fails instead of
//! stalling the suite. A case passes when its child exits as expected.

mod common;

use std::io;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::bounded::{Case, End, Setup, dir};
use common::read_file;
use mkwrite::{Error, FileStore, FullAction, Mapping, MappingOptions, MemStore, OnFull, Store};

const PAGE: usize = 4096;

const CASES: &[Case] = &[
    (
        "fork_child_has_no_copy_of_the_memory",
        fork_child_has_no_copy_of_the_memory,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "fork_child_calls_fail_and_the_parent_is_unharmed",
        fork_child_calls_fail_and_the_parent_is_unharmed,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "dontneed_of_clean_pages_refills_them",
        dontneed_of_clean_pages_refills_them,
        End::Exit(0),
        Setup::None,
    ),
    (
        "dontneed_of_dirty_pages_is_reported_by_flush",
        dontneed_of_dirty_pages_is_reported_by_flush,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "dontneed_of_dirty_pages_untouched_is_reported_by_flush",
        dontneed_of_dirty_pages_untouched_is_reported_by_flush,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "madv_free_and_pageout_never_lose_silently",
        madv_free_and_pageout_never_lose_silently,
        End::Exit(0),
        Setup::None,
    ),
    (
        "dontneed_during_resize_and_punch",
        dontneed_during_resize_and_punch,
        End::Exit(0),
        Setup::None,
    ),
    (
        "read_into_a_page_past_eof_is_efault",
        read_into_a_page_past_eof_is_efault,
        End::Exit(0),
        Setup::None,
    ),
    (
        "touch_past_eof_gets_sigbus_with_the_address",
        touch_past_eof_gets_sigbus_with_the_address,
        End::Exit(42),
        Setup::None,
    ),
    (
        "read_into_a_full_store_is_efault_under_sigbus",
        read_into_a_full_store_is_efault_under_sigbus,
        End::Exit(0),
        Setup::None,
    ),
    (
        "read_into_a_full_store_waits_under_wait",
        read_into_a_full_store_waits_under_wait,
        End::Exit(0),
        Setup::None,
    ),
    (
        "a_signal_ends_a_system_call_waiting_for_space",
        a_signal_ends_a_system_call_waiting_for_space,
        End::Exit(0),
        Setup::None,
    ),
    (
        "read_into_a_full_store_as_the_callback_decides",
        read_into_a_full_store_as_the_callback_decides,
        End::Exit(0),
        Setup::None,
    ),
    (
        "mlock_past_eof_is_enomem",
        mlock_past_eof_is_enomem,
        End::Exit(0),
        Setup::None,
    ),
    (
        "lock_never_allocates_and_evict_keeps_locked_pages",
        lock_never_allocates_and_evict_keeps_locked_pages,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_panicking_callback_fails_the_access_and_the_mapping",
        a_panicking_callback_fails_the_access_and_the_mapping,
        End::Exit(0),
        Setup::None,
    ),
    (
        "a_panicking_callback_sigbuses_a_plain_store",
        a_panicking_callback_sigbuses_a_plain_store,
        End::Signal(libc::SIGBUS),
        Setup::None,
    ),
    (
        "a_panicking_store_fails_the_access_and_the_mapping",
        a_panicking_store_fails_the_access_and_the_mapping,
        End::Exit(0),
        Setup::None,
    ),
    (
        "a_store_error_that_is_not_full_never_parks",
        a_store_error_that_is_not_full_never_parks,
        End::Signal(libc::SIGBUS),
        Setup::Tmpfs,
    ),
    (
        "retry_backs_off_and_holds_up_no_other_fault",
        retry_backs_off_and_holds_up_no_other_fault,
        End::Exit(0),
        Setup::None,
    ),
    (
        "reserve_racing_a_shrink_leaks_no_blocks",
        reserve_racing_a_shrink_leaks_no_blocks,
        End::Exit(0),
        Setup::None,
    ),
    (
        "a_read_only_mapping_reads_and_refuses_writes",
        a_read_only_mapping_reads_and_refuses_writes,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "a_store_through_a_read_only_mapping_is_sigsegv",
        a_store_through_a_read_only_mapping_is_sigsegv,
        End::Signal(libc::SIGSEGV),
        Setup::Tmpfs,
    ),
    (
        "with_the_guard_installed_a_plain_store_still_dies_by_sigbus",
        with_the_guard_installed_a_plain_store_still_dies_by_sigbus,
        End::Signal(libc::SIGBUS),
        Setup::None,
    ),
    (
        "the_guard_passes_other_signals_to_the_handler_before_it",
        the_guard_passes_other_signals_to_the_handler_before_it,
        End::Exit(42),
        Setup::None,
    ),
];

fn main() {
    common::bounded::run_cases(CASES);
}

// ---------------------------------------------------------------- helpers

/// A file of `pages` pages, 1 KiB blocks, in the case's tmpfs.
fn file_mapping(name: &str, pages: usize) -> (std::path::PathBuf, Mapping) {
    let path = dir().join(name);
    let map = common::kib_block_mapping(&path, (pages * PAGE) as u64);
    (path, map)
}

/// A store in memory of `pages` pages, with room for `room` 1 KiB blocks.
fn mem_mapping(pages: usize, room: u64, on_full: OnFull) -> (Arc<MemStore>, Mapping) {
    let store = Arc::new(MemStore::new(1024, room).unwrap());
    store.set_len((pages * PAGE) as u64).unwrap();
    let map = MappingOptions::new()
        .capacity(1 << 20)
        .on_full(on_full)
        .map_store(Arc::clone(&store))
        .unwrap();
    (store, map)
}

fn at(map: &Mapping, offset: usize) -> *mut u8 {
    assert!(offset < map.capacity() as usize);
    // SAFETY: within the reservation (checked above); the pointer is only
    // used for volatile accesses and system calls in these tests.
    unsafe { map.as_ptr().add(offset) }
}

fn poke(map: &Mapping, offset: usize, byte: u8, len: usize) {
    for i in 0..len {
        // SAFETY: within the file's pages; plain stores, as a database makes.
        unsafe { at(map, offset + i).write_volatile(byte) };
    }
}

fn peek(map: &Mapping, offset: usize, len: usize) -> Vec<u8> {
    // SAFETY: within the file's pages; plain loads.
    (0..len)
        .map(|i| unsafe { at(map, offset + i).read_volatile() })
        .collect()
}

/// `read(2)` of `len` bytes from a pipe into the mapping at `offset`: a
/// system call that writes the mapping's memory in kernel mode.
fn read_into(map: &Mapping, offset: usize, byte: u8, len: usize) -> io::Result<usize> {
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let data = vec![byte; len];
    // SAFETY: `data` is valid for `len` bytes; the pipe holds 64 KiB.
    assert_eq!(
        unsafe { libc::write(fds[1], data.as_ptr().cast(), len) },
        len as isize
    );
    // SAFETY: the destination is the mapping's memory; the kernel checks it.
    let n = unsafe { libc::read(fds[0], at(map, offset).cast(), len) };
    let result = if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    };
    // SAFETY: closing our own fds.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    result
}

fn madvise(map: &Mapping, offset: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: the range is the mapping's memory; dropping pages of it behind
    // the mapping's back is exactly what these tests do on purpose.
    let rc = unsafe { libc::madvise(at(map, offset).cast(), len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn fork() -> libc::pid_t {
    // SAFETY: the child only calls async-signal-safe functions or the
    // mapping's calls under test, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    pid
}

/// Waits for `pid`; its exit code, or 128 + the signal that killed it.
fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process without running the parent's atexit
    // handlers or destructors in a forked child.
    unsafe { libc::_exit(code) }
}

// ---------------------------------------------------------------- fork

fn fork_child_has_no_copy_of_the_memory() {
    let (_, map) = file_mapping("f", 8);
    poke(&map, 0, 7, 3 * PAGE);
    map.flush().unwrap();
    map.evict().unwrap(); // pages 0..3 are only in the file now
    let pid = fork();
    if pid == 0 {
        // Before: the child read zeros here. Now it has no such memory.
        let byte = peek(&map, PAGE, 1)[0];
        exit_now(if byte == 7 { 10 } else { 11 });
    }
    assert_eq!(
        wait(pid),
        128 + libc::SIGSEGV,
        "the child must not read the parent's pages"
    );
    assert_eq!(peek(&map, PAGE, 1)[0], 7);
}

fn fork_child_calls_fail_and_the_parent_is_unharmed() {
    let (path, map) = file_mapping("f", 8);
    poke(&map, 0, 5, 8 * PAGE);
    map.flush().unwrap();
    poke(&map, 0, 6, PAGE); // dirty in the parent only
    let pid = fork();
    if pid == 0 {
        let forked = |e: &Error| matches!(e, Error::Forked { .. });
        let mut ok = forked(&map.flush().unwrap_err());
        ok &= forked(&map.write(0, b"child").unwrap_err().error);
        ok &= forked(&map.read(0, &mut [0; 4]).unwrap_err().error);
        ok &= forked(&map.set_len(0).unwrap_err());
        ok &= forked(&map.punch_hole(0, 4096).unwrap_err());
        ok &= forked(&map.evict().unwrap_err());
        ok &= map.len() == 8 * PAGE as u64;
        drop(map); // must not flush, join or panic
        exit_now(if ok { 0 } else { 1 });
    }
    assert_eq!(wait(pid), 0, "every call in the child is Error::Forked");
    let mut back = [0u8; 4];
    map.read(0, &mut back).unwrap();
    assert_eq!(back, [6; 4], "the parent's checked read still works");
    map.write(PAGE as u64, &[9; 10]).unwrap();
    map.flush().unwrap();
    let file = read_file(&path);
    let mut want = vec![5u8; 8 * PAGE];
    want[..PAGE].fill(6);
    want[PAGE..PAGE + 10].fill(9);
    assert!(file == want, "the file is exactly the parent's data");
}

// ---------------------------------------------------------------- madvise

fn dontneed_of_clean_pages_refills_them() {
    let (_, map) = mem_mapping(8, 64, OnFull::Sigbus);
    poke(&map, 0, 3, 8 * PAGE);
    map.flush().unwrap();
    let _ = peek(&map, 0, 8 * PAGE); // resident, clean, protected
    madvise(&map, 0, 8 * PAGE, libc::MADV_DONTNEED).unwrap();
    assert_eq!(
        peek(&map, 0, 8 * PAGE),
        vec![3; 8 * PAGE],
        "refilled from the store"
    );
    poke(&map, 2 * PAGE, 4, 1); // and writable again through a fault
    map.flush().unwrap();
    assert_eq!(map.stats().pages_discarded, 0, "clean pages lose nothing");
    map.check_invariants().unwrap();
}

fn dontneed_of_dirty_pages_is_reported_by_flush() {
    let (path, map) = file_mapping("f", 8);
    poke(&map, 0, 1, 8 * PAGE);
    map.flush().unwrap();
    poke(&map, 2 * PAGE, 2, 2 * PAGE); // pages 2 and 3 dirty
    poke(&map, 6 * PAGE, 2, 10); // page 6 dirty, kept
    madvise(&map, 2 * PAGE, 2 * PAGE, libc::MADV_DONTNEED).unwrap();
    assert_eq!(
        peek(&map, 2 * PAGE, 2 * PAGE),
        vec![1; 2 * PAGE],
        "the store's bytes, refilled"
    );
    let err = map.flush().unwrap_err();
    assert!(
        matches!(&err, Error::Discarded { ranges } if ranges.len() == 1 && ranges[0] == (2 * PAGE as u64..4 * PAGE as u64)),
        "{err:?}"
    );
    assert_eq!(map.stats().pages_discarded, 2);
    assert_eq!(
        &read_file(&path)[6 * PAGE..6 * PAGE + 10],
        &[2; 10],
        "the rest was flushed"
    );
    map.flush().unwrap(); // reported once
    map.check_invariants().unwrap();
}

fn dontneed_of_dirty_pages_untouched_is_reported_by_flush() {
    let (path, map) = file_mapping("f", 8);
    poke(&map, 0, 1, 8 * PAGE);
    map.flush().unwrap();
    poke(&map, 0, 2, 8 * PAGE);
    madvise(&map, 4 * PAGE, PAGE, libc::MADV_DONTNEED).unwrap();
    // The flush itself meets the dropped page: no hang, no silent loss.
    let err = map.flush().unwrap_err();
    assert!(
        matches!(&err, Error::Discarded { ranges } if ranges.len() == 1 && ranges[0] == (4 * PAGE as u64..5 * PAGE as u64)),
        "{err:?}"
    );
    let file = read_file(&path);
    assert!(file[..4 * PAGE].iter().all(|&b| b == 2) && file[5 * PAGE..].iter().all(|&b| b == 2));
    assert!(
        file[4 * PAGE..5 * PAGE].iter().all(|&b| b == 1),
        "the store's bytes, not zeros"
    );
    assert_eq!(peek(&map, 4 * PAGE, 1), [1]);
    map.check_invariants().unwrap();
}

fn madv_free_and_pageout_never_lose_silently() {
    let (store, map) = mem_mapping(16, 128, OnFull::Sigbus);
    poke(&map, 0, 1, 16 * PAGE);
    map.flush().unwrap();
    poke(&map, 0, 2, 16 * PAGE);
    madvise(&map, 0, 16 * PAGE, libc::MADV_FREE).unwrap();
    // Reclaim now if the kernel will (it may decline; then nothing is lost).
    let _ = madvise(&map, 0, 16 * PAGE, libc::MADV_PAGEOUT);
    let seen = peek(&map, 0, 16 * PAGE);
    let flushed = map.flush();
    let lost: Vec<_> = match &flushed {
        Ok(()) => Vec::new(),
        Err(Error::Discarded { ranges }) => ranges.clone(),
        Err(e) => panic!("{e}"),
    };
    let in_lost = |i: usize| lost.iter().any(|r| r.contains(&(i as u64)));
    for (i, (&mem, &file)) in seen.iter().zip(store.contents().iter()).enumerate() {
        let want = if in_lost(i) { 1 } else { 2 };
        assert_eq!((mem, file), (want, want), "byte {i}: lost ranges {lost:?}");
    }
    madvise(&map, 0, 16 * PAGE, libc::MADV_REMOVE)
        .expect_err("the kernel refuses MADV_REMOVE on private memory");
    map.check_invariants().unwrap();
}

fn dontneed_during_resize_and_punch() {
    let (store, map) = mem_mapping(8, 128, OnFull::Sigbus);
    poke(&map, 0, 1, 8 * PAGE);
    map.flush().unwrap();
    map.set_len(7 * PAGE as u64 + 100).unwrap(); // page 7 straddles EOF
    poke(&map, 7 * PAGE, 2, 50);
    map.flush().unwrap();
    madvise(&map, 0, 8 * PAGE, libc::MADV_DONTNEED).unwrap();
    // Each of these copies resident pages under the mapping's lock; a page
    // dropped behind its back must not make them fault on themselves.
    map.set_len(8 * PAGE as u64).unwrap();
    map.punch_hole(PAGE as u64 + 10, 20).unwrap();
    map.set_len(6 * PAGE as u64 + 10).unwrap();
    map.flush().unwrap();
    let mut want = vec![1u8; 6 * PAGE + 10];
    want[PAGE + 10..PAGE + 30].fill(0);
    assert!(store.contents() == want);
    assert_eq!(peek(&map, 0, 6 * PAGE + 10), want);
    map.check_invariants().unwrap();
}

// ---------------------------------------------------------------- system calls

fn read_into_a_page_past_eof_is_efault() {
    let (_, map) = mem_mapping(1, 64, OnFull::Sigbus);
    let err = read_into(&map, 2 * PAGE, 9, 16).unwrap_err();
    assert_eq!(errno(&err), libc::EFAULT, "{err}");
    let err = read_into(&map, 2 * PAGE + 100, 9, 16).unwrap_err();
    assert_eq!(errno(&err), libc::EFAULT, "again: {err}");
    // EOF moves over the page: it is file data again.
    map.set_len(4 * PAGE as u64).unwrap();
    assert_eq!(read_into(&map, 2 * PAGE, 9, 16).unwrap(), 16);
    assert_eq!(peek(&map, 2 * PAGE, 17), [vec![9; 16], vec![0]].concat());
    map.set_len(PAGE as u64).unwrap();
    assert_eq!(errno(&read_into(&map, 3 * PAGE, 9, 1).unwrap_err()), libc::EFAULT);
    map.check_invariants().unwrap();
}

static EXPECTED_ADDRESS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigbus_check_address(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let info = unsafe { &*info };
    // SAFETY: a kernel SIGBUS carries the fault address.
    let addr = unsafe { info.si_addr() } as usize;
    let ok = info.si_code == libc::BUS_ADRERR && addr == EXPECTED_ADDRESS.load(Ordering::SeqCst);
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(if ok { 42 } else { 43 }) }
}

fn touch_past_eof_gets_sigbus_with_the_address() {
    let (_, map) = mem_mapping(1, 64, OnFull::Sigbus);
    EXPECTED_ADDRESS.store(at(&map, 3 * PAGE + 5) as usize, Ordering::SeqCst);
    // SAFETY: installing an async-signal-safe handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus_check_address as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
    let _ = peek(&map, 3 * PAGE + 5, 1);
    unreachable!("a load past EOF must not return");
}

fn read_into_a_full_store_is_efault_under_sigbus() {
    // Room for 4 KiB: page 0 takes it all.
    let (store, map) = mem_mapping(4, 4, OnFull::Sigbus);
    poke(&map, 0, 1, PAGE);
    let _ = peek(&map, PAGE, 1); // page 1 clean, write-protected
    for offset in [PAGE, 2 * PAGE] {
        let err = read_into(&map, offset, 9, 100).unwrap_err();
        assert_eq!(errno(&err), libc::EFAULT, "at {offset}: {err}");
    }
    assert!(map.stats().faults_fenced >= 2);
    assert_eq!(peek(&map, PAGE, 4), [0; 4], "reads of the failed page still work");
    map.punch_hole(0, PAGE as u64).unwrap(); // frees the 4 blocks
    assert_eq!(read_into(&map, PAGE, 9, 100).unwrap(), 100, "room again");
    map.flush().unwrap();
    assert_eq!(
        &store.contents()[PAGE..PAGE + 101],
        [vec![9; 100], vec![0]].concat()
    );
    map.check_invariants().unwrap();
}

fn read_into_a_full_store_waits_under_wait() {
    let (store, map) = mem_mapping(4, 4, OnFull::Wait);
    poke(&map, 0, 1, PAGE);
    let map = Arc::new(map);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (map, done) = (Arc::clone(&map), Arc::clone(&done));
        thread::spawn(move || {
            let n = read_into(&map, 2 * PAGE, 9, 100);
            done.store(true, Ordering::SeqCst);
            n
        })
    };
    thread::sleep(Duration::from_millis(300));
    assert!(!done.load(Ordering::SeqCst), "the read waits for space");
    assert!(map.stats().faults_parked >= 1);
    map.punch_hole(0, PAGE as u64).unwrap();
    assert_eq!(
        reader.join().unwrap().unwrap(),
        100,
        "and completes once space is freed"
    );
    map.flush().unwrap();
    assert_eq!(&store.contents()[2 * PAGE..2 * PAGE + 100], &[9; 100]);
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn a_signal_ends_a_system_call_waiting_for_space() {
    // A fault taken inside a system call cannot see a signal: the kernel
    // retries it at once, so a waiting `read(2)` with a signal pending
    // would spin until space came. It fails with EFAULT instead, as a wait
    // a signal interrupts.
    // SAFETY: installing a handler that does nothing, without SA_RESTART.
    unsafe { libc::signal(libc::SIGUSR1, ignore_signal as *const () as libc::sighandler_t) };
    let (_, map) = mem_mapping(4, 4, OnFull::Wait);
    poke(&map, 0, 1, PAGE);
    let map = Arc::new(map);
    let tid = Arc::new(AtomicU64::new(0));
    let reader = {
        let (map, tid) = (Arc::clone(&map), Arc::clone(&tid));
        thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid.store(unsafe { libc::gettid() } as u64, Ordering::SeqCst);
            read_into(&map, 2 * PAGE, 9, 100)
        })
    };
    let start = Instant::now();
    while map.stats().faults_parked == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the read never parked");
        thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling our own thread, alive until joined below.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            tid.load(Ordering::SeqCst) as i32,
            libc::SIGUSR1,
        )
    };
    let err = reader.join().unwrap().unwrap_err();
    assert_eq!(errno(&err), libc::EFAULT, "{err}");
    // Nothing was written; the mapping goes on.
    map.punch_hole(0, PAGE as u64).unwrap();
    assert_eq!(read_into(&map, 2 * PAGE, 9, 100).unwrap(), 100);
}

fn read_into_a_full_store_as_the_callback_decides() {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let policy = OnFull::callback(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        FullAction::Sigbus
    });
    let (_, map) = mem_mapping(4, 4, policy);
    poke(&map, 0, 1, PAGE);
    assert_eq!(errno(&read_into(&map, PAGE, 9, 10).unwrap_err()), libc::EFAULT);
    assert!(calls.load(Ordering::SeqCst) >= 1);
}

// ---------------------------------------------------------------- mlock

fn mlock(map: &Mapping, offset: usize, len: usize) -> io::Result<()> {
    // SAFETY: locking part of our own mapping.
    let rc = unsafe { libc::mlock(at(map, offset).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mlock_past_eof_is_enomem() {
    let (_, map) = mem_mapping(1, 64, OnFull::Sigbus);
    let err = mlock(&map, 0, 4 * PAGE).unwrap_err();
    assert_eq!(errno(&err), libc::ENOMEM, "{err}");
    assert!(mlock(&map, 2 * PAGE, PAGE).is_err());
    // The mapping goes on working.
    map.write(0, b"after").unwrap();
    map.flush().unwrap();
}

fn lock_never_allocates_and_evict_keeps_locked_pages() {
    let (path, map) = file_mapping("sparse", 16);
    map.flush().unwrap();
    let before = map.stats();
    map.lock(0, 32 * PAGE as u64).unwrap(); // past EOF too: locked as pages come
    let after = map.stats();
    assert_eq!(after.allocations, before.allocations, "locking allocates nothing");
    assert_eq!(after.pages_resident, 16, "the pages below EOF are in memory");
    assert_eq!(after.pages_dirty, 0);
    map.evict().unwrap();
    assert_eq!(map.stats().pages_resident, 16, "evict leaves locked pages");
    map.flush().unwrap();
    let blocks = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
        .unwrap();
    assert_eq!(blocks, 0, "the file is still sparse");
    // Locked pages can still be written, resized and punched.
    poke(&map, PAGE, 3, 10);
    map.set_len(15 * PAGE as u64 + 7).unwrap();
    map.punch_hole(PAGE as u64, 2).unwrap();
    map.flush().unwrap();
    assert_eq!(
        &read_file(&path)[PAGE..PAGE + 10],
        &[0, 0, 3, 3, 3, 3, 3, 3, 3, 3]
    );
    map.unlock(0, 32 * PAGE as u64).unwrap();
    map.evict().unwrap();
    assert_eq!(map.stats().pages_resident, 0);
    map.check_invariants().unwrap();
}

// ---------------------------------------------------------------- panics

fn panicking_callback() -> OnFull {
    OnFull::callback(|_| panic!("a callback that panics"))
}

fn assert_failed(map: &Mapping) {
    let failed = |e: &Error| matches!(e, Error::HandlerFailed(why) if why.contains("panic"));
    assert!(failed(&map.set_len(0).unwrap_err()));
    assert!(failed(&map.flush().unwrap_err()));
    assert!(failed(&map.write(0, b"x").unwrap_err().error));
    assert!(failed(&map.read(0, &mut [0]).unwrap_err().error));
    assert!(failed(&map.evict().unwrap_err()));
}

fn a_panicking_callback_fails_the_access_and_the_mapping() {
    let (_, map) = mem_mapping(4, 4, panicking_callback());
    poke(&map, 0, 1, PAGE);
    assert_eq!(errno(&read_into(&map, PAGE, 9, 10).unwrap_err()), libc::EFAULT);
    assert_failed(&map);
    // Later faults fail too, rather than hang.
    assert_eq!(
        errno(&read_into(&map, 2 * PAGE, 9, 10).unwrap_err()),
        libc::EFAULT
    );
}

fn a_panicking_callback_sigbuses_a_plain_store() {
    let (_, map) = mem_mapping(4, 4, panicking_callback());
    poke(&map, 0, 1, PAGE);
    poke(&map, PAGE, 1, 1);
    unreachable!("the store must not return");
}

/// A store that runs `before` ahead of each allocation: a user's store with
/// a bug or a check of its own.
struct AllocateAfter<S> {
    inner: S,
    before: fn(&S, &std::ops::Range<u64>) -> io::Result<()>,
}

impl<S: Store> Store for AllocateAfter<S> {
    fn block_size(&self) -> u64 {
        self.inner.block_size()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)
    }
    fn allocate(&self, blocks: std::ops::Range<u64>) -> io::Result<()> {
        (self.before)(&self.inner, &blocks)?;
        self.inner.allocate(blocks)
    }
    fn deallocate(&self, blocks: std::ops::Range<u64>) -> io::Result<()> {
        self.inner.deallocate(blocks)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn allocated(&self) -> io::Result<Vec<std::ops::Range<u64>>> {
        self.inner.allocated()
    }
}

fn a_panicking_store_fails_the_access_and_the_mapping() {
    let store = AllocateAfter {
        inner: MemStore::new(1024, 64).unwrap(),
        before: |_, _| panic!("a store that panics"),
    };
    store.set_len(4 * PAGE as u64).unwrap();
    let map = MappingOptions::new().capacity(1 << 20).map_store(store).unwrap();
    assert_eq!(peek(&map, 0, 1), [0], "reads need no allocation");
    assert_eq!(errno(&read_into(&map, PAGE, 9, 10).unwrap_err()), libc::EFAULT);
    assert_failed(&map);
}

// ---------------------------------------------------------------- defects

fn a_store_error_that_is_not_full_never_parks() {
    let path = dir().join("f");
    let store = FileStore::create(&path).unwrap().with_block_size(1024).unwrap();
    store.set_len(4 * PAGE as u64).unwrap();
    let map = MappingOptions::new()
        .capacity(1 << 20)
        .on_full(OnFull::Wait)
        // A store that checks the file's length before allocating, as a
        // careful store does: its error is neither no-space nor quota.
        .map_store(AllocateAfter {
            inner: store,
            before: |file, _| file.write_at(0, &[]), // LengthChanged if resized underneath
        })
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8 * PAGE as u64)
        .unwrap();
    // LengthChanged is not "full": more space would not cure it, so the
    // store must fail (SIGBUS) rather than wait forever.
    poke(&map, 0, 1, 1);
    unreachable!("the store must not return");
}

fn retry_backs_off_and_holds_up_no_other_fault() {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let (store, map) = mem_mapping(
        8,
        4,
        OnFull::callback(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            FullAction::Retry
        }),
    );
    poke(&map, 0, 1, PAGE); // the store is full now
    let map = Arc::new(map);
    let writer = {
        let map = Arc::clone(&map);
        thread::spawn(move || poke(&map, 4 * PAGE, 2, 1))
    };
    thread::sleep(Duration::from_millis(300));
    let retried = calls.load(Ordering::SeqCst);
    assert!(
        (2..=30).contains(&retried),
        "{retried} retries in 300 ms: backed off, not spinning"
    );
    assert_eq!(
        peek(&map, 6 * PAGE, 4),
        [0; 4],
        "another page's fault is served meanwhile"
    );
    map.punch_hole(0, PAGE as u64).unwrap();
    writer.join().unwrap();
    map.flush().unwrap();
    assert_eq!(store.contents()[4 * PAGE], 2);
}

/// Allocations the store was asked for wholly past its length (a leak:
/// nothing frees them until the file shrinks again).
static ALLOCATED_PAST_EOF: AtomicU64 = AtomicU64::new(0);

fn reserve_racing_a_shrink_leaks_no_blocks() {
    let store = AllocateAfter {
        inner: MemStore::new(1024, 4096).unwrap(),
        before: |store, blocks| {
            if blocks.start * store.block_size() >= store.len() {
                ALLOCATED_PAST_EOF.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        },
    };
    store.set_len(64 * PAGE as u64).unwrap();
    let map = Arc::new(MappingOptions::new().capacity(1 << 20).map_store(store).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let resizer = {
        let (map, stop) = (Arc::clone(&map), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                map.set_len(PAGE as u64).unwrap();
                map.set_len(64 * PAGE as u64).unwrap();
            }
        })
    };
    let start = Instant::now();
    let mut broken = None;
    while start.elapsed() < Duration::from_secs(2) && broken.is_none() {
        let _ = map.reserve(0, 64 * PAGE as u64);
        // No block wholly past EOF may be allocated (a shrink frees them all).
        broken = map.check_invariants().err();
    }
    stop.store(true, Ordering::SeqCst);
    resizer.join().unwrap();
    assert_eq!(broken, None);
    assert_eq!(
        ALLOCATED_PAST_EOF.load(Ordering::SeqCst),
        0,
        "reserve allocated past EOF"
    );
}

fn read_only_file(name: &str) -> std::path::PathBuf {
    let path = dir().join(name);
    std::fs::write(&path, vec![7u8; 3 * PAGE + 10]).unwrap();
    common::remount_read_only(&dir());
    path
}

fn a_read_only_mapping_reads_and_refuses_writes() {
    let path = read_only_file("ro");
    let err = Mapping::open(&path).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    let map = MappingOptions::new().read_only(true).open(&path).unwrap();
    assert!(map.is_read_only());
    let mut back = vec![0; 3 * PAGE + 10];
    map.read(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 7));
    assert_eq!(peek(&map, 3 * PAGE, 11), [vec![7; 10], vec![0]].concat());
    let ro = |e: &Error| matches!(e, Error::ReadOnlyMapping);
    assert!(ro(&map.write(0, b"x").unwrap_err().error));
    assert!(ro(&map.set_len(0).unwrap_err()));
    assert!(ro(&map.punch_hole(0, 10).unwrap_err()));
    assert!(ro(&map.reserve(0, 10).unwrap_err().error));
    map.flush().unwrap();
    map.evict().unwrap();
    assert_eq!(
        errno(&read_into(&map, 0, 1, 10).unwrap_err()),
        libc::EFAULT,
        "read(2) into it"
    );
    assert_eq!(peek(&map, 0, 2), [7, 7], "still the file's bytes");
    map.close().unwrap();
}

fn a_store_through_a_read_only_mapping_is_sigsegv() {
    let path = read_only_file("ro");
    let map = MappingOptions::new().read_only(true).open(&path).unwrap();
    poke(&map, 0, 1, 1);
    unreachable!("a store to read-only memory must not return");
}

// ---------------------------------------------------------------- the guard

fn with_the_guard_installed_a_plain_store_still_dies_by_sigbus() {
    let (_, map) = mem_mapping(4, 4, OnFull::Sigbus);
    mkwrite::guarded::install().unwrap();
    // SAFETY: the mapping's memory; page 0 takes all the room.
    let full = unsafe {
        mkwrite::guarded::fill(at(&map, 0), 1, PAGE).unwrap();
        mkwrite::guarded::fill(at(&map, PAGE), 1, 10).unwrap_err()
    };
    assert_eq!(full.cause, mkwrite::guarded::FaultCause::NoSpace);
    poke(&map, PAGE, 1, 1); // not guarded: the default action
    unreachable!("a plain store to a full store must not return");
}

extern "C" fn exit_42(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(42) }
}

fn the_guard_passes_other_signals_to_the_handler_before_it() {
    // SAFETY: installing an async-signal-safe handler, before the guard.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = exit_42 as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
    let (_, map) = mem_mapping(4, 4, OnFull::Sigbus);
    mkwrite::guarded::install().unwrap();
    poke(&map, 0, 1, PAGE);
    // SAFETY: the mapping's memory.
    let full = unsafe { mkwrite::guarded::fill(at(&map, PAGE + 7), 1, 10).unwrap_err() };
    assert_eq!(
        (full.cause, full.done),
        (mkwrite::guarded::FaultCause::NoSpace, 0)
    );
    poke(&map, PAGE, 1, 1); // reaches the earlier handler, which exits 42
    unreachable!("the earlier handler exits");
}
