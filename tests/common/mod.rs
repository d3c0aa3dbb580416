//! Helpers shared by the integration tests: real mounts to get a real ENOSPC
//! and the real kernel's behaviour. CI runs as root; these fail (not skip)
//! without it, so a missing privilege can never pass for a green run.
#![allow(dead_code)]

pub mod bounded;
pub mod injector;
pub mod mount;
pub mod nbd_server;
pub mod pager;
pub mod strace;

#[allow(unused_imports)]
pub use mount::{Mount, effective_uid, remount_read_only};

use std::path::Path;

pub const BLOCK_SIZES: [u64; 5] = [512, 1024, 4096, 16384, 65536];

/// The file at `path` (created if missing), mapped with 1 KiB blocks and
/// 1 MiB of capacity, and set to `len` bytes.
pub fn kib_block_mapping(path: &Path, len: u64) -> mkwrite::Mapping {
    let map = mkwrite::MappingOptions::new()
        .capacity(1 << 20)
        .block_size(1024)
        .create(true)
        .open(path)
        .unwrap();
    map.set_len(len).unwrap();
    map
}

/// Writes `pattern(7, ..)` over the file in chunks aligned to neither pages
/// nor blocks until the store is full; returns the bytes accepted. The
/// error that stops it must satisfy `expect` (e.g. [`is_nospace`]).
pub fn fill_until_full(map: &mkwrite::Mapping, expect: fn(&mkwrite::Error) -> bool) -> u64 {
    const CHUNK: usize = 48 * 1024 + 100;
    let data = pattern(7, map.len() as usize);
    let mut offset = 0usize;
    loop {
        let end = (offset + CHUNK).min(data.len());
        assert!(offset < end, "the store never filled up");
        match map.write(offset as u64, &data[offset..end]) {
            Ok(()) => offset = end,
            Err(e) => {
                assert!(expect(&e.error), "unexpected error: {e}");
                return (offset + e.done) as u64;
            }
        }
    }
}

/// After [`fill_until_full`] accepted `accepted` bytes: they end at a page
/// or block boundary, the mapping stays usable (rewriting them needs no new
/// blocks), flush and close succeed, and the file, as `file` reads it after
/// the close, holds exactly the accepted bytes followed by zeros. `what`
/// names the case in a failure.
pub fn check_accepted(map: mkwrite::Mapping, accepted: u64, what: &str, file: impl FnOnce() -> Vec<u8>) {
    let unit = map.page_size().max(map.block_size());
    assert_eq!(
        accepted % unit,
        0,
        "{what}: a write fails at a whole page/block boundary"
    );
    assert!(accepted > 0, "{what}: nothing was accepted");
    map.write(0, &pattern(7, 4096)).unwrap();
    map.flush().unwrap();
    assert!(
        map.stats().allocation_failures >= 1,
        "{what}: no allocation failed"
    );
    map.check_invariants().unwrap();
    map.close().unwrap();
    let file = file();
    let expected = pattern(7, file.len());
    let accepted = accepted as usize;
    assert!(
        file[..accepted] == expected[..accepted],
        "{what}: accepted bytes must all be in the file"
    );
    assert!(
        file[accepted..].iter().all(|&b| b == 0),
        "{what}: nothing past the failure may reach the file"
    );
}

/// No space: `Error::NoSpace`, of kind `StorageFull`.
pub fn is_nospace(e: &mkwrite::Error) -> bool {
    matches!(e, mkwrite::Error::NoSpace(_)) && e.kind() == std::io::ErrorKind::StorageFull
}

/// Over quota: `Error::Quota`, of kind `QuotaExceeded`.
pub fn is_quota(e: &mkwrite::Error) -> bool {
    matches!(e, mkwrite::Error::Quota(_)) && e.kind() == std::io::ErrorKind::QuotaExceeded
}

pub fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A byte pattern that differs per offset and seed, so misplaced bytes show.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// The process's anonymous resident memory (`RssAnon`), in bytes.
pub fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("RssAnon:")).unwrap();
    line.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

/// Waits until `done`, polling each millisecond; fails the test, naming
/// `what`, after `limit` (the case's own time limit is the backstop).
pub fn wait_for(what: &str, limit: std::time::Duration, done: impl Fn() -> bool) {
    let began = std::time::Instant::now();
    while !done() {
        assert!(began.elapsed() < limit, "waited too long for {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
