//! Bad input and hostile conditions: every public call with invalid
//! arguments, from a table (each gets its typed error, nothing panics, the
//! mapping stays usable), and a file that another process truncates or
//! extends underneath the mapping. (Userfaultfd refused to an unprivileged
//! user is in `processes.rs`: it needs a child process.)

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;

use common::{Mount, pattern, read_file};
use mkwrite::{Error, Mapping, MappingOptions, MemStore, Store};

const CAPACITY: u64 = 64 << 10;
const EOF: u64 = 10_000;

type Call = fn(&Mapping) -> Result<(), Error>;

fn out_of_range(e: &Error) -> bool {
    matches!(e, Error::OutOfRange { .. } | Error::BeyondCapacity { .. })
}

/// Every public call that takes an offset, a length or a size, with the
/// ways to get it wrong.
const CASES: &[(&str, Call)] = &[
    ("write past the capacity", |m| {
        m.write(CAPACITY - 10, &[1; 20]).map_err(|e| e.error)
    }),
    ("write overflowing u64", |m| {
        m.write(u64::MAX - 5, &[1; 20]).map_err(|e| e.error)
    }),
    ("write to a page wholly past EOF", |m| {
        m.write(EOF + 8192, &[1; 8]).map_err(|e| e.error)
    }),
    ("read past the capacity", |m| {
        m.read(CAPACITY, &mut [0; 1]).map_err(|e| e.error)
    }),
    ("read overflowing u64", |m| {
        m.read(u64::MAX, &mut [0; 2]).map_err(|e| e.error)
    }),
    ("read of a page wholly past EOF", |m| {
        m.read(EOF + 8192, &mut [0; 8]).map_err(|e| e.error)
    }),
    ("reserve past EOF", |m| {
        m.reserve(EOF - 10, 20).map_err(|e| e.error)
    }),
    ("reserve overflowing u64", |m| {
        m.reserve(u64::MAX, 2).map_err(|e| e.error)
    }),
    ("set_len past the capacity", |m| m.set_len(CAPACITY + 1)),
    ("set_len to u64::MAX", |m| m.set_len(u64::MAX)),
    ("punch_hole past the capacity", |m| m.punch_hole(0, CAPACITY + 1)),
    ("punch_hole overflowing u64", |m| m.punch_hole(u64::MAX, 2)),
    ("flush_range past the capacity", |m| m.flush_range(CAPACITY, 1)),
    ("flush_range overflowing u64", |m| m.flush_range(1, u64::MAX)),
];

#[test]
fn every_call_with_bad_arguments_gets_a_typed_error_and_the_mapping_stays_usable() {
    let store = MemStore::new(1024, 1024).unwrap();
    store.set_len(EOF).unwrap();
    let map = MappingOptions::new().capacity(CAPACITY).map_store(store).unwrap();
    map.write(0, &pattern(1, EOF as usize)).unwrap();
    let mut model = pattern(1, EOF as usize);
    for (i, (name, call)) in CASES.iter().enumerate() {
        let result =
            catch_unwind(AssertUnwindSafe(|| call(&map))).unwrap_or_else(|_| panic!("{name}: panicked"));
        let error = result.expect_err(name);
        assert!(out_of_range(&error), "{name}: {error:?}");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{name}");
        // Still usable: nothing changed, and a write, a read and a flush work.
        assert_eq!(map.len(), EOF, "{name}: the length moved");
        let bytes = pattern(i as u8, 100);
        map.write(i as u64 * 100, &bytes).unwrap();
        model[i * 100..i * 100 + 100].copy_from_slice(&bytes);
        let mut back = vec![0; EOF as usize];
        map.read(0, &mut back).unwrap();
        assert!(back == model, "{name}: the contents changed");
        map.flush().unwrap();
        map.check_invariants().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn bad_options_get_typed_errors() {
    let store = MemStore::new(4096, 4).unwrap();
    store.set_len(1 << 20).unwrap();
    let below = MappingOptions::new().capacity(4096).map_store(store).unwrap_err();
    assert!(matches!(below, Error::CapacityBelowLength { .. }), "{below:?}");
    for bad in [0, 3000, 1 << 30] {
        let store = MemStore::new(4096, 4).unwrap();
        let err = MappingOptions::new()
            .block_size(bad)
            .map_store(store)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidBlockSize(b) if b == bad), "{err:?}");
    }
}

/// A file 16 pages long, written and flushed through a mapping.
fn mapped_file(fs: &Mount) -> (std::path::PathBuf, Mapping) {
    let path = fs.path("shared");
    let map = common::kib_block_mapping(&path, 64 << 10);
    map.write(0, &pattern(7, 64 << 10)).unwrap();
    map.flush().unwrap();
    (path, map)
}

fn truncate(path: &std::path::Path, len: u64) {
    let status = Command::new("truncate")
        .arg("-s")
        .arg(len.to_string())
        .arg(path)
        .status();
    assert!(status.unwrap().success());
}

#[test]
fn a_file_truncated_underneath_is_reported_and_never_resurrected() {
    let fs = Mount::ext4(32 << 20, 1024);
    let (path, map) = mapped_file(&fs);
    truncate(&path, 4096);
    // A write in memory is accepted; the flush refuses to write it into the
    // shorter file, which keeps the length the other process gave it.
    map.write(32 << 10, b"after the truncate").unwrap();
    let err = map.flush().unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthChanged {
                expected: 65536,
                found: 4096
            }
        ),
        "{err:?}"
    );
    assert_eq!(read_file(&path).len(), 4096, "nothing was resurrected");
    // A page that must be read again from the store: an error, not zeros.
    map.evict().unwrap();
    let err = map.read(40 << 10, &mut [0; 8]).unwrap_err();
    assert!(matches!(err.error, Error::LengthChanged { .. }), "{err:?}");
    // Recovery as documented: adopt a length, reread clean pages, flush.
    map.set_len(64 << 10).unwrap();
    map.evict().unwrap();
    map.flush().unwrap();
    let file = read_file(&path);
    assert_eq!(file.len(), 64 << 10);
    assert_eq!(
        &file[..4096],
        &pattern(7, 4096)[..],
        "what the other process kept"
    );
    assert_eq!(
        &file[32 << 10..(32 << 10) + 18],
        b"after the truncate",
        "the dirty write"
    );
    assert!(
        file[4096..32 << 10].iter().all(|&b| b == 0),
        "what it cut stays cut"
    );
    let mut mapped = vec![0; file.len()];
    map.read(0, &mut mapped).unwrap();
    assert!(mapped == file, "the mapping rereads what the file holds");
    map.close().unwrap();
}

#[test]
fn a_file_extended_underneath_is_reported() {
    let fs = Mount::tmpfs(8 << 20);
    let (path, map) = mapped_file(&fs);
    truncate(&path, 128 << 10);
    map.write(0, b"x").unwrap();
    let err = map.flush().unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthChanged {
                expected: 65536,
                found: 131072
            }
        ),
        "{err:?}"
    );
    map.set_len(64 << 10).unwrap();
    map.flush().unwrap();
    let file = read_file(&path);
    assert_eq!(file.len(), 64 << 10);
    assert_eq!(file[0], b'x');
}
