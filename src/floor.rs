//! The physical floor under mkwrite's fault path, measured with the same
//! kernel calls the engine uses: what a fault costs before any bookkeeping.
//! For the benchmark table (`benches/table.rs`); not part of the API.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sys::{self, Fault, RawMsg, Region, Uffd};

/// First-touch writes to `pages` pages of plain anonymous memory.
pub fn anonymous_first_touch(pages: usize) -> io::Result<Duration> {
    let page = sys::page_size() as usize;
    let region = Region::reserve(pages * page, false)?;
    let started = Instant::now();
    for p in 0..pages {
        region.copy_in(p * page, &[1]);
    }
    Ok(started.elapsed())
}

/// First-touch writes to `pages` pages guarded by a userfaultfd, each
/// resolved by a handler thread with `UFFDIO_COPY` (missing faults), or
/// first installed write-protected and then resolved with
/// `UFFDIO_WRITEPROTECT` (`write_protect`). Only the touches are timed.
pub fn userfaultfd_write(pages: usize, write_protect: bool) -> io::Result<Duration> {
    let page = sys::page_size() as usize;
    let uffd = Arc::new(Uffd::open(false, false, false, false).map_err(io::Error::from)?);
    let region = Arc::new(Region::reserve(pages * page, false)?);
    uffd.register(region.base(), region.len() as u64, false)
        .map_err(io::Error::from)?;
    let zeros = vec![0u8; page];
    if write_protect {
        for p in 0..pages {
            uffd.copy(region.base() + (p * page) as u64, &zeros, true, true)?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handler = {
        let (uffd, stop) = (Arc::clone(&uffd), Arc::clone(&stop));
        std::thread::spawn(move || -> io::Result<()> {
            let mut msgs = [RawMsg::default(); 64];
            let mut faults: Vec<Fault> = Vec::new();
            let doorbell = sys::Doorbell::new()?;
            while !stop.load(Ordering::Acquire) {
                if !sys::wait_ready(&uffd, &doorbell, Some(Duration::from_millis(10)))?.faults {
                    continue;
                }
                faults.clear();
                uffd.read_faults(&mut faults, &mut msgs)?;
                for f in &faults {
                    let at = f.address & !(page as u64 - 1);
                    if f.write_protect {
                        uffd.write_protect(at, page as u64, false)?;
                    } else {
                        let _ = uffd.copy(at, &zeros, false, true);
                    }
                }
            }
            Ok(())
        })
    };
    let started = Instant::now();
    for p in 0..pages {
        region.copy_in(p * page, &[1]);
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Release);
    handler.join().expect("the floor's handler does not panic")?;
    Ok(elapsed)
}
