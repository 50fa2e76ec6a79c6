//! HTTP CONNECT through a gateway `trellis-proxy`, as Istio has it. Istio exposes no CONNECT
//! termination (Envoy needs a route with `connect_matcher`, which Istio only generates through
//! an EnvoyFilter), so a CONNECT request finds no route: 404 with flag `NR`, and nothing is
//! tunnelled. What Istio does expose is CONNECT origination: a DestinationRule `tunnel` sends
//! TCP traffic through an HTTP proxy (Envoy's tcp_proxy `tunneling_config`); tested against a
//! small CONNECT proxy in this file and a real `trellis sample-app --tcp-echo`.
//! Needs `cargo build -p trellis -p trellis-proxy --bins`.

mod e2e_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_support::*;

const SVC: &str = "shop.default.svc.cluster.local";
const EGRESS: &str = "egress-proxy.default.svc.cluster.local";

#[test]
fn connect_requests_find_no_route_as_in_istio() {
    let apps = Apps::start(&[("shop", "v1")]);
    let port = gateway_port();
    let yaml = docs(&[
        gateway_yaml(port),
        service_entry_yaml("shop", SVC, 8080, "HTTP", &[ep(apps.port("shop/v1"), "v1")]),
        virtual_service_yaml(
            "shop",
            &["*"],
            &format!("  - route: [{{destination: {}}}]\n", dest(SVC, None, 8080)),
        ),
    ]);
    let gw = Gateway::start(port, &yaml);
    let mut s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"CONNECT shop.local:80 HTTP/1.1\r\nHost: shop.local:80\r\n\r\n")
        .expect("write");
    let r = read_response(&mut BufReader::new(s), false).expect("response");
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(
        r.headers.get("x-trellis-flags").map(String::as_str),
        Some("NR"),
        "{r:?}"
    );
    // Plain requests on the same gateway still route.
    let r = gw.client().get("shop.local", "/get", &[]).expect("request");
    assert_eq!(r.status, 200, "{r:?}");
}

/// A minimal HTTP CONNECT proxy: reads `CONNECT host:port`, records it, connects there, answers
/// 200 and splices bytes both ways. Anything else is answered 400 and recorded as well.
fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let log = Arc::clone(&log);
            std::thread::spawn(move || tunnel(conn, &log));
        }
    });
    (port, seen)
}

fn tunnel(conn: TcpStream, log: &Mutex<Vec<String>>) {
    let Ok(mut client) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    log.lock()
        .expect("log")
        .push(request_line.trim().to_string());
    let target = match request_line.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", target, _] => target.to_string(),
        _ => {
            let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            return;
        }
    };
    let Ok(mut far) = TcpStream::connect(&target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let Ok(mut far_reader) = far.try_clone() else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut far_reader, &mut client);
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut reader, &mut far);
    let _ = far.shutdown(std::net::Shutdown::Write);
}

/// DestinationRule `tunnel: {protocol: CONNECT, targetHost, targetPort}`: connections to the
/// egress proxy's service through a gateway TCP server are opened as CONNECT tunnels to the
/// target, and the client talks to the target's echo service through it.
#[test]
fn destination_rule_tunnel_sends_tcp_through_an_http_connect_proxy() {
    let echo = trellis_testkit::free_port();
    let _app = trellis_testkit::sample_app_on(echo, "tcp-echo", "v1", &["--tcp-echo"]);
    let (proxy_port, seen) = connect_proxy();
    let port = gateway_port();
    let yaml = docs(&[
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: tcp, protocol: TCP}}\n    hosts: [\"*\"]\n"
        ),
        service_entry_yaml("egress-proxy", EGRESS, 3128, "TCP", &[ep(proxy_port, "v1")]),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: egress, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  tcp:\n  - route: [{{destination: {}}}]\n",
            dest(EGRESS, None, 3128)
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: egress, namespace: default}}\nspec:\n  host: {EGRESS}\n  trafficPolicy:\n    tunnel: {{protocol: CONNECT, targetHost: 127.0.0.1, targetPort: {echo}}}\n"
        ),
    ]);
    let _gw = Gateway::start(port, &yaml);
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"through the tunnel\n").expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(
        reply.starts_with("tcp-echo/v1") && reply.contains("through the tunnel"),
        "{reply:?}"
    );
    let seen = seen.lock().expect("log").clone();
    let wanted = format!("CONNECT 127.0.0.1:{echo} HTTP/1.1");
    assert!(seen.contains(&wanted), "{seen:?}");
    assert!(seen.iter().all(|l| l.starts_with("CONNECT ")), "{seen:?}");
}
