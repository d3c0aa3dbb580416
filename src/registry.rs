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
//!
//! A lookup first asks an index: the entries sorted by range start, kept
//! by writers under a version word (odd while one edits it; writers take it
//! by compare-and-swap, so there is no lock a signal handler could meet). A
//! reader binary-searches it and uses the answer only if the version did not
//! move meanwhile; otherwise, or if the index names no candidate, it scans
//! every entry. The index thus only makes a lookup faster (10,000 mappings:
//! a scan costs ~10 µs a fault); which target is returned, and that it
//! stays alive, rests on the entries' protocol alone.

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
    /// Indexes of the registered entries, sorted by range start; the first
    /// `sorted_len` are meaningful.
    sorted: Box<[AtomicUsize]>,
    sorted_len: AtomicUsize,
    /// Odd while a writer edits `sorted`.
    version: AtomicUsize,
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
            sorted: (0..capacity).map(|_| AtomicUsize::new(0)).collect(),
            sorted_len: AtomicUsize::new(0),
            version: AtomicUsize::new(0),
        }
    }

    /// Registers `target` for `range`; `None` if the table is full.
    ///
    /// # Safety
    ///
    /// `target` stays valid until [`remove`](Self::remove) of the returned
    /// index has returned.
    pub unsafe fn insert(&self, range: Range<usize>, target: *const T) -> Option<usize> {
        // Never-used entries first, so a table of many does not try each
        // taken one in turn; then any freed since.
        let fresh = self.used.load(SeqCst).min(self.entries.len());
        let index = (fresh..self.entries.len()).chain(0..fresh).find(|&i| {
            self.entries[i]
                .claimed
                .compare_exchange(0, 1, SeqCst, SeqCst)
                .is_ok()
        })?;
        let entry = &self.entries[index];
        entry.start.store(range.start, SeqCst);
        entry.end.store(range.end, SeqCst);
        entry.target.store(target.cast_mut(), SeqCst);
        self.used.fetch_max(index + 1, SeqCst);
        self.edit_index(|sorted, len| {
            let at = self.starting_at_or_below(len, range.start);
            for i in (at..len).rev() {
                sorted[i + 1].store(sorted[i].load(SeqCst), SeqCst);
            }
            sorted[at].store(index, SeqCst);
            len + 1
        });
        Some(index)
    }

    fn start_of(&self, index: usize) -> usize {
        self.entries
            .get(index)
            .map_or(usize::MAX, |e| e.start.load(SeqCst))
    }

    /// How many of the first `len` sorted entries start at or below `addr`
    /// (a binary search; read racily by lookups, which check the version).
    fn starting_at_or_below(&self, len: usize, addr: usize) -> usize {
        let (mut low, mut high) = (0, len.min(self.sorted.len()));
        while low < high {
            let mid = low + (high - low) / 2;
            match self.start_of(self.sorted[mid].load(SeqCst)) <= addr {
                true => low = mid + 1,
                false => high = mid,
            }
        }
        low
    }

    /// Runs `edit` on the index as its only writer; `edit` returns the new length.
    fn edit_index(&self, edit: impl FnOnce(&[AtomicUsize], usize) -> usize) {
        let version = loop {
            let v = self.version.load(SeqCst);
            if v.is_multiple_of(2) && self.version.compare_exchange(v, v + 1, SeqCst, SeqCst).is_ok() {
                break v;
            }
            yield_now();
        };
        let len = edit(&self.sorted, self.sorted_len.load(SeqCst));
        self.sorted_len.store(len, SeqCst);
        self.version.store(version + 2, SeqCst);
    }

    /// Unregisters entry `index`; when this returns, no reader holds its target.
    pub fn remove(&self, index: usize) {
        // Its place by its start (ranges never overlap), else by a search.
        let at = |sorted: &[AtomicUsize], len: usize| {
            let guess = self
                .starting_at_or_below(len, self.start_of(index))
                .checked_sub(1);
            guess
                .filter(|&i| sorted[i].load(SeqCst) == index)
                .or_else(|| (0..len).find(|&i| sorted[i].load(SeqCst) == index))
        };
        self.edit_index(|sorted, len| match at(sorted, len) {
            Some(at) => {
                for i in at..len - 1 {
                    sorted[i].store(sorted[i + 1].load(SeqCst), SeqCst);
                }
                len - 1
            }
            None => len,
        });
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
        if let Some(found) = self.indexed(addr).and_then(|i| self.try_entry(i, addr, &confirm)) {
            return Some(found);
        }
        let used = self.used.load(SeqCst).min(self.entries.len());
        (0..used).find_map(|i| self.try_entry(i, addr, &confirm))
    }

    /// The entry the index says holds `addr`, if the index stood still
    /// while it was read.
    fn indexed(&self, addr: usize) -> Option<usize> {
        let version = self.version.load(SeqCst);
        if !version.is_multiple_of(2) {
            return None;
        }
        // The last entry starting at or below `addr`.
        let below = self.starting_at_or_below(self.sorted_len.load(SeqCst), addr);
        let index = self.sorted[below.checked_sub(1)?].load(SeqCst);
        (self.version.load(SeqCst) == version).then_some(index)
    }

    /// Entry `index`'s target, if its range holds `addr` and `confirm` agrees.
    fn try_entry(&self, index: usize, addr: usize, confirm: &impl Fn(&T) -> bool) -> Option<Found<'_, T>> {
        let entry = self.entries.get(index)?;
        if !(entry.start.load(SeqCst)..entry.end.load(SeqCst)).contains(&addr) {
            return None;
        }
        entry.users.fetch_add(1, SeqCst);
        let target = entry.target.load(SeqCst);
        if target.is_null() {
            entry.users.fetch_sub(1, SeqCst);
            return None;
        }
        // SAFETY: non-null and counted in before `remove` cleared it, so
        // `remove` waits for us before the target may go (see the module docs).
        let found = Found {
            entry,
            target: unsafe { &*target },
        };
        // Not confirmed: dropping `found` counts us out again.
        confirm(&found).then_some(found)
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Many ranges inserted and removed in a shuffled order: every lookup
    /// finds the one holding its address, through the index.
    #[test]
    fn lookups_among_many_ranges_find_their_own() {
        const N: usize = 1000;
        let registry = Registry::<usize>::new(N);
        let targets: Vec<Box<usize>> = (0..N).map(Box::new).collect();
        // Range i is [i * 100, i * 100 + 50), inserted in a scrambled order.
        let order: Vec<usize> = (0..N).map(|i| (i * 7919) % N).collect();
        let mut slots = vec![None; N];
        for &i in &order {
            // SAFETY: every target outlives the registry's use of it (removed below).
            slots[i] = unsafe { registry.insert(i * 100..i * 100 + 50, &*targets[i]) };
        }
        for (i, &slot) in slots.iter().enumerate() {
            assert_eq!(registry.find(i * 100 + 49, |_| true).map(|t| *t), Some(i));
            assert!(registry.find(i * 100 + 50, |_| true).is_none(), "a gap");
            assert_eq!(registry.indexed(i * 100 + 10), slot, "the index answers");
        }
        for &i in order.iter().filter(|&&i| i % 2 == 0) {
            registry.remove(slots[i].take().unwrap());
        }
        for i in 0..N {
            let found = registry.find(i * 100 + 1, |_| true).map(|t| *t);
            assert_eq!(found, (i % 2 == 1).then_some(i));
        }
        assert_eq!(registry.sorted_len.load(SeqCst), N / 2);
        for slot in slots.into_iter().flatten() {
            registry.remove(slot);
        }
    }
}
