//! Acceptance tests of DestinationRule `connectionPool` connection lifetimes through a real
//! gateway `trellis-proxy` (issue 3): `tcp.maxConnectionDuration` on pooled HTTP upstream
//! connections (counted by an upstream that records every connection it accepts), and
//! `tcp.idleTimeout` / `tcp.maxConnectionDuration` on TCP-proxied connections to a real
//! `trellis sample-app --tcp-echo`. Needs `cargo build --workspace --bins`.

mod e2e_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e_support::*;
use trellis_testkit::{free_port, sample_app_on};

const SVC: &str = "pool.default.svc.cluster.local";
const ECHO: &str = "tcp-echo.default.svc.cluster.local";

/// An HTTP/1.1 upstream that answers every request with `200 ok` on a kept-alive connection
/// and counts the connections it accepted. Its threads end with the test process.
fn counting_upstream() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve_keep_alive(conn));
        }
    });
    (port, accepted)
}

fn serve_keep_alive(conn: TcpStream) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        // Requests without bodies: read the head up to its empty line.
        let mut line = String::new();
        let mut head_lines = 0;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" && head_lines > 0 => break,
                Ok(_) => head_lines += 1,
            }
        }
        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// `tcp.maxConnectionDuration` (Istio: the cluster's `max_connection_duration`): a pooled
/// upstream connection serves requests until it is that old, then the next request gets a
/// new connection.
#[test]
fn http_upstream_connections_are_replaced_after_max_connection_duration() {
    let (upstream, accepted) = counting_upstream();
    let port = gateway_port();
    let vs = virtual_service_yaml(
        "pool",
        &["*"],
        &format!("  - route: [{{destination: {}}}]\n", dest(SVC, None, 8080)),
    );
    let dr = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: pool, namespace: default}}\nspec:\n  host: {SVC}\n  trafficPolicy:\n    connectionPool:\n      tcp: {{maxConnectionDuration: 3s}}\n"
    );
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("pool", SVC, 8080, "HTTP", &[ep(upstream, "v1")]),
        vs,
        dr,
    ]);
    let gw = Gateway::start(port, &yaml);
    let mut c = gw.client();
    // Requests in quick succession share one pooled connection.
    for _ in 0..3 {
        let r = c.get("pool.local", "/", &[]).expect("request");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "{r:?}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Once the connection is three seconds old it is not used again.
    std::thread::sleep(Duration::from_millis(3300));
    let r = c.get("pool.local", "/", &[]).expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let r = c.get("pool.local", "/", &[]).expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the new one is reused");
}

/// A gateway TCP server on `port` forwarding to the tcp-echo app on `echo`, with the
/// DestinationRule `tcp` settings given.
fn tcp_gateway(port: u16, echo: u16, tcp: &str) -> Gateway {
    let yaml = docs(&[
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: tcp, protocol: TCP}}\n    hosts: [\"*\"]\n"
        ),
        service_entry_yaml("tcp-echo", ECHO, 9000, "TCP", &[ep(echo, "v1")]),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-echo, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  tcp:\n  - route: [{{destination: {}}}]\n",
            dest(ECHO, None, 9000)
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: tcp-echo, namespace: default}}\nspec:\n  host: {ECHO}\n  trafficPolicy:\n    connectionPool:\n      tcp: {tcp}\n"
        ),
    ]);
    Gateway::start(port, &yaml)
}

/// Connect and check one echo round trip.
fn echo_connection(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s.try_clone().expect("clone");
    w.write_all(b"hello\n").expect("write");
    let mut line = String::new();
    reader.read_line(&mut line).expect("echo");
    assert!(line.contains("hello"), "{line:?}");
    (s, reader)
}

/// `tcp.idleTimeout` on the TCP proxy: a connection without bytes either way for that long is
/// closed by the gateway (Envoy's default is an hour).
#[test]
fn tcp_connections_close_after_the_idle_timeout() {
    let echo = free_port();
    let _app = sample_app_on(echo, "tcp-echo", "v1", &["--tcp-echo"]);
    let port = gateway_port();
    let _gw = tcp_gateway(port, echo, "{idleTimeout: 1s}");
    let (_s, mut reader) = echo_connection(SocketAddr::from(([127, 0, 0, 1], port)));
    let quiet = Instant::now();
    let mut rest = Vec::new();
    let n = reader
        .read_to_end(&mut rest)
        .expect("closed, not timed out");
    assert_eq!(n, 0, "{rest:?}");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the idle timeout",
        quiet.elapsed()
    );
}

/// `tcp.maxConnectionDuration` on the TCP proxy (`max_downstream_connection_duration`): a
/// connection is closed that long after it started even while bytes keep flowing.
#[test]
fn busy_tcp_connections_close_at_max_connection_duration() {
    let echo = free_port();
    let _app = sample_app_on(echo, "tcp-echo", "v1", &["--tcp-echo"]);
    let port = gateway_port();
    let _gw = tcp_gateway(port, echo, "{maxConnectionDuration: 1500ms}");
    let started = Instant::now();
    let (s, mut reader) = echo_connection(SocketAddr::from(([127, 0, 0, 1], port)));
    let mut w = s.try_clone().expect("clone");
    let mut echoed = 1;
    let closed_after = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still open after 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
        let mut line = String::new();
        let ok = w.write_all(b"ping\n").is_ok() && reader.read_line(&mut line).unwrap_or(0) > 0;
        if !ok {
            break started.elapsed();
        }
        echoed += 1;
    };
    assert!(echoed >= 3, "only {echoed} round trips before the close");
    assert!(
        closed_after >= Duration::from_millis(1400),
        "closed after {closed_after:?}"
    );
}

/// `http.maxConcurrentStreams` on an HTTP/2 upstream (`h2UpgradePolicy: UPGRADE`): each
/// connection carries at most that many streams. With one connection allowed and one stream
/// per connection, a second concurrent request overflows (503 `UO`); without the stream limit
/// the same single connection carries both.
#[test]
fn http2_max_concurrent_streams_caps_streams_per_connection() {
    let apps = Apps::start(&[("pool", "v1")]);
    let run = |http: &str| {
        let port = gateway_port();
        let yaml = docs(&[
            gateway_yaml(port),
            service_entry_yaml("pool", SVC, 8080, "HTTP", &[ep(apps.port("pool/v1"), "v1")]),
            virtual_service_yaml(
                "pool",
                &["*"],
                &format!(
                    "  - route: [{{destination: {}}}]\n    retries: {{attempts: 0}}\n",
                    dest(SVC, None, 8080)
                ),
            ),
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: pool, namespace: default}}\nspec:\n  host: {SVC}\n  trafficPolicy:\n    connectionPool:\n      tcp: {{maxConnections: 1}}\n      http: {http}\n"
            ),
        ]);
        let gw = Gateway::start(port, &yaml);
        let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
            let slow = s.spawn(|| {
                let r = gw
                    .client()
                    .get("pool.local", "/delay/2", &[])
                    .expect("slow");
                (
                    r.status,
                    r.headers
                        .get("x-trellis-flags")
                        .cloned()
                        .unwrap_or_default(),
                )
            });
            // Let the slow request take its stream first.
            std::thread::sleep(Duration::from_millis(500));
            let r = gw.client().get("pool.local", "/get", &[]).expect("second");
            let second = (
                r.status,
                r.headers
                    .get("x-trellis-flags")
                    .cloned()
                    .unwrap_or_default(),
            );
            vec![slow.join().expect("join"), second]
        });
        statuses
    };
    // Whichever got the stream first is answered; the other overflows.
    let mut limited = run("{h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 1}");
    limited.sort();
    assert_eq!(limited[0].0, 200, "{limited:?}");
    assert_eq!(limited[1], (503, "UO".to_string()), "{limited:?}");
    let shared = run("{h2UpgradePolicy: UPGRADE}");
    assert_eq!(shared[0].0, 200, "{shared:?}");
    assert_eq!(shared[1].0, 200, "one connection, two streams: {shared:?}");
}
