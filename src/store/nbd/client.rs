//! One NBD connection: the fixed-newstyle handshake, then requests sent by
//! any thread and replies read by one reader thread, matched by cookie.
//!
//! What is pipelined: [`Client::submit`] only sends (under the send lock,
//! for the length of one request) and returns a ticket; any number of
//! requests from any threads may be in flight, and the server may answer
//! them in any order. [`Client::wait`] waits for one ticket; a *detached*
//! request has no waiter and reports its result to a callback instead
//! (the store's write-behind writes).
//!
//! Nothing waits forever: a wait gives up after the timeout and kills the
//! connection, and a dead connection (closed, reset, timed out, a protocol
//! violation) fails every request in flight and every later one with the
//! same error. The store above decides whether to reconnect.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::proto::{self, *};
use super::uri::{Address, Target};

/// A chunk this large is not a reply we asked for: the stream is garbage.
const MAX_CHUNK: u32 = 64 << 20;

/// A TCP or Unix stream.
#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn connect(address: &Address, timeout: Duration) -> io::Result<Socket> {
        match address {
            Address::Tcp(host, port) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Socket::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Address::Unix(path) => Ok(Socket::Unix(UnixStream::connect(path)?)),
        }
    }

    fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        // Already closed is fine: all we want is the reader woken.
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Both),
            Socket::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Socket::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Called once with a detached request's result, on the reader thread (or
/// on whichever thread finds the connection dead).
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// The answer to a request that was waited for.
#[derive(Debug, Default)]
pub struct Reply {
    /// A read's bytes.
    pub data: Vec<u8>,
    /// A block status query's `(length, status)` descriptors.
    pub extents: Vec<(u32, u32)>,
}

/// A request in flight.
struct Pending {
    cmd: u16,
    offset: u64,
    len: u32,
    reply: Reply,
    error: Option<io::Error>,
    done: bool,
    detached: Option<Done>,
}

/// Why a connection died, kept so every later call gets the same error.
#[derive(Clone, Debug)]
struct Death {
    errno: Option<i32>,
    kind: io::ErrorKind,
    text: String,
}

impl Death {
    fn of(e: &io::Error) -> Death {
        Death {
            errno: e.raw_os_error(),
            kind: e.kind(),
            text: e.to_string(),
        }
    }

    fn error(&self) -> io::Error {
        match self.errno {
            Some(n) => io::Error::from_raw_os_error(n),
            None => io::Error::new(self.kind, format!("NBD connection lost: {}", self.text)),
        }
    }
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    dead: Option<Death>,
}

struct Shared {
    state: Mutex<State>,
    done: Condvar,
    /// A handle on the socket to shut it down from any thread.
    socket: Socket,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection dead (the first reason wins), fails everything
    /// in flight, and shuts the socket so the reader stops.
    fn kill(&self, why: &io::Error) {
        let (death, detached) = {
            let mut st = self.lock();
            let death = st.dead.get_or_insert_with(|| Death::of(why)).clone();
            let mut detached: Vec<Done> = Vec::new();
            st.pending.retain(|_, p| match p.detached.take() {
                Some(f) => {
                    detached.push(f);
                    false
                }
                None => {
                    if !p.done {
                        p.done = true;
                        p.error = Some(death.error());
                    }
                    true
                }
            });
            (death, detached)
        };
        self.done.notify_all();
        self.socket.shutdown();
        for f in detached {
            f(Err(death.error()));
        }
    }

    /// Ends request `cookie`, with the error its reply carried if any.
    fn complete(&self, cookie: u64) {
        let callback = {
            let mut st = self.lock();
            let Some(p) = st.pending.get_mut(&cookie) else {
                return;
            };
            match p.detached.take() {
                Some(f) => {
                    let p = st.pending.remove(&cookie).expect("found");
                    Some((f, p.error))
                }
                None => {
                    p.done = true;
                    None
                }
            }
        };
        match callback {
            Some((f, error)) => f(error.map_or(Ok(()), Err)),
            None => self.done.notify_all(),
        }
    }
}

/// A connection to one export.
pub struct Client {
    send: Mutex<Socket>,
    shared: Arc<Shared>,
    reader: Mutex<Option<JoinHandle<()>>>,
    info: ExportInfo,
    /// The id of `base:allocation`, if the server offers block status.
    allocation: Option<u32>,
    timeout: Duration,
    cookies: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("info", &self.info)
            .field("allocation", &self.allocation)
            .field("dead", &self.is_dead())
            .finish()
    }
}

impl Client {
    /// Connects and negotiates: structured replies and `base:allocation`
    /// where the server has them, then `NBD_OPT_GO`. Each step must answer
    /// within `timeout`.
    pub fn connect(target: &Target, timeout: Duration) -> io::Result<Client> {
        let mut socket = Socket::connect(&target.address, timeout)?;
        socket.set_timeouts(Some(timeout), Some(timeout))?;
        let (info, allocation) =
            handshake(&mut socket, &target.export).map_err(|e| late(e, "answer the handshake", timeout))?;
        // The reader blocks for as long as the server is quiet; waiters
        // carry the timeout instead. Writes keep theirs.
        socket.set_timeouts(None, Some(timeout))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            socket: socket.try_clone()?,
        });
        let reader_socket = socket.try_clone()?;
        let reader_shared = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("mkwrite-nbd-reader".into())
            .spawn(move || read_replies(&reader_shared, reader_socket))?;
        Ok(Client {
            send: Mutex::new(socket),
            shared,
            reader: Mutex::new(Some(reader)),
            info,
            allocation,
            timeout,
            cookies: AtomicU64::new(1),
        })
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// True when the server offers `base:allocation` block status.
    pub fn has_block_status(&self) -> bool {
        self.allocation.is_some()
    }

    pub fn is_dead(&self) -> bool {
        self.shared.lock().dead.is_some()
    }

    /// The error every call on a dead connection gets.
    pub fn dead_error(&self) -> Option<io::Error> {
        self.shared.lock().dead.as_ref().map(Death::error)
    }

    /// Kills the connection: everything in flight fails with `why`.
    pub fn kill(&self, why: &io::Error) {
        self.shared.kill(why);
    }

    /// Sends one request. A write's `payload` is its data. With `detached`
    /// the result goes to that callback and the ticket must not be waited
    /// for. An `Err` means nothing was sent and `detached` will not be called.
    pub fn submit(
        &self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
        detached: Option<Done>,
    ) -> io::Result<u64> {
        let cookie = self.cookies.fetch_add(1, Ordering::Relaxed);
        let mut send = self.send.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut st = self.shared.lock();
            if let Some(death) = &st.dead {
                return Err(death.error());
            }
            // Registered before it is sent, so the reply always finds it.
            st.pending.insert(
                cookie,
                Pending {
                    cmd,
                    offset,
                    len,
                    reply: Reply::default(),
                    error: None,
                    done: false,
                    detached,
                },
            );
        }
        let header = request(cmd, flags, cookie, offset, len);
        let sent = send.write_all(&header).and_then(|()| send.write_all(payload));
        drop(send);
        if let Err(e) = sent {
            let e = late(e, "take a request", self.timeout);
            // Half a request on the wire: the stream is lost.
            let ours = self.shared.lock().pending.remove(&cookie).is_some();
            self.shared.kill(&e);
            if ours {
                return Err(e);
            }
            // The kill (ours or another's) already reported to the callback.
        }
        Ok(cookie)
    }

    /// Waits for a request sent without `detached`. After the timeout the
    /// connection is killed (a stuck server must not hang a fault).
    pub fn wait(&self, cookie: u64) -> io::Result<Reply> {
        let deadline = Instant::now() + self.timeout;
        let mut st = self.shared.lock();
        loop {
            match st.pending.get(&cookie) {
                Some(p) if p.done => {
                    let p = st.pending.remove(&cookie).expect("found");
                    return match p.error {
                        Some(e) => Err(e),
                        None => Ok(p.reply),
                    };
                }
                Some(_) => {}
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "NBD: waited for a request that is not in flight",
                    ));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                let late = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the NBD server did not answer within {:?}", self.timeout),
                );
                self.shared.kill(&late);
                st = self.shared.lock();
                continue;
            }
            st = self
                .shared
                .done
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends a request and waits for it.
    pub fn call(&self, cmd: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> io::Result<Reply> {
        let cookie = self.submit(cmd, flags, offset, len, payload, None)?;
        self.wait(cookie)
    }

    /// Waits for every ticket, then returns the first error (so nothing is
    /// left in flight when a caller gives up).
    pub fn wait_all(&self, cookies: impl IntoIterator<Item = u64>) -> io::Result<Vec<Reply>> {
        let mut replies = Vec::new();
        let mut first = None;
        for cookie in cookies {
            match self.wait(cookie) {
                Ok(r) => replies.push(r),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(replies), Err)
    }

    /// The `base:allocation` descriptors from `offset` (at least one).
    pub fn block_status(&self, offset: u64, len: u32) -> io::Result<Vec<(u32, u32)>> {
        if self.allocation.is_none() {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let reply = self.call(CMD_BLOCK_STATUS, 0, offset, len, &[])?;
        if reply.extents.is_empty() {
            return Err(violation("block status without base:allocation descriptors"));
        }
        Ok(reply.extents)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A polite NBD_CMD_DISC, then the socket goes; errors do not matter
        // to a connection nobody will use again.
        // (Skipped if a sender is stuck mid-request: the kill ends it.)
        if !self.is_dead()
            && let Ok(mut send) = self.send.try_lock()
        {
            let _ = send.write_all(&request(CMD_DISC, 0, 0, 0, 0));
        }
        self.shared.kill(&io::Error::new(
            io::ErrorKind::NotConnected,
            "the NBD connection was closed",
        ));
        if let Some(reader) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = reader.join();
        }
    }
}

/// A socket timeout says `EAGAIN`; say what it means.
fn late(e: io::Error, what: &str, timeout: Duration) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the NBD server did not {what} within {timeout:?}"),
        ),
        _ => e,
    }
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Fixed newstyle negotiation; returns the export's facts and the id of
/// `base:allocation` if the server selected it.
fn handshake(s: &mut Socket, export: &str) -> io::Result<(ExportInfo, Option<u32>)> {
    let hello: [u8; 18] = read_array(s)?;
    if u64_at(&hello, 0) != NBDMAGIC {
        return Err(violation("not an NBD server (no NBDMAGIC)"));
    }
    if u64_at(&hello, 8) != IHAVEOPT {
        return Err(violation(
            "oldstyle negotiation is not supported: the server must speak newstyle",
        ));
    }
    let server_flags = u16_at(&hello, 16);
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(violation("the server does not speak fixed newstyle"));
    }
    let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES));
    s.write_all(&client_flags.to_be_bytes())?;

    // Structured replies, then base:allocation: both optional.
    s.write_all(&option(OPT_STRUCTURED_REPLY, &[]))?;
    let (reply, _) = read_option_reply(s, OPT_STRUCTURED_REPLY)?;
    let structured = reply.kind == REP_ACK;
    let mut allocation = None;
    if structured {
        s.write_all(&option(
            OPT_SET_META_CONTEXT,
            &meta_context_data(export, &[BASE_ALLOCATION]),
        ))?;
        loop {
            let (reply, data) = read_option_reply(s, OPT_SET_META_CONTEXT)?;
            match reply.kind {
                REP_META_CONTEXT if data.len() >= 4 && &data[4..] == BASE_ALLOCATION.as_bytes() => {
                    allocation = Some(u32_at(&data, 0));
                }
                REP_META_CONTEXT => {}
                _ => break, // ACK, or an error: no block status
            }
        }
    }

    s.write_all(&option(OPT_GO, &go_data(export, &[INFO_BLOCK_SIZE])))?;
    let mut info = ExportInfo::default();
    loop {
        let (reply, data) = read_option_reply(s, OPT_GO)?;
        match reply.kind {
            REP_INFO => info.apply(&data)?,
            REP_ACK => break,
            kind if kind & REP_FLAG_ERROR != 0 => {
                let message = String::from_utf8_lossy(&data);
                let what = if kind == REP_ERR_UNKNOWN {
                    format!("the server has no export named {export:?}")
                } else {
                    format!("the server refused export {export:?} (error {:#x})", kind)
                };
                let kind = if reply.kind == REP_ERR_UNKNOWN {
                    io::ErrorKind::NotFound
                } else {
                    io::ErrorKind::ConnectionRefused
                };
                return Err(io::Error::new(kind, format!("{what}: {message}")));
            }
            _ => {}
        }
    }
    if info.flags & TFLAG_HAS_FLAGS == 0 {
        return Err(violation("NBD_INFO_EXPORT missing from the reply to NBD_OPT_GO"));
    }
    Ok((info, allocation))
}

/// One option reply to `opt`, with its data.
fn read_option_reply(s: &mut Socket, opt: u32) -> io::Result<(OptionReply, Vec<u8>)> {
    let header: [u8; 20] = read_array(s)?;
    let reply = parse_option_reply(&header)?;
    if reply.option != opt {
        return Err(violation(format!(
            "a reply to option {} while waiting for {opt}",
            reply.option
        )));
    }
    if reply.len > 1 << 20 {
        return Err(violation("an option reply over 1 MiB"));
    }
    let mut data = vec![0u8; reply.len as usize];
    s.read_exact(&mut data)?;
    Ok((reply, data))
}

/// The reader thread: reads replies until the connection fails, then fails
/// everything still in flight with that error.
fn read_replies(shared: &Shared, mut socket: Socket) {
    let why = loop {
        if let Err(e) = read_reply(shared, &mut socket) {
            break e;
        }
    };
    let why = match why.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the NBD server closed the connection",
        ),
        _ => why,
    };
    shared.kill(&why);
}

/// What a reply needs from its request, looked up under the lock.
struct Asked {
    cmd: u16,
    offset: u64,
    len: u32,
}

fn asked(shared: &Shared, cookie: u64) -> io::Result<Asked> {
    let st = shared.lock();
    let p = st
        .pending
        .get(&cookie)
        .ok_or_else(|| violation(format!("a reply for cookie {cookie}, which is not in flight")))?;
    Ok(Asked {
        cmd: p.cmd,
        offset: p.offset,
        len: p.len,
    })
}

/// Runs `f` on a request's reply buffer outside the lock (so senders are
/// not held up while the socket is read), then puts it back. A request
/// failed meanwhile (the connection was killed) gets a scratch buffer: the
/// bytes must still be read off the socket.
fn fill(shared: &Shared, cookie: u64, f: impl FnOnce(&mut Reply) -> io::Result<()>) -> io::Result<()> {
    let mut reply = match shared.lock().pending.get_mut(&cookie) {
        Some(p) => std::mem::take(&mut p.reply),
        None => Reply::default(),
    };
    let result = f(&mut reply);
    if let Some(p) = shared.lock().pending.get_mut(&cookie) {
        p.reply = reply;
    }
    result
}

/// Records the error a reply carried (the first one wins).
fn fail(shared: &Shared, cookie: u64, error: io::Error) {
    if let Some(p) = shared.lock().pending.get_mut(&cookie) {
        p.error.get_or_insert(error);
    }
}

fn read_reply(shared: &Shared, s: &mut Socket) -> io::Result<()> {
    let magic = u32::from_be_bytes(read_array(s)?);
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let (error, cookie) = parse_simple(&read_array(s)?);
            let asked = asked(shared, cookie)?;
            if error != 0 {
                fail(shared, cookie, proto::error(error));
            } else if asked.cmd == CMD_READ {
                fill(shared, cookie, |r| {
                    r.data = vec![0; asked.len as usize];
                    s.read_exact(&mut r.data)
                })?;
            }
            shared.complete(cookie);
        }
        STRUCTURED_REPLY_MAGIC => {
            let chunk = parse_chunk(&read_array(s)?);
            let asked = asked(shared, chunk.cookie)?;
            if chunk.len > MAX_CHUNK {
                return Err(violation(format!("a reply chunk of {} bytes", chunk.len)));
            }
            read_chunk(shared, s, &chunk, &asked)?;
            if chunk.flags & REPLY_FLAG_DONE != 0 {
                shared.complete(chunk.cookie);
            }
        }
        other => return Err(violation(format!("bad reply magic {other:#x}"))),
    }
    Ok(())
}

fn read_chunk(shared: &Shared, s: &mut Socket, chunk: &Chunk, asked: &Asked) -> io::Result<()> {
    let cookie = chunk.cookie;
    // Where `[offset, offset + n)` falls in the read's buffer.
    let within = |offset: u64, n: u64| -> io::Result<std::ops::Range<usize>> {
        let start = offset
            .checked_sub(asked.offset)
            .filter(|&at| asked.cmd == CMD_READ && at + n <= u64::from(asked.len))
            .ok_or_else(|| violation("read data outside the request"))?;
        Ok(start as usize..(start + n) as usize)
    };
    let sized = |r: &mut Reply| {
        if r.data.len() != asked.len as usize {
            r.data = vec![0; asked.len as usize];
        }
    };
    match chunk.kind {
        REPLY_TYPE_NONE => {
            if chunk.len != 0 {
                return Err(violation("NBD_REPLY_TYPE_NONE with a payload"));
            }
        }
        REPLY_TYPE_OFFSET_DATA => {
            if chunk.len < 8 {
                return Err(violation("short NBD_REPLY_TYPE_OFFSET_DATA"));
            }
            let offset = u64::from_be_bytes(read_array(s)?);
            let range = within(offset, u64::from(chunk.len - 8))?;
            fill(shared, cookie, |r| {
                sized(r);
                s.read_exact(&mut r.data[range])
            })?;
        }
        REPLY_TYPE_OFFSET_HOLE => {
            if chunk.len != 12 {
                return Err(violation("NBD_REPLY_TYPE_OFFSET_HOLE is not 12 bytes"));
            }
            let b: [u8; 12] = read_array(s)?;
            let range = within(u64_at(&b, 0), u64::from(u32_at(&b, 8)))?;
            fill(shared, cookie, |r| {
                sized(r);
                r.data[range].fill(0);
                Ok(())
            })?;
        }
        REPLY_TYPE_BLOCK_STATUS => {
            if chunk.len < 12 || asked.cmd != CMD_BLOCK_STATUS {
                return Err(violation("unexpected block status chunk"));
            }
            let mut payload = vec![0u8; chunk.len as usize];
            s.read_exact(&mut payload)?;
            // Only base:allocation was asked for, so the context id (the
            // first four bytes) can only be that one.
            let extents = parse_extents(&payload[4..])?;
            fill(shared, cookie, |r| {
                r.extents = extents;
                Ok(())
            })?;
        }
        kind if kind & REPLY_TYPE_ERROR_BIT != 0 => {
            let mut payload = vec![0u8; chunk.len as usize];
            s.read_exact(&mut payload)?;
            let (code, _message) = parse_error_chunk(&payload)?;
            fail(shared, cookie, proto::error(code));
        }
        _ => {
            // An unknown informational chunk: skip it, as the document allows.
            io::copy(&mut Read::by_ref(s).take(u64::from(chunk.len)), &mut io::sink())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Fake, FakeOptions};
    use super::*;

    fn connect(fake: &Fake) -> Client {
        Client::connect(&fake.target(), Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn handshake_reads_size_flags_and_block_status() {
        let fake = Fake::start(FakeOptions::default());
        let c = connect(&fake);
        assert_eq!(c.info().size, 1 << 20);
        assert!(c.info().has(TFLAG_SEND_WRITE_ZEROES));
        assert!(c.has_block_status());
        let plain = Fake::start(FakeOptions {
            structured: false,
            ..FakeOptions::default()
        });
        let c = connect(&plain);
        assert!(!c.has_block_status());
    }

    #[test]
    fn reads_writes_zeroes_and_holes() {
        for structured in [true, false] {
            let fake = Fake::start(FakeOptions {
                structured,
                ..FakeOptions::default()
            });
            let c = connect(&fake);
            c.call(CMD_WRITE, 0, 8192, 5, b"hello").unwrap();
            c.call(CMD_WRITE, 0, 4096 * 5, 3, b"abc").unwrap();
            // A read over data, a hole and data again: the fake sends the
            // hole as NBD_REPLY_TYPE_OFFSET_HOLE when it may.
            let r = c.call(CMD_READ, 0, 8192, 4096 * 3 + 3, &[]).unwrap();
            assert_eq!(&r.data[..5], b"hello");
            assert!(r.data[5..4096 * 3].iter().all(|&b| b == 0));
            assert_eq!(&r.data[4096 * 3..], b"abc");
            c.call(CMD_WRITE_ZEROES, 0, 8192, 2, &[]).unwrap();
            let r = c.call(CMD_READ, 0, 8192, 5, &[]).unwrap();
            assert_eq!(&r.data, b"\0\0llo");
        }
    }

    #[test]
    fn errors_reach_the_caller_as_errno() {
        let fake = Fake::start(FakeOptions::default());
        let c = connect(&fake);
        fake.fail_next_zero(28);
        let e = c
            .call(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 4096, &[])
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        fake.fail_next_zero(122);
        let e = c
            .call(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 4096, &[])
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
        let e = c.call(CMD_READ, 0, 1 << 20, 1, &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "a read past the end");
        c.call(CMD_FLUSH, 0, 0, 0, &[]).unwrap();
    }

    #[test]
    fn pipelined_requests_complete_in_any_order() {
        let fake = Fake::start(FakeOptions {
            reverse: true,
            ..FakeOptions::default()
        });
        let c = connect(&fake);
        let cookies: Vec<u64> = (0..8u64)
            .map(|i| {
                c.submit(CMD_WRITE, 0, i * 512, 512, &[i as u8 + 1; 512], None)
                    .unwrap()
            })
            .collect();
        c.wait_all(cookies).unwrap();
        let reads: Vec<u64> = (0..8u64)
            .map(|i| c.submit(CMD_READ, 0, i * 512, 512, &[], None).unwrap())
            .collect();
        for (i, r) in c.wait_all(reads).unwrap().into_iter().enumerate() {
            assert!(
                r.data.iter().all(|&b| b == i as u8 + 1),
                "reply {i} matched to its request"
            );
        }
        assert!(fake.max_in_flight() > 1, "requests were in flight together");
    }

    #[test]
    fn block_status_reports_holes() {
        let fake = Fake::start(FakeOptions::default());
        let c = connect(&fake);
        c.call(CMD_WRITE, 0, 4096, 1, b"x").unwrap();
        let extents = c.block_status(0, 3 * 4096).unwrap();
        assert_eq!(
            extents,
            vec![
                (4096, STATE_HOLE | STATE_ZERO),
                (4096, 0),
                (4096, STATE_HOLE | STATE_ZERO)
            ]
        );
    }

    #[test]
    fn a_dead_server_is_an_error_never_a_hang() {
        let fake = Fake::start(FakeOptions::default());
        let c = connect(&fake);
        let done = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&done);
        fake.hang_up_after(1);
        c.submit(
            CMD_WRITE,
            0,
            0,
            1,
            b"x",
            Some(Box::new(move |r| *seen.lock().unwrap() = Some(r))),
        )
        .unwrap();
        let e = c.call(CMD_READ, 0, 0, 1, &[]).unwrap_err();
        assert!(c.is_dead(), "{e}");
        assert!(
            matches!(*done.lock().unwrap(), Some(Ok(()))),
            "the write before the hang-up was answered"
        );
        assert!(
            c.call(CMD_FLUSH, 0, 0, 0, &[]).is_err(),
            "a dead connection stays dead"
        );
    }

    #[test]
    fn a_silent_server_times_out() {
        let fake = Fake::start(FakeOptions::default());
        let c = Client::connect(&fake.target(), Duration::from_millis(300)).unwrap();
        fake.go_silent();
        let began = Instant::now();
        let e = c.call(CMD_FLUSH, 0, 0, 0, &[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(began.elapsed() < Duration::from_secs(5));
        assert!(c.is_dead());
    }

    #[test]
    fn a_missing_export_is_named() {
        let fake = Fake::start(FakeOptions::default());
        let mut target = fake.target();
        target.export = "nope".into();
        let e = Client::connect(&target, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
