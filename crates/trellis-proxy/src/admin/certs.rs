//! `/certs`: the workload certificate chain and trust bundle in use, in the shape of Envoy's
//! admin `/certs` (`certificates[].cert_chain[]` and `ca_cert[]`, each with `serial_number`,
//! `subject_alt_names`, `valid_from`, `expiration_time`, `days_until_expiration`).

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use x509_parser::extensions::GeneralName;

use crate::security::IdentityStore;

/// The JSON document of `/certs` (`{"certificates": []}` before any certificate).
pub fn certs_json(store: &IdentityStore) -> Value {
    let Some(identity) = store.identity() else {
        return json!({ "certificates": [] });
    };
    let bundle = store.bundle();
    json!({
        "certificates": [{
            "spiffe_id": identity.spiffe_id,
            "cert_chain": identity.chain.iter().map(describe).collect::<Vec<_>>(),
            "ca_cert": bundle.roots.iter().map(describe).collect::<Vec<_>>(),
        }]
    })
}

fn describe(der: &CertificateDer<'_>) -> Value {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return json!({ "error": "does not parse" });
    };
    let sans: Vec<Value> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::URI(u) => json!({ "uri": u }),
                    GeneralName::DNSName(d) => json!({ "dns": d }),
                    other => json!({ "other": other.to_string() }),
                })
                .collect()
        })
        .unwrap_or_default();
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    json!({
        "path": "<inline>",
        "serial_number": cert
            .raw_serial()
            .iter()
            .skip_while(|b| **b == 0)
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        "subject_alt_names": sans,
        "valid_from": rfc3339(not_before),
        "expiration_time": rfc3339(not_after),
        "seconds_until_expiration": (not_after - now).max(0).to_string(),
        "days_until_expiration": ((not_after - now).max(0) / 86400).to_string(),
    })
}

/// `2026-11-25T17:20:00Z` for a Unix time (Howard Hinnant's civil-from-days).
fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86400), unix.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_627_200), "2026-11-25T17:20:00Z");
    }
}
