//! The kernel as oracle: random op sequences through mkwrite and through
//! `mmap(MAP_SHARED)` on twin files, on tmpfs and on ext4 with 1 KiB and
//! 4 KiB blocks, at every block size mkwrite supports from 512 B to 64 KiB.
//!
//! CI runs a fixed-seed slice (105,000 ops). The long run:
//! `MKWRITE_FSX_OPS=1000000 cargo test --release --test differential -- --ignored`
//! (the count is spread over the three filesystems; 1,000,000 by default).

mod common;
mod fsx;

use common::{BLOCK_SIZES, Mount};
use fsx::campaign;
use fsx::twin::{Setup, Tally, kernel_keeps_tail};
use mkwrite::Delivery;

/// The CI slice: ops per filesystem and block size (3 x 5 x 7,000 = 105,000).
const SLICE_OPS: u64 = 7_000;
const SLICE_SEED: u64 = 0x006d_6b77_7269_7465;

fn mount(fs: &str) -> Mount {
    match fs {
        "tmpfs" => Mount::tmpfs(256 << 20),
        "ext4-1k" => Mount::ext4(128 << 20, 1024),
        "ext4-4k" => Mount::ext4(128 << 20, 4096),
        other => panic!("unknown filesystem {other}"),
    }
}

/// Runs `ops` per block size on a fresh mount of `fs` and prints what was checked.
fn differential(fs: &'static str, seed: u64, ops: u64) -> Tally {
    differential_at(fs, &BLOCK_SIZES, false, Delivery::HandlerThread, seed, ops)
}

/// [`differential`] at `blocks`, every write and read through `poke`/`peek`'s
/// machinery when `guarded`, faults delivered by `delivery`.
fn differential_at(
    fs: &'static str,
    blocks: &[u64],
    guarded: bool,
    delivery: Delivery,
    seed: u64,
    ops: u64,
) -> Tally {
    differential_in(fs, blocks, guarded, delivery, Variant::default(), seed, ops)
}

/// What else a campaign's mappings differ in.
#[derive(Default, Clone, Copy)]
struct Variant {
    /// Over a `UFFD_USER_MODE_ONLY` userfaultfd.
    user_mode_only: bool,
    /// Within a budget of a few pages, evicting all along.
    budget: bool,
    /// The kernel tracks dirty pages (`DirtyTracking::Kernel`).
    kernel_dirty: bool,
}

/// [`differential_at`], with `variant`.
fn differential_in(
    fs: &'static str,
    blocks: &[u64],
    guarded: bool,
    delivery: Delivery,
    variant: Variant,
    seed: u64,
    ops: u64,
) -> Tally {
    let Variant {
        user_mode_only,
        budget,
        kernel_dirty,
    } = variant;
    let mount = mount(fs);
    let keeps_tail = kernel_keeps_tail(mount.dir.path());
    let mut total = Tally::default();
    for &block in blocks {
        let setup = Setup {
            dir: mount.dir.path().to_owned(),
            fs,
            block,
            kernel_keeps_tail: keeps_tail,
            guarded,
            delivery,
            user_mode_only,
            budget_pages: budget.then_some(fsx::twin::BUDGET_PAGES),
            kernel_dirty,
        };
        total += campaign(&setup, seed, ops);
    }
    println!(
        "{fs}{}{}{}{}{}: {} ops, {} reads and {} file pairs compared; kernel keeps a polluted tail: {keeps_tail} \
         ({} bytes judged by the shadow alone)",
        if guarded { " through poke/peek" } else { "" },
        if delivery == Delivery::InThread {
            ", faults in-thread"
        } else {
            ""
        },
        if user_mode_only {
            ", user-mode-only userfaultfd"
        } else {
            ""
        },
        if budget { ", evicting within a budget" } else { "" },
        if kernel_dirty {
            ", dirty pages tracked by the kernel"
        } else {
            ""
        },
        total.ops,
        total.reads,
        total.file_compares,
        total.kernel_unjudged
    );
    assert!(total.ops >= ops * blocks.len() as u64);
    if delivery == Delivery::InThread {
        assert!(total.faults_in_thread > 0, "no fault was resolved in-thread");
    }
    if budget {
        assert!(
            total.pages_evicted > 1000,
            "{} pages evicted",
            total.pages_evicted
        );
    }
    total
}

#[test]
fn tmpfs_agrees_with_the_kernel() {
    differential("tmpfs", SLICE_SEED, SLICE_OPS);
}

#[test]
fn ext4_1k_agrees_with_the_kernel() {
    differential("ext4-1k", SLICE_SEED, SLICE_OPS);
}

#[test]
fn ext4_4k_agrees_with_the_kernel() {
    differential("ext4-4k", SLICE_SEED, SLICE_OPS);
}

/// Every write and read as plain stores and loads through `mkwrite::guarded`,
/// the machinery of the pager's `poke` and `peek`: the real fault path.
#[test]
fn ext4_1k_through_poke_and_peek_agrees_with_the_kernel() {
    differential_at(
        "ext4-1k",
        &[512, 1024, 4096],
        true,
        Delivery::HandlerThread,
        SLICE_SEED ^ 0x706f6b65,
        SLICE_OPS,
    );
}

/// Faults resolved in the faulting thread: the checked calls, and every
/// write and read through plain stores and loads.
#[test]
fn ext4_1k_in_thread_agrees_with_the_kernel() {
    differential_at(
        "ext4-1k",
        &BLOCK_SIZES,
        false,
        Delivery::InThread,
        SLICE_SEED ^ 0x696e,
        SLICE_OPS,
    );
    differential_at(
        "ext4-1k",
        &[512, 1024, 4096],
        true,
        Delivery::InThread,
        SLICE_SEED ^ 0x696e706f,
        SLICE_OPS,
    );
}

#[test]
fn tmpfs_in_thread_agrees_with_the_kernel() {
    differential_at(
        "tmpfs",
        &BLOCK_SIZES,
        false,
        Delivery::InThread,
        SLICE_SEED ^ 0x74,
        SLICE_OPS,
    );
}

/// The userfaultfd an unprivileged process gets (`UFFD_USER_MODE_ONLY`),
/// in both deliveries: mkwrite itself never makes the kernel touch a page
/// that is not ready (its copies out go through `/proc/self/mem`).
#[test]
fn ext4_1k_user_mode_only_agrees_with_the_kernel() {
    for (delivery, seed) in [(Delivery::HandlerThread, 0x756d), (Delivery::InThread, 0x756d69)] {
        differential_in(
            "ext4-1k",
            &[512, 1024, 4096],
            false,
            delivery,
            Variant {
                user_mode_only: true,
                ..Variant::default()
            },
            SLICE_SEED ^ seed,
            SLICE_OPS,
        );
    }
}

/// Eviction against the kernel: mkwrite keeps 8 pages of a 1 MiB range in
/// memory, writing dirty pages back and refilling them all along, in both
/// deliveries, plain loads and stores included.
#[test]
fn ext4_1k_within_a_budget_agrees_with_the_kernel() {
    for (delivery, guarded, seed) in [
        (Delivery::HandlerThread, false, 0x6275),
        (Delivery::InThread, true, 0x627564),
    ] {
        differential_in(
            "ext4-1k",
            &[512, 1024, 4096],
            guarded,
            delivery,
            Variant {
                budget: true,
                ..Variant::default()
            },
            SLICE_SEED ^ seed,
            SLICE_OPS,
        );
    }
}

/// Dirty pages tracked by the kernel (`WP_ASYNC` and `PAGEMAP_SCAN`)
/// against the kernel's own mmap, in both deliveries, plain loads and
/// stores included: no write the kernel let through is missed by a flush,
/// a resize or a hole. Blocks no smaller than a page (smaller ones are refused).
#[test]
fn ext4_1k_with_kernel_dirty_tracking_agrees_with_the_kernel() {
    for (delivery, guarded, seed) in [
        (Delivery::HandlerThread, false, 0x6b64),
        (Delivery::InThread, true, 0x6b6474),
    ] {
        differential_in(
            "ext4-1k",
            &[4096, 16384],
            guarded,
            delivery,
            Variant {
                kernel_dirty: true,
                ..Variant::default()
            },
            SLICE_SEED ^ seed,
            SLICE_OPS,
        );
    }
}

/// Ops per filesystem and block size for the long run.
fn long_ops() -> u64 {
    let total: u64 = std::env::var("MKWRITE_FSX_OPS")
        .map(|v| v.parse().expect("MKWRITE_FSX_OPS is a count"))
        .unwrap_or(1_000_000);
    total.div_ceil(3 * BLOCK_SIZES.len() as u64)
}

/// A seed for the long run that differs from the slice's (and between runs
/// when MKWRITE_FSX_SEED is given).
fn long_seed() -> u64 {
    std::env::var("MKWRITE_FSX_SEED").map_or(1, |v| v.parse().expect("MKWRITE_FSX_SEED is a number"))
}

#[test]
#[ignore = "long run: MKWRITE_FSX_OPS ops (default 1,000,000)"]
fn long_tmpfs() {
    differential("tmpfs", long_seed(), long_ops());
}

#[test]
#[ignore = "long run: MKWRITE_FSX_OPS ops (default 1,000,000)"]
fn long_ext4_1k() {
    differential("ext4-1k", long_seed(), long_ops());
}

#[test]
#[ignore = "long run: MKWRITE_FSX_OPS ops (default 1,000,000)"]
fn long_ext4_4k() {
    differential("ext4-4k", long_seed(), long_ops());
}

#[test]
#[ignore = "long run: MKWRITE_FSX_OPS ops (default 1,000,000)"]
fn long_ext4_1k_through_poke_and_peek() {
    differential_at(
        "ext4-1k",
        &BLOCK_SIZES,
        true,
        Delivery::HandlerThread,
        long_seed(),
        long_ops(),
    );
}

#[test]
#[ignore = "long run: MKWRITE_FSX_OPS ops (default 1,000,000)"]
fn long_ext4_1k_in_thread_through_poke_and_peek() {
    differential_at(
        "ext4-1k",
        &BLOCK_SIZES,
        true,
        Delivery::InThread,
        long_seed(),
        long_ops(),
    );
}

/// Replays a log that a failure wrote: `MKWRITE_FSX_REPLAY=path`.
#[test]
#[ignore = "replays MKWRITE_FSX_REPLAY"]
fn replay() {
    let Ok(path) = std::env::var("MKWRITE_FSX_REPLAY") else {
        // Part of `-- --ignored` runs too, where there is nothing to replay.
        println!("MKWRITE_FSX_REPLAY is not set: nothing to replay");
        return;
    };
    let (label, block, ops) = fsx::read_log(path.as_ref());
    let fs = label.split('+').next().unwrap_or(&label).to_owned();
    let mount = mount(&fs);
    let keeps_tail = kernel_keeps_tail(mount.dir.path());
    let setup = Setup::from_label(&label, mount.dir.path().to_owned(), block, keeps_tail);
    for (at, op) in ops.iter().enumerate() {
        println!("{at:4} {op}");
    }
    match fsx::twin::run(&setup, &ops) {
        Ok(tally) => println!("passes: {tally:?}"),
        Err(failure) => panic!("fails at op {}: {}", failure.op, failure.message),
    }
}
