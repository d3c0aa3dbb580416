//! Failing one access made inside a system call.
//!
//! A thread that touches a page in user mode and must fail gets SIGBUS. A
//! system call that touches it (`read(2)` into the mapping, `mlock(2)`) cannot
//! be failed that way: the kernel retries a fault taken in kernel mode until
//! the page is resolved, whatever signal is pending, so a SIGBUS alone makes it
//! spin forever. The kernel's own `mmap` fails such a call with `EFAULT`; so
//! does mkwrite, by *fencing* the page: `mprotect` takes away the access that
//! failed (writes, or all access for a read), the waiting call is woken, its
//! retry finds no permission and returns `EFAULT`. The fence is lifted as soon
//! as that call has moved on, or when the page is next resolved. Meanwhile
//! other threads' plain stores to the page get SIGSEGV instead of a fault.
//! Pages wholly past EOF are poisoned instead (see `Engine::poison`).

use std::io;
use std::time::{Duration, Instant};

use crate::engine::{Access, Engine};
use crate::sys::{self, ThreadState};

/// How often fenced calls are checked on.
pub(crate) const FENCE_CHECK: Duration = Duration::from_millis(5);
/// A fence outlives the call it failed by at most this long, whatever the
/// thread is seen doing.
const FENCE_MAX_AGE: Duration = Duration::from_millis(200);
/// A thread seen running was woken long enough ago to have retried (if it
/// has not, its retry faults again and is fenced again).
const FENCE_RUNNING_AGE: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Fence {
    page: u64,
    thread: libc::pid_t,
    /// The thread's `/proc/…/syscall` line when it was fenced.
    call: String,
    since: Instant,
}

/// The pages fenced now.
#[derive(Debug, Default)]
pub(crate) struct Fences(Vec<Fence>);

impl Fences {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Engine {
    /// Fences `page` against `access` for the system call `call` of `thread`
    /// and wakes it, so the call fails with `EFAULT`.
    pub fn fence(&self, page: u64, access: Access, thread: libc::pid_t, call: String) -> io::Result<()> {
        let keep = match access {
            Access::Write => sys::Access::Read,
            Access::Read => sys::Access::None,
        };
        let mut fences = self.lock_fences();
        self.region
            .set_access(self.page_offset(page), self.geo.page as usize, keep)?;
        fences.0.push(Fence {
            page,
            thread,
            call,
            since: Instant::now(),
        });
        self.counters.fenced();
        self.wake(page)
    }

    /// Whether `page` is fenced now.
    pub fn is_fenced(&self, page: u64) -> bool {
        self.lock_fences().0.iter().any(|f| f.page == page)
    }

    /// Gives `page` its normal access back, if it was fenced.
    pub fn lift_fence(&self, page: u64) -> io::Result<()> {
        let mut fences = self.lock_fences();
        if fences.is_empty() || !fences.0.iter().any(|f| f.page == page) {
            return Ok(());
        }
        fences.0.retain(|f| f.page != page);
        self.restore(page)
    }

    /// Lifts every fence: space was freed, so the accesses they failed may
    /// now succeed.
    pub fn lift_all_fences(&self) -> io::Result<()> {
        let mut fences = self.lock_fences();
        let pages: Vec<u64> = fences.0.drain(..).map(|f| f.page).collect();
        for page in pages {
            self.restore(page)?;
        }
        Ok(())
    }

    /// Lifts the fences whose call has ended; returns when to look again.
    pub fn lift_ended_fences(&self) -> io::Result<Option<Duration>> {
        let mut fences = self.lock_fences();
        let mut ended = Vec::new();
        fences.0.retain(|f| {
            let age = f.since.elapsed();
            let moved_on = match sys::thread_state(f.thread) {
                ThreadState::InSyscall(call) => call != f.call,
                ThreadState::UserMode => true,
                // Running (maybe still on its way to the EFAULT), or gone.
                ThreadState::Unknown => age >= FENCE_RUNNING_AGE,
            };
            let done = moved_on || age >= FENCE_MAX_AGE;
            if done {
                ended.push(f.page);
            }
            !done
        });
        for page in ended {
            if !fences.0.iter().any(|f| f.page == page) {
                self.restore(page)?;
            }
        }
        Ok((!fences.is_empty()).then_some(FENCE_CHECK))
    }

    fn restore(&self, page: u64) -> io::Result<()> {
        let normal = if self.read_only {
            sys::Access::Read
        } else {
            sys::Access::ReadWrite
        };
        self.region
            .set_access(self.page_offset(page), self.geo.page as usize, normal)
    }
}
