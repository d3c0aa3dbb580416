//! Words of anonymous memory that read as zero until written: what nobody
//! wrote costs no memory (the kernel maps its shared zero page for reads,
//! and a page of its own only at the first write). The flags of a mapping
//! live here, so their memory follows what was touched, not the capacity.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

/// `len` words in one private anonymous mapping (`MAP_NORESERVE`,
/// `MADV_DONTFORK`), zero until written. One mapping however many bitmaps it holds, so a mapping's
/// flags cost one kernel memory area.
pub(crate) struct ZeroedWords {
    ptr: NonNull<u64>,
    len: usize,
}

// SAFETY: the words are plain memory owned by this value and reached only
// through `&self` (reads) and `&mut self` (writes), as with a `Vec<u64>`.
unsafe impl Send for ZeroedWords {}
// SAFETY: as above.
unsafe impl Sync for ZeroedWords {}

impl ZeroedWords {
    pub(crate) fn new(len: usize) -> io::Result<ZeroedWords> {
        if len == 0 {
            return Ok(ZeroedWords {
                ptr: NonNull::dangling(),
                len,
            });
        }
        let bytes = len
            .checked_mul(8)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let ptr = super::memory::map_anonymous(bytes, libc::PROT_READ | libc::PROT_WRITE)?;
        let words = ZeroedWords { ptr: ptr.cast(), len };
        // A forked child never reads a mapping's flags (every call there
        // fails first), so it gets no copy of them.
        // SAFETY: advising our own fresh mapping, of which no reference exists yet.
        if unsafe { libc::madvise(ptr.as_ptr().cast(), bytes, libc::MADV_DONTFORK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(words)
    }
}

impl ZeroedWords {
    /// The first byte, for callers that hand out disjoint parts themselves
    /// (`FillBuffers`); not derived from a borrow, so writing through it
    /// is theirs to justify.
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr().cast()
    }

    /// The words as bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the same memory as `deref`, viewed as bytes (any bit
        // pattern is a valid `u8`, and `u8` needs no alignment).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len * 8) }
    }
}

impl std::ops::Deref for ZeroedWords {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        // SAFETY: `len` initialized (zero-filled by the kernel) words at an
        // aligned address we own; `&self` keeps writers away.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for ZeroedWords {
    fn deref_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `deref`; `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ZeroedWords {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping our own mapping; no borrow of it outlives `self`.
            // Failure would mean the range is invalid, which it is not.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len * 8) };
        }
    }
}

/// `u32` atomics in memory that reads as zeros until written, reached only
/// as atomics (so threads may share them without a lock).
#[cfg_attr(loom, allow(dead_code))] // loom models use its own atomics
pub(crate) struct ZeroedAtomics {
    /// Never borrowed as `u64`s: every access goes through [`get`](Self::get).
    memory: ZeroedWords,
    len: u64,
}

#[cfg_attr(loom, allow(dead_code))]
impl ZeroedAtomics {
    pub(crate) fn new(len: u64) -> io::Result<ZeroedAtomics> {
        let words =
            usize::try_from(len.div_ceil(2)).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(ZeroedAtomics {
            memory: ZeroedWords::new(words)?,
            len,
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The `i`th atomic; panics past the end.
    pub(crate) fn get(&self, i: u64) -> &AtomicU32 {
        assert!(i < self.len, "atomic {i} of {}", self.len);
        // SAFETY: the memory holds `len.div_ceil(2)` zeroed, 8-aligned u64s,
        // so at least `len` u32s, and `i` is one of them; `AtomicU32` has the
        // size and alignment of `u32`, and zero is a valid value. It lives as
        // long as `self`, and is only ever reached through these atomic
        // views (`memory` is private and never dereferenced as `u64`s).
        unsafe { &*self.memory.base().cast::<AtomicU32>().add(i as usize) }
    }
}
