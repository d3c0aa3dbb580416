//! A store that fails its Nth call of one kind (allocate with no space or
//! over quota, write or sync with EIO), and tracks whether mkwrite reported
//! that failure to the caller whose call made it.
//!
//! A write or sync fault fails that one call; the fault then clears. An
//! allocation fault is a block without space, as a full disk is: every
//! allocation that includes that block fails until the failure has been
//! reported ([`Injector::report`]), so a retry of smaller runs (reserve
//! counting what it got, block by block) meets it too instead of absorbing it.

use std::io;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use mkwrite::{Error, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    NoSpace,
    Quota,
    WriteEio,
    SyncEio,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Allocate = 0,
    Write = 1,
    Sync = 2,
}

impl Fault {
    pub const ALL: [Fault; 4] = [Fault::NoSpace, Fault::Quota, Fault::WriteEio, Fault::SyncEio];

    pub fn call(self) -> Call {
        match self {
            Fault::NoSpace | Fault::Quota => Call::Allocate,
            Fault::WriteEio => Call::Write,
            Fault::SyncEio => Call::Sync,
        }
    }

    pub fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            Fault::NoSpace => libc::ENOSPC,
            Fault::Quota => libc::EDQUOT,
            Fault::WriteEio | Fault::SyncEio => libc::EIO,
        })
    }

    /// Is `error` how mkwrite must report this fault?
    pub fn reported_as(self, error: &Error) -> bool {
        match (self, error) {
            (Fault::NoSpace, Error::NoSpace(_)) | (Fault::Quota, Error::Quota(_)) => true,
            (Fault::WriteEio | Fault::SyncEio, Error::Io(e)) => e.raw_os_error() == Some(libc::EIO),
            _ => false,
        }
    }
}

/// The injected failure, as the store returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    pub fault: Fault,
    /// The failing call's blocks (allocate) or bytes (write); empty for a sync.
    pub range: Range<u64>,
    /// For an allocation fault, the block without space: the last of `range`,
    /// so a block-by-block retry allocates the others before meeting it.
    pub block: Option<u64>,
    /// How many calls the store failed with it (a held allocation fault
    /// fails the retries that include its block).
    pub times: u64,
}

/// What became of the injected fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not injected (yet).
    Armed,
    /// The store returned it; mkwrite has not reported it.
    Fired(Fired),
    /// mkwrite returned the matching error for it.
    Reported(Fired),
    /// mkwrite returned an error for it that does not match.
    Misreported { fired: Fired, why: String },
}

/// A store that fails one chosen call (see the module documentation).
pub struct Injector<S> {
    pub inner: S,
    fault: Option<(Fault, u64)>,
    calls: [AtomicU64; 3],
    state: Mutex<State>,
}

impl<S: Store> Injector<S> {
    pub fn new(inner: S, fault: Option<(Fault, u64)>) -> Injector<S> {
        Injector {
            inner,
            fault,
            calls: Default::default(),
            state: Mutex::new(State::Armed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a call of kind `call` over `range` (blocks or bytes) and says
    /// whether it fails.
    fn count(&self, call: Call, range: Range<u64>) -> io::Result<()> {
        let n = self.calls[call as usize].fetch_add(1, Ordering::SeqCst);
        let Some((fault, at)) = self.fault else {
            return Ok(());
        };
        if fault.call() != call {
            return Ok(());
        }
        let mut state = self.lock();
        match &mut *state {
            State::Armed if n == at => {
                let block = (call == Call::Allocate && !range.is_empty()).then(|| range.end - 1);
                *state = State::Fired(Fired {
                    fault,
                    range,
                    block,
                    times: 1,
                });
                Err(fault.error())
            }
            State::Fired(fired) if fired.block.is_some_and(|b| range.contains(&b)) => {
                fired.times += 1;
                Err(fault.error())
            }
            _ => Ok(()),
        }
    }

    /// How many calls of this kind the store has seen.
    pub fn calls(&self, call: Call) -> u64 {
        self.calls[call as usize].load(Ordering::SeqCst)
    }

    /// What became of the injected fault.
    pub fn state(&self) -> State {
        self.lock().clone()
    }

    /// Has the store returned the injected failure?
    pub fn fired(&self) -> bool {
        !matches!(self.state(), State::Armed)
    }

    /// mkwrite reported `error`. It counts as the report of the injected
    /// fault only if that fault fired and is not reported yet, `error` is its
    /// kind, and `check` accepts it against what fired (the `done` count, the
    /// offset). The fault is settled either way (a held allocation fault
    /// clears), so nothing waits on it forever; a mismatch stays recorded as
    /// [`State::Misreported`].
    pub fn report(
        &self,
        error: &Error,
        check: impl FnOnce(&Fired) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut state = self.lock();
        let State::Fired(fired) = &*state else {
            return Err(format!(
                "error {error:?} reported, but no injected fault is waiting for a report ({:?})",
                *state
            ));
        };
        let fired = fired.clone();
        let verdict = if fired.fault.reported_as(error) {
            check(&fired)
        } else {
            Err(format!("{fired:?} reported as {error:?}"))
        };
        *state = match &verdict {
            Ok(()) => State::Reported(fired),
            Err(why) => State::Misreported {
                fired,
                why: why.clone(),
            },
        };
        verdict
    }
}

impl<S: Store> Store for Injector<S> {
    fn block_size(&self) -> u64 {
        self.inner.block_size()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.count(Call::Write, offset..offset + data.len() as u64)?;
        self.inner.write_at(offset, data)
    }
    fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.count(Call::Allocate, blocks.clone())?;
        self.inner.allocate(blocks)
    }
    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.inner.deallocate(blocks)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.count(Call::Sync, 0..0)?;
        self.inner.sync()
    }
    fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
        self.inner.allocated()
    }
}
