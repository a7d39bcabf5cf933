//! A serde `Deserializer` over the positioned YAML tree.
//!
//! The typed model derives `Deserialize`; this deserializer feeds it from [`Node`]s and
//! turns every serde error into one that knows its field path and span. It follows the
//! protobuf JSON mapping Istio's API uses: a `null` field is the same as an absent one,
//! enum values are their names, and a field the API does not have is an error.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::diag::Code;
use crate::path::FieldPath;
use crate::source::Span;
use crate::yaml::{Entry, Node, Value};

/// A typed error raised while deserializing a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// The kind of problem.
    pub code: Code,
    /// What is wrong.
    pub message: String,
    /// The field and where it was written, once known.
    pub located: Option<(FieldPath, Span)>,
    /// For a missing field, its name (appended to the path of the mapping).
    missing: Option<&'static str>,
}

impl DeError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        DeError {
            code,
            message: message.into(),
            located: None,
            missing: None,
        }
    }

    fn locate(mut self, path: &FieldPath, span: Span) -> Self {
        if self.located.is_none() {
            let path = match self.missing {
                Some(field) => path.key(field),
                None => path.clone(),
            };
            self.located = Some((path, span));
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

/// Builds a serde error that carries one of our [`Code`]s through serde's `custom`.
///
/// Custom `Deserialize` impls (durations, say) can only hand serde a message; the code
/// travels as a `[CODE] ` prefix that [`DeError::custom`] takes off again.
pub fn coded<E: de::Error>(code: Code, message: impl fmt::Display) -> E {
    E::custom(format_args!("[{}] {}", code.as_str(), message))
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        let msg = msg.to_string();
        if let Some(rest) = msg.strip_prefix('[')
            && let Some((code, text)) = rest.split_once("] ")
            && let Some(code) = Code::from_code(code)
        {
            return DeError::new(code, text);
        }
        DeError::new(Code::TypeMismatch, msg)
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(
            Code::TypeMismatch,
            format!("expected {exp}, found {}", Unexp(unexp)),
        )
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(
            Code::TypeMismatch,
            format!("invalid value {}: expected {exp}", Unexp(unexp)),
        )
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let mut msg = format!(
            "unknown value `{variant}`: expected one of {}",
            one_of(expected)
        );
        if let Some(s) = suggest(variant, expected) {
            msg.push_str(&format!(" (did you mean `{s}`?)"));
        }
        DeError::new(Code::InvalidEnum, msg)
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let mut msg = format!("unknown field `{field}`");
        if let Some(s) = suggest(field, expected) {
            msg.push_str(&format!(" (did you mean `{s}`?)"));
        }
        if expected.is_empty() {
            msg.push_str(": no fields are expected here");
        } else {
            msg.push_str(&format!(": expected one of {}", one_of(expected)));
        }
        DeError::new(Code::UnknownField, msg)
    }

    fn missing_field(field: &'static str) -> Self {
        let mut e = DeError::new(
            Code::MissingField,
            format!("missing required field `{field}`"),
        );
        e.missing = Some(field);
        e
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::new(Code::DuplicateKey, format!("duplicate field `{field}`"))
    }
}

struct Unexp<'a>(de::Unexpected<'a>);

impl fmt::Display for Unexp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            de::Unexpected::Unit => f.write_str("null"),
            de::Unexpected::Map => f.write_str("a mapping"),
            de::Unexpected::Seq => f.write_str("a sequence"),
            ref other => write!(f, "{other}"),
        }
    }
}

fn one_of(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closest of `candidates` to `word`, if one is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| {
            let d = strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase());
            (d, *c)
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Deserializes a `T` from `node`, which sits at `path` in its resource.
pub fn from_node<'de, T: de::Deserialize<'de>>(
    node: &'de Node,
    path: FieldPath,
) -> Result<T, DeError> {
    T::deserialize(NodeDe {
        node,
        path,
        span: node.span,
    })
}

struct NodeDe<'de> {
    node: &'de Node,
    path: FieldPath,
    /// Where errors about this node point: the node itself, or for a mapping value that
    /// is a collection (or null), its key, which is where the user wrote the field.
    span: Span,
}

impl<'de> NodeDe<'de> {
    fn fail(&self, e: DeError) -> DeError {
        e.locate(&self.path, self.span)
    }
}

macro_rules! forward_any {
    ($($name:ident)*) => {
        $(fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            self.deserialize_any(visitor)
        })*
    };
}

impl<'de> Deserializer<'de> for NodeDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => {
                if *i >= 0 {
                    visitor.visit_u64(*i as u64)
                } else {
                    visitor.visit_i64(*i)
                }
            }
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => visitor.visit_seq(Seq {
                items: items.iter().enumerate(),
                path: &self.path,
            }),
            Value::Map(entries) => visitor.visit_map(Map {
                entries: entries.iter(),
                path: &self.path,
                skip_null: false,
                value: None,
            }),
        };
        r.map_err(|e| self.fail(e))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Null => visitor
                .visit_seq(Seq {
                    items: [].iter().enumerate(),
                    path: &self.path,
                })
                .map_err(|e| self.fail(e)),
            Value::Seq(_) => self.deserialize_any(visitor),
            other => Err(self.fail(DeError::new(
                Code::TypeMismatch,
                format!("expected a sequence, found {}", other.type_name()),
            ))),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Null => visitor
                .visit_map(Map {
                    entries: [].iter(),
                    path: &self.path,
                    skip_null: false,
                    value: None,
                })
                .map_err(|e| self.fail(e)),
            Value::Map(_) => self.deserialize_any(visitor),
            other => Err(self.fail(DeError::new(
                Code::TypeMismatch,
                format!("expected a mapping, found {}", other.type_name()),
            ))),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let entries: &'de [Entry] = match &self.node.value {
            Value::Null => &[],
            Value::Map(entries) => entries,
            other => {
                return Err(self.fail(DeError::new(
                    Code::TypeMismatch,
                    format!("expected a mapping, found {}", other.type_name()),
                )));
            }
        };
        visitor
            .visit_map(Map {
                entries: entries.iter(),
                path: &self.path,
                skip_null: true,
                value: None,
            })
            .map_err(|e| self.fail(e))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Str(s) => {
                let d = de::value::BorrowedStrDeserializer::<DeError>::new(s);
                visitor.visit_enum(d).map_err(|e| self.fail(e))
            }
            other => Err(self.fail(DeError::new(
                Code::TypeMismatch,
                format!(
                    "expected one of {}, found {}",
                    one_of(variants),
                    other.type_name()
                ),
            ))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    /// Booleans: YAML 1.2's `true`/`false`, and YAML 1.1's `yes`/`no`/`on`/`off`/`y`/`n`,
    /// which `kubectl` (go-yaml v2) reads as booleans too.
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if let Value::Str(s) = &self.node.value {
            let b = match s.as_str() {
                "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
                "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
                _ => None,
            };
            if let Some(b) = b {
                return visitor.visit_bool(b).map_err(|e| self.fail(e));
            }
        }
        self.deserialize_any(visitor)
    }

    forward_any! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_identifier
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }
}

struct Seq<'de, 'p, I: Iterator<Item = (usize, &'de Node)>> {
    items: I,
    path: &'p FieldPath,
}

impl<'de, I: Iterator<Item = (usize, &'de Node)>> SeqAccess<'de> for Seq<'de, '_, I> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, node)) => {
                let path = self.path.index(i);
                let span = node.span;
                seed.deserialize(NodeDe {
                    node,
                    path: path.clone(),
                    span,
                })
                .map(Some)
                .map_err(|e| e.locate(&path, span))
            }
        }
    }
}

struct Map<'de, 'p, I: Iterator<Item = &'de Entry>> {
    entries: I,
    path: &'p FieldPath,
    skip_null: bool,
    value: Option<&'de Entry>,
}

impl<'de, I: Iterator<Item = &'de Entry>> MapAccess<'de> for Map<'de, '_, I> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        loop {
            let Some(entry) = self.entries.next() else {
                return Ok(None);
            };
            if self.skip_null && entry.value.is_null() {
                continue;
            }
            self.value = Some(entry);
            return seed
                .deserialize(KeyDe { key: &entry.key })
                .map(Some)
                .map_err(|e| e.locate(&self.path.key(entry.key.as_str()), entry.key_span));
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(entry) = self.value.take() else {
            return Err(DeError::new(Code::TypeMismatch, "value without a key"));
        };
        let path = self.path.key(entry.key.as_str());
        let span = match entry.value.value {
            Value::Map(_) | Value::Seq(_) | Value::Null => entry.key_span,
            _ => entry.value.span,
        };
        seed.deserialize(NodeDe {
            node: &entry.value,
            path: path.clone(),
            span,
        })
        .map_err(|e| e.locate(&path, span))
    }
}

/// Deserializes a mapping key: always text, parsed when the target is a number or bool
/// (`portLevelMtls: {8080: ...}`).
struct KeyDe<'de> {
    key: &'de str,
}

macro_rules! key_parse {
    ($($name:ident => $visit:ident : $ty:ty),*) => {
        $(fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.key.parse::<$ty>() {
                Ok(v) => visitor.$visit(v),
                Err(_) => Err(DeError::new(
                    Code::TypeMismatch,
                    format!("expected {} as a key, found `{}`", stringify!($ty), self.key),
                )),
            }
        })*
    };
}

impl<'de> Deserializer<'de> for KeyDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_borrowed_str(self.key)
    }

    key_parse! {
        deserialize_u8 => visit_u8: u8, deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32, deserialize_u64 => visit_u64: u64,
        deserialize_i8 => visit_i8: i8, deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32, deserialize_i64 => visit_i64: i64,
        deserialize_bool => visit_bool: bool
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_enum(de::value::BorrowedStrDeserializer::<DeError>::new(self.key))
    }

    serde::forward_to_deserialize_any! {
        f32 f64 char str string bytes byte_buf option unit unit_struct newtype_struct seq
        tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::source::SourceFile;
    use crate::yaml::parse_stream;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Inner {
        host: String,
        #[serde(default)]
        weight: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Outer {
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        ports: BTreeMap<u32, String>,
    }

    fn parse(text: &str) -> Result<Outer, DeError> {
        let f = SourceFile::new("t.yaml", text);
        let s = parse_stream(&f);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        from_node(&s.documents[0].1, FieldPath::root().key("spec"))
    }

    #[test]
    fn reads_values_and_nulls() {
        let o = parse("items:\n- host: a\n  weight: 3\n- host: b\n  weight:\nlabels: {x: y}\nports: {80: http}\n")
            .unwrap();
        assert_eq!(o.items[0].weight, Some(3));
        assert_eq!(o.items[1].weight, None);
        assert_eq!(o.labels["x"], "y");
        assert_eq!(o.ports[&80], "http");
    }

    #[test]
    fn unknown_field_is_located_at_its_key() {
        let e = parse("items:\n- host: a\n  wieght: 3\n").unwrap_err();
        assert_eq!(e.code, Code::UnknownField);
        assert!(e.message.contains("did you mean `weight`"), "{}", e.message);
        let (path, span) = e.located.unwrap();
        assert_eq!(path.to_string(), "spec.items[0].wieght");
        assert_eq!((span.start.line, span.start.column), (3, 3));
    }

    #[test]
    fn wrong_type_is_located_at_its_value() {
        let e = parse("items:\n- host: a\n  weight: -3\n").unwrap_err();
        assert_eq!(e.code, Code::TypeMismatch);
        let (path, span) = e.located.unwrap();
        assert_eq!(path.to_string(), "spec.items[0].weight");
        assert_eq!((span.start.line, span.start.column), (3, 11));
        let e = parse("labels:\n  version: 1\n").unwrap_err();
        assert_eq!(e.located.unwrap().0.to_string(), "spec.labels.version");
        assert!(e.message.contains("expected a string"), "{}", e.message);
    }

    #[test]
    fn missing_field_names_the_field() {
        let e = parse("items:\n- weight: 3\n").unwrap_err();
        assert_eq!(e.code, Code::MissingField);
        let (path, span) = e.located.unwrap();
        assert_eq!(path.to_string(), "spec.items[0].host");
        assert_eq!(span.start.line, 2);
    }
}
