//! The header that gives an NBD export a file length.
//!
//! An export has a size but no EOF, so the file's length lives at the
//! export's start, in the first of `data_offset` reserved bytes; file
//! offset 0 is export offset `data_offset`. The header is written in one
//! of two 512-byte slots (export offsets 0 and 512), alternating, each with
//! a generation number and a checksum: a torn or lost write of one slot
//! leaves the other, so after a crash the length is the newest one that
//! was wholly written, a length the file had.
//!
//! A slot, big-endian like the rest of NBD:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | magic `MKWRNBD\0` |
//! | 8..12 | version, 1 |
//! | 12..16 | block size (the allocation unit) |
//! | 16..24 | data offset: export bytes reserved before file offset 0 |
//! | 24..32 | length (EOF) |
//! | 32..40 | volume id, random at format: a reconnect checks it is the same export |
//! | 40..48 | generation, +1 on every write |
//! | 48..56 | FNV-1a 64 of bytes 0..48 |
//! | 56..512 | zero |

use super::proto::u64_at;

/// Bytes of one slot, and the offset of the second.
pub const SLOT: usize = 512;
/// Bytes read at open: both slots.
pub const AREA: usize = 2 * SLOT;
/// The magic of a slot.
pub const MAGIC: [u8; 8] = *b"MKWRNBD\0";
/// The layout version this code writes and reads.
pub const VERSION: u32 = 1;

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub block_size: u64,
    pub data_offset: u64,
    pub len: u64,
    pub volume: u64,
    pub generation: u64,
}

/// What the header area of an export turned out to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The newest valid slot.
    Valid(Header),
    /// Only zeros: a fresh export, never formatted.
    Blank,
    /// mkwrite's magic, but no slot passes its checksum, or a version this
    /// code does not know.
    Damaged,
    /// Something else: another program's data.
    Foreign,
}

impl Header {
    /// Export offset of the slot this header's generation is written to.
    pub fn slot_offset(&self) -> u64 {
        (self.generation % 2) * SLOT as u64
    }

    pub fn encode(&self) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_be_bytes());
        b[12..16].copy_from_slice(&(self.block_size as u32).to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..32].copy_from_slice(&self.len.to_be_bytes());
        b[32..40].copy_from_slice(&self.volume.to_be_bytes());
        b[40..48].copy_from_slice(&self.generation.to_be_bytes());
        let sum = fnv1a(&b[..48]);
        b[48..56].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The header in `slot`, if it is a whole, valid one.
    pub fn decode(slot: &[u8]) -> Option<Header> {
        if slot.len() < 56 || slot[0..8] != MAGIC || u64_at(slot, 48) != fnv1a(&slot[..48]) {
            return None;
        }
        if u32::from_be_bytes(slot[8..12].try_into().ok()?) != VERSION {
            return None;
        }
        let header = Header {
            block_size: u64::from(u32::from_be_bytes(slot[12..16].try_into().ok()?)),
            data_offset: u64_at(slot, 16),
            len: u64_at(slot, 24),
            volume: u64_at(slot, 32),
            generation: u64_at(slot, 40),
        };
        let sane = header.block_size.is_power_of_two()
            && header.data_offset >= AREA as u64
            && header.data_offset.is_multiple_of(header.block_size);
        sane.then_some(header)
    }
}

/// Reads both slots of a header area (at least [`AREA`] bytes).
pub fn find(area: &[u8]) -> Found {
    let slots = [&area[..SLOT], &area[SLOT..AREA]];
    let newest = slots
        .iter()
        .filter_map(|s| Header::decode(s))
        .max_by_key(|h| h.generation);
    match newest {
        Some(h) => Found::Valid(h),
        None if area[..AREA].iter().all(|&b| b == 0) => Found::Blank,
        None if slots.iter().any(|s| s[0..8] == MAGIC) => Found::Damaged,
        None => Found::Foreign,
    }
}

/// FNV-1a, 64 bits: enough to tell a torn slot from a whole one.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(generation: u64, len: u64) -> Header {
        Header {
            block_size: 4096,
            data_offset: 4096,
            len,
            volume: 0xfeed,
            generation,
        }
    }

    fn area(slots: [Option<Header>; 2]) -> Vec<u8> {
        let mut a = vec![0u8; AREA];
        for h in slots.into_iter().flatten() {
            let at = h.slot_offset() as usize;
            a[at..at + SLOT].copy_from_slice(&h.encode());
        }
        a
    }

    #[test]
    fn round_trip_and_newest_wins() {
        let h = header(7, 12345);
        assert_eq!(Header::decode(&h.encode()), Some(h));
        assert_eq!(h.slot_offset(), SLOT as u64);
        let a = area([Some(header(6, 100)), Some(header(7, 200))]);
        assert_eq!(find(&a), Found::Valid(header(7, 200)));
    }

    #[test]
    fn a_torn_slot_leaves_the_older_length() {
        let mut a = area([Some(header(6, 100)), Some(header(7, 200))]);
        a[SLOT + 30] ^= 1; // the newer slot's length, half written
        assert_eq!(find(&a), Found::Valid(header(6, 100)));
        a[30] ^= 1;
        assert_eq!(find(&a), Found::Damaged);
    }

    #[test]
    fn blank_and_foreign() {
        assert_eq!(find(&[0u8; AREA]), Found::Blank);
        let mut a = vec![0u8; AREA];
        a[0..4].copy_from_slice(b"\x7fELF");
        assert_eq!(find(&a), Found::Foreign);
    }

    #[test]
    fn fnv_is_the_published_one() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
