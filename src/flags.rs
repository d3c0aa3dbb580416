//! Per-block and per-page flags, and the transitions between them. Pure logic:
//! no system calls, so every rule here is unit-tested on its own.
//!
//! * per block: **allocated** — the store holds a block for it;
//! * per unit (the smaller of a page and a block): **zeroed** — its block
//!   was allocated by a fault from a hole and its page has not been in
//!   memory since, so its bytes still read as zeros (when the store promises
//!   [`unallocated_reads_zero`](crate::Store::unallocated_reads_zero)); with
//!   blocks larger than a page, each page's share of a block is its own;
//! * per page: **residency** (absent, protected, writable) and **dirty** —
//!   memory may differ from the store; **writeback** — a flush is writing
//!   the page from memory: it stays protected meanwhile, and if it is
//!   dropped behind the mapping's back, its bytes count as lost.
//!
//! The invariant (DESIGN rule 1): a writable page is dirty, and every block
//! under it that lies below EOF is allocated. A protected page may be dirty
//! (after a flush failed, or when EOF moved up across it); an absent page is clean.
//!
//! Beside them: pages **poisoned** because an access past EOF touched them
//! (absent, wholly past EOF), pages the user **locked** in memory, and the
//! byte ranges **lost** when dirty pages were dropped behind the mapping's
//! back (`madvise`), kept until a flush reports them.

use std::ops::Range;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bitmaps::Bitmaps;
use crate::claims::{Claim, Claims};
use crate::geometry::{Geometry, intersect};
use crate::page_state::{PageStates, State};

/// Whether a page is in memory and whether it may be written without a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Residency {
    /// Not in memory: the next touch faults as missing.
    Absent,
    /// In memory, write-protected: reads run free, the next write faults.
    Protected,
    /// In memory and writable: its blocks are allocated, it is dirty.
    Writable,
}

/// The flags of one mapping, and its end of file.
#[derive(Debug)]
pub(crate) struct Flags {
    geo: Geometry,
    eof: u64,
    /// The bits, numbered by the constants below; memory only where set.
    bits: Bitmaps<MAPS>,
    /// Each page's residency, and whether a fill has claimed it: the truth
    /// for both, readable without this lock (`page_state.rs`). The
    /// `RESIDENT` bits index it for scans.
    states: Arc<PageStates>,
    /// Resident bytes, counted into a budget's total (`budget.rs`).
    meter: Option<Arc<AtomicU64>>,
    lost: Vec<Range<u64>>,
    /// Block ranges being allocated with the lock released (`claims.rs`).
    pub claims: Claims,
    /// A fault service worker parked a write to a page in writeback: the
    /// flush rings the service when it is done.
    writer_parked: bool,
}

/// Per page: in memory (protected or writable): the index of the resident
/// pages in `states`, kept with them in [`Flags::set_residency`].
const RESIDENT: usize = 0;
const DIRTY: usize = 1;
const POISONED: usize = 2;
const LOCKED: usize = 3;
/// Per block.
const ALLOCATED: usize = 4;
/// Per unit.
const ZEROED: usize = 5;
/// Per page: faulted in or written since the clock hand last passed.
const REFERENCED: usize = 6;
/// Per page: evicted lately, and not back since (the eviction's memory).
const GHOST: usize = 7;
/// Per page: came back soon after it was evicted: a page in use that a
/// fault-only view missed; the clock passes over it once more.
const HOT: usize = 8;
/// Per page: a flush is writing it from the mapping's memory (`flush.rs`);
/// writes to it wait until the flush is done with it.
const WRITEBACK: usize = 9;
const MAPS: usize = 10;

/// The length of each bitmap over `geo`.
fn lens(geo: &Geometry) -> [u64; MAPS] {
    let pages = geo.pages();
    [
        pages,
        pages,
        pages,
        pages,
        geo.blocks(),
        units(geo),
        pages,
        pages,
        pages,
        pages,
    ]
}

impl Flags {
    /// All pages absent and clean; `allocated` lists the store's block ranges.
    /// Fails only if the memory for the bits cannot be reserved.
    pub fn new(geo: Geometry, eof: u64, allocated: &[Range<u64>]) -> std::io::Result<Flags> {
        let mut flags = Flags {
            geo,
            eof,
            bits: Bitmaps::new(lens(&geo))?,
            states: Arc::new(PageStates::new(geo.pages())?),
            meter: None,
            lost: Vec::new(),
            claims: Claims::default(),
            writer_parked: false,
        };
        for r in allocated {
            flags.mark_allocated(r.start.min(geo.blocks())..r.end.min(geo.blocks()));
        }
        Ok(flags)
    }

    /// These flags over the larger `geo` of a grown reservation: pages and
    /// blocks past the old capacity absent and unallocated; no poison marks
    /// (the new memory has none: an access past EOF poisons again).
    /// Counts these flags' resident bytes into `meter` from now on.
    pub fn metered(mut self, meter: Arc<AtomicU64>) -> Flags {
        meter.fetch_add(self.resident_count() * self.geo.page, Ordering::SeqCst);
        self.meter = Some(meter);
        self
    }

    pub fn regrown(&mut self, geo: Geometry) -> std::io::Result<Flags> {
        debug_assert!(
            geo.capacity >= self.geo.capacity && geo.page == self.geo.page && geo.block == self.geo.block
        );
        let mut bits = self.bits.grown(lens(&geo))?;
        bits.set_range(POISONED, 0..geo.pages(), false);
        Ok(Flags {
            geo,
            eof: self.eof,
            bits,
            states: Arc::new(self.states.grown(geo.pages())?),
            // The resident pages move with the meter: nothing to count again.
            meter: self.meter.take(),
            lost: self.lost.clone(),
            claims: Claims::default(),
            writer_parked: self.writer_parked,
        })
    }

    pub fn eof(&self) -> u64 {
        self.eof
    }

    pub fn set_eof(&mut self, eof: u64) {
        debug_assert!(eof <= self.geo.capacity);
        self.eof = eof;
    }

    /// The page states, for faults to read without this lock.
    pub fn states(&self) -> Arc<PageStates> {
        self.states.clone()
    }

    pub fn residency(&self, page: u64) -> Residency {
        match self.states.state(page) {
            State::Absent | State::Filling => Residency::Absent,
            State::Protected => Residency::Protected,
            State::Writable => Residency::Writable,
        }
    }

    /// Whether a fill has claimed `page` and not yet recorded it.
    pub fn filling(&self, page: u64) -> bool {
        self.states.state(page) == State::Filling
    }

    /// Claims the absent pages `pages` for a fill (`writable`: installed
    /// writable); each page's word moves to filling.
    pub fn claim_fill(&mut self, pages: Range<u64>, writable: bool) -> Claim {
        let claim = self.claims.claim_fill(pages.clone(), writable);
        if matches!(claim, Claim::Taken(_)) {
            for p in pages {
                let claimed = self.states.claim(p);
                debug_assert!(claimed, "page {p} planned for a fill but not absent");
            }
        }
        claim
    }

    /// Ends the fill claim in `slot`: its pages the fill did not record go
    /// back to absent, and faults sleeping on them wake.
    pub fn release_fill(&mut self, slot: usize) {
        for p in self.claims.fill_pages(slot) {
            self.states.unclaim(p);
        }
        self.claims.release_fill(slot);
    }

    fn set_residency(&mut self, page: u64, residency: Residency) {
        let was = self.bits.get(RESIDENT, page);
        let now = residency != Residency::Absent;
        self.bits.set(RESIDENT, page, now);
        self.states.set(
            page,
            match residency {
                Residency::Absent => State::Absent,
                Residency::Protected => State::Protected,
                Residency::Writable => State::Writable,
            },
        );
        if now && (!was || residency == Residency::Writable) {
            self.bits.set(REFERENCED, page, true);
        }
        if now && !was && self.bits.get(GHOST, page) {
            self.bits.set(GHOST, page, false);
            self.bits.set(HOT, page, true);
        }
        if let (Some(meter), true) = (&self.meter, was != now) {
            // Atomic adds only: the in-thread signal handler comes here too.
            match now {
                true => meter.fetch_add(self.geo.page, Ordering::SeqCst),
                false => meter.fetch_sub(self.geo.page, Ordering::SeqCst),
            };
        }
    }

    /// Remembers that `page` was evicted (until [`forget_evicted`](Self::forget_evicted)):
    /// if it faults back meanwhile, it is hot.
    pub fn evicted(&mut self, page: u64) {
        self.bits.set(GHOST, page, true);
    }

    pub fn forget_evicted(&mut self, page: u64) {
        self.bits.set(GHOST, page, false);
    }

    /// Up to `want` resident pages to evict, found by a clock: from `*hand`
    /// on (wrapping once), a referenced page loses its mark and is passed
    /// over (a second chance), a locked one is passed over; the rest are
    /// taken. `*hand` is left after the last page looked at.
    pub fn clock_victims(&mut self, hand: &mut u64, want: usize) -> Vec<u64> {
        let pages = self.geo.pages();
        let start = (*hand).min(pages);
        let resident: Vec<u64> = self
            .bits
            .ones(RESIDENT, start..pages)
            .chain(self.bits.ones(RESIDENT, 0..start))
            .collect();
        let mut victims = Vec::new();
        for page in resident {
            *hand = page + 1;
            if self.bits.get(REFERENCED, page) {
                self.bits.set(REFERENCED, page, false);
            } else if self.bits.get(HOT, page) {
                // Hot pages keep being passed over while hot: each turn of
                // the clock cools them by one mark.
                self.bits.set(HOT, page, false);
                self.bits.set(REFERENCED, page, true);
            } else if !self.is_locked(page) {
                victims.push(page);
                if victims.len() == want {
                    break;
                }
            }
        }
        victims
    }

    pub fn is_dirty(&self, page: u64) -> bool {
        self.bits.get(DIRTY, page)
    }

    pub fn is_allocated(&self, block: u64) -> bool {
        self.bits.get(ALLOCATED, block)
    }

    pub fn past_eof(&self, page: u64) -> bool {
        self.geo.page_past_eof(page, self.eof)
    }

    /// The smallest block range covering every block a write to `page` needs
    /// and the store does not yet hold; `None` if the page may become writable now.
    pub fn missing_blocks(&self, page: u64) -> Option<Range<u64>> {
        let needed = self.geo.blocks_backing(page, self.eof);
        let first = needed.clone().find(|&b| !self.is_allocated(b))?;
        let last = needed.rev().find(|&b| !self.is_allocated(b))?;
        Some(first..last + 1)
    }

    /// The zeroed-bit units over `bytes` (rounded out).
    fn units_over(&self, bytes: Range<u64>) -> Range<u64> {
        let unit = unit(&self.geo);
        let end = bytes.end.div_ceil(unit).min(units(&self.geo));
        (bytes.start / unit).min(end)..end
    }

    /// Whether every unit of `page` below EOF lies in an unallocated block
    /// or is zeroed: in a store whose holes read as zeros, the page does.
    pub fn reads_as_zeros(&self, page: u64) -> bool {
        let bytes = self.geo.page_bytes(page);
        let unit = unit(&self.geo);
        self.units_over(bytes.start..bytes.end.min(self.eof))
            .all(|u| !self.is_allocated(u * unit / self.geo.block) || self.bits.get(ZEROED, u))
    }

    /// Marks `blocks` allocated; the units of those that were not are zeroed.
    pub fn mark_allocated_from_holes(&mut self, blocks: Range<u64>) {
        for b in blocks.clone() {
            if !self.is_allocated(b) {
                let units = self.units_over(self.geo.block_bytes(b));
                self.bits.set_range(ZEROED, units, true);
            }
        }
        self.mark_allocated(blocks);
    }

    /// `page` is coming into memory: its bytes in the store may change.
    fn touched(&mut self, page: u64) {
        let units = self.units_over(self.geo.page_bytes(page));
        self.bits.set_range(ZEROED, units, false);
    }

    pub fn mark_allocated(&mut self, blocks: Range<u64>) {
        self.bits.set_range(ALLOCATED, blocks, true);
    }

    pub fn forget_allocated(&mut self, blocks: Range<u64>) {
        let end = blocks.end.min(self.geo.blocks());
        if blocks.start < end {
            self.bits.set_range(ALLOCATED, blocks.start..end, false);
            let units =
                self.units_over(self.geo.block_bytes(blocks.start).start..self.geo.block_bytes(end - 1).end);
            self.bits.set_range(ZEROED, units, false);
        }
    }

    /// A missing page was filled for a read: protected and clean.
    pub fn filled_for_read(&mut self, page: u64) {
        debug_assert_eq!(self.residency(page), Residency::Absent);
        self.touched(page);
        self.set_residency(page, Residency::Protected);
        self.bits.set(DIRTY, page, false);
    }

    /// A page was made writable after its blocks were allocated: writable and dirty.
    pub fn granted_write(&mut self, page: u64) {
        debug_assert!(self.missing_blocks(page).is_none(), "rule 1: blocks first");
        self.touched(page);
        self.set_residency(page, Residency::Writable);
        self.bits.set(DIRTY, page, true);
    }

    /// A resident page was write-protected (its dirty mark is kept).
    pub fn protected(&mut self, page: u64) {
        debug_assert_ne!(self.residency(page), Residency::Absent);
        debug_assert!(
            !self.filling(page),
            "only its fill's end moves a page being filled"
        );
        self.set_residency(page, Residency::Protected);
    }

    /// A page was dropped from memory: absent and clean.
    pub fn dropped(&mut self, page: u64) {
        debug_assert!(
            !self.filling(page),
            "only its fill's end moves a page being filled"
        );
        self.set_residency(page, Residency::Absent);
        self.bits.set(DIRTY, page, false);
    }

    /// A resident page turned out to be gone from memory (dropped by
    /// `madvise` behind the mapping's back): absent. If it was dirty or in
    /// writeback, its bytes below EOF are recorded as lost, for the next
    /// flush to report.
    pub fn vanished(&mut self, page: u64) {
        if self.is_dirty(page) || self.in_writeback(page) {
            let bytes = self.geo.page_bytes(page);
            let lost = bytes.start..bytes.end.min(self.eof.max(bytes.start));
            match self.lost.last_mut() {
                Some(last) if last.end == lost.start => last.end = lost.end,
                _ if lost.is_empty() => {}
                _ => self.lost.push(lost),
            }
        }
        self.dropped(page);
    }

    /// The byte ranges lost since the last call, in the order found.
    pub fn take_lost(&mut self) -> Vec<Range<u64>> {
        std::mem::take(&mut self.lost)
    }

    /// An access past EOF poisoned the absent `page`.
    pub fn poisoned(&mut self, page: u64) {
        debug_assert_eq!(self.residency(page), Residency::Absent);
        self.bits.set(POISONED, page, true);
    }

    /// Poisoned pages in `pages`; they are cleared (dropped) when EOF moves over them.
    pub fn poisoned_pages(&self, pages: Range<u64>) -> Vec<u64> {
        self.bits.ones(POISONED, pages).collect()
    }

    pub fn is_poisoned(&self, page: u64) -> bool {
        self.bits.get(POISONED, page)
    }

    pub fn unpoisoned(&mut self, page: u64) {
        self.bits.set(POISONED, page, false);
    }

    /// Marks `pages` locked in memory (or not): eviction leaves locked pages alone.
    pub fn set_locked(&mut self, pages: Range<u64>, locked: bool) {
        self.bits.set_range(LOCKED, pages, locked);
    }

    pub fn is_locked(&self, page: u64) -> bool {
        self.bits.get(LOCKED, page)
    }

    /// A flush takes the page: clean and protected.
    pub fn cleaned(&mut self, page: u64) {
        debug_assert!(
            !self.filling(page),
            "only its fill's end moves a page being filled"
        );
        self.set_residency(page, Residency::Protected);
        self.bits.set(DIRTY, page, false);
    }

    /// A flush failed after taking the page: dirty again, so the next flush
    /// writes it; unless it is gone from memory meanwhile (then it was lost).
    pub fn redirty(&mut self, page: u64) {
        if self.residency(page) != Residency::Absent {
            self.bits.set(DIRTY, page, true);
        }
    }

    /// A flush takes the page to write it from memory: clean, protected and
    /// in writeback until [`written_back`](Self::written_back).
    pub fn start_writeback(&mut self, page: u64) {
        self.cleaned(page);
        self.bits.set(WRITEBACK, page, true);
    }

    pub fn written_back(&mut self, page: u64) {
        self.bits.set(WRITEBACK, page, false);
    }

    pub fn in_writeback(&self, page: u64) -> bool {
        self.bits.get(WRITEBACK, page)
    }

    /// A write to a page in writeback was parked (see the field).
    pub fn writer_parked(&mut self) {
        self.writer_parked = true;
    }

    /// Whether a writer was parked since the last call.
    pub fn take_writer_parked(&mut self) -> bool {
        std::mem::take(&mut self.writer_parked)
    }

    /// Dirty pages in `pages`, in order.
    pub fn dirty_pages(&self, pages: Range<u64>) -> Vec<u64> {
        self.bits.ones(DIRTY, pages).collect()
    }

    /// Resident pages in `pages` matching `keep`, in order.
    pub fn resident_pages(&self, pages: Range<u64>, keep: impl Fn(Residency, bool) -> bool) -> Vec<u64> {
        self.bits
            .ones(RESIDENT, pages)
            .filter(|&p| keep(self.residency(p), self.is_dirty(p)))
            .collect()
    }

    /// The byte ranges of `page` that lie in allocated blocks: what a flush writes.
    /// EOF plays no part (DESIGN rule 4); the store clips at its length.
    pub fn allocated_bytes(&self, page: u64) -> Vec<Range<u64>> {
        let bytes = self.geo.page_bytes(page);
        let mut out: Vec<Range<u64>> = Vec::new();
        for block in self.geo.blocks_overlapping(&bytes) {
            if !self.is_allocated(block) {
                continue;
            }
            let part = intersect(&self.geo.block_bytes(block), &bytes);
            match out.last_mut() {
                Some(last) if last.end == part.start => last.end = part.end,
                _ => out.push(part),
            }
        }
        out
    }

    pub fn allocated_blocks(&self) -> u64 {
        self.bits.count(ALLOCATED, 0..self.geo.blocks())
    }

    pub fn resident_count(&self) -> u64 {
        self.bits.count(RESIDENT, 0..self.geo.pages())
    }

    pub fn dirty_count(&self) -> u64 {
        self.bits.count(DIRTY, 0..self.geo.pages())
    }

    /// Checks DESIGN rule 1 and the residency rules on every page; returns the
    /// first page that breaks one, with the reason.
    pub fn check(&self) -> Result<(), String> {
        let first_past_eof = self.eof.div_ceil(self.geo.block);
        if let Some(block) = self
            .bits
            .ones(ALLOCATED, first_past_eof..self.geo.blocks())
            .next()
        {
            return Err(format!("block {block} allocated wholly past EOF {}", self.eof));
        }
        let pages = 0..self.geo.pages();
        // Every page's word is looked at: a resident page missing from the
        // index would be found by no scan.
        for page in pages.clone() {
            let state = self.states.state(page);
            if state == State::Filling && !self.claims.filling(page) {
                return Err(format!("page {page} filling with no fill claim"));
            }
            let resident = matches!(state, State::Protected | State::Writable);
            if resident != self.bits.get(RESIDENT, page) {
                return Err(format!("page {page} {state:?} but indexed otherwise"));
            }
        }
        let mut marked: Vec<u64> = [RESIDENT, DIRTY, POISONED, WRITEBACK]
            .into_iter()
            .flat_map(|map| self.bits.ones(map, pages.clone()))
            .collect();
        marked.sort_unstable();
        marked.dedup();
        for page in marked {
            let r = self.residency(page);
            if r == Residency::Writable && self.in_writeback(page) {
                return Err(format!("page {page} writable in writeback"));
            }
            if r == Residency::Writable && !self.is_dirty(page) {
                return Err(format!("page {page} writable but clean"));
            }
            if r == Residency::Writable && self.missing_blocks(page).is_some() {
                return Err(format!("page {page} writable with unallocated blocks"));
            }
            if r == Residency::Absent && self.is_dirty(page) {
                return Err(format!("page {page} absent but dirty"));
            }
            if r != Residency::Absent && self.past_eof(page) {
                return Err(format!("page {page} resident past EOF {}", self.eof));
            }
            if self.is_poisoned(page) && (r != Residency::Absent || !self.past_eof(page)) {
                return Err(format!("page {page} poisoned but {r:?} below EOF {}", self.eof));
            }
        }
        Ok(())
    }
}

impl Drop for Flags {
    /// The mapping's memory goes with its flags: its pages leave the budget.
    fn drop(&mut self) {
        if let Some(meter) = &self.meter {
            meter.fetch_sub(self.resident_count() * self.geo.page, Ordering::SeqCst);
        }
    }
}

/// The granularity of the zeroed bits: a page's share of a block.
fn unit(geo: &Geometry) -> u64 {
    geo.page.min(geo.block)
}

fn units(geo: &Geometry) -> u64 {
    geo.capacity / unit(geo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(block: u64, eof: u64) -> Flags {
        Flags::new(Geometry::new(4096, block, 64 * 1024).unwrap(), eof, &[]).unwrap()
    }

    #[test]
    fn a_read_fill_is_protected_and_clean() {
        let mut f = flags(1024, 10000);
        f.filled_for_read(0);
        assert_eq!(f.residency(0), Residency::Protected);
        assert!(!f.is_dirty(0));
        f.check().unwrap();
    }

    #[test]
    fn a_write_needs_every_block_below_eof() {
        let mut f = flags(1024, 5000);
        assert_eq!(f.missing_blocks(1), Some(4..5));
        f.mark_allocated(4..5);
        assert_eq!(f.missing_blocks(1), None);
        f.granted_write(1);
        assert_eq!(f.residency(1), Residency::Writable);
        assert!(f.is_dirty(1));
        f.check().unwrap();
    }

    #[test]
    fn a_block_allocated_from_a_hole_reads_as_zeros_until_a_page_over_it_is_in_memory() {
        let mut f = flags(16384, 64 * 1024); // four pages a block
        f.mark_allocated(0..1);
        assert!(!f.reads_as_zeros(0), "a block the store reported may hold data");
        f.mark_allocated_from_holes(0..2);
        assert!(!f.reads_as_zeros(0), "it was allocated already");
        assert!(f.reads_as_zeros(4) && f.reads_as_zeros(7));
        f.granted_write(5);
        assert!(!f.reads_as_zeros(5), "page 5 may have put data in its share");
        assert!(f.reads_as_zeros(4), "page 4's share of the block is untouched");
        assert!(f.reads_as_zeros(8), "the next block is a hole");
        f.forget_allocated(1..2);
        f.mark_allocated(1..2);
        assert!(!f.reads_as_zeros(4), "reported by the store: may hold data");
        let mut small = flags(1024, 64 * 1024); // four blocks a page
        small.mark_allocated(1..2);
        small.mark_allocated_from_holes(0..8);
        assert!(!small.reads_as_zeros(0), "block 1 held data");
        assert!(small.reads_as_zeros(1));
        small.filled_for_read(1);
        assert!(!small.reads_as_zeros(1));
    }

    #[test]
    fn missing_blocks_cover_only_the_gaps() {
        let mut f = flags(1024, 8192);
        f.mark_allocated(0..1);
        f.mark_allocated(3..4);
        assert_eq!(f.missing_blocks(0), Some(1..3));
        f.mark_allocated(1..3);
        assert_eq!(f.missing_blocks(0), None);
    }

    #[test]
    fn growing_eof_makes_a_writable_page_need_blocks_again() {
        // Seed 000: EOF 1024, page 0 written with block 0 only.
        let mut f = flags(1024, 1024);
        f.mark_allocated(0..1);
        f.granted_write(0);
        f.set_eof(10000);
        assert_eq!(f.missing_blocks(0), Some(1..4));
        assert!(f.check().is_err(), "rule 1 must flag the straddling page");
        f.protected(0);
        f.check().unwrap();
        assert!(f.is_dirty(0), "re-protecting keeps the dirty mark");
    }

    #[test]
    fn flush_cleans_and_protects_and_failure_redirties() {
        let mut f = flags(4096, 8192);
        f.mark_allocated(0..1);
        f.granted_write(0);
        assert_eq!(f.dirty_pages(0..16), vec![0]);
        f.cleaned(0);
        assert_eq!(f.residency(0), Residency::Protected);
        assert!(f.dirty_pages(0..16).is_empty());
        f.redirty(0);
        assert_eq!(f.dirty_pages(0..16), vec![0]);
        f.check().unwrap();
    }

    #[test]
    fn a_page_in_writeback_is_clean_and_counts_as_lost_if_it_vanishes() {
        let mut f = flags(4096, 3 * 4096);
        f.mark_allocated(0..3);
        f.granted_write(0);
        f.granted_write(1);
        f.start_writeback(0);
        f.start_writeback(1);
        assert!(f.in_writeback(0) && !f.is_dirty(0));
        assert_eq!(f.residency(0), Residency::Protected);
        f.check().unwrap();
        f.vanished(1);
        f.redirty(1);
        assert!(!f.is_dirty(1), "a vanished page is not dirty again");
        f.written_back(0);
        f.written_back(1);
        assert!(!f.in_writeback(0));
        assert_eq!(f.take_lost(), vec![4096..8192], "only the page that vanished");
        f.check().unwrap();
    }

    #[test]
    fn flush_writes_allocated_blocks_whatever_eof_says() {
        let mut f = flags(1024, 1024);
        f.mark_allocated(0..1);
        f.mark_allocated(2..3);
        assert_eq!(f.allocated_bytes(0), vec![0..1024, 2048..3072]);
        let mut big = flags(16384, 100);
        big.mark_allocated(0..1);
        assert_eq!(big.allocated_bytes(3), vec![12288..16384]);
    }

    #[test]
    fn a_vanished_dirty_page_is_recorded_as_lost_up_to_eof() {
        let mut f = flags(1024, 9000);
        f.mark_allocated(0..9);
        f.granted_write(1);
        f.granted_write(2);
        f.filled_for_read(0);
        f.vanished(0);
        f.vanished(1);
        f.vanished(2);
        assert_eq!(
            f.take_lost(),
            vec![4096..9000],
            "clean page 0 lost nothing; 1 and 2 merge, clipped at EOF"
        );
        assert!(f.take_lost().is_empty(), "reported once");
        assert_eq!(f.resident_count(), 0);
        f.check().unwrap();
    }

    #[test]
    fn regrowing_keeps_every_flag_below_the_old_capacity() {
        let mut f = flags(1024, 9000);
        f.mark_allocated(0..9);
        f.granted_write(1);
        f.filled_for_read(2);
        f.set_locked(2..3, true);
        f.poisoned(10);
        let g = f.regrown(Geometry::new(4096, 1024, 256 * 1024).unwrap()).unwrap();
        assert_eq!((g.residency(1), g.is_dirty(1)), (Residency::Writable, true));
        assert_eq!(g.residency(2), Residency::Protected);
        assert!(g.is_locked(2) && g.is_allocated(8) && !g.is_allocated(9));
        assert!(g.poisoned_pages(0..64).is_empty(), "the new memory has no poison");
        assert_eq!(g.residency(63), Residency::Absent);
        g.check().unwrap();
    }

    #[test]
    fn the_clock_gives_referenced_pages_a_second_chance_and_skips_locked_ones() {
        let mut f = flags(4096, 64 * 1024);
        f.mark_allocated(0..16);
        for p in 0..8 {
            f.filled_for_read(p); // referenced by the fill
        }
        f.set_locked(2..3, true);
        let mut hand = 0;
        assert!(
            f.clock_victims(&mut hand, 4).is_empty(),
            "first pass: every page referenced"
        );
        assert_eq!(hand, 8);
        f.granted_write(5); // written since: referenced again
        let victims = f.clock_victims(&mut hand, 4);
        assert_eq!(victims, vec![0, 1, 3, 4], "2 is locked");
        for p in victims {
            f.dropped(p);
        }
        assert_eq!(
            f.clock_victims(&mut hand, 4),
            vec![6, 7],
            "5 was written: a second chance"
        );
        assert_eq!(f.clock_victims(&mut hand, 4), vec![5, 6, 7], "its chance is used");
    }

    #[test]
    fn a_page_faulting_back_soon_after_eviction_is_passed_over_longer() {
        let mut f = flags(4096, 64 * 1024);
        f.mark_allocated(0..16);
        f.filled_for_read(0);
        f.filled_for_read(1);
        f.evicted(1); // as eviction marks it...
        f.dropped(1);
        f.filled_for_read(1); // ...and it came back: hot
        let mut hand = 0;
        assert!(
            f.clock_victims(&mut hand, 2).is_empty(),
            "both referenced by their fill"
        );
        assert_eq!(f.clock_victims(&mut hand, 2), vec![0], "1 is hot");
        assert_eq!(f.clock_victims(&mut hand, 2), vec![0], "1 cooled by one mark");
        assert_eq!(f.clock_victims(&mut hand, 2), vec![0, 1], "and now it may go");
        let mut g = flags(4096, 64 * 1024);
        g.evicted(3);
        g.forget_evicted(3);
        g.filled_for_read(3);
        assert!(g.clock_victims(&mut hand, 1).is_empty(), "referenced by its fill");
        assert_eq!(
            g.clock_victims(&mut hand, 1),
            vec![3],
            "forgotten: an ordinary page"
        );
    }

    #[test]
    fn poison_lives_only_past_eof() {
        let mut f = flags(1024, 4096);
        f.poisoned(3);
        f.check().unwrap();
        assert_eq!(f.poisoned_pages(0..16), vec![3]);
        f.set_eof(16384);
        assert!(f.check().is_err(), "EOF moved over a poisoned page");
        f.unpoisoned(3);
        f.check().unwrap();
    }

    #[test]
    fn dropping_and_range_queries() {
        let mut f = flags(1024, 64 * 1024);
        f.mark_allocated(0..64);
        for p in [1, 3, 5] {
            f.granted_write(p);
        }
        f.filled_for_read(7);
        assert_eq!(f.dirty_pages(2..6), vec![3, 5]);
        assert_eq!(f.resident_pages(0..16, |_, dirty| !dirty), vec![7]);
        f.dropped(3);
        assert_eq!(f.residency(3), Residency::Absent);
        assert_eq!(f.dirty_count(), 2);
        assert_eq!(f.resident_count(), 3);
        f.forget_allocated(60..1000);
        assert_eq!(f.allocated_blocks(), 60);
    }
}
