//! `pager`: meet mkwrite, inspect files through it, and drive it from any
//! language with a line protocol. Run `pager --help`.

mod demo;
mod fill;
mod report;
mod script;
mod setup;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use report::{Failure, Out, outln, say};
use setup::{Access, Common, OnFullArg, origin_word, parse_size};

const LONG_ABOUT: &str = "Memory-mapped files that fail at the fault, not at writeback.

Sizes and offsets take 4096, 4K, 1M, 1G, 1T (powers of 1024).

--nbd URI keeps the file on an NBD export (nbdkit, qemu-nbd, ...) instead of FILE: \
`pager script x --nbd nbd://127.0.0.1:10809/db`.

Exit status: 0 done; 1 an error (one line on stderr); 2 a usage error; 3 the store \
is full (no space, or over --quota); 141 stdout was closed (a reader such as `head` \
quit): the output stops quietly, with the status a shell shows for a program killed \
by SIGPIPE.";

#[derive(Parser)]
#[command(
    name = "pager",
    about = "Memory-mapped files that fail at the fault, not at writeback",
    long_about = LONG_ABOUT
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Fill a small store through the mapping until it is full, and prove nothing was lost.
    Demo,
    /// Print the file's bytes through a read-only mapping.
    Cat {
        /// The file to print; it must exist and is opened read-only.
        file: PathBuf,
        /// The first byte to print.
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// How many bytes to print, at most (default: to the end of the file).
        #[arg(long, value_parser = parse_size)]
        len: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Write bytes at OFFSET through the mapping, then flush.
    Write {
        /// The file to write; created if missing, grown to hold the bytes.
        file: PathBuf,
        /// Where the first byte goes.
        #[arg(value_parser = parse_size)]
        offset: u64,
        /// The bytes to write, as text.
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        data: Option<String>,
        /// Write this file's contents instead of --data.
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Set the file's length.
    Truncate {
        /// The file to resize; created if missing.
        file: PathBuf,
        /// The new length.
        #[arg(value_parser = parse_size)]
        len: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Zero a range and free its whole blocks.
    Punch {
        /// The file to punch; it must exist.
        file: PathBuf,
        /// Start of the range to zero.
        #[arg(value_parser = parse_size)]
        offset: u64,
        /// Length of the range to zero; the whole blocks inside it are freed.
        #[arg(value_parser = parse_size)]
        len: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Length, block size, blocks allocated, holes, and the userfaultfd mode.
    Stat {
        /// The file to describe; it must exist and is opened read-only.
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Write a large file through the mapping with a progress bar.
    Fill(fill::FillArgs),
    /// Read commands from stdin, one per line; see the README for the protocol.
    Script {
        /// The file the commands work on; created if missing (unused with --store mem).
        file: PathBuf,
        /// Map the file read-only (it must exist): commands that would change it answer `err readonly 0`.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        common: Common,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The output is line-buffered: a last partial line fails only at this flush.
    match run(cli.command.unwrap_or(Command::Demo)).and_then(|()| Out::new().flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(),
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Demo => demo::run(),
        Command::Cat {
            file,
            offset,
            len,
            common,
        } => cat(&file, offset, len, &common),
        Command::Write {
            file,
            offset,
            data,
            from,
            common,
        } => write(&file, offset, data, from, &common),
        Command::Truncate { file, len, common } => {
            let map = common.open(&file, Access::Create)?;
            map.set_len(len)?;
            Ok(map.close()?)
        }
        Command::Punch {
            file,
            offset,
            len,
            common,
        } => {
            end_of(offset, len)?;
            let map = common.open(&file, Access::Existing)?;
            map.punch_hole(offset, len)?;
            Ok(map.close()?)
        }
        Command::Stat { file, common } => stat(&file, &common),
        Command::Fill(args) => fill::run(&args),
        Command::Script {
            file,
            read_only,
            common,
        } => {
            let access = if read_only {
                Access::ReadOnly
            } else {
                Access::Create
            };
            let raw = match common.on_full {
                OnFullArg::Error => script::Raw::Guarded,
                OnFullArg::Sigbus => script::Raw::Plain,
                // The script has one thread: a poke waiting for space would
                // stop it reading the very commands that could free some.
                OnFullArg::Wait => {
                    return Err(Failure::Other(
                        "script refuses --on-full wait: a poke into a full store would block the only \
                         thread reading commands, so no command could free space; use --on-full error"
                            .into(),
                    ));
                }
            };
            script::run(&common.open(&file, access)?, raw)
        }
    }
}

/// `offset + len`, or a refusal when the range would pass the largest file offset.
fn end_of(offset: u64, len: u64) -> Result<u64, Failure> {
    offset.checked_add(len).ok_or_else(|| {
        Failure::Other(format!(
            "offset {offset} plus length {len} is past the largest file offset, {}",
            u64::MAX
        ))
    })
}

fn cat(file: &Path, offset: u64, len: Option<u64>, common: &Common) -> Result<(), Failure> {
    let map = common.open(file, Access::ReadOnly)?;
    let end = match len {
        Some(len) => end_of(offset, len)?,
        None => map.len().max(offset),
    };
    if offset > map.len() {
        return Err(mkwrite::Error::OutOfRange {
            what: "cat past the end of the file",
            offset,
            end,
            limit: map.len(),
        }
        .into());
    }
    let end = end.min(map.len());
    let mut out = Out::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        map.read(at, &mut buf[..n])?;
        out.bytes(&buf[..n])?;
        at += n as u64;
    }
    out.flush()
}

fn write(
    file: &Path,
    offset: u64,
    data: Option<String>,
    from: Option<PathBuf>,
    common: &Common,
) -> Result<(), Failure> {
    let bytes = match (data, from) {
        (Some(s), _) => s.into_bytes(),
        (None, Some(p)) => std::fs::read(p)?,
        (None, None) => unreachable!("clap requires one"),
    };
    // Refuse before opening, so a refused request creates no file.
    let end = end_of(offset, bytes.len() as u64)?;
    let map = common.open(file, Access::Create)?;
    if end > map.len() {
        map.set_len(end)?;
    }
    if let Err(e) = map.write(offset, &bytes) {
        // Keep what landed: flush it before reporting.
        map.close()?;
        say(format_args!(
            "pager: {} of {} bytes written before the store refused the rest",
            e.done,
            bytes.len()
        ));
        return Err(e.into());
    }
    map.close()?;
    outln!(Out::new(), "wrote {} bytes at {offset}", bytes.len())
}

fn stat(file: &Path, common: &Common) -> Result<(), Failure> {
    let store = common.store(file, Access::ReadOnly)?;
    let allocated = store.allocated()?;
    let blocks: u64 = allocated.iter().map(|r| r.end - r.start).sum();
    let (len, block_size) = (store.len(), store.block_size());
    let total = len.div_ceil(block_size);
    // The mode a mapping of this file gets on this system, as this user.
    let map = common.map(store, Access::ReadOnly)?;
    let (origin, delivery) = (map.userfaultfd_origin(), map.delivery());
    let mut out = Out::new();
    outln!(out, "len={len}")?;
    outln!(out, "block_size={block_size}")?;
    outln!(out, "blocks={total}")?;
    outln!(out, "blocks_allocated={blocks}")?;
    outln!(out, "holes={}", holes(&allocated, total))?;
    outln!(out, "userfaultfd={}", origin_word(origin))?;
    let delivery = match delivery {
        mkwrite::Delivery::InThread => "in-thread",
        _ => "handler-thread",
    };
    outln!(out, "delivery={delivery}")?;
    if origin == mkwrite::UffdOrigin::UserModeOnly {
        say(format_args!(
            "pager: note: userfaultfd is {}",
            setup::origin_text(origin)
        ));
    }
    Ok(())
}

/// Hole ranges between the allocated block ranges, up to `total` blocks.
fn holes(allocated: &[std::ops::Range<u64>], total: u64) -> usize {
    let mut holes = 0;
    let mut at = 0;
    for r in allocated {
        if r.start > at {
            holes += 1;
        }
        at = r.end;
    }
    holes + usize::from(at < total)
}
