//! Crashes: the judgement of a file a crash left (which values each byte
//! may hold and which lengths the file may have, given the last completed
//! flush and the last op started), and the bookkeeping of a campaign that
//! kills runs of a workload at random moments. Shared by the crash test
//! (a child process killed) and the NBD power-loss test (a server killed).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::model::apply;
use super::ops::{CAPACITY, Op};

/// Which values each byte may hold after a crash, and which lengths the file may have.
pub struct Acceptable {
    values: Vec<[u64; 4]>,
    lengths: Vec<u64>,
}

impl Acceptable {
    /// Replays `ops` on a plain buffer: the state after op `flushed` (the
    /// last whose flush or close returned), then every value and length the
    /// ops after it, up to op `started` (the last begun), could leave.
    pub fn after(ops: &[Op], started: Option<usize>, flushed: Option<usize>) -> Acceptable {
        let started = started.map_or(0, |s| s + 1).min(ops.len());
        let flushed = flushed.map_or(0, |f| f + 1).min(started);
        let mut model = Vec::new();
        for &op in &ops[..flushed] {
            apply(&mut model, op);
        }
        let mut ok = Acceptable {
            values: vec![[0; 4]; CAPACITY as usize],
            lengths: vec![model.len() as u64],
        };
        for at in 0..CAPACITY as usize {
            ok.allow(at, model.get(at).copied().unwrap_or(0));
        }
        for &op in &ops[flushed..started] {
            for at in apply(&mut model, op) {
                ok.allow(at, model.get(at).copied().unwrap_or(0));
            }
            ok.lengths.push(model.len() as u64);
        }
        ok
    }

    fn allow(&mut self, at: usize, value: u8) {
        self.values[at][usize::from(value / 64)] |= 1 << (value % 64);
    }

    fn allows(&self, at: usize, value: u8) -> bool {
        self.values[at][usize::from(value / 64)] & (1 << (value % 64)) != 0
    }

    /// Panics, naming `context`, unless `file` has a length the file had
    /// since the last flush and every byte a value it had since then.
    pub fn check(&self, file: &[u8], context: &str) {
        assert!(
            self.lengths.contains(&(file.len() as u64)),
            "{context}: length {} is none the file had since the last flush ({:?})",
            file.len(),
            self.lengths
        );
        if let Some(at) = (0..file.len()).find(|&at| !self.allows(at, file[at])) {
            panic!(
                "{context}: byte {at} is {:#04x}, a value it never had since the last flush",
                file[at]
            );
        }
    }
}

/// A kill campaign: runs until `kills` runs were killed mid-workload. The
/// first run goes to the end and times the workload; later ones are killed
/// at a random moment within the shortest time a whole run took.
pub struct Campaign {
    kills: u64,
    seed: u64,
    runs: u64,
    rng: StdRng,
    window: Duration,
    killed: u64,
    finished: u64,
    started_ops: Vec<usize>,
}

impl Campaign {
    pub fn new(kills: u64, seed: u64) -> Campaign {
        Campaign {
            kills,
            seed,
            runs: 0,
            rng: StdRng::seed_from_u64(seed),
            window: Duration::MAX,
            killed: 0,
            finished: 0,
            started_ops: Vec::new(),
        }
    }

    /// The next run until `kills` runs were killed: its number, its block
    /// size (the sizes in turn) and its workload's seed (the campaign's
    /// seed plus the run's number).
    pub fn next_run(&mut self, block_sizes: &[u64]) -> Option<(u64, u64, u64)> {
        if self.killed == self.kills {
            return None;
        }
        let run = self.runs;
        self.runs += 1;
        let block = block_sizes[run as usize % block_sizes.len()];
        Some((run, block, self.seed + run))
    }

    /// How long after its start to kill run `run`: never the first.
    pub fn kill_after(&mut self, run: u64) -> Option<Duration> {
        (run > 0).then(|| self.window.mul_f64(self.rng.random_range(0.0..1.0)))
    }

    /// Records a run: killed after starting op `started` (if any), or
    /// finished, `took` after its start.
    pub fn record(&mut self, killed: bool, started: Option<usize>, took: Duration) {
        if killed {
            self.killed += 1;
            self.started_ops.push(started.map_or(0, |s| s + 1));
        } else {
            self.finished += 1;
            self.window = self.window.min(took);
        }
    }

    /// What the campaign did, `what` naming what was killed.
    pub fn summary(&mut self, what: &str, ops: usize) -> String {
        let started = &mut self.started_ops;
        started.sort();
        format!(
            "{} {what} killed mid-workload, {} workloads finished; a workload of {ops} ops takes {:?}; \
             ops started before the kill: min {}, median {}, max {}",
            self.killed,
            self.finished,
            self.window,
            started[0],
            started[started.len() / 2],
            started[started.len() - 1]
        )
    }
}
