//! Working ahead of sequential access: a read fault fills the next pages
//! too (one store read, one `UFFDIO_COPY`), and a write fault allocates the
//! next pages' blocks too (one store call), as the kernel's readahead and a
//! database's `fallocate` ahead do, and makes the next pages whose blocks
//! are allocated writable too (one copy; they are dirty from then on, so a
//! flush writes them even if they are never written: at most a window). A fault where the last one left off
//! doubles the window, up to a limit; any other fault closes it, so random
//! access pays nothing extra.

/// Pages filled ahead of a sequential reader at most (128 KiB, the kernel's
/// default readahead).
const READ_AHEAD_MAX: u64 = 32;
/// Pages allocated ahead of a sequential writer at most (1 MiB: on ext4 one
/// `fallocate` of 1 MiB costs what one of 4 KiB does).
const ALLOCATE_AHEAD_MAX: u64 = 256;
/// Pages filled around a read fault that is not sequential: the aligned
/// group holding it (64 KiB, the kernel's `fault_around_bytes`).
const FAULT_AROUND: u64 = 16;
/// Pages one fault fills at most: the faulting page and those read ahead.
pub(crate) const MAX_FILL_PAGES: u64 = READ_AHEAD_MAX + 1;

/// How the mapping will be accessed, as `madvise(2)` advices say it; see
/// [`Mapping::advise`](crate::Mapping::advise). The destructive advices
/// (`MADV_DONTNEED`, `MADV_FREE`) have no place here: [`evict`](crate::Mapping::evict)
/// is their safe form.
///
/// ```
/// use mkwrite::{Advice, MappingOptions, MemStore, Store};
/// # let store = MemStore::new(4096, 64)?;
/// # store.set_len(64 * 4096)?;
/// let map = MappingOptions::new().map_store(store)?;
/// map.advise(Advice::Sequential, 0, 0)?; // a scan: fill far ahead from the first fault
/// // SAFETY: inside the file, and no reference to these bytes is alive.
/// let _ = unsafe { map.as_ptr().read_volatile() };
/// let stats = map.stats();
/// assert_eq!(stats.faults_missing_read, 1);
/// assert!(stats.pages_resident > 1); // the pages after it came with it
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "madvise")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Advice {
    /// Work ahead of what looks sequential (the default).
    #[default]
    Normal,
    /// Work ahead from the first fault, with the widest window.
    Sequential,
    /// Never work ahead: every fault handles its own page only.
    Random,
    /// Fill the range for reading now (`MADV_WILLNEED`).
    WillNeed,
}

/// One direction's sequential detector.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stream {
    /// The page a sequential fault would hit next.
    next: u64,
    /// Pages handled ahead at the last fault.
    window: u64,
}

impl Stream {
    /// A fault at `page`: how many pages after it to handle with it.
    pub fn on_fault(&mut self, page: u64, max: u64, advice: Advice) -> u64 {
        let sequential = page == self.next && page != 0;
        self.window = match advice {
            Advice::Random => 0,
            Advice::Sequential => max,
            _ if sequential => (self.window * 2).clamp(1, max),
            _ => 0,
        };
        self.next = page + 1 + self.window;
        self.window
    }
}

impl Stream {
    /// A fault filled `count` pages from `first` (around the faulting page):
    /// a reader going on from there is sequential, with that window.
    pub fn filled(&mut self, first: u64, count: u64) {
        self.next = first + count;
        self.window = count.saturating_sub(1);
    }
}

/// Sequential streams followed at once: threads working through regions of
/// their own each keep their window.
const STREAMS: usize = 4;

/// Several streams of one direction: a fault continues the stream that
/// expected it, or replaces the one used longest ago.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Detector {
    streams: [Stream; STREAMS],
    used: [u64; STREAMS],
    tick: u64,
    /// The stream of the last fault.
    current: usize,
}

impl Detector {
    /// A fault at `page`: how many pages after it to handle with it.
    pub fn on_fault(&mut self, page: u64, max: u64, advice: Advice) -> u64 {
        self.tick += 1;
        let continued = self.streams.iter().position(|s| s.next == page && page != 0);
        let oldest = || (0..STREAMS).min_by_key(|&i| self.used[i]).unwrap_or(0);
        self.current = continued.unwrap_or_else(oldest);
        self.used[self.current] = self.tick;
        self.streams[self.current].on_fault(page, max, advice)
    }

    /// The last fault filled `count` pages from `first`: see [`Stream::filled`].
    pub fn filled(&mut self, first: u64, count: u64) {
        self.filled_in(self.current, first, count);
    }

    /// The stream of the last fault, to name in [`filled_in`](Self::filled_in)
    /// once its fill is done (other faults may come meanwhile).
    pub fn current(&self) -> usize {
        self.current
    }

    /// A fault of stream `stream` filled `count` pages from `first`.
    pub fn filled_in(&mut self, stream: usize, first: u64, count: u64) {
        self.streams[stream].filled(first, count);
    }
}

/// The read and write detectors of one mapping, and its advice.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    pub read: Detector,
    pub write: Detector,
    /// Writes filling pages (the allocation stream moves only when blocks
    /// are missing, this one at every missing-page write).
    pub write_fill: Detector,
    pub advice: Advice,
}

impl Streams {
    /// A read fault at `page`: how many pages after it to fill too.
    pub fn read_fault(&mut self, page: u64) -> u64 {
        self.read.on_fault(page, READ_AHEAD_MAX, self.advice)
    }

    /// The pages a read fault at `page` that is not sequential may fill
    /// besides it: the aligned group of [`FAULT_AROUND`] pages holding it, as
    /// the kernel's fault-around maps a file's cached neighbours; only the
    /// page itself under [`Advice::Random`].
    pub fn around(&self, page: u64) -> std::ops::Range<u64> {
        match self.advice {
            Advice::Random => page..page + 1,
            _ => {
                let first = page / FAULT_AROUND * FAULT_AROUND;
                first..first + FAULT_AROUND
            }
        }
    }

    /// A write fault at `page`: how many pages after it to allocate for too.
    pub fn write_fault(&mut self, page: u64) -> u64 {
        self.write.on_fault(page, ALLOCATE_AHEAD_MAX, self.advice)
    }

    /// A write fault at the missing `page`: how many pages after it to make
    /// writable too (those whose blocks are allocated).
    pub fn write_fill_fault(&mut self, page: u64) -> u64 {
        self.write_fill.on_fault(page, READ_AHEAD_MAX, self.advice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequential_stream_doubles_its_window_up_to_the_limit() {
        let mut s = Stream::default();
        let mut page = 0;
        let mut windows = Vec::new();
        for _ in 0..8 {
            let w = s.on_fault(page, 8, Advice::Normal);
            windows.push(w);
            page += 1 + w;
        }
        assert_eq!(windows, [0, 1, 2, 4, 8, 8, 8, 8]);
    }

    #[test]
    fn a_jump_closes_the_window() {
        let mut s = Stream::default();
        for page in [5, 6, 8] {
            s.on_fault(page, 32, Advice::Normal);
        }
        assert_eq!(
            s.on_fault(100, 32, Advice::Normal),
            0,
            "random access reads nothing ahead"
        );
        assert_eq!(
            s.on_fault(101, 32, Advice::Normal),
            1,
            "and a new run starts small"
        );
    }

    #[test]
    fn a_random_read_fills_its_aligned_group_unless_advised_random() {
        let mut s = Streams::default();
        assert_eq!(s.around(37), 32..48);
        s.advice = Advice::Random;
        assert_eq!(s.around(37), 37..38);
    }

    #[test]
    fn a_reader_going_on_after_a_fill_around_is_sequential() {
        let mut s = Stream::default();
        assert_eq!(s.on_fault(37, 32, Advice::Normal), 0);
        s.filled(32, 16);
        assert_eq!(
            s.on_fault(48, 32, Advice::Normal),
            30,
            "the window goes on from 16 pages"
        );
    }

    #[test]
    fn two_interleaved_writers_each_keep_their_window() {
        let mut d = Detector::default();
        let (mut a, mut b) = (1u64, 1001u64);
        let mut windows = Vec::new();
        for _ in 0..5 {
            let wa = d.on_fault(a, 32, Advice::Normal);
            let wb = d.on_fault(b, 32, Advice::Normal);
            windows.push((wa, wb));
            a += 1 + wa;
            b += 1 + wb;
        }
        assert_eq!(windows, [(0, 0), (1, 1), (2, 2), (4, 4), (8, 8)]);
        assert_eq!(
            d.on_fault(5000, 32, Advice::Normal),
            0,
            "a jump starts its own stream"
        );
        assert_eq!(d.on_fault(a, 32, Advice::Normal), 16, "and the others go on");
    }

    #[test]
    fn a_fill_ending_after_another_fault_goes_to_its_own_stream() {
        let mut d = Detector::default();
        d.on_fault(1, 32, Advice::Normal);
        d.on_fault(1001, 32, Advice::Normal);
        d.on_fault(2, 32, Advice::Normal);
        let first_writer = d.current();
        // The other writer faults before the first one's fill is recorded.
        d.on_fault(1002, 32, Advice::Normal);
        assert_ne!(d.current(), first_writer);
        d.filled_in(first_writer, 2, 3);
        assert_eq!(
            d.on_fault(5, 32, Advice::Normal),
            4,
            "the first writer goes on from its fill"
        );
    }

    #[test]
    fn advice_overrides_the_guess() {
        let mut s = Stream::default();
        assert_eq!(s.on_fault(7, 32, Advice::Sequential), 32);
        assert_eq!(s.on_fault(8, 32, Advice::Random), 0);
    }
}
