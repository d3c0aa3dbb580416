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
//! `ENOTSUP`): `copy_file_range`, `sendfile`, `splice`, `mremap` of part
//! of a view or to another address (a whole view grows or shrinks in
//! place, as SQLite asks), `MAP_FIXED`, `preadv2`/`pwritev2` with flags.
//! Not covered and not detectable: other processes using the file (each
//! process has its own copy until it flushes; do not name files that exist
//! to coordinate processes, such as LMDB's `lock.mdb` or SQLite's `-shm`),
//! `io_uring`, stdio streams (`fopen` uses the C library's internal
//! `open`), `MAP_PRIVATE` mappings (they see the file, not unflushed
//! writes), `sync`/`syncfs`, system calls made without the C library.
//! Routed writes from several threads at once are not atomic against each
//! other (two `O_APPEND` writers may overlap). A forked child does not
//! inherit the mappings (touching one is a SIGSEGV) and is told so on its
//! first call about a managed file; a `vfork` child's calls pass through;
//! a `fork` while another thread is inside the interposer's table can
//! leave the child waiting on it. `munmap` of a view keeps the memory
//! mapped while another view of the file remains (two views of one range
//! end one at a time), and `mprotect` is passed on unchanged.
//!
//! Data reaches the file at `msync(MS_SYNC)`, `fsync`, a routed write on
//! an `O_DSYNC`/`O_SYNC` descriptor (before it returns), the last
//! `munmap` of a file, and when the process exits or execs (`exit`,
//! `_exit` and `execve`/`execv`/`execvp`/`execvpe` flush every managed
//! file; `execl*` are not covered). `MS_ASYNC` and `sync_file_range`
//! without `WAIT_AFTER` do nothing, as `MS_ASYNC` on Linux. A process
//! killed by a signal loses what it had not flushed, as a machine that
//! loses power loses the kernel's dirty pages. The checked forms that
//! `_FORTIFY_SOURCE` compiles calls into (`__read_chk`, `__pread64_chk`,
//! `__open_2`, ...) are covered too.

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
mod exits;
mod fd_calls;
mod marks;
mod mem_calls;
mod real;
mod route;
mod table;

use std::ffi::c_int;

/// One line on stderr, prefixed so it is clear where it comes from.
pub(crate) fn say(message: std::fmt::Arguments<'_>) {
    let line = format!("mkwrite-preload: {message}\n");
    // Straight to the C library's `write`, unbuffered: this may run while
    // the settings are being read, or at exit.
    // SAFETY: writes our own buffer to descriptor 2.
    let _ = unsafe { real::write(2, line.as_ptr().cast(), line.len()) };
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

extern "C" fn at_load() {
    real::resolve_all();
    // Read the settings now: a bad one stops the program before it runs.
    let _ = config::config();
    // SAFETY: registers a function that only stores to atomics.
    unsafe { libc::pthread_atfork(None, None, Some(table::forked_child)) };
}

extern "C" fn at_exit() {
    exits::flush_everything();
}

#[used]
#[unsafe(link_section = ".init_array")]
static AT_LOAD: extern "C" fn() = at_load;

#[used]
#[unsafe(link_section = ".fini_array")]
static AT_EXIT: extern "C" fn() = at_exit;
