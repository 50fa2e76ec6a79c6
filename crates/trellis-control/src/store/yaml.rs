//! YAML text <-> JSON values for the store: documents of a multi-document stream as
//! `serde_json::Value`s with the 1-based line of each, and objects rendered back as YAML.
//! Owns only the generic conversion (YAML 1.2 core schema, an alias-expansion budget);
//! whether a document is a valid Istio object is `trellis-config`'s job.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter};

/// Upper bound on values created by alias expansion (guards against "billion laughs").
const ALIAS_BUDGET: usize = 100_000;

/// One document of a stream and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub value: Value,
    /// 1-based line and column of the document's top node.
    pub line: usize,
    pub col: usize,
}

/// A YAML syntax error at a 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

struct Builder {
    docs: Vec<Document>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Value, usize)>,
    budget: usize,
    error: Option<SyntaxError>,
}

struct Frame {
    value: Value,
    anchor: usize,
    mark: Marker,
    key: Option<String>,
}

/// Parses a multi-document YAML (or JSON) stream; empty documents are dropped.
pub fn parse(src: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut builder = Builder {
        docs: Vec::new(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        budget: ALIAS_BUDGET,
        error: None,
    };
    let mut parser = Parser::new_from_str(src);
    if let Err(e) = parser.load(&mut builder, true) {
        let m = e.marker();
        return Err(SyntaxError {
            line: m.line(),
            col: m.col() + 1,
            message: format!("invalid YAML: {}", e.info()),
        });
    }
    match builder.error {
        Some(e) => Err(e),
        None => Ok(builder.docs),
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

/// YAML 1.2 core schema resolution of a plain scalar.
fn plain_scalar(v: &str) -> Value {
    match v {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = v.parse::<i64>() {
            return Value::Number(i.into());
        }
        if let Ok(u) = v.parse::<u64>() {
            return Value::Number(u.into());
        }
    }
    let looks_float = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b"eE.+-".contains(&b))
        && digits
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.');
    if looks_float
        && let Ok(f) = v.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(v.to_owned())
}

fn key_string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn size(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(size).sum::<usize>(),
        _ => 1,
    }
}

impl Builder {
    fn fail(&mut self, mark: Marker, message: &str) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                line: mark.line(),
                col: mark.col() + 1,
                message: message.to_owned(),
            });
        }
    }

    fn attach(&mut self, value: Value, anchor: usize, mark: Marker) {
        if anchor > 0 {
            let n = size(&value);
            self.anchors.insert(anchor, (value.clone(), n));
        }
        let Some(top) = self.stack.last_mut() else {
            if !value.is_null() {
                self.docs.push(Document {
                    value,
                    line: mark.line(),
                    col: mark.col() + 1,
                });
            }
            return;
        };
        match &mut top.value {
            Value::Array(items) => items.push(value),
            Value::Object(map) => match top.key.take() {
                None => top.key = Some(key_string(value)),
                Some(key) => {
                    map.insert(key, value);
                }
            },
            _ => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let v = if style == TScalarStyle::Plain && !is_str_tag {
                    plain_scalar(&value)
                } else {
                    Value::String(value)
                };
                self.attach(v, anchor, mark);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame {
                value: Value::Array(Vec::new()),
                anchor,
                mark,
                key: None,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame {
                value: Value::Object(Map::new()),
                anchor,
                mark,
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    self.attach(frame.value, frame.anchor, frame.mark);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((value, n)) => {
                    if *n > self.budget {
                        self.fail(mark, "too many alias expansions in this document");
                        return;
                    }
                    self.budget -= n;
                    let value = value.clone();
                    self.attach(value, 0, mark);
                }
                None => self.fail(mark, "alias refers to an unknown anchor"),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
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
