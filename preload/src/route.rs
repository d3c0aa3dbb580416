//! A managed descriptor's reads and writes, served by its file's mapping,
//! so a `write(2)` lands in what the program's mappings hold and a
//! `read(2)` sees it, as with the kernel's page cache.

use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use libc::{iovec, ssize_t};
use mkwrite::Mapping;

use crate::table::{busy, fault_thread, file_range, inside, with_table};
use crate::{marks, real, say, set_errno};

/// The mapping behind `fd`, if its file is managed.
pub(crate) fn managed(fd: c_int) -> Option<Arc<Mapping>> {
    if busy() || !marks::fd_marked(fd) || fault_thread() {
        return None;
    }
    with_table(|t| t.mapping_of_fd(fd))
}

/// Runs `call`; a panic (a bug) becomes `EIO` with a message instead of
/// unwinding into C.
/// The thread is marked busy meanwhile (see [`inside`]).
pub(crate) fn shielded<T>(call: impl FnOnce() -> Result<T, c_int>) -> Result<T, c_int> {
    inside(|| catch_unwind(AssertUnwindSafe(call))).unwrap_or_else(|_| {
        say(format_args!("mkwrite panicked (a bug); the call fails with EIO"));
        Err(libc::EIO)
    })
}

/// A byte count for C: the count, or -1 with `errno` set.
pub(crate) fn ssize(result: Result<usize, c_int>) -> ssize_t {
    match result {
        Ok(n) => n as ssize_t,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// 0, or -1 with `errno` set.
pub(crate) fn status(result: Result<(), c_int>) -> c_int {
    match result {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// The program's buffers, checked for the null pointer the kernel would
/// answer with `EFAULT`.
pub(crate) fn buffers(iov: *const iovec, count: c_int) -> Result<Vec<(usize, usize)>, c_int> {
    if !(0..=libc::UIO_MAXIOV).contains(&count) {
        return Err(libc::EINVAL);
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    if iov.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the program passed `count` iovecs at `iov` (checked non-null).
    let iov = unsafe { std::slice::from_raw_parts(iov, count as usize) };
    iov.iter()
        .map(|v| {
            if v.iov_base.is_null() && v.iov_len > 0 {
                Err(libc::EFAULT)
            } else {
                Ok((v.iov_base as usize, v.iov_len))
            }
        })
        .collect()
}

/// One buffer as [`buffers`] gives them.
pub(crate) fn one(buf: *const c_void, len: usize) -> Result<Vec<(usize, usize)>, c_int> {
    if buf.is_null() && len > 0 {
        return Err(libc::EFAULT);
    }
    Ok(vec![(buf as usize, len)])
}

/// Reads from `off` into `bufs`, stopping at EOF: the count read
/// (`EBADF` if `fd` is not open for reading).
pub(crate) fn read_at(fd: c_int, map: &Mapping, bufs: &[(usize, usize)], off: u64) -> Result<usize, c_int> {
    readable(fd)?;
    let mut done = 0usize;
    for &(addr, len) in bufs {
        let at = off + done as u64;
        let n = map.len().saturating_sub(at).min(len as u64) as usize;
        if len == 0 {
            continue; // an empty buffer among others
        }
        if n == 0 {
            break; // EOF
        }
        // SAFETY: the program handed us `len` writable bytes at `addr`.
        let buf = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, n) };
        if let Err(e) = map.read(at, buf) {
            done += e.done;
            return if done > 0 { Ok(done) } else { Err(e.error.errno()) };
        }
        done += n;
        if n < len {
            break;
        }
    }
    Ok(done)
}

/// Writes `bufs` at `off`, moving EOF past them as `pwrite(2)` does: the
/// count written (`EBADF` if `fd` is not open for writing). A store that
/// fills part-way gives a short count (the file then ends after what
/// landed), or `ENOSPC` if nothing landed.
pub(crate) fn write_at(fd: c_int, map: &Mapping, bufs: &[(usize, usize)], off: u64) -> Result<usize, c_int> {
    write_placed(fd, map, bufs, off).map(|(_, n)| n)
}

/// As [`write_at`], with where the write began: `off`, or EOF with
/// `O_APPEND`. The descriptor's flags are read once, for its access mode,
/// `O_APPEND` and `O_DSYNC`.
fn write_placed(fd: c_int, map: &Mapping, bufs: &[(usize, usize)], off: u64) -> Result<(u64, usize), c_int> {
    let flags = status_flags(fd)?;
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(libc::EBADF);
    }
    // Linux appends with O_APPEND whatever the offset, pwrite(2) included.
    let off = if flags & libc::O_APPEND != 0 {
        map.len()
    } else {
        off
    };
    let total = bufs
        .iter()
        .try_fold(0usize, |sum, b| sum.checked_add(b.1))
        .filter(|&t| t <= isize::MAX as usize)
        .ok_or(libc::EINVAL)?;
    let end = off.checked_add(total as u64).ok_or(libc::EFBIG)?;
    let old = map.len();
    if end > old {
        map.set_len(end).map_err(length_error)?;
    }
    let mut done = 0usize;
    for &(addr, len) in bufs {
        // SAFETY: the program handed us `len` readable bytes at `addr`.
        let data = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        if let Err(e) = map.write(off + done as u64, data) {
            done += e.done;
            if end > old {
                // Best effort: a file that cannot shrink back keeps the zeros.
                let _ = map.set_len(old.max(off + done as u64));
            }
            return if done > 0 {
                Ok((off, done))
            } else {
                Err(e.error.errno())
            };
        }
        done += len;
    }
    if done > 0 && flags & libc::O_DSYNC != 0 {
        // O_DSYNC (and O_SYNC, which includes it): durable on return.
        map.flush_range(off, done as u64).map_err(|e| e.errno())?;
    }
    Ok((off, done))
}

/// The errno for a failed change of length: past the reserved capacity
/// it is `EFBIG` with a line saying what to raise.
pub(crate) fn length_error(e: mkwrite::Error) -> c_int {
    if let mkwrite::Error::BeyondCapacity { len, capacity } = e {
        say(format_args!(
            "a length of {len} bytes is past the {capacity} reserved for the file (raise MKWRITE_PRELOAD_CAPACITY)"
        ));
        return libc::EFBIG;
    }
    e.errno()
}

/// The descriptor's file position, where `read(2)` and `write(2)` start.
pub(crate) fn position(fd: c_int) -> Result<u64, c_int> {
    // SAFETY: lseek on the program's descriptor only reads its position.
    let at = unsafe { real::lseek64(fd, 0, libc::SEEK_CUR) };
    u64::try_from(at).map_err(|_| crate::errno())
}

/// Moves the descriptor's position to `to`.
pub(crate) fn seek(fd: c_int, to: u64) -> Result<(), c_int> {
    // SAFETY: as in `position`; it moves the position only.
    let at = unsafe { real::lseek64(fd, to as i64, libc::SEEK_SET) };
    if at < 0 { Err(crate::errno()) } else { Ok(()) }
}

/// The descriptor's status flags (`O_ACCMODE`, `O_APPEND`, ...).
fn status_flags(fd: c_int) -> Result<c_int, c_int> {
    // SAFETY: F_GETFL reads the descriptor's flags and takes no argument.
    let flags = unsafe { real::fcntl64(fd, libc::F_GETFL, 0) };
    if flags < 0 { Err(crate::errno()) } else { Ok(flags) }
}

/// `EBADF` unless `fd` was opened for reading, as `read(2)` says.
pub(crate) fn readable(fd: c_int) -> Result<(), c_int> {
    match status_flags(fd)? & libc::O_ACCMODE {
        libc::O_WRONLY => Err(libc::EBADF),
        _ => Ok(()),
    }
}

/// `refused` unless `fd` was opened for writing (`EBADF` for `write(2)`
/// and `fallocate(2)`, `EINVAL` for `ftruncate(2)`).
pub(crate) fn writable(fd: c_int, refused: c_int) -> Result<(), c_int> {
    match status_flags(fd)? & libc::O_ACCMODE {
        libc::O_RDONLY => Err(refused),
        _ => Ok(()),
    }
}

/// A read at the descriptor's position, which then moves past it.
pub(crate) fn read_here(fd: c_int, map: &Mapping, bufs: &[(usize, usize)]) -> Result<usize, c_int> {
    let at = position(fd)?;
    let n = read_at(fd, map, bufs, at)?;
    seek(fd, at + n as u64)?;
    Ok(n)
}

/// A write at the descriptor's position (EOF with `O_APPEND`), which then
/// moves past it.
pub(crate) fn write_here(fd: c_int, map: &Mapping, bufs: &[(usize, usize)]) -> Result<usize, c_int> {
    let (at, n) = write_placed(fd, map, bufs, position(fd)?)?;
    seek(fd, at + n as u64)?;
    Ok(n)
}

/// With in-thread delivery, a system call that touches a view's page that
/// is not ready gets `EFAULT` instead of waiting for it: before passing on
/// a call on another descriptor whose buffers lie in views, make their
/// pages ready (`writing` for a call that stores into them). Nothing to do
/// with the default delivery, or for buffers outside every view; `bufs` is
/// asked for only when there may be (this runs on every unmanaged call).
pub(crate) fn prepare_buffers(bufs: impl FnOnce() -> Vec<(usize, usize)>, writing: bool) {
    if busy() || !marks::any_live() || !crate::config::config().in_thread {
        return;
    }
    for (addr, len) in bufs()
        .into_iter()
        .filter(|b| b.1 > 0 && marks::overlaps(b.0, b.1))
    {
        let Some((map, off, within)) = file_range(addr, len) else {
            continue;
        };
        if within > 0 {
            // A failure (past EOF, a full store) is the call's own to meet:
            // it then fails as it would have.
            let _ = inside(|| map.populate(off, within, writing));
        }
    }
}
