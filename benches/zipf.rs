//! Replacement policies judged by outcome: a Zipf(0.99) page-read trace
//! over a file four times the memory allowed, and the hit ratio (accesses
//! that found their page in memory) of
//!
//! * mkwrite with a `Budget` (measured: its missing-read faults),
//! * the kernel's page cache under a memory cgroup limit of the same size
//!   (measured: major faults of a child process that maps the file with
//!   `mmap(MAP_SHARED)` in a cgroup, v2 `memory.max` or v1
//!   `memory.limit_in_bytes`, whichever this machine has; the limit is the
//!   budget plus what the child holds before the trace starts),
//! * FIFO, LRU and a CLOCK that sees every access, simulated on the same
//!   trace (the first is what mkwrite must beat; the others bound what
//!   reference information from faults alone can give).
//!
//! Both measured subjects read with random advice (one page per miss, no
//! read-ahead), after a warm-up of a quarter of the trace.
//!
//! `cargo bench --bench zipf` (root, for the cgroup; ~1 minute);
//! `cargo bench --bench zipf -- --smoke` (seconds; CI runs it).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use mkwrite::{Advice, Budget, FileStore, MappingOptions};

const PAGE: usize = 4096;
const THETA: f64 = 0.99;
const CHILD: &str = "MKWRITE_ZIPF_CHILD";

struct Size {
    pages: usize,
    accesses: usize,
}

const FULL: Size = Size {
    pages: 16 * 1024,
    accesses: 400_000,
};
const SMOKE: Size = Size {
    pages: 1024,
    accesses: 20_000,
};

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let size = if smoke { &SMOKE } else { &FULL };
    if let Ok(path) = std::env::var(CHILD) {
        return kernel_child(Path::new(&path), size);
    }
    let budget_pages = size.pages / 4;
    let trace = Trace::new(size.pages, size.accesses, 0x5eed);
    let dir = tempfile::tempdir_in(".").expect("a directory on a disk filesystem");
    let path = dir.path().join("zipf.db");
    write_file(&path, size.pages);
    println!(
        "Zipf({THETA}) reads of {} pages ({} MiB) through {} pages ({} MiB) of memory: {} accesses after a warm-up of {}{}",
        size.pages,
        (size.pages * PAGE) >> 20,
        budget_pages,
        (budget_pages * PAGE) >> 20,
        trace.measured().len(),
        trace.warmup().len(),
        if smoke { " (smoke run)" } else { "" }
    );
    println!("| policy | hit ratio | how |");
    println!("| --- | ---: | --- |");
    let mk = mkwrite_hits(&path, &trace, budget_pages);
    println!(
        "| mkwrite: clock on faults, pages faulting back soon after eviction kept longer | {:.3} | measured |",
        mk
    );
    match kernel_hits(&path, size) {
        Ok(k) => println!("| kernel page cache, cgroup memory limit | {k:.3} | measured |"),
        Err(why) => println!("| kernel page cache, cgroup memory limit | n/a | {why} |"),
    }
    println!("| FIFO | {:.3} | simulated |", fifo(&trace, budget_pages));
    println!(
        "| CLOCK seeing every access | {:.3} | simulated |",
        clock(&trace, budget_pages)
    );
    println!("| LRU | {:.3} | simulated |", lru(&trace, budget_pages));
}

/// Page numbers drawn from Zipf(THETA), hot pages scattered over the file.
struct Trace {
    pages: Vec<usize>,
}

impl Trace {
    fn new(pages: usize, accesses: usize, seed: u64) -> Trace {
        let weights: Vec<f64> = (1..=pages).map(|k| 1.0 / (k as f64).powf(THETA)).collect();
        let total: f64 = weights.iter().sum();
        let mut cdf = Vec::with_capacity(pages);
        let mut sum = 0.0;
        for w in weights {
            sum += w / total;
            cdf.push(sum);
        }
        let mut rng = Rng(seed);
        // Rank r lives at page place[r]: a fixed shuffle.
        let mut place: Vec<usize> = (0..pages).collect();
        for i in (1..pages).rev() {
            place.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let all = accesses + accesses / 4;
        let pages = (0..all)
            .map(|_| {
                let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                place[cdf.partition_point(|&c| c < u).min(place.len() - 1)]
            })
            .collect();
        Trace { pages }
    }

    fn warmup(&self) -> &[usize] {
        &self.pages[..self.pages.len() / 5]
    }

    fn measured(&self) -> &[usize] {
        &self.pages[self.pages.len() / 5..]
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn write_file(path: &Path, pages: usize) {
    let data: Vec<u8> = (0..pages * PAGE).map(|i| (i / PAGE) as u8 | 1).collect();
    std::fs::write(path, data).expect("write the file");
    File::open(path).unwrap().sync_all().unwrap();
}

/// Drops the file's pages from the page cache.
fn drop_cache(path: &Path) {
    let file = File::open(path).unwrap();
    // SAFETY: fadvise on an open descriptor has no memory-safety preconditions.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn mkwrite_hits(path: &Path, trace: &Trace, budget_pages: usize) -> f64 {
    let budget = Budget::new((budget_pages * PAGE) as u64);
    let map = MappingOptions::new()
        .budget(&budget)
        .map_store(FileStore::open(path).unwrap())
        .unwrap();
    map.advise(Advice::Random, 0, map.len()).unwrap();
    let read = |pages: &[usize]| {
        let mut sum = 0u64;
        for &p in pages {
            // SAFETY: page `p` lies below EOF; nobody writes the mapping.
            sum += u64::from(unsafe { map.as_ptr().add(p * PAGE).read_volatile() });
        }
        assert!(sum >= pages.len() as u64, "every page reads nonzero");
    };
    read(trace.warmup());
    let before = map.stats().faults_missing_read;
    read(trace.measured());
    let misses = map.stats().faults_missing_read - before;
    1.0 - misses as f64 / trace.measured().len() as f64
}

/// Runs the kernel's side in a child process inside a memory cgroup.
fn kernel_hits(path: &Path, size: &Size) -> Result<f64, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root for the cgroup".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.env(CHILD, path);
    if size.pages == SMOKE.pages {
        cmd.arg("--smoke");
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    stdout
        .trim()
        .strip_prefix("hits ")
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| format!("child said {stdout:?}"))
}

/// A memory cgroup for this process, removed on drop.
struct Cgroup {
    dir: PathBuf,
    /// The files for the limit and the usage (v2 or v1 names).
    limit: &'static str,
    usage: &'static str,
}

impl Cgroup {
    fn join() -> Result<Cgroup, String> {
        let name = format!("mkwrite-zipf-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let with_memory_v2 =
            std::fs::read_to_string(v2).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit, usage) = if with_memory_v2 {
            (
                Path::new("/sys/fs/cgroup").join(name),
                "memory.max",
                "memory.current",
            )
        } else {
            (
                Path::new("/sys/fs/cgroup/memory").join(name),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        };
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cgroup = Cgroup { dir, limit, usage };
        std::fs::write(cgroup.dir.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("joining the cgroup: {e}"))?;
        Ok(cgroup)
    }

    fn usage(&self) -> u64 {
        let text = std::fs::read_to_string(self.dir.join(self.usage)).unwrap();
        text.trim().parse().unwrap()
    }

    fn set_limit(&self, bytes: u64) {
        std::fs::write(self.dir.join(self.limit), bytes.to_string()).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Back to the root group, so the directory can go.
        let root = self.dir.parent().unwrap().join("cgroup.procs");
        let _ = std::fs::write(root, std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn major_faults() -> u64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_majflt as u64
}

/// The kernel's side: in its own cgroup, limited to the budget beyond what
/// it holds already, the same trace through `mmap(MAP_SHARED)`.
fn kernel_child(path: &Path, size: &Size) {
    let trace = Trace::new(size.pages, size.accesses, 0x5eed);
    let budget = (size.pages / 4 * PAGE) as u64;
    let cgroup = Cgroup::join().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let file = File::open(path).unwrap();
    let len = size.pages * PAGE;
    // SAFETY: a fresh shared read-only mapping of a file nobody truncates.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    // SAFETY: advising our own mapping.
    unsafe { libc::madvise(base, len, libc::MADV_RANDOM) };
    drop_cache(path);
    cgroup.set_limit(cgroup.usage() + budget);
    let read = |pages: &[usize]| {
        let mut sum = 0u64;
        for &p in pages {
            // SAFETY: page `p` lies inside the mapping.
            sum += u64::from(unsafe { base.cast::<u8>().add(p * PAGE).read_volatile() });
        }
        assert!(sum >= pages.len() as u64);
    };
    read(trace.warmup());
    let before = major_faults();
    read(trace.measured());
    let misses = major_faults() - before;
    println!("hits {}", 1.0 - misses as f64 / trace.measured().len() as f64);
    drop(cgroup);
}

fn fifo(trace: &Trace, capacity: usize) -> f64 {
    let mut queue = VecDeque::new();
    let mut resident = HashSet::new();
    simulate(trace, |p| {
        if resident.contains(&p) {
            return true;
        }
        if queue.len() == capacity {
            resident.remove(&queue.pop_front().unwrap());
        }
        queue.push_back(p);
        resident.insert(p);
        false
    })
}

fn clock(trace: &Trace, capacity: usize) -> f64 {
    let mut frames: Vec<(usize, bool)> = Vec::new();
    let mut at: HashMap<usize, usize> = HashMap::new();
    let mut hand = 0;
    simulate(trace, |p| {
        if let Some(&i) = at.get(&p) {
            frames[i].1 = true;
            return true;
        }
        if frames.len() < capacity {
            at.insert(p, frames.len());
            frames.push((p, true));
            return false;
        }
        while frames[hand].1 {
            frames[hand].1 = false;
            hand = (hand + 1) % capacity;
        }
        at.remove(&frames[hand].0);
        frames[hand] = (p, true);
        at.insert(p, hand);
        hand = (hand + 1) % capacity;
        false
    })
}

fn lru(trace: &Trace, capacity: usize) -> f64 {
    let mut by_time: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last: HashMap<usize, u64> = HashMap::new();
    let mut now = 0u64;
    simulate(trace, |p| {
        now += 1;
        let hit = match last.insert(p, now) {
            Some(t) => {
                by_time.remove(&t);
                true
            }
            None => false,
        };
        by_time.insert(now, p);
        if last.len() > capacity {
            let (_, old) = by_time.pop_first().unwrap();
            last.remove(&old);
        }
        hit
    })
}

/// Runs a policy (`access` says whether the page was resident, and brings
/// it in) over the warm-up, then counts hits over the measured part.
fn simulate(trace: &Trace, mut access: impl FnMut(usize) -> bool) -> f64 {
    for &p in trace.warmup() {
        access(p);
    }
    let hits = trace.measured().iter().filter(|&&p| access(p)).count();
    hits as f64 / trace.measured().len() as f64
}
