//! `pager`: meet mkwrite, inspect files through it, and drive it from any
//! language with a line protocol. Run `pager --help`.

mod demo;
mod fill;
mod script;
mod setup;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mkwrite::Error;

use setup::{Common, parse_size};

#[derive(Parser)]
#[command(
    name = "pager",
    about = "Memory-mapped files that fail at the fault, not at writeback"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Fill a small store through the mapping until it is full, and prove nothing was lost.
    Demo,
    /// Print the file's bytes through the mapping.
    Cat {
        file: std::path::PathBuf,
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        #[arg(long, value_parser = parse_size)]
        len: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Write bytes at OFFSET through the mapping, then flush.
    Write {
        file: std::path::PathBuf,
        #[arg(value_parser = parse_size)]
        offset: u64,
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        data: Option<String>,
        #[arg(long)]
        from: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Set the file's length.
    Truncate {
        file: std::path::PathBuf,
        #[arg(value_parser = parse_size)]
        len: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Zero a range and free its whole blocks.
    Punch {
        file: std::path::PathBuf,
        #[arg(value_parser = parse_size)]
        offset: u64,
        #[arg(value_parser = parse_size)]
        len: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Length, block size, blocks allocated and holes.
    Stat {
        file: std::path::PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Write a large file through the mapping with a progress bar.
    Fill(fill::FillArgs),
    /// Read commands from stdin, one per line; see the README for the protocol.
    Script {
        file: std::path::PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

/// Exit codes: 0 ok, 1 error, 2 usage (clap), 3 the store is full.
fn exit_for(err: &Error) -> ExitCode {
    if err.is_full() {
        ExitCode::from(3)
    } else {
        ExitCode::from(1)
    }
}

fn hint(err: &Error) -> &'static str {
    match err {
        Error::NoSpace(_) => " (free space on the filesystem, or write less)",
        Error::Quota(_) => " (raise --quota)",
        Error::OutOfRange { .. } => " (check the offset against the file's length: `pager stat FILE`)",
        Error::ReadOnly { .. } => " (check the file's permissions and mount)",
        Error::Userfaultfd { .. } => "",
        _ => "",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo) {
        Command::Demo => return demo::run(),
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
        Command::Truncate { file, len, common } => common.open(&file).and_then(|m| {
            m.set_len(len)?;
            m.close()
        }),
        Command::Punch {
            file,
            offset,
            len,
            common,
        } => common.open(&file).and_then(|m| {
            m.punch_hole(offset, len)?;
            m.close()
        }),
        Command::Stat { file, common } => stat(&file, &common),
        Command::Fill(args) => fill::run(&args),
        Command::Script { file, common } => common.open(&file).map(|m| script::run(&m)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pager: error: {e}{}", hint(&e));
            exit_for(&e)
        }
    }
}

fn cat(file: &std::path::Path, offset: u64, len: Option<u64>, common: &Common) -> mkwrite::Result<()> {
    let map = common.open(file)?;
    let len = len.unwrap_or_else(|| map.len().saturating_sub(offset));
    let end = offset.saturating_add(len).min(map.len());
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        map.read(at, &mut buf[..n])?;
        out.write_all(&buf[..n])?;
        at += n as u64;
    }
    out.flush()?;
    Ok(())
}

fn write(
    file: &std::path::Path,
    offset: u64,
    data: Option<String>,
    from: Option<std::path::PathBuf>,
    common: &Common,
) -> mkwrite::Result<()> {
    let bytes = match (data, from) {
        (Some(s), _) => s.into_bytes(),
        (None, Some(p)) => std::fs::read(p)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let map = common.open(file)?;
    let end = offset + bytes.len() as u64;
    if end > map.len() {
        map.set_len(end)?;
    }
    if let Err(e) = map.write(offset, &bytes) {
        // Keep what landed: flush it before reporting.
        map.close()?;
        eprintln!(
            "pager: {} of {} bytes written before the store refused the rest",
            e.done,
            bytes.len()
        );
        return Err(e.error);
    }
    map.close()?;
    println!("wrote {} bytes at {offset}", bytes.len());
    Ok(())
}

fn stat(file: &std::path::Path, common: &Common) -> mkwrite::Result<()> {
    let store = common.store(file)?;
    let allocated = store.allocated()?;
    let blocks: u64 = allocated.iter().map(|r| r.end - r.start).sum();
    let len = store.len();
    let total = len.div_ceil(store.block_size());
    println!("len={len}");
    println!("block_size={}", store.block_size());
    println!("blocks={total}");
    println!("blocks_allocated={blocks}");
    println!("holes={}", holes(&allocated, total));
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
