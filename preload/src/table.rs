//! The managed files: one mkwrite mapping per file, shared by every
//! `mmap` of it in the process so they stay coherent (as the page cache
//! keeps the kernel's), the program's views into it, and the descriptors
//! that name the file. One lock guards it; the marks let calls that are
//! not about a managed file pass without it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::c_int;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use mkwrite::{Delivery, DirtyTracking, FileStore, FullAction, Mapping, MappingOptions, OnFull, Store};

use crate::{config::config, marks, say};

/// A file by `(st_dev, st_ino)`.
pub(crate) type Key = (u64, u64);

/// A managed file.
struct Live {
    path: PathBuf,
    mapping: Arc<Mapping>,
    base: usize,
    capacity: usize,
    /// The program's mappings of it, as address ranges inside
    /// `[base, base + capacity)`.
    views: Vec<Range<usize>>,
    slot: usize,
}

impl Live {
    fn holds(&self, addr: usize) -> bool {
        (self.base..self.base + self.capacity).contains(&addr)
    }
}

pub(crate) struct Table {
    files: BTreeMap<Key, Live>,
    fds: BTreeMap<c_int, Key>,
    pid: u32,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    files: BTreeMap::new(),
    fds: BTreeMap::new(),
    pid: 0,
});

thread_local! {
    /// Set while this thread holds the table: the calls mkwrite and the
    /// standard library make meanwhile (`open`, `mmap`, `close`) go
    /// straight to the C library instead of back to the table.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside the interposer already.
pub(crate) fn busy() -> bool {
    BUSY.with(Cell::get)
}

/// Restores the thread's previous busy state when dropped.
struct Busy(bool);

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(self.0));
    }
}

/// Runs `f` with this thread marked busy: mkwrite's own calls meanwhile
/// (its store's `pwrite`, `fallocate`, `mmap`) reach the C library.
pub(crate) fn inside<R>(f: impl FnOnce() -> R) -> R {
    let _busy = Busy(BUSY.with(|b| b.replace(true)));
    f()
}

/// Runs `f` on the table, with this thread marked busy.
///
/// A child of `vfork` shares the parent's memory, table included, until it
/// execs or exits: it gets an empty table of its own, so its calls pass
/// through and the parent's state is left alone. (A `fork` child is told
/// apart by [`forked_child`], which `pthread_atfork` runs in it.)
pub(crate) fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    inside(|| {
        let owner = OWNER.load(Ordering::Acquire);
        let me = std::process::id();
        if owner != 0 && owner != me {
            return f(&mut Table::empty(me));
        }
        OWNER.store(me, Ordering::Release);
        let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
        table.forget_if_forked();
        f(&mut table)
    })
}

/// The process the table belongs to (0 until first used).
static OWNER: AtomicU32 = AtomicU32::new(0);

/// Runs in a `fork` child (registered with `pthread_atfork`): the table
/// is now this process's, with nothing in it that works here.
pub(crate) extern "C" fn forked_child() {
    marks::clear_all();
    OWNER.store(std::process::id(), Ordering::Release);
}

/// Whether this is one of mkwrite's threads, whose calls are all
/// mkwrite's own (a descriptor number the program closed behind the
/// interposer's back, say with `fclose`, may be reused by mkwrite's store).
pub(crate) fn fault_thread() -> bool {
    thread_local! {
        static FAULT_THREAD: Cell<Option<bool>> = const { Cell::new(None) };
    }
    FAULT_THREAD.with(|known| {
        *known.get().get_or_insert_with(|| {
            // The kernel's copy of the name (std's handle may be gone in a
            // thread's last destructors, where a program may still call
            // `close`).
            let mut name = [0u8; 16];
            // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`.
            let got = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } == 0;
            got && name.starts_with(mkwrite::THREAD_PREFIX.as_bytes())
        })
    })
}

/// The file behind `fd`, if it is a regular file.
pub(crate) fn key_of_fd(fd: c_int) -> Option<Key> {
    // SAFETY: fstat writes only into the stat buffer we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG)
        .then_some((st.st_dev, st.st_ino))
}

/// The mapping holding `addr`, and the part of `[addr, addr + len)`
/// inside its file as `(offset, len)` (`len` 0 past EOF).
pub(crate) fn file_range(addr: usize, len: usize) -> Option<(Arc<Mapping>, u64, u64)> {
    let (map, off) = with_table(|t| t.mapping_at(addr))?;
    let within = (len as u64).min(map.len().saturating_sub(off));
    Some((map, off, within))
}

/// A mapping's address and length, page-aligned outward.
fn pages(addr: usize, len: usize) -> Range<usize> {
    let page = crate::page_size();
    addr / page * page..(addr.saturating_add(len)).div_ceil(page) * page
}

impl Table {
    fn empty(pid: u32) -> Table {
        Table {
            files: BTreeMap::new(),
            fds: BTreeMap::new(),
            pid,
        }
    }

    /// A forked child inherits the table but not the memory (mkwrite's
    /// is `MADV_DONTFORK`): it starts with nothing managed.
    fn forget_if_forked(&mut self) {
        let pid = std::process::id();
        if self.pid == pid {
            return;
        }
        if !self.files.is_empty() {
            say(format_args!(
                "a forked child cannot use its parent's {} managed file mappings (they are not inherited)",
                self.files.len()
            ));
        }
        // The parent's mappings are not this process's to close.
        for (_, live) in std::mem::take(&mut self.files) {
            std::mem::forget(live.mapping);
        }
        self.fds.clear();
        marks::clear_all();
        self.pid = pid;
    }

    /// The mapping of the file behind `fd`, if it is managed.
    pub fn mapping_of_fd(&mut self, fd: c_int) -> Option<Arc<Mapping>> {
        let key = *self.fds.get(&fd)?;
        if key_of_fd(fd) != Some(key) {
            // Closed behind the interposer's back and reused for another file.
            self.drop_fd(fd);
            return None;
        }
        Some(self.files.get(&key)?.mapping.clone())
    }

    /// The mapping of the file `key`, if it is managed.
    pub fn mapping_of_key(&self, key: Key) -> Option<Arc<Mapping>> {
        Some(self.files.get(&key)?.mapping.clone())
    }

    /// The mapping holding `addr`, and `addr`'s offset in its file.
    pub fn mapping_at(&self, addr: usize) -> Option<(Arc<Mapping>, u64)> {
        let live = self.files.values().find(|l| l.holds(addr))?;
        Some((live.mapping.clone(), (addr - live.base) as u64))
    }

    /// Records that `fd` names the managed file `key`.
    pub fn add_fd(&mut self, fd: c_int, key: Key) {
        if self.files.contains_key(&key) {
            self.fds.insert(fd, key);
            marks::mark_fd(fd, true);
        }
    }

    /// Forgets `fd` (closed or about to be replaced).
    pub fn drop_fd(&mut self, fd: c_int) {
        self.fds.remove(&fd);
        marks::mark_fd(fd, false);
    }

    /// Forgets the descriptors in `first..=last`.
    pub fn drop_fds(&mut self, first: c_int, last: c_int) {
        let gone: Vec<c_int> = self.fds.range(first..=last).map(|(fd, _)| *fd).collect();
        gone.into_iter().for_each(|fd| self.drop_fd(fd));
    }

    /// The key `fd` is recorded under.
    pub fn key_of(&self, fd: c_int) -> Option<Key> {
        self.fds.get(&fd).copied()
    }

    /// The program's `mmap(fd, off, len)` of the managed file `key` at
    /// `path`: an address inside the file's one mkwrite mapping.
    pub fn map(&mut self, fd: c_int, key: Key, path: &Path, off: u64, len: usize) -> Result<usize, c_int> {
        let end = off.checked_add(len as u64).ok_or(libc::EINVAL)?;
        if let std::collections::btree_map::Entry::Vacant(entry) = self.files.entry(key) {
            // The inode is published first, so a descriptor another thread
            // opens from now on waits for this table and is adopted; those
            // open already are found before mkwrite opens its own (which
            // must stay unrouted).
            let Some(slot) = marks::claim_slot(key.0, key.1) else {
                say(format_args!(
                    "{} files are managed already; {} is not",
                    marks::SLOTS,
                    path.display()
                ));
                return Err(libc::ENFILE);
            };
            let fds = descriptors_of(key);
            match open(fd, path, end, slot) {
                Ok(live) => entry.insert(live),
                Err(e) => {
                    marks::free_slot(slot);
                    return Err(e);
                }
            };
            fds.into_iter().for_each(|fd| self.add_fd(fd, key));
        }
        self.add_fd(fd, key);
        let live = self.files.get_mut(&key).expect("inserted above");
        if end > live.capacity as u64 {
            say(format_args!(
                "{}: a mapping up to byte {end} is past the {} bytes reserved for the file (raise MKWRITE_PRELOAD_CAPACITY)",
                live.path.display(),
                live.capacity
            ));
            return Err(libc::ENOMEM);
        }
        let start = live.base + off as usize;
        live.views.push(pages(start, len));
        Ok(start)
    }

    /// The program's `mremap(addr, len, new_len)` of a whole view: the
    /// view grows or shrinks in place (the file's memory never moves), so
    /// the address stays. `None` if `[addr, addr + len)` is not one view.
    pub fn remap(&mut self, addr: usize, len: usize, new_len: usize) -> Option<Result<usize, c_int>> {
        let old = pages(addr, len);
        let live = self.files.values_mut().find(|l| l.holds(addr))?;
        let at = live.views.iter().position(|v| *v == old)?;
        if (addr - live.base).saturating_add(new_len) > live.capacity {
            return Some(Err(libc::ENOMEM));
        }
        live.views[at] = pages(addr, new_len);
        Some(Ok(addr))
    }

    /// The program's `munmap(addr, len)`; false if it touches no managed
    /// file. A file whose last view goes is flushed and closed.
    pub fn unmap(&mut self, addr: usize, len: usize) -> bool {
        let gone = pages(addr, len);
        let mut emptied = Vec::new();
        let mut ours = false;
        for (key, live) in &mut self.files {
            if !(live.base < gone.end && gone.start < live.base + live.capacity) {
                continue;
            }
            ours = true;
            // Two `mmap`s of the same range share an address: unmapping
            // it ends one of them, not both.
            match live.views.iter().position(|v| *v == gone) {
                Some(at) => {
                    live.views.swap_remove(at);
                }
                None => live.views = live.views.iter().flat_map(|v| subtract(v, &gone)).collect(),
            }
            if live.views.is_empty() {
                emptied.push(*key);
            }
        }
        for key in emptied {
            self.retire(key);
        }
        ours
    }

    /// Flushes and closes a file nothing maps any more. If the flush fails
    /// it stays managed (its data only in memory) and the next flush or
    /// exit tries again.
    ///
    /// A routed call still holding the mapping (a `write(2)` on another
    /// thread) keeps it managed, with no views, until exit: closing it
    /// under that call could lose its bytes.
    fn retire(&mut self, key: Key) {
        let live = &self.files[&key];
        if Arc::strong_count(&live.mapping) > 1 {
            return;
        }
        if let Err(e) = live.mapping.flush() {
            say(format_args!(
                "{}: flush after the last munmap failed ({e}); the data stays in memory, the next fsync, msync or exit writes it",
                live.path.display()
            ));
            return;
        }
        report(live);
        let live = self.files.remove(&key).expect("present");
        marks::free_slot(live.slot);
        let fds: Vec<c_int> = self
            .fds
            .iter()
            .filter(|(_, k)| **k == key)
            .map(|(fd, _)| *fd)
            .collect();
        fds.into_iter().for_each(|fd| self.drop_fd(fd));
    }

    /// At exit: every managed file written out, as the kernel's writeback
    /// would (mkwrite's memory dies with the process).
    pub fn flush_all(&mut self) {
        for live in self.files.values() {
            if let Err(e) = live.mapping.flush() {
                say(format_args!("{}: flush at exit failed: {e}", live.path.display()));
            }
            report(live);
        }
    }
}

/// Every open descriptor of `key`.
fn descriptors_of(key: Key) -> Vec<c_int> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<c_int>().ok())
        .filter(|&fd| key_of_fd(fd) == Some(key))
        .collect()
}

/// `v` less `gone`: nothing, one range or two.
fn subtract(v: &Range<usize>, gone: &Range<usize>) -> Vec<Range<usize>> {
    if gone.end <= v.start || v.end <= gone.start {
        return vec![v.clone()];
    }
    [v.start..gone.start, gone.end..v.end]
        .into_iter()
        .filter(|r| r.start < r.end)
        .collect()
}

/// Opens the file behind `fd` (named `path` in messages) as a mkwrite
/// mapping able to hold bytes up to `end`, published in `slot`. It opens
/// `/proc/self/fd/<fd>`, the program's own file even if renamed over or
/// unlinked since. The capacity leaves the file room to double.
fn open(fd: c_int, path: &Path, end: u64, slot: usize) -> Result<Live, c_int> {
    let config = config();
    let own = PathBuf::from(format!("/proc/self/fd/{fd}"));
    let page = crate::page_size() as u64;
    let file_len = std::fs::metadata(&own)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?
        .len();
    let capacity = config
        .capacity
        .max(end.saturating_mul(2))
        .max(file_len.saturating_mul(2))
        .div_ceil(page)
        * page;
    let mut options = MappingOptions::new();
    options.capacity(capacity);
    if config.in_thread {
        options.delivery(Delivery::InThread);
    }
    if config.kernel_dirty {
        options.dirty_tracking(DirtyTracking::Kernel);
    }
    if config.wait_when_full {
        // Retried every 100 ms at most: space freed by anyone (another
        // process deleting a file) lets the write go on.
        options.on_full(OnFull::callback(|_| FullAction::Retry));
    }
    let cannot = |e: mkwrite::Error| {
        say(format_args!("cannot manage {}: {e}", path.display()));
        e.errno()
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&own)
        .map_err(|e| cannot(e.into()))?;
    // The store is named by the file's path (its directory is what a new
    // length makes it sync), not by /proc/self/fd.
    let mut store = FileStore::from_file(file, Some(path.to_path_buf())).map_err(cannot)?;
    if let Some(block) = config.block_size {
        store = store.with_block_size(block).map_err(cannot)?;
    } else if config.kernel_dirty && store.block_size() < page {
        // Kernel dirty tracking needs blocks of a page or more; a smaller
        // filesystem block still serves (allocations are a page at a time).
        store = store.with_block_size(page).map_err(cannot)?;
    }
    let mapping = options.map_store(store).map_err(cannot)?;
    let base = mapping.as_ptr() as usize;
    marks::publish_range(slot, base, base + capacity as usize);
    Ok(Live {
        path: path.to_path_buf(),
        mapping: Arc::new(mapping),
        base,
        capacity: capacity as usize,
        views: Vec::new(),
        slot,
    })
}

/// The file's statistics on stderr, when asked for.
fn report(live: &Live) {
    if config().stats {
        say(format_args!(
            "{}: {:?}",
            live.path.display(),
            live.mapping.stats()
        ));
    }
}
