//! Dirty tracking by the kernel ([`DirtyTracking::Kernel`](crate::DirtyTracking::Kernel)):
//! the userfaultfd resolves write-protect faults itself (`WP_ASYNC`), so
//! writes to resident pages never reach mkwrite; a flush asks the kernel
//! which pages were written (`PAGEMAP_SCAN`, which protects them again).
//!
//! Rule 1 (no write without its blocks) then rests on residency alone: a
//! page is never in memory unless every block of it below EOF is
//! allocated (`Engine::fillable`, `claims.rs` allocating for a read). What
//! depends on stopping a writer for a moment (copy, drop, reinstall) cannot
//! be done; this file says what replaces it, and what is refused.

use std::io;
use std::ops::Range;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::flags::{Flags, Residency};
use crate::sys;

/// Refuses the options this mode cannot keep safe: blocks smaller than a
/// page (the page straddling EOF would need new blocks while it is in
/// memory and writable) and a budget (eviction must find a page clean and
/// drop it with no write in between).
pub(crate) fn check_options(block: u64, budget: bool) -> Result<()> {
    if block < sys::page_size() {
        return Err(Error::NotWithKernelDirtyTracking(
            "a block size smaller than the page size",
        ));
    }
    if budget {
        return Err(Error::NotWithKernelDirtyTracking("a memory budget"));
    }
    Ok(())
}

impl Engine {
    /// Asks the kernel which of `pages` (clipped to EOF) were written since
    /// last protected, protects them again, and marks those the flags call
    /// resident dirty. The rest it reports are absent pages, which read as
    /// written until a scan leaves a marker on them: nothing to write there.
    /// Runs with the layout lock held, so EOF stays put. On an error the
    /// kernel may have protected pages it did not report: every resident
    /// page of the range counts as written.
    pub fn collect_written(&self, pages: Range<u64>) -> io::Result<()> {
        let end = pages.end.min(
            self.eof
                .load(std::sync::atomic::Ordering::Acquire)
                .div_ceil(self.geo.page),
        );
        if !self.kernel_dirty || pages.start >= end {
            return Ok(());
        }
        let mut written = Vec::new();
        let base = self.region.base();
        let addr = |p: u64| base + p * self.geo.page;
        let scanned = sys::take_written(addr(pages.start), addr(end), &mut written);
        let mut flags = self.lock_flags();
        if scanned.is_err() {
            written.clear();
            written.push(addr(pages.start)..addr(end));
        }
        for range in written {
            for p in (range.start - base) / self.geo.page..(range.end - base).div_ceil(self.geo.page) {
                // A page being filled is in memory before the flags say so,
                // and any thread may write it then (the kernel lets it): wait
                // for the fill to be recorded, so the write is not lost.
                while flags.filling(p) {
                    flags = self.wait_for_fill(flags, p);
                }
                match flags.residency(p) {
                    Residency::Absent => {}
                    Residency::Writable => flags.protected(p),
                    Residency::Protected => {
                        flags.redirty(p);
                        self.counters.found_written();
                    }
                }
            }
        }
        scanned
    }

    /// Zeroes the bytes `within` of `page`; `dirty`: the zeros must reach
    /// the store. With faults tracking writes, by [`Engine::rewrite`]. With
    /// the kernel tracking them a writer cannot be held off, so a resident
    /// page is zeroed in place through `/proc/self/mem` (a write between a
    /// copy and its reinstall would be lost); one found gone is rewritten.
    pub fn zero_within(
        &self,
        flags: &mut Flags,
        page: u64,
        within: Range<usize>,
        dirty: bool,
    ) -> io::Result<()> {
        if self.kernel_dirty && flags.residency(page) != Residency::Absent {
            let zeros = vec![0u8; within.len()];
            if self
                .region
                .write_resident(self.page_offset(page) + within.start, &zeros)?
            {
                // The kernel marks the page written, so a flush finds it
                // anyway; the flags say so now for `stats`.
                if dirty {
                    flags.redirty(page);
                }
                return Ok(());
            }
            self.vanished(flags, page);
        }
        self.rewrite(flags, page, dirty, |buf| buf[within].fill(0))
    }
}
