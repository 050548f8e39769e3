//! The enriched profile end to end: late orders attached when their customer arrives, an
//! unknown currency quarantined, a stock change re-versioning only the profiles with open
//! lines on its SKU, every published event valid against the committed schema, and
//! `conflux feed tail` showing what consumers of the real RabbitMQ receive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use conflux::pipeline;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{amqp_url, load, project_copy, project_with, read_feed, repo_root};

/// Fails with every violation when an event does not validate against the committed
/// `schema/customer-profile.schema.json`.
pub fn assert_valid_events(events: &[serde_json::Value]) {
    let text =
        std::fs::read_to_string(repo_root().join("schema/customer-profile.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the committed schema compiles");
    assert!(!events.is_empty(), "no events to validate");
    for event in events {
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "event {} does not match the schema: {errors:?}",
            event["id"]
        );
    }
}

const CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/p.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
match_on = ["email"]

[profile]
base_currency = "EUR"
fx = { USD = "0.5" }
today = "2026-11-23"

[[job]]
name = "all"
sync = ["crm", "erp"]
"#;

const CRM: &str = r#"
kind = "file"
system = "erp"
dir = "drops/customers"

[[stream]]
name = "customers"
pattern = "*.csv"
format = "csv"
mapping = "erp.customer"
"#;

const ERP: &str = r#"
kind = "file"
system = "erp"
dir = "drops/orders"

[[stream]]
name = "orders"
pattern = "*.json"
format = "json"
mapping = "erp.order"
"#;

const CUSTOMER_MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "id"
name = "name"
email = { path = "email", transforms = ["email"] }
"#;

const ORDER_MAPPING: &str = r#"
entity = "order"

[fields]
source_id = "id"
order_number = "id"
customer_id = "customer"
ordered_at = "at"
status = "status"
currency = "currency"
total = "total"
"#;

fn small_project() -> tempfile::TempDir {
    project_with(&[
        ("config/p.toml", CONFIG.as_bytes()),
        ("connectors/crm.toml", CRM.as_bytes()),
        ("connectors/erp.toml", ERP.as_bytes()),
        ("mappings/erp.customer.toml", CUSTOMER_MAPPING.as_bytes()),
        ("mappings/erp.order.toml", ORDER_MAPPING.as_bytes()),
        ("drops/customers/.keep", b""),
    ])
}

fn write(project: &Path, path: &str, text: &str) {
    let path = project.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn an_order_that_arrives_a_run_before_its_customer_is_attached_when_it_arrives() {
    let project = small_project();
    let config = load(project.path(), "config/p.toml");
    let feed_path = project.path().join(".conflux/feed.ndjson");
    write(
        project.path(),
        "drops/orders/1.json",
        r#"[{"id": "O-1", "customer": "C-1", "at": "2026-11-01T10:00:00Z", "status": "fulfilled", "currency": "USD", "total": "200.00"},
            {"id": "O-2", "customer": "C-1", "at": "2026-11-02T10:00:00Z", "status": "open", "currency": "JPY", "total": "5000"}]"#,
    );

    let first = pipeline::run(&config, None).await.unwrap();
    assert_eq!(first.records_mapped, 1);
    assert_eq!(
        first.records_quarantined, 1,
        "the JPY order has no rate and is not converted at 1.0"
    );
    assert_eq!(first.profiles_created, 0, "no customer yet: no profile");
    assert!(read_feed(&feed_path).is_empty());
    let store = pipeline::open_store(&config).await.unwrap();
    let quarantined = store.quarantine_rows(10).await.unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].source_ref, "erp/orders/O-2");
    assert!(
        quarantined[0].reason.contains("JPY")
            && quarantined[0].reason.contains("no FX rate in [profile.fx]"),
        "{}",
        quarantined[0].reason
    );

    write(
        project.path(),
        "drops/customers/1.csv",
        "id,name,email\nC-1,Anna Berg,anna@example.com\n",
    );
    let second = pipeline::run(&config, None).await.unwrap();
    assert_eq!(second.profiles_created, 1);
    let feed = read_feed(&feed_path);
    assert_valid_events(&feed);
    let created = feed
        .iter()
        .find(|e| e["type"] == "customer.profile.created")
        .unwrap();
    let data = &created["data"];
    assert_eq!(
        data["metrics"]["order_count"], 1,
        "the early order is attached"
    );
    assert_eq!(data["metrics"]["lifetime_value"]["amount"], "100");
    assert_eq!(data["metrics"]["lifetime_value"]["currency"], "EUR");
    assert_eq!(data["metrics"]["days_since_last_order"], 22);
    assert_eq!(data["segment"]["lifecycle"], "new");
    assert_eq!(data["as_of"], "2026-11-23");
    // The end-of-run segmentation gives the only buyer its RFM scores in a second version.
    assert_eq!(second.profiles_resegmented, 1);
    let latest = feed.last().unwrap();
    assert_eq!(latest["data"]["version"], 2);
    assert_eq!(
        latest["data"]["segment"]["rfm"],
        serde_json::json!({"recency": 1, "frequency": 1, "monetary": 1})
    );

    // Nothing changed: a third run writes nothing, segmentation included.
    let third = pipeline::run(&config, None).await.unwrap();
    assert_eq!(third.profiles_updated + third.profiles_created, 0);
    assert_eq!(read_feed(&feed_path).len(), feed.len());
}

/// The latest event of each profile id.
fn latest(feed: &[serde_json::Value]) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for event in feed {
        out.insert(
            event["subject"].as_str().unwrap().to_string(),
            event.clone(),
        );
    }
    out
}

fn open_skus(profile: &serde_json::Value) -> BTreeSet<String> {
    profile["data"]["open_orders"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["lines"].as_array().unwrap())
        .map(|l| l["sku"].as_str().unwrap().to_string())
        .collect()
}

fn line<'a>(profile: &'a serde_json::Value, order: &str, sku: &str) -> &'a serde_json::Value {
    profile["data"]["open_orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["order_number"] == order)
        .flat_map(|o| o["lines"].as_array().unwrap())
        .find(|l| l["sku"] == sku)
        .unwrap_or_else(|| panic!("no open line {order}/{sku}"))
}

#[tokio::test]
async fn a_stock_change_re_versions_only_the_profiles_with_open_lines_on_its_sku() {
    let project = project_copy();
    let config = load(project.path(), "config/demo.toml");
    let feed_path = project.path().join(".conflux/feed.ndjson");
    pipeline::run(&config, None).await.unwrap();
    let before = read_feed(&feed_path);
    assert_valid_events(&before);
    let profiles = latest(&before);
    let mueller = profiles
        .values()
        .find(|e| e["data"]["golden"]["full_name"] == "Müller Maschinenbau GmbH")
        .unwrap();
    // SKU-120: 1 available (MUC-01 3 - 2) for Müller's 4: backordered until today (the
    // pinned 2026-11-23) + 21 days, the shorter of SUP-040's 21 and SUP-050's 35.
    let short = line(mueller, "0000045107", "SKU-120");
    assert_eq!(short["status"], "backorder");
    assert_eq!(short["allocated"], "1");
    assert_eq!(short["projected_date"], "2026-12-14");
    assert_eq!(short["promised_date"], "2026-12-15");
    assert_eq!(mueller["data"]["earliest_projected_date"], "2026-12-14");

    let on_sku_120: BTreeSet<String> = profiles
        .iter()
        .filter(|(_, e)| open_skus(e).contains("SKU-120"))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(on_sku_120.contains(mueller["subject"].as_str().unwrap()));
    assert!(on_sku_120.len() < profiles.len());

    // The next night's snapshot: 9 more SKU-120 arrived in Munich; everything else is as it
    // was (a re-delivered row with the same values is unchanged).
    let stock = std::fs::read_to_string(project.path().join("demo/warehouse/stock.csv")).unwrap();
    let changed: String = stock
        .lines()
        .map(|l| {
            if l.starts_with("SKU-120,MUC-01,") {
                "SKU-120,MUC-01,12,2,0,2026-11-22T22:00:00Z".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert_ne!(
        changed, stock,
        "the demo's SKU-120 row moved; update this test"
    );
    write(project.path(), "demo/warehouse/stock_2.csv", &changed);
    let summary = pipeline::run(&config, None).await.unwrap();
    assert_eq!(summary.records_updated, 1, "one stock row changed");

    let after = read_feed(&feed_path);
    let new_events = &after[before.len()..];
    assert_valid_events(new_events);
    let re_versioned: BTreeSet<String> = new_events
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        re_versioned, on_sku_120,
        "exactly the profiles with open SKU-120 lines get new versions"
    );
    let mueller_now = latest(&after)[mueller["subject"].as_str().unwrap()].clone();
    let covered = line(&mueller_now, "0000045107", "SKU-120");
    assert_eq!(covered["status"], "available");
    assert_eq!(covered["allocated"], "4");
    assert!(covered.get("projected_date").is_none());
    assert_eq!(mueller_now["type"], "customer.profile.updated");

    // Purchasing negotiates 10 days instead of 14 for SKU-100 with SUP-020: only the
    // profiles with open SKU-100 lines are re-evaluated, and Weber's short line moves.
    let profiles = latest(&after);
    let on_sku_100: BTreeSet<String> = profiles
        .iter()
        .filter(|(_, e)| open_skus(e).contains("SKU-100"))
        .map(|(id, _)| id.clone())
        .collect();
    let weber = profiles
        .values()
        .find(|e| {
            e["data"]["golden"]["full_name"]
                .as_str()
                .unwrap()
                .starts_with("Weber")
        })
        .unwrap();
    assert!(on_sku_100.contains(weber["subject"].as_str().unwrap()));
    assert_eq!(
        line(weber, "0000045108", "SKU-100")["projected_date"],
        "2026-12-07"
    );
    let leads =
        std::fs::read_to_string(project.path().join("demo/suppliers/lead_times.csv")).unwrap();
    let faster = leads.replace(
        "SUP-020,Fluidtechnik Rhein GmbH,SKU-100,14,",
        "SUP-020,Fluidtechnik Rhein GmbH,SKU-100,10,",
    );
    assert_ne!(
        faster, leads,
        "the demo's SUP-020 row moved; update this test"
    );
    write(project.path(), "demo/suppliers/lead_times_2.csv", &faster);
    let summary = pipeline::run(&config, None).await.unwrap();
    assert_eq!(summary.records_updated, 1, "one supplier item changed");
    let last = read_feed(&feed_path);
    let new_events = &last[after.len()..];
    assert_valid_events(new_events);
    let re_versioned: BTreeSet<String> = new_events
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(re_versioned, on_sku_100);
    let weber_now = &latest(&last)[weber["subject"].as_str().unwrap()];
    assert_eq!(
        line(weber_now, "0000045108", "SKU-100")["projected_date"],
        "2026-12-03"
    );
}

#[tokio::test]
async fn feed_tail_prints_what_consumers_of_the_exchange_receive() {
    let Some(url) = amqp_url() else { return };
    // The demo's events, counted on a file feed first.
    let counted = project_copy();
    let config = load(counted.path(), "config/demo.toml");
    let expected = pipeline::run(&config, None).await.unwrap().events_delivered;
    assert!(expected > 0);

    let project = project_copy();
    let exchange = format!("conflux.test.tail.{}", uuid::Uuid::now_v7());
    let path = project.path().join("config/demo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let file_feed = "[feed]\nsink = \"file\"\npath = \".conflux/feed.ndjson\"\n";
    assert!(text.contains(file_feed), "demo.toml's [feed] changed");
    std::fs::write(
        &path,
        text.replace(
            file_feed,
            &format!(
                "[feed]\nsink = \"amqp\"\nretry_budget = \"10s\"\namqp = {{ url = \"{url}\", exchange = \"{exchange}\" }}\n"
            ),
        ),
    )
    .unwrap();

    // The exchange comes from the config, the broker from the flag.
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args([
            "feed",
            "tail",
            "--config",
            "config/demo.toml",
            "--amqp",
            &url,
            "--count",
            &expected.to_string(),
        ])
        .current_dir(project.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(tail.stderr.take().unwrap()).lines();
    let bound = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("tailing exchange") {
                return line;
            }
        }
        panic!("feed tail ended before binding its queue");
    })
    .await
    .expect("feed tail binds its queue within 20 s");
    assert!(bound.contains(&exchange), "{bound}");
    assert!(
        !bound.contains("guest:guest"),
        "the password is not shown: {bound}"
    );

    let config = load(project.path(), "config/demo.toml");
    let summary = pipeline::run(&config, None).await.unwrap();
    assert_eq!(summary.events_delivered, expected);

    let output = tokio::time::timeout(Duration::from_secs(30), tail.wait_with_output())
        .await
        .expect("feed tail stops after --count events")
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let events: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len() as u64, expected);
    assert_valid_events(&events);
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "each event once");
    for event in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], "urn:conflux:demo");
    }

    // The temporary queue went with the tail; the exchange is the test's to remove.
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_delete(
            exchange.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn every_demo_event_validates_against_the_committed_schema() {
    let project = project_copy();
    let config = load(project.path(), "config/demo.toml");
    pipeline::run(&config, None).await.unwrap();
    let feed = read_feed(&project.path().join(".conflux/feed.ndjson"));
    assert_valid_events(&feed);
    // The schema is strict enough to catch a broken event.
    let mut broken = feed[0].clone();
    broken["data"]["segment"]["lifecycle"] = "gone".into();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("schema/customer-profile.schema.json")).unwrap(),
    )
    .unwrap();
    assert!(!jsonschema::is_valid(&schema, &broken));
}

const SUPPLY_CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/s.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
match_on = ["email"]

[profile]
today = "2026-11-23"

[[job]]
name = "all"
sync = ["crm", "erp", "wms"]
"#;

const LINE_ORDER_MAPPING: &str = r#"
entity = "order"

[fields]
source_id = "id"
order_number = "id"
customer_id = "customer"
ordered_at = "at"
status = { value = "open" }
currency = { value = "EUR" }
total = "total"

[lines]
path = "lines[*]"

[lines.fields]
sku = "sku"
quantity = "qty"
"#;

const WMS: &str = r#"
kind = "file"
system = "wms"
dir = "drops/stock"

[[stream]]
name = "stock"
pattern = "*.csv"
format = "csv"
mapping = "wms.inventory"
"#;

const INVENTORY_MAPPING: &str = r#"
entity = "inventory"

[fields]
sku = "sku"
location = "location"
on_hand = "on_hand"
reserved = "reserved"
"#;

/// Five in stock. Orders of the 1st (3) and 5th (2) of November are covered; one of the
/// 10th (1) is short. A back-dated order of 1 October (4) then takes stock first: every
/// newer order's allocation moves, and each of their profiles gets a new version.
#[tokio::test]
async fn a_back_dated_order_moves_the_allocation_of_newer_orders_of_other_customers() {
    let project = project_with(&[
        ("config/s.toml", SUPPLY_CONFIG.as_bytes()),
        ("connectors/crm.toml", CRM.as_bytes()),
        ("connectors/erp.toml", ERP.as_bytes()),
        ("connectors/wms.toml", WMS.as_bytes()),
        ("mappings/erp.customer.toml", CUSTOMER_MAPPING.as_bytes()),
        ("mappings/erp.order.toml", LINE_ORDER_MAPPING.as_bytes()),
        ("mappings/wms.inventory.toml", INVENTORY_MAPPING.as_bytes()),
        (
            "drops/customers/1.csv",
            b"id,name,email\nC-1,One,one@example.com\nC-2,Two,two@example.com\nC-3,Three,three@example.com\n",
        ),
        ("drops/stock/1.csv", b"sku,location,on_hand,reserved\nX,MUC,6,1\n"),
        (
            "drops/orders/1.json",
            br#"[{"id": "O-1", "customer": "C-1", "at": "2026-11-01T00:00:00Z", "total": "30", "lines": [{"sku": "X", "qty": "3"}]},
                {"id": "O-2", "customer": "C-2", "at": "2026-11-05T00:00:00Z", "total": "20", "lines": [{"sku": "X", "qty": "2"}]},
                {"id": "O-3", "customer": "C-3", "at": "2026-11-10T00:00:00Z", "total": "10", "lines": [{"sku": "X", "qty": "1"}]}]"#,
        ),
    ]);
    let config = load(project.path(), "config/s.toml");
    let feed_path = project.path().join(".conflux/feed.ndjson");
    pipeline::run(&config, None).await.unwrap();
    let feed = read_feed(&feed_path);
    assert_valid_events(&feed);
    let status_of = |feed: &[serde_json::Value], customer: &str| -> Vec<(String, String)> {
        let event = feed
            .iter()
            .rev()
            .find(|e| e["data"]["sources"][0]["source_id"] == customer)
            .unwrap();
        event["data"]["open_orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let line = &o["lines"][0];
                (
                    o["order_number"].as_str().unwrap().to_string(),
                    format!("{} {}", line["status"].as_str().unwrap(), line["allocated"]),
                )
            })
            .collect()
    };
    let pair = |order: &str, status: &str| vec![(order.to_string(), status.to_string())];
    assert_eq!(status_of(&feed, "C-1"), pair("O-1", "available \"3\""));
    assert_eq!(status_of(&feed, "C-2"), pair("O-2", "available \"2\""));
    assert_eq!(
        status_of(&feed, "C-3"),
        pair("O-3", "at_risk \"0\""),
        "short, and no supplier lead time is known"
    );

    std::fs::write(
        project.path().join("drops/orders/2.json"),
        r#"[{"id": "O-0", "customer": "C-3", "at": "2026-10-01T00:00:00Z", "total": "40", "lines": [{"sku": "X", "qty": "4"}]}]"#,
    )
    .unwrap();
    let summary = pipeline::run(&config, None).await.unwrap();
    assert_eq!(summary.records_inserted, 1);
    assert_eq!(
        summary.profiles_updated, 3,
        "C-3 for its new order, C-1 and C-2 because the older order takes their stock"
    );
    let feed = read_feed(&feed_path);
    assert_valid_events(&feed);
    assert_eq!(status_of(&feed, "C-1"), pair("O-1", "at_risk \"1\""));
    assert_eq!(status_of(&feed, "C-2"), pair("O-2", "at_risk \"0\""));
    assert_eq!(
        status_of(&feed, "C-3"),
        vec![
            ("O-0".to_string(), "available \"4\"".to_string()),
            ("O-3".to_string(), "at_risk \"0\"".to_string()),
        ]
    );
}
