//! Safe HTTP/2 defaults seen from a real HTTP/2 client (nghttp, from Debian's nghttp2-client): the
//! gateway announces at most 100 concurrent streams per connection, and a client that opens many
//! streams at once on one connection (h2load, 200 in flight asked) is served within that limit.
//! Needs `cargo build --workspace --bins`, and nghttp/h2load (`apt-get install nghttp2-client`).

mod e2e_support;

use std::process::Command;

use e2e_support::*;

fn reviews_gateway() -> (Apps, Gateway) {
    let port = gateway_port();
    let (apps, mut parts) = reviews_v1_v2(port);
    let http = format!(
        "  - route: [{{destination: {}}}]\n",
        dest(REVIEWS, Some("v1"), 9080)
    );
    parts.push(virtual_service_yaml("reviews", &["*"], &http));
    (apps, Gateway::start(port, &docs(&parts)))
}

#[test]
fn h2_settings_announce_100_concurrent_streams() {
    let (_apps, mut gw) = reviews_gateway();
    let out = Command::new("nghttp")
        .args(["-nv", "--timeout=10", &gw.url("/get")])
        .output()
        .expect("run nghttp (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    // The server's first SETTINGS frame (not the client's own `send SETTINGS`).
    let server_settings: String = text
        .split("recv SETTINGS frame")
        .nth(1)
        .and_then(|rest| rest.split("frame <").next())
        .unwrap_or_default()
        .to_owned();
    assert!(
        server_settings.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100"),
        "server SETTINGS: {server_settings:?}\nfull output:\n{text}\n{}",
        gw.proxy.describe()
    );
    assert!(text.contains(":status: 200"), "{text}");
}

#[test]
fn many_streams_on_one_connection_are_all_served() {
    let (_apps, gw) = reviews_gateway();
    let out = Command::new("h2load")
        .args(["-n", "600", "-c", "1", "-m", "200", &gw.url("/get")])
        .output()
        .expect("run h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("600 succeeded, 0 failed, 0 errored"),
        "h2load: {text}"
    );
    assert!(text.contains("status codes: 600 2xx"), "h2load: {text}");
}
