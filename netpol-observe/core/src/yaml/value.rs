//! [`Value`]: a YAML document read without its type, for the readers that look into a document
//! before choosing the type to decode it into (the inventory reads `apiVersion` and `kind`).
//!
//! `serde_json::Value` would do, but its mappings are sorted: the fields a type does not know
//! (collected while decoding, `--validate`) must be named in the order the file has them.

use std::marker::PhantomData;

use serde::de::{
    self, IntoDeserializer, Unexpected,
    value::{MapAccessDeserializer, MapDeserializer, SeqDeserializer},
};

/// A YAML node without a type: each scalar as serde-saphyr infers it (null, boolean, integer,
/// float, string), sequences, and mappings in document order with their keys read as strings.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// `~`, `null` or nothing.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A negative integer (non-negative ones are [`Value::U64`]).
    I64(i64),
    /// A non-negative integer.
    U64(u64),
    /// A float.
    F64(f64),
    /// A string.
    String(String),
    /// A sequence.
    Sequence(Vec<Value>),
    /// A mapping, in document order (a key appears once: the parser refuses duplicates).
    Mapping(Vec<(String, Value)>),
}

impl Value {
    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Mapping(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::I64(n) => Unexpected::Signed(*n),
            Value::U64(n) => Unexpected::Unsigned(*n),
            Value::F64(n) => Unexpected::Float(*n),
            Value::String(s) => Unexpected::Str(s),
            Value::Sequence(_) => Unexpected::Seq,
            Value::Mapping(_) => Unexpected::Map,
        }
    }
}

impl<'de> de::Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(match u64::try_from(v) {
            Ok(u) => Value::U64(u),
            Err(_) => Value::I64(v),
        })
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::U64(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        match (u64::try_from(v), i64::try_from(v)) {
            (Ok(u), _) => Ok(Value::U64(u)),
            (_, Ok(i)) => Ok(Value::I64(i)),
            _ => Err(E::custom(format_args!(
                "integer {v} is out of the 64-bit range"
            ))),
        }
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(Value::U64)
            .map_err(|_| E::custom(format_args!("integer {v} is out of the 64-bit range")))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::F64(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    /// `!!binary`: the bytes, as numbers (as `serde_json::Value` has them).
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Sequence(
            v.iter().map(|b| Value::U64(u64::from(*b))).collect(),
        ))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        de::Deserialize::deserialize(d)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        de::Deserialize::deserialize(d)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Value>()? {
            entries.push(entry);
        }
        Ok(Value::Mapping(entries))
    }
}

/// A [`Value`] as a serde deserializer: decodes it into a type, with errors of type `E`.
#[derive(Debug)]
pub struct ValueDeserializer<E> {
    value: Value,
    error: PhantomData<E>,
}

impl<'de, E: de::Error> IntoDeserializer<'de, E> for Value {
    type Deserializer = ValueDeserializer<E>;

    fn into_deserializer(self) -> ValueDeserializer<E> {
        ValueDeserializer {
            value: self,
            error: PhantomData,
        }
    }
}

impl<'de, E: de::Error> de::Deserializer<'de> for ValueDeserializer<E> {
    type Error = E;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::I64(n) => visitor.visit_i64(n),
            Value::U64(n) => visitor.visit_u64(n),
            Value::F64(n) => visitor.visit_f64(n),
            Value::String(s) => visitor.visit_string(s),
            Value::Sequence(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter());
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Mapping(entries) => {
                let mut map = MapDeserializer::new(entries.into_iter());
                let out = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
        }
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, E> {
        visitor.visit_newtype_struct(self)
    }

    /// A unit variant is a string, any other variant a mapping of one entry (`Variant: data`).
    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, E> {
        match self.value {
            Value::String(s) => visitor.visit_enum(s.into_deserializer()),
            Value::Mapping(entries) if entries.len() == 1 => visitor.visit_enum(
                MapAccessDeserializer::new(MapDeserializer::new(entries.into_iter())),
            ),
            other => Err(E::invalid_type(
                other.unexpected(),
                &"a variant name or a mapping of one entry",
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, de::IntoDeserializer};

    use super::*;

    fn decode<T: de::DeserializeOwned>(v: Value) -> Result<T, de::value::Error> {
        T::deserialize(v.into_deserializer())
    }

    #[test]
    fn mappings_keep_document_order() {
        let v: Value = crate::yaml::from_str("z: 1\na: [x, -2, 2.5, true, ~]\nm: {}\n").unwrap();
        assert_eq!(
            v,
            Value::Mapping(vec![
                ("z".into(), Value::U64(1)),
                (
                    "a".into(),
                    Value::Sequence(vec![
                        Value::String("x".into()),
                        Value::I64(-2),
                        Value::F64(2.5),
                        Value::Bool(true),
                        Value::Null,
                    ])
                ),
                ("m".into(), Value::Mapping(vec![])),
            ])
        );
        assert_eq!(v.get("z"), Some(&Value::U64(1)));
        assert_eq!(v.get("a").and_then(|a| a.as_str()), None);
        assert!(v.get("nothing").is_none());
    }

    #[test]
    fn decodes_into_types_with_serdes_messages() {
        #[derive(Debug, PartialEq, Deserialize)]
        enum Kind {
            Plain,
            With { n: u8 },
        }
        #[derive(Debug, PartialEq, Deserialize)]
        struct S {
            name: String,
            port: Option<u16>,
            kinds: Vec<Kind>,
        }
        let v: Value =
            crate::yaml::from_str("name: web\nport: ~\nkinds: [Plain, {With: {n: 3}}]\n").unwrap();
        assert_eq!(
            decode::<S>(v).unwrap(),
            S {
                name: "web".into(),
                port: None,
                kinds: vec![Kind::Plain, Kind::With { n: 3 }],
            }
        );
        let v: Value = crate::yaml::from_str("name: web\nport: 70000\nkinds: []\n").unwrap();
        assert_eq!(
            decode::<S>(v).unwrap_err().to_string(),
            "invalid value: integer `70000`, expected u16"
        );
        let v: Value = crate::yaml::from_str("name: [web]\nkinds: []\n").unwrap();
        assert_eq!(
            decode::<S>(v).unwrap_err().to_string(),
            "invalid type: sequence, expected a string"
        );
    }
}
