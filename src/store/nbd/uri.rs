//! NBD URIs, as qemu, nbdkit and libnbd write them:
//! `nbd://HOST[:PORT][/EXPORT]` over TCP (port 10809 by default) and
//! `nbd+unix:///EXPORT?socket=PATH` over a Unix socket. The export name is
//! the path without its first `/`, percent-decoded. TLS (`nbds`) is refused.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A host name or address (IPv6 without brackets) and a port.
    Tcp(String, u16),
    /// A Unix socket.
    Unix(PathBuf),
}

/// A server and one of its exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: Address,
    pub export: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Address::Tcp(host, port) if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            Address::Tcp(host, port) => write!(f, "nbd://{host}:{port}/{}", self.export),
            Address::Unix(path) => write!(f, "nbd+unix:///{}?socket={}", self.export, path.display()),
        }
    }
}

fn invalid(uri: &str, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{uri:?} is not an NBD URI ({why}); write nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH"
        ),
    )
}

/// Parses an NBD URI.
pub fn parse(uri: &str) -> io::Result<Target> {
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| invalid(uri, "no scheme"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, ""),
    };
    let export = decode(path).ok_or_else(|| invalid(uri, "bad %-escape in the export name"))?;
    match scheme {
        "nbd" => {
            if query.is_some_and(|q| !q.is_empty()) {
                return Err(invalid(uri, "nbd:// takes no query"));
            }
            let (host, port) = host_port(authority).ok_or_else(|| invalid(uri, "bad host or port"))?;
            Ok(Target {
                address: Address::Tcp(host, port),
                export,
            })
        }
        "nbd+unix" => {
            if !authority.is_empty() {
                return Err(invalid(uri, "nbd+unix:// takes no host: write three slashes"));
            }
            let socket = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(|| invalid(uri, "no socket= in the query"))?;
            let socket = decode(socket).ok_or_else(|| invalid(uri, "bad %-escape in the socket path"))?;
            if socket.is_empty() {
                return Err(invalid(uri, "empty socket path"));
            }
            Ok(Target {
                address: Address::Unix(PathBuf::from(socket)),
                export,
            })
        }
        "nbds" | "nbds+unix" => Err(invalid(uri, "TLS is not supported")),
        _ => Err(invalid(uri, "the scheme must be nbd or nbd+unix")),
    }
}

fn host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => DEFAULT_PORT,
    };
    Some((decode(host)?, port))
}

/// Percent-decoding; `None` on a bad escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: &str) -> Target {
        Target {
            address: Address::Tcp(host.into(), port),
            export: export.into(),
        }
    }

    #[test]
    fn tcp_uris() {
        assert_eq!(
            parse("nbd://127.0.0.1:10810/disk").unwrap(),
            tcp("127.0.0.1", 10810, "disk")
        );
        assert_eq!(
            parse("nbd://localhost").unwrap(),
            tcp("localhost", DEFAULT_PORT, "")
        );
        assert_eq!(
            parse("nbd://localhost/").unwrap(),
            tcp("localhost", DEFAULT_PORT, "")
        );
        assert_eq!(parse("nbd://[::1]:99/a%20b").unwrap(), tcp("::1", 99, "a b"));
        assert_eq!(parse("nbd://h/x/y").unwrap(), tcp("h", DEFAULT_PORT, "x/y"));
    }

    #[test]
    fn unix_uris() {
        let t = parse("nbd+unix:///vol?socket=/tmp/s%2Bock").unwrap();
        assert_eq!(t.address, Address::Unix("/tmp/s+ock".into()));
        assert_eq!(t.export, "vol");
        let t = parse("nbd+unix://?socket=/run/nbd.sock").unwrap();
        assert_eq!(t.export, "");
        assert_eq!(t.to_string(), "nbd+unix:///?socket=/run/nbd.sock");
    }

    #[test]
    fn refusals_say_why() {
        for bad in [
            "nbd+unix:///x",
            "nbd+unix://host/x?socket=/s",
            "nbds://h/x",
            "http://h/x",
            "nbd://h:notaport/x",
            "nbd://:1/x",
            "nbd://h/%zz",
            "/tmp/file",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(parse("nbds://h/x").unwrap_err().to_string().contains("TLS"));
    }
}
