//! Store I/O of a fault with the flags lock released, so faults on
//! different pages run in parallel: allocations (a `fallocate` costs ~7 µs
//! on ext4) and fills (a store read and the `UFFDIO_COPY` that installs
//! the pages; under the lock every other fault of the mapping waited).
//!
//! Under the flags lock a fault *claims* the block range it will allocate,
//! or the run of pages it will fill; it then drops the lock, calls the
//! store (and installs the pages), takes the lock again, records what it
//! did and releases its claim. A fault needing blocks that overlap an
//! allocation claim, or a page being filled, waits for it (without the
//! lock). Operations that change the layout (`set_len`, `punch_hole`,
//! `evict`) take the flags lock only once no claim is in flight
//! ([`Engine::lock_flags_settled`]) and keep it, so no claim starts under
//! them; what a claim allocates or fills is therefore still below EOF, and
//! still wanted, when it records it. A flush waits for the writable fills
//! in flight when it starts ([`Engine::wait_for_writable_fills`]):
//! their pages may already hold writes it must not miss. With the kernel
//! tracking writes any fill's pages may be written once in memory; a flush
//! whose scan reports such a page waits for its fill to be recorded
//! (`kernel_dirty.rs`).

use std::ops::Range;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;

use crate::engine::{Access, Engine, Failure, FillPlan, Ready, Resolved, StoreCalls};
use crate::flags::{Flags, Residency};
use crate::sync::AtomicU32;
use crate::sys::FillBuffer;

/// Allocations in flight at once per mapping; past them faults allocate
/// under the lock, as before.
const CLAIMS: usize = 8;

/// Fills in flight at once per mapping (each reads into a buffer of its
/// own, [`Engine::fill_buffers`]); past them a fault waits.
pub(crate) const FILLS: usize = 4;

/// A run of pages being filled.
#[derive(Debug, Clone)]
struct Filling {
    pages: Range<u64>,
    /// Installed writable: its pages may be written before they are recorded.
    writable: bool,
    /// Claims are numbered in the order they were taken.
    ticket: u64,
}

/// The block ranges being allocated and the page runs being filled with
/// the lock released. Fixed arrays: a fault in a signal handler claims
/// too, and must not allocate memory.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    slots: [Option<Range<u64>>; CLAIMS],
    fills: [Option<Filling>; FILLS],
    next_ticket: u64,
}

/// What a claim attempt found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Claimed, in this slot.
    Taken(usize),
    /// Another claim overlaps: wait for it.
    Busy,
    /// No free slot (allocations: allocate under the lock; fills: wait).
    Full,
}

fn overlap(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The first free slot of `slots` for a claim on `range`, unless one in use overlaps it.
fn claim_in<T>(slots: &mut [Option<T>], range: &Range<u64>, of: impl Fn(&T) -> &Range<u64>, new: T) -> Claim {
    if slots.iter().flatten().any(|c| overlap(of(c), range)) {
        return Claim::Busy;
    }
    match slots.iter().position(Option::is_none) {
        Some(i) => {
            slots[i] = Some(new);
            Claim::Taken(i)
        }
        None => Claim::Full,
    }
}

impl Claims {
    pub fn claim(&mut self, blocks: Range<u64>) -> Claim {
        claim_in(&mut self.slots, &blocks.clone(), |r| r, blocks)
    }

    pub fn release(&mut self, slot: usize) {
        self.slots[slot] = None;
    }

    /// Claims the run `pages` for a fill (`writable`: installed writable).
    pub fn claim_fill(&mut self, pages: Range<u64>, writable: bool) -> Claim {
        let ticket = self.next_ticket;
        let fill = Filling {
            pages: pages.clone(),
            writable,
            ticket,
        };
        let claim = claim_in(&mut self.fills, &pages, |f| &f.pages, fill);
        if matches!(claim, Claim::Taken(_)) {
            self.next_ticket += 1;
        }
        claim
    }

    pub fn release_fill(&mut self, slot: usize) {
        self.fills[slot] = None;
    }

    /// The pages the fill in `slot` claimed (none if the slot is free).
    pub fn fill_pages(&self, slot: usize) -> Range<u64> {
        self.fills[slot].as_ref().map_or(0..0, |f| f.pages.clone())
    }

    /// Whether `page` is being filled.
    pub fn filling(&self, page: u64) -> bool {
        self.fills.iter().flatten().any(|f| f.pages.contains(&page))
    }

    /// Fills in flight.
    pub fn fills_in_flight(&self) -> usize {
        self.fills.iter().flatten().count()
    }

    /// The ticket the next fill claim will get.
    pub fn next_ticket(&self) -> u64 {
        self.next_ticket
    }

    /// Whether a writable fill claimed before `ticket` is still in flight.
    pub fn writable_fill_before(&self, ticket: u64) -> bool {
        self.fills
            .iter()
            .flatten()
            .any(|f| f.writable && f.ticket < ticket)
    }

    /// Allocations and fills in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().flatten().count() + self.fills_in_flight()
    }
}

/// What a write to a page in writeback does (a flush is writing the page
/// straight from the mapping's memory, `flush.rs`; writes wait for it, as
/// the kernel's stable pages do, so the store reads what was flushed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writeback {
    /// Waits for the flush to be done with the page: a faulting thread's
    /// signal handler, a checked call.
    Wait,
    /// Fails with [`Failure::InWriteback`]; the flush rings the fault
    /// service when it is done. For the service's workers, which must not
    /// wait: the flush's own write may meet a missing page (dropped behind
    /// the mapping's back), and only a worker can serve that fault.
    Park,
}

/// Claims and writebacks ending, for faults to sleep on rather than spin
/// while another's store call runs (a network store's read may take
/// milliseconds).
#[derive(Debug, Default)]
pub(crate) struct ClaimEvents {
    /// Bumped at every claim's and writeback's end (under the flags lock).
    ended: AtomicU32,
    /// Threads about to wait or waiting: only then is a wake-up worth a system call.
    waiters: AtomicU32,
}

impl ClaimEvents {
    /// Called with the flags lock held, before it is dropped to wait: what
    /// [`wait`](Self::wait) waits to change. A claim that ends after this
    /// (necessarily after the lock is dropped) bumps it and wakes us.
    fn about_to_wait(&self) -> u32 {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        self.ended.load(Ordering::SeqCst)
    }

    /// Sleeps until a claim ends after [`about_to_wait`](Self::about_to_wait)
    /// returned `seen` (perhaps a little longer: a futex may wake early, and
    /// callers look again). Async-signal-safe: one `futex(2)` call.
    fn wait(&self, seen: u32) {
        crate::sync::wait_while(&self.ended, seen);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// A claim or writeback ended: wakes whoever waits for one.
    pub fn ended(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
        // A read-modify-write, as in `PageStates::wake`: it reads the
        // latest count, and a waiter's later count reads from it.
        if self.waiters.fetch_add(0, Ordering::SeqCst) > 0 {
            crate::sync::wake_all(&self.ended);
        }
    }
}

/// Which claim to end.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Allocation(usize),
    Fill(usize),
}

/// Releases a claim if the store panics (the fault service catches the
/// panic; a claim left behind would make every later fault wait forever).
struct ReleaseOnUnwind<'a> {
    engine: &'a Engine,
    slot: Slot,
}

impl Drop for ReleaseOnUnwind<'_> {
    fn drop(&mut self) {
        self.engine.end_claim(&mut self.engine.lock_flags(), self.slot);
    }
}

/// How a fill with the lock released went.
enum Filled<'a> {
    Done(MutexGuard<'a, Flags>, Result<Resolved, Failure>),
    /// No fill slot was free: plan again.
    Again(MutexGuard<'a, Flags>),
}

impl Engine {
    /// The flags lock, once no claim is in flight: for operations that
    /// change the layout (they hold the layout lock exclusively, so no
    /// checked call runs; faults wait for the flags lock meanwhile).
    pub fn lock_flags_settled(&self) -> MutexGuard<'_, Flags> {
        let mut flags = self.lock_flags();
        while flags.claims.in_flight() > 0 {
            flags = self.wait_for_claims(flags);
        }
        flags
    }

    /// Waits until every writable fill in flight now has recorded its
    /// pages: a write to them that came before is then dirty in the flags.
    /// Fills claimed later are not waited for, so busy writers cannot keep
    /// a flush waiting.
    pub fn wait_for_writable_fills(&self) {
        let mut flags = self.lock_flags();
        let ticket = flags.claims.next_ticket();
        while flags.claims.writable_fill_before(ticket) {
            flags = self.wait_for_claims(flags);
        }
    }

    /// Lets the flags lock go until a claim or writeback in flight ends.
    /// Async-signal-safe (a mutex the faulting thread cannot hold, atomics
    /// and `futex(2)`).
    pub fn wait_for_claims<'a>(&'a self, flags: MutexGuard<'a, Flags>) -> MutexGuard<'a, Flags> {
        let seen = self.claim_events.about_to_wait();
        drop(flags);
        self.claim_events.wait(seen);
        self.lock_flags()
    }

    /// Lets the flags lock go until the fill of `page` in flight ends
    /// (recorded or given back), sleeping on that page alone.
    /// Async-signal-safe (as [`wait_for_claims`](Self::wait_for_claims)).
    pub fn wait_for_fill<'a>(&'a self, flags: MutexGuard<'a, Flags>, page: u64) -> MutexGuard<'a, Flags> {
        drop(flags);
        self.page_states.wait_while_filling(page);
        self.lock_flags()
    }

    /// Ends a claim, under the flags lock, and wakes its waiters.
    fn end_claim(&self, flags: &mut Flags, slot: Slot) {
        match slot {
            Slot::Allocation(i) => flags.claims.release(i),
            Slot::Fill(i) => flags.release_fill(i),
        }
        self.claim_events.ended();
    }

    /// Makes `page` ready for a fault's `access`, with the store's `calls`
    /// of choice, store I/O outside the lock (module docs); ahead of a
    /// sequential writer the next pages are made writable too (they are
    /// dirty from then on, written or not). Allocates no memory on its way
    /// to success (a signal handler comes here). Takes and gives back the
    /// flags lock.
    pub fn resolve_fault<'a>(
        &'a self,
        flags: MutexGuard<'a, Flags>,
        page: u64,
        access: Access,
        calls: StoreCalls<'_>,
        writeback: Writeback,
    ) -> (MutexGuard<'a, Flags>, Result<Resolved, Failure>) {
        self.resolve_released(flags, page, access, calls, writeback, true)
    }

    /// Makes `page` ready for a checked call's `access`: as a fault, but only
    /// the page asked for is made writable, so exactly what the call writes
    /// is dirty.
    pub fn resolve_checked<'a>(
        &'a self,
        flags: MutexGuard<'a, Flags>,
        page: u64,
        access: Access,
    ) -> (MutexGuard<'a, Flags>, Result<Resolved, Failure>) {
        self.resolve_released(flags, page, access, StoreCalls::Ordinary, Writeback::Wait, false)
    }

    fn resolve_released<'a>(
        &'a self,
        mut flags: MutexGuard<'a, Flags>,
        page: u64,
        access: Access,
        calls: StoreCalls<'_>,
        writeback: Writeback,
        write_ahead: bool,
    ) -> (MutexGuard<'a, Flags>, Result<Resolved, Failure>) {
        let mut ahead_asked = false;
        let mut counted = false;
        loop {
            if access == Access::Write && flags.in_writeback(page) {
                if !std::mem::replace(&mut counted, true) {
                    self.counters.writeback_wait();
                }
                if writeback == Writeback::Park {
                    flags.writer_parked();
                    return (flags, Err(Failure::InWriteback));
                }
                flags = self.wait_for_claims(flags);
                continue;
            }
            if flags.filling(page) {
                // Another fault fills it: once it is in, this one finds it ready.
                self.counters.fill_wait();
                flags = self.wait_for_fill(flags, page);
                continue;
            }
            if let Some((span, own)) = self.blocks_to_claim(&flags, page, access, &mut ahead_asked) {
                match flags.claims.claim(span.clone()) {
                    Claim::Taken(slot) => {
                        let outcome;
                        (flags, outcome) = self.allocate_released(flags, slot, span.clone(), calls);
                        // After a failure ahead, the next turn asks for the page's
                        // own blocks only, so working ahead never fails a write.
                        match self.allocated(&mut flags, span.clone(), outcome, calls) {
                            Err(f) if span == own => return (flags, Err(f)),
                            _ => continue,
                        }
                    }
                    Claim::Busy => {
                        flags = self.wait_for_claims(flags);
                        continue;
                    }
                    // No slot: the resolver allocates under the lock.
                    Claim::Full => {}
                }
            }
            match self.resolve_under(&mut flags, page, access, calls, write_ahead) {
                Ok(Ready::Done(resolved)) => return (flags, Ok(resolved)),
                Err(f) => return (flags, Err(f)),
                Ok(Ready::Fill(plan)) => match self.fill_released(flags, plan, calls) {
                    Filled::Done(flags, resolved) => return (flags, resolved),
                    Filled::Again(again) => flags = again,
                },
            }
        }
    }

    /// The store's allocation of the claimed `span`, without the lock.
    fn allocate_released<'a>(
        &'a self,
        flags: MutexGuard<'a, Flags>,
        slot: usize,
        span: Range<u64>,
        calls: StoreCalls<'_>,
    ) -> (MutexGuard<'a, Flags>, std::io::Result<()>) {
        if flags.claims.in_flight() > 1 {
            self.counters.overlapped_allocation();
        }
        drop(flags);
        let slot = Slot::Allocation(slot);
        let unwinding = ReleaseOnUnwind { engine: self, slot };
        let outcome = self.store_allocate(span, calls);
        std::mem::forget(unwinding);
        let mut flags = self.lock_flags();
        self.end_claim(&mut flags, slot);
        (flags, outcome)
    }

    /// Claims the pages of `plan`, fills them without the lock, and records them.
    fn fill_released<'a>(
        &'a self,
        mut flags: MutexGuard<'a, Flags>,
        plan: FillPlan,
        calls: StoreCalls<'_>,
    ) -> Filled<'a> {
        let Claim::Taken(slot) = flags.claim_fill(plan.pages.clone(), plan.writable) else {
            return Filled::Again(self.wait_for_claims(flags));
        };
        // A buffer per fill slot: one is free while this claim is held.
        let mut buffer = match plan.zeros {
            true => None,
            false => match self.fill_buffers.take() {
                Some(buffer) => Some(buffer),
                None => {
                    self.end_claim(&mut flags, Slot::Fill(slot));
                    return Filled::Again(self.wait_for_claims(flags));
                }
            },
        };
        if flags.claims.fills_in_flight() > 1 {
            self.counters.overlapped_fill();
        }
        drop(flags);
        let slot = Slot::Fill(slot);
        let unwinding = ReleaseOnUnwind { engine: self, slot };
        let outcome = self.fill(&plan, buffer.as_mut().map(FillBuffer::bytes_mut), calls);
        drop(buffer);
        // Declared after `unwinding`, so on a panic while recording it is
        // dropped first, and the claim's release can take the lock.
        let mut flags = self.lock_flags();
        let resolved = outcome.and_then(|count| {
            let resolved = self.filled(&mut flags, &plan, count);
            self.woken(&plan, count)?;
            resolved
        });
        std::mem::forget(unwinding);
        // After the record: a fault sleeping on a page finds it in memory.
        self.end_claim(&mut flags, slot);
        Filled::Done(flags, resolved)
    }

    /// The blocks a write fault at `page` must allocate, with those ahead of
    /// a sequential writer the first time it asks (and the page's own), or
    /// `None` if nothing is missing or the resolver will refuse anyway.
    fn blocks_to_claim(
        &self,
        flags: &Flags,
        page: u64,
        access: Access,
        ahead_asked: &mut bool,
    ) -> Option<(Range<u64>, Range<u64>)> {
        // With the kernel tracking writes a page comes in with its blocks
        // (`kernel_dirty.rs`): a read allocates them too, just the page's own.
        let allocates = match access {
            Access::Write => flags.residency(page) != Residency::Writable,
            Access::Read => self.kernel_dirty && flags.residency(page) == Residency::Absent,
        };
        if !allocates || flags.past_eof(page) {
            return None;
        }
        let own = flags.missing_blocks(page)?;
        if access == Access::Read {
            return Some((own.clone(), own));
        }
        if std::mem::replace(ahead_asked, true) {
            return Some((own.clone(), own));
        }
        Some((self.allocation_ahead(flags, page, own.clone()), own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_claims_wait_and_disjoint_ones_run_together() {
        let mut c = Claims::default();
        assert_eq!(c.claim(0..4), Claim::Taken(0));
        assert_eq!(c.claim(3..5), Claim::Busy);
        assert_eq!(c.claim(4..8), Claim::Taken(1));
        assert_eq!(c.in_flight(), 2);
        c.release(0);
        assert_eq!(c.claim(3..4), Claim::Taken(0));
        for i in 0..6 {
            assert!(matches!(c.claim(100 + i..101 + i), Claim::Taken(_)));
        }
        assert_eq!(c.claim(200..201), Claim::Full);
    }

    #[test]
    fn fills_claim_pages_and_a_flush_waits_only_for_earlier_writable_ones() {
        let mut c = Claims::default();
        assert_eq!(c.claim_fill(0..4, false), Claim::Taken(0));
        assert_eq!(c.claim_fill(3..5, true), Claim::Busy);
        assert!(c.filling(3) && !c.filling(4));
        assert_eq!(c.claim_fill(4..6, true), Claim::Taken(1));
        let flush_ticket = c.next_ticket();
        assert!(c.writable_fill_before(flush_ticket));
        assert_eq!(c.claim_fill(10..11, true), Claim::Taken(2));
        c.release_fill(1);
        assert!(
            !c.writable_fill_before(flush_ticket),
            "the later one is not waited for"
        );
        assert_eq!((c.fills_in_flight(), c.in_flight()), (2, 2));
        assert_eq!(
            c.claim(0..1),
            Claim::Taken(0),
            "blocks and pages are claimed apart"
        );
        assert_eq!(c.in_flight(), 3);
        assert_eq!(c.claim_fill(20..21, false), Claim::Taken(1));
        assert_eq!(c.claim_fill(30..31, false), Claim::Taken(3));
        assert_eq!(c.claim_fill(40..41, false), Claim::Full);
    }
}
