//! Files larger than memory: a mapping given a `Budget` keeps its resident
//! pages within it, evicting (dirty pages written back first) while two
//! threads read and write a file four times its size at random through
//! plain loads and stores; the process's anonymous memory is sampled all
//! along, and the file ends equal to a model. Each case runs in a child
//! process with a time limit.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use std::sync::Arc;

use common::bounded::{Case, End, Setup};
use common::injector::{Fault, Injector};
use common::{pattern, read_file, rss_anon};
use mkwrite::{Budget, Delivery, FileStore, MappingOptions};

const PAGE: usize = 4096;
const BUDGET: u64 = 8 << 20;
const FILE: usize = 4 * BUDGET as usize;
/// What the process may hold beyond the budget: one fill (33 pages) per
/// worker of the fault service that may resolve a fault before waiting for
/// the evictor (16), and the allocator's and threads' own small growth.
/// (Measured here: 0.6–1.4 MiB over the budget at the peak.)
const OVERHEAD: u64 = 16 * 33 * PAGE as u64 + (2 << 20);
const RUN: Duration = Duration::from_secs(10);

const CASES: &[Case] = &[
    (
        "a_failed_write_back_while_evicting_loses_nothing",
        a_failed_write_back_while_evicting_loses_nothing,
        End::Exit(0),
        Setup::None,
    ),
    (
        "four_times_the_budget_through_the_fault_service",
        four_times_the_budget_through_the_fault_service,
        End::Exit(0),
        Setup::None,
    ),
    (
        "four_times_the_budget_in_thread",
        four_times_the_budget_in_thread,
        End::Exit(0),
        Setup::None,
    ),
];

fn main() {
    common::bounded::run_cases(CASES);
}

fn four_times_the_budget_through_the_fault_service() {
    four_times_the_budget(Delivery::HandlerThread);
}

fn four_times_the_budget_in_thread() {
    four_times_the_budget(Delivery::InThread);
}

/// A small generator, so the run needs no crate of its own.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn four_times_the_budget(delivery: Delivery) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(FILE as u64)
        .unwrap();
    let budget = Budget::new(BUDGET);
    let map = MappingOptions::new()
        .delivery(delivery)
        .budget(&budget)
        .map_store(FileStore::open(&path).unwrap())
        .unwrap();
    // The model, in memory before the baseline is taken (every page touched).
    let mut model = vec![1u8; FILE];
    std::hint::black_box(&mut model); // written for real, not folded into calloc
    model.fill(0);
    let model_ptr = model.as_mut_ptr() as usize;
    let base = map.as_ptr() as usize;
    let stop = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let baseline = rss_anon();
    let mut curve = Vec::new();
    thread::scope(|s| {
        let sampler = s.spawn(|| {
            let started = Instant::now();
            let mut curve = Vec::new();
            let mut window = 0;
            while !stop.load(Ordering::SeqCst) {
                let rss = rss_anon().saturating_sub(baseline);
                peak.fetch_max(rss, Ordering::SeqCst);
                window = window.max(rss);
                if started.elapsed() >= Duration::from_millis(500) * (curve.len() as u32 + 1) {
                    curve.push(std::mem::take(&mut window));
                }
                thread::sleep(Duration::from_millis(2));
            }
            curve
        });
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng(0x9e3779b97f4a7c15 ^ (t + 1));
                    let started = Instant::now();
                    let mut ops = 0u64;
                    while started.elapsed() < RUN {
                        // Thread t owns the pages p with p % 2 == t.
                        let page = rng.below(FILE as u64 / PAGE as u64 / 2) * 2 + t;
                        let at = page as usize * PAGE + rng.below(PAGE as u64 / 8) as usize * 8;
                        // SAFETY: `at` lies inside the file and the mapping; only
                        // this thread touches its pages, in the mapping and in
                        // the model alike.
                        unsafe {
                            let (mem, model) = ((base + at) as *mut u64, (model_ptr + at) as *mut u64);
                            if rng.below(10) < 6 {
                                let value = rng.below(u64::MAX);
                                mem.write(value); // a plain store: the fault path
                                model.write(value);
                            } else {
                                assert_eq!(mem.read(), model.read(), "offset {at}");
                            }
                        }
                        ops += 1;
                    }
                    ops
                })
            })
            .collect();
        let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        stop.store(true, Ordering::SeqCst);
        curve = sampler.join().unwrap();
        assert!(ops > 1000, "{ops} operations");
        println!("{delivery:?}: {ops} loads and stores in {RUN:?}");
    });
    // The curve: the peak of each half second, in MiB over the baseline.
    let mib: Vec<String> = curve
        .iter()
        .map(|b| format!("{:.1}", *b as f64 / f64::from(1 << 20)))
        .collect();
    println!(
        "RssAnon over the baseline, peak of each 0.5 s, MiB (budget 8): {}",
        mib.join(" ")
    );
    let grown = peak.load(Ordering::SeqCst);
    let stats = map.stats();
    assert!(stats.pages_evicted > 0, "nothing was evicted: {stats:?}");
    assert!(
        grown <= BUDGET + OVERHEAD,
        "anonymous memory grew by {} KiB at its peak, over the budget of {} KiB and {} KiB overhead (resident {} KiB, {stats:?})",
        grown >> 10,
        BUDGET >> 10,
        OVERHEAD >> 10,
        budget.resident() >> 10
    );
    assert!(budget.resident() <= BUDGET + OVERHEAD);
    map.close().unwrap();
    assert!(read_file(&path) == model, "the file differs from the model");
    assert_eq!(budget.resident(), 0, "a closed mapping holds nothing");
}

/// The eviction path under fault injection: for every write and every sync
/// the workload makes (checked writes of parts of pages over a budget of 4
/// pages on a file of 16, so most writes evict a dirty page, plus flushes), that call fails
/// once with EIO. A write-back failing inside an eviction keeps its pages
/// dirty and resident (the checked write that evicted still succeeds: its
/// bytes landed); a failing flush reports it and the next flush writes the
/// pages. Every run ends with the file equal to the model.
fn a_failed_write_back_while_evicting_loses_nothing() {
    const PAGES: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let workload = |fault: Option<(Fault, u64)>| {
        let path = dir.path().join("evicted.db");
        let _ = std::fs::remove_file(&path);
        let store = Arc::new(Injector::new(FileStore::create(&path).unwrap(), fault));
        let budget = Budget::new(4 * PAGE as u64);
        let map = MappingOptions::new()
            .capacity((PAGES * PAGE) as u64)
            .budget(&budget)
            .map_store(Arc::clone(&store))
            .unwrap();
        map.set_len((PAGES * PAGE) as u64).unwrap();
        let mut model = vec![0u8; PAGES * PAGE];
        let flush = |what: &str| {
            if let Err(e) = map.flush() {
                // The injected failure, reported; the pages stay dirty.
                map.flush()
                    .unwrap_or_else(|e2| panic!("{fault:?} {what}: {e}, then {e2}"));
            }
        };
        for i in 0..48usize {
            // A part of a page: a page lost early would show at the end.
            // Each page is written thrice, at three places.
            let at = (i * 7) % PAGES * PAGE + (i * 5 + i / 16) % 8 * 512;
            let data = pattern(i as u8, 512);
            map.write(at as u64, &data)
                .unwrap_or_else(|e| panic!("{fault:?}: write {i}: {e}"));
            model[at..][..512].copy_from_slice(&data);
            assert!(
                budget.resident() <= 4 * PAGE as u64 + PAGE as u64,
                "{fault:?}: over budget"
            );
            if i % 8 == 7 {
                flush("flush");
            }
        }
        flush("last flush");
        let evicted = map.stats().pages_evicted;
        map.close().unwrap_or_else(|e| panic!("{fault:?}: close: {e}"));
        assert!(
            read_file(&path) == model,
            "{fault:?}: the file differs from the model"
        );
        (store, evicted)
    };
    let (dry, evicted) = workload(None);
    assert!(evicted > 30, "the workload evicts ({evicted} pages)");
    let mut swept = 0;
    for fault in [Fault::WriteEio, Fault::SyncEio] {
        // The injector numbers calls from 0.
        for n in 0..dry.calls(fault.call()) {
            let (store, _) = workload(Some((fault, n)));
            assert!(store.fired(), "{fault:?} at call {n} never fired");
            swept += 1;
        }
    }
    assert!(swept > 20, "{swept} runs");
}
