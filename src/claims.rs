//! Allocating a fault's blocks with the flags lock released, so faults on
//! different pages allocate in parallel (a `fallocate` costs ~7 µs on ext4;
//! under the lock every other fault of the mapping waited for it).
//!
//! Under the flags lock a fault *claims* the block range it will allocate;
//! it then drops the lock, calls the store, takes the lock again, records
//! the blocks allocated and releases its claim. A fault needing blocks that
//! overlap a claim waits for it (without the lock). Operations that change
//! the layout (`set_len`, `punch_hole`, `evict`) take the flags lock only
//! once no claim is in flight ([`Engine::lock_flags_settled`]) and keep it,
//! so no claim starts under them; the blocks a claim allocates are
//! therefore still below EOF, and still wanted, when it records them.

use std::ops::Range;
use std::sync::MutexGuard;

use crate::engine::{Access, Engine, Failure, Resolved, StoreCalls};
use crate::flags::{Flags, Residency};

/// Claims in flight at once per mapping; past them faults allocate under
/// the lock, as before.
const CLAIMS: usize = 8;

/// The block ranges being allocated with the lock released. A fixed array:
/// a fault in a signal handler claims too, and must not allocate memory.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    slots: [Option<Range<u64>>; CLAIMS],
}

/// What a claim attempt found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Claimed, in this slot.
    Taken(usize),
    /// Another claim overlaps: wait for it.
    Busy,
    /// No free slot: allocate under the lock.
    Full,
}

impl Claims {
    pub fn claim(&mut self, blocks: Range<u64>) -> Claim {
        let overlaps = |r: &Range<u64>| r.start < blocks.end && blocks.start < r.end;
        if self.slots.iter().flatten().any(overlaps) {
            return Claim::Busy;
        }
        match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(blocks);
                Claim::Taken(i)
            }
            None => Claim::Full,
        }
    }

    pub fn release(&mut self, slot: usize) {
        self.slots[slot] = None;
    }

    pub fn in_flight(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

/// Releases a claim if the store panics (the fault service catches the
/// panic; a claim left behind would make every later fault wait forever).
struct ReleaseOnUnwind<'a> {
    engine: &'a Engine,
    slot: usize,
}

impl Drop for ReleaseOnUnwind<'_> {
    fn drop(&mut self) {
        self.engine.lock_flags().claims.release(self.slot);
    }
}

impl Engine {
    /// The flags lock, once no claim is in flight: for operations that
    /// change the layout (they hold the layout lock exclusively, so no
    /// checked call runs; faults wait for the flags lock meanwhile).
    pub fn lock_flags_settled(&self) -> MutexGuard<'_, Flags> {
        loop {
            let flags = self.lock_flags();
            if flags.claims.in_flight() == 0 {
                return flags;
            }
            drop(flags);
            crate::sync::yield_now();
        }
    }

    /// [`resolve`](Engine::resolve) for a fault, with the store's `calls`
    /// of choice: blocks are allocated with the lock released (see the
    /// module docs), and ahead of a sequential writer the next pages are
    /// made writable too (they are dirty from then on, written or not).
    /// Allocates no memory on its way to success (a signal handler comes
    /// here). Takes and gives back the flags lock.
    pub fn resolve_fault<'a>(
        &'a self,
        mut flags: MutexGuard<'a, Flags>,
        page: u64,
        access: Access,
        calls: StoreCalls<'_>,
    ) -> (MutexGuard<'a, Flags>, Result<Resolved, Failure>) {
        let mut ahead_asked = false;
        while let Some((span, own)) = self.blocks_to_claim(&flags, page, access, &mut ahead_asked) {
            let slot = match flags.claims.claim(span.clone()) {
                Claim::Taken(slot) => slot,
                Claim::Busy => {
                    drop(flags);
                    crate::sync::yield_now();
                    flags = self.lock_flags();
                    continue;
                }
                Claim::Full => break,
            };
            if flags.claims.in_flight() > 1 {
                self.counters.overlapped_allocation();
            }
            drop(flags);
            let unwinding = ReleaseOnUnwind { engine: self, slot };
            let outcome = self.store_allocate(span.clone(), calls);
            std::mem::forget(unwinding);
            flags = self.lock_flags();
            flags.claims.release(slot);
            // After a failure ahead, the next turn asks for the page's own
            // blocks only, so working ahead never fails a write.
            match self.allocated(&mut flags, span.clone(), outcome, calls) {
                Err(f) if span == own => return (flags, Err(f)),
                _ => {}
            }
        }
        let resolved = self.resolve_for_fault(&mut flags, page, access, calls);
        (flags, resolved)
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
        if access != Access::Write || flags.past_eof(page) || flags.residency(page) == Residency::Writable {
            return None;
        }
        let own = flags.missing_blocks(page)?;
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
}
