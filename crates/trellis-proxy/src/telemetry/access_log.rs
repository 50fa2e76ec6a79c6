//! The access log: one JSON object per request, one line each, with Envoy's field names.
//!
//! Owns formatting a line (on the request's thread, into one buffer) and handing it to a writer
//! thread over a bounded channel. It must never block a request: when the channel is full the line
//! is dropped and counted (`trellis_proxy_access_log_dropped_total`). The writer thread batches
//! lines and flushes whenever the queue runs dry, so a line is out as soon as the log is idle.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

use super::RequestRecord;

/// Lines waiting for the writer thread; past this, lines are dropped.
pub const QUEUE_LINES: usize = 8192;
/// How long the writer sleeps when the queue is empty.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// The sending half of the access log; dropping it drains the queue and stops the writer.
pub struct AccessLog {
    sender: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer thread over `out`. `dropped` counts lines lost to a full queue or a
    /// writer that has gone away.
    pub fn start(out: Box<dyn Write + Send>, dropped: Counter) -> std::io::Result<AccessLog> {
        let (sender, receiver) = sync_channel(QUEUE_LINES);
        let writer = std::thread::Builder::new()
            .name("trellis-access-log".into())
            .spawn(move || write_lines(receiver, out))?;
        Ok(AccessLog {
            sender: Some(sender),
            writer: Some(writer),
            dropped,
        })
    }

    /// Formats `r` and queues it; never blocks.
    pub fn log(&self, r: &RequestRecord<'_>) {
        let Some(sender) = &self.sender else { return };
        match sender.try_send(format_line(r)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(writer) = self.writer.take() {
            // The writer only drains what is queued (bounded) and exits.
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped.get())
            .finish()
    }
}

/// One access-log line, newline included.
pub fn format_line(r: &RequestRecord<'_>) -> Vec<u8> {
    let mut line = Vec::with_capacity(512);
    let mut field = Fields {
        out: &mut line,
        first: true,
    };
    field.key("start_time");
    field.out.push(b'"');
    push_rfc3339_millis(field.out, r.start);
    field.out.push(b'"');
    field.str("method", r.method);
    field.str("path", r.path);
    field.str("protocol", r.protocol);
    field.num("response_code", u64::from(r.response_code));
    field.str(
        "response_flags",
        if r.response_flags.is_empty() {
            "-"
        } else {
            r.response_flags
        },
    );
    field.num("bytes_received", r.bytes_received);
    field.num("bytes_sent", r.bytes_sent);
    field.num("duration", millis(r.duration));
    field.opt_str("x_forwarded_for", r.x_forwarded_for);
    field.opt_str("user_agent", r.user_agent);
    field.opt_str("request_id", r.request_id);
    field.str("authority", r.authority);
    match r.upstream_host {
        Some(addr) => field.addr("upstream_host", addr),
        None => field.null("upstream_host"),
    }
    field.opt_str("upstream_cluster", r.upstream_cluster);
    field.opt_str("route_name", r.route_name);
    field.addr("downstream_remote_address", r.downstream_remote);
    field.addr("downstream_local_address", r.downstream_local);
    match r.grpc_status {
        Some(status) => field.str("grpc_status", status),
        None => field.null("grpc_status"),
    }
    line.extend_from_slice(b"}\n");
    line
}

/// `2024-05-01T12:34:56.789Z`: RFC 3339, UTC, millisecond precision (Envoy's `%START_TIME%`).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    push_rfc3339_millis(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends [`rfc3339_millis`] without `fmt` (it runs once per logged request).
fn push_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    push_padded(out, u64::try_from(year).unwrap_or(0), 4);
    out.push(b'-');
    push_padded(out, u64::from(month), 2);
    out.push(b'-');
    push_padded(out, u64::from(day), 2);
    out.push(b'T');
    push_padded(out, rem / 3600, 2);
    out.push(b':');
    push_padded(out, rem % 3600 / 60, 2);
    out.push(b':');
    push_padded(out, rem % 60, 2);
    out.push(b'.');
    push_padded(out, u64::from(since.subsec_millis()), 3);
    out.push(b'Z');
}

/// `n` in decimal, left-padded with zeros to at least `width` digits.
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(buf.len().saturating_sub(width));
    out.extend_from_slice(&buf[start..]);
}

/// `ip:port` (`[ip]:port` for IPv6), as `SocketAddr`'s `Display` writes it.
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_padded(out, u64::from(*octet), 1);
            }
            out.push(b':');
            push_padded(out, u64::from(a.port()), 1);
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// Whole milliseconds, as Envoy's `%DURATION%` prints them.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes `"key":value` pairs of one JSON object; values are escaped by serde_json.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, key: &str) {
        self.out
            .extend_from_slice(if self.first { b"{\"" } else { b",\"" });
        self.first = false;
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, value);
    }

    /// Envoy renders a missing value as `null` in JSON logs.
    fn opt_str(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            self.null(key)
        } else {
            self.str(key, value)
        }
    }

    /// An address as a JSON string (it never needs escaping).
    fn addr(&mut self, key: &str, value: SocketAddr) {
        self.key(key);
        self.out.push(b'"');
        push_addr(self.out, value);
        self.out.push(b'"');
    }

    fn null(&mut self, key: &str) {
        self.key(key);
        self.out.extend_from_slice(b"null");
    }

    fn num(&mut self, key: &str, value: u64) {
        self.key(key);
        push_padded(self.out, value, 1);
    }
}

/// Drains the queue in batches. The writer polls instead of blocking in `recv`, so that sending a
/// line never has to wake a sleeping thread (a syscall per request); a line waits at most
/// [`IDLE_POLL`] (Envoy buffers access logs for up to a second).
fn write_lines(receiver: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        let mut wrote = false;
        loop {
            match receiver.try_recv() {
                // A failed write (closed stdout) loses the line; there is nobody left to tell.
                Ok(line) => {
                    let _ = out.write_all(&line);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
        std::thread::sleep(IDLE_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // leap day 2000
        assert_eq!(rfc3339_millis(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599) + Duration::from_micros(999_999);
        assert_eq!(rfc3339_millis(t), "2024-12-31T23:59:59.999Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_107_542_400); // 2100 is not a leap year
        assert_eq!(rfc3339_millis(t), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn numbers_and_addresses_print_as_display_does() {
        for n in [0u64, 7, 10, 99, 65_535, 1_234_567, u64::MAX] {
            let mut out = Vec::new();
            push_padded(&mut out, n, 1);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for a in ["127.0.0.1:8080", "10.255.0.9:1", "0.0.0.0:0", "[::1]:15001"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_addr(&mut out, addr);
            assert_eq!(out, a.as_bytes());
        }
    }

    #[test]
    fn full_queue_drops_and_counts_instead_of_blocking() {
        /// Blocks every write until `release` is dropped, then writes into a shared buffer.
        struct Stuck(
            std::sync::mpsc::Receiver<()>,
            std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        );
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                self.1.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (release, stuck) = std::sync::mpsc::channel();
        let written = std::sync::Arc::default();
        let dropped = Counter::default();
        let log = AccessLog::start(
            Box::new(Stuck(stuck, std::sync::Arc::clone(&written))),
            dropped.clone(),
        )
        .unwrap();
        let record = crate::telemetry::tests::record_fixture();
        let total = QUEUE_LINES + 1000;
        for _ in 0..total {
            log.log(&record);
        }
        assert!(
            dropped.get() > 0,
            "a stuck writer must make lines drop, not block"
        );
        drop(release);
        drop(log);
        let lines = written
            .lock()
            .unwrap()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(lines as u64 + dropped.get(), total as u64);
    }
}
