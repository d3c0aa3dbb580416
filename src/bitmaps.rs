//! Several fixed-length bitmaps in one block of memory that reads as zeros
//! until written (`sys::ZeroedWords`): a range whose bits were never set
//! costs no memory, so a mapping's flags cost what its touched pages need,
//! not what its capacity would. Every operation is careful to keep it so:
//! clearing writes only words that hold a set bit, and scans skip words of
//! zeros.

use std::io;
use std::ops::Range;

use crate::sys::ZeroedWords;

const BITS: u64 = 64;

/// `N` bitmaps of given lengths, numbered `0..N`.
pub(crate) struct Bitmaps<const N: usize> {
    words: ZeroedWords,
    /// Where each bitmap's words start.
    starts: [usize; N],
    /// Each bitmap's length in bits.
    lens: [u64; N],
}

impl<const N: usize> std::fmt::Debug for Bitmaps<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitmaps")
            .field("lens", &self.lens)
            .finish_non_exhaustive()
    }
}

impl<const N: usize> Bitmaps<N> {
    /// All bits clear.
    pub fn new(lens: [u64; N]) -> io::Result<Bitmaps<N>> {
        let mut starts = [0; N];
        let mut total = 0usize;
        for (start, &len) in starts.iter_mut().zip(&lens) {
            *start = total;
            total += len.div_ceil(BITS) as usize;
        }
        Ok(Bitmaps {
            words: ZeroedWords::new(total)?,
            starts,
            lens,
        })
    }

    /// Bitmaps of (no smaller) `lens` holding these bits; the rest clear.
    pub fn grown(&self, lens: [u64; N]) -> io::Result<Bitmaps<N>> {
        let mut grown = Bitmaps::new(lens)?;
        for (map, &len) in lens.iter().enumerate() {
            debug_assert!(len >= self.lens[map]);
            let (from, to) = (self.map(map), grown.starts[map]);
            for (i, &word) in from.iter().enumerate().filter(|(_, w)| **w != 0) {
                grown.words[to + i] = word;
            }
        }
        Ok(grown)
    }

    fn map(&self, map: usize) -> &[u64] {
        let start = self.starts[map];
        &self.words[start..start + self.lens[map].div_ceil(BITS) as usize]
    }

    fn map_mut(&mut self, map: usize) -> &mut [u64] {
        let start = self.starts[map];
        let words = self.lens[map].div_ceil(BITS) as usize;
        &mut self.words[start..start + words]
    }

    pub fn get(&self, map: usize, bit: u64) -> bool {
        debug_assert!(bit < self.lens[map], "bit {bit} of map {map} out of range");
        self.map(map)[(bit / BITS) as usize] & (1 << (bit % BITS)) != 0
    }

    pub fn set(&mut self, map: usize, bit: u64, value: bool) {
        self.set_range(map, bit..bit + 1, value);
    }

    /// Sets or clears the bits of `bits` (clipped to the map's length).
    /// Clearing leaves words without a set bit untouched.
    pub fn set_range(&mut self, map: usize, bits: Range<u64>, value: bool) {
        let bits = bits.start..bits.end.min(self.lens[map]);
        for (word, mask) in masks(bits) {
            let w = &mut self.map_mut(map)[word];
            if value {
                *w |= mask;
            } else if *w & mask != 0 {
                *w &= !mask;
            }
        }
    }

    /// Set bits in `bits`.
    pub fn count(&self, map: usize, bits: Range<u64>) -> u64 {
        let words = self.map(map);
        let bits = bits.start..bits.end.min(self.lens[map]);
        masks(bits)
            .map(|(word, mask)| u64::from((words[word] & mask).count_ones()))
            .sum()
    }

    /// The set bits in `bits`, in order; words of zeros cost a load each.
    pub fn ones(&self, map: usize, bits: Range<u64>) -> impl Iterator<Item = u64> + '_ {
        let words = self.map(map);
        let bits = bits.start..bits.end.min(self.lens[map]);
        masks(bits).flat_map(move |(word, mask)| {
            let mut w = words[word] & mask;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(word as u64 * BITS + bit)
            })
        })
    }
}

/// The words `bits` spans, each with the mask of its bits in the range.
fn masks(bits: Range<u64>) -> impl Iterator<Item = (usize, u64)> {
    let words = if bits.is_empty() {
        0..0
    } else {
        bits.start / BITS..bits.end.div_ceil(BITS)
    };
    words.map(move |word| {
        let first = (word * BITS).max(bits.start) - word * BITS;
        let end = ((word + 1) * BITS).min(bits.end) - word * BITS;
        let high = if end == BITS { u64::MAX } else { (1 << end) - 1 };
        (word as usize, high & !((1u64 << first) - 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain vector of bools, over ranges that start and end in
    /// every position of a word.
    #[test]
    fn bitmaps_agree_with_a_vector_of_bools() {
        let lens = [200, 7, 130];
        let mut maps = Bitmaps::new(lens).unwrap();
        let mut model: Vec<Vec<bool>> = lens.iter().map(|&l| vec![false; l as usize]).collect();
        let mut seed = 12345u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..2000 {
            let map = next(3) as usize;
            let len = lens[map];
            let start = next(len + 1);
            let end = start + next(len + 1 - start);
            match next(3) {
                0 => {
                    let value = next(2) == 1;
                    maps.set_range(map, start..end, value);
                    model[map][start as usize..end as usize].fill(value);
                }
                1 => {
                    let want = model[map][start as usize..end as usize]
                        .iter()
                        .filter(|b| **b)
                        .count();
                    assert_eq!(maps.count(map, start..end), want as u64);
                }
                _ => {
                    let want: Vec<u64> = (start..end).filter(|&b| model[map][b as usize]).collect();
                    assert_eq!(maps.ones(map, start..end).collect::<Vec<_>>(), want);
                }
            }
            for (m, bits) in model.iter().enumerate() {
                for (b, &v) in bits.iter().enumerate() {
                    assert_eq!(maps.get(m, b as u64), v, "map {m} bit {b}");
                }
            }
        }
        let grown = maps.grown([300, 70, 130]).unwrap();
        for (m, bits) in model.iter().enumerate() {
            let want: Vec<u64> = (0..bits.len() as u64).filter(|&b| bits[b as usize]).collect();
            assert_eq!(grown.ones(m, 0..u64::MAX).collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn untouched_bitmaps_cost_no_memory() {
        // 1 TiB of 4 KiB pages, seven bitmaps: 256 Mi bits each, 224 MiB in all.
        let lens = [1 << 28; 7];
        let mut maps = Bitmaps::new(lens).unwrap();
        maps.set_range(0, 0..1 << 28, false); // clearing writes nothing
        assert_eq!(maps.count(3, 0..1 << 28), 0); // scanning reads the zero page
        maps.set(6, (1 << 28) - 1, true);
        assert_eq!(maps.ones(6, 0..u64::MAX).collect::<Vec<_>>(), vec![(1 << 28) - 1]);
        let resident = resident_bytes(&maps.words);
        assert!(resident <= 4096, "{resident} bytes resident");
    }

    /// Bytes of `words` in memory of their own: the `Rss` of their memory
    /// area in `/proc/self/smaps` (which, unlike `mincore`, does not count
    /// the kernel's zero page).
    fn resident_bytes(words: &[u64]) -> usize {
        let start = format!("{:x}-", words.as_ptr() as usize);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let area = smaps.split_once(&start).expect("the words' area").1;
        let rss = area.lines().find_map(|l| l.strip_prefix("Rss:")).unwrap();
        rss.trim().trim_end_matches("kB").trim().parse::<usize>().unwrap() * 1024
    }
}
