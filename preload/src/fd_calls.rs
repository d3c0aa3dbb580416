//! The descriptor calls the interposer exports. Each passes straight to
//! the C library unless its descriptor names a managed file; then the
//! file's mapping serves it.

use std::ffi::{c_char, c_int, c_long, c_uint, c_void};

use libc::{iovec, loff_t, mode_t, off_t, size_t, ssize_t};
use mkwrite::Mapping;

use crate::route::{self, buffers, managed, one, shielded, ssize, status};
use crate::table::{busy, key_of_fd, with_table};
use crate::{marks, real, say, set_errno};

// ---- reads and writes ------------------------------------------------------

/// Which way a read or write call moves bytes.
#[derive(Clone, Copy, PartialEq)]
enum Direction {
    /// From the file into the program's buffers.
    Read,
    /// From the program's buffers into the file.
    Write,
}

/// Where in the file a read or write call starts.
enum At {
    /// At the descriptor's position, which it then moves.
    Position,
    /// At this offset (`pread`, `pwrite`).
    Offset(off_t),
}

impl At {
    /// `preadv2`/`pwritev2`: offset -1 means the descriptor's position.
    fn or_position(off: off_t) -> At {
        if off == -1 { At::Position } else { At::Offset(off) }
    }
}

/// Every read and write call: through the mapping if `fd` names a managed
/// file, else `pass` (the C library), the buffers readied first for
/// in-thread delivery.
fn transfer(
    fd: c_int,
    direction: Direction,
    at: At,
    bufs: impl Fn() -> Result<Vec<(usize, usize)>, c_int>,
    pass: impl FnOnce() -> ssize_t,
) -> ssize_t {
    let Some(map) = managed(fd) else {
        // A read stores into the buffers.
        route::prepare_buffers(|| bufs().unwrap_or_default(), direction == Direction::Read);
        return pass();
    };
    ssize(shielded(|| {
        let bufs = bufs()?;
        match (direction, at) {
            (Direction::Read, At::Position) => route::read_here(fd, &map, &bufs),
            (Direction::Read, At::Offset(off)) => route::read_at(fd, &map, &bufs, offset(off)?),
            (Direction::Write, At::Position) => route::write_here(fd, &map, &bufs),
            (Direction::Write, At::Offset(off)) => route::write_at(fd, &map, &bufs, offset(off)?),
        }
    }))
}

fn offset(off: off_t) -> Result<u64, c_int> {
    u64::try_from(off).map_err(|_| libc::EINVAL)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    let bufs = || one(buf, count);
    // SAFETY: the program's own call, passed on unchanged.
    transfer(fd, Direction::Read, At::Position, bufs, || unsafe {
        real::read(fd, buf, count)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    let bufs = || one(buf, count);
    // SAFETY: the program's own call, passed on unchanged.
    transfer(fd, Direction::Write, At::Position, bufs, || unsafe {
        real::write(fd, buf, count)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, count: size_t, off: off_t) -> ssize_t {
    let bufs = || one(buf, count);
    // SAFETY: the program's own call, passed on unchanged.
    let pass = || unsafe { real::pread64(fd, buf, count, off) };
    transfer(fd, Direction::Read, At::Offset(off), bufs, pass)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, count: size_t, off: off_t) -> ssize_t {
    let bufs = || one(buf, count);
    // SAFETY: the program's own call, passed on unchanged.
    let pass = || unsafe { real::pwrite64(fd, buf, count, off) };
    transfer(fd, Direction::Write, At::Offset(off), bufs, pass)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    let bufs = || buffers(iov, count);
    // SAFETY: the program's own call, passed on unchanged.
    transfer(fd, Direction::Read, At::Position, bufs, || unsafe {
        real::readv(fd, iov, count)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    let bufs = || buffers(iov, count);
    // SAFETY: the program's own call, passed on unchanged.
    transfer(fd, Direction::Write, At::Position, bufs, || unsafe {
        real::writev(fd, iov, count)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv64(fd: c_int, iov: *const iovec, count: c_int, off: off_t) -> ssize_t {
    let bufs = || buffers(iov, count);
    // SAFETY: the program's own call, passed on unchanged.
    let pass = || unsafe { real::preadv64(fd, iov, count, off) };
    transfer(fd, Direction::Read, At::Offset(off), bufs, pass)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev64(fd: c_int, iov: *const iovec, count: c_int, off: off_t) -> ssize_t {
    let bufs = || buffers(iov, count);
    // SAFETY: the program's own call, passed on unchanged.
    let pass = || unsafe { real::pwritev64(fd, iov, count, off) };
    transfer(fd, Direction::Write, At::Offset(off), bufs, pass)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv64v2(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    off: off_t,
    flags: c_int,
) -> ssize_t {
    if flags != 0 && managed(fd).is_some() {
        return unsupported("preadv2 with flags");
    }
    let bufs = || buffers(iov, count);
    // SAFETY: the program's own call, passed on unchanged.
    let pass = || unsafe { real::preadv64v2(fd, iov, count, off, flags) };
    transfer(fd, Direction::Read, At::or_position(off), bufs, pass)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev64v2(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    off: off_t,
    flags: c_int,
) -> ssize_t {
    if flags != 0 && managed(fd).is_some() {
        return unsupported("pwritev2 with flags");
    }
    let bufs = || buffers(iov, count);
    // SAFETY: the program's own call, passed on unchanged.
    let pass = || unsafe { real::pwritev64v2(fd, iov, count, off, flags) };
    transfer(fd, Direction::Write, At::or_position(off), bufs, pass)
}

// ---- length, allocation, durability ----------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate64(fd: c_int, len: off_t) -> c_int {
    match managed(fd) {
        Some(map) => status(shielded(|| {
            route::writable(fd, libc::EINVAL)?;
            map.set_len(offset(len)?).map_err(route::length_error)
        })),
        // SAFETY: the program's own call, passed on unchanged.
        None => unsafe { real::ftruncate64(fd, len) },
    }
}

/// The mapping of the managed file at `path` (relative to `dir`).
fn managed_path(dir: c_int, path: *const c_char) -> Option<std::sync::Arc<Mapping>> {
    if busy() || !marks::any_live() || path.is_null() {
        return None;
    }
    // SAFETY: fstatat reads the program's path and fills our buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dir, path, &mut st, 0) } != 0 || !marks::holds_inode(st.st_dev, st.st_ino) {
        return None;
    }
    with_table(|t| t.mapping_of_key((st.st_dev, st.st_ino)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn truncate64(path: *const c_char, len: off_t) -> c_int {
    match managed_path(libc::AT_FDCWD, path) {
        Some(map) => status(shielded(|| {
            map.set_len(offset(len)?).map_err(route::length_error)
        })),
        // SAFETY: the program's own call, passed on unchanged.
        None => unsafe { real::truncate64(path, len) },
    }
}

/// `fallocate(2)`'s modes on a mapping: allocate (and extend unless
/// `KEEP_SIZE`), punch a hole, or zero a range keeping its blocks.
fn allocate(map: &Mapping, mode: c_int, off: off_t, len: off_t) -> Result<(), c_int> {
    let (off, len) = (offset(off)?, offset(len)?);
    if len == 0 {
        return Err(libc::EINVAL);
    }
    let end = off.checked_add(len).ok_or(libc::EFBIG)?;
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    let reserve = |map: &Mapping| {
        if !keep_size && end > map.len() {
            map.set_len(end).map_err(route::length_error)?;
        }
        // Blocks past EOF are not reserved with KEEP_SIZE: mkwrite
        // allocates only inside the file.
        let within = map.len().min(end).saturating_sub(off);
        if within == 0 {
            return Ok(());
        }
        map.reserve(off, within).map_err(|e| e.error.errno())
    };
    match mode & !libc::FALLOC_FL_KEEP_SIZE {
        0 => reserve(map),
        libc::FALLOC_FL_PUNCH_HOLE if keep_size => map.punch_hole(off, len).map_err(|e| e.errno()),
        libc::FALLOC_FL_ZERO_RANGE => {
            let within = map.len().min(end).saturating_sub(off);
            if within > 0 {
                map.punch_hole(off, within).map_err(|e| e.errno())?;
            }
            reserve(map)
        }
        _ => Err(libc::EOPNOTSUPP),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fallocate64(fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int {
    match managed(fd) {
        Some(map) => status(shielded(|| {
            route::writable(fd, libc::EBADF)?;
            allocate(&map, mode, off, len)
        })),
        // SAFETY: the program's own call, passed on unchanged.
        None => unsafe { real::fallocate64(fd, mode, off, len) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_fallocate64(fd: c_int, off: off_t, len: off_t) -> c_int {
    match managed(fd) {
        // posix_fallocate returns the error number instead of setting errno.
        Some(map) => shielded(|| {
            route::writable(fd, libc::EBADF)?;
            allocate(&map, 0, off, len)
        })
        .err()
        .unwrap_or(0),
        // SAFETY: the program's own call, passed on unchanged.
        None => unsafe { real::posix_fallocate64(fd, off, len) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    match managed(fd) {
        Some(map) => status(shielded(|| map.flush().map_err(|e| e.errno()))),
        // SAFETY: the program's own call, passed on unchanged.
        None => unsafe { real::fsync(fd) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    match managed(fd) {
        Some(map) => status(shielded(|| map.flush().map_err(|e| e.errno()))),
        // SAFETY: the program's own call, passed on unchanged.
        None => unsafe { real::fdatasync(fd) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sync_file_range(fd: c_int, off: off_t, len: off_t, flags: c_uint) -> c_int {
    let Some(map) = managed(fd) else {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::sync_file_range(fd, off, len, flags) };
    };
    status(shielded(|| {
        let off = offset(off)?;
        // A length of 0 means "to the end of the file".
        let len = match offset(len)? {
            0 => map.len().saturating_sub(off),
            n => n.min(map.len().saturating_sub(off)),
        };
        if len == 0 {
            return Ok(());
        }
        if flags & libc::SYNC_FILE_RANGE_WAIT_AFTER == 0 {
            // Only starting writeback: nothing a program can observe.
            return Ok(());
        }
        map.flush_range(off, len).map_err(|e| e.errno())
    }))
}

// ---- descriptors -------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if !busy() && marks::fd_marked(fd) {
        // The mapping lives on, as POSIX says; only the name goes.
        with_table(|t| t.drop_fd(fd));
    }
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::close(fd) }
}

/// Forgets the managed descriptors in `first..=last` (about to be closed).
fn forget_range(first: c_int, last: c_int) {
    if !busy() && marks::any_live() {
        with_table(|t| t.drop_fds(first, last));
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // CLOSE_RANGE_CLOEXEC only marks them close-on-exec: they stay open.
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        forget_range(
            first.min(c_int::MAX as c_uint) as c_int,
            last.min(c_int::MAX as c_uint) as c_int,
        );
    }
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::close_range(first, last, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn closefrom(low: c_int) {
    forget_range(low, c_int::MAX);
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::closefrom(low) }
}

/// `new` names what `old` names.
fn copy_mark(old: c_int, new: c_int) {
    if new >= 0 && old != new && !busy() && marks::fd_marked(old) {
        with_table(|t| {
            if let Some(key) = t.key_of(old) {
                t.add_fd(new, key);
            }
        });
    }
}

/// `new` is about to be closed and reused by `dup2`.
fn forget(new: c_int) {
    if !busy() && marks::fd_marked(new) {
        with_table(|t| t.drop_fd(new));
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: the program's own call, passed on unchanged.
    let new = unsafe { real::dup(fd) };
    copy_mark(fd, new);
    new
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    if fd != new {
        forget(new);
    }
    // SAFETY: the program's own call, passed on unchanged.
    let got = unsafe { real::dup2(fd, new) };
    copy_mark(fd, got);
    got
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    if fd != new {
        forget(new);
    }
    // SAFETY: the program's own call, passed on unchanged.
    let got = unsafe { real::dup3(fd, new, flags) };
    copy_mark(fd, got);
    got
}

// `fcntl` is variadic in C; its one optional argument is an integer or a
// pointer, passed in the same register as a `long` on x86-64, so a fixed
// third parameter forwards it unchanged (stable Rust cannot define a
// variadic function).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    // SAFETY: the program's own call, passed on unchanged.
    let got = unsafe { real::fcntl64(fd, cmd, arg) };
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        copy_mark(fd, got);
    }
    got
}

/// Opens with `open(flags)`. An `O_TRUNC` open of a managed file is
/// truncated through its mapping (so the two agree), once the open has
/// succeeded (`O_EXCL` or a refused permission leave it whole).
fn open_routed(dir: c_int, path: *const c_char, flags: c_int, open: impl FnOnce(c_int) -> c_int) -> c_int {
    let truncates = flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY;
    let map = if truncates { managed_path(dir, path) } else { None };
    let fd = open(if map.is_some() {
        flags & !libc::O_TRUNC
    } else {
        flags
    });
    let truncated = match map {
        Some(map) if fd >= 0 => shielded(|| map.set_len(0).map_err(route::length_error)),
        _ => Ok(()),
    };
    if let Err(e) = truncated {
        // SAFETY: closing the descriptor just opened, which nobody has seen.
        unsafe { real::close(fd) };
        set_errno(e);
        return -1;
    }
    adopt(fd);
    fd
}

/// After an open: a new descriptor of a managed file is managed.
fn adopt(fd: c_int) {
    if fd < 0 || busy() || !marks::any_live() {
        return;
    }
    if let Some(key) = key_of_fd(fd).filter(|k| marks::holds_inode(k.0, k.1)) {
        with_table(|t| t.add_fd(fd, key));
    }
}

// `open` and `openat` are variadic too; `mode` is read only with
// `O_CREAT` or `O_TMPFILE`, as the C library does.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat64(dir: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the program's own call, passed on (less O_TRUNC of a managed file).
    open_routed(dir, path, flags, |flags| unsafe {
        real::openat64(dir, path, flags, mode)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the program's own call, passed on (less O_TRUNC of a managed file).
    open_routed(libc::AT_FDCWD, path, flags, |flags| unsafe {
        real::open64(path, flags, mode)
    })
}

// ---- _FORTIFY_SOURCE's checked forms (what fortified programs call) ---------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, count: size_t, room: size_t) -> ssize_t {
    if count > room {
        // SAFETY: glibc's own report of the overflow; it does not return.
        unsafe { real::__chk_fail() };
    }
    // SAFETY: the checked call is `read` once the check passed.
    unsafe { read(fd, buf, count) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    off: off_t,
    room: size_t,
) -> ssize_t {
    if count > room {
        // SAFETY: glibc's own report of the overflow; it does not return.
        unsafe { real::__chk_fail() };
    }
    // SAFETY: the checked call is `pread` once the check passed.
    unsafe { pread64(fd, buf, count, off) }
}

/// `__open_2` and its kin are `open` without a mode, which glibc checks
/// is not needed; the check fails in glibc's own function.
fn needs_mode(flags: c_int) -> bool {
    flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    if needs_mode(flags) {
        // SAFETY: glibc's own function reports the misuse.
        return unsafe { real::__open_2(path, flags) };
    }
    // SAFETY: the checked call is `open` once the check passed.
    unsafe { open64(path, flags, 0) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat64_2(dir: c_int, path: *const c_char, flags: c_int) -> c_int {
    if needs_mode(flags) {
        // SAFETY: glibc's own function reports the misuse.
        return unsafe { real::__openat_2(dir, path, flags) };
    }
    // SAFETY: the checked call is `openat` once the check passed.
    unsafe { openat64(dir, path, flags, 0) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: mode_t) -> c_int {
    // SAFETY: creat is this open, by definition.
    unsafe { open64(path, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, mode) }
}

// ---- what is not covered: refused loudly on a managed file ------------------

/// -1 with `ENOTSUP`, and a line on stderr saying what was refused.
fn unsupported(call: &str) -> ssize_t {
    say(format_args!(
        "{call} on a managed file is not supported: it fails with ENOTSUP"
    ));
    set_errno(libc::ENOTSUP);
    -1
}

fn either_managed(a: c_int, b: c_int) -> bool {
    managed(a).is_some() || managed(b).is_some()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn copy_file_range(
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    if either_managed(fd_in, fd_out) {
        return unsupported("copy_file_range");
    }
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::copy_file_range(fd_in, off_in, fd_out, off_out, len, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(out: c_int, input: c_int, off: *mut off_t, count: size_t) -> ssize_t {
    if either_managed(out, input) {
        return unsupported("sendfile");
    }
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::sendfile64(out, input, off, count) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    if either_managed(fd_in, fd_out) {
        return unsupported("splice");
    }
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::splice(fd_in, off_in, fd_out, off_out, len, flags) }
}

// The C library's other names for the same functions.
alias! {
    pread = pread64(fd: c_int, buf: *mut c_void, count: size_t, off: off_t) -> ssize_t;
    pwrite = pwrite64(fd: c_int, buf: *const c_void, count: size_t, off: off_t) -> ssize_t;
    preadv = preadv64(fd: c_int, iov: *const iovec, count: c_int, off: off_t) -> ssize_t;
    pwritev = pwritev64(fd: c_int, iov: *const iovec, count: c_int, off: off_t) -> ssize_t;
    preadv2 = preadv64v2(fd: c_int, iov: *const iovec, count: c_int, off: off_t, flags: c_int) -> ssize_t;
    pwritev2 = pwritev64v2(fd: c_int, iov: *const iovec, count: c_int, off: off_t, flags: c_int) -> ssize_t;
    ftruncate = ftruncate64(fd: c_int, len: off_t) -> c_int;
    truncate = truncate64(path: *const c_char, len: off_t) -> c_int;
    fallocate = fallocate64(fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int;
    posix_fallocate = posix_fallocate64(fd: c_int, off: off_t, len: off_t) -> c_int;
    fcntl = fcntl64(fd: c_int, cmd: c_int, arg: c_long) -> c_int;
    openat = openat64(dir: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    open = open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    creat = creat64(path: *const c_char, mode: mode_t) -> c_int;
    __pread_chk = __pread64_chk(fd: c_int, buf: *mut c_void, count: size_t, off: off_t, room: size_t) -> ssize_t;
    __open_2 = __open64_2(path: *const c_char, flags: c_int) -> c_int;
    __openat_2 = __openat64_2(dir: c_int, path: *const c_char, flags: c_int) -> c_int;
    sendfile = sendfile64(out: c_int, input: c_int, off: *mut off_t, count: size_t) -> ssize_t;
}
