//! The ways a process ends or replaces itself. mkwrite's memory goes with
//! the process (the page cache would outlive it), so each writes every
//! managed file first: `exit` (through the library's `.fini_array`),
//! `_exit`, `_Exit` and the `exec` family.

use std::ffi::{c_char, c_int};

use crate::{marks, real, table};

/// Every managed file written out (before the process and mkwrite's
/// memory go).
pub(crate) fn flush_everything() {
    if !table::busy() && marks::any_live() {
        table::with_table(|t| t.flush_all());
    }
}

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

// exec replaces the process image: mkwrite's memory goes with it, so every
// managed file is written first. (`execl`, `execlp` and `execle` are
// variadic and call the C library's `execve` internally: not covered.)

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    flush_everything();
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::execve(path, argv, envp) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    flush_everything();
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::execv(path, argv) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    flush_everything();
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::execvp(file, argv) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    flush_everything();
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real::execvpe(file, argv, envp) }
}
