//! What the fault service does for one mapping: resolves each fault it
//! reads, follows the mapping's [`OnFull`](crate::OnFull) policy when the
//! store is full (park, retry later, or fail), and fails an access that
//! must fail the way the kernel's `mmap` fails it. `service.rs` decides
//! which worker runs these and when; several workers may serve one mapping
//! at once (each holds its `serving` lock shared), so the faults waiting
//! ([`Waiting`]) are behind a lock of their own, held only to look at them
//! or change them, never across a fault's resolution.
//!
//! Nothing here lets a panic (in the resolver, the store, or the user's
//! callback) go: the panic is caught, the faulting access fails, and the
//! mapping is marked failed, so every later fault fails and every later call
//! returns [`Error::HandlerFailed`](crate::Error::HandlerFailed). A thread
//! left waiting on a fault nobody reads would hang forever.
//!
//! It also serves the faults a faulting thread's signal handler hands over
//! (in-thread delivery, see `in_thread.rs`): they arrive through the
//! hand-off slots with the doorbell, go through the same resolver and
//! policy, and are answered through their slot instead of by a wake-up.

use std::any::Any;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::claims::Writeback;
use crate::engine::{Access, Engine, Failure, Resolved, StoreCalls};
use crate::options::{FullAction, FullFault};
use crate::sys::{self, Fault, ThreadState};

/// `FullAction::Retry` waits this long before the first retry, doubling up
/// to [`RETRY_MAX`], so a callback that keeps answering Retry neither spins
/// nor holds up the other faults.
const RETRY_FIRST: Duration = Duration::from_millis(1);
const RETRY_MAX: Duration = Duration::from_millis(100);

/// Reports of one parked fault within [`SPIN_WINDOW`] that mean its thread
/// is spinning: a thread inside a system call with a signal pending is
/// retried by the kernel at once, again and again (thousands of times a
/// second), and cannot see the signal until the call returns. A thread in
/// user mode re-reports once per signal it handles.
const SPINNING: u32 = 256;
const SPIN_WINDOW: Duration = Duration::from_millis(500);

/// One mapping's faults waiting for something: space or a flush's
/// writeback (parked, with how often each was reported again), or their
/// retry time.
#[derive(Default)]
pub(crate) struct Waiting {
    parked: Vec<(Fault, u32, Instant)>,
    retries: Vec<(Fault, u32, Instant)>,
    /// Bumped each time the parked faults are taken to try again: a fault
    /// parked after a ring it did not see rings again ([`park`]).
    rings: u64,
}

/// Whether a reported fault is one already waiting.
enum Held {
    No,
    Yes,
    /// Waiting, and spinning inside a system call: fail it now.
    Spinning(Fault),
}

/// The same thread faulting on the same page.
fn same_fault(engine: &Engine, a: &Fault, b: &Fault) -> bool {
    a.thread == b.thread && locate(engine, a).1 == locate(engine, b).1
}

impl Waiting {
    /// A thread faulting inside a system call re-reports the same fault each
    /// time something wakes it; one entry per thread and page is enough.
    /// A parked fault reported [`SPINNING`] times by a thread inside a system
    /// call is taken out and returned: that call must fail now (`EFAULT`, as
    /// a wait a signal interrupts) rather than spin until space comes.
    fn holds(&mut self, engine: &Engine, fault: &Fault) -> Held {
        if let Some(at) = self
            .parked
            .iter()
            .position(|(f, _, _)| same_fault(engine, f, fault))
        {
            let (_, repeats, since) = &mut self.parked[at];
            *repeats += 1;
            if *repeats < SPINNING {
                return Held::Yes;
            }
            let fast = since.elapsed() < SPIN_WINDOW;
            (*repeats, *since) = (0, Instant::now());
            // Spinning threads are seen running or inside their call; a
            // thread seen blocked in user mode is only being signalled.
            return match sys::thread_state(fault.thread) {
                ThreadState::UserMode => Held::Yes,
                _ if fast => Held::Spinning(self.parked.swap_remove(at).0),
                _ => Held::Yes,
            };
        }
        if self.retries.iter().any(|(f, _, _)| same_fault(engine, f, fault)) {
            Held::Yes
        } else {
            Held::No
        }
    }

    fn park(&mut self, fault: Fault) {
        self.parked.push((fault, 0, Instant::now()));
    }
}

/// A fault the userfaultfd reported.
pub(crate) fn reported(engine: &Engine, fault: Fault) {
    engine.counters.fault(fault.write, fault.write_protect);
    let held = engine.lock_waiting().holds(engine, &fault);
    match held {
        Held::No => handle(engine, fault, 0),
        Held::Yes => {}
        Held::Spinning(parked) => fail_spinning_call(engine, &parked),
    }
}

/// The mapping asked for attention: space may have been freed or a flush
/// be done with pages (parked faults try again), or a signal handler
/// handed a fault over.
pub(crate) fn rung(engine: &Engine) {
    let parked = {
        let mut waiting = engine.lock_waiting();
        waiting.rings += 1;
        std::mem::take(&mut waiting.parked)
    };
    for (f, _, _) in parked {
        handle(engine, f, 0);
    }
    let mut posted = Vec::new();
    engine
        .handoffs
        .take_posted(|slot, p| posted.push(handed_off(slot, p)));
    for f in posted {
        engine.counters.handed_off();
        handle(engine, f, 0);
    }
}

/// Retries whose time has come.
pub(crate) fn retry_due(engine: &Engine) {
    let now = Instant::now();
    let due = {
        let mut waiting = engine.lock_waiting();
        let (due, later) = std::mem::take(&mut waiting.retries)
            .into_iter()
            .partition::<Vec<_>, _>(|&(_, _, at)| at <= now);
        waiting.retries = later;
        due
    };
    for (f, attempt, _) in due {
        handle(engine, f, attempt);
    }
}

/// Lifts the fences whose system call has moved on; returns when the
/// mapping next wants serving, if ever. Called with the waiting faults
/// locked (`service.rs` writes the answer down before letting them go).
pub(crate) fn next_due(engine: &Engine, waiting: &Waiting) -> Option<Instant> {
    let fence_check = match engine.lift_ended_fences() {
        Ok(next) => next.map(|after| Instant::now() + after),
        Err(e) => {
            engine.set_handler_failure(format!("lifting a fence: {e}"));
            None
        }
    };
    let next_retry = waiting.retries.iter().map(|&(_, _, at)| at).min();
    [next_retry, fence_check].into_iter().flatten().min()
}

/// The mapping is being closed: nobody may still be faulting on it, and a
/// thread left waiting would never be woken, so fail it instead.
pub(crate) fn closing(engine: &Engine, waiting: &mut Waiting) {
    let left = waiting
        .parked
        .drain(..)
        .map(|(f, _, _)| f)
        .chain(waiting.retries.drain(..).map(|(f, _, _)| f));
    for f in left.collect::<Vec<_>>() {
        refuse(
            engine,
            &f,
            Failure::Io(io::Error::other("mapping closed while waiting for space")),
        );
    }
}

/// A fault a signal handler handed over, as the resolver takes it. It may
/// be a write-protect fault or a missing one; the resolver finds out (it
/// reconciles every handed-off fault with what is in memory).
fn handed_off(slot: usize, posted: crate::handoff::Posted) -> Fault {
    Fault {
        address: posted.address,
        write: posted.write,
        write_protect: false,
        thread: posted.thread,
        slot: Some(slot),
    }
}

/// Resolves one fault, catching any panic on the way.
fn handle(engine: &Engine, fault: Fault, attempt: u32) {
    let started = Instant::now();
    let rings = engine.lock_waiting().rings;
    if let Some(why) = engine.handler_failure() {
        refuse(engine, &fault, Failure::Io(io::Error::other(why)));
        return;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| resolve(engine, &fault)));
    match outcome {
        Ok(Ok(())) => {
            if let Some(slot) = fault.slot {
                engine.handoffs.answer(slot, 0);
            }
        }
        Ok(Err(Failure::Full(error))) => {
            let (offset, _, _) = locate(engine, &fault);
            let full = FullFault {
                offset,
                thread: fault.thread,
                error: &error,
            };
            match catch_unwind(AssertUnwindSafe(|| engine.on_full.decide(&full))) {
                Ok(FullAction::Sigbus) => refuse(engine, &fault, Failure::Full(error)),
                Ok(FullAction::Wait) => {
                    engine.counters.parked();
                    park(engine, fault, rings);
                }
                Ok(FullAction::Retry) => {
                    let delay = RETRY_FIRST.saturating_mul(1 << attempt.min(16)).min(RETRY_MAX);
                    engine
                        .lock_waiting()
                        .retries
                        .push((fault, attempt + 1, Instant::now() + delay));
                }
                Err(panic) => failed(engine, &fault, panic),
            }
        }
        // The flush writing the page rings when it is done with it; waiting
        // here instead could hold up the fault its own write meets.
        Ok(Err(Failure::InWriteback)) => park(engine, fault, rings),
        Ok(Err(failure)) => refuse(engine, &fault, failure),
        Err(panic) => failed(engine, &fault, panic),
    }
    engine.counters.handler_time(started.elapsed());
}

/// Parks `fault` until the mapping is rung. A ring since `rings` (while
/// another worker resolved this fault) took the parked faults before this
/// one joined them: ring again, or it would wait for the next.
fn park(engine: &Engine, fault: Fault, rings: u64) {
    let mut waiting = engine.lock_waiting();
    waiting.park(fault);
    let missed = waiting.rings != rings;
    drop(waiting);
    if missed {
        engine.ring();
    }
}

/// Makes the faulting page ready under the flags lock, or says why not.
fn resolve(engine: &Engine, fault: &Fault) -> Result<(), Failure> {
    let (_, page, access) = locate(engine, fault);
    if found_ready(engine, fault, page, access)? {
        engine.counters.found_ready();
        if fault.slot.is_none() {
            engine.wake(page)?;
        }
        return Ok(());
    }
    let mut flags = engine.lock_flags();
    if !fault.write_protect {
        // A missing page the flags call resident was dropped behind our back
        // (or the report is stale); without this the two would disagree
        // forever and the thread would refault in a loop.
        engine.reconcile(&mut flags, page)?;
    }
    let (flags, resolved) = engine.resolve_fault(flags, page, access, StoreCalls::Ordinary, Writeback::Park);
    drop(flags);
    if resolved? == Resolved::AlreadyReady && fault.slot.is_none() {
        // Someone else resolved the page first; the faulting thread waits.
        engine.wake(page)?;
    }
    Ok(())
}

/// Whether the missing page of a fault already serves its access, as its
/// state word says without the flags lock (`page_state.rs`): another fault
/// resolved it since this one was reported (a neighbour's fill took it
/// along, or several threads faulted on it). The thread then only needs
/// waking; if the page still does not serve it, it faults again. Left to
/// the flags: a page the word calls in memory but is not (dropped behind
/// the mapping's back), a fenced page (its fence is lifted under the lock),
/// and write-protect faults (a page the word calls writable may be being
/// protected right now: the word changes after the kernel's protection).
fn found_ready(engine: &Engine, fault: &Fault, page: u64, access: Access) -> io::Result<bool> {
    Ok(!fault.write_protect
        && engine.page_states.state(page).allows(access)
        && engine.region.is_resident(engine.page_offset(page))?
        && !engine.is_fenced(page))
}

/// Ends a system call that spins on a parked fault: its page is fenced, so
/// the call fails with `EFAULT` (as a wait a signal interrupts) and the
/// thread goes on to handle its signal.
fn fail_spinning_call(engine: &Engine, fault: &Fault) {
    let (offset, page, access) = locate(engine, fault);
    engine.record_fault_error(format!(
        "write at {offset}: interrupted by a signal while waiting for space"
    ));
    let _flags = engine.lock_flags();
    let fenced = engine.fence(page, access, fault.thread, String::new());
    wake_if_not_failed(engine, offset, page, fenced);
}

/// The handler failed on this fault: sticky failure, and the access fails.
fn failed(engine: &Engine, fault: &Fault, panic: Box<dyn Any + Send>) {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    engine.set_handler_failure(format!("panicked: {what}"));
    refuse(engine, fault, Failure::Io(io::Error::other(what)));
}

/// Fails the faulting access as the kernel's `mmap` would: a page wholly
/// past EOF is poisoned (every access to it fails, in user mode with SIGBUS
/// and the address, in a system call with `EFAULT`); otherwise a user-mode
/// access gets SIGBUS and a system call `EFAULT` (through a fence).
fn refuse(engine: &Engine, fault: &Fault, why: Failure) {
    let (offset, page, access) = locate(engine, fault);
    let message = match &why {
        Failure::PastEof => format!("access at {offset} is past the end of the file"),
        Failure::Full(e) => match access {
            Access::Write => format!("write at {offset}: {e}"),
            // Kernel dirty tracking: a page comes in with its blocks (`kernel_dirty.rs`).
            Access::Read => format!("read at {offset} (allocating its page's blocks): {e}"),
        },
        Failure::Io(e) => format!("fault at {offset}: {e}"),
        Failure::HandOff(errno) => format!("fault at {offset}: {}", io::Error::from_raw_os_error(*errno)),
        Failure::InWriteback => format!("write at {offset}: the page is being flushed"),
    };
    engine.record_fault_error(message);
    if let Some(slot) = fault.slot {
        // The thread waits in its signal handler, in user mode: it fails
        // the access itself (SIGBUS with this errno); past EOF needs no
        // poison (a system call meets no fault there in this mode, only EFAULT).
        engine.counters.sigbus();
        engine.handoffs.answer(slot, errno(&why));
        return;
    }
    let mut flags = engine.lock_flags();
    let past_eof = matches!(why, Failure::PastEof);
    let outcome = if past_eof && !flags.past_eof(page) {
        // EOF moved up since: the page is valid now, let the access retry.
        engine.wake(page)
    } else if past_eof && engine.uffd().can_poison() {
        engine.counters.poisoned();
        engine.poison(&mut flags, page)
    } else {
        match sys::thread_state(fault.thread) {
            ThreadState::InSyscall(call) => engine.fence(page, access, fault.thread, call),
            ThreadState::UserMode | ThreadState::Unknown => {
                drop(flags);
                engine.counters.sigbus();
                // The thread may have exited meanwhile; there is nobody left to tell.
                let _ = sys::send_sigbus(fault.thread, fault.address, errno(&why));
                Ok(())
            }
        }
    };
    wake_if_not_failed(engine, offset, page, outcome);
}

/// Where a fault is: its file offset, its page, and the access it wants.
fn locate(engine: &Engine, fault: &Fault) -> (u64, u64, Access) {
    let offset = fault.address - engine.region.base();
    let access = if fault.write { Access::Write } else { Access::Read };
    (offset, engine.geo.page_of(offset), access)
}

/// If neither poison nor fence took, wakes the thread rather than leave it
/// hanging: it faults again, and the failure is tried again.
fn wake_if_not_failed(engine: &Engine, offset: u64, page: u64, outcome: io::Result<()>) {
    if let Err(e) = outcome {
        engine.record_fault_error(format!("failing the access at {offset}: {e}"));
        let _ = engine.wake(page);
    }
}

/// What a SIGBUS from mkwrite carries in `si_errno`.
fn errno(why: &Failure) -> libc::c_int {
    match why {
        Failure::PastEof => libc::EFAULT,
        Failure::Full(crate::Error::Quota(_)) => libc::EDQUOT,
        Failure::Full(_) => libc::ENOSPC,
        Failure::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        Failure::HandOff(errno) => *errno,
        Failure::InWriteback => libc::EBUSY,
    }
}
