//! `PAGEMAP_SCAN` (Linux 6.7+, `Documentation/admin-guide/mm/pagemap.rst`):
//! which pages of a range were written since they were last write-protected
//! by a userfaultfd with `UFFD_FEATURE_WP_ASYNC`, protecting them again in
//! the same call. Written by hand: neither libc nor nix defines the ioctl.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported.
const WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless the range is registered with a
/// `WP_ASYNC` userfaultfd (otherwise "written" would mean nothing).
const CHECK_WPASYNC: u64 = 1 << 1;
/// `PAGE_IS_WRITTEN`: not write-protected by the userfaultfd. Absent pages
/// without a write-protect marker count as written too.
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `struct pm_scan_arg`.
#[repr(C)]
struct ScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const _: () = assert!(size_of::<ScanArg>() == 96);
const _: () = assert!(size_of::<PageRegion>() == 24);

const PAGEMAP_SCAN: libc::c_ulong =
    nix::request_code_readwrite!(b'f', 16, size_of::<ScanArg>()) as libc::c_ulong;

/// Regions one call reports at most; a longer answer takes more calls.
const REGIONS_PER_CALL: usize = 256;

/// The process's `/proc/self/pagemap`, opened once.
fn pagemap() -> io::Result<Arc<File>> {
    static PAGEMAP: super::OwnFile = super::OwnFile::new();
    PAGEMAP.get(|| File::open("/proc/self/pagemap"))
}

/// Appends to `out` the byte ranges of `[start, end)` written since they were
/// last protected, and write-protects them again (atomically per page: a
/// write after the scan marks its page written anew). The range must be
/// registered with a `WP_ASYNC` userfaultfd.
/// (`PAGEMAP_SCAN` came in the same release as `WP_ASYNC`, 6.7.)
pub(crate) fn take_written(start: u64, end: u64, out: &mut Vec<Range<u64>>) -> io::Result<()> {
    let file = pagemap()?;
    let mut regions = [PageRegion::default(); REGIONS_PER_CALL];
    let mut at = start;
    while at < end {
        let mut arg = ScanArg {
            size: size_of::<ScanArg>() as u64,
            flags: WP_MATCHING | CHECK_WPASYNC,
            start: at,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: REGIONS_PER_CALL as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: PAGE_IS_WRITTEN,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_WRITTEN,
        };
        // SAFETY: `arg` is a `pm_scan_arg` of the size the request encodes,
        // and `vec` points at `vec_len` writable `page_region`s that outlive
        // the call. The kernel only reads and protects page tables of our
        // own address space in `[start, end)`; no memory of ours changes
        // but `arg` and `regions`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut ScanArg) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        out.extend(regions[..rc as usize].iter().map(|r| r.start..r.end));
        // The walk stops early when `regions` is full; go on from there.
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(())
}
