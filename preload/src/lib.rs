//! `libmkwrite_preload.so`: runs an unmodified program's shared file
//! mappings on mkwrite.
//!
//! ```sh
//! MKWRITE_PRELOAD_PATHS=/data/db MKWRITE_PRELOAD_ON_FULL=wait \
//!     LD_PRELOAD=target/release/libmkwrite_preload.so ./program
//! ```
//!
//! A `mmap(MAP_SHARED)` of a regular file at or under one of the named
//! paths becomes a view into one mkwrite mapping of the whole file (every
//! view of a file shares it, so they agree as the kernel's do), so a write
//! fault on a full disk fails (SIGBUS) or waits at the fault instead of
//! losing the data at writeback. For the descriptors of such a file,
//! `read`/`write`/`pread`/`pwrite` (and their vector forms) go through the
//! mapping, `ftruncate`/`truncate` move its EOF, `fallocate` and
//! `posix_fallocate` reserve or punch through it, `fsync`/`fdatasync`/
//! `msync`/`sync_file_range` flush it, and `close` leaves it mapped, as
//! POSIX says. `fstat` and `lseek` need nothing: the file's length is the
//! mapping's at all times.
//!
//! Settings, from the environment: `MKWRITE_PRELOAD_PATHS` (files or
//! directories, `:`-separated), `MKWRITE_PRELOAD_ON_FULL` (`sigbus`, the
//! default, or `wait`), `MKWRITE_PRELOAD_STATS=1` (statistics on stderr),
//! `MKWRITE_PRELOAD_CAPACITY` (bytes reserved per file, 16 GiB by default),
//! `MKWRITE_PRELOAD_BLOCK_SIZE`. A bad value ends the program at load with
//! a one-line message.
//!
//! Not covered, refused loudly on a managed file (a line on stderr and
//! `ENOTSUP`): `copy_file_range`, `sendfile`, `splice`, `mremap`,
//! `MAP_FIXED`, `preadv2`/`pwritev2` with flags. Not covered and not
//! detectable: other processes using the file (each process has its own
//! copy until it flushes), `io_uring`, stdio streams (`fopen` uses the C
//! library's internal `open`), system calls made without the C library.
//! A forked child does not inherit the mappings (touching one is a
//! SIGSEGV) and is told so on its first call about a managed file.
//! `munmap` of a view keeps the memory mapped while another view of the
//! file remains, and `mprotect` is passed on unchanged.
//!
//! Data reaches the file at `msync`, `fsync`, the last `munmap` of a file,
//! and at exit (`exit` and `_exit` flush every managed file); a process
//! killed by a signal loses what it had not flushed, as a machine that
//! loses power loses the kernel's dirty pages.

/// Exports each `alias` as another name of `target`: on 64-bit the C
/// library's `pread` and `pread64` (and the like) are one function under
/// two names, and a program may call either.
macro_rules! alias {
    ($($alias:ident = $target:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $alias($($arg: $ty),*) -> $ret {
            // SAFETY: the same function under its other name.
            unsafe { $target($($arg),*) }
        }
    )*};
}

mod config;
mod fd_calls;
mod marks;
mod mem_calls;
mod real;
mod route;
mod table;

use std::ffi::c_int;
use std::io::Write;

/// One line on stderr, prefixed so it is clear where it comes from.
pub(crate) fn say(message: std::fmt::Arguments<'_>) {
    let line = format!("mkwrite-preload: {message}\n");
    // Unbuffered, straight to the descriptor: this may run at exit.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: the calling thread's errno, always valid to write.
    unsafe { *libc::__errno_location() = e };
}

pub(crate) fn errno() -> c_int {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Every managed file written out (before the process and mkwrite's
/// memory go).
fn flush_everything() {
    if !table::busy() && marks::any_live() {
        table::with_table(|t| t.flush_all());
    }
}

extern "C" fn at_load() {
    // Read the settings now: a bad one stops the program before it runs.
    let _ = config::config();
}

extern "C" fn at_exit() {
    flush_everything();
}

#[used]
#[unsafe(link_section = ".init_array")]
static AT_LOAD: extern "C" fn() = at_load;

#[used]
#[unsafe(link_section = ".fini_array")]
static AT_EXIT: extern "C" fn() = at_exit;

#[unsafe(no_mangle)]
pub extern "C" fn _exit(status: c_int) -> ! {
    flush_everything();
    // SAFETY: ending the process, as the program asked.
    unsafe { real::_exit(status) };
    unreachable!("_exit returned")
}

#[unsafe(no_mangle)]
pub extern "C" fn _Exit(status: c_int) -> ! {
    _exit(status)
}
