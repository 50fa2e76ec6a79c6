//! A read-side guard for HTTP/1 request framing. hyper rejects most framing attacks itself
//! (differing duplicate Content-Length, bad chunk sizes, non-chunked Transfer-Encoding), but it
//! accepts a request carrying both Content-Length and Transfer-Encoding (it drops the length and
//! closes afterwards), and it sees a bad chunk size only once the head went upstream. This guard follows message boundaries in the bytes as they are read —
//! before hyper parses them — and raises a flag that the request path turns into a 400. It never
//! changes, buffers or delays the bytes; HTTP/2 connections are passed through untouched.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    head: Head,
    violation: Arc<AtomicBool>,
    /// Raised when the connection opens with the HTTP/2 preface.
    http2: Option<Arc<AtomicBool>>,
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
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S, violation: Arc<AtomicBool>) -> Self {
        FramingGuard {
            inner,
            state: State::Start,
            line: Vec::new(),
            head: Head::default(),
            violation,
            http2: None,
        }
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
                    let Some(end) = data.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(data);
                        if self.line.len() > MAX_LINE {
                            self.state = State::Passthrough;
                        }
                        return;
                    };
                    self.line.extend_from_slice(&data[..end]);
                    data = &data[end + 1..];
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.on_line(&line);
                    line.clear();
                    self.line = line;
                }
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        match self.state {
            State::RequestLine if line.is_empty() => {} // tolerated leading CRLF
            State::RequestLine => {
                self.head = Head::default();
                self.state = State::Headers;
            }
            State::Headers if line.is_empty() => {
                let head = std::mem::take(&mut self.head);
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
                let Some(colon) = line.iter().position(|b| *b == b':') else {
                    return;
                };
                let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
                if name.eq_ignore_ascii_case(b"content-length") {
                    match std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        Some(n) => self.head.content_length = Some(n),
                        None => self.state = State::Passthrough, // hyper rejects it
                    }
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    self.head.transfer_encoding = true;
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
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.state != State::Passthrough && matches!(polled, Poll::Ready(Ok(()))) {
            let this = &mut *self;
            this.scan(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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
    fn http2_is_passed_through() {
        assert_eq!(
            flagged(&["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).1,
            State::Passthrough
        );
    }
}
