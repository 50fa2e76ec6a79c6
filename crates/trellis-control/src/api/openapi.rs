//! The OpenAPI 3 description of the management API, served at `/openapi.json`. Must be kept
//! in step with the routes in `api.rs` (the API tests check that every route is listed).

use serde_json::{Value, json};

/// The whole document.
pub fn document() -> Value {
    let object = json!({ "$ref": "#/components/schemas/Object" });
    let status = json!({ "$ref": "#/components/schemas/Status" });
    let yaml_or_json = json!({
        "required": true,
        "description": "One or more YAML documents, a JSON object, or a `kind: List` of objects.",
        "content": {
            "application/yaml": { "schema": { "type": "string" } },
            "application/json": { "schema": object },
        },
    });
    let source = json!({
        "name": "source", "in": "query", "required": false,
        "description": "Name the body carries in diagnostics (default `request`).",
        "schema": { "type": "string" },
    });
    let kind = json!({
        "name": "kind", "in": "path", "required": true,
        "description": "Kind, plural or short name: VirtualService, virtualservices, vs, ...",
        "schema": { "type": "string" },
    });
    let namespace = json!({ "name": "namespace", "in": "path", "required": true, "schema": { "type": "string" } });
    let name =
        json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } });
    let list_params = json!([
        { "name": "namespace", "in": "query", "required": false, "schema": { "type": "string" } },
        { "name": "labelSelector", "in": "query", "required": false,
          "description": "Equality-based: `app=reviews,version!=v1,tier,!canary`.",
          "schema": { "type": "string" } },
    ]);
    let errors = |extra: &[(&str, &str)]| {
        let mut responses = serde_json::Map::new();
        responses.insert(
            "401".into(),
            json!({ "description": "Missing or wrong bearer token.", "content": { "application/json": { "schema": status } } }),
        );
        for (code, description) in extra {
            responses.insert(
                (*code).into(),
                json!({ "description": description, "content": { "application/json": { "schema": status } } }),
            );
        }
        responses
    };
    let with = |ok: Value, extra: &[(&str, &str)]| {
        let mut r = errors(extra);
        r.insert("200".into(), ok);
        Value::Object(r)
    };
    let ok_json = |description: &str, schema: Value| {
        json!({ "description": description, "content": {
            "application/json": { "schema": schema },
            "application/yaml": { "schema": schema },
        }})
    };
    let applied = json!({ "$ref": "#/components/schemas/Applied" });
    let list = json!({ "$ref": "#/components/schemas/List" });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Trellis management API",
            "version": "v1",
            "description": "Apply, read and delete Istio/Kubernetes configuration objects in the control plane's store. Writes need `Authorization: Bearer <token>` (the token file is created at first start, mode 0600; rotate with POST /api/v1/token/rotate). Reads are open to loopback clients (from elsewhere they need the token too, except /metrics and /openapi.json). Answers are JSON, or YAML with `Accept: application/yaml`.",
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Object": {
                    "type": "object",
                    "description": "A Kubernetes-style object (apiVersion, kind, metadata, spec). metadata.resourceVersion, when sent, must be current or the write fails with 409.",
                    "required": ["apiVersion", "kind", "metadata"],
                    "properties": {
                        "apiVersion": { "type": "string" },
                        "kind": { "type": "string" },
                        "metadata": { "type": "object", "properties": {
                            "name": { "type": "string" },
                            "namespace": { "type": "string" },
                            "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                            "resourceVersion": { "type": "string" },
                        }},
                        "spec": { "type": "object" },
                    },
                },
                "List": {
                    "type": "object",
                    "properties": {
                        "apiVersion": { "type": "string" },
                        "kind": { "type": "string", "enum": ["List"] },
                        "metadata": { "type": "object", "properties": { "resourceVersion": { "type": "string" } } },
                        "items": { "type": "array", "items": object },
                    },
                },
                "Diagnostic": {
                    "type": "object",
                    "properties": {
                        "severity": { "type": "string", "enum": ["error", "warning"] },
                        "file": { "type": "string" },
                        "line": { "type": "integer" },
                        "column": { "type": "integer" },
                        "resource": { "type": "string" },
                        "path": { "type": "string" },
                        "message": { "type": "string" },
                        "text": { "type": "string", "description": "file:line:col: severity: resource: path: message" },
                    },
                },
                "Applied": {
                    "type": "object",
                    "properties": {
                        "revision": { "type": "integer" },
                        "objects": { "type": "array", "items": { "type": "object", "properties": {
                            "kind": { "type": "string" }, "namespace": { "type": "string" }, "name": { "type": "string" },
                            "result": { "type": "string", "enum": ["created", "configured", "unchanged", "deleted"] },
                            "resourceVersion": { "type": "string" },
                        }}},
                        "warnings": { "type": "array", "items": { "$ref": "#/components/schemas/Diagnostic" } },
                    },
                },
                "QuotaUsage": {
                    "type": "object",
                    "properties": {
                        "namespace": { "type": "string" }, "policy": { "type": "string" },
                        "consumer": { "type": "string" }, "domain": { "type": "string" },
                        "quotas": { "type": "array", "items": { "type": "object", "properties": {
                            "name": { "type": "string" },
                            "limit": { "type": "integer" },
                            "window": { "type": "string", "enum": ["HOUR", "DAY", "MONTH"] },
                            "windowStart": { "type": "string", "format": "date-time" },
                            "windowEnd": { "type": "string", "format": "date-time" },
                            "used": { "type": "integer", "description": "Requests counted in this window, those over the limit included." },
                            "remaining": { "type": "integer" },
                            "shadow": { "type": "boolean" },
                        }}},
                    },
                },
                "Status": {
                    "type": "object",
                    "description": "An error: code, reason, message, and for invalid configuration every error with its location.",
                    "properties": {
                        "kind": { "type": "string", "enum": ["Status"] },
                        "code": { "type": "integer" },
                        "reason": { "type": "string" },
                        "message": { "type": "string" },
                        "errors": { "type": "array", "items": { "$ref": "#/components/schemas/Diagnostic" } },
                    },
                },
            },
        },
        "paths": {
            "/api/v1/apply": { "post": {
                "summary": "Create or update objects, all or nothing",
                "security": [{ "bearer": [] }],
                "parameters": [source],
                "requestBody": yaml_or_json,
                "responses": with(ok_json("Applied.", applied.clone()), &[
                    ("400", "The configuration would be invalid: every error with file, line, column and field path."),
                    ("409", "A metadata.resourceVersion is stale."),
                ]),
            }},
            "/api/v1/validate": { "post": {
                "summary": "Dry run: load the configuration the body leads to and compile it for a default ingress gateway",
                "security": [{ "bearer": [] }],
                "parameters": [source],
                "requestBody": yaml_or_json,
                "responses": with(ok_json("Valid; warnings and compiled resource counts.", json!({ "type": "object" })), &[
                    ("400", "Invalid: every error with its location."),
                    ("409", "A metadata.resourceVersion is stale."),
                ]),
            }},
            "/api/v1/resources": { "get": {
                "summary": "List objects of every kind",
                "parameters": list_params,
                "responses": with(ok_json("The objects.", list.clone()), &[]),
            }},
            "/api/v1/resources/{kind}": { "get": {
                "summary": "List objects of one kind",
                "parameters": [kind, list_params[0], list_params[1]],
                "responses": with(ok_json("The objects.", list), &[("404", "Unknown kind.")]),
            }},
            "/api/v1/resources/{kind}/{namespace}/{name}": {
                "get": {
                    "summary": "Get one object",
                    "parameters": [kind, namespace, name],
                    "responses": with(ok_json("The object, with metadata.resourceVersion.", object), &[("404", "Not found.")]),
                },
                "delete": {
                    "summary": "Delete one object (the rest of the configuration must still be valid)",
                    "security": [{ "bearer": [] }],
                    "parameters": [kind, namespace, name,
                        { "name": "resourceVersion", "in": "query", "required": false,
                          "description": "Delete only if the object is still at this version (else 409).",
                          "schema": { "type": "string" } }],
                    "responses": with(ok_json("Deleted.", applied), &[
                        ("400", "The configuration would be invalid without it."),
                        ("404", "Not found."),
                        ("409", "resourceVersion is stale."),
                    ]),
                },
            },
            "/api/v1/status": { "get": {
                "summary": "The store: backend, revision served, object count, errors of a refused source edit, warnings",
                "responses": with(ok_json("Store status.", json!({ "type": "object" })), &[]),
            }},
            "/api/v1/proxy-status": { "get": {
                "summary": "Per connected proxy and type: sent, ACKed and NACKed versions and SYNCED / STALE / NACKED",
                "responses": with(ok_json("Proxy status.", json!({ "type": "object" })), &[]),
            }},
            "/api/v1/token/rotate": { "post": {
                "summary": "Replace the bearer token with a new random one; the old one stops working at once",
                "security": [{ "bearer": [] }],
                "responses": with(ok_json("The new token and the file it is kept in.", json!({ "type": "object", "properties": {
                    "token": { "type": "string" }, "path": { "type": "string", "nullable": true } } })), &[]),
            }},
            "/api/v1/ca": { "get": {
                "summary": "The CA: source (self-signed or cacerts), trust domain, trusted roots (PEM), the signing root, whether a rotation is pending",
                "responses": with(ok_json("CA state.", json!({ "type": "object" })), &[]),
            }},
            "/api/v1/ca/tokens": { "post": {
                "summary": "Create a bootstrap token (ES256 JWT) for one namespace and service account; body {namespace, serviceAccount, ttlSeconds (default 3600)}",
                "security": [{ "bearer": [] }],
                "responses": with(ok_json("The token and the SPIFFE id it names.", json!({ "type": "object", "properties": {
                    "token": { "type": "string" }, "spiffeId": { "type": "string" }, "ttlSeconds": { "type": "integer" } } })), &[]),
            }},
            "/api/v1/ca/rotate": { "post": {
                "summary": "One step of a root rotation: ?phase=add (new root trusted, not signing), activate (new root signs), retire (only the signing root trusted)",
                "security": [{ "bearer": [] }],
                "responses": with(ok_json("CA state after the step.", json!({ "type": "object" })), &[]),
            }},
            "/api/v1/quotas/{namespace}/{policy}": { "get": {
                "summary": "Usage of each quota of a QuotaPolicy by one consumer in the current window (needs `trellis control --redis`)",
                "parameters": [namespace, { "name": "policy", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "consumer", "in": "query", "required": true,
                      "description": "The consumer's value: JWT claim, API-key header or source principal.",
                      "schema": { "type": "string" } }],
                "responses": with(ok_json("Per quota: limit, window (HOUR, DAY, MONTH; UTC start and end), used, remaining.", json!({ "$ref": "#/components/schemas/QuotaUsage" })), &[
                    ("400", "No consumer given."),
                    ("404", "No such QuotaPolicy, or no rate limit service in this control plane."),
                    ("503", "Redis cannot be read."),
                ]),
            }},
            "/metrics": { "get": {
                "summary": "Control-plane metrics, Prometheus text format",
                "responses": { "200": { "description": "Metrics.", "content": { "text/plain": { "schema": { "type": "string" } } } } },
            }},
            "/openapi.json": { "get": {
                "summary": "This document",
                "responses": { "200": { "description": "OpenAPI 3 document.", "content": { "application/json": { "schema": { "type": "object" } } } } },
            }},
        },
    })
}
