//! Which mapping an address belongs to, for a signal handler: a fixed table
//! of address ranges, read without locks or allocation, and a count of
//! readers per entry so that an entry is never freed while a handler uses it.
//!
//! Lookup: count yourself in (`users += 1`), then load the pointer; removal:
//! clear the pointer, then wait for `users` to reach zero. Every access to
//! `users` is a read-modify-write (the remover reads it with `fetch_add(0)`),
//! so the two sides' accesses are ordered in its modification order and
//! synchronize: either the reader comes second and sees the pointer cleared,
//! or the remover comes second and sees the reader counted in, and waits for
//! it (checked under loom below, which models exactly these orderings). Ranges are read racily and only pick candidates: the reader
//! confirms with the target itself.

use std::ops::Range;
use std::sync::atomic::Ordering::SeqCst;

use crate::sync::{AtomicPtr, AtomicUsize, yield_now};

struct Entry<T> {
    /// 1 while a registration owns the entry.
    claimed: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    target: AtomicPtr<T>,
    users: AtomicUsize,
}

/// A table of up to `capacity` registered ranges.
pub(crate) struct Registry<T> {
    entries: Box<[Entry<T>]>,
    /// Entries at or past this index have never been used.
    used: AtomicUsize,
}

// SAFETY: the table holds only atomics and pointers to `T: Sync` values
// whose lifetime the registration protocol guards.
unsafe impl<T: Sync> Sync for Registry<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Send for Registry<T> {}

/// A target found by [`Registry::find`]; it stays alive while this lives.
pub(crate) struct Found<'a, T> {
    entry: &'a Entry<T>,
    target: &'a T,
}

impl<T> std::ops::Deref for Found<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.target
    }
}

impl<T> Drop for Found<'_, T> {
    fn drop(&mut self) {
        self.entry.users.fetch_sub(1, SeqCst);
    }
}

impl<T> Registry<T> {
    pub fn new(capacity: usize) -> Registry<T> {
        let entries = (0..capacity)
            .map(|_| Entry {
                claimed: AtomicUsize::new(0),
                start: AtomicUsize::new(0),
                end: AtomicUsize::new(0),
                target: AtomicPtr::new(std::ptr::null_mut()),
                users: AtomicUsize::new(0),
            })
            .collect();
        Registry {
            entries,
            used: AtomicUsize::new(0),
        }
    }

    /// Registers `target` for `range`; `None` if the table is full.
    ///
    /// # Safety
    ///
    /// `target` stays valid until [`remove`](Self::remove) of the returned
    /// index has returned.
    pub unsafe fn insert(&self, range: Range<usize>, target: *const T) -> Option<usize> {
        let index = self
            .entries
            .iter()
            .position(|e| e.claimed.compare_exchange(0, 1, SeqCst, SeqCst).is_ok())?;
        let entry = &self.entries[index];
        entry.start.store(range.start, SeqCst);
        entry.end.store(range.end, SeqCst);
        entry.target.store(target.cast_mut(), SeqCst);
        self.used.fetch_max(index + 1, SeqCst);
        Some(index)
    }

    /// Unregisters entry `index`; when this returns, no reader holds its target.
    pub fn remove(&self, index: usize) {
        let entry = &self.entries[index];
        entry.target.swap(std::ptr::null_mut(), SeqCst);
        while entry.users.fetch_add(0, SeqCst) != 0 {
            yield_now();
        }
        entry.start.store(0, SeqCst);
        entry.end.store(0, SeqCst);
        entry.claimed.store(0, SeqCst);
    }

    /// The target registered for a range holding `addr`, if `confirm` agrees
    /// it is the one. Async-signal-safe: atomics only, no allocation.
    pub fn find(&self, addr: usize, confirm: impl Fn(&T) -> bool) -> Option<Found<'_, T>> {
        let used = self.used.load(SeqCst);
        for entry in &self.entries[..used] {
            if !(entry.start.load(SeqCst)..entry.end.load(SeqCst)).contains(&addr) {
                continue;
            }
            entry.users.fetch_add(1, SeqCst);
            let target = entry.target.load(SeqCst);
            if target.is_null() {
                entry.users.fetch_sub(1, SeqCst);
                continue;
            }
            // SAFETY: non-null and counted in before `remove` cleared it, so
            // `remove` waits for us before the target may go (see the module docs).
            let found = Found {
                entry,
                target: unsafe { &*target },
            };
            if confirm(&found) {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;

    struct Target {
        alive: AtomicBool,
    }

    #[test]
    fn loom_a_found_target_is_never_freed_under_its_reader() {
        loom::model(|| {
            let registry = Arc::new(Registry::<Target>::new(1));
            let target = Box::into_raw(Box::new(Target {
                alive: AtomicBool::new(true),
            }));
            // SAFETY: freed only after remove returns, below.
            let index = unsafe { registry.insert(100..200, target) }.unwrap();
            let reader = {
                let registry = registry.clone();
                loom::thread::spawn(move || {
                    if let Some(found) = registry.find(150, |_| true) {
                        assert!(found.alive.load(SeqCst), "used after it was freed");
                    }
                })
            };
            registry.remove(index);
            // SAFETY: remove has returned: no reader holds it.
            unsafe {
                (*target).alive.store(false, SeqCst);
                drop(Box::from_raw(target));
            }
            reader.join().unwrap();
        });
    }

    #[test]
    fn loom_a_reused_entry_is_confirmed_by_its_new_target() {
        loom::model(|| {
            let registry = Arc::new(Registry::<usize>::new(1));
            let first = Box::into_raw(Box::new(1usize));
            let second = Box::into_raw(Box::new(2usize));
            // SAFETY: each is freed only after its remove returns.
            let index = unsafe { registry.insert(0..10, first) }.unwrap();
            let reader = {
                let registry = registry.clone();
                loom::thread::spawn(move || {
                    // Looking for the first target's address: only it may answer.
                    if let Some(found) = registry.find(5, |t| *t == 1) {
                        assert_eq!(*found, 1);
                    }
                })
            };
            registry.remove(index);
            // SAFETY: no reader holds it.
            unsafe { drop(Box::from_raw(first)) };
            // SAFETY: freed after its remove, below.
            let index = unsafe { registry.insert(0..10, second) }.unwrap();
            reader.join().unwrap();
            registry.remove(index);
            // SAFETY: no reader holds it.
            unsafe { drop(Box::from_raw(second)) };
        });
    }
}
