//! The profile builder, first version: golden record by survivorship plus order metrics.
//! Pure: the caller passes the customer records of one identity, their orders and the
//! settings; [`build`] returns the [`CustomerProfile`] content.
//!
//! Survivorship per field: the value of the system ranked highest in
//! [`ProfileSettings::source_priority`] wins; among equally ranked systems the most recently
//! updated record wins; ties fall to the smaller source ref so the result never depends on
//! input order. E-mails, phones, addresses and identifiers are collected from all records and
//! de-duplicated after normalisation, each contact point listing the systems it came from.
//!
//! Metrics are in the base currency. [`convert`] is the only place a rate is applied; an
//! amount whose currency has no rate is never converted at 1.0 — the pipeline quarantines
//! such orders before they reach the store, and [`build`] skips any that slip through.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::model::profile::{
    ContactPoint, CustomerProfile, GoldenRecord, Money, OrderMetrics, SCHEMA_VERSION,
};
use crate::model::{Address, Customer, Identifier, Order, SourceRef};
use crate::resolver::{normalise_email, normalise_identifier, normalise_phone};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSettings {
    /// ISO 4217 code all metrics are expressed in.
    pub base_currency: String,
    /// Units of base currency per unit of the keyed currency.
    pub fx: BTreeMap<String, Decimal>,
    /// Systems in descending trust.
    pub source_priority: Vec<String>,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            base_currency: "EUR".into(),
            fx: BTreeMap::new(),
            source_priority: Vec::new(),
        }
    }
}

/// `amount` in `currency` expressed in the base currency, or `None` when no rate is known.
/// An order without a currency is taken to be in the base currency.
pub fn convert(
    amount: Decimal,
    currency: Option<&str>,
    settings: &ProfileSettings,
) -> Option<Decimal> {
    match currency {
        None => Some(amount),
        Some(c) if c == settings.base_currency => Some(amount),
        Some(c) => settings.fx.get(c).map(|rate| amount * rate),
    }
}

/// The value of an order: its total, or the sum of its line totals.
pub fn order_value(order: &Order) -> Option<Decimal> {
    order.total.or_else(|| {
        let totals: Vec<Decimal> = order.lines.iter().filter_map(|l| l.line_total).collect();
        (!totals.is_empty()).then(|| totals.into_iter().sum())
    })
}

/// Builds the profile content of one identity. `version` and `merged_ids` are bookkeeping
/// the caller decides.
pub fn build(
    profile_id: Uuid,
    version: i64,
    merged_ids: Vec<Uuid>,
    customers: &[Customer],
    orders: &[Order],
    settings: &ProfileSettings,
) -> CustomerProfile {
    let ranked = rank(customers, &settings.source_priority);
    CustomerProfile {
        schema_version: SCHEMA_VERSION.to_string(),
        profile_id,
        version,
        merged_ids,
        golden: golden(&ranked),
        metrics: metrics(orders, settings),
        sources: {
            let mut sources: Vec<SourceRef> = customers.iter().map(|c| c.source.clone()).collect();
            sources.sort();
            sources.dedup();
            sources
        },
    }
}

/// Customers in survivorship order: priority rank, then most recent update, then source ref.
fn rank<'a>(customers: &'a [Customer], priority: &[String]) -> Vec<&'a Customer> {
    let rank_of = |c: &Customer| {
        priority
            .iter()
            .position(|s| *s == c.source.system)
            .unwrap_or(priority.len())
    };
    let mut ranked: Vec<&Customer> = customers.iter().collect();
    ranked.sort_by_key(|c| {
        (
            rank_of(c),
            Reverse(c.updated_at.or(c.created_at)),
            c.source.clone(),
        )
    });
    ranked
}

fn first<T: Clone>(ranked: &[&Customer], field: impl Fn(&Customer) -> Option<&T>) -> Option<T> {
    ranked.iter().find_map(|c| field(c)).cloned()
}

fn non_blank(value: &Option<String>) -> Option<&String> {
    value.as_ref().filter(|v| !v.trim().is_empty())
}

fn golden(ranked: &[&Customer]) -> GoldenRecord {
    GoldenRecord {
        kind: ranked.first().map(|c| c.kind).unwrap_or_default(),
        full_name: first(ranked, |c| non_blank(&c.full_name)),
        given_name: first(ranked, |c| non_blank(&c.given_name)),
        family_name: first(ranked, |c| non_blank(&c.family_name)),
        company: first(ranked, |c| non_blank(&c.company)),
        emails: contact_points(ranked, |c| &c.emails, normalise_email),
        phones: contact_points(ranked, |c| &c.phones, normalise_phone),
        addresses: addresses(ranked),
        identifiers: identifiers(ranked),
        birth_date: first(ranked, |c| c.birth_date.as_ref()),
    }
}

fn contact_points(
    ranked: &[&Customer],
    values: impl Fn(&Customer) -> &Vec<String>,
    normalise: impl Fn(&str) -> Option<String>,
) -> Vec<ContactPoint> {
    let mut points: Vec<(String, BTreeSet<String>)> = Vec::new();
    for customer in ranked {
        for value in values(customer).iter().filter_map(|v| normalise(v)) {
            let system = customer.source.system.clone();
            match points.iter_mut().find(|(v, _)| *v == value) {
                Some((_, systems)) => {
                    systems.insert(system);
                }
                None => points.push((value, BTreeSet::from([system]))),
            }
        }
    }
    points
        .into_iter()
        .map(|(value, systems)| ContactPoint {
            value,
            systems: systems.into_iter().collect(),
        })
        .collect()
}

/// Addresses de-duplicated on a case- and space-insensitive key.
fn addresses(ranked: &[&Customer]) -> Vec<Address> {
    let key = |a: &Address| {
        let parts = a
            .lines
            .iter()
            .chain(&a.postcode)
            .chain(&a.city)
            .chain(&a.country)
            .map(|p| {
                p.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            });
        parts.collect::<Vec<_>>().join("|")
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for address in ranked.iter().flat_map(|c| &c.addresses) {
        if !address.is_empty() && seen.insert(key(address)) {
            out.push(address.clone());
        }
    }
    out
}

fn identifiers(ranked: &[&Customer]) -> Vec<Identifier> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for id in ranked.iter().flat_map(|c| &c.identifiers) {
        if let Some(value) = normalise_identifier(&id.value)
            && seen.insert((id.scheme.clone(), value.clone()))
        {
            out.push(Identifier {
                scheme: id.scheme.clone(),
                value,
            });
        }
    }
    out
}

fn metrics(orders: &[Order], settings: &ProfileSettings) -> OrderMetrics {
    let mut seen = BTreeSet::new();
    let mut count = 0u64;
    let mut value = Decimal::ZERO;
    let mut first_at = None;
    let mut last_at = None;
    for order in orders {
        if !order.status.counts_towards_value() || !seen.insert(&order.source) {
            continue;
        }
        let converted = match order_value(order) {
            Some(amount) => match convert(amount, order.currency.as_deref(), settings) {
                Some(v) => v,
                None => continue,
            },
            None => Decimal::ZERO,
        };
        count += 1;
        value += converted;
        if let Some(at) = order.ordered_at {
            first_at = Some(first_at.map_or(at, |f: jiff::Timestamp| f.min(at)));
            last_at = Some(last_at.map_or(at, |l: jiff::Timestamp| l.max(at)));
        }
    }
    let money = |amount: Decimal| Money {
        amount: amount.round_dp(2).normalize(),
        currency: settings.base_currency.clone(),
    };
    OrderMetrics {
        order_count: count,
        lifetime_value: money(value),
        average_order_value: (count > 0).then(|| money(value / Decimal::from(count))),
        first_order_at: first_at,
        last_order_at: last_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OrderStatus, PartyKind};
    use jiff::Timestamp;
    use std::str::FromStr;

    fn customer(system: &str, id: &str, updated: &str) -> Customer {
        Customer {
            source: SourceRef {
                system: system.into(),
                stream: "customers".into(),
                source_id: id.into(),
            },
            updated_at: Some(Timestamp::from_str(updated).unwrap()),
            ..Customer::default()
        }
    }

    fn order(id: &str, total: &str, currency: &str, status: OrderStatus, at: &str) -> Order {
        Order {
            source: SourceRef {
                system: "sap".into(),
                stream: "orders".into(),
                source_id: id.into(),
            },
            order_number: id.into(),
            customer_id: Some("1".into()),
            ordered_at: Some(Timestamp::from_str(at).unwrap()),
            status,
            currency: Some(currency.into()),
            total: Some(Decimal::from_str(total).unwrap()),
            lines: vec![],
        }
    }

    fn settings() -> ProfileSettings {
        ProfileSettings {
            base_currency: "EUR".into(),
            fx: BTreeMap::from([("USD".into(), Decimal::from_str("0.5").unwrap())]),
            source_priority: vec!["sap".into()],
        }
    }

    #[test]
    fn source_priority_wins_then_most_recent() {
        let mut sap = customer("sap", "1", "2024-01-01T00:00:00Z");
        sap.full_name = Some("Müller GmbH".into());
        let mut odoo_new = customer("odoo", "7", "2025-06-01T00:00:00Z");
        odoo_new.full_name = Some("MUELLER GMBH".into());
        odoo_new.company = Some("Müller Holding".into());
        odoo_new.kind = PartyKind::Organization;
        let mut odoo_old = customer("odoo", "8", "2023-06-01T00:00:00Z");
        odoo_old.company = Some("Old Name".into());
        odoo_old.given_name = Some("  ".into());

        let p = build(
            Uuid::nil(),
            1,
            vec![],
            &[odoo_old, odoo_new, sap],
            &[],
            &settings(),
        );
        assert_eq!(p.golden.full_name.as_deref(), Some("Müller GmbH"));
        assert_eq!(p.golden.company.as_deref(), Some("Müller Holding"));
        assert_eq!(p.golden.given_name, None, "blank values never survive");
        assert_eq!(p.sources.len(), 3);
        assert_eq!(p.sources[0].system, "odoo");
    }

    #[test]
    fn contact_points_are_deduplicated_with_their_systems() {
        let mut sap = customer("sap", "1", "2024-01-01T00:00:00Z");
        sap.emails = vec!["Anna@Example.com".into()];
        sap.phones = vec!["+49 89 1234567".into()];
        let mut shop = customer("shop", "K1", "2024-01-01T00:00:00Z");
        shop.emails = vec!["anna@example.com ".into(), "a.berg@example.org".into()];
        shop.phones = vec!["+49891234567".into()];
        let p = build(Uuid::nil(), 1, vec![], &[shop, sap], &[], &settings());
        assert_eq!(
            p.golden.emails,
            vec![
                ContactPoint {
                    value: "anna@example.com".into(),
                    systems: vec!["sap".into(), "shop".into()]
                },
                ContactPoint {
                    value: "a.berg@example.org".into(),
                    systems: vec!["shop".into()]
                },
            ]
        );
        assert_eq!(p.golden.phones.len(), 1);
        assert_eq!(p.golden.phones[0].value, "+49891234567");
    }

    #[test]
    fn metrics_convert_currency_and_skip_cancelled_orders() {
        let orders = [
            order(
                "A",
                "100.00",
                "EUR",
                OrderStatus::Fulfilled,
                "2024-01-10T00:00:00Z",
            ),
            order(
                "B",
                "50.10",
                "USD",
                OrderStatus::Open,
                "2024-03-10T00:00:00Z",
            ),
            order(
                "C",
                "999",
                "EUR",
                OrderStatus::Cancelled,
                "2025-01-10T00:00:00Z",
            ),
            order(
                "D",
                "10",
                "EUR",
                OrderStatus::Returned,
                "2025-02-10T00:00:00Z",
            ),
            order("E", "10", "XXX", OrderStatus::Open, "2025-02-10T00:00:00Z"),
        ];
        let p = build(
            Uuid::nil(),
            1,
            vec![],
            &[customer("sap", "1", "2024-01-01T00:00:00Z")],
            &orders,
            &settings(),
        );
        let m = p.metrics;
        assert_eq!(m.order_count, 2);
        assert_eq!(m.lifetime_value.amount.to_string(), "125.05");
        assert_eq!(m.lifetime_value.currency, "EUR");
        assert_eq!(
            m.average_order_value.map(|a| a.amount.to_string()),
            Some("62.52".into())
        );
        assert_eq!(
            m.first_order_at,
            Some(Timestamp::from_str("2024-01-10T00:00:00Z").unwrap())
        );
        assert_eq!(
            m.last_order_at,
            Some(Timestamp::from_str("2024-03-10T00:00:00Z").unwrap())
        );
    }

    #[test]
    fn no_orders_means_zero_value_and_no_average() {
        let p = build(
            Uuid::nil(),
            1,
            vec![],
            &[customer("sap", "1", "2024-01-01T00:00:00Z")],
            &[],
            &settings(),
        );
        assert_eq!(p.metrics.order_count, 0);
        assert_eq!(p.metrics.lifetime_value.amount, Decimal::ZERO);
        assert_eq!(p.metrics.average_order_value, None);
    }

    #[test]
    fn content_hash_ignores_version_bookkeeping_only() {
        let c = [customer("sap", "1", "2024-01-01T00:00:00Z")];
        let a = build(Uuid::nil(), 1, vec![], &c, &[], &settings());
        let b = build(
            Uuid::nil(),
            7,
            vec![Uuid::from_u128(9)],
            &c,
            &[],
            &settings(),
        );
        assert_eq!(a.content_hash(), b.content_hash());
        let mut c2 = c.clone();
        c2[0].full_name = Some("New".into());
        let d = build(Uuid::nil(), 1, vec![], &c2, &[], &settings());
        assert_ne!(a.content_hash(), d.content_hash());
    }
}
