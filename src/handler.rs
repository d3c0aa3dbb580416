//! The fault handler thread: reads fault events and hands each to the resolver.
//! Allocation failures follow the mapping's [`OnFull`](crate::OnFull) policy;
//! an access that must fail fails the way the kernel's `mmap` fails it.
//!
//! The handler never dies of a panic (in the resolver, the store, or the
//! user's callback): the panic is caught, the faulting access fails, and the
//! mapping is marked failed, so every later fault fails and every later call
//! returns [`Error::HandlerFailed`](crate::Error::HandlerFailed). A thread
//! left waiting on a fault nobody reads would hang forever.

use std::any::Any;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::engine::{Access, Engine, Failure, Resolved};
use crate::options::{FullAction, FullFault};
use crate::sys::{self, Fault, RawMsg, ThreadState};

/// `FullAction::Retry` waits this long before the first retry, doubling up
/// to [`RETRY_MAX`], so a callback that keeps answering Retry neither spins
/// nor holds up the other faults.
const RETRY_FIRST: Duration = Duration::from_millis(1);
const RETRY_MAX: Duration = Duration::from_millis(100);

pub(crate) fn spawn(engine: Arc<Engine>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("mkwrite-faults".into())
        .spawn(move || {
            if let Err(e) = run(&engine) {
                engine.set_handler_failure(e.to_string());
            }
        })
}

/// Faults waiting for something: space (parked) or their retry time.
#[derive(Default)]
struct Waiting {
    parked: Vec<Fault>,
    retries: Vec<(Fault, u32, Instant)>,
}

impl Waiting {
    /// A thread faulting inside a system call re-reports the same fault each
    /// time something wakes it; one entry per thread and page is enough.
    fn holds(&self, engine: &Engine, fault: &Fault) -> bool {
        let same = |f: &Fault| {
            f.thread == fault.thread
                && engine.geo.page_of(f.address - engine.region.base())
                    == engine.geo.page_of(fault.address - engine.region.base())
        };
        self.parked.iter().any(same) || self.retries.iter().any(|(f, _, _)| same(f))
    }

    fn next_retry(&self) -> Option<Instant> {
        self.retries.iter().map(|&(_, _, due)| due).min()
    }
}

fn run(engine: &Engine) -> io::Result<()> {
    let mut msgs = [RawMsg::default(); 64];
    let mut faults = Vec::with_capacity(msgs.len());
    let mut waiting = Waiting::default();
    let mut fence_check: Option<Duration> = None;
    loop {
        let retry_in = waiting
            .next_retry()
            .map(|due| due.saturating_duration_since(Instant::now()));
        let timeout = [retry_in, fence_check].into_iter().flatten().min();
        let ready = sys::wait_ready(&engine.uffd, &engine.doorbell, timeout)?;
        if ready.doorbell && engine.doorbell.take() {
            if engine.stopping.load(Ordering::SeqCst) {
                // Nobody may still be faulting on a mapping being dropped; any
                // thread waiting here would never be woken, so fail it instead.
                let left = waiting
                    .parked
                    .drain(..)
                    .chain(waiting.retries.drain(..).map(|(f, _, _)| f));
                for f in left.collect::<Vec<_>>() {
                    refuse(
                        engine,
                        &f,
                        Failure::Io(io::Error::other("mapping closed while waiting for space")),
                    );
                }
                return Ok(());
            }
            for f in std::mem::take(&mut waiting.parked) {
                handle(engine, f, 0, &mut waiting);
            }
        }
        if ready.faults {
            faults.clear();
            engine.uffd.read_faults(&mut faults, &mut msgs)?;
            for &f in &faults {
                engine.counters.fault(f.write, f.write_protect);
                if !waiting.holds(engine, &f) {
                    handle(engine, f, 0, &mut waiting);
                }
            }
        }
        let now = Instant::now();
        let (due, later) = std::mem::take(&mut waiting.retries)
            .into_iter()
            .partition::<Vec<_>, _>(|&(_, _, at)| at <= now);
        waiting.retries = later;
        for (f, attempt, _) in due {
            handle(engine, f, attempt, &mut waiting);
        }
        fence_check = engine.lift_ended_fences()?;
    }
}

/// Resolves one fault, catching any panic on the way.
fn handle(engine: &Engine, fault: Fault, attempt: u32, waiting: &mut Waiting) {
    let started = Instant::now();
    if let Some(why) = engine.handler_failure() {
        refuse(engine, &fault, Failure::Io(io::Error::other(why)));
        return;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| resolve(engine, &fault)));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(Failure::Full(error))) => {
            let offset = fault.address - engine.region.base();
            let full = FullFault {
                offset,
                thread: fault.thread,
                error: &error,
            };
            match catch_unwind(AssertUnwindSafe(|| engine.on_full.decide(&full))) {
                Ok(FullAction::Sigbus) => refuse(engine, &fault, Failure::Full(error)),
                Ok(FullAction::Wait) => {
                    engine.counters.parked();
                    waiting.parked.push(fault);
                }
                Ok(FullAction::Retry) => {
                    let delay = RETRY_FIRST.saturating_mul(1 << attempt.min(16)).min(RETRY_MAX);
                    waiting.retries.push((fault, attempt + 1, Instant::now() + delay));
                }
                Err(panic) => failed(engine, &fault, panic),
            }
        }
        Ok(Err(failure)) => refuse(engine, &fault, failure),
        Err(panic) => failed(engine, &fault, panic),
    }
    engine.counters.handler_time(started.elapsed());
}

/// Makes the faulting page ready under the flags lock, or says why not.
fn resolve(engine: &Engine, fault: &Fault) -> Result<(), Failure> {
    let offset = fault.address - engine.region.base();
    let page = engine.geo.page_of(offset);
    let access = if fault.write { Access::Write } else { Access::Read };
    let mut flags = engine.lock_flags();
    if !fault.write_protect {
        // A missing page the flags call resident was dropped behind our back
        // (or the report is stale); without this the two would disagree
        // forever and the thread would refault in a loop.
        engine.reconcile(&mut flags, page)?;
    }
    if engine.resolve(&mut flags, page, access)? == Resolved::AlreadyReady {
        // Someone else resolved the page first; the faulting thread waits.
        engine.wake(page)?;
    }
    Ok(())
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
    let offset = fault.address - engine.region.base();
    let page = engine.geo.page_of(offset);
    let access = if fault.write { Access::Write } else { Access::Read };
    let message = match &why {
        Failure::PastEof => format!("access at {offset} is past the end of the file"),
        Failure::Full(e) => format!("write at {offset}: {e}"),
        Failure::Io(e) => format!("fault at {offset}: {e}"),
    };
    engine.record_fault_error(message);
    let mut flags = engine.lock_flags();
    let past_eof = matches!(why, Failure::PastEof);
    let outcome = if past_eof && !flags.past_eof(page) {
        // EOF moved up since: the page is valid now, let the access retry.
        engine.wake(page)
    } else if past_eof && engine.uffd.can_poison() {
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
    if let Err(e) = outcome {
        // Neither poison nor fence took. Wake the thread rather than leave it
        // hanging: it faults again, and this runs again.
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
    }
}
