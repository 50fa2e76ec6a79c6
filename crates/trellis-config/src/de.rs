//! A serde `Deserializer` over the spanned YAML tree (`yaml.rs`) that never gives up:
//! type mismatches, unknown fields, duplicate keys and unknown enum values are recorded
//! with their field path and position, and a neutral value is handed to the visitor so
//! that deserialization continues and every problem is reported at once. It also records
//! the position of every field path for the validation pass, compactly: a 64-bit hash of
//! (object, path) and a 32-bit line and column, never the path text. It must not validate
//! semantics (required fields, ranges): that is `validate.rs`.

use std::cell::RefCell;
use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::diag::{closest, did_you_mean};
use crate::yaml::{CoreScalar, Node, NodeKind};

/// A problem found while deserializing one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub line: usize,
    pub col: usize,
    pub path: String,
    pub message: String,
    /// A neutral value replaced the field, so rules about its value are meaningless.
    pub substituted: bool,
}

/// Positions of the field paths of every loaded object, looked up by (file, object line,
/// path) with [`SpanIndex::locate`]. Stores 16 bytes per path: its hash and its position.
#[derive(Debug, Default)]
pub(crate) struct SpanIndex {
    /// `(hash of object and path, line, col)`, sorted by hash once [`SpanIndex::seal`]ed.
    entries: Vec<(u64, u32, u32)>,
}

/// The hash state of an object (its file and line); paths within it continue from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ObjectKey(u64);

/// Shared state of one deserialization: collected errors and positions.
#[derive(Debug)]
pub(crate) struct Collector {
    pub errors: RefCell<Vec<FieldError>>,
    object: ObjectKey,
    spans: RefCell<Vec<(u64, u32, u32)>>,
}

/// The only error the deserializer itself returns: a visitor gave up (already recorded).
#[derive(Debug)]
pub(crate) struct DeError(String);

/// Deserializer for one node at one path.
pub(crate) struct NodeDe<'a> {
    node: &'a Node,
    path: String,
    ctx: &'a Collector,
}

struct SeqAcc<'a> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
    path: String,
    ctx: &'a Collector,
}

struct MapAcc<'a> {
    entries: std::vec::IntoIter<(&'a Node, &'a Node, String)>,
    value: Option<(&'a Node, String)>,
    ctx: &'a Collector,
}

struct UnitVariant(&'static str);

impl ObjectKey {
    pub fn new(file: &str, line: usize) -> ObjectKey {
        let mut h = fnv(FNV_OFFSET, file.as_bytes());
        h = fnv(h, &[0xff]);
        ObjectKey(fnv(h, &(line as u64).to_le_bytes()))
    }

    fn path(self, path: &str) -> u64 {
        fnv(self.0, path.as_bytes())
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64 bit), continuing from `state`.
fn fnv(mut state: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        state ^= u64::from(*b);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

impl SpanIndex {
    /// Adds one object's positions (the first position recorded for a path wins).
    pub fn extend(&mut self, collector: Collector) {
        self.entries.append(&mut collector.spans.into_inner());
    }

    /// Number of positions recorded (to roll back a file that turned out to be invalid).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn truncate(&mut self, len: usize) {
        self.entries.truncate(len);
    }

    /// Sorts for lookup; call once loading is done.
    pub fn seal(&mut self) {
        // Stable: among equal keys the first recorded stays first and survives the dedup.
        self.entries.sort_by_key(|e| e.0);
        self.entries.dedup_by_key(|e| e.0);
        self.entries.shrink_to_fit();
    }

    fn get(&self, key: u64) -> Option<(usize, usize)> {
        let i = self.entries.binary_search_by_key(&key, |e| e.0).ok()?;
        let (_, line, col) = self.entries[i];
        Some((line as usize, col as usize))
    }

    /// Position of `path` within the object at (`file`, `line`), or of its closest recorded
    /// ancestor; falls back to the object's line.
    pub fn locate(&self, file: &str, line: usize, path: &str) -> (usize, usize) {
        let object = ObjectKey::new(file, line);
        let mut p = path;
        loop {
            if let Some(pos) = self.get(object.path(p)) {
                return pos;
            }
            if p.is_empty() {
                return (line, 1);
            }
            p = parent_path(p);
        }
    }
}

/// `a.b[2]` -> `a.b` -> `a` -> ``.
pub(crate) fn parent_path(p: &str) -> &str {
    if p.ends_with(']')
        && let Some(i) = p.rfind('[')
    {
        return &p[..i];
    }
    p.rfind('.').map_or("", |i| &p[..i])
}

/// Path of a mapping key under `parent`; keys that are not identifiers are bracketed.
pub(crate) fn child_path(parent: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), simple) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

impl Collector {
    /// A collector for the object at `object`.
    pub fn new(object: ObjectKey) -> Collector {
        Collector {
            errors: RefCell::default(),
            object,
            spans: RefCell::default(),
        }
    }

    /// A problem that leaves the field as decoded (unknown or duplicate keys).
    fn error(&self, node: &Node, path: &str, message: String) {
        self.push(node, path, message, false);
    }

    /// A problem that replaced the field's value with a neutral one.
    fn substituted(&self, node: &Node, path: &str, message: String) {
        self.push(node, path, message, true);
    }

    fn push(&self, node: &Node, path: &str, message: String, substituted: bool) {
        self.errors.borrow_mut().push(FieldError {
            line: node.line,
            col: node.col,
            path: path.to_string(),
            message,
            substituted,
        });
    }

    fn span(&self, path: &str, node: &Node) {
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.spans
            .borrow_mut()
            .push((self.object.path(path), to_u32(node.line), to_u32(node.col)));
    }

    /// Deserializes `node` as `T`, collecting problems. `None` only if a visitor gave up.
    pub fn deserialize<T: de::DeserializeOwned>(&self, node: &Node, path: &str) -> Option<T> {
        self.span(path, node);
        let de = NodeDe {
            node,
            path: path.to_string(),
            ctx: self,
        };
        let before = self.errors.borrow().len();
        match T::deserialize(de.clone_ref()) {
            Ok(v) => Some(v),
            Err(e) => {
                // Never drop an object silently: make sure something explains why.
                if !e.0.is_empty() || self.errors.borrow().len() == before {
                    let message = if e.0.is_empty() {
                        "cannot decode this object".to_string()
                    } else {
                        e.0
                    };
                    self.substituted(node, path, message);
                }
                None
            }
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(msg.to_string())
    }
}

impl<'a> NodeDe<'a> {
    fn child(&self, node: &'a Node, path: String) -> NodeDe<'a> {
        NodeDe {
            node,
            path,
            ctx: self.ctx,
        }
    }

    fn mismatch(&self, expected: &str) {
        self.ctx.substituted(
            self.node,
            &self.path,
            format!("expected {expected}, found {}", self.node.describe()),
        );
    }

    /// Integer in `min..=max`; problems are recorded and yield 0.
    fn int(&self, min: i128, max: i128) -> i128 {
        let parsed = match self.node.core() {
            Some(CoreScalar::Null) => return 0,
            Some(CoreScalar::Int(i)) => Some(i),
            Some(CoreScalar::Float(f)) if f.fract() == 0.0 && f.abs() < 1e30 => Some(f as i128),
            Some(CoreScalar::Str(s)) => s.trim().parse::<i128>().ok(),
            _ => None,
        };
        match parsed {
            Some(i) if (min..=max).contains(&i) => i,
            Some(i) => {
                self.ctx.substituted(
                    self.node,
                    &self.path,
                    format!("integer {i} out of range; expected {min}..={max}"),
                );
                0
            }
            None => {
                self.mismatch("an integer");
                0
            }
        }
    }

    fn float(&self) -> f64 {
        match self.node.core() {
            Some(CoreScalar::Null) => 0.0,
            Some(CoreScalar::Int(i)) => i as f64,
            Some(CoreScalar::Float(f)) => f,
            Some(CoreScalar::Str(s)) if s.trim().parse::<f64>().is_ok() => {
                s.trim().parse().unwrap_or(0.0)
            }
            _ => {
                self.mismatch("a number");
                0.0
            }
        }
    }

    fn boolean(&self) -> bool {
        match self.node.core() {
            Some(CoreScalar::Null) => false,
            Some(CoreScalar::Bool(b)) => b,
            Some(CoreScalar::Str("true")) => true,
            Some(CoreScalar::Str("false")) => false,
            _ => {
                self.mismatch("a boolean (true or false)");
                false
            }
        }
    }

    fn string(&self) -> &'a str {
        match &self.node.kind {
            NodeKind::Scalar { .. } if self.node.is_null() => "",
            NodeKind::Scalar { value, .. } => value,
            _ => {
                self.mismatch("a string");
                ""
            }
        }
    }

    fn seq_items(&self) -> &'a [Node] {
        match &self.node.kind {
            NodeKind::Seq(items) => items,
            _ if self.node.is_null() => &[],
            _ => {
                self.mismatch("a sequence (a YAML list)");
                &[]
            }
        }
    }

    /// Map entries with unique string keys; `fields` filters (and reports) unknown keys.
    fn map_entries(&self, fields: Option<&[&str]>) -> Vec<(&'a Node, &'a Node, String)> {
        let entries: &'a [(Node, Node)] = match &self.node.kind {
            NodeKind::Map(entries) => entries,
            _ if self.node.is_null() => &[],
            _ => {
                self.mismatch("a mapping");
                &[]
            }
        };
        let mut seen: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        for (k, v) in entries {
            let Some(key) = k.as_str() else {
                self.ctx.error(
                    k,
                    &self.path,
                    format!("mapping keys must be strings, found {}", k.describe()),
                );
                continue;
            };
            let path = child_path(&self.path, key);
            if seen.contains(&key) {
                self.ctx.error(k, &path, format!("duplicate key `{key}`"));
                continue;
            }
            seen.push(key);
            if let Some(fields) = fields
                && !fields.contains(&key)
            {
                self.ctx.error(k, &path, unknown_field_message(key, fields));
                continue;
            }
            let at = if matches!(v.kind, NodeKind::Scalar { .. }) {
                v
            } else {
                k
            };
            self.ctx.span(&path, at);
            out.push((k, v, path));
        }
        out
    }

    fn visit_map_of<V: Visitor<'a>>(
        &self,
        visitor: V,
        fields: Option<&[&str]>,
    ) -> Result<V::Value, DeError> {
        visitor.visit_map(MapAcc {
            entries: self.map_entries(fields).into_iter(),
            value: None,
            ctx: self.ctx,
        })
    }
}

fn unknown_field_message(key: &str, fields: &[&str]) -> String {
    if key == "<<" {
        return "YAML merge keys (`<<`) are not supported; write the fields out".to_string();
    }
    match closest(key, fields) {
        Some(c) => format!("unknown field `{key}`; did you mean `{c}`?"),
        None => format!(
            "unknown field `{key}`; expected one of: {}",
            fields.join(", ")
        ),
    }
}

macro_rules! de_int {
    ($($method:ident $visit:ident $ty:ty;)*) => {$(
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
            let v = self.int(i128::from(<$ty>::MIN), i128::from(<$ty>::MAX));
            visitor.$visit(v as $ty)
        }
    )*};
}

impl<'a> de::Deserializer<'a> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Seq(_) => self.deserialize_seq(visitor),
            NodeKind::Map(_) => self.visit_map_of(visitor, None),
            NodeKind::Scalar { value, .. } => match self.node.core() {
                Some(CoreScalar::Null) => visitor.visit_unit(),
                Some(CoreScalar::Bool(b)) => visitor.visit_bool(b),
                Some(CoreScalar::Int(i)) => {
                    if let Ok(i) = i64::try_from(i) {
                        visitor.visit_i64(i)
                    } else if let Ok(u) = u64::try_from(i) {
                        visitor.visit_u64(u)
                    } else {
                        visitor.visit_f64(i as f64)
                    }
                }
                Some(CoreScalar::Float(f)) => visitor.visit_f64(f),
                _ => visitor.visit_borrowed_str(value),
            },
        }
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_bool(self.boolean())
    }

    de_int! {
        deserialize_i8 visit_i8 i8;
        deserialize_i16 visit_i16 i16;
        deserialize_i32 visit_i32 i32;
        deserialize_i64 visit_i64 i64;
        deserialize_u8 visit_u8 u8;
        deserialize_u16 visit_u16 u16;
        deserialize_u32 visit_u32 u32;
        deserialize_u64 visit_u64 u64;
    }

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_f32(self.float() as f32)
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_f64(self.float())
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_borrowed_str(self.string())
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_borrowed_bytes(self.string().as_bytes())
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_seq(SeqAcc {
            items: self.seq_items().iter(),
            index: 0,
            path: self.path.clone(),
            ctx: self.ctx,
        })
    }

    fn deserialize_tuple<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_map_of(visitor, None)
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.visit_map_of(visitor, Some(fields))
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let first = variants.first().copied().unwrap_or("");
        let chosen = match self.node.core() {
            Some(CoreScalar::Null) => first,
            Some(_) => {
                let value = self.string();
                if let Some(v) = variants.iter().find(|v| **v == value) {
                    *v
                } else {
                    let hint = did_you_mean(value, variants);
                    let hint = if hint.is_empty() {
                        format!("; expected one of: {}", variants.join(", "))
                    } else {
                        hint
                    };
                    self.ctx.error(
                        self.node,
                        &self.path,
                        format!("unknown value `{value}`{hint}"),
                    );
                    first
                }
            }
            None => {
                self.mismatch(&format!("one of: {}", variants.join(", ")));
                first
            }
        };
        visitor.visit_enum(UnitVariant(chosen))
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

impl<'a> de::SeqAccess<'a> for SeqAcc<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        self.ctx.span(&path, node);
        let de = NodeDe {
            node,
            path,
            ctx: self.ctx,
        };
        give_up_on_error(seed.deserialize(de.clone_ref()), &de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

impl<'a> de::MapAccess<'a> for MapAcc<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value, path)) = self.entries.next() else {
            return Ok(None);
        };
        let de = NodeDe {
            node: key,
            path: path.clone(),
            ctx: self.ctx,
        };
        self.value = Some((value, path));
        give_up_on_error(seed.deserialize(de.clone_ref()), &de).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'a>>(&mut self, seed: T) -> Result<T::Value, DeError> {
        let Some((node, path)) = self.value.take() else {
            return Err(DeError("value requested before key".to_string()));
        };
        let de = NodeDe {
            node,
            path,
            ctx: self.ctx,
        };
        give_up_on_error(seed.deserialize(de.clone_ref()), &de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

impl NodeDe<'_> {
    fn clone_ref(&self) -> Self {
        self.child(self.node, self.path.clone())
    }
}

/// A visitor refused a value: record why (once) and let the error unwind.
fn give_up_on_error<T>(r: Result<T, DeError>, at: &NodeDe<'_>) -> Result<T, DeError> {
    r.map_err(|e| {
        if !e.0.is_empty() {
            at.ctx.substituted(at.node, &at.path, e.0);
        }
        DeError(String::new())
    })
}

impl<'a> de::EnumAccess<'a> for UnitVariant {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'a>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let name: StrDeserializer<'_, DeError> = self.0.into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'a> de::VariantAccess<'a> for UnitVariant {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(self, _seed: T) -> Result<T::Value, DeError> {
        Err(DeError(format!("`{}` needs a value", self.0)))
    }

    fn tuple_variant<V: Visitor<'a>>(self, _len: usize, _visitor: V) -> Result<V::Value, DeError> {
        Err(DeError(format!("`{}` needs a value", self.0)))
    }

    fn struct_variant<V: Visitor<'a>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, DeError> {
        Err(DeError(format!("`{}` needs a value", self.0)))
    }
}
