//! A store that fails its Nth call of one kind, once (allocate with no
//! space or over quota, write or sync with EIO); the fault then clears.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// A store that fails one chosen call, once: the fault then clears.
pub struct Injector<S> {
    pub inner: S,
    fault: Option<(Fault, u64)>,
    calls: [AtomicU64; 3],
    /// The fault has been returned.
    pub fired: AtomicBool,
}

impl<S: Store> Injector<S> {
    pub fn new(inner: S, fault: Option<(Fault, u64)>) -> Injector<S> {
        Injector {
            inner,
            fault,
            calls: Default::default(),
            fired: AtomicBool::new(false),
        }
    }

    fn count(&self, call: Call) -> io::Result<()> {
        let n = self.calls[call as usize].fetch_add(1, Ordering::SeqCst);
        match self.fault {
            Some((fault, at)) if fault.call() == call && n == at => {
                self.fired.store(true, Ordering::SeqCst);
                Err(fault.error())
            }
            _ => Ok(()),
        }
    }

    /// How many calls of this kind the store has seen.
    pub fn calls(&self, call: Call) -> u64 {
        self.calls[call as usize].load(Ordering::SeqCst)
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
        self.count(Call::Write)?;
        self.inner.write_at(offset, data)
    }
    fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.count(Call::Allocate)?;
        self.inner.allocate(blocks)
    }
    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        self.inner.deallocate(blocks)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.count(Call::Sync)?;
        self.inner.sync()
    }
    fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
        self.inner.allocated()
    }
}
