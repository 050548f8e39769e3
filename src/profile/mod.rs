//! The profile builder: golden record by per-field survivorship, order metrics in the base
//! currency, segments (RFM, value tier, lifecycle), open orders with supply risk and data
//! quality. Pure: the caller passes the customer records of one identity, their orders, the
//! supply picture of the SKUs involved and the settings; [`build`] returns the
//! [`CustomerProfile`] content.
//!
//! Survivorship per field ([`Rule`], configured in `[profile.survivorship]`): source priority
//! (the system ranked highest in [`ProfileSettings::source_priority`], then the most recently
//! updated record), most recent, most complete (the longest value) or most frequent (the
//! value most records agree on after normalisation). Ties always fall to source priority,
//! then recency, then the smaller source ref, so the result never depends on input order.
//! Losing values are kept as [`Alternate`]s; strong fields (identifiers, birth date, legal
//! name) whose records disagree after normalisation are listed as [`Conflict`]s. E-mails,
//! phones, addresses and identifiers are collected from all records and de-duplicated after
//! normalisation, each contact point and address listing the systems it came from.
//!
//! Metrics are in the base currency. [`convert`] is the only place a rate is applied; an
//! amount whose currency has no rate is never converted at 1.0 — the pipeline quarantines
//! such orders before they reach the store, and [`build`] skips any that slip through.
//!
//! RFM scores need the whole customer base: [`build`] carries the previous version's scores
//! (and a percentile-based tier) forward, and [`resegment`] recomputes them over compact
//! metric rows of every live profile at the end of each run.
//!
//! Supply risk: [`allocate`] gives each SKU's available stock (summed over locations) to the
//! open order lines of that SKU, oldest order first across all customers; a short line is
//! `backorder` with a projected date of today + the shortest supplier lead time, or
//! `at_risk` without a date when no supplier lead time is known.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use jiff::civil::Date;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::model::profile::{
    AddressPoint, Alternate, CategoryCount, Conflict, ContactPoint, CustomerProfile, DataQuality,
    GoldenRecord, Lifecycle, LineStatus, Money, OpenLine, OpenOrder, OrderMetrics, Rfm,
    SCHEMA_VERSION, Segment, ValueTier,
};
use crate::model::{
    Address, Customer, Identifier, Inventory, Order, OrderStatus, PartyKind, Product, SourceRef,
    SupplierItem,
};
use crate::resolver::{normalise_email, normalise_identifier, normalise_phone};

/// How a golden-record field picks its value among the records of one customer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Rule {
    #[default]
    SourcePriority,
    MostRecent,
    MostComplete,
    MostFrequent,
}

impl Rule {
    pub const NAMES: [&'static str; 4] = [
        "source_priority",
        "most_recent",
        "most_complete",
        "most_frequent",
    ];

    pub fn parse(name: &str) -> Option<Rule> {
        Some(match name {
            "source_priority" => Rule::SourcePriority,
            "most_recent" => Rule::MostRecent,
            "most_complete" => Rule::MostComplete,
            "most_frequent" => Rule::MostFrequent,
            _ => return None,
        })
    }
}

/// The single-valued golden-record fields a survivorship rule can be set for.
pub const SURVIVORSHIP_FIELDS: [&str; 6] = [
    "kind",
    "full_name",
    "given_name",
    "family_name",
    "company",
    "birth_date",
];

/// What the value tier is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierBasis {
    /// Lifetime value in the base currency at least the threshold.
    Value,
    /// Percentile rank of lifetime value in the customer base (0-100) at least the threshold.
    Percentile,
}

/// Thresholds of the customer-value pyramid; a customer below `silver` is iron.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSettings {
    pub basis: TierBasis,
    pub diamond: Decimal,
    pub gold: Decimal,
    pub silver: Decimal,
}

impl Default for TierSettings {
    /// The classic pyramid: top 1 % diamond, next 4 % gold, next 15 % silver.
    fn default() -> Self {
        TierSettings {
            basis: TierBasis::Percentile,
            diamond: Decimal::from(99),
            gold: Decimal::from(95),
            silver: Decimal::from(80),
        }
    }
}

/// The loyalty ladder's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleSettings {
    /// Orders needed to be loyal (together with the tenure).
    pub loyal_orders: u64,
    /// Days since the first order needed to be loyal.
    pub loyal_tenure_days: i64,
    /// Days since the last order from which a customer is at risk.
    pub at_risk_days: i64,
    /// Days since the last order from which a customer is lapsed.
    pub lapsed_days: i64,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            loyal_orders: 5,
            loyal_tenure_days: 365,
            at_risk_days: 180,
            lapsed_days: 365,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSettings {
    /// ISO 4217 code all metrics are expressed in.
    pub base_currency: String,
    /// Units of base currency per unit of the keyed currency.
    pub fx: BTreeMap<String, Decimal>,
    /// Systems in descending trust.
    pub source_priority: Vec<String>,
    /// The rule of each field in [`SURVIVORSHIP_FIELDS`] that does not use `default_rule`.
    pub survivorship: BTreeMap<String, Rule>,
    pub default_rule: Rule,
    /// Order statuses whose orders count in neither order count nor value.
    pub value_excludes: Vec<OrderStatus>,
    pub tiers: TierSettings,
    pub lifecycle: LifecycleSettings,
    /// The date recency, lifecycle and projected dates are relative to.
    pub today: Date,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            base_currency: "EUR".into(),
            fx: BTreeMap::new(),
            source_priority: Vec::new(),
            survivorship: BTreeMap::new(),
            default_rule: Rule::SourcePriority,
            value_excludes: vec![OrderStatus::Cancelled, OrderStatus::Returned],
            tiers: TierSettings::default(),
            lifecycle: LifecycleSettings::default(),
            today: utc_today(),
        }
    }
}

impl ProfileSettings {
    fn rule(&self, field: &str) -> Rule {
        self.survivorship
            .get(field)
            .copied()
            .unwrap_or(self.default_rule)
    }

    fn counts(&self, status: OrderStatus) -> bool {
        !self.value_excludes.contains(&status)
    }
}

/// The current date in UTC.
pub fn utc_today() -> Date {
    Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date()
}

fn utc_date(at: Timestamp) -> Date {
    at.to_zoned(jiff::tz::TimeZone::UTC).date()
}

fn days_between(from: Date, to: Date) -> i64 {
    (to - from).get_days() as i64
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

/// Whether an order still has something to ship.
pub fn is_open(order: &Order) -> bool {
    matches!(
        order.status,
        OrderStatus::Open | OrderStatus::PartiallyFulfilled
    )
}

/// The SKUs of the open lines of `orders`.
pub fn open_skus<'a>(orders: impl IntoIterator<Item = &'a Order>) -> BTreeSet<String> {
    orders
        .into_iter()
        .filter(|o| is_open(o))
        .flat_map(|o| &o.lines)
        .filter_map(|l| l.sku.clone())
        .collect()
}

/// The supply picture of some SKUs: each open order line's allocation, keyed by the order's
/// source ref and the line's position, and each SKU's product category.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Supply {
    pub lines: HashMap<(SourceRef, usize), (Decimal, LineStatus, Option<Date>)>,
    pub categories: HashMap<String, String>,
}

fn available(item: &Inventory) -> Decimal {
    item.available
        .or_else(|| {
            item.on_hand
                .map(|on_hand| on_hand - item.reserved.unwrap_or_default())
        })
        .unwrap_or_default()
        .max(Decimal::ZERO)
}

/// Allocates each SKU's available stock (all locations) to the open lines of `open_orders`
/// on that SKU, oldest order first (orders without a date last, then by source ref and line
/// position). `open_orders` must hold every open order with a line on the SKUs concerned,
/// whichever customer it belongs to; only lines on `skus` are allocated.
pub fn allocate(
    open_orders: &[Order],
    inventory: &[Inventory],
    supplier_items: &[SupplierItem],
    products: &[Product],
    skus: &BTreeSet<String>,
    today: Date,
) -> Supply {
    let mut stock: HashMap<&str, Decimal> = HashMap::new();
    for item in inventory {
        *stock.entry(item.sku.as_str()).or_default() += available(item);
    }
    let mut lead: HashMap<&str, i64> = HashMap::new();
    for item in supplier_items {
        if let Some(days) = item.lead_time_days.filter(|d| *d >= 0) {
            let entry = lead.entry(item.sku.as_str()).or_insert(days);
            *entry = (*entry).min(days);
        }
    }
    let mut orders: Vec<&Order> = open_orders.iter().filter(|o| is_open(o)).collect();
    orders.sort_by(|a, b| {
        (a.ordered_at.is_none(), a.ordered_at, &a.source).cmp(&(
            b.ordered_at.is_none(),
            b.ordered_at,
            &b.source,
        ))
    });
    orders.dedup_by(|a, b| a.source == b.source);
    let mut lines = HashMap::new();
    for order in orders {
        for (index, line) in order.lines.iter().enumerate() {
            let (Some(sku), Some(quantity)) = (&line.sku, line.quantity) else {
                continue;
            };
            if quantity <= Decimal::ZERO || !skus.contains(sku) {
                continue;
            }
            let left = stock.entry(sku.as_str()).or_default();
            let allocated = quantity.min(*left);
            *left -= allocated;
            let outcome = if allocated == quantity {
                (allocated, LineStatus::Available, None)
            } else {
                match lead.get(sku.as_str()).and_then(|days| {
                    jiff::Span::new()
                        .try_days(*days)
                        .ok()
                        .and_then(|span| today.checked_add(span).ok())
                }) {
                    Some(date) => (allocated, LineStatus::Backorder, Some(date)),
                    None => (allocated, LineStatus::AtRisk, None),
                }
            };
            lines.insert((order.source.clone(), index), outcome);
        }
    }
    let categories = products
        .iter()
        .filter_map(|p| Some((p.sku.clone(), p.category.clone()?)))
        .collect();
    Supply { lines, categories }
}

/// Builds the profile content of one identity. `version` and `merged_ids` are bookkeeping
/// the caller decides; `previous` is the latest stored segment, whose base-relative parts
/// (RFM, a percentile tier) are carried until [`resegment`] recomputes them.
#[allow(clippy::too_many_arguments)]
pub fn build(
    profile_id: Uuid,
    version: i64,
    merged_ids: Vec<Uuid>,
    customers: &[Customer],
    orders: &[Order],
    supply: &Supply,
    previous: Option<&Segment>,
    settings: &ProfileSettings,
) -> CustomerProfile {
    let ranked = rank(customers, &settings.source_priority);
    let survivorship = survive(&ranked, settings);
    let metrics = metrics(orders, settings);
    let lifecycle = lifecycle(
        metrics.order_count,
        metrics.first_order_at,
        metrics.last_order_at,
        settings,
    );
    let value_tier = match settings.tiers.basis {
        TierBasis::Value => tier_of(metrics.lifetime_value.amount, &settings.tiers),
        TierBasis::Percentile => previous.map(|s| s.value_tier).unwrap_or_default(),
    };
    let segment = Segment {
        rfm: previous
            .and_then(|s| s.rfm)
            .filter(|_| metrics.order_count > 0),
        value_tier,
        lifecycle,
    };
    let open_orders = open_orders(orders, supply);
    let earliest_projected_date = open_orders
        .iter()
        .flat_map(|o| &o.lines)
        .filter_map(|l| l.projected_date)
        .min();
    let data_quality = quality(&survivorship.golden, survivorship.conflicts.len());
    CustomerProfile {
        schema_version: SCHEMA_VERSION.to_string(),
        profile_id,
        version,
        merged_ids,
        golden: survivorship.golden,
        alternates: survivorship.alternates,
        conflicts: survivorship.conflicts,
        metrics,
        segment,
        open_orders,
        earliest_projected_date,
        top_categories: top_categories(orders, supply, settings),
        data_quality,
        as_of: Some(settings.today),
        sources: {
            let mut sources: Vec<SourceRef> = customers.iter().map(|c| c.source.clone()).collect();
            sources.sort();
            sources.dedup();
            sources
        },
    }
}

/// Customers in source-priority order: priority rank, then most recent update, then source
/// ref.
fn rank<'a>(customers: &'a [Customer], priority: &[String]) -> Vec<&'a Customer> {
    let mut ranked: Vec<&Customer> = customers.iter().collect();
    ranked.sort_by_key(|c| {
        (
            rank_of(c, priority),
            Reverse(c.updated_at.or(c.created_at)),
            c.source.clone(),
        )
    });
    ranked
}

fn rank_of(c: &Customer, priority: &[String]) -> usize {
    priority
        .iter()
        .position(|s| *s == c.source.system)
        .unwrap_or(priority.len())
}

fn non_blank(value: &Option<String>) -> Option<String> {
    value
        .as_ref()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The comparison key of a text value: lower case, German umlauts and ß spelled out, only
/// letters and digits, so `Müller GmbH` and `MUELLER GMBH.` agree.
pub fn text_key(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars().flat_map(char::to_lowercase) {
        match c {
            'ä' => out.push_str("ae"),
            'ö' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'ß' => out.push_str("ss"),
            c if c.is_alphanumeric() => out.push(c),
            _ => {}
        }
    }
    out
}

struct Survivorship {
    golden: GoldenRecord,
    alternates: Vec<Alternate>,
    conflicts: Vec<Conflict>,
}

/// One candidate value of a field: its display form, comparison key and record.
struct Candidate<'a> {
    value: String,
    key: String,
    customer: &'a Customer,
    /// Position in source-priority order.
    rank: usize,
}

/// Picks the surviving value of one field by `rule`; returns the survivor's key and the
/// candidates grouped by key in survivorship order (the survivor's group first).
fn pick<'a>(mut candidates: Vec<Candidate<'a>>, rule: Rule) -> Vec<Vec<Candidate<'a>>> {
    let recency = |c: &Candidate| Reverse(c.customer.updated_at.or(c.customer.created_at));
    match rule {
        Rule::SourcePriority => candidates.sort_by_key(|c| c.rank),
        Rule::MostRecent => candidates.sort_by_key(|c| (recency(c), c.rank)),
        Rule::MostComplete => candidates.sort_by_key(|c| {
            (
                Reverse(c.value.chars().filter(|ch| !ch.is_whitespace()).count()),
                c.rank,
            )
        }),
        Rule::MostFrequent => {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for c in &candidates {
                *counts.entry(c.key.as_str()).or_default() += 1;
            }
            let counts: HashMap<String, usize> = counts
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            candidates.sort_by_key(|c| (Reverse(counts[&c.key]), c.rank));
        }
    }
    let mut groups: Vec<Vec<Candidate>> = Vec::new();
    for candidate in candidates {
        match groups.iter_mut().find(|g| g[0].key == candidate.key) {
            Some(group) => group.push(candidate),
            None => groups.push(vec![candidate]),
        }
    }
    groups
}

fn survive(ranked: &[&Customer], settings: &ProfileSettings) -> Survivorship {
    let mut alternates = Vec::new();
    let mut conflicts = Vec::new();
    let mut field = |name: &str, value: &dyn Fn(&Customer) -> Option<String>, strong: bool| {
        let candidates: Vec<Candidate> = ranked
            .iter()
            .enumerate()
            .filter_map(|(rank, c)| {
                let value = value(c)?;
                Some(Candidate {
                    key: text_key(&value),
                    value,
                    customer: c,
                    rank,
                })
            })
            .collect();
        let groups = pick(candidates, settings.rule(name));
        let survivor = groups.first().map(|g| g[0].value.clone());
        if strong && groups.len() > 1 {
            conflicts.push(Conflict {
                field: if name == "company" {
                    "legal_name".to_string()
                } else {
                    name.to_string()
                },
                values: groups.iter().map(|g| g[0].value.clone()).collect(),
            });
        }
        if name != "kind" {
            for group in groups.iter().skip(1) {
                let mut sources: Vec<SourceRef> =
                    group.iter().map(|c| c.customer.source.clone()).collect();
                sources.sort();
                alternates.push(Alternate {
                    field: name.to_string(),
                    value: group[0].value.clone(),
                    sources,
                });
            }
        }
        survivor
    };
    let kind = field(
        "kind",
        &|c| {
            Some(
                match c.kind {
                    PartyKind::Person => "person",
                    PartyKind::Organization => "organization",
                }
                .to_string(),
            )
        },
        false,
    );
    let full_name = field("full_name", &|c| non_blank(&c.full_name), false);
    let given_name = field("given_name", &|c| non_blank(&c.given_name), false);
    let family_name = field("family_name", &|c| non_blank(&c.family_name), false);
    let company = field("company", &|c| non_blank(&c.company), true);
    let birth_date = field("birth_date", &|c| c.birth_date.map(|d| d.to_string()), true);
    let identifiers = identifiers(ranked, &mut conflicts);
    let golden = GoldenRecord {
        kind: match kind.as_deref() {
            Some("person") => PartyKind::Person,
            Some(_) => PartyKind::Organization,
            None => PartyKind::default(),
        },
        full_name,
        given_name,
        family_name,
        company,
        emails: contact_points(ranked, |c| &c.emails, normalise_email),
        phones: contact_points(ranked, |c| &c.phones, normalise_phone),
        addresses: addresses(ranked),
        identifiers,
        birth_date: birth_date.and_then(|d| d.parse().ok()),
    };
    Survivorship {
        golden,
        alternates,
        conflicts,
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

/// Addresses de-duplicated on a case-, space- and punctuation-insensitive key, each with the
/// systems it came from.
fn addresses(ranked: &[&Customer]) -> Vec<AddressPoint> {
    let key = |a: &Address| {
        a.lines
            .iter()
            .chain(&a.postcode)
            .chain(&a.city)
            .chain(&a.country)
            .map(|p| text_key(p))
            .collect::<Vec<_>>()
            .join("|")
    };
    let mut out: Vec<(String, AddressPoint)> = Vec::new();
    for customer in ranked {
        for address in customer.addresses.iter().filter(|a| !a.is_empty()) {
            let k = key(address);
            let system = &customer.source.system;
            match out.iter_mut().find(|(existing, _)| *existing == k) {
                Some((_, point)) => {
                    if !point.systems.contains(system) {
                        point.systems.push(system.clone());
                        point.systems.sort();
                    }
                }
                None => out.push((
                    k,
                    AddressPoint {
                        address: address.clone(),
                        systems: vec![system.clone()],
                    },
                )),
            }
        }
    }
    out.into_iter().map(|(_, point)| point).collect()
}

/// Identifiers de-duplicated after normalisation; a scheme with more than one value is a
/// conflict (`identifier:<scheme>`, values in source-priority order).
fn identifiers(ranked: &[&Customer], conflicts: &mut Vec<Conflict>) -> Vec<Identifier> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut by_scheme: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in ranked.iter().flat_map(|c| &c.identifiers) {
        if let Some(value) = normalise_identifier(&id.value)
            && seen.insert((id.scheme.clone(), value.clone()))
        {
            by_scheme
                .entry(id.scheme.clone())
                .or_default()
                .push(value.clone());
            out.push(Identifier {
                scheme: id.scheme.clone(),
                value,
            });
        }
    }
    for (scheme, values) in by_scheme {
        if values.len() > 1 {
            conflicts.push(Conflict {
                field: format!("identifier:{scheme}"),
                values,
            });
        }
    }
    out
}

/// The expected fields: a name, an e-mail address, a phone number, a postal address with
/// street, postcode and city, its country, and an identifier (organisations) or a birth
/// date (people).
fn quality(golden: &GoldenRecord, conflicts: usize) -> DataQuality {
    let full_address = golden.addresses.iter().any(|a| {
        !a.address.lines.is_empty() && a.address.postcode.is_some() && a.address.city.is_some()
    });
    let checks = [
        (
            "name",
            golden.full_name.is_some() || golden.company.is_some(),
        ),
        ("email", !golden.emails.is_empty()),
        ("phone", !golden.phones.is_empty()),
        ("address", full_address),
        (
            "country",
            golden.addresses.iter().any(|a| a.address.country.is_some()),
        ),
        match golden.kind {
            PartyKind::Organization => ("identifier", !golden.identifiers.is_empty()),
            PartyKind::Person => ("birth_date", golden.birth_date.is_some()),
        },
    ];
    let present = checks.iter().filter(|(_, ok)| *ok).count();
    DataQuality {
        completeness: ((present * 100 + checks.len() / 2) / checks.len()) as u8,
        missing: checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name.to_string())
            .collect(),
        conflict_count: conflicts as u64,
    }
}

fn metrics(orders: &[Order], settings: &ProfileSettings) -> OrderMetrics {
    let mut seen = BTreeSet::new();
    let mut count = 0u64;
    let mut value = Decimal::ZERO;
    let mut first_at = None;
    let mut last_at = None;
    for order in orders {
        if !settings.counts(order.status) || !seen.insert(&order.source) {
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
            first_at = Some(first_at.map_or(at, |f: Timestamp| f.min(at)));
            last_at = Some(last_at.map_or(at, |l: Timestamp| l.max(at)));
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
        days_since_last_order: last_at.map(|at| days_between(utc_date(at), settings.today)),
    }
}

/// The loyalty ladder: prospect (no counted order), new (one), repeat, loyal (at least
/// `loyal_orders` orders over at least `loyal_tenure_days`); lapsed and at risk when the last
/// order is at least `lapsed_days` / `at_risk_days` ago.
pub fn lifecycle(
    order_count: u64,
    first_order_at: Option<Timestamp>,
    last_order_at: Option<Timestamp>,
    settings: &ProfileSettings,
) -> Lifecycle {
    let limits = &settings.lifecycle;
    if order_count == 0 {
        return Lifecycle::Prospect;
    }
    if let Some(last) = last_order_at {
        let recency = days_between(utc_date(last), settings.today);
        if recency >= limits.lapsed_days {
            return Lifecycle::Lapsed;
        }
        if recency >= limits.at_risk_days {
            return Lifecycle::AtRisk;
        }
    }
    if order_count == 1 {
        return Lifecycle::New;
    }
    let tenure = first_order_at.map(|first| days_between(utc_date(first), settings.today));
    if order_count >= limits.loyal_orders && tenure.is_some_and(|t| t >= limits.loyal_tenure_days) {
        Lifecycle::Loyal
    } else {
        Lifecycle::Repeat
    }
}

/// The tier of a measure (lifetime value or percentile rank) against the thresholds.
pub fn tier_of(measure: Decimal, tiers: &TierSettings) -> ValueTier {
    if measure >= tiers.diamond {
        ValueTier::Diamond
    } else if measure >= tiers.gold {
        ValueTier::Gold
    } else if measure >= tiers.silver {
        ValueTier::Silver
    } else {
        ValueTier::Iron
    }
}

fn open_orders(orders: &[Order], supply: &Supply) -> Vec<OpenOrder> {
    let mut out: Vec<OpenOrder> = Vec::new();
    let mut seen = BTreeSet::new();
    for order in orders.iter().filter(|o| is_open(o)) {
        if !seen.insert(&order.source) {
            continue;
        }
        let mut lines = Vec::new();
        for (index, line) in order.lines.iter().enumerate() {
            let (Some(sku), Some(quantity)) = (&line.sku, line.quantity) else {
                continue;
            };
            if quantity <= Decimal::ZERO {
                continue;
            }
            let (allocated, status, projected_date) = supply
                .lines
                .get(&(order.source.clone(), index))
                .copied()
                .unwrap_or((Decimal::ZERO, LineStatus::AtRisk, None));
            lines.push(OpenLine {
                line_number: line.line_number.clone(),
                sku: sku.clone(),
                quantity: quantity.normalize(),
                allocated: allocated.normalize(),
                status,
                projected_date,
                promised_date: line.promised_date,
            });
        }
        out.push(OpenOrder {
            source: order.source.clone(),
            order_number: order.order_number.clone(),
            status: order.status,
            ordered_at: order.ordered_at,
            supply_status: lines.iter().map(|l| l.status).max().unwrap_or_default(),
            lines,
        });
    }
    out.sort_by(|a, b| (a.ordered_at, &a.source).cmp(&(b.ordered_at, &b.source)));
    out
}

fn top_categories(
    orders: &[Order],
    supply: &Supply,
    settings: &ProfileSettings,
) -> Vec<CategoryCount> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for order in orders {
        if !settings.counts(order.status) || !seen.insert(&order.source) {
            continue;
        }
        for sku in order.lines.iter().filter_map(|l| l.sku.as_deref()) {
            if let Some(category) = supply.categories.get(sku) {
                *counts.entry(category.as_str()).or_default() += 1;
            }
        }
    }
    let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
    ranked.sort_by_key(|(category, n)| (Reverse(*n), *category));
    ranked
        .into_iter()
        .take(3)
        .map(|(category, order_lines)| CategoryCount {
            category: category.to_string(),
            order_lines,
        })
        .collect()
}

/// The compact figures of one live profile that segmentation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub profile_id: Uuid,
    pub order_count: u64,
    pub lifetime_value: Decimal,
    pub first_order_at: Option<Timestamp>,
    pub last_order_at: Option<Timestamp>,
    /// The segment of the latest stored version.
    pub segment: Segment,
}

/// The quintile score (1-5) of each value among `values`: 1 + ⌊5 · (values strictly
/// smaller) / n⌋, so equal values share a score and the top fifth scores 5.
fn quintiles<T: Ord + Copy>(values: &[T]) -> Vec<u8> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let n = values.len().max(1);
    values
        .iter()
        .map(|v| {
            let below = sorted.partition_point(|x| x < v);
            (1 + 5 * below / n) as u8
        })
        .collect()
}

/// Recomputes the segment of every profile over the whole customer base: RFM quintiles among
/// the customers with counted orders (recency by last order date, frequency by order count,
/// monetary by lifetime value), the value tier (by value or by percentile rank of lifetime
/// value among all profiles) and the lifecycle stage as of today. Returns only the profiles
/// whose segment differs from the stored one, by profile id.
pub fn resegment(rows: &[MetricRow], settings: &ProfileSettings) -> Vec<(Uuid, Segment)> {
    let buyers: Vec<&MetricRow> = rows.iter().filter(|r| r.order_count > 0).collect();
    let recency = quintiles(&buyers.iter().map(|r| r.last_order_at).collect::<Vec<_>>());
    let frequency = quintiles(&buyers.iter().map(|r| r.order_count).collect::<Vec<_>>());
    let monetary = quintiles(&buyers.iter().map(|r| r.lifetime_value).collect::<Vec<_>>());
    let rfm: HashMap<Uuid, Rfm> = buyers
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                r.profile_id,
                Rfm {
                    recency: recency[i],
                    frequency: frequency[i],
                    monetary: monetary[i],
                },
            )
        })
        .collect();
    let mut values: Vec<Decimal> = rows.iter().map(|r| r.lifetime_value).collect();
    values.sort();
    let n = Decimal::from(rows.len().max(1) as u64);
    let mut changed: Vec<(Uuid, Segment)> = rows
        .iter()
        .filter_map(|row| {
            let measure = match settings.tiers.basis {
                TierBasis::Value => row.lifetime_value,
                TierBasis::Percentile => {
                    let below = values.partition_point(|v| *v < row.lifetime_value);
                    Decimal::from(below as u64 * 100) / n
                }
            };
            let segment = Segment {
                rfm: rfm.get(&row.profile_id).copied(),
                value_tier: tier_of(measure, &settings.tiers),
                lifecycle: lifecycle(
                    row.order_count,
                    row.first_order_at,
                    row.last_order_at,
                    settings,
                ),
            };
            (segment != row.segment).then_some((row.profile_id, segment))
        })
        .collect();
    changed.sort_by_key(|(id, _)| *id);
    changed
}

/// A stored profile with a recomputed segment: the segment and the date-relative figures
/// (days since the last order, `as_of`) are brought up to today.
pub fn with_segment(
    mut profile: CustomerProfile,
    segment: Segment,
    settings: &ProfileSettings,
) -> CustomerProfile {
    profile.segment = segment;
    profile.metrics.days_since_last_order = profile
        .metrics
        .last_order_at
        .map(|at| days_between(utc_date(at), settings.today));
    profile.as_of = Some(settings.today);
    profile
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
            today: Date::constant(2026, 11, 23),
            ..ProfileSettings::default()
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
            &Supply::default(),
            None,
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
        let p = build(
            Uuid::nil(),
            1,
            vec![],
            &[shop, sap],
            &[],
            &Supply::default(),
            None,
            &settings(),
        );
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
            &Supply::default(),
            None,
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
            &Supply::default(),
            None,
            &settings(),
        );
        assert_eq!(p.metrics.order_count, 0);
        assert_eq!(p.metrics.lifetime_value.amount, Decimal::ZERO);
        assert_eq!(p.metrics.average_order_value, None);
    }

    #[test]
    fn content_hash_ignores_version_bookkeeping_only() {
        let c = [customer("sap", "1", "2024-01-01T00:00:00Z")];
        let a = build(
            Uuid::nil(),
            1,
            vec![],
            &c,
            &[],
            &Supply::default(),
            None,
            &settings(),
        );
        let b = build(
            Uuid::nil(),
            7,
            vec![Uuid::from_u128(9)],
            &c,
            &[],
            &Supply::default(),
            None,
            &settings(),
        );
        assert_eq!(a.content_hash(), b.content_hash());
        let mut c2 = c.clone();
        c2[0].full_name = Some("New".into());
        let d = build(
            Uuid::nil(),
            1,
            vec![],
            &c2,
            &[],
            &Supply::default(),
            None,
            &settings(),
        );
        assert_ne!(a.content_hash(), d.content_hash());
    }

    fn ts(text: &str) -> Timestamp {
        Timestamp::from_str(text).unwrap()
    }

    fn named(system: &str, id: &str, updated: &str, name: &str) -> Customer {
        let mut c = customer(system, id, updated);
        c.full_name = Some(name.into());
        c
    }

    fn rule_settings(field: &str, rule: Rule) -> ProfileSettings {
        ProfileSettings {
            source_priority: vec!["sap".into(), "shop".into(), "odoo".into()],
            survivorship: BTreeMap::from([(field.to_string(), rule)]),
            ..settings()
        }
    }

    /// Three records of one customer: SAP (trusted, oldest), shop (newest, longest name),
    /// Odoo (agrees with the shop after normalisation).
    fn three_records() -> Vec<Customer> {
        let mut sap = named("sap", "1", "2024-01-01T00:00:00Z", "Müller GmbH");
        sap.company = Some("Müller GmbH".into());
        sap.identifiers = vec![Identifier {
            scheme: "vat".into(),
            value: "DE123456789".into(),
        }];
        sap.birth_date = Some(Date::constant(1970, 1, 1));
        let mut shop = named(
            "shop",
            "K1",
            "2026-05-01T00:00:00Z",
            "Müller Maschinenbau GmbH",
        );
        shop.company = Some("Mueller Maschinenbau GmbH".into());
        shop.identifiers = vec![Identifier {
            scheme: "vat".into(),
            value: "DE 987 654 321".into(),
        }];
        shop.birth_date = Some(Date::constant(1970, 1, 2));
        let mut odoo = named(
            "odoo",
            "7",
            "2025-01-01T00:00:00Z",
            "MUELLER MASCHINENBAU GMBH",
        );
        odoo.birth_date = Some(Date::constant(1970, 1, 2));
        odoo.identifiers = vec![Identifier {
            scheme: "vat".into(),
            value: "de123456789".into(),
        }];
        vec![odoo, shop, sap]
    }

    fn built(settings: &ProfileSettings) -> CustomerProfile {
        build(
            Uuid::nil(),
            1,
            vec![],
            &three_records(),
            &[],
            &Supply::default(),
            None,
            settings,
        )
    }

    #[test]
    fn survivorship_source_priority_keeps_the_losers_as_alternates() {
        let p = built(&rule_settings("full_name", Rule::SourcePriority));
        assert_eq!(p.golden.full_name.as_deref(), Some("Müller GmbH"));
        let alternates: Vec<(&str, &str, Vec<&str>)> = p
            .alternates
            .iter()
            .filter(|a| a.field == "full_name")
            .map(|a| {
                (
                    a.field.as_str(),
                    a.value.as_str(),
                    a.sources.iter().map(|s| s.system.as_str()).collect(),
                )
            })
            .collect();
        // Shop and Odoo agree after normalisation: one alternate held by both.
        assert_eq!(
            alternates,
            [(
                "full_name",
                "Müller Maschinenbau GmbH",
                vec!["odoo", "shop"]
            )]
        );
    }

    #[test]
    fn survivorship_most_recent_takes_the_newest_record() {
        let p = built(&rule_settings("full_name", Rule::MostRecent));
        assert_eq!(
            p.golden.full_name.as_deref(),
            Some("Müller Maschinenbau GmbH")
        );
        assert!(
            p.alternates
                .iter()
                .any(|a| a.field == "full_name" && a.value == "Müller GmbH")
        );
    }

    #[test]
    fn survivorship_most_complete_takes_the_longest_value() {
        let mut records = three_records();
        records[1].full_name = Some("Müller Maschinenbau".into()); // the newest, now shorter
        let p = build(
            Uuid::nil(),
            1,
            vec![],
            &records,
            &[],
            &Supply::default(),
            None,
            &rule_settings("full_name", Rule::MostComplete),
        );
        // Odoo's upper-case spelling is the longest (UE for Ü); SAP's is the most trusted.
        assert_eq!(
            p.golden.full_name.as_deref(),
            Some("MUELLER MASCHINENBAU GMBH")
        );
    }

    #[test]
    fn survivorship_most_frequent_takes_the_value_most_records_agree_on() {
        let p = built(&rule_settings("full_name", Rule::MostFrequent));
        // Shop and Odoo agree (after normalisation) against SAP; the shop ranks higher, so
        // its spelling represents the group.
        assert_eq!(
            p.golden.full_name.as_deref(),
            Some("Müller Maschinenbau GmbH")
        );
        let p = built(&rule_settings("birth_date", Rule::MostFrequent));
        assert_eq!(p.golden.birth_date, Some(Date::constant(1970, 1, 2)));
        let p = built(&rule_settings("birth_date", Rule::SourcePriority));
        assert_eq!(p.golden.birth_date, Some(Date::constant(1970, 1, 1)));
    }

    #[test]
    fn strong_field_disagreements_are_conflicts() {
        let p = built(&rule_settings("full_name", Rule::SourcePriority));
        let conflict = |field: &str| {
            p.conflicts
                .iter()
                .find(|c| c.field == field)
                .unwrap_or_else(|| panic!("no conflict on {field}: {:?}", p.conflicts))
                .values
                .clone()
        };
        assert_eq!(conflict("birth_date"), ["1970-01-01", "1970-01-02"]);
        // Müller GmbH and Mueller Maschinenbau GmbH are different legal names.
        assert_eq!(
            conflict("legal_name"),
            ["Müller GmbH", "Mueller Maschinenbau GmbH"]
        );
        // `de123456789` and `DE123456789` are one VAT number; `DE 987 654 321` is another.
        assert_eq!(conflict("identifier:vat"), ["DE123456789", "DE987654321"]);
        assert_eq!(p.conflicts.len(), 3);
        assert_eq!(p.data_quality.conflict_count, 3);
        // A full name is not a strong field: the spellings differ but no conflict is listed.
        assert!(p.conflicts.iter().all(|c| c.field != "full_name"));
    }

    #[test]
    fn agreeing_records_have_no_conflicts() {
        let mut records = three_records();
        for r in &mut records {
            r.birth_date = Some(Date::constant(1970, 1, 1));
            r.company = Some("MÜLLER  GmbH.".into());
            r.identifiers.clear();
        }
        let p = build(
            Uuid::nil(),
            1,
            vec![],
            &records,
            &[],
            &Supply::default(),
            None,
            &settings(),
        );
        assert_eq!(p.conflicts, vec![]);
    }

    #[test]
    fn addresses_are_deduplicated_with_their_systems_and_completeness_counts_fields() {
        let address = |street: &str| Address {
            lines: vec![street.into()],
            city: Some("München".into()),
            postcode: Some("80331".into()),
            country: Some("DE".into()),
            region: None,
        };
        let mut sap = customer("sap", "1", "2024-01-01T00:00:00Z");
        sap.full_name = Some("Anna".into());
        sap.kind = PartyKind::Person;
        sap.addresses = vec![address("Hauptstraße 1")];
        let mut shop = customer("shop", "K1", "2024-01-01T00:00:00Z");
        shop.addresses = vec![address("HAUPTSTRASSE 1"), address("Nebenweg 2")];
        shop.emails = vec!["anna@example.com".into()];
        let p = build(
            Uuid::nil(),
            1,
            vec![],
            &[shop, sap],
            &[],
            &Supply::default(),
            None,
            &settings(),
        );
        assert_eq!(p.golden.addresses.len(), 2);
        assert_eq!(p.golden.addresses[0].systems, ["sap", "shop"]);
        assert_eq!(p.golden.addresses[1].systems, ["shop"]);
        // name, email, address, country present; phone and birth date missing: 4 of 6.
        assert_eq!(p.data_quality.completeness, 67);
        assert_eq!(p.data_quality.missing, ["phone", "birth_date"]);
    }

    #[test]
    fn excluded_statuses_are_configurable() {
        let orders = [
            order(
                "A",
                "100",
                "EUR",
                OrderStatus::Fulfilled,
                "2026-01-10T00:00:00Z",
            ),
            order(
                "B",
                "40",
                "EUR",
                OrderStatus::Returned,
                "2026-02-10T00:00:00Z",
            ),
        ];
        let mut s = settings();
        s.value_excludes = vec![OrderStatus::Cancelled];
        let p = build(
            Uuid::nil(),
            1,
            vec![],
            &[customer("sap", "1", "2024-01-01T00:00:00Z")],
            &orders,
            &Supply::default(),
            None,
            &s,
        );
        assert_eq!(p.metrics.order_count, 2);
        assert_eq!(p.metrics.lifetime_value.amount.to_string(), "140");
        // 2026-02-10 to 2026-11-23.
        assert_eq!(p.metrics.days_since_last_order, Some(286));
    }

    #[test]
    fn convert_uses_the_rate_and_never_assumes_one_to_one() {
        let s = settings();
        let d = |t: &str| Decimal::from_str(t).unwrap();
        assert_eq!(convert(d("10"), Some("USD"), &s), Some(d("5.0")));
        assert_eq!(convert(d("10"), Some("EUR"), &s), Some(d("10")));
        assert_eq!(convert(d("10"), None, &s), Some(d("10")));
        assert_eq!(convert(d("10"), Some("GBP"), &s), None);
    }

    fn row(id: u128, count: u64, value: &str, last: Option<&str>) -> MetricRow {
        MetricRow {
            profile_id: Uuid::from_u128(id),
            order_count: count,
            lifetime_value: Decimal::from_str(value).unwrap(),
            first_order_at: last.map(|_| ts("2024-01-01T00:00:00Z")),
            last_order_at: last.map(ts),
            segment: Segment::default(),
        }
    }

    /// Ten buyers and one prospect, checked by hand: with n = 10 the score is
    /// 1 + ⌊5 · below / 10⌋, so two customers per quintile; ties share the lower score.
    #[test]
    fn rfm_quintiles_and_value_tiers_on_a_hand_checked_fixture() {
        let rows = vec![
            row(1, 1, "100", Some("2026-01-01T00:00:00Z")),
            row(2, 1, "200", Some("2026-02-01T00:00:00Z")),
            row(3, 2, "300", Some("2026-03-01T00:00:00Z")),
            row(4, 2, "400", Some("2026-04-01T00:00:00Z")),
            row(5, 3, "500", Some("2026-05-01T00:00:00Z")),
            row(6, 3, "999.99", Some("2026-06-01T00:00:00Z")),
            row(7, 4, "1000", Some("2026-07-01T00:00:00Z")),
            row(8, 4, "4999.99", Some("2026-08-01T00:00:00Z")),
            row(9, 5, "5000", Some("2026-09-01T00:00:00Z")),
            row(10, 6, "10000", Some("2026-09-01T00:00:00Z")),
            row(11, 0, "0", None),
        ];
        let mut s = settings();
        s.tiers = TierSettings {
            basis: TierBasis::Value,
            diamond: Decimal::from(10000),
            gold: Decimal::from(5000),
            silver: Decimal::from(1000),
        };
        let segments: HashMap<Uuid, Segment> = resegment(&rows, &s).into_iter().collect();
        let rfm = |id: u128| {
            let r = segments[&Uuid::from_u128(id)].rfm.unwrap();
            (r.recency, r.frequency, r.monetary)
        };
        assert_eq!(rfm(1), (1, 1, 1));
        assert_eq!(rfm(2), (1, 1, 1));
        assert_eq!(rfm(3), (2, 2, 2));
        assert_eq!(rfm(4), (2, 2, 2));
        assert_eq!(rfm(5), (3, 3, 3));
        assert_eq!(rfm(6), (3, 3, 3));
        assert_eq!(rfm(7), (4, 4, 4));
        assert_eq!(rfm(8), (4, 4, 4));
        // 9 and 10 ordered last on the same day: both have 8 below them.
        assert_eq!(rfm(9), (5, 5, 5));
        assert_eq!(rfm(10), (5, 5, 5));
        assert!(
            segments
                .get(&Uuid::from_u128(11))
                .is_none_or(|prospect| prospect.rfm.is_none()),
            "no orders, no RFM"
        );
        let tier = |id: u128| {
            segments
                .get(&Uuid::from_u128(id))
                .map_or(ValueTier::Iron, |s| s.value_tier)
        };
        assert_eq!(tier(6), ValueTier::Iron, "999.99 is below silver");
        assert_eq!(tier(7), ValueTier::Silver, "1000 is silver");
        assert_eq!(tier(8), ValueTier::Silver);
        assert_eq!(tier(9), ValueTier::Gold, "5000 is gold");
        assert_eq!(tier(10), ValueTier::Diamond, "10000 is diamond");
        assert_eq!(tier(11), ValueTier::Iron);

        // Percentile basis over all 11 profiles: rank = 100 · below / 11.
        s.tiers = TierSettings {
            basis: TierBasis::Percentile,
            diamond: Decimal::from(90),
            gold: Decimal::from(80),
            silver: Decimal::from(50),
        };
        let segments: HashMap<Uuid, Segment> = resegment(&rows, &s).into_iter().collect();
        let tier = |id: u128| {
            segments
                .get(&Uuid::from_u128(id))
                .map_or(ValueTier::Iron, |s| s.value_tier)
        };
        assert_eq!(tier(10), ValueTier::Diamond, "10 of 11 below: 90.9");
        assert_eq!(tier(9), ValueTier::Gold, "9 of 11 below: 81.8");
        assert_eq!(tier(8), ValueTier::Silver, "8 of 11 below: 72.7");
        assert_eq!(tier(6), ValueTier::Silver, "6 of 11 below: 54.5");
        assert_eq!(tier(5), ValueTier::Iron, "5 of 11 below: 45.5");

        // Stored segments equal to the computed ones are not re-versioned.
        let mut stored = rows.clone();
        let all: HashMap<Uuid, Segment> = resegment(&rows, &s).into_iter().collect();
        for r in &mut stored {
            r.segment = all.get(&r.profile_id).copied().unwrap_or_default();
        }
        assert_eq!(resegment(&stored, &s), vec![]);
        // A new big buyer moves others' scores: only the profiles whose scores change.
        stored.push(row(12, 9, "20000", Some("2026-10-01T00:00:00Z")));
        let changed: Vec<u128> = resegment(&stored, &s)
            .into_iter()
            .map(|(id, _)| id.as_u128())
            .collect();
        assert!(changed.contains(&12));
        assert!(!changed.contains(&11), "the prospect stays as it was");
        assert!(changed.len() < stored.len());
    }

    #[test]
    fn every_lifecycle_stage() {
        let s = settings(); // today 2026-11-23; loyal 5 orders over 365 days; 180 / 365
        let at = |t: &str| Some(ts(t));
        let stage = |count, first: Option<Timestamp>, last: Option<Timestamp>| {
            lifecycle(count, first, last, &s)
        };
        assert_eq!(stage(0, None, None), Lifecycle::Prospect);
        assert_eq!(
            stage(1, at("2026-11-01T00:00:00Z"), at("2026-11-01T00:00:00Z")),
            Lifecycle::New
        );
        assert_eq!(
            stage(4, at("2024-01-01T00:00:00Z"), at("2026-11-01T00:00:00Z")),
            Lifecycle::Repeat,
            "four orders are not loyal"
        );
        assert_eq!(
            stage(5, at("2026-01-01T00:00:00Z"), at("2026-11-01T00:00:00Z")),
            Lifecycle::Repeat,
            "five orders within less than a year are not loyal"
        );
        assert_eq!(
            stage(5, at("2025-11-23T00:00:00Z"), at("2026-11-01T00:00:00Z")),
            Lifecycle::Loyal,
            "five orders over exactly 365 days"
        );
        // 2026-05-27 is 180 days before 2026-11-23; 2025-11-23 is 365 days before.
        assert_eq!(
            stage(5, at("2024-01-01T00:00:00Z"), at("2026-05-28T00:00:00Z")),
            Lifecycle::Loyal,
            "179 days"
        );
        assert_eq!(
            stage(5, at("2024-01-01T00:00:00Z"), at("2026-05-27T00:00:00Z")),
            Lifecycle::AtRisk,
            "180 days"
        );
        assert_eq!(
            stage(1, at("2025-11-24T00:00:00Z"), at("2025-11-24T00:00:00Z")),
            Lifecycle::AtRisk,
            "364 days"
        );
        assert_eq!(
            stage(1, at("2025-11-23T00:00:00Z"), at("2025-11-23T00:00:00Z")),
            Lifecycle::Lapsed,
            "365 days"
        );
    }

    fn open_order(id: &str, customer: &str, at: &str, lines: &[(&str, &str)]) -> Order {
        let mut o = order(id, "0", "EUR", OrderStatus::Open, at);
        o.customer_id = Some(customer.into());
        o.lines = lines
            .iter()
            .enumerate()
            .map(|(i, (sku, qty))| crate::model::OrderLine {
                line_number: Some(format!("{}", (i + 1) * 10)),
                sku: Some(sku.to_string()),
                quantity: Some(Decimal::from_str(qty).unwrap()),
                ..Default::default()
            })
            .collect();
        o
    }

    fn stock(sku: &str, location: &str, on_hand: i64, reserved: i64) -> Inventory {
        Inventory {
            sku: sku.into(),
            location: Some(location.into()),
            on_hand: Some(Decimal::from(on_hand)),
            reserved: Some(Decimal::from(reserved)),
            ..Default::default()
        }
    }

    fn lead(supplier: &str, sku: &str, days: i64) -> SupplierItem {
        SupplierItem {
            supplier_id: supplier.into(),
            sku: sku.into(),
            lead_time_days: Some(days),
            ..Default::default()
        }
    }

    /// SKU-1 has 5 available over two locations (4-1 and 2-0). The oldest order (customer B,
    /// January) takes 3, the next (customer A, March) gets the remaining 2 of 4 and is
    /// backordered until today + 14 days (the shorter of 14 and 30). SKU-2 has no stock and
    /// no supplier: at risk, no date. The newest order finds nothing left.
    #[test]
    fn backorder_allocates_oldest_first_with_the_shortest_lead_time() {
        let a = open_order(
            "A1",
            "A",
            "2026-03-01T00:00:00Z",
            &[("SKU-1", "4"), ("SKU-2", "1")],
        );
        let b = open_order("B1", "B", "2026-01-01T00:00:00Z", &[("SKU-1", "3")]);
        let c = open_order("C1", "C", "2026-06-01T00:00:00Z", &[("SKU-1", "1")]);
        let mut done = open_order("D1", "A", "2025-01-01T00:00:00Z", &[("SKU-1", "50")]);
        done.status = OrderStatus::Fulfilled;
        let supply = allocate(
            &[a.clone(), c.clone(), done, b.clone()],
            &[stock("SKU-1", "MUC", 4, 1), stock("SKU-1", "NUE", 2, 0)],
            &[lead("S1", "SKU-1", 30), lead("S2", "SKU-1", 14)],
            &[],
            &BTreeSet::from(["SKU-1".to_string(), "SKU-2".to_string()]),
            Date::constant(2026, 11, 23),
        );
        let line = |o: &Order, i: usize| supply.lines[&(o.source.clone(), i)];
        let d = |n: i64| Decimal::from(n);
        assert_eq!(line(&b, 0), (d(3), LineStatus::Available, None));
        assert_eq!(
            line(&a, 0),
            (
                d(2),
                LineStatus::Backorder,
                Some(Date::constant(2026, 12, 7))
            )
        );
        assert_eq!(line(&a, 1), (d(0), LineStatus::AtRisk, None));
        assert_eq!(
            line(&c, 0),
            (
                d(0),
                LineStatus::Backorder,
                Some(Date::constant(2026, 12, 7))
            )
        );

        let p = build(
            Uuid::nil(),
            1,
            vec![],
            &[customer("sap", "A", "2024-01-01T00:00:00Z")],
            &[a],
            &supply,
            None,
            &settings(),
        );
        assert_eq!(p.open_orders.len(), 1);
        assert_eq!(p.open_orders[0].supply_status, LineStatus::AtRisk);
        assert_eq!(p.open_orders[0].lines[0].status, LineStatus::Backorder);
        assert_eq!(p.open_orders[0].lines[0].allocated, d(2));
        assert_eq!(p.earliest_projected_date, Some(Date::constant(2026, 12, 7)));
    }
}
