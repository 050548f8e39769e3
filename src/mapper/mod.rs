//! The mapping engine: interprets one mapping file (`mappings/<id>.toml`) and turns a raw
//! source record into one canonical [`Record`]. Pure: no I/O, no clock.
//!
//! [`Mapping::parse`] reads the file into raw [`spec`] types and compiles it — target names
//! ([`target`]), paths ([`path`]), transforms ([`transform`]), CEL expressions ([`expr`]),
//! field rules ([`rule`]) and `[[test]]` cases ([`cases`]) — reporting every problem as a
//! [`SpecError`] with the byte range it concerns. A compiled [`Mapping`] holds no text to
//! re-parse: [`Mapping::apply`] walks precompiled rules, coerces ([`coerce`]) into the
//! target types and builds the record ([`record`]); a record that cannot be mapped yields a
//! [`MapError`] naming the field, its source path and the reason.

pub mod cases;
pub mod coerce;
pub mod expr;
pub mod path;
pub mod record;
pub mod rule;
pub mod spec;
pub mod target;
pub mod transform;

use std::ops::Range;

use serde_json::Value;

pub use target::{line_target_names, target_names};

use self::cases::TestCase;
use self::expr::ExprEnv;
use self::path::Path;
use self::record::Origin;
use self::rule::{FieldRule, Fields, LazyScope};
use self::target::Scope;
use crate::model::{EntityKind, Record};

/// What a mapping needs to know about where a record came from.
#[derive(Debug, Clone, Copy)]
pub struct MapContext<'a> {
    pub system: &'a str,
    pub stream: &'a str,
    /// Values that mean "absent" in this system (`""`, `"NULL"`, `false`, ...).
    pub empty_values: &'a [serde_json::Value],
}

/// Why one record could not be mapped: the target field, the source path it read (if any)
/// and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`{}: {reason}", path.as_ref().map(|p| format!(" (from `{p}`)")).unwrap_or_default())]
pub struct MapError {
    pub field: String,
    pub path: Option<String>,
    pub reason: String,
}

/// A problem in a mapping file; `span` is a byte range into the file's text when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpecError {}

/// `[lines]`: the repeating group of an order and the rules for one of its elements.
#[derive(Debug)]
struct LinesRule {
    path: Path,
    fields: Vec<FieldRule>,
}

/// A compiled mapping.
#[derive(Debug)]
pub struct Mapping {
    pub id: String,
    pub entity: EntityKind,
    pub description: Option<String>,
    fields: Vec<FieldRule>,
    lines: Option<LinesRule>,
    tests: Vec<TestCase>,
    /// Present when some rule is an expression.
    env: Option<ExprEnv>,
}

/// The outcome of one `[[test]]` case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// 1-based number of the case in its file.
    pub case: usize,
    pub name: Option<String>,
    /// `None` when the case passed; otherwise what differed.
    pub failure: Option<String>,
}

fn compile_rules(
    entity: EntityKind,
    scope: Scope,
    table: &spec::RawTable,
    env: &mut Option<ExprEnv>,
    errors: &mut Vec<SpecError>,
) -> Vec<FieldRule> {
    let mut rules = Vec::with_capacity(table.0.len());
    for (key, value) in &table.0 {
        match FieldRule::compile(entity, scope, key, value, env) {
            Ok(rule) => rules.push(rule),
            Err(error) => errors.push(error),
        }
    }
    rules
}

impl Mapping {
    /// Parses and compiles a mapping file's text; reports every problem found.
    pub fn parse(id: &str, text: &str) -> Result<Mapping, Vec<SpecError>> {
        let spec = spec::parse(text).map_err(|e| {
            vec![SpecError {
                span: e.span(),
                message: spec::describe_toml_error(&e),
            }]
        })?;
        let entity_name = spec.entity.get_ref();
        let Some(entity) = EntityKind::parse(entity_name) else {
            return Err(vec![SpecError {
                span: Some(spec.entity.span()),
                message: format!(
                    "unknown entity `{entity_name}` (expected one of {}){}",
                    EntityKind::ALL.map(EntityKind::as_str).join(", "),
                    target::did_you_mean(entity_name, EntityKind::ALL.map(EntityKind::as_str))
                ),
            }]);
        };
        let mut errors = Vec::new();
        let mut env = None;
        let fields = compile_rules(
            entity,
            Scope::Header,
            spec.fields.get_ref(),
            &mut env,
            &mut errors,
        );
        for required in target::required_rules(entity) {
            let has_rule = spec
                .fields
                .get_ref()
                .0
                .iter()
                .any(|(k, _)| k.get_ref() == required);
            if !has_rule {
                errors.push(SpecError {
                    span: Some(spec.fields.span()),
                    message: format!("{entity} mappings need a rule for `{required}` in [fields]"),
                });
            }
        }
        let lines = match &spec.lines {
            None => None,
            Some(lines) if entity != EntityKind::Order => {
                errors.push(SpecError {
                    span: Some(lines.span()),
                    message: format!("`[lines]` is only for order mappings, not {entity}"),
                });
                None
            }
            Some(lines) => {
                let lines = lines.get_ref();
                let fields = compile_rules(
                    entity,
                    Scope::Line,
                    lines.fields.get_ref(),
                    &mut env,
                    &mut errors,
                );
                match Path::parse(lines.path.get_ref()) {
                    Ok(path) => Some(LinesRule { path, fields }),
                    Err(message) => {
                        errors.push(SpecError {
                            span: Some(lines.path.span()),
                            message,
                        });
                        None
                    }
                }
            }
        };
        let mut tests = Vec::with_capacity(spec.tests.len());
        for case in &spec.tests {
            match TestCase::compile(entity, case) {
                Ok(case) => tests.push(case),
                Err(error) => errors.push(error),
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
            return Err(errors);
        }
        Ok(Mapping {
            id: id.to_owned(),
            entity,
            description: spec.description,
            fields,
            lines,
            tests,
            env,
        })
    }

    /// Maps one raw record.
    pub fn apply(&self, raw: &Value, ctx: &MapContext<'_>) -> Result<Record, MapError> {
        let mut scope = LazyScope::new(self.env.as_ref(), raw);
        let mut fields = Fields::default();
        for rule in &self.fields {
            let fail = |reason: String| MapError {
                field: rule.target.name.clone(),
                path: rule.origin.clone(),
                reason,
            };
            let produced = rule.eval(raw, None, ctx, &mut scope).map_err(fail)?;
            rule.assign(&mut fields, produced).map_err(fail)?;
        }
        let mut lines = Vec::new();
        if let Some(group) = &self.lines {
            let mut elements = Vec::new();
            if group.path.is_multi() {
                group.path.get_all(raw, &mut elements);
            } else {
                match group.path.get(raw) {
                    Some(Value::Array(items)) => elements.extend(items),
                    Some(single) => elements.push(single),
                    None => {}
                }
            }
            for (i, element) in elements.into_iter().filter(|e| !e.is_null()).enumerate() {
                let mut line = Fields::default();
                for rule in &group.fields {
                    let fail = |reason: String| MapError {
                        field: format!("lines[{i}].{}", rule.target.name),
                        path: rule.origin.clone(),
                        reason,
                    };
                    let produced = rule
                        .eval(raw, Some(element), ctx, &mut scope)
                        .map_err(fail)?;
                    rule.assign(&mut line, produced).map_err(fail)?;
                }
                lines.push(line);
            }
        }
        let path_of = |name: &str| {
            self.fields
                .iter()
                .find(|r| r.target.name == name)
                .and_then(|r| r.origin.clone())
        };
        let origin = Origin {
            system: ctx.system,
            stream: ctx.stream,
            path_of: &path_of,
        };
        record::build(self.entity, fields, lines, &origin)
    }

    /// Maps one raw record and renders it as target name → value (what tests compare and
    /// `conflux preview` prints).
    pub fn map_fields(
        &self,
        raw: &Value,
        ctx: &MapContext<'_>,
    ) -> Result<serde_json::Map<String, Value>, MapError> {
        self.apply(raw, ctx).map(|record| record::render(&record))
    }

    /// How many `[[test]]` cases the file holds.
    pub fn test_count(&self) -> usize {
        self.tests.len()
    }

    /// Runs the mapping file's `[[test]]` cases.
    pub fn run_tests(&self, ctx: &MapContext<'_>) -> Vec<TestOutcome> {
        self.tests
            .iter()
            .enumerate()
            .map(|(i, case)| cases::run(self, i + 1, case, ctx))
            .collect()
    }
}
