//! `pager demo`: a store that fills up after a few MiB, written through the
//! mapping until a write fails at the fault; then the proof that every byte
//! accepted before it is on disk, and the tail zeroing when EOF moves up.

use mkwrite::{FileStore, Mapping, MappingOptions, QuotaStore, Stats, Store};

use super::report::{Failure, Out, outln};
use super::setup::origin_text;

const QUOTA: u64 = 4 << 20;
const CHUNK: usize = 256 << 10;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) | 1).collect()
}

pub fn run() -> Result<(), Failure> {
    let mut out = Out::new();
    if demo(&mut out)? {
        Ok(())
    } else {
        outln!(out, "\nA check failed: see above.")?;
        Err(Failure::Other("a demo check failed (see the output)".into()))
    }
}

fn check(out: &mut Out, ok: bool, what: &str) -> Result<bool, Failure> {
    outln!(out, "  {} {what}", if ok { "ok  " } else { "FAIL" })?;
    Ok(ok)
}

fn demo(out: &mut Out) -> Result<bool, Failure> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("demo.dat");
    let store = FileStore::create(&path)?.with_block_size(1024)?;
    store.set_len(16 << 20)?;
    let store = QuotaStore::new(store, QUOTA / 1024)?;
    let mut map = MappingOptions::new().capacity(32 << 20).map_store(store)?;
    outln!(
        out,
        "mkwrite demo: a 16 MiB sparse file in {}, 1 KiB blocks,",
        dir.path().display()
    )?;
    outln!(
        out,
        "the store may hold {} MiB. Writing {} KiB at a time through the mapping.",
        QUOTA >> 20,
        CHUNK >> 10
    )?;
    outln!(out, "userfaultfd: {}\n", origin_text(map.userfaultfd_origin()))?;

    let data = pattern(16 << 20);
    // The first 2 MiB as plain memory: each first write to a page faults and allocates.
    let raw = 2 << 20;
    map.as_mut_slice()[..raw].copy_from_slice(&data[..raw]);
    outln!(
        out,
        "  wrote {} MiB as plain memory (each page's first write faulted and allocated)",
        raw >> 20
    )?;
    let mut offset = raw;
    let (accepted, failure) = loop {
        match map.write(offset as u64, &data[offset..offset + CHUNK]) {
            Ok(()) => offset += CHUNK,
            Err(e) => break (offset + e.done, e),
        }
    };
    outln!(
        out,
        "  then checked writes: {accepted} bytes ({} MiB) accepted in all",
        accepted >> 20
    )?;
    outln!(
        out,
        "  the write of {} KiB at offset {offset} FAILED AT THE FAULT after {} bytes:\n    {}\n",
        CHUNK >> 10,
        failure.done,
        failure.error
    )?;
    let mut ok = check(
        out,
        failure.error.is_full(),
        "the failure is a full store, reported to the writer",
    )?;
    map.flush()?;
    let on_disk = std::fs::read(&path)?;
    ok &= check(
        out,
        on_disk[..accepted] == data[..accepted],
        &format!("all {accepted} accepted bytes are on disk"),
    )?;
    ok &= check(
        out,
        on_disk[accepted..].iter().all(|&b| b == 0),
        "nothing past the failed write reached the file",
    )?;
    let stats = map.stats();
    map.close()?;

    outln!(
        out,
        "\nGrowing a file across a block-smaller-than-page boundary (seed 000):"
    )?;
    ok &= tail_zeroing(out, dir.path())?;
    outln!(out, "")?;
    print_stats(out, &stats)?;
    let verdict = if ok {
        "Every check held."
    } else {
        "Some check failed."
    };
    outln!(out, "\n{verdict}")?;
    Ok(ok)
}

/// EOF at 1024 in a 4 KiB page; bytes written past it must read as zero once EOF moves up.
fn tail_zeroing(out: &mut Out, dir: &std::path::Path) -> Result<bool, Failure> {
    let path = dir.join("tail.dat");
    let store = FileStore::create(&path)?.with_block_size(1024)?;
    store.set_len(1024)?;
    let map: Mapping = MappingOptions::new().capacity(1 << 20).map_store(store)?;
    map.write(0, &[b'x'; 1024])?;
    map.write(1024, &[b'y'; 100])?;
    outln!(
        out,
        "  EOF 1024; wrote 'y' x100 past EOF at 1024 (inside the page: accepted, as mmap does)"
    )?;
    map.set_len(10_000)?;
    map.write(2048, &[b'z'; 10])?;
    outln!(out, "  set_len(10000); wrote 'z' x10 at 2048; flush")?;
    map.close()?;
    let file = std::fs::read(&path)?;
    let mut ok = check(
        out,
        file[1024..1124].iter().all(|&b| b == 0),
        "the 'y's were zeroed when EOF moved up",
    )?;
    ok &= check(
        out,
        file[..1024].iter().all(|&b| b == b'x') && &file[2048..2058] == b"zzzzzzzzzz",
        "the file data is intact",
    )?;
    Ok(ok)
}

pub fn print_stats(out: &mut Out, s: &Stats) -> Result<(), Failure> {
    let rows = [
        ("faults: missing, read", s.faults_missing_read.to_string()),
        ("faults: missing, write", s.faults_missing_write.to_string()),
        ("faults: write-protect", s.faults_write_protect.to_string()),
        ("pages prepared by checked calls", s.pages_prepared.to_string()),
        ("blocks allocated", s.allocations.to_string()),
        ("allocation failures", s.allocation_failures.to_string()),
        ("flushes", s.flushes.to_string()),
        ("bytes flushed", s.bytes_flushed.to_string()),
        ("time in the fault handler", format!("{:.3?}", s.handler_time)),
    ];
    outln!(out, "  {:<34} {:>12}", "stat", "value")?;
    outln!(out, "  {:-<34} {:->12}", "", "")?;
    for (k, v) in rows {
        outln!(out, "  {k:<34} {v:>12}")?;
    }
    Ok(())
}
