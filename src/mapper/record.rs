//! Building canonical records from coerced [`Fields`] ([`build`]) and rendering a record back
//! into target-name form ([`render`]), which is what `[[test]]` cases and `conflux preview`
//! compare and print.
//!
//! The builder owns the entity-level rules: required fields after defaults, derived values
//! (an order's number defaults to its source id and its total to the sum of its line totals;
//! a line total to quantity × unit price; inventory `available` to on hand − reserved; the
//! source id of products, stock and supplier items to their natural keys) and the single
//! customer address, which is dropped when every part of it is empty.

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::MapError;
use super::rule::Fields;
use crate::model::{
    Address, Customer, EntityKind, Inventory, Order, OrderLine, OrderLineItem, OrderStatus,
    PartyKind, Product, Record, SourceRef, Supplier, SupplierItem,
};

/// Where the record came from, and how to name the source of a missing field.
pub struct Origin<'a> {
    pub system: &'a str,
    pub stream: &'a str,
    /// The source path of the rule for a target name, if the mapping has one.
    pub path_of: &'a dyn Fn(&str) -> Option<String>,
}

impl Origin<'_> {
    fn required(&self, field: &str, value: Option<String>) -> Result<String, MapError> {
        value.ok_or_else(|| MapError {
            field: field.to_owned(),
            path: (self.path_of)(field),
            reason: "required value is missing".to_owned(),
        })
    }

    fn source(&self, source_id: String) -> SourceRef {
        SourceRef {
            system: self.system.to_owned(),
            stream: self.stream.to_owned(),
            source_id,
        }
    }
}

fn line(f: Fields) -> OrderLine {
    let line_total = f.line_total.or_else(|| match (f.quantity, f.unit_price) {
        (Some(q), Some(p)) => q.checked_mul(p),
        _ => None,
    });
    OrderLine {
        line_number: f.line_number,
        sku: f.sku,
        description: f.description,
        quantity: f.quantity,
        unit_price: f.unit_price,
        line_total,
        promised_date: f.promised_date,
    }
}

/// Builds the entity's record; `lines` are the order lines (empty for other entities).
pub fn build(
    entity: EntityKind,
    f: Fields,
    lines: Vec<Fields>,
    origin: &Origin<'_>,
) -> Result<Record, MapError> {
    Ok(match entity {
        EntityKind::Customer => {
            let source_id = origin.required("source_id", f.source_id)?;
            let [line1, line2, line3] = f.address_lines;
            let address = Address {
                lines: [line1, line2, line3].into_iter().flatten().collect(),
                city: f.city,
                region: f.region,
                postcode: f.postcode,
                country: f.address_country,
            };
            Record::Customer(Customer {
                source: origin.source(source_id),
                kind: f.kind.unwrap_or_default(),
                full_name: f.name,
                given_name: f.given_name,
                family_name: f.family_name,
                company: f.company,
                emails: f.emails,
                phones: f.phones,
                addresses: if address.is_empty() {
                    Vec::new()
                } else {
                    vec![address]
                },
                identifiers: f.identifiers,
                birth_date: f.birth_date,
                created_at: f.created_at,
                updated_at: f.updated_at,
                extra: f.extra,
            })
        }
        EntityKind::Order => {
            let source_id = origin.required("source_id", f.source_id)?;
            let lines: Vec<OrderLine> = lines.into_iter().map(line).collect();
            // A total is only derived when every line has one: a partial sum would understate.
            let total = f.total.or_else(|| {
                if lines.is_empty() {
                    return None;
                }
                lines.iter().try_fold(Decimal::ZERO, |sum, l| {
                    l.line_total.and_then(|t| sum.checked_add(t))
                })
            });
            Record::Order(Order {
                order_number: f.order_number.unwrap_or_else(|| source_id.clone()),
                source: origin.source(source_id),
                customer_id: f.customer_id,
                ordered_at: f.ordered_at,
                status: f.status.unwrap_or_default(),
                currency: f.currency,
                total,
                lines,
            })
        }
        EntityKind::OrderLine => {
            let source_id = origin.required("source_id", f.source_id.clone())?;
            let order_id = origin.required("order_id", f.order_id.clone())?;
            Record::OrderLine(OrderLineItem {
                source: origin.source(source_id),
                order_id,
                line: line(f),
            })
        }
        EntityKind::Product => {
            let sku = origin.required("sku", f.sku)?;
            Record::Product(Product {
                source: origin.source(f.source_id.unwrap_or_else(|| sku.clone())),
                sku,
                name: f.name,
                category: f.category,
                unit_of_measure: f.unit_of_measure,
                list_price: f.list_price,
                currency: f.currency,
            })
        }
        EntityKind::Inventory => {
            let sku = origin.required("sku", f.sku)?;
            let source_id = f.source_id.unwrap_or_else(|| match &f.location {
                Some(location) => format!("{sku}@{location}"),
                None => sku.clone(),
            });
            let available = f.available.or_else(|| match (f.on_hand, f.reserved) {
                (Some(on_hand), Some(reserved)) => on_hand.checked_sub(reserved),
                _ => None,
            });
            Record::Inventory(Inventory {
                source: origin.source(source_id),
                sku,
                location: f.location,
                on_hand: f.on_hand,
                reserved: f.reserved,
                available,
                on_order: f.on_order,
                as_of: f.as_of,
            })
        }
        EntityKind::Supplier => {
            let source_id = origin.required("source_id", f.source_id)?;
            Record::Supplier(Supplier {
                source: origin.source(source_id),
                name: f.name,
                identifiers: f.identifiers,
                country: f.country,
                email: f.emails.into_iter().next(),
                phone: f.phones.into_iter().next(),
            })
        }
        EntityKind::SupplierItem => {
            let supplier_id = origin.required("supplier_id", f.supplier_id)?;
            let sku = origin.required("sku", f.sku)?;
            Record::SupplierItem(SupplierItem {
                source: origin.source(
                    f.source_id
                        .unwrap_or_else(|| format!("{supplier_id}:{sku}")),
                ),
                supplier_id,
                sku,
                lead_time_days: f.lead_time_days,
                min_order_quantity: f.min_order_quantity,
                unit_cost: f.unit_cost,
                currency: f.currency,
            })
        }
    })
}

fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Open => "open",
        OrderStatus::PartiallyFulfilled => "partially_fulfilled",
        OrderStatus::Fulfilled => "fulfilled",
        OrderStatus::Cancelled => "cancelled",
        OrderStatus::Returned => "returned",
    }
}

fn kind_name(kind: PartyKind) -> &'static str {
    match kind {
        PartyKind::Person => "person",
        PartyKind::Organization => "organization",
    }
}

/// Collects present values under their target names.
struct Out(Map<String, Value>);

impl Out {
    fn put(&mut self, name: &str, value: Option<impl ToString>) {
        if let Some(value) = value {
            self.0
                .insert(name.to_owned(), Value::String(value.to_string()));
        }
    }

    fn list(&mut self, name: &str, values: &[String]) {
        if !values.is_empty() {
            self.0.insert(
                name.to_owned(),
                Value::Array(values.iter().cloned().map(Value::String).collect()),
            );
        }
    }
}

fn render_line(l: &OrderLine) -> Value {
    Value::Object(line_fields(l))
}

fn line_fields(l: &OrderLine) -> Map<String, Value> {
    let mut out = Out(Map::new());
    out.put("line_number", l.line_number.as_ref());
    out.put("sku", l.sku.as_ref());
    out.put("description", l.description.as_ref());
    out.put("quantity", l.quantity);
    out.put("unit_price", l.unit_price);
    out.put("line_total", l.line_total);
    out.put("promised_date", l.promised_date);
    out.0
}

/// A record as target name → rendered value: strings, decimals as strings, dates
/// `YYYY-MM-DD`, instants RFC 3339 UTC, lists as arrays, integers as numbers. `email` and
/// `phone` show the first of the customer's lists; absent values are left out.
pub fn render(record: &Record) -> Map<String, Value> {
    let mut out = Out(Map::new());
    out.put("source_id", Some(&record.source().source_id));
    match record {
        Record::Customer(c) => {
            out.put("kind", Some(kind_name(c.kind)));
            out.put("name", c.full_name.as_ref());
            out.put("given_name", c.given_name.as_ref());
            out.put("family_name", c.family_name.as_ref());
            out.put("company", c.company.as_ref());
            out.put("email", c.emails.first());
            out.list("emails", &c.emails);
            out.put("phone", c.phones.first());
            out.list("phones", &c.phones);
            if let Some(address) = c.addresses.first() {
                for (i, line) in address.lines.iter().enumerate() {
                    out.put(&format!("address.line{}", i + 1), Some(line));
                }
                out.put("address.city", address.city.as_ref());
                out.put("address.region", address.region.as_ref());
                out.put("address.postcode", address.postcode.as_ref());
                out.put("address.country", address.country.as_ref());
            }
            for id in &c.identifiers {
                let key = format!("identifier.{}", id.scheme);
                if !out.0.contains_key(&key) {
                    out.put(&key, Some(&id.value));
                }
            }
            out.put("birth_date", c.birth_date);
            out.put("created_at", c.created_at);
            out.put("updated_at", c.updated_at);
            for (name, value) in &c.extra {
                out.put(&format!("extra.{name}"), Some(value));
            }
        }
        Record::Order(o) => {
            out.put("order_number", Some(&o.order_number));
            out.put("customer_id", o.customer_id.as_ref());
            out.put("ordered_at", o.ordered_at);
            out.put("status", Some(status_name(o.status)));
            out.put("currency", o.currency.as_ref());
            out.put("total", o.total);
            if !o.lines.is_empty() {
                out.0.insert(
                    "lines".to_owned(),
                    Value::Array(o.lines.iter().map(render_line).collect()),
                );
            }
        }
        Record::OrderLine(item) => {
            out.put("order_id", Some(&item.order_id));
            out.0.extend(line_fields(&item.line));
        }
        Record::Product(p) => {
            out.put("sku", Some(&p.sku));
            out.put("name", p.name.as_ref());
            out.put("category", p.category.as_ref());
            out.put("unit_of_measure", p.unit_of_measure.as_ref());
            out.put("list_price", p.list_price);
            out.put("currency", p.currency.as_ref());
        }
        Record::Inventory(i) => {
            out.put("sku", Some(&i.sku));
            out.put("location", i.location.as_ref());
            out.put("on_hand", i.on_hand);
            out.put("reserved", i.reserved);
            out.put("available", i.available);
            out.put("on_order", i.on_order);
            out.put("as_of", i.as_of);
        }
        Record::Supplier(s) => {
            out.put("name", s.name.as_ref());
            for id in &s.identifiers {
                let key = format!("identifier.{}", id.scheme);
                if !out.0.contains_key(&key) {
                    out.put(&key, Some(&id.value));
                }
            }
            out.put("country", s.country.as_ref());
            out.put("email", s.email.as_ref());
            out.put("phone", s.phone.as_ref());
        }
        Record::SupplierItem(s) => {
            out.put("supplier_id", Some(&s.supplier_id));
            out.put("sku", Some(&s.sku));
            if let Some(days) = s.lead_time_days {
                out.0.insert("lead_time_days".to_owned(), Value::from(days));
            }
            out.put("min_order_quantity", s.min_order_quantity);
            out.put("unit_cost", s.unit_cost);
            out.put("currency", s.currency.as_ref());
        }
    }
    out.0
}
