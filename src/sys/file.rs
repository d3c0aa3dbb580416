//! File calls the stores need: `fallocate(2)`, `lseek(2)` with SEEK_DATA/SEEK_HOLE,
//! `fdatasync(2)`, `fstatfs(2)` and the file's access mode.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsFd;

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
