//! The `[[test]]` cases of a mapping file: [`TestCase`] is one compiled case (its input and
//! either the expected target values or a substring of the expected error), and [`run`]
//! maps the input and says exactly which key differed.
//!
//! Expected values are compared in the target's type, so `"10.5"` equals `"10.50"` for a
//! decimal and `"2024-05-01T12:00:00+02:00"` equals `"2024-05-01T10:00:00Z"` for an instant;
//! only the listed keys are compared, and an order's `lines` are compared line by line.

use serde_json::{Map, Value};
use toml::Spanned;

use super::coerce::{self, DateFormat, show};
use super::record::render;
use super::spec::{RawTable, RawValue, TestSpec};
use super::target::{self, Scope, Target, ValueType};
use super::{MapContext, Mapping, SpecError, TestOutcome};
use crate::model::EntityKind;

#[derive(Debug)]
enum Expectation {
    Values(Map<String, Value>),
    Error(String),
}

/// One compiled `[[test]]` case.
#[derive(Debug)]
pub struct TestCase {
    name: Option<String>,
    input: Value,
    expect: Expectation,
}

fn err(span: std::ops::Range<usize>, message: impl Into<String>) -> SpecError {
    SpecError {
        span: Some(span),
        message: message.into(),
    }
}

fn check_keys(entity: EntityKind, scope: Scope, table: &RawTable) -> Result<(), SpecError> {
    for (key, value) in &table.0 {
        if entity == EntityKind::Order && scope == Scope::Header && key.get_ref() == "lines" {
            let RawValue::Array(lines) = value.get_ref() else {
                return Err(err(
                    value.span(),
                    format!(
                        "expected `lines` must be a list of tables, found {}",
                        value.get_ref().kind()
                    ),
                ));
            };
            for line in lines {
                let RawValue::Table(line_table) = line.get_ref() else {
                    return Err(err(
                        line.span(),
                        format!(
                            "an expected line must be a table, found {}",
                            line.get_ref().kind()
                        ),
                    ));
                };
                check_keys(entity, Scope::Line, line_table)?;
            }
            continue;
        }
        target::resolve(entity, scope, key.get_ref())
            .map_err(|e| err(key.span(), format!("in `expect`: {e}")))?;
    }
    Ok(())
}

impl TestCase {
    pub fn compile(entity: EntityKind, spec: &Spanned<TestSpec>) -> Result<TestCase, SpecError> {
        let case = spec.get_ref();
        let expect = match (&case.expect, &case.expect_error) {
            (Some(expect), None) => {
                check_keys(entity, Scope::Header, expect.get_ref())?;
                Expectation::Values(expect.get_ref().to_json())
            }
            (None, Some(error)) => Expectation::Error(error.get_ref().clone()),
            (Some(_), Some(error)) => {
                return Err(err(
                    error.span(),
                    "a test has either `expect` or `expect_error`, not both",
                ));
            }
            (None, None) => {
                return Err(err(
                    spec.span(),
                    "a test needs `expect` (target values) or `expect_error` (a substring of the error)",
                ));
            }
        };
        Ok(TestCase {
            name: case.name.clone(),
            input: case.input.get_ref().to_json(),
            expect,
        })
    }
}

/// Runs case number `number` (1-based).
pub fn run(mapping: &Mapping, number: usize, case: &TestCase, ctx: &MapContext<'_>) -> TestOutcome {
    let result = mapping.apply(&case.input, ctx);
    let failure = match (&case.expect, result) {
        (Expectation::Error(wanted), Err(error)) => {
            let message = error.to_string();
            (!message.contains(wanted.as_str()))
                .then(|| format!("expected an error containing {wanted:?}, got: {message}"))
        }
        (Expectation::Error(wanted), Ok(_)) => Some(format!(
            "expected an error containing {wanted:?}, but the record mapped"
        )),
        (Expectation::Values(_), Err(error)) => Some(format!("mapping failed: {error}")),
        (Expectation::Values(expected), Ok(record)) => {
            let actual = render(&record);
            let mut diffs = Vec::new();
            compare(
                mapping.entity,
                Scope::Header,
                "",
                expected,
                &actual,
                &mut diffs,
            );
            (!diffs.is_empty()).then(|| diffs.join("; "))
        }
    };
    TestOutcome {
        case: number,
        name: case.name.clone(),
        failure,
    }
}

fn compare(
    entity: EntityKind,
    scope: Scope,
    prefix: &str,
    expected: &Map<String, Value>,
    actual: &Map<String, Value>,
    diffs: &mut Vec<String>,
) {
    for (key, want) in expected {
        let got = actual.get(key);
        if entity == EntityKind::Order && scope == Scope::Header && key == "lines" {
            let want_lines = want.as_array().map(Vec::as_slice).unwrap_or_default();
            let got_lines = got
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if want_lines.len() != got_lines.len() {
                diffs.push(format!(
                    "`lines`: expected {} lines, got {}",
                    want_lines.len(),
                    got_lines.len()
                ));
                continue;
            }
            for (i, (want_line, got_line)) in want_lines.iter().zip(got_lines).enumerate() {
                let empty = Map::new();
                compare(
                    entity,
                    Scope::Line,
                    &format!("lines[{i}]."),
                    want_line.as_object().unwrap_or(&empty),
                    got_line.as_object().unwrap_or(&empty),
                    diffs,
                );
            }
            continue;
        }
        let equal = match target::resolve(entity, scope, key) {
            Ok(target) => values_equal(&target, want, got),
            Err(_) => Some(want) == got,
        };
        if !equal {
            diffs.push(format!(
                "`{prefix}{key}`: expected {}, got {}",
                show(want),
                got.map_or_else(|| "nothing".to_owned(), show)
            ));
        }
    }
}

fn values_equal(target: &Target, want: &Value, got: Option<&Value>) -> bool {
    if target.list {
        let want: Vec<&Value> = match want {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        let got: Vec<&Value> = match got {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(single) => vec![single],
            None => Vec::new(),
        };
        return want.len() == got.len()
            && want
                .iter()
                .zip(&got)
                .all(|(w, g)| scalar_equal(ValueType::String, w, g));
    }
    got.is_some_and(|got| scalar_equal(target.ty, want, got))
}

fn scalar_equal(ty: ValueType, want: &Value, got: &Value) -> bool {
    let auto = DateFormat::Auto;
    let typed = match ty {
        ValueType::String => coerce::text(want)
            .ok()
            .zip(coerce::text(got).ok())
            .map(|(w, g)| w == g),
        ValueType::Integer => coerce::integer(want)
            .ok()
            .zip(coerce::integer(got).ok())
            .map(|(w, g)| w == g),
        ValueType::Decimal => coerce::decimal(want)
            .ok()
            .zip(coerce::decimal(got).ok())
            .map(|(w, g)| w == g),
        ValueType::Bool => coerce::boolean(want)
            .ok()
            .zip(coerce::boolean(got).ok())
            .map(|(w, g)| w == g),
        ValueType::Date => coerce::date(want, &auto)
            .ok()
            .zip(coerce::date(got, &auto).ok())
            .map(|(w, g)| w == g),
        ValueType::Datetime => coerce::datetime(want, &auto)
            .ok()
            .zip(coerce::datetime(got, &auto).ok())
            .map(|(w, g)| w == g),
    };
    typed.unwrap_or(want == got)
}
