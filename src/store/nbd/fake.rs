//! A small NBD server in memory for the client's unit tests: fixed
//! newstyle, structured replies (optional) with holes and error chunks,
//! `base:allocation`, and knobs to fail, reorder, hang up or go silent.
//! The integration tests use real servers (nbdkit, qemu-nbd).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::proto::*;
use super::uri::{Address, Target};

pub struct FakeOptions {
    /// Offer structured replies and `base:allocation`.
    pub structured: bool,
    /// Answer each batch of requests that arrive together in reverse order.
    pub reverse: bool,
    pub size: u64,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            structured: true,
            reverse: false,
            size: 1 << 20,
        }
    }
}

#[derive(Default)]
struct Control {
    fail_zero: Mutex<Option<u32>>,
    hang_up_after: Mutex<Option<usize>>,
    silent: AtomicBool,
    max_batch: AtomicUsize,
    /// The connection being served, to close it from outside.
    current: Mutex<Option<TcpStream>>,
}

pub struct Fake {
    port: u16,
    control: Arc<Control>,
}

impl Fake {
    pub fn start(opts: FakeOptions) -> Fake {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let control = Arc::new(Control::default());
        let ctl = Arc::clone(&control);
        // The thread ends with the test process; each test makes one fake.
        std::thread::spawn(move || {
            let mut disk = vec![0u8; opts.size as usize];
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                *ctl.current.lock().unwrap() = conn.try_clone().ok();
                let _ = serve(conn, &opts, &ctl, &mut disk);
                // The clone kept for drop_connection must not keep it open.
                if let Some(c) = ctl.current.lock().unwrap().take() {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
            }
        });
        Fake { port, control }
    }

    pub fn target(&self) -> Target {
        Target {
            address: Address::Tcp("127.0.0.1".into(), self.port),
            export: String::new(),
        }
    }

    /// The next WRITE_ZEROES fails with this NBD error.
    pub fn fail_next_zero(&self, code: u32) {
        *self.control.fail_zero.lock().unwrap() = Some(code);
    }

    /// Closes the connection after answering `n` more requests.
    pub fn hang_up_after(&self, n: usize) {
        *self.control.hang_up_after.lock().unwrap() = Some(n);
    }

    /// Closes the connection now, between requests; the disk stays.
    pub fn drop_connection(&self) {
        if let Some(c) = self.control.current.lock().unwrap().take() {
            c.shutdown(std::net::Shutdown::Both).unwrap();
        }
    }

    /// Stops answering, keeping the connection open.
    pub fn go_silent(&self) {
        self.control.silent.store(true, Ordering::SeqCst);
    }

    /// The most requests that were read before any of them was answered.
    pub fn max_in_flight(&self) -> usize {
        self.control.max_batch.load(Ordering::SeqCst)
    }
}

fn read_n(s: &mut TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)?;
    Ok(b)
}

fn option_reply(s: &mut TcpStream, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut b = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)
}

struct Request {
    cmd: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    payload: Vec<u8>,
}

fn serve(mut s: TcpStream, opts: &FakeOptions, ctl: &Control, disk: &mut [u8]) -> io::Result<()> {
    let mut hello = NBDMAGIC.to_be_bytes().to_vec();
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    read_n(&mut s, 4)?;
    let mut structured = false;
    loop {
        let h = read_n(&mut s, 16)?;
        let (opt, len) = (u32_at(&h, 8), u32_at(&h, 12));
        let data = read_n(&mut s, len as usize)?;
        match opt {
            OPT_STRUCTURED_REPLY if opts.structured => {
                structured = true;
                option_reply(&mut s, opt, REP_ACK, &[])?;
            }
            OPT_SET_META_CONTEXT if structured => {
                let mut ctx = 1u32.to_be_bytes().to_vec();
                ctx.extend_from_slice(BASE_ALLOCATION.as_bytes());
                option_reply(&mut s, opt, REP_META_CONTEXT, &ctx)?;
                option_reply(&mut s, opt, REP_ACK, &[])?;
            }
            OPT_GO => {
                let name_len = u32_at(&data, 0) as usize;
                if name_len != 0 {
                    option_reply(&mut s, opt, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let mut export = INFO_EXPORT.to_be_bytes().to_vec();
                export.extend_from_slice(&opts.size.to_be_bytes());
                let flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_WRITE_ZEROES;
                export.extend_from_slice(&flags.to_be_bytes());
                option_reply(&mut s, opt, REP_INFO, &export)?;
                option_reply(&mut s, opt, REP_ACK, &[])?;
                break;
            }
            _ => option_reply(&mut s, opt, REP_ERR_UNSUP, &[])?,
        }
    }
    loop {
        let mut batch = vec![read_request(&mut s)?];
        if opts.reverse {
            // Whatever else has arrived joins the batch.
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            while s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
                s.set_read_timeout(None)?;
                batch.push(read_request(&mut s)?);
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
            }
            s.set_read_timeout(None)?;
            batch.reverse();
        }
        ctl.max_batch.fetch_max(batch.len(), Ordering::SeqCst);
        for req in batch {
            if ctl.silent.load(Ordering::SeqCst) {
                // Read on, answer nothing, until the client gives up.
                io::copy(&mut s, &mut io::sink())?;
                return Ok(());
            }
            {
                let mut hang = ctl.hang_up_after.lock().unwrap();
                if *hang == Some(0) {
                    *hang = None;
                    return Ok(()); // dropping the stream closes it
                }
                if let Some(n) = hang.as_mut() {
                    *n -= 1;
                }
            }
            if req.cmd == CMD_DISC {
                return Ok(());
            }
            answer(&mut s, structured, ctl, disk, req)?;
        }
    }
}

fn read_request(s: &mut TcpStream) -> io::Result<Request> {
    let h = read_n(s, REQUEST_LEN)?;
    assert_eq!(u32_at(&h, 0), REQUEST_MAGIC);
    let cmd = u16_at(&h, 6);
    let len = u32_at(&h, 24);
    let payload = if cmd == CMD_WRITE {
        read_n(s, len as usize)?
    } else {
        Vec::new()
    };
    Ok(Request {
        cmd,
        cookie: u64_at(&h, 8),
        offset: u64_at(&h, 16),
        len,
        payload,
    })
}

fn simple(s: &mut TcpStream, error: u32, cookie: u64, data: &[u8]) -> io::Result<()> {
    let mut b = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)
}

fn chunk(s: &mut TcpStream, flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> io::Result<()> {
    let mut b = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    s.write_all(&b)
}

fn fail(s: &mut TcpStream, structured: bool, cookie: u64, code: u32) -> io::Result<()> {
    if structured {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(b"bad");
        chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_ERROR_BIT | 1, cookie, &p)
    } else {
        simple(s, code, cookie, &[])
    }
}

fn answer(s: &mut TcpStream, structured: bool, ctl: &Control, disk: &mut [u8], r: Request) -> io::Result<()> {
    let range = r.offset as usize..(r.offset + u64::from(r.len)) as usize;
    if range.end > disk.len() {
        let code = if r.cmd == CMD_READ { 22 } else { 28 };
        return fail(s, structured, r.cookie, code);
    }
    match r.cmd {
        CMD_READ if structured => {
            // 4 KiB pieces: all-zero ones as holes, the rest as data.
            let mut at = range.start;
            while at < range.end {
                let end = (at + 4096 - at % 4096).min(range.end);
                let piece = &disk[at..end];
                if piece.iter().all(|&b| b == 0) {
                    let mut p = (at as u64).to_be_bytes().to_vec();
                    p.extend_from_slice(&((end - at) as u32).to_be_bytes());
                    chunk(s, 0, REPLY_TYPE_OFFSET_HOLE, r.cookie, &p)?;
                } else {
                    let mut p = (at as u64).to_be_bytes().to_vec();
                    p.extend_from_slice(piece);
                    chunk(s, 0, REPLY_TYPE_OFFSET_DATA, r.cookie, &p)?;
                }
                at = end;
            }
            chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie, &[])
        }
        CMD_READ => simple(s, 0, r.cookie, &disk[range]),
        CMD_WRITE => {
            disk[range].copy_from_slice(&r.payload);
            simple(s, 0, r.cookie, &[])
        }
        CMD_WRITE_ZEROES => {
            if let Some(code) = ctl.fail_zero.lock().unwrap().take() {
                return fail(s, structured, r.cookie, code);
            }
            disk[range].fill(0);
            simple(s, 0, r.cookie, &[])
        }
        CMD_FLUSH => simple(s, 0, r.cookie, &[]),
        CMD_BLOCK_STATUS => {
            let mut p = 1u32.to_be_bytes().to_vec();
            let mut at = range.start;
            while at < range.end {
                let end = (at + 4096).min(range.end);
                let status = if disk[at..end].iter().all(|&b| b == 0) {
                    STATE_HOLE | STATE_ZERO
                } else {
                    0
                };
                p.extend_from_slice(&((end - at) as u32).to_be_bytes());
                p.extend_from_slice(&status.to_be_bytes());
                at = end;
            }
            chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, r.cookie, &p)
        }
        _ => fail(s, structured, r.cookie, 22),
    }
}
