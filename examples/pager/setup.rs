//! Options shared by the subcommands, and the store and mapping they open.

use std::path::Path;

use clap::{Args, ValueEnum};
use mkwrite::{FileStore, Mapping, MappingOptions, MemStore, OnFull, QuotaStore, Store};

#[derive(Clone, Copy, ValueEnum)]
pub enum StoreKind {
    File,
    Mem,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OnFullArg {
    Sigbus,
    Wait,
    Error,
}

#[derive(Args, Clone)]
pub struct Common {
    /// Block size, 512 B to 64 KiB (default: the file system's).
    #[arg(long, value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// How far the file may grow without remapping.
    #[arg(long, value_parser = parse_size)]
    pub capacity: Option<u64>,
    /// Bytes the store may hold (a quota; past it writes fail with `quota`).
    #[arg(long, value_parser = parse_size)]
    pub quota: Option<u64>,
    /// Where the blocks live.
    #[arg(long, value_enum, default_value = "file")]
    pub store: StoreKind,
    /// Bytes a `--store mem` holds before it is full.
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub mem_size: u64,
    /// What a raw write to a full store does (the CLI's own writes are checked: `error`).
    #[arg(long, value_enum, default_value = "error")]
    pub on_full: OnFullArg,
}

impl Common {
    pub fn store(&self, file: &Path) -> mkwrite::Result<Box<dyn Store>> {
        let store: Box<dyn Store> = match self.store {
            StoreKind::File => {
                let s = FileStore::create(file)?;
                Box::new(match self.block_size {
                    Some(b) => s.with_block_size(b)?,
                    None => s,
                })
            }
            StoreKind::Mem => {
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

    pub fn open(&self, file: &Path) -> mkwrite::Result<Mapping> {
        let store = self.store(file)?;
        let mut opts = MappingOptions::new();
        if let Some(c) = self.capacity {
            opts.capacity(c);
        }
        opts.on_full(match self.on_full {
            OnFullArg::Wait => OnFull::Wait,
            OnFullArg::Sigbus | OnFullArg::Error => OnFull::Sigbus,
        });
        opts.map_store(store)
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
