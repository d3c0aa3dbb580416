//! Changes to the file's layout: length (DESIGN rules 5 and 6), holes, and
//! eviction of clean pages. Each holds the layout lock exclusively.

use std::io;
use std::ops::Range;

use crate::engine::Engine;
use crate::error::{Error, Result, out_of_range};
use crate::flags::{Flags, Residency};
use crate::geometry::intersect;

impl Engine {
    pub fn set_len(&self, new: u64) -> Result<()> {
        if new > self.geo.capacity {
            return Err(Error::BeyondCapacity {
                len: new,
                capacity: self.geo.capacity,
            });
        }
        let _layout = self.layout_exclusive();
        let mut flags = self.lock_flags_settled();
        let old = flags.eof();
        if new > old {
            self.grow(&mut flags, old, new)
        } else if new < old {
            self.shrink(&mut flags, old, new)
        } else {
            // Same length: still set it, so a file another process resized
            // gets the mapping's length back (Error::LengthChanged).
            Ok(self.store.set_len(new)?)
        }
    }

    /// Rule 5: the bytes of the old EOF page past old EOF become file data and
    /// must read as zero. Rule 6: if that page now needs blocks it lacks, it is
    /// protected again so its next write allocates them.
    fn grow(&self, flags: &mut Flags, old: u64, new: u64) -> Result<()> {
        let page = self.geo.page_of(old);
        let within = old % self.geo.page;
        let straddles = within != 0 && flags.residency(page) != Residency::Absent;
        if straddles {
            // Protect first: a concurrent writer now faults and waits for the
            // flags lock, so no byte can land in the tail between the zeroing
            // below and EOF moving, where no block would be allocated for it.
            self.protect(flags, &[page])?;
        }
        // Pages an access past EOF poisoned become file data: clear the marks
        // first (a thread touching one meanwhile faults and waits for the lock).
        self.unpoison(flags, self.geo.page_of(old)..new.div_ceil(self.geo.page))?;
        self.store.set_len(new)?;
        self.set_eof(flags, new);
        if !straddles {
            return Ok(());
        }
        let tail = within..(new - page * self.geo.page).min(self.geo.page);
        if !self.is_zero(flags, page, &tail)? {
            self.zero_within(flags, page, tail.start as usize..tail.end as usize, false)?;
        }
        Ok(())
    }

    /// Rule 6, downwards: pages past the new EOF are dropped, the tail of the
    /// new last page is zeroed, and the store frees the blocks.
    fn shrink(&self, flags: &mut Flags, old: u64, new: u64) -> Result<()> {
        self.store.set_len(new)?;
        self.set_eof(flags, new);
        flags.forget_allocated(new.div_ceil(self.geo.block)..u64::MAX);
        let gone = new.div_ceil(self.geo.page)..old.div_ceil(self.geo.page);
        let dead = flags.resident_pages(gone.clone(), |_, _| true);
        self.discard(flags, &dead)?;
        if self.kernel_dirty && !gone.is_empty() {
            // Absent pages there may carry the write-protect markers of a
            // scan (`kernel_dirty.rs`); an access past EOF must find none.
            let len = ((gone.end - gone.start) * self.geo.page) as usize;
            self.region.discard(self.page_offset(gone.start), len)?;
        }
        let page = self.geo.page_of(new);
        let within = new % self.geo.page;
        if within != 0 && flags.residency(page) != Residency::Absent {
            let tail = within..self.geo.page;
            if !self.is_zero(flags, page, &tail)? {
                self.zero_within(flags, page, within as usize..self.geo.page as usize, false)?;
            }
        }
        self.space_freed()
    }

    /// Blocks were freed: fenced accesses may succeed now, and faults
    /// waiting for space retry.
    pub fn space_freed(&self) -> Result<()> {
        self.lift_all_fences()?;
        self.ring();
        Ok(())
    }

    /// Whether `range` of the resident `page` is all zeros; a page found gone
    /// from memory is not (so the caller rewrites it from the store).
    fn is_zero(&self, flags: &mut Flags, page: u64, range: &Range<u64>) -> io::Result<bool> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        Ok(self.copy_resident(flags, page, range.clone(), &mut buf)? && buf.iter().all(|&b| b == 0))
    }

    /// Zeroes `[offset, offset + len)` below EOF in memory and frees the blocks
    /// wholly inside it in the store; partly covered blocks keep their space
    /// and get their zeros at the next flush.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        let end = self
            .geo
            .end_within_capacity("punch_hole beyond the mapping's capacity", offset, len)?;
        let _layout = self.layout_exclusive();
        let mut flags = self.lock_flags_settled();
        let eof = flags.eof();
        let end = end.min(eof);
        if offset >= end {
            return Ok(());
        }
        // The block holding EOF may go whole if the hole reaches EOF.
        let reach = if end == eof {
            eof.div_ceil(self.geo.block) * self.geo.block
        } else {
            end
        };
        let holes = self.geo.blocks_inside(&(offset..reach));
        if !holes.is_empty() {
            self.store.deallocate(holes.clone())?;
            flags.forget_allocated(holes.clone());
        }
        let freed = holes.start * self.geo.block..holes.end * self.geo.block;
        for page in self.geo.pages_overlapping(&(offset..end)) {
            self.punch_page(&mut flags, page, &(offset..end), &freed)?;
        }
        self.space_freed()
    }

    fn punch_page(&self, flags: &mut Flags, page: u64, zero: &Range<u64>, freed: &Range<u64>) -> Result<()> {
        let bytes = self.geo.page_bytes(page);
        let live = bytes.start..bytes.end.min(flags.eof());
        if freed.start <= live.start && live.end <= freed.end {
            // Nothing of this page is left in the store: refilling reads zeros.
            if flags.residency(page) != Residency::Absent {
                self.discard(flags, &[page])?;
            }
            return Ok(());
        }
        let part = intersect(zero, &bytes);
        let touches_data = self.geo.blocks_overlapping(&part).any(|b| flags.is_allocated(b));
        if flags.residency(page) == Residency::Absent && !touches_data {
            return Ok(());
        }
        let local = (part.start - bytes.start) as usize..(part.end - bytes.start) as usize;
        self.zero_within(flags, page, local, touches_data)?;
        Ok(())
    }

    /// Drops every clean resident page that is not locked; they refill from
    /// the store when touched.
    pub fn evict(&self) -> Result<()> {
        let _layout = self.layout_exclusive();
        let mut flags = self.lock_flags_settled();
        let mut clean = flags.resident_pages(0..self.geo.pages(), |_, dirty| !dirty);
        clean.retain(|&p| !flags.is_locked(p));
        self.discard(&mut flags, &clean)?;
        Ok(())
    }

    /// Allocates the blocks under `[offset, offset + len)` (within EOF), like
    /// `fallocate`. Returns how many bytes from `offset` are reserved on failure.
    pub fn reserve(&self, offset: u64, len: u64) -> std::result::Result<(), (u64, Error)> {
        // EOF is checked under the layout lock: a shrink cannot then slip in
        // between and leave blocks allocated past EOF that nothing frees.
        let _layout = self.layout_shared();
        let eof = self.lock_flags().eof();
        if offset.checked_add(len).is_none_or(|end| end > eof) {
            return Err((
                0,
                out_of_range("reserve beyond the end of the file", offset, len, eof),
            ));
        }
        let blocks = self.geo.blocks_overlapping(&(offset..offset + len));
        let chunk = ((1 << 20) / self.geo.block).max(1);
        let mut start = blocks.start;
        while start < blocks.end {
            let end = (start + chunk).min(blocks.end);
            let mut flags = self.lock_flags();
            let missing = crate::store::runs((start..end).filter(|&b| !flags.is_allocated(b)));
            for run in missing {
                if self.allocate(&mut flags, run.clone()).is_ok() {
                    continue;
                }
                // Block by block after a failure, so the count is exact.
                for b in run {
                    if let Err(f) = self.allocate(&mut flags, b..b + 1) {
                        let done = (b * self.geo.block).saturating_sub(offset).min(len);
                        return Err((
                            done,
                            f.into_error(|| Error::Io(io::Error::other("reserve: page past EOF"))),
                        ));
                    }
                }
            }
            start = end;
        }
        Ok(())
    }
}
