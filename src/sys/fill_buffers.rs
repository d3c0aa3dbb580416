//! The buffers fills read into: a few per mapping, so that faults on
//! different pages read from the store at the same time. One is taken and
//! given back with one atomic operation each, so a signal handler may take
//! one (no allocation, no lock the interrupted thread could hold).
//!
//! Hand-written because what it must be is narrow: a fixed set of byte
//! buffers in one memory area (a mapping costs one kernel memory area for
//! them however many there are), claimed by a bit each, usable inside a
//! signal handler. A general object pool allocates or locks.

use std::io;
use std::sync::atomic::Ordering;

use super::ZeroedWords;
use crate::sync::AtomicU32;

/// Which of up to 32 slots are taken, a bit each. The lock-free part,
/// checked under loom below.
#[derive(Debug)]
struct Slots {
    taken: AtomicU32,
    count: u32,
}

impl Slots {
    fn new(count: u32) -> Slots {
        assert!(count <= 32, "one bit per slot");
        Slots {
            taken: AtomicU32::new(0),
            count,
        }
    }

    /// A free slot, now taken by the caller alone, or `None` if all are taken.
    fn take(&self) -> Option<u32> {
        let mut taken = self.taken.load(Ordering::Relaxed);
        loop {
            let free = (0..self.count).find(|i| taken & (1 << i) == 0)?;
            // Acquire: the slot's last user's writes happen before ours.
            match self
                .taken
                .compare_exchange(taken, taken | 1 << free, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Some(free),
                Err(now) => taken = now,
            }
        }
    }

    /// Gives back a slot [`take`](Self::take) returned.
    fn give_back(&self, slot: u32) {
        // Release: our writes to the slot happen before its next user's.
        self.taken.fetch_and(!(1 << slot), Ordering::Release);
    }
}

/// `count` buffers of `each` bytes, zero until first written.
pub(crate) struct FillBuffers {
    memory: ZeroedWords,
    each: usize,
    slots: Slots,
}

/// One buffer, the caller's alone until dropped.
pub(crate) struct FillBuffer<'a> {
    owner: &'a FillBuffers,
    slot: u32,
}

impl FillBuffers {
    pub(crate) fn new(count: u32, each: usize) -> io::Result<FillBuffers> {
        let each = each.next_multiple_of(8);
        Ok(FillBuffers {
            memory: ZeroedWords::new(count as usize * each / 8)?,
            each,
            slots: Slots::new(count),
        })
    }

    /// A free buffer, or `None` if every one is in use. Async-signal-safe.
    pub(crate) fn take(&self) -> Option<FillBuffer<'_>> {
        let slot = self.slots.take()?;
        Some(FillBuffer { owner: self, slot })
    }
}

impl FillBuffer<'_> {
    /// The buffer's bytes (as many as each buffer holds).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let owner = self.owner;
        let at = self.slot as usize * owner.each;
        let base = owner.memory.base();
        // SAFETY: `at..at + each` lies within the memory (slot < count), and
        // no other reference to these bytes exists while this value does: its
        // slot bit was set by us alone (`Slots::take`) and is cleared only when
        // we drop. `FillBuffers` hands out no other access to the memory. The
        // memory is writable (mapped read-write) and outlives `'_`. `&mut self`
        // keeps this the only borrow of the buffer.
        unsafe { std::slice::from_raw_parts_mut(base.add(at), owner.each) }
    }
}

impl Drop for FillBuffer<'_> {
    fn drop(&mut self) {
        self.owner.slots.give_back(self.slot);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_taken_once_and_come_back() {
        let buffers = FillBuffers::new(2, 100).unwrap();
        let mut a = buffers.take().unwrap();
        let mut b = buffers.take().unwrap();
        assert!(buffers.take().is_none(), "both in use");
        a.bytes_mut().fill(1);
        b.bytes_mut().fill(2);
        assert_eq!(a.bytes_mut().len(), 104);
        assert!(a.bytes_mut().iter().all(|&x| x == 1), "b did not write over a");
        drop(a);
        let mut c = buffers.take().unwrap();
        assert!(c.bytes_mut().iter().all(|&x| x == 1), "the same buffer back");
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::Slots;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    /// Two threads share one slot, and two more share two: no slot is ever
    /// used by two at once (loom's cells report a concurrent access), and
    /// every slot comes back.
    #[test]
    fn loom_a_slot_has_one_user_at_a_time() {
        for count in [1, 2] {
            loom::model(move || {
                let slots = Arc::new(Slots::new(count));
                let cells = Arc::new([UnsafeCell::new(0u32), UnsafeCell::new(0u32)]);
                let users: Vec<_> = (0..2)
                    .map(|t| {
                        let (slots, cells) = (slots.clone(), cells.clone());
                        loom::thread::spawn(move || {
                            if let Some(slot) = slots.take() {
                                // SAFETY (test): loom checks this access is not concurrent.
                                cells[slot as usize].with_mut(|v| unsafe { *v = t });
                                slots.give_back(slot);
                            }
                        })
                    })
                    .collect();
                for u in users {
                    u.join().unwrap();
                }
                assert!(slots.take().is_some_and(|s| s < count), "all given back");
            });
        }
    }
}
