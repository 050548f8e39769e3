//! Pure logic both store backends share: decoding stored rows into model types (with the
//! row named in every error), planning a batch of record upserts, and the bookkeeping of
//! the set-based methods (last list wins, results back in input order).
//!
//! Nothing here touches a database. [`plan_upserts`] replays the one-row upsert semantics
//! of a whole batch in memory against the content hashes a backend read in one statement,
//! so each backend writes every changed record once, in one statement, and both report the
//! same [`Upsert`] outcomes.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::str::FromStr;

use jiff::Timestamp;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{StoreError, Upsert};
use crate::model::profile::{CustomerProfile, Segment};
use crate::model::{Customer, Order, OrderLineItem, Record, SourceRef};
use crate::profile::MetricRow;
use crate::source::IngestedFile;

pub(crate) fn parse_time(text: &str, context: &str) -> Result<Timestamp, StoreError> {
    Timestamp::from_str(text).map_err(|error| {
        StoreError::Corrupt(format!("{context}: {text:?} is not a timestamp: {error}"))
    })
}

pub(crate) fn parse_uuid(text: &str, context: &str) -> Result<Uuid, StoreError> {
    Uuid::from_str(text)
        .map_err(|error| StoreError::Corrupt(format!("{context}: {text:?} is not a uuid: {error}")))
}

pub(crate) fn decode_record(body: &str, context: &str) -> Result<Record, StoreError> {
    serde_json::from_str(body)
        .map_err(|error| StoreError::Corrupt(format!("{context}: undecodable record: {error}")))
}

pub(crate) fn decode_customer(body: &str, context: &str) -> Result<Customer, StoreError> {
    match decode_record(body, context)? {
        Record::Customer(customer) => Ok(customer),
        other => Err(StoreError::Corrupt(format!(
            "{context}: stored as a customer but holds a {} record",
            other.kind()
        ))),
    }
}

pub(crate) fn decode_order(body: &str, context: &str) -> Result<Order, StoreError> {
    match decode_record(body, context)? {
        Record::Order(order) => Ok(order),
        other => Err(StoreError::Corrupt(format!(
            "{context}: stored as an order but holds a {} record",
            other.kind()
        ))),
    }
}

pub(crate) fn decode_line_item(body: &str, context: &str) -> Result<OrderLineItem, StoreError> {
    match decode_record(body, context)? {
        Record::OrderLine(item) => Ok(item),
        other => Err(StoreError::Corrupt(format!(
            "{context}: stored as an order line but holds a {} record",
            other.kind()
        ))),
    }
}

/// The columns that join a record to its parent: an order's customer id, a standalone order
/// line's order id.
pub(crate) fn parent_ids(record: &Record) -> (Option<&str>, Option<&str>) {
    match record {
        Record::Order(order) => (order.customer_id.as_deref(), None),
        Record::OrderLine(item) => (None, Some(item.order_id.as_str())),
        _ => (None, None),
    }
}

pub(crate) fn source_ref((system, stream, source_id): (String, String, String)) -> SourceRef {
    SourceRef {
        system,
        stream,
        source_id,
    }
}

/// The distinct items in the order they first appear.
pub(crate) fn distinct<'a, T: Eq + Hash + ?Sized>(
    items: impl IntoIterator<Item = &'a T>,
) -> Vec<&'a T> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|item| seen.insert(*item))
        .collect()
}

/// The index into a bound list that a batch row belongs to (a position the database
/// returned, checked against the list's length).
pub(crate) fn position(key: i64, len: usize) -> Result<usize, StoreError> {
    usize::try_from(key)
        .ok()
        .filter(|&index| index < len)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the store returned position {key} for a list of {len}"
            ))
        })
}

/// One changed record of a batch, ready to be written.
pub(crate) struct RecordWrite<'a> {
    pub source: &'a SourceRef,
    pub entity: &'static str,
    pub content_hash: &'a str,
    pub body: String,
    pub customer_id: Option<&'a str>,
    pub order_id: Option<&'a str>,
}

/// A batch of upserts: the outcome of each input record, and the rows to write.
pub(crate) struct UpsertPlan<'a> {
    pub outcomes: Vec<Upsert>,
    /// Each changed ref once, as its last changing occurrence, in the order refs first appear.
    pub writes: Vec<RecordWrite<'a>>,
}

/// Plans `records` against the content hashes stored now (`stored`, by ref): each occurrence
/// is compared with the hash its ref holds at that point, which a previous occurrence of the
/// same ref in the batch may have changed. A ref inserted and then updated within the batch
/// is written once, so it ends exactly as repeated one-row upserts leave it.
pub(crate) fn plan_upserts<'a>(
    records: &'a [Record],
    hashes: &'a [String],
    stored: &HashMap<SourceRef, String>,
) -> Result<UpsertPlan<'a>, StoreError> {
    let mut current: HashMap<&SourceRef, &str> =
        stored.iter().map(|(r, hash)| (r, hash.as_str())).collect();
    let mut last_change: HashMap<&SourceRef, usize> = HashMap::new();
    let mut outcomes = Vec::with_capacity(records.len());
    for (index, (record, hash)) in records.iter().zip(hashes).enumerate() {
        let source = record.source();
        let outcome = match current.get(source) {
            None => Upsert::Inserted,
            Some(&previous) if previous == hash => Upsert::Unchanged,
            Some(_) => Upsert::Updated,
        };
        if outcome != Upsert::Unchanged {
            current.insert(source, hash);
            last_change.insert(source, index);
        }
        outcomes.push(outcome);
    }
    let mut writes = Vec::with_capacity(last_change.len());
    for source in distinct(records.iter().map(Record::source)) {
        let Some(&index) = last_change.get(source) else {
            continue;
        };
        let record = &records[index];
        let body = serde_json::to_string(record).map_err(|error| {
            StoreError::Corrupt(format!("cannot encode record {source}: {error}"))
        })?;
        let (customer_id, order_id) = parent_ids(record);
        writes.push(RecordWrite {
            source,
            entity: record.kind().as_str(),
            content_hash: hashes[index].as_str(),
            body,
            customer_id,
            order_id,
        });
    }
    Ok(UpsertPlan { outcomes, writes })
}

/// A stored `ingested_files` row as the source sees it.
pub(crate) fn ingested_file(
    connector: &str,
    stream: &str,
    (path, size, hash): (String, i64, String),
) -> Result<IngestedFile, StoreError> {
    let size = u64::try_from(size).map_err(|_| {
        StoreError::Corrupt(format!(
            "ingested file {connector}/{stream}/{path} has negative size {size}"
        ))
    })?;
    Ok(IngestedFile { path, size, hash })
}

/// A file's size as the store keeps it (a signed 64-bit integer).
pub(crate) fn stored_size(
    connector: &str,
    stream: &str,
    file: &IngestedFile,
) -> Result<i64, StoreError> {
    i64::try_from(file.size).map_err(|_| {
        StoreError::Corrupt(format!(
            "ingested file {connector}/{stream}/{}: size {} exceeds the store's range",
            file.path, file.size
        ))
    })
}

/// The `(key, record)` rows that replace the match keys of `refs` (distinct, in order): a ref
/// listed twice in `keys` keeps its last list, as repeated one-row calls would leave it.
pub(crate) fn last_match_keys<'a>(
    refs: &[&'a SourceRef],
    keys: &'a [(SourceRef, Vec<String>)],
) -> Vec<(&'a str, &'a SourceRef)> {
    let last: HashMap<&SourceRef, &[String]> = keys
        .iter()
        .map(|(record, keys)| (record, keys.as_slice()))
        .collect();
    refs.iter()
        .flat_map(|&record| {
            let keys = last.get(record).copied().unwrap_or_default();
            keys.iter().map(move |key| (key.as_str(), record))
        })
        .collect()
}

/// Spreads what was found per distinct ref (`found[i]` belongs to `refs[i]`) back over the
/// input `records`, repeats included, in input order.
pub(crate) fn in_input_order<T: Clone>(
    records: &[SourceRef],
    refs: &[&SourceRef],
    found: &[T],
) -> Result<Vec<T>, StoreError> {
    let index_of: HashMap<&SourceRef, usize> = refs
        .iter()
        .enumerate()
        .map(|(index, record)| (*record, index))
        .collect();
    records
        .iter()
        .map(|record| {
            index_of
                .get(record)
                .and_then(|&index| found.get(index).cloned())
                .ok_or_else(|| StoreError::Corrupt(format!("{record} missing from its own batch")))
        })
        .collect()
}

/// The segmentation figures of a profile version, stored beside its profile row
/// (`profiles.metrics`): `[order_count, lifetime value, first order, last order, segment]`.
pub(crate) fn metric_columns(profile: &CustomerProfile) -> String {
    let metrics = &profile.metrics;
    serde_json::json!([
        metrics.order_count,
        metrics.lifetime_value.amount.to_string(),
        metrics.first_order_at.map(|t| t.to_string()),
        metrics.last_order_at.map(|t| t.to_string()),
        profile.segment,
    ])
    .to_string()
}

/// A [`MetricRow`] from a profile's stored [`metric_columns`].
pub(crate) fn metric_row_of(profile_id: Uuid, metrics: &str) -> Result<MetricRow, StoreError> {
    type Columns = (
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<Segment>,
    );
    let context = format!("profile {profile_id}");
    let (order_count, lifetime_value, first, last, segment): Columns =
        serde_json::from_str(metrics)
            .map_err(|error| StoreError::Corrupt(format!("{context}: metrics: {error}")))?;
    let time = |text: Option<String>| text.map(|t| parse_time(&t, &context)).transpose();
    Ok(MetricRow {
        profile_id,
        order_count: order_count.unwrap_or_default().max(0) as u64,
        lifetime_value: match lifetime_value {
            Some(v) => Decimal::from_str(&v).map_err(|error| {
                StoreError::Corrupt(format!("{context}: lifetime value {v:?}: {error}"))
            })?,
            None => Decimal::ZERO,
        },
        first_order_at: time(first)?,
        last_order_at: time(last)?,
        segment: segment.unwrap_or_default(),
    })
}

/// The `order_skus` rows of `records`, `(sku, system, order source id)`, distinct: which
/// orders have a line on which SKU, from orders' embedded lines and standalone lines.
pub(crate) fn order_sku_rows<'a>(
    records: impl IntoIterator<Item = &'a Record>,
) -> Vec<(&'a str, &'a str, &'a str)> {
    let mut rows = Vec::new();
    for record in records {
        match record {
            Record::Order(order) => rows.extend(order.lines.iter().filter_map(|line| {
                let sku = line.sku.as_deref()?;
                Some((
                    sku,
                    order.source.system.as_str(),
                    order.source.source_id.as_str(),
                ))
            })),
            Record::OrderLine(item) => {
                if let Some(sku) = item.line.sku.as_deref() {
                    rows.push((sku, item.source.system.as_str(), item.order_id.as_str()));
                }
            }
            _ => {}
        }
    }
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Supply queue rows, `(sku, changed_from in microseconds)`, in SKU order.
pub(crate) fn supply_rows(
    mut rows: Vec<(String, Option<i64>)>,
) -> Result<Vec<(String, Option<jiff::Timestamp>)>, StoreError> {
    rows.sort();
    rows.into_iter()
        .map(|(sku, from)| {
            let from = from
                .map(|m| {
                    jiff::Timestamp::from_microsecond(m)
                        .map_err(|e| StoreError::Corrupt(format!("supply queue: SKU {sku}: {e}")))
                })
                .transpose()?;
            Ok((sku, from))
        })
        .collect()
}

/// Joins a page of customer records (in source-ref order) with their match-key rows and
/// links (any order) into [`super::IdentityNode`]s; keys come out sorted.
pub(crate) fn identity_nodes(
    customers: Vec<Customer>,
    keys: Vec<(String, String, String, String)>,
    links: Vec<(SourceRef, Uuid)>,
) -> Vec<super::IdentityNode> {
    let mut nodes: Vec<super::IdentityNode> = customers
        .into_iter()
        .map(|customer| super::IdentityNode {
            customer,
            keys: Vec::new(),
            current: None,
        })
        .collect();
    let index: HashMap<SourceRef, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.customer.source.clone(), i))
        .collect();
    for (system, stream, source_id, key) in keys {
        if let Some(&i) = index.get(&source_ref((system, stream, source_id))) {
            nodes[i].keys.push(key);
        }
    }
    for (record, profile) in links {
        if let Some(&i) = index.get(&record) {
            nodes[i].current = Some(profile);
        }
    }
    for node in &mut nodes {
        node.keys.sort();
    }
    nodes
}

/// One `identity_decisions` row: both source refs and the decision (`link` or not).
pub(crate) type DecisionRow = (String, String, String, String, String, String, String);

/// [`super::IdentityDecision`]s from their stored rows.
pub(crate) fn decisions(rows: Vec<DecisionRow>) -> Vec<super::IdentityDecision> {
    rows.into_iter()
        .map(
            |(a1, a2, a3, b1, b2, b3, decision)| super::IdentityDecision {
                a: source_ref((a1, a2, a3)),
                b: source_ref((b1, b2, b3)),
                link: decision == "link",
            },
        )
        .collect()
}

/// The SQL of `relink_backlog`, the same on both backends: the stored customer records are
/// only counted when something is queued (the count reads every customer's index entry).
pub(crate) const RELINK_BACKLOG: &str = "SELECT q, CASE WHEN q = 0 THEN 0 \
     ELSE (SELECT count(*) FROM records WHERE entity = 'customer') END \
     FROM (SELECT count(*) AS q FROM relink_queue) AS queued";

/// The SQL of `identity_page`, the same on both backends: a page of customer records after
/// `($1, $2, $3)`, then the match keys and links of the page's range `(($1, $2, $3), ($4, $5,
/// $6)]`.
pub(crate) const IDENTITY_PAGE_RECORDS: &str = "SELECT system, stream, source_id, body FROM records \
     WHERE (system, stream, source_id) > ($1, $2, $3) AND entity = 'customer' \
     ORDER BY system, stream, source_id LIMIT $4";
pub(crate) const IDENTITY_PAGE_KEYS: &str = "SELECT system, stream, source_id, key FROM match_keys \
     WHERE (system, stream, source_id) > ($1, $2, $3) \
       AND (system, stream, source_id) <= ($4, $5, $6)";
pub(crate) const IDENTITY_PAGE_LINKS: &str = "SELECT system, stream, source_id, profile_id FROM links \
     WHERE (system, stream, source_id) > ($1, $2, $3) \
       AND (system, stream, source_id) <= ($4, $5, $6)";
