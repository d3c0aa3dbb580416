//! `pager script FILE`: one command a line on stdin, one answer a line on
//! stdout (flushed each time). See the README for the table of commands.

use std::io::{BufRead, Write};

use mkwrite::guarded::{self, FaultCause};
use mkwrite::{Error, Mapping};
use sha2::{Digest, Sha256};

use super::report::Failure;
use super::setup::origin_word;

fn kind(e: &Error) -> &'static str {
    match e {
        Error::NoSpace(_) => "nospace",
        Error::Quota(_) => "quota",
        Error::OutOfRange { .. } | Error::BeyondCapacity { .. } => "range",
        Error::InvalidBlockSize(_) | Error::CapacityBelowLength { .. } => "invalid",
        Error::ReadOnly { .. } | Error::ReadOnlyMapping => "readonly",
        _ => "io",
    }
}

fn err(e: &Error, done: usize) -> String {
    format!("err {} {done}", kind(e))
}

fn unit(r: mkwrite::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => err(&e, 0),
    }
}

fn partial(r: Result<(), mkwrite::PartialError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => err(&e.error, e.done),
    }
}

/// How `poke` and `peek` touch the memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Raw {
    /// Through [`mkwrite::guarded`]: a SIGBUS becomes `err KIND DONE`.
    Guarded,
    /// Plain loads and stores: a SIGBUS ends the pager, as with mmap.
    Plain,
}

/// The mapping's memory for `[off, off + len)`, if it lies within the capacity.
fn raw_range(map: &Mapping, off: u64, len: usize) -> Option<*mut u8> {
    let end = off.checked_add(len as u64)?;
    (end <= map.capacity()).then(|| {
        // SAFETY: `off` is within the reservation (checked above).
        unsafe { map.as_ptr().add(off as usize) }
    })
}

fn fault_kind(cause: FaultCause) -> &'static str {
    match cause {
        FaultCause::NoSpace => "nospace",
        FaultCause::Quota => "quota",
        FaultCause::PastEof => "range",
        FaultCause::Denied => "readonly",
        _ => "io",
    }
}

/// `poke`: `len` plain stores of `byte`, so each first write to a clean page
/// takes the real fault path.
fn poke(map: &Mapping, raw: Raw, off: u64, len: usize, byte: u8) -> String {
    let Some(at) = raw_range(map, off, len) else {
        return "err range 0".into();
    };
    // SAFETY: the range lies in the mapping's memory and this thread holds
    // no reference into it; the guard was installed before the session.
    let stored = unsafe {
        match raw {
            Raw::Guarded => guarded::fill(at, byte, len),
            Raw::Plain => {
                std::ptr::write_bytes(at, byte, len);
                Ok(())
            }
        }
    };
    match stored {
        Ok(()) => "ok".into(),
        Err(f) => format!("err {} {}", fault_kind(f.cause), f.done),
    }
}

/// `peek`: `len` plain loads, hashed.
fn peek(map: &Mapping, raw: Raw, off: u64, len: usize) -> String {
    let Some(at) = raw_range(map, off, len) else {
        return "err range 0".into();
    };
    let mut buf = vec![0u8; len];
    // SAFETY: as in `poke`.
    let loaded = unsafe {
        match raw {
            Raw::Guarded => guarded::load(at, &mut buf),
            Raw::Plain => {
                std::ptr::copy_nonoverlapping(at, buf.as_mut_ptr(), len);
                Ok(())
            }
        }
    };
    match loaded {
        Ok(()) => format!("ok {}", hex(&Sha256::digest(&buf))),
        Err(f) => format!("err {} {}", fault_kind(f.cause), f.done),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers one line; `None` for blank lines and comments.
pub fn answer(map: &Mapping, raw: Raw, line: &str) -> Option<String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| words.get(i).and_then(|w| super::setup::parse_size(w).ok());
    let reply = match (words[0], words.len()) {
        ("fill", 4) => match (num(1), num(2), words[3].parse::<u8>()) {
            (Some(off), Some(len), Ok(byte)) if len <= 1 << 30 => {
                partial(map.write(off, &vec![byte; len as usize]))
            }
            _ => return Some("err invalid 0".into()),
        },
        ("read", 3) => match (num(1), num(2)) {
            (Some(off), Some(len)) if len <= 1 << 30 => {
                let mut buf = vec![0u8; len as usize];
                match map.read(off, &mut buf) {
                    Ok(()) => format!("ok {}", hex(&Sha256::digest(&buf))),
                    Err(e) => err(&e.error, 0),
                }
            }
            _ => return Some("err invalid 0".into()),
        },
        ("poke", 4) => match (num(1), num(2), words[3].parse::<u8>()) {
            (Some(off), Some(len), Ok(byte)) if len <= 1 << 30 => poke(map, raw, off, len as usize, byte),
            _ => return Some("err invalid 0".into()),
        },
        ("peek", 3) => match (num(1), num(2)) {
            (Some(off), Some(len)) if len <= 1 << 30 => peek(map, raw, off, len as usize),
            _ => return Some("err invalid 0".into()),
        },
        ("setlen", 2) => match num(1) {
            Some(len) => unit(map.set_len(len)),
            None => return Some("err invalid 0".into()),
        },
        ("punch", 3) => match (num(1), num(2)) {
            (Some(off), Some(len)) => unit(map.punch_hole(off, len)),
            _ => return Some("err invalid 0".into()),
        },
        ("reserve", 3) => match (num(1), num(2)) {
            (Some(off), Some(len)) => partial(map.reserve(off, len)),
            _ => return Some("err invalid 0".into()),
        },
        ("flush", 1) => unit(map.flush()),
        ("evict", 1) => unit(map.evict()),
        ("len", 1) => format!("ok {}", map.len()),
        ("stat", 1) => {
            let s = map.stats();
            format!(
                "ok len={} block_size={} blocks_allocated={} pages_resident={} pages_dirty={} \
                 faults_missing={} faults_wp={} flushes={} uffd={}",
                s.len,
                s.block_size,
                s.blocks_allocated,
                s.pages_resident,
                s.pages_dirty,
                s.faults_missing_read + s.faults_missing_write,
                s.faults_write_protect,
                s.flushes,
                origin_word(map.userfaultfd_origin())
            )
        }
        _ => "err invalid 0".into(),
    };
    Some(reply)
}

/// Answers until stdin ends. A closed stdout ends the session too (nobody is
/// left to answer), and its error picks the exit status like any output's.
pub fn run(map: &Mapping, raw: Raw) -> Result<(), Failure> {
    if raw == Raw::Guarded {
        guarded::install()?;
    }
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(reply) = answer(map, raw, &line) {
            writeln!(out, "{reply}")
                .and_then(|()| out.flush())
                .map_err(Failure::Output)?;
        }
    }
    Ok(())
}
