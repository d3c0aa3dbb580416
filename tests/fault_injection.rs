//! Fault injection: a store that fails its Nth call of one kind (allocate
//! with no space or over quota, write with EIO, sync with EIO), swept over
//! every call a workload makes. Each time: the failing operation reports
//! the error, nothing written before it is lost, a failed flush keeps the
//! data dirty so the next flush writes it, and the file ends equal to the
//! model.
//!
//! CI sweeps one workload; the long run sweeps one per block size:
//! `cargo test --release --test fault_injection -- --ignored`.

mod common;
mod fsx;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use common::injector::{Call, Fault, Injector};
use common::{BLOCK_SIZES, Mount, page_size};
use fsx::ops::{CAPACITY, Generator, Op, data};
use mkwrite::{Error, FileStore, FullAction, Mapping, MappingOptions, OnFull};

/// The workload: the differential generator's ops minus reopen (a close
/// whose flush fails drops the data by contract, so it is not swept).
fn workload(seed: u64, block: u64, ops: usize) -> Vec<Op> {
    let mut generator = Generator::new(seed, block, page_size());
    generator
        .sequence(ops)
        .into_iter()
        .filter(|op| *op != Op::Reopen)
        .collect()
}

/// One run of `ops` with `fault` injected; returns the injector for its counts.
fn run(dir: &Path, block: u64, ops: &[Op], fault: Option<(Fault, u64)>) -> Arc<Injector<FileStore>> {
    let path = dir.join("swept");
    let _ = std::fs::remove_file(&path);
    let store = FileStore::create(&path).unwrap().with_block_size(block).unwrap();
    let injector = Arc::new(Injector::new(store, fault));
    let raw_faults: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&raw_faults);
    let map = MappingOptions::new()
        .capacity(CAPACITY)
        .on_full(OnFull::callback(move |full| {
            // The raw write's report; the fault has cleared, so a retry succeeds.
            seen.lock().unwrap().push(format!("{:?}", full.error));
            FullAction::Retry
        }))
        .map_store(Arc::clone(&injector))
        .unwrap();
    let mut run = Run {
        map: &map,
        path: &path,
        model: Vec::new(),
        fault: fault.map(|(f, _)| f),
        reports: 0,
        page: page_size(),
    };
    for (at, &op) in ops.iter().enumerate() {
        let (fired_before, reports_before) = (injector.fired.load(Ordering::SeqCst), run.reports);
        run.apply(op)
            .unwrap_or_else(|e| panic!("{fault:?}: op {at} ({op}): {e}"));
        let fired_here = !fired_before && injector.fired.load(Ordering::SeqCst);
        if fired_here && run.reports == reports_before && matches!(op, Op::Reserve { .. }) {
            // Reserve retries a failed run block by block to count exactly
            // what it got; a fault that cleared is absorbed by that retry,
            // and the Ok is true: every block was allocated.
            run.reports += 1;
        }
    }
    // The last flush and the close may meet the fault too (the dry run counted
    // their calls): a failed flush is retried, and then the file must equal
    // the model.
    run.apply(Op::Flush)
        .unwrap_or_else(|e| panic!("{fault:?}: final flush: {e}"));
    let file = common::read_file(&path);
    assert!(file == run.model, "{fault:?}: the file differs from the model");
    let mut reports = run.reports;
    if let Err(error) = map.close() {
        assert!(
            fault.is_some_and(|(f, _)| f.reported_as(&error)),
            "{fault:?}: close: {error:?}"
        );
        reports += 1;
    }
    let raw_reports = raw_faults.lock().unwrap().clone();
    for report in &raw_reports {
        let expected = if fault.is_some_and(|(f, _)| f == Fault::Quota) {
            "Quota"
        } else {
            "NoSpace"
        };
        assert!(
            report.starts_with(expected),
            "{fault:?}: raw write reported {report}"
        );
    }
    let reports = reports + raw_reports.len();
    let fired = injector.fired.load(Ordering::SeqCst);
    assert_eq!(
        reports,
        usize::from(fired),
        "{fault:?}: fired {fired}, reported {reports} times"
    );
    injector
}

struct Run<'a> {
    map: &'a Mapping,
    path: &'a Path,
    /// The file as it must be: `[0, EOF)`.
    model: Vec<u8>,
    fault: Option<Fault>,
    /// Errors the checked calls returned, each checked against `fault`.
    reports: usize,
    page: u64,
}

impl Run<'_> {
    fn eof(&self) -> u64 {
        self.model.len() as u64
    }

    fn apply(&mut self, op: Op) -> Result<(), String> {
        let eof = self.eof();
        let Some(op) = op.clipped(eof, self.page) else {
            return Ok(());
        };
        match op {
            Op::Write {
                offset,
                len,
                seed,
                raw,
            } => {
                let bytes = data(seed, offset, len);
                let (landed, error) = if raw {
                    // SAFETY: `[offset, offset + len)` lies in the pages holding
                    // the file, inside the mapping; no reference to it exists.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            self.map.as_ptr().add(offset as usize),
                            bytes.len(),
                        )
                    };
                    (bytes.len(), None)
                } else {
                    match self.map.write(offset, &bytes) {
                        Ok(()) => (bytes.len(), None),
                        Err(partial) => (partial.done, Some(partial.error)),
                    }
                };
                let end = (offset + landed as u64).min(eof);
                if offset < end {
                    self.model[offset as usize..end as usize]
                        .copy_from_slice(&bytes[..(end - offset) as usize]);
                }
                if let Some(error) = error {
                    self.report(&error)?;
                }
            }
            Op::Read { offset, len, .. } => self.expect_range(offset, len)?,
            Op::SetLen { len, .. } => {
                self.map.set_len(len).map_err(|e| e.to_string())?;
                self.model.resize(len as usize, 0);
            }
            Op::Punch { offset, len } => {
                self.map.punch_hole(offset, len).map_err(|e| e.to_string())?;
                self.model[offset as usize..(offset + len) as usize].fill(0);
            }
            Op::Reserve { offset, len } => {
                if let Err(partial) = self.map.reserve(offset, len) {
                    self.report(&partial.error)?;
                }
            }
            Op::Flush => self.flush(self.map.flush())?,
            Op::FlushRange { offset, len } => self.flush(self.map.flush_range(offset, len))?,
            Op::Evict => self.map.evict().map_err(|e| e.to_string())?,
            Op::Reopen => unreachable!("not in the workload"),
        }
        Ok(())
    }

    /// A reported error must be the injected one, and nothing written before
    /// it may be lost.
    fn report(&mut self, error: &Error) -> Result<(), String> {
        if !self.fault.is_some_and(|f| f.reported_as(error)) {
            return Err(format!("unexpected error {error:?}"));
        }
        self.reports += 1;
        self.expect_range(0, self.eof())
    }

    /// A failed flush keeps the data dirty: the next flush (the fault has
    /// cleared) writes it, and the file then equals the model.
    fn flush(&mut self, result: mkwrite::Result<()>) -> Result<(), String> {
        if let Err(error) = result {
            self.report(&error)?;
            self.map
                .flush()
                .map_err(|e| format!("the flush after a failed one: {e}"))?;
            let file = std::fs::read(self.path).map_err(|e| e.to_string())?;
            if file != self.model {
                return Err("after a failed flush, the next one did not write everything".into());
            }
        }
        Ok(())
    }

    fn expect_range(&self, offset: u64, len: u64) -> Result<(), String> {
        let mut buf = vec![0; len as usize];
        self.map.read(offset, &mut buf).map_err(|e| e.to_string())?;
        let expected = &self.model[offset as usize..(offset + len) as usize];
        match buf.iter().zip(expected).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(i) => Err(format!(
                "byte {} lost: expected {:#04x}, found {:#04x}",
                offset + i as u64,
                expected[i],
                buf[i]
            )),
        }
    }
}

/// Sweeps every fault over every call of its kind that the workload makes.
fn sweep(dir: &Path, block: u64, seed: u64, ops: usize) -> u64 {
    let ops = workload(seed, block, ops);
    let dry = run(dir, block, &ops, None);
    let mut runs = 0;
    for fault in Fault::ALL {
        let calls = dry.calls(fault.call());
        assert!(
            calls > 0,
            "{fault:?}: the workload makes no {:?} call",
            fault.call()
        );
        for n in 0..calls {
            let injector = run(dir, block, &ops, Some((fault, n)));
            assert!(
                injector.fired.load(Ordering::SeqCst),
                "{fault:?} #{n} never fired"
            );
            runs += 1;
        }
    }
    println!(
        "block {block}, seed {seed}: {} ops; {} allocations, {} writes, {} syncs; {runs} faulty runs",
        ops.len(),
        dry.calls(Call::Allocate),
        dry.calls(Call::Write),
        dry.calls(Call::Sync)
    );
    runs
}

#[test]
fn every_injected_fault_is_reported_and_loses_nothing() {
    let fs = Mount::tmpfs(64 << 20);
    sweep(fs.dir.path(), 1024, 1, 120);
}

#[test]
#[ignore = "long run: a workload per block size and seed"]
fn long_sweep() {
    let fs = Mount::tmpfs(64 << 20);
    let mut runs = 0;
    for seed in 2..6 {
        for block in BLOCK_SIZES {
            runs += sweep(fs.dir.path(), block, seed, 200);
        }
    }
    println!("{runs} faulty runs in all");
}
