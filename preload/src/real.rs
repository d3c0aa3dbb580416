//! The C library's own functions, behind the ones this library exports:
//! `dlsym(RTLD_NEXT)` finds the next definition of each name after ours.
//! Resolved on first use and kept in a static (a race resolves twice to
//! the same pointer).

use std::ffi::{c_char, c_int, c_long, c_uint, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

use libc::{iovec, loff_t, mode_t, off_t, size_t, ssize_t};

/// The next definition of `name` (NUL-terminated) after this library's.
fn next(name: &'static str) -> *mut c_void {
    // SAFETY: `name` is a NUL-terminated literal; RTLD_NEXT is a valid handle.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast::<c_char>()) };
    if found.is_null() {
        let line = b"mkwrite-preload: the C library lacks a function it wraps\n";
        // SAFETY: writing a static buffer to stderr, then ending the process:
        // there is nothing to forward this call to.
        unsafe {
            libc::syscall(libc::SYS_write, 2, line.as_ptr(), line.len());
            libc::syscall(libc::SYS_exit_group, 127);
        }
    }
    found
}

macro_rules! real {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            /// Where the C library's function of this name was found.
            #[allow(non_snake_case)]
            mod $name {
                pub(super) static SLOT: super::AtomicPtr<super::c_void> =
                    super::AtomicPtr::new(std::ptr::null_mut());
            }

            /// The C library's own function of this name.
            ///
            /// # Safety
            ///
            /// As the C function's contract.
            pub(crate) unsafe fn $name($($arg: $ty),*) -> $ret {
                let mut found = $name::SLOT.load(Ordering::Relaxed);
                if found.is_null() {
                    found = next(concat!(stringify!($name), "\0"));
                    $name::SLOT.store(found, Ordering::Relaxed);
                }
                // SAFETY: `found` is the C library's definition of this name,
                // whose C signature the declaration above repeats.
                let function: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(found) };
                // SAFETY: the caller keeps the C function's contract.
                unsafe { function($($arg),*) }
            }
        )*

        /// Finds every function now, at load: later, inside an allocator's
        /// own `mmap` say, `dlsym` (which may allocate) could recurse.
        pub(crate) fn resolve_all() {
            $($name::SLOT.store(next(concat!(stringify!($name), "\0")), Ordering::Relaxed);)*
        }
    };
}

real! {
    mmap(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void;
    munmap(addr: *mut c_void, len: size_t) -> c_int;
    msync(addr: *mut c_void, len: size_t, flags: c_int) -> c_int;
    madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int;
    mremap(addr: *mut c_void, len: size_t, new_len: size_t, flags: c_int, new_addr: *mut c_void) -> *mut c_void;
    read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t;
    write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t;
    pread64(fd: c_int, buf: *mut c_void, count: size_t, off: off_t) -> ssize_t;
    pwrite64(fd: c_int, buf: *const c_void, count: size_t, off: off_t) -> ssize_t;
    readv(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t;
    writev(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t;
    preadv64(fd: c_int, iov: *const iovec, count: c_int, off: off_t) -> ssize_t;
    pwritev64(fd: c_int, iov: *const iovec, count: c_int, off: off_t) -> ssize_t;
    preadv64v2(fd: c_int, iov: *const iovec, count: c_int, off: off_t, flags: c_int) -> ssize_t;
    pwritev64v2(fd: c_int, iov: *const iovec, count: c_int, off: off_t, flags: c_int) -> ssize_t;
    lseek64(fd: c_int, off: off_t, whence: c_int) -> off_t;
    ftruncate64(fd: c_int, len: off_t) -> c_int;
    truncate64(path: *const c_char, len: off_t) -> c_int;
    fallocate64(fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int;
    posix_fallocate64(fd: c_int, off: off_t, len: off_t) -> c_int;
    fsync(fd: c_int) -> c_int;
    fdatasync(fd: c_int) -> c_int;
    sync_file_range(fd: c_int, off: off_t, len: off_t, flags: c_uint) -> c_int;
    close(fd: c_int) -> c_int;
    close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int;
    closefrom(low: c_int) -> ();
    dup(fd: c_int) -> c_int;
    dup2(fd: c_int, new: c_int) -> c_int;
    dup3(fd: c_int, new: c_int, flags: c_int) -> c_int;
    fcntl64(fd: c_int, cmd: c_int, arg: c_long) -> c_int;
    open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    openat64(dir: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    copy_file_range(fd_in: c_int, off_in: *mut loff_t, fd_out: c_int, off_out: *mut loff_t, len: size_t, flags: c_uint) -> ssize_t;
    sendfile64(out: c_int, input: c_int, off: *mut off_t, count: size_t) -> ssize_t;
    splice(fd_in: c_int, off_in: *mut loff_t, fd_out: c_int, off_out: *mut loff_t, len: size_t, flags: c_uint) -> ssize_t;
    _exit(status: c_int) -> ();
    __chk_fail() -> ();
    __open_2(path: *const c_char, flags: c_int) -> c_int;
    __openat_2(dir: c_int, path: *const c_char, flags: c_int) -> c_int;
    execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    execv(path: *const c_char, argv: *const *const c_char) -> c_int;
    execvp(file: *const c_char, argv: *const *const c_char) -> c_int;
    execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
}
