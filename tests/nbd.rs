//! `NbdStore` against real NBD servers started here: nbdkit (the file
//! plugin over a sparse image on a size-limited tmpfs, so a full backend
//! answers a real ENOSPC; its error, nozero, delay and cache filters) and
//! qemu-nbd. Servers listen on 127.0.0.1 or a Unix socket and are killed
//! by the test that started them; a watchdog fails a hung test.
//!
//! CI runs a slice: 10,000 differential ops per server and block size,
//! 100 server kills for power loss, 30 runs of crashes under a live
//! mapping. `cargo test --release --test nbd -- --ignored` runs
//! MKWRITE_NBD_OPS differential ops per server and block size (100,000),
//! MKWRITE_NBD_KILLS kills (300) and MKWRITE_NBD_LIVE_RUNS runs (300).

mod common;
mod fsx;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nbd_server::{Listen, Program, Server, Watchdog, sparse_image};
use common::{Mount, check_accepted, fill_until_full, is_nospace, pattern};
use fsx::crash::{Acceptable, Campaign};
use fsx::model;
use fsx::ops::{CAPACITY, Generator, Op, clip, data};
use mkwrite::{Error, Mapping, MappingOptions, NbdOptions, NbdStore, Store};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const BLOCK_SIZES: [u64; 4] = [512, 1024, 4096, 65536];
const IMAGE: u64 = 64 << 20;

/// Both servers, each on one kind of socket (so both kinds are covered).
fn servers() -> [(Program, Listen); 2] {
    [(Program::nbdkit(), Listen::Unix), (Program::QemuNbd, Listen::Tcp)]
}

/// A tmpfs with a sparse image on it.
fn image(tmpfs_bytes: u64, image_bytes: u64) -> (Mount, std::path::PathBuf) {
    let fs = Mount::tmpfs(tmpfs_bytes);
    let path = fs.path("export.img");
    sparse_image(&path, image_bytes);
    (fs, path)
}

/// A fresh file of `block`-byte blocks on the server's export.
fn formatted(server: &Server, block: u64) -> NbdStore {
    NbdOptions::new()
        .block_size(block)
        .format(true)
        .connect(&server.uri())
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", server.name(), server.log_text()))
}

fn map(store: impl Store + 'static) -> Mapping {
    MappingOptions::new().capacity(CAPACITY).map_store(store).unwrap()
}

/// The file's bytes as a fresh connection reads them.
fn contents(uri: &str) -> Vec<u8> {
    let store = NbdStore::connect(uri).unwrap();
    let mut bytes = vec![0; store.len() as usize];
    store.read_at(0, &mut bytes).unwrap();
    bytes
}

/// Seed 000 of DESIGN.md: set_len(0); write 1024 'x'; map[0]='a';
/// map[1024..1124]='y' (past EOF, inside the page); set_len(10000);
/// map[2048..2058]='z'; flush. The plain stores go through `as_mut_slice`
/// (real faults); the bytes past EOF through a checked write, since no
/// slice reaches past EOF.
fn seed_scenario(mut map: Mapping) {
    map.set_len(0).unwrap();
    map.set_len(1024).unwrap();
    map.write(0, &[b'x'; 1024]).unwrap();
    map.flush().unwrap();
    map.as_mut_slice()[0] = b'a';
    map.write(1024, &[b'y'; 100]).unwrap();
    map.set_len(10000).unwrap();
    map.as_mut_slice()[2048..2058].fill(b'z');
    map.flush().unwrap();
    map.check_invariants().unwrap();
    map.close().unwrap();
}

fn check_seed_bytes(file: &[u8]) {
    assert_eq!(file.len(), 10000);
    assert_eq!(file[0], b'a');
    assert!(file[1..1024].iter().all(|&b| b == b'x'));
    assert!(
        file[1024..2048].iter().all(|&b| b == 0),
        "the 'y's past the old EOF must be zeroed"
    );
    assert!(file[2048..2058].iter().all(|&b| b == b'z'));
    assert!(file[2058..].iter().all(|&b| b == 0));
}

#[test]
fn seed_000_on_both_servers_at_every_block_size() {
    let _dog = Watchdog::new("seed_000", Duration::from_secs(120));
    let (_fs, img) = image(256 << 20, IMAGE);
    for (program, listen) in servers() {
        let server = Server::start(program, &img, listen);
        for block in BLOCK_SIZES {
            let store = formatted(&server, block);
            assert_eq!(store.block_size(), block);
            seed_scenario(map(store));
            check_seed_bytes(&contents(&server.uri()));
        }
    }
}

/// `MappingOptions::open_nbd` creates on a blank export and reopens it.
#[test]
fn open_nbd_creates_then_reopens() {
    let _dog = Watchdog::new("open_nbd", Duration::from_secs(60));
    let (_fs, img) = image(64 << 20, 16 << 20);
    let server = Server::start(Program::nbdkit(), &img, Listen::Tcp);
    let e = MappingOptions::new().open_nbd(&server.uri()).unwrap_err();
    assert!(matches!(e, Error::Open { .. }), "{e}");
    assert!(e.to_string().contains("create(true)"), "{e}");
    let map = MappingOptions::new()
        .create(true)
        .block_size(1024)
        .open_nbd(&server.uri())
        .unwrap();
    assert_eq!(map.block_size(), 1024);
    map.set_len(3000).unwrap();
    map.write(100, b"over the network").unwrap();
    map.close().unwrap();
    let map = MappingOptions::new().open_nbd(&server.uri()).unwrap();
    let mut buf = [0u8; 16];
    map.read(100, &mut buf).unwrap();
    assert_eq!(&buf, b"over the network");
    assert_eq!(map.len(), 3000);
}

#[test]
fn a_full_server_fails_the_write_at_the_fault() {
    let _dog = Watchdog::new("full server", Duration::from_secs(120));
    for (program, listen) in servers() {
        for block in [1024, 4096] {
            // 1 MiB of tmpfs under a 16 MiB export: the backend fills up.
            let (_fs, img) = image(1 << 20, 16 << 20);
            let server = Server::start(program.clone(), &img, listen);
            let store = formatted(&server, block);
            store.set_len(4 << 20).unwrap();
            let map = MappingOptions::new().capacity(4 << 20).map_store(store).unwrap();
            let accepted = fill_until_full(&map, is_nospace);
            let what = format!("{} block {block}: accepted {accepted}", server.name());
            assert!(accepted > 0 && accepted < 1 << 20, "{what}");
            check_accepted(map, accepted, &what, || contents(&server.uri()));
        }
    }
}

/// The pager's `--nbd`: a script fills a full remote volume and gets the
/// exact count that landed, which a fresh connection finds on the server.
#[test]
fn pager_script_over_nbd() {
    let _dog = Watchdog::new("pager --nbd", Duration::from_secs(120));
    let (_fs, img) = image(1 << 20, 16 << 20);
    let server = Server::start(Program::nbdkit(), &img, Listen::Tcp);
    let uri = server.uri();
    let out = common::pager::script(
        &["unused", "--nbd", &uri, "--block-size", "4096"],
        "setlen 4M\nfill 0 4M 65\nflush\nlen\n",
    );
    assert_eq!(out[0], "ok");
    let done: u64 = match out[1].split_whitespace().collect::<Vec<_>>()[..] {
        ["err", "nospace", done] => done.parse().unwrap(),
        _ => panic!("expected err nospace DONE, got {:?}", out[1]),
    };
    assert_eq!(out[2..], ["ok", "ok 4194304"]);
    assert!(done > 0 && done < 1 << 20 && done.is_multiple_of(4096), "{done}");
    let file = contents(&uri);
    assert!(file[..done as usize].iter().all(|&b| b == b'A'));
    assert!(file[done as usize..].iter().all(|&b| b == 0));
    let stat = common::pager::pager()
        .args(["stat", "unused", "--nbd", &uri])
        .output()
        .unwrap();
    let stat = String::from_utf8(stat.stdout).unwrap();
    assert!(
        stat.contains("len=4194304") && stat.contains("block_size=4096"),
        "{stat}"
    );
    assert!(
        stat.contains(&format!("blocks_allocated={}", done / 4096)),
        "{stat}"
    );
}

/// nbdkit's error filter: injected ENOSPC and EIO, each on while a trigger
/// file exists.
#[test]
fn injected_errors_are_classified_and_nothing_is_lost() {
    let _dog = Watchdog::new("error filter", Duration::from_secs(60));
    let (fs, img) = image(64 << 20, 16 << 20);
    let trigger = |op: &str| fs.path(&format!("fail-{op}"));
    let mut args = Vec::new();
    for (op, error) in [("zero", "ENOSPC"), ("pwrite", "EIO"), ("pread", "EIO")] {
        args.push(format!("error-{op}={error}"));
        args.push(format!("error-{op}-rate=100%"));
        args.push(format!("error-{op}-file={}", trigger(op).display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(Program::nbdkit_with(&["error"], &args), &img, Listen::Unix);
    let store = formatted(&server, 4096);
    store.set_len(1 << 20).unwrap();
    let map = map(store);
    map.write(0, &pattern(1, 8192)).unwrap();
    map.flush().unwrap();

    let on = |op: &str| std::fs::write(trigger(op), b"").unwrap();
    let off = |op: &str| std::fs::remove_file(trigger(op)).unwrap();

    on("zero");
    let e = map.write(16384, &pattern(2, 4096)).unwrap_err();
    assert!(
        matches!(e.error, Error::NoSpace(_)),
        "injected ENOSPC is no space: {e}"
    );
    assert_eq!(e.done, 0);
    map.write(0, &pattern(3, 4096)).unwrap(); // allocated already: no request
    off("zero");
    map.write(16384, &pattern(2, 4096)).unwrap();

    on("pwrite");
    let e = map.flush().unwrap_err();
    assert!(
        matches!(&e, Error::Io(io) if io.raw_os_error() == Some(libc::EIO)),
        "{e}"
    );
    assert!(
        map.stats().pages_dirty >= 2,
        "the failed flush keeps its pages dirty"
    );
    off("pwrite");
    map.flush().unwrap();
    assert_eq!(map.stats().pages_dirty, 0);

    on("pread");
    map.evict().unwrap();
    let e = map.read(0, &mut [0u8; 10]).unwrap_err();
    assert!(
        matches!(&e.error, Error::Io(io) if io.raw_os_error() == Some(libc::EIO)),
        "{e}"
    );
    off("pread");
    drop(map);
    let file = contents(&server.uri());
    assert!(file[..4096] == pattern(3, 4096)[..]);
    assert!(file[4096..8192] == pattern(1, 8192)[4096..]);
    assert!(file[16384..20480] == pattern(2, 4096)[..]);
}

/// Any other allocation error is a failure, never "full".
#[test]
fn an_injected_eio_on_allocation_is_not_no_space() {
    let _dog = Watchdog::new("eio on allocation", Duration::from_secs(60));
    let (fs, img) = image(64 << 20, 16 << 20);
    let trigger = fs.path("fail");
    let file_arg = format!("error-zero-file={}", trigger.display());
    let program = Program::nbdkit_with(&["error"], &["error-zero=EIO", "error-zero-rate=100%", &file_arg]);
    let server = Server::start(program, &img, Listen::Unix);
    let store = formatted(&server, 4096);
    store.set_len(1 << 20).unwrap();
    let map = map(store);
    std::fs::write(&trigger, b"").unwrap();
    let e = map.write(0, b"x").unwrap_err();
    assert!(
        matches!(&e.error, Error::Io(io) if io.raw_os_error() == Some(libc::EIO)),
        "{e}"
    );
    std::fs::remove_file(&trigger).unwrap();
    map.write(0, b"x").unwrap();
    map.close().unwrap();
}

#[test]
fn a_server_without_write_zeroes_is_refused_at_open() {
    let _dog = Watchdog::new("nozero", Duration::from_secs(60));
    let (_fs, img) = image(64 << 20, 16 << 20);
    let server = Server::start(Program::nbdkit_with(&["nozero"], &[]), &img, Listen::Unix);
    let e = NbdOptions::new().format(true).connect(&server.uri()).unwrap_err();
    assert!(matches!(e, Error::Open { .. }));
    let text = e.to_string();
    assert!(
        text.contains("WRITE_ZEROES") && text.contains("allocation cannot be promised"),
        "{text}"
    );
}

#[test]
fn a_foreign_export_is_refused_unless_formatted() {
    let _dog = Watchdog::new("foreign", Duration::from_secs(60));
    let (_fs, img) = image(64 << 20, 16 << 20);
    std::fs::write(&img, b"\x7fELF and other things").unwrap();
    sparse_image_len(&img, 16 << 20);
    let server = Server::start(Program::nbdkit(), &img, Listen::Unix);
    for create in [false, true] {
        let e = NbdOptions::new()
            .create(create)
            .connect(&server.uri())
            .unwrap_err();
        assert!(e.to_string().contains("not an mkwrite export"), "{e}");
    }
    let store = NbdOptions::new().format(true).connect(&server.uri()).unwrap();
    assert_eq!((store.len(), store.block_size()), (0, 4096));
}

fn sparse_image_len(path: &Path, len: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Block status tells a reopened mapping which blocks hold data, and an
/// allocation around a block that holds data leaves that data alone
/// (provisioning writes zeros, so only blocks known empty get it).
#[test]
fn block_status_and_allocation_around_data() {
    let _dog = Watchdog::new("block status", Duration::from_secs(60));
    let (_fs, img) = image(64 << 20, 16 << 20);
    for (program, listen) in servers() {
        let server = Server::start(program, &img, listen);
        let store = formatted(&server, 1024);
        store.set_len(64 << 10).unwrap();
        let map = map(store);
        map.write(0, &[0xAA; 4096]).unwrap();
        map.write(40 << 10, &[0xBB; 4096]).unwrap();
        map.close().unwrap();
        let map = MappingOptions::new()
            .capacity(CAPACITY)
            .map_store(NbdStore::connect(&server.uri()).unwrap())
            .unwrap();
        assert_eq!(
            map.stats().blocks_allocated,
            8,
            "{}: two pages of 1 KiB blocks",
            server.name()
        );
        // Page 0: blocks 0, 2 and 3 freed, block 1 keeps its bytes on the server.
        map.punch_hole(0, 1024).unwrap();
        map.punch_hole(2048, 2048).unwrap();
        map.flush().unwrap();
        map.evict().unwrap();
        // The write needs blocks 0..4 with block 1 in the middle already allocated.
        map.write(0, b"new").unwrap();
        map.close().unwrap();
        let file = contents(&server.uri());
        assert_eq!(&file[..3], b"new");
        assert!(file[3..1024].iter().all(|&b| b == 0));
        assert!(
            file[1024..2048].iter().all(|&b| b == 0xAA),
            "{}: block 1 kept its data",
            server.name()
        );
        assert!(file[2048..4096].iter().all(|&b| b == 0));
        assert!(file[40 << 10..44 << 10].iter().all(|&b| b == 0xBB));
    }
}

/// The server is killed mid-run: the failing call is an I/O error, the dirty
/// data stays dirty, and once the server is back the next flush reconnects
/// and writes it.
#[test]
fn a_server_that_dies_mid_run() {
    let _dog = Watchdog::new("server dies", Duration::from_secs(120));
    let (_fs, img) = image(64 << 20, 16 << 20);
    for (program, listen) in servers() {
        let mut server = Server::start(program, &img, listen);
        let store = formatted(&server, 4096);
        store.set_len(256 << 10).unwrap();
        let map = map(store);
        let data = pattern(5, 128 << 10);
        map.write(0, &data[..64 << 10]).unwrap();
        map.flush().unwrap();
        map.write(64 << 10, &data[64 << 10..]).unwrap();
        server.kill();
        let e = map.flush().unwrap_err();
        assert!(matches!(e, Error::Io(_)), "{}: {e}", server.name());
        assert_eq!(
            map.stats().pages_dirty,
            16,
            "{}: the unflushed pages stay dirty",
            server.name()
        );
        let e = map.write(192 << 10, b"needs a block").unwrap_err();
        assert!(
            matches!(e.error, Error::Io(_)),
            "a dead server is not a full one: {e}"
        );
        let mut back = vec![0u8; 4096];
        map.read(64 << 10, &mut back).unwrap(); // resident: no request
        assert_eq!(back, data[64 << 10..68 << 10]);
        server.restart();
        map.flush().unwrap();
        assert_eq!(map.stats().pages_dirty, 0);
        map.close().unwrap();
        let file = contents(&server.uri());
        assert_eq!(file.len(), 256 << 10);
        assert!(
            file[..128 << 10] == data[..],
            "{}: every accepted byte is on the server",
            server.name()
        );
    }
}

/// A server that stops answering (SIGSTOP) costs the timeout, not a hang.
#[test]
fn a_stuck_server_times_out() {
    let _dog = Watchdog::new("stuck server", Duration::from_secs(60));
    let (_fs, img) = image(64 << 20, 16 << 20);
    let server = Server::start(Program::nbdkit(), &img, Listen::Unix);
    let store = NbdOptions::new()
        .format(true)
        .timeout(Duration::from_millis(500))
        .connect(&server.uri())
        .unwrap();
    store.set_len(64 << 10).unwrap();
    let map = map(store);
    map.write(0, b"before").unwrap();
    map.flush().unwrap();
    map.write(4096, b"while stuck").unwrap();
    server.pause();
    let began = Instant::now();
    let e = map.flush().unwrap_err();
    let waited = began.elapsed();
    assert!(
        matches!(&e, Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut),
        "{e}"
    );
    assert!(waited < Duration::from_secs(5), "gave up after {waited:?}");
    // A page whose blocks need allocating asks the stuck server, and fails
    // (page 2's were allocated ahead of the sequential writes above, and
    // read as zeros: writing it needs no request at all).
    let e = map.write(10 * 4096, b"x").unwrap_err();
    assert!(matches!(e.error, Error::Io(_)), "{e}");
    map.write(8192, b"no request").unwrap();
    server.resume();
    map.flush().unwrap();
    map.close().unwrap();
    let file = contents(&server.uri());
    assert_eq!(&file[4096..4096 + 11], b"while stuck");
}

/// A flush of many runs is not one round trip per run: every write is in
/// flight at once, so with a server that takes 50 ms per write, 40 runs
/// take far less than 40 x 50 ms.
#[test]
fn a_flush_of_many_runs_is_pipelined() {
    let _dog = Watchdog::new("pipelining", Duration::from_secs(60));
    let (_fs, img) = image(64 << 20, 16 << 20);
    let server = Server::start(
        Program::nbdkit_with(&["delay"], &["delay-write=50ms"]),
        &img,
        Listen::Unix,
    );
    let store = formatted(&server, 4096);
    const RUNS: u64 = 40;
    store.set_len(2 * RUNS * 4096).unwrap();
    let map = map(store);
    for run in 0..RUNS {
        map.write(2 * run * 4096, &[run as u8 + 1; 4096]).unwrap(); // every other page: 40 runs
    }
    let began = Instant::now();
    map.flush().unwrap();
    let took = began.elapsed();
    println!("flush of {RUNS} runs, 50 ms each on the server: {took:?}");
    assert!(
        took < Duration::from_millis(RUNS * 50 / 2),
        "flush took {took:?}: not pipelined"
    );
    map.close().unwrap();
    let file = contents(&server.uri());
    for run in 0..RUNS {
        let at = (2 * run * 4096) as usize;
        assert!(file[at..at + 4096].iter().all(|&b| b == run as u8 + 1));
    }
}

// ---- the differential slice --------------------------------------------

/// Op sequences per server and block size in CI.
const SLICE_OPS: u64 = 10_000;
const SLICE_SEED: u64 = 0x6e62_6473_746f;

/// What one sequence checked.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    ops: u64,
    reads: u64,
    compares: u64,
}

/// Runs the generator's ops through a mapping over `NbdStore`, judged by a
/// plain buffer: every read, and after every flush the server's bytes
/// (through the store) and, at every reopen, through a fresh connection.
struct Differential<'a> {
    uri: &'a str,
    block: u64,
    page: u64,
    map: Option<Mapping>,
    store: Option<Arc<NbdStore>>,
    shadow: Vec<u8>,
    tally: Tally,
}

impl<'a> Differential<'a> {
    fn new(uri: &'a str, block: u64) -> Differential<'a> {
        let store = NbdOptions::new()
            .block_size(block)
            .format(true)
            .connect(uri)
            .unwrap();
        let mut d = Differential {
            uri,
            block,
            page: common::page_size(),
            map: None,
            store: None,
            shadow: Vec::new(),
            tally: Tally::default(),
        };
        d.open(store);
        d
    }

    fn open(&mut self, store: NbdStore) {
        let store = Arc::new(store);
        self.map = Some(map(Arc::clone(&store)));
        self.store = Some(store);
    }

    fn map(&mut self) -> &mut Mapping {
        self.map.as_mut().expect("open between ops")
    }

    fn eof(&self) -> u64 {
        self.shadow.len() as u64
    }

    /// Below EOF raw through the slice (real faults), past it checked.
    fn write(&mut self, offset: u64, bytes: &[u8], raw: bool) -> Result<(), String> {
        let eof = self.eof();
        let inside = eof.saturating_sub(offset).min(bytes.len() as u64) as usize;
        if raw && inside > 0 {
            self.map().as_mut_slice()[offset as usize..offset as usize + inside]
                .copy_from_slice(&bytes[..inside]);
            if inside < bytes.len() {
                let rest = &bytes[inside..];
                self.map()
                    .write(offset + inside as u64, rest)
                    .map_err(|e| format!("write: {e}"))?;
            }
            Ok(())
        } else {
            self.map().write(offset, bytes).map_err(|e| format!("write: {e}"))
        }
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
                self.write(offset, &data(seed, offset, len), raw)?;
                model::write(&mut self.shadow, offset, len, seed);
            }
            Op::Read { offset, len, raw } => {
                let mine = if raw {
                    self.map().as_slice()[offset as usize..(offset + len) as usize].to_vec()
                } else {
                    let mut buf = vec![0; len as usize];
                    self.map()
                        .read(offset, &mut buf)
                        .map_err(|e| format!("read: {e}"))?;
                    buf
                };
                self.judge("read", offset, &mine)?;
                self.tally.reads += 1;
            }
            Op::SetLen { len, seed } => {
                // Pollute the EOF page past EOF: none of it may surface.
                if seed % 2 == 1
                    && let Some((at, n)) = clip(eof, self.page, eof.next_multiple_of(self.page))
                {
                    self.map()
                        .write(at, &data(seed ^ 0x5A, at, n))
                        .map_err(|e| format!("pollute: {e}"))?;
                }
                self.map().set_len(len).map_err(|e| format!("set_len: {e}"))?;
                self.shadow.resize(len as usize, 0);
            }
            Op::Punch { offset, len } => {
                self.map()
                    .punch_hole(offset, len)
                    .map_err(|e| format!("punch: {e}"))?;
                model::punch(&mut self.shadow, offset, len);
            }
            Op::Reserve { offset, len } => {
                self.map()
                    .reserve(offset, len)
                    .map_err(|e| format!("reserve: {e}"))?;
            }
            Op::Flush => {
                self.map().flush().map_err(|e| format!("flush: {e}"))?;
                self.judge_server(0, eof)?;
            }
            Op::FlushRange { offset, len } => {
                self.map()
                    .flush_range(offset, len)
                    .map_err(|e| format!("flush_range: {e}"))?;
                self.judge_server(offset.min(eof), (offset + len).min(eof))?;
            }
            Op::Evict => self.map().evict().map_err(|e| format!("evict: {e}"))?,
            Op::Reopen => self.reopen()?,
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), String> {
        self.store = None;
        let map = self.map.take().expect("open between ops");
        map.close().map_err(|e| format!("close: {e}"))?;
        let fresh = contents(self.uri);
        if fresh.len() as u64 != self.eof() {
            return Err(format!(
                "a fresh connection finds length {}, not {}",
                fresh.len(),
                self.eof()
            ));
        }
        self.judge("fresh connection", 0, &fresh)?;
        let store = NbdStore::connect(self.uri).map_err(|e| format!("reopen: {e}"))?;
        self.open(store);
        Ok(())
    }

    fn judge(&self, what: &str, offset: u64, actual: &[u8]) -> Result<(), String> {
        let expected = &self.shadow[offset as usize..offset as usize + actual.len()];
        match (0..actual.len()).find(|&i| actual[i] != expected[i]) {
            None => Ok(()),
            Some(i) => Err(format!(
                "{what}: byte {} is {:#04x}, expected {:#04x} (block {}, EOF {})",
                offset + i as u64,
                actual[i],
                expected[i],
                self.block,
                self.eof()
            )),
        }
    }

    /// The server's bytes in `[start, end)` and its length, through the store.
    fn judge_server(&mut self, start: u64, end: u64) -> Result<(), String> {
        let store = self.store.as_ref().expect("open");
        if store.len() != self.eof() {
            return Err(format!(
                "the store's length is {}, EOF {}",
                store.len(),
                self.eof()
            ));
        }
        let mut bytes = vec![0; (end - start) as usize];
        store
            .read_at(start, &mut bytes)
            .map_err(|e| format!("store read: {e}"))?;
        self.judge("server after flush", start, &bytes)?;
        self.tally.compares += 1;
        Ok(())
    }

    fn run(mut self, ops: &[Op]) -> Result<Tally, (usize, String)> {
        for (at, &op) in ops.iter().enumerate() {
            self.apply(op).map_err(|e| (at, e))?;
            let len = self.map().len();
            if len != self.eof() {
                return Err((at, format!("mkwrite says EOF {len}, the shadow {}", self.eof())));
            }
            self.map().check_invariants().map_err(|e| (at, e))?;
            self.tally.ops += 1;
        }
        let eof = self.eof();
        self.apply(Op::Read {
            offset: 0,
            len: eof,
            raw: true,
        })
        .and_then(|()| self.reopen())
        .map_err(|e| (ops.len(), e))?;
        Ok(self.tally)
    }
}

fn differential(program: Program, listen: Listen, blocks: &[u64], seed: u64, ops_each: u64) {
    let (_fs, img) = image(256 << 20, 4 * CAPACITY);
    let server = Server::start(program, &img, listen);
    let uri = server.uri();
    let page = common::page_size();
    let mut total = Tally::default();
    let began = Instant::now();
    for &block in blocks {
        let mut done = 0;
        for n in 0.. {
            if done >= ops_each {
                break;
            }
            let sequence_seed = seed.wrapping_mul(1_000_003).wrapping_add(n) ^ (block << 32);
            let ops = Generator::new(sequence_seed, block, page).sequence(200);
            match Differential::new(&uri, block).run(&ops) {
                Ok(t) => {
                    done += t.ops;
                    total.ops += t.ops;
                    total.reads += t.reads;
                    total.compares += t.compares;
                }
                Err((at, why)) => {
                    let log: String = ops[..(at + 1).min(ops.len())]
                        .iter()
                        .map(|op| format!("{op}\n"))
                        .collect();
                    panic!(
                        "{} block {block}: seed {sequence_seed:#x} failed at op {at}: {why}\n{log}",
                        server.name()
                    );
                }
            }
        }
    }
    println!(
        "{}: {} ops, {} reads, {} server compares in {:?}",
        server.name(),
        total.ops,
        total.reads,
        total.compares,
        began.elapsed()
    );
}

#[test]
fn differential_slice_on_nbdkit() {
    let _dog = Watchdog::new("differential nbdkit", Duration::from_secs(240));
    differential(
        Program::nbdkit(),
        Listen::Unix,
        &[512, 4096, 65536],
        SLICE_SEED,
        SLICE_OPS,
    );
}

#[test]
fn differential_slice_on_qemu_nbd() {
    let _dog = Watchdog::new("differential qemu-nbd", Duration::from_secs(240));
    differential(
        Program::QemuNbd,
        Listen::Tcp,
        &[1024, 4096, 16384],
        SLICE_SEED ^ 1,
        SLICE_OPS,
    );
}

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse().unwrap_or_else(|_| panic!("{name} is a count"))
    })
}

#[test]
#[ignore = "long run: MKWRITE_NBD_OPS ops per server and block size (default 100,000)"]
fn long_differential() {
    let ops = env_count("MKWRITE_NBD_OPS", 100_000);
    let seed = env_count("MKWRITE_FSX_SEED", 1);
    differential(Program::nbdkit(), Listen::Unix, &BLOCK_SIZES, seed, ops);
    differential(Program::QemuNbd, Listen::Tcp, &BLOCK_SIZES, seed ^ 1, ops);
}

// ---- power loss --------------------------------------------------------

/// Server kills in CI; the ignored long run does MKWRITE_NBD_KILLS.
const SLICE_KILLS: u64 = 100;
const POWER_OPS: usize = 300;

/// How far the workload got: the op it started last, the last flush
/// (or close) that returned.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    formatted: bool,
    started: Option<usize>,
    flushed: Option<usize>,
}

fn power_ops(seed: u64, block: u64) -> Vec<Op> {
    Generator::new(seed, block, common::page_size()).sequence(POWER_OPS)
}

/// The workload, checked calls only (a raw store would take SIGBUS from a
/// dead server): stops at the first error.
fn power_workload(uri: &str, seed: u64, block: u64, progress: &Mutex<Progress>) {
    let say = |f: &dyn Fn(&mut Progress)| f(&mut progress.lock().unwrap());
    let Ok(store) = NbdOptions::new().block_size(block).format(true).connect(uri) else {
        return;
    };
    say(&|p| p.formatted = true);
    let mut map = MappingOptions::new().capacity(CAPACITY).map_store(store).unwrap();
    let page = map.page_size();
    for (at, op) in power_ops(seed, block).into_iter().enumerate() {
        say(&|p| p.started = Some(at));
        let eof = map.len();
        let Some(op) = op.clipped(eof, page) else {
            continue;
        };
        let ok = match op {
            Op::Write {
                offset, len, seed, ..
            } => map.write(offset, &data(seed, offset, len)).is_ok(),
            Op::SetLen { len, seed } => {
                let polluted = match clip(eof, page, eof.next_multiple_of(page)) {
                    Some((at, n)) => map.write(at, &data(seed ^ 0x5A, at, n)).is_ok(),
                    None => true,
                };
                polluted && map.set_len(len).is_ok()
            }
            Op::Punch { offset, len } => map.punch_hole(offset, len).is_ok(),
            Op::Reserve { offset, len } => map.reserve(offset, len).is_ok(),
            Op::Read { offset, len, .. } => map.read(offset, &mut vec![0; len as usize]).is_ok(),
            Op::Flush => {
                let ok = map.flush().is_ok();
                if ok {
                    say(&|p| p.flushed = Some(at));
                }
                ok
            }
            Op::FlushRange { offset, len } => map.flush_range(offset, len).is_ok(),
            Op::Evict => map.evict().is_ok(),
            Op::Reopen => {
                if map.close().is_err() {
                    return;
                }
                say(&|p| p.flushed = Some(at));
                match NbdStore::connect(uri) {
                    Ok(store) => map = MappingOptions::new().capacity(CAPACITY).map_store(store).unwrap(),
                    Err(_) => return,
                }
                true
            }
        };
        if !ok {
            return; // the server is gone; dropping the mapping tries one last flush, which fails too
        }
    }
    if map.close().is_ok() {
        say(&|p| p.flushed = Some(POWER_OPS));
    }
}

/// Kills a server whose writes are volatile until FLUSH (nbdkit's cache
/// filter, writeback) at random moments of a writing workload; after each
/// restart every byte holds its value at the last completed flush or a
/// later one written to it, at a length the file had.
fn power_loss(kills: u64, seed: u64) {
    let (_fs, img) = image(256 << 20, 4 * CAPACITY);
    let program = Program::nbdkit_with(&["cache"], &["cache=writeback"]);
    let mut campaign = Campaign::new(kills, seed);
    while let Some((run, block, run_seed)) = campaign.next_run(&BLOCK_SIZES) {
        sparse_image(&img, 4 * CAPACITY);
        let mut server = Server::start(program.clone(), &img, Listen::Unix);
        let uri = server.uri();
        let progress = Arc::new(Mutex::new(Progress::default()));
        let began = Instant::now();
        let worker = {
            let (uri, progress) = (uri.clone(), Arc::clone(&progress));
            std::thread::spawn(move || power_workload(&uri, run_seed, block, &progress))
        };
        let until = campaign.kill_after(run).map(|after| began + after);
        while until.is_none_or(|t| Instant::now() < t) && !worker.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let was_killed = !worker.is_finished();
        if was_killed {
            server.kill();
        }
        worker.join().unwrap();
        let p = *progress.lock().unwrap();
        campaign.record(was_killed, p.started, began.elapsed());
        server.restart(); // the cache's unflushed blocks are gone
        verify_power_loss(&uri, run_seed, block, &p);
    }
    println!("{}", campaign.summary("servers", POWER_OPS));
}

fn verify_power_loss(uri: &str, seed: u64, block: u64, p: &Progress) {
    let context = format!("seed {seed}, block {block}, {p:?}");
    let store = match NbdStore::connect(uri) {
        Ok(s) => s,
        Err(e) if !p.formatted => {
            // Killed before the format returned: the export is blank or whole.
            assert!(e.to_string().contains("blank"), "{context}: {e}");
            return;
        }
        Err(e) => panic!("{context}: {e}"),
    };
    let ok = Acceptable::after(&power_ops(seed, block), p.started, p.flushed);
    let mut file = vec![0u8; store.len() as usize];
    store.read_at(0, &mut file).unwrap();
    ok.check(&file, &context);
    // And a mapping opens it with the same bytes.
    let map = MappingOptions::new().capacity(CAPACITY).map_store(store).unwrap();
    let mut reread = vec![0; file.len()];
    map.read(0, &mut reread).unwrap();
    assert!(reread == file, "{context}: the mapping reads other bytes");
    map.close().unwrap();
}

/// The server crashes (losing its unflushed cache) and comes back while a
/// mapping stays open: every failed call is retried until the server
/// answers again, and at the end the server holds exactly what the
/// mapping holds. This needs the reconnect to redo what the crash lost:
/// the flushes whose sync failed keep their pages dirty, the zeroing of
/// length changes and holes is replayed, the header gets the length back.
fn crashes_under_a_live_mapping(runs: u64, crashes_per_run: u64, seed: u64) {
    let (_fs, img) = image(256 << 20, 4 * CAPACITY);
    let program = Program::nbdkit_with(&["cache"], &["cache=writeback"]);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut retried = 0;
    for run in 0..runs {
        let block = BLOCK_SIZES[run as usize % BLOCK_SIZES.len()];
        let run_seed = seed + run;
        sparse_image(&img, 4 * CAPACITY);
        let mut server = Server::start(program.clone(), &img, Listen::Unix);
        let uri = server.uri();
        let store = NbdOptions::new()
            .block_size(block)
            .format(true)
            .timeout(Duration::from_secs(5))
            .connect(&uri)
            .unwrap();
        let map = Arc::new(MappingOptions::new().capacity(CAPACITY).map_store(store).unwrap());
        let ops = Generator::new(run_seed, block, common::page_size()).sequence(POWER_OPS);
        let worker = {
            let (map, ops) = (Arc::clone(&map), ops.clone());
            std::thread::spawn(move || live_workload(&map, &ops))
        };
        for _ in 0..crashes_per_run {
            std::thread::sleep(Duration::from_micros(rng.random_range(0..40_000)));
            server.kill();
            std::thread::sleep(Duration::from_micros(rng.random_range(0..20_000)));
            server.restart();
        }
        let (shadow, tries) = worker.join().unwrap();
        retried += tries;
        let map = Arc::into_inner(map).expect("the worker is done");
        map.close().unwrap();
        let file = contents(&uri);
        let context = format!("seed {run_seed}, block {block}");
        assert_eq!(file.len(), shadow.len(), "{context}: length");
        if let Some(at) = (0..file.len()).find(|&at| file[at] != shadow[at]) {
            panic!(
                "{context}: byte {at} is {:#04x} on the server, {:#04x} in the file",
                file[at], shadow[at]
            );
        }
    }
    println!(
        "{runs} runs, {} server crashes under a live mapping, {retried} calls retried",
        runs * crashes_per_run
    );
}

/// Runs `ops` with checked calls, retrying each failed one until it
/// succeeds; returns the file the ops make and how many calls failed.
fn live_workload(map: &Mapping, ops: &[Op]) -> (Vec<u8>, u64) {
    let page = map.page_size();
    let mut file = Vec::new();
    let mut tries = 0;
    let mut retry = |what: &Op, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            tries += 1;
            assert!(Instant::now() < deadline, "{what} failed for 30 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    for &op in ops {
        let eof = map.len();
        let Some(op) = op.clipped(eof, page) else {
            continue;
        };
        match op {
            Op::Write {
                offset, len, seed, ..
            } => retry(&op, &|| map.write(offset, &data(seed, offset, len)).is_ok()),
            Op::SetLen { len, .. } => retry(&op, &|| map.set_len(len).is_ok()),
            Op::Punch { offset, len } => retry(&op, &|| map.punch_hole(offset, len).is_ok()),
            Op::Reserve { offset, len } => retry(&op, &|| map.reserve(offset, len).is_ok()),
            Op::Read { offset, len, .. } => {
                retry(&op, &|| map.read(offset, &mut vec![0; len as usize]).is_ok())
            }
            Op::Flush | Op::Reopen => retry(&op, &|| map.flush().is_ok()),
            Op::FlushRange { offset, len } => retry(&op, &|| map.flush_range(offset, len).is_ok()),
            Op::Evict => retry(&op, &|| map.evict().is_ok()),
        }
        model::apply(&mut file, op);
    }
    retry(&Op::Flush, &|| map.flush().is_ok());
    (file, tries)
}

#[test]
fn crashes_under_a_live_mapping_slice() {
    let _dog = Watchdog::new("live crashes", Duration::from_secs(240));
    crashes_under_a_live_mapping(30, 3, 7);
}

#[test]
#[ignore = "long run: MKWRITE_NBD_LIVE_RUNS runs of three crashes each (default 300)"]
fn long_crashes_under_a_live_mapping() {
    crashes_under_a_live_mapping(env_count("MKWRITE_NBD_LIVE_RUNS", 300), 3, 1 << 32);
}

#[test]
fn power_loss_slice() {
    let _dog = Watchdog::new("power loss", Duration::from_secs(240));
    power_loss(SLICE_KILLS, 0);
}

#[test]
#[ignore = "long run: MKWRITE_NBD_KILLS server kills (default 300)"]
fn long_power_loss() {
    power_loss(env_count("MKWRITE_NBD_KILLS", 300), 1 << 32);
}
