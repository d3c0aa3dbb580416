//! The file the ops make, as a plain buffer (its length is the EOF): what
//! every executor of the ops judges against (the twin run, the crash
//! children, the NBD tests).

use std::ops::Range;

use super::ops::{CAPACITY, Op, clip, data};

/// Puts the bytes of `Op::Write { offset, len, seed, .. }` into `model`,
/// clipped to its length (what a write past EOF leaves in the file);
/// returns the offsets written.
pub fn write(model: &mut [u8], offset: u64, len: u64, seed: u8) -> Range<usize> {
    let Some((offset, len)) = clip(offset, len, model.len() as u64) else {
        return 0..0;
    };
    let range = offset as usize..(offset + len) as usize;
    model[range.clone()].copy_from_slice(&data(seed, offset, len));
    range
}

/// Zeroes `[offset, offset + len)` of `model`, clipped to its length;
/// returns the offsets zeroed.
pub fn punch(model: &mut [u8], offset: u64, len: u64) -> Range<usize> {
    let Some((offset, len)) = clip(offset, len, model.len() as u64) else {
        return 0..0;
    };
    let range = offset as usize..(offset + len) as usize;
    model[range.clone()].fill(0);
    range
}

/// Applies `op` to the model; returns the byte offsets whose value it may
/// have changed (a length change: those between the old and new EOF).
pub fn apply(model: &mut Vec<u8>, op: Op) -> Range<usize> {
    let eof = model.len() as u64;
    match op {
        Op::Write {
            offset, len, seed, ..
        } => write(model, offset, len, seed),
        Op::SetLen { len, .. } => {
            let len = len.min(CAPACITY);
            model.resize(len as usize, 0);
            eof.min(len) as usize..eof.max(len) as usize
        }
        Op::Punch { offset, len } => punch(model, offset, len),
        _ => 0..0,
    }
}
