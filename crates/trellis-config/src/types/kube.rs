//! Kubernetes kinds used as registry sources: core `v1` Service and `discovery.k8s.io/v1`
//! EndpointSlice, accepting everything `kubectl get -o yaml` prints (status included).

use std::collections::BTreeMap;

use super::istio::config_struct;
use super::{IntOrString, Value};

config_struct! {
    /// `Service.spec` (core/v1).
    pub struct KubeService {
        #[serde(rename = "type")]
        pub service_type: String,
        pub selector: BTreeMap<String, String>,
        pub ports: Vec<KubeServicePort>,
        #[serde(rename = "clusterIP")]
        pub cluster_ip: String,
        #[serde(rename = "clusterIPs")]
        pub cluster_ips: Vec<String>,
        pub ip_families: Vec<String>,
        pub ip_family_policy: String,
        pub session_affinity: String,
        pub session_affinity_config: Option<Value>,
        pub external_name: String,
        #[serde(rename = "externalIPs")]
        pub external_ips: Vec<String>,
        pub external_traffic_policy: String,
        pub internal_traffic_policy: String,
        #[serde(rename = "loadBalancerIP")]
        pub load_balancer_ip: String,
        pub load_balancer_source_ranges: Vec<String>,
        pub load_balancer_class: Option<String>,
        pub health_check_node_port: Option<u32>,
        pub publish_not_ready_addresses: bool,
        pub allocate_load_balancer_node_ports: Option<bool>,
        pub traffic_distribution: Option<String>,
    }
}

config_struct! {
    /// `ServicePort` (core/v1).
    pub struct KubeServicePort {
        pub name: String,
        /// `TCP` (default), `UDP`, `SCTP`.
        pub protocol: String,
        pub port: u32,
        pub target_port: Option<IntOrString>,
        pub node_port: Option<u32>,
        pub app_protocol: Option<String>,
    }
}

config_struct! {
    /// EndpointSlice (discovery.k8s.io/v1): its top-level `addressType`, `endpoints`, `ports`.
    pub struct EndpointSlice {
        pub address_type: String,
        pub endpoints: Vec<SliceEndpoint>,
        pub ports: Vec<SlicePort>,
    }
}

config_struct! {
    /// `Endpoint` of an EndpointSlice.
    pub struct SliceEndpoint {
        pub addresses: Vec<String>,
        pub conditions: EndpointConditions,
        pub hostname: Option<String>,
        pub target_ref: Option<Value>,
        pub node_name: Option<String>,
        pub zone: Option<String>,
        pub hints: Option<Value>,
        pub deprecated_topology: BTreeMap<String, String>,
    }
}

config_struct! {
    /// `EndpointConditions`; `ready: null` means ready.
    pub struct EndpointConditions {
        pub ready: Option<bool>,
        pub serving: Option<bool>,
        pub terminating: Option<bool>,
    }
}

config_struct! {
    /// `EndpointPort` of an EndpointSlice.
    pub struct SlicePort {
        pub name: Option<String>,
        pub port: Option<u32>,
        pub protocol: Option<String>,
        pub app_protocol: Option<String>,
    }
}

config_struct! {
    /// Secret (core/v1): TLS credentials a gateway server names by `credentialName`. Its
    /// top-level `type`, `data` (base64) and `stringData` (plain text, wins over `data`).
    pub struct Secret {
        #[serde(rename = "type")]
        pub secret_type: String,
        pub data: BTreeMap<String, String>,
        pub string_data: BTreeMap<String, String>,
        pub immutable: Option<bool>,
    }
}

impl Secret {
    /// The bytes under `key`: `stringData` as written, else `data` decoded from base64
    /// (`None` when absent or not base64; validation reports the latter).
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        if let Some(v) = self.string_data.get(key) {
            return Some(v.as_bytes().to_vec());
        }
        let text: String = self.data.get(key)?.split_whitespace().collect();
        super::base64_decode(&text)
    }

    /// Whether the Secret has `key` at all.
    pub fn has(&self, key: &str) -> bool {
        self.string_data.contains_key(key) || self.data.contains_key(key)
    }
}
