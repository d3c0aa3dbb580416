//! The bookkeeping of write-behind: the writes sent and not yet answered
//! (so reads and allocations of the same bytes wait for them), and the
//! first failure among them that nobody has been told of yet (the next
//! `write_at` or `sync` reports it).

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The write-behind writes in flight, and the first failure among them
/// that nobody has been told of yet.
#[derive(Default)]
pub struct Writes {
    state: Mutex<WriteState>,
    changed: Condvar,
}

#[derive(Default)]
struct WriteState {
    next: u64,
    in_flight: HashMap<u64, Range<u64>>,
    failed: Option<io::Error>,
}

impl Writes {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a write of export bytes `range` about to be sent; its id.
    pub fn begin(&self, range: Range<u64>) -> u64 {
        let mut st = self.lock();
        st.next += 1;
        let id = st.next;
        st.in_flight.insert(id, range);
        id
    }

    /// A write's answer (called by the connection's reader).
    pub fn end(&self, id: u64, result: io::Result<()>) {
        let mut st = self.lock();
        st.in_flight.remove(&id);
        if let Err(e) = result {
            st.failed.get_or_insert(e);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Records a failure for the next `write_at` or `sync` to report.
    pub fn fail(&self, e: io::Error) {
        self.lock().failed.get_or_insert(e);
    }

    /// The failure not yet reported, which is now.
    pub fn take_failure(&self) -> Option<io::Error> {
        self.lock().failed.take()
    }

    /// Waits until no write in flight overlaps `range` (any, for `None`);
    /// false if that took longer than `timeout`.
    pub fn wait(&self, range: Option<&Range<u64>>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            let busy = st
                .in_flight
                .values()
                .any(|w| range.is_none_or(|r| w.start < r.end && r.start < w.end));
            let now = Instant::now();
            if !busy {
                return true;
            }
            if now >= deadline {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_only_for_overlapping_writes_and_keeps_the_first_failure() {
        let w = Arc::new(Writes::default());
        let a = w.begin(0..10);
        let b = w.begin(20..30);
        assert!(w.wait(Some(&(10..20)), Duration::ZERO), "nothing in flight there");
        assert!(!w.wait(Some(&(5..6)), Duration::from_millis(10)));
        let ender = Arc::clone(&w);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            ender.end(a, Err(io::Error::from_raw_os_error(libc::EIO)));
            ender.end(b, Err(io::Error::from_raw_os_error(libc::EPIPE)));
        });
        assert!(w.wait(None, Duration::from_secs(5)));
        t.join().unwrap();
        assert_eq!(w.take_failure().unwrap().raw_os_error(), Some(libc::EIO));
        assert!(w.take_failure().is_none(), "reported once");
    }
}
