//! Checked reads and writes: each page is made ready by the same resolver the
//! fault handler uses, in the calling thread, so a full store comes back as an
//! error with the count of bytes that landed instead of as SIGBUS.
//!
//! Why the copy itself cannot fail: the layout lock is held shared throughout,
//! so EOF and the page's allocated blocks cannot change between the resolve
//! and the copy. A flush may protect the page in between; the copy then faults
//! and the handler unprotects it without allocating, which cannot fail.

use std::ops::Range;

use crate::engine::{Access, Engine, Resolved};
use crate::error::{Error, PartialError, out_of_range};

impl Engine {
    /// Copies `data` into the mapping at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), PartialError> {
        self.each_page(offset, data.len(), Access::Write, |at, range| {
            self.region.copy_in(at as usize, &data[range]);
        })
    }

    /// Copies the mapping's bytes at `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), PartialError> {
        let len = buf.len();
        self.each_page(offset, len, Access::Read, |at, range| {
            self.region.copy_out(at as usize, &mut buf[range]);
        })
    }

    /// Makes each page of `[offset, offset + len)` ready for `access`, copying nothing.
    pub fn populate(&self, offset: u64, len: u64, access: Access) -> Result<(), PartialError> {
        let len = usize::try_from(len).map_err(|_| {
            PartialError::none(out_of_range(
                "populate beyond the address space",
                offset,
                len,
                usize::MAX as u64,
            ))
        })?;
        self.each_page(offset, len, access, |_, _| {})
    }

    /// Locks `[offset, offset + len)` on fault, then fills its pages below
    /// EOF for reading, so locking never allocates.
    pub fn lock(&self, offset: u64, len: u64) -> crate::error::Result<()> {
        let pages = self.lock_range(offset, len)?;
        let bytes = self.geo.page_bytes(pages.start).start..pages.end * self.geo.page;
        self.region
            .lock_on_fault(bytes.start as usize, (bytes.end - bytes.start) as usize)?;
        self.lock_flags().set_locked(pages, true);
        let below_eof = bytes.end.min(self.eof.load(std::sync::atomic::Ordering::Acquire));
        if below_eof > bytes.start {
            self.populate(bytes.start, below_eof - bytes.start, Access::Read)
                .map_err(|p| p.error)?;
        }
        Ok(())
    }

    /// Undoes [`lock`](Self::lock).
    pub fn unlock(&self, offset: u64, len: u64) -> crate::error::Result<()> {
        let pages = self.lock_range(offset, len)?;
        let start = self.geo.page_bytes(pages.start).start;
        let end = pages.end * self.geo.page;
        self.region.unlock(start as usize, (end - start) as usize)?;
        self.lock_flags().set_locked(pages, false);
        Ok(())
    }

    fn lock_range(&self, offset: u64, len: u64) -> crate::error::Result<Range<u64>> {
        let end = self
            .geo
            .end_within_capacity("lock beyond the mapping's capacity", offset, len)?;
        Ok(self.geo.pages_overlapping(&(offset..end)))
    }

    /// Resolves each page of `[offset, offset + len)` for `access`, then calls
    /// `copy(file_offset, range_in_buffer)` for its part, outside the flags lock.
    fn each_page(
        &self,
        offset: u64,
        len: usize,
        access: Access,
        mut copy: impl FnMut(u64, Range<usize>),
    ) -> Result<(), PartialError> {
        let partial = |done: usize, error: Error| PartialError { done, error };
        let end = self
            .geo
            .end_within_capacity("beyond the mapping's capacity", offset, len as u64)
            .map_err(|e| partial(0, e))?;
        if let Some(why) = self.handler_failure() {
            return Err(partial(0, Error::HandlerFailed(why)));
        }
        let _layout = self.layout_shared();
        let mut done = 0usize;
        for page in self.geo.pages_overlapping(&(offset..end)) {
            let resolved = {
                let flags = self.lock_flags();
                let eof = flags.eof();
                self.resolve_checked(flags, page, access).1.map_err(|f| {
                    f.into_error(|| out_of_range("past the end of the file", offset, len as u64, eof))
                })
            };
            match resolved {
                Ok(Resolved::AlreadyReady) => {}
                Ok(_) => self.counters.prepared(),
                Err(e) => return Err(partial(done, e)),
            }
            let bytes = self.geo.page_bytes(page);
            let at = bytes.start.max(offset);
            let n = (bytes.end.min(end) - at) as usize;
            copy(at, done..done + n);
            done += n;
        }
        Ok(())
    }
}
