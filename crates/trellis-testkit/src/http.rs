//! HTTP requests for tests through the `curl` binary (HTTP/1.1, or h2c with
//! `--http2-prior-knowledge` in the extra arguments), so tests talk to our
//! servers through a real, independent client.

use std::collections::BTreeMap;
use std::process::Command;

/// Response headers, names lower-cased, repeated values joined with `,`.
pub type Headers = BTreeMap<String, String>;

/// `GET url` → `(status, headers, body)`. Status 0 means no HTTP answer
/// (connection refused, timeout); the body then holds curl's error.
pub fn http_get(url: &str) -> (u16, Headers, String) {
    http_request(url, &[])
}

/// Runs `curl -sS -i --max-time 10 <extra args…> url` and parses the last
/// response head (after any `100 Continue`). Pass e.g. `["-H", "end-user: jason"]`,
/// `["-X", "POST", "-d", "body"]` or `["--http2-prior-knowledge"]`.
pub fn http_request(url: &str, extra_args: &[&str]) -> (u16, Headers, String) {
    let output = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(extra_args)
        .arg(url)
        .output()
        .expect("run curl (is it installed?)");
    if !output.status.success() {
        return (
            0,
            Headers::new(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
    }
    parse_response(&String::from_utf8_lossy(&output.stdout))
}

fn parse_response(mut text: &str) -> (u16, Headers, String) {
    loop {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) && body.starts_with("HTTP/") {
            text = body;
            continue;
        }
        let mut headers = Headers::new();
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                headers
                    .entry(name.trim().to_ascii_lowercase())
                    .and_modify(|v: &mut String| {
                        v.push(',');
                        v.push_str(value.trim());
                    })
                    .or_insert_with(|| value.trim().to_owned());
            }
        }
        return (status, headers, body.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curl_output() {
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nA: 1\r\na: 2\r\n\r\n{}";
        let (status, headers, body) = parse_response(text);
        assert_eq!(status, 404);
        assert_eq!(headers["a"], "1,2");
        assert_eq!(body, "{}");
    }
}
