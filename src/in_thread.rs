//! Faults resolved in the faulting thread ([`Delivery::InThread`](crate::Delivery::InThread)): the
//! userfaultfd raises SIGBUS in the thread that touched a missing or
//! write-protected page (`UFFD_FEATURE_SIGBUS`), and the handler resolves
//! the fault right there, with the same resolver as the fault service,
//! through the store's signal-safe calls. No thread is woken, so a fault
//! costs the resolver's work and one signal (measured here: ~5 µs against
//! ~50 µs for a round trip to a handler thread on the other CPU).
//!
//! Anything the signal handler cannot finish (a store with no signal-safe
//! calls, a full store, any failure, a page dropped behind the mapping's
//! back) is handed to the fault service (`handoff.rs`), which
//! applies the [`OnFull`](crate::OnFull) policy as for any fault; the thread
//! waits in its handler for the answer.
//!
//! Why the handler may take the flags lock: the signal is raised only by a
//! user-mode access to the mapping's memory, and no thread ever makes one
//! while holding the flags lock or the locks taken after it (DESIGN rule
//! 7: under them, memory is only read through `/proc/self/mem` and written
//! through `UFFDIO_COPY`), so the interrupted thread never holds them; if
//! another thread holds them, the handler waits as it would for that thread.
//! Nothing on the way to success allocates (the scratch buffer is sized at
//! open; failures are plain errnos, handed off).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use crate::claims::Writeback;
use crate::engine::{Access, Engine, StoreCalls};
use crate::error::{Error, Result};
use crate::flags::Residency;
use crate::handoff::Posted;
use crate::page_state::State;
use crate::registry::Registry;
use crate::sys::guard::{self, Interrupted, PageFault, Verdict};

/// Mappings resolved in-thread at once, at most.
const MAX_MAPPINGS: usize = 16 * 1024;

static MAPPINGS: OnceLock<Registry<Engine>> = OnceLock::new();

/// A mapping's entry in the registry the signal handler reads; removed on drop.
#[derive(Debug)]
pub(crate) struct Registration(usize);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(registry) = MAPPINGS.get() {
            registry.remove(self.0);
        }
    }
}

/// Makes the signal handler resolve faults in `engine`'s region.
pub(crate) fn register(engine: &Arc<Engine>) -> Result<Registration> {
    let registry = MAPPINGS.get_or_init(|| Registry::new(MAX_MAPPINGS));
    guard::install_resolver(resolve)?;
    let base = engine.region.base() as usize;
    // SAFETY: the mapping holds `engine` alive (an Arc) longer than the
    // registration, which it drops first.
    unsafe { registry.insert(base..base + engine.region.len(), Arc::as_ptr(engine)) }
        .map(Registration)
        .ok_or_else(|| {
            Error::Io(std::io::Error::other(format!(
                "more than {MAX_MAPPINGS} mappings deliver faults in-thread"
            )))
        })
}

/// The resolver the SIGBUS handler asks first. Async-signal-safe: the
/// registry lookup is atomics only; see the module docs for the rest.
fn resolve(addr: usize, fault: PageFault, interrupted: &Interrupted) -> Verdict {
    let Some(registry) = MAPPINGS.get() else {
        return Verdict::NotOurs;
    };
    // A forked child has the registry but none of the memory, threads or
    // locks behind it: nothing there is ours to resolve.
    let pid = crate::sys::process_id();
    let Some(engine) = registry.find(addr, |e| e.owner == pid && e.region.contains(addr)) else {
        return Verdict::NotOurs;
    };
    engine.fault_in_thread(addr as u64, fault, interrupted)
}

impl Engine {
    /// Resolves a fault at `addr` in the faulting thread, or hands it off
    /// and waits for the answer.
    fn fault_in_thread(&self, addr: u64, fault: PageFault, interrupted: &Interrupted) -> Verdict {
        let page = self.geo.page_of(addr - self.region.base());
        let access = if fault.write { Access::Write } else { Access::Read };
        if self.resolved_here(page, access, fault.present, interrupted) {
            return Verdict::Resolved;
        }
        let fault = Posted {
            address: addr,
            write: fault.write,
            thread: crate::sys::thread_id(),
        };
        // The wait may be long (a full store under `OnFull::Wait`): let the
        // thread's other signals in meanwhile; no lock is held here.
        interrupted.let_signals_in();
        let answer = self.handoffs.hand_off(fault, || self.ring());
        match answer {
            Some(0) => Verdict::Resolved,
            Some(errno) => Verdict::Failed(errno),
            None => Verdict::Failed(libc::EIO), // the mapping is closing
        }
    }

    /// Tries to resolve the fault in this signal handler; false if it must
    /// be handed off. Counts the fault either way. `present`: the CPU found
    /// the page mapped (a write-protect fault).
    fn resolved_here(&self, page: u64, access: Access, present: bool, interrupted: &Interrupted) -> bool {
        let resident = || self.region.is_resident(self.page_offset(page)).ok();
        if self.settled_without_lock(page, access, present, resident, interrupted) {
            return true;
        }
        let flags = self.lock_flags();
        let write_protect = match (flags.residency(page), access) {
            (Residency::Absent, _) => false,
            // A write to a page the CPU found mapped and the flags protect.
            (Residency::Protected, Access::Write) if present => true,
            // A write to a protected page the CPU found missing: dropped
            // behind the mapping's back (hand it off, the service
            // reconciles), or filled by another thread since (a write-protect
            // fault now).
            (Residency::Protected, Access::Write) => match resident() {
                Some(true) => true,
                _ => {
                    self.counters.fault(true, false);
                    return false;
                }
            },
            // The flags already allow this access: either another thread
            // resolved the page a moment ago (run again), or it was dropped
            // behind the mapping's back (hand off: the service reconciles).
            _ if resident() == Some(true) => return true,
            _ => {
                self.counters.fault(access == Access::Write, false);
                return false;
            }
        };
        self.counters.fault(access == Access::Write, write_protect);
        let calls = match self.store.signal_safe() {
            // Over budget, the fault service evicts first (a signal handler
            // may not write back), then resolves it.
            Some(_) if self.budget.as_ref().is_some_and(|b| b.over()) => return false,
            Some(store) if !self.failed.load(Ordering::SeqCst) => StoreCalls::InSignal(store),
            _ => return false,
        };
        let (_flags, resolved) = self.resolve_fault(flags, page, access, calls, Writeback::Wait);
        let resolved = resolved.is_ok();
        if resolved {
            self.counters.in_thread();
        }
        resolved
    }

    /// Whether the fault at `page` needs nothing from this thread, as its
    /// state word says, read without the flags lock (`page_state.rs`): the
    /// page was missing and now serves the access (resolved by another
    /// thread a moment ago), or it was being filled and now the fill has
    /// ended. Either way the thread runs its access again, and faults again
    /// if the page still does not serve it. Left to the flags: a page the
    /// word calls in memory but is not (dropped behind the mapping's back),
    /// and a write-protect fault (`present`) on a page the word calls
    /// writable, which is being protected right now (the word changes
    /// after the kernel's protection, under the lock: retrying at once
    /// would spin until it does).
    fn settled_without_lock(
        &self,
        page: u64,
        access: Access,
        present: bool,
        resident: impl Fn() -> Option<bool>,
        interrupted: &Interrupted,
    ) -> bool {
        match self.page_states.state(page) {
            State::Filling => {
                self.counters.fault(access == Access::Write, present);
                self.counters.fill_wait();
                // A network store's read may take milliseconds: let the
                // thread's other signals in meanwhile; no lock is held here.
                interrupted.let_signals_in();
                self.page_states.wait_while_filling(page);
                true
            }
            state if state.allows(access) && !present && resident() == Some(true) => {
                self.counters.found_ready();
                true
            }
            _ => false,
        }
    }
}
