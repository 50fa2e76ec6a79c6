//! YAML text -> spanned tree. Owns the event-driven parse (yaml-rust2), 1-based
//! line:column positions, alias resolution and its expansion budget. Knows nothing about
//! Kubernetes or Istio; turning nodes into types is `de.rs`'s job.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Upper bound on nodes created by alias expansion (guards against "billion laughs").
const ALIAS_NODE_BUDGET: usize = 100_000;

/// One YAML node with its 1-based position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub line: usize,
    pub col: usize,
}

/// The shape of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `plain` is false for quoted and block scalars (always strings).
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A YAML syntax (or alias) error at a 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Plain-scalar interpretation under the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreScalar<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
}

struct Builder<F> {
    on_document: F,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    alias_budget: usize,
    error: Option<SyntaxError>,
}

struct Frame {
    node: Node,
    anchor: usize,
    pending_key: Option<Node>,
}

impl Node {
    fn new(kind: NodeKind, mark: Marker) -> Node {
        Node {
            kind,
            line: mark.line(),
            col: mark.col() + 1,
        }
    }

    /// A human name for error messages: "a string", "a sequence", "a mapping", …
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { value, plain } => match self.core() {
                Some(CoreScalar::Null) => "null".to_string(),
                Some(CoreScalar::Bool(_)) => format!("boolean `{value}`"),
                Some(CoreScalar::Int(_)) | Some(CoreScalar::Float(_)) => {
                    format!("number `{value}`")
                }
                _ if *plain || value.len() <= 40 => format!("string `{value}`"),
                _ => "a string".to_string(),
            },
            NodeKind::Seq(_) => "a sequence".to_string(),
            NodeKind::Map(_) => "a mapping".to_string(),
        }
    }

    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Core-schema interpretation of a scalar (quoted scalars are always strings).
    pub fn core(&self) -> Option<CoreScalar<'_>> {
        match &self.kind {
            NodeKind::Scalar { value, plain: true } => Some(core_scalar(value)),
            NodeKind::Scalar {
                value,
                plain: false,
            } => Some(CoreScalar::Str(value)),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.core(), Some(CoreScalar::Null))
    }

    /// Value of a mapping key given as a plain string.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn size(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar { .. } => 1,
            NodeKind::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            NodeKind::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
        }
    }
}

/// Parses a multi-document YAML stream. Empty documents are dropped.
#[cfg(test)]
pub fn parse_documents(src: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut docs = Vec::new();
    for_each_document(src, |doc| docs.push(doc))?;
    Ok(docs)
}

/// Parses a multi-document YAML stream and hands each non-empty document to `on_document`
/// as soon as it is complete, so only one document's tree is alive at a time. On a syntax
/// error, documents before it have already been handed out; the caller discards them.
pub fn for_each_document(src: &str, on_document: impl FnMut(Node)) -> Result<(), SyntaxError> {
    let mut builder = Builder {
        on_document,
        stack: Vec::new(),
        anchors: HashMap::new(),
        alias_budget: ALIAS_NODE_BUDGET,
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
        None => Ok(()),
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub fn core_scalar(v: &str) -> CoreScalar<'_> {
    match v {
        "" | "~" | "null" | "Null" | "NULL" => return CoreScalar::Null,
        "true" | "True" | "TRUE" => return CoreScalar::Bool(true),
        "false" | "False" | "FALSE" => return CoreScalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return CoreScalar::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return CoreScalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return CoreScalar::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = v.strip_prefix("0x")
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return i128::from_str_radix(hex, 16).map_or(CoreScalar::Str(v), CoreScalar::Int);
    }
    if let Some(oct) = v.strip_prefix("0o")
        && !oct.is_empty()
        && oct.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return i128::from_str_radix(oct, 8).map_or(CoreScalar::Str(v), CoreScalar::Int);
    }
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse::<i128>()
            .map_or(CoreScalar::Str(v), CoreScalar::Int);
    }
    if is_core_float(digits)
        && let Ok(f) = v.parse::<f64>()
    {
        return CoreScalar::Float(f);
    }
    CoreScalar::Str(v)
}

/// `( \.[0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?` (sign already stripped).
fn is_core_float(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => {
            (!a.is_empty() || !b.is_empty())
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|c| c.is_ascii_digit()),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exp_ok
}

impl<F: FnMut(Node)> Builder<F> {
    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                line: mark.line(),
                col: mark.col() + 1,
                message,
            });
        }
    }

    /// Attaches a finished node to its parent (or makes it a document).
    fn attach(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some(top) = self.stack.last_mut() else {
            if !node.is_null() {
                (self.on_document)(node);
            }
            return;
        };
        match &mut top.node.kind {
            NodeKind::Seq(items) => items.push(node),
            NodeKind::Map(entries) => match top.pending_key.take() {
                None => top.pending_key = Some(node),
                Some(key) => entries.push((key, node)),
            },
            NodeKind::Scalar { .. } => {}
        }
    }
}

impl<F: FnMut(Node)> MarkedEventReceiver for Builder<F> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == TScalarStyle::Plain && !is_str_tag;
                self.attach(Node::new(NodeKind::Scalar { value, plain }, mark), anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame {
                node: Node::new(NodeKind::Seq(Vec::new()), mark),
                anchor,
                pending_key: None,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame {
                node: Node::new(NodeKind::Map(Vec::new()), mark),
                anchor,
                pending_key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    self.attach(frame.node, frame.anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(node) => {
                    let size = node.size();
                    if size > self.alias_budget {
                        self.fail(mark, "too many alias expansions in this file".to_string());
                        return;
                    }
                    self.alias_budget -= size;
                    let mut node = node.clone();
                    node.line = mark.line();
                    node.col = mark.col() + 1;
                    self.attach(node, 0);
                }
                None => self.fail(mark, "alias refers to an unknown anchor".to_string()),
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

    #[test]
    fn positions_are_one_based() {
        let docs = parse_documents("a: 1\nb:\n  - x\n").unwrap();
        assert_eq!(docs.len(), 1);
        let NodeKind::Map(entries) = &docs[0].kind else {
            panic!("not a map")
        };
        assert_eq!((entries[0].0.line, entries[0].0.col), (1, 1));
        assert_eq!((entries[0].1.line, entries[0].1.col), (1, 4));
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!("not a seq")
        };
        assert_eq!((items[0].line, items[0].col), (3, 5));
    }

    #[test]
    fn multi_document_and_empty_documents() {
        let docs = parse_documents("---\na: 1\n---\n# nothing\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].line, 6);
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_documents("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        assert!(err.message.starts_with("invalid YAML"));
    }

    #[test]
    fn aliases_resolve() {
        let docs = parse_documents("a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(
            docs[0]
                .get("b")
                .and_then(|b| b.get("k"))
                .and_then(Node::as_str),
            Some("v")
        );
    }

    #[test]
    fn alias_bomb_is_rejected() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_documents(&src).unwrap_err();
        assert!(err.message.contains("alias"), "{err:?}");
    }

    #[test]
    fn core_schema() {
        assert_eq!(core_scalar("~"), CoreScalar::Null);
        assert_eq!(core_scalar("True"), CoreScalar::Bool(true));
        assert_eq!(core_scalar("yes"), CoreScalar::Str("yes"));
        assert_eq!(core_scalar("-12"), CoreScalar::Int(-12));
        assert_eq!(core_scalar("0x1F"), CoreScalar::Int(31));
        assert_eq!(core_scalar("0o17"), CoreScalar::Int(15));
        assert_eq!(core_scalar("1.5e3"), CoreScalar::Float(1500.0));
        assert_eq!(core_scalar("v1"), CoreScalar::Str("v1"));
        assert_eq!(core_scalar("1.2.3"), CoreScalar::Str("1.2.3"));
    }
}
