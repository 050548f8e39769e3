//! Field rules: [`FieldRule`] is one compiled `target = rule` line of a mapping file — a
//! source (path, constant, concatenation or CEL expression), its transforms, default,
//! requiredness and type. [`FieldRule::eval`] runs the rule on one record and yields a
//! [`Produced`] value; [`Fields`] is the flat set of every target slot that
//! [`FieldRule::assign`] coerces values into, from which the record builder takes what its
//! entity needs.
//!
//! Order of evaluation: source → empty-value check → transforms → (blank is absent) → type
//! override → default → required check → coercion into the target's slot. Absence is never
//! an error except for required targets.

use std::collections::BTreeMap;
use std::ops::Range;

use jiff::Timestamp;
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde_json::Value;
use toml::Spanned;

use super::coerce::{self, DateFormat, show};
use super::expr::{self, Expr, ExprEnv};
use super::path::Path;
use super::spec::{RawTable, RawValue};
use super::target::{self, Scope, Slot, Target, ValueType, did_you_mean};
use super::transform::Transform;
use super::{MapContext, SpecError};
use crate::model::{EntityKind, Identifier, OrderStatus, PartyKind};

const RULE_KEYS: [&str; 10] = [
    "path",
    "value",
    "concat",
    "separator",
    "expr",
    "transforms",
    "default",
    "required",
    "type",
    "format",
];

#[derive(Debug)]
enum Source {
    Path(Path),
    Value(Value),
    Concat { paths: Vec<Path>, separator: String },
    Expr(Expr),
}

/// One compiled field rule.
#[derive(Debug)]
pub struct FieldRule {
    pub target: Target,
    source: Source,
    transforms: Vec<Transform>,
    default: Option<Value>,
    required: bool,
    type_override: Option<ValueType>,
    /// The format for the override coercion when there is one, else for the slot's.
    format: DateFormat,
    /// The source as written, for error messages (`None` for constants and expressions).
    pub origin: Option<String>,
}

/// What a rule yields for one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Produced {
    Absent,
    One(Value),
    /// List targets only.
    Many(Vec<Value>),
}

/// The CEL scope of one record, bound on first use.
pub struct LazyScope<'a> {
    env: Option<&'a ExprEnv>,
    record: &'a Value,
    scope: Option<expr::Scope>,
}

impl<'a> LazyScope<'a> {
    pub fn new(env: Option<&'a ExprEnv>, record: &'a Value) -> LazyScope<'a> {
        LazyScope {
            env,
            record,
            scope: None,
        }
    }

    fn eval(&mut self, expr: &Expr, line: Option<&Value>) -> Result<Value, String> {
        if self.scope.is_none() {
            // A rule holds an `Expr` only when the mapping built an environment for it.
            let env = self
                .env
                .ok_or_else(|| "expression evaluated without an environment".to_owned())?;
            self.scope = Some(env.bind(self.record));
        }
        match &self.scope {
            Some(scope) => scope.eval(expr, line),
            None => Err("expression scope could not be bound".to_owned()),
        }
    }
}

fn err(span: Range<usize>, message: impl Into<String>) -> SpecError {
    SpecError {
        span: Some(span),
        message: message.into(),
    }
}

fn string_value<'a>(
    target: &str,
    key: &str,
    value: &'a Spanned<RawValue>,
) -> Result<&'a str, SpecError> {
    match value.get_ref() {
        RawValue::String(s) => Ok(s),
        other => Err(err(
            value.span(),
            format!(
                "`{key}` of field `{target}` must be a string, found {}",
                other.kind()
            ),
        )),
    }
}

fn parse_path(text: &str, span: Range<usize>, target: &Target) -> Result<Path, SpecError> {
    let path = Path::parse(text).map_err(|e| err(span.clone(), e))?;
    if path.is_multi() && !target.list {
        return Err(err(
            span,
            format!(
                "path `{text}` uses `[*]` and may yield several values, but `{}` takes one; \
                 use an index such as `[0]` (only emails and phones take lists)",
                target.name
            ),
        ));
    }
    Ok(path)
}

/// A constant (`value`, `default`): a scalar, or an array of scalars for list targets.
fn constant(target: &Target, key: &str, value: &Spanned<RawValue>) -> Result<Value, SpecError> {
    match value.get_ref() {
        RawValue::Table(_) => Err(err(
            value.span(),
            format!(
                "`{key}` of field `{}` must be a scalar, found a table",
                target.name
            ),
        )),
        RawValue::Array(_) if !target.list => Err(err(
            value.span(),
            format!(
                "`{key}` of field `{}` must be a scalar, found an array ({} takes one value)",
                target.name, target.name
            ),
        )),
        RawValue::Array(items)
            if items
                .iter()
                .any(|i| matches!(i.get_ref(), RawValue::Array(_) | RawValue::Table(_))) =>
        {
            Err(err(
                value.span(),
                format!("`{key}` of field `{}` must list scalars", target.name),
            ))
        }
        other => Ok(other.to_json()),
    }
}

fn date_format(ty: ValueType) -> bool {
    matches!(ty, ValueType::Date | ValueType::Datetime)
}

impl FieldRule {
    /// Compiles the rule for `key` (a target name of `entity` in `scope`).
    pub fn compile(
        entity: EntityKind,
        scope: Scope,
        key: &Spanned<String>,
        value: &Spanned<RawValue>,
        env: &mut Option<ExprEnv>,
    ) -> Result<FieldRule, SpecError> {
        let target =
            target::resolve(entity, scope, key.get_ref()).map_err(|e| err(key.span(), e))?;
        let table = match value.get_ref() {
            RawValue::String(text) => {
                let path = parse_path(text, value.span(), &target)?;
                return Ok(FieldRule {
                    origin: Some(text.clone()),
                    target,
                    source: Source::Path(path),
                    transforms: Vec::new(),
                    default: None,
                    required: false,
                    type_override: None,
                    format: DateFormat::Auto,
                });
            }
            RawValue::Table(table) => table,
            other => {
                return Err(err(
                    value.span(),
                    format!(
                        "field `{}` must be a path (a string) or a rule table, found {}",
                        target.name,
                        other.kind()
                    ),
                ));
            }
        };
        FieldRule::compile_table(target, table, value.span(), env)
    }

    fn compile_table(
        target: Target,
        table: &RawTable,
        whole: Range<usize>,
        env: &mut Option<ExprEnv>,
    ) -> Result<FieldRule, SpecError> {
        let name = target.name.clone();
        let mut sources: Vec<(&str, &Spanned<RawValue>)> = Vec::new();
        let mut separator: Option<&Spanned<RawValue>> = None;
        let mut rule = FieldRule {
            target,
            source: Source::Value(Value::Null),
            transforms: Vec::new(),
            default: None,
            required: false,
            type_override: None,
            format: DateFormat::Auto,
            origin: None,
        };
        let mut format: Option<(&str, Range<usize>)> = None;
        for (key, value) in &table.0 {
            match key.get_ref().as_str() {
                source @ ("path" | "value" | "concat" | "expr") => sources.push((source, value)),
                "separator" => separator = Some(value),
                "transforms" => {
                    let RawValue::Array(items) = value.get_ref() else {
                        return Err(err(
                            value.span(),
                            format!(
                                "`transforms` of field `{name}` must be a list, found {}",
                                value.get_ref().kind()
                            ),
                        ));
                    };
                    for item in items {
                        let transform = Transform::compile(item)?;
                        if transform.yields_many() && !rule.target.list {
                            return Err(err(
                                item.span(),
                                format!(
                                    "`split` without `index` yields several values, but \
                                     `{name}` takes one; add `index`"
                                ),
                            ));
                        }
                        rule.transforms.push(transform);
                    }
                }
                "default" => rule.default = Some(constant(&rule.target, "default", value)?),
                "required" => match value.get_ref() {
                    RawValue::Boolean(b) => rule.required = *b,
                    other => {
                        return Err(err(
                            value.span(),
                            format!(
                                "`required` of field `{name}` must be true or false, found {}",
                                other.kind()
                            ),
                        ));
                    }
                },
                "type" => {
                    let text = string_value(&name, "type", value)?;
                    rule.type_override = Some(ValueType::parse(text).ok_or_else(|| {
                        err(
                            value.span(),
                            format!(
                                "unknown type `{text}` (expected {}){}",
                                ValueType::NAMES.join(", "),
                                did_you_mean(text, ValueType::NAMES)
                            ),
                        )
                    })?);
                }
                "format" => format = Some((string_value(&name, "format", value)?, value.span())),
                other => {
                    return Err(err(
                        key.span(),
                        format!(
                            "unknown key `{other}` in field `{name}`{}",
                            did_you_mean(other, RULE_KEYS)
                        ),
                    ));
                }
            }
        }
        let (kind, source_value) = match sources.as_slice() {
            [one] => *one,
            [] => {
                return Err(err(
                    whole,
                    format!("field `{name}` needs a source: one of path, value, concat, expr"),
                ));
            }
            [_, second, ..] => {
                let kinds: Vec<&str> = sources.iter().map(|(k, _)| *k).collect();
                return Err(err(
                    second.1.span(),
                    format!(
                        "field `{name}` has several sources ({}); keep one",
                        kinds.join(", ")
                    ),
                ));
            }
        };
        if let Some(sep) = separator
            && kind != "concat"
        {
            return Err(err(sep.span(), "`separator` applies only to `concat`"));
        }
        rule.source = match kind {
            "path" => {
                let text = string_value(&name, "path", source_value)?;
                rule.origin = Some(text.to_owned());
                Source::Path(parse_path(text, source_value.span(), &rule.target)?)
            }
            "value" => Source::Value(constant(&rule.target, "value", source_value)?),
            "concat" => {
                let RawValue::Array(items) = source_value.get_ref() else {
                    return Err(err(
                        source_value.span(),
                        format!(
                            "`concat` of field `{name}` must be a list of paths, found {}",
                            source_value.get_ref().kind()
                        ),
                    ));
                };
                if items.is_empty() {
                    return Err(err(source_value.span(), "`concat` lists no paths"));
                }
                let mut paths = Vec::with_capacity(items.len());
                for item in items {
                    let text = string_value(&name, "concat", item)?;
                    let path = Path::parse(text).map_err(|e| err(item.span(), e))?;
                    if path.is_multi() {
                        return Err(err(
                            item.span(),
                            format!("path `{text}` in `concat` must not use `[*]`"),
                        ));
                    }
                    paths.push(path);
                }
                let separator = match separator {
                    Some(sep) => string_value(&name, "separator", sep)?.to_owned(),
                    None => " ".to_owned(),
                };
                rule.origin = Some(
                    paths
                        .iter()
                        .map(Path::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                Source::Concat { paths, separator }
            }
            _ => {
                let text = string_value(&name, "expr", source_value)?;
                let env = env.get_or_insert_with(ExprEnv::default);
                Source::Expr(env.compile(text).map_err(|e| err(source_value.span(), e))?)
            }
        };
        let effective = rule.type_override.unwrap_or(rule.target.ty);
        if let Some((text, span)) = format {
            if !date_format(effective) {
                return Err(err(
                    span,
                    format!(
                        "`format` applies only to date and datetime fields, and `{name}` is not one"
                    ),
                ));
            }
            rule.format = DateFormat::parse(text).map_err(|e| err(span, e))?;
        }
        rule.check_constants(whole)?;
        Ok(rule)
    }

    /// A constant source and a default are checked now, so a typo fails `validate` rather
    /// than every record.
    fn check_constants(&self, span: Range<usize>) -> Result<(), SpecError> {
        let ctx = MapContext {
            system: "",
            stream: "",
            empty_values: &[],
        };
        let mut scratch = Fields::default();
        if let Source::Value(_) = self.source {
            let produced = self
                .eval(
                    &Value::Null,
                    None,
                    &ctx,
                    &mut LazyScope::new(None, &Value::Null),
                )
                .map_err(|e| err(span.clone(), format!("field `{}`: {e}", self.target.name)))?;
            self.assign(&mut scratch, produced)
                .map_err(|e| err(span.clone(), format!("field `{}`: {e}", self.target.name)))?;
        }
        if let Some(default) = &self.default {
            self.finish(Produced::One(default.clone()))
                .and_then(|p| self.assign(&mut scratch, p))
                .map_err(|e| {
                    err(
                        span,
                        format!("invalid default of field `{}`: {e}", self.target.name),
                    )
                })?;
        }
        Ok(())
    }

    /// Runs the rule on one record (`line` is the current order line for `[lines]` rules;
    /// paths then start there).
    pub fn eval(
        &self,
        record: &Value,
        line: Option<&Value>,
        ctx: &MapContext<'_>,
        scope: &mut LazyScope<'_>,
    ) -> Result<Produced, String> {
        let root = line.unwrap_or(record);
        let mut produced = match &self.source {
            Source::Path(path) if self.target.list => {
                let mut found = Vec::new();
                path.get_list(root, &mut found);
                Produced::Many(
                    found
                        .into_iter()
                        .filter(|v| !is_empty(v, ctx.empty_values))
                        .cloned()
                        .collect(),
                )
            }
            Source::Path(path) => match path.get(root) {
                Some(v) if !is_empty(v, ctx.empty_values) => Produced::One(v.clone()),
                _ => Produced::Absent,
            },
            Source::Value(v) => Produced::One(v.clone()),
            Source::Concat { paths, separator } => {
                let mut joined = String::new();
                let mut any = false;
                for path in paths {
                    let Some(part) = path.get(root).filter(|v| !is_empty(v, ctx.empty_values))
                    else {
                        continue;
                    };
                    let text = coerce::text(part)?;
                    let text = text.trim();
                    if text.is_empty() {
                        continue;
                    }
                    if any {
                        joined.push_str(separator);
                    }
                    joined.push_str(text);
                    any = true;
                }
                if any {
                    Produced::One(Value::String(joined))
                } else {
                    Produced::Absent
                }
            }
            Source::Expr(expr) => match scope.eval(expr, line)? {
                Value::Null => Produced::Absent,
                value => Produced::One(value),
            },
        };
        if self.target.list
            && let Produced::One(value) = produced
        {
            produced = Produced::Many(match value {
                Value::Array(items) => items,
                single => vec![single],
            });
        }
        for transform in &self.transforms {
            produced = match produced {
                Produced::Absent => break,
                Produced::One(value) => match transform.apply(value)? {
                    Value::Null => Produced::Absent,
                    value => Produced::One(value),
                },
                Produced::Many(values) => {
                    let mut out = Vec::with_capacity(values.len());
                    for value in values {
                        match transform.apply(value)? {
                            Value::Null => {}
                            Value::Array(parts) => out.extend(parts),
                            value => out.push(value),
                        }
                    }
                    Produced::Many(out)
                }
            };
        }
        let produced = self.finish(produced)?;
        let missing = match &produced {
            Produced::Absent => true,
            Produced::Many(values) => values.is_empty(),
            Produced::One(_) => false,
        };
        if !missing {
            return Ok(produced);
        }
        let defaulted = match &self.default {
            Some(default) => self.finish(Produced::One(default.clone()))?,
            None => produced,
        };
        let still_missing = match &defaulted {
            Produced::Absent => true,
            Produced::Many(values) => values.is_empty(),
            Produced::One(_) => false,
        };
        if still_missing && self.required {
            return Err("required value is missing".to_owned());
        }
        Ok(defaulted)
    }

    /// Blank strings are absent; the type override coerces and re-renders.
    fn finish(&self, produced: Produced) -> Result<Produced, String> {
        Ok(match produced {
            Produced::Absent => Produced::Absent,
            Produced::One(value) => match self.normalise(value)? {
                Some(value) => Produced::One(value),
                None => Produced::Absent,
            },
            Produced::Many(values) => {
                let mut out = Vec::with_capacity(values.len());
                for value in values {
                    if let Some(value) = self.normalise(value)? {
                        out.push(value);
                    }
                }
                Produced::Many(out)
            }
        })
    }

    fn normalise(&self, value: Value) -> Result<Option<Value>, String> {
        let effective = self.type_override.unwrap_or(self.target.ty);
        match &value {
            Value::Null => return Ok(None),
            Value::String(s) if effective != ValueType::Bool && s.trim().is_empty() => {
                return Ok(None);
            }
            _ => {}
        }
        let Some(ty) = self.type_override else {
            return Ok(Some(value));
        };
        Ok(match ty {
            ValueType::String => Some(Value::String(coerce::text(&value)?)),
            ValueType::Integer => Some(Value::from(coerce::integer(&value)?)),
            ValueType::Decimal => Some(Value::String(coerce::decimal(&value)?.to_string())),
            ValueType::Bool => Some(Value::Bool(coerce::boolean(&value)?)),
            ValueType::Date => {
                coerce::date(&value, &self.format)?.map(|d| Value::String(d.to_string()))
            }
            ValueType::Datetime => {
                coerce::datetime(&value, &self.format)?.map(|t| Value::String(t.to_string()))
            }
        })
    }

    /// The format the slot's own coercion uses: after an override the value is canonical.
    fn slot_format(&self) -> &DateFormat {
        if self.type_override.is_some() {
            &DateFormat::Auto
        } else {
            &self.format
        }
    }

    /// Coerces a produced value into its slot.
    pub fn assign(&self, fields: &mut Fields, produced: Produced) -> Result<(), String> {
        match produced {
            Produced::Absent => Ok(()),
            Produced::One(value) => fields.set(&self.target.slot, &value, self.slot_format()),
            Produced::Many(values) => values
                .iter()
                .try_for_each(|value| fields.set(&self.target.slot, value, self.slot_format())),
        }
    }
}

/// A source value that means "absent": null, or one of the system's empty values (strings
/// compared after trimming).
pub fn is_empty(value: &Value, empty_values: &[Value]) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => {
            let trimmed = s.trim();
            empty_values
                .iter()
                .any(|e| matches!(e, Value::String(empty) if empty.trim() == trimmed))
        }
        other => empty_values.contains(other),
    }
}

/// Every target slot of every entity, as coerced values; the builder takes its entity's.
#[derive(Debug, Default)]
pub struct Fields {
    pub source_id: Option<String>,
    pub kind: Option<PartyKind>,
    pub name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub company: Option<String>,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub address_lines: [Option<String>; 3],
    pub city: Option<String>,
    pub region: Option<String>,
    pub postcode: Option<String>,
    pub address_country: Option<String>,
    pub identifiers: Vec<Identifier>,
    pub birth_date: Option<Date>,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub extra: BTreeMap<String, String>,
    pub order_number: Option<String>,
    pub customer_id: Option<String>,
    pub order_id: Option<String>,
    pub ordered_at: Option<Timestamp>,
    pub status: Option<OrderStatus>,
    pub currency: Option<String>,
    pub total: Option<Decimal>,
    pub line_number: Option<String>,
    pub sku: Option<String>,
    pub description: Option<String>,
    pub quantity: Option<Decimal>,
    pub unit_price: Option<Decimal>,
    pub line_total: Option<Decimal>,
    pub promised_date: Option<Date>,
    pub category: Option<String>,
    pub unit_of_measure: Option<String>,
    pub list_price: Option<Decimal>,
    pub location: Option<String>,
    pub on_hand: Option<Decimal>,
    pub reserved: Option<Decimal>,
    pub available: Option<Decimal>,
    pub on_order: Option<Decimal>,
    pub as_of: Option<Timestamp>,
    pub country: Option<String>,
    pub supplier_id: Option<String>,
    pub lead_time_days: Option<i64>,
    pub min_order_quantity: Option<Decimal>,
    pub unit_cost: Option<Decimal>,
}

fn country(value: &Value) -> Result<String, String> {
    let text = coerce::text(value)?;
    let code = text.trim();
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(format!(
            "not an ISO 3166-1 alpha-2 country code: {}",
            show(value)
        ))
    }
}

fn currency(value: &Value) -> Result<String, String> {
    let text = coerce::text(value)?;
    let code = text.trim();
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(format!("not an ISO 4217 currency code: {}", show(value)))
    }
}

fn party_kind(value: &Value) -> Result<PartyKind, String> {
    match coerce::text(value)?.trim() {
        "person" => Ok(PartyKind::Person),
        "organization" => Ok(PartyKind::Organization),
        _ => Err(format!(
            "not a party kind: {} (expected person or organization)",
            show(value)
        )),
    }
}

fn order_status(value: &Value) -> Result<OrderStatus, String> {
    OrderStatus::parse(coerce::text(value)?.trim()).ok_or_else(|| {
        format!(
            "not an order status: {} (expected one of {})",
            show(value),
            OrderStatus::NAMES.join(", ")
        )
    })
}

impl Fields {
    fn set(&mut self, slot: &Slot, value: &Value, format: &DateFormat) -> Result<(), String> {
        let text = || coerce::text(value);
        let decimal = || coerce::decimal(value).map(Some);
        let datetime = || coerce::datetime(value, format);
        match slot {
            Slot::SourceId => self.source_id = Some(text()?),
            Slot::Kind => self.kind = Some(party_kind(value)?),
            Slot::Name => self.name = Some(text()?),
            Slot::GivenName => self.given_name = Some(text()?),
            Slot::FamilyName => self.family_name = Some(text()?),
            Slot::Company => self.company = Some(text()?),
            Slot::Email | Slot::Emails => self.emails.push(text()?),
            Slot::Phone | Slot::Phones => self.phones.push(text()?),
            Slot::AddressLine(i) => {
                if let Some(line) = self.address_lines.get_mut(*i) {
                    *line = Some(text()?);
                }
            }
            Slot::AddressCity => self.city = Some(text()?),
            Slot::AddressRegion => self.region = Some(text()?),
            Slot::AddressPostcode => self.postcode = Some(text()?),
            Slot::AddressCountry => self.address_country = Some(country(value)?),
            Slot::Identifier(scheme) => self.identifiers.push(Identifier {
                scheme: scheme.clone(),
                value: text()?,
            }),
            Slot::BirthDate => self.birth_date = coerce::date(value, format)?,
            Slot::CreatedAt => self.created_at = datetime()?,
            Slot::UpdatedAt => self.updated_at = datetime()?,
            Slot::Extra(name) => {
                self.extra.insert(name.clone(), text()?);
            }
            Slot::OrderNumber => self.order_number = Some(text()?),
            Slot::CustomerId => self.customer_id = Some(text()?),
            Slot::OrderId => self.order_id = Some(text()?),
            Slot::OrderedAt => self.ordered_at = datetime()?,
            Slot::Status => self.status = Some(order_status(value)?),
            Slot::Currency => self.currency = Some(currency(value)?),
            Slot::Total => self.total = decimal()?,
            Slot::LineNumber => self.line_number = Some(text()?),
            Slot::Sku => self.sku = Some(text()?),
            Slot::Description => self.description = Some(text()?),
            Slot::Quantity => self.quantity = decimal()?,
            Slot::UnitPrice => self.unit_price = decimal()?,
            Slot::LineTotal => self.line_total = decimal()?,
            Slot::PromisedDate => self.promised_date = coerce::date(value, format)?,
            Slot::Category => self.category = Some(text()?),
            Slot::UnitOfMeasure => self.unit_of_measure = Some(text()?),
            Slot::ListPrice => self.list_price = decimal()?,
            Slot::Location => self.location = Some(text()?),
            Slot::OnHand => self.on_hand = decimal()?,
            Slot::Reserved => self.reserved = decimal()?,
            Slot::Available => self.available = decimal()?,
            Slot::OnOrder => self.on_order = decimal()?,
            Slot::AsOf => self.as_of = datetime()?,
            Slot::Country => self.country = Some(country(value)?),
            Slot::SupplierId => self.supplier_id = Some(text()?),
            Slot::LeadTimeDays => self.lead_time_days = Some(coerce::integer(value)?),
            Slot::MinOrderQuantity => self.min_order_quantity = decimal()?,
            Slot::UnitCost => self.unit_cost = decimal()?,
        }
        Ok(())
    }
}
