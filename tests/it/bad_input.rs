//! Bad input never stops a run: a broken CSV row, an XML file cut off mid-element and a value
//! of the wrong type are each quarantined with a reason, and the good records still flow.

use conflux::pipeline;

use crate::common::{load, project_with, read_feed};

const CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/bad.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
match_on = ["email"]

[[job]]
name = "drops"
sync = ["drops"]
"#;

const CONNECTOR: &str = r#"
kind = "file"
dir = "drops"

[[stream]]
name = "customers"
pattern = "customers*.csv"
format = "csv"
mapping = "drops.customer"

[[stream]]
name = "orders"
pattern = "orders*.xml"
format = "xml"
records = "ORDERS/ORDER"
mapping = "drops.order"
"#;

const CUSTOMER_MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "id"
name = { path = "name", transforms = ["trim"] }
email = { path = "email", transforms = ["email"] }
"#;

const ORDER_MAPPING: &str = r#"
entity = "order"

[fields]
source_id = "ID"
customer_id = "CUSTOMER"
currency = { value = "EUR" }
total = "TOTAL"
ordered_at = "DATE"
"#;

const CUSTOMERS_CSV: &str = "id,name,email
c1,Anna Berg,anna@example.com
c9,Broken Row
c2,Otto Kranz,otto@example.com
c3,Bad Mail,not-an-email
";

const ORDERS_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ORDERS>
  <ORDER><ID>1</ID><CUSTOMER>c1</CUSTOMER><TOTAL>10.50</TOTAL><DATE>20240501</DATE></ORDER>
  <ORDER><ID>2</ID><CUSTOMER>c2</CUSTOMER><TOTAL>ten</TOTAL><DATE>20240502</DATE></ORDER>
  <ORDER><ID>3</ID><CUSTOMER>c2</CUSTOMER><TOT"#;

#[tokio::test]
async fn broken_rows_truncated_xml_and_wrong_types_are_quarantined_and_the_rest_flows() {
    let project = project_with(&[
        ("config/bad.toml", CONFIG.as_bytes()),
        ("connectors/drops.toml", CONNECTOR.as_bytes()),
        ("mappings/drops.customer.toml", CUSTOMER_MAPPING.as_bytes()),
        ("mappings/drops.order.toml", ORDER_MAPPING.as_bytes()),
        ("drops/customers.csv", CUSTOMERS_CSV.as_bytes()),
        ("drops/orders.xml", ORDERS_XML.as_bytes()),
    ]);
    let config = load(project.path(), "config/bad.toml");
    let summary = pipeline::run(&config, Some("drops")).await.unwrap();

    assert_eq!(
        summary.records_read, 7,
        "4 CSV rows + 2 whole orders + 1 truncated order"
    );
    assert_eq!(summary.records_mapped, 3);
    assert_eq!(summary.records_quarantined, 4);
    assert_eq!(summary.profiles_created, 2);
    assert_eq!(
        summary.events_delivered,
        2 + 1,
        "two created (c1's with its order), then c1's RFM scores"
    );
    assert_eq!(summary.profiles_resegmented, 1);
    assert_eq!(summary.events_pending, 0);

    let store = pipeline::open_store(&config).await.unwrap();
    let mut rows = store.quarantine_rows(100).await.unwrap();
    rows.sort_by(|a, b| a.source_ref.cmp(&b.source_ref));
    let reasons: Vec<String> = rows
        .iter()
        .map(|r| format!("{} => {}", r.source_ref, r.reason))
        .collect();
    assert_eq!(rows.len(), 4, "{reasons:#?}");

    let find = |needle: &str| {
        rows.iter()
            .find(|r| r.reason.contains(needle))
            .unwrap_or_else(|| panic!("no quarantine reason mentions {needle:?}: {reasons:#?}"))
    };
    let broken_row = find("fields");
    assert_eq!(broken_row.stream, "customers");
    assert!(
        broken_row.raw.contains("Broken Row"),
        "raw payload kept: {}",
        broken_row.raw
    );
    assert!(
        broken_row.source_ref.contains("customers.csv:3"),
        "{}",
        broken_row.source_ref
    );

    let bad_mail = find("not-an-email");
    assert!(bad_mail.reason.contains("`email`"), "{}", bad_mail.reason);

    let wrong_type = find("`total`");
    assert!(wrong_type.reason.contains("ten"), "{}", wrong_type.reason);
    assert!(wrong_type.raw.contains("ten"));

    let truncated = find("end of file");
    assert_eq!(truncated.stream, "orders");

    let feed = read_feed(&project.path().join(".conflux/feed.ndjson"));
    assert_eq!(feed.len(), 3);
    let c1 = feed
        .iter()
        .rev()
        .find(|e| e["data"]["sources"][0]["source_id"] == "c1")
        .expect("c1's profile is published");
    assert_eq!(c1["data"]["metrics"]["order_count"], 1);
    assert_eq!(c1["data"]["metrics"]["lifetime_value"]["amount"], "10.5");
}

#[tokio::test]
async fn a_failing_stream_fails_the_run_but_events_already_committed_are_delivered() {
    let config = CONFIG.replace(
        r#"sync = ["drops"]"#,
        r#"sync = ["drops.customers", "late"]"#,
    );
    let late = "kind = \"file\"\ndir = \"late\"\n\n[[stream]]\nname = \"customers\"\npattern = \"*.csv\"\nformat = \"csv\"\nmapping = \"drops.customer\"\n";
    let project = project_with(&[
        ("config/bad.toml", config.as_bytes()),
        ("connectors/drops.toml", CONNECTOR.as_bytes()),
        ("connectors/late.toml", late.as_bytes()),
        ("mappings/drops.customer.toml", CUSTOMER_MAPPING.as_bytes()),
        ("mappings/drops.order.toml", ORDER_MAPPING.as_bytes()),
        ("drops/customers.csv", CUSTOMERS_CSV.as_bytes()),
    ]);
    let config = load(project.path(), "config/bad.toml");
    let error = pipeline::run(&config, Some("drops")).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("connector late, stream customers: "),
        "{message}"
    );
    assert!(
        message.contains("late"),
        "the missing directory is named: {message}"
    );
    let feed = read_feed(&project.path().join(".conflux/feed.ndjson"));
    assert_eq!(
        feed.len(),
        2,
        "the committed customers' events went out before the failure was reported"
    );

    std::fs::create_dir(project.path().join("late")).unwrap();
    std::fs::write(
        project.path().join("late/more.csv"),
        "id,name,email\nc5,Eva Lind,eva@example.com\n",
    )
    .unwrap();
    let summary = pipeline::run(&config, Some("drops")).await.unwrap();
    assert_eq!(
        summary.records_read, 1,
        "the first stream's file is not read twice"
    );
    assert_eq!(summary.profiles_created, 1);
    assert_eq!(
        read_feed(&project.path().join(".conflux/feed.ndjson")).len(),
        3
    );
}
