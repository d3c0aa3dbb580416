//! Eviction for a budget (`budget.rs`): the victims a mapping's clock
//! picks are written back if dirty (as flush does: protect, copy, write,
//! sync), then dropped if still clean, all in one `madvise` per run.

use crate::engine::Engine;
use crate::error::Result;

impl Engine {
    /// Evicts up to `want` resident pages; returns how many went. Pages
    /// written again meanwhile, locked, or whose write-back failed stay
    /// (a failed write-back is returned, its pages still dirty).
    pub fn evict_some(&self, want: usize) -> Result<usize> {
        let victims = {
            let mut flags = self.lock_flags();
            let mut hand = crate::engine::relock(self.clock_hand.lock());
            flags.clock_victims(&mut hand, want)
        };
        if victims.is_empty() {
            return Ok(0);
        }
        let dirty: Vec<u64> = {
            let flags = self.lock_flags();
            victims.iter().copied().filter(|&p| flags.is_dirty(p)).collect()
        };
        if !dirty.is_empty() {
            self.flush_for_eviction(&crate::store::runs(dirty))?;
        }
        // Exclusive, as `evict` holds it: no checked copy is then between its
        // check and its copy. Never waited for: the caller may be the fault
        // service, and a checked call holding it shared may wait for a fault.
        let Some(_layout) = self.try_layout_exclusive() else {
            return Ok(0);
        };
        let mut flags = self.lock_flags_settled();
        let gone: Vec<u64> = victims
            .into_iter()
            .filter(|&p| {
                flags.residency(p) != crate::flags::Residency::Absent
                    && !flags.is_dirty(p)
                    && !flags.is_locked(p)
            })
            .collect();
        self.discard(&mut flags, &gone)?;
        self.counters.evicted(gone.len() as u64);
        // Remember about a budget's worth of the latest victims: one that
        // faults back while remembered was in use after all.
        let mut ghosts = crate::engine::relock(self.ghosts.lock());
        let remember = self.budget.as_ref().map_or(0, |b| b.limit_pages(self.geo.page));
        for &p in &gone {
            flags.evicted(p);
            ghosts.push_back(p);
        }
        while ghosts.len() > remember {
            if let Some(p) = ghosts.pop_front() {
                flags.forget_evicted(p);
            }
        }
        Ok(gone.len())
    }
}
