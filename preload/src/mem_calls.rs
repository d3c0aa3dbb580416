//! The memory calls the interposer exports: `mmap` of a managed file
//! becomes a view into its mkwrite mapping; `munmap`, `msync`, `madvise`
//! and `mremap` of such a view are answered from the table. Everything
//! else (anonymous memory, private mappings, files not named by the user,
//! mkwrite's own memory) passes straight to the C library.

use std::ffi::{c_int, c_void};

use libc::{off_t, size_t};

use crate::route::{shielded, status};
use crate::table::{busy, fault_thread, file_range, key_of_fd, with_table};
use crate::{config::config, marks, real, say, set_errno};

/// What to do with an `mmap`: pass it on, or answer it.
fn map_managed(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> Option<Result<usize, c_int>> {
    let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
    if fixed && marks::overlaps(addr as usize, len) {
        say(format_args!(
            "a fixed mapping over a managed file's memory is refused (ENOMEM)"
        ));
        return Some(Err(libc::ENOMEM));
    }
    let shared = matches!(flags & 0x3, libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE);
    if fd < 0 || !shared || flags & libc::MAP_ANONYMOUS != 0 || config().paths.is_empty() {
        return None;
    }
    let key = key_of_fd(fd)?;
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    if !config().manages(&path) {
        return None;
    }
    if fixed {
        say(format_args!(
            "{}: MAP_FIXED on a managed file is not supported (ENOTSUP)",
            path.display()
        ));
        return Some(Err(libc::ENOTSUP));
    }
    if fd >= marks::FD_LIMIT {
        say(format_args!(
            "{}: descriptor {fd} is too high to manage; the kernel maps it",
            path.display()
        ));
        return None;
    }
    if let Some(e) = access_refused(fd, prot) {
        return Some(Err(e));
    }
    let page = crate::page_size() as off_t;
    if len == 0 || off < 0 || off % page != 0 {
        return Some(Err(libc::EINVAL));
    }
    match shielded(|| with_table(|t| t.map(fd, key, &path, off as u64, len))) {
        // A file this process may only read cannot lose a write: the
        // kernel maps it.
        Err(libc::EACCES | libc::EROFS) if prot & libc::PROT_WRITE == 0 => None,
        done => Some(done),
    }
}

/// The kernel's access checks for a shared file mapping: the descriptor
/// must be readable, and writable for `PROT_WRITE`.
fn access_refused(fd: c_int, prot: c_int) -> Option<c_int> {
    // SAFETY: F_GETFL reads the descriptor's flags and takes no argument.
    let flags = unsafe { real::fcntl64(fd, libc::F_GETFL, 0) };
    if flags < 0 {
        return Some(libc::EBADF);
    }
    let mode = flags & libc::O_ACCMODE;
    let writes = prot & libc::PROT_WRITE != 0;
    // (An append-only file, `chattr +a`, is refused too; `O_APPEND` is not.)
    let refused = mode == libc::O_WRONLY || (writes && mode != libc::O_RDWR);
    refused.then_some(libc::EACCES)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    if busy() {
        // SAFETY: mkwrite's own call (this thread holds the table).
        return unsafe { real::mmap(addr, len, prot, flags, fd, off) };
    }
    match map_managed(addr, len, prot, flags, fd, off) {
        Some(Ok(at)) => at as *mut c_void,
        Some(Err(e)) => {
            set_errno(e);
            libc::MAP_FAILED
        }
        // SAFETY: the program's own call, passed on unchanged.
        None => unsafe { real::mmap(addr, len, prot, flags, fd, off) },
    }
}

/// Whether `[addr, addr + len)` is a managed file's memory.
fn ours(addr: *mut c_void, len: size_t) -> bool {
    !busy() && marks::overlaps(addr as usize, len) && !fault_thread()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    // The memory stays mapped until the file's last view goes (the
    // mapping is shared by every view of the file).
    if ours(addr, len) && with_table(|t| t.unmap(addr as usize, len)) {
        return 0;
    }
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::munmap(addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn msync(addr: *mut c_void, len: size_t, flags: c_int) -> c_int {
    if !ours(addr, len) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::msync(addr, len, flags) };
    }
    let Some((map, off, within)) = file_range(addr as usize, len) else {
        // SAFETY: as above; the table says it is not ours after all.
        return unsafe { real::msync(addr, len, flags) };
    };
    status(shielded(|| {
        let done = if within == 0 {
            Ok(())
        } else if flags & libc::MS_SYNC != 0 {
            map.flush_range(off, within)
        } else {
            // MS_ASYNC starts writeback only (Linux does nothing at all);
            // MS_INVALIDATE: the view is the file's one copy.
            Ok(())
        };
        done.map_err(|e| e.errno())
    }))
}

/// Linux 5.18's `MADV_DONTNEED` for locked pages too (not in the libc crate).
const MADV_DONTNEED_LOCKED: c_int = 24;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    if !ours(addr, len) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::madvise(addr, len, advice) };
    }
    match advice {
        // On a file mapping these drop pages the file still holds; here
        // the mapping is the only copy of what is not flushed, so they are
        // not passed on, and a later access sees the same bytes either way.
        libc::MADV_DONTNEED
        | MADV_DONTNEED_LOCKED
        | libc::MADV_FREE
        | libc::MADV_COLD
        | libc::MADV_PAGEOUT => 0,
        // mkwrite's memory is never inherited; these cannot change that.
        libc::MADV_DONTFORK | libc::MADV_DOFORK => 0,
        // On a shared file mapping MADV_REMOVE punches a hole.
        libc::MADV_REMOVE => match file_range(addr as usize, len) {
            Some((map, off, within)) if within > 0 => {
                status(shielded(|| map.punch_hole(off, within).map_err(|e| e.errno())))
            }
            _ => 0,
        },
        // SAFETY: hints (sequential, random, will-need, huge pages) act on
        // the anonymous memory as they would on a file's.
        _ => unsafe { real::madvise(addr, len, advice) },
    }
}

// `mremap` is variadic; the fifth argument is read only with
// MREMAP_FIXED, as the C library does.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    addr: *mut c_void,
    len: size_t,
    new_len: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    if !ours(addr, len) {
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real::mremap(addr, len, new_len, flags, new_addr) };
    }
    // A whole view grows or shrinks in place (SQLite grows its map so);
    // moving one, or part of one, is not supported.
    let in_place = flags & (libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP) == 0 && new_len > 0;
    let done = in_place
        .then(|| with_table(|t| t.remap(addr as usize, len, new_len)))
        .flatten();
    match done {
        Some(Ok(at)) => at as *mut c_void,
        Some(Err(e)) => {
            set_errno(e);
            libc::MAP_FAILED
        }
        None => {
            say(format_args!(
                "mremap of part of a managed file's view, or to another address, is not supported: it fails with ENOTSUP"
            ));
            set_errno(libc::ENOTSUP);
            libc::MAP_FAILED
        }
    }
}

// The C library's other name for the same function.
alias! {
    mmap = mmap64(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void;
}
