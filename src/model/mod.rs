//! The unified model every source record is mapped onto.
//!
//! [`Record`] is one canonical record of any entity ([`Customer`], [`Order`], [`Product`],
//! [`Inventory`], [`Supplier`], [`SupplierItem`]); every record carries its [`SourceRef`]
//! `(system, stream, source_id)`, which is its key in the store. Money is always
//! [`rust_decimal::Decimal`] with an ISO 4217 currency code, instants are UTC
//! [`jiff::Timestamp`]s and calendar dates are [`jiff::civil::Date`]s.
//!
//! The enriched [`profile::CustomerProfile`] and its CloudEvents envelope ([`event`]) live in
//! submodules; their JSON Schema is the published feed contract.

pub mod event;
pub mod profile;

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a canonical record came from: the system (connector's system name), the stream of
/// that connector, and the record's key in the source system, in its raw form (leading zeros
/// kept, e.g. `0010034884`).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct SourceRef {
    pub system: String,
    pub stream: String,
    pub source_id: String,
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.system, self.stream, self.source_id)
    }
}

/// The entity kinds of the unified model; a mapping file names exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Customer,
    Order,
    OrderLine,
    Product,
    Inventory,
    Supplier,
    SupplierItem,
}

impl EntityKind {
    pub const ALL: [EntityKind; 7] = [
        EntityKind::Customer,
        EntityKind::Order,
        EntityKind::OrderLine,
        EntityKind::Product,
        EntityKind::Inventory,
        EntityKind::Supplier,
        EntityKind::SupplierItem,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Customer => "customer",
            EntityKind::Order => "order",
            EntityKind::OrderLine => "order_line",
            EntityKind::Product => "product",
            EntityKind::Inventory => "inventory",
            EntityKind::Supplier => "supplier",
            EntityKind::SupplierItem => "supplier_item",
        }
    }

    pub fn parse(name: &str) -> Option<EntityKind> {
        EntityKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for EntityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartyKind {
    Person,
    #[default]
    Organization,
}

/// A postal address. `country` is ISO 3166-1 alpha-2, upper case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl Address {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
            && self.city.is_none()
            && self.region.is_none()
            && self.postcode.is_none()
            && self.country.is_none()
    }
}

/// A typed identifier such as a VAT number or a DUNS number. `scheme` is lower case
/// (`vat`, `duns`, `national_id`, ...).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct Identifier {
    pub scheme: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub source: SourceRef,
    pub kind: PartyKind,
    pub full_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub company: Option<String>,
    pub emails: Vec<String>,
    /// E.164 when the mapping normalised them (the `phone` transform), raw otherwise.
    pub phones: Vec<String>,
    pub addresses: Vec<Address>,
    pub identifiers: Vec<Identifier>,
    pub birth_date: Option<Date>,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub extra: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    #[default]
    Open,
    PartiallyFulfilled,
    Fulfilled,
    Cancelled,
    Returned,
}

impl OrderStatus {
    pub const NAMES: [&'static str; 5] = [
        "open",
        "partially_fulfilled",
        "fulfilled",
        "cancelled",
        "returned",
    ];

    pub fn parse(name: &str) -> Option<OrderStatus> {
        Some(match name {
            "open" => OrderStatus::Open,
            "partially_fulfilled" => OrderStatus::PartiallyFulfilled,
            "fulfilled" => OrderStatus::Fulfilled,
            "cancelled" => OrderStatus::Cancelled,
            "returned" => OrderStatus::Returned,
            _ => return None,
        })
    }

    /// Cancelled and returned orders carry no value for the customer.
    pub fn counts_towards_value(self) -> bool {
        !matches!(self, OrderStatus::Cancelled | OrderStatus::Returned)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub source: SourceRef,
    pub order_number: String,
    /// The customer's `source_id` in the same system (any customer stream of that system).
    pub customer_id: Option<String>,
    pub ordered_at: Option<Timestamp>,
    pub status: OrderStatus,
    /// ISO 4217, upper case.
    pub currency: Option<String>,
    /// The order total; when a mapping gives none it is the sum of the line totals.
    pub total: Option<Decimal>,
    pub lines: Vec<OrderLine>,
}

impl Order {
    /// Gives an order the lines that were read on their own ([`OrderLineItem`]s naming it),
    /// in line-number order (numbers compare as numbers, then the line's source id). An order
    /// whose own mapping produced lines keeps exactly those: one document, one set of lines.
    pub fn attach_lines(&mut self, mut items: Vec<OrderLineItem>) {
        if !self.lines.is_empty() || items.is_empty() {
            return;
        }
        items.sort_by(|a, b| {
            natural_order(a.line.line_number.as_deref(), b.line.line_number.as_deref())
                .then_with(|| natural_order(Some(&a.source.source_id), Some(&b.source.source_id)))
        });
        self.lines = items.into_iter().map(|item| item.line).collect();
    }
}

/// Numeric keys in numeric order (`"9"` before `"10"`), absent keys last, other text by text.
fn natural_order(a: Option<&str>, b: Option<&str>) -> std::cmp::Ordering {
    let key = |v: Option<&str>| {
        let v = v.map(str::trim);
        (
            v.is_none(),
            v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX),
            v.unwrap_or_default().to_owned(),
        )
    };
    key(a).cmp(&key(b))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderLine {
    pub line_number: Option<String>,
    pub sku: Option<String>,
    pub description: Option<String>,
    pub quantity: Option<Decimal>,
    pub unit_price: Option<Decimal>,
    pub line_total: Option<Decimal>,
    pub promised_date: Option<Date>,
}

/// An order line read on its own, by systems that serve lines as a separate resource
/// (Odoo `sale.order.line`). The store attaches it to the order of the same system whose
/// `source_id` is `order_id`, whenever that order arrives; an order whose own mapping gave
/// lines keeps those.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderLineItem {
    pub source: SourceRef,
    /// The order's `source_id` in the same system (any order stream of that system).
    pub order_id: String,
    pub line: OrderLine,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub source: SourceRef,
    pub sku: String,
    pub name: Option<String>,
    pub category: Option<String>,
    pub unit_of_measure: Option<String>,
    pub list_price: Option<Decimal>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub source: SourceRef,
    pub sku: String,
    pub location: Option<String>,
    pub on_hand: Option<Decimal>,
    pub reserved: Option<Decimal>,
    /// When the source gives none: on_hand - reserved.
    pub available: Option<Decimal>,
    pub on_order: Option<Decimal>,
    pub as_of: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Supplier {
    pub source: SourceRef,
    pub name: Option<String>,
    pub identifiers: Vec<Identifier>,
    pub country: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SupplierItem {
    pub source: SourceRef,
    /// The supplier's `source_id` in the same system.
    pub supplier_id: String,
    pub sku: String,
    pub lead_time_days: Option<i64>,
    pub min_order_quantity: Option<Decimal>,
    pub unit_cost: Option<Decimal>,
    pub currency: Option<String>,
}

/// One canonical record of any entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entity", rename_all = "snake_case")]
pub enum Record {
    Customer(Customer),
    Order(Order),
    OrderLine(OrderLineItem),
    Product(Product),
    Inventory(Inventory),
    Supplier(Supplier),
    SupplierItem(SupplierItem),
}

impl Record {
    pub fn kind(&self) -> EntityKind {
        match self {
            Record::Customer(_) => EntityKind::Customer,
            Record::Order(_) => EntityKind::Order,
            Record::OrderLine(_) => EntityKind::OrderLine,
            Record::Product(_) => EntityKind::Product,
            Record::Inventory(_) => EntityKind::Inventory,
            Record::Supplier(_) => EntityKind::Supplier,
            Record::SupplierItem(_) => EntityKind::SupplierItem,
        }
    }

    pub fn source(&self) -> &SourceRef {
        match self {
            Record::Customer(r) => &r.source,
            Record::Order(r) => &r.source,
            Record::OrderLine(r) => &r.source,
            Record::Product(r) => &r.source,
            Record::Inventory(r) => &r.source,
            Record::Supplier(r) => &r.source,
            Record::SupplierItem(r) => &r.source,
        }
    }

    /// The content hash that decides whether a re-read record changed: blake3 over the
    /// canonical JSON form (field order is fixed by the types, so the hash is stable).
    pub fn content_hash(&self) -> String {
        let json = serde_json::to_vec(self).expect(
            "canonical records contain only serialisable values (strings, decimals, dates)",
        );
        blake3::hash(&json).to_hex().to_string()
    }
}
