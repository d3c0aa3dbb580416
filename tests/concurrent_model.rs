//! Concurrency against a model: on each mapping, threads write, read, punch,
//! flush, evict and set_len at once, and several mappings (different files,
//! different block sizes) run at once. Every read, and the file at the end,
//! must be an outcome some linearization of the operations allows.
//!
//! The file has two zones. Below `STABLE` EOF never goes, and each writer
//! owns a stripe (stripes share pages and blocks, never bytes), so its reads
//! must match its own model exactly. Above it a resizer moves EOF while one
//! thread writes tagged cells there; a cell must read as its last tag, or
//! as zero if EOF fell below it at some moment from that write on.
//!
//! Rounds with an odd seed track dirty pages by the kernel
//! (`DirtyTracking::Kernel`) where the block is no smaller than a page; there
//! `evict` is refused and skipped.
//!
//! CI runs 30 s in rounds with different seeds; the long run:
//! `MKWRITE_CONCURRENCY_SECS=300 cargo test --release --test concurrent_model -- --ignored`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BLOCK_SIZES, Mount};
use mkwrite::{Delivery, DirtyTracking, Error, Mapping, MappingOptions};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const CAPACITY: u64 = 1 << 20;
const STABLE: u64 = 256 << 10;
/// The volatile zone's unit; it divides a page, and EOF moves in whole cells.
const CELL: u64 = 512;
const WRITERS: u64 = 3;
const MAPPINGS: usize = 2;

/// A logical clock: SeqCst ticks order operations across threads.
static CLOCK: AtomicU64 = AtomicU64::new(1);

fn tick() -> u64 {
    CLOCK.fetch_add(1, Ordering::SeqCst)
}

/// One set_len: the tick after it returned (`u64::MAX` while it runs), the
/// lower of the two lengths and the new one.
#[derive(Clone, Copy)]
struct Resize {
    end: u64,
    low: u64,
    new: u64,
}

struct Shared {
    map: Mapping,
    stop: AtomicBool,
    resizes: Mutex<Vec<Resize>>,
}

type Outcome = Result<u64, String>;

fn data(seed: u64, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|at| ((at ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 | 1)
        .collect()
}

fn raw_write(map: &Mapping, offset: u64, bytes: &[u8]) {
    // SAFETY: writers touch only the stable zone, below EOF at all times,
    // inside the mapping; no reference to this memory exists.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.as_ptr().add(offset as usize), bytes.len()) }
}

fn raw_read(map: &Mapping, offset: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0; len as usize];
    // SAFETY: as in `raw_write`.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr().add(offset as usize), out.as_mut_ptr(), out.len()) }
    out
}

/// A stripe owner: its reads must equal its model, whatever else runs.
fn writer(shared: &Shared, stripe: std::ops::Range<u64>, seed: u64) -> Outcome {
    let map = &shared.map;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = vec![0u8; (stripe.end - stripe.start) as usize];
    let mut ops = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let at = rng.random_range(0..model.len() as u64);
        let len = rng.random_range(1..=(model.len() as u64 - at).min(3 * 4096));
        let offset = stripe.start + at;
        let range = at as usize..(at + len) as usize;
        match rng.random_range(0..10) {
            0..3 => {
                let bytes = data(rng.random(), offset, len);
                map.write(offset, &bytes).map_err(|e| format!("write: {e}"))?;
                model[range].copy_from_slice(&bytes);
            }
            3..6 => {
                let bytes = data(rng.random(), offset, len);
                raw_write(map, offset, &bytes);
                model[range].copy_from_slice(&bytes);
            }
            6 => {
                map.punch_hole(offset, len).map_err(|e| format!("punch: {e}"))?;
                model[range].fill(0);
            }
            _ => {
                let found = if rng.random_bool(0.5) {
                    raw_read(map, offset, len)
                } else {
                    let mut buf = vec![0; len as usize];
                    map.read(offset, &mut buf).map_err(|e| format!("read: {e}"))?;
                    buf
                };
                if let Some(i) = found.iter().zip(&model[range.clone()]).position(|(a, b)| a != b) {
                    return Err(format!(
                        "stripe byte {} reads {:#04x}, its owner wrote {:#04x}",
                        offset + i as u64,
                        found[i],
                        model[range][i]
                    ));
                }
            }
        }
        ops += 1;
    }
    let mut found = vec![0; model.len()];
    map.read(stripe.start, &mut found)
        .map_err(|e| format!("final read: {e}"))?;
    if found != model {
        return Err(format!(
            "stripe {stripe:?} differs from its owner's model at the end"
        ));
    }
    Ok(ops)
}

/// Flushes, flushes ranges and evicts while everything else runs.
fn flusher(shared: &Shared, seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        match rng.random_range(0..4) {
            0 => match shared.map.evict() {
                Err(Error::NotWithKernelDirtyTracking(_))
                    if shared.map.dirty_tracking() == DirtyTracking::Kernel =>
                {
                    Ok(())
                }
                other => other,
            },
            1 => {
                let offset = rng.random_range(0..CAPACITY);
                shared
                    .map
                    .flush_range(offset, rng.random_range(1..=CAPACITY - offset))
            }
            _ => shared.map.flush(),
        }
        .map_err(|e| format!("flusher: {e}"))?;
        ops += 1;
        std::thread::sleep(Duration::from_micros(rng.random_range(0..2000)));
    }
    Ok(ops)
}

/// Moves EOF around the volatile zone, in whole cells, never below `STABLE`.
fn resizer(shared: &Shared, seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut len = shared.map.len();
    let mut ops = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let new = rng.random_range(STABLE / CELL..=CAPACITY / CELL) * CELL;
        // Logged before the call, still open: a reader may see its effect
        // before set_len returns.
        let at = {
            let mut resizes = shared.resizes.lock().unwrap();
            resizes.push(Resize {
                end: u64::MAX,
                low: len.min(new),
                new,
            });
            resizes.len() - 1
        };
        shared.map.set_len(new).map_err(|e| format!("set_len: {e}"))?;
        shared.resizes.lock().unwrap()[at].end = tick();
        len = new;
        ops += 1;
        std::thread::sleep(Duration::from_micros(rng.random_range(0..1000)));
    }
    Ok(ops)
}

/// The last write to each volatile cell that returned Ok: its tag and start tick.
type Cells = Vec<Option<(u32, u64)>>;

fn cell_bytes(tag: u32) -> Vec<u8> {
    tag.to_le_bytes().repeat(CELL as usize / 4)
}

/// May cell `index` hold `found`, given its last write and the resizes?
fn judge_cell(shared: &Shared, cells: &Cells, index: usize, found: &[u8]) -> Result<(), String> {
    let start = STABLE + index as u64 * CELL;
    let words: Vec<u32> = found
        .chunks(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
        .collect();
    if words.iter().any(|&w| w != words[0]) {
        return Err(format!("cell at {start} is torn: {:x?}", &words[..8]));
    }
    let (tag, since) = cells[index].unwrap_or((0, 0));
    // Zero is allowed if EOF was at or below the cell at some moment from
    // the write on: when it began (bytes past EOF are not file data; an
    // evicted page reads them as zero) or during any later resize.
    let zero_allowed = || {
        let resizes = shared.resizes.lock().unwrap();
        let before = resizes.iter().rev().find(|r| r.end <= since);
        tag == 0
            || before.is_some_and(|r| r.new <= start)
            || resizes.iter().any(|r| r.end > since && r.low <= start)
    };
    if words[0] == tag || (words[0] == 0 && zero_allowed()) {
        Ok(())
    } else {
        Err(format!(
            "cell at {start} holds tag {:#x}; its last write was {tag:#x}",
            words[0]
        ))
    }
}

/// Writes tagged cells above `STABLE` while EOF moves, and checks what it reads.
fn volatile(shared: &Shared, seed: u64, cells: &Mutex<Cells>) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let count = ((CAPACITY - STABLE) / CELL) as usize;
    let mut ops = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let index = rng.random_range(0..count);
        let offset = STABLE + index as u64 * CELL;
        let mut cells = cells.lock().unwrap();
        if rng.random_bool(0.6) {
            // Unique for 2^31 writes: a stale tag can never pass for the last one.
            let tag = ((ops << 1) | 1) as u32;
            let start = tick();
            match shared.map.write(offset, &cell_bytes(tag)) {
                Ok(()) => cells[index] = Some((tag, start)),
                // The cell's page lay wholly past EOF: nothing was written.
                Err(p) if matches!(p.error, Error::OutOfRange { .. }) && p.done == 0 => {}
                Err(p) => return Err(format!("volatile write: {p}")),
            }
        } else {
            let mut buf = vec![0; CELL as usize];
            match shared.map.read(offset, &mut buf) {
                Ok(()) => judge_cell(shared, &cells, index, &buf).map_err(|e| format!("read: {e}"))?,
                Err(p) if matches!(p.error, Error::OutOfRange { .. }) => {}
                Err(p) => return Err(format!("volatile read: {p}")),
            }
        }
        ops += 1;
    }
    Ok(ops)
}

/// One mapping under all the threads for `duration`; then the file must
/// match the models.
fn round(
    mount: &Mount,
    name: &str,
    block: u64,
    delivery: Delivery,
    tracking: DirtyTracking,
    seed: u64,
    duration: Duration,
) -> Result<String, String> {
    let path = mount.path(name);
    let map = MappingOptions::new()
        .delivery(delivery)
        .dirty_tracking(tracking)
        .capacity(CAPACITY)
        .block_size(block)
        .create(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    map.set_len(STABLE + CAPACITY / 4).map_err(|e| e.to_string())?;
    let first = map.len();
    let shared = Arc::new(Shared {
        map,
        stop: AtomicBool::new(false),
        resizes: Mutex::new(vec![Resize {
            end: 0,
            low: first,
            new: first,
        }]),
    });
    let cells = Arc::new(Mutex::new(vec![None; ((CAPACITY - STABLE) / CELL) as usize]));
    let mut threads: Vec<(&str, std::thread::JoinHandle<Outcome>)> = Vec::new();
    for w in 0..WRITERS {
        let shared = Arc::clone(&shared);
        // Odd boundaries, so stripes share pages and blocks.
        let stripe = (STABLE * w / WRITERS + 3 * w)..(STABLE * (w + 1) / WRITERS + 3 * w).min(STABLE);
        threads.push((
            "writer",
            std::thread::spawn(move || writer(&shared, stripe, seed * 31 + w)),
        ));
    }
    let s = Arc::clone(&shared);
    threads.push(("flusher", std::thread::spawn(move || flusher(&s, seed + 100))));
    let s = Arc::clone(&shared);
    threads.push(("resizer", std::thread::spawn(move || resizer(&s, seed + 200))));
    let (s, c) = (Arc::clone(&shared), Arc::clone(&cells));
    threads.push((
        "volatile",
        std::thread::spawn(move || volatile(&s, seed + 300, &c)),
    ));
    std::thread::sleep(duration);
    shared.stop.store(true, Ordering::SeqCst);
    let mut counts = Vec::new();
    for (who, thread) in threads {
        let ops = thread.join().map_err(|_| format!("{who} panicked"))??;
        counts.push(format!("{who} {ops}"));
    }
    let map = &shared.map;
    map.flush().map_err(|e| e.to_string())?;
    map.check_invariants()?;
    let len = map.len();
    let file = common::read_file(&path);
    if file.len() as u64 != len {
        return Err(format!("file length {} but EOF {len}", file.len()));
    }
    let mut mapped = vec![0; len as usize];
    map.read(0, &mut mapped).map_err(|e| e.to_string())?;
    if mapped != file {
        return Err("after the last flush the file differs from the mapping".into());
    }
    let cells = cells.lock().unwrap();
    for (index, cell) in file[STABLE as usize..].chunks(CELL as usize).enumerate() {
        judge_cell(&shared, &cells, index, cell).map_err(|e| format!("in the file: {e}"))?;
    }
    std::fs::remove_file(&path).map_err(|e| e.to_string())?;
    Ok(format!(
        "block {block}, {delivery:?}, {tracking:?}: {}",
        counts.join(", ")
    ))
}

/// Rounds of `MAPPINGS` mappings at once until `total` has passed.
fn run_for(total: Duration, first_seed: u64) {
    let mount = Mount::ext4(128 << 20, 1024);
    let round_time = Duration::from_secs(5).min(total);
    let began = Instant::now();
    let mut seed = first_seed;
    while began.elapsed() + round_time <= total + Duration::from_millis(100) {
        let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
            let rounds: Vec<_> = (0..MAPPINGS)
                .map(|m| {
                    let block = BLOCK_SIZES[(seed as usize + 2 * m) % BLOCK_SIZES.len()];
                    let mount = &mount;
                    let tracking = match seed % 2 == 1 && block >= 4096 {
                        true => DirtyTracking::Kernel,
                        false => DirtyTracking::Faults,
                    };
                    let seed = seed * 1000 + m as u64;
                    // Both deliveries at once, in one process.
                    let delivery = match m % 2 {
                        0 => Delivery::HandlerThread,
                        _ => Delivery::InThread,
                    };
                    scope.spawn(move || {
                        round(
                            mount,
                            &format!("file-{m}"),
                            block,
                            delivery,
                            tracking,
                            seed,
                            round_time,
                        )
                    })
                })
                .collect();
            rounds.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for result in results {
            match result {
                Ok(summary) => println!("seed {seed}: {summary}"),
                Err(why) => panic!("seed {seed}: {why}"),
            }
        }
        seed += 1;
    }
}

#[test]
fn threads_and_mappings_at_once_match_a_linearizable_model() {
    run_for(Duration::from_secs(30), 1);
}

#[test]
#[ignore = "long run: MKWRITE_CONCURRENCY_SECS seconds (default 300)"]
fn long_concurrency() {
    let secs = std::env::var("MKWRITE_CONCURRENCY_SECS").map_or(300, |v| v.parse().expect("seconds"));
    run_for(Duration::from_secs(secs), 1 << 20);
}
