//! mkwrite for C: a mapping behind an opaque pointer, errors as `errno`
//! values with a message per thread, and no Rust panic across the boundary
//! (each call catches one and fails with `EIO`). The header
//! `include/mkwrite.h` is generated from this file by cbindgen (`build.rs`)
//! and checked in; a test keeps the two equal.
//!
//! Every function that can fail returns 0 on success or an `errno` value
//! (`ENOSPC`, `EDQUOT`, `EINVAL`, ...), and sets the calling thread's
//! message, read with [`mkw_last_error`]. Checked reads and writes also say
//! how many bytes landed before a failure. A mapping may be used from any
//! number of threads at once, except [`mkw_close`], which ends it.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use mkwrite::{Delivery, DirtyTracking, Error, Mapping, MappingOptions, OnFull};

/// A mapping (opaque). Made by [`mkw_open`], ended by [`mkw_close`].
pub struct MkwMapping(Mapping);

/// What [`mkw_open`] needs beside the path. Start from [`mkw_options_default`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MkwOptions {
    /// How far the file may grow without remapping, in bytes; 0: mkwrite's
    /// default (1 GiB or the file's length).
    pub capacity: u64,
    /// The block size in which first writes allocate; 0: the filesystem's.
    pub block_size: u64,
    /// What a write to a full store does: [`MKW_ON_FULL_SIGBUS`] or [`MKW_ON_FULL_WAIT`].
    pub on_full: c_int,
    /// [`MKW_DELIVERY_HANDLER_THREAD`] or [`MKW_DELIVERY_IN_THREAD`].
    pub delivery: c_int,
    /// Nonzero: create the file if it does not exist.
    pub create: c_int,
    /// Nonzero: map for reading only.
    pub read_only: c_int,
    /// [`MKW_DIRTY_TRACKING_FAULTS`] or [`MKW_DIRTY_TRACKING_KERNEL`].
    pub dirty_tracking: c_int,
}

/// A store to a full store raises SIGBUS (as the kernel's mmap would, but at
/// the write, with nothing lost).
pub const MKW_ON_FULL_SIGBUS: c_int = 0;
/// A store to a full store waits until space is freed.
pub const MKW_ON_FULL_WAIT: c_int = 1;
/// Faults resolved by mkwrite's threads: system calls on the mapping work
/// as with mmap.
pub const MKW_DELIVERY_HANDLER_THREAD: c_int = 0;
/// Faults resolved in the faulting thread (faster; a system call on a page
/// not ready fails with `EFAULT`: [`mkw_populate`] first).
pub const MKW_DELIVERY_IN_THREAD: c_int = 1;
/// Every first write to a page after a flush faults, and the fault marks it dirty.
pub const MKW_DIRTY_TRACKING_FAULTS: c_int = 0;
/// The kernel notes writes to pages a flush cleaned (no fault) and the next
/// flush asks it which were written (Linux 6.7+). Reading a hole allocates
/// its blocks; blocks smaller than a page are refused (`ENOTSUP`).
pub const MKW_DIRTY_TRACKING_KERNEL: c_int = 1;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_message(message: String) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
}

/// Runs `call`, turning its error or a panic into an errno and a message.
fn run(call: impl FnOnce() -> Result<(), Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            set_message(e.to_string());
            e.errno()
        }
        Err(_) => {
            set_message("mkwrite panicked (a bug): the call failed".into());
            libc::EIO
        }
    }
}

/// As [`run`], for a checked copy that reports how far it got in `done`.
fn run_partial(
    done: *mut usize,
    call: impl FnOnce() -> Result<(), mkwrite::PartialError>,
    len: usize,
) -> c_int {
    let (landed, rc) = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(())) => (len, 0),
        Ok(Err(e)) => {
            set_message(e.to_string());
            (e.done, e.error.errno())
        }
        Err(_) => {
            set_message("mkwrite panicked (a bug): the call failed".into());
            (0, libc::EIO)
        }
    };
    if !done.is_null() {
        // SAFETY: the caller passed a valid `size_t *` or NULL (checked).
        unsafe { *done = landed };
    }
    rc
}

/// Options as mkwrite's defaults: capacity and block size chosen for the
/// file, SIGBUS on a full store, faults resolved by mkwrite's threads,
/// dirty pages tracked by faults, the file must exist, read-write.
#[unsafe(no_mangle)]
pub extern "C" fn mkw_options_default() -> MkwOptions {
    MkwOptions {
        capacity: 0,
        block_size: 0,
        on_full: MKW_ON_FULL_SIGBUS,
        delivery: MKW_DELIVERY_HANDLER_THREAD,
        create: 0,
        read_only: 0,
        dirty_tracking: MKW_DIRTY_TRACKING_FAULTS,
    }
}

/// Maps the file at `path`. Returns the mapping, or NULL with `*error` (if
/// not NULL) set to an errno value and the thread's message set.
///
/// # Safety
///
/// `path` is a NUL-terminated string; `options` points to options or is
/// NULL (the defaults); `error` is a valid `int *` or NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_open(
    path: *const c_char,
    options: *const MkwOptions,
    error: *mut c_int,
) -> *mut MkwMapping {
    let mut opened = None;
    let rc = run(|| {
        if path.is_null() {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        // SAFETY: the caller passes a NUL-terminated string (checked non-null).
        let path = unsafe { CStr::from_ptr(path) };
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
        // SAFETY: the caller passes valid options or NULL.
        let o = unsafe { options.as_ref() }
            .copied()
            .unwrap_or_else(|| mkw_options_default());
        let mut opts = MappingOptions::new();
        if o.capacity != 0 {
            opts.capacity(o.capacity);
        }
        if o.block_size != 0 {
            opts.block_size(o.block_size);
        }
        opts.on_full(match o.on_full {
            MKW_ON_FULL_WAIT => OnFull::Wait,
            _ => OnFull::Sigbus,
        });
        opts.delivery(match o.delivery {
            MKW_DELIVERY_IN_THREAD => Delivery::InThread,
            _ => Delivery::HandlerThread,
        });
        opts.dirty_tracking(match o.dirty_tracking {
            MKW_DIRTY_TRACKING_KERNEL => DirtyTracking::Kernel,
            _ => DirtyTracking::Faults,
        });
        opts.create(o.create != 0).read_only(o.read_only != 0);
        opened = Some(opts.open(path)?);
        Ok(())
    });
    if !error.is_null() {
        // SAFETY: the caller passed a valid `int *` (checked non-null).
        unsafe { *error = rc };
    }
    opened.map_or(std::ptr::null_mut(), |map| {
        Box::into_raw(Box::new(MkwMapping(map)))
    })
}

/// Borrows the mapping behind a C pointer.
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
unsafe fn mapping<'a>(map: *const MkwMapping) -> &'a Mapping {
    // SAFETY: per this function's contract.
    unsafe { &(*map).0 }
}

/// Flushes, then ends the mapping (its memory is unmapped); returns the
/// flush's error, if any. NULL is ignored.
///
/// # Safety
///
/// `map` came from [`mkw_open`], is not closed already, and no other thread
/// uses it or its memory any more.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_close(map: *mut MkwMapping) -> c_int {
    if map.is_null() {
        return 0;
    }
    // SAFETY: per the contract, this is the one owner, giving it back.
    let map = unsafe { Box::from_raw(map) };
    run(move || map.0.close())
}

/// The mapping's memory: loads and stores through it behave as with
/// `mmap(MAP_SHARED)`, except that the first store to a clean page
/// allocates first (and fails at the store if the store is full).
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_ptr(map: *const MkwMapping) -> *mut u8 {
    // SAFETY: per this function's contract.
    unsafe { mapping(map) }.as_ptr()
}

/// The file's length (EOF).
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_len(map: *const MkwMapping) -> u64 {
    // SAFETY: per this function's contract.
    unsafe { mapping(map) }.len()
}

/// How far the file may grow: the memory at [`mkw_ptr`] is this long.
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_capacity(map: *const MkwMapping) -> u64 {
    // SAFETY: per this function's contract.
    unsafe { mapping(map) }.capacity()
}

/// Moves EOF (zeroing what lies past the old end, freeing what lies past the new one).
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_set_len(map: *const MkwMapping, len: u64) -> c_int {
    // SAFETY: per this function's contract.
    let map = unsafe { mapping(map) };
    run(|| map.set_len(len))
}

/// Writes every dirty page back and syncs the store.
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_flush(map: *const MkwMapping) -> c_int {
    // SAFETY: per this function's contract.
    let map = unsafe { mapping(map) };
    run(|| map.flush())
}

/// Writes back the dirty pages of `[offset, offset + len)` and syncs the store.
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_flush_range(map: *const MkwMapping, offset: u64, len: u64) -> c_int {
    // SAFETY: per this function's contract.
    let map = unsafe { mapping(map) };
    run(|| map.flush_range(offset, len))
}

/// Starts a flush in the background; its error is reported by the next
/// [`mkw_flush`] (or [`mkw_close`]), which also waits for it.
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_flush_async(map: *const MkwMapping) -> c_int {
    // SAFETY: per this function's contract.
    let map = unsafe { mapping(map) };
    run(|| map.flush_async())
}

/// Copies `len` bytes from `data` into the file at `offset`, allocating
/// first; never raises SIGBUS. `*done` (if not NULL) gets the bytes that
/// landed, also on failure (a full store stops the copy at the page it
/// could not allocate).
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed; `data` holds `len`
/// readable bytes; `done` is a valid `size_t *` or NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_write(
    map: *const MkwMapping,
    offset: u64,
    data: *const u8,
    len: usize,
    done: *mut usize,
) -> c_int {
    // SAFETY: per this function's contract.
    let map = unsafe { mapping(map) };
    let data = match len {
        0 => &[][..],
        // SAFETY: the caller passes `len` readable bytes.
        _ => unsafe { std::slice::from_raw_parts(data, len) },
    };
    run_partial(done, || map.write(offset, data), len)
}

/// Copies `len` bytes of the file at `offset` into `buf` (below EOF only).
/// `*done` (if not NULL) gets the bytes copied.
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed; `buf` has room for
/// `len` bytes; `done` is a valid `size_t *` or NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_read(
    map: *const MkwMapping,
    offset: u64,
    buf: *mut u8,
    len: usize,
    done: *mut usize,
) -> c_int {
    // SAFETY: per this function's contract.
    let map = unsafe { mapping(map) };
    let buf = match len {
        0 => &mut [][..],
        // SAFETY: the caller passes room for `len` bytes.
        _ => unsafe { std::slice::from_raw_parts_mut(buf, len) },
    };
    run_partial(done, || map.read(offset, buf), len)
}

/// Frees the blocks of `[offset, offset + len)` (whole blocks; partial ones
/// are zeroed), as `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_punch_hole(map: *const MkwMapping, offset: u64, len: u64) -> c_int {
    // SAFETY: per this function's contract.
    let map = unsafe { mapping(map) };
    run(|| map.punch_hole(offset, len))
}

/// Allocates the blocks under `[offset, offset + len)` now, so later stores
/// there cannot fail for space. `*done` (if not NULL) gets the bytes reserved.
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed; `done` is a valid
/// `uint64_t *` or NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_reserve(map: *const MkwMapping, offset: u64, len: u64, done: *mut u64) -> c_int {
    // SAFETY: per this function's contract.
    let map = unsafe { mapping(map) };
    let mut landed = 0usize;
    let rc = run_partial(&mut landed, || map.reserve(offset, len), len as usize);
    if !done.is_null() {
        // SAFETY: the caller passed a valid `uint64_t *` (checked non-null).
        unsafe { *done = landed as u64 };
    }
    rc
}

/// Brings `[offset, offset + len)` into memory (for writing if `writing`,
/// which allocates), so system calls may touch it in any mode.
///
/// # Safety
///
/// `map` came from [`mkw_open`] and was not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkw_populate(
    map: *const MkwMapping,
    offset: u64,
    len: u64,
    writing: c_int,
) -> c_int {
    // SAFETY: per this function's contract.
    let map = unsafe { mapping(map) };
    run_partial(
        std::ptr::null_mut(),
        || map.populate(offset, len, writing != 0),
        len as usize,
    )
}

/// The calling thread's message for its last failed call ("" if none).
/// Valid until that thread's next call.
#[unsafe(no_mangle)]
pub extern "C" fn mkw_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}
