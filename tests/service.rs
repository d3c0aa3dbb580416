//! The shared fault service: many mappings cost no thread and no
//! descriptor of their own, their faults are served by one small pool, and
//! a mapping whose store hangs holds up only the worker serving it. Each
//! case runs in a child process with a time limit.

mod common;

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use common::bounded::{Case, End, Setup, dir};
use common::{pattern, read_file, rss_anon};
use mkwrite::{Advice, Delivery, FileStore, Mapping, MappingOptions, MemStore, Store};

const PAGE: usize = 4096;
const PAGES: usize = 4;

const CASES: &[Case] = &[
    (
        "many_mappings_cost_no_thread_and_no_descriptor_of_their_own",
        many_mappings_cost_no_thread_and_no_descriptor_of_their_own,
        End::Exit(0),
        Setup::Tmpfs,
    ),
    (
        "ten_thousand_mappings_work_at_once",
        ten_thousand_mappings_work_at_once,
        End::Exit(0),
        Setup::None,
    ),
    (
        "an_idle_mapping_costs_under_16_kib",
        an_idle_mapping_costs_under_16_kib,
        End::Exit(0),
        Setup::None,
    ),
    (
        "a_mapping_whose_store_hangs_holds_up_no_other",
        a_mapping_whose_store_hangs_holds_up_no_other,
        End::Exit(0),
        Setup::None,
    ),
];

fn main() {
    common::bounded::run_cases(CASES);
}

/// Entries of a `/proc/self` directory: descriptors or threads.
fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn open(path: &std::path::Path, delivery: Delivery) -> Mapping {
    std::fs::write(path, vec![0u8; PAGES * PAGE]).unwrap();
    let store = FileStore::open(path).unwrap();
    let map = MappingOptions::new()
        .capacity((PAGES * PAGE) as u64)
        .delivery(delivery)
        .map_store(store)
        .unwrap();
    // One fault per page written, none ahead: the counts below are exact.
    map.advise(Advice::Random, 0, (PAGES * PAGE) as u64).unwrap();
    map
}

/// 400 mappings of different files, half of each delivery; four threads
/// write a page of every one through plain stores (faults served by the
/// pool, or in the thread); then they close in an interleaved order and
/// every file holds what was written. The process grows by one descriptor
/// per mapping (its file) and by no thread per mapping.
fn many_mappings_cost_no_thread_and_no_descriptor_of_their_own() {
    const MAPPINGS: usize = 400;
    const THREADS: usize = 4;
    let dir = dir();
    let deliveries = [Delivery::HandlerThread, Delivery::InThread];
    // The services start with the first mapping of each kind.
    let warm: Vec<Mapping> = deliveries
        .iter()
        .enumerate()
        .map(|(i, &d)| open(&dir.join(format!("warm{i}")), d))
        .collect();
    let (fds, threads) = (count("/proc/self/fd"), count("/proc/self/task"));
    let maps: Vec<Mapping> = (0..MAPPINGS)
        .map(|i| open(&dir.join(format!("f{i}")), deliveries[i % 2]))
        .collect();
    assert_eq!(
        count("/proc/self/fd"),
        fds + MAPPINGS,
        "one descriptor per mapping: its file's"
    );
    assert_eq!(count("/proc/self/task"), threads, "no thread per mapping");
    thread::scope(|s| {
        for t in 0..THREADS {
            let maps = &maps;
            s.spawn(move || {
                for (i, map) in maps.iter().enumerate() {
                    let data = pattern((i * THREADS + t) as u8, PAGE);
                    // SAFETY: page `t` of each mapping is written by this
                    // thread only, and lies below EOF.
                    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_ptr().add(t * PAGE), PAGE) };
                }
            });
        }
    });
    let served: u64 = maps.iter().map(|m| m.stats().faults_missing_write).sum();
    assert_eq!(
        served,
        (MAPPINGS * THREADS) as u64,
        "every first write faulted once"
    );
    let workers = count("/proc/self/task") - threads;
    assert!(workers <= 32, "the pools grew to {workers} threads");
    // Close in an order unrelated to opening: odd ones backwards, then even ones.
    let mut maps: Vec<Option<Mapping>> = maps.into_iter().map(Some).collect();
    let order = (0..MAPPINGS)
        .rev()
        .filter(|i| i % 2 == 1)
        .chain((0..MAPPINGS).filter(|i| i % 2 == 0));
    for i in order {
        maps[i].take().unwrap().close().unwrap();
    }
    for i in 0..MAPPINGS {
        let file = read_file(&dir.join(format!("f{i}")));
        for t in 0..THREADS {
            assert_eq!(
                file[t * PAGE..][..PAGE],
                pattern((i * THREADS + t) as u8, PAGE),
                "file {i} page {t}"
            );
        }
    }
    drop(warm);
    assert_eq!(
        count("/proc/self/fd"),
        fds - deliveries.len(),
        "every mapping's descriptor closed"
    );
}

/// 10,000 mappings of different files open at once (half of each
/// delivery), within this machine's limit of 20,000 descriptors. Four
/// threads fault on all of them at once (a first write to page 0, a first
/// read of page 1), every one is shrunk across its second page and flushed,
/// and they close in an order unrelated to opening; every file then holds
/// its own page, its zeroed tail, and its new length.
fn ten_thousand_mappings_work_at_once() {
    const MAPPINGS: usize = 10_000;
    const THREADS: usize = 4;
    const LEN: u64 = PAGE as u64 + 10;
    let dir = tempfile::tempdir().unwrap();
    let path = |i: usize| dir.path().join(format!("f{i}"));
    // The services (and their descriptors) start with the first mappings.
    for d in [Delivery::HandlerThread, Delivery::InThread] {
        drop(open(&dir.path().join("warm"), d));
    }
    let fds = count("/proc/self/fd");
    let maps: Vec<Mapping> = (0..MAPPINGS)
        .map(|i| {
            let file = std::fs::File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path(i))
                .unwrap();
            file.set_len(2 * PAGE as u64).unwrap();
            let delivery = [Delivery::HandlerThread, Delivery::InThread][i % 2];
            MappingOptions::new()
                .capacity(2 * PAGE as u64)
                .delivery(delivery)
                .map_store(FileStore::from_file(file, None).unwrap())
                .unwrap()
        })
        .collect();
    assert!(
        count("/proc/self/fd") <= fds + MAPPINGS + 4,
        "about one descriptor per mapping"
    );
    thread::scope(|s| {
        for t in 0..THREADS {
            let maps = &maps;
            s.spawn(move || {
                for (i, map) in maps.iter().enumerate().skip(t).step_by(THREADS) {
                    let data = pattern(i as u8, PAGE);
                    // SAFETY: mapping `i` is touched by this thread only,
                    // both pages below EOF.
                    unsafe {
                        std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_ptr(), PAGE);
                        map.as_ptr().add(PAGE + 20).write(7);
                    }
                }
            });
        }
    });
    for map in &maps {
        let stats = map.stats();
        assert!(
            stats.faults_missing_write >= 1 && stats.faults_missing_read + stats.faults_missing_write >= 1
        );
        map.set_len(LEN).unwrap();
        map.flush().unwrap();
    }
    let mut maps: Vec<Option<Mapping>> = maps.into_iter().map(Some).collect();
    let order = (0..MAPPINGS)
        .rev()
        .filter(|i| i % 3 == 0)
        .chain((0..MAPPINGS).filter(|i| i % 3 != 0));
    for i in order {
        maps[i].take().unwrap().close().unwrap();
    }
    assert_eq!(count("/proc/self/fd"), fds, "every descriptor closed");
    for i in 0..MAPPINGS {
        let file = read_file(&path(i));
        assert_eq!(file.len() as u64, LEN, "file {i}");
        assert_eq!(file[..PAGE], pattern(i as u8, PAGE), "file {i}");
        assert_eq!(
            file[PAGE..],
            [0; 10],
            "file {i}: the byte past the new EOF is gone"
        );
    }
}

/// 1,000 open, idle mappings at the default capacity (1 GiB each: 262,144
/// pages), half of each delivery, over 1 MiB files with data: the process's
/// anonymous resident memory grows by under 16 KiB a mapping (the kernel's
/// own structures aside). Their flags cost memory only where touched.
fn an_idle_mapping_costs_under_16_kib() {
    const MAPPINGS: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let open = |i: u64| {
        let path = dir.path().join(format!("f{i}"));
        std::fs::write(&path, pattern(i as u8, 1 << 20)).unwrap();
        let delivery = [Delivery::HandlerThread, Delivery::InThread][i as usize % 2];
        MappingOptions::new().delivery(delivery).open(&path).unwrap()
    };
    // The services, and the allocator's first arenas, start before measuring.
    drop((open(0), open(1)));
    let before = rss_anon();
    let maps: Vec<Mapping> = (0..MAPPINGS).map(open).collect();
    let per_mapping = rss_anon().saturating_sub(before) / MAPPINGS;
    assert_eq!(maps[0].capacity(), mkwrite::DEFAULT_CAPACITY);
    assert!(
        per_mapping < 16 << 10,
        "an idle mapping costs {per_mapping} bytes"
    );
    println!("an idle mapping: {per_mapping} bytes of anonymous memory");
}

/// A gate that blocks allocations until it opens, and counts who waits.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicUsize,
}

impl Gate {
    fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// A memory store whose allocations wait at a gate: a store stuck on a
/// network, as far as the fault service can tell.
struct Stuck {
    inner: MemStore,
    gate: Arc<Gate>,
}

impl Store for Stuck {
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
    fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.gate.pass();
        self.inner.allocate(blocks)
    }
    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.inner.deallocate(blocks)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
        self.inner.allocated()
    }
}

/// Four mappings whose stores hang in a fault's allocation each hold a
/// worker; a fifth mapping's faults are still served (the pool grows past
/// its two first workers). When the stores come back, every write lands.
fn a_mapping_whose_store_hangs_holds_up_no_other() {
    const STUCK: usize = 4;
    let gate = Arc::new(Gate::default());
    let map_of = |store: Box<dyn Store>| {
        store.set_len((PAGES * PAGE) as u64).unwrap();
        MappingOptions::new()
            .capacity((PAGES * PAGE) as u64)
            .map_store(store)
            .unwrap()
    };
    let stuck: Vec<Mapping> = (0..STUCK)
        .map(|_| {
            let inner = MemStore::new(PAGE as u64, PAGES as u64).unwrap();
            map_of(Box::new(Stuck {
                inner,
                gate: gate.clone(),
            }))
        })
        .collect();
    let free = map_of(Box::new(MemStore::new(PAGE as u64, PAGES as u64).unwrap()));
    thread::scope(|s| {
        for (i, map) in stuck.iter().enumerate() {
            // SAFETY: page 0 is below EOF and written by this thread only.
            s.spawn(move || unsafe { map.as_ptr().write(i as u8 + 1) });
        }
        while gate.waiting.load(Ordering::SeqCst) < STUCK {
            thread::yield_now();
        }
        // SAFETY: page 1 is below EOF and nobody else touches it.
        unsafe { free.as_ptr().add(PAGE).write(9) };
        let mut back = [0];
        free.read(PAGE as u64, &mut back).unwrap();
        assert_eq!(back, [9]);
        assert_eq!(free.stats().faults_missing_write, 1);
        gate.open();
    });
    for (i, map) in stuck.iter().enumerate() {
        let mut back = [0];
        map.read(0, &mut back).unwrap();
        assert_eq!(back, [i as u8 + 1]);
    }
}
