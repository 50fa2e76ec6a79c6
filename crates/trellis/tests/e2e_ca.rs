//! `trellis control`'s certificate authority, end to end: `trellis token create` mints a
//! bootstrap token, a gRPC client calls Istio's `IstioCertificateService/CreateCertificate` on
//! the xDS port with it, and `openssl` checks what came back (URI SAN, P-256, lifetime, chain to
//! the root). Refusals: another identity (PERMISSION_DENIED), no/forged/expired token
//! (UNAUTHENTICATED). `trellis ca rotate` adds, activates and retires a root with overlap.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trellis_testkit::{Process, TempDir, bin_path, free_port, http_get, wait_for_port, wait_until};
use trellis_xds::istio_ca::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse,
};

const REVIEWS_ID: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

struct Control {
    dir: TempDir,
    xds: u16,
    api: u16,
    process: Process,
}

impl Control {
    fn start(extra: &[&str]) -> Control {
        let dir = TempDir::new().unwrap();
        let (xds, api) = (free_port(), free_port());
        let process = Control::spawn(dir.path(), xds, api, extra);
        Control {
            dir,
            xds,
            api,
            process,
        }
    }

    fn spawn(dir: &Path, xds: u16, api: u16, extra: &[&str]) -> Process {
        let store = dir.to_string_lossy().into_owned();
        let (xds_arg, api_arg) = (xds.to_string(), api.to_string());
        let mut args = vec![
            "control",
            "--store",
            &store,
            "--xds-port",
            &xds_arg,
            "--api-port",
            &api_arg,
        ];
        args.extend_from_slice(extra);
        let mut process = Process::spawn(bin_path("trellis"), args, &[]);
        for port in [xds, api] {
            assert!(
                wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20)),
                "trellis control did not listen on {port}:\n{}",
                process.describe()
            );
        }
        // The API answers once the store, the token file and the CA are all open.
        let ca = format!("http://127.0.0.1:{api}/api/v1/ca");
        assert!(
            wait_until(Duration::from_secs(20), || http_get(&ca).0 == 200),
            "the CA never answered:\n{}",
            process.describe()
        );
        process
    }

    /// Runs a `trellis` CLI command against this control plane: (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(bin_path("trellis"))
            .args(args)
            .arg("--server")
            .arg(format!("http://127.0.0.1:{}", self.api))
            .arg("--token-file")
            .arg(self.dir.path().join(".trellis-token"))
            .env_remove("TRELLIS_TOKEN")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn token(&self, namespace: &str, service_account: &str, ttl: &str) -> String {
        let (ok, out, err) = self.cli(&[
            "token",
            "create",
            "-n",
            namespace,
            "--service-account",
            service_account,
            "--ttl",
            ttl,
        ]);
        assert!(ok, "token create failed: {err}");
        out.trim().to_owned()
    }
}

/// A fresh P-256 key's CSR asking for `sans` (URI SANs).
fn csr(sans: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| rcgen::SanType::URI((*s).to_owned().try_into().unwrap()))
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// Calls CreateCertificate on `xds` with `token` (as `authorization: Bearer`).
fn create_certificate(
    xds: u16,
    token: Option<&str>,
    csr: &str,
    seconds: i64,
) -> Result<Vec<String>, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{xds}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.to_owned(),
            validity_duration: seconds,
            metadata: None,
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let response: tonic::Response<IstioCertificateResponse> = grpc
            .unary(
                request,
                http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH),
                tonic_prost::ProstCodec::default(),
            )
            .await?;
        Ok(response.into_inner().cert_chain)
    })
}

/// `openssl` on a PEM written to `dir/name`: stdout (stderr on failure).
fn openssl(dir: &Path, files: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    for (name, pem) in files {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Whether `root` (PEM, possibly several) verifies `leaf` with openssl.
fn verifies(dir: &Path, leaf: &str, roots: &str) -> bool {
    let (ok, text) = openssl(
        dir,
        &[("leaf.pem", leaf), ("roots.pem", roots)],
        &["verify", "-CAfile", "roots.pem", "leaf.pem"],
    );
    ok && text.contains("leaf.pem: OK")
}

/// Lifetime of a PEM certificate in seconds.
fn lifetime(pem: &str) -> i64 {
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1;
    let cert = der.parse_x509().unwrap();
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

fn metrics(api: u16) -> String {
    http_get(&format!("http://127.0.0.1:{api}/metrics")).2
}

#[test]
fn ca_issues_the_tokens_identity_and_refuses_everything_else() {
    let control = Control::start(&["--workload-cert-ttl", "2h"]);
    let scratch = TempDir::new().unwrap();
    let token = control.token("shop", "reviews", "10m");
    assert_eq!(token.split('.').count(), 3, "a compact JWS: {token}");

    let chain = create_certificate(control.xds, Some(&token), &csr(&[REVIEWS_ID]), 0)
        .unwrap_or_else(|s| panic!("{s:?}\n{}", control.process.stderr_text()));
    assert_eq!(chain.len(), 2, "leaf, then the roots: {chain:?}");
    let (ok, text) = openssl(
        scratch.path(),
        &[("leaf.pem", &chain[0])],
        &["x509", "-in", "leaf.pem", "-noout", "-text"],
    );
    assert!(ok, "{text}");
    assert!(text.contains(&format!("URI:{REVIEWS_ID}")), "{text}");
    assert!(text.contains("prime256v1"), "P-256 key: {text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert_eq!(
        lifetime(&chain[0]),
        2 * 3600,
        "the --workload-cert-ttl default"
    );
    assert!(
        verifies(scratch.path(), &chain[0], &chain[1]),
        "chains to the root"
    );
    // The root is the one in the CA directory, its key private.
    let ca_dir = control.dir.path().join(".trellis-ca");
    assert_eq!(
        std::fs::read_to_string(ca_dir.join("roots.pem")).unwrap(),
        chain[1]
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(ca_dir.join("root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A shorter lifetime asked for is granted; the CA, not the CSR, sets the SAN.
    let short = create_certificate(control.xds, Some(&token), &csr(&[]), 600).unwrap();
    assert_eq!(lifetime(&short[0]), 600);
    let (_, text) = openssl(
        scratch.path(),
        &[("leaf.pem", &short[0])],
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(text.contains(&format!("URI:{REVIEWS_ID}")), "{text}");

    // Another identity than the token's.
    let other = "spiffe://cluster.local/ns/shop/sa/admin";
    let refused = create_certificate(control.xds, Some(&token), &csr(&[other]), 0).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains(REVIEWS_ID), "{refused:?}");
    // No token, a forged one, one from another control plane.
    let refused = create_certificate(control.xds, None, &csr(&[]), 0).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let forged = format!("{}x", &token[..token.len() - 1]);
    let refused = create_certificate(control.xds, Some(&forged), &csr(&[]), 0).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let other_control = Control::start(&[]);
    let foreign = other_control.token("shop", "reviews", "10m");
    let refused = create_certificate(control.xds, Some(&foreign), &csr(&[]), 0).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("signature"), "{refused:?}");
    // An expired token (it works until it expires; count those issues).
    let brief = control.token("shop", "reviews", "1s");
    let (mut last, mut issued) = (None, 2);
    let expired = wait_until(Duration::from_secs(10), || {
        match create_certificate(control.xds, Some(&brief), &csr(&[]), 0) {
            Ok(_) => issued += 1,
            Err(s) => last = Some(s),
        }
        last.as_ref()
            .is_some_and(|s| s.message().contains("expired"))
    });
    assert!(expired, "{last:?}");
    assert_eq!(last.unwrap().code(), tonic::Code::Unauthenticated);

    let text = metrics(control.api);
    trellis_testkit::promtool_check(&text);
    assert!(
        text.contains(&format!("trellis_ca_certificates_issued_total {issued}\n")),
        "{text}"
    );
    assert!(
        text.contains("trellis_ca_certificates_refused_total{reason=\"permission_denied\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("trellis_ca_certificates_refused_total{reason=\"unauthenticated\"}"),
        "{text}"
    );
}

#[test]
fn token_create_needs_the_admin_token_and_valid_names() {
    let control = Control::start(&[]);
    let output = Command::new(bin_path("trellis"))
        .args([
            "token",
            "create",
            "-n",
            "shop",
            "--service-account",
            "reviews",
        ])
        .arg("--server")
        .arg(format!("http://127.0.0.1:{}", control.api))
        .arg("--token")
        .arg("wrong")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("401"), "{err}");
    let (ok, _, err) = control.cli(&[
        "token",
        "create",
        "-n",
        "Shop",
        "--service-account",
        "reviews",
    ]);
    assert!(!ok);
    assert!(err.contains("namespace \"Shop\""), "{err}");
    let (ok, _, err) = control.cli(&[
        "token",
        "create",
        "-n",
        "shop",
        "--service-account",
        "reviews",
        "--ttl",
        "soon",
    ]);
    assert!(!ok);
    assert!(err.contains("--ttl \"soon\""), "{err}");
}

#[test]
fn root_rotation_trusts_both_roots_before_switching_and_survives_a_restart() {
    let mut control = Control::start(&[]);
    let scratch = TempDir::new().unwrap();
    let token = control.token("shop", "reviews", "1h");
    let issue = |xds| create_certificate(xds, Some(&token), &csr(&[]), 0).unwrap();
    let before = issue(control.xds);
    let old_root = before[1].clone();

    let (ok, out, err) = control.cli(&["ca", "rotate"]);
    assert!(ok, "{err}");
    assert!(out.contains("trusted roots: 2"), "{out}");
    let overlap = issue(control.xds);
    let bundle = overlap.last().unwrap().clone();
    assert!(bundle.starts_with(&old_root), "the old root stays first");
    let new_root = bundle[old_root.len()..].to_owned();
    assert!(new_root.contains("BEGIN CERTIFICATE"), "{bundle}");
    assert!(
        verifies(scratch.path(), &overlap[0], &old_root),
        "still signed by the old root"
    );
    // A second `rotate` before activating is refused.
    let (ok, _, err) = control.cli(&["ca", "rotate"]);
    assert!(!ok);
    assert!(err.contains("--activate"), "{err}");

    let (ok, _, err) = control.cli(&["ca", "rotate", "--activate"]);
    assert!(ok, "{err}");
    let activated = issue(control.xds);
    assert_eq!(
        activated.last().unwrap(),
        &bundle,
        "both roots still trusted"
    );
    assert!(
        verifies(scratch.path(), &activated[0], &new_root),
        "signed by the new root"
    );
    assert!(!verifies(scratch.path(), &activated[0], &old_root));
    // Certificates from before the rotation still verify against the bundle.
    assert!(verifies(scratch.path(), &before[0], &bundle));

    // A restart keeps the state.
    control.process.signal(trellis_testkit::SIGKILL);
    control.process.wait_timeout(Duration::from_secs(10));
    control.process = Control::spawn(control.dir.path(), control.xds, control.api, &[]);
    let restarted = issue(control.xds);
    assert!(verifies(scratch.path(), &restarted[0], &new_root));
    assert_eq!(restarted.last().unwrap(), &bundle);

    let (ok, out, err) = control.cli(&["ca", "rotate", "--retire"]);
    assert!(ok, "{err}");
    assert!(out.contains("trusted roots: 1"), "{out}");
    let retired = issue(control.xds);
    assert_eq!(retired.last().unwrap(), &new_root);
}

/// The proxy's `/certs`: (spiffe id, serial, expiration) of the leaf, and how many roots.
fn proxy_cert(admin: u16) -> Option<(String, String, String, usize)> {
    let (status, _, body) = http_get(&format!("http://127.0.0.1:{admin}/certs"));
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cert = doc["certificates"].get(0)?;
    let leaf = &cert["cert_chain"][0];
    Some((
        cert["spiffe_id"].as_str()?.to_owned(),
        leaf["serial_number"].as_str()?.to_owned(),
        leaf["expiration_time"].as_str()?.to_owned(),
        cert["ca_cert"].as_array()?.len(),
    ))
}

/// A sample's value in Prometheus text (`name` with its labels, exactly).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn proxy_gets_its_certificate_renews_at_half_life_and_keeps_it_while_the_ca_is_down() {
    let mut control = Control::start(&["--workload-cert-ttl", "6s"]);
    let work = TempDir::new().unwrap();
    let token_file = work.path().join("token");
    std::fs::write(&token_file, control.token("shop", "reviews", "1h")).unwrap();
    let config = work.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let ca_address = format!("127.0.0.1:{}", control.xds);
    let (mut proxy, admin) = trellis_testkit::proxy(
        &config,
        &[
            "--ca-address",
            &ca_address,
            "--token-file",
            &token_file.to_string_lossy(),
        ],
    );
    let mut first = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            first = proxy_cert(admin);
            first.is_some()
        }),
        "no certificate:\n{}",
        proxy.describe()
    );
    let (spiffe_id, serial, expiration, roots) = first.unwrap();
    assert_eq!(spiffe_id, REVIEWS_ID);
    assert_eq!(roots, 1);
    let stats = |admin: u16| http_get(&format!("http://127.0.0.1:{admin}/stats/prometheus")).2;
    let text = stats(admin);
    let expiry = sample(&text, "trellis_cert_expiry_timestamp_seconds").unwrap();
    assert!(expiry > 0.0, "{text}");
    assert!(
        sample(&text, "trellis_cert_renewals_total").unwrap() >= 1.0,
        "{text}"
    );
    trellis_testkit::promtool_check(&text);

    // Renewed at about half of the 6 s lifetime: a new serial and a later expiry.
    let mut renewed = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            renewed = proxy_cert(admin).filter(|c| c.1 != serial);
            renewed.is_some()
        }),
        "never renewed:\n{}",
        proxy.describe()
    );
    let renewed = renewed.unwrap();
    assert!(renewed.2 >= expiration, "{renewed:?} vs {expiration}");

    // The CA goes away: renewals fail, the certificate in place stays.
    control.process.signal(trellis_testkit::SIGKILL);
    control.process.wait_timeout(Duration::from_secs(10));
    let mut held = None;
    let failed = wait_until(Duration::from_secs(20), || {
        held = proxy_cert(admin);
        sample(&stats(admin), "trellis_cert_renewal_failures_total").unwrap_or(0.0) >= 2.0
    });
    assert!(failed, "no failed renewal counted:\n{}", proxy.describe());
    let held = held.expect("the certificate stays while the CA is down");
    assert_eq!(held.0, REVIEWS_ID);
    assert!(proxy.is_running());

    // The CA comes back: the proxy renews again.
    control.process = Control::spawn(
        control.dir.path(),
        control.xds,
        control.api,
        &["--workload-cert-ttl", "6s"],
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            proxy_cert(admin).is_some_and(|c| c.1 != held.1)
        }),
        "no renewal after the CA came back:\n{}",
        proxy.describe()
    );
}

/// An operator's CA in Istio's `cacerts` layout under `dir`: a root and an intermediate that
/// signs (`cert-chain.pem` is the intermediate then the root, as Istio's tools write it).
fn write_cacerts(dir: &Path) -> (String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_params = |name: &str| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("operator root");
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let intermediate_key = KeyPair::generate().unwrap();
    let intermediate = ca_params("operator intermediate")
        .signed_by(&intermediate_key, &issuer)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), intermediate.pem()).unwrap();
    std::fs::write(dir.join("ca-key.pem"), intermediate_key.serialize_pem()).unwrap();
    std::fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}", intermediate.pem(), root.pem()),
    )
    .unwrap();
    (root.pem(), intermediate.pem())
}

#[test]
fn plugged_in_cacerts_sign_through_the_operators_intermediate() {
    let work = TempDir::new().unwrap();
    let cacerts = work.path().join("cacerts");
    let (root, intermediate) = write_cacerts(&cacerts);
    let cacerts_arg = cacerts.to_string_lossy().into_owned();
    let control = Control::start(&["--cacerts", &cacerts_arg, "--trust-domain", "example.org"]);
    let token = control.token("shop", "reviews", "10m");
    let chain = create_certificate(control.xds, Some(&token), &csr(&[]), 0).unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root: {chain:?}");
    assert_eq!(chain[1], intermediate);
    assert_eq!(chain[2], root);
    let (ok, text) = openssl(
        work.path(),
        &[
            ("leaf.pem", &chain[0]),
            ("root.pem", &root),
            ("mid.pem", &intermediate),
        ],
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "mid.pem",
            "leaf.pem",
        ],
    );
    assert!(ok && text.contains("leaf.pem: OK"), "{text}");
    let (_, text) = openssl(
        work.path(),
        &[],
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        text.contains("URI:spiffe://example.org/ns/shop/sa/reviews"),
        "{text}"
    );
    // Rotation is the operator's job here.
    let (ok, _, err) = control.cli(&["ca", "rotate"]);
    assert!(!ok);
    assert!(err.contains("cacerts"), "{err}");
}

#[test]
fn a_cacerts_key_that_does_not_match_stops_the_start_naming_the_file() {
    let work = TempDir::new().unwrap();
    let cacerts = work.path().join("cacerts");
    write_cacerts(&cacerts);
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(cacerts.join("ca-key.pem"), other.serialize_pem()).unwrap();
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let output = Command::new(bin_path("trellis"))
        .args(["control", "--store"])
        .arg(&store)
        .args(["--xds-port", &free_port().to_string()])
        .args(["--api-port", &free_port().to_string()])
        .arg("--cacerts")
        .arg(&cacerts)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("ca-cert.pem") && err.contains("does not match ca-key.pem"),
        "{err}"
    );
}

/// Starts a proxy whose only job is its certificate: `--ca-address` plus `extra`.
fn cert_proxy(work: &Path, name: &str, ca_address: &str, extra: &[&str]) -> (Process, u16) {
    let config = work.join(name);
    std::fs::create_dir_all(&config).unwrap();
    let mut args = vec!["--ca-address", ca_address];
    args.extend_from_slice(extra);
    trellis_testkit::proxy(&config, &args)
}

#[test]
fn over_tls_the_proxy_verifies_the_control_plane_and_renews_with_its_certificate() {
    let secure = free_port();
    let secure_arg = secure.to_string();
    let control = Control::start(&[
        "--secure-xds-port",
        &secure_arg,
        "--workload-cert-ttl",
        "6s",
    ]);
    assert!(wait_for_port(
        ([127, 0, 0, 1], secure).into(),
        Duration::from_secs(20)
    ));
    let work = TempDir::new().unwrap();
    let token_file = work.path().join("token");
    std::fs::write(&token_file, control.token("shop", "reviews", "1h")).unwrap();
    let roots = control.dir.path().join(".trellis-ca/roots.pem");
    let address = format!("127.0.0.1:{secure}");
    let (mut proxy, admin) = cert_proxy(
        work.path(),
        "good",
        &address,
        &[
            "--ca-root",
            &roots.to_string_lossy(),
            "--token-file",
            &token_file.to_string_lossy(),
        ],
    );
    let mut first = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            first = proxy_cert(admin);
            first.is_some()
        }),
        "no certificate over TLS:\n{}",
        proxy.describe()
    );
    let first = first.unwrap();
    assert_eq!(first.0, REVIEWS_ID);
    // Without the token, renewals still work: the proxy's certificate (mTLS) names it.
    std::fs::remove_file(&token_file).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            proxy_cert(admin).is_some_and(|c| c.1 != first.1 && c.0 == REVIEWS_ID)
        }),
        "no renewal over mTLS:\n{}\n{}",
        proxy.describe(),
        control.process.stderr_text()
    );

    // A proxy that trusts another control plane's root refuses this one's certificate.
    let other = Control::start(&[]);
    let other_roots = other.dir.path().join(".trellis-ca/roots.pem");
    let other_token = work.path().join("other-token");
    std::fs::write(&other_token, control.token("shop", "ratings", "1h")).unwrap();
    let (mut wary, wary_admin) = cert_proxy(
        work.path(),
        "wary",
        &address,
        &[
            "--ca-root",
            &other_roots.to_string_lossy(),
            "--token-file",
            &other_token.to_string_lossy(),
        ],
    );
    let stats = |admin: u16| http_get(&format!("http://127.0.0.1:{admin}/stats/prometheus")).2;
    assert!(
        wait_until(Duration::from_secs(20), || {
            sample(&stats(wary_admin), "trellis_cert_renewal_failures_total").unwrap_or(0.0) >= 1.0
        }),
        "{}",
        wary.describe()
    );
    assert_eq!(proxy_cert(wary_admin), None);
    assert!(
        wary.stderr_text().contains("certificate"),
        "the log explains the TLS failure:\n{}",
        wary.stderr_text()
    );
}

/// A proxy subscribed over ADS to `xds` with `--ca-root roots` (TLS): its admin port.
fn tls_xds_proxy(xds: &str, roots: &Path, token: &Path) -> (Process, u16) {
    let admin = free_port();
    let admin_arg = admin.to_string();
    let mut process = Process::spawn(
        bin_path("trellis-proxy"),
        [
            "--xds-address",
            xds,
            "--ca-address",
            xds,
            "--ca-root",
            &roots.to_string_lossy(),
            "--token-file",
            &token.to_string_lossy(),
            "--bind-address",
            "127.0.0.1",
            "--admin-port",
            &admin_arg,
        ],
        &[],
    );
    assert!(
        wait_for_port(([127, 0, 0, 1], admin).into(), Duration::from_secs(20)),
        "{}",
        process.describe()
    );
    (process, admin)
}

fn xds_state(admin: u16) -> serde_json::Value {
    serde_json::from_str(&http_get(&format!("http://127.0.0.1:{admin}/xds")).2).unwrap()
}

#[test]
fn the_proxy_subscribes_to_ads_over_tls_only_to_a_control_plane_it_trusts() {
    let secure = free_port();
    let secure_arg = secure.to_string();
    let control = Control::start(&["--secure-xds-port", &secure_arg]);
    assert!(wait_for_port(
        ([127, 0, 0, 1], secure).into(),
        Duration::from_secs(20)
    ));
    let work = TempDir::new().unwrap();
    let token = work.path().join("token");
    std::fs::write(&token, control.token("istio-system", "gateway", "1h")).unwrap();
    let address = format!("127.0.0.1:{secure}");
    let roots = control.dir.path().join(".trellis-ca/roots.pem");
    let (mut proxy, admin) = tls_xds_proxy(&address, &roots, &token);
    let ready = wait_until(Duration::from_secs(20), || {
        http_get(&format!("http://127.0.0.1:{admin}/ready")).0 == 200
            && xds_state(admin)["connected"] == true
            && proxy_cert(admin).is_some()
    });
    assert!(
        ready,
        "not subscribed over TLS: {}\n{}",
        xds_state(admin),
        proxy.describe()
    );
    let status = http_get(&format!(
        "http://127.0.0.1:{}/api/v1/proxy-status",
        control.api
    ))
    .2;
    assert!(status.contains("gateway~127.0.0.1"), "{status}");

    let other = Control::start(&[]);
    let wrong = other.dir.path().join(".trellis-ca/roots.pem");
    let (mut wary, wary_admin) = tls_xds_proxy(&address, &wrong, &token);
    let refused = wait_until(Duration::from_secs(20), || {
        xds_state(wary_admin)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate"))
    });
    assert!(refused, "{}\n{}", xds_state(wary_admin), wary.describe());
    assert_eq!(xds_state(wary_admin)["connected"], false);
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{wary_admin}/ready")).0,
        503
    );
}

/// A sidecar on the control plane: ADS for its config and the CA for its certificate, both on
/// the plaintext xDS port with a bootstrap token. Returns the process and its outbound address.
fn ca_sidecar(control: &Control, work: &Path, ns: &str, sa: &str, bind: &str) -> (Process, String) {
    let token = work.join(format!("{ns}-{sa}.token"));
    std::fs::write(&token, control.token(ns, sa, "1h")).unwrap();
    let xds = format!("127.0.0.1:{}", control.xds);
    let token = token.to_string_lossy();
    let extra = [
        "--xds-address",
        &xds,
        "--ca-address",
        &xds,
        "--token-file",
        &token,
    ];
    let s = trellis_testkit::sidecar(ns, sa, bind, &extra, |admin| proxy_cert(admin).is_some());
    (s.process, format!("{bind}:{}", s.outbound))
}

/// The whole zero-trust path: certificates issued by `trellis control`'s CA to two sidecars that
/// also get their config from it; the client sidecar reaches `httpbin.bar` over mTLS (the app sees
/// the client's SPIFFE identity in XFCC) and, with STRICT in `bar`, a plaintext client is refused.
#[test]
fn sidecars_with_ca_issued_certificates_talk_mutual_tls() {
    let control = Control::start(&[]);
    let (_app, port) = trellis_testkit::sample_app("httpbin", "v1");
    let mesh = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: httpbin, namespace: bar}}
spec:
  selector: {{app: httpbin}}
  ports: [{{name: http, port: 8000, targetPort: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin, namespace: bar}}
spec:
  address: 127.0.0.52
  serviceAccount: httpbin
  labels: {{app: httpbin, security.istio.io/tlsMode: istio}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: bar}}
spec: {{mtls: {{mode: STRICT}}}}
"#
    );
    std::fs::write(control.dir.path().join("mesh.yaml"), mesh).unwrap();
    let work = TempDir::new().unwrap();
    let (_server, _) = ca_sidecar(&control, work.path(), "bar", "httpbin", "127.0.0.52");
    let (_client, outbound) = ca_sidecar(&control, work.path(), "foo", "sleep", "127.0.0.51");
    let url = format!("http://{outbound}/headers");
    let mut last = (0, String::new());
    let ok = wait_until(Duration::from_secs(20), || {
        let (status, _, body) =
            trellis_testkit::http_request(&url, &["-H", "Host: httpbin.bar:8000"]);
        last = (status, body);
        status == 200
    });
    assert!(ok, "sleep -> httpbin over mTLS: {last:?}");
    assert!(
        last.1
            .contains("By=spiffe://cluster.local/ns/bar/sa/httpbin;Hash="),
        "{}",
        last.1
    );
    assert!(
        last.1
            .contains("URI=spiffe://cluster.local/ns/foo/sa/sleep"),
        "{}",
        last.1
    );
    // STRICT: the workload address refuses a plaintext client.
    let (status, _, _) =
        trellis_testkit::http_request(&format!("http://127.0.0.52:{port}/headers"), &[]);
    assert_eq!(status, 0, "a plaintext client got through STRICT");
}
