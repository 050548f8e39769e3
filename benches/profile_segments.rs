//! The end-of-run segmentation and the supply allocation at scale:
//! `cargo bench --bench profile_segments`.
//!
//! Writes `CONFLUX_BENCH_PROFILES` synthetic profile versions (default 100 000; four in five
//! with orders) into a fresh SQLite store, then times the three steps of `resegment`: reading
//! the compact metric rows of every live profile, scoring RFM / tier / lifecycle in memory,
//! and re-reading the bodies of the profiles whose segment changed. It also times `allocate`
//! over as many open order lines spread over 500 SKUs, and prints peak memory (VmHWM).

use std::collections::BTreeSet;
use std::time::Instant;

use conflux::model::profile::{CustomerProfile, GoldenRecord, Money, OrderMetrics, SCHEMA_VERSION};
use conflux::model::{Inventory, Order, OrderLine, SourceRef, SupplierItem};
use conflux::profile::{self, ProfileSettings};
use conflux::store::sqlite::SqliteStore;
use conflux::store::{ProfileWrite, Store};
use jiff::Timestamp;
use rust_decimal::Decimal;
use uuid::Uuid;

fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "VmHWM: unknown".into())
}

fn profile(i: u64) -> CustomerProfile {
    let orders = if i.is_multiple_of(5) { 0 } else { 1 + i % 17 };
    let day = |d: u64| Timestamp::from_second(1_700_000_000 + (d as i64) * 86_400).unwrap();
    CustomerProfile {
        schema_version: SCHEMA_VERSION.into(),
        profile_id: Uuid::from_u128(u128::from(i) + 1),
        version: 1,
        merged_ids: vec![],
        golden: GoldenRecord {
            full_name: Some(format!("Customer {i}")),
            ..GoldenRecord::default()
        },
        alternates: vec![],
        conflicts: vec![],
        metrics: OrderMetrics {
            order_count: orders,
            lifetime_value: Money {
                amount: Decimal::from(orders * (i % 1000 + 1)),
                currency: "EUR".into(),
            },
            average_order_value: None,
            first_order_at: (orders > 0).then(|| day(i % 300)),
            last_order_at: (orders > 0).then(|| day(300 + i % 700)),
            days_since_last_order: None,
        },
        segment: Default::default(),
        open_orders: vec![],
        earliest_projected_date: None,
        top_categories: vec![],
        data_quality: Default::default(),
        as_of: None,
        sources: vec![],
    }
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("CONFLUX_BENCH_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("bench.db"))
        .await
        .unwrap();

    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let mut tx = store.begin().await.unwrap();
        let writes: Vec<ProfileWrite> = chunk
            .iter()
            .map(|&i| {
                let p = profile(i);
                ProfileWrite {
                    content_hash: p.content_hash(),
                    event_type: "customer.profile.created".into(),
                    event_body: "{}".into(),
                    profile: p,
                }
            })
            .collect();
        let links: Vec<(SourceRef, Uuid)> = chunk
            .iter()
            .map(|&i| {
                (
                    SourceRef {
                        system: "erp".into(),
                        stream: "customers".into(),
                        source_id: i.to_string(),
                    },
                    Uuid::from_u128(u128::from(i) + 1),
                )
            })
            .collect();
        tx.write_profiles(&writes).await.unwrap();
        tx.set_links(&links).await.unwrap();
        tx.commit().await.unwrap();
    }
    println!("setup: {n} profiles written in {:.2?}", started.elapsed());

    let settings = ProfileSettings {
        today: jiff::civil::Date::constant(2026, 11, 23),
        ..ProfileSettings::default()
    };
    let started = Instant::now();
    let rows = {
        let mut tx = store.begin().await.unwrap();
        tx.profile_metric_rows().await.unwrap()
    };
    println!(
        "profile_metric_rows: {} rows in {:.2?}",
        rows.len(),
        started.elapsed()
    );
    let started = Instant::now();
    let changed = profile::resegment(&rows, &settings);
    println!(
        "resegment (score {} profiles): {} changed in {:.2?}",
        rows.len(),
        changed.len(),
        started.elapsed()
    );
    let started = Instant::now();
    let mut read = 0;
    for chunk in changed.chunks(500) {
        let ids: Vec<Uuid> = chunk.iter().map(|(id, _)| *id).collect();
        let mut tx = store.begin().await.unwrap();
        read += tx.latest_profile_bodies(&ids).await.unwrap().len();
    }
    println!(
        "latest_profile_bodies: {read} bodies in chunks of 500 in {:.2?}",
        started.elapsed()
    );

    // Allocation: n open lines over 500 SKUs, stock for about half the demand.
    let orders: Vec<Order> = (0..n)
        .map(|i| Order {
            source: SourceRef {
                system: "erp".into(),
                stream: "orders".into(),
                source_id: i.to_string(),
            },
            order_number: i.to_string(),
            ordered_at: Some(
                Timestamp::from_second(1_700_000_000 + (i as i64 * 7919) % 10_000_000).unwrap(),
            ),
            lines: vec![OrderLine {
                sku: Some(format!("SKU-{}", i % 500)),
                quantity: Some(Decimal::from(1 + i % 5)),
                ..OrderLine::default()
            }],
            ..Order::default()
        })
        .collect();
    let skus: BTreeSet<String> = (0..500).map(|s| format!("SKU-{s}")).collect();
    let inventory: Vec<Inventory> = skus
        .iter()
        .map(|sku| Inventory {
            sku: sku.clone(),
            available: Some(Decimal::from(n * 3 / 500 / 2)),
            ..Inventory::default()
        })
        .collect();
    let suppliers: Vec<SupplierItem> = skus
        .iter()
        .step_by(2)
        .map(|sku| SupplierItem {
            sku: sku.clone(),
            lead_time_days: Some(14),
            ..SupplierItem::default()
        })
        .collect();
    let started = Instant::now();
    let supply = profile::allocate(&orders, &inventory, &suppliers, &[], &skus, settings.today);
    println!(
        "allocate: {} lines over {} SKUs in {:.2?}",
        supply.lines.len(),
        skus.len(),
        started.elapsed()
    );
    println!("{}", peak_memory());
}
