//! `pager fill FILE --size N`: a long write through the mapping from several
//! threads, with a progress bar and a stats table at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::setup::{Common, parse_size};

#[derive(Clone, Copy, ValueEnum)]
pub enum Pattern {
    Seq,
    Random,
}

#[derive(Args)]
pub struct FillArgs {
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

pub fn run(args: &FillArgs) -> mkwrite::Result<()> {
    let mut common = args.common.clone();
    if common.capacity.is_none() {
        common.capacity = Some(args.size.max(mkwrite::DEFAULT_CAPACITY));
    }
    let map = common.open(&args.file)?;
    if map.len() < args.size {
        map.set_len(args.size)?;
    }
    let bar = ProgressBar::new(args.size);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("static template"),
    );
    let chunks = args.size.div_ceil(CHUNK);
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let result: mkwrite::Result<()> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.threads.max(1))
            .map(|t| {
                let (map, bar, next) = (&map, &bar, &next);
                s.spawn(move || -> mkwrite::Result<()> {
                    let mut rng = StdRng::seed_from_u64(t);
                    let data: Vec<u8> = (0..CHUNK).map(|i| (i as u8) ^ (t as u8)).collect();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= chunks {
                            return Ok(());
                        }
                        let chunk = match args.pattern {
                            Pattern::Seq => i,
                            Pattern::Random => rng.random_range(0..chunks),
                        };
                        let off = chunk * CHUNK;
                        let len = CHUNK.min(args.size - off) as usize;
                        map.write(off, &data[..len]).map_err(|e| e.error)?;
                        bar.inc(len as u64);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("writer panicked"))
    });
    bar.finish();
    result?;
    map.flush()?;
    let elapsed = started.elapsed();
    println!(
        "wrote {} MiB in {elapsed:.2?} ({:.1} MiB/s)",
        args.size >> 20,
        args.size as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    super::demo::print_stats(&map.stats());
    map.close()
}
