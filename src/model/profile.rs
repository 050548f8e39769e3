//! The enriched customer profile: the golden record of one resolved identity plus its
//! transaction metrics. A [`CustomerProfile`] is what the feed publishes; its
//! [`CustomerProfile::content_hash`] decides whether a rebuilt profile is a new version.

use jiff::Timestamp;
use jiff::civil::Date;
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Address, Identifier, PartyKind, SourceRef};

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
    pub addresses: Vec<Address>,
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
    pub metrics: OrderMetrics,
    /// Every source record that feeds this profile, sorted.
    pub sources: Vec<SourceRef>,
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
