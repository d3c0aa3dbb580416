//! Write-back by flags (DESIGN rule 4): for each dirty page, clear its dirty
//! mark, write-protect it, copy its allocated blocks; then write the copies to
//! the store, coalesced, and sync. EOF plays no part, and nothing is allocated.

use std::ops::Range;

use crate::engine::Engine;
use crate::error::Result;
use crate::flags::Flags;

/// Bytes copied under one hold of the flags lock, so the handler is never
/// kept waiting for long.
const STAGE_BYTES: u64 = 4 << 20;

/// Copies of dirty pages taken under the lock, waiting to be written.
struct Stage {
    data: Vec<u8>,
    /// (file offset, range in `data`) of each coalesced write.
    writes: Vec<(u64, Range<usize>)>,
    pages: Vec<u64>,
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
    pub fn flush(&self, pages: Range<u64>) -> Result<()> {
        let _layout = self.layout_shared();
        // One flush at a time: a page another flush has taken but not yet
        // synced must not let this one return early.
        let _serial = self.flush_serial();
        let mut taken: Vec<u64> = Vec::new();
        let mut written = 0u64;
        let mut next = pages.start;
        let result = loop {
            let stage = {
                let mut flags = self.lock_flags();
                match self.take_dirty(&mut flags, next..pages.end) {
                    Ok(Some(stage)) => stage,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            next = stage.pages.last().map_or(pages.end, |p| p + 1);
            taken.extend_from_slice(&stage.pages);
            if let Err(e) = self.write_stage(&stage) {
                break Err(e);
            }
            written += stage.data.len() as u64;
        };
        let result = result.and_then(|()| Ok(self.store.sync()?));
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
        result
    }

    /// Takes up to [`STAGE_BYTES`] of dirty pages: protect, mark clean, copy.
    fn take_dirty(&self, flags: &mut Flags, pages: Range<u64>) -> Result<Option<Stage>> {
        let mut batch = flags.dirty_pages(pages);
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
        };
        let mut buf = vec![0u8; self.geo.page as usize];
        for &page in &batch {
            flags.cleaned(page);
            stage.pages.push(page);
            let page_start = page * self.geo.page;
            for bytes in flags.allocated_bytes(page) {
                let within = bytes.start - page_start..bytes.end - page_start;
                let out = &mut buf[..within.clone().count()];
                self.copy_out(page, within, out);
                stage.push(bytes.start, out);
            }
        }
        Ok(Some(stage))
    }

    fn write_stage(&self, stage: &Stage) -> Result<()> {
        for (offset, range) in &stage.writes {
            self.store.write_at(*offset, &stage.data[range.clone()])?;
        }
        Ok(())
    }
}
