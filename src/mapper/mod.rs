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
        let mut fields = compile_rules(
            entity,
            Scope::Header,
            spec.fields.get_ref(),
            &mut env,
            &mut errors,
        );
        // Required targets first, so a record without its key fails on the key rather than on
        // whatever other field happens to come earlier in the file.
        fields.sort_by_key(|rule| !rule.target.required);
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
            group.path.get_group(raw, &mut elements);
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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use rust_decimal::Decimal;
    use serde_json::json;

    use super::*;
    use crate::model::{Identifier, OrderStatus, PartyKind};

    const SAP: MapContext<'static> = MapContext {
        system: "sap",
        stream: "debmas",
        empty_values: &[],
    };

    fn ctx(empty_values: &[Value]) -> MapContext<'_> {
        MapContext {
            system: "sap",
            stream: "debmas",
            empty_values,
        }
    }

    fn mapping(text: &str) -> Mapping {
        match Mapping::parse("test", text) {
            Ok(mapping) => mapping,
            Err(errors) => panic!("{errors:#?}"),
        }
    }

    fn errors(text: &str) -> Vec<SpecError> {
        Mapping::parse("test", text).unwrap_err()
    }

    /// The single error of a file, with the text its span covers.
    fn one_error(text: &str) -> (String, String) {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let span = errors[0].span.clone().unwrap();
        (errors[0].message.clone(), text[span].to_owned())
    }

    const DEBMAS: &str = r#"
entity = "customer"
description = "SAP DEBMAS07 IDoc → customer"

[fields]
source_id  = "E1KNA1M.KUNNR"
name       = { path = "E1KNA1M.NAME1", transforms = ["trim"] }
email      = { path = "E1KNA1M.E1KNVKM[0].SMTP_ADDR", transforms = ["email"] }
phone      = { path = "E1KNA1M.TELF1", transforms = [{ phone = { region = "DE" } }] }
kind       = { value = "organization" }
"address.country" = { path = "E1KNA1M.LAND1", transforms = ["upper"], default = "DE" }
created_at = { path = "E1KNA1M.ERDAT", transforms = [{ date = "%Y%m%d" }] }
"address.line1" = { concat = ["E1KNA1M.STRAS", "E1KNA1M.HAUSN"], separator = " " }
"identifier.vat" = { path = "E1KNA1M.STCEG", required = false }
"extra.full" = { expr = "record.E1KNA1M.NAME1 + ' ' + record.E1KNA1M.NAME2" }

[[test]]
name = "plain partner"
input  = { E1KNA1M = { KUNNR = "0000100042", NAME1 = " Müller GmbH ", NAME2 = "Werk 2" } }
expect = { source_id = "0000100042", name = "Müller GmbH", "address.country" = "DE" }
[[test]]
input = { E1KNA1M = { KUNNR = "" } }
expect_error = "source_id"
"#;

    #[test]
    fn maps_the_documented_idoc_example() {
        let m = mapping(DEBMAS);
        assert_eq!(m.entity, EntityKind::Customer);
        assert_eq!(
            m.description.as_deref(),
            Some("SAP DEBMAS07 IDoc → customer")
        );
        let raw = json!({"E1KNA1M": {
            "KUNNR": "0000100042",
            "NAME1": " Müller GmbH ",
            "NAME2": "Werk 2",
            "E1KNVKM": [{"SMTP_ADDR": " Info@Mueller.DE "}, {"SMTP_ADDR": "x@y.de"}],
            "TELF1": "030 1234567",
            "LAND1": "at",
            "ERDAT": "20240501",
            "STRAS": "Hauptstraße",
            "HAUSN": {"@type": "no", "#text": "12"},
            "STCEG": "DE123456789",
        }});
        let Record::Customer(c) = m.apply(&raw, &SAP).unwrap() else {
            panic!("not a customer");
        };
        assert_eq!(c.source.to_string(), "sap/debmas/0000100042");
        assert_eq!(c.kind, PartyKind::Organization);
        assert_eq!(c.full_name.as_deref(), Some("Müller GmbH"));
        assert_eq!(c.emails, ["info@mueller.de"]);
        assert_eq!(c.phones, ["+49301234567"]);
        assert_eq!(c.addresses.len(), 1);
        assert_eq!(c.addresses[0].lines, ["Hauptstraße 12"]);
        assert_eq!(c.addresses[0].country.as_deref(), Some("AT"));
        assert_eq!(c.created_at.unwrap().to_string(), "2024-05-01T00:00:00Z");
        assert_eq!(
            c.identifiers,
            [Identifier {
                scheme: "vat".into(),
                value: "DE123456789".into()
            }]
        );
        assert_eq!(c.extra["full"], " Müller GmbH  Werk 2");
        let outcomes = m.run_tests(&ctx(&[json!("")]));
        assert_eq!(
            outcomes,
            [
                TestOutcome {
                    case: 1,
                    name: Some("plain partner".into()),
                    failure: None
                },
                TestOutcome {
                    case: 2,
                    name: None,
                    failure: None
                },
            ]
        );
    }

    #[test]
    fn required_field_missing_names_field_and_path() {
        let m = mapping(DEBMAS);
        let e = m
            .apply(&json!({"E1KNA1M": {"NAME1": "x"}}), &SAP)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `source_id` (from `E1KNA1M.KUNNR`): required value is missing"
        );
        let explicit = mapping(
            r#"entity = "customer"
[fields]
source_id = "ID"
name = { path = "NAME", required = true }
"#,
        );
        assert_eq!(
            explicit
                .apply(&json!({"ID": "1"}), &SAP)
                .unwrap_err()
                .to_string(),
            "field `name` (from `NAME`): required value is missing"
        );
    }

    #[test]
    fn defaults_fill_absent_and_empty_values() {
        let m = mapping(
            r#"entity = "customer"
[fields]
source_id = "ID"
"address.country" = { path = "LAND", default = "DE" }
kind = { path = "TYPE", transforms = [{ map = { values = { P = "person" }, default = "organization" } }] }
"#,
        );
        let empties = [json!(""), json!("NULL"), json!(false)];
        for land in [
            json!(null),
            json!(""),
            json!("  "),
            json!("NULL"),
            json!(false),
        ] {
            let fields = m
                .map_fields(
                    &json!({"ID": "1", "LAND": land, "TYPE": "P"}),
                    &ctx(&empties),
                )
                .unwrap();
            assert_eq!(fields["address.country"], "DE", "{land}");
            assert_eq!(fields["kind"], "person");
        }
        let fields = m
            .map_fields(&json!({"ID": "1", "LAND": "fr"}), &SAP)
            .unwrap();
        assert_eq!(fields["address.country"], "FR");
        assert_eq!(fields["kind"], "organization", "the customer default");
    }

    #[test]
    fn empty_values_are_absent_per_system() {
        let m = mapping(
            r#"entity = "customer"
[fields]
source_id = "id"
name = "name"
company = "company"
"#,
        );
        let raw = json!({"id": 7, "name": "NULL", "company": false});
        let fields = m
            .map_fields(&raw, &ctx(&[json!("NULL"), json!(false)]))
            .unwrap();
        assert_eq!(fields.get("name"), None);
        assert_eq!(fields.get("company"), None);
        assert_eq!(fields["source_id"], "7");
        let fields = m.map_fields(&raw, &ctx(&[])).unwrap();
        assert_eq!(fields["name"], "NULL");
        assert_eq!(fields["company"], "false");
        let e = m.apply(&json!({"id": ""}), &ctx(&[json!("")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `source_id` (from `id`): required value is missing"
        );
    }

    const ORDERS: &str = r#"
entity = "order"
[fields]
source_id = "BELNR"
customer_id = "PARTNER.PARTN"
ordered_at = { path = "DATUM", format = "%d.%m.%Y" }
currency = "CURCY"
status = { path = "state", transforms = [{ map = { values = { sale = "open", done = "fulfilled" }, default = "open" } }] }

[lines]
path = "E1EDP01[*]"
[lines.fields]
line_number = "POSEX"
sku = "E1EDP19[0].IDTNR"
quantity = "MENGE"
unit_price = "VPREI"
promised_date = "EDATU"

[[test]]
input = { BELNR = "4711", DATUM = "01.05.2024", CURCY = "eur", state = "done", E1EDP01 = [{ POSEX = "10", E1EDP19 = { IDTNR = "A-1" }, MENGE = "2.000", VPREI = "10.5" }, { POSEX = "20", MENGE = "1", VPREI = "3" }] }
expect = { order_number = "4711", status = "fulfilled", currency = "EUR", total = "24", ordered_at = "2024-05-01T00:00:00Z", lines = [{ sku = "A-1", line_total = "21.0" }, { line_number = "20" }] }
"#;

    #[test]
    fn order_lines_from_a_repeating_group() {
        let m = mapping(ORDERS);
        let raw = json!({
            "BELNR": "4711",
            "PARTNER": [{"PARTN": "0000100042"}, {"PARTN": "other"}],
            "DATUM": "01.05.2024",
            "CURCY": "eur",
            "state": "sale",
            "E1EDP01": [
                {"POSEX": "10", "E1EDP19": {"IDTNR": "A-1"}, "MENGE": "2.000", "VPREI": "10.5", "EDATU": "20240510"},
                {"POSEX": "20", "E1EDP19": [{"IDTNR": "B-2"}], "MENGE": "1.000-", "VPREI": "3", "EDATU": "00000000"},
            ],
        });
        let Record::Order(o) = m.apply(&raw, &SAP).unwrap() else {
            panic!("not an order");
        };
        assert_eq!(o.order_number, "4711");
        assert_eq!(o.customer_id.as_deref(), Some("0000100042"));
        assert_eq!(o.status, OrderStatus::Open);
        assert_eq!(o.currency.as_deref(), Some("EUR"));
        assert_eq!(o.lines.len(), 2);
        assert_eq!(o.lines[0].sku.as_deref(), Some("A-1"));
        assert_eq!(o.lines[1].sku.as_deref(), Some("B-2"));
        assert_eq!(
            o.lines[0].line_total,
            Some(Decimal::from_str("21").unwrap())
        );
        assert_eq!(o.lines[1].quantity, Some(Decimal::from_str("-1").unwrap()));
        assert_eq!(o.lines[1].promised_date, None, "sentinel date");
        assert_eq!(o.lines[0].promised_date.unwrap().to_string(), "2024-05-10");
        assert_eq!(o.total, Some(Decimal::from_str("18").unwrap()));

        let single = json!({"BELNR": "1", "E1EDP01": {"POSEX": "10", "MENGE": "1", "VPREI": "2"}});
        let Record::Order(o) = m.apply(&single, &SAP).unwrap() else {
            panic!("not an order");
        };
        assert_eq!(o.lines.len(), 1, "a single group element is one line");
        assert_eq!(m.run_tests(&SAP)[0].failure, None);
    }

    #[test]
    fn line_errors_name_the_line() {
        let m = mapping(ORDERS);
        let raw = json!({"BELNR": "1", "E1EDP01": [{"MENGE": "1"}, {"MENGE": "12,5"}]});
        assert_eq!(
            m.apply(&raw, &SAP).unwrap_err().to_string(),
            r#"field `lines[1].quantity` (from `MENGE`): not a decimal: "12,5""#
        );
        let raw = json!({"BELNR": "1", "DATUM": "2024-05-01"});
        assert_eq!(
            m.apply(&raw, &SAP).unwrap_err().to_string(),
            r#"field `ordered_at` (from `DATUM`): not a date/time in format "%d.%m.%Y": "2024-05-01""#
        );
    }

    #[test]
    fn coercion_failures_are_map_errors() {
        let m = mapping(
            r#"entity = "order"
[fields]
source_id = "VBELN"
total = "NETWR"
status = "STATUS"
currency = "WAERK"
"#,
        );
        let e = m
            .apply(&json!({"VBELN": "1", "NETWR": "12,5"}), &SAP)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"field `total` (from `NETWR`): not a decimal: "12,5""#
        );
        assert_eq!(e.field, "total");
        assert_eq!(e.path.as_deref(), Some("NETWR"));
        let e = m
            .apply(&json!({"VBELN": "1", "STATUS": "shipped"}), &SAP)
            .unwrap_err();
        assert_eq!(
            e.reason,
            r#"not an order status: "shipped" (expected one of open, partially_fulfilled, fulfilled, cancelled, returned)"#
        );
        let e = m
            .apply(&json!({"VBELN": "1", "WAERK": "EURO"}), &SAP)
            .unwrap_err();
        assert_eq!(e.reason, r#"not an ISO 4217 currency code: "EURO""#);
        let fields = m
            .map_fields(&json!({"VBELN": "1", "NETWR": 0.1}), &SAP)
            .unwrap();
        assert_eq!(fields["total"], "0.1");
        assert_eq!(fields["order_number"], "1");
        assert_eq!(fields["status"], "open");
    }

    #[test]
    fn other_entities_derive_their_keys() {
        let inventory = mapping(
            r#"entity = "inventory"
[fields]
sku = "MATNR"
location = "WERKS"
on_hand = "LABST"
reserved = "RESERVED"
as_of = { path = "TS", transforms = [{ datetime = "odoo" }] }
"#,
        );
        let fields = inventory
            .map_fields(
                &json!({"MATNR": "A-1", "WERKS": "1000", "LABST": "10.5", "RESERVED": 2, "TS": "2024-05-01 10:20:30"}),
                &SAP,
            )
            .unwrap();
        assert_eq!(fields["source_id"], "A-1@1000");
        assert_eq!(fields["available"], "8.5");
        assert_eq!(fields["as_of"], "2024-05-01T10:20:30Z");

        let item = mapping(
            r#"entity = "supplier_item"
[fields]
supplier_id = "LIFNR"
sku = "MATNR"
lead_time_days = "PLIFZ"
unit_cost = { path = "NETPR", type = "decimal" }
"#,
        );
        let fields = item
            .map_fields(
                &json!({"LIFNR": "V1", "MATNR": "A-1", "PLIFZ": " 14 ", "NETPR": "3.20"}),
                &SAP,
            )
            .unwrap();
        assert_eq!(fields["source_id"], "V1:A-1");
        assert_eq!(fields["lead_time_days"], 14);
        let e = item
            .apply(
                &json!({"LIFNR": "V1", "MATNR": "A-1", "PLIFZ": "12.5"}),
                &SAP,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"field `lead_time_days` (from `PLIFZ`): not an integer: "12.5""#
        );
        let e = item.apply(&json!({"LIFNR": "V1"}), &SAP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `sku` (from `MATNR`): required value is missing"
        );

        let product = mapping(
            r#"entity = "product"
[fields]
sku = "default_code"
list_price = "list_price"
"#,
        );
        let Record::Product(p) = product
            .apply(&json!({"default_code": "P-9", "list_price": 19.99}), &SAP)
            .unwrap()
        else {
            panic!("not a product");
        };
        assert_eq!(p.source.source_id, "P-9");
        assert_eq!(p.list_price, Some(Decimal::from_str("19.99").unwrap()));

        let supplier = mapping(
            r#"entity = "supplier"
[fields]
source_id = "LIFNR"
country = "LAND1"
"identifier.duns" = "DUNS"
"#,
        );
        let e = supplier
            .apply(&json!({"LIFNR": "V1", "LAND1": "DEU"}), &SAP)
            .unwrap_err();
        assert_eq!(e.reason, r#"not an ISO 3166-1 alpha-2 country code: "DEU""#);
    }

    #[test]
    fn list_targets_take_every_value() {
        let m = mapping(
            r#"entity = "customer"
[fields]
source_id = "id"
emails = { path = "contacts[*].mail", transforms = ["email"] }
phones = { path = "phones", transforms = [{ split = { separator = ";" } }] }
"#,
        );
        let raw = json!({
            "id": "1",
            "contacts": [{"mail": "A@x.de"}, {"mail": ""}, {"mail": "b@y.de"}],
            "phones": "+49 30 1; ;+49 30 2",
        });
        let fields = m.map_fields(&raw, &ctx(&[json!("")])).unwrap();
        assert_eq!(fields["emails"], json!(["a@x.de", "b@y.de"]));
        assert_eq!(fields["phones"], json!(["+49 30 1", "+49 30 2"]));
        let e = m
            .apply(&json!({"id": "1", "contacts": {"mail": "nope"}}), &SAP)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"field `emails` (from `contacts[*].mail`): not an e-mail address: "nope""#
        );
    }

    #[test]
    fn type_override_and_format() {
        let m = mapping(
            r#"entity = "customer"
[fields]
source_id = "id"
"extra.since" = { path = "since", type = "date", format = "%d.%m.%Y" }
birth_date = { path = "born", format = "%m/%d/%Y" }
"#,
        );
        let fields = m
            .map_fields(
                &json!({"id": "1", "since": "02.01.2020", "born": "12/24/1980"}),
                &SAP,
            )
            .unwrap();
        assert_eq!(fields["extra.since"], "2020-01-02");
        assert_eq!(fields["birth_date"], "1980-12-24");
    }

    #[test]
    fn cel_expressions_compute_fields() {
        let m = mapping(
            r#"entity = "order"
[fields]
source_id = { expr = "string(record.id)" }
total = { expr = "record.net + record.tax" }
status = { expr = "record.done ? 'fulfilled' : 'open'" }
[lines]
path = "items"
[lines.fields]
sku = { expr = "record.prefix + '-' + line.code" }
"#,
        );
        let raw = json!({"id": 42, "net": 10.5, "tax": 2.0, "done": true, "prefix": "X", "items": [{"code": "A"}]});
        let fields = m.map_fields(&raw, &SAP).unwrap();
        assert_eq!(fields["source_id"], "42");
        assert_eq!(fields["total"], "12.5");
        assert_eq!(fields["status"], "fulfilled");
        assert_eq!(fields["lines"], json!([{"sku": "X-A"}]));
        let absent = m.map_fields(&json!({"id": 1}), &SAP).unwrap();
        assert_eq!(
            absent.get("total"),
            None,
            "missing keys are absent in expressions too"
        );
        let e = m
            .apply(&json!({"id": 1, "net": "a", "tax": 1}), &SAP)
            .unwrap_err();
        assert_eq!(e.field, "total");
        assert!(e.reason.starts_with("expression failed: "), "{}", e.reason);
    }

    #[test]
    fn cel_compile_error_points_at_the_expression() {
        let text = "entity = \"customer\"\n[fields]\nsource_id = \"id\"\nname = { expr = \"record.a +\" }\n";
        let (message, spanned) = one_error(text);
        assert!(
            message.starts_with("invalid expression: ERROR: <input>:1:"),
            "{message}"
        );
        assert_eq!(spanned, "\"record.a +\"");
    }

    #[test]
    fn unknown_target_suggests_and_points_at_the_key() {
        let text = "entity = \"customer\"\n[fields]\nsource_id = \"id\"\nnmae = \"NAME1\"\n";
        assert_eq!(
            one_error(text),
            (
                "unknown target `nmae` for customer (did you mean `name`?)".to_owned(),
                "nmae".to_owned()
            )
        );
    }

    #[test]
    fn unknown_transform_suggests_and_points_at_the_name() {
        let text = "entity = \"customer\"\n[fields]\nsource_id = \"id\"\nname = { path = \"N\", transforms = [\"trim\", \"uper\"] }\n";
        assert_eq!(
            one_error(text),
            (
                "unknown transform `uper` (did you mean `upper`?)".to_owned(),
                "\"uper\"".to_owned()
            )
        );
    }

    #[test]
    fn spec_errors_are_all_reported_with_spans() {
        let text = r#"entity = "order"
[fields]
source_id = { path = "A", value = "x" }
total = { path = "T", fromat = "%d" }
currency = { value = "EURO" }
ordered_at = { path = "D", format = "%d.%K" }
customer_id = { path = "C[*]" }
order_number = 12
[lines]
path = "L[*]"
[lines.fields]
sku = { path = "S", transforms = [{ split = { separator = "," } }] }
quantity = { path = "Q", default = "many" }
description = { path = "X", transforms = [{ replace = { pattern = "(", with = "" } }] }
[[test]]
input = {}
expect = { totl = "1" }
[[test]]
input = {}
"#;
        let found: Vec<(String, String)> = errors(text)
            .into_iter()
            .map(|e| {
                let span = e.span.unwrap();
                (e.message, text[span].to_owned())
            })
            .collect();
        let messages: Vec<&str> = found.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(found.len(), 11, "{messages:#?}");
        assert_eq!(
            found[0],
            (
                "field `source_id` has several sources (path, value); keep one".to_owned(),
                "\"x\"".to_owned()
            )
        );
        assert_eq!(
            found[1],
            (
                "unknown key `fromat` in field `total` (did you mean `format`?)".to_owned(),
                "fromat".to_owned()
            )
        );
        assert_eq!(
            found[2].0,
            "field `currency`: not an ISO 4217 currency code: \"EURO\""
        );
        assert!(
            found[3].0.starts_with("invalid date format \"%d.%K\""),
            "{}",
            found[3].0
        );
        assert_eq!(found[3].1, "\"%d.%K\"");
        assert!(
            found[4].0.starts_with("path `C[*]` uses `[*]`"),
            "{}",
            found[4].0
        );
        assert_eq!(
            found[5],
            (
                "field `order_number` must be a path (a string) or a rule table, found an integer"
                    .to_owned(),
                "12".to_owned()
            )
        );
        assert_eq!(
            found[6].0,
            "`split` without `index` yields several values, but `sku` takes one; add `index`"
        );
        assert_eq!(
            found[7].0,
            "invalid default of field `quantity`: not a decimal: \"many\""
        );
        assert!(
            found[8].0.starts_with("invalid regex \"(\""),
            "{}",
            found[8].0
        );
        assert_eq!(found[8].1, "\"(\"");
        assert_eq!(
            found[9],
            (
                "in `expect`: unknown target `totl` for order (did you mean `total`?)".to_owned(),
                "totl".to_owned()
            )
        );
        assert_eq!(
            found[10].0,
            "a test needs `expect` (target values) or `expect_error` (a substring of the error)"
        );
        assert!(found[10].1.starts_with("[[test]]"), "{}", found[10].1);
    }

    #[test]
    fn file_level_errors() {
        let (message, spanned) = one_error("entity = \"custmer\"\n[fields]\n");
        assert_eq!(
            message,
            "unknown entity `custmer` (expected one of customer, order, order_line, product, \
             inventory, supplier, supplier_item) (did you mean `customer`?)"
        );
        assert_eq!(spanned, "\"custmer\"");
        let (message, _) = one_error("entity = \"product\"\n[fields]\nname = \"N\"\n");
        assert_eq!(
            message,
            "product mappings need a rule for `sku` in [fields]"
        );
        let (message, spanned) = one_error(
            "entity = \"product\"\n[fields]\nsku = \"S\"\n[lines]\npath = \"L\"\n[lines.fields]\n",
        );
        assert_eq!(message, "`[lines]` is only for order mappings, not product");
        assert!(spanned.starts_with("[lines]"), "{spanned}");
        let (message, spanned) = one_error("entity = \"product\"\nfields = {}\nsurprise = 1\n");
        assert!(message.starts_with("unknown field `surprise`"), "{message}");
        assert_eq!(spanned, "surprise");
        let (message, _) = one_error(
            "entity = \"product\"\n[fields]\nsku = \"S\"\n[[test]]\ninput = { D = 2024-05-01 }\nexpect = {}\n",
        );
        assert_eq!(
            message,
            "TOML dates and times are not supported in mapping files; write them as strings \
             (\"2024-05-01\", \"2024-05-01T10:20:30Z\")"
        );
    }

    #[test]
    fn run_tests_reports_exactly_what_differed() {
        let m = mapping(
            r#"entity = "order"
[fields]
source_id = "id"
total = "total"
ordered_at = "at"
[lines]
path = "lines"
[lines.fields]
sku = "sku"

[[test]]
name = "numeric and instant equality"
input = { id = "1", total = "10.50", at = "2024-05-01T12:20:30+02:00", lines = [{ sku = "A" }] }
expect = { total = 10.5, ordered_at = "2024-05-01T10:20:30Z", lines = [{ sku = "A" }] }

[[test]]
name = "wrong values"
input = { id = "1", total = "10.50", lines = [{ sku = "A" }] }
expect = { total = "11", customer_id = "C1", lines = [{ sku = "B" }] }

[[test]]
input = { id = "1", lines = [{ sku = "A" }, { sku = "B" }] }
expect = { lines = [{ sku = "A" }] }

[[test]]
input = { id = "1", total = "x" }
expect_error = "not a decimal"

[[test]]
input = { id = "1", total = "x" }
expect_error = "required"

[[test]]
input = { id = "1" }
expect_error = "required"

[[test]]
input = { total = "1" }
expect = { total = "1" }
"#,
        );
        let failures: Vec<Option<String>> =
            m.run_tests(&SAP).into_iter().map(|o| o.failure).collect();
        assert_eq!(m.test_count(), 7);
        assert_eq!(
            failures,
            [
                None,
                Some(
                    "`total`: expected \"11\", got \"10.50\"; `customer_id`: expected \"C1\", got \
                     nothing; `lines[0].sku`: expected \"B\", got \"A\""
                        .to_owned()
                ),
                Some("`lines`: expected 1 lines, got 2".to_owned()),
                None,
                Some(
                    "expected an error containing \"required\", got: field `total` (from \
                     `total`): not a decimal: \"x\""
                        .to_owned()
                ),
                Some("expected an error containing \"required\", but the record mapped".to_owned()),
                Some(
                    "mapping failed: field `source_id` (from `id`): required value is missing"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn compiled_mappings_are_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Mapping>();
        assert!(target_names(EntityKind::Order).contains(&"total"));
        assert!(line_target_names().contains(&"line_total"));
    }
}
