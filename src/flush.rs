//! Write-back by flags (DESIGN rule 4): for each dirty page, clear its dirty
//! mark, write-protect it, copy its allocated blocks; then write the copies to
//! the store, coalesced, and sync. EOF plays no part, and nothing is allocated.

use std::ops::Range;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::flags::Flags;
use crate::stats::Timer;

/// Bytes copied under one hold of the flags lock, so the handler is never
/// kept waiting for long.
const STAGE_BYTES: u64 = 4 << 20;

/// Copies of dirty pages taken under the lock, waiting to be written.
struct Stage {
    data: Vec<u8>,
    /// (file offset, range in `data`) of each coalesced write.
    writes: Vec<(u64, Range<usize>)>,
    pages: Vec<u64>,
    /// The page after the last one this batch looked at.
    resume: u64,
}

impl Stage {
    fn push(&mut self, offset: u64, bytes: &[u8]) {
        let at = self.data.len();
        self.data.extend_from_slice(bytes);
        match self.writes.last_mut() {
            Some((start, r)) if *start + r.len() as u64 == offset && r.end == at => r.end += bytes.len(),
            _ => self.writes.push((offset, at..at + bytes.len())),
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
        // A page a fill installed writable may hold writes before the fill
        // records it dirty; wait for such fills in flight now.
        self.wait_for_writable_fills();
        let mut taken: Vec<u64> = Vec::new();
        let mut written = 0u64;
        let mut result = Ok(());
        for pages in runs {
            let mut next = pages.start;
            result = loop {
                let stage = {
                    let mut flags = self.lock_flags();
                    match self.take_dirty(&mut flags, next..pages.end) {
                        Ok(Some(stage)) => stage,
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                next = stage.resume;
                taken.extend_from_slice(&stage.pages);
                if let Err(e) = self.write_stage(&stage) {
                    break Err(e);
                }
                written += stage.data.len() as u64;
            };
            if result.is_err() {
                break;
            }
        }
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

    /// Takes up to [`STAGE_BYTES`] of dirty pages: protect, mark clean, copy.
    fn take_dirty(&self, flags: &mut Flags, pages: Range<u64>) -> Result<Option<Stage>> {
        let mut batch = flags.dirty_pages(pages.clone());
        if batch.is_empty() {
            return Ok(None);
        }
        batch.truncate((STAGE_BYTES / self.geo.page).max(1) as usize);
        // Protect before copying: a write after this faults and re-dirties the
        // page, so it is in this copy or in the next flush, never lost.
        self.protect(flags, &batch)?;
        let mut stage = Stage {
            data: Vec::with_capacity((batch.len() as u64 * self.geo.page) as usize),
            writes: Vec::new(),
            pages: Vec::with_capacity(batch.len()),
            resume: batch.last().map_or(pages.end, |p| p + 1),
        };
        let mut buf = vec![0u8; self.geo.page as usize];
        for &page in &batch {
            let page_start = page * self.geo.page;
            let mut copies = Vec::new();
            for bytes in flags.allocated_bytes(page) {
                let within = bytes.start - page_start..bytes.end - page_start;
                let out = &mut buf[within.start as usize..within.end as usize];
                if !self.copy_resident(flags, page, within, out)? {
                    // Dropped behind our back: recorded as lost, nothing to write.
                    copies.clear();
                    break;
                }
                copies.push(bytes);
            }
            if flags.residency(page) == crate::flags::Residency::Absent {
                continue;
            }
            flags.cleaned(page);
            stage.pages.push(page);
            for bytes in copies {
                let within = (bytes.start - page_start) as usize..(bytes.end - page_start) as usize;
                stage.push(bytes.start, &buf[within]);
            }
        }
        Ok(Some(stage))
    }

    fn write_stage(&self, stage: &Stage) -> Result<()> {
        for (offset, range) in &stage.writes {
            self.counters.timed(Timer::StoreWrite, || {
                self.store.write_at(*offset, &stage.data[range.clone()])
            })?;
        }
        Ok(())
    }
}
