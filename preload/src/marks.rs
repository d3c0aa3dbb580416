//! Lock-free filters that let every interposed call on something mkwrite
//! does not manage (nearly all of them, and all of mkwrite's own) go
//! straight to the C library without taking a lock: a bit per descriptor,
//! and a slot per managed file with its inode and address range.
//!
//! They are set under the table's lock before the program can see what
//! they describe (an address returned by `mmap`, a descriptor returned by
//! `open`), and the table decides: a stale "yes" only sends a call to the
//! table, which then forwards it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Descriptors at or above this are never managed (`mmap` of one is left
/// to the kernel, with a message).
pub(crate) const FD_LIMIT: i32 = 1 << 16;

/// Files managed at once; beyond this a mapping is left to the kernel.
pub(crate) const SLOTS: usize = 256;

static FDS: [AtomicU64; FD_LIMIT as usize / 64] = [const { AtomicU64::new(0) }; FD_LIMIT as usize / 64];

struct Slot {
    dev: AtomicU64,
    ino: AtomicU64,
    start: AtomicUsize,
    end: AtomicUsize,
}

static FILES: [Slot; SLOTS] = [const {
    Slot {
        dev: AtomicU64::new(0),
        ino: AtomicU64::new(0),
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
    }
}; SLOTS];

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Whether `fd` may be managed.
pub(crate) fn fd_marked(fd: i32) -> bool {
    (0..FD_LIMIT).contains(&fd) && FDS[fd as usize / 64].load(Ordering::Acquire) & (1 << (fd % 64)) != 0
}

/// Marks or unmarks `fd` (the table's lock held).
pub(crate) fn mark_fd(fd: i32, yes: bool) {
    if !(0..FD_LIMIT).contains(&fd) {
        return;
    }
    let bit = 1 << (fd % 64);
    if yes {
        FDS[fd as usize / 64].fetch_or(bit, Ordering::AcqRel);
    } else {
        FDS[fd as usize / 64].fetch_and(!bit, Ordering::AcqRel);
    }
}

/// Whether any file is managed now.
pub(crate) fn any_live() -> bool {
    LIVE.load(Ordering::Acquire) != 0
}

fn live_slots() -> impl Iterator<Item = &'static Slot> {
    let any = any_live();
    FILES
        .iter()
        .filter(move |s| any && s.end.load(Ordering::Acquire) != 0)
}

/// Whether `[addr, addr + len)` may touch a managed file's memory.
pub(crate) fn overlaps(addr: usize, len: usize) -> bool {
    let end = addr.saturating_add(len.max(1));
    live_slots().any(|s| s.start.load(Ordering::Acquire) < end && addr < s.end.load(Ordering::Acquire))
}

/// Whether the file `(dev, ino)` may be managed.
pub(crate) fn holds_inode(dev: u64, ino: u64) -> bool {
    live_slots().any(|s| s.dev.load(Ordering::Acquire) == dev && s.ino.load(Ordering::Acquire) == ino)
}

/// Publishes a file about to be managed (the table's lock held): its
/// inode now, its memory by [`publish_range`]. `None` if all slots are
/// taken.
pub(crate) fn claim_slot(dev: u64, ino: u64) -> Option<usize> {
    let at = FILES.iter().position(|s| s.end.load(Ordering::Acquire) == 0)?;
    let slot = &FILES[at];
    slot.dev.store(dev, Ordering::Release);
    slot.ino.store(ino, Ordering::Release);
    // A placeholder range (live, covering nothing the program maps).
    slot.start.store(0, Ordering::Release);
    slot.end.store(1, Ordering::Release);
    LIVE.fetch_add(1, Ordering::AcqRel);
    Some(at)
}

/// Publishes the memory of the file in slot `at` (the table's lock held).
pub(crate) fn publish_range(at: usize, start: usize, end: usize) {
    FILES[at].start.store(start, Ordering::Release);
    FILES[at].end.store(end, Ordering::Release);
}

/// Withdraws a managed file (the table's lock held).
pub(crate) fn free_slot(at: usize) {
    FILES[at].end.store(0, Ordering::Release);
    LIVE.fetch_sub(1, Ordering::AcqRel);
}

/// Forgets everything (a forked child, whose parent's mappings are gone).
pub(crate) fn clear_all() {
    FDS.iter().for_each(|w| w.store(0, Ordering::Release));
    FILES.iter().for_each(|s| s.end.store(0, Ordering::Release));
    LIVE.store(0, Ordering::Release);
}
