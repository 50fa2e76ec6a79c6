//! TLS ClientHello sniffing for SNI routing without terminating TLS (Envoy's TLS inspector).
//!
//! Owns reading the first bytes of a connection, bounded in size ([`MAX_READ`]) and in time,
//! and parsing them strictly: TLS records (possibly fragmented), the ClientHello handshake and
//! its `server_name` extension. Every length is checked against what is there; nothing here
//! panics or allocates more than the bytes read. The bytes read are handed back so the caller
//! can replay them upstream: the TLS session itself stays end to end. It never decides routes.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Largest ClientHello handshake message accepted (body length), as bytes.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;
/// Most bytes read from a client before a decision (record headers of a fragmented hello
/// included); a client that needs more is closed.
pub const MAX_READ: usize = MAX_CLIENT_HELLO + 4 * 1024;
/// Largest TLS plaintext record (2^14).
const MAX_RECORD: usize = 16 * 1024;
const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const SERVER_NAME: u16 = 0x0000;
const HOST_NAME: u8 = 0x00;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet to decide.
    Incomplete,
    /// Not a TLS handshake (plain TCP, HTTP, …): routed as "no server name".
    NotTls,
    /// A complete ClientHello and its server name (lower-case, no trailing dot), if it sent one.
    ClientHello { server_name: Option<String> },
    /// A TLS record that is not a well-formed ClientHello; the reason names the part.
    Malformed(&'static str),
    /// A ClientHello larger than [`MAX_CLIENT_HELLO`].
    TooLarge,
}

/// The result of [`read_client_hello`]: the server name to route by and every byte read.
#[derive(Debug)]
pub struct Sniffed {
    pub server_name: Option<String>,
    /// Whether the bytes began like TLS (a handshake record).
    pub tls: bool,
    /// What was read from the client, to be replayed upstream first.
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("client closed the connection before sending anything")]
    Closed,
    #[error("read ClientHello: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads from `stream` until [`parse`] can decide, for at most `timeout` and [`MAX_READ`] bytes.
/// A client that closes its side early is routed as "no server name" with what it sent.
pub async fn read_client_hello(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Sniffed, SniffError> {
    let read = async {
        let mut bytes = Vec::with_capacity(2048);
        let mut chunk = [0u8; 4096];
        loop {
            let room = MAX_READ - bytes.len();
            let n = stream.read(&mut chunk[..room.min(4096)]).await?;
            if n == 0 {
                if bytes.is_empty() {
                    return Err(SniffError::Closed);
                }
                let tls = bytes.first() == Some(&HANDSHAKE);
                return Ok(Sniffed {
                    server_name: None,
                    tls,
                    bytes,
                });
            }
            bytes.extend_from_slice(&chunk[..n]);
            let (server_name, tls) = match parse(&bytes) {
                Hello::Incomplete if bytes.len() >= MAX_READ => return Err(SniffError::TooLarge),
                Hello::Incomplete => continue,
                Hello::TooLarge => return Err(SniffError::TooLarge),
                Hello::NotTls => (None, false),
                Hello::Malformed(why) => {
                    tracing::debug!(reason = why, "malformed ClientHello; routing without SNI");
                    (None, true)
                }
                Hello::ClientHello { server_name } => (server_name, true),
            };
            return Ok(Sniffed {
                server_name,
                tls,
                bytes,
            });
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| SniffError::Timeout(timeout))?
}

/// Classifies the first bytes of a connection (see [`Hello`]).
pub fn parse(buf: &[u8]) -> Hello {
    // A TLS connection starts with a handshake record of protocol major version 3.
    match buf {
        [] => return Hello::Incomplete,
        [first, ..] if *first != HANDSHAKE => return Hello::NotTls,
        [_, major, ..] if *major != 3 => return Hello::NotTls,
        _ => {}
    }
    let mut handshake: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        let Some((header, after)) = rest.split_first_chunk::<5>() else {
            return Hello::Incomplete;
        };
        if header[0] != HANDSHAKE || header[1] != 3 {
            return Hello::Malformed("a non-handshake record interrupts the ClientHello");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Hello::Malformed("record length");
        }
        let Some((fragment, after)) = after.split_at_checked(len) else {
            return Hello::Incomplete;
        };
        handshake.extend_from_slice(fragment);
        rest = after;
        let Some((&kind, after_kind)) = handshake.split_first() else {
            continue;
        };
        if kind != CLIENT_HELLO {
            return Hello::Malformed("the first handshake message is not a ClientHello");
        }
        let Some((length, body)) = after_kind.split_first_chunk::<3>() else {
            continue;
        };
        let length =
            usize::from(length[0]) << 16 | usize::from(length[1]) << 8 | usize::from(length[2]);
        if length > MAX_CLIENT_HELLO {
            return Hello::TooLarge;
        }
        if let Some(body) = body.get(..length) {
            return match server_name(body) {
                Ok(server_name) => Hello::ClientHello { server_name },
                Err(why) => Hello::Malformed(why),
            };
        }
    }
}

/// The `server_name` of a ClientHello body (RFC 8446 §4.1.2, RFC 6066 §3).
fn server_name(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(body);
    r.take(2).ok_or("legacy_version")?;
    r.take(32).ok_or("random")?;
    let session = r.vec8().ok_or("legacy_session_id")?;
    if session.len() > 32 {
        return Err("legacy_session_id longer than 32 bytes");
    }
    let suites = r.vec16().ok_or("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("cipher_suites length");
    }
    if r.vec8().ok_or("legacy_compression_methods")?.is_empty() {
        return Err("legacy_compression_methods is empty");
    }
    if r.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut extensions = Reader(r.vec16().ok_or("extensions")?);
    if !r.0.is_empty() {
        return Err("bytes after the extensions");
    }
    let mut found = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16().ok_or("extension type")?;
        let data = extensions.vec16().ok_or("extension length")?;
        if kind != SERVER_NAME {
            continue;
        }
        if found.is_some() {
            return Err("two server_name extensions");
        }
        found = Some(host_name(data)?);
    }
    Ok(found.flatten())
}

/// The `host_name` entry of a `ServerNameList`, validated as a DNS name.
fn host_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut ext = Reader(data);
    let mut list = Reader(ext.vec16().ok_or("server_name_list")?);
    if !ext.0.is_empty() {
        return Err("bytes after the server_name_list");
    }
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8().ok_or("server name type")?;
        let name = list.vec16().ok_or("server name length")?;
        if kind != HOST_NAME || host.is_some() {
            continue; // unknown name types are skipped; the first host_name counts
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err("server name is not a DNS host name");
        }
        host = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
    }
    Ok(host)
}

/// A bounds-checked cursor over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body with `extensions` (each `(type, data)`), or none at all.
    fn hello_body(extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend([7u8; 32]);
        b.push(32);
        b.extend([1u8; 32]);
        b.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
        b.extend([1, 0]);
        if let Some(exts) = extensions {
            let mut all = Vec::new();
            for (kind, data) in exts {
                all.extend(kind.to_be_bytes());
                all.extend((data.len() as u16).to_be_bytes());
                all.extend(data);
            }
            b.extend((all.len() as u16).to_be_bytes());
            b.extend(all);
        }
        b
    }

    fn sni_ext(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![HOST_NAME];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name);
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        (SERVER_NAME, data)
    }

    fn handshake(body: &[u8]) -> Vec<u8> {
        let mut h = vec![CLIENT_HELLO];
        h.extend(&(body.len() as u32).to_be_bytes()[1..]);
        h.extend(body);
        h
    }

    /// The handshake split into records of at most `size` bytes.
    fn records(handshake: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in handshake.chunks(size) {
            out.extend([HANDSHAKE, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
        out
    }

    fn hello(name: &str) -> Vec<u8> {
        let body = hello_body(Some(&[
            (0x000a, vec![0, 2, 0, 0x1d]),
            sni_ext(name.as_bytes()),
        ]));
        records(&handshake(&body), MAX_RECORD)
    }

    fn named(name: &str) -> Hello {
        Hello::ClientHello {
            server_name: Some(name.into()),
        }
    }

    #[test]
    fn reads_the_server_name() {
        assert_eq!(parse(&hello("a.example.com")), named("a.example.com"));
        assert_eq!(parse(&hello("A.Example.COM.")), named("a.example.com"));
    }

    #[test]
    fn every_prefix_is_incomplete_and_trailing_bytes_are_ignored() {
        let full = hello("b.example.com");
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), Hello::Incomplete, "prefix of {n} bytes");
        }
        let mut more = full.clone();
        more.extend([0x17, 3, 3, 0, 1, 0]);
        assert_eq!(parse(&more), named("b.example.com"));
    }

    #[test]
    fn fragmented_over_many_records() {
        let body = hello_body(Some(&[sni_ext(b"frag.example.com")]));
        for size in [1, 2, 3, 7, 50] {
            let bytes = records(&handshake(&body), size);
            assert_eq!(
                parse(&bytes),
                named("frag.example.com"),
                "records of {size}"
            );
        }
    }

    #[test]
    fn no_extensions_or_no_sni_is_a_hello_without_name() {
        let none = Hello::ClientHello { server_name: None };
        assert_eq!(parse(&records(&handshake(&hello_body(None)), 4096)), none);
        let other = hello_body(Some(&[(0x002b, vec![2, 3, 4])]));
        assert_eq!(parse(&records(&handshake(&other), 4096)), none);
    }

    #[test]
    fn plain_text_is_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse(b"hello"), Hello::NotTls);
        assert_eq!(parse(&[HANDSHAKE, 2, 0]), Hello::NotTls);
        assert_eq!(parse(&[HANDSHAKE]), Hello::Incomplete);
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let full = hello("c.example.com");
        // Every single-byte corruption, and lengths that lie, are classified without panicking.
        for i in 0..full.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut bad = full.clone();
                bad[i] = v;
                let _ = parse(&bad);
            }
        }
        let mut bad_len = hello_body(Some(&[sni_ext(b"x.example.com")]));
        let n = bad_len.len();
        bad_len[n - 3] = 0xff; // the name's length runs past the end
        assert!(matches!(
            parse(&records(&handshake(&bad_len), 4096)),
            Hello::Malformed(_)
        ));
        assert!(matches!(
            parse(&records(
                &handshake(&hello_body(Some(&[sni_ext(b"bad/name")]))),
                4096
            )),
            Hello::Malformed("server name is not a DNS host name")
        ));
        let mut not_hello = handshake(&hello_body(None));
        not_hello[0] = 2; // ServerHello
        assert!(matches!(
            parse(&records(&not_hello, 4096)),
            Hello::Malformed(_)
        ));
        let mut alert_inside = records(&handshake(&hello_body(None)), 10);
        alert_inside[15] = 0x15;
        assert!(matches!(parse(&alert_inside), Hello::Malformed(_)));
        assert!(matches!(
            parse(&[HANDSHAKE, 3, 1, 0, 0]),
            Hello::Malformed("record length")
        ));
    }

    /// Random bytes, and valid hellos with random bytes overwritten, truncated or inserted:
    /// every input is classified without panicking, and a name only comes out of a hello.
    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let valid = hello("mutate.example.com");
        for round in 0..20_000 {
            let input: Vec<u8> = match round % 4 {
                0 => (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect(),
                1 => {
                    let mut v = valid.clone();
                    for _ in 0..rng.usize(1..4) {
                        let i = rng.usize(..v.len());
                        v[i] = rng.u8(..);
                    }
                    v
                }
                2 => valid[..rng.usize(..valid.len())].to_vec(),
                _ => {
                    let mut v = valid.clone();
                    let at = rng.usize(..v.len());
                    v.splice(at..at, (0..rng.usize(1..8)).map(|_| rng.u8(..)));
                    v
                }
            };
            if let Hello::ClientHello {
                server_name: Some(name),
            } = parse(&input)
            {
                assert_eq!(input.first(), Some(&HANDSHAKE));
                assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                );
            }
        }
    }

    #[test]
    fn oversized_hello_is_refused_before_it_is_read() {
        let header = [HANDSHAKE, 3, 1, 0, 4, CLIENT_HELLO, 0x01, 0x00, 0x00];
        assert_eq!(parse(&header), Hello::TooLarge);
    }

    #[tokio::test]
    async fn reader_is_bounded_in_time_and_replays_what_it_read() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = hello("d.example.com");
        let sent = bytes.clone();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for piece in sent.chunks(17) {
                c.write_all(piece).await.unwrap();
                c.flush().await.unwrap();
            }
            // A second client that sends nothing.
            let silent = TcpStream::connect(addr).await.unwrap();
            (c, silent)
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let got = read_client_hello(&mut s, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(got.server_name.as_deref(), Some("d.example.com"));
        assert!(got.tls);
        assert_eq!(got.bytes, bytes);
        let (mut silent, _) = listener.accept().await.unwrap();
        let err = read_client_hello(&mut silent, Duration::from_millis(100)).await;
        assert!(matches!(err, Err(SniffError::Timeout(_))), "{err:?}");
        drop(client.await.unwrap());
    }
}
