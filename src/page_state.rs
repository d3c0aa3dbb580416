//! One atomic word per page: where the page stands now (absent, being
//! filled, in memory write-protected, in memory writable), readable by a
//! fault without the flags lock.
//!
//! * A fault whose page already allows its access (another thread resolved
//!   it a moment ago: a stale report, or a neighbour filled around it) sees
//!   so here and goes on, without the mapping's lock.
//! * A fault whose page is being filled sleeps on that page's word (a
//!   futex) until the fill records it or gives it back, again without the
//!   lock, and is woken by that page's fill alone.
//! * A fill claims each of its pages by compare-and-swap, absent to
//!   filling, so one page is filled once.
//!
//! The words are written only under the flags lock (`Flags` is their one
//! writer, in `set_residency` and the fill claims), so the transitions of
//! one page are serialized and checked against [`may_move`]; readers need no
//! lock, and what they read only ever sends a thread back to retry its
//! access, which the kernel's page tables then judge (a stale word costs a
//! second fault, never a wrong answer). The dirty, writeback and referenced
//! marks stay in the flags' bitmaps: flushes and the eviction clock scan
//! them, and a bitmap skips 64 untouched pages per word where these words
//! would be read one by one.

use std::io;
use std::sync::atomic::Ordering;

use crate::engine::Access;
use crate::sync::AtomicU32;

/// Where a page stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Not in memory: the next touch faults as missing.
    Absent = 0,
    /// Claimed by a fill that runs with the flags lock released: not in
    /// memory yet as far as the flags know; faults on it wait.
    Filling = 1,
    /// In memory, write-protected: reads run free, the next write faults.
    Protected = 2,
    /// In memory and writable.
    Writable = 3,
}

impl State {
    fn from_word(word: u32) -> State {
        match word {
            0 => State::Absent,
            1 => State::Filling,
            2 => State::Protected,
            _ => State::Writable,
        }
    }

    /// Whether a page in this state serves `access` without a fault.
    pub fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (State::Protected, Access::Read) | (State::Writable, _)
        )
    }
}

/// Whether a page may move from `from` to `to`. Only a fill claim moves a
/// page into or out of `Filling`, and a filling page leaves it only by its
/// fill's end: recorded (in memory) or given back (absent).
pub(crate) fn may_move(from: State, to: State) -> bool {
    to != State::Filling || matches!(from, State::Absent | State::Filling)
}

/// The words of one mapping's pages, and how many threads sleep on them.
pub(crate) struct PageStates {
    words: Words,
    /// Threads about to sleep or sleeping on some page's word: only then is
    /// a wake-up worth a system call.
    sleepers: AtomicU32,
}

impl std::fmt::Debug for PageStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageStates")
            .field("pages", &self.words.len())
            .finish_non_exhaustive()
    }
}

impl PageStates {
    /// `pages` words, all absent.
    pub fn new(pages: u64) -> io::Result<PageStates> {
        Ok(PageStates {
            words: Words::new(pages)?,
            sleepers: AtomicU32::new(0),
        })
    }

    /// `pages` words (no fewer than these), holding these states; the rest
    /// absent. Nothing fills meanwhile (the caller holds the flags lock
    /// with no claim in flight).
    pub fn grown(&self, pages: u64) -> io::Result<PageStates> {
        let grown = PageStates::new(pages)?;
        for page in 0..self.words.len() {
            let word = self.words.get(page).load(Ordering::Acquire);
            debug_assert_ne!(State::from_word(word), State::Filling);
            if word != 0 {
                grown.words.get(page).store(word, Ordering::Release);
            }
        }
        Ok(grown)
    }

    pub fn state(&self, page: u64) -> State {
        State::from_word(self.words.get(page).load(Ordering::Acquire))
    }

    /// Moves `page` to `to`, waking whoever sleeps on it if a fill ended.
    /// Under the flags lock only (the module docs).
    pub fn set(&self, page: u64, to: State) {
        let from = State::from_word(self.words.get(page).swap(to as u32, Ordering::SeqCst));
        debug_assert!(may_move(from, to), "page {page}: {from:?} to {to:?}");
        if from == State::Filling && to != State::Filling {
            self.wake(page);
        }
    }

    /// Claims the absent `page` for a fill; false if it is not absent.
    /// Under the flags lock only.
    pub fn claim(&self, page: u64) -> bool {
        self.words
            .get(page)
            .compare_exchange(
                State::Absent as u32,
                State::Filling as u32,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// Gives `page` back, absent, if its fill did not record it.
    /// Under the flags lock only.
    pub fn unclaim(&self, page: u64) {
        if self.state(page) == State::Filling {
            self.set(page, State::Absent);
        }
    }

    /// Sleeps while `page` is being filled; returns where it stands then.
    /// Async-signal-safe (atomics and `futex(2)`); takes no lock.
    pub fn wait_while_filling(&self, page: u64) -> State {
        let word = self.words.get(page);
        // Counted before the word is read: a fill that ends after that read
        // sees the count and wakes us ([`wake`](Self::wake)).
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let state = loop {
            match State::from_word(word.load(Ordering::SeqCst)) {
                State::Filling => crate::sync::wait_while(word, State::Filling as u32),
                state => break state,
            }
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        state
    }

    fn wake(&self, page: u64) {
        // A read-modify-write, not a load: it reads the latest count, and a
        // sleeper's later count reads from it, so that sleeper then sees
        // the new state. (SeqCst alone would do on the CPU; loom models
        // SeqCst loads as acquire and would find the wake-up lost.)
        if self.sleepers.fetch_add(0, Ordering::SeqCst) > 0 {
            crate::sync::wake_all(self.words.get(page));
        }
    }
}

/// The words themselves: in memory that reads as zeros (absent) until a
/// page's state is first set, so a mapping's words cost what its touched
/// pages need, not what its capacity would (4 bytes a page at most).
#[cfg(not(loom))]
type Words = crate::sys::ZeroedAtomics;

/// Under loom, plain loom atomics, so the protocol is model-checked.
#[cfg(loom)]
struct Words(Vec<AtomicU32>);

#[cfg(loom)]
impl Words {
    fn new(len: u64) -> io::Result<Words> {
        Ok(Words((0..len).map(|_| AtomicU32::new(0)).collect()))
    }

    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn get(&self, page: u64) -> &AtomicU32 {
        &self.0[page as usize]
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use State::*;

    #[test]
    fn only_a_fill_claim_enters_filling_and_only_its_end_leaves_it() {
        let all = [Absent, Filling, Protected, Writable];
        for from in all {
            for to in all {
                let allowed = may_move(from, to);
                let expected = match (from, to) {
                    (Absent, Filling) => true,
                    (_, Filling) => from == Filling,
                    _ => true,
                };
                assert_eq!(allowed, expected, "{from:?} to {to:?}");
            }
        }
    }

    #[test]
    fn an_access_is_allowed_by_residency_alone() {
        assert!(Protected.allows(Access::Read) && !Protected.allows(Access::Write));
        assert!(Writable.allows(Access::Read) && Writable.allows(Access::Write));
        for s in [Absent, Filling] {
            assert!(!s.allows(Access::Read) && !s.allows(Access::Write), "{s:?}");
        }
    }

    #[test]
    fn a_page_is_claimed_once_and_given_back_or_recorded() {
        let states = PageStates::new(3).unwrap();
        assert!(states.claim(1));
        assert!(!states.claim(1), "filled once");
        assert_eq!(states.state(1), Filling);
        states.unclaim(1);
        assert_eq!(states.state(1), Absent);
        assert!(states.claim(1));
        states.set(1, Protected);
        states.unclaim(1);
        assert_eq!(states.state(1), Protected, "a recorded page is not given back");
        assert!(!states.claim(1));
        assert_eq!(states.wait_while_filling(1), Protected);
        let grown = states.grown(1000).unwrap();
        assert_eq!((grown.state(1), grown.state(999)), (Protected, Absent));
    }

    #[test]
    fn a_sleeper_on_a_filling_page_wakes_when_its_fill_ends() {
        let states = std::sync::Arc::new(PageStates::new(2).unwrap());
        assert!(states.claim(0));
        let sleeper = {
            let states = states.clone();
            std::thread::spawn(move || states.wait_while_filling(0))
        };
        while states.sleepers.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        states.set(0, Writable);
        assert_eq!(sleeper.join().unwrap(), Writable);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// One fault (claim, then record) for both models.
    fn fault(states: Arc<PageStates>) -> impl FnOnce() -> u32 {
        move || match states.claim(0) {
            true => {
                states.set(0, State::Protected);
                1
            }
            false => {
                assert_ne!(states.wait_while_filling(0), State::Filling);
                0
            }
        }
    }

    /// Two faults race to fill one page: exactly one claims it, and the
    /// other, if it finds the page being filled, sees the fill end (a lost
    /// wake-up would leave it asleep: the model reports the deadlock).
    #[test]
    fn loom_one_page_is_filled_once() {
        loom::model(|| {
            let states = Arc::new(PageStates::new(1).unwrap());
            let a = loom::thread::spawn(fault(states.clone()));
            let fills = fault(states.clone())() + a.join().unwrap();
            assert_eq!(fills, 1, "one page, one fill");
            assert_eq!(states.state(0), State::Protected);
        });
    }

    /// A fill that gives its page back (its store read failed) wakes the
    /// sleeper, which finds the page absent and may claim it itself.
    #[test]
    fn loom_a_page_given_back_wakes_its_sleeper() {
        loom::model(|| {
            let states = Arc::new(PageStates::new(1).unwrap());
            assert!(states.claim(0));
            let sleeper = {
                let states = states.clone();
                loom::thread::spawn(move || states.wait_while_filling(0))
            };
            states.unclaim(0);
            assert_eq!(sleeper.join().unwrap(), State::Absent);
            assert!(states.claim(0), "absent again: claimable");
        });
    }
}
