//! YAML text <-> JSON values for the store: documents of a multi-document stream as
//! `serde_json::Value`s with the 1-based line of each, and objects rendered back as YAML.
//! Parsing is `trellis_config::yaml`'s (the loader's own spanned tree: YAML 1.2 core schema,
//! alias-expansion budget); this module only turns that tree into JSON and JSON back into YAML.
//! Whether a document is a valid Istio object is `trellis-config`'s job.

use serde_json::{Map, Number, Value};
use trellis_config::yaml::{CoreScalar, Node, NodeKind};
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter};

pub use trellis_config::yaml::SyntaxError;

/// One document of a stream and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub value: Value,
    /// 1-based line and column of the document's top node.
    pub line: usize,
    pub col: usize,
}

/// Parses a multi-document YAML (or JSON) stream; empty documents are dropped.
pub fn parse(src: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut docs = Vec::new();
    trellis_config::yaml::for_each_document(src, |node| {
        docs.push(Document {
            value: to_json(&node),
            line: node.line,
            col: node.col,
        })
    })?;
    Ok(docs)
}

/// A node as JSON: core-schema scalars (a number JSON cannot hold, such as `.inf`, stays the
/// string it was written as), sequences, and mappings with string keys.
fn to_json(node: &Node) -> Value {
    match &node.kind {
        NodeKind::Scalar { value, .. } => match node.core() {
            Some(CoreScalar::Null) => Value::Null,
            Some(CoreScalar::Bool(b)) => Value::Bool(b),
            Some(CoreScalar::Int(i)) => i64::try_from(i)
                .map(Number::from)
                .ok()
                .or_else(|| u64::try_from(i).map(Number::from).ok())
                .map_or_else(|| Value::String(value.clone()), Value::Number),
            Some(CoreScalar::Float(f)) => {
                Number::from_f64(f).map_or_else(|| Value::String(value.clone()), Value::Number)
            }
            Some(CoreScalar::Str(_)) | None => Value::String(value.clone()),
        },
        NodeKind::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        NodeKind::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                map.insert(key_string(to_json(k)), to_json(v));
            }
            Value::Object(map)
        }
    }
}

/// Renders one value as a YAML document (no leading `---`, trailing newline).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    // Writing to a String cannot fail.
    let _ = emitter.dump(&to_yaml_node(value));
    let body = out.strip_prefix("---\n").unwrap_or(&out).to_owned();
    body + "\n"
}

/// Renders several values as one multi-document YAML stream.
pub fn to_yaml_stream<'a>(values: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&to_yaml(v));
    }
    out
}

fn to_yaml_node(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml_node).collect()),
        Value::Object(map) => {
            let mut hash = Hash::new();
            for (k, v) in map {
                hash.insert(Yaml::String(k.clone()), to_yaml_node(v));
            }
            Yaml::Hash(hash)
        }
    }
}

fn key_string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_carry_their_first_line() {
        let docs = parse("a: 1\n---\n# c\nb: [x, 2, true, null, 1.5, \"3\"]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value, json!({"a": 1}));
        assert_eq!(docs[0].line, 1);
        assert_eq!(docs[1].value, json!({"b": ["x", 2, true, null, 1.5, "3"]}));
        assert_eq!(docs[1].line, 4);
    }

    #[test]
    fn compact_json_is_yaml() {
        let docs = parse(
            r#"{"kind":"VirtualService","metadata":{"name":"r","labels":{"a":"1"}},"n":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(
            docs[0].value,
            json!({"kind": "VirtualService", "metadata": {"name": "r", "labels": {"a": "1"}}, "n": [1, 2]})
        );
    }

    #[test]
    fn round_trips_through_yaml() {
        let v = json!({"s": "true", "n": "080", "i": 7, "f": 0.5, "e": "", "l": ["a: b", "- x"], "m": {}});
        let text = to_yaml(&v);
        assert_eq!(parse(&text).unwrap()[0].value, v, "{text}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse("a: 1\nb: [\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
        assert!(e.message.starts_with("invalid YAML"), "{e:?}");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse(&src).unwrap_err();
        assert!(e.message.contains("alias"), "{e:?}");
    }
}
