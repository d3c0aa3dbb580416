//! Bytes of the mapping that the program's threads may change while a
//! store hands them to the kernel: under `DirtyTracking::Kernel` a flush
//! cannot hold writers off, so it may not form a Rust reference over the
//! bytes (that would promise they do not change). Only the kernel reads
//! them here, inside `pwrite(2)`.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::ops::Range;
use std::os::fd::AsRawFd;

/// Bytes of a mapping's memory that may change while they are written;
/// see [`Store::write_live`](crate::Store::write_live). They cannot be
/// read from Rust, only written to a file by the kernel
/// ([`write_all_at`](LiveBytes::write_all_at)).
#[derive(Debug, Clone, Copy)]
pub struct LiveBytes<'a> {
    start: *const u8,
    len: usize,
    /// Mapped, readable memory for `'a` (the mapping's region outlives it).
    memory: PhantomData<&'a [u8]>,
}

// SAFETY: the bytes are only ever read by the kernel, inside `pwrite`, from
// whichever thread; the memory stays mapped for 'a whichever thread holds this.
unsafe impl Send for LiveBytes<'_> {}
// SAFETY: as above; `&LiveBytes` gives no access but the same `pwrite`.
unsafe impl Sync for LiveBytes<'_> {}

impl<'a> LiveBytes<'a> {
    /// `len` bytes from `start`, which stay mapped and readable for `'a`
    /// (the caller, `Region::live`, checked they lie in its memory).
    pub(crate) fn new(start: *const u8, len: usize) -> LiveBytes<'a> {
        LiveBytes {
            start,
            len,
            memory: PhantomData,
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes `range` of these (clipped to them).
    pub fn slice(&self, range: Range<usize>) -> LiveBytes<'a> {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        // `start <= len`, so the pointer stays within (or one past) the bytes.
        LiveBytes::new(self.start.wrapping_add(start), end - start)
    }

    /// Writes all the bytes to `file` at `offset` with `pwrite(2)`, the
    /// kernel reading them from the mapping's memory. A page of them that
    /// is not in memory faults in the kernel: with a fault service the call
    /// waits for it, with in-thread delivery it fails with `EFAULT`.
    pub fn write_all_at(&self, file: &File, offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < self.len {
            let at = libc::off_t::try_from(offset + done as u64)
                .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
            // SAFETY: `start..start + len` is mapped, readable memory for 'a
            // (`new`), and `done < len`; the kernel copies from it and
            // tolerates it changing meanwhile; no Rust reference is formed.
            let n =
                unsafe { libc::pwrite(file.as_raw_fd(), self.start.add(done).cast(), self.len - done, at) };
            match n {
                0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                n if n > 0 => done += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}
