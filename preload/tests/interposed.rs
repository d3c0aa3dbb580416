//! The interposed calls against the kernel, on twin files.
//!
//! A child process (this binary again, under `LD_PRELOAD`) opens two files
//! on ext4 with 1 KiB blocks: `managed/data`, which the interposer puts on
//! mkwrite, and `twin/data`, which it leaves to the kernel. It maps both
//! (`MAP_SHARED`) and applies the same few thousand seeded random
//! operations to each: `write`/`writev` at the file position, `pwrite`/
//! `pwritev`, stores through the mapping, `read`/`readv`, `pread`/`preadv`,
//! loads through the mapping, `pwrite` from and `pread` into the file's
//! own mapping, `ftruncate`/`truncate`, `fallocate` (punch, zero,
//! allocate), `fstat`, `lseek(SEEK_END)`, `fsync`/`fdatasync`, `msync`,
//! `munmap` and `mmap` again, `close` and `open` again (read-write,
//! read-only, write-only, append, truncating), `dup`, `dup2` and
//! `fcntl(F_DUPFD)`. Sizes are odd (1 to 9000 bytes) and offsets
//! unaligned, so mkwrite's blocks (512 to 4096 bytes) straddle pages and
//! EOF. Every call's result, `errno` and the bytes it read must be the
//! kernel's; after every operation the two files' lengths and file
//! positions must agree; after `fsync` and `msync(MS_SYNC)` the managed
//! file's bytes on disk (read with the raw system call, past the
//! interposer) must be the twin's. Each managed view must be mkwrite's
//! memory, not the kernel's mapping of the file (/proc/self/maps), or
//! the test would compare the kernel with itself.
//!
//! The parent (not preloaded) runs the child for each mkwrite block size
//! and a few seeds, each within a time limit, then compares the two files
//! on disk byte for byte: what the interposer flushed at the last `munmap`
//! and at exit is what the kernel holds for the twin. It also checks that
//! the managed file holds no more blocks than its length needs.
//!
//! `MKWRITE_TWIN_SEED=<n>` runs that seed only, `MKWRITE_TWIN_OPS=<n>`
//! sets the number of operations, `MKWRITE_TWIN_TRACE=1` has the child
//! print each operation on stderr (to replay a failure). Arguments filter
//! the runs by name (`block=512`).

mod common;

use std::ffi::{CString, c_int};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use common::{Mount, preloaded, run_ok};

/// Set in the child: run the workload instead of the runs.
const CHILD: &str = "MKWRITE_TWIN_CHILD";
const SEED: &str = "MKWRITE_TWIN_SEED";
const OPS: &str = "MKWRITE_TWIN_OPS";
const TRACE: &str = "MKWRITE_TWIN_TRACE";
const MANAGED_FILE: &str = "MKWRITE_TWIN_MANAGED";
const TWIN_FILE: &str = "MKWRITE_TWIN_TWIN";

const BLOCK_SIZES: [u64; 4] = [512, 1024, 2048, 4096];
const SEEDS: [u64; 3] = [1, 2, 3];
const DEFAULT_OPS: usize = 3000;
const LIMIT: Duration = Duration::from_secs(60);

/// Both views are this long; the files stay well inside it.
const VIEW: usize = 1 << 20;
/// No operation moves EOF past this.
const MAX_LEN: u64 = 512 << 10;
/// The largest single transfer: a few blocks and pages, never aligned.
const MAX_IO: usize = 9000;
/// Every this many operations, the whole files are compared.
const FULL_CHECK_EVERY: usize = 250;

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child::run();
        return;
    }
    std::process::exit(parent())
}

// ---- the parent: runs, then compares the files on disk ---------------------

/// Every run in its child; 0 if all passed.
fn parent() -> i32 {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let seeds = match std::env::var(SEED) {
        Ok(s) => vec![s.parse().expect("MKWRITE_TWIN_SEED is a number")],
        Err(_) => SEEDS.to_vec(),
    };
    let ops = std::env::var(OPS).map_or(DEFAULT_OPS, |s| s.parse().expect("MKWRITE_TWIN_OPS is a number"));
    let mount = Mount::ext4(64 << 20, 1024);
    let (managed, twin) = (mount.path("managed"), mount.path("twin"));
    std::fs::create_dir(&managed).unwrap();
    std::fs::create_dir(&twin).unwrap();
    // A failing run is reported on its own line below, with its message.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let (mut passed, mut failed) = (0, 0);
    // Every block size and seed with mkwrite's default delivery; the first
    // seed again with faults resolved in the faulting thread.
    let runs = BLOCK_SIZES.iter().flat_map(|&block| {
        let default = seeds.iter().map(move |&seed| (block, seed, "handler"));
        default.chain(std::iter::once((block, seeds[0], "in-thread")))
    });
    for (block, seed, delivery) in runs {
        let name = format!("block={block} seed={seed} delivery={delivery}");
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let run = || run_once(&managed, &twin, block, seed, ops, delivery);
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(ran) => {
                println!("test interposed {name} ... ok ({ran} ops)");
                passed += 1;
            }
            Err(why) => {
                println!("test interposed {name} ... FAILED\n{}\n", panic_text(&why));
                failed += 1;
            }
        }
    }
    std::panic::set_hook(hook);
    println!("{passed} passed, {failed} failed");
    i32::from(failed > 0)
}

/// One child run on fresh files; the number of operations it ran.
fn run_once(managed: &Path, twin: &Path, block: u64, seed: u64, ops: usize, delivery: &str) -> String {
    let (managed_file, twin_file) = (managed.join("data"), twin.join("data"));
    for file in [&managed_file, &twin_file] {
        let _ = std::fs::remove_file(file);
    }
    let (block, seed, ops) = (block.to_string(), seed.to_string(), ops.to_string());
    // This very binary, even if a rebuild has replaced its path meanwhile.
    let cmd = preloaded(
        Command::new("/proc/self/exe"),
        &[managed],
        &[
            (CHILD, "1"),
            ("MKWRITE_PRELOAD_BLOCK_SIZE", &block),
            ("MKWRITE_PRELOAD_DELIVERY", delivery),
            (SEED, &seed),
            (OPS, &ops),
            (MANAGED_FILE, managed_file.to_str().unwrap()),
            (TWIN_FILE, twin_file.to_str().unwrap()),
        ],
    );
    let out = run_ok(cmd, LIMIT);
    compare_on_disk(&managed_file, &twin_file);
    out.lines()
        .find_map(|l| l.strip_prefix("ops "))
        .unwrap_or_else(|| panic!("the child did not say how many operations it ran: {out}"))
        .to_string()
}

/// The two files on disk are equal, and the managed one is not bloated.
fn compare_on_disk(managed: &Path, twin: &Path) {
    let (m, t) = (std::fs::read(managed).unwrap(), std::fs::read(twin).unwrap());
    assert_eq!(m.len(), t.len(), "file lengths on disk after the run");
    if let Some(at) = first_difference(&m, &t) {
        panic!(
            "on disk after the run, byte {at}: managed {:#04x}, twin {:#04x}",
            m[at], t[at]
        );
    }
    // Blocks within the length (rounded to pages) and a little for
    // ext4's extent tree: nothing leaked past EOF.
    let held = std::fs::metadata(managed).unwrap().blocks() * 512;
    let allowed = (m.len() as u64).next_multiple_of(4096) + (16 << 10);
    assert!(
        held <= allowed,
        "the managed file holds {held} bytes of blocks for {} bytes",
        m.len()
    );
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn panic_text(why: &Box<dyn std::any::Any + Send>) -> String {
    why.downcast_ref::<String>()
        .cloned()
        .or_else(|| why.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

// ---- the operations ----------------------------------------------------------

/// How a descriptor is opened.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Access {
    ReadWrite,
    ReadOnly,
    WriteOnly,
    /// Read-write with `O_APPEND`: every write lands at EOF (on Linux a
    /// `pwrite` too, whatever its offset).
    Append,
}

impl Access {
    fn flags(self) -> c_int {
        match self {
            Access::ReadWrite => libc::O_RDWR,
            Access::ReadOnly => libc::O_RDONLY,
            Access::WriteOnly => libc::O_WRONLY,
            Access::Append => libc::O_RDWR | libc::O_APPEND,
        }
    }
}

/// One step, applied alike to both files. `tag` picks the bytes written
/// (see [`pattern`]) and how a vectored call splits its buffer.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// `write`/`writev` at `off` (after `lseek`), or at the file position.
    Write {
        off: Option<u64>,
        len: usize,
        tag: u32,
        vectored: bool,
    },
    /// `pwrite`/`pwritev`: may start past EOF, leaving a hole.
    Pwrite {
        off: u64,
        len: usize,
        tag: u32,
        vectored: bool,
    },
    /// A store through the mapping, inside EOF.
    MapWrite { off: u64, len: usize, tag: u32 },
    /// `read`/`readv` at `off` (after `lseek`), or at the file position.
    Read {
        off: Option<u64>,
        len: usize,
        tag: u32,
        vectored: bool,
    },
    /// `pread`/`preadv`: may run past EOF (a short read).
    Pread {
        off: u64,
        len: usize,
        tag: u32,
        vectored: bool,
    },
    /// A load through the mapping, inside EOF.
    MapRead { off: u64, len: usize },
    /// `pwrite` at `dst` of the view's bytes at `src` (inside EOF, apart
    /// from `dst`'s range): a buffer in the file's own mapping.
    ViewToFile { src: u64, dst: u64, len: usize },
    /// `pread` from `src` into the view at `dst` (inside EOF, apart).
    FileToView { src: u64, dst: u64, len: usize },
    /// `ftruncate`, or `truncate` by path.
    Truncate { len: u64, by_path: bool },
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    Punch { off: u64, len: u64 },
    /// `fallocate(ZERO_RANGE)`, perhaps with `KEEP_SIZE`.
    Zero { off: u64, len: u64, keep_size: bool },
    /// `fallocate(0)`, perhaps with `KEEP_SIZE`.
    Allocate { off: u64, len: u64, keep_size: bool },
    /// `fstat`'s `st_size`.
    Fstat,
    /// `lseek(0, SEEK_END)`: the length, passed through to the kernel.
    SeekEnd,
    /// `fsync`, or `fdatasync`.
    Fsync { data_only: bool },
    /// `msync` of `len` bytes of the view from page `page`.
    Msync { page: usize, len: usize, sync: bool },
    /// `munmap` of the whole view; mapping ops wait for [`Op::Map`].
    Unmap,
    /// `mmap` of the whole view again (refused unless read-write).
    Map,
    /// `close` and `open` again, perhaps `O_TRUNC`; the view stays.
    Reopen { access: Access, truncate: bool },
    /// A new descriptor for the file (`dup`, `dup2` onto another, or
    /// `fcntl(F_DUPFD)`), the old one closed.
    Dup { how: u8 },
}

/// What the child knows when it picks the next operation.
struct State {
    len: u64,
    pos: u64,
    mapped: bool,
    append: bool,
}

/// `len` bytes for `tag`: never zero (a zeroed byte shows) and different
/// for each tag.
fn pattern(tag: u32, len: usize) -> Vec<u8> {
    let mut x = u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 56) as u8).max(1)
        })
        .collect()
}

/// Where a vectored call splits a `len`-byte buffer: three parts. One
/// call in four has an empty part (first, middle or last), as programs
/// pass them; a random cut would rarely make one.
fn splits(tag: u32, len: usize) -> [Range<usize>; 3] {
    let a = tag as usize % (len + 1);
    let b = a + (tag as usize >> 12) % (len - a + 1);
    let (a, b) = match tag >> 28 {
        0 => (0, b),
        1 => (a, a),
        2 => (a, len),
        3 => (0, 0),
        _ => (a, b),
    };
    [0..a, a..b, b..len]
}

/// A start for `len` bytes whose end stays within [`MAX_LEN`]: anywhere,
/// around EOF, or just around a 512-byte boundary.
fn offset(rng: &mut StdRng, s: &State, len: u64) -> u64 {
    let max = MAX_LEN - len;
    let at = match rng.random_range(0..4) {
        0 | 1 => rng.random_range(0..=max),
        2 => (s.len + rng.random_range(0..=2 * MAX_IO as u64)).saturating_sub(MAX_IO as u64),
        _ => (rng.random_range(0..=max / 512) * 512 + rng.random_range(0..7)).saturating_sub(3),
    };
    at.min(max)
}

/// A range of at most [`MAX_IO`] bytes inside `[0, len)` (`len` > 0),
/// often ending at or near EOF.
fn inside(rng: &mut StdRng, len: u64) -> (u64, usize) {
    let n = rng.random_range(1..=MAX_IO.min(len as usize));
    let max = len - n as u64;
    let off = if rng.random_bool(0.3) {
        max - rng.random_range(0..=max.min(64))
    } else {
        rng.random_range(0..=max)
    };
    (off, n)
}

/// A new length: anywhere, around EOF, around a boundary, or zero.
fn new_len(rng: &mut StdRng, s: &State) -> u64 {
    let at = match rng.random_range(0..10) {
        0 => 0,
        1..=3 => rng.random_range(0..=MAX_LEN),
        4..=7 => (s.len + rng.random_range(0..=2 * MAX_IO as u64)).saturating_sub(MAX_IO as u64),
        _ => (rng.random_range(0..=MAX_LEN / 512) * 512 + rng.random_range(0..7)).saturating_sub(3),
    };
    at.min(MAX_LEN)
}

fn apart(a: u64, b: u64, len: usize) -> bool {
    a.abs_diff(b) >= len as u64
}

/// How a descriptor is opened again: mostly read-write.
fn access(rng: &mut StdRng) -> Access {
    match rng.random_range(0..10) {
        0 => Access::ReadOnly,
        1 => Access::WriteOnly,
        2 => Access::Append,
        _ => Access::ReadWrite,
    }
}

/// The next operation, weighted toward reads and writes of every kind.
fn pick(rng: &mut StdRng, s: &State) -> Op {
    let tag = rng.random();
    let vectored = rng.random_bool(0.3);
    let len = rng.random_range(1..=MAX_IO);
    // At the file position only while that keeps EOF within MAX_LEN.
    let here = s.pos + len as u64 <= MAX_LEN && rng.random_bool(0.3);
    let at = |rng: &mut StdRng| (!here).then(|| offset(rng, s, len as u64));
    // With O_APPEND every write lands at EOF: allowed while it stays
    // within MAX_LEN.
    let may_write = !s.append || s.len + len as u64 <= MAX_LEN;
    let in_view = s.mapped && s.len > 0;
    match rng.random_range(0..100) {
        0..=10 if may_write => Op::Write {
            off: at(rng),
            len,
            tag,
            vectored,
        },
        11..=21 if may_write => Op::Pwrite {
            off: offset(rng, s, len as u64),
            len,
            tag,
            vectored,
        },
        22..=33 if in_view => {
            let (off, len) = inside(rng, s.len);
            Op::MapWrite { off, len, tag }
        }
        34..=42 => Op::Read {
            off: at(rng),
            len,
            tag,
            vectored,
        },
        43..=51 => Op::Pread {
            off: offset(rng, s, len as u64),
            len,
            tag,
            vectored,
        },
        52..=60 if in_view => {
            let (off, len) = inside(rng, s.len);
            Op::MapRead { off, len }
        }
        61..=63 if in_view && may_write => {
            let (src, len) = inside(rng, s.len);
            let dst = offset(rng, s, len as u64);
            if apart(src, dst, len) {
                Op::ViewToFile { src, dst, len }
            } else {
                Op::Fstat
            }
        }
        64..=66 if in_view => {
            let (dst, len) = inside(rng, s.len);
            let src = offset(rng, s, len as u64);
            if apart(src, dst, len) {
                Op::FileToView { src, dst, len }
            } else {
                Op::Fstat
            }
        }
        67..=73 => Op::Truncate {
            len: new_len(rng, s),
            by_path: rng.random_bool(0.2),
        },
        74..=80 => Op::Punch {
            off: offset(rng, s, len as u64),
            len: len as u64,
        },
        81..=83 => Op::Zero {
            off: offset(rng, s, len as u64),
            len: len as u64,
            keep_size: rng.random_bool(0.5),
        },
        84..=86 => Op::Allocate {
            off: offset(rng, s, len as u64),
            len: len as u64,
            keep_size: rng.random_bool(0.5),
        },
        87 => Op::Fstat,
        88 => Op::SeekEnd,
        89..=90 => Op::Fsync {
            data_only: rng.random_bool(0.5),
        },
        91..=92 if s.mapped => Op::Msync {
            page: rng.random_range(0..MAX_LEN as usize / 4096),
            len: rng.random_range(1..=4 * MAX_IO),
            sync: rng.random_bool(0.7),
        },
        93 if s.mapped => Op::Unmap,
        93..=96 if !s.mapped => Op::Map,
        97..=98 => {
            let access = access(rng);
            Op::Reopen {
                access,
                truncate: access != Access::ReadOnly && rng.random_bool(0.05),
            }
        }
        99 => Op::Dup {
            how: rng.random_range(0..3),
        },
        // What the state rules out (a mapping op with nothing mapped, a
        // write past MAX_LEN): a read.
        _ => Op::Pread {
            off: offset(rng, s, len as u64),
            len,
            tag,
            vectored,
        },
    }
}

// ---- the child: both files, every operation on each -------------------------

mod child {
    use super::*;

    /// One of the two files: its path, descriptors and view.
    pub struct Side {
        path: CString,
        /// The descriptor the operations use (any access mode).
        fd: c_int,
        /// A read-only descriptor for the checks, open throughout (the
        /// managed file's is routed through its mapping too).
        reader: c_int,
        /// The `VIEW`-byte shared mapping; null while unmapped.
        view: *mut u8,
    }

    /// What a call gave: its result, `errno` if it failed, bytes it read.
    pub struct Outcome {
        ret: i64,
        errno: i32,
        data: Vec<u8>,
    }

    impl Outcome {
        /// A call's result, with `errno` read now if it failed.
        fn of(ret: i64) -> Outcome {
            let errno = if ret < 0 { last_errno() } else { 0 };
            Outcome {
                ret,
                errno,
                data: Vec::new(),
            }
        }

        /// A read's result and the bytes it delivered.
        fn read(ret: i64, mut buf: Vec<u8>) -> Outcome {
            let mut out = Outcome::of(ret);
            buf.truncate(ret.max(0) as usize);
            out.data = buf;
            out
        }
    }

    fn last_errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn check(ret: c_int, what: &str) {
        assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
    }

    impl Side {
        pub fn open(path: &str) -> Side {
            let path = CString::new(path).unwrap();
            let mut side = Side {
                path,
                fd: -1,
                reader: -1,
                view: std::ptr::null_mut(),
            };
            side.fd = side.open_fd(libc::O_RDWR | libc::O_CREAT);
            side.reader = side.open_fd(libc::O_RDONLY);
            side
        }

        fn open_fd(&self, flags: c_int) -> c_int {
            // SAFETY: a NUL-terminated path; the mode is read with O_CREAT.
            let fd = unsafe { libc::open(self.path.as_ptr(), flags, 0o644 as libc::c_uint) };
            check(fd, "open");
            fd
        }

        /// Maps the view; -1 (and no view) if the descriptor cannot.
        fn map(&mut self) -> Outcome {
            // SAFETY: a new shared mapping of our descriptor, placed by the
            // kernel (or the interposer): it overlaps nothing of ours.
            let at = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    VIEW,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.fd,
                    0,
                )
            };
            if at == libc::MAP_FAILED {
                return Outcome::of(-1);
            }
            self.view = at.cast();
            Outcome::of(0)
        }

        fn unmap(&mut self) {
            // SAFETY: the whole view we mapped; nothing refers to it after.
            check(unsafe { libc::munmap(self.view.cast(), VIEW) }, "munmap");
            self.view = std::ptr::null_mut();
        }

        fn close(fd: c_int) {
            // SAFETY: our own descriptor, not used again.
            check(unsafe { libc::close(fd) }, "close");
        }

        /// The file's length, from the kernel (`fstat` is not interposed).
        fn len(&self) -> u64 {
            // SAFETY: fstat fills the buffer we pass.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            check(unsafe { libc::fstat(self.fd, &mut st) }, "fstat");
            st.st_size as u64
        }

        /// The descriptor's file position.
        fn pos(&self) -> u64 {
            // SAFETY: lseek only reads the position here.
            let at = unsafe { libc::lseek(self.fd, 0, libc::SEEK_CUR) };
            u64::try_from(at).unwrap_or_else(|_| panic!("lseek: {}", std::io::Error::last_os_error()))
        }

        /// Whether the descriptor appends (`F_GETFL`).
        fn appends(&self) -> bool {
            // SAFETY: F_GETFL only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(self.fd, libc::F_GETFL) };
            check(flags, "fcntl");
            flags & libc::O_APPEND != 0
        }

        fn seek(&self, off: Option<u64>) {
            if let Some(off) = off {
                // SAFETY: lseek only moves the descriptor's position.
                let at = unsafe { libc::lseek(self.fd, off as libc::off_t, libc::SEEK_SET) };
                assert_eq!(
                    at,
                    off as libc::off_t,
                    "lseek: {}",
                    std::io::Error::last_os_error()
                );
            }
        }

        /// The view from `off`, as a pointer for a system call; the caller
        /// keeps what it touches inside EOF.
        fn at(&self, off: u64) -> *mut u8 {
            assert!(!self.view.is_null() && off < VIEW as u64);
            // SAFETY: inside the VIEW-byte mapping (checked above).
            unsafe { self.view.add(off as usize) }
        }

        /// `op` on this file.
        fn apply(&mut self, op: &Op) -> Outcome {
            let fd = self.fd;
            match *op {
                Op::Write {
                    off,
                    len,
                    tag,
                    vectored,
                } => {
                    self.seek(off);
                    Outcome::of(write_from(fd, None, &pattern(tag, len), tag, vectored))
                }
                Op::Pwrite {
                    off,
                    len,
                    tag,
                    vectored,
                } => Outcome::of(write_from(fd, Some(off), &pattern(tag, len), tag, vectored)),
                Op::MapWrite { off, len, tag } => {
                    let data = pattern(tag, len);
                    // SAFETY: [off, off + len) lies inside EOF (no SIGBUS)
                    // and the shared, writable view; `data` is ours.
                    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.at(off), len) };
                    Outcome::of(0)
                }
                Op::Read {
                    off,
                    len,
                    tag,
                    vectored,
                } => {
                    self.seek(off);
                    read_into(fd, None, len, tag, vectored)
                }
                Op::Pread {
                    off,
                    len,
                    tag,
                    vectored,
                } => read_into(fd, Some(off), len, tag, vectored),
                Op::MapRead { off, len } => Outcome::read(len as i64, self.view_bytes(off, len)),
                Op::ViewToFile { src, dst, len } => {
                    // SAFETY: the view's [src, src + len) lies inside EOF;
                    // pwrite only reads it.
                    let n = unsafe { libc::pwrite(fd, self.at(src).cast(), len, dst as libc::off_t) };
                    Outcome::of(n as i64)
                }
                Op::FileToView { src, dst, len } => {
                    // SAFETY: the view's [dst, dst + len) lies inside EOF
                    // and is writable; nothing else refers to it.
                    let n = unsafe { libc::pread(fd, self.at(dst).cast(), len, src as libc::off_t) };
                    Outcome::of(n as i64)
                }
                Op::Truncate { len, by_path: false } => {
                    // SAFETY: ftruncate on our descriptor.
                    Outcome::of(unsafe { libc::ftruncate(fd, len as libc::off_t) }.into())
                }
                Op::Truncate { len, by_path: true } => {
                    // SAFETY: a NUL-terminated path.
                    Outcome::of(unsafe { libc::truncate(self.path.as_ptr(), len as libc::off_t) }.into())
                }
                Op::Punch { off, len } => fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                ),
                Op::Zero { off, len, keep_size } => {
                    fallocate(fd, libc::FALLOC_FL_ZERO_RANGE | keep(keep_size), off, len)
                }
                Op::Allocate { off, len, keep_size } => fallocate(fd, keep(keep_size), off, len),
                Op::Fstat => Outcome::of(self.len() as i64),
                // SAFETY: lseek only moves the descriptor's position.
                Op::SeekEnd => Outcome::of(unsafe { libc::lseek(fd, 0, libc::SEEK_END) }),
                // SAFETY: fsync on our descriptor.
                Op::Fsync { data_only: false } => Outcome::of(unsafe { libc::fsync(fd) }.into()),
                // SAFETY: fdatasync on our descriptor.
                Op::Fsync { data_only: true } => Outcome::of(unsafe { libc::fdatasync(fd) }.into()),
                Op::Msync { page, len, sync } => {
                    let flags = if sync { libc::MS_SYNC } else { libc::MS_ASYNC };
                    // SAFETY: a page-aligned range inside the view (it may
                    // reach past EOF, which msync allows).
                    Outcome::of(unsafe { libc::msync(self.at(page as u64 * 4096).cast(), len, flags) }.into())
                }
                Op::Unmap => {
                    self.unmap();
                    Outcome::of(0)
                }
                Op::Map => self.map(),
                Op::Reopen { access, truncate } => {
                    Side::close(fd);
                    let trunc = if truncate { libc::O_TRUNC } else { 0 };
                    self.fd = self.open_fd(access.flags() | trunc);
                    Outcome::of(0)
                }
                Op::Dup { how } => {
                    self.fd = redup(fd, how);
                    Side::close(fd);
                    Outcome::of(0)
                }
            }
        }

        /// The view's bytes `[off, off + len)`, which must lie inside EOF.
        fn view_bytes(&self, off: u64, len: usize) -> Vec<u8> {
            // SAFETY: the caller keeps the range inside EOF and the view.
            unsafe { std::slice::from_raw_parts(self.at(off), len) }.to_vec()
        }

        fn mapped(&self) -> bool {
            !self.view.is_null()
        }

        /// The file's bytes `[off, off + len)` through `pread` (interposed
        /// for the managed file while it is mapped).
        fn pread(&self, off: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0; len];
            // SAFETY: pread into a buffer of `len` bytes.
            let n = unsafe { libc::pread(self.reader, buf.as_mut_ptr().cast(), len, off as libc::off_t) };
            assert_eq!(n, len as isize, "pread: {}", std::io::Error::last_os_error());
            buf
        }

        /// The file's bytes on disk: the system call itself, past the
        /// interposer, so the managed file's page cache, not its mapping.
        fn pread_disk(&self, off: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0; len];
            // SAFETY: pread64 into a buffer of `len` bytes.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_pread64,
                    self.reader,
                    buf.as_mut_ptr(),
                    len,
                    off as libc::off_t,
                )
            };
            assert_eq!(n, len as i64, "pread64: {}", std::io::Error::last_os_error());
            buf
        }

        /// Whether the view is the kernel's mapping of the file (its path
        /// in /proc/self/maps), rather than mkwrite's memory.
        fn kernel_mapped(&self) -> bool {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let addr = self.view as usize;
            let path = self.path.to_str().unwrap();
            maps.lines().any(|line| {
                let (a, b) = line.split_whitespace().next().unwrap().split_once('-').unwrap();
                let range = usize::from_str_radix(a, 16).unwrap()..usize::from_str_radix(b, 16).unwrap();
                range.contains(&addr) && line.ends_with(path)
            })
        }

        fn finish(mut self) {
            if self.mapped() {
                self.unmap();
            }
            Side::close(self.fd);
            Side::close(self.reader);
        }
    }

    /// A new descriptor for `fd`'s file, made the `how` way.
    fn redup(fd: c_int, how: u8) -> c_int {
        // SAFETY: dup, dup2 and fcntl(F_DUPFD) of our descriptor; dup2
        // replaces a descriptor opened for it (on /dev/null).
        let new = unsafe {
            match how {
                0 => libc::dup(fd),
                1 => {
                    let spare = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                    check(spare, "open /dev/null");
                    libc::dup2(fd, spare)
                }
                _ => libc::fcntl(fd, libc::F_DUPFD, 200),
            }
        };
        check(new, "dup");
        new
    }

    fn keep(keep_size: bool) -> c_int {
        if keep_size { libc::FALLOC_FL_KEEP_SIZE } else { 0 }
    }

    fn fallocate(fd: c_int, mode: c_int, off: u64, len: u64) -> Outcome {
        // SAFETY: fallocate on our descriptor.
        Outcome::of(unsafe { libc::fallocate(fd, mode, off as libc::off_t, len as libc::off_t) }.into())
    }

    /// `buf` (`len` bytes) split into the three iovecs [`splits`] says.
    fn iovecs(buf: *mut u8, len: usize, tag: u32) -> Vec<libc::iovec> {
        splits(tag, len)
            .into_iter()
            .map(|r| libc::iovec {
                // SAFETY: each part starts inside the buffer (or at its end).
                iov_base: unsafe { buf.add(r.start) }.cast(),
                iov_len: r.len(),
            })
            .collect()
    }

    /// `data` written at `off` (`pwrite`) or at the position (`write`),
    /// vectored or not: the call's result.
    fn write_from(fd: c_int, off: Option<u64>, data: &[u8], tag: u32, vectored: bool) -> i64 {
        let (ptr, len) = (data.as_ptr(), data.len());
        let iov = iovecs(ptr.cast_mut(), len, tag);
        // SAFETY: `ptr` holds `len` readable bytes and the iovecs cover
        // exactly them; the calls only read through them.
        let n = unsafe {
            match (off, vectored) {
                (None, false) => libc::write(fd, ptr.cast(), len),
                (None, true) => libc::writev(fd, iov.as_ptr(), 3),
                (Some(o), false) => libc::pwrite(fd, ptr.cast(), len, o as libc::off_t),
                (Some(o), true) => libc::pwritev(fd, iov.as_ptr(), 3, o as libc::off_t),
            }
        };
        n as i64
    }

    /// `len` bytes read at `off` (`pread`) or at the position (`read`).
    fn read_into(fd: c_int, off: Option<u64>, len: usize, tag: u32, vectored: bool) -> Outcome {
        let mut buf = vec![0u8; len];
        let ptr = buf.as_mut_ptr();
        let iov = iovecs(ptr, len, tag);
        // SAFETY: `buf` holds `len` writable bytes and the iovecs cover
        // exactly them; nothing else touches `buf` meanwhile.
        let n = unsafe {
            match (off, vectored) {
                (None, false) => libc::read(fd, ptr.cast(), len),
                (None, true) => libc::readv(fd, iov.as_ptr(), 3),
                (Some(o), false) => libc::pread(fd, ptr.cast(), len, o as libc::off_t),
                (Some(o), true) => libc::preadv(fd, iov.as_ptr(), 3, o as libc::off_t),
            }
        };
        Outcome::read(n as i64, buf)
    }

    /// The two outcomes of operation `i` agree, or a panic saying how not.
    fn compare(i: usize, op: &Op, m: &Outcome, t: &Outcome) {
        if (m.ret, m.errno) != (t.ret, t.errno) {
            panic!(
                "op {i} {op:?}: managed returned {} (errno {}), twin {} (errno {})",
                m.ret, m.errno, t.ret, t.errno
            );
        }
        if let Some(at) = first_difference(&m.data, &t.data) {
            panic!(
                "op {i} {op:?}: byte {at} of what it read: managed {:#04x}, twin {:#04x}",
                m.data[at], t.data[at]
            );
        }
    }

    /// Both files' bytes from `off` agree, or a panic naming `what` and
    /// the first differing file offset.
    fn same(what: &str, off: u64, m: &[u8], t: &[u8]) {
        if let Some(at) = first_difference(m, t) {
            let (got, want) = (m[at], t[at]);
            panic!(
                "{what}: file offset {}: managed {got:#04x}, twin {want:#04x}",
                off + at as u64
            );
        }
    }

    /// After every operation: the same length and file position.
    fn check_state(i: usize, op: &Op, m: &Side, t: &Side) -> State {
        let (len, pos) = (t.len(), t.pos());
        assert_eq!(m.len(), len, "after op {i} {op:?}: file lengths (fstat)");
        assert_eq!(m.pos(), pos, "after op {i} {op:?}: file positions");
        assert_eq!(m.mapped(), t.mapped(), "after op {i} {op:?}: mapped");
        State {
            len,
            pos,
            mapped: t.mapped(),
            append: t.appends(),
        }
    }

    /// After a sync: the managed file's bytes on disk in `[off, off +
    /// len)` (clipped to EOF) are the twin's.
    fn check_disk(i: usize, op: &Op, m: &Side, t: &Side, off: u64, len: u64) {
        let end = (off + len).min(t.len());
        if off < end {
            let n = (end - off) as usize;
            same(
                &format!("after op {i} {op:?}, on disk"),
                off,
                &m.pread_disk(off, n),
                &t.pread(off, n),
            );
        }
    }

    /// Everything both ways: through the views (if mapped) and `pread`.
    fn check_all(when: &str, m: &Side, t: &Side) {
        let len = t.len() as usize;
        if t.mapped() && len > 0 {
            same(
                &format!("{when}, views"),
                0,
                &m.view_bytes(0, len),
                &t.view_bytes(0, len),
            );
        }
        same(&format!("{when}, pread"), 0, &m.pread(0, len), &t.pread(0, len));
    }

    /// Otherwise the test would compare the kernel with itself.
    fn check_managed(m: &Side, t: &Side) {
        assert!(
            !m.kernel_mapped(),
            "the interposer left the managed file's mmap to the kernel"
        );
        assert!(
            t.kernel_mapped(),
            "the twin's view is not the kernel's mapping of it"
        );
    }

    /// The workload: seeded operations on both files, each compared.
    pub fn run() {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set for the child"));
        let seed: u64 = var(SEED).parse().unwrap();
        let ops: usize = var(OPS).parse().unwrap();
        let trace = std::env::var_os(TRACE).is_some();
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut m, mut t) = (Side::open(&var(MANAGED_FILE)), Side::open(&var(TWIN_FILE)));
        compare(0, &Op::Map, &m.map(), &t.map());
        check_managed(&m, &t);
        let mut state = State {
            len: 0,
            pos: 0,
            mapped: true,
            append: false,
        };
        for i in 0..ops {
            let op = pick(&mut rng, &state);
            if trace {
                eprintln!("op {i} {op:?}");
            }
            let (got, want) = (m.apply(&op), t.apply(&op));
            compare(i, &op, &got, &want);
            state = check_state(i, &op, &m, &t);
            match op {
                Op::Map if state.mapped => check_managed(&m, &t),
                Op::Fsync { .. } => check_disk(i, &op, &m, &t, 0, state.len),
                Op::Msync {
                    page,
                    len,
                    sync: true,
                } => check_disk(i, &op, &m, &t, page as u64 * 4096, len as u64),
                _ => {}
            }
            if i % FULL_CHECK_EVERY == FULL_CHECK_EVERY - 1 {
                check_all(&format!("after op {i} {op:?}"), &m, &t);
            }
        }
        check_all("at the end", &m, &t);
        m.finish();
        t.finish();
        println!("ops {ops}");
    }
}
