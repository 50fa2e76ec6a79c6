//! DestinationRule rules: host, unique subsets, load balancer, connection pool,
//! outlier detection and TLS settings, at top level, per port and per subset.

use std::collections::HashSet;

use super::Reporter;
use crate::types::*;

pub(super) fn destination_rule(rep: &mut Reporter<'_>, dr: &DestinationRule) {
    if dr.host.is_empty() {
        rep.error("spec.host", "host is required");
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(rep, "spec.trafficPolicy", tp);
    }
    let mut names = HashSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            rep.error(&format!("{path}.name"), "subset name is required");
        } else if !names.insert(s.name.as_str()) {
            rep.error(
                &format!("{path}.name"),
                format!("subset `{}` is defined twice", s.name),
            );
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(rep, &format!("{path}.trafficPolicy"), tp);
        }
    }
}

fn traffic_policy(rep: &mut Reporter<'_>, path: &str, tp: &TrafficPolicy) {
    load_balancer(
        rep,
        &format!("{path}.loadBalancer"),
        tp.load_balancer.as_ref(),
    );
    connection_pool(
        rep,
        &format!("{path}.connectionPool"),
        tp.connection_pool.as_ref(),
    );
    outlier_detection(
        rep,
        &format!("{path}.outlierDetection"),
        tp.outlier_detection.as_ref(),
    );
    tls(rep, &format!("{path}.tls"), tp.tls.as_ref());
    let mut ports = HashSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            None => rep.error(&p, "port is required"),
            Some(port) => {
                rep.port_number(&format!("{p}.port.number"), port.number);
                if !ports.insert(port.number) {
                    rep.error(
                        &format!("{p}.port.number"),
                        format!("port {} has settings twice", port.number),
                    );
                }
            }
        }
        load_balancer(rep, &format!("{p}.loadBalancer"), pl.load_balancer.as_ref());
        connection_pool(
            rep,
            &format!("{p}.connectionPool"),
            pl.connection_pool.as_ref(),
        );
        outlier_detection(
            rep,
            &format!("{p}.outlierDetection"),
            pl.outlier_detection.as_ref(),
        );
        tls(rep, &format!("{p}.tls"), pl.tls.as_ref());
    }
    if let Some(t) = &tp.tunnel {
        if t.target_host.is_empty() {
            rep.error(
                &format!("{path}.tunnel.targetHost"),
                "targetHost is required",
            );
        }
        rep.port_number(&format!("{path}.tunnel.targetPort"), t.target_port);
    }
}

fn load_balancer(rep: &mut Reporter<'_>, path: &str, lb: Option<&LoadBalancerSettings>) {
    let Some(lb) = lb else { return };
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        rep.error(path, "set either `simple` or `consistentHash`, not both");
    }
    rep.duration(
        &format!("{path}.warmupDurationSecs"),
        lb.warmup_duration_secs.as_ref(),
    );
    if let Some(w) = &lb.warmup {
        rep.duration(&format!("{path}.warmup.duration"), w.duration.as_ref());
    }
    if let Some(ch) = &lb.consistent_hash {
        super::balancing::hash_tables(rep, path, ch);
        let keys = usize::from(ch.http_header_name.is_some())
            + usize::from(ch.http_cookie.is_some())
            + usize::from(ch.use_source_ip == Some(true))
            + usize::from(ch.http_query_parameter_name.is_some());
        if keys != 1 {
            rep.error(
                &format!("{path}.consistentHash"),
                "set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            );
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                rep.error(
                    &format!("{path}.consistentHash.httpCookie.name"),
                    "cookie name is required",
                );
            }
            rep.duration(
                &format!("{path}.consistentHash.httpCookie.ttl"),
                c.ttl.as_ref(),
            );
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        super::balancing::locality_lb_setting(rep, path, l);
        for (i, d) in l.distribute.iter().enumerate() {
            let sum: u32 = d.to.values().sum();
            if sum != 100 {
                rep.error(
                    &format!("{path}.localityLbSetting.distribute[{i}].to"),
                    format!("weights sum to {sum}; they must sum to 100"),
                );
            }
        }
    }
}

fn connection_pool(rep: &mut Reporter<'_>, path: &str, cp: Option<&ConnectionPoolSettings>) {
    let Some(cp) = cp else { return };
    if let Some(tcp) = &cp.tcp {
        rep.duration(
            &format!("{path}.tcp.connectTimeout"),
            tcp.connect_timeout.as_ref(),
        );
        rep.duration(
            &format!("{path}.tcp.maxConnectionDuration"),
            tcp.max_connection_duration.as_ref(),
        );
        rep.duration(
            &format!("{path}.tcp.idleTimeout"),
            tcp.idle_timeout.as_ref(),
        );
        if let Some(ka) = &tcp.tcp_keepalive {
            rep.duration(&format!("{path}.tcp.tcpKeepalive.time"), ka.time.as_ref());
            rep.duration(
                &format!("{path}.tcp.tcpKeepalive.interval"),
                ka.interval.as_ref(),
            );
        }
    }
    if let Some(http) = &cp.http {
        rep.duration(
            &format!("{path}.http.idleTimeout"),
            http.idle_timeout.as_ref(),
        );
    }
}

fn outlier_detection(rep: &mut Reporter<'_>, path: &str, od: Option<&OutlierDetection>) {
    let Some(od) = od else { return };
    rep.duration(&format!("{path}.interval"), od.interval.as_ref());
    rep.duration(
        &format!("{path}.baseEjectionTime"),
        od.base_ejection_time.as_ref(),
    );
    for (field, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = v
            && !(0..=100).contains(&v)
        {
            rep.error(
                &format!("{path}.{field}"),
                format!("{v} out of range; use 0..=100"),
            );
        }
    }
}

fn tls(rep: &mut Reporter<'_>, path: &str, t: Option<&ClientTlsSettings>) {
    let Some(t) = t else { return };
    if t.mode == Some(ClientTlsMode::Mutual)
        && t.credential_name.is_empty()
        && (t.client_certificate.is_empty() || t.private_key.is_empty())
    {
        rep.error(
            path,
            "MUTUAL mode needs `credentialName` or both `clientCertificate` and `privateKey`",
        );
    }
}
