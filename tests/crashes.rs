//! Crashes: a child process writes and flushes a random workload (a third
//! of its flushes only started, with `flush_async`) and is killed with
//! SIGKILL at a random moment (every other child resolves faults in-thread,
//! every third evicts within a budget of 16 pages). The file it leaves must hold, in
//! every byte, its value at the last completed flush or a value written to it
//! later (never pollution from past EOF, never anything else), at a length
//! the file had; and mkwrite must reopen it.
//!
//! `harness = false`: the binary re-runs itself as the child. CI runs 50
//! kills; `cargo test --release --test crashes -- --ignored` runs
//! MKWRITE_CRASHES of them (1,000 by default).

mod common;
mod fsx;

use std::io::{BufRead, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{BLOCK_SIZES, Mount};
use fsx::crash::{Acceptable, Campaign};
use fsx::ops::{CAPACITY, Generator, Op, clip, data};
use mkwrite::{Budget, Delivery, Mapping, MappingOptions};

const CHILD: &str = "MKWRITE_CRASH_CHILD";
const OPS: usize = 400;
const SLICE_KILLS: u64 = 50;

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        let mut words = spec.split_whitespace();
        let (path, seed, block, delivery, budget) = (
            words.next().unwrap(),
            words.next().unwrap(),
            words.next().unwrap(),
            words.next().unwrap(),
            words.next().unwrap(),
        );
        let delivery = match delivery {
            "in-thread" => Delivery::InThread,
            _ => Delivery::HandlerThread,
        };
        // A budget of 16 pages: eviction writes back all along.
        let budget = (budget == "budget").then(|| Budget::new(16 * common::page_size()));
        child(
            Path::new(path),
            seed.parse().unwrap(),
            block.parse().unwrap(),
            delivery,
            budget.as_ref(),
        );
        return;
    }
    let long = std::env::args().any(|a| a == "--ignored");
    let kills = if long {
        std::env::var("MKWRITE_CRASHES").map_or(1_000, |v| v.parse().expect("MKWRITE_CRASHES is a count"))
    } else {
        SLICE_KILLS
    };
    let seed = if long { 1 << 32 } else { 0 };
    match std::panic::catch_unwind(|| crash_campaign(seed, kills)) {
        Ok(()) => println!("test crashes ({kills} kills) ... ok"),
        Err(_) => {
            println!("test crashes ... FAILED");
            std::process::exit(1);
        }
    }
}

fn workload(seed: u64, block: u64) -> Vec<Op> {
    Generator::new(seed, block, common::page_size()).sequence(OPS)
}

/// The child: runs the workload, saying on stdout which op it starts and
/// which flushes completed.
fn child(path: &Path, seed: u64, block: u64, delivery: Delivery, budget: Option<&Budget>) {
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
    let open = || {
        let mut options = MappingOptions::new();
        options.delivery(delivery).capacity(CAPACITY).block_size(block);
        if let Some(budget) = budget {
            options.budget(budget);
        }
        options.open(path).unwrap()
    };
    let mut map = open();
    let page = map.page_size();
    for (at, op) in workload(seed, block).into_iter().enumerate() {
        say(format!("start {at}"));
        let eof = map.len();
        let Some(op) = op.clipped(eof, page) else {
            continue;
        };
        match op {
            Op::Write {
                offset,
                len,
                seed,
                raw,
            } => write(&map, offset, len, seed, raw),
            Op::SetLen { len, seed } => {
                // Pollution past EOF that must never reach the file.
                if let Some((offset, len)) = clip(eof, page, eof.next_multiple_of(page)) {
                    write(&map, offset, len, seed ^ 0x5A, seed % 2 == 1);
                }
                map.set_len(len).unwrap();
            }
            Op::Punch { offset, len } => map.punch_hole(offset, len).unwrap(),
            Op::Reserve { offset, len } => map.reserve(offset, len).unwrap(),
            // A third of the flushes only start (flush_async): the next
            // completed flush waits for them, and a kill in between may
            // lose nothing an earlier completed flush wrote.
            Op::Flush if at % 3 == 0 => map.flush_async().unwrap(),
            Op::Flush => {
                map.flush().unwrap();
                say(format!("flushed {at}"));
            }
            Op::FlushRange { offset, len } => map.flush_range(offset, len).unwrap(),
            Op::Evict => map.evict().unwrap(),
            Op::Reopen => {
                map.close().unwrap();
                say(format!("flushed {at}"));
                map = open();
            }
            Op::Read { .. } => {}
        }
    }
    map.close().unwrap();
    say(format!("flushed {OPS}"));
}

/// Writes `data(seed, offset, len)`, a range the caller clipped to the file's pages.
fn write(map: &Mapping, offset: u64, len: u64, seed: u8, raw: bool) {
    let bytes = data(seed, offset, len);
    if raw {
        // SAFETY: `[offset, offset + len)` lies in the pages that hold the
        // file (below EOF rounded up to a page), inside the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.as_ptr().add(offset as usize), bytes.len())
        }
    } else {
        map.write(offset, &bytes).unwrap();
    }
}

/// What the child reported before it died.
#[derive(Debug, Default)]
struct Progress {
    /// The last op it started, if any.
    started: Option<usize>,
    /// The op of the last flush (or close) that returned.
    flushed: Option<usize>,
}

fn progress(stdout: &[u8]) -> Progress {
    let mut p = Progress::default();
    for line in stdout.lines() {
        let line = line.unwrap();
        let (what, at) = line.split_once(' ').unwrap();
        let at = at.parse().unwrap();
        match what {
            "start" => p.started = Some(at),
            "flushed" => p.flushed = Some(at),
            other => panic!("child said {other:?}"),
        }
    }
    p
}

/// Runs children until `kills` of them died by SIGKILL mid-workload; each
/// one's file is verified, and so is the file of every child that finished.
fn crash_campaign(seed: u64, kills: u64) {
    let fs = Mount::ext4(128 << 20, 1024);
    let mut campaign = Campaign::new(kills, seed);
    while let Some((run, block, run_seed)) = campaign.next_run(&BLOCK_SIZES) {
        let path = fs.path(&format!("crash-{run}"));
        std::fs::File::create(&path).unwrap();
        // Every other child resolves its faults in-thread.
        let delivery = if run % 2 == 1 {
            "in-thread"
        } else {
            "handler-thread"
        };
        // Every third child keeps its pages within a small budget.
        let budget = if run % 3 == 2 { "budget" } else { "unlimited" };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(
                CHILD,
                format!("{} {run_seed} {block} {delivery} {budget}", path.display()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let began = Instant::now();
        if let Some(after) = campaign.kill_after(run) {
            std::thread::sleep(after);
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let progress = progress(&out.stdout);
        let killed = out.status.signal() == Some(libc::SIGKILL);
        if !killed {
            assert!(out.status.success(), "child {run} failed: {out:?}");
        }
        campaign.record(killed, progress.started, began.elapsed());
        verify(&path, run_seed, block, &progress);
        std::fs::remove_file(&path).unwrap();
    }
    println!("{}", campaign.summary("children on ext4 (1 KiB blocks)", OPS));
}

/// The file the child left holds only acceptable bytes at an acceptable
/// length, and mkwrite reopens it with the same bytes.
fn verify(path: &Path, seed: u64, block: u64, progress: &Progress) {
    let ok = Acceptable::after(&workload(seed, block), progress.started, progress.flushed);
    let file = common::read_file(path);
    let context = format!("seed {seed}, block {block}, {progress:?}");
    ok.check(&file, &context);
    let map = MappingOptions::new().block_size(block).open(path).unwrap();
    let mut reread = vec![0; file.len()];
    map.read(0, &mut reread).unwrap();
    assert!(
        reread == file,
        "{context}: the reopened mapping reads other bytes than the file"
    );
    map.close().unwrap();
}
