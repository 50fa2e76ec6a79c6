//! HTTP CONNECT through a gateway `trellis-proxy`, as Istio has it: Istio exposes no CONNECT
//! termination (Envoy needs a route with `connect_matcher`, which Istio only generates through
//! an EnvoyFilter), so a CONNECT request finds no route: 404 with flag `NR`, and nothing is
//! tunnelled to the upstream. Needs `cargo build -p trellis -p trellis-proxy --bins`.

mod e2e_support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use e2e_support::*;

const SVC: &str = "shop.default.svc.cluster.local";

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
