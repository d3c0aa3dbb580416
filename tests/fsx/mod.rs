//! fsx-style differential testing: random op sequences run through mkwrite
//! and through the kernel's own shared mapping, judged against a plain
//! buffer; a failing sequence is shrunk and written out as a replayable log.

#![allow(dead_code)]

pub mod crash;
pub mod model;
pub mod ops;
pub mod twin;

use std::path::{Path, PathBuf};

use ops::{Generator, Op};
use twin::{Setup, Tally, run};

/// Ops per sequence: long enough to reach odd states, short enough to shrink.
const SEQUENCE: usize = 200;
/// Reruns the shrinker may spend on one failure.
const SHRINK_BUDGET: usize = 400;

/// Runs at least `ops_total` ops on `setup` in sequences seeded from `seed`;
/// panics with a shrunk, replayable op log at the first disagreement.
pub fn campaign(setup: &Setup, seed: u64, ops_total: u64) -> Tally {
    let page = super::common::page_size();
    let mut tally = Tally::default();
    for n in 0.. {
        if tally.ops >= ops_total {
            break;
        }
        let sequence_seed = seed.wrapping_mul(1_000_003).wrapping_add(n) ^ (setup.block << 32);
        let ops = Generator::new(sequence_seed, setup.block, page).sequence(SEQUENCE);
        match run(setup, &ops) {
            Ok(done) => tally += done,
            Err(failure) => panic!("{}", report(setup, sequence_seed, &ops, failure)),
        }
    }
    tally
}

/// Deletes chunks of the sequence, halving the chunk size, while it still fails.
fn shrink(setup: &Setup, ops: &[Op], failure: twin::Failure) -> (Vec<Op>, twin::Failure) {
    let mut ops = ops[..(failure.op + 1).min(ops.len())].to_vec();
    let mut failure = failure;
    let mut budget = SHRINK_BUDGET;
    let mut chunk = ops.len().div_ceil(2);
    while chunk > 0 && budget > 0 {
        let mut at = 0;
        while at < ops.len() && budget > 0 {
            budget -= 1;
            let mut candidate = ops.clone();
            candidate.drain(at..(at + chunk).min(ops.len()));
            match run(setup, &candidate) {
                Err(still) => {
                    ops = candidate[..(still.op + 1).min(candidate.len())].to_vec();
                    failure = still;
                }
                Ok(_) => at += chunk,
            }
        }
        chunk /= 2;
    }
    (ops, failure)
}

fn report(setup: &Setup, seed: u64, ops: &[Op], failure: twin::Failure) -> String {
    let first = format!(
        "{} block {}: seed {seed:#x} failed at op {} of {} ({}): {}",
        setup.label(),
        setup.block,
        failure.op,
        ops.len(),
        ops.get(failure.op)
            .map_or("the final check".into(), Op::to_string),
        failure.message
    );
    let (short, why) = shrink(setup, ops, failure);
    let log: String = short.iter().map(|op| format!("{op}\n")).collect();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "fsx-{}-{}-{seed:x}.ops",
        setup.label(),
        setup.block
    ));
    let written = std::fs::write(&path, format!("# {} {}\n{log}", setup.label(), setup.block));
    format!(
        "{first}\nshrunk to {} ops, failing at op {}: {}\n{log}\
         replay ({written:?}): MKWRITE_FSX_REPLAY={} cargo test --release --test differential replay -- --ignored --nocapture",
        short.len(),
        why.op,
        why.message,
        path.display()
    )
}

/// Reads a log written by [`report`]: the setup's label, the block size and the ops.
pub fn read_log(path: &Path) -> (String, u64, Vec<Op>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .trim_start_matches('#')
        .split_whitespace()
        .collect();
    let ops = lines.map(|line| line.parse().unwrap()).collect();
    (header[0].to_string(), header[1].parse().unwrap(), ops)
}
