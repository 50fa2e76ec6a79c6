//! Validation of the `trellis.dev/v1alpha1` `HealthCheckPolicy` kind: a host, exactly one of
//! `http` or `grpc`, an absolute HTTP path, status codes in range, positive durations with the
//! timeout no longer than the interval, thresholds of at least 1.

use super::Reporter;
use crate::types::HealthCheckPolicy;

pub(super) fn health_check_policy(rep: &mut Reporter<'_>, hc: &HealthCheckPolicy) {
    if hc.host.is_empty() {
        rep.error(
            "spec.host",
            "host is required (the service to health check)",
        );
    }
    match (&hc.http, &hc.grpc) {
        (None, None) => rep.error("spec", "set one of `http` or `grpc`"),
        (Some(_), Some(_)) => rep.error("spec", "set either `http` or `grpc`, not both"),
        _ => {}
    }
    if let Some(http) = &hc.http {
        if !http.path.starts_with('/') {
            rep.error(
                "spec.http.path",
                format!("path `{}` must start with `/` (e.g. `/healthz`)", http.path),
            );
        }
        for (i, code) in http.expected_statuses.iter().enumerate() {
            if !(100..=599).contains(code) {
                rep.error(
                    &format!("spec.http.expectedStatuses[{i}]"),
                    format!("status {code} out of range; use 100..=599"),
                );
            }
        }
    }
    if let Some(p) = &hc.port {
        rep.port_number("spec.port.number", p.number);
    }
    for (field, d) in [
        ("spec.interval", &hc.interval),
        ("spec.timeout", &hc.timeout),
    ] {
        rep.duration(field, d.as_ref());
        if d.as_ref()
            .and_then(|d| d.get())
            .is_some_and(|d| d.is_zero())
        {
            rep.error(field, "must be greater than zero");
        }
    }
    let interval = hc.interval.as_ref().and_then(|d| d.get());
    let timeout = hc.timeout.as_ref().and_then(|d| d.get());
    if let (Some(i), Some(t)) = (interval, timeout)
        && t > i
    {
        rep.error(
            "spec.timeout",
            format!("timeout {t:?} is longer than the interval {i:?}; shorten it"),
        );
    }
    for (field, v) in [
        ("spec.unhealthyThreshold", hc.unhealthy_threshold),
        ("spec.healthyThreshold", hc.healthy_threshold),
    ] {
        if v == Some(0) {
            rep.error(field, "must be at least 1");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::load_str;

    fn errors(spec: &str) -> Vec<String> {
        let yaml = format!(
            "apiVersion: trellis.dev/v1alpha1\nkind: HealthCheckPolicy\nmetadata: {{name: hc, namespace: default}}\nspec:\n{spec}"
        );
        match load_str("hc.yaml", &yaml) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_good_policy_loads() {
        let yaml = "apiVersion: trellis.dev/v1alpha1\nkind: HealthCheckPolicy\nmetadata: {name: hc, namespace: default}\nspec:\n  host: reviews\n  subset: v1\n  interval: 2s\n  timeout: 1s\n  unhealthyThreshold: 2\n  healthyThreshold: 1\n  http: {path: /healthz, expectedStatuses: [200, 204]}\n";
        let loaded = load_str("hc.yaml", yaml).expect("loads");
        let hc = &loaded.snapshot.health_check_policies[0].spec;
        assert_eq!(hc.host, "reviews");
        assert_eq!(
            hc.http.as_ref().map(|h| h.expected_statuses.clone()),
            Some(vec![200, 204])
        );
    }

    #[test]
    fn mistakes_are_reported_with_their_place() {
        let e = errors("  host: reviews\n  http: {pth: /x}\n");
        assert!(
            e.iter().any(|e| e.contains("hc.yaml:6:")
                && e.contains("spec.http.pth: unknown field `pth`; did you mean `path`?")),
            "{e:?}"
        );
        let e = errors(
            "  http: {path: healthz, expectedStatuses: [99]}\n  interval: 1s\n  timeout: 2s\n  healthyThreshold: 0\n",
        );
        for want in [
            "spec.host: host is required",
            "spec.http.path: path `healthz` must start with `/`",
            "spec.http.expectedStatuses[0]: status 99 out of range",
            "spec.timeout: timeout 2s is longer than the interval 1s",
            "spec.healthyThreshold: must be at least 1",
        ] {
            assert!(
                e.iter().any(|e| e.contains(want)),
                "missing {want:?} in {e:?}"
            );
        }
        let e = errors("  host: r\n  http: {path: /}\n  grpc: {}\n");
        assert!(e.iter().any(|e| e.contains("not both")), "{e:?}");
        let e = errors("  host: r\n");
        assert!(
            e.iter().any(|e| e.contains("set one of `http` or `grpc`")),
            "{e:?}"
        );
    }

    #[test]
    fn kind_and_api_version_are_checked() {
        let yaml = "apiVersion: trellis.dev/v1alpha1\nkind: HealthCheckPolcy\nmetadata: {name: hc}\nspec: {}\n";
        let e: Vec<String> = load_str("hc.yaml", yaml)
            .err()
            .map(|d| d.iter().map(|d| d.to_string()).collect())
            .unwrap_or_default();
        assert!(
            e.iter()
                .any(|e| e.contains("did you mean `HealthCheckPolicy`?")),
            "{e:?}"
        );
        let yaml = "apiVersion: networking.istio.io/v1\nkind: HealthCheckPolicy\nmetadata: {name: hc}\nspec: {host: r, grpc: {}}\n";
        let e: Vec<String> = load_str("hc.yaml", yaml)
            .err()
            .map(|d| d.iter().map(|d| d.to_string()).collect())
            .unwrap_or_default();
        assert!(
            e.iter().any(|e| e.contains("use `trellis.dev/v1alpha1`")),
            "{e:?}"
        );
    }
}
