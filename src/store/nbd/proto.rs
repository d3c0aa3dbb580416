//! The NBD wire format: the constants of the protocol document
//! (`doc/proto.md` of the NetworkBlockDevice/nbd project) that mkwrite uses,
//! and the encoding of its messages. Pure: no sockets here, so every
//! message is unit-tested as bytes.
//!
//! Everything on the wire is big-endian ("network byte order").

use std::io;

/// The server's first eight bytes: `NBDMAGIC`.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Newstyle negotiation (and each client option) begins with `IHAVEOPT`.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// A simple reply: error and cookie (and, for a read, the data).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// One chunk of a structured reply.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Options.
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
#[cfg(test)] // the fake server's answer to what it lacks
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;

/// Information items of `NBD_OPT_GO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Chunk types with this bit set are errors (an unknown one too).
pub const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// The `base:allocation` metadata context and its status bits.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// Payload limit the protocol document lets a client assume when the
/// server advertises none (`NBD_INFO_BLOCK_SIZE`'s maximum).
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;

/// Bytes of a request header, a simple reply header, a structured chunk header.
pub const REQUEST_LEN: usize = 28;
pub const SIMPLE_REPLY_LEN: usize = 16;
pub const CHUNK_HEADER_LEN: usize = 20;

/// The errno for an NBD error value. The protocol chose Linux's numbers
/// for the values it defines; `ENOSPC` is how a server says "no space"
/// (the document asks servers to send `EDQUOT` and `EFBIG` as `ENOSPC`
/// too). A server that sends Linux's `EDQUOT` (122) anyway gets it through,
/// so a quota stays a quota. Anything else unexpected is `EINVAL`, as the
/// document tells clients to treat it.
pub fn errno(nbd_error: u32) -> i32 {
    match nbd_error {
        1 => libc::EPERM,
        5 => libc::EIO,
        12 => libc::ENOMEM,
        22 => libc::EINVAL,
        28 => libc::ENOSPC,
        75 => libc::EOVERFLOW,
        95 => libc::EOPNOTSUPP,
        108 => libc::ESHUTDOWN,
        122 => libc::EDQUOT,
        _ => libc::EINVAL,
    }
}

/// The [`io::Error`] for an NBD error value. It is a plain errno, so
/// `raw_os_error` sees `ENOSPC` and mkwrite classifies it as a full store;
/// the server's message, if it sent one, is not kept for that reason.
pub fn error(nbd_error: u32) -> io::Error {
    io::Error::from_raw_os_error(errno(nbd_error))
}

/// A protocol violation by the server: the connection cannot go on.
pub fn violation(what: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("NBD protocol error: {}", what.into()),
    )
}

/// A client option: `IHAVEOPT`, the option, the length of its data, the data.
pub fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of `NBD_OPT_GO`: the export name and the information asked for.
pub fn go_data(export: &str, infos: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(export.len() as u32).to_be_bytes());
    out.extend_from_slice(export.as_bytes());
    out.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        out.extend_from_slice(&info.to_be_bytes());
    }
    out
}

/// The data of `NBD_OPT_SET_META_CONTEXT`: the export name and the queries.
pub fn meta_context_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(export.len() as u32).to_be_bytes());
    out.extend_from_slice(export.as_bytes());
    out.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        out.extend_from_slice(&(q.len() as u32).to_be_bytes());
        out.extend_from_slice(q.as_bytes());
    }
    out
}

/// The header of an option reply: option, reply type, data length.
#[derive(Debug, PartialEq, Eq)]
pub struct OptionReply {
    pub option: u32,
    pub kind: u32,
    pub len: u32,
}

pub fn parse_option_reply(b: &[u8; 20]) -> io::Result<OptionReply> {
    if u64_at(b, 0) != OPTION_REPLY_MAGIC {
        return Err(violation("bad option reply magic"));
    }
    Ok(OptionReply {
        option: u32_at(b, 8),
        kind: u32_at(b, 12),
        len: u32_at(b, 16),
    })
}

/// What `NBD_OPT_GO` told about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
}

impl Default for ExportInfo {
    fn default() -> Self {
        ExportInfo {
            size: 0,
            flags: 0,
            min_block: 1,
            preferred_block: 4096,
            max_block: DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl ExportInfo {
    /// Applies one `NBD_REP_INFO` payload; unknown items are ignored, as
    /// the document asks.
    pub fn apply(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() < 2 {
            return Err(violation("short NBD_REP_INFO"));
        }
        match u16_at(data, 0) {
            INFO_EXPORT if data.len() >= 12 => {
                self.size = u64_at(data, 2);
                self.flags = u16_at(data, 10);
            }
            INFO_BLOCK_SIZE if data.len() >= 14 => {
                self.min_block = u32_at(data, 2).max(1);
                self.preferred_block = u32_at(data, 6);
                self.max_block = u32_at(data, 10);
            }
            INFO_EXPORT | INFO_BLOCK_SIZE => return Err(violation("short NBD_REP_INFO item")),
            _ => {}
        }
        Ok(())
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & TFLAG_HAS_FLAGS != 0 && self.flags & flag != 0
    }
}

/// A transmission request header (the payload of a write follows it).
pub fn request(cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&cmd.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// The rest of a structured reply chunk's header, after its magic.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub len: u32,
}

pub fn parse_chunk(b: &[u8; CHUNK_HEADER_LEN - 4]) -> Chunk {
    Chunk {
        flags: u16_at(b, 0),
        kind: u16_at(b, 2),
        cookie: u64_at(b, 4),
        len: u32_at(b, 12),
    }
}

/// The error and cookie of a simple reply, after its magic.
pub fn parse_simple(b: &[u8; SIMPLE_REPLY_LEN - 4]) -> (u32, u64) {
    (u32_at(b, 0), u64_at(b, 4))
}

/// The payload of an error chunk: the error value and the server's message.
pub fn parse_error_chunk(payload: &[u8]) -> io::Result<(u32, String)> {
    if payload.len() < 6 {
        return Err(violation("short error chunk"));
    }
    let code = u32_at(payload, 0);
    let len = usize::from(u16_at(payload, 4));
    let message = payload
        .get(6..6 + len)
        .ok_or_else(|| violation("error chunk message past its chunk"))?;
    Ok((code, String::from_utf8_lossy(message).into_owned()))
}

/// The descriptors of a `base:allocation` block status chunk (after the
/// context id): `(length, status)` pairs.
pub fn parse_extents(payload: &[u8]) -> io::Result<Vec<(u32, u32)>> {
    if !payload.len().is_multiple_of(8) || payload.is_empty() {
        return Err(violation("block status descriptors are not 8-byte pairs"));
    }
    Ok(payload
        .chunks_exact(8)
        .map(|d| (u32_at(d, 0), u32_at(d, 4)))
        .collect())
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().expect("two bytes"))
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_is_big_endian_in_the_documented_order() {
        let b = request(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0x0102, 4096, 512);
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&b[4..6], &[0, 2], "flags before type");
        assert_eq!(&b[6..8], &[0, 6]);
        assert_eq!(u64_at(&b, 8), 0x0102);
        assert_eq!(u64_at(&b, 16), 4096);
        assert_eq!(u32_at(&b, 24), 512);
    }

    #[test]
    fn options_carry_their_length() {
        let go = option(OPT_GO, &go_data("disk", &[INFO_BLOCK_SIZE]));
        assert_eq!(u64_at(&go, 0), IHAVEOPT);
        assert_eq!(u32_at(&go, 8), OPT_GO);
        assert_eq!(u32_at(&go, 12), 4 + 4 + 2 + 2);
        assert_eq!(&go[20..24], b"disk");
        assert_eq!(u16_at(&go, 24), 1);
        assert_eq!(u16_at(&go, 26), INFO_BLOCK_SIZE);
        let meta = meta_context_data("", &[BASE_ALLOCATION]);
        assert_eq!(u32_at(&meta, 0), 0);
        assert_eq!(u32_at(&meta, 4), 1);
        assert_eq!(u32_at(&meta, 8), 15);
        assert_eq!(&meta[12..], BASE_ALLOCATION.as_bytes());
    }

    #[test]
    fn export_info_items() {
        let mut info = ExportInfo::default();
        let mut export = vec![0, 0];
        export.extend_from_slice(&(1u64 << 30).to_be_bytes());
        export.extend_from_slice(&(TFLAG_HAS_FLAGS | TFLAG_SEND_WRITE_ZEROES).to_be_bytes());
        info.apply(&export).unwrap();
        let mut sizes = vec![0, 3];
        for v in [1u32, 4096, 1 << 25] {
            sizes.extend_from_slice(&v.to_be_bytes());
        }
        info.apply(&sizes).unwrap();
        info.apply(&[0, 2, b'x']).unwrap(); // a description: ignored
        assert_eq!(info.size, 1 << 30);
        assert!(info.has(TFLAG_SEND_WRITE_ZEROES));
        assert!(!info.has(TFLAG_SEND_FLUSH));
        assert_eq!(
            (info.min_block, info.preferred_block, info.max_block),
            (1, 4096, 1 << 25)
        );
        assert!(info.apply(&[0, 0, 1]).is_err());
    }

    #[test]
    fn errors_map_to_errno() {
        assert_eq!(error(28).raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(error(28).kind(), io::ErrorKind::StorageFull);
        assert_eq!(error(5).raw_os_error(), Some(libc::EIO));
        assert_eq!(error(122).raw_os_error(), Some(libc::EDQUOT));
        assert_eq!(error(9999).raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn reply_parsing() {
        let mut chunk = [0u8; 16];
        chunk[0..2].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        chunk[2..4].copy_from_slice(&REPLY_TYPE_OFFSET_HOLE.to_be_bytes());
        chunk[4..12].copy_from_slice(&7u64.to_be_bytes());
        chunk[12..16].copy_from_slice(&12u32.to_be_bytes());
        assert_eq!(
            parse_chunk(&chunk),
            Chunk {
                flags: REPLY_FLAG_DONE,
                kind: REPLY_TYPE_OFFSET_HOLE,
                cookie: 7,
                len: 12
            }
        );
        let mut err = 28u32.to_be_bytes().to_vec();
        err.extend_from_slice(&4u16.to_be_bytes());
        err.extend_from_slice(b"full");
        assert_eq!(parse_error_chunk(&err).unwrap(), (28, "full".to_owned()));
        assert!(parse_error_chunk(&err[..8]).is_err());
        let mut ext = Vec::new();
        for v in [4096u32, STATE_HOLE | STATE_ZERO, 512, 0] {
            ext.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(parse_extents(&ext).unwrap(), vec![(4096, 3), (512, 0)]);
        assert!(parse_extents(&ext[..12]).is_err());
    }
}
