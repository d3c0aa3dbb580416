//! The workloads of the benchmark suite, each run the same way through
//! mkwrite and through the kernel's own `mmap(MAP_SHARED)` on a twin file on
//! the same filesystem. Every workload sets up outside the timed part and
//! returns only the time of the work itself (opening, dropping and closing
//! mappings are never timed, except by workload 10, which times just that).

#![allow(dead_code)] // each bench binary uses its part

pub mod fio;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mkwrite::{Delivery, DirtyTracking, Mapping, MappingOptions, NbdOptions, Stats, Store};

pub const PAGE: usize = 4096;

/// Who runs a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// mkwrite over a `FileStore` with this block size, its faults
    /// resolved in the faulting thread when `in_thread`, its dirty pages
    /// tracked by the kernel (`DirtyTracking::Kernel`) when `kernel_dirty`.
    Mkwrite {
        block: u64,
        in_thread: bool,
        kernel_dirty: bool,
    },
    /// The kernel's `mmap(MAP_SHARED)` of the file.
    Kernel,
}

/// A file mapped by one subject.
pub struct Mapped {
    pub path: PathBuf,
    mk: Option<Mapping>,
    kernel: Option<(File, memmap2::MmapRaw)>,
}

impl Mapped {
    /// Maps the file at `path` (created if missing), with room for `capacity` bytes.
    pub fn open(subject: Subject, path: &Path, capacity: u64) -> Mapped {
        match subject {
            Subject::Mkwrite {
                block,
                in_thread,
                kernel_dirty,
            } => {
                let delivery = match in_thread {
                    true => Delivery::InThread,
                    false => Delivery::HandlerThread,
                };
                let tracking = match kernel_dirty {
                    true => DirtyTracking::Kernel,
                    false => DirtyTracking::Faults,
                };
                let map = MappingOptions::new()
                    .delivery(delivery)
                    .dirty_tracking(tracking)
                    .capacity(capacity)
                    .block_size(block)
                    .create(true)
                    .open(path)
                    .expect("open mkwrite");
                Mapped {
                    path: path.to_owned(),
                    mk: Some(map),
                    kernel: None,
                }
            }
            Subject::Kernel => {
                let file = open_rw(path);
                let map = memmap2::MmapOptions::new()
                    .len(capacity as usize)
                    .map_raw(&file)
                    .expect("mmap");
                Mapped {
                    path: path.to_owned(),
                    mk: None,
                    kernel: Some((file, map)),
                }
            }
        }
    }

    /// mkwrite over an `NbdStore` on the export at `nbd.uri`, formatted
    /// afresh with `block`-byte blocks over a blank (sparse) image, as
    /// [`sparse`] leaves a local file: `capacity` bytes long and mapped.
    pub fn over_nbd(nbd: &Nbd, block: u64, capacity: u64) -> Mapped {
        blank_image(&nbd.image, nbd.image_len);
        let store = NbdOptions::new()
            .block_size(block)
            .format(true)
            .connect(&nbd.uri)
            .expect("connect to the NBD server");
        store.set_len(capacity).expect("set_len over NBD");
        let map = MappingOptions::new()
            .capacity(capacity)
            .map_store(store)
            .expect("map the NBD store");
        Mapped {
            path: nbd.image.clone(),
            mk: Some(map),
            kernel: None,
        }
    }

    pub fn ptr(&self) -> *mut u8 {
        match (&self.mk, &self.kernel) {
            (Some(m), _) => m.as_ptr(),
            (_, Some((_, k))) => k.as_mut_ptr(),
            _ => unreachable!(),
        }
    }

    pub fn mkwrite(&self) -> Option<&Mapping> {
        self.mk.as_ref()
    }

    /// Durable: mkwrite's flush; the kernel's `msync(MS_SYNC)` + `fdatasync`.
    pub fn flush(&self) {
        match (&self.mk, &self.kernel) {
            (Some(m), _) => m.flush().expect("flush"),
            (_, Some((f, k))) => {
                k.flush().expect("msync");
                f.sync_data().expect("fdatasync");
            }
            _ => unreachable!(),
        }
    }

    pub fn set_len(&self, len: u64) {
        match (&self.mk, &self.kernel) {
            (Some(m), _) => m.set_len(len).expect("set_len"),
            (_, Some((f, _))) => f.set_len(len).expect("ftruncate"),
            _ => unreachable!(),
        }
    }

    pub fn punch(&self, offset: u64, len: u64) {
        match (&self.mk, &self.kernel) {
            (Some(m), _) => m.punch_hole(offset, len).expect("punch_hole"),
            (_, Some((f, _))) => punch_file(f, offset, len),
            _ => unreachable!(),
        }
    }

    pub fn stats(&self) -> Option<Stats> {
        self.mk.as_ref().map(Mapping::stats)
    }

    fn touch(&self, page: usize, byte: u8) {
        // SAFETY: every caller stays within the file's pages of the mapping.
        unsafe { self.ptr().add(page * PAGE).write_volatile(byte) }
    }

    fn load(&self, page: usize) -> u8 {
        // SAFETY: as in `touch`.
        unsafe { self.ptr().add(page * PAGE).read_volatile() }
    }
}

pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open")
}

fn punch_file(f: &File, offset: u64, len: u64) {
    let mode =
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    nix::fcntl::fallocate(f, mode, offset as i64, len as i64).expect("punch");
}

/// An NBD export served from the image file at `image` (`image_len` bytes):
/// what the NBD rows run mkwrite over.
pub struct Nbd {
    pub uri: String,
    pub image: PathBuf,
    pub image_len: u64,
}

impl Nbd {
    /// The image length for files of up to `capacity` bytes: the header
    /// area (one 4 KiB data offset at most for 4 KiB blocks) and room to spare.
    pub fn image_len(capacity: u64) -> u64 {
        capacity + (1 << 20)
    }
}

/// Empties the server's image in place (the server keeps its open file):
/// every block a sparse hole again, the length kept.
pub fn blank_image(path: &Path, len: u64) {
    let file = open_rw(path);
    file.set_len(0).expect("truncate the image");
    file.set_len(len).expect("size the image");
}

/// A fresh sparse file of `len` bytes.
pub fn sparse(path: &Path, len: u64) {
    let _ = std::fs::remove_file(path);
    open_rw(path).set_len(len).expect("set_len");
}

/// A fresh file of `len` bytes, all written and synced (in the page cache).
pub fn written(path: &Path, len: u64) {
    sparse(path, len);
    let file = open_rw(path);
    let chunk = vec![7u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = chunk.len().min((len - at) as usize);
        file.write_all_at(&chunk[..n], at).expect("write");
        at += n as u64;
    }
    file.sync_data().expect("fdatasync");
}

/// Drops the file's pages from the page cache, so the next read goes to the disk.
pub fn drop_cache(path: &Path) {
    let file = open_rw(path);
    file.sync_data().expect("fdatasync");
    // SAFETY: an advice on our own open file; no memory is involved.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// Page order for a pass: sequential, or a fixed shuffle.
pub fn order(pages: usize, random: bool) -> Vec<usize> {
    let mut v: Vec<usize> = (0..pages).collect();
    if random {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        for i in (1..pages).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.swap(i, (s % (i as u64 + 1)) as usize);
        }
    }
    v
}

/// One measured run: the time of the work, how many units it did, and
/// mkwrite's counters for the run (none for the kernel).
#[derive(Clone)]
pub struct Run {
    pub time: Duration,
    pub units: u64,
    pub stats: Option<Stats>,
}

impl Run {
    pub fn per_unit(&self) -> Duration {
        self.time / self.units.max(1) as u32
    }

    /// Nanoseconds per unit, without rounding to whole nanoseconds.
    pub fn per_unit_ns(&self) -> f64 {
        self.time.as_secs_f64() * 1e9 / self.units.max(1) as f64
    }
}

/// The file a subject works on in `dir`.
pub fn file_of(dir: &Path, subject: Subject) -> PathBuf {
    match subject {
        Subject::Mkwrite { block, .. } => dir.join(format!("mkwrite-{block}.dat")),
        Subject::Kernel => dir.join("kernel.dat"),
    }
}

/// The subject's file in `dir`, fresh and sparse, `pages` pages long, mapped.
fn fresh(dir: &Path, s: Subject, pages: usize) -> Mapped {
    let path = file_of(dir, s);
    let len = (pages * PAGE) as u64;
    sparse(&path, len);
    Mapped::open(s, &path, len)
}

/// Workload 1: The first write to every page of a sparse file: every write allocates.
pub fn first_write(dir: &Path, s: Subject, pages: usize, random: bool) -> Run {
    first_write_on(&fresh(dir, s, pages), pages, random)
}

/// Workload 1 through mkwrite over the NBD export `nbd`, 4 KiB blocks.
pub fn first_write_nbd(nbd: &Nbd, pages: usize, random: bool) -> Run {
    first_write_on(&Mapped::over_nbd(nbd, 4096, (pages * PAGE) as u64), pages, random)
}

fn first_write_on(m: &Mapped, pages: usize, random: bool) -> Run {
    let order = order(pages, random);
    let started = Instant::now();
    for &p in &order {
        m.touch(p, 1);
    }
    Run {
        time: started.elapsed(),
        units: pages as u64,
        stats: m.stats(),
    }
}

/// Workload 2: The first read of every page of a fully written file, in the page
/// cache or dropped from it.
pub fn first_read(dir: &Path, s: Subject, pages: usize, random: bool, cached: bool) -> Run {
    let path = file_of(dir, s);
    let len = (pages * PAGE) as u64;
    written(&path, len);
    if !cached {
        drop_cache(&path);
    }
    let m = Mapped::open(s, &path, len);
    let order = order(pages, random);
    let started = Instant::now();
    let mut sum = 0u64;
    for &p in &order {
        sum += u64::from(m.load(p));
    }
    let time = started.elapsed();
    assert_eq!(sum, 7 * pages as u64, "read what was written");
    Run {
        time,
        units: pages as u64,
        stats: m.stats(),
    }
}

/// Workload 2's yardstick: the same pages read with `pread` into a private
/// buffer (fresh anonymous memory, so each page's first touch is paid too),
/// one page a call in the same order: the least a copy into private memory
/// costs, which is what mkwrite's fills are.
pub fn first_read_pread(dir: &Path, pages: usize, random: bool, cached: bool) -> Run {
    let path = file_of(dir, Subject::Kernel);
    let len = (pages * PAGE) as u64;
    written(&path, len);
    if !cached {
        drop_cache(&path);
    }
    let file = open_rw(&path);
    let mut buf: Vec<u8> = Vec::with_capacity(len as usize);
    let spare = buf.spare_capacity_mut();
    let order = order(pages, random);
    let started = Instant::now();
    let mut sum = 0u64;
    for &p in &order {
        let at = p * PAGE;
        // SAFETY: the spare capacity is `len` bytes and page `p` lies within
        // it; pread writes those bytes before anything reads them.
        let page = unsafe { std::slice::from_raw_parts_mut(spare[at..].as_mut_ptr().cast::<u8>(), PAGE) };
        file.read_exact_at(page, at as u64).expect("pread");
        sum += u64::from(page[0]);
    }
    let time = started.elapsed();
    assert_eq!(sum, 7 * pages as u64, "read what was written");
    Run {
        time,
        units: pages as u64,
        stats: None,
    }
}

/// Workload 3: Every page written and flushed, then one byte written to every page again.
pub fn redirty(dir: &Path, s: Subject, pages: usize) -> Run {
    let m = fresh(dir, s, pages);
    for p in 0..pages {
        m.touch(p, 1);
    }
    m.flush();
    let before = m.stats();
    let started = Instant::now();
    for p in 0..pages {
        m.touch(p, 2);
    }
    Run {
        time: started.elapsed(),
        units: pages as u64,
        stats: delta(before, m.stats()),
    }
}

/// Workload 4: A flush of `dirty` pages spread over a file of `pages` pages.
pub fn flush(dir: &Path, s: Subject, pages: usize, dirty: usize) -> Run {
    flush_on(&fresh(dir, s, pages), pages, dirty)
}

/// Workload 4 through mkwrite over the NBD export `nbd`, 4 KiB blocks.
pub fn flush_nbd(nbd: &Nbd, pages: usize, dirty: usize) -> Run {
    flush_on(&Mapped::over_nbd(nbd, 4096, (pages * PAGE) as u64), pages, dirty)
}

fn flush_on(m: &Mapped, pages: usize, dirty: usize) -> Run {
    for p in 0..pages {
        m.touch(p, 1);
    }
    m.flush();
    let step = (pages / dirty.max(1)).max(1);
    for i in 0..dirty {
        m.touch(i * step, 3);
    }
    let before = m.stats();
    let started = Instant::now();
    m.flush();
    Run {
        time: started.elapsed(),
        units: dirty as u64,
        stats: delta(before, m.stats()),
    }
}

/// Workload 5: 8-byte stores and loads to pages already writable (memory speed).
pub fn resident(dir: &Path, s: Subject, pages: usize) -> Run {
    let m = fresh(dir, s, pages);
    for p in 0..pages {
        m.touch(p, 1);
    }
    let base = m.ptr().cast::<u64>();
    const ROUNDS: usize = 8;
    let started = Instant::now();
    let mut sum = 0u64;
    for r in 0..ROUNDS {
        for p in 0..pages {
            let at = p * (PAGE / 8) + r * 8;
            // SAFETY: within the file's pages, 8-byte aligned.
            unsafe {
                base.add(at).write_volatile(r as u64);
                sum = sum.wrapping_add(base.add(at).read_volatile());
            }
        }
    }
    let time = started.elapsed();
    std::hint::black_box(sum);
    Run {
        time,
        units: (pages * ROUNDS) as u64,
        stats: None,
    }
}

/// Workload 6: Two threads first-writing disjoint halves at once.
pub fn two_writers(dir: &Path, s: Subject, pages: usize) -> Run {
    let m = Arc::new(fresh(dir, s, pages));
    let half = pages / 2;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..2 {
            let m = Arc::clone(&m);
            scope.spawn(move || {
                for p in t * half..(t + 1) * half {
                    m.touch(p, 1);
                }
            });
        }
    });
    Run {
        time: started.elapsed(),
        units: (2 * half) as u64,
        stats: m.stats(),
    }
}

/// Workload 7: `set_len` up by `pages` pages, or back down, per call.
pub fn resize(dir: &Path, s: Subject, pages: usize, up: bool) -> Run {
    let path = file_of(dir, s);
    let len = (pages * PAGE) as u64;
    written(&path, len);
    let m = Mapped::open(s, &path, 2 * len);
    const CALLS: u32 = 8;
    let mut time = Duration::ZERO;
    for _ in 0..CALLS {
        let (from, to) = if up { (len, 2 * len) } else { (2 * len, len) };
        m.set_len(from);
        let started = Instant::now();
        m.set_len(to);
        time += started.elapsed();
        m.set_len(len);
    }
    Run {
        time,
        units: CALLS.into(),
        stats: m.stats(),
    }
}

/// Workload 7: `punch_hole` of 1 MiB, per call, over written data.
pub fn punch(dir: &Path, s: Subject, pages: usize) -> Run {
    let path = file_of(dir, s);
    let len = (pages * PAGE) as u64;
    written(&path, len);
    let m = Mapped::open(s, &path, len);
    let _ = m.load(0);
    let calls = (len >> 20).max(1);
    let started = Instant::now();
    for i in 0..calls {
        m.punch(i << 20, (1 << 20).min(len));
    }
    Run {
        time: started.elapsed(),
        units: calls,
        stats: m.stats(),
    }
}

/// How a database-shaped run writes its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Copies through the mapping's memory.
    Raw,
    /// mkwrite's checked `write` (no signal: errors come back).
    Checked,
    /// `pwrite` + `fdatasync`, no mapping at all.
    Pwrite,
}

/// Workload 9: 512-byte records at random offsets of a sparse file from 2 threads,
/// a flush every 10,000 records; per record.
pub fn database(dir: &Path, s: Subject, writer: Writer, file_len: u64, records: u64) -> Run {
    let path = file_of(dir, s);
    sparse(&path, file_len);
    let m = (writer != Writer::Pwrite).then(|| Mapped::open(s, &path, file_len));
    let file = open_rw(&path);
    let done = AtomicU64::new(0);
    let slots = file_len / 512;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..2u64 {
            let (m, file, done) = (m.as_ref(), &file, &done);
            scope.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                let record = [t as u8 + 1; 512];
                for _ in 0..records / 2 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let at = (x % slots) * 512;
                    match (writer, m) {
                        (Writer::Raw, Some(m)) => {
                            // SAFETY: the record lies within the file; records
                            // of the two threads may overlap, as a database's
                            // could not, but plain bytes racing is harmless here.
                            unsafe {
                                std::ptr::copy_nonoverlapping(record.as_ptr(), m.ptr().add(at as usize), 512)
                            }
                        }
                        (Writer::Checked, Some(m)) => m
                            .mkwrite()
                            .expect("checked needs mkwrite")
                            .write(at, &record)
                            .expect("write"),
                        _ => file.write_all_at(&record, at).expect("pwrite"),
                    }
                    if (done.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(10_000) {
                        match m {
                            Some(m) => m.flush(),
                            None => file.sync_data().expect("fdatasync"),
                        }
                    }
                }
            });
        }
    });
    Run {
        time: started.elapsed(),
        units: records,
        stats: m.as_ref().and_then(Mapped::stats),
    }
}

/// Counters between two snapshots.
fn delta(before: Option<Stats>, after: Option<Stats>) -> Option<Stats> {
    let (b, mut a) = (before?, after?);
    a.faults_missing_read -= b.faults_missing_read;
    a.faults_missing_write -= b.faults_missing_write;
    a.faults_write_protect -= b.faults_write_protect;
    a.faults_in_thread -= b.faults_in_thread;
    a.faults_handed_off -= b.faults_handed_off;
    a.faults_found_ready -= b.faults_found_ready;
    a.fill_waits -= b.fill_waits;
    a.allocate_calls -= b.allocate_calls;
    a.handler_time -= b.handler_time;
    a.store_read_time -= b.store_read_time;
    a.store_allocate_time -= b.store_allocate_time;
    a.store_write_time -= b.store_write_time;
    a.store_sync_time -= b.store_sync_time;
    a.ioctl_time -= b.ioctl_time;
    Some(a)
}

/// `fallocate` of `bytes` per call over `total` bytes of a fresh file, per call.
pub fn fallocate_per_call(dir: &Path, bytes: u64, total: u64) -> Duration {
    let path = dir.join("fallocate.dat");
    sparse(&path, total);
    let file = open_rw(&path);
    let calls = total / bytes;
    let started = Instant::now();
    for i in 0..calls {
        nix::fcntl::fallocate(
            &file,
            nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            (i * bytes) as i64,
            bytes as i64,
        )
        .expect("fallocate");
    }
    let time = started.elapsed() / calls as u32;
    let _ = std::fs::remove_file(&path);
    time
}

/// Workload 10's phases, each timed on its own over many mappings.
pub struct ManyMappings {
    /// Opening one mapping (of a file with two sparse pages).
    pub open: Run,
    /// A first write to a page of each of the first 100 mappings opened.
    pub first_fault_early: Run,
    /// The same in the last 100 opened, with all the others still open.
    pub first_fault_late: Run,
    /// Closing one mapping (every one flushed beforehand, so nothing is
    /// written or synced).
    pub close: Run,
}

/// Workload 10: `count` mappings of as many files open at once.
pub fn many_mappings(dir: &Path, s: Subject, count: usize) -> ManyMappings {
    let dir = dir.join(format!("many-{s:?}").replace(|c: char| !c.is_alphanumeric(), "-"));
    std::fs::create_dir_all(&dir).expect("a directory for the files");
    let paths: Vec<PathBuf> = (0..count).map(|i| dir.join(i.to_string())).collect();
    for path in &paths {
        sparse(path, 2 * PAGE as u64);
    }
    let started = Instant::now();
    let maps: Vec<Mapped> = paths
        .iter()
        .map(|p| Mapped::open(s, p, 2 * PAGE as u64))
        .collect();
    let open = Run {
        time: started.elapsed(),
        units: count as u64,
        stats: None,
    };
    let sample = 100.min(count);
    let first_writes = |maps: &[Mapped]| {
        let started = Instant::now();
        for m in maps {
            // SAFETY: page 0 lies below EOF and no other thread touches it.
            unsafe { m.ptr().write(1) };
        }
        Run {
            time: started.elapsed(),
            units: maps.len() as u64,
            stats: None,
        }
    };
    let first_fault_early = first_writes(&maps[..sample]);
    let first_fault_late = first_writes(&maps[count - sample..]);
    for m in &maps {
        m.flush();
    }
    let started = Instant::now();
    drop(maps);
    let close = Run {
        time: started.elapsed(),
        units: count as u64,
        stats: None,
    };
    let _ = std::fs::remove_dir_all(&dir);
    ManyMappings {
        open,
        first_fault_early,
        first_fault_late,
        close,
    }
}
