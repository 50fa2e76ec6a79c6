//! The commands that talk to a running control plane or proxy over HTTP:
//! `trellis apply | get | delete | proxy-status` (the management API of `trellis control`)
//! and `trellis proxy-config` (a proxy's admin `/config_dump`). Owns argument handling and
//! printing; what a write means is the server's business.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use trellis_control::store::{ObjectKey, kind_info, kind_info_for, object::kind_names, yaml};

use crate::{
    ApplyArgs, CaArgs, CaCommand, DeleteArgs, GetArgs, OutputFormat, ProxyConfigArgs,
    ProxyStatusArgs, QuotaArgs, QuotaCommand, ServerArgs, TokenArgs, TokenCommand,
};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP answer.
struct Answer {
    status: u16,
    body: String,
}

/// Files concatenated into one request body, and where each file's lines landed.
struct Bundle {
    body: String,
    /// (first body line, file)
    segments: Vec<(usize, String)>,
}

/// `trellis apply -f FILE|DIR ... [--dry-run]`.
pub async fn apply(args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::read(&args.files)?;
    let route = if args.dry_run { "validate" } else { "apply" };
    let url = format!("{}/api/v1/{route}?source=trellis-apply", base(&args.server));
    let answer = request(
        "POST",
        &url,
        token(&args.server).as_deref(),
        Some(bundle.body.clone()),
        "application/json",
    )
    .await?;
    let body = json(&answer)?;
    if answer.status != 200 {
        return Ok(report_error(&body, Some(&bundle)));
    }
    for w in body["warnings"].as_array().into_iter().flatten() {
        println!("{}", bundle.relocate(w));
    }
    for o in body["objects"].as_array().into_iter().flatten() {
        let result = o["result"].as_str().unwrap_or("");
        let suffix = if args.dry_run { " (dry run)" } else { "" };
        println!(
            "{} {}/{} {result}{suffix}",
            s(&o["kind"]),
            s(&o["namespace"]),
            s(&o["name"])
        );
    }
    if args.dry_run {
        let c = &body["compiled"];
        println!(
            "valid; compiles for a default ingress gateway to {} listener(s), {} route config(s), {} cluster(s)",
            c["listeners"], c["routes"], c["clusters"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `trellis get KIND [NAME] [-n NS | -A] [-l SELECTOR] [-o yaml|json]`.
pub async fn get(args: &GetArgs) -> anyhow::Result<ExitCode> {
    let kind = kind_info(&args.kind).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown kind `{}`; known kinds: {}",
            args.kind,
            kind_names()
        )
    })?;
    let mut url = format!("{}/api/v1/resources/{}", base(&args.server), kind.plural);
    match &args.name {
        Some(name) => url.push_str(&format!("/{}/{}", encode(&args.namespace), encode(name))),
        None => {
            let mut query = Vec::new();
            if !args.all_namespaces {
                query.push(format!("namespace={}", encode(&args.namespace)));
            }
            if let Some(selector) = &args.selector {
                query.push(format!("labelSelector={}", encode(selector)));
            }
            if !query.is_empty() {
                url.push('?');
                url.push_str(&query.join("&"));
            }
        }
    }
    let accept = match args.output {
        Some(OutputFormat::Yaml) => "application/yaml",
        _ => "application/json",
    };
    let answer = request("GET", &url, token(&args.server).as_deref(), None, accept).await?;
    if answer.status != 200 {
        let body = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        return Ok(report_error(&body, None));
    }
    match args.output {
        Some(_) => print!("{}", answer.body),
        None => {
            let body = json(&answer)?;
            let items = match body.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => vec![body],
            };
            if items.is_empty() {
                eprintln!("no {} found", kind.plural);
                return Ok(ExitCode::SUCCESS);
            }
            if kind.group == trellis_config::gateway_api::GROUP {
                let rows: Vec<[String; 4]> = items
                    .iter()
                    .map(|i| {
                        let m = &i["metadata"];
                        [
                            s(&m["namespace"]),
                            s(&m["name"]),
                            status_summary(&i["status"]),
                            s(&m["resourceVersion"]),
                        ]
                    })
                    .collect();
                print_table(&["NAMESPACE", "NAME", "STATUS", "RESOURCE-VERSION"], &rows);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 3]> = items
                .iter()
                .map(|i| {
                    let m = &i["metadata"];
                    [s(&m["namespace"]), s(&m["name"]), s(&m["resourceVersion"])]
                })
                .collect();
            print_table(&["NAMESPACE", "NAME", "RESOURCE-VERSION"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A Gateway API `status` in one cell: `Accepted=True Programmed=True` (with the reason of a
/// False condition), per parent for routes (`infra/web: Accepted=False(NotAllowedByListeners)`).
fn status_summary(status: &Value) -> String {
    fn conditions(c: &Value) -> String {
        c.as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let (t, st) = (s(&c["type"]), s(&c["status"]));
                if st == "True" {
                    format!("{t}=True")
                } else {
                    format!("{t}={st}({})", s(&c["reason"]))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
    if let Some(parents) = status["parents"].as_array() {
        return parents
            .iter()
            .map(|p| {
                let r = &p["parentRef"];
                format!(
                    "{}/{}: {}",
                    s(&r["namespace"]),
                    s(&r["name"]),
                    conditions(&p["conditions"])
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    match conditions(&status["conditions"]) {
        c if c.is_empty() => "-".into(),
        c => c,
    }
}

/// `trellis delete KIND NAME [-n NS]` or `trellis delete -f FILE|DIR`.
pub async fn delete(args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut keys = Vec::new();
    if !args.files.is_empty() {
        let bundle = Bundle::read(&args.files)?;
        let docs = yaml::parse(&bundle.body)
            .map_err(|e| anyhow::anyhow!("{}: {}", bundle.locate(e.line, e.col), e.message))?;
        for doc in docs {
            keys.push(
                ObjectKey::of(&doc.value)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", bundle.locate(doc.line, doc.col)))?,
            );
        }
    } else {
        let (Some(kind), Some(name)) = (&args.kind, &args.name) else {
            anyhow::bail!(
                "name what to delete: `trellis delete KIND NAME [-n NS]` or `trellis delete -f FILE`"
            );
        };
        let info = kind_info(kind).ok_or_else(|| {
            anyhow::anyhow!("unknown kind `{kind}`; known kinds: {}", kind_names())
        })?;
        keys.push(ObjectKey::new(info, &args.namespace, name));
    }
    let mut code = ExitCode::SUCCESS;
    for key in keys {
        let plural =
            kind_info_for(&key.group, &key.kind).map_or(key.kind.clone(), |k| k.plural.to_owned());
        let url = format!(
            "{}/api/v1/resources/{plural}/{}/{}",
            base(&args.server),
            encode(&key.namespace),
            encode(&key.name)
        );
        let answer = request(
            "DELETE",
            &url,
            token(&args.server).as_deref(),
            None,
            "application/json",
        )
        .await?;
        if answer.status == 200 {
            println!("{key} deleted");
        } else {
            let body = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
            code = report_error(&body, None);
        }
    }
    Ok(code)
}

/// `trellis proxy-status`: what the xDS server knows of each connected proxy.
pub async fn proxy_status(args: &ProxyStatusArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/api/v1/proxy-status", base(&args.server));
    let accept = match args.output {
        Some(OutputFormat::Yaml) => "application/yaml",
        _ => "application/json",
    };
    let answer = request("GET", &url, token(&args.server).as_deref(), None, accept).await?;
    if answer.status != 200 {
        let body = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        return Ok(report_error(&body, None));
    }
    match args.output {
        Some(OutputFormat::Yaml) => print!("{}", answer.body),
        Some(OutputFormat::Json) => println!("{}", serde_json::to_string_pretty(&json(&answer)?)?),
        None => print_proxy_status(&json(&answer)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per connected proxy, as `istioctl proxy-status` prints it: the xDS state of each
/// type (SYNCED, STALE, NACKED, or NOT SENT when the proxy has not subscribed to it).
fn print_proxy_status(body: &Value) -> anyhow::Result<()> {
    let Some(proxies) = body["proxies"].as_array() else {
        // Not the shape this CLI knows: show it as it came.
        println!("{}", serde_json::to_string_pretty(body)?);
        return Ok(());
    };
    if proxies.is_empty() {
        eprintln!("no proxies connected");
        return Ok(());
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let state = |p: &Value, t: &str| match p["types"][t]["state"].as_str() {
        Some(s) => s.to_owned(),
        None => "NOT SENT".to_owned(),
    };
    let rows: Vec<[String; 7]> = proxies
        .iter()
        .map(|p| {
            [
                text(&p["id"]),
                text(&p["role"]),
                text(&p["mode"]),
                state(p, "cds"),
                state(p, "lds"),
                state(p, "eds"),
                state(p, "rds"),
            ]
        })
        .collect();
    print_table(&["NAME", "ROLE", "MODE", "CDS", "LDS", "EDS", "RDS"], &rows);
    Ok(())
}

/// `trellis proxy-config ADMIN [listeners|routes|clusters|endpoints|all] [-o json]`: reads the
/// proxy's `/config_dump` and prints one line per resource (or the JSON).
pub async fn proxy_config(args: &ProxyConfigArgs) -> anyhow::Result<ExitCode> {
    let admin = if args.admin.starts_with("http://") {
        args.admin.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", args.admin)
    };
    let answer = request(
        "GET",
        &format!("{admin}/config_dump"),
        None,
        None,
        "application/json",
    )
    .await?;
    if answer.status != 200 {
        anyhow::bail!(
            "{admin}/config_dump answered {}: {}",
            answer.status,
            answer.body.trim()
        );
    }
    let dump = json(&answer)?;
    let resources = &dump["resources"];
    let sections: &[&str] = match args.section.as_str() {
        "all" => &["listeners", "routes", "clusters", "endpoints"],
        "listeners" => &["listeners"],
        "routes" => &["routes"],
        "clusters" => &["clusters"],
        "endpoints" => &["endpoints"],
        other => anyhow::bail!(
            "unknown section `{other}`; use listeners, routes, clusters, endpoints or all"
        ),
    };
    if matches!(args.output, Some(OutputFormat::Json)) {
        let mut out = serde_json::Map::new();
        out.insert("version".into(), dump["version"].clone());
        for section in sections {
            out.insert((*section).into(), resources[*section].clone());
        }
        println!("{}", serde_json::to_string_pretty(&Value::Object(out))?);
        return Ok(ExitCode::SUCCESS);
    }
    for (i, section) in sections.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let items = resources[*section].as_array().cloned().unwrap_or_default();
        let (headers, rows) = summarize(section, &items);
        print_table(&headers, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per resource of a `/config_dump` section.
fn summarize(section: &str, items: &[Value]) -> ([&'static str; 3], Vec<[String; 3]>) {
    let addr = |a: &Value| {
        let sa = &a["socketAddress"];
        format!("{}:{}", s(&sa["address"]), sa["portValue"])
    };
    match section {
        "listeners" => (
            ["LISTENER", "ADDRESS", "DIRECTION"],
            items
                .iter()
                .map(|l| {
                    [
                        s(&l["name"]),
                        addr(&l["address"]),
                        s(&l["trafficDirection"]),
                    ]
                })
                .collect(),
        ),
        "routes" => (
            ["ROUTE CONFIG", "VIRTUAL HOSTS", "DOMAINS"],
            items
                .iter()
                .map(|r| {
                    let hosts = r["virtualHosts"].as_array().cloned().unwrap_or_default();
                    let domains: usize = hosts
                        .iter()
                        .map(|h| h["domains"].as_array().map_or(0, Vec::len))
                        .sum();
                    [s(&r["name"]), hosts.len().to_string(), domains.to_string()]
                })
                .collect(),
        ),
        "clusters" => (
            ["CLUSTER", "TYPE", "LB POLICY"],
            items
                .iter()
                .map(|c| [s(&c["name"]), s(&c["type"]), s(&c["lbPolicy"])])
                .collect(),
        ),
        _ => (
            ["CLUSTER", "ENDPOINTS", ""],
            items
                .iter()
                .map(|a| {
                    let endpoints: Vec<String> = a["endpoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|l| l["lbEndpoints"].as_array().cloned().unwrap_or_default())
                        .map(|e| addr(&e["endpoint"]["address"]))
                        .collect();
                    [s(&a["clusterName"]), endpoints.join(","), String::new()]
                })
                .collect(),
        ),
    }
}

impl Bundle {
    /// Reads files and directories (`*.yaml`, `*.yml`, recursively, sorted; `-` is stdin).
    fn read(paths: &[PathBuf]) -> anyhow::Result<Bundle> {
        let mut files = Vec::new();
        for path in paths {
            if path.as_os_str() == "-" {
                files.push(path.clone());
            } else if path.is_dir() {
                let mut found = Vec::new();
                yaml_files(path, &mut found)?;
                found.sort();
                files.extend(found);
            } else if path.exists() {
                files.push(path.clone());
            } else {
                anyhow::bail!("{}: no such file or directory", path.display());
            }
        }
        if files.is_empty() {
            anyhow::bail!("no YAML files given; use -f FILE or -f DIR");
        }
        let mut bundle = Bundle {
            body: String::new(),
            segments: Vec::new(),
        };
        for file in files {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
            };
            if !bundle.body.is_empty() {
                bundle.body.push_str("---\n");
            }
            let start = bundle.body.lines().count() + 1;
            bundle.body.push_str(&text);
            if !text.ends_with('\n') {
                bundle.body.push('\n');
            }
            let name = if file.as_os_str() == "-" {
                "<stdin>".to_owned()
            } else {
                file.display().to_string()
            };
            bundle.segments.push((start, name));
        }
        Ok(bundle)
    }

    /// `file:line:col` (or `file:line` when the column is unknown) of a position in the body.
    fn locate(&self, line: usize, col: usize) -> String {
        let found = self.segments.iter().rev().find(|(start, _)| *start <= line);
        let (file, line) = match found {
            Some((start, file)) => (file.as_str(), line - start + 1),
            None => ("trellis-apply", line),
        };
        if col == 0 {
            format!("{file}:{line}")
        } else {
            format!("{file}:{line}:{col}")
        }
    }

    /// A diagnostic of the server, its position moved back into the file it came from.
    fn relocate(&self, d: &Value) -> String {
        let line = d["line"].as_u64().unwrap_or(0) as usize;
        if d["file"] != "trellis-apply" || line == 0 {
            return s(&d["text"]);
        }
        let mut out = self.locate(line, d["column"].as_u64().unwrap_or(0) as usize);
        out.push_str(&format!(": {}: ", s(&d["severity"])));
        for field in ["resource", "path"] {
            if let Some(v) = d[field].as_str().filter(|v| !v.is_empty()) {
                out.push_str(v);
                out.push_str(": ");
            }
        }
        out.push_str(&s(&d["message"]));
        out
    }
}

/// `trellis token create -n NS --service-account SA [--ttl 1h]`: prints the token.
pub async fn token_create(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    let TokenCommand::Create(args) = &args.command;
    let ttl = crate::control::parse_duration(&args.ttl)
        .map_err(|e| anyhow::anyhow!("--ttl {:?}: {e}", args.ttl))?;
    let body = serde_json::json!({
        "namespace": args.namespace,
        "serviceAccount": args.service_account,
        "ttlSeconds": ttl.as_secs(),
    });
    let url = format!("{}/api/v1/ca/tokens", base(&args.server));
    let admin = token(&args.server);
    let answer = request(
        "POST",
        &url,
        admin.as_deref(),
        Some(body.to_string()),
        "application/json",
    )
    .await?;
    let body = json(&answer)?;
    if answer.status != 200 {
        anyhow::bail!("{} ({})", s(&body["message"]), answer.status);
    }
    println!("{}", s(&body["token"]));
    Ok(ExitCode::SUCCESS)
}

/// `trellis ca show` and `trellis ca rotate [--activate | --retire]`.
pub async fn ca(args: &CaArgs) -> anyhow::Result<ExitCode> {
    let (method, path, server) = match &args.command {
        CaCommand::Show(a) => ("GET", "/api/v1/ca".to_owned(), &a.server),
        CaCommand::Rotate(a) => {
            let phase = match (a.activate, a.retire) {
                (true, _) => "activate",
                (_, true) => "retire",
                _ => "add",
            };
            (
                "POST",
                format!("/api/v1/ca/rotate?phase={phase}"),
                &a.server,
            )
        }
    };
    let url = format!("{}{path}", base(server));
    let body = (method == "POST").then(String::new);
    let answer = request(
        method,
        &url,
        token(server).as_deref(),
        body,
        "application/json",
    )
    .await?;
    let body = json(&answer)?;
    if answer.status != 200 {
        anyhow::bail!("{} ({})", s(&body["message"]), answer.status);
    }
    println!("trust domain: {}", s(&body["trustDomain"]));
    println!("source: {} ({})", s(&body["source"]), s(&body["dir"]));
    println!("rotation pending: {}", body["rotationPending"]);
    let roots = body["roots"].as_array().cloned().unwrap_or_default();
    println!("trusted roots: {}", roots.len());
    for root in &roots {
        let signing = if *root == body["signingRoot"] {
            " (signing)"
        } else {
            ""
        };
        println!("{}{signing}", s(root).trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// `trellis quota get -n NS POLICY --consumer X [-o json|yaml]`: each quota's usage.
pub async fn quota(args: &QuotaArgs) -> anyhow::Result<ExitCode> {
    let QuotaCommand::Get(a) = &args.command;
    let url = format!(
        "{}/api/v1/quotas/{}/{}?consumer={}",
        base(&a.server),
        encode(&a.namespace),
        encode(&a.policy),
        encode(&a.consumer)
    );
    let accept = match a.output {
        Some(OutputFormat::Yaml) => "application/yaml",
        _ => "application/json",
    };
    let answer = request("GET", &url, token(&a.server).as_deref(), None, accept).await?;
    if answer.status == 200 && a.output.is_some() {
        print!("{}", answer.body);
        return Ok(ExitCode::SUCCESS);
    }
    let body = json(&answer)?;
    if answer.status != 200 {
        anyhow::bail!("{} ({})", s(&body["message"]), answer.status);
    }
    println!(
        "QuotaPolicy {}/{}, consumer {}",
        s(&body["namespace"]),
        s(&body["policy"]),
        s(&body["consumer"])
    );
    let rows: Vec<[String; 6]> = body["quotas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            [
                s(&q["name"]),
                s(&q["window"]),
                format!("{} .. {}", s(&q["windowStart"]), s(&q["windowEnd"])),
                s(&q["limit"]),
                s(&q["used"]),
                s(&q["remaining"]),
            ]
        })
        .collect();
    print_table(
        &[
            "QUOTA",
            "WINDOW",
            "PERIOD (UTC)",
            "LIMIT",
            "USED",
            "REMAINING",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            yaml_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Prints a server error (every diagnostic, moved back into its file) and returns exit code 1.
fn report_error(body: &Value, bundle: Option<&Bundle>) -> ExitCode {
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    for e in &errors {
        match bundle {
            Some(b) => println!("{}", b.relocate(e)),
            None => println!("{}", s(&e["text"])),
        }
    }
    let message = body["message"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned);
    eprintln!("trellis: error: {message}");
    ExitCode::FAILURE
}

fn base(server: &ServerArgs) -> String {
    server.server.trim_end_matches('/').to_owned()
}

/// `--token`/`TRELLIS_TOKEN`, else the token file if it exists.
fn token(server: &ServerArgs) -> Option<String> {
    server.token.clone().filter(|t| !t.is_empty()).or_else(|| {
        std::fs::read_to_string(&server.token_file)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    })
}

async fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
    accept: &str,
) -> anyhow::Result<Answer> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::ACCEPT, accept);
    if let Some(token) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/yaml");
    }
    let req = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let exchange = async {
        let response = client.request(req).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => {
            anyhow::bail!("{method} {url}: {e:#}; is `trellis control` running there? (--server)")
        }
        Err(_) => anyhow::bail!("{method} {url}: no answer within {REQUEST_TIMEOUT:?}"),
    }
}

fn json(answer: &Answer) -> anyhow::Result<Value> {
    serde_json::from_str(&answer.body).map_err(|e| {
        anyhow::anyhow!(
            "the server answered {} with something that is not JSON ({e}): {}",
            answer.status,
            answer.body.trim()
        )
    })
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Percent-encodes a query or path value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
