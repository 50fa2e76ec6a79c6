//! Throwaway mesh certificates for tests (rcgen): a root CA per test and workload certificates
//! shaped like Istio's (no subject, one `spiffe://<td>/ns/<ns>/sa/<sa>` URI SAN, server and
//! client auth), written in Istio's file layout for `trellis-proxy --identity-dir`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A root CA for one trust domain.
pub struct MeshCa {
    pub trust_domain: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl MeshCa {
    pub fn new(trust_domain: &str) -> MeshCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        MeshCa {
            trust_domain: trust_domain.to_string(),
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    pub fn root_pem(&self) -> String {
        self.issuer.pem()
    }

    /// `(certificate PEM, key PEM)` for `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn workload(&self, namespace: &str, service_account: &str) -> (String, String) {
        let id = format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        );
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().expect("uri"))];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("workload key");
        let cert = params.signed_by(&key, &self.issuer).expect("workload cert");
        (cert.pem(), key.serialize_pem())
    }

    /// Write `cert-chain.pem`, `key.pem` and `root-cert.pem` for a workload into `dir/<sa>`
    /// (created); returns that directory.
    pub fn identity_dir(&self, dir: &Path, namespace: &str, service_account: &str) -> PathBuf {
        let out = dir.join(format!("{namespace}-{service_account}"));
        std::fs::create_dir_all(&out).expect("identity dir");
        let (cert, key) = self.workload(namespace, service_account);
        std::fs::write(out.join("cert-chain.pem"), cert).expect("write cert");
        std::fs::write(out.join("key.pem"), key).expect("write key");
        std::fs::write(out.join("root-cert.pem"), self.root_pem()).expect("write root");
        out
    }

    /// A `trellis-proxy --role sidecar` on the config directory `config_dir`, with this CA's
    /// certificate for `ns`/`sa` written under `certs` (`--identity-dir`), bound to `bind`:
    /// the process and its outbound port.
    pub fn sidecar(
        &self,
        config_dir: &Path,
        certs: &Path,
        ns: &str,
        sa: &str,
        bind: &str,
    ) -> (crate::Process, u16) {
        let identity = self.identity_dir(certs, ns, sa);
        let (dir, identity) = (config_dir.to_string_lossy(), identity.to_string_lossy());
        let extra = ["--config-dir", &dir, "--identity-dir", &identity];
        let s = crate::sidecar(ns, sa, bind, &extra, |_| true);
        (s.process, s.outbound)
    }
}
