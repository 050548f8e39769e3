//! Raw serde types of a mapping file (`mappings/<id>.toml`), exactly as written: the
//! top-level [`MappingSpec`], its `[lines]` group ([`LinesSpec`]) and `[[test]]` cases
//! ([`TestSpec`]).
//!
//! Field rules, transforms and test values are kept as [`RawValue`] trees in which every
//! value *and every key* is a [`Spanned`], because the checks that reject them (unknown
//! targets, unknown transforms, bad regexes, CEL compile errors) run later, in the compiler,
//! and must still point at the exact byte range. Untagged enums and `flatten` would drop
//! those spans, so [`RawValue`] is deserialized by hand with `deserialize_any`. Nothing here
//! validates.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// A mapping file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// One of the entity kinds (`customer`, `order`, ...).
    pub entity: Spanned<String>,
    pub description: Option<String>,
    /// Target name → field rule, in file order.
    pub fields: Spanned<RawTable>,
    /// Order lines: the repeating group and its own field rules.
    pub lines: Option<Spanned<LinesSpec>>,
    #[serde(default, rename = "test")]
    pub tests: Vec<Spanned<TestSpec>>,
}

/// `[lines]` of an order mapping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinesSpec {
    /// Path of the repeating group, e.g. `E1EDP01[*]`.
    pub path: Spanned<String>,
    /// Line target name → field rule; paths are relative to one element of the group.
    pub fields: Spanned<RawTable>,
}

/// One `[[test]]` case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub name: Option<String>,
    /// The raw source record.
    pub input: Spanned<RawValue>,
    /// Target name → expected rendered value; only these keys are compared.
    pub expect: Option<Spanned<RawTable>>,
    /// A substring of the expected mapping error.
    pub expect_error: Option<Spanned<String>>,
}

/// A TOML table whose keys and values all keep their spans, in file order.
#[derive(Debug, Clone, Default)]
pub struct RawTable(pub Vec<(Spanned<String>, Spanned<RawValue>)>);

/// Any TOML value, with spans on every nested key and value.
#[derive(Debug, Clone)]
pub enum RawValue {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Array(Vec<Spanned<RawValue>>),
    Table(RawTable),
}

impl RawValue {
    /// What kind of value this is, for error messages ("expected a string, found an array").
    pub fn kind(&self) -> &'static str {
        match self {
            RawValue::String(_) => "a string",
            RawValue::Integer(_) => "an integer",
            RawValue::Float(_) => "a float",
            RawValue::Boolean(_) => "a boolean",
            RawValue::Array(_) => "an array",
            RawValue::Table(_) => "a table",
        }
    }

    /// The value as JSON (what source records and expected values are made of).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            RawValue::String(s) => serde_json::Value::String(s.clone()),
            RawValue::Integer(i) => serde_json::Value::from(*i),
            // A non-finite float has no JSON form; null is what serde_json gives it too.
            RawValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            RawValue::Boolean(b) => serde_json::Value::Bool(*b),
            RawValue::Array(items) => {
                serde_json::Value::Array(items.iter().map(|v| v.get_ref().to_json()).collect())
            }
            RawValue::Table(table) => serde_json::Value::Object(table.to_json()),
        }
    }
}

impl RawTable {
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.0
            .iter()
            .map(|(k, v)| (k.get_ref().clone(), v.get_ref().to_json()))
            .collect()
    }
}

struct RawValueVisitor;

impl<'de> Visitor<'de> for RawValueVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue::Boolean(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Integer(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawValue, E> {
        i64::try_from(v)
            .map(RawValue::Integer)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue::Float(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawValue, A::Error> {
        RawTableVisitor.visit_map(map).map(RawValue::Table)
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawValue, D::Error> {
        deserializer.deserialize_any(RawValueVisitor)
    }
}

struct RawTableVisitor;

impl<'de> Visitor<'de> for RawTableVisitor {
    type Value = RawTable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawTable, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(RawTable(entries))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawTable, E> {
        Err(E::custom(format!(
            "expected a table, found the string {v:?}"
        )))
    }
}

impl<'de> Deserialize<'de> for RawTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawTable, D::Error> {
        deserializer.deserialize_map(RawTableVisitor)
    }
}

/// Parses a mapping file into its raw types.
pub fn parse(text: &str) -> Result<MappingSpec, toml::de::Error> {
    toml::from_str(text)
}

/// The message of a TOML parse error. A TOML datetime reaches [`RawValue`] as the `toml`
/// crate's internal marker table, which no spanned key can hold; that message is rewritten
/// to say what to write instead.
pub fn describe_toml_error(error: &toml::de::Error) -> String {
    let message = error.message();
    if message.contains("$__toml_private_datetime") {
        "TOML dates and times are not supported in mapping files; write them as strings \
         (\"2024-05-01\", \"2024-05-01T10:20:30Z\")"
            .to_owned()
    } else {
        message.to_owned()
    }
}
