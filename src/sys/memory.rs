//! The anonymous reservation that mirrors the file (`mmap(2)`, `madvise(2)`,
//! `mprotect(2)`, `mlock2(2)`), and reads of it that never fault (`/proc/self/mem`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;

/// An anonymous, private, `MAP_NORESERVE` reservation of `len` bytes.
///
/// The region is only ever accessed through the methods below, each of which
/// states which pages it may touch; the userfaultfd that guards it decides what
/// a touch of a missing or write-protected page does.
#[derive(Debug)]
pub(crate) struct Region {
    base: NonNull<u8>,
    len: usize,
    /// `/proc/self/mem`, for copies that must not fault (see
    /// [`Region::read_resident`]); `None` where `/proc` is not mounted.
    mem: Option<Arc<File>>,
}

/// The process's `/proc/self/mem`, opened once and shared by every region
/// (a mapping costs no descriptor for it): read-write, or read-only where
/// writing is refused.
fn proc_self_mem() -> Option<Arc<File>> {
    static MEM: super::OwnFile = super::OwnFile::new();
    MEM.get(|| {
        let path = "/proc/self/mem";
        let file = File::options().read(true).write(true).open(path);
        file.or_else(|_| File::options().read(true).open(path))
    })
    .ok()
}

/// What threads may do with a range of the region, as `mprotect(2)` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    None,
    Read,
    ReadWrite,
}

// SAFETY: the region is plain memory owned by this struct; all mutation goes
// through the kernel (UFFDIO_COPY, madvise) or through copies whose callers
// hold the mapping's locks, so sharing the pointer across threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` methods never hand out references that outlive
// the locks their callers hold.
unsafe impl Sync for Region {}

/// A fresh private anonymous mapping of `len` bytes (`MAP_NORESERVE`: its
/// pages cost memory only once written), at an address the kernel picks.
pub(super) fn map_anonymous(len: usize, prot: libc::c_int) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping at a kernel-chosen address aliases nothing.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(ptr.cast()).expect("mmap never returns null on success"))
}

impl Region {
    /// Reserves `len` bytes (a multiple of the page size), readable and, unless
    /// `read_only`, writable. The kernel is asked not to back them with huge
    /// pages, so faults and copies stay page-sized, and not to copy them into a
    /// child at `fork`: the child has no handler and its copy would show holes
    /// as zeros, so it gets no memory there at all.
    pub(crate) fn reserve(len: usize, read_only: bool) -> io::Result<Region> {
        let mem = proc_self_mem();
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let region = Region {
            base: map_anonymous(len, prot)?,
            len,
            mem,
        };
        region.advise(0, len, libc::MADV_NOHUGEPAGE)?;
        region.advise(0, len, libc::MADV_DONTFORK)?;
        Ok(region)
    }

    fn advise(&self, offset: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
        self.check(offset, len);
        // SAFETY: the range lies inside our own anonymous mapping (checked);
        // the advices used here drop, populate or tag pages, which callers
        // only do where no Rust reference to those bytes exists.
        let rc = unsafe { libc::madvise(self.as_ptr().add(offset).cast(), len, advice) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether `addr` lies in the region.
    pub(crate) fn contains(&self, addr: usize) -> bool {
        (self.base() as usize..self.base() as usize + self.len).contains(&addr)
    }

    /// Whether [`read_resident`](Self::read_resident) and [`is_resident`](Self::is_resident)
    /// never fault (they read through `/proc/self/mem`); without `/proc`
    /// they are plain copies.
    pub(crate) fn probes_without_faulting(&self) -> bool {
        self.mem.is_some()
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

    /// Drops the pages of `[offset, offset + len)`, locked ones too (the
    /// pages are ours to replace); their next touch faults as missing. Also
    /// clears poison markers.
    #[doc(alias = "MADV_DONTNEED_LOCKED")]
    pub(crate) fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        match self.advise(offset, len, libc::MADV_DONTNEED_LOCKED) {
            // Before Linux 5.18; locked ranges then refuse with EINVAL too.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.advise(offset, len, libc::MADV_DONTNEED),
            other => other,
        }
    }

    /// Sets what threads may do with `[offset, offset + len)`; the
    /// userfaultfd's write protection of each page is kept either way.
    #[doc(alias = "mprotect")]
    pub(crate) fn set_access(&self, offset: usize, len: usize, access: Access) -> io::Result<()> {
        self.check(offset, len);
        let prot = match access {
            Access::None => libc::PROT_NONE,
            Access::Read => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        };
        // SAFETY: the range lies inside our own mapping (checked); changing its
        // protection never invalidates memory, it only makes accesses fault.
        let rc = unsafe { libc::mprotect(self.as_ptr().add(offset).cast(), len, prot) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Locks the pages of `[offset, offset + len)` in memory as they are
    /// faulted in, without faulting any in (`MLOCK_ONFAULT`).
    #[doc(alias = "mlock2")]
    pub(crate) fn lock_on_fault(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len);
        // SAFETY: the range lies inside our own mapping (checked); locking
        // changes residency accounting only.
        let rc = unsafe { libc::mlock2(self.as_ptr().add(offset).cast(), len, libc::MLOCK_ONFAULT) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    #[doc(alias = "munlock")]
    pub(crate) fn unlock(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len);
        // SAFETY: as in `lock_on_fault`.
        let rc = unsafe { libc::munlock(self.as_ptr().add(offset).cast(), len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Copies bytes out of the region without ever faulting: a page that is
    /// not in memory (dropped by `madvise` behind the mapping's back, or
    /// poisoned) ends the copy instead of trapping into the handler, which
    /// may be waiting for a lock the caller holds (DESIGN rule 7). Returns
    /// the bytes copied; fewer than `out.len()` means the page holding
    /// `offset + copied` is not resident.
    ///
    /// `/proc/self/mem` reads through the kernel's remote-access path, which
    /// may not wait for a userfaultfd and fails with `EIO` instead.
    ///
    /// Without `/proc`, this is a plain copy: it trusts the caller that the
    /// pages are resident, and a page dropped behind the mapping's back
    /// would then fault on the caller.
    pub(crate) fn read_resident(&self, offset: usize, out: &mut [u8]) -> io::Result<usize> {
        self.check(offset, out.len());
        let Some(mem) = &self.mem else {
            self.copy_out(offset, out);
            return Ok(out.len());
        };
        let mut done = 0;
        while done < out.len() {
            match mem.read_at(&mut out[done..], self.base() + (offset + done) as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EFAULT)) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes `data` into the region at `offset` without ever faulting, as
    /// [`read_resident`](Self::read_resident) reads: false if a page it
    /// covers is not in memory (nothing is written from that page on). A
    /// write-protected page takes the write only where the kernel resolves
    /// write-protect faults itself (`UFFD_FEATURE_WP_ASYNC`); elsewhere the
    /// caller must have made the pages writable.
    pub(crate) fn write_resident(&self, offset: usize, data: &[u8]) -> io::Result<bool> {
        self.check(offset, data.len());
        let Some(mem) = &self.mem else {
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        };
        let mut done = 0;
        while done < data.len() {
            match mem.write_at(&data[done..], self.base() + (offset + done) as u64) {
                Ok(0) => return Ok(false),
                Ok(n) => done += n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EFAULT)) => {
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether the page at `offset` is in memory right now.
    pub(crate) fn is_resident(&self, offset: usize) -> io::Result<bool> {
        Ok(self.read_resident(offset, &mut [0u8])? == 1)
    }

    /// Copies bytes out of the region with plain loads; a missing page traps
    /// into the handler, so callers must not hold a lock the handler needs
    /// (under such a lock, use [`read_resident`](Self::read_resident)).
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

    /// `len` bytes from `offset` that the program's threads may change
    /// while the kernel reads them ([`LiveBytes`](super::LiveBytes)).
    pub(crate) fn live(&self, offset: usize, len: usize) -> super::LiveBytes<'_> {
        self.check(offset, len);
        super::LiveBytes::new(self.as_ptr().cast_const().wrapping_add(offset), len)
    }

    /// A shared view of `len` bytes from `offset`.
    ///
    /// # Safety
    ///
    /// * nothing may write these bytes (through the mapping's API or a raw
    ///   pointer) while the returned slice lives.
    pub(crate) unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        self.check(offset, len);
        // SAFETY: in bounds (checked), the memory lives as long as `self`, and
        // the caller promises no writer exists for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset), len) }
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
