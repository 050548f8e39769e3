//! The shipped SAP S/4HANA, Business Central and Odoo presets end to end against the fake
//! servers of `fake_erp`: each test copies the project, writes the preset's connector with the
//! fake's URL and credentials in place of its `${VAR}` references (so no test touches the
//! process environment), and runs a job over all of the preset's streams three times — the
//! first run reads everything, the second asks only for records changed after the committed
//! cursors, and after one customer changes on the fake the third yields exactly one profile
//! version and one event.

use std::path::Path;

use conflux::pipeline::{self, RunSummary};
use tempfile::TempDir;

use crate::common::{load, project_copy, read_feed};
use crate::fake_erp::{bc, edit, odoo, sap};

/// A copy of the project whose `connectors/<id>.toml` has every `(from, to)` replacement made,
/// plus `config/presets.toml` with one job syncing `streams`.
fn project(connector: &str, replacements: &[(&str, &str)], streams: &[&str]) -> TempDir {
    let project = project_copy();
    let file = project.path().join(format!("connectors/{connector}.toml"));
    let mut text = std::fs::read_to_string(&file).unwrap();
    for (from, to) in replacements {
        assert!(text.contains(from), "{connector}.toml has no {from}");
        text = text.replace(from, to);
    }
    // A test that fails should fail fast rather than retry for the production budget.
    text = text.replace(
        r#"retry = { max_elapsed = "5m" }"#,
        r#"retry = { max_elapsed = "2s" }"#,
    );
    std::fs::write(&file, text).unwrap();
    let sync = streams
        .iter()
        .map(|stream| format!("\"{connector}.{stream}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        r#"
[store]
url = "sqlite://.conflux/presets.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[identity]
match_on = ["email", "phone", "identifier:vat"]

[[job]]
name = "{connector}"
sync = [{sync}]
"#
    );
    std::fs::write(project.path().join("config/presets.toml"), config).unwrap();
    project
}

async fn run(project: &Path) -> RunSummary {
    let config = load(project, "config/presets.toml");
    pipeline::run(&config, None).await.unwrap()
}

fn feed_len(project: &Path) -> usize {
    read_feed(&project.join(".conflux/feed.ndjson")).len()
}

/// The filters a fake saw after the first `skip`.
fn since(filters: Vec<String>, skip: usize) -> Vec<String> {
    filters.into_iter().skip(skip).collect()
}

#[tokio::test]
async fn sap_s4_preset_syncs_partners_orders_stock_and_suppliers_then_only_changes() {
    let fake = sap::FakeSap::start().await;
    let uri = fake.server.uri();
    let project = project(
        "sap_s4",
        &[
            ("${SAP_BASE_URL}", &uri),
            ("${SAP_USER}", sap::USER),
            ("${SAP_PASSWORD}", sap::PASSWORD),
        ],
        &[
            "business_partners",
            "sales_orders",
            "material_stock",
            "suppliers",
        ],
    );
    let dir = project.path();

    let first = run(dir).await;
    // 5 partners + 3 orders + 3 unrestricted stock rows (of 4) + 2 suppliers.
    assert_eq!(
        (
            first.records_read,
            first.records_mapped,
            first.records_quarantined
        ),
        (13, 13, 0)
    );
    // Each profile is built once at the end of the run, with its orders, stock and
    // supplier lead times; the end-of-run segmentation then gives the three buyers their RFM
    // scores.
    assert_eq!(
        (
            first.profiles_created,
            first.profiles_updated,
            first.profiles_resegmented,
            first.events_delivered
        ),
        (5, 0, 3, 5 + 3)
    );
    let events_after_first = feed_len(dir);
    assert_eq!(first.events_delivered as usize, events_after_first);
    let first_filters = fake.shared.filters();
    assert_eq!(
        first_filters, ["API_MATERIAL_STOCK_SRV/A_MatlStkInAcctMod InventoryStockType eq '01'"; 2],
        "the first run has no cursor yet; stock is filtered on every page"
    );

    let second = run(dir).await;
    // The partner cursor is 2026-10-07 11:45:30 (LastChangeDate + LastChangeTime); SAP filters
    // that date from midnight. The order cursor /Date(1760200000000+0000)/ is written in ISO.
    assert_eq!(
        since(fake.shared.filters(), first_filters.len()),
        [
            "API_BUSINESS_PARTNER/A_BusinessPartner LastChangeDate ge datetime'2026-10-07T00:00:00'".to_string(),
            "API_SALES_ORDER_SRV/A_SalesOrder LastChangeDateTime gt datetimeoffset'2025-10-11T16:26:40Z'".to_string(),
            "API_MATERIAL_STOCK_SRV/A_MatlStkInAcctMod InventoryStockType eq '01'".to_string(),
            "API_MATERIAL_STOCK_SRV/A_MatlStkInAcctMod InventoryStockType eq '01'".to_string(),
        ]
    );
    // The snapshot streams (5 records) and the one partner changed on the cursor's day are
    // read again; nothing in them changed.
    assert_eq!((second.records_read, second.records_unchanged), (6, 6));
    assert_eq!(
        second.profiles_created + second.profiles_updated + second.profiles_merged,
        0
    );
    assert_eq!(feed_len(dir), events_after_first);

    {
        let mut state = fake.shared.state();
        let partners = &mut state.business_partners;
        let weber = serde_json::json!("1000043");
        edit(
            partners,
            "BusinessPartner",
            &weber,
            "BusinessPartnerFullName",
            "Weber & Söhne Werkzeugbau GmbH".into(),
        );
        edit(
            partners,
            "BusinessPartner",
            &weber,
            "LastChangeDate",
            sap::sap_date("2026-11-02").into(),
        );
    }
    let third = run(dir).await;
    // Snapshots (5), the partner of the cursor's day and the changed Weber.
    assert_eq!((third.records_read, third.records_updated), (7, 1));
    assert_eq!((third.profiles_created, third.profiles_updated), (0, 1));
    assert_eq!(third.events_delivered, 1);
    assert_eq!(feed_len(dir), events_after_first + 1);
}

#[tokio::test]
async fn business_central_preset_syncs_with_a_client_credentials_token_then_only_changes() {
    let fake = bc::FakeBusinessCentral::start().await;
    let company_url = fake.company_url();
    let token_url = fake.token_url();
    let project = project(
        "business_central",
        &[
            ("${BC_COMPANY_URL}", &company_url),
            ("${BC_TOKEN_URL}", &token_url),
            ("${BC_CLIENT_ID}", bc::CLIENT_ID),
            ("${BC_CLIENT_SECRET}", bc::CLIENT_SECRET),
        ],
        &["customers", "sales_orders", "items", "vendors"],
    );
    let dir = project.path();

    let first = run(dir).await;
    // 3 customers + 2 orders + 3 items + 1 vendor.
    assert_eq!(
        (
            first.records_read,
            first.records_mapped,
            first.records_quarantined
        ),
        (9, 9, 0)
    );
    // Each profile is built once at the end of the run, orders, stock and supplier data
    // included; then the two buyers' RFM scores.
    assert_eq!(
        (
            first.profiles_created,
            first.profiles_updated,
            first.profiles_resegmented,
            first.events_delivered
        ),
        (3, 0, 2, 3 + 2)
    );
    let events_after_first = feed_len(dir);
    assert_eq!(first.events_delivered as usize, events_after_first);
    assert!(
        fake.shared.filters().is_empty(),
        "the first run has no cursor yet"
    );

    let second = run(dir).await;
    assert_eq!(
        fake.shared.filters(),
        [
            "customers lastModifiedDateTime gt 2026-10-03T12:30:00.000Z",
            "salesOrders lastModifiedDateTime gt 2026-10-21T11:00:00.000Z",
            "items lastModifiedDateTime gt 2026-11-20T06:00:02.000Z",
            "vendors lastModifiedDateTime gt 2026-09-01T08:00:00.000Z",
        ]
    );
    assert_eq!(second.records_read, 0);
    assert_eq!(feed_len(dir), events_after_first);

    {
        let mut state = fake.shared.state();
        let trey = serde_json::json!("20000");
        edit(
            &mut state.customers,
            "number",
            &trey,
            "phoneNumber",
            "069 7654322".into(),
        );
        edit(
            &mut state.customers,
            "number",
            &trey,
            "lastModifiedDateTime",
            "2026-11-05T10:00:00.000Z".into(),
        );
    }
    let third = run(dir).await;
    assert_eq!((third.records_read, third.records_updated), (1, 1));
    assert_eq!((third.profiles_created, third.profiles_updated), (0, 1));
    assert_eq!(third.events_delivered, 1);
    assert_eq!(feed_len(dir), events_after_first + 1);
}

const ODOO_STREAMS: [&str; 5] = [
    "partners",
    "sale_orders",
    "sale_order_lines",
    "stock_quants",
    "supplier_items",
];

fn odoo_project(uri: &str, password: &str) -> TempDir {
    let uid = odoo::UID.to_string();
    project(
        "odoo",
        &[
            ("${ODOO_URL}", uri),
            ("${ODOO_DB}", odoo::DB),
            ("${ODOO_UID}", &uid),
            ("${ODOO_PASSWORD}", password),
            // Small pages, so every stream needs more than one request.
            ("limit = 200", "limit = 2"),
        ],
        &ODOO_STREAMS,
    )
}

#[tokio::test]
async fn odoo_preset_pages_by_offset_in_the_body_then_asks_only_for_changes() {
    let fake = odoo::FakeOdoo::start().await;
    let project = odoo_project(&fake.server.uri(), odoo::PASSWORD);
    let dir = project.path();

    let first = run(dir).await;
    // 4 partners + 2 orders + 3 product lines (of 4) + 2 internal quants (of 3) + 1 price line.
    assert_eq!(
        (
            first.records_read,
            first.records_mapped,
            first.records_quarantined
        ),
        (12, 12, 0)
    );
    assert_eq!(first.records_unchanged, 0);
    // The lines, read after their orders by their own stream, belong to those orders now.
    let lines = order_lines(dir, "7").await;
    assert_eq!(
        lines,
        [(
            "42".to_string(),
            vec![
                ("SKU-140".to_string(), "6".to_string(), "1110".to_string()),
                ("SKU-110".to_string(), "40".to_string(), "720".to_string()),
            ]
        )]
    );
    // Each profile is built once at the end of the run, order lines, stock and supplier
    // data included; then the two buyers' RFM scores.
    assert_eq!(
        (
            first.profiles_created,
            first.profiles_updated,
            first.profiles_resegmented,
            first.events_delivered
        ),
        (4, 0, 2, 4 + 2)
    );
    let events_after_first = feed_len(dir);
    assert_eq!(first.events_delivered as usize, events_after_first);
    let first_filters = fake.shared.filters();
    assert_eq!(
        first_filters[0],
        r#"res.partner [["write_date",">","1970-01-01 00:00:00"]]"#
    );

    let second = run(dir).await;
    let mut asked: Vec<String> = since(fake.shared.filters(), first_filters.len());
    asked.dedup();
    assert_eq!(
        asked,
        [
            r#"res.partner [["write_date",">","2026-10-02 10:00:00"]]"#,
            r#"sale.order [["write_date",">","2026-10-29 09:01:00"]]"#,
            r#"sale.order.line [["write_date",">","2026-10-29 09:01:00"],["display_type","=",false]]"#,
            r#"stock.quant [["write_date",">","2026-11-20 06:00:00"],["location_id.usage","=","internal"]]"#,
            r#"product.supplierinfo [["write_date",">","2026-09-01 10:00:00"]]"#,
        ]
    );
    assert_eq!(second.records_read, 0);
    assert_eq!(feed_len(dir), events_after_first);

    {
        let mut state = fake.shared.state();
        let partners = state.model("res.partner");
        edit(
            partners,
            "id",
            &serde_json::json!(8),
            "email",
            "bestellung@sommer-textil.example.com".into(),
        );
        edit(
            partners,
            "id",
            &serde_json::json!(8),
            "write_date",
            "2026-11-03 12:00:00".into(),
        );
    }
    let third = run(dir).await;
    assert_eq!((third.records_read, third.records_updated), (1, 1));
    assert_eq!((third.profiles_created, third.profiles_updated), (0, 1));
    assert_eq!(third.events_delivered, 1);
    assert_eq!(feed_len(dir), events_after_first + 1);
}

/// The orders of a customer of the Odoo preset as the store hands them to the profile builder:
/// order id → (sku, quantity, line total) of each line.
async fn order_lines(
    project: &Path,
    customer: &str,
) -> Vec<(String, Vec<(String, String, String)>)> {
    let config = load(project, "config/presets.toml");
    let store = conflux::pipeline::open_store(&config).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let orders = tx.orders_of_customer("odoo", customer).await.unwrap();
    orders
        .into_iter()
        .map(|order| {
            let lines = order
                .lines
                .iter()
                .map(|l| {
                    (
                        l.sku.clone().unwrap_or_default(),
                        l.quantity.unwrap_or_default().normalize().to_string(),
                        l.line_total.unwrap_or_default().normalize().to_string(),
                    )
                })
                .collect();
            (order.source.source_id, lines)
        })
        .collect()
}

#[tokio::test]
async fn odoo_preset_reports_a_wrong_password_from_the_error_member() {
    let fake = odoo::FakeOdoo::start().await;
    let project = odoo_project(&fake.server.uri(), "not-the-key");
    let config = load(project.path(), "config/presets.toml");
    let error = pipeline::run(&config, None).await.unwrap_err().to_string();
    assert!(
        error.contains("the response reports an error: Odoo Server Error: Access Denied"),
        "{error}"
    );
}

#[tokio::test]
async fn sap_s4_preset_fails_the_run_on_rejected_credentials_without_showing_them() {
    let fake = sap::FakeSap::start().await;
    let uri = fake.server.uri();
    let project = project(
        "sap_s4",
        &[
            ("${SAP_BASE_URL}", &uri),
            ("${SAP_USER}", sap::USER),
            ("${SAP_PASSWORD}", "wrong-password"),
        ],
        &["business_partners"],
    );
    let config = load(project.path(), "config/presets.toml");
    let error = pipeline::run(&config, None).await.unwrap_err().to_string();
    assert!(error.contains("HTTP 401"), "{error}");
    assert!(!error.contains("wrong-password"), "{error}");
}

#[tokio::test]
async fn check_connections_skips_presets_no_job_uses_so_their_variables_may_be_unset() {
    let project = project_copy();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args([
            "validate",
            "--check-connections",
            "--config",
            "config/demo.toml",
        ])
        .current_dir(project.path())
        .env_remove("SAP_BASE_URL")
        .env_remove("BC_COMPANY_URL")
        .env_remove("ODOO_URL")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    for preset in ["business_central", "odoo", "sap_s4"] {
        assert!(
            stdout.contains(&format!("skip   connector {preset}: no job syncs it")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("ok     connector demo_sap:"), "{stdout}");
}
