//! The state one mapping shares between its API and its fault handler, and the
//! page primitives both use. Every primitive takes `&mut Flags` — the guard of
//! the flags lock — so it can only run with the lock held; the one exception,
//! [`Engine::fill`], runs without it under a fill claim (`claims.rs`).
//!
//! Lock order: `layout` (read or write) before `flags`. The fault handler only
//! ever takes `flags`, and nobody touches a missing or write-protected page of
//! the mapping while holding `flags` (DESIGN rule 7).

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::ahead::{MAX_FILL_PAGES, Streams};
use crate::error::{Error, Result};
use crate::fence::Fences;
use crate::flags::{Flags, Residency};
use crate::geometry::Geometry;
use crate::handler::Waiting;
use crate::handoff::Handoffs;
use crate::options::OnFull;
use crate::page_state::PageStates;
use crate::service::Service;
use crate::stats::{Counters, Timer};
use crate::store::{SignalSafe, Store};
use crate::sys::{self, FillBuffers, Region, Uffd, ZeroedWords};

/// Fields drop in declaration order, which is the teardown order after the
/// service has let go of the mapping and its range is unregistered: unmap
/// the region, let go of the service, close the store.
pub(crate) struct Engine {
    pub region: Region,
    /// The fault service whose userfaultfd guards the region.
    pub service: Arc<Service>,
    pub store: Box<dyn Store>,
    pub geo: Geometry,
    /// Per-page and per-block flags and EOF.
    pub flags: Mutex<Flags>,
    /// The pages' states, written under the flags lock, read without it
    /// (`page_state.rs`); the same as the flags'.
    pub page_states: Arc<PageStates>,
    /// EOF as of the last change, readable without the flags lock (a forked
    /// child may find that lock held by a parent thread that does not exist there).
    pub eof: AtomicU64,
    /// Pages made inaccessible for a moment so that a system call's access
    /// to them fails with `EFAULT` (taken after `flags`).
    pub fences: Mutex<Fences>,
    /// The process that opened the mapping; calls from any other (a forked
    /// child) get [`Error::Forked`].
    pub owner: u32,
    /// Nothing may be written: the memory is read-only and so is the store.
    pub read_only: bool,
    /// The kernel tracks writes to resident pages (`kernel_dirty.rs`): no
    /// page is resident without its blocks, and a flush scans for writes.
    pub kernel_dirty: bool,
    /// Sequential readers and writers, to work ahead of them (taken after `flags`).
    pub streams: Mutex<Streams>,
    /// The buffers fills read into, one per fill in flight: room for the
    /// largest fill each, allocated at open (a signal handler may fill and
    /// must not allocate), in memory only once used.
    pub fill_buffers: FillBuffers,
    /// Held shared by operations that must see a stable layout (checked copies,
    /// flushes), exclusively by those that change it (size changes, holes, eviction).
    pub layout: RwLock<()>,
    /// Serializes flushes.
    pub flush_lock: Mutex<()>,
    pub counters: Counters,
    pub on_full: OnFull,
    /// The budget the mapping counts against, if any.
    pub budget: Option<Arc<crate::budget::Shared>>,
    /// Where the eviction clock's hand is (taken after `flags`).
    pub clock_hand: Mutex<u64>,
    /// The pages evicted lately, oldest first (taken after `flags`).
    pub ghosts: Mutex<std::collections::VecDeque<u64>>,
    /// Set (then the service's doorbell rung) when the service should look
    /// at this mapping: faults parked for space may retry, or a signal
    /// handler handed a fault over.
    pub attention: AtomicBool,
    /// Set while the service does not serve the mapping (closing, regrowing).
    pub stopping: AtomicBool,
    /// Held shared by each worker of the service serving this mapping
    /// (several may at once), exclusively to stop serving it.
    pub serving: RwLock<()>,
    /// Its faults waiting for space, a writeback or their retry time.
    pub waiting: Mutex<Waiting>,
    /// Sticky: set when serving the mapping failed; every later call reports it.
    pub handler_failure: Mutex<Option<String>>,
    /// Set with `handler_failure`, readable in a signal handler.
    pub failed: AtomicBool,
    /// Allocation and fill claims ending (`claims.rs`), for faults waiting on them.
    pub claim_events: crate::claims::ClaimEvents,
    /// Faults handed from a faulting thread's signal handler to the fault service.
    pub handoffs: Handoffs,
    /// The error behind the latest SIGBUS, for a signal handler to inspect.
    pub last_fault_error: Mutex<Option<String>>,
}

/// What a page needs before it serves an access.
pub(crate) enum Ready {
    /// Nothing more.
    Done(Resolved),
    /// A fill, which the caller carries out with the flags lock released
    /// (`claims.rs`): [`Engine::fill`], then [`Engine::filled`].
    Fill(FillPlan),
}

/// A fill decided under the flags lock.
#[derive(Debug, Clone)]
pub(crate) struct FillPlan {
    /// The page whose fault asked for the fill.
    fault: u64,
    /// The pages to fill, absent, below EOF.
    pub pages: Range<u64>,
    /// Installed writable and dirty (their blocks held), or protected and clean.
    pub writable: bool,
    /// They read as zeros: nothing to read, no buffer needed.
    pub zeros: bool,
    /// EOF when planned; it does not move while a fill is claimed.
    eof: u64,
    /// The stream that learns where the fill ended, if any.
    stream: Option<FillStream>,
}

/// Which of [`Streams`]' detectors, and which stream of it, a fill continues.
#[derive(Debug, Clone, Copy)]
enum FillStream {
    Read(usize),
    WriteFill(usize),
}

/// What a fault or a checked access needs from a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// What [`Engine::resolve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The page already allowed the access; a waiting thread only needs waking.
    AlreadyReady,
    /// Filled from the store, write-protected.
    FilledForRead,
    /// Blocks allocated, filled from the store, writable and dirty.
    FilledForWrite,
    /// Blocks allocated, write protection lifted, dirty.
    Unprotected,
}

/// Why a page could not be made ready.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No byte of the page lies below EOF.
    PastEof,
    /// Allocation failed: no space or quota (the mapping's policy decides).
    Full(Error),
    /// The store or the kernel failed otherwise.
    Io(io::Error),
    /// A signal-safe store call failed (with this errno): the fault goes to
    /// the fault service, which calls the store again for the full error.
    HandOff(i32),
    /// A write to a page a flush is writing from memory, where the resolver
    /// must not wait for it: the fault service parks the fault until the
    /// flush is done with the page (`claims.rs`, [`Writeback`](crate::claims::Writeback)).
    InWriteback,
}

/// Which of the store's calls a fault uses: the ordinary ones (the handler
/// thread, checked calls) or the signal-safe ones (inside a SIGBUS handler,
/// where every failure is handed to the fault service).
#[derive(Clone, Copy)]
pub(crate) enum StoreCalls<'a> {
    Ordinary,
    InSignal(&'a dyn SignalSafe),
}

impl Failure {
    /// The error a caller sees; `past_eof` builds the one for a page past EOF,
    /// which only the caller can describe.
    pub fn into_error(self, past_eof: impl FnOnce() -> Error) -> Error {
        match self {
            Failure::PastEof => past_eof(),
            Failure::Full(e) => e,
            Failure::Io(e) => Error::from(e),
            Failure::HandOff(errno) => Error::from(io::Error::from_raw_os_error(errno)),
            Failure::InWriteback => Error::from(io::Error::from_raw_os_error(libc::EBUSY)),
        }
    }

    /// As an `io::Error`, for callers that report only those.
    pub fn into_io(self) -> io::Error {
        match self {
            Failure::Io(e) => e,
            Failure::HandOff(errno) => io::Error::from_raw_os_error(errno),
            Failure::InWriteback => io::Error::from_raw_os_error(libc::EBUSY),
            Failure::Full(e) => io::Error::from(e),
            Failure::PastEof => io::Error::from_raw_os_error(libc::EFAULT),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

/// Zeros for fills of pages that read as zeros: never written, so they
/// cost no memory (the kernel's zero page backs them). Set up by
/// [`init_zero_pages`] before any mapping exists; read in signal handlers.
static ZERO_PAGES: OnceLock<ZeroedWords> = OnceLock::new();

/// Sets up the zeros of the largest fill; called at every open.
pub(crate) fn init_zero_pages() -> io::Result<()> {
    if ZERO_PAGES.get().is_none() {
        let words = (MAX_FILL_PAGES * sys::page_size()).div_ceil(8) as usize;
        let _ = ZERO_PAGES.set(ZeroedWords::new(words)?);
    }
    Ok(())
}

/// The fill buffers for a mapping over `geo`: room for its largest fill each.
pub(crate) fn fill_buffers_for(geo: &Geometry) -> io::Result<FillBuffers> {
    let fill_pages = MAX_FILL_PAGES.min(geo.pages());
    FillBuffers::new(crate::claims::FILLS as u32, (fill_pages * geo.page) as usize)
}

fn zero_pages() -> &'static [u8] {
    ZERO_PAGES.get().expect("set up at open").bytes()
}

pub(crate) fn relock<G>(r: Result<G, std::sync::PoisonError<G>>) -> G {
    // A panic under these locks can only come from a bug that already broke
    // an assertion; the flags stay structurally valid, so keep serving.
    r.unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    pub fn lock_flags(&self) -> MutexGuard<'_, Flags> {
        relock(self.flags.lock())
    }

    pub fn lock_waiting(&self) -> MutexGuard<'_, Waiting> {
        relock(self.waiting.lock())
    }

    /// The userfaultfd guarding the region (the service's).
    pub fn uffd(&self) -> &Uffd {
        &self.service.uffd
    }

    /// Asks the service to look at this mapping. Async-signal-safe: an
    /// atomic store and the doorbell's `write(2)`.
    pub fn ring(&self) {
        self.attention.store(true, Ordering::SeqCst);
        self.service.ring();
    }

    pub fn lock_fences(&self) -> MutexGuard<'_, Fences> {
        relock(self.fences.lock())
    }

    /// Fails with [`Error::Forked`] in a process other than the one that
    /// opened the mapping, which must touch nothing of it.
    pub fn check_owner(&self) -> Result<()> {
        let pid = sys::process_id();
        if pid == self.owner {
            Ok(())
        } else {
            Err(Error::Forked {
                owner: self.owner,
                pid,
            })
        }
    }

    /// Fails with [`Error::ReadOnlyMapping`] for a read-only mapping.
    pub fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnlyMapping)
        } else {
            Ok(())
        }
    }

    /// Moves EOF in the flags and in the lock-free copy.
    pub fn set_eof(&self, flags: &mut Flags, eof: u64) {
        flags.set_eof(eof);
        self.eof.store(eof, Ordering::Release);
    }

    pub fn layout_shared(&self) -> RwLockReadGuard<'_, ()> {
        relock(self.layout.read())
    }

    pub fn layout_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        relock(self.layout.write())
    }

    /// The layout lock held exclusively, if nobody holds it now.
    pub fn try_layout_exclusive(&self) -> Option<RwLockWriteGuard<'_, ()>> {
        match self.layout.try_write() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Makes room in the mapping's budget, if it has one and is over it.
    pub fn make_room(&self) -> Result<()> {
        match &self.budget {
            Some(budget) => budget.make_room(),
            None => Ok(()),
        }
    }

    pub fn flush_serial(&self) -> MutexGuard<'_, ()> {
        relock(self.flush_lock.lock())
    }

    /// The flush lock, if no flush runs now.
    pub fn try_flush_serial(&self) -> Option<MutexGuard<'_, ()>> {
        match self.flush_lock.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The layout lock held shared, if that needs no wait.
    pub fn try_layout_shared(&self) -> Option<RwLockReadGuard<'_, ()>> {
        match self.layout.try_read() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn addr(&self, page: u64) -> u64 {
        self.region.base() + page * self.geo.page
    }

    pub fn page_offset(&self, page: u64) -> usize {
        (page * self.geo.page) as usize
    }

    /// DESIGN rule 2: decides what makes `page` ready for `access`,
    /// allocating its blocks before it may be written (rule 1), and does it
    /// but for a fill, which it plans for the caller to carry out. The one
    /// place faults are decided; `claims.rs` drives it. `write_ahead`: ahead
    /// of a sequential writer the next pages are made writable too (faults);
    /// otherwise only the pages asked for, so exactly they are dirty
    /// (checked calls).
    pub fn resolve_under(
        &self,
        flags: &mut Flags,
        page: u64,
        access: Access,
        calls: StoreCalls<'_>,
        write_ahead: bool,
    ) -> Result<Ready, Failure> {
        if flags.past_eof(page) {
            return Err(Failure::PastEof);
        }
        let ready = self.make_ready(flags, page, access, calls, write_ahead)?;
        if matches!(ready, Ready::Done(_)) {
            // The page serves this access now; a fence left by an earlier failure
            // must not fail it (nor crash a checked copy into it).
            self.lift_fence(page)?;
        }
        Ok(ready)
    }

    fn make_ready(
        &self,
        flags: &mut Flags,
        page: u64,
        access: Access,
        calls: StoreCalls<'_>,
        write_ahead: bool,
    ) -> Result<Ready, Failure> {
        match (flags.residency(page), access) {
            (Residency::Absent, Access::Read) => {
                if self.kernel_dirty {
                    // Nothing will stop a write once the page is in (`kernel_dirty.rs`).
                    self.allocate_own(flags, page, calls)?;
                }
                let (ahead, around, stream) = {
                    let mut streams = relock(self.streams.lock());
                    let ahead = streams.read_fault(page);
                    (
                        ahead,
                        streams.around(page),
                        FillStream::Read(streams.read.current()),
                    )
                };
                let sequential = ahead > 0;
                let (first, ahead) = match sequential {
                    true => (page, ahead),
                    false => self.around(flags, page, around),
                };
                Ok(Ready::Fill(self.plan_fill(
                    flags,
                    page,
                    first,
                    ahead,
                    false,
                    Some(stream),
                )))
            }
            (Residency::Absent, Access::Write) => {
                self.allocate_under(flags, page, calls)?;
                let (ahead, stream) = match write_ahead {
                    true => {
                        let mut streams = relock(self.streams.lock());
                        let ahead = streams.write_fill_fault(page);
                        (ahead, Some(FillStream::WriteFill(streams.write_fill.current())))
                    }
                    false => (0, None),
                };
                Ok(Ready::Fill(
                    self.plan_fill(flags, page, page, ahead, true, stream),
                ))
            }
            (Residency::Protected, Access::Write) => {
                self.allocate_under(flags, page, calls)?;
                self.ioctl(|| self.uffd().write_protect(self.addr(page), self.geo.page, false))?;
                flags.granted_write(page);
                Ok(Ready::Done(Resolved::Unprotected))
            }
            (Residency::Protected, Access::Read) | (Residency::Writable, _) => {
                Ok(Ready::Done(Resolved::AlreadyReady))
            }
        }
    }

    /// Allocates the blocks of `page` below EOF that it lacks, alone.
    fn allocate_own(&self, flags: &mut Flags, page: u64, calls: StoreCalls<'_>) -> Result<(), Failure> {
        match flags.missing_blocks(page) {
            Some(own) => self.allocate_with(flags, own, calls),
            None => Ok(()),
        }
    }

    /// Allocates the blocks a write to `page` needs; nothing is marked on
    /// failure. Ahead of a sequential writer it first tries to allocate the
    /// next pages' blocks in the same call; if the store cannot, only this
    /// page's blocks are asked for, so working ahead never fails a write.
    fn allocate_under(&self, flags: &mut Flags, page: u64, calls: StoreCalls<'_>) -> Result<(), Failure> {
        let Some(own) = flags.missing_blocks(page) else {
            return Ok(());
        };
        let span = self.allocation_ahead(flags, page, own.clone());
        match self.allocate_with(flags, span.clone(), calls) {
            // As in a fault's claim (`claims.rs`): one call for the span; if
            // the blocks ahead cannot be had, the page's own are asked for alone.
            Err(_) if span != own => self.allocate_with(flags, own, calls),
            done => done,
        }
    }

    /// The blocks a write fault at `page` asks for: its `own` missing ones,
    /// and ahead of a sequential writer those of the next pages, never past
    /// EOF (a block wholly past it must stay unallocated); the span ends at
    /// a block not yet allocated.
    pub fn allocation_ahead(&self, flags: &Flags, page: u64, own: Range<u64>) -> Range<u64> {
        let mut streams = relock(self.streams.lock());
        let ahead = streams.write_fault(page);
        let span = if ahead == 0 {
            own
        } else {
            let eof_blocks = flags.eof().div_ceil(self.geo.block);
            let end = self
                .geo
                .blocks_backing(page + ahead, flags.eof())
                .end
                .min(eof_blocks)
                .max(own.end);
            let last = (own.end..end)
                .rev()
                .find(|&b| !flags.is_allocated(b))
                .map_or(own.end, |b| b + 1);
            own.start..last
        };
        // The writer's next allocating fault is where the span ends (with
        // blocks larger than a page, past the window's pages).
        let next = (span.end * self.geo.block / self.geo.page).max(page + 1);
        streams.write.filled(page, next - page);
        span
    }

    /// Plans the fill of the absent `first` page (for a fault at `fault`),
    /// and of up to `ahead` absent pages after it below EOF, with one store
    /// read and one copy: protected and clean, or (`writable`) writable and
    /// dirty, ahead only over pages whose blocks are all allocated (rule 1).
    /// Pages that read as zeros in a store that says so are not read at all.
    fn plan_fill(
        &self,
        flags: &Flags,
        fault: u64,
        first: u64,
        ahead: u64,
        writable: bool,
        stream: Option<FillStream>,
    ) -> FillPlan {
        let count = 1
            + (1..=ahead)
                .take_while(|&i| self.fillable(flags, first + i, writable))
                .count() as u64;
        let pages = first..first + count;
        FillPlan {
            fault,
            zeros: self.store.unallocated_reads_zero() && pages.clone().all(|p| flags.reads_as_zeros(p)),
            pages,
            writable,
            eof: flags.eof(),
            stream,
        }
    }

    /// Carries out `plan` without the flags lock (the plan's claim keeps
    /// every other fill and every layout change off its pages): reads them
    /// into `buffer` (`None` for a plan whose pages read as zeros) and
    /// installs them. Returns how many went in: all, or those before a
    /// page that turned out to be present (a bookkeeping slip).
    pub fn fill(
        &self,
        plan: &FillPlan,
        buffer: Option<&mut [u8]>,
        calls: StoreCalls<'_>,
    ) -> Result<u64, Failure> {
        let (first, count) = (plan.pages.start, plan.pages.end - plan.pages.start);
        let len = (count * self.geo.page) as usize;
        let buf: &[u8] = match buffer {
            Some(buffer) => {
                // Every byte is overwritten: read, or zeroed past EOF.
                let buf = &mut buffer[..len];
                self.read_pages(plan.eof, first, buf, calls)?;
                buf
            }
            None => &zero_pages()[..len],
        };
        // Waiters wake once the flags say what went in ([`Engine::woken`]):
        // a thread that faulted here may look at them next (`stats`, `flush`).
        match self.install_counted(first, buf, plan.writable, false) {
            Ok(()) => Ok(count),
            // Some page was not what the flags said: the pages before it
            // went in and count as the fill (dropping them could lose a
            // write the kernel let through). The faulting page may not be
            // among them (a fill around it starts lower): wake its thread,
            // which faults again if it is still missing.
            Err((done, _)) if done >= self.geo.page => {
                let _ = self.wake(plan.fault);
                Ok(done / self.geo.page)
            }
            Err((_, e)) => Err(e.into()),
        }
    }

    /// Wakes the threads waiting in the kernel for the first `count` pages
    /// of `plan` (none wait where faults raise SIGBUS instead).
    pub fn woken(&self, plan: &FillPlan, count: u64) -> io::Result<()> {
        match self.uffd().raises_sigbus() || count == 0 {
            true => Ok(()),
            false => self.ioctl(|| {
                self.uffd()
                    .wake(self.addr(plan.pages.start), count * self.geo.page)
            }),
        }
    }

    /// Records the first `count` pages of `plan` as filled, under the flags
    /// lock again, and tells the stream where the fill ended.
    pub fn filled(&self, flags: &mut Flags, plan: &FillPlan, count: u64) -> Result<Resolved, Failure> {
        let first = plan.pages.start;
        for p in first..first + count {
            match plan.writable {
                true => flags.granted_write(p),
                false => flags.filled_for_read(p),
            }
        }
        // A reader or writer going on from where the fill ended (around, or
        // short of the window: at a page whose blocks are not held yet) is
        // sequential.
        match plan.stream {
            Some(FillStream::Read(i)) => relock(self.streams.lock()).read.filled_in(i, first, count),
            Some(FillStream::WriteFill(i)) => {
                relock(self.streams.lock()).write_fill.filled_in(i, first, count)
            }
            None => {}
        }
        self.lift_fence(plan.fault)?;
        Ok(match plan.writable {
            true => Resolved::FilledForWrite,
            false => Resolved::FilledForRead,
        })
    }

    /// Whether the fill of a fault may take page `p` along: absent, below
    /// EOF, neither poisoned, fenced nor being filled; for writing (or at
    /// all, when the kernel tracks writes) its blocks held; for writing, no
    /// flush writing it (it vanished in writeback).
    fn fillable(&self, flags: &Flags, p: u64, writable: bool) -> bool {
        p < self.geo.pages()
            && !flags.past_eof(p)
            && flags.residency(p) == Residency::Absent
            && !flags.is_poisoned(p)
            && !flags.filling(p)
            && !self.is_fenced(p)
            && (!(writable || self.kernel_dirty) || flags.missing_blocks(p).is_none())
            && (!writable || !flags.in_writeback(p))
    }

    /// The run of fillable pages within `group` holding `page`, for a read
    /// fault that is not sequential: its first page, and how many follow.
    fn around(&self, flags: &Flags, page: u64, group: Range<u64>) -> (u64, u64) {
        if !self.fillable(flags, page, false) {
            return (page, 0);
        }
        let mut first = page;
        while first > group.start && self.fillable(flags, first - 1, false) {
            first -= 1;
        }
        (first, group.end.saturating_sub(first + 1))
    }

    pub fn allocate(&self, flags: &mut Flags, blocks: Range<u64>) -> Result<(), Failure> {
        self.allocate_with(flags, blocks, StoreCalls::Ordinary)
    }

    fn allocate_with(
        &self,
        flags: &mut Flags,
        blocks: Range<u64>,
        calls: StoreCalls<'_>,
    ) -> Result<(), Failure> {
        let allocated = self.store_allocate(blocks.clone(), calls);
        self.allocated(flags, blocks, allocated, calls)
    }

    /// The store's allocation of `blocks`, timed; no flag changes.
    pub fn store_allocate(&self, blocks: Range<u64>, calls: StoreCalls<'_>) -> io::Result<()> {
        self.counters.timed(Timer::StoreAllocate, || match calls {
            StoreCalls::Ordinary => self.store.allocate(blocks.clone()),
            StoreCalls::InSignal(store) => store
                .allocate_in_signal(blocks.clone())
                .map_err(io::Error::from_raw_os_error),
        })
    }

    /// Records the outcome of [`store_allocate`](Self::store_allocate) of `blocks`.
    pub fn allocated(
        &self,
        flags: &mut Flags,
        blocks: Range<u64>,
        outcome: io::Result<()>,
        calls: StoreCalls<'_>,
    ) -> Result<(), Failure> {
        match outcome {
            Ok(()) => {
                // A span may hold blocks allocated already: count the new ones.
                let new = blocks.clone().filter(|&b| !flags.is_allocated(b)).count();
                self.counters.add_blocks(new as u64);
                match self.store.unallocated_reads_zero() {
                    true => flags.mark_allocated_from_holes(blocks),
                    false => flags.mark_allocated(blocks),
                }
                Ok(())
            }
            Err(e) if matches!(calls, StoreCalls::InSignal(_)) => {
                Err(Failure::HandOff(e.raw_os_error().unwrap_or(libc::EIO)))
            }
            Err(e) => {
                self.counters.allocation_failed();
                // Only no-space and quota are "full": more space cures them,
                // so only they may wait for it. Anything else is a failure.
                match Error::from_allocation(e) {
                    full if full.is_full() => Err(Failure::Full(full)),
                    other => Err(Failure::Io(io::Error::from(other))),
                }
            }
        }
    }

    /// The kernel reported `page` missing while the flags call it resident:
    /// either the report is stale (someone filled the page since) or the
    /// page was dropped behind the mapping's back (`madvise`). In the second
    /// case the flags learn it, and lost dirty bytes are recorded.
    pub fn reconcile(&self, flags: &mut Flags, page: u64) -> io::Result<()> {
        if flags.residency(page) == Residency::Absent {
            return Ok(());
        }
        if !self.region.is_resident(self.page_offset(page))? {
            self.vanished(flags, page);
        }
        Ok(())
    }

    /// The resident `page` is gone from memory; with the kernel tracking
    /// writes nothing says whether it was written, so it counts as lost.
    pub fn vanished(&self, flags: &mut Flags, page: u64) {
        if self.kernel_dirty {
            flags.redirty(page);
        }
        if flags.is_dirty(page) {
            self.counters.discarded();
        }
        flags.vanished(page);
    }

    /// Fails every later access to the absent `page`, wholly past EOF, as
    /// the kernel fails an access past the end of a mapped file: SIGBUS with
    /// the address for a thread, `EFAULT` inside a system call. The marker
    /// goes when EOF moves over the page ([`Engine::unpoison`]).
    pub fn poison(&self, flags: &mut Flags, page: u64) -> io::Result<()> {
        debug_assert!(flags.past_eof(page));
        match self.ioctl(|| self.uffd().poison(self.addr(page), self.geo.page)) {
            Ok(()) => {
                flags.poisoned(page);
                Ok(())
            }
            // Already poisoned or filled by a racing resolve: let the thread retry.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.wake(page),
            Err(e) => Err(e),
        }
    }

    /// Clears the poison of the pages in `pages`, before EOF moves over them.
    pub fn unpoison(&self, flags: &mut Flags, pages: Range<u64>) -> io::Result<()> {
        for run in crate::store::runs(flags.poisoned_pages(pages)) {
            let len = ((run.end - run.start) * self.geo.page) as usize;
            self.region.discard(self.page_offset(run.start), len)?;
            for p in run {
                flags.unpoisoned(p);
            }
        }
        Ok(())
    }

    /// Reads the pages from `page` that `buf` holds, in one store call;
    /// bytes past EOF read as zeros (DESIGN rule 5).
    fn read_pages(&self, eof: u64, page: u64, buf: &mut [u8], calls: StoreCalls<'_>) -> Result<(), Failure> {
        let start = page * self.geo.page;
        let visible = eof.saturating_sub(start).min(buf.len() as u64) as usize;
        self.counters.timed(Timer::StoreRead, || match calls {
            StoreCalls::Ordinary => self
                .store
                .read_at(start, &mut buf[..visible])
                .map_err(Failure::Io),
            StoreCalls::InSignal(store) => store
                .read_at_in_signal(start, &mut buf[..visible])
                .map_err(Failure::HandOff),
        })?;
        buf[visible..].fill(0);
        Ok(())
    }

    /// Places `data` in the absent `page` (and those after it that `data`
    /// covers) and, if `wake`, wakes their waiters.
    fn install(&self, page: u64, data: &[u8], writable: bool, wake: bool) -> io::Result<()> {
        self.install_counted(page, data, writable, wake)
            .map_err(|(_, e)| e)
    }

    /// [`install`](Self::install), saying on failure how many bytes went in.
    fn install_counted(
        &self,
        page: u64,
        data: &[u8],
        writable: bool,
        wake: bool,
    ) -> Result<(), (u64, io::Error)> {
        // Read-only memory is registered without write-protect, and needs none.
        let protect = !writable && !self.read_only;
        let copied = self.ioctl(|| self.uffd().copy_counted(self.addr(page), data, protect, wake));
        match copied {
            Err((0, e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Flags said absent but the kernel has a page: a bookkeeping
                // bug. Wake the waiters so nobody hangs, and report it.
                let _ = self.uffd().wake(self.addr(page), self.geo.page);
                Err((0, e))
            }
            other => other,
        }
    }

    /// Write-protects the writable pages among `pages` with one call per run.
    pub fn protect(&self, flags: &mut Flags, pages: &[u64]) -> io::Result<()> {
        let writable: Vec<u64> = pages
            .iter()
            .copied()
            .filter(|&p| flags.residency(p) == Residency::Writable)
            .collect();
        for run in crate::store::runs(writable) {
            let len = (run.end - run.start) * self.geo.page;
            self.ioctl(|| self.uffd().write_protect(self.addr(run.start), len, true))?;
            for p in run {
                flags.protected(p);
            }
        }
        Ok(())
    }

    /// Drops resident `pages` from memory; their next touch faults as missing.
    pub fn discard(&self, flags: &mut Flags, pages: &[u64]) -> io::Result<()> {
        for run in crate::store::runs(pages.iter().copied()) {
            let len = ((run.end - run.start) * self.geo.page) as usize;
            self.region.discard(self.page_offset(run.start), len)?;
            for p in run {
                flags.dropped(p);
            }
        }
        Ok(())
    }

    pub fn wake(&self, page: u64) -> io::Result<()> {
        self.ioctl(|| self.uffd().wake(self.addr(page), self.geo.page))
    }

    /// Runs a userfaultfd ioctl, timed for [`Stats::ioctl_time`](crate::Stats::ioctl_time).
    fn ioctl<R>(&self, call: impl FnOnce() -> R) -> R {
        self.counters.timed(Timer::Ioctl, call)
    }

    /// Copies bytes of a page the flags call resident, under the flags lock,
    /// without ever faulting (DESIGN rule 7). If the page is gone from memory
    /// (dropped behind the mapping's back), the flags learn it and this
    /// returns false.
    pub fn copy_resident(
        &self,
        flags: &mut Flags,
        page: u64,
        range: Range<u64>,
        out: &mut [u8],
    ) -> io::Result<bool> {
        debug_assert!(range.end <= self.geo.page);
        let at = self.page_offset(page) + range.start as usize;
        if self.region.read_resident(at, out)? == out.len() {
            return Ok(true);
        }
        self.vanished(flags, page);
        Ok(false)
    }

    /// Edits a page's bytes so that no thread sees or writes it half-way:
    /// protect it, copy it out (or read it from the store if absent), edit the
    /// copy, drop the page and install the copy. Threads touching it meanwhile
    /// fault and wait for the flags lock. `dirty` says whether the edit must
    /// reach the store; a page keeps its writability only if rule 1 still holds.
    pub fn rewrite(
        &self,
        flags: &mut Flags,
        page: u64,
        dirty: bool,
        edit: impl FnOnce(&mut [u8]),
    ) -> io::Result<()> {
        let mut buf = vec![0u8; self.geo.page as usize];
        if flags.residency(page) != Residency::Absent {
            self.protect(flags, &[page])?;
            self.copy_resident(flags, page, 0..self.geo.page, &mut buf)?;
        }
        // Read after the copy: the page may have turned out to be gone.
        let was = flags.residency(page);
        if was == Residency::Absent {
            self.read_pages(flags.eof(), page, &mut buf, StoreCalls::Ordinary)
                .map_err(Failure::into_io)?;
        }
        edit(&mut buf);
        let dirty = dirty || flags.is_dirty(page);
        if was != Residency::Absent {
            self.discard(flags, &[page])?;
        }
        let writable = was == Residency::Writable && dirty && flags.missing_blocks(page).is_none();
        self.install(page, &buf, writable, true)?;
        if writable {
            flags.granted_write(page);
        } else {
            flags.filled_for_read(page);
            if dirty {
                flags.redirty(page);
            }
        }
        Ok(())
    }

    pub fn handler_failure(&self) -> Option<String> {
        relock(self.handler_failure.lock()).clone()
    }

    pub fn set_handler_failure(&self, why: String) {
        self.failed.store(true, Ordering::SeqCst);
        *relock(self.handler_failure.lock()) = Some(why);
    }

    /// Records why an access failed, for [`Mapping::last_fault_error`](crate::Mapping::last_fault_error).
    pub fn record_fault_error(&self, why: String) {
        *relock(self.last_fault_error.lock()) = Some(why);
    }

    pub fn last_fault_error(&self) -> Option<String> {
        relock(self.last_fault_error.lock()).clone()
    }
}
