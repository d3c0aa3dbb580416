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

use common::bounded::{Case, End, Setup};
use common::{read_file, rss_anon};
use mkwrite::{Budget, Delivery, FileStore, MappingOptions};

const PAGE: usize = 4096;
const BUDGET: u64 = 8 << 20;
const FILE: usize = 4 * BUDGET as usize;
/// What the process may hold beyond the budget: one fill (33 pages) per
/// worker of the fault service that may resolve a fault before waiting for
/// the evictor (16), and the allocator's and threads' own small growth.
/// (Measured here: 0.6–1.4 MiB over the budget at the peak.)
const OVERHEAD: u64 = 16 * 33 * PAGE as u64 + (2 << 20);
const RUN: Duration = Duration::from_secs(3);

const CASES: &[Case] = &[
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
    thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_anon(), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(2));
            }
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
        assert!(ops > 1000, "{ops} operations");
    });
    let grown = peak.load(Ordering::SeqCst).saturating_sub(baseline);
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
