//! What a write fault does when the store is full: wait for space, or ask a
//! callback. (SIGBUS, the default, is in tests/processes.rs: it kills.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use mkwrite::{FullAction, MappingOptions, MemStore, OnFull, QuotaStore, Store};

const KIB: u64 = 1024;

/// Raw writes through the mapping's memory from another thread.
fn spawn_raw_writer(
    base: usize,
    offset: usize,
    data: Vec<u8>,
    done: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        // SAFETY: `base` is the mapping's memory, alive until the test joins
        // this thread; the bytes written are within the file.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), (base as *mut u8).add(offset), data.len()) };
        done.store(true, Ordering::SeqCst);
    })
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    common::wait_for(what, Duration::from_secs(20), cond);
}

#[test]
fn a_waiting_writer_resumes_after_a_hole_frees_space() {
    let store = Arc::new(MemStore::new(1024, 8).unwrap());
    store.set_len(64 * KIB).unwrap();
    let map = MappingOptions::new()
        .capacity(64 * KIB)
        .on_full(OnFull::Wait)
        .map_store(store.clone())
        .unwrap();
    map.write(0, &[1; 8192]).unwrap(); // all 8 blocks
    map.flush().unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let writer = spawn_raw_writer(map.as_ptr() as usize, 16384, vec![9; 100], done.clone());
    wait_until("the writer to park", || map.stats().faults_parked >= 1);
    thread::sleep(Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "the writer must wait while the store is full"
    );

    map.punch_hole(0, 4096).unwrap(); // frees 4 blocks and rings the handler
    writer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    map.flush().unwrap();
    let bytes = store.contents();
    assert!(
        bytes[16384..16484].iter().all(|&b| b == 9),
        "the waiting writer's bytes landed"
    );
    assert!(bytes[..4096].iter().all(|&b| b == 0));
    assert!(
        bytes[4096..8192].iter().all(|&b| b == 1),
        "nothing written before was lost"
    );
    map.check_invariants().unwrap();
}

#[test]
fn a_waiting_writer_resumes_when_told_space_was_freed() {
    let quota = Arc::new(QuotaStore::new(MemStore::new(4096, 100).unwrap(), 2).unwrap());
    quota.set_len(64 * KIB).unwrap();
    let map = MappingOptions::new()
        .capacity(64 * KIB)
        .on_full(OnFull::Wait)
        .map_store(quota.clone())
        .unwrap();
    map.write(0, &[3; 8192]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = spawn_raw_writer(map.as_ptr() as usize, 40960, vec![4; 5000], done.clone());
    wait_until("the writer to park", || map.stats().faults_parked >= 1);
    assert!(!done.load(Ordering::SeqCst));
    quota.set_limit(10);
    map.notify_space_freed();
    writer.join().unwrap();
    map.flush().unwrap();
    let bytes = quota.inner().contents();
    assert!(bytes[..8192].iter().all(|&b| b == 3));
    assert!(bytes[40960..45960].iter().all(|&b| b == 4));
    // The four blocks written; a sequential writer may also have had blocks
    // allocated ahead of it, within the raised quota.
    assert!((4..=10).contains(&quota.held_blocks()), "{}", quota.held_blocks());
}

#[test]
fn a_callback_chooses_to_retry_after_freeing_space() {
    let quota = Arc::new(QuotaStore::new(MemStore::new(512, 1000).unwrap(), 8).unwrap());
    quota.set_len(64 * KIB).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let policy = {
        let quota = quota.clone();
        let calls = calls.clone();
        OnFull::callback(move |fault| {
            assert!(fault.error.is_full());
            assert_eq!(fault.offset / 4096, 1, "the fault names its offset");
            calls.fetch_add(1, Ordering::SeqCst);
            quota.set_limit(100);
            FullAction::Retry
        })
    };
    let map = MappingOptions::new()
        .capacity(64 * KIB)
        .on_full(policy)
        .map_store(quota.clone())
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    spawn_raw_writer(map.as_ptr() as usize, 0, vec![5; 8000], done.clone())
        .join()
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    map.flush().unwrap();
    assert!(quota.inner().contents()[..8000].iter().all(|&b| b == 5));
}
