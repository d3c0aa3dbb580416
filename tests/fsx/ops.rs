//! The operations of the differential test, their text form (the replayable
//! op log) and a generator that favours block, page and EOF boundaries.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The mapping's capacity in both runs; every length stays below it.
pub const CAPACITY: u64 = 1 << 20;
/// The largest length the generator asks for (half the capacity keeps files small).
const MAX_LEN: u64 = 512 << 10;

/// One step of a sequence. Each is applied to whatever state the sequence
/// reached, clipped to it ([`Op::clipped`]), so any subsequence is runnable
/// too: that is what lets a failing sequence shrink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `len` bytes of `data(seed, offset)`, through the checked call or
    /// raw through the pointer; may run past EOF inside the last page.
    Write {
        offset: u64,
        len: u64,
        seed: u8,
        raw: bool,
    },
    /// Read and compare, through the checked call or raw through the pointer.
    Read {
        offset: u64,
        len: u64,
        raw: bool,
    },
    /// Pollute the EOF page past EOF with `seed`'s bytes, then move EOF.
    SetLen {
        len: u64,
        seed: u8,
    },
    Punch {
        offset: u64,
        len: u64,
    },
    Reserve {
        offset: u64,
        len: u64,
    },
    Flush,
    FlushRange {
        offset: u64,
        len: u64,
    },
    Evict,
    Reopen,
}

/// The bytes a write puts at `offset`: never zero and different at every
/// offset, so a zeroed, stale or misplaced byte shows.
pub fn data(seed: u8, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|at| {
            let mixed = (at ^ (u64::from(seed) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (mixed >> 56) as u8 | 1
        })
        .collect()
}

/// `[offset, offset + len)` clipped to `limit`, or `None` when nothing is left.
pub fn clip(offset: u64, len: u64, limit: u64) -> Option<(u64, u64)> {
    let end = offset.saturating_add(len).min(limit);
    (offset < end).then(|| (offset, end - offset))
}

impl Op {
    /// This op as it applies to a file of length `eof`: writes clipped to the
    /// pages that hold the file, reads, holes and reservations to EOF, flushed
    /// ranges and lengths to the capacity; `None` when nothing is left. Every
    /// executor runs ops through this, which is what makes any subsequence of
    /// a sequence runnable (and so shrinkable).
    pub fn clipped(self, eof: u64, page: u64) -> Option<Op> {
        Some(match self {
            Op::Write {
                offset,
                len,
                seed,
                raw,
            } => {
                let (offset, len) = clip(offset, len, eof.next_multiple_of(page))?;
                Op::Write {
                    offset,
                    len,
                    seed,
                    raw,
                }
            }
            Op::Read { offset, len, raw } => {
                let (offset, len) = clip(offset, len, eof)?;
                Op::Read { offset, len, raw }
            }
            Op::SetLen { len, seed } => Op::SetLen {
                len: len.min(CAPACITY),
                seed,
            },
            Op::Punch { offset, len } => {
                let (offset, len) = clip(offset, len, eof)?;
                Op::Punch { offset, len }
            }
            Op::Reserve { offset, len } => {
                let (offset, len) = clip(offset, len, eof)?;
                Op::Reserve { offset, len }
            }
            Op::FlushRange { offset, len } => {
                let (offset, len) = clip(offset, len, CAPACITY)?;
                Op::FlushRange { offset, len }
            }
            Op::Flush | Op::Evict | Op::Reopen => self,
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = |raw: bool| if raw { "raw" } else { "checked" };
        match *self {
            Op::Write {
                offset,
                len,
                seed,
                raw,
            } => write!(f, "write {offset} {len} {seed} {}", how(raw)),
            Op::Read { offset, len, raw } => write!(f, "read {offset} {len} {}", how(raw)),
            Op::SetLen { len, seed } => write!(f, "set_len {len} {seed}"),
            Op::Punch { offset, len } => write!(f, "punch {offset} {len}"),
            Op::Reserve { offset, len } => write!(f, "reserve {offset} {len}"),
            Op::Flush => write!(f, "flush"),
            Op::FlushRange { offset, len } => write!(f, "flush_range {offset} {len}"),
            Op::Evict => write!(f, "evict"),
            Op::Reopen => write!(f, "reopen"),
        }
    }
}

impl FromStr for Op {
    type Err = String;

    fn from_str(line: &str) -> Result<Op, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| -> Result<u64, String> {
            words
                .get(i)
                .ok_or_else(|| format!("{line:?}: missing argument {i}"))?
                .parse()
                .map_err(|e| format!("{line:?}: {e}"))
        };
        let raw = |i: usize| words.get(i) == Some(&"raw");
        Ok(match words.first().copied() {
            Some("write") => Op::Write {
                offset: number(1)?,
                len: number(2)?,
                seed: number(3)? as u8,
                raw: raw(4),
            },
            Some("read") => Op::Read {
                offset: number(1)?,
                len: number(2)?,
                raw: raw(3),
            },
            Some("set_len") => Op::SetLen {
                len: number(1)?,
                seed: number(2)? as u8,
            },
            Some("punch") => Op::Punch {
                offset: number(1)?,
                len: number(2)?,
            },
            Some("reserve") => Op::Reserve {
                offset: number(1)?,
                len: number(2)?,
            },
            Some("flush") => Op::Flush,
            Some("flush_range") => Op::FlushRange {
                offset: number(1)?,
                len: number(2)?,
            },
            Some("evict") => Op::Evict,
            Some("reopen") => Op::Reopen,
            _ => return Err(format!("{line:?}: unknown operation")),
        })
    }
}

/// Random sequences whose offsets and lengths cluster at the boundaries
/// where the rules bite: blocks, pages and EOF.
pub struct Generator {
    rng: StdRng,
    block: u64,
    page: u64,
    eof: u64,
    /// The EOFs before the last few size changes: the straddling pages of
    /// old EOFs are where growth must have re-protected and zeroed.
    old_eofs: [u64; 3],
}

impl Generator {
    pub fn new(seed: u64, block: u64, page: u64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            block,
            page,
            eof: 0,
            old_eofs: [0; 3],
        }
    }

    pub fn sequence(&mut self, count: usize) -> Vec<Op> {
        (0..count).map(|_| self.next_op()).collect()
    }

    fn next_op(&mut self) -> Op {
        let op = match self.rng.random_range(0..100) {
            0..30 => Op::Write {
                offset: self.offset_in(self.eof.next_multiple_of(self.page)),
                len: self.length(),
                seed: self.rng.random(),
                raw: self.rng.random_bool(0.5),
            },
            30..48 => Op::Read {
                offset: self.offset_in(self.eof),
                len: self.length(),
                raw: self.rng.random_bool(0.5),
            },
            48..62 => Op::SetLen {
                len: self.offset_in(MAX_LEN),
                seed: self.rng.random(),
            },
            62..70 => Op::Punch {
                offset: self.offset_in(self.eof),
                len: self.length(),
            },
            70..75 => Op::Reserve {
                offset: self.offset_in(self.eof),
                len: self.length(),
            },
            75..86 => Op::Flush,
            86..90 => Op::FlushRange {
                offset: self.offset_in(self.eof),
                len: self.length(),
            },
            90..97 => Op::Evict,
            _ => Op::Reopen,
        };
        if let Op::SetLen { len, .. } = op {
            self.old_eofs.rotate_right(1);
            self.old_eofs[0] = self.eof;
            self.eof = len;
        }
        op
    }

    /// An offset in `[0, limit]`, near a boundary more often than not.
    fn offset_in(&mut self, limit: u64) -> u64 {
        let near = |rng: &mut StdRng, unit: u64| {
            let k = rng.random_range(0..=limit / unit);
            (k * unit).saturating_add_signed(rng.random_range(-3..=3))
        };
        let at = match self.rng.random_range(0..10) {
            0..2 => self.rng.random_range(0..=limit),
            2..4 => near(&mut self.rng, self.block),
            4..6 => near(&mut self.rng, self.page),
            6..8 => {
                let old = self.old_eofs[self.rng.random_range(0..3).min(self.rng.random_range(0..3))];
                old.saturating_add_signed(self.rng.random_range(-8..=64))
            }
            _ => self.eof.saturating_add_signed(self.rng.random_range(-8..=8)),
        };
        at.min(limit)
    }

    fn length(&mut self) -> u64 {
        let around = |rng: &mut StdRng, unit: u64| {
            (unit * rng.random_range(1..=3)).saturating_add_signed(rng.random_range(-3..=3))
        };
        let len = match self.rng.random_range(0..10) {
            0..3 => self.rng.random_range(1..=8),
            3..5 => around(&mut self.rng, self.block),
            5..7 => around(&mut self.rng, self.page),
            7..9 => self.rng.random_range(1..=3 * self.page),
            _ => self.rng.random_range(1..=64 << 10),
        };
        len.max(1)
    }
}

#[test]
fn op_log_round_trips() {
    let mut generator = Generator::new(7, 1024, 4096);
    for op in generator.sequence(500) {
        assert_eq!(op.to_string().parse::<Op>(), Ok(op));
    }
}
