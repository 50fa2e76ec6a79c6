//! The xDS `Node` a proxy sends and the [`ProxyIdentity`] the control plane compiles for.
//!
//! Istio-style node metadata (see docs/xds-contract.md, "Node"):
//! `node.id` is the proxy id, `node.locality` its locality, and `node.metadata` carries
//! `ROLE` ("gateway" | "sidecar"), `NAMESPACE`, `LABELS` (a struct of strings), `SERVICE_ACCOUNT`,
//! `BIND_ADDRESS`, `APP_ADDRESS`, `OUTBOUND_PORT` and `INBOUND_PORT` (strings). A node without
//! `ROLE` (a stock Envoy, say) is a gateway; missing keys take [`ProxyIdentity::default`] values.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use crate::{Locality, ProxyIdentity, Role};

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

impl ProxyIdentity {
    /// The `Node` this proxy announces to a control plane.
    pub fn to_node(&self) -> core::Node {
        let labels = Struct {
            fields: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), string(v.clone())))
                .collect(),
        };
        let role = match self.role {
            Role::Gateway => "gateway",
            Role::Sidecar => "sidecar",
            Role::Proxyless => "proxyless",
        };
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("ROLE".to_string(), string(role));
        fields.insert("NAMESPACE".to_string(), string(self.namespace.clone()));
        fields.insert(
            "LABELS".to_string(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        fields.insert(
            "SERVICE_ACCOUNT".to_string(),
            string(self.service_account.clone()),
        );
        fields.insert(
            "BIND_ADDRESS".to_string(),
            string(self.bind_address.clone()),
        );
        fields.insert("APP_ADDRESS".to_string(), string(self.app_address.clone()));
        fields.insert(
            "OUTBOUND_PORT".to_string(),
            string(self.outbound_port.to_string()),
        );
        fields.insert(
            "INBOUND_PORT".to_string(),
            string(self.inbound_port.to_string()),
        );
        core::Node {
            id: self.id.clone(),
            cluster: self.labels.get("app").cloned().unwrap_or_default(),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            locality: Some(core::Locality {
                region: self.locality.region.clone(),
                zone: self.locality.zone.clone(),
                sub_zone: self.locality.subzone.clone(),
            }),
            user_agent_name: "trellis-proxy".into(),
            ..Default::default()
        }
    }

    /// The identity a control plane compiles for, read from a node's id, locality and metadata.
    /// Errors name the offending metadata key.
    pub fn from_node(node: &core::Node) -> Result<ProxyIdentity, String> {
        let mut id = ProxyIdentity {
            id: node.id.clone(),
            ..ProxyIdentity::default()
        };
        if let Some(loc) = &node.locality {
            id.locality = Locality {
                region: loc.region.clone(),
                zone: loc.zone.clone(),
                subzone: loc.sub_zone.clone(),
            };
        }
        let Some(meta) = &node.metadata else {
            return Ok(id);
        };
        let text = |key: &str| -> Result<Option<String>, String> {
            match meta.fields.get(key).and_then(|v| v.kind.as_ref()) {
                None | Some(Kind::NullValue(_)) => Ok(None),
                Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
                Some(Kind::NumberValue(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(format!("node metadata {key}: expected a string")),
            }
        };
        if let Some(role) = text("ROLE")? {
            id.role = match role.as_str() {
                "gateway" | "router" => Role::Gateway,
                "sidecar" => Role::Sidecar,
                "proxyless" => Role::Proxyless,
                other => {
                    return Err(format!(
                        "node metadata ROLE: {other:?} is not \"gateway\", \"sidecar\" or \"proxyless\""
                    ));
                }
            };
        }
        if let Some(ns) = text("NAMESPACE")? {
            id.namespace = ns;
        }
        if let Some(sa) = text("SERVICE_ACCOUNT")? {
            id.service_account = sa;
        }
        if let Some(a) = text("BIND_ADDRESS")? {
            id.bind_address = a;
        }
        if let Some(a) = text("APP_ADDRESS")? {
            id.app_address = a;
        }
        let port = |key: &str, into: &mut u16| -> Result<(), String> {
            if let Some(p) = text(key)? {
                *into = p
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.fract() == 0.0 && (1.0..=65535.0).contains(n))
                    .map(|n| n as u16)
                    .ok_or_else(|| format!("node metadata {key}: {p:?} is not a port"))?;
            }
            Ok(())
        };
        port("OUTBOUND_PORT", &mut id.outbound_port)?;
        port("INBOUND_PORT", &mut id.inbound_port)?;
        match meta.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            None | Some(Kind::NullValue(_)) => {}
            Some(Kind::StructValue(s)) => {
                let mut labels = BTreeMap::new();
                for (k, v) in &s.fields {
                    match &v.kind {
                        Some(Kind::StringValue(s)) => {
                            labels.insert(k.clone(), s.clone());
                        }
                        _ => return Err(format!("node metadata LABELS.{k}: expected a string")),
                    }
                }
                id.labels = labels;
            }
            Some(_) => return Err("node metadata LABELS: expected a struct".into()),
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_round_trips_the_identity() {
        let id = ProxyIdentity {
            id: "sidecar~127.0.0.1~reviews-v1.default".into(),
            role: Role::Sidecar,
            namespace: "shop".into(),
            labels: [("app", "reviews"), ("version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "reviews".into(),
            locality: Locality {
                region: "us".into(),
                zone: "us-1".into(),
                subzone: "a".into(),
            },
            bind_address: "127.0.0.1".into(),
            outbound_port: 16001,
            inbound_port: 16006,
            app_address: "127.0.0.2".into(),
        };
        assert_eq!(ProxyIdentity::from_node(&id.to_node()), Ok(id));
    }

    #[test]
    fn a_stock_envoy_node_is_a_gateway_with_defaults() {
        let node = core::Node {
            id: "envoy-1".into(),
            ..Default::default()
        };
        let id = ProxyIdentity::from_node(&node).unwrap();
        assert_eq!(id.role, Role::Gateway);
        assert_eq!(id.namespace, "default");
        assert_eq!(id.id, "envoy-1");
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let mut node = ProxyIdentity::default().to_node();
        node.metadata
            .as_mut()
            .unwrap()
            .fields
            .insert("OUTBOUND_PORT".into(), string("70000"));
        let err = ProxyIdentity::from_node(&node).unwrap_err();
        assert!(err.contains("OUTBOUND_PORT"), "{err}");
    }
}
