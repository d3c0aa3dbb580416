//! File calls the stores need: `fallocate(2)`, `lseek(2)` with SEEK_DATA/SEEK_HOLE,
//! `fdatasync(2)`, `fstatfs(2)` and the file's access mode.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};

use nix::fcntl::{FallocateFlags, FcntlArg, OFlag, fallocate, fcntl};
use nix::unistd::{Whence, lseek};

fn off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// Allocates `[offset, offset + len)` without changing the file size, so the
/// filesystem's own ENOSPC or EDQUOT comes back now rather than at writeback.
#[doc(alias = "fallocate")]
pub(crate) fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file.as_fd(),
        FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off(offset)?,
        off(len)?,
    )?;
    Ok(())
}

/// [`allocate`], async-signal-safe: the errno on failure, nothing allocated.
pub(crate) fn allocate_raw(file: &File, offset: u64, len: u64) -> Result<(), i32> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(libc::EFBIG);
    };
    loop {
        // SAFETY: fallocate on an open descriptor with plain integer arguments.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
        match rc {
            0 => return Ok(()),
            _ => match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            },
        }
    }
}

/// Fills all of `buf` from `offset` with `pread(2)`, async-signal-safe: the
/// errno on failure (`EIO` for a short read), nothing allocated.
pub(crate) fn read_exact_at_raw(file: &File, offset: u64, buf: &mut [u8]) -> Result<(), i32> {
    let mut done = 0;
    while done < buf.len() {
        let Ok(at) = libc::off_t::try_from(offset + done as u64) else {
            return Err(libc::EFBIG);
        };
        // SAFETY: reads into the unfilled tail of `buf`, which we own.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                at,
            )
        };
        match n {
            0 => return Err(libc::EIO),
            n if n > 0 => done += n as usize,
            _ => match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            },
        }
    }
    Ok(())
}

/// This thread's errno; async-signal-safe (a thread-local read).
fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Frees `[offset, offset + len)`; it reads as zeros afterwards.
#[doc(alias = "FALLOC_FL_PUNCH_HOLE")]
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(file.as_fd(), flags, off(offset)?, off(len)?)?;
    Ok(())
}

/// The byte ranges of `file` below `len` that hold data, by SEEK_DATA/SEEK_HOLE.
/// Filesystems may report fallocated-but-unwritten ranges as holes; that only
/// makes the caller allocate them again, which is harmless.
pub(crate) fn data_ranges(file: &File, len: u64) -> io::Result<Vec<Range<u64>>> {
    let mut ranges = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match lseek(file.as_fd(), off(pos)?, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = (lseek(file.as_fd(), off(start)?, Whence::SeekHole)? as u64).min(len);
        ranges.push(start..end);
        pos = end;
    }
    Ok(ranges)
}

#[doc(alias = "fdatasync")]
pub(crate) fn data_sync(file: &File) -> io::Result<()> {
    nix::unistd::fdatasync(file.as_fd())?;
    Ok(())
}

/// The filesystem's block size (`f_bsize` of `fstatfs(2)`).
pub(crate) fn fs_block_size(file: &File) -> io::Result<u64> {
    let stat = nix::sys::statfs::fstatfs(file.as_fd())?;
    Ok(stat.block_size() as u64)
}

/// Whether `file` was opened without write access.
pub(crate) fn is_read_only(file: &File) -> io::Result<bool> {
    let flags = OFlag::from_bits_truncate(fcntl(file.as_fd(), FcntlArg::F_GETFL)?);
    Ok((flags & OFlag::O_ACCMODE) == OFlag::O_RDONLY)
}
