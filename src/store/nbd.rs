//! A store on a network block device, reached with the NBD protocol (served
//! by nbdkit, qemu-nbd, rbd-nbd, ...), so a full remote volume fails a
//! mapping's write at the fault exactly as a full local disk does.
//!
//! | [`Store`] | NBD |
//! | --- | --- |
//! | `allocate` | `NBD_CMD_WRITE_ZEROES` with `NBD_CMD_FLAG_NO_HOLE`: the server must provision the range; a full one answers `NBD_ENOSPC` |
//! | `deallocate`, shrinking | `NBD_CMD_WRITE_ZEROES` without `NO_HOLE` (the server may punch, and must read back zeros; `NBD_CMD_TRIM` would leave the contents undefined) |
//! | `read_at`, `write_at` | `NBD_CMD_READ`, `NBD_CMD_WRITE` |
//! | `sync` | `NBD_CMD_FLUSH` |
//! | `allocated` | `NBD_CMD_BLOCK_STATUS`, `base:allocation` |
//! | `len`, `set_len` | the header at the export's start (see below) |
//!
//! Modules: `proto` (the wire format), `client` (one connection: handshake,
//! pipelined requests, the reader thread), `writes` (write-behind
//! bookkeeping), `header` (the file length), `uri` (NBD URIs).

mod client;
#[cfg(test)]
mod fake;
mod header;
mod proto;
mod uri;
mod writes;

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use fixedbitset::FixedBitSet;

use self::client::{Client, Reply};
use self::header::{AREA, Found, Header, SLOT};
use self::proto::*;
use self::uri::Target;
use self::writes::Writes;
use super::{Store, runs};
use crate::error::{Error, Result};
use crate::geometry::check_block_size;

/// How long a server may take to answer one request before the
/// connection is given up (so a stuck server cannot hang a fault forever).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The block size of an export formatted without one.
const DEFAULT_BLOCK_SIZE: u64 = 4096;

/// Bytes per read or write request; larger transfers are split into
/// several requests in flight together.
const IO_CHUNK: u64 = 4 << 20;
/// Bytes per write-zeroes request.
const ZERO_CHUNK: u64 = 256 << 20;
/// Bytes per block status query.
const STATUS_CHUNK: u64 = 1 << 30;

/// How to open an [`NbdStore`], in the style of [`MappingOptions`](crate::MappingOptions).
///
/// ```no_run
/// use mkwrite::store::NbdOptions;
/// let store = NbdOptions::new()
///     .create(true)            // a blank export gets a header
///     .block_size(4096)        // the allocation unit of a new export
///     .connect("nbd+unix:///data?socket=/run/nbd.sock")?;
/// # Ok::<(), mkwrite::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NbdOptions {
    block_size: Option<u64>,
    create: bool,
    format: bool,
    timeout: Duration,
    reconnect: bool,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            block_size: None,
            create: false,
            format: false,
            timeout: DEFAULT_TIMEOUT,
            reconnect: true,
        }
    }
}

impl NbdOptions {
    /// Defaults: open an export that already has mkwrite's header, 30 s
    /// timeout, reconnect after a lost connection.
    ///
    /// ```no_run
    /// use mkwrite::{Store, store::NbdOptions};
    /// let store = NbdOptions::new().connect("nbd://127.0.0.1/db")?; // formatted before
    /// println!("{} bytes on {}", store.len(), store.uri());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new() -> NbdOptions {
        NbdOptions::default()
    }

    /// The block size for a new export (default 4 KiB). An existing
    /// export keeps the one it was formatted with; asking for another fails.
    ///
    /// ```no_run
    /// use mkwrite::{Store, store::NbdOptions};
    /// let store = NbdOptions::new().create(true).block_size(65536).connect("nbd://127.0.0.1/db")?;
    /// assert_eq!(store.block_size(), 65536);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn block_size(&mut self, bytes: u64) -> &mut Self {
        self.block_size = Some(bytes);
        self
    }

    /// Initialise a blank export (one whose header area reads as zeros),
    /// as `O_CREAT` creates a missing file. An export holding anything
    /// else is still refused.
    ///
    /// ```no_run
    /// use mkwrite::{Store, store::NbdOptions};
    /// // A new `nbdkit memory 1G` export reads as zeros: blank, so it is initialised.
    /// let store = NbdOptions::new().create(true).connect("nbd://127.0.0.1/")?;
    /// assert!(store.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(&mut self, yes: bool) -> &mut Self {
        self.create = yes;
        self
    }

    /// Initialise the export whatever it holds: its file becomes empty
    /// (length 0). Destroys what was there.
    ///
    /// ```no_run
    /// use mkwrite::{Store, store::NbdOptions};
    /// // A volume that held a filesystem once: start over on it.
    /// let store = NbdOptions::new().format(true).connect("nbd://10.0.0.7/old-volume")?;
    /// assert!(store.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn format(&mut self, yes: bool) -> &mut Self {
        self.format = yes;
        self
    }

    /// How long one request may take (default 30 s). After it the
    /// connection is dropped and the call fails with `TimedOut`.
    ///
    /// ```no_run
    /// use mkwrite::store::NbdOptions;
    /// use std::time::Duration;
    /// // A fault waits on the server: give up on a stuck one sooner.
    /// let store = NbdOptions::new().timeout(Duration::from_secs(5)).connect("nbd://127.0.0.1/db")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Whether a call after a lost connection connects again (default
    /// true). See [`NbdStore`] for what a reconnect redoes.
    ///
    /// ```no_run
    /// use mkwrite::store::NbdOptions;
    /// // Every call after a lost connection fails: an operator restarts the process.
    /// let store = NbdOptions::new().reconnect(false).connect("nbd://127.0.0.1/db")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reconnect(&mut self, yes: bool) -> &mut Self {
        self.reconnect = yes;
        self
    }

    /// Connects to `uri` (`nbd://HOST[:PORT]/EXPORT` or
    /// `nbd+unix:///EXPORT?socket=PATH`) and opens the file on it.
    ///
    /// ```
    /// use mkwrite::{Error, store::NbdOptions};
    /// let uri = "nbd+unix:///db?socket=/nonexistent/nbd.sock";
    /// let err = NbdOptions::new().connect(uri).unwrap_err(); // no server there
    /// assert!(matches!(&err, Error::Open { path, .. } if path.to_str() == Some(uri)));
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Open`] naming the URI when the server cannot be reached or
    /// refuses the export; when it does not advertise `WRITE_ZEROES`
    /// (allocation cannot be promised); when the export is read-only or
    /// wants aligned requests; when it holds no mkwrite header and neither
    /// [`create`](Self::create) (for a blank export) nor
    /// [`format`](Self::format) allows making one.
    pub fn connect(&self, uri: &str) -> Result<NbdStore> {
        let open = |source: io::Error| Error::Open {
            path: PathBuf::from(uri),
            source,
        };
        let refuse = |kind: io::ErrorKind, why: String| open(io::Error::new(kind, why));
        let block = check_block_size(self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE))?;
        let target = uri::parse(uri).map_err(open)?;
        let client = Client::connect(&target, self.timeout).map_err(open)?;
        usable(&client).map_err(open)?;
        let area = read_area(&client).map_err(open)?;
        let header = match header::find(&area) {
            Found::Valid(h) if !self.format => {
                if let Some(b) = self.block_size.filter(|&b| b != h.block_size) {
                    return Err(refuse(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "the export was formatted with {} B blocks, not {b} B; open it without a block size",
                            h.block_size
                        ),
                    ));
                }
                h
            }
            Found::Blank if self.create => format(&client, block).map_err(open)?,
            _ if self.format => format(&client, block).map_err(open)?,
            Found::Blank => {
                return Err(refuse(
                    io::ErrorKind::NotFound,
                    "the export is blank (no mkwrite header yet): create(true) initialises it".into(),
                ));
            }
            Found::Damaged => {
                return Err(refuse(
                    io::ErrorKind::InvalidData,
                    "the export's mkwrite header is damaged (both slots fail their checksum) or of \
                     another version; format(true) initialises it again, destroying its contents"
                        .into(),
                ));
            }
            Found::Valid(_) | Found::Foreign => {
                return Err(refuse(
                    io::ErrorKind::InvalidData,
                    "the export is not an mkwrite export (no header magic at its start); format(true) \
                     initialises it, destroying its contents"
                        .into(),
                ));
            }
        };
        let room = room(client.info().size, &header);
        if header.len > room {
            return Err(refuse(
                io::ErrorKind::InvalidData,
                format!(
                    "the file is {} bytes but the export now holds only {room}",
                    header.len
                ),
            ));
        }
        let allocated = scan(&client, &header).map_err(open)?;
        Ok(NbdStore {
            uri: uri.to_owned(),
            target,
            timeout: self.timeout,
            reconnect: self.reconnect,
            conn: Mutex::new(Arc::new(client)),
            reconnecting: Mutex::new(()),
            block: header.block_size,
            data_offset: header.data_offset,
            volume: header.volume,
            room: AtomicU64::new(room),
            len: AtomicU64::new(header.len),
            resize: RwLock::new(()),
            generation: Mutex::new(header.generation),
            allocated: Mutex::new(allocated),
            writes: Arc::new(Writes::default()),
            journal: Mutex::new(Vec::new()),
            unsettled: AtomicBool::new(false),
        })
    }
}

/// A file on an NBD export.
///
/// **Layout.** The export begins with mkwrite's header (the file length,
/// in two checksummed slots; the format is in `src/store/nbd/header.rs`)
/// and the file's bytes start at its *data offset*, the block size or
/// 4 KiB, whichever is larger. The length is written by
/// [`set_len`](Store::set_len) and durable after [`sync`](Store::sync).
/// Growing zeroes the new range first (so nothing an earlier, longer file
/// left there reappears, even after a crash); shrinking frees the blocks
/// past the new end.
///
/// **Allocation.** A block is allocated when `NBD_CMD_BLOCK_STATUS` says
/// any of it is not a zero hole, or after `allocate` provisioned it with
/// `WRITE_ZEROES` + `NO_HOLE`. Since provisioning writes zeros, only blocks
/// known to hold nothing are provisioned; a server without block status
/// has every block below EOF counted as allocated when opened (writes to
/// holes there are then provisioned by the server at flush, as with a
/// plain write).
///
/// **Pipelining.** Requests from all threads share one connection, and
/// each call sends its requests before waiting for any: a large read, a
/// large allocation or a length change is several requests in flight.
/// [`write_at`](Store::write_at) is *write-behind*: it returns once its
/// data is sent, so a flush's many runs are in flight together and its
/// one round trip is the final `sync`. A write the server fails is reported
/// by the next `write_at` or `sync` (a flush, which ends in `sync`, keeps
/// its pages dirty). Reads and allocations wait for the writes in flight
/// over the same bytes.
///
/// **Failures.** No-space answers become `ENOSPC` (`EDQUOT` if a server
/// sends Linux's quota number), so the mapping reports [`Error::NoSpace`];
/// other NBD errors become their errno. A closed or reset connection is an
/// I/O error, and a server that does not answer within the timeout (30 s by
/// default) is one too, `TimedOut`: never a hang.
///
/// **Reconnect.** After a lost connection the next call connects again
/// (unless [`NbdOptions::reconnect`] is off), checks the export is the
/// same volume, redoes the zeroing of length changes and hole punches
/// since the last sync (a restarted server may have lost them) and writes
/// the header again if its length differs. Writes sent since the last sync
/// are not resent: the flush they belong to fails (its `sync` reports the
/// lost connection) and so keeps their pages dirty for the next flush.
/// Provisioning since the last sync is not redone; if the server lost it,
/// those blocks are provisioned at the next flush's write instead.
///
/// ```no_run
/// use mkwrite::{MappingOptions, NbdStore, Store};
/// let store = NbdStore::create("nbd://127.0.0.1:10809/db")?;
/// store.set_len(1 << 20)?;
/// let map = MappingOptions::new().map_store(store)?;
/// map.write(0, b"stored on the network")?; // NoSpace here if the volume is full
/// map.flush()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NbdStore {
    uri: String,
    target: Target,
    timeout: Duration,
    reconnect: bool,
    conn: Mutex<Arc<Client>>,
    /// One reconnect at a time.
    reconnecting: Mutex<()>,
    block: u64,
    data_offset: u64,
    volume: u64,
    /// File bytes the export can hold: whole blocks after the data offset.
    room: AtomicU64,
    len: AtomicU64,
    /// Shared by reads, writes and allocations, exclusive for length
    /// changes: nothing is sent past an EOF that is moving.
    resize: RwLock<()>,
    /// The generation of the last header written; serializes header writes.
    generation: Mutex<u64>,
    /// Blocks known to be provisioned. A block below EOF not in here
    /// reads as zeros, which is what lets `allocate` write zeros to it.
    allocated: Mutex<FixedBitSet>,
    writes: Arc<Writes>,
    /// Zeroing done since the last sync, redone after a reconnect.
    journal: Mutex<Vec<Zero>>,
    /// Writes were sent that no `sync` or failed `write_at` has settled
    /// yet: a flush is under way.
    unsettled: AtomicBool,
}

impl std::fmt::Debug for NbdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdStore")
            .field("uri", &self.uri)
            .field("block", &self.block)
            .field("data_offset", &self.data_offset)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Zeros over an export range; `keep` asks the server to keep it provisioned.
#[derive(Debug, Clone)]
struct Zero {
    range: Range<u64>,
    keep: bool,
}

impl NbdStore {
    /// Opens the mkwrite file on the export at `uri`, which must have been
    /// initialised ([`create`](NbdStore::create) or [`NbdOptions::format`]).
    ///
    /// ```no_run
    /// use mkwrite::{MappingOptions, NbdStore};
    /// let map = MappingOptions::new().map_store(NbdStore::connect("nbd://127.0.0.1/db")?)?;
    /// let mut first = [0; 16];
    /// map.read(0, &mut first)?; // the page comes over the network (NBD_CMD_READ)
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`NbdOptions::connect`]; [`Error::Open`] for an export without
    /// mkwrite's header.
    pub fn connect(uri: &str) -> Result<NbdStore> {
        NbdOptions::new().connect(uri)
    }

    /// Opens the file on the export at `uri`, initialising a blank export
    /// (4 KiB blocks, length 0) first.
    ///
    /// ```no_run
    /// use mkwrite::{NbdStore, Store};
    /// let store = NbdStore::create("nbd+unix:///db?socket=/run/nbd.sock")?;
    /// assert_eq!(store.block_size(), 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`NbdOptions::connect`]; [`Error::Open`] for an export that is
    /// neither blank nor mkwrite's.
    pub fn create(uri: &str) -> Result<NbdStore> {
        NbdOptions::new().create(true).connect(uri)
    }

    /// The URI this store was opened with.
    ///
    /// ```no_run
    /// use mkwrite::NbdStore;
    /// let store = NbdStore::connect("nbd://127.0.0.1/db")?;
    /// assert_eq!(store.uri(), "nbd://127.0.0.1/db");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Export bytes before file offset 0 (the header area): the block size
    /// or 4 KiB, whichever is larger.
    ///
    /// ```no_run
    /// use mkwrite::{NbdStore, Store};
    /// let store = NbdStore::connect("nbd://127.0.0.1/db")?;
    /// assert_eq!(store.data_offset(), store.block_size().max(4096));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The largest length the file can have on this export: a mapping's
    /// [`capacity`](crate::MappingOptions::capacity) need not be larger.
    ///
    /// ```no_run
    /// use mkwrite::{MappingOptions, NbdStore};
    /// let store = NbdStore::connect("nbd://127.0.0.1/db")?;
    /// let max = store.max_len();
    /// let map = MappingOptions::new().capacity(max).map_store(store)?;
    /// map.set_len(max)?; // the whole export
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_len(&self) -> u64 {
        self.room.load(Ordering::SeqCst)
    }

    fn lock_conn(&self) -> MutexGuard<'_, Arc<Client>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_bits(&self) -> MutexGuard<'_, FixedBitSet> {
        self.allocated.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_journal(&self) -> MutexGuard<'_, Vec<Zero>> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection, connecting again if it was lost.
    fn client(&self) -> io::Result<Arc<Client>> {
        let current = Arc::clone(&self.lock_conn());
        let Some(lost) = current.dead_error() else {
            return Ok(current);
        };
        if !self.reconnect {
            return Err(lost);
        }
        let _one = self.reconnecting.lock().unwrap_or_else(|e| e.into_inner());
        let current = Arc::clone(&self.lock_conn());
        if !current.is_dead() {
            return Ok(current); // another thread reconnected meanwhile
        }
        let fresh = Arc::new(self.reopen()?);
        *self.lock_conn() = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// Connects again: the same volume, the zeroing since the last sync
    /// redone, our length in the header.
    fn reopen(&self) -> io::Result<Client> {
        let client = Client::connect(&self.target, self.timeout)?;
        usable(&client)?;
        let found = match header::find(&read_area(&client)?) {
            Found::Valid(h)
                if h.volume == self.volume
                    && h.block_size == self.block
                    && h.data_offset == self.data_offset =>
            {
                h
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "after reconnecting, {} is no longer the export this store opened",
                        self.uri
                    ),
                ));
            }
        };
        let room = room(client.info().size, &found);
        if room < self.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("after reconnecting, {} holds only {room} bytes", self.uri),
            ));
        }
        self.room.store(room, Ordering::SeqCst);
        let journal = self.lock_journal().clone();
        zero(&client, &journal)?;
        {
            // The server's header is the one to follow: if it restarted,
            // later generations were lost, and the next goes to its other slot.
            let mut generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
            *generation = found.generation;
            if found.len != self.len() {
                self.write_header(&client, &mut generation, self.len())?;
            }
        }
        if self.unsettled.swap(false, Ordering::SeqCst) {
            // The flush under way sent writes on the lost connection: its
            // sync must fail so it keeps its pages dirty.
            self.writes.fail(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the NBD connection was lost and made again; writes since the last sync are redone by the next flush",
            ));
        }
        Ok(client)
    }

    /// Waits for the write-behind writes over `range` (all, for `None`). A
    /// server that does not answer them in time loses its connection, which
    /// fails them; the failure is reported by the next `write_at` or `sync`.
    fn settle(&self, range: Option<Range<u64>>) {
        if !self.writes.wait(range.as_ref(), self.timeout) {
            let late = io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the NBD server did not answer writes within {:?}", self.timeout),
            );
            self.lock_conn().kill(&late);
            self.writes.wait(range.as_ref(), self.timeout);
        }
    }

    /// After a failed `write_at`: the flush stops and keeps its pages dirty,
    /// so what else it had in flight is settled and forgotten.
    fn abandon_writes(&self, e: io::Error) -> io::Error {
        self.settle(None);
        self.writes.take_failure();
        self.unsettled.store(false, Ordering::SeqCst);
        e
    }

    /// Writes the header with `len` in the next slot.
    fn write_header(&self, client: &Client, generation: &mut u64, len: u64) -> io::Result<()> {
        let h = Header {
            block_size: self.block,
            data_offset: self.data_offset,
            len,
            volume: self.volume,
            generation: *generation + 1,
        };
        client.call(CMD_WRITE, 0, h.slot_offset(), SLOT as u32, &h.encode())?;
        *generation = h.generation;
        Ok(())
    }

    /// The export range of file blocks `blocks`.
    fn export_range(&self, blocks: &Range<u64>) -> Range<u64> {
        self.data_offset + blocks.start * self.block..self.data_offset + blocks.end * self.block
    }

    fn io_chunk(client: &Client) -> u64 {
        IO_CHUNK.min(u64::from(client.info().max_block).max(4096))
    }
}

/// Refuses exports mkwrite cannot keep its promise on.
fn usable(client: &Client) -> io::Result<()> {
    let info = client.info();
    if !info.has(TFLAG_SEND_WRITE_ZEROES) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the NBD server does not advertise WRITE_ZEROES, so blocks cannot be provisioned ahead \
             of a write: allocation cannot be promised",
        ));
    }
    if info.has(TFLAG_READ_ONLY) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the NBD export is read-only",
        ));
    }
    if info.min_block > 1 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the NBD server wants requests aligned to {} bytes; NbdStore sends byte-granular ones",
                info.min_block
            ),
        ));
    }
    if info.size < AREA as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the export is {} bytes, too small for mkwrite's header",
                info.size
            ),
        ));
    }
    Ok(())
}

fn read_area(client: &Client) -> io::Result<Vec<u8>> {
    Ok(client.call(CMD_READ, 0, 0, AREA as u32, &[])?.data)
}

/// File bytes an export of `size` holds: whole blocks after the data offset.
fn room(size: u64, h: &Header) -> u64 {
    size.saturating_sub(h.data_offset) / h.block_size * h.block_size
}

/// Initialises the header: length 0, a new volume id, and the other slot
/// cleared so nothing older can win. Durable before it returns.
fn format(client: &Client, block: u64) -> io::Result<Header> {
    let h = Header {
        block_size: block,
        data_offset: block.max(4096),
        len: 0,
        volume: random_u64(),
        generation: 1,
    };
    if client.info().size < h.data_offset + block {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the export is {} bytes, too small for a header and one {block} B block",
                client.info().size
            ),
        ));
    }
    let mut area = vec![0u8; AREA];
    let at = h.slot_offset() as usize;
    area[at..at + SLOT].copy_from_slice(&h.encode());
    client.call(CMD_WRITE, 0, 0, AREA as u32, &area)?;
    if client.info().has(TFLAG_SEND_FLUSH) {
        client.call(CMD_FLUSH, 0, 0, 0, &[])?;
    }
    Ok(h)
}

fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    // RandomState is seeded from the system's randomness; the time and pid
    // make two ids differ even if it were not.
    std::collections::hash_map::RandomState::new()
        .hash_one((std::time::SystemTime::now(), std::process::id()))
}

/// The blocks below EOF that hold anything, from `base:allocation`: a block
/// is free only if all of it is a hole that reads as zeros. Without block
/// status every block below EOF counts (see [`NbdStore`]).
fn scan(client: &Client, h: &Header) -> io::Result<FixedBitSet> {
    let blocks = h.len.div_ceil(h.block_size);
    let mut bits = FixedBitSet::with_capacity(blocks as usize);
    if !client.has_block_status() {
        bits.insert_range(..);
        return Ok(bits);
    }
    let (start, end) = (h.data_offset, h.data_offset + blocks * h.block_size);
    let mut at = start;
    while at < end {
        let ask = (end - at).min(STATUS_CHUNK) as u32;
        for (len, status) in client.block_status(at, ask)? {
            if len == 0 {
                return Err(violation("a block status descriptor of length 0"));
            }
            let stop = (at + u64::from(len)).min(end);
            if status & (STATE_HOLE | STATE_ZERO) != STATE_HOLE | STATE_ZERO {
                let first = (at - start) / h.block_size;
                let last = (stop - start).div_ceil(h.block_size);
                bits.insert_range(first as usize..last as usize);
            }
            at = stop;
            if at >= end {
                break;
            }
        }
    }
    Ok(bits)
}

/// `range` in pieces of at most `chunk` bytes.
fn pieces(range: Range<u64>, chunk: u64) -> impl Iterator<Item = Range<u64>> {
    (range.start..range.end)
        .step_by(chunk as usize)
        .map(move |at| at..(at + chunk).min(range.end))
}

/// Sends a request per piece, all before waiting for any, then waits for
/// all of them; the first error wins (and nothing is left in flight).
fn pipeline(
    client: &Client,
    cmd: u16,
    flags: u16,
    ranges: impl IntoIterator<Item = Range<u64>>,
) -> io::Result<Vec<Reply>> {
    let mut cookies = Vec::new();
    let mut failed = None;
    for r in ranges {
        match client.submit(cmd, flags, r.start, (r.end - r.start) as u32, &[], None) {
            Ok(c) => cookies.push(c),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let replies = client.wait_all(cookies);
    match failed {
        Some(e) => Err(e),
        None => replies,
    }
}

/// Writes zeros over each range, pipelined.
fn zero(client: &Client, zeros: &[Zero]) -> io::Result<()> {
    for keep in [true, false] {
        let flags = if keep { CMD_FLAG_NO_HOLE } else { 0 };
        let ranges = zeros
            .iter()
            .filter(|z| z.keep == keep)
            .flat_map(|z| pieces(z.range.clone(), ZERO_CHUNK));
        pipeline(client, CMD_WRITE_ZEROES, flags, ranges)?;
    }
    Ok(())
}

impl Store for NbdStore {
    fn block_size(&self) -> u64 {
        self.block
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::SeqCst)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let _resize = self.resize.read().unwrap_or_else(|e| e.into_inner());
        let visible = super::below_eof(self.len(), offset, buf.len());
        buf[visible..].fill(0);
        if visible == 0 {
            return Ok(());
        }
        let start = self.data_offset + offset;
        let range = start..start + visible as u64;
        self.settle(Some(range.clone()));
        let client = self.client()?;
        let chunk = Self::io_chunk(&client);
        let replies = pipeline(&client, CMD_READ, 0, pieces(range, chunk))?;
        for (piece, reply) in buf[..visible].chunks_mut(chunk as usize).zip(replies) {
            let data = reply
                .data
                .get(..piece.len())
                .ok_or_else(|| violation("a read answered with fewer bytes than asked"))?;
            piece.copy_from_slice(data);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _resize = self.resize.read().unwrap_or_else(|e| e.into_inner());
        let visible = super::below_eof(self.len(), offset, data.len()) as u64;
        let client = self.client().map_err(|e| self.abandon_writes(e))?;
        if let Some(e) = self.writes.take_failure() {
            return Err(self.abandon_writes(e));
        }
        if visible == 0 {
            return Ok(());
        }
        let start = self.data_offset + offset;
        let chunk = Self::io_chunk(&client);
        for piece in pieces(start..start + visible, chunk) {
            let bytes = &data[(piece.start - start) as usize..(piece.end - start) as usize];
            let id = self.writes.begin(piece.clone());
            let writes = Arc::clone(&self.writes);
            let done = Box::new(move |result| writes.end(id, result));
            if let Err(e) = client.submit(CMD_WRITE, 0, piece.start, bytes.len() as u32, bytes, Some(done)) {
                self.writes.end(id, Ok(()));
                return Err(self.abandon_writes(e));
            }
        }
        self.unsettled.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn allocate(&self, blocks: Range<u64>) -> io::Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let _resize = self.resize.read().unwrap_or_else(|e| e.into_inner());
        if blocks.end * self.block > self.max_len() {
            // The export ends before these blocks: no room, as a full disk.
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        // Held across the requests: two allocators never zero one block.
        let mut bits = self.lock_bits();
        let missing: Vec<u64> = blocks.clone().filter(|&b| !bits.contains(b as usize)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let zeros: Vec<Zero> = runs(missing.iter().copied())
            .iter()
            .map(|r| Zero {
                range: self.export_range(r),
                keep: true,
            })
            .collect();
        let span = self.export_range(&blocks);
        self.settle(Some(span));
        zero(&*self.client()?, &zeros)?;
        bits.grow(blocks.end as usize);
        for b in missing {
            bits.insert(b as usize);
        }
        Ok(())
    }

    fn deallocate(&self, blocks: Range<u64>) -> io::Result<()> {
        let _resize = self.resize.read().unwrap_or_else(|e| e.into_inner());
        let blocks = blocks.start..blocks.end.min(self.max_len() / self.block);
        if blocks.is_empty() {
            return Ok(());
        }
        let mut bits = self.lock_bits();
        let z = Zero {
            range: self.export_range(&blocks),
            keep: false,
        };
        self.settle(Some(z.range.clone()));
        zero(&*self.client()?, std::slice::from_ref(&z))?;
        self.lock_journal().push(z);
        let end = (blocks.end as usize).min(bits.len());
        if (blocks.start as usize) < end {
            bits.remove_range(blocks.start as usize..end);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let _resize = self.resize.write().unwrap_or_else(|e| e.into_inner());
        let old = self.len();
        if len == old {
            return Ok(());
        }
        if len > self.max_len() {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("the NBD export holds at most {} bytes of file", self.max_len()),
            ));
        }
        self.settle(None);
        let client = self.client()?;
        let mut bits = self.lock_bits();
        // Between the two ends: the tail of the block holding the lower
        // one is zeroed in place (if it was provisioned; if not it reads as
        // zeros already), the whole blocks above it are punched.
        let (low, high) = (old.min(len), old.max(len));
        let low_end = low.next_multiple_of(self.block);
        let mut zeros = Vec::new();
        if low < low_end && bits.contains((low / self.block) as usize) {
            zeros.push(Zero {
                range: self.data_offset + low..self.data_offset + low_end,
                keep: true,
            });
        }
        let whole = low_end / self.block..high.div_ceil(self.block);
        if !whole.is_empty() {
            zeros.push(Zero {
                range: self.export_range(&whole),
                keep: false,
            });
        }
        let mut generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        if len > old {
            // Growing: zeros first, so the new range never shows what an
            // earlier, longer file left there.
            zero(&client, &zeros)?;
            self.write_header(&client, &mut generation, len)?;
        } else {
            // Shrinking: the new length first, so bytes still in the file
            // are never zeroed. Freeing the rest only reclaims space (a
            // later growth zeroes again), so its failure is reported by the
            // next sync rather than undoing the length.
            self.write_header(&client, &mut generation, len)?;
            if let Err(e) = zero(&client, &zeros) {
                self.writes.fail(e);
            }
        }
        self.len.store(len, Ordering::SeqCst);
        self.lock_journal().extend(zeros);
        let end = bits.len();
        if (low_end / self.block) < end as u64 {
            bits.remove_range((low_end / self.block) as usize..end);
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.settle(None);
        // A failed write is the answer, before any reconnect is tried.
        let failed = self.writes.take_failure();
        let result = failed
            .map_or(Ok(()), Err)
            .and_then(|()| self.client())
            .and_then(|client| {
                if let Some(e) = self.writes.take_failure() {
                    return Err(e); // the reconnect found writes of this flush lost
                }
                // Zeroing journaled before the flush is durable after it.
                let journaled = self.lock_journal().len();
                if client.info().has(TFLAG_SEND_FLUSH) {
                    client.call(CMD_FLUSH, 0, 0, 0, &[])?;
                }
                self.lock_journal().drain(..journaled);
                Ok(())
            });
        // Success or failure, the flush that called this is settled: its
        // pages are clean, or dirty again.
        self.unsettled.store(false, Ordering::SeqCst);
        if result.is_err() {
            self.writes.take_failure();
        }
        result
    }

    fn allocated(&self) -> io::Result<Vec<Range<u64>>> {
        let below_eof = self.len().div_ceil(self.block) as usize;
        Ok(runs(
            self.lock_bits()
                .ones()
                .take_while(|&b| b < below_eof)
                .map(|b| b as u64),
        ))
    }

    /// `allocate` writes zeros over every block its bitmap does not hold,
    /// and `allocated` reports that bitmap.
    fn unallocated_reads_zero(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Fake, FakeOptions};
    use super::*;

    fn uri(fake: &Fake) -> String {
        fake.target().to_string()
    }

    #[test]
    fn a_blank_export_is_created_and_reopened() {
        let fake = Fake::start(FakeOptions::default());
        let e = NbdStore::connect(&uri(&fake)).unwrap_err();
        assert!(e.to_string().contains("create(true)"), "{e}");
        let s = NbdOptions::new()
            .block_size(1024)
            .create(true)
            .connect(&uri(&fake))
            .unwrap();
        assert_eq!((s.block_size(), s.data_offset(), s.len()), (1024, 4096, 0));
        s.set_len(10_000).unwrap();
        s.allocate(0..5).unwrap();
        s.write_at(5000, b"hello").unwrap();
        s.sync().unwrap();
        drop(s);
        let s = NbdStore::connect(&uri(&fake)).unwrap();
        assert_eq!(s.len(), 10_000);
        let mut buf = [0u8; 5];
        s.read_at(5000, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // The fake reports 4 KiB extents: blocks 0..4 hold only the zeros
        // of their provisioning, so they count as free; 4..8 hold "hello".
        assert_eq!(s.allocated().unwrap(), vec![4..8]);
        drop(s); // the fake serves one connection at a time
        let e = NbdOptions::new()
            .block_size(512)
            .connect(&uri(&fake))
            .unwrap_err();
        assert!(e.to_string().contains("1024 B blocks"), "{e}");
    }

    #[test]
    fn allocation_never_zeroes_data() {
        let fake = Fake::start(FakeOptions::default());
        let s = NbdOptions::new()
            .block_size(512)
            .create(true)
            .connect(&uri(&fake))
            .unwrap();
        s.set_len(4096).unwrap();
        s.allocate(1..2).unwrap();
        s.write_at(512, &[7; 512]).unwrap();
        // Blocks 0..4 with block 1 already provisioned and holding data.
        s.allocate(0..4).unwrap();
        let mut buf = vec![0u8; 512];
        s.read_at(512, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
    }

    #[test]
    fn full_and_quota_answers_keep_their_errno() {
        let fake = Fake::start(FakeOptions::default());
        let s = NbdStore::create(&uri(&fake)).unwrap();
        s.set_len(1 << 16).unwrap();
        fake.fail_next_zero(28);
        let e = s.allocate(0..1).unwrap_err();
        assert!(matches!(Error::from_allocation(e), Error::NoSpace(_)));
        fake.fail_next_zero(122);
        let e = s.allocate(0..1).unwrap_err();
        assert!(matches!(Error::from_allocation(e), Error::Quota(_)));
        s.allocate(0..1).unwrap();
        assert_eq!(s.allocated().unwrap(), vec![0..1]);
    }

    #[test]
    fn shrinking_and_growing_zero_what_was_past_the_end() {
        let fake = Fake::start(FakeOptions::default());
        let s = NbdOptions::new()
            .block_size(1024)
            .create(true)
            .connect(&uri(&fake))
            .unwrap();
        s.set_len(4096).unwrap();
        s.allocate(0..4).unwrap();
        s.write_at(0, &[9; 4096]).unwrap();
        s.set_len(1500).unwrap();
        assert_eq!(s.allocated().unwrap(), vec![0..2]);
        s.set_len(4096).unwrap();
        let mut buf = vec![0u8; 4096];
        s.read_at(0, &mut buf).unwrap();
        assert!(buf[..1500].iter().all(|&b| b == 9));
        assert!(
            buf[1500..].iter().all(|&b| b == 0),
            "nothing from before the shrink comes back"
        );
    }

    #[test]
    fn a_foreign_export_needs_format() {
        let fake = Fake::start(FakeOptions::default());
        {
            let c = Client::connect(&fake.target(), DEFAULT_TIMEOUT).unwrap();
            c.call(CMD_WRITE, 0, 0, 4, b"\x7fELF").unwrap();
        }
        let e = NbdOptions::new().create(true).connect(&uri(&fake)).unwrap_err();
        assert!(e.to_string().contains("not an mkwrite export"), "{e}");
        let s = NbdOptions::new().format(true).connect(&uri(&fake)).unwrap();
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_reconnect_in_the_middle_of_a_flush_fails_that_flush() {
        let fake = Fake::start(FakeOptions::default());
        let s = NbdStore::create(&uri(&fake)).unwrap();
        s.set_len(8192).unwrap();
        s.allocate(0..2).unwrap();
        s.sync().unwrap();
        // A flush's first write is answered; then the connection is lost
        // (a server restart may have lost that write too).
        s.write_at(0, b"first").unwrap();
        s.settle(None);
        fake.drop_connection();
        while !s.lock_conn().is_dead() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let e = s.write_at(4096, b"second").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
        // The flush stopped and keeps its pages dirty; the next one goes through.
        s.write_at(0, b"first").unwrap();
        s.write_at(4096, b"second").unwrap();
        s.sync().unwrap();
        let mut buf = [0u8; 6];
        s.read_at(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"second");
    }

    #[test]
    fn write_failures_reach_the_next_sync() {
        let fake = Fake::start(FakeOptions::default());
        let s = NbdOptions::new()
            .reconnect(false)
            .create(true)
            .connect(&uri(&fake))
            .unwrap();
        s.set_len(8192).unwrap();
        s.allocate(0..2).unwrap();
        fake.hang_up_after(0);
        // Sent before the server hangs up or not, the failure is reported.
        let sent = s.write_at(0, &[1; 8192]);
        let synced = s.sync();
        assert!(sent.is_err() || synced.is_err());
        assert!(s.sync().is_err(), "no reconnect: the connection stays lost");
    }
}
