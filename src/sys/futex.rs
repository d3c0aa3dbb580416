//! `futex(2)` wait and wake on an `AtomicU32`: what the faulting thread
//! blocks on while its fault is handed off. Written by hand because no
//! crate offers a futex that is safe to call from a signal handler (the
//! `std` and `parking_lot` primitives may allocate or take locks).

use std::sync::atomic::AtomicU32;

/// Blocks while `word` holds `value`, until woken or interrupted by a signal.
pub(crate) fn futex_wait(word: &AtomicU32, value: u32) {
    // SAFETY: the address is a live, aligned u32 for the call's duration;
    // FUTEX_WAIT only reads it, and a null timeout means no limit.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            value,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes every thread waiting on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: as above; FUTEX_WAKE touches no memory but the futex queue.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// Lets another thread run; async-signal-safe (`sched_yield(2)`).
pub(crate) fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// The calling thread's id; async-signal-safe (`gettid(2)`).
pub(crate) fn thread_id() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}
