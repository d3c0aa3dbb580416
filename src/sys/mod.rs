//! Every call into the kernel lives here; the rest of the crate is safe code.

mod file;
mod fill_buffers;
mod futex;
#[cfg(target_arch = "x86_64")]
pub(crate) mod guard;
mod live;
mod memory;
mod pagemap;
mod signal;
mod thread;
mod uffd;
mod zeroed;

pub(crate) use file::{
    allocate, allocate_raw, data_ranges, data_sync, fs_block_size, is_read_only, punch_hole,
    read_exact_at_raw,
};
pub(crate) use fill_buffers::{FillBuffer, FillBuffers};
pub(crate) use futex::{futex_wait, futex_wake_all, thread_id, yield_now};
pub use live::LiveBytes;
pub(crate) use memory::{Access, Region};
pub(crate) use pagemap::take_written;
pub(crate) use signal::send_sigbus;
pub(crate) use thread::{ThreadState, process_id, thread_state};
pub use uffd::UffdOrigin;
pub(crate) use uffd::{Fault, RawMsg, Uffd};
pub(crate) use zeroed::{ZeroedAtomics, ZeroedWords};

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// The system page size.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).expect("page size is positive")
}

/// A file of `/proc/self` opened once per process and shared. Kept with
/// the process that opened it: in a forked child the inherited descriptor
/// would describe the parent, so the child opens its own.
pub(crate) struct OwnFile(Mutex<Option<(u32, Arc<File>)>>);

impl OwnFile {
    pub(crate) const fn new() -> OwnFile {
        OwnFile(Mutex::new(None))
    }

    /// The file, opened by `open` on first use in this process.
    pub(crate) fn get(
        &self,
        open: impl FnOnce() -> io::Result<std::fs::File>,
    ) -> io::Result<std::sync::Arc<std::fs::File>> {
        let pid = process_id();
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*held {
            Some((owner, file)) if *owner == pid => Ok(Arc::clone(file)),
            _ => {
                let file = Arc::new(open()?);
                *held = Some((pid, Arc::clone(&file)));
                Ok(file)
            }
        }
    }
}

/// A counter another thread can bump to wake the fault handler out of `poll`.
#[derive(Debug)]
pub(crate) struct Doorbell(EventFd);

impl Doorbell {
    pub(crate) fn new() -> io::Result<Doorbell> {
        Ok(Doorbell(EventFd::from_value_and_flags(
            0,
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?))
    }

    pub(crate) fn ring(&self) {
        // A full counter (2^64-2 rings) already wakes the reader; nothing to report.
        let _ = self.0.write(1);
    }

    /// Clears the counter; true if it had been rung.
    pub(crate) fn take(&self) -> bool {
        self.0.read().is_ok()
    }
}

/// What woke the handler.
pub(crate) struct Ready {
    pub faults: bool,
    pub doorbell: bool,
}

/// Waits until the userfaultfd has messages or the doorbell rings, or
/// `timeout` passes (`None`: no limit; zero: only looks).
pub(crate) fn wait_ready(
    uffd: &Uffd,
    doorbell: &Doorbell,
    timeout: Option<std::time::Duration>,
) -> io::Result<Ready> {
    let mut fds = [
        PollFd::new(uffd.as_fd(), PollFlags::POLLIN),
        PollFd::new(doorbell.0.as_fd(), PollFlags::POLLIN),
    ];
    let timeout = match timeout {
        // Zero asks without waiting (a worker spinning for the next fault).
        Some(t) if t.is_zero() => PollTimeout::ZERO,
        // Round up, so a short wait is never a busy zero-timeout poll.
        Some(t) => PollTimeout::try_from(t.as_millis().clamp(1, 60_000) as u32).unwrap_or(PollTimeout::MAX),
        None => PollTimeout::NONE,
    };
    loop {
        match poll(&mut fds, timeout) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let has = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
    Ok(Ready {
        faults: has(&fds[0]),
        doorbell: has(&fds[1]),
    })
}
