//! The anonymous reservation that mirrors the file (`mmap(2)`, `madvise(2)`).

use std::io;
use std::ptr::NonNull;

/// An anonymous, private, `MAP_NORESERVE` reservation of `len` bytes.
///
/// The region is only ever accessed through the methods below, each of which
/// states which pages it may touch; the userfaultfd that guards it decides what
/// a touch of a missing or write-protected page does.
#[derive(Debug)]
pub(crate) struct Region {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this struct; all mutation goes
// through the kernel (UFFDIO_COPY, madvise) or through copies whose callers
// hold the mapping's locks, so sharing the pointer across threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` methods never hand out references that outlive
// the locks their callers hold.
unsafe impl Sync for Region {}

impl Region {
    /// Reserves `len` bytes (a multiple of the page size) and asks the kernel
    /// not to back them with huge pages, so faults and copies stay page-sized.
    pub(crate) fn reserve(len: usize) -> io::Result<Region> {
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let region = Region {
            base: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
        };
        // SAFETY: the range is exactly the mapping made above.
        let rc = unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(region)
    }

    pub(crate) fn base(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "region access {offset}+{len} outside {}",
            self.len
        );
    }

    /// Drops the pages of `[offset, offset + len)`; their next touch faults as missing.
    #[doc(alias = "MADV_DONTNEED")]
    pub(crate) fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len);
        // SAFETY: the range lies inside our own anonymous mapping; dropping its
        // pages cannot invalidate Rust references because callers hold the
        // mapping's locks that exclude every borrowed view of these pages.
        let rc = unsafe { libc::madvise(self.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Copies resident bytes out of the region.
    ///
    /// Callers guarantee the pages are resident (the fault handler must never
    /// fault on its own mapping); a read of a resident page never traps, even
    /// when it is write-protected.
    pub(crate) fn copy_out(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        // SAFETY: the source range is inside the mapping (checked above) and
        // `out` is a distinct Rust buffer, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
    }

    /// Copies `data` into the region. A page that is missing or write-protected
    /// traps and is resolved by the fault handler, so callers must not hold a
    /// lock the handler needs.
    pub(crate) fn copy_in(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        // SAFETY: destination inside the mapping (checked above), `data` is a
        // distinct buffer. Concurrent raw writers to the same bytes race as they
        // would on any shared memory, which the mapping's contract leaves to them.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len()) };
    }

    /// A shared view of `[0, len)`.
    ///
    /// # Safety
    ///
    /// * nothing may write these bytes (through the mapping's API or a raw
    ///   pointer) while the returned slice lives.
    pub(crate) unsafe fn slice(&self, len: usize) -> &[u8] {
        self.check(0, len);
        // SAFETY: in bounds (checked), the memory lives as long as `self`, and
        // the caller promises no writer exists for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), len) }
    }

    /// An exclusive view of `[0, len)`.
    ///
    /// # Safety
    ///
    /// * no other access to these bytes may happen while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, len: usize) -> &mut [u8] {
        self.check(0, len);
        // SAFETY: in bounds (checked), the memory lives as long as `self`, and
        // the caller promises exclusivity for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no borrow of it outlives `self`.
        // An error here could only mean the range is invalid, which it is not;
        // there is nothing useful to do with it in Drop.
        unsafe { libc::munmap(self.as_ptr().cast(), self.len) };
    }
}
