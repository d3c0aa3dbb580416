//! Runs one op sequence twice, through mkwrite and through the kernel's own
//! `mmap(MAP_SHARED)` on a twin file, with a plain buffer as the third
//! opinion. Every read and, after every flush, both files are compared.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use mkwrite::{Delivery, Mapping, MappingOptions};
use nix::fcntl::{FallocateFlags, fallocate};

use super::model;
use super::ops::{CAPACITY, Op, clip, data};

/// Where and how a sequence runs.
pub struct Setup {
    pub dir: PathBuf,
    pub fs: &'static str,
    pub block: u64,
    /// Measured by [`kernel_keeps_tail`]: the kernel lets bytes written past
    /// EOF become file data when the file grows, so there the shadow buffer
    /// alone judges the tail (DESIGN rule 5 says zero).
    pub kernel_keeps_tail: bool,
    /// Every write and read goes raw through [`mkwrite::guarded`] (the
    /// machinery of the pager's `poke` and `peek`); a fault there fails.
    pub guarded: bool,
    /// How mkwrite's faults are delivered.
    pub delivery: Delivery,
    /// The userfaultfd is `UFFD_USER_MODE_ONLY`, as unprivileged processes get.
    pub user_mode_only: bool,
    /// mkwrite keeps its pages within a budget of this many pages.
    pub budget_pages: Option<u64>,
    /// The kernel tracks mkwrite's dirty pages (`DirtyTracking::Kernel`).
    pub kernel_dirty: bool,
}

/// The budget of a `+budget` setup, in pages: small against the ops' range,
/// so eviction (and its write-backs) runs all along.
pub const BUDGET_PAGES: u64 = 8;

impl Setup {
    /// The name a replay log gives this setup: the filesystem, `+poke` when
    /// guarded, `+inthread` for in-thread delivery, `+usermode` for a
    /// user-mode-only userfaultfd, `+budget` for a budget, `+kerneldirty`
    /// for dirty tracking by the kernel.
    pub fn label(&self) -> String {
        format!(
            "{}{}{}{}{}{}",
            self.fs,
            if self.guarded { "+poke" } else { "" },
            if self.delivery == Delivery::InThread {
                "+inthread"
            } else {
                ""
            },
            if self.user_mode_only { "+usermode" } else { "" },
            if self.budget_pages.is_some() {
                "+budget"
            } else {
                ""
            },
            if self.kernel_dirty { "+kerneldirty" } else { "" }
        )
    }

    /// The setup a label names (see [`label`](Self::label)), on `dir`.
    pub fn from_label(label: &str, dir: PathBuf, block: u64, kernel_keeps_tail: bool) -> Setup {
        let delivery = match label.contains("+inthread") {
            true => Delivery::InThread,
            false => Delivery::HandlerThread,
        };
        let fs = label.split('+').next().unwrap_or(label);
        Setup {
            dir,
            fs: Box::leak(fs.to_owned().into_boxed_str()),
            block,
            kernel_keeps_tail,
            guarded: label.contains("+poke"),
            delivery,
            user_mode_only: label.contains("+usermode"),
            budget_pages: label.contains("+budget").then_some(BUDGET_PAGES),
            kernel_dirty: label.contains("+kerneldirty"),
        }
    }
}

/// Where a sequence first disagreed.
#[derive(Debug)]
pub struct Failure {
    pub op: usize,
    pub message: String,
}

/// What a passing sequence checked.
#[derive(Default, Debug, Clone, Copy)]
pub struct Tally {
    pub ops: u64,
    pub reads: u64,
    pub file_compares: u64,
    /// Bytes where the kernel kept a polluted tail and only the shadow judged.
    pub kernel_unjudged: u64,
    /// Faults mkwrite resolved in the faulting thread.
    pub faults_in_thread: u64,
    /// Pages mkwrite evicted for a budget.
    pub pages_evicted: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.ops += other.ops;
        self.reads += other.reads;
        self.file_compares += other.file_compares;
        self.kernel_unjudged += other.kernel_unjudged;
        self.faults_in_thread += other.faults_in_thread;
        self.pages_evicted += other.pages_evicted;
    }
}

/// Runs `ops` on a fresh pair of files in `setup.dir`.
pub fn run(setup: &Setup, ops: &[Op]) -> Result<Tally, Failure> {
    if setup.guarded {
        mkwrite::guarded::install().map_err(|e| Failure {
            op: 0,
            message: format!("install the guard: {e}"),
        })?;
    }
    let mut twin = Twin::new(setup).map_err(|message| Failure { op: 0, message })?;
    for (at, &op) in ops.iter().enumerate() {
        twin.apply(op)
            .and_then(|()| twin.check_state())
            .map_err(|message| Failure { op: at, message })?;
        twin.tally.ops += 1;
    }
    twin.finish().map_err(|message| Failure {
        op: ops.len(),
        message,
    })?;
    Ok(twin.tally)
}

/// Does the kernel keep bytes written past EOF through a shared mapping when
/// the file grows over them? (tmpfs on Linux 6.18 does; ext4 with blocks
/// smaller than a page zeroes them.)
pub fn kernel_keeps_tail(dir: &Path) -> bool {
    let path = dir.join("probe-tail");
    let file = open_rw(&path).unwrap();
    file.set_len(1000).unwrap();
    let map = MmapOptions::new().len(4096).map_raw(&file).unwrap();
    copy_in(map.as_mut_ptr(), 1000, &[0xAA; 3096]);
    file.set_len(4096).unwrap();
    let mut tail = vec![0; 3096];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut tail, 1000).unwrap();
    drop(map);
    std::fs::remove_file(&path).unwrap();
    tail.iter().any(|&b| b != 0)
}

struct Kernel {
    file: File,
    map: MmapRaw,
}

struct Twin<'a> {
    setup: &'a Setup,
    page: u64,
    mk_path: PathBuf,
    mk: Option<Mapping>,
    kernel_path: PathBuf,
    kernel: Option<Kernel>,
    /// The file as DESIGN says it must be: `[0, EOF)`.
    shadow: Vec<u8>,
    /// Bytes where the kernel exposed a polluted tail (see `Setup`).
    unjudged: Vec<bool>,
    tally: Tally,
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn copy_in(base: *mut u8, offset: u64, bytes: &[u8]) {
    // SAFETY: callers keep `offset + len` inside the mapping and inside the
    // pages that hold the file (below EOF rounded up to a page), so the
    // memory is mapped and no access raises SIGBUS; no reference to it exists.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(offset as usize), bytes.len()) }
}

fn copy_out(base: *const u8, offset: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0; len as usize];
    // SAFETY: as in `copy_in`; callers read below EOF only.
    unsafe { std::ptr::copy_nonoverlapping(base.add(offset as usize), out.as_mut_ptr(), out.len()) }
    out
}

fn failed<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl<'a> Twin<'a> {
    fn new(setup: &'a Setup) -> Result<Twin<'a>, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut twin = Twin {
            setup,
            page: 0,
            mk_path: setup.dir.join(format!("mkwrite-{n}")),
            mk: None,
            kernel_path: setup.dir.join(format!("kernel-{n}")),
            kernel: None,
            shadow: Vec::new(),
            unjudged: vec![false; CAPACITY as usize],
            tally: Tally::default(),
        };
        twin.open()?;
        Ok(twin)
    }

    fn open(&mut self) -> Result<(), String> {
        let mut options = MappingOptions::new();
        options
            .delivery(self.setup.delivery)
            .userfaultfd_user_mode_only(self.setup.user_mode_only)
            .capacity(CAPACITY)
            .block_size(self.setup.block)
            .create(true);
        if let Some(pages) = self.setup.budget_pages {
            options.budget(&mkwrite::Budget::new(pages * 4096));
        }
        if self.setup.kernel_dirty {
            options.dirty_tracking(mkwrite::DirtyTracking::Kernel);
        }
        let mk = options
            .open(&self.mk_path)
            .map_err(|e| format!("open mkwrite: {e}"))?;
        if self.setup.user_mode_only && mk.userfaultfd_origin() != mkwrite::UffdOrigin::UserModeOnly {
            return Err(format!(
                "asked for user mode only, got {:?}",
                mk.userfaultfd_origin()
            ));
        }
        self.page = mk.page_size();
        self.mk = Some(mk);
        let file = open_rw(&self.kernel_path).map_err(|e| format!("open twin: {e}"))?;
        let map = MmapOptions::new()
            .len(CAPACITY as usize)
            .map_raw(&file)
            .map_err(|e| format!("mmap twin: {e}"))?;
        self.kernel = Some(Kernel { file, map });
        Ok(())
    }

    fn mk(&self) -> &Mapping {
        self.mk.as_ref().expect("open between ops")
    }

    fn kernel(&self) -> &Kernel {
        self.kernel.as_ref().expect("open between ops")
    }

    fn eof(&self) -> u64 {
        self.shadow.len() as u64
    }

    fn apply(&mut self, op: Op) -> Result<(), String> {
        let eof = self.eof();
        let Some(op) = op.clipped(eof, self.page) else {
            return Ok(());
        };
        match op {
            Op::Write {
                offset,
                len,
                seed,
                raw,
            } => {
                self.write_both(offset, &data(seed, offset, len), raw || self.setup.guarded)?;
                let written = model::write(&mut self.shadow, offset, len, seed);
                self.unjudged[written].fill(false);
            }
            Op::Read { offset, len, raw } => {
                let mine = if self.setup.guarded {
                    let mut buf = vec![0; len as usize];
                    // SAFETY: as in `copy_out`; the guard is installed by `run`.
                    unsafe { mkwrite::guarded::load(self.mk().as_ptr().add(offset as usize), &mut buf) }
                        .map_err(failed("peek"))?;
                    buf
                } else if raw {
                    copy_out(self.mk().as_ptr(), offset, len)
                } else {
                    let mut buf = vec![0; len as usize];
                    self.mk()
                        .read(offset, &mut buf)
                        .map_err(|e| format!("read: {e}"))?;
                    buf
                };
                self.judge("mkwrite read", offset, &mine, false)?;
                let theirs = copy_out(self.kernel().map.as_ptr(), offset, len);
                self.judge("kernel read", offset, &theirs, true)?;
                self.tally.reads += 1;
            }
            Op::SetLen { len, seed } => {
                self.pollute_tail(seed)?;
                self.mk().set_len(len).map_err(|e| format!("set_len: {e}"))?;
                self.kernel()
                    .file
                    .set_len(len)
                    .map_err(|e| format!("twin set_len: {e}"))?;
                self.resize_shadow(len);
            }
            Op::Punch { offset, len } => {
                self.mk().punch_hole(offset, len).map_err(failed("punch_hole"))?;
                let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                self.kernel_fallocate(punch, offset, len)?;
                let zeroed = model::punch(&mut self.shadow, offset, len);
                self.unjudged[zeroed].fill(false);
            }
            Op::Reserve { offset, len } => {
                self.mk()
                    .reserve(offset, len)
                    .map_err(|e| format!("reserve: {e}"))?;
                self.kernel_fallocate(FallocateFlags::FALLOC_FL_KEEP_SIZE, offset, len)?;
            }
            Op::Flush => {
                self.mk().flush().map_err(failed("flush"))?;
                let kernel = self.kernel();
                kernel.map.flush().map_err(|e| format!("twin msync: {e}"))?;
                kernel.file.sync_data().map_err(|e| format!("twin fsync: {e}"))?;
                self.judge_files(0, eof)?;
            }
            Op::FlushRange { offset, len } => {
                self.mk()
                    .flush_range(offset, len)
                    .map_err(failed("flush_range"))?;
                let (start, end) = (offset.min(eof), (offset + len).min(eof));
                self.judge_files(start, end)?;
            }
            Op::Evict if self.setup.kernel_dirty => match self.mk().evict() {
                Err(mkwrite::Error::NotWithKernelDirtyTracking(_)) => {}
                other => return Err(format!("evict under kernel dirty tracking: {other:?}")),
            },
            Op::Evict => self.mk().evict().map_err(failed("evict"))?,
            Op::Reopen => {
                let mk = self.mk.take().expect("open between ops");
                self.tally.faults_in_thread += mk.stats().faults_in_thread;
                self.tally.pages_evicted += mk.stats().pages_evicted;
                mk.close().map_err(failed("close"))?;
                self.kernel = None;
                self.open()?;
                self.judge_files(0, eof)?;
            }
        }
        Ok(())
    }

    /// fsx's `-e`: scribble over the EOF page past EOF, in both runs, just
    /// before the size changes. DESIGN rule 5 says none of it may surface.
    /// Half the seeds leave the tail clean: the case with nothing to zero.
    fn pollute_tail(&mut self, seed: u8) -> Result<(), String> {
        if seed.is_multiple_of(2) {
            return Ok(());
        }
        let eof = self.eof();
        let Some((offset, len)) = clip(eof, self.page, eof.next_multiple_of(self.page)) else {
            return Ok(());
        };
        self.write_both(offset, &data(seed ^ 0x5A, offset, len), seed % 4 == 1)
    }

    fn write_both(&self, offset: u64, bytes: &[u8], raw: bool) -> Result<(), String> {
        if self.setup.guarded {
            // SAFETY: as in `copy_in`; the guard is installed by `run`.
            unsafe { mkwrite::guarded::store(self.mk().as_ptr().add(offset as usize), bytes) }
                .map_err(failed("poke"))?;
        } else if raw {
            copy_in(self.mk().as_ptr(), offset, bytes);
        } else {
            self.mk()
                .write(offset, bytes)
                .map_err(|e| format!("write: {e}"))?;
        }
        copy_in(self.kernel().map.as_mut_ptr(), offset, bytes);
        Ok(())
    }

    fn kernel_fallocate(&self, mode: FallocateFlags, offset: u64, len: u64) -> Result<(), String> {
        fallocate(self.kernel().file.as_fd(), mode, offset as i64, len as i64)
            .map_err(|e| format!("twin fallocate({mode:?}): {e}"))
    }

    fn resize_shadow(&mut self, len: u64) {
        let old = self.eof();
        if len > old && self.setup.kernel_keeps_tail {
            let exposed = old..len.min(old.next_multiple_of(self.page));
            self.unjudged[exposed.start as usize..exposed.end as usize].fill(true);
        }
        if len < old {
            self.unjudged[len as usize..].fill(false);
        }
        self.shadow.resize(len as usize, 0);
    }

    /// Compares `actual`, found at `offset`, with the shadow. The kernel is
    /// not asked about bytes where it kept a polluted tail.
    fn judge(&mut self, what: &str, offset: u64, actual: &[u8], kernel: bool) -> Result<(), String> {
        let start = offset as usize;
        let expected = &self.shadow[start..start + actual.len()];
        let skip = |i: usize| kernel && self.unjudged[start + i];
        let mut differ = (0..actual.len()).filter(|&i| actual[i] != expected[i] && !skip(i));
        if let Some(first) = differ.next() {
            let count = 1 + differ.count();
            return Err(format!(
                "{what}: {count} of the bytes in [{offset}, {}) differ from the shadow; \
                 first at {}: expected {:#04x}, found {:#04x} (block {}, page {}, EOF {})",
                offset + actual.len() as u64,
                offset + first as u64,
                expected[first],
                actual[first],
                self.setup.block,
                self.page,
                self.eof(),
            ));
        }
        if kernel {
            self.tally.kernel_unjudged += (0..actual.len()).filter(|&i| skip(i)).count() as u64;
        }
        Ok(())
    }

    /// Both files' lengths, and their bytes in `[start, end)`, against the shadow.
    fn judge_files(&mut self, start: u64, end: u64) -> Result<(), String> {
        for (what, path, kernel) in [
            ("mkwrite file", self.mk_path.clone(), false),
            ("kernel file", self.kernel_path.clone(), true),
        ] {
            let bytes = std::fs::read(&path).map_err(|e| format!("read {what}: {e}"))?;
            if bytes.len() as u64 != self.eof() {
                return Err(format!(
                    "{what}: length {} but EOF is {}",
                    bytes.len(),
                    self.eof()
                ));
            }
            self.judge(what, start, &bytes[start as usize..end as usize], kernel)?;
        }
        self.tally.file_compares += 1;
        Ok(())
    }

    fn check_state(&self) -> Result<(), String> {
        let len = self.mk().len();
        if len != self.eof() {
            return Err(format!("mkwrite says EOF is {len}, the shadow {}", self.eof()));
        }
        self.mk().check_invariants()
    }

    /// A last full read of both mappings, a flush and a compare of the files.
    fn finish(&mut self) -> Result<(), String> {
        self.apply(Op::Read {
            offset: 0,
            len: self.eof(),
            raw: true,
        })?;
        self.apply(Op::Reopen)
    }
}

impl Drop for Twin<'_> {
    fn drop(&mut self) {
        // Files of a failing run go too: the op log, not the files, replays it.
        drop(self.mk.take());
        drop(self.kernel.take());
        let _ = std::fs::remove_file(&self.mk_path);
        let _ = std::fs::remove_file(&self.kernel_path);
    }
}
