//! `pager fill FILE --size N`: a long write through the mapping from several
//! threads, with a progress bar and a stats table at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mkwrite::Mapping;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::report::{Failure, Out, outln, say};
use super::setup::{Access, Common, parse_size};

#[derive(Clone, Copy, ValueEnum)]
pub enum Pattern {
    /// 1 MiB chunks in order, from the start.
    Seq,
    /// 1 MiB chunks at random offsets (some written twice, some not at all).
    Random,
}

#[derive(Args)]
pub struct FillArgs {
    /// The file to fill; created if missing, grown to --size.
    file: std::path::PathBuf,
    /// Bytes to write.
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Sequential chunks, or chunks at random offsets.
    #[arg(long, value_enum, default_value = "seq")]
    pattern: Pattern,
    /// Writer threads.
    #[arg(long, default_value = "1")]
    threads: u64,
    #[command(flatten)]
    common: Common,
}

const CHUNK: u64 = 1 << 20;

/// What the writers share: the work, the bar, and the count of bytes that
/// landed, kept apart from the bar so the count is exact however it draws.
struct Progress<'a> {
    map: &'a Mapping,
    args: &'a FillArgs,
    bar: ProgressBar,
    next: AtomicU64,
    landed: AtomicU64,
    /// Set by the first writer to fail, so the others stop at their next chunk.
    stop: AtomicBool,
}

pub fn run(args: &FillArgs) -> Result<(), Failure> {
    let mut common = args.common.clone();
    if common.capacity.is_none() {
        common.capacity = Some(args.size.max(mkwrite::DEFAULT_CAPACITY));
    }
    let map = common.open(&args.file, Access::Create)?;
    if map.len() < args.size {
        map.set_len(args.size)?;
    }
    let progress = Progress {
        map: &map,
        args,
        bar: bar(args.size),
        next: AtomicU64::new(0),
        landed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let started = Instant::now();
    if let Err(e) = write_all(&progress) {
        return Err(stopped(progress, e));
    }
    progress.bar.finish();
    map.flush()?;
    let elapsed = started.elapsed();
    let mut out = Out::new();
    outln!(
        out,
        "wrote {} MiB in {elapsed:.2?} ({:.1} MiB/s)",
        args.size >> 20,
        args.size as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    )?;
    super::demo::print_stats(&mut out, &map.stats())?;
    Ok(map.close()?)
}

fn bar(size: u64) -> ProgressBar {
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .expect("static template"),
    );
    bar
}

/// A writer failed: leave the bar where it stopped, keep what landed (flush
/// it), and say exactly how much that is.
fn stopped(progress: Progress, error: mkwrite::Error) -> Failure {
    let landed = progress.landed.load(Ordering::SeqCst);
    let size = progress.args.size;
    progress
        .bar
        .abandon_with_message(format!("stopped: {landed} bytes landed"));
    let flushed = progress.map.flush();
    say(format_args!(
        "pager: {landed} of {size} bytes landed before the store refused the rest"
    ));
    match flushed {
        Ok(()) => error.into(),
        Err(flush) => flush.into(),
    }
}

fn write_all(p: &Progress) -> mkwrite::Result<()> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..p.args.threads.max(1))
            .map(|t| s.spawn(move || writer(p, t)))
            .collect();
        // Join every writer before reporting, so the count of landed bytes is final.
        let results: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().expect("writer panicked"))
            .collect();
        results.into_iter().collect()
    })
}

fn writer(p: &Progress, t: u64) -> mkwrite::Result<()> {
    let mut rng = StdRng::seed_from_u64(t);
    let data: Vec<u8> = (0..CHUNK).map(|i| (i as u8) ^ (t as u8)).collect();
    let chunks = p.args.size.div_ceil(CHUNK);
    while !p.stop.load(Ordering::SeqCst) {
        let i = p.next.fetch_add(1, Ordering::Relaxed);
        if i >= chunks {
            return Ok(());
        }
        let chunk = match p.args.pattern {
            Pattern::Seq => i,
            Pattern::Random => rng.random_range(0..chunks),
        };
        let off = chunk * CHUNK;
        let len = CHUNK.min(p.args.size - off) as usize;
        let (done, result) = match p.map.write(off, &data[..len]) {
            Ok(()) => (len, Ok(())),
            Err(e) => (e.done, Err(e.error)),
        };
        p.landed.fetch_add(done as u64, Ordering::SeqCst);
        p.bar.inc(done as u64);
        if result.is_err() {
            p.stop.store(true, Ordering::SeqCst);
            return result;
        }
    }
    Ok(())
}
