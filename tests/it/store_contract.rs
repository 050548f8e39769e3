//! The store contract: one suite of behaviour tests written against `&dyn Store`, run on
//! SQLite (a temp file per test) and on PostgreSQL (a fresh schema per test, dropped after).
//! PostgreSQL tests skip with a message when the server is unreachable, unless
//! `CONFLUX_REQUIRE_SERVICES=1`. Replica coordination (outbox claims, job leases) has its
//! own PostgreSQL tests at the end.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use conflux::model::profile::{CustomerProfile, GoldenRecord, Money, OrderMetrics, SCHEMA_VERSION};
use conflux::model::{Customer, Order, OrderLine, OrderLineItem, Record, SourceRef};
use conflux::source::IngestedFile;
use conflux::store::postgres::PostgresStore;
use conflux::store::sqlite::SqliteStore;
use conflux::store::{
    BlockLookup, IdentityDecision, PossibleMatch, ProfileWrite, QuarantineEntry, Store, Upsert,
};
use jiff::Timestamp;

use crate::common::drop_schema;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::common::postgres_url;

/// A store under test and what it lives in; dropping it removes the file or the schema.
pub struct Backend {
    store: Arc<dyn Store>,
    place: Place,
}

enum Place {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, schema: String },
}

impl Backend {
    pub async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("conflux.db"))
            .await
            .unwrap();
        Backend {
            store: Arc::new(store),
            place: Place::Sqlite(dir),
        }
    }

    /// A store in a fresh schema, or `None` when PostgreSQL is unreachable (and not required).
    pub async fn postgres() -> Option<Backend> {
        let url = postgres_url()?;
        let schema = fresh_schema("contract");
        let store = PostgresStore::open(&url, Some(&schema), 4).await.unwrap();
        Some(Backend {
            store: Arc::new(store),
            place: Place::Postgres { url, schema },
        })
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Another handle on the same database (another process's view).
    pub async fn reopen(&self) -> Arc<dyn Store> {
        match &self.place {
            Place::Sqlite(dir) => Arc::new(
                SqliteStore::open(&dir.path().join("conflux.db"))
                    .await
                    .unwrap(),
            ),
            Place::Postgres { url, schema } => {
                Arc::new(PostgresStore::open(url, Some(schema), 4).await.unwrap())
            }
        }
    }
}

/// A schema name no other test uses.
pub fn fresh_schema(prefix: &str) -> String {
    format!("t_{prefix}_{}", Uuid::now_v7().simple())
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Place::Postgres { url, schema } = &self.place {
            drop_schema(url, schema);
        }
    }
}

/// Runs each named contract test on both backends: `store_contract::sqlite::<name>` and
/// `store_contract::postgres::<name>`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::Backend::sqlite().await;
                    super::$name(&backend).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::Backend::postgres().await else { return };
                    super::$name(&backend).await;
                }
            )*
        }
    };
}

contract!(
    a_transaction_commits_whole_or_not_at_all,
    upserts_report_inserted_unchanged_updated_and_batches_match_one_row_calls,
    cursors_ingested_files_and_quarantine,
    job_runs_are_recorded_and_listed,
    match_keys_links_and_block_members,
    customers_orders_and_standalone_lines_join,
    profiles_are_versioned_retired_and_fed_to_the_outbox,
    stale_profile_versions_are_refused,
    identity_review_decisions_and_the_relink_queue,
    the_match_model_is_stored_once,
    possible_matches_are_replaced_only_where_they_hold_a_scope_record,
    the_profile_queue_takes_each_profile_once_and_rolls_back_with_its_batch,
    the_supply_queue_keeps_the_earliest_change_per_sku,
    the_identity_graph_reads_in_pages_with_keys_links_and_decisions,
    batch_methods_take_thousands_of_items,
    job_leases_are_granted_on_every_backend,
    open_orders_with_skus_finds_embedded_and_standalone_lines_of_open_orders_only,
    sku_records_returns_stock_supplier_items_and_products_of_the_skus,
    profile_metric_rows_and_bodies_cover_live_profiles_only,
);

fn source(system: &str, stream: &str, source_id: &str) -> SourceRef {
    SourceRef {
        system: system.to_string(),
        stream: stream.to_string(),
        source_id: source_id.to_string(),
    }
}

fn customer(system: &str, stream: &str, source_id: &str, emails: &[&str]) -> Customer {
    Customer {
        source: source(system, stream, source_id),
        full_name: Some(format!("Customer {source_id}")),
        emails: emails.iter().map(|e| e.to_string()).collect(),
        ..Customer::default()
    }
}

fn order(system: &str, source_id: &str, customer_id: Option<&str>) -> Order {
    Order {
        source: source(system, "orders", source_id),
        order_number: source_id.to_string(),
        customer_id: customer_id.map(str::to_string),
        total: Some(Decimal::new(1050, 2)),
        currency: Some("EUR".to_string()),
        ..Order::default()
    }
}

fn line(id: &str, order_id: &str, number: &str, sku: &str) -> Record {
    Record::OrderLine(OrderLineItem {
        source: source("odoo", "lines", id),
        order_id: order_id.to_string(),
        line: OrderLine {
            line_number: Some(number.to_string()),
            sku: Some(sku.to_string()),
            ..OrderLine::default()
        },
    })
}

fn profile(profile_id: Uuid, version: i64, name: &str) -> CustomerProfile {
    CustomerProfile {
        schema_version: SCHEMA_VERSION.to_string(),
        profile_id,
        version,
        merged_ids: Vec::new(),
        golden: GoldenRecord {
            full_name: Some(name.to_string()),
            ..GoldenRecord::default()
        },
        metrics: OrderMetrics {
            order_count: 0,
            lifetime_value: Money {
                amount: Decimal::ZERO,
                currency: "EUR".to_string(),
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

fn write(profile: CustomerProfile, event_type: &str) -> ProfileWrite {
    let event_body = format!("{{\"id\":\"{}:{}\"}}", profile.profile_id, profile.version);
    ProfileWrite {
        content_hash: format!("hash-{}-{}", profile.profile_id, profile.version),
        profile,
        event_type: event_type.to_string(),
        event_body,
    }
}

async fn a_transaction_commits_whole_or_not_at_all(backend: &Backend) {
    let store = backend.store();
    let record = Record::Customer(customer("erp", "customers", "1", &["a@example.com"]));
    let mut tx = store.begin().await.unwrap();
    tx.upsert_record(&record, 1).await.unwrap();
    tx.set_cursor("erp", "customers", "2026-01-01")
        .await
        .unwrap();
    tx.write_profile(
        &profile(Uuid::from_u128(1), 1, "A"),
        "h",
        "customer.profile.created",
        "{}",
    )
    .await
    .unwrap();
    drop(tx);
    assert_eq!(store.cursor("erp", "customers").await.unwrap(), None);
    assert_eq!(store.pending_count().await.unwrap(), 0);
    assert_eq!(store.profile(Uuid::from_u128(1)).await.unwrap(), None);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.upsert_record(&record, 1).await.unwrap(),
        Upsert::Inserted
    );
    tx.commit().await.unwrap();

    // Another handle (another replica, another process) sees the committed batch.
    let other = backend.reopen().await;
    let mut tx = other.begin().await.unwrap();
    assert_eq!(
        tx.upsert_record(&record, 2).await.unwrap(),
        Upsert::Unchanged
    );
}

async fn upserts_report_inserted_unchanged_updated_and_batches_match_one_row_calls(
    backend: &Backend,
) {
    let store = backend.store();
    let a = customer("erp", "customers", "a", &["a@example.com"]);
    let mut a2 = a.clone();
    a2.full_name = Some("Anna".into());
    let b = customer("erp", "customers", "b", &[]);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.upsert_record(&Record::Customer(a.clone()), 1)
            .await
            .unwrap(),
        Upsert::Inserted
    );
    assert_eq!(
        tx.upsert_record(&Record::Customer(a.clone()), 1)
            .await
            .unwrap(),
        Upsert::Unchanged
    );
    assert_eq!(tx.upsert_records(&[], 1).await.unwrap(), Vec::new());
    // In one batch: a changes twice (the second back to its first content), b is new and
    // repeated.
    let outcomes = tx
        .upsert_records(
            &[
                Record::Customer(a2.clone()),
                Record::Customer(b.clone()),
                Record::Customer(b.clone()),
                Record::Customer(a.clone()),
            ],
            2,
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            Upsert::Updated,
            Upsert::Inserted,
            Upsert::Unchanged,
            Upsert::Updated
        ]
    );
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    // The stored content is the last occurrence's.
    assert_eq!(
        tx.customers_by_refs(&[a.source.clone(), b.source.clone(), source("x", "y", "z")])
            .await
            .unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        tx.upsert_record(&Record::Customer(a2.clone()), 3)
            .await
            .unwrap(),
        Upsert::Updated
    );
    assert!(tx.customers_by_refs(&[]).await.unwrap().is_empty());
}

async fn cursors_ingested_files_and_quarantine(backend: &Backend) {
    let store = backend.store();
    let file = IngestedFile {
        path: "2026/customers.csv".into(),
        size: 120,
        hash: "abc".into(),
    };
    let mut tx = store.begin().await.unwrap();
    tx.set_cursor("erp", "orders", "2026-01-01T00:00:00Z")
        .await
        .unwrap();
    // SQL metacharacters are data.
    tx.set_cursor("erp", "orders", "x'; DROP TABLE records; --")
        .await
        .unwrap();
    tx.mark_ingested("shop", "customers", &file).await.unwrap();
    tx.mark_ingested("shop", "customers", &file).await.unwrap();
    tx.mark_ingested(
        "shop",
        "customers",
        &IngestedFile {
            path: "a.csv".into(),
            size: 1,
            hash: "d".into(),
        },
    )
    .await
    .unwrap();
    for (i, raw) in ["first", "with\0nul and ü", "third"].iter().enumerate() {
        tx.quarantine(
            &QuarantineEntry {
                connector: "shop".into(),
                stream: "customers".into(),
                source_ref: format!("customers.csv:{}", i + 2),
                raw: raw.to_string(),
                reason: format!("line {}: field email: not an address", i + 2),
            },
            7,
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(
        store.cursor("erp", "orders").await.unwrap().as_deref(),
        Some("x'; DROP TABLE records; --")
    );
    assert_eq!(store.cursor("erp", "customers").await.unwrap(), None);
    let files = store.ingested_files("shop", "customers").await.unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].path, "2026/customers.csv");
    assert_eq!(files[1].path, "a.csv");
    assert!(
        store
            .ingested_files("shop", "orders")
            .await
            .unwrap()
            .is_empty()
    );
    let rows = store.quarantine_rows(2).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].raw, "third");
    assert_eq!(rows[1].raw, "with\0nul and ü");
    assert_eq!(rows[1].source_ref, "customers.csv:3");
    assert_eq!(rows[1].reason, "line 3: field email: not an address");
    assert_eq!(rows[1].run_id, Some(7));
    assert!(rows[0].id > rows[1].id);
}

async fn job_runs_are_recorded_and_listed(backend: &Backend) {
    let store = backend.store();
    assert_eq!(store.last_run_started("nightly").await.unwrap(), None);
    let before = Timestamp::now();
    let first = store.start_run("nightly").await.unwrap();
    let second = store.start_run("*").await.unwrap();
    store.finish_run(first, "ok", "{\"read\":3}").await.unwrap();
    let error = store.finish_run(9999, "ok", "{}").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "store: cannot finish job run 9999: no such run"
    );
    let started = store.last_run_started("nightly").await.unwrap().unwrap();
    assert!(
        started
            >= before
                .checked_sub(jiff::SignedDuration::from_millis(1))
                .unwrap()
    );
    let runs = store.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].id, second);
    assert_eq!(runs[0].job, "*");
    assert_eq!(runs[0].status, "running");
    assert_eq!(runs[0].finished_at, None);
    assert_eq!(runs[1].id, first);
    assert_eq!(runs[1].status, "ok");
    assert_eq!(runs[1].summary.as_deref(), Some("{\"read\":3}"));
    assert!(runs[1].finished_at.unwrap() >= runs[1].started_at);
    assert_eq!(store.recent_runs(1).await.unwrap().len(), 1);
}

async fn match_keys_links_and_block_members(backend: &Backend) {
    let store = backend.store();
    let (p1, p2) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let (a, b, c) = (
        source("erp", "customers", "a"),
        source("crm", "contacts", "b"),
        source("shop", "customers", "c"),
    );
    let mut tx = store.begin().await.unwrap();
    tx.set_match_keys(&a, &["email:x@y.z".into(), "vat:DE1".into()])
        .await
        .unwrap();
    tx.set_match_keys(&a, &["email:x@y.z".into(), "phone:+491".into()])
        .await
        .unwrap();
    tx.set_match_keys_many(&[
        (b.clone(), vec!["email:x@y.z".into()]),
        (c.clone(), vec!["vat:DE1".into()]),
        (c.clone(), vec!["phone:+491".into(), "phone:+491".into()]),
    ])
    .await
    .unwrap();
    tx.set_match_keys_many(&[]).await.unwrap();
    assert_eq!(
        tx.match_keys(&a).await.unwrap(),
        ["email:x@y.z", "phone:+491"]
    );
    assert_eq!(tx.match_keys(&c).await.unwrap(), ["phone:+491"]);
    tx.set_link(&a, p1).await.unwrap();
    tx.set_links(&[(b.clone(), p1), (c.clone(), p1), (c.clone(), p2)])
        .await
        .unwrap();
    tx.set_links(&[]).await.unwrap();
    assert_eq!(tx.link_of(&c).await.unwrap(), Some(p2));
    assert_eq!(
        tx.link_of(&source("erp", "customers", "none"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        tx.records_with_keys(&["email:x@y.z".into(), "vat:DE1".into()])
            .await
            .unwrap(),
        vec![(b.clone(), Some(p1)), (a.clone(), Some(p1))]
    );
    assert!(tx.records_with_keys(&[]).await.unwrap().is_empty());
    let unlinked = source("erp", "customers", "u");
    tx.set_match_keys(&unlinked, &["email:x@y.z".into()])
        .await
        .unwrap();
    assert!(
        tx.records_with_keys(&["email:x@y.z".into()])
            .await
            .unwrap()
            .contains(&(unlinked.clone(), None))
    );
    assert_eq!(
        tx.keys_and_links(&[
            c.clone(),
            unlinked.clone(),
            c.clone(),
            source("n", "o", "p")
        ])
        .await
        .unwrap(),
        vec![
            (vec!["phone:+491".to_string()], Some(p2)),
            (vec!["email:x@y.z".to_string()], None),
            (vec!["phone:+491".to_string()], Some(p2)),
            (Vec::new(), None),
        ]
    );
    // email:x@y.z has 3 members: too many for a block of 2.
    let lookup = tx
        .block_members(
            &[
                "phone:+491".into(),
                "email:x@y.z".into(),
                "phone:+491".into(),
                "none".into(),
            ],
            2,
        )
        .await
        .unwrap();
    assert_eq!(
        lookup,
        BlockLookup {
            members: vec![
                ("phone:+491".to_string(), a.clone()),
                ("phone:+491".to_string(), c.clone()),
            ],
            oversized: vec![("email:x@y.z".to_string(), 3)],
        }
    );
    assert_eq!(
        tx.block_members(&[], 2).await.unwrap(),
        BlockLookup::default()
    );
    tx.commit().await.unwrap();
}

async fn customers_orders_and_standalone_lines_join(backend: &Backend) {
    let store = backend.store();
    let (p1, p2) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let erp = customer("erp", "customers", "0010034884", &["Anna@Example.com"]);
    let erp_other_stream = customer("erp", "contacts", "0010034884", &[]);
    let crm = customer("crm", "contacts", "c-1", &["anna@example.com"]);
    let mut tx = store.begin().await.unwrap();
    tx.upsert_records(
        &[
            Record::Customer(erp.clone()),
            Record::Customer(erp_other_stream.clone()),
            Record::Customer(crm.clone()),
            Record::Order(order("erp", "o1", Some("0010034884"))),
            Record::Order(order("erp", "o2", Some("0010034884"))),
            Record::Order(order("erp", "o3", None)),
            Record::Order(order("crm", "o1", Some("c-1"))),
        ],
        1,
    )
    .await
    .unwrap();
    tx.set_links(&[
        (erp.source.clone(), p1),
        (crm.source.clone(), p1),
        (erp_other_stream.source.clone(), p2),
        // A link on a non-customer record never makes it a customer of the profile.
        (source("erp", "orders", "o1"), p1),
    ])
    .await
    .unwrap();
    assert_eq!(
        tx.customers_of(p1).await.unwrap(),
        vec![crm.clone(), erp.clone()]
    );
    assert!(
        tx.customers_of(Uuid::from_u128(3))
            .await
            .unwrap()
            .is_empty()
    );
    let many = tx
        .customers_of_many(&[p2, p1, Uuid::from_u128(3), p2])
        .await
        .unwrap();
    assert_eq!(
        many,
        HashMap::from([
            (p1, vec![crm.clone(), erp.clone()]),
            (p2, vec![erp_other_stream.clone()])
        ])
    );
    assert_eq!(
        tx.profiles_of_customer_id("erp", "0010034884")
            .await
            .unwrap(),
        vec![p1, p2]
    );
    assert!(
        tx.profiles_of_customer_id("crm", "0010034884")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        tx.profiles_of_customer_ids(&[("crm".into(), "c-1".into()), ("erp".into(), "x".into())])
            .await
            .unwrap(),
        BTreeSet::from([p1])
    );
    let orders = tx.orders_of_customer("erp", "0010034884").await.unwrap();
    let numbers: Vec<&str> = orders.iter().map(|o| o.order_number.as_str()).collect();
    assert_eq!(numbers, ["o1", "o2"]);
    assert!(
        tx.orders_of_customer("erp", "c-1")
            .await
            .unwrap()
            .is_empty()
    );
    let by_customer = tx
        .orders_of_customers(&[
            ("crm".into(), "c-1".into()),
            ("erp".into(), "0010034884".into()),
            ("erp".into(), "nobody".into()),
        ])
        .await
        .unwrap();
    assert_eq!(by_customer.len(), 2);
    assert_eq!(
        by_customer[&("crm".to_string(), "c-1".to_string())].len(),
        1
    );
    assert_eq!(
        tx.stored_order_customers(&[
            source("erp", "orders", "o1"),
            source("erp", "orders", "o3"),
            source("erp", "customers", "0010034884"),
            source("erp", "orders", "missing"),
        ])
        .await
        .unwrap(),
        HashMap::from([(source("erp", "orders", "o1"), "0010034884".to_string())])
    );
    assert!(tx.stored_order_customers(&[]).await.unwrap().is_empty());

    // Standalone lines arrive before their order; "10" sorts after "9".
    tx.upsert_records(
        &[
            line("501", "42", "10", "B"),
            line("500", "42", "9", "A"),
            line("502", "43", "1", "C"),
        ],
        1,
    )
    .await
    .unwrap();
    assert!(
        tx.customers_of_orders(&[("odoo".into(), "42".into())])
            .await
            .unwrap()
            .is_empty(),
        "an order not stored yet has no customer"
    );
    let mut with_own_lines = order("odoo", "43", Some("7"));
    with_own_lines.lines = vec![OrderLine {
        sku: Some("OWN".to_string()),
        ..OrderLine::default()
    }];
    tx.upsert_records(
        &[
            Record::Order(order("odoo", "42", Some("7"))),
            Record::Order(with_own_lines),
        ],
        2,
    )
    .await
    .unwrap();
    assert_eq!(
        tx.customers_of_orders(&[("odoo".into(), "42".into()), ("odoo".into(), "43".into())])
            .await
            .unwrap(),
        BTreeSet::from([("odoo".to_string(), "7".to_string())])
    );
    assert!(tx.customers_of_orders(&[]).await.unwrap().is_empty());
    let orders = tx.orders_of_customer("odoo", "7").await.unwrap();
    let skus: Vec<Vec<&str>> = orders
        .iter()
        .map(|o| o.lines.iter().map(|l| l.sku.as_deref().unwrap()).collect())
        .collect();
    assert_eq!(skus, [vec!["A", "B"], vec!["OWN"]]);
    tx.commit().await.unwrap();

    // The e-mail lookup folds case and follows links of customer records only.
    assert_eq!(
        store.profiles_by_email("ANNA@example.com").await.unwrap(),
        vec![p1]
    );
    assert!(
        store
            .profiles_by_email("nobody@example.com")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn profiles_are_versioned_retired_and_fed_to_the_outbox(backend: &Backend) {
    let store = backend.store();
    let (retired, survivor) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.latest_profile(survivor).await.unwrap(), None);
    tx.write_profile(
        &profile(retired, 1, "Old"),
        "h-r1",
        "customer.profile.created",
        "{\"e\":1}",
    )
    .await
    .unwrap();
    tx.write_profiles(&[
        write(profile(survivor, 1, "Anna"), "customer.profile.created"),
        write(
            profile(Uuid::from_u128(3), 1, "Otto"),
            "customer.profile.created",
        ),
    ])
    .await
    .unwrap();
    tx.write_profiles(&[]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.retire_profile(retired, survivor).await.unwrap();
    let error = tx.retire_profile(survivor, survivor).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("store: cannot retire profile {survivor} into itself")
    );
    tx.write_profile(
        &profile(survivor, 2, "Anna B."),
        "h-s2",
        "customer.profile.merged",
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(
        tx.latest_profile(survivor).await.unwrap(),
        Some((2, "h-s2".to_string()))
    );
    assert_eq!(
        tx.latest_profiles(&[survivor, Uuid::from_u128(9), retired])
            .await
            .unwrap(),
        HashMap::from([
            (survivor, (2, "h-s2".to_string())),
            (retired, (1, "h-r1".to_string()))
        ])
    );
    tx.commit().await.unwrap();

    // A retired id resolves to its survivor's latest version.
    assert_eq!(
        store.profile(retired).await.unwrap(),
        Some(profile(survivor, 2, "Anna B."))
    );
    assert_eq!(store.profile(Uuid::from_u128(9)).await.unwrap(), None);

    let events = store.pending_events(10).await.unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("{retired}:1"),
            format!("{survivor}:1"),
            format!("{}:1", Uuid::from_u128(3)),
            format!("{survivor}:2"),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(events[0].body, "{\"e\":1}");
    assert_eq!(events[3].event_type, "customer.profile.merged");
    assert_eq!(store.pending_count().await.unwrap(), 4);
    store
        .mark_delivered(&[events[0].seq, events[1].seq])
        .await
        .unwrap();
    store.mark_delivered(&[]).await.unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 2);
    let rest = store.pending_events(1).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].seq, events[2].seq);
    store
        .mark_delivered(&[events[2].seq, events[3].seq, events[0].seq])
        .await
        .unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 0);
    assert!(store.pending_events(10).await.unwrap().is_empty());

    // Two versions of one profile in one call are written in order, events too.
    let twice = Uuid::from_u128(4);
    let mut tx = store.begin().await.unwrap();
    tx.write_profiles(&[
        write(profile(twice, 1, "Eva"), "customer.profile.created"),
        write(profile(twice, 2, "Eva L."), "customer.profile.updated"),
        write(
            profile(Uuid::from_u128(5), 1, "Ute"),
            "customer.profile.created",
        ),
    ])
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        store.profile(twice).await.unwrap(),
        Some(profile(twice, 2, "Eva L."))
    );
    let events = store.pending_events(10).await.unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("{twice}:1"),
            format!("{twice}:2"),
            format!("{}:1", Uuid::from_u128(5))
        ]
    );
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    store.mark_delivered(&seqs).await.unwrap();

    // A retirement cycle is reported, not followed forever.
    let mut tx = store.begin().await.unwrap();
    tx.retire_profile(survivor, retired).await.unwrap();
    tx.commit().await.unwrap();
    let error = store.profile(retired).await.unwrap_err();
    assert!(
        error.to_string().contains("is retired in a cycle"),
        "{error}"
    );
}

async fn stale_profile_versions_are_refused(backend: &Backend) {
    let store = backend.store();
    let id = Uuid::from_u128(7);
    let mut tx = store.begin().await.unwrap();
    tx.write_profiles(&[write(profile(id, 2, "Anna"), "customer.profile.created")])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let error = tx
        .write_profile(
            &profile(id, 2, "Again"),
            "h",
            "customer.profile.updated",
            "{}",
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("store: profile {id}: version 2 is not newer than the stored latest version")
    );
    let error = tx
        .write_profiles(&[
            write(
                profile(Uuid::from_u128(8), 1, "Otto"),
                "customer.profile.created",
            ),
            write(profile(id, 1, "Older"), "customer.profile.updated"),
        ])
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("1 of 2 profile versions are not newer"),
        "{error}"
    );
    drop(tx);
    assert_eq!(store.pending_count().await.unwrap(), 1);
    assert_eq!(store.profile(Uuid::from_u128(8)).await.unwrap(), None);
    assert_eq!(
        store.profile(id).await.unwrap(),
        Some(profile(id, 2, "Anna"))
    );
}

async fn identity_review_decisions_and_the_relink_queue(backend: &Backend) {
    let store = backend.store();
    let (a, b, c) = (
        source("crm", "contacts", "1"),
        source("erp", "customers", "2"),
        source("shop", "customers", "3"),
    );
    let pair = |x: &SourceRef, y: &SourceRef, weight: f64| PossibleMatch {
        a: x.clone(),
        b: y.clone(),
        weight,
        detail: format!("{{\"name\":\"{weight}\"}}"),
    };
    let mut tx = store.begin().await.unwrap();
    tx.replace_possible_matches(
        &[],
        &[pair(&a, &b, 0.6), pair(&a, &c, 0.7), pair(&b, &c, 0.55)],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let pending = store.possible_matches(Some("pending"), 10).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[0].pair, pair(&a, &b, 0.6));
    assert_eq!(pending[0].status, "pending");
    assert!(pending[0].id < pending[1].id);
    assert_eq!(store.possible_matches(None, 2).await.unwrap().len(), 2);
    assert!(
        store
            .possible_matches(Some("accepted"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let ab = store.possible_match(pending[0].id).await.unwrap().unwrap();
    assert_eq!(ab.pair, pair(&a, &b, 0.6));
    assert_eq!(store.possible_match(999_999).await.unwrap(), None);

    // A person accepts a–b: the decision is stored and both records are queued.
    let decided = store
        .decide_possible_match(ab.id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(decided.pair, ab.pair);
    assert_eq!(
        store.decide_possible_match(999_999, false).await.unwrap(),
        None
    );
    assert_eq!(
        store.possible_match(ab.id).await.unwrap().unwrap().status,
        "accepted"
    );

    let mut tx = store.begin().await.unwrap();
    // A decision settles the pair's pending review.
    tx.set_decision(&IdentityDecision::new(c.clone(), a.clone(), false))
        .await
        .unwrap();
    // Rescoring replaces the pending pairs within the scope; decided pairs keep their state.
    tx.replace_possible_matches(
        &[a.clone(), b.clone(), c.clone()],
        &[pair(&a, &b, 0.9), pair(&b, &c, 0.65)],
    )
    .await
    .unwrap();
    assert_eq!(
        tx.decisions_touching(&[a.clone(), a.clone()])
            .await
            .unwrap(),
        vec![
            IdentityDecision::new(a.clone(), b.clone(), true),
            IdentityDecision::new(a.clone(), c.clone(), false),
        ]
    );
    assert_eq!(
        tx.decisions_touching(std::slice::from_ref(&b))
            .await
            .unwrap(),
        vec![IdentityDecision::new(a.clone(), b.clone(), true)]
    );
    assert!(tx.decisions_touching(&[]).await.unwrap().is_empty());
    tx.queue_relink(&[c.clone(), c.clone()]).await.unwrap();
    tx.queue_relink(&[]).await.unwrap();
    let taken = tx.take_relink(2).await.unwrap();
    assert_eq!(taken, vec![a.clone(), b.clone()]);
    tx.commit().await.unwrap();

    let rows = store.possible_matches(None, 10).await.unwrap();
    let states: Vec<(SourceRef, SourceRef, f64, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.pair.a.clone(),
                r.pair.b.clone(),
                r.pair.weight,
                r.status.as_str(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            (a.clone(), b.clone(), 0.6, "accepted"),
            (a.clone(), c.clone(), 0.7, "rejected"),
            (b.clone(), c.clone(), 0.65, "pending"),
        ]
    );
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.take_relink(10).await.unwrap(), vec![c.clone()]);
    drop(tx);
    // Taking rolls back with its batch.
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.take_relink(10).await.unwrap(), vec![c.clone()]);
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(tx.take_relink(10).await.unwrap().is_empty());
}

async fn possible_matches_are_replaced_only_where_they_hold_a_scope_record(backend: &Backend) {
    let store = backend.store();
    let (a, b, c, d) = (
        source("crm", "contacts", "1"),
        source("erp", "customers", "2"),
        source("shop", "customers", "3"),
        source("shop", "customers", "4"),
    );
    let pair = |x: &SourceRef, y: &SourceRef, weight: f64| PossibleMatch {
        a: x.clone(),
        b: y.clone(),
        weight,
        detail: "{}".into(),
    };
    let mut tx = store.begin().await.unwrap();
    tx.replace_possible_matches(
        &[],
        &[pair(&a, &b, 0.6), pair(&b, &c, 0.5), pair(&c, &d, 0.7)],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Rescoring around `b` alone: a–b and b–c hold it and are replaced (b–c is gone), c–d
    // was not compared and stays.
    let mut tx = store.begin().await.unwrap();
    tx.replace_possible_matches(std::slice::from_ref(&b), &[pair(&a, &b, 0.8)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let pending: Vec<(SourceRef, SourceRef, f64)> = store
        .possible_matches(Some("pending"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.pair.a, r.pair.b, r.pair.weight))
        .collect();
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert!(
        pending.contains(&(a.clone(), b.clone(), 0.8)),
        "{pending:?}"
    );
    assert!(
        pending.contains(&(c.clone(), d.clone(), 0.7)),
        "{pending:?}"
    );
}

async fn the_profile_queue_takes_each_profile_once_and_rolls_back_with_its_batch(
    backend: &Backend,
) {
    let store = backend.store();
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let mut tx = store.begin().await.unwrap();
    tx.queue_profiles(&[ids[3], ids[1], ids[3]]).await.unwrap();
    tx.queue_profiles(&[]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.queue_profiles(&[ids[0], ids[1], ids[4]]).await.unwrap();
    tx.commit().await.unwrap();
    // A batch that rolls back queues nothing.
    let mut tx = store.begin().await.unwrap();
    tx.queue_profiles(&[ids[2]]).await.unwrap();
    drop(tx);

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.take_profiles(2).await.unwrap(), vec![ids[0], ids[1]]);
    drop(tx);
    // Taking rolls back with its transaction: the same profiles come again.
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.take_profiles(2).await.unwrap(), vec![ids[0], ids[1]]);
    assert_eq!(tx.take_profiles(10).await.unwrap(), vec![ids[3], ids[4]]);
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(tx.take_profiles(10).await.unwrap().is_empty());
}

async fn the_supply_queue_keeps_the_earliest_change_per_sku(backend: &Backend) {
    let store = backend.store();
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.queue_supply(&[
        ("SKU-B".into(), Some(at("2024-05-02T10:00:00Z"))),
        ("SKU-A".into(), Some(at("2024-05-03T10:00:00Z"))),
        ("SKU-C".into(), None),
        // Twice in one call: the earlier counts.
        ("SKU-B".into(), Some(at("2024-05-01T10:00:00Z"))),
    ])
    .await
    .unwrap();
    tx.queue_supply(&[]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.queue_supply(&[
        // Later than queued: no change; earlier: moves back; None: every open order.
        ("SKU-B".into(), Some(at("2024-05-09T10:00:00Z"))),
        ("SKU-A".into(), Some(at("2024-04-30T10:00:00Z"))),
        ("SKU-D".into(), Some(at("2024-05-05T10:00:00Z"))),
        ("SKU-D".into(), None),
        ("SKU-C".into(), Some(at("2024-05-05T10:00:00Z"))),
    ])
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let expected = vec![
        ("SKU-A".to_string(), Some(at("2024-04-30T10:00:00Z"))),
        ("SKU-B".to_string(), Some(at("2024-05-01T10:00:00Z"))),
        ("SKU-C".to_string(), None),
        ("SKU-D".to_string(), None),
    ];
    // Taking rolls back with its transaction.
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.take_supply().await.unwrap(), expected);
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.take_supply().await.unwrap(), expected);
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(tx.take_supply().await.unwrap().is_empty());
    drop(tx);
    // The planner statistics refresh names every table it analyses: a wrong name fails here.
    store.refresh_statistics().await.unwrap();
}

async fn the_identity_graph_reads_in_pages_with_keys_links_and_decisions(backend: &Backend) {
    let store = backend.store();
    // Five customers over two systems (stored out of order), an order that is no customer,
    // keys on four of them, links on three.
    let customers: Vec<Customer> = [("odoo", "9"), ("erp", "2"), ("odoo", "10"), ("erp", "1")]
        .iter()
        .chain(&[("shop", "a")])
        .map(|(system, id)| customer(system, "customers", id, &[]))
        .collect();
    let mut records: Vec<Record> = customers.iter().cloned().map(Record::Customer).collect();
    records.push(Record::Order(order("erp", "O1", Some("1"))));
    let (p1, p2) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut tx = store.begin().await.unwrap();
    tx.upsert_records(&records, 1).await.unwrap();
    let at = |system: &str, id: &str| source(system, "customers", id);
    tx.set_match_keys_many(&[
        (
            at("erp", "1"),
            vec!["phone:+491".into(), "email:a@b.c".into()],
        ),
        (at("erp", "2"), vec!["email:a@b.c".into()]),
        (at("odoo", "10"), vec!["name:x".into()]),
        (at("shop", "a"), vec!["name:x".into(), "zip:1".into()]),
    ])
    .await
    .unwrap();
    tx.set_links(&[
        (at("erp", "1"), p1),
        (at("erp", "2"), p1),
        (at("shop", "a"), p2),
    ])
    .await
    .unwrap();
    tx.queue_relink(&[at("erp", "2"), at("odoo", "9")])
        .await
        .unwrap();
    tx.set_decision(&IdentityDecision::new(
        at("shop", "a"),
        at("erp", "1"),
        false,
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    // set_decision queued its two records too.
    assert_eq!(tx.relink_backlog().await.unwrap(), (4, 5));
    let mut pages = Vec::new();
    let mut after: Option<SourceRef> = None;
    loop {
        let page = tx.identity_page(after.as_ref(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = page.last().map(|n| n.customer.source.clone());
        pages.extend(page);
    }
    let read: Vec<(String, Vec<String>, Option<Uuid>)> = pages
        .iter()
        .map(|n| (n.customer.source.to_string(), n.keys.clone(), n.current))
        .collect();
    let keys = |k: &[&str]| k.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(
        read,
        vec![
            (
                at("erp", "1").to_string(),
                keys(&["email:a@b.c", "phone:+491"]),
                Some(p1)
            ),
            (at("erp", "2").to_string(), keys(&["email:a@b.c"]), Some(p1)),
            (at("odoo", "10").to_string(), keys(&["name:x"]), None),
            (at("odoo", "9").to_string(), keys(&[]), None),
            (
                at("shop", "a").to_string(),
                keys(&["name:x", "zip:1"]),
                Some(p2)
            ),
        ]
    );
    assert_eq!(pages[1].customer, customers[1], "bodies are read whole");
    assert!(
        tx.identity_page(after.as_ref(), 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        tx.all_decisions().await.unwrap(),
        vec![IdentityDecision::new(
            at("erp", "1"),
            at("shop", "a"),
            false
        )]
    );
    // An empty queue is answered without counting the stored records.
    assert_eq!(tx.take_relink(10).await.unwrap().len(), 4);
    assert_eq!(tx.relink_backlog().await.unwrap(), (0, 0));
}

async fn the_match_model_is_stored_once(backend: &Backend) {
    let store = backend.store();
    assert_eq!(store.match_model().await.unwrap(), None);
    let mut tx = store.begin().await.unwrap();
    tx.set_match_model("{\"v\":1}").await.unwrap();
    tx.set_match_model("{\"v\":2}").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        store.match_model().await.unwrap().as_deref(),
        Some("{\"v\":2}")
    );
}

async fn batch_methods_take_thousands_of_items(backend: &Backend) {
    let store = backend.store();
    let n = 12_000;
    let records: Vec<Record> = (0..n)
        .map(|i| Record::Customer(customer("shop", "customers", &format!("k{i}"), &[])))
        .collect();
    let refs: Vec<SourceRef> = records.iter().map(|r| r.source().clone()).collect();
    let profile_id = Uuid::from_u128(1);
    let mut tx = store.begin().await.unwrap();
    let outcomes = tx.upsert_records(&records, 1).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == Upsert::Inserted));
    let keys: Vec<(SourceRef, Vec<String>)> = refs
        .iter()
        .map(|r| (r.clone(), vec![format!("email:{}@x", r.source_id)]))
        .collect();
    tx.set_match_keys_many(&keys).await.unwrap();
    let links: Vec<(SourceRef, Uuid)> = refs.iter().map(|r| (r.clone(), profile_id)).collect();
    tx.set_links(&links).await.unwrap();
    let found = tx.keys_and_links(&refs).await.unwrap();
    assert_eq!(found.len(), n);
    assert_eq!(
        found[n - 1],
        (vec![format!("email:k{}@x", n - 1)], Some(profile_id))
    );
    assert_eq!(tx.customers_by_refs(&refs).await.unwrap().len(), n);
    assert_eq!(tx.customers_of(profile_id).await.unwrap().len(), n);
    let writes: Vec<ProfileWrite> = (0..5000u128)
        .map(|i| {
            write(
                profile(Uuid::from_u128(1000 + i), 1, "P"),
                "customer.profile.created",
            )
        })
        .collect();
    tx.write_profiles(&writes).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 5000);
    let events = store.pending_events(10_000).await.unwrap();
    assert_eq!(events.len(), 5000);
    assert_eq!(
        events[4999].event_id,
        format!("{}:1", Uuid::from_u128(5999))
    );
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    store.mark_delivered(&seqs).await.unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 0);
}

async fn job_leases_are_granted_on_every_backend(backend: &Backend) {
    let store = backend.store();
    let fire = Timestamp::now();
    let ttl = Duration::from_secs(30);
    assert!(
        store
            .acquire_job_lease("nightly", "a", fire, ttl)
            .await
            .unwrap()
    );
    assert!(store.renew_job_lease("nightly", "a", ttl).await.unwrap());
    store.release_job_lease("nightly", "a").await.unwrap();
    let next = fire
        .checked_add(jiff::SignedDuration::from_secs(60))
        .unwrap();
    assert!(
        store
            .acquire_job_lease("nightly", "b", next, ttl)
            .await
            .unwrap()
    );
}

/// Two PostgreSQL handles on one fresh schema, or `None` when PostgreSQL is unreachable.
async fn two_postgres_handles() -> Option<(Backend, Arc<dyn Store>)> {
    let backend = Backend::postgres().await?;
    let other = backend.reopen().await;
    Some((backend, other))
}

async fn fill_outbox(store: &dyn Store, count: u128) {
    let mut tx = store.begin().await.unwrap();
    let writes: Vec<ProfileWrite> = (1..=count)
        .map(|i| {
            write(
                profile(Uuid::from_u128(i), 1, "P"),
                "customer.profile.created",
            )
        })
        .collect();
    tx.write_profiles(&writes).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relays_claim_disjoint_outbox_rows_and_keep_their_own_claims() {
    let Some((backend, other)) = two_postgres_handles().await else {
        return;
    };
    let (first, second) = (backend.store(), other.as_ref());
    fill_outbox(first, 5).await;
    let mine = first.pending_events(3).await.unwrap();
    assert_eq!(mine.len(), 3);
    let theirs = second.pending_events(10).await.unwrap();
    assert_eq!(
        theirs.len(),
        2,
        "rows claimed by the first relay are skipped"
    );
    let mine_seqs: BTreeSet<i64> = mine.iter().map(|e| e.seq).collect();
    assert!(theirs.iter().all(|e| !mine_seqs.contains(&e.seq)));
    // Rows another relay delivers are not pending for this one; its own claims are.
    assert_eq!(first.pending_count().await.unwrap(), 3);
    assert_eq!(second.pending_count().await.unwrap(), 2);
    // A relay re-reads its own unconfirmed claims (a retry), in order.
    let again = first.pending_events(10).await.unwrap();
    assert_eq!(again, mine);
    first
        .mark_delivered(&mine_seqs.iter().copied().collect::<Vec<_>>())
        .await
        .unwrap();
    let seqs: Vec<i64> = theirs.iter().map(|e| e.seq).collect();
    second.mark_delivered(&seqs).await.unwrap();
    assert!(first.pending_events(10).await.unwrap().is_empty());
    assert_eq!(first.pending_count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_of_a_dead_relay_are_taken_over_after_they_expire() {
    let Some((backend, other)) = two_postgres_handles().await else {
        return;
    };
    let (first, second) = (backend.store(), other.as_ref());
    fill_outbox(first, 2).await;
    assert_eq!(first.pending_events(10).await.unwrap().len(), 2);
    assert!(second.pending_events(10).await.unwrap().is_empty());
    // The first relay dies; its claims run out (moved into the past here, not waited for).
    let Place::Postgres { url, schema } = &backend.place else {
        unreachable!()
    };
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{schema}\".outbox_pending SET claimed_until = now() - interval '1 second'"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let taken = second.pending_events(10).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert!(first.pending_events(10).await.unwrap().is_empty());
}

/// The migration that moved delivery state into `outbox_pending` carries every undelivered
/// row over, claims included, and no delivered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_upgrade_keeps_undelivered_rows_and_their_claims() {
    use sqlx::Connection;
    let Some(url) = postgres_url() else {
        return;
    };
    let schema = fresh_schema("upgrade");
    let dir = crate::common::repo_root().join("src/store/migrations/postgres");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let (before, from) = files.split_at(
        files
            .iter()
            .position(|f| f.ends_with("0006_outbox_pending.sql"))
            .unwrap(),
    );
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut run = async |sql: String| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET search_path TO \"{schema}\"; {sql}"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    };
    run(format!("CREATE SCHEMA \"{schema}\"")).await;
    for file in before {
        run(std::fs::read_to_string(file).unwrap()).await;
    }
    run(
        "INSERT INTO outbox (event_id, event_type, body, created_at, delivered_at, \
             claimed_by, claimed_until) VALUES \
         ('e1', 't', '{}', now(), now(), NULL, NULL), \
         ('e2', 't', '{}', now(), NULL, 'relay-a', now() + interval '1 minute'), \
         ('e3', 't', '{}', now(), NULL, NULL, NULL)"
            .into(),
    )
    .await;
    run(std::fs::read_to_string(&from[0]).unwrap()).await;
    let rows: Vec<(String, Option<String>, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o.event_id, p.claimed_by, p.claimed_until IS NOT NULL \
         FROM \"{schema}\".outbox_pending p JOIN \"{schema}\".outbox o ON o.seq = p.seq \
         ORDER BY p.seq"
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    drop(conn);
    drop_schema(&url, &schema);
    assert_eq!(
        rows,
        [
            ("e2".to_string(), Some("relay-a".to_string()), true),
            ("e3".to_string(), None, false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_relay_that_stops_releases_its_claims_at_once() {
    let Some((backend, other)) = two_postgres_handles().await else {
        return;
    };
    let (first, second) = (backend.store(), other.as_ref());
    fill_outbox(first, 3).await;
    let claimed = first.pending_events(2).await.unwrap();
    first.mark_delivered(&[claimed[0].seq]).await.unwrap();
    assert_eq!(second.pending_events(10).await.unwrap().len(), 1);
    second.release_claims().await.unwrap();
    // The first relay gives up (its sink failed past the budget): its undelivered claim is
    // free again, and the delivered row stays delivered.
    first.release_claims().await.unwrap();
    assert_eq!(second.pending_count().await.unwrap(), 2);
    let rest = second.pending_events(10).await.unwrap();
    let seqs: Vec<i64> = rest.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [claimed[1].seq, claimed[1].seq + 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_relays_never_receive_the_same_row() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    fill_outbox(backend.store(), 300).await;
    let mut relays = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let store = backend.reopen().await;
        relays.spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.pending_events(7).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                let seqs: Vec<i64> = batch.iter().map(|e| e.seq).collect();
                store.mark_delivered(&seqs).await.unwrap();
                got.extend(seqs);
            }
        });
    }
    let mut all = Vec::new();
    while let Some(got) = relays.join_next().await {
        all.extend(got.unwrap());
    }
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 300, "every row delivered once");
    assert_eq!(distinct.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_job_leases_run_each_fire_time_once_and_are_taken_over_when_expired() {
    let Some((backend, other)) = two_postgres_handles().await else {
        return;
    };
    let (a, b) = (backend.store(), other.as_ref());
    let ttl = Duration::from_secs(30);
    let t1 = Timestamp::now();
    let t2 = t1.checked_add(jiff::SignedDuration::from_secs(5)).unwrap();
    let t3 = t2.checked_add(jiff::SignedDuration::from_secs(5)).unwrap();
    assert!(a.acquire_job_lease("sync", "A", t1, ttl).await.unwrap());
    // A live lease excludes another holder, for this and later fire times.
    assert!(!b.acquire_job_lease("sync", "B", t1, ttl).await.unwrap());
    assert!(!b.acquire_job_lease("sync", "B", t2, ttl).await.unwrap());
    // Another job is independent.
    assert!(b.acquire_job_lease("other", "B", t1, ttl).await.unwrap());
    assert!(a.renew_job_lease("sync", "A", ttl).await.unwrap());
    assert!(!b.renew_job_lease("sync", "B", ttl).await.unwrap());
    a.release_job_lease("sync", "A").await.unwrap();
    // Released: a fire time already run is not run again, a later one is.
    assert!(!b.acquire_job_lease("sync", "B", t1, ttl).await.unwrap());
    assert!(b.acquire_job_lease("sync", "B", t2, ttl).await.unwrap());
    // B dies holding the lease: once it expires, A takes over the next fire time.
    assert!(!a.acquire_job_lease("sync", "A", t3, ttl).await.unwrap());
    assert!(
        b.renew_job_lease("sync", "B", Duration::from_millis(50))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.acquire_job_lease("sync", "A", t3, ttl).await.unwrap());
    assert!(
        !b.renew_job_lease("sync", "B", ttl).await.unwrap(),
        "B lost its lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_racing_replicas_take_one_fire_time_once() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let fire = Timestamp::now();
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = backend.reopen().await;
        racers.spawn(async move {
            store
                .acquire_job_lease(
                    "sync",
                    &format!("replica-{i}"),
                    fire,
                    Duration::from_secs(30),
                )
                .await
                .unwrap()
        });
    }
    let mut granted = 0;
    while let Some(won) = racers.join_next().await {
        granted += usize::from(won.unwrap());
    }
    assert_eq!(granted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_run_once_and_reopening_keeps_the_data() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let mut tx = backend.store().begin().await.unwrap();
    tx.set_cursor("c", "s", "1").await.unwrap();
    tx.commit().await.unwrap();
    let again = backend.reopen().await;
    assert_eq!(again.cursor("c", "s").await.unwrap().as_deref(), Some("1"));
    let Place::Postgres { url, schema } = &backend.place else {
        unreachable!()
    };
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{schema}\"._sqlx_migrations"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    let shipped =
        std::fs::read_dir(crate::common::repo_root().join("src/store/migrations/postgres"))
            .unwrap()
            .count();
    assert_eq!(applied as usize, shipped);
}

async fn open_orders_with_skus_finds_embedded_and_standalone_lines_of_open_orders_only(
    backend: &Backend,
) {
    let store = backend.store();
    let with_lines = |id: &str, status: conflux::model::OrderStatus, skus: &[&str]| {
        let mut o = order("erp", id, Some("c"));
        o.status = status;
        o.lines = skus
            .iter()
            .map(|sku| OrderLine {
                sku: Some(sku.to_string()),
                ..OrderLine::default()
            })
            .collect();
        Record::Order(o)
    };
    use conflux::model::OrderStatus::{Fulfilled, Open, PartiallyFulfilled};
    let mut tx = store.begin().await.unwrap();
    tx.upsert_records(
        &[
            with_lines("1", Open, &["A", "B"]),
            with_lines("2", PartiallyFulfilled, &["B"]),
            with_lines("3", Fulfilled, &["A"]),
            with_lines("4", Open, &["C"]),
            // Order 5 has no lines of its own; its standalone line is on A.
            with_lines("5", Open, &[]),
            Record::OrderLine(OrderLineItem {
                source: source("erp", "lines", "5-1"),
                order_id: "5".into(),
                line: OrderLine {
                    sku: Some("A".into()),
                    ..OrderLine::default()
                },
            }),
        ],
        1,
    )
    .await
    .unwrap();
    let ids = |orders: Vec<Order>| -> Vec<String> {
        orders.into_iter().map(|o| o.source.source_id).collect()
    };
    let found = tx.open_orders_with_skus(&["A".into()]).await.unwrap();
    assert_eq!(found[1].lines.len(), 1, "standalone lines are attached");
    assert_eq!(ids(found), ["1", "5"]);
    assert_eq!(
        ids(tx
            .open_orders_with_skus(&["B".into(), "C".into()])
            .await
            .unwrap()),
        ["1", "2", "4"]
    );
    assert!(tx.open_orders_with_skus(&[]).await.unwrap().is_empty());
    assert!(
        tx.open_orders_with_skus(&["Z".into()])
            .await
            .unwrap()
            .is_empty()
    );
    // Lines that move to another SKU, through one-row and batch upserts, leave the old one.
    tx.upsert_record(&with_lines("1", Open, &["B"]), 2)
        .await
        .unwrap();
    tx.upsert_records(
        &[Record::OrderLine(OrderLineItem {
            source: source("erp", "lines", "5-1"),
            order_id: "5".into(),
            line: OrderLine {
                sku: Some("C".into()),
                ..OrderLine::default()
            },
        })],
        2,
    )
    .await
    .unwrap();
    assert!(
        tx.open_orders_with_skus(&["A".into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(tx.open_orders_with_skus(&["C".into()]).await.unwrap()),
        ["4", "5"]
    );
    tx.commit().await.unwrap();

    // The migration that made the SKU index fills it from stored orders and lines as the
    // upserts do.
    let backfill = match &backend.place {
        Place::Sqlite(_) => "sqlite/0009_order_skus.sql",
        Place::Postgres { .. } => "postgres/0005_order_skus.sql",
    };
    let migration = std::fs::read_to_string(
        crate::common::repo_root()
            .join("src/store/migrations")
            .join(backfill),
    )
    .unwrap();
    let inserts = &migration[migration.find("INSERT").unwrap()..];
    run_sql(backend, &format!("DELETE FROM order_skus; {inserts}")).await;
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        ids(tx
            .open_orders_with_skus(&["B".into(), "C".into()])
            .await
            .unwrap()),
        ["1", "2", "4", "5"]
    );
    assert!(
        tx.open_orders_with_skus(&["A".into()])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn sku_records_returns_stock_supplier_items_and_products_of_the_skus(backend: &Backend) {
    let store = backend.store();
    let mut tx = store.begin().await.unwrap();
    tx.upsert_records(
        &[
            Record::Inventory(conflux::model::Inventory {
                source: source("wms", "stock", "A@MUC"),
                sku: "A".into(),
                ..Default::default()
            }),
            Record::Inventory(conflux::model::Inventory {
                source: source("wms", "stock", "B@MUC"),
                sku: "B".into(),
                ..Default::default()
            }),
            Record::SupplierItem(conflux::model::SupplierItem {
                source: source("buy", "items", "S1-A"),
                supplier_id: "S1".into(),
                sku: "A".into(),
                lead_time_days: Some(7),
                ..Default::default()
            }),
            Record::Product(conflux::model::Product {
                source: source("erp", "products", "A"),
                sku: "A".into(),
                category: Some("Pumps".into()),
                ..Default::default()
            }),
            Record::Customer(customer("erp", "customers", "A", &[])),
        ],
        1,
    )
    .await
    .unwrap();
    let found: Vec<String> = tx
        .sku_records(&["A".into(), "A".into()])
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.kind(), r.source()))
        .collect();
    assert_eq!(
        found,
        [
            "supplier_item buy/items/S1-A",
            "product erp/products/A",
            "inventory wms/stock/A@MUC",
        ]
    );
    assert!(tx.sku_records(&[]).await.unwrap().is_empty());
}

async fn profile_metric_rows_and_bodies_cover_live_profiles_only(backend: &Backend) {
    let store = backend.store();
    let (live, retired, unlinked) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
    let mut tx = store.begin().await.unwrap();
    let mut p = profile(live, 1, "Live");
    p.metrics.order_count = 3;
    p.metrics.lifetime_value.amount = Decimal::new(12345, 2);
    p.metrics.last_order_at = Some("2026-01-02T03:04:05Z".parse().unwrap());
    p.segment.lifecycle = conflux::model::profile::Lifecycle::Repeat;
    for (profile, name) in [(&p, "live"), (&profile(retired, 1, "Old"), "old")] {
        tx.write_profile(profile, name, "customer.profile.created", "{}")
            .await
            .unwrap();
    }
    tx.write_profile(
        &profile(unlinked, 1, "Nobody"),
        "n",
        "customer.profile.created",
        "{}",
    )
    .await
    .unwrap();
    tx.set_links(&[
        (source("erp", "customers", "1"), live),
        (source("erp", "customers", "2"), retired),
    ])
    .await
    .unwrap();
    tx.retire_profile(retired, live).await.unwrap();

    let rows = tx.profile_metric_rows().await.unwrap();
    assert_eq!(rows.len(), 1, "retired and unlinked profiles are left out");
    assert_eq!(rows[0].profile_id, live);
    assert_eq!(rows[0].order_count, 3);
    assert_eq!(rows[0].lifetime_value, Decimal::new(12345, 2));
    assert_eq!(rows[0].last_order_at, p.metrics.last_order_at);
    assert_eq!(rows[0].first_order_at, None);
    assert_eq!(rows[0].segment, p.segment);

    let bodies = tx
        .latest_profile_bodies(&[live, Uuid::from_u128(9)])
        .await
        .unwrap();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[&live], p);
    tx.commit().await.unwrap();

    // The migration that added the metrics column fills it from the stored bodies exactly as
    // the store writes it.
    let backfill = match &backend.place {
        Place::Sqlite(_) => "sqlite/0008_profile_metrics.sql",
        Place::Postgres { .. } => "postgres/0004_profile_metrics.sql",
    };
    let migration = std::fs::read_to_string(
        crate::common::repo_root()
            .join("src/store/migrations")
            .join(backfill),
    )
    .unwrap();
    let update = &migration[migration.find("UPDATE profiles").unwrap()..];
    run_sql(
        backend,
        &format!("UPDATE profiles SET metrics = NULL; {update}"),
    )
    .await;
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.profile_metric_rows().await.unwrap(), rows);
}

/// Runs `sql` (several statements) directly on the backend's database.
async fn run_sql(backend: &Backend, sql: &str) {
    use sqlx::Connection;
    match &backend.place {
        Place::Sqlite(dir) => {
            let url = format!("sqlite://{}", dir.path().join("conflux.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Place::Postgres { url, schema } => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET search_path TO \"{schema}\"; {sql}"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
}

/// The migration that moved match keys into one key-ordered table keeps every stored key, and
/// lookups by key and by record and the replacement of a record's keys work on the result.
#[tokio::test]
async fn sqlite_match_keys_upgrade_keeps_every_key() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conflux.db");
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    let mut before = sqlx::migrate::Migrator::new(
        crate::common::repo_root().join("src/store/migrations/sqlite"),
    )
    .await
    .unwrap();
    let upgrade = before
        .migrations
        .iter()
        .position(|m| m.description.contains("match keys clustered"))
        .expect("the match keys migration");
    before.migrations = before.migrations[..upgrade].to_vec().into();
    before.run(&pool).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO match_keys (key, system, stream, source_id) VALUES \
         ('email:x@y.z', 'erp', 'customers', 'a'), ('vat:DE1', 'erp', 'customers', 'a'), \
         ('email:x@y.z', 'crm', 'contacts', 'b'), ('blk:pc:01067', 'crm', 'contacts', 'b')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    let (a, b) = (
        source("erp", "customers", "a"),
        source("crm", "contacts", "b"),
    );
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.match_keys(&a).await.unwrap(), ["email:x@y.z", "vat:DE1"]);
    assert_eq!(
        tx.records_with_keys(&["email:x@y.z".into()]).await.unwrap(),
        [(b.clone(), None), (a.clone(), None)]
    );
    let lookup = tx
        .block_members(&["blk:pc:01067".into()], 10)
        .await
        .unwrap();
    assert_eq!(lookup.members, [("blk:pc:01067".to_string(), b.clone())]);
    tx.set_match_keys_many(&[(a.clone(), vec!["phone:+491".into(), "email:x@y.z".into()])])
        .await
        .unwrap();
    assert_eq!(
        tx.match_keys(&a).await.unwrap(),
        ["email:x@y.z", "phone:+491"]
    );
    assert_eq!(
        tx.match_keys(&b).await.unwrap(),
        ["blk:pc:01067", "email:x@y.z"]
    );
    tx.commit().await.unwrap();
}
