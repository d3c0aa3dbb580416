//! Write-back by flags (DESIGN rule 4): for each dirty page, clear its dirty
//! mark and write-protect it; then write its allocated blocks to the store,
//! coalesced, and sync. EOF plays no part, and nothing is allocated.
//!
//! The store gets the bytes one of two ways. A store that may be handed the
//! mapping's own memory ([`Store::writes_from_mapping`](crate::Store::writes_from_mapping))
//! gets it, with nothing copied: its pages are marked in *writeback*, and
//! writes to them wait until the flush is done with them (`claims.rs`), as
//! the kernel's stable pages do. With the kernel tracking writes
//! (`kernel_dirty.rs`) writes to resident pages cannot be held off: the
//! store gets the memory as [`LiveBytes`](crate::store::LiveBytes), which
//! may change while it is written, and a racing write is the next flush's. Any other store gets copies taken under the
//! flags lock through `/proc/self/mem`, which never faults; so does
//! eviction, which a fault service worker may run: a write from the mapping
//! can meet a page dropped behind the mapping's back, and only a worker
//! serves that fault.

use std::ops::Range;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::flags::{Flags, Residency};
use crate::geometry::intersect;
use crate::stats::Timer;

/// Bytes taken under one hold of the flags lock: the lock is never held
/// long, and a write to a page in writeback waits for at most this much.
const BATCH_BYTES: u64 = 4 << 20;

/// How a flush hands the store the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The mapping's memory, its pages in writeback meanwhile.
    Mapping,
    /// Copies taken under the flags lock.
    Copies,
}

/// Dirty pages a flush took, and what to write for them.
struct Batch {
    /// Clean and protected now (and in writeback, from the mapping).
    pages: Vec<u64>,
    /// Coalesced byte ranges, at the same offsets in the file and the mapping.
    writes: Vec<Range<u64>>,
    /// The bytes of `writes`, one after another, when copied.
    copies: Option<Vec<u8>>,
    /// The page after the last one this batch looked at.
    resume: u64,
}

impl Batch {
    fn new(source: Source, bytes: usize) -> Batch {
        Batch {
            pages: Vec::new(),
            writes: Vec::new(),
            copies: (source == Source::Copies).then(|| Vec::with_capacity(bytes)),
            resume: 0,
        }
    }

    /// Adds `range` to write (and its `copy`, when copied).
    fn push(&mut self, range: Range<u64>, copy: Option<&[u8]>) {
        if let (Some(copies), Some(copy)) = (&mut self.copies, copy) {
            copies.extend_from_slice(copy);
        }
        match self.writes.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.writes.push(range),
        }
    }
}

impl Engine {
    /// Flushes the dirty pages among `pages` and syncs the store. On error the
    /// pages it took are dirty again, so the next flush writes them.
    ///
    /// Dirty pages found dropped from memory behind the mapping's back are
    /// reported once, as [`Error::Discarded`], after everything else is durable.
    pub fn flush(&self, pages: Range<u64>) -> Result<()> {
        self.flush_runs(std::slice::from_ref(&pages))
    }

    /// [`flush`](Self::flush) of several runs of pages, with one sync.
    pub fn flush_runs(&self, runs: &[Range<u64>]) -> Result<()> {
        let _layout = self.layout_shared();
        // One flush at a time: a page another flush has taken but not yet
        // synced must not let this one return early.
        let _serial = self.flush_serial();
        let source = match self.store.writes_from_mapping() {
            true => Source::Mapping,
            false => Source::Copies,
        };
        self.flush_held(runs, source)
    }

    /// [`flush_runs`](Self::flush_runs) for eviction, from copies; it never
    /// waits for a flush or a layout change in progress (the caller may be
    /// the fault service, and that flush may be waiting for it) and flushes
    /// nothing then: the dirty pages stay, and are not evicted.
    pub fn flush_for_eviction(&self, runs: &[Range<u64>]) -> Result<()> {
        let (Some(_layout), Some(_serial)) = (self.try_layout_shared(), self.try_flush_serial()) else {
            return Ok(());
        };
        self.flush_held(runs, Source::Copies)
    }

    fn flush_held(&self, runs: &[Range<u64>], source: Source) -> Result<()> {
        // A page a fill installed writable may hold writes before the fill
        // records it dirty; wait for such fills in flight now.
        self.wait_for_writable_fills();
        for pages in runs {
            self.collect_written(pages.clone())?;
        }
        let mut taken: Vec<u64> = Vec::new();
        let mut written = 0u64;
        let result = self.write_runs(runs, source, &mut taken, &mut written);
        let result = result.and_then(|()| Ok(self.counters.timed(Timer::StoreSync, || self.store.sync())?));
        if result.is_err() {
            // errseq-style loss is what this library exists to avoid: a failed
            // write or sync leaves the data dirty in memory, not dropped.
            let mut flags = self.lock_flags();
            for &p in &taken {
                flags.redirty(p);
            }
        } else {
            self.counters.flushed(written);
        }
        result?;
        let lost = self.lock_flags().take_lost();
        if lost.is_empty() {
            Ok(())
        } else {
            Err(Error::Discarded { ranges: lost })
        }
    }

    /// Takes and writes the dirty pages of `runs`, batch by batch; `taken`
    /// and `written` say how far it got.
    fn write_runs(
        &self,
        runs: &[Range<u64>],
        source: Source,
        taken: &mut Vec<u64>,
        written: &mut u64,
    ) -> Result<()> {
        for pages in runs {
            let mut next = pages.start;
            while let Some(batch) = self.take_dirty(next..pages.end, source)? {
                next = batch.resume;
                taken.extend_from_slice(&batch.pages);
                let wrote = self.write_batch(&batch);
                if source == Source::Mapping {
                    self.written_back(&batch.pages);
                }
                *written += wrote?;
            }
        }
        Ok(())
    }

    /// Takes up to [`BATCH_BYTES`] of dirty pages: protect, mark clean, and
    /// mark in writeback or copy.
    fn take_dirty(&self, pages: Range<u64>, source: Source) -> Result<Option<Batch>> {
        let mut flags = self.lock_flags();
        let mut dirty = flags.dirty_pages(pages.clone());
        if dirty.is_empty() {
            return Ok(None);
        }
        dirty.truncate((BATCH_BYTES / self.geo.page).max(1) as usize);
        // Protect before copying or writing: a write after this faults (and
        // waits for the writeback, or re-dirties the page after its copy),
        // so it is in this flush or the next, never lost.
        self.protect(&mut flags, &dirty)?;
        let mut batch = Batch::new(source, (dirty.len() as u64 * self.geo.page) as usize);
        batch.resume = dirty.last().map_or(pages.end, |p| p + 1);
        match source {
            Source::Mapping => {
                for page in dirty {
                    flags.start_writeback(page);
                    flags
                        .allocated_bytes(page)
                        .into_iter()
                        .for_each(|r| batch.push(r, None));
                    batch.pages.push(page);
                }
            }
            Source::Copies => {
                if let Err(e) = self.copy_dirty(&mut flags, &dirty, &mut batch) {
                    // The pages copied so far were marked clean: dirty again.
                    batch.pages.iter().for_each(|&p| flags.redirty(p));
                    return Err(e);
                }
            }
        }
        Ok(Some(batch))
    }

    /// Copies the allocated bytes of the `dirty` pages into `batch` and
    /// marks them clean: runs of wholly allocated pages with one read each
    /// (a copy through `/proc/self/mem` costs a system call), other pages
    /// one by one. A page found gone is recorded lost and left out.
    fn copy_dirty(&self, flags: &mut Flags, dirty: &[u64], batch: &mut Batch) -> Result<()> {
        let whole = |flags: &Flags, p: u64| flags.allocated_bytes(p) == [self.geo.page_bytes(p)];
        let mut page_copy = vec![0u8; self.geo.page as usize];
        let mut i = 0;
        while i < dirty.len() {
            let first = dirty[i];
            let run = dirty[i..]
                .iter()
                .zip(first..)
                .take_while(|&(&p, q)| p == q && whole(flags, p))
                .count();
            if run == 0 {
                let ranges = flags.allocated_bytes(first);
                if self.copy_page(flags, first, &ranges, &mut page_copy)? {
                    flags.cleaned(first);
                    for r in ranges {
                        let within = self.within_page(first, &r);
                        batch.push(r, Some(&page_copy[within]));
                    }
                    batch.pages.push(first);
                }
                i += 1;
                continue;
            }
            let copies = batch.copies.as_mut().expect("a batch of copies");
            let at = copies.len();
            let len = run * self.geo.page as usize;
            copies.resize(at + len, 0);
            let got = self
                .region
                .read_resident(self.page_offset(first), &mut copies[at..])?;
            let pages = (got / self.geo.page as usize) as u64;
            copies.truncate(at + (pages * self.geo.page) as usize);
            if pages > 0 {
                let bytes = first * self.geo.page..(first + pages) * self.geo.page;
                batch.push(bytes, None);
            }
            for p in first..first + pages {
                flags.cleaned(p);
                batch.pages.push(p);
            }
            if pages < run as u64 {
                // The copy stopped at a page dropped behind our back: lost.
                self.vanished(flags, first + pages);
                i += pages as usize + 1;
            } else {
                i += run;
            }
        }
        Ok(())
    }

    /// Copies the `ranges` of `page` into `out` (at their places in the
    /// page) without faulting; false if the page is gone (then recorded lost).
    fn copy_page(&self, flags: &mut Flags, page: u64, ranges: &[Range<u64>], out: &mut [u8]) -> Result<bool> {
        for r in ranges {
            let within = self.within_page(page, r);
            let at = within.start as u64..within.end as u64;
            if !self.copy_resident(flags, page, at, &mut out[within])? {
                return Ok(false);
            }
        }
        Ok(flags.residency(page) != Residency::Absent)
    }

    /// Where the bytes `r` of `page` lie within it.
    fn within_page(&self, page: u64, r: &Range<u64>) -> Range<usize> {
        let start = page * self.geo.page;
        (r.start - start) as usize..(r.end - start) as usize
    }

    /// Writes `batch` to the store; returns the bytes written.
    fn write_batch(&self, batch: &Batch) -> Result<u64> {
        let mut at = 0usize;
        for range in &batch.writes {
            let len = (range.end - range.start) as usize;
            match &batch.copies {
                Some(data) => self.store_write(range.start, &data[at..at + len])?,
                None => self.write_from_mapping(range.clone())?,
            }
            at += len;
        }
        Ok(at as u64)
    }

    fn store_write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.counters
            .timed(Timer::StoreWrite, || self.store.write_at(offset, data))
    }

    /// Writes the bytes `range` of the mapping, its pages in writeback.
    #[allow(unsafe_code)]
    fn write_from_mapping(&self, range: Range<u64>) -> Result<()> {
        let len = (range.end - range.start) as usize;
        let wrote = if self.kernel_dirty {
            // Writers are not held off (the kernel lets them through), so the
            // store gets bytes that may change: a write racing this one
            // marks its page written again, and the next flush rewrites it.
            let data = self.region.live(range.start as usize, len);
            self.counters
                .timed(Timer::StoreWrite, || self.store.write_live(range.start, data))
        } else {
            // SAFETY: the pages under `range` are write-protected and in
            // writeback: every write to them (a fault, a checked call) waits
            // until `written_back`, and layout changes and eviction wait for
            // this flush's locks, so nothing of the mapping's changes them while
            // the store reads them. Only the user may drop them behind the
            // mapping's back (`madvise`); the store reads them inside system
            // calls only (`Store::writes_from_mapping`), which then fault in the
            // kernel (the fault service fills the page) or fail with `EFAULT`.
            let data = unsafe { self.region.bytes(range.start as usize, len) };
            self.store_write(range.start, data)
        };
        match wrote {
            // With in-thread delivery a system call gets `EFAULT` for a page
            // that is gone; a store may take no `LiveBytes`: write from
            // copies, which find a gone page.
            Err(e)
                if e.raw_os_error() == Some(libc::EFAULT)
                    || (self.kernel_dirty && e.kind() == std::io::ErrorKind::Unsupported) =>
            {
                self.write_copied(range)
            }
            other => Ok(other?),
        }
    }

    /// Writes the bytes `range` of pages in writeback from copies; a page
    /// gone from memory is recorded lost (it was in writeback) and skipped.
    fn write_copied(&self, range: Range<u64>) -> Result<()> {
        let mut batch = Batch::new(Source::Copies, (range.end - range.start) as usize);
        {
            let mut flags = self.lock_flags();
            let mut page_copy = vec![0u8; self.geo.page as usize];
            for page in self.geo.pages_overlapping(&range) {
                let part = intersect(&self.geo.page_bytes(page), &range);
                if self.copy_page(&mut flags, page, std::slice::from_ref(&part), &mut page_copy)? {
                    batch.push(part.clone(), Some(&page_copy[self.within_page(page, &part)]));
                }
            }
        }
        self.write_batch(&batch).map(drop)
    }

    /// The flush is done with `pages`: writes to them go on.
    fn written_back(&self, pages: &[u64]) {
        let parked = {
            let mut flags = self.lock_flags();
            for &p in pages {
                flags.written_back(p);
            }
            self.claim_events.ended();
            flags.take_writer_parked()
        };
        if parked {
            // Writes the fault service parked try again.
            self.ring();
        }
    }
}
