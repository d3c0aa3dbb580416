//! Budgets of resident memory, for files larger than memory: the mappings
//! given one [`Budget`] keep at most about its size in memory between them.
//! Past it, pages are evicted: a clock over each mapping's resident pages
//! gives a page faulted in or written since the hand last passed a second
//! chance (reads of resident pages do not trap, so that is all the
//! reference information there is for free); dirty victims are written back
//! first, by the protect-then-copy rule of flush, so no concurrent write is
//! lost, and a page whose write-back failed stays dirty and resident.
//!
//! Who evicts: whoever made the mapping exceed it, before going on: a
//! checked call on return, the fault service after resolving a fault, and
//! an in-thread fault by handing itself to the fault service (a signal
//! handler may not write back). So memory overshoots the budget by at most
//! one fill (33 pages) per thread faulting at that moment.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::engine::{Engine, relock};
use crate::error::Result;

/// Eviction frees down to this fraction below the limit, so that it runs
/// in batches rather than at every fault (vmcache drops 64 pages a call to
/// cut TLB shootdowns).
const SLACK_DIVISOR: u64 = 16;
/// Pages asked of one mapping per turn of the clock, at least.
const BATCH_PAGES: u64 = 64;

/// A limit on the memory a group of mappings keeps resident (bytes of
/// file pages, not counting mkwrite's own small state). Clone it to share:
/// every mapping opened with a clone counts against the same limit.
///
/// ```
/// use mkwrite::{Budget, MappingOptions, MemStore, Store};
/// let budget = Budget::new(64 * 1024); // 16 pages for every mapping given it
/// let store = MemStore::new(4096, 256)?;
/// store.set_len(1 << 20)?;
/// let map = MappingOptions::new().budget(&budget).map_store(store)?;
/// for page in 0..256 {
///     map.write(page * 4096, &[1])?; // 1 MiB written through 64 KiB of memory
/// }
/// assert!(budget.resident() <= budget.limit());
/// assert!(map.stats().pages_evicted >= 240);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Budget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    limit: u64,
    /// Resident bytes of every member, kept by their flags.
    resident: Arc<AtomicU64>,
    members: Mutex<Vec<Weak<Engine>>>,
    /// One evictor at a time; the others wait for it (and the room it makes).
    evicting: Mutex<()>,
    /// The member the clock visits next.
    next: AtomicUsize,
}

impl Budget {
    /// A budget of `bytes` of resident pages.
    pub fn new(bytes: u64) -> Budget {
        Budget {
            shared: Arc::new(Shared {
                limit: bytes,
                resident: Arc::default(),
                members: Mutex::default(),
                evicting: Mutex::new(()),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.shared.limit
    }

    /// Bytes of file pages its mappings hold in memory now.
    pub fn resident(&self) -> u64 {
        self.shared.resident.load(Ordering::SeqCst)
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }
}

impl Shared {
    /// The counter a member's flags keep.
    pub fn meter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.resident)
    }

    pub fn join(&self, engine: &Arc<Engine>) {
        let mut members = relock(self.members.lock());
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(engine));
    }

    /// The limit in pages of `page` bytes.
    pub fn limit_pages(&self, page: u64) -> usize {
        (self.limit / page) as usize
    }

    /// Whether the members hold more than the limit. Async-signal-safe.
    pub fn over(&self) -> bool {
        self.resident.load(Ordering::SeqCst) > self.limit
    }

    /// Evicts until the members fit below the limit with some slack, or
    /// nothing more can go (every resident page locked, or write-backs
    /// failing); the first write-back error is returned (its pages stay).
    pub fn make_room(&self) -> Result<()> {
        if !self.over() {
            return Ok(());
        }
        let _one = relock(self.evicting.lock());
        let target = self.limit - self.limit / SLACK_DIVISOR;
        let mut idle_turns = 0;
        while self.resident.load(Ordering::SeqCst) > target {
            let members: Vec<Arc<Engine>> = relock(self.members.lock())
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            // Two full turns of the clock with nothing evicted: give up.
            if members.is_empty() || idle_turns > 2 * members.len() {
                break;
            }
            let engine = &members[self.next.fetch_add(1, Ordering::SeqCst) % members.len()];
            let page = engine.geo.page;
            let excess = self.resident.load(Ordering::SeqCst).saturating_sub(target);
            // Whole batches, but never more than a quarter of a small budget.
            let batch = BATCH_PAGES.min(self.limit / page / 4).max(1);
            let want = excess.div_ceil(page).max(batch) as usize;
            match engine.evict_some(want)? {
                0 => idle_turns += 1,
                _ => idle_turns = 0,
            }
        }
        Ok(())
    }
}
