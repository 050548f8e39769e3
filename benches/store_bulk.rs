//! The stores' batch write path: `cargo bench --bench store_bulk`.
//!
//! Writes `CONFLUX_BENCH_RECORDS` synthetic customers (default 100 000) in batches of 1 000 —
//! per batch one transaction with `upsert_records`, `set_match_keys_many`, `set_links` and
//! `write_profiles`, the statements a pipeline batch runs — then the same records again
//! (all unchanged), and drains the outbox the way the relay does. Runs on a temp SQLite
//! file and, when reachable, on a fresh schema of `CONFLUX_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped afterwards. Prints records/s per phase.

use std::sync::Arc;
use std::time::Instant;

use conflux::model::profile::{CustomerProfile, GoldenRecord, Money, OrderMetrics, SCHEMA_VERSION};
use conflux::model::{Customer, Record, SourceRef};
use conflux::store::postgres::PostgresStore;
use conflux::store::sqlite::SqliteStore;
use conflux::store::{ProfileWrite, Store};
use rust_decimal::Decimal;
use uuid::Uuid;

const BATCH: usize = 1000;

fn customer(i: usize) -> Customer {
    Customer {
        source: SourceRef {
            system: "shop".into(),
            stream: "customers".into(),
            source_id: format!("K-{i}"),
        },
        full_name: Some(format!("Kundin {i}")),
        emails: vec![format!("kundin{i}@example.com")],
        phones: vec![format!("+4930{i:08}")],
        ..Customer::default()
    }
}

fn profile(id: Uuid, name: &str) -> CustomerProfile {
    CustomerProfile {
        schema_version: SCHEMA_VERSION.to_string(),
        profile_id: id,
        version: 1,
        merged_ids: Vec::new(),
        golden: GoldenRecord {
            full_name: Some(name.to_string()),
            ..GoldenRecord::default()
        },
        metrics: OrderMetrics {
            order_count: 0,
            lifetime_value: Money {
                amount: Decimal::ZERO,
                currency: "EUR".into(),
            },
            average_order_value: None,
            first_order_at: None,
            last_order_at: None,
            days_since_last_order: None,
        },
        alternates: Vec::new(),
        conflicts: Vec::new(),
        segment: Default::default(),
        open_orders: Vec::new(),
        earliest_projected_date: None,
        top_categories: Vec::new(),
        data_quality: Default::default(),
        as_of: None,
        sources: Vec::new(),
    }
}

/// One pass over all records; `first` also links them and writes their profiles.
async fn write_all(store: &dyn Store, total: usize, first: bool) -> f64 {
    let started = Instant::now();
    for start in (0..total).step_by(BATCH) {
        let customers: Vec<Customer> = (start..(start + BATCH).min(total)).map(customer).collect();
        let records: Vec<Record> = customers.iter().cloned().map(Record::Customer).collect();
        let mut tx = store.begin().await.expect("begin");
        tx.upsert_records(&records, 1).await.expect("upsert");
        if first {
            let keys: Vec<(SourceRef, Vec<String>)> = customers
                .iter()
                .map(|c| {
                    let keys = vec![
                        format!("email:{}", c.emails[0]),
                        format!("phone:{}", c.phones[0]),
                    ];
                    (c.source.clone(), keys)
                })
                .collect();
            tx.set_match_keys_many(&keys).await.expect("keys");
            let ids: Vec<Uuid> = customers.iter().map(|_| Uuid::now_v7()).collect();
            let links: Vec<(SourceRef, Uuid)> = customers
                .iter()
                .zip(&ids)
                .map(|(c, id)| (c.source.clone(), *id))
                .collect();
            tx.set_links(&links).await.expect("links");
            let writes: Vec<ProfileWrite> = customers
                .iter()
                .zip(&ids)
                .map(|(c, id)| ProfileWrite {
                    profile: profile(*id, c.full_name.as_deref().unwrap_or_default()),
                    content_hash: id.to_string(),
                    event_type: "customer.profile.created".into(),
                    event_body: format!("{{\"id\":\"{id}:1\"}}"),
                })
                .collect();
            tx.write_profiles(&writes).await.expect("profiles");
        } else {
            let refs: Vec<SourceRef> = customers.iter().map(|c| c.source.clone()).collect();
            tx.keys_and_links(&refs).await.expect("keys and links");
        }
        tx.commit().await.expect("commit");
    }
    started.elapsed().as_secs_f64()
}

async fn drain(store: &dyn Store) -> (usize, f64) {
    let started = Instant::now();
    let mut delivered = 0;
    loop {
        let batch = store.pending_events(500).await.expect("pending");
        if batch.is_empty() {
            break;
        }
        let seqs: Vec<i64> = batch.iter().map(|e| e.seq).collect();
        store.mark_delivered(&seqs).await.expect("mark");
        delivered += seqs.len();
    }
    (delivered, started.elapsed().as_secs_f64())
}

async fn bench(name: &str, store: Arc<dyn Store>, total: usize) {
    let first = write_all(store.as_ref(), total, true).await;
    let again = write_all(store.as_ref(), total, false).await;
    let (events, relay) = drain(store.as_ref()).await;
    let rate = |seconds: f64| total as f64 / seconds;
    println!(
        "{name:<10} first write {first:>7.2} s ({:>8.0} records/s) | unchanged re-run {again:>7.2} s \
         ({:>8.0} records/s) | outbox drain {events} events in {relay:.2} s ({:.0}/s)",
        rate(first),
        rate(again),
        events as f64 / relay
    );
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("CONFLUX_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    println!("{total} customers in batches of {BATCH}");

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(&dir.path().join("bench.db"))
        .await
        .expect("sqlite");
    bench("sqlite", Arc::new(sqlite), total).await;

    let url = std::env::var("CONFLUX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", Uuid::now_v7().simple());
    match PostgresStore::open(&url, Some(&schema), 4).await {
        Ok(store) => {
            let pool = store.pool().clone();
            bench("postgres", Arc::new(store), total).await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{schema}\" CASCADE"
            )))
            .execute(&pool)
            .await
            .expect("drop the bench schema");
        }
        Err(error) => println!("postgres   skipped: {error}"),
    }
}
