//! Faults a faulting thread cannot resolve in its signal handler (a store
//! that is not signal-safe, a full store, any failure) are handed to the
//! fault service through a fixed table of slots: the thread posts
//! its fault, rings the service's doorbell and blocks on the slot's word
//! (`futex`) until the answer comes. No allocation, no lock.
//!
//! A slot's word moves FREE → FILLING (the poster owns it) → POSTED → TAKEN
//! (the service owns it) → DONE (answered) → FREE (the poster read it).
//! Closing moves every slot to CLOSED, draining posted faults on the way, so
//! a poster either finds no slot to claim or is answered. Every transition
//! is a read-modify-write of the one word, so no ordering between different
//! atomics is relied on (checked under loom below).

use std::sync::atomic::Ordering::SeqCst;

use crate::sync::{AtomicI32, AtomicU32, AtomicU64, wait_while, wake_all, yield_now};

const FREE: u32 = 0;
const FILLING: u32 = 1;
const POSTED: u32 = 2;
const TAKEN: u32 = 3;
const DONE: u32 = 4;
const CLOSED: u32 = 5;

/// Slots per mapping: threads faulting on it at once beyond this wait for one.
const SLOTS: usize = 64;

/// A fault as the faulting thread saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Posted {
    pub address: u64,
    pub write: bool,
    pub thread: libc::pid_t,
}

struct Slot {
    word: AtomicU32,
    address: AtomicU64,
    write: AtomicU32,
    thread: AtomicI32,
    /// The answer: 0 resolved, otherwise why the access fails.
    errno: AtomicI32,
}

pub(crate) struct Handoffs {
    slots: Box<[Slot]>,
}

impl Default for Handoffs {
    fn default() -> Self {
        Handoffs::with_slots(SLOTS)
    }
}

impl Handoffs {
    fn with_slots(n: usize) -> Handoffs {
        let slots = (0..n)
            .map(|_| Slot {
                word: AtomicU32::new(FREE),
                address: AtomicU64::new(0),
                write: AtomicU32::new(0),
                thread: AtomicI32::new(0),
                errno: AtomicI32::new(0),
            })
            .collect();
        Handoffs { slots }
    }

    /// In the faulting thread: posts `fault`, calls `ring`, and waits for
    /// the answer: `Some(0)` resolved, `Some(errno)` failed, `None` if the
    /// table is closed. Async-signal-safe: atomics and `futex` only.
    pub fn hand_off(&self, fault: Posted, ring: impl Fn()) -> Option<i32> {
        let slot = self.claim()?;
        slot.address.store(fault.address, SeqCst);
        slot.write.store(fault.write as u32, SeqCst);
        slot.thread.store(fault.thread, SeqCst);
        slot.word.swap(POSTED, SeqCst);
        ring();
        loop {
            let word = slot.word.load(SeqCst);
            if word == DONE {
                break;
            }
            wait_while(&slot.word, word);
        }
        let errno = slot.errno.load(SeqCst);
        slot.word.swap(FREE, SeqCst);
        Some(errno)
    }

    /// A free slot, claimed; `None` once the table is closed.
    fn claim(&self) -> Option<&Slot> {
        loop {
            let mut closed = 0;
            for slot in self.slots.iter() {
                match slot.word.compare_exchange(FREE, FILLING, SeqCst, SeqCst) {
                    Ok(_) => return Some(slot),
                    Err(CLOSED) => closed += 1,
                    Err(_) => {}
                }
            }
            if closed == self.slots.len() {
                return None;
            }
            yield_now();
        }
    }

    /// In the fault service: takes every posted fault, with its slot index.
    pub fn take_posted(&self, mut each: impl FnMut(usize, Posted)) {
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.word.compare_exchange(POSTED, TAKEN, SeqCst, SeqCst).is_ok() {
                each(
                    index,
                    Posted {
                        address: slot.address.load(SeqCst),
                        write: slot.write.load(SeqCst) != 0,
                        thread: slot.thread.load(SeqCst),
                    },
                );
            }
        }
    }

    /// Answers the taken fault in slot `index`: 0 resolved, or an errno.
    pub fn answer(&self, index: usize, errno: i32) {
        Self::finish(&self.slots[index], errno);
    }

    /// Answers the taken fault in `slot` and wakes its poster.
    fn finish(slot: &Slot, errno: i32) {
        slot.errno.store(errno, SeqCst);
        let was = slot.word.swap(DONE, SeqCst);
        debug_assert_eq!(was, TAKEN);
        wake_all(&slot.word);
    }

    /// In the fault service, when the mapping is detached: closes every slot, answering
    /// each fault still posted with `errno`; returns when no poster is left
    /// inside. Faults the caller has taken must have been answered.
    pub fn close(&self, errno: i32) {
        for slot in self.slots.iter() {
            loop {
                match slot.word.compare_exchange(FREE, CLOSED, SeqCst, SeqCst) {
                    Ok(_) | Err(CLOSED) => break,
                    Err(POSTED) => {
                        if slot.word.compare_exchange(POSTED, TAKEN, SeqCst, SeqCst).is_ok() {
                            Self::finish(slot, errno);
                        }
                    }
                    // Being filled, or answered and not yet read: its poster
                    // is on its way.
                    Err(_) => yield_now(),
                }
            }
        }
    }

    /// Opens a closed table again (the mapping is attached again).
    pub fn reopen(&self) {
        for slot in self.slots.iter() {
            let _ = slot.word.compare_exchange(CLOSED, FREE, SeqCst, SeqCst);
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    const FAULT: Posted = Posted {
        address: 4096,
        write: true,
        thread: 7,
    };

    #[test]
    fn loom_a_posted_fault_is_answered_once_and_its_slot_freed() {
        loom::model(|| {
            let handoffs = Arc::new(Handoffs::with_slots(1));
            let service = {
                let handoffs = handoffs.clone();
                loom::thread::spawn(move || {
                    let mut answered = 0;
                    while answered == 0 {
                        handoffs.take_posted(|index, fault| {
                            assert_eq!(fault, FAULT);
                            handoffs.answer(index, 28);
                            answered += 1;
                        });
                        loom::thread::yield_now();
                    }
                })
            };
            assert_eq!(handoffs.hand_off(FAULT, || {}), Some(28));
            service.join().unwrap();
            assert_eq!(handoffs.slots[0].word.load(SeqCst), FREE);
        });
    }

    #[test]
    fn loom_closing_never_strands_a_poster() {
        loom::model(|| {
            let handoffs = Arc::new(Handoffs::with_slots(1));
            let service = {
                let handoffs = handoffs.clone();
                loom::thread::spawn(move || handoffs.close(5))
            };
            let got = handoffs.hand_off(FAULT, || {});
            assert!(matches!(got, None | Some(5)), "{got:?}");
            service.join().unwrap();
            assert_eq!(handoffs.slots[0].word.load(SeqCst), CLOSED);
            handoffs.reopen();
            assert_eq!(handoffs.slots[0].word.load(SeqCst), FREE);
        });
    }
}
