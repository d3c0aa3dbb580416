//! The atomics and the wait/wake primitive of the lock-free parts (the
//! registry of in-thread mappings and the hand-off slots), swapped for
//! loom's under `--cfg loom`, so their interleavings are checked
//! exhaustively: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};

/// Blocks while `word` holds `value` (it may return early; callers loop).
/// Async-signal-safe: one `futex(2)` call.
#[cfg(not(loom))]
pub(crate) fn wait_while(word: &AtomicU32, value: u32) {
    crate::sys::futex_wait(word, value);
}

/// Wakes every thread blocked in [`wait_while`] on `word`.
#[cfg(not(loom))]
pub(crate) fn wake_all(word: &AtomicU32) {
    crate::sys::futex_wake_all(word);
}

// Under loom, a futex modelled by one lock and condition variable: the
// check of the word and the sleep are one step against a wake, as in the
// kernel, so a wake-up that is lost leaves the sleeper blocked, and the
// model reports the deadlock.
#[cfg(loom)]
loom::lazy_static! {
    static ref FUTEX: (loom::sync::Mutex<()>, loom::sync::Condvar) = Default::default();
}

#[cfg(loom)]
pub(crate) fn wait_while(word: &AtomicU32, value: u32) {
    let guard = FUTEX.0.lock().unwrap();
    if word.load(std::sync::atomic::Ordering::SeqCst) == value {
        drop(FUTEX.1.wait(guard).unwrap());
    }
}

#[cfg(loom)]
pub(crate) fn wake_all(_word: &AtomicU32) {
    let _guard = FUTEX.0.lock().unwrap();
    FUTEX.1.notify_all();
}

/// Lets another thread run: a short back-off for the rare waits (a full
/// hand-off table, a registry slot still in use). Async-signal-safe.
#[cfg(not(loom))]
pub(crate) fn yield_now() {
    crate::sys::yield_now();
}

#[cfg(loom)]
pub(crate) fn yield_now() {
    loom::thread::yield_now();
}
