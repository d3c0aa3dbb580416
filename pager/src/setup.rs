//! Options shared by the subcommands, and the store and mapping they open.

use std::path::Path;

use clap::{Args, ValueEnum};
use mkwrite::{
    Delivery, DirtyTracking, FileStore, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, Mapping, MappingOptions, MemStore,
    NbdOptions, OnFull, QuotaStore, Store, UffdOrigin,
};

#[derive(Clone, Copy, ValueEnum)]
pub enum StoreKind {
    /// The file named on the command line.
    File,
    /// Memory of --mem-size bytes; the file is not touched.
    Mem,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeliveryArg {
    /// The mapping's thread resolves faults (system calls on the mapping work as with mmap).
    HandlerThread,
    /// The faulting thread resolves its own fault in a SIGBUS handler (faster).
    InThread,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirtyTrackingArg {
    /// Every first write after a flush faults.
    Faults,
    /// The kernel notes writes after a flush (no fault); reading a hole allocates (Linux 6.7+).
    Kernel,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFullArg {
    /// The faulting thread gets SIGBUS (a script's `poke` into a full store ends the pager).
    Sigbus,
    /// The faulting thread waits until space is freed (refused by `script`).
    Wait,
    /// SIGBUS, turned into an error: checked writes return it, a script's `poke` answers `err nospace DONE`.
    Error,
}

/// How a subcommand opens its file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-write, created if missing.
    Create,
    /// Read-write; a missing file is an error, not a new empty file.
    Existing,
    /// Read-only, so a file the user may only read can be mapped; it must exist.
    ReadOnly,
}

/// `--block-size`'s help, from the library's own limits.
fn block_size_help() -> String {
    format!(
        "Block size: a power of two from {MIN_BLOCK_SIZE} B to {} MiB \
         (default: the file system's block size)",
        MAX_BLOCK_SIZE >> 20
    )
}

#[derive(Args, Clone)]
pub struct Common {
    // The help is built from mkwrite::{MIN,MAX}_BLOCK_SIZE so it cannot drift.
    #[arg(long, value_parser = parse_size, help = block_size_help())]
    pub block_size: Option<u64>,
    /// How far the file may grow without remapping (default: its length or 1 GiB, the larger).
    #[arg(long, value_parser = parse_size)]
    pub capacity: Option<u64>,
    /// Bytes the store may hold (a quota; past it writes fail with `quota`).
    #[arg(long, value_parser = parse_size)]
    pub quota: Option<u64>,
    /// Where the blocks live.
    #[arg(long, value_enum, default_value = "file")]
    pub store: StoreKind,
    /// Keep the file on an NBD export instead (FILE is then unused):
    /// `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`. A blank
    /// export is initialised by the commands that create files.
    #[arg(long, value_name = "URI", conflicts_with = "store")]
    pub nbd: Option<String>,
    /// Bytes a `--store mem` holds before it is full.
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub mem_size: u64,
    /// What a raw write to a full store does (the CLI's own writes are checked: `error`).
    #[arg(long, value_enum, default_value = "error")]
    pub on_full: OnFullArg,
    /// Who resolves a fault.
    #[arg(long, value_enum, default_value = "handler-thread")]
    pub delivery: DeliveryArg,
    /// Who finds the pages written since the last flush.
    #[arg(long, value_enum, default_value = "faults")]
    pub dirty_tracking: DirtyTrackingArg,
}

impl Common {
    pub fn store(&self, file: &Path, access: Access) -> mkwrite::Result<Box<dyn Store>> {
        let store: Box<dyn Store> = match (&self.nbd, self.store) {
            (Some(uri), _) => {
                let mut nbd = NbdOptions::new();
                nbd.create(access == Access::Create);
                if let Some(b) = self.block_size {
                    nbd.block_size(b);
                }
                Box::new(nbd.connect(uri)?)
            }
            (None, StoreKind::File) => {
                let s = match access {
                    Access::Create => FileStore::create(file)?,
                    Access::Existing => FileStore::open(file)?,
                    Access::ReadOnly => FileStore::open_read_only(file)?,
                };
                Box::new(match self.block_size {
                    Some(b) => s.with_block_size(b)?,
                    None => s,
                })
            }
            (None, StoreKind::Mem) => {
                let block = self.block_size.unwrap_or(4096);
                Box::new(MemStore::new(block, self.mem_size / block)?)
            }
        };
        Ok(match self.quota {
            Some(q) => {
                let blocks = q / store.block_size();
                Box::new(QuotaStore::new(store, blocks)?)
            }
            None => store,
        })
    }

    pub fn open(&self, file: &Path, access: Access) -> mkwrite::Result<Mapping> {
        self.map(self.store(file, access)?, access)
    }

    /// Maps a store made by [`store`](Self::store) with the same `access`.
    pub fn map(&self, store: Box<dyn Store>, access: Access) -> mkwrite::Result<Mapping> {
        let mut opts = MappingOptions::new();
        if let Some(c) = self.capacity {
            opts.capacity(c);
        }
        opts.on_full(match self.on_full {
            OnFullArg::Wait => OnFull::Wait,
            OnFullArg::Sigbus | OnFullArg::Error => OnFull::Sigbus,
        });
        opts.read_only(access == Access::ReadOnly);
        opts.delivery(match self.delivery {
            DeliveryArg::HandlerThread => Delivery::HandlerThread,
            DeliveryArg::InThread => Delivery::InThread,
        });
        opts.dirty_tracking(match self.dirty_tracking {
            DirtyTrackingArg::Faults => DirtyTracking::Faults,
            DirtyTrackingArg::Kernel => DirtyTracking::Kernel,
        });
        opts.map_store(store)
    }
}

/// The userfaultfd mode in one word, for `stat` and the script protocol.
pub fn origin_word(origin: UffdOrigin) -> &'static str {
    match origin {
        UffdOrigin::Syscall => "syscall",
        UffdOrigin::Device => "device",
        UffdOrigin::UserModeOnly => "user-mode-only",
    }
}

/// The userfaultfd mode with what it means for the user.
pub fn origin_text(origin: UffdOrigin) -> &'static str {
    match origin {
        UffdOrigin::Syscall => "syscall",
        UffdOrigin::Device => "device (/dev/userfaultfd)",
        UffdOrigin::UserModeOnly => {
            "user-mode only (system calls that touch non-resident pages get EFAULT; \
             prefault ranges before passing them to read(2))"
        }
    }
}

/// Parses `4096`, `4K`, `1M`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        Some((i, 't' | 'T')) => (&s[..i], 40),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4096, 4K, 1M, 1G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}
