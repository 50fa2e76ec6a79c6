//! Istio `security.istio.io` `AuthorizationPolicy` (v1 and v1beta1), as users write it. Every
//! field is optional here; `validate/authorization.rs` checks actions, providers, CIDRs, ports,
//! path templates and `when` keys. The meaning (which workloads a policy applies to, how a rule
//! matches) is compiled by `trellis-xds`'s `authz.rs` into Envoy RBAC.

use super::WorkloadSelector;
use super::istio::config_struct;

config_struct! {
    /// `AuthorizationPolicy.spec`. `spec: {}` is an ALLOW policy without rules: it denies
    /// everything on the workloads it selects.
    pub struct AuthorizationPolicy {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub rules: Vec<AuthorizationRule>,
        /// `ALLOW` (default), `DENY`, `AUDIT` or `CUSTOM`.
        pub action: Option<String>,
        /// CUSTOM only: the extension provider (MeshConfig `extensionProviders[].name`).
        pub provider: Option<ExtensionProviderRef>,
    }
}

config_struct! {
    /// `PolicyTargetReference`: a Gateway (or Service) the policy attaches to.
    pub struct PolicyTargetReference {
        pub group: String,
        pub kind: String,
        pub name: String,
        pub namespace: String,
    }
}

config_struct! {
    /// `AuthorizationPolicy.ExtensionProvider`.
    pub struct ExtensionProviderRef {
        pub name: String,
    }
}

config_struct! {
    /// `Rule`: matches when any `from`, any `to` and every `when` match (an absent list matches).
    pub struct AuthorizationRule {
        pub from: Vec<RuleFrom>,
        pub to: Vec<RuleTo>,
        pub when: Vec<Condition>,
    }
}

config_struct! {
    /// `Rule.From`.
    pub struct RuleFrom {
        pub source: Option<Source>,
    }
}

config_struct! {
    /// `Rule.To`.
    pub struct RuleTo {
        pub operation: Option<Operation>,
    }
}

config_struct! {
    /// `Source`: each field's values are ORed, the fields are ANDed.
    pub struct Source {
        pub principals: Vec<String>,
        pub not_principals: Vec<String>,
        pub request_principals: Vec<String>,
        pub not_request_principals: Vec<String>,
        pub namespaces: Vec<String>,
        pub not_namespaces: Vec<String>,
        pub service_accounts: Vec<String>,
        pub not_service_accounts: Vec<String>,
        pub ip_blocks: Vec<String>,
        pub not_ip_blocks: Vec<String>,
        pub remote_ip_blocks: Vec<String>,
        pub not_remote_ip_blocks: Vec<String>,
    }
}

config_struct! {
    /// `Operation`: each field's values are ORed, the fields are ANDed.
    pub struct Operation {
        pub hosts: Vec<String>,
        pub not_hosts: Vec<String>,
        pub ports: Vec<String>,
        pub not_ports: Vec<String>,
        pub methods: Vec<String>,
        pub not_methods: Vec<String>,
        pub paths: Vec<String>,
        pub not_paths: Vec<String>,
    }
}

config_struct! {
    /// `Condition`: `key` matches one of `values` and none of `notValues`.
    pub struct Condition {
        pub key: String,
        pub values: Vec<String>,
        pub not_values: Vec<String>,
    }
}
