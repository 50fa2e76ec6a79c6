//! A guard for HTTP/1 request framing and head limits. It follows message boundaries in the bytes
//! as they are read — before hyper parses them — and never changes, buffers or delays them;
//! HTTP/2 connections are passed through untouched.
//!
//! Two kinds of finding:
//! - hyper accepts the request but it is unsafe to forward (Content-Length with
//!   Transfer-Encoding; a bad chunk size hyper would only see once the head went upstream):
//!   `violation` is raised and the request path answers 400 `DPE`.
//! - hyper rejects the head itself (more than `max_headers` headers, a head larger than its
//!   buffer, differing or invalid Content-Length, a final transfer coding that is not chunked)
//!   and would answer a bare 431/400 without calling the service. The guard records a
//!   `RejectedHead` and, when hyper writes its error response, writes ours instead (status,
//!   `x-trellis-flags: DPE`, a one-line body, `connection: close`); the listener logs and
//!   counts it once the connection ends.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest line the guard tracks; longer ones are hyper's to reject (431/400).
const MAX_LINE: usize = 70 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Wraps a connection's stream; `violation` is raised on a smuggling-shaped request.
pub struct FramingGuard<S> {
    inner: S,
    state: State,
    line: Vec<u8>,
    /// The current request's request line (buffer swapped with `line`, not copied).
    request_line: Vec<u8>,
    head: Head,
    /// hyper's limits: header count and read buffer size.
    max_headers: usize,
    max_head_bytes: usize,
    violation: Arc<AtomicBool>,
    /// Raised when the connection opens with the HTTP/2 preface.
    http2: Option<Arc<AtomicBool>>,
    /// Set once a head hyper will reject was seen.
    rejected: Arc<OnceLock<RejectedHead>>,
    /// Our response to a rejected head, once one was seen.
    reply: Option<Reply>,
}

/// Our answer to a rejected head. Responses to earlier (pipelined) requests still go out as they
/// are: the answer replaces the first response that is the rejection's (hyper's bare one) and
/// everything after it.
struct Reply {
    bytes: Vec<u8>,
    written: usize,
    status: u16,
    active: bool,
}

/// A request head hyper rejects while parsing (it never reaches the service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    TooManyHeaders { limit: usize },
    TooLarge { limit: usize },
    ConflictingContentLength,
    InvalidContentLength,
    TransferEncodingNotChunked,
}

/// A rejected head as the access log sees it.
#[derive(Debug)]
pub struct RejectedHead {
    pub error: HeadError,
    /// From the request line, `"-"` when it was not read whole.
    pub method: String,
    pub path: String,
    /// Raised once our answer replaced hyper's (the head was rejected, not served after all).
    pub answered: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet: HTTP/2 preface or an HTTP/1 request line.
    Start,
    RequestLine,
    Headers,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers,
    /// HTTP/2, or something the guard does not follow (hyper decides).
    Passthrough,
}

#[derive(Debug, Default)]
struct Head {
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// Whether the last transfer coding seen is `chunked`.
    chunked_last: bool,
    headers: usize,
    bytes: usize,
    /// A Content-Length problem hyper reports once the head is complete.
    error: Option<HeadError>,
    /// An `Upgrade` header: once the head ends the connection may stop being HTTP/1
    /// (WebSocket): the guard passes the rest through (the proxy closes the connection after
    /// a refused upgrade, so no later request goes unchecked).
    upgrade: bool,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooManyHeaders { .. } | HeadError::TooLarge { .. } => 431,
            _ => 400,
        }
    }

    pub fn message(self) -> String {
        match self {
            HeadError::TooManyHeaders { limit } => {
                format!("request has more than {limit} headers; the limit is {limit}\n")
            }
            HeadError::TooLarge { limit } => {
                format!("request head is larger than {limit} bytes\n")
            }
            HeadError::ConflictingContentLength => {
                "request has content-length headers with differing values\n".into()
            }
            HeadError::InvalidContentLength => "request has an invalid content-length\n".into(),
            HeadError::TransferEncodingNotChunked => {
                "request transfer-encoding does not end with chunked\n".into()
            }
        }
    }

    /// The whole HTTP/1.1 response sent instead of hyper's bare one.
    fn response(self) -> Vec<u8> {
        let reason = if self.status() == 431 {
            "Request Header Fields Too Large"
        } else {
            "Bad Request"
        };
        let body = self.message();
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain\r\nx-trellis-flags: DPE\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status(),
            body.len()
        )
        .into_bytes()
    }
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S, violation: Arc<AtomicBool>) -> Self {
        FramingGuard {
            inner,
            state: State::Start,
            line: Vec::new(),
            request_line: Vec::new(),
            head: Head::default(),
            max_headers: 100,
            max_head_bytes: usize::MAX,
            violation,
            http2: None,
            rejected: Arc::default(),
            reply: None,
        }
    }

    /// Record heads hyper rejects in `rejected`, given hyper's header count and buffer limits.
    pub fn with_head_limits(
        mut self,
        max_headers: usize,
        max_head_bytes: usize,
        rejected: Arc<OnceLock<RejectedHead>>,
    ) -> Self {
        self.max_headers = max_headers;
        self.max_head_bytes = max_head_bytes;
        self.rejected = rejected;
        self
    }

    fn reject(&mut self, error: HeadError) {
        // In `Headers` the request line read last is this request's.
        let known = self.state == State::Headers;
        self.state = State::Passthrough;
        if self.reply.is_some() {
            return;
        }
        let mut parts = self.request_line.split(|b| *b == b' ');
        let (method, path) = match (parts.next(), parts.next()) {
            (Some(m), Some(p)) if known => (
                String::from_utf8_lossy(m).into_owned(),
                String::from_utf8_lossy(p).into_owned(),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        self.reply = Some(Reply {
            bytes: error.response(),
            written: 0,
            status: error.status(),
            active: false,
        });
        let _ = self.rejected.set(RejectedHead {
            error,
            method,
            path,
            answered: AtomicBool::new(false),
        });
    }

    /// Also raise `flag` if the connection turns out to be HTTP/2 (prior knowledge).
    pub fn with_http2_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.http2 = Some(flag);
        self
    }

    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Passthrough => return,
                State::Start => {
                    let n = data.len().min(H2_PREFACE.len() - self.line.len());
                    self.line.extend_from_slice(&data[..n]);
                    if !H2_PREFACE.starts_with(&self.line) {
                        // HTTP/1: replay what was held back as the request line.
                        let held = std::mem::take(&mut self.line);
                        self.state = State::RequestLine;
                        self.scan(&held);
                        data = &data[n..];
                        continue;
                    }
                    if self.line.len() == H2_PREFACE.len() {
                        self.state = State::Passthrough;
                        self.line = Vec::new();
                        if let Some(flag) = &self.http2 {
                            flag.store(true, Ordering::Relaxed);
                        }
                        return;
                    }
                    data = &data[n..];
                }
                State::Body(left) => {
                    let n = (data.len() as u64).min(left);
                    data = &data[n as usize..];
                    self.state = if left == n {
                        State::RequestLine
                    } else {
                        State::Body(left - n)
                    };
                }
                State::ChunkData(left) => {
                    let n = (data.len() as u64).min(left);
                    data = &data[n as usize..];
                    self.state = if left == n {
                        State::ChunkCrlf(2)
                    } else {
                        State::ChunkData(left - n)
                    };
                }
                State::ChunkCrlf(left) => {
                    data = &data[1..];
                    self.state = if left == 1 {
                        State::ChunkSize
                    } else {
                        State::ChunkCrlf(left - 1)
                    };
                }
                State::RequestLine | State::Headers | State::ChunkSize | State::Trailers => {
                    let in_head = matches!(self.state, State::RequestLine | State::Headers);
                    let Some(end) = data.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(data);
                        if in_head {
                            self.head.bytes += data.len();
                            self.check_partial_head();
                        } else if self.line.len() > MAX_LINE {
                            self.state = State::Passthrough;
                        }
                        return;
                    };
                    if in_head {
                        self.head.bytes += end + 1;
                    }
                    self.line.extend_from_slice(&data[..end]);
                    data = &data[end + 1..];
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if self.state == State::RequestLine && !line.is_empty() {
                        // Keep the request line for the access log; reuse the old one's buffer.
                        std::mem::swap(&mut line, &mut self.request_line);
                        self.start_head();
                    } else {
                        self.on_line(&line);
                    }
                    line.clear();
                    self.line = line;
                }
            }
        }
        if matches!(self.state, State::RequestLine | State::Headers) {
            self.check_partial_head();
        }
    }

    /// hyper gives up on an incomplete head once its buffer is full, or once the first byte of
    /// a header beyond its count limit arrives.
    fn check_partial_head(&mut self) {
        if self.head.bytes >= self.max_head_bytes {
            self.reject(HeadError::TooLarge {
                limit: self.max_head_bytes,
            });
        } else if self.state == State::Headers
            && self.head.headers >= self.max_headers
            && self.line.first().is_some_and(|b| *b != b'\r')
        {
            self.reject(HeadError::TooManyHeaders {
                limit: self.max_headers,
            });
        }
    }

    fn start_head(&mut self) {
        self.head = Head {
            bytes: self.head.bytes,
            ..Head::default()
        };
        self.state = State::Headers;
    }

    fn on_line(&mut self, line: &[u8]) {
        match self.state {
            State::RequestLine if line.is_empty() => self.head.bytes = 0, // tolerated leading CRLF
            State::RequestLine => self.start_head(),
            State::Headers if line.is_empty() => {
                if let Some(error) = self.head.error {
                    return self.reject(error);
                }
                if self.head.transfer_encoding && !self.head.chunked_last {
                    return self.reject(HeadError::TransferEncodingNotChunked);
                }
                let head = std::mem::take(&mut self.head);
                if head.upgrade {
                    self.state = State::Passthrough;
                    return;
                }
                self.state = match (head.transfer_encoding, head.content_length) {
                    (true, Some(_)) => {
                        self.violation.store(true, Ordering::Relaxed);
                        State::Passthrough
                    }
                    (true, None) => State::ChunkSize,
                    (false, Some(0) | None) => State::RequestLine,
                    (false, Some(n)) => State::Body(n),
                };
            }
            State::Headers => {
                self.head.headers += 1;
                if self.head.headers > self.max_headers {
                    return self.reject(HeadError::TooManyHeaders {
                        limit: self.max_headers,
                    });
                }
                let Some(colon) = line.iter().position(|b| *b == b':') else {
                    return;
                };
                let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
                if name.eq_ignore_ascii_case(b"upgrade") {
                    self.head.upgrade = true;
                } else if name.eq_ignore_ascii_case(b"content-length") {
                    self.on_content_length(value);
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    self.head.transfer_encoding = true;
                    // hyper looks at the last coding of the last Transfer-Encoding header.
                    let last = value.rsplit(|b| *b == b',').next().map(trim);
                    self.head.chunked_last =
                        last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
                }
            }
            State::ChunkSize => {
                let size = line
                    .split(|b| *b == b';')
                    .next()
                    .map(trim)
                    .unwrap_or_default();
                match std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                {
                    Some(0) => self.state = State::Trailers,
                    Some(n) => self.state = State::ChunkData(n),
                    None => {
                        // hyper would only notice while the body streams upstream; flag it now.
                        self.violation.store(true, Ordering::Relaxed);
                        self.state = State::Passthrough;
                    }
                }
            }
            State::Trailers if line.is_empty() => self.state = State::RequestLine,
            _ => {}
        }
    }
}

impl<S> FramingGuard<S> {
    /// As hyper does: a comma-separated list of equal decimal values, equal across headers;
    /// ignored after Transfer-Encoding (hyper drops the length; the request path answers 400).
    fn on_content_length(&mut self, value: &[u8]) {
        if self.head.transfer_encoding {
            self.head.content_length = Some(0);
            return;
        }
        if self.head.error.is_some() {
            return;
        }
        for item in value.split(|b| *b == b',').map(trim) {
            let parsed = (!item.is_empty() && item.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(item).ok()?.parse::<u64>().ok())
                .flatten();
            match (parsed, self.head.content_length) {
                (None, _) => self.head.error = Some(HeadError::InvalidContentLength),
                (Some(n), Some(prev)) if n != prev => {
                    self.head.error = Some(HeadError::ConflictingContentLength)
                }
                (Some(n), _) => self.head.content_length = Some(n),
            }
            if self.head.error.is_some() {
                return;
            }
        }
    }
}

/// Whether `buf` starts the response to a rejected head: hyper's bare answer with `status`
/// (every answer of the request path carries a response flag; an upstream's bare one could only
/// precede it on a pipelined connection if it had the same status).
fn answers_rejection(buf: &[u8], status: u16) -> bool {
    let mut prefix = *b"HTTP/1.1 000 ";
    prefix[9..12].copy_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    if !buf.starts_with(&prefix) {
        return false;
    }
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = &buf[..head_end];
    let flag = head.split(|b| *b == b'\n').find_map(|line| {
        let colon = line.iter().position(|b| *b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(b"x-trellis-flags")
            .then(|| trim(&line[colon + 1..]))
    });
    flag.is_none()
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self
            .reply
            .as_ref()
            .is_some_and(|r| r.active && r.written == r.bytes.len())
        {
            // Answered with `connection: close`: hyper sees the end and closes.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.state != State::Passthrough && matches!(polled, Poll::Ready(Ok(()))) {
            let this = &mut *self;
            this.scan(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> FramingGuard<S> {
    /// hyper is answering a head it rejected: write our response instead of its `len` bytes.
    fn poll_reply(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Some(reply) = self.reply.as_mut() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        if !reply.active {
            if !answers_rejection(buf, reply.status) {
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
            reply.active = true;
            if let Some(rejected) = self.rejected.get() {
                rejected.answered.store(true, Ordering::Relaxed);
            }
        }
        while reply.written < reply.bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &reply.bytes[reply.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => reply.written += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(buf.len()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.reply.is_some() {
            return self.poll_reply(cx, buf);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.reply.is_some() {
            // One buffer at a time, so each response head is seen whole.
            let buf = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_reply(cx, buf);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(chunks: &[&str]) -> (bool, State) {
        let v = Arc::new(AtomicBool::new(false));
        let mut g = FramingGuard::new((), Arc::clone(&v));
        for c in chunks {
            g.scan(c.as_bytes());
        }
        (v.load(Ordering::Relaxed), g.state)
    }

    #[test]
    fn the_http2_preface_raises_the_http2_flag_even_when_split() {
        let h2 = Arc::new(AtomicBool::new(false));
        let mut g = FramingGuard::new((), Arc::default()).with_http2_flag(Arc::clone(&h2));
        g.scan(b"PRI * HT");
        assert!(!h2.load(Ordering::Relaxed));
        g.scan(b"TP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(h2.load(Ordering::Relaxed));
        assert_eq!(g.state, State::Passthrough);
        let h2 = Arc::new(AtomicBool::new(false));
        let mut g = FramingGuard::new((), Arc::default()).with_http2_flag(Arc::clone(&h2));
        g.scan(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!h2.load(Ordering::Relaxed));
    }

    #[test]
    fn content_length_with_transfer_encoding_is_flagged_in_any_order_and_split() {
        assert!(
            flagged(&[
                "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            ])
            .0
        );
        assert!(
            flagged(&[
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n"
            ])
            .0
        );
        assert!(
            flagged(&[
                "PO",
                "ST / HTTP/1.1\r\nTransfer-Enc",
                "oding: chunked\r\nContent-Length: 4\r",
                "\n\r\n"
            ])
            .0
        );
    }

    #[test]
    fn follows_keep_alive_bodies_to_the_next_head() {
        let (v, s) = flagged(&[
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nX-Note: Content-Length: 1\r\n\r\n",
        ]);
        assert_eq!((v, s), (false, State::RequestLine));
        // A body that looks like a head is not mistaken for one.
        let (v, _) = flagged(&[
            "POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
        ]);
        assert!(!v);
        assert!(flagged(&["POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]).0);
    }

    #[test]
    fn bytes_after_an_upgrade_head_pass_through() {
        // WebSocket frames after the head are not read as HTTP (nor flagged).
        let (v, s) = flagged(&[
            "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "\u{81}\u{05}Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        assert_eq!((v, s), (false, State::Passthrough));
    }

    fn rejected(chunks: &[&[u8]]) -> Option<(HeadError, String, String)> {
        let slot = Arc::new(OnceLock::new());
        let mut g =
            FramingGuard::new((), Arc::default()).with_head_limits(3, 200, Arc::clone(&slot));
        for c in chunks {
            g.scan(c);
        }
        let r: &RejectedHead = slot.get()?;
        Some((r.error, r.method.clone(), r.path.clone()))
    }

    #[test]
    fn heads_hyper_rejects_are_recorded_with_their_request_line() {
        let ok = |r: Option<(HeadError, String, String)>| r.map(|(e, m, p)| (e, m + " " + &p));
        let too_many = HeadError::TooManyHeaders { limit: 3 };
        // The fourth header is caught at its first byte, as httparse does.
        assert_eq!(
            ok(rejected(&[b"GET /a HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD"])),
            Some((too_many, "GET /a".into()))
        );
        assert_eq!(
            rejected(&[b"GET /a HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"]),
            None
        );
        let big = [b'a'; 300];
        assert_eq!(
            rejected(&[b"GET /", &big]).map(|r| (r.0, r.1)),
            Some((HeadError::TooLarge { limit: 200 }, "-".into()))
        );
        for (head, want) in [
            (
                "Content-Length: 3\r\nContent-Length: 5",
                HeadError::ConflictingContentLength,
            ),
            ("Content-Length: 3, 4", HeadError::ConflictingContentLength),
            ("Content-Length: +3", HeadError::InvalidContentLength),
            ("Content-Length: ", HeadError::InvalidContentLength),
            (
                "Transfer-Encoding: chunked, gzip",
                HeadError::TransferEncodingNotChunked,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
                HeadError::TransferEncodingNotChunked,
            ),
        ] {
            let raw = format!("POST /p HTTP/1.1\r\n{head}\r\n\r\n");
            assert_eq!(
                ok(rejected(&[raw.as_bytes()])),
                Some((want, "POST /p".into())),
                "{head}"
            );
        }
        // What hyper accepts is not recorded: equal lengths, a chunked final coding, and a
        // second request on the connection after a fine first one.
        for head in [
            "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "Content-Length: 3, 3\r\n\r\nabc",
            "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ] {
            let raw = format!("POST /p HTTP/1.1\r\n{head}GET /q HTTP/1.1\r\nA: 1\r\n\r\n");
            assert_eq!(rejected(&[raw.as_bytes()]), None, "{head}");
        }
    }

    #[test]
    fn only_the_rejections_answer_is_replaced() {
        let hypers = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(answers_rejection(hypers, 400));
        assert!(!answers_rejection(hypers, 431));
        let hypers = b"HTTP/1.1 431 Too Large\r\ncontent-length: 0\r\n\r\nx-trellis-flags: NR";
        assert!(answers_rejection(hypers, 431));
        // An earlier pipelined request's answer goes out untouched (the request path's own,
        // including a DPE). A flag after the head does not count.
        assert!(!answers_rejection(
            b"HTTP/1.1 431 Too Large\r\nX-Trellis-Flags: DPE\r\n\r\n",
            431
        ));
        assert!(!answers_rejection(
            b"HTTP/1.1 400 Bad Request\r\nx-trellis-flags: NR\r\n\r\n",
            400
        ));
        assert!(!answers_rejection(b"HTTP/1.1 200 OK\r\n\r\n", 400));
    }

    #[test]
    fn our_answer_replaces_hypers_for_a_rejected_head() {
        let body = HeadError::InvalidContentLength.response();
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("\r\nx-trellis-flags: DPE\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        let msg = HeadError::InvalidContentLength.message();
        assert!(text.ends_with(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n{msg}",
            msg.len()
        )));
        assert_eq!(HeadError::TooLarge { limit: 1 }.status(), 431);
    }

    #[test]
    fn http2_is_passed_through() {
        assert_eq!(
            flagged(&["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).1,
            State::Passthrough
        );
    }
}
