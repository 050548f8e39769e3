//! The enriched customer profile: the golden record of one resolved identity plus its
//! transaction metrics. A [`CustomerProfile`] is what the feed publishes; its
//! [`CustomerProfile::content_hash`] decides whether a rebuilt profile is a new version.

use jiff::Timestamp;
use jiff::civil::Date;
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Address, Identifier, OrderStatus, PartyKind, SourceRef};

/// The version of the profile payload's shape. It changes only with an incompatible change
/// of the feed contract; additive fields keep it.
pub const SCHEMA_VERSION: &str = "1";

/// An amount of money in an ISO 4217 currency. The amount is a decimal string in JSON so no
/// consumer ever reads it as a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    #[schemars(with = "String")]
    pub amount: Decimal,
    pub currency: String,
}

/// A de-duplicated contact value (an e-mail address or an E.164 phone number) with the
/// systems it was seen in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContactPoint {
    pub value: String,
    pub systems: Vec<String>,
}

/// The survivor values of one identity, picked field by field (source priority first, then
/// the most recently updated non-empty value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GoldenRecord {
    pub kind: PartyKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    pub emails: Vec<ContactPoint>,
    pub phones: Vec<ContactPoint>,
    pub addresses: Vec<AddressPoint>,
    pub identifiers: Vec<Identifier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub birth_date: Option<Date>,
}

/// Order metrics in the configured base currency. Cancelled and returned orders are counted
/// in neither the order count nor the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderMetrics {
    pub order_count: u64,
    pub lifetime_value: Money,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_order_value: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub first_order_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_order_at: Option<Timestamp>,
    /// Whole days from the last order to the profile's `as_of` date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_since_last_order: Option<i64>,
}

/// One published profile version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerProfile {
    /// Always [`SCHEMA_VERSION`] for payloads of this shape.
    pub schema_version: String,
    pub profile_id: Uuid,
    /// Starts at 1 and grows by one with every content change.
    pub version: i64,
    /// Profile ids retired into this one by the merge this version records; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_ids: Vec<Uuid>,
    pub golden: GoldenRecord,
    /// The values that lost survivorship, field by field, with the records holding them.
    #[serde(default)]
    pub alternates: Vec<Alternate>,
    /// Strong fields (identifiers, birth date, legal name) on which the records disagree.
    #[serde(default)]
    pub conflicts: Vec<Conflict>,
    pub metrics: OrderMetrics,
    #[serde(default)]
    pub segment: Segment,
    /// Open and partially fulfilled orders with the supply status of each line.
    #[serde(default)]
    pub open_orders: Vec<OpenOrder>,
    /// The earliest projected availability date among the backordered lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub earliest_projected_date: Option<Date>,
    /// Product categories bought most (by order lines of counted orders), at most three.
    #[serde(default)]
    pub top_categories: Vec<CategoryCount>,
    #[serde(default)]
    pub data_quality: DataQuality,
    /// The date "today" was when this version was built: recency, lifecycle and projected
    /// dates are relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub as_of: Option<Date>,
    /// Every source record that feeds this profile, sorted.
    pub sources: Vec<SourceRef>,
}

/// A de-duplicated postal address with the systems it was seen in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AddressPoint {
    #[serde(flatten)]
    pub address: Address,
    #[serde(default)]
    pub systems: Vec<String>,
}

/// A value of a golden-record field that lost survivorship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Alternate {
    /// The golden-record field (`full_name`, `company`, `birth_date`, ...).
    pub field: String,
    pub value: String,
    /// The records holding this value, sorted.
    pub sources: Vec<SourceRef>,
}

/// A strong field on which the records of one customer disagree after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Conflict {
    /// `birth_date`, `legal_name` or `identifier:<scheme>`.
    pub field: String,
    /// The distinct values, the surviving one first.
    pub values: Vec<String>,
}

/// RFM scores, 1 (lowest fifth of the customer base) to 5 (highest fifth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rfm {
    pub recency: u8,
    pub frequency: u8,
    pub monetary: u8,
}

/// The customer-value pyramid.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ValueTier {
    Diamond,
    Gold,
    Silver,
    #[default]
    Iron,
}

/// The loyalty ladder, with at-risk and lapsed for customers whose last order is long ago.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    #[default]
    Prospect,
    New,
    Repeat,
    Loyal,
    AtRisk,
    Lapsed,
}

/// Where the customer stands: RFM (absent without counted orders; assigned over the whole
/// customer base at the end of each run), value tier and lifecycle stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Segment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfm: Option<Rfm>,
    pub value_tier: ValueTier,
    pub lifecycle: Lifecycle,
}

/// The supply status of an open order line.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LineStatus {
    /// Covered by available stock (allocated oldest order first).
    #[default]
    Available,
    /// Short; a supplier can deliver by `projected_date`.
    Backorder,
    /// Short and no supplier with a lead time is known: no date can be promised.
    AtRisk,
}

/// One line of an open order with its supply status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpenLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_number: Option<String>,
    pub sku: String,
    /// The quantity still to ship.
    #[schemars(with = "String")]
    pub quantity: Decimal,
    /// The part of `quantity` covered by stock.
    #[schemars(with = "String")]
    pub allocated: Decimal,
    pub status: LineStatus,
    /// today + the shortest supplier lead time, for a backordered line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub projected_date: Option<Date>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub promised_date: Option<Date>,
}

/// An open or partially fulfilled order of the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpenOrder {
    pub source: SourceRef,
    pub order_number: String,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub ordered_at: Option<Timestamp>,
    /// The worst status of its lines.
    pub supply_status: LineStatus,
    pub lines: Vec<OpenLine>,
}

/// A product category with the number of order lines bought in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CategoryCount {
    pub category: String,
    pub order_lines: u64,
}

/// Data quality of the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DataQuality {
    /// Percentage (0-100) of the expected fields the golden record has.
    pub completeness: u8,
    /// The expected fields that are missing.
    pub missing: Vec<String>,
    /// How many conflicts the profile lists.
    pub conflict_count: u64,
}

impl CustomerProfile {
    /// The hash of what the profile says about the customer: everything except the version
    /// bookkeeping, so a rebuild with identical content is recognised as unchanged.
    pub fn content_hash(&self) -> String {
        let mut content = self.clone();
        content.version = 0;
        content.merged_ids.clear();
        let json = serde_json::to_vec(&content)
            .expect("profiles contain only serialisable values (strings, decimals, dates)");
        blake3::hash(&json).to_hex().to_string()
    }
}
