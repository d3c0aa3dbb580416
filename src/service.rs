//! The fault service: one userfaultfd, one doorbell and a small pool of
//! threads shared by every mapping of a kind (delivery × fallback), instead
//! of a descriptor pair and a thread per mapping. A mapping costs no
//! descriptor of its own beside its store's.
//!
//! Workers take turns (leader and followers: the one holding the turn takes
//! one queued piece of work, or polls the userfaultfd and queues what it
//! reads, while the others wait for the turn on a mutex, so a fault wakes
//! one thread, not all of them) and serve their piece after giving the turn
//! up. Several workers may serve one mapping at once (each holds its
//! `serving` lock shared), so two faults of one mapping resolve in
//! parallel, as in-thread faults do; the pool grows when every worker is
//! busy (a store call stuck on a network, a callback that blocks), up to
//! [`MAX_WORKERS`].
//! What is done for a mapping (resolve, park, retry, refuse) is `handler.rs`;
//! this file only routes.
//!
//! The services live as long as the process. A forked child starts its own:
//! the parent's threads do not exist there and its userfaultfd belongs to
//! the parent's address space.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::engine::{Engine, relock};
use crate::error::Result;
use crate::handler;
use crate::sys::{self, Doorbell, Fault, RawMsg, Uffd};

/// Workers a service starts with: one polls while one serves.
const MIN_WORKERS: usize = 2;
/// How long a worker with the turn looks for the next fault before it
/// sleeps. Measured (`--only 1,3`, two runs each): 50 µs cuts a handler
/// thread's random first write on ext4 from 57-61 µs to 41-48 and a
/// re-dirty from 27-32 µs to 20-21; 200 µs was no better than none on the
/// random row (the spinning CPU is the one ext4's own work wants).
const SPIN: Duration = Duration::from_micros(50);
/// The pool stops growing here; past it, a mapping whose store hangs can
/// hold up others (each such call blocks one worker).
const MAX_WORKERS: usize = 16;

/// What a service's userfaultfd was opened with; mappings that ask for the
/// same share it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind {
    /// Fall back to a user-mode-only userfaultfd if need be.
    pub fallback: bool,
    /// Faults raise SIGBUS in the faulting thread (in-thread delivery).
    pub sigbus: bool,
    /// Only a user-mode-only userfaultfd.
    pub user_mode_only: bool,
    /// Write-protect faults resolved by the kernel, where it can
    /// ([`DirtyTracking::Kernel`](crate::DirtyTracking::Kernel)).
    pub wp_async: bool,
}

/// One piece of a worker's work: a mapping and what it needs.
enum Work {
    /// The userfaultfd reported this fault.
    Fault(Arc<Engine>, Fault),
    /// The mapping asked for attention (space freed, a fault handed over).
    Rung(Arc<Engine>),
    /// The mapping's retry or fence check is due.
    Due(Arc<Engine>),
}

pub(crate) struct Service {
    pub uffd: Uffd,
    doorbell: Doorbell,
    kind: Kind,
    /// The process that started it (a forked child starts its own).
    owner: u32,
    /// Attached mappings by base address. A worker holds it shared from
    /// reading fault messages until it has looked their mappings up, so once
    /// `detach` has held it exclusively no worker holds a fault it could
    /// take for a later mapping at the same address (unregistering the range
    /// drops the messages still queued).
    attached: RwLock<BTreeMap<u64, Arc<Engine>>>,
    /// When mappings with retries or fences want serving again, by base.
    due: Mutex<BTreeMap<u64, Instant>>,
    /// Held by the one worker taking work (from the queue, or else by
    /// waiting at the userfaultfd).
    turn: Mutex<()>,
    /// Work read and not yet taken (taken after `turn`).
    queue: Mutex<VecDeque<Work>>,
    workers: AtomicUsize,
    /// Workers not serving a mapping (polling, or waiting for the turn).
    idle: AtomicUsize,
    /// Set when a worker met an error it cannot serve past; new mappings
    /// get a new service.
    broken: AtomicBool,
}

static SERVICES: Mutex<Vec<Arc<Service>>> = Mutex::new(Vec::new());

/// The process's service for mappings opened with these settings, started
/// on first use. (A child forked while another thread held this lock would
/// wait forever here, as with any library's lock; POSIX allows a
/// multithreaded program's child only async-signal-safe calls.)
pub(crate) fn shared(kind: Kind) -> Result<Arc<Service>> {
    let pid = sys::process_id();
    let mut services = relock(SERVICES.lock());
    if services.first().is_some_and(|s| s.owner != pid) {
        // A forked child: dropping the parent's services would drop its
        // engines, unmapping memory the child may reuse. Leak them.
        std::mem::forget(std::mem::take(&mut *services));
    }
    services.retain(|s| !s.broken.load(Ordering::SeqCst));
    if let Some(service) = services.iter().find(|s| s.kind == kind) {
        return Ok(Arc::clone(service));
    }
    let service = Arc::new(Service {
        uffd: Uffd::open(kind.fallback, kind.sigbus, kind.user_mode_only, kind.wp_async)?,
        doorbell: Doorbell::new()?,
        kind,
        owner: pid,
        attached: RwLock::default(),
        due: Mutex::default(),
        turn: Mutex::new(()),
        queue: Mutex::default(),
        workers: AtomicUsize::new(0),
        idle: AtomicUsize::new(0),
        broken: AtomicBool::new(false),
    });
    for _ in 0..MIN_WORKERS {
        service.spawn_worker()?;
    }
    services.push(Arc::clone(&service));
    Ok(service)
}

impl Service {
    /// Starts serving `engine`, whose range is registered with [`uffd`](Self::uffd).
    pub fn attach(&self, engine: &Arc<Engine>) {
        engine.stopping.store(false, Ordering::SeqCst);
        engine.handoffs.reopen();
        relock(self.attached.write()).insert(engine.region.base(), Arc::clone(engine));
    }

    /// Stops serving `engine`: once this returns no worker is inside it or
    /// will enter it; faults parked for space fail, and faults handed over
    /// by signal handlers fail with `EIO`.
    pub fn detach(&self, engine: &Engine) {
        engine.stopping.store(true, Ordering::SeqCst);
        let base = engine.region.base();
        relock(self.attached.write()).remove(&base);
        relock(self.due.lock()).remove(&base);
        let _alone = relock(engine.serving.write());
        let mut waiting = engine.lock_waiting();
        handler::closing(engine, &mut waiting);
        engine.handoffs.close(libc::EIO);
    }

    /// Wakes a worker to serve the mappings whose `attention` is set.
    /// Async-signal-safe: a `write(2)` to an eventfd.
    pub fn ring(&self) {
        self.doorbell.ring();
    }

    /// How many workers the pool has now.
    #[cfg(test)]
    fn worker_count(&self) -> usize {
        self.workers.load(Ordering::SeqCst)
    }

    fn spawn_worker(self: &Arc<Self>) -> io::Result<()> {
        self.workers.fetch_add(1, Ordering::SeqCst);
        self.idle.fetch_add(1, Ordering::SeqCst);
        let service = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(format!("{}faults", crate::THREAD_PREFIX))
            .spawn(move || service.work());
        if spawned.is_err() {
            self.workers.fetch_sub(1, Ordering::SeqCst);
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
        spawned.map(drop)
    }

    fn work(self: Arc<Self>) {
        let mut msgs = [RawMsg::default(); 64];
        loop {
            let turn = relock(self.turn.lock());
            let next = self.next_work(&mut msgs);
            drop(turn);
            let work = match next {
                Ok(work) => work,
                Err(e) => return self.fail(e),
            };
            if self.idle.fetch_sub(1, Ordering::SeqCst) == 1
                && self.workers.load(Ordering::SeqCst) < MAX_WORKERS
            {
                // Nobody is left to take the turn while this one serves.
                let _ = self.spawn_worker();
            }
            match work {
                Work::Fault(engine, fault) => self.serve(&engine, |e| handler::reported(e, fault)),
                Work::Rung(engine) => self.serve(&engine, handler::rung),
                Work::Due(engine) => self.serve(&engine, |_| {}),
            }
            self.idle.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Takes the next piece of work (holding the turn): one queued, or else
    /// waits at the userfaultfd until faults come, the doorbell rings or a
    /// mapping's time comes, and queues what that brought. One piece each,
    /// so a mapping whose store hangs holds up only its own worker.
    fn next_work(&self, msgs: &mut [RawMsg]) -> io::Result<Work> {
        loop {
            if let Some(work) = relock(self.queue.lock()).pop_front() {
                return Ok(work);
            }
            let timeout = relock(self.due.lock())
                .values()
                .min()
                .map(|due| due.saturating_duration_since(Instant::now()));
            let ready = match self.spin_for_work()? {
                Some(ready) => ready,
                None => sys::wait_ready(&self.uffd, &self.doorbell, timeout)?,
            };
            let mut queue = Vec::new();
            if ready.faults {
                let attached = relock(self.attached.read());
                let mut faults = Vec::new();
                self.uffd.read_faults(&mut faults, msgs)?;
                // A fault outside every attached mapping is one whose mapping
                // was detached after the kernel queued it; its thread was
                // woken by the unregistration.
                queue.extend(faults.into_iter().filter_map(|f| {
                    let (_, engine) = attached.range(..=f.address).next_back()?;
                    let ours = engine.region.contains(f.address as usize);
                    ours.then(|| Work::Fault(Arc::clone(engine), f))
                }));
            }
            if ready.doorbell && self.doorbell.take() {
                queue.extend(self.wanting_attention().into_iter().map(Work::Rung));
            }
            queue.extend(self.due_now().into_iter().map(Work::Due));
            relock(self.queue.lock()).extend(queue);
        }
    }

    /// Looks for work without sleeping for up to [`SPIN`]: a thread whose
    /// fault was just served often faults again within microseconds, and a
    /// worker that slept must be woken, which costs ~20 µs on a CPU the
    /// kernel has halted. The thread whose fault was served usually sleeps
    /// until then; on a loaded machine the spin takes CPU time from others,
    /// for at most [`SPIN`] after each piece of work.
    fn spin_for_work(&self) -> io::Result<Option<sys::Ready>> {
        let began = Instant::now();
        while began.elapsed() < SPIN {
            let ready = sys::wait_ready(&self.uffd, &self.doorbell, Some(Duration::ZERO))?;
            if ready.faults || ready.doorbell {
                return Ok(Some(ready));
            }
            std::hint::spin_loop();
        }
        Ok(None)
    }

    /// Serves `engine` with `work`, then whatever its timers want; nothing
    /// once it is detached. No panic escapes: one fails that mapping only.
    fn serve(&self, engine: &Arc<Engine>, work: impl FnOnce(&Engine)) {
        let _inside = relock(engine.serving.read());
        if engine.stopping.load(Ordering::SeqCst) {
            return;
        }
        let served = catch_unwind(AssertUnwindSafe(|| {
            work(engine);
            // Over its budget, the mapping evicts before this worker serves
            // on: faulting threads wait for room as they wait for the fault.
            if let Err(e) = engine.make_room() {
                engine.record_fault_error(format!("evicting for the budget: {e}"));
            }
            handler::retry_due(engine);
        }));
        // The timetable is written with the waiting faults locked: of two
        // workers serving the mapping, the one that writes last has seen
        // every retry and fence the other left.
        let waiting = engine.lock_waiting();
        let next = match served {
            Ok(()) => catch_unwind(AssertUnwindSafe(|| handler::next_due(engine, &waiting))).unwrap_or(None),
            Err(_) => None,
        };
        if served.is_err() {
            engine.set_handler_failure("the fault service panicked".into());
        }
        let mut due = relock(self.due.lock());
        let Some(at) = next else {
            due.remove(&engine.region.base());
            return;
        };
        let sooner = due.values().min().is_none_or(|&first| at < first);
        due.insert(engine.region.base(), at);
        if sooner {
            // The worker polling may be waiting with a later timeout.
            self.ring();
        }
    }

    /// The attached mappings that asked for attention since the last ring.
    fn wanting_attention(&self) -> Vec<Arc<Engine>> {
        relock(self.attached.read())
            .values()
            .filter(|e| e.attention.swap(false, Ordering::SeqCst))
            .cloned()
            .collect()
    }

    /// The attached mappings whose time has come, taken off the timetable
    /// (serving them puts them back if they want more).
    fn due_now(&self) -> Vec<Arc<Engine>> {
        let now = Instant::now();
        let mut due = relock(self.due.lock());
        let bases: Vec<u64> = due
            .iter()
            .filter(|&(_, at)| *at <= now)
            .map(|(&base, _)| base)
            .collect();
        if bases.is_empty() {
            return Vec::new();
        }
        for base in &bases {
            due.remove(base);
        }
        drop(due);
        let attached = relock(self.attached.read());
        bases.iter().filter_map(|b| attached.get(b).cloned()).collect()
    }

    /// The userfaultfd or the doorbell failed: no fault of this service can
    /// be read any more, so every mapping on it fails (stickily) and new
    /// mappings get a new service.
    fn fail(&self, e: io::Error) {
        self.broken.store(true, Ordering::SeqCst);
        for engine in relock(self.attached.read()).values() {
            engine.set_handler_failure(format!("the fault service failed: {e}"));
        }
        self.workers.fetch_sub(1, Ordering::SeqCst);
        self.idle.fetch_sub(1, Ordering::SeqCst);
        // Lets the next worker meet the error too, rather than wait on.
        self.ring();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_of_one_kind_share_one_service() {
        let kind = Kind {
            fallback: true,
            sigbus: false,
            user_mode_only: false,
            wp_async: false,
        };
        let a = shared(kind).unwrap();
        let b = shared(kind).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.worker_count() >= MIN_WORKERS);
        let c = shared(Kind { sigbus: true, ..kind }).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let d = shared(Kind {
            wp_async: true,
            ..kind
        })
        .unwrap();
        assert!(!Arc::ptr_eq(&a, &d));
        assert!(
            d.uffd.wp_async() && !a.uffd.wp_async(),
            "Linux 6.18 offers WP_ASYNC"
        );
    }
}
