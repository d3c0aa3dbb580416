//! A window on a store: `[offset, offset + len)` of it, seen as a file of
//! its own, so a mapping of part of a file reads, allocates and writes only
//! there (memmap2's `MmapOptions::offset` / `len`).

use std::io;
use std::ops::Range;

use super::{LiveBytes, SignalSafe, Store};

/// `[offset, offset + len)` of `inner` as a store of its own. Its length is
/// the part of the window the file covers; it cannot move the file's EOF
/// (`set_len` fails with `InvalidInput`). Made by
/// [`MappingOptions::offset`](crate::MappingOptions::offset) and
/// [`len`](crate::MappingOptions::len).
///
/// ```
/// use mkwrite::{MemStore, Store, store::Window};
/// use std::sync::Arc;
///
/// let file = Arc::new(MemStore::new(4096, 16)?);
/// file.set_len(10_000)?;
/// let window = Window::new(file.clone(), 8192, 4096)?; // [8192, 12288) of the file
/// assert_eq!(window.len(), 10_000 - 8192); // the file ends inside it
/// window.allocate(0..1)?;
/// window.write_at(0, b"third page")?;
/// assert_eq!(&file.contents()[8192..8202], b"third page");
/// assert_eq!(file.allocated()?, [2..3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Window<S> {
    inner: S,
    offset: u64,
    len: u64,
}

impl<S: Store> Window<S> {
    /// A window of `inner` from `offset` (a multiple of its block size) for
    /// at most `len` bytes.
    ///
    /// ```
    /// use mkwrite::{MemStore, store::Window};
    /// let file = std::sync::Arc::new(MemStore::new(4096, 16)?);
    /// assert!(Window::new(file.clone(), 4096, 100).is_ok());
    /// assert!(Window::new(file, 100, 100).is_err()); // off a block boundary
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `offset` is not a multiple of `inner`'s block size.
    pub fn new(inner: S, offset: u64, len: u64) -> io::Result<Window<S>> {
        if !offset.is_multiple_of(inner.block_size()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a window's offset {offset} must be a multiple of the block size {}",
                    inner.block_size()
                ),
            ));
        }
        Ok(Window { inner, offset, len })
    }

    fn first_block(&self) -> u64 {
        self.offset / self.inner.block_size()
    }

    fn shifted(&self, blocks: Range<u64>) -> Range<u64> {
        blocks.start + self.first_block()..blocks.end + self.first_block()
    }
}

impl<S: Store> Store for Window<S> {
    fn block_size(&self) -> u64 {
        self.inner.block_size()
    }

    fn len(&self) -> u64 {
        self.inner.len().saturating_sub(self.offset).min(self.len)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let visible = super::below_eof(self.len(), offset, buf.len());
        self.inner.read_at(self.offset + offset, &mut buf[..visible])?;
        buf[visible..].fill(0);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        // Bytes past the window's end are dropped, as past a file's EOF.
        let visible = super::below_eof(self.len(), offset, data.len());
        self.inner.write_at(self.offset + offset, &data[..visible])
    }

    fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.inner.allocate(self.shifted(blocks))
    }

    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.inner.deallocate(self.shifted(blocks))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if len == self.len() {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a window's length is the file's: map the whole file to change it",
        ))
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
        let (first, end) = (
            self.first_block(),
            self.first_block() + self.len().div_ceil(self.block_size()),
        );
        Ok(self
            .inner
            .allocated()?
            .into_iter()
            .filter_map(|r| {
                let (start, stop) = (r.start.max(first), r.end.min(end));
                (start < stop).then(|| start - first..stop - first)
            })
            .collect())
    }

    fn signal_safe(&self) -> Option<&dyn SignalSafe> {
        self.inner.signal_safe().map(|_| self as &dyn SignalSafe)
    }

    fn unallocated_reads_zero(&self) -> bool {
        self.inner.unallocated_reads_zero()
    }

    fn writes_from_mapping(&self) -> bool {
        self.inner.writes_from_mapping()
    }

    fn write_live(&self, offset: u64, data: LiveBytes<'_>) -> io::Result<()> {
        // Bytes past the window's end are dropped, as in `write_at`.
        let visible = super::below_eof(self.len(), offset, data.len());
        self.inner
            .write_live(self.offset + offset, data.slice(0..visible))
    }
}

// SAFETY: shifts offsets and forwards to the inner store's signal-safe
// calls; `len` and `block_size` are plain loads for the stores that have them.
#[allow(unsafe_code)]
unsafe impl<S: Store> SignalSafe for Window<S> {
    fn read_at_in_signal(&self, offset: u64, buf: &mut [u8]) -> Result<(), i32> {
        let visible = super::below_eof(self.len(), offset, buf.len());
        let inner = self.inner.signal_safe().ok_or(libc::ENOTSUP)?;
        inner.read_at_in_signal(self.offset + offset, &mut buf[..visible])?;
        buf[visible..].fill(0);
        Ok(())
    }

    fn allocate_in_signal(&self, blocks: Range<u64>) -> Result<(), i32> {
        let inner = self.inner.signal_safe().ok_or(libc::ENOTSUP)?;
        inner.allocate_in_signal(self.shifted(blocks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;

    #[test]
    fn a_window_reads_writes_and_allocates_only_inside() {
        let mem = std::sync::Arc::new(MemStore::new(1024, 100).unwrap());
        mem.set_len(10 * 1024).unwrap();
        mem.allocate(0..10).unwrap();
        mem.write_at(0, &(0..10 * 1024).map(|i| (i / 1024) as u8).collect::<Vec<_>>())
            .unwrap();
        let w = Window::new(std::sync::Arc::clone(&mem), 4096, 3 * 1024).unwrap();
        assert_eq!(w.len(), 3072);
        let mut buf = [9u8; 4000];
        w.read_at(0, &mut buf).unwrap();
        assert!(buf[..1024].iter().all(|&b| b == 4) && buf[3072..].iter().all(|&b| b == 0));
        w.write_at(3000, &[0xAA; 500]).unwrap();
        assert_eq!(mem.contents()[4096 + 3071], 0xAA);
        assert_eq!(mem.contents()[4096 + 3072], 7, "nothing past the window changed");
        assert_eq!(w.allocated().unwrap(), vec![0..3]);
        assert!(w.set_len(1).is_err());
        assert!(Window::new(mem, 100, 10).is_err(), "offset off a block boundary");
    }
}
