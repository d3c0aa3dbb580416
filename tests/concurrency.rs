//! 8 threads write disjoint and overlapping ranges through checked writes and
//! raw memory while another flushes, with set_len between rounds; the file is
//! checked against a model after every round.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::{BLOCK_SIZES, Mount, read_file};
use mkwrite::{Delivery, DirtyTracking, FileStore, Mapping, MappingOptions, Store};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const THREADS: usize = 8;
const SLOT: usize = 24 * 1024 + 333; // each thread's own range, unaligned
const SHARED: usize = 40 * 1024; // the range every thread writes over

fn write_raw(base: usize, offset: usize, data: &[u8]) {
    // SAFETY: the mapping outlives the scoped threads and the range is below
    // EOF; concurrent writers to the shared range race on plain bytes, which
    // the test then accepts as any one writer's value.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), (base as *mut u8).add(offset), data.len()) };
}

fn round(map: &Mapping, model: &mut [u8], round: u8, rng: &mut StdRng) {
    let base = map.as_ptr() as usize;
    let shared_at = THREADS * SLOT;
    let barrier = Barrier::new(THREADS + 1);
    let values: Vec<u8> = (0..THREADS)
        .map(|t| round.wrapping_mul(16).wrapping_add(t as u8 + 1))
        .collect();
    let seeds: Vec<u64> = (0..THREADS).map(|_| rng.random()).collect();
    thread::scope(|s| {
        for t in 0..THREADS {
            let (barrier, value, seed) = (&barrier, values[t], seeds[t]);
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                barrier.wait();
                let slot = t * SLOT;
                for _ in 0..20 {
                    let off = rng.random_range(0..SLOT);
                    let len = rng.random_range(1..=(SLOT - off).min(9000));
                    let data = vec![value; len];
                    if rng.random_bool(0.5) {
                        map.write((slot + off) as u64, &data).unwrap();
                    } else {
                        write_raw(base, slot + off, &data);
                    }
                }
                // Then the whole slot, so the model knows every byte of it.
                map.write(slot as u64, &vec![value; SLOT]).unwrap();
                for chunk in (0..SHARED).step_by(4000) {
                    let len = 4000.min(SHARED - chunk);
                    write_raw(base, shared_at + chunk, &vec![value; len]);
                }
            });
        }
        s.spawn(|| {
            barrier.wait();
            for _ in 0..10 {
                map.flush().unwrap();
            }
        });
    });
    for (t, &value) in values.iter().enumerate() {
        model[t * SLOT..(t + 1) * SLOT].fill(value);
    }
    // The shared range: every byte must be one of this round's values; adopt them.
    let mut shared = vec![0u8; SHARED];
    map.read(shared_at as u64, &mut shared).unwrap();
    for (i, b) in shared.iter().enumerate() {
        assert!(values.contains(b), "round {round}: shared byte {i} = {b}");
    }
    model[shared_at..shared_at + SHARED].copy_from_slice(&shared);
}

#[test]
fn eight_threads_with_flushes_and_set_len_match_the_model() {
    eight_threads_with_flushes_and_set_len_match_the_model_with(Delivery::HandlerThread);
}

#[test]
fn eight_threads_with_flushes_and_set_len_match_the_model_in_thread() {
    eight_threads_with_flushes_and_set_len_match_the_model_with(Delivery::InThread);
}

fn eight_threads_with_flushes_and_set_len_match_the_model_with(delivery: Delivery) {
    let fs = Mount::tmpfs(64 << 20);
    let full = THREADS * SLOT + SHARED;
    for (i, block) in BLOCK_SIZES.into_iter().enumerate() {
        let path = fs.path(&format!("conc{block}"));
        let store = FileStore::create(&path).unwrap().with_block_size(block).unwrap();
        store.set_len(full as u64).unwrap();
        let map = MappingOptions::new()
            .delivery(delivery)
            .capacity(4 << 20)
            .map_store(store)
            .unwrap();
        let mut model = vec![0u8; full];
        let mut rng = StdRng::seed_from_u64(0x5EED + i as u64);
        for r in 0..6u8 {
            round(&map, &mut model, r, &mut rng);
            map.flush().unwrap();
            assert_eq!(
                read_file(&path),
                model,
                "block {block} round {r}: file after flush"
            );
            map.check_invariants().unwrap();
            // Shrink to a random unaligned length and grow back: the tail is zero.
            let cut = rng.random_range(1..full);
            map.set_len(cut as u64).unwrap();
            model[cut..].fill(0);
            map.set_len(full as u64).unwrap();
            if r % 2 == 0 {
                map.evict().unwrap();
            }
            let mut back = vec![0u8; full];
            map.read(0, &mut back).unwrap();
            assert_eq!(back, model, "block {block} round {r}: memory after set_len");
        }
        map.close().unwrap();
        assert_eq!(read_file(&path), model, "block {block}: file after close");
    }
}

#[test]
fn several_mappings_fault_at_once() {
    several_mappings_fault_at_once_with(Delivery::HandlerThread);
}

#[test]
fn several_mappings_fault_at_once_in_thread() {
    several_mappings_fault_at_once_with(Delivery::InThread);
}

fn several_mappings_fault_at_once_with(delivery: Delivery) {
    let fs = Mount::tmpfs(64 << 20);
    let maps: Vec<(std::path::PathBuf, Arc<Mapping>)> = (0..4)
        .map(|i| {
            let path = fs.path(&format!("m{i}"));
            let store = FileStore::create(&path).unwrap().with_block_size(1024).unwrap();
            store.set_len(1 << 20).unwrap();
            let map = MappingOptions::new()
                .delivery(delivery)
                .capacity(1 << 20)
                .map_store(store)
                .unwrap();
            (path, Arc::new(map))
        })
        .collect();
    thread::scope(|s| {
        for (i, (_, map)) in maps.iter().enumerate() {
            for t in 0..2 {
                let map = map.clone();
                s.spawn(move || {
                    let half = 512 * 1024;
                    write_raw(
                        map.as_ptr() as usize,
                        t * half,
                        &vec![(i * 2 + t + 1) as u8; half],
                    );
                    map.flush().unwrap();
                });
            }
        }
    });
    for (i, (path, map)) in maps.into_iter().enumerate() {
        Arc::into_inner(map).unwrap().close().unwrap();
        let file = read_file(&path);
        assert!(file[..512 * 1024].iter().all(|&b| b == (i * 2 + 1) as u8));
        assert!(file[512 * 1024..].iter().all(|&b| b == (i * 2 + 2) as u8));
    }
}

#[test]
fn writes_racing_set_len_all_reach_the_file() {
    writes_racing_set_len_all_reach_the_file_with(Delivery::HandlerThread);
}

#[test]
fn writes_racing_set_len_all_reach_the_file_in_thread() {
    writes_racing_set_len_all_reach_the_file_with(Delivery::InThread);
}

/// As [`writes_racing_set_len_all_reach_the_file`], the kernel tracking
/// dirty pages (where the tail is zeroed in place: a copy, drop and
/// reinstall would lose a racing write, or forget the page was written).
#[test]
fn writes_racing_set_len_all_reach_the_file_with_kernel_dirty_tracking() {
    for delivery in [Delivery::HandlerThread, Delivery::InThread] {
        writes_racing_set_len_with(delivery, DirtyTracking::Kernel, &[4096, 16384]);
    }
}

fn writes_racing_set_len_all_reach_the_file_with(delivery: Delivery) {
    writes_racing_set_len_with(delivery, DirtyTracking::Faults, &[512, 1024, 4096, 16384]);
}

fn writes_racing_set_len_with(delivery: Delivery, tracking: DirtyTracking, blocks: &[u64]) {
    // A writer hammers the EOF page while EOF moves between 1000 and 5000: every
    // byte it lands below EOF must have a block, so after a flush memory and
    // file agree (a write between zeroing and re-protecting would be lost).
    let fs = Mount::tmpfs(16 << 20);
    for &block in blocks {
        let path = fs.path(&format!("race{block}"));
        let store = FileStore::create(&path).unwrap().with_block_size(block).unwrap();
        store.set_len(5000).unwrap();
        let map = MappingOptions::new()
            .delivery(delivery)
            .dirty_tracking(tracking)
            .capacity(1 << 20)
            .map_store(store)
            .unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                let mut v = 1u8;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    write_raw(map.as_ptr() as usize, 1000, &[v; 3096]);
                    v = v.wrapping_add(1).max(1);
                }
            });
            for _ in 0..300 {
                map.set_len(1000).unwrap();
                map.set_len(5000).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        map.flush().unwrap();
        let mut memory = vec![0u8; 5000];
        map.read(0, &mut memory).unwrap();
        assert_eq!(
            read_file(&path),
            memory,
            "block {block}: memory and file differ after flush"
        );
        map.check_invariants().unwrap();
    }
}
