//! Value transforms, applied left to right to a source value before coercion: [`Transform`]
//! is one compiled step (`trim`, `upper`, `lower`, `email`, `phone`, `map`, `split`,
//! `replace`, `date`, `datetime`), built by [`Transform::compile`] from its spanned TOML form.
//!
//! Everything that can be checked without a record is checked at compile time (names,
//! argument types, regexes, phone regions, date formats), so applying a transform fails only
//! on the value itself. A transform yields `Null` for "absent" and an array only from `split`
//! without `index`, which the compiler allows on list targets alone.

use std::collections::HashMap;
use std::ops::Range;

use regex::Regex;
use serde_json::Value;
use toml::Spanned;

use super::SpecError;
use super::coerce::{self, DateFormat, show};
use super::spec::{RawTable, RawValue};
use super::target::did_you_mean;

const NAMES: [&str; 10] = [
    "trim", "upper", "lower", "email", "phone", "map", "split", "replace", "date", "datetime",
];

/// One compiled transform.
#[derive(Debug, Clone)]
pub enum Transform {
    Trim,
    Upper,
    Lower,
    /// Trim, lower-case, and check the shape `local@domain.tld`.
    Email,
    /// To E.164, reading national numbers in `region`.
    Phone {
        region: phonenumber::country::Id,
        region_name: String,
    },
    /// A value map; `known` lists the keys for the "no mapping" message.
    Map {
        values: HashMap<String, Value>,
        default: Option<Value>,
        known: String,
    },
    /// One part (`index`) or, for list targets, every trimmed non-empty part.
    Split {
        separator: String,
        index: Option<usize>,
    },
    Replace {
        regex: Regex,
        with: String,
    },
    /// Parse a date and render it `YYYY-MM-DD`.
    Date(DateFormat),
    /// Parse an instant and render it RFC 3339 UTC.
    Datetime(DateFormat),
}

fn span_of<T>(spanned: &Spanned<T>) -> Range<usize> {
    spanned.span()
}

fn err(span: Range<usize>, message: impl Into<String>) -> SpecError {
    SpecError {
        span: Some(span),
        message: message.into(),
    }
}

/// The entries of an argument table, checked against the allowed keys.
fn args<'a>(
    transform: &str,
    value: &'a Spanned<RawValue>,
    allowed: &[&str],
) -> Result<&'a RawTable, SpecError> {
    let RawValue::Table(table) = value.get_ref() else {
        return Err(err(
            span_of(value),
            format!(
                "transform `{transform}` takes a table of arguments ({}), found {}",
                allowed.join(", "),
                value.get_ref().kind()
            ),
        ));
    };
    for (key, _) in &table.0 {
        if !allowed.contains(&key.get_ref().as_str()) {
            return Err(err(
                span_of(key),
                format!(
                    "unknown argument `{}` of transform `{transform}` (expected {}){}",
                    key.get_ref(),
                    allowed.join(", "),
                    did_you_mean(key.get_ref(), allowed.iter().copied())
                ),
            ));
        }
    }
    Ok(table)
}

fn arg<'a>(table: &'a RawTable, name: &str) -> Option<&'a Spanned<RawValue>> {
    table
        .0
        .iter()
        .find(|(k, _)| k.get_ref() == name)
        .map(|(_, v)| v)
}

fn string_arg(
    transform: &str,
    table: &RawTable,
    name: &str,
) -> Result<Option<(String, Range<usize>)>, SpecError> {
    match arg(table, name) {
        None => Ok(None),
        Some(v) => match v.get_ref() {
            RawValue::String(s) => Ok(Some((s.clone(), span_of(v)))),
            other => Err(err(
                span_of(v),
                format!(
                    "argument `{name}` of transform `{transform}` must be a string, found {}",
                    other.kind()
                ),
            )),
        },
    }
}

fn required_string(
    transform: &str,
    table: &RawTable,
    whole: Range<usize>,
    name: &str,
) -> Result<(String, Range<usize>), SpecError> {
    string_arg(transform, table, name)?.ok_or_else(|| {
        err(
            whole,
            format!("transform `{transform}` needs the argument `{name}`"),
        )
    })
}

fn scalar_json(transform: &str, what: &str, value: &Spanned<RawValue>) -> Result<Value, SpecError> {
    match value.get_ref() {
        RawValue::Array(_) | RawValue::Table(_) => Err(err(
            span_of(value),
            format!(
                "{what} of transform `{transform}` must be a string, number or boolean, found {}",
                value.get_ref().kind()
            ),
        )),
        scalar => Ok(scalar.to_json()),
    }
}

impl Transform {
    /// Compiles `"trim"` or `{ name = args }`.
    pub fn compile(raw: &Spanned<RawValue>) -> Result<Transform, SpecError> {
        match raw.get_ref() {
            RawValue::String(name) => Transform::compile_bare(name, span_of(raw)),
            RawValue::Table(table) => {
                let [(name, value)] = table.0.as_slice() else {
                    return Err(err(
                        span_of(raw),
                        "a transform table has exactly one key, the transform's name, e.g. \
                         { phone = { region = \"DE\" } }",
                    ));
                };
                Transform::compile_with_args(name, value)
            }
            other => Err(err(
                span_of(raw),
                format!(
                    "a transform is a name (\"trim\") or a table ({{ split = {{ separator = \",\", \
                     index = 0 }} }}), found {}",
                    other.kind()
                ),
            )),
        }
    }

    fn unknown(name: &str, span: Range<usize>) -> SpecError {
        err(
            span,
            format!(
                "unknown transform `{name}`{}",
                did_you_mean(name, NAMES.iter().copied())
            ),
        )
    }

    fn compile_bare(name: &str, span: Range<usize>) -> Result<Transform, SpecError> {
        Ok(match name {
            "trim" => Transform::Trim,
            "upper" => Transform::Upper,
            "lower" => Transform::Lower,
            "email" => Transform::Email,
            "phone" => {
                return Err(err(
                    span,
                    "transform `phone` needs a region: { phone = { region = \"DE\" } }",
                ));
            }
            "map" => {
                return Err(err(
                    span,
                    "transform `map` needs values: { map = { values = { A = \"x\" } } }",
                ));
            }
            "split" => {
                return Err(err(
                    span,
                    "transform `split` needs a separator: { split = { separator = \",\" } }",
                ));
            }
            "replace" => {
                return Err(err(
                    span,
                    "transform `replace` needs a pattern: { replace = { pattern = \"...\", with = \"...\" } }",
                ));
            }
            "date" | "datetime" => {
                return Err(err(
                    span,
                    format!("transform `{name}` needs a format: {{ {name} = \"%Y%m%d\" }}"),
                ));
            }
            other => return Err(Transform::unknown(other, span)),
        })
    }

    fn compile_with_args(
        name: &Spanned<String>,
        value: &Spanned<RawValue>,
    ) -> Result<Transform, SpecError> {
        let whole = span_of(value);
        Ok(match name.get_ref().as_str() {
            bare @ ("trim" | "upper" | "lower" | "email") => {
                return Err(err(
                    span_of(name),
                    format!("transform `{bare}` takes no arguments; write it as \"{bare}\""),
                ));
            }
            "phone" => {
                let table = args("phone", value, &["region"])?;
                let (region_name, span) = required_string("phone", table, whole, "region")?;
                let region = region_name.parse().map_err(|_| {
                    err(
                        span,
                        format!("unknown phone region {region_name:?} (expected a country code such as \"DE\")"),
                    )
                })?;
                Transform::Phone {
                    region,
                    region_name,
                }
            }
            "map" => {
                let table = args("map", value, &["values", "default"])?;
                let values_raw = arg(table, "values").ok_or_else(|| {
                    err(whole.clone(), "transform `map` needs the argument `values`")
                })?;
                let RawValue::Table(entries) = values_raw.get_ref() else {
                    return Err(err(
                        span_of(values_raw),
                        format!(
                            "argument `values` of transform `map` must be a table, found {}",
                            values_raw.get_ref().kind()
                        ),
                    ));
                };
                let mut values = HashMap::with_capacity(entries.0.len());
                for (key, mapped) in &entries.0 {
                    values.insert(
                        key.get_ref().clone(),
                        scalar_json("map", "a value", mapped)?,
                    );
                }
                let known = entries
                    .0
                    .iter()
                    .map(|(k, _)| k.get_ref().as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let default = arg(table, "default")
                    .map(|d| scalar_json("map", "the default", d))
                    .transpose()?;
                Transform::Map {
                    values,
                    default,
                    known,
                }
            }
            "split" => {
                let table = args("split", value, &["separator", "index"])?;
                let (separator, span) =
                    required_string("split", table, whole.clone(), "separator")?;
                if separator.is_empty() {
                    return Err(err(span, "the separator of transform `split` is empty"));
                }
                let index = match arg(table, "index") {
                    None => None,
                    Some(v) => match v.get_ref() {
                        RawValue::Integer(i) if *i >= 0 => usize::try_from(*i).ok(),
                        other => {
                            return Err(err(
                                span_of(v),
                                format!(
                                    "argument `index` of transform `split` must be an integer \
                                     from 0, found {}",
                                    if matches!(other, RawValue::Integer(_)) {
                                        "a negative integer"
                                    } else {
                                        other.kind()
                                    }
                                ),
                            ));
                        }
                    },
                };
                Transform::Split { separator, index }
            }
            "replace" => {
                let table = args("replace", value, &["pattern", "with"])?;
                let (pattern, span) = required_string("replace", table, whole.clone(), "pattern")?;
                let (with, _) = required_string("replace", table, whole, "with")?;
                let regex = Regex::new(&pattern)
                    .map_err(|e| err(span, format!("invalid regex {pattern:?}: {e}")))?;
                Transform::Replace { regex, with }
            }
            kind @ ("date" | "datetime") => {
                let RawValue::String(format) = value.get_ref() else {
                    return Err(err(
                        whole,
                        format!(
                            "transform `{kind}` takes a format string, found {}",
                            value.get_ref().kind()
                        ),
                    ));
                };
                let format = DateFormat::parse(format).map_err(|e| err(whole, e))?;
                if kind == "date" {
                    Transform::Date(format)
                } else {
                    Transform::Datetime(format)
                }
            }
            "concat" => {
                return Err(err(
                    span_of(name),
                    "`concat` is a field source, not a transform: write \
                     { concat = [\"A\", \"B\"], separator = \" \" } as the field's rule",
                ));
            }
            other => return Err(Transform::unknown(other, span_of(name))),
        })
    }

    /// Whether the transform may turn one value into several (list targets only).
    pub fn yields_many(&self) -> bool {
        matches!(self, Transform::Split { index: None, .. })
    }

    /// Applies the transform to one present value.
    pub fn apply(&self, value: Value) -> Result<Value, String> {
        let text = match value {
            Value::String(s) => s,
            other => coerce::text(&other)?,
        };
        Ok(match self {
            Transform::Trim => Value::String(trim_owned(text)),
            Transform::Upper => Value::String(text.to_uppercase()),
            Transform::Lower => Value::String(text.to_lowercase()),
            Transform::Email => {
                let email = text.trim().to_lowercase();
                if !is_plausible_email(&email) {
                    return Err(format!(
                        "not an e-mail address: {}",
                        show(&Value::String(text))
                    ));
                }
                Value::String(email)
            }
            Transform::Phone {
                region,
                region_name,
            } => match phonenumber::parse(Some(*region), text.trim()) {
                Ok(number) if number.is_valid() => {
                    Value::String(number.format().mode(phonenumber::Mode::E164).to_string())
                }
                _ => {
                    return Err(format!(
                        "not a phone number for region {region_name}: {}",
                        show(&Value::String(text))
                    ));
                }
            },
            Transform::Map {
                values,
                default,
                known,
            } => match values.get(&text).or(default.as_ref()) {
                Some(mapped) => mapped.clone(),
                None => {
                    return Err(format!(
                        "no mapping for value {} (known: {known})",
                        show(&Value::String(text))
                    ));
                }
            },
            Transform::Split {
                separator,
                index: Some(index),
            } => match text.split(separator.as_str()).nth(*index).map(str::trim) {
                Some(part) if !part.is_empty() => Value::String(part.to_owned()),
                _ => Value::Null,
            },
            Transform::Split {
                separator,
                index: None,
            } => Value::Array(
                text.split(separator.as_str())
                    .map(str::trim)
                    .filter(|part| !part.is_empty())
                    .map(|part| Value::String(part.to_owned()))
                    .collect(),
            ),
            Transform::Replace { regex, with } => {
                Value::String(regex.replace_all(&text, with.as_str()).into_owned())
            }
            Transform::Date(format) => match coerce::date(&Value::String(text), format)? {
                Some(date) => Value::String(date.to_string()),
                None => Value::Null,
            },
            Transform::Datetime(format) => match coerce::datetime(&Value::String(text), format)? {
                Some(instant) => Value::String(instant.to_string()),
                None => Value::Null,
            },
        })
    }
}

fn trim_owned(text: String) -> String {
    let trimmed = text.trim();
    if trimmed.len() == text.len() {
        text
    } else {
        trimmed.to_owned()
    }
}

/// `local@domain.tld`: one `@`, no whitespace, a dotted domain with non-empty labels.
fn is_plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !email.chars().any(char::is_whitespace)
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Compiles a transform written as a TOML value, e.g. `"trim"` or `{ split = {...} }`.
    fn compile(toml_value: &str) -> Result<Transform, SpecError> {
        #[derive(serde::Deserialize)]
        struct Holder {
            t: Spanned<RawValue>,
        }
        let holder: Holder = toml::from_str(&format!("t = {toml_value}")).unwrap();
        Transform::compile(&holder.t)
    }

    fn run(toml_value: &str, input: Value) -> Result<Value, String> {
        compile(toml_value).unwrap().apply(input)
    }

    fn message(toml_value: &str) -> (String, Option<Range<usize>>) {
        let e = compile(toml_value).unwrap_err();
        (e.message, e.span)
    }

    #[test]
    fn trim_upper_lower() {
        assert_eq!(
            run("\"trim\"", json!("  Müller GmbH ")).unwrap(),
            json!("Müller GmbH")
        );
        assert_eq!(run("\"upper\"", json!("de")).unwrap(), json!("DE"));
        assert_eq!(run("\"lower\"", json!("ÄB")).unwrap(), json!("äb"));
        assert_eq!(run("\"upper\"", json!(12)).unwrap(), json!("12"));
        assert_eq!(
            run("\"trim\"", json!({"a": 1})).unwrap_err(),
            r#"not a string: an object {"a":1}"#
        );
    }

    #[test]
    fn email() {
        assert_eq!(
            run("\"email\"", json!(" Info@Example.DE ")).unwrap(),
            json!("info@example.de")
        );
        assert_eq!(
            run("\"email\"", json!("info at example.de")).unwrap_err(),
            r#"not an e-mail address: "info at example.de""#
        );
        assert!(run("\"email\"", json!("a@b")).is_err());
        assert!(run("\"email\"", json!("a@b@c.de")).is_err());
        assert!(run("\"email\"", json!("a@.de")).is_err());
    }

    #[test]
    fn phone() {
        let t = "{ phone = { region = \"DE\" } }";
        assert_eq!(run(t, json!("030 1234567")).unwrap(), json!("+49301234567"));
        assert_eq!(
            run(t, json!("+44 20 7946 0958")).unwrap(),
            json!("+442079460958")
        );
        assert_eq!(
            run(t, json!("12")).unwrap_err(),
            r#"not a phone number for region DE: "12""#
        );
        assert_eq!(
            message("{ phone = { region = \"XX\" } }"),
            (
                "unknown phone region \"XX\" (expected a country code such as \"DE\")".into(),
                Some(25..29)
            )
        );
        assert_eq!(
            message("{ phone = { regoin = \"DE\" } }").0,
            "unknown argument `regoin` of transform `phone` (expected region) (did you mean `region`?)"
        );
        assert_eq!(
            message("\"phone\"").0,
            "transform `phone` needs a region: { phone = { region = \"DE\" } }"
        );
    }

    #[test]
    fn map() {
        let t =
            "{ map = { values = { sale = \"open\", done = \"fulfilled\" }, default = \"open\" } }";
        assert_eq!(run(t, json!("done")).unwrap(), json!("fulfilled"));
        assert_eq!(run(t, json!("draft")).unwrap(), json!("open"));
        let strict = "{ map = { values = { A = \"open\", B = \"cancelled\" } } }";
        assert_eq!(
            run(strict, json!("X")).unwrap_err(),
            r#"no mapping for value "X" (known: A, B)"#
        );
        assert_eq!(
            message("{ map = { values = [1] } }").0,
            "argument `values` of transform `map` must be a table, found an array"
        );
        assert_eq!(
            message("{ map = { default = \"x\" } }").0,
            "transform `map` needs the argument `values`"
        );
    }

    #[test]
    fn split() {
        let first = "{ split = { separator = \",\", index = 1 } }";
        assert_eq!(run(first, json!("a, b ,c")).unwrap(), json!("b"));
        assert_eq!(run(first, json!("a")).unwrap(), Value::Null);
        let all = compile("{ split = { separator = \";\" } }").unwrap();
        assert!(all.yields_many());
        assert_eq!(
            all.apply(json!("a@x.de; ;b@y.de")).unwrap(),
            json!(["a@x.de", "b@y.de"])
        );
        assert_eq!(
            message("{ split = { separator = \",\", index = -1 } }").0,
            "argument `index` of transform `split` must be an integer from 0, found a negative integer"
        );
        assert_eq!(
            message("{ split = { separator = 1 } }").0,
            "argument `separator` of transform `split` must be a string, found an integer"
        );
    }

    #[test]
    fn replace() {
        let t = r#"{ replace = { pattern = '^0+(\d+)$', with = "$1" } }"#;
        assert_eq!(run(t, json!("0000100042")).unwrap(), json!("100042"));
        let (msg, span) = message(r#"{ replace = { pattern = "(", with = "" } }"#);
        assert!(msg.starts_with("invalid regex \"(\": "), "{msg}");
        assert_eq!(span, Some(28..31));
    }

    #[test]
    fn date_and_datetime() {
        assert_eq!(
            run("{ date = \"%Y%m%d\" }", json!("20240501")).unwrap(),
            json!("2024-05-01")
        );
        assert_eq!(
            run("{ date = \"%Y%m%d\" }", json!("00000000")).unwrap(),
            Value::Null
        );
        assert_eq!(
            run("{ date = \"sap_json\" }", json!("/Date(1714521600000)/")).unwrap(),
            json!("2024-05-01")
        );
        assert_eq!(
            run("{ datetime = \"odoo\" }", json!("2024-05-01 10:20:30")).unwrap(),
            json!("2024-05-01T10:20:30Z")
        );
        assert_eq!(
            run("{ date = \"%d.%m.%Y\" }", json!("2024-05-01")).unwrap_err(),
            r#"not a date in format "%d.%m.%Y": "2024-05-01""#
        );
        assert_eq!(
            message("{ date = 1 }").0,
            "transform `date` takes a format string, found an integer"
        );
    }

    #[test]
    fn unknown_and_malformed_transforms() {
        assert_eq!(
            message("\"trimm\""),
            (
                "unknown transform `trimm` (did you mean `trim`?)".into(),
                Some(4..11)
            )
        );
        assert_eq!(
            message("{ uper = {} }"),
            (
                "unknown transform `uper` (did you mean `upper`?)".into(),
                Some(6..10)
            )
        );
        assert_eq!(
            message("{ trim = true }").0,
            "transform `trim` takes no arguments; write it as \"trim\""
        );
        assert_eq!(
            message("{ trim = 1, upper = 2 }").0,
            "a transform table has exactly one key, the transform's name, e.g. { phone = { region = \"DE\" } }"
        );
        assert!(message("3").0.ends_with("found an integer"));
        assert_eq!(
            message("{ concat = [\"A\"] }").0,
            "`concat` is a field source, not a transform: write { concat = [\"A\", \"B\"], \
             separator = \" \" } as the field's rule"
        );
    }
}
